//! One client connection: reading frames, dispatching them, writing replies in order.
//!
//! Each turn of the loop reads whatever the socket has (one `read`), then works in two
//! phases over every complete frame in the buffer (at most `frames_in_flight_max`):
//!
//! 1. *dispatch*, frame by frame in order: a batch's operations go to
//!    [`Dispatch::send`] (the routing path the Redis door shares: foreign operations
//!    forwarded over the mesh, local ones applied with one `apply_batch` call); replies
//!    that need no other core (hello, ping, errors, idempotent replays) are encoded at
//!    once into a staging buffer;
//! 2. *gather*, frame by frame in the same order: [`Dispatch::collect`] hands the
//!    frame's results back in the batch's order, and the reply is encoded.
//!
//! All replies of the turn then leave in one `write`. So a pipelining client costs one
//! read and one write per turn, a frame with foreign keys costs one mesh round trip that
//! overlaps with the other frames of its turn, and replies keep request order.
//!
//! Per-key order holds across frames: all operations on a key go to its one owner, in
//! dispatch order, through a FIFO channel (or inline when local).
//!
//! Limits: frames up to [`FRAME_BYTES_MAX`] (a longer length field is fatal: error reply
//! and close, since the stream cannot be resynchronized); batches up to
//! `BATCH_OPS_MAX` operations (longer: error reply, the connection stays usable); the
//! input buffer grows with the bytes received (never to a length only claimed by a
//! header), to one whole frame at most, and shrinks back once it is consumed.
//! Buffers are kept across turns, so a steady stream of requests allocates nothing.
//!
//! Closing (PROTOCOL.md, "Closing"): an `Error` frame with request id 0 is the server's
//! last frame on the connection, and every request frame it did not answer before it
//! was not applied and never will be. The server sends one only where nothing is left
//! half done: on an idle or slow read timeout (before the read that timed out, every
//! complete frame was answered; a partial one is never applied), on a length field that
//! cannot be framed or a request with the reserved id 0 (the frames before it are
//! answered first, nothing of it is applied), at shutdown (after the
//! replies to every frame read), and at accept over the connection limit (nothing read).
//! After it nothing is dispatched: [`stream::linger`] only reads and discards until the
//! client closes, so the parting frame arrives instead of being lost to a reset. A
//! handshake refused (`HandshakeRequired`, `UnsupportedVersion`) is answered with its
//! frame's own id and closes the same way; the frames after it are not applied either.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use tally_engine::journal::Durability;
use tally_engine::{Op, OpError, OpResult};
use tally_protocol::{
    decode_request, encode_error, encode_pong, frame_bytes_needed, BatchRef, BatchReplyWriter,
    ErrorCode, MessageType, OpRef, OpReply, ProtocolError, Request, StatsReply, Status,
    FRAME_BYTES_MAX, HEADER_BYTES,
};

use crate::config::{DurabilityMode, ServerConfig};
use crate::core::{Core, REFUSAL_LOG_INTERVAL};
use crate::dispatch::{Dispatch, Route, Routed, RoutedResult};
use crate::idempotency::{self, Begin, Fingerprint, Full, IdempotencyKey, IdempotentBatch};
use crate::stream::{self, Input, ReadDeadline};

/// The input buffer's size between large frames.
const INPUT_BYTES_INITIAL: usize = 64 * 1024;
/// The input buffer's largest size: one maximal frame and the start of the next.
const INPUT_BYTES_MAX: usize = FRAME_BYTES_MAX + INPUT_BYTES_INITIAL;
const _: () =
    assert!(INPUT_BYTES_INITIAL >= HEADER_BYTES && INPUT_BYTES_INITIAL <= FRAME_BYTES_MAX);

/// The request id of the server's parting word (PROTOCOL.md, "Closing"); a client must
/// not use it, so a request that does is fatal.
const PARTING_REQUEST_ID: u64 = 0;

/// The error for an idempotency key reused with other operations (PROTOCOL.md).
const IDEMPOTENCY_KEY_REUSED: ErrorCode = ErrorCode::IdempotencyKeyReused;

/// The error for a new idempotent batch refused because its home core's table is full
/// of keys inside their window (PROTOCOL.md): retryable, nothing was applied.
const IDEMPOTENCY_TABLE_FULL: ErrorCode = ErrorCode::ServerBusy;

