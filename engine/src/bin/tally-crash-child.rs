//! Test-only child process for the journal crash test (`engine/tests/journal_crash.rs`).
//!
//! Usage: `tally-crash-child <data-dir> <seed>`. It recovers the data directory, prints
//! every counter's value (`V <counter> <value>`) and `READY`, then increments random
//! counters forever through store + journal, printing (each line flushed):
//! - `S <counter>...` before it applies a batch (what was sent),
//! - `R <counter>...` for relaxed increments, acknowledged at once,
//! - `D <counter>...` for durable increments, once the journal's durable LSN covers them.
//!
//! The parent kills it with SIGKILL at random moments and checks, after each restart,
//! that every durably acknowledged increment survived exactly once and no counter
//! exceeds what was sent.

use std::io::Write;
use std::path::Path;

use tally_engine::journal::checkpoint::checkpoint_core;
use tally_engine::journal::recovery::{recover, RecoveryOptions};
use tally_engine::journal::{Durability, Journal, JournalOptions, Lsn, Record};
use tally_engine::{key_hash, BoundPolicy, DataDir, Op, Store};

const PARTITIONS: u32 = 4;
const COUNTERS: u64 = 500;
const BATCH_INCREMENTS: usize = 32;
const CHECKPOINT_EVERY_BATCHES: u64 = 300;

fn key_of(counter: u64) -> Vec<u8> {
    format!("crash-counter-{counter}").into_bytes()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = args
        .next()
        .ok_or("usage: tally-crash-child <data-dir> <seed>")?;
    let seed: u64 = args.next().ok_or("missing seed")?.parse()?;
    let data_dir = Path::new(&data_dir);
    let dir = DataDir::open_or_create(data_dir, Some(PARTITIONS))?;
    let mut store = Store::open(&dir, 0..PARTITIONS)?;
    let report = recover(data_dir, &mut store, 0, &RecoveryOptions::default())?;
    let options = JournalOptions {
        next_lsn_min: report.next_lsn,
        segment_bytes_target: 256 << 10,
        ..JournalOptions::default()
    };
    let mut journal = Journal::open(data_dir, 0, options)?;
    let mut out = std::io::stdout().lock();
    for counter in 0..COUNTERS {
        let value = store.get(&key_of(counter))?.unwrap_or(0);
        writeln!(out, "V {counter} {value}")?;
    }
    writeln!(out, "READY")?;
    out.flush()?;
    run(&mut store, &mut journal, data_dir, Rng(seed | 1), &mut out)
}

fn run(
    store: &mut Store,
    journal: &mut Journal,
    data_dir: &Path,
    mut rng: Rng,
    out: &mut impl Write,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut pending: Vec<(Lsn, u64)> = Vec::new();
    for batch in 1u64.. {
        let counters: Vec<u64> = (0..BATCH_INCREMENTS)
            .map(|_| rng.next() % COUNTERS)
            .collect();
        let durable = batch % 2 == 0;
        writeln!(out, "S {}", join(&counters))?;
        out.flush()?;
        for &counter in &counters {
            let key = key_of(counter);
            let op = Op::Add {
                key: &key,
                delta: 1,
                policy: BoundPolicy::Reject,
            };
            let outcome = store.apply(&op)?;
            let partition = (key_hash(&key) % u64::from(PARTITIONS)) as u32;
            let record = Record::from_op(&op, &outcome, partition).ok_or("not a mutation")?;
            let mode = if durable {
                Durability::Durable
            } else {
                Durability::Relaxed
            };
            let lsn = append(journal, &record, mode)?;
            store.set_applied_lsn(partition, lsn);
            if durable {
                pending.push((lsn, counter));
            }
        }
        if !durable {
            writeln!(out, "R {}", join(&counters))?;
        }
        journal.submit_if_due(std::time::Instant::now())?;
        journal.poll()?;
        acknowledge(journal.durable_lsn(), &mut pending, out)?;
        if batch % CHECKPOINT_EVERY_BATCHES == 0 {
            checkpoint_core(data_dir, store, journal, 0, None)?;
            acknowledge(journal.durable_lsn(), &mut pending, out)?;
        }
        out.flush()?;
    }
    Ok(())
}

fn append(
    journal: &mut Journal,
    record: &Record<'_>,
    mode: Durability,
) -> Result<Lsn, Box<dyn std::error::Error>> {
    loop {
        match journal.append(record, mode) {
            Err(tally_engine::journal::JournalError::BufferFull { .. }) => {
                journal.poll()?;
            }
            other => return Ok(other?),
        }
    }
}

fn acknowledge(
    durable_lsn: Lsn,
    pending: &mut Vec<(Lsn, u64)>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let done = pending.partition_point(|&(lsn, _)| lsn <= durable_lsn);
    if done > 0 {
        let counters: Vec<u64> = pending.drain(..done).map(|(_, counter)| counter).collect();
        // Short lines, so each reaches the pipe in one write and a kill never cuts one.
        for chunk in counters.chunks(BATCH_INCREMENTS) {
            writeln!(out, "D {}", join(chunk))?;
        }
    }
    Ok(())
}

fn join(counters: &[u64]) -> String {
    counters
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
