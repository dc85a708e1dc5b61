//! One blocking TCP connection to one server core: buffered writes, spin-then-park reads.
//!
//! A request is encoded into [`Connection::write_buf`] and sent by [`Connection::flush`];
//! replies are read with [`Connection::read_reply`], one frame at a time, in request order.
//!
//! Reading first busy-polls the non-blocking socket for up to the spin budget (a loopback
//! reply usually lands within tens of microseconds, far less than the ~100 µs it costs to
//! wake a parked thread), then switches the socket to blocking mode with the remaining
//! read timeout, and back. With a zero spin budget the socket stays in blocking mode.
//!
//! An `Error` frame with request id 0 is the server's parting word before it closes the
//! connection: it becomes [`ClientError::Disconnected`], a lost connection, never the
//! answer to the request awaited, and a promise that the requests the server did not
//! answer were not applied (PROTOCOL.md, "Closing"), which `dispatch` relies on to send
//! them again. Before a call is sent on a connection that has been
//! idle, one non-blocking peek tells whether the server already closed it, so the call
//! goes out on a fresh connection instead.
//!
//! Invariants: `read_start <= read_end <= read_buf.len()`; the bytes in
//! `read_buf[read_start..read_end]` are the start of the next reply; after any error the
//! connection must be dropped (its position in the reply stream is unknown).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tally_protocol::{
    decode_reply, encode_hello, frame_bytes_needed, HelloReply, Reply, ReplyFrame, HEADER_BYTES,
};

use crate::config::ClientConfig;
use crate::error::{hello_error, server_refusal, ClientError};

/// Initial read buffer size; it grows to the largest frame seen.
const READ_BUF_BYTES: usize = 64 * 1024;

/// How long a connection must have gone without a reply before a call first checks
/// that the server has not closed it (see [`Connection::closed_while_idle`]).
pub(crate) const IDLE_PROBE_AFTER: Duration = Duration::from_millis(1);

/// A connection with its buffers and request id sequence.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    addr: SocketAddr,
    nonblocking: bool,
    spin: Duration,
    read_timeout: Duration,
    read_buf: Vec<u8>,
    read_start: usize,
    read_end: usize,
    /// Encoded requests waiting for [`Connection::flush`].
    pub(crate) write_buf: Vec<u8>,
    next_request_id: u64,
    /// Requests given an id whose reply has not been read yet.
    awaiting_count: usize,
    /// When the last reply was read (or the connection opened).
    last_reply_at: Instant,
}

impl Connection {
    /// Connects, says hello and returns the server's shard map, within the connect and
    /// read timeouts and never past `deadline` (then a `Connect` error, timed out).
    pub(crate) fn open(
        addr: SocketAddr,
        config: &ClientConfig,
        deadline: Instant,
    ) -> Result<(Connection, HelloReply), ClientError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let connect_timeout = config.connect_timeout.min(remaining);
        if connect_timeout.is_zero() {
            let source = std::io::Error::from(ErrorKind::TimedOut);
            return Err(ClientError::Connect { addr, source });
        }
        let stream = TcpStream::connect_timeout(&addr, connect_timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let io_error = |action| {
            move |source| ClientError::Io {
                action,
                addr,
                source,
            }
        };
        stream
            .set_nodelay(true)
            .map_err(io_error("setting TCP_NODELAY on"))?;
        let mut connection = Connection {
            stream,
            addr,
            nonblocking: false,
            spin: config.spin,
            read_timeout: config.read_timeout,
            read_buf: vec![0; READ_BUF_BYTES],
            read_start: 0,
            read_end: 0,
            write_buf: Vec::with_capacity(READ_BUF_BYTES),
            next_request_id: 1,
            awaiting_count: 0,
            last_reply_at: Instant::now(),
        };
        connection
            .stream
            .set_write_timeout(Some(config.write_timeout))
            .map_err(io_error("configuring"))?;
        connection.set_nonblocking(!config.spin.is_zero())?;
        let request_id = connection.next_request_id();
        encode_hello(&mut connection.write_buf, request_id, &config.client_name)
            .map_err(ClientError::Encode)?;
        connection.flush()?;
        let hello = connection
            .read_reply(request_id, deadline, |reply| match reply {
                Reply::HelloReply(hello) => Ok(hello),
                other => Err(other),
            })
            .map_err(hello_error)?;
        Ok((connection, hello))
    }

