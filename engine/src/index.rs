//! The index table: an open-addressing hash table of counter slots, living in an arena file.
//!
//! # Layout (little-endian), file `pNNNNN.tGGGGGGGG` (partition, table generation)
//!
//! The file is `line_count` lines of 64 bytes, each 64-byte aligned (the mapping is page
//! aligned and holds nothing else). A line holds two 32-byte slots:
//!
//! ```text
//! slot byte  field      meaning
//!  0..16     key        inline key, zero padded (key_len <= 16 and FLAG_EXTERNAL clear), or
//!                        0..8  u64 offset of the key's extension record in the key heap
//!                        8..16 the key's first 8 bytes, zero padded (a fast mismatch test)
//! 16..24     value      i64, the counter's value
//! 24..28     hash_high  u32, the top 32 bits of xxh3_64(key)
//! 28         key_len    u8, 1..=255
//! 29         kind       u8: 0 empty, 1 plain counter, 0xFF tombstone (see below);
//!                        2..=0xFE are reserved for later kinds (windowed, sharded, ...)
//! 30         flags      u8: bit 0 FLAG_EXTERNAL (key and bounds in the extension record)
//! 31         reserved   0
//! ```
//!
//! So a counter with a key of up to 16 bytes and no bounds costs exactly one 32-byte slot:
//! key, value and metadata in one cache line.
//!
//! # Addressing
//!
//! Lines pair up into 128-byte buckets of 4 slots (`line_count` is even). A key's home
//! bucket is `(hash_high * bucket_count) >> 32` ("fast range"), so the count need not be
//! a power of two and the table can grow by a small factor (see `partition`). The batch
//! pipeline prefetches both lines of the home bucket; each slot of the home bucket is tested
//! with one 64-bit compare of its metadata word (hash_high, key_len), without a branch per
//! slot (the increment fast path gathers the compares into a mask, and looks into the next
//! bucket too when the home one is full). Probing then continues linearly over slots,
//! wrapping at the end. Invariant (no tombstones): between a counter's home
//! slot `4 * home_bucket` and its slot there is no empty slot. Deletion keeps it by
//! backward shift. Tombstones appear only in the *old* table of a migration, where
//! entries must not move (positions below the migration cursor count as migrated); a
//! tombstone has `key_len` 0 and so never matches.
//!
//! Worked example: `line_count = 1000` (500 buckets), `hash_high = 0x8000_0000` gives home
//! bucket `0x8000_0000 * 500 >> 32 = 250`; probing visits slots 1000, 1001, 1002, ...
//!
//! Expected cost at the load limits (simulated, linear probing with 4-slot buckets): at
//! load 0.86, 81% of counters sit in their home bucket, 9% in the next one; the rest
//! further along, which costs extra cache misses the prefetch does not cover.

use std::mem::{align_of, size_of};
use std::path::Path;

use crate::arena::{ArenaFile, Prepared};
use crate::error::EngineError;

/// Bytes of one slot.
pub(crate) const SLOT_BYTES: usize = 32;
/// Bytes of one line (one cache line).
pub(crate) const LINE_BYTES: usize = 64;
/// Slots per line.
pub(crate) const SLOTS_PER_LINE: usize = 2;
/// Lines per bucket: a key's home is a 128-byte aligned pair of lines (4 slots), which
/// the CPU's adjacent-line prefetcher tends to fetch together.
pub(crate) const LINES_PER_BUCKET: usize = 2;
pub(crate) const SLOTS_PER_BUCKET: usize = SLOTS_PER_LINE * LINES_PER_BUCKET;
/// Longest key stored inline in the slot.
pub(crate) const KEY_INLINE_BYTES_MAX: usize = 16;
/// Most lines in one table: the fast-range mapping needs `line_count <= 2^32`.
pub(crate) const TABLE_LINES_MAX: u64 = 1 << 31;

pub(crate) const KIND_EMPTY: u8 = 0;
pub(crate) const KIND_PLAIN: u8 = 1;
pub(crate) const KIND_TOMBSTONE: u8 = 0xFF;

pub(crate) const FLAG_EXTERNAL: u8 = 1;