/// Answers a connection over the limit with a parting error, then closes it at once.
/// Nothing it sent is read as a request. No [`stream::linger`] here: a refused
/// connection is outside the limit, so a flood of them holding descriptors for the
/// grace would exhaust what the limit protects (and on a core out of descriptors the
/// refusal runs in the accept loop). A client sends nothing but its hello before the
/// hello's answer (PROTOCOL.md, "Handshake": it should not), so a reset that loses this
/// error costs it a failed connect, never a request of unknown outcome.
pub async fn refuse(mut stream: TcpStream) {
    let busy = "too many connections; retry later";
    let _ = send_parting(&mut stream, ErrorCode::ServerBusy, busy).await;
    let _ = stream.close().await;
}

/// Writes the server's parting word (PROTOCOL.md, "Closing"): an `Error` with request
/// id 0, the last frame on the connection. Every path that parts writes it here; only
/// once it is written may the connection [`stream::linger`] for the client to read it.
async fn send_parting(
    stream: &mut TcpStream,
    code: ErrorCode,
    message: &str,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    encode_error(&mut out, PARTING_REQUEST_ID, code, message);
    stream.write_all(&out).await
}

/// Serves one connection until the client closes it, it times out, it sends an
/// unrecoverable frame, or the server shuts down.
pub async fn serve(core: Rc<Core>, mut stream: TcpStream, peer: SocketAddr) {
    let registration = stream::open(&core, &stream, peer, "native");
    let mut connection = Connection::new(&core);
    let end = connection.run(&core, &mut stream).await;
    match &end {
        End::Closed => tracing::debug!(core = core.index, %peer, "connection closed"),
        // One per bad connection (a scanner, an HTTP health check on this port): sampled.
        End::Refused(reason) => {
            let now = std::time::Instant::now();
            if let Some(unlogged_count) = core.bad_frame_log.note(now, REFUSAL_LOG_INTERVAL) {
                tracing::warn!(
                    core = core.index,
                    %peer,
                    reason,
                    unlogged_count,
                    "connection closed by the server after a bad frame (unlogged_count: such \
                     closes since the last such line, not logged)"
                )
            }
        }
        // Routine for a pooled connection, so not a warning: one line per pool member
        // per idle period buried the real ones.
        End::Idle => tracing::info!(
            core = core.index,
            %peer,
            "connection closed: nothing received for the read timeout"
        ),
        End::Stopped => tracing::debug!(core = core.index, %peer, "connection closed at shutdown"),
        End::Io(error) => {
            tracing::info!(core = core.index, %peer, %error, "connection ended with an I/O error")
        }
    }
    if end.wrote_last_frame() {
        // The last frame is written; wait for the client to take it (PROTOCOL.md,
        // "Closing"): nothing read from here on is applied.
        stream::linger(&mut stream).await;
    }
    stream::close(&core, stream, registration).await;
}

/// Why a connection ended.
enum End {
    /// The client closed it (or shutdown ended its reads) and every reply was sent.
    Closed,
    /// The server closed it after an error reply, written: what went wrong.
    Refused(String),
    /// The server closed it, with a `Timeout` reply (written), after nothing was
    /// received for the read timeout.
    Idle,
    /// The server is shutting down: every frame read was answered, then the parting
    /// `ShuttingDown` error was written.
    Stopped,
    /// Reading or writing failed (peer gone, timeout while writing).
    Io(std::io::Error),
}

impl End {
    /// Whether the server ends the connection after writing a last frame of its own (a
    /// parting error, or the answer to a refused handshake), so it must linger for the
    /// client to read it. A last frame that could not be written ends as [`End::Io`].
    fn wrote_last_frame(&self) -> bool {
        matches!(self, End::Refused(_) | End::Idle | End::Stopped)
    }
}

/// A frame after which the connection cannot go on; the frames before it are answered.
enum Fatal {
    /// A length field that cannot be framed: the stream cannot be resynchronized.
    Framing(ProtocolError),
    /// A request with the id reserved for the server's parting word.
    ReservedRequestId,
}

/// A reply whose frame is fully known at dispatch, or a batch awaiting its results.
enum Pending {
    Staged(Range<usize>),
    Batch(BatchPlan),
}

/// What the gather phase needs to finish a dispatched batch.
struct BatchPlan {
    request_id: u64,
    routed: Routed,
    /// Where the batch's `Exists` flags start in `State::exists`.
    exists_start: usize,
    idempotency: Option<Idempotent>,
    /// A resumed idempotent batch: its earlier results, whose `Unavailable` ones are
    /// the operations routed now (`idempotency.rs`).
    resumed: Option<Vec<OpReply>>,
}

