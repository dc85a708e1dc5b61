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
//! 0. A partition closed cleanly whose header records an applied LSN below the one its
//!    checkpoint's header records is stale: its files were rolled back to an earlier
//!    clean close (a partial restore from a backup, a file-level rollback). In normal
//!    operation that never happens: a checkpoint copies the partition's header with its
//!    applied LSN, the applied LSN only grows while the partition is open, and the clean
//!    close writes the header last, after the final checkpoint, so a clean header's
//!    applied LSN is at least its checkpoint's. (The checkpoint's *covered* LSN is the
//!    core's durable LSN and is often above an idle partition's applied LSN: it is no
//!    evidence.) Such a partition is taken for one not closed cleanly and goes through
//!    step 1, so it is rebuilt from its checkpoint and the journal exactly, or refused
//!    if the journal no longer holds what replay needs. It is reported in
//!    [`RecoveryReport::partitions_distrusted`], naming its header. A checkpoint whose
//!    header cannot be read is no evidence either way: the check is skipped (step 1
//!    refuses it only if it must restore from it).
//!    A partition not closed cleanly is restored from its checkpoint, which must be
//!    the data its `journal-position` describes: a checkpoint's data files rolled back
//!    to an older checkpoint (position untouched) restore a partition older than the
//!    position claims, and replay from the position never brings back what lies
//!    between. The evidence: the unclean header on disk still records the applied LSN
//!    of the partition's last clean close (opening only marks `clean = 0`), and every
//!    checkpoint taken at or after that close records at least it. So a checkpoint
//!    header whose applied LSN is below it, while its covered LSN is at or above it
//!    (an unclean header's fields are unchecked: a garbled one above the covered LSN
//!    is no evidence), is stale: the previous checkpoint `<p>.old`, if a swap left one
//!    that records at least that applied LSN, is used instead (and reported);
//!    otherwise recovery refuses, naming the checkpoint's header. The journal must
//!    then still hold what the chosen checkpoint needs (the gap check of step 3).
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
//! 3. A torn tail of the last segment (see `super::segment`) is truncated, and
//!    reported with file, offset and bytes cut ([`TornTail`]). What no partition needs
//!    (every record at or below the lowest checkpoint LSN of the core's partitions,
//!    see [`scan_journal_needing`]) never stops the start nor cuts anything after it:
//!    damage in a segment whose records all lie below it (for the last segment: whose
//!    valid records after the damage all do, since the damage hides lower LSNs than
//!    theirs) is stepped over, that
//!    segment set aside as `*.corrupt` and the intact ones before it as `*.covered`.
//!    Damage or a gap in what is needed refuses to start with
//!    [`JournalError::Corrupted`] naming the file and offset (or the missing LSNs and
//!    both segments), and the flag to pass, unless
//!    [`RecoveryOptions::recover_to_corruption`]: then the bytes of the damaged segment
//!    from the damage on are first copied to `segment-<first LSN they may hold>.log.corrupt`,
//!    the segment is cut there, later segments are renamed `*.corrupt`, and the
//!    records before the damage are all that is recovered.
//! 4. The journal must reach the LSN its reach file records as durable (see
//!    [`super::reach`]), unless every partition's checkpoint covers it: otherwise the
//!    newest segments (or the whole journal directory) were lost, and recovery refuses
//!    with [`JournalError::Corrupted`] naming the reach file, the missing LSNs and the
//!    first missing segment, and the flag; with the flag it goes on with what is left
//!    and continues above the reach.
//!    Every LSN read from a file must lie below `stamp::LSN_LIMIT` (2^62), or the file is
//!    refused naming it: continuing above an LSN near `u64::MAX` would wrap.
//!    The journal continues above every LSN in its segments, in any `*.corrupt` file,
//!    in any checkpoint and in any partition (and above the reach, when the flag
//!    accepted its loss): no LSN is ever reused. If that jumps over
//!    LSNs (or LSNs needed were lost with the flag), every partition is checkpointed at
//!    the LSN before the jump and the remaining segments are set aside as `*.covered`,
//!    so the journal left on disk has consecutive LSNs and nothing below the jump is
//!    needed again (see `cover_the_skip`).
//! 5. Otherwise, partitions without a checkpoint get one if any of them holds counters, so step 1
//!    has one next time; empty ones need none ("no checkpoint" restores as empty).
//!
//! Step 2's reading and checking runs on a second thread from the start, overlapping
//! step 1; the records are applied on the calling thread, in order, after step 1 (see
//! `super::replay`). Step 3 happens on that second thread as it reaches the end.
//!
//! Invariants: the journal of core N only holds records of partitions the store of
//! core N owns; a record of another partition is refused, not skipped. After recovery
//! the segments left in place hold consecutive LSNs (each segment's first LSN is the
//! last LSN of the one before plus one), which [`super::JournalReader`] checks too.
//! Nothing is deleted: what recovery cannot use is renamed or copied aside.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::checkpoint::CheckpointInfo;
use super::record::LoggedRecord;
use super::replay::{Reader, Replay};
use super::segment::{self, SegmentInfo, Verdict};
use super::stamp::LSN_LIMIT;
use super::{checkpoint, journal_dir, reach, JournalError, Lsn};
use crate::op::Op;
use crate::store::Store;