/// One counter slot; see the module doc for the byte layout.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) key: [u8; KEY_INLINE_BYTES_MAX],
    pub(crate) value: i64,
    pub(crate) hash_high: u32,
    pub(crate) key_len: u8,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) reserved: u8,
}

const _: () = assert!(size_of::<Slot>() == SLOT_BYTES);
const _: () = assert!(align_of::<Slot>() == SLOT_BYTES);
const _: () = assert!(SLOT_BYTES * SLOTS_PER_LINE == LINE_BYTES);
const _: () = assert!(std::mem::offset_of!(Slot, value) == 16);
const _: () = assert!(std::mem::offset_of!(Slot, hash_high) == 24);
const _: () = assert!(std::mem::offset_of!(Slot, key_len) == 28);
const _: () = assert!(std::mem::offset_of!(Slot, kind) == 29);
const _: () = assert!(std::mem::offset_of!(Slot, flags) == 30);

impl Slot {
    pub(crate) const EMPTY: Slot = Slot {
        key: [0; KEY_INLINE_BYTES_MAX],
        value: 0,
        hash_high: 0,
        key_len: 0,
        kind: KIND_EMPTY,
        flags: 0,
        reserved: 0,
    };

    /// Bytes 24..32 as one little-endian word: hash_high (bits 0..32), key_len (32..40),
    /// kind (40..48), flags (48..56).
    #[inline(always)]
    pub(crate) fn metadata_word(&self) -> u64 {
        // SAFETY: a Slot is 32 bytes, 32-byte aligned and plain old data; bytes 24..32 hold
        // hash_high, key_len, kind, flags, reserved (offsets asserted above), so an aligned
        // u64 read at offset 24 stays inside the slot.
        unsafe {
            std::ptr::from_ref(self)
                .cast::<u8>()
                .add(24)
                .cast::<u64>()
                .read()
        }
    }

    /// The 16 key bytes as two little-endian words.
    #[inline(always)]
    pub(crate) fn key_words(&self) -> [u64; 2] {
        key_words(&self.key)
    }

    /// Whether the slot holds a counter (not empty, not a tombstone).
    #[inline]
    pub(crate) fn is_live(&self) -> bool {
        self.kind != KIND_EMPTY && self.kind != KIND_TOMBSTONE
    }

    #[inline]
    pub(crate) fn is_external(&self) -> bool {
        self.flags & FLAG_EXTERNAL != 0
    }

    /// The heap offset of the extension record (only if external).
    #[inline]
    pub(crate) fn external_offset(&self) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.key[..8]);
        u64::from_le_bytes(bytes)
    }
}

/// Where a probe ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The key is at this slot position.
    Found(usize),
    /// The key is absent; this is the first empty slot of its probe sequence.
    Absent(usize),
    /// The key is absent and the probe met no empty slot (only in an old table).
    AbsentFull,
}

/// One index table, mapped from its file.
#[derive(Debug)]
pub(crate) struct Table {
    file: ArenaFile,
    line_count: u64,
    /// The next, grown table while the helper thread prepares it (see `partition`).
    successor: Option<Prepared>,
}

impl Table {
    pub(crate) fn create(path: &Path, line_count: u64) -> Result<Table, EngineError> {
        assert!(line_count > 0 && line_count <= TABLE_LINES_MAX);
        assert!(line_count.is_multiple_of(LINES_PER_BUCKET as u64));
        let file = ArenaFile::create(path, line_count * LINE_BYTES as u64)?;
        Ok(Table {
            file,
            line_count,
            successor: None,
        })
    }

    pub(crate) fn open(path: &Path, line_count: u64) -> Result<Table, EngineError> {
        assert!(line_count > 0 && line_count <= TABLE_LINES_MAX);
        let file = ArenaFile::open(path, line_count * LINE_BYTES as u64)?;
        Ok(Table {
            file,
            line_count,
            successor: None,
        })
    }

    /// Asks the helper thread to prepare this table's successor, `line_count` lines at
    /// `path`, with its pages faulted in (see `arena`), unless it already does.
    pub(crate) fn prepare_successor(&mut self, path: &Path, line_count: u64) {
        assert!(line_count > 0 && line_count <= TABLE_LINES_MAX);
        if self.successor.is_none() {
            self.successor = ArenaFile::prepare(path, line_count * LINE_BYTES as u64);
        }
    }

