//! Tally's binary wire protocol: frames and messages, with no I/O.
//!
//! This crate turns messages into bytes and bytes into messages; it knows no sockets, so
//! the server (glommio), the native clients (std and tokio) and the fuzzer share one codec.
//! The byte-by-byte layout is in `net/PROTOCOL.md` and at the top of each module:
//!
//! - [`frame`]: the 16-byte header (length, message type, flags, request id);
//! - [`handshake`]: `Hello` / `HelloReply` and the shard map;
//! - [`op`] and [`batch`]: operations and the `Batch` / `BatchReply` messages;
//! - [`status`]: per-operation result codes and whole-request error codes;
//! - [`control`]: `Ping` / `Pong`, `Stats` / `StatsReply`, `Error`;
//! - [`message`]: [`Request`] and [`Reply`], and the one-call decoders.
//!
//! Decoding a server's input, in the mini-redis style:
//!
//! ```
//! use tally_protocol::{decode_request, encode_batch, Durability, Op, Request};
//!
//! let mut wire = Vec::new();
//! let ops = [Op::Add { key: b"page:1".as_slice(), delta: 5, policy: Default::default() }];
//! encode_batch(&mut wire, 7, Durability::ServerDefault, None, &ops).unwrap();
//!
//! // A partial frame asks for more bytes; a whole one decodes, borrowing its keys.
//! assert!(decode_request(&wire[..10]).unwrap().is_none());
//! let frame = decode_request(&wire).unwrap().unwrap();
//! assert_eq!((frame.request_id, frame.frame_bytes), (7, wire.len()));
//! let Ok(Request::Batch(batch)) = frame.request else { panic!("not a batch") };
//! assert_eq!(batch.ops().next().unwrap().key(), b"page:1");
//! ```
//!
//! Invariants: every integer on the wire is fixed-width little-endian; a frame is at most
//! [`FRAME_BYTES_MAX`] bytes; a batch holds at most [`BATCH_OPS_MAX`] operations; a key is
//! at most [`KEY_BYTES_MAX`] bytes; decoders never panic and never allocate more than the
//! input justifies; a decoded message has been checked whole, so iterating it cannot fail.
#![forbid(unsafe_code)]

pub mod batch;
pub mod control;
mod cursor;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod op;
pub mod status;

pub use batch::{
    encode_batch, encode_batch_reply, BatchRef, BatchReplyRef, BatchReplyWriter, BatchWriter,
    OpIter,
};
pub use control::{
    encode_error, encode_ping, encode_pong, encode_stats, ErrorReply, StatsReply,
    ERROR_MESSAGE_BYTES_MAX, STATS_ENTRIES_MAX,
};
pub use error::ProtocolError;
pub use frame::{
    decode_frame, frame_bytes_needed, MessageType, RawFrame, FLAG_IDEMPOTENCY_KEY, HEADER_BYTES,
};
pub use handshake::{encode_hello, Hello, HelloReply, CORE_COUNT_MAX, PARTITION_COUNT_MAX};
pub use message::{decode_reply, decode_request, Reply, ReplyFrame, Request, RequestFrame};
pub use op::{Bound, BoundPolicy, Durability, Op, OpRef, OP_BYTES_MAX};
pub use status::{ErrorCode, OpReply, Status, OP_REPLY_BYTES};

/// The first four bytes of every `Hello` body.
pub const MAGIC: [u8; 4] = *b"TALY";
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The largest frame, header and length field included: 8 MiB.
pub const FRAME_BYTES_MAX: usize = 8 << 20;
/// The most operations in one batch.
pub const BATCH_OPS_MAX: usize = 10_000;
/// The longest key, in bytes (its length travels in one byte). Keys are 1..=255 bytes;
/// an empty key is carried and answered with [`Status::InvalidKey`].
pub const KEY_BYTES_MAX: usize = 255;
/// The port `tallyd` listens on by default.
pub const DEFAULT_PORT: u16 = 7878;

const _: () = assert!(KEY_BYTES_MAX == u8::MAX as usize);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);

/// The home core of a batch's 128-bit idempotency key among `cores`: xxh3-64 of the
/// key's 16 bytes (little-endian) modulo the core count. The server keeps the key on that
/// core (`net/server`, `idempotency.rs`); a client that makes its own keys draws them so
/// that this is the core it sends the frame to, which spares the server a cross-core
/// hop. The one copy of the rule, so the two cannot drift: keys already journaled keep
/// their home across versions, so it must never change.
///
/// # Panics
/// If `cores` is 0.
pub fn idempotency_home_core(idempotency_key: u128, cores: usize) -> usize {
    assert!(cores > 0, "cores must be positive");
    let hash = xxhash_rust::xxh3::xxh3_64(&idempotency_key.to_le_bytes());
    (hash % cores as u64) as usize
}

/// The partition of `key`: `xxh3_64(key) % partition_count`, the same rule as the engine.
/// tests/tests/partition_rule.rs checks that the two agree.
///
/// # Panics
/// If `partition_count` is 0 (a shard map with no partitions never validates).
pub fn partition_of(key: &[u8], partition_count: u32) -> u32 {
    assert!(partition_count > 0, "partition_count must be positive");
    let hash = xxhash_rust::xxh3::xxh3_64(key);
    let count = u64::from(partition_count);
    // The same rule, without a 64-bit division (tens of cycles) for the usual power of
    // two: then `hash % count == hash & (count - 1)`.
    if partition_count.is_power_of_two() {
        (hash & (count - 1)) as u32
    } else {
        (hash % count) as u32
    }
}
