//! `tally-bench server`: drive a running server over the network with increments, in
//! Tally's native protocol or in RESP, and report throughput and latency percentiles.
//!
//! What it measures:
//! - Throughput: acknowledged increments per second over the whole run (first send to
//!   last reply). Failed increments are counted apart (`ops_failed`).
//! - Latency: per request (a batch of `--batch` increments: one native frame per core
//!   it touches, or `--batch` pipelined INCRBYs), from its send (closed loop) or its
//!   intended send (open loop, `--rate`) to the last byte of its last reply. Only
//!   successful requests are in the percentiles; requests with a failed increment are
//!   counted in `requests_failed`.
//!
//! Invariants:
//! - The same stream: each connection is one OS thread ([`connection`]) with its own
//!   seeded key stream ([`crate::workload`]); every key of it is sent, in order, by
//!   either protocol. A shard-aware native connection opens one socket per server core
//!   and routes each key to the core that owns it ([`native`]); nothing is re-drawn.
//!   So native and RESP runs of the same flags and seed send the same keys.
//! - Bounded: the generator never blocks in a write, so a server applying backpressure
//!   cannot deadlock it; `--duration` stops sending at the deadline (an open loop
//!   still sends every request due before it), and requests unanswered
//!   [`deadline_grace`] later fail the run as stalled.
//! - Nothing measured is lost: a run whose server fails prints the partial report
//!   (with the first failure's connection and time) before exiting non-zero; any
//!   failed increment makes the exit code 1 unless `--allow-errors`.
//! - `--fill` increments every key once before the run, untimed and uncounted, so the
//!   run times increments of existing counters rather than their creation.
//!
//! With `--via-client` the native workload goes through the client crate instead of
//! raw frames ([`via_client`]).

pub mod connection;
pub mod native;
pub mod resp;
pub mod via_client;

use crate::latency::{Recorder, Summary};
use crate::workload::{write_key, Distribution, KeyChooser};
use connection::{ConnectionReport, Plan, RequestCodec};
use serde::Serialize;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use tally_protocol::{Durability, HelloReply};

/// The most connections one run opens (one thread each).
pub const CONNECTIONS_MAX: usize = 1_024;
/// The most requests in flight per connection.
pub const PIPELINE_MAX: usize = 4_096;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriveError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the server closed the connection")]
    ServerClosed,
    #[error("the server is closing the connection: {message}")]
    ServerClosing { message: String },
    #[error(
        "the run did not finish within {grace_s:.1} s of its deadline ({after_s:.1} s after \
         it started): {in_flight} requests still unanswered (is the server stalled?)"
    )]
    Stalled {
        grace_s: f64,
        in_flight: usize,
        after_s: f64,
    },
    #[error(
        "no reply for {seconds} s with {in_flight} requests in flight: is the server \
         stalled? (stopped, or overloaded beyond any useful measurement)"
    )]
    NoReply { seconds: u64, in_flight: usize },
    #[error(
        "timed out after {seconds} s waiting for the hello reply from {addr}: \
         is it a Tally native port? (not the --resp-listen one)",
        seconds = native::HANDSHAKE_TIMEOUT.as_secs()
    )]
    HelloTimeout { addr: SocketAddr },
    #[error("{addr} did not answer the hello like a Tally native port ({detail}): is it the --resp-listen one?")]
    NotNative { addr: SocketAddr, detail: String },
    #[error(
        "{addr} did not answer a RESP PING ({detail}): is it a RESP port? (for tallyd, \
         its --resp-listen one, not its native --listen one; or drop --protocol resp)"
    )]
    NotResp { addr: SocketAddr, detail: String },
    #[error("{0}")]
    Protocol(String),
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error(
        "connection {} failed {:.2} s into the run ({} of the connections failed): {}; \
         the report above is partial, of what was measured until then",
        .0.connection, .0.after_s, .0.connections_failed, .0.error
    )]
    RunFailed(RunFailure),
    #[error("the --fill pass failed: {0}")]
    Fill(String),
    #[error(
        "all {ops_failed} operations failed, so nothing was measured \
         (the first failure is printed above)"
    )]
    AllFailed { ops_failed: u64 },
    #[error(
        "{ops_failed} of {ops_total} operations failed (the first failure is printed \
         above); the percentiles are of the successful requests only. Pass \
         --allow-errors to accept a run with failures"
    )]
    SomeFailed { ops_failed: u64, ops_total: u64 },
    #[error("{what}: {source}")]
    Output {
        what: String,
        source: std::io::Error,
    },
}

