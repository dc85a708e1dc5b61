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

    /// Applies `records` (the chunk's, or those of them kept) in order through the
    /// store's batch pipeline; a refused one (a bound in the way) is redone on the slow
    /// path, then the rest is applied again: by-value replay makes repeating the later
    /// records harmless, and it keeps their order after the redo.
    fn apply_in_order(
        &mut self,
        store: &mut Store,
        chunk: &Chunk,
        records: &[Decoded],
    ) -> Result<(), JournalError> {
        let refused = |record: &Decoded, source| JournalError::ReplayRefused {
            lsn: record.lsn,
            path: chunk.path.clone(),
            source,
        };
        let mut start = 0;
        while start < records.len() {
            let ops = RecordOps {
                records: &records[start..],
                keys: &chunk.keys,
            };
            store
                .apply_batch_of(ops, &mut self.results)
                .map_err(|source| refused(&records[start], source))?;
            match self.results.iter().position(|r| r.is_err()) {
                None => break,
                Some(failed) => {
                    let index = start + failed;
                    let record = &records[index];
                    replay_slow(store, record, chunk.key(record), chunk.bounds(record))
                        .map_err(|source| refused(record, source))?;
                    start = index + 1;
                }
            }
        }
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
/// carrying bounds use a `SetBounds` the store refuses (floor above ceiling), which
/// sends them to the slow path, where the bounds are set exactly.
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
/// record carries (or the ones the counter had).
fn replay_slow(
    store: &mut Store,
    record: &Decoded,
    key: &[u8],
    bounds: Option<DecodedBounds>,
) -> Result<(), crate::OpError> {
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
    if floor.is_some() || ceiling.is_some() {
        store.apply(&Op::SetBounds {
            key,
            floor,
            ceiling,
        })?;
    }
    Ok(())
}
