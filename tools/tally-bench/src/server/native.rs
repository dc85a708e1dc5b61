//! The workload in Tally's native protocol: each request is one `Batch` frame of `batch`
//! `Add` operations; shard-aware connections talk to one core's shard port and only send
//! keys that core owns, so no request takes a cross-core hop.

use super::connection::{RequestCodec, SocketIndex};
use super::resp::log_first_error;
use super::{DriveError, KeySource};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
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
    batch: u64,
    delta: i64,
    durability: Durability,
}

impl NativeCodec {
    pub fn new(keys: KeySource, batch: u64, delta: i64, durability: Durability) -> Self {
        assert!(
            (1..=BATCH_OPS_MAX as u64).contains(&batch),
            "batch within 1..=10,000"
        );
        NativeCodec {
            keys,
            batch,
            delta,
            durability,
        }
    }
}

impl RequestCodec for NativeCodec {
    fn socket_count(&self) -> usize {
        1
    }

    fn encode(
        &mut self,
        outs: &mut [Vec<u8>],
        request_id: u64,
        parts: &mut Vec<SocketIndex>,
    ) -> u64 {
        let mut writer = BatchWriter::begin(&mut outs[0], request_id, self.durability, None);
        for _ in 0..self.batch {
            let op = Op::Add {
                key: self.keys.next_key(),
                delta: self.delta,
                policy: BoundPolicy::Reject,
            };
            writer
                .push(&op)
                .expect("generated keys are short and the batch is within the limit");
        }
        writer.finish().expect("a batch of short keys fits a frame");
        parts.push(0);
        self.batch
    }

    fn decode(
        &mut self,
        _socket: SocketIndex,
        buf: &[u8],
        completed: &mut dyn FnMut(u64),
    ) -> Result<usize, DriveError> {
        let mut consumed = 0;
        while let Some(frame) = decode_reply(&buf[consumed..]).map_err(protocol_error)? {
            consumed += frame.frame_bytes;
            match frame.reply.map_err(protocol_error)? {
                Reply::BatchReply(reply) => {
                    let failed = reply.results().filter(|r| r.status != Status::Ok).count();
                    completed(failed as u64);
                }
                Reply::Error(error) => {
                    log_first_error(error.message);
                    completed(self.batch);
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
    encode_hello(&mut hello, 0, "tally-bench").expect("a short client name encodes");
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

/// The stream connection `index` should use: the shard port of core `index % cores` when
/// shard-aware and the server has one, else the main port. Returns the core served.
pub fn connect_to_core(
    addr: SocketAddr,
    shard_map: &HelloReply,
    index: usize,
    shard_aware: bool,
) -> Result<(TcpStream, Option<usize>), DriveError> {
    let core = index % shard_map.core_count();
    let port = shard_map.shard_ports[core];
    if !shard_aware || port == 0 {
        let (stream, _) = connect(addr)?;
        return Ok((stream, None));
    }
    let (stream, _) = connect(SocketAddr::new(addr.ip(), port))?;
    Ok((stream, Some(core)))
}
