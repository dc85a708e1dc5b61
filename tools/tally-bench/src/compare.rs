//! `tally-bench compare`: Redis and Tally side by side, on 127.0.0.1, in one run.
//!
//! It starts each server in turn (Redis without persistence, Redis with
//! `appendfsync always`, `tallyd` relaxed, `tallyd` durable), drives each with the same
//! workloads through [`crate::server::measure`] (Tally in both its native protocol and RESP),
//! runs `redis-benchmark` against every RESP port so a third-party generator confirms the
//! numbers, stops what it started, and prints a table with Tally/Redis ratios: relaxed
//! Tally against Redis without persistence, durable Tally against Redis `appendfsync
//! always`. It installs nothing: the binaries are given as paths.
//!
//! Each freshly started server is filled before its first workload (`server --fill`:
//! every key of `0..--keys` incremented once, untimed), so every row times increments
//! of existing counters.
//!
//! Every flag and program is checked before the first server starts. A run that fails
//! (or measures with errors) is listed after the table and on stderr, and makes the
//! exit code 1; the rest is still printed. Servers and their scratch directories are
//! cleaned up however the run ends, signals included ([`crate::cleanup`]).

use crate::cleanup::{die_with_parent, GuardedChild, ScratchDir};
use crate::server::{self, DriveError, RunReport, ServerArgs, WireProtocol};
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after it was started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The most `--tallyd-arg`s accepted.
pub const TALLYD_ARGS_MAX: usize = 64;
// `--tallyd-arg`'s help spells the limit out (a doc comment cannot name the constant).
const _: () = assert!(TALLYD_ARGS_MAX == 64);

/// Flags of `tally-bench compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// The redis-server binary to compare against (e.g. /usr/bin/redis-server).
    #[arg(long)]
    pub redis_server: PathBuf,
    /// The tallyd binary (default: `tallyd` next to this executable).
    #[arg(long)]
    pub tallyd: Option<PathBuf>,
    /// An extra argument for every tallyd started, after the ones compare sets;
    /// repeatable: `--tallyd-arg=--spin-us=200` reports tallyd with a spinning
    /// executor. At most 64.
    #[arg(long = "tallyd-arg", allow_hyphen_values = true)]
    pub tallyd_args: Vec<String>,
    /// The redis-benchmark binary (default: `redis-benchmark` next to redis-server,
    /// else on PATH; without one, a note says its runs were skipped).
    #[arg(long)]
    pub redis_benchmark: Option<PathBuf>,
    /// Seconds each workload runs against each server. Each server is filled (every
    /// key incremented once, untimed) before its first workload.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 2_000_000)]
    pub redis_benchmark_requests: u64,
    /// Skip the Tally runs (measure Redis alone).
    #[arg(long)]
    pub redis_only: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write one latency plot (SVG) per workload into this directory.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
}

/// Why a comparison failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} exited or was not ready within {STARTUP_TIMEOUT:?}; its output:\n{output}")]
    NotReady { program: String, output: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{system}, {workload}: {source}")]
    Drive {
        system: &'static str,
        workload: &'static str,
        source: DriveError,
    },
    #[error("{count} --tallyd-arg given, at most {TALLYD_ARGS_MAX}")]
    TooManyTallydArgs { count: usize },
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("{flag} {}: {reason}", path.display())]
    Program {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "{} of the runs failed, so the comparison is incomplete:{}",
        failures.len(),
        failures.iter().map(|failure| format!("\n  {failure}")).collect::<String>()
    )]
    RunsFailed { failures: Vec<String> },
}

/// One workload: the same flags for every server.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Workload {
    pub name: &'static str,
    pub connections: usize,
    pub pipeline: usize,
}

/// The workloads every server runs, in order.
pub const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "1 connection, unpipelined",
        connections: 1,
        pipeline: 1,
    },
    Workload {
        name: "50 connections, unpipelined",
        connections: 50,
        pipeline: 1,
    },
    Workload {
        name: "4 connections, pipeline 16",
        connections: 4,
        pipeline: 16,
    },
    Workload {
        name: "4 connections, pipeline 64",
        connections: 4,
        pipeline: 64,
    },
];

