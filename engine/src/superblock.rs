//! The data directory and its superblock, the file that records how many partitions the
//! directory was created with.
//!
//! # Superblock layout (little-endian), file `superblock`, 24 bytes
//!
//! ```text
//! byte     field            meaning
//!  0..8    magic            b"TALLYSB1"
//!  8..12   version          u32, 1
//! 12..16   partition_count  u32, 1..=PARTITION_COUNT_MAX
//! 16..24   checksum         u64, xxh3_64 of bytes 0..16
//! ```
//!
//! It is written once, when the directory is created: to `superblock.tmp`, fsynced, renamed
//! into place, and the directory fsynced, so it is either wholly there or absent.
//!
//! # A missing superblock
//!
//! Only a directory that holds no Tally file is initialised: one that does not exist yet,
//! is empty, or holds only entries of other programs (`lost+found`) or a `superblock.tmp`
//! left by a creation that stopped before its rename. A directory with any partition
//! file (`pNNNNN.*`), `checkpoint/` or `journal/` but no superblock is refused with
//! [`EngineError::Corrupted`] naming the missing file: writing a new superblock there
//! would take whatever partition count the command line says, and with another count
//! than the lost one, keys would be looked up in the wrong partitions and read as 0.
//! The refusal changes nothing on disk.
//!
//! # A superblock that is not this directory's
//!
//! A superblock is whole (its checksum matches) yet wrong when it was copied from
//! another data directory, or restored from the wrong backup. With another partition
//! count, keys are looked up in the wrong partitions: counters read as nonexistent and
//! new writes create duplicates. So every open compares the count with the partition
//! files, and refuses naming the superblock (nothing changed on disk) when
//! - a header `pNNNNN.meta` or a checkpoint `checkpoint/<N>/` (or `.old`, `.tmp`) exists
//!   for an index `N` at or above the count, or
//! - the headers present are exactly those of partitions `0..k` for some `k` below the
//!   count and the directory has served (some checkpoint exists, none at or above
//!   `k`): every partition gets its header when the directory first starts, before any
//!   checkpoint is written, so a served directory with the headers of a smaller count
//!   was created with that count. (A single missing header in the middle is not this
//!   pattern: `partition` refuses it, naming the header.)
//!
//! Each header also records its own index, which `partition` checks when it opens it.
//! These checks read directory listings only.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::arena::io_error;
use crate::error::EngineError;
use crate::partition::sync_directory;

const SUPERBLOCK_MAGIC: &[u8; 8] = b"TALLYSB1";
const SUPERBLOCK_VERSION: u32 = 1;
const SUPERBLOCK_BYTES: usize = 24;
const SUPERBLOCK_NAME: &str = "superblock";

/// Most partitions a data directory may have.
pub const PARTITION_COUNT_MAX: u32 = 65_536;

/// A data directory: a superblock plus the files of its partitions.
#[derive(Clone, Debug)]
pub struct DataDir {
    path: PathBuf,
    partition_count: u32,
}

impl DataDir {
    /// Creates the directory with `partition_count` partitions (default
    /// [`crate::PARTITION_COUNT_DEFAULT`]) or opens it. Opening with `Some(n)` that differs
    /// from the recorded count is [`EngineError::PartitionCountMismatch`].
    pub fn open_or_create(
        path: &Path,
        partition_count: Option<u32>,
    ) -> Result<DataDir, EngineError> {
        if let Some(count) = partition_count {
            if count == 0 || count > PARTITION_COUNT_MAX {
                return Err(EngineError::InvalidConfig(format!(
                    "partition count {count} is outside 1..={PARTITION_COUNT_MAX}"
                )));
            }
        }
        fs::create_dir_all(path).map_err(io_error("create directory", path))?;
        let superblock_path = path.join(SUPERBLOCK_NAME);
        if !file_exists(&superblock_path)? {
            refuse_if_used(path, &superblock_path)?;
            let count = partition_count.unwrap_or(crate::PARTITION_COUNT_DEFAULT);
            write_superblock(path, count)?;
        }
        let found = read_superblock(&superblock_path)?;
        refuse_foreign_superblock(path, &superblock_path, found)?;
        if let Some(requested) = partition_count.filter(|&n| n != found) {
            return Err(EngineError::PartitionCountMismatch {
                path: path.to_path_buf(),
                found,
                requested,
            });
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            partition_count: found,
        })
    }

    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `path` exists. Unlike `Path::exists`, an error other than "not found" (no
/// permission, an I/O error) is returned, not taken for absence: absence leads to
/// creating files.
pub(crate) fn file_exists(path: &Path) -> Result<bool, EngineError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(io_error("stat", path)(error)),
    }
}

