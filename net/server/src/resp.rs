//! The Redis door: one RESP connection, from bytes to counter operations and back.
//!
//! `tally-resp` frames and interprets commands and writes replies
//! ([`tally_resp::door::Session`]); this module moves the bytes and applies the counter
//! operations through the same routing path as native batches ([`Dispatch`]).
//!
//! Each turn reads whatever the socket has (one `read`), then, for every complete
//! command in the buffer (at most `frames_in_flight_max` per turn), in order:
//! `Session::begin` either writes the reply at once (PING, HELLO, errors, ...) into a
//! staging buffer or yields the command's counter operations, which are appended to one
//! list for the whole turn. The list is applied with one [`Dispatch::apply`] (one engine
//! batch per core, one mesh round trip per foreign core), the pending replies are
//! finished from the results, and every reply of the turn leaves in request order with
//! one `write`. So `redis-benchmark -P 16` costs one read, one dispatch and one write
//! per 16 commands.
//!
//! The list is applied early (a *flush*, still inside the turn) before an `INFO`, so that
//! it counts the commands before it, and before the list would exceed the engine's
//! batch limit. Per-key order holds as in [`Dispatch`].
//!
//! Transactions: `MULTI` ... `EXEC` is queued in the session (no counter is touched
//! while queuing, so a transaction that is discarded, aborted, or cut off by a closed
//! connection changes nothing). At `EXEC` the list so far is flushed, and the queued
//! commands are served as one more pipelined list through the same [`Dispatch`]: each
//! operation is applied exactly once, in order per key, and EXEC's reply leaves only
//! once all of them are applied (and, for `durable`, on disk). Isolation is what the
//! dispatch gives, not Redis's: each core applies its share of the transaction as one
//! batch, without another client's operations in between, as long as the transaction
//! fits one batch (`BATCH_OPS_MAX` operations) and holds no `INFO`; across cores, other
//! clients' commands may interleave (another client may see the transaction's increment
//! on one core before the one on another), and a crash may keep part of a transaction
//! (one core's share and not another's). Increments are never lost or applied twice.
//!
//! Errors: a command error (unknown command, wrong arity, not an integer) is answered
//! and the connection stays usable; a protocol error (garbage framing, oversized bulk)
//! is answered, then the connection is closed, as Redis does. Limits: a request is at
//! most `REQUEST_BYTES_MAX` bytes, so the input buffer grows to
//! [`INPUT_BYTES_MAX`] at most and shrinks back once drained; connections count against
//! the server's `connections_max` together with native ones. An idle connection is
//! kept open, as Redis's default `timeout 0` does (pooled clients keep connections for
//! a long time), unless `resp_idle_timeout_ms` is set: then it is closed silently after
//! that long, as Redis's `timeout` does. A command whose first byte has arrived must
//! still be complete within `read_timeout_ms`, so a slow sender is cut off
//! ([`RespDeadline`]).
//!
//! `INFO` figures: each core publishes its counter count, arena bytes and RESP command
//! count into [`RespShared`] every `POLL_INTERVAL` (10 ms) and right before it answers
//! an `INFO` itself, so another core's figures may be up to 10 ms old. Publishing is off
//! the data path: the data path only bumps a core-local `Cell`.

use std::cell::Cell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use tally_engine::{recycle_ops, BoundPolicy, Op, OpError, BATCH_OPS_MAX};
use tally_resp::door::{CounterOp, CounterResult, Pending, ServerInfo, Session, Step};
use tally_resp::transaction::Transaction;
use tally_resp::{Command, ProtocolVersion, RespError, REQUEST_BYTES_MAX};

use crate::core::Core;
use crate::dispatch::{Dispatch, Route, RoutedResult};
use crate::stream::{self, Input};

/// The input buffer's size between large requests.
const INPUT_BYTES_INITIAL: usize = 16 * 1024;
/// The input buffer's largest size: one maximal request and the start of the next.
pub const INPUT_BYTES_MAX: usize = REQUEST_BYTES_MAX + INPUT_BYTES_INITIAL;

const _: () = assert!(INPUT_BYTES_INITIAL < INPUT_BYTES_MAX);

/// Redis's reply to a connection over `maxclients`.
const REFUSED_REPLY: &[u8] = b"-ERR max number of clients reached\r\n";

