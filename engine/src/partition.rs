//! One partition: its header, its index table(s) and its key heap, and the operations on
//! its counters.
//!
//! # Files
//!
//! `pNNNNN.meta` (this header), `pNNNNN.heap` (see [`crate::heap`]), and one or two index
//! tables `pNNNNN.tGGGGGGGG` (see [`crate::index`]), `NNNNN` the partition index and
//! `GGGGGGGG` the table generation, both zero-padded decimal.
//!
//! # Files and memory
//!
//! While the partition is open its counters change in memory only (see `arena`); the
//! files are written at creation, at a clean close (data files first, then the header
//! with `clean = 1` and the xxh3 of each data file), and for the header alone at open
//! (`clean = 0`). So a header that says `clean = 1` describes files that are whole, and
//! a clean open checks each file against its checksum as it reads it (the hash runs over
//! each chunk right after its read, while it is in the CPU cache: no second pass), and
//! refuses a file that differs (or is missing), naming it, unless the partition's
//! checkpoint exists: then the header is marked `clean = 0`, the data files are moved
//! to `<data-dir>/damaged/` and the partition reopens as unclean, so recovery restores
//! the checkpoint and replays the journal (refusing, naming the missing LSNs, if the
//! journal no longer holds what that needs) and reports the damaged file; one that
//! says `clean = 0` means the
//! process stopped without a clean close, and the partition reopens empty (recovery then
//! restores its checkpoint and replays the journal).
//!
//! Invariant: once a partition exists, its header file is never removed, and while the
//! partition is open it says `clean = 0` on disk. Reopening an unclean partition and
//! restoring a checkpoint only remove the data files (the new arenas live in memory
//! and get files at their first write-back) and write nothing to the header, so a crash at any moment before a clean
//! close finds the partition unclean and restores it from its checkpoint again.
//!
//! # Missing files
//!
//! A missing header means a partition that never existed, and it is created empty and
//! clean, only if nothing in the data directory says otherwise. Creation makes an empty
//! `pNNNNN.meta.tmp` first, then the data files, then the header under the temporary
//! name, which it renames into place. The open refuses (an [`EngineError::Corrupted`]
//! naming the header, nothing changed on disk) when the header is missing but
//! - data files of the partition exist without `pNNNNN.meta.tmp` (a creation that
//!   stopped half-way leaves that file; anything else is a deleted header),
//! - its checkpoint `checkpoint/<partition>/` (or `.old`) exists, or
//! - a journal `journal/core-N/` starts above LSN 1: segments are released only after a
//!   start has served and checkpointed, and every partition got its header at that start.
//!
//! A partition not closed cleanly, with no checkpoint, is reopened empty (recovery then
//! replays the journal onto it) only while the journal of the core that owns it does
//! not start above LSN 1. Otherwise the open refuses, naming the missing checkpoint:
//! segments are released only once checkpoints of every partition of their core cover
//! them, so the checkpoint was the only copy of the released records' effects. While
//! that journal starts at LSN 1 nothing of it was released, and replay from an empty
//! partition rebuilds it whole: "other partitions have checkpoints" is no evidence of
//! loss (the server skips the checkpoint of an empty partition at shutdown). The owner
//! is `partition % N` under the core count N the server records in `<data-dir>/cores`;
//! without that file every core's journal counts, and a partition that is empty and was
//! never checkpointed on an idle core, while a busy core released segments, is refused
//! too. These checks read directory listings only, and only for a missing header or
//! checkpoint.
//!
//! # Header layout (little-endian), 4096 bytes
//!
//! ```text
//! byte       field             meaning
//!    0..8    magic             b"TALLYPT1"
//!    8..12   version           u32, 3 (2: bytes 104..128 were reserved, zero: opened
//!                               without the data check and written as 3 at the next
//!                               clean close; 1: linear-probing tables, refused)
//!   12..16   partition         u32, this partition's index
//!   16..24   applied_lsn       u64, LSN of the last journal record applied (0 if none)
//!   24..28   clean             u32, 1 after a clean close (and in checkpoints), 0 while open
//!   28..32   migrating         u32, 1 while an old table is being migrated
//!   32..40   table_generation  u64, the current table's file generation
//!   40..48   table_lines       u64, its line count
//!   48..56   old_generation    u64, the old table's generation (if migrating)
//!   56..64   old_lines         u64, its line count (if migrating)
//!   64..72   migrate_cursor    u64, old lines below this are migrated
//!   72..80   counter_count     u64, live counters in both tables
//!   80..88   table_counters    u64, live counters in the current table
//!   88..96   heap_bytes        u64, length of the heap file
//!   96..104  data_checksum     u64, xxh3 of heap then current then old table bytes
//!                               (checkpoints only; 0 otherwise)
//!  104..112  heap_checksum     u64, xxh3 of the heap file (clean headers in the data
//!                               directory; 0 in checkpoints, which use data_checksum)
//!  112..120  table_checksum    u64, xxh3 of the current table file (likewise)
//!  120..128  old_checksum      u64, xxh3 of the old table file (likewise; 0 unless
//!                               migrating)
//!  128..4088 reserved          0
//! 4088..4096 checksum          u64, xxh3 of bytes 0..4088 (valid when clean == 1)
//! ```
//!
//! # Growth
//!
//! When an insert would take the current table past `LOAD_MAX` (92%), a new table of
//! `GROWTH` (x1.15, give or take 3%: see `grown_lines`) the lines becomes current; the
//! old one is migrated `MIGRATE_LINES_PER_INSERT` (256) lines per insert and
//! `MIGRATE_LINES_PER_MUTATION` (4) per other mutation; when done its file (if it was
//! ever written) is unlinked and its memory handed to the arena helper thread to unmap.
//! Lookups check the current table, then the old one at positions at or above the cursor
//! (entries below it were copied; nothing moves in the old table, deletions there just
//! empty the slot). An insert that finds the new table at `LOAD_MAX` first completes
//! the migration. So a counter is always in exactly one place, and the load stays
//! between about 0.80 and 0.92 after the first growths: 32 bytes / load = 35 to 40 bytes
//! per counter.
//!
//! Each step is bounded and makes no file-system call but the unlink of a table read at
//! open (or written back since). Every next table is prepared by the helper thread
//! (mapped, every page faulted in) once the current table is within
//! `slots / PREPARE_AHEAD_DIVISOR` counters of its limit, so the growth only swaps it
//! in; if the helper has not finished when the limit is reached, the growth waits for
//! it up to `LOAD_WAIT_MAX` (95%), and only past that maps a table on the spot, whose
//! first writes then take page faults. A migration step copies at most 512 slots,
//! whose home buckets in the new table are nearly sequential (fast range keeps the hash
//! order). Should no cuckoo path make room in a table (never seen below the load limit:
//! it takes something like nine counters with one 32-bit hash), `rebuild` moves every
//! counter into a bigger table at once, the one step that is not bounded. A new
//! partition's first table has 64 to 72 lines depending on its index, and each growth
//! factor is jittered, so partitions filled at the same rate grow at different moments
//! and never all hold two tables at once.
//!
//! Measured (`tally-bench engine`, 10M counters): 38.4 bytes per counter; the longest
//! insert not preempted by another process fell from 80 ms (synchronous file creation,
//! huge-page faults, a thread spawned per discarded table) to a few ms. Preparing every
//! table (not only those of 2 MiB or more) took the page faults inserts take from
//! 467,000 to about 1,200 (at most 113 in one insert: the first) and the 99.999th
//! percentile insert from 470 to 200-320 us. What is left above a millisecond are
//! stalls in which this virtual machine's CPU does not run (a 20 kHz profile of one
//! 1.8 ms insert took 11 samples, not 36), seen when both of its CPUs are busy.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};

use crate::arena::{io_error, ArenaFile, LoadedArena};
use crate::error::{EngineError, OpError};
use crate::heap::{Bounds, Heap};
use crate::index::{
    InBucket, PlainKey, Slot, Table, FLAG_EXTERNAL, KEY_INLINE_BYTES_MAX, KIND_PLAIN,
    LINES_PER_BUCKET, LINE_BYTES, TABLE_LINES_MAX,
};
use crate::op::{Bound, BoundPolicy, Op, OpResult, Outcome};
use crate::superblock::{checkpoint_path, file_exists, has_checkpoint, released_journal_segment};

const META_MAGIC: &[u8; 8] = b"TALLYPT1";
/// 3: clean headers carry a checksum of each data file. 2: cuckoo addressing (version 1
/// tables were linear probing: same bytes, other places).
const META_VERSION: u32 = 3;
/// The version before data file checksums: the same layout with bytes 104..128 zero.
/// Still opened (without the data check); the next clean close writes `META_VERSION`.
const META_VERSION_UNCHECKED: u32 = 2;
pub(crate) const META_BYTES: u64 = 4096;
/// Every LSN read from a file (a header's `applied_lsn`, a journal stamp) must lie below
/// this: recovery continues the journal above the LSNs it reads, so one near `u64::MAX`
/// would wrap. No journal comes near it (2^62 records at 10 million a second take 14,000
/// years): a header above it was crafted or damaged past its checksum, and is refused.
pub(crate) const LSN_LIMIT: u64 = 1 << 62;
const META_CHECKSUM_OFFSET: usize = 4088;
/// Suffix of a header being written by `create` (`pNNNNN.meta.tmp`).
const META_TEMPORARY_SUFFIX: &str = "meta.tmp";
/// Lines of a new partition's first table (one 4 KiB page), before the per-partition
/// offset of `initial_lines`.
const TABLE_LINES_INITIAL: u64 = 64;
/// Load limit of a table, in percent of its slots: an insert past it starts a growth.
const LOAD_MAX_PERCENT: u64 = 92;
/// Load a table may reach past `LOAD_MAX_PERCENT` while the helper thread is still
/// preparing its successor: the growth waits for the prepared table (whose pages are
/// already faulted in) rather than map one and take its page faults on the partition's
/// thread. Four-slot cuckoo buckets still find room easily at this load.
const LOAD_WAIT_MAX_PERCENT: u64 = 95;
/// Growth factor of a table, in percent of its lines.
const GROWTH_PERCENT: u64 = 115;
/// Each growth's factor is `GROWTH_PERCENT` plus or minus up to this, chosen from the
/// partition and the generation (see `grown_lines`): the first tables come in only five
/// sizes, so without it partitions filled at the same rate would grow, and hold two
/// tables, in five large groups at the same moments.
const GROWTH_JITTER_PERCENT: u64 = 3;
const MIGRATE_LINES_PER_INSERT: u64 = 256;
/// Most growths one `rebuild` tries before it refuses an insert (see there).
const REBUILD_GROWTHS_MAX: usize = 4;
const MIGRATE_LINES_PER_MUTATION: u64 = 4;
/// The next table is prepared (mapped and faulted in by a helper thread, see `arena`)
/// once the current one is within `slots / PREPARE_AHEAD_DIVISOR` counters of its load
/// limit: 1.6% of a growth cycle (which spans 12% of the slots), so a partition holds a
/// prepared table about 1.6% of the time, while the helper has hundreds of inserts'
/// time to fault in a few MiB (at 10M counters: 350 inserts for 6 MiB), and another 3%
/// of the slots (`LOAD_WAIT_MAX_PERCENT`) if it is late.
const PREPARE_AHEAD_DIVISOR: u64 = 512;

