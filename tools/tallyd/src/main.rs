//! `tallyd`: Tally's server daemon.
//!
//! Reads flags and an optional TOML file (`--config FILE`; a flag overrides the same key
//! in the file; keys are the flag names with `-` or `_`), starts one pinned glommio
//! executor per core (`tally_server::start`), prints
//! `tallyd listening on ADDR (shard ports P0,P1,...)` once every core serves (then, with
//! `--resp-listen`, `tallyd resp listening on ADDR`), and exits 0
//! after a graceful shutdown on SIGINT or SIGTERM (1 on a start-up or core error).
//! SIGHUP is logged and ignored (see [`SIGNALS_HELP`]). A stop requested during
//! start-up is logged at once; start-up then completes its recovery, prints no
//! `listening` line, and stops without accepting (exit 0).
//!
//! Example config file:
//!
//! ```toml
//! data-dir = "/var/lib/tally"
//! listen = "0.0.0.0:7878"
//! cores = 4
//! durability = "durable"
//! max-connections = 20000
//! ```

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde::Deserialize;
use tally_server::{DurabilityMode, ServerConfig, ShutdownSignal};

/// What each signal does, for `--help` (and the README says the same).
const SIGNALS_HELP: &str = "Signals: SIGTERM or SIGINT stops gracefully: no new connections, \
what was read is answered, the journal is synced and checkpointed, exit 0 (during \
start-up: recovery completes, then tallyd stops without listening). A second SIGINT \
during a stop exits at once with status 1, skipping the final sync and checkpoint (like \
SIGKILL; a second SIGTERM changes nothing). SIGHUP is \
ignored (one log line says so): a closed terminal or a `kill -HUP` does not stop tallyd. \
SIGKILL loses relaxed writes not yet on disk (at most --relaxed-flush-ms).";

