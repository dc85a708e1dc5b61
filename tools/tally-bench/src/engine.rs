//! `tally-bench engine`: the counter engine in-process on one pinned core.
//!
//! 1. Loads `--counters` counters (keys of `--key-bytes` bytes), one `Store::apply` per
//!    insert, timing each one: the load grows every table from its first 64 lines to
//!    full size (table creations, incremental migrations, the release of old tables), so
//!    the longest insert is the longest pause growth imposed on a partition
//!    (`growth_pause_us_max`); `insert_latency_us_p999` shows the common case. On a
//!    virtual machine that figure includes the host's stalls (when both vCPUs of this
//!    one are busy, as with the arena helper at work, its CPUs stop for 0.7 to 3 ms at
//!    a time), so the page faults inserts took (`insert_page_faults`,
//!    `insert_page_faults_max`, the engine's doing) and the host's steal during the load
//!    (`load_steal_ms`, as far as the host reports it) are printed beside it.
//! 2. Reads the memory cost: arena bytes / counters, and process RSS growth / counters
//!    (RSS from `/proc/self/statm`; mapped file pages count once touched).
//! 3. Applies `--ops` increments in batches of `--batch`, to uniformly random existing
//!    keys (or one key with `--hot-key`), timing only `apply_batch` (building the batch's
//!    keys is excluded).
//! 4. Measures the floor in the same run: random read-modify-writes of whole 64-byte lines
//!    over an array as large as the arenas, with the same batch shape and prefetch
//!    distance, so a drifting machine speed shows in both figures alike.
//! 5. Verifies the sum of all counters (load + increments), and prints one JSON object
//!    (`--json`) or a human summary.
//!
//! The data directory is a temporary directory unless `--data-dir` is given; a temporary
//! one is deleted afterwards.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::latency::Recorder;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tally_engine::{
    BoundPolicy, DataDir, Op, OpResult, Store, BATCH_OPS_MAX, KEY_BYTES_MAX, PREFETCH_DISTANCE,
};

#[derive(Args, Debug)]
pub struct EngineArgs {
    /// Counters to create before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    counters: u64,
    /// Increments to measure (at least 1).
    #[arg(long, default_value_t = 10_000_000)]
    ops: u64,
    /// Bytes per key (1..=255; keys over 16 bytes go to the key heap).
    #[arg(long, default_value_t = 16)]
    key_bytes: usize,
    /// Operations per batch (1..=10000).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Increment one single key instead of random keys.
    #[arg(long)]
    hot_key: bool,
    /// Print one JSON object instead of a human summary.
    #[arg(long)]
    json: bool,
    /// Data directory (default: a temporary directory, deleted afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Partitions of a new data directory (all owned by the one benchmark thread).
    #[arg(long, default_value_t = tally_engine::PARTITION_COUNT_DEFAULT)]
    partitions: u32,
    /// CPU to pin the benchmark thread to.
    #[arg(long, default_value_t = 0)]
    core: usize,
    /// Seed of the key sequence.
    #[arg(long, default_value_t = 0x7a11_7a11)]
    seed: u64,
}

/// SplitMix64: a small, fast, well-mixed sequence for picking keys.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (fast range).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }
}

/// Writes key number `index` into `out` (`out.len()` bytes): its little-endian bytes,
/// then filler, so distinct indexes give distinct keys while `index < 256^len`.
fn write_key(index: u64, out: &mut [u8]) {
    let bytes = index.to_le_bytes();
    let prefix = out.len().min(8);
    out[..prefix].copy_from_slice(&bytes[..prefix]);
    out[prefix..].fill(b'k');
}

fn check(args: &EngineArgs) -> Result<(), Box<dyn Error>> {
    if args.key_bytes == 0 || args.key_bytes > KEY_BYTES_MAX {
        return Err(format!("--key-bytes must be 1..={KEY_BYTES_MAX}").into());
    }
    if args.batch == 0 || args.batch > BATCH_OPS_MAX {
        return Err(format!("--batch must be 1..={BATCH_OPS_MAX}").into());
    }
    // Zero increments measure nothing: the rates would be 0 ops/s and inf ns/op.
    if args.ops == 0 {
        return Err("--ops must be at least 1".into());
    }
    let distinct_keys = if args.key_bytes >= 8 {
        u64::MAX
    } else {
        1u64 << (8 * args.key_bytes)
    };
    if args.counters == 0 || args.counters > distinct_keys {
        return Err(format!(
            "--counters must be 1..={distinct_keys} for {}-byte keys",
            args.key_bytes
        )
        .into());
    }
    Ok(())
}

