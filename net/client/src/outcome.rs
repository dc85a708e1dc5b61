//! What one operation returns: an [`Outcome`] or a [`Rejection`].
//!
//! A rejection is the server saying "no" to one operation (a bound, an overflow, an
//! invalid key); the counter is unchanged and the other operations of the batch are not
//! affected. The one exception is [`Status::Unavailable`] with detail 0: the server
//! applied the operation in memory but could not make it durable, so whether it counts
//! after a restart is unknown ([`Rejection::is_outcome_unknown`]); a single-operation call
//! reports it as [`crate::ClientError::OutcomeUnknown`]. `Unavailable` with detail 1
//! ([`UNAVAILABLE_NOT_APPLIED`]) is a refusal before the operation was applied (the
//! journal is degraded or failed): nothing changed, and the operation may be sent again
//! later ([`Rejection::is_not_applied`]); a single-operation call reports it as
//! [`crate::ClientError::NotApplied`]. A rejection is distinct from
//! [`crate::ClientError`], which is about the call failing.

use tally_protocol::{Bound, Op, OpReply, Status};

/// The result of an applied operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Outcome {
    /// The counter's value after the operation (for delete: the value it had; for exists:
    /// 1 or 0; for a bound read, [`Op::GetBound`]: the bound, 0 if there is none).
    pub value: i64,
    /// Whether the counter existed before the operation; for a bound read, whether the
    /// counter has that bound.
    pub existed: bool,
    /// Whether a bound limited the operation (clamp policy).
    pub clamped: bool,
}

/// A counter's floor and ceiling, as [`crate::Client::get_bounds`] reads them; `None` is
/// no bound on that side (a missing counter has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// The lowest value the counter may take.
    pub floor: Option<i64>,
    /// The highest value the counter may take.
    pub ceiling: Option<i64>,
}

impl Bounds {
    /// The two reads that make up a bounds read, floor then ceiling: one batch, so both
    /// go to the key's core in one frame and are answered from the same state.
    pub(crate) fn ops(key: &[u8]) -> [Op<&[u8]>; 2] {
        [
            Op::GetBound {
                key,
                bound: Bound::Floor,
            },
            Op::GetBound {
                key,
                bound: Bound::Ceiling,
            },
        ]
    }

    /// The bounds from the results of [`Bounds::ops`]; the first refusal if either was
    /// refused.
    pub(crate) fn from_results(results: &[OpResult]) -> Result<Bounds, Rejection> {
        let [floor, ceiling] = results else {
            panic!("one result per operation: {} for 2", results.len());
        };
        let read =
            |result: &OpResult| result.map(|outcome| outcome.existed.then_some(outcome.value));
        Ok(Bounds {
            floor: read(floor)?,
            ceiling: read(ceiling)?,
        })
    }
}

/// The detail of a [`Status::Unavailable`] result refused before it was applied (the
/// journal degraded or failed): nothing changed. Detail 0 is "outcome unknown".
pub const UNAVAILABLE_NOT_APPLIED: i64 = 1;

/// An operation the server refused; nothing changed, unless the status is
/// [`Status::Unavailable`] with a detail other than [`UNAVAILABLE_NOT_APPLIED`] (see
/// [`Rejection::is_outcome_unknown`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}", describe(*status, *detail))]
pub struct Rejection {
    /// Why (never [`Status::Ok`]).
    pub status: Status,
    /// The detail the status names (the floor, the ceiling, the current value, ...).
    pub detail: i64,
}

impl Rejection {
    /// Whether the operation may have been applied after all: `Unavailable` (other than
    /// with detail [`UNAVAILABLE_NOT_APPLIED`]) means it was applied in memory and its
    /// journal record may or may not have reached the disk (`net/PROTOCOL.md`). Every
    /// other status means the counter is unchanged. In a batch sent with an idempotency
    /// key, send the batch again with the same key: the server then runs only the
    /// operations that were `Unavailable`.
    pub fn is_outcome_unknown(&self) -> bool {
        self.status == Status::Unavailable && !self.is_not_applied()
    }

