//! Periodic checkpoints write only the partitions that changed, yet still release the
//! journal, and an unclean stop at any point between them recovers the exact state of a
//! model (see the module doc of `journal::checkpoint`, "Skipping unchanged partitions").

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tally_engine::journal::checkpoint::{checkpoint_core, latest, CheckpointReport};
use tally_engine::journal::recovery::{recover, RecoveryOptions};
use tally_engine::journal::{
    journal_dir, list_segments, Durability, Journal, JournalOptions, Record,
};
use tally_engine::{key_hash, BoundPolicy, DataDir, Op, Store};

const PARTITIONS: u32 = 16;
/// The partitions the "hot" phases of the tests change; the others stay idle.
const HOT: [u32; 2] = [3, 11];

type Model = BTreeMap<Vec<u8>, i64>;

fn partition_of(key: &[u8]) -> u32 {
    (key_hash(key) % u64::from(PARTITIONS)) as u32
}

/// `count` distinct keys, all in one of `partitions`.
fn keys_in(partitions: &[u32], count: usize) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("counter-{i}").into_bytes())
        .filter(|key| partitions.contains(&partition_of(key)))
        .take(count)
        .collect()
}

/// Adds to every key `rounds` times, journaling each change and stamping the applied
/// LSN as the server does.
fn add_to(store: &mut Store, journal: &mut Journal, keys: &[Vec<u8>], rounds: u64) {
    for round in 0..rounds {
        for key in keys {
            let op = Op::Add {
                key,
                delta: (round % 7 + 1) as i64,
                policy: BoundPolicy::Reject,
            };
            let outcome = store.apply(&op).unwrap();
            let partition = partition_of(key);
            let record = Record::from_op(&op, &outcome, partition).expect("a mutation");
            let lsn = journal.append(&record, Durability::Durable).unwrap();
            store.set_applied_lsn(partition, lsn);
            journal.submit_if_due(std::time::Instant::now()).unwrap();
            journal.poll().unwrap();
        }
    }
}

/// `bursts` bursts of 20 rounds of `add_to` on `keys`, each synced: with the small
/// segment target of these tests, the journal rolls to new segments in between.
fn roll_segments(store: &mut Store, journal: &mut Journal, keys: &[Vec<u8>], bursts: usize) {
    for _ in 0..bursts {
        add_to(store, journal, keys, 20);
        journal.sync().unwrap();
    }
}

fn snapshot(store: &Store) -> Model {
    let mut model = Model::new();
    for partition in 0..PARTITIONS {
        store.for_each_counter(partition, |key, value, _, _| {
            model.insert(key.to_vec(), value);
        });
    }
    model
}

fn open_store(path: &Path) -> Store {
    let dir = DataDir::open_or_create(path, Some(PARTITIONS)).unwrap();
    Store::open(&dir, 0..PARTITIONS).unwrap()
}

/// The store of `path`, recovered, and its journal after the recovery, with segments
/// of about `segment_bytes_target`.
fn open_recovered(path: &Path, segment_bytes_target: u64) -> (Store, Journal) {
    let mut store = open_store(path);
    let recovered = recover(path, &mut store, 0, &RecoveryOptions::default()).unwrap();
    let journal = open_journal(path, recovered.next_lsn, segment_bytes_target);
    (store, journal)
}

fn open_journal(path: &Path, next_lsn: u64, segment_bytes_target: u64) -> Journal {
    let options = JournalOptions {
        segment_bytes_target,
        next_lsn_min: next_lsn,
        ..JournalOptions::default()
    };
    Journal::open(path, 0, options).unwrap()
}

fn written(report: &CheckpointReport) -> BTreeSet<u32> {
    report
        .partitions
        .iter()
        .map(|info| info.partition)
        .collect()
}

