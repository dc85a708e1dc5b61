//! The server's configuration: addresses, cores, limits, and executor tuning.
//!
//! [`ServerConfig`] is plain data; `tallyd` fills it from flags and a TOML file, tests
//! build it directly. [`ServerConfig::validate`] checks every field against its limit
//! before anything is bound or opened, so a bad value is a clear error at start-up and
//! never a panic deep inside an executor.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ServerError;

/// The largest number of cores (executors) a server runs. Core indexes travel as `u8`
/// in the per-connection owner scratch buffer.
pub const CORES_MAX: usize = 256;

/// The longest `--checkpoint-interval-s` (30 days); 0 turns the timer off.
pub const CHECKPOINT_INTERVAL_MAX_S: u64 = 30 * 24 * 3600;

/// The port a server listens on when none is given.
pub const LISTEN_PORT_DEFAULT: u16 = 7878;

/// Default of [`ServerConfig::idempotency_journal_records_max`]: 16M records, about
/// 1 GiB of journal per core with 16-byte keys.
pub const IDEMPOTENCY_JOURNAL_RECORDS_DEFAULT: u64 = 16 << 20;

/// The least `idempotency_reply_bytes_max`: room for a largest batch's results.
pub const IDEMPOTENCY_REPLY_BYTES_MIN: usize =
    tally_protocol::BATCH_OPS_MAX * tally_protocol::OP_REPLY_BYTES;

/// Default of [`ServerConfig::idempotency_reply_bytes_max`]: 64 MiB per core.
pub const IDEMPOTENCY_REPLY_BYTES_DEFAULT: usize = 64 << 20;

/// When a mutation is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DurabilityMode {
    /// Acknowledged once its journal record is on disk.
    #[default]
    Durable,
    /// Acknowledged at once; the journal reaches disk within a bounded interval.
    Relaxed,
}

impl FromStr for DurabilityMode {
    type Err = ServerError;

    fn from_str(text: &str) -> Result<Self, ServerError> {
        match text {
            "durable" => Ok(DurabilityMode::Durable),
            "relaxed" => Ok(DurabilityMode::Relaxed),
            other => Err(ServerError::InvalidConfig(format!(
                "durability must be `durable` or `relaxed`, not `{other}`"
            ))),
        }
    }
}

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The data directory (created if missing).
    pub data_dir: PathBuf,
    /// The main address; every core accepts on it (SO_REUSEPORT). Port 0 picks a free
    /// port, shared by all cores.
    pub listen: SocketAddr,
    /// The first shard port: core `i` also listens on `shard_port_base + i`. `None`
    /// means main port + 1, or a free port per core when the main port is 0.
    pub shard_port_base: Option<u16>,
    /// The Redis door's address (RESP2/RESP3, see `resp.rs`); every core accepts on it
    /// (SO_REUSEPORT). `None`: no Redis door. Port 0 picks a free port.
    pub resp_listen: Option<SocketAddr>,
    /// A Redis-door connection that sends nothing for this long is closed (0, the
    /// default: never, as Redis's `timeout 0`). A command once begun must still complete
    /// within `read_timeout_ms` of its first byte.
    pub resp_idle_timeout_ms: u64,
    /// The number of cores (executors). Core `i` is pinned to the CPU at `i % n` of
    /// the `n` CPUs this process may run on ([`crate::allowed_cpus`]).
    pub cores: usize,
    /// The partition count used only when the data directory is created.
    pub partitions: Option<u32>,
    /// The durability a request gets when it asks for the server default.
    pub durability_default: DurabilityMode,
    /// The most client connections open at once across all cores.
    pub connections_max: usize,
    /// A connection that sends nothing for this long, or whose request is not complete
    /// this long after its first byte, is closed (0 disables the timeout).
    pub read_timeout_ms: u64,
    /// A connection that does not take its replies for this long is closed.
    pub write_timeout_ms: u64,
    /// The most frames one connection has in flight (decoded, not yet answered).
    pub frames_in_flight_max: usize,
    /// How long an idle executor spins before it sleeps (default 0: it parks at once).
    /// A sleeping core costs about 100 us to wake, so spinning keeps one connection's
    /// round trip and the cross-core hop in the microseconds; but glommio's spin never
    /// yields the CPU, and it shares that CPU with the io_uring worker running the
    /// journal's fdatasync and, on small machines, with the clients. Measured on the
    /// 2-vCPU bench machine, load generator included (load 3-4), 0 against 200:
    /// durable 1 connection ~1,390 against ~1,080 ops/s, durable 4 connections x
    /// pipeline 16 ~74k against ~38k ops/s, relaxed 4 x 16 ~950k against ~650-750k;
    /// only an unpipelined relaxed connection is faster with 200 (p99 ~0.4 ms against
    /// ~1.7 ms). Hence 0 by default; 100-200 where tallyd has CPUs of its own (bare
    /// metal, clients on other machines) and single-connection latency matters.
    pub spin_before_park_us: u64,
    /// Bytes of io_uring buffer memory per executor (locked memory).
    pub io_memory_bytes: usize,
    /// io_uring submission ring depth per executor.
    pub ring_depth: usize,
    /// How long an idempotency key's first reply is remembered, at least 1 s (0 would
    /// forget every key at once: refused). Longer than any client retries a request:
    /// a retry that arrives after its key's window is applied again.
    pub idempotency_window_s: u64,
    /// The most idempotency keys one core remembers (each costs about 200 bytes plus
    /// its results). A key is never forgotten inside its window: when a core's table
    /// is full, new idempotent batches homed there are refused (`ServerBusy`) until
    /// keys expire. So this is a trade of memory against refusals under heavy
    /// idempotent traffic (the default takes 1,000,000 batches per core per window).
    pub idempotency_entries_max: usize,
    /// The most bytes of results one core keeps for idempotency keys, stored compactly
    /// (about 2 to 4 bytes per result for small values; 10 reserved per result while
    /// the batch runs). Full: new idempotent batches are refused, as for
    /// `idempotency_entries_max`. At least [`IDEMPOTENCY_REPLY_BYTES_MIN`], so a
    /// largest batch fits an empty table.
    pub idempotency_reply_bytes_max: usize,
    /// The most journal records a core keeps for idempotency across restarts: past
    /// it, checkpoints release the oldest segments even inside the window, so the
    /// journal stays bounded under heavy idempotent traffic (retries of the batches
    /// released are then answered from memory only, until a restart).
    pub idempotency_journal_records_max: u64,
    /// The journal settings (see `journal.rs`).
    pub journal: JournalConfig,
}

