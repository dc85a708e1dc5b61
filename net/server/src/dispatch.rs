//! Routing a list of engine operations to their owning cores and collecting one result
//! per operation, in order: the split / forward / apply / gather path, for doors that
//! turn their requests into plain [`Op`]s (the Redis door, `resp.rs`).
//!
//! The steps are those of the native connection (`connection.rs`): each operation's key
//! is hashed to its owner core; foreign operations are copied into one [`ForwardBatch`]
//! per owner and sent over the request mesh first, so the other cores work while this
//! one applies its own share with one [`Core::apply_local`] call; then the remote
//! results are awaited and merged back into the operations' order.
//!
//! Invariants: per-key order holds (all operations on a key go to its one owner, in list
//! order, through a FIFO mesh channel or inline); every sub-batch sent is awaited before
//! [`Dispatch::apply`] returns, so its pooled buffers always come back; a list longer
//! than [`BATCH_OPS_MAX`] is applied in consecutive chunks of at most that many.
//!
//! Durability: operations are journaled with the server's default durability
//! (`durability_default`). For `durable`, [`Dispatch::apply`] returns only once every
//! mutation is on disk: a peer core holds its reply until its journal has the records,
//! and this core waits for its own records' LSN. A mutation whose core's journal failed
//! gets no result (`None`), like one whose core could not be reached.
//!
//! No allocation in the steady state: every vector is kept across calls.

use tally_engine::journal::Durability;
use tally_engine::{Op, OpError, OpResult, BATCH_OPS_MAX};

use crate::config::DurabilityMode;
use crate::core::{recycle_ops, Applied, Core, Journaling};
use crate::router::{ForwardBatch, MeshReply, MeshRequest, ReplyWait};

/// `owners` entry of an operation whose key is invalid (its error is in `invalid`).
const OWNER_INVALID: u16 = u16::MAX;

const _: () = assert!(crate::config::CORES_MAX < OWNER_INVALID as usize);
// An operation's index in its chunk travels as u16 in a forwarded batch.
const _: () = assert!(BATCH_OPS_MAX <= u16::MAX as usize);

/// The result of one routed operation: `None` if its owner core could not be reached
/// (the mesh is closed because the server is shutting down) or, for a mutation, if that
/// core's journal failed.
pub type RoutedResult = Option<OpResult>;

/// Per-connection scratch for routing operations; create one per connection.
pub struct Dispatch {
    owners: Vec<u16>,
    invalid: Vec<OpError>,
    local_ops: Vec<Op<'static>>,
    local_results: Vec<OpResult>,
    outgoing: Vec<Option<ForwardBatch>>,
    waits: Vec<Option<ReplyWait>>,
    /// Per core: a sub-batch's buffers, its results, and whether its journal failed.
    returned: Vec<Option<(ForwardBatch, Vec<OpResult>, bool)>>,
    cursors: Vec<usize>,
}

impl Dispatch {
    /// Scratch for a server of `cores` cores.
    pub fn new(cores: usize) -> Dispatch {
        assert!(cores > 0 && cores <= crate::config::CORES_MAX);
        Dispatch {
            owners: Vec::new(),
            invalid: Vec::new(),
            local_ops: Vec::new(),
            local_results: Vec::new(),
            outgoing: (0..cores).map(|_| None).collect(),
            waits: (0..cores).map(|_| None).collect(),
            returned: (0..cores).map(|_| None).collect(),
            cursors: vec![0; cores],
        }
    }