/// What all cores share for `INFO`: start time, the RESP port, each core's figures.
#[derive(Debug)]
pub struct RespShared {
    started: Instant,
    tcp_port: u16,
    figures: Box<[PublishedFigures]>,
}

/// One core's figures, written only by that core.
#[derive(Debug, Default)]
struct PublishedFigures {
    counters: AtomicU64,
    arena_bytes: AtomicU64,
    commands: AtomicU64,
}

impl RespShared {
    /// Figures for `cores` cores, with `tcp_port` the RESP port (0 if none).
    pub fn new(cores: usize, tcp_port: u16) -> Arc<RespShared> {
        Arc::new(RespShared {
            started: Instant::now(),
            tcp_port,
            figures: (0..cores).map(|_| PublishedFigures::default()).collect(),
        })
    }
}

/// A core's Redis-door state: core-local counters and the shared figures.
#[derive(Debug)]
pub struct RespCore {
    shared: Arc<RespShared>,
    commands: Cell<u64>,
    connections_started: Cell<u64>,
}

impl RespCore {
    /// How long the server has run (since its cores' shared state was made, at start).
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// A core's state, publishing into `shared`.
    pub fn new(shared: Arc<RespShared>) -> RespCore {
        RespCore {
            shared,
            commands: Cell::new(0),
            connections_started: Cell::new(0),
        }
    }
}

/// Publishes this core's figures for `INFO` on any core.
pub fn publish_figures(core: &Core) {
    let figures = &core.resp.shared.figures[core.index];
    let store = core.store.borrow();
    figures
        .counters
        .store(store.counter_count(), Ordering::Relaxed);
    figures
        .arena_bytes
        .store(store.arena_bytes(), Ordering::Relaxed);
    figures
        .commands
        .store(core.resp.commands.get(), Ordering::Relaxed);
}

/// The figures `INFO` reports, summed over all cores.
fn server_info(core: &Core) -> ServerInfo {
    publish_figures(core);
    let shared = &core.resp.shared;
    let sum = |field: fn(&PublishedFigures) -> &AtomicU64| {
        let values = shared.figures.iter().map(field);
        values.map(|value| value.load(Ordering::Relaxed)).sum()
    };
    ServerInfo {
        tally_version: env!("CARGO_PKG_VERSION"),
        tcp_port: shared.tcp_port,
        uptime_s: shared.started.elapsed().as_secs(),
        cores: core.cores,
        connected_clients: Some(core.connections_open.load(Ordering::Relaxed) as u64),
        used_memory_bytes: Some(sum(|figures| &figures.arena_bytes)),
        commands_processed: Some(sum(|figures| &figures.commands)),
        keys: Some(sum(|figures| &figures.counters)),
    }
}

/// Answers a connection over the limit as Redis does, then closes it.
pub async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(REFUSED_REPLY).await;
    let _ = stream.close().await;
}

/// Serves one RESP connection until the client closes it or QUITs, it times out, it
/// breaks the framing, or the server shuts down.
pub async fn serve(core: Rc<Core>, mut stream: TcpStream, peer: SocketAddr) {
    let registration = stream::open(&core, &stream, peer, "resp");
    let started = core.resp.connections_started.get();
    core.resp.connections_started.set(started + 1);
    // Unique across cores: core index in the low digits, as in a mixed-radix number.
    let connection_id = (started * core.cores as u64 + core.index as u64 + 1) as i64;
    let mut connection = Connection::new(&core, connection_id);
    match connection.run(&core, &mut stream).await {
        Ok(Ending::Closed(reason)) => {
            tracing::debug!(core = core.index, %peer, reason, "RESP connection closed")
        }
        // As the native door: a protocol error or a timeout is the client's fault, and
        // an operator wants to see it without debug logging.
        Ok(Ending::Refused(reason)) => {
            tracing::warn!(core = core.index, %peer, reason, "RESP connection closed by the server")
        }
        // Routine for pooled clients: not a warning.
        Ok(Ending::Idle) => tracing::info!(
            core = core.index,
            %peer,
            "RESP connection closed: idle for the RESP idle timeout"
        ),
        Err(error) => {
            tracing::info!(core = core.index, %peer, %error, "RESP connection ended with an I/O error")
        }
    }
    stream::close(&core, stream, registration).await;
}

