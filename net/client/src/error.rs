//! The one error type of the native client.
//!
//! What an error says about the call's effect, and what to do next:
//! - [`ClientError::OutcomeUnknown`]: a change may have been applied. Never repeat the
//!   call as it was (it would count again): repeat it only with the same idempotency key,
//!   which needs a call that takes one ([`crate::Client::batch_idempotent`] and the other
//!   `*_idempotent` calls); the crate docs show the procedure.
//! - [`ClientError::PartlyApplied`]: a batch sent as several requests was applied in
//!   part; its per-operation results say which operations were applied (with their
//!   results), which were not (send exactly those again) and which may have been.
//! - [`ClientError::NotApplied`]: the server refused the request before applying any of
//!   it, for a reason that passes (its idempotency memory is full, its journal cannot take
//!   mutations), or closed the connection with its parting word before answering it and
//!   the client could not send it again within the call: try again later, with the same
//!   idempotency key if the call had one.
//! - [`ClientError::Server`] and [`ClientError::Rejected`]: the server refused (nothing
//!   applied), and the same request would be refused again.
//! - Errors raised before anything was sent (`Resolve`, `Connect`, `InvalidKey`,
//!   `Encode`, `InvalidConfig`, `NoSuchConnection`): nothing was applied.
//! - The other variants only say why the call failed. A call that changes counters and
//!   may have reached the server never ends with them, it ends with `OutcomeUnknown`; so
//!   a call that changes counters and ends with one of them (say a `Timeout` "waiting for
//!   the hello reply (the request was not sent)" or "waiting to send": its connection
//!   could not be opened in time, or it was still queued at its deadline) sent nothing
//!   and applied nothing. A call that changes nothing (a read, `ping`, `stats`) may end
//!   with any of them.
//!
//! [`ClientError::is_transient`] tells the errors after which calling again may succeed
//! and is safe: never `OutcomeUnknown`. Within a call, the client itself resends after a
//! lost connection or a timeout, and a mutation only when it carries an idempotency key
//! (the caller's, or an automatic one: `ClientConfig::auto_idempotency_keys`), so a
//! retry never counts twice.

use std::net::SocketAddr;

use tally_protocol::{ErrorCode, ProtocolError};

use crate::outcome::{PartialResult, Rejection};

/// How the server's message starts when it refuses a new idempotency key because the
/// core's idempotency memory is full (`net/server`, `full_message`). The server answers
/// it with `ServerBusy`, the code it also uses for "a request with this key is still
/// running", and the message is all that tells the two apart.
const TABLE_FULL_MESSAGE_PREFIX: &str = "idempotency table full";

/// The error for the server's `Error` reply to a request: [`ClientError::NotApplied`]
/// for the refusal of a new idempotency key while the idempotency memory is full (nothing
/// applied, retry later), else [`ClientError::Server`].
pub(crate) fn server_refusal(code: ErrorCode, message: &str) -> ClientError {
    let refused = ClientError::Server {
        code,
        message: message.to_owned(),
    };
    if is_table_full(code, message) {
        ClientError::NotApplied {
            cause: Box::new(refused),
        }
    } else {
        refused
    }
}

/// Whether an `Error` reply refuses a new idempotency key because the server's
/// idempotency memory is full (PROTOCOL.md, "Idempotency"): nothing was applied.
pub(crate) fn is_table_full(code: ErrorCode, message: &str) -> bool {
    code == ErrorCode::ServerBusy && message.starts_with(TABLE_FULL_MESSAGE_PREFIX)
}

/// What a [`ClientError::Timeout`] says when a new connection's hello got no reply in
/// time: the call's own request was not sent on it, so nothing of it was applied there.
pub(crate) const HELLO_TIMEOUT_ACTION: &str =
    "waiting for the hello reply (the request was not sent) from";