/// Tally's counter server: one pinned executor per core, each owning its partitions.
#[derive(Parser, Debug, Default)]
#[command(version, about, long_about = None, after_help = SIGNALS_HELP)]
struct Flags {
    /// TOML file with any of the settings below (flags given here win).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory, created if missing, but not its parent: a missing parent (a
    /// typo, a volume not mounted) is refused [default: ./tally-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Main address; every core accepts on it. Port 0 picks a free port (printed at
    /// start) [default: 127.0.0.1:7878].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// First shard port: core i also accepts on SHARD_PORT_BASE + i, for shard-aware
    /// clients [default: main port + 1; a free port per core if the main port is 0].
    #[arg(long, value_name = "PORT")]
    shard_port_base: Option<u16>,
    /// Also serve the Redis protocol (RESP2/RESP3: INCR, INCRBY, GET, SET, MGET, ...) on
    /// this address, for unmodified Redis clients. Port 0 picks a free port (printed at
    /// start) [default: off].
    #[arg(long, value_name = "ADDR")]
    resp_listen: Option<SocketAddr>,
    /// Close a Redis-door connection that sends nothing for this long, in ms; 0 = never,
    /// as Redis's default `timeout 0`, so pooled clients keep idle connections. A command
    /// once begun must still complete within --read-timeout-ms [default: 0].
    #[arg(long, value_name = "MS")]
    resp_idle_timeout_ms: Option<u64>,
    /// Number of cores (executors), each pinned to a CPU of its own: at most the CPUs
    /// this process may run on (its CPU affinity, as `taskset` or a container sets it;
    /// more is refused) [default: the CPUs available].
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Partition count of a new data directory [default: 64]. An existing directory
    /// keeps the count it was created with: without this flag tallyd opens it with that
    /// count; with a different count tallyd refuses to start, naming both counts.
    #[arg(long, value_name = "N")]
    partitions: Option<u32>,
    /// Durability for requests that ask for the server default: `durable` (acknowledged
    /// once its journal record is fdatasync'd) or `relaxed` (acknowledged at once, on
    /// disk within --relaxed-flush-ms) [default: durable]. A request may ask for either.
    #[arg(long, value_name = "MODE")]
    durability: Option<String>,
    /// Relaxed records reach the disk within this many ms (plus one commit)
    /// [default: 10].
    #[arg(long, value_name = "MS")]
    relaxed_flush_ms: Option<u64>,
    /// How long a durable record may wait for companions before its commit starts, in
    /// us; 0 starts a commit as soon as none is in flight (records arriving during a
    /// commit share the next one) [default: 0].
    #[arg(long, value_name = "US")]
    durable_wait_us: Option<u64>,
    /// A commit starts at once when this many bytes of records wait [default: 262144].
    #[arg(long, value_name = "BYTES")]
    commit_bytes: Option<usize>,
    /// Checkpoint the partitions that changed this often, in s; 0 = only when the journal grew by
    /// --checkpoint-journal-bytes and at shutdown [default: 300].
    #[arg(long, value_name = "S")]
    checkpoint_interval_s: Option<u64>,
    /// Checkpoint once a core's journal grew by this many bytes [default: 1073741824].
    #[arg(long, value_name = "BYTES")]
    checkpoint_journal_bytes: Option<u64>,
    /// At start, recover up to a corruption in the middle of a journal instead of
    /// refusing to start; later records are set aside as *.corrupt files. Also starts
    /// with what is left when the newest journal segments were lost.
    #[arg(long)]
    recover_to_corruption: bool,
    /// Most client connections open at once; more are answered ServerBusy and closed
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Close a native connection that sends nothing for this long, in ms, or any
    /// connection whose request (native frame or Redis command) is not complete this
    /// long after its first byte (idle Redis-door connections: --resp-idle-timeout-ms);
    /// 0 = never [default: 300000].
    #[arg(long, value_name = "MS")]
    read_timeout_ms: Option<u64>,
    /// Close a connection that does not take its replies for this long, in ms
    /// [default: 30000].
    #[arg(long, value_name = "MS")]
    write_timeout_ms: Option<u64>,
    /// Most frames one connection may have in flight (read, not yet answered)
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    max_frames_in_flight: Option<usize>,
    /// How long an idle core spins before sleeping, in us. Waking a sleeping core costs
    /// ~100 us, but a spinning core keeps its CPU from the clients and from the kernel
    /// thread running the journal's fdatasync: 0 (the default) is faster wherever
    /// tallyd shares its CPUs (measured on 2 vCPUs: durable 2x, relaxed pipelined
    /// ~1.3x); 100-200 lowers one unpipelined connection's latency where tallyd has
    /// CPUs to itself [default: 0].
    #[arg(long, value_name = "US")]
    spin_us: Option<u64>,
    /// io_uring buffer memory per core, in bytes (locked memory: lower it if
    /// `ulimit -l` is small) [default: 524288].
    #[arg(long, value_name = "BYTES")]
    io_memory_bytes: Option<usize>,
    /// io_uring ring depth per core [default: 128].
    #[arg(long, value_name = "N")]
    ring_depth: Option<usize>,
    /// How long an idempotency key's first reply is remembered, in s: a retry under
    /// the key inside it is answered, not applied again [default: 600; at least 1, 0 is
    /// refused, deduplication cannot be turned off]. Keep it longer than clients retry.
    #[arg(long, value_name = "S")]
    idempotency_window_s: Option<u64>,
    /// Most idempotency keys remembered per core, each about 200 bytes plus its
    /// results [default: 1000000]. A key is never forgotten inside its window: once a
    /// core holds this many, new idempotent batches homed there are refused with
    /// ServerBusy (nothing applied; retry later) until keys expire. More memory, fewer
    /// refusals.
    #[arg(long, value_name = "N")]
    idempotency_max_keys: Option<usize>,
    /// Most bytes of idempotent batches' results kept per core, about 2-4 bytes per
    /// result (10 reserved while a batch runs); full, new idempotent batches are
    /// refused as for --idempotency-max-keys [default: 67108864, 64 MiB; at least
    /// 100000].
    #[arg(long, value_name = "BYTES")]
    idempotency_max_reply_bytes: Option<usize>,
    /// Most journal records per core kept so idempotent retries are answered after a
    /// restart [default: 16777216, about 1 GiB]. Inside the window, idempotent
    /// batches keep their journal segments from checkpoints' release; past this bound
    /// the oldest are released anyway, so the journal stays bounded.
    #[arg(long, value_name = "N")]
    idempotency_journal_records: Option<u64>,
    /// Log level (off, error, warn, info, debug, trace) or comma-separated TARGET=LEVEL
    /// directives; RUST_LOG wins if set, and is checked the same way. Anything else is
    /// a start-up error (exit 2)
    /// [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

/// The same settings as [`Flags`], from the TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    #[serde(alias = "data_dir")]
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    #[serde(alias = "shard_port_base")]
    shard_port_base: Option<u16>,
    #[serde(alias = "resp_listen")]
    resp_listen: Option<SocketAddr>,
    #[serde(alias = "resp_idle_timeout_ms")]
    resp_idle_timeout_ms: Option<u64>,
    cores: Option<usize>,
    partitions: Option<u32>,
    durability: Option<String>,
    #[serde(alias = "relaxed_flush_ms")]
    relaxed_flush_ms: Option<u64>,
    #[serde(alias = "durable_wait_us")]
    durable_wait_us: Option<u64>,
    #[serde(alias = "commit_bytes")]
    commit_bytes: Option<usize>,
    #[serde(alias = "checkpoint_interval_s")]
    checkpoint_interval_s: Option<u64>,
    #[serde(alias = "checkpoint_journal_bytes")]
    checkpoint_journal_bytes: Option<u64>,
    #[serde(alias = "recover_to_corruption")]
    recover_to_corruption: Option<bool>,
    #[serde(alias = "max_connections")]
    max_connections: Option<usize>,
    #[serde(alias = "read_timeout_ms")]
    read_timeout_ms: Option<u64>,
    #[serde(alias = "write_timeout_ms")]
    write_timeout_ms: Option<u64>,
    #[serde(alias = "max_frames_in_flight")]
    max_frames_in_flight: Option<usize>,
    #[serde(alias = "spin_us")]
    spin_us: Option<u64>,
    #[serde(alias = "io_memory_bytes")]
    io_memory_bytes: Option<usize>,
    #[serde(alias = "ring_depth")]
    ring_depth: Option<usize>,
    #[serde(alias = "idempotency_window_s")]
    idempotency_window_s: Option<u64>,
    #[serde(alias = "idempotency_max_keys")]
    idempotency_max_keys: Option<usize>,
    #[serde(alias = "idempotency_max_reply_bytes")]
    idempotency_max_reply_bytes: Option<usize>,
    #[serde(alias = "idempotency_journal_records")]
    idempotency_journal_records: Option<u64>,
    #[serde(alias = "log_level")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let file = match flags.config.as_deref().map(read_file).transpose() {
        Ok(file) => file.unwrap_or_default(),
        Err(message) => {
            report(&message);
            return ExitCode::from(2);
        }
    };
    if let Err(message) = init_logging(flags.log_level.as_deref().or(file.log_level.as_deref())) {
        report(&message);
        return ExitCode::from(2);
    }
    let config = match merge(&flags, file) {
        Ok(config) => config,
        Err(error) => {
            report(&error);
            return ExitCode::from(2);
        }
    };
    if let Err(message) = check_cores_fit(config.cores, tally_server::allowed_cpus().len()) {
        report(&message);
        return ExitCode::from(2);
    }
    run(config)
}

