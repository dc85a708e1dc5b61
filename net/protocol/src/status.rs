//! Result codes: one [`OpReply`] per operation, and [`ErrorCode`] for whole requests.
//!
//! An operation's result is 10 bytes on the wire:
//!
//! ```text
//! offset size field
//!      0    1 status   (Status as u8; 0 = Ok)
//!      1    1 flags    bit 0 = existed, bit 1 = clamped, bits 2..7 must be 0
//!      2    8 value    i64 LE
//! ```
//!
//! With status `Ok`, `value` is the counter's value after the operation (for `Delete`,
//! the value it had; for `Exists`, 1 if the counter exists and 0 otherwise; for
//! `GetBound`, the bound, 0 if the counter has none). `existed` says whether the counter
//! existed before the operation, except for `GetBound`, where it says whether the
//! counter has the bound read (so a missing counter reads as having none). With an
//! error status, `value` carries the detail named on each [`Status`] variant (the floor,
//! the ceiling, the current value, ...) and the flags are 0.

use crate::cursor::Cursor;
use crate::error::ProtocolError;

/// Bytes one [`OpReply`] takes on the wire.
pub const OP_REPLY_BYTES: usize = 10;

const FLAG_EXISTED: u8 = 1 << 0;
const FLAG_CLAMPED: u8 = 1 << 1;

/// The status of one operation in a batch. Failed operations never change state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Status {
    /// Applied; `value` is the result.
    Ok = 0,
    /// The key is empty (the wire cannot carry a longer one); `value` is its length, 0.
    InvalidKey = 1,
    /// The result would leave the i64 range; `value` is 0.
    Overflow = 2,
    /// Rejected: the value would fall below the floor; `value` is the floor.
    BelowFloor = 3,
    /// Rejected: the value would rise above the ceiling; `value` is the ceiling.
    AboveCeiling = 4,
    /// Set-bounds with floor above ceiling; `value` is the floor.
    InvalidBounds = 5,
    /// Set-bounds that the current value violates; `value` is the current value.
    OutOfBounds = 6,
    /// The key holds a counter of another kind; `value` is 0.
    WrongKind = 7,
    /// The key's partition is not owned by the core that received it; `value` is the
    /// partition. Only seen if the ownership table changed since the handshake.
    NotOwned = 8,
    /// The store could not grow; `value` is 0.
    StorageFull = 9,
    /// The operation could not be made durable or served (journal error, shutting down);
    /// its effect is unknown only if it was a mutation sent without an idempotency key.
    Unavailable = 10,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 11] = [
        Status::Ok,
        Status::InvalidKey,
        Status::Overflow,
        Status::BelowFloor,
        Status::AboveCeiling,
        Status::InvalidBounds,
        Status::OutOfBounds,
        Status::WrongKind,
        Status::NotOwned,
        Status::StorageFull,
        Status::Unavailable,
    ];

    /// The status with wire code `code`.
    pub fn from_u8(code: u8) -> Result<Status, ProtocolError> {
        Status::ALL
            .get(usize::from(code))
            .copied()
            .ok_or(ProtocolError::UnknownStatus(code))
    }

    /// A short lower-case name for people and JSON (`"ok"`, `"below_floor"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::InvalidKey => "invalid_key",
            Status::Overflow => "overflow",
            Status::BelowFloor => "below_floor",
            Status::AboveCeiling => "above_ceiling",
            Status::InvalidBounds => "invalid_bounds",
            Status::OutOfBounds => "out_of_bounds",
            Status::WrongKind => "wrong_kind",
            Status::NotOwned => "not_owned",
            Status::StorageFull => "storage_full",
            Status::Unavailable => "unavailable",
        }
    }
}

const _: () = assert!(Status::ALL.len() == Status::Unavailable as usize + 1);

/// The result of one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpReply {
    /// Whether the operation was applied, and if not why.
    pub status: Status,
    /// The value, or for an error the detail its [`Status`] names.
    pub value: i64,
    /// Whether the counter existed before the operation; for a `GetBound`, whether the
    /// counter has the bound it read.
    pub existed: bool,
    /// Whether a bound limited the operation (clamp policy).
    pub clamped: bool,
}

