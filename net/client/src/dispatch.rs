//! Sending a batch across the shard connections and gathering its results in order.
//!
//! The operations are grouped by owning core, each group cut into frames of at most
//! `ops_per_frame` operations (never more than `BATCH_OPS_MAX`). Frames are pipelined on
//! each connection within a window ([`IN_FLIGHT_OPS_MAX`] operations and
//! [`IN_FLIGHT_FRAMES_MAX`] frames, and always at least one frame) so neither side can
//! fill both socket buffers and deadlock; replies are read one per connection in turn
//! and their results written back to the operations' original positions.
//!
//! Retries: after a transient error (lost connection, a parting `Error` of request id 0,
//! timeout, refused reconnect), a core's unanswered frames are resent on a new connection
//! if every one of them is safe to resend: read-only, or carrying an idempotency key (then
//! the server applies it once), and under its retry budget (`ClientConfig::retries` per
//! frame). A mutation without a key is never resent. When a reconnect finds a new shard
//! map, every queue's unanswered frames are re-routed under it, with the same rule.
//! After any other error, or when retries run out, every connection with unanswered
//! frames is dropped, so no stale reply can be taken for a later call's.

use std::time::Duration;

use tally_protocol::{BatchWriter, Durability, Op, Reply, BATCH_OPS_MAX, KEY_BYTES_MAX};

use crate::blocking::Client;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::idempotency::random_idempotency_key;
use crate::outcome::{from_reply, OpResult};

/// The most operations awaiting replies on one connection (beyond the first frame).
pub const IN_FLIGHT_OPS_MAX: usize = 16_384;
/// The most frames awaiting replies on one connection.
pub const IN_FLIGHT_FRAMES_MAX: usize = 1024;

/// One frame's operations, as indices into the caller's slice.
struct Chunk {
    op_indices: Vec<usize>,
    idempotency_key: Option<u128>,
    retry_safe: bool,
    request_id: u64,
    /// Times this frame was resent; at most the configured retries.
    retries_used: u32,
}

/// One core's frames and how far they got.
struct CoreQueue {
    core: usize,
    chunks: Vec<Chunk>,
    sent: usize,
    received: usize,
}

impl CoreQueue {
    fn in_flight_ops(&self) -> usize {
        self.chunks[self.received..self.sent]
            .iter()
            .map(|chunk| chunk.op_indices.len())
            .sum()
    }

    fn is_done(&self) -> bool {
        self.received == self.chunks.len()
    }
}

/// Checks every key fits the wire before anything is sent.
pub(crate) fn check_keys<K: AsRef<[u8]>>(ops: &[Op<K>]) -> Result<(), ClientError> {
    match ops.iter().find(|op| op.key().len() > KEY_BYTES_MAX) {
        Some(op) => Err(ClientError::InvalidKey {
            length: op.key().len(),
        }),
        None => Ok(()),
    }
}

/// Runs `ops` and returns one result per operation, in order.
pub(crate) fn run_batch<K: AsRef<[u8]>>(
    client: &mut Client,
    ops: &[Op<K>],
    durability: Durability,
    ops_per_frame: usize,
) -> Result<Vec<OpResult>, ClientError> {
    check_keys(ops)?;
    let mut queues = plan(client, ops, ops_per_frame);
    let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
    'rounds: while queues.iter().any(|queue| !queue.is_done()) {
        for index in 0..queues.len() {
            if let Err(error) = send_window(client, &mut queues[index], ops, durability) {
                if recover(client, &mut queues, ops, index, error)? == Recovery::Rerouted {
                    continue 'rounds;
                }
            }
        }
        for index in 0..queues.len() {
            if queues[index].received < queues[index].sent {
                if let Err(error) = receive_one(client, &mut queues[index], &mut results) {
                    if recover(client, &mut queues, ops, index, error)? == Recovery::Rerouted {
                        continue 'rounds;
                    }
                }
            }
        }
    }
    Ok(results
        .into_iter()
        .map(|result| result.expect("every operation's frame was answered"))
        .collect())
}

