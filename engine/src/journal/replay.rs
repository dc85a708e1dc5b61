//! Replaying a journal into the store, with reading and checking on a second thread.
//!
//! # Pipeline
//! ```text
//! reader thread:  scan_journal (map each segment, check every record's checksum and
//!                 LSN, cut a torn tail) -> chunks of up to CHUNK_RECORDS records
//!                 -> bounded queue (QUEUE_CHUNKS chunks)
//! recovering thread: restore partitions from checkpoints, then take chunks in order
//!                 and apply each by resulting value through the store's batch
//!                 pipeline, which reads the decoded records in place (`RecordOps`)
//! ```
//! The reader starts before partitions are restored, so reading and checking the
//! journal overlaps the restore; it also asks the kernel to read the segments ahead
//! (`POSIX_FADV_WILLNEED`, which starts the head of each), so the disk works while the
//! queue is full. After `kill -9` the tail is not in the page cache (the journal is
//! written with O_DIRECT): it comes from the device. Emptied chunks go back to the
//! reader to be refilled, so replay allocates only up to `QUEUE_CHUNKS + 2` chunks
//! whatever the journal's length.
//!
//! The queue is short on purpose: its `QUEUE_CHUNKS + 2` chunks (2 MiB with 16-byte
//! keys: 32 bytes per decoded record, 32 reserved per key) stay in the CPU's last-level
//! cache, so the reader writes decoded records into lines the replay has just read, and
//! the replay reads them back from the cache. A deep queue (64 chunks, 49 MiB) let the
//! reader run further ahead during the restore, but the restore keeps the CPUs busy by
//! itself, and every record went to memory and back: measured on 2 cores, decoding took
//! 0.39-0.51 s per core instead of 0.21-0.36 s, and recovery as a whole about 7% longer.
//!
//! # Invariants
//! - Chunks arrive in LSN order and each holds records of one segment (its path names
//!   the file in a replay error).
//! - Every record sent was fully checked (checksum, fields, LSN sequence) by the scan.
//! - A record is applied only if its partition is owned and its LSN is above the
//!   partition's applied LSN before replay; by-value replay makes applying a record
//!   already reflected in the arenas harmless.
//! - If applying fails, the queue is dropped: the reader's next send fails and it stops.
//! - Replay work is linear in the records: each is handed to the store at most four
//!   times (once in a batch, at most three on the slow path), whatever the mix of
//!   records with and without bounds (`Replay::store_ops` counts them).
//!
//! The store reads a chunk's records through `RecordOps` rather than as one `Op` each:
//! building the `Op`s and checking ownership record by record cost about 37 of the
//! recovering thread's ~355 instructions per record (callgrind, 16-byte keys).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{LoggedRecord, RecordKind};
use super::recovery::{scan_journal_needing, JournalScan, RecoveryOptions};
use super::segment::{list_segments, SegmentInfo};
use super::{JournalError, Lsn};
use crate::op::{BoundPolicy, Op, OpResult};
use crate::store::{BatchOps, FastOp, Store};

/// Most records in one chunk, and so in one store batch.
pub const CHUNK_RECORDS: usize = 8192;
/// Most chunks decoded ahead of the replay (16,384 records; see the module doc for why
/// so few).
pub const QUEUE_CHUNKS: usize = 2;
/// The reader asks the kernel to read ahead at most this many bytes of segments (of
/// which Linux reads only the device's read-ahead size per segment: see `read_ahead`).
pub const READAHEAD_BYTES_MAX: u64 = 2 << 30;

const _: () = assert!(CHUNK_RECORDS <= crate::BATCH_OPS_MAX);
const _: () = assert!(QUEUE_CHUNKS >= 2);

/// One record decoded by the reader, its key in the chunk's `keys` and its bounds, if it
/// carries any (rarely), in the chunk's `bounds`: 32 bytes, half a cache line.
#[derive(Clone, Copy, Debug)]
struct Decoded {
    lsn: Lsn,
    value: i64,
    partition: u32,
    key_start: u32,
    /// Index in `Chunk::bounds`, or [`NO_BOUNDS`].
    bounds: u32,
    key_len: u8,
    kind: RecordKind,
}

const _: () = assert!(std::mem::size_of::<Decoded>() == 32);

/// `Decoded::bounds` of a record without bounds.
const NO_BOUNDS: u32 = u32::MAX;

/// A record's floor and ceiling.
type DecodedBounds = (Option<i64>, Option<i64>);