/// Whether `name`, an entry of a data directory, is one Tally writes (other than the
/// superblock and its temporary file): a partition file, `checkpoint` or `journal`.
fn is_tally_entry(name: &str) -> bool {
    let partition_file = name.len() > 7
        && name.starts_with('p')
        && name.as_bytes()[1..6].iter().all(u8::is_ascii_digit)
        && name.as_bytes()[6] == b'.';
    partition_file || name == "checkpoint" || name == "journal"
}

/// Refuses to initialise `directory`, whose superblock is missing, if it holds any Tally
/// file (see the module doc). The error names the superblock and the first few such files.
fn refuse_if_used(directory: &Path, superblock_path: &Path) -> Result<(), EngineError> {
    const NAMES_SHOWN_MAX: usize = 4;
    let mut found = Vec::new();
    let entries = fs::read_dir(directory).map_err(io_error("list", directory))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", directory))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_tally_entry(&name) {
            found.push(name);
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    let more = found.len().saturating_sub(NAMES_SHOWN_MAX);
    found.truncate(NAMES_SHOWN_MAX);
    let shown = found.join(", ");
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Err(EngineError::Corrupted {
        path: superblock_path.to_path_buf(),
        offset: 0,
        reason: format!(
            "the superblock is missing, but the directory holds Tally files ({shown}{more}); \
             refusing to initialise it again, which could lose their counters: restore the \
             superblock from a backup, or start with an empty directory"
        ),
    })
}

/// The partition index a data directory entry named `name` belongs to, if it is a
/// partition header `pNNNNN.meta`.
fn header_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('p')?.strip_suffix(".meta")?;
    (digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The partition index an entry of `checkpoint/` named `name` belongs to: `N`,
/// `N.old` or `N.tmp` (see `journal::checkpoint`).
fn checkpoint_index(name: &str) -> Option<u32> {
    let digits = name
        .strip_suffix(".old")
        .or_else(|| name.strip_suffix(".tmp"))
        .unwrap_or(name);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The indexes of the entries of `directory` that `index_of` recognises, sorted; none if
/// the directory does not exist.
fn indexes_in(
    directory: &Path,
    index_of: fn(&str) -> Option<u32>,
) -> Result<Vec<u32>, EngineError> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_error("list", directory)(error)),
    };
    let mut indexes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list", directory))?;
        if let Some(index) = index_of(&entry.file_name().to_string_lossy()) {
            indexes.push(index);
        }
    }
    indexes.sort_unstable();
    indexes.dedup();
    Ok(indexes)
}

/// Refuses a superblock whose partition count `count` the partition files of
/// `directory` contradict (see "A superblock that is not this directory's" in the
/// module doc), naming the superblock and the evidence.
fn refuse_foreign_superblock(
    directory: &Path,
    superblock_path: &Path,
    count: u32,
) -> Result<(), EngineError> {
    let headers = indexes_in(directory, header_index)?;
    let checkpoints = indexes_in(&directory.join("checkpoint"), checkpoint_index)?;
    let evidence = if let Some(&index) = headers.iter().find(|&&index| index >= count) {
        let name = crate::partition::file_name(index, "meta");
        format!("the header of partition {index} exists ({name})")
    } else if let Some(&index) = checkpoints.iter().find(|&&index| index >= count) {
        format!("a checkpoint of partition {index} exists (checkpoint/{index})")
    } else {
        // `headers` is sorted and below `count`: `0..k` exactly when its last is k - 1.
        let k = headers.len() as u32;
        let prefix = headers.last().is_some_and(|&last| last + 1 == k);
        let served = !checkpoints.is_empty() && checkpoints.iter().all(|&index| index < k);
        if !(prefix && k < count && served) {
            return Ok(());
        }
        format!(
            "only the headers of partitions 0..={} exist, and the directory has served \
             (checkpoints of those partitions exist): it was created with {k} partitions",
            k - 1
        )
    };
    Err(EngineError::Corrupted {
        path: superblock_path.to_path_buf(),
        offset: 12,
        reason: format!(
            "the superblock records {count} partitions, but {evidence}: the superblock is \
             not this directory's (copied from another data directory, or restored from \
             the wrong backup). Refusing to start, which would look keys up in the wrong \
             partitions; restore this directory's own superblock"
        ),
    })
}

/// The file in which the server records the core count its journals were written
/// under (see the server's `layout.rs`): ASCII `cores N\n`. Core `k` journals the
/// partitions `p` with `p % N == k`.
pub const CORES_FILE: &str = "cores";

/// The core count in the text of a [`CORES_FILE`], `None` if it is not `cores N` with
/// N at least 1.
pub fn parse_core_count(text: &str) -> Option<u32> {
    let cores: u32 = text.strip_prefix("cores ")?.trim_end().parse().ok()?;
    (cores > 0).then_some(cores)
}

