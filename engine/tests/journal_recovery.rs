//! Checkpoints and recovery against the real store: after an unclean stop, restore from
//! checkpoints plus journal replay must give exactly the state of a model.

use std::collections::HashMap;
use std::path::Path;

use tally_engine::journal::checkpoint::checkpoint_core;
use tally_engine::journal::recovery::{recover, RecoveryOptions, RecoveryReport};
use tally_engine::journal::{
    journal_dir, list_segments, Durability, Journal, JournalOptions, JournalReader, Record,
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

/// An unclean partition's header fields beyond its identity describe data files that
/// recovery never reads (it restores the checkpoint): out-of-range values there, as a
/// crash mid-write could leave, must not refuse the start. Every counter comes back.
#[test]
fn an_unclean_header_with_fields_out_of_range_is_restored_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let expected = checkpointed_then_crashed(dir.path());
    for partition in 0..PARTITIONS {
        let header = dir.path().join(format!("p{partition:05}.meta"));
        let mut bytes = std::fs::read(&header).unwrap();
        assert_eq!(&bytes[24..28], &0u32.to_le_bytes(), "unclean");
        bytes[28..32].copy_from_slice(&7u32.to_le_bytes()); // migrating: 0 or 1
        bytes[40..48].copy_from_slice(&3u64.to_le_bytes()); // table_lines: whole buckets
        bytes[88..96].copy_from_slice(&0u64.to_le_bytes()); // heap_bytes: below its header
        std::fs::write(&header, &bytes).unwrap();
    }
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(report.partitions_restored.len(), PARTITIONS as usize);
    assert_eq!(snapshot(&store), expected);
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

/// A journal of several 16 KiB segments with a checkpoint in the middle: every segment
/// is kept (a retention LSN of 1), so some segments are wholly covered by the
/// checkpoint and later ones hold the records after it. Stops uncleanly and returns
/// the state, the checkpoint's covered LSN and the last LSN written.
fn covered_and_uncovered_segments(path: &Path) -> (Model, u64, u64) {
    let mut store = open_store(path);
    let first = recover(path, &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(path, 0, small_segments(first.next_lsn)).unwrap();
    for block in 0..6 {
        run_ops(&mut store, &mut journal, block * 500..(block + 1) * 500);
        journal.sync().unwrap();
    }
    let report = checkpoint_core(path, &store, &mut journal, 0, Some(1)).unwrap();
    let covered = report.partitions[0].covered_lsn;
    assert_eq!(report.segments_released, 0, "retention keeps every segment");
    for block in 6..12 {
        run_ops(&mut store, &mut journal, block * 500..(block + 1) * 500);
        journal.sync().unwrap();
    }
    let last = journal.sync().unwrap();
    let expected = snapshot(&store);
    drop(journal);
    drop(store); // no close_clean: an unclean stop
    (expected, covered, last)
}

/// The segments of core 0 as (path, first LSN, last LSN), the last LSN taken from the
/// next segment's name (the last segment's from `last`).
fn segment_ranges(path: &Path, last: u64) -> Vec<(std::path::PathBuf, u64, u64)> {
    let segments = list_segments(&journal_dir(path, 0)).unwrap();
    (0..segments.len())
        .map(|i| {
            let end = segments.get(i + 1).map_or(last, |next| next.first_lsn - 1);
            (segments[i].path.clone(), segments[i].first_lsn, end)
        })
        .collect()
}

/// Flips one byte in the middle of the segment (a record's key or checksum).
fn flip_byte_in_middle(segment: &Path) {
    let mut bytes = std::fs::read(segment).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[used / 2] ^= 0x10;
    std::fs::write(segment, bytes).unwrap();
}

fn journal_files(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(journal_dir(path, 0))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Reads the whole journal as the server's idempotency scan does at start.
fn read_whole_journal(path: &Path) -> Result<Vec<u64>, tally_engine::journal::JournalError> {
    let mut reader = JournalReader::open(path, 0)?;
    let mut lsns = Vec::new();
    while let Some(logged) = reader.next_record()? {
        lsns.push(logged.lsn);
    }
    Ok(lsns)
}

/// Defect 1: damage in a segment the checkpoint wholly covers is not needed for replay.
/// It must neither stop the start nor (with the flag) cut the records after it.
#[test]
fn damage_in_a_segment_the_checkpoint_covers_loses_nothing() {
    for recover_to_corruption in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (expected, covered, last) = covered_and_uncovered_segments(dir.path());
        let ranges = segment_ranges(dir.path(), last);
        let (damaged, _, _) = ranges
            .iter()
            .skip(1)
            .find(|(_, _, end)| *end <= covered)
            .expect("a middle segment wholly covered by the checkpoint")
            .clone();
        flip_byte_in_middle(&damaged);
        let mut store = open_store(dir.path());
        let options = RecoveryOptions {
            recover_to_corruption,
        };
        let report = recover(dir.path(), &mut store, 0, &options)
            .unwrap_or_else(|e| panic!("flag {recover_to_corruption}: {e}"));
        assert_eq!(snapshot(&store), expected, "flag {recover_to_corruption}");
        assert!(report.journal.corruption.is_none());
        assert!(report.next_lsn > last);
        let files = journal_files(dir.path());
        let name = damaged.file_name().unwrap().to_string_lossy().into_owned();
        assert!(files.contains(&format!("{name}.corrupt")), "{files:?}");
        // What reads the journal at start (the server's idempotency scan) still can,
        // and every record after the checkpoint is still there.
        let lsns = read_whole_journal(dir.path()).unwrap();
        assert_eq!(lsns.last(), Some(&last));
        assert!(lsns.contains(&(covered + 1)));
        drop(store);
        let mut store = open_store(dir.path());
        recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
        assert_eq!(snapshot(&store), expected);
    }
}

/// Defect 2: a segment missing in the middle of the journal, holding records after the
/// checkpoint, refuses the start and names the gap; the reader refuses it too.
#[test]
fn a_missing_segment_after_the_checkpoint_refuses_to_start_and_names_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (_, covered, last) = covered_and_uncovered_segments(dir.path());
    let ranges = segment_ranges(dir.path(), last);
    let index = ranges.len() - 2;
    let (missing, first, end) = ranges[index].clone();
    assert!(
        first > covered,
        "the segment holds records after the checkpoint"
    );
    let away = dir.path().join("moved-away.log");
    std::fs::rename(&missing, &away).unwrap();
    let message = match read_whole_journal(dir.path()) {
        Ok(lsns) => panic!("the reader read past the gap: {} records", lsns.len()),
        Err(error) => error.to_string(),
    };
    assert!(message.contains(&format!("{first}..={end}")), "{message}");
    let mut store = open_store(dir.path());
    let error = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap_err();
    let message = error.to_string();
    let before = ranges[index - 1].0.file_name().unwrap().to_string_lossy();
    let after = ranges[index + 1].0.file_name().unwrap().to_string_lossy();
    assert!(message.contains(&format!("{first}..={end}")), "{message}");
    assert!(
        message.contains(&*before) && message.contains(&*after),
        "{message}"
    );
    assert!(message.contains("--recover-to-corruption"), "{message}");
    // Nothing was changed by the refusal.
    drop(store);
    assert_eq!(segment_ranges(dir.path(), last).len(), ranges.len() - 1);
    // With the flag, recovery stops at the gap and later LSNs are never reused.
    let mut store = open_store(dir.path());
    let options = RecoveryOptions {
        recover_to_corruption: true,
    };
    let report = recover(dir.path(), &mut store, 0, &options).unwrap();
    assert_eq!(report.journal.last_lsn, first - 1);
    assert!(report.next_lsn > last, "{} <= {last}", report.next_lsn);
}

/// Defect 3: recovering to a corruption sets the cut tail aside (not only the later
/// segments) and continues above every LSN set aside; the journal then reads and
/// recovers cleanly.
#[test]
fn recovering_to_a_corruption_sets_the_cut_tail_aside_and_reuses_no_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let (_, covered, last) = covered_and_uncovered_segments(dir.path());
    let ranges = segment_ranges(dir.path(), last);
    let (damaged, first, _) = ranges[ranges.len() - 3].clone();
    assert!(first > covered);
    let original = std::fs::read(&damaged).unwrap();
    flip_byte_in_middle(&damaged);
    let mut store = open_store(dir.path());
    let error = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap_err();
    assert!(
        error.to_string().contains("--recover-to-corruption"),
        "{error}"
    );
    drop(store);
    let mut store = open_store(dir.path());
    let options = RecoveryOptions {
        recover_to_corruption: true,
    };
    let report = recover(dir.path(), &mut store, 0, &options).unwrap();
    let kept = report.journal.last_lsn;
    assert!(kept >= first && kept < last);
    assert!(report.next_lsn > last, "{} <= {last}", report.next_lsn);
    // The cut tail is in a .corrupt file named by the first LSN it may hold.
    let (_, offset, _) = report.journal.corruption.clone().unwrap();
    let tail_path = std::path::PathBuf::from(format!(
        "{}.corrupt",
        journal_dir(dir.path(), 0)
            .join(format!("segment-{:020}.log", kept + 1))
            .display()
    ));
    let tail = std::fs::read(&tail_path).unwrap();
    let mut damaged_bytes = original;
    let used = damaged_bytes.iter().rposition(|&b| b != 0).unwrap();
    damaged_bytes[used / 2] ^= 0x10;
    assert_eq!(tail, damaged_bytes[offset as usize..]);
    // The journal continues above every LSN set aside, and both the reader and the
    // next recovery accept what is left.
    let state = snapshot(&store);
    let mut journal = Journal::open(dir.path(), 0, small_segments(report.next_lsn)).unwrap();
    run_ops(&mut store, &mut journal, 0..10);
    let newest = journal.sync().unwrap();
    assert!(newest > last);
    let state_after = snapshot(&store);
    drop(journal);
    drop(store);
    let lsns = read_whole_journal(dir.path()).unwrap();
    assert_eq!(lsns.last(), Some(&newest));
    let mut store = open_store(dir.path());
    let again = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_ne!(state, Model::new());
    assert_eq!(snapshot(&store), state_after);
    assert!(again.journal.set_aside.is_empty() && again.journal.skipped.is_empty());
    assert_eq!(again.next_lsn, newest + 1);
}

