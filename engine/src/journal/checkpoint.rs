//! Checkpoints: consistent copies of partitions that bound the journal.
//!
//! # Layout
//! ```text
//! <data-dir>/checkpoint/<partition>/        the store's copy of the partition's files
//!                                           plus `journal-position` (below)
//! <data-dir>/checkpoint/<partition>.tmp/    a checkpoint being written
//! <data-dir>/checkpoint/<partition>.old/    the previous one, during the swap
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
//!
//! # Protocol, per partition
//! 1. Sync the journal, so every record applied so far is durable: a checkpoint never
//!    reflects a record the journal could lose, and LSNs are never reused after it.
//! 2. The store copies the partition into `<p>.tmp` and fdatasyncs it; the position
//!    file is written and synced.
//! 3. `<p>` is renamed to `<p>.old`, `<p>.tmp` to `<p>`, the directory synced, `<p>.old`
//!    removed. A crash between the renames leaves `<p>.old`, which [`latest`] uses.
//!
//! Segments are released (deleted) from the front while a segment's last LSN is at or
//! below every owned partition's covered LSN and below the follower retention LSN. The
//! last segment is never deleted.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::stamp::{self, StampError};
use super::storage::JournalStorage;
use super::writer::create_dir_durably;
use super::{journal_dir, segment, Journal, JournalError, Lsn};
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

/// What a full checkpoint of a core did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    pub partitions: Vec<CheckpointInfo>,
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

/// Writes a checkpoint of `partition` covering the journal up to `covered_lsn`. The
/// caller guarantees every record of the partition up to it is durable and applied.
fn write_checkpoint(
    data_dir: &Path,
    store: &Store,
    partition: u32,
    covered_lsn: Lsn,
) -> Result<CheckpointInfo, JournalError> {
    let root = checkpoint_root(data_dir);
    create_dir_durably(&root)?;
    let dir = root.join(partition.to_string());
    let temporary = with_suffix(&dir, ".tmp");
    let old = with_suffix(&dir, ".old");
    remove_dir_if_present(&temporary)?;
    store
        .checkpoint_partition(partition, &temporary)
        .map_err(|source| JournalError::Engine {
            action: "checkpoint partition",
            source,
        })?;
    let position_path = temporary.join(POSITION_FILE);
    let mut file =
        File::create(&position_path).map_err(|e| JournalError::io("create", &position_path, e))?;
    file.write_all(&encode_position(partition, covered_lsn))
        .and_then(|()| file.sync_all())
        .map_err(|e| JournalError::io("write", &position_path, e))?;
    sync_dir(&temporary)?;
    if dir.is_dir() {
        remove_dir_if_present(&old)?;
        std::fs::rename(&dir, &old).map_err(|e| JournalError::io("rename checkpoint", &dir, e))?;
    }
    std::fs::rename(&temporary, &dir)
        .map_err(|e| JournalError::io("rename checkpoint", &temporary, e))?;
    sync_dir(&root)?;
    remove_dir_if_present(&old)?;
    Ok(CheckpointInfo {
        dir,
        partition,
        covered_lsn,
    })
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
    write_checkpoint(data_dir, store, partition, covered_lsn)
}

/// Checkpoints every owned partition in turn, then releases the segments no
/// checkpoint or follower needs. `retention_lsn`: keep every segment holding a record
/// at or above it (the lowest LSN a follower still needs), if given.
pub fn checkpoint_core<S: JournalStorage>(
    data_dir: &Path,
    store: &Store,
    journal: &mut Journal<S>,
    core: u32,
    retention_lsn: Option<Lsn>,
) -> Result<CheckpointReport, JournalError> {
    let mut report = CheckpointReport::default();
    for &partition in store.owned_partitions() {
        report
            .partitions
            .push(checkpoint_partition(data_dir, store, journal, partition)?);
    }
    report.segments_released =
        release_segments(data_dir, store.owned_partitions(), core, retention_lsn)?;
    Ok(report)
}

/// Checkpoints the owned partitions that have none yet (used by recovery, after the
/// journal was scanned and synced up to `covered_lsn`).
pub(crate) fn checkpoint_missing(
    data_dir: &Path,
    store: &Store,
    covered_lsn: Lsn,
) -> Result<(), JournalError> {
    for &partition in store.owned_partitions() {
        if latest(data_dir, partition)?.is_none() {
            write_checkpoint(data_dir, store, partition, covered_lsn)?;
        }
    }
    Ok(())
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
    for &partition in store.owned_partitions() {
        write_checkpoint(data_dir, store, partition, covered_lsn)?;
    }
    Ok(())
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
    let mut released = 0;
    for pair in segments.windows(2) {
        let last_lsn = pair[1].first_lsn - 1;
        let needed = last_lsn > covered || retention_lsn.is_some_and(|keep| last_lsn >= keep);
        if needed {
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
}
