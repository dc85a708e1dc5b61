//! One logical connection's request loop: keep up to `pipeline` requests in flight,
//! time each from its send (or intended send) to its last reply.
//!
//! A logical connection owns one or more sockets: one for RESP and for native runs
//! that are not shard-aware, one per server core for shard-aware native runs. A request
//! is split by its codec into at most one part per socket (the keys each core owns); it
//! is complete, and its latency ends, when the reply to its last part arrives. Replies
//! come back in order on each socket, so each socket keeps a queue of the requests its
//! parts belong to.
//!
//! The pipeline window is split over the sockets: each socket keeps at most its share
//! of it in flight ([`shares`]: `pipeline / sockets`, at least 1, the shares summing to
//! `pipeline` when it is at least the socket count). Requests are drawn in the key
//! stream's order; a part whose socket's share is full waits in that socket's pending
//! queue until a reply frees a place, while later requests for other sockets may go
//! first (the order within each socket is kept). So a core's turn of `share` replies
//! frees `share` places of the same socket, refilled by one write. (Refilling every
//! free place at once spread each refill over all sockets: a write of about
//! `pipeline / sockets²` requests per socket, and a generator that cost much more CPU
//! per operation than the RESP one.) Drawing stops while a pending queue holds a full
//! share, so at most twice the window is encoded.
//!
//! Closed loop: a new request leaves as soon as a reply frees a slot in the pipeline.
//! Open loop (`interval` set): request `i` is due at `start + phase + i * interval`; its
//! latency is measured from that intended time, not from when it actually left, so a
//! stalled server cannot hide its stall by slowing the generator down (coordinated
//! omission). Every request due before the deadline is sent, even when the stall holds
//! it back until after the deadline.
//!
//! Invariants:
//! - Sockets are non-blocking and the loop reads whenever it writes: a server that
//!   stops reading while its replies are unread (backpressure) can never deadlock the
//!   generator. Encoded but unsent bytes are capped at [`UNSENT_BYTES_MAX`] (plus one
//!   request), so memory does not grow with `pipeline * batch`.
//! - With a deadline, the run ends by `deadline + grace`: whatever is still unanswered
//!   then fails the run with [`DriveError::Stalled`] instead of waiting forever.
//! - Every run and the fill pass, with or without a deadline, fail with
//!   [`DriveError::NoReply`] after [`STALL_TIMEOUT`] without a reply while requests are
//!   in flight: no run can hang on a server that stopped answering.
//! - A failure (I/O error, closed connection, stall) does not discard what was
//!   measured: the report so far is returned with the failure and its time.
//!
//! Reads spin for `spin` before blocking in `ppoll`: on a 2-core VM waking a blocked
//! thread on the other core costs about 100 µs, which would dominate an unpipelined
//! round trip.

use super::DriveError;
use crate::latency::Recorder;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long before an open-loop send time the generator stops sleeping and spins on the
/// clock, without system calls: a sleep overshoots by the timer slack (~50 µs), and a late
/// send counts as latency. The cost: a reply that arrives during the spin is read right
/// after the send, so its latency may read up to this much too long.
const SEND_SPIN_MIN: Duration = Duration::from_micros(100);

/// How long a connection may wait for a reply, with requests in flight, before the run
/// fails as stalled. Far above any latency worth measuring (a durable commit takes
/// milliseconds), short enough that a stopped server is reported, not waited on forever.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Encoded requests not yet accepted by the kernel, per logical connection, before the
/// loop stops encoding more (a request of 10,000 INCRBYs is about 400 KB).
pub const UNSENT_BYTES_MAX: usize = 1 << 20;

/// The most sockets one logical connection opens (one per server core).
pub const SOCKETS_MAX: usize = 256;

/// One part of a request: the socket it goes to.
pub type SocketIndex = usize;

/// How a protocol turns workload into request bytes and reply bytes into completions.
pub trait RequestCodec {
    /// How many sockets the codec writes to (`outs.len()` in [`RequestCodec::encode`]).
    fn socket_count(&self) -> usize;

