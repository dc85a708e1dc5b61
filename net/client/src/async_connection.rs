//! One tokio task per server core: coalesces queued calls into batch frames, pipelines
//! them, matches replies in order, and resends unanswered frames after a lost connection.
//!
//! The task owns the socket. It waits on four things at once: a new call (only while the
//! in-flight window has room), bytes from the server, room in the socket for frames not
//! yet written, and a deadline. When calls arrive it drains the queue, packing calls of
//! the same durability into frames of at most `BATCH_OPS_MAX` operations (a call never
//! spans two frames), and hands them to the socket with vectored writes that never wait:
//! what the socket does not take now is written as it makes room, so a server that stops
//! reading never stops the task from reading, taking calls or timing out. Replies come
//! back in request order, so the oldest in-flight frame is the one a reply answers.
//!
//! Deadlines: a call ends by its own (`ClientConfig::call_timeout` after it began). The
//! task's deadline is the earliest of the oldest frame's, the deadline of the frame being
//! written, and the last progress (bytes taken by the socket, a reply) plus
//! `ClientConfig::write_timeout` while bytes wait to be written, else plus
//! `ClientConfig::read_timeout`. When it passes, the connection is dropped (a frame
//! written in part can only be withdrawn that way) and `recover` settles every frame:
//! one with any byte handed to the socket may have been applied (`OutcomeUnknown` if it
//! changes counters), one never handed over was not, and is resent on a new connection
//! if its deadline leaves time. Invariant: the frames before `write_index` were wholly
//! written to the current connection, the one at it `write_offset` bytes, the rest none.
//!
//! A call with the caller's idempotency key gets a frame of its own under that key; other
//! calls are packed together. A frame that can change state and has no caller's key
//! carries a random idempotency key when `ClientConfig::auto_idempotency_keys` and
//! retries are on (drawn so that the server keeps it on this task's core), so after a
//! lost connection or a timeout the task reconnects and resends the same bytes and the
//! server applies them at most once. Each frame has its own retry budget
//! (`ClientConfig::retries`) and deadline (the earliest of its calls'); a frame without
//! that safety (a mutation without a key), or one whose budget or deadline is spent,
//! fails its calls with the error, and the others are resent. A failed connect (nothing
//! sent) and a `ServerBusy` answer to a frame with a key (its first copy still running)
//! are retried until the deadline at no charge, with backoff, as the blocking client
//! does (see `dispatch`); a `ServerBusy` that refuses a new key because the server's
//! idempotency memory is full is not: it fails the frame's calls at once with
//! `ClientError::NotApplied`. A frame that changes counters and may have reached the
//! server fails with `ClientError::OutcomeUnknown`.
//!
//! A call whose caller gave up (its future was dropped) before its frame was written is
//! not sent (also while the task waits to reconnect); once written, it runs. A call still queued at its deadline fails with a
//! timeout, unsent.
//!
//! When the core's shard port cannot be reached, the task connects to the main address
//! instead (publishing its map if it changed): the server forwards keys another core owns,
//! so the frames are still correct. The shard port is tried again at the next reconnect.
//! The main address is the authority: a shard port whose hello carries another
//! `server_id` than the task knows is used only once a hello on the main address comes
//! from the same process (see `open_trusted`), so a server that took over a freed port
//! is never written to, nor its map adopted.
//!
//! While frames are in flight the task first spins (`ClientConfig::spin`, bounded):
//! it polls the socket and the call queue without parking, yielding to the runtime
//! between polls, and only then waits in the `select!` above, which parks the thread.
//!
//! An `Error` with request id 0 is the server's parting word before it closes the
//! connection (idle timeout, connection limit, shutdown): it is a lost connection, never
//! the answer to the oldest frame, and a promise that the server applied none of the
//! frames it did not answer (PROTOCOL.md, "Closing"). So `recover` treats those frames
//! as never written: they are resent on a new connection, with or without an
//! idempotency key, at no charge to their retry budget, within their deadlines; a frame
//! that cannot be (retries off, its deadline too near, a parting code a new connection
//! would meet again) fails with `ClientError::NotApplied`, never `OutcomeUnknown`
//! (unless an earlier copy went out on a connection lost without a parting word).
//! Invariant: `ever_written` is true exactly when some copy of the frame was handed to a
//! connection that did not part. The task keeps reading while idle, so a connection the
//! server closed is noticed at once and the next call goes out on a new one. A reconnect
//! that brings a different shard map publishes it ([`MapWatch`]) for the client to
//! rebuild its routes; frames already queued here are still correct, as the server
//! forwards keys another core owns.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tally_protocol::{
    decode_reply, encode_hello, encode_ping, encode_stats, BatchWriter, Durability, ErrorCode,
    HelloReply, Op, ProtocolError, Reply, ReplyFrame, BATCH_OPS_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use crate::blocking::{routes_differ, unconfirmed_shard_port};
use crate::config::ClientConfig;
use crate::dispatch::{backoff, IN_FLIGHT_OPS_MAX};
use crate::error::{hello_error, is_table_full, server_refusal, ClientError};
use crate::idempotency::{key_homed_on, random_idempotency_key};
use crate::outcome::{from_reply, OpResult};

