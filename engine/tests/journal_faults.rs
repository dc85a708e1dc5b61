//! Fault injection through the journal's storage seam: failed writes and syncs, short
//! and torn writes, ENOSPC, a silently flipped bit. Each case must end in a clear error
//! or a correct recovery, checked against a model of what was appended.

use std::collections::HashMap;
use std::path::Path;

use tally_engine::journal::fault::{Fault, FaultStorage};
use tally_engine::journal::recovery::{scan_journal, RecoveryOptions};
use tally_engine::journal::storage::FileStorage;
use tally_engine::journal::{
    Durability, Journal, JournalError, JournalOptions, JournalReader, Lsn, OwnedRecord, RecordKind,
};

const RECORDS_PER_COMMIT: u64 = 40;

fn record(index: u64) -> OwnedRecord {
    OwnedRecord {
        lsn: index + 1,
        partition: (index % 4) as u32,
        kind: if index.is_multiple_of(9) {
            RecordKind::Set
        } else {
            RecordKind::Add
        },
        key: format!("key:{}", index % 97).into_bytes(),
        operand: 1,
        value: index as i64,
        bounds: None,
        idempotency: None,
    }
}

/// What happened while writing through a faulty storage.
struct Written {
    appended: Lsn,
    durable_at_failure: Lsn,
    error: Option<JournalError>,
}

/// Appends `total` records in commits of `RECORDS_PER_COMMIT` until the first error.
fn write_through<S: tally_engine::journal::storage::JournalStorage>(
    journal: &mut Journal<S>,
    total: u64,
) -> Written {
    for index in 0..total {
        let owned = record(index);
        match journal.append(&owned.as_record(), Durability::Durable) {
            Ok(lsn) => assert_eq!(lsn, owned.lsn),
            Err(error) => return failed(journal, error),
        }
        if (index + 1).is_multiple_of(RECORDS_PER_COMMIT) {
            if let Err(error) = journal.sync() {
                return failed(journal, error);
            }
        }
    }
    if let Err(error) = journal.sync() {
        return failed(journal, error);
    }
    Written {
        appended: journal.appended_lsn(),
        durable_at_failure: journal.durable_lsn(),
        error: None,
    }
}

fn failed<S: tally_engine::journal::storage::JournalStorage>(
    journal: &mut Journal<S>,
    error: JournalError,
) -> Written {
    let durable = journal.durable_lsn();
    assert!(
        journal.failure().is_some(),
        "an error leaves the journal failed"
    );
    let again = journal.append(&record(0).as_record(), Durability::Durable);
    assert!(
        matches!(again, Err(JournalError::Failed { .. })),
        "no record accepted after a failure"
    );
    assert!(
        matches!(journal.sync(), Err(JournalError::Failed { .. })),
        "a failed sync is not retried as if it worked"
    );
    assert_eq!(
        journal.durable_lsn(),
        durable,
        "nothing more becomes durable"
    );
    Written {
        appended: journal.appended_lsn(),
        durable_at_failure: durable,
        error: Some(error),
    }
}

fn small_segments() -> JournalOptions {
    JournalOptions {
        segment_bytes_target: 32 << 10,
        ..JournalOptions::default()
    }
}

/// Replays the journal into a model (key -> value) and checks every record kept is the
/// one appended with that LSN. Returns the last LSN kept.
fn recover_into_model(
    data_dir: &Path,
    options: &RecoveryOptions,
) -> Result<(Lsn, HashMap<Vec<u8>, i64>), JournalError> {
    let mut model = HashMap::new();
    let mut expected_lsn = 1;
    let dir = tally_engine::journal::journal_dir(data_dir, 0);
    let scan = scan_journal(&dir, options, |_, logged| {
        assert_eq!(logged.lsn, expected_lsn, "records form a gapless prefix");
        assert_eq!(logged.to_owned_record(), record(logged.lsn - 1));
        model.insert(logged.record.key.to_vec(), logged.record.value);
        expected_lsn += 1;
        Ok(())
    })?;
    assert_eq!(scan.last_lsn, expected_lsn - 1);
    Ok((scan.last_lsn, model))
}

fn model_of_prefix(last_lsn: Lsn) -> HashMap<Vec<u8>, i64> {
    (0..last_lsn)
        .map(|i| (record(i).key, record(i).value))
        .collect()
}

/// After recovery, a normal journal continues the sequence and the reader sees it all.
fn check_journal_continues(data_dir: &Path, last_lsn: Lsn) {
    let mut journal =
        Journal::open_with_storage(data_dir, 0, small_segments(), FileStorage::new()).unwrap();
    assert_eq!(journal.appended_lsn(), last_lsn);
    let next = record(last_lsn);
    assert_eq!(
        journal
            .append(&next.as_record(), Durability::Durable)
            .unwrap(),
        last_lsn + 1
    );
    journal.sync().unwrap();
    let count = JournalReader::open(data_dir, 0).unwrap().count() as u64;
    assert_eq!(count, last_lsn + 1);
}

