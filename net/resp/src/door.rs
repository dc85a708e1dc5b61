//! The Redis door's logic, without I/O and without the engine: what each [`Command`]
//! does to counters and how the results read in RESP, so that the server only moves
//! bytes and applies [`CounterOp`]s.
//!
//! A connection keeps a [`Session`] (its RESP version, client name, and the transaction
//! it is queuing, if any). For each parsed command the server calls [`Session::begin`],
//! which either writes the whole reply (PING, ECHO, HELLO, COMMAND, CONFIG GET, INFO,
//! errors, `+QUEUED`, ...) or returns a [`Pending`] holding the counter operations to
//! apply, in order; once applied, the server calls [`Pending::finish`] with one
//! [`CounterResult`] per operation and the reply is written.
//!
//! Semantics, as in Redis where Redis has them: `GET` of a missing key is a null, of an
//! existing one its decimal value as a bulk string; `DEL` and `EXISTS` count keys that
//! existed; `MGET` is an array of bulks and nulls; `SET` replies `+OK`; `INCR`, `INCRBY`,
//! `DECR`, `DECRBY` reply with the new value. `DECRBY key -9223372036854775808` is
//! refused before anything is applied, since its negation does not fit an i64. No key
//! has an expiry: `TTL` and `PTTL` answer -2 for a missing key and -1 for an existing
//! one, `PERSIST` answers 0, and the commands that would set an expiry are refused.
//! `SELECT` accepts only database 0.
//!
//! Transactions: `MULTI` starts queuing ([`Transaction`]); each command then answers
//! `+QUEUED`, except EXEC, DISCARD, QUIT and RESET, which act at once, and MULTI and
//! WATCH, which are errors that leave the transaction as it was, as in Redis. A command
//! refused while queuing (see [`crate::transaction`]) aborts the transaction: `EXEC`
//! answers `EXECABORT` and nothing runs. Otherwise `EXEC` yields [`Step::Exec`], and the
//! server serves the queued commands in order, like a pipeline, their replies forming
//! EXEC's array. An error met while applying (an overflow, a full store) fails only its
//! own command, as in Redis, which has no rollback either. `WATCH` is refused: Tally has
//! no optimistic locking; `UNWATCH` answers `+OK`, since nothing is ever watched.

use crate::command::{Command, CommandQuery};
use crate::command_table::{self, COMMAND_TABLE};
use crate::error::RespError;
use crate::reply::{self, ProtocolVersion};
use crate::transaction::Transaction;