/// Records of one segment, in LSN order.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    path: PathBuf,
    records: Vec<Decoded>,
    keys: Vec<u8>,
    bounds: Vec<DecodedBounds>,
}

impl Chunk {
    fn with_capacity() -> Chunk {
        Chunk {
            path: PathBuf::new(),
            records: Vec::with_capacity(CHUNK_RECORDS),
            keys: Vec::with_capacity(CHUNK_RECORDS * 32),
            bounds: Vec::new(),
        }
    }

    fn push(&mut self, logged: &LoggedRecord<'_>) {
        let record = &logged.record;
        let key_start = self.keys.len() as u32;
        crate::extend_key(&mut self.keys, record.key);
        let bounds = match record.bounds {
            None => NO_BOUNDS,
            Some(b) => {
                self.bounds.push((b.floor, b.ceiling));
                self.bounds.len() as u32 - 1
            }
        };
        self.records.push(Decoded {
            lsn: logged.lsn,
            value: record.value,
            partition: record.partition,
            key_start,
            bounds,
            key_len: record.key.len() as u8,
            kind: record.kind,
        });
    }

    fn key(&self, record: &Decoded) -> &[u8] {
        key_in(&self.keys, record)
    }

    fn bounds(&self, record: &Decoded) -> Option<DecodedBounds> {
        (record.bounds != NO_BOUNDS).then(|| self.bounds[record.bounds as usize])
    }
}

/// What the reader thread found, and where its time went.
#[derive(Debug, Default)]
pub(super) struct ReaderReport {
    pub scan: JournalScan,
    /// Scanning time minus reading and minus waiting for room in the queue.
    pub decode_elapsed: Duration,
}

/// The reader thread and the two ends of its queues.
pub(super) struct Reader {
    chunks: Option<Receiver<Chunk>>,
    recycle: Option<Sender<Chunk>>,
    handle: Option<JoinHandle<Result<ReaderReport, JournalError>>>,
}

impl Reader {
    /// Starts reading the journal in `dir` on a new thread; no partition needs a record
    /// below `needed_lsn` (see [`scan_journal_needing`]).
    pub fn spawn(
        dir: &Path,
        options: &RecoveryOptions,
        needed_lsn: Lsn,
    ) -> Result<Reader, JournalError> {
        let (chunk_sender, chunks) = mpsc::sync_channel(QUEUE_CHUNKS);
        let (recycle, recycled) = mpsc::channel();
        let dir = dir.to_path_buf();
        let options = options.clone();
        let handle = std::thread::Builder::new()
            .name("journal-reader".into())
            .spawn(move || {
                crate::arena::unpin_current_thread();
                read_journal(&dir, &options, needed_lsn, &chunk_sender, &recycled)
            })
            .map_err(|e| {
                JournalError::io("spawn the journal reader thread for", Path::new(""), e)
            })?;
        Ok(Reader {
            chunks: Some(chunks),
            recycle: Some(recycle),
            handle: Some(handle),
        })
    }

    /// The next chunk, or `None` once the reader has sent everything (or failed).
    fn next_chunk(&self) -> Option<Chunk> {
        self.chunks.as_ref()?.recv().ok()
    }

    /// Hands an applied chunk back to be refilled.
    fn recycle(&self, mut chunk: Chunk) {
        chunk.records.clear();
        chunk.keys.clear();
        chunk.bounds.clear();
        if let Some(recycle) = &self.recycle {
            // The reader may have finished already: then the chunk is simply freed.
            let _ = recycle.send(chunk);
        }
    }