/// Refuses more cores than CPUs to pin them to. Each core is a thread pinned to a CPU
/// that never yields it while busy (glommio): several on one CPU starve each other,
/// and a config file written for a large host made start-up spin every CPU for tens
/// of seconds on a small one, deaf to SIGTERM.
fn check_cores_fit(cores: usize, cpu_count: usize) -> Result<(), String> {
    if cores <= cpu_count {
        return Ok(());
    }
    let cpus = match cpu_count {
        1 => "1 CPU".to_string(),
        _ => format!("{cpu_count} CPUs"),
    };
    Err(format!(
        "--cores {cores} is more than the {cpus} this process may run on (its \
         CPU affinity): each core is pinned to a CPU of its own; use --cores {cpu_count} \
         or fewer, or give tallyd more CPUs"
    ))
}

fn run(config: ServerConfig) -> ExitCode {
    let shutdown = ShutdownSignal::new();
    if let Err(error) = shutdown.install_os_handlers() {
        report(&error);
        return ExitCode::FAILURE;
    }
    // Absolute, so the log says which directory a relative path (the default
    // ./tally-data) meant.
    let data_dir = std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone());
    tracing::info!(data_dir = %data_dir.display(), cores = config.cores, "starting");
    let server = match tally_server::start(config, shutdown) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "could not start");
            report(&error);
            return ExitCode::FAILURE;
        }
    };
    if !server.is_serving() {
        // A stop came during start-up (logged then): no "listening" line, since no
        // connection is accepted.
        tracing::info!("start-up complete; stopping without serving, as requested");
        return join(server);
    }
    let ports: Vec<String> = server
        .shard_addrs()
        .iter()
        .map(|addr| addr.port().to_string())
        .collect();
    let line = format!(
        "tallyd listening on {} (shard ports {})",
        server.listen_addr(),
        ports.join(",")
    );
    tracing::info!(partitions = server.partition_count(), "{line}");
    print_line(&line);
    if let Some(resp_addr) = server.resp_addr() {
        let line = format!("tallyd resp listening on {resp_addr}");
        tracing::info!("{line}");
        print_line(&line);
    }
    join(server)
}

