//! Idempotent retries against a real `tallyd`, through the raw codec so the test picks the
//! 128-bit keys: a retry with the same key returns the first reply and applies nothing
//! twice, on the same connection, on another connection and on another core's port, and
//! across a graceful restart and a `kill -9` (the journal carries the keys); a key
//! reused for other operations is refused wherever the batches start, and a full
//! idempotency table refuses new keys rather than forgetting old ones.

use std::net::SocketAddr;
use std::time::Duration;

use tally_client::{Durability, Op, Status};
use tally_protocol::{encode_batch, OpReply};
use tally_tests::{add, RawConnection, RawReply, Tallyd};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

fn batch_reply(reply: RawReply) -> Vec<OpReply> {
    match reply {
        RawReply::Batch(results) => results,
        other => panic!("expected a batch reply, got {other:?}"),
    }
}

/// Sends a durable batch with `key` and returns its results.
fn durable_batch(connection: &mut RawConnection, key: u128, ops: &[Op<&str>]) -> Vec<OpReply> {
    let request_id = connection.request_id();
    let mut frame = Vec::new();
    encode_batch(&mut frame, request_id, Durability::Durable, Some(key), ops).unwrap();
    connection.send(&frame);
    batch_reply(connection.reply_to(request_id))
}

fn get(addr: SocketAddr, key: &str) -> i64 {
    let (mut connection, _) = RawConnection::open(addr);
    let results = connection.batch_results(&[Op::Get { key }]);
    assert_eq!(results[0].status, Status::Ok);
    results[0].value
}

#[test]
fn a_retry_with_the_same_key_returns_the_first_reply_and_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tallyd::start(dir.path(), &["--cores", "2"]);
    let (mut main, hello) = RawConnection::open(server.addr);

    // Keys on both cores, so the batch is split inside the server.
    let keys: Vec<String> = (0..16).map(|index| format!("likes:{index}")).collect();
    let owners: std::collections::BTreeSet<usize> = keys
        .iter()
        .map(|key| hello.owner_of_key(key.as_bytes()))
        .collect();
    assert_eq!(owners.len(), 2);
    let mut ops: Vec<Op<&str>> = keys.iter().map(|key| add(key.as_str(), 5)).collect();
    ops.push(Op::Get { key: "likes:0" });
    let idempotency_key = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;

    let first = batch_reply(main.batch(Some(idempotency_key), &ops));
    assert!(first[..16]
        .iter()
        .all(|result| *result == OpReply::ok(5, false, false)));
    assert_eq!(first[16], OpReply::ok(5, true, false));

    // The same batch again: same connection, a new connection on the main port, and each
    // core's own shard port. Every retry gets the first reply; nothing applies again.
    assert_eq!(batch_reply(main.batch(Some(idempotency_key), &ops)), first);
    let mut addrs = vec![server.addr];
    addrs.extend(
        hello
            .shard_ports
            .iter()
            .map(|&port| SocketAddr::new(server.addr.ip(), port)),
    );
    for addr in addrs {
        let (mut retry, _) = RawConnection::open(addr);
        assert_eq!(
            batch_reply(retry.batch(Some(idempotency_key), &ops)),
            first,
            "via {addr}"
        );
    }
    for key in &keys {
        assert_eq!(get(server.addr, key), 5, "{key}");
    }

    // Another key is another request: it applies.
    let second = batch_reply(main.batch(Some(idempotency_key + 1), &ops));
    assert_eq!(second[0], OpReply::ok(10, true, false));
    // No key at all: applies every time.
    let unkeyed = main.batch_results(&ops);
    assert_eq!(unkeyed[0], OpReply::ok(15, true, false));
    assert_eq!(get(server.addr, "likes:15"), 15);
}

/// Applies one keyed batch, restarts the server (`restart`), retries it, and checks it
/// applied once.
fn retry_after(restart: impl FnOnce(&mut Tallyd)) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Tallyd::start(dir.path(), &["--cores", "2", "--durability", "durable"]);
    let ops = [add("likes:photo", 1), add("likes:video", 3)];
    let idempotency_key = 0xfeed_u128 << 64 | 0xbeef;
    let first = {
        let (mut connection, _) = RawConnection::open(server.addr);
        durable_batch(&mut connection, idempotency_key, &ops)
    };
    assert_eq!(first[0], OpReply::ok(1, false, false));
    assert_eq!(first[1], OpReply::ok(3, false, false));

    restart(&mut server);
    let server = Tallyd::start(dir.path(), &["--cores", "2", "--durability", "durable"]);
    assert_eq!(
        get(server.addr, "likes:photo"),
        1,
        "the increment survived the restart"
    );
    let (mut connection, _) = RawConnection::open(server.addr);
    let retried = durable_batch(&mut connection, idempotency_key, &ops);
    assert_eq!(retried, first, "the retry returns the first reply");
    assert_eq!(
        get(server.addr, "likes:photo"),
        1,
        "the retry applied nothing"
    );
    assert_eq!(
        get(server.addr, "likes:video"),
        3,
        "the retry applied nothing"
    );
}