/// Choices for recovery.
#[derive(Clone, Debug, Default)]
pub struct RecoveryOptions {
    /// Recover up to corruption in the middle of the journal instead of refusing to
    /// start. Records after the damage are lost (set aside as `*.corrupt` files).
    pub recover_to_corruption: bool,
}

/// Suffix of a file set aside because it holds damage, or records after damage or
/// after a gap that recovery stopped at. Its name is otherwise a segment's name: the
/// first LSN it may hold.
pub const CORRUPT_SUFFIX: &str = ".corrupt";
/// Suffix of an intact segment set aside because every partition's checkpoint covers
/// it and it stands before damage, a gap, or a jump of the LSNs that recovery stepped
/// over: the journal left in place then has no hole for a reader to meet.
pub const COVERED_SUFFIX: &str = ".covered";

/// How the refusals of recovery tell the operator the way out.
const FLAG_HINT: &str = "; to start with the records before this point, setting the later ones aside as *.corrupt files, restart with --recover-to-corruption (RecoveryOptions::recover_to_corruption)";

/// How a refusal over the journal's reach tells the operator the way out.
/// The advice for a damaged reach stamp: only the check it serves is lost.
const REACH_STAMP_HINT: &str = "; this stamp only records how far the journal had \
    reached, to detect lost newest segments: the journal itself may be intact. To start \
    without the check, restart with --recover-to-corruption (which also cuts at any \
    damage in the journal, and reports it)";
const REACH_HINT: &str = "; to start with the records that are left, losing the missing ones, restart with --recover-to-corruption (RecoveryOptions::recover_to_corruption)";

/// A torn tail that recovery cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    pub offset: u64,
    /// Bytes removed: from `offset` to the end of the file, zeros written ahead included.
    pub bytes_cut: u64,
    /// Of those, bytes up to the last non-zero one: what the torn write left.
    pub data_bytes_cut: u64,
}

/// A file recovery set aside (renamed, or for a cut tail, copied) and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    /// The set-aside file (ends in [`CORRUPT_SUFFIX`] or [`COVERED_SUFFIX`]).
    pub path: PathBuf,
    /// Valid records found in it.
    pub record_count: u64,
    /// The highest LSN among them: the journal continues above it.
    pub lsn_max: Option<Lsn>,
}

/// What reading a journal found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalScan {
    /// The last valid LSN kept (0 if none).
    pub last_lsn: Lsn,
    pub record_count: u64,
    pub segment_count: usize,
    /// A torn tail that was truncated: file, offset, bytes cut.
    pub torn_tail: Option<TornTail>,
    /// Corruption or a gap recovered up to (only with `recover_to_corruption`): file,
    /// offset, reason. Records after it were set aside.
    pub corruption: Option<(PathBuf, u64, String)>,
    /// Damage or gaps stepped over because no partition needs the records there (all
    /// below every checkpoint): file, offset, reason. Nothing after them was cut.
    pub skipped: Vec<(PathBuf, u64, String)>,
    /// Files set aside by this scan.
    pub set_aside: Vec<SetAside>,
    /// Time spent reading segment files into memory.
    pub read_elapsed: Duration,
}