fn run_fault(fault: Fault, at_commit: u64) -> (Written, Lsn) {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultStorage::new(vec![(at_commit, fault)]);
    let mut journal = Journal::open_with_storage(dir.path(), 0, small_segments(), storage).unwrap();
    let written = write_through(&mut journal, 2_000);
    drop(journal);
    let (last_lsn, model) = recover_into_model(dir.path(), &RecoveryOptions::default())
        .unwrap_or_else(|e| panic!("{fault:?} at commit {at_commit}: recovery failed: {e}"));
    assert!(
        last_lsn >= written.durable_at_failure,
        "{fault:?} at commit {at_commit}: durable LSN {} lost, kept up to {last_lsn}",
        written.durable_at_failure
    );
    assert!(last_lsn <= written.appended);
    assert_eq!(model, model_of_prefix(last_lsn));
    check_journal_continues(dir.path(), last_lsn);
    (written, last_lsn)
}

#[test]
fn failed_writes_and_syncs_lose_nothing_durable() {
    for at_commit in [0, 1, 7, 30] {
        let (written, _) = run_fault(Fault::FailWrite { errno: libc::EIO }, at_commit);
        assert!(matches!(written.error, Some(JournalError::Io { .. })));
        let (written, _) = run_fault(Fault::FailSync { errno: libc::EIO }, at_commit);
        assert!(matches!(
            written.error,
            Some(JournalError::SyncFailed { .. })
        ));
    }
}

/// Appends `total` records in commits of `RECORDS_PER_COMMIT`, retrying each failed
/// sync at once (as the commit task does every `retry_interval`) while the journal is
/// degraded. Returns the errors met, in order. Every failure must degrade, never fail:
/// no record is accepted meanwhile and nothing more becomes durable until a retry is.
fn write_through_retrying<S: tally_engine::journal::storage::JournalStorage>(
    journal: &mut Journal<S>,
    total: u64,
) -> Vec<JournalError> {
    let mut errors = Vec::new();
    for index in 0..total {
        let owned = record(index);
        let lsn = journal
            .append(&owned.as_record(), Durability::Durable)
            .unwrap();
        assert_eq!(lsn, owned.lsn, "LSNs continue across retries");
        if !(index + 1).is_multiple_of(RECORDS_PER_COMMIT) && index + 1 != total {
            continue;
        }
        for _ in 0..10 {
            let durable = journal.durable_lsn();
            let Err(error) = journal.sync() else {
                break;
            };
            assert!(journal.failure().is_none(), "{error} failed the journal");
            assert!(journal.degraded().is_some(), "{error} without degrading");
            let refused = journal.append(&record(index + 1).as_record(), Durability::Durable);
            assert!(
                matches!(refused, Err(JournalError::Degraded { .. })),
                "a degraded journal accepts no record: {refused:?}"
            );
            assert_eq!(journal.durable_lsn(), durable, "nothing durable meanwhile");
            errors.push(error);
        }
        assert_eq!(
            journal.durable_lsn(),
            index + 1,
            "durable after the retries"
        );
        assert!(journal.degraded().is_none(), "a durable retry ends it");
    }
    errors
}

/// Writes 2,000 records through `plan`, retrying while degraded, then recovers: every
/// record is there once, in LSN order, and the journal continues after it.
fn run_degraded(plan: Vec<(u64, Fault)>) -> Vec<JournalError> {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultStorage::new(plan.clone());
    let mut journal = Journal::open_with_storage(dir.path(), 0, small_segments(), storage).unwrap();
    let errors = write_through_retrying(&mut journal, 2_000);
    // Consecutive failures are one stay in the degraded state.
    assert_eq!(journal.stats().degraded_count, 1, "{plan:?}");
    drop(journal);
    let (last_lsn, model) = recover_into_model(dir.path(), &RecoveryOptions::default())
        .unwrap_or_else(|e| panic!("{plan:?}: recovery failed: {e}"));
    assert_eq!(last_lsn, 2_000, "{plan:?}: every record recovered");
    assert_eq!(model, model_of_prefix(last_lsn));
    check_journal_continues(dir.path(), last_lsn);
    errors
}