    /// Waits for the reader thread and returns its report (or the error it stopped on).
    fn finish(mut self) -> Result<ReaderReport, JournalError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<ReaderReport, JournalError> {
        self.chunks = None;
        self.recycle = None;
        let handle = self.handle.take().expect("stopped once");
        match handle.join() {
            Ok(result) => result,
            Err(_) => Err(JournalError::Failed {
                reason: "the journal reader thread panicked".into(),
            }),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.handle.is_some() {
            // Recovery failed before reading everything: the closed queue stops the
            // reader at its next send; its own result no longer matters.
            let _ = self.stop();
        }
    }
}

/// The reader thread's body: scans the journal and sends its records in chunks.
fn read_journal(
    dir: &Path,
    options: &RecoveryOptions,
    needed_lsn: Lsn,
    sender: &SyncSender<Chunk>,
    recycled: &Receiver<Chunk>,
) -> Result<ReaderReport, JournalError> {
    let started = Instant::now();
    read_ahead(dir)?;
    let mut blocked = Duration::ZERO;
    let mut chunk = Chunk::with_capacity();
    // The first LSN of the segment whose records the chunk holds: a per-record check
    // that costs a comparison of two integers, not of two paths.
    let mut segment = None;
    let mut send = |chunk: &mut Chunk, next_path: &Path| -> Result<(), JournalError> {
        let mut next = recycled
            .try_recv()
            .unwrap_or_else(|_| Chunk::with_capacity());
        next.path = next_path.to_path_buf();
        let full = std::mem::replace(chunk, next);
        let send_started = Instant::now();
        sender.send(full).map_err(|_| JournalError::Failed {
            reason: "recovery stopped before the journal was read".into(),
        })?;
        blocked += send_started.elapsed();
        Ok(())
    };
    let scan = scan_journal_needing(dir, options, needed_lsn, |info: &SegmentInfo, logged| {
        if segment != Some(info.first_lsn) {
            if !chunk.records.is_empty() {
                send(&mut chunk, &info.path)?;
            }
            chunk.path = info.path.clone();
            segment = Some(info.first_lsn);
        }
        if logged.record.kind == RecordKind::Outcome {
            // Changes nothing: kept for the idempotency scan, not for the store.
            return Ok(());
        }
        chunk.push(logged);
        if chunk.records.len() == CHUNK_RECORDS {
            let path = chunk.path.clone();
            send(&mut chunk, &path)?;
        }
        Ok(())
    })?;
    if !chunk.records.is_empty() {
        send(&mut chunk, Path::new(""))?;
    }
    let busy = started
        .elapsed()
        .saturating_sub(blocked + scan.read_elapsed);
    Ok(ReaderReport {
        scan,
        decode_elapsed: busy,
    })
}

/// Asks the kernel to start reading the segments (up to [`READAHEAD_BYTES_MAX`]), so
/// the disk reads while the queue is full. Only a hint: errors other than listing the
/// directory are ignored.
fn read_ahead(dir: &Path) -> Result<(), JournalError> {
    use std::os::fd::AsRawFd;
    let mut budget = READAHEAD_BYTES_MAX;
    for info in list_segments(dir)? {
        let Ok(file) = std::fs::File::open(&info.path) else {
            continue;
        };
        let length = file.metadata().map_or(0, |m| m.len()).min(budget);
        // Linux reads at most max(read_ahead_kb, max_sectors_kb) of the device per
        // WILLNEED call (8 MiB here) and ignores the rest of the range: this starts the
        // head of every segment, and the rest is read as `MAP_POPULATE` faults it in.
        // Asking for whole segments (one call per 512 KiB, all at once or two segments
        // ahead of the scan) was measured no faster: the requests' page allocation lands
        // on this thread, and both CPUs are busy (BENCHMARKS.md, 2026-11-29 16:22 UTC).
        // SAFETY: posix_fadvise only reads its integer arguments; the descriptor is open.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                0,
                length as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        budget -= length;
        if budget == 0 {
            break;
        }
    }
    Ok(())
}

/// Applies the reader's chunks to the store by resulting value.
pub(super) struct Replay {
    /// Per partition: the applied LSN before replay; records at or below are skipped.
    /// [`Lsn::MAX`] for a partition the store does not own, so that its records take
    /// the checking pass of `apply`, which refuses them.
    applied_before: Vec<Lsn>,
    /// Per partition: the last LSN replayed.
    replayed_to: Vec<Lsn>,
    results: Vec<OpResult>,
    /// Scratch: the records of a chunk left once those already applied are skipped.
    kept: Vec<Decoded>,
    pub replayed: u64,
    /// Operations handed to the store: one per record in a batch, and each operation
    /// of a slow-path redo: at most four per record replayed (see `apply_in_order`).
    pub store_ops: u64,
    /// Time spent applying to the store.
    pub elapsed: Duration,
    /// Time spent waiting for the reader.
    pub waited: Duration,
}

impl Replay {
    /// Replays onto `store` as it is now (restored from its checkpoints).
    pub fn new(store: &Store) -> Self {
        let partitions = store.partition_count();
        let applied_before = (0..partitions)
            .map(|p| {
                if store.owns(p) {
                    store.applied_lsn(p)
                } else {
                    Lsn::MAX
                }
            })
            .collect();
        Replay {
            applied_before,
            replayed_to: vec![0; partitions as usize],
            results: Vec::with_capacity(CHUNK_RECORDS),
            kept: Vec::with_capacity(CHUNK_RECORDS),
            replayed: 0,
            store_ops: 0,
            elapsed: Duration::ZERO,
            waited: Duration::ZERO,
        }
    }

