//! Collecting many operations for the async client and sending them together.
//!
//! An [`AsyncPipeline`] owns copies of its keys and a handle to the client, so it can be
//! filled from short-lived strings and moved between tasks; [`AsyncPipeline::execute`]
//! sends everything through [`AsyncClient::batch_with`] (split per core, in frames of at
//! most `BATCH_OPS_MAX` operations) and returns one result per operation, in order.
//! Invariant: after `execute`, the pipeline is empty, whatever the outcome.

use tally_protocol::{BoundPolicy, Durability, Op};

use crate::async_client::AsyncClient;
use crate::error::ClientError;
use crate::op_list::{op_builder_methods, OpList};
use crate::outcome::OpResult;

/// Operations waiting to be sent by [`AsyncPipeline::execute`].
#[derive(Debug)]
pub struct AsyncPipeline {
    client: AsyncClient,
    ops: OpList,
    durability: Durability,
}

impl AsyncPipeline {
    pub(crate) fn new(client: AsyncClient, durability: Durability) -> Self {
        AsyncPipeline {
            client,
            ops: OpList::default(),
            durability,
        }
    }

    /// Sets the durability of the whole pipeline.
    pub fn durability(&mut self, durability: Durability) -> &mut Self {
        self.durability = durability;
        self
    }

    op_builder_methods!();

    /// Sends everything and returns one result per operation, in order.
    pub async fn execute(&mut self) -> Result<Vec<OpResult>, ClientError> {
        let ops = self.ops.take()?;
        self.client.batch_with(&ops, self.durability).await
    }
}