/// What recovery did.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    pub partitions_restored: Vec<u32>,
    pub partitions_emptied: Vec<u32>,
    /// Files found older than other files show (step 0 of the module doc), and what
    /// was used instead: a clean partition's header (restored from its checkpoint), or
    /// a checkpoint's header (its `.old` used). The partition, the file, and why. Each
    /// deserves a warning: something rolled those files back.
    pub partitions_distrusted: Vec<(u32, PathBuf, String)>,
    pub records_replayed: u64,
    pub journal: JournalScan,
    /// The LSN the journal must continue from (`JournalOptions::next_lsn_min`).
    pub next_lsn: Lsn,
    pub elapsed: Duration,
    /// Where the time went. On the recovering thread: restoring partitions from
    /// checkpoints (or emptying them), applying records to the store, waiting for the
    /// reader after the restore, checkpointing partitions that had none. On the reader
    /// thread, overlapping the restore and the replay: reading segments, decoding and
    /// checking records (see `super::replay`).
    pub restore_elapsed: Duration,
    pub replay_elapsed: Duration,
    pub wait_elapsed: Duration,
    pub checkpoint_elapsed: Duration,
    pub read_elapsed: Duration,
    pub decode_elapsed: Duration,
}

/// Reads every segment of the journal in `dir` in order, calling `visit` on each valid
/// record, truncating a torn tail and handling middle corruption per `options`. No
/// partition's needs are known: every record present is needed, and the journal may
/// start at any LSN (see [`scan_journal_needing`]).
pub fn scan_journal<F>(
    dir: &Path,
    options: &RecoveryOptions,
    visit: F,
) -> Result<JournalScan, JournalError>
where
    F: FnMut(&SegmentInfo, &LoggedRecord<'_>) -> Result<(), JournalError>,
{
    scan_journal_needing(dir, options, 0, visit)
}

/// Like [`scan_journal`], knowing that no partition needs a record below `needed_lsn`
/// (every checkpoint covers them). Damage in a segment whose records are all below it,
/// or a gap between segments wholly below it, is stepped over: the segments up to it
/// are set aside and the scan goes on. A gap at or above it is refused like corruption
/// (or, with `recover_to_corruption`, recovered up to). Costs nothing per record: the
/// continuity of LSNs is checked once per segment.
pub fn scan_journal_needing<F>(
    dir: &Path,
    options: &RecoveryOptions,
    needed_lsn: Lsn,
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
    let mut walk = Walk {
        segments: &segments,
        needed_lsn,
        options,
        live: 0,
        previous: None,
    };
    for (index, info) in segments.iter().enumerate() {
        if let Some((first, last)) = missing_before(info, walk.previous, needed_lsn) {
            if let Then::Stop = walk.on_gap(&mut scan, index, first, last)? {
                break;
            }
        }
        let read_started = Instant::now();
        let mapped = segment::MappedSegment::open(&info.path)?;
        scan.read_elapsed += read_started.elapsed();
        let is_last = index + 1 == segments.len();
        let result =
            segment::scan_segment(info, mapped.bytes(), walk.previous, is_last, |logged| {
                scan.record_count += 1;
                visit(info, logged)
            });
        match result {
            Ok(found) => {
                if let Verdict::TornTail { offset, .. } = found.verdict {
                    scan.torn_tail = Some(cut_torn_tail(info, mapped, offset)?);
                }
                // An empty segment still says where the journal stands.
                walk.previous = found
                    .last_lsn
                    .or(walk.previous)
                    .or(info.first_lsn.checked_sub(1).filter(|&lsn| lsn > 0));
            }
            Err(JournalError::Corrupted { offset, reason, .. }) => {
                if let Then::Stop = walk.on_damage(&mut scan, index, mapped, offset, reason)? {
                    break;
                }
            }
            Err(error) => return Err(error),
        }
    }
    scan.last_lsn = walk.previous.unwrap_or(0);
    if let Some(last) = segment::list_segments(dir)?.last() {
        segment::sync_segment(&last.path)?;
    }
    Ok(scan)
}

/// Where a scan of the journal stands.
struct Walk<'s> {
    segments: &'s [SegmentInfo],
    needed_lsn: Lsn,
    options: &'s RecoveryOptions,
    /// Segments before this index were set aside.
    live: usize,
    /// The last LSN of the live segments scanned so far (`None` at the start of the
    /// live journal).
    previous: Option<Lsn>,
}

