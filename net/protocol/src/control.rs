//! Control messages: `Ping`/`Pong`, `Stats`/`StatsReply`, and the `Error` reply.
//!
//! `Ping`, `Pong` and `Stats` have an empty body and header flags 0.
//!
//! `StatsReply` body (header flags 0):
//!
//! ```text
//! offset size field
//!      0    2 entry_count  u16 LE, at most STATS_ENTRIES_MAX
//!      2  ... entries      per entry: name_length u8, name (UTF-8), value u64 LE
//! ```
//!
//! `Error` body (header flags 0), echoing the request id of the refused request (0 if the
//! request id could not be read):
//!
//! ```text
//! offset size field
//!      0    2 code            u16 LE, ErrorCode
//!      2    2 message_length  u16 LE, at most ERROR_MESSAGE_BYTES_MAX
//!      4    n message         UTF-8, for people
//! ```

use crate::cursor::{put_long_str, put_short_str, Cursor};
use crate::error::ProtocolError;
use crate::frame::{begin_frame, encode_empty, finish_frame, MessageType};
use crate::status::ErrorCode;

/// The longest error message, in bytes.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;
/// The most entries a stats reply may carry.
pub const STATS_ENTRIES_MAX: usize = 1024;

/// Appends a `Ping` frame.
pub fn encode_ping(out: &mut Vec<u8>, request_id: u64) {
    encode_empty(out, MessageType::Ping, request_id);
}

/// Appends a `Pong` frame.
pub fn encode_pong(out: &mut Vec<u8>, request_id: u64) {
    encode_empty(out, MessageType::Pong, request_id);
}

/// Appends a `Stats` request frame.
pub fn encode_stats(out: &mut Vec<u8>, request_id: u64) {
    encode_empty(out, MessageType::Stats, request_id);
}

/// A request refused as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorReply<'a> {
    /// Why, for programs.
    pub code: ErrorCode,
    /// Why, for people.
    pub message: &'a str,
}

impl<'a> ErrorReply<'a> {
    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut cursor = Cursor::new(body);
        let code = ErrorCode::from_u16(cursor.u16("error code")?);
        let message = cursor.long_str("error message", ERROR_MESSAGE_BYTES_MAX)?;
        cursor.finish()?;
        Ok(ErrorReply { code, message })
    }
}

/// Appends an `Error` frame. A message over [`ERROR_MESSAGE_BYTES_MAX`] bytes is cut at a
/// character boundary rather than refused, so an error can always be reported.
pub fn encode_error(out: &mut Vec<u8>, request_id: u64, code: ErrorCode, message: &str) {
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let start = begin_frame(out, MessageType::Error, 0, request_id);
    out.extend_from_slice(&code.to_u16().to_le_bytes());
    put_long_str(
        out,
        &message[..end],
        "error message",
        ERROR_MESSAGE_BYTES_MAX,
    )
    .expect("message was cut to the limit");
    finish_frame(out, start).expect("an error frame is far below the frame limit");
}

/// Server statistics as name/value pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsReply {
    /// Entries in the server's order; names are at most 255 bytes.
    pub entries: Vec<(String, u64)>,
}

impl StatsReply {
    /// Appends a `StatsReply` frame; fails on too many entries or a name over 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>, request_id: u64) -> Result<(), ProtocolError> {
        if self.entries.len() > STATS_ENTRIES_MAX {
            return Err(ProtocolError::StringTooLong {
                what: "stats entry list",
                length: self.entries.len(),
                max: STATS_ENTRIES_MAX,
            });
        }
        let start = begin_frame(out, MessageType::StatsReply, 0, request_id);
        out.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for (name, value) in &self.entries {
            if let Err(error) = put_short_str(out, name, "stats name") {
                out.truncate(start);
                return Err(error);
            }
            out.extend_from_slice(&value.to_le_bytes());
        }
        finish_frame(out, start)
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut cursor = Cursor::new(body);
        let entry_count = usize::from(cursor.u16("stats entry count")?);
        if entry_count > STATS_ENTRIES_MAX {
            return Err(ProtocolError::StringTooLong {
                what: "stats entry list",
                length: entry_count,
                max: STATS_ENTRIES_MAX,
            });
        }
        let mut entries = Vec::with_capacity(entry_count);
        for _ in 0..entry_count {
            let name = cursor.short_str("stats name")?;
            let value = cursor.u64("stats value")?;
            entries.push((name.to_owned(), value));
        }
        cursor.finish()?;
        Ok(StatsReply { entries })
    }
}
