//! Checkpoints: consistent copies of partitions that bound the journal.
//!
//! # Layout
//! ```text
//! <data-dir>/checkpoint/<partition>/        the store's copy of the partition's files
//!                                           plus `journal-position` (below)
//! <data-dir>/checkpoint/<partition>.tmp/    a checkpoint being written
//! <data-dir>/checkpoint/<partition>.old/    the previous one, during the swap
//! <data-dir>/checkpoint/<partition>/journal-position.tmp
//!                                           a position being moved up (ignored)
//! ```
//! `journal-position`, 32 bytes little-endian (an LSN stamp, `super::stamp`, owner =
//! the partition):
//! ```text
//! offset size field
//!      0    8 magic "TLYCKPT1"
//!      8    4 partition
//!     12    4 reserved, zero
//!     16    8 covered LSN: every record of this partition at or below it is reflected
//!     24    8 xxh3_64 of bytes 0..24
//! ```
//! The covered LSN may be above the applied LSN in the copied header: that only says
//! the partition has no record between the two.
//!
//! # Protocol, per round ([`checkpoint_core`])
//! 1. Sync the journal, so every record applied so far is durable: a checkpoint never
//!    reflects a record the journal could lose, and LSNs are never reused after it.
//!    The synced LSN `C` is what this round covers.
//! 2. For each owned partition that changed since its checkpoint (`changed_since`:
//!    none yet, or its applied LSN passed the covered LSN), the store copies it into
//!    `<p>.tmp` and fdatasyncs it; the position file (`C`) is written and synced, and
//!    `<p>.tmp` synced. `<p>` is renamed to `<p>.old` and `<p>.tmp` to `<p>`.
//! 3. The checkpoint root is synced once for all the renames of the round, then every
//!    `<p>.old` removed. A crash before that sync leaves each written partition with
//!    either its old checkpoint (`<p>`, or `<p>.old` if only the first rename
//!    reached the disk, which [`latest`] uses) or its new one: each is complete.
//! 4. An unchanged partition is left alone, unless its covered LSN is below the last
//!    LSN of a segment that step 5 could otherwise delete ("the release target"):
//!    then only its position moves up to `C` (`journal-position.tmp` written, synced,
//!    renamed over `journal-position`, `<p>` synced; a crash leaves the old position
//!    or the new one). Its data files stay. A partition whose only checkpoint is
//!    `<p>.old` is written as in step 2 instead.
//! 5. Segments are released (deleted) from the front while a segment's last LSN is at
//!    or below every owned partition's covered LSN and below the follower retention
//!    LSN. The last segment is never deleted.
//!
//! # Skipping unchanged partitions
//! A round costs fsyncs for what changed, not for every partition. The caller of
//! [`checkpoint_core`] stamps each partition's applied LSN with the LSN of the last
//! record of it that was appended (the server's `CoreJournal::stamp_applied`, and
//! every record is applied before it is appended). So for an unchanged partition `p`,
//! with covered LSN `c <= C` and applied LSN `a <= c`, the journal holds no record of
//! `p` in `(c, C]`: its checkpoint's files, which reflect every record of `p` up to
//! `a`, reflect every record of `p` up to `C` as well.
//!
//! Why no counter is lost after a crash at any point: the skipped partition's
//! checkpoint is as complete as before, and a segment is deleted only when every
//! position covers it, as before. Moving a position from `c` to `C` (step 4) says
//! only the fact above: recovery restores `p` from the same files (applied LSN `a`)
//! and replays the records of `p` above `a` from the journal it kept, and every such
//! record lies above `C`, in segments no position lets go. The move happens after the
//! journal sync of step 1 and is durable before the release of step 5 relies on it.
//!
//! Why the journal stays bounded: after a round every partition's covered LSN is at
//! least the release target (changed ones are at `C`, unchanged ones below the target
//! were moved to `C`), so step 5 deletes the same segments as if every partition had
//! been written. Positions move only when a segment becomes releasable (a segment
//! rolls over), so an idle partition costs two fsyncs per new segment at most, and
//! nothing while the retention LSN holds the segments anyway.
//!
//! An empty partition that never had a checkpoint is skipped the same way, until a
//! segment becomes releasable: recovery restores "no checkpoint" as empty and replays
//! its records from the journal, which keeps every segment while any partition has no
//! checkpoint ([`release_segments`]). So a new data directory's first stop, or a round
//! on a core whose partitions are mostly unused, writes nothing for them; once a
//! segment could be released, they get their (empty) checkpoint, as idle ones get
//! their position moved.
//!
//! A too low applied LSN would make a changed partition look unchanged, and moving its
//! position would then let its records be released: [`checkpoint_core`] requires the
//! stamp. (Before this round-by-round skipping, a stale stamp only cost replay time.)

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::stamp::{self, StampError};
use super::storage::JournalStorage;
use super::writer::create_dir_durably;
use super::{journal_dir, segment, Journal, JournalError, Lsn};
use crate::partition::{CheckpointBytes, PartitionSnapshot};
use crate::store::Store;