    pub(crate) fn has_successor(&self) -> bool {
        self.successor.is_some()
    }

    /// Bytes of the successor being prepared (0 if none).
    pub(crate) fn successor_bytes(&self) -> u64 {
        self.successor.as_ref().map_or(0, Prepared::length_bytes)
    }

    /// The prepared successor if it is ready and `line_count` lines long; `None` (and the
    /// preparation abandoned) otherwise.
    pub(crate) fn take_successor(&mut self, line_count: u64) -> Option<Table> {
        let file = self.successor.take()?.try_take()?;
        if file.length_bytes() != line_count * LINE_BYTES as u64 {
            file.discard();
            return None;
        }
        Some(Table {
            file,
            line_count,
            successor: None,
        })
    }

    pub(crate) fn line_count(&self) -> u64 {
        self.line_count
    }

    pub(crate) fn slot_count(&self) -> usize {
        self.line_count as usize * SLOTS_PER_LINE
    }

    pub(crate) fn file(&self) -> &ArenaFile {
        &self.file
    }

    pub(crate) fn into_file(self) -> ArenaFile {
        self.file
    }

    /// A table over an arena already in memory (restored from a checkpoint).
    pub(crate) fn from_file(file: ArenaFile, line_count: u64) -> Table {
        assert!(line_count > 0 && line_count <= TABLE_LINES_MAX);
        assert_eq!(file.length_bytes(), line_count * LINE_BYTES as u64);
        Table {
            file,
            line_count,
            successor: None,
        }
    }

    #[inline]
    pub(crate) fn slots(&self) -> &[Slot] {
        let bytes = self.file.bytes();
        debug_assert_eq!(bytes.len(), self.slot_count() * SLOT_BYTES);
        // SAFETY: the mapping is page aligned (>= 32), exactly `slot_count * 32` bytes long
        // (checked when the file was opened or created), and `Slot` is plain old data made
        // only of integers, so every bit pattern in the file is a valid `Slot`.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<Slot>(), self.slot_count()) }
    }

    #[inline]
    pub(crate) fn slots_mut(&mut self) -> &mut [Slot] {
        let slot_count = self.slot_count();
        let bytes = self.file.bytes_mut();
        debug_assert_eq!(bytes.len(), slot_count * SLOT_BYTES);
        // SAFETY: as in `slots`, and the `&mut self` borrow makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<Slot>(), slot_count) }
    }

    /// The first slot position of the home line of `hash_high`.
    #[inline]
    pub(crate) fn home_position(&self, hash_high: u32) -> usize {
        let bucket_count = self.line_count / LINES_PER_BUCKET as u64;
        let bucket = (u64::from(hash_high) * bucket_count) >> 32;
        bucket as usize * SLOTS_PER_BUCKET
    }

    /// Hints the CPU to fetch the home line of `hash_high` into the cache.
    #[inline]
    pub(crate) fn prefetch(&self, hash_high: u32) {
        let position = self.home_position(hash_high);
        let bucket = self.slots()[position..position + SLOTS_PER_BUCKET].as_ptr();
        prefetch_line(bucket.cast());
        // SAFETY: the bucket's second line lies inside the slice just taken.
        prefetch_line(unsafe { bucket.add(SLOTS_PER_LINE) }.cast());
    }

    /// The fast path of an increment: the position of the plain, inline counter with this hash, length
    /// and zero-padded key (as two little-endian words) in the home bucket or the next,
    /// or `None` if it is not there (it may still be further along, external, or absent).
    /// One 56-bit compare of the metadata word covers hash, length, kind and flags; two
    /// 64-bit compares cover the key.
    #[inline(always)]
    pub(crate) fn find_inline_near_home(
        &self,
        hash_high: u32,
        key_len: u8,
        key_words: [u64; 2],
    ) -> Option<usize> {
        let home = self.home_position(hash_high);
        let wanted =
            u64::from(hash_high) | (u64::from(key_len) << 32) | (u64::from(KIND_PLAIN) << 40);
        let slots = self.slots();
        let position = match Table::match_in_bucket(slots, home, wanted) {
            Some(position) => position,
            None => Table::match_in_next_bucket(slots, home, wanted)?,
        };
        (slots[position].key_words() == key_words).then_some(position)
    }