impl DriveError {
    pub fn io(what: &'static str, source: std::io::Error) -> Self {
        DriveError::Io { what, source }
    }
}

/// Which wire protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WireProtocol {
    /// Tally's binary protocol (tally-protocol).
    Native,
    /// Redis's protocol: INCRBY commands.
    Resp,
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    Uniform,
    Zipfian,
}

/// The durability each native batch asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityChoice {
    /// Whatever the server was started with.
    Server,
    Durable,
    Relaxed,
}

/// Flags of `tally-bench server`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Address of the server (its main port, or its RESP port with --protocol resp):
    /// HOST:PORT, where HOST is an IP address or a name (resolved once, to its first
    /// IPv4 address if it has one).
    #[arg(long, default_value = "127.0.0.1:7878", value_parser = resolve_addr)]
    pub addr: SocketAddr,
    #[arg(long, value_enum, default_value_t = WireProtocol::Native)]
    pub protocol: WireProtocol,
    /// Connections, one thread each.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection (1: wait for each reply).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// Increments per request: one native Batch frame, or that many pipelined INCRBYs.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Distinct keys (`key:0` .. `key:N-1`).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Increments to send in total (ignored with --duration): whole requests, so a
    /// multiple of --batch.
    #[arg(long, default_value_t = 1_000_000)]
    pub ops: u64,
    /// Run for this many seconds instead of a fixed operation count. Requests still
    /// unanswered 10 s (or a quarter of the duration, if longer) after it fail the run.
    #[arg(long)]
    pub duration: Option<f64>,
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    pub distribution: KeyDistribution,
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    /// The amount each increment adds.
    #[arg(long, default_value_t = 1)]
    pub delta: i64,
    /// Open loop: target increments per second over all connections; latency counts from
    /// each request's intended send time (no coordinated omission). Every request due
    /// before the end of --duration is sent and timed, even if a stall holds it back
    /// until after the end. A warning is printed when the achieved rate (`ops_per_sec`)
    /// is below 90% of the target.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Durability each native batch asks for. RESP has no way to ask, so with
    /// --protocol resp only `server` (the server's default) is accepted.
    #[arg(long, value_enum, default_value_t = DurabilityChoice::Server)]
    pub durability: DurabilityChoice,
    /// Native: each connection opens one socket per server core (its shard port) and
    /// sends every key of its stream to the core that owns it; a request spanning
    /// cores completes when every core has answered. `false`: one socket to --addr.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub shard_aware: bool,
    /// Microseconds a read spins before blocking (default 0). Spinning saves the
    /// ~100 us cross-core wake-up, but only when a core is free: against tallyd, which
    /// spins on every core itself, a spinning client on 2 cores makes things worse.
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// Drive the server through the native client crate (tally-client's async client)
    /// instead of raw frames: each connection is one client (a socket per server core),
    /// --pipeline is its number of concurrent callers, each awaiting one call (`incr`,
    /// or `batch` of --batch increments) at a time; the client packs calls that queue
    /// up into shared frames. Latency is per call. Native protocol, closed loop only.
    #[arg(long)]
    pub via_client: bool,
    /// Seed of the key streams (connection i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Before measuring, add 1 to every key of `0..--keys` once (untimed, uncounted;
    /// same protocol, in requests of 1,000 increments, 16 in flight, on up to 8
    /// connections), so the run times increments of existing counters, not their
    /// creation.
    #[arg(long)]
    pub fill: bool,
    /// Exit 0 even when some operations failed (the server answered an error or refused
    /// an increment). Without it any failure makes the exit code 1, after the report.
    /// Failed requests are never in the latency percentiles; they are counted in
    /// `ops_failed` and `requests_failed`.
    #[arg(long)]
    pub allow_errors: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a latency percentile plot (SVG) to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `--addr`: an IP address and port, or a host name and port resolved now.
