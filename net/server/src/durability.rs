//! Durability on one core: its journal, the group-commit task, durable waits,
//! checkpoints, and what recovery gives back at start.
//!
//! # Data path
//! A core applies a batch to its store, then appends one journal record per mutation
//! that changed state ([`CoreJournal::append`], no await in between, so records are in
//! apply order). A *relaxed* batch is acknowledged at once; a *durable* one waits in
//! [`CoreJournal::wait_durable`] until the journal's durable LSN covers the highest LSN
//! the batch appended on this core. Operations forwarded from another core are
//! journaled by their owner, in its journal; the owner holds the reply of a durable
//! forwarded batch until its records are durable (`core.rs`, `hold_reply`), so the
//! receiving core never needs another core's LSN.
//!
//! # Group commit ([`commit_loop`], one task per core)
//! A commit is a write + fdatasync through io_uring; records appended while one is in
//! flight ride the next one, so the commit size follows the load. The next one may
//! start as soon as the previous one's write has finished, while its fdatasync runs
//! (two in flight at most, see the journal writer). A commit starts when the oldest
//! durable record has waited `durable_wait_us` (0: at once), the oldest relaxed one
//! `relaxed_flush_ms`, or `commit_bytes` are waiting. While a commit is in flight the
//! task waits, with the executor parked, for the kernel's notices: the journal's ring
//! sends 8 bytes to one end of a Unix socket pair after each commit's write and after
//! its fdatasync (`UringStorage::notify_completions`) and the task reads the other
//! end, so an acknowledgement follows its fdatasync by one wake-up.
//! The executor must park: the fdatasync runs on an io_uring worker thread pinned to
//! this core's CPU (like the thread that submitted it), and a spinning executor kept it
//! waiting a scheduler slice, ~8 ms per commit at `--spin-us 200` on a 2-vCPU VM.
//! Before the notices the task polled on a timer (still the fallback, see
//! [`CommitPacing`]); each poll cost a park, and each park one of glommio's
//! `membarrier` calls, which strace caught taking 9-11 ms about every 100 ms on this
//! VM (most likely while the host held the other vCPU), stalling both cores' commits
//! together. With notices, 4 connections x 64 durable went from p99 12.7-13.6 ms to
//! 6.3-6.6 ms and 206-215k to 236-261k increments/s (BENCHMARKS.md). With nothing
//! waiting the task sleeps until an append wakes it: an idle core parks.
//!
//! # Checkpoints ([`checkpoint_loop`], one task per core)
//! A round writes the partitions that changed since their checkpoint and releases the
//! segments no checkpoint needs (`tally_engine::journal::checkpoint`). The core only
//! copies each changed partition into memory, one at a time between requests; the
//! writes, syncs and renames run on the executor's blocking thread, so requests are
//! served throughout (a round used to hold the core for every partition's five or six
//! fsyncs: a second or more under load). A copy is written once every record it
//! reflects is durable ([`checkpoint_round`] says why that makes it a sound
//! checkpoint). The final round at shutdown ([`CoreJournal::finish`]) runs on the core
//! itself, after the last request; a periodic round still running then stops after
//! the partition in hand.
//!
//! What a round still costs: the core pauses for each copy, which is a memory copy of
//! one partition (2.4 ms for a 6 MB partition here: 10M counters over 64 partitions);
//! and memory grows by the largest partition's copy for the round (its buffers are
//! reused from partition to partition). A store with few, large partitions pays both
//! in full, so big stores want more partitions (`--partitions` at creation). The
//! blocking thread is not pinned, so its checksums, copies into the page cache and
//! syscalls can run on another CPU than the core's.
//!
//! # Failure
//! A storage failure either *degrades* the journal, for a while, or *fails* it, for
//! good (the journal writer's "Failure" says which is which). Either way every durable
//! waiter above the durable LSN is answered `Unavailable` (an unknown outcome: the
//! record is applied in memory and may still reach the disk), later mutations are
//! refused (`Unavailable`) without being applied, reads keep being served, and nothing
//! acknowledged earlier is touched.
//! - Degraded (a segment could not be created, e.g. EMFILE or ENOSPC; a write ran out
//!   of space or file descriptors before anything of it was made durable): the journal
//!   keeps its unwritten records and the commit task retries every
//!   `JournalOptions::retry_interval` (1 s), logging the error and file at the first
//!   failure and then at most every [`DEGRADED_LOG_INTERVAL`]. Once a retry is durable
//!   the core accepts mutations again (and logs it), with no restart: an operator who
//!   frees space or descriptors gets the server back. `tally stats` shows
//!   `journal_degraded` (1 while degraded) and `journal_retries` per core.
//! - Failed (an fdatasync failed: Linux may have dropped the dirty pages and marked
//!   them clean, so no later fdatasync can be trusted; or a write failed with EIO): it
//!   stays so until a restart. A failure met inside a batch's appends (a full buffer
//!   whose commit could not be made) also fails for good, even when retryable: the
//!   batch is already applied in memory, so the store holds mutations the journal
//!   does not.
//!
//! At shutdown [`CoreJournal::finish`] syncs the journal, which retries a degraded one
//! once more. If anything there fails (or the journal had failed), the core counts as
//! failed and its store is left unclean: the next start restores the last checkpoint
//! and replays the journal, exactly what was made durable, instead of trusting memory
//! that holds mutations the journal never got.
//!
//! # Idempotency across restarts
//! Every operation of a batch with an idempotency key leaves a record carrying the key
//! and a 16-byte result: a mutation its usual record, and an operation that changed
//! nothing (a read, a no-op such as deleting a missing counter, a refused operation)
//! an *Outcome* record, which replay skips (`tally_engine::journal::record`). Only an
//! invalid key leaves none (its refusal needs no memory: it is the same every time).
//! ```text
//! offset size field
//!      0    1 flags: bit 0 the counter existed, bit 1 the operation was clamped
//!      1    1 status: 0 the operation succeeded (its value is the record's `value`);
//!             else the wire status it was refused with (PROTOCOL.md: 2 Overflow,
//!             3 BelowFloor, 4 AboveCeiling, 5 InvalidBounds, 6 OutOfBounds,
//!             7 WrongKind, 9 StorageFull), the reply's detail in `value` (and for
//!             InvalidBounds the ceiling in `operand`)
//!      2    2 index of the operation in its batch, u16 LE
//!      4    4 wall-clock time of the apply, unix seconds, u32 LE
//!      8    8 the batch's fingerprint (`idempotency::fingerprint`), u64 LE; 0 in
//!             records written before fingerprints were journaled (unknown)
//! ```
//! At start each core reads its journal and keeps, per key seen within the window, the
//! batch's fingerprint and the result of every operation it journaled ([`Recovered`]). The fingerprints of all
//! cores are merged at start (`lib.rs`) and handed to every core, so the key's home
//! core refuses a batch with other operations under a recovered key, as it does
//! before a restart. A retry of the same batch skips the operations journaled and
//! answers with their recorded results, reads and refusals included; operations with
//! no record (lost in the crash before they reached the journal, so never
//! acknowledged) run again. So no mutation is applied twice, none acknowledged is
//! lost, and a retry gets the first attempt's results. (Records written before
//! Outcome records existed hold mutations only: for those, reads and refusals run
//! again.) Checkpoints keep every segment holding an
//! idempotency record still inside the window (the `retention_lsn` of
//! `checkpoint_core`), so the journal of a core serving idempotent traffic is bounded
//! by the window rather than by the checkpoint interval.
//!
//! # Unsettled batches
//! While the server runs, a durable idempotent batch answered `Unavailable` because
//! its records were appended but not yet durable when the journal degraded has an
//! unknown outcome that settles later: a degraded journal's retry writes those very
//! records. So each core keeps the results of the durable idempotent shares it has
//! appended and not yet made durable (`in_doubt`, oldest first, dropped as they become
//! durable), and when its journal degrades moves those still in doubt to `unsettled`
//! (for the window). A retry of such a batch (the home core resumes it, see
//! `idempotency.rs`) reaches this core again with the same key: once every record of
//! the kept share is durable, its operations are answered from what was kept and not
//! applied again; before that (still degraded) they stay `Unavailable`. Operations a
//! degraded or failed journal refused before applying them left nothing here, and run
//! on the retry. A journal that fails for good refuses every mutation until a restart,
//! after which the journal decides, as above.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::AsyncReadExt;

use tally_engine::journal::checkpoint::{self, checkpoint_core, CheckpointInfo, CheckpointReport};
use tally_engine::journal::recovery::{recover, RecoveryOptions, COVERED_SUFFIX};
use tally_engine::journal::{
    journal_dir, list_segments, Durability, Idempotency, Journal, JournalError, JournalOptions,
    JournalReader, Lsn, Record,
};
use tally_engine::{OpError, OpResult, Outcome, Store};
use tally_protocol::Status;

