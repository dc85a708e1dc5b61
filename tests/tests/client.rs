//! The blocking native client against a real `tallyd`: every operation, bounds, overflow,
//! invalid keys, a 10,000-operation batch across both cores checked against a `HashMap`
//! model, and shard awareness (connections to the shard ports, no cross-core hops).
//!
//! Each test starts its own two-core server in its own temporary data directory.

use std::collections::{BTreeSet, HashMap};

use tally_client::{
    BoundPolicy, Client, ClientConfig, ClientError, Op, OpResult, Outcome, Rejection, Status,
};
use tally_protocol::partition_of;
use tally_tests::{add, key_per_core, stat, RawConnection, Rng, Tallyd};

/// Starts a two-core server (both cores whatever the machine has) and connects a client.
fn server_and_client() -> (tempfile::TempDir, Tallyd, Client) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2"]);
    let client = Client::connect(server.addr).expect("connect");
    (dir, server, client)
}

fn rejected(status: Status, detail: i64) -> ClientError {
    ClientError::Rejected(Rejection { status, detail })
}

/// Asserts `result` is the rejection `status` with `detail`.
#[track_caller]
fn assert_rejected<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    status: Status,
    detail: i64,
) {
    match result {
        Err(ClientError::Rejected(rejection)) => {
            assert_eq!(rejection, Rejection { status, detail }, "{rejection}");
        }
        other => panic!("expected {:?}, got {other:?}", rejected(status, detail)),
    }
}

#[test]
fn every_operation_round_trips() {
    let (_dir, _server, mut client) = server_and_client();

    // A missing counter reads 0; only `exists` tells it from a counter holding 0.
    assert_eq!(client.get("page:home").unwrap(), 0);
    assert!(!client.exists("page:home").unwrap());
    assert_eq!(client.incr("page:home", 5).unwrap(), 5);
    assert!(client.exists("page:home").unwrap());
    assert_eq!(client.incr("page:home", 1).unwrap(), 6);
    assert_eq!(client.incr("page:home", -10).unwrap(), -4);
    assert_eq!(client.incr("page:home", 0).unwrap(), -4);
    assert_eq!(client.decr("page:home", 3).unwrap(), -7);
    assert_eq!(client.decr("page:home", -20).unwrap(), 13);
    assert_eq!(client.incr("page:home", 1 << 40).unwrap(), (1 << 40) + 13);
    assert_eq!(client.get("page:home").unwrap(), (1 << 40) + 13);

    // Set (reset) and a counter that holds 0 but exists.
    assert_eq!(client.set("page:home", -42).unwrap(), -42);
    assert_eq!(client.get("page:home").unwrap(), -42);
    assert_eq!(client.set("zero", 0).unwrap(), 0);
    assert!(client.exists("zero").unwrap());
    assert_eq!(client.get("zero").unwrap(), 0);

    // Delete returns the value it had; a missing counter is not an error.
    assert_eq!(client.del("page:home").unwrap(), Some(-42));
    assert_eq!(client.del("page:home").unwrap(), None);
    assert!(!client.exists("page:home").unwrap());
    assert_eq!(client.get("page:home").unwrap(), 0);
    assert_eq!(client.incr("page:home", 2).unwrap(), 2);

    // The full outcome carries `existed`.
    let created = client.execute(&add("fresh", 3)).unwrap();
    assert_eq!(created, outcome(3, false, false));
    let again = client.execute(&add("fresh", 3)).unwrap();
    assert_eq!(again, outcome(6, true, false));

    // Keys are bytes: binary, NUL, non-UTF-8 and the longest allowed key all work.
    let longest = vec![b'k'; 255];
    for key in [
        &b"\x00\xff\x01"[..],
        b"caf\xc3\xa9",
        b" spaced key ",
        &longest,
    ] {
        assert_eq!(client.incr(key, 7).unwrap(), 7, "key {key:?}");
        assert_eq!(client.get(key).unwrap(), 7, "key {key:?}");
    }
    client.ping().unwrap();
}

