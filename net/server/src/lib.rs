//! Tally's thread-per-core server: one glommio executor per core, each owning a share
//! of the partitions, talking to the others only through glommio's channel mesh.
//!
//! # Data path of an increment
//!
//! ```text
//! client ──TCP──▶ core R (main port via SO_REUSEPORT, or core R's own shard port)
//!   connection.rs: one read brings many frames; decode (tally-protocol, borrowed keys)
//!   for each op: partition = xxh3(key) % P, owner = partition % cores
//!     owner == R ─▶ R's Store::apply_batch (one call per frame, prefetching)
//!     owner == O ─▶ ForwardBatch ──request mesh──▶ core O: Store::apply_batch
//!                                ◀──reply mesh──── results in order
//!   merge results in the batch's order ─▶ BatchReply ─▶ one write for the whole turn
//! ```
//!
//! A shard-aware client (`HelloReply` lists every core's shard port and the owner of
//! every partition) sends each key straight to its owner and never pays the hop.
//!
//! # Durability
//!
//! Each core owns one write-ahead journal (`tally_engine::journal`) and appends a
//! record for every mutation it applies, its own or forwarded ones, right after the
//! store applied it. A `relaxed` batch is answered at once (its records reach the disk
//! within `relaxed_flush_ms`); a `durable` one (the default) once every record it made
//! is fdatasync'd: the receiving core waits for its own journal, and an owning core
//! holds its mesh reply until its journal has the forwarded records on disk. One
//! group-commit task per core batches commits by time and size. At start each core
//! recovers (checkpoint + journal replay) before serving; at graceful shutdown it
//! syncs, checkpoints and closes its store cleanly. See `durability.rs` and
//! docs/STORAGE.md for what each mode can lose.
//!
//! ```text
//!   apply_batch ─▶ journal.append (per mutation, no await) ─▶ relaxed: reply now
//!                  commit task: one write + fdatasync per group ─▶ durable: reply
//! ```
//!
//! # Idempotency
//!
//! See [`idempotency`]: a batch's key is recorded on one core chosen by a hash of the
//! idempotency key alone (its *home*), so every batch under a key, retry or reuse, on
//! any connection or port, meets the same record.
//! Journal records carry the key, so after a restart each core answers a retry's
//! operations it journaled from its journal instead of applying them again
//! (`durability.rs` states exactly what a retry after a restart returns).
//!
//! # Memory locking
//!
//! glommio registers io_uring rings and an I/O buffer per executor, which counts against
//! `RLIMIT_MEMLOCK`. Whatever the settings, glommio needs at least 512 KiB of it (a
//! lower `ulimit -l` fails every executor: measured from 256 to 511 KiB, with
//! `--io-memory-bytes 65536 --ring-depth 8` too). The defaults (`io_memory_bytes` 512
//! KiB, ring depth 128) fit 8 cores in 8 MiB; with more cores and a limit of a few
//! MiB, lower `--io-memory-bytes` (64 KiB minimum) and `--ring-depth`, or raise the
//! limit.
//!
//! Module map: [`config`] (settings and limits), `core` (per-core state, loops,
//! ownership), `router` (partition → core routing, mesh messages), `connection` (frames,
//! pipelining, replies), `durability` (journal, group commit, checkpoints, recovery),
//! [`idempotency`] (key memory), [`shutdown`] (signals, draining),
//! `dispatch` (routing a list of operations to their owners, shared by both doors),
//! `stream` (accepted sockets and input buffers, shared by both doors), `descriptors`
//! (the open-files limit, accepting when out of descriptors), `resp` (the
//! Redis door on `--resp-listen`).

pub mod config;
mod connection;
mod core;
mod descriptors;
mod dispatch;
mod durability;
pub mod error;
pub mod idempotency;
mod layout;
mod resp;
mod router;
pub mod shutdown;
mod stream;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement, PoolPlacement};
use socket2::{Domain, Protocol, Socket, Type};
use tally_engine::{DataDir, Store};
use tally_protocol::HelloReply;

pub use config::{DurabilityMode, JournalConfig, ServerConfig};
pub use error::ServerError;
pub use shutdown::ShutdownSignal;

use crate::core::CoreSetup;
use crate::durability::CoreJournal;
use crate::idempotency::RecoveredBatches;
use crate::router::{MeshReply, MeshRequest};
use crate::shutdown::DrainBarrier;