/// How each core's journal commits, checkpoints and recovers.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Relaxed records reach the disk within this many ms (plus one commit).
    pub relaxed_flush_ms: u64,
    /// How long a durable record may wait for companions before its commit starts, in
    /// us; 0 commits as soon as no commit is in flight (group commit still happens:
    /// records appended during a commit ride the next one).
    pub durable_wait_us: u64,
    /// A commit starts at once when this many bytes of records wait.
    pub commit_bytes: usize,
    /// A core checkpoints its partitions this often, in s (0: only at shutdown and
    /// when the journal grows past `checkpoint_journal_bytes`).
    pub checkpoint_interval_s: u64,
    /// A core checkpoints once its journal grew by this many bytes since the last one.
    pub checkpoint_journal_bytes: u64,
    /// At start, recover up to a corruption in the middle of a journal instead of
    /// refusing to start (the records after it are set aside as `*.corrupt`), or start
    /// with what is left when the newest segments were lost (see `journal::reach`).
    pub recover_to_corruption: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            relaxed_flush_ms: 10,
            durable_wait_us: 0,
            commit_bytes: 256 * 1024,
            checkpoint_interval_s: 300,
            checkpoint_journal_bytes: 1 << 30,
            recover_to_corruption: false,
        }
    }
}

/// Whether binding both addresses would clash: the same port on the same address, or
/// on any address where one of them is the wildcard.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    let wildcard = a.ip().is_unspecified() || b.ip().is_unspecified();
    a.port() == b.port() && (a.ip() == b.ip() || wildcard)
}