/// The core count recorded in `data_dir`; `None` if the file is missing or unreadable.
fn recorded_cores(data_dir: &Path) -> Option<u32> {
    parse_core_count(&fs::read_to_string(data_dir.join(CORES_FILE)).ok()?)
}

/// The first segment of a journal in `data_dir` that starts above LSN 1, if one does:
/// the records before it were released, which happens only once checkpoints of every
/// partition of that core covered them. Then those checkpoints are the only copy of
/// what the released records did. With `partition`, only the journal of the core that
/// owns it under the recorded core layout counts (any core's if none is recorded): an
/// idle core's partition is not at risk because a busy core released its own
/// segments. Reads directory listings only.
pub(crate) fn released_journal_segment(
    data_dir: &Path,
    partition: Option<u32>,
) -> Result<Option<PathBuf>, EngineError> {
    let owner = partition
        .zip(recorded_cores(data_dir))
        .map(|(partition, cores)| format!("core-{}", partition % cores));
    let root = data_dir.join("journal");
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("list", &root)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error("list", &root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = match &owner {
            Some(owner) => name == *owner,
            None => name.starts_with("core-"),
        };
        if !wanted {
            continue;
        }
        let segments =
            crate::journal::list_segments(&entry.path()).map_err(|error| match error {
                crate::journal::JournalError::Io {
                    action,
                    path,
                    source,
                } => EngineError::Io {
                    action,
                    path,
                    source,
                },
                other => EngineError::Io {
                    action: "list",
                    path: entry.path(),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        if let Some(first) = segments.first().filter(|first| first.first_lsn > 1) {
            return Ok(Some(first.path.clone()));
        }
    }
    Ok(None)
}

/// Whether `data_dir` holds a checkpoint of `partition` (complete, or being swapped in:
/// see `journal::checkpoint`). A checkpoint whose position file is damaged counts as
/// one: recovery reports the damage.
pub(crate) fn has_checkpoint(data_dir: &Path, partition: u32) -> bool {
    !matches!(
        crate::journal::checkpoint::latest(data_dir, partition),
        Ok(None)
    )
}

/// The directory of the checkpoint of `partition` in `data_dir` (see `journal::checkpoint`).
pub(crate) fn checkpoint_path(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join("checkpoint").join(partition.to_string())
}

fn encode(partition_count: u32) -> [u8; SUPERBLOCK_BYTES] {
    let mut bytes = [0u8; SUPERBLOCK_BYTES];
    bytes[..8].copy_from_slice(SUPERBLOCK_MAGIC);
    bytes[8..12].copy_from_slice(&SUPERBLOCK_VERSION.to_le_bytes());
    bytes[12..16].copy_from_slice(&partition_count.to_le_bytes());
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..16]);
    bytes[16..].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

fn write_superblock(directory: &Path, partition_count: u32) -> Result<(), EngineError> {
    let temporary = directory.join("superblock.tmp");
    let mut file = fs::File::create(&temporary).map_err(io_error("create", &temporary))?;
    file.write_all(&encode(partition_count))
        .map_err(io_error("write", &temporary))?;
    file.sync_all().map_err(io_error("fsync", &temporary))?;
    let path = directory.join(SUPERBLOCK_NAME);
    fs::rename(&temporary, &path).map_err(io_error("rename", &path))?;
    sync_directory(directory)
}

fn read_superblock(path: &Path) -> Result<u32, EngineError> {
    let bytes = fs::read(path).map_err(io_error("read", path))?;
    let corrupted = |offset: u64, reason: &str| EngineError::Corrupted {
        path: path.to_path_buf(),
        offset,
        reason: reason.to_string(),
    };
    if bytes.len() != SUPERBLOCK_BYTES {
        return Err(corrupted(
            bytes.len() as u64,
            "superblock has the wrong length",
        ));
    }
    if &bytes[..8] != SUPERBLOCK_MAGIC {
        return Err(corrupted(0, "bad superblock magic"));
    }
    let stored = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if stored != xxhash_rust::xxh3::xxh3_64(&bytes[..16]) {
        return Err(corrupted(16, "superblock checksum mismatch"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SUPERBLOCK_VERSION {
        return Err(corrupted(8, "unsupported superblock version"));
    }
    let partition_count = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if partition_count == 0 || partition_count > PARTITION_COUNT_MAX {
        return Err(corrupted(12, "partition count out of range"));
    }
    debug_assert_eq!(encode(partition_count)[..], bytes[..]);
    Ok(partition_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_entries_are_told_from_other_files() {
        for name in [
            "p00000.meta",
            "p65535.heap",
            "p00001.t00000003",
            "checkpoint",
            "journal",
        ] {
            assert!(is_tally_entry(name), "{name}");
        }
        for name in [
            "lost+found",
            "superblock.tmp",
            "p0000.meta",
            "p00000",
            "notes.txt",
        ] {
            assert!(!is_tally_entry(name), "{name}");
        }
    }
}
