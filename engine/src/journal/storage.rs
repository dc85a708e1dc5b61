//! The I/O seam under the journal writer: where commits meet the disk.
//!
//! A [`JournalStorage`] holds one open segment file and the commits in flight on it.
//! A commit is "write these whole blocks at this offset, then fdatasync"; the storage
//! takes ownership of the buffer while the kernel reads it and hands it back once the
//! write has finished ([`JournalStorage::take_written_buffer`]) or with the
//! [`Completion`], so no buffer is ever touched while I/O on it is in flight.
//!
//! # Commits in flight
//! A storage may take a second commit while the first one's fdatasync runs
//! ([`JournalStorage::accepts_another`]), but only once the first one's write has
//! finished in full. So writes never overlap (the next commit rewrites the previous
//! one's partial last block), and each fdatasync starts after every earlier write has
//! finished: a commit's successful fdatasync makes it and every earlier commit durable.
//! Completions are reported in submission order. A commit whose `submit` failed is
//! never reported; if its I/O may still run (see `UringStorage`'s abandoned commits),
//! the storage keeps its buffer until that I/O has finished.
//!
//! Implementations:
//! - [`UringStorage`]: the real one. One `IORING_OP_WRITE` on an O_DIRECT file, linked
//!   (`IOSQE_IO_LINK`) to an `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`, submitted
//!   together; reaping never blocks unless asked to. It also keeps the segment written
//!   with zeros a little ahead of the commits, so that they overwrite blocks rather
//!   than extend the file (see its doc).
//! - [`FileStorage`]: blocking `pwrite` + `fdatasync` with std, completing at once. The
//!   base of [`super::fault::FaultStorage`], which injects failures for tests.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use io_uring::{opcode, squeue, types, IoUring};

use super::{AlignedBuffer, BLOCK_BYTES};

/// Why a commit did not become durable.
#[derive(Debug)]
pub enum CommitFailure {
    /// The write failed (ENOSPC, EIO, ...).
    Write(io::Error),
    /// The write wrote only `written` bytes; the linked fdatasync was cancelled.
    ShortWrite { written: usize },
    /// The write succeeded but fdatasync failed: nothing of the commit is durable.
    Sync(io::Error),
}

/// A finished commit: the buffer comes back with the outcome, unless
/// [`JournalStorage::take_written_buffer`] took it back earlier.
#[derive(Debug)]
pub struct Completion {
    pub buffer: Option<AlignedBuffer>,
    pub outcome: Result<(), CommitFailure>,
}

/// Where the journal writer's commits go.
pub trait JournalStorage {
    /// Creates the segment file at `path` (truncating a leftover of the same name),
    /// makes its directory entry durable, and makes it the target of later commits,
    /// closing the previous one. Only called with no commit in flight.
    fn create_segment(&mut self, path: &Path) -> io::Result<()>;

    /// Starts writing `buffer[..length]` at `offset` of the current segment, followed
    /// by an fdatasync. `offset` and `length` are multiples of [`BLOCK_BYTES`]. Only
    /// called with no commit in flight, or when [`JournalStorage::accepts_another`]
    /// says so. On error the buffer is gone (the journal fails and needs it no more).
    fn submit(&mut self, offset: u64, buffer: AlignedBuffer, length: usize) -> io::Result<()>;

    /// Returns the oldest commit in flight if it has finished; with `wait`, blocks until
    /// it has. `Ok(None)` when it has not finished (or nothing is in flight).
    fn reap(&mut self, wait: bool) -> io::Result<Option<Completion>>;

    /// Whether `submit` may be called now although a commit is in flight: its write has
    /// finished in full (as of the last `reap`) and there is room for another. The
    /// default, for storages that finish a commit inside `submit`, is never.
    fn accepts_another(&self) -> bool {
        false
    }

    /// The buffer of a commit in flight whose write has finished (as of the last
    /// `reap`), so the writer can fill it again while the fdatasync runs.
    fn take_written_buffer(&mut self) -> Option<AlignedBuffer> {
        None
    }
}

