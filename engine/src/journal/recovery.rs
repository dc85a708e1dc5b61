//! Crash recovery: restore partitions from checkpoints, replay the journal tail.
//!
//! # What the server calls at start, per core
//! ```text
//! let store = Store::open(&data_dir, owned_partitions)?;
//! let report = journal::recovery::recover(data_dir.path(), &mut store, core, &options)?;
//! let journal = Journal::open(data_dir.path(), core, JournalOptions {
//!     next_lsn_min: report.next_lsn, ..Default::default() })?;
//! ```
//!
//! # Steps
//! 1. Every owned partition that was not closed cleanly is restored from its last
//!    checkpoint (see [`super::checkpoint`]), or emptied if it has none.
//! 2. The core's segments are scanned in LSN order. Each record of a partition whose
//!    applied LSN is below the record's is replayed *by its resulting value*: a `Set`
//!    of the recorded value (bounds first when the record carries them), or a
//!    `Delete`. Replaying a record twice leaves the same state as once, so a record
//!    already reflected in a checkpoint or arena does no harm; every durable record
//!    above the partition's applied LSN is applied, so none is dropped.
//! 3. A torn tail of the last segment (see [`super::segment`]) is truncated. Damage in
//!    the middle refuses to start with [`JournalError::Corrupted`] naming the file and
//!    offset, unless [`RecoveryOptions::recover_to_corruption`]: then the damaged
//!    segment is cut at the damage, later segments are renamed `*.corrupt`, and the
//!    records before the damage are all that is recovered.
//! 4. Partitions without a checkpoint get one, so step 1 always has one next time.
//!
//! Invariant: the journal of core N only holds records of partitions the store of
//! core N owns; a record of another partition is refused, not skipped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::{LoggedRecord, RecordKind};
use super::segment::{self, SegmentInfo, Verdict};
use super::{checkpoint, journal_dir, JournalError, Lsn};
use crate::op::{BoundPolicy, Op};
use crate::store::Store;

/// Most records replayed in one store batch.
const REPLAY_BATCH_OPS: usize = 4096;
const _: () = assert!(REPLAY_BATCH_OPS <= crate::BATCH_OPS_MAX);

/// Choices for recovery.
#[derive(Clone, Debug, Default)]
pub struct RecoveryOptions {
    /// Recover up to corruption in the middle of the journal instead of refusing to
    /// start. Records after the damage are lost (set aside as `*.corrupt` files).
    pub recover_to_corruption: bool,
}

/// What reading a journal found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalScan {
    /// The last valid LSN kept (0 if none).
    pub last_lsn: Lsn,
    pub record_count: u64,
    pub segment_count: usize,
    /// A torn tail that was truncated: file and offset.
    pub torn_tail: Option<(PathBuf, u64)>,
    /// Corruption recovered up to (only with `recover_to_corruption`).
    pub corruption: Option<(PathBuf, u64, String)>,
    /// Time spent reading segment files into memory.
    pub read_elapsed: Duration,
}

/// What recovery did.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    pub partitions_restored: Vec<u32>,
    pub partitions_emptied: Vec<u32>,
    pub records_replayed: u64,
    pub journal: JournalScan,
    /// The LSN the journal must continue from (`JournalOptions::next_lsn_min`).
    pub next_lsn: Lsn,
    pub elapsed: Duration,
    /// Where the time went: restoring partitions from checkpoints (or emptying them),
    /// reading segments, decoding and checking records (the scan minus reading and
    /// replaying), applying records to the store, checkpointing partitions that had none.
    pub restore_elapsed: Duration,
    pub read_elapsed: Duration,
    pub decode_elapsed: Duration,
    pub replay_elapsed: Duration,
    pub checkpoint_elapsed: Duration,
}

/// Reads every segment of the journal in `dir` in order, calling `visit` on each valid
/// record, truncating a torn tail and handling middle corruption per `options`.
pub fn scan_journal<F>(
    dir: &Path,
    options: &RecoveryOptions,
    mut visit: F,
) -> Result<JournalScan, JournalError>
where
    F: FnMut(&SegmentInfo, LoggedRecord<'_>) -> Result<(), JournalError>,
{
    let segments = segment::list_segments(dir)?;
    let mut scan = JournalScan {
        segment_count: segments.len(),
        ..JournalScan::default()
    };
    let mut previous = None;
    for (index, info) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let read_started = Instant::now();
        let bytes = segment::read_segment_from(&info.path, 0)?;
        scan.read_elapsed += read_started.elapsed();
        let result = segment::scan_segment(info, &bytes, previous, is_last, |logged| {
            scan.record_count += 1;
            visit(info, logged)
        });
        match result {
            Ok(found) => {
                if let Verdict::TornTail { offset, .. } = found.verdict {
                    segment::truncate_segment(&info.path, offset)?;
                    scan.torn_tail = Some((info.path.clone(), offset));
                }
                previous = found.last_lsn.or(previous);
            }
            Err(JournalError::Corrupted {
                path,
                offset,
                reason,
            }) if options.recover_to_corruption => {
                segment::truncate_segment(&path, offset)?;
                set_aside(&segments[index + 1..])?;
                previous = last_lsn_before(&path, offset, info, previous)?;
                scan.corruption = Some((path, offset, reason));
                break;
            }
            Err(error) => return Err(error),
        }
    }
    scan.last_lsn = previous.unwrap_or(0);
    if let Some(last) = segment::list_segments(dir)?.last() {
        segment::sync_segment(&last.path)?;
    }
    Ok(scan)
}

