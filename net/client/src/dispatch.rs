//! Sending a batch across the shard connections and gathering its results in order.
//!
//! The operations are grouped by owning core, each group cut into frames of at most
//! `ops_per_frame` operations (never more than `BATCH_OPS_MAX`). Frames are pipelined on
//! each connection within a window ([`IN_FLIGHT_OPS_MAX`] operations and
//! [`IN_FLIGHT_FRAMES_MAX`] frames, and always at least one frame) so neither side can
//! fill both socket buffers and deadlock; replies are read one per connection in turn
//! and their results written back to the operations' original positions.
//!
//! A frame that changes counters carries an idempotency key only if the caller gave one
//! (`Client::batch_idempotent`) or `ClientConfig::auto_idempotency_keys` is on (and
//! retries are): then each frame gets a random key of the client's own, drawn so that
//! the server keeps it on the core the frame is sent to (`idempotency::key_homed_on`).
//!
//! Retries, all within the call's deadline (`ClientConfig::call_timeout`) and only when
//! `ClientConfig::retries` is not 0, with backoff (5 ms doubling, at most 500 ms):
//! - after a transient error on a connection the frames were sent on (lost connection,
//!   timeout), a core's unanswered frames are resent on a new connection if every one of
//!   them is safe to resend: read-only, or carrying an idempotency key (then the server
//!   applies it once), and under its retry budget (`ClientConfig::retries` per frame). A
//!   mutation without a key is never resent once written: the call ends with
//!   `ClientError::OutcomeUnknown`;
//! - after a parting `Error` of request id 0 (the server closed the connection: idle
//!   timeout, connection limit, shutdown), the frames it left unanswered were not applied
//!   and never will be (PROTOCOL.md, "Closing"): they are resent on a new connection like
//!   frames never sent, with or without an idempotency key, at no charge to the budget.
//!   If they cannot be (retries off, the deadline too near, or a parting code a new
//!   connection would meet again, such as `FrameTooLarge`), the call ends with
//!   `ClientError::NotApplied`, or `OutcomeUnknown` if an earlier copy of a frame went
//!   out on a connection lost without a parting word;
//! - after a connect that failed (refused, unreachable, timed out), nothing was sent: the
//!   connect is tried again, at no charge to the budget (a hello that fails is charged);
//! - after `ServerBusy` to a frame with an idempotency key (its first copy is still
//!   running), the frames are sent again with the same keys, at no charge, until the
//!   first copy's results come back. A `ServerBusy` that refuses a new key because the
//!   server's idempotency memory is full is not resent: the call ends with
//!   `ClientError::NotApplied` (nothing of that frame applied).
//!
//! A batch with the caller's idempotency key (`Client::batch_idempotent`) is one frame
//! under that key, sent to the core that owns its first operation's key, so a repeat of
//! the call after `OutcomeUnknown` is the same request whatever the shard map.
//!
//! When a reconnect finds a new shard map, every queue's unanswered frames are re-routed
//! under it, with the same rule (a frame keeps its key, so the server may now keep that
//! key on another core than the one the frame is sent to: one cross-core hop, only for
//! that frame). A frame the server refuses as a whole by its request id (`NotApplied`,
//! a definitive `Server` error) leaves its connection in step: the other frames go on,
//! and the call fails at the end. After any other error, or when retries or the
//! deadline run out, every connection with unanswered frames is dropped, so no stale
//! reply can be taken for a later call's, and the error is settled: if frames that
//! change counters were answered (applied) while others failed,
//! `ClientError::PartlyApplied` with each operation's fate (answered, not applied, or
//! unknown); else, if a frame that changes counters was sent and not answered,
//! `ClientError::OutcomeUnknown`, never one that reads as "nothing applied".

use std::time::{Duration, Instant};

use tally_protocol::{
    BatchWriter, Durability, Op, ProtocolError, Reply, BATCH_OPS_MAX, KEY_BYTES_MAX,
};

