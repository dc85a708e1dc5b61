//! The store: the partitions one thread owns, and the batch pipeline over them.
//!
//! A [`Store`] is built on one thread and may be moved once to the core that serves its
//! partitions (`Send`), but is never shared (`!Sync`): every method takes the partitions
//! without locks or atomics.
//!
//! # Batch pipeline
//!
//! `apply_batch` first hashes every key of the batch into a scratch buffer sized once for
//! [`BATCH_OPS_MAX`] (no allocation per batch) and prefetches the home lines of its
//! first `PREFETCH_DISTANCE` operations, then applies the operations in order while
//! prefetching the home line of the operation `PREFETCH_DISTANCE` ahead, so up to that
//! many cache misses are in flight while the current operation runs. Prefetches are
//! only hints: a growth between the prefetch and the apply costs a miss, never a wrong
//! result.
//!
//! The pipeline reads its operations through `BatchOps`: a slice of [`Op`]s (the
//! public `apply_batch`), or journal records decoded by replay, read in place.
//!
//! A counter that is not in its home bucket is in its alternate one (see `index`; at
//! 10M counters about one in five). Looking there at once would stall the pipeline for a
//! whole cache miss. Instead the operation waits: the alternate bucket is prefetched
//! and the operation is taken up again `DEFER_DISTANCE` operations later, when that
//! bucket has arrived. Not there either, it takes the general path. An external counter
//! (a key longer than 16 bytes, or bounds: key and bounds live in the key heap) waits
//! the same way for its heap record, so its whole key can be compared without a stall.
//!
//! Waiting reorders a batch, so two invariants keep every result what in-order
//! application gives:
//!
//! - Waiting operations complete in batch order (a FIFO queue, each due a fixed
//!   distance after it joined).
//! - While any operation waits, no counter moves: the general path (the only one that
//!   inserts, deletes, grows, migrates, or moves counters along a cuckoo path) runs only
//!   with an empty queue, or for the queue's front, and then every operation behind it
//!   completes at once. So an operation completed on the fast path meanwhile found its
//!   counter in its home bucket, where no waiting operation's counter is: it is on
//!   another counter, and operations on different counters commute (an increment or set
//!   reads no other counter; only inserts compete, for memory, and they run in order).
//!
//! A hot key (the same key several times in a row) is hashed once, prefetched once, and
//! looked up once: while consecutive operations update it on the fast path, each goes
//! straight to the slot the previous one updated. Invariant: that slot position is
//! reused only while no counter has moved since that update; the general path forgets it.

use std::path::Path;

use crate::error::{EngineError, OpError};
use crate::heap::Bounds;
use crate::index::{InBucket, PlainKey, KEY_INLINE_BYTES_MAX};
use crate::op::{BoundPolicy, Op, OpResult};
use crate::partition::{CheckpointBytes, KeyProbe, Partition, PartitionSnapshot};
use crate::{key_hash, validate_key, DataDir, BATCH_OPS_MAX};

/// How many operations ahead the batch pipeline prefetches the home bucket.
pub const PREFETCH_DISTANCE: usize = 32;

const _: () = assert!(PREFETCH_DISTANCE > 0 && PREFETCH_DISTANCE < BATCH_OPS_MAX);

/// How many operations later the batch pipeline takes up again an operation whose
/// counter was not in its home bucket: time for the alternate bucket's prefetch to
/// arrive (a DRAM miss is worth about this many fast-path operations).
pub const DEFER_DISTANCE: usize = 16;

/// Most threads [`Store::restore_partitions`] reads checkpoints on.
pub const RESTORE_THREADS_MAX: usize = 8;

/// The counter a batch's previous operation updated on the fast path (see
/// `Store::fast_step`): its lookup key (for an inline key, its length and zero-padded
/// 16 bytes identify it) and its slot.
#[derive(Clone, Copy)]
struct LastUpdate {
    key: PlainKey,
    position: usize,
}