/// Whether a scan goes on after a gap or damage.
enum Then {
    GoOn,
    Stop,
}

impl Walk<'_> {
    /// LSNs `first..=last` are missing before segment `index`: stepped over if no
    /// partition needs them, else refused, or with the flag, recovered up to.
    fn on_gap(
        &mut self,
        scan: &mut JournalScan,
        index: usize,
        first: Lsn,
        last: Lsn,
    ) -> Result<Then, JournalError> {
        let info = &self.segments[index];
        let before = (index > self.live).then(|| self.segments[index - 1].path.as_path());
        let reason = segment::gap_reason(first, last, before, &info.path);
        if last < self.needed_lsn {
            let covered = &self.segments[self.live..index];
            scan.set_aside.extend(set_aside(covered, COVERED_SUFFIX)?);
            scan.skipped.push((info.path.clone(), 0, reason));
            self.live = index;
            return Ok(Then::GoOn);
        }
        if !self.options.recover_to_corruption {
            return Err(corrupted(&info.path, 0, reason + FLAG_HINT));
        }
        scan.corruption = Some((info.path.clone(), 0, reason));
        if before.is_none() {
            // Missing before the first segment: nothing after it to cut; the records
            // are gone, and recovery goes on with what is there.
            return Ok(Then::GoOn);
        }
        let later = &self.segments[index..];
        scan.set_aside.extend(set_aside(later, CORRUPT_SUFFIX)?);
        Ok(Then::Stop)
    }

    /// Segment `index` (mapped) is damaged at `offset`: stepped over if no partition
    /// needs any of its records, else refused, or with the flag, cut there with the
    /// tail and the later segments set aside.
    fn on_damage(
        &mut self,
        scan: &mut JournalScan,
        index: usize,
        mapped: segment::MappedSegment,
        offset: u64,
        reason: String,
    ) -> Result<Then, JournalError> {
        let info = &self.segments[index];
        let covered = match self.segments.get(index + 1) {
            Some(next) => next.first_lsn <= self.needed_lsn,
            // The last segment: what the damage hides lies below the valid records
            // after it (LSNs grow), so it is covered when they all are; anything cut
            // after them is what the reach check (step 4) is for.
            None => segment::valid_records_in(&mapped.bytes()[offset as usize..])
                .1
                .is_some_and(|lsn_max| lsn_max < self.needed_lsn),
        };
        if covered {
            drop(mapped);
            let before = &self.segments[self.live..index];
            scan.set_aside.extend(set_aside(before, COVERED_SUFFIX)?);
            let damaged = &self.segments[index..=index];
            scan.set_aside.extend(set_aside(damaged, CORRUPT_SUFFIX)?);
            scan.skipped.push((info.path.clone(), offset, reason));
            self.live = index + 1;
            self.previous = None;
            return Ok(Then::GoOn);
        }
        if !self.options.recover_to_corruption {
            return Err(corrupted(&info.path, offset, reason + FLAG_HINT));
        }
        let head = &mapped.bytes()[..offset as usize];
        self.previous = segment::last_lsn_in(head).or(self.previous);
        let tail_first = self.previous.map_or(info.first_lsn, |lsn| lsn + 1);
        let later = &self.segments[index + 1..];
        let tail = set_aside_tail(info, mapped.bytes(), offset, tail_first, later)?;
        scan.set_aside.push(tail);
        drop(mapped);
        // Later segments go first: a crash before the cut then leaves damage followed
        // by valid records (refused, or cut again with the flag), never a cut segment
        // and a hole after it.
        scan.set_aside.extend(set_aside(later, CORRUPT_SUFFIX)?);
        segment::truncate_segment(&info.path, offset)?;
        scan.corruption = Some((info.path.clone(), offset, reason));
        Ok(Then::Stop)
    }
}