use crate::config::ServerConfig;
use crate::connection::status_of;
use crate::core::Core;
use crate::idempotency::{Fingerprint, IdempotencyKey, KeyMap, KeySet};

/// Without commit notices (the module doc's fallback), a commit in flight is polled no
/// sooner than this after the executor's spin would end. Not shorter: the executor must
/// stay parked long enough for the fdatasync's worker thread to get the CPU. Measured
/// on 2 vCPUs, durable, spin 0:
/// 10 us brought back ~8 ms commits (1 connection ~160-680 ops/s, 4 x pipeline 16
/// ~4k), while 50 us and 200 us both gave ~1.8-2.2k and ~40-60k ops/s.
pub const IN_FLIGHT_POLL: Duration = Duration::from_micros(50);
/// The commit duration [`CommitPacing`] assumes before it has measured one.
const COMMIT_ESTIMATE_INITIAL: Duration = Duration::from_micros(500);
/// The shortest wait for a commit's notice before the commit is polled anyway.
const NOTICE_FALLBACK_MIN: Duration = Duration::from_millis(2);
/// With nothing to commit the commit task still wakes this often (a degraded journal's
/// retry is due by its deadline), and the checkpoint task looks this often whether a
/// round is due.
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// While degraded, the failed retries are logged at most this often.
pub const DEGRADED_LOG_INTERVAL: Duration = Duration::from_secs(30);

const RESULT_FLAG_EXISTED: u8 = 1;
const RESULT_FLAG_CLAMPED: u8 = 2;

// An operation's index in its batch travels as u16.
const _: () = assert!(tally_engine::BATCH_OPS_MAX <= u16::MAX as usize);

/// The 16-byte result of an idempotent record (layout in the module doc) for an
/// operation that succeeded with `outcome` (status 0).
pub fn encode_result(
    outcome: &Outcome,
    index: u16,
    unix_s: u32,
    fingerprint: Fingerprint,
) -> [u8; 16] {
    let flags = (u8::from(outcome.existed) * RESULT_FLAG_EXISTED)
        | (u8::from(outcome.clamped) * RESULT_FLAG_CLAMPED);
    result_bytes(flags, 0, index, unix_s, fingerprint)
}

fn result_bytes(
    flags: u8,
    status: u8,
    index: u16,
    unix_s: u32,
    fingerprint: Fingerprint,
) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0] = flags;
    bytes[1] = status;
    bytes[2..4].copy_from_slice(&index.to_le_bytes());
    bytes[4..8].copy_from_slice(&unix_s.to_le_bytes());
    bytes[8..16].copy_from_slice(&fingerprint.to_le_bytes());
    bytes
}

/// What an Outcome record of `result` carries: (value, operand, result bytes); `None`
/// for an error whose refusal needs no record (an invalid key, a partition not owned,
/// a batch over the limit: each refused the same way every time).
pub fn outcome_record_fields(
    result: &OpResult,
    index: u16,
    unix_s: u32,
    fingerprint: Fingerprint,
) -> Option<(i64, i64, [u8; 16])> {
    let error = match result {
        Ok(outcome) => {
            return Some((
                outcome.value,
                0,
                encode_result(outcome, index, unix_s, fingerprint),
            ))
        }
        Err(error) => error,
    };
    let (status, value) = status_of(error);
    // An invalid key, a partition not owned: refused the same way every time (and
    // errors without a status of their own).
    if matches!(
        status,
        Status::InvalidKey | Status::NotOwned | Status::Unavailable
    ) {
        return None;
    }
    let operand = match *error {
        OpError::InvalidBounds { ceiling, .. } => ceiling,
        _ => 0,
    };
    let status = status as u8;
    Some((
        value,
        operand,
        result_bytes(0, status, index, unix_s, fingerprint),
    ))
}

/// What an idempotent record's result says, with the record's value and operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DecodedResult {
    result: OpResult,
    index: u16,
    unix_s: u32,
    /// 0: unknown (a record from before fingerprints were journaled).
    fingerprint: Fingerprint,
}

/// The result, operation index, time and batch fingerprint of an idempotent record
/// with `value` and `operand`; `None` if the result bytes are not in the layout above.
fn decode_result(value: i64, operand: i64, bytes: &[u8; 16]) -> Option<DecodedResult> {
    let flags = bytes[0];
    if flags & !(RESULT_FLAG_EXISTED | RESULT_FLAG_CLAMPED) != 0 {
        return None;
    }
    let result = match bytes[1] {
        0 => Ok(Outcome {
            value,
            existed: flags & RESULT_FLAG_EXISTED != 0,
            clamped: flags & RESULT_FLAG_CLAMPED != 0,
        }),
        _ if flags != 0 => return None,
        code => match Status::from_u8(code).ok()? {
            Status::Overflow => Err(OpError::Overflow),
            Status::BelowFloor => Err(OpError::BelowFloor { floor: value }),
            Status::AboveCeiling => Err(OpError::AboveCeiling { ceiling: value }),
            Status::InvalidBounds => Err(OpError::InvalidBounds {
                floor: value,
                ceiling: operand,
            }),
            Status::OutOfBounds => Err(OpError::OutOfBounds { value }),
            Status::WrongKind => Err(OpError::WrongKind),
            Status::StorageFull => Err(OpError::StorageFull),
            _ => return None,
        },
    };
    Some(DecodedResult {
        result,
        index: u16::from_le_bytes([bytes[2], bytes[3]]),
        unix_s: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
        fingerprint: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    })
}

/// Wall-clock seconds since the epoch, as records carry them.
pub fn unix_now_s() -> u32 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    u32::try_from(seconds).unwrap_or(u32::MAX)
}

/// What a core's journal held for one idempotency key at start: the outcome of every
/// operation of the batch this core journaled, by index (sorted).
#[derive(Debug, Default)]
pub struct Recovered {
    unix_s: u32,
    /// The batch's fingerprint, 0 if its records predate journaled fingerprints.
    fingerprint: Fingerprint,
    outcomes: Vec<(u16, OpResult)>,
}

impl Recovered {
    /// The recorded result of operation `index`, if it was journaled.
    pub fn outcome(&self, index: u16) -> Option<OpResult> {
        let found = self.outcomes.binary_search_by_key(&index, |(i, _)| *i);
        found.ok().map(|at| self.outcomes[at].1)
    }

    /// Adds `other`'s outcomes (another share of the same batch), keeping them sorted.
    fn merge(&mut self, other: Recovered) {
        self.unix_s = self.unix_s.max(other.unix_s);
        self.outcomes.extend(other.outcomes);
        self.outcomes.sort_by_key(|(index, _)| *index);
        self.outcomes.dedup_by_key(|(index, _)| *index);
    }
}

/// A share of a durable idempotent batch whose records are not known durable: the
/// LSN of its last record and its operations' results ("Unsettled batches").
#[derive(Debug)]
pub struct InDoubt {
    pub lsn: Lsn,
    pub outcomes: Recovered,
}

/// A minimal "something happened" signal for one waiting task.
#[derive(Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wakes the waiter, or makes its next wait return at once.
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves once notified since the last wait.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |context| {
            if self.pending.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        })
    }
}

/// One log line repeated while a condition lasts (a degraded journal, failing
/// checkpoints, a full idempotency table): said when it begins, then at most once per
/// interval, so a condition that lasts does not flood the log.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// When the line was last said, while the condition lasts.
    said: Cell<Option<Instant>>,
}

/// What [`LogThrottle::check`] allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Say {
    /// The condition just began: say it.
    First,
    /// The interval passed since it was last said: say it again.
    Again,
    /// Said less than an interval ago: keep quiet.
    Quiet,
}

impl LogThrottle {
    /// Whether to say the line at `now`; counts as said unless [`Say::Quiet`].
    pub fn check(&self, now: Instant, interval: Duration) -> Say {
        let say = match self.said.get() {
            None => Say::First,
            Some(said) if now.saturating_duration_since(said) >= interval => Say::Again,
            Some(_) => Say::Quiet,
        };
        if say != Say::Quiet {
            self.said.set(Some(now));
        }
        say
    }

    /// Whether the condition is on (said at least once since it last ended).
    pub fn is_on(&self) -> bool {
        self.said.get().is_some()
    }

    /// The condition ended; returns whether it had been said (then the next
    /// [`LogThrottle::check`] is [`Say::First`] again).
    pub fn end(&self) -> bool {
        self.said.take().is_some()
    }
}

/// A log line about events that can come in floods (refused connections, failed
/// accepts, bad frames): said at most once per interval, with how many of the events
/// since the last line were not said.
#[derive(Debug, Default)]
pub struct SampledLog {
    throttle: LogThrottle,
    unlogged: Cell<u64>,
}