    /// Append one request with id `request_id` to the sockets' output buffers, pushing
    /// the index of every socket that got a part onto `parts` (at most one part per
    /// socket). Returns the operations in the request, 0 when the key source is
    /// exhausted (then nothing was encoded).
    fn encode(
        &mut self,
        outs: &mut [Vec<u8>],
        request_id: u64,
        parts: &mut Vec<SocketIndex>,
    ) -> u64;

    /// Consume complete replies at the start of `buf`, read from socket `socket`,
    /// calling `completed(failed_ops)` once per finished part; return the bytes
    /// consumed.
    fn decode(
        &mut self,
        socket: SocketIndex,
        buf: &[u8],
        completed: &mut dyn FnMut(u64),
    ) -> Result<usize, DriveError>;
}

/// What one connection does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pipeline: usize,
    /// Stop sending after this many requests.
    pub request_quota: Option<u64>,
    /// Stop sending at this time (open loop: stop sending requests due at or after it).
    pub deadline: Option<Instant>,
    /// With a deadline: how long after it the requests still in flight may take before
    /// the run fails as stalled.
    pub grace: Duration,
    /// Open loop: the time between intended sends on this connection.
    pub interval: Option<Duration>,
    /// Open loop: this connection's offset in the schedule, so connections interleave.
    pub phase: Duration,
    pub spin: Duration,
}

/// What one connection measured.
#[derive(Debug, Default)]
pub struct ConnectionReport {
    /// Requests answered (successful or not).
    pub requests: u64,
    /// Requests with at least one failed operation (not in `latency`).
    pub requests_failed: u64,
    /// Operations in the answered requests.
    pub ops: u64,
    pub ops_failed: u64,
    /// Open loop: requests due before the deadline that were never sent (the run was
    /// stopped first).
    pub requests_missed: u64,
    /// Requests drawn (sent, or encoded and waiting to be) and not answered when the
    /// run failed: in no other count and no percentile.
    pub requests_unanswered: u64,
    /// Latency of the successful requests only.
    pub latency: Recorder,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
    /// Why the connection stopped early; `finished` is when.
    pub failure: Option<DriveError>,
}

/// A request drawn and not yet answered.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// When its latency starts: the intended send (open loop), or the write that
    /// handed its last part's last byte to the kernel (closed loop).
    due: Instant,
    parts_left: usize,
    /// Parts not yet written in full (pending, or in a socket's output buffer).
    parts_unwritten: usize,
    ops: u64,
    failed_ops: u64,
}

/// One socket of the connection with its buffers.
struct Socket {
    stream: TcpStream,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    received: Vec<u8>,
    /// The slots of the parts in flight on this socket, oldest first.
    parts: VecDeque<usize>,
    /// The most parts in flight on this socket: its share of the pipeline.
    share: usize,
    /// Parts drawn while the share was full: their slots and the end of their bytes in
    /// `pending_bytes`, oldest first.
    pending: VecDeque<(usize, usize)>,
    /// The encoded pending parts; `pending_start` bytes of it have already moved out.
    pending_bytes: Vec<u8>,
    pending_start: usize,
    /// The parts in `out` not yet written in full: their slots and the end of their
    /// bytes in `out`, oldest first.
    unwritten: VecDeque<(usize, usize)>,
    /// Whether a read may find bytes: set by `ppoll` (or a full read), cleared by a
    /// read that drained the socket. Without spinning, only such sockets are read, so
    /// an unpipelined round trip costs a write, a ppoll and a read.
    readable: bool,
}

/// Run `plan` over `streams` until the quota or the deadline, then drain the pipeline.
/// Always returns what was measured; a failure is in [`ConnectionReport::failure`].
pub fn drive(
    streams: Vec<TcpStream>,
    codec: &mut dyn RequestCodec,
    plan: &Plan,
    ops_done: &AtomicU64,
) -> ConnectionReport {
    assert!(plan.pipeline >= 1, "a pipeline holds at least one request");
    assert_eq!(
        streams.len(),
        codec.socket_count(),
        "one stream per codec socket"
    );
    let mut report = ConnectionReport {
        started: Some(Instant::now()),
        ..ConnectionReport::default()
    };
    let mut state = match State::new(streams, plan) {
        Ok(state) => state,
        Err(error) => {
            report.failure = Some(error);
            report.finished = Some(Instant::now());
            return report;
        }
    };
    let result = state.run(codec, plan, ops_done, &mut report);
    report.finished = Some(Instant::now());
    if let Err(error) = result {
        report.requests_missed = state.missed(plan, report.finished.expect("just set"));
        report.requests_unanswered = state.in_flight() as u64;
        report.failure = Some(error);
    }
    report
}