fn outcome(value: i64, existed: bool, clamped: bool) -> Outcome {
    Outcome {
        value,
        existed,
        clamped,
    }
}

#[test]
fn bounds_reject_or_clamp_and_leave_the_value_unchanged() {
    let (_dir, _server, mut client) = server_and_client();

    // Likes: never negative. Bounds on a missing counter create it at 0.
    let bounds = client.set_bounds("likes", Some(0), None).unwrap();
    assert_eq!(bounds.value, 0);
    assert_rejected(client.decr("likes", 1), Status::BelowFloor, 0);
    assert_eq!(client.get("likes").unwrap(), 0);
    assert_eq!(client.incr("likes", 2).unwrap(), 2);
    assert_rejected(client.decr("likes", 3), Status::BelowFloor, 0);
    assert_eq!(client.get("likes").unwrap(), 2);
    assert_rejected(client.set("likes", -1), Status::BelowFloor, 0);
    assert_eq!(client.get("likes").unwrap(), 2);

    // The clamp policy applies up to the bound and says so.
    let clamped = client
        .execute(&Op::Add {
            key: "likes",
            delta: -10,
            policy: BoundPolicy::Clamp,
        })
        .unwrap();
    assert_eq!(clamped, outcome(0, true, true));
    let unclamped = client
        .execute(&Op::Add {
            key: "likes",
            delta: 4,
            policy: BoundPolicy::Clamp,
        })
        .unwrap();
    assert_eq!(unclamped, outcome(4, true, false));

    // A ceiling, as a rate limiter uses it.
    client.set_bounds("rate", Some(0), Some(10)).unwrap();
    assert_eq!(client.incr("rate", 10).unwrap(), 10);
    assert_rejected(client.incr("rate", 1), Status::AboveCeiling, 10);
    assert_eq!(client.get("rate").unwrap(), 10);
    assert_rejected(client.set("rate", 11), Status::AboveCeiling, 10);
    let set_clamped = client
        .execute(&Op::Set {
            key: "rate",
            value: 99,
            policy: BoundPolicy::Clamp,
        })
        .unwrap();
    assert_eq!(set_clamped, outcome(10, true, true));

    // Bounds that contradict each other or the current value are refused, nothing changes.
    assert_rejected(
        client.set_bounds("rate", Some(5), Some(1)),
        Status::InvalidBounds,
        5,
    );
    assert_rejected(
        client.set_bounds("rate", Some(0), Some(5)),
        Status::OutOfBounds,
        10,
    );
    assert_rejected(client.incr("rate", 1), Status::AboveCeiling, 10);

    // Clearing the bounds lifts them; deleting a counter removes its bounds.
    client.set_bounds("rate", None, None).unwrap();
    assert_eq!(client.incr("rate", 1).unwrap(), 11);
    assert_eq!(client.del("likes").unwrap(), Some(4));
    assert_eq!(client.decr("likes", 1).unwrap(), -1);
}

#[test]
fn overflow_at_either_end_is_refused_and_changes_nothing() {
    let (_dir, _server, mut client) = server_and_client();

    client.set("high", i64::MAX).unwrap();
    assert_rejected(client.incr("high", 1), Status::Overflow, 0);
    assert_rejected(client.incr("high", i64::MAX), Status::Overflow, 0);
    assert_eq!(client.get("high").unwrap(), i64::MAX);
    assert_eq!(client.decr("high", 1).unwrap(), i64::MAX - 1);

    client.set("low", i64::MIN).unwrap();
    assert_rejected(client.decr("low", 1), Status::Overflow, 0);
    assert_rejected(client.incr("low", i64::MIN), Status::Overflow, 0);
    assert_eq!(client.get("low").unwrap(), i64::MIN);
    assert_eq!(client.incr("low", 1).unwrap(), i64::MIN + 1);

    // `decr` by i64::MIN has no negation: refused before anything is sent.
    client.set("edge", 0).unwrap();
    assert_rejected(client.decr("edge", i64::MIN), Status::Overflow, 0);
    assert_eq!(client.get("edge").unwrap(), 0);
    // But adding i64::MIN to 0 is representable.
    assert_eq!(client.incr("edge", i64::MIN).unwrap(), i64::MIN);

    // In a batch, one overflow does not affect its neighbours.
    client.set("high", i64::MAX).unwrap();
    let results = client
        .batch(&[add("high", 1), add("other", 1), add("high", -2)])
        .unwrap();
    assert_eq!(results[0], Err(Rejection::from_status(Status::Overflow)));
    assert_eq!(results[1], Ok(outcome(1, false, false)));
    assert_eq!(results[2], Ok(outcome(i64::MAX - 2, true, false)));
}