fn resolve_addr(given: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = given.parse() {
        return Ok(addr);
    }
    let resolved: Vec<SocketAddr> = given
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {given}: {error} (expected HOST:PORT)"))?
        .collect();
    // IPv4 first: `localhost` often resolves to ::1 first, and servers here listen on
    // 127.0.0.1.
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{given} resolves to no address"))
}

/// Why a run stopped early: what a failure drill wants to know beside the figures.
#[derive(Clone, Debug, Serialize)]
pub struct RunFailure {
    /// The connection that failed first (0-based).
    pub connection: usize,
    /// When it failed, in seconds from the start of the run.
    pub after_s: f64,
    pub error: String,
    /// How many connections failed in all.
    pub connections_failed: usize,
}

/// The result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub protocol: WireProtocol,
    pub addr: String,
    pub connections: usize,
    pub pipeline: usize,
    pub batch: u64,
    pub keys: u64,
    pub distribution: KeyDistribution,
    /// The durability asked for (`server`: the server's default); `compare` writes the
    /// mode the server was started in.
    pub durability: String,
    pub rate_target: Option<f64>,
    /// Open loop: `ops_per_sec / rate_target`; a run under 0.9 warns.
    pub rate_achieved_fraction: Option<f64>,
    /// Increments acknowledged.
    pub ops: u64,
    /// Increments the server answered with an error.
    pub ops_failed: u64,
    /// Requests answered, successful or not.
    pub requests: u64,
    /// Requests with at least one failed increment: not in the latency percentiles.
    pub requests_failed: u64,
    /// Open loop: requests due before the deadline that were never sent because the
    /// run was stopped first (a failure); they are in no percentile.
    pub requests_missed: u64,
    /// Requests sent (or encoded) and still unanswered when the run failed: in no
    /// other count and no percentile.
    pub requests_unanswered: u64,
    pub elapsed_s: f64,
    pub ops_per_sec: f64,
    pub requests_per_sec: f64,
    /// Set if a connection failed (server gone, stalled): the figures are those measured
    /// until then, a partial report.
    pub failure: Option<RunFailure>,
    /// Whether every key was incremented once before the run (`--fill`).
    pub fill: bool,
    /// Driven through the client crate (`--via-client`): requests are client calls.
    pub via_client: bool,
    /// Latency of the successful requests (`count` of them).
    #[serde(flatten)]
    pub latency: Summary,
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
}

/// Which core owns each key of the run. Up to [`KeyOwners::TABLE_KEYS_MAX`] keys (and
/// 256 cores) it is a table of one byte per rank, built once and shared by the
/// connections, so that routing a key costs no hashing (and the table stays small
/// enough to be cached); otherwise each key is formatted and hashed.
pub struct KeyOwners {
    map: Arc<HelloReply>,
    by_rank: Vec<u8>,
}

impl KeyOwners {
    /// One byte per key: 16 MiB at most.
    pub const TABLE_KEYS_MAX: u64 = 1 << 24;

    pub fn new(map: Arc<HelloReply>, keys: u64) -> Self {
        let mut by_rank = Vec::new();
        if keys <= Self::TABLE_KEYS_MAX && map.core_count() <= 256 {
            let mut key = Vec::with_capacity(crate::workload::KEY_BYTES_MAX);
            by_rank = (0..keys)
                .map(|rank| {
                    write_key(&mut key, rank);
                    map.owner_of_key(&key) as u8
                })
                .collect();
        }
        KeyOwners { map, by_rank }
    }

    pub fn core_count(&self) -> usize {
        self.map.core_count()
    }

    /// The core owning key `rank`; `scratch` holds the key when there is no table.
    pub fn owner_of_rank(&self, rank: u64, scratch: &mut Vec<u8>) -> usize {
        let owner = match self.by_rank.get(rank as usize) {
            Some(&owner) => usize::from(owner),
            None => {
                write_key(scratch, rank);
                self.map.owner_of_key(scratch)
            }
        };
        debug_assert!(owner < self.core_count());
        owner
    }
}

/// Where the ranks of a stream come from.
enum Ranks {
    /// Drawn from the workload's distribution, without end.
    Drawn(KeyChooser),
    /// `next..end` in order, once each (the fill pass).
    Sequential { next: u64, end: u64 },
}