impl SampledLog {
    /// Counts one event at `now`; `Some(unlogged)` if its line is to be said now, with
    /// the count of events not said since the last line.
    pub fn note(&self, now: Instant, interval: Duration) -> Option<u64> {
        if self.throttle.check(now, interval) == Say::Quiet {
            self.unlogged.set(self.unlogged.get() + 1);
            return None;
        }
        Some(self.unlogged.replace(0))
    }
}

/// Counters reported by the `Stats` request.
#[derive(Debug, Default)]
pub struct DurabilityStats {
    pub records: Cell<u64>,
    pub buffer_full_syncs: Cell<u64>,
    pub checkpoints: Cell<u64>,
    /// When the last checkpoint round of this process completed (`None`: none has).
    pub last_checkpoint_done: Cell<Option<Instant>>,
    /// Checkpoints that failed to write (the journal unharmed; serving went on).
    pub checkpoint_failures: Cell<u64>,
    pub recovered_records: Cell<u64>,
}

/// One core's journal and everything that waits on it.
pub struct CoreJournal {
    journal: RefCell<Journal>,
    data_dir: PathBuf,
    core: u32,
    failed: Cell<bool>,
    /// The "degraded" lines, while degraded.
    degraded_logged: LogThrottle,
    /// The last LSN appended when the journal last became (or stayed) degraded: a
    /// durable waiter at or below it that is not durable yet gets an unknown outcome.
    degraded_lsn: Cell<Lsn>,
    durable_waiters: RefCell<Vec<Waker>>,
    appended: Notify,
    stopping: Cell<bool>,
    /// Asks the checkpoint task ([`checkpoint_loop`]) to end, once its round is over.
    checkpoints_stopping: Cell<bool>,
    checkpoints_wake: Notify,
    /// The "checkpoint failed" lines, while rounds keep failing (one per
    /// [`DEGRADED_LOG_INTERVAL`] at most).
    checkpoint_failure_logged: LogThrottle,
    /// The idempotent batches journaled here, by second of their apply.
    retained: RefCell<Retained>,
    recovered: KeyMap<Recovered>,
    /// Shares of durable idempotent batches appended and not yet durable, by LSN.
    in_doubt: RefCell<VecDeque<(IdempotencyKey, InDoubt)>>,
    /// Shares that were in doubt when the journal degraded ("Unsettled batches").
    unsettled: RefCell<KeyMap<InDoubt>>,
    window_s: u64,
    /// Most journal records kept for `retained` (see `retention_lsn`).
    retained_records_max: u64,
    checkpoint_interval: Option<Duration>,
    checkpoint_journal_bytes: u64,
    last_checkpoint: Cell<Instant>,
    bytes_at_checkpoint: Cell<u64>,
    /// Per partition (index = partition): the LSN of the last record appended here.
    /// Live applies do not touch the store's applied LSN (one store write per record on
    /// the hot path); [`CoreJournal::stamp_applied`] copies these into the store before
    /// a checkpoint or a clean close, so both record how far they reflect the journal.
    appended_lsn: RefCell<Vec<Lsn>>,
    pacing: Cell<CommitPacing>,
    pub stats: DurabilityStats,
}

/// When the commit task looks again at an in-flight commit without a notice (the
/// fallback of the module doc's notices): after a share of the commits' typical
/// duration (a moving average, 1/8 weight per commit), never sooner than
/// `spin + IN_FLIGHT_POLL`. A commit slower than usual is polled every sixteenth of
/// the typical duration; one faster than half of it is noticed at the first poll, late
/// by at most that half (the disk's own latency dominates such a commit's wait anyway).
#[derive(Clone, Copy, Debug)]
struct CommitPacing {
    /// When the commit in flight was first seen in flight.
    started: Option<Instant>,
    typical: Duration,
}

impl CommitPacing {
    fn new() -> CommitPacing {
        CommitPacing {
            started: None,
            typical: COMMIT_ESTIMATE_INITIAL,
        }
    }

    /// Takes in one step of the commit task at `now`: whether a commit completed in it
    /// and whether one is in flight after it.
    fn observe(&mut self, now: Instant, completed: bool, in_flight: bool) {
        if completed {
            if let Some(started) = self.started.take() {
                let took = now.saturating_duration_since(started);
                self.typical = (self.typical * 7 + took) / 8;
            }
        }
        match (in_flight, self.started) {
            (true, None) => self.started = Some(now),
            (false, _) => self.started = None,
            (true, Some(_)) => {}
        }
    }

    /// How long to wait for a commit's notice before polling it anyway.
    fn fallback(&self) -> Duration {
        (self.typical * 4).max(NOTICE_FALLBACK_MIN)
    }

    /// How long to sleep before polling the commit in flight again (without notices).
    fn next_poll(&self, now: Instant, floor: Duration) -> Duration {
        let elapsed = self.started.map_or(Duration::ZERO, |started| {
            now.saturating_duration_since(started)
        });
        let first = self.typical / 2;
        let wait = if elapsed < first {
            first - elapsed
        } else {
            self.typical / 16
        };
        wait.max(floor)
    }
}

impl CoreJournal {
    /// Recovers core `core`'s partitions in `store`, reads back its idempotency
    /// records, and opens its journal for appending. Runs on the core's thread before
    /// it serves.
    pub fn start(
        config: &ServerConfig,
        data_dir: &Path,
        store: &mut Store,
        core: u32,
    ) -> Result<CoreJournal, JournalError> {
        let settings = &config.journal;
        let options = RecoveryOptions {
            recover_to_corruption: settings.recover_to_corruption,
        };
        let report = recover(data_dir, store, core, &options)?;
        tracing::info!(
            core,
            clean_shutdown = report.clean_shutdown,
            counters = store.counter_count(),
            partitions_restored = report.partitions_restored.len(),
            records_replayed = report.records_replayed,
            journal_records = report.journal.record_count,
            seconds = report.elapsed.as_secs_f64(),
            "recovered"
        );
        if let Some(torn) = &report.journal.torn_tail {
            tracing::warn!(
                core,
                path = %torn.path.display(),
                offset = torn.offset,
                bytes_cut = torn.bytes_cut,
                data_bytes_cut = torn.data_bytes_cut,
                "cut a torn tail: the end of a write that never completed, so never \
                 acknowledged, if a crash left it; a file cut or damaged by anything else \
                 would show here too, and the journal's reach (recorded every 5 s) is \
                 checked below it"
            );
        }
        if let Some((path, offset, reason)) = &report.journal.corruption {
            // The path is the damaged segment, or for lost newest segments the reach
            // file that shows them missing (which is intact).
            tracing::error!(
                core,
                path = %path.display(),
                offset,
                reason,
                "recovered with --recover-to-corruption: acknowledged records were lost \
                 (any records after the damage were set aside, see the lines below)"
            );
        }
        for (path, offset, reason) in &report.journal.skipped {
            tracing::warn!(
                core,
                path = %path.display(),
                offset,
                reason,
                "damage below every checkpoint skipped: nothing needed was lost, but \
                 idempotency keys journaled there are forgotten"
            );
        }
        for (partition, path, used) in &report.partitions_distrusted {
            tracing::warn!(
                core,
                partition,
                path = %path.display(),
                used = %used,
                "a file is older than other files show (rolled back or copied in?): it was \
                 not trusted, and the partition was recovered without it"
            );
        }
        for set_aside in &report.journal.set_aside {
            let covered = set_aside
                .path
                .to_str()
                .is_some_and(|path| path.ends_with(COVERED_SUFFIX));
            if covered && report.journal.corruption.is_some() {
                // The records it still holds are in the checkpoints, but after
                // --recover-to-corruption it may be the segment cut at the damage:
                // "nothing lost" would contradict the ERROR above.
                tracing::warn!(
                    core,
                    path = %set_aside.path.display(),
                    "journal segment set aside whole, every record it still holds covered \
                     by the checkpoints (kept for inspection; what was lost is in the \
                     *.corrupt files named above)"
                );
            } else if covered {
                // Intact, and every record in it is in the checkpoints already (it was
                // replayed or covered before being set aside): nothing was lost.
                tracing::warn!(
                    core,
                    path = %set_aside.path.display(),
                    "journal segment set aside whole, every record in it covered by the \
                     checkpoints (kept for inspection; nothing lost)"
                );
            } else {
                tracing::warn!(
                    core,
                    path = %set_aside.path.display(),
                    valid_records = set_aside.record_count,
                    lsn_max = set_aside.lsn_max,
                    "damaged journal file set aside (kept for inspection; the lines above say \
                     whether its records were below the checkpoints or cut)"
                );
            }
        }
        let window_s = config.idempotency_window_s;
        let (recovered, retained, records) =
            read_idempotency(data_dir, core, window_s, recovered_keys_max(config))?;
        if !recovered.is_empty() {
            tracing::info!(
                core,
                keys = recovered.len(),
                records,
                "idempotency keys recovered"
            );
        }
        let options = JournalOptions {
            next_lsn_min: report.next_lsn,
            durable_wait: Duration::from_micros(settings.durable_wait_us),
            relaxed_interval: Duration::from_millis(settings.relaxed_flush_ms),
            batch_bytes: settings.commit_bytes,
            ..JournalOptions::default()
        };
        let journal = Journal::open(data_dir, core, options)?;
        let stats = DurabilityStats::default();
        stats.recovered_records.set(report.records_replayed);
        Ok(CoreJournal {
            journal: RefCell::new(journal),
            data_dir: data_dir.to_path_buf(),
            core,
            failed: Cell::new(false),
            degraded_logged: LogThrottle::default(),
            degraded_lsn: Cell::new(0),
            durable_waiters: RefCell::new(Vec::new()),
            appended: Notify::default(),
            stopping: Cell::new(false),
            checkpoints_stopping: Cell::new(false),
            checkpoints_wake: Notify::default(),
            checkpoint_failure_logged: LogThrottle::default(),
            retained: RefCell::new(retained),
            recovered,
            in_doubt: RefCell::new(VecDeque::new()),
            unsettled: RefCell::new(KeyMap::default()),
            window_s,
            retained_records_max: config.idempotency_journal_records_max,
            checkpoint_interval: (settings.checkpoint_interval_s > 0)
                .then(|| Duration::from_secs(settings.checkpoint_interval_s)),
            checkpoint_journal_bytes: settings.checkpoint_journal_bytes,
            last_checkpoint: Cell::new(Instant::now()),
            bytes_at_checkpoint: Cell::new(0),
            appended_lsn: RefCell::new(vec![0; store.partition_count() as usize]),
            pacing: Cell::new(CommitPacing::new()),
            stats,
        })
    }