/// An operation of the current batch waiting for a bucket or a heap record to reach the
/// cache, with what looking in its alternate bucket needs (so taking it up again does
/// not decode the operation, find its partition or pad its key a second time).
#[derive(Clone, Copy, Debug)]
struct Waiting {
    /// Its index in the batch.
    op: usize,
    /// The batch index from which it is taken up again.
    due: usize,
    /// What it waits for: `Next(bucket)`, its alternate bucket, or `External(slot)`, the
    /// heap record of the external counter at that slot.
    found: InBucket,
    /// Index of its partition in `Store::partitions`.
    partition: usize,
    key: PlainKey,
    operand: i64,
    set: bool,
}

/// The operations of a batch waiting for the cache, in batch order: a FIFO queue over a
/// vector cleared per batch (an operation waits at most once, so it never holds more
/// than the batch), cheaper than a ring buffer's wrap-around on every access.
#[derive(Debug, Default)]
struct WaitQueue {
    entries: Vec<Waiting>,
    /// Index in `entries` of the front.
    head: usize,
}

impl WaitQueue {
    fn clear(&mut self) {
        self.entries.clear();
        self.head = 0;
    }

    #[inline(always)]
    fn front(&self) -> Option<&Waiting> {
        self.entries.get(self.head)
    }

    #[inline(always)]
    fn pop_front(&mut self) {
        self.head += 1;
    }

    #[inline(always)]
    fn push_back(&mut self, waiting: Waiting) {
        self.entries.push(waiting);
    }

    fn is_empty(&self) -> bool {
        self.head == self.entries.len()
    }
}

/// What the fast path made of one operation.
enum Step {
    Done(OpResult),
    /// Queued in the batch's `WaitQueue`, waiting for what is being prefetched: its
    /// alternate bucket (`Next`: not at home) or its heap record (`External`: a long key
    /// or bounds).
    Waiting,
    /// For the general path.
    General,
}

/// An increment or a set, as the fast path takes it.
#[derive(Clone, Copy)]
pub(crate) struct FastOp<'o> {
    pub key: &'o [u8],
    pub operand: i64,
    pub set: bool,
    pub policy: BoundPolicy,
}

/// The operations of a batch as the pipeline reads them: a slice of [`Op`]s, or the
/// same operations in another layout (replay reads decoded journal records in place
/// instead of building an `Op` per record). The pipeline walks `items` once, in order,
/// and takes up an item again by index only for an operation that waited. `'b` is the
/// lifetime of the keys.
///
/// Invariant: `fast_of(item)`, when `Some`, is the increment or set `op_of(item)` is,
/// on the key `key_of(item)`.
pub(crate) trait BatchOps<'b>: Copy {
    /// One operation as the layout holds it (for a slice of `Op`s, a reference).
    type Item: Copy;
    fn len(self) -> usize;
    /// Every operation, in order.
    fn items(self) -> impl ExactSizeIterator<Item = Self::Item>;
    /// Operation `index`.
    fn item(self, index: usize) -> Self::Item;
    fn key_of(item: Self::Item) -> &'b [u8];
    /// The operation as the fast path takes it, or `None` for the general path.
    fn fast_of(item: Self::Item) -> Option<FastOp<'b>>;
    /// The operation in full, for the general path.
    fn op_of(item: Self::Item) -> Op<'b>;
}

impl<'b, 'o: 'b> BatchOps<'b> for &'b [Op<'o>] {
    type Item = &'b Op<'o>;

    #[inline(always)]
    fn len(self) -> usize {
        <[Op]>::len(self)
    }

    #[inline(always)]
    fn items(self) -> impl ExactSizeIterator<Item = &'b Op<'o>> {
        self.iter()
    }

    #[inline(always)]
    fn item(self, index: usize) -> &'b Op<'o> {
        &self[index]
    }

    #[inline(always)]
    fn key_of(item: &'b Op<'o>) -> &'b [u8] {
        item.key()
    }

    #[inline(always)]
    fn fast_of(item: &'b Op<'o>) -> Option<FastOp<'b>> {
        fast_op(item)
    }

    #[inline(always)]
    fn op_of(item: &'b Op<'o>) -> Op<'b> {
        *item
    }
}

