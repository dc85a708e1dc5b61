//! Operations on counters and their outcomes.
//!
//! An [`Op`] names one key and what to do to it; applying it yields an [`Outcome`] or an
//! [`OpError`]. Failed operations never change state: the value after a rejected operation
//! is the value before it.

use crate::error::OpError;

/// What an addition does when it would cross a counter's floor or ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum BoundPolicy {
    /// Reject the operation and leave the value unchanged (the default).
    #[default]
    Reject = 0,
    /// Apply as much of the delta as the bound allows; the outcome reports `clamped`.
    Clamp = 1,
}

/// Which bound of a counter [`Op::GetBound`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Bound {
    /// The lowest value the counter may take.
    Floor = 0,
    /// The highest value the counter may take.
    Ceiling = 1,
}

/// One operation on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Add `delta` (negative to decrement). Creates the counter at 0 first if missing.
    Add {
        key: &'a [u8],
        delta: i64,
        policy: BoundPolicy,
    },
    /// Set the value; creates the counter if missing. A value outside the bounds is
    /// rejected, or clamped if `policy` is [`BoundPolicy::Clamp`].
    Set {
        key: &'a [u8],
        value: i64,
        policy: BoundPolicy,
    },
    /// Read the value; a missing counter reads as 0 with `existed == false`.
    Get { key: &'a [u8] },
    /// Remove the counter and its bounds. Deleting a missing counter is not an error.
    Delete { key: &'a [u8] },
    /// Set or clear the floor and ceiling; creates the counter at 0 if missing. Rejected
    /// with [`OpError::InvalidBounds`] if `floor > ceiling`, or with
    /// [`OpError::OutOfBounds`] if the current value lies outside the new bounds.
    SetBounds {
        key: &'a [u8],
        floor: Option<i64>,
        ceiling: Option<i64>,
    },
    /// Read one bound; never creates the counter. The outcome's `value` is the bound and
    /// its `existed` whether the counter has that bound (value 0 and `existed == false`
    /// when it has none, a missing counter included).
    GetBound { key: &'a [u8], bound: Bound },
}

impl<'a> Op<'a> {
    /// The key this operation touches.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            Op::Add { key, .. }
            | Op::Set { key, .. }
            | Op::Get { key }
            | Op::Delete { key }
            | Op::SetBounds { key, .. }
            | Op::GetBound { key, .. } => key,
        }
    }

    /// Whether applying this operation can change state (and so must be journaled).
    pub fn is_mutation(&self) -> bool {
        !matches!(self, Op::Get { .. } | Op::GetBound { .. })
    }
}

/// The result of a successful operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The counter's value after the operation (for `Delete`, the value it had).
    pub value: i64,
    /// Whether the counter existed before the operation; for [`Op::GetBound`], whether
    /// the counter has the bound read.
    pub existed: bool,
    /// Whether a bound limited the operation (only with [`BoundPolicy::Clamp`]).
    pub clamped: bool,
}

/// One result per operation of a batch, in the batch's order.
pub type OpResult = Result<Outcome, OpError>;

/// Empties a vector of operations and gives its allocation a new lifetime, so one
/// allocation serves every batch although each batch borrows different keys.
pub fn recycle_ops<'a>(mut ops: Vec<Op<'_>>) -> Vec<Op<'a>> {
    ops.clear();
    // In-place collection: same element layout, so the allocation is reused. `filter`
    // cannot change the lifetime, hence `filter_map`.
    #[allow(clippy::unnecessary_filter_map)]
    let recycled = ops.into_iter().filter_map(|_| None).collect();
    recycled
}