    /// Whether the journal failed for good: mutations are refused until a restart, and
    /// the store is left unclean at shutdown.
    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }

    /// Whether the journal is degraded: mutations are refused until a retry succeeds.
    pub fn is_degraded(&self) -> bool {
        self.journal.borrow().degraded().is_some()
    }

    /// Whether mutations must be refused (before they are applied); reads are served.
    pub fn refuses_mutations(&self) -> bool {
        self.is_failed() || self.is_degraded()
    }

    /// The LSN a durable answer without a record of its own waits for: every record
    /// appended so far, which it may have observed. Makes waiting relaxed records due
    /// as a durable commit, and wakes the commit task to see it.
    pub fn barrier_lsn(&self) -> Lsn {
        let lsn = self.journal.borrow_mut().hasten();
        if lsn > self.durable_lsn() {
            self.appended.notify();
        }
        lsn
    }

    /// Every record up to this LSN is on disk.
    pub fn durable_lsn(&self) -> Lsn {
        self.journal.borrow().durable_lsn()
    }

    /// The journal's commit counts since start.
    pub fn journal_stats(&self) -> tally_engine::journal::JournalStats {
        self.journal.borrow().stats()
    }

    /// What this core's journal held at start for idempotency key `key`, if it is
    /// still inside the window.
    pub fn recovered(&self, key: IdempotencyKey) -> Option<&Recovered> {
        if self.recovered.is_empty() {
            return None;
        }
        let entry = self.recovered.get(&key)?;
        let age_s = u64::from(unix_now_s().saturating_sub(entry.unix_s));
        (age_s < self.window_s).then_some(entry)
    }

    /// Remembers the results of a share of the durable idempotent batch `key` whose
    /// last record is `lsn`, until that is durable ("Unsettled batches").
    pub fn note_in_doubt(
        &self,
        key: IdempotencyKey,
        lsn: Lsn,
        unix_s: u32,
        outcomes: Vec<(u16, OpResult)>,
    ) {
        debug_assert!(outcomes.is_sorted_by_key(|(index, _)| *index));
        let outcomes = Recovered {
            unix_s,
            fingerprint: 0,
            outcomes,
        };
        self.in_doubt
            .borrow_mut()
            .push_back((key, InDoubt { lsn, outcomes }));
    }

    /// What this core kept of the unsettled batch `key` ("Unsettled batches"), if
    /// anything, inside the window.
    pub fn unsettled(&self, key: IdempotencyKey) -> Option<std::cell::Ref<'_, InDoubt>> {
        let unsettled = self.unsettled.borrow();
        let entry = std::cell::Ref::filter_map(unsettled, |map| map.get(&key)).ok()?;
        let age_s = u64::from(unix_now_s().saturating_sub(entry.outcomes.unix_s));
        (age_s < self.window_s).then_some(entry)
    }

    /// Drops the shares no longer in doubt; on a degraded journal, keeps those still
    /// in doubt as unsettled, and forgets unsettled ones past the window.
    fn settle_in_doubt(&self) {
        let durable = self.journal.borrow().durable_lsn();
        let mut in_doubt = self.in_doubt.borrow_mut();
        while in_doubt
            .front()
            .is_some_and(|(_, share)| share.lsn <= durable)
        {
            in_doubt.pop_front();
        }
        if self.failed.get() {
            // Every mutation is refused until a restart: nothing will settle here.
            in_doubt.clear();
            self.unsettled.borrow_mut().clear();
            return;
        }
        if in_doubt.is_empty() || !self.is_degraded() {
            return;
        }
        let now_s = unix_now_s();
        let mut unsettled = self.unsettled.borrow_mut();
        unsettled.retain(|_, share| {
            u64::from(now_s.saturating_sub(share.outcomes.unix_s)) < self.window_s
        });
        for (key, share) in in_doubt.drain(..) {
            match unsettled.entry(key) {
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    vacant.insert(share);
                }
                std::collections::hash_map::Entry::Occupied(mut occupied) => {
                    let kept = occupied.get_mut();
                    kept.lsn = kept.lsn.max(share.lsn);
                    kept.outcomes.merge(share.outcomes);
                }
            }
        }
    }

    /// The fingerprint and time of every idempotency key recovered at start whose
    /// records carry one, for [`crate::idempotency::RecoveredBatches`].
    pub fn recovered_fingerprints(&self) -> Vec<(IdempotencyKey, Fingerprint, u32)> {
        self.recovered
            .iter()
            .filter(|(_, entry)| entry.fingerprint != 0)
            .map(|(&key, entry)| (key, entry.fingerprint, entry.unix_s))
            .collect()
    }

    /// Appends the records of one batch; returns the first and last LSN given (0, 0
    /// for none), or `None` if the journal failed (then the caller answers those
    /// mutations `Unavailable`). Never awaits, so records keep the store's order.
    pub fn append_all<'r>(
        &self,
        records: impl Iterator<Item = Record<'r>>,
        durability: Durability,
    ) -> Option<(Lsn, Lsn)> {
        if self.refuses_mutations() {
            return None;
        }
        let mut journal = self.journal.borrow_mut();
        let mut appended_lsn = self.appended_lsn.borrow_mut();
        let mut first = 0;
        let mut last = 0;
        let mut count = 0;
        for record in records {
            match append_one(&mut journal, &record, durability, &self.stats) {
                Ok(lsn) => {
                    appended_lsn[record.partition as usize] = lsn;
                    last = lsn;
                    if first == 0 {
                        first = lsn;
                    }
                }
                Err(error) => {
                    drop(journal);
                    drop(appended_lsn);
                    // The batch is applied in memory already: even a retryable failure
                    // leaves the store holding what the journal does not (module doc).
                    self.fail(&error);
                    return None;
                }
            }
            count += 1;
        }
        drop(journal);
        if count > 0 {
            self.stats.records.set(self.stats.records.get() + count);
            self.appended.notify();
        }
        debug_assert!(first <= last);
        Some((first, last))
    }

    /// Remembers that an idempotent batch's records start at `lsn`, so checkpoints keep
    /// its segment for the window.
    pub fn retain(&self, lsn: Lsn, unix_s: u32) {
        self.retained.borrow_mut().push(lsn, unix_s);
    }

    /// The lowest LSN an idempotency record inside the window still needs, keeping
    /// at most `retained_records_max` records of journal for it.
    fn retention_lsn(&self) -> Option<Lsn> {
        let appended = self.journal.borrow().appended_lsn();
        let bounds = RetentionBounds {
            now_s: unix_now_s(),
            window_s: self.window_s,
            appended_lsn: appended,
            records_max: self.retained_records_max,
        };
        bounds.prune(&mut self.retained.borrow_mut())
    }

    /// Resolves with `Ok` once `lsn` is durable, `Err` if the journal failed first or
    /// became degraded while `lsn` was appended and not yet durable (however late the
    /// wait starts: a held reply waits its turn).
    pub fn wait_durable(&self, lsn: Lsn) -> impl Future<Output = Result<(), ()>> + '_ {
        std::future::poll_fn(move |context| {
            if self.journal.borrow().durable_lsn() >= lsn {
                return Poll::Ready(Ok(()));
            }
            if self.failed.get() || lsn <= self.degraded_lsn.get() {
                return Poll::Ready(Err(()));
            }
            self.durable_waiters
                .borrow_mut()
                .push(context.waker().clone());
            Poll::Pending
        })
    }

    fn wake_waiters(&self) {
        self.settle_in_doubt();
        let waiters = std::mem::take(&mut *self.durable_waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    fn fail(&self, error: &JournalError) {
        if !self.failed.replace(true) {
            tracing::error!(core = self.core, %error, "journal failed: durable mutations are refused until restart; reads are still served");
        }
        self.wake_waiters();
    }

    /// Takes in a journal error: the journal says whether it failed or is degraded.
    fn on_error(&self, error: &JournalError, now: Instant) {
        if self.failed.get() {
            // Failed for good already (logged then): a later error of the engine's
            // journal, degraded or not, changes nothing until a restart.
            return;
        }
        let journal = self.journal.borrow();
        if journal.failure().is_some() || journal.degraded().is_none() {
            drop(journal);
            self.fail(error);
            return;
        }
        let retries = journal.stats().retry_count;
        self.degraded_lsn
            .set(self.degraded_lsn.get().max(journal.appended_lsn()));
        drop(journal);
        match self.degraded_logged.check(now, DEGRADED_LOG_INTERVAL) {
            Say::First => tracing::error!(
                core = self.core,
                %error,
                "journal degraded: mutations are refused (reads still served) and the commit is \
                 retried every second until it succeeds"
            ),
            Say::Again => tracing::warn!(
                core = self.core,
                %error,
                retries,
                "journal still degraded: the retry failed again"
            ),
            Say::Quiet => {}
        }
        self.wake_waiters();
    }

    /// Logs the end of a degraded stay, if one just ended.
    fn note_recovered(&self) {
        // A core that failed for good refuses mutations until a restart, whatever its
        // engine journal's retries achieve: "accepted again" would be false.
        if self.degraded_logged.is_on() && !self.is_degraded() && !self.failed.get() {
            self.degraded_logged.end();
            let retries = self.journal.borrow().stats().retry_count;
            tracing::warn!(
                core = self.core,
                retries,
                "journal recovered: a retry is durable, mutations are accepted again"
            );
        }
    }

    /// Submits a due commit and reaps a finished one; wakes durable waiters on
    /// progress. Returns whether a commit is in flight afterwards.
    fn step(&self, now: Instant) -> bool {
        let mut journal = self.journal.borrow_mut();
        let polled = journal.poll().and_then(|durable| {
            journal.submit_if_due(now)?;
            Ok(durable)
        });
        let in_flight = journal.commit_in_flight();
        drop(journal);
        let mut pacing = self.pacing.get();
        pacing.observe(now, matches!(polled, Ok(Some(_))), in_flight);
        self.pacing.set(pacing);
        match polled {
            Ok(Some(_)) => {
                self.note_recovered();
                self.wake_waiters();
            }
            Ok(None) => {}
            Err(error) => self.on_error(&error, now),
        }
        in_flight && !self.failed.get()
    }

    /// Has the kernel tell this core when each commit finishes: a Unix socket pair
    /// whose one end the journal's ring sends a notice to after each fdatasync, and
    /// whose other end, returned, the commit task reads. `None` (and a log line) if the
    /// pair cannot be made: the task then polls on a timer.
    fn commit_notices(&self) -> Option<glommio::net::UnixStream> {
        let pair = std::os::unix::net::UnixStream::pair().and_then(|(reader, writer)| {
            writer.set_nonblocking(true)?;
            Ok((reader, writer))
        });
        let (reader, writer) = match pair {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(core = self.core, %error, "no commit notices; polling on a timer");
                return None;
            }
        };
        self.journal
            .borrow_mut()
            .notify_completions(std::os::fd::OwnedFd::from(writer));
        // SAFETY: `reader` is a connected Unix stream socket that nothing else owns;
        // `into_raw_fd` gives its ownership to glommio's stream.
        Some(unsafe { glommio::net::UnixStream::from_raw_fd(reader.into_raw_fd()) })
    }

    fn checkpoint_due(&self, now: Instant) -> bool {
        let grown = self.journal.borrow().stats().bytes_written - self.bytes_at_checkpoint.get();
        let late = self
            .checkpoint_interval
            .and_then(|interval| self.last_checkpoint.get().checked_add(interval))
            .is_some_and(|due| now >= due);
        !self.refuses_mutations() && (late || grown >= self.checkpoint_journal_bytes)
    }

    /// Records in the store, per partition, the LSN of the last record appended here:
    /// every record up to it was applied first (a batch is applied, then journaled,
    /// without an await), so the store reflects it. A checkpoint or clean close then
    /// carries that LSN, recovery skips the records at or below it, and [`Self::finish`]
    /// sees which partitions changed since their checkpoint.
    pub fn stamp_applied(&self, store: &mut Store) {
        for (partition, &lsn) in self.appended_lsn.borrow().iter().enumerate() {
            let partition = partition as u32;
            if lsn > store.applied_lsn(partition) && store.owns(partition) {
                store.set_applied_lsn(partition, lsn);
            }
        }
    }

    /// Takes in the end of a checkpoint round: counts and logs it.
    fn checkpoint_done(&self, started: Instant, result: &Result<Round, JournalError>) {
        let (report, longest_copy) = match result {
            Ok(round) => (&round.report, round.longest_copy),
            Err(error) => {
                if self.refuses_mutations() {
                    // The journal itself failed or degraded under the round: the commit
                    // task has handled and logged that.
                    tracing::warn!(core = self.core, %error, "checkpoint abandoned");
                    return;
                }
                // A checkpoint file could not be written (a full disk, say): the
                // previous checkpoints stand and no segment was released past them, so
                // the journal still holds everything; writes go on.
                self.stats
                    .checkpoint_failures
                    .set(self.stats.checkpoint_failures.get() + 1);
                match self
                    .checkpoint_failure_logged
                    .check(Instant::now(), DEGRADED_LOG_INTERVAL)
                {
                    Say::First => tracing::error!(
                        core = self.core,
                        %error,
                        "checkpoint failed: writes go on, and the journal keeps every record \
                         until a checkpoint succeeds (tried again at the next interval)"
                    ),
                    Say::Again => tracing::error!(
                        core = self.core,
                        %error,
                        failures = self.stats.checkpoint_failures.get(),
                        "checkpoints still failing: writes go on, and the journal keeps every \
                         record until one succeeds"
                    ),
                    Say::Quiet => {}
                }
                return;
            }
        };
        if self.checkpoint_failure_logged.end() {
            tracing::warn!(core = self.core, "checkpoints succeed again");
        }
        self.stats.checkpoints.set(self.stats.checkpoints.get() + 1);
        self.stats.last_checkpoint_done.set(Some(Instant::now()));
        tracing::info!(
            core = self.core,
            partitions_written = report.partitions.len(),
            partitions_unchanged = report.partitions_unchanged,
            positions_advanced = report.positions_advanced.len(),
            segments_released = report.segments_released,
            seconds = started.elapsed().as_secs_f64(),
            longest_copy_ms = longest_copy.as_secs_f64() * 1e3,
            "checkpoint"
        );
    }

    /// Makes every record appended so far durable (relaxed ones included, see
    /// [`Self::barrier_lsn`]) and returns the last one's LSN; an error if the journal
    /// failed or degraded first.
    async fn make_appended_durable(&self) -> Result<Lsn, JournalError> {
        let lsn = self.barrier_lsn();
        match self.wait_durable(lsn).await {
            // A failed core's store may hold mutations its journal never got (an
            // append failed inside a batch): nothing it holds may be checkpointed.
            Ok(()) if !self.failed.get() => Ok(lsn),
            Ok(()) => Err(JournalError::Failed {
                reason: format!("the journal of core {} failed", self.core),
            }),
            Err(()) => Err(JournalError::Failed {
                reason: format!(
                    "the journal of core {} failed or degraded before LSN {lsn} was durable",
                    self.core
                ),
            }),
        }
    }

    /// Asks the checkpoint task to end once its round (if any) is over. The commit
    /// task must run until then: the round waits for records to be durable.
    pub fn stop_checkpoints(&self) {
        self.checkpoints_stopping.set(true);
        self.checkpoints_wake.notify();
    }

    /// Asks the commit task to end (after the last request was answered).
    pub fn stop(&self) {
        self.stopping.set(true);
        self.appended.notify();
    }

    /// At graceful shutdown: makes every record durable and checkpoints the
    /// partitions changed since their last checkpoint (a partition checkpoint costs
    /// several fsyncs; an unchanged one is skipped, so an idle partition's older
    /// checkpoint keeps its segments until the next periodic checkpoint).
    ///
    /// A partition changed if its applied LSN (stamped from the appends, see
    /// [`Self::stamp_applied`]) is above its checkpoint's covered LSN. (Before the
    /// stamp, live appends left the applied LSN where recovery had put it, so every
    /// partition changed only since the restart looked unchanged: its checkpoint was
    /// skipped and its journal kept. Nothing was lost, since replay is by value and
    /// segments are released by checkpoint LSNs only, but the journal grew across
    /// graceful restarts and every restart replayed it.)
    ///
    /// Any error here (a degraded journal whose last retry fails included) marks the
    /// core failed, so its store is left unclean (see the module doc, "Failure").
    pub fn finish(&self, store: &mut Store) -> Result<(), JournalError> {
        if self.failed.get() {
            return Err(JournalError::Failed {
                reason: "the journal failed while serving; no final checkpoint".to_string(),
            });
        }
        self.finish_checkpoint(store).inspect_err(|error| {
            // The journal's own sync failing is a journal failure; a checkpoint file
            // that cannot be written is not: the journal keeps every record, and the
            // store can still be closed clean.
            let journal = self.journal.borrow();
            let journal_broke = journal.failure().is_some() || journal.degraded().is_some();
            drop(journal);
            if journal_broke {
                self.fail(error);
            }
        })
    }

    /// The last round of checkpoints before a clean close: the same rule as a periodic
    /// one (`checkpoint_core`: the changed partitions, and the empty ones without a
    /// checkpoint only if a release needs them, so a new directory's first stop is fast).
    fn finish_checkpoint(&self, store: &mut Store) -> Result<(), JournalError> {
        self.stamp_applied(store);
        let started = Instant::now();
        let retention = self.retention_lsn();
        let mut journal = self.journal.borrow_mut();
        let report = checkpoint_core(&self.data_dir, store, &mut journal, self.core, retention)?;
        let durable_lsn = journal.durable_lsn();
        drop(journal);
        tracing::info!(
            core = self.core,
            durable_lsn,
            partitions_written = report.partitions.len(),
            partitions_unchanged = report.partitions_unchanged,
            positions_advanced = report.positions_advanced.len(),
            segments_released = report.segments_released,
            seconds = started.elapsed().as_secs_f64(),
            "final checkpoint"
        );
        Ok(())
    }
}