/// Cuts the torn tail of segment `info` (mapped) at `offset` and says how much it cut.
fn cut_torn_tail(
    info: &SegmentInfo,
    mapped: segment::MappedSegment,
    offset: u64,
) -> Result<TornTail, JournalError> {
    let at = offset as usize;
    let torn = TornTail {
        path: info.path.clone(),
        offset,
        bytes_cut: (mapped.bytes().len() - at) as u64,
        data_bytes_cut: segment::data_bytes_from(mapped.bytes(), at),
    };
    drop(mapped);
    segment::truncate_segment(&info.path, offset)?;
    Ok(torn)
}

fn corrupted(path: &Path, offset: u64, reason: String) -> JournalError {
    JournalError::Corrupted {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}

/// The LSNs missing before segment `info`, if any: after the live segments before it
/// (whose last LSN is `previous`), or, for the first live segment, from `needed_lsn`.
fn missing_before(
    info: &SegmentInfo,
    previous: Option<Lsn>,
    needed_lsn: Lsn,
) -> Option<(Lsn, Lsn)> {
    let expected = match previous {
        Some(lsn) => lsn + 1,
        None if needed_lsn > 0 => needed_lsn,
        None => return None,
    };
    (info.first_lsn > expected).then(|| (expected, info.first_lsn - 1))
}

/// The path `path` has once set aside with `suffix`.
fn set_aside_path(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Renames `segments` with `suffix`, then syncs their directory; returns what each
/// holds (read back only for [`CORRUPT_SUFFIX`], whose LSNs the journal must not reuse).
fn set_aside(segments: &[SegmentInfo], suffix: &str) -> Result<Vec<SetAside>, JournalError> {
    let mut done = Vec::with_capacity(segments.len());
    for info in segments {
        let target = set_aside_path(&info.path, suffix);
        std::fs::rename(&info.path, &target)
            .map_err(|e| JournalError::io("set aside segment", &info.path, e))?;
        let (record_count, lsn_max) = if suffix == CORRUPT_SUFFIX {
            segment::valid_records_in(&segment::read_segment_from(&target, 0)?)
        } else {
            (0, None)
        };
        done.push(SetAside {
            path: target,
            record_count,
            lsn_max,
        });
    }
    if let Some(info) = segments.first() {
        sync_parent(&info.path)?;
    }
    Ok(done)
}

/// Copies the bytes of segment `info` from `offset` (the damage) to its end into a
/// `*.corrupt` file named like a segment starting at `tail_first`, durably, before the
/// segment is cut there: nothing is destroyed. Should a later segment start at that
/// LSN too (the tail holds no record), the copy is named `*.tail.corrupt`.
fn set_aside_tail(
    info: &SegmentInfo,
    bytes: &[u8],
    offset: u64,
    tail_first: Lsn,
    later: &[SegmentInfo],
) -> Result<SetAside, JournalError> {
    let dir = info.path.parent().unwrap_or(Path::new("."));
    let mut target = set_aside_path(&segment::segment_path(dir, tail_first), CORRUPT_SUFFIX);
    if later.iter().any(|s| s.first_lsn == tail_first) {
        target = set_aside_path(&segment::segment_path(dir, tail_first), ".tail.corrupt");
    }
    let tail = &bytes[offset as usize..];
    std::fs::write(&target, tail)
        .and_then(|()| std::fs::File::open(&target)?.sync_all())
        .map_err(|e| JournalError::io("set aside the cut tail into", &target, e))?;
    sync_parent(&target)?;
    let (record_count, lsn_max) = segment::valid_records_in(tail);
    Ok(SetAside {
        path: target,
        record_count,
        lsn_max,
    })
}

fn sync_parent(path: &Path) -> Result<(), JournalError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| JournalError::io("sync journal directory", dir, e))
}