/// The servers, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Redis,
    RedisAofAlways,
    TallyRelaxed,
    TallyDurable,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Redis => "redis",
            System::RedisAofAlways => "redis-aof-always",
            System::TallyRelaxed => "tally-relaxed",
            System::TallyDurable => "tally-durable",
        }
    }

    /// The Redis configuration Tally in this mode is measured against.
    pub fn baseline(self) -> System {
        match self {
            System::Redis | System::TallyRelaxed => System::Redis,
            System::RedisAofAlways | System::TallyDurable => System::RedisAofAlways,
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub system: System,
    /// Throughput over the baseline's for the same workload (RESP baseline run).
    pub ops_ratio_vs_redis: Option<f64>,
    /// p99 over the baseline's p99 (below 1 is better).
    pub p99_ratio_vs_redis: Option<f64>,
    #[serde(flatten)]
    pub report: RunReport,
}

/// One `redis-benchmark` run.
#[derive(Clone, Debug, Serialize)]
pub struct RedisBenchmarkRow {
    pub system: System,
    pub command: String,
    pub requests_per_sec: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The CSV line as printed, or the error output.
    pub raw: String,
}

/// Everything `compare` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub rows: Vec<Row>,
    pub redis_benchmark: Vec<RedisBenchmarkRow>,
    pub notes: Vec<String>,
    /// The runs that failed or measured with errors, one line each: a comparison with
    /// any makes `compare` exit non-zero (after printing the rest).
    pub failures: Vec<String>,
}

/// A server process this run started. Dropping it kills and reaps the process, then
/// removes its scratch directory (fields drop in declaration order).
struct Started {
    system: System,
    child: GuardedChild,
    /// The native port (Tally) or the RESP port (Redis).
    main_addr: SocketAddr,
    /// The RESP port, if the server has one.
    resp_addr: Option<SocketAddr>,
    /// Held for its drop, after the child's.
    _data_dir: ScratchDir,
}

/// A fresh scratch directory for `system`'s data.
fn scratch_dir(system: System) -> Result<ScratchDir, CompareError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let name = format!(
        "tally-compare-{}-{}-{nanos}",
        system.name(),
        std::process::id()
    );
    ScratchDir::create(&name).map_err(|source| CompareError::Io {
        what: format!("creating {}", std::env::temp_dir().join(name).display()),
        source,
    })
}

fn free_port() -> Result<u16, CompareError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| CompareError::Io {
            what: "finding a free port".into(),
            source,
        })
}

fn spawn(program: &Path, arguments: &[String]) -> Result<GuardedChild, CompareError> {
    let mut command = Command::new(program);
    command
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    GuardedChild::spawn(&mut command).map_err(|source| CompareError::Spawn {
        program: program.display().to_string(),
        source,
    })
}

/// Collect the child's output lines on a channel, so readiness can be awaited with a
/// timeout and the output shown if it never comes.
fn watch_output(child: &mut Child) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    let streams: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ];
    for stream in streams.into_iter().flatten() {
        let sender = sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
    }
    receiver
}

/// Wait until `ready` holds, the child exits, or the timeout passes.
fn await_ready(
    started: &mut Started,
    output: &mpsc::Receiver<String>,
    program: &Path,
    ready: &mut dyn FnMut(&str, &mut Started) -> bool,
) -> Result<(), CompareError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut seen = String::new();
    let mut ready_seen = false;
    let accepts =
        |addr: Option<SocketAddr>| addr.is_none_or(|addr| TcpStream::connect(addr).is_ok());
    while Instant::now() < deadline {
        match output.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                ready_seen |= ready(&line, started);
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(50))
            }
        }
        if ready_seen && accepts(Some(started.main_addr)) && accepts(started.resp_addr) {
            return Ok(());
        }
        if let Ok(Some(status)) = started.child.child().try_wait() {
            seen.push_str(&format!("(exited: {status})\n"));
            break;
        }
    }
    Err(CompareError::NotReady {
        program: program.display().to_string(),
        output: seen,
    })
}

fn start_redis(redis_server: &Path, system: System) -> Result<Started, CompareError> {
    let port = free_port()?;
    let data_dir = scratch_dir(system)?;
    let mut arguments: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
        &data_dir.path().display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let persistence: &[&str] = match system {
        System::RedisAofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
        _ => &["--appendonly", "no"],
    };
    arguments.extend(persistence.iter().map(|s| s.to_string()));
    let mut child = spawn(redis_server, &arguments)?;
    let output = watch_output(child.child());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut started = Started {
        system,
        child,
        main_addr: addr,
        resp_addr: Some(addr),
        _data_dir: data_dir,
    };
    await_ready(&mut started, &output, redis_server, &mut |line, _| {
        line.contains("Ready to accept connections")
    })?;
    Ok(started)
}

