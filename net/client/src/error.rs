//! The one error type of the native client.
//!
//! [`ClientError::is_transient`] tells the errors after which the connection is gone
//! (reset, closed, timed out, closed with a parting `Error` of request id 0): only those
//! are retried, and a mutation only when it carries
//! an idempotency key, so a retry never counts twice.
//!
//! What an error says about the call's effect: [`ClientError::OutcomeUnknown`] says a
//! change may have been applied; [`ClientError::Server`] and [`ClientError::Rejected`]
//! say the server refused (nothing applied); errors raised before anything was sent
//! (`Resolve`, `Connect`, `InvalidKey`, `Encode`, `InvalidConfig`, `NoSuchConnection`)
//! say nothing was applied. The other variants, returned by a call that changes nothing
//! (a read, `ping`, `stats`), only say why it failed: a call that changes counters and
//! may have reached the server never ends with them, it ends with `OutcomeUnknown`.

use std::net::SocketAddr;

use tally_protocol::{ErrorCode, ProtocolError};

use crate::outcome::Rejection;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address did not resolve to any socket address.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    /// Opening a TCP connection failed (refused, unreachable, timed out). Nothing of the
    /// call was sent: a call that had sent a change before ends with
    /// [`ClientError::OutcomeUnknown`] instead.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Reading or writing an open connection failed.
    #[error("{action} {addr}: {source}")]
    Io {
        action: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The server closed the connection.
    #[error("connection to {addr} closed by the server")]
    Closed { addr: SocketAddr },
    /// No reply (or no progress writing) within the configured timeout.
    #[error("timed out {action} {addr}")]
    Timeout {
        action: &'static str,
        addr: SocketAddr,
    },
    /// The server sent bytes that do not decode, or a reply that does not match.
    #[error("protocol error from {addr}: {source}")]
    Protocol {
        addr: SocketAddr,
        source: ProtocolError,
    },
    /// The server sent a well-formed reply that is not the one expected.
    #[error("unexpected reply from {addr}: {reason}")]
    UnexpectedReply { addr: SocketAddr, reason: String },
    /// The server closed the connection after a parting `Error` frame with request id 0
    /// (an idle or slow connection timed out, the connection limit was reached, the server
    /// is shutting down, a frame could not be framed). Requests still unanswered on that
    /// connection may or may not have been applied.
    #[error("connection to {addr} closed by the server ({code:?}): {message}")]
    Disconnected {
        addr: SocketAddr,
        code: ErrorCode,
        message: String,
    },
    /// A reconnect found a different shard map (the server restarted with other cores
    /// or partitions); the client has adopted it and dropped its other connections.
    /// Requests still unanswered on them may or may not have been applied.
    #[error("the shard map of {addr} changed; routes were rebuilt")]
    ShardMapChanged { addr: SocketAddr },
    /// The server refused the whole request (`Error` reply).
    #[error("server refused the request ({code:?}): {message}")]
    Server { code: ErrorCode, message: String },
    /// The operation was refused (bound, overflow, ...); the counter is unchanged. (A
    /// `Status::Unavailable` answer, whose outcome is unknown, is
    /// [`ClientError::OutcomeUnknown`] instead.)
    #[error(transparent)]
    Rejected(Rejection),
    /// The call may or may not have been applied: a request that changes counters was
    /// sent (or partly sent) and no answer to it came back before retries or the call's
    /// deadline ran out (the connection was lost, the reply timed out, the server went
    /// away and a reconnect was refused), or part of a batch was applied while another
    /// part failed, or the server answered `Status::Unavailable` (applied in memory, maybe
    /// not journaled). `cause` is the last error seen. Never read it as "not applied":
    /// do not simply repeat the call (it would count again). A call made with an
    /// idempotency key can be repeated with the same key: the server then applies only
    /// what the first attempt did not, and answers `Unavailable` again until it knows
    /// (PROTOCOL.md, "Idempotency"). Without a key, read the counter to find out.
    #[error("outcome unknown, the request may have been applied: {cause}")]
    OutcomeUnknown {
        #[source]
        cause: Box<ClientError>,
    },
    /// A key outside 1..=255 bytes, refused before sending.
    #[error("invalid key: length {length} is outside 1..=255 bytes")]
    InvalidKey { length: usize },
    /// A value the client cannot encode (client name too long, ...).
    #[error("cannot encode request: {0}")]
    Encode(ProtocolError),
    /// The shard connections disagree with the main connection's shard map.
    #[error("handshake with {addr} failed: {reason}")]
    Handshake { addr: SocketAddr, reason: String },
    /// A configuration value is out of range.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// The async client's connection task has stopped (its runtime is shutting down).
    #[error("the client's connection task has stopped")]
    TaskStopped,
    /// A connection index outside `0..count` (the shard map may have shrunk since
    /// `connection_count()` was read); nothing was sent.
    #[error("no connection {index}: the client has {count}")]
    NoSuchConnection { index: usize, count: usize },
}

