//! One core: its executor's state, its store, and the tasks it runs.
//!
//! Core `i` of `n` owns the partitions `{p : p % n == i}` and is the only thread that
//! touches them: its [`Store`] is opened on its own thread and lives in a `RefCell`
//! that is never borrowed across an `.await`. A core runs:
//!
//! - an accept loop on the main port (shared by all cores through SO_REUSEPORT) and one
//!   on its own shard port, each spawning a connection task (`connection.rs`), and with
//!   `--resp-listen` one on the Redis door (SO_REUSEPORT too, tasks in `resp.rs`);
//! - per peer core, a task draining the request mesh (apply forwarded operations,
//!   answer idempotency look-ups) and a task draining the reply mesh (wake the waiting
//!   connection task through the [`ReplyTable`]);
//! - a watcher that waits for the stop (woken by the request, no polling) and runs the
//!   shutdown sequence (`shutdown.rs`).
//!
//! Invariants: no lock or shared atomic on the data path (the only atomics are the
//! shutdown flag, the drain barrier and the connection count, touched at accept/close);
//! a forwarded batch holds only operations the receiving core owns.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::net::{TcpListener, TcpStream};
use tally_engine::journal::{Durability, Idempotency, Lsn, Record, RecordKind};
use tally_engine::{recycle_ops, Op, OpError, OpResult, Outcome, Store};
use tally_protocol::{ErrorCode, HelloReply};

use crate::config::ServerConfig;
use crate::descriptors::{self, SpareDescriptor};
use crate::durability::{
    encode_result, outcome_record_fields, unix_now_s, CoreJournal, LogThrottle, Notify, Recovered,
    SampledLog, Say,
};
use crate::idempotency::{
    self, Begin, Fingerprint, Full, IdempotencyKey, IdempotencyTable, IdempotentBatch,
    RecoveredBatches,
};
use crate::router::{BufferPool, MeshReply, MeshRequest, ReplyTable};
use crate::shutdown::{
    ConnectionRegistry, DrainBarrier, ShutdownSignal, StopNotice, POLL_INTERVAL,
};

/// Counters of one core, reported by the `Stats` request.
#[derive(Debug, Default)]
pub struct CoreStats {
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub frames: Cell<u64>,
    pub ops_local: Cell<u64>,
    pub ops_forwarded: Cell<u64>,
    pub ops_from_peers: Cell<u64>,
    pub bad_frames: Cell<u64>,
    pub idempotent_replays: Cell<u64>,
    /// New idempotent batches refused because their home core's table was full.
    pub idempotency_full_refusals: Cell<u64>,
}

/// What every task of one core shares (through an `Rc`).
pub struct Core {
    pub index: usize,
    pub cores: usize,
    pub partition_count: u32,
    pub config: ServerConfig,
    pub hello: HelloReply,
    pub store: RefCell<Store>,
    pub replies: ReplyTable,
    pub requests_out: Senders<MeshRequest>,
    pub replies_out: Senders<MeshReply>,
    pub pool: RefCell<BufferPool>,
    pub idempotency: RefCell<IdempotencyTable>,
    /// Every core's idempotent batches journaled before this start, for the keys this
    /// core is home to (the same map on every core).
    pub recovered_batches: Arc<RecoveredBatches>,
    /// The "idempotency table full" line (one per [`IDEMPOTENCY_FULL_LOG_INTERVAL`]).
    idempotency_full_logged: LogThrottle,
    /// The "too many connections" line (one per [`REFUSAL_LOG_INTERVAL`]).
    refusal_log: SampledLog,
    /// The line for a connection the server closed after a bad frame (one per
    /// [`REFUSAL_LOG_INTERVAL`]: a port scanner or an HTTP health check sends one per
    /// connection).
    pub bad_frame_log: SampledLog,
    pub registry: ConnectionRegistry,
    pub stop: StopNotice,
    pub connections_open: Arc<AtomicUsize>,
    pub stats: CoreStats,
    pub journal: CoreJournal,
    /// Replies to durable forwarded batches, waiting for their LSN to be durable, in
    /// LSN order: (LSN, origin core, reply).
    held: RefCell<VecDeque<(Lsn, usize, MeshReply)>>,
    held_notify: Notify,
    held_stopping: Cell<bool>,
    /// The Redis door's per-core state (`INFO` figures).
    pub resp: crate::resp::RespCore,
    /// Scratch for applying forwarded batches; its operations borrow nothing between
    /// uses (see [`tally_engine::recycle_ops`]).
    apply_scratch: RefCell<Vec<Op<'static>>>,
    /// Scratch for [`Core::apply_local`] when appending to a non-empty vector.
    results_scratch: RefCell<Vec<OpResult>>,
}