/// One operation on one counter, as the engine understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterOp<'a> {
    /// Add `delta` (creating the counter at 0), reply with the new value.
    Add { key: &'a [u8], delta: i64 },
    /// Set the value (creating the counter).
    Set { key: &'a [u8], value: i64 },
    /// Read the value; a missing counter reads as `existed == false`.
    Get { key: &'a [u8] },
    /// Remove the counter.
    Delete { key: &'a [u8] },
    /// Whether the counter exists, without creating it.
    Exists { key: &'a [u8] },
}

/// The outcome of one [`CounterOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterResult {
    /// Applied: the value after the operation (for a delete, the value it had), and
    /// whether the counter existed before.
    Applied { value: i64, existed: bool },
    /// The result would leave the i64 range.
    Overflow,
    /// Refused for another reason; the text becomes the error reply (starting with a
    /// code such as `ERR`), e.g. a bound, a full store, or the server shutting down.
    Refused(String),
}

/// What the server reports in `INFO` (fields it does not know stay `None`).
#[derive(Clone, Debug, Default)]
pub struct ServerInfo {
    pub tally_version: &'static str,
    pub tcp_port: u16,
    pub uptime_s: u64,
    pub cores: usize,
    pub connected_clients: Option<u64>,
    pub used_memory_bytes: Option<u64>,
    pub commands_processed: Option<u64>,
    pub keys: Option<u64>,
}

/// Per-connection state.
#[derive(Clone, Debug)]
pub struct Session {
    version: ProtocolVersion,
    connection_id: i64,
    client_name: Vec<u8>,
    /// The commands queued since `MULTI`; `None` outside a transaction.
    transaction: Option<Transaction>,
}

/// What to do after [`Session::begin`].
#[derive(Debug)]
pub enum Step<'a> {
    /// The reply is written; read the next command.
    Replied,
    /// The reply is written; close the connection once it is sent (QUIT).
    ReplyThenClose,
    /// Apply the operations, then call [`Pending::finish`].
    Apply(Pending<'a>),
    /// `EXEC`: the reply's array header is written; serve each of the transaction's
    /// [`Transaction::commands`] with [`Session::begin`], in order (their replies are
    /// the array's elements), then go on. None of them is MULTI, EXEC, DISCARD, WATCH,
    /// RESET or QUIT, so serving them never yields `Exec` or `ReplyThenClose`.
    Exec(Transaction),
}
/// A command waiting for its counter operations to be applied.
#[derive(Debug)]
pub struct Pending<'a> {
    kind: PendingKind,
    ops: PendingOps<'a>,
}

/// A command's operations: single-key commands (INCR, INCRBY, GET, SET, ..., the hot
/// path) keep theirs inline, so routing them allocates nothing; only multi-key
/// commands, whose keys the parser already collected into a vector, use one.
#[derive(Debug)]
enum PendingOps<'a> {
    One(CounterOp<'a>),
    Many(Vec<CounterOp<'a>>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingKind {
    /// One Add or Set; reply with the value (or OK for Set).
    Value,
    Set,
    Get,
    /// Reply with how many of the keys existed.
    Count,
    MGet,
    /// TTL or PTTL: -1 for an existing key (no key has an expiry), -2 for a missing one.
    Ttl,
}

impl Session {
    /// A new connection's session: RESP2, no name, no transaction.
    pub fn new(connection_id: i64) -> Self {
        Session {
            version: ProtocolVersion::Resp2,
            connection_id,
            client_name: Vec::new(),
            transaction: None,
        }
    }

    /// The RESP version replies are written in.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Whether the connection is queuing a transaction (between MULTI and EXEC).
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
    }

    /// Start serving `parsed` (the command, or its command error), writing to `out`.
    pub fn begin<'a>(
        &mut self,
        parsed: Result<Command<'a>, RespError>,
        info: &ServerInfo,
        out: &mut Vec<u8>,
    ) -> Step<'a> {
        if self.transaction.is_some() {
            return self.queue(parsed, info, out);
        }
        let refused = parsed.and_then(|command| match refusal(&command) {
            Some(error) => Err(error),
            None => Ok(command),
        });
        let command = match refused {
            Ok(command) => command,
            Err(error) => {
                error.write_reply(out);
                return Step::Replied;
            }
        };
        match route(command) {
            Route::Counter(pending) => Step::Apply(pending),
            Route::Refused(error) => {
                error.write_reply(out);
                Step::Replied
            }
            Route::Other(command) => self.administrative(command, info, out),
        }
    }

    /// Inside MULTI: queue the command, or answer the few that act at once, as Redis
    /// does. A command refused now aborts the transaction, so that EXEC runs nothing
    /// rather than part of what the client meant.
    fn queue<'a>(
        &mut self,
        parsed: Result<Command<'a>, RespError>,
        info: &ServerInfo,
        out: &mut Vec<u8>,
    ) -> Step<'a> {
        let transaction = self
            .transaction
            .as_mut()
            .expect("queue is called inside MULTI");
        let queued = match parsed {
            Ok(Command::Exec) => {
                let transaction = self.transaction.take().expect("inside MULTI");
                if transaction.is_aborted() {
                    RespError::ExecAborted.write_reply(out);
                    return Step::Replied;
                }
                reply::write_array_header(out, transaction.len());
                return Step::Exec(transaction);
            }
            Ok(Command::Discard) => {
                self.transaction = None;
                reply::write_ok(out);
                return Step::Replied;
            }
            Ok(command @ (Command::Quit | Command::Reset)) => {
                return self.administrative(command, info, out)
            }
            // Redis answers these two and leaves the transaction as it was.
            Ok(Command::Multi) => Err(RespError::NestedMulti),
            Ok(Command::Watch { .. }) => Err(RespError::WatchInsideMulti),
            Ok(command) => match refusal(&command) {
                Some(error) => Err(error),
                None => transaction.queue(&command),
            },
            Err(error) => Err(error),
        };
        match queued {
            Ok(()) => reply::write_simple(out, "QUEUED"),
            Err(error) => {
                if !matches!(error, RespError::NestedMulti | RespError::WatchInsideMulti) {
                    transaction.abort();
                }
                error.write_reply(out);
            }
        }
        Step::Replied
    }

    fn administrative(
        &mut self,
        command: Command<'_>,
        info: &ServerInfo,
        out: &mut Vec<u8>,
    ) -> Step<'static> {
        match command {
            Command::Ping { message: None } => reply::write_simple(out, "PONG"),
            Command::Ping {
                message: Some(message),
            }
            | Command::Echo { message } => reply::write_bulk(out, message),
            Command::Hello {
                protocol_version,
                client_name,
                ..
            } => {
                if let Some(version) = protocol_version {
                    self.version = version;
                }
                if let Some(name) = client_name {
                    self.client_name = name.to_vec();
                }
                reply::write_hello(out, self.version, self.connection_id);
            }
            Command::Command(query) => write_command_query(out, &query, self.version),
            Command::Info { sections } => {
                let text = info_text(info, &sections);
                reply::write_text(out, text.as_bytes(), self.version);
            }
            Command::Quit => {
                reply::write_ok(out);
                return Step::ReplyThenClose;
            }
            Command::Select { .. } => reply::write_ok(out),
            Command::ConfigGet { parameters } => write_config(out, &parameters, self.version),
            Command::ClientSetName { name } => {
                self.client_name = name.to_vec();
                reply::write_ok(out);
            }
            Command::ClientGetName if self.client_name.is_empty() => {
                reply::write_null(out, self.version)
            }
            Command::ClientGetName => reply::write_bulk(out, &self.client_name),
            Command::ClientId => reply::write_integer(out, self.connection_id),
            Command::ClientSetInfo { .. } => reply::write_ok(out),
            other => self.transaction_control(other, out),
        }
        Step::Replied
    }

    /// MULTI, EXEC and DISCARD outside a transaction, WATCH, UNWATCH, RESET and
    /// PERSIST; counter commands were taken by [`route`], refusals by [`refusal`].
    fn transaction_control(&mut self, command: Command<'_>, out: &mut Vec<u8>) {
        match command {
            Command::Multi => {
                self.transaction = Some(Transaction::default());
                reply::write_ok(out);
            }
            Command::Exec => RespError::ExecWithoutMulti.write_reply(out),
            Command::Discard => RespError::DiscardWithoutMulti.write_reply(out),
            Command::Watch { .. } => RespError::WatchUnsupported.write_reply(out),
            // Nothing is ever watched, so there is nothing to forget.
            Command::Unwatch => reply::write_ok(out),
            Command::Reset => {
                *self = Session::new(self.connection_id);
                reply::write_simple(out, "RESET");
            }
            // No key has an expiry to remove, whether it exists or not.
            Command::Persist { .. } => reply::write_integer(out, 0),
            // A new variant lands here until it is served.
            _ => RespError::Syntax.write_reply(out),
        }
    }
}

