//! A tiny Tally server for the client's tests: std threads, a `HashMap` for the counters,
//! and the real codec. It listens on a main port and one shard port per fake core,
//! records which core received each key (so routing can be checked), keeps an
//! idempotency table, and can be told to misbehave: apply a batch and then drop the
//! connection without replying, or never reply at all.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tally_protocol::{
    decode_request, encode_batch_reply, encode_error, encode_pong, BoundPolicy, ErrorCode,
    HelloReply, Op, OpReply, Request, StatsReply, Status,
};

#[derive(Default)]
struct Counter {
    value: i64,
    floor: Option<i64>,
    ceiling: Option<i64>,
}

#[derive(Default)]
pub struct State {
    counters: Mutex<HashMap<Vec<u8>, Counter>>,
    idempotency: Mutex<HashMap<u128, Vec<OpReply>>>,
    /// Batches that carried an already-seen idempotency key.
    pub duplicate_batches: AtomicU64,
    /// Batch frames received.
    pub batch_frames: AtomicU64,
    /// Operations that arrived on a shard port whose core does not own the key.
    pub misrouted_ops: AtomicU64,
    /// Operations that arrived on the main port.
    pub main_port_ops: AtomicU64,
    /// Operations received per core's shard port.
    pub ops_per_core: Mutex<Vec<u64>>,
    /// Apply this many batches, then close the connection instead of replying.
    pub drop_after_apply: AtomicU32,
    /// Read requests but never reply.
    pub stall: AtomicBool,
}

pub struct FakeServer {
    pub main_addr: SocketAddr,
    pub hello: HelloReply,
    pub state: Arc<State>,
}

impl FakeServer {
    /// Starts a server with `core_count` shard ports and `partition_count` partitions.
    pub fn start(core_count: usize, partition_count: u32) -> FakeServer {
        let main = TcpListener::bind("127.0.0.1:0").unwrap();
        let shards: Vec<TcpListener> = (0..core_count)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports = shards
            .iter()
            .map(|listener| listener.local_addr().unwrap().port())
            .collect();
        let hello = HelloReply::with_modulo_owners(0xFA4E, partition_count, ports).unwrap();
        let state = Arc::new(State::default());
        *state.ops_per_core.lock().unwrap() = vec![0; core_count];
        let main_addr = main.local_addr().unwrap();
        spawn_listener(main, None, hello.clone(), state.clone());
        for (core, listener) in shards.into_iter().enumerate() {
            spawn_listener(listener, Some(core), hello.clone(), state.clone());
        }
        FakeServer {
            main_addr,
            hello,
            state,
        }
    }

    pub fn value(&self, key: &str) -> Option<i64> {
        self.state
            .counters
            .lock()
            .unwrap()
            .get(key.as_bytes())
            .map(|counter| counter.value)
    }
}

fn spawn_listener(
    listener: TcpListener,
    core: Option<usize>,
    hello: HelloReply,
    state: Arc<State>,
) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (hello, state) = (hello.clone(), state.clone());
            std::thread::spawn(move || serve(stream, core, &hello, &state));
        }
    });
}

fn serve(mut stream: TcpStream, core: Option<usize>, hello: &HelloReply, state: &State) {
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            match decode_request(&buf[consumed..]) {
                Ok(Some(frame)) => {
                    consumed += frame.frame_bytes;
                    match frame.request {
                        Ok(request) => {
                            if !handle(request, frame.request_id, core, hello, state, &mut out) {
                                return; // drop the connection without replying
                            }
                        }
                        Err(error) => encode_error(
                            &mut out,
                            frame.request_id,
                            error.error_code(),
                            &error.to_string(),
                        ),
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    encode_error(&mut out, 0, error.error_code(), &error.to_string());
                    let _ = stream.write_all(&out);
                    return;
                }
            }
        }
        buf.drain(..consumed);
        if !state.stall.load(Ordering::SeqCst) && !out.is_empty() && stream.write_all(&out).is_err()
        {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(count) => buf.extend_from_slice(&chunk[..count]),
        }
    }
}