/// Start tallyd on port 0 (its main, shard and RESP ports all chosen by the system, so
/// they cannot collide with each other) and read the addresses it announces.
fn start_tallyd(
    tallyd: &Path,
    extra: &[String],
    system: System,
    with_resp: bool,
) -> Result<Started, CompareError> {
    let data_dir = scratch_dir(system)?;
    let durability = if system == System::TallyDurable {
        "durable"
    } else {
        "relaxed"
    };
    let mut arguments = vec![
        "--data-dir".to_owned(),
        data_dir.path().display().to_string(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--durability".to_owned(),
        durability.to_owned(),
    ];
    if with_resp {
        arguments.push("--resp-listen".to_owned());
        arguments.push("127.0.0.1:0".to_owned());
    }
    arguments.extend(extra.iter().cloned());
    let mut child = spawn(tallyd, &arguments)?;
    let output = watch_output(child.child());
    let mut started = Started {
        system,
        child,
        main_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        resp_addr: None,
        _data_dir: data_dir,
    };
    let (mut main_seen, mut resp_seen) = (false, !with_resp);
    await_ready(&mut started, &output, tallyd, &mut |line, started| {
        if let Some(addr) = announced_addr(line) {
            if line.contains("resp listening on") {
                started.resp_addr = Some(addr);
                resp_seen = true;
            } else if line.contains("tallyd listening on") {
                started.main_addr = addr;
                main_seen = true;
            }
        }
        main_seen && resp_seen
    })?;
    Ok(started)
}

/// The address in a `tallyd listening on ADDR (shard ports ...)` or `tallyd resp
/// listening on ADDR` line.
fn announced_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The `tally-bench server` flags of one workload against one address.
fn server_args(
    args: &CompareArgs,
    workload: &Workload,
    addr: SocketAddr,
    protocol: WireProtocol,
) -> ServerArgs {
    ServerArgs {
        addr,
        protocol,
        connections: workload.connections,
        pipeline: workload.pipeline,
        batch: 1,
        keys: args.keys,
        ops: u64::MAX,
        duration: Some(args.seconds),
        distribution: server::KeyDistribution::Uniform,
        zipf_exponent: 0.99,
        delta: 1,
        rate: None,
        durability: server::DurabilityChoice::Server,
        shard_aware: true,
        spin_us: None,
        via_client: false,
        seed: 1,
        fill: false,
        allow_errors: true,
        json: false,
        plot: None,
    }
}

/// Run every workload against `started`, over each protocol it serves. A run that
/// fails (a server that drops connections, a door that misbehaves) becomes a note, and
/// the comparison goes on with the next one.
fn drive_all(args: &CompareArgs, started: &Started, comparison: &mut Comparison) {
    let mut endpoints = Vec::new();
    match started.system {
        System::Redis | System::RedisAofAlways => {
            endpoints.push((started.main_addr, WireProtocol::Resp))
        }
        System::TallyRelaxed | System::TallyDurable => {
            endpoints.push((started.main_addr, WireProtocol::Native));
            endpoints.extend(started.resp_addr.map(|addr| (addr, WireProtocol::Resp)));
        }
    }
    // A fresh server has no counters: without the fill, its first workload would time
    // mostly creations and the later ones increments.
    let mut filled = false;
    for workload in &WORKLOADS {
        for &(addr, protocol) in &endpoints {
            let mut flags = server_args(args, workload, addr, protocol);
            flags.fill = !filled;
            filled = true;
            let run = format!("{}, {}, {protocol:?}", started.system.name(), workload.name);
            let report = match server::measure(&flags) {
                Ok(report) => report,
                Err(error) => {
                    let failure = format!("{run}: run failed: {error}");
                    eprintln!("  {failure}");
                    comparison.failures.push(failure);
                    continue;
                }
            };
            if !args.json {
                eprintln!("  {:<17} {}", started.system.name(), report.human());
            }
            // Errors make the figures those of another workload (and a run where all
            // failed measured only error replies): report it, keep what was measured.
            if report.ops_failed > 0 {
                let failure = format!(
                    "{run}: {} of {} increments failed (the first error of the comparison is printed above)",
                    report.ops_failed,
                    report.ops + report.ops_failed
                );
                eprintln!("  {failure}");
                comparison.failures.push(failure);
                if report.ops == 0 {
                    continue;
                }
            }
            comparison.rows.push(Row {
                workload: workload.name,
                system: started.system,
                ops_ratio_vs_redis: None,
                p99_ratio_vs_redis: None,
                report,
            });
        }
    }
}

/// Run `redis-benchmark -t incr -P 16 -c 50` against `addr` and parse its CSV line.
fn redis_benchmark(
    args: &CompareArgs,
    program: &Path,
    system: System,
    addr: SocketAddr,
) -> RedisBenchmarkRow {
    let arguments = [
        "-h".to_owned(),
        addr.ip().to_string(),
        "-p".to_owned(),
        addr.port().to_string(),
        "-t".to_owned(),
        "incr".to_owned(),
        "-P".to_owned(),
        "16".to_owned(),
        "-c".to_owned(),
        "50".to_owned(),
        "-n".to_owned(),
        args.redis_benchmark_requests.to_string(),
        "-r".to_owned(),
        args.keys.to_string(),
        "--csv".to_owned(),
    ];
    let command = format!("redis-benchmark {}", arguments.join(" "));
    let output = die_with_parent(Command::new(program).args(&arguments))
        .stdin(Stdio::null())
        .output();
    let (raw, fields) = match output {
        Err(error) => (
            format!("cannot run {}: {error}", program.display()),
            Vec::new(),
        ),
        Ok(output) => {
            let stdout = String::from_utf8_lossy(&output.stdout);
            match stdout.lines().find(|line| line.starts_with("\"INCR\"")) {
                Some(line) => (line.to_owned(), parse_csv_numbers(line)),
                None => (
                    format!(
                        "no INCR line ({}): {stdout}{}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    ),
                    Vec::new(),
                ),
            }
        }
    };
    // CSV columns: test, rps, avg, min, p50, p95, p99, max (latencies in ms).
    RedisBenchmarkRow {
        system,
        command,
        requests_per_sec: fields.first().copied(),
        p50_ms: fields.get(3).copied(),
        p99_ms: fields.get(5).copied(),
        raw,
    }
}

/// Keep `row`; one without a figure (the program would not run, or printed no INCR
/// line) is a failure, with the start of what it said.
fn push_redis_benchmark(comparison: &mut Comparison, row: RedisBenchmarkRow) {
    if row.requests_per_sec.is_none() {
        let said: String = row.raw.trim().chars().take(300).collect();
        let failure = format!("{}, redis-benchmark: {said}", row.system.name());
        eprintln!("  {failure}");
        comparison.failures.push(failure);
    }
    comparison.redis_benchmark.push(row);
}

fn parse_csv_numbers(line: &str) -> Vec<f64> {
    line.split(',')
        .skip(1)
        .filter_map(|field| field.trim_matches('"').parse().ok())
        .collect()
}

/// Fill in each Tally row's ratios against the Redis RESP run of the same workload.
fn add_ratios(rows: &mut [Row]) {
    let baselines: Vec<(&'static str, System, f64, f64)> = rows
        .iter()
        .filter(|row| matches!(row.system, System::Redis | System::RedisAofAlways))
        .map(|row| {
            (
                row.workload,
                row.system,
                row.report.ops_per_sec,
                row.report.latency.p99_us,
            )
        })
        .collect();
    for row in rows.iter_mut() {
        let baseline = baselines.iter().find(|(workload, system, _, _)| {
            *workload == row.workload && *system == row.system.baseline()
        });
        if let Some(&(_, _, ops_per_sec, p99_us)) = baseline {
            row.ops_ratio_vs_redis =
                (ops_per_sec > 0.0).then(|| row.report.ops_per_sec / ops_per_sec);
            row.p99_ratio_vs_redis = (p99_us > 0.0).then(|| row.report.latency.p99_us / p99_us);
        }
    }
}

/// The comparison as a Markdown table (also readable in a terminal).
pub fn table(comparison: &Comparison) -> String {
    let mut out = String::from(
        "| workload | system | protocol | ops/s | p50 us | p99 us | p99.9 us | ops vs Redis | p99 vs Redis |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let ratio = |value: Option<f64>| match value {
        None => "-".to_owned(),
        // Small ratios (a p99 a hundred times lower) keep three significant digits.
        Some(value) if value < 0.1 => format!("{value:.4}x"),
        Some(value) => format!("{value:.2}x"),
    };

    for row in &comparison.rows {
        out.push_str(
            &format!(
                "| {} | {} | {:?} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
                row.workload,
                row.system.name(),
                row.report.protocol,
                row.report.ops_per_sec,
                row.report.latency.p50_us,
                row.report.latency.p99_us,
                row.report.latency.p999_us,
                ratio(row.ops_ratio_vs_redis),
                ratio(row.p99_ratio_vs_redis),
            )
            .to_lowercase(),
        );
    }
    if !comparison.redis_benchmark.is_empty() {
        out.push_str("\n| redis-benchmark -t incr -P 16 -c 50 against | requests/s | p50 ms | p99 ms |\n|---|---:|---:|---:|\n");
        let number = |value: Option<f64>, digits: usize| {
            value.map_or("-".to_owned(), |value| format!("{value:.digits$}"))
        };
        for row in &comparison.redis_benchmark {
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                row.system.name(),
                number(row.requests_per_sec, 0),
                number(row.p50_ms, 3),
                number(row.p99_ms, 3)
            ));
        }
    }
    for note in &comparison.notes {
        out.push_str(&format!("\nNote: {note}\n"));
    }
    for failure in &comparison.failures {
        out.push_str(&format!("\nFailed: {failure}\n"));
    }
    out
}

/// The plot of workload `index` (of [`WORKLOADS`]) in `dir`.
fn plot_path(dir: &Path, index: usize) -> PathBuf {
    let workload = &WORKLOADS[index];
    dir.join(format!(
        "compare-{}-c{}-p{}.svg",
        index + 1,
        workload.connections,
        workload.pipeline
    ))
}

fn write_plots(dir: &Path, rows: &[Row]) -> Result<(), CompareError> {
    std::fs::create_dir_all(dir).map_err(|source| CompareError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    for (index, workload) in WORKLOADS.iter().enumerate() {
        let selected: Vec<&Row> = rows
            .iter()
            .filter(|row| row.workload == workload.name)
            .collect();
        let labels: Vec<String> = selected
            .iter()
            .map(|row| format!("{} {:?}", row.system.name(), row.report.protocol).to_lowercase())
            .collect();
        let series: Vec<crate::plot::Series<'_>> = selected
            .iter()
            .zip(&labels)
            .map(|(row, label)| crate::plot::Series {
                label,
                points: &row.report.curve,
            })
            .collect();
        let svg = crate::plot::percentile_svg(&format!("INCR latency: {}", workload.name), &series);
        let path = plot_path(dir, index);
        server::write_plot(&path, &svg).map_err(|source| CompareError::Drive {
            system: "plot",
            workload: workload.name,
            source,
        })?;
    }
    Ok(())
}

/// The programs a comparison runs, found and checked before anything starts.
#[derive(Debug)]
struct Programs {
    redis_server: PathBuf,
    /// `None`: Tally runs skipped (`--redis-only`, or no tallyd found).
    tallyd: Option<PathBuf>,
    redis_benchmark: Option<PathBuf>,
}

/// Whether `path` is a file this process may execute (what `execve` will need).
fn check_executable(flag: &'static str, path: &Path) -> Result<PathBuf, CompareError> {
    let refuse = |reason: String| CompareError::Program {
        flag,
        path: path.to_owned(),
        reason,
    };
    // A name without a slash (`redis-server`) is looked up on PATH, as `Command` would.
    let resolved = if !path.as_os_str().as_encoded_bytes().contains(&b'/') {
        find_on_path(path.as_os_str()).ok_or_else(|| refuse("not found on PATH".into()))?
    } else {
        path.to_owned()
    };
    let metadata = std::fs::metadata(&resolved).map_err(|error| refuse(error.to_string()))?;
    if !metadata.is_file() {
        return Err(refuse("not a file".into()));
    }
    let path_c = std::ffi::CString::new(resolved.as_os_str().as_encoded_bytes())
        .map_err(|_| refuse("contains a NUL byte".into()))?;
    // SAFETY: `path_c` is a NUL-terminated string that outlives the call; access(2) only
    // reads it.
    if unsafe { libc::access(path_c.as_ptr(), libc::X_OK) } != 0 {
        return Err(refuse(format!(
            "not executable: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(resolved)
}

/// The first executable file called `name` in a directory of PATH.
fn find_on_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        // An empty entry means the current directory (and must not recurse).
        .map(|dir| match dir.as_os_str().is_empty() {
            true => Path::new(".").join(name),
            false => dir.join(name),
        })
        .find(|candidate| check_executable("PATH", candidate).is_ok())
}

/// Check every argument and find every program, so that a mistake is reported before
/// any server starts rather than after minutes of runs.
fn validate(args: &CompareArgs) -> Result<Programs, CompareError> {
    let invalid = |reason: &str| Err(CompareError::InvalidArguments(reason.to_owned()));
    if args.tallyd_args.len() > TALLYD_ARGS_MAX {
        return Err(CompareError::TooManyTallydArgs {
            count: args.tallyd_args.len(),
        });
    }
    if !(args.seconds > 0.0 && args.seconds < 1e6) {
        return invalid("--seconds must be a number of seconds above 0 and below 1000000");
    }
    if args.keys == 0 {
        return invalid("--keys must be at least 1");
    }
    if args.redis_benchmark_requests == 0 {
        return invalid("--redis-benchmark-requests must be at least 1");
    }
    // Every run's flags, as `server` will check them (a port stands in for the server's).
    let placeholder = SocketAddr::from(([127, 0, 0, 1], 1));
    for workload in &WORKLOADS {
        for protocol in [WireProtocol::Native, WireProtocol::Resp] {
            server::validate(&server_args(args, workload, placeholder, protocol))
                .map_err(|error| CompareError::InvalidArguments(error.to_string()))?;
        }
    }
    let redis_server = check_executable("--redis-server", &args.redis_server)?;
    let tallyd = match (args.redis_only, &args.tallyd) {
        (true, _) => None,
        (false, Some(tallyd)) => Some(check_executable("--tallyd", tallyd)?),
        (false, None) => std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("tallyd"))
            .filter(|sibling| check_executable("--tallyd", sibling).is_ok()),
    };
    // Asked for by path: it must work. Otherwise the one next to redis-server (same
    // version), then PATH; none at all is a note, not an error.
    let redis_benchmark = match &args.redis_benchmark {
        Some(path) => Some(check_executable("--redis-benchmark", path)?),
        None => {
            let sibling = redis_server.with_file_name("redis-benchmark");
            check_executable("--redis-benchmark", &sibling)
                .ok()
                .or_else(|| find_on_path("redis-benchmark".as_ref()))
        }
    };
    Ok(Programs {
        redis_server,
        tallyd,
        redis_benchmark,
    })
}

/// Run the whole comparison.
pub fn measure(args: &CompareArgs) -> Result<Comparison, CompareError> {
    let programs = validate(args)?;
    if let Some(dir) = &args.plot_dir {
        // Now, so that a bad directory is found before the runs, not after them.
        std::fs::create_dir_all(dir).map_err(|source| CompareError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        for (index, workload) in WORKLOADS.iter().enumerate() {
            server::check_plot_path(&plot_path(dir, index)).map_err(|source| {
                CompareError::Drive {
                    system: "plot",
                    workload: workload.name,
                    source,
                }
            })?;
        }
    }
    let mut comparison = Comparison {
        rows: Vec::new(),
        redis_benchmark: Vec::new(),
        notes: vec![format!(
            "each server was filled before its first workload: keys 0..{} incremented \
             once, untimed, so every row times increments of existing counters.",
            args.keys
        )],
        failures: Vec::new(),
    };
    let redis_benchmark_path = programs.redis_benchmark.clone();
    if redis_benchmark_path.is_none() {
        comparison.notes.push(format!(
            "redis-benchmark runs skipped: no redis-benchmark next to {} or on PATH \
             (pass --redis-benchmark PATH).",
            programs.redis_server.display()
        ));
    }
    for system in [System::Redis, System::RedisAofAlways] {
        eprintln!(
            "{}: starting {}",
            system.name(),
            programs.redis_server.display()
        );
        let started = match start_redis(&programs.redis_server, system) {
            Ok(started) => started,
            Err(error) => {
                start_failed(&mut comparison, system, &error);
                continue;
            }
        };
        drive_all(args, &started, &mut comparison);
        if let Some(program) = &redis_benchmark_path {
            let row = redis_benchmark(args, program, system, started.main_addr);
            push_redis_benchmark(&mut comparison, row);
        }
    }
    match (args.redis_only, programs.tallyd) {
        (true, _) => comparison
            .notes
            .push("Tally runs skipped (--redis-only).".into()),
        (false, None) => comparison
            .notes
            .push("Tally runs skipped: no tallyd found (pass --tallyd PATH).".into()),
        (false, Some(tallyd)) => {
            if !args.tallyd_args.is_empty() {
                comparison.notes.push(format!(
                    "tallyd started with extra arguments: {}",
                    args.tallyd_args.join(" ")
                ));
            }
            for system in [System::TallyRelaxed, System::TallyDurable] {
                eprintln!("{}: starting {}", system.name(), tallyd.display());
                let started = match start_tallyd(&tallyd, &args.tallyd_args, system, true) {
                    Ok(started) => started,
                    Err(error) => {
                        comparison.notes.push(format!("{}: tallyd would not start with --resp-listen, RESP runs skipped: {error}", system.name()));
                        match start_tallyd(&tallyd, &args.tallyd_args, system, false) {
                            Ok(started) => started,
                            Err(error) => {
                                start_failed(&mut comparison, system, &error);
                                continue;
                            }
                        }
                    }
                };
                drive_all(args, &started, &mut comparison);
                if let (Some(program), Some(addr)) = (&redis_benchmark_path, started.resp_addr) {
                    let row = redis_benchmark(args, program, system, addr);
                    push_redis_benchmark(&mut comparison, row);
                }
            }
        }
    }
    add_ratios(&mut comparison.rows);
    if let Some(dir) = &args.plot_dir {
        if let Err(error) = write_plots(dir, &comparison.rows) {
            comparison.failures.push(format!("plots: {error}"));
        }
    }
    Ok(comparison)
}

/// `tally-bench compare`: measure and print.
pub fn run(args: &CompareArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Before anything starts, so that a signal at any point stops what was started.
    crate::cleanup::stop_on_signals().map_err(|source| CompareError::Io {
        what: "installing the signal handlers".into(),
        source,
    })?;
    let comparison = measure(args)?;
    if args.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&comparison).expect("a comparison serializes")
        );
    } else {
        out!("{}", table(&comparison));
    }
    // Printed first, so what was measured is not lost; a failed run still fails the
    // command, so that a script can tell an incomplete comparison from a good one.
    if !comparison.failures.is_empty() {
        return Err(CompareError::RunsFailed {
            failures: comparison.failures,
        }
        .into());
    }
    Ok(())
}

/// Records that `system`'s server would not start: a failed run of the comparison.
fn start_failed(comparison: &mut Comparison, system: System, error: &dyn std::fmt::Display) {
    let failure = format!("{}: {error}", system.name());
    eprintln!("  {failure}");
    comparison.failures.push(failure);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let line = r#""INCR","715648.88","1.043","0.112","0.815","2.903","6.167","30.415""#;
        let numbers = parse_csv_numbers(line);
        assert_eq!(numbers.len(), 7);
        assert_eq!(numbers[0], 715_648.88);
        assert_eq!(numbers[3], 0.815);
        assert_eq!(numbers[5], 6.167);
    }

    #[test]
    fn reads_the_addresses_tallyd_announces() {
        let main = "tallyd listening on 127.0.0.1:18178 (shard ports 18179,18180)";
        let resp = "tallyd resp listening on 127.0.0.1:18190";
        assert_eq!(
            announced_addr(main),
            Some("127.0.0.1:18178".parse().unwrap())
        );
        assert_eq!(
            announced_addr(resp),
            Some("127.0.0.1:18190".parse().unwrap())
        );
        assert_eq!(announced_addr("starting data_dir=/tmp/x"), None);
    }

    #[test]
    fn tally_modes_compare_with_the_matching_redis() {
        assert_eq!(System::TallyRelaxed.baseline(), System::Redis);
        assert_eq!(System::TallyDurable.baseline(), System::RedisAofAlways);
    }
}