/// The most frames handed to the socket by one vectored write.
const WRITE_SLICES_MAX: usize = 64;

/// Calls queued per connection before callers wait for room.
pub(crate) const CALL_QUEUE_DEPTH: usize = 4096;

/// Where a call's results go.
pub(crate) type ReplySender = oneshot::Sender<Result<Vec<OpResult>, ClientError>>;

/// Where a control request's answer goes.
pub(crate) type ControlSender = oneshot::Sender<Result<ControlReply, ClientError>>;

/// What one caller asks of one core's task.
pub(crate) enum Call {
    /// Operations, packed with other callers' into batch frames.
    Batch(BatchCall),
    /// A `Ping` or `Stats` request, one frame of its own, and its deadline.
    Control(Control, ControlSender, Instant),
}

impl Call {
    /// When the call must have its answer (`ClientConfig::call_timeout` after it began).
    fn deadline(&self) -> Instant {
        match self {
            Call::Batch(call) => call.deadline,
            Call::Control(_, _, deadline) => *deadline,
        }
    }

    /// Whether the caller dropped the future that awaits the answer.
    fn is_abandoned(&self) -> bool {
        match self {
            Call::Batch(call) => call.reply.is_closed(),
            Call::Control(_, reply, _) => reply.is_closed(),
        }
    }
}

/// Operations for one core, from one caller.
pub(crate) struct BatchCall {
    pub(crate) ops: Vec<Op>,
    pub(crate) durability: Durability,
    /// The caller's idempotency key: the call gets a frame of its own under it.
    pub(crate) idempotency_key: Option<u128>,
    pub(crate) reply: ReplySender,
    pub(crate) deadline: Instant,
}

/// A request without operations.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Control {
    Ping,
    Stats,
}

/// The answer to a [`Control`] request.
#[derive(Debug)]
pub(crate) enum ControlReply {
    Pong,
    Stats(Vec<(String, u64)>),
}

/// Who waits for a frame's reply.
enum Waiter {
    /// The calls packed into a batch frame, with their operation counts, in order.
    Batch(Vec<(usize, ReplySender)>),
    Control(ControlSender),
}

/// A frame on the wire, waiting for its reply.
struct InFlight {
    request_id: u64,
    bytes: Vec<u8>,
    retry_safe: bool,
    /// Carries an idempotency key.
    keyed: bool,
    /// Some operation changes a counter.
    mutates: bool,
    /// Some of its bytes (perhaps all) were handed to the current connection's socket:
    /// it may have reached the server. Unwritten frames are a suffix of the queue.
    written: bool,
    /// Written to some connection that did not part (see the module docs): it may have
    /// reached the server and been applied.
    ever_written: bool,
    /// `ever_written` as it was before the frame was written to the current connection:
    /// restored if that connection parts, since the server then says it did not apply it.
    ever_written_earlier: bool,
    /// The failure `recover` is settling parted the connection it was written to,
    /// without answering it: it was not applied there, and this resend is not charged
    /// to its retry budget. Cleared once that failure is settled, so a later failure
    /// (a hello refused after the part) is charged (PROTOCOL.md, "Closing").
    parted: bool,
    /// The earliest deadline of its calls.
    deadline: Instant,
    waiter: Waiter,
    op_count: usize,
    /// Times this frame was resent; at most the configured retries.
    retries_used: u32,
}

impl InFlight {
    /// The connection this frame was written to parted: the server did not apply it
    /// (PROTOCOL.md, "Closing"), so it counts as never written there.
    fn unsend(&mut self) {
        if self.written {
            self.written = false;
            self.ever_written = self.ever_written_earlier;
            self.parted = true;
        }
    }

    /// Whether every caller waiting on this frame gave up (dropped its future).
    fn is_abandoned(&self) -> bool {
        match &self.waiter {
            Waiter::Batch(calls) => calls.iter().all(|(_, reply)| reply.is_closed()),
            Waiter::Control(reply) => reply.is_closed(),
        }
    }

    /// Fails every call waiting on this frame with `error`, settled: outcome unknown if
    /// the frame changes counters and may have reached the server; not applied if it
    /// changes counters and the server parted without applying it.
    fn fail(self, error: &ClientError) {
        let maybe_applied = self.mutates && self.ever_written && !error.is_definitive();
        let error = &error.replicate().settle_call(maybe_applied, self.mutates);
        match self.waiter {
            Waiter::Batch(calls) => answer(calls, Err(error.replicate())),
            Waiter::Control(reply) => {
                let _ = reply.send(Err(error.replicate()));
            }
        }
    }
}

/// A shard map a reconnect found, waiting for the client to adopt it. Tasks publish,
/// calls take; the flag keeps the calls' check to one atomic load.
#[derive(Debug, Default)]
pub(crate) struct MapWatch {
    changed: AtomicBool,
    latest: Mutex<Option<HelloReply>>,
}