/// Why `command` is refused whatever the counters hold, if it is: known before anything
/// is applied, so inside MULTI it aborts the transaction instead of being queued.
fn refusal(command: &Command<'_>) -> Option<RespError> {
    match command {
        Command::Expire { .. }
        | Command::PExpire { .. }
        | Command::ExpireAt { .. }
        | Command::PExpireAt { .. } => Some(RespError::ExpiryUnsupported),
        Command::DecrBy { delta, .. } if delta.checked_neg().is_none() => {
            Some(RespError::DecrementOverflow)
        }
        Command::Select { index } if *index != 0 => Some(RespError::DatabaseIndexOutOfRange),
        Command::ClientSetName { name }
        | Command::Hello {
            client_name: Some(name),
            ..
        } if !is_valid_client_name(name) => Some(RespError::ClientNameInvalid),
        _ => None,
    }
}

/// Redis's rule: every byte printable ASCII other than space (`!` to `~`); the empty
/// name clears the name.
fn is_valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|byte| (b'!'..=b'~').contains(byte))
}

/// Where a command goes: to the counters, refused before touching them, or elsewhere.
enum Route<'a> {
    Counter(Pending<'a>),
    Refused(RespError),
    Other(Command<'a>),
}

/// The counter operations of `command`, or the command back if it touches no counter.
fn route<'a>(command: Command<'a>) -> Route<'a> {
    fn one(kind: PendingKind, op: CounterOp<'_>) -> Route<'_> {
        let ops = PendingOps::One(op);
        Route::Counter(Pending { kind, ops })
    }
    fn many<'a>(
        kind: PendingKind,
        keys: Vec<&'a [u8]>,
        op: fn(&'a [u8]) -> CounterOp<'a>,
    ) -> Route<'a> {
        debug_assert!(!keys.is_empty(), "arity checks guarantee at least one key");
        let ops = PendingOps::Many(keys.into_iter().map(op).collect());
        Route::Counter(Pending { kind, ops })
    }
    match command {
        Command::Incr { key } => one(PendingKind::Value, CounterOp::Add { key, delta: 1 }),
        Command::IncrBy { key, delta } => one(PendingKind::Value, CounterOp::Add { key, delta }),
        Command::Decr { key } => one(PendingKind::Value, CounterOp::Add { key, delta: -1 }),
        Command::DecrBy { key, delta } => match delta.checked_neg() {
            Some(delta) => one(PendingKind::Value, CounterOp::Add { key, delta }),
            None => Route::Refused(RespError::DecrementOverflow),
        },
        Command::Set { key, value } => one(PendingKind::Set, CounterOp::Set { key, value }),
        Command::Get { key } => one(PendingKind::Get, CounterOp::Get { key }),
        Command::Del { keys } => many(PendingKind::Count, keys, |key| CounterOp::Delete { key }),
        Command::Exists { keys } => many(PendingKind::Count, keys, |key| CounterOp::Exists { key }),
        Command::MGet { keys } => many(PendingKind::MGet, keys, |key| CounterOp::Get { key }),
        Command::Ttl { key } | Command::PTtl { key } => {
            one(PendingKind::Ttl, CounterOp::Exists { key })
        }
        other => Route::Other(other),
    }
}