    /// Whether the server refused the operation before applying it for a reason that
    /// passes (`Unavailable` with detail [`UNAVAILABLE_NOT_APPLIED`]: its journal is
    /// degraded or failed): nothing changed, and sending it again later may succeed (in a
    /// batch with an idempotency key, send the whole batch again with the same key).
    pub fn is_not_applied(&self) -> bool {
        self.status == Status::Unavailable && self.detail == UNAVAILABLE_NOT_APPLIED
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
        Status::Unavailable if detail == UNAVAILABLE_NOT_APPLIED => {
            "unavailable: the server's journal cannot take mutations now (not applied)".to_owned()
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

/// What became of one operation of a batch that was applied in part
/// ([`crate::ClientError::PartlyApplied`]): a batch goes out as several requests (one per
/// core, at most `BATCH_OPS_MAX` operations each), and some were answered while others
/// failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialResult {
    /// Its request was answered: this is the operation's own result, as a successful
    /// batch would have returned it (applied, or refused alone: see [`Rejection`]).
    Answered(OpResult),
    /// Not applied: its request was refused as a whole before any of it was applied, or
    /// was never sent (or it reads, which changes nothing). Send it again.
    NotApplied,
    /// It changes a counter and its request was sent without an answer: it may or may
    /// not have been applied. Sending it again may count it twice.
    Unknown,
}

/// The per-operation results of a batch applied in part: `answered[i]` where a request
/// answered operation `i`, else [`PartialResult::Unknown`] where `unknown[i]`, else
/// [`PartialResult::NotApplied`].
pub(crate) fn partial_results(
    answered: Vec<Option<OpResult>>,
    unknown: &[bool],
) -> Vec<PartialResult> {
    debug_assert_eq!(answered.len(), unknown.len());
    answered
        .into_iter()
        .zip(unknown)
        .map(|(result, &unknown)| match result {
            Some(result) => PartialResult::Answered(result),
            None if unknown => PartialResult::Unknown,
            None => PartialResult::NotApplied,
        })
        .collect()
}

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

#[cfg(test)]
mod tests {
    use tally_protocol::{decode_reply, encode_batch_reply, OpReply, Reply, Status};

    use super::{from_reply, OpResult, Rejection, UNAVAILABLE_NOT_APPLIED};
    use crate::ClientError;

    /// Encodes one `Unavailable` result with `detail`, decodes the reply as the client
    /// does, and returns the result and the error a single-operation call ends with.
    fn unavailable(detail: i64) -> (OpResult, ClientError) {
        let wire = OpReply {
            status: Status::Unavailable,
            existed: false,
            clamped: false,
            value: detail,
        };
        let mut frame = Vec::new();
        encode_batch_reply(&mut frame, 7, &[wire]).expect("one result fits a frame");
        let decoded = decode_reply(&frame)
            .expect("a well-formed frame")
            .expect("a whole frame");
        let Ok(Reply::BatchReply(reply)) = decoded.reply else {
            panic!("a batch reply");
        };
        let result = from_reply(reply.results().next().expect("one result"));
        let rejection: Rejection = result.expect_err("Unavailable is a rejection");
        (result, ClientError::from(rejection))
    }

    #[test]
    fn unavailable_detail_1_is_not_applied() {
        let (result, error) = unavailable(UNAVAILABLE_NOT_APPLIED);
        let rejection = result.expect_err("a rejection");
        assert!(rejection.is_not_applied());
        assert!(!rejection.is_outcome_unknown());
        assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
        assert!(error.is_transient());
        assert!(error.to_string().contains("not applied"), "{error}");
    }

    #[test]
    fn unavailable_detail_0_is_outcome_unknown() {
        let (result, error) = unavailable(0);
        let rejection = result.expect_err("a rejection");
        assert!(rejection.is_outcome_unknown());
        assert!(!rejection.is_not_applied());
        assert!(
            matches!(error, ClientError::OutcomeUnknown { .. }),
            "{error:?}"
        );
        assert!(!error.is_transient());
    }

    /// A bound read's `existed` says whether the bound is set: set bounds come back as
    /// `Some`, absent ones (value 0 on the wire) as `None`, and a refused read is the
    /// refusal, not "no bound".
    #[test]
    fn bounds_come_from_the_existed_bit_of_each_read() {
        let read = |value, existed| from_reply(OpReply::ok(value, existed, false));
        let both = [read(-2, true), read(9, true)];
        assert_eq!(
            super::Bounds::from_results(&both),
            Ok(super::Bounds {
                floor: Some(-2),
                ceiling: Some(9)
            })
        );
        let floor_zero = [read(0, true), read(0, false)];
        assert_eq!(
            super::Bounds::from_results(&floor_zero),
            Ok(super::Bounds {
                floor: Some(0),
                ceiling: None
            })
        );
        let refused = [
            read(0, false),
            from_reply(OpReply::error(Status::InvalidKey, 0)),
        ];
        let rejection = super::Bounds::from_results(&refused).expect_err("refused");
        assert_eq!(rejection.status, Status::InvalidKey);
    }
}