impl MapWatch {
    fn publish(&self, hello: HelloReply) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Some(hello);
        self.changed.store(true, Ordering::Release);
    }

    /// The newest map published since the last call, if any.
    pub(crate) fn take(&self) -> Option<HelloReply> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Connects, says hello, and returns the stream and shard map, within the connect and
/// read timeouts and never past `deadline` (then a `Connect` error, timed out).
pub(crate) async fn open(
    addr: SocketAddr,
    config: &ClientConfig,
    deadline: Instant,
) -> Result<(TcpStream, HelloReply), ClientError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let connect_timeout = config.connect_timeout.min(remaining);
    let stream = match timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(connected) => connected.map_err(|source| ClientError::Connect { addr, source })?,
        Err(_) => {
            let source = std::io::Error::from(std::io::ErrorKind::TimedOut);
            return Err(ClientError::Connect { addr, source });
        }
    };
    stream.set_nodelay(true).map_err(|source| ClientError::Io {
        action: "configuring",
        addr,
        source,
    })?;
    let mut stream = stream;
    let mut out = Vec::new();
    encode_hello(&mut out, 1, &config.client_name).map_err(ClientError::Encode)?;
    write(&mut stream, addr, &out).await?;
    let mut buf = Vec::with_capacity(4096);
    let deadline = deadline.min(Instant::now() + config.read_timeout);
    loop {
        if let Some(frame) =
            decode_reply(&buf).map_err(|source| ClientError::Protocol { addr, source })?
        {
            return match frame.reply {
                Ok(Reply::HelloReply(hello)) => {
                    buf.drain(..frame.frame_bytes);
                    check_nothing_after_hello(&mut stream, addr, buf, deadline).await?;
                    Ok((stream, hello))
                }
                // Every error to a hello closes the connection. Request id 0 is the
                // parting word (busy, shutting down); another id answers the hello
                // itself (a bad version), as in the blocking client.
                Ok(Reply::Error(error)) if frame.request_id == 0 => {
                    Err(ClientError::Disconnected {
                        addr,
                        code: error.code,
                        message: error.message.to_owned(),
                    })
                }
                Ok(Reply::Error(error)) => Err(server_refusal(error.code, error.message)),
                Ok(other) => Err(ClientError::UnexpectedReply {
                    addr,
                    reason: format!("{other:?}"),
                }),
                Err(source) => Err(ClientError::Protocol { addr, source }),
            };
        }
        read_more(&mut stream, addr, &mut buf, deadline)
            .await
            .map_err(hello_error)?;
    }
}

/// Checks that no byte came after the hello's answer in `buf`, the rest of what `open`
/// read. The server sends nothing unasked but its parting word, which may share a read
/// with the `HelloReply` (a shutdown just after accept): the connection is then over
/// before anything was sent on it, and the parting error is returned as the hello's,
/// rather than lost with `open`'s buffer (the task would then write into a closing
/// socket and meet a reset: an unknown outcome where the server promised "not applied").
async fn check_nothing_after_hello(
    stream: &mut TcpStream,
    addr: SocketAddr,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Result<(), ClientError> {
    if buf.is_empty() {
        return Ok(());
    }
    // A frame is written whole: the rest of a partial one is on its way.
    let frame = loop {
        match decode_reply(&buf).map_err(|source| ClientError::Protocol { addr, source })? {
            Some(frame) => break frame,
            None => read_more(stream, addr, &mut buf, deadline)
                .await
                .map_err(hello_error)?,
        }
    };
    match frame.reply {
        Ok(Reply::Error(error)) if frame.request_id == 0 => Err(ClientError::Disconnected {
            addr,
            code: error.code,
            message: error.message.to_owned(),
        }),
        Ok(other) => Err(ClientError::UnexpectedReply {
            addr,
            reason: format!("{other:?} after the hello's answer"),
        }),
        Err(source) => Err(ClientError::Protocol { addr, source }),
    }
}

async fn write(stream: &mut TcpStream, addr: SocketAddr, bytes: &[u8]) -> Result<(), ClientError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|source| ClientError::Io {
            action: "writing to",
            addr,
            source,
        })
}

async fn read_more(
    stream: &mut TcpStream,
    addr: SocketAddr,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), ClientError> {
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Err(_) => Err(ClientError::Timeout {
            action: "waiting for a reply from",
            addr,
        }),
        Ok(Ok(0)) => Err(ClientError::Closed { addr }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(ClientError::Io {
            action: "reading from",
            addr,
            source,
        }),
    }
}