/// An idempotent batch being run: its key, its home core and its fingerprint.
#[derive(Clone, Copy)]
struct Idempotent {
    key: IdempotencyKey,
    home: usize,
    fingerprint: Fingerprint,
}

/// A connection: its input buffer, and the rest of its state, kept apart because a
/// frame being dispatched borrows the input while the state changes.
struct Connection {
    input: Input,
    deadline: ReadDeadline,
    state: State,
}

/// Per-connection scratch, kept across turns so the steady state allocates nothing.
struct State {
    greeted: bool,
    close_after: Option<String>,
    pending: Vec<Pending>,
    staged: Vec<u8>,
    output: Vec<u8>,
    /// Per operation of the turn: whether it was an `Exists` (sent as a `Get`).
    exists: Vec<bool>,
    dispatch: Dispatch,
}

impl Connection {
    fn new(core: &Core) -> Connection {
        Connection {
            input: Input::new(INPUT_BYTES_INITIAL, INPUT_BYTES_MAX),
            deadline: ReadDeadline::new(core.config.read_timeout()),
            state: State::new(core),
        }
    }

    async fn run(&mut self, core: &Core, stream: &mut TcpStream) -> End {
        loop {
            let needed = match frame_bytes_needed(self.input.buffered()) {
                Ok(needed) => needed.unwrap_or(HEADER_BYTES),
                Err(error) => return refuse_fatal(stream, Fatal::Framing(error)).await,
            };
            // Only a partial frame is left after a turn, and its length passed the
            // check, so this holds; closing beats a panic if it ever does not. Only
            // that partial frame is unanswered, never applied: the parting word holds.
            if self.input.reserve(needed).is_err() {
                let reason = "input buffer full";
                return match send_parting(stream, ErrorCode::Internal, reason).await {
                    Ok(()) => End::Refused(reason.to_string()),
                    Err(error) => End::Io(error),
                };
            }
            // Only a partial frame is left after a turn: it has the rest of its time.
            let partial = !self.input.buffered().is_empty();
            let read = match self.deadline.arm(stream, partial) {
                Ok(()) => self.input.read_from(stream).await,
                Err(error) => Err(error),
            };
            let eof = match read {
                Ok(0) => true,
                Ok(_) => false,
                Err(error) if error.kind() == ErrorKind::TimedOut => {
                    return refuse_timeout(stream, self.deadline.within_request()).await;
                }
                Err(error) => return End::Io(error),
            };
            if let Some(end) = self.answer_buffered(core, stream).await {
                return end;
            }
            if eof {
                if core.stop.is_fired() {
                    // Shutdown ended the reads; every frame read was answered above.
                    let message = "the server is shutting down";
                    return match send_parting(stream, ErrorCode::ShuttingDown, message).await {
                        Ok(()) => End::Stopped,
                        Err(error) => End::Io(error),
                    };
                }
                return End::Closed;
            }
        }
    }

    /// Answers every complete frame in the input, a turn of at most the in-flight
    /// limit at a time. `Some` if the connection must end.
    async fn answer_buffered(&mut self, core: &Core, stream: &mut TcpStream) -> Option<End> {
        loop {
            let (frames, fatal) = self.dispatch(core).await;
            if frames > 0 {
                self.deadline.request_done();
            }
            let state = &mut self.state;
            state.gather(core).await;
            if !state.output.is_empty() {
                if let Err(error) = stream.write_all(&state.output).await {
                    return Some(End::Io(error));
                }
                state.output.clear();
            }
            if let Some(reason) = state.close_after.take() {
                return Some(End::Refused(reason));
            }
            if let Some(fatal) = fatal {
                return Some(refuse_fatal(stream, fatal).await);
            }
            if frames < core.config.frames_in_flight_max {
                return None;
            }
        }
    }

