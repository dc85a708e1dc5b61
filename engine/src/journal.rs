//! The write-ahead journal: one per core, written with O_DIRECT through io_uring.
//!
//! # Purpose
//! Every mutation a core applies to its partitions is appended to that core's journal
//! as a [`Record`] carrying the counter's *resulting* value. Records are group-committed:
//! one `IORING_OP_WRITE` (O_DIRECT) linked to one `IORING_OP_FSYNC` (DATASYNC) makes a
//! whole batch durable. After a crash, [`recovery::recover`] restores each partition
//! from its last checkpoint and replays the records after it. Replication streams the
//! same records to followers through [`JournalReader`].
//!
//! # Layout on disk
//! ```text
//! <data-dir>/journal/core-<N>/segment-<first LSN, 20 digits>.log
//! <data-dir>/journal-reach/core-<N>             an LSN known durable (see [`reach`])
//! <data-dir>/checkpoint/<partition>/            (see [`checkpoint`])
//! ```
//! A segment is a sequence of records (layout in [`record`]) packed back to back from
//! offset 0, each a multiple of 8 bytes. A zero byte where a record would start means
//! "no more records in this segment": the rest of the last 4 KiB block is zero
//! padding, and the file may go on with up to about 1 MiB of zeros written ahead of
//! the commits (see [`storage::UringStorage`]).
//! A segment grows until a commit ends beyond [`JournalOptions::segment_bytes_target`];
//! the next commit starts a new segment. Every open of a journal also starts a new
//! segment, so a segment is only ever appended to by one writer.
//!
//! # Invariants
//! - LSNs start at 1 and increase by exactly 1 from record to record within a segment.
//!   Across a segment boundary too: a segment's first LSN (its name) is the last LSN
//!   of the segment before plus one, so a missing segment is seen as a hole. When
//!   recovery must start the writer higher (above LSNs set aside after corruption, or
//!   above a checkpoint), it first checkpoints every partition there and sets the
//!   earlier segments aside (see [`recovery`]).
//! - The reach file records an LSN that was durable: the last LSN of the first durable
//!   commit of each new segment, and of a commit durable 5 s or more after the last
//!   record, written after that commit's fdatasync. Recovery
//!   refuses a journal that ends below it while a partition still needs the records
//!   in between (see [`reach`]): so losing the newest segments is seen, and no crash
//!   can make the record wrong.
//! - At most one commit (write + fdatasync) is in flight per journal. A commit never
//!   spans two segments and writes at most [`COMMIT_BYTES_MAX`] bytes, so after a power
//!   loss only the last [`COMMIT_BYTES_MAX`] bytes of the last segment can be torn.
//! - The journal never blocks its caller, except in [`Journal::sync`], when it starts
//!   a new segment file (create + directory fsync, once per segment), and when it
//!   records the reach (the reach file's write + fdatasync, once per segment and at
//!   most once per 5 s).
//! - After a write or fdatasync error the journal is either *degraded* or *failed* (see
//!   the writer's "Failure"). Degraded, when a retry writes the very same bytes at the
//!   same offsets (a segment could not be created; a write failed for lack of space or
//!   file descriptors): it accepts no records, keeps the ones it holds, retries every
//!   [`JournalOptions::retry_interval`] and accepts records again once a retry is
//!   durable. Failed, otherwise: it accepts no more records and never reports them
//!   durable. A failed fdatasync is never retried (after one, Linux may have dropped
//!   the dirty pages and marked them clean: a later fdatasync would succeed without
//!   writing them).
//! - Media assumption: a 512-byte sector is written atomically (old or new content,
//!   never a mix within the sector). Rewriting the partial last block therefore never
//!   destroys the records already durable in it: their bytes are identical in both
//!   versions.

mod buffer;
pub mod checkpoint;
pub mod fault;
pub mod reach;
mod reader;
pub mod record;
pub mod recovery;
mod replay;
mod segment;
mod stamp;
pub mod storage;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use buffer::AlignedBuffer;
pub use reader::JournalReader;
pub use record::{Bounds, Idempotency, LoggedRecord, OwnedRecord, Record, RecordKind};
pub use segment::{list_segments, segment_path, SegmentInfo};
pub use writer::{Journal, JournalStats};

/// A log sequence number: the position of a record in its core's journal, from 1.
pub type Lsn = u64;

/// The O_DIRECT block size: buffers, offsets and lengths of writes are multiples of it.
pub const BLOCK_BYTES: usize = 4096;

/// The largest single commit (one write). Also the window at the end of the last
/// segment inside which a bad record counts as a torn tail rather than corruption.
pub const COMMIT_BYTES_MAX: usize = 4 << 20;

/// The default size after which a segment is closed and a new one started.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

/// The default [`JournalOptions::retry_interval`].
pub const RETRY_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);

/// The largest segment size a journal accepts as its target.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