/// The operations the fast path takes: increments and sets of valid keys.
#[inline(always)]
fn fast_op<'o>(op: &Op<'o>) -> Option<FastOp<'o>> {
    let (key, operand, set, policy) = match *op {
        Op::Add { key, delta, policy } => (key, delta, false, policy),
        Op::Set { key, value, policy } => (key, value, true, policy),
        _ => return None,
    };
    validate_key(key).is_ok().then_some(FastOp {
        key,
        operand,
        set,
        policy,
    })
}

/// One batch in flight through `Store::apply_batch`.
struct Batch<'b, O> {
    ops: O,
    hashes: &'b [u64],
    results: &'b mut Vec<OpResult>,
    waiting: &'b mut WaitQueue,
    /// The counter the last fast-path update changed (see `Store::fast_step`).
    last: Option<LastUpdate>,
}

/// The partitions one thread owns.
#[derive(Debug)]
pub struct Store {
    partition_count: u32,
    /// `partition_count - 1` if the count is a power of two (the index is then a mask).
    partition_mask: Option<u64>,
    /// Indexed by partition; `None` for partitions this store does not own.
    partitions: Vec<Option<Partition>>,
    owned: Vec<u32>,
    /// Scratch: the hashes of the current batch.
    hashes: Vec<u64>,
    /// Scratch: the operations of the current batch waiting for the cache, in batch order.
    waiting: WaitQueue,
}

/// Pushes the hash of every operation's key to `hashes`. A key equal to the previous
/// operation's (a hot key) reuses its hash: for 16-byte keys (the common inline size) the
/// test is two word compares, far cheaper than hashing; other lengths are always hashed.
#[inline]
fn hash_keys<'k, O: BatchOps<'k>>(ops: O, hashes: &mut Vec<u64>) {
    let mut previous_len = usize::MAX;
    let mut previous_words = [0u64; 2];
    let mut previous_hash = 0;
    // `extend` from an exact-size iterator: no capacity check per push.
    hashes.extend(ops.items().map(O::key_of).map(|key| {
        match key.first_chunk::<KEY_INLINE_BYTES_MAX>() {
            Some(bytes) if key.len() == KEY_INLINE_BYTES_MAX => {
                let words = crate::index::key_words(bytes);
                if previous_len != key.len() || words != previous_words {
                    previous_len = key.len();
                    previous_words = words;
                    previous_hash = key_hash(key);
                }
                previous_hash
            }
            _ => {
                previous_len = usize::MAX;
                key_hash(key)
            }
        }
    }));
}

impl Store {
    /// Opens (creating if needed) the partitions `owned` of `dir`.
    ///
    /// A partition that was not closed cleanly opens empty (its files hold only the state
    /// of its last clean close); recovery restores it. A clean partition's data files are
    /// checked against the checksums its header recorded at the clean close (a damaged
    /// or missing one is refused, or, when the partition has a checkpoint, the partition
    /// is reopened as unclean for recovery to restore: see `partition`), and missing
    /// headers or checkpoints are refused when the directory shows they existed (see
    /// `partition`). Every partition is opened and checked before any is marked open on
    /// disk, so a refusal leaves the clean ones clean. The caller guarantees that no other
    /// `Store`, in this process or another, has any of these partitions open: nothing
    /// locks the files.
    pub fn open(dir: &DataDir, owned: impl IntoIterator<Item = u32>) -> Result<Store, EngineError> {
        let partition_count = dir.partition_count();
        let mut partitions: Vec<Option<Partition>> = (0..partition_count).map(|_| None).collect();
        let mut owned_list = Vec::new();
        for index in owned {
            if index >= partition_count {
                return Err(EngineError::InvalidConfig(format!(
                    "partition {index} does not exist (the directory has {partition_count})"
                )));
            }
            if partitions[index as usize].is_none() {
                partitions[index as usize] = Some(Partition::open(dir.path(), index)?);
                owned_list.push(index);
            }
        }
        // Every partition opened and checked: only now is any marked open on disk (a
        // refusal above leaves the clean ones clean).
        for partition in partitions.iter_mut().flatten() {
            partition.start()?;
        }
        Ok(Store {
            partition_count,
            partition_mask: partition_count
                .is_power_of_two()
                .then(|| u64::from(partition_count) - 1),
            partitions,
            owned: owned_list,
            hashes: Vec::with_capacity(BATCH_OPS_MAX),
            waiting: WaitQueue {
                entries: Vec::with_capacity(BATCH_OPS_MAX),
                head: 0,
            },
        })
    }

    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    pub fn owns(&self, partition: u32) -> bool {
        self.partitions
            .get(partition as usize)
            .is_some_and(|p| p.is_some())
    }