    /// Phase 1: dispatches complete frames in order. Returns how many, and the fatal
    /// error that stopped the turn, if one did (the frames before it are dispatched).
    async fn dispatch(&mut self, core: &Core) -> (usize, Option<Fatal>) {
        let mut frames = 0;
        let input = &mut self.input;
        let state = &mut self.state;
        while frames < core.config.frames_in_flight_max && state.close_after.is_none() {
            // The frame borrows the input only until its keys are copied or applied.
            let frame = match decode_request(input.buffered()) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return (frames, Some(Fatal::Framing(error))),
            };
            if frame.request_id == PARTING_REQUEST_ID {
                // Only the server's parting word carries id 0 (PROTOCOL.md, "Frames"):
                // answering this frame with its own id would look like one. Nothing of
                // it is applied; it is left unconsumed, as the connection ends here.
                return (frames, Some(Fatal::ReservedRequestId));
            }
            frames += 1;
            let consumed = frame.frame_bytes;
            match frame.request {
                Ok(request) => {
                    state
                        .dispatch_request(core, frame.request_id, request)
                        .await
                }
                Err(error) => state.reject(core, frame.request_id, &error),
            }
            input.consume(consumed);
        }
        core.stats
            .frames
            .set(core.stats.frames.get() + frames as u64);
        (frames, None)
    }
}

