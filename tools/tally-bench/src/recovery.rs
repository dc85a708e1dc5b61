//! `tally-bench recovery`: how long a restart after an unclean stop takes.
//!
//! Builds a data directory with `--counters` counters over `--cores` cores (partition
//! `p` owned by core `p % cores`, as in `tallyd`), checkpoints it, writes
//! `--journal-ops` increments to the owning cores' journals after the checkpoint, then
//! drops the stores without a clean close (what `kill -9` leaves). It then times what
//! the server does at start, where every core recovers its own partitions on its own
//! thread at the same time: open the store, restore every partition from its
//! checkpoint and replay the journal tail. Prints `recovery_seconds` (the wall time
//! until the last core is done) and, with `--json`, the slowest core's breakdown of the
//! time and every core's in `per_core`; the counts at the top level are totals over the
//! cores (`partitions_restored`, `records_replayed_all_cores`), except `records_replayed`,
//! the slowest core's. With `--keep`, the parameters the directory was built with are
//! kept beside it in [`BUILD_PARAMETERS_FILE`], and a run with other parameters is
//! refused rather than timing a directory that is not what it asks for. Keys are the counter's index in `--key-bytes` zero-padded decimal digits
//! (16 by default: inline in their slot, like the engine benchmark's).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tally_engine::journal::checkpoint::checkpoint_core;
use tally_engine::journal::recovery::{recover, RecoveryOptions, RecoveryReport};
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
    /// Partitions of the data directory.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Bytes per key: the counter's index in zero-padded decimal. 16 (the default) keeps
    /// keys inline in their slot, as the engine benchmark's; 17 or more puts them in the
    /// key heap, which doubles the memory to restore and adds a miss per replayed record.
    #[arg(long, default_value_t = 16)]
    key_bytes: usize,
    /// Cores recovering in parallel, each owning the partitions `p % cores == core`
    /// and its own journal (as `tallyd --cores`). Defaults to every CPU, as `tallyd`
    /// does, so that the default run times the restart `tallyd` would make.
    #[arg(long, default_value_t = all_cpus())]
    cores: u32,
    /// Where to build the data directory (a temporary directory inside it).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Keep the data directory at this path and reuse it when it already exists (the
    /// build is skipped; recovery leaves it uncleanly stopped again, so runs repeat).
    /// For profiling: a reused journal sits in the page cache (the previous recovery
    /// read it), which it does not after `kill -9` (tallyd writes it with O_DIRECT), so
    /// a kept directory times a second restart; the first run, like a fresh build, reads
    /// the journal from the device.
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
}

/// The file beside a `--keep` directory that records what it was built with.
pub const BUILD_PARAMETERS_FILE: &str = "tally-bench-recovery.json";

/// What a built directory depends on, as `--flag value` pairs.
fn build_parameters(args: &RecoveryArgs) -> String {
    format!(
        "--counters {} --journal-ops {} --partitions {} --key-bytes {} --cores {}",
        args.counters, args.journal_ops, args.partitions, args.key_bytes, args.cores
    )
}

/// `DIR.tally-bench-recovery.json` for a kept directory `DIR`: beside it, not in it, so
/// the data directory holds only what the engine wrote.
fn parameters_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(BUILD_PARAMETERS_FILE);
    path.with_file_name(name)
}

/// Refuses a kept directory built with other parameters.
fn check_kept(path: &Path, args: &RecoveryArgs) -> Result<(), Box<dyn Error>> {
    let wanted = build_parameters(args);
    let recorded = std::fs::read_to_string(parameters_path(path)).ok();
    let recorded: Option<String> = recorded
        .as_deref()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .and_then(|value| value["parameters"].as_str().map(str::to_owned));
    match recorded {
        Some(recorded) if recorded == wanted => Ok(()),
        Some(recorded) => Err(format!(
            "the kept directory {} was built with different parameters ({recorded}); this \
             run asks for {wanted}: pass the same ones, or remove the directory to rebuild it",
            path.display()
        )
        .into()),
        None => Err(format!(
            "the kept directory {} has no record of the parameters it was built with ({} \
             is missing): remove the directory to rebuild it",
            path.display(),
            parameters_path(path).display()
        )
        .into()),
    }
}

/// The CPUs this process may run on (`tallyd`'s default core count).
fn all_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Key of counter `index`: its decimal digits, zero-padded to `key_bytes`.
fn key_of(index: u64, key_bytes: usize) -> Vec<u8> {
    format!("{index:0key_bytes$}").into_bytes()
}

