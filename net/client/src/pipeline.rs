//! Collecting many operations and sending them together, without a round trip each.
//!
//! A [`Pipeline`] owns copies of its keys, so it can be filled from short-lived strings;
//! [`Pipeline::execute`] sends everything (split per core, pipelined in frames of at most
//! `ops_per_frame` operations) and returns one result per operation, in order.

use tally_protocol::{BoundPolicy, Durability, Op, BATCH_OPS_MAX};

use crate::blocking::{negate, Client};
use crate::dispatch::run_batch;
use crate::error::ClientError;
use crate::outcome::OpResult;

/// Operations waiting to be sent by [`Pipeline::execute`].
#[derive(Debug)]
pub struct Pipeline<'c> {
    client: &'c mut Client,
    ops: Vec<Op>,
    durability: Durability,
    ops_per_frame: usize,
    /// The first operation that could not be queued; reported by `execute`.
    invalid: Option<ClientError>,
}

impl<'c> Pipeline<'c> {
    pub(crate) fn new(client: &'c mut Client) -> Self {
        let durability = client.config().durability;
        Pipeline {
            client,
            ops: Vec::new(),
            durability,
            ops_per_frame: BATCH_OPS_MAX,
            invalid: None,
        }
    }

    /// Sets the durability of the whole pipeline.
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.durability = durability;
        self
    }

    /// Sends at most `ops_per_frame` operations per frame (1: one request per operation).
    pub fn ops_per_frame(&mut self, ops_per_frame: usize) -> &mut Self {
        self.ops_per_frame = ops_per_frame.clamp(1, BATCH_OPS_MAX);
        self
    }

    /// Queues any operation.
    pub fn push<K: AsRef<[u8]>>(&mut self, op: &Op<K>) -> &mut Self {
        self.ops.push(op.to_owned_op());
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
    /// exist); otherwise [`Pipeline::execute`] fails without sending anything.
    pub fn decr(&mut self, key: impl AsRef<[u8]>, delta: i64) -> &mut Self {
        match negate(delta) {
            Ok(delta) => self.push(&Op::Add {
                key: key.as_ref(),
                delta,
                policy: BoundPolicy::Reject,
            }),
            Err(error) => {
                self.invalid.get_or_insert(error);
                self
            }
        }
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

    /// Operations queued.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Sends everything and returns one result per operation, in order.
    pub fn execute(&mut self) -> Result<Vec<OpResult>, ClientError> {
        if let Some(error) = self.invalid.take() {
            self.ops.clear();
            return Err(error);
        }
        let ops = std::mem::take(&mut self.ops);
        run_batch(self.client, &ops, self.durability, self.ops_per_frame)
    }
}
