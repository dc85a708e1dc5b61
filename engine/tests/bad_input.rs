//! Bad input and damaged files: each a clear error, never a panic. Also the clean and
//! unclean restart paths, and checkpoints.

use std::fs::{self, OpenOptions};
use std::path::Path;

use tally_engine::{
    BoundPolicy, DataDir, EngineError, Op, OpError, Store, BATCH_OPS_MAX, KEY_BYTES_MAX,
};

fn add(key: &[u8], delta: i64) -> Op<'_> {
    Op::Add {
        key,
        delta,
        policy: BoundPolicy::Reject,
    }
}

fn filled_store(path: &Path, partition_count: u32, counters: u64) -> Store {
    let dir = DataDir::open_or_create(path, Some(partition_count)).unwrap();
    let mut store = Store::open(&dir, 0..partition_count).unwrap();
    for index in 0..counters {
        let key = format!("key-{index}-{}", "x".repeat((index % 40) as usize));
        store.apply(&add(key.as_bytes(), index as i64)).unwrap();
    }
    store
}

#[test]
fn invalid_keys_are_rejected() {
    let temp = tempfile::tempdir().unwrap();
    let mut store = filled_store(temp.path(), 4, 0);
    let long = vec![b'k'; KEY_BYTES_MAX + 1];
    assert_eq!(
        store.apply(&add(b"", 1)),
        Err(OpError::InvalidKey { length: 0 })
    );
    assert_eq!(
        store.apply(&add(&long, 1)),
        Err(OpError::InvalidKey { length: 256 })
    );
    assert_eq!(store.get(&long), Err(OpError::InvalidKey { length: 256 }));
    assert_eq!(store.bounds(b""), Err(OpError::InvalidKey { length: 0 }));
    let max = vec![b'k'; KEY_BYTES_MAX];
    assert_eq!(store.apply(&add(&max, 5)).unwrap().value, 5);
    let mut results = Vec::new();
    store
        .apply_batch(&[add(b"", 1), add(b"ok", 2)], &mut results)
        .unwrap();
    assert_eq!(results[0], Err(OpError::InvalidKey { length: 0 }));
    assert_eq!(results[1].unwrap().value, 2);
    assert_eq!(store.counter_count(), 2);
}

#[test]
fn a_batch_over_the_limit_is_rejected_whole() {
    let temp = tempfile::tempdir().unwrap();
    let mut store = filled_store(temp.path(), 4, 0);
    let ops = vec![add(b"k", 1); BATCH_OPS_MAX + 1];
    let mut results = Vec::new();
    // The hashes a journaling caller reads back are the last batch's, or none.
    store
        .apply_batch(&[add(b"a", 1), add(b"", 1)], &mut results)
        .unwrap();
    assert_eq!(
        store.last_batch_hashes(),
        [tally_engine::key_hash(b"a"), tally_engine::key_hash(b"")]
    );
    let error = store.apply_batch(&ops, &mut results).unwrap_err();
    assert!(store.last_batch_hashes().is_empty());
    assert_eq!(
        error,
        OpError::BatchTooLarge {
            count: BATCH_OPS_MAX + 1,
            max: BATCH_OPS_MAX
        }
    );
    assert_eq!(store.get(b"k").unwrap(), None);
    store
        .apply_batch(&ops[..BATCH_OPS_MAX], &mut results)
        .unwrap();
    assert_eq!(store.get(b"k").unwrap(), Some(BATCH_OPS_MAX as i64));
}

#[test]
fn keys_of_partitions_not_owned_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let dir = DataDir::open_or_create(temp.path(), Some(8)).unwrap();
    let mut store = Store::open(&dir, [3]).unwrap();
    assert!(store.owns(3) && !store.owns(2));
    let foreign = (0..1000u32)
        .map(|i| format!("k{i}"))
        .find(|k| tally_engine::partition_of(k.as_bytes(), 8) != 3)
        .unwrap();
    let partition = tally_engine::partition_of(foreign.as_bytes(), 8);
    assert_eq!(
        store.apply(&add(foreign.as_bytes(), 1)),
        Err(OpError::NotOwned { partition })
    );
    assert!(matches!(
        Store::open(&dir, [8]),
        Err(EngineError::InvalidConfig(_))
    ));
}

