//! The key heap: extension records for counters whose key does not fit inline in the slot
//! (longer than 16 bytes) or that carry bounds.
//!
//! # Layout (little-endian), file `pNNNNN.heap`
//!
//! ```text
//! byte      field         meaning
//!   0..8    magic         b"TALLYHP1"
//!   8..16   top           u64, offset of the first never-allocated byte
//!  16..24   live_bytes    u64, bytes in allocated records (statistics)
//!  24..32   reserved      0
//!  32..184  free_heads    19 x u64: head of the free list of each size class (0 = empty)
//! 184..256  reserved      0
//! 256..top  records
//! ```
//!
//! An extension record starts at a 16-byte aligned offset and is `16 * class` bytes long,
//! `class = ceil((24 + key_len) / 16)`, so 2..=18:
//!
//! ```text
//! byte       field     meaning
//!  0         key_len   u8, 1..=255 (0 in a free record)
//!  1         bounds    u8: bit 0 floor present, bit 1 ceiling present
//!  2         class     u8, the record's size class (2..=18; in a live record the
//!                      class its key_len needs)
//!  3..8      reserved  0
//!  8..16     floor     i64 (meaningful if bit 0); in a free record: u64 next free offset
//! 16..24     ceiling   i64 (meaningful if bit 1)
//! 24..       key       key_len bytes
//! ```
//!
//! Freed records go to the free list of their class and are reused first, so deleting and
//! re-inserting long keys does not grow the file. The file grows by a quarter (at least
//! 64 KiB) when `top` would pass its end: an `ftruncate` and a remap, no copy.
//!
//! Every record is checked as it is read from the bytes: its offset must be aligned and
//! the record wholly below `top`, its class byte a class, and for a live record the class
//! its key length needs. A record that fails (only possible in a torn arena after a crash,
//! which recovery replaces by a checkpoint, or in a heap opened without a data checksum)
//! reads as `None` and is not freed, and a free list head that is not a free record of
//! its class is not reused (the record comes from `top`). So damage never panics, and a
//! free or an allocation never writes past `top` nor to a header byte other than a free
//! list head of a class. Not detected: an offset into another record whose bytes happen
//! to read as a record header (only the data checksum catches that).

use std::path::Path;

use crate::arena::ArenaFile;
use crate::error::{EngineError, OpError};

pub(crate) const HEAP_HEADER_BYTES: u64 = 256;
pub(crate) const HEAP_BYTES_INITIAL: u64 = 4096;
const HEAP_MAGIC: &[u8; 8] = b"TALLYHP1";
const RECORD_ALIGN_BYTES: u64 = 16;
const RECORD_HEADER_BYTES: usize = 24;
const CLASS_COUNT: usize = 19;
/// The class of a one-byte key, the smallest record.
const CLASS_MIN: usize = class_of(1);
const HEAP_GROWTH_BYTES_MIN: u64 = 64 * 1024;
/// Largest heap file; offsets must fit the slot's u64 and a record must stay addressable.
pub(crate) const HEAP_BYTES_MAX: u64 = 1 << 40;

const _: () = assert!(32 + 8 * CLASS_COUNT as u64 <= HEAP_HEADER_BYTES);
const _: () = assert!(
    (RECORD_HEADER_BYTES + crate::KEY_BYTES_MAX).div_ceil(RECORD_ALIGN_BYTES as usize)
        < CLASS_COUNT
);
const _: () = assert!(HEAP_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));

pub(crate) const BOUND_FLOOR: u8 = 1;
pub(crate) const BOUND_CEILING: u8 = 2;

/// The decoded contents of an extension record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) floor: Option<i64>,
    pub(crate) ceiling: Option<i64>,
}

impl Bounds {
    pub(crate) const NONE: Bounds = Bounds {
        floor: None,
        ceiling: None,
    };
}

const fn class_of(key_len: usize) -> usize {
    (RECORD_HEADER_BYTES + key_len).div_ceil(RECORD_ALIGN_BYTES as usize)
}

/// The key heap of one partition.
#[derive(Debug)]
pub(crate) struct Heap {
    file: ArenaFile,
}