/// The highest LSN in the `*.corrupt` files of journal directory `dir`, left by this or
/// an earlier recovery: the journal never reuses one. No such file costs one listing.
fn set_aside_lsn_max(dir: &Path) -> Result<Lsn, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(JournalError::io("list journal directory", dir, error)),
    };
    let mut lsn_max = 0;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("list journal directory", dir, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(CORRUPT_SUFFIX)
        {
            let bytes = segment::read_segment_from(&entry.path(), 0)?;
            lsn_max = lsn_max.max(segment::valid_records_in(&bytes).1.unwrap_or(0));
        }
    }
    Ok(lsn_max)
}

/// The first LSN any owned partition needs replayed: one above what its checkpoint
/// covers (for a partition closed cleanly, also above its applied LSN, since its own
/// files reflect everything up to it); 1 for an unclean partition without checkpoint.
fn needed_lsn(checkpoints: &[(u32, Option<CheckpointInfo>)], store: &Store) -> Lsn {
    let needed = checkpoints.iter().map(|(partition, found)| {
        let covered = found.as_ref().map_or(0, |c| c.covered_lsn);
        let reflected = if store.partition_was_clean(*partition) {
            covered.max(store.applied_lsn(*partition))
        } else {
            covered
        };
        reflected + 1
    });
    needed.min().unwrap_or(1)
}

/// Step 0 of the module doc: takes every clean partition whose header's applied LSN is
/// below its checkpoint header's for one not closed cleanly, so step 1 restores it.
fn distrust_stale_partitions(
    data_dir: &Path,
    store: &mut Store,
    checkpoints: &[(u32, Option<CheckpointInfo>)],
    report: &mut RecoveryReport,
) {
    for (partition, found) in checkpoints {
        if let Some((path, damage)) = store.damage_at_open(*partition) {
            let reason = format!(
                "{damage}; the partition was closed cleanly, but its checkpoint exists: \
                 restoring it and replaying the journal instead (the data files were moved \
                 to {}/)",
                data_dir.join(crate::partition::DAMAGED_DIR).display()
            );
            report
                .partitions_distrusted
                .push((*partition, path.clone(), reason));
        }
        let (partition, Some(found)) = (*partition, found) else {
            continue;
        };
        if !store.partition_was_clean(partition) {
            continue;
        }
        let Ok(checkpointed) = crate::partition::checkpoint_applied_lsn(&found.dir, partition)
        else {
            continue;
        };
        let applied = store.applied_lsn(partition);
        if applied >= checkpointed {
            continue;
        }
        let header = data_dir.join(crate::partition::file_name(partition, "meta"));
        let reason = format!(
            "partition {partition} was closed cleanly at applied LSN {applied}, but its \
             checkpoint {} was taken later, at applied LSN {checkpointed}: the partition's \
             files were rolled back to an earlier clean close; restoring the checkpoint and \
             replaying the journal instead",
            found.dir.display()
        );
        store.distrust_partition(partition);
        report
            .partitions_distrusted
            .push((partition, header, reason));
    }
    report.clean_shutdown = store.was_clean_shutdown();
}

/// Step 0 of the module doc, for the partitions step 1 restores: refuses (naming its
/// header) a checkpoint whose data is older than the partition's last clean close,
/// unless a `.old` checkpoint left by a swap is not, which then takes its place.
fn check_checkpoints_restored(
    store: &Store,
    checkpoints: &mut [(u32, Option<CheckpointInfo>)],
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    for (partition, found) in checkpoints.iter_mut() {
        let partition = *partition;
        let Some(info) = found.as_ref() else {
            continue;
        };
        if store.partition_was_clean(partition) {
            continue;
        }
        let closed = store.applied_lsn_at_open(partition);
        let Ok(checkpointed) = crate::partition::checkpoint_applied_lsn(&info.dir, partition)
        else {
            // Step 1 reads the header again and refuses it, naming it.
            continue;
        };
        if checkpointed >= closed || closed > info.covered_lsn {
            continue;
        }
        let header = info
            .dir
            .join(crate::partition::file_name(partition, "meta"));
        let reason = format!(
            "the checkpoint's data records applied LSN {checkpointed}, but partition \
             {partition} had reached applied LSN {closed} at its last clean close, and this \
             checkpoint (covering LSN {}) was taken at or after it: its data files are older \
             than its journal-position says (rolled back to an older checkpoint)",
            info.covered_lsn
        );
        if let Some(previous) = previous_checkpoint(info, closed) {
            let used = format!(
                "{reason}; using the previous checkpoint {}",
                previous.dir.display()
            );
            report.partitions_distrusted.push((partition, header, used));
            *found = Some(previous);
            continue;
        }
        return Err(corrupted(
            &header,
            16,
            reason + "; restore the checkpoint directory from a backup",
        ));
    }
    Ok(())
}

