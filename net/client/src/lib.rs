//! Native, shard-aware client for Tally.
//!
//! The client speaks Tally's binary protocol (`tally-protocol`, see
//! `net/PROTOCOL.md`) and nothing else: it does not pull in the server's runtime.
//! It connects once to the main address to learn the shard map, then keeps one connection
//! per server core and sends each key straight to the core that owns it.
//!
//! - [`Client`]: blocking, std::net. Spins briefly before parking while it waits for a
//!   reply ([`ClientConfig::spin`]), which keeps loopback round trips under 100 µs.
//! - [`Pipeline`] / [`Client::batch`]: many operations, split per core, sent before any
//!   reply is awaited.
//! - `AsyncClient` (feature `tokio`, on by default): concurrent calls from many tasks are
//!   coalesced into batch frames automatically; `AsyncPipeline` collects operations to
//!   send together.
//!
//! Retries are safe: with `retries > 0` (the default) every mutating call carries a random
//! 128-bit idempotency key, and after a lost connection or a timeout the call is resent
//! with the same key, which the server applies at most once. Reads are resent freely.
//! A connect that fails (the server restarting) is tried again with backoff, and a resend
//! that the server answers `ServerBusy` (its first copy still running) is sent again until
//! that copy's results come back; all of it within the call's deadline
//! ([`ClientConfig::call_timeout`]). Nothing else is retried. A call that changes counters
//! and may have been applied without its answer reaching the client fails with
//! [`ClientError::OutcomeUnknown`], never with an error that reads "not applied".
//! An `Error` frame with request id 0 is the server closing the
//! connection (idle timeout, connection limit, shutdown), reported as
//! [`ClientError::Disconnected`] and handled as a lost connection; a connection the server
//! closed while idle is noticed before the next call is sent on it, so that call goes out
//! on a new connection. A reconnect that finds a new shard map re-routes; a shard port
//! that refuses connections (a server restarted with fewer cores) sends the client to the
//! main address, which brings the new map, or, if the map is the same, serves that core's
//! keys by forwarding them.
//!
//! A rate limiter: allow at most 100 requests per user per minute, never going over even
//! under concurrency, by letting the server enforce a ceiling.
//!
//! ```no_run
//! use tally_client::{Client, ClientError, Op};
//! use tally_protocol::{BoundPolicy, Status};
//!
//! fn allow(client: &mut Client, user: &str, minute: u64) -> Result<bool, ClientError> {
//!     let key = format!("rate:{user}:{minute}");
//!     // The first call in a window sets the ceiling; later ones find it already there.
//!     let op = Op::Add { key: key.as_bytes(), delta: 1, policy: BoundPolicy::Reject };
//!     match client.execute(&op) {
//!         Ok(_) => Ok(true),
//!         Err(ClientError::Rejected(rejection)) if rejection.status == Status::AboveCeiling => Ok(false),
//!         Err(error) => Err(error),
//!     }
//! }
//!
//! let mut client = Client::connect("127.0.0.1:7878")?;
//! client.set_bounds("rate:alice:0", Some(0), Some(100))?;
//! let allowed = allow(&mut client, "alice", 0)?;
//! println!("allowed: {allowed}");
//! # Ok::<(), ClientError>(())
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "tokio")]
mod async_client;
#[cfg(feature = "tokio")]
mod async_connection;
#[cfg(feature = "tokio")]
mod async_pipeline;
mod blocking;
mod config;
mod connection;
mod dispatch;
mod error;
mod idempotency;
mod op_list;
mod outcome;
mod pipeline;

#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
#[cfg(feature = "tokio")]
pub use async_pipeline::AsyncPipeline;
pub use blocking::Client;
pub use config::{ClientConfig, RETRIES_MAX, SPIN_MAX};
pub use dispatch::{IN_FLIGHT_FRAMES_MAX, IN_FLIGHT_OPS_MAX};
pub use error::ClientError;
pub use idempotency::random_idempotency_key;
pub use outcome::{OpResult, Outcome, Rejection};
pub use pipeline::Pipeline;
pub use tally_protocol::{BoundPolicy, Durability, ErrorCode, HelloReply, Op, OpRef, Status};