/// Pins the calling thread to `core`.
fn pin_to_core(core: usize) -> Result<(), Box<dyn Error>> {
    // SAFETY: cpu_set_t is plain data that CPU_ZERO/CPU_SET initialise; sched_setaffinity
    // reads `size_of::<cpu_set_t>()` bytes of it and only affects this thread (pid 0).
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        return Err(format!(
            "pinning to core {core}: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

/// getrusage of `who` (`RUSAGE_SELF`: the process, `RUSAGE_THREAD`: the calling thread).
fn resource_usage(who: libc::c_int) -> libc::rusage {
    // SAFETY: getrusage fills the zero-initialised struct it is given and reads nothing.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    }
}

/// Page faults this process has taken so far (minor, major).
fn page_faults() -> (u64, u64) {
    let usage = resource_usage(libc::RUSAGE_SELF);
    (usage.ru_minflt as u64, usage.ru_majflt as u64)
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let resident_pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    resident_pages * page_bytes
}

/// A field of `/proc/self/smaps_rollup` in bytes (e.g. "AnonHugePages").
fn smaps_bytes(field: &str) -> u64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    rollup
        .lines()
        .find(|line| line.starts_with(field) && line[field.len()..].starts_with(':'))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// A bar for one stage (`load`, `increment`), counting `unit`s: one bar per stage, since
/// the stages run at different rates and a rate or eta over both would fit neither.
fn progress(stage: &'static str, unit: &'static str, length: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let template = format!(
        "{{prefix:>9}} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} ({{rate}} {unit}/s, eta {{eta}})"
    );
    let style = ProgressStyle::with_template(&template)
        .expect("valid template")
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.0}", state.per_sec());
            },
        )
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(stage);
    bar
}

/// Reusable batch buffers: the keys' bytes and the operations' results.
struct Batch {
    key_bytes: Vec<u8>,
    results: Vec<OpResult>,
}

impl Batch {
    fn new(args: &EngineArgs) -> Batch {
        Batch {
            key_bytes: vec![0; args.batch * args.key_bytes],
            results: Vec::with_capacity(args.batch),
        }
    }

    /// Applies one batch of additions to the keys `indexes` and returns the time spent in
    /// `apply_batch` alone.
    fn add(
        &mut self,
        store: &mut Store,
        indexes: &[u64],
        key_len: usize,
        delta: i64,
    ) -> Result<Duration, Box<dyn Error>> {
        for (index, out) in indexes.iter().zip(self.key_bytes.chunks_exact_mut(key_len)) {
            write_key(*index, out);
        }
        let ops: Vec<Op> = self
            .key_bytes
            .chunks_exact(key_len)
            .take(indexes.len())
            .map(|key| Op::Add {
                key,
                delta,
                policy: BoundPolicy::Reject,
            })
            .collect();
        let start = Instant::now();
        store.apply_batch(&ops, &mut self.results)?;
        let elapsed = start.elapsed();
        if let Some(Err(error)) = self.results.iter().find(|r| r.is_err()) {
            return Err(format!("an increment failed: {error}").into());
        }
        Ok(elapsed)
    }

    /// Inserts counters `indexes` (value 1) one `Store::apply` at a time, timing each:
    /// the time of one call is the pause that insert imposed on its partition, growth
    /// steps included. `first` is the number of counters before the first of them.
    fn insert_timed(
        &mut self,
        store: &mut Store,
        indexes: &[u64],
        key_len: usize,
        first: u64,
        load: &mut Load,
    ) -> Result<(), Box<dyn Error>> {
        for (index, out) in indexes.iter().zip(self.key_bytes.chunks_exact_mut(key_len)) {
            write_key(*index, out);
        }
        let keys = self.key_bytes.chunks_exact(key_len).take(indexes.len());
        for (offset, key) in keys.enumerate() {
            let op = Op::Add {
                key,
                delta: 1,
                policy: BoundPolicy::Reject,
            };
            let start = Instant::now();
            let result = store.apply(&op);
            let elapsed = start.elapsed();
            if let Err(error) = result {
                return Err(format!("an insert failed: {error}").into());
            }
            load.total += elapsed;
            load.latencies.record(elapsed);
            // Was this thread preempted (by another process on its core) since the last
            // check, just after the previous insert, and did it take page faults? Read
            // outside the timed call.
            let usage = ThreadUsage::now();
            let preempted = usage.involuntary_switches != load.usage.involuntary_switches;
            let faults = usage.page_faults - load.usage.page_faults;
            load.usage = usage;
            load.page_faults += faults;
            load.page_faults_max = load.page_faults_max.max(faults);
            if preempted {
                load.preempted += 1;
                load.preempted_max = load.preempted_max.max(elapsed);
                continue;
            }
            if elapsed > load.max {
                load.max = elapsed;
                load.max_at = first + offset as u64;
            }
        }
        Ok(())
    }
}