/// Groups operations by owning core and cuts each group into frames.
fn plan<K: AsRef<[u8]>>(client: &Client, ops: &[Op<K>], ops_per_frame: usize) -> Vec<CoreQueue> {
    let ops_per_frame = ops_per_frame.clamp(1, BATCH_OPS_MAX);
    let mut by_core: Vec<Vec<usize>> = vec![Vec::new(); client.connection_count()];
    for (index, op) in ops.iter().enumerate() {
        by_core[client.route(op.key())].push(index);
    }
    let with_keys = client.config().retries > 0;
    let mut queues = Vec::new();
    for (core, indices) in by_core
        .into_iter()
        .enumerate()
        .filter(|(_, indices)| !indices.is_empty())
    {
        let chunks = indices
            .chunks(ops_per_frame)
            .map(|op_indices| {
                let mutates = op_indices.iter().any(|&index| ops[index].is_mutation());
                let idempotency_key = (mutates && with_keys).then(random_idempotency_key);
                let retry_safe = !mutates || idempotency_key.is_some();
                Chunk {
                    op_indices: op_indices.to_vec(),
                    idempotency_key,
                    retry_safe,
                    request_id: 0,
                    retries_used: 0,
                }
            })
            .collect();
        queues.push(CoreQueue {
            core,
            chunks,
            sent: 0,
            received: 0,
        });
    }
    queues
}

/// Encodes and sends as many of the queue's frames as the window allows.
fn send_window<K: AsRef<[u8]>>(
    client: &mut Client,
    queue: &mut CoreQueue,
    ops: &[Op<K>],
    durability: Durability,
) -> Result<(), ClientError> {
    if queue.sent == queue.chunks.len() {
        return Ok(());
    }
    let connection = client.connection(queue.core)?;
    if let Err(error) = encode_window(connection, queue, ops, durability) {
        // Half-encoded frames must never reach the server: forget the connection.
        client.drop_connection(queue.core);
        return Err(error);
    }
    connection.flush()
}

/// Encodes the frames the window allows into the connection's write buffer.
fn encode_window<K: AsRef<[u8]>>(
    connection: &mut Connection,
    queue: &mut CoreQueue,
    ops: &[Op<K>],
    durability: Durability,
) -> Result<(), ClientError> {
    let mut in_flight_ops = queue.in_flight_ops();
    while queue.sent < queue.chunks.len() {
        let chunk = &mut queue.chunks[queue.sent];
        let in_flight_frames = queue.sent - queue.received;
        let window_full = in_flight_frames >= IN_FLIGHT_FRAMES_MAX
            || in_flight_ops + chunk.op_indices.len() > IN_FLIGHT_OPS_MAX;
        if in_flight_frames > 0 && window_full {
            break;
        }
        chunk.request_id = connection.next_request_id();
        let mut writer = BatchWriter::begin(
            &mut connection.write_buf,
            chunk.request_id,
            durability,
            chunk.idempotency_key,
        );
        for &index in &chunk.op_indices {
            writer.push(&ops[index]).map_err(ClientError::Encode)?;
        }
        writer.finish().map_err(ClientError::Encode)?;
        in_flight_ops += chunk.op_indices.len();
        queue.sent += 1;
    }
    Ok(())
}

/// Reads the reply to the queue's oldest unanswered frame into `results`.
fn receive_one(
    client: &mut Client,
    queue: &mut CoreQueue,
    results: &mut [Option<OpResult>],
) -> Result<(), ClientError> {
    let chunk = &queue.chunks[queue.received];
    let connection = client.connection(queue.core)?;
    let addr = connection.addr();
    let count_matches = connection.read_reply(chunk.request_id, |reply| match reply {
        Reply::BatchReply(batch_reply) if batch_reply.result_count() == chunk.op_indices.len() => {
            for (&index, result) in chunk.op_indices.iter().zip(batch_reply.results()) {
                results[index] = Some(from_reply(result));
            }
            Ok(true)
        }
        Reply::BatchReply(_) => Ok(false),
        other => Err(other),
    })?;
    if !count_matches {
        let reason = format!(
            "result count differs from the {} operations sent",
            chunk.op_indices.len()
        );
        return Err(ClientError::UnexpectedReply { addr, reason });
    }
    queue.received += 1;
    Ok(())
}