const POSITION_FILE: &str = "journal-position";
const POSITION_MAGIC: &[u8; 8] = b"TLYCKPT1";

/// A checkpoint found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub dir: PathBuf,
    pub partition: u32,
    pub covered_lsn: Lsn,
}

/// What a checkpoint of a core did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// The partitions written: those changed since their last checkpoint (see
    /// `changed_since`) or without one (an empty one only when a segment could be
    /// released).
    pub partitions: Vec<CheckpointInfo>,
    /// Unchanged partitions whose checkpoint stood below a segment that could otherwise
    /// be released: their position file alone was moved up to this round's LSN.
    pub positions_advanced: Vec<CheckpointInfo>,
    /// Unchanged partitions left exactly as they were, and empty ones still without a
    /// checkpoint (nothing written).
    pub partitions_unchanged: usize,
    pub segments_released: usize,
}

fn checkpoint_root(data_dir: &Path) -> PathBuf {
    data_dir.join("checkpoint")
}

fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn encode_position(partition: u32, covered_lsn: Lsn) -> [u8; stamp::STAMP_BYTES] {
    stamp::encode(POSITION_MAGIC, partition, covered_lsn)
}

pub(super) fn read_position(dir: &Path, partition: u32) -> Result<CheckpointInfo, JournalError> {
    let path = dir.join(POSITION_FILE);
    let bytes =
        std::fs::read(&path).map_err(|e| JournalError::io("read checkpoint position", &path, e))?;
    let covered_lsn = stamp::decode(&bytes, POSITION_MAGIC, partition).map_err(|error| {
        let offset = if matches!(error, StampError::Range(_)) {
            16
        } else {
            0
        };
        JournalError::Corrupted {
            path: path.clone(),
            offset,
            reason: error.reason("checkpoint position", "checkpoint of another partition"),
        }
    })?;
    Ok(CheckpointInfo {
        dir: dir.to_path_buf(),
        partition,
        covered_lsn,
    })
}

/// The last complete checkpoint of `partition`, if any.
pub fn latest(data_dir: &Path, partition: u32) -> Result<Option<CheckpointInfo>, JournalError> {
    let dir = checkpoint_root(data_dir).join(partition.to_string());
    for candidate in [dir.clone(), with_suffix(&dir, ".old")] {
        if candidate.join(POSITION_FILE).is_file() {
            return read_position(&candidate, partition).map(Some);
        }
    }
    Ok(None)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| JournalError::io("sync directory", dir, e))
}