/// The keys one connection sends, in order: the protocol codecs take every key, so
/// native and RESP runs of the same seed send the same stream.
pub struct KeySource {
    ranks: Ranks,
    key: Vec<u8>,
}

impl KeySource {
    /// The endless stream `chooser` draws.
    pub fn new(chooser: KeyChooser) -> Self {
        KeySource {
            ranks: Ranks::Drawn(chooser),
            key: Vec::with_capacity(crate::workload::KEY_BYTES_MAX),
        }
    }

    /// Every rank of `range` once, in order.
    pub fn sequential(range: std::ops::Range<u64>) -> Self {
        KeySource {
            ranks: Ranks::Sequential {
                next: range.start,
                end: range.end.max(range.start),
            },
            key: Vec::with_capacity(crate::workload::KEY_BYTES_MAX),
        }
    }

    /// Ranks left, if the stream ends.
    pub fn remaining(&self) -> Option<u64> {
        match self.ranks {
            Ranks::Drawn(_) => None,
            Ranks::Sequential { next, end } => Some(end - next),
        }
    }

    /// The next rank, or `None` at the end of a sequential stream.
    pub fn next_rank(&mut self) -> Option<u64> {
        match &mut self.ranks {
            Ranks::Drawn(chooser) => Some(chooser.next_rank()),
            Ranks::Sequential { next, end } => {
                let rank = (*next < *end).then_some(*next)?;
                *next += 1;
                Some(rank)
            }
        }
    }

    /// The next key to increment (a drawn stream never ends).
    pub fn next_key(&mut self) -> Option<&[u8]> {
        let rank = self.next_rank()?;
        write_key(&mut self.key, rank);
        Some(&self.key)
    }
}

pub(crate) fn validate(args: &ServerArgs) -> Result<(), DriveError> {
    let invalid = |reason: &str| Err(DriveError::InvalidArguments(reason.to_owned()));
    if !(1..=CONNECTIONS_MAX).contains(&args.connections) {
        return invalid("--connections must be within 1..=1024");
    }
    if !(1..=PIPELINE_MAX).contains(&args.pipeline) {
        return invalid("--pipeline must be within 1..=4096");
    }
    if !(1..=tally_protocol::BATCH_OPS_MAX as u64).contains(&args.batch) {
        return invalid("--batch must be within 1..=10000");
    }
    if args.keys == 0 || args.ops == 0 {
        return invalid("--keys and --ops must be positive");
    }
    // Requests are whole batches; rounding up would send (and report) more than asked.
    if args.duration.is_none() && !args.ops.is_multiple_of(args.batch) {
        let below = args.ops - args.ops % args.batch;
        let above = below.saturating_add(args.batch);
        let instead = match below {
            0 => format!("--ops {above}"),
            _ => format!("--ops {below} or {above}"),
        };
        return Err(DriveError::InvalidArguments(format!(
            "--ops {} is not a multiple of --batch {}: the run sends whole batches, \
             so pass {instead}",
            args.ops, args.batch
        )));
    }
    if args.zipf_exponent.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return invalid("--zipf-exponent must be positive");
    }
    if args
        .duration
        .is_some_and(|seconds| !(seconds > 0.0 && seconds < 1e6))
    {
        return invalid("--duration must be positive");
    }
    if args
        .rate
        .is_some_and(|rate| !(rate > 0.0 && rate.is_finite()))
    {
        return invalid("--rate must be positive");
    }
    // A RESP command cannot carry a durability, so the run gets the server's default;
    // accepting another choice would label the report with a durability not used.
    if args.protocol == WireProtocol::Resp && args.durability != DurabilityChoice::Server {
        return invalid(
            "--durability applies to the native protocol only: RESP runs use the server's \
             default (start tallyd with --durability to choose it); drop the flag or pass \
             --durability server",
        );
    }
    if args.via_client && (args.protocol != WireProtocol::Native || args.rate.is_some()) {
        return invalid("--via-client drives the native protocol in a closed loop: no --protocol resp, no --rate");
    }
    Ok(())
}