    /// The first slot of the bucket at `start` whose metadata word (hash, length, kind,
    /// flags) is `wanted`. Branch-free over the slots: where in its bucket a key sits is
    /// random, so a branch per slot would be mispredicted about once per increment.
    #[inline(always)]
    fn match_in_bucket(slots: &[Slot], start: usize, wanted: u64) -> Option<usize> {
        let bucket: &[Slot; SLOTS_PER_BUCKET] = slots
            .get(start..start + SLOTS_PER_BUCKET)?
            .try_into()
            .expect("buckets are whole");
        let mut mask = 0u32;
        for (index, slot) in bucket.iter().enumerate() {
            mask |= u32::from(slot.metadata_word() & 0xFF_FFFF_FFFF_FFFF == wanted) << index;
        }
        (mask != 0).then(|| start + mask.trailing_zeros() as usize)
    }

    /// `match_in_bucket` for the bucket after `home`, if the key can have overflowed into
    /// it (the home bucket has no empty slot).
    #[inline(never)]
    fn match_in_next_bucket(slots: &[Slot], home: usize, wanted: u64) -> Option<usize> {
        let home_full = slots
            .get(home..home + SLOTS_PER_BUCKET)?
            .iter()
            .all(|slot| slot.kind != KIND_EMPTY);
        if !home_full {
            return None;
        }
        Table::match_in_bucket(slots, home + SLOTS_PER_BUCKET, wanted)
    }

    /// Probes for a key: `matches` decides whether a live slot with the right hash and
    /// length holds the key.
    #[inline(always)]
    pub(crate) fn probe(
        &self,
        hash_high: u32,
        key_len: u8,
        matches: impl Fn(&Slot) -> bool,
    ) -> Probe {
        let slots = self.slots();
        let home = self.home_position(hash_high);
        match Table::probe_bucket(slots, home, hash_high, key_len, &matches) {
            Some(probe) => probe,
            None => Table::probe_beyond(slots, home, hash_high, key_len, &matches),
        }
    }

    /// Probing past the home bucket: linear over slots until the key or an empty slot.
    #[cold]
    #[inline(never)]
    fn probe_beyond(
        slots: &[Slot],
        home: usize,
        hash_high: u32,
        key_len: u8,
        matches: &impl Fn(&Slot) -> bool,
    ) -> Probe {
        let slot_count = slots.len();
        let mut position = (home + SLOTS_PER_BUCKET) % slot_count;
        for _ in 0..slot_count {
            let slot = &slots[position];
            if slot.kind == KIND_EMPTY {
                return Probe::Absent(position);
            }
            // A tombstone has key_len 0, so it never matches a key (1..=255 bytes).
            if slot.hash_high == hash_high && slot.key_len == key_len && matches(slot) {
                return Probe::Found(position);
            }
            position += 1;
            if position == slot_count {
                position = 0;
            }
        }
        Probe::AbsentFull
    }

    /// The common case, unrolled: the 4 slots of the home bucket, each tested with one
    /// 64-bit compare of its metadata word; `None` if the run continues past the bucket.
    #[inline(always)]
    fn probe_bucket(
        slots: &[Slot],
        home: usize,
        hash_high: u32,
        key_len: u8,
        matches: &impl Fn(&Slot) -> bool,
    ) -> Option<Probe> {
        let bucket: &[Slot; SLOTS_PER_BUCKET] = slots[home..home + SLOTS_PER_BUCKET]
            .try_into()
            .expect("buckets are whole");
        // Bytes 24..30 of a slot as one word: hash_high, key_len, kind. An empty slot or a
        // tombstone has key_len 0 and never equals `wanted` (keys are 1..=255 bytes).
        let wanted = u64::from(hash_high) | (u64::from(key_len) << 32);
        for (index, slot) in bucket.iter().enumerate() {
            let word = slot.metadata_word();
            if word & 0xFF_FFFF_FFFF == wanted && matches(slot) {
                return Some(Probe::Found(home + index));
            }
            if (word >> 40) as u8 == KIND_EMPTY {
                return Some(Probe::Absent(home + index));
            }
        }
        None
    }