impl<'a> Pending<'a> {
    /// The operations to apply, in order.
    pub fn ops(&self) -> &[CounterOp<'a>] {
        match &self.ops {
            PendingOps::One(op) => std::slice::from_ref(op),
            PendingOps::Many(ops) => ops,
        }
    }

    /// Write the reply from one result per operation (in the order of [`Self::ops`]).
    pub fn finish(self, results: &[CounterResult], version: ProtocolVersion, out: &mut Vec<u8>) {
        assert_eq!(results.len(), self.ops().len(), "one result per operation");
        if self.kind != PendingKind::MGet {
            if let Some(error) = results.iter().find_map(result_error) {
                reply::write_error(out, &error);
                return;
            }
        }
        match self.kind {
            PendingKind::Value => reply::write_integer(out, applied(&results[0]).0),
            PendingKind::Set => reply::write_ok(out),
            PendingKind::Get => write_value_or_null(out, &results[0], version),
            PendingKind::Count => {
                let existed = results.iter().filter(|result| applied(result).1).count();
                reply::write_integer(out, existed as i64);
            }
            PendingKind::MGet => {
                reply::write_array_header(out, results.len());
                for result in results {
                    write_value_or_null(out, result, version);
                }
            }
            PendingKind::Ttl => {
                const MISSING: i64 = -2;
                const NO_EXPIRY: i64 = -1;
                let existed = applied(&results[0]).1;
                reply::write_integer(out, if existed { NO_EXPIRY } else { MISSING });
            }
        }
    }
}

fn result_error(result: &CounterResult) -> Option<String> {
    match result {
        CounterResult::Applied { .. } => None,
        CounterResult::Overflow => Some(RespError::Overflow.to_string()),
        CounterResult::Refused(message) => Some(message.clone()),
    }
}

/// The value and existence of an applied result (a failed one reads as missing).
fn applied(result: &CounterResult) -> (i64, bool) {
    match result {
        CounterResult::Applied { value, existed } => (*value, *existed),
        _ => (0, false),
    }
}

fn write_value_or_null(out: &mut Vec<u8>, result: &CounterResult, version: ProtocolVersion) {
    match applied(result) {
        (value, true) => {
            let mut digits = [0_u8; crate::number::I64_DECIMAL_BYTES_MAX];
            reply::write_bulk(out, crate::number::format_i64(&mut digits, value));
        }
        (_, false) => reply::write_null(out, version),
    }
}