/// The checkpoint `<p>.old` beside `current`, if a swap left one that is whole and
/// records an applied LSN of at least `closed`.
fn previous_checkpoint(current: &CheckpointInfo, closed: Lsn) -> Option<CheckpointInfo> {
    let mut name = current.dir.as_os_str().to_owned();
    name.push(".old");
    let old = PathBuf::from(name);
    let info = checkpoint::read_position(&old, current.partition).ok()?;
    let applied = crate::partition::checkpoint_applied_lsn(&old, current.partition).ok()?;
    (applied >= closed).then_some(info)
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
    let mut checkpoints = Vec::with_capacity(store.owned_partitions().len());
    for &partition in store.owned_partitions() {
        checkpoints.push((partition, checkpoint::latest(data_dir, partition)?));
    }
    distrust_stale_partitions(data_dir, store, &checkpoints, &mut report);
    check_checkpoints_restored(store, &mut checkpoints, &mut report)?;
    // Reading and checking the journal needs no partition: it starts first and
    // overlaps the restore (see `super::replay`).
    let dir = journal_dir(data_dir, core);
    let needed = needed_lsn(&checkpoints, store);
    let reader = Reader::spawn(&dir, options, needed)?;
    restore_unclean(store, &checkpoints, &mut report)?;
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
        .max()
        .unwrap_or(0);
    let covered_max = checkpoints
        .iter()
        .filter_map(|(_, found)| found.as_ref().map(|c| c.covered_lsn))
        .max()
        .unwrap_or(0);
    let seen_max = report
        .journal
        .last_lsn
        .max(applied_max)
        .max(covered_max)
        .max(set_aside_lsn_max(&dir)?);
    // Headers and stamps are refused at or above the limit when read; segments and
    // set-aside files are checked here, before the journal is continued above them.
    if seen_max >= LSN_LIMIT {
        let reason = format!(
            "LSN {seen_max} (in a segment or a *.corrupt file there) is at or above 2^62, \
             beyond any journal: continuing above it would wrap the LSNs; a file there was \
             crafted or damaged"
        );
        return Err(corrupted(&dir, 0, reason));
    }
    report.next_lsn = seen_max + 1;
    check_reach(data_dir, core, needed, options, &mut report)?;
    let checkpoint_started = Instant::now();
    // Only segments left in place can make a hole with the writer's first segment;
    // an empty journal simply starts at `next_lsn`.
    let live = !segment::list_segments(&dir)?.is_empty();
    let jumps = live && report.next_lsn > report.journal.last_lsn + 1;
    if jumps || report.journal.corruption.is_some() {
        cover_the_skip(data_dir, store, &dir, &mut report, jumps)?;
    } else if missing_checkpoint_has_counters(data_dir, store)? {
        checkpoint::checkpoint_missing(data_dir, store, report.journal.last_lsn)?;
    }
    report.checkpoint_elapsed = checkpoint_started.elapsed();
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Step 4's check of the journal's recorded reach (see [`super::reach`]): the journal
/// found must reach it, unless every partition's checkpoint covers it (`needed_lsn`
/// above it). Refused otherwise, naming the missing LSNs and the first missing segment,
/// unless [`RecoveryOptions::recover_to_corruption`]: then the loss is reported like a
/// corruption and the journal continues above the reach, after every partition is
/// checkpointed there (`cover_the_skip`), so no LSN is reused and no later recovery
/// needs the lost records.
fn check_reach(
    data_dir: &Path,
    core: u32,
    needed_lsn: Lsn,
    options: &RecoveryOptions,
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    let path = reach::reach_path(data_dir, core);
    let reach_lsn = match reach::read_reach(data_dir, core) {
        Ok(Some(lsn)) => lsn,
        Ok(None) => return Ok(()),
        Err(JournalError::Corrupted { offset, reason, .. }) if !options.recover_to_corruption => {
            return Err(corrupted(
                &path,
                offset,
                format!("{reason}{REACH_STAMP_HINT}"),
            ));
        }
        Err(JournalError::Corrupted { .. }) => return Ok(()),
        Err(error) => return Err(error),
    };
    let last_lsn = report.journal.last_lsn;
    if last_lsn >= reach_lsn || needed_lsn > reach_lsn {
        return Ok(());
    }
    let first_missing = last_lsn.max(needed_lsn.saturating_sub(1)) + 1;
    let dir = journal_dir(data_dir, core);
    let reason = format!(
        "the journal ends at LSN {last_lsn} but LSN {reach_lsn} was durable (recorded in \
         {}): at least LSNs {first_missing}..={reach_lsn} are missing, from {} on (the \
         newest segments, or the journal directory, were lost or cut). The reach is \
         recorded every 5 s of writing, so records durable in the last 5 s before the \
         loss may be missing too, uncounted",
        path.display(),
        segment::segment_path(&dir, first_missing).display()
    );
    // A damaged record the scan took for a torn tail is likelier than lost segments:
    // name it, the one place to look.
    let reason = match &report.journal.torn_tail {
        Some(torn) => format!(
            "{reason}. The scan stopped at {} offset {}, where a record fails its checksum \
             and was taken for a torn write: if that file is not the newest segment's end, \
             the damage is there",
            torn.path.display(),
            torn.offset
        ),
        None => reason,
    };
    // Named after the first missing segment: the reach file itself is intact.
    let missing = segment::segment_path(&dir, first_missing);
    if !options.recover_to_corruption {
        return Err(corrupted(&missing, 0, reason + REACH_HINT));
    }
    // A corruption recovered up to already says where the journal was cut (its
    // records are set aside, and the journal continues above them).
    if report.journal.corruption.is_none() {
        report.journal.corruption = Some((missing, 0, reason));
    }
    report.next_lsn = report.next_lsn.max(reach_lsn + 1);
    Ok(())
}

/// After LSNs were skipped (records lost to corruption or a gap, with the operator's
/// consent) or when the journal must continue above its last record (above LSNs set
/// aside, or a checkpoint's): checkpoints every owned partition at `next_lsn - 1`, so
/// that no later recovery needs a record below the skip; and if the journal jumps, sets
/// its remaining segments aside as covered, so the journal on disk has no hole for a
/// reader to meet. Every partition then reflects every record that survived, so the
/// checkpoints are true. The order makes a crash anywhere harmless: until the
/// checkpoints exist nothing is renamed, and a restart finds the same jump again.
fn cover_the_skip(
    data_dir: &Path,
    store: &Store,
    dir: &Path,
    report: &mut RecoveryReport,
    jumps: bool,
) -> Result<(), JournalError> {
    checkpoint::checkpoint_all(data_dir, store, report.next_lsn - 1)?;
    if jumps {
        let live = segment::list_segments(dir)?;
        report
            .journal
            .set_aside
            .extend(set_aside(&live, COVERED_SUFFIX)?);
    }
    Ok(())
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
    store: &mut Store,
    found: &[(u32, Option<CheckpointInfo>)],
    report: &mut RecoveryReport,
) -> Result<(), JournalError> {
    let mut checkpoints = Vec::new();
    for (partition, checkpoint) in found {
        let partition = *partition;
        if store.partition_was_clean(partition) {
            continue;
        }
        match checkpoint {
            Some(found) => checkpoints.push((partition, found.dir.as_path())),
            None => {
                empty_partition(store, partition)?;
                report.partitions_emptied.push(partition);
            }
        }
    }
    store
        .restore_partitions(&checkpoints)
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
