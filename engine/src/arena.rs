//! One file of the data directory, memory-mapped read-write and shared (`MAP_SHARED`).
//!
//! Every arena (partition header, index table, key heap) is an [`ArenaFile`]: writes go to
//! the page cache through the mapping, so a process that exits, even by `kill -9`, leaves
//! its last state in the file, and a clean restart maps the file back instead of
//! rebuilding anything. Durability against power loss is the journal's job.
//!
//! Invariants: the mapping covers the whole file (`map.len() == length_bytes`); the file
//! is only ever written through this mapping while it is open; a length is never zero
//! (a zero-length mapping is not portable).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use crate::error::EngineError;

/// Builds the closure that turns an `io::Error` into an [`EngineError::Io`] naming the
/// action and the file.
pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EngineError {
    let path = path.to_path_buf();
    move |source| EngineError::Io {
        action,
        path,
        source,
    }
}

/// A memory-mapped file of the data directory.
#[derive(Debug)]
pub(crate) struct ArenaFile {
    path: PathBuf,
    file: File,
    map: MmapMut,
}

impl ArenaFile {
    /// Creates (or truncates) `path` as a zero-filled file of `length_bytes` and maps it.
    pub(crate) fn create(path: &Path, length_bytes: u64) -> Result<ArenaFile, EngineError> {
        assert!(length_bytes > 0);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_error("create", path))?;
        file.set_len(length_bytes).map_err(io_error("size", path))?;
        ArenaFile::map(path.to_path_buf(), file)
    }

    /// Opens `path` and maps it; its length must be exactly `length_bytes`, else the file
    /// was truncated or extended behind our back and is reported as corrupted.
    pub(crate) fn open(path: &Path, length_bytes: u64) -> Result<ArenaFile, EngineError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error("open", path))?;
        let actual_bytes = file.metadata().map_err(io_error("stat", path))?.len();
        if actual_bytes != length_bytes || length_bytes == 0 {
            return Err(EngineError::Corrupted {
                path: path.to_path_buf(),
                offset: actual_bytes,
                reason: format!("file is {actual_bytes} bytes, expected {length_bytes}"),
            });
        }
        ArenaFile::map(path.to_path_buf(), file)
    }

    fn map(path: PathBuf, file: File) -> Result<ArenaFile, EngineError> {
        // SAFETY: the file belongs to a partition, and a partition is owned by one thread of
        // one process at a time (the data directory is not shared); nothing else resizes or
        // writes the file while it is mapped, so the mapping stays valid for its lifetime.
        let map = unsafe { MmapOptions::new().map_mut(&file) }.map_err(io_error("map", &path))?;
        // Only a hint: ext4 file mappings usually get no transparent huge pages.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(ArenaFile { path, file, map })
    }

    /// Extends the file to `length_bytes` (zero-filled) and remaps it. Existing contents are
    /// kept; pointers into the old mapping become invalid.
    pub(crate) fn grow(&mut self, length_bytes: u64) -> Result<(), EngineError> {
        assert!(length_bytes >= self.length_bytes());
        self.file
            .set_len(length_bytes)
            .map_err(io_error("grow", &self.path))?;
        // SAFETY: as in `map`: this thread owns the file exclusively.
        let map = unsafe { MmapOptions::new().map_mut(&self.file) }
            .map_err(io_error("remap", &self.path))?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        self.map = map;
        assert_eq!(self.map.len() as u64, length_bytes);
        Ok(())
    }

    /// Writes the mapped pages back to the file and waits for the disk (`msync(MS_SYNC)`).
    pub(crate) fn flush(&self) -> Result<(), EngineError> {
        self.map.flush().map_err(io_error("msync", &self.path))
    }

    pub(crate) fn length_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// Unlinks the file and releases the mapping. The unmap of a large table can take
    /// milliseconds, so it happens on a short-lived thread, off the partition's path.
    pub(crate) fn discard(self) -> Result<(), EngineError> {
        std::fs::remove_file(&self.path).map_err(io_error("remove", &self.path))?;
        let spawned = std::thread::Builder::new()
            .name("tally-unmap".into())
            .spawn(move || drop(self));
        // If no thread can be started, the returned value was dropped here instead.
        drop(spawned);
        Ok(())
    }
}
