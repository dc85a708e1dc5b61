//! The socket side both doors share: opening and closing an accepted client stream,
//! and the input buffer requests are read into.
//!
//! [`open`] registers the stream for shutdown (so a shutdown can end its reads) and sets
//! its timeouts and `TCP_NODELAY`; [`close`] undoes both and gives the connection slot
//! back. Every accepted connection goes through exactly one `open` and one `close`.
//!
//! [`linger`] is how the server ends a connection it closes itself after its last
//! frame (the native door's parting `Error` of request id 0, PROTOCOL.md "Closing"):
//! it shuts down the write side (FIN), then reads and discards whatever the client
//! still sends, for at most [`PARTING_GRACE`] and [`LINGER_DISCARD_BYTES_MAX`] bytes,
//! until the client closes its side. A
//! plain close with unread bytes in the socket makes the kernel answer with a reset,
//! which can destroy the last frame on its way or in the client's buffer; reading them
//! first lets the last frame arrive. Nothing read there is ever decoded or applied: that
//! is what lets the parting frame promise that every request it did not answer was not
//! applied. Exception: at shutdown the read side is already shut (`shutdown.rs`), so a
//! request that arrives after the FIN may still meet a reset; the promise holds there
//! too, only the parting frame may be lost, and the client then reports a lost
//! connection.
//!
//! [`ReadDeadline`] keeps the read timeout honest: between requests it is counted from
//! the last byte (an idle connection), within a request from the request's first byte,
//! so a client that trickles a byte at a time cannot hold a half-sent request open.
//!
//! [`Input`] holds the bytes read and not yet consumed, `data[start..end]`. Each door
//! says how many bytes its pending request needs ([`Input::reserve`]); the buffer
//! compacts to hold them from its start, but grows only once it is full of bytes that
//! arrived (doubling, up to the request's size and the limit), and shrinks back to its
//! initial size once drained. A request's size is only a claim until its bytes come: a
//! client that sends a header claiming 8 MiB and nothing more costs the initial buffer,
//! not 8 MiB, so memory per connection is bounded by about twice what it sent. A steady
//! stream of small requests reads into one buffer that never moves, and one large
//! request costs a few growths (log2 of its size over the initial size), undone
//! afterwards.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::core::Core;
use crate::shutdown::RegistrationGuard;

/// Registers and configures an accepted stream; keep the guard until [`close`].
pub fn open(core: &Core, stream: &TcpStream, peer: SocketAddr, door: &str) -> RegistrationGuard {
    let registration = core.registry.register(stream.as_raw_fd());
    let configured = stream
        .set_read_timeout(core.config.read_timeout())
        .and_then(|()| stream.set_write_timeout(core.config.write_timeout()))
        .and_then(|()| stream.set_nodelay(true));
    if let Err(error) = configured {
        tracing::warn!(core = core.index, %peer, door, %error, "could not configure a connection");
    }
    registration
}

/// How long the server keeps reading (and discarding) after its last frame on a
/// connection it closes, waiting for the client to close its side; see [`linger`]. A
/// client that reads its replies closes within a round trip of the parting frame; one
/// that keeps sending is cut off after this, so it holds its connection slot (and the
/// shutdown of its core) at most this much longer. A connection refused at accept does
/// not linger (`connection::refuse` says why).
pub const PARTING_GRACE: Duration = Duration::from_secs(1);

/// The bytes read and discarded by one `read` of [`linger`].
const LINGER_READ_BYTES: usize = 4096;

/// The most bytes [`linger`] reads and discards before it closes anyway: a client that
/// reads its replies has at most a pipeline's worth in flight when the parting frame
/// goes out, so this is plenty, while a peer that floods cannot keep a core reading
/// and discarding at line rate for the whole [`PARTING_GRACE`].
const LINGER_DISCARD_BYTES_MAX: usize = 4 * 1024 * 1024;
const _: () = assert!(LINGER_READ_BYTES <= LINGER_DISCARD_BYTES_MAX);

/// Ends a connection the server closes after its last frame (already written): shuts
/// down the write side, so the client reads that frame and then the end of the stream,
/// then reads and discards what the client still sends until it closes its side, the
/// read fails, [`PARTING_GRACE`] has passed, or [`LINGER_DISCARD_BYTES_MAX`] bytes were
/// discarded (then the close may reset). Never decodes what it reads: requests
/// that arrive now are not applied. Call [`close`] (or drop the stream) afterwards.
pub async fn linger(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).await.is_err() {
        // Not connected any more: there is nobody to wait for.
        return;
    }
    let deadline = Instant::now() + PARTING_GRACE;
    let mut discarded = [0u8; LINGER_READ_BYTES];
    let mut discarded_bytes = 0usize;
    while discarded_bytes < LINGER_DISCARD_BYTES_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut discarded).await {
            Ok(0) | Err(_) => return,
            Ok(count) => discarded_bytes += count,
        }
    }
}

/// Closes a stream opened with [`open`] and frees its connection slot.
pub async fn close(core: &Core, mut stream: TcpStream, registration: RegistrationGuard) {
    drop(registration);
    let _ = stream.close().await;
    let open_before = core.connections_open.fetch_sub(1, Ordering::AcqRel);
    debug_assert!(open_before > 0, "a closed connection was counted open");
}

/// The read timeout of one connection: the configured timeout counted from the last
/// byte while no request is partly read, and what is left of it counted from the
/// request's first byte while one is.
#[derive(Debug)]
pub struct ReadDeadline {
    /// The configured read timeout; `None` never times out.
    timeout: Option<Duration>,
    /// When the partly read request must be complete, if one is.
    request_deadline: Option<Instant>,
    /// Whether the stream's timeout is shorter than `timeout` (set for a request).
    shortened: bool,
}