const _: () = assert!(COMMIT_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(COMMIT_BYTES_MAX >= 64 * record::RECORD_BYTES_MAX);

/// When a mutation may be acknowledged to its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// After its record's LSN is at or below [`Journal::durable_lsn`] (the default).
    #[default]
    Durable,
    /// At once; the record reaches the disk within [`JournalOptions::relaxed_interval`]
    /// plus one commit's latency.
    Relaxed,
}

/// How a journal batches commits and names its files.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// A segment is closed once a commit ends at or beyond this many bytes.
    pub segment_bytes_target: u64,
    /// How long a durable record may wait for companions before its commit is
    /// submitted. Zero (the default) submits as soon as no commit is in flight; records
    /// appended meanwhile ride the next commit (group commit).
    pub durable_wait: Duration,
    /// How long a relaxed record may wait before its commit is submitted (default 10 ms).
    pub relaxed_interval: Duration,
    /// Submit at once, whatever the waits, when this many bytes are waiting.
    pub batch_bytes: usize,
    /// The first LSN this journal may assign (raised by recovery above any checkpoint).
    pub next_lsn_min: Lsn,
    /// Open segments with O_DIRECT (default). Off only for file systems without it.
    pub direct_io: bool,
    /// While degraded, how long after a failure the next retry is due (default 1 s).
    pub retry_interval: Duration,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes_target: SEGMENT_BYTES_DEFAULT,
            durable_wait: Duration::ZERO,
            relaxed_interval: Duration::from_millis(10),
            batch_bytes: 256 << 10,
            next_lsn_min: 1,
            direct_io: true,
            retry_interval: RETRY_INTERVAL_DEFAULT,
        }
    }
}

impl JournalOptions {
    /// Checks the limits; a bad option is a clear error, never a panic later.
    pub fn validate(&self) -> Result<(), JournalError> {
        let segment_ok = self.segment_bytes_target >= BLOCK_BYTES as u64
            && self.segment_bytes_target <= SEGMENT_BYTES_MAX;
        if !segment_ok {
            return Err(JournalError::InvalidConfig(format!(
                "segment_bytes_target {} is outside {BLOCK_BYTES}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes_target
            )));
        }
        if self.batch_bytes == 0 || self.batch_bytes > COMMIT_BYTES_MAX {
            return Err(JournalError::InvalidConfig(format!(
                "batch_bytes {} is outside 1..={COMMIT_BYTES_MAX}",
                self.batch_bytes
            )));
        }
        if self.next_lsn_min == 0 {
            return Err(JournalError::InvalidConfig(
                "next_lsn_min must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The directory holding core `core`'s journal segments.
pub fn journal_dir(data_dir: &Path, core: u32) -> PathBuf {
    data_dir.join("journal").join(format!("core-{core}"))
}

/// Everything the journal, its reader, checkpoints and recovery can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// An I/O error, with what was being done and to which file.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A journal or checkpoint file fails a check. `offset` is the byte offset in `path`.
    #[error("corrupted {path} at offset {offset}: {reason}")]
    Corrupted {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The disk is full (ENOSPC): the commit was not made durable.
    #[error("no space left on the device holding {path}")]
    NoSpace { path: PathBuf },
    /// fdatasync failed: the records of that commit (and all later) are not durable.
    #[error("fdatasync of {path} failed: {source}")]
    SyncFailed {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel wrote fewer bytes than asked.
    #[error("short write to {path} at offset {offset}: {written} of {expected} bytes")]
    ShortWrite {
        path: PathBuf,
        offset: u64,
        written: usize,
        expected: usize,
    },
    /// An earlier write or sync failed; the journal accepts no more records.
    #[error("journal failed earlier and accepts no more records: {reason}")]
    Failed { reason: String },
    /// A retryable failure (see [`Journal::degraded`]): no records are accepted until a
    /// retry succeeds.
    #[error("journal degraded, retrying, accepts no records until a retry succeeds: {reason}")]
    Degraded { reason: String },
    /// The in-memory buffer is full while a commit is in flight: poll, then retry.
    #[error("journal buffer full ({bytes} bytes waiting): poll for the commit in flight")]
    BufferFull { bytes: usize },
    /// A record that cannot be journaled (bad key length, bad bounds).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// An option out of range.
    #[error("invalid journal configuration: {0}")]
    InvalidConfig(String),
    /// The counter store failed during checkpoint or recovery.
    #[error("store error during {action}: {source}")]
    Engine {
        action: &'static str,
        source: crate::error::EngineError,
    },
    /// Replaying a record was refused by the store.
    #[error("replay of LSN {lsn} in {path} refused by the store: {source}")]
    ReplayRefused {
        lsn: Lsn,
        path: PathBuf,
        source: crate::error::OpError,
    },
}

impl JournalError {
    /// Wraps an I/O error with the action and the file.
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return JournalError::NoSpace {
                path: path.to_path_buf(),
            };
        }
        JournalError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
