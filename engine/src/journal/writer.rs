//! The journal writer: buffers records and group-commits them without blocking.
//!
//! # Buffers
//! Two [`AlignedBuffer`]s of [`COMMIT_BYTES_MAX`] alternate. `active` gathers records;
//! its byte 0 sits at the block-aligned file offset `active_offset`. A commit writes
//! `active` rounded up to whole blocks (zero padding after the last record) and hands
//! it to the storage; the other buffer becomes `active`, starting with a copy of the
//! partial last block just submitted (the *carry*), so the next commit rewrites that
//! block with more records appended. Worked example: 5,000 bytes of records at offset
//! 0 are written as 8,192 bytes; the next buffer starts at offset 4,096 holding the
//! 904 carried bytes, and new records go after them. The storage gives a buffer back
//! as soon as its write has finished, before the fdatasync.
//!
//! # Commit policy
//! Records appended while a commit is in flight ride the next one. That one may be
//! submitted while the previous one's fdatasync runs, once its write has finished and
//! within the same segment, if the storage accepts it
//! ([`JournalStorage::accepts_another`]; io_uring does, up to two in flight): a record
//! then waits for one fdatasync instead of the rest of the one in flight and then its
//! own. Since each fdatasync starts after every earlier write finished, a commit's
//! success makes every earlier one durable too; completions come in order. Waiting
//! records are submitted when the oldest durable one has waited `durable_wait`, the
//! oldest relaxed one `relaxed_interval`, or `batch_bytes` are waiting: see
//! [`Journal::next_deadline`].
//!
//! # Failure
//! A failure that a retry can undo *degrades* the journal; any other one *fails* it.
//! - Retryable ([`Journal::degraded`]): creating a segment fails (whatever the error:
//!   nothing was written yet), or a commit's write fails with ENOSPC, EDQUOT, EMFILE or
//!   ENFILE, or stops short on a device with too little space left. Such a write never
//!   reported success and was never followed by an fdatasync of its data, and the
//!   commit's buffer comes back intact: retrying writes the same bytes at the same
//!   offsets, so whatever part of it reached the file is overwritten with itself.
//!   While degraded the journal accepts no record ([`JournalError::Degraded`]); the
//!   records already appended stay in memory (the failed commit's buffer is kept as
//!   the pending retry), and [`Journal::submit`] retries: first the failed commit, then
//!   the normal path. The commit task calls it every [`JournalOptions::retry_interval`]
//!   ([`Journal::next_deadline`]). The journal leaves the degraded state when a commit
//!   completes durably; a retry that fails the same way keeps it degraded.
//! - Permanent ([`Journal::failure`]): a failed fdatasync (after one, Linux may have
//!   dropped the dirty pages and marked them clean, so a later fdatasync could report
//!   success for data that never reached the disk), a write failing with any other
//!   error (EIO), a short write with space left, a failed submission to the kernel. No
//!   record is accepted or reported durable again; `durable_lsn` stays where it was.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::reach::{ReachFile, REACH_REFRESH};
use super::record::Record;
use super::segment::{self, Verdict};
use super::storage::{CommitFailure, Completion, JournalStorage, UringStorage};
use super::{
    journal_dir, AlignedBuffer, Durability, JournalError, JournalOptions, Lsn, BLOCK_BYTES,
    COMMIT_BYTES_MAX,
};

/// Counts since open, for benchmarks and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    pub commit_count: u64,
    pub record_count: u64,
    pub bytes_written: u64,
    /// Commits submitted while another one was in flight.
    pub pipelined_count: u64,
    /// Times the journal became degraded (a retryable failure, see the module doc).
    pub degraded_count: u64,
    /// Retries of a commit or of a segment creation while degraded.
    pub retry_count: u64,
    /// Times recording the journal's reach failed (see [`super::reach`]).
    pub reach_failure_count: u64,
}

/// Why the journal is degraded and what it retries.
struct Degraded {
    reason: String,
    /// When the failure or the last retry happened.
    attempted: Instant,
    /// The commit whose write failed, to write again before anything else; `None` when
    /// creating a segment failed (the waiting records are submitted as usual).
    retry: Option<Retry>,
}