#[test]
fn another_partition_count_is_a_mismatch() {
    let temp = tempfile::tempdir().unwrap();
    DataDir::open_or_create(temp.path(), Some(16)).unwrap();
    let error = DataDir::open_or_create(temp.path(), Some(64)).unwrap_err();
    assert!(matches!(
        error,
        EngineError::PartitionCountMismatch {
            found: 16,
            requested: 64,
            ..
        }
    ));
    assert_eq!(
        DataDir::open_or_create(temp.path(), None)
            .unwrap()
            .partition_count(),
        16
    );
    let bad = tempfile::tempdir().unwrap();
    assert!(matches!(
        DataDir::open_or_create(bad.path(), Some(0)),
        Err(EngineError::InvalidConfig(_))
    ));
}

#[test]
fn a_corrupted_superblock_is_reported() {
    let temp = tempfile::tempdir().unwrap();
    DataDir::open_or_create(temp.path(), Some(4)).unwrap();
    let path = temp.path().join("superblock");
    let mut bytes = fs::read(&path).unwrap();
    bytes[13] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        DataDir::open_or_create(temp.path(), None),
        Err(EngineError::Corrupted { .. })
    ));
    fs::write(&path, &bytes[..10]).unwrap();
    assert!(matches!(
        DataDir::open_or_create(temp.path(), None),
        Err(EngineError::Corrupted { .. })
    ));
}

/// The largest table file of partition 0.
fn table_file(path: &Path) -> std::path::PathBuf {
    fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("p00000.t")
        })
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap()
}

#[test]
fn a_truncated_arena_file_is_reported() {
    let temp = tempfile::tempdir().unwrap();
    filled_store(temp.path(), 2, 2000).close_clean().unwrap();
    let table = table_file(temp.path());
    let length = fs::metadata(&table).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&table)
        .unwrap()
        .set_len(length - 64)
        .unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
}

/// A cleanly closed store of 2 partitions in `path` whose header of `partition` is then
/// changed by `patch`; returns the header's path and its patched bytes.
fn patched_partition_header(
    path: &Path,
    partition: u32,
    patch: impl FnOnce(&mut [u8]),
) -> (std::path::PathBuf, Vec<u8>) {
    filled_store(path, 2, 100).close_clean().unwrap();
    let meta = path.join(format!("p{partition:05}.meta"));
    let mut bytes = fs::read(&meta).unwrap();
    patch(&mut bytes);
    fs::write(&meta, &bytes).unwrap();
    (meta, bytes)
}

#[test]
fn a_corrupted_partition_header_is_reported() {
    let temp = tempfile::tempdir().unwrap();
    let (meta, bytes) = patched_partition_header(temp.path(), 1, |bytes| bytes[75] ^= 1);
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    assert!(matches!(
        Store::open(&dir, 0..2),
        Err(EngineError::Corrupted { .. })
    ));
    fs::write(&meta, &bytes[..100]).unwrap();
    assert!(matches!(
        Store::open(&dir, 0..2),
        Err(EngineError::Corrupted { .. })
    ));
}

