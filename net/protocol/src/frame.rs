//! Framing: the fixed 16-byte header that starts every message.
//!
//! ```text
//! offset size field
//!      0    4 length        u32 LE: bytes after this field (12 + body), so a whole
//!                           frame is 4 + length bytes, at most FRAME_BYTES_MAX
//!      4    1 message_type  MessageType as u8
//!      5    1 flags         per message type; undefined bits must be 0
//!      6    2 reserved      u16, must be 0
//!      8    8 request_id    u64 LE, chosen by the client, echoed in the reply
//!     16  ... body          per message type
//! ```
//!
//! [`decode_frame`] only delimits: it returns `Ok(None)` until a whole frame is buffered,
//! and fails only if the length field is unusable (fatal: the stream cannot be
//! resynchronized). Decoding the body ([`RawFrame::request`], [`RawFrame::reply`]) is a
//! second step whose errors are recoverable: the caller already knows how many bytes the
//! frame took, skips them, and answers with an error reply.

use crate::error::ProtocolError;
use crate::FRAME_BYTES_MAX;

/// Bytes of the fixed header, length field included.
pub const HEADER_BYTES: usize = 16;
/// Bytes of the length field, which does not count itself.
pub const LENGTH_FIELD_BYTES: usize = 4;

/// Header flag of a `Batch`: a 16-byte idempotency key follows the batch's fixed fields.
pub const FLAG_IDEMPOTENCY_KEY: u8 = 1 << 0;

/// The kinds of message. Requests have odd codes, their replies the next even code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum MessageType {
    /// Client → server, first frame on every connection.
    Hello = 0x01,
    /// Server → client, answer to `Hello`: version and shard map.
    HelloReply = 0x02,
    /// Client → server, liveness check, empty body.
    Ping = 0x03,
    /// Server → client, answer to `Ping`, empty body.
    Pong = 0x04,
    /// Client → server, up to `BATCH_OPS_MAX` operations.
    Batch = 0x05,
    /// Server → client, one result per operation.
    BatchReply = 0x06,
    /// Client → server, asks for server statistics, empty body.
    Stats = 0x07,
    /// Server → client, statistics as name/value pairs.
    StatsReply = 0x08,
    /// Server → client, the whole request was refused.
    Error = 0xFF,
}

impl MessageType {
    /// The message type with wire code `code`.
    pub fn from_u8(code: u8) -> Result<Self, ProtocolError> {
        Ok(match code {
            0x01 => MessageType::Hello,
            0x02 => MessageType::HelloReply,
            0x03 => MessageType::Ping,
            0x04 => MessageType::Pong,
            0x05 => MessageType::Batch,
            0x06 => MessageType::BatchReply,
            0x07 => MessageType::Stats,
            0x08 => MessageType::StatsReply,
            0xFF => MessageType::Error,
            other => return Err(ProtocolError::UnknownMessageType(other)),
        })
    }

    /// Whether clients send this type (servers send the others).
    pub fn is_request(self) -> bool {
        matches!(
            self,
            MessageType::Hello | MessageType::Ping | MessageType::Batch | MessageType::Stats
        )
    }
}

/// A whole frame, delimited but with its body not yet decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// The message type byte as received (maybe unknown).
    pub message_type: u8,
    /// The header flags as received.
    pub flags: u8,
    /// The reserved header field as received (must be 0 to decode).
    pub reserved: u16,
    /// The request id; replies echo it.
    pub request_id: u64,
    /// The body, borrowed from the input.
    pub body: &'a [u8],
}

/// Delimits one frame at the start of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole frame (read more and call again),
/// `Ok(Some((frame, consumed)))` with the number of bytes the frame took, or a fatal error
/// if the length field is out of range.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(RawFrame<'_>, usize)>, ProtocolError> {
    let Some(length_bytes) = buf.get(..LENGTH_FIELD_BYTES) else {
        return Ok(None);
    };
    let length = u32::from_le_bytes([
        length_bytes[0],
        length_bytes[1],
        length_bytes[2],
        length_bytes[3],
    ]);
    check_length(length)?;
    let frame_bytes = LENGTH_FIELD_BYTES + length as usize;
    let Some(frame) = buf.get(..frame_bytes) else {
        return Ok(None);
    };
    let raw = RawFrame {
        message_type: frame[4],
        flags: frame[5],
        reserved: u16::from_le_bytes([frame[6], frame[7]]),
        request_id: u64::from_le_bytes(
            frame[8..16]
                .try_into()
                .expect("8-byte slice of a checked frame"),
        ),
        body: &frame[HEADER_BYTES..],
    };
    Ok(Some((raw, frame_bytes)))
}

/// Checks a frame's length field; both failures are fatal.
fn check_length(length: u32) -> Result<(), ProtocolError> {
    let frame_bytes = LENGTH_FIELD_BYTES as u64 + u64::from(length);
    if frame_bytes > FRAME_BYTES_MAX as u64 {
        return Err(ProtocolError::FrameTooLarge {
            frame_bytes,
            max: FRAME_BYTES_MAX,
        });
    }
    if (length as usize) < HEADER_BYTES - LENGTH_FIELD_BYTES {
        return Err(ProtocolError::FrameTooShort {
            length,
            min: HEADER_BYTES - LENGTH_FIELD_BYTES,
        });
    }
    Ok(())
}

/// The size a buffered frame will have once whole, read from its first 4 bytes: lets a
/// reader size its buffer. `Ok(None)` if fewer than 4 bytes are buffered.
pub fn frame_bytes_needed(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(length_bytes) = buf.get(..LENGTH_FIELD_BYTES) else {
        return Ok(None);
    };
    let length = u32::from_le_bytes([
        length_bytes[0],
        length_bytes[1],
        length_bytes[2],
        length_bytes[3],
    ]);
    check_length(length)?;
    Ok(Some(LENGTH_FIELD_BYTES + length as usize))
}

/// Appends a header with a placeholder length; returns where the frame starts, to be
/// passed to [`finish_frame`] once the body is appended.
pub(crate) fn begin_frame(
    out: &mut Vec<u8>,
    message_type: MessageType,
    flags: u8,
    request_id: u64,
) -> usize {
    let start = out.len();
    // One append of the whole header: five appends of its fields cost a capacity check
    // each, and a reply frame is begun for every request.
    let mut header = [0u8; HEADER_BYTES];
    header[4] = message_type as u8;
    header[5] = flags;
    header[8..16].copy_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&header);
    start
}

/// Patches the length of the frame that starts at `start`. If the frame is over
/// [`FRAME_BYTES_MAX`], removes it from `out` and fails.
pub(crate) fn finish_frame(out: &mut Vec<u8>, start: usize) -> Result<(), ProtocolError> {
    let frame_bytes = out.len() - start;
    debug_assert!(frame_bytes >= HEADER_BYTES);
    if frame_bytes > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(ProtocolError::FrameTooLarge {
            frame_bytes: frame_bytes as u64,
            max: FRAME_BYTES_MAX,
        });
    }
    let length = u32::try_from(frame_bytes - LENGTH_FIELD_BYTES)
        .expect("frame size checked against FRAME_BYTES_MAX");
    out[start..start + LENGTH_FIELD_BYTES].copy_from_slice(&length.to_le_bytes());
    Ok(())
}

/// Appends a frame with an empty body (`Ping`, `Pong`, `Stats`).
pub(crate) fn encode_empty(out: &mut Vec<u8>, message_type: MessageType, request_id: u64) {
    let start = begin_frame(out, message_type, 0, request_id);
    finish_frame(out, start).expect("an empty frame is far below the limit");
}