/// A hole wholly below the checkpoint (an old segment moved away) stops nothing: the
/// segments before it are set aside so the journal left in place is gapless for the
/// reader. A hole at the head of what the checkpoint needs refuses, naming it.
#[test]
fn a_missing_segment_below_the_checkpoint_starts_and_one_at_its_head_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (expected, covered, last) = covered_and_uncovered_segments(dir.path());
    let ranges = segment_ranges(dir.path(), last);
    std::fs::rename(&ranges[1].0, dir.path().join("moved-away-1.log")).unwrap();
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
    assert_eq!(
        report.journal.skipped.len(),
        1,
        "{:?}",
        report.journal.skipped
    );
    let first = ranges[0]
        .0
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(journal_files(dir.path()).contains(&format!("{first}.covered")));
    assert_eq!(read_whole_journal(dir.path()).unwrap().last(), Some(&last));
    drop(store);

    // Now move away every segment up to the one holding the first record needed.
    let holding = ranges
        .iter()
        .position(|(_, first, end)| (*first..=*end).contains(&(covered + 1)))
        .unwrap();
    for (path, _, _) in &ranges[2..=holding] {
        std::fs::rename(path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let mut store = open_store(dir.path());
    let message = recover(dir.path(), &mut store, 0, &RecoveryOptions::default())
        .unwrap_err()
        .to_string();
    let end = ranges[holding].2;
    assert!(
        message.contains(&format!("{}..={end}", covered + 1)),
        "{message}"
    );
    assert!(message.contains("--recover-to-corruption"), "{message}");
}

/// An Outcome record (an idempotent batch's read or refusal) changes nothing on replay,
/// even though its value field holds some other number, and a reader still returns it.
#[test]
fn outcome_records_are_read_back_but_never_replayed() {
    use tally_engine::journal::{Idempotency, RecordKind};
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let first = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(dir.path(), 0, small_segments(first.next_lsn)).unwrap();
    run_ops(&mut store, &mut journal, 0..200);
    let key = b"counter-7".as_slice();
    let before = snapshot(&store);
    let outcome = Record {
        partition: partition_of(key),
        kind: RecordKind::Outcome,
        key,
        operand: -1,
        value: 987_654,
        bounds: None,
        idempotency: Some(Idempotency {
            key: 42,
            result: [0; 16],
        }),
    };
    journal.append(&outcome, Durability::Durable).unwrap();
    journal.sync().unwrap();
    drop(journal);
    drop(store); // unclean: recovery replays the whole journal

    let mut store = open_store(dir.path());
    recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(
        snapshot(&store),
        before,
        "the Outcome record changed nothing"
    );
    let mut reader = JournalReader::open(dir.path(), 0).unwrap();
    let mut outcomes = 0;
    while let Some(logged) = reader.next_record().unwrap() {
        if logged.record.kind == RecordKind::Outcome {
            assert_eq!(logged.record.value, 987_654);
            outcomes += 1;
        }
    }
    assert_eq!(outcomes, 1);
}

/// Losing the newest segments is seen through the journal's reach (an LSN recorded
/// durable outside the journal): recovery refuses and names the first missing segment
/// and the flag; with the flag it starts with what is left, continues above the reach,
/// and the next start needs no flag.
#[test]
fn losing_the_newest_segments_refuses_to_start_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_, covered, last) = covered_and_uncovered_segments(dir.path());
    let reach = tally_engine::journal::reach::read_reach(dir.path(), 0)
        .unwrap()
        .expect("the writer recorded its reach");
    let ranges = segment_ranges(dir.path(), last);
    let (newest, first, _) = ranges.last().unwrap().clone();
    assert!(
        first > covered && reach >= first,
        "{covered} {first} {reach}"
    );
    for lost in [1, 2] {
        let (gone, _, _) = &ranges[ranges.len() - lost];
        let away = dir.path().join(format!("moved-away-{lost}.log"));
        std::fs::rename(gone, &away).unwrap();
        let mut store = open_store(dir.path());
        let error = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap_err();
        let message = error.to_string();
        let name = gone.file_name().unwrap().to_string_lossy();
        assert!(message.contains(&*name), "{message}");
        assert!(message.contains(&format!("..={reach}")), "{message}");
        assert!(message.contains("--recover-to-corruption"), "{message}");
    }
    // The whole journal directory gone: refused too.
    let journal = journal_dir(dir.path(), 0);
    let aside = dir.path().join("journal-aside");
    std::fs::rename(&journal, &aside).unwrap();
    let mut store = open_store(dir.path());
    let error = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
    drop(store);
    std::fs::rename(&aside, &journal).unwrap();
    assert!(!newest.exists());
    // With the flag: what is left, and no LSN below the reach is ever used again.
    let mut store = open_store(dir.path());
    let options = RecoveryOptions {
        recover_to_corruption: true,
    };
    let report = recover(dir.path(), &mut store, 0, &options).unwrap();
    assert!(report.journal.corruption.is_some());
    assert!(report.next_lsn > reach, "{} <= {reach}", report.next_lsn);
    let mut writer = Journal::open(dir.path(), 0, small_segments(report.next_lsn)).unwrap();
    run_ops(&mut store, &mut writer, 0..200);
    writer.sync().unwrap();
    let expected = snapshot(&store);
    drop(writer);
    drop(store);
    let mut store = open_store(dir.path());
    recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
}

