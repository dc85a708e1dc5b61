//! `tally-bench journal`: group commit in-process, on the real disk, without a network.
//!
//! # Durable runs
//! One thread plays a core with `waiters` clients, each with one durable increment
//! outstanding (closed loop): apply it to the store, append its record, and when the
//! journal's `durable_lsn` passes its LSN, acknowledge it (latency = acknowledgement
//! minus append) and send the client's next increment at once. LSNs are acknowledged
//! in append order, so the outstanding increments are a FIFO queue. The thread polls
//! the io_uring completion queue without sleeping, as a busy core would. Each run sets
//! `durable_wait` (how long the first record waits for companions before its commit)
//! and `batch_bytes` (waiting bytes that submit at once, whatever the wait); with a
//! wait of zero, a commit starts whenever none is in flight and `batch_bytes` plays no
//! part, so that combination is run once. Reported: durable increments per second,
//! acknowledgement latency p50/p99/max, commits per second, records per commit.
//!
//! # Relaxed cost
//! The same core applies increments alone (`Store::apply`), then applies and journals
//! each one relaxed (append, submit when due, poll): the difference per increment is
//! what the relaxed journal costs over no journal.
//!
//! Limits: `waiters` up to [`WAITERS_MAX`], so the outstanding durable records always
//! fit in half the journal's buffer.

use std::collections::VecDeque;
use std::error::Error;
use std::path::Path;
use std::time::{Duration, Instant};

use tally_engine::journal::{
    Durability, Journal, JournalError, JournalOptions, Lsn, Record, COMMIT_BYTES_MAX,
};
use tally_engine::{BoundPolicy, DataDir, Op, Store};

use crate::latency::Recorder;
use crate::workload::{write_key, SplitMix64};

/// Most simulated clients.
const WAITERS_MAX: usize = 16_384;
/// The largest record the benchmark writes: keys `key:<u64>` are at most 24 bytes, so
/// 40 header bytes + 24, rounded to 8, + 8 checksum bytes.
const RECORD_BYTES_BENCH_MAX: usize = 72;
const _: () = assert!(WAITERS_MAX * RECORD_BYTES_BENCH_MAX <= COMMIT_BYTES_MAX / 2);

/// Partitions of the benchmark's data directory (all owned by the one core).
const PARTITIONS: u32 = 16;

/// Arguments of `tally-bench journal`.
#[derive(clap::Args, Debug)]
pub struct JournalArgs {
    /// Simulated clients, each with one durable increment outstanding (comma list).
    #[arg(long, value_delimiter = ',', default_value = "64,1024,4096")]
    waiters: Vec<usize>,
    /// `durable_wait` values in microseconds (comma list).
    #[arg(long, value_delimiter = ',', default_value = "0,200,1000")]
    wait_us: Vec<u64>,
    /// `batch_bytes` values in KiB (comma list); only used with a non-zero wait.
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,1024")]
    batch_kib: Vec<usize>,
    /// Measured seconds per run (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Counters the increments go to (uniformly at random).
    #[arg(long, default_value_t = 1_000_000)]
    counters: u64,
    /// Increments of the relaxed-cost comparison (0 skips it).
    #[arg(long, default_value_t = 5_000_000)]
    relaxed_ops: u64,
    /// Where to create the data directory (a temporary directory inside it); must be on
    /// the disk under test.
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
}

/// One durable run's settings.
#[derive(Clone, Copy, Debug)]
struct RunSettings {
    waiters: usize,
    wait: Duration,
    batch_bytes: usize,
}

/// The store, the journal, and the key generator a run drives.
struct Core {
    store: Store,
    journal: Journal,
    random: SplitMix64,
    counters: u64,
    key: Vec<u8>,
}

impl Core {
    fn open(path: &Path, options: JournalOptions, counters: u64) -> Result<Core, Box<dyn Error>> {
        let dir = DataDir::open_or_create(path, Some(PARTITIONS))?;
        let store = Store::open(&dir, 0..PARTITIONS)?;
        let journal = Journal::open(path, 0, options)?;
        Ok(Core {
            store,
            journal,
            random: SplitMix64::new(0x5EED),
            counters,
            key: Vec::with_capacity(64),
        })
    }