/// A data directory written before cuckoo addressing (partition header version 1) holds
/// its counters in other places: refused, with the reason, rather than read wrongly.
#[test]
fn a_partition_header_of_the_linear_probing_format_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    patched_partition_header(temp.path(), 0, |bytes| {
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    });
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    assert!(
        matches!(error, EngineError::Corrupted { offset: 8, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("version 1"), "{error}");
}

/// A damaged version number (here one flipped bit) is refused as damage: the message
/// must never advise starting a new data directory, which would throw every counter
/// away, but to restore the file.
#[test]
fn a_damaged_partition_header_version_is_not_advised_away() {
    let temp = tempfile::tempdir().unwrap();
    patched_partition_header(temp.path(), 0, |bytes| bytes[8] ^= 0x40);
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err().to_string();
    assert!(error.contains("damaged"), "{error}");
    assert!(error.contains("Do not delete"), "{error}");
    assert!(!error.contains("start a new"), "{error}");
}

#[test]
fn an_unclean_stop_reopens_and_says_so() {
    let temp = tempfile::tempdir().unwrap();
    let mut store = filled_store(temp.path(), 2, 500);
    store.set_applied_lsn(1, 77);
    drop(store); // no close_clean: as after kill -9.
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let mut store = Store::open(&dir, 0..2).unwrap();
    assert!(!store.was_clean_shutdown());
    assert!(!store.partition_was_clean(1));
    // The files held only the state of the last clean close: the partitions open empty,
    // for recovery to restore from checkpoints and the journal.
    assert_eq!(store.applied_lsn(1), 0);
    assert_eq!(store.counter_count(), 0);
    store.apply(&add(b"after", 5)).unwrap();
    store.set_applied_lsn(1, 78);
    store.close_clean().unwrap();
    let store = Store::open(&dir, 0..2).unwrap();
    assert!(store.was_clean_shutdown());
    assert_eq!(store.get(b"after").unwrap(), Some(5));
    assert_eq!(store.applied_lsn(1), 78);
}

#[test]
fn a_stray_table_file_is_removed_on_open() {
    let temp = tempfile::tempdir().unwrap();
    filled_store(temp.path(), 1, 1000).close_clean().unwrap();
    let stray = temp.path().join("p00000.t00000001");
    fs::write(&stray, [0u8; 64]).unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let store = Store::open(&dir, [0]).unwrap();
    assert!(!stray.exists());
    assert_eq!(store.counter_count(), 1000);
}

#[test]
fn checkpoint_then_restore_brings_a_partition_back() {
    let temp = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let mut store = filled_store(temp.path(), 2, 3000);
    store.set_applied_lsn(0, 42);
    let snapshot: Vec<(Vec<u8>, i64)> = collect(&store, 0);
    store.checkpoint_partition(0, checkpoints.path()).unwrap();
    for (key, _) in &snapshot {
        store.apply(&add(key, 1000)).unwrap();
    }
    store.apply(&add(b"after-the-checkpoint", 1)).unwrap();
    store.set_applied_lsn(0, 99);
    store.restore_partition(0, checkpoints.path()).unwrap();
    assert_eq!(collect(&store, 0), snapshot);
    assert_eq!(store.applied_lsn(0), 42);
    assert!(store.owns(0));
    // A damaged checkpoint is refused and the live partition stays as it was.
    let heap = checkpoints.path().join("p00000.heap");
    let mut bytes = fs::read(&heap).unwrap();
    bytes[300] ^= 0xFF;
    fs::write(&heap, bytes).unwrap();
    store.apply(&add(b"kept", 1)).unwrap();
    let error = store.restore_partition(0, checkpoints.path()).unwrap_err();
    assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
    assert!(store.owns(0));
    assert_eq!(store.get(b"kept").unwrap(), Some(1));
}

fn collect(store: &Store, partition: u32) -> Vec<(Vec<u8>, i64)> {
    let mut counters = Vec::new();
    store.for_each_counter(partition, |key, value, _, _| {
        counters.push((key.to_vec(), value))
    });
    counters.sort();
    counters
}

#[test]
fn restoring_several_partitions_changes_none_if_one_checkpoint_is_damaged() {
    let temp = tempfile::tempdir().unwrap();
    let checkpoints = tempfile::tempdir().unwrap();
    let mut store = filled_store(temp.path(), 4, 4000);
    let snapshots: Vec<_> = (0..4).map(|p| collect(&store, p)).collect();
    for partition in 0..4 {
        store
            .checkpoint_partition(partition, checkpoints.path())
            .unwrap();
    }
    for (key, _) in &snapshots[0] {
        store.apply(&add(key, 1)).unwrap();
    }
    let changed = collect(&store, 0);
    let all: Vec<(u32, &Path)> = (0..4).map(|p| (p, checkpoints.path())).collect();
    let heap = checkpoints.path().join("p00003.heap");
    let original = fs::read(&heap).unwrap();
    let mut damaged = original.clone();
    damaged[300] ^= 0x10;
    fs::write(&heap, damaged).unwrap();
    let error = store.restore_partitions(&all).unwrap_err();
    assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
    assert_eq!(collect(&store, 0), changed, "nothing restored");
    fs::write(&heap, original).unwrap();
    store.restore_partitions(&all).unwrap();
    for partition in 0..4 {
        assert_eq!(collect(&store, partition), snapshots[partition as usize]);
    }
}

// Missing metadata files: other files prove the state existed, so the engine refuses
// to start rather than recreate it empty.

/// The names of the entries of `path`, sorted.
fn entry_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The contents of every file of partition `partition` in `path`, by name.
fn partition_contents(path: &Path, partition: u32) -> Vec<(String, Vec<u8>)> {
    let prefix = format!("p{partition:05}.");
    entry_names(path)
        .into_iter()
        .filter(|name| name.starts_with(&prefix))
        .map(|name| {
            let bytes = fs::read(path.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn a_used_directory_without_its_superblock_is_refused_and_left_alone() {
    let temp = tempfile::tempdir().unwrap();
    filled_store(temp.path(), 2, 500).close_clean().unwrap();
    let superblock = temp.path().join("superblock");
    fs::remove_file(&superblock).unwrap();
    let before = entry_names(temp.path());
    for requested in [None, Some(2), Some(64)] {
        let error = DataDir::open_or_create(temp.path(), requested).unwrap_err();
        assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("superblock"), "{message}");
        assert!(message.contains("missing"), "{message}");
    }
    assert!(!superblock.exists(), "no new superblock written");
    assert_eq!(entry_names(temp.path()), before, "nothing changed");
}

#[test]
fn a_new_or_empty_directory_is_still_created() {
    let temp = tempfile::tempdir().unwrap();
    // A directory that does not exist yet, and an empty one.
    let missing = temp.path().join("new");
    assert_eq!(
        DataDir::open_or_create(&missing, None)
            .unwrap()
            .partition_count(),
        tally_engine::PARTITION_COUNT_DEFAULT
    );
    let empty = temp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    // A fresh file system's mount point holds lost+found: not a Tally file.
    fs::create_dir(empty.join("lost+found")).unwrap();
    let dir = DataDir::open_or_create(&empty, Some(4)).unwrap();
    let mut store = Store::open(&dir, 0..4).unwrap();
    store.apply(&add(b"first", 1)).unwrap();
    store.close_clean().unwrap();
    let dir = DataDir::open_or_create(&empty, None).unwrap();
    assert_eq!(
        Store::open(&dir, 0..4).unwrap().get(b"first").unwrap(),
        Some(1)
    );
}

#[test]
fn a_missing_partition_header_is_refused_and_the_data_files_kept() {
    let temp = tempfile::tempdir().unwrap();
    filled_store(temp.path(), 2, 2000).close_clean().unwrap();
    let meta = temp.path().join("p00000.meta");
    fs::remove_file(&meta).unwrap();
    let before = partition_contents(temp.path(), 0);
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
    assert!(error.to_string().contains("p00000.meta"), "{error}");
    assert_eq!(
        partition_contents(temp.path(), 0),
        before,
        "files untouched"
    );
    assert!(!meta.exists());
}

#[test]
fn a_missing_partition_header_is_refused_while_its_checkpoint_exists() {
    let temp = tempfile::tempdir().unwrap();
    let store = filled_store(temp.path(), 2, 1000);
    let options = tally_engine::journal::JournalOptions::default();
    let mut journal = tally_engine::journal::Journal::open(temp.path(), 0, options).unwrap();
    tally_engine::journal::checkpoint::checkpoint_partition(temp.path(), &store, &mut journal, 1)
        .unwrap();
    drop(journal);
    store.close_clean().unwrap();
    for (name, _) in partition_contents(temp.path(), 1) {
        fs::remove_file(temp.path().join(name)).unwrap();
    }
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    assert!(error.to_string().contains("p00001.meta"), "{error}");
    assert!(partition_contents(temp.path(), 1).is_empty());
}

#[test]
fn a_partition_whose_creation_was_interrupted_is_created_again() {
    let temp = tempfile::tempdir().unwrap();
    let dir = DataDir::open_or_create(temp.path(), Some(1)).unwrap();
    Store::open(&dir, [0]).unwrap().close_clean().unwrap();
    // As a stop between writing the data files and renaming the header into place
    // leaves it: the data files and the temporary header, no header.
    fs::rename(
        temp.path().join("p00000.meta"),
        temp.path().join("p00000.meta.tmp"),
    )
    .unwrap();
    let mut store = Store::open(&dir, [0]).unwrap();
    assert!(store.was_clean_shutdown());
    store.apply(&add(b"k", 3)).unwrap();
    store.close_clean().unwrap();
    assert_eq!(Store::open(&dir, [0]).unwrap().get(b"k").unwrap(), Some(3));
    assert!(!temp.path().join("p00000.meta.tmp").exists());
}

/// A data directory of 2 partitions with a checkpoint of each, whose journal before the
/// checkpoints was released, stopped uncleanly (as by kill -9) with counters in both.
fn checkpointed_released_then_crashed(path: &Path) {
    use tally_engine::journal::checkpoint::checkpoint_core;
    use tally_engine::journal::recovery::{recover, RecoveryOptions};
    use tally_engine::journal::{Durability, Journal, JournalOptions, Record};
    let dir = DataDir::open_or_create(path, Some(2)).unwrap();
    let mut store = Store::open(&dir, 0..2).unwrap();
    let report = recover(path, &mut store, 0, &RecoveryOptions::default()).unwrap();
    let options = JournalOptions {
        segment_bytes_target: 16 << 10,
        next_lsn_min: report.next_lsn,
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(path, 0, options).unwrap();
    for step in 0..3000u64 {
        let key = format!("counter-{}", step % 400).into_bytes();
        let op = add(&key, 1);
        let outcome = store.apply(&op).unwrap();
        let partition = tally_engine::partition_of(&key, 2);
        let record = Record::from_op(&op, &outcome, partition).unwrap();
        let lsn = journal.append(&record, Durability::Durable).unwrap();
        store.set_applied_lsn(partition, lsn);
        journal.submit_if_due(std::time::Instant::now()).unwrap();
        journal.poll().unwrap();
        if step == 1500 {
            journal.sync().unwrap();
        }
    }
    let report = checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    assert!(report.segments_released > 0, "the old journal is released");
    drop(journal);
    drop(store); // no close_clean: an unclean stop
}

#[test]
fn a_missing_checkpoint_is_refused_when_the_journal_before_it_was_released() {
    let temp = tempfile::tempdir().unwrap();
    checkpointed_released_then_crashed(temp.path());
    let checkpoint = temp.path().join("checkpoint").join("0");
    let saved = temp.path().join("saved-checkpoint");
    fs::rename(&checkpoint, &saved).unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("checkpoint"), "{message}");
    assert!(message.contains("partition 0"), "{message}");
    // With the checkpoint back, the directory opens and recovers every counter.
    fs::rename(&saved, &checkpoint).unwrap();
    let mut store = Store::open(&dir, 0..2).unwrap();
    let options = tally_engine::journal::recovery::RecoveryOptions::default();
    tally_engine::journal::recovery::recover(temp.path(), &mut store, 0, &options).unwrap();
    let mut total = 0;
    for partition in 0..2 {
        store.for_each_counter(partition, |_, value, _, _| total += value);
    }
    assert_eq!(total, 3000);
}

// Clean restarts check the data files against the checksums of the clean close.

/// The first live slot of table file `path` (32-byte slots, value at byte 16): its offset.
fn first_live_slot(path: &Path) -> usize {
    let bytes = fs::read(path).unwrap();
    let slot = bytes
        .chunks(32)
        .position(|slot| slot[16..24] != [0; 8])
        .expect("a counter with a nonzero value");
    slot * 32
}

#[test]
fn a_changed_byte_in_a_table_file_is_refused_at_a_clean_open() {
    let temp = tempfile::tempdir().unwrap();
    filled_store(temp.path(), 2, 2000).close_clean().unwrap();
    let table = fs::read_dir(temp.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("p00001.t")
        })
        .unwrap();
    let value_offset = first_live_slot(&table) + 16;
    let mut bytes = fs::read(&table).unwrap();
    bytes[value_offset] ^= 0x01;
    fs::write(&table, &bytes).unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
    let name = table.file_name().unwrap().to_string_lossy().into_owned();
    assert!(error.to_string().contains(&name), "{error}");
    // Put back, it opens.
    bytes[value_offset] ^= 0x01;
    fs::write(&table, &bytes).unwrap();
    assert_eq!(Store::open(&dir, 0..2).unwrap().counter_count(), 2000);
}

#[test]
fn a_changed_byte_in_a_heap_file_is_refused_at_a_clean_open() {
    let temp = tempfile::tempdir().unwrap();
    filled_store(temp.path(), 2, 2000).close_clean().unwrap();
    let heap = temp.path().join("p00000.heap");
    let mut bytes = fs::read(&heap).unwrap();
    bytes[200] ^= 0x20;
    fs::write(&heap, &bytes).unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    assert!(error.to_string().contains("p00000.heap"), "{error}");
}

/// A directory written before data checksums (partition header version 2, bytes 104..128
/// zero) still opens, without the data check; its next clean close writes version 3.
#[test]
fn a_partition_header_without_data_checksums_still_opens() {
    let temp = tempfile::tempdir().unwrap();
    filled_store(temp.path(), 2, 100).close_clean().unwrap();
    for partition in 0..2 {
        let meta = temp.path().join(format!("p{partition:05}.meta"));
        let mut bytes = fs::read(&meta).unwrap();
        assert_eq!(bytes[8..12], 3u32.to_le_bytes());
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        bytes[104..128].fill(0);
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..4088]);
        bytes[4088..].copy_from_slice(&checksum.to_le_bytes());
        fs::write(&meta, &bytes).unwrap();
    }
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let store = Store::open(&dir, 0..2).unwrap();
    assert!(store.was_clean_shutdown());
    assert_eq!(store.counter_count(), 100);
    store.close_clean().unwrap();
    let bytes = fs::read(temp.path().join("p00001.meta")).unwrap();
    assert_eq!(bytes[8..12], 3u32.to_le_bytes());
    assert_ne!(bytes[104..120], [0u8; 16], "checksums recorded");
    assert_eq!(Store::open(&dir, 0..2).unwrap().counter_count(), 100);
}

#[test]
fn a_partition_missing_whole_is_refused_when_the_journal_was_released() {
    let temp = tempfile::tempdir().unwrap();
    checkpointed_released_then_crashed(temp.path());
    // Header, data files and checkpoint gone: the released journal still shows that
    // the directory served with this partition.
    fs::remove_dir_all(temp.path().join("checkpoint").join("0")).unwrap();
    for (name, _) in partition_contents(temp.path(), 0) {
        fs::remove_file(temp.path().join(name)).unwrap();
    }
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..2).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("p00000.meta"), "{message}");
    assert!(message.contains("LSN 1"), "{message}");
    assert!(
        partition_contents(temp.path(), 0).is_empty(),
        "nothing created"
    );
}

