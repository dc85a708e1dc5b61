//! The one error type of the native client.
//!
//! [`ClientError::is_transient`] tells the errors after which the connection is gone
//! (reset, closed, timed out, closed with a parting `Error` of request id 0): only those
//! are retried, and a mutation only when it carries
//! an idempotency key, so a retry never counts twice.

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
    /// Opening a TCP connection failed (refused, unreachable, timed out).
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
    /// The operation was refused (bound, overflow, ...); the counter is unchanged.
    #[error(transparent)]
    Rejected(#[from] Rejection),
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
    /// Whether the connection was lost (or timed out): the request may or may not have
    /// been applied, and resending it is safe only with an idempotency key.
    /// A refused reconnect counts too: nothing was sent on it. A parting error counts
    /// when a new connection may fare better (timeout, busy, shutting down), not when the
    /// same bytes would be refused again (a frame too large, an unsupported version).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io { .. }
            | ClientError::Closed { .. }
            | ClientError::Timeout { .. }
            | ClientError::ShardMapChanged { .. } => true,
            ClientError::Disconnected { code, .. } => matches!(
                code,
                ErrorCode::Timeout | ErrorCode::ServerBusy | ErrorCode::ShuttingDown
            ),
            _ => false,
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
            ClientError::NoSuchConnection { index, count } => ClientError::NoSuchConnection {
                index: *index,
                count: *count,
            },
        }
    }
}
