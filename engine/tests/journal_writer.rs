//! The journal writer and reader on real files through io_uring and O_DIRECT:
//! group commit, segment rolls, reopen, seek, deadlines.

use std::time::{Duration, Instant};

use tally_engine::journal::{
    journal_dir, list_segments, Bounds, Durability, Idempotency, Journal, JournalOptions,
    JournalReader, OwnedRecord, Record, RecordKind,
};

fn record_for(index: u64) -> OwnedRecord {
    let kind = match index % 7 {
        0 => RecordKind::Set,
        1 => RecordKind::Delete,
        2 => RecordKind::SetBounds,
        _ => RecordKind::Add,
    };
    OwnedRecord {
        lsn: 0,
        partition: (index % 5) as u32,
        kind,
        key: format!("counter:{}", index % 1000)
            .repeat(1 + (index % 3) as usize)
            .into_bytes(),
        operand: index as i64,
        value: (index * 3) as i64,
        bounds: (kind == RecordKind::SetBounds).then_some(Bounds {
            floor: Some(-1),
            ceiling: index.is_multiple_of(2).then_some(1 << 40),
        }),
        idempotency: index.is_multiple_of(11).then_some(Idempotency {
            key: u128::from(index) << 64,
            result: [index as u8; 16],
        }),
    }
}

/// Appends `count` records the way the server's commit task would: append, then let
/// the journal submit when due and poll for completions, never blocking.
fn append_all(journal: &mut Journal, first: u64, count: u64) -> Vec<OwnedRecord> {
    let mut written = Vec::new();
    for index in first..first + count {
        let mut record = record_for(index);
        let durability = if index % 2 == 0 {
            Durability::Durable
        } else {
            Durability::Relaxed
        };
        record.lsn = loop {
            match journal.append(&record.as_record(), durability) {
                Ok(lsn) => break lsn,
                Err(tally_engine::journal::JournalError::BufferFull { .. }) => {
                    journal.poll().expect("poll");
                }
                Err(other) => panic!("append failed: {other}"),
            }
        };
        journal.submit_if_due(Instant::now()).expect("submit");
        journal.poll().expect("poll");
        assert!(journal.durable_lsn() <= journal.appended_lsn());
        written.push(record);
    }
    written
}

fn read_all(data_dir: &std::path::Path) -> Vec<OwnedRecord> {
    JournalReader::open(data_dir, 0)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn records_come_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        segment_bytes_target: 64 << 10,
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(dir.path(), 0, options).unwrap();
    // A sync every 1,000 records bounds each commit (a segment rolls only between
    // commits), so the roll count does not depend on how the group commits fell.
    let mut written = Vec::new();
    for chunk in 0..20 {
        written.extend(append_all(&mut journal, chunk * 1_000, 1_000));
        assert_eq!(journal.sync().unwrap(), (chunk + 1) * 1_000);
    }
    assert_eq!(journal.durable_lsn(), journal.appended_lsn());
    let stats = journal.stats();
    assert_eq!(stats.record_count, 20_000);
    assert!(
        stats.commit_count >= 2,
        "group commit still commits more than once here"
    );
    drop(journal);
    assert!(list_segments(&journal_dir(dir.path(), 0)).unwrap().len() > 5);
    assert_eq!(read_all(dir.path()), written);
}

/// With durable records due at once and the journal polled as the server does, a
/// commit follows the previous one's write while its fdatasync runs. The durable LSN
/// only grows, never passes the appended one, and every record comes back in order.
#[test]
fn commits_pipeline_and_records_still_come_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(dir.path(), 0, JournalOptions::default()).unwrap();
    let mut written = Vec::new();
    let mut durable = 0;
    let started = Instant::now();
    while journal.stats().pipelined_count < 10 && started.elapsed() < Duration::from_secs(20) {
        let first = written.len() as u64;
        written.extend(append_all(&mut journal, first, 50));
        assert!(
            journal.durable_lsn() >= durable,
            "the durable LSN went back"
        );
        durable = journal.durable_lsn();
    }
    let stats = journal.stats();
    assert!(
        stats.pipelined_count >= 10,
        "no commit was submitted while another was in flight: {stats:?}"
    );
    assert_eq!(journal.sync().unwrap(), written.len() as u64);
    assert_eq!(journal.stats().record_count, written.len() as u64);
    drop(journal);
    assert_eq!(read_all(dir.path()), written);
}

#[test]
fn reopen_continues_the_lsn_sequence_and_seek_finds_any_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let mut written = Vec::new();
    for round in 0..3u64 {
        let mut journal = Journal::open(dir.path(), 0, JournalOptions::default()).unwrap();
        assert_eq!(journal.appended_lsn(), round * 1000);
        written.extend(append_all(&mut journal, round * 1000, 1000));
        journal.sync().unwrap();
    }
    assert_eq!(read_all(dir.path()), written);
    let mut reader = JournalReader::open(dir.path(), 0).unwrap();
    for lsn in [1, 999, 1000, 1001, 2500, 3000] {
        reader.seek(lsn).unwrap();
        let found = reader.next_owned().unwrap().unwrap();
        assert_eq!(found, written[lsn as usize - 1]);
    }
    reader.seek(3001).unwrap();
    assert!(reader.next_owned().unwrap().is_none());
}