// A migration must finish before the new table reaches the load limit: the new table
// starts at LOAD_MAX / GROWTH = 80% and each insert adds one counter while migrating 256
// old lines, so it ends by (old_lines / 256) inserts, well inside the 12% headroom. The
// sooner it ends, the shorter both tables are mapped (memory per counter).
const _: () = assert!(
    LOAD_MAX_PERCENT - LOAD_MAX_PERCENT * 100 / (GROWTH_PERCENT - GROWTH_JITTER_PERCENT) >= 8
);
const _: () = assert!(LOAD_MAX_PERCENT <= LOAD_WAIT_MAX_PERCENT && LOAD_WAIT_MAX_PERCENT < 100);
const _: () = assert!(MIGRATE_LINES_PER_INSERT >= 4);

/// The partition header, mapped at offset 0 of the meta file.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Meta {
    magic: [u8; 8],
    version: u32,
    partition: u32,
    applied_lsn: u64,
    clean: u32,
    migrating: u32,
    table_generation: u64,
    table_lines: u64,
    old_generation: u64,
    old_lines: u64,
    migrate_cursor: u64,
    counter_count: u64,
    table_counters: u64,
    heap_bytes: u64,
    data_checksum: u64,
    heap_checksum: u64,
    table_checksum: u64,
    old_checksum: u64,
}

impl Meta {
    /// Records that no old table is left: every counter is in the current one.
    fn end_migration(&mut self) {
        self.migrating = 0;
        self.old_generation = 0;
        self.old_lines = 0;
        self.migrate_cursor = 0;
        debug_assert_eq!(self.table_counters, self.counter_count);
    }

    /// The header of an empty partition `index` with its first table (generation 1)
    /// and a heap of `heap_bytes`.
    fn empty(index: u32, heap_bytes: u64, clean: u32) -> Meta {
        Meta {
            magic: *META_MAGIC,
            version: META_VERSION,
            partition: index,
            applied_lsn: 0,
            clean,
            migrating: 0,
            table_generation: 1,
            table_lines: initial_lines(index),
            old_generation: 0,
            old_lines: 0,
            migrate_cursor: 0,
            counter_count: 0,
            table_counters: 0,
            heap_bytes,
            data_checksum: 0,
            heap_checksum: 0,
            table_checksum: 0,
            old_checksum: 0,
        }
    }

    /// The checksum this header records for a data file, if it records one: clean
    /// headers of `META_VERSION` do (`None` for a header of `META_VERSION_UNCHECKED`).
    fn recorded(&self, checksum: u64) -> Option<u64> {
        debug_assert_eq!(self.clean, 1);
        (self.version == META_VERSION).then_some(checksum)
    }
}

const _: () = assert!(std::mem::offset_of!(Meta, migrate_cursor) == 64);
const _: () = assert!(std::mem::offset_of!(Meta, data_checksum) == 96);
const _: () = assert!(std::mem::offset_of!(Meta, heap_checksum) == 104);
const _: () = assert!(std::mem::offset_of!(Meta, table_checksum) == 112);
const _: () = assert!(std::mem::offset_of!(Meta, old_checksum) == 120);
const _: () = assert!(std::mem::size_of::<Meta>() == 128);
const _: () = assert!(std::mem::size_of::<Meta>() <= META_CHECKSUM_OFFSET);

/// A key with what probing needs: its hash's top half and its first 16 bytes, padded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyProbe<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) hash_high: u32,
    padded: [u8; KEY_INLINE_BYTES_MAX],
}

impl<'a> KeyProbe<'a> {
    #[inline]
    pub(crate) fn new(key: &'a [u8], hash: u64) -> KeyProbe<'a> {
        KeyProbe {
            key,
            hash_high: (hash >> 32) as u32,
            padded: padded_prefix(key),
        }
    }
}

/// The first 16 bytes of `key`, zero-padded, read with at most two word loads. Written
/// out rather than as a `copy_from_slice` of `key.len()` bytes: the optimizer may merge
/// such a copy with the 16-byte load into one `memcpy` call of variable length per
/// operation (it did under whole-program LTO: +20 instructions per increment).
#[inline(always)]
fn padded_prefix(key: &[u8]) -> [u8; KEY_INLINE_BYTES_MAX] {
    const _: () = assert!(KEY_INLINE_BYTES_MAX == 16);
    if let Some(prefix) = key.first_chunk::<16>() {
        return *prefix;
    }
    let length = key.len();
    let word = |bytes: &[u8]| u64::from_le_bytes(*bytes.first_chunk::<8>().expect("8 bytes"));
    let (low, high) = if length >= 8 {
        // Bytes 8..length are the top `length - 8` bytes of the word ending at `length`.
        let high = match length - 8 {
            0 => 0,
            n => word(&key[length - 8..]) >> (8 * (8 - n)),
        };
        (word(key), high)
    } else {
        let mut low = 0u64;
        for (index, &byte) in key.iter().enumerate() {
            low |= u64::from(byte) << (8 * index);
        }
        (low, 0)
    };
    let mut padded = [0u8; KEY_INLINE_BYTES_MAX];
    padded[..8].copy_from_slice(&low.to_le_bytes());
    padded[8..].copy_from_slice(&high.to_le_bytes());
    padded
}

impl KeyProbe<'_> {
    /// The zero-padded first 16 key bytes as two little-endian words.
    #[inline(always)]
    pub(crate) fn key_words(&self) -> [u64; 2] {
        crate::index::key_words(&self.padded)
    }

    /// What the fast path compares in a slot.
    #[inline(always)]
    pub(crate) fn plain(&self) -> PlainKey {
        PlainKey {
            hash_high: self.hash_high,
            key_len: self.key.len() as u8,
            key_words: self.key_words(),
        }
    }
}

pub(crate) fn file_name(partition: u32, suffix: &str) -> String {
    format!("p{partition:05}.{suffix}")
}

fn table_suffix(generation: u64) -> String {
    format!("t{generation:08}")
}

/// Where a counter lives.
#[derive(Clone, Copy, Debug)]
enum Location {
    Current(usize),
    Old(usize),
}

/// One partition's mapped files and its counters.
#[derive(Debug)]
pub(crate) struct Partition {
    index: u32,
    directory: PathBuf,
    meta: ArenaFile,
    table: Table,
    old: Option<Table>,
    heap: Heap,
    was_clean: bool,
    /// The applied LSN the header on disk recorded at open: for an unclean partition,
    /// the one of its last clean close (opening marks `clean = 0` and changes nothing
    /// else), whose other fields are unchecked; recovery only compares it (see
    /// `journal::recovery`).
    applied_lsn_at_open: u64,
    /// Why a clean partition's data files were refused at open, and which file, when
    /// it was reopened for recovery to restore (see `reopen_damaged`).
    damage: Option<(PathBuf, String)>,
    /// Not `Sync`: one thread touches a partition at a time.
    _not_sync: std::marker::PhantomData<Cell<()>>,
}

impl Partition {
    /// Opens the partition's files in `directory`, creating them if the header is missing
    /// (see "Missing files" in the module doc). Nothing is marked on disk until
    /// [`Partition::start`].
    pub(crate) fn open(directory: &Path, index: u32) -> Result<Partition, EngineError> {
        let meta_path = directory.join(file_name(index, "meta"));
        if !file_exists(&meta_path)? {
            refuse_missing_header(directory, index, &meta_path)?;
            return Partition::create(directory, index);
        }
        let meta = ArenaFile::open(&meta_path, META_BYTES)?;
        let header = check_meta(&meta, index)?;
        if header.clean != 1 {
            refuse_missing_checkpoint(directory, index)?;
            return Partition::reopen_empty(directory, index, meta, header.applied_lsn);
        }
        let (table, old, heap) = match Partition::open_data_files(directory, index, &header) {
            Ok(files) => files,
            Err(error) if is_damage(&error) && has_checkpoint(directory, index) => {
                return Partition::reopen_damaged(directory, index, meta, &header, error);
            }
            Err(error) => return Err(error),
        };
        Ok(Partition {
            index,
            directory: directory.to_path_buf(),
            meta,
            table,
            old,
            heap,
            was_clean: true,
            applied_lsn_at_open: header.applied_lsn,
            damage: None,
            _not_sync: std::marker::PhantomData,
        })
    }