fn append_one(
    journal: &mut Journal,
    record: &Record<'_>,
    durability: Durability,
    stats: &DurabilityStats,
) -> Result<Lsn, JournalError> {
    match journal.append(record, durability) {
        Err(JournalError::BufferFull { .. }) => {
            // A full 4 MiB buffer behind a commit in flight: the disk is far behind.
            // Block this core until it catches up (back-pressure), then retry once.
            stats
                .buffer_full_syncs
                .set(stats.buffer_full_syncs.get() + 1);
            journal.sync()?;
            journal.append(record, durability)
        }
        other => other,
    }
}

/// What the journal gave back for idempotency at start: outcomes by key, the
/// retention list, and how many records were kept.
type IdempotencyScan = (KeyMap<Recovered>, Retained, u64);

/// Where the idempotent batches journaled on a core start, for checkpoints to keep
/// their segments: runs of batches, oldest first, each as (first LSN of its first
/// batch, first LSN of its last batch, latest apply time in unix seconds). A batch
/// applied no later than the newest run's time joins that run (its LSN is higher, and
/// its window ends no later), so a core tracks at most one run per second of the window
/// however many batches it journals, and no batch is ever dropped early.
/// Invariant: runs are ordered by LSN and by time, both strictly.
#[derive(Debug, Default)]
struct Retained {
    runs: VecDeque<(Lsn, Lsn, u32)>,
}

