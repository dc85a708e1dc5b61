//! Errors of the counter engine.
//!
//! [`OpError`] is what one operation can fail with; it never changes state.
//! [`EngineError`] is what opening, growing or checking the store can fail with.

use std::path::PathBuf;

/// Why one operation was refused. The counter is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// The key is empty or longer than [`crate::KEY_BYTES_MAX`] bytes.
    #[error("invalid key: length {length} is outside 1..=255 bytes")]
    InvalidKey { length: usize },
    /// The result would not fit in an i64.
    #[error("overflow: the value would leave the range of a 64-bit signed integer")]
    Overflow,
    /// The result would fall below the counter's floor (policy `Reject`).
    #[error("rejected: the value would fall below the floor {floor}")]
    BelowFloor { floor: i64 },
    /// The result would rise above the counter's ceiling (policy `Reject`).
    #[error("rejected: the value would rise above the ceiling {ceiling}")]
    AboveCeiling { ceiling: i64 },
    /// `SetBounds` with a floor above the ceiling.
    #[error("invalid bounds: floor {floor} is above ceiling {ceiling}")]
    InvalidBounds { floor: i64, ceiling: i64 },
    /// `SetBounds` that the current value would violate.
    #[error("rejected: the current value {value} lies outside the new bounds")]
    OutOfBounds { value: i64 },
    /// The key belongs to a partition this store does not own.
    #[error("partition {partition} is not owned here")]
    NotOwned { partition: u32 },
    /// The key holds a counter of another kind than the operation needs.
    #[error("wrong kind: the key holds a counter of another kind")]
    WrongKind,
    /// A batch longer than [`crate::BATCH_OPS_MAX`].
    #[error("batch of {count} operations exceeds the limit of {max}")]
    BatchTooLarge { count: usize, max: usize },
    /// The arena could not grow (disk full, mapping failed), or no room could be made for
    /// a new key even in bigger tables (keys crafted to share a hash). Nothing was changed.
    #[error("storage full: the arena could not grow or make room for this key")]
    StorageFull,
    /// The journal refuses mutations for now (degraded: retried until a commit
    /// succeeds; or failed, until a restart): the mutation was refused before it was
    /// applied. Given by the server, never by the store.
    #[error("the journal refuses mutations for now: nothing was applied; retry later")]
    JournalRefused,
}

/// Why the store could not be opened, grown or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// An I/O error, with what was being done and to which file.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file's contents fail a check: wrong magic, bad checksum, truncated, inconsistent.
    #[error("corrupted {path} at offset {offset}: {reason}")]
    Corrupted {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The data directory was created with other parameters than requested.
    #[error("data directory {path} has {found} partitions, but {requested} were requested")]
    PartitionCountMismatch {
        path: PathBuf,
        found: u32,
        requested: u32,
    },
    /// A parameter is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}