/// Capacity of each mesh channel (one per ordered pair of cores).
const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Listen backlog of every listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// Start-up phases, published by the starting thread to every core.
const PHASE_WAIT: u8 = 0;
const PHASE_JOIN_MESH: u8 = 1;
const PHASE_SERVE: u8 = 2;
const PHASE_ABORT: u8 = 3;

/// A running server.
pub struct ServerHandle {
    listen_addr: SocketAddr,
    shard_addrs: Vec<SocketAddr>,
    resp_addr: Option<SocketAddr>,
    partition_count: u32,
    shutdown: ShutdownSignal,
    /// Whether the cores serve: `false` if a stop was requested during start-up.
    serving: bool,
    cores: Vec<ExecutorJoinHandle<Result<(), ServerError>>>,
    /// Held until every core has stopped (after the final checkpoint).
    _lock: layout::DataDirLock,
}

impl ServerHandle {
    /// The main address (with the real port if 0 was asked for).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Each core's shard address, by core index.
    pub fn shard_addrs(&self) -> &[SocketAddr] {
        &self.shard_addrs
    }

    /// The Redis door's address (with the real port), if one was configured.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

    /// The data directory's partition count.
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// The flag that stops the server; `request()` it to shut down gracefully.
    pub fn shutdown_signal(&self) -> &ShutdownSignal {
        &self.shutdown
    }

    /// Whether the cores accept connections: `false` if a stop was requested during
    /// start-up, so they recovered and are stopping without ever accepting.
    pub fn is_serving(&self) -> bool {
        self.serving
    }

