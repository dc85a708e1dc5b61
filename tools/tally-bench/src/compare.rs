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
//! Where and what: every server's data directory is a fresh directory under
//! `--scratch-dir` (default `$TMPDIR`, else /tmp), whose filesystem is recorded and
//! warned about when it is a tmpfs or ramfs (the durable rows would then not touch a
//! disk). Ports are chosen by the system, or fixed from `--port-base` (see its help).
//! The output records the redis-server and tallyd versions, the tallyd arguments,
//! `--seconds`, `--keys`, the scratch dir and filesystem, the UTC start time and
//! `nproc`; each row's `durability` is the mode its server ran in. redis-benchmark's
//! `-n` is `--seconds` times the fastest RESP rate measured on the same server, unless
//! `--redis-benchmark-requests` fixes it.
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
    /// Requests per redis-benchmark run (`-n`). Default: --seconds times the fastest
    /// RESP rate this comparison measured on the same server (at least 10,000), so each
    /// run takes about --seconds whatever the server's speed.
    #[arg(long)]
    pub redis_benchmark_requests: Option<u64>,
    /// Where the servers' data directories go: one fresh directory per server, removed
    /// afterwards. Default: $TMPDIR, else /tmp. The durable rows (Redis appendfsync
    /// always, tally-durable) measure this directory's disk: it must be on the disk
    /// under test, not a tmpfs (the output records its filesystem and warns on tmpfs).
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    /// Use fixed ports from P up instead of ephemeral ones: redis P, redis-aof-always
    /// P+1, tally-relaxed RESP P+2, tally-durable RESP P+3, tally-relaxed native P+4
    /// and its shard ports P+5..=P+4+C, tally-durable native P+5+C and its shard ports
    /// after it (C: the --cores of --tallyd-arg, else the CPU count). Default: ports
    /// chosen by the system.
    #[arg(long)]
    pub port_base: Option<u16>,
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
    #[error("{program} was not ready within {STARTUP_TIMEOUT:?}; its output:\n{output}")]
    NotReady { program: String, output: String },
    #[error("{program} exited at start ({status}); its output:\n{output}")]
    Exited {
        program: String,
        status: String,
        output: String,
    },
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

    /// The durability the server was started with, for the report's rows.
    pub fn durability(self) -> &'static str {
        match self {
            System::Redis => "none (appendonly no)",
            System::RedisAofAlways => "appendfsync always",
            System::TallyRelaxed => "relaxed",
            System::TallyDurable => "durable",
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

/// What was compared, where and when: enough to reproduce or question the figures.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    /// `redis-server --version`.
    pub redis_server: String,
    pub redis_server_version: String,
    pub tallyd: Option<String>,
    /// `tallyd --version`, or the binary's modification time if it has none.
    pub tallyd_version: Option<String>,
    pub tallyd_args: Vec<String>,
    pub seconds: f64,
    pub keys: u64,
    /// Where the servers' data went, and its filesystem (statfs f_type).
    pub scratch_dir: String,
    pub scratch_filesystem: String,
    pub port_base: Option<u16>,
    /// The UTC time the comparison started, ISO 8601.
    pub started_utc: String,
    /// CPUs available to this process (`nproc`).
    pub nproc: usize,
}

/// Everything `compare` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub environment: Environment,
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

/// A fresh scratch directory for `system`'s data under `parent`.
fn scratch_dir(parent: &Path, system: System) -> Result<ScratchDir, CompareError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let name = format!(
        "tally-compare-{}-{}-{nanos}",
        system.name(),
        std::process::id()
    );
    ScratchDir::create_in(parent, &name).map_err(|source| CompareError::Io {
        what: format!("creating {}", parent.join(&name).display()),
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
            // Let the output threads deliver what it printed before it exited.
            let until = Instant::now() + Duration::from_millis(200);
            while let Ok(line) =
                output.recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                seen.push_str(&line);
                seen.push('\n');
            }
            return Err(CompareError::Exited {
                program: program.display().to_string(),
                status: status.to_string(),
                output: seen,
            });
        }
    }
    Err(CompareError::NotReady {
        program: program.display().to_string(),
        output: seen,
    })
}