/// Waits for the server to stop; the exit code.
fn join(server: tally_server::ServerHandle) -> ExitCode {
    match server.join() {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// Writes `tallyd: <what>` on stderr for a person; a failed write is ignored (stderr
/// may be a file on the full disk the error is about), never a panic as `eprintln!`
/// would make it.
fn report(what: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tallyd: {what}");
}

/// Prints a start-up line on stdout. Whoever started us may have closed its end
/// already (a test that gave up, a SIGTERM during start): the server keeps running,
/// so a write error (EPIPE) is logged, never a panic as `println!` would make it.
fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::warn!(%error, "could not print the start line on stdout");
    }
}

fn read_file(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("reading {}: {error}", path.display()))?;
    toml::from_str(&text).map_err(|error| format!("parsing {}: {error}", path.display()))
}

/// Defaults, overridden by the file, overridden by flags.
fn merge(flags: &Flags, file: FileSettings) -> Result<ServerConfig, tally_server::ServerError> {
    let data_dir = flags
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("./tally-data"));
    let mut config = ServerConfig::new(data_dir);
    macro_rules! pick {
        ($field:ident, $flag:ident) => {
            if let Some(value) = flags.$flag.clone().or(file.$flag) {
                config.$field = value;
            }
        };
    }
    pick!(listen, listen);
    pick!(cores, cores);
    pick!(connections_max, max_connections);
    pick!(read_timeout_ms, read_timeout_ms);
    pick!(resp_idle_timeout_ms, resp_idle_timeout_ms);
    pick!(write_timeout_ms, write_timeout_ms);
    pick!(frames_in_flight_max, max_frames_in_flight);
    pick!(spin_before_park_us, spin_us);
    pick!(io_memory_bytes, io_memory_bytes);
    pick!(ring_depth, ring_depth);
    pick!(idempotency_window_s, idempotency_window_s);
    pick!(idempotency_entries_max, idempotency_max_keys);
    pick!(idempotency_reply_bytes_max, idempotency_max_reply_bytes);
    pick!(idempotency_journal_records_max, idempotency_journal_records);
    macro_rules! pick_journal {
        ($field:ident) => {
            if let Some(value) = flags.$field.or(file.$field) {
                config.journal.$field = value;
            }
        };
    }
    pick_journal!(relaxed_flush_ms);
    pick_journal!(durable_wait_us);
    pick_journal!(commit_bytes);
    pick_journal!(checkpoint_interval_s);
    pick_journal!(checkpoint_journal_bytes);
    config.journal.recover_to_corruption =
        flags.recover_to_corruption || file.recover_to_corruption.unwrap_or(false);
    config.shard_port_base = flags.shard_port_base.or(file.shard_port_base);
    config.resp_listen = flags.resp_listen.or(file.resp_listen);
    config.partitions = flags.partitions.or(file.partitions);
    if let Some(mode) = flags.durability.clone().or(file.durability) {
        config.durability_default = mode.parse::<DurabilityMode>()?;
    }
    config.validate()?;
    Ok(config)
}