/// `Rejection` with a zero detail, for statuses that carry none.
trait FromStatus {
    fn from_status(status: Status) -> Self;
}

impl FromStatus for Rejection {
    fn from_status(status: Status) -> Self {
        Rejection { status, detail: 0 }
    }
}

#[test]
fn invalid_keys_are_clear_errors_and_the_client_stays_usable() {
    let (_dir, _server, mut client) = server_and_client();

    // An empty key is refused before sending, as the error's docs say.
    for result in [client.incr("", 1), client.get("")] {
        match result {
            Err(ClientError::InvalidKey { length: 0 }) => {}
            other => panic!("expected InvalidKey {{ length: 0 }}, got {other:?}"),
        }
    }
    let message = client.incr("", 1).unwrap_err().to_string();
    assert!(message.contains("invalid key"), "{message}");

    // A 256-byte key cannot be encoded: refused before sending, naming the length.
    let too_long = vec![b'x'; 256];
    match client.incr(&too_long, 1) {
        Err(ClientError::InvalidKey { length: 256 }) => {}
        other => panic!("expected InvalidKey {{ length: 256 }}, got {other:?}"),
    }
    let message = client.get(&too_long).unwrap_err().to_string();
    assert!(message.contains("256"), "{message}");
    // A batch with one such key sends nothing at all.
    let err = client
        .batch(&[add(&b"ok"[..], 1), add(&too_long[..], 1)])
        .unwrap_err();
    assert!(
        matches!(err, ClientError::InvalidKey { length: 256 }),
        "{err:?}"
    );
    assert!(!client.exists("ok").unwrap());

    // So does a batch with an empty key: nothing of it is sent.
    let err = client.batch(&[add("", 1), add("ok", 1)]).unwrap_err();
    assert!(
        matches!(err, ClientError::InvalidKey { length: 0 }),
        "{err:?}"
    );
    assert!(!client.exists("ok").unwrap());
    assert_eq!(client.incr("ok", 1).unwrap(), 1);
}

/// A random operation on one of `keys`, and the result the model expects.
fn model_step(
    rng: &mut Rng,
    keys: &[String],
    model: &mut HashMap<String, i64>,
) -> (Op<String>, OpResult) {
    let key = keys[rng.below(keys.len() as u64) as usize].clone();
    let old = model.get(&key).copied();
    let existed = old.is_some();
    let before = old.unwrap_or(0);
    let (op, value) = match rng.below(10) {
        0..=4 => {
            let delta = rng.between(-1_000, 1_000);
            model.insert(key.clone(), before + delta);
            (add(key, delta), before + delta)
        }
        5 => {
            let value = rng.between(-1_000_000, 1_000_000);
            model.insert(key.clone(), value);
            let policy = BoundPolicy::Reject;
            (Op::Set { key, value, policy }, value)
        }
        6 | 7 => (Op::Get { key }, before),
        8 => {
            model.remove(&key);
            (Op::Delete { key }, before)
        }
        _ => (Op::Exists { key }, i64::from(existed)),
    };
    (op, Ok(outcome(value, existed, false)))
}