    /// Opens and checks the data files a clean header describes.
    fn open_data_files(
        directory: &Path,
        index: u32,
        header: &Meta,
    ) -> Result<(Table, Option<Table>, Heap), EngineError> {
        let open_table = |generation: u64, lines: u64, checksum: u64| {
            let path = directory.join(file_name(index, &table_suffix(generation)));
            let file = open_verified(&path, lines * LINE_BYTES as u64, header.recorded(checksum))?;
            Ok::<_, EngineError>(Table::from_file(file, lines))
        };
        let table = open_table(
            header.table_generation,
            header.table_lines,
            header.table_checksum,
        )?;
        let old = if header.migrating == 1 {
            Some(open_table(
                header.old_generation,
                header.old_lines,
                header.old_checksum,
            )?)
        } else {
            None
        };
        let heap_path = directory.join(file_name(index, "heap"));
        let heap_file = open_verified(
            &heap_path,
            header.heap_bytes,
            header.recorded(header.heap_checksum),
        )?;
        let heap = Heap::from_file(heap_file)?;
        Ok((table, old, heap))
    }

    /// Opens a clean partition whose data files fail their check (`damage`: changed,
    /// cut, missing) while its checkpoint exists: the checkpoint plus the journal
    /// rebuild it exactly, so it is taken as not closed cleanly and recovery restores
    /// it (and refuses, naming the missing LSNs, if the journal no longer holds what
    /// replay needs). In this order, each step safe to crash after: the header on disk
    /// is marked `clean = 0` (a restart then restores from the checkpoint too), the
    /// data files are moved to `<data-dir>/damaged/` for inspection (nothing is
    /// deleted), and the partition reopens empty. The damage is reported by recovery.
    fn reopen_damaged(
        directory: &Path,
        index: u32,
        mut meta: ArenaFile,
        header: &Meta,
        damage: EngineError,
    ) -> Result<Partition, EngineError> {
        let damaged_path = match &damage {
            EngineError::Corrupted { path, .. } | EngineError::Io { path, .. } => path.clone(),
            _ => directory.join(file_name(index, "meta")),
        };
        write_header(
            meta.bytes_mut(),
            &Meta {
                clean: 0,
                ..*header
            },
        );
        meta.bytes_mut()[META_CHECKSUM_OFFSET..].fill(0);
        meta.write_back()?;
        set_aside_data_files(directory, index)?;
        let mut partition = Partition::reopen_empty(directory, index, meta, header.applied_lsn)?;
        partition.damage = Some((damaged_path, damage.to_string()));
        Ok(partition)
    }

    /// Makes an opened partition ready to change: a clean one gets its header marked
    /// `clean = 0` on disk and its stray tables removed. Separate from `open` so that
    /// a store opens (and checks) every partition before it marks any: a partition
    /// refused at open then leaves the others clean on disk, not emptied at the next
    /// open for want of a checkpoint.
    pub(crate) fn start(&mut self) -> Result<(), EngineError> {
        if self.was_clean {
            self.mark_open()?;
            self.remove_stray_tables()?;
        }
        Ok(())
    }

    /// Opens a partition that was not closed cleanly: its data files hold the state of
    /// the last clean close, or less (see `arena`), so it starts empty in memory, and
    /// recovery restores its checkpoint and replays the journal.
    ///
    /// The header file is kept as it is on disk (`clean = 0`) and nothing is written:
    /// a crash at any point here, or later before a clean close, finds the partition
    /// unclean again. Removing the header instead would make the next open create a
    /// new, clean, empty partition and skip the restore: the counters of the
    /// checkpoint would be lost once the journal before it was released.
    fn reopen_empty(
        directory: &Path,
        index: u32,
        mut meta: ArenaFile,
        applied_lsn_at_open: u64,
    ) -> Result<Partition, EngineError> {
        debug_assert_eq!(read_header(meta.bytes()).clean, 0);
        remove_data_files(directory, index)?;
        let heap = Heap::create(&directory.join(file_name(index, "heap")))?;
        let table = Table::create(
            &directory.join(file_name(index, &table_suffix(1))),
            initial_lines(index),
        )?;
        let header = Meta::empty(index, heap.file().length_bytes(), 0);
        meta.bytes_mut().fill(0);
        write_header(meta.bytes_mut(), &header);
        Ok(Partition {
            index,
            directory: directory.to_path_buf(),
            meta,
            table,
            old: None,
            heap,
            was_clean: false,
            applied_lsn_at_open,
            damage: None,
            _not_sync: std::marker::PhantomData,
        })
    }