/// Everything a core needs from the thread that starts it.
pub struct CoreSetup {
    pub index: usize,
    pub config: ServerConfig,
    pub hello: HelloReply,
    pub store: Store,
    pub requests: (Senders<MeshRequest>, Receivers<MeshRequest>),
    pub replies: (Senders<MeshReply>, Receivers<MeshReply>),
    pub main_listener: TcpListener,
    pub shard_listener: TcpListener,
    /// The Redis door's listener, if configured.
    pub resp_listener: Option<TcpListener>,
    pub resp_shared: Arc<crate::resp::RespShared>,
    pub connections_open: Arc<AtomicUsize>,
    pub shutdown: ShutdownSignal,
    pub drain: DrainBarrier,
    pub journal: CoreJournal,
    pub recovered_batches: Arc<RecoveredBatches>,
    /// Whether to accept at all: `false` if a stop was requested during start-up.
    pub serve: bool,
}

/// How a core's share of a batch is journaled.
#[derive(Clone, Copy, Debug)]
pub struct Journaling<'a> {
    pub durability: Durability,
    /// The batch's idempotency key and fingerprint, and each operation's index in
    /// its batch.
    pub idempotency: Option<(IdempotentBatch, &'a [u16])>,
}

/// What applying a core's share of a batch leaves to do before replying.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The highest LSN appended (0 if none): a durable reply waits for it.
    pub lsn: Lsn,
    /// The journal failed: every mutation of this share is answered `Unavailable`.
    pub unavailable: bool,
}

/// What the task draining the request mesh does with a reply.
enum Outgoing {
    Send(usize, MeshReply),
    Hold(Lsn, usize, MeshReply),
}

/// The least time between two logs of a full idempotency table on one core.
const IDEMPOTENCY_FULL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The least time between two logs of connections refused at the limit, or closed after
/// a bad frame, on one core.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often a stop that waits (for a checkpoint round, for connections whose clients
/// do not take their replies) says so.
const STOP_WAIT_REPORT: Duration = Duration::from_secs(5);

/// The Outcome record of operation `index` of the idempotent `batch`, which changed
/// nothing (a read, a no-op, a refusal): its result, for a retry after a restart
/// (`durability.rs`, "Idempotency across restarts"); `None` for a refusal that needs no
/// record.
fn outcome_record<'a>(
    op: &Op<'a>,
    partition: u32,
    result: &OpResult,
    batch: IdempotentBatch,
    index: u16,
    unix_s: u32,
) -> Option<Record<'a>> {
    let (value, operand, result) = outcome_record_fields(result, index, unix_s, batch.fingerprint)?;
    Some(Record {
        partition,
        kind: RecordKind::Outcome,
        key: op.key(),
        operand,
        value,
        bounds: None,
        idempotency: Some(Idempotency {
            key: batch.key,
            result,
        }),
    })
}

/// What a core already has of an idempotent batch's results: journaled before a
/// restart, or kept from before its journal degraded (`durability.rs`).
#[derive(Clone, Copy, Debug, Default)]
struct Known<'a> {
    recovered: Option<&'a Recovered>,
    unsettled: Option<&'a Recovered>,
}

impl Known<'_> {
    fn is_empty(&self) -> bool {
        self.recovered.is_none() && self.unsettled.is_none()
    }

    /// The result operation `index` had, if known.
    fn outcome(&self, index: u16) -> Option<OpResult> {
        let recovered = self.recovered.and_then(|r| r.outcome(index));
        recovered.or_else(|| self.unsettled.and_then(|u| u.outcome(index)))
    }
}