/// How a connection ended in order (not by an I/O error).
enum Ending {
    /// The client closed it or sent QUIT, or the server shut down: why.
    Closed(String),
    /// The server closed it after a protocol error or a timeout: why.
    Refused(String),
    /// The server closed it after nothing was received for the RESP idle timeout (as
    /// Redis's `timeout` does, silently).
    Idle,
}

/// How a turn ended.
enum TurnEnd {
    /// Every complete command was answered; read more.
    Drained,
    /// The per-turn command limit was reached; more may be buffered.
    LimitReached,
    /// The connection must close once the replies are sent: why.
    Close(String),
    /// The connection must close once the error reply is sent: what was wrong.
    Refuse(String),
    /// The next command is an inline line that needs Redis's full splitting (escapes in
    /// quotes): served from its rewritten form (`tally_resp::rewrite_inline`).
    Rewrite,
}

/// What serving a rewritten inline line left.
enum Rewritten {
    Served,
    /// The line was not complete (never, after a turn framed it): read more.
    Incomplete,
    /// The connection must close: why.
    End(Ending),
}

/// What the turn does after a command.
enum Next {
    /// Go on with the next command.
    Read,
    /// The connection must close once the replies are sent: why.
    Close(String),
    /// Serve the transaction's commands (EXEC), then go on.
    Exec(Transaction),
}

/// A reply of the turn, in request order: written at once, or waiting for results.
enum Item<'a> {
    Staged(Range<usize>),
    Counter {
        pending: Pending<'a>,
        version: ProtocolVersion,
        ops: Range<usize>,
    },
}

/// A connection: its input, and the rest of its state, kept apart because the commands
/// of a turn borrow the input while the state changes.
struct Connection {
    input: Input,
    deadline: RespDeadline,
    state: State,
}

/// The read timeout of a RESP connection: `idle` between commands (`None`: wait for
/// ever, as Redis does by default), and `request` from a command's first byte to its
/// last, so that a client trickling a command cannot hold it open. Unlike the native
/// door's `ReadDeadline`, the two differ, so the stream's timeout is set on each change.
struct RespDeadline {
    idle: Option<Duration>,
    request: Option<Duration>,
    /// When the partly read command must be complete, if one is.
    request_deadline: Option<Instant>,
    /// The timeout the stream has now.
    current: Option<Duration>,
}

impl RespDeadline {
    /// For a stream opened with [`stream::open`], which set `current` as its timeout.
    fn new(idle: Option<Duration>, request: Option<Duration>, current: Option<Duration>) -> Self {
        RespDeadline {
            idle,
            request,
            request_deadline: None,
            current,
        }
    }

    /// Some command was completed: a partial one left in the input is the next one,
    /// and its time counts from now.
    fn request_done(&mut self) {
        self.request_deadline = None;
    }

    /// Sets the stream's timeout for its next read; `partial` says whether part of a
    /// command is buffered. `Err` (`TimedOut`) if that command's time is up already.
    fn arm(&mut self, stream: &TcpStream, partial: bool) -> std::io::Result<()> {
        let wanted = match (partial, self.request) {
            (false, _) => {
                self.request_deadline = None;
                self.idle
            }
            (true, None) => None,
            (true, Some(timeout)) => {
                let now = Instant::now();
                let deadline = *self.request_deadline.get_or_insert(now + timeout);
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    return Err(ErrorKind::TimedOut.into());
                }
                Some(left)
            }
        };
        if wanted != self.current {
            stream
                .set_read_timeout(wanted)
                .map_err(std::io::Error::from)?;
            self.current = wanted;
        }
        Ok(())
    }

    /// Whether a command was partly read when the timeout struck.
    fn within_request(&self) -> bool {
        self.request_deadline.is_some()
    }
}

/// Per-connection scratch, kept across turns.
struct State {
    session: Session,
    dispatch: Dispatch,
    staged: Vec<u8>,
    output: Vec<u8>,
    /// The turn's replies in order; kept empty between turns (see [`recycle_items`]).
    items: Vec<Item<'static>>,
    ops: Vec<Op<'static>>,
    results: Vec<RoutedResult>,
    counter_results: Vec<CounterResult>,
}