    /// The server address this connection goes to.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A fresh request id for this connection; its reply is then awaited. Ids start at 1
    /// and skip 0, which the server uses for errors about the connection itself.
    pub(crate) fn next_request_id(&mut self) -> u64 {
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        self.awaiting_count += 1;
        debug_assert!(request_id != 0);
        request_id
    }

    /// Whether the server has closed this connection while it sat idle: it awaits no
    /// reply, yet the socket holds bytes (a parting `Error` with request id 0) or has
    /// reached its end. Checked with one non-blocking read, and only after
    /// [`IDLE_PROBE_AFTER`] without a reply, so back-to-back calls pay nothing. A `false`
    /// is no promise (the server may close right after); the caller still handles
    /// a parting error in the reply stream.
    pub(crate) fn closed_while_idle(&mut self) -> bool {
        if self.awaiting_count != 0 || self.last_reply_at.elapsed() < IDLE_PROBE_AFTER {
            return false;
        }
        debug_assert!(self.write_buf.is_empty(), "probed with a request unsent");
        if self.read_start != self.read_end {
            return true;
        }
        let was_nonblocking = self.nonblocking;
        if self.set_nonblocking(true).is_err() {
            return true;
        }
        let mut probe = [0u8; 1];
        let closed = match self.stream.peek(&mut probe) {
            // Bytes nobody asked for, or the end of the stream: either way the connection
            // is over (the server closes right after a parting error).
            Ok(_) => true,
            Err(error) => error.kind() != ErrorKind::WouldBlock,
        };
        self.last_reply_at = Instant::now();
        closed || self.set_nonblocking(was_nonblocking).is_err()
    }

    fn set_nonblocking(&mut self, nonblocking: bool) -> Result<(), ClientError> {
        if self.nonblocking != nonblocking {
            let addr = self.addr;
            self.stream
                .set_nonblocking(nonblocking)
                .map_err(|source| ClientError::Io {
                    action: "configuring",
                    addr,
                    source,
                })?;
            self.nonblocking = nonblocking;
        }
        Ok(())
    }

