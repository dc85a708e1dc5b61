//! Routing a list of engine operations to their owning cores and collecting one result
//! per operation, in order: the one split / forward / apply / gather path that both
//! doors use (native batches in `connection.rs`, Redis commands in `resp.rs`).
//!
//! A list goes through two halves, so that a door can overlap many lists in one turn:
//!
//! 1. [`Dispatch::send`]: each operation's key is hashed to its owner core; foreign
//!    operations are copied into one [`ForwardBatch`] per owner and sent over the
//!    request mesh at once, so the other cores work while this one goes on. Local
//!    operations are *deferred*: copied into the turn's local group, which later lists
//!    with the same durability join. Returns a [`Routed`] ticket.
//! 2. [`Dispatch::collect`]: first applies the pending local group, if the list has
//!    operations in it, with one [`Core::apply_local`] call (one store batch, whose
//!    prefetching then spans every list of the group, and one journal share); then
//!    waits for the list's remote results and, for `durable`, for the LSN of its local
//!    records; then hands one [`RoutedResult`] per operation, in the list's order, to
//!    the caller.
//!
//! A native connection sends every frame of a turn, then collects them all, so the mesh
//! round trips of a pipeline overlap and a pipeline of single increments is applied as
//! one batch; the Redis door sends one list per turn. A list with an idempotency key is
//! not grouped: it is applied at its send, alone, so that its journal records carry
//! its key (the group pending before it is applied first, to keep the order).
//! [`Dispatch::end_turn`] clears the turn's scratch once every ticket is collected.
//!
//! Deferring changes no answer: nothing of the turn is replied before every list is
//! collected, so no client can tell when within the turn an operation was applied.
//!
//! Invariants: lists are collected in the order they were sent (remote waits queue in
//! FIFO order); per-key order holds (all operations on a key go to its one owner, in
//! send order, through a FIFO mesh channel or this core's groups, applied in order);
//! local results are appended in send order, whatever the grouping; every sub-batch
//! sent is awaited by its collect, so its pooled buffers always come back. A list has
//! at most [`BATCH_OPS_MAX`] operations ([`Dispatch::apply`] chunks longer ones), and so
//! has a group.
//!
//! Durability: for `durable` a result is handed out only once its mutation is on disk:
//! a peer core holds its reply until its journal has the records, and this core waits
//! for its own records' LSN. A mutation whose core's journal failed gets no result
//! (`None`), like one whose core could not be reached.
//!
//! No allocation in the steady state: every vector is kept across turns.

use std::collections::VecDeque;
use std::ops::Range;

use tally_engine::journal::{Durability, Lsn};
use tally_engine::{recycle_ops, Op, OpError, OpResult, BATCH_OPS_MAX};

use crate::config::DurabilityMode;
use crate::core::{Applied, Core, Journaling};
use crate::idempotency::IdempotentBatch;
use crate::router::{ForwardBatch, MeshReply, MeshRequest, ReplyWait};

/// Per-operation flag in `meta`: the key is invalid; the result is in `invalid`.
const META_INVALID: u16 = 1 << 8;
/// Per-operation flag in `meta`: the operation is a mutation (journaled; no result if
/// its core's journal failed).
const META_MUTATION: u16 = 1 << 9;
/// The owner core index occupies the low byte of `meta`.
const META_OWNER_MASK: u16 = 0xff;

const _: () = assert!(crate::config::CORES_MAX - 1 <= META_OWNER_MASK as usize);
// An operation's index in its list travels as u16 in a forwarded batch.
const _: () = assert!(BATCH_OPS_MAX <= u16::MAX as usize);

/// The result of one routed operation: `None` if its owner core could not be reached
/// (the mesh is closed because the server is shutting down) or, for a mutation, if that
/// core's journal failed.
pub type RoutedResult = Option<OpResult>;

/// How a list is journaled.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub durability: Durability,
    /// The key and fingerprint of an idempotent batch: every record carries both.
    pub idempotency: Option<IdempotentBatch>,
}

impl Route {
    /// The server's default durability, without an idempotency key (the Redis door).
    pub fn server_default(core: &Core) -> Route {
        let durability = match core.config.durability_default {
            DurabilityMode::Durable => Durability::Durable,
            DurabilityMode::Relaxed => Durability::Relaxed,
        };
        Route {
            durability,
            idempotency: None,
        }
    }
}