impl ClientError {
    /// Whether trying again later may succeed: the connection was lost or timed out, a
    /// connect was refused, or the outcome is unknown. After such an error a request that
    /// changes counters may or may not have been applied (unless nothing was sent:
    /// `Connect` from a call that sent nothing), and resending it is safe only with the
    /// same idempotency key, which the client does itself within
    /// [`crate::ClientConfig::retries`] and the call's deadline. A parting error counts
    /// when a new connection may fare better (timeout, busy, shutting down), not when the
    /// same bytes would be refused again (a frame too large, an unsupported version).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Closed { .. }
            | ClientError::Timeout { .. }
            | ClientError::ShardMapChanged { .. }
            | ClientError::OutcomeUnknown { .. } => true,
            ClientError::Disconnected { code, .. } => matches!(
                code,
                ErrorCode::Timeout | ErrorCode::ServerBusy | ErrorCode::ShuttingDown
            ),
            _ => false,
        }
    }

    /// Whether this is the server's answer to the request itself, refusing it: nothing of
    /// that request was applied. (A `ServerBusy` answer is not: it refuses a retry while
    /// the first copy is still running.)
    pub(crate) fn is_definitive(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => *code != ErrorCode::ServerBusy,
            ClientError::Rejected(_)
            | ClientError::InvalidKey { .. }
            | ClientError::Encode(_)
            | ClientError::NoSuchConnection { .. } => true,
            _ => false,
        }
    }

    /// Whether the server answered `ServerBusy` to the request: for a request with an
    /// idempotency key, "a request with this key is still running; retry" (the first
    /// copy was applied or is being applied).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(
            self,
            ClientError::Server {
                code: ErrorCode::ServerBusy,
                ..
            }
        )
    }

    /// This error as the end of a call in which a change may have been applied
    /// (`maybe_applied`): then [`ClientError::OutcomeUnknown`], unless it is already.
    pub(crate) fn settle(self, maybe_applied: bool) -> ClientError {
        match self {
            ClientError::OutcomeUnknown { .. } => self,
            cause if maybe_applied => ClientError::OutcomeUnknown {
                cause: Box::new(cause),
            },
            other => other,
        }
    }

    /// Whether the connection that raised this error can no longer be used.
    pub(crate) fn breaks_connection(&self) -> bool {
        !matches!(
            self,
            ClientError::Rejected(_) | ClientError::InvalidKey { .. } | ClientError::Encode(_)
        )
    }
}

/// A refused operation; `Status::Unavailable`, whose outcome is unknown, becomes
/// [`ClientError::OutcomeUnknown`].
impl From<Rejection> for ClientError {
    fn from(rejection: Rejection) -> Self {
        let rejected = ClientError::Rejected(rejection);
        let maybe_applied = rejection.is_outcome_unknown();
        rejected.settle(maybe_applied)
    }
}

impl ClientError {
    /// A copy of this error for each of several callers that share one failure (the
    /// async client fails every call waiting on a lost connection). I/O errors keep their
    /// kind and message.
    #[cfg(feature = "tokio")]
    pub(crate) fn replicate(&self) -> ClientError {
        match self {
            ClientError::Connect { addr, source } => ClientError::Connect {
                addr: *addr,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            ClientError::Io {
                action,
                addr,
                source,
            } => ClientError::Io {
                action,
                addr: *addr,
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            ClientError::Closed { addr } => ClientError::Closed { addr: *addr },
            ClientError::Timeout { action, addr } => ClientError::Timeout {
                action,
                addr: *addr,
            },
            ClientError::Protocol { addr, source } => ClientError::Protocol {
                addr: *addr,
                source: source.clone(),
            },
            ClientError::Disconnected {
                addr,
                code,
                message,
            } => ClientError::Disconnected {
                addr: *addr,
                code: *code,
                message: message.clone(),
            },
            ClientError::ShardMapChanged { addr } => ClientError::ShardMapChanged { addr: *addr },
            ClientError::Server { code, message } => ClientError::Server {
                code: *code,
                message: message.clone(),
            },
            ClientError::Rejected(rejection) => ClientError::Rejected(*rejection),
            ClientError::InvalidKey { length } => ClientError::InvalidKey { length: *length },
            ClientError::Encode(error) => ClientError::Encode(error.clone()),
            ClientError::Handshake { addr, reason } => ClientError::Handshake {
                addr: *addr,
                reason: reason.clone(),
            },
            ClientError::UnexpectedReply { addr, reason } => ClientError::UnexpectedReply {
                addr: *addr,
                reason: reason.clone(),
            },
            ClientError::Resolve { addr, reason } => ClientError::Resolve {
                addr: addr.clone(),
                reason: reason.clone(),
            },
            ClientError::InvalidConfig(reason) => ClientError::InvalidConfig(reason.clone()),
            ClientError::TaskStopped => ClientError::TaskStopped,
            ClientError::OutcomeUnknown { cause } => ClientError::OutcomeUnknown {
                cause: Box::new(cause.replicate()),
            },
            ClientError::NoSuchConnection { index, count } => ClientError::NoSuchConnection {
                index: *index,
                count: *count,
            },
        }
    }
}