/// What a crash leaves must never trip the reach check: a newest segment created but
/// never written (or written without its fdatasync), a torn first commit in a new
/// segment, old segments released by checkpoints, and a journal directory set aside
/// after every partition was checkpointed above the reach (the core-count migration).
#[test]
fn crashes_and_normal_paths_never_trip_the_reach_check() {
    let dir = tempfile::tempdir().unwrap();
    let (expected, _, last) = covered_and_uncovered_segments(dir.path());
    // Created at the next commit, then a crash before anything reached it.
    let journal = journal_dir(dir.path(), 0);
    let empty = tally_engine::journal::segment_path(&journal, last + 1);
    std::fs::write(&empty, b"").unwrap();
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(report.journal.last_lsn, last);
    assert_eq!(snapshot(&store), expected);
    // Checkpoints release every segment but the last, then a crash.
    let mut writer = Journal::open(dir.path(), 0, small_segments(report.next_lsn)).unwrap();
    run_ops(&mut store, &mut writer, 10_000..12_000);
    let released = checkpoint_core(dir.path(), &store, &mut writer, 0, None).unwrap();
    assert!(released.segments_released > 0);
    run_ops(&mut store, &mut writer, 12_000..12_100);
    writer.sync().unwrap();
    let expected = snapshot(&store);
    drop(writer);
    drop(store);
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
    // Every partition checkpointed at the end, then the journal set aside (what the
    // core-count migration does): nothing needed is missing.
    tally_engine::journal::checkpoint::checkpoint_all(dir.path(), &store, report.next_lsn - 1)
        .unwrap();
    drop(store);
    std::fs::rename(&journal, dir.path().join("journal.previous")).unwrap();
    let mut store = open_store(dir.path());
    recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
}

