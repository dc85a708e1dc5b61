//! One load-generating connection: a closed or open loop that keeps up to `pipeline`
//! requests in flight and times each from its send (or intended send) to its reply.
//!
//! Closed loop: a new request leaves as soon as a reply frees a slot in the pipeline.
//! Open loop (`interval` set): request `i` is due at `start + i * interval`; its latency is
//! measured from that intended time, not from when it actually left, so a stalled server
//! cannot hide its stall by slowing the generator down (coordinated omission).
//!
//! Reads spin for `spin` before blocking: on this 2-core VM waking a blocked thread on
//! the other core costs about 100 µs, which would dominate an unpipelined round trip.

use super::DriveError;
use crate::latency::Recorder;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long before an open-loop send time the generator stops sleeping and spins.
const SEND_SPIN_MIN: Duration = Duration::from_micros(100);

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How a protocol turns workload into request bytes and reply bytes into completions.
pub trait RequestCodec {
    /// Append one request (a batch of increments) with id `request_id` to `out`.
    fn encode(&mut self, out: &mut Vec<u8>, request_id: u64);

    /// Consume complete replies at the start of `buf`, calling `completed(failed_ops)`
    /// once per finished request; return the bytes consumed.
    fn decode(&mut self, buf: &[u8], completed: &mut dyn FnMut(u64)) -> Result<usize, DriveError>;
}

/// What one connection does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pipeline: usize,
    pub ops_per_request: u64,
    /// Stop sending after this many requests.
    pub request_quota: Option<u64>,
    /// Stop sending at this time.
    pub deadline: Option<Instant>,
    /// Open loop: the time between intended sends on this connection.
    pub interval: Option<Duration>,
    /// Open loop: this connection's offset in the schedule, so connections interleave.
    pub phase: Duration,
    pub spin: Duration,
}

/// What one connection measured.
#[derive(Debug, Default)]
pub struct ConnectionReport {
    pub requests: u64,
    pub ops_failed: u64,
    pub latency: Recorder,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
}

/// Run `plan` over `stream` until the quota or the deadline, then drain the pipeline.
pub fn drive(
    stream: TcpStream,
    codec: &mut dyn RequestCodec,
    plan: &Plan,
    ops_done: &AtomicU64,
) -> Result<ConnectionReport, DriveError> {
    assert!(plan.pipeline >= 1, "a pipeline holds at least one request");
    let mut reader = Reader::new(stream, plan.spin)?;
    let mut report = ConnectionReport::default();
    let start = Instant::now();
    report.started = Some(start);
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(plan.pipeline);
    let (mut sent, mut out, mut received) = (0_u64, Vec::new(), Vec::new());
    loop {
        let now = Instant::now();
        let sending = plan.request_quota.is_none_or(|quota| sent < quota)
            && plan.deadline.is_none_or(|deadline| now < deadline);
        let mut next_due = None;
        while sending && in_flight.len() < plan.pipeline {
            let due = match plan.interval {
                Some(interval) => start + plan.phase + interval.mul_f64(sent as f64),
                None => now,
            };
            if due > now {
                next_due = Some(due);
                break;
            }
            codec.encode(&mut out, sent);
            in_flight.push_back(due);
            sent += 1;
            if plan.request_quota.is_some_and(|quota| sent >= quota) {
                break;
            }
        }
        if !out.is_empty() {
            reader.write_all(&out)?;
            out.clear();
        }
        if in_flight.is_empty() {
            match next_due {
                Some(due) => wait_until(due, plan.spin),
                None => break,
            }
            continue;
        }
        if !reader.read_into(&mut received, next_due)? {
            continue;
        }
        let requests_before = report.requests;
        // Every reply of this read arrived with it: one timestamp for all of them (a
        // clock read per reply cost the load generator a tenth of its CPU, and counted
        // the decoding of the replies before it into each one's latency).
        let finished = Instant::now();
        let consumed = codec.decode(&received, &mut |failed_ops| {
            if let Some(due) = in_flight.pop_front() {
                report
                    .latency
                    .record(finished.saturating_duration_since(due));
            }
            report.requests += 1;
            report.ops_failed += failed_ops;
        })?;
        received.drain(..consumed);
        // One shared-counter update per read, not per request: the counter only feeds
        // the progress bar, and a per-request atomic would bounce its cache line.
        let completed = report.requests - requests_before;
        ops_done.fetch_add(completed * plan.ops_per_request, Ordering::Relaxed);
    }
    report.finished = Some(Instant::now());
    Ok(report)
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
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

/// A socket read with a spin phase and as few mode-switching syscalls as possible.
struct Reader {
    stream: TcpStream,
    spin: Duration,
    blocking: bool,
    timeout: Option<Duration>,
    chunk: Box<[u8]>,
}

impl Reader {
    fn new(stream: TcpStream, spin: Duration) -> Result<Self, DriveError> {
        stream
            .set_nodelay(true)
            .map_err(|source| DriveError::io("setting TCP_NODELAY", source))?;
        let mut reader = Reader {
            stream,
            spin,
            blocking: true,
            timeout: None,
            chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
        };
        reader.set_blocking(spin.is_zero())?;
        Ok(reader)
    }

    fn set_blocking(&mut self, blocking: bool) -> Result<(), DriveError> {
        if self.blocking != blocking {
            self.stream
                .set_nonblocking(!blocking)
                .map_err(|source| DriveError::io("switching socket mode", source))?;
            self.blocking = blocking;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), DriveError> {
        // A full send buffer in non-blocking mode: block for the write, it is rare.
        match self.stream.write_all(bytes) {
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                self.set_blocking(true)?;
                self.stream.write_all(bytes)
            }
            other => other,
        }
        .map_err(|source| DriveError::io("sending requests", source))
    }

    /// Append what arrives to `received`; `false` if `wake_at` came first.
    fn read_into(
        &mut self,
        received: &mut Vec<u8>,
        wake_at: Option<Instant>,
    ) -> Result<bool, DriveError> {
        let spin_until = Instant::now() + self.spin;
        if !self.spin.is_zero() {
            self.set_blocking(false)?;
            loop {
                match self.stream.read(&mut self.chunk) {
                    Ok(count) => return self.accept(received, count),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(source) => return Err(DriveError::io("reading replies", source)),
                }
                if Instant::now() >= spin_until || wake_at.is_some_and(|at| Instant::now() >= at) {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.set_blocking(true)?;
        let timeout = wake_at.map(|at| {
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_micros(1))
        });
        if self.timeout != timeout {
            self.stream
                .set_read_timeout(timeout)
                .map_err(|source| DriveError::io("setting the read timeout", source))?;
            self.timeout = timeout;
        }
        match self.stream.read(&mut self.chunk) {
            Ok(count) => self.accept(received, count),
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(source) => Err(DriveError::io("reading replies", source)),
        }
    }

    fn accept(&self, received: &mut Vec<u8>, count: usize) -> Result<bool, DriveError> {
        if count == 0 {
            return Err(DriveError::ServerClosed);
        }
        received.extend_from_slice(&self.chunk[..count]);
        Ok(true)
    }
}