#[test]
fn a_reader_follows_a_live_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(dir.path(), 0, JournalOptions::default()).unwrap();
    let first = append_all(&mut journal, 0, 100);
    journal.sync().unwrap();
    let mut reader = JournalReader::open(dir.path(), 0).unwrap();
    for expected in &first {
        assert_eq!(&reader.next_owned().unwrap().unwrap(), expected);
    }
    assert!(reader.next_owned().unwrap().is_none());
    let second = append_all(&mut journal, 100, 50);
    journal.sync().unwrap();
    for expected in &second {
        assert_eq!(&reader.next_owned().unwrap().unwrap(), expected);
    }
}

#[test]
fn deadlines_follow_the_durability_mode() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        durable_wait: Duration::from_millis(2),
        relaxed_interval: Duration::from_millis(50),
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(dir.path(), 0, options).unwrap();
    assert_eq!(journal.next_deadline(), None);
    let before = Instant::now();
    let record = record_for(3);
    journal
        .append(&record.as_record(), Durability::Relaxed)
        .unwrap();
    let relaxed_due = journal.next_deadline().unwrap();
    assert!(relaxed_due >= before + Duration::from_millis(50));
    assert!(!journal.submit_if_due(before).unwrap());
    journal
        .append(&record.as_record(), Durability::Durable)
        .unwrap();
    let durable_due = journal.next_deadline().unwrap();
    assert!(durable_due < relaxed_due);
    assert!(journal.submit_if_due(durable_due).unwrap());
    assert_eq!(
        journal.next_deadline(),
        None,
        "nothing is due while a commit is in flight"
    );
    assert_eq!(journal.sync().unwrap(), 2);
}

#[test]
fn bad_records_and_options_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad_options = JournalOptions {
        batch_bytes: 0,
        ..JournalOptions::default()
    };
    assert!(Journal::open(dir.path(), 0, bad_options).is_err());
    let mut journal = Journal::open(dir.path(), 0, JournalOptions::default()).unwrap();
    let record = Record {
        partition: 0,
        kind: RecordKind::Add,
        key: b"",
        operand: 1,
        value: 1,
        bounds: None,
        idempotency: None,
    };
    let error = journal.append(&record, Durability::Durable).unwrap_err();
    assert!(error.to_string().contains("key length 0"), "{error}");
    assert_eq!(journal.appended_lsn(), 0);
}

/// A caller that never submits (nothing is due: long waits, the largest batch) and only
/// polls must not be stuck when the buffer fills: `append` submits the full buffer
/// itself, so `BufferFull` is only ever answered while a commit is in flight.
#[test]
fn full_buffer_without_commit_in_flight_is_submitted_by_append() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        relaxed_interval: Duration::from_secs(3600),
        durable_wait: Duration::from_secs(3600),
        batch_bytes: tally_engine::journal::COMMIT_BYTES_MAX,
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(dir.path(), 0, options).unwrap();
    let record = record_for(3);
    let count = 3 * tally_engine::journal::COMMIT_BYTES_MAX / record.as_record().encoded_bytes();
    for _ in 0..count {
        loop {
            match journal.append(&record.as_record(), Durability::Relaxed) {
                Ok(_) => break,
                Err(tally_engine::journal::JournalError::BufferFull { .. }) => {
                    assert!(
                        journal.commit_in_flight(),
                        "BufferFull with nothing in flight"
                    );
                    journal.poll().expect("poll");
                }
                Err(other) => panic!("append failed: {other}"),
            }
        }
        journal.poll().expect("poll");
    }
    assert!(journal.stats().commit_count + u64::from(journal.commit_in_flight()) >= 2);
    let durable = journal.sync().unwrap();
    assert_eq!(durable, count as u64);
    assert_eq!(read_all(dir.path()).len(), count);
}

/// The reach is recorded at a segment's first durable commit, and again once it is
/// `REACH_REFRESH` old, so a newest segment cut outside a crash loses at most that
/// much unnoticed (the rest of a 64 MiB segment went unchecked before).
#[test]
fn the_reach_is_refreshed_while_commits_go_on() {
    use tally_engine::journal::reach::{read_reach, REACH_REFRESH};
    let dir = tempfile::tempdir().unwrap();
    let mut journal = Journal::open(dir.path(), 0, JournalOptions::default()).unwrap();
    append_all(&mut journal, 0, 10);
    let first = journal.sync().unwrap();
    let recorded_first = read_reach(dir.path(), 0)
        .unwrap()
        .expect("recorded at the first commit");
    assert!(recorded_first <= first);
    append_all(&mut journal, 10, 10);
    let second = journal.sync().unwrap();
    assert_eq!(
        read_reach(dir.path(), 0).unwrap(),
        Some(recorded_first),
        "not refreshed before REACH_REFRESH"
    );
    std::thread::sleep(REACH_REFRESH + Duration::from_millis(100));
    append_all(&mut journal, 20, 10);
    let third = journal.sync().unwrap();
    let refreshed = read_reach(dir.path(), 0).unwrap().unwrap();
    assert!(
        refreshed > second && refreshed <= third,
        "{refreshed} in {second}..={third}"
    );
}