#[test]
fn a_retry_after_a_graceful_restart_applies_nothing_twice() {
    retry_after(|server| {
        let status = server.signal_and_wait(libc::SIGTERM, SHUTDOWN_TIMEOUT);
        assert!(status.success(), "tallyd exited with {status}");
    });
}

#[test]
fn a_retry_after_kill_9_applies_nothing_twice() {
    retry_after(Tallyd::kill9);
}

/// A key reused after a `kill -9` for a batch with other operations is refused, as it
/// is before a restart, even when the key's home core (the owner of the batch's first
/// key) journaled nothing of the first batch: the fingerprint travels in every core's
/// records. The first batch still replays, and nothing applies twice.
#[test]
fn a_key_reused_for_other_operations_after_kill_9_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--cores", "2", "--durability", "durable"];
    let mut server = Tallyd::start(dir.path(), &args);
    let (mut connection, hello) = RawConnection::open(server.addr);
    // The first key (a read: no record) on one core, the increment on the other.
    let names: Vec<String> = (0..64).map(|index| format!("views:{index}")).collect();
    let home = names[0].as_str();
    let other = names
        .iter()
        .find(|name| hello.owner_of_key(name.as_bytes()) != hello.owner_of_key(home.as_bytes()))
        .expect("64 keys span both cores")
        .as_str();
    let ops = [Op::Get { key: home }, add(other, 1)];
    let idempotency_key = 0xabad_1dea_u128 << 32;
    let first = durable_batch(&mut connection, idempotency_key, &ops);
    assert_eq!(first[1], OpReply::ok(1, false, false));

    server.kill9();
    let server = Tallyd::start(dir.path(), &args);
    let (mut connection, _) = RawConnection::open(server.addr);
    let mut frame = Vec::new();
    let request_id = connection.request_id();
    let reused = [Op::Get { key: home }, add(other, 5)];
    encode_batch(
        &mut frame,
        request_id,
        Durability::Durable,
        Some(idempotency_key),
        &reused,
    )
    .unwrap();
    connection.send(&frame);
    match connection.reply_to(request_id) {
        RawReply::Error { code, message } => {
            assert_eq!(code.to_u16(), 12, "{message}");
        }
        other => panic!("expected IdempotencyKeyReused, got {other:?}"),
    }
    assert_eq!(
        get(server.addr, other),
        1,
        "the refused batch applied nothing"
    );
    let retried = durable_batch(&mut connection, idempotency_key, &ops);
    assert_eq!(retried[1], first[1], "the first batch still replays");
    assert_eq!(get(server.addr, other), 1, "and applies nothing twice");
}

/// A retry sent across a core-count change applies nothing twice: the change sets the
/// old journals aside, and the new cores read them for idempotency keys at start.
#[test]
fn a_retry_across_a_core_count_change_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Tallyd::start(dir.path(), &["--cores", "2", "--durability", "durable"]);
    let (mut connection, hello) = RawConnection::open(server.addr);
    let names: Vec<String> = (0..16).map(|index| format!("plays:{index}")).collect();
    let owners: std::collections::BTreeSet<usize> = names
        .iter()
        .map(|name| hello.owner_of_key(name.as_bytes()))
        .collect();
    assert_eq!(owners.len(), 2, "the batch spans both cores");
    let ops: Vec<Op<&str>> = names.iter().map(|name| add(name.as_str(), 7)).collect();
    let idempotency_key = 0x5eed_u128 << 80;
    let first = durable_batch(&mut connection, idempotency_key, &ops);
    server.kill9();

    for cores in ["1", "2"] {
        // 2 -> 1, then 1 -> 2: the retry on 1 core journals nothing (every operation
        // is answered from the record), so the second change must still find the
        // first change's generation of set-aside journals.
        let mut server = Tallyd::start(dir.path(), &["--cores", cores, "--durability", "durable"]);
        let (mut connection, _) = RawConnection::open(server.addr);
        let retried = durable_batch(&mut connection, idempotency_key, &ops);
        assert_eq!(
            retried, first,
            "{cores} core(s): the retry returns the first reply"
        );
        for name in &names {
            assert_eq!(
                get(server.addr, name),
                7,
                "{cores} core(s): {name} applied once"
            );
        }
        server.kill9();
    }
}