impl ServerConfig {
    /// The defaults `tallyd` documents in `--help`, with the given data directory.
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], LISTEN_PORT_DEFAULT)),
            shard_port_base: None,
            resp_listen: None,
            resp_idle_timeout_ms: 0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            partitions: None,
            durability_default: DurabilityMode::Durable,
            connections_max: 10_000,
            read_timeout_ms: 300_000,
            write_timeout_ms: 30_000,
            frames_in_flight_max: 1024,
            spin_before_park_us: 0,
            io_memory_bytes: 512 * 1024,
            ring_depth: 128,
            idempotency_window_s: 600,
            idempotency_entries_max: 1_000_000,
            idempotency_reply_bytes_max: IDEMPOTENCY_REPLY_BYTES_DEFAULT,
            idempotency_journal_records_max: IDEMPOTENCY_JOURNAL_RECORDS_DEFAULT,
            journal: JournalConfig::default(),
        }
    }

    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), ServerError> {
        let invalid = |message: String| Err(ServerError::InvalidConfig(message));
        if self.cores == 0 || self.cores > CORES_MAX {
            return invalid(format!(
                "cores must be in 1..={CORES_MAX}, not {}",
                self.cores
            ));
        }
        let partition_count_max = tally_engine::PARTITION_COUNT_MAX;
        if let Some(partitions) = self.partitions {
            // Checked here, before the data directory is touched, not by the engine
            // once it is created and locked.
            if partitions == 0 || partitions > partition_count_max {
                return invalid(format!(
                    "partitions must be in 1..={partition_count_max}, not {partitions}"
                ));
            }
        }
        if self.connections_max == 0 {
            return invalid("max connections must be at least 1".to_string());
        }
        if self.frames_in_flight_max == 0 {
            return invalid("frames in flight must be at least 1".to_string());
        }
        if self.io_memory_bytes < 64 * 1024 {
            return invalid("io memory must be at least 64 KiB".to_string());
        }
        if self.ring_depth == 0 || self.ring_depth > 4096 {
            return invalid(format!(
                "ring depth must be in 1..=4096, not {}",
                self.ring_depth
            ));
        }
        if self.idempotency_window_s == 0 {
            // Not "never" as for the timeouts: a window of 0 s forgets every key at once,
            // so a client's resend (or a caller's retry under its key) would be applied
            // again while the client still counts on its key.
            return invalid(
                "idempotency window must be at least 1 s, not 0: a key forgotten at once \
                 lets a retry under it apply a second time (deduplication cannot be \
                 turned off; keep the window longer than clients retry, 600 s by default)"
                    .to_string(),
            );
        }
        if self.idempotency_entries_max == 0 {
            return invalid("idempotency entries must be at least 1".to_string());
        }
        if self.idempotency_reply_bytes_max < IDEMPOTENCY_REPLY_BYTES_MIN {
            return invalid(format!(
                "idempotency reply bytes must be at least {IDEMPOTENCY_REPLY_BYTES_MIN} \
                 (a largest batch's results), not {}",
                self.idempotency_reply_bytes_max
            ));
        }
        if self.idempotency_journal_records_max == 0 {
            return invalid("idempotency journal records must be at least 1".to_string());
        }
        let commit_bytes_max = tally_engine::journal::COMMIT_BYTES_MAX;
        if self.journal.commit_bytes == 0 || self.journal.commit_bytes > commit_bytes_max {
            return invalid(format!(
                "commit bytes must be in 1..={commit_bytes_max}, not {}",
                self.journal.commit_bytes
            ));
        }
        if self.journal.relaxed_flush_ms > 60_000 || self.journal.durable_wait_us > 1_000_000 {
            return invalid("relaxed flush at most 60 s, durable wait at most 1 s".to_string());
        }
        if self.journal.checkpoint_interval_s > CHECKPOINT_INTERVAL_MAX_S {
            return invalid(format!(
                "checkpoint interval at most {CHECKPOINT_INTERVAL_MAX_S} s (30 days), not {} \
                 (0 turns the timer off)",
                self.journal.checkpoint_interval_s
            ));
        }
        if self.journal.checkpoint_journal_bytes == 0 {
            return invalid("checkpoint journal bytes must be at least 1".to_string());
        }
        if let Some(base) = self.shard_port_base {
            let last = usize::from(base) + self.cores - 1;
            if base == 0 || last > usize::from(u16::MAX) {
                return invalid(format!("shard ports {base}..={last} are not valid ports"));
            }
        }
        self.check_ports_apart()
    }

    /// Refuses a port tallyd would bind twice (the Redis door or the main port on a
    /// core's shard port), at once: binding found it "in use" and waited 2 s for a
    /// killed server to let go of it.
    fn check_ports_apart(&self) -> Result<(), ServerError> {
        let main_port = self.listen.port();
        let shard_port = |core| self.shard_addr(core, main_port).port();
        let shard_ports = (0..self.cores).filter(|&core| shard_port(core) != 0);
        for core in shard_ports {
            let port = shard_port(core);
            if port == main_port {
                return Err(ServerError::InvalidConfig(format!(
                    "--listen {} is also core {core}'s shard port (--shard-port-base)",
                    self.listen
                )));
            }
            let shard = self.shard_addr(core, main_port);
            if let Some(resp) = self.resp_listen.filter(|resp| same_socket(*resp, shard)) {
                return Err(ServerError::InvalidConfig(format!(
                    "--resp-listen {resp} is also core {core}'s shard port (--shard-port-base, \
                     or the main port + 1 + core)"
                )));
            }
        }
        let resp = self
            .resp_listen
            .filter(|resp| same_socket(*resp, self.listen));
        if let Some(resp) = resp.filter(|resp| resp.port() != 0) {
            return Err(ServerError::InvalidConfig(format!(
                "--resp-listen {resp} is also the --listen address"
            )));
        }
        Ok(())
    }

    /// The shard address of core `core`, before binding (port 0: the kernel picks).
    pub fn shard_addr(&self, core: usize, main_port: u16) -> SocketAddr {
        assert!(core < self.cores);
        let base = match self.shard_port_base {
            Some(base) => Some(usize::from(base)),
            None if self.listen.port() == 0 => None,
            None => Some(usize::from(main_port) + 1),
        };
        // A base that overflows the port range degrades to a kernel-chosen port rather
        // than wrapping onto someone else's port.
        let port = base
            .map(|base| base + core)
            .and_then(|port| u16::try_from(port).ok())
            .unwrap_or(0);
        SocketAddr::new(self.listen.ip(), port)
    }

    /// The read timeout, or `None` when disabled.
    pub fn read_timeout(&self) -> Option<Duration> {
        (self.read_timeout_ms > 0).then(|| Duration::from_millis(self.read_timeout_ms))
    }

    /// The write timeout, or `None` when disabled.
    pub fn write_timeout(&self) -> Option<Duration> {
        (self.write_timeout_ms > 0).then(|| Duration::from_millis(self.write_timeout_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServerConfig::new(PathBuf::from("x")).validate().unwrap();
    }

    #[test]
    fn ports_bound_twice_are_rejected() {
        let mut config = ServerConfig::new(PathBuf::from("/tmp/x"));
        config.listen = "127.0.0.1:21800".parse().unwrap();
        config.cores = 2;
        assert!(config.validate().is_ok());
        config.resp_listen = Some("127.0.0.1:21801".parse().unwrap());
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("core 0's shard port"), "{message}");
        config.resp_listen = None;
        config.shard_port_base = Some(21799);
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("core 1's shard port"), "{message}");
        config.shard_port_base = None;
        config.partitions = Some(100_000);
        assert!(config.validate().is_err());
    }

    #[test]
    fn zero_cores_is_rejected() {
        let mut config = ServerConfig::new(PathBuf::from("x"));
        config.cores = 0;
        assert!(config.validate().is_err());
    }

    /// "A very large number" for "never" once panicked every core at start (an
    /// `Instant` overflow); it is refused, naming the bound and the way to say never.
    #[test]
    fn a_checkpoint_interval_beyond_30_days_is_refused() {
        let mut config = ServerConfig::new(PathBuf::from("x"));
        config.journal.checkpoint_interval_s = CHECKPOINT_INTERVAL_MAX_S;
        config.validate().unwrap();
        config.journal.checkpoint_interval_s = u64::MAX;
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("30 days") && error.contains("0 turns"),
            "{error}"
        );
    }

    /// A window of 0 once turned deduplication off silently (review1 F13).
    #[test]
    fn an_idempotency_window_of_zero_is_refused() {
        let mut config = ServerConfig::new(PathBuf::from("x"));
        config.idempotency_window_s = 1;
        config.validate().unwrap();
        config.idempotency_window_s = 0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("at least 1 s"), "{error}");
    }

    #[test]
    fn shard_ports_follow_the_main_port() {
        let mut config = ServerConfig::new(PathBuf::from("x"));
        config.cores = 2;
        assert_eq!(config.shard_addr(1, 7878).port(), 7880);
        config.listen.set_port(0);
        assert_eq!(config.shard_addr(1, 40000).port(), 0);
        config.shard_port_base = Some(9000);
        assert_eq!(config.shard_addr(1, 40000).port(), 9001);
    }

    #[test]
    fn durability_parses() {
        assert_eq!(
            "relaxed".parse::<DurabilityMode>().unwrap(),
            DurabilityMode::Relaxed
        );
        assert!("fast".parse::<DurabilityMode>().is_err());
    }
}