fn remove_dir_if_present(dir: &Path) -> Result<(), JournalError> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(JournalError::io("remove directory", dir, error))
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` to a new file `path` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let mut file = File::create(path).map_err(|e| JournalError::io("create", path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| JournalError::io("write", path, e))
}

/// Writes a checkpoint of `partition` covering the journal up to `covered_lsn` into
/// `<p>.tmp` (synced, files and directory) and renames it into place (step 3 of the
/// protocol up to the renames). The caller guarantees every record of the partition up
/// to `covered_lsn` is durable and applied, and then syncs the checkpoint root and
/// removes `<p>.old` ([`finish_swaps`]).
fn write_and_swap(
    root: &Path,
    checkpoint: &CheckpointBytes<'_>,
    covered_lsn: Lsn,
) -> Result<CheckpointInfo, JournalError> {
    let partition = checkpoint.partition();
    let dir = root.join(partition.to_string());
    let temporary = with_suffix(&dir, ".tmp");
    let old = with_suffix(&dir, ".old");
    remove_dir_if_present(&temporary)?;
    checkpoint
        .write_to(&temporary)
        .map_err(|source| JournalError::Engine {
            action: "checkpoint partition",
            source,
        })?;
    let position = encode_position(partition, covered_lsn);
    write_synced(&temporary.join(POSITION_FILE), &position)?;
    sync_dir(&temporary)?;
    if dir.is_dir() {
        remove_dir_if_present(&old)?;
        std::fs::rename(&dir, &old).map_err(|e| JournalError::io("rename checkpoint", &dir, e))?;
    }
    std::fs::rename(&temporary, &dir)
        .map_err(|e| JournalError::io("rename checkpoint", &temporary, e))?;
    Ok(CheckpointInfo {
        dir,
        partition,
        covered_lsn,
    })
}

/// Makes the renames of [`write_and_swap`] for `written` durable with one sync of the
/// checkpoint root, then removes their `<p>.old`. Only after that sync may a segment
/// be released on the strength of these checkpoints.
fn finish_swaps(root: &Path, written: &[CheckpointInfo]) -> Result<(), JournalError> {
    if written.is_empty() {
        return Ok(());
    }
    sync_dir(root)?;
    for info in written {
        remove_dir_if_present(&with_suffix(&info.dir, ".old"))?;
    }
    Ok(())
}

/// Writes checkpoints of `partitions` covering the journal up to `covered_lsn` (every
/// record of them up to it durable and applied), with one sync of the root for all.
fn write_checkpoints(
    data_dir: &Path,
    store: &Store,
    partitions: impl IntoIterator<Item = u32>,
    covered_lsn: Lsn,
) -> Result<Vec<CheckpointInfo>, JournalError> {
    let root = checkpoint_root(data_dir);
    create_dir_durably(&root)?;
    let mut written = Vec::new();
    for partition in partitions {
        // On the owning core, written straight from the live partition: no copy.
        let checkpoint =
            store
                .checkpoint_bytes(partition)
                .map_err(|source| JournalError::Engine {
                    action: "checkpoint partition",
                    source,
                })?;
        match write_and_swap(&root, &checkpoint, covered_lsn) {
            Ok(info) => written.push(info),
            Err(error) => {
                // The renames done so far may or may not survive a crash; either way
                // each partition has a complete checkpoint (`latest`). Sync them anyway
                // so the next round does not depend on that, and report the error.
                let _ = finish_swaps(&root, &written);
                return Err(error);
            }
        }
    }
    finish_swaps(&root, &written)?;
    Ok(written)
}

/// Moves the position of the unchanged checkpoint `info` up to `covered_lsn`, keeping
/// its data files: the new position file is written beside the old one, synced, renamed
/// over it, and the directory synced. A crash leaves the old position or the new one.
/// The caller guarantees the partition has no record in `(info.covered_lsn,
/// covered_lsn]`, so the files reflect every record of it up to `covered_lsn`.
pub fn advance_position(
    info: &CheckpointInfo,
    covered_lsn: Lsn,
) -> Result<CheckpointInfo, JournalError> {
    assert!(
        covered_lsn >= info.covered_lsn,
        "a checkpoint position never moves back"
    );
    let path = info.dir.join(POSITION_FILE);
    let temporary = with_suffix(&path, ".tmp");
    write_synced(&temporary, &encode_position(info.partition, covered_lsn))?;
    std::fs::rename(&temporary, &path)
        .map_err(|e| JournalError::io("rename checkpoint position", &temporary, e))?;
    sync_dir(&info.dir)?;
    let advanced = read_position(&info.dir, info.partition)?;
    assert_eq!(
        advanced.covered_lsn, covered_lsn,
        "position read back differs"
    );
    Ok(advanced)
}

/// Whether `partition` changed since its last checkpoint `last`: it has none, or its
/// applied LSN passed the LSN the checkpoint covers.
fn changed_since(store: &Store, partition: u32, last: Option<&CheckpointInfo>) -> bool {
    last.is_none_or(|info| store.applied_lsn(partition) > info.covered_lsn)
}

/// Checkpoints one partition: syncs the journal, copies the partition, swaps the copy
/// into place. Blocks the calling core for the sync and the copy.
pub fn checkpoint_partition<S: JournalStorage>(
    data_dir: &Path,
    store: &Store,
    journal: &mut Journal<S>,
    partition: u32,
) -> Result<CheckpointInfo, JournalError> {
    let covered_lsn = journal.sync()?;
    assert!(
        store.applied_lsn(partition) <= covered_lsn,
        "applied beyond the journal"
    );
    let mut written = write_checkpoints(data_dir, store, [partition], covered_lsn)?;
    Ok(written.pop().expect("one partition written"))
}

/// Checkpoints the owned partitions changed since their last checkpoint (see the
/// module doc, "Skipping unchanged partitions"), moves up the positions of unchanged
/// ones that stand below a segment that could be released, then releases the segments
/// no checkpoint or follower needs. `retention_lsn`: keep every segment holding a
/// record at or above it (the lowest LSN a follower still needs), if given.
///
/// The caller must have recorded in `store`, for every owned partition, an applied LSN
/// at least the LSN of each record of that partition appended to `journal` (the
/// server's `CoreJournal::stamp_applied` does, just before): a partition whose applied
/// LSN is too low would be taken for unchanged.
pub fn checkpoint_core<S: JournalStorage>(
    data_dir: &Path,
    store: &Store,
    journal: &mut Journal<S>,
    core: u32,
    retention_lsn: Option<Lsn>,
) -> Result<CheckpointReport, JournalError> {
    let covered_lsn = journal.sync()?;
    let survey = survey(data_dir, store.owned_partitions(), core, retention_lsn)?;
    let plan = plan_round(store, &survey, covered_lsn);
    let mut report = CheckpointReport {
        partitions: write_checkpoints(data_dir, store, plan.write, covered_lsn)?,
        partitions_unchanged: plan.unchanged,
        ..CheckpointReport::default()
    };
    for info in &plan.advance {
        report
            .positions_advanced
            .push(advance_position(info, covered_lsn)?);
    }
    report.segments_released =
        release_segments(data_dir, store.owned_partitions(), core, retention_lsn)?;
    Ok(report)
}

/// What a round found on disk, read without the store (so off the core, if the core
/// must not wait for the file system): each partition's last checkpoint, and the
/// release target of the core's segments (see `release_target`).
#[derive(Clone, Debug)]
pub struct Survey {
    checkpoints: Vec<(u32, Option<CheckpointInfo>)>,
    release_target: Option<Lsn>,
}

/// Surveys `partitions` (a core's) and core `core`'s segments for a round.
pub fn survey(
    data_dir: &Path,
    partitions: &[u32],
    core: u32,
    retention_lsn: Option<Lsn>,
) -> Result<Survey, JournalError> {
    let mut checkpoints = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        checkpoints.push((partition, latest(data_dir, partition)?));
    }
    let segments = segment::list_segments(&journal_dir(data_dir, core))?;
    Ok(Survey {
        checkpoints,
        release_target: release_target(&segments, retention_lsn),
    })
}