/// A hello's error as the caller sees it: a timeout says the request was not sent, so it
/// is not read as a request sent and unanswered ("waiting for a reply").
pub(crate) fn hello_error(error: ClientError) -> ClientError {
    match error {
        ClientError::Timeout { addr, .. } => ClientError::Timeout {
            action: HELLO_TIMEOUT_ACTION,
            addr,
        },
        other => other,
    }
}

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
    /// No reply (or no progress writing) within the configured timeout. `action` says
    /// where: "waiting for a reply from" a request that was sent, "waiting for the hello
    /// reply (the request was not sent) from" a new connection, "waiting to send to" a
    /// call still queued at its deadline.
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
    /// connection were not applied and never will be (PROTOCOL.md, "Closing"): the client
    /// sends them again on a new connection within the call, and a call that changes
    /// counters and cannot do so ends with [`ClientError::NotApplied`] around this error.
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
    /// away and a reconnect was refused), or the server answered `Status::Unavailable` with detail 0 (applied in
    /// memory, maybe not journaled). `cause` is the last error seen. Never read it as
    /// "not applied", and do not simply repeat the call: it would count again. A call
    /// made with a caller's idempotency key ([`crate::Client::batch_idempotent`],
    /// [`crate::Client::incr_idempotent`], ...) can be repeated with the same key and the
    /// same operations: the server then applies only what the first attempt did not, and
    /// returns the first attempt's results for the rest (PROTOCOL.md, "Idempotency").
    /// Calls without a caller's key used a key of their own that is gone with the call.
    /// [`ClientError::is_transient`] is false for it.
    #[error("outcome unknown, the request may have been applied: {cause}")]
    OutcomeUnknown {
        #[source]
        cause: Box<ClientError>,
    },
    /// A batch sent as several requests (one per core, at most `BATCH_OPS_MAX` operations
    /// each) was applied in part: some requests were answered, with results, and others
    /// failed. `results` has one entry per operation, in the call's order: answered (its
    /// result), [`PartialResult::NotApplied`] (send exactly these again) or
    /// [`PartialResult::Unknown`] (sent, no answer: may have been applied). `cause` is the
    /// first failure. A call of one request (one operation, `*_idempotent`, a batch on
    /// one core within `BATCH_OPS_MAX`) never ends with it. [`ClientError::is_transient`]
    /// is false: repeating the whole batch would count the answered part twice.
    #[error("{}", describe_partial(results, cause))]
    PartlyApplied {
        results: Vec<PartialResult>,
        #[source]
        cause: Box<ClientError>,
    },
    /// The server refused the request before applying any of it, for a reason that
    /// passes: a new idempotency key while its idempotency memory is full (`ServerBusy`,
    /// "idempotency table full"), or a mutation while its journal cannot take one
    /// (`Status::Unavailable` with detail 1). Or the server closed the connection with
    /// its parting word ([`ClientError::Disconnected`], the `cause`) before answering the
    /// request, and the client could not send it again within the call (retries off, the
    /// deadline too near, a parting code a new connection would meet again, such as
    /// `FrameTooLarge`). Nothing of the request was applied. Call
    /// again later (unless [`ClientError::is_transient`] is false: a parting code other
    /// than `Timeout`, `ServerBusy` or `ShuttingDown`, such as `FrameTooLarge`,
    /// `MalformedFrame` or `UnsupportedVersion`, would be met again); a call made with a caller's idempotency key must be called again with
    /// the same key (and operations), as after [`ClientError::OutcomeUnknown`] (a call
    /// without one simply calls again: its automatic key is gone and applied nothing). The
    /// client does not resend a refusal within the call: the server would refuse it again
    /// until keys leave its window or the journal recovers. `cause` is the server's answer
    /// (its refusal, or its parting word).
    #[error("not applied, retry later: {cause}")]
    NotApplied {
        #[source]
        cause: Box<ClientError>,
    },
    /// A key outside 1..=255 bytes, refused before sending.
    #[error("invalid key: length {length} is outside 1..=255 bytes")]
    InvalidKey { length: usize },
    /// A value the client cannot encode (client name too long, ...).
    #[error("cannot encode request: {0}")]
    Encode(ProtocolError),
    /// The shard connections disagree with the main connection's shard map, or a shard
    /// port answered for another server process than the one the client knows and the
    /// main address could not confirm it (nothing was sent to it).
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
    /// Whether calling again later may succeed, and is safe: the connection was lost or
    /// timed out or a connect was refused, in a call that changed nothing (a mutation that
    /// may have reached the server ends with [`ClientError::OutcomeUnknown`] instead), or
    /// the server refused the request for a passing reason ([`ClientError::NotApplied`]).
    /// False for `OutcomeUnknown`: calling again counts twice, unless the call is repeated
    /// with the same idempotency key (see the crate docs), which a generic "retry if
    /// transient" loop does not do. A parting error counts when a new connection may fare
    /// better (timeout, busy, shutting down), not when the same bytes would be refused
    /// again (a frame too large, an unsupported version).
    pub fn is_transient(&self) -> bool {
        match self {
            // Not applied after a parting word: worth calling again only if a new
            // connection can get past what made the server part.
            ClientError::NotApplied { cause } => match cause.as_ref() {
                parting @ ClientError::Disconnected { .. } => parting.is_lost_connection(),
                _ => true,
            },
            other => other.is_lost_connection(),
        }
    }

    /// This error as the end of a call (see [`ClientError::settle`]): a parting word the
    /// client could not resend past, in a call that changes counters and of which no copy
    /// may have been applied, becomes [`ClientError::NotApplied`], whatever its code
    /// (the promise holds for every code; [`ClientError::is_transient`] tells whether a
    /// new connection may fare better).
    pub(crate) fn settle_call(self, maybe_applied: bool, mutates: bool) -> ClientError {
        match self.settle(maybe_applied) {
            parting @ ClientError::Disconnected { .. } if mutates => ClientError::NotApplied {
                cause: Box::new(parting),
            },
            settled => settled,
        }
    }

    /// Whether the connection that raised this error was lost or timed out (or could not
    /// be opened): what the client itself resends after, within a call.
    pub(crate) fn is_lost_connection(&self) -> bool {
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

    /// Whether this is the server's answer to the request itself, refusing it: nothing of
    /// that request was applied. (A `ServerBusy` answer is not: it refuses a retry while
    /// the first copy is still running.)
    pub(crate) fn is_definitive(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => *code != ErrorCode::ServerBusy,
            ClientError::Rejected(_)
            | ClientError::NotApplied { .. }
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
            ClientError::OutcomeUnknown { .. } | ClientError::PartlyApplied { .. } => self,
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

/// A refused operation: [`ClientError::Rejected`], except `Status::Unavailable`, which
/// becomes [`ClientError::NotApplied`] when it was refused before it was applied
/// ([`Rejection::is_not_applied`]) and [`ClientError::OutcomeUnknown`] otherwise.
impl From<Rejection> for ClientError {
    fn from(rejection: Rejection) -> Self {
        let rejected = ClientError::Rejected(rejection);
        if rejection.is_not_applied() {
            return ClientError::NotApplied {
                cause: Box::new(rejected),
            };
        }
        let maybe_applied = rejection.is_outcome_unknown();
        rejected.settle(maybe_applied)
    }
}

/// The message of [`ClientError::PartlyApplied`]: how many operations fared which way.
fn describe_partial(results: &[PartialResult], cause: &ClientError) -> String {
    let count = |wanted: fn(&PartialResult) -> bool| results.iter().filter(|r| wanted(r)).count();
    let answered = count(|result| matches!(result, PartialResult::Answered(_)));
    let not_applied = count(|result| matches!(result, PartialResult::NotApplied));
    let unknown = count(|result| matches!(result, PartialResult::Unknown));
    format!(
        "batch partly applied: {answered} operations answered, {not_applied} not applied, \
         {unknown} of unknown outcome; first failure: {cause}"
    )
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
            ClientError::NotApplied { cause } => ClientError::NotApplied {
                cause: Box::new(cause.replicate()),
            },
            ClientError::PartlyApplied { results, cause } => ClientError::PartlyApplied {
                results: results.clone(),
                cause: Box::new(cause.replicate()),
            },
            ClientError::NoSuchConnection { index, count } => ClientError::NoSuchConnection {
                index: *index,
                count: *count,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use tally_protocol::ErrorCode;

    use super::{server_refusal, ClientError};

    /// The server's message for a new key refused by a full idempotency memory
    /// (`net/server` `full_message`), and for a retry whose first copy still runs.
    const TABLE_FULL: &str = "idempotency table full: the core holding this key remembers \
        its limit of 20 keys (tallyd --idempotency-max-keys), all inside the 600 s window; \
        nothing applied, call again later (under the same key if it is your own)";
    const STILL_RUNNING: &str = "a request with this idempotency key is still running; retry";

    fn parting(code: ErrorCode) -> ClientError {
        ClientError::Disconnected {
            addr: "127.0.0.1:7878".parse().unwrap(),
            code,
            message: "parting".to_owned(),
        }
    }

    /// A mutation a parting word left unsent is not applied whatever the code, but only
    /// worth calling again when a new connection can get past the code.
    #[test]
    fn a_parted_mutation_is_not_applied_and_transient_only_if_a_new_connection_may_help() {
        let passing = [
            ErrorCode::Timeout,
            ErrorCode::ServerBusy,
            ErrorCode::ShuttingDown,
        ];
        let lasting = [
            ErrorCode::FrameTooLarge,
            ErrorCode::MalformedFrame,
            ErrorCode::UnsupportedVersion,
        ];
        for (codes, transient) in [(passing, true), (lasting, false)] {
            for code in codes {
                let error = parting(code).settle_call(false, true);
                assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
                assert_eq!(error.is_transient(), transient, "{code:?}");
                assert_eq!(parting(code).is_transient(), transient, "{code:?}");
            }
        }
    }

    /// A read-only call parted, or a mutation an earlier copy of which may have been
    /// applied, is not reported as not applied.
    #[test]
    fn a_parting_word_settles_as_not_applied_only_for_an_unapplied_mutation() {
        let read = parting(ErrorCode::Timeout).settle_call(false, false);
        assert!(matches!(read, ClientError::Disconnected { .. }), "{read:?}");
        let maybe = parting(ErrorCode::Timeout).settle_call(true, true);
        assert!(
            matches!(maybe, ClientError::OutcomeUnknown { .. }),
            "{maybe:?}"
        );
    }

    #[test]
    fn a_full_idempotency_table_is_not_applied_and_not_busy() {
        let error = server_refusal(ErrorCode::ServerBusy, TABLE_FULL);
        assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
        assert!(!error.is_busy(), "not resent as a copy still running");
        assert!(error.is_definitive());
        assert!(error.is_transient());
        assert!(!error.is_lost_connection(), "not resent within the call");
        assert!(error.to_string().starts_with("not applied"), "{error}");
    }

    #[test]
    fn a_retry_still_running_stays_busy() {
        let error = server_refusal(ErrorCode::ServerBusy, STILL_RUNNING);
        assert!(error.is_busy(), "{error:?}");
        assert!(!error.is_definitive());
        let settled = error.settle(true);
        assert!(matches!(settled, ClientError::OutcomeUnknown { .. }));
        assert!(!settled.is_transient(), "a retry loop must not repeat it");
    }

    #[test]
    fn other_refusals_are_server_errors() {
        let error = server_refusal(ErrorCode::IdempotencyKeyReused, TABLE_FULL);
        assert!(matches!(error, ClientError::Server { .. }), "{error:?}");
        assert!(error.is_definitive());
        assert!(!error.is_transient());
    }
}
