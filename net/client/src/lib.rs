//! Native, shard-aware client for Tally.
//!
//! The client speaks Tally's binary protocol (`tally-protocol`, see
//! `net/PROTOCOL.md`) and nothing else: it does not pull in the server's runtime.
//! It connects once to the main address to learn the shard map, then keeps one connection
//! per server core and sends each key straight to the core that owns it (a request under
//! a caller's idempotency key may still take a hop inside the server: see `Client`).
//!
//! - [`Client`]: blocking, std::net. Spins briefly before parking while it waits for a
//!   reply ([`ClientConfig::spin`]), which keeps loopback round trips under 100 µs.
//! - [`Pipeline`] / [`Client::batch`]: many operations, split per core, sent before any
//!   reply is awaited.
//! - `AsyncClient` (feature `tokio`, on by default): concurrent calls from many tasks are
//!   coalesced into batch frames automatically; `AsyncPipeline` collects operations to
//!   send together.
//!
//! Retries within a call never count twice. Reads are resent freely after a lost
//! connection or a timeout. A call that changes counters is resent only if it carries an
//! idempotency key, which the server applies at most once: the caller's (the
//! `*_idempotent` calls, see "Counting exactly once"), or, when
//! [`ClientConfig::auto_idempotency_keys`] is on, a random key the client makes for each
//! frame. By default it is off, and a mutation that may have reached the server is never
//! resent: a lost connection or a timeout after it was sent ends the call with
//! [`ClientError::OutcomeUnknown`]. A connect that fails (the server restarting: nothing
//! was sent) is tried again with backoff, and a resend that the server answers
//! `ServerBusy` (its first copy still running) is sent again until that copy's results
//! come back; all of it within the call's deadline ([`ClientConfig::call_timeout`]).
//! Nothing else is retried. A call that changes counters and may have been applied
//! without its answer reaching the client fails with [`ClientError::OutcomeUnknown`],
//! never with an error that reads "not applied". A new key the server refuses because its
//! idempotency memory is full, or a mutation its journal cannot take now, fails at once
//! with [`ClientError::NotApplied`] (the client does not resend it): nothing was applied,
//! call again later.
//!
//! # Automatic idempotency keys: the trade-off
//!
//! Automatic keys make a plain `incr` survive a lost connection without an
//! `OutcomeUnknown`, but each costs the server memory for its whole idempotency window
//! (`tallyd --idempotency-window-s`, 600 s by default), although the client resends only
//! within `call_timeout`. A core holds at most `--idempotency-max-keys` keys (1,000,000
//! by default) and `--idempotency-max-reply-bytes` of their results (64 MiB, about 3
//! bytes per result), and never forgets a key early. So sustained keyed writes are
//! capped per core at `--idempotency-max-keys / --idempotency-window-s` frames a second
//! (about 1,667 at the defaults; the blocking client sends one frame per call and per
//! core of a batch, the async client packs concurrent calls into frames), and batched
//! operations at about 64 MiB / (600 s x 3 B), some 37,000 a second. Past the cap the
//! server refuses every frame with a new key on that core with `NotApplied` until old
//! keys leave the window: an outage for every writer on that core, not only the fast
//! one. Turn automatic keys on only where writes stay well under the cap (or raise the
//! limits: about 200 bytes of server memory per key). The client draws each automatic
//! key so that the server keeps it on the core the frame is sent to, so keyed writes
//! take no cross-core hop. Counting exactly once across failures needs the caller's own
//! keys anyway (a plain call's key is gone when it returns): see below.
//!
//! # Counting exactly once
//!
//! A plain call (`incr`, `batch`, ...) has no key the caller could reuse (an automatic
//! key is gone when the call returns), so after [`ClientError::OutcomeUnknown`] calling
//! again counts twice if the first call was applied, and not calling again loses it if
//! it was not. To count exactly once, make
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
//! [`ClientError::Disconnected`] and handled as a lost connection, with one difference:
//! the server promises it applied none of the requests it left unanswered (PROTOCOL.md,
//! "Closing"), so the client sends them again on a new connection, mutations without an
//! idempotency key included, and a call that cannot do so in time ends with
//! [`ClientError::NotApplied`], never [`ClientError::OutcomeUnknown`]. A connection the
//! server closed while idle is noticed before the next call is sent on it, so that call
//! goes out on a new connection. A reconnect that finds a new shard map re-routes; a shard port
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
//!     // The Add says whether this request was counted. If LIMIT was lowered below the
//!     // minute's count, the SetBounds is refused (OutOfBounds) and the Add runs under
//!     // the old ceiling: judge its value against LIMIT, and never turn the SetBounds
//!     // refusal into an error (`Rejected` reads "counter unchanged").
//!     let allowed = match results[1] {
//!         Ok(outcome) => outcome.value <= LIMIT,
//!         Err(rejection) if rejection.status == Status::AboveCeiling => false,
//!         Err(rejection) => return Err(rejection.into()),
//!     };
//!     // Tally has no expiry: the call that created this minute's counter deletes the
//!     // one of two minutes ago, so each user keeps at most two keys. Not the previous
//!     // minute's: a request that picked it just before the boundary and arrives a
//!     // little late would create it afresh and be let through with LIMIT more.
//!     if matches!(results[0], Ok(outcome) if !outcome.existed) && minute >= 2 {
//!         // A failed delete only leaves a key behind: the verdict stands.
//!         let _ = client.del(format!("rate:{user}:{}", minute - 2));
//!     }
//!     Ok(allowed)
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
//! minute from its own clock; one that is off counts into another minute's key), and as
//! long as a request reaches the server within a minute of picking its minute (keep
//! [`ClientConfig::call_timeout`] well under the window). An error from `allow` may have
//! counted the request ([`ClientError::OutcomeUnknown`]): whether to let such a request
//! through is the caller's choice, but calling `allow` again for it counts it twice (see
//! "Counting exactly once"). A `Rejected` per-operation result converted with `?` says
//! only that operation changed nothing, not the others of the batch.
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
pub use outcome::{Bounds, OpResult, Outcome, PartialResult, Rejection, UNAVAILABLE_NOT_APPLIED};
pub use pipeline::Pipeline;
pub use tally_protocol::{
    Bound, BoundPolicy, Durability, ErrorCode, HelloReply, Op, OpRef, Status,
};
