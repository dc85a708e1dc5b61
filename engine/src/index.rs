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
//! 29         kind       u8: 0 empty, 1 plain counter; 2..=0xFF are reserved for later
//!                        kinds (windowed, sharded, ...)
//! 30         flags      u8: bit 0 FLAG_EXTERNAL (key and bounds in the extension record)
//! 31         reserved   0
//! ```
//!
//! So a counter with a key of up to 16 bytes and no bounds costs exactly one 32-byte slot:
//! key, value and metadata in one cache line.
//!
//! # Addressing (bucketized cuckoo hashing)
//!
//! Lines pair up into 128-byte buckets of 4 slots (`line_count` is even). A counter
//! lives in one of two buckets of its hash: its home bucket
//! `(hash_high * bucket_count) >> 32` ("fast range", so the count need not be a power of
//! two and the table can grow by a small factor, see `partition`), or its alternate
//! bucket, the fast range of `hash_high` remixed (the bucket after the home one if the
//! two coincide). Both depend only on `hash_high` and the bucket count, so a counter's
//! slot alone says where else it may go.
//!
//! Invariant: every counter is in its home or its alternate bucket. So a lookup reads at
//! most two buckets (four lines) whatever the load, and the absence of a key is known
//! after them; an empty slot ends nothing, deletion just empties the slot, and nothing
//! else moves. An insert takes an empty slot of the home bucket, else of the alternate,
//! else moves counters to their other bucket along the shortest path to a bucket with an
//! empty slot (`Table::make_room`, breadth first); if there is none the partition
//! rebuilds its index into a bigger table (`partition`).
//!
//! The batch pipeline prefetches the home bucket of each key ahead of time and tests
//! its 4 slots' metadata words (hash_high, key_len, kind) at once (SSE2 on x86-64, a
//! compare per slot elsewhere), without a branch per slot; a counter not at home is
//! looked for in its alternate bucket a few operations later, once that has been
//! prefetched too (see `store`).
//! Inserts fill home buckets first, so most counters are at home: 79.5% at 10M counters.
//!
//! Worked example: `line_count = 1000` (500 buckets), `hash_high = 0x8000_0000` gives home
//! bucket `0x8000_0000 * 500 >> 32 = 250`, slots 1000..1004.

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
/// Most buckets one `Table::make_room` search visits.
const CUCKOO_BUCKETS_MAX: usize = 256;
/// The alternate bucket's remix of the hash (see `Table::alternate_position`).
const ALTERNATE_SEED: u64 = 0x5851_f42d_4c95_7f2d;
const ALTERNATE_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

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

/// Bits per slot in the mask `bucket_matches` returns.
#[cfg(target_arch = "x86_64")]
const MATCH_BITS_PER_SLOT: u32 = 2;
#[cfg(not(target_arch = "x86_64"))]
const MATCH_BITS_PER_SLOT: u32 = 1;

/// Which slots of a bucket have metadata bytes 24..30 (hash_high, key_len, kind) equal to
/// `wanted`'s low 48 bits: slot `i` matches iff bit `i * MATCH_BITS_PER_SLOT` is set, and
/// no other bit is. On x86-64 the four metadata words are compared at once with SSE2 (part
/// of the x86-64 baseline): half the instructions of a compare per slot, and no branch
/// either way.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn bucket_matches(slots: &[Slot; SLOTS_PER_BUCKET], wanted: u64) -> u32 {
    use std::arch::x86_64::{
        _mm_and_si128, _mm_castsi128_ps, _mm_cmpeq_epi32, _mm_load_si128, _mm_movemask_ps,
        _mm_set1_epi64x, _mm_unpackhi_epi64,
    };
    const _: () = assert!(SLOTS_PER_BUCKET == 4);
    let base = slots.as_ptr().cast::<u8>();
    // SAFETY: SSE2 is always present on x86-64. Each load reads bytes 16..32 of one of
    // the four slots (value, then the metadata word), inside the borrowed array, and is
    // 16-byte aligned because slots are 32-byte aligned (asserted above).
    unsafe {
        let load = |slot: usize| _mm_load_si128(base.add(slot * SLOT_BYTES + 16).cast());
        // The metadata words (the high half of each load) of slots 0 and 1, 2 and 3.
        let low = _mm_unpackhi_epi64(load(0), load(1));
        let high = _mm_unpackhi_epi64(load(2), load(3));
        let mask = _mm_set1_epi64x(0xFFFF_FFFF_FFFF);
        let wanted = _mm_set1_epi64x(wanted as i64);
        // Equal 32-bit halves, one bit each: slot i's word matches iff bits 2i and 2i+1
        // are both set.
        let halves = |words| {
            _mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(
                _mm_and_si128(words, mask),
                wanted,
            )))
        };
        let bits = (halves(low) | halves(high) << 4) as u32;
        bits & (bits >> 1) & 0b0101_0101
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn bucket_matches(slots: &[Slot; SLOTS_PER_BUCKET], wanted: u64) -> u32 {
    let mut matching = 0u32;
    for (index, slot) in slots.iter().enumerate() {
        matching |= u32::from(slot.metadata_word() & 0xFFFF_FFFF_FFFF == wanted) << index;
    }
    matching
}

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

    /// Whether the slot holds a counter.
    #[inline]
    pub(crate) fn is_live(&self) -> bool {
        self.kind != KIND_EMPTY
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

/// What the increment fast path compares in a slot (see `Table::find_plain`): the top
/// half of the key's hash, its length, and its first 16 bytes, zero padded, as two
/// little-endian words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PlainKey {
    pub(crate) hash_high: u32,
    pub(crate) key_len: u8,
    pub(crate) key_words: [u64; 2],
}

