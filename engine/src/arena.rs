//! One file of the data directory and its contents in private, anonymous memory.
//!
//! Every arena (partition header, index table, key heap) is an [`ArenaFile`]: a file and
//! an anonymous mapping of the same length that holds the live bytes. Opening reads the
//! file into the mapping; counters change only in memory; [`ArenaFile::write_back`]
//! writes the bytes to the file explicitly (`pwrite` in large chunks, then `fdatasync`).
//! A clean close writes every arena back, so a clean restart finds the files exactly as
//! they were and reads them back instead of rebuilding anything.
//!
//! Why not a shared file mapping: the kernel writes dirty shared pages back on its own
//! schedule and write-protects them again, so the next write to each such page takes a
//! fault (measured: 100M counters fell to 1.3M increments/s against a 19M/s floor), and
//! ext4 turns every first write to a page into `page_mkwrite` work. Why not a private
//! file mapping (`MAP_PRIVATE`): its copied-on-write pages are never huge pages, while
//! anonymous memory with `MADV_HUGEPAGE` is (checked on this kernel: 256 MiB written
//! through each kind of mapping gave 0 and 256 MiB of `AnonHugePages`), and random
//! increments miss the TLB on nearly every operation without them. The price: while a
//! partition is open its files hold the state of the last
//! clean close (or of its creation), so after an unclean stop they mean nothing and the
//! partition reopens empty (see `partition`); recovery restores it from its checkpoint
//! and replays the journal, which it had to do anyway (a power loss never guaranteed
//! more). A restore reads the checkpoint's files straight into fresh anonymous memory
//! ([`load_anonymous`]) and gives each to a new, sparse data file ([`ArenaFile::adopt`]):
//! one read per file, nothing copied into the data directory, nothing synced.
//!
//! Invariants: the mapping covers the whole file (`map.len() == file length`); the file is
//! written only by `write_back`; a length is never zero (a zero-length mapping is not
//! portable).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

use crate::error::EngineError;

/// Bytes per `pread`/`pwrite` call when reading or writing an arena back.
const IO_CHUNK_BYTES: usize = 64 << 20;

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

/// A file of the data directory and its live contents in anonymous memory.
#[derive(Debug)]
pub(crate) struct ArenaFile {
    path: PathBuf,
    file: File,
    map: MmapMut,
}

impl ArenaFile {
    /// Creates (or truncates) `path` as a zero-filled file of `length_bytes` and maps
    /// zeroed memory for it. Nothing is written: the file is sparse until written back.
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
        let map = anonymous(path, length_bytes)?;
        Ok(ArenaFile {
            path: path.to_path_buf(),
            file,
            map,
        })
    }

    /// Opens `path` and reads it into memory; its length must be exactly `length_bytes`,
    /// else the file was truncated or extended behind our back and is reported as
    /// corrupted.
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
        let mut map = anonymous(path, length_bytes)?;
        read_into(&file, path, &mut map, |_| {})?;
        Ok(ArenaFile {
            path: path.to_path_buf(),
            file,
            map,
        })
    }

    /// Creates (or truncates) `path` with the length of `map` and makes `map` its live
    /// contents. Nothing is written (the file is sparse until written back): the bytes
    /// live in memory, as for every open arena, and the partition header on disk says
    /// `clean = 0` until a clean close has written them.
    pub(crate) fn adopt(path: &Path, map: MmapMut) -> Result<ArenaFile, EngineError> {
        assert!(!map.is_empty());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_error("create", path))?;
        file.set_len(map.len() as u64)
            .map_err(io_error("size", path))?;
        Ok(ArenaFile {
            path: path.to_path_buf(),
            file,
            map,
        })
    }

    /// Extends the file and the memory to `length_bytes` (zero-filled). Existing contents
    /// are kept; pointers into the old memory become invalid.
    pub(crate) fn grow(&mut self, length_bytes: u64) -> Result<(), EngineError> {
        assert!(length_bytes >= self.length_bytes());
        self.file
            .set_len(length_bytes)
            .map_err(io_error("grow", &self.path))?;
        let length = usize::try_from(length_bytes).map_err(|_| too_large(&self.path))?;
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the mapping is anonymous (no file behind it to run past), so every
            // byte of the grown mapping is valid zero-filled memory; `&mut self` means no
            // reference into the old address range is alive.
            unsafe {
                self.map
                    .remap(length, memmap2::RemapOptions::new().may_move(true))
            }
            .map_err(io_error("remap", &self.path))?;
        }
        #[cfg(not(target_os = "linux"))]
        {
            let mut map = anonymous(&self.path, length_bytes)?;
            map[..self.map.len()].copy_from_slice(&self.map);
            self.map = map;
        }
        #[cfg(target_os = "linux")]
        let _ = self.map.advise(memmap2::Advice::HugePage);
        assert_eq!(self.map.len() as u64, length_bytes);
        Ok(())
    }

    /// Writes the bytes in memory to the file and waits for the disk (`fdatasync`).
    pub(crate) fn write_back(&self) -> Result<(), EngineError> {
        write_all_synced(&self.file, &self.path, &self.map)
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

    /// Unlinks the file and releases the memory. The unmap of a large table can take
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

/// Lets the calling thread run on every CPU. A new thread inherits its creator's CPU
/// affinity, and a server core's thread is pinned to one CPU, so the helper threads a
/// core starts for its recovery (journal reader, checkpoint loaders) would otherwise
/// all share that one CPU with it and overlap nothing. Only a scheduling hint: an
/// error leaves the affinity as it was.
pub(crate) fn unpin_current_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes bits
        // of the set we own; sched_setaffinity only reads `set`, of the size passed.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for cpu in 0..libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu, &mut set);
            }
            let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