/// What the load phase measured: every insert's latency, the longest exactly.
#[derive(Default)]
struct Load {
    total: Duration,
    latencies: Recorder,
    /// The longest insert during which the thread was not preempted, and the counters
    /// before it.
    max: Duration,
    max_at: u64,
    /// This thread's counts at the last check.
    usage: ThreadUsage,
    /// Page faults the thread took in inserts (the faults of building the keys, outside
    /// the timed calls, count too: none after the first batch, whose buffer is reused),
    /// and the most in one insert.
    page_faults: u64,
    page_faults_max: u64,
    /// Inserts during which the thread was preempted, and the longest of them (the
    /// machine's doing, not the engine's).
    preempted: u64,
    preempted_max: Duration,
}

/// What the calling thread has undergone so far.
#[derive(Clone, Copy, Default)]
struct ThreadUsage {
    /// Preemptions.
    involuntary_switches: u64,
    /// Minor and major page faults.
    page_faults: u64,
}

impl ThreadUsage {
    fn now() -> ThreadUsage {
        let usage = resource_usage(libc::RUSAGE_THREAD);
        ThreadUsage {
            involuntary_switches: usage.ru_nivcsw as u64,
            page_faults: (usage.ru_minflt + usage.ru_majflt) as u64,
        }
    }
}

/// Time the host of this virtual machine ran something else while one of its CPUs had
/// work ("steal" in /proc/stat, all CPUs together; zero on bare metal).
fn steal_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .and_then(|cpu| cpu.split_whitespace().nth(8))
        .and_then(|steal| steal.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

struct Measured {
    load: Duration,
    ops: Duration,
    floor: Duration,
    arena_bytes: u64,
    rss_growth_bytes: u64,
    /// Transparent huge pages of the process after the load (the arenas are anonymous
    /// memory, nearly all of it).
    arena_huge_bytes: u64,
    floor_huge_bytes: u64,
    /// Page faults taken during the increments (write faults on file pages cleaned by
    /// the kernel's writeback, or first touches after a remap).
    ops_page_faults: u64,
    /// Latency of every single insert of the load.
    inserts: Recorder,
    /// The longest insert, exactly, and how many counters existed before it.
    insert_max: Duration,
    insert_max_at: u64,
    /// Inserts during which the thread was preempted (left out of `insert_max`), and the
    /// longest of them.
    inserts_preempted: u64,
    insert_preempted_max: Duration,
    /// Page faults taken by the load thread in inserts, and the most in one insert.
    insert_page_faults: u64,
    insert_page_faults_max: u64,
    /// Time the host stole from this machine's CPUs during the load.
    load_steal: Duration,
    verified: bool,
}

pub fn run(args: &EngineArgs) -> Result<(), Box<dyn Error>> {
    check(args)?;
    pin_to_core(args.core)?;
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("tally-bench-engine")
                .tempdir()?,
        ),
    };
    let path = args.data_dir.clone().unwrap_or_else(|| {
        temporary
            .as_ref()
            .expect("temporary dir")
            .path()
            .to_path_buf()
    });
    let measured = measure(args, &path)?;
    drop(temporary);
    report(args, &measured);
    if !measured.verified {
        return Err(
            "verification failed: the counters' sum differs from the increments applied".into(),
        );
    }
    Ok(())
}