/// A list that was sent: what [`Dispatch::collect`] needs to finish it.
#[derive(Debug)]
pub struct Routed {
    meta: Range<usize>,
    local_start: usize,
    invalid_start: usize,
    remote_count: usize,
    /// The local groups holding the list's local operations (indexes into
    /// `Dispatch::groups`; the last may still be pending). Empty if it has none.
    groups: Range<usize>,
    durable: bool,
}

/// A sub-batch sent to another core; `wait` is `None` if the send failed.
struct Remote {
    core: usize,
    wait: Option<ReplyWait>,
}

/// Per-connection scratch for routing operations; create one per connection.
pub struct Dispatch {
    /// Per operation of the turn: owner core and flags.
    meta: Vec<u16>,
    invalid: Vec<OpError>,
    local_ops: Vec<Op<'static>>,
    /// Each local operation's index in its list (idempotency records carry it).
    local_indexes: Vec<u16>,
    /// The pending local group: operations sent but not applied yet, and their
    /// durability (`None` when the group is empty).
    deferred: ForwardBatch,
    deferred_durability: Option<Durability>,
    /// What applying each of the turn's local groups left, in order.
    groups: Vec<Applied>,
    local_results: Vec<OpResult>,
    outgoing: Vec<Option<ForwardBatch>>,
    remotes: VecDeque<Remote>,
    /// Per core: a sub-batch's buffers, its results, and whether its journal failed.
    returned: Vec<Option<(ForwardBatch, Vec<OpResult>, bool)>>,
    cursors: Vec<usize>,
}

impl Dispatch {
    /// Scratch for a server of `cores` cores.
    pub fn new(cores: usize) -> Dispatch {
        assert!(cores > 0 && cores <= crate::config::CORES_MAX);
        Dispatch {
            meta: Vec::new(),
            invalid: Vec::new(),
            local_ops: Vec::new(),
            local_indexes: Vec::new(),
            deferred: ForwardBatch::default(),
            deferred_durability: None,
            groups: Vec::new(),
            local_results: Vec::new(),
            outgoing: (0..cores).map(|_| None).collect(),
            remotes: VecDeque::new(),
            returned: (0..cores).map(|_| None).collect(),
            cursors: vec![0; cores],
        }
    }