/// After a `kill -9`, a retry gets the first attempt's results for every operation,
/// not only its mutations: a read returns what it read then, a refusal stays a refusal
/// (and applies nothing), even when the counters changed in between.
#[test]
fn a_retry_after_kill_9_gets_the_first_reads_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--cores", "2", "--durability", "durable"];
    let mut server = Tallyd::start(dir.path(), &args);
    let (mut setup, _) = RawConnection::open(server.addr);
    let ceiling = |key, ceiling| Op::SetBounds {
        key,
        floor: None,
        ceiling,
    };
    setup.batch_results(&[add("seen", 3), add("full", 10), ceiling("full", Some(10))]);
    let ops = [
        add("likes", 1),
        Op::Get { key: "seen" },
        add("full", 5),
        Op::Delete { key: "missing" },
    ];
    let idempotency_key = 0x0dd_ba11_u128 << 64;
    let (mut connection, _) = RawConnection::open(server.addr);
    let first = durable_batch(&mut connection, idempotency_key, &ops);
    assert_eq!(first[1], OpReply::ok(3, true, false));
    assert_eq!(first[2].status, Status::AboveCeiling);
    server.kill9();

    let server = Tallyd::start(dir.path(), &args);
    let (mut between, _) = RawConnection::open(server.addr);
    between.batch_results(&[add("seen", 1), ceiling("full", None), add("missing", 2)]);
    let (mut connection, _) = RawConnection::open(server.addr);
    let retried = durable_batch(&mut connection, idempotency_key, &ops);
    assert_eq!(retried, first, "the retry gets the first attempt's results");
    assert_eq!(get(server.addr, "likes"), 1, "applied once");
    assert_eq!(
        get(server.addr, "full"),
        10,
        "the refused add stays refused"
    );
    assert_eq!(
        get(server.addr, "missing"),
        2,
        "the delete did not run again"
    );
}