use crate::blocking::Client;
use crate::connection::Connection;
use crate::error::ClientError;
use crate::idempotency::{key_homed_on, random_idempotency_key};
use crate::outcome::{from_reply, partial_results, OpResult};

/// The most operations awaiting replies on one connection (beyond the first frame).
pub const IN_FLIGHT_OPS_MAX: usize = 16_384;
/// The most frames awaiting replies on one connection.
pub const IN_FLIGHT_FRAMES_MAX: usize = 1024;

/// One frame's operations, as indices into the caller's slice.
struct Chunk {
    op_indices: Vec<usize>,
    idempotency_key: Option<u128>,
    /// Some operation changes a counter.
    mutates: bool,
    /// Encoded for sending at least once on a connection that did not part (see the
    /// module docs): it may have reached the server and been applied.
    written: bool,
    /// `written` as it was before the latest send: restored when the connection that
    /// send went out on parts, since the server says it did not apply it.
    written_earlier: bool,
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
    /// Failures so far, which set the next backoff.
    failure_count: u32,
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

/// Checks every key is 1..=255 bytes before anything is sent: an empty key would only
/// be refused by the server, after a round trip (and, keyed, a slot in its idempotency
/// memory), and a longer one does not fit the wire.
pub(crate) fn check_keys<K: AsRef<[u8]>>(ops: &[Op<K>]) -> Result<(), ClientError> {
    match ops
        .iter()
        .find(|op| op.key().is_empty() || op.key().len() > KEY_BYTES_MAX)
    {
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
    let queues = plan(client, ops, ops_per_frame);
    run(client, ops, durability, queues)
}

/// Runs `ops` as one frame carrying the caller's `idempotency_key`, sent to the core
/// that owns the first operation's key (the server forwards the others' keys), so the
/// same call repeated with the same key is the same request under any shard map.
pub(crate) fn run_keyed_batch<K: AsRef<[u8]>>(
    client: &mut Client,
    ops: &[Op<K>],
    durability: Durability,
    idempotency_key: u128,
) -> Result<Vec<OpResult>, ClientError> {
    let Some(first) = check_keyed_batch(ops)? else {
        return Ok(Vec::new());
    };
    let chunk = Chunk {
        op_indices: (0..ops.len()).collect(),
        idempotency_key: Some(idempotency_key),
        mutates: ops.iter().any(Op::is_mutation),
        written: false,
        written_earlier: false,
        retry_safe: true,
        request_id: 0,
        retries_used: 0,
    };
    let queue = CoreQueue {
        core: client.route(first.key()),
        chunks: vec![chunk],
        sent: 0,
        received: 0,
        failure_count: 0,
    };
    run(client, ops, durability, vec![queue])
}

/// Checks a batch with a caller's idempotency key: valid keys, and no more operations
/// than the one frame it must be sent in holds. Its first operation, whose key routes
/// the frame (`None` for an empty batch, which is not sent).
pub(crate) fn check_keyed_batch<K: AsRef<[u8]>>(
    ops: &[Op<K>],
) -> Result<Option<&Op<K>>, ClientError> {
    check_keys(ops)?;
    if ops.len() > BATCH_OPS_MAX {
        return Err(ClientError::Encode(ProtocolError::BatchTooLarge {
            count: ops.len() as u64,
            max: BATCH_OPS_MAX,
        }));
    }
    Ok(ops.first())
}

/// Sends the planned frames, resending and re-routing as the module docs say, and
/// returns one result per operation, in order.
fn run<K: AsRef<[u8]>>(
    client: &mut Client,
    ops: &[Op<K>],
    durability: Durability,
    queues: Vec<CoreQueue>,
) -> Result<Vec<OpResult>, ClientError> {
    let mut run = Run {
        deadline: Instant::now() + client.config().call_timeout,
        queues,
        refusal: None,
        unknown: vec![false; ops.len()],
    };
    let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
    'rounds: while run.queues.iter().any(|queue| !queue.is_done()) {
        for index in 0..run.queues.len() {
            let sent = send_window(
                client,
                &mut run.queues[index],
                ops,
                durability,
                run.deadline,
            );
            if let Err(error) = sent {
                if recover(client, &mut run, ops, &results, index, error)? == Recovery::Rerouted {
                    continue 'rounds;
                }
            }
        }
        for index in 0..run.queues.len() {
            if run.queues[index].received < run.queues[index].sent {
                let queue = &mut run.queues[index];
                if let Err(error) = receive_one(client, queue, &mut results, run.deadline) {
                    if is_refusal(&error) {
                        refuse_oldest(&mut run, ops, index, error);
                        continue;
                    }
                    if recover(client, &mut run, ops, &results, index, error)? == Recovery::Rerouted
                    {
                        continue 'rounds;
                    }
                }
            }
        }
    }
    if let Some(refusal) = run.refusal.take() {
        return Err(give_up(client, &run, ops, &results, usize::MAX, refusal));
    }
    Ok(results
        .into_iter()
        .map(|result| result.expect("every operation's frame was answered"))
        .collect())
}

/// Whether `error` is the server refusing one frame as a whole, by its request id, before
/// applying any of it: the connection stays in step (the reply was read), so the other
/// frames go on and the call reports each operation's fate at the end.
fn is_refusal(error: &ClientError) -> bool {
    matches!(error, ClientError::NotApplied { .. })
        || matches!(error, ClientError::Server { .. } if error.is_definitive())
}

/// Records the refusal of queue `index`'s oldest unanswered frame and moves past it. Its
/// operations stay without results (not applied), except a refusal as "table full" of
/// a frame sent before on another connection: the server may have forgotten its key,
/// so the first copy may have been applied (see [`give_up`]).
fn refuse_oldest<K: AsRef<[u8]>>(run: &mut Run, ops: &[Op<K>], index: usize, error: ClientError) {
    let queue = &mut run.queues[index];
    let chunk = &queue.chunks[queue.received];
    // `written_earlier`: an earlier copy went out on a connection that did not part.
    let resent_refusal = matches!(error, ClientError::NotApplied { .. }) && chunk.written_earlier;
    if resent_refusal {
        for &op_index in &chunk.op_indices {
            run.unknown[op_index] = ops[op_index].is_mutation();
        }
    }
    queue.received += 1;
    run.refusal.get_or_insert(error);
}

/// One call's progress.
struct Run {
    deadline: Instant,
    queues: Vec<CoreQueue>,
    /// The first frame the server refused as a whole (see [`is_refusal`]); the call goes
    /// on with the other frames and fails with it at the end.
    refusal: Option<ClientError>,
    /// Per operation: a mutation in a refused frame that may have been applied after all.
    unknown: Vec<bool>,
}

/// Groups operations by owning core and cuts each group into frames.
fn plan<K: AsRef<[u8]>>(client: &Client, ops: &[Op<K>], ops_per_frame: usize) -> Vec<CoreQueue> {
    let ops_per_frame = ops_per_frame.clamp(1, BATCH_OPS_MAX);
    let mut by_core: Vec<Vec<usize>> = vec![Vec::new(); client.connection_count()];
    for (index, op) in ops.iter().enumerate() {
        by_core[client.route(op.key())].push(index);
    }
    // Automatic keys are homed on the core that serves the frame; without shard ports
    // the main port's core is not known, and a plain random key is as good as any.
    let with_keys = client.config().auto_idempotency_keys && client.config().retries > 0;
    let cores = client.shard_map().core_count();
    let key_for = |core: usize| {
        if client.config().shard_aware {
            key_homed_on(core, cores)
        } else {
            random_idempotency_key()
        }
    };
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
                let idempotency_key = (mutates && with_keys).then(|| key_for(core));
                let retry_safe = !mutates || idempotency_key.is_some();
                Chunk {
                    op_indices: op_indices.to_vec(),
                    idempotency_key,
                    mutates,
                    written: false,
                    written_earlier: false,
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
            failure_count: 0,
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
    deadline: Instant,
) -> Result<(), ClientError> {
    if queue.sent == queue.chunks.len() {
        return Ok(());
    }
    let connection = client.connection(queue.core, deadline)?;
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
        chunk.written_earlier = chunk.written;
        chunk.written = true;
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
    deadline: Instant,
) -> Result<(), ClientError> {
    let chunk = &queue.chunks[queue.received];
    let connection = client.connection(queue.core, deadline)?;
    let addr = connection.addr();
    let read = connection.read_reply(chunk.request_id, deadline, |reply| match reply {
        Reply::BatchReply(batch_reply) if batch_reply.result_count() == chunk.op_indices.len() => {
            for (&index, result) in chunk.op_indices.iter().zip(batch_reply.results()) {
                results[index] = Some(from_reply(result));
            }
            Ok(true)
        }
        Reply::BatchReply(_) => Ok(false),
        other => Err(other),
    });
    let count_matches = read?;
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

/// Decides whether the failed queue can be resent (see the module docs); if not, drops
/// every connection with unanswered frames and returns the error, settled.
fn recover<K: AsRef<[u8]>>(
    client: &mut Client,
    run: &mut Run,
    ops: &[Op<K>],
    results: &[Option<OpResult>],
    failed: usize,
    error: ClientError,
) -> Result<Recovery, ClientError> {
    if matches!(error, ClientError::ShardMapChanged { .. }) {
        return match reroute(client, run, ops) {
            Ok(()) => Ok(Recovery::Rerouted),
            Err(()) => Err(give_up(client, run, ops, results, failed, error)),
        };
    }
    let retries = client.config().retries;
    let queue = &mut run.queues[failed];
    // The first copy of this frame is still running: send it again later with its key.
    // The frames behind it are in flight on this connection, so it is dropped.
    let busy = error.is_busy()
        && queue
            .chunks
            .get(queue.received)
            .is_some_and(|chunk| chunk.idempotency_key.is_some());
    if busy || error.breaks_connection() {
        client.drop_connection(queue.core);
    }
    // The server's parting word: it applied none of the frames it did not answer.
    let parted = matches!(error, ClientError::Disconnected { .. });
    if parted {
        for chunk in &mut queue.chunks[queue.received..queue.sent] {
            chunk.written = chunk.written_earlier;
        }
    }
    // Frames sent on the connection that failed, which may have been applied; none if
    // opening it failed or the server parted.
    let on_the_wire = queue.sent > queue.received && !parted;
    // A connect that failed sent nothing, a parting server applied none of the frames
    // it was sent, and a busy frame is known not to have run twice: none is charged to
    // the retry budget (a hello that fails is, even with a parting error).
    let connect_failed = matches!(error, ClientError::Connect { .. });
    let parted_frames = parted && queue.sent > queue.received;
    let free = busy || parted_frames || (!on_the_wire && connect_failed);
    // The frames on the lost connection, or the next one if none was sent yet.
    let unanswered = queue.received..queue.sent.max(queue.received + 1);
    let resendable = queue.chunks[unanswered.clone()]
        .iter()
        .all(|chunk| (!on_the_wire || chunk.retry_safe) && (free || chunk.retries_used < retries));
    queue.failure_count += 1;
    let wait = backoff(queue.failure_count);
    let in_time = Instant::now() + wait < run.deadline;
    if retries > 0 && (busy || error.is_lost_connection()) && resendable && in_time {
        if !free {
            for chunk in &mut queue.chunks[unanswered] {
                chunk.retries_used += 1;
            }
        }
        queue.sent = queue.received;
        std::thread::sleep(wait);
        return Ok(Recovery::Resend);
    }
    Err(give_up(client, run, ops, results, failed, error))
}

/// Ends the call: drops every connection with unanswered frames and settles the error.
/// The call may have been applied, so the error is [`ClientError::OutcomeUnknown`], when
/// a frame that changes counters was sent, unless the error is the server refusing that
/// very frame (and it is the only one). A "table full" refusal
/// ([`ClientError::NotApplied`]) of a frame sent before on another connection does not
/// count as that: the server says it does not know the key, which it also says of a key
/// it forgot (a restart with more keys than it recovers), so the earlier copy may have
/// been applied. When frames that change counters were answered (applied), the error is
/// [`ClientError::PartlyApplied`] instead, with each operation's fate: answered (from
/// `results`), unknown (a mutation in a frame that may have been applied), or not
/// applied.
fn give_up<K: AsRef<[u8]>>(
    client: &mut Client,
    run: &Run,
    ops: &[Op<K>],
    results: &[Option<OpResult>],
    failed: usize,
    error: ClientError,
) -> ClientError {
    for queue in run
        .queues
        .iter()
        .filter(|queue| queue.sent > queue.received)
    {
        client.drop_connection(queue.core);
    }
    let definitive = error.is_definitive();
    let resent_refusal = matches!(error, ClientError::NotApplied { .. });
    // Whether a chunk not answered may have been applied.
    let maybe_applied = |index: usize, position: usize, chunk: &Chunk| {
        let refused = definitive
            && index == failed
            && position == run.queues[index].received
            && !(resent_refusal && chunk.written_earlier);
        chunk.mutates && chunk.written && !refused
    };
    // Answered frames (also those a re-route dropped from the queues) left results.
    let answered_mutations = results
        .iter()
        .zip(ops)
        .any(|(result, op)| result.is_some() && op.is_mutation());
    let mut unknown = run.unknown.clone();
    for (index, queue) in run.queues.iter().enumerate() {
        for (position, chunk) in queue.chunks.iter().enumerate().skip(queue.received) {
            if maybe_applied(index, position, chunk) {
                for &op_index in &chunk.op_indices {
                    unknown[op_index] = ops[op_index].is_mutation();
                }
            }
        }
    }
    if answered_mutations {
        let results = partial_results(results.to_vec(), &unknown);
        let cause = Box::new(error);
        return ClientError::PartlyApplied { results, cause };
    }
    let mutates = ops.iter().any(Op::is_mutation);
    error.settle_call(unknown.contains(&true), mutates)
}

/// After the client adopted a new shard map (and dropped its old connections): moves
/// every queue's unanswered frames to the core that now owns the first key of its first
/// unanswered frame, keeping each queue's frames together and in order, so operations
/// on one key keep their order. A frame keeps its operations and idempotency key, so a
/// resent frame is the same request; keys in it that another core owns are forwarded
/// by the server. Frames that were in flight are resent only if safe, as in [`recover`];
/// if one is not, nothing changes and the call fails.
fn reroute<K: AsRef<[u8]>>(client: &mut Client, run: &mut Run, ops: &[Op<K>]) -> Result<(), ()> {
    let retries = client.config().retries;
    let in_flight = || {
        run.queues
            .iter()
            .flat_map(|queue| &queue.chunks[queue.received..queue.sent])
    };
    if !in_flight().all(|chunk| chunk.retry_safe && chunk.retries_used < retries) {
        return Err(());
    }
    let mut rerouted: Vec<CoreQueue> = Vec::new();
    for queue in run.queues.drain(..) {
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
                failure_count: 0,
            }),
        }
    }
    run.queues = rerouted;
    Ok(())
}

/// Wait before the `attempt`-th retry (from 1): 5 ms doubling, at most 500 ms.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(7);
    Duration::from_millis(5 << doublings).min(Duration::from_millis(500))
}