/// A commit that never became durable, whichever commit it is (the first of a new
/// segment included), leaves a journal that starts without the flag: the reach only
/// ever names durable LSNs.
#[test]
fn a_commit_lost_in_a_crash_never_trips_the_reach_check() {
    use tally_engine::journal::fault::{Fault, FaultStorage};
    for (at_commit, bytes) in (1..12).flat_map(|at| [(at, 0), (at, 1024)]) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open_store(dir.path());
        let plan = vec![(
            at_commit,
            Fault::TornWrite {
                bytes,
                garbage: true,
            },
        )];
        let mut journal =
            Journal::open_with_storage(dir.path(), 0, small_segments(1), FaultStorage::new(plan))
                .unwrap();
        'ops: for step in 0..20_000u64 {
            let key = format!("counter-{}", step % 300).into_bytes();
            let op = op_for(step, &key);
            let Ok(outcome) = store.apply(&op) else {
                continue;
            };
            let record = Record::from_op(&op, &outcome, partition_of(&key)).unwrap();
            if journal.append(&record, Durability::Durable).is_err() {
                break;
            }
            if step % 100 == 99 && journal.sync().is_err() {
                break 'ops;
            }
        }
        assert!(
            journal.failure().is_some(),
            "the torn commit {at_commit} was reached"
        );
        drop(journal);
        drop(store);
        let mut store = open_store(dir.path());
        recover(dir.path(), &mut store, 0, &RecoveryOptions::default())
            .unwrap_or_else(|e| panic!("torn commit {at_commit} ({bytes} bytes kept): {e}"));
    }
}

