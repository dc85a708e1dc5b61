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
        if !superblock_path.exists() {
            let count = partition_count.unwrap_or(crate::PARTITION_COUNT_DEFAULT);
            write_superblock(path, count)?;
        }
        let found = read_superblock(&superblock_path)?;
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