/// The per-core task's state.
pub(crate) struct ConnectionTask {
    addr: SocketAddr,
    /// Where to connect when `addr` cannot be reached.
    main_addr: SocketAddr,
    /// Failures since the last reply, which set the next backoff.
    failure_count: u32,
    config: ClientConfig,
    calls: mpsc::Receiver<Call>,
    stream: Option<TcpStream>,
    read_buf: Vec<u8>,
    in_flight: VecDeque<InFlight>,
    in_flight_ops: usize,
    next_request_id: u64,
    /// The last progress on this connection: sending began with nothing in flight, the
    /// socket accepted bytes, or a reply arrived. The read and write timeouts run from it.
    waiting_since: Instant,
    /// The index in `in_flight` of the first frame not wholly written to this connection
    /// (`in_flight.len()` when all are), and how many of its bytes were. Frames before it
    /// were wholly written; frames after it not at all.
    write_index: usize,
    write_offset: usize,
    /// The shard map this task last saw, and where to publish a different one.
    hello: HelloReply,
    map_watch: Arc<MapWatch>,
    /// Every `AsyncClient` handle is gone: the call queue is closed and is not polled
    /// again (a closed queue is always ready, so polling it would spin).
    calls_closed: bool,
}

impl ConnectionTask {
    /// A task for `addr`; with `stream` `None` it connects on the first call.
    pub(crate) fn new(
        addr: SocketAddr,
        main_addr: SocketAddr,
        config: ClientConfig,
        stream: Option<TcpStream>,
        hello: HelloReply,
        map_watch: Arc<MapWatch>,
        calls: mpsc::Receiver<Call>,
    ) -> Self {
        ConnectionTask {
            addr,
            main_addr,
            failure_count: 0,
            config,
            calls,
            stream,
            read_buf: Vec::with_capacity(64 * 1024),
            in_flight: VecDeque::new(),
            in_flight_ops: 0,
            next_request_id: 1,
            waiting_since: Instant::now(),
            write_index: 0,
            write_offset: 0,
            hello,
            map_watch,
            calls_closed: false,
        }
    }

    /// Serves calls until every `AsyncClient` handle is dropped and nothing is in flight.
    pub(crate) async fn run(mut self) {
        loop {
            let result = self.step().await;
            match result {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => self.recover(error).await,
            }
        }
    }

    /// Waits for one event and handles it; `Ok(false)` once the client is gone.
    async fn step(&mut self) -> Result<bool, ClientError> {
        let room = self.in_flight_ops < IN_FLIGHT_OPS_MAX && !self.calls_closed;
        let writing = self.is_writing();
        // The read (or, while bytes wait for room in the socket, the write) timeout runs
        // per attempt, from the last progress; the call deadlines of the oldest frame and
        // of the frame being written cap it, so a server that stops reading cannot hold
        // a call past its deadline.
        let progress_timeout = if writing {
            self.config.write_timeout
        } else {
            self.config.read_timeout
        };
        let deadline = [self.in_flight.front(), self.in_flight.get(self.write_index)]
            .into_iter()
            .flatten()
            .map(|in_flight| in_flight.deadline)
            .fold(self.waiting_since + progress_timeout, Instant::min);
        let waiting = !self.in_flight.is_empty();
        if self.calls_closed && !waiting {
            return Ok(false);
        }
        if self.stream.is_none() {
            debug_assert!(!waiting, "frames in flight without a connection");
            let Some(call) = self.calls.recv().await else {
                return Ok(false);
            };
            // A refused connect fails `send`; `recover` then retries it.
            return self.send(call).await.map(|()| true);
        }
        if waiting && !writing && !self.config.spin.is_zero() && self.spin().await? {
            return Ok(true);
        }
        let stream = self.stream.as_mut().expect("checked above");
        // The socket is read even when nothing is in flight: the server's parting error
        // or its close then shows at once, not as the answer to the next call.
        tokio::select! {
            call = self.calls.recv(), if room => match call {
                Some(call) => self.send(call).await.map(|()| true),
                None => {
                    // The frames in flight still get their replies (or time out); then
                    // the task ends.
                    self.calls_closed = true;
                    Ok(waiting)
                }
            },
            // Readiness only (both borrow the stream shared): reading and writing happen
            // in the handlers, without waiting, so neither direction blocks the other.
            ready = stream.readable() => match ready {
                Ok(()) => self.read_ready().map(|()| true),
                Err(source) => Err(ClientError::Io { action: "reading from", addr: self.addr, source }),
            },
            ready = stream.writable(), if writing => match ready {
                Ok(()) => self.try_write().map(|()| true),
                Err(source) => Err(ClientError::Io { action: "writing to", addr: self.addr, source }),
            },
            () = tokio::time::sleep_until(deadline), if waiting => {
                let action = if writing { "writing to" } else { "waiting for a reply from" };
                Err(ClientError::Timeout { action, addr: self.addr })
            }
        }
    }

    /// Reads what the socket holds, without waiting, and hands whole replies to their
    /// calls (a spurious readiness reads nothing).
    fn read_ready(&mut self) -> Result<(), ClientError> {
        let stream = self.stream.as_mut().expect("reading needs a connection");
        match stream.try_read_buf(&mut self.read_buf) {
            Ok(0) => Err(ClientError::Closed { addr: self.addr }),
            Ok(_) => self.deliver(),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(source) => Err(ClientError::Io {
                action: "reading from",
                addr: self.addr,
                source,
            }),
        }
    }

    /// Whether frames (or the rest of one) wait to be written to this connection.
    fn is_writing(&self) -> bool {
        self.write_index < self.in_flight.len()
    }