impl Connection {
    fn new(core: &Core, connection_id: i64) -> Connection {
        Connection {
            input: Input::new(INPUT_BYTES_INITIAL, INPUT_BYTES_MAX),
            deadline: RespDeadline::new(
                (core.config.resp_idle_timeout_ms > 0)
                    .then(|| Duration::from_millis(core.config.resp_idle_timeout_ms)),
                core.config.read_timeout(),
                core.config.read_timeout(),
            ),
            state: State {
                session: Session::new(connection_id),
                dispatch: Dispatch::new(core.cores),
                staged: Vec::new(),
                output: Vec::new(),
                items: Vec::new(),
                ops: Vec::new(),
                results: Vec::new(),
                counter_results: Vec::new(),
            },
        }
    }

    /// Reads and answers until the connection ends; `Ok` for an end not caused by an
    /// I/O error.
    async fn run(&mut self, core: &Core, stream: &mut TcpStream) -> std::io::Result<Ending> {
        loop {
            // The parser refuses any request longer than REQUEST_BYTES_MAX before it is
            // complete, so an input full to its limit always holds a refused request.
            if self.input.reserve(0).is_err() {
                let error = RespError::RequestTooLarge;
                let mut out = Vec::new();
                error.write_reply(&mut out);
                stream.write_all(&out).await?;
                return Ok(Ending::Refused(error.to_string()));
            }
            // A partly read command has the rest of the read timeout of its first byte.
            let partial = !self.input.buffered().is_empty();
            let read = match self.deadline.arm(stream, partial) {
                Ok(()) => self.input.read_from(stream).await,
                Err(error) => Err(error),
            };
            let eof = match read {
                Ok(0) => true,
                Ok(_) => false,
                Err(error) if error.kind() == ErrorKind::TimedOut => {
                    if !self.deadline.within_request() {
                        return Ok(Ending::Idle);
                    }
                    return Ok(Ending::Refused(
                        "read timeout: a command did not complete within the read timeout of \
                         its first byte"
                            .to_string(),
                    ));
                }
                Err(error) => return Err(error),
            };
            if let Some(ending) = self.answer_buffered(core, stream).await? {
                return Ok(ending);
            }
            if eof {
                return Ok(Ending::Closed("closed by the client".to_string()));
            }
        }
    }

    /// Answers every complete command in the input, a turn at a time. `Some(reason)`
    /// if the connection must close.
    async fn answer_buffered(
        &mut self,
        core: &Core,
        stream: &mut TcpStream,
    ) -> std::io::Result<Option<Ending>> {
        loop {
            let (consumed, end) = self.state.turn(core, self.input.buffered()).await;
            self.input.consume(consumed);
            if consumed > 0 {
                self.deadline.request_done();
            }
            let output = &mut self.state.output;
            if !output.is_empty() {
                stream.write_all(output).await?;
                output.clear();
            }
            match end {
                TurnEnd::Drained => return Ok(None),
                TurnEnd::LimitReached => continue,
                TurnEnd::Close(reason) => return Ok(Some(Ending::Closed(reason))),
                TurnEnd::Refuse(reason) => return Ok(Some(Ending::Refused(reason))),
                TurnEnd::Rewrite => match self.answer_rewritten(core, stream).await? {
                    Rewritten::Served => {}
                    Rewritten::Incomplete => return Ok(None),
                    Rewritten::End(ending) => return Ok(Some(ending)),
                },
            }
        }
    }

    /// Answers the next command of the input, an inline line that needs Redis's full
    /// splitting, through its multibulk rewriting.
    async fn answer_rewritten(
        &mut self,
        core: &Core,
        stream: &mut TcpStream,
    ) -> std::io::Result<Rewritten> {
        let (request, used) = match tally_resp::rewrite_inline(self.input.buffered()) {
            Ok(Some(rewritten)) => rewritten,
            // Not seen: the turn framed the whole line. Read more, never spin.
            Ok(None) => return Ok(Rewritten::Incomplete),
            Err(error) => {
                let mut out = Vec::new();
                error.write_reply(&mut out);
                stream.write_all(&out).await?;
                return Ok(Rewritten::End(Ending::Refused(error.to_string())));
            }
        };
        let (_, end) = self.state.turn(core, &request).await;
        self.input.consume(used);
        self.deadline.request_done();
        let output = &mut self.state.output;
        if !output.is_empty() {
            stream.write_all(output).await?;
            output.clear();
        }
        Ok(match end {
            TurnEnd::Drained | TurnEnd::LimitReached | TurnEnd::Rewrite => Rewritten::Served,
            TurnEnd::Close(reason) => Rewritten::End(Ending::Closed(reason)),
            TurnEnd::Refuse(reason) => Rewritten::End(Ending::Refused(reason)),
        })
    }
}