/// Keys of `key_bytes` digits name at least `counters` counters, and are valid keys.
fn check_key_bytes(key_bytes: usize, counters: u64) -> Result<(), String> {
    let names_all = u32::try_from(key_bytes)
        .ok()
        .and_then(|digits| 10u64.checked_pow(digits))
        .is_none_or(|distinct| distinct >= counters);
    if !(1..=255).contains(&key_bytes) || !names_all {
        return Err(format!(
            "--key-bytes {key_bytes}: keys are 1 to 255 bytes and need enough decimal \
             digits for {counters} counters"
        ));
    }
    Ok(())
}

/// The core owning `partition` (as `tallyd`'s router: `p % cores`).
fn owner(partition: u32, cores: u32) -> usize {
    (partition % cores) as usize
}

fn partition_of(key: &[u8], partitions: u32) -> u32 {
    (key_hash(key) % u64::from(partitions)) as u32
}

fn fill(stores: &mut [Store], args: &RecoveryArgs) -> Result<(), Box<dyn Error>> {
    let mut results: Vec<OpResult> = Vec::new();
    let mut start = 0;
    while start < args.counters {
        let end = (start + 10_000).min(args.counters);
        let mut per_core: Vec<Vec<Vec<u8>>> = vec![Vec::new(); stores.len()];
        for key in (start..end).map(|index| key_of(index, args.key_bytes)) {
            per_core[owner(partition_of(&key, args.partitions), args.cores)].push(key);
        }
        for (store, keys) in stores.iter_mut().zip(&per_core) {
            let ops: Vec<Op> = keys
                .iter()
                .map(|key| Op::Set {
                    key,
                    value: 1,
                    policy: BoundPolicy::Reject,
                })
                .collect();
            store.apply_batch(&ops, &mut results)?;
            if let Some(error) = results.iter().find_map(|r| r.as_ref().err()) {
                return Err(format!("filling: {error}").into());
            }
        }
        start = end;
    }
    Ok(())
}

fn journal_tail(
    stores: &mut [Store],
    journals: &mut [Journal],
    args: &RecoveryArgs,
) -> Result<(), Box<dyn Error>> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..args.journal_ops {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let key = key_of(state % args.counters.max(1), args.key_bytes);
        let op = Op::Add {
            key: &key,
            delta: 1,
            policy: BoundPolicy::Reject,
        };
        let partition = partition_of(&key, args.partitions);
        let core = owner(partition, args.cores);
        let (store, journal) = (&mut stores[core], &mut journals[core]);
        let outcome = store.apply(&op)?;
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
    for journal in journals {
        journal.sync()?;
    }
    Ok(())
}

fn owned(core: usize, args: &RecoveryArgs) -> Vec<u32> {
    (0..args.partitions)
        .filter(|&p| owner(p, args.cores) == core)
        .collect()
}

/// Builds the data directory and leaves it as an unclean stop would.
fn build(path: &Path, args: &RecoveryArgs) -> Result<(), Box<dyn Error>> {
    let dir = DataDir::open_or_create(path, Some(args.partitions))?;
    let mut stores = Vec::new();
    let mut journals = Vec::new();
    for core in 0..args.cores as usize {
        let mut store = Store::open(&dir, owned(core, args))?;
        let report = recover(path, &mut store, core as u32, &RecoveryOptions::default())?;
        let options = JournalOptions {
            next_lsn_min: report.next_lsn,
            ..JournalOptions::default()
        };
        journals.push(Journal::open(path, core as u32, options)?);
        stores.push(store);
    }
    fill(&mut stores, args)?;
    for (core, (store, journal)) in stores.iter().zip(&mut journals).enumerate() {
        checkpoint_core(path, store, journal, core as u32, None)?;
    }
    journal_tail(&mut stores, &mut journals, args)?;
    drop(journals);
    drop(stores); // no close_clean: the arenas are marked dirty, as after kill -9
    Ok(())
}

/// What one core's recovery took.
struct CoreRecovery {
    seconds: f64,
    counters: u64,
    report: RecoveryReport,
}

/// Recovers every core on its own thread, all at once, as `tallyd` starts.
fn recover_cores(path: &Path, args: &RecoveryArgs) -> Result<Vec<CoreRecovery>, Box<dyn Error>> {
    let dir = DataDir::open_or_create(path, None)?;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..args.cores as usize)
            .map(|core| {
                let dir = &dir;
                scope.spawn(move || -> Result<CoreRecovery, String> {
                    pin_to_cpu(core);
                    let started = Instant::now();
                    let mut store =
                        Store::open(dir, owned(core, args)).map_err(|e| e.to_string())?;
                    let options = RecoveryOptions::default();
                    let report = recover(path, &mut store, core as u32, &options)
                        .map_err(|e| e.to_string())?;
                    Ok(CoreRecovery {
                        seconds: started.elapsed().as_secs_f64(),
                        counters: store.counter_count(),
                        report,
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| "a recovering thread panicked".into())
                    .and_then(|result| result.map_err(Into::into))
            })
            .collect()
    })
}