    /// Applies every chunk `reader` sends, then waits for it and returns its report.
    pub fn run(&mut self, store: &mut Store, reader: Reader) -> Result<ReaderReport, JournalError> {
        loop {
            let wait_started = Instant::now();
            let Some(chunk) = reader.next_chunk() else {
                break;
            };
            self.waited += wait_started.elapsed();
            let started = Instant::now();
            self.apply(store, &chunk)?;
            self.elapsed += started.elapsed();
            reader.recycle(chunk);
        }
        let report = reader.finish()?;
        self.finish(store);
        Ok(report)
    }

    /// Applies the chunk's records in order, skipping those already applied (a record
    /// of a partition not owned is an error). Only the chunks that straddle a
    /// partition's applied LSN (or hold a record of a partition not owned) skip
    /// anything, so the store reads the chunk's records in place unless a first pass
    /// found one to skip.
    fn apply(&mut self, store: &mut Store, chunk: &Chunk) -> Result<(), JournalError> {
        let mut skips = false;
        for record in &chunk.records {
            let partition = record.partition as usize;
            match self.applied_before.get(partition) {
                Some(&applied) if record.lsn > applied => self.replayed_to[partition] = record.lsn,
                _ => skips = true,
            }
        }
        if !skips {
            let applied = self.apply_in_order(store, chunk, &chunk.records);
            self.replayed += chunk.records.len() as u64;
            return applied;
        }
        let mut kept = std::mem::take(&mut self.kept);
        kept.clear();
        for record in &chunk.records {
            if !store.owns(record.partition) {
                return Err(JournalError::InvalidConfig(format!(
                    "{} holds LSN {} of partition {}, which this core does not own",
                    chunk.path.display(),
                    record.lsn,
                    record.partition
                )));
            }
            if record.lsn > self.applied_before[record.partition as usize] {
                kept.push(*record);
            }
        }
        let applied = self.apply_in_order(store, chunk, &kept);
        self.replayed += kept.len() as u64;
        self.kept = kept;
        applied
    }

    /// Applies `records` (the chunk's, or those of them kept) in order. A chunk without
    /// bounds is one store batch. Otherwise the records carrying bounds, which only the
    /// slow path replays exactly, split it into runs: each run without bounds is one
    /// batch, and each bounded record is redone on the slow path between the runs
    /// around it. Records keep their order, and none is applied again because of
    /// another (only a refused one is redone, see [`Replay::apply_run`]).
    fn apply_in_order(
        &mut self,
        store: &mut Store,
        chunk: &Chunk,
        records: &[Decoded],
    ) -> Result<(), JournalError> {
        if chunk.bounds.is_empty() {
            return self.apply_run(store, chunk, records);
        }
        let mut start = 0;
        for (index, record) in records.iter().enumerate() {
            if record.bounds != NO_BOUNDS {
                self.apply_run(store, chunk, &records[start..index])?;
                self.redo(store, chunk, record)?;
                start = index + 1;
            }
        }
        self.apply_run(store, chunk, &records[start..])
    }

    /// Applies `records`, none of which carries bounds, as one store batch; then redoes
    /// on the slow path, in order, each record the store refused that is the last of
    /// its key in `records`, and reports a refused record that is not.
    ///
    /// Why not redo every refused record: the batch went on past a refused record and
    /// applied the later ones, so redoing it afterwards would overtake every later
    /// record of its key the batch applied, putting back a stale value; and applying
    /// the rest of the batch again after each redo would make a chunk quadratic. A
    /// refused record with no later record of its key is overtaken by nothing of its
    /// key, and records of other keys commute with it, so redoing it after the batch
    /// is in-order application. For one that is not the last, in-order application
    /// would need its redo between two batch records; it is reported instead. For the
    /// refusal to expect, a bound's (a `Set` outside the counter's bounds), that is no
    /// loss: the slow path fails on it too, when it puts the counter's bounds back
    /// (`OutOfBounds`). Any other refusal (a full store, say) fails recovery as well.
    fn apply_run(
        &mut self,
        store: &mut Store,
        chunk: &Chunk,
        records: &[Decoded],
    ) -> Result<(), JournalError> {
        let Some(first) = records.first() else {
            return Ok(());
        };
        let ops = RecordOps {
            records,
            keys: &chunk.keys,
        };
        store
            .apply_batch_of(ops, &mut self.results)
            .map_err(|source| replay_refused(chunk, first, source))?;
        self.store_ops += records.len() as u64;
        if self.results.iter().all(|result| result.is_ok()) {
            return Ok(());
        }
        self.redo_refused(store, chunk, records)
    }