/// The inode of each partition's checkpoint directory and position file: a checkpoint
/// written anew gets new ones.
fn inodes(path: &Path) -> BTreeMap<u32, (u64, u64)> {
    (0..PARTITIONS)
        .map(|partition| {
            let dir = path.join("checkpoint").join(partition.to_string());
            let position = dir.join("journal-position");
            let dir_inode = std::fs::metadata(&dir).unwrap().ino();
            (
                partition,
                (dir_inode, std::fs::metadata(position).unwrap().ino()),
            )
        })
        .collect()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// An unclean stop now: the data directory as the disk holds it (the journal was
/// synced by the caller), copied aside, recovered, and compared with the model.
fn crash_here_recovers(path: &Path, expected: &Model, label: &str) {
    let crashed = tempfile::tempdir().unwrap();
    copy_tree(path, crashed.path());
    let mut store = open_store(crashed.path());
    assert!(!store.was_clean_shutdown(), "{label}");
    recover(crashed.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(&snapshot(&store), expected, "{label}");
}

#[test]
fn only_changed_partitions_are_written_and_every_crash_point_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    // Large segments: nothing becomes releasable, so idle partitions are not touched.
    let (mut store, mut journal) = open_recovered(path, 64 << 20);
    let all_keys = keys_in(&(0..PARTITIONS).collect::<Vec<_>>(), 400);
    add_to(&mut store, &mut journal, &all_keys, 2);
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert_eq!(
        written(&report).len(),
        PARTITIONS as usize,
        "first round writes all"
    );
    crash_here_recovers(path, &snapshot(&store), "after the first round");
    let before = inodes(path);
    let positions_before: Vec<_> = (0..PARTITIONS)
        .map(|p| latest(path, p).unwrap().unwrap())
        .collect();

    let hot_keys = keys_in(&HOT, 100);
    add_to(&mut store, &mut journal, &hot_keys, 3);
    journal.sync().unwrap();
    crash_here_recovers(path, &snapshot(&store), "hot changes, before the round");
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert_eq!(written(&report), BTreeSet::from(HOT));
    assert!(report.positions_advanced.is_empty());
    assert_eq!(
        report.partitions_unchanged,
        (PARTITIONS as usize) - HOT.len()
    );
    let after = inodes(path);
    for partition in 0..PARTITIONS {
        let info = latest(path, partition).unwrap().unwrap();
        if HOT.contains(&partition) {
            assert_ne!(
                before[&partition], after[&partition],
                "partition {partition}"
            );
            assert!(info.covered_lsn > positions_before[partition as usize].covered_lsn);
        } else {
            assert_eq!(
                before[&partition], after[&partition],
                "partition {partition}"
            );
            assert_eq!(info, positions_before[partition as usize]);
        }
    }
    crash_here_recovers(path, &snapshot(&store), "after the selective round");

    // A round with nothing changed writes nothing.
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert!(report.partitions.is_empty() && report.positions_advanced.is_empty());
    assert_eq!(inodes(path), after);

    // Now idle partitions change (after their old checkpoints), then a crash.
    let cold_keys = keys_in(&[0, 7, 15], 60);
    add_to(&mut store, &mut journal, &cold_keys, 2);
    add_to(&mut store, &mut journal, &hot_keys, 1);
    journal.sync().unwrap();
    crash_here_recovers(path, &snapshot(&store), "cold changes, before the round");
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert_eq!(written(&report), BTreeSet::from([0, 3, 7, 11, 15]));
    add_to(&mut store, &mut journal, &all_keys, 1);
    journal.sync().unwrap();
    crash_here_recovers(
        path,
        &snapshot(&store),
        "after the last round and more writes",
    );
}

#[test]
fn segments_are_released_while_most_partitions_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let (mut store, mut journal) = open_recovered(path, 16 << 10);
    let all_keys = keys_in(&(0..PARTITIONS).collect::<Vec<_>>(), 300);
    add_to(&mut store, &mut journal, &all_keys, 1);
    checkpoint_core(path, &store, &mut journal, 0, None).unwrap();

    // Only the hot partitions change, over many segments (a sync between batches lets
    // the journal roll to a new segment past its small target).
    let hot_keys = keys_in(&HOT, 50);
    roll_segments(&mut store, &mut journal, &hot_keys, 6);
    let segments_before = list_segments(&journal_dir(path, 0)).unwrap().len();
    assert!(segments_before > 2, "the test needs segments to release");
    let before = inodes(path);
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert_eq!(written(&report), BTreeSet::from(HOT));
    // The idle partitions' checkpoints stood below the segments: their positions alone
    // moved up, and the journal is bounded as if every partition had been written.
    let advanced: BTreeSet<u32> = report
        .positions_advanced
        .iter()
        .map(|i| i.partition)
        .collect();
    let idle: BTreeSet<u32> = (0..PARTITIONS).filter(|p| !HOT.contains(p)).collect();
    assert_eq!(advanced, idle);
    assert_eq!(report.segments_released, segments_before - 1);
    assert_eq!(list_segments(&journal_dir(path, 0)).unwrap().len(), 1);
    let after = inodes(path);
    for partition in &idle {
        // Same checkpoint directory (data files kept), new position file.
        assert_eq!(
            before[partition].0, after[partition].0,
            "partition {partition}"
        );
        assert_ne!(
            before[partition].1, after[partition].1,
            "partition {partition}"
        );
    }
    crash_here_recovers(
        path,
        &snapshot(&store),
        "after release with idle partitions",
    );

    // With one segment, nothing is releasable: idle partitions are left alone. (Whether
    // the commit of these records starts a new segment depends on how the disk groups
    // them; only a round that still finds one segment can show it.)
    add_to(&mut store, &mut journal, &hot_keys, 1);
    journal.sync().unwrap();
    let one_segment = list_segments(&journal_dir(path, 0)).unwrap().len() == 1;
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert_eq!(written(&report), BTreeSet::from(HOT));
    if one_segment {
        assert!(report.positions_advanced.is_empty());
    }
    // A follower's retention blocks the release: idle positions are not moved for it.
    roll_segments(&mut store, &mut journal, &hot_keys, 4);
    let report = checkpoint_core(path, &store, &mut journal, 0, Some(1)).unwrap();
    assert_eq!(report.segments_released, 0);
    assert!(report.positions_advanced.is_empty());
    // Idle partitions then change after the advance, and a crash.
    let cold_keys = keys_in(&[1, 2], 40);
    add_to(&mut store, &mut journal, &cold_keys, 3);
    journal.sync().unwrap();
    crash_here_recovers(
        path,
        &snapshot(&store),
        "idle partitions changed after an advance",
    );
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert!(report.segments_released > 0);
    assert_eq!(written(&report), BTreeSet::from([1, 2]));
    crash_here_recovers(path, &snapshot(&store), "after the last release");
}