#[test]
fn a_full_batch_across_both_cores_matches_a_model() {
    let (_dir, _server, mut client) = server_and_client();
    let map = client.shard_map().clone();
    assert_eq!(map.core_count(), 2);

    let keys: Vec<String> = (0..600).map(|index| format!("model:{index}")).collect();
    let partitions: BTreeSet<u32> = keys
        .iter()
        .map(|key| partition_of(key.as_bytes(), map.partition_count))
        .collect();
    assert_eq!(
        partitions.len(),
        map.partition_count as usize,
        "keys miss partitions"
    );

    let mut rng = Rng::from_env(0x7a11_7e57);
    let mut model = HashMap::new();
    for round in 0..3 {
        let (ops, expected): (Vec<_>, Vec<_>) = (0..tally_protocol::BATCH_OPS_MAX)
            .map(|_| model_step(&mut rng, &keys, &mut model))
            .unzip();
        let cores: BTreeSet<usize> = ops.iter().map(|op| client.route(op.key())).collect();
        assert_eq!(cores.len(), 2, "the batch must span both cores");
        // Round 0 as one batch; then pipelined small frames, then one op per frame.
        let results = match round {
            0 => client.batch(&ops).unwrap(),
            1 => client
                .pipeline()
                .ops_per_frame(37)
                .extend_ops(&ops)
                .execute()
                .unwrap(),
            _ => client
                .batch_framed(&ops, tally_client::Durability::ServerDefault, 1)
                .unwrap(),
        };
        assert_eq!(results.len(), ops.len());
        for (index, ((op, result), expected)) in ops.iter().zip(&results).zip(&expected).enumerate()
        {
            assert_eq!(result, expected, "round {round} op {index}: {op:?}");
        }
    }

    // Every counter reads back as the model says, and deleted ones do not exist.
    let reads: Vec<Op<&str>> = keys
        .iter()
        .map(|key| Op::Get { key: key.as_str() })
        .collect();
    let results = client.batch(&reads).unwrap();
    for (key, result) in keys.iter().zip(results) {
        let expected = model.get(key).copied();
        let expected = outcome(expected.unwrap_or(0), expected.is_some(), false);
        assert_eq!(result, Ok(expected), "key {key}");
    }
}

/// Queues every operation of `ops` on a pipeline.
trait ExtendOps {
    fn extend_ops(&mut self, ops: &[Op<String>]) -> &mut Self;
}

impl ExtendOps for tally_client::Pipeline<'_> {
    fn extend_ops(&mut self, ops: &[Op<String>]) -> &mut Self {
        for op in ops {
            self.push(op);
        }
        self
    }
}

/// Statistics of every core, each read on that core's own shard port.
fn stats_per_core(server: &Tallyd, shard_ports: &[u16]) -> Vec<Vec<(String, u64)>> {
    shard_ports
        .iter()
        .map(|&port| {
            let addr = std::net::SocketAddr::new(server.addr.ip(), port);
            RawConnection::open(addr).0.stats()
        })
        .collect()
}