/// Logs to standard error, filtered by `RUST_LOG` if set, else by `level` (default
/// info); colours only on a terminal, and never with `NO_COLOR` set (no-color.org).
/// `Err` for a filter that does not parse, or a `RUST_LOG` or `--log-level` directive
/// that names no level (a typo such as `warning` would otherwise parse as a target
/// name and silence every other log line).
fn init_logging(level: Option<&str>) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        // The same check as --log-level: `RUST_LOG=warning` parsed as a target name
        // and silenced every line, the journal's ERRORs included.
        Ok(from_env) if !from_env.is_empty() => parse_filter(&from_env, Strictness::Env)
            .map_err(|error| format!("invalid RUST_LOG {from_env:?}: {error}"))?,
        _ => {
            let level = level.unwrap_or("info");
            parse_filter(level, Strictness::Flag)
                .map_err(|error| format!("invalid --log-level {level:?}: {error}"))?
        }
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let colour = std::io::stderr().is_terminal() && !no_color;
    // A log that cannot be written (stderr on a full disk, `2>/dev/full`) loses its
    // lines; it never stops the server: tracing's fallback for a failed write is an
    // `eprintln!`, which panics.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .init();
    Ok(())
}

/// The levels a filter directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Words people write for a level that are not one: alone in `RUST_LOG` each parses as
/// a target name, which enables that (nonexistent) target and silences everything else.
const LEVEL_MISTAKES: [&str; 10] = [
    "warning",
    "warnings",
    "err",
    "errors",
    "information",
    "notice",
    "critical",
    "fatal",
    "verbose",
    "all",
];

/// How much of the filter grammar a source may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// `--log-level`: every directive names a level (`LEVEL` or `TARGET=LEVEL`).
    Flag,
    /// `RUST_LOG`: the whole `tracing` grammar (a bare `TARGET` enables every level of
    /// it, as other Rust programs read the same variable), except a bare word that is
    /// a level misspelled ([`LEVEL_MISTAKES`]).
    Env,
}

/// A log filter: comma-separated directives, checked as `strictness` says.
fn parse_filter(
    text: &str,
    strictness: Strictness,
) -> Result<tracing_subscriber::EnvFilter, String> {
    for directive in text.split(',').map(str::trim) {
        if directive.is_empty() && strictness == Strictness::Env {
            continue;
        }
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level)
            .to_ascii_lowercase();
        let refused = match strictness {
            Strictness::Flag => !LEVELS.contains(&level.as_str()),
            Strictness::Env => LEVEL_MISTAKES.contains(&level.as_str()),
        };
        if refused {
            return Err(format!(
                "{directive:?} names no level; use one of {} or TARGET=LEVEL",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let flags = Flags::parse_from(["tallyd", "--cores", "3", "--durability", "relaxed"]);
        let file: FileSettings = toml::from_str("cores = 1\nmax-connections = 7\n").unwrap();
        let config = merge(&flags, file).unwrap();
        assert_eq!(config.cores, 3);
        assert_eq!(config.connections_max, 7);
        assert_eq!(config.durability_default, DurabilityMode::Relaxed);
    }

    #[test]
    fn more_cores_than_cpus_are_refused() {
        assert!(check_cores_fit(2, 2).is_ok());
        let message = check_cores_fit(64, 2).unwrap_err();
        assert!(
            message.contains("--cores 64") && message.contains("the 2 CPUs"),
            "{message}"
        );
    }

    #[test]
    fn log_level_flags_must_name_a_level() {
        let flag = |text| parse_filter(text, Strictness::Flag);
        assert!(flag("warn").is_ok());
        assert!(flag("INFO").is_ok());
        assert!(flag("info,tally_server=debug").is_ok());
        assert!(flag("warning").is_err());
        assert!(flag("tally_server").is_err());
        assert!(flag("tally_server=loud").is_err());
        assert!(flag("").is_err());
    }

    /// `RUST_LOG` takes what other Rust programs accept (a bare target, a trailing
    /// comma), and refuses only a level misspelled, which would silence everything.
    #[test]
    fn rust_log_refuses_only_a_misspelled_level() {
        let env = |text| parse_filter(text, Strictness::Env);
        assert!(env("tally_server").is_ok());
        assert!(env("info,").is_ok());
        assert!(env("warn,tally_server::durability=debug").is_ok());
        assert!(env("warning").is_err());
        assert!(env("info,Errors").is_err());
        assert!(env("tally_server=loud").is_err());
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        assert!(toml::from_str::<FileSettings>("corez = 1\n").is_err());
    }
}