    /// Routes `ops` (at most [`BATCH_OPS_MAX`]): sends the foreign ones to their owners
    /// and defers the local ones to the pending group (or, with an idempotency key,
    /// applies them now). Collect the ticket with [`Dispatch::collect`].
    pub async fn send<'a>(
        &mut self,
        core: &Core,
        ops: impl Iterator<Item = Op<'a>>,
        route: Route,
    ) -> Routed {
        let mut routed = self.route(core, ops.enumerate(), route);
        if self.has_outgoing() {
            self.send_outgoing(core, route, &mut routed).await;
        }
        routed
    }

    /// The synchronous part of [`Dispatch::send`]: builds the foreign sub-batches
    /// without sending them; the caller sends them with [`Dispatch::send_outgoing`] if
    /// [`Dispatch::has_outgoing`], before anything else is routed. Lets a door skip
    /// creating and polling a future for a list that stays on this core. Each
    /// operation comes with its index in its batch (ascending, below
    /// [`BATCH_OPS_MAX`]), which idempotency records carry: a resumed batch routes only
    /// some of its operations.
    pub fn route<'a>(
        &mut self,
        core: &Core,
        ops: impl Iterator<Item = (usize, Op<'a>)>,
        route: Route,
    ) -> Routed {
        let grouped = route.idempotency.is_none();
        if !grouped
            || self
                .deferred_durability
                .is_some_and(|d| d != route.durability)
        {
            self.apply_deferred(core);
        }
        let meta_start = self.meta.len();
        let invalid_start = self.invalid.len();
        let local_start = self.local_results.len() + self.deferred.len();
        let mut first_group = None;
        let mut local_ops = recycle_ops(std::mem::take(&mut self.local_ops));
        self.local_indexes.clear();
        for (index, op) in ops {
            assert!(
                index < BATCH_OPS_MAX,
                "a list has at most BATCH_OPS_MAX ops"
            );
            let mutation = if op.is_mutation() { META_MUTATION } else { 0 };
            if let Err(error) = tally_engine::validate_key(op.key()) {
                self.meta.push(META_INVALID | mutation);
                self.invalid.push(error);
                continue;
            }
            let owner = core.owner_of_key(op.key());
            self.meta.push(owner as u16 | mutation);
            let index = index as u16;
            if owner == core.index && grouped {
                if self.deferred.len() == BATCH_OPS_MAX {
                    self.apply_deferred(core);
                }
                first_group.get_or_insert(self.groups.len());
                self.deferred_durability = Some(route.durability);
                self.deferred.push(&op, index);
            } else if owner == core.index {
                local_ops.push(op);
                self.local_indexes.push(index);
            } else {
                self.outgoing[owner]
                    .get_or_insert_with(|| core.pool.borrow_mut().batch())
                    .push(&op, index);
            }
        }
        let mut groups = self.groups.len()..self.groups.len();
        if let Some(first) = first_group {
            // The list's last local operation is in the pending group.
            groups = first..self.groups.len() + 1;
        } else if !local_ops.is_empty() {
            let journaling = Journaling {
                durability: route.durability,
                idempotency: route
                    .idempotency
                    .map(|batch| (batch, &self.local_indexes[..])),
            };
            let applied = core.apply_local(&local_ops, &mut self.local_results, journaling);
            self.groups.push(applied);
            groups = self.groups.len() - 1..self.groups.len();
        }
        self.local_ops = recycle_ops(local_ops);
        Routed {
            meta: meta_start..self.meta.len(),
            local_start,
            invalid_start,
            remote_count: 0,
            groups,
            durable: route.durability == Durability::Durable,
        }
    }

    /// Applies the pending local group, if any, as one batch.
    fn apply_deferred(&mut self, core: &Core) {
        let Some(durability) = self.deferred_durability.take() else {
            return;
        };
        let mut ops = recycle_ops(std::mem::take(&mut self.local_ops));
        self.deferred.ops_into(&mut ops);
        let journaling = Journaling {
            durability,
            idempotency: None,
        };
        let applied = core.apply_local(&ops, &mut self.local_results, journaling);
        self.local_ops = recycle_ops(ops);
        self.deferred.clear();
        self.groups.push(applied);
    }

    /// Whether [`Dispatch::route`] left sub-batches for other cores to send.
    pub fn has_outgoing(&self) -> bool {
        self.outgoing.iter().any(Option::is_some)
    }

    /// Sends every sub-batch [`Dispatch::route`] built for another core, for the list
    /// `routed`, which it routed last.
    pub async fn send_outgoing(&mut self, core: &Core, route: Route, routed: &mut Routed) {
        let mut count = 0;
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
                durability: route.durability,
                idempotency: route.idempotency,
            };
            let wait = match core.requests_out.send_to(owner, request).await {
                Ok(()) => Some(core.replies.wait(ticket)),
                Err(_) => {
                    core.replies.cancel(ticket);
                    None
                }
            };
            core.stats
                .ops_forwarded
                .set(core.stats.ops_forwarded.get() + forwarded);
            self.remotes.push_back(Remote { core: owner, wait });
            count += 1;
        }
        routed.remote_count = count;
    }

    /// Waits for a sent list's results and hands them to `each`, one per operation, in
    /// the list's order. Tickets must be collected in the order they were sent.
    pub async fn collect(
        &mut self,
        core: &Core,
        routed: &Routed,
        mut each: impl FnMut(RoutedResult),
    ) {
        if !self.collect_now(core, routed, &mut each) {
            self.collect_waiting(core, routed, each).await;
        }
    }

    /// The rest of [`Dispatch::collect`] once [`Dispatch::collect_now`] returned false
    /// (the local group is applied): waits for the other cores' results and the durable
    /// LSN, then hands out the results.
    pub async fn collect_waiting(
        &mut self,
        core: &Core,
        routed: &Routed,
        each: impl FnMut(RoutedResult),
    ) {
        debug_assert!(
            routed.groups.end <= self.groups.len(),
            "local group applied"
        );
        for _ in 0..routed.remote_count {
            let remote = self
                .remotes
                .pop_front()
                .expect("one remote per sub-batch sent");
            let Some(wait) = remote.wait else { continue };
            match wait.await {
                MeshReply::Applied {
                    batch,
                    results,
                    unavailable,
                    ..
                } => self.returned[remote.core] = Some((batch, results, unavailable)),
                other => panic!("an apply ticket got another reply: {other:?}"),
            }
        }
        let (mut local_unavailable, durable_lsn) = self.local_state(routed);
        if durable_lsn > 0 && core.journal.wait_durable(durable_lsn).await.is_err() {
            local_unavailable = true;
        }
        self.merge(core, routed, local_unavailable, each);
        for slot in &mut self.returned {
            if let Some((batch, results, _)) = slot.take() {
                core.pool.borrow_mut().give_back(batch, results);
            }
        }
    }

    /// The synchronous part of [`Dispatch::collect`]: applies the pending local group if
    /// `routed` has operations in it, then, if the list has nothing to wait for (no
    /// other core's results, no durable LSN), hands out its results and returns true.
    /// Otherwise returns false having called `each` for nothing: finish with `collect`.
    /// Lets a door skip creating and polling a future for a list that is ready.
    pub fn collect_now(
        &mut self,
        core: &Core,
        routed: &Routed,
        each: impl FnMut(RoutedResult),
    ) -> bool {
        if routed.groups.end > self.groups.len() {
            self.apply_deferred(core);
        }
        let (local_unavailable, durable_lsn) = self.local_state(routed);
        if routed.remote_count > 0 || durable_lsn > 0 {
            return false;
        }
        self.merge(core, routed, local_unavailable, each);
        true
    }

    /// Whether this core's journal failed for the list's local operations, and the LSN
    /// its reply must wait for (0: none, or not durable).
    fn local_state(&self, routed: &Routed) -> (bool, Lsn) {
        let groups = &self.groups[routed.groups.clone()];
        let unavailable = groups.iter().any(|group| group.unavailable);
        let lsn = match routed.durable {
            true => groups.iter().map(|group| group.lsn).max().unwrap_or(0),
            false => 0,
        };
        (unavailable, lsn)
    }

    /// Hands out the results in the list's order; a mutation on a core whose journal
    /// failed (`local_unavailable` for this core) gets `None`.
    fn merge(
        &mut self,
        core: &Core,
        routed: &Routed,
        local_unavailable: bool,
        mut each: impl FnMut(RoutedResult),
    ) {
        self.cursors.iter_mut().for_each(|cursor| *cursor = 0);
        let mut local = routed.local_start;
        let mut invalid = routed.invalid_start;
        for &meta in &self.meta[routed.meta.clone()] {
            let owner = usize::from(meta & META_OWNER_MASK);
            let mutation = meta & META_MUTATION != 0;
            let result = if meta & META_INVALID != 0 {
                invalid += 1;
                Some(Err(self.invalid[invalid - 1]))
            } else if owner == core.index {
                local += 1;
                let lost = mutation && local_unavailable;
                (!lost).then(|| self.local_results[local - 1])
            } else {
                let cursor = self.cursors[owner];
                self.cursors[owner] += 1;
                self.returned[owner]
                    .as_ref()
                    .filter(|(_, _, unavailable)| !(mutation && *unavailable))
                    .map(|(_, remote_results, _)| remote_results[cursor])
            };
            each(result);
        }
        debug_assert!(local <= self.local_results.len() && invalid <= self.invalid.len());
    }

    /// Clears the turn's scratch; every ticket sent must have been collected.
    pub fn end_turn(&mut self) {
        assert!(self.remotes.is_empty(), "every sent list was collected");
        assert!(
            self.deferred_durability.is_none(),
            "every local group was applied"
        );
        self.groups.clear();
        self.meta.clear();
        self.invalid.clear();
        self.local_results.clear();
    }

    /// Sends and collects `ops` (any length, in chunks of at most [`BATCH_OPS_MAX`]),
    /// appending one result per operation, in order, to `results`; ends the turn.
    pub async fn apply(
        &mut self,
        core: &Core,
        ops: &[Op<'_>],
        route: Route,
        results: &mut Vec<RoutedResult>,
    ) {
        let start = results.len();
        for chunk in ops.chunks(BATCH_OPS_MAX) {
            let routed = self.send(core, chunk.iter().copied(), route).await;
            self.collect(core, &routed, |result| results.push(result))
                .await;
        }
        self.end_turn();
        assert_eq!(results.len() - start, ops.len(), "one result per operation");
    }
}