fn start_redis(
    redis_server: &Path,
    system: System,
    scratch: &Path,
    port: Option<u16>,
) -> Result<Started, CompareError> {
    let port = match port {
        Some(port) => port,
        None => free_port()?,
    };
    let data_dir = scratch_dir(scratch, system)?;
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

/// Start tallyd on `ports` (main, RESP), or on port 0 (its main, shard and RESP ports
/// all chosen by the system, so they cannot collide with each other), and read the
/// addresses it announces.
fn start_tallyd(
    tallyd: &Path,
    extra: &[String],
    system: System,
    with_resp: bool,
    scratch: &Path,
    ports: Option<(u16, u16)>,
) -> Result<Started, CompareError> {
    let data_dir = scratch_dir(scratch, system)?;
    let (main_port, resp_port) = ports.unwrap_or((0, 0));
    let durability = if system == System::TallyDurable {
        "durable"
    } else {
        "relaxed"
    };
    let mut arguments = vec![
        "--data-dir".to_owned(),
        data_dir.path().display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{main_port}"),
        "--durability".to_owned(),
        durability.to_owned(),
    ];
    if with_resp {
        arguments.push("--resp-listen".to_owned());
        arguments.push(format!("127.0.0.1:{resp_port}"));
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
                Ok(report) if report.failure.is_some() => {
                    let failure =
                        server::DriveError::RunFailed(report.failure.clone().expect("checked"));
                    let failure = format!("{run}: run failed: {failure}");
                    eprintln!("  {failure}");
                    comparison.failures.push(failure);
                    continue;
                }
                Ok(report) => report,
                Err(error) => {
                    let failure = format!("{run}: run failed: {error}");
                    eprintln!("  {failure}");
                    comparison.failures.push(failure);
                    continue;
                }
            };
            let mut report = report;
            report.durability = started.system.durability().to_owned();
            if !args.json {
                eprintln!("  {:<17} {}", started.system.name(), report.human());
                for warning in report.warnings() {
                    eprintln!("  {run}: warning: {warning}");
                }
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
    rows: &[Row],
) -> RedisBenchmarkRow {
    let requests = redis_benchmark_requests(args, system, rows);
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
        requests.to_string(),
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

/// The fewest requests of a redis-benchmark run chosen from a measured rate.
pub const REDIS_BENCHMARK_REQUESTS_MIN: u64 = 10_000;
/// The most, so that a rate measured wrong cannot make a run of hours.
pub const REDIS_BENCHMARK_REQUESTS_MAX: u64 = 100_000_000;

/// `-n` of `system`'s redis-benchmark run: the flag if given, else --seconds at the
/// fastest RESP rate measured on that server (10,000 if none was).
fn redis_benchmark_requests(args: &CompareArgs, system: System, rows: &[Row]) -> u64 {
    if let Some(requests) = args.redis_benchmark_requests {
        return requests;
    }
    let fastest = rows
        .iter()
        .filter(|row| row.system == system && row.report.protocol == WireProtocol::Resp)
        .map(|row| row.report.ops_per_sec)
        .fold(0.0, f64::max);
    ((fastest * args.seconds) as u64)
        .clamp(REDIS_BENCHMARK_REQUESTS_MIN, REDIS_BENCHMARK_REQUESTS_MAX)
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
    let mut out = environment_lines(&comparison.environment);
    out.push_str(
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
    if let Some(last) = PortPlan::new(args).last() {
        if last > u32::from(u16::MAX) || args.port_base == Some(0) {
            return invalid("--port-base leaves no room for every server's ports below 65536");
        }
    }
    if let Some(dir) = &args.scratch_dir {
        if !dir.is_dir() {
            return Err(CompareError::InvalidArguments(format!(
                "--scratch-dir {} is not a directory",
                dir.display()
            )));
        }
    }
    if args.redis_benchmark_requests == Some(0) {
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
    let scratch = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let environment = environment(args, &programs, &scratch)?;
    for warning in environment_warnings(&environment) {
        eprintln!("tally-bench: WARNING: {warning}");
    }
    let ports = PortPlan::new(args);
    let mut comparison = Comparison {
        environment,
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
        let port = ports.redis(system);
        let started = match start_redis(&programs.redis_server, system, &scratch, port) {
            Ok(started) => started,
            Err(error) => {
                start_failed(&mut comparison, system, &error);
                continue;
            }
        };
        drive_all(args, &started, &mut comparison);
        if let Some(program) = &redis_benchmark_path {
            let row = redis_benchmark(args, program, system, started.main_addr, &comparison.rows);
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
                let tally_ports = ports.tallyd(system);
                let start = |with_resp| {
                    start_tallyd(
                        &tallyd,
                        &args.tallyd_args,
                        system,
                        with_resp,
                        &scratch,
                        tally_ports,
                    )
                };
                let started = match start(true) {
                    Ok(started) => started,
                    // Only a failure that names the RESP door is retried without it;
                    // any other (a bad --tallyd-arg, a taken port) is the run's failure.
                    Err(error) if names_resp(&error) => {
                        comparison.notes.push(format!(
                            "{}: tallyd would not start with --resp-listen, RESP runs \
                             skipped: {error}",
                            system.name()
                        ));
                        match start(false) {
                            Ok(started) => started,
                            Err(error) => {
                                start_failed(&mut comparison, system, &error);
                                continue;
                            }
                        }
                    }
                    Err(error) => {
                        start_failed(&mut comparison, system, &error);
                        continue;
                    }
                };
                drive_all(args, &started, &mut comparison);
                if let (Some(program), Some(addr)) = (&redis_benchmark_path, started.resp_addr) {
                    let row = redis_benchmark(args, program, system, addr, &comparison.rows);
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

/// Whether tallyd's start failure is about its RESP door (`--resp-listen` unknown to
/// this build, or its port taken), the one case where starting without it helps.
fn names_resp(error: &CompareError) -> bool {
    match error {
        // The error line, not the usage line clap prints after it (which lists every
        // flag, --resp-listen included).
        CompareError::Exited { output, .. } | CompareError::NotReady { output, .. } => {
            output.lines().any(|line| {
                let line = line.to_lowercase();
                line.contains("error") && line.contains("resp")
            })
        }
        _ => false,
    }
}

/// Fixed ports from `--port-base` (see its help), or none (ephemeral ports).
struct PortPlan {
    base: Option<u16>,
    /// The shard ports each tallyd opens after its main port.
    tally_cores: u16,
}

impl PortPlan {
    fn new(args: &CompareArgs) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
        let cores = tallyd_cores(&args.tallyd_args).unwrap_or(cpus);
        PortPlan {
            base: args.port_base,
            tally_cores: u16::try_from(cores).unwrap_or(u16::MAX),
        }
    }

    /// The highest port used, which must exist.
    fn last(&self) -> Option<u32> {
        self.base
            .map(|base| u32::from(base) + 5 + 2 * u32::from(self.tally_cores))
    }

    fn redis(&self, system: System) -> Option<u16> {
        let offset = u16::from(system == System::RedisAofAlways);
        self.base.map(|base| base + offset)
    }

    /// (main, RESP) of tallyd in mode `system`.
    fn tallyd(&self, system: System) -> Option<(u16, u16)> {
        let base = self.base?;
        Some(match system {
            System::TallyDurable => (base + 5 + self.tally_cores, base + 3),
            _ => (base + 4, base + 2),
        })
    }
}

/// The `--cores` among the extra tallyd arguments, if any.
fn tallyd_cores(arguments: &[String]) -> Option<usize> {
    let mut value = None;
    for (index, argument) in arguments.iter().enumerate() {
        if let Some(given) = argument.strip_prefix("--cores=") {
            value = given.parse().ok();
        } else if argument == "--cores" {
            value = arguments
                .get(index + 1)
                .and_then(|given| given.parse().ok());
        }
    }
    value
}

/// Records that `system`'s server would not start: a failed run of the comparison.
fn start_failed(comparison: &mut Comparison, system: System, error: &dyn std::fmt::Display) {
    let failure = format!("{}: {error}", system.name());
    eprintln!("  {failure}");
    comparison.failures.push(failure);
}

/// The first line `program --version` prints, or `None` if it prints nothing or fails.
fn version_of(program: &Path) -> Option<String> {
    let output = die_with_parent(Command::new(program).arg("--version"))
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .next()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
}

/// The name of the filesystem holding `path`, from statfs(2)'s `f_type`.
pub fn filesystem_type(path: &Path) -> std::io::Result<String> {
    let path_c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("the path contains a NUL byte"))?;
    // SAFETY: statfs is plain old data, for which all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path_c` is NUL-terminated and `stat` a valid, writable statfs; both
    // outlive the call.
    if unsafe { libc::statfs(path_c.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
    let magic = stat.f_type as u64;
    Ok(filesystem_name(magic))
}

/// The name of a statfs magic number (linux/magic.h).
fn filesystem_name(magic: u64) -> String {
    let name = match magic {
        0x0102_1994 => "tmpfs",
        0x8584_58f6 => "ramfs",
        0xef53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x794c_7630 => "overlayfs",
        0x2fc1_2fc1 => "zfs",
        0xf2f5_2010 => "f2fs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        _ => return format!("unknown (f_type {magic:#x})"),
    };
    name.to_owned()
}

/// Whether durable writes to a filesystem of this name never reach a disk.
fn is_memory_filesystem(name: &str) -> bool {
    matches!(name, "tmpfs" | "ramfs")
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian).
fn utc_iso8601(seconds: u64) -> String {
    // Days to civil date: Howard Hinnant's algorithm. Worked example: day 0 is
    // 1970-01-01; day 19,723 is 2024-01-01.
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3_600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// What is compared, recorded before the first server starts.
fn environment(
    args: &CompareArgs,
    programs: &Programs,
    scratch: &Path,
) -> Result<Environment, CompareError> {
    let scratch_filesystem = filesystem_type(scratch).map_err(|source| CompareError::Io {
        what: format!(
            "reading the filesystem of the scratch dir {}",
            scratch.display()
        ),
        source,
    })?;
    let tallyd_version = programs.tallyd.as_deref().map(|tallyd| {
        version_of(tallyd).unwrap_or_else(|| {
            let modified = std::fs::metadata(tallyd).and_then(|metadata| metadata.modified());
            match modified
                .ok()
                .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            {
                Some(since) => format!(
                    "no --version; binary modified {}",
                    utc_iso8601(since.as_secs())
                ),
                None => "unknown".to_owned(),
            }
        })
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    Ok(Environment {
        redis_server: programs.redis_server.display().to_string(),
        redis_server_version: version_of(&programs.redis_server)
            .unwrap_or_else(|| "unknown".to_owned()),
        tallyd: programs
            .tallyd
            .as_ref()
            .map(|path| path.display().to_string()),
        tallyd_version,
        tallyd_args: args.tallyd_args.clone(),
        seconds: args.seconds,
        keys: args.keys,
        scratch_dir: scratch.display().to_string(),
        scratch_filesystem,
        port_base: args.port_base,
        started_utc: utc_iso8601(now),
        nproc: std::thread::available_parallelism().map_or(1, |count| count.get()),
    })
}

/// Warnings about the environment that make figures meaningless, one line each.
fn environment_warnings(environment: &Environment) -> Vec<String> {
    let mut warnings = Vec::new();
    if is_memory_filesystem(&environment.scratch_filesystem) {
        warnings.push(format!(
            "the scratch dir {} is on {}: fdatasync costs nothing there, so the durable \
             rows (redis-aof-always, tally-durable) do not measure a disk. Pass \
             --scratch-dir on the disk under test.",
            environment.scratch_dir, environment.scratch_filesystem
        ));
    }
    warnings
}

/// The environment as table header lines.
fn environment_lines(environment: &Environment) -> String {
    let mut out = format!(
        "redis-server: {} ({})\n",
        environment.redis_server, environment.redis_server_version
    );
    if let Some(tallyd) = &environment.tallyd {
        out.push_str(&format!(
            "tallyd: {tallyd} ({})\n",
            environment.tallyd_version.as_deref().unwrap_or("unknown")
        ));
    }
    if !environment.tallyd_args.is_empty() {
        out.push_str(&format!(
            "tallyd arguments: {}\n",
            environment.tallyd_args.join(" ")
        ));
    }
    out.push_str(&format!(
        "--seconds {} --keys {}; scratch dir {} ({}); started {}; nproc {}\n\n",
        environment.seconds,
        environment.keys,
        environment.scratch_dir,
        environment.scratch_filesystem,
        environment.started_utc,
        environment.nproc
    ));
    for warning in environment_warnings(environment) {
        out.push_str(&format!("WARNING: {warning}\n\n"));
    }
    out
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
    fn utc_times_format_as_iso_8601() {
        assert_eq!(utc_iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_iso8601(19_723 * 86_400 + 3_661), "2024-01-01T01:01:01Z");
        assert_eq!(utc_iso8601(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn memory_filesystems_are_named_and_flagged() {
        assert_eq!(filesystem_name(0x0102_1994), "tmpfs");
        assert!(is_memory_filesystem(&filesystem_name(0x0102_1994)));
        assert!(!is_memory_filesystem(&filesystem_name(0xef53)));
        assert!(filesystem_name(0x1234).starts_with("unknown"));
    }

    #[test]
    fn fixed_ports_do_not_overlap() {
        let plan = PortPlan {
            base: Some(23_000),
            tally_cores: 2,
        };
        let relaxed = plan.tallyd(System::TallyRelaxed).unwrap();
        let durable = plan.tallyd(System::TallyDurable).unwrap();
        let mut ports = vec![
            plan.redis(System::Redis).unwrap(),
            plan.redis(System::RedisAofAlways).unwrap(),
            relaxed.1,
            durable.1,
        ];
        for main in [relaxed.0, durable.0] {
            ports.extend(main..=main + plan.tally_cores);
        }
        let count = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), count, "{ports:?}");
        assert_eq!(u32::from(*ports.last().unwrap()), plan.last().unwrap());
        assert_eq!(tallyd_cores(&["--cores=3".into()]), Some(3));
        assert_eq!(tallyd_cores(&["--cores".into(), "4".into()]), Some(4));
    }

    #[test]
    fn tally_modes_compare_with_the_matching_redis() {
        assert_eq!(System::TallyRelaxed.baseline(), System::Redis);
        assert_eq!(System::TallyDurable.baseline(), System::RedisAofAlways);
    }
}