/// How long after `--duration` the requests still in flight may take before the run
/// fails as stalled: 10 s, or a quarter of the duration for long runs.
pub(crate) fn deadline_grace(duration: Option<f64>) -> Duration {
    let quarter = duration.map_or(Duration::ZERO, |seconds| {
        Duration::from_secs_f64(seconds / 4.0)
    });
    quarter.max(DEADLINE_GRACE_MIN)
}

/// Below this fraction of `--rate`, a run warns that it fell behind.
pub const RATE_ACHIEVED_FRACTION_MIN: f64 = 0.9;

/// The shortest grace after the deadline (see [`deadline_grace`]).
pub const DEADLINE_GRACE_MIN: Duration = Duration::from_secs(10);

/// The plan of connection `index`.
fn plan_for(args: &ServerArgs, index: usize, start: Instant) -> Plan {
    let connections = args.connections as u64;
    debug_assert!(args.duration.is_some() || args.ops.is_multiple_of(args.batch));
    let requests_total = args.ops / args.batch;
    let share =
        requests_total / connections + u64::from((index as u64) < requests_total % connections);
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.batch as f64 * args.connections as f64 / rate));
    let spin_us = args.spin_us.unwrap_or(0);
    Plan {
        pipeline: args.pipeline,
        grace: deadline_grace(args.duration),
        request_quota: if args.duration.is_some() {
            None
        } else {
            Some(share)
        },
        deadline: args
            .duration
            .map(|seconds| start + Duration::from_secs_f64(seconds)),
        interval,
        phase: interval.map_or(Duration::ZERO, |interval| {
            interval.mul_f64(index as f64 / args.connections as f64)
        }),
        spin: Duration::from_micros(spin_us),
    }
}

/// The key chooser of one connection (or caller), drawing with `seed`.
pub(crate) fn key_chooser(args: &ServerArgs, seed: u64) -> KeyChooser {
    let distribution = match args.distribution {
        KeyDistribution::Uniform => Distribution::Uniform,
        KeyDistribution::Zipfian => Distribution::Zipfian {
            exponent: args.zipf_exponent,
        },
    };
    KeyChooser::new(distribution, args.keys, seed)
}

/// Open logical connection `index` (one socket, or one per core) and build its codec.
fn open(
    args: &ServerArgs,
    index: usize,
    shard_map: Option<&Arc<HelloReply>>,
    owners: Option<&Arc<KeyOwners>>,
    keys: KeySource,
) -> Result<(Vec<TcpStream>, Box<dyn RequestCodec + Send>), DriveError> {
    debug_assert!(index < CONNECTIONS_MAX);
    match (args.protocol, shard_map) {
        (WireProtocol::Native, Some(map)) => {
            let streams = native::connect_cores(args.addr, map, owners.is_some())?;
            let owners = (streams.len() > 1).then(|| owners.cloned()).flatten();
            let durability = match args.durability {
                DurabilityChoice::Server => Durability::ServerDefault,
                DurabilityChoice::Durable => Durability::Durable,
                DurabilityChoice::Relaxed => Durability::Relaxed,
            };
            let codec = native::NativeCodec::new(keys, owners, args.batch, args.delta, durability);
            Ok((streams, Box::new(codec)))
        }
        _ => {
            let stream = TcpStream::connect(args.addr).map_err(|source| DriveError::Connect {
                addr: args.addr,
                source,
            })?;
            let codec = resp::RespCodec::new(keys, args.batch, args.delta);
            Ok((vec![stream], Box::new(codec)))
        }
    }
}

/// Increments per request of the fill pass (one frame, or that many pipelined INCRBYs).
pub const FILL_BATCH: u64 = 1_000;
/// Requests in flight per connection during the fill pass.
pub const FILL_PIPELINE: usize = 16;
/// The most connections the fill pass opens.
pub const FILL_CONNECTIONS_MAX: usize = 8;

