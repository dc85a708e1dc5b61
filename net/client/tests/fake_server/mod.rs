//! A tiny Tally server for the client's tests: std threads, a `HashMap` for the counters,
//! and the real codec. It listens on a main port and one shard port per fake core,
//! records which core received each key (so routing can be checked), keeps an
//! idempotency table, and can be told to misbehave: apply a batch and then drop the
//! connection without replying, never reply at all, close idle connections with a
//! parting `Error Timeout` of request id 0 (as tallyd does after its read timeout),
//! answer a batch with that parting error instead of applying it, or hand new
//! connections a different shard map (as a restarted server with other cores would),
//! answer the retry of a batch with `ServerBusy` "still running" (as tallyd does while the
//! first copy is in group commit), refuse a key as "idempotency table full", report
//! `Unavailable` for the key "unavailable" after applying it (detail 0, outcome unknown)
//! and for the key "refused" without applying it (detail 1, nothing applied), and close a port (refusing connections, as a stopped server does) and
//! open it again.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tally_protocol::{
    decode_request, encode_batch_reply, encode_error, encode_pong, Bound, BoundPolicy, ErrorCode,
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
    /// Batch frames received with an idempotency key.
    pub keyed_frames: AtomicU64,
    /// Keyed batch frames received on a shard port whose core is not the key's home core
    /// (`tally_protocol::idempotency_home_core`): tallyd would take a cross-core hop.
    pub keys_homed_elsewhere: AtomicU64,
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
    /// Close every idle connection with a parting `Error Timeout` (request id 0).
    pub part_idle: AtomicBool,
    /// Answer this many batches with a parting `Error Timeout` (request id 0) and close,
    /// applying nothing.
    pub part_on_batch: AtomicU32,
    /// Connections closed with a parting error.
    pub parted_connections: AtomicU64,
    /// Hello frames answered (one per connection opened by a client).
    pub hellos: AtomicU64,
    /// Refuse this many hellos with a parting `ServerBusy` (request id 0), as tallyd
    /// refuses a connection over its limit; each counts in `hellos`.
    pub part_on_hello: AtomicU32,
    /// Part once, at the Nth batch of a connection (1 = its first), after answering the
    /// batches before it in the same write: replies and the parting frame in one read.
    pub part_at_batch: AtomicU32,
    /// Answer this many hellos and part right after, in the same write (tallyd's
    /// shutdown just after accept): the `HelloReply` and a parting `ShuttingDown`
    /// arrive in one read.
    pub part_after_hello: AtomicU32,
    /// Answer this many batches whose idempotency key is already known with `ServerBusy`
    /// "still running", applying nothing (the first copy's results are kept).
    pub busy_on_duplicate: AtomicU32,
    /// Batches answered with that `ServerBusy`.
    pub busy_replies: AtomicU64,
    /// Answer this many batches with a new idempotency key with `ServerBusy`
    /// "idempotency table full", applying nothing (as tallyd does when its idempotency
    /// memory is full).
    pub full_on_new_key: AtomicU32,
    /// The same for batches whose key is already known (as a server that forgot the key
    /// would).
    pub full_on_known_key: AtomicU32,
    /// When `drop_after_apply` drops a connection, close every port too (the server went
    /// away after applying the batch).
    pub closed_ports_after_apply: AtomicBool,
    /// Ports closed by [`FakeServer::close_port`]: `None` is the main port, `Some(core)` a
    /// shard port. Their listeners stop and their connections close.
    closed_ports: Mutex<HashSet<Option<usize>>>,
    /// The shard map handed to new connections and used to check routing.
    hello: Mutex<Option<HelloReply>>,
}

impl State {
    fn port_closed(&self, core: Option<usize>) -> bool {
        self.closed_ports.lock().unwrap().contains(&core)
    }
}

/// How often an idle connection checks `part_idle`.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(10);

pub struct FakeServer {
    pub main_addr: SocketAddr,
    pub shard_addrs: Vec<SocketAddr>,
    pub hello: HelloReply,
    pub state: Arc<State>,
}

impl FakeServer {
    /// Starts a server with `core_count` shard ports and `partition_count` partitions.
    pub fn start(core_count: usize, partition_count: u32) -> FakeServer {
        FakeServer::start_at("127.0.0.1:0", 0xFA4E, core_count, partition_count)
    }

