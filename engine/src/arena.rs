//! One file of the data directory and its contents in private, anonymous memory.
//!
//! Every arena (partition header, index table, key heap) is an [`ArenaFile`]: a file and
//! an anonymous mapping of the same length that holds the live bytes. Opening reads the
//! file into the mapping; counters change only in memory; [`ArenaFile::write_back`]
//! writes the bytes to the file explicitly (`pwrite` in large chunks, then `fdatasync`).
//! A clean close writes every arena back, so a clean restart finds the files exactly as
//! they were and reads them back instead of rebuilding anything. Both directions can
//! pass each chunk to a closure on the way ([`ArenaFile::open_inspected`],
//! [`ArenaFile::write_back_inspected`]): the partition checksums its data files there,
//! while the chunk is in the CPU cache, rather than in a second pass.
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
//! ([`load_anonymous`]) and adopts it as a new arena ([`ArenaFile::adopt`]), which like
//! any new arena has no file until written back: one read per file, nothing copied into
//! the data directory, nothing synced.
//!
//! Growth never waits for the file system or for the page allocator on the partition's
//! thread, when it can help it:
//! - a new arena (a grown index table) is memory only until its first `write_back`
//!   creates its file, a grown heap extends its file only at `write_back` (on ext4 a
//!   file creation or unlink waits for the journal: milliseconds on a busy machine);
//! - a discarded arena is unmapped by one long-lived helper thread that may run on any
//!   CPU (the partition thread hands it over through a channel);
//! - an arena can be *prepared* ahead ([`ArenaFile::prepare`]): the helper thread maps it
//!   and faults all of its pages in (`MADV_POPULATE_WRITE`), so the partition thread
//!   never takes those faults. A huge page's first fault zeroes 2 MiB, measured here
//!   (a VM) at 0.36 ms typical and up to 6 ms, and an insert that migrates lines into a
//!   new table touched up to 8 new pages.
//!
//! What is left: a table mapped on the partition thread (one under 2 MiB, or one the
//! helper had not finished) needs the process's memory-map lock, which waits while the
//! helper faults a huge page in (one 2 MiB step); and the unlink of a table that has a
//! file (read at open or written back since) stays on the partition thread, since an
//! unclean reopen lists and removes the partition's files and must not race with it.
//!
//! Invariants: the arena's bytes (`map[offset..offset + length]`) cover the whole file
//! once the file exists (after `open` and after every `write_back`); the file is written
//! only by `write_back`; a length is never zero (a zero-length mapping is not portable).

use std::cell::OnceCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Mutex, OnceLock};

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
    /// The open file; empty until the first `write_back` of an arena made by `create`.
    file: OnceCell<File>,
    /// The mapping; the arena's bytes are `map[offset..offset + length]` (see
    /// `anonymous`: large arenas start on a huge-page boundary).
    map: MmapMut,
    offset: usize,
    length: usize,
}

impl ArenaFile {
    /// Maps zeroed memory for a new arena of `length_bytes` to be stored at `path`. No
    /// file is made yet: the first `write_back` creates (or truncates) it, so a growth
    /// on the data path makes no file-system call but the memory mapping.
    pub(crate) fn create(path: &Path, length_bytes: u64) -> Result<ArenaFile, EngineError> {
        assert!(length_bytes > 0);
        let (map, offset) = anonymous(path, length_bytes)?;
        Ok(ArenaFile {
            path: path.to_path_buf(),
            file: OnceCell::new(),
            map,
            offset,
            length: length_bytes as usize,
        })
    }

    /// Opens `path` and reads it into memory; its length must be exactly `length_bytes`,
    /// else the file was truncated or extended behind our back and is reported as
    /// corrupted.
    pub(crate) fn open(path: &Path, length_bytes: u64) -> Result<ArenaFile, EngineError> {
        ArenaFile::open_inspected(path, length_bytes, |_| {})
    }

