//! What one operation returns: an [`Outcome`] or a [`Rejection`].
//!
//! A rejection is the server saying "no" to one operation (a bound, an overflow, an
//! invalid key); the counter is unchanged and the other operations of the batch are not
//! affected. The one exception is [`Status::Unavailable`]: the server applied the
//! operation in memory but could not make it durable, so whether it counts after a
//! restart is unknown ([`Rejection::is_outcome_unknown`]); a single-operation call reports
//! it as [`crate::ClientError::OutcomeUnknown`]. A rejection is distinct from
//! [`crate::ClientError`], which is about the call failing.

use tally_protocol::{OpReply, Status};

/// The result of an applied operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// The counter's value after the operation (for delete: the value it had; for exists:
    /// 1 or 0).
    pub value: i64,
    /// Whether the counter existed before the operation.
    pub existed: bool,
    /// Whether a bound limited the operation (clamp policy).
    pub clamped: bool,
}

/// An operation the server refused; nothing changed, unless the status is
/// [`Status::Unavailable`] (see [`Rejection::is_outcome_unknown`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}", describe(*status, *detail))]
pub struct Rejection {
    /// Why (never [`Status::Ok`]).
    pub status: Status,
    /// The detail the status names (the floor, the ceiling, the current value, ...).
    pub detail: i64,
}

impl Rejection {
    /// Whether the operation may have been applied after all: `Unavailable` means it was
    /// applied in memory and its journal record may or may not have reached the disk
    /// (`net/PROTOCOL.md`). Every other status means the counter is unchanged.
    pub fn is_outcome_unknown(&self) -> bool {
        self.status == Status::Unavailable
    }
}

fn describe(status: Status, detail: i64) -> String {
    match status {
        Status::InvalidKey => format!("invalid key: length {detail} is outside 1..=255 bytes"),
        Status::Overflow => "overflow: the value would leave the 64-bit signed range".to_owned(),
        Status::BelowFloor => format!("rejected: the value would fall below the floor {detail}"),
        Status::AboveCeiling => {
            format!("rejected: the value would rise above the ceiling {detail}")
        }
        Status::InvalidBounds => format!("invalid bounds: floor {detail} is above the ceiling"),
        Status::OutOfBounds => {
            format!("rejected: the current value {detail} lies outside the new bounds")
        }
        Status::WrongKind => "wrong kind: the key holds a counter of another kind".to_owned(),
        Status::NotOwned => format!("partition {detail} is not owned by the core that was asked"),
        Status::StorageFull => {
            "storage full: the server could not grow its store or make room for this key".to_owned()
        }
        Status::Unavailable => {
            "unavailable: the server could not make the operation durable (outcome unknown)"
                .to_owned()
        }
        other => format!("{} ({detail})", other.name()),
    }
}

/// One operation's result in a batch.
pub type OpResult = Result<Outcome, Rejection>;

/// Converts a wire result into the client's form.
pub(crate) fn from_reply(reply: OpReply) -> OpResult {
    if reply.status == Status::Ok {
        Ok(Outcome {
            value: reply.value,
            existed: reply.existed,
            clamped: reply.clamped,
        })
    } else {
        Err(Rejection {
            status: reply.status,
            detail: reply.value,
        })
    }
}