/// A rate limiter's workload: every counter gets bounds, then increments clamped to
/// them, new bounds, sets and deletes, all interleaved on the same keys, so that records
/// with bounds and without alternate within every replayed chunk.
fn rate_limiter_op(step: u64, key: &[u8]) -> Op<'_> {
    match step % 7 {
        0 | 3 => Op::SetBounds {
            key,
            floor: Some(0),
            ceiling: Some(10 + (step % 90) as i64),
        },
        1 => Op::Set {
            key,
            value: (step % 20) as i64,
            policy: BoundPolicy::Reject,
        },
        2 if step.is_multiple_of(5) => Op::Delete { key },
        _ => Op::Add {
            key,
            delta: 1 + (step % 4) as i64,
            policy: BoundPolicy::Clamp,
        },
    }
}

#[test]
fn interleaved_bounded_and_plain_records_recover_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_store(dir.path());
    let first = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(
        dir.path(),
        0,
        JournalOptions {
            next_lsn_min: first.next_lsn,
            ..JournalOptions::default()
        },
    )
    .unwrap();
    let mut journaled = 0u64;
    // More than two replay chunks (8,192 records each).
    for step in 0..20_000u64 {
        let key = format!("limit-{}", step.wrapping_mul(2654435761) % 500).into_bytes();
        let op = rate_limiter_op(step, &key);
        let Ok(outcome) = store.apply(&op) else {
            continue;
        };
        let partition = partition_of(&key);
        let record = Record::from_op(&op, &outcome, partition).expect("a mutation");
        let lsn = journal.append(&record, Durability::Relaxed).unwrap();
        store.set_applied_lsn(partition, lsn);
        journaled += 1;
    }
    journal.sync().unwrap();
    let expected = snapshot(&store);
    assert!(expected.values().any(|&(_, floor, _)| floor.is_some()));
    drop(journal);
    drop(store); // an unclean stop, with no checkpoint: everything is replayed

    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(report.records_replayed, journaled);
    assert_eq!(snapshot(&store), expected);
}