/// A commit whose write failed retryably: the same bytes, to the same offsets.
struct Retry {
    offset: u64,
    buffer: AlignedBuffer,
    length: usize,
    last_lsn: Lsn,
    record_count: u64,
}

/// A commit in flight.
struct InFlight {
    last_lsn: Lsn,
    record_count: u64,
    offset: u64,
    length: usize,
}

/// One core's journal writer. See the module doc for buffers, policy and failure.
pub struct Journal<S: JournalStorage = UringStorage> {
    dir: PathBuf,
    options: JournalOptions,
    storage: S,
    active: AlignedBuffer,
    /// Bytes of records in `active`, carry included.
    active_bytes: usize,
    /// File offset of `active[0]`; a multiple of BLOCK_BYTES.
    active_offset: u64,
    /// The other buffer, when neither the storage nor a commit holds it.
    spare: Option<AlignedBuffer>,
    /// The segment commits go to; `None` until the next commit creates one.
    segment: Option<PathBuf>,
    next_lsn: Lsn,
    submitted_lsn: Lsn,
    durable_lsn: Lsn,
    /// Oldest first.
    in_flight: VecDeque<InFlight>,
    oldest_durable: Option<Instant>,
    oldest_relaxed: Option<Instant>,
    failure: Option<String>,
    degraded: Option<Degraded>,
    reach: ReachFile,
    /// Whether the next durable commit is the first of a new segment: its last LSN is
    /// then recorded as the journal's reach.
    reach_due: bool,
    /// When the reach was last recorded: it is recorded again after [`REACH_REFRESH`].
    reach_recorded: Option<Instant>,
    stats: JournalStats,
}

impl Journal<UringStorage> {
    /// Opens core `core`'s journal under `data_dir` for appending, with io_uring.
    /// Run [`super::recovery::recover`] first after an unclean stop; this repairs only
    /// a torn tail of the last segment and refuses corruption in it.
    pub fn open(data_dir: &Path, core: u32, options: JournalOptions) -> Result<Self, JournalError> {
        let storage = UringStorage::new(options.direct_io)
            .map_err(|e| JournalError::io("set up io_uring for", data_dir, e))?;
        Self::open_with_storage(data_dir, core, options, storage)
    }

    /// Has the kernel write a notice to `fd` as each commit finishes; see
    /// [`UringStorage::notify_completions`].
    pub fn notify_completions(&mut self, fd: std::os::fd::OwnedFd) {
        self.storage.notify_completions(fd);
    }
}