impl ReadDeadline {
    /// For a stream opened with [`open`], which set `timeout` as its read timeout.
    pub fn new(timeout: Option<Duration>) -> ReadDeadline {
        ReadDeadline {
            timeout,
            request_deadline: None,
            shortened: false,
        }
    }

    /// Some request was completed: a partial one left in the input is the next one,
    /// and its time counts from now (a pipelining client whose reads all end mid-frame
    /// is busy, not slow).
    pub fn request_done(&mut self) {
        self.request_deadline = None;
    }

    /// Sets the stream's timeout for its next read; `partial` says whether part of a
    /// request is buffered. `Err` (`TimedOut`) if that request's time is up already.
    /// Between whole requests this costs a branch: the pipelined path stays as it was.
    pub fn arm(&mut self, stream: &TcpStream, partial: bool) -> std::io::Result<()> {
        let Some(timeout) = self.timeout else {
            return Ok(());
        };
        if !partial {
            self.request_deadline = None;
            if self.shortened {
                self.shortened = false;
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(std::io::Error::from)?;
            }
            return Ok(());
        }
        // The request's first byte came with the read that just ended: now is its
        // arrival, give or take the turn that answered the whole requests before it.
        let now = Instant::now();
        let deadline = *self.request_deadline.get_or_insert(now + timeout);
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.shortened = true;
        stream
            .set_read_timeout(Some(left))
            .map_err(std::io::Error::from)
    }

    /// Whether a request was partly read when the timeout struck.
    pub fn within_request(&self) -> bool {
        self.request_deadline.is_some()
    }
}

/// The bytes read and not yet consumed.
#[derive(Debug)]
pub struct Input {
    data: Vec<u8>,
    start: usize,
    end: usize,
    bytes_initial: usize,
    bytes_max: usize,
}

/// The pending request needs more than the input's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputFull;

impl Input {
    /// An empty buffer of `bytes_initial` bytes that may grow to `bytes_max`.
    pub fn new(bytes_initial: usize, bytes_max: usize) -> Input {
        assert!(0 < bytes_initial && bytes_initial <= bytes_max);
        Input {
            data: vec![0; bytes_initial],
            start: 0,
            end: 0,
            bytes_initial,
            bytes_max,
        }
    }

    /// The bytes read and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Drops `count` bytes from the front of [`Input::buffered`].
    pub fn consume(&mut self, count: usize) {
        assert!(count <= self.end - self.start);
        self.start += count;
    }

    /// Makes room for the next read: at least one more byte, and, once the buffer is
    /// full of received bytes, twice as many, but no more than the pending request's
    /// size if it is known (`claimed` bytes counted from the first unconsumed byte; 0
    /// if unknown). `Err` if that takes more than the limit.
    pub fn reserve(&mut self, claimed: usize) -> Result<(), InputFull> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > self.bytes_initial {
                self.data.truncate(self.bytes_initial);
                self.data.shrink_to_fit();
            }
        }
        let needed = claimed.max(self.end - self.start + 1);
        if needed > self.bytes_max {
            return Err(InputFull);
        }
        if self.start + needed > self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() {
            // Full of received bytes (so `start` is 0 and `needed` is over the length):
            // grow with what arrived, never to a size only claimed.
            let doubled = (self.data.len() * 2).min(self.bytes_max);
            let grown = if claimed > self.data.len() {
                claimed.min(doubled)
            } else {
                doubled
            };
            self.data.resize(grown, 0);
        }
        debug_assert!(self.end < self.data.len());
        debug_assert!(self.data.len() <= self.bytes_max);
        Ok(())
    }

    /// One `read` into the free space (call [`Input::reserve`] first); 0 at end of file.
    pub async fn read_from(&mut self, stream: &mut TcpStream) -> std::io::Result<usize> {
        debug_assert!(self.end < self.data.len(), "reserve before reading");
        let count = stream.read(&mut self.data[self.end..]).await?;
        self.end += count;
        Ok(count)
    }

    #[cfg(test)]
    fn fill_for_test(&mut self) {
        self.end = self.data.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_grows_to_its_limit_and_no_further() {
        let mut input = Input::new(16, 100);
        let mut lengths = Vec::new();
        while input.data.len() < 100 {
            input.reserve(0).unwrap();
            input.fill_for_test();
            lengths.push(input.data.len());
        }
        assert_eq!(
            lengths,
            [16, 32, 64, 100],
            "doubling while the size is unknown"
        );
        assert_eq!(input.reserve(0), Err(InputFull));
        input.consume(10);
        input.reserve(0).unwrap();
        assert_eq!((input.start, input.end), (0, 90));
        assert_eq!(input.buffered().len(), 90);
    }

    #[test]
    fn a_claimed_request_size_grows_the_buffer_only_as_bytes_arrive() {
        let mut input = Input::new(16, 1000);
        input.reserve(700).unwrap();
        assert_eq!(input.data.len(), 16, "nothing arrived yet");
        let mut lengths = Vec::new();
        while input.buffered().len() < 700 {
            input.reserve(700).unwrap();
            input.fill_for_test();
            lengths.push(input.data.len());
        }
        assert_eq!(lengths, [16, 32, 64, 128, 256, 512, 700]);
        input.consume(700);
        input.reserve(8).unwrap();
        assert_eq!(input.data.len(), 16);
        assert_eq!(input.reserve(1001), Err(InputFull));
    }

    #[test]
    fn compaction_keeps_the_unconsumed_bytes() {
        let mut input = Input::new(8, 8);
        input.data.copy_from_slice(b"abcdefgh");
        input.fill_for_test();
        input.consume(5);
        input.reserve(4).unwrap();
        assert_eq!(input.buffered(), b"fgh");
        assert_eq!(input.start, 0);
    }
}
