//! Client settings: timeouts, the spin budget, retries and the default durability.
//!
//! Limits: at most [`RETRIES_MAX`] retries per call; a spin of at most [`SPIN_MAX`];
//! timeouts must be positive.

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
    /// Limit on waiting for a reply once a request is sent.
    pub read_timeout: Duration,
    /// Limit on the server accepting a request's bytes.
    pub write_timeout: Duration,
    /// How long a read busy-polls the socket before parking the thread (the blocking
    /// client spins in `read`; the async client's connection task polls and yields to
    /// the runtime). Waking a parked thread costs ~100 µs on a small VM, so spinning a
    /// little first keeps the round trip's p99 low; zero never spins.
    pub spin: Duration,
    /// How many times a call is resent after a lost connection or timeout. With retries,
    /// every mutating call carries a random idempotency key so the server applies it
    /// once; with 0, no keys are sent and nothing is resent.
    pub retries: u32,
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