fn measure(args: &EngineArgs, path: &std::path::Path) -> Result<Measured, Box<dyn Error>> {
    let rss_before = rss_bytes();
    let dir = DataDir::open_or_create(path, Some(args.partitions))?;
    let mut store = Store::open(&dir, 0..dir.partition_count())?;
    if store.counter_count() != 0 {
        return Err(format!("data directory {} is not empty", path.display()).into());
    }
    let long_run = args.counters + args.ops > 5_000_000;
    let visible = long_run && !args.json;
    let bar = progress("load", "counters", args.counters, visible);
    let mut batch = Batch::new(args);
    let mut indexes: Vec<u64> = Vec::with_capacity(args.batch);

    let mut load = Load {
        usage: ThreadUsage::now(),
        ..Load::default()
    };
    let steal_before = steal_time();
    let mut next = 0;
    while next < args.counters {
        let end = (next + args.batch as u64).min(args.counters);
        indexes.clear();
        indexes.extend(next..end);
        batch.insert_timed(&mut store, &indexes, args.key_bytes, next, &mut load)?;
        bar.inc(end - next);
        next = end;
    }
    let load_steal = steal_time().saturating_sub(steal_before);
    let arena_bytes = store.arena_bytes();
    let rss_growth_bytes = rss_bytes().saturating_sub(rss_before);
    let arena_huge_bytes = smaps_bytes("AnonHugePages");

    bar.finish_and_clear();
    let bar = progress("increment", "increments", args.ops, visible);
    let faults_before = page_faults();
    let mut rng = SplitMix(args.seed);
    let mut ops_time = Duration::ZERO;
    let mut done = 0;
    while done < args.ops {
        let count = (args.ops - done).min(args.batch as u64);
        indexes.clear();
        for _ in 0..count {
            indexes.push(if args.hot_key {
                0
            } else {
                rng.below(args.counters)
            });
        }
        ops_time += batch.add(&mut store, &indexes, args.key_bytes, 1)?;
        done += count;
        bar.inc(count);
    }
    bar.finish_and_clear();
    let faults_after = page_faults();
    let ops_page_faults = (faults_after.0 - faults_before.0) + (faults_after.1 - faults_before.1);

    let mut sum: i128 = 0;
    for partition in 0..store.partition_count() {
        store.for_each_counter(partition, |_, value, _, _| sum += i128::from(value));
    }
    let verified = sum == i128::from(args.counters) + i128::from(args.ops)
        && store.counter_count() == args.counters;
    store.close_clean()?;
    let (floor, floor_huge_bytes) = measure_floor(args, arena_bytes);
    Ok(Measured {
        load: load.total,
        ops: ops_time,
        floor,
        arena_bytes,
        rss_growth_bytes,
        arena_huge_bytes,
        floor_huge_bytes,
        ops_page_faults,
        inserts: load.latencies,
        insert_max: load.max,
        insert_max_at: load.max_at,
        insert_page_faults: load.page_faults,
        insert_page_faults_max: load.page_faults_max,
        load_steal,
        inserts_preempted: load.preempted,
        insert_preempted_max: load.preempted_max,
        verified,
    })
}

/// One 64-byte line of the floor array.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u64; 8]);

/// Random read-modify-writes of whole lines over `bytes` of memory, in batches shaped
/// like the engine's (indexes first, then apply with prefetch `PREFETCH_DISTANCE` ahead).
fn measure_floor(args: &EngineArgs, bytes: u64) -> (Duration, u64) {
    let line_count = (bytes / 64).max(1) as usize;
    // Advise before the first touch, so the page faults of the fill get huge pages.
    let mut lines: Vec<Line> = Vec::with_capacity(line_count);
    advise_huge_pages(lines.spare_capacity_mut());
    lines.resize(line_count, Line([0; 8]));
    let mut rng = SplitMix(args.seed ^ 0xf100_7000);
    let mut targets: Vec<usize> = Vec::with_capacity(args.batch);
    let mut elapsed = Duration::ZERO;
    let mut done = 0;
    while done < args.ops {
        let count = (args.ops - done).min(args.batch as u64) as usize;
        targets.clear();
        for _ in 0..count {
            targets.push(if args.hot_key {
                0
            } else {
                rng.below(line_count as u64) as usize
            });
        }
        let start = Instant::now();
        for index in 0..count {
            if let Some(&ahead) = targets.get(index + PREFETCH_DISTANCE) {
                prefetch(&lines[ahead]);
            }
            let line = &mut lines[targets[index]];
            line.0[0] = line.0[0].wrapping_add(1);
            line.0[7] = line.0[0];
        }
        elapsed += start.elapsed();
        done += count as u64;
    }
    std::hint::black_box(&lines);
    (elapsed, smaps_bytes("AnonHugePages"))
}