    /// Removes table files of this partition that the header does not name: a process
    /// stopped between a growth's header update and the unlink of the old table leaves one.
    fn remove_stray_tables(&self) -> Result<(), EngineError> {
        let mut keep = vec![file_name(
            self.index,
            &table_suffix(self.meta().table_generation),
        )];
        if self.old.is_some() {
            keep.push(file_name(
                self.index,
                &table_suffix(self.meta().old_generation),
            ));
        }
        let prefix = format!("p{:05}.t", self.index);
        let entries = fs::read_dir(&self.directory).map_err(io_error("list", &self.directory))?;
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.directory))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && !keep.contains(&name) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        Ok(())
    }

    fn create(directory: &Path, index: u32) -> Result<Partition, EngineError> {
        // The temporary header is made first, empty: data files without a header are
        // a creation that stopped half-way only while it is there (see
        // `refuse_missing_header`).
        let temporary_path = directory.join(file_name(index, META_TEMPORARY_SUFFIX));
        fs::File::create(&temporary_path).map_err(io_error("create", &temporary_path))?;
        let heap = Heap::create(&directory.join(file_name(index, "heap")))?;
        let heap_checksum = write_back_checksummed(heap.file())?;
        let table = Table::create(
            &directory.join(file_name(index, &table_suffix(1))),
            initial_lines(index),
        )?;
        let table_checksum = write_back_checksummed(table.file())?;
        let mut meta = ArenaFile::create(&temporary_path, META_BYTES)?;
        let header = Meta {
            heap_checksum,
            table_checksum,
            ..Meta::empty(index, heap.file().length_bytes(), 1)
        };
        write_header(meta.bytes_mut(), &header);
        seal_meta(&mut meta);
        meta.write_back()?;
        // The header appears under its name only once complete: a crash before this
        // rename leaves no header, and the next open creates the partition again.
        let meta_path = directory.join(file_name(index, "meta"));
        fs::rename(meta.path(), &meta_path).map_err(io_error("rename", &meta_path))?;
        drop(meta);
        Partition::open(directory, index)
    }

    /// Marks the header dirty (clean = 0) and syncs it before any counter changes, so a
    /// stop before the next clean close reopens the partition empty, for recovery.
    fn mark_open(&mut self) -> Result<(), EngineError> {
        self.meta_mut().clean = 0;
        self.meta.bytes_mut()[META_CHECKSUM_OFFSET..].fill(0);
        self.meta.write_back()
    }

    pub(crate) fn was_clean(&self) -> bool {
        self.was_clean
    }

    /// Takes a clean partition for one that was not closed cleanly: recovery found its
    /// files older than its checkpoint, and restores the checkpoint instead. Its header
    /// on disk already says `clean = 0` (see [`Partition::start`]).
    pub(crate) fn distrust(&mut self) {
        self.was_clean = false;
    }

    #[inline]
    fn meta(&self) -> &Meta {
        // SAFETY: the meta mapping is page aligned and META_BYTES >= size_of::<Meta>() long
        // (checked at open); Meta is plain old data (integers and bytes only).
        unsafe { &*self.meta.bytes().as_ptr().cast::<Meta>() }
    }

    #[inline]
    fn meta_mut(&mut self) -> &mut Meta {
        // SAFETY: as in `meta`, and `&mut self` makes this the only view.
        unsafe { &mut *self.meta.bytes_mut().as_mut_ptr().cast::<Meta>() }
    }

    pub(crate) fn counter_count(&self) -> u64 {
        self.meta().counter_count
    }

    pub(crate) fn applied_lsn(&self) -> u64 {
        self.meta().applied_lsn
    }

    pub(crate) fn damage(&self) -> Option<&(PathBuf, String)> {
        self.damage.as_ref()
    }

    pub(crate) fn applied_lsn_at_open(&self) -> u64 {
        self.applied_lsn_at_open
    }

    pub(crate) fn set_applied_lsn(&mut self, lsn: u64) {
        self.meta_mut().applied_lsn = lsn;
    }

    /// Bytes of all mapped files of this partition, and of a next table being prepared.
    pub(crate) fn arena_bytes(&self) -> u64 {
        let old_bytes = self.old.as_ref().map_or(0, |t| t.file().length_bytes());
        self.meta.length_bytes()
            + self.table.successor_bytes()
            + self.heap.file().length_bytes()
            + self.table.file().length_bytes()
            + old_bytes
    }

    /// Hints the CPU to fetch the line(s) where the key would be.
    #[inline]
    pub(crate) fn prefetch(&self, hash_high: u32) {
        self.table.prefetch(hash_high);
        if let Some(old) = &self.old {
            old.prefetch(hash_high);
        }
    }

    #[inline]
    fn slot_matches(heap: &Heap, slot: &Slot, probe: &KeyProbe) -> bool {
        if slot.flags & FLAG_EXTERNAL == 0 {
            return slot.key == probe.padded;
        }
        slot.key[8..] == probe.padded[..8] && heap.key(slot.external_offset()) == Some(probe.key)
    }

    #[inline(always)]
    fn locate(&self, probe: &KeyProbe) -> Option<Location> {
        let key_len = probe.key.len() as u8;
        let heap = &self.heap;
        let matches = |slot: &Slot| Partition::slot_matches(heap, slot, probe);
        if let Some(position) = self.table.probe(probe.hash_high, key_len, matches) {
            return Some(Location::Current(position));
        }
        let old = self.old.as_ref()?;
        let cursor_position = self.meta().migrate_cursor as usize * crate::index::SLOTS_PER_LINE;
        old.probe(probe.hash_high, key_len, matches)
            .filter(|&position| position >= cursor_position)
            .map(Location::Old)
    }

    #[inline]
    fn slot(&self, location: Location) -> &Slot {
        match location {
            Location::Current(position) => &self.table.slots()[position],
            Location::Old(position) => &self.old.as_ref().expect("old table").slots()[position],
        }
    }

    #[inline]
    fn slot_mut(&mut self, location: Location) -> &mut Slot {
        match location {
            Location::Current(position) => &mut self.table.slots_mut()[position],
            Location::Old(position) => {
                &mut self.old.as_mut().expect("old table").slots_mut()[position]
            }
        }
    }

    fn slot_bounds(&self, slot: &Slot) -> Bounds {
        if slot.is_external() {
            self.heap.bounds(slot.external_offset())
        } else {
            Bounds::NONE
        }
    }

    /// The fast path's lookup of an existing plain counter while no migration runs
    /// (see [`Table::find_plain`]); `Elsewhere` during a migration. The caller then takes
    /// the general path ([`Partition::apply`]), which decides the same way. A position
    /// found stays the counter's until the next operation that is not a fast-path update
    /// (only inserts, deletes and migration move counters).
    #[inline(always)]
    pub(crate) fn find_plain(&self, bucket: Option<usize>, key: &PlainKey) -> InBucket {
        if self.old.is_some() {
            return InBucket::Elsewhere;
        }
        self.table.find_plain(bucket, key)
    }

    #[cfg(test)]
    fn table_generation_for_tests(&self) -> u64 {
        self.meta().table_generation
    }

    /// Hints the CPU to fetch the heap record of the external counter at slot `position`.
    #[inline]
    pub(crate) fn prefetch_record(&self, position: usize) {
        let slot = &self.table.slots()[position];
        self.heap
            .prefetch(slot.external_offset(), usize::from(slot.key_len));
    }

    /// The fast path's update of the external counter `find_plain` found at `position`:
    /// adds `operand`, or with `set` sets it, within its bounds as `policy` says, as
    /// [`Partition::apply`] does. `None`, with nothing changed, if the slot there is not
    /// that counter (its key in the heap is not `probe`'s, or counters moved since).
    #[inline]
    pub(crate) fn update_external_at(
        &mut self,
        position: usize,
        probe: &KeyProbe,
        operand: i64,
        set: bool,
        policy: BoundPolicy,
    ) -> Option<OpResult> {
        // After a general step in the same batch the position may be stale (a growth or
        // a cuckoo path moved counters): only a plain external slot of this hash and
        // length whose heap key is `probe`'s is the counter.
        let slot = *self.table.slots().get(position)?;
        if slot.kind != KIND_PLAIN
            || slot.flags != FLAG_EXTERNAL
            || slot.hash_high != probe.hash_high
            || usize::from(slot.key_len) != probe.key.len()
        {
            return None;
        }
        let offset = slot.external_offset();
        if self.heap.key(offset) != Some(probe.key) {
            return None;
        }
        let bounds = self.heap.bounds(offset);
        let bounded = if set {
            apply_bounds(operand, bounds, policy)
        } else {
            add_within_bounds(slot.value, operand, bounds, policy)
        };
        let (value, clamped) = match bounded {
            Ok(bounded) => bounded,
            Err(error) => return Some(Err(error)),
        };
        self.table.slots_mut()[position].value = value;
        Some(Ok(Outcome {
            value,
            existed: true,
            clamped,
        }))
    }

    /// Hints the CPU to fetch the bucket starting at slot `bucket` of the current table.
    #[inline]
    pub(crate) fn prefetch_bucket(&self, bucket: usize) {
        self.table.prefetch_bucket(bucket);
    }

    /// The fast path's update of the inline counter `find_plain` found at `position`: adds
    /// `operand`, or with `set` sets it. Journal replay sets values, so it takes this
    /// path as increments do.
    #[inline(always)]
    pub(crate) fn update_inline_at(
        &mut self,
        position: usize,
        operand: i64,
        set: bool,
    ) -> OpResult {
        let slot = &mut self.table.slots_mut()[position];
        let value = resulting_value(slot.value, operand, set)?;
        slot.value = value;
        Ok(Outcome {
            value,
            existed: true,
            clamped: false,
        })
    }

    /// Applies one operation whose key is valid and belongs to this partition.
    #[inline]
    pub(crate) fn apply(&mut self, op: &Op, probe: &KeyProbe) -> OpResult {
        match *op {
            Op::Add { delta, policy, .. } => self.add(probe, delta, policy),
            Op::Set { value, policy, .. } => self.set(probe, value, policy),
            Op::Get { .. } => Ok(self.get(probe)),
            Op::Delete { .. } => self.delete(probe),
            Op::SetBounds { floor, ceiling, .. } => {
                self.set_bounds(probe, Bounds { floor, ceiling })
            }
            Op::GetBound { bound, .. } => Ok(self.get_bound(probe, bound)),
        }
    }

    #[inline]
    fn add(&mut self, probe: &KeyProbe, delta: i64, policy: BoundPolicy) -> OpResult {
        let Some(location) = self.locate(probe) else {
            self.insert(probe, delta, Bounds::NONE)?;
            return Ok(Outcome {
                value: delta,
                existed: false,
                clamped: false,
            });
        };
        let slot = self.slot_mut(location);
        let (value, clamped) = if slot.is_external() {
            let offset = slot.external_offset();
            let current = slot.value;
            let bounded = add_within_bounds(current, delta, self.heap.bounds(offset), policy)?;
            self.slot_mut(location).value = bounded.0;
            bounded
        } else {
            // The common case: no bounds, one write to the line just probed.
            let sum = slot.value.checked_add(delta).ok_or(OpError::Overflow)?;
            slot.value = sum;
            (sum, false)
        };
        self.migrate_after_mutation();
        Ok(Outcome {
            value,
            existed: true,
            clamped,
        })
    }

    fn set(&mut self, probe: &KeyProbe, value: i64, policy: BoundPolicy) -> OpResult {
        let Some(location) = self.locate(probe) else {
            self.insert(probe, value, Bounds::NONE)?;
            return Ok(Outcome {
                value,
                existed: false,
                clamped: false,
            });
        };
        let slot = *self.slot(location);
        let (value, clamped) = apply_bounds(value, self.slot_bounds(&slot), policy)?;
        self.slot_mut(location).value = value;
        self.migrate_after_mutation();
        Ok(Outcome {
            value,
            existed: true,
            clamped,
        })
    }

    #[inline]
    pub(crate) fn get(&self, probe: &KeyProbe) -> Outcome {
        let (value, existed) = match self.locate(probe) {
            Some(location) => (self.slot(location).value, true),
            None => (0, false),
        };
        Outcome {
            value,
            existed,
            clamped: false,
        }
    }

    pub(crate) fn bounds(&self, probe: &KeyProbe) -> Bounds {
        match self.locate(probe) {
            Some(location) => self.slot_bounds(self.slot(location)),
            None => Bounds::NONE,
        }
    }

    /// One bound of the counter as [`Op::GetBound`] reports it: the bound and whether it
    /// is set (0 and false when it is not, or the counter is missing).
    fn get_bound(&self, probe: &KeyProbe, bound: Bound) -> Outcome {
        let bounds = self.bounds(probe);
        let read = match bound {
            Bound::Floor => bounds.floor,
            Bound::Ceiling => bounds.ceiling,
        };
        Outcome {
            value: read.unwrap_or(0),
            existed: read.is_some(),
            clamped: false,
        }
    }

    fn delete(&mut self, probe: &KeyProbe) -> OpResult {
        let Some(location) = self.locate(probe) else {
            return Ok(Outcome {
                value: 0,
                existed: false,
                clamped: false,
            });
        };
        let slot = *self.slot(location);
        if slot.is_external() {
            self.heap.free(slot.external_offset());
        }
        match location {
            Location::Current(position) => {
                self.table.remove(position);
                self.meta_mut().table_counters -= 1;
            }
            Location::Old(position) => self.old.as_mut().expect("old table").remove(position),
        }
        self.meta_mut().counter_count -= 1;
        self.migrate_after_mutation();
        Ok(Outcome {
            value: slot.value,
            existed: true,
            clamped: false,
        })
    }

    fn set_bounds(&mut self, probe: &KeyProbe, bounds: Bounds) -> OpResult {
        if let (Some(floor), Some(ceiling)) = (bounds.floor, bounds.ceiling) {
            if floor > ceiling {
                return Err(OpError::InvalidBounds { floor, ceiling });
            }
        }
        let location = self.locate(probe);
        let value = location.map_or(0, |l| self.slot(l).value);
        if bounds.floor.is_some_and(|f| value < f) || bounds.ceiling.is_some_and(|c| value > c) {
            return Err(OpError::OutOfBounds { value });
        }
        let Some(location) = location else {
            self.insert(probe, 0, bounds)?;
            return Ok(Outcome {
                value: 0,
                existed: false,
                clamped: false,
            });
        };
        self.rewrite_bounds(location, probe, bounds)?;
        self.migrate_after_mutation();
        Ok(Outcome {
            value,
            existed: true,
            clamped: false,
        })
    }

    /// Stores `bounds` for the counter at `location`, moving its key into or out of an
    /// extension record as needed (a short key without bounds goes back inline).
    fn rewrite_bounds(
        &mut self,
        location: Location,
        probe: &KeyProbe,
        bounds: Bounds,
    ) -> Result<(), OpError> {
        let slot = *self.slot(location);
        let wants_external = bounds != Bounds::NONE || probe.key.len() > KEY_INLINE_BYTES_MAX;
        match (slot.is_external(), wants_external) {
            (true, true) => self.heap.set_bounds(slot.external_offset(), bounds),
            (false, true) => {
                let offset = self.heap.allocate(probe.key, bounds)?;
                self.meta_mut().heap_bytes = self.heap.file().length_bytes();
                let slot = self.slot_mut(location);
                slot.key = external_key(offset, probe);
                slot.flags |= FLAG_EXTERNAL;
            }
            (true, false) => {
                self.heap.free(slot.external_offset());
                let slot = self.slot_mut(location);
                slot.key = probe.padded;
                slot.flags &= !FLAG_EXTERNAL;
            }
            (false, false) => {}
        }
        Ok(())
    }

    /// Inserts a counter known to be absent. No counter and no heap record changes if it
    /// fails (the tables may have grown or been rebuilt, their contents the same): the
    /// extension record, if the counter needs one, is allocated only once its slot is
    /// found, and if that allocation fails the slot is emptied (after a cuckoo path it
    /// still holds a copy of the last counter moved out of it).
    fn insert(&mut self, probe: &KeyProbe, value: i64, bounds: Bounds) -> Result<(), OpError> {
        self.reserve_one()?;
        let position = match self.table.make_room(probe.hash_high) {
            Some(position) => position,
            None => {
                let old_from = self.meta().migrate_cursor as usize * crate::index::SLOTS_PER_LINE;
                self.rebuild(old_from, Some(probe.hash_high))?
                    .expect("a rebuild for a new counter makes room for it")
            }
        };
        let mut slot = Slot {
            key: probe.padded,
            value,
            hash_high: probe.hash_high,
            key_len: probe.key.len() as u8,
            kind: KIND_PLAIN,
            flags: 0,
            reserved: 0,
        };
        if bounds != Bounds::NONE || probe.key.len() > KEY_INLINE_BYTES_MAX {
            let offset = match self.heap.allocate(probe.key, bounds) {
                Ok(offset) => offset,
                Err(error) => {
                    self.table.remove(position);
                    return Err(error);
                }
            };
            slot.key = external_key(offset, probe);
            slot.flags = FLAG_EXTERNAL;
            self.meta_mut().heap_bytes = self.heap.file().length_bytes();
        }
        self.table.slots_mut()[position] = slot;
        let meta = self.meta_mut();
        meta.counter_count += 1;
        meta.table_counters += 1;
        Ok(())
    }

    /// Makes room for one more counter in the current table: starts a growth if the load
    /// limit is reached, and advances a running migration.
    fn reserve_one(&mut self) -> Result<(), OpError> {
        let slots = self.table.slot_count() as u64;
        let limit = load_limit(slots);
        let counters = self.meta().table_counters + 1;
        if self.old.is_none()
            && counters + slots / PREPARE_AHEAD_DIVISOR >= limit
            && !self.table.has_successor()
        {
            self.prepare_growth();
        }
        if counters > limit && !self.waits_for_successor(slots, counters) {
            if self.old.is_some() {
                self.migrate_lines(u64::MAX);
            }
            self.start_growth()?;
        }
        if self.old.is_some() {
            self.migrate_lines(MIGRATE_LINES_PER_INSERT);
        }
        Ok(())
    }

    /// Whether a growth due at `counters` counters in a table of `slots` slots may wait
    /// for the helper thread to finish preparing the next table (up to
    /// `LOAD_WAIT_MAX_PERCENT`).
    fn waits_for_successor(&mut self, slots: u64, counters: u64) -> bool {
        self.old.is_none()
            && counters <= slots * LOAD_WAIT_MAX_PERCENT / 100
            && self.table.successor_pending()
    }

    /// The next table's path and line count, `None` if it would exceed the table limit.
    fn successor(&self) -> Option<(PathBuf, u64)> {
        let generation = self.meta().table_generation + 1;
        let grown_lines = grown_lines(self.table.line_count(), self.index, generation);
        if grown_lines > TABLE_LINES_MAX {
            return None;
        }
        let path = self
            .directory
            .join(file_name(self.index, &table_suffix(generation)));
        Some((path, grown_lines))
    }

    /// Asks the helper thread for the next table when the current one nears its load
    /// limit (see `PREPARE_AHEAD_DIVISOR`).
    fn prepare_growth(&mut self) {
        if let Some((path, lines)) = self.successor() {
            self.table.prepare_successor(&path, lines);
        }
    }

    fn start_growth(&mut self) -> Result<(), OpError> {
        debug_assert!(self.old.is_none());
        let (path, grown_lines) = self.successor().ok_or(OpError::StorageFull)?;
        let table = match self.table.take_successor(grown_lines) {
            Some(prepared) => prepared,
            None => Table::create(&path, grown_lines).map_err(|_| OpError::StorageFull)?,
        };
        let generation = self.meta().table_generation + 1;
        let old = std::mem::replace(&mut self.table, table);
        self.old = Some(old);
        let meta = self.meta_mut();
        meta.old_generation = meta.table_generation;
        meta.old_lines = meta.table_lines;
        meta.table_generation = generation;
        meta.table_lines = grown_lines;
        meta.migrate_cursor = 0;
        meta.table_counters = 0;
        meta.migrating = 1;
        Ok(())
    }

    #[inline]
    fn migrate_after_mutation(&mut self) {
        if self.old.is_some() {
            self.migrate_lines(MIGRATE_LINES_PER_MUTATION);
        }
    }

    /// Copies up to `line_budget` old lines into the current table; discards the old
    /// table when done.
    fn migrate_lines(&mut self, line_budget: u64) {
        let Some(old) = self.old.as_ref() else {
            return;
        };
        let old_lines = old.line_count();
        let start = self.meta().migrate_cursor;
        let end = start.saturating_add(line_budget).min(old_lines);
        let mut moved = 0;
        for position in start as usize * 2..end as usize * 2 {
            let slot = self.old.as_ref().expect("old table").slots()[position];
            if !slot.is_live() {
                continue;
            }
            let Some(target) = self.table.make_room(slot.hash_high) else {
                self.meta_mut().table_counters += moved;
                self.migration_stuck(position);
                return;
            };
            self.table.slots_mut()[target] = slot;
            moved += 1;
        }
        let meta = self.meta_mut();
        meta.table_counters += moved;
        meta.migrate_cursor = end;
        if end == old_lines {
            self.finish_migration();
        }
    }

    /// The migration found no room for the old table's counter at slot `position`: the
    /// rest of the old table (from `position`) and the current table are rebuilt into
    /// one bigger table, which ends the migration. If even that fails (no memory), the
    /// migration stays where it was, at the line of `position`, the copy of that line's
    /// first counter, if made, being taken back; a later step tries again.
    #[cold]
    fn migration_stuck(&mut self, position: usize) {
        if self.rebuild(position, None).is_ok() {
            return;
        }
        if position % 2 == 1 {
            let first = self.old.as_ref().expect("old table").slots()[position - 1];
            if first.is_live() {
                let copy = self
                    .table
                    .probe(first.hash_high, first.key_len, |slot| *slot == first)
                    .expect("the line's first counter was copied");
                self.table.remove(copy);
                self.meta_mut().table_counters -= 1;
            }
        }
        self.meta_mut().migrate_cursor = position as u64 / 2;
    }

    /// Rebuilds the index into one bigger table holding every counter of the current
    /// table and of the old one from slot `old_from` (the unmigrated rest), and room for
    /// one more of hash `room_for` if asked (its empty slot is returned), then discards
    /// both. It stops the partition for as long as that takes: it is the fallback for a
    /// table in which no cuckoo path makes room, which below `LOAD_MAX` takes a cluster of
    /// counters whose two buckets coincide. A bigger table spreads such a cluster unless
    /// its counters share their 32-bit hash: after `REBUILD_GROWTHS_MAX` growths that did
    /// not help it gives up with `StorageFull`, nothing changed (so nine keys crafted to
    /// share a hash cost their inserter an error, not the process its memory).
    #[cold]
    fn rebuild(
        &mut self,
        old_from: usize,
        room_for: Option<u32>,
    ) -> Result<Option<usize>, OpError> {
        let mut live: Vec<Slot> = self
            .table
            .slots()
            .iter()
            .copied()
            .filter(Slot::is_live)
            .collect();
        if let Some(old) = &self.old {
            live.extend(
                old.slots()[old_from..]
                    .iter()
                    .copied()
                    .filter(Slot::is_live),
            );
        }
        let mut lines = self.table.line_count();
        let mut generation = self.meta().table_generation;
        'grow: for _ in 0..REBUILD_GROWTHS_MAX {
            generation += 1;
            lines = grown_lines(lines, self.index, generation);
            if lines > TABLE_LINES_MAX {
                return Err(OpError::StorageFull);
            }
            let path = self
                .directory
                .join(file_name(self.index, &table_suffix(generation)));
            let mut table = Table::create(&path, lines).map_err(|_| OpError::StorageFull)?;
            for slot in &live {
                let Some(position) = table.make_room(slot.hash_high) else {
                    table.into_file().discard();
                    continue 'grow;
                };
                table.slots_mut()[position] = *slot;
            }
            let room = match room_for.map(|hash_high| table.make_room(hash_high)) {
                Some(None) => {
                    table.into_file().discard();
                    continue 'grow;
                }
                Some(Some(position)) => Some(position),
                None => None,
            };
            std::mem::replace(&mut self.table, table)
                .into_file()
                .discard();
            if let Some(old) = self.old.take() {
                old.into_file().discard();
            }
            let meta = self.meta_mut();
            meta.table_generation = generation;
            meta.table_lines = lines;
            meta.table_counters = live.len() as u64;
            meta.end_migration();
            return Ok(room);
        }
        Err(OpError::StorageFull)
    }

    fn finish_migration(&mut self) {
        let old = self.old.take().expect("old table");
        self.meta_mut().end_migration();
        // Unmapped off this thread (see `arena`); a failed unlink leaves a stray file that
        // the next open removes. The counters are all in the current table either way.
        old.into_file().discard();
    }

    /// Visits every live counter: (key, value, floor, ceiling).
    pub(crate) fn for_each_counter(&self, mut f: impl FnMut(&[u8], i64, Option<i64>, Option<i64>)) {
        let mut visit = |slot: &Slot| {
            let bounds = self.slot_bounds(slot);
            let key: &[u8] = if slot.is_external() {
                match self.heap.key(slot.external_offset()) {
                    Some(key) => key,
                    None => return,
                }
            } else {
                &slot.key[..usize::from(slot.key_len).min(KEY_INLINE_BYTES_MAX)]
            };
            f(key, slot.value, bounds.floor, bounds.ceiling);
        };
        self.table
            .slots()
            .iter()
            .filter(|s| s.is_live())
            .for_each(&mut visit);
        if let Some(old) = &self.old {
            let cursor_position = self.meta().migrate_cursor as usize * 2;
            old.slots()[cursor_position..]
                .iter()
                .filter(|s| s.is_live())
                .for_each(&mut visit);
        }
    }

    /// The files of this partition, meta first.
    fn files(&self) -> Vec<&ArenaFile> {
        let mut files = vec![&self.meta, self.heap.file(), self.table.file()];
        files.extend(self.old.as_ref().map(|t| t.file()));
        files
    }

    /// Writes every data file back and syncs it, then marks the header clean with its
    /// checksum and writes and syncs it: the header claims a clean close only once every
    /// byte it describes is on disk.
    pub(crate) fn close_clean(mut self) -> Result<(), EngineError> {
        let heap_checksum = write_back_checksummed(self.heap.file())?;
        let table_checksum = write_back_checksummed(self.table.file())?;
        let old_checksum = match &self.old {
            Some(old) => write_back_checksummed(old.file())?,
            None => 0,
        };
        let heap_bytes = self.heap.file().length_bytes();
        let meta = self.meta_mut();
        meta.version = META_VERSION;
        meta.heap_bytes = heap_bytes;
        meta.heap_checksum = heap_checksum;
        meta.table_checksum = table_checksum;
        meta.old_checksum = old_checksum;
        meta.clean = 1;
        seal_meta(&mut self.meta);
        self.meta.write_back()
    }

    /// What a checkpoint of this partition holds, borrowed from the live partition: to
    /// write at once, on the owning core, without a copy.
    pub(crate) fn checkpoint_bytes(&self) -> CheckpointBytes<'_> {
        CheckpointBytes {
            index: self.index,
            heap_bytes: self.heap.file().length_bytes(),
            meta_bytes: self.meta.bytes(),
            files: self
                .files()
                .into_iter()
                .skip(1)
                .map(|file| {
                    let name = file.path().file_name().expect("arena file name");
                    (Path::new(name), file.bytes())
                })
                .collect(),
        }
    }

    /// Copies [`Partition::checkpoint_bytes`] into memory, reusing `buffers` (from
    /// [`PartitionSnapshot::into_buffers`]) so that a round of checkpoints does not
    /// fault in fresh memory for every partition. The copy is all the owning core pays
    /// for; the snapshot's bytes can be written on any thread.
    pub(crate) fn snapshot(&self, mut buffers: Vec<Vec<u8>>) -> PartitionSnapshot {
        let live = self.checkpoint_bytes();
        let files = live
            .files
            .iter()
            .map(|&(name, live_bytes)| {
                let mut bytes = buffers.pop().unwrap_or_default();
                bytes.clear();
                bytes.extend_from_slice(live_bytes);
                (name.to_path_buf(), bytes)
            })
            .collect();
        PartitionSnapshot {
            index: live.index,
            heap_bytes: live.heap_bytes,
            meta_bytes: live.meta_bytes.to_vec(),
            files,
        }
    }

    /// Reads the checkpoint of partition `index` in `source` into memory and checks it
    /// (header checksum, file lengths, data checksum): one read per file, the checksum
    /// computed over each chunk as it arrives. Changes nothing on disk.
    pub(crate) fn load_checkpoint(
        source: &Path,
        index: u32,
    ) -> Result<LoadedCheckpoint, EngineError> {
        let meta_path = source.join(file_name(index, "meta"));
        let meta_bytes = fs::read(&meta_path).map_err(io_error("read", &meta_path))?;
        let header = check_meta_bytes(&meta_bytes, index, &meta_path, true)?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut load = |name: &str, length_bytes: u64| {
            let path = source.join(name);
            crate::arena::load_anonymous(&path, length_bytes, |chunk| hasher.update(chunk))
        };
        let heap = load(&file_name(index, "heap"), header.heap_bytes)?;
        let table = load(
            &file_name(index, &table_suffix(header.table_generation)),
            header.table_lines * LINE_BYTES as u64,
        )?;
        let old = if header.migrating == 1 {
            let name = file_name(index, &table_suffix(header.old_generation));
            Some(load(&name, header.old_lines * LINE_BYTES as u64)?)
        } else {
            None
        };
        if hasher.digest() != header.data_checksum {
            return Err(EngineError::Corrupted {
                path: source.to_path_buf(),
                offset: 0,
                reason: format!("checkpoint of partition {index}: data checksum mismatch"),
            });
        }
        Ok(LoadedCheckpoint {
            header,
            heap,
            table,
            old,
        })
    }

    /// Replaces this partition's counters with a loaded checkpoint's. The old data files
    /// are removed and the new arenas, under the checkpoint's names, get files only at
    /// their first write-back (the bytes stay in memory, as for every open partition,
    /// and as for a grown table); the header file on disk keeps `clean = 0` and is not
    /// written: a crash before the next clean close restores from the checkpoint again,
    /// which is still in place (the journal after it is kept until a newer one exists).
    /// On an error the partition is gone (its files mean nothing while it is open).
    pub(crate) fn restore(self, loaded: LoadedCheckpoint) -> Result<Partition, EngineError> {
        let Partition {
            index,
            directory,
            mut meta,
            was_clean,
            applied_lsn_at_open,
            damage,
            ..
        } = self;
        debug_assert_eq!(loaded.header.partition, index);
        remove_data_files(&directory, index)?;
        let header = loaded.header;
        let adopt = |name: String, map| ArenaFile::adopt(&directory.join(name), map);
        let heap = Heap::from_file(adopt(file_name(index, "heap"), loaded.heap))?;
        let table = Table::from_file(
            adopt(
                file_name(index, &table_suffix(header.table_generation)),
                loaded.table,
            ),
            header.table_lines,
        );
        let old = loaded.old.map(|map| {
            Table::from_file(
                adopt(file_name(index, &table_suffix(header.old_generation)), map),
                header.old_lines,
            )
        });
        meta.bytes_mut().fill(0);
        write_header(
            meta.bytes_mut(),
            &Meta {
                version: META_VERSION,
                clean: 0,
                data_checksum: 0,
                heap_checksum: 0,
                table_checksum: 0,
                old_checksum: 0,
                ..header
            },
        );
        Ok(Partition {
            index,
            directory,
            meta,
            table,
            old,
            heap,
            was_clean,
            applied_lsn_at_open,
            damage,
            _not_sync: std::marker::PhantomData,
        })
    }
}