    /// Applies one random increment; journals it with `durability` unless `None`.
    fn increment(&mut self, durability: Option<Durability>) -> Result<Lsn, Box<dyn Error>> {
        let rank = self.random.below(self.counters);
        self.key.clear();
        write_key(&mut self.key, rank);
        let op = Op::Add {
            key: &self.key,
            delta: 1,
            policy: BoundPolicy::Reject,
        };
        let outcome = self.store.apply(&op)?;
        let Some(durability) = durability else {
            return Ok(0);
        };
        let partition = (tally_engine::key_hash(&self.key) % u64::from(PARTITIONS)) as u32;
        let record = Record::from_op(&op, &outcome, partition).ok_or("not a mutation")?;
        let lsn = loop {
            match self.journal.append(&record, durability) {
                // A full buffer behind a slow commit: wait for the disk, as the server
                // does, then append the record of the increment already applied.
                Err(JournalError::BufferFull { .. }) => self.journal.sync().map(|_| ())?,
                other => break other?,
            }
        };
        self.store.set_applied_lsn(partition, lsn);
        Ok(lsn)
    }
}

/// What one durable run measured.
struct RunResult {
    settings: RunSettings,
    acknowledged: u64,
    seconds: f64,
    latency: Recorder,
    commits: u64,
    records: u64,
}

/// Runs `settings` for `warmup + measure`, counting only acknowledgements after warm-up.
fn durable_run(
    parent: &Path,
    settings: RunSettings,
    counters: u64,
    warmup: Duration,
    measure: Duration,
) -> Result<RunResult, Box<dyn Error>> {
    let temporary = tempfile::tempdir_in(parent)?;
    let options = JournalOptions {
        durable_wait: settings.wait,
        batch_bytes: settings.batch_bytes,
        ..JournalOptions::default()
    };
    let mut core = Core::open(temporary.path(), options, counters)?;
    let mut outstanding: VecDeque<(Lsn, Instant)> = VecDeque::with_capacity(settings.waiters);
    for _ in 0..settings.waiters {
        let lsn = core.increment(Some(Durability::Durable))?;
        outstanding.push_back((lsn, Instant::now()));
    }
    let started = Instant::now();
    let measure_from = started + warmup;
    let end = measure_from + measure;
    let mut latency = Recorder::default();
    let mut acknowledged = 0u64;
    let mut stats_at_start = None;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if stats_at_start.is_none() && now >= measure_from {
            stats_at_start = Some(core.journal.stats());
        }
        core.journal.submit_if_due(now)?;
        let Some(durable) = core.journal.poll()? else {
            continue;
        };
        let now = Instant::now();
        while outstanding.front().is_some_and(|&(lsn, _)| lsn <= durable) {
            let (_, appended) = outstanding.pop_front().expect("checked");
            if now >= measure_from {
                latency.record(now - appended);
                acknowledged += 1;
            }
            let lsn = core.increment(Some(Durability::Durable))?;
            outstanding.push_back((lsn, Instant::now()));
        }
    }
    let seconds = end.duration_since(measure_from).as_secs_f64();
    let before = stats_at_start.unwrap_or_default();
    let after = core.journal.stats();
    core.journal.sync()?;
    Ok(RunResult {
        settings,
        acknowledged,
        seconds,
        latency,
        commits: after.commit_count - before.commit_count,
        records: after.record_count - before.record_count,
    })
}

/// The durable runs to make: every waiter count with a zero wait once, and with each
/// non-zero wait at each batch size.
fn settings_list(args: &JournalArgs) -> Vec<RunSettings> {
    let mut list = Vec::new();
    for &waiters in &args.waiters {
        for &wait_us in &args.wait_us {
            let wait = Duration::from_micros(wait_us);
            let batches: Vec<usize> = if wait.is_zero() {
                vec![JournalOptions::default().batch_bytes]
            } else {
                args.batch_kib.iter().map(|kib| kib << 10).collect()
            };
            for batch_bytes in batches {
                list.push(RunSettings {
                    waiters,
                    wait,
                    batch_bytes,
                });
            }
        }
    }
    list
}