/// The last LSN left in a segment cut at `offset` (after recover-to-corruption).
fn last_lsn_before(
    path: &Path,
    offset: u64,
    info: &SegmentInfo,
    previous: Option<Lsn>,
) -> Result<Option<Lsn>, JournalError> {
    let bytes = segment::read_segment_from(path, 0)?;
    debug_assert_eq!(bytes.len() as u64, offset);
    let found = segment::scan_segment(info, &bytes, previous, true, |_| Ok(()))?;
    Ok(found.last_lsn.or(previous))
}

fn set_aside(segments: &[SegmentInfo]) -> Result<(), JournalError> {
    for info in segments {
        let mut name = info.path.clone().into_os_string();
        name.push(".corrupt");
        std::fs::rename(&info.path, &name)
            .map_err(|e| JournalError::io("set aside segment after corruption", &info.path, e))?;
    }
    Ok(())
}

/// Recovers core `core`'s partitions in `store` (see the module doc).
pub fn recover(
    data_dir: &Path,
    store: &mut Store,
    core: u32,
    options: &RecoveryOptions,
) -> Result<RecoveryReport, JournalError> {
    let started = Instant::now();
    let mut report = RecoveryReport {
        clean_shutdown: store.was_clean_shutdown(),
        ..RecoveryReport::default()
    };
    restore_unclean(data_dir, store, &mut report)?;
    report.restore_elapsed = started.elapsed();
    let applied: Vec<Lsn> = (0..store.partition_count())
        .map(|p| store.applied_lsn(p))
        .collect();
    let mut replay = Replay::new(applied);
    let scan_started = Instant::now();
    report.journal = scan_journal(&journal_dir(data_dir, core), options, |info, logged| {
        replay.push(store, info, logged)
    })?;
    replay.flush(store)?;
    replay.finish(store);
    let scan_elapsed = scan_started.elapsed();
    report.records_replayed = replay.replayed;
    report.read_elapsed = report.journal.read_elapsed;
    report.replay_elapsed = replay.elapsed;
    report.decode_elapsed = scan_elapsed.saturating_sub(report.read_elapsed + replay.elapsed);
    let applied_max = store
        .owned_partitions()
        .iter()
        .map(|&p| store.applied_lsn(p))
        .max();
    report.next_lsn = report.journal.last_lsn.max(applied_max.unwrap_or(0)) + 1;
    let checkpoint_started = Instant::now();
    checkpoint::checkpoint_missing(data_dir, store, report.journal.last_lsn)?;
    report.checkpoint_elapsed = checkpoint_started.elapsed();
    report.elapsed = started.elapsed();
    Ok(report)
}

fn restore_unclean(
    data_dir: &Path,
    store: &mut Store,
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    let owned = store.owned_partitions().to_vec();
    for partition in owned {
        if store.partition_was_clean(partition) {
            continue;
        }
        match checkpoint::latest(data_dir, partition)? {
            Some(found) => {
                store
                    .restore_partition(partition, &found.dir)
                    .map_err(|source| JournalError::Engine {
                        action: "restore partition from checkpoint",
                        source,
                    })?;
                report.partitions_restored.push(partition);
            }
            None => {
                empty_partition(store, partition)?;
                report.partitions_emptied.push(partition);
            }
        }
    }
    Ok(())
}

/// Deletes every counter of a partition that has no checkpoint to restore from.
fn empty_partition(store: &mut Store, partition: u32) -> Result<(), JournalError> {
    let mut keys = Vec::new();
    store.for_each_counter(partition, |key, _, _, _| keys.push(key.to_vec()));
    for key in &keys {
        store
            .apply(&Op::Delete { key })
            .map_err(|source| JournalError::ReplayRefused {
                lsn: 0,
                path: PathBuf::from("(emptying partition without checkpoint)"),
                source,
            })?;
    }
    store.set_applied_lsn(partition, 0);
    Ok(())
}

/// Replays records in batches through the store's prefetching batch path.
struct Replay {
    /// Per partition: the applied LSN before replay; records at or below are skipped.
    applied_before: Vec<Lsn>,
    /// Per partition: the last LSN replayed.
    replayed_to: Vec<Lsn>,
    /// Pending `Set`/`Delete` operations, with keys copied into `keys`.
    pending: Vec<PendingOp>,
    keys: Vec<u8>,
    path: PathBuf,
    replayed: u64,
    /// Time spent in `flush` (applying to the store).
    elapsed: Duration,
}