    /// The first empty slot from the home line of `hash_high` (the table is never full:
    /// the partition keeps its load below 1).
    pub(crate) fn empty_position(&self, hash_high: u32) -> usize {
        let slots = self.slots();
        let mut position = self.home_position(hash_high);
        for _ in 0..slots.len() {
            if slots[position].kind == KIND_EMPTY {
                return position;
            }
            position = (position + 1) % slots.len();
        }
        panic!("index table full: the load limit was not kept");
    }

    /// Removes the counter at `hole` by backward shift: later entries of the same probe
    /// run move back so that no probe sequence crosses an empty slot.
    pub(crate) fn remove_shifting(&mut self, mut hole: usize) {
        let slot_count = self.slot_count();
        let mut next = hole;
        loop {
            next = (next + 1) % slot_count;
            let slot = self.slots()[next];
            if slot.kind == KIND_EMPTY {
                break;
            }
            debug_assert_ne!(slot.kind, KIND_TOMBSTONE);
            let home = self.home_position(slot.hash_high);
            let distance_to_hole = (hole + slot_count - home) % slot_count;
            let distance_to_next = (next + slot_count - home) % slot_count;
            if distance_to_hole < distance_to_next {
                self.slots_mut()[hole] = slot;
                hole = next;
            }
        }
        self.slots_mut()[hole] = Slot::EMPTY;
    }

    /// Marks the counter at `position` deleted without moving anything (old table only).
    pub(crate) fn remove_tombstone(&mut self, position: usize) {
        let slot = &mut self.slots_mut()[position];
        *slot = Slot::EMPTY;
        slot.kind = KIND_TOMBSTONE;
    }
}

/// 16 key bytes as two little-endian words (compiles to two loads).
#[inline(always)]
pub(crate) fn key_words(bytes: &[u8; KEY_INLINE_BYTES_MAX]) -> [u64; 2] {
    let (low, high) = bytes.split_at(8);
    [
        u64::from_le_bytes(low.try_into().expect("8 bytes")),
        u64::from_le_bytes(high.try_into().expect("8 bytes")),
    ]
}

/// Hints the CPU to fetch the cache line at `pointer`.
#[inline(always)]
pub(crate) fn prefetch_line(pointer: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and never reads into the program,
    // whatever the address; `pointer` moreover points into a live mapping.
    unsafe {
        core::arch::x86_64::_mm_prefetch(pointer.cast::<i8>(), core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = pointer;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(hash_high: u32, value: i64) -> Slot {
        Slot {
            hash_high,
            value,
            key_len: 1,
            kind: KIND_PLAIN,
            ..Slot::EMPTY
        }
    }

    #[test]
    fn backward_shift_keeps_probe_runs_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = Table::create(&dir.path().join("t"), 4).unwrap();
        // Four counters with the same home line (line 0) fill slots 0..4.
        for value in 0..4 {
            let position = table.empty_position(0);
            table.slots_mut()[position] = slot(0, value);
        }
        assert_eq!(table.slots()[3].value, 3);
        table.remove_shifting(1);
        let values: Vec<i64> = table.slots()[..3].iter().map(|s| s.value).collect();
        assert_eq!(values, vec![0, 2, 3]);
        assert_eq!(table.slots()[3].kind, KIND_EMPTY);
        assert_eq!(table.probe(0, 1, |s| s.value == 3), Probe::Found(2));
    }

    #[test]
    fn wrapped_entry_shifts_back_across_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = Table::create(&dir.path().join("t"), 4).unwrap();
        let last_bucket_hash = u32::MAX; // home bucket 1 of 2: slots 4..8
        assert_eq!(table.home_position(last_bucket_hash), 4);
        for value in 0..5 {
            let position = table.empty_position(last_bucket_hash);
            table.slots_mut()[position] = slot(last_bucket_hash, value);
        }
        assert_eq!(table.slots()[0].value, 4); // wrapped
        table.remove_shifting(4);
        let values: Vec<i64> = table.slots()[4..8].iter().map(|s| s.value).collect();
        assert_eq!(values, vec![1, 2, 3, 4]);
        assert_eq!(table.slots()[0].kind, KIND_EMPTY);
        let found = table.probe(last_bucket_hash, 1, |s| s.value == 4);
        assert_eq!(found, Probe::Found(7));
    }
}