/// The untimed `--fill` pass: add 1 to every key of `0..keys` once, over the run's
/// protocol, so the measured run increments existing counters instead of creating
/// them. Connection `i` of `c` fills the `i`-th contiguous `keys / c` ranks.
fn fill(
    args: &ServerArgs,
    shard_map: Option<&Arc<HelloReply>>,
    owners: Option<&Arc<KeyOwners>>,
) -> Result<(), DriveError> {
    let fill_args = ServerArgs {
        batch: FILL_BATCH,
        pipeline: FILL_PIPELINE,
        delta: 1,
        ..args.clone()
    };
    let connections = args.connections.min(FILL_CONNECTIONS_MAX) as u64;
    let share = args.keys.div_ceil(connections);
    let mut opened = Vec::new();
    for index in 0..connections {
        let range = (index * share).min(args.keys)..((index + 1) * share).min(args.keys);
        if !range.is_empty() {
            let keys = KeySource::sequential(range);
            opened.push(open(&fill_args, index as usize, shard_map, owners, keys)?);
        }
    }
    let plan = Plan {
        pipeline: FILL_PIPELINE,
        request_quota: None,
        deadline: None,
        grace: Duration::ZERO,
        interval: None,
        phase: Duration::ZERO,
        spin: Duration::ZERO,
    };
    let ops_done = AtomicU64::new(0);
    let reports: Vec<ConnectionReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = opened
            .into_iter()
            .map(|(streams, mut codec)| {
                let (plan, ops_done) = (&plan, &ops_done);
                scope.spawn(move || connection::drive(streams, codec.as_mut(), plan, ops_done))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a fill thread panicked"))
            .collect()
    });
    let mut ops = 0;
    for report in reports {
        if let Some(error) = report.failure {
            return Err(DriveError::Fill(error.to_string()));
        }
        if report.ops_failed > 0 {
            return Err(DriveError::Fill(format!(
                "{} increments failed (the first failure is printed above)",
                report.ops_failed
            )));
        }
        ops += report.ops;
    }
    assert_eq!(ops, args.keys, "the fill touches every key once");
    Ok(())
}

/// Run the benchmark `args` describes and return its report.
pub fn measure(args: &ServerArgs) -> Result<RunReport, DriveError> {
    validate(args)?;
    let shard_map = match args.protocol {
        WireProtocol::Native => Some(Arc::new(native::connect(args.addr)?.1)),
        WireProtocol::Resp => {
            resp::check_port(args.addr)?;
            None
        }
    };
    let owners = shard_map
        .as_ref()
        .filter(|_| args.shard_aware)
        .map(|map| Arc::new(KeyOwners::new(Arc::clone(map), args.keys)));
    if args.fill {
        fill(args, shard_map.as_ref(), owners.as_ref())?;
    }
    if args.via_client {
        let reports = via_client::drive_all(args)?;
        return Ok(summarize(args, &reports));
    }
    let mut connections = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let keys = KeySource::new(key_chooser(args, args.seed.wrapping_add(index as u64)));
        connections.push(open(
            args,
            index,
            shard_map.as_ref(),
            owners.as_ref(),
            keys,
        )?);
    }
    let ops_done = AtomicU64::new(0);
    let barrier = Barrier::new(args.connections + 1);
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = connections
            .into_iter()
            .enumerate()
            .map(|(index, (streams, mut codec))| {
                let (barrier, ops_done) = (&barrier, &ops_done);
                scope.spawn(move || {
                    barrier.wait();
                    let plan = plan_for(args, index, Instant::now());
                    connection::drive(streams, codec.as_mut(), &plan, ops_done)
                })
            })
            .collect();
        barrier.wait();
        show_progress(args, &ops_done, || {
            handles.iter().all(|handle| handle.is_finished())
        });
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a connection thread panicked"))
            .collect::<Vec<_>>()
    });
    Ok(summarize(args, &reports))
}

pub(crate) fn show_progress(args: &ServerArgs, ops_done: &AtomicU64, finished: impl Fn() -> bool) {
    let bar = match args.duration {
        Some(seconds) => indicatif::ProgressBar::new((seconds * 1_000.0) as u64),
        None => indicatif::ProgressBar::new(args.ops),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .expect("the progress template is valid"),
    );
    let start = Instant::now();
    while !finished() {
        std::thread::sleep(Duration::from_millis(100));
        let done = ops_done.load(Ordering::Relaxed);
        let elapsed = start.elapsed();
        match args.duration {
            Some(_) => bar.set_position(elapsed.as_millis() as u64),
            None => bar.set_position(done),
        }
        bar.set_message(format!("{:.0} ops/s", done as f64 / elapsed.as_secs_f64()));
    }
    bar.finish_and_clear();
}

