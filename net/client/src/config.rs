//! Client settings: timeouts, the spin budget, retries, automatic idempotency keys and the
//! default durability.
//!
//! Limits: at most [`RETRIES_MAX`] retries per call; a spin of at most [`SPIN_MAX`];
//! timeouts must be positive.
//!
//! Timeouts, from the outside in: a call (one `incr`, one batch, one pipeline) ends by
//! its deadline, [`ClientConfig::call_timeout`] after it started, whatever happens;
//! within it each attempt opens a connection if needed (at most `connect_timeout`),
//! sends (`write_timeout`) and waits for the reply (at most `read_timeout`, and never
//! past the deadline). Worked example with the defaults (10 s deadline, 5 s read
//! timeout, 2 retries): a server that stops answering a read costs an attempt 5 s, the
//! resend another 5 s, and the call ends at 10 s with an error (a mutation is resent
//! only with an idempotency key: without one it ends after the first 5 s with
//! `OutcomeUnknown`); a server that restarts
//! in 3 s costs the call a few refused connects, retried with backoff (5 ms doubling to
//! 500 ms), and it succeeds once the server is back.

use std::time::Duration;

use tally_protocol::Durability;

use crate::error::ClientError;

/// The most times one call may be resent after a lost connection.
pub const RETRIES_MAX: u32 = 10;

/// The longest spin before parking: past a few hundred microseconds spinning only burns
/// a core a parked thread would have left to others.
pub const SPIN_MAX: Duration = Duration::from_millis(10);

/// How a client connects, waits and retries.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Sent in the hello, shown in the server's logs (at most 255 bytes).
    pub client_name: String,
    /// Limit on opening each TCP connection.
    pub connect_timeout: Duration,
    /// Limit on waiting for a reply once a request is sent, per attempt: a call that
    /// resends its request after a lost connection or a timeout waits again, up to
    /// `call_timeout` in all.
    pub read_timeout: Duration,
    /// Limit on the server accepting a request's bytes.
    pub write_timeout: Duration,
    /// How long a read busy-polls the socket before parking the thread (the blocking
    /// client spins in `read`; the async client's connection task polls and yields to
    /// the runtime). Waking a parked thread costs ~100 µs on a small VM, so spinning a
    /// little first keeps the round trip's p99 low; zero never spins.
    pub spin: Duration,
    /// How many times a request that may have reached the server is resent after a lost
    /// connection or a timeout: a read always; a mutation only if it carries an
    /// idempotency key (the caller's, from a `*_idempotent` call, or an automatic one, see
    /// [`ClientConfig::auto_idempotency_keys`]), so the server applies it once. A
    /// mutation without a key is never resent once it may have reached the server: the
    /// call ends with `ClientError::OutcomeUnknown`. Two other waits are retried until the
    /// call's deadline without counting against this: a connect that fails (refused,
    /// unreachable, timed out: nothing was sent on it), and the server's `ServerBusy`
    /// answer to a resend whose first copy is still running (the same request is sent
    /// again with its key until the first copy's results come back). With 0, each call
    /// makes one attempt.
    pub retries: u32,
    /// Give every mutating frame without a caller's key a random idempotency key of the
    /// client's own (with `retries` above 0), so a mutation, too, is resent after a lost
    /// connection or a timeout and the server still applies it once. Off by default: each
    /// automatic key costs the server memory for its whole idempotency window (600 s by
    /// default) although the client resends only within `call_timeout`, and a core holds
    /// at most `tallyd --idempotency-max-keys` keys (1,000,000) and
    /// `--idempotency-max-reply-bytes` of their results, so sustained keyed writes are
    /// capped at about max keys / window seconds per core (1,000,000 / 600 s, about
    /// 1,667 frames a second at the server's defaults; batches also by the result
    /// bytes). Past the cap the server refuses every new key with `NotApplied` until keys
    /// leave the window, plain writes included. Turn it on only when the write rate
    /// stays well under that cap; for exactly-once counting use the `*_idempotent` calls
    /// with keys of your own (crate docs, "Counting exactly once"), which cost the same
    /// per key but only where you need them. The client draws each automatic key so that
    /// the server keeps it on the core the frame is sent to (no cross-core hop).
    pub auto_idempotency_keys: bool,
    /// The deadline of a call, from its start to its result, retries and backoff
    /// included (see the module docs). A call that runs out of it after sending a change
    /// ends with `ClientError::OutcomeUnknown`. Latency-critical callers set it to what
    /// they can wait (and `read_timeout` at most that). The async client starts the
    /// clock when the call is made, so time queued behind other calls counts.
    pub call_timeout: Duration,
    /// The durability of calls that do not name one.
    pub durability: Durability,
    /// Connect to each core's shard port and route keys to their owner (the default).
    /// When false, everything goes through the main connection and the server forwards.
    pub shard_aware: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: format!("tally-client/{}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            spin: Duration::from_micros(75),
            retries: 2,
            auto_idempotency_keys: false,
            call_timeout: Duration::from_secs(10),
            durability: Durability::ServerDefault,
            shard_aware: true,
        }
    }
}

impl ClientConfig {
    /// Checks every value is in range.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |reason: &str| Err(ClientError::InvalidConfig(reason.to_owned()));
        if self.client_name.len() > 255 {
            return invalid("client_name is over 255 bytes");
        }
        if self.connect_timeout.is_zero()
            || self.read_timeout.is_zero()
            || self.write_timeout.is_zero()
            || self.call_timeout.is_zero()
        {
            return invalid("timeouts must be positive");
        }
        if self.spin > SPIN_MAX {
            return invalid("spin is over SPIN_MAX (10 ms)");
        }
        if self.retries > RETRIES_MAX {
            return invalid("retries is over RETRIES_MAX (10)");
        }
        Ok(())
    }
}