    /// Applies `ops` on their owner cores; appends one result per operation, in order,
    /// to `results`.
    pub async fn apply(&mut self, core: &Core, ops: &[Op<'_>], results: &mut Vec<RoutedResult>) {
        let start = results.len();
        for chunk in ops.chunks(BATCH_OPS_MAX) {
            self.apply_chunk(core, chunk, results).await;
        }
        assert_eq!(results.len() - start, ops.len(), "one result per operation");
    }

    async fn apply_chunk(&mut self, core: &Core, ops: &[Op<'_>], results: &mut Vec<RoutedResult>) {
        debug_assert!(ops.len() <= BATCH_OPS_MAX);
        let durability = match core.config.durability_default {
            DurabilityMode::Durable => Durability::Durable,
            DurabilityMode::Relaxed => Durability::Relaxed,
        };
        let mut local_ops = recycle_ops(std::mem::take(&mut self.local_ops));
        for (index, op) in ops.iter().enumerate() {
            if let Err(error) = tally_engine::validate_key(op.key()) {
                self.owners.push(OWNER_INVALID);
                self.invalid.push(error);
                continue;
            }
            let owner = core.owner_of_key(op.key());
            self.owners.push(owner as u16);
            if owner == core.index {
                local_ops.push(*op);
            } else {
                self.outgoing[owner]
                    .get_or_insert_with(|| core.pool.borrow_mut().batch())
                    .push(op, index as u16);
            }
        }
        // Send first, so the other cores work while this one applies its own share.
        self.send_outgoing(core, durability).await;
        let mut applied = Applied::default();
        if !local_ops.is_empty() {
            let journaling = Journaling {
                durability,
                idempotency: None,
            };
            applied = core.apply_local(&local_ops, &mut self.local_results, journaling);
        }
        self.local_ops = recycle_ops(local_ops);
        self.await_remotes().await;
        let durable_wanted = durability == Durability::Durable && applied.lsn > 0;
        if durable_wanted && core.journal.wait_durable(applied.lsn).await.is_err() {
            applied.unavailable = true;
        }
        self.merge(core, ops, applied.unavailable, results);
        for slot in &mut self.returned {
            if let Some((batch, remote_results, _)) = slot.take() {
                core.pool.borrow_mut().give_back(batch, remote_results);
            }
        }
        self.owners.clear();
        self.invalid.clear();
        self.local_results.clear();
    }

    /// Sends every sub-batch built for another core, keeping a wait per owner.
    async fn send_outgoing(&mut self, core: &Core, durability: Durability) {
        for owner in 0..core.cores {
            let Some(batch) = self.outgoing[owner].take() else {
                continue;
            };
            let forwarded = batch.len() as u64;
            let results = core.pool.borrow_mut().results();
            let ticket = core.replies.reserve();
            let request = MeshRequest::Apply {
                origin: core.index,
                ticket,
                batch,
                results,
                durability,
                idempotency: None,
            };
            match core.requests_out.send_to(owner, request).await {
                Ok(()) => self.waits[owner] = Some(core.replies.wait(ticket)),
                Err(_) => core.replies.cancel(ticket),
            }
            core.stats
                .ops_forwarded
                .set(core.stats.ops_forwarded.get() + forwarded);
        }
    }

    /// Waits for every sub-batch sent; a missing one leaves its owner's slot empty.
    async fn await_remotes(&mut self) {
        for owner in 0..self.waits.len() {
            let Some(wait) = self.waits[owner].take() else {
                continue;
            };
            match wait.await {
                MeshReply::Applied {
                    batch,
                    results,
                    unavailable,
                    ..
                } => self.returned[owner] = Some((batch, results, unavailable)),
                other => panic!("an apply ticket got another reply: {other:?}"),
            }
        }
    }

    /// Appends the results in the operations' order; a mutation on a core whose journal
    /// failed (`local_unavailable` for this core) gets `None`.
    fn merge(
        &mut self,
        core: &Core,
        ops: &[Op<'_>],
        local_unavailable: bool,
        results: &mut Vec<RoutedResult>,
    ) {
        self.cursors.iter_mut().for_each(|cursor| *cursor = 0);
        let (mut local, mut invalid) = (0, 0);
        for (&owner, op) in self.owners.iter().zip(ops) {
            let mutation = op.is_mutation();
            let result = if owner == OWNER_INVALID {
                invalid += 1;
                Some(Err(self.invalid[invalid - 1]))
            } else if usize::from(owner) == core.index {
                local += 1;
                let lost = mutation && local_unavailable;
                (!lost).then(|| self.local_results[local - 1])
            } else {
                let owner = usize::from(owner);
                let cursor = self.cursors[owner];
                self.cursors[owner] += 1;
                self.returned[owner]
                    .as_ref()
                    .filter(|(_, _, unavailable)| !(mutation && *unavailable))
                    .map(|(_, remote_results, _)| remote_results[cursor])
            };
            results.push(result);
        }
        assert_eq!(local, self.local_results.len(), "every local result used");
        assert_eq!(invalid, self.invalid.len(), "every key error used");
    }
}