/// Copies partition `partition`'s files (header and data files) from `from` to `to`,
/// removing its files in `to` first: a file-level rollback of one partition.
fn copy_partition_files(from: &Path, to: &Path, partition: u32) {
    let prefix = format!("p{partition:05}.");
    for entry in std::fs::read_dir(to).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// One serving run as the server makes it: recover, apply `steps`, then a few more
/// (after a sync, so they start a new segment), checkpoint every partition (releasing
/// every segment but the last, which holds only those few), close cleanly.
fn graceful_run(path: &Path, steps: std::ops::Range<u64>) -> Model {
    let mut store = open_store(path);
    let report = recover(path, &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(path, 0, small_segments(report.next_lsn)).unwrap();
    let end = steps.end;
    run_ops(&mut store, &mut journal, steps);
    journal.sync().unwrap();
    run_ops(&mut store, &mut journal, end * 7..end * 7 + 3);
    journal.sync().unwrap();
    checkpoint_core(path, &store, &mut journal, 0, None).unwrap();
    let expected = snapshot(&store);
    drop(journal);
    store.close_clean().unwrap();
    expected
}

/// Failed before the fix: the rolled-back partition was served as its old clean close
/// left it, silently (its checkpoint and the journal held the newer state).
#[test]
fn a_clean_partition_rolled_back_to_an_earlier_clean_close_is_restored_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    graceful_run(dir.path(), 0..2_000);
    copy_partition_files(dir.path(), saved.path(), 1);
    let expected = graceful_run(dir.path(), 2_000..4_000);
    copy_partition_files(saved.path(), dir.path(), 1);

    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
    assert_eq!(report.partitions_restored, vec![1]);
    assert_partition_1_distrusted(&report, "p00001.meta", "rolled back");
    assert!(!report.clean_shutdown);
    closes_clean_and_recovers_trusting_all(store, dir.path(), &expected);
}

/// The report names partition 1 alone as distrusted, its file ending in `file`, the
/// reason saying `why`.
fn assert_partition_1_distrusted(report: &RecoveryReport, file: &str, why: &str) {
    assert_eq!(report.partitions_distrusted.len(), 1);
    let (partition, path, reason) = &report.partitions_distrusted[0];
    assert_eq!(*partition, 1);
    assert!(path.ends_with(file), "{}", path.display());
    assert!(reason.contains(why), "{reason}");
}

/// A restored partition closes cleanly with the right state: the next recovery
/// distrusts nothing and finds `expected`.
fn closes_clean_and_recovers_trusting_all(store: Store, path: &Path, expected: &Model) {
    store.close_clean().unwrap();
    let mut store = open_store(path);
    let again = recover(path, &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert!(again.partitions_distrusted.is_empty());
    assert_eq!(&snapshot(&store), expected);
}

/// The normal path never trips the check: an idle partition's applied LSN stays below
/// its checkpoint's covered LSN (the core's), which is no evidence of a rollback.
#[test]
fn graceful_runs_with_idle_partitions_distrust_nothing() {
    let dir = tempfile::tempdir().unwrap();
    graceful_run(dir.path(), 0..2_000);
    let mut expected = Model::new();
    for round in 1..3u64 {
        // Few steps: some partitions get no record this round.
        expected = graceful_run(dir.path(), round * 10_000..round * 10_000 + 2);
    }
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert!(report.partitions_distrusted.is_empty());
    assert!(report.partitions_restored.is_empty());
    assert!(report.clean_shutdown);
    assert_eq!(snapshot(&store), expected);
}

/// A 32-byte LSN stamp (see `journal::stamp`) with a valid checksum: what a crafted
/// file holds.
fn stamp(magic: &[u8; 8], owner: u32, lsn: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    bytes[0..8].copy_from_slice(magic);
    bytes[8..12].copy_from_slice(&owner.to_le_bytes());
    bytes[16..24].copy_from_slice(&lsn.to_le_bytes());
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..24]);
    bytes[24..32].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// Failed before the fix: with the flag, a reach stamp near 2^64 was accepted and the
/// journal continued above it, so LSNs wrapped (a core panicked in the server).
#[test]
fn a_reach_stamp_near_the_end_of_the_lsns_never_wraps_them() {
    let dir = tempfile::tempdir().unwrap();
    let expected = checkpointed_then_crashed(dir.path());
    let reach = dir.path().join("journal-reach").join("core-0");
    std::fs::write(&reach, stamp(b"TLYREACH", 0, u64::MAX - 1)).unwrap();

    let mut store = open_store(dir.path());
    let error = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("journal-reach"), "{message}");
    assert!(message.contains("2^62"), "{message}");
    // Named once, and said for what it is: a damaged stamp, not a damaged journal.
    assert_eq!(message.matches("journal-reach").count(), 1, "{message}");
    assert!(
        message.contains("the journal itself may be intact"),
        "{message}"
    );
    drop(store);

    let flag = RecoveryOptions {
        recover_to_corruption: true,
    };
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &flag).unwrap();
    assert!(report.next_lsn < 1 << 62, "next LSN {}", report.next_lsn);
    assert_eq!(snapshot(&store), expected);
    let mut journal = Journal::open(dir.path(), 0, small_segments(report.next_lsn)).unwrap();
    run_ops(&mut store, &mut journal, 50_000..50_100);
    journal.sync().unwrap();
}