    /// Waits until every core has stopped; the first error, if any.
    pub fn join(self) -> Result<(), ServerError> {
        let mut first_error = None;
        for (index, handle) in self.cores.into_iter().enumerate() {
            let outcome = match handle.join() {
                Ok(outcome) => outcome,
                Err(error) => Err(ServerError::CoreFailed {
                    core: index,
                    message: error.to_string(),
                }),
            };
            if let Err(error) = outcome {
                tracing::error!(core = index, %error, "core stopped with an error");
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// What a core tells the starting thread, tagged with the core's index.
enum StartReport {
    /// The executor runs our code.
    Alive,
    /// The core joined both channel meshes and is recovering its partitions.
    Joined,
    /// The core recovered and opened its journal, or failed to; with the idempotent
    /// batches its journal held (key, fingerprint, unix seconds).
    Ready(Result<RecoveredList, ServerError>),
}

/// How long start-up may take before it is declared stuck: recovery of a large data
/// set takes seconds (the goal is under 30), so a minute means something is wrong.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a failed start waits for its cores to stop before giving up on them.
const ABORT_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the data directory, binds every socket, starts one executor per core, and
/// returns once every core serves (or the first start-up error). A core that does
/// not report within [`START_TIMEOUT`] fails the start with
/// [`ServerError::StartStuck`] naming its stage: start-up never hangs.
pub fn start(
    mut config: ServerConfig,
    shutdown: ShutdownSignal,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    config.connections_max =
        descriptors::raise_open_files_limit(config.connections_max, config.cores);
    let lock = layout::DataDirLock::acquire(&config.data_dir)?;
    // Whether the store is new, told apart in the log from one recovered (whose
    // `recovered` lines look the same for an empty store): the engine writes its
    // superblock, named so, when it creates a data directory's store.
    let new = !config.data_dir.join("superblock").exists();
    let dir = DataDir::open_or_create(&config.data_dir, config.partitions)
        .map_err(ServerError::DataDir)?;
    let absolute = std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone());
    let partitions = dir.partition_count();
    if new {
        tracing::info!(
            "created a new data directory at {} ({partitions} partitions)",
            absolute.display()
        );
    } else {
        tracing::info!(
            "opened the data directory at {} ({partitions} partitions)",
            absolute.display()
        );
    }
    layout::migrate(&config, &dir)?;
    let Listeners {
        main: (main_listeners, listen_addr),
        resp: (resp_listeners, resp_addr),
        shards: (shard_listeners, shard_addrs),
    } = bind_retrying(&config)?;
    let shard_ports = shard_addrs.iter().map(SocketAddr::port).collect();
    let hello = HelloReply::with_modulo_owners(server_id(), dir.partition_count(), shard_ports)
        .map_err(|error| ServerError::InvalidConfig(format!("shard map: {error}")))?;
    let phase = Arc::new(AtomicU8::new(PHASE_WAIT));
    let shared = Shared {
        request_mesh: MeshBuilder::full(config.cores, MESH_CHANNEL_CAPACITY),
        reply_mesh: MeshBuilder::full(config.cores, MESH_CHANNEL_CAPACITY),
        connections_open: Arc::new(AtomicUsize::new(0)),
        drain: DrainBarrier::new(config.cores),
        phase: Arc::clone(&phase),
        shutdown: shutdown.clone(),
        dir,
        hello,
        resp: resp::RespShared::new(config.cores, resp_addr.map_or(0, |addr| addr.port())),
        recovered_batches: Arc::new(OnceLock::new()),
        serving: Arc::new(AtomicBool::new(false)),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let mut handles = Vec::new();
    let (report_tx, report_rx) = mpsc::channel();
    let listeners = main_listeners.into_iter().zip(shard_listeners);
    let listeners = listeners.zip(resp_listeners);
    for (index, ((main_listener, shard_listener), resp_listener)) in listeners.enumerate() {
        let listeners = (main_listener, shard_listener, resp_listener);
        let report = CoreReport {
            core: index,
            sender: report_tx.clone(),
        };
        match spawn_core(index, &config, &shared, listeners, report) {
            Ok(handle) => handles.push(handle),
            Err(error) => return abort(&phase, handles, error),
        }
    }
    // Only the cores hold senders now: a core that dies unreported closes its own.
    drop(report_tx);
    let recovered = match await_reports(&report_rx, &mut handles, &phase, deadline) {
        Ok(lists) => RecoveredBatches::new(lists, config.idempotency_window_s),
        Err(error) => return abort(&phase, handles, error),
    };
    if !recovered.is_empty() {
        tracing::info!(
            keys = recovered.len(),
            "idempotency keys bound to their batches across the restart"
        );
    }
    shared
        .recovered_batches
        .set(Arc::new(recovered))
        .expect("set once, before the cores serve");
    // A stop requested during start-up (logged when it came) keeps every core from
    // accepting: they go through the graceful stop at once, so the recovered state is
    // synced, checkpointed and closed clean, as after any stop.
    let serving = shutdown.begin_serving();
    shared.serving.store(serving, Ordering::Release);
    phase.store(PHASE_SERVE, Ordering::Release);
    let partition_count = shared.dir.partition_count();
    Ok(ServerHandle {
        listen_addr,
        shard_addrs,
        resp_addr,
        partition_count,
        shutdown,
        serving,
        cores: handles,
        _lock: lock,
    })
}

/// One core's idempotent batches found in its journal at start.
type RecoveredList = Vec<(idempotency::IdempotencyKey, idempotency::Fingerprint, u32)>;

/// A core's side of the start-up reports.
struct CoreReport {
    core: usize,
    sender: mpsc::Sender<(usize, StartReport)>,
}

impl CoreReport {
    fn send(&self, report: StartReport) {
        // The starting thread gone (it gave up) is no error of ours.
        let _ = self.sender.send((self.core, report));
    }

    fn fail(&self, error: ServerError) {
        self.send(StartReport::Ready(Err(error)));
    }
}

/// What every core gets a copy of.
struct Shared {
    request_mesh: MeshBuilder<MeshRequest, glommio::channels::channel_mesh::Full>,
    reply_mesh: MeshBuilder<MeshReply, glommio::channels::channel_mesh::Full>,
    connections_open: Arc<AtomicUsize>,
    drain: DrainBarrier,
    phase: Arc<AtomicU8>,
    shutdown: ShutdownSignal,
    dir: DataDir,
    hello: HelloReply,
    resp: Arc<resp::RespShared>,
    /// Set once every core has recovered, before they serve.
    recovered_batches: Arc<OnceLock<Arc<RecoveredBatches>>>,
    /// Set before the serve phase: `false` if the cores must stop without accepting.
    serving: Arc<AtomicBool>,
}

/// Tells every core to stop and waits (a bounded time) for them; a core stuck in
/// start-up is left behind rather than hanging the caller.
fn abort(
    phase: &AtomicU8,
    handles: Vec<ExecutorJoinHandle<Result<(), ServerError>>>,
    error: ServerError,
) -> Result<ServerHandle, ServerError> {
    phase.store(PHASE_ABORT, Ordering::Release);
    let (done_tx, done_rx) = mpsc::channel();
    let joiner = std::thread::Builder::new()
        .name("tally-abort".to_string())
        .spawn(move || {
            for handle in handles {
                let _ = handle.join();
            }
            let _ = done_tx.send(());
        });
    if joiner.is_ok() && done_rx.recv_timeout(ABORT_JOIN_TIMEOUT).is_err() {
        tracing::error!("some cores did not stop after a failed start; leaving them");
    }
    Err(error)
}

/// Where a core is in start-up, for the message naming a stuck stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Spawned,
    Alive,
    Joined,
    Ready,
}

impl Stage {
    /// What a core at this stage is busy doing.
    fn doing(self) -> &'static str {
        match self {
            Stage::Spawned => "starting its executor thread",
            Stage::Alive => "joining the channel mesh",
            Stage::Joined => "opening its store and recovering its journal",
            Stage::Ready => "waiting for the other cores",
        }
    }
}

/// Waits until every core is alive, lets them join the mesh, then waits until every
/// core has opened its store; fails at the first error, a core dying unreported, or
/// the deadline. Returns what each core recovered of its idempotent batches.
fn await_reports(
    reports: &mpsc::Receiver<(usize, StartReport)>,
    handles: &mut [ExecutorJoinHandle<Result<(), ServerError>>],
    phase: &AtomicU8,
    deadline: Instant,
) -> Result<Vec<RecoveredList>, ServerError> {
    let mut stages = vec![Stage::Spawned; handles.len()];
    let mut recovered = Vec::with_capacity(handles.len());
    while !stages.iter().all(|stage| *stage == Stage::Ready) {
        let wait = deadline.saturating_duration_since(Instant::now());
        let (core, report) = match reports.recv_timeout(wait) {
            Ok(received) => received,
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(stuck(&stages)),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Every core ended; one that never reported is the culprit.
                let core = stages.iter().position(|s| *s != Stage::Ready).unwrap_or(0);
                let mut message = format!("stopped while {}", stages[core].doing());
                if stages[core] == Stage::Spawned {
                    // glommio makes its executor (rings, registered buffers) on the new
                    // thread; what fails there is almost always the locked memory.
                    message.push_str(
                        ": glommio could not create its executor, usually for lack of locked \
                         memory (it needs at least 512 KiB: check `ulimit -l`, and raise it \
                         with `ulimit -l` or LimitMEMLOCK= in a systemd unit)",
                    );
                }
                return Err(ServerError::CoreFailed { core, message });
            }
        };
        stages[core] = match report {
            StartReport::Alive => Stage::Alive,
            StartReport::Joined => Stage::Joined,
            StartReport::Ready(Ok(list)) => {
                recovered.push(list);
                Stage::Ready
            }
            StartReport::Ready(Err(error)) => return Err(error),
        };
        if stages.iter().all(|stage| *stage == Stage::Alive) {
            phase.store(PHASE_JOIN_MESH, Ordering::Release);
        }
    }
    Ok(recovered)
}

/// The error for a start-up past its deadline: the first core not yet ready.
fn stuck(stages: &[Stage]) -> ServerError {
    let core = stages
        .iter()
        .position(|stage| *stage != Stage::Ready)
        .expect("a start-up past its deadline has a core not ready");
    ServerError::StartStuck {
        core,
        stage: stages[core].doing(),
        seconds: START_TIMEOUT.as_secs(),
    }
}

fn spawn_core(
    index: usize,
    config: &ServerConfig,
    shared: &Shared,
    listeners: (
        std::net::TcpListener,
        std::net::TcpListener,
        Option<std::net::TcpListener>,
    ),
    report: CoreReport,
) -> Result<ExecutorJoinHandle<Result<(), ServerError>>, ServerError> {
    let cpus = allowed_cpus();
    let builder = LocalExecutorBuilder::new(Placement::Fixed(cpus[index % cpus.len()]))
        .name(&format!("tally-core-{index}"))
        .io_memory(config.io_memory_bytes)
        .ring_depth(config.ring_depth)
        .spin_before_park(Duration::from_micros(config.spin_before_park_us))
        // The blocking thread writes checkpoints (`durability::checkpoint_round`): left
        // unpinned, so the scheduler can run it on another CPU than the core's. Pinned
        // beside the core (glommio's default), its copies, checksums and syscalls took
        // that core's CPU: a review measured a round's tail at twice its longest copy.
        .blocking_thread_pool_placement(PoolPlacement::Unbound(1));
    let config = config.clone();
    let request_mesh = shared.request_mesh.clone();
    let reply_mesh = shared.reply_mesh.clone();
    let connections_open = Arc::clone(&shared.connections_open);
    let drain = shared.drain.clone();
    let phase = Arc::clone(&shared.phase);
    let shutdown = shared.shutdown.clone();
    let dir = shared.dir.clone();
    let hello = shared.hello.clone();
    let resp_shared = Arc::clone(&shared.resp);
    let recovered_batches = Arc::clone(&shared.recovered_batches);
    let serving = Arc::clone(&shared.serving);
    let spawned = builder.spawn(move || async move {
        report.send(StartReport::Alive);
        let meshes = (request_mesh, reply_mesh);
        let Some((requests, replies)) = join_meshes(meshes, &phase, &report).await else {
            return Ok(());
        };
        report.send(StartReport::Joined);
        let Some((store, journal)) = recover_core(&config, &dir, &report) else {
            return Ok(());
        };
        report.send(StartReport::Ready(Ok(journal.recovered_fingerprints())));
        drop(report);
        if wait_phase(&phase, PHASE_SERVE).await != PHASE_SERVE {
            drop(journal);
            return store.close_clean().map_err(|source| ServerError::Engine {
                core: index,
                source,
            });
        }
        let recovered_batches =
            Arc::clone(recovered_batches.get().expect("set before the serve phase"));
        let (main_listener, shard_listener, resp_listener) = listeners;
        // SAFETY: each fd comes from a listening socket we bound and own; `into_raw_fd`
        // gives up that ownership, so glommio's listener becomes its only owner.
        let main_listener =
            unsafe { glommio::net::TcpListener::from_raw_fd(main_listener.into_raw_fd()) };
        // SAFETY: as above.
        let shard_listener =
            unsafe { glommio::net::TcpListener::from_raw_fd(shard_listener.into_raw_fd()) };
        let resp_listener = resp_listener.map(|listener| {
            // SAFETY: as above.
            unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) }
        });
        let setup = CoreSetup {
            index,
            config,
            hello,
            store,
            requests,
            replies,
            main_listener,
            shard_listener,
            resp_listener,
            resp_shared,
            journal,
            recovered_batches,
            connections_open,
            shutdown,
            drain,
            serve: serving.load(Ordering::Acquire),
        };
        let (store, journal_failed) = core::run(setup).await;
        if journal_failed {
            // The store holds mutations whose records never reached the disk (answered
            // `Unavailable`). Closed clean, the next start would keep them; left
            // unclean, it restores the last checkpoint and replays the journal: exactly
            // what was made durable.
            tracing::warn!(
                core = index,
                "the journal failed: the store is left unclean, so the next start recovers \
                 from the checkpoint and the journal"
            );
            // Not a clean stop: the exit status says so (the data on disk is intact).
            return Err(ServerError::CoreFailed {
                core: index,
                message: "its journal failed while serving, so it made no final checkpoint \
                          and left its store unclean; the next start recovers what was \
                          durable from the checkpoint and the journal"
                    .to_string(),
            });
        }
        tracing::info!(core = index, "closing the store");
        store.close_clean().map_err(|source| ServerError::Engine {
            core: index,
            source,
        })
    });
    spawned.map_err(|error| ServerError::Executor {
        core: index,
        message: error.to_string(),
    })
}

