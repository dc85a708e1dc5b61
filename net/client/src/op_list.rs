//! The queue both pipelines fill: owned operations plus the first one that could not be queued.
//!
//! [`crate::Pipeline`] and [`crate::AsyncPipeline`] differ only in how they send, so they share
//! this queue and, through [`op_builder_methods!`], the same documented builder methods.
//! Invariant: [`OpList::take`] leaves the list empty, whether it returns operations or an error.

use tally_protocol::{BoundPolicy, Op};

use crate::blocking::negate;
use crate::error::ClientError;

/// Operations queued by a pipeline, not yet sent.
#[derive(Debug, Default)]
pub(crate) struct OpList {
    ops: Vec<Op>,
    /// The first operation that could not be queued; reported by `take`.
    invalid: Option<ClientError>,
}

impl OpList {
    /// Queues a copy of `op`.
    pub(crate) fn push<K: AsRef<[u8]>>(&mut self, op: &Op<K>) {
        self.ops.push(op.to_owned_op());
    }

    /// Queues a subtraction, or remembers why `delta` cannot be negated.
    pub(crate) fn push_subtraction(&mut self, key: &[u8], delta: i64) {
        match negate(delta) {
            Ok(delta) => self.push(&Op::Add {
                key,
                delta,
                policy: BoundPolicy::Reject,
            }),
            Err(error) => {
                self.invalid.get_or_insert(error);
            }
        }
    }

    /// Operations queued.
    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    /// Empties the list and returns its operations, or the first queuing error.
    pub(crate) fn take(&mut self) -> Result<Vec<Op>, ClientError> {
        let ops = std::mem::take(&mut self.ops);
        match self.invalid.take() {
            Some(error) => Err(error),
            None => Ok(ops),
        }
    }
}

/// Writes the builder methods shared by both pipelines into an `impl` block whose type has an
/// `ops: OpList` field and an `execute` method.
macro_rules! op_builder_methods {
    () => {
        /// Queues any operation.
        pub fn push<K: AsRef<[u8]>>(&mut self, op: &Op<K>) -> &mut Self {
            self.ops.push(op);
            self
        }

        /// Queues an addition.
        pub fn incr(&mut self, key: impl AsRef<[u8]>, delta: i64) -> &mut Self {
            self.push(&Op::Add {
                key: key.as_ref(),
                delta,
                policy: BoundPolicy::Reject,
            })
        }

        /// Queues a subtraction. `delta` must be above `i64::MIN` (whose negation does not
        /// exist); otherwise [`Self::execute`] fails without sending anything.
        pub fn decr(&mut self, key: impl AsRef<[u8]>, delta: i64) -> &mut Self {
            self.ops.push_subtraction(key.as_ref(), delta);
            self
        }

        /// Queues a read.
        pub fn get(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
            self.push(&Op::Get { key: key.as_ref() })
        }

        /// Queues a set.
        pub fn set(&mut self, key: impl AsRef<[u8]>, value: i64) -> &mut Self {
            self.push(&Op::Set {
                key: key.as_ref(),
                value,
                policy: BoundPolicy::Reject,
            })
        }

        /// Queues a delete.
        pub fn del(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
            self.push(&Op::Delete { key: key.as_ref() })
        }

        /// Queues an existence check.
        pub fn exists(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
            self.push(&Op::Exists { key: key.as_ref() })
        }

        /// Queues setting the bounds.
        pub fn set_bounds(
            &mut self,
            key: impl AsRef<[u8]>,
            floor: Option<i64>,
            ceiling: Option<i64>,
        ) -> &mut Self {
            self.push(&Op::SetBounds {
                key: key.as_ref(),
                floor,
                ceiling,
            })
        }

        /// Queues a read of one bound: its [`Outcome`](crate::Outcome) has the bound in
        /// `value` and whether the counter has it in `existed`.
        pub fn get_bound(&mut self, key: impl AsRef<[u8]>, bound: $crate::Bound) -> &mut Self {
            self.push(&Op::GetBound {
                key: key.as_ref(),
                bound,
            })
        }

        /// Operations queued.
        pub fn len(&self) -> usize {
            self.ops.len()
        }

        /// Whether nothing is queued.
        pub fn is_empty(&self) -> bool {
            self.ops.len() == 0
        }
    };
}
pub(crate) use op_builder_methods;