/// What a round does, decided from a [`Survey`] and the store (module doc, steps 2 and
/// 4).
#[derive(Clone, Debug, Default)]
pub struct RoundPlan {
    /// Partitions to write: changed since their checkpoint, without one (an empty
    /// one only when a segment could be released), or left with `<p>.old` alone.
    pub write: Vec<u32>,
    /// Unchanged partitions whose position must move up: it stands below the release
    /// target. [`still_unchanged`] tells whether one still is, later.
    pub advance: Vec<CheckpointInfo>,
    /// Partitions left as they are, and empty ones still without a checkpoint.
    pub unchanged: usize,
}

/// Plans a round over the surveyed partitions. `durable_lsn`: every record the store
/// reflects is durable up to it (asserted: a checkpoint must never reflect a record
/// the journal could lose).
pub fn plan_round(store: &Store, survey: &Survey, durable_lsn: Lsn) -> RoundPlan {
    let mut plan = RoundPlan::default();
    let mut empty_new = Vec::new();
    for (partition, last) in &survey.checkpoints {
        let partition = *partition;
        assert!(
            store.applied_lsn(partition) <= durable_lsn,
            "applied beyond the journal"
        );
        match last {
            Some(info) if !changed_since(store, partition, Some(info)) => {
                // Only a position below what could be released holds the journal
                // back; the others stay untouched, so an idle partition costs nothing
                // most rounds.
                if survey
                    .release_target
                    .is_none_or(|target| info.covered_lsn >= target)
                {
                    plan.unchanged += 1;
                } else if info.dir.file_name() == Some(partition.to_string().as_ref()) {
                    plan.advance.push(info.clone());
                } else {
                    // Only `<p>.old` is left (a crash between the renames): write it anew.
                    plan.write.push(partition);
                }
            }
            None if store.partition_is_empty(partition) => empty_new.push(partition),
            _ => plan.write.push(partition),
        }
    }
    // Empty partitions without a checkpoint would hold back a release: written only then.
    match survey.release_target {
        Some(_) => plan.write.extend(empty_new),
        None => plan.unchanged += empty_new.len(),
    }
    plan
}