fn summarize(args: &ServerArgs, reports: &[ConnectionReport]) -> RunReport {
    let mut latency = Recorder::default();
    let (mut requests, mut requests_failed, mut ops_total, mut ops_failed) = (0, 0, 0, 0);
    let (mut requests_missed, mut requests_unanswered) = (0, 0);
    for report in reports {
        requests_missed += report.requests_missed;
        requests_unanswered += report.requests_unanswered;
        latency.merge(&report.latency);
        requests += report.requests;
        requests_failed += report.requests_failed;
        ops_total += report.ops;
        ops_failed += report.ops_failed;
    }
    let started = reports.iter().filter_map(|report| report.started).min();
    let finished = reports.iter().filter_map(|report| report.finished).max();
    let elapsed_s = match (started, finished) {
        (Some(started), Some(finished)) => (finished - started).as_secs_f64().max(1e-9),
        _ => 1e-9,
    };
    let ops = ops_total - ops_failed;
    // The first connection to fail, by when it stopped.
    let failure = reports
        .iter()
        .enumerate()
        .filter_map(|(index, report)| {
            let error = report.failure.as_ref()?;
            let at = report.finished?;
            Some((at, index, error))
        })
        .min_by_key(|(at, _, _)| *at)
        .map(|(at, connection, error)| RunFailure {
            connection,
            after_s: started.map_or(0.0, |started| (at - started).as_secs_f64()),
            error: error.to_string(),
            connections_failed: reports
                .iter()
                .filter(|report| report.failure.is_some())
                .count(),
        });
    RunReport {
        failure,
        protocol: args.protocol,
        addr: args.addr.to_string(),
        connections: args.connections,
        pipeline: args.pipeline,
        batch: args.batch,
        keys: args.keys,
        distribution: args.distribution,
        durability: format!("{:?}", args.durability).to_lowercase(),
        rate_target: args.rate,
        rate_achieved_fraction: args.rate.map(|rate| ops as f64 / elapsed_s / rate),
        ops,
        ops_failed,
        requests,
        requests_failed,
        requests_missed,
        requests_unanswered,
        elapsed_s,
        ops_per_sec: ops as f64 / elapsed_s,
        requests_per_sec: requests as f64 / elapsed_s,
        fill: args.fill,
        via_client: args.via_client,
        latency: latency.summary(),
        curve: latency.percentile_curve(),
    }
}

impl RunReport {
    /// A one-line name for tables and plot legends.
    pub fn label(&self) -> String {
        let driver = if self.via_client { " via client" } else { "" };
        let filled = if self.fill { " filled" } else { "" };
        format!(
            "{:?}{driver} c={} P={} B={}{filled}",
            self.protocol, self.connections, self.pipeline, self.batch
        )
        .to_lowercase()
    }

    /// What a reader of the figures must know: an open loop that fell behind its rate,
    /// requests never sent. One line each, printed to stderr.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(target) = self.rate_target {
            if self.ops_per_sec < RATE_ACHIEVED_FRACTION_MIN * target {
                warnings.push(format!(
                    "achieved {:.0} ops/s, {:.0}% of the --rate target {target:.0}: the \
                     server (or this generator) could not keep up",
                    self.ops_per_sec,
                    100.0 * self.ops_per_sec / target
                ));
            }
        }
        if self.requests_missed > 0 {
            warnings.push(format!(
                "{} requests due before the deadline were never sent",
                self.requests_missed
            ));
        }
        warnings
    }

    /// The report for people.
    pub fn human(&self) -> String {
        let target = self
            .rate_target
            .map_or(String::new(), |target| format!(" of {target:.0} targeted"));
        format!(
            "{}: {:.0} ops/s{target} ({} ops, {} failed, {:.2} s); successful request latency us: p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            self.label(),
            self.ops_per_sec,
            self.ops,
            self.ops_failed,
            self.elapsed_s,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us
        ) + &match self.latency.latency_clamped {
            0 => String::new(),
            clamped => format!(" ({clamped} latencies over 60 s, recorded as 60 s)"),
        } + &match self.requests_failed {
            // `ops` counts their successful operations; `latency` leaves them out.
            0 => String::new(),
            failed => format!(", {failed} requests failed (not in the percentiles)"),
        } + &match self.requests_missed {
            0 => String::new(),
            missed => format!(", {missed} requests due but never sent"),
        } + &match self.requests_unanswered {
            0 => String::new(),
            unanswered => format!(", {unanswered} requests unanswered when it failed"),
        }
    }
}