/// With the core layout recorded (`<data-dir>/cores`), only the owning core's journal
/// says whether a partition's records were released: an idle core's empty partition,
/// never checkpointed, still reopens after a crash while a busy core released its own
/// segments; once its own core's journal starts above LSN 1 it is refused.
#[test]
fn a_missing_checkpoint_counts_only_the_owning_cores_journal() {
    use tally_engine::journal::{journal_dir, segment_path};
    let temp = tempfile::tempdir().unwrap();
    fs::write(temp.path().join("cores"), "cores 2\n").unwrap();
    let dir = DataDir::open_or_create(temp.path(), Some(4)).unwrap();
    // Opened and never closed clean: partition 0 (core 0) is unclean and empty.
    drop(Store::open(&dir, [0]).unwrap());
    let busy = journal_dir(temp.path(), 1);
    fs::create_dir_all(&busy).unwrap();
    fs::write(segment_path(&busy, 5_000), [0u8; 4096]).unwrap();
    let store = Store::open(&dir, [0]).expect("core 1's release says nothing of partition 0");
    drop(store);
    let own = journal_dir(temp.path(), 0);
    fs::create_dir_all(&own).unwrap();
    fs::write(segment_path(&own, 700), [0u8; 4096]).unwrap();
    let error = Store::open(&dir, [0]).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("checkpoint of partition 0"), "{message}");
    assert!(message.contains("core-0"), "{message}");
}

