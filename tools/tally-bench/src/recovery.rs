//! `tally-bench recovery`: how long a restart after an unclean stop takes.
//!
//! Builds a data directory with `--counters` counters (one core owning every
//! partition), checkpoints it, writes `--journal-ops` increments to the journal after
//! the checkpoint, then drops the store without a clean close (what `kill -9` leaves).
//! It then times what the server does at start: open the store, restore every
//! partition from its checkpoint and replay the journal tail. Prints
//! `recovery_seconds` (and more with `--json`).

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use tally_engine::journal::checkpoint::checkpoint_core;
use tally_engine::journal::recovery::{recover, RecoveryOptions};
use tally_engine::journal::{Durability, Journal, JournalError, JournalOptions, Record};
use tally_engine::{key_hash, BoundPolicy, DataDir, Op, OpResult, Store};

/// Arguments of `tally-bench recovery`.
#[derive(clap::Args, Debug)]
pub struct RecoveryArgs {
    /// Counters in the checkpoint.
    #[arg(long, default_value_t = 1_000_000)]
    counters: u64,
    /// Increments in the journal tail after the checkpoint.
    #[arg(long, default_value_t = 1_000_000)]
    journal_ops: u64,
    /// Partitions of the data directory (all owned by one core).
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Where to build the data directory (a temporary directory inside it).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Keep the data directory at this path and reuse it when it already exists (the
    /// build is skipped; recovery leaves it uncleanly stopped again, so runs repeat).
    /// For profiling: a reused journal may sit in the page cache.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
}

fn key_of(index: u64) -> Vec<u8> {
    format!("bench:{index:012}").into_bytes()
}

fn fill(store: &mut Store, counters: u64) -> Result<(), Box<dyn Error>> {
    let mut results: Vec<OpResult> = Vec::new();
    let mut start = 0;
    while start < counters {
        let end = (start + 10_000).min(counters);
        let batch_keys: Vec<Vec<u8>> = (start..end).map(key_of).collect();
        let ops: Vec<Op> = batch_keys
            .iter()
            .map(|key| Op::Set {
                key,
                value: 1,
                policy: BoundPolicy::Reject,
            })
            .collect();
        store.apply_batch(&ops, &mut results)?;
        start = end;
    }
    Ok(())
}

fn journal_tail(
    store: &mut Store,
    journal: &mut Journal,
    args: &RecoveryArgs,
) -> Result<(), Box<dyn Error>> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..args.journal_ops {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = key_of(state % args.counters.max(1));
        let op = Op::Add {
            key: &key,
            delta: 1,
            policy: BoundPolicy::Reject,
        };
        let outcome = store.apply(&op)?;
        let partition = (key_hash(&key) % u64::from(args.partitions)) as u32;
        let record = Record::from_op(&op, &outcome, partition).ok_or("not a mutation")?;
        let lsn = loop {
            match journal.append(&record, Durability::Relaxed) {
                Err(JournalError::BufferFull { .. }) => {
                    journal.poll()?;
                }
                other => break other?,
            }
        };
        store.set_applied_lsn(partition, lsn);
        journal.submit_if_due(Instant::now())?;
        journal.poll()?;
    }
    journal.sync()?;
    Ok(())
}

/// Builds the data directory and leaves it as an unclean stop would.
fn build(path: &Path, args: &RecoveryArgs) -> Result<(), Box<dyn Error>> {
    let dir = DataDir::open_or_create(path, Some(args.partitions))?;
    let mut store = Store::open(&dir, 0..args.partitions)?;
    let report = recover(path, &mut store, 0, &RecoveryOptions::default())?;
    let options = JournalOptions {
        next_lsn_min: report.next_lsn,
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(path, 0, options)?;
    fill(&mut store, args.counters)?;
    checkpoint_core(path, &store, &mut journal, 0, None)?;
    journal_tail(&mut store, &mut journal, args)?;
    drop(journal);
    drop(store); // no close_clean: the arenas are marked dirty, as after kill -9
    Ok(())
}

pub fn run(args: &RecoveryArgs) -> Result<(), Box<dyn Error>> {
    if args.partitions == 0 {
        return Err("--partitions must be at least 1".into());
    }
    let temporary = tempfile::tempdir_in(&args.dir)?;
    let path = args.keep.as_deref().unwrap_or(temporary.path());
    let build_started = Instant::now();
    if !path.join("journal").is_dir() {
        build(path, args)?;
    }
    let build_seconds = build_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let dir = DataDir::open_or_create(path, None)?;
    let mut store = Store::open(&dir, 0..args.partitions)?;
    let open_seconds = started.elapsed().as_secs_f64();
    let report = recover(path, &mut store, 0, &RecoveryOptions::default())?;
    let recovery_seconds = started.elapsed().as_secs_f64();
    let replay_seconds = report.replay_elapsed.as_secs_f64();
    if store.counter_count() != args.counters {
        return Err(format!(
            "recovered {} counters, expected {}",
            store.counter_count(),
            args.counters
        )
        .into());
    }
    if args.json {
        let object = serde_json::json!({
            "counters": args.counters,
            "journal_ops": args.journal_ops,
            "partitions": args.partitions,
            "recovery_seconds": recovery_seconds,
            "open_seconds": open_seconds,
            "restore_seconds": report.restore_elapsed.as_secs_f64(),
            "read_seconds": report.read_elapsed.as_secs_f64(),
            "decode_seconds": report.decode_elapsed.as_secs_f64(),
            "replay_seconds": replay_seconds,
            "checkpoint_seconds": report.checkpoint_elapsed.as_secs_f64(),
            "wait_seconds": report.wait_elapsed.as_secs_f64(),
            "records_per_sec": report.records_replayed as f64 / replay_seconds.max(1e-9),
            "records_replayed": report.records_replayed,
            "partitions_restored": report.partitions_restored.len(),
            "build_seconds": build_seconds,
        });
        println!("{object}");
    } else {
        println!(
            "recovered {} counters and replayed {} journal records in {recovery_seconds:.3} s \
             ({} partitions restored; building took {build_seconds:.1} s)",
            args.counters,
            report.records_replayed,
            report.partitions_restored.len()
        );
    }
    Ok(())
}
