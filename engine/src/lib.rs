//! Tally's counter engine: counters in memory and on disk.
//!
//! A data directory holds a fixed number of partitions, chosen when it is created and
//! recorded in it. A key belongs to partition `xxh3_64(key) % partition_count`. Each
//! partition is owned by one thread at a time and touched by that thread alone; the
//! engine API is synchronous and takes `&mut self`, so no locks or atomics sit on the
//! data path.
//!
//! The journal (write-ahead log, one per core) lives in [`journal`].

pub mod error;
pub mod journal;
pub mod op;

pub use error::{EngineError, OpError};
pub use op::{BoundPolicy, Op, OpResult, Outcome};