#[test]
fn the_client_talks_to_each_core_on_its_shard_port() {
    let (_dir, server, mut client) = server_and_client();
    let map = client.shard_map().clone();
    assert_eq!(client.connection_count(), 2);
    assert_eq!(map.core_count(), 2);
    let ports: BTreeSet<u16> = map.shard_ports.iter().copied().collect();
    assert_eq!(
        ports.len(),
        2,
        "each core has its own port: {:?}",
        map.shard_ports
    );
    assert!(!ports.contains(&0) && !ports.contains(&server.addr.port()));

    // Routing follows the shard map, and the keys below land on both cores.
    let keys: Vec<String> = (0..200).map(|index| format!("shard:{index}")).collect();
    for key in &keys {
        let partition = partition_of(key.as_bytes(), map.partition_count);
        assert_eq!(
            client.route(key.as_bytes()),
            usize::from(map.owners[partition as usize])
        );
    }
    let owned_by_core_1 = keys
        .iter()
        .filter(|key| client.route(key.as_bytes()) == 1)
        .count();
    assert!(owned_by_core_1 > 0 && owned_by_core_1 < keys.len());

    let before = stats_per_core(&server, &map.shard_ports);
    let ops: Vec<_> = keys.iter().map(|key| add(key.as_str(), 3)).collect();
    for result in client.batch(&ops).unwrap() {
        assert_eq!(result, Ok(outcome(3, false, false)));
    }
    let after = stats_per_core(&server, &map.shard_ports);

    // The shard-aware client sent every key to its owner: no forwarding on either core,
    // and each core applied exactly the keys it owns.
    for core in 0..2 {
        let owned = keys
            .iter()
            .filter(|key| client.route(key.as_bytes()) == core)
            .count();
        let delta = |name| stat(&after[core], name) - stat(&before[core], name);
        assert_eq!(delta("ops_forwarded"), 0, "core {core} forwarded");
        assert_eq!(delta("ops_local"), owned as u64, "core {core}");
    }

    // A client that is not shard-aware goes through the main port; the results are the
    // same, and the server forwards what the accepting core does not own.
    let config = ClientConfig {
        shard_aware: false,
        ..ClientConfig::default()
    };
    let mut plain = Client::connect_with(server.addr, config).unwrap();
    assert_eq!(plain.connection_count(), 1);
    for result in plain.batch(&ops).unwrap() {
        assert_eq!(result, Ok(outcome(6, true, false)));
    }
    let last = stats_per_core(&server, &map.shard_ports);
    let forwarded: u64 = (0..2)
        .map(|core| stat(&last[core], "ops_forwarded") - stat(&after[core], "ops_forwarded"))
        .sum();
    assert!(
        forwarded > 0,
        "a batch over both cores via the main port forwards some ops"
    );
    for key in &keys {
        assert_eq!(client.get(key).unwrap(), 6, "key {key}");
    }
}

#[test]
fn calls_after_the_server_closed_an_idle_connection_reconnect_and_count_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2", "--read-timeout-ms", "200"]);
    let mut client = Client::connect(server.addr).unwrap();
    let keys: Vec<String> = (0..8).map(|index| format!("idle:{index}")).collect();
    for round in 1..=3 {
        // Idle past the server's read timeout: it closes both shard connections.
        std::thread::sleep(std::time::Duration::from_millis(600));
        for key in &keys {
            assert_eq!(client.incr(key, 1).unwrap(), round, "{key}");
        }
    }
    // Without retries the first call after the close may fail, but never counts twice,
    // and the call after it reconnects.
    let config = ClientConfig {
        retries: 0,
        ..ClientConfig::default()
    };
    let mut plain = Client::connect_with(server.addr, config).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let first = plain.incr(&keys[0], 1);
    let applied = i64::from(first.is_ok());
    if let Err(error) = &first {
        // Sent on a connection the server had closed: never applied, though a client
        // that saw its write accepted cannot know that (`OutcomeUnknown`).
        let unknown = matches!(error, ClientError::OutcomeUnknown { .. });
        assert!(error.is_transient() || unknown, "{error:?}");
    }
    assert_eq!(plain.incr(&keys[0], 1).unwrap(), 4 + applied);
}