/// Failed before the fix: a checkpoint position of 2^64 - 1 made the journal continue at
/// LSN 0 (an overflow: a panic in a debug build, "next_lsn_min must be at least 1" in
/// release, naming no file).
#[test]
fn a_checkpoint_position_near_the_end_of_the_lsns_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    checkpointed_then_crashed(dir.path());
    let position = dir
        .path()
        .join("checkpoint")
        .join("2")
        .join("journal-position");
    std::fs::write(&position, stamp(b"TLYCKPT1", 2, u64::MAX)).unwrap();
    let mut store = open_store(dir.path());
    let error = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("checkpoint/2/journal-position"),
        "{message}"
    );
    assert!(message.contains("2^62"), "{message}");
}

/// Failed before the fix (as above, for a clean partition header's applied LSN).
#[test]
fn a_clean_header_applied_lsn_near_the_end_of_the_lsns_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    graceful_run(dir.path(), 0..500);
    let header = dir.path().join("p00003.meta");
    let mut bytes = std::fs::read(&header).unwrap();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..4088]);
    bytes[4088..].copy_from_slice(&checksum.to_le_bytes());
    std::fs::write(&header, bytes).unwrap();
    let data_dir = DataDir::open_or_create(dir.path(), Some(PARTITIONS)).unwrap();
    let error = Store::open(&data_dir, 0..PARTITIONS).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("p00003.meta"), "{message}");
    assert!(message.contains("2^62"), "{message}");
}

/// A served directory (two graceful runs, the second releasing the journal before it),
/// then a run stopped uncleanly, with `checkpoint/1`'s data files rolled back to the
/// first run's checkpoint (its journal-position untouched). Returns the right state.
fn checkpoint_data_rolled_back(path: &Path, keep_old: bool) -> Model {
    let saved = tempfile::tempdir().unwrap();
    let checkpoint = path.join("checkpoint").join("1");
    graceful_run(path, 0..2_000);
    copy_partition_files(&checkpoint, saved.path(), 1);
    graceful_run(path, 2_000..4_000);
    let mut store = open_store(path);
    let report = recover(path, &mut store, 0, &RecoveryOptions::default()).unwrap();
    let mut journal = Journal::open(path, 0, small_segments(report.next_lsn)).unwrap();
    run_ops(&mut store, &mut journal, 9_000..9_050);
    journal.sync().unwrap();
    let expected = snapshot(&store);
    drop(journal);
    drop(store); // no close_clean: an unclean stop
    if keep_old {
        let old = path.join("checkpoint").join("1.old");
        std::fs::create_dir(&old).unwrap();
        for entry in std::fs::read_dir(&checkpoint).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), old.join(entry.file_name())).unwrap();
        }
    }
    copy_partition_files(saved.path(), &checkpoint, 1);
    expected
}

