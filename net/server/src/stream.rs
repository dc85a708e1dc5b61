//! The socket side both doors share: opening and closing an accepted client stream,
//! and the input buffer requests are read into.
//!
//! [`open`] registers the stream for shutdown (so a shutdown can end its reads) and sets
//! its timeouts and `TCP_NODELAY`; [`close`] undoes both and gives the connection slot
//! back. Every accepted connection goes through exactly one `open` and one `close`.
//!
//! [`Input`] holds the bytes read and not yet consumed, `data[start..end]`. Each door
//! says how many bytes its pending request needs ([`Input::reserve`]); the buffer
//! compacts, grows (at least doubling, up to its limit) to hold them, and shrinks back
//! to its initial size once drained. So a steady stream of small requests reads into one
//! buffer that never moves, and one large request costs one growth, undone afterwards.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

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

/// Closes a stream opened with [`open`] and frees its connection slot.
pub async fn close(core: &Core, mut stream: TcpStream, registration: RegistrationGuard) {
    drop(registration);
    let _ = stream.close().await;
    let open_before = core.connections_open.fetch_sub(1, Ordering::AcqRel);
    debug_assert!(open_before > 0, "a closed connection was counted open");
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

    /// Makes room for the next read so that the pending request, `needed` bytes counted
    /// from the first unconsumed byte, fits, and at least one more byte can be read.
    /// `Err` if that takes more than the limit.
    pub fn reserve(&mut self, needed: usize) -> Result<(), InputFull> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > self.bytes_initial {
                self.data.truncate(self.bytes_initial);
                self.data.shrink_to_fit();
            }
        }
        let needed = needed.max(self.end - self.start + 1);
        if needed > self.bytes_max {
            return Err(InputFull);
        }
        if self.start + needed > self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if needed > self.data.len() {
            let doubled = (self.data.len() * 2).min(self.bytes_max);
            self.data.resize(needed.max(doubled), 0);
        }
        debug_assert!(self.end < self.data.len() && self.start + needed <= self.data.len());
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
        while input.data.len() < 100 {
            input.reserve(0).unwrap();
            input.fill_for_test();
        }
        assert_eq!(input.data.len(), 100);
        assert_eq!(input.reserve(0), Err(InputFull));
        input.consume(10);
        input.reserve(0).unwrap();
        assert_eq!((input.start, input.end), (0, 90));
        assert_eq!(input.buffered().len(), 90);
    }

    #[test]
    fn a_known_request_size_is_reserved_at_once_and_shrinks_back() {
        let mut input = Input::new(16, 1000);
        input.reserve(700).unwrap();
        assert_eq!(input.data.len(), 700);
        input.fill_for_test();
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
