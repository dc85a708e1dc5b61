//! Fault injection for the journal's storage seam (test tooling, public so the
//! integration tests under `engine/tests/` can use it).
//!
//! [`FaultStorage`] writes through blocking std I/O like [`FileStorage`], except at the
//! commits its plan names, where it fails the write or the sync, writes only part of
//! the data, or silently flips a bit. A test then drops the journal (a crash), runs
//! recovery and checks the result against a model: a clear error or a correct
//! recovery, never a panic and never a silently wrong count.

use std::io;
use std::path::Path;

use super::storage::{CommitFailure, FileStorage, JournalStorage};
use super::AlignedBuffer;

/// Sector size assumed atomic on the media; torn and short writes cut at it.
pub const SECTOR_BYTES: usize = 512;

/// One injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The write fails with `errno` (e.g. `libc::ENOSPC`, `libc::EIO`); nothing written.
    FailWrite { errno: i32 },
    /// The data is written but fdatasync fails with `errno`.
    FailSync { errno: i32 },
    /// Only the first `bytes` (rounded down to a sector) are written; the write
    /// reports the short count.
    ShortWrite { bytes: usize },
    /// Power loss mid-commit: the first `bytes` (rounded down to a sector) reach the
    /// disk, the rest keeps its old content, except that with `garbage` the sector
    /// after them reads back as noise if it was never written (all zero before).
    /// Bytes written by earlier commits keep their content, as the sector-atomicity
    /// assumption of the journal says. The commit reports a failed sync (the process
    /// is considered dead).
    TornWrite { bytes: usize, garbage: bool },
    /// The commit is written with bit `bit` of byte `byte` (modulo the write length)
    /// flipped, and reports success: silent media corruption.
    FlipBit { byte: usize, bit: u8 },
    /// Creating a segment fails with `errno` (e.g. `libc::EMFILE`), nothing created.
    /// Planned at commit N, it fails the first segment creation made after N commits
    /// were submitted, once: the next creation succeeds unless planned again.
    FailCreate { errno: i32 },
}

/// A storage that injects the planned faults at the planned commits (0-based).
pub struct FaultStorage {
    inner: FileStorage,
    plan: Vec<(u64, Fault)>,
    commit_count: u64,
}

impl FaultStorage {
    /// `plan` lists (commit index, fault) pairs; other commits succeed.
    pub fn new(plan: Vec<(u64, Fault)>) -> Self {
        FaultStorage {
            inner: FileStorage::new(),
            plan,
            commit_count: 0,
        }
    }

    /// How many commits were submitted so far.
    pub fn commit_count(&self) -> u64 {
        self.commit_count
    }

    fn fault_for(&self, commit: u64) -> Option<Fault> {
        self.plan
            .iter()
            .find(|(at, fault)| *at == commit && !matches!(fault, Fault::FailCreate { .. }))
            .map(|(_, f)| *f)
    }

    /// The planned failure of the next segment creation, if any; used up once taken.
    fn take_create_fault(&mut self) -> Option<i32> {
        let commit = self.commit_count;
        let (index, errno) = self
            .plan
            .iter()
            .enumerate()
            .find_map(|(index, (at, fault))| match fault {
                Fault::FailCreate { errno } if *at == commit => Some((index, *errno)),
                _ => None,
            })?;
        self.plan.remove(index);
        Some(errno)
    }

    fn inject(
        &mut self,
        offset: u64,
        buffer: &mut AlignedBuffer,
        length: usize,
        fault: Fault,
    ) -> Result<(), CommitFailure> {
        match fault {
            Fault::FailWrite { errno } => {
                Err(CommitFailure::Write(io::Error::from_raw_os_error(errno)))
            }
            Fault::FailSync { errno } => {
                self.inner
                    .write_at(offset, &buffer.as_slice()[..length])
                    .map_err(CommitFailure::Write)?;
                Err(CommitFailure::Sync(io::Error::from_raw_os_error(errno)))
            }
            Fault::ShortWrite { bytes } => {
                let written = bytes.min(length) / SECTOR_BYTES * SECTOR_BYTES;
                self.inner
                    .write_at(offset, &buffer.as_slice()[..written])
                    .map_err(CommitFailure::Write)?;
                Err(CommitFailure::ShortWrite { written })
            }
            Fault::TornWrite { bytes, garbage } => {
                let kept = bytes.min(length) / SECTOR_BYTES * SECTOR_BYTES;
                self.inner
                    .write_at(offset, &buffer.as_slice()[..kept])
                    .map_err(CommitFailure::Write)?;
                if garbage && kept < length {
                    self.write_noise_if_unwritten(offset + kept as u64)?;
                }
                Err(CommitFailure::Sync(io::Error::other(
                    "simulated power loss",
                )))
            }
            // A creation fault touches no commit (`fault_for` never returns one).
            Fault::FailCreate { .. } => {
                self.inner
                    .write_at(offset, &buffer.as_slice()[..length])
                    .map_err(CommitFailure::Write)?;
                self.inner.sync().map_err(CommitFailure::Sync)
            }
            Fault::FlipBit { byte, bit } => {
                let data = buffer.as_mut_slice();
                let at = byte % length;
                data[at] ^= 1 << (bit % 8);
                let result = self.inner.write_at(offset, &data[..length]);
                data[at] ^= 1 << (bit % 8);
                result.map_err(CommitFailure::Write)?;
                self.inner.sync().map_err(CommitFailure::Sync)
            }
        }
    }
}

impl FaultStorage {
    /// Fills the sector at `at` with noise if it was never written (all zero).
    fn write_noise_if_unwritten(&mut self, at: u64) -> Result<(), CommitFailure> {
        let old = self
            .inner
            .read_at(at, SECTOR_BYTES)
            .map_err(CommitFailure::Write)?;
        if old.iter().any(|&byte| byte != 0) {
            return Ok(());
        }
        let noise: Vec<u8> = (0..SECTOR_BYTES).map(|i| (i * 151 + 7) as u8).collect();
        self.inner
            .write_at(at, &noise)
            .map_err(CommitFailure::Write)
    }
}

impl JournalStorage for FaultStorage {
    fn create_segment(&mut self, path: &Path) -> io::Result<()> {
        if let Some(errno) = self.take_create_fault() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.inner.create_segment(path)
    }

    fn submit(&mut self, offset: u64, mut buffer: AlignedBuffer, length: usize) -> io::Result<()> {
        let commit = self.commit_count;
        self.commit_count += 1;
        match self.fault_for(commit) {
            None => self.inner.submit(offset, buffer, length),
            Some(fault) => {
                let outcome = self.inject(offset, &mut buffer, length, fault);
                self.inner.complete(buffer, outcome);
                Ok(())
            }
        }
    }

    fn reap(&mut self, wait: bool) -> io::Result<Option<super::storage::Completion>> {
        self.inner.reap(wait)
    }
}