impl State {
    /// Answers up to `frames_in_flight_max` complete commands of `input` into `output`;
    /// returns the bytes consumed and how the turn ended.
    async fn turn<'a>(&mut self, core: &Core, input: &'a [u8]) -> (usize, TurnEnd) {
        let mut items = recycle_items(std::mem::take(&mut self.items));
        let mut ops: Vec<Op<'a>> = recycle_ops(std::mem::take(&mut self.ops));
        let (mut consumed, mut commands) = (0, 0);
        let mut end = TurnEnd::Drained;
        while commands < core.config.frames_in_flight_max {
            let parsed = match tally_resp::parse(&input[consumed..]) {
                Ok(None) => break,
                Ok(Some((parsed, used))) => {
                    consumed += used;
                    parsed
                }
                Err(RespError::InlineEscapeUnsupported) => {
                    end = TurnEnd::Rewrite;
                    break;
                }
                Err(error) => {
                    let start = self.staged.len();
                    error.write_reply(&mut self.staged);
                    items.push(Item::Staged(start..self.staged.len()));
                    end = TurnEnd::Refuse(error.to_string());
                    break;
                }
            };
            commands += 1;
            let next = self.begin(core, parsed, &mut items, &mut ops).await;
            // Counted once served, as Redis does: an INFO counts the commands before it
            // in the pipeline, not itself.
            core.resp.commands.set(core.resp.commands.get() + 1);
            match next {
                Next::Read => {}
                Next::Close(reason) => {
                    end = TurnEnd::Close(reason);
                    break;
                }
                Next::Exec(transaction) => {
                    self.flush(core, &mut items, &mut ops).await;
                    self.exec(core, &transaction).await;
                }
            }
        }
        self.flush(core, &mut items, &mut ops).await;
        self.ops = recycle_ops(ops);
        self.items = recycle_items(items);
        if commands == core.config.frames_in_flight_max && matches!(end, TurnEnd::Drained) {
            end = TurnEnd::LimitReached;
        }
        (consumed, end)
    }

    /// Serves a transaction's commands after EXEC's array header (staged by `begin`,
    /// and already flushed with what came before), as one pipelined list: one dispatch
    /// unless the list outgrows a batch or holds an INFO.
    async fn exec(&mut self, core: &Core, transaction: &Transaction) {
        let mut items: Vec<Item<'_>> = Vec::new();
        let mut ops: Vec<Op<'_>> = Vec::new();
        for command in transaction.commands() {
            let next = self.begin(core, Ok(command), &mut items, &mut ops).await;
            assert!(
                matches!(next, Next::Read),
                "no queued command ends the connection or starts a transaction"
            );
        }
        self.flush(core, &mut items, &mut ops).await;
    }

    /// Starts serving one command; says what the turn does next.
    async fn begin<'a>(
        &mut self,
        core: &Core,
        parsed: tally_resp::Parsed<'a>,
        items: &mut Vec<Item<'a>>,
        ops: &mut Vec<Op<'a>>,
    ) -> Next {
        let info = if matches!(parsed, Ok(Command::Info { .. })) && !self.session.in_transaction() {
            // INFO counts what came before it in the pipeline.
            self.flush(core, items, ops).await;
            server_info(core)
        } else {
            ServerInfo::default()
        };
        let start = self.staged.len();
        match self.session.begin(parsed, &info, &mut self.staged) {
            Step::Replied => items.push(Item::Staged(start..self.staged.len())),
            Step::ReplyThenClose => {
                items.push(Item::Staged(start..self.staged.len()));
                return Next::Close("QUIT".to_string());
            }
            Step::Apply(pending) => {
                if !ops.is_empty() && ops.len() + pending.ops().len() > BATCH_OPS_MAX {
                    self.flush(core, items, ops).await;
                }
                let first = ops.len();
                ops.extend(pending.ops().iter().map(to_engine));
                items.push(Item::Counter {
                    pending,
                    version: self.session.version(),
                    ops: first..ops.len(),
                });
            }
            Step::Exec(transaction) => {
                items.push(Item::Staged(start..self.staged.len()));
                return Next::Exec(transaction);
            }
        }
        Next::Read
    }

    /// Applies the collected operations and writes every collected reply, in order,
    /// to `output`.
    async fn flush<'a>(&mut self, core: &Core, items: &mut Vec<Item<'a>>, ops: &mut Vec<Op<'a>>) {
        self.results.clear();
        if !ops.is_empty() {
            let route = Route::server_default(core);
            self.dispatch
                .apply(core, ops, route, &mut self.results)
                .await;
        }
        assert_eq!(self.results.len(), ops.len(), "one result per operation");
        for item in items.drain(..) {
            match item {
                Item::Staged(range) => self.output.extend_from_slice(&self.staged[range]),
                Item::Counter {
                    pending,
                    version,
                    ops,
                } => {
                    self.counter_results.clear();
                    let results = self.results[ops].iter().map(to_counter_result);
                    self.counter_results.extend(results);
                    pending.finish(&self.counter_results, version, &mut self.output);
                }
            }
        }
        self.staged.clear();
        ops.clear();
    }
}