/// Reads `source`, which must be exactly `length_bytes` long, into fresh anonymous memory
/// (no file behind it), passing every chunk to `inspect` right after it was read, while
/// it is still in the CPU cache: a checksum costs no second pass over the bytes.
pub(crate) fn load_anonymous(
    source: &Path,
    length_bytes: u64,
    inspect: impl FnMut(&[u8]),
) -> Result<MmapMut, EngineError> {
    let file = File::open(source).map_err(io_error("open", source))?;
    let actual_bytes = file.metadata().map_err(io_error("stat", source))?.len();
    if actual_bytes != length_bytes || length_bytes == 0 {
        return Err(EngineError::Corrupted {
            path: source.to_path_buf(),
            offset: actual_bytes,
            reason: format!("file is {actual_bytes} bytes, expected {length_bytes}"),
        });
    }
    let mut map = anonymous(source, length_bytes)?;
    read_into(&file, source, &mut map, inspect)?;
    Ok(map)
}

/// Fills `map` from offset 0 of `file` in large reads, each chunk passed to `inspect`.
fn read_into(
    file: &File,
    path: &Path,
    map: &mut [u8],
    mut inspect: impl FnMut(&[u8]),
) -> Result<(), EngineError> {
    for (index, chunk) in map.chunks_mut(IO_CHUNK_BYTES).enumerate() {
        let offset = (index * IO_CHUNK_BYTES) as u64;
        file.read_exact_at(chunk, offset)
            .map_err(io_error("read", path))?;
        inspect(chunk);
    }
    Ok(())
}

/// Writes `bytes` at offset 0 of `file` in large chunks, then `fdatasync`s it.
pub(crate) fn write_all_synced(file: &File, path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    for (index, chunk) in bytes.chunks(IO_CHUNK_BYTES).enumerate() {
        let offset = (index * IO_CHUNK_BYTES) as u64;
        file.write_all_at(chunk, offset)
            .map_err(io_error("write", path))?;
    }
    file.sync_data().map_err(io_error("fdatasync", path))
}

fn too_large(path: &Path) -> EngineError {
    EngineError::InvalidConfig(format!("{}: arena larger than memory", path.display()))
}

/// Zeroed anonymous memory of `length_bytes`, advised to use transparent huge pages.
fn anonymous(path: &Path, length_bytes: u64) -> Result<MmapMut, EngineError> {
    let length = usize::try_from(length_bytes).map_err(|_| too_large(path))?;
    let map = MmapOptions::new()
        .len(length)
        .map_anon()
        .map_err(io_error("map memory for", path))?;
    // Only a hint (THP may be off); set before the first touch so faults get huge pages.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}