/// The CPUs this process may run on (its affinity mask, as `taskset` or a container
/// sets it), in increasing order, never empty. Core `i` is pinned to the CPU at `i`
/// modulo their count, so with more cores than these, several cores share a CPU (and
/// `tallyd` refuses that). If the mask cannot be read: CPUs `0..available_parallelism`.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data, all zeros being the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the kernel writes at most `size` bytes into `set`, which is that large.
    let result = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    let cpus: Vec<usize> = if result == 0 {
        let cpu_count_max = usize::try_from(libc::CPU_SETSIZE).expect("a positive constant");
        // SAFETY: every index is below CPU_SETSIZE, inside the set.
        (0..cpu_count_max)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..count).collect();
    }
    cpus
}

/// The two meshes a core joins, and what joining gives.
type Meshes = (
    MeshBuilder<MeshRequest, glommio::channels::channel_mesh::Full>,
    MeshBuilder<MeshReply, glommio::channels::channel_mesh::Full>,
);
type Joined = (
    (Senders<MeshRequest>, Receivers<MeshRequest>),
    (Senders<MeshReply>, Receivers<MeshReply>),
);

/// Waits for the go-ahead, then joins both meshes; `None` (reported) if start-up was
/// aborted meanwhile or joining failed.
///
/// Joining waits for every peer, through glommio shared channels whose connection and
/// wake-ups cross threads; the abort watch runs beside it and ticks every millisecond,
/// so this executor never parks for good while joining (a wake-up lost between two
/// executors costs a millisecond, not a hang) and a start given up elsewhere ends it.
async fn join_meshes(meshes: Meshes, phase: &AtomicU8, report: &CoreReport) -> Option<Joined> {
    if wait_phase(phase, PHASE_JOIN_MESH).await != PHASE_JOIN_MESH {
        return None;
    }
    let (request_mesh, reply_mesh) = meshes;
    let join = async {
        let requests = request_mesh.join().await;
        let replies = reply_mesh.join().await;
        Some((requests, replies))
    };
    let aborted = async {
        wait_phase(phase, PHASE_ABORT).await;
        None
    };
    match futures_lite::future::or(join, aborted).await {
        Some((Ok(requests), Ok(replies))) => Some((requests, replies)),
        Some(_) => {
            let message = "could not join the channel mesh".to_string();
            report.fail(ServerError::CoreFailed {
                core: report.core,
                message,
            });
            None
        }
        None => None,
    }
}