/// ENOSPC (and EDQUOT) at a commit's write, once or twice in a row, at commits inside
/// a segment and at the last one of a segment (about 14 commits fill one here): the
/// journal degrades, a retry writes the same bytes again, and nothing is lost or
/// duplicated.
#[test]
fn a_write_out_of_space_degrades_and_a_retry_loses_and_duplicates_nothing() {
    for at_commit in [0, 1, 5, 13, 14, 15, 29] {
        let enospc = Fault::FailWrite {
            errno: libc::ENOSPC,
        };
        let errors = run_degraded(vec![(at_commit, enospc)]);
        assert_eq!(errors.len(), 1, "commit {at_commit}");
        assert!(
            matches!(errors[0], JournalError::NoSpace { .. }),
            "{:?}",
            errors[0]
        );
        assert!(errors[0].to_string().contains("no space"), "{}", errors[0]);
        let edquot = Fault::FailWrite {
            errno: libc::EDQUOT,
        };
        // The retry is commit `at_commit + 1` of the storage: it fails too.
        let errors = run_degraded(vec![(at_commit, enospc), (at_commit + 1, edquot)]);
        assert_eq!(errors.len(), 2, "commit {at_commit}");
    }
}

/// A segment that cannot be created (EMFILE, or ENOSPC when its blocks are allocated),
/// for the first segment and at a segment roll, once or twice: degraded, then the
/// records waiting go into the segment created by the retry.
#[test]
fn a_failed_segment_creation_degrades_and_a_retry_loses_and_duplicates_nothing() {
    let emfile = Fault::FailCreate {
        errno: libc::EMFILE,
    };
    let enospc = Fault::FailCreate {
        errno: libc::ENOSPC,
    };
    let errors = run_degraded(vec![(0, emfile)]);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].to_string().contains("create segment"),
        "{}",
        errors[0]
    );
    let rolled = 15; // past the first roll of a 32 KiB segment (about 14 commits)
    let errors = run_degraded(vec![(rolled, emfile), (rolled, enospc)]);
    assert_eq!(
        errors.len(),
        2,
        "the creation is retried, and fails again once"
    );
}

/// The retry follows `retry_interval`, as the commit task drives it through
/// `next_deadline` and `submit_if_due`: not before, and at once after.
#[test]
fn a_degraded_journal_retries_when_the_interval_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultStorage::new(vec![(
        1,
        Fault::FailWrite {
            errno: libc::ENOSPC,
        },
    )]);
    let options = JournalOptions {
        retry_interval: std::time::Duration::from_secs(1),
        ..small_segments()
    };
    let mut journal = Journal::open_with_storage(dir.path(), 0, options, storage).unwrap();
    for index in 0..2 * RECORDS_PER_COMMIT {
        journal
            .append(&record(index).as_record(), Durability::Durable)
            .unwrap();
        if index + 1 == RECORDS_PER_COMMIT {
            assert!(journal.submit().unwrap());
            assert_eq!(journal.poll().unwrap(), Some(RECORDS_PER_COMMIT));
        }
    }
    assert!(journal.submit().unwrap());
    assert!(
        journal.poll().is_err(),
        "the second commit ran out of space"
    );
    let due = journal.next_deadline().expect("a retry is due later");
    assert!(!journal
        .submit_if_due(due - std::time::Duration::from_millis(1))
        .unwrap());
    assert!(journal.degraded().is_some());
    assert!(journal.submit_if_due(due).unwrap(), "retried once due");
    assert_eq!(journal.poll().unwrap(), Some(2 * RECORDS_PER_COMMIT));
    assert!(journal.degraded().is_none());
    assert_eq!(journal.stats().retry_count, 1);
}

/// A failed fdatasync, or a write failing with EIO, stays permanent: after a failed
/// fdatasync Linux may have dropped the dirty pages, so no retry could be trusted.
#[test]
fn a_failed_sync_or_an_io_error_fails_for_good() {
    for fault in [
        Fault::FailSync {
            errno: libc::ENOSPC,
        },
        Fault::FailWrite { errno: libc::EIO },
    ] {
        let (written, _) = run_fault(fault, 3);
        assert!(written.error.is_some(), "{fault:?}");
    }
}

#[test]
fn short_and_torn_writes_are_truncated_at_the_tear() {
    for at_commit in [0, 3, 12] {
        for bytes in [0, 512, 1024, 2048, 4096] {
            let (written, _) = run_fault(Fault::ShortWrite { bytes }, at_commit);
            assert!(matches!(
                written.error,
                Some(JournalError::ShortWrite { .. })
            ));
            for garbage in [false, true] {
                run_fault(Fault::TornWrite { bytes, garbage }, at_commit);
            }
        }
    }
}