    /// The refusals of [`Replay::apply_run`]'s batch: rare, so this may allocate.
    #[cold]
    #[inline(never)]
    fn redo_refused(
        &mut self,
        store: &mut Store,
        chunk: &Chunk,
        records: &[Decoded],
    ) -> Result<(), JournalError> {
        assert_eq!(self.results.len(), records.len());
        // `last_of_key[index]`: no later record in `records` has the same key.
        let mut later_keys = std::collections::HashSet::new();
        let mut last_of_key = vec![false; records.len()];
        for (index, record) in records.iter().enumerate().rev() {
            last_of_key[index] = later_keys.insert(chunk.key(record));
        }
        let results = std::mem::take(&mut self.results);
        let mut redone = Ok(());
        for (index, result) in results.iter().enumerate() {
            let record = &records[index];
            redone = match result {
                Ok(_) => Ok(()),
                Err(_) if last_of_key[index] => self.redo(store, chunk, record),
                Err(source) => Err(replay_refused(chunk, record, *source)),
            };
            if redone.is_err() {
                break;
            }
        }
        self.results = results;
        redone
    }

    /// Replays `record` on the slow path.
    fn redo(
        &mut self,
        store: &mut Store,
        chunk: &Chunk,
        record: &Decoded,
    ) -> Result<(), JournalError> {
        let ops = replay_slow(store, record, chunk.key(record), chunk.bounds(record))
            .map_err(|source| replay_refused(chunk, record, source))?;
        self.store_ops += ops;
        Ok(())
    }

    fn finish(&self, store: &mut Store) {
        for (partition, &lsn) in self.replayed_to.iter().enumerate() {
            if lsn > 0 {
                store.set_applied_lsn(partition as u32, lsn);
            }
        }
    }
}

/// Decoded records as the store's batch pipeline reads them, by resulting value, with
/// their keys in `keys` (their chunk's): no `Op` is built per record.
#[derive(Clone, Copy)]
struct RecordOps<'c> {
    records: &'c [Decoded],
    keys: &'c [u8],
}

/// The key of `record` in its chunk's `keys`.
#[inline(always)]
fn key_in<'k>(keys: &'k [u8], record: &Decoded) -> &'k [u8] {
    let start = record.key_start as usize;
    &keys[start..start + usize::from(record.key_len)]
}

/// A record the fast path can replay: a set of a value on a counter without bounds.
#[inline(always)]
fn fast_replay<'k>(keys: &'k [u8], record: &Decoded) -> Option<FastOp<'k>> {
    (record.kind != RecordKind::Delete && record.bounds == NO_BOUNDS).then(|| FastOp {
        key: key_in(keys, record),
        operand: record.value,
        set: true,
        policy: BoundPolicy::Reject,
    })
}

impl<'c> BatchOps<'c> for RecordOps<'c> {
    /// A record and its chunk's keys.
    type Item = (&'c Decoded, &'c [u8]);

    #[inline(always)]
    fn len(self) -> usize {
        self.records.len()
    }

    #[inline(always)]
    fn items(self) -> impl ExactSizeIterator<Item = (&'c Decoded, &'c [u8])> {
        let keys = self.keys;
        self.records.iter().map(move |record| (record, keys))
    }

    #[inline(always)]
    fn item(self, index: usize) -> (&'c Decoded, &'c [u8]) {
        (&self.records[index], self.keys)
    }

    #[inline(always)]
    fn key_of((record, keys): (&'c Decoded, &'c [u8])) -> &'c [u8] {
        key_in(keys, record)
    }

    #[inline(always)]
    fn fast_of((record, keys): (&'c Decoded, &'c [u8])) -> Option<FastOp<'c>> {
        fast_replay(keys, record)
    }

    fn op_of((record, keys): (&'c Decoded, &'c [u8])) -> Op<'c> {
        replay_op(record, key_in(keys, record))
    }
}