/// Asks for transparent huge pages over the floor array, as the engine does for its
/// arenas, so both figures see the same TLB behaviour.
fn advise_huge_pages(lines: &mut [std::mem::MaybeUninit<Line>]) {
    const HUGE_PAGE_BYTES: usize = 2 << 20;
    let start = lines.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(lines);
    let aligned_start = start.next_multiple_of(HUGE_PAGE_BYTES);
    let aligned_end = end / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if aligned_end > aligned_start {
        // SAFETY: madvise only changes how the kernel backs this range of the live,
        // exclusively borrowed allocation; MADV_HUGEPAGE never changes its contents.
        unsafe {
            libc::madvise(
                aligned_start as *mut libc::c_void,
                aligned_end - aligned_start,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[inline(always)]
fn prefetch(line: &Line) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults; the pointer is a live reference.
    unsafe {
        core::arch::x86_64::_mm_prefetch(
            (line as *const Line).cast::<i8>(),
            core::arch::x86_64::_MM_HINT_T0,
        );
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The longest of all inserts, preempted or not, in microseconds.
fn insert_us_max(m: &Measured) -> f64 {
    m.insert_max.max(m.insert_preempted_max).as_secs_f64() * 1e6
}

/// The inserts' latency at `quantile`, over all inserts like [`insert_us_max`], and
/// never above it. The histogram reports the top of a value's bucket, up to 0.1% above
/// the value recorded; the exact maximum bounds every quantile.
fn insert_us_quantile(inserts: &Recorder, quantile: f64, all_us_max: f64) -> f64 {
    inserts.quantile_us(quantile).min(all_us_max)
}

/// The human summary of the inserts' latencies: `max` is the longest insert not
/// preempted (at `max_at` counters), `preempted_max` the longest of the `preempted`
/// others. The first line's percentiles and max are all over every insert, so they
/// cannot contradict; the second line names the growth pause, which leaves the
/// preempted ones out.
fn insert_latency_lines(
    inserts: &Recorder,
    max: Duration,
    max_at: u64,
    preempted: u64,
    preempted_max: Duration,
) -> [String; 2] {
    let all_us_max = max.max(preempted_max).as_secs_f64() * 1e6;
    let quantile = |quantile| insert_us_quantile(inserts, quantile, all_us_max);
    [
        format!(
            "  inserts     p50 {:.2} us, p99.9 {:.2} us, p99.999 {:.1} us, max {:.1} us (all {} inserts)",
            quantile(0.5),
            quantile(0.999),
            quantile(0.99999),
            all_us_max,
            inserts.count()
        ),
        format!(
            "              longest not preempted {:.1} us (at {} counters); {} preempted, the longest {:.1} us",
            max.as_secs_f64() * 1e6,
            max_at,
            preempted,
            preempted_max.as_secs_f64() * 1e6
        ),
    ]
}

fn report(args: &EngineArgs, m: &Measured) {
    let ops_per_sec = per_second(args.ops, m.ops);
    let floor_ops_per_sec = per_second(args.ops, m.floor);
    let load_per_sec = per_second(args.counters, m.load);
    let arena_per_counter = m.arena_bytes as f64 / args.counters as f64;
    let rss_per_counter = m.rss_growth_bytes as f64 / args.counters as f64;
    if args.json {
        let object = serde_json::json!({
            "counters": args.counters,
            "ops": args.ops,
            "key_bytes": args.key_bytes,
            "batch": args.batch,
            "hot_key": args.hot_key,
            "partitions": args.partitions,
            "prefetch_distance": PREFETCH_DISTANCE,
            "ops_per_sec": ops_per_sec.round(),
            "floor_ops_per_sec": floor_ops_per_sec.round(),
            "ns_per_op": 1e9 / ops_per_sec,
            "load_secs": m.load.as_secs_f64(),
            "load_inserts_per_sec": load_per_sec.round(),
            "growth_pause_us_max": m.insert_max.as_secs_f64() * 1e6,
            "growth_pause_at_counters": m.insert_max_at,
            "insert_latency_us_p50": insert_us_quantile(&m.inserts, 0.5, insert_us_max(m)),
            "insert_latency_us_p999": insert_us_quantile(&m.inserts, 0.999, insert_us_max(m)),
            "insert_latency_us_p99999": insert_us_quantile(&m.inserts, 0.99999, insert_us_max(m)),
            "insert_latency_us_max": insert_us_max(m),
            "inserts_preempted": m.inserts_preempted,
            "insert_preempted_us_max": m.insert_preempted_max.as_secs_f64() * 1e6,
            "insert_page_faults": m.insert_page_faults,
            "insert_page_faults_max": m.insert_page_faults_max,
            "load_steal_ms": m.load_steal.as_secs_f64() * 1e3,
            "arena_bytes": m.arena_bytes,
            "bytes_per_counter_arena": arena_per_counter,
            "rss_growth_bytes": m.rss_growth_bytes,
            "bytes_per_counter_rss": rss_per_counter,
            "arena_huge_page_bytes": m.arena_huge_bytes,
            "floor_huge_page_bytes": m.floor_huge_bytes,
            "ops_page_faults": m.ops_page_faults,
            "verified": m.verified,
        });
        out!("{object}");
        return;
    }
    let target = if args.hot_key {
        "one hot key"
    } else {
        "random existing keys"
    };
    out!(
        "tally-bench engine: {} counters, {}-byte keys, {} partitions",
        args.counters,
        args.key_bytes,
        args.partitions
    );
    out!(
        "  load        {:.2} s, {:.2} M inserts/s",
        m.load.as_secs_f64(),
        load_per_sec / 1e6
    );
    for line in insert_latency_lines(
        &m.inserts,
        m.insert_max,
        m.insert_max_at,
        m.inserts_preempted,
        m.insert_preempted_max,
    ) {
        out!("{line}");
    }
    out!(
        "              {} page faults in inserts, at most {} in one",
        m.insert_page_faults,
        m.insert_page_faults_max
    );
    out!(
        "              the host stole {:.0} ms of CPU time during the load",
        m.load_steal.as_secs_f64() * 1e3
    );
    out!("  memory      {arena_per_counter:.1} B/counter (arena), {rss_per_counter:.1} B/counter (RSS growth)");
    out!(
        "  increments  {} to {target} in batches of {}",
        args.ops,
        args.batch
    );
    out!(
        "              {:.1} M ops/s ({:.1} ns/op)",
        ops_per_sec / 1e6,
        1e9 / ops_per_sec
    );
    out!(
        "  floor       {:.1} M line RMW/s over {} MB",
        floor_ops_per_sec / 1e6,
        m.arena_bytes >> 20
    );
    out!(
        "  huge pages  {} MB of the arenas, {} MB of the floor array",
        m.arena_huge_bytes >> 20,
        m.floor_huge_bytes >> 20
    );
    out!(
        "  faults      {} page faults during the increments",
        m.ops_page_faults
    );
    out!("  verified    {}", m.verified);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The number after `label` in `line`.
    fn figure(line: &str, label: &str) -> f64 {
        let rest = &line[line.find(label).expect(label) + label.len()..];
        let number = rest.split_whitespace().next().expect("a figure");
        number.parse().expect("a number")
    }

    #[test]
    fn no_insert_percentile_exceeds_the_max_shown() {
        // 100,000 fast inserts, the longest not preempted 275.2 us, and ten preempted
        // ones of 312.6 us: the p99.999 falls among the preempted.
        let mut inserts = Recorder::default();
        for _ in 0..100_000 {
            inserts.record(Duration::from_nanos(210));
        }
        let (max, preempted_max) = (Duration::from_nanos(275_200), Duration::from_nanos(312_600));
        inserts.record(max);
        for _ in 0..10 {
            inserts.record(preempted_max);
        }
        let lines = insert_latency_lines(&inserts, max, 4_096, 10, preempted_max);
        let shown_max = figure(&lines[0], "max ");
        for label in ["p50 ", "p99.9 ", "p99.999 "] {
            let percentile = figure(&lines[0], label);
            assert!(
                percentile <= shown_max,
                "{label}above the max: {}",
                lines[0]
            );
        }
    }
}