fn open_segment(path: &Path, direct_io: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(true);
    if direct_io {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options.open(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn check_commit(offset: u64, buffer: &AlignedBuffer, length: usize) {
    assert!(
        offset.is_multiple_of(BLOCK_BYTES as u64),
        "commit offset not block-aligned"
    );
    assert!(
        length.is_multiple_of(BLOCK_BYTES) && length > 0,
        "commit length not whole blocks"
    );
    assert!(length <= buffer.capacity(), "commit longer than its buffer");
}

/// The write and fdatasync of a commit in flight, and what each returned.
struct InFlight {
    /// Submission number, in the completions' user data.
    sequence: u64,
    /// `None` once the write finished and `take_written_buffer` took it back.
    buffer: Option<AlignedBuffer>,
    length: usize,
    /// The file offset just past the commit.
    end: u64,
    write_result: Option<i32>,
    sync_result: Option<i32>,
    /// Its entries were pushed but entering the kernel failed, so `submit` returned an
    /// error and the journal forgot the commit. The entries stay in the submission
    /// queue and the next entry into the kernel (another commit's, or the wait in
    /// `Drop`) starts them, so the commit stays in flight until both of its
    /// completions have come: they are recognised, and its buffer outlives the write.
    /// Never reported by `reap` nor lent by `take_written_buffer`.
    abandoned: bool,
}

/// What a completion is: its user data's low byte. A commit's write and fdatasync carry
/// the commit's sequence number in the bytes above (`sequence << 8 | kind`).
const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;
const USER_DATA_ZERO: u64 = 3;
const USER_DATA_NOTIFY: u64 = 4;
const USER_DATA_KIND_MASK: u64 = 0xff;
/// Each commit takes up to four entries (write, notice, fdatasync, notice), plus one
/// zeroing write; completions in flight stay far below the completion queue's size.
const RING_ENTRIES: u32 = 16;

/// Most commits in flight at once: one whose fdatasync runs, and the next.
pub const COMMITS_IN_FLIGHT_MAX: usize = 2;

/// How far beyond the last commit's end the segment is kept already written (with
/// zeros), so that commits overwrite blocks instead of extending the file.
const ZERO_AHEAD_BYTES: u64 = 512 << 10;

/// The size of one zeroing write.
const ZERO_STEP_BYTES: usize = 256 << 10;

const _: () = assert!(ZERO_STEP_BYTES.is_multiple_of(BLOCK_BYTES));

/// What a completion notice sends (see [`UringStorage::notify_completions`]): the
/// bytes carry nothing, the reader only wakes. A static, so its address outlives any
/// write in flight.
static NOTICE: [u8; 8] = [1, 0, 0, 0, 0, 0, 0, 0];

/// The real storage: O_DIRECT writes linked to fdatasync through io_uring.
///
/// # Writing ahead with zeros
/// A commit that extends the file costs its fdatasync a file-system journal commit
/// (the new size and block allocation) on top of the device cache flush; a commit
/// that overwrites blocks already written costs only the flush. On this machine's
/// ext4 that is 2,300-2,750 against 4,000-4,460 write + fdatasync pairs per second
/// (16 KiB each); tallyd at 4 connections x 64 durable went from 149-159k to 222-240k
/// increments per second (BENCHMARKS.md). So the storage keeps the segment written
/// with zeros up to `ZERO_AHEAD_BYTES` beyond the last commit's end: with each
/// commit it submits, if the zeroed region runs short, it also submits one unlinked
/// `ZERO_STEP_BYTES` write of zeros just past both the region and the commit. The
/// next commit's fdatasync makes it durable along with its own records. The step is
/// small because that fdatasync also waits for the zeros to reach the disk (256 KiB is
/// about 1 ms here): larger steps made rarer but longer stalls.
///
/// Zeros are what the journal format already reads as "no more records", so a
/// segment's zero tail reads as a clean end, and recovery and readers need nothing
/// new. Invariants:
/// - a zeroing write never overlaps the commit in flight (it starts at or after the
///   commit's end), and a commit that reaches into a zeroing write still in flight is
///   submitted with `IOSQE_IO_DRAIN`, so it starts only after the zeros landed;
/// - zeroing never touches a block below any commit's end, so it never overwrites a
///   record;
/// - a zeroing write that fails (ENOSPC, say) stops zeroing for the segment and fails
///   nothing: commits then extend the file and meet the error themselves, if any.
pub struct UringStorage {
    ring: IoUring,
    file: Option<File>,
    path: PathBuf,
    /// Oldest first; at most [`COMMITS_IN_FLIGHT_MAX`].
    in_flight: VecDeque<InFlight>,
    /// The next commit's sequence number.
    next_sequence: u64,
    direct_io: bool,
    /// Zeros for zeroing writes; `None` until the first one, and after a failed wait
    /// on the ring (leaked, since the kernel may still read it).
    zeros: Option<AlignedBuffer>,
    /// The offset of the zeroing write in flight, if any, and its result once reaped.
    zeroing: Option<(u64, Option<i32>)>,
    /// The current segment is known to be written (records or zeros) below this offset.
    written_end: u64,
    /// Whether to zero ahead in the current segment (off after a failed zeroing write).
    zero_ahead: bool,
    /// Where each commit's completion notice goes, if anywhere.
    notify: Option<OwnedFd>,
    /// Tests only: `push_commit` fails its next entry into the kernel, after the push,
    /// as `io_uring_enter` may (EAGAIN, EBUSY, EINTR).
    #[cfg(test)]
    fail_next_enter: bool,
}

impl UringStorage {
    /// Sets up a small ring. `direct_io` false drops O_DIRECT (for file systems
    /// without it); buffers stay aligned either way.
    pub fn new(direct_io: bool) -> io::Result<Self> {
        Ok(UringStorage {
            ring: IoUring::new(RING_ENTRIES)?,
            file: None,
            path: PathBuf::new(),
            in_flight: VecDeque::with_capacity(COMMITS_IN_FLIGHT_MAX),
            next_sequence: 0,
            direct_io,
            zeros: None,
            zeroing: None,
            written_end: 0,
            zero_ahead: true,
            notify: None,
            #[cfg(test)]
            fail_next_enter: false,
        })
    }

    /// From now on, once a commit's write has finished, and again once its fdatasync
    /// has (successfully or not), the kernel sends 8 bytes to `fd`, a connected socket
    /// (an `IORING_OP_SEND` linked after each with `IOSQE_IO_HARDLINK`), so an event
    /// loop can wait for the commit by reading the other end of the socket pair instead
    /// of polling [`JournalStorage::reap`] on a timer; the first notice says the next
    /// commit may be submitted ([`JournalStorage::accepts_another`]). A notice that
    /// finds the socket full is dropped (`EAGAIN`) rather than parking a kernel worker,
    /// and one whose reader is gone fails with `EPIPE` without a signal. A notice is
    /// only a hint to reap: when the write fails, the linked entries are cancelled and
    /// no notice comes, so a waiter needs a fallback timeout.
    pub fn notify_completions(&mut self, fd: OwnedFd) {
        self.notify = Some(fd);
    }

    /// A notice entry for [`UringStorage::notify_completions`], if notices are on.
    fn notice(&self) -> Option<squeue::Entry> {
        // A send, not a write: MSG_NOSIGNAL, so a reader gone (at shutdown) is EPIPE,
        // never SIGPIPE; MSG_DONTWAIT, so a full socket drops the notice.
        self.notify.as_ref().map(|notify| {
            opcode::Send::new(
                types::Fd(notify.as_raw_fd()),
                NOTICE.as_ptr(),
                NOTICE.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
            .build()
            .user_data(USER_DATA_NOTIFY)
        })
    }

    /// Pushes the linked chain (write, notice, fdatasync, notice; or write, fdatasync
    /// without notices), and the zeroing write at `zero_at` if any, and enters the
    /// kernel. The write's soft link cancels the rest of the chain if it fails or
    /// falls short; the notices' hard links let the fdatasync run even if a notice
    /// fails. The error says whether the entries were pushed (and so may still reach
    /// the kernel).
    fn push_commit(
        &mut self,
        sequence: u64,
        offset: u64,
        pointer: *const u8,
        length: usize,
        drain: bool,
        zero_at: Option<u64>,
    ) -> Result<(), (bool, io::Error)> {
        let fd = types::Fd(self.file.as_ref().expect("a segment is open").as_raw_fd());
        let write_flags = if drain {
            squeue::Flags::IO_LINK | squeue::Flags::IO_DRAIN
        } else {
            squeue::Flags::IO_LINK
        };
        let write = opcode::Write::new(fd, pointer, length as u32)
            .offset(offset)
            .build()
            .flags(write_flags)
            .user_data(sequence << 8 | USER_DATA_WRITE);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(sequence << 8 | USER_DATA_SYNC);
        let (entries, count) = match self.notice().zip(self.notice()) {
            Some((written, synced)) => (
                [
                    write,
                    written.flags(squeue::Flags::IO_HARDLINK),
                    sync.flags(squeue::Flags::IO_HARDLINK),
                    synced,
                ],
                4,
            ),
            None => {
                let nop = opcode::Nop::new().build();
                ([write, sync, nop.clone(), nop], 2)
            }
        };
        let mut queue = self.ring.submission();
        // SAFETY: the entries point at `pointer[..length]`, the memory of the buffer now
        // owned by the commit's `InFlight`, and at the open `self.file`. The buffer is
        // neither freed, moved in memory nor written until the write's completion is
        // reaped (`take_written_buffer`, `reap`, `Drop`; a commit whose entry into the
        // kernel fails stays in flight for this, see `InFlight::abandoned`), nor the
        // file closed until every completion is (`create_segment` and `Drop` wait).
        // The notices point at the static NOTICE and at `self.notify`, which is never
        // closed while the storage lives (and the kernel holds its own reference to a
        // file once the entry is submitted).
        let pushed = unsafe { queue.push_multiple(&entries[..count]) };
        pushed.map_err(|_| (false, io::Error::other("io_uring submission queue full")))?;
        drop(queue);
        if let Some(at) = zero_at {
            self.push_zeroing(at);
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_enter) {
            return Err((true, io::Error::from_raw_os_error(libc::EAGAIN)));
        }
        self.ring.submit().map_err(|error| (true, error))?;
        Ok(())
    }

    /// Pushes (without entering the kernel) a write of [`ZERO_STEP_BYTES`] zeros at
    /// `at`, unless the zeros buffer is missing or the queue is full.
    fn push_zeroing(&mut self, at: u64) {
        let (Some(file), Some(zeros)) = (self.file.as_ref(), self.zeros.as_ref()) else {
            return;
        };
        let zero = opcode::Write::new(
            types::Fd(file.as_raw_fd()),
            zeros.as_ptr(),
            ZERO_STEP_BYTES as u32,
        )
        .offset(at)
        .build()
        .user_data(USER_DATA_ZERO);
        // SAFETY: `self.zeros` is never written, and is neither freed nor moved in
        // memory while `self.zeroing` says a zeroing write is in flight (`reap_zeroing`,
        // `Drop`); the file stays open at least as long (`create_segment` waits for it).
        // The submission queue has room: every push is followed by a submit, so it
        // holds at most this entry and a commit's four (after a failed submit the
        // journal submits nothing more; a push that finds the queue full is skipped).
        if unsafe { self.ring.submission().push(&zero) }.is_ok() {
            self.zeroing = Some((at, None));
        }
    }

    /// Where the zeroing write to go with a commit ending at `end` starts, if one
    /// should: when none is in flight and the written region reaches less than
    /// [`ZERO_AHEAD_BYTES`] past `end`.
    fn zero_start(&mut self, end: u64) -> Option<u64> {
        let wanted =
            self.zero_ahead && self.zeroing.is_none() && self.written_end < end + ZERO_AHEAD_BYTES;
        if !wanted {
            return None;
        }
        self.zeros
            .get_or_insert_with(|| AlignedBuffer::new(ZERO_STEP_BYTES));
        Some(self.written_end.max(end))
    }

    fn drain_completions(&mut self) {
        for entry in self.ring.completion() {
            let (kind, sequence) = (
                entry.user_data() & USER_DATA_KIND_MASK,
                entry.user_data() >> 8,
            );
            let result = Some(entry.result());
            match kind {
                USER_DATA_WRITE => commit(&mut self.in_flight, sequence).write_result = result,
                USER_DATA_SYNC => commit(&mut self.in_flight, sequence).sync_result = result,
                // A notice's own outcome does not matter (see `notify_completions`).
                USER_DATA_NOTIFY => {}
                USER_DATA_ZERO => {
                    if let Some((_, slot)) = self.zeroing.as_mut() {
                        *slot = result;
                    }
                }
                other => panic!("unexpected io_uring completion {other}"),
            }
        }
        self.reap_zeroing();
    }

    /// Accounts for a finished zeroing write.
    fn reap_zeroing(&mut self) {
        let Some((at, Some(result))) = self.zeroing else {
            return;
        };
        self.zeroing = None;
        if result == ZERO_STEP_BYTES as i32 {
            self.written_end = self.written_end.max(at + ZERO_STEP_BYTES as u64);
        } else {
            self.zero_ahead = false;
        }
    }

    /// Whether the oldest commit in flight has finished, write and fdatasync.
    fn oldest_finished(&self) -> bool {
        self.in_flight
            .front()
            .is_some_and(|f| f.write_result.is_some() && f.sync_result.is_some())
    }

    fn all_finished(&self) -> bool {
        self.in_flight
            .iter()
            .all(|f| f.write_result.is_some() && f.sync_result.is_some())
    }

    /// Blocks until the commits and the zeroing write in flight have all finished.
    fn wait_for_all(&mut self) -> io::Result<()> {
        self.drain_completions();
        while !self.all_finished() || self.zeroing.is_some() {
            self.wait_for_completion()?;
            self.drain_completions();
        }
        Ok(())
    }

    fn wait_for_completion(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

/// The commit in flight numbered `sequence`.
fn commit(in_flight: &mut VecDeque<InFlight>, sequence: u64) -> &mut InFlight {
    in_flight
        .iter_mut()
        .find(|commit| commit.sequence == sequence)
        .expect("a commit's completion comes while it is in flight")
}

fn outcome(write_result: i32, sync_result: i32, length: usize) -> Result<(), CommitFailure> {
    if write_result < 0 {
        return Err(CommitFailure::Write(io::Error::from_raw_os_error(
            -write_result,
        )));
    }
    if (write_result as usize) < length {
        return Err(CommitFailure::ShortWrite {
            written: write_result as usize,
        });
    }
    if sync_result < 0 {
        return Err(CommitFailure::Sync(io::Error::from_raw_os_error(
            -sync_result,
        )));
    }
    Ok(())
}

impl JournalStorage for UringStorage {
    fn create_segment(&mut self, path: &Path) -> io::Result<()> {
        assert!(
            self.in_flight.is_empty(),
            "segment switch with a commit in flight"
        );
        // The zeros of the old segment are no longer wanted, but their buffer is in use
        // until the write finishes.
        self.wait_for_all()?;
        self.file = Some(open_segment(path, self.direct_io)?);
        self.path = path.to_path_buf();
        self.written_end = 0;
        self.zero_ahead = true;
        Ok(())
    }

    fn submit(&mut self, offset: u64, buffer: AlignedBuffer, length: usize) -> io::Result<()> {
        assert!(
            self.in_flight.is_empty() || self.accepts_another(),
            "a commit submitted before the previous one's write finished"
        );
        check_commit(offset, &buffer, length);
        if self.file.is_none() {
            return Err(io::Error::other("no segment open"));
        }
        self.drain_completions();
        let end = offset + length as u64;
        let drain = self.zeroing.is_some_and(|(at, _)| end > at);
        let zero_at = self.zero_start(end);
        let pointer = buffer.as_ptr();
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.in_flight.push_back(InFlight {
            sequence,
            buffer: Some(buffer),
            length,
            end,
            write_result: None,
            sync_result: None,
            abandoned: false,
        });
        let pushed = self.push_commit(sequence, offset, pointer, length, drain, zero_at);
        if let Err((pushed, error)) = pushed {
            if pushed {
                // The entries (and the zeroing write pushed with them, which
                // `self.zeroing` keeps waiting for) sit in the submission queue, and a
                // later entry into the kernel starts them: see `InFlight::abandoned`.
                self.in_flight.back_mut().expect("just stored").abandoned = true;
            } else {
                // Nothing reached the queue: the buffer is free again.
                self.in_flight.pop_back().expect("just stored");
            }
            return Err(error);
        }
        Ok(())
    }

    fn reap(&mut self, wait: bool) -> io::Result<Option<Completion>> {
        self.drain_completions();
        // An abandoned commit is the newest (nothing is submitted after a failure),
        // so a front one is all that is left, and the journal expects nothing.
        if self.in_flight.front().is_none_or(|commit| commit.abandoned) {
            return Ok(None);
        }
        while wait && !self.oldest_finished() {
            self.wait_for_completion()?;
            self.drain_completions();
        }
        if !self.oldest_finished() {
            return Ok(None);
        }
        let done = self
            .in_flight
            .pop_front()
            .expect("finished implies in flight");
        let outcome = outcome(
            done.write_result.expect("finished"),
            done.sync_result.expect("finished"),
            done.length,
        );
        if outcome.is_ok() {
            self.written_end = self.written_end.max(done.end);
        }
        Ok(Some(Completion {
            buffer: done.buffer,
            outcome,
        }))
    }

    fn accepts_another(&self) -> bool {
        self.in_flight.len() < COMMITS_IN_FLIGHT_MAX
            && self.in_flight.iter().all(|commit| {
                commit.write_result == Some(commit.length as i32)
                    && commit.sync_result.is_none_or(|result| result >= 0)
            })
    }

    fn take_written_buffer(&mut self) -> Option<AlignedBuffer> {
        self.in_flight
            .iter_mut()
            .find(|commit| {
                !commit.abandoned && commit.write_result.is_some() && commit.buffer.is_some()
            })
            .and_then(|commit| commit.buffer.take())
    }
}

impl Drop for UringStorage {
    fn drop(&mut self) {
        if self.wait_for_all().is_err() {
            // The kernel may still read the buffers: leak them rather than free them
            // under DMA. This only happens if waiting on the ring itself fails.
            for commit in self.in_flight.drain(..) {
                std::mem::forget(commit.buffer);
            }
            if let Some(zeros) = self.zeros.take() {
                std::mem::forget(zeros);
            }
        }
    }
}

/// Blocking storage with std file I/O: `pwrite` then `fdatasync`, done inside
/// `submit`, reported by the next `reap`. No O_DIRECT; used as the base of fault
/// injection and where io_uring is unavailable.
#[derive(Default)]
pub struct FileStorage {
    file: Option<File>,
    done: Option<Completion>,
}

impl FileStorage {
    pub fn new() -> Self {
        FileStorage::default()
    }

    /// Writes `bytes` at `offset` of the open segment, without syncing.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no segment open"))?;
        file.write_all_at(bytes, offset)
    }

    /// Reads `length` bytes at `offset` of the open segment (zeros past its end).
    pub fn read_at(&mut self, offset: u64, length: usize) -> io::Result<Vec<u8>> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no segment open"))?;
        let mut bytes = vec![0u8; length];
        let mut done = 0;
        while done < length {
            match file.read_at(&mut bytes[done..], offset + done as u64)? {
                0 => break,
                count => done += count,
            }
        }
        Ok(bytes)
    }

    /// fdatasync of the open segment.
    pub fn sync(&mut self) -> io::Result<()> {
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no segment open"))?;
        file.sync_data()
    }

    /// Records a finished commit for the next `reap`.
    pub fn complete(&mut self, buffer: AlignedBuffer, outcome: Result<(), CommitFailure>) {
        assert!(self.done.is_none(), "two commits in flight");
        self.done = Some(Completion {
            buffer: Some(buffer),
            outcome,
        });
    }
}

impl JournalStorage for FileStorage {
    fn create_segment(&mut self, path: &Path) -> io::Result<()> {
        assert!(
            self.done.is_none(),
            "segment switch with a commit in flight"
        );
        self.file = Some(open_segment(path, false)?);
        Ok(())
    }

    fn submit(&mut self, offset: u64, buffer: AlignedBuffer, length: usize) -> io::Result<()> {
        check_commit(offset, &buffer, length);
        let outcome = match self.write_at(offset, &buffer.as_slice()[..length]) {
            Err(error) => Err(CommitFailure::Write(error)),
            Ok(()) => self.sync().map_err(CommitFailure::Sync),
        };
        self.complete(buffer, outcome);
        Ok(())
    }

    fn reap(&mut self, _wait: bool) -> io::Result<Option<Completion>> {
        Ok(self.done.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits of varying sizes, each rewriting the previous one's last block as the
    /// writer does, some larger than the zeroed room: the file must hold every commit's
    /// bytes (zeros never land on records), zeros after the last commit, and be written
    /// ahead of it.
    #[test]
    fn zeroing_ahead_never_overwrites_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut storage = UringStorage::new(true).unwrap();
        storage.create_segment(&path).unwrap();
        let mut model: Vec<u8> = Vec::new();
        let mut end = 0u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for commit in 0..300u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let blocks = if commit % 50 == 7 {
                200
            } else {
                1 + (state % 24) as usize
            };
            let offset = end.saturating_sub(BLOCK_BYTES as u64);
            let length = blocks * BLOCK_BYTES;
            let mut buffer = AlignedBuffer::new(length);
            for (index, byte) in buffer.as_mut_slice().iter_mut().enumerate() {
                *byte = (commit as usize + index / BLOCK_BYTES) as u8 | 1;
            }
            model.resize(offset as usize, 0);
            model.extend_from_slice(&buffer.as_slice()[..length]);
            let new_end = offset + length as u64;
            storage.submit(offset, buffer, length).unwrap();
            let done = storage.reap(true).unwrap().expect("waited for it");
            done.outcome.unwrap();
            end = new_end;
        }
        storage.wait_for_all().unwrap();
        drop(storage);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.len() as u64 >= end + ZERO_STEP_BYTES as u64,
            "file of {} bytes not written ahead of the last commit's end {end}",
            bytes.len()
        );
        assert!(
            bytes[..end as usize] == model[..],
            "a commit's bytes changed"
        );
        assert!(
            bytes[end as usize..].iter().all(|&b| b == 0),
            "non-zero tail"
        );
    }

    /// Pipelined commits, each submitted once the previous one's write finished and
    /// rewriting its partial last block: completions come in order, buffers come back
    /// after the write, and the file holds every commit's bytes.
    #[test]
    fn a_commit_follows_the_previous_write_while_its_fdatasync_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut storage = UringStorage::new(true).unwrap();
        storage.create_segment(&path).unwrap();
        let mut model: Vec<u8> = Vec::new();
        let (mut end, mut overlapped, mut reaped) = (0u64, 0, 0);
        let mut buffers = vec![
            AlignedBuffer::new(8 * BLOCK_BYTES),
            AlignedBuffer::new(8 * BLOCK_BYTES),
        ];
        for commit in 0..100u32 {
            let mut buffer = match buffers.pop() {
                Some(buffer) => buffer,
                None => loop {
                    // Wait for a write to finish, reaping what completes meanwhile.
                    if let Some(done) = storage.reap(false).unwrap() {
                        done.outcome.unwrap();
                        reaped += 1;
                        if let Some(buffer) = done.buffer {
                            break buffer;
                        }
                    }
                    if storage.accepts_another() {
                        if let Some(buffer) = storage.take_written_buffer() {
                            break buffer;
                        }
                    }
                    std::hint::spin_loop();
                },
            };
            while !storage.in_flight.is_empty() && !storage.accepts_another() {
                if let Some(done) = storage.reap(false).unwrap() {
                    done.outcome.unwrap();
                    reaped += 1;
                    if let Some(spare) = done.buffer {
                        buffers.push(spare);
                    }
                }
            }
            if !storage.in_flight.is_empty() {
                overlapped += 1;
            }
            let blocks = 1 + commit as usize % 8;
            let offset = end.saturating_sub(BLOCK_BYTES as u64);
            let length = blocks * BLOCK_BYTES;
            for (index, byte) in buffer.as_mut_slice()[..length].iter_mut().enumerate() {
                *byte = (commit as usize + index / 512) as u8 | 1;
            }
            model.resize(offset as usize, 0);
            model.extend_from_slice(&buffer.as_slice()[..length]);
            storage.submit(offset, buffer, length).unwrap();
            end = offset + length as u64;
        }
        while let Some(done) = storage.reap(true).unwrap() {
            done.outcome.unwrap();
            reaped += 1;
        }
        assert_eq!(reaped, 100, "every commit completes once");
        assert!(
            overlapped > 0,
            "no commit was submitted while another was in flight"
        );
        drop(storage);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes[..end as usize] == model[..],
            "a commit's bytes changed"
        );
    }

    /// A commit submitted while a zeroing write of its blocks is still in flight must
    /// land after it, so its records are not overwritten by zeros. The storage orders
    /// the two with `IOSQE_IO_DRAIN`. (ext4 on this machine's kernel also happens to
    /// serialize the two writes on the inode, so this test checks the outcome rather
    /// than catching a missing flag.) A 256 KiB write takes about a millisecond here,
    /// so the zeroing is in flight when the commit follows it at once; the test
    /// asserts that happened at least once.
    #[test]
    fn a_commit_into_a_zeroing_write_in_flight_lands_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut overlapped = 0;
        for round in 0..20u8 {
            let path = dir.path().join(format!("segment-{round}"));
            let mut storage = UringStorage::new(true).unwrap();
            storage.create_segment(&path).unwrap();
            storage.zeros = Some(AlignedBuffer::new(ZERO_STEP_BYTES));
            storage.zero_ahead = false;
            storage.push_zeroing(0);
            storage.ring.submit().unwrap();
            let length = 2 * BLOCK_BYTES;
            let mut buffer = AlignedBuffer::new(length);
            buffer.as_mut_slice().fill(round | 0x80);
            storage.drain_completions();
            if storage.zeroing.is_some() {
                overlapped += 1;
            }
            storage.submit(0, buffer, length).unwrap();
            storage.reap(true).unwrap().unwrap().outcome.unwrap();
            storage.wait_for_all().unwrap();
            drop(storage);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), ZERO_STEP_BYTES);
            assert!(
                bytes[..length].iter().all(|&b| b == round | 0x80),
                "zeros won"
            );
            assert!(bytes[length..].iter().all(|&b| b == 0));
        }
        assert!(
            overlapped > 0,
            "no commit followed a zeroing write in flight"
        );
    }

    /// A commit's first notice comes once its write has finished (the next commit may
    /// go), its second once it can be reaped: two per commit.
    #[test]
    fn a_commit_notice_follows_the_write_and_another_the_commit() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let (mut reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        writer.set_nonblocking(true).unwrap();
        reader
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut storage = UringStorage::new(true).unwrap();
        storage.notify_completions(OwnedFd::from(writer));
        storage.create_segment(&dir.path().join("segment")).unwrap();
        for round in 0..3u64 {
            let buffer = AlignedBuffer::new(BLOCK_BYTES);
            storage
                .submit(round * BLOCK_BYTES as u64, buffer, BLOCK_BYTES)
                .unwrap();
            let mut notice = [0u8; 8];
            reader.read_exact(&mut notice).unwrap();
            assert_eq!(notice, NOTICE);
            storage.drain_completions();
            assert!(storage.accepts_another(), "the write finished");
            assert!(storage.take_written_buffer().is_some());
            reader.read_exact(&mut notice).unwrap();
            let done = storage.reap(false).unwrap().expect("reapable once noticed");
            assert!(done.buffer.is_none(), "taken back after the write");
            done.outcome.unwrap();
        }
        reader.set_nonblocking(true).unwrap();
        let mut extra = [0u8; 8];
        assert!(reader.read(&mut extra).is_err(), "two notices per commit");
        // With the reader gone (a server shutting down) commits still complete.
        drop(reader);
        let buffer = AlignedBuffer::new(BLOCK_BYTES);
        storage
            .submit(3 * BLOCK_BYTES as u64, buffer, BLOCK_BYTES)
            .unwrap();
        storage.reap(true).unwrap().unwrap().outcome.unwrap();
    }

    /// A commit whose entries were pushed but whose entry into the kernel failed: the
    /// error goes to the journal, and the entries, left in the submission queue, run at
    /// the next entry into the kernel (here the wait for the zeroing write pushed with
    /// them, in `Drop`). Their completions are recognised, not a panic, and the
    /// commit's buffer lived until the write that reads it finished.
    #[test]
    fn a_commit_whose_entry_into_the_kernel_failed_completes_later_without_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut storage = UringStorage::new(true).unwrap();
        storage.create_segment(&path).unwrap();
        let mut buffer = AlignedBuffer::new(BLOCK_BYTES);
        buffer.as_mut_slice().fill(0xab);
        storage.fail_next_enter = true;
        storage.submit(0, buffer, BLOCK_BYTES).unwrap_err();
        assert!(
            storage.zeroing.is_some(),
            "a zeroing write went with the commit"
        );
        assert!(storage.take_written_buffer().is_none());
        assert!(
            storage.reap(false).unwrap().is_none(),
            "no commit is reported"
        );
        drop(storage);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes[..BLOCK_BYTES].iter().all(|&b| b == 0xab),
            "the write ran"
        );
    }

    /// The same behind a commit that was submitted: waiting for that one enters the
    /// kernel, which starts the stale entries; it is reaped as usual, and the abandoned
    /// one never is.
    #[test]
    fn a_commit_whose_entry_failed_is_never_reaped_behind_one_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut storage = UringStorage::new(true).unwrap();
        storage.create_segment(&path).unwrap();
        storage
            .submit(0, AlignedBuffer::new(BLOCK_BYTES), BLOCK_BYTES)
            .unwrap();
        storage.drain_completions();
        while !storage.accepts_another() {
            storage.wait_for_completion().unwrap();
            storage.drain_completions();
        }
        let mut buffer = AlignedBuffer::new(BLOCK_BYTES);
        buffer.as_mut_slice().fill(0xcd);
        storage.fail_next_enter = true;
        storage
            .submit(BLOCK_BYTES as u64, buffer, BLOCK_BYTES)
            .unwrap_err();
        assert!(
            storage.take_written_buffer().is_some(),
            "the first one's buffer"
        );
        storage.reap(true).unwrap().unwrap().outcome.unwrap();
        assert!(storage.reap(true).unwrap().is_none());
        storage.wait_for_all().unwrap();
        assert_eq!(storage.in_flight.len(), 1);
        assert!(storage.in_flight[0].abandoned);
        assert!(
            storage.in_flight[0].sync_result.is_some(),
            "its entries ran"
        );
        drop(storage);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[BLOCK_BYTES..2 * BLOCK_BYTES]
            .iter()
            .all(|&b| b == 0xcd));
    }
}