/// Failed before the fix: the rolled-back checkpoint was restored and replay started
/// at its position, so the records between were never replayed: stale counters.
#[test]
fn a_checkpoint_whose_data_was_rolled_back_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    checkpoint_data_rolled_back(dir.path(), false);
    let mut store = open_store(dir.path());
    let error = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("checkpoint/1/p00001.meta"), "{message}");
    assert!(message.contains("rolled back"), "{message}");
}

/// Failed before the fix (stale counters): the intact previous checkpoint a swap left
/// is used instead of the rolled-back one.
#[test]
fn a_rolled_back_checkpoint_falls_back_to_an_intact_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let expected = checkpoint_data_rolled_back(dir.path(), true);
    let mut store = open_store(dir.path());
    let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
    assert_eq!(snapshot(&store), expected);
    assert_partition_1_distrusted(&report, "checkpoint/1/p00001.meta", "1.old");
}

/// Failed before the fix: a flipped bit (or a deleted file) in a clean partition's data
/// refused the start, although its checkpoint and the journal restore it exactly.
#[test]
fn damaged_data_of_a_clean_partition_is_restored_from_its_checkpoint() {
    for delete in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        graceful_run(dir.path(), 0..2_000);
        let expected = graceful_run(dir.path(), 2_000..4_000);
        let heap = dir.path().join("p00001.heap");
        if delete {
            std::fs::remove_file(&heap).unwrap();
        } else {
            let mut bytes = std::fs::read(&heap).unwrap();
            bytes[200] ^= 0x20;
            std::fs::write(&heap, &bytes).unwrap();
        }
        let mut store = open_store(dir.path());
        let report = recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
        assert_eq!(snapshot(&store), expected);
        assert_eq!(report.partitions_restored, vec![1]);
        assert_partition_1_distrusted(&report, "p00001.heap", "checkpoint");
        assert_eq!(
            dir.path().join("damaged").join("p00001.heap").exists(),
            !delete,
            "the damaged file is kept for inspection"
        );
        closes_clean_and_recovers_trusting_all(store, dir.path(), &expected);
    }
}

/// Failed before the fix: damage in the last segment whose records no partition needs
/// (every partition closed cleanly and checkpointed) refused the start, and with the
/// flag was reported as lost acknowledged records; the rule for covered damage applied
/// only to segments followed by another.
#[test]
fn damage_no_partition_needs_in_the_last_segment_is_stepped_over() {
    for recover_to_corruption in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let expected = graceful_run(dir.path(), 0..2_000);
        let segments = list_segments(&journal_dir(dir.path(), 0)).unwrap();
        assert_eq!(segments.len(), 1, "every segment but the last was released");
        // The first record's key: damage followed by valid records.
        let mut bytes = std::fs::read(&segments[0].path).unwrap();
        bytes[40] ^= 0x10;
        std::fs::write(&segments[0].path, bytes).unwrap();
        let options = RecoveryOptions {
            recover_to_corruption,
        };
        let mut store = open_store(dir.path());
        let report = recover(dir.path(), &mut store, 0, &options)
            .unwrap_or_else(|e| panic!("flag {recover_to_corruption}: {e}"));
        assert_eq!(snapshot(&store), expected);
        assert!(
            report.journal.corruption.is_none(),
            "nothing needed was lost"
        );
        assert_eq!(report.journal.skipped.len(), 1);
        let mut journal = Journal::open(dir.path(), 0, small_segments(report.next_lsn)).unwrap();
        run_ops(&mut store, &mut journal, 60_000..60_010);
        journal.sync().unwrap();
        let expected = snapshot(&store);
        drop(journal);
        drop(store);
        let mut store = open_store(dir.path());
        recover(dir.path(), &mut store, 0, &RecoveryOptions::default()).unwrap();
        assert_eq!(snapshot(&store), expected);
    }
}