impl OpReply {
    /// A successful result.
    pub fn ok(value: i64, existed: bool, clamped: bool) -> Self {
        OpReply {
            status: Status::Ok,
            value,
            existed,
            clamped,
        }
    }

    /// A failed result with its detail value.
    pub fn error(status: Status, detail: i64) -> Self {
        debug_assert!(status != Status::Ok);
        OpReply {
            status,
            value: detail,
            existed: false,
            clamped: false,
        }
    }

    /// Appends the 10-byte wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let flags = if self.existed { FLAG_EXISTED } else { 0 }
            | if self.clamped { FLAG_CLAMPED } else { 0 };
        // One append: a reply per operation, three capacity checks each otherwise.
        let mut bytes = [0u8; OP_REPLY_BYTES];
        bytes[0] = self.status as u8;
        bytes[1] = flags;
        bytes[2..].copy_from_slice(&self.value.to_le_bytes());
        out.extend_from_slice(&bytes);
    }

    pub(crate) fn decode(cursor: &mut Cursor<'_>) -> Result<OpReply, ProtocolError> {
        let status = Status::from_u8(cursor.u8("result status")?)?;
        let flags = cursor.u8("result flags")?;
        let undefined = flags & !(FLAG_EXISTED | FLAG_CLAMPED);
        if undefined != 0 {
            return Err(ProtocolError::UndefinedBits {
                what: "result flags",
                bits: undefined,
            });
        }
        let value = cursor.i64("result value")?;
        Ok(OpReply {
            status,
            value,
            existed: flags & FLAG_EXISTED != 0,
            clamped: flags & FLAG_CLAMPED != 0,
        })
    }
}

/// Why a whole request was refused (the body of an `Error` reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame's body does not parse (truncated, trailing bytes, bad field).
    MalformedFrame,
    /// The message type is unknown, or not a request.
    UnknownMessageType,
    /// A batch holds an unknown operation code.
    UnknownOperation,
    /// A batch holds more than [`crate::BATCH_OPS_MAX`] operations.
    BatchTooLarge,
    /// The hello's magic or version is not supported; the connection is closed.
    UnsupportedVersion,
    /// The server is overloaded (connection limit, queue full); retry later.
    ServerBusy,
    /// The frame's length exceeds [`crate::FRAME_BYTES_MAX`]; the connection is closed.
    FrameTooLarge,
    /// A request arrived before the hello; the connection is closed.
    HandshakeRequired,
    /// The server is shutting down; the request was not applied.
    ShuttingDown,
    /// The server hit an internal error; the request was not applied.
    Internal,
    /// The client was too slow to send a whole frame; the connection is closed.
    Timeout,
    /// The batch's idempotency key was first used for a batch with other operations;
    /// nothing was applied. Permanent: retrying the same frame gets the same answer.
    IdempotencyKeyReused,
    /// A code this version does not know, kept as received.
    Other(u16),
}

impl ErrorCode {
    /// Known codes and their wire values, in wire order.
    const KNOWN: [(ErrorCode, u16); 12] = [
        (ErrorCode::MalformedFrame, 1),
        (ErrorCode::UnknownMessageType, 2),
        (ErrorCode::UnknownOperation, 3),
        (ErrorCode::BatchTooLarge, 4),
        (ErrorCode::UnsupportedVersion, 5),
        (ErrorCode::ServerBusy, 6),
        (ErrorCode::FrameTooLarge, 7),
        (ErrorCode::HandshakeRequired, 8),
        (ErrorCode::ShuttingDown, 9),
        (ErrorCode::Internal, 10),
        (ErrorCode::Timeout, 11),
        (ErrorCode::IdempotencyKeyReused, 12),
    ];

    /// The wire value.
    pub fn to_u16(self) -> u16 {
        if let ErrorCode::Other(code) = self {
            return code;
        }
        ErrorCode::KNOWN
            .iter()
            .find(|(known, _)| *known == self)
            .map(|(_, code)| *code)
            .expect("every ErrorCode but Other is listed in KNOWN")
    }

    /// The code for wire value `code`; unknown values become [`ErrorCode::Other`].
    pub fn from_u16(code: u16) -> ErrorCode {
        ErrorCode::KNOWN
            .iter()
            .find(|(_, known)| *known == code)
            .map(|(error_code, _)| *error_code)
            .unwrap_or(ErrorCode::Other(code))
    }
}