/// A partition's checkpoint read into anonymous memory and verified, not yet attached
/// to files of the data directory (see [`Partition::restore`]).
#[derive(Debug)]
pub(crate) struct LoadedCheckpoint {
    header: Meta,
    heap: LoadedArena,
    table: LoadedArena,
    old: Option<LoadedArena>,
}

/// The first table's lines: 64 plus a per-partition offset spread over one growth step,
/// so that partitions filled at the same rate do not all grow (and hold two tables) at
/// the same moment. Example: partition 1 gets 64 + (41 % 64) * 10 / 64 = 70 lines.
fn initial_lines(index: u32) -> u64 {
    let growth_step_lines = TABLE_LINES_INITIAL * (GROWTH_PERCENT - 100) / 100;
    let lines = TABLE_LINES_INITIAL + (u64::from(index) * 41 % 64) * growth_step_lines / 64;
    lines.next_multiple_of(LINES_PER_BUCKET as u64)
}

/// The most counters a table of `slots` slots holds before it grows.
fn load_limit(slots: u64) -> u64 {
    slots * LOAD_MAX_PERCENT / 100
}

/// The line count of table `generation` of partition `index`, grown from `lines`: x1.15
/// give or take `GROWTH_JITTER_PERCENT` (a hash of both picks it), at least 8 lines more,
/// whole buckets. Example: 1000 lines, factor 1.13 gives 1130.
fn grown_lines(lines: u64, index: u32, generation: u64) -> u64 {
    let spread = 2 * GROWTH_JITTER_PERCENT + 1;
    let pick = (u64::from(index) << 32 | generation).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58;
    let percent = GROWTH_PERCENT - GROWTH_JITTER_PERCENT + pick % spread;
    (lines * percent)
        .div_ceil(100)
        .max(lines + 8)
        .next_multiple_of(LINES_PER_BUCKET as u64)
}