/// Pins the calling thread to CPU `core % CPUs`, as `tallyd` pins each core's thread
/// (glommio `Placement::Fixed`); helper threads the recovery starts inherit it unless
/// they widen it themselves.
fn pin_to_cpu(core: usize) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: cpu_set_t is a plain bit array, valid when zeroed; CPU_SET writes a bit of
    // the set we own; sched_setaffinity only reads `set`, of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core % cpus, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn core_json(core: &CoreRecovery) -> serde_json::Value {
    let report = &core.report;
    let replay_seconds = report.replay_elapsed.as_secs_f64();
    serde_json::json!({
        "recovery_seconds": core.seconds,
        "restore_seconds": report.restore_elapsed.as_secs_f64(),
        "read_seconds": report.read_elapsed.as_secs_f64(),
        "decode_seconds": report.decode_elapsed.as_secs_f64(),
        "replay_seconds": replay_seconds,
        "checkpoint_seconds": report.checkpoint_elapsed.as_secs_f64(),
        "wait_seconds": report.wait_elapsed.as_secs_f64(),
        "records_per_sec": report.records_replayed as f64 / replay_seconds.max(1e-9),
        "records_replayed": report.records_replayed,
        "partitions_restored": report.partitions_restored.len(),
    })
}

pub fn run(args: &RecoveryArgs) -> Result<(), Box<dyn Error>> {
    if args.partitions == 0 || args.cores == 0 || args.cores > args.partitions {
        return Err("--partitions and --cores must be at least 1, cores <= partitions".into());
    }
    if args.counters == 0 {
        return Err(
            "--counters must be at least 1: the journal tail increments the \
                    checkpointed counters, and there is nothing to restore without any"
                .into(),
        );
    }
    check_key_bytes(args.key_bytes, args.counters)?;
    let temporary = tempfile::tempdir_in(&args.dir)?;
    let path = args.keep.as_deref().unwrap_or(temporary.path());
    let build_started = Instant::now();
    if !path.join("journal").is_dir() {
        build(path, args)?;
        if args.keep.is_some() {
            let record = serde_json::json!({"parameters": build_parameters(args)});
            std::fs::write(parameters_path(path), record.to_string())
                .map_err(|error| format!("writing {}: {error}", parameters_path(path).display()))?;
        }
    } else {
        check_kept(path, args)?;
    }
    let build_seconds = build_started.elapsed().as_secs_f64();
    let started = Instant::now();
    let cores = recover_cores(path, args)?;
    let recovery_seconds = started.elapsed().as_secs_f64();
    let counters: u64 = cores.iter().map(|core| core.counters).sum();
    if counters != args.counters {
        return Err(format!("recovered {counters} counters, expected {}", args.counters).into());
    }
    let replayed: u64 = cores.iter().map(|c| c.report.records_replayed).sum();
    let slowest = cores
        .iter()
        .max_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .expect("at least one core");
    if args.json {
        let mut object = core_json(slowest);
        let fields = object.as_object_mut().expect("an object");
        fields.insert("recovery_seconds".into(), recovery_seconds.into());
        fields.insert("counters".into(), args.counters.into());
        fields.insert("journal_ops".into(), args.journal_ops.into());
        fields.insert("partitions".into(), args.partitions.into());
        fields.insert("key_bytes".into(), args.key_bytes.into());
        fields.insert("cores".into(), args.cores.into());
        fields.insert("records_replayed_all_cores".into(), replayed.into());
        let partitions_restored: usize = cores
            .iter()
            .map(|core| core.report.partitions_restored.len())
            .sum();
        fields.insert("partitions_restored".into(), partitions_restored.into());
        fields.insert("build_seconds".into(), build_seconds.into());
        fields.insert(
            "per_core".into(),
            cores.iter().map(core_json).collect::<Vec<_>>().into(),
        );
        out!("{object}");
    } else {
        out!(
            "recovered {} counters and replayed {replayed} journal records on {} core(s) in \
             {recovery_seconds:.3} s (building took {build_seconds:.1} s)",
            args.counters,
            args.cores
        );
    }
    Ok(())
}