    /// [`ArenaFile::open`], passing every chunk to `inspect` right after it was read, while
    /// it is still in the CPU cache (as [`load_anonymous`] does): a checksum of the file
    /// costs no second pass over its bytes.
    pub(crate) fn open_inspected(
        path: &Path,
        length_bytes: u64,
        inspect: impl FnMut(&[u8]),
    ) -> Result<ArenaFile, EngineError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error("open", path))?;
        check_length(&file, path, length_bytes)?;
        let (map, offset) = anonymous(path, length_bytes)?;
        let mut arena = ArenaFile {
            path: path.to_path_buf(),
            file: OnceCell::new(),
            map,
            offset,
            length: length_bytes as usize,
        };
        read_into(&file, path, arena.bytes_mut(), inspect)?;
        arena.file = OnceCell::from(file);
        Ok(arena)
    }

    /// Makes `loaded` the live contents of an arena to be stored at `path`. Like an arena
    /// from `create`, it has no file until its first `write_back`: the bytes live in
    /// memory, as for every open arena, and the partition header on disk says
    /// `clean = 0` until a clean close has written them.
    pub(crate) fn adopt(path: &Path, loaded: LoadedArena) -> ArenaFile {
        let LoadedArena {
            map,
            offset,
            length,
        } = loaded;
        assert!(length > 0 && offset + length <= map.len());
        ArenaFile {
            path: path.to_path_buf(),
            file: OnceCell::new(),
            map,
            offset,
            length,
        }
    }

    /// Extends the memory to `length_bytes` (zero-filled); the file follows at the next
    /// `write_back`. Existing contents are kept; pointers into the old memory become
    /// invalid.
    pub(crate) fn grow(&mut self, length_bytes: u64) -> Result<(), EngineError> {
        assert!(length_bytes >= self.length_bytes());
        let length = usize::try_from(length_bytes)
            .ok()
            .and_then(|length| length.checked_add(self.offset))
            .ok_or_else(|| too_large(&self.path))?;
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
            let (mut map, offset) = anonymous(&self.path, length_bytes)?;
            map[offset..offset + self.length].copy_from_slice(self.bytes());
            self.map = map;
            self.offset = offset;
        }
        #[cfg(target_os = "linux")]
        let _ = self.map.advise(memmap2::Advice::HugePage);
        self.length = length_bytes as usize;
        assert!(self.map.len() >= self.offset + self.length);
        Ok(())
    }

    /// Writes the bytes in memory to the file (creating it on the first call after
    /// `create`, and giving it the memory's length) and waits for the disk (`fdatasync`).
    pub(crate) fn write_back(&self) -> Result<(), EngineError> {
        self.write_back_inspected(|_| {})
    }

    /// [`ArenaFile::write_back`], passing every chunk to `inspect` just before it is
    /// written (a checksum of what the file receives, in the same pass).
    pub(crate) fn write_back_inspected(
        &self,
        inspect: impl FnMut(&[u8]),
    ) -> Result<(), EngineError> {
        let file = match self.file.get() {
            Some(file) => file,
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&self.path)
                    .map_err(io_error("create", &self.path))?;
                self.file.get_or_init(|| file)
            }
        };
        file.set_len(self.length_bytes())
            .map_err(io_error("size", &self.path))?;
        write_all_synced(file, &self.path, self.bytes(), inspect)
    }

    pub(crate) fn length_bytes(&self) -> u64 {
        self.length as u64
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `offset + length <= map.len()` (established where the fields are set).
        unsafe {
            self.map
                .get_unchecked(self.offset..self.offset + self.length)
        }
    }

    #[inline]
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`.
        unsafe {
            self.map
                .get_unchecked_mut(self.offset..self.offset + self.length)
        }
    }

    /// Unlinks the file if it was ever written (here: a later open of the partition must
    /// not find it half-removed), then releases the memory on the helper thread (see the
    /// module doc), or here if there is none. Only a table read from disk at open, or
    /// written back since, has a file: one unlink per table per open, not per growth. A
    /// failed unlink leaves a stray file, which the next open of the partition removes
    /// (its header does not name it).
    pub(crate) fn discard(self) {
        if self.file.get().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Err(Job::Release(arena)) = send_job(Job::Release(self)) {
            arena.release();
        }
    }

    /// Asks the helper thread for a new arena as [`ArenaFile::create`] makes it, with all
    /// its pages faulted in. `None` if there is no helper thread; the caller then creates
    /// the arena itself when it needs it.
    pub(crate) fn prepare(path: &Path, length_bytes: u64) -> Option<Prepared> {
        assert!(length_bytes > 0);
        let (reply, receiver) = channel();
        let job = Job::Prepare {
            path: path.to_path_buf(),
            length_bytes,
            reply,
        };
        send_job(job).ok()?;
        Some(Prepared {
            receiver,
            ready: None,
            length_bytes,
        })
    }

    /// Frees the memory a chunk at a time, then unmaps it.
    fn release(mut self) {
        free_pages(&mut self.map);
        drop(self);
    }
}

/// An arena being prepared by the helper thread (see [`ArenaFile::prepare`]).
#[derive(Debug)]
pub(crate) struct Prepared {
    receiver: Receiver<ArenaFile>,
    /// The arena once received from the helper.
    ready: Option<ArenaFile>,
    length_bytes: u64,
}

impl Prepared {
    /// Whether the helper is still at work on the arena: `false` once it is ready, and
    /// also if the helper failed to make it (and dropped the reply channel).
    pub(crate) fn is_pending(&mut self) -> bool {
        if self.ready.is_some() {
            return false;
        }
        match self.receiver.try_recv() {
            Ok(arena) => {
                self.ready = Some(arena);
                false
            }
            Err(TryRecvError::Empty) => true,
            Err(TryRecvError::Disconnected) => false,
        }
    }

    /// The arena if the helper has finished it (its pages are then all present).
    pub(crate) fn try_take(mut self) -> Option<ArenaFile> {
        self.is_pending();
        self.ready
    }

    /// The length asked for.
    pub(crate) fn length_bytes(&self) -> u64 {
        self.length_bytes
    }
}

/// Work for the helper thread.
enum Job {
    /// Unmap.
    Release(ArenaFile),
    /// Map and fault in a new arena, then send it back (or drop it if nobody waits).
    Prepare {
        path: PathBuf,
        length_bytes: u64,
        reply: Sender<ArenaFile>,
    },
}

/// The channel to the helper thread (`None` if the thread could not be started).
static HELPER: OnceLock<Mutex<Option<Sender<Job>>>> = OnceLock::new();

/// Hands `job` to the helper thread, or gives it back if there is none.
fn send_job(job: Job) -> Result<(), Job> {
    let sender = HELPER.get_or_init(|| Mutex::new(start_helper()));
    match sender.lock() {
        Ok(sender) => match sender.as_ref() {
            Some(sender) => sender.send(job).map_err(|e| e.0),
            None => Err(job),
        },
        Err(_) => Err(job),
    }
}

/// Starts the helper thread. It lets itself run on every online CPU: it inherits the
/// affinity of the partition thread that starts it, often one pinned core, where its
/// work would take the partition thread's time.
fn start_helper() -> Option<Sender<Job>> {
    let (sender, receiver) = channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("tally-arena".into())
        .spawn(move || {
            unpin_current_thread();
            for job in receiver {
                match job {
                    Job::Release(arena) => arena.release(),
                    Job::Prepare {
                        path,
                        length_bytes,
                        reply,
                    } => {
                        if let Ok(arena) = ArenaFile::create(&path, length_bytes) {
                            populate(arena.bytes());
                            // Nobody waits any more: the arena is dropped here, off
                            // the partition's thread.
                            let _ = reply.send(arena);
                        }
                    }
                }
            }
        });
    spawned.ok().map(|_| sender)
}

/// Bytes per `madvise` call of the helper thread. Each call holds the process's memory
/// map lock (for reading); a partition thread that maps or unmaps (a small table, a heap
/// growth) waits for the call in progress, so the calls are kept short: one huge page.
const HELPER_CHUNK_BYTES: usize = 2 << 20;

/// Faults in every page of `map` (writable), so later writes take no page fault.
fn populate(map: &[u8]) {
    for start in (0..map.len()).step_by(HELPER_CHUNK_BYTES) {
        let length = HELPER_CHUNK_BYTES.min(map.len() - start);
        #[cfg(target_os = "linux")]
        {
            // SAFETY: the range lies inside the live mapping; MADV_POPULATE_WRITE only
            // faults its pages in (zero-filled, as they would read anyway), no byte
            // changes.
            let result = unsafe {
                libc::madvise(
                    map.as_ptr().add(start) as *mut libc::c_void,
                    length,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if result == 0 {
                continue;
            }
        }
        // Older kernels: read one byte per page (maps the shared zero page, not writable
        // memory: a weaker prefault than the write above, but the page tables are there).
        let sum = map[start..start + length]
            .iter()
            .step_by(4096)
            .fold(0u8, |sum, &byte| sum.wrapping_add(byte));
        std::hint::black_box(sum);
    }
}

/// Frees the pages of `map` a chunk at a time (see `HELPER_CHUNK_BYTES`), so that the
/// unmap that follows has little left to do while it holds the memory map lock.
fn free_pages(map: &mut MmapMut) {
    #[cfg(target_os = "linux")]
    for start in (0..map.len()).step_by(HELPER_CHUNK_BYTES) {
        let length = HELPER_CHUNK_BYTES.min(map.len() - start);
        // SAFETY: the range lies inside the live mapping, which nothing reads any more
        // (the arena is being released); MADV_DONTNEED makes it read as zeros.
        unsafe {
            libc::madvise(
                map.as_mut_ptr().add(start).cast::<libc::c_void>(),
                length,
                libc::MADV_DONTNEED,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = map;
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

/// An arena read into anonymous memory and not yet attached to a file of the data
/// directory (see [`ArenaFile::adopt`]).
#[derive(Debug)]
pub(crate) struct LoadedArena {
    map: MmapMut,
    offset: usize,
    length: usize,
}

/// Reads `source`, which must be exactly `length_bytes` long, into fresh anonymous memory
/// (no file behind it), passing every chunk to `inspect` right after it was read, while
/// it is still in the CPU cache: a checksum costs no second pass over the bytes.
pub(crate) fn load_anonymous(
    source: &Path,
    length_bytes: u64,
    inspect: impl FnMut(&[u8]),
) -> Result<LoadedArena, EngineError> {
    let file = File::open(source).map_err(io_error("open", source))?;
    check_length(&file, source, length_bytes)?;
    let (mut map, offset) = anonymous(source, length_bytes)?;
    let length = length_bytes as usize;
    read_into(&file, source, &mut map[offset..offset + length], inspect)?;
    Ok(LoadedArena {
        map,
        offset,
        length,
    })
}

/// Checks that `file` (at `path`) is exactly `length_bytes` long, and not empty: any other
/// length means it was truncated or extended behind our back, which is corruption.
fn check_length(file: &File, path: &Path, length_bytes: u64) -> Result<(), EngineError> {
    let actual_bytes = file.metadata().map_err(io_error("stat", path))?.len();
    if actual_bytes != length_bytes || length_bytes == 0 {
        return Err(EngineError::Corrupted {
            path: path.to_path_buf(),
            offset: actual_bytes,
            reason: format!("file is {actual_bytes} bytes, expected {length_bytes}"),
        });
    }
    Ok(())
}

/// Fills `bytes` (fresh anonymous memory) from offset 0 of `file` in large reads, each
/// chunk passed to `inspect`.
///
/// Each chunk's pages are faulted in from user space before the read copies into them.
/// A fault taken inside the read (the kernel's copy to user memory) holds the process's
/// memory-map lock, and with it every `mmap` and `munmap` of the process, and every
/// other fault queued behind those, waits for the page to be zeroed (on this VM a huge
/// page's first touch can take milliseconds). A fault from user space takes only the
/// lock of its own mapping. Measured in a recovery of 10M counters on 2 cores: about 400
/// waits on that lock and the CPUs 20-40% idle through the restore; faulted in first,
/// about 30 waits and the CPUs busy.
fn read_into(
    file: &File,
    path: &Path,
    bytes: &mut [u8],
    mut inspect: impl FnMut(&[u8]),
) -> Result<(), EngineError> {
    for (index, chunk) in bytes.chunks_mut(IO_CHUNK_BYTES).enumerate() {
        let offset = (index * IO_CHUNK_BYTES) as u64;
        fault_in(chunk);
        file.read_exact_at(chunk, offset)
            .map_err(io_error("read", path))?;
        inspect(chunk);
    }
    Ok(())
}

/// Bytes of a base page: `fault_in` touches one byte in each.
const PAGE_BYTES: usize = 4 << 10;

/// Writes a zero to one byte of every page of `bytes`, which must be zero already (fresh
/// anonymous memory), so that its pages are faulted in here, from user space.
fn fault_in(bytes: &mut [u8]) {
    for page in bytes.chunks_mut(PAGE_BYTES) {
        debug_assert_eq!(page[0], 0);
        // SAFETY: `page` is a live, exclusively borrowed, non-empty slice; a volatile
        // store of the value it already holds changes nothing but cannot be elided.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0) };
    }
}

/// Writes `bytes` at offset 0 of `file` in large chunks, each passed to `inspect` first,
/// then `fdatasync`s it.
fn write_all_synced(
    file: &File,
    path: &Path,
    bytes: &[u8],
    mut inspect: impl FnMut(&[u8]),
) -> Result<(), EngineError> {
    for (index, chunk) in bytes.chunks(IO_CHUNK_BYTES).enumerate() {
        let offset = (index * IO_CHUNK_BYTES) as u64;
        inspect(chunk);
        file.write_all_at(chunk, offset)
            .map_err(io_error("write", path))?;
    }
    file.sync_data().map_err(io_error("fdatasync", path))
}

fn too_large(path: &Path) -> EngineError {
    EngineError::InvalidConfig(format!("{}: arena larger than memory", path.display()))
}

/// Bytes of a transparent huge page (x86-64).
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Zeroed anonymous memory for `length_bytes`, advised to use transparent huge pages, and
/// the offset of the arena in it. An arena of at least a huge page starts on a huge-page
/// boundary (the mapping is a huge page longer, the slack never touched): the kernel
/// backs only aligned 2 MiB inside a mapping with huge pages, so a table mapped at a
/// 4 KiB boundary lost up to 4 MiB of them (measured: 35% of the tables' bytes at 10M
/// counters on 4 KiB pages, each random access then a TLB miss).
fn anonymous(path: &Path, length_bytes: u64) -> Result<(MmapMut, usize), EngineError> {
    let length = usize::try_from(length_bytes).map_err(|_| too_large(path))?;
    let slack = if length >= HUGE_PAGE_BYTES {
        HUGE_PAGE_BYTES
    } else {
        0
    };
    let map = MmapOptions::new()
        .len(length.checked_add(slack).ok_or_else(|| too_large(path))?)
        .map_anon()
        .map_err(io_error("map memory for", path))?;
    // Only a hint (THP may be off); set before the first touch so faults get huge pages.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    let base = map.as_ptr() as usize;
    let offset = if slack > 0 {
        base.next_multiple_of(HUGE_PAGE_BYTES) - base
    } else {
        0
    };
    debug_assert!(offset + length <= map.len());
    #[cfg(target_os = "linux")]
    if slack > 0 {
        // The arena's last partial huge page and the slack after it: 4 KiB pages, else
        // a huge page there would hold up to 2 MiB the arena does not use.
        let tail = offset + length / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
        let _ = map.advise_range(memmap2::Advice::NoHugePage, tail, map.len() - tail);
    }
    Ok((map, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(length_bytes: u64) -> (Sender<ArenaFile>, Prepared) {
        let (reply, receiver) = channel();
        let prepared = Prepared {
            receiver,
            ready: None,
            length_bytes,
        };
        (reply, prepared)
    }

    #[test]
    fn a_prepared_arena_is_pending_until_the_helper_sends_it_and_then_kept() {
        let (reply, mut prepared) = pending(4096);
        assert!(prepared.is_pending());
        let arena = ArenaFile::create(Path::new("unused"), 4096).expect("anonymous memory");
        reply.send(arena).expect("receiver alive");
        assert!(!prepared.is_pending());
        // Asking again does not lose the arena received by the first call.
        assert!(!prepared.is_pending());
        let taken = prepared.try_take().expect("the arena sent");
        assert_eq!(taken.length_bytes(), 4096);
    }

    #[test]
    fn a_preparation_the_helper_gave_up_is_not_pending_and_yields_nothing() {
        let (reply, mut prepared) = pending(4096);
        drop(reply);
        assert!(!prepared.is_pending());
        assert!(prepared.try_take().is_none());
    }

    #[test]
    fn the_real_helper_prepares_an_arena_with_every_byte_zero() {
        let mut prepared =
            ArenaFile::prepare(Path::new("unused"), 3 << 20).expect("the helper thread runs");
        while prepared.is_pending() {
            std::thread::yield_now();
        }
        let arena = prepared.try_take().expect("the helper made it");
        assert_eq!(arena.length_bytes(), 3 << 20);
        assert!(arena.bytes().iter().all(|&byte| byte == 0));
    }
}