    /// The partitions this store owns, in the order they were opened.
    pub fn owned_partitions(&self) -> &[u32] {
        &self.owned
    }

    #[inline]
    fn partition_index(&self, hash: u64) -> usize {
        match self.partition_mask {
            Some(mask) => (hash & mask) as usize,
            None => (hash % u64::from(self.partition_count)) as usize,
        }
    }

    fn partition(&self, hash: u64) -> Result<&Partition, OpError> {
        let index = self.partition_index(hash);
        self.partitions[index].as_ref().ok_or(OpError::NotOwned {
            partition: index as u32,
        })
    }

    fn owned_partition(&self, partition: u32) -> Option<&Partition> {
        self.partitions.get(partition as usize)?.as_ref()
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &Op) -> OpResult {
        let key = op.key();
        validate_key(key)?;
        let hash = key_hash(key);
        self.apply_hashed(op, hash)
    }

    #[inline]
    fn apply_hashed(&mut self, op: &Op, hash: u64) -> OpResult {
        let key = op.key();
        validate_key(key)?;
        let index = self.partition_index(hash);
        let partition = self.partitions[index].as_mut().ok_or(OpError::NotOwned {
            partition: index as u32,
        })?;
        partition.apply(op, &KeyProbe::new(key, hash))
    }

    /// Applies `ops` in order, one result per operation pushed to `results` (cleared
    /// first), hashing and prefetching ahead across the batch.
    pub fn apply_batch(&mut self, ops: &[Op], results: &mut Vec<OpResult>) -> Result<(), OpError> {
        self.apply_batch_of(ops, results)
    }

    /// The error for a batch of `count` operations, over the limit; leaves no stale
    /// hashes for [`Store::last_batch_hashes`]. Out of line: inlined, it shifted the
    /// replay loop's code (+0.9% instructions per replayed record).
    #[cold]
    #[inline(never)]
    fn refuse_batch(&mut self, count: usize) -> OpError {
        self.hashes.clear();
        OpError::BatchTooLarge {
            count,
            max: BATCH_OPS_MAX,
        }
    }