    /// Like [`FakeServer::start`], with the main port at `main_addr` (another server's
    /// freed port, say) and this `server_id` (another process's).
    pub fn start_at(
        main_addr: &str,
        server_id: u64,
        core_count: usize,
        partition_count: u32,
    ) -> FakeServer {
        let main = TcpListener::bind(main_addr).unwrap();
        let shards: Vec<TcpListener> = (0..core_count)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports = shards
            .iter()
            .map(|listener| listener.local_addr().unwrap().port())
            .collect();
        let hello = HelloReply::with_modulo_owners(server_id, partition_count, ports).unwrap();
        let state = Arc::new(State::default());
        *state.ops_per_core.lock().unwrap() = vec![0; core_count];
        *state.hello.lock().unwrap() = Some(hello.clone());
        let main_addr = main.local_addr().unwrap();
        let shard_addrs = shards
            .iter()
            .map(|listener| listener.local_addr().unwrap())
            .collect();
        spawn_listener(main, None, state.clone());
        for (core, listener) in shards.into_iter().enumerate() {
            spawn_listener(listener, Some(core), state.clone());
        }
        FakeServer {
            main_addr,
            shard_addrs,
            hello,
            state,
        }
    }

    fn port_addr(&self, core: Option<usize>) -> SocketAddr {
        core.map_or(self.main_addr, |core| self.shard_addrs[core])
    }