/// The error a batch was answered with: its code and message.
fn error_reply(reply: RawReply) -> (u16, String) {
    match reply {
        RawReply::Error { code, message } => (code.to_u16(), message),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// A key reused for a batch whose first key lives on another core than the first
/// batch's is refused too: a key's home core depends on the idempotency key alone, so
/// both batches meet the same record.
#[test]
fn a_key_reused_for_a_batch_starting_on_another_core_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Tallyd::start(dir.path(), &["--cores", "2"]);
    let (mut connection, hello) = RawConnection::open(server.addr);
    let names: Vec<String> = (0..64).map(|index| format!("votes:{index}")).collect();
    let first_key = names[0].as_str();
    let other_key = names
        .iter()
        .find(|name| {
            hello.owner_of_key(name.as_bytes()) != hello.owner_of_key(first_key.as_bytes())
        })
        .expect("64 keys span both cores")
        .as_str();
    let first_ops = [add(first_key, 5)];
    for idempotency_key in [0x5eed_u128, 0x5eed_u128 << 96 | 1, u128::MAX - 7] {
        let first = batch_reply(connection.batch(Some(idempotency_key), &first_ops));
        assert_eq!(first, [OpReply::ok(5, false, false)]);
        let (code, message) =
            error_reply(connection.batch(Some(idempotency_key), &[add(other_key, 7)]));
        assert_eq!(code, 12, "IdempotencyKeyReused: {message}");
        assert_eq!(get(server.addr, other_key), 0, "the reuse applied nothing");
        // From either core's port, the first batch still replays.
        for &port in &hello.shard_ports {
            let (mut retry, _) = RawConnection::open(SocketAddr::new(server.addr.ip(), port));
            let replayed = batch_reply(retry.batch(Some(idempotency_key), &first_ops));
            assert_eq!(replayed, first, "via port {port}");
        }
        assert_eq!(get(server.addr, first_key), 5, "applied once");
        let reset = connection.batch_results(&[Op::Delete { key: first_key }]);
        assert_eq!(reset[0].status, Status::Ok);
    }
}

/// With the idempotency table full of keys inside their window, a new key is refused
/// (`ServerBusy` naming the limit and its flag, nothing applied) instead of an old key
/// being forgotten: the old keys still replay and nothing applies twice. Once the
/// window has passed, the refused key is accepted. Two cores, so a key whose home is
/// the other core is refused through the mesh too.
#[test]
fn a_full_table_refuses_new_keys_and_forgets_none_inside_the_window() {
    const WINDOW: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--cores",
        "2",
        "--idempotency-max-keys",
        "2",
        "--idempotency-window-s",
        "4",
    ];
    let server = Tallyd::start(dir.path(), &args);
    let start = std::time::Instant::now();
    let (mut connection, hello) = RawConnection::open(server.addr);
    let counter = |index: u128| format!("orders:{index}");
    // Two keys per core fit: a refusal comes by the fifth new key at the latest.
    let mut accepted = Vec::new();
    let refused = (1..=5u128)
        .find(|&index| {
            let name = counter(index);
            match connection.batch(Some(index), &[add(name.as_str(), 1)]) {
                RawReply::Batch(results) => {
                    assert_eq!(results, [OpReply::ok(1, false, false)]);
                    accepted.push(index);
                    false
                }
                other => {
                    let (code, message) = error_reply(other);
                    assert_eq!(code, 6, "ServerBusy: {message}");
                    assert!(message.contains("--idempotency-max-keys"), "{message}");
                    true
                }
            }
        })
        .expect("at most four keys fit two cores of two");
    assert!(accepted.len() >= 2, "{accepted:?}");
    assert!(
        start.elapsed() < WINDOW,
        "the machine is too slow for this test"
    );
    let refused_name = counter(refused);
    // Refused again from each core's port, one of which is not its home.
    for &port in &hello.shard_ports {
        let (mut other, _) = RawConnection::open(SocketAddr::new(server.addr.ip(), port));
        let reply = other.batch(Some(refused), &[add(refused_name.as_str(), 1)]);
        assert_eq!(error_reply(reply).0, 6, "via port {port}");
    }
    assert_eq!(
        get(server.addr, &refused_name),
        0,
        "a refusal applies nothing"
    );
    // Every accepted key still replays: nothing was forgotten, nothing applies twice.
    for &index in &accepted {
        let name = counter(index);
        let replayed = batch_reply(connection.batch(Some(index), &[add(name.as_str(), 1)]));
        assert_eq!(replayed, [OpReply::ok(1, false, false)], "key {index}");
        assert_eq!(get(server.addr, &name), 1, "key {index} applied once");
    }
    assert!(
        start.elapsed() < WINDOW,
        "the machine is too slow for this test"
    );
    let refusals: u64 = hello
        .shard_ports
        .iter()
        .map(|&port| {
            let (mut shard, _) = RawConnection::open(SocketAddr::new(server.addr.ip(), port));
            tally_tests::stat(&shard.stats(), "idempotency_full_refusals")
        })
        .sum();
    assert_eq!(refusals, 3);

    // Past the window the old keys leave, and the refused key is accepted.
    std::thread::sleep(WINDOW.saturating_sub(start.elapsed()) + Duration::from_secs(1));
    let results = batch_reply(connection.batch(Some(refused), &[add(refused_name.as_str(), 1)]));
    assert_eq!(results, [OpReply::ok(1, false, false)]);
    assert_eq!(get(server.addr, &refused_name), 1);
}

/// The stored results are bounded in bytes as well: a table holding a largest batch's
/// results has no room to reserve another largest batch, which is refused with the
/// limit's flag named and nothing applied, while a small new batch still fits (the
/// stored results are compact) and the large one replays.
#[test]
fn a_table_full_of_reply_bytes_refuses_new_keys() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--cores", "1", "--idempotency-max-reply-bytes", "100000"];
    let server = Tallyd::start(dir.path(), &args);
    let (mut connection, _) = RawConnection::open(server.addr);
    let largest = tally_protocol::BATCH_OPS_MAX;
    let first_ops = vec![add("stock:a", 1); largest];
    let first = batch_reply(connection.batch(Some(1), &first_ops));
    assert_eq!(first[largest - 1], OpReply::ok(largest as i64, true, false));

    let (code, message) = error_reply(connection.batch(Some(2), &vec![add("stock:b", 1); largest]));
    assert_eq!(code, 6, "ServerBusy: {message}");
    assert!(
        message.contains("--idempotency-max-reply-bytes"),
        "{message}"
    );
    assert_eq!(get(server.addr, "stock:b"), 0, "a refusal applies nothing");

    let small = batch_reply(connection.batch(Some(3), &[add("stock:b", 1)]));
    assert_eq!(small, [OpReply::ok(1, false, false)]);
    assert_eq!(batch_reply(connection.batch(Some(1), &first_ops)), first);
    assert_eq!(get(server.addr, "stock:a"), largest as i64, "applied once");
}
