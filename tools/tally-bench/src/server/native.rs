//! The workload in Tally's native protocol: each request is one `Batch` frame of `batch`
//! `Add` operations, or, shard-aware, one frame per core holding the request's keys that
//! core owns.
//!
//! A shard-aware logical connection opens one socket per server core (its shard port),
//! as the client crate does, and sends every key of its stream to the core that owns
//! it: the keys, their order within each core, and their counts are exactly those of
//! the stream ([`crate::workload`]), the same a RESP run with the same flags and seed
//! sends. No request takes a cross-core hop; a request is complete when every core it
//! touched has answered.

use super::connection::{RequestCodec, SocketIndex};
use super::resp::log_first_error;
use super::{DriveError, KeyOwners, KeySource};
use crate::workload::write_key;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use tally_protocol::{
    decode_reply, encode_hello, BatchWriter, BoundPolicy, Durability, HelloReply, Op, Reply,
    Status, BATCH_OPS_MAX,
};

/// How long the handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Encodes `Batch` frames of increments and counts failed operations in the replies.
pub struct NativeCodec {
    keys: KeySource,
    /// Shard-aware: which core (socket) owns each key; `None`: one socket.
    owners: Option<Arc<KeyOwners>>,
    batch: u64,
    delta: i64,
    durability: Durability,
    /// Per socket, the ranks of the request being encoded (allocated once).
    ranks_by_socket: Vec<Vec<u64>>,
    /// Per socket, the request id and operations of each part in flight, oldest first:
    /// a reply must carry the oldest part's id, and an `Error` reply fails all of its
    /// part's operations.
    part_ops: Vec<VecDeque<(u64, u64)>>,
    key: Vec<u8>,
}

impl NativeCodec {
    /// A codec writing to one socket per core of `owners`, or to one socket without.
    pub fn new(
        keys: KeySource,
        owners: Option<Arc<KeyOwners>>,
        batch: u64,
        delta: i64,
        durability: Durability,
    ) -> Self {
        assert!(
            (1..=BATCH_OPS_MAX as u64).contains(&batch),
            "batch within 1..=10,000"
        );
        let sockets = owners.as_ref().map_or(1, |owners| owners.core_count());
        NativeCodec {
            keys,
            owners,
            batch,
            delta,
            durability,
            ranks_by_socket: vec![Vec::with_capacity(batch as usize); sockets],
            part_ops: vec![VecDeque::new(); sockets],
            key: Vec::with_capacity(crate::workload::KEY_BYTES_MAX),
        }
    }
}

impl RequestCodec for NativeCodec {
    fn socket_count(&self) -> usize {
        self.ranks_by_socket.len()
    }

    fn encode(
        &mut self,
        outs: &mut [Vec<u8>],
        request_id: u64,
        parts: &mut Vec<SocketIndex>,
    ) -> u64 {
        let ops = self
            .keys
            .remaining()
            .map_or(self.batch, |left| left.min(self.batch));
        for _ in 0..ops {
            let rank = self.keys.next_rank().expect("within the remaining keys");
            let socket = match &self.owners {
                Some(owners) => owners.owner_of_rank(rank, &mut self.key),
                None => 0,
            };
            self.ranks_by_socket[socket].push(rank);
        }
        for (socket, ranks) in self.ranks_by_socket.iter_mut().enumerate() {
            if ranks.is_empty() {
                continue;
            }
            let mut writer =
                BatchWriter::begin(&mut outs[socket], request_id, self.durability, None);
            for &rank in ranks.iter() {
                write_key(&mut self.key, rank);
                let op = Op::Add {
                    key: &self.key[..],
                    delta: self.delta,
                    policy: BoundPolicy::Reject,
                };
                writer
                    .push(&op)
                    .expect("generated keys are short and the batch is within the limit");
            }
            writer.finish().expect("a batch of short keys fits a frame");
            self.part_ops[socket].push_back((request_id, ranks.len() as u64));
            ranks.clear();
            parts.push(socket);
        }
        ops
    }