    /// Stops listening on a port (`None`: the main one) and closes its connections, as a
    /// stopped server would: connecting to it is then refused. Returns once it is.
    pub fn close_port(&self, core: Option<usize>) {
        self.state.closed_ports.lock().unwrap().insert(core);
        let addr = self.port_addr(core);
        for _ in 0..500 {
            if TcpStream::connect(addr).is_err() {
                // Its connections notice within one idle poll.
                std::thread::sleep(IDLE_POLL * 3);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("port {addr} still accepts connections");
    }

    /// Listens on a closed port again.
    pub fn reopen_port(&self, core: Option<usize>) {
        let listener = TcpListener::bind(self.port_addr(core)).unwrap();
        self.state.closed_ports.lock().unwrap().remove(&core);
        spawn_listener(listener, core, self.state.clone());
    }

    /// Hands new connections a map with core 0 alone owning every partition, as a server
    /// restarted with one core would; core 1's port should then be closed.
    pub fn shrink_to_one_core(&self) -> HelloReply {
        let hello = HelloReply::with_modulo_owners(
            0xFA50,
            self.hello.partition_count,
            vec![self.hello.shard_ports[0]],
        )
        .unwrap();
        *self.state.hello.lock().unwrap() = Some(hello.clone());
        hello
    }

    /// Hands new connections `hello` as the shard map (for example the one the server
    /// started with, after [`FakeServer::shrink_to_one_core`]).
    pub fn set_shard_map(&self, hello: HelloReply) {
        *self.state.hello.lock().unwrap() = Some(hello);
    }

    /// Hands new connections `partition_count` partitions over the same shard ports, with
    /// owners reversed, so keys route differently from before.
    pub fn change_shard_map(&self, partition_count: u32) -> HelloReply {
        let mut hello =
            HelloReply::with_modulo_owners(0xFA4F, partition_count, self.hello.shard_ports.clone())
                .unwrap();
        let core_count = hello.shard_ports.len() as u16;
        for owner in &mut hello.owners {
            *owner = core_count - 1 - *owner;
        }
        *self.state.hello.lock().unwrap() = Some(hello.clone());
        hello
    }

    /// Closes every idle connection with a parting error and waits until `count` were.
    pub fn part_idle_connections(&self, count: u64) {
        let before = self.state.parted_connections.load(Ordering::SeqCst);
        self.state.part_idle.store(true, Ordering::SeqCst);
        for _ in 0..500 {
            if self.state.parted_connections.load(Ordering::SeqCst) >= before + count {
                break;
            }
            std::thread::sleep(IDLE_POLL);
        }
        self.state.part_idle.store(false, Ordering::SeqCst);
        assert!(self.state.parted_connections.load(Ordering::SeqCst) >= before + count);
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

/// Accepts connections until the port is closed (the listener is then dropped, so
/// connecting is refused).
fn spawn_listener(listener: TcpListener, core: Option<usize>, state: Arc<State>) {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || loop {
        if state.port_closed(core) {
            return;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                let state = state.clone();
                std::thread::spawn(move || serve(stream, core, &state));
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(_) => return,
        }
    });
}

/// Writes a parting `Error Timeout` with request id 0; the caller then closes.
fn part(stream: &mut TcpStream, state: &State) {
    let mut out = Vec::new();
    encode_error(
        &mut out,
        0,
        ErrorCode::Timeout,
        "read timeout: closing the connection",
    );
    let _ = stream.write_all(&out);
    state.parted_connections.fetch_add(1, Ordering::SeqCst);
}

fn serve(mut stream: TcpStream, core: Option<usize>, state: &State) {
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(IDLE_POLL)).unwrap();
    let mut hello: Option<HelloReply> = None;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut batches_seen = 0u32;
    loop {
        let mut out = Vec::new();
        let mut consumed = 0;
        loop {
            match decode_request(&buf[consumed..]) {
                Ok(Some(frame)) => {
                    consumed += frame.frame_bytes;
                    match frame.request {
                        Ok(request) => {
                            let is_batch = matches!(request, Request::Batch(_));
                            if matches!(request, Request::Hello(_))
                                && take_one(&state.part_on_hello)
                            {
                                state.hellos.fetch_add(1, Ordering::SeqCst);
                                encode_error(
                                    &mut out,
                                    0,
                                    ErrorCode::ServerBusy,
                                    "too many connections; retry later",
                                );
                                let _ = stream.write_all(&out);
                                return;
                            }
                            if is_batch {
                                batches_seen += 1;
                                let at = state.part_at_batch.load(Ordering::SeqCst);
                                if at != 0
                                    && batches_seen == at
                                    && state
                                        .part_at_batch
                                        .compare_exchange(at, 0, Ordering::SeqCst, Ordering::SeqCst)
                                        .is_ok()
                                {
                                    let _ = stream.write_all(&out);
                                    part(&mut stream, state);
                                    return;
                                }
                            }
                            if is_batch && take_one(&state.part_on_batch) {
                                let _ = stream.write_all(&out);
                                part(&mut stream, state);
                                return;
                            }
                            let hello = hello.get_or_insert_with(|| {
                                state.hello.lock().unwrap().clone().expect("set at start")
                            });
                            let is_hello = matches!(request, Request::Hello(_));
                            if !handle(request, frame.request_id, core, hello, state, &mut out) {
                                return; // drop the connection without replying
                            }
                            if is_hello && take_one(&state.part_after_hello) {
                                let message = "the server is shutting down";
                                encode_error(&mut out, 0, ErrorCode::ShuttingDown, message);
                                let _ = stream.write_all(&out);
                                state.parted_connections.fetch_add(1, Ordering::SeqCst);
                                return;
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
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(count) => {
                    buf.extend_from_slice(&chunk[..count]);
                    break;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if buf.is_empty() && state.part_idle.load(Ordering::SeqCst) {
                        part(&mut stream, state);
                        return;
                    }
                    if state.port_closed(core) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// Takes one from a countdown; false once it is at zero.
/// tallyd's refusal of a new idempotency key while its idempotency memory is full.
const TABLE_FULL: &str = "idempotency table full: the core holding this key remembers its \
    limit of 20 keys (tallyd --idempotency-max-keys), all inside the 600 s window; nothing \
    applied, call again later (under the same key if it is your own)";

fn take_one(countdown: &AtomicU32) -> bool {
    countdown
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
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
        Request::Hello(_) => {
            state.hellos.fetch_add(1, Ordering::SeqCst);
            hello.encode(out, request_id).unwrap()
        }
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
            if let Some(key) = batch.idempotency_key {
                state.keyed_frames.fetch_add(1, Ordering::SeqCst);
                let cores = hello.core_count();
                if core
                    .is_some_and(|core| tally_protocol::idempotency_home_core(key, cores) != core)
                {
                    state.keys_homed_elsewhere.fetch_add(1, Ordering::SeqCst);
                }
            }
            let results = match batch
                .idempotency_key
                .and_then(|key| state.idempotency.lock().unwrap().get(&key).cloned())
            {
                Some(_) if take_one(&state.full_on_known_key) => {
                    encode_error(out, request_id, ErrorCode::ServerBusy, TABLE_FULL);
                    return true;
                }
                None if batch.idempotency_key.is_some() && take_one(&state.full_on_new_key) => {
                    encode_error(out, request_id, ErrorCode::ServerBusy, TABLE_FULL);
                    return true;
                }
                Some(_) if take_one(&state.busy_on_duplicate) => {
                    state.busy_replies.fetch_add(1, Ordering::SeqCst);
                    encode_error(
                        out,
                        request_id,
                        ErrorCode::ServerBusy,
                        "a request with this idempotency key is still running; retry",
                    );
                    return true;
                }
                Some(results) => {
                    state.duplicate_batches.fetch_add(1, Ordering::SeqCst);
                    results
                }
                None => {
                    let results: Vec<OpReply> = batch
                        .ops()
                        .map(|op| {
                            if op.key() == b"refused" {
                                // The journal refuses mutations: nothing applied.
                                return OpReply::error(Status::Unavailable, 1);
                            }
                            let unavailable = op.key() == b"unavailable";
                            let reply = apply(state, op);
                            // Applied in memory, but the journal failed: outcome unknown.
                            if unavailable {
                                OpReply::error(Status::Unavailable, 0)
                            } else {
                                reply
                            }
                        })
                        .collect();
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
            if take_one(&state.drop_after_apply) {
                if state.closed_ports_after_apply.load(Ordering::SeqCst) {
                    let mut closed = state.closed_ports.lock().unwrap();
                    closed.insert(None);
                    closed.extend((0..hello.shard_ports.len()).map(Some));
                }
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
        Op::GetBound { key, bound } => {
            let counter = counters.get(key);
            let read = counter.and_then(|counter| match bound {
                Bound::Floor => counter.floor,
                Bound::Ceiling => counter.ceiling,
            });
            OpReply::ok(read.unwrap_or(0), read.is_some(), false)
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