/// Write `svg` to `path`.
pub fn write_plot(path: &std::path::Path, svg: &str) -> Result<(), DriveError> {
    std::fs::write(path, svg).map_err(|source| DriveError::Output {
        what: format!("writing the plot {}", path.display()),
        source,
    })
}

/// Check that the plot `path` can be written, before the run rather than after it:
/// open it for writing without truncating, and remove it again if this created it.
pub fn check_plot_path(path: &std::path::Path) -> Result<(), DriveError> {
    // Not `exists`, which follows a dangling link that the open would then create.
    let existed = std::fs::symlink_metadata(path).is_ok();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| DriveError::Output {
            what: format!("the plot {} cannot be written", path.display()),
            source,
        })?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `tally-bench server`: measure, print, plot.
pub fn run(args: &ServerArgs) -> Result<(), Box<dyn std::error::Error>> {
    validate(args)?;
    if let Some(path) = &args.plot {
        check_plot_path(path)?;
    }
    let report = measure(args)?;
    if args.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        );
    } else {
        out!("{}", report.human());
    }
    for warning in report.warnings() {
        eprintln!("tally-bench: warning: {warning}");
    }
    if let Some(failure) = &report.failure {
        return Err(DriveError::RunFailed(failure.clone()).into());
    }
    // The report (with its failure count) is printed first, so a script sees the figures
    // either way; a run where nothing succeeded measured nothing and must not pass.
    if report.ops == 0 && report.ops_failed > 0 {
        return Err(DriveError::AllFailed {
            ops_failed: report.ops_failed,
        }
        .into());
    }
    if report.ops_failed > 0 && !args.allow_errors {
        return Err(DriveError::SomeFailed {
            ops_failed: report.ops_failed,
            ops_total: report.ops + report.ops_failed,
        }
        .into());
    }
    if let Some(path) = &args.plot {
        let label = report.label();
        let svg = crate::plot::percentile_svg(
            &format!("tally-bench server: {label}"),
            &[crate::plot::Series {
                label: &label,
                points: &report.curve,
            }],
        );
        write_plot(path, &svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Distribution, KeyChooser};

    #[test]
    fn a_sequential_source_gives_every_rank_once_then_ends() {
        let mut source = KeySource::sequential(3..6);
        assert_eq!(source.remaining(), Some(3));
        assert_eq!(source.next_key(), Some(&b"key:3"[..]));
        assert_eq!(source.next_rank(), Some(4));
        assert_eq!(source.next_rank(), Some(5));
        assert_eq!(source.next_rank(), None);
        assert_eq!(source.remaining(), Some(0));
    }

    #[test]
    fn a_drawn_source_is_the_choosers_stream() {
        let chooser = KeyChooser::new(Distribution::Zipfian { exponent: 0.99 }, 1_000, 42);
        let mut expected = chooser.clone();
        let mut source = KeySource::new(chooser);
        assert_eq!(source.remaining(), None);
        for _ in 0..1_000 {
            assert_eq!(source.next_rank(), Some(expected.next_rank()));
        }
    }

    #[test]
    fn owners_by_table_and_by_hash_agree() {
        let map = HelloReply::with_modulo_owners(1, 64, vec![7001, 7002]).expect("a valid map");
        let map = Arc::new(map);
        let table = KeyOwners::new(Arc::clone(&map), 1_000);
        let hashed = KeyOwners::new(map, KeyOwners::TABLE_KEYS_MAX + 1);
        let mut scratch = Vec::new();
        let mut seen = [0_u32; 2];
        for rank in 0..1_000 {
            let owner = table.owner_of_rank(rank, &mut scratch);
            assert_eq!(owner, hashed.owner_of_rank(rank, &mut scratch));
            seen[owner] += 1;
        }
        assert!(seen.iter().all(|&count| count > 300), "{seen:?}");
    }
}