    fn decode(
        &mut self,
        socket: SocketIndex,
        buf: &[u8],
        completed: &mut dyn FnMut(u64),
    ) -> Result<usize, DriveError> {
        let mut consumed = 0;
        while let Some(frame) = decode_reply(&buf[consumed..]).map_err(protocol_error)? {
            consumed += frame.frame_bytes;
            if frame.request_id == 0 {
                // The server's parting word (PROTOCOL.md "Closing"): it answers no request.
                return Err(match frame.reply.map_err(protocol_error)? {
                    Reply::Error(error) => DriveError::ServerClosing {
                        message: error.message.to_string(),
                    },
                    other => DriveError::Protocol(format!(
                        "a reply with request id 0 that is not an error: {other:?}"
                    )),
                });
            }
            let (request_id, ops) = self.part_ops[socket]
                .pop_front()
                .ok_or_else(|| DriveError::Protocol("a reply to no request".into()))?;
            // Replies come in request order on each connection: any other id is a
            // mismatch that would time and count the wrong request.
            if frame.request_id != request_id {
                return Err(DriveError::Protocol(format!(
                    "a reply to request {}, expected one to request {request_id}",
                    frame.request_id
                )));
            }
            match frame.reply.map_err(protocol_error)? {
                Reply::BatchReply(reply) => {
                    if reply.results().len() as u64 != ops {
                        return Err(DriveError::Protocol(format!(
                            "a batch reply of {} results to a part of {ops} operations",
                            reply.results().len()
                        )));
                    }
                    let mut failed = 0;
                    for result in reply.results().filter(|r| r.status != Status::Ok) {
                        if failed == 0 {
                            log_first_error(&format!(
                                "an increment was refused: {:?} (value {})",
                                result.status, result.value
                            ));
                        }
                        failed += 1;
                    }
                    completed(failed);
                }
                Reply::Error(error) => {
                    log_first_error(&format!("the server answered an error: {}", error.message));
                    completed(ops);
                }
                other => {
                    return Err(DriveError::Protocol(format!(
                        "expected a batch reply, got {other:?}"
                    )))
                }
            }
        }
        Ok(consumed)
    }
}

fn protocol_error(error: tally_protocol::ProtocolError) -> DriveError {
    DriveError::Protocol(format!("bad native reply: {error}"))
}

/// Connect to `addr`, say hello, and return the stream and the server's shard map.
pub fn connect(addr: SocketAddr) -> Result<(TcpStream, HelloReply), DriveError> {
    let mut stream =
        TcpStream::connect(addr).map_err(|source| DriveError::Connect { addr, source })?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|source| DriveError::io("setting the handshake timeout", source))?;
    let mut hello = Vec::new();
    // Request id 0 is reserved for the server's parting word (PROTOCOL.md).
    encode_hello(&mut hello, 1, "tally-bench").expect("a short client name encodes");
    stream
        .write_all(&hello)
        .map_err(|source| DriveError::io("sending the hello", source))?;
    let mut received = Vec::new();
    let mut chunk = [0_u8; 4096];
    // A server that speaks another protocol (the RESP port) waits for more bytes or
    // answers with something that is not a frame: both say "wrong port", not "I/O error".
    let not_native = |detail: String| DriveError::NotNative { addr, detail };
    loop {
        let decoded = decode_reply(&received).map_err(|error| not_native(error.to_string()))?;
        if let Some(frame) = decoded {
            let reply = match frame.reply.map_err(|error| not_native(error.to_string()))? {
                Reply::HelloReply(reply) => reply,
                other => return Err(not_native(format!("expected a hello reply, got {other:?}"))),
            };
            stream
                .set_read_timeout(None)
                .map_err(|source| DriveError::io("clearing the handshake timeout", source))?;
            return Ok((stream, reply));
        }
        let count = stream
            .read(&mut chunk)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    DriveError::HelloTimeout { addr }
                }
                _ => DriveError::io("reading the hello reply", source),
            })?;
        if count == 0 {
            return Err(DriveError::ServerClosed);
        }
        received.extend_from_slice(&chunk[..count]);
    }
}

/// The sockets of one logical connection: one per core's shard port when shard-aware
/// and the server has them (in core order), else one to the main port.
pub fn connect_cores(
    addr: SocketAddr,
    shard_map: &HelloReply,
    shard_aware: bool,
) -> Result<Vec<TcpStream>, DriveError> {
    if !shard_aware || shard_map.shard_ports.contains(&0) {
        return Ok(vec![connect(addr)?.0]);
    }
    shard_map
        .shard_ports
        .iter()
        .map(|&port| Ok(connect(SocketAddr::new(addr.ip(), port))?.0))
        .collect()
}