impl<S: JournalStorage> Journal<S> {
    /// Opens the journal with a given storage (fault injection in tests).
    pub fn open_with_storage(
        data_dir: &Path,
        core: u32,
        options: JournalOptions,
        storage: S,
    ) -> Result<Self, JournalError> {
        options.validate()?;
        let dir = journal_dir(data_dir, core);
        create_dir_durably(&dir)?;
        let last_lsn = prepare_tail(&dir)?;
        let next_lsn = (last_lsn + 1).max(options.next_lsn_min);
        Ok(Journal {
            dir,
            options,
            storage,
            active: AlignedBuffer::new(COMMIT_BYTES_MAX),
            active_bytes: 0,
            active_offset: 0,
            spare: Some(AlignedBuffer::new(COMMIT_BYTES_MAX)),
            segment: None,
            next_lsn,
            submitted_lsn: next_lsn - 1,
            durable_lsn: next_lsn - 1,
            in_flight: VecDeque::new(),
            oldest_durable: None,
            oldest_relaxed: None,
            failure: None,
            degraded: None,
            reach: ReachFile::new(data_dir, core),
            reach_due: false,
            reach_recorded: None,
            stats: JournalStats::default(),
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The LSN of the last record appended (0 if none ever was).
    pub fn appended_lsn(&self) -> Lsn {
        self.next_lsn - 1
    }

    /// Every record with an LSN up to this one is on disk (fdatasync'd).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Why the journal failed, if it did. Durable waiters above `durable_lsn` must then
    /// be answered with an error.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Why the journal is degraded, if it is (a retryable failure, see the module doc):
    /// it accepts no record until a retry succeeds. Durable waiters above `durable_lsn`
    /// get an unknown outcome; their records may still become durable.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded
            .as_ref()
            .map(|degraded| degraded.reason.as_str())
    }

    /// Whether a commit is in flight.
    pub fn commit_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Whether waiting records could be submitted now (as of the last `poll`): no
    /// commit is in flight, or the storage accepts another one in the same segment.
    pub fn can_submit(&self) -> bool {
        self.in_flight.is_empty() || (self.segment.is_some() && self.storage.accepts_another())
    }

    pub fn stats(&self) -> JournalStats {
        self.stats
    }

    fn check_not_failed(&self) -> Result<(), JournalError> {
        match &self.failure {
            Some(reason) => Err(JournalError::Failed {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_not_degraded(&self) -> Result<(), JournalError> {
        match &self.degraded {
            Some(degraded) => Err(JournalError::Degraded {
                reason: degraded.reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Copies `record` into the buffer and assigns it the next LSN. Never blocks,
    /// except to create a segment file. A full buffer that can be submitted
    /// ([`Journal::can_submit`]) is submitted first (a caller that only polls would
    /// otherwise wait forever), so `BufferFull` means exactly: the buffer is full and
    /// must wait for a commit in flight; poll until one completes, then retry.
    pub fn append(
        &mut self,
        record: &Record<'_>,
        durability: Durability,
    ) -> Result<Lsn, JournalError> {
        self.check_not_failed()?;
        self.check_not_degraded()?;
        record.validate().map_err(JournalError::InvalidRecord)?;
        let length = record.encoded_bytes();
        if self.active_bytes + length > self.active.capacity() && self.can_submit() {
            self.submit()?;
            assert!(self.active_bytes < BLOCK_BYTES, "only the carry is left");
        }
        if self.active_bytes + length > self.active.capacity() {
            return Err(JournalError::BufferFull {
                bytes: self.active_bytes,
            });
        }
        let lsn = self.next_lsn;
        let out = &mut self.active.as_mut_slice()[self.active_bytes..];
        let written = record.encode(lsn, out);
        debug_assert_eq!(
            super::record::decode(&out[..written]).map(|(r, _)| (r.lsn, r.record)),
            Ok((lsn, *record))
        );
        self.active_bytes += written;
        self.next_lsn += 1;
        let oldest = match durability {
            Durability::Durable => &mut self.oldest_durable,
            Durability::Relaxed => &mut self.oldest_relaxed,
        };
        if oldest.is_none() {
            *oldest = Some(Instant::now());
        }
        Ok(lsn)
    }

    /// Makes the records waiting now, relaxed ones included, due as a durable commit
    /// (after `durable_wait`): for a durable answer that depends on them without having
    /// a record of its own. Returns [`Journal::appended_lsn`], the LSN to wait for.
    pub fn hasten(&mut self) -> Lsn {
        if self.waiting_bytes() > 0 && self.oldest_durable.is_none() {
            self.oldest_durable = Some(Instant::now());
        }
        self.appended_lsn()
    }

    fn waiting_bytes(&self) -> usize {
        if self.submitted_lsn == self.appended_lsn() {
            return 0;
        }
        // The carry (bytes before the first unsubmitted record) is at most one block.
        self.active_bytes
    }

    /// When the waiting records' commit is due, if any wait and they could be submitted
    /// ([`Journal::can_submit`]). The commit task sleeps until then (or until a poll
    /// completes a commit).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.failure.is_some() {
            return None;
        }
        if let Some(degraded) = &self.degraded {
            // A retry in flight is reaped like any commit; the next one waits its turn.
            return self
                .in_flight
                .is_empty()
                .then(|| degraded.attempted + self.options.retry_interval);
        }
        if !self.can_submit() || self.waiting_bytes() == 0 {
            return None;
        }
        let durable = self.oldest_durable.map(|t| t + self.options.durable_wait);
        let relaxed = self
            .oldest_relaxed
            .map(|t| t + self.options.relaxed_interval);
        let due = match (durable, relaxed) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        if self.waiting_bytes() >= self.options.batch_bytes {
            let oldest = self
                .oldest_durable
                .into_iter()
                .chain(self.oldest_relaxed)
                .min();
            return oldest.or(Some(due));
        }
        Some(due)
    }

    /// Submits the waiting records if their commit is due at `now`. Returns whether a
    /// commit was submitted.
    pub fn submit_if_due(&mut self, now: Instant) -> Result<bool, JournalError> {
        match self.next_deadline() {
            Some(due) if due <= now => self.submit(),
            _ => {
                self.check_not_failed()?;
                Ok(false)
            }
        }
    }

    /// Submits the waiting records now (write + fdatasync) unless they cannot be
    /// ([`Journal::can_submit`]) or nothing waits; while degraded, retries instead (see
    /// the module doc). Returns whether a commit was submitted. Never blocks, except to
    /// create a new segment file.
    pub fn submit(&mut self) -> Result<bool, JournalError> {
        self.check_not_failed()?;
        if self.degraded.is_some() {
            return self.retry();
        }
        self.submit_waiting()
    }

    /// While degraded: writes the failed commit again, or if creating a segment failed,
    /// submits the waiting records (creating the segment again). One retry at a time.
    fn retry(&mut self) -> Result<bool, JournalError> {
        if !self.in_flight.is_empty() {
            return Ok(false);
        }
        let degraded = self.degraded.as_mut().expect("called while degraded");
        degraded.attempted = Instant::now();
        self.stats.retry_count += 1;
        let Some(retry) = degraded.retry.take() else {
            return self.submit_waiting();
        };
        if let Err(error) = self
            .storage
            .submit(retry.offset, retry.buffer, retry.length)
        {
            let path = self.segment_or_dir();
            return Err(self.fail(JournalError::io("submit a commit to", &path, error)));
        }
        self.in_flight.push_back(InFlight {
            last_lsn: retry.last_lsn,
            record_count: retry.record_count,
            offset: retry.offset,
            length: retry.length,
        });
        Ok(true)
    }

    fn submit_waiting(&mut self) -> Result<bool, JournalError> {
        if !self.can_submit() || self.waiting_bytes() == 0 {
            return Ok(false);
        }
        if self.segment.is_none() {
            self.start_segment()?;
        }
        let offset = self.active_offset;
        let length = self.active_bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        self.active.as_mut_slice()[self.active_bytes..length].fill(0);
        let buffer = self.rotate_buffers();
        if let Err(error) = self.storage.submit(offset, buffer, length) {
            let path = self.segment_or_dir();
            return Err(self.fail(JournalError::io("submit a commit to", &path, error)));
        }
        if !self.in_flight.is_empty() {
            self.stats.pipelined_count += 1;
        }
        self.in_flight.push_back(InFlight {
            last_lsn: self.appended_lsn(),
            record_count: self.appended_lsn() - self.submitted_lsn,
            offset,
            length,
        });
        self.submitted_lsn = self.appended_lsn();
        self.oldest_durable = None;
        self.oldest_relaxed = None;
        Ok(true)
    }

    /// Swaps in the spare buffer as `active`, carrying the partial last block over (or
    /// starting a new segment at offset 0 once this one reached its target size).
    /// Returns the buffer to submit.
    fn rotate_buffers(&mut self) -> AlignedBuffer {
        let full_blocks = self.active_bytes / BLOCK_BYTES * BLOCK_BYTES;
        let carry = self.active_bytes - full_blocks;
        let end = self.active_offset + self.active_bytes as u64;
        let mut next = self
            .spare
            .take()
            .or_else(|| self.storage.take_written_buffer())
            .expect("a commit may be submitted, so the other buffer is free");
        if end >= self.options.segment_bytes_target {
            self.segment = None;
            self.active_offset = 0;
            self.active_bytes = 0;
        } else {
            next.as_mut_slice()[..carry]
                .copy_from_slice(&self.active.as_slice()[full_blocks..self.active_bytes]);
            self.active_offset += full_blocks as u64;
            self.active_bytes = carry;
        }
        std::mem::replace(&mut self.active, next)
    }

    fn start_segment(&mut self) -> Result<(), JournalError> {
        assert_eq!(self.active_offset, 0, "a new segment starts at offset 0");
        let path = segment::segment_path(&self.dir, self.submitted_lsn + 1);
        if let Err(error) = self.storage.create_segment(&path) {
            // Nothing was written: the next attempt creates (truncates) the same file.
            return Err(self.degrade(JournalError::io("create segment", &path, error), None));
        }
        self.segment = Some(path);
        self.reach_due = true;
        Ok(())
    }

    /// The segment commits go to, or the journal directory between segments.
    fn segment_or_dir(&self) -> PathBuf {
        self.segment.clone().unwrap_or_else(|| self.dir.clone())
    }

    /// Reaps finished commits without blocking; returns the new durable LSN if one
    /// finished. An error means a commit failed: the journal is now degraded (it will
    /// retry) or failed, as [`Journal::degraded`] and [`Journal::failure`] say.
    pub fn poll(&mut self) -> Result<Option<Lsn>, JournalError> {
        let mut durable = None;
        while let Some(lsn) = self.reap(false)? {
            durable = Some(lsn);
        }
        Ok(durable)
    }

    /// Reaps the oldest commit in flight if it finished (with `wait`, once it has).
    fn reap(&mut self, wait: bool) -> Result<Option<Lsn>, JournalError> {
        if self.in_flight.is_empty() {
            return Ok(None);
        }
        match self.storage.reap(wait) {
            Ok(None) => Ok(None),
            Ok(Some(completion)) => self.complete(completion).map(Some),
            Err(error) => {
                let path = self.segment_or_dir();
                Err(self.fail(JournalError::io("wait for a commit to", &path, error)))
            }
        }
    }

    fn complete(&mut self, completion: Completion) -> Result<Lsn, JournalError> {
        let done = self
            .in_flight
            .pop_front()
            .expect("reaped a commit in flight");
        let path = self.segment_or_dir();
        let failure = match completion.outcome {
            Ok(()) => {
                if let Some(buffer) = completion.buffer {
                    self.spare = Some(buffer);
                }
                assert!(done.last_lsn > self.durable_lsn, "durable LSN only grows");
                self.durable_lsn = done.last_lsn;
                self.degraded = None;
                let stale = self
                    .reach_recorded
                    .is_none_or(|at| at.elapsed() >= REACH_REFRESH);
                if std::mem::take(&mut self.reach_due) || stale {
                    self.reach_recorded = Some(Instant::now());
                    if self.reach.record(done.last_lsn).is_err() {
                        // The records are durable all the same; only the check is
                        // weaker until the reach is recorded again (`super::reach`).
                        self.stats.reach_failure_count += 1;
                    }
                }
                self.stats.commit_count += 1;
                self.stats.record_count += done.record_count;
                self.stats.bytes_written += done.length as u64;
                return Ok(self.durable_lsn);
            }
            Err(failure) => failure,
        };
        let error = commit_error(failure, path, done.offset, done.length);
        // Retried only with nothing after it in flight (nothing is: a commit is only
        // pipelined behind a finished write) and its bytes back in hand.
        match completion.buffer {
            Some(buffer) if retryable(&error) && self.in_flight.is_empty() => {
                let retry = Retry {
                    offset: done.offset,
                    buffer,
                    length: done.length,
                    last_lsn: done.last_lsn,
                    record_count: done.record_count,
                };
                Err(self.degrade(error, Some(retry)))
            }
            _ => Err(self.fail(error)),
        }
    }

    fn fail(&mut self, error: JournalError) -> JournalError {
        if self.failure.is_none() {
            self.failure = Some(error.to_string());
        }
        error
    }

    /// Enters (or stays in) the degraded state after a retryable `error`.
    fn degrade(&mut self, error: JournalError, retry: Option<Retry>) -> JournalError {
        assert!(self.failure.is_none(), "a failed journal does not degrade");
        if self.degraded.is_none() {
            self.stats.degraded_count += 1;
        }
        let kept = self.degraded.take().and_then(|degraded| degraded.retry);
        assert!(
            retry.is_none() || kept.is_none(),
            "one pending retry at a time"
        );
        self.degraded = Some(Degraded {
            reason: error.to_string(),
            attempted: Instant::now(),
            retry: retry.or(kept),
        });
        error
    }

    /// Blocks until every appended record is durable (shutdown, tests, checkpoints).
    /// While degraded it retries at once, once: a failed retry is its error.
    pub fn sync(&mut self) -> Result<Lsn, JournalError> {
        loop {
            self.check_not_failed()?;
            if !self.in_flight.is_empty() {
                self.reap(true)?;
            } else if self.degraded.is_some() || self.waiting_bytes() > 0 {
                if !self.submit()? {
                    self.check_not_degraded()?;
                }
            } else {
                return Ok(self.durable_lsn);
            }
        }
    }
}

/// Whether a failed commit may be written again (see the module doc, "Failure").
fn retryable(error: &JournalError) -> bool {
    match error {
        JournalError::NoSpace { .. } => true,
        JournalError::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE)
        ),
        _ => false,
    }
}

fn commit_error(failure: CommitFailure, path: PathBuf, offset: u64, length: usize) -> JournalError {
    match failure {
        CommitFailure::Write(error) => JournalError::io("write commit to", &path, error),
        // A write that runs out of space stops short instead of failing with ENOSPC
        // (only the next one would): say "no space" when the device has too little left.
        CommitFailure::ShortWrite { written } if space_left_bytes(&path) < length - written => {
            JournalError::NoSpace { path }
        }
        CommitFailure::ShortWrite { written } => JournalError::ShortWrite {
            path,
            offset,
            written,
            expected: length,
        },
        CommitFailure::Sync(source) => JournalError::SyncFailed { path, source },
    }
}

/// Bytes an unprivileged writer can still allocate on the file system holding `path`
/// (`usize::MAX` if unknown).
fn space_left_bytes(path: &Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return usize::MAX;
    };
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `name` is a NUL-terminated path; `stats` is writable memory of the right
    // type, read only after statvfs reported success (it then filled it).
    let stats = unsafe {
        if libc::statvfs(name.as_ptr(), stats.as_mut_ptr()) != 0 {
            return usize::MAX;
        }
        stats.assume_init()
    };
    let bytes = u128::from(stats.f_bavail) * u128::from(stats.f_frsize);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Creates `dir` and its missing parents, syncing each parent so the entries survive.
pub(crate) fn create_dir_durably(dir: &Path) -> Result<(), JournalError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| JournalError::io("create directory", dir, e))?;
    let mut parent = dir.parent();
    for _ in 0..3 {
        let Some(path) = parent else { break };
        // `Path::new("data").parent()` is `Some("")`: the current directory.
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| JournalError::io("sync directory", path, e))?;
        parent = path.parent();
    }
    Ok(())
}

/// Finds the last LSN of the journal in `dir`, truncating a torn tail of the last
/// segment, removing trailing segments without records, and syncing what remains.
/// Corruption in the last segment is an error (run recovery).
fn prepare_tail(dir: &Path) -> Result<Lsn, JournalError> {
    let mut segments = segment::list_segments(dir)?;
    while let Some(last) = segments.last() {
        let bytes = segment::read_segment_from(&last.path, 0)?;
        let scan = segment::scan_segment(last, &bytes, None, true, |_| Ok(()))?;
        if let Verdict::TornTail { offset, .. } = scan.verdict {
            segment::truncate_segment(&last.path, offset)?;
        }
        match scan.last_lsn {
            Some(lsn) => {
                segment::sync_segment(&last.path)?;
                return Ok(lsn);
            }
            None => {
                std::fs::remove_file(&last.path)
                    .map_err(|e| JournalError::io("remove empty segment", &last.path, e))?;
                segments.pop();
            }
        }
    }
    Ok(0)
}