impl Heap {
    pub(crate) fn create(path: &Path) -> Result<Heap, EngineError> {
        let mut file = ArenaFile::create(path, HEAP_BYTES_INITIAL)?;
        file.bytes_mut()[..8].copy_from_slice(HEAP_MAGIC);
        let mut heap = Heap { file };
        heap.set_u64(8, HEAP_HEADER_BYTES);
        Ok(heap)
    }

    /// A heap over an arena already in memory (opened, or restored from a checkpoint),
    /// after checking its header.
    pub(crate) fn from_file(file: ArenaFile) -> Result<Heap, EngineError> {
        let path = file.path().to_path_buf();
        let path = path.as_path();
        let length_bytes = file.length_bytes();
        let heap = Heap { file };
        let corrupted = |reason: &str| EngineError::Corrupted {
            path: path.to_path_buf(),
            offset: 0,
            reason: reason.to_string(),
        };
        if length_bytes < HEAP_HEADER_BYTES || &heap.file.bytes()[..8] != HEAP_MAGIC {
            return Err(corrupted("bad key heap magic"));
        }
        let top = heap.u64_at(8);
        if top < HEAP_HEADER_BYTES || top > length_bytes || !top.is_multiple_of(RECORD_ALIGN_BYTES)
        {
            return Err(corrupted("key heap top out of range"));
        }
        Ok(heap)
    }

    pub(crate) fn file(&self) -> &ArenaFile {
        &self.file
    }