/// Whether `info`'s partition is still unchanged since that checkpoint (a plan's
/// [`RoundPlan::advance`] entry, checked again after the core served more requests).
pub fn still_unchanged(store: &Store, info: &CheckpointInfo) -> bool {
    !changed_since(store, info.partition, Some(info))
}

/// Writes one partition's checkpoint from `snapshot`, covering the journal up to
/// `covered_lsn`, and renames it into place; runs on any thread. The caller
/// guarantees that the snapshot reflects every record of the partition up to
/// `covered_lsn` and no other, that they are durable, and then calls
/// [`finish_written`] for the round's written checkpoints before releasing segments.
pub fn write_snapshot(
    data_dir: &Path,
    snapshot: &PartitionSnapshot,
    covered_lsn: Lsn,
) -> Result<CheckpointInfo, JournalError> {
    let root = checkpoint_root(data_dir);
    create_dir_durably(&root)?;
    write_and_swap(&root, &snapshot.bytes(), covered_lsn)
}

/// Makes the renames of the checkpoints [`write_snapshot`] wrote durable (one sync
/// of the checkpoint root) and removes their `<p>.old`.
pub fn finish_written(data_dir: &Path, written: &[CheckpointInfo]) -> Result<(), JournalError> {
    finish_swaps(&checkpoint_root(data_dir), written)
}

