//! The one error type of the wire codec.
//!
//! Decoders return `Ok(None)` when they need more bytes; a [`ProtocolError`] always means
//! the bytes are wrong. Errors fall in two classes, told apart by
//! [`ProtocolError::is_fatal`]:
//!
//! - fatal: the frame's own length is unusable (too large or too short), so the stream
//!   cannot be resynchronized; the server sends an error reply and closes the connection;
//! - recoverable: the frame was well delimited but its contents are wrong (unknown message
//!   type, unknown operation, truncated body, batch over the limit, ...); the receiver skips
//!   the frame's bytes, answers with an error reply, and the connection stays usable.
//!
//! Encoders fail only on values the format cannot carry (a key over 255 bytes, a batch over
//! [`crate::BATCH_OPS_MAX`], a frame over [`crate::FRAME_BYTES_MAX`]), and leave the output
//! buffer as it was.

use crate::status::ErrorCode;

/// Why bytes could not be decoded, or a value could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame's length field exceeds [`crate::FRAME_BYTES_MAX`]. Fatal.
    #[error("frame of {frame_bytes} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { frame_bytes: u64, max: usize },
    /// The frame's length field is smaller than the fixed header. Fatal.
    #[error("frame length {length} is shorter than the {min}-byte header")]
    FrameTooShort { length: u32, min: usize },
    /// The body ends before a field it announces.
    #[error("truncated frame body: missing {what}")]
    Truncated { what: &'static str },
    /// The body has bytes after its last field.
    #[error("{count} unexpected bytes after the end of the message")]
    TrailingBytes { count: usize },
    /// The header names a message type this version does not know.
    #[error("unknown message type {0:#04x}")]
    UnknownMessageType(u8),
    /// A reply type arrived where a request was expected, or the reverse.
    #[error("unexpected message type {0:#04x} in this direction")]
    UnexpectedMessageType(u8),
    /// Header flags this message type does not define are set.
    #[error("unknown flags {flags:#04x} for message type {message_type:#04x}")]
    UnknownFlags { message_type: u8, flags: u8 },
    /// The header's reserved field is not zero.
    #[error("reserved header field is {0}, must be 0")]
    ReservedNotZero(u16),
    /// The hello does not start with `b"TALY"`.
    #[error("bad magic {0:02x?}, expected \"TALY\"")]
    BadMagic([u8; 4]),
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// An operation code this version does not know.
    #[error("unknown operation code {0:#04x}")]
    UnknownOperation(u8),
    /// A bound policy byte other than 0 (reject) or 1 (clamp).
    #[error("unknown bound policy {0}")]
    UnknownPolicy(u8),
    /// A `GetBound` bound byte other than 0 (floor) or 1 (ceiling).
    #[error("unknown bound {0}: 0 reads the floor, 1 the ceiling")]
    UnknownBound(u8),
    /// A durability byte other than 0, 1 or 2.
    #[error("unknown durability {0}")]
    UnknownDurability(u8),
    /// A result status code this version does not know.
    #[error("unknown result status {0}")]
    UnknownStatus(u8),
    /// A set-bounds presence mask, or result flags, with undefined bits set.
    #[error("undefined bits set in {what}: {bits:#04x}")]
    UndefinedBits { what: &'static str, bits: u8 },
    /// A batch with more than [`crate::BATCH_OPS_MAX`] operations.
    #[error("batch of {count} operations exceeds the limit of {max}")]
    BatchTooLarge { count: u64, max: usize },
    /// A key longer than [`crate::KEY_BYTES_MAX`] bytes (encoding only: the wire cannot carry it).
    #[error("key of {length} bytes exceeds the limit of {max} bytes")]
    KeyTooLong { length: usize, max: usize },
    /// A string longer than its length prefix or limit allows.
    #[error("{what} of {length} bytes exceeds the limit of {max} bytes")]
    StringTooLong {
        what: &'static str,
        length: usize,
        max: usize,
    },
    /// A string field that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    /// A handshake reply whose shard map is inconsistent.
    #[error("invalid handshake reply: {reason}")]
    InvalidHandshake { reason: &'static str },
}

impl ProtocolError {
    /// Whether the byte stream can no longer be trusted to be framed: the connection
    /// must be closed (after an error reply). Recoverable errors leave it usable.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProtocolError::FrameTooLarge { .. } | ProtocolError::FrameTooShort { .. }
        )
    }

    /// The code a server puts in its error reply for this decoding failure.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::UnknownMessageType(_) | ProtocolError::UnexpectedMessageType(_) => {
                ErrorCode::UnknownMessageType
            }
            ProtocolError::UnknownOperation(_) => ErrorCode::UnknownOperation,
            ProtocolError::BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            ProtocolError::UnsupportedVersion(_) | ProtocolError::BadMagic(_) => {
                ErrorCode::UnsupportedVersion
            }
            _ => ErrorCode::MalformedFrame,
        }
    }
}
