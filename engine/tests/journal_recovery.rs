//! Checkpoints and recovery against the real store: after an unclean stop, restore from
//! checkpoints plus journal replay must give exactly the state of a model.

use std::collections::HashMap;
use std::path::Path;

use tally_engine::journal::checkpoint::checkpoint_core;
use tally_engine::journal::recovery::{recover, RecoveryOptions};
use tally_engine::journal::{
    journal_dir, list_segments, Durability, Journal, JournalOptions, Record,
};
use tally_engine::{key_hash, BoundPolicy, DataDir, Op, Store};

const PARTITIONS: u32 = 4;

type Model = HashMap<Vec<u8>, (i64, Option<i64>, Option<i64>)>;

fn partition_of(key: &[u8]) -> u32 {
    (key_hash(key) % u64::from(PARTITIONS)) as u32
}

/// Applies `op`, journals it if it changed something, as the server does.
fn apply_and_journal(store: &mut Store, journal: &mut Journal, op: &Op) {
    let Ok(outcome) = store.apply(op) else { return };
    let partition = partition_of(op.key());
    let record = Record::from_op(op, &outcome, partition).expect("a mutation");
    let lsn = journal.append(&record, Durability::Durable).unwrap();
    store.set_applied_lsn(partition, lsn);
    journal.submit_if_due(std::time::Instant::now()).unwrap();
    journal.poll().unwrap();
}

fn op_for(step: u64, key: &[u8]) -> Op<'_> {
    match step % 10 {
        0 => Op::Set {
            key,
            value: (step % 1000) as i64,
            policy: BoundPolicy::Reject,
        },
        1 => Op::Delete { key },
        2 => Op::SetBounds {
            key,
            floor: Some(0),
            ceiling: None,
        },
        3 => Op::SetBounds {
            key,
            floor: None,
            ceiling: None,
        },
        4 => Op::Add {
            key,
            delta: -7,
            policy: BoundPolicy::Clamp,
        },
        _ => Op::Add {
            key,
            delta: (step % 13) as i64,
            policy: BoundPolicy::Reject,
        },
    }
}

fn run_ops(store: &mut Store, journal: &mut Journal, steps: std::ops::Range<u64>) {
    for step in steps {
        let key = format!("counter-{}", step.wrapping_mul(2654435761) % 300).into_bytes();
        apply_and_journal(store, journal, &op_for(step, &key));
    }
}

fn snapshot(store: &Store) -> Model {
    let mut model = Model::new();
    for partition in 0..PARTITIONS {
        store.for_each_counter(partition, |key, value, floor, ceiling| {
            model.insert(key.to_vec(), (value, floor, ceiling));
        });
    }
    model
}

fn open_store(path: &Path) -> Store {
    let dir = DataDir::open_or_create(path, Some(PARTITIONS)).unwrap();
    Store::open(&dir, 0..PARTITIONS).unwrap()
}

fn small_segments(next_lsn_min: u64) -> JournalOptions {
    JournalOptions {
        segment_bytes_target: 16 << 10,
        next_lsn_min,
        ..JournalOptions::default()
    }
}

#[test]
fn unclean_stop_recovers_checkpoint_plus_journal_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let first = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(dir.path(), 0, small_segments(first.next_lsn)).unwrap();
    run_ops(&mut store, &mut journal, 0..1_500);
    // However slow the disk, the commit of 1,500 records ends beyond the 16 KiB segment
    // target, so later records start a new segment and the checkpoint has one to release.
    journal.sync().unwrap();
    run_ops(&mut store, &mut journal, 1_500..3_000);
    let report = checkpoint_core(dir.path(), &store, &mut journal, 0, None).unwrap();
    assert_eq!(report.partitions.len(), PARTITIONS as usize);
    assert!(
        report.segments_released > 0,
        "checkpoints release old segments"
    );
    run_ops(&mut store, &mut journal, 3_000..6_000);
    journal.sync().unwrap();
    let expected = snapshot(&store);
    drop(journal);
    drop(store); // no close_clean: an unclean stop

    let mut store = open_store(dir.path());
    assert!(!store.was_clean_shutdown());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(report.partitions_restored.len(), PARTITIONS as usize);
    assert!(report.records_replayed > 0);
    assert_eq!(snapshot(&store), expected);
    // Recovery is idempotent: doing it again from the same files gives the same state.
    drop(store);
    let mut store = open_store(dir.path());
    let again = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
    assert_eq!(again.next_lsn, report.next_lsn);
}