    /// Sends everything in `write_buf`, then empties it.
    pub(crate) fn flush(&mut self) -> Result<(), ClientError> {
        let mut written = 0;
        let spin_wanted = self.nonblocking;
        while written < self.write_buf.len() {
            match self.stream.write(&self.write_buf[written..]) {
                Ok(0) => return Err(ClientError::Closed { addr: self.addr }),
                Ok(count) => written += count,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                // The send buffer is full: wait in blocking mode, bounded by the write timeout.
                Err(error) if error.kind() == ErrorKind::WouldBlock && self.nonblocking => {
                    self.set_nonblocking(false)?;
                }
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return Err(ClientError::Timeout {
                        action: "writing to",
                        addr: self.addr,
                    });
                }
                Err(source) => {
                    return Err(ClientError::Io {
                        action: "writing to",
                        addr: self.addr,
                        source,
                    })
                }
            }
        }
        self.write_buf.clear();
        self.set_nonblocking(spin_wanted)
    }

    /// Reads the next reply, checks it answers `request_id`, and hands it to `accept`,
    /// which returns the value wanted or gives back a reply it did not expect. Waits at
    /// most the read timeout, and not past the call's `deadline`.
    pub(crate) fn read_reply<T>(
        &mut self,
        request_id: u64,
        deadline: Instant,
        accept: impl FnOnce(Reply<'_>) -> Result<T, Reply<'_>>,
    ) -> Result<T, ClientError> {
        let deadline = deadline.min(Instant::now() + self.read_timeout);
        loop {
            let buffered = &self.read_buf[self.read_start..self.read_end];
            let addr = self.addr;
            let decoded =
                decode_reply(buffered).map_err(|source| ClientError::Protocol { addr, source })?;
            if let Some(frame) = decoded {
                self.read_start += frame.frame_bytes;
                self.awaiting_count = self.awaiting_count.saturating_sub(1);
                self.last_reply_at = Instant::now();
                return check_reply(addr, request_id, frame, accept);
            }
            self.fill(deadline)?;
        }
    }

    /// Reads at least one more byte into the buffer, making room for the next frame.
    fn fill(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let addr = self.addr;
        let buffered = &self.read_buf[self.read_start..self.read_end];
        let needed = frame_bytes_needed(buffered)
            .map_err(|source| ClientError::Protocol { addr, source })?
            .unwrap_or(HEADER_BYTES);
        if self.read_start + needed > self.read_buf.len() || self.read_end == self.read_buf.len() {
            self.read_buf.copy_within(self.read_start..self.read_end, 0);
            self.read_end -= self.read_start;
            self.read_start = 0;
            if needed > self.read_buf.len() {
                self.read_buf.resize(needed, 0);
            }
        }
        let count = self.read_some(deadline)?;
        self.read_end += count;
        debug_assert!(self.read_end <= self.read_buf.len());
        Ok(())
    }

    /// One successful `read`: spinning first, then blocking until the deadline.
    fn read_some(&mut self, deadline: Instant) -> Result<usize, ClientError> {
        if self.nonblocking {
            let spin_until = Instant::now() + self.spin;
            loop {
                match self.stream.read(&mut self.read_buf[self.read_end..]) {
                    Ok(count) => return self.read_count(count),
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        if Instant::now() >= spin_until {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    Err(source) => {
                        return Err(ClientError::Io {
                            action: "reading from",
                            addr: self.addr,
                            source,
                        })
                    }
                }
            }
            self.set_nonblocking(false)?;
        }
        let result = self.read_blocking(deadline);
        self.set_nonblocking(!self.spin.is_zero())?;
        result
    }

    fn read_blocking(&mut self, deadline: Instant) -> Result<usize, ClientError> {
        let addr = self.addr;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Timeout {
                    action: "waiting for a reply from",
                    addr,
                });
            }
            self.stream
                .set_read_timeout(Some(remaining))
                .map_err(|source| ClientError::Io {
                    action: "configuring",
                    addr,
                    source,
                })?;
            match self.stream.read(&mut self.read_buf[self.read_end..]) {
                Ok(count) => return self.read_count(count),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(source) => {
                    return Err(ClientError::Io {
                        action: "reading from",
                        addr,
                        source,
                    })
                }
            }
        }
    }

    fn read_count(&self, count: usize) -> Result<usize, ClientError> {
        if count == 0 {
            Err(ClientError::Closed { addr: self.addr })
        } else {
            Ok(count)
        }
    }
}

/// Matches a decoded reply against the request it should answer.
fn check_reply<T>(
    addr: SocketAddr,
    request_id: u64,
    frame: ReplyFrame<'_>,
    accept: impl FnOnce(Reply<'_>) -> Result<T, Reply<'_>>,
) -> Result<T, ClientError> {
    let reply = frame
        .reply
        .map_err(|source| ClientError::Protocol { addr, source })?;
    if let Reply::Error(error) = &reply {
        // Request id 0 is about the connection itself (a timeout, the connection limit,
        // shutdown, a frame that could not be framed): the server closes it next, and
        // did not apply the request awaited nor any sent after it.
        if frame.request_id == 0 {
            return Err(ClientError::Disconnected {
                addr,
                code: error.code,
                message: error.message.to_owned(),
            });
        }
        if frame.request_id == request_id {
            return Err(server_refusal(error.code, error.message));
        }
    }
    if frame.request_id != request_id {
        let reason = format!(
            "reply to request {} while waiting for {request_id}",
            frame.request_id
        );
        return Err(ClientError::UnexpectedReply { addr, reason });
    }
    accept(reply).map_err(|other| ClientError::UnexpectedReply {
        addr,
        reason: format!("{other:?}"),
    })
}