/// The key area of an external slot: the heap offset, then the first 8 key bytes.
fn external_key(offset: u64, probe: &KeyProbe) -> [u8; KEY_INLINE_BYTES_MAX] {
    let mut key = [0u8; KEY_INLINE_BYTES_MAX];
    key[..8].copy_from_slice(&offset.to_le_bytes());
    key[8..].copy_from_slice(&probe.padded[..8]);
    key
}

/// The value a fast-path update leaves before bounds: `operand` for a set, the
/// checked sum for an increment.
#[inline(always)]
fn resulting_value(current: i64, operand: i64, set: bool) -> Result<i64, OpError> {
    if set {
        Ok(operand)
    } else {
        current.checked_add(operand).ok_or(OpError::Overflow)
    }
}

/// `current + delta` checked against `bounds` as [`apply_bounds`] does, computed in 128
/// bits: a sum past i64's range still meets the bound it crossed (rejected, or clamped
/// to it), and only a direction without a bound overflows.
#[inline]
fn add_within_bounds(
    current: i64,
    delta: i64,
    bounds: Bounds,
    policy: BoundPolicy,
) -> Result<(i64, bool), OpError> {
    let sum = i128::from(current) + i128::from(delta);
    if let Some(floor) = bounds.floor.filter(|&f| sum < i128::from(f)) {
        return match policy {
            BoundPolicy::Reject => Err(OpError::BelowFloor { floor }),
            BoundPolicy::Clamp => Ok((floor, true)),
        };
    }
    if let Some(ceiling) = bounds.ceiling.filter(|&c| sum > i128::from(c)) {
        return match policy {
            BoundPolicy::Reject => Err(OpError::AboveCeiling { ceiling }),
            BoundPolicy::Clamp => Ok((ceiling, true)),
        };
    }
    i64::try_from(sum)
        .map(|value| (value, false))
        .map_err(|_| OpError::Overflow)
}