/// What one bucket tells the increment fast path (see `Table::find_plain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InBucket {
    /// The counter is at this slot position, with its whole key in the slot.
    Found(usize),
    /// A counter with the key's first bytes is at this slot position; the rest of its
    /// key, and its bounds, are in the heap.
    External(usize),
    /// The bucket is full and does not hold it: it may be in the bucket starting here.
    Next(usize),
    /// The fast path cannot tell: the counter is absent, or another key shares its hash,
    /// length and first bytes. The general path decides.
    Elsewhere,
}

/// One index table, mapped from its file.
#[derive(Debug)]
pub(crate) struct Table {
    file: ArenaFile,
    line_count: u64,
    /// The next, grown table while the helper thread prepares it (see `partition`).
    successor: Option<Prepared>,
    /// Scratch for `make_room`'s search, kept so an insert does not allocate it each time.
    search: Vec<SearchNode>,
}

/// A bucket `make_room` reached: (its first slot, the node it was reached from, the
/// slot of that node's bucket whose counter would move into this bucket).
type SearchNode = (usize, usize, usize);

impl Table {
    pub(crate) fn create(path: &Path, line_count: u64) -> Result<Table, EngineError> {
        assert!(line_count > 0 && line_count <= TABLE_LINES_MAX);
        assert!(line_count.is_multiple_of(LINES_PER_BUCKET as u64));
        let file = ArenaFile::create(path, line_count * LINE_BYTES as u64)?;
        Ok(Table {
            file,
            line_count,
            successor: None,
            search: Vec::new(),
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

    /// Whether the helper thread is still preparing the successor.
    pub(crate) fn successor_pending(&mut self) -> bool {
        self.successor.as_mut().is_some_and(Prepared::is_pending)
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
            search: Vec::new(),
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
            search: Vec::new(),
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

    fn bucket_count(&self) -> u64 {
        self.line_count / LINES_PER_BUCKET as u64
    }

    /// The bucket index of a 32-bit value by fast range: `value * bucket_count / 2^32`.
    #[inline]
    fn fast_range(&self, value: u64) -> u64 {
        (value * self.bucket_count()) >> 32
    }

    /// The first slot of the home bucket of `hash_high`: fast range of the hash.
    #[inline]
    pub(crate) fn home_position(&self, hash_high: u32) -> usize {
        self.fast_range(u64::from(hash_high)) as usize * SLOTS_PER_BUCKET
    }

    /// The first slot of the alternate bucket of `hash_high`: fast range of the hash
    /// remixed, and the bucket after the home one if that lands on the home one (so a
    /// counter always has two distinct buckets, but in a one-bucket table).
    #[cfg(test)]
    pub(crate) fn alternate_position(&self, hash_high: u32) -> usize {
        self.alternate_of(hash_high, self.home_position(hash_high))
    }

    /// `alternate_position` of `hash_high`, whose home bucket starts at slot `home`.
    #[inline]
    fn alternate_of(&self, hash_high: u32, home: usize) -> usize {
        let mixed = (u64::from(hash_high) ^ ALTERNATE_SEED).wrapping_mul(ALTERNATE_MULTIPLIER);
        let mut bucket = self.fast_range(mixed >> 32);
        if bucket as usize * SLOTS_PER_BUCKET == home {
            bucket = (bucket + 1) % self.bucket_count();
        }
        bucket as usize * SLOTS_PER_BUCKET
    }

    /// The bucket of `hash_high` that is not the one starting at `bucket`.
    #[inline]
    fn other_position(&self, hash_high: u32, bucket: usize) -> usize {
        let home = self.home_position(hash_high);
        if home == bucket {
            self.alternate_of(hash_high, home)
        } else {
            home
        }
    }

    /// Hints the CPU to fetch the home bucket of `hash_high` into the cache.
    #[inline]
    pub(crate) fn prefetch(&self, hash_high: u32) {
        self.prefetch_bucket(self.home_position(hash_high));
    }

    /// Hints the CPU to fetch both lines of the bucket starting at slot `start` (a
    /// multiple of `SLOTS_PER_BUCKET`; nothing happens past the end).
    #[inline]
    pub(crate) fn prefetch_bucket(&self, start: usize) {
        if let Some(bucket) = self.slots().get(start..start + SLOTS_PER_BUCKET) {
            let first = bucket.as_ptr();
            prefetch_line(first.cast());
            prefetch_line(bucket[SLOTS_PER_LINE..].as_ptr().cast());
        }
    }

    /// The fast path of an increment, one bucket at a time: looks for the plain counter
    /// with this hash, length and zero-padded first 16 key bytes (as two little-endian
    /// words) in its home bucket (`bucket` `None`) or in the bucket starting at slot
    /// `bucket` (its alternate one). One compare of each slot's metadata word covers
    /// hash, length and kind (not the external flag), gathered into a mask without a
    /// branch per slot (where in its bucket a key sits is random, so a branch per slot
    /// would be mispredicted about once per increment). An inline slot is then checked
    /// with two 64-bit compares of the key (`Found`); an external one (a long key, or
    /// bounds) only by the key's first 8 bytes, kept in the slot (`External`: the caller
    /// compares the whole key in the heap). Not at home, the answer is the alternate
    /// bucket (`Next`); not there either, or another key with the same hash, length and
    /// first bytes, `Elsewhere`: the general path sorts that out.
    #[inline(always)]
    pub(crate) fn find_plain(&self, bucket: Option<usize>, key: &PlainKey) -> InBucket {
        let PlainKey {
            hash_high,
            key_len,
            key_words,
        } = *key;
        // Bytes 24..30 of the metadata word (hash_high, key_len, kind); the flags byte is
        // tested after the match.
        let wanted =
            u64::from(hash_high) | (u64::from(key_len) << 32) | (u64::from(KIND_PLAIN) << 40);
        let start = bucket.unwrap_or_else(|| self.home_position(hash_high));
        let slots = self.slots();
        let Some(slots_here) = slots.get(start..start + SLOTS_PER_BUCKET) else {
            return InBucket::Elsewhere;
        };
        let slots_here: &[Slot; SLOTS_PER_BUCKET] =
            slots_here.try_into().expect("buckets are whole");
        let matching = bucket_matches(slots_here, wanted);
        if matching == 0 {
            return match bucket {
                None => InBucket::Next(self.alternate_of(hash_high, start)),
                Some(_) => InBucket::Elsewhere,
            };
        }
        let position = start + (matching.trailing_zeros() / MATCH_BITS_PER_SLOT) as usize;
        let slot = &slots[position];
        match slot.flags {
            0 if slot.key_words() == key_words => InBucket::Found(position),
            FLAG_EXTERNAL if slot.key_words()[1] == key_words[0] => InBucket::External(position),
            _ => InBucket::Elsewhere,
        }
    }

    /// The position of a key, looked for in its two buckets: `matches` decides whether
    /// a live slot with the right hash and length holds the key.
    #[inline(always)]
    pub(crate) fn probe(
        &self,
        hash_high: u32,
        key_len: u8,
        matches: impl Fn(&Slot) -> bool,
    ) -> Option<usize> {
        let slots = self.slots();
        // Bytes 24..29 of a slot: hash_high, key_len. An empty slot has key_len 0 and
        // never equals `wanted` (keys are 1..=255 bytes).
        let wanted = u64::from(hash_high) | (u64::from(key_len) << 32);
        let in_bucket = |start: usize| {
            (start..start + SLOTS_PER_BUCKET).find(|&position| {
                let slot = &slots[position];
                slot.metadata_word() & 0xFF_FFFF_FFFF == wanted && matches(slot)
            })
        };
        let home = self.home_position(hash_high);
        in_bucket(home).or_else(|| in_bucket(self.alternate_of(hash_high, home)))
    }

    /// The first empty slot of the bucket starting at `start`.
    #[inline]
    fn empty_in_bucket(&self, start: usize) -> Option<usize> {
        (start..start + SLOTS_PER_BUCKET)
            .find(|&position| self.slots()[position].kind == KIND_EMPTY)
    }

    /// Makes room for a counter of hash `hash_high` and returns a free slot: in its
    /// home bucket if it has one, else in its alternate bucket, else one of them is
    /// emptied by moving counters along the shortest cuckoo path (breadth first, at most
    /// `CUCKOO_BUCKETS_MAX` buckets visited, each once) to a bucket with an empty slot:
    /// each moved counter goes to its other bucket, the last one first, so every counter
    /// is in one of its buckets at every step. After moves, the slot returned still
    /// holds a copy of the last counter moved out of it: the caller writes its counter
    /// there, or empties it. `None` if no path was found: the table is too full (the
    /// partition then grows).
    pub(crate) fn make_room(&mut self, hash_high: u32) -> Option<usize> {
        let home = self.home_position(hash_high);
        let alternate = self.alternate_of(hash_high, home);
        if let Some(position) = self.empty_in_bucket(home) {
            return Some(position);
        }
        if let Some(position) = self.empty_in_bucket(alternate) {
            return Some(position);
        }
        let mut nodes = std::mem::take(&mut self.search);
        nodes.clear();
        let found = self.search_path(&mut nodes, home, alternate);
        self.search = nodes;
        found
    }

    /// `make_room`'s breadth-first search over buckets from `home` and `alternate` (both
    /// full), moving the counters along the first path found to a bucket with an empty
    /// slot; the emptied slot of `home` or `alternate`, or `None`.
    fn search_path(
        &mut self,
        nodes: &mut Vec<SearchNode>,
        home: usize,
        alternate: usize,
    ) -> Option<usize> {
        nodes.push((home, usize::MAX, 0));
        if alternate != home {
            nodes.push((alternate, usize::MAX, 0));
        }
        let mut head = 0;
        while head < nodes.len() {
            let (bucket, ..) = nodes[head];
            for index in 0..SLOTS_PER_BUCKET {
                if nodes.len() == CUCKOO_BUCKETS_MAX {
                    return None;
                }
                let other = self.other_position(self.slots()[bucket + index].hash_high, bucket);
                if nodes.iter().any(|&(visited, ..)| visited == other) {
                    continue;
                }
                nodes.push((other, head, index));
                if let Some(mut hole) = self.empty_in_bucket(other) {
                    let mut node = nodes.len() - 1;
                    loop {
                        let (_, parent, index) = nodes[node];
                        if parent == usize::MAX {
                            return Some(hole);
                        }
                        let from = nodes[parent].0 + index;
                        let slots = self.slots_mut();
                        slots[hole] = slots[from];
                        hole = from;
                        node = parent;
                    }
                }
            }
            head += 1;
        }
        None
    }

    /// Empties the slot at `position`. Lookups look in both buckets of a key whatever
    /// their other slots hold, so nothing else moves.
    pub(crate) fn remove(&mut self, position: usize) {
        self.slots_mut()[position] = Slot::EMPTY;
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

    /// `bucket_matches` against a compare per slot, over buckets whose slots differ
    /// from the wanted metadata in one field or none (the flags and reserved bytes, which
    /// must not matter, set at random).
    #[test]
    fn bucket_matches_agrees_with_a_compare_per_slot() {
        use proptest::prelude::*;
        let slot = (any::<u32>(), any::<u8>(), 0u8..3, any::<u8>(), any::<u8>());
        let wanted = (any::<u32>(), any::<u8>());
        let copies = proptest::array::uniform4(0u8..4);
        proptest!(|(slots in proptest::array::uniform4(slot), wanted in wanted, copy in copies)| {
            let (hash_high, key_len) = wanted;
            let mut bucket = [Slot::EMPTY; SLOTS_PER_BUCKET];
            for (index, (hash, len, kind, flags, reserved)) in slots.into_iter().enumerate() {
                // Half the time a slot takes the wanted hash, length or both.
                bucket[index] = Slot {
                    hash_high: if copy[index] & 1 == 0 { hash_high } else { hash },
                    key_len: if copy[index] & 2 == 0 { key_len } else { len },
                    kind,
                    flags,
                    reserved,
                    ..Slot::EMPTY
                };
            }
            let wanted_word =
                u64::from(hash_high) | u64::from(key_len) << 32 | u64::from(KIND_PLAIN) << 40;
            let mut expected = 0u32;
            for (index, slot) in bucket.iter().enumerate() {
                let equal = slot.hash_high == hash_high
                    && slot.key_len == key_len
                    && slot.kind == KIND_PLAIN;
                expected |= u32::from(equal) << (index as u32 * MATCH_BITS_PER_SLOT);
            }
            prop_assert_eq!(bucket_matches(&bucket, wanted_word), expected);
        });
    }

    fn slot(hash_high: u32, value: i64) -> Slot {
        Slot {
            hash_high,
            value,
            key_len: 1,
            kind: KIND_PLAIN,
            ..Slot::EMPTY
        }
    }

    /// Spread 32-bit hashes, as xxh3's top half would be.
    fn hash_of(value: i64) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(&value.to_le_bytes()) >> 32) as u32
    }

    fn in_one_of_its_buckets(table: &Table, position: usize) -> bool {
        let hash_high = table.slots()[position].hash_high;
        let bucket = position - position % SLOTS_PER_BUCKET;
        bucket == table.home_position(hash_high) || bucket == table.alternate_position(hash_high)
    }

    #[test]
    fn a_nearly_full_table_keeps_every_counter_in_one_of_its_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let lines = 512;
        let mut table = Table::create(&dir.path().join("t"), lines).unwrap();
        let target = table.slot_count() * 95 / 100;
        let mut placed = 0;
        for value in 0..target as i64 {
            let hash_high = hash_of(value);
            let Some(position) = table.make_room(hash_high) else {
                break;
            };
            table.slots_mut()[position] = slot(hash_high, value);
            placed += 1;
        }
        assert_eq!(placed, target, "cuckoo paths fill 4-slot buckets to 95%");
        let mut at_home = 0;
        for value in 0..placed as i64 {
            let hash_high = hash_of(value);
            let position = table
                .probe(hash_high, 1, |s| s.value == value)
                .unwrap_or_else(|| panic!("counter {value} lost"));
            assert!(in_one_of_its_buckets(&table, position));
            at_home += usize::from(
                position / SLOTS_PER_BUCKET * SLOTS_PER_BUCKET == table.home_position(hash_high),
            );
        }
        assert!(
            at_home > placed / 2,
            "home buckets fill first: {at_home} of {placed}"
        );
    }

    #[test]
    fn removal_empties_only_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = Table::create(&dir.path().join("t"), 8).unwrap();
        let hash_high = 7;
        for value in 0..8 {
            let position = table.make_room(hash_high).unwrap();
            table.slots_mut()[position] = slot(hash_high, value);
        }
        // Eight counters of one hash fill both its buckets; a ninth finds no room.
        assert_eq!(table.make_room(hash_high), None);
        let third = table.probe(hash_high, 1, |s| s.value == 3).unwrap();
        table.remove(third);
        assert_eq!(table.probe(hash_high, 1, |s| s.value == 3), None);
        for value in (0..8).filter(|&v| v != 3) {
            assert!(table.probe(hash_high, 1, |s| s.value == value).is_some());
        }
        assert_eq!(table.make_room(hash_high), Some(third));
    }

    #[test]
    fn the_alternate_bucket_differs_from_the_home_one() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::create(&dir.path().join("t"), 6).unwrap();
        for value in 0..1000 {
            let hash_high = hash_of(value);
            assert_ne!(
                table.home_position(hash_high),
                table.alternate_position(hash_high)
            );
            assert!(table.alternate_position(hash_high) < table.slot_count());
        }
    }
}