/// Opens this core's store and recovers its journal; `None` (reported) on failure.
fn recover_core(
    config: &ServerConfig,
    dir: &DataDir,
    report: &CoreReport,
) -> Option<(Store, CoreJournal)> {
    let index = report.core;
    let owned = (0..dir.partition_count())
        .filter(|p| router::owner_of_partition(*p, config.cores) == index);
    let mut store = match Store::open(dir, owned) {
        Ok(store) => store,
        Err(source) => {
            report.fail(ServerError::Engine {
                core: index,
                source,
            });
            return None;
        }
    };
    let core_id = u32::try_from(index).expect("cores fit in u32");
    match CoreJournal::start(config, dir.path(), &mut store, core_id) {
        Ok(journal) => Some((store, journal)),
        Err(source) => {
            report.fail(ServerError::Journal {
                core: index,
                source,
            });
            None
        }
    }
}

/// Waits until the start-up phase reaches `wanted` or aborts; returns the phase seen.
async fn wait_phase(phase: &AtomicU8, wanted: u8) -> u8 {
    loop {
        let seen = phase.load(Ordering::Acquire);
        if seen == wanted || seen == PHASE_ABORT {
            return seen;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Binds one listener per core on the same address (SO_REUSEPORT), after checking
/// that no other process listens there (SO_REUSEPORT would otherwise silently share).
/// Used for the main port and the Redis door.
/// Every listening socket of a server, per core.
struct Listeners {
    main: (Vec<std::net::TcpListener>, SocketAddr),
    resp: (Vec<Option<std::net::TcpListener>>, Option<SocketAddr>),
    shards: (Vec<std::net::TcpListener>, Vec<SocketAddr>),
}

/// How long a start waits for what a server killed a moment ago may still hold
/// (`kill -9`, then an immediate restart by a supervisor): its data directory's lock
/// until its exit completes, its ports a few milliseconds longer while the kernel
/// tears its io_uring down. And how often it tries meanwhile.
const KILLED_SERVER_GRACE: Duration = Duration::from_secs(2);
const KILLED_SERVER_POLL: Duration = Duration::from_millis(20);

/// Runs `attempt` until it succeeds, fails in a way `held` does not call "still held",
/// or [`KILLED_SERVER_GRACE`] has passed; the last result. Logs `what` once if it
/// waits.
pub(crate) fn wait_for_killed_server<T, E: std::fmt::Display>(
    what: &str,
    mut attempt: impl FnMut() -> Result<T, E>,
    held: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let started = Instant::now();
    let mut logged = false;
    loop {
        match attempt() {
            Err(error) if held(&error) && started.elapsed() < KILLED_SERVER_GRACE => {
                if !logged {
                    logged = true;
                    tracing::warn!(%error, "{what} is held; retrying for up to 2 s (a server \
                                            killed just now may still hold it)");
                }
                std::thread::sleep(KILLED_SERVER_POLL);
            }
            result => return result,
        }
    }
}

/// [`bind_all`], tried again while an address is in use ([`wait_for_killed_server`]).
fn bind_retrying(config: &ServerConfig) -> Result<Listeners, ServerError> {
    let in_use = |error: &ServerError| {
        matches!(error, ServerError::Listen { source, .. }
            if source.kind() == std::io::ErrorKind::AddrInUse)
    };
    wait_for_killed_server("an address", || bind_all(config), in_use)
}

/// Binds the main port (one reuse-port listener per core), the Redis door's if
/// configured, and each core's shard port.
fn bind_all(config: &ServerConfig) -> Result<Listeners, ServerError> {
    let (main_listeners, listen_addr) = bind_main(config.listen, config.cores)?;
    let resp = match config.resp_listen {
        Some(addr) => {
            let (listeners, addr) = bind_main(addr, config.cores)?;
            (listeners.into_iter().map(Some).collect(), Some(addr))
        }
        None => ((0..config.cores).map(|_| None).collect(), None),
    };
    let shards = bind_shards(config, listen_addr.port())?;
    Ok(Listeners {
        main: (main_listeners, listen_addr),
        resp,
        shards,
    })
}

fn bind_main(
    wanted: SocketAddr,
    cores: usize,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), ServerError> {
    if wanted.port() != 0 {
        // A plain bind fails if anyone else holds the port, reuse-port or not.
        let probe = new_socket(wanted, false)?;
        probe
            .bind(&wanted.into())
            .map_err(|source| ServerError::Listen {
                action: "bind",
                addr: wanted,
                source,
            })?;
    }
    let mut listeners = Vec::with_capacity(cores);
    let mut addr = wanted;
    for _ in 0..cores {
        let listener = listen(addr, true)?;
        addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                action: "read the address of",
                addr,
                source,
            })?;
        listeners.push(listener);
    }
    Ok((listeners, addr))
}

/// Binds each core's shard listener (one socket per port, no SO_REUSEPORT).
fn bind_shards(
    config: &ServerConfig,
    main_port: u16,
) -> Result<(Vec<std::net::TcpListener>, Vec<SocketAddr>), ServerError> {
    let mut listeners = Vec::with_capacity(config.cores);
    let mut addrs = Vec::with_capacity(config.cores);
    for core in 0..config.cores {
        let addr = config.shard_addr(core, main_port);
        let listener = listen(addr, false)?;
        let bound = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                action: "read the address of",
                addr,
                source,
            })?;
        listeners.push(listener);
        addrs.push(bound);
    }
    Ok((listeners, addrs))
}

fn new_socket(addr: SocketAddr, reuse_port: bool) -> Result<Socket, ServerError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|source| ServerError::Listen {
            action: "create a socket for",
            addr,
            source,
        })?;
    // SO_REUSEADDR: restart at once even with connections in TIME_WAIT.
    socket
        .set_reuse_address(true)
        .and_then(|()| socket.set_reuse_port(reuse_port))
        .map_err(|source| ServerError::Listen {
            action: "set socket options for",
            addr,
            source,
        })?;
    Ok(socket)
}

fn listen(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, ServerError> {
    let socket = new_socket(addr, reuse_port)?;
    socket
        .bind(&addr.into())
        .map_err(|source| ServerError::Listen {
            action: "bind",
            addr,
            source,
        })?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|source| ServerError::Listen {
            action: "listen on",
            addr,
            source,
        })?;
    // Kept as a std listener until its core converts it, so a failed start closes
    // every socket on drop.
    Ok(std::net::TcpListener::from(socket))
}

/// A random id per server process, so clients notice a restart.
fn server_id() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