impl Retained {
    /// A batch whose records start at `lsn` (above every LSN pushed before), applied
    /// at `unix_s`.
    fn push(&mut self, lsn: Lsn, unix_s: u32) {
        match self.runs.back_mut() {
            Some((_, last, run_s)) if unix_s <= *run_s => {
                debug_assert!(lsn > *last);
                *last = lsn;
            }
            _ => self.runs.push_back((lsn, lsn, unix_s)),
        }
    }
}

/// What an idempotent batch's journal records are kept for: the window, within at
/// most `records_max` records behind the last appended one.
struct RetentionBounds {
    now_s: u32,
    window_s: u64,
    appended_lsn: Lsn,
    records_max: u64,
}

impl RetentionBounds {
    /// Drops the runs of `retained` whose batches are all out of bounds (window passed,
    /// or starting more than `records_max` records behind the last append), and trims
    /// the oldest run left to the record bound; the lowest LSN it still needs.
    fn prune(&self, retained: &mut Retained) -> Option<Lsn> {
        let floor = self.appended_lsn.saturating_sub(self.records_max);
        while let Some(&(_, last, unix_s)) = retained.runs.front() {
            let expired = u64::from(self.now_s.saturating_sub(unix_s)) >= self.window_s;
            if !expired && last >= floor {
                break;
            }
            retained.runs.pop_front();
        }
        let (first, _, _) = retained.runs.front_mut()?;
        *first = (*first).max(floor);
        Some(*first)
    }
}

/// The most idempotency keys one core recovers at start. A core's journal holds the
/// records of every batch with an operation it owns, whichever core is the key's home,
/// and each home core's table holds at most `idempotency_entries_max` keys inside the
/// window, recovered ones included (`idempotency.rs`); so every core's journal holds
/// at most that many per core (twice that across a core-count change, whose set-aside
/// journals are read too). Only a lowered limit can leave more: the oldest go.
fn recovered_keys_max(config: &ServerConfig) -> usize {
    config
        .idempotency_entries_max
        .saturating_mul(config.cores.max(1))
        .saturating_mul(2)
}

/// Reads core `core`'s journal for idempotency records inside the window, after the
/// journals a core-count change set aside (every old core's, as the batches of a
/// retry sent across the change may now be split differently between the cores).
fn read_idempotency(
    data_dir: &Path,
    core: u32,
    window_s: u64,
    keys_max: usize,
) -> Result<IdempotencyScan, JournalError> {
    let mut scan = IdempotencyScanner {
        now_s: unix_now_s(),
        window_s,
        keys_max,
        recovered: KeyMap::default(),
        retained: Retained::default(),
        own_keys: KeySet::default(),
        over_limit: false,
        kept: 0,
    };
    for dir in crate::layout::previous_journals_in_window(data_dir, window_s) {
        let scanned = JournalReader::open_dir(&dir)
            .and_then(|mut reader| scan.read(&mut reader, core, false));
        if let Err(error) = scanned {
            // A set-aside journal is read for idempotency only: damage there forgets
            // the keys past it, and must not stop the server.
            tracing::warn!(
                core,
                dir = %dir.display(),
                %error,
                "could not read all of a journal set aside by a core-count change: \
                 idempotency keys journaled past this point are forgotten"
            );
        }
    }
    // A journal without segments holds nothing: no reader needed.
    if !list_segments(&journal_dir(data_dir, core))?.is_empty() {
        let mut reader = JournalReader::open(data_dir, core)?;
        scan.read(&mut reader, core, true)?;
    }
    scan.forget_oldest(core);
    let IdempotencyScanner {
        mut recovered,
        retained,
        kept,
        ..
    } = scan;
    for entry in recovered.values_mut() {
        entry.outcomes.sort_by_key(|(index, _)| *index);
        entry.outcomes.dedup_by_key(|(index, _)| *index);
    }
    Ok((recovered, retained, kept))
}

/// The idempotency records read so far at start.
struct IdempotencyScanner {
    now_s: u32,
    window_s: u64,
    keys_max: usize,
    recovered: KeyMap<Recovered>,
    /// (first LSN, unix seconds) of each batch in this core's own journal.
    retained: Retained,
    /// The keys with a record in this core's own journal.
    own_keys: KeySet,
    /// Whether `keys_max` was reached (logged once).
    over_limit: bool,
    kept: u64,
}