/// Answers one request into `out`; false means "drop the connection now".
fn handle(
    request: Request<'_>,
    request_id: u64,
    core: Option<usize>,
    hello: &HelloReply,
    state: &State,
    out: &mut Vec<u8>,
) -> bool {
    match request {
        Request::Hello(_) => hello.encode(out, request_id).unwrap(),
        Request::Ping => encode_pong(out, request_id),
        Request::Stats => StatsReply {
            entries: vec![(
                "batches".to_owned(),
                state.batch_frames.load(Ordering::SeqCst),
            )],
        }
        .encode(out, request_id)
        .unwrap(),
        Request::Batch(batch) => {
            state.batch_frames.fetch_add(1, Ordering::SeqCst);
            if batch.ops().any(|op| op.key() == b"poison") {
                encode_error(out, request_id, ErrorCode::Internal, "poisoned batch");
                return true;
            }
            for op in batch.ops() {
                record_route(op.key(), core, hello, state);
            }
            let results = match batch
                .idempotency_key
                .and_then(|key| state.idempotency.lock().unwrap().get(&key).cloned())
            {
                Some(results) => {
                    state.duplicate_batches.fetch_add(1, Ordering::SeqCst);
                    results
                }
                None => {
                    let results: Vec<OpReply> = batch.ops().map(|op| apply(state, op)).collect();
                    if let Some(key) = batch.idempotency_key {
                        state
                            .idempotency
                            .lock()
                            .unwrap()
                            .insert(key, results.clone());
                    }
                    results
                }
            };
            let drop_now = state
                .drop_after_apply
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
            if drop_now {
                return false;
            }
            encode_batch_reply(out, request_id, &results).unwrap();
        }
        _ => unreachable!("no other request types in protocol v1"),
    }
    true
}

fn record_route(key: &[u8], core: Option<usize>, hello: &HelloReply, state: &State) {
    match core {
        None => {
            state.main_port_ops.fetch_add(1, Ordering::SeqCst);
        }
        Some(core) => {
            state.ops_per_core.lock().unwrap()[core] += 1;
            if hello.owner_of_key(key) != core {
                state.misrouted_ops.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// The engine's semantics, simply: the model the client's results are checked against.
fn apply(state: &State, op: Op<&[u8]>) -> OpReply {
    if op.key().is_empty() {
        return OpReply::error(Status::InvalidKey, 0);
    }
    let mut counters = state.counters.lock().unwrap();
    let existed = counters.contains_key(op.key());
    match op {
        Op::Add { key, delta, policy } => {
            let counter = counters.entry(key.to_vec()).or_default();
            let Some(value) = counter.value.checked_add(delta) else {
                return OpReply::error(Status::Overflow, 0);
            };
            bounded_store(counter, value, policy, existed)
        }
        Op::Set { key, value, policy } => bounded_store(
            counters.entry(key.to_vec()).or_default(),
            value,
            policy,
            existed,
        ),
        Op::Get { key } => OpReply::ok(
            counters.get(key).map_or(0, |counter| counter.value),
            existed,
            false,
        ),
        Op::Exists { .. } => OpReply::ok(i64::from(existed), existed, false),
        Op::Delete { key } => OpReply::ok(
            counters.remove(key).map_or(0, |counter| counter.value),
            existed,
            false,
        ),
        Op::SetBounds {
            key,
            floor,
            ceiling,
        } => {
            if let (Some(floor), Some(ceiling)) = (floor, ceiling) {
                if floor > ceiling {
                    return OpReply::error(Status::InvalidBounds, floor);
                }
            }
            let counter = counters.entry(key.to_vec()).or_default();
            if floor.is_some_and(|floor| counter.value < floor)
                || ceiling.is_some_and(|ceiling| counter.value > ceiling)
            {
                return OpReply::error(Status::OutOfBounds, counter.value);
            }
            counter.floor = floor;
            counter.ceiling = ceiling;
            OpReply::ok(counter.value, existed, false)
        }
    }
}

fn bounded_store(counter: &mut Counter, value: i64, policy: BoundPolicy, existed: bool) -> OpReply {
    if let Some(ceiling) = counter.ceiling.filter(|&ceiling| value > ceiling) {
        if policy == BoundPolicy::Reject {
            return OpReply::error(Status::AboveCeiling, ceiling);
        }
        counter.value = ceiling;
        return OpReply::ok(ceiling, existed, true);
    }
    if let Some(floor) = counter.floor.filter(|&floor| value < floor) {
        if policy == BoundPolicy::Reject {
            return OpReply::error(Status::BelowFloor, floor);
        }
        counter.value = floor;
        return OpReply::ok(floor, existed, true);
    }
    counter.value = value;
    OpReply::ok(value, existed, false)
}