/// A crash between the renames of a round leaves `<p>.old` only; a crash while a
/// position moves up leaves `journal-position.tmp` beside the old one. Both recover,
/// and the next round repairs them.
#[test]
fn interrupted_swaps_recover_and_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let (mut store, mut journal) = open_recovered(path, 16 << 10);
    let all_keys = keys_in(&(0..PARTITIONS).collect::<Vec<_>>(), 300);
    add_to(&mut store, &mut journal, &all_keys, 1);
    checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    let root = path.join("checkpoint");
    std::fs::rename(root.join("5"), root.join("5.old")).unwrap();
    let stale = latest(path, 6).unwrap().unwrap();
    std::fs::write(stale.dir.join("journal-position.tmp"), b"torn").unwrap();
    let hot_keys = keys_in(&HOT, 50);
    roll_segments(&mut store, &mut journal, &hot_keys, 4);
    crash_here_recovers(path, &snapshot(&store), "interrupted swaps");
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert!(
        written(&report).contains(&5),
        "only <p>.old left: written anew"
    );
    assert!(!root.join("5.old").exists());
    assert!(report.segments_released > 0);
    assert!(latest(path, 6).unwrap().unwrap().covered_lsn > stale.covered_lsn);
    crash_here_recovers(path, &snapshot(&store), "after the repairing round");
}

/// Empty partitions that never had a checkpoint cost a round nothing while no segment
/// can be released (a new directory's first stop writes only what holds counters);
/// once one can, they get their checkpoint, so the release is not held back.
#[test]
fn empty_partitions_get_a_checkpoint_only_when_a_release_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let (mut store, mut journal) = open_recovered(path, 16 << 10);
    let hot_keys = keys_in(&HOT, 40);
    add_to(&mut store, &mut journal, &hot_keys, 1);
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert_eq!(written(&report), BTreeSet::from(HOT));
    assert_eq!(report.partitions_unchanged, (PARTITIONS - 2) as usize);
    assert!(
        latest(path, 0).unwrap().is_none(),
        "nothing written for an empty one"
    );
    crash_here_recovers(
        path,
        &snapshot(&store),
        "empty partitions without checkpoint",
    );

    // Enough records, synced in between, for the journal to roll past its small target.
    roll_segments(&mut store, &mut journal, &hot_keys, 6);
    assert!(list_segments(&journal_dir(path, 0)).unwrap().len() > 1);
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert_eq!(
        written(&report).len(),
        PARTITIONS as usize,
        "the empty ones too"
    );
    assert!(report.segments_released > 0);
    crash_here_recovers(path, &snapshot(&store), "after the release");
}