/// The one operation replaying `record` takes when no bound is in the way. Records
/// carrying bounds never reach a batch (`apply_in_order` replays them on the slow
/// path); were one to, its `SetBounds` is one the store refuses (floor above ceiling),
/// so it is redone on the slow path rather than applied without its bounds.
fn replay_op<'k>(record: &Decoded, key: &'k [u8]) -> Op<'k> {
    match record.kind {
        RecordKind::Delete => Op::Delete { key },
        _ if record.bounds != NO_BOUNDS => Op::SetBounds {
            key,
            floor: Some(i64::MAX),
            ceiling: Some(i64::MIN),
        },
        _ => Op::Set {
            key,
            value: record.value,
            policy: BoundPolicy::Reject,
        },
    }
}

/// Sets value and bounds exactly: clear the bounds, set the value, set the bounds the
/// record carries (or the ones the counter had). Returns how many operations it
/// applied.
fn replay_slow(
    store: &mut Store,
    record: &Decoded,
    key: &[u8],
    bounds: Option<DecodedBounds>,
) -> Result<u64, crate::OpError> {
    let (floor, ceiling) = match bounds {
        Some(bounds) => bounds,
        None => store.bounds(key)?,
    };
    store.apply(&Op::SetBounds {
        key,
        floor: None,
        ceiling: None,
    })?;
    store.apply(&Op::Set {
        key,
        value: record.value,
        policy: BoundPolicy::Reject,
    })?;
    if floor.is_none() && ceiling.is_none() {
        return Ok(2);
    }
    store.apply(&Op::SetBounds {
        key,
        floor,
        ceiling,
    })?;
    Ok(3)
}

