//! Benchmarks of Tally (criterion and gungraun); see `benches/`.
//!
//! This library holds the fixtures the benchmarks share: a store filled with counters in
//! a temporary data directory, and batches of operations on its keys.

use std::path::PathBuf;
use std::time::Instant;

use tally_engine::journal::checkpoint::checkpoint_core;
use tally_engine::journal::record::{decode, Record, RecordKind};
use tally_engine::journal::recovery::{recover, RecoveryOptions};
use tally_engine::journal::{Durability, Journal, JournalError, JournalOptions};
use tally_engine::{partition_of, BoundPolicy, DataDir, Op, OpResult, Store};

/// Operations per benchmark batch: the engine's batch limit.
pub const BATCH_OPS: usize = tally_engine::BATCH_OPS_MAX;

/// A filled store and the keys of a batch. The keys are leaked (`'static`) so the batch's
/// operations can borrow them for the whole benchmark; a fixture is built a few times per
/// process, so the leak is bounded.
pub struct Fixture {
    _directory: tempfile::TempDir,
    pub store: Store,
    pub ops: Vec<Op<'static>>,
    pub results: Vec<OpResult>,
}

/// Key number `index`, `key_bytes` long: its little-endian bytes, then filler.
pub fn key(index: u64, key_bytes: usize) -> Vec<u8> {
    let mut key = vec![b'k'; key_bytes];
    let prefix = key_bytes.min(8);
    key[..prefix].copy_from_slice(&index.to_le_bytes()[..prefix]);
    key
}

/// SplitMix64 step: the benchmark's deterministic key sequence.
pub fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Creates counters `0..counters` (16-byte keys, value 1) in batches of `BATCH_OPS`.
fn load(store: &mut Store, counters: u64) {
    let mut results = Vec::with_capacity(BATCH_OPS);
    let mut next = 0;
    while next < counters {
        let end = (next + BATCH_OPS as u64).min(counters);
        let keys: Vec<Vec<u8>> = (next..end).map(|i| key(i, 16)).collect();
        let ops: Vec<Op> = keys.iter().map(|k| add(k)).collect();
        store.apply_batch(&ops, &mut results).expect("load batch");
        next = end;
    }
}

impl Fixture {
    /// A store with `counters` counters of 16-byte keys over 64 partitions, and a batch of
    /// increments to random existing keys (or all to key 0 if `hot_key`).
    pub fn increments(counters: u64, hot_key: bool) -> Fixture {
        let directory = tempfile::tempdir().expect("temporary directory");
        let dir = DataDir::open_or_create(directory.path(), None).expect("data directory");
        let mut store = Store::open(&dir, 0..dir.partition_count()).expect("store");
        load(&mut store, counters);
        let results = Vec::with_capacity(BATCH_OPS);
        let mut state = 0x7a11;
        let ops = (0..BATCH_OPS)
            .map(|_| {
                let index = if hot_key {
                    0
                } else {
                    split_mix(&mut state) % counters
                };
                add(Box::leak(key(index, 16).into_boxed_slice()))
            })
            .collect();
        Fixture {
            _directory: directory,
            store,
            ops,
            results,
        }
    }

    /// Applies the batch once.
    pub fn apply(&mut self) {
        self.store
            .apply_batch(&self.ops, &mut self.results)
            .expect("batch within the limit");
        debug_assert!(self.results.iter().all(Result::is_ok));
    }
}

fn add(key: &[u8]) -> Op<'_> {
    Op::Add {
        key,
        delta: 1,
        policy: BoundPolicy::Reject,
    }
}

/// Journal records as replay reads them: `BATCH_OPS` encoded records of increments to
/// random 16-byte keys over 10M counters (the recovery benchmark's shape), back to back.
pub struct RecordsFixture {
    pub bytes: Vec<u8>,
}