/// The loop's state: sockets, slots, and how far the schedule got.
struct State {
    sockets: Vec<Socket>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    start: Instant,
    sent: u64,
    sending_done: bool,
    chunk: Box<[u8]>,
    parts: Vec<SocketIndex>,
    outs: Vec<Vec<u8>>,
    /// Open loop: a request's latency starts at its intended send, set when drawn.
    interval_set: bool,
    /// The last read of a reply, or the last time nothing was in flight: the stall
    /// timeout counts from it.
    last_reply: Instant,
    /// One `ppoll` entry per socket, allocated once (`events` refreshed per wait).
    pollfds: Vec<libc::pollfd>,
}

impl State {
    fn new(streams: Vec<TcpStream>, plan: &Plan) -> Result<Self, DriveError> {
        assert!((1..=SOCKETS_MAX).contains(&streams.len()));
        let shares = shares(plan.pipeline, streams.len());
        // Every part is in flight or pending, each at most a share per socket, and every
        // request has at least one part. With fewer requests than sockets the shares (1
        // each) sum to more than the pipeline: the slots alone hold it to `pipeline`.
        let slot_count = if plan.pipeline >= streams.len() {
            2 * plan.pipeline
        } else {
            plan.pipeline
        };
        let mut sockets = Vec::with_capacity(streams.len());
        for (stream, share) in streams.into_iter().zip(shares) {
            stream
                .set_nodelay(true)
                .map_err(|source| DriveError::io("setting TCP_NODELAY", source))?;
            stream
                .set_nonblocking(true)
                .map_err(|source| DriveError::io("switching socket mode", source))?;
            sockets.push(Socket {
                stream,
                out: Vec::new(),
                written: 0,
                received: Vec::new(),
                parts: VecDeque::with_capacity(share),
                share,
                pending: VecDeque::with_capacity(share + 1),
                pending_bytes: Vec::new(),
                pending_start: 0,
                unwritten: VecDeque::with_capacity(share),
                readable: false,
            });
        }
        let pollfds = sockets
            .iter()
            .map(|socket| libc::pollfd {
                fd: socket.stream.as_raw_fd(),
                events: 0,
                revents: 0,
            })
            .collect();
        let now = Instant::now();
        let idle = Slot {
            due: now,
            parts_left: 0,
            parts_unwritten: 0,
            ops: 0,
            failed_ops: 0,
        };
        let socket_count = sockets.len();
        Ok(State {
            sockets,
            slots: vec![idle; slot_count],
            free: (0..slot_count).rev().collect(),
            start: now,
            sent: 0,
            sending_done: false,
            chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            parts: Vec::with_capacity(socket_count),
            outs: vec![Vec::new(); socket_count],
            interval_set: plan.interval.is_some(),
            last_reply: now,
            pollfds,
        })
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Encoded bytes not yet accepted by the kernel, pending parts included.
    fn unsent_bytes(&self) -> usize {
        self.sockets
            .iter()
            .map(|socket| {
                socket.out.len() - socket.written + socket.pending_bytes.len()
                    - socket.pending_start
            })
            .sum()
    }

    /// Whether another request may be drawn: some socket has room in its share, and no
    /// pending queue holds a full share (which bounds the slots and the encoded bytes).
    fn may_draw(&self) -> bool {
        let room = self
            .sockets
            .iter()
            .any(|socket| socket.parts.len() < socket.share);
        let pending_full = self
            .sockets
            .iter()
            .any(|socket| socket.pending.len() >= socket.share);
        room && !pending_full && !self.free.is_empty()
    }

    /// When request `index` is due (open loop), or `now` (closed loop).
    fn due(&self, plan: &Plan, index: u64, now: Instant) -> Instant {
        match plan.interval {
            Some(interval) => self.start + plan.phase + interval.mul_f64(index as f64),
            None => now,
        }
    }

    /// Open loop: the requests due before the deadline that were never sent.
    fn missed(&self, plan: &Plan, now: Instant) -> u64 {
        let (Some(interval), Some(deadline)) = (plan.interval, plan.deadline) else {
            return 0;
        };
        let until = deadline
            .min(now)
            .saturating_duration_since(self.start + plan.phase);
        let due_count = (until.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
        let due_count = plan
            .request_quota
            .map_or(due_count, |quota| due_count.min(quota));
        due_count.saturating_sub(self.sent)
    }

    fn run(
        &mut self,
        codec: &mut dyn RequestCodec,
        plan: &Plan,
        ops_done: &AtomicU64,
        report: &mut ConnectionReport,
    ) -> Result<(), DriveError> {
        let hard_stop = plan.deadline.map(|deadline| deadline + plan.grace);
        let mut last_progress = Instant::now();
        loop {
            let now = Instant::now();
            if self.in_flight() == 0 {
                self.last_reply = now;
            }
            let next_due = self.fill_window(codec, plan, now);
            let mut progress = self.flush()?;
            if self.receive(codec, ops_done, report, !plan.spin.is_zero())? {
                progress = true;
                self.last_reply = Instant::now();
            }
            if self.sending_done && self.in_flight() == 0 && self.unsent_bytes() == 0 {
                return Ok(());
            }
            let now = Instant::now();
            let stall_at = self.last_reply + STALL_TIMEOUT;
            if self.in_flight() > 0 && now >= stall_at {
                return Err(DriveError::NoReply {
                    seconds: STALL_TIMEOUT.as_secs(),
                    in_flight: self.in_flight(),
                });
            }
            if let Some(stop) = hard_stop.filter(|&stop| now >= stop) {
                return Err(DriveError::Stalled {
                    grace_s: plan.grace.as_secs_f64(),
                    in_flight: self.in_flight(),
                    after_s: (stop - self.start).as_secs_f64(),
                });
            }
            if progress {
                last_progress = now;
                continue;
            }
            if now < last_progress + plan.spin {
                std::hint::spin_loop();
                continue;
            }
            if let Some(due) = next_due.filter(|&due| due <= now + SEND_SPIN_MIN) {
                // Open loop, the next send is close: spin on the clock rather than calling
                // ppoll with (nearly) zero timeouts, then read every socket with parts in
                // flight after the send.
                spin_until(due);
                for socket in &mut self.sockets {
                    socket.readable |= !socket.parts.is_empty();
                }
                continue;
            }
            // Wake up early enough to spin for the next send.
            let wake_for_send = next_due.map(|due| due - SEND_SPIN_MIN);
            // Never an endless ppoll: the stall timeout bounds every wait.
            let wake_at = [wake_for_send, hard_stop]
                .into_iter()
                .flatten()
                .fold(stall_at, Instant::min);
            if self.in_flight() == 0 && self.unsent_bytes() == 0 {
                // Open loop between sends: nothing to read, wait for the next send time.
                match next_due {
                    Some(due) => wait_until(due, plan.spin),
                    None => return Ok(()),
                }
                continue;
            }
            self.wait(wake_at)?;
        }
    }

    /// Encode requests while the window and the unsent-bytes cap allow; returns when the
    /// next open-loop request is due, if it is in the future.
    fn fill_window(
        &mut self,
        codec: &mut dyn RequestCodec,
        plan: &Plan,
        now: Instant,
    ) -> Option<Instant> {
        self.promote_pending();
        while !self.sending_done && self.may_draw() && self.unsent_bytes() < UNSENT_BYTES_MAX {
            if plan.request_quota.is_some_and(|quota| self.sent >= quota) {
                self.sending_done = true;
                break;
            }
            let due = self.due(plan, self.sent, now);
            // Closed loop stops at the deadline; open loop sends every request due
            // before it, however late (its latency counts from `due`).
            let past = match plan.interval {
                Some(_) => plan.deadline.is_some_and(|deadline| due >= deadline),
                None => plan.deadline.is_some_and(|deadline| now >= deadline),
            };
            if past {
                self.sending_done = true;
                break;
            }
            if due > now {
                return Some(due);
            }
            self.parts.clear();
            // Ids count from 1: id 0 is the server's parting word (PROTOCOL.md).
            let ops = codec.encode(&mut self.outs, self.sent + 1, &mut self.parts);
            if ops == 0 {
                self.sending_done = true;
                break;
            }
            assert!(!self.parts.is_empty(), "a request has at least one part");
            let slot = self.free.pop().expect("may_draw bounds the slots in use");
            self.slots[slot] = Slot {
                due,
                parts_left: self.parts.len(),
                parts_unwritten: self.parts.len(),
                ops,
                failed_ops: 0,
            };
            for &index in &self.parts {
                let out = &mut self.outs[index];
                let socket = &mut self.sockets[index];
                if socket.pending.is_empty() && socket.parts.len() < socket.share {
                    socket.out.extend_from_slice(out);
                    socket.unwritten.push_back((slot, socket.out.len()));
                    socket.parts.push_back(slot);
                } else {
                    socket.pending_bytes.extend_from_slice(out);
                    socket.pending.push_back((slot, socket.pending_bytes.len()));
                }
                out.clear();
            }
            self.sent += 1;
        }
        None
    }

    /// Move pending parts into their sockets' output buffers while their shares have
    /// room.
    fn promote_pending(&mut self) {
        for socket in &mut self.sockets {
            let mut end = socket.pending_start;
            while socket.parts.len() < socket.share {
                let Some((slot, part_end)) = socket.pending.pop_front() else {
                    break;
                };
                assert!(part_end > end, "a pending part has bytes");
                end = part_end;
                socket.parts.push_back(slot);
                let out_end = socket.out.len() + (part_end - socket.pending_start);
                socket.unwritten.push_back((slot, out_end));
            }
            if end > socket.pending_start {
                socket
                    .out
                    .extend_from_slice(&socket.pending_bytes[socket.pending_start..end]);
                socket.pending_start = end;
            }
            if socket.pending.is_empty() {
                socket.pending_bytes.clear();
                socket.pending_start = 0;
            }
        }
    }

    /// Write what the kernel takes without blocking; whether anything was written.
    /// Closed loop: a request's latency starts at the write that took its last byte
    /// (one clock read per flush), not when it was encoded or while it waited in `out`.
    fn flush(&mut self) -> Result<bool, DriveError> {
        let mut progress = false;
        let mut now = None;
        let closed_loop = !self.interval_set;
        for socket in &mut self.sockets {
            while socket.written < socket.out.len() {
                match socket.stream.write(&socket.out[socket.written..]) {
                    Ok(0) => return Err(DriveError::ServerClosed),
                    Ok(count) => {
                        socket.written += count;
                        progress = true;
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(source) => return Err(DriveError::io("sending requests", source)),
                }
            }
            while let Some(&(slot, end)) = socket.unwritten.front() {
                if end > socket.written {
                    break;
                }
                socket.unwritten.pop_front();
                let slot = &mut self.slots[slot];
                assert!(slot.parts_unwritten > 0, "a part is written once");
                slot.parts_unwritten -= 1;
                if slot.parts_unwritten == 0 && closed_loop {
                    slot.due = *now.get_or_insert_with(Instant::now);
                }
            }
            if socket.written == socket.out.len() {
                assert!(
                    socket.unwritten.is_empty(),
                    "every written part was stamped"
                );
                socket.out.clear();
                socket.written = 0;
            }
        }
        Ok(progress)
    }

    /// Read what has arrived on every socket and complete the requests it finishes;
    /// whether anything was read.
    fn receive(
        &mut self,
        codec: &mut dyn RequestCodec,
        ops_done: &AtomicU64,
        report: &mut ConnectionReport,
        spinning: bool,
    ) -> Result<bool, DriveError> {
        let mut progress = false;
        for index in 0..self.sockets.len() {
            let socket = &mut self.sockets[index];
            if !(socket.readable || spinning && !socket.parts.is_empty()) {
                continue;
            }
            let count = match socket.stream.read(&mut self.chunk) {
                Ok(0) => return Err(DriveError::ServerClosed),
                Ok(count) => count,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    socket.readable = false;
                    continue;
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(DriveError::io("reading replies", source)),
            };
            // A full chunk may have left more behind.
            socket.readable = count == self.chunk.len();
            progress = true;
            // Every reply of this read arrived with it: one timestamp for all of them (a
            // clock read per reply cost the load generator a tenth of its CPU).
            let finished = Instant::now();
            let socket = &mut self.sockets[index];
            socket.received.extend_from_slice(&self.chunk[..count]);
            let (slots, free) = (&mut self.slots, &mut self.free);
            let mut ops_completed = 0;
            let consumed = codec.decode(index, &socket.received, &mut |failed_ops| {
                let slot_index = socket
                    .parts
                    .pop_front()
                    .expect("a reply answers a part in flight");
                let slot = &mut slots[slot_index];
                slot.failed_ops += failed_ops;
                slot.parts_left -= 1;
                if slot.parts_left == 0 {
                    complete(report, slot, finished);
                    ops_completed += slot.ops;
                    free.push(slot_index);
                }
            })?;
            socket.received.drain(..consumed);
            // One shared-counter update per read, not per request: the counter only
            // feeds the progress bar.
            ops_done.fetch_add(ops_completed, Ordering::Relaxed);
        }
        Ok(progress)
    }

    /// Block until a socket is readable (or writable, with bytes to send) or `wake_at`.
    fn wait(&mut self, wake_at: Instant) -> Result<(), DriveError> {
        let fds = &mut self.pollfds;
        assert_eq!(fds.len(), self.sockets.len(), "one pollfd per socket");
        for (fd, socket) in fds.iter_mut().zip(&self.sockets) {
            fd.events = libc::POLLIN
                | if socket.written < socket.out.len() {
                    libc::POLLOUT
                } else {
                    0
                };
            fd.revents = 0;
        }
        let left = wake_at.saturating_duration_since(Instant::now());
        let timeout = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds and the timeout
        // a valid timespec, both alive for the call; ppoll only writes `revents`.
        let result = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &timeout,
                std::ptr::null(),
            )
        };
        if result < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != ErrorKind::Interrupted {
                return Err(DriveError::io("waiting for the sockets", error));
            }
        }
        let ready = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
        for (socket, fd) in self.sockets.iter_mut().zip(&self.pollfds) {
            socket.readable |= fd.revents & ready != 0;
        }
        Ok(())
    }
}