    /// Writes as much of the unwritten frames as the socket takes now, without waiting
    /// (the task's `select!` waits for room, beside replies and deadlines). A frame is
    /// marked written once its first byte is handed over: from then on it may reach the
    /// server, and a frame written in part can only be withdrawn with the connection.
    fn try_write(&mut self) -> Result<(), ClientError> {
        while self.is_writing() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES_MAX];
            let frames = self.in_flight.iter().skip(self.write_index);
            let mut slice_count = 0;
            for (slice, in_flight) in slices.iter_mut().zip(frames) {
                let skip = if slice_count == 0 {
                    self.write_offset
                } else {
                    0
                };
                *slice = IoSlice::new(&in_flight.bytes[skip..]);
                slice_count += 1;
            }
            let stream = self.stream.as_ref().expect("writing needs a connection");
            let written = match stream.try_write_vectored(&slices[..slice_count]) {
                Ok(0) => return Err(ClientError::Closed { addr: self.addr }),
                Ok(written) => written,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(source) => {
                    let addr = self.addr;
                    let action = "writing to";
                    return Err(ClientError::Io {
                        action,
                        addr,
                        source,
                    });
                }
            };
            self.advance_written(written);
        }
        Ok(())
    }

    /// Records that the socket took `byte_count` more bytes of the unwritten frames.
    fn advance_written(&mut self, mut byte_count: usize) {
        self.waiting_since = Instant::now();
        while byte_count > 0 {
            let in_flight = &mut self.in_flight[self.write_index];
            if self.write_offset == 0 {
                in_flight.written = true;
                in_flight.ever_written_earlier = in_flight.ever_written;
                in_flight.ever_written = true;
                in_flight.parted = false;
            }
            let left = in_flight.bytes.len() - self.write_offset;
            if byte_count < left {
                self.write_offset += byte_count;
                return;
            }
            byte_count -= left;
            self.write_index += 1;
            self.write_offset = 0;
        }
    }

    /// While replies are awaited: busy-polls the socket and the call queue for up to the
    /// spin budget before the task parks. Waking a parked runtime thread costs ~100 µs on
    /// a small VM, longer than a loopback round trip, so a reply that arrives within
    /// the budget is read without that cost. Between polls the task yields, so the
    /// runtime keeps running other tasks (callers queuing calls) and its I/O driver.
    /// `Ok(true)` if a reply or a call was handled, `Ok(false)` if the budget ran out.
    async fn spin(&mut self) -> Result<bool, ClientError> {
        let spin_until = std::time::Instant::now() + self.config.spin;
        loop {
            let stream = self.stream.as_mut().expect("spinning needs a connection");
            match stream.try_read_buf(&mut self.read_buf) {
                Ok(0) => return Err(ClientError::Closed { addr: self.addr }),
                Ok(_) => return self.deliver().map(|()| true),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => {
                    let addr = self.addr;
                    return Err(ClientError::Io {
                        action: "reading from",
                        addr,
                        source,
                    });
                }
            }
            if self.in_flight_ops < IN_FLIGHT_OPS_MAX {
                if let Ok(call) = self.calls.try_recv() {
                    return self.send(call).await.map(|()| true);
                }
            }
            if std::time::Instant::now() >= spin_until {
                return Ok(false);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Packs `first` and every queued call into frames and writes them (connecting
    /// first if needed). Calls whose caller gave up are dropped unsent; calls past their
    /// deadline fail unsent.
    async fn send(&mut self, first: Call) -> Result<(), ClientError> {
        if self.in_flight.is_empty() {
            // The timeouts run from now, not from the last reply of a busy spell.
            self.waiting_since = Instant::now();
        }
        let mut pending = VecDeque::new();
        let mut next = Some(first);
        let now = Instant::now();
        while let Some(call) = next.take().or_else(|| self.calls.try_recv().ok()) {
            if call.is_abandoned() {
                continue;
            }
            if call.deadline() <= now {
                let action = "waiting to send to";
                fail_call(
                    call,
                    &ClientError::Timeout {
                        action,
                        addr: self.addr,
                    },
                );
                continue;
            }
            pending.push_back(call);
        }
        while let Some(call) = pending.pop_front() {
            let in_flight = match call {
                Call::Control(control, reply, deadline) => {
                    self.encode_control(control, reply, deadline)
                }
                Call::Batch(call) => {
                    let durability = call.durability;
                    let keyed = call.idempotency_key.is_some();
                    let mut frame_calls = vec![call];
                    let mut op_count = frame_calls[0].ops.len();
                    while let Some(Call::Batch(next)) = pending.front() {
                        if keyed
                            || next.idempotency_key.is_some()
                            || next.durability != durability
                            || op_count + next.ops.len() > BATCH_OPS_MAX
                        {
                            break;
                        }
                        op_count += next.ops.len();
                        let Some(Call::Batch(next)) = pending.pop_front() else {
                            unreachable!("the front is a batch call");
                        };
                        frame_calls.push(next);
                    }
                    match self.encode_frame(frame_calls, durability, op_count) {
                        Some(in_flight) => in_flight,
                        None => continue,
                    }
                }
            };
            self.in_flight_ops += in_flight.op_count;
            self.in_flight.push_back(in_flight);
        }
        self.write_unwritten().await
    }

    /// Writes what the socket takes now of the frames not yet written on this
    /// connection, connecting first if there is none (a failed connect sends nothing of
    /// them); the task's `select!` writes the rest as the socket makes room.
    async fn write_unwritten(&mut self) -> Result<(), ClientError> {
        if !self.is_writing() {
            return Ok(());
        }
        if self.stream.is_none() {
            self.reconnect().await?;
        }
        self.try_write()
    }

    fn take_request_id(&mut self) -> u64 {
        let request_id = self.next_request_id;
        // Id 0 is the server's, for errors about the connection itself.
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        request_id
    }

    fn encode_control(
        &mut self,
        control: Control,
        reply: ControlSender,
        deadline: Instant,
    ) -> InFlight {
        let request_id = self.take_request_id();
        let mut bytes = Vec::new();
        match control {
            Control::Ping => encode_ping(&mut bytes, request_id),
            Control::Stats => encode_stats(&mut bytes, request_id),
        }
        InFlight {
            request_id,
            bytes,
            retry_safe: true,
            keyed: false,
            mutates: false,
            written: false,
            ever_written: false,
            ever_written_earlier: false,
            parted: false,
            deadline,
            waiter: Waiter::Control(reply),
            op_count: 0,
            retries_used: 0,
        }
    }

    fn encode_frame(
        &mut self,
        calls: Vec<BatchCall>,
        durability: Durability,
        op_count: usize,
    ) -> Option<InFlight> {
        let mutates = calls.iter().flat_map(|call| &call.ops).any(Op::is_mutation);
        // A call with the caller's key has the frame to itself (see `send`).
        let callers_key = calls.iter().find_map(|call| call.idempotency_key);
        let auto_keys = self.config.auto_idempotency_keys && self.config.retries > 0;
        let idempotency_key =
            callers_key.or_else(|| (mutates && auto_keys).then(|| self.automatic_key()));
        let deadline = calls.iter().map(|call| call.deadline).min();
        let deadline = deadline.expect("a frame has at least one call");
        let request_id = self.take_request_id();
        let mut bytes = Vec::new();
        let mut writer = BatchWriter::begin(&mut bytes, request_id, durability, idempotency_key);
        let encoded = calls
            .iter()
            .flat_map(|call| &call.ops)
            .try_for_each(|op| writer.push(op))
            .and_then(|()| writer.finish());
        let calls: Vec<(usize, ReplySender)> = calls
            .into_iter()
            .map(|call| (call.ops.len(), call.reply))
            .collect();
        if let Err(error) = encoded {
            // Only these calls fail; nothing of the frame is sent.
            answer(calls, Err(ClientError::Encode(error)));
            return None;
        }
        Some(InFlight {
            request_id,
            bytes,
            retry_safe: !mutates || idempotency_key.is_some(),
            keyed: idempotency_key.is_some(),
            mutates,
            written: false,
            ever_written: false,
            ever_written_earlier: false,
            parted: false,
            deadline,
            waiter: Waiter::Batch(calls),
            op_count,
            retries_used: 0,
        })
    }

    /// A key of the client's own for a frame sent by this task, homed on the core whose
    /// shard port the task serves (a plain random key for the main address, whose
    /// serving core is not known).
    fn automatic_key(&self) -> u128 {
        let port = self.addr.port();
        let core = (self.addr != self.main_addr)
            .then(|| {
                self.hello
                    .shard_ports
                    .iter()
                    .position(|&shard| shard == port)
            })
            .flatten();
        match core {
            Some(core) => key_homed_on(core, self.hello.core_count()),
            None => random_idempotency_key(),
        }
    }

    /// Hands every whole reply in the read buffer to its calls.
    fn deliver(&mut self) -> Result<(), ClientError> {
        let addr = self.addr;
        let mut consumed = 0;
        while let Some(frame) = decode_reply(&self.read_buf[consumed..])
            .map_err(|source| ClientError::Protocol { addr, source })?
        {
            consumed += frame.frame_bytes;
            if let (0, Ok(Reply::Error(error))) = (frame.request_id, &frame.reply) {
                // The server's parting word: the frames in flight are not answered, and
                // were not applied (PROTOCOL.md, "Closing"); `recover` resends them.
                return Err(ClientError::Disconnected {
                    addr,
                    code: error.code,
                    message: error.message.to_owned(),
                });
            }
            let busy = is_busy_answer(&self.in_flight, &frame);
            if busy {
                // The first copy of this frame is still running: `recover` drops the
                // connection (and what is left in the buffer) and sends it again.
                return Err(reply_error(addr, frame.reply));
            }
            if self.write_index == 0 {
                // Nothing in flight, or the oldest frame is not wholly written yet.
                return Err(ClientError::UnexpectedReply {
                    addr,
                    reason: "reply with no request wholly sent".to_owned(),
                });
            }
            let Some(in_flight) = self.in_flight.pop_front() else {
                unreachable!("write_index counts frames in flight");
            };
            if frame.request_id != in_flight.request_id {
                let reason = format!(
                    "reply to {} while waiting for {}",
                    frame.request_id, in_flight.request_id
                );
                self.in_flight.push_front(in_flight);
                return Err(ClientError::UnexpectedReply { addr, reason });
            }
            self.write_index -= 1;
            self.in_flight_ops -= in_flight.op_count;
            match in_flight.waiter {
                Waiter::Batch(calls) => {
                    let results = batch_results(addr, frame, in_flight.op_count);
                    // A "table full" refusal says the server does not know the key, as
                    // it says of a key it forgot: an earlier copy may have been applied,
                    // unless every earlier copy went to a connection that parted.
                    let resent = in_flight.ever_written_earlier && in_flight.mutates;
                    let results = results.map_err(|error| match error {
                        ClientError::NotApplied { .. } if resent => error.settle(true),
                        other => other,
                    });
                    answer(calls, results);
                }
                Waiter::Control(reply) => {
                    let _ = reply.send(control_result(addr, frame));
                }
            }
            self.waiting_since = Instant::now();
            self.failure_count = 0;
        }
        self.read_buf.drain(..consumed);
        Ok(())
    }

    /// After a failure: resends, on a new connection, the frames that may be sent again
    /// (see the module docs) and fails the calls of the others with the error. Every
    /// round charges the frames it resends after a lost connection, or ends by their
    /// deadline, so this ends.
    async fn recover(&mut self, mut error: ClientError) {
        loop {
            self.stream = None;
            self.read_buf.clear();
            // Every frame left is written again from its start on the next connection.
            self.write_index = 0;
            self.write_offset = 0;
            if self.in_flight.is_empty() {
                // A connection lost while idle (the server closed it): nothing to resend,
                // and no reason to wait longer before the next failure's retry.
                self.failure_count = 0;
                return;
            }
            let retries = self.config.retries;
            // `deliver` raises `ServerBusy` only for a frame with a key.
            let busy = error.is_busy();
            let transient = busy || error.is_lost_connection();
            let connect_failed = matches!(error, ClientError::Connect { .. });
            // The server's parting word: it applied none of the frames it did not answer.
            let parted = matches!(error, ClientError::Disconnected { .. });
            if parted {
                self.in_flight.iter_mut().for_each(InFlight::unsend);
            }
            // A failed connect sent nothing, a parting server applied nothing it was sent,
            // and a busy frame's first copy still runs: no retry is charged for those (a
            // hello that fails is charged, even with a parting error).
            let free = |in_flight: &InFlight| {
                busy || in_flight.parted || (!in_flight.written && connect_failed)
            };
            self.failure_count += 1;
            let wait = backoff(self.failure_count);
            let resume_at = Instant::now() + wait;
            let (mut resend, fail): (VecDeque<InFlight>, VecDeque<InFlight>) =
                self.in_flight.drain(..).partition(|in_flight| {
                    let safe = (!in_flight.written || in_flight.retry_safe)
                        && (free(in_flight) || in_flight.retries_used < retries);
                    retries > 0 && transient && safe && resume_at < in_flight.deadline
                });
            for in_flight in fail {
                self.in_flight_ops -= in_flight.op_count;
                in_flight.fail(&error);
            }
            for in_flight in &mut resend {
                if !free(in_flight) {
                    in_flight.retries_used += 1;
                }
                in_flight.written = false;
                // Free only for this failure: if the reconnect's hello fails next, the
                // frame is still unwritten, and that failure must be charged.
                in_flight.parted = false;
            }
            self.in_flight = resend;
            if self.in_flight.is_empty() {
                debug_assert_eq!(self.in_flight_ops, 0);
                return;
            }
            tokio::time::sleep(wait).await;
            self.forget_abandoned();
            match self.write_unwritten().await {
                Ok(()) => return,
                Err(next) => error = next,
            }
        }
    }

    /// Drops the frames never sent whose callers all gave up while they waited for a
    /// connection: sending them would only apply what nobody waits for.
    fn forget_abandoned(&mut self) {
        let in_flight_ops = &mut self.in_flight_ops;
        self.in_flight.retain(|in_flight| {
            let forget = !in_flight.ever_written && in_flight.is_abandoned();
            if forget {
                *in_flight_ops -= in_flight.op_count;
            }
            !forget
        });
    }

    /// Opens a new connection (to the main address if this core's port cannot be
    /// reached, or answers for another server); publishes its shard map if it routes
    /// differently.
    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let deadline = self
            .in_flight
            .iter()
            .map(|in_flight| in_flight.deadline)
            .min();
        let deadline = deadline.expect("reconnects only to send frames");
        let (stream, hello) = self.open_trusted(deadline).await?;
        if routes_differ(&hello, &self.hello) {
            self.map_watch.publish(hello.clone());
        }
        self.hello = hello;
        self.stream = Some(stream);
        Ok(())
    }

    /// Opens this core's shard port, or the main address if that fails (refused, or
    /// anything but a Tally hello; then the shard port's error if both fail). A shard
    /// port's hello is trusted only from the server process this task knows (the same
    /// `server_id`). Another id (a restart, or another server that took a port this one
    /// freed) is checked with a hello on the main address, the authority: the shard port
    /// is used only if both come from the same process; otherwise the main connection
    /// serves the core (its core forwards keys, and a new map is published from it). If
    /// the main address cannot confirm, the call fails ([`ClientError::Handshake`])
    /// rather than write to a stranger. At most one connection is open at a time.
    async fn open_trusted(
        &self,
        deadline: Instant,
    ) -> Result<(TcpStream, HelloReply), ClientError> {
        let (addr, main_addr) = (self.addr, self.main_addr);
        if addr == main_addr {
            return open(addr, &self.config, deadline).await;
        }
        let shard_hello = match open(addr, &self.config, deadline).await {
            Ok((stream, hello)) if hello.server_id == self.hello.server_id => {
                return Ok((stream, hello));
            }
            // Closed before the main address is asked.
            Ok((_, hello)) => hello,
            Err(error) => {
                let main = open(main_addr, &self.config, deadline).await;
                return main.map_err(|_| error);
            }
        };
        let (main, main_hello) = match open(main_addr, &self.config, deadline).await {
            Ok(opened) => opened,
            Err(error) => {
                return Err(unconfirmed_shard_port(
                    addr,
                    shard_hello.server_id,
                    self.hello.server_id,
                    &error,
                ))
            }
        };
        let same_server = main_hello.server_id == shard_hello.server_id
            && !routes_differ(&main_hello, &shard_hello);
        if !same_server {
            return Ok((main, main_hello));
        }
        drop(main);
        let (stream, hello) = open(addr, &self.config, deadline).await?;
        if hello.server_id != main_hello.server_id {
            let reason = "the server behind the shard port changed while connecting; retry";
            let reason = reason.to_owned();
            return Err(ClientError::Handshake { addr, reason });
        }
        Ok((stream, hello))
    }
}

/// Whether `frame` answers the oldest frame in flight, which carries an idempotency key,
/// with `ServerBusy`: the first copy of that frame is still running. (A `ServerBusy` that
/// refuses a new key because the idempotency memory is full is not: it fails the frame
/// with [`ClientError::NotApplied`].)
fn is_busy_answer(in_flight: &VecDeque<InFlight>, frame: &ReplyFrame<'_>) -> bool {
    let busy = matches!(&frame.reply, Ok(Reply::Error(error))
        if error.code == ErrorCode::ServerBusy && !is_table_full(error.code, error.message));
    busy && in_flight
        .front()
        .is_some_and(|oldest| oldest.keyed && oldest.request_id == frame.request_id)
}

/// Fails a call that never made it into a frame.
fn fail_call(call: Call, error: &ClientError) {
    match call {
        Call::Batch(call) => {
            let _ = call.reply.send(Err(error.replicate()));
        }
        Call::Control(_, reply, _) => {
            let _ = reply.send(Err(error.replicate()));
        }
    }
}

/// A batch frame's reply as one result per operation, or why the frame failed.
fn batch_results(
    addr: SocketAddr,
    frame: ReplyFrame<'_>,
    op_count: usize,
) -> Result<Vec<OpResult>, ClientError> {
    match frame.reply {
        Ok(Reply::BatchReply(reply)) if reply.result_count() == op_count => {
            Ok(reply.results().map(from_reply).collect())
        }
        other => Err(reply_error(addr, other)),
    }
}

/// A control frame's reply, or why it failed.
fn control_result(addr: SocketAddr, frame: ReplyFrame<'_>) -> Result<ControlReply, ClientError> {
    match frame.reply {
        Ok(Reply::Pong) => Ok(ControlReply::Pong),
        Ok(Reply::StatsReply(stats)) => Ok(ControlReply::Stats(stats.entries)),
        other => Err(reply_error(addr, other)),
    }
}

/// Why a reply other than the one expected fails the request: the server's own error, a
/// reply of the wrong kind, or a frame that could not be decoded.
fn reply_error(addr: SocketAddr, reply: Result<Reply<'_>, ProtocolError>) -> ClientError {
    match reply {
        Ok(Reply::Error(error)) => server_refusal(error.code, error.message),
        Ok(other) => ClientError::UnexpectedReply {
            addr,
            reason: format!("{other:?}"),
        },
        Err(source) => ClientError::Protocol { addr, source },
    }
}

/// Splits a frame's results among the calls that share it.
fn answer(calls: Vec<(usize, ReplySender)>, results: Result<Vec<OpResult>, ClientError>) {
    match results {
        Ok(results) => {
            let mut results = results.into_iter();
            for (count, reply) in calls {
                let _ = reply.send(Ok(results.by_ref().take(count).collect()));
            }
        }
        Err(error) => {
            for (_, reply) in calls {
                let _ = reply.send(Err(error.replicate()));
            }
        }
    }
}