impl RecordsFixture {
    pub fn new() -> RecordsFixture {
        let mut bytes = vec![0u8; BATCH_OPS * 64];
        let mut state = 0x10c5;
        let mut at = 0;
        for lsn in 1..=BATCH_OPS as u64 {
            let key = key(split_mix(&mut state) % 10_000_000, 16);
            let record = Record {
                partition: (lsn % 16) as u32,
                kind: RecordKind::Add,
                key: &key,
                operand: 1,
                value: lsn as i64,
                bounds: None,
                idempotency: None,
            };
            at += record.encode(lsn, &mut bytes[at..]);
        }
        bytes.truncate(at);
        RecordsFixture { bytes }
    }

    /// Decodes and checks every record (as the recovery scan does); returns the sum of
    /// their LSNs and values, so nothing is optimized away.
    pub fn decode_all(&self) -> u64 {
        let mut at = 0;
        let mut sum = 0u64;
        while at < self.bytes.len() {
            let (logged, length) = decode(&self.bytes[at..]).expect("a valid record");
            sum = sum
                .wrapping_add(logged.lsn)
                .wrapping_add(logged.record.value as u64);
            at += length;
        }
        sum
    }
}

impl Default for RecordsFixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters in the checkpoint of a [`ReplayFixture`].
pub const REPLAY_COUNTERS: u64 = 10_000;
/// Partitions of a [`ReplayFixture`]'s data directory (`tally-bench recovery`'s default).
const REPLAY_PARTITIONS: u32 = 16;

/// A data directory as an unclean stop leaves it, and a store opened on it for the
/// recovery to be measured: [`REPLAY_COUNTERS`] counters (16-byte keys) in a checkpoint,
/// then `BATCH_OPS` increments of random ones in the journal after it (the shape of
/// `tally-bench recovery`, smaller).
pub struct ReplayFixture {
    _directory: tempfile::TempDir,
    path: PathBuf,
    store: Store,
}

impl ReplayFixture {
    pub fn new() -> ReplayFixture {
        let directory = tempfile::tempdir().expect("temporary directory");
        let path = directory.path().to_path_buf();
        let dir = DataDir::open_or_create(&path, Some(REPLAY_PARTITIONS)).expect("data dir");
        let mut store = Store::open(&dir, 0..REPLAY_PARTITIONS).expect("store");
        let empty = recover(&path, &mut store, 0, &RecoveryOptions::default()).expect("empty");
        let options = JournalOptions {
            next_lsn_min: empty.next_lsn,
            ..JournalOptions::default()
        };
        let mut journal = Journal::open(&path, 0, options).expect("journal");
        load(&mut store, REPLAY_COUNTERS);
        checkpoint_core(&path, &store, &mut journal, 0, None).expect("checkpoint");
        let mut state = 0x5eed;
        for _ in 0..BATCH_OPS {
            let key = key(split_mix(&mut state) % REPLAY_COUNTERS, 16);
            let key = key.as_slice();
            let op = add(key);
            let outcome = store.apply(&op).expect("increment");
            let partition = partition_of(key, REPLAY_PARTITIONS);
            let record = Record::from_op(&op, &outcome, partition).expect("a mutation");
            let lsn = loop {
                match journal.append(&record, Durability::Relaxed) {
                    Err(JournalError::BufferFull { .. }) => {
                        journal.poll().expect("poll");
                    }
                    other => break other.expect("append"),
                }
            };
            store.set_applied_lsn(partition, lsn);
            journal.submit_if_due(Instant::now()).expect("submit");
            journal.poll().expect("poll");
        }
        journal.sync().expect("sync");
        drop(journal);
        drop(store); // no close_clean: an unclean stop, as after kill -9
        let store = Store::open(&dir, 0..REPLAY_PARTITIONS).expect("store");
        ReplayFixture {
            _directory: directory,
            path,
            store,
        }
    }

    /// Recovers core 0 (all partitions): restores the checkpoint and replays the tail.
    /// Returns the records replayed.
    pub fn recover(&mut self) -> u64 {
        recover(&self.path, &mut self.store, 0, &RecoveryOptions::default())
            .expect("recovery")
            .records_replayed
    }
}

impl Default for ReplayFixture {
    fn default() -> Self {
        Self::new()
    }
}