/// Checks `value` against `bounds`: rejected, or clamped with `policy == Clamp`.
#[inline]
fn apply_bounds(value: i64, bounds: Bounds, policy: BoundPolicy) -> Result<(i64, bool), OpError> {
    add_within_bounds(value, 0, bounds, policy)
}

/// What a checkpoint of one partition writes: its header and data files' bytes,
/// borrowed from the live partition (`Store::checkpoint_bytes`) or from a
/// [`PartitionSnapshot`].
pub struct CheckpointBytes<'a> {
    index: u32,
    heap_bytes: u64,
    /// The live header; [`CheckpointBytes::write_to`] writes it marked clean, with the
    /// data checksum.
    meta_bytes: &'a [u8],
    /// `(file name, bytes)` of every data file, in `Partition::files` order.
    files: Vec<(&'a Path, &'a [u8])>,
}

impl CheckpointBytes<'_> {
    /// The partition.
    pub fn partition(&self) -> u32 {
        self.index
    }

    /// Writes the checkpoint into `destination` (created if missing), removing stale
    /// files of this partition there: every data file, then the header (clean, with
    /// the checksum of the data files), each written and fdatasynced, then the
    /// directory synced. The header is written last, so a crash leaves no header that
    /// describes files not fully written.
    pub fn write_to(&self, destination: &Path) -> Result<(), EngineError> {
        fs::create_dir_all(destination).map_err(io_error("create directory", destination))?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (_, bytes) in &self.files {
            hasher.update(bytes);
        }
        let mut meta_bytes = self.meta_bytes.to_vec();
        let header = Meta {
            version: META_VERSION,
            clean: 1,
            heap_bytes: self.heap_bytes,
            data_checksum: hasher.digest(),
            heap_checksum: 0,
            table_checksum: 0,
            old_checksum: 0,
            ..read_header(&meta_bytes)
        };
        write_header(&mut meta_bytes, &header);
        seal_bytes(&mut meta_bytes);
        remove_partition_files(destination, self.index)?;
        for (name, bytes) in &self.files {
            write_synced(&destination.join(name), bytes)?;
        }
        write_synced(
            &destination.join(file_name(self.index, "meta")),
            &meta_bytes,
        )?;
        sync_directory(destination)
    }
}

/// A partition's checkpoint, copied into memory on its core (`Store::snapshot_partition`).
/// It owns its bytes, so it can be written on another thread while the core goes on
/// serving: the bytes are the partition as it was at the copy, whatever happens to it
/// after.
pub struct PartitionSnapshot {
    index: u32,
    heap_bytes: u64,
    meta_bytes: Vec<u8>,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl PartitionSnapshot {
    /// The copy, to write ([`CheckpointBytes::write_to`]).
    pub fn bytes(&self) -> CheckpointBytes<'_> {
        CheckpointBytes {
            index: self.index,
            heap_bytes: self.heap_bytes,
            meta_bytes: &self.meta_bytes,
            files: self
                .files
                .iter()
                .map(|(name, bytes)| (name.as_path(), bytes.as_slice()))
                .collect(),
        }
    }

    /// The snapshot's buffers, for the next `Store::snapshot_partition` to reuse: last
    /// file first, as that pops them, so each file gets the buffer it had (and its
    /// capacity) the last time.
    pub fn into_buffers(self) -> Vec<Vec<u8>> {
        self.files
            .into_iter()
            .rev()
            .map(|(_, bytes)| bytes)
            .collect()
    }
}

fn seal_bytes(bytes: &mut [u8]) {
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..META_CHECKSUM_OFFSET]);
    bytes[META_CHECKSUM_OFFSET..META_BYTES as usize].copy_from_slice(&checksum.to_le_bytes());
}

fn write_header(bytes: &mut [u8], header: &Meta) {
    assert!(bytes.len() >= std::mem::size_of::<Meta>());
    // SAFETY: the slice holds at least size_of::<Meta>() bytes and Meta is plain old data;
    // write_unaligned makes no alignment assumption.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<Meta>(), *header) };
}

fn seal_meta(meta: &mut ArenaFile) {
    seal_bytes(meta.bytes_mut());
}

fn read_header(bytes: &[u8]) -> Meta {
    assert!(bytes.len() >= std::mem::size_of::<Meta>());
    // SAFETY: the slice holds at least size_of::<Meta>() bytes and Meta is plain old data;
    // read_unaligned makes no alignment assumption.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Meta>()) }
}

fn check_meta(meta: &ArenaFile, index: u32) -> Result<Meta, EngineError> {
    check_meta_bytes(meta.bytes(), index, meta.path(), false)
}

/// Validates a header: magic, version, partition, and if clean (or `require_clean`) its
/// checksum and the ranges of its sizes.
fn check_meta_bytes(
    bytes: &[u8],
    index: u32,
    path: &Path,
    require_clean: bool,
) -> Result<Meta, EngineError> {
    let corrupted = |offset: u64, reason: String| EngineError::Corrupted {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    if bytes.len() != META_BYTES as usize {
        return Err(corrupted(
            0,
            format!("header is {} bytes, expected {META_BYTES}", bytes.len()),
        ));
    }
    let header = read_header(bytes);
    if &header.magic != META_MAGIC {
        return Err(corrupted(0, "bad partition header magic".into()));
    }
    if header.version == 1 {
        return Err(corrupted(
            8,
            format!(
                "partition header version 1 (this build reads {META_VERSION}): version 1 \
                 tables, from before cuckoo addressing, place counters elsewhere; run the \
                 tallyd that wrote this directory, or start a new one"
            ),
        ));
    }
    if header.version != META_VERSION && header.version != META_VERSION_UNCHECKED {
        // Any other number is damage (or a newer tallyd's file): never advise starting
        // over, which would throw every counter away.
        return Err(corrupted(
            8,
            format!(
                "partition header version {} is not one this build reads \
                 ({META_VERSION_UNCHECKED} or {META_VERSION}): the file is damaged, or was \
                 written by a newer tallyd. Do not delete the data directory: restore this \
                 file from a backup, or run the tallyd that wrote it",
                header.version
            ),
        ));
    }
    if header.partition != index {
        return Err(corrupted(
            12,
            format!("header of partition {} found for {index}", header.partition),
        ));
    }
    if header.clean == 1 || require_clean {
        let stored = u64::from_le_bytes(bytes[META_CHECKSUM_OFFSET..].try_into().expect("8 bytes"));
        if header.clean != 1 || stored != xxhash_rust::xxh3::xxh3_64(&bytes[..META_CHECKSUM_OFFSET])
        {
            return Err(corrupted(
                META_CHECKSUM_OFFSET as u64,
                "partition header checksum mismatch".into(),
            ));
        }
    }
    if header.clean != 1 {
        // An unclean partition is reopened empty and restored from its checkpoint: its
        // other fields describe files that are never read, so their damage (a crash
        // cannot be trusted to have left them whole) refuses nothing.
        return Ok(header);
    }
    let lines_valid = |lines: u64| {
        lines > 0 && lines <= TABLE_LINES_MAX && lines.is_multiple_of(LINES_PER_BUCKET as u64)
    };
    if !lines_valid(header.table_lines)
        || (header.migrating == 1
            && (!lines_valid(header.old_lines) || header.migrate_cursor > header.old_lines))
        || header.migrating > 1
        || header.heap_bytes < crate::heap::HEAP_HEADER_BYTES
    {
        return Err(corrupted(28, "partition header fields out of range".into()));
    }
    if header.applied_lsn >= LSN_LIMIT {
        return Err(corrupted(
            16,
            format!(
                "applied LSN {} is at or above 2^62, beyond any journal: continuing above \
                 it would wrap the LSNs; the header was crafted or damaged",
                header.applied_lsn
            ),
        ));
    }
    Ok(header)
}

/// The applied LSN recorded by the header of the checkpoint of partition `index` in
/// `source`, checked like [`Partition::load_checkpoint`] checks it (magic, version,
/// partition, checksum, field ranges); the data files are not read.
pub(crate) fn checkpoint_applied_lsn(source: &Path, index: u32) -> Result<u64, EngineError> {
    let meta_path = source.join(file_name(index, "meta"));
    let meta_bytes = fs::read(&meta_path).map_err(io_error("read", &meta_path))?;
    Ok(check_meta_bytes(&meta_bytes, index, &meta_path, true)?.applied_lsn)
}

/// Refuses to create partition `index`, whose header `meta_path` is missing, when the
/// data directory shows that the partition existed (see "Missing files" in the module
/// doc); the error names the header and the evidence. Reads directory listings only.
fn refuse_missing_header(
    directory: &Path,
    index: u32,
    meta_path: &Path,
) -> Result<(), EngineError> {
    let prefix = format!("p{index:05}.");
    let temporary_name = file_name(index, META_TEMPORARY_SUFFIX);
    let mut data_files = Vec::new();
    let mut creating = false;
    let entries = fs::read_dir(directory).map_err(io_error("list", directory))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", directory))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == temporary_name {
            creating = true;
        } else if name.starts_with(&prefix) {
            data_files.push(name);
        }
    }
    data_files.sort();
    let evidence = if !data_files.is_empty() && !creating {
        format!("its data files exist ({})", data_files.join(", "))
    } else if has_checkpoint(directory, index) {
        let checkpoint = checkpoint_path(directory, index);
        format!("its checkpoint {} exists", checkpoint.display())
    } else if let Some(segment) = released_journal_segment(directory, None)? {
        format!(
            "the journal segment {} does not start at LSN 1: the directory served and \
             checkpointed, and every partition had a header by then",
            segment.display()
        )
    } else {
        return Ok(());
    };
    Err(EngineError::Corrupted {
        path: meta_path.to_path_buf(),
        offset: 0,
        reason: format!(
            "the header of partition {index} is missing, but {evidence}; refusing to \
             create the partition again empty, which would lose its counters: restore \
             the header from a backup"
        ),
    })
}