/// A directory of `partition_count` partitions that has served: counters, a checkpoint
/// of every partition, a clean close.
fn served_directory(path: &Path, partition_count: u32) {
    let store = filled_store(path, partition_count, 200);
    tally_engine::journal::checkpoint::checkpoint_all(path, &store, 0).unwrap();
    store.close_clean().unwrap();
}

fn superblock_of(partition_count: u32) -> Vec<u8> {
    let other = tempfile::tempdir().unwrap();
    DataDir::open_or_create(other.path(), Some(partition_count)).unwrap();
    fs::read(other.path().join("superblock")).unwrap()
}

fn assert_superblock_refused(path: &Path, evidence: &str) {
    let before = fs::read_dir(path).unwrap().count();
    let error = DataDir::open_or_create(path, None).unwrap_err();
    assert!(matches!(error, EngineError::Corrupted { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("superblock"), "{message}");
    assert!(message.contains("not this directory's"), "{message}");
    assert!(message.contains(evidence), "{message}");
    assert_eq!(
        fs::read_dir(path).unwrap().count(),
        before,
        "nothing created"
    );
}

/// Failed before the fix: the superblock of a 16-partition directory on an 8-partition
/// one was trusted, and counters were looked up in the wrong partitions.
#[test]
fn a_superblock_with_more_partitions_than_the_directory_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    served_directory(temp.path(), 8);
    fs::write(temp.path().join("superblock"), superblock_of(16)).unwrap();
    assert_superblock_refused(temp.path(), "0..=7");
}

/// Failed before the fix (the DataDir opened; only a journal record of a partition
/// not owned could refuse later).
#[test]
fn a_superblock_with_fewer_partitions_than_the_directory_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    served_directory(temp.path(), 8);
    fs::write(temp.path().join("superblock"), superblock_of(4)).unwrap();
    assert_superblock_refused(temp.path(), "p00004.meta");
    // A checkpoint alone is evidence too.
    for index in 4..8 {
        for suffix in ["meta", "heap"] {
            fs::remove_file(temp.path().join(format!("p{index:05}.{suffix}"))).unwrap();
        }
    }
    assert_superblock_refused(temp.path(), "checkpoint/4");
}

/// What is not the pattern of a foreign superblock opens as before: a new directory, a
/// first start that stopped before every partition had its header (nothing served), and
/// one missing header in the middle (refused by the partition, naming the header).
#[test]
fn the_superblock_check_refuses_nothing_else() {
    let temp = tempfile::tempdir().unwrap();
    DataDir::open_or_create(temp.path(), Some(8)).unwrap();
    DataDir::open_or_create(temp.path(), None).unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    drop(Store::open(&dir, 0..4).unwrap());
    DataDir::open_or_create(temp.path(), None).unwrap();

    let temp = tempfile::tempdir().unwrap();
    served_directory(temp.path(), 8);
    fs::remove_file(temp.path().join("p00003.meta")).unwrap();
    let dir = DataDir::open_or_create(temp.path(), None).unwrap();
    let error = Store::open(&dir, 0..8).unwrap_err();
    assert!(error.to_string().contains("p00003.meta"), "{error}");
}