/// Checkpoints the owned partitions that have none yet (used by recovery, after the
/// journal was scanned and synced up to `covered_lsn`).
pub(crate) fn checkpoint_missing(
    data_dir: &Path,
    store: &Store,
    covered_lsn: Lsn,
) -> Result<(), JournalError> {
    let mut missing = Vec::new();
    for &partition in store.owned_partitions() {
        if latest(data_dir, partition)?.is_none() {
            missing.push(partition);
        }
    }
    write_checkpoints(data_dir, store, missing, covered_lsn).map(drop)
}

/// Checkpoints every owned partition at `covered_lsn` (used by recovery after it
/// skipped LSNs: see `recovery::cover_the_skip`, and by the server when its core
/// count changes; the journals were recovered and synced, and every journal the
/// partitions will be replayed from continues above `covered_lsn`).
pub fn checkpoint_all(
    data_dir: &Path,
    store: &Store,
    covered_lsn: Lsn,
) -> Result<(), JournalError> {
    let owned = store.owned_partitions().iter().copied();
    write_checkpoints(data_dir, store, owned, covered_lsn).map(drop)
}

/// The last LSN of the last segment that [`release_segments`] could delete if every
/// checkpoint covered it: every segment but the last, and with `retention_lsn` only
/// those whose records all lie below it. `None` if there is no such segment.
fn release_target(segments: &[segment::SegmentInfo], retention_lsn: Option<Lsn>) -> Option<Lsn> {
    let mut target = None;
    for pair in segments.windows(2) {
        let last_lsn = pair[1].first_lsn - 1;
        if retention_lsn.is_some_and(|keep| last_lsn >= keep) {
            break;
        }
        target = Some(last_lsn);
    }
    target
}

/// Deletes the segments of core `core` wholly covered by the checkpoints of
/// `partitions` and below `retention_lsn`. Returns how many were deleted.
pub fn release_segments(
    data_dir: &Path,
    partitions: &[u32],
    core: u32,
    retention_lsn: Option<Lsn>,
) -> Result<usize, JournalError> {
    let mut covered = Lsn::MAX;
    for &partition in partitions {
        match latest(data_dir, partition)? {
            Some(info) => covered = covered.min(info.covered_lsn),
            None => return Ok(0),
        }
    }
    let dir = journal_dir(data_dir, core);
    let segments = segment::list_segments(&dir)?;
    let Some(target) = release_target(&segments, retention_lsn) else {
        return Ok(0);
    };
    let mut released = 0;
    for pair in segments.windows(2) {
        let last_lsn = pair[1].first_lsn - 1;
        if last_lsn > covered.min(target) {
            break;
        }
        std::fs::remove_file(&pair[0].path)
            .map_err(|e| JournalError::io("release segment", &pair[0].path, e))?;
        released += 1;
    }
    if released > 0 {
        sync_dir(&dir)?;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_and_detects_damage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(POSITION_FILE), encode_position(3, 99)).unwrap();
        let info = read_position(dir.path(), 3).unwrap();
        assert_eq!(info.covered_lsn, 99);
        assert!(read_position(dir.path(), 4).is_err());
        let mut bytes = encode_position(3, 99);
        bytes[17] ^= 1;
        std::fs::write(dir.path().join(POSITION_FILE), bytes).unwrap();
        assert!(matches!(
            read_position(dir.path(), 3),
            Err(JournalError::Corrupted { .. })
        ));
    }

    #[test]
    fn release_target_is_the_last_segment_retention_lets_go() {
        let segments: Vec<_> = [1, 101, 201, 301]
            .map(|first_lsn| segment::SegmentInfo {
                first_lsn,
                path: PathBuf::from(format!("segment-{first_lsn}")),
            })
            .into();
        // Every segment but the last: the third ends at LSN 300.
        assert_eq!(release_target(&segments, None), Some(300));
        // A follower needing LSN 150 keeps the second segment and those after it.
        assert_eq!(release_target(&segments, Some(150)), Some(100));
        assert_eq!(release_target(&segments, Some(100)), None);
        assert_eq!(release_target(&segments[3..], None), None);
    }
}