/// Refuses to reopen partition `index`, not closed cleanly, empty when it has no
/// checkpoint but the journal's records before some point were released (see "Missing
/// files" in the module doc): its counters are then in no file the engine could
/// recover them from. Reads directory listings only, and only for a partition without a
/// checkpoint.
fn refuse_missing_checkpoint(directory: &Path, index: u32) -> Result<(), EngineError> {
    if has_checkpoint(directory, index) {
        return Ok(());
    }
    let Some(segment) = released_journal_segment(directory, Some(index))? else {
        return Ok(());
    };
    Err(EngineError::Corrupted {
        path: checkpoint_path(directory, index),
        offset: 0,
        reason: format!(
            "the checkpoint of partition {index} is missing, but the partition was not \
             closed cleanly and the journal segment {} does not start at LSN 1: records \
             before it were released once checkpoints covered them, so the checkpoint \
             is the only copy of this partition's counters; refusing to start it empty. \
             Restore the checkpoint directory from a backup",
            segment.display()
        ),
    })
}

/// Writes `file` back (see [`ArenaFile::write_back`]) and returns the xxh3 of its bytes,
/// computed over each chunk just before it is written.
fn write_back_checksummed(file: &ArenaFile) -> Result<u64, EngineError> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    file.write_back_inspected(|chunk| hasher.update(chunk))?;
    Ok(hasher.digest())
}

/// Opens the data file `path` of a clean partition and, if the header recorded its
/// checksum (`expected`), checks it over each chunk as it is read: a file changed since
/// the clean close (a flipped bit, an edit, another partition's file) is refused,
/// naming it, before any counter is served from it.
fn open_verified(
    path: &Path,
    length_bytes: u64,
    expected: Option<u64>,
) -> Result<ArenaFile, EngineError> {
    let Some(expected) = expected else {
        return ArenaFile::open(path, length_bytes);
    };
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let file = ArenaFile::open_inspected(path, length_bytes, |chunk| hasher.update(chunk))?;
    let found = hasher.digest();
    if found != expected {
        return Err(EngineError::Corrupted {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "data checksum mismatch: the file is not what the last clean close wrote \
                 (xxh3 {found:#018x}, the partition header records {expected:#018x})"
            ),
        });
    }
    Ok(file)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use std::io::Write;
    let mut file = fs::File::create(path).map_err(io_error("create", path))?;
    file.write_all(bytes).map_err(io_error("write", path))?;
    file.sync_data().map_err(io_error("fdatasync", path))
}

pub(crate) fn sync_directory(path: &Path) -> Result<(), EngineError> {
    fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", path))
}

/// Whether `error`, from opening a clean partition's data files, is damage to them (a
/// failed check, or a missing file) rather than a failure to read (permissions, I/O).
fn is_damage(error: &EngineError) -> bool {
    match error {
        EngineError::Corrupted { .. } => true,
        EngineError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Where `reopen_damaged` moves the data files it does not trust.
pub(crate) const DAMAGED_DIR: &str = "damaged";

/// Moves every file of partition `index` but its header from `directory` into
/// `directory/damaged/` (replacing files of the same name there), durably.
fn set_aside_data_files(directory: &Path, index: u32) -> Result<(), EngineError> {
    let target = directory.join(DAMAGED_DIR);
    fs::create_dir_all(&target).map_err(io_error("create directory", &target))?;
    let prefix = format!("p{index:05}.");
    let meta_name = file_name(index, "meta");
    let entries = fs::read_dir(directory).map_err(io_error("list", directory))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", directory))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name != meta_name {
            let path = entry.path();
            fs::rename(&path, target.join(&name)).map_err(io_error("set aside", &path))?;
        }
    }
    sync_directory(&target)?;
    sync_directory(directory)
}

/// Removes every file of partition `index` but its header from `directory`.
fn remove_data_files(directory: &Path, index: u32) -> Result<(), EngineError> {
    let meta_name = file_name(index, "meta");
    remove_files_where(directory, index, |name| name != meta_name)
}

/// Removes every file of partition `index` from `directory`.
pub(crate) fn remove_partition_files(directory: &Path, index: u32) -> Result<(), EngineError> {
    remove_files_where(directory, index, |_| true)
}

fn remove_files_where(
    directory: &Path,
    index: u32,
    remove: impl Fn(&str) -> bool,
) -> Result<(), EngineError> {
    let prefix = format!("p{index:05}.");
    let entries = fs::read_dir(directory).map_err(io_error("list", directory))?;
    for entry in entries {
        let entry = entry.map_err(io_error("list", directory))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && remove(&name) {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_padded_prefix_is_the_key_then_zeros() {
        let key: Vec<u8> = (1..=40).collect();
        for length in 0..=40 {
            let mut expected = [0u8; KEY_INLINE_BYTES_MAX];
            let taken = length.min(KEY_INLINE_BYTES_MAX);
            expected[..taken].copy_from_slice(&key[..taken]);
            assert_eq!(padded_prefix(&key[..length]), expected, "length {length}");
        }
    }

    fn add(partition: &mut Partition, key: &[u8], hash_high: u32) -> OpResult {
        let probe = KeyProbe::new(key, u64::from(hash_high) << 32);
        partition.apply(
            &Op::Add {
                key,
                delta: 1,
                policy: BoundPolicy::Reject,
            },
            &probe,
        )
    }

    fn exists(partition: &Partition, key: &[u8], hash_high: u32) -> bool {
        partition
            .get(&KeyProbe::new(key, u64::from(hash_high) << 32))
            .existed
    }

    /// Hashes whose home and alternate buckets are buckets 0 and 1 of `table`: more than
    /// eight of them leave no cuckoo path in it.
    fn clustered_hashes(table: &Table, count: usize) -> Vec<u32> {
        let wanted = [0, crate::index::SLOTS_PER_BUCKET];
        (0u32..)
            .map(|i| i.wrapping_mul(0x9e37_79b9))
            .filter(|&h| {
                let buckets = [table.home_position(h), table.alternate_position(h)];
                buckets == wanted || buckets == [wanted[1], wanted[0]]
            })
            .take(count)
            .collect()
    }

    #[test]
    fn a_cluster_with_no_cuckoo_path_is_rebuilt_into_a_bigger_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut partition = Partition::open(dir.path(), 0).unwrap();
        let hashes = clustered_hashes(&partition.table, 9);
        let generation = partition.table_generation_for_tests();
        for (index, &hash) in hashes.iter().enumerate() {
            let key = format!("clustered-{index}").into_bytes();
            assert!(add(&mut partition, &key, hash).is_ok(), "insert {index}");
        }
        assert!(
            partition.table_generation_for_tests() > generation,
            "rebuilt"
        );
        assert_eq!(partition.counter_count(), 9);
        for (index, &hash) in hashes.iter().enumerate() {
            let key = format!("clustered-{index}").into_bytes();
            assert!(exists(&partition, &key, hash), "counter {index} kept");
        }
    }

    /// A partition in `dir` holding the 8 keys `same-hash-0..8`, all of one 32-bit hash
    /// (returned): as many as a partition takes for one hash.
    fn partition_full_for_one_hash(dir: &Path) -> (Partition, u32) {
        let mut partition = Partition::open(dir, 0).unwrap();
        let hash = 0x1234_5678;
        for index in 0..8 {
            let key = format!("same-hash-{index}").into_bytes();
            assert!(add(&mut partition, &key, hash).is_ok());
        }
        (partition, hash)
    }

    #[test]
    fn a_ninth_key_sharing_one_hash_is_refused_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut partition, hash) = partition_full_for_one_hash(dir.path());
        let lines = partition.table.line_count();
        assert_eq!(
            add(&mut partition, b"same-hash-8", hash),
            Err(OpError::StorageFull)
        );
        assert_eq!(partition.counter_count(), 8);
        assert_eq!(partition.table.line_count(), lines, "no bigger table kept");
        for index in 0..8 {
            let key = format!("same-hash-{index}").into_bytes();
            assert!(exists(&partition, &key, hash));
        }
        assert!(!exists(&partition, b"same-hash-8", hash));
        // Other keys still go in.
        assert!(add(&mut partition, b"another", 0x8765_4321).is_ok());
    }

    /// A refused insert that needed an extension record (a key over 16 bytes, or bounds
    /// set on a missing key) leaves the heap as it was: repeating it costs nothing.
    #[test]
    fn a_refused_insert_needing_a_heap_record_leaves_the_heap_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (mut partition, hash) = partition_full_for_one_hash(dir.path());
        // One counter with a record already, so a leak would also show in a free list.
        let kept = b"a-long-key-that-is-kept-in-the-heap";
        assert!(add(&mut partition, kept, 0x8765_4321).is_ok());
        let usage = partition.heap.usage_for_tests();
        let lines = partition.table.line_count();
        let long = b"a-key-longer-than-sixteen-bytes-0";
        assert!(long.len() > KEY_INLINE_BYTES_MAX);
        let bounds = Bounds {
            floor: Some(0),
            ceiling: Some(10),
        };
        for attempt in 0..1000 {
            assert_eq!(
                add(&mut partition, long, hash),
                Err(OpError::StorageFull),
                "long key, attempt {attempt}"
            );
            let short = b"short-bounded";
            let probe = KeyProbe::new(short, u64::from(hash) << 32);
            let set_bounds = Op::SetBounds {
                key: short,
                floor: bounds.floor,
                ceiling: bounds.ceiling,
            };
            assert_eq!(
                partition.apply(&set_bounds, &probe),
                Err(OpError::StorageFull),
                "bounds on a missing key, attempt {attempt}"
            );
        }
        assert_eq!(
            partition.heap.usage_for_tests(),
            usage,
            "heap top, live bytes"
        );
        assert_eq!(partition.counter_count(), 9);
        assert_eq!(partition.table.line_count(), lines, "no bigger table kept");
        assert!(!exists(&partition, long, hash));
        assert!(exists(&partition, kept, 0x8765_4321));
    }
}
