//! The commands Tally's Redis door understands, parsed from a [`Request`] and encoded
//! back into one (for clients, load generators and round-trip tests).
//!
//! Command names and subcommands are case-insensitive. Keys borrow the receive buffer
//! and are checked to be 1..=[`KEY_BYTES_MAX`] bytes; integers are parsed strictly (see
//! [`crate::number`]). Errors here are command errors: the request was well framed, so
//! the connection stays usable (see [`RespError::closes_connection`]).
//!
//! Arity follows Redis's command table: `INCR key` takes exactly 2 arguments counting the
//! name, `DEL key [key ...]` at least 2, and so on.

use crate::error::{sanitized, RespError};
use crate::number::{format_i64, parse_i64};
use crate::reply::ProtocolVersion;
use crate::request::{Arguments, Request};
use crate::KEY_BYTES_MAX;

/// One command, borrowing its keys and strings from the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// `PING [message]`: `+PONG`, or the message as a bulk string.
    Ping { message: Option<&'a [u8]> },
    /// `ECHO message`.
    Echo { message: &'a [u8] },
    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
    Hello {
        protocol_version: Option<ProtocolVersion>,
        auth: Option<(&'a [u8], &'a [u8])>,
        client_name: Option<&'a [u8]>,
    },
    /// `INCR key`.
    Incr { key: &'a [u8] },
    /// `INCRBY key delta`.
    IncrBy { key: &'a [u8], delta: i64 },
    /// `DECR key`.
    Decr { key: &'a [u8] },
    /// `DECRBY key delta` (the server subtracts `delta`; `i64::MIN` cannot be negated).
    DecrBy { key: &'a [u8], delta: i64 },
    /// `GET key`.
    Get { key: &'a [u8] },
    /// `SET key value`, with an integer value and no options.
    Set { key: &'a [u8], value: i64 },
    /// `DEL key [key ...]`.
    Del { keys: Vec<&'a [u8]> },
    /// `EXISTS key [key ...]`.
    Exists { keys: Vec<&'a [u8]> },
    /// `MGET key [key ...]`.
    MGet { keys: Vec<&'a [u8]> },
    /// `COMMAND [COUNT | DOCS [name ...] | INFO [name ...] | LIST | HELP]`.
    Command(CommandQuery<'a>),
    /// `INFO [section ...]`.
    Info { sections: Vec<&'a [u8]> },
    /// `QUIT`: reply `+OK`, then close.
    Quit,
    /// `SELECT index` (Tally has only database 0).
    Select { index: i64 },
    /// `CONFIG GET parameter [parameter ...]`.
    ConfigGet { parameters: Vec<&'a [u8]> },
    /// `CLIENT SETNAME name`.
    ClientSetName { name: &'a [u8] },
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT SETINFO attribute value` (sent by recent client libraries on connect).
    ClientSetInfo {
        attribute: &'a [u8],
        value: &'a [u8],
    },
    /// `EXPIRE key seconds [NX | XX | GT | LT]` (the option is accepted and not kept:
    /// the door refuses expiry whatever it is).
    Expire { key: &'a [u8], seconds: i64 },
    /// `PEXPIRE key milliseconds [NX | XX | GT | LT]`.
    PExpire { key: &'a [u8], milliseconds: i64 },
    /// `EXPIREAT key unix-time-seconds [NX | XX | GT | LT]`.
    ExpireAt { key: &'a [u8], unix_seconds: i64 },
    /// `PEXPIREAT key unix-time-milliseconds [NX | XX | GT | LT]`.
    PExpireAt {
        key: &'a [u8],
        unix_milliseconds: i64,
    },
    /// `TTL key`.
    Ttl { key: &'a [u8] },
    /// `PTTL key`.
    PTtl { key: &'a [u8] },
    /// `PERSIST key`.
    Persist { key: &'a [u8] },
    /// `MULTI`: queue the following commands until `EXEC` or `DISCARD`.
    Multi,
    /// `EXEC`: run the queued commands, in order.
    Exec,
    /// `DISCARD`: drop the queued commands.
    Discard,
    /// `WATCH key [key ...]` (refused: Tally has no optimistic locking).
    Watch { keys: Vec<&'a [u8]> },
    /// `UNWATCH` (nothing is ever watched).
    Unwatch,
    /// `RESET`: back to a new connection's state (RESP2, no name, no transaction).
    Reset,
}

/// Most arguments an expiry command with a time takes, counting the name: Redis 7's
/// `EXPIRE key seconds [NX | XX | GT | LT]` is 3 or 4 (its table says "at least 3"; more
/// options than one are refused, here by the expiry error like any other form).
const EXPIRY_ARGUMENTS_MAX: usize = usize::MAX;

/// The forms of `COMMAND`; redis-cli sends `COMMAND DOCS` when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandQuery<'a> {
    /// `COMMAND`: the full command table.
    Table,
    /// `COMMAND COUNT`.
    Count,
    /// `COMMAND DOCS [name ...]`.
    Docs { names: Vec<&'a [u8]> },
    /// `COMMAND INFO [name ...]`.
    Info { names: Vec<&'a [u8]> },
    /// `COMMAND LIST`.
    List,
    /// `COMMAND HELP`.
    Help,
}

impl<'a> Command<'a> {
    /// Interpret a framed, non-empty request.
    pub fn from_request(request: &Request<'a>) -> Result<Command<'a>, RespError> {
        request.check_limits()?;
        let mut arguments = request.arguments();
        let Some(name) = arguments.next() else {
            // Empty requests are skipped by `crate::parse`; a caller framing by hand
            // gets the error Redis would give a nameless command.
            return Err(unknown_command(b"", arguments));
        };
        let parser = Parser {
            name,
            arguments,
            count: request.argument_count(),
        };
        parser.parse()
    }

    /// Append this command to `out` as a multibulk request.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut counter = RequestWriter {
            count: 0,
            out: None,
        };
        self.write_arguments(&mut counter);
        crate::reply::write_array_header(out, counter.count);
        let mut writer = RequestWriter {
            count: 0,
            out: Some(out),
        };
        self.write_arguments(&mut writer);
        debug_assert_eq!(writer.count, counter.count);
    }
}

/// A request being parsed: its name, the arguments after it, and the total count.
struct Parser<'a> {
    name: &'a [u8],
    arguments: Arguments<'a>,
    count: usize,
}

impl<'a> Parser<'a> {
    fn parse(mut self) -> Result<Command<'a>, RespError> {
        let name = self.name;
        let is = |candidate: &str| name.eq_ignore_ascii_case(candidate.as_bytes());
        let command = if is("incrby") {
            self.arity("incrby", 3, 3)?;
            Command::IncrBy {
                key: self.key()?,
                delta: self.integer()?,
            }
        } else if is("incr") {
            self.arity("incr", 2, 2)?;
            Command::Incr { key: self.key()? }
        } else if is("decrby") {
            self.arity("decrby", 3, 3)?;
            Command::DecrBy {
                key: self.key()?,
                delta: self.integer()?,
            }
        } else if is("decr") {
            self.arity("decr", 2, 2)?;
            Command::Decr { key: self.key()? }
        } else if is("get") {
            self.arity("get", 2, 2)?;
            Command::Get { key: self.key()? }
        } else if is("set") {
            self.parse_set()?
        } else if is("del") {
            self.arity("del", 2, usize::MAX)?;
            Command::Del { keys: self.keys()? }
        } else if is("exists") {
            self.arity("exists", 2, usize::MAX)?;
            Command::Exists { keys: self.keys()? }
        } else if is("mget") {
            self.arity("mget", 2, usize::MAX)?;
            Command::MGet { keys: self.keys()? }
        } else {
            return self.parse_administrative();
        };
        Ok(command)
    }

    /// The commands that do not touch counters, and expiry.
    fn parse_administrative(mut self) -> Result<Command<'a>, RespError> {
        let name = self.name;
        let is = |candidate: &str| name.eq_ignore_ascii_case(candidate.as_bytes());
        let command = if is("ping") {
            self.arity("ping", 1, 2)?;
            Command::Ping {
                message: self.arguments.next(),
            }
        } else if is("echo") {
            self.arity("echo", 2, 2)?;
            Command::Echo {
                message: self.string(),
            }
        } else if is("hello") {
            self.parse_hello()?
        } else if is("command") {
            Command::Command(self.parse_command_query()?)
        } else if is("info") {
            Command::Info {
                sections: self.arguments.collect(),
            }
        } else if is("quit") {
            Command::Quit
        } else if is("select") {
            self.arity("select", 2, 2)?;
            Command::Select {
                index: self.integer()?,
            }
        } else if is("config") {
            self.parse_config()?
        } else if is("client") {
            self.parse_client()?
        } else {
            return self.parse_transaction();
        };
        Ok(command)
    }

    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH and RESET.
    fn parse_transaction(mut self) -> Result<Command<'a>, RespError> {
        let name = self.name;
        let is = |candidate: &str| name.eq_ignore_ascii_case(candidate.as_bytes());
        let command = if is("multi") {
            self.arity("multi", 1, 1)?;
            Command::Multi
        } else if is("exec") {
            self.arity("exec", 1, 1)?;
            Command::Exec
        } else if is("discard") {
            self.arity("discard", 1, 1)?;
            Command::Discard
        } else if is("watch") {
            self.arity("watch", 2, usize::MAX)?;
            Command::Watch { keys: self.keys()? }
        } else if is("unwatch") {
            self.arity("unwatch", 1, 1)?;
            Command::Unwatch
        } else if is("reset") {
            self.arity("reset", 1, 1)?;
            Command::Reset
        } else {
            return self.parse_expiry();
        };
        Ok(command)
    }

    fn parse_expiry(mut self) -> Result<Command<'a>, RespError> {
        let name = self.name;
        let is = |candidate: &str| name.eq_ignore_ascii_case(candidate.as_bytes());
        let command = if is("expire") {
            self.arity("expire", 3, EXPIRY_ARGUMENTS_MAX)?;
            Command::Expire {
                key: self.key()?,
                seconds: self.integer()?,
            }
        } else if is("pexpire") {
            self.arity("pexpire", 3, EXPIRY_ARGUMENTS_MAX)?;
            Command::PExpire {
                key: self.key()?,
                milliseconds: self.integer()?,
            }
        } else if is("expireat") {
            self.arity("expireat", 3, EXPIRY_ARGUMENTS_MAX)?;
            Command::ExpireAt {
                key: self.key()?,
                unix_seconds: self.integer()?,
            }
        } else if is("pexpireat") {
            self.arity("pexpireat", 3, EXPIRY_ARGUMENTS_MAX)?;
            Command::PExpireAt {
                key: self.key()?,
                unix_milliseconds: self.integer()?,
            }
        } else if is("persist") {
            self.arity("persist", 2, 2)?;
            Command::Persist { key: self.key()? }
        } else if is("ttl") {
            self.arity("ttl", 2, 2)?;
            Command::Ttl { key: self.key()? }
        } else if is("pttl") {
            self.arity("pttl", 2, 2)?;
            Command::PTtl { key: self.key()? }
        } else {
            return Err(unknown_command(self.name, self.arguments));
        };
        Ok(command)
    }

    fn parse_set(mut self) -> Result<Command<'a>, RespError> {
        self.arity("set", 3, usize::MAX)?;
        let key = self.key()?;
        let value = parse_i64(self.string()).ok_or(RespError::SetValueNotInteger)?;
        if self.count > 3 {
            return Err(RespError::SetOptionsUnsupported);
        }
        Ok(Command::Set { key, value })
    }

    fn parse_hello(mut self) -> Result<Command<'a>, RespError> {
        let Some(version) = self.arguments.next() else {
            return Ok(Command::Hello {
                protocol_version: None,
                auth: None,
                client_name: None,
            });
        };
        let protocol_version = match parse_i64(version) {
            None => return Err(RespError::ProtocolVersionNotInteger),
            Some(2) => ProtocolVersion::Resp2,
            Some(3) => ProtocolVersion::Resp3,
            Some(_) => return Err(RespError::UnsupportedProtocolVersion),
        };
        let (mut auth, mut client_name) = (None, None);
        while let Some(option) = self.arguments.next() {
            if option.eq_ignore_ascii_case(b"auth") && self.arguments.len() >= 2 {
                auth = Some((self.string(), self.string()));
            } else if option.eq_ignore_ascii_case(b"setname") && self.arguments.len() >= 1 {
                client_name = Some(self.string());
            } else {
                let option = crate::error::sanitized(option, 128);
                return Err(RespError::HelloOption { option });
            }
        }
        Ok(Command::Hello {
            protocol_version: Some(protocol_version),
            auth,
            client_name,
        })
    }

    fn parse_command_query(mut self) -> Result<CommandQuery<'a>, RespError> {
        let Some(subcommand) = self.arguments.next() else {
            return Ok(CommandQuery::Table);
        };
        let is = |candidate: &str| subcommand.eq_ignore_ascii_case(candidate.as_bytes());
        let query = if is("count") {
            self.arity("command|count", 2, 2)?;
            CommandQuery::Count
        } else if is("docs") {
            CommandQuery::Docs {
                names: self.arguments.collect(),
            }
        } else if is("info") {
            CommandQuery::Info {
                names: self.arguments.collect(),
            }
        } else if is("list") {
            // COMMAND LIST FILTERBY ... is not served; plain LIST is.
            self.arity("command|list", 2, 2)?;
            CommandQuery::List
        } else if is("help") {
            self.arity("command|help", 2, 2)?;
            CommandQuery::Help
        } else {
            return Err(unknown_subcommand("COMMAND", subcommand));
        };
        Ok(query)
    }

    fn parse_config(mut self) -> Result<Command<'a>, RespError> {
        self.arity("config", 2, usize::MAX)?;
        let subcommand = self.string();
        if !subcommand.eq_ignore_ascii_case(b"get") {
            return Err(unknown_subcommand("CONFIG", subcommand));
        }
        self.arity("config|get", 3, usize::MAX)?;
        Ok(Command::ConfigGet {
            parameters: self.arguments.collect(),
        })
    }

    fn parse_client(mut self) -> Result<Command<'a>, RespError> {
        self.arity("client", 2, usize::MAX)?;
        let subcommand = self.string();
        let is = |candidate: &str| subcommand.eq_ignore_ascii_case(candidate.as_bytes());
        let command = if is("setname") {
            self.arity("client|setname", 3, 3)?;
            Command::ClientSetName {
                name: self.string(),
            }
        } else if is("getname") {
            self.arity("client|getname", 2, 2)?;
            Command::ClientGetName
        } else if is("id") {
            self.arity("client|id", 2, 2)?;
            Command::ClientId
        } else if is("setinfo") {
            self.arity("client|setinfo", 4, 4)?;
            Command::ClientSetInfo {
                attribute: self.string(),
                value: self.string(),
            }
        } else {
            return Err(unknown_subcommand("CLIENT", subcommand));
        };
        Ok(command)
    }

    /// Check that the request has `min..=max` arguments, the name included.
    fn arity(&self, command: &'static str, min: usize, max: usize) -> Result<(), RespError> {
        if (min..=max).contains(&self.count) {
            Ok(())
        } else {
            Err(RespError::WrongArity { command })
        }
    }

    /// The next argument; arity was checked first, so a missing one reads as empty.
    fn string(&mut self) -> &'a [u8] {
        self.arguments.next().unwrap_or_default()
    }

    fn key(&mut self) -> Result<&'a [u8], RespError> {
        checked_key(self.string())
    }

    fn keys(&mut self) -> Result<Vec<&'a [u8]>, RespError> {
        self.arguments.by_ref().map(checked_key).collect()
    }

    fn integer(&mut self) -> Result<i64, RespError> {
        parse_i64(self.string()).ok_or(RespError::NotAnInteger)
    }
}

fn checked_key(key: &[u8]) -> Result<&[u8], RespError> {
    if (1..=KEY_BYTES_MAX).contains(&key.len()) {
        Ok(key)
    } else {
        Err(RespError::InvalidKeyLength { length: key.len() })
    }
}

/// Redis's text: the name (at most 128 bytes), then each argument quoted and followed by
/// a space, while the argument text is under 128 bytes.
fn unknown_command(name: &[u8], arguments: Arguments<'_>) -> RespError {
    const SHOWN_BYTES_MAX: usize = 128;
    let mut shown = String::new();
    for argument in arguments {
        if shown.len() >= SHOWN_BYTES_MAX {
            break;
        }
        let room = SHOWN_BYTES_MAX - shown.len();
        shown.push('\'');
        shown.push_str(&sanitized(argument, room));
        shown.push_str("' ");
    }
    RespError::UnknownCommand {
        name: sanitized(name, SHOWN_BYTES_MAX),
        arguments: shown,
    }
}

fn unknown_subcommand(command: &'static str, subcommand: &[u8]) -> RespError {
    RespError::UnknownSubcommand {
        command,
        subcommand: sanitized(subcommand, 128),
    }
}

/// Writes a request's arguments as bulks, or only counts them when `out` is `None`:
/// [`Command::encode`] counts first, to write the `*<count>` header without allocating.
struct RequestWriter<'o> {
    count: usize,
    out: Option<&'o mut Vec<u8>>,
}

impl RequestWriter<'_> {
    fn bytes(&mut self, argument: &[u8]) -> &mut Self {
        self.count += 1;
        if let Some(out) = self.out.as_deref_mut() {
            crate::reply::write_bulk(out, argument);
        }
        self
    }

    fn integer(&mut self, value: i64) -> &mut Self {
        let mut digits = [0_u8; crate::number::I64_DECIMAL_BYTES_MAX];
        self.bytes(format_i64(&mut digits, value))
    }

    fn all(&mut self, arguments: &[&[u8]]) -> &mut Self {
        for argument in arguments {
            self.bytes(argument);
        }
        self
    }
}

impl Command<'_> {
    fn write_arguments(&self, writer: &mut RequestWriter) {
        match self {
            Command::Ping { message } => {
                writer.bytes(b"PING").all(message.as_slice());
            }
            Command::Echo { message } => {
                writer.bytes(b"ECHO").bytes(message);
            }
            Command::Hello {
                protocol_version,
                auth,
                client_name,
            } => write_hello(writer, *protocol_version, *auth, *client_name),
            Command::Incr { key } => {
                writer.bytes(b"INCR").bytes(key);
            }
            Command::IncrBy { key, delta } => {
                writer.bytes(b"INCRBY").bytes(key).integer(*delta);
            }
            Command::Decr { key } => {
                writer.bytes(b"DECR").bytes(key);
            }
            Command::DecrBy { key, delta } => {
                writer.bytes(b"DECRBY").bytes(key).integer(*delta);
            }
            Command::Get { key } => {
                writer.bytes(b"GET").bytes(key);
            }
            Command::Set { key, value } => {
                writer.bytes(b"SET").bytes(key).integer(*value);
            }
            Command::Del { keys } => {
                writer.bytes(b"DEL").all(keys);
            }
            Command::Exists { keys } => {
                writer.bytes(b"EXISTS").all(keys);
            }
            Command::MGet { keys } => {
                writer.bytes(b"MGET").all(keys);
            }
            _ => self.write_administrative_arguments(writer),
        }
    }

    fn write_administrative_arguments(&self, writer: &mut RequestWriter) {
        match self {
            Command::Command(query) => {
                writer.bytes(b"COMMAND");
                match query {
                    CommandQuery::Table => {}
                    CommandQuery::Count => {
                        writer.bytes(b"COUNT");
                    }
                    CommandQuery::Docs { names } => {
                        writer.bytes(b"DOCS").all(names);
                    }
                    CommandQuery::Info { names } => {
                        writer.bytes(b"INFO").all(names);
                    }
                    CommandQuery::List => {
                        writer.bytes(b"LIST");
                    }
                    CommandQuery::Help => {
                        writer.bytes(b"HELP");
                    }
                }
            }
            Command::Info { sections } => {
                writer.bytes(b"INFO").all(sections);
            }
            Command::Quit => {
                writer.bytes(b"QUIT");
            }
            Command::Select { index } => {
                writer.bytes(b"SELECT").integer(*index);
            }
            Command::ConfigGet { parameters } => {
                writer.bytes(b"CONFIG").bytes(b"GET").all(parameters);
            }
            Command::ClientSetName { name } => {
                writer.bytes(b"CLIENT").bytes(b"SETNAME").bytes(name);
            }
            Command::ClientGetName => {
                writer.bytes(b"CLIENT").bytes(b"GETNAME");
            }
            Command::ClientId => {
                writer.bytes(b"CLIENT").bytes(b"ID");
            }
            Command::ClientSetInfo { attribute, value } => {
                writer.bytes(b"CLIENT").bytes(b"SETINFO");
                writer.bytes(attribute).bytes(value);
            }
            _ => self.write_expiry_arguments(writer),
        }
    }

    fn write_expiry_arguments(&self, writer: &mut RequestWriter) {
        match self {
            Command::Expire { key, seconds } => {
                writer.bytes(b"EXPIRE").bytes(key).integer(*seconds);
            }
            Command::PExpire { key, milliseconds } => {
                writer.bytes(b"PEXPIRE").bytes(key).integer(*milliseconds);
            }
            Command::ExpireAt { key, unix_seconds } => {
                writer.bytes(b"EXPIREAT").bytes(key).integer(*unix_seconds);
            }
            Command::PExpireAt {
                key,
                unix_milliseconds,
            } => {
                writer
                    .bytes(b"PEXPIREAT")
                    .bytes(key)
                    .integer(*unix_milliseconds);
            }
            Command::Persist { key } => {
                writer.bytes(b"PERSIST").bytes(key);
            }
            Command::Ttl { key } => {
                writer.bytes(b"TTL").bytes(key);
            }
            Command::PTtl { key } => {
                writer.bytes(b"PTTL").bytes(key);
            }
            _ => self.write_transaction_arguments(writer),
        }
    }

    fn write_transaction_arguments(&self, writer: &mut RequestWriter) {
        let name: &[u8] = match self {
            Command::Multi => b"MULTI",
            Command::Exec => b"EXEC",
            Command::Discard => b"DISCARD",
            Command::Watch { keys } => {
                writer.bytes(b"WATCH").all(keys);
                return;
            }
            Command::Unwatch => b"UNWATCH",
            Command::Reset => b"RESET",
            _ => unreachable!("every other command is written by write_arguments"),
        };
        writer.bytes(name);
    }
}

fn write_hello(
    writer: &mut RequestWriter,
    protocol_version: Option<ProtocolVersion>,
    auth: Option<(&[u8], &[u8])>,
    client_name: Option<&[u8]>,
) {
    writer.bytes(b"HELLO");
    // Options need a version before them; encode one if the command has options only.
    let version = match (protocol_version, auth.is_some() || client_name.is_some()) {
        (Some(version), _) => Some(version),
        (None, true) => Some(ProtocolVersion::Resp2),
        (None, false) => None,
    };
    if let Some(version) = version {
        writer.integer(i64::from(version.number()));
    }
    if let Some((username, password)) = auth {
        writer.bytes(b"AUTH").bytes(username).bytes(password);
    }
    if let Some(name) = client_name {
        writer.bytes(b"SETNAME").bytes(name);
    }
}