impl IdempotencyScanner {
    /// Takes in every idempotency record of `reader` inside the window; `own`: the
    /// reader is this core's journal, whose segments checkpoints must retain.
    fn read(
        &mut self,
        reader: &mut JournalReader,
        core: u32,
        own: bool,
    ) -> Result<(), JournalError> {
        while let Some(logged) = reader.next_record()? {
            let Some(Idempotency { key, result }) = logged.record.idempotency else {
                continue;
            };
            let record = &logged.record;
            let Some(decoded) = decode_result(record.value, record.operand, &result) else {
                tracing::warn!(
                    core,
                    lsn = logged.lsn,
                    "idempotency record with an unknown result layout: ignored"
                );
                continue;
            };
            if u64::from(self.now_s.saturating_sub(decoded.unix_s)) >= self.window_s {
                continue;
            }
            if !self.recovered.contains_key(&key)
                && self.recovered.len() >= self.keys_max.saturating_mul(2)
            {
                self.forget_oldest(core);
            }
            // The first record of each key in this core's own journal pins its segment
            // (a key first seen in a set-aside journal may have more records here).
            if own && self.own_keys.insert(key) {
                self.retained.push(logged.lsn, decoded.unix_s);
            }
            let entry = self.recovered.entry(key).or_default();
            entry.unix_s = entry.unix_s.max(decoded.unix_s);
            if entry.fingerprint == 0 {
                entry.fingerprint = decoded.fingerprint;
            }
            entry.outcomes.push((decoded.index, decoded.result));
            self.kept += 1;
        }
        Ok(())
    }

    /// Keeps the newest `keys_max` keys (the ones retries are likeliest for: the
    /// batches in flight at a crash), if there are more, and says so once.
    fn forget_oldest(&mut self, core: u32) {
        if self.recovered.len() <= self.keys_max {
            return;
        }
        if !self.over_limit {
            self.over_limit = true;
            tracing::warn!(
                core,
                keys = self.keys_max,
                "more idempotency keys in the journal than can be recovered (was \
                 --idempotency-max-keys lowered?): the oldest are forgotten, so their \
                 retries would apply again"
            );
        }
        let mut ages: Vec<u32> = self.recovered.values().map(|entry| entry.unix_s).collect();
        let drop_count = ages.len() - self.keys_max;
        let (_, &mut cutoff, _) = ages.select_nth_unstable(drop_count - 1);
        // Every key older than the cutoff goes, then as many of its second as needed.
        self.recovered.retain(|_, entry| entry.unix_s >= cutoff);
        let mut extra = self.recovered.len() - self.keys_max;
        self.recovered.retain(|_, entry| {
            let drop = extra > 0 && entry.unix_s == cutoff;
            extra -= usize::from(drop);
            !drop
        });
    }
}

/// The group-commit task of one core (see the module doc); also runs the periodic
/// checkpoints. Ends after [`CoreJournal::stop`].
pub async fn commit_loop(core: Rc<Core>) {
    let journal = &core.journal;
    let spin = Duration::from_micros(core.config.spin_before_park_us);
    let mut notices = journal.commit_notices();
    let mut scratch = [0u8; 64];
    while !journal.stopping.get() {
        let now = Instant::now();
        if journal.step(now) {
            // Wait for the commit with the executor parked: the fdatasync runs on an
            // io_uring worker thread pinned to this core's CPU, and a spinning executor
            // keeps it off that CPU for a whole scheduler slice (~8 ms measured).
            let pacing = journal.pacing.get();
            let Some(reader) = notices.as_mut() else {
                glommio::timer::sleep(pacing.next_poll(now, spin + IN_FLIGHT_POLL)).await;
                continue;
            };
            // The kernel's notices wake the task as the commit's write and then its
            // fdatasync finish; the timer only covers a commit whose notice never comes
            // (a failed write cancels it). Once the write has finished, the next commit
            // may go while the fdatasync runs: then an append, or the deadline of the
            // records waiting, ends the wait too.
            let next_commit = {
                let journal = journal.journal.borrow();
                journal.can_submit().then(|| journal.next_deadline())
            };
            let noticed = futures_lite::future::or(
                futures_lite::future::or(async { Some(reader.read(&mut scratch).await) }, async {
                    glommio::timer::sleep(pacing.fallback()).await;
                    None
                }),
                async {
                    match next_commit {
                        None => std::future::pending::<()>().await,
                        Some(Some(due)) => {
                            glommio::timer::sleep(due.saturating_duration_since(now)).await
                        }
                        Some(None) => journal.appended.wait().await,
                    }
                    None
                },
            )
            .await;
            if let Some(Ok(0) | Err(_)) = noticed {
                tracing::warn!(
                    core = core.index,
                    "commit notices stopped; polling on a timer"
                );
                notices = None;
            }
            continue;
        }
        let deadline = journal.journal.borrow().next_deadline();
        let wait = match deadline {
            Some(due) => due.saturating_duration_since(now),
            None => IDLE_CHECK,
        };
        if wait.is_zero() {
            continue;
        }
        futures_lite::future::or(journal.appended.wait(), glommio::timer::sleep(wait)).await;
    }
}

/// One task per core: runs a checkpoint round ([`checkpoint_round`]) whenever one is
/// due (`--checkpoint-interval-s`, `--checkpoint-journal-bytes`), until
/// [`CoreJournal::stop_checkpoints`]. The final checkpoint at shutdown is
/// [`CoreJournal::finish`]'s, after this task ended.
pub async fn checkpoint_loop(core: Rc<Core>) {
    let journal = &core.journal;
    while !journal.checkpoints_stopping.get() {
        let now = Instant::now();
        if journal.checkpoint_due(now) {
            journal.last_checkpoint.set(now);
            journal
                .bytes_at_checkpoint
                .set(journal.journal.borrow().stats().bytes_written);
            let result = checkpoint_round(&core).await;
            journal.checkpoint_done(now, &result);
            continue;
        }
        futures_lite::future::or(
            journal.checkpoints_wake.wait(),
            glommio::timer::sleep(IDLE_CHECK),
        )
        .await;
    }
}