    fn u64_at(&self, offset: u64) -> u64 {
        let offset = offset as usize;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.file.bytes()[offset..offset + 8]);
        u64::from_le_bytes(bytes)
    }

    fn set_u64(&mut self, offset: u64, value: u64) {
        let offset = offset as usize;
        self.file.bytes_mut()[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    fn top(&self) -> u64 {
        self.u64_at(8)
    }

    /// The heap's `top` and `live_bytes`: what a refused operation must leave as it was.
    #[cfg(test)]
    pub(crate) fn usage_for_tests(&self) -> (u64, u64) {
        (self.top(), self.u64_at(16))
    }

    /// The offset of the free list head of `class`, inside the header.
    fn free_head_offset(class: usize) -> u64 {
        assert!(class < CLASS_COUNT, "size class {class} out of range");
        32 + 8 * class as u64
    }

    /// The bytes of the record, live or free, at `offset`, if it is aligned, its class
    /// byte is a class (`CLASS_MIN..CLASS_COUNT`), and the record lies wholly below `top`.
    fn record_bytes(&self, offset: u64) -> Option<&[u8]> {
        let top = self.top().min(self.file.length_bytes());
        if offset < HEAP_HEADER_BYTES
            || !offset.is_multiple_of(RECORD_ALIGN_BYTES)
            || offset.checked_add(RECORD_HEADER_BYTES as u64)? > top
        {
            return None;
        }
        let bytes = &self.file.bytes()[offset as usize..top as usize];
        let class = usize::from(bytes[2]);
        if !(CLASS_MIN..CLASS_COUNT).contains(&class) {
            return None;
        }
        bytes.get(..class * RECORD_ALIGN_BYTES as usize)
    }

    /// The live record at `offset`: as `record_bytes`, with a key length of at least 1
    /// whose class is the record's class byte.
    fn record(&self, offset: u64) -> Option<&[u8]> {
        let record = self.record_bytes(offset)?;
        let key_len = usize::from(record[0]);
        if key_len == 0 || class_of(key_len) != usize::from(record[2]) {
            return None;
        }
        debug_assert!(RECORD_HEADER_BYTES + key_len <= record.len());
        Some(record)
    }

    /// Whether the record at `offset` is a free record (key length 0) of `class`.
    fn is_free_record(&self, offset: u64, class: usize) -> bool {
        self.record_bytes(offset)
            .is_some_and(|record| record[0] == 0 && usize::from(record[2]) == class)
    }

    /// Hints the CPU to fetch the record at `offset` of a key of `key_len` bytes (its
    /// first and last line; nothing if it lies outside the heap).
    #[inline]
    pub(crate) fn prefetch(&self, offset: u64, key_len: usize) {
        let bytes = self.file.bytes();
        let Some(end) = (offset as usize).checked_add(RECORD_HEADER_BYTES + key_len) else {
            return;
        };
        if let Some(record) = bytes.get(offset as usize..end) {
            crate::index::prefetch_line(record.as_ptr());
            crate::index::prefetch_line(record[record.len() - 1..].as_ptr());
        }
    }

    /// The key stored in the record at `offset`.
    pub(crate) fn key(&self, offset: u64) -> Option<&[u8]> {
        let record = self.record(offset)?;
        let key_len = usize::from(record[0]);
        Some(&record[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + key_len])
    }

    /// The bounds stored in the record at `offset` (none if the record is unreadable).
    pub(crate) fn bounds(&self, offset: u64) -> Bounds {
        let Some(record) = self.record(offset) else {
            return Bounds::NONE;
        };
        let read = |at: usize| i64::from_le_bytes(record[at..at + 8].try_into().expect("8 bytes"));
        Bounds {
            floor: (record[1] & BOUND_FLOOR != 0).then(|| read(8)),
            ceiling: (record[1] & BOUND_CEILING != 0).then(|| read(16)),
        }
    }

    /// Rewrites the bounds of the record at `offset`.
    pub(crate) fn set_bounds(&mut self, offset: u64, bounds: Bounds) {
        if self.record(offset).is_none() {
            return;
        }
        let at = offset as usize;
        let bytes = self.file.bytes_mut();
        let mut flags = 0;
        if bounds.floor.is_some() {
            flags |= BOUND_FLOOR;
        }
        if bounds.ceiling.is_some() {
            flags |= BOUND_CEILING;
        }
        bytes[at + 1] = flags;
        bytes[at + 8..at + 16].copy_from_slice(&bounds.floor.unwrap_or(0).to_le_bytes());
        bytes[at + 16..at + 24].copy_from_slice(&bounds.ceiling.unwrap_or(0).to_le_bytes());
    }

    /// Allocates a record for `key` with `bounds`; returns its offset.
    pub(crate) fn allocate(&mut self, key: &[u8], bounds: Bounds) -> Result<u64, OpError> {
        assert!(!key.is_empty() && key.len() <= crate::KEY_BYTES_MAX);
        let class = class_of(key.len());
        let length_bytes = class as u64 * RECORD_ALIGN_BYTES;
        let free_head = self.u64_at(Self::free_head_offset(class));
        let offset = if free_head != 0 && self.is_free_record(free_head, class) {
            let next = self.u64_at(free_head + 8);
            self.set_u64(Self::free_head_offset(class), next);
            free_head
        } else {
            let top = self.top();
            self.reserve(top + length_bytes)?;
            self.set_u64(8, top + length_bytes);
            top
        };
        let at = offset as usize;
        let bytes = self.file.bytes_mut();
        bytes[at..at + length_bytes as usize].fill(0);
        bytes[at] = key.len() as u8;
        bytes[at + 2] = class as u8;
        bytes[at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + key.len()].copy_from_slice(key);
        self.set_bounds(offset, bounds);
        self.set_u64(16, self.u64_at(16) + length_bytes);
        debug_assert_eq!(self.key(offset), Some(key));
        Ok(offset)
    }

    /// Returns the live record at `offset` to the free list of its class (nothing if it
    /// is not a live record: see the module doc).
    pub(crate) fn free(&mut self, offset: u64) {
        let Some(record) = self.record(offset) else {
            return;
        };
        let class = usize::from(record[2]);
        let length_bytes = record.len() as u64;
        let head = self.u64_at(Self::free_head_offset(class));
        self.set_u64(offset + 8, head);
        self.file.bytes_mut()[offset as usize] = 0;
        self.set_u64(Self::free_head_offset(class), offset);
        self.set_u64(16, self.u64_at(16).saturating_sub(length_bytes));
    }

    /// Makes the file at least `end_bytes` long, growing it by a quarter at a time.
    fn reserve(&mut self, end_bytes: u64) -> Result<(), OpError> {
        let length_bytes = self.file.length_bytes();
        if end_bytes <= length_bytes {
            return Ok(());
        }
        let grown_bytes = (length_bytes + (length_bytes / 4).max(HEAP_GROWTH_BYTES_MIN))
            .max(end_bytes)
            .next_multiple_of(4096);
        if grown_bytes > HEAP_BYTES_MAX {
            return Err(OpError::StorageFull);
        }
        self.file
            .grow(grown_bytes)
            .map_err(|_| OpError::StorageFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_records_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut heap = Heap::create(&dir.path().join("h")).unwrap();
        let key = [7u8; 100];
        let first = heap.allocate(&key, Bounds::NONE).unwrap();
        let top = heap.top();
        heap.free(first);
        let again = heap.allocate(&[9u8; 99], Bounds::NONE).unwrap();
        assert_eq!(again, first);
        assert_eq!(heap.top(), top);
        assert_eq!(heap.key(again), Some(&[9u8; 99][..]));
    }

    #[test]
    fn bounds_round_trip_and_heap_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut heap = Heap::create(&dir.path().join("h")).unwrap();
        let bounds = Bounds {
            floor: Some(-5),
            ceiling: None,
        };
        let mut offsets = Vec::new();
        for index in 0..1000u32 {
            let key = [index as u8; 255];
            offsets.push(heap.allocate(&key, bounds).unwrap());
        }
        assert!(heap.file().length_bytes() > HEAP_BYTES_INITIAL);
        assert_eq!(heap.bounds(offsets[999]), bounds);
        assert_eq!(heap.key(offsets[3]), Some(&[3u8; 255][..]));
        assert_eq!(heap.bounds(12345), Bounds::NONE);
    }

    /// A heap with a record of key `[1; 20]` at the first offset (whose bytes a free list
    /// head of class 28 would overwrite), the record at the returned offset with key
    /// `[2; 20]`, and enough records behind it that any class byte keeps it below `top`.
    fn heap_with_victim(path: &Path) -> (Heap, u64) {
        let mut heap = Heap::create(path).unwrap();
        let victim = heap.allocate(&[1u8; 20], Bounds::NONE).unwrap();
        assert_eq!(victim, HEAP_HEADER_BYTES);
        let damaged = heap.allocate(&[2u8; 20], Bounds::NONE).unwrap();
        for _ in 0..16 {
            heap.allocate(&[3u8; 255], Bounds::NONE).unwrap();
        }
        assert!(damaged + 255 * RECORD_ALIGN_BYTES <= heap.top());
        (heap, damaged)
    }

    #[test]
    fn a_record_with_a_damaged_class_byte_is_unreadable_and_not_freed() {
        let dir = tempfile::tempdir().unwrap();
        for class in [0u8, 1, 2, 10, 19, 28, 255] {
            let (mut heap, damaged) = heap_with_victim(&dir.path().join(format!("h{class}")));
            let usage = heap.usage_for_tests();
            heap.file.bytes_mut()[damaged as usize + 2] = class;
            assert_eq!(heap.key(damaged), None, "class {class}");
            assert_eq!(heap.bounds(damaged), Bounds::NONE, "class {class}");
            heap.free(damaged);
            assert_eq!(heap.usage_for_tests(), usage, "class {class}");
            assert_eq!(
                heap.key(HEAP_HEADER_BYTES),
                Some(&[1u8; 20][..]),
                "class {class}"
            );
            // Nothing was put on a free list: a record of any class comes from `top`.
            let key = [4u8; 130];
            assert_eq!(heap.allocate(&key, Bounds::NONE).unwrap(), usage.0);
            assert_eq!(
                heap.key(damaged + 3 * RECORD_ALIGN_BYTES),
                Some(&[3u8; 255][..])
            );
        }
    }

    #[test]
    fn a_free_list_head_that_is_no_free_record_of_its_class_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut heap, live) = heap_with_victim(&dir.path().join("h"));
        let class = class_of(20);
        heap.set_u64(Heap::free_head_offset(class), live);
        let top = heap.top();
        assert_eq!(heap.allocate(&[5u8; 20], Bounds::NONE).unwrap(), top);
        assert_eq!(heap.key(live), Some(&[2u8; 20][..]));
        // A record freed twice is on its free list once.
        heap.free(live);
        heap.free(live);
        let first = heap.allocate(&[6u8; 20], Bounds::NONE).unwrap();
        let second = heap.allocate(&[7u8; 20], Bounds::NONE).unwrap();
        assert_eq!(first, live);
        assert_ne!(second, live);
        assert_eq!(heap.key(first), Some(&[6u8; 20][..]));
    }
}
