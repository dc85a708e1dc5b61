//! Tally's counter engine: counters in memory and on disk.
//!
//! A data directory ([`DataDir`]) holds a fixed number of partitions, chosen when it is
//! created and recorded in its superblock. A key belongs to partition
//! `xxh3_64(key) % partition_count`. Each partition is owned by one thread at a time and
//! touched by that thread alone; the engine API is synchronous and takes `&mut self`, so no
//! locks or atomics sit on the data path. A [`Store`] is the set of partitions one thread
//! owns.
//!
//! A partition's counters live in arenas: anonymous memory (huge pages where the kernel
//! gives them) read from the partition's files at open and written back to them at a
//! clean close (see `arena`, `partition`, `index`, `heap`): 32-byte slots, two per 64-byte line, in an open-addressing table that grows
//! by x1.15 with incremental migration, and a key heap for keys over 16 bytes and bounds.
//!
//! The journal (write-ahead log, one per core) lives in [`journal`].

#[cfg(not(target_endian = "little"))]
compile_error!(
    "tally-engine's on-disk layout is little-endian; big-endian targets are not supported"
);

mod arena;
pub mod error;
mod heap;
mod index;
pub mod journal;
pub mod op;
mod partition;
mod store;
mod superblock;

pub use error::{EngineError, OpError};
pub use op::{recycle_ops, Bound, BoundPolicy, Op, OpResult, Outcome};
pub use partition::{CheckpointBytes, PartitionSnapshot};
pub use store::{Store, PREFETCH_DISTANCE};
pub use superblock::{parse_core_count, DataDir, CORES_FILE, PARTITION_COUNT_MAX};

/// Longest key, in bytes (keys are 1..=255 bytes).
pub const KEY_BYTES_MAX: usize = 255;
/// Most operations in one batch.
pub const BATCH_OPS_MAX: usize = 10_000;
/// Partitions of a new data directory unless told otherwise.
pub const PARTITION_COUNT_DEFAULT: u32 = 64;
/// Bytes of one counter slot in the index (two per 64-byte line).
pub const SLOT_BYTES: usize = index::SLOT_BYTES;

const _: () = assert!(KEY_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(PARTITION_COUNT_DEFAULT <= PARTITION_COUNT_MAX);

/// Checks that a key is 1..=[`KEY_BYTES_MAX`] bytes.
#[inline]
pub fn validate_key(key: &[u8]) -> Result<(), OpError> {
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Err(OpError::InvalidKey { length: key.len() });
    }
    Ok(())
}

/// Appends `key` to a key arena. A 16-byte key (the longest inline one, and the common
/// size) is one fixed-size move instead of a call to memcpy, which a copy of variable
/// length compiles to; arenas of keys are filled once per operation on hot paths.
#[inline(always)]
pub fn extend_key(out: &mut Vec<u8>, key: &[u8]) {
    match key.first_chunk::<16>() {
        Some(bytes) if key.len() == 16 => out.extend_from_slice(bytes),
        _ => out.extend_from_slice(key),
    }
}

/// The hash of a key: xxh3_64. Its low bits pick the partition, its top 32 bits the line.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The partition of a key: `xxh3_64(key) % partition_count`.
///
/// `tally_protocol::partition_of` computes the same for clients (the two crates do not
/// depend on each other); tests/tests/partition_rule.rs checks that they agree.
///
/// # Panics
/// If `partition_count` is 0 (a [`DataDir`] never has 0 partitions).
#[inline]
pub fn partition_of(key: &[u8], partition_count: u32) -> u32 {
    partition_of_hash(key_hash(key), partition_count)
}

/// [`partition_of`] for a key whose [`key_hash`] is `hash`.
///
/// # Panics
/// If `partition_count` is 0.
#[inline]
pub fn partition_of_hash(hash: u64, partition_count: u32) -> u32 {
    assert!(partition_count > 0, "partition_count must be positive");
    let count = u64::from(partition_count);
    // The same rule, without a 64-bit division (tens of cycles) for the usual power of
    // two: then `hash % count == hash & (count - 1)`.
    if partition_count.is_power_of_two() {
        (hash & (count - 1)) as u32
    } else {
        (hash % count) as u32
    }
}