/// What [`recover`] did with the queues.
#[derive(Debug, PartialEq, Eq)]
enum Recovery {
    /// The failed queue's unanswered frames will be resent on a new connection.
    Resend,
    /// The shard map changed: the queues were rebuilt under the new routes.
    Rerouted,
}

/// Decides whether the failed queue can be resent; if not, drops every connection with
/// unanswered frames and returns the error.
fn recover<K: AsRef<[u8]>>(
    client: &mut Client,
    queues: &mut Vec<CoreQueue>,
    ops: &[Op<K>],
    failed: usize,
    error: ClientError,
) -> Result<Recovery, ClientError> {
    if matches!(error, ClientError::ShardMapChanged { .. }) {
        return reroute(client, queues, ops, error).map(|()| Recovery::Rerouted);
    }
    if error.breaks_connection() {
        client.drop_connection(queues[failed].core);
    }
    let retries = client.config().retries;
    let queue = &mut queues[failed];
    // The frames on the lost connection, or the next one if none was sent yet.
    let unanswered = queue.received..queue.sent.max(queue.received + 1);
    let resendable = queue.chunks[unanswered.clone()]
        .iter()
        .all(|chunk| chunk.retry_safe && chunk.retries_used < retries);
    if error.is_transient() && resendable {
        let mut attempt = 0;
        for chunk in &mut queue.chunks[unanswered] {
            chunk.retries_used += 1;
            attempt = attempt.max(chunk.retries_used);
        }
        queue.sent = queue.received;
        std::thread::sleep(backoff(attempt));
        return Ok(Recovery::Resend);
    }
    for queue in queues.iter().filter(|queue| queue.sent > queue.received) {
        client.drop_connection(queue.core);
    }
    Err(error)
}

/// After the client adopted a new shard map (and dropped its old connections): moves
/// every queue's unanswered frames to the core that now owns the first key of its first
/// unanswered frame, keeping each queue's frames together and in order, so operations
/// on one key keep their order. A frame keeps its operations and idempotency key, so a
/// resent frame is the same request; keys in it that another core owns are forwarded
/// by the server. Frames that were in flight are resent only if safe, as in [`recover`].
fn reroute<K: AsRef<[u8]>>(
    client: &mut Client,
    queues: &mut Vec<CoreQueue>,
    ops: &[Op<K>],
    error: ClientError,
) -> Result<(), ClientError> {
    let retries = client.config().retries;
    let in_flight = || {
        queues
            .iter()
            .flat_map(|queue| &queue.chunks[queue.received..queue.sent])
    };
    if !in_flight().all(|chunk| chunk.retry_safe && chunk.retries_used < retries) {
        return Err(error);
    }
    let mut rerouted: Vec<CoreQueue> = Vec::new();
    for queue in queues.drain(..) {
        let sent = queue.sent;
        let mut unanswered = queue.chunks.into_iter().skip(queue.received).peekable();
        let Some(first) = unanswered.peek() else {
            continue;
        };
        let core = client.route(ops[first.op_indices[0]].key());
        let chunks = unanswered.enumerate().map(|(offset, mut chunk)| {
            chunk.retries_used += u32::from(queue.received + offset < sent);
            chunk
        });
        match rerouted.iter_mut().find(|queue| queue.core == core) {
            Some(existing) => existing.chunks.extend(chunks),
            None => rerouted.push(CoreQueue {
                core,
                chunks: chunks.collect(),
                sent: 0,
                received: 0,
            }),
        }
    }
    *queues = rerouted;
    Ok(())
}

/// Wait before the `attempt`-th retry (from 1): 5 ms doubling, at most 500 ms.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(7);
    Duration::from_millis(5 << doublings).min(Duration::from_millis(500))
}