/// `COMMAND` replies, from [`command_table`]: what client libraries read to learn arity
/// and key positions, and what redis-cli asks for (`COMMAND DOCS`) when it starts.
fn write_command_query(out: &mut Vec<u8>, query: &CommandQuery<'_>, version: ProtocolVersion) {
    match query {
        CommandQuery::Count => reply::write_integer(out, COMMAND_TABLE.len() as i64),
        CommandQuery::List => {
            reply::write_array_header(out, COMMAND_TABLE.len());
            for spec in &COMMAND_TABLE {
                reply::write_bulk(out, spec.name.as_bytes());
            }
        }
        CommandQuery::Docs { names } => command_table::write_docs(out, names, version),
        CommandQuery::Table => command_table::write_table(out, version),
        CommandQuery::Info { names } => command_table::write_infos(out, names, version),
        CommandQuery::Help => command_table::write_help(out),
    }
}

/// `CONFIG GET`: the parameters load generators ask for (`save`, `appendonly`), with
/// values that describe Tally (no RDB snapshots; the journal plays the AOF's role).
fn write_config(out: &mut Vec<u8>, parameters: &[&[u8]], version: ProtocolVersion) {
    const KNOWN: [(&str, &str); 3] = [("save", ""), ("appendonly", "yes"), ("databases", "1")];
    let found: Vec<(&str, &str)> = KNOWN
        .iter()
        .filter(|(name, _)| {
            parameters
                .iter()
                .any(|asked| asked.eq_ignore_ascii_case(name.as_bytes()) || *asked == b"*")
        })
        .copied()
        .collect();
    reply::write_map_header(out, found.len(), version);
    for (name, value) in found {
        reply::write_bulk(out, name.as_bytes());
        reply::write_bulk(out, value.as_bytes());
    }
}