impl Core {
    /// Applies operations this core owns, one result per operation appended to
    /// `results`, and journals the mutations that changed state.
    pub fn apply_local(
        &self,
        ops: &[Op<'_>],
        results: &mut Vec<OpResult>,
        journaling: Journaling<'_>,
    ) -> Applied {
        let start = results.len();
        let key = journaling.idempotency.map(|(batch, _)| batch.key);
        let unsettled = key.and_then(|key| self.journal.unsettled(key));
        let known = Known {
            recovered: key.and_then(|key| self.journal.recovered(key)),
            unsettled: unsettled.as_deref().map(|share| &share.outcomes),
        };
        // A share kept from before the journal degraded is answered only once all of
        // it is durable (durability.rs, "Unsettled batches").
        let in_doubt = unsettled
            .as_ref()
            .is_some_and(|share| share.lsn > self.journal.durable_lsn());
        let applied = if self.journal.refuses_mutations() || in_doubt {
            // Refuse mutations before they change anything, saying so (`Unavailable`,
            // nothing applied); reads are still served. An operation journaled before
            // a restart is answered from the journal; one kept in doubt may still
            // become durable, so its share's mutations stay of unknown outcome.
            let indexes = journaling.idempotency.map(|(_, indexes)| indexes);
            self.apply_where(ops, results, |at, op| {
                let journaled = known.recovered.zip(indexes);
                let journaled = journaled.and_then(|(recovered, i)| recovered.outcome(i[at]));
                journaled.or_else(|| op.is_mutation().then_some(Err(OpError::JournalRefused)))
            });
            Applied {
                lsn: 0,
                unavailable: unsettled.is_some(),
            }
        } else if let (false, Some((_, indexes))) = (known.is_empty(), journaling.idempotency) {
            // A retry of a batch journaled before a restart, or applied before the
            // journal degraded: those operations are answered as they were, not applied
            // again.
            self.apply_where(ops, results, |at, _| known.outcome(indexes[at]));
            self.journal_share(ops, None, &results[start..], journaling, known)
        } else {
            self.apply_store(ops, results);
            // The store hashed every key; the records' partitions come from those hashes.
            let store = self.store.borrow();
            let hashes = Some(store.last_batch_hashes()).filter(|h| h.len() == ops.len());
            self.journal_share(ops, hashes, &results[start..], journaling, known)
        };
        assert_eq!(results.len() - start, ops.len(), "one result per operation");
        self.stats
            .ops_local
            .set(self.stats.ops_local.get() + ops.len() as u64);
        applied
    }

    /// Applies every operation through the store's batch pipeline.
    fn apply_store(&self, ops: &[Op<'_>], results: &mut Vec<OpResult>) {
        let start = results.len();
        let mut store = self.store.borrow_mut();
        // `apply_batch` replaces the contents of its result vector: append through a
        // scratch vector unless `results` is empty anyway.
        let mut scratch = self.results_scratch.borrow_mut();
        let target = if start == 0 {
            &mut *results
        } else {
            &mut *scratch
        };
        if let Err(error) = store.apply_batch(ops, target) {
            // Only a batch over the engine's limit fails as a whole; the protocol's
            // limit is the same, so this is a broken invariant, reported per operation.
            tracing::error!(core = self.index, %error, "apply_batch refused a batch");
            target.clear();
            target.extend(ops.iter().map(|_| Err(error)));
        }
        if start != 0 {
            results.extend_from_slice(&scratch);
        }
    }

    /// Applies the operations for which `fixed` gives no result; the others get the
    /// result `fixed` gives. The slow path (failed journal, retries after a restart).
    fn apply_where(
        &self,
        ops: &[Op<'_>],
        results: &mut Vec<OpResult>,
        fixed: impl Fn(usize, &Op<'_>) -> Option<OpResult>,
    ) {
        let answers: Vec<Option<OpResult>> = ops
            .iter()
            .enumerate()
            .map(|(at, op)| fixed(at, op))
            .collect();
        let to_apply: Vec<Op<'_>> = ops
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(op, _)| *op)
            .collect();
        let mut applied = Vec::with_capacity(to_apply.len());
        self.apply_store(&to_apply, &mut applied);
        let mut applied = applied.into_iter();
        for answer in answers {
            let result = answer.or_else(|| applied.next());
            results.push(result.expect("one applied result per operation applied"));
        }
    }

    /// Journals the mutations of `ops` that changed state, and with an idempotency key
    /// every other operation's result too (skipping those `known`, which are in the
    /// journal already). A durable idempotent share is kept in doubt until durable.
    fn journal_share(
        &self,
        ops: &[Op<'_>],
        hashes: Option<&[u64]>,
        results: &[OpResult],
        journaling: Journaling<'_>,
        known: Known<'_>,
    ) -> Applied {
        let unix_s = journaling.idempotency.map_or(0, |_| unix_now_s());
        let records = ops
            .iter()
            .zip(results)
            .enumerate()
            .filter_map(|(at, (op, result))| {
                let hash = || hashes.map_or_else(|| tally_engine::key_hash(op.key()), |h| h[at]);
                let Some((batch, indexes)) = journaling.idempotency else {
                    // Refusals leave no record, and need no hash.
                    let outcome = result.as_ref().ok()?;
                    return self.record_of(op, hash(), outcome);
                };
                let index = indexes[at];
                if known.outcome(index).is_some()
                    || !(1..=tally_engine::KEY_BYTES_MAX).contains(&op.key().len())
                {
                    return None;
                }
                let hash = hash();
                let mutation = result
                    .as_ref()
                    .ok()
                    .and_then(|outcome| Some((outcome, self.record_of(op, hash, outcome)?)));
                if let Some((outcome, mut record)) = mutation {
                    let result = encode_result(outcome, index, unix_s, batch.fingerprint);
                    record.idempotency = Some(Idempotency {
                        key: batch.key,
                        result,
                    });
                    return Some(record);
                }
                // Changed nothing: its result alone, so a retry after a restart gets it.
                let partition = tally_engine::partition_of_hash(hash, self.partition_count);
                outcome_record(op, partition, result, batch, index, unix_s)
            });
        match self.journal.append_all(records, journaling.durability) {
            None => Applied {
                lsn: 0,
                unavailable: true,
            },
            Some((first, last)) => {
                if let (Some((batch, indexes)), true) = (journaling.idempotency, first > 0) {
                    self.journal.retain(first, unix_s);
                    if journaling.durability == Durability::Durable {
                        let outcomes = (indexes.iter().zip(results))
                            .filter(|(&index, _)| known.outcome(index).is_none())
                            .map(|(&index, &result)| (index, result))
                            .collect();
                        self.journal
                            .note_in_doubt(batch.key, last, unix_s, outcomes);
                    }
                }
                // A durable mutation that changed nothing (a refusal, a delete of a
                // missing counter) has no record, but what it saw may be the effect of
                // records not durable yet: its reply waits for every record appended so
                // far, as a record of its own would. (With records, `last` is that.)
                let nothing_appended = last == 0;
                let lsn = if nothing_appended
                    && journaling.durability == Durability::Durable
                    && ops.iter().any(Op::is_mutation)
                {
                    self.journal.barrier_lsn()
                } else {
                    last
                };
                Applied {
                    lsn,
                    unavailable: false,
                }
            }
        }
    }

    /// The journal record of a mutation that changed state; `None` for a read or a
    /// delete of a missing counter. `hash` is the key's `key_hash`.
    fn record_of<'a>(&self, op: &Op<'a>, hash: u64, outcome: &Outcome) -> Option<Record<'a>> {
        if matches!(op, Op::Delete { .. }) && !outcome.existed {
            return None;
        }
        let partition = tally_engine::partition_of_hash(hash, self.partition_count);
        debug_assert_eq!(
            partition,
            tally_engine::partition_of(op.key(), self.partition_count)
        );
        Record::from_op(op, outcome, partition)
    }

    /// The core that owns `key`.
    pub fn owner_of_key(&self, key: &[u8]) -> usize {
        let partition = tally_engine::partition_of(key, self.partition_count);
        crate::router::owner_of_partition(partition, self.cores)
    }

    /// The idempotency state of `key` on its home core `home` for a batch of
    /// `op_count` operations with `fingerprint`, recording it in flight if new and
    /// there is room. `Err` if the home core cannot be reached (shutting down).
    pub async fn idempotency_begin(
        &self,
        home: usize,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        op_count: u16,
    ) -> Result<Begin, ErrorCode> {
        if home == self.index {
            return Ok(self.idempotency_begin_here(key, fingerprint, op_count));
        }
        let ticket = self.replies.reserve();
        let request = MeshRequest::IdempotencyBegin {
            origin: self.index,
            ticket,
            key,
            fingerprint,
            op_count,
        };
        if self.requests_out.send_to(home, request).await.is_err() {
            self.replies.cancel(ticket);
            return Err(ErrorCode::ShuttingDown);
        }
        match self.replies.wait(ticket).await {
            MeshReply::Idempotency { state, .. } => Ok(state),
            MeshReply::Applied { .. } => panic!("an idempotency ticket got an apply reply"),
        }
    }

    /// [`Core::idempotency_begin`] on this core, the home core.
    fn idempotency_begin_here(
        &self,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        op_count: u16,
    ) -> Begin {
        debug_assert_eq!(idempotency::home_core(key, self.cores), self.index);
        // Before a restart the key may have served other operations: its records carry
        // their batch's fingerprint. (A table entry for the key was begun after the
        // restart, so it passed this check with the same fingerprint.)
        if !self.recovered_batches.is_empty()
            && self
                .recovered_batches
                .conflicts(key, fingerprint, unix_now_s())
        {
            return Begin::Mismatch;
        }
        let now = Instant::now();
        let mut table = self.idempotency.borrow_mut();
        match table.begin(key, fingerprint, usize::from(op_count), now) {
            Begin::Full(full) => {
                let (keys, reply_bytes) = (table.len(), table.reply_bytes());
                drop(table);
                self.warn_idempotency_full(full, keys, reply_bytes, now);
                Begin::Full(full)
            }
            begin => begin,
        }
    }

    /// Logs that the idempotency table refused a new key, at most once per
    /// [`IDEMPOTENCY_FULL_LOG_INTERVAL`]: under sustained overload every new key is
    /// refused, and one line per batch would flood the log.
    fn warn_idempotency_full(&self, full: Full, keys: usize, reply_bytes: usize, now: Instant) {
        let say = self
            .idempotency_full_logged
            .check(now, IDEMPOTENCY_FULL_LOG_INTERVAL);
        if say == Say::Quiet {
            return;
        }
        tracing::warn!(
            core = self.index,
            ?full,
            keys,
            reply_bytes,
            keys_max = self.config.idempotency_entries_max,
            reply_bytes_max = self.config.idempotency_reply_bytes_max,
            "idempotency table full of keys inside their window: refusing new idempotent \
             batches (ServerBusy) until keys expire; see --idempotency-max-keys and \
             --idempotency-max-reply-bytes"
        );
    }

    /// Records the reply frame of a finished idempotent batch on its home core.
    pub async fn idempotency_finish(
        &self,
        home: usize,
        key: IdempotencyKey,
        fingerprint: Fingerprint,
        reply: &[u8],
    ) {
        if home == self.index {
            self.idempotency
                .borrow_mut()
                .finish(key, fingerprint, reply);
            return;
        }
        let request = MeshRequest::IdempotencyFinish {
            key,
            fingerprint,
            reply: reply.to_vec(),
        };
        if self.requests_out.send_to(home, request).await.is_err() {
            tracing::warn!(
                core = self.index,
                home,
                "could not record an idempotency key: mesh closed"
            );
        }
    }

    /// Handles one request from a peer core; returns the reply to send, if any.
    fn handle_mesh_request(&self, request: MeshRequest) -> Option<Outgoing> {
        match request {
            MeshRequest::Apply {
                origin,
                ticket,
                batch,
                mut results,
                durability,
                idempotency,
            } => {
                let mut ops = recycle_ops(self.apply_scratch.take());
                batch.ops_into(&mut ops);
                results.clear();
                let journaling = Journaling {
                    durability,
                    idempotency: idempotency.map(|idempotent| (idempotent, batch.indexes())),
                };
                let applied = self.apply_local(&ops, &mut results, journaling);
                self.stats
                    .ops_from_peers
                    .set(self.stats.ops_from_peers.get() + ops.len() as u64);
                self.apply_scratch.replace(recycle_ops(ops));
                let reply = MeshReply::Applied {
                    ticket,
                    batch,
                    results,
                    unavailable: applied.unavailable,
                };
                if durability == Durability::Durable && applied.lsn > 0 {
                    return Some(Outgoing::Hold(applied.lsn, origin, reply));
                }
                Some(Outgoing::Send(origin, reply))
            }
            MeshRequest::IdempotencyBegin {
                origin,
                ticket,
                key,
                fingerprint,
                op_count,
            } => {
                let state = self.idempotency_begin_here(key, fingerprint, op_count);
                let reply = MeshReply::Idempotency { ticket, state };
                Some(Outgoing::Send(origin, reply))
            }
            MeshRequest::IdempotencyFinish {
                key,
                fingerprint,
                reply,
            } => {
                self.idempotency
                    .borrow_mut()
                    .finish(key, fingerprint, &reply);
                None
            }
        }
    }

    /// Queues the reply to a durable forwarded batch until `lsn` is durable.
    fn hold_reply(&self, lsn: Lsn, origin: usize, reply: MeshReply) {
        let mut held = self.held.borrow_mut();
        debug_assert!(held.back().is_none_or(|(last, _, _)| *last <= lsn));
        held.push_back((lsn, origin, reply));
        drop(held);
        self.held_notify.notify();
    }
}

/// Sends the held replies of durable forwarded batches, in LSN order, once their LSN
/// is durable (or as `Unavailable` if the journal failed first). Ends once asked to
/// stop and nothing is held.
async fn send_held_replies(core: Rc<Core>) {
    loop {
        let front = core.held.borrow().front().map(|(lsn, _, _)| *lsn);
        let Some(lsn) = front else {
            if core.held_stopping.get() {
                return;
            }
            core.held_notify.wait().await;
            continue;
        };
        let durable = core.journal.wait_durable(lsn).await;
        let (_, origin, mut reply) = core
            .held
            .borrow_mut()
            .pop_front()
            .expect("only this task pops");
        if durable.is_err() {
            if let MeshReply::Applied { unavailable, .. } = &mut reply {
                *unavailable = true;
            }
        }
        if core.replies_out.send_to(origin, reply).await.is_err() {
            tracing::warn!(
                core = core.index,
                peer = origin,
                "reply mesh closed before a held reply"
            );
        }
    }
}

/// Serves requests from peer `peer` until it closes its side of the mesh.
async fn drain_requests(core: Rc<Core>, receivers: Rc<Receivers<MeshRequest>>, peer: usize) {
    while let Ok(Some(request)) = receivers.recv_from(peer).await {
        let outgoing = core.handle_mesh_request(request);
        if let Some(Outgoing::Hold(lsn, origin, reply)) = outgoing {
            core.hold_reply(lsn, origin, reply);
        } else if let Some(Outgoing::Send(origin, reply)) = outgoing {
            if core.replies_out.send_to(origin, reply).await.is_err() {
                tracing::warn!(
                    core = core.index,
                    peer = origin,
                    "reply mesh closed before a reply"
                );
            }
        }
    }
}

/// Delivers replies from peer `peer` until it closes its side of the mesh.
async fn drain_replies(core: Rc<Core>, receivers: Rc<Receivers<MeshReply>>, peer: usize) {
    while let Ok(Some(reply)) = receivers.recv_from(peer).await {
        core.replies.complete(reply);
    }
}

/// The `port_kind` of the Redis door's listener: its connections speak RESP.
const RESP_PORT_KIND: &str = "resp";

/// Accepts connections on `listener` until the core stops.
async fn accept_loop(
    core: Rc<Core>,
    listener: TcpListener,
    gate: Rc<glommio::sync::Gate>,
    port_kind: &'static str,
) {
    let mut spare = SpareDescriptor::open();
    let error_log = SampledLog::default();
    let resp = port_kind == RESP_PORT_KIND;
    loop {
        let stream = match accept_or_stop(&core, &listener).await {
            None => break,
            Some(Ok(stream)) => stream,
            Some(Err(error)) => {
                let now = Instant::now();
                if let Some(unlogged_count) =
                    error_log.note(now, descriptors::ACCEPT_ERROR_LOG_INTERVAL)
                {
                    tracing::warn!(core = core.index, port_kind, %error, unlogged_count, "accept failed");
                }
                let answered = descriptors::is_out_of_descriptors(&error)
                    && shed_one(&core, &listener, &mut spare, resp).await;
                if !answered {
                    // Keep serving the others; the waiting client is retried soon.
                    glommio::timer::sleep(descriptors::ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        admit(&core, &gate, stream, resp);
    }
}

/// The next accepted connection, or `None` once the core stops.
async fn accept_or_stop(core: &Core, listener: &TcpListener) -> Option<std::io::Result<TcpStream>> {
    let accept = async { Some(listener.accept().await.map_err(std::io::Error::from)) };
    let stop = async {
        core.stop.wait().await;
        None
    };
    futures_lite::future::or(accept, stop).await
}

/// Out of descriptors: frees the spare, accepts the waiting connection into its slot,
/// answers it `ServerBusy` and closes it, so its client is not left hanging. `false`
/// if that could not be done (no spare, or the slot was taken meanwhile).
async fn shed_one(
    core: &Core,
    listener: &TcpListener,
    spare: &mut SpareDescriptor,
    resp: bool,
) -> bool {
    if !spare.release() {
        spare.restore();
        return false;
    }
    let answered = match accept_or_stop(core, listener).await {
        Some(Ok(stream)) => {
            let stats = &core.stats;
            stats
                .connections_refused
                .set(stats.connections_refused.get() + 1);
            if resp {
                crate::resp::refuse(stream).await;
            } else {
                crate::connection::refuse(stream).await;
            }
            true
        }
        Some(Err(_)) | None => false,
    };
    spare.restore();
    answered
}

/// Logs a connection refused at the limit: at most once per [`REFUSAL_LOG_INTERVAL`]
/// per core, with the count of refusals not logged since (at the limit, an overloaded
/// server, every connect was a line: 3,000 in 0.4 s). `connections_refused` in the
/// stats counts every one.
fn log_refusal(core: &Core, peer: SocketAddr) {
    let Some(unlogged_count) = core.refusal_log.note(Instant::now(), REFUSAL_LOG_INTERVAL) else {
        return;
    };
    tracing::warn!(
        core = core.index,
        %peer,
        max = core.config.connections_max,
        unlogged_count,
        "connection refused: too many connections (unlogged_count: refusals since the \
         last such line, not logged)"
    );
}

/// Starts a connection task, or refuses the connection if the limit is reached.
fn admit(core: &Rc<Core>, gate: &Rc<glommio::sync::Gate>, stream: TcpStream, resp: bool) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let open = core.connections_open.fetch_add(1, Ordering::AcqRel) + 1;
    let stats = &core.stats;
    if open > core.config.connections_max {
        core.connections_open.fetch_sub(1, Ordering::AcqRel);
        stats
            .connections_refused
            .set(stats.connections_refused.get() + 1);
        log_refusal(core, peer);
        // A glommio task is cancelled when its handle drops: detach it.
        let spawned = if resp {
            gate.spawn(crate::resp::refuse(stream))
                .map(|task| task.detach())
        } else {
            gate.spawn(crate::connection::refuse(stream))
                .map(|task| task.detach())
        };
        if spawned.is_err() {
            tracing::debug!(core = core.index, "gate closed while refusing a connection");
        }
        return;
    }
    stats
        .connections_accepted
        .set(stats.connections_accepted.get() + 1);
    tracing::debug!(core = core.index, %peer, "connection accepted");
    let spawned = if resp {
        let task = crate::resp::serve(Rc::clone(core), stream, peer);
        gate.spawn(task).map(|task| task.detach())
    } else {
        let task = crate::connection::serve(Rc::clone(core), stream, peer);
        gate.spawn(task).map(|task| task.detach())
    };
    if spawned.is_err() {
        core.connections_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Awaits `task` during a stop, calling `report` with the time waited every
/// [`STOP_WAIT_REPORT`] until it completes, so a stop that waits is never silent.
async fn await_reporting<T>(
    task: impl std::future::Future<Output = T>,
    report: impl Fn(Duration),
) -> T {
    let mut task = std::pin::pin!(task);
    let waiting_since = Instant::now();
    loop {
        let done = futures_lite::future::or(async { Some(task.as_mut().await) }, async {
            glommio::timer::sleep(STOP_WAIT_REPORT).await;
            None
        })
        .await;
        match done {
            Some(output) => return output,
            None => report(waiting_since.elapsed()),
        }
    }
}

/// How often an idle core wakes to publish its `INFO` figures for the other cores
/// (`resp::publish_figures`); the core answering `INFO` publishes its own first.
const FIGURES_INTERVAL: Duration = Duration::from_secs(1);

/// Returns once a stop is requested. Woken by the request itself (a byte on a socket,
/// [`ShutdownSignal::subscribe`]), so an idle core wakes only once per
/// [`FIGURES_INTERVAL`]; it polls the flag every [`POLL_INTERVAL`] only if it got no
/// socket (out of descriptors).
async fn wait_for_stop(core: &Core, shutdown: &ShutdownSignal) {
    use futures_lite::AsyncReadExt;
    let mut wake = match shutdown.subscribe() {
        // SAFETY: the fd is one end of a socket pair we just made and own;
        // `into_raw_fd` gives up that ownership, so glommio's stream is its only owner.
        Ok(socket) => Some(unsafe { glommio::net::UnixStream::from_raw_fd(socket.into_raw_fd()) }),
        Err(error) => {
            let message = "no wake-up socket for the stop: looking at the flag every 10 ms";
            tracing::warn!(core = core.index, %error, "{message}");
            None
        }
    };
    while !shutdown.is_requested() {
        let woken = async {
            match wake.as_mut() {
                Some(socket) => {
                    let mut byte = [0_u8; 1];
                    matches!(socket.read(&mut byte).await, Ok(1))
                }
                None => {
                    glommio::timer::sleep(POLL_INTERVAL).await;
                    true
                }
            }
        };
        let tick = async {
            glommio::timer::sleep(FIGURES_INTERVAL).await;
            true
        };
        if !futures_lite::future::or(woken, tick).await {
            // End of stream or an error: the socket cannot wake us; poll instead.
            let message = "the stop's wake-up socket failed: looking at the flag every 10 ms";
            tracing::warn!(core = core.index, "{message}");
            wake = None;
        }
        crate::resp::publish_figures(core);
    }
}

/// Runs one core until shutdown; returns its store, and whether its journal failed
/// while serving (then the store holds mutations the journal never got, answered
/// `Unavailable`, and must not be closed clean: see `lib.rs`).
pub async fn run(setup: CoreSetup) -> (Store, bool) {
    let CoreSetup {
        index,
        config,
        hello,
        store,
        requests,
        replies,
        journal,
        ..
    } = setup;
    let cores = config.cores;
    let mut idempotency = IdempotencyTable::new(
        Duration::from_secs(config.idempotency_window_s),
        config.idempotency_entries_max,
        config.idempotency_reply_bytes_max,
    );
    // The keys homed here that the journals held at start count as known (and against
    // the table's bound) until their windows end.
    let now = Instant::now();
    let homed = setup.recovered_batches.homed(index, cores, unix_now_s());
    for (key, fingerprint, age) in homed {
        idempotency.seed_recovered(key, fingerprint, age, now);
    }
    let core = Rc::new(Core {
        index,
        cores,
        partition_count: hello.partition_count,
        config,
        hello,
        store: RefCell::new(store),
        replies: ReplyTable::default(),
        requests_out: requests.0,
        replies_out: replies.0,
        pool: RefCell::new(BufferPool::default()),
        idempotency: RefCell::new(idempotency),
        recovered_batches: setup.recovered_batches,
        idempotency_full_logged: LogThrottle::default(),
        refusal_log: SampledLog::default(),
        bad_frame_log: SampledLog::default(),
        registry: ConnectionRegistry::default(),
        stop: StopNotice::default(),
        connections_open: setup.connections_open,
        stats: CoreStats::default(),
        journal,
        held: RefCell::new(VecDeque::new()),
        held_notify: Notify::default(),
        held_stopping: Cell::new(false),
        resp: crate::resp::RespCore::new(setup.resp_shared),
        apply_scratch: RefCell::new(Vec::new()),
        results_scratch: RefCell::new(Vec::with_capacity(tally_engine::BATCH_OPS_MAX)),
    });
    let request_receivers = Rc::new(requests.1);
    let reply_receivers = Rc::new(replies.1);
    let mut mesh_tasks = Vec::new();
    for peer in (0..cores).filter(|&peer| peer != index) {
        let requests = drain_requests(Rc::clone(&core), Rc::clone(&request_receivers), peer);
        mesh_tasks.push(glommio::spawn_local(requests));
        let replies = drain_replies(Rc::clone(&core), Rc::clone(&reply_receivers), peer);
        mesh_tasks.push(glommio::spawn_local(replies));
    }
    let commit = glommio::spawn_local(crate::durability::commit_loop(Rc::clone(&core)));
    let checkpoints = glommio::spawn_local(crate::durability::checkpoint_loop(Rc::clone(&core)));
    let held = glommio::spawn_local(send_held_replies(Rc::clone(&core)));
    let gate = Rc::new(glommio::sync::Gate::new());
    let (main_listener, shard_listener, resp_listener) = if setup.serve {
        (
            Some(setup.main_listener),
            Some(setup.shard_listener),
            setup.resp_listener,
        )
    } else {
        // Stopped during start-up: the listeners close unused, so the clients queued
        // in their backlog are refused rather than served by a stopping server.
        (None, None, None)
    };
    let listeners = [(main_listener, "main"), (shard_listener, "shard")];
    let listeners = listeners
        .into_iter()
        .chain([(resp_listener, RESP_PORT_KIND)]);
    let accepts: Vec<_> = listeners
        .filter_map(|(listener, port_kind)| Some((listener?, port_kind)))
        .map(|(listener, port_kind)| {
            let task = accept_loop(Rc::clone(&core), listener, Rc::clone(&gate), port_kind);
            glommio::spawn_local(task)
        })
        .collect();
    wait_for_stop(&core, &setup.shutdown).await;
    tracing::info!(
        core = index,
        open = core.registry.len(),
        "shutting down: no longer accepting"
    );
    core.stop.fire();
    for accept in accepts {
        accept.await;
    }
    core.registry.shutdown_reads();
    // Idle connections end at once; one whose client does not take its replies holds
    // the stop until the write timeout ends it: said every few seconds, with the count.
    let write_timeout_ms = core.config.write_timeout_ms;
    let closed = await_reporting(gate.close(), |waited| {
        tracing::warn!(
            core = index,
            connections = core.registry.len(),
            waited_s = waited.as_secs(),
            write_timeout_ms,
            "stopping: waiting for connections to take their replies; a client that \
             reads none is disconnected once its write has made no progress for \
             --write-timeout-ms"
        );
    })
    .await;
    if closed.is_err() {
        tracing::warn!(core = index, "connection gate was already closed");
    }
    setup.drain.arrive();
    setup.drain.wait().await;
    // Every connection of every core has ended, so every held reply was sent.
    core.held_stopping.set(true);
    core.held_notify.notify();
    held.await;
    core.requests_out.close();
    core.replies_out.close();
    for task in mesh_tasks {
        task.await;
    }
    assert_eq!(
        core.replies.outstanding(),
        0,
        "every mesh request was answered before the mesh closed"
    );
    drop(request_receivers);
    drop(reply_receivers);
    // A round in progress needs the commit task (it waits for records to be durable).
    // It stops after the partition in hand, which a stalled disk can make take long:
    // said every few seconds, so a stop that does not end is not silent.
    core.journal.stop_checkpoints();
    await_reporting(checkpoints, |waited| {
        tracing::warn!(
            core = index,
            waited_s = waited.as_secs(),
            "stopping: waiting for the checkpoint round in progress to finish writing a \
             partition (is the disk stalled?)"
        );
    })
    .await;
    core.journal.stop();
    commit.await;
    let core = Rc::into_inner(core).expect("every task of the core has ended");
    let mut store = core.store.into_inner();
    match core.journal.finish(&mut store) {
        Ok(()) => tracing::info!(core = index, "journal synced and checkpointed"),
        Err(error) if core.journal.is_failed() => {
            tracing::error!(core = index, %error, "no final checkpoint: the journal failed")
        }
        Err(error) => tracing::error!(
            core = index,
            %error,
            "the final checkpoint could not be written: the journal is synced and keeps \
             every record since the last checkpoint, and the store is closed clean"
        ),
    }
    let journal_failed = core.journal.is_failed();
    (store, journal_failed)
}
