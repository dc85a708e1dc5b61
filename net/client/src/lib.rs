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
//! Retries within a call are safe: with `retries > 0` (the default) every mutating call
//! carries a random 128-bit idempotency key, and after a lost connection or a timeout the
//! call is resent with the same key, which the server applies at most once. Reads are
//! resent freely. A connect that fails (the server restarting) is tried again with
//! backoff, and a resend that the server answers `ServerBusy` (its first copy still
//! running) is sent again until that copy's results come back; all of it within the
//! call's deadline ([`ClientConfig::call_timeout`]). Nothing else is retried. A call that
//! changes counters and may have been applied without its answer reaching the client
//! fails with [`ClientError::OutcomeUnknown`], never with an error that reads "not
//! applied". A new key the server refuses because its idempotency memory is full, or a
//! mutation its journal cannot take now, fails at once with [`ClientError::NotApplied`]:
//! nothing was applied, call again later.
//!
//! # Counting exactly once
//!
//! The key a plain call (`incr`, `batch`, ...) makes is gone when the call returns, so
//! after [`ClientError::OutcomeUnknown`] calling again counts twice if the first call was
//! applied, and not calling again loses it if it was not. To count exactly once, make
//! the key yourself and call with it: [`Client::batch_idempotent`],
//! [`Client::execute_idempotent`], [`Client::incr_idempotent`],
//! [`Client::decr_idempotent`] (the same on `AsyncClient`). Make the key once per
//! logical change with [`random_idempotency_key`] and keep it with the change; after
//! `OutcomeUnknown` or `NotApplied` (or any error [`ClientError::is_transient`] calls
//! transient) call again with the same key and the same operations, in the same order.
//! The server applies a key's request at most once within its idempotency window (10
//! minutes by default, `tallyd --idempotency-window-s`, across restarts too) and answers
//! repeats with the first application's results. Another request under a used key is
//! refused (`IdempotencyKeyReused`). [`ClientError::is_transient`] is false for
//! `OutcomeUnknown`, so a generic "retry if transient" loop, which repeats with a new
//! key, never repeats a call that may have been applied. `examples/likes.rs` is an exact
//! likes counter built this way, runnable and tested:
//!
//! ```no_run
//! use tally_client::{random_idempotency_key, Client, ClientError};
//!
//! /// Counts one like of `post` exactly once, trying up to 5 times; returns the count.
//! fn like(client: &mut Client, post: &str) -> Result<i64, ClientError> {
//!     // One key per like, made once: every attempt below sends the same one.
//!     let idempotency_key = random_idempotency_key();
//!     let mut attempt = 1;
//!     loop {
//!         match client.incr_idempotent(post, 1, idempotency_key) {
//!             Ok(count) => return Ok(count),
//!             // May have been applied, or was not applied for now: with the same key
//!             // the server counts it once whatever happened to earlier attempts.
//!             Err(error)
//!                 if attempt < 5
//!                     && (matches!(error, ClientError::OutcomeUnknown { .. })
//!                         || error.is_transient()) =>
//!             {
//!                 attempt += 1;
//!                 std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
//!             }
//!             // Still failing: keep (post, idempotency_key) and send it again later,
//!             // inside the server's idempotency window; never under a new key.
//!             Err(error) => return Err(error),
//!         }
//!     }
//! }
//!
//! let mut client = Client::connect("127.0.0.1:7878")?;
//! println!("likes: {}", like(&mut client, "likes:post:1")?);
//! # Ok::<(), ClientError>(())
//! ```
//!
//! A request under a caller's key is one frame (at most `BATCH_OPS_MAX` operations), sent
//! to the core that owns its first operation's key; the server forwards the other
//! operations to their cores, which apply them in turn, not atomically together, but
//! each once under the key.
//!
//! # Connections and timeouts
//!
//! An `Error` frame with request id 0 is the server closing the
//! connection (idle timeout, connection limit, shutdown), reported as
//! [`ClientError::Disconnected`] and handled as a lost connection; a connection the server
//! closed while idle is noticed before the next call is sent on it, so that call goes out
//! on a new connection. A reconnect that finds a new shard map re-routes; a shard port
//! that refuses connections (a server restarted with fewer cores) sends the client to the
//! main address, which brings the new map, or, if the map is the same, serves that core's
//! keys by forwarding them.
//!
//! A call ends by its deadline, [`ClientConfig::call_timeout`] after it began,
//! retries included; within it each attempt waits for its reply at most
//! [`ClientConfig::read_timeout`] (see [`ClientConfig`]). A call that ran out of time is
//! not withdrawn: the server may still apply what reached it, which is why such a call
//! that changes counters ends with [`ClientError::OutcomeUnknown`]. For the same reason,
//! dropping an `AsyncClient` call's future (for example in `tokio::time::timeout`) does
//! not cancel a call already sent; use `call_timeout` to bound a call instead.
//!
//! # A rate limiter
//!
//! Allow at most 100 requests per user per minute, never going over even
//! under concurrency, by letting the server enforce a ceiling. `examples/rate_limiter.rs`
//! is the same limiter, runnable and tested.
//!
//! ```no_run
//! use tally_client::{BoundPolicy, Client, ClientError, Op, Status};
//!
//! const LIMIT: i64 = 100;
//!
//! /// Counts one request of `user` in minute `minute`; true if it is within the limit.
//! fn allow(client: &mut Client, user: &str, minute: u64) -> Result<bool, ClientError> {
//!     let key = format!("rate:{user}:{minute}");
//!     // Every call sets the ceiling and adds, in one frame to the key's core: the first
//!     // call of a minute creates the counter with its bounds, later ones find them.
//!     let ops = [
//!         Op::SetBounds { key: key.as_bytes(), floor: Some(0), ceiling: Some(LIMIT) },
//!         Op::Add { key: key.as_bytes(), delta: 1, policy: BoundPolicy::Reject },
//!     ];
//!     let results = client.batch(&ops)?;
//!     // Tally has no expiry: the call that created this minute's counter deletes the
//!     // previous minute's, so each user keeps at most two keys.
//!     if !results[0]?.existed && minute > 0 {
//!         client.del(format!("rate:{user}:{}", minute - 1))?;
//!     }
//!     match results[1] {
//!         Ok(_) => Ok(true),
//!         Err(rejection) if rejection.status == Status::AboveCeiling => Ok(false),
//!         Err(rejection) => Err(rejection.into()),
//!     }
//! }
//!
//! let mut client = Client::connect("127.0.0.1:7878")?;
//! let minute = std::time::SystemTime::now()
//!     .duration_since(std::time::UNIX_EPOCH)
//!     .expect("clock after 1970")
//!     .as_secs()
//!     / 60;
//! let allowed = allow(&mut client, "alice", minute)?;
//! println!("allowed: {allowed}");
//! # Ok::<(), ClientError>(())
//! ```
//!
//! Callers on many machines share one limit as long as their clocks agree (each picks the
//! minute from its own clock; one that is off counts into another minute's key). An error
//! from `allow` may have counted the request ([`ClientError::OutcomeUnknown`]): whether to
//! let such a request through is the caller's choice, but calling `allow` again for it
//! counts it twice (it makes a new key per call; see "Counting exactly once").
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
pub use outcome::{OpResult, Outcome, PartialResult, Rejection, UNAVAILABLE_NOT_APPLIED};
pub use pipeline::Pipeline;
pub use tally_protocol::{BoundPolicy, Durability, ErrorCode, HelloReply, Op, OpRef, Status};