/// Calls timed to land at the server's idle close, with automatic idempotency keys off
/// (the default): a call that crosses the parting frame was not applied (PROTOCOL.md,
/// "Closing"), so the client sends it again on a new connection. No call ends with an
/// unknown outcome, and every increment counts exactly once.
///
/// A regression guard against a real tallyd, not a proof: the client probes an idle
/// connection before sending, so a call crosses the parting frame only in a window of
/// microseconds, and a run may pass without any call crossing it. The crossing itself is
/// tested deterministically against the fake server (`net/client/tests/reconnect.rs`:
/// `blocking_a_mutation_without_a_key_answered_by_a_parting_error_is_resent_once`,
/// `blocking_frames_answered_before_a_parting_frame_are_not_resent`).
#[test]
fn calls_that_cross_the_idle_close_count_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let read_timeout = std::time::Duration::from_millis(50);
    let timeout_flag = read_timeout.as_millis().to_string();
    let server = Tallyd::start(
        dir.path(),
        &["--cores", "2", "--read-timeout-ms", &timeout_flag],
    );
    let mut client = Client::connect(server.addr).unwrap();
    assert!(!client.config().auto_idempotency_keys);
    let keys = key_per_core(client.shard_map(), "cross");
    let ops: Vec<Op<&str>> = keys.iter().map(|key| add(key.as_str(), 1)).collect();
    let mut count = 0;
    for idle in tally_tests::idle_times_around(read_timeout) {
        std::thread::sleep(idle);
        count += 1;
        // One frame to each core's connection, both idle for `idle`.
        let results = client
            .batch(&ops)
            .unwrap_or_else(|error| panic!("after {idle:?} idle: {error:?}"));
        for (key, result) in keys.iter().zip(results) {
            assert_eq!(result.unwrap().value, count, "{key} after {idle:?} idle");
        }
    }
    for key in &keys {
        assert_eq!(client.get(key).unwrap(), count, "{key}");
    }
}

/// At default client settings plain writes carry no idempotency key, so they are not
/// capped by the server's key memory: many more increments than
/// `--idempotency-max-keys` all succeed, and the server holds no key (review1 F1). With
/// automatic keys on, the cap applies, and a refusal is `NotApplied` at once.
#[test]
fn plain_writes_are_not_capped_by_the_idempotency_memory() {
    const KEYS_MAX: usize = 50;
    let dir = tempfile::tempdir().expect("temp dir");
    let max_keys = KEYS_MAX.to_string();
    let server = Tallyd::start(
        dir.path(),
        &["--cores", "2", "--idempotency-max-keys", &max_keys],
    );
    let mut client = Client::connect(server.addr).expect("connect");
    for index in 0..4 * KEYS_MAX {
        client
            .incr(format!("plain:{}", index % 7), 1)
            .unwrap_or_else(|error| panic!("increment {index}: {error}"));
    }
    let ops: Vec<Op<String>> = (0..300)
        .map(|index| add(format!("bulk:{index}"), 1))
        .collect();
    for round in 0..2 * KEYS_MAX {
        client
            .batch(&ops)
            .unwrap_or_else(|error| panic!("batch {round}: {error}"));
    }
    let stats = client.stats().unwrap();
    assert_eq!(stat(&stats, "idempotency_keys"), 0, "no key was kept");

    let config = ClientConfig {
        auto_idempotency_keys: true,
        ..ClientConfig::default()
    };
    let mut keyed = Client::connect_with(server.addr, config).expect("connect");
    let refused = (0..4 * KEYS_MAX)
        .map(|index| keyed.incr(format!("keyed:{index}"), 1))
        .find_map(Result::err)
        .expect("automatic keys are capped by --idempotency-max-keys");
    assert!(
        matches!(refused, ClientError::NotApplied { .. }),
        "{refused:?}"
    );
}

/// An address that refuses connections: a port bound and released again.
fn refusing_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// A name may resolve to several addresses (`localhost` to `::1` and `127.0.0.1`) of
/// which the server listens on one: the client tries each in turn and the first that
/// answers becomes its main address.
#[test]
fn connect_tries_every_address_a_name_resolves_to() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2"]);
    let candidates = [refusing_addr(), server.addr];
    let mut client = Client::connect(&candidates[..]).expect("connect over the second address");
    assert_eq!(client.incr("resolve:b", 1).unwrap(), 1);
    match Client::connect(&[refusing_addr()][..]) {
        Err(ClientError::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
}