    /// The [`key_hash`](crate::key_hash) of every operation of the last
    /// [`Store::apply_batch`], in order (empty if it refused the batch), so that a caller
    /// journaling the batch need not hash the keys again
    /// ([`partition_of_hash`](crate::partition_of_hash)).
    pub fn last_batch_hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// [`Store::apply_batch`] over any layout of operations.
    pub(crate) fn apply_batch_of<'k, O: BatchOps<'k>>(
        &mut self,
        ops: O,
        results: &mut Vec<OpResult>,
    ) -> Result<(), OpError> {
        if ops.len() > BATCH_OPS_MAX {
            return Err(self.refuse_batch(ops.len()));
        }
        results.clear();
        results.reserve(ops.len());
        let mut hashes = std::mem::take(&mut self.hashes);
        hashes.clear();
        hash_keys(ops, &mut hashes);
        // The loop below prefetches `PREFETCH_DISTANCE` operations ahead, so the first
        // ones are prefetched here: without this, a batch shorter than the distance (a
        // server turn's few operations) would take every miss one after the other.
        self.prefetch_first(&hashes);
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.clear();
        let mut batch = Batch {
            ops,
            hashes: &hashes,
            results,
            waiting: &mut waiting,
            last: None,
        };
        for (index, item) in ops.items().enumerate() {
            // A key hashed like the one before it (a hot key) is in the cache already.
            if let Some(&[before, ahead]) =
                hashes.get(index + PREFETCH_DISTANCE - 1..=index + PREFETCH_DISTANCE)
            {
                if ahead != before {
                    self.prefetch(ahead);
                }
            }
            match self.fast_step(
                O::fast_of(item),
                index,
                hashes[index],
                &mut batch.last,
                batch.waiting,
            ) {
                Step::Done(result) => batch.results.push(result),
                // A placeholder, replaced when the operation completes.
                Step::Waiting => batch.results.push(Err(OpError::Overflow)),
                Step::General => {
                    self.serve_waiting(&mut batch, usize::MAX);
                    let result =
                        self.apply_general(&O::op_of(item), hashes[index], &mut batch.last);
                    batch.results.push(result);
                }
            }
            while let Some(front) = batch.waiting.front() {
                if front.due > index {
                    break;
                }
                // The common case in line: a counter in its alternate bucket.
                let front = *front;
                if let Some(result) = self.find_waiting_in_alternate(&front) {
                    batch.results[front.op] = result;
                    batch.waiting.pop_front();
                    continue;
                }
                self.serve_waiting(&mut batch, index);
                break;
            }
        }
        self.serve_waiting(&mut batch, usize::MAX);
        debug_assert!(waiting.is_empty());
        self.hashes = hashes;
        self.waiting = waiting;
        debug_assert_eq!(results.len(), ops.len());
        Ok(())
    }

    /// The fast path of one batch operation: increments and sets of existing inline
    /// counters found in their home bucket complete here; one not at home waits for its
    /// alternate bucket, and an external one (long key or bounds) for its heap record;
    /// everything else goes to the general path. `last` is the inline counter the
    /// previous fast-path update changed, if no counter has moved since: an operation on
    /// the same key (a hot key) goes straight to its slot.
    #[inline(always)]
    fn fast_step(
        &mut self,
        op: Option<FastOp>,
        op_index: usize,
        hash: u64,
        last: &mut Option<LastUpdate>,
        queue: &mut WaitQueue,
    ) -> Step {
        let Some(FastOp {
            key, operand, set, ..
        }) = op
        else {
            return Step::General;
        };
        let index = self.partition_index(hash);
        let Some(partition) = self.partitions[index].as_mut() else {
            return Step::General;
        };
        let plain = KeyProbe::new(key, hash).plain();
        let found = match *last {
            Some(previous) if previous.key == plain => InBucket::Found(previous.position),
            _ => partition.find_plain(None, &plain),
        };
        let mut wait = |found| {
            queue.push_back(Waiting {
                op: op_index,
                due: op_index + DEFER_DISTANCE,
                found,
                partition: index,
                key: plain,
                operand,
                set,
            });
            Step::Waiting
        };
        match found {
            InBucket::Found(position) => {
                *last = Some(LastUpdate {
                    key: plain,
                    position,
                });
                Step::Done(partition.update_inline_at(position, operand, set))
            }
            InBucket::External(position) => {
                partition.prefetch_record(position);
                wait(found)
            }
            InBucket::Next(bucket) => {
                partition.prefetch_bucket(bucket);
                wait(found)
            }
            InBucket::Elsewhere => Step::General,
        }
    }

    /// A waiting operation's update if its counter is an inline one in its alternate
    /// bucket, which it waited for (the common case, kept in line); `None` leaves
    /// everything to `serve_waiting`.
    #[inline(always)]
    fn find_waiting_in_alternate(&mut self, waiting: &Waiting) -> Option<OpResult> {
        let InBucket::Next(bucket) = waiting.found else {
            return None;
        };
        let partition = self.partitions[waiting.partition].as_mut()?;
        match partition.find_plain(Some(bucket), &waiting.key) {
            InBucket::Found(position) => {
                Some(partition.update_inline_at(position, waiting.operand, waiting.set))
            }
            _ => None,
        }
    }