/// The error for `record` of `chunk`, which the store refused with `source`.
fn replay_refused(chunk: &Chunk, record: &Decoded, source: crate::OpError) -> JournalError {
    JournalError::ReplayRefused {
        lsn: record.lsn,
        path: chunk.path.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::journal::record::{Bounds, Record};
    use crate::{key_hash, partition_of_hash, DataDir};

    const PARTITIONS: u32 = 4;

    /// A counter as by-value replay leaves it: value, floor, ceiling.
    type Model = HashMap<Vec<u8>, (i64, Option<i64>, Option<i64>)>;

    fn open_store(dir: &Path) -> Store {
        let data = DataDir::open_or_create(dir, Some(PARTITIONS)).unwrap();
        Store::open(&data, 0..PARTITIONS).unwrap()
    }

    /// Appends a record of `key` at `lsn` to `chunk`.
    fn push(
        chunk: &mut Chunk,
        lsn: Lsn,
        kind: RecordKind,
        key: &[u8],
        value: i64,
        bounds: Option<Bounds>,
    ) {
        let record = Record {
            partition: partition_of_hash(key_hash(key), PARTITIONS),
            kind,
            key,
            operand: value,
            value,
            bounds,
            idempotency: None,
        };
        chunk.push(&LoggedRecord { lsn, record });
    }

    /// A small deterministic generator (xorshift64).
    struct Random(u64);

    impl Random {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    /// A chunk of `count` records of a consistent history on 64 keys (every value
    /// within the bounds its counter has then), records with bounds and without
    /// interleaved on the same keys, and the model of the state they leave.
    fn mixed_chunk(count: usize, seed: u64) -> (Chunk, Model) {
        let mut random = Random(seed);
        let mut chunk = Chunk::with_capacity();
        let mut model = Model::new();
        for lsn in 1..=count as Lsn {
            let key = format!("counter-{}", random.below(64)).into_bytes();
            let (value, floor, ceiling) = model.get(&key).copied().unwrap_or((0, None, None));
            match random.below(8) {
                0 => {
                    push(&mut chunk, lsn, RecordKind::Delete, &key, value, None);
                    model.remove(&key);
                }
                1..=3 => {
                    // New bounds around the value (or none), as a `SetBounds` leaves.
                    let floor = (random.below(3) > 0).then(|| value - random.below(50) as i64);
                    let ceiling = (random.below(3) > 0).then(|| value + random.below(50) as i64);
                    let bounds = Some(Bounds { floor, ceiling });
                    push(&mut chunk, lsn, RecordKind::SetBounds, &key, value, bounds);
                    model.insert(key, (value, floor, ceiling));
                }
                _ => {
                    // A new value within the bounds the counter has.
                    let low = floor.unwrap_or(value - 100);
                    let high = ceiling.unwrap_or(value + 100);
                    let value = low + random.below((high - low + 1) as u64) as i64;
                    push(&mut chunk, lsn, RecordKind::Set, &key, value, None);
                    model.insert(key, (value, floor, ceiling));
                }
            }
        }
        (chunk, model)
    }

    fn check_against(store: &Store, model: &Model) {
        for index in 0..64 {
            let key = format!("counter-{index}").into_bytes();
            match model.get(&key) {
                Some(&(value, floor, ceiling)) => {
                    assert_eq!(store.get(&key).unwrap(), Some(value), "value of {index}");
                    assert_eq!(
                        store.bounds(&key).unwrap(),
                        (floor, ceiling),
                        "bounds of {index}"
                    );
                }
                None => assert_eq!(store.get(&key).unwrap(), None, "counter {index}"),
            }
        }
    }

    #[test]
    fn bounded_and_plain_records_on_the_same_keys_replay_exactly() {
        for seed in [1, 7, 0x5eed] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open_store(dir.path());
            let (chunk, model) = mixed_chunk(CHUNK_RECORDS, seed);
            let mut replay = Replay::new(&store);
            replay.apply(&mut store, &chunk).unwrap();
            check_against(&store, &model);
            assert_eq!(replay.replayed, CHUNK_RECORDS as u64);
        }
    }

    /// The work is counted, never timed: each record reaches the store at most four
    /// times, where applying the rest of the chunk again after each bounded record
    /// took about `CHUNK_RECORDS² / 2` operations.
    #[test]
    fn replay_hands_each_record_to_the_store_a_bounded_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(dir.path());
        let mut chunk = Chunk::with_capacity();
        for lsn in 1..=CHUNK_RECORDS as Lsn {
            let key = format!("rate-limit-{lsn}").into_bytes();
            let bounds = Some(Bounds {
                floor: Some(0),
                ceiling: Some(100),
            });
            push(&mut chunk, lsn, RecordKind::SetBounds, &key, 0, bounds);
        }
        let mut replay = Replay::new(&store);
        replay.apply(&mut store, &chunk).unwrap();
        // Clear the bounds, set the value, set the bounds: three each, no batch.
        assert_eq!(replay.store_ops, 3 * CHUNK_RECORDS as u64);
        assert_eq!(store.bounds(b"rate-limit-1").unwrap(), (Some(0), Some(100)));

        let (chunk, _) = mixed_chunk(CHUNK_RECORDS, 3);
        let mut replay = Replay::new(&store);
        replay.apply(&mut store, &chunk).unwrap();
        assert!(
            replay.store_ops <= 4 * CHUNK_RECORDS as u64,
            "{}",
            replay.store_ops
        );
    }

    #[test]
    fn a_chunk_without_bounds_is_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(dir.path());
        let mut chunk = Chunk::with_capacity();
        for lsn in 1..=CHUNK_RECORDS as Lsn {
            let key = format!("counter-{}", lsn % 100).into_bytes();
            push(&mut chunk, lsn, RecordKind::Set, &key, lsn as i64, None);
        }
        let mut replay = Replay::new(&store);
        replay.apply(&mut store, &chunk).unwrap();
        assert_eq!(replay.store_ops, CHUNK_RECORDS as u64);
        let last = CHUNK_RECORDS as i64;
        assert_eq!(
            store
                .get(format!("counter-{}", last % 100).as_bytes())
                .unwrap(),
            Some(last)
        );
    }

    /// A record without bounds whose value the counter's bounds refuse is reported, not
    /// redone after the batch over the later record of its key.
    #[test]
    fn a_refused_record_followed_by_its_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(dir.path());
        let key = b"bounded";
        store
            .apply(&Op::SetBounds {
                key,
                floor: Some(0),
                ceiling: Some(10),
            })
            .unwrap();
        let mut chunk = Chunk::with_capacity();
        push(&mut chunk, 1, RecordKind::Set, key, 50, None);
        push(&mut chunk, 2, RecordKind::Set, key, 5, None);
        let mut replay = Replay::new(&store);
        let error = replay.apply(&mut store, &chunk).unwrap_err();
        assert!(
            matches!(error, JournalError::ReplayRefused { lsn: 1, .. }),
            "{error:?}"
        );
        assert_eq!(store.get(key).unwrap(), Some(5));
    }
}