#[test]
fn recovery_continues_after_recovery_and_clean_shutdown_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut next_lsn = 1;
    let mut expected = Model::new();
    for round in 0..4u64 {
        let mut store = open_store(dir.path());
        let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
        assert_eq!(snapshot(&store), expected, "round {round}");
        assert!(report.next_lsn >= next_lsn);
        let mut journal = Journal::open(dir.path(), 0, small_segments(report.next_lsn)).unwrap();
        run_ops(&mut store, &mut journal, round * 1_000..(round + 1) * 1_000);
        next_lsn = journal.sync().unwrap() + 1;
        expected = snapshot(&store);
        if round == 2 {
            store.close_clean().unwrap();
        }
    }
    let mut store = open_store(dir.path());
    recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
}

#[test]
fn retention_keeps_segments_a_follower_needs() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let mut journal = Journal::open(dir.path(), 0, small_segments(1)).unwrap();
    run_ops(&mut store, &mut journal, 0..3_000);
    // Sync first: a commit still waiting could otherwise start a new segment inside the
    // checkpoint's own sync, and the listing below would differ for that reason alone.
    journal.sync().unwrap();
    let before = list_segments(&journal_dir(dir.path(), 0)).unwrap();
    let report = checkpoint_core(dir.path(), &store, &mut journal, 0, Some(1)).unwrap();
    assert_eq!(report.segments_released, 0);
    assert_eq!(list_segments(&journal_dir(dir.path(), 0)).unwrap(), before);
    let report = checkpoint_core(dir.path(), &store, &mut journal, 0, None).unwrap();
    assert_eq!(report.segments_released, before.len() - 1);
}

/// Builds a data directory whose journal before the checkpoint is released (so the
/// checkpoint alone holds those counters), stops it uncleanly, and returns the state.
fn checkpointed_then_crashed(path: &Path) -> Model {
    let mut store = open_store(path);
    let first = recover(path, &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(path, 0, small_segments(first.next_lsn)).unwrap();
    run_ops(&mut store, &mut journal, 0..1_500);
    journal.sync().unwrap();
    run_ops(&mut store, &mut journal, 1_500..3_000);
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert!(report.segments_released > 0);
    run_ops(&mut store, &mut journal, 3_000..4_000);
    journal.sync().unwrap();
    let expected = snapshot(&store);
    drop(journal);
    drop(store); // no close_clean: an unclean stop
    expected
}

fn partition_files(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('p'))
        .collect();
    names.sort();
    names
}

/// A crash at any point of a recovery leaves the partitions unclean, so the next start
/// restores them from their checkpoints again: states after the open, after a partial
/// restore, with the data files gone (what a crash inside a restore leaves), and after
/// a complete recovery that was never closed.
#[test]
fn a_crash_during_recovery_recovers_from_the_checkpoint_again() {
    let dir = tempfile::tempdir().unwrap();
    let expected = checkpointed_then_crashed(dir.path());
    // Crash right after the open.
    drop(open_store(dir.path()));
    // Crash after restoring half the partitions.
    let mut store = open_store(dir.path());
    for partition in 0..PARTITIONS / 2 {
        let found = tally_engine::journal::checkpoint::latest(dir.path(), partition)
            .unwrap()
            .expect("a checkpoint");
        store.restore_partition(partition, &found.dir).unwrap();
    }
    drop(store);
    // Crash inside a restore, after the old data files were removed: only headers left.
    for name in partition_files(dir.path()) {
        if !name.ends_with(".meta") {
            std::fs::remove_file(dir.path().join(name)).unwrap();
        }
    }
    let store = open_store(dir.path());
    for partition in 0..PARTITIONS {
        assert!(
            !store.partition_was_clean(partition),
            "partition {partition}"
        );
    }
    drop(store);
    // Crash after a whole recovery, before any clean close.
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(report.partitions_restored.len(), PARTITIONS as usize);
    assert_eq!(snapshot(&store), expected);
    drop(store);
    let mut store = open_store(dir.path());
    assert!(!store.was_clean_shutdown());
    recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
    // And a clean close after recovery keeps it.
    store.close_clean().unwrap();
    let mut store = open_store(dir.path());
    assert!(store.was_clean_shutdown());
    recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
}

#[test]
fn a_record_of_a_partition_not_owned_refuses_recovery_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let first = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(dir.path(), 0, small_segments(first.next_lsn)).unwrap();
    run_ops(&mut store, &mut journal, 0..200);
    journal.sync().unwrap();
    drop(journal);
    drop(store); // no close_clean: an unclean stop

    // Core 0's journal replayed by a store owning only half of the partitions.
    let data = DataDir::open_or_create(dir.path(), Some(PARTITIONS)).unwrap();
    let mut half = Store::open(&data, 0..PARTITIONS / 2).unwrap();
    let error = recover(dir.path(), &mut half, 0, &RecoveryOptions::default())
        .expect_err("records of partitions it does not own");
    let message = error.to_string();
    assert!(
        message.contains("which this core does not own") && message.contains(".log"),
        "{message}"
    );
}