    /// The general path, which may move counters: forgets the hot key's slot.
    fn apply_general(&mut self, op: &Op, hash: u64, last: &mut Option<LastUpdate>) -> OpResult {
        *last = None;
        self.apply_hashed(op, hash)
    }

    /// Takes up the waiting operations due by batch index `now` (`usize::MAX`: all of
    /// them), in batch order: each is looked for in its alternate bucket, or checked
    /// against its heap record, prefetched since it waited (an external counter found in
    /// its alternate bucket is updated at once, its record not prefetched). One the fast
    /// path cannot complete takes the general path, which may move counters; all behind
    /// it then complete at once (see the module doc).
    #[inline(never)]
    fn serve_waiting<'k, O: BatchOps<'k>>(&mut self, batch: &mut Batch<O>, now: usize) {
        let mut all = now == usize::MAX;
        while let Some(&waiting) = batch.waiting.front() {
            if waiting.due > now && !all {
                return;
            }
            batch.waiting.pop_front();
            let item = batch.ops.item(waiting.op);
            let partition = self.partitions[waiting.partition]
                .as_mut()
                .expect("an owned partition");
            // Only an external counter or the general path needs the padded key.
            let probe = || KeyProbe::new(O::key_of(item), batch.hashes[waiting.op]);
            let found = match waiting.found {
                InBucket::Next(bucket) => partition.find_plain(Some(bucket), &waiting.key),
                external => external,
            };
            let result = match found {
                InBucket::Found(position) => {
                    Some(partition.update_inline_at(position, waiting.operand, waiting.set))
                }
                InBucket::External(position) => {
                    let policy = O::fast_of(item).expect("only the fast path defers").policy;
                    partition.update_external_at(
                        position,
                        &probe(),
                        waiting.operand,
                        waiting.set,
                        policy,
                    )
                }
                InBucket::Next(_) | InBucket::Elsewhere => None,
            };
            batch.results[waiting.op] = result.unwrap_or_else(|| {
                all = true;
                batch.last = None;
                partition.apply(&O::op_of(item), &probe())
            });
        }
    }

    /// Prefetches the home lines of the first `PREFETCH_DISTANCE` keys of a batch, each
    /// once. Kept out of line: inlined, it changed the register allocation of the
    /// batch loop after it (gungraun: 4.5% more instructions per random increment).
    #[inline(never)]
    fn prefetch_first(&self, hashes: &[u64]) {
        let mut previous = None;
        for &hash in hashes.iter().take(PREFETCH_DISTANCE) {
            if previous != Some(hash) {
                self.prefetch(hash);
                previous = Some(hash);
            }
        }
    }

    #[inline]
    fn prefetch(&self, hash: u64) {
        if let Some(partition) = &self.partitions[self.partition_index(hash)] {
            partition.prefetch((hash >> 32) as u32);
        }
    }

    /// The value of `key`, `None` if it has no counter.
    pub fn get(&self, key: &[u8]) -> Result<Option<i64>, OpError> {
        validate_key(key)?;
        let hash = key_hash(key);
        let outcome = self.partition(hash)?.get(&KeyProbe::new(key, hash));
        Ok(outcome.existed.then_some(outcome.value))
    }

    /// The floor and ceiling of `key` (none for a missing counter).
    pub fn bounds(&self, key: &[u8]) -> Result<(Option<i64>, Option<i64>), OpError> {
        validate_key(key)?;
        let hash = key_hash(key);
        let Bounds { floor, ceiling } = self.partition(hash)?.bounds(&KeyProbe::new(key, hash));
        Ok((floor, ceiling))
    }

    /// Whether owned partition `partition` holds no counter (from its count, O(1)).
    pub fn partition_is_empty(&self, partition: u32) -> bool {
        self.partitions
            .get(partition as usize)
            .and_then(Option::as_ref)
            .is_some_and(|p| p.counter_count() == 0)
    }

    /// Live counters in the owned partitions.
    pub fn counter_count(&self) -> u64 {
        self.partitions
            .iter()
            .flatten()
            .map(Partition::counter_count)
            .sum()
    }