struct PendingOp {
    lsn: Lsn,
    kind: RecordKind,
    key_start: usize,
    key_end: usize,
    value: i64,
    bounds: Option<(Option<i64>, Option<i64>)>,
}

impl Replay {
    fn new(applied_before: Vec<Lsn>) -> Self {
        let partitions = applied_before.len();
        Replay {
            applied_before,
            replayed_to: vec![0; partitions],
            pending: Vec::with_capacity(REPLAY_BATCH_OPS),
            keys: Vec::with_capacity(REPLAY_BATCH_OPS * 32),
            path: PathBuf::new(),
            replayed: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn push(
        &mut self,
        store: &mut Store,
        info: &SegmentInfo,
        logged: LoggedRecord<'_>,
    ) -> Result<(), JournalError> {
        let record = logged.record;
        let partition = record.partition as usize;
        if !store.owns(record.partition) {
            return Err(JournalError::InvalidConfig(format!(
                "{} holds LSN {} of partition {}, which this core does not own",
                info.path.display(),
                logged.lsn,
                record.partition
            )));
        }
        if logged.lsn <= self.applied_before[partition] {
            return Ok(());
        }
        if self.path != info.path {
            self.flush(store)?;
            self.path = info.path.clone();
        }
        let key_start = self.keys.len();
        self.keys.extend_from_slice(record.key);
        self.pending.push(PendingOp {
            lsn: logged.lsn,
            kind: record.kind,
            key_start,
            key_end: self.keys.len(),
            value: record.value,
            bounds: record.bounds.map(|b| (b.floor, b.ceiling)),
        });
        self.replayed_to[partition] = logged.lsn;
        if self.pending.len() == REPLAY_BATCH_OPS {
            self.flush(store)?;
        }
        Ok(())
    }

    /// Applies the pending operations in order. Records without bounds go through
    /// `apply_batch`; a refused one (a bound in the way) is redone on the slow path,
    /// then the rest of the batch is applied again: by-value replay makes repeating
    /// the later operations harmless, and it keeps their order after the redo.
    fn flush(&mut self, store: &mut Store) -> Result<(), JournalError> {
        let started = Instant::now();
        let mut start = 0;
        let mut results = Vec::with_capacity(self.pending.len());
        while start < self.pending.len() {
            let ops: Vec<Op<'_>> = self.pending[start..]
                .iter()
                .map(|p| fast_op(p, &self.keys))
                .collect();
            store
                .apply_batch(&ops, &mut results)
                .map_err(|source| self.refused(start, source))?;
            match results.iter().position(|r| r.is_err()) {
                None => break,
                Some(failed) => {
                    let index = start + failed;
                    replay_slow(store, &self.pending[index], &self.keys)
                        .map_err(|source| self.refused(index, source))?;
                    start = index + 1;
                }
            }
        }
        self.replayed += self.pending.len() as u64;
        self.pending.clear();
        self.keys.clear();
        self.elapsed += started.elapsed();
        Ok(())
    }

    fn refused(&self, index: usize, source: crate::OpError) -> JournalError {
        JournalError::ReplayRefused {
            lsn: self.pending.get(index).map_or(0, |p| p.lsn),
            path: self.path.clone(),
            source,
        }
    }

    fn finish(&self, store: &mut Store) {
        for (partition, &lsn) in self.replayed_to.iter().enumerate() {
            if lsn > 0 {
                store.set_applied_lsn(partition as u32, lsn);
            }
        }
    }
}

/// The one operation replaying `pending` takes when no bound is in the way. Records
/// carrying bounds use a `Set` that a bound may refuse, which sends them to the slow
/// path, where the bounds are set exactly.
fn fast_op<'k>(pending: &PendingOp, keys: &'k [u8]) -> Op<'k> {
    let key = &keys[pending.key_start..pending.key_end];
    match pending.kind {
        RecordKind::Delete => Op::Delete { key },
        _ if pending.bounds.is_some() => Op::SetBounds {
            key,
            floor: Some(i64::MAX),
            ceiling: Some(i64::MIN),
        },
        _ => Op::Set {
            key,
            value: pending.value,
            policy: BoundPolicy::Reject,
        },
    }
}

/// Sets value and bounds exactly: clear the bounds, set the value, set the bounds the
/// record carries (or the ones the counter had).
fn replay_slow(store: &mut Store, pending: &PendingOp, keys: &[u8]) -> Result<(), crate::OpError> {
    let key = &keys[pending.key_start..pending.key_end];
    let (floor, ceiling) = match pending.bounds {
        Some(bounds) => bounds,
        None => store.bounds(key)?,
    };
    store.apply(&Op::SetBounds {
        key,
        floor: None,
        ceiling: None,
    })?;
    store.apply(&Op::Set {
        key,
        value: pending.value,
        policy: BoundPolicy::Reject,
    })?;
    if floor.is_some() || ceiling.is_some() {
        store.apply(&Op::SetBounds {
            key,
            floor,
            ceiling,
        })?;
    }
    Ok(())
}
