//! Errors of the server: what can stop it from starting or make it stop.
//!
//! Errors of one connection (bad frames, timeouts, a peer gone) never reach this type:
//! they end that connection with a log line and the server carries on.

use std::net::SocketAddr;

/// Why the server could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A listening socket could not be created, bound or listened on.
    #[error("{action} {addr}: {source}")]
    Listen {
        action: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The data directory or a core's store could not be opened or closed.
    #[error("core {core}: {source}")]
    Engine {
        core: usize,
        source: tally_engine::EngineError,
    },
    /// A core's recovery, journal or checkpoint failed (the message names the file).
    #[error("core {core}: journal: {source}")]
    Journal {
        core: usize,
        source: tally_engine::journal::JournalError,
    },
    /// The data directory could not be opened or created (the engine's error names the
    /// directory or the file, so nothing is prefixed).
    #[error(transparent)]
    DataDir(tally_engine::EngineError),
    /// Another server holds the data directory's lock.
    #[error("data directory {} is in use by another tallyd ({holder}); stop it first", path.display())]
    DataDirInUse {
        path: std::path::PathBuf,
        holder: String,
    },
    /// A file operation on the data directory failed.
    #[error("{action} {}: {source}", path.display())]
    DataDirIo {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The data directory's core layout file is unreadable.
    #[error("{}: {message}", path.display())]
    Layout {
        path: std::path::PathBuf,
        message: String,
    },
    /// An executor could not be created (often: too little locked memory).
    #[error("core {core}: could not start its executor: {message} (glommio needs locked memory: see `ulimit -l` and --io-memory-bytes)")]
    Executor { core: usize, message: String },
    /// Installing the SIGINT/SIGTERM handlers failed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// A core thread panicked or ended without reporting.
    #[error("core {core} failed: {message}")]
    CoreFailed { core: usize, message: String },
    /// A core did not finish a start-up stage in time.
    #[error("start-up stuck: core {core} still {stage} after {seconds} s")]
    StartStuck {
        core: usize,
        stage: &'static str,
        seconds: u64,
    },
}