/// Empties a list of replies and gives its allocation a new lifetime, as
/// [`recycle_ops`] does for operations: one allocation serves every turn.
fn recycle_items<'a>(mut items: Vec<Item<'_>>) -> Vec<Item<'a>> {
    items.clear();
    #[allow(clippy::unnecessary_filter_map)]
    let recycled = items.into_iter().filter_map(|_| None).collect();
    recycled
}

/// The engine operation for a door operation (`EXISTS` is a read of existence).
fn to_engine<'a>(op: &CounterOp<'a>) -> Op<'a> {
    let policy = BoundPolicy::Reject;
    match *op {
        CounterOp::Add { key, delta } => Op::Add { key, delta, policy },
        CounterOp::Set { key, value } => Op::Set { key, value, policy },
        CounterOp::Get { key } | CounterOp::Exists { key } => Op::Get { key },
        CounterOp::Delete { key } => Op::Delete { key },
    }
}

/// The door's view of an engine result; errors read like Redis's.
fn to_counter_result(result: &RoutedResult) -> CounterResult {
    match result {
        Some(Ok(outcome)) => CounterResult::Applied {
            value: outcome.value,
            existed: outcome.existed,
        },
        Some(Err(OpError::Overflow)) => CounterResult::Overflow,
        Some(Err(OpError::WrongKind)) => CounterResult::Refused(
            "WRONGTYPE Operation against a key holding the wrong kind of value".to_string(),
        ),
        Some(Err(error)) => CounterResult::Refused(format!("ERR {error}")),
        None => CounterResult::Refused(
            "ERR the core owning this key is unavailable (shutting down, or its journal failed)"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_engine::Outcome;

    #[test]
    fn engine_errors_read_like_redis() {
        let applied = Some(Ok(Outcome {
            value: 7,
            existed: true,
            clamped: false,
        }));
        assert_eq!(
            to_counter_result(&applied),
            CounterResult::Applied {
                value: 7,
                existed: true
            }
        );
        assert_eq!(
            to_counter_result(&Some(Err(OpError::Overflow))),
            CounterResult::Overflow
        );
        let CounterResult::Refused(text) = to_counter_result(&Some(Err(OpError::WrongKind))) else {
            panic!("a wrong kind is refused");
        };
        assert!(text.starts_with("WRONGTYPE "));
        let CounterResult::Refused(text) = to_counter_result(&None) else {
            panic!("an unreachable core is refused");
        };
        assert!(text.starts_with("ERR "));
    }

    #[test]
    fn recycled_items_keep_their_allocation() {
        let input = b"INCR a".to_vec();
        let mut items: Vec<Item<'_>> = Vec::with_capacity(32);
        items.push(Item::Staged(0..input.len()));
        let (pointer, capacity) = (items.as_ptr() as usize, items.capacity());
        let recycled: Vec<Item<'static>> = recycle_items(items);
        assert!(recycled.is_empty());
        assert_eq!(recycled.capacity(), capacity);
        assert_eq!(recycled.as_ptr() as usize, pointer);
    }
}
