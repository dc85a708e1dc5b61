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
//! Durability: results are returned once applied to the stores. When the journal is
//! wired in, waiting for the durable acknowledgement of the mutations belongs at the
//! end of [`Dispatch::apply`] (or in `Core::apply_local` and the peer's apply), so that
//! every door using this path holds its replies until durable.
//!
//! No allocation in the steady state: every vector is kept across calls.

use tally_engine::{Op, OpError, OpResult, BATCH_OPS_MAX};

use crate::core::{recycle_ops, Core};
use crate::router::{ForwardBatch, MeshReply, MeshRequest, ReplyWait};

/// `owners` entry of an operation whose key is invalid (its error is in `invalid`).
const OWNER_INVALID: u16 = u16::MAX;

const _: () = assert!(crate::config::CORES_MAX < OWNER_INVALID as usize);

/// The result of one routed operation: `None` if its owner core could not be reached
/// (the mesh is closed because the server is shutting down).
pub type RoutedResult = Option<OpResult>;

/// Per-connection scratch for routing operations; create one per connection.
pub struct Dispatch {
    owners: Vec<u16>,
    invalid: Vec<OpError>,
    local_ops: Vec<Op<'static>>,
    local_results: Vec<OpResult>,
    outgoing: Vec<Option<ForwardBatch>>,
    waits: Vec<Option<ReplyWait>>,
    returned: Vec<Option<(ForwardBatch, Vec<OpResult>)>>,
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
        let mut local_ops = recycle_ops(std::mem::take(&mut self.local_ops));
        for op in ops {
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
                    .push(op);
            }
        }
        // Send first, so the other cores work while this one applies its own share.
        self.send_outgoing(core).await;
        if !local_ops.is_empty() {
            core.apply_local(&local_ops, &mut self.local_results);
        }
        self.local_ops = recycle_ops(local_ops);
        self.await_remotes().await;
        self.merge(core, results);
        for slot in &mut self.returned {
            if let Some((batch, remote_results)) = slot.take() {
                core.pool.borrow_mut().give_back(batch, remote_results);
            }
        }
        self.owners.clear();
        self.invalid.clear();
        self.local_results.clear();
    }

    /// Sends every sub-batch built for another core, keeping a wait per owner.
    async fn send_outgoing(&mut self, core: &Core) {
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
                MeshReply::Applied { batch, results, .. } => {
                    self.returned[owner] = Some((batch, results))
                }
                other => panic!("an apply ticket got another reply: {other:?}"),
            }
        }
    }

    /// Appends the results in the operations' order.
    fn merge(&mut self, core: &Core, results: &mut Vec<RoutedResult>) {
        self.cursors.iter_mut().for_each(|cursor| *cursor = 0);
        let (mut local, mut invalid) = (0, 0);
        for &owner in &self.owners {
            let result = if owner == OWNER_INVALID {
                invalid += 1;
                Some(Err(self.invalid[invalid - 1]))
            } else if usize::from(owner) == core.index {
                local += 1;
                Some(self.local_results[local - 1])
            } else {
                let owner = usize::from(owner);
                let cursor = self.cursors[owner];
                self.cursors[owner] += 1;
                self.returned[owner]
                    .as_ref()
                    .map(|(_, remote_results)| remote_results[cursor])
            };
            results.push(result);
        }
        assert_eq!(local, self.local_results.len(), "every local result used");
        assert_eq!(invalid, self.invalid.len(), "every key error used");
    }
}
