//! Collecting many operations and sending them together, without a round trip each.
//!
//! A [`Pipeline`] owns copies of its keys, so it can be filled from short-lived strings;
//! [`Pipeline::execute`] sends everything (split per core, pipelined in frames of at most
//! `ops_per_frame` operations) and returns one result per operation, in order.

use tally_protocol::{BoundPolicy, Durability, Op, BATCH_OPS_MAX};

use crate::blocking::Client;
use crate::dispatch::run_batch;
use crate::error::ClientError;
use crate::op_list::{op_builder_methods, OpList};
use crate::outcome::OpResult;

/// Operations waiting to be sent by [`Pipeline::execute`].
#[derive(Debug)]
pub struct Pipeline<'c> {
    client: &'c mut Client,
    ops: OpList,
    durability: Durability,
    ops_per_frame: usize,
}

impl<'c> Pipeline<'c> {
    pub(crate) fn new(client: &'c mut Client) -> Self {
        let durability = client.config().durability;
        Pipeline {
            client,
            ops: OpList::default(),
            durability,
            ops_per_frame: BATCH_OPS_MAX,
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

    op_builder_methods!();

    /// Sends everything and returns one result per operation, in order.
    pub fn execute(&mut self) -> Result<Vec<OpResult>, ClientError> {
        let ops = self.ops.take()?;
        run_batch(self.client, &ops, self.durability, self.ops_per_frame)
    }
}