/// Each socket's share of a `pipeline`-request window over `socket_count` sockets:
/// `pipeline / socket_count`, the first `pipeline % socket_count` one more, at least 1.
/// For example 64 over 3 sockets: 22, 21, 21.
fn shares(pipeline: usize, socket_count: usize) -> Vec<usize> {
    assert!(pipeline >= 1 && socket_count >= 1);
    let shares: Vec<usize> = (0..socket_count)
        .map(|index| {
            (pipeline / socket_count + usize::from(index < pipeline % socket_count)).max(1)
        })
        .collect();
    assert_eq!(shares.iter().sum::<usize>(), pipeline.max(socket_count));
    shares
}

/// Account a request whose last part was answered at `finished`.
fn complete(report: &mut ConnectionReport, slot: &Slot, finished: Instant) {
    assert_eq!(slot.parts_unwritten, 0, "a reply answers a written request");
    report.requests += 1;
    report.ops += slot.ops;
    report.ops_failed += slot.failed_ops;
    // An error reply is often fast: timing it would flatter the percentiles.
    if slot.failed_ops > 0 {
        report.requests_failed += 1;
    } else {
        report
            .latency
            .record(finished.saturating_duration_since(slot.due));
    }
}

/// Wait for an open-loop send time. The last [`SEND_SPIN_MIN`] are spun, because a
/// sleep overshoots by the timer slack (~50 µs), and a late send counts as latency.
fn wait_until(due: Instant, spin: Duration) {
    let spin = spin.max(SEND_SPIN_MIN);
    let now = Instant::now();
    if due <= now {
        return;
    }
    let remaining = due - now;
    if remaining > spin {
        std::thread::sleep(remaining - spin);
    }
    spin_until(due);
}

/// Spin on the clock until `due`, without system calls.
fn spin_until(due: Instant) {
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn the_shares_split_the_window_over_the_sockets() {
        assert_eq!(shares(64, 2), vec![32, 32]);
        assert_eq!(shares(64, 3), vec![22, 21, 21]);
        assert_eq!(shares(1, 1), vec![1]);
        // Fewer requests than sockets: every socket still gets one.
        assert_eq!(shares(2, 4), vec![1, 1, 1, 1]);
    }
}
