//! The workload as Redis commands: each request is `batch` `INCRBY key delta` commands
//! sent back to back (pipelined, no MULTI) on one socket, complete when all `batch`
//! replies are in (replies come in command order). A reply that is not an integer
//! fails its command. Before a run, [`check_port`] makes sure the port speaks RESP.

use super::connection::{RequestCodec, SocketIndex};
use super::{DriveError, KeySource};
use std::collections::VecDeque;
use tally_resp::{parse_reply, Command, Reply};

/// Encodes `INCRBY`s and counts integer replies.
pub struct RespCodec {
    keys: KeySource,
    batch: u64,
    delta: i64,
    /// Replies received for the oldest unfinished request.
    replies_pending: u64,
    /// Failed commands in the oldest unfinished request.
    failed_pending: u64,
    /// Commands in each request in flight, oldest first (the last request of a fill
    /// pass is shorter).
    part_ops: VecDeque<u64>,
}

impl RespCodec {
    pub fn new(keys: KeySource, batch: u64, delta: i64) -> Self {
        assert!(batch >= 1, "a request holds at least one command");
        RespCodec {
            keys,
            batch,
            delta,
            replies_pending: 0,
            failed_pending: 0,
            part_ops: VecDeque::new(),
        }
    }
}

impl RequestCodec for RespCodec {
    fn socket_count(&self) -> usize {
        1
    }

    fn encode(
        &mut self,
        outs: &mut [Vec<u8>],
        _request_id: u64,
        parts: &mut Vec<SocketIndex>,
    ) -> u64 {
        let out = &mut outs[0];
        let ops = self
            .keys
            .remaining()
            .map_or(self.batch, |left| left.min(self.batch));
        for _ in 0..ops {
            let key = self.keys.next_key().expect("within the remaining keys");
            Command::IncrBy {
                key,
                delta: self.delta,
            }
            .encode(out);
        }
        if ops > 0 {
            parts.push(0);
            self.part_ops.push_back(ops);
        }
        ops
    }

    fn decode(
        &mut self,
        _socket: SocketIndex,
        buf: &[u8],
        completed: &mut dyn FnMut(u64),
    ) -> Result<usize, DriveError> {
        let mut consumed = 0;
        while let Some((reply, reply_bytes)) = parse_reply(&buf[consumed..])
            .map_err(|error| DriveError::Protocol(format!("bad RESP reply: {error}")))?
        {
            consumed += reply_bytes;
            if !matches!(reply, Reply::Integer(_)) {
                self.failed_pending += 1;
                if let Reply::Error(message) = reply {
                    log_first_error(&format!(
                        "the server answered an error: {}",
                        String::from_utf8_lossy(message)
                    ));
                }
            }
            self.replies_pending += 1;
            let expected = *self
                .part_ops
                .front()
                .ok_or_else(|| DriveError::Protocol("a RESP reply to no command".into()))?;
            if self.replies_pending == expected {
                self.part_ops.pop_front();
                completed(self.failed_pending);
                self.replies_pending = 0;
                self.failed_pending = 0;
            }
        }
        Ok(consumed)
    }
}

/// Print the first failure a run meets (an error reply or a refused increment), so a
/// misconfigured run does not fail silently.
pub fn log_first_error(message: &str) {
    static LOGGED: std::sync::Once = std::sync::Once::new();
    LOGGED.call_once(|| eprintln!("tally-bench: first failure: {message}"));
}

/// How long the RESP PING before a run may take.
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Check that `addr` speaks RESP: send `PING` and expect any RESP reply (`+PONG`, or an
/// error from a server without PING). A Tally native port closes the connection or
/// answers with a binary frame; say so instead of "the server closed the connection".
pub fn check_port(addr: std::net::SocketAddr) -> Result<(), DriveError> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)
        .map_err(|source| DriveError::Connect { addr, source })?;
    stream
        .set_read_timeout(Some(PING_TIMEOUT))
        .map_err(|source| DriveError::io("setting the PING timeout", source))?;
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|source| DriveError::io("sending PING", source))?;
    let not_resp = |detail: String| DriveError::NotResp { addr, detail };
    let mut reply = [0_u8; 64];
    let count = match stream.read(&mut reply) {
        Ok(0) => return Err(not_resp("it closed the connection".into())),
        Ok(count) => count,
        Err(error) => return Err(not_resp(format!("no reply: {error}"))),
    };
    match parse_reply(&reply[..count]) {
        Ok(Some(_)) => Ok(()),
        // A reply longer than one read is still RESP if it starts like one.
        Ok(None) if matches!(reply[0], b'+' | b'-' | b':' | b'$' | b'*') => Ok(()),
        _ => Err(not_resp(format!(
            "it answered {:?}",
            String::from_utf8_lossy(&reply[..count.min(16)])
        ))),
    }
}