/// This build's version as one number for the `version` statistic (PROTOCOL.md):
/// major x 1,000,000 + minor x 1,000 + patch.
fn server_version() -> u64 {
    let part = |text: &str| text.parse::<u64>().unwrap_or(0);
    part(env!("CARGO_PKG_VERSION_MAJOR")) * 1_000_000
        + part(env!("CARGO_PKG_VERSION_MINOR")) * 1_000
        + part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// Sends the `Timeout` error to a connection idle for the read timeout, or whose
/// frame did not complete within the read timeout of its first byte.
async fn refuse_timeout(stream: &mut TcpStream, within_frame: bool) -> End {
    let reason = if within_frame {
        "read timeout: a frame did not complete within the read timeout of its first byte"
    } else {
        "read timeout: nothing received for the read timeout"
    };
    match send_parting(stream, ErrorCode::Timeout, reason).await {
        Err(error) => End::Io(error),
        Ok(()) if within_frame => End::Refused(reason.to_string()),
        Ok(()) => End::Idle,
    }
}

/// Sends the parting error for a fatal frame; the connection ends.
async fn refuse_fatal(stream: &mut TcpStream, fatal: Fatal) -> End {
    let (code, reason) = match fatal {
        Fatal::Framing(error @ ProtocolError::FrameTooLarge { .. }) => {
            (ErrorCode::FrameTooLarge, error.to_string())
        }
        Fatal::Framing(error) => (ErrorCode::MalformedFrame, error.to_string()),
        Fatal::ReservedRequestId => (
            ErrorCode::MalformedFrame,
            "request id 0 is reserved".to_string(),
        ),
    };
    match send_parting(stream, code, &reason).await {
        Ok(()) => End::Refused(reason),
        Err(error) => End::Io(error),
    }
}

impl State {
    fn new(core: &Core) -> State {
        State {
            greeted: false,
            close_after: None,
            pending: Vec::new(),
            staged: Vec::new(),
            output: Vec::new(),
            exists: Vec::new(),
            dispatch: Dispatch::new(core.cores),
        }
    }

    /// Phase 2: finishes every pending reply in order into `output`.
    async fn gather(&mut self, core: &Core) {
        let pending = std::mem::take(&mut self.pending);
        for item in &pending {
            match item {
                Pending::Staged(range) => {
                    self.output.extend_from_slice(&self.staged[range.clone()])
                }
                Pending::Batch(plan) => self.finish_batch(core, plan).await,
            }
        }
        self.pending = pending;
        self.pending.clear();
        self.staged.clear();
        self.exists.clear();
        self.dispatch.end_turn();
    }

    /// Collects a batch's results (remote, durable) in order and encodes its reply;
    /// records the reply of an idempotent batch on its home core.
    async fn finish_batch(&mut self, core: &Core, plan: &BatchPlan) {
        let start = self.output.len();
        let mut writer = BatchReplyWriter::begin(&mut self.output, plan.request_id);
        let mut exists = self.exists[plan.exists_start..].iter();
        let mut invalid_key_count = 0usize;
        // A resumed batch's settled results, pushed between the routed ones.
        let mut earlier = plan
            .resumed
            .as_ref()
            .map(|earlier| earlier.iter().peekable());
        let mut each = |result: RoutedResult| {
            if let Some(earlier) = earlier.as_mut() {
                push_settled(&mut writer, earlier);
            }
            let exists = *exists.next().expect("one flag per operation");
            let reply = match result {
                Some(Ok(outcome)) => to_reply(Ok(outcome), exists),
                Some(Err(error)) => {
                    invalid_key_count += usize::from(matches!(error, OpError::InvalidKey { .. }));
                    to_reply(Err(error), exists)
                }
                None => OpReply::error(Status::Unavailable, 0),
            };
            writer
                .push(&reply)
                .expect("a batch's reply has at most BATCH_OPS_MAX results");
        };
        if !self.dispatch.collect_now(core, &plan.routed, &mut each) {
            self.dispatch
                .collect_waiting(core, &plan.routed, each)
                .await;
        }
        if let Some(earlier) = earlier.as_mut() {
            push_settled(&mut writer, earlier);
        }
        writer
            .finish()
            .expect("a batch reply always fits in a frame");
        if invalid_key_count > 0 {
            // Bad input, logged as the native door logs a bad frame: once per frame.
            tracing::warn!(
                core = core.index,
                request_id = plan.request_id,
                invalid_key_count,
                "batch with invalid keys (empty or too long)"
            );
        }
        if let Some(Idempotent {
            key,
            home,
            fingerprint,
        }) = plan.idempotency
        {
            core.idempotency_finish(home, key, fingerprint, &self.output[start..])
                .await;
        }
    }

    async fn dispatch_request(&mut self, core: &Core, request_id: u64, request: Request<'_>) {
        if !self.greeted && !matches!(request, Request::Hello(_)) {
            self.stage_error(request_id, ErrorCode::HandshakeRequired, "send Hello first");
            self.close_after = Some("request before Hello".to_string());
            return;
        }
        match request {
            Request::Hello(hello) => {
                tracing::debug!(core = core.index, client = hello.client_name, "hello");
                self.greeted = true;
                let staged = &mut self.staged;
                let start = staged.len();
                core.hello
                    .encode(staged, request_id)
                    .expect("the shard map was validated at start");
                self.pending.push(Pending::Staged(start..staged.len()));
            }
            Request::Ping => {
                let start = self.staged.len();
                encode_pong(&mut self.staged, request_id);
                self.push_staged(start);
            }
            Request::Stats => self.stage_stats(core, request_id),
            Request::Batch(batch) => self.dispatch_batch(core, request_id, batch).await,
            _ => self.stage_error(
                request_id,
                ErrorCode::UnknownMessageType,
                "request type not served",
            ),
        }
    }

    fn push_staged(&mut self, start: usize) {
        let end = self.staged.len();
        self.pending.push(Pending::Staged(start..end));
    }

    fn stage_error(&mut self, request_id: u64, code: ErrorCode, message: &str) {
        let start = self.staged.len();
        encode_error(&mut self.staged, request_id, code, message);
        self.push_staged(start);
    }

    /// Answers a frame whose body did not decode; the framing is intact, so the
    /// connection stays usable unless the handshake itself failed.
    fn reject(&mut self, core: &Core, request_id: u64, error: &ProtocolError) {
        core.stats.bad_frames.set(core.stats.bad_frames.get() + 1);
        tracing::warn!(core = core.index, request_id, %error, "bad frame");
        let code = match error {
            ProtocolError::UnknownMessageType(_) | ProtocolError::UnexpectedMessageType(_) => {
                ErrorCode::UnknownMessageType
            }
            ProtocolError::UnknownOperation(_) => ErrorCode::UnknownOperation,
            ProtocolError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            ProtocolError::BadMagic(_) | ProtocolError::UnsupportedVersion(_) => {
                ErrorCode::UnsupportedVersion
            }
            _ => ErrorCode::MalformedFrame,
        };
        self.stage_error(request_id, code, &error.to_string());
        if code == ErrorCode::UnsupportedVersion {
            self.close_after = Some(error.to_string());
        }
    }

    fn stage_stats(&mut self, core: &Core, request_id: u64) {
        let stats = &core.stats;
        let journal = core.journal.journal_stats();
        let uptime = core.resp.uptime();
        let since_checkpoint = match core.journal.stats.last_checkpoint_done.get() {
            Some(done) => done.elapsed(),
            None => uptime,
        };
        let (counters, arena_bytes) = {
            let store = core.store.borrow();
            (store.counter_count(), store.arena_bytes())
        };
        let entries = [
            ("version", server_version()),
            ("uptime_s", uptime.as_secs()),
            ("core", core.index as u64),
            ("cores", core.cores as u64),
            ("partitions", u64::from(core.partition_count)),
            ("counters", counters),
            ("arena_bytes", arena_bytes),
            (
                "connections_open",
                core.connections_open.load(Ordering::Relaxed) as u64,
            ),
            ("connections_accepted", stats.connections_accepted.get()),
            ("connections_refused", stats.connections_refused.get()),
            ("frames", stats.frames.get()),
            ("ops_local", stats.ops_local.get()),
            ("ops_forwarded", stats.ops_forwarded.get()),
            ("ops_from_peers", stats.ops_from_peers.get()),
            ("bad_frames", stats.bad_frames.get()),
            ("idempotent_replays", stats.idempotent_replays.get()),
            ("idempotency_keys", core.idempotency.borrow().len() as u64),
            (
                "idempotency_reply_bytes",
                core.idempotency.borrow().reply_bytes() as u64,
            ),
            (
                "idempotency_full_refusals",
                stats.idempotency_full_refusals.get(),
            ),
            ("journal_records", core.journal.stats.records.get()),
            ("journal_durable_lsn", core.journal.durable_lsn()),
            ("journal_commits", journal.commit_count),
            ("journal_bytes_written", journal.bytes_written),
            ("journal_failed", u64::from(core.journal.is_failed())),
            ("journal_degraded", u64::from(core.journal.is_degraded())),
            ("journal_retries", journal.retry_count),
            ("journal_reach_failures", journal.reach_failure_count),
            (
                "journal_buffer_full_syncs",
                core.journal.stats.buffer_full_syncs.get(),
            ),
            ("checkpoints", core.journal.stats.checkpoints.get()),
            ("seconds_since_checkpoint", since_checkpoint.as_secs()),
            (
                "checkpoint_failures",
                core.journal.stats.checkpoint_failures.get(),
            ),
            (
                "recovered_records",
                core.journal.stats.recovered_records.get(),
            ),
        ];
        let reply = StatsReply {
            entries: entries
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect(),
        };
        let start = self.staged.len();
        reply
            .encode(&mut self.staged, request_id)
            .expect("a few short stats entries fit");
        self.push_staged(start);
    }

    async fn dispatch_batch(&mut self, core: &Core, request_id: u64, batch: BatchRef<'_>) {
        let mut idempotency = None;
        let mut resumed = None;
        if batch.idempotency_key.is_some() {
            match self.idempotency_begin(core, request_id, &batch).await {
                Ok(Some((begun, earlier))) => (idempotency, resumed) = (Some(begun), earlier),
                Ok(None) => {}
                Err(()) => return,
            }
        }
        let route = Route {
            durability: journal_durability(batch.durability, core.config.durability_default),
            idempotency: idempotency.map(|begun: Idempotent| IdempotentBatch {
                key: begun.key,
                fingerprint: begun.fingerprint,
            }),
        };
        let exists_start = self.exists.len();
        let exists = &mut self.exists;
        let engine_op = |(index, op)| {
            let (op, is_exists) = to_engine(op);
            exists.push(is_exists);
            (index, op)
        };
        let ops = batch.ops().enumerate();
        let routed = match &resumed {
            None => self.dispatch.route(core, ops.map(engine_op), route),
            // A resumed batch runs again only what was `Unavailable`.
            Some(earlier) => {
                let unsettled = |&(index, _): &(usize, _)| {
                    let earlier: &Vec<OpReply> = earlier;
                    earlier[index].status == Status::Unavailable
                };
                let ops = ops.filter(unsettled).map(engine_op);
                self.dispatch.route(core, ops, route)
            }
        };
        // The plan is stored before the sub-batches are sent, so that nothing it owns
        // lives in this future across the await (a batch's own path stays as cheap).
        self.pending.push(Pending::Batch(BatchPlan {
            request_id,
            routed,
            exists_start,
            idempotency,
            resumed,
        }));
        if self.dispatch.has_outgoing() {
            let Some(Pending::Batch(plan)) = self.pending.last_mut() else {
                unreachable!("just pushed");
            };
            self.dispatch
                .send_outgoing(core, route, &mut plan.routed)
                .await;
        }
    }

    /// Answers a batch that reuses idempotency key `key` for other operations.
    fn refuse_reused_key(&mut self, core: &Core, request_id: u64, key: IdempotencyKey) {
        tracing::warn!(
            core = core.index,
            request_id,
            key = format_args!("{key:032x}"),
            "idempotency key reused for a batch with other operations"
        );
        let message = "this idempotency key was used for a batch with other operations; \
                       use a new key for a new batch";
        self.stage_error(request_id, IDEMPOTENCY_KEY_REUSED, message);
    }

    /// For a batch with an idempotency key: `Ok(Some(..))` to run it and record its
    /// reply (with the earlier results of a resumed batch), `Ok(None)` without a key,
    /// `Err(())` if already answered (a replay or an error reply is staged).
    async fn idempotency_begin(
        &mut self,
        core: &Core,
        request_id: u64,
        batch: &BatchRef<'_>,
    ) -> Result<Option<(Idempotent, Option<Vec<OpReply>>)>, ()> {
        let Some(key) = batch.idempotency_key else {
            return Ok(None);
        };
        if batch.op_count() == 0 {
            // Nothing to apply, so nothing to apply twice.
            return Ok(None);
        }
        let home = idempotency::home_core(key, core.cores);
        let fingerprint = idempotency::fingerprint(batch);
        let op_count = u16::try_from(batch.op_count()).expect("at most BATCH_OPS_MAX operations");
        let begun = Idempotent {
            key,
            home,
            fingerprint,
        };
        match core
            .idempotency_begin(home, key, fingerprint, op_count)
            .await
        {
            Ok(Begin::New) => Ok(Some((begun, None))),
            Ok(Begin::Resume(earlier)) if earlier.len() == batch.op_count() => {
                Ok(Some((begun, Some(earlier))))
            }
            Ok(Begin::Resume(earlier)) => {
                // Another batch with an equal fingerprint (a 64-bit hash collision): put
                // the first one's results back, and refuse this one as a reuse.
                let mut frame = Vec::new();
                tally_protocol::encode_batch_reply(&mut frame, 0, &earlier)
                    .expect("a batch reply always fits in a frame");
                core.idempotency_finish(home, key, fingerprint, &frame)
                    .await;
                self.refuse_reused_key(core, request_id, key);
                Err(())
            }
            Ok(Begin::Mismatch) => {
                self.refuse_reused_key(core, request_id, key);
                Err(())
            }
            Ok(Begin::InFlight) => {
                let message = "a request with this idempotency key is still running; retry";
                self.stage_error(request_id, ErrorCode::ServerBusy, message);
                Err(())
            }
            Ok(Begin::Full(full)) => {
                let stats = &core.stats;
                let refusals = &stats.idempotency_full_refusals;
                refusals.set(refusals.get() + 1);
                let message = full_message(full, &core.config, batch.op_count());
                self.stage_error(request_id, IDEMPOTENCY_TABLE_FULL, &message);
                Err(())
            }
            Ok(Begin::Done(frame)) => {
                core.stats
                    .idempotent_replays
                    .set(core.stats.idempotent_replays.get() + 1);
                let start = self.staged.len();
                self.staged.extend_from_slice(&replay(&frame, request_id));
                self.push_staged(start);
                Err(())
            }
            Err(code) => {
                self.stage_error(
                    request_id,
                    code,
                    "the idempotency record could not be reached",
                );
                Err(())
            }
        }
    }
}

/// The message of the error refusing a new idempotent batch: which limit, its value,
/// and the flag that sets it.
fn full_message(full: Full, config: &ServerConfig, op_count: usize) -> String {
    let window_s = config.idempotency_window_s;
    match full {
        Full::Keys => format!(
            "idempotency table full: the core holding this key remembers its limit of {} \
             keys (tallyd --idempotency-max-keys), all inside the {window_s} s window; \
             nothing applied; call again later (under the same key if it is your own)",
            config.idempotency_entries_max
        ),
        // Said of the room this batch needs, which may be most of the limit.
        Full::ReplyBytes => format!(
            "idempotency table full: this batch of {op_count} operations needs room for {} \
             bytes of results, more than the core holding its key has left of its limit of \
             {} (tallyd --idempotency-max-reply-bytes), held by batches inside the \
             {window_s} s window or still running; nothing applied; call again later \
             (under the same key if it is your own), or send a smaller batch",
            idempotency::reply_bytes_bound(op_count),
            config.idempotency_reply_bytes_max
        ),
    }
}

/// A recorded `BatchReply` frame re-addressed to `request_id` (header bytes 8..16).
fn replay(frame: &[u8], request_id: u64) -> Vec<u8> {
    assert!(frame.len() >= HEADER_BYTES);
    assert_eq!(frame[4], MessageType::BatchReply as u8);
    let mut copy = frame.to_vec();
    copy[8..16].copy_from_slice(&request_id.to_le_bytes());
    copy
}

/// The journal durability of a batch, resolving "server default".
fn journal_durability(wire: tally_protocol::Durability, default: DurabilityMode) -> Durability {
    match (wire, default) {
        (tally_protocol::Durability::Durable, _)
        | (tally_protocol::Durability::ServerDefault, DurabilityMode::Durable) => {
            Durability::Durable
        }
        _ => Durability::Relaxed,
    }
}

/// The engine operation for a wire operation, and whether it was an `Exists`.
fn to_engine(op: OpRef<'_>) -> (Op<'_>, bool) {
    let policy = |policy: tally_protocol::BoundPolicy| match policy {
        tally_protocol::BoundPolicy::Reject => tally_engine::BoundPolicy::Reject,
        tally_protocol::BoundPolicy::Clamp => tally_engine::BoundPolicy::Clamp,
    };
    match op {
        tally_protocol::Op::Add {
            key,
            delta,
            policy: p,
        } => (
            Op::Add {
                key,
                delta,
                policy: policy(p),
            },
            false,
        ),
        tally_protocol::Op::Set {
            key,
            value,
            policy: p,
        } => (
            Op::Set {
                key,
                value,
                policy: policy(p),
            },
            false,
        ),
        tally_protocol::Op::Get { key } => (Op::Get { key }, false),
        tally_protocol::Op::Delete { key } => (Op::Delete { key }, false),
        tally_protocol::Op::Exists { key } => (Op::Get { key }, true),
        tally_protocol::Op::SetBounds {
            key,
            floor,
            ceiling,
        } => (
            Op::SetBounds {
                key,
                floor,
                ceiling,
            },
            false,
        ),
        tally_protocol::Op::GetBound { key, bound } => {
            let bound = match bound {
                tally_protocol::Bound::Floor => tally_engine::Bound::Floor,
                tally_protocol::Bound::Ceiling => tally_engine::Bound::Ceiling,
            };
            (Op::GetBound { key, bound }, false)
        }
    }
}

/// The detail of an `Unavailable` result whose operation was refused before it was
/// applied (PROTOCOL.md); 0 is an unknown outcome.
pub(crate) const UNAVAILABLE_NOT_APPLIED: i64 = 1;

/// Pushes the settled results of a resumed batch up to its next `Unavailable` one,
/// and steps over that one (the operation routed again answers it).
#[inline(never)]
fn push_settled(
    writer: &mut BatchReplyWriter<'_>,
    earlier: &mut std::iter::Peekable<std::slice::Iter<'_, OpReply>>,
) {
    while let Some(reply) = earlier.next_if(|reply| reply.status != Status::Unavailable) {
        writer
            .push(reply)
            .expect("a batch's reply has at most BATCH_OPS_MAX results");
    }
    earlier.next();
}

/// The wire result for an engine result.
fn to_reply(result: OpResult, exists: bool) -> OpReply {
    match result {
        Ok(outcome) if exists => OpReply::ok(i64::from(outcome.existed), outcome.existed, false),
        Ok(outcome) => OpReply::ok(outcome.value, outcome.existed, outcome.clamped),
        Err(error) => {
            let (status, detail) = status_of(&error);
            OpReply::error(status, detail)
        }
    }
}

/// The wire status of an operation refused with `error`, and the detail its reply's
/// value carries (PROTOCOL.md). The journal records refusals with the same numbers
/// (`durability.rs`).
pub(crate) fn status_of(error: &OpError) -> (Status, i64) {
    match *error {
        OpError::InvalidKey { length } => (Status::InvalidKey, length as i64),
        OpError::Overflow => (Status::Overflow, 0),
        OpError::BelowFloor { floor } => (Status::BelowFloor, floor),
        OpError::AboveCeiling { ceiling } => (Status::AboveCeiling, ceiling),
        OpError::InvalidBounds { floor, .. } => (Status::InvalidBounds, floor),
        OpError::OutOfBounds { value } => (Status::OutOfBounds, value),
        OpError::NotOwned { partition } => (Status::NotOwned, i64::from(partition)),
        OpError::WrongKind => (Status::WrongKind, 0),
        OpError::StorageFull => (Status::StorageFull, 0),
        OpError::JournalRefused => (Status::Unavailable, UNAVAILABLE_NOT_APPLIED),
        _ => (Status::Unavailable, 0),
    }
}
