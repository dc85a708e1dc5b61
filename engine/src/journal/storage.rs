//! The I/O seam under the journal writer: where commits meet the disk.
//!
//! A [`JournalStorage`] holds one open segment file and at most one commit in flight.
//! A commit is "write these whole blocks at this offset, then fdatasync"; the storage
//! takes ownership of the buffer while the kernel reads it and hands it back in the
//! [`Completion`], so no buffer is ever touched while I/O on it is in flight.
//!
//! Implementations:
//! - [`UringStorage`]: the real one. One `IORING_OP_WRITE` on an O_DIRECT file, linked
//!   (`IOSQE_IO_LINK`) to an `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`, submitted
//!   together; reaping never blocks unless asked to.
//! - [`FileStorage`]: blocking `pwrite` + `fdatasync` with std, completing at once. The
//!   base of [`super::fault::FaultStorage`], which injects failures for tests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
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

/// A finished commit: the buffer comes back with the outcome.
#[derive(Debug)]
pub struct Completion {
    pub buffer: AlignedBuffer,
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
    /// called with no commit in flight. On error nothing is in flight and the buffer
    /// is gone (the journal fails and needs it no more).
    fn submit(&mut self, offset: u64, buffer: AlignedBuffer, length: usize) -> io::Result<()>;

    /// Returns the commit in flight if it has finished; with `wait`, blocks until it
    /// has. `Ok(None)` when nothing finished (or nothing is in flight).
    fn reap(&mut self, wait: bool) -> io::Result<Option<Completion>>;
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

/// The write and fdatasync of the commit in flight, and what each returned.
struct InFlight {
    buffer: AlignedBuffer,
    length: usize,
    write_result: Option<i32>,
    sync_result: Option<i32>,
}

const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;
const RING_ENTRIES: u32 = 8;

/// The real storage: O_DIRECT writes linked to fdatasync through io_uring.
pub struct UringStorage {
    ring: IoUring,
    file: Option<File>,
    path: PathBuf,
    in_flight: Option<InFlight>,
    direct_io: bool,
}

impl UringStorage {
    /// Sets up a small ring. `direct_io` false drops O_DIRECT (for file systems
    /// without it); buffers stay aligned either way.
    pub fn new(direct_io: bool) -> io::Result<Self> {
        Ok(UringStorage {
            ring: IoUring::new(RING_ENTRIES)?,
            file: None,
            path: PathBuf::new(),
            in_flight: None,
            direct_io,
        })
    }

    /// Pushes the linked pair and enters the kernel. The error says whether the
    /// entries were pushed (and so may still reach the kernel).
    fn push_commit(
        &mut self,
        offset: u64,
        pointer: *const u8,
        length: usize,
    ) -> Result<(), (bool, io::Error)> {
        let fd = types::Fd(self.file.as_ref().expect("a segment is open").as_raw_fd());
        let write = opcode::Write::new(fd, pointer, length as u32)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(USER_DATA_WRITE);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(USER_DATA_SYNC);
        let mut queue = self.ring.submission();
        // SAFETY: the entries point at `pointer[..length]`, the memory of the buffer now
        // owned by `self.in_flight`, and at the open `self.file`. Neither is freed, moved
        // in memory or written until both completions are reaped (`reap`, `Drop`).
        unsafe { queue.push_multiple(&[write, sync]) }
            .map_err(|_| (false, io::Error::other("io_uring submission queue full")))?;
        drop(queue);
        self.ring.submit().map_err(|error| (true, error))?;
        Ok(())
    }

    fn drain_completions(&mut self) {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return;
        };
        for entry in self.ring.completion() {
            match entry.user_data() {
                USER_DATA_WRITE => in_flight.write_result = Some(entry.result()),
                USER_DATA_SYNC => in_flight.sync_result = Some(entry.result()),
                other => panic!("unexpected io_uring completion {other}"),
            }
        }
    }

    fn finished(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| f.write_result.is_some() && f.sync_result.is_some())
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
            self.in_flight.is_none(),
            "segment switch with a commit in flight"
        );
        self.file = Some(open_segment(path, self.direct_io)?);
        self.path = path.to_path_buf();
        Ok(())
    }

    fn submit(&mut self, offset: u64, buffer: AlignedBuffer, length: usize) -> io::Result<()> {
        assert!(
            self.in_flight.is_none(),
            "a second commit while one is in flight"
        );
        check_commit(offset, &buffer, length);
        if self.file.is_none() {
            return Err(io::Error::other("no segment open"));
        }
        let pointer = buffer.as_ptr();
        self.in_flight = Some(InFlight {
            buffer,
            length,
            write_result: None,
            sync_result: None,
        });
        if let Err((pushed, error)) = self.push_commit(offset, pointer, length) {
            let in_flight = self.in_flight.take().expect("just stored");
            if pushed {
                // The entries sit in the submission queue and a later entry into the
                // kernel would start them: the buffer must outlive that, so leak it.
                std::mem::forget(in_flight.buffer);
            }
            return Err(error);
        }
        Ok(())
    }

    fn reap(&mut self, wait: bool) -> io::Result<Option<Completion>> {
        if self.in_flight.is_none() {
            return Ok(None);
        }
        self.drain_completions();
        while wait && !self.finished() {
            self.wait_for_completion()?;
            self.drain_completions();
        }
        if !self.finished() {
            return Ok(None);
        }
        let done = self.in_flight.take().expect("finished implies in flight");
        let outcome = outcome(
            done.write_result.expect("finished"),
            done.sync_result.expect("finished"),
            done.length,
        );
        Ok(Some(Completion {
            buffer: done.buffer,
            outcome,
        }))
    }
}

impl Drop for UringStorage {
    fn drop(&mut self) {
        if self.in_flight.is_none() {
            return;
        }
        if self.reap(true).is_err() {
            // The kernel may still read the buffer: leak it rather than free it under
            // DMA. This only happens if waiting on the ring itself fails.
            if let Some(in_flight) = self.in_flight.take() {
                std::mem::forget(in_flight.buffer);
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
        self.done = Some(Completion { buffer, outcome });
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