/// One checkpoint round of the core's partitions that changed since their last
/// checkpoint (the protocol of `tally_engine::journal::checkpoint`), without stopping
/// the core for the file system: the core copies one partition at a time into memory
/// (its only pause, as long as a copy of that partition takes), and the blocking
/// thread pool does every file system call, the writes and syncs of the copy, the
/// renames, the position moves and the releases, while the core serves requests.
///
/// Why each checkpoint covers what it claims: the copy of partition `p` is taken
/// between two awaits, when every record appended so far has been applied and every
/// applied mutation appended (a batch is applied, then journaled, without an await).
/// So with `L` the last LSN appended at the copy, the copy reflects every record of
/// `p` up to `L` and none after it, and `L` is its covered LSN. The copy is written
/// only once `L` is durable: a checkpoint never reflects a record the journal could
/// lose, so LSNs are never reused below one. An unchanged partition's position moves
/// to an `L` taken when it is seen unchanged (no record of it appended since its
/// checkpoint), and only once that `L` is durable.
async fn checkpoint_round(core: &Core) -> Result<Round, JournalError> {
    let journal = &core.journal;
    let data_dir = Arc::new(journal.data_dir.clone());
    let index = journal.core;
    let retention = journal.retention_lsn();
    let owned = Arc::new(core.store.borrow().owned_partitions().to_vec());
    let survey = {
        let (data_dir, owned) = (Arc::clone(&data_dir), Arc::clone(&owned));
        off_core(move || checkpoint::survey(&data_dir, &owned, index, retention)).await?
    };
    let plan = {
        let mut store = core.store.borrow_mut();
        journal.stamp_applied(&mut store);
        checkpoint::plan_round(&store, &survey, journal.journal.borrow().appended_lsn())
    };
    let mut round = Round {
        report: CheckpointReport {
            partitions_unchanged: plan.unchanged,
            ..CheckpointReport::default()
        },
        longest_copy: Duration::ZERO,
    };
    let report = &mut round.report;
    let mut buffers = Vec::new();
    let mut written = Ok(());
    for partition in plan.write {
        if journal.refuses_mutations() {
            // Failed: the store may hold mutations the journal never got, which a copy
            // would make durable (a retry of their batch would then apply them twice).
            // Degraded: what it holds is not durable. Either way, no more copies.
            written = Err(JournalError::Failed {
                reason: format!(
                    "the journal of core {index} failed or degraded during the checkpoint round"
                ),
            });
            break;
        }
        if journal.checkpoints_stopping.get() {
            // The server is stopping: its final round, right after this one, writes
            // what is left, so the stop does not wait for this round's remainder.
            break;
        }
        let copy_started = Instant::now();
        let snapshot = {
            let mut store = core.store.borrow_mut();
            journal.stamp_applied(&mut store);
            store.snapshot_partition(partition, buffers)
        }
        .map_err(|source| JournalError::Engine {
            action: "checkpoint partition",
            source,
        })?;
        round.longest_copy = round.longest_copy.max(copy_started.elapsed());
        let covered = match journal.make_appended_durable().await {
            Ok(lsn) => lsn,
            Err(error) => {
                written = Err(error);
                break;
            }
        };
        let data_dir = Arc::clone(&data_dir);
        let (snapshot, result) = off_core(move || {
            let result = checkpoint::write_snapshot(&data_dir, &snapshot, covered);
            (snapshot, result)
        })
        .await;
        buffers = snapshot.into_buffers();
        match result {
            Ok(info) => report.partitions.push(info),
            Err(error) => {
                written = Err(error);
                break;
            }
        }
    }
    // Whatever happened, the renames done so far are made durable (as the engine's
    // `write_checkpoints` does), so the next round does not depend on them.
    let finished = {
        let (data_dir, done) = (Arc::clone(&data_dir), report.partitions.clone());
        off_core(move || checkpoint::finish_written(&data_dir, &done)).await
    };
    written?;
    finished?;
    if journal.checkpoints_stopping.get() {
        return Ok(round);
    }
    let advance: Vec<CheckpointInfo> = {
        let mut store = core.store.borrow_mut();
        journal.stamp_applied(&mut store);
        plan.advance
            .into_iter()
            .filter(|info| checkpoint::still_unchanged(&store, info))
            .collect()
    };
    if !advance.is_empty() {
        let covered = journal.make_appended_durable().await?;
        report.positions_advanced = off_core(move || {
            advance
                .iter()
                .map(|info| checkpoint::advance_position(info, covered))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    }
    // The retention taken now, not at the start of the round: an idempotent batch
    // journaled meanwhile must keep its segment (its LSN may lie below the covered LSNs
    // of this round's copies). One journaled after this call lies above every covered
    // LSN of the round, so no release below can reach it.
    let retention = journal.retention_lsn();
    report.segments_released =
        off_core(move || checkpoint::release_segments(&data_dir, &owned, index, retention)).await?;
    Ok(round)
}

/// What a checkpoint round did, and the longest the core paused for it (copying one
/// partition).
struct Round {
    report: CheckpointReport,
    longest_copy: Duration,
}

/// Runs blocking file system work on the core's blocking thread pool, so that the core
/// goes on serving; a panic there is raised again here, as if the core had run it.
async fn off_core<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    let outcome = glommio::executor()
        .spawn_blocking(move || std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)))
        .await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampled_line_is_said_once_per_interval_with_the_count_not_said() {
        let log = SampledLog::default();
        let interval = Duration::from_secs(1);
        let start = Instant::now();
        assert_eq!(log.note(start, interval), Some(0));
        for millis in 1..100 {
            assert_eq!(
                log.note(start + Duration::from_millis(millis), interval),
                None
            );
        }
        assert_eq!(log.note(start + interval, interval), Some(99));
        assert_eq!(log.note(start + interval, interval), None);
    }

    /// Idempotent batches keep their journal for the window, but never more than the
    /// record bound behind the last append, so heavy idempotent traffic cannot grow
    /// the journal without bound.
    #[test]
    fn retention_ends_at_the_window_or_the_record_bound() {
        let mut retained = Retained::default();
        for (lsn, unix_s) in [(10, 1_000), (500, 1_100), (900, 1_200), (1_000, 1_200)] {
            retained.push(lsn, unix_s);
        }
        let mut bounds = RetentionBounds {
            now_s: 1_250,
            window_s: 600,
            appended_lsn: 1_000,
            records_max: 10_000,
        };
        assert_eq!(
            bounds.prune(&mut retained),
            Some(10),
            "all inside both bounds"
        );
        bounds.appended_lsn = 10_600;
        assert_eq!(
            bounds.prune(&mut retained),
            Some(900),
            "two fell behind the bound"
        );
        bounds.appended_lsn = 10_950;
        assert_eq!(
            bounds.prune(&mut retained),
            Some(950),
            "trimmed to the bound"
        );
        bounds.now_s = 1_800;
        assert_eq!(bounds.prune(&mut retained), None, "the window passed");
        assert!(retained.runs.is_empty());
    }

    /// However many batches a core journals, it tracks one run per second of their
    /// apply, and keeps the first LSN of every batch still inside the window: none is
    /// dropped early (a fixed cap on batches once dropped the oldest ones, whose
    /// segments a checkpoint then released).
    #[test]
    fn retention_tracks_runs_per_second_and_drops_no_batch_inside_the_window() {
        let mut retained = Retained::default();
        for lsn in 1..=3_000_000u64 {
            retained.push(lsn, 1_000 + (lsn / 1_000_000) as u32);
        }
        assert_eq!(retained.runs.len(), 4, "{:?}", retained.runs);
        let mut bounds = RetentionBounds {
            now_s: 1_001,
            window_s: 600,
            appended_lsn: 3_000_000,
            records_max: u64::MAX,
        };
        assert_eq!(bounds.prune(&mut retained), Some(1));
        bounds.now_s = 1_600;
        assert_eq!(
            bounds.prune(&mut retained),
            Some(1_000_000),
            "second 1000 passed"
        );
        bounds.now_s = 1_603;
        assert_eq!(bounds.prune(&mut retained), None);
        // A clock stepped back joins the newest run.
        retained.push(3_000_001, 2_000);
        retained.push(3_000_002, 1_990);
        assert_eq!(retained.runs, [(3_000_001, 3_000_002, 2_000)]);
    }

    /// Runs commits of `took` each through the pacing, polling as it asks; returns
    /// the polls per commit of the last one and the pacing after.
    fn paced_commits(pacing: &mut CommitPacing, took: Duration, commits: usize) -> usize {
        let floor = IN_FLIGHT_POLL;
        let mut now = Instant::now();
        let mut polls = 0;
        for _ in 0..commits {
            pacing.observe(now, false, true);
            let started = now;
            polls = 0;
            loop {
                now += pacing.next_poll(now, floor);
                polls += 1;
                if now >= started + took {
                    pacing.observe(now, true, false);
                    break;
                }
                pacing.observe(now, false, true);
            }
        }
        polls
    }

    #[test]
    fn commit_polls_follow_the_commit_duration() {
        let mut pacing = CommitPacing::new();
        // Slow commits: a handful of polls each instead of one per IN_FLIGHT_POLL.
        let polls = paced_commits(&mut pacing, Duration::from_millis(4), 50);
        assert!(polls <= 12, "{polls} polls for a 4 ms commit");
        assert!(pacing.typical >= Duration::from_millis(4));
        assert!(
            pacing.typical <= Duration::from_micros(4_600),
            "{:?}",
            pacing.typical
        );
        // The disk gets fast again: the estimate comes down within a few dozen commits.
        paced_commits(&mut pacing, Duration::from_micros(200), 60);
        assert!(
            pacing.typical <= Duration::from_micros(450),
            "{:?}",
            pacing.typical
        );
        // Never sooner than the floor, whatever the estimate.
        let now = Instant::now();
        pacing.observe(now, false, true);
        assert!(pacing.next_poll(now, Duration::from_millis(1)) >= Duration::from_millis(1));
    }

    #[test]
    fn results_round_trip() {
        let outcome = Outcome {
            value: -4,
            existed: true,
            clamped: true,
        };
        let bytes = encode_result(&outcome, 9_999, 1_700_000_000, 0xfeed_beef_0123_4567);
        assert_eq!(
            decode_result(-4, 0, &bytes),
            Some(DecodedResult {
                result: Ok(outcome),
                index: 9_999,
                unix_s: 1_700_000_000,
                fingerprint: 0xfeed_beef_0123_4567,
            })
        );
        let mut bad = bytes;
        bad[0] |= 0x80;
        assert_eq!(decode_result(-4, 0, &bad), None);
        let refusals = [
            OpError::Overflow,
            OpError::BelowFloor { floor: -3 },
            OpError::AboveCeiling { ceiling: 10 },
            OpError::InvalidBounds {
                floor: 9,
                ceiling: 2,
            },
            OpError::OutOfBounds { value: 44 },
            OpError::WrongKind,
            OpError::StorageFull,
        ];
        for refusal in refusals {
            let (value, operand, bytes) =
                outcome_record_fields(&Err(refusal), 3, 1_700_000_000, 9).expect("journaled");
            let decoded = decode_result(value, operand, &bytes).expect("decodes");
            assert_eq!((decoded.result, decoded.index), (Err(refusal), 3));
        }
        let invalid_key = Err(OpError::InvalidKey { length: 0 });
        assert_eq!(outcome_record_fields(&invalid_key, 0, 0, 1), None);
    }

    #[test]
    fn recovered_outcomes_are_found_by_index() {
        let outcome = |value| Outcome {
            value,
            existed: false,
            clamped: false,
        };
        let recovered = Recovered {
            unix_s: 0,
            fingerprint: 0,
            outcomes: vec![
                (0, Ok(outcome(1))),
                (5, Ok(outcome(2))),
                (7, Ok(outcome(3))),
            ],
        };
        assert_eq!(recovered.outcome(5), Some(Ok(outcome(2))));
        assert_eq!(recovered.outcome(6), None);
    }
}
