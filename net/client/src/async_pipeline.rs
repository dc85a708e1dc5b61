//! Collecting many operations for the async client and sending them together.
//!
//! An [`AsyncPipeline`] owns copies of its keys and a handle to the client, so it can be
//! filled from short-lived strings and moved between tasks; [`AsyncPipeline::execute`]
//! sends everything through [`AsyncClient::batch_with`] (split per core, in frames of at
//! most `BATCH_OPS_MAX` operations) and returns one result per operation, in order.
//! Invariant: after `execute`, the pipeline is empty, whatever the outcome.

use tally_protocol::{BoundPolicy, Durability, Op};

use crate::async_client::AsyncClient;
use crate::blocking::negate;
use crate::error::ClientError;
use crate::outcome::OpResult;

/// Operations waiting to be sent by [`AsyncPipeline::execute`].
#[derive(Debug)]
pub struct AsyncPipeline {
    client: AsyncClient,
    ops: Vec<Op>,
    durability: Durability,
    /// The first operation that could not be queued; reported by `execute`.
    invalid: Option<ClientError>,
}

impl AsyncPipeline {
    pub(crate) fn new(client: AsyncClient, durability: Durability) -> Self {
        AsyncPipeline {
            client,
            ops: Vec::new(),
            durability,
            invalid: None,
        }
    }

    /// Sets the durability of the whole pipeline.
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.durability = durability;
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
    /// exist); otherwise [`AsyncPipeline::execute`] fails without sending anything.
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
    pub async fn execute(&mut self) -> Result<Vec<OpResult>, ClientError> {
        let ops = std::mem::take(&mut self.ops);
        if let Some(error) = self.invalid.take() {
            return Err(error);
        }
        self.client.batch_with(&ops, self.durability).await
    }
}
