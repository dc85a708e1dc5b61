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
//!    checkpoint (see [`super::checkpoint`]), or emptied if it has none. The checkpoint
//!    is read straight into memory (`Store::restore_partition`); the partition's header
//!    on disk keeps `clean = 0` until a clean close, so a crash during recovery
//!    restores from the same checkpoint again, and the journal after it is kept until
//!    a newer checkpoint exists.
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
//! 4. Partitions without a checkpoint get one if any of them holds counters, so step 1
//!    has one next time; empty ones need none ("no checkpoint" restores as empty).
//!
//! Step 2's reading and checking runs on a second thread from the start, overlapping
//! step 1; the records are applied on the calling thread, in order, after step 1 (see
//! [`super::replay`]). Step 3 happens on that second thread as it reaches the end.
//!
//! Invariant: the journal of core N only holds records of partitions the store of
//! core N owns; a record of another partition is refused, not skipped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::LoggedRecord;
use super::replay::{Reader, Replay};
use super::segment::{self, SegmentInfo, Verdict};
use super::{checkpoint, journal_dir, JournalError, Lsn};
use crate::op::Op;
use crate::store::Store;

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
    /// Where the time went. On the recovering thread: restoring partitions from
    /// checkpoints (or emptying them), applying records to the store, waiting for the
    /// reader after the restore, checkpointing partitions that had none. On the reader
    /// thread, overlapping the restore and the replay: reading segments, decoding and
    /// checking records (see [`super::replay`]).
    pub restore_elapsed: Duration,
    pub replay_elapsed: Duration,
    pub wait_elapsed: Duration,
    pub checkpoint_elapsed: Duration,
    pub read_elapsed: Duration,
    pub decode_elapsed: Duration,
}

/// Reads every segment of the journal in `dir` in order, calling `visit` on each valid
/// record, truncating a torn tail and handling middle corruption per `options`.
pub fn scan_journal<F>(
    dir: &Path,
    options: &RecoveryOptions,
    mut visit: F,
) -> Result<JournalScan, JournalError>
where
    F: FnMut(&SegmentInfo, &LoggedRecord<'_>) -> Result<(), JournalError>,
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
        let mapped = segment::MappedSegment::open(&info.path)?;
        scan.read_elapsed += read_started.elapsed();
        let result = segment::scan_segment(info, mapped.bytes(), previous, is_last, |logged| {
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
    // Reading and checking the journal needs no partition: it starts first and
    // overlaps the restore (see `super::replay`).
    let reader = Reader::spawn(&journal_dir(data_dir, core), options)?;
    restore_unclean(data_dir, store, &mut report)?;
    report.restore_elapsed = started.elapsed();
    let mut replay = Replay::new(store);
    let reader_report = replay.run(store, reader)?;
    report.journal = reader_report.scan;
    report.records_replayed = replay.replayed;
    report.read_elapsed = report.journal.read_elapsed;
    report.decode_elapsed = reader_report.decode_elapsed;
    report.replay_elapsed = replay.elapsed;
    report.wait_elapsed = replay.waited;
    let applied_max = store
        .owned_partitions()
        .iter()
        .map(|&p| store.applied_lsn(p))
        .max();
    report.next_lsn = report.journal.last_lsn.max(applied_max.unwrap_or(0)) + 1;
    let checkpoint_started = Instant::now();
    if missing_checkpoint_has_counters(data_dir, store)? {
        checkpoint::checkpoint_missing(data_dir, store, report.journal.last_lsn)?;
    }
    report.checkpoint_elapsed = checkpoint_started.elapsed();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Whether an owned partition without a checkpoint holds counters. An empty one
/// needs none: step 1 restores "no checkpoint" as empty and no segment is released
/// while a partition lacks a checkpoint, so the whole journal replays onto it. This
/// keeps a first start on a new data directory from writing one checkpoint per
/// partition (several fsyncs each: seconds on a busy disk).
fn missing_checkpoint_has_counters(data_dir: &Path, store: &Store) -> Result<bool, JournalError> {
    for &partition in store.owned_partitions() {
        if checkpoint::latest(data_dir, partition)?.is_some() {
            continue;
        }
        let mut counters = 0u64;
        store.for_each_counter(partition, |_, _, _, _| counters += 1);
        if counters > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn restore_unclean(
    data_dir: &Path,
    store: &mut Store,
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    let owned = store.owned_partitions().to_vec();
    let mut checkpoints = Vec::new();
    for partition in owned {
        if store.partition_was_clean(partition) {
            continue;
        }
        match checkpoint::latest(data_dir, partition)? {
            Some(found) => checkpoints.push((partition, found.dir)),
            None => {
                empty_partition(store, partition)?;
                report.partitions_emptied.push(partition);
            }
        }
    }
    let sources: Vec<(u32, &Path)> = checkpoints
        .iter()
        .map(|(partition, dir)| (*partition, dir.as_path()))
        .collect();
    store
        .restore_partitions(&sources)
        .map_err(|source| JournalError::Engine {
            action: "restore partitions from checkpoints",
            source,
        })?;
    report
        .partitions_restored
        .extend(checkpoints.iter().map(|(partition, _)| partition));
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