    /// Bytes of all mapped arena files of the owned partitions.
    pub fn arena_bytes(&self) -> u64 {
        self.partitions
            .iter()
            .flatten()
            .map(Partition::arena_bytes)
            .sum()
    }

    /// Visits every live counter of one owned partition (nothing if not owned):
    /// (key, value, floor, ceiling), in no particular order.
    pub fn for_each_counter(
        &self,
        partition: u32,
        f: impl FnMut(&[u8], i64, Option<i64>, Option<i64>),
    ) {
        if let Some(partition) = self.owned_partition(partition) {
            partition.for_each_counter(f);
        }
    }

    /// Writes every arena back to its file, syncs it, and marks it clean (a clean
    /// shutdown). Without it, the next open finds the partitions unclean and empty.
    pub fn close_clean(self) -> Result<(), EngineError> {
        let mut first_error = None;
        for partition in self.partitions.into_iter().flatten() {
            if let Err(error) = partition.close_clean() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether every owned partition was closed cleanly before this open (a new
    /// partition counts as clean). If not, recovery restores from checkpoints.
    pub fn was_clean_shutdown(&self) -> bool {
        self.partitions.iter().flatten().all(Partition::was_clean)
    }

    /// Whether one owned partition was closed cleanly before this open.
    pub fn partition_was_clean(&self, partition: u32) -> bool {
        self.owned_partition(partition)
            .is_some_and(Partition::was_clean)
    }

    /// Takes an owned partition that was closed cleanly for one that was not, before
    /// recovery: its files are stale (older than its checkpoint), so recovery restores
    /// the checkpoint and replays the journal onto it. Its header on disk already says
    /// `clean = 0` since the open.
    pub(crate) fn distrust_partition(&mut self, partition: u32) {
        if let Some(Some(partition)) = self.partitions.get_mut(partition as usize) {
            partition.distrust();
        }
    }

    /// Why `partition`, closed cleanly, had its data files refused at open and was
    /// reopened for recovery to restore from its checkpoint: the file, and why.
    pub(crate) fn damage_at_open(&self, partition: u32) -> Option<&(std::path::PathBuf, String)> {
        self.owned_partition(partition).and_then(Partition::damage)
    }

    /// The applied LSN `partition`'s header on disk recorded when it was opened: for a
    /// partition not closed cleanly, the one of its last clean close (unchecked: only
    /// compared by recovery). 0 if not owned.
    pub(crate) fn applied_lsn_at_open(&self, partition: u32) -> u64 {
        self.owned_partition(partition)
            .map_or(0, Partition::applied_lsn_at_open)
    }

    /// The LSN of the last journal record applied to `partition` (0 if none or not owned).
    pub fn applied_lsn(&self, partition: u32) -> u64 {
        self.owned_partition(partition)
            .map_or(0, Partition::applied_lsn)
    }

    /// Records the LSN of the last journal record applied to `partition` (ignored if not
    /// owned).
    pub fn set_applied_lsn(&mut self, partition: u32, lsn: u64) {
        if let Some(Some(partition)) = self.partitions.get_mut(partition as usize) {
            partition.set_applied_lsn(lsn);
        }
    }

    fn not_owned(partition: u32) -> EngineError {
        EngineError::InvalidConfig(format!("partition {partition} is not owned by this store"))
    }

    /// Writes a consistent copy of one partition's files into `dest_dir` (created if
    /// missing) and fdatasyncs them. Synchronous: the stall is proportional to the
    /// partition's size, and includes the syncs ([`Store::snapshot_partition`] leaves
    /// those to another thread). Use a fresh directory per checkpoint and rename it into
    /// place to make the checkpoint as a whole atomic.
    pub fn checkpoint_partition(&self, partition: u32, dest_dir: &Path) -> Result<(), EngineError> {
        self.checkpoint_bytes(partition)?.write_to(dest_dir)
    }

    /// What a checkpoint of one owned partition writes, borrowed from the live
    /// partition (no copy): for a writer on the owning core.
    pub fn checkpoint_bytes(&self, partition: u32) -> Result<CheckpointBytes<'_>, EngineError> {
        let owned = self
            .owned_partition(partition)
            .ok_or_else(|| Store::not_owned(partition))?;
        Ok(owned.checkpoint_bytes())
    }

    /// Copies one owned partition's checkpoint into memory, reusing `buffers` (see
    /// [`PartitionSnapshot::into_buffers`]); its [`PartitionSnapshot::bytes`] can then
    /// be written on any thread. The copy reflects exactly what the partition holds now.
    pub fn snapshot_partition(
        &self,
        partition: u32,
        buffers: Vec<Vec<u8>>,
    ) -> Result<PartitionSnapshot, EngineError> {
        let owned = self
            .owned_partition(partition)
            .ok_or_else(|| Store::not_owned(partition))?;
        Ok(owned.snapshot(buffers))
    }

    /// Replaces one owned partition's counters with those of a checkpoint in
    /// `src_dir`, read straight into memory and verified on the way (header and data
    /// checksums). A damaged checkpoint is refused before anything changes. Nothing is
    /// copied into the data directory and nothing is synced: the partition's header on
    /// disk keeps saying `clean = 0`, so a crash before the next clean close restores
    /// from the checkpoint again. If recreating the data files fails after the check,
    /// the partition is left closed (`owns` turns false) and the error is returned.
    pub fn restore_partition(&mut self, partition: u32, src_dir: &Path) -> Result<(), EngineError> {
        if !self.owns(partition) {
            return Err(Store::not_owned(partition));
        }
        let loaded = Partition::load_checkpoint(src_dir, partition)?;
        let live = self.partitions[partition as usize].take().expect("owned");
        self.partitions[partition as usize] = Some(live.restore(loaded)?);
        Ok(())
    }

    /// [`Store::restore_partition`] for several partitions, `(partition, checkpoint
    /// directory)`, reading the checkpoints on up to `RESTORE_THREADS_MAX` threads at
    /// once (bounded by the CPUs): filling fresh memory is CPU work (the kernel zeroes
    /// every new page before the read copies into it). Every checkpoint is read and
    /// verified before any partition changes, so one damaged checkpoint changes nothing.
    pub fn restore_partitions(&mut self, checkpoints: &[(u32, &Path)]) -> Result<(), EngineError> {
        if let Some(&(partition, _)) = checkpoints.iter().find(|(p, _)| !self.owns(*p)) {
            return Err(Store::not_owned(partition));
        }
        // Online CPUs, not `available_parallelism`: that counts the calling thread's
        // affinity, a single CPU on a pinned server core.
        // SAFETY: sysconf only reads its integer argument.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let threads = usize::try_from(cpus)
            .unwrap_or(1)
            .clamp(1, RESTORE_THREADS_MAX)
            .min(checkpoints.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        // Helpers may run on any CPU; the calling thread (a server core's, pinned) stays.
        let load_some = |helper: bool| {
            if helper {
                crate::arena::unpin_current_thread();
            }
            let mut loaded = Vec::new();
            loop {
                let at = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(partition, dir)) = checkpoints.get(at) else {
                    return loaded;
                };
                loaded.push((at, Partition::load_checkpoint(dir, partition)));
            }
        };
        let mut loaded: Vec<_> = std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..threads)
                .map(|_| scope.spawn(|| load_some(true)))
                .collect();
            let mut loaded = load_some(false);
            for helper in helpers {
                loaded.extend(helper.join().expect("a checkpoint loading thread panicked"));
            }
            loaded
        });
        loaded.sort_by_key(|(at, _)| *at);
        assert_eq!(loaded.len(), checkpoints.len());
        let loaded = loaded
            .into_iter()
            .map(|(_, result)| result)
            .collect::<Result<Vec<_>, _>>()?;
        for (&(partition, _), loaded) in checkpoints.iter().zip(loaded) {
            let live = self.partitions[partition as usize].take().expect("owned");
            self.partitions[partition as usize] = Some(live.restore(loaded)?);
        }
        Ok(())
    }
}