#[test]
fn a_flipped_bit_in_the_middle_refuses_to_start_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        segment_bytes_target: 64 << 20,
        ..JournalOptions::default()
    };
    // Commit 2 starts in the block holding the end of commit 1 and goes on with whole
    // new blocks; byte 5,000 of it lies in its second block, which no later commit
    // rewrites. Then ~5 MiB more, beyond the torn-tail window.
    let storage = FaultStorage::new(vec![(
        2,
        Fault::FlipBit {
            byte: 5_000,
            bit: 3,
        },
    )]);
    let mut journal = Journal::open_with_storage(dir.path(), 0, options, storage).unwrap();
    for commit in 0..3 {
        for index in commit * 200..(commit + 1) * 200 {
            journal
                .append(&record(index).as_record(), Durability::Durable)
                .unwrap();
        }
        journal.sync().unwrap();
    }
    let written = write_through_from(&mut journal, 600, 100_000);
    drop(journal);
    let error = recover_into_model(dir.path(), &RecoveryOptions::default()).unwrap_err();
    let JournalError::Corrupted { path, offset, .. } = &error else {
        panic!("expected corruption, got {error:?}");
    };
    assert!(path.to_string_lossy().ends_with(".log"), "{error}");
    assert!(
        error.to_string().contains("--recover-to-corruption"),
        "{error}"
    );
    assert!(*offset > 0 && *offset < 3 * 200 * 56, "{error}");
    let options = RecoveryOptions {
        recover_to_corruption: true,
    };
    let (last_lsn, model) = recover_into_model(dir.path(), &options).unwrap();
    assert!(
        last_lsn < written && last_lsn >= 200,
        "recovered up to the damage: {last_lsn}"
    );
    assert_eq!(model, model_of_prefix(last_lsn));
    let again = recover_into_model(dir.path(), &RecoveryOptions::default()).unwrap();
    assert_eq!(
        again.0, last_lsn,
        "after recovering to the corruption, the journal is clean"
    );
}

fn write_through_from(journal: &mut Journal<FaultStorage>, first: u64, last: u64) -> Lsn {
    for index in first..last {
        journal
            .append(&record(index).as_record(), Durability::Durable)
            .unwrap();
        if index.is_multiple_of(1000) {
            journal.sync().unwrap();
        }
    }
    journal.sync().unwrap()
}

/// A bit flipped in the last commit, with valid records after it, is not a torn tail:
/// a tear loses the end of a write, and this commit was acknowledged (the flip was
/// silent). Recovery refuses to start rather than drop acknowledged records, and the
/// flag recovers up to the damage (see docs/STORAGE.md, "Corruption").
#[test]
fn a_flipped_bit_followed_by_valid_records_refuses_to_start_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultStorage::new(vec![(4, Fault::FlipBit { byte: 100, bit: 0 })]);
    let mut journal = Journal::open_with_storage(dir.path(), 0, small_segments(), storage).unwrap();
    let written = write_through(&mut journal, 5 * RECORDS_PER_COMMIT);
    assert!(written.error.is_none(), "a silent flip reports success");
    drop(journal);
    let error = recover_into_model(dir.path(), &RecoveryOptions::default()).unwrap_err();
    assert!(
        matches!(error, JournalError::Corrupted { .. }),
        "expected corruption, got {error:?}"
    );
    let options = RecoveryOptions {
        recover_to_corruption: true,
    };
    let (last_lsn, model) = recover_into_model(dir.path(), &options).unwrap();
    assert!(last_lsn < written.appended, "cut at the damage");
    assert_eq!(model, model_of_prefix(last_lsn));
}

/// A torn tail is cut, and the scan says where and how much: file, offset, bytes cut
/// (zeros written ahead included) and bytes of data cut, so the server can log them.
#[test]
fn a_cut_torn_tail_is_reported_with_file_offset_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut journal =
        Journal::open_with_storage(dir.path(), 0, small_segments(), FileStorage::new()).unwrap();
    let written = write_through(&mut journal, 3 * RECORDS_PER_COMMIT);
    drop(journal);
    let journal_dir = tally_engine::journal::journal_dir(dir.path(), 0);
    let last = tally_engine::journal::list_segments(&journal_dir)
        .unwrap()
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&last.path).unwrap();
    // The last non-zero byte lies in the last record: damage it, keeping it non-zero.
    let data_end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    bytes[data_end - 1] ^= if bytes[data_end - 1] == 0x80 {
        0x40
    } else {
        0x80
    };
    std::fs::write(&last.path, &bytes).unwrap();
    let scan = scan_journal(&journal_dir, &RecoveryOptions::default(), |_, _| Ok(())).unwrap();
    assert_eq!(scan.last_lsn, written.appended - 1);
    let torn = scan.torn_tail.expect("a torn tail");
    assert_eq!(torn.path, last.path);
    assert!(torn.offset < data_end as u64 && data_end as u64 - torn.offset <= 512);
    assert_eq!(torn.bytes_cut, bytes.len() as u64 - torn.offset);
    assert_eq!(torn.data_bytes_cut, data_end as u64 - torn.offset);
    assert_eq!(std::fs::metadata(&last.path).unwrap().len(), torn.offset);
}
