//! The workload as Redis commands: each request is `batch` `INCRBY key delta` commands
//! sent back to back (pipelined, no MULTI), complete when all `batch` replies are in.

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