fn validate(args: &JournalArgs) -> Result<(), Box<dyn Error>> {
    if let Some(&bad) = args.waiters.iter().find(|&&w| w == 0 || w > WAITERS_MAX) {
        return Err(format!("--waiters {bad} is outside 1..={WAITERS_MAX}").into());
    }
    if let Some(&bad) = args
        .batch_kib
        .iter()
        .find(|&&kib| kib == 0 || kib << 10 > COMMIT_BYTES_MAX)
    {
        let most = COMMIT_BYTES_MAX >> 10;
        return Err(format!("--batch-kib {bad} is outside 1..={most}").into());
    }
    if !(args.seconds > 0.0 && args.seconds <= 600.0) {
        return Err("--seconds must be in (0, 600]".into());
    }
    if args.counters == 0 {
        return Err("--counters must be at least 1".into());
    }
    Ok(())
}

fn print_run(result: &RunResult, json: bool) {
    let settings = result.settings;
    let per_second = result.acknowledged as f64 / result.seconds;
    let commits_per_second = result.commits as f64 / result.seconds;
    let records_per_commit = result.records as f64 / result.commits.max(1) as f64;
    let summary = result.latency.summary();
    if json {
        let object = serde_json::json!({
            "mode": "durable",
            "waiters": settings.waiters,
            "durable_wait_us": settings.wait.as_micros() as u64,
            "batch_bytes": settings.batch_bytes,
            "durable_increments_per_sec": per_second,
            "commits_per_sec": commits_per_second,
            "records_per_commit": records_per_commit,
            "latency": summary,
        });
        out!("{object}");
    } else {
        out!(
            "durable  waiters {:>5}  wait {:>5} us  batch {:>5} KiB  {:>10.0} incr/s  \
             {:>6.0} commits/s  {:>7.1} records/commit  p50 {:>8.1} us  p99 {:>8.1} us",
            settings.waiters,
            settings.wait.as_micros(),
            settings.batch_bytes >> 10,
            per_second,
            commits_per_second,
            records_per_commit,
            result.latency.quantile_us(0.50),
            result.latency.quantile_us(0.99),
        );
    }
}

/// Times `ops` increments applied alone, then applied and journaled relaxed.
fn relaxed_cost(args: &JournalArgs) -> Result<(), Box<dyn Error>> {
    let temporary = tempfile::tempdir_in(&args.dir)?;
    let mut core = Core::open(temporary.path(), JournalOptions::default(), args.counters)?;
    // Insert every counter first, so both passes only update existing counters.
    for _ in 0..args.counters.min(args.relaxed_ops) {
        core.increment(None)?;
    }
    let started = Instant::now();
    for _ in 0..args.relaxed_ops {
        core.increment(None)?;
    }
    let apply_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..args.relaxed_ops {
        relaxed_increment(&mut core)?;
    }
    let journaled_seconds = started.elapsed().as_secs_f64();
    core.journal.sync()?;
    let ops = args.relaxed_ops as f64;
    let cost_ns = (journaled_seconds - apply_seconds) / ops * 1e9;
    if args.json {
        let object = serde_json::json!({
            "mode": "relaxed_cost",
            "ops": args.relaxed_ops,
            "apply_only_per_sec": ops / apply_seconds,
            "apply_and_relaxed_journal_per_sec": ops / journaled_seconds,
            "relaxed_journal_ns_per_op": cost_ns,
            "journal_commits": core.journal.stats().commit_count,
        });
        out!("{object}");
    } else {
        out!(
            "relaxed  apply alone {:.0}/s, apply + relaxed journal {:.0}/s: the journal costs \
             {cost_ns:.0} ns per increment",
            ops / apply_seconds,
            ops / journaled_seconds
        );
    }
    Ok(())
}

/// One relaxed increment as a core makes it: apply, append, submit when due, poll.
fn relaxed_increment(core: &mut Core) -> Result<(), Box<dyn Error>> {
    core.increment(Some(Durability::Relaxed))?;
    core.journal.submit_if_due(Instant::now())?;
    core.journal.poll()?;
    Ok(())
}

pub fn run(args: &JournalArgs) -> Result<(), Box<dyn Error>> {
    validate(args)?;
    let measure = Duration::from_secs_f64(args.seconds);
    let warmup = measure / 5;
    for settings in settings_list(args) {
        let result = durable_run(&args.dir, settings, args.counters, warmup, measure)?;
        print_run(&result, args.json);
    }
    if args.relaxed_ops > 0 {
        relaxed_cost(args)?;
    }
    Ok(())
}