/// `INFO` text: the server, memory, stats and keyspace sections, or those asked for.
pub fn info_text(info: &ServerInfo, sections: &[&[u8]]) -> String {
    let wanted = |section: &str| {
        sections.is_empty()
            || sections.iter().any(|asked| {
                asked.eq_ignore_ascii_case(section.as_bytes())
                    || asked.eq_ignore_ascii_case(b"all")
                    || asked.eq_ignore_ascii_case(b"default")
                    || asked.eq_ignore_ascii_case(b"everything")
            })
    };
    let optional =
        |value: Option<u64>| value.map_or_else(|| "unknown".to_owned(), |value| value.to_string());
    let mut text = String::new();
    if wanted("server") {
        text.push_str(&format!(
            "# Server\r\nredis_version:{}\r\ntally_version:{}\r\nredis_mode:standalone\r\narch_bits:64\r\nmultiplexing_api:io_uring\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\ncores:{}\r\n\r\n",
            crate::COMPATIBLE_REDIS_VERSION, info.tally_version, info.tcp_port, info.uptime_s, info.cores
        ));
    }
    if wanted("clients") {
        text.push_str(&format!(
            "# Clients\r\nconnected_clients:{}\r\n\r\n",
            optional(info.connected_clients)
        ));
    }
    if wanted("memory") {
        text.push_str(&format!(
            "# Memory\r\nused_memory:{}\r\n\r\n",
            optional(info.used_memory_bytes)
        ));
    }
    if wanted("stats") {
        text.push_str(&format!(
            "# Stats\r\ntotal_commands_processed:{}\r\n\r\n",
            optional(info.commands_processed)
        ));
    }
    if wanted("keyspace") {
        text.push_str("# Keyspace\r\n");
        if let Some(keys) = info.keys.filter(|&keys| keys > 0) {
            text.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use std::collections::HashMap;

    /// Serve `requests` against a HashMap model of the engine; return the reply bytes.
    fn serve(requests: &[u8]) -> Vec<u8> {
        let mut model: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut session = Session::new(1);
        let (mut out, mut start) = (Vec::new(), 0);
        while let Some((parsed, consumed)) = parse(&requests[start..]).expect("valid framing") {
            start += consumed;
            if !serve_one(&mut session, &mut model, parsed, &mut out) {
                break;
            }
        }
        out
    }

    /// Serves one command as the server does; `false` once the connection would close.
    fn serve_one(
        session: &mut Session,
        model: &mut HashMap<Vec<u8>, i64>,
        parsed: Result<Command<'_>, RespError>,
        out: &mut Vec<u8>,
    ) -> bool {
        match session.begin(parsed, &ServerInfo::default(), out) {
            Step::Replied => {}
            Step::ReplyThenClose => return false,
            Step::Apply(pending) => {
                let results: Vec<CounterResult> =
                    pending.ops().iter().map(|op| apply(model, op)).collect();
                pending.finish(&results, session.version(), out);
            }
            Step::Exec(transaction) => {
                for command in transaction.commands() {
                    assert!(serve_one(session, model, Ok(command), out));
                }
            }
        }
        true
    }

    fn apply(model: &mut HashMap<Vec<u8>, i64>, op: &CounterOp<'_>) -> CounterResult {
        match *op {
            CounterOp::Add { key, delta } => {
                let old = model.get(key).copied();
                match old.unwrap_or(0).checked_add(delta) {
                    Some(value) => {
                        model.insert(key.to_vec(), value);
                        CounterResult::Applied {
                            value,
                            existed: old.is_some(),
                        }
                    }
                    None => CounterResult::Overflow,
                }
            }
            CounterOp::Set { key, value } => {
                let existed = model.insert(key.to_vec(), value).is_some();
                CounterResult::Applied { value, existed }
            }
            CounterOp::Get { key } | CounterOp::Exists { key } => {
                let old = model.get(key).copied();
                CounterResult::Applied {
                    value: old.unwrap_or(0),
                    existed: old.is_some(),
                }
            }
            CounterOp::Delete { key } => {
                let old = model.remove(key);
                CounterResult::Applied {
                    value: old.unwrap_or(0),
                    existed: old.is_some(),
                }
            }
        }
    }

    #[test]
    fn counters_behave_like_redis() {
        let replies = serve(
            b"INCR a\r\nINCRBY a 10\r\nDECRBY a 3\r\nGET a\r\nGET b\r\nSET b 5\r\nMGET a b c\r\nEXISTS a b c a\r\nDEL a c\r\nGET a\r\n",
        );
        assert_eq!(
            String::from_utf8(replies).unwrap(),
            ":1\r\n:11\r\n:8\r\n$1\r\n8\r\n$-1\r\n+OK\r\n*3\r\n$1\r\n8\r\n$1\r\n5\r\n$-1\r\n:3\r\n:1\r\n$-1\r\n"
        );
    }

    #[test]
    fn overflow_and_errors_read_like_redis() {
        let replies = serve(b"SET a 9223372036854775807\r\nINCR a\r\nDECRBY a -9223372036854775808\r\nEXPIRE a 10\r\nSELECT 1\r\nINCR\r\n");
        let text = String::from_utf8(replies).unwrap();
        assert_eq!(
            text,
            "+OK\r\n-ERR increment or decrement would overflow\r\n-ERR decrement would overflow\r\n-ERR Tally does not support key expiry yet (EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT)\r\n-ERR DB index is out of range\r\n-ERR wrong number of arguments for 'incr' command\r\n"
        );
    }

    #[test]
    fn every_expiry_form_redis_accepts_gets_the_expiry_error() {
        let requests: &[&[u8]] = &[
            b"EXPIRE k 10\r\n",
            b"EXPIRE k 10 NX\r\n",
            b"expire k 10 gt\r\n",
            b"PEXPIRE k 10 XX\r\n",
            b"EXPIREAT k 1900000000\r\n",
            b"EXPIREAT k 1900000000 LT\r\n",
            b"PEXPIREAT k 1900000000000 NX\r\n",
        ];
        for request in requests {
            let reply = String::from_utf8(serve(request)).unwrap();
            assert!(
                reply.starts_with("-ERR Tally does not support key expiry yet"),
                "{}: {reply}",
                String::from_utf8_lossy(request)
            );
        }
        // Redis's arity still holds: TTL takes one key, EXPIRE at least a time.
        let reply = String::from_utf8(serve(b"TTL a b\r\nEXPIRE a\r\nPERSIST\r\n")).unwrap();
        assert_eq!(
            reply,
            "-ERR wrong number of arguments for 'ttl' command\r\n-ERR wrong number of arguments for 'expire' command\r\n-ERR wrong number of arguments for 'persist' command\r\n"
        );
    }

    #[test]
    fn ttl_and_persist_answer_as_for_keys_without_expiry() {
        let replies =
            serve(b"TTL k\r\nPTTL k\r\nPERSIST k\r\nINCR k\r\nTTL k\r\nPTTL k\r\nPERSIST k\r\n");
        assert_eq!(
            String::from_utf8(replies).unwrap(),
            ":-2\r\n:-2\r\n:0\r\n:1\r\n:-1\r\n:-1\r\n:0\r\n"
        );
    }

    #[test]
    fn exec_runs_the_queued_commands_in_order() {
        let replies = serve(b"MULTI\r\nINCR a\r\nINCRBY a 5\r\nGET a\r\nPING\r\nEXEC\r\nGET a\r\n");
        assert_eq!(
            String::from_utf8(replies).unwrap(),
            "+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n:1\r\n:6\r\n$1\r\n6\r\n+PONG\r\n$1\r\n6\r\n"
        );
        assert_eq!(serve(b"MULTI\r\nEXEC\r\n"), b"+OK\r\n*0\r\n");
    }

    proptest::proptest! {
        /// EXEC answers exactly what the same commands answer pipelined, after its
        /// array header, and leaves the counters as they would.
        #[test]
        fn exec_answers_as_the_same_pipeline(
            commands in proptest::collection::vec((0..6_u8, 0..4_u8, -3..4_i64), 0..24),
        ) {
            let mut pipeline = Vec::new();
            for (kind, key, delta) in &commands {
                let line = match kind {
                    0 => format!("INCR k{key}"),
                    1 => format!("INCRBY k{key} {delta}"),
                    2 => format!("GET k{key}"),
                    3 => format!("DEL k{key} k{}", (key + 1) % 4),
                    4 => format!("TTL k{key}"),
                    _ => format!("MGET k{key} k0"),
                };
                pipeline.extend_from_slice(line.as_bytes());
                pipeline.extend_from_slice(b"\r\n");
            }
            let check = b"MGET k0 k1 k2 k3\r\n";
            let plain = serve(&[&pipeline[..], check].concat());
            let transaction = serve(&[&b"MULTI\r\n"[..], &pipeline, b"EXEC\r\n", check].concat());
            let mut expected = b"+OK\r\n".to_vec();
            expected.extend_from_slice(&b"+QUEUED\r\n".repeat(commands.len()));
            expected.extend_from_slice(format!("*{}\r\n", commands.len()).as_bytes());
            expected.extend_from_slice(&plain);
            proptest::prop_assert_eq!(
                String::from_utf8(transaction).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn discard_drops_the_queue() {
        let replies = serve(b"MULTI\r\nINCR a\r\nDISCARD\r\nGET a\r\nEXEC\r\nDISCARD\r\n");
        assert_eq!(
            String::from_utf8(replies).unwrap(),
            "+OK\r\n+QUEUED\r\n+OK\r\n$-1\r\n-ERR EXEC without MULTI\r\n-ERR DISCARD without MULTI\r\n"
        );
    }

    #[test]
    fn a_command_refused_while_queuing_aborts_the_transaction() {
        // Unknown, wrong arity, a bad value, an unsupported feature: none is applied.
        for refused in [
            &b"FOO"[..],
            b"INCR",
            b"INCRBY a x",
            b"EXPIRE a 10",
            b"SET a 1 EX 10",
            b"SELECT 1",
        ] {
            let mut requests = b"MULTI\r\nINCR a\r\n".to_vec();
            requests.extend_from_slice(refused);
            requests.extend_from_slice(b"\r\nINCR a\r\nEXEC\r\nGET a\r\n");
            let text = String::from_utf8(serve(&requests)).unwrap();
            let lines: Vec<&str> = text.split_terminator("\r\n").collect();
            assert_eq!(lines.len(), 6, "{text}");
            assert_eq!(lines[..2], ["+OK", "+QUEUED"], "{text}");
            assert!(lines[2].starts_with("-ERR "), "{text}");
            assert_eq!(
                lines[3..],
                [
                    "+QUEUED",
                    "-EXECABORT Transaction discarded because of previous errors.",
                    "$-1"
                ],
                "{text}"
            );
        }
    }

    #[test]
    fn multi_watch_quit_and_reset_act_as_in_redis() {
        let replies = serve(
            b"MULTI\r\nINCR a\r\nMULTI\r\nWATCH a\r\nINCR a\r\nEXEC\r\nWATCH a\r\nUNWATCH\r\n",
        );
        assert_eq!(
            String::from_utf8(replies).unwrap(),
            "+OK\r\n+QUEUED\r\n-ERR MULTI calls can not be nested\r\n-ERR WATCH inside MULTI is not allowed\r\n+QUEUED\r\n*2\r\n:1\r\n:2\r\n-ERR Tally does not support WATCH: MULTI/EXEC transactions run without optimistic locking\r\n+OK\r\n"
        );
        let replies = serve(b"HELLO 3 SETNAME x\r\nMULTI\r\nINCR a\r\nRESET\r\nCLIENT GETNAME\r\nEXEC\r\nGET a\r\nMULTI\r\nINCR a\r\nQUIT\r\nEXEC\r\n");
        let text = String::from_utf8(replies).unwrap();
        assert!(
            text.ends_with("+OK\r\n+QUEUED\r\n+RESET\r\n$-1\r\n-ERR EXEC without MULTI\r\n$-1\r\n+OK\r\n+QUEUED\r\n+OK\r\n"),
            "{text}"
        );
    }

    #[test]
    fn info_is_verbatim_text_in_resp3() {
        let replies = serve(b"HELLO 3\r\nINFO keyspace\r\nHELLO 2\r\nINFO keyspace\r\n");
        let text = String::from_utf8(replies).unwrap();
        assert!(text.contains("=16\r\ntxt:# Keyspace\r\n\r\n"), "{text}");
        assert!(text.ends_with("$12\r\n# Keyspace\r\n\r\n"), "{text}");
    }

    #[test]
    fn client_names_follow_redis_rules() {
        let replies = serve(b"CLIENT SETNAME \"a b\"\r\nHELLO 2 SETNAME \"a\tb\"\r\nCLIENT GETNAME\r\nCLIENT SETNAME a-b\r\nCLIENT GETNAME\r\n");
        let error = "-ERR Client names cannot contain spaces, newlines or special characters.\r\n";
        assert_eq!(
            String::from_utf8(replies).unwrap(),
            format!("{error}{error}$-1\r\n+OK\r\n$3\r\na-b\r\n")
        );
    }

    #[test]
    fn command_forms_agree_with_each_other() {
        let count = String::from_utf8(serve(b"COMMAND COUNT\r\n")).unwrap();
        let table = serve(b"COMMAND\r\n");
        let expected_header = format!("*{}\r\n*10\r\n$4\r\nping\r\n", COMMAND_TABLE.len());
        assert_eq!(count, format!(":{}\r\n", COMMAND_TABLE.len()));
        assert!(table.starts_with(expected_header.as_bytes()));
        assert_eq!(serve(b"COMMAND INFO\r\n"), table, "no names: every entry");
        let info = String::from_utf8(serve(b"COMMAND INFO get nosuch\r\n")).unwrap();
        assert!(
            info.starts_with("*2\r\n*10\r\n$3\r\nget\r\n:2\r\n"),
            "{info}"
        );
        assert!(info.ends_with("$-1\r\n"), "{info}");
        let docs = serve(b"COMMAND DOCS get\r\n");
        assert!(docs.starts_with(b"*2\r\n$3\r\nget\r\n*10\r\n$7\r\nsummary\r\n"));
        let help = String::from_utf8(serve(b"COMMAND HELP\r\n")).unwrap();
        assert!(help.starts_with("*13\r\n+COMMAND <subcommand>"), "{help}");
    }

    #[test]
    fn hello_3_switches_to_resp3_nulls() {
        let replies = serve(b"HELLO 3\r\nGET missing\r\nCLIENT GETNAME\r\n");
        assert!(replies.starts_with(b"%7\r\n"));
        assert!(replies.ends_with(b"_\r\n_\r\n"));
    }

    #[test]
    fn tools_start_up_and_quit() {
        let replies = serve(
            b"COMMAND DOCS\r\nCONFIG GET save\r\nCONFIG GET appendonly\r\nPING\r\nQUIT\r\nPING\r\n",
        );
        let text = String::from_utf8(replies).unwrap();
        // redis-cli builds its help from every command's docs.
        let docs_header = format!("*{}\r\n$4\r\nping\r\n", 2 * COMMAND_TABLE.len());
        assert!(text.starts_with(&docs_header), "{}", &text[..80]);
        assert!(text.ends_with(
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n+PONG\r\n+OK\r\n"
        ));
    }

    #[test]
    fn info_lists_the_asked_sections() {
        let info = ServerInfo {
            keys: Some(3),
            ..ServerInfo::default()
        };
        let text = info_text(&info, &[b"keyspace"]);
        assert_eq!(text, "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n");
        assert!(info_text(&info, &[]).contains("# Server\r\nredis_version:"));
    }
}
