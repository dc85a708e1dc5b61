//! Reading a counter's bounds back, against a real `tallyd` with two cores on 127.0.0.1:
//! through the blocking and async clients (`get_bounds`), the `tally bounds KEY` command
//! and `floor KEY` / `ceiling KEY` lines of `tally batch` (plain and `--json`), and raw `GetBound` operations sent to the main port (so a key
//! of the other core is forwarded over the mesh). Every shape of bounds is read (none,
//! floor only, ceiling only, both, cleared, a missing counter, which the read must not
//! create) on keys of each core, and again after a graceful restart and after a
//! `kill -9` of a durable server. A `GetBound` in a batch with an idempotency key is a
//! read like `Get`: a retry after a crash gets its first answer back.
//!
//! `tallyd` and `tally` are the ones `cargo test --workspace` builds next to this test's
//! executable.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tally_client::{AsyncClient, Bound, Bounds, Client, HelloReply, Op, Status};
use tally_tests::{tally_cli, RawConnection, RawReply, Tallyd};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The graceful stop's signal (Linux).
const SIGTERM: i32 = 15;

/// Every shape of bounds: (name, floor, ceiling).
const SHAPES: [(&str, Option<i64>, Option<i64>); 4] = [
    ("none", None, None),
    ("floor", Some(0), None),
    ("ceiling", None, Some(7)),
    ("both", Some(-5), Some(i64::MAX)),
];

fn start(dir: &Path) -> Tallyd {
    Tallyd::start(dir, &["--cores", "2", "--durability", "durable"])
}

/// A key named `prefix:N` owned by `core`.
fn key_of_core(map: &HelloReply, prefix: &str, core: usize) -> String {
    (0..1000)
        .map(|index| format!("{prefix}:{index}"))
        .find(|key| map.owner_of_key(key.as_bytes()) == core)
        .unwrap_or_else(|| panic!("no key of core {core}"))
}

/// For each core, one key per shape: (key, floor, ceiling).
fn keys_on_both_cores(map: &HelloReply) -> Vec<(String, Option<i64>, Option<i64>)> {
    assert_eq!(map.shard_ports.len(), 2, "two cores");
    let mut keys = Vec::new();
    for core in 0..2 {
        for (shape, floor, ceiling) in SHAPES {
            keys.push((key_of_core(map, shape, core), floor, ceiling));
        }
    }
    keys
}

fn shown(bound: Option<i64>) -> String {
    bound.map_or_else(|| "none".to_owned(), |bound| bound.to_string())
}

/// `tally bounds KEY` and `tally --json bounds KEY` print `floor` and `ceiling`.
#[track_caller]
fn assert_cli_reads(addr: SocketAddr, key: &str, floor: Option<i64>, ceiling: Option<i64>) {
    let (status, stdout, stderr) = tally_cli(addr, &["bounds", key], None);
    assert!(status.success(), "tally bounds {key}: {status}\n{stderr}");
    let expected = format!("floor {}, ceiling {}\n", shown(floor), shown(ceiling));
    assert_eq!(stdout, expected, "tally bounds {key}");

    let (status, stdout, stderr) = tally_cli(addr, &["--json", "bounds", key], None);
    assert!(
        status.success(),
        "tally --json bounds {key}: {status}\n{stderr}"
    );
    let json: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["op"], "bounds");
    assert_eq!(json["key"], key);
    assert_eq!(json["ok"], true);
    assert_eq!(json["floor"], serde_json::json!(floor), "{json}");
    assert_eq!(json["ceiling"], serde_json::json!(ceiling), "{json}");
}

/// Raw `GetBound` floor and ceiling on the main port: whichever core serves this
/// connection, half the keys are the other core's and are forwarded.
#[track_caller]
fn assert_raw_reads(raw: &mut RawConnection, key: &str, floor: Option<i64>, ceiling: Option<i64>) {
    let key = key.as_bytes();
    let results = raw.batch_results(&[
        Op::GetBound {
            key,
            bound: Bound::Floor,
        },
        Op::GetBound {
            key,
            bound: Bound::Ceiling,
        },
    ]);
    for (result, bound) in results.iter().zip([floor, ceiling]) {
        assert_eq!(result.status, Status::Ok, "{result:?}");
        assert_eq!(result.existed, bound.is_some(), "{result:?}");
        assert_eq!(result.value, bound.unwrap_or(0), "{result:?}");
        assert!(!result.clamped);
    }
}

/// `tally batch` with a `floor KEY` and a `ceiling KEY` line per key prints one result
/// line each, in input order: `KEY<TAB>BOUND` (`none` where unset), and with `--json` the
/// bound as `value` (`null` where unset).
#[track_caller]
fn assert_cli_batch_reads(addr: SocketAddr, keys: &[(String, Option<i64>, Option<i64>)]) {
    let input: String = keys
        .iter()
        .map(|(key, _, _)| format!("floor {key}\nceiling {key}\n"))
        .collect();
    let (status, stdout, stderr) = tally_cli(addr, &["batch"], Some(&input));
    assert!(status.success(), "tally batch: {status}\n{stderr}");
    let expected: String = keys
        .iter()
        .map(|(key, floor, ceiling)| {
            format!("{key}\t{}\n{key}\t{}\n", shown(*floor), shown(*ceiling))
        })
        .collect();
    assert_eq!(stdout, expected, "tally batch of bound reads");

    let (status, stdout, stderr) = tally_cli(addr, &["--json", "batch"], Some(&input));
    assert!(status.success(), "tally --json batch: {status}\n{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2 * keys.len(), "{stdout}");
    for (pair, (key, floor, ceiling)) in lines.chunks(2).zip(keys) {
        for (json, (op, bound)) in pair.iter().zip([("floor", floor), ("ceiling", ceiling)]) {
            assert_eq!(json["op"], op, "{json}");
            assert_eq!(json["key"], key.as_str(), "{json}");
            assert_eq!(json["ok"], true, "{json}");
            assert_eq!(json["value"], serde_json::json!(bound), "{json}");
            assert_eq!(json["existed"], bound.is_some(), "{json}");
        }
    }
}

/// Reads every key's bounds every way and checks them.
fn assert_all_read(addr: SocketAddr, keys: &[(String, Option<i64>, Option<i64>)]) {
    assert_cli_batch_reads(addr, keys);
    let mut client = Client::connect(addr).expect("connect");
    let (mut raw, _) = RawConnection::open(addr);
    for (key, floor, ceiling) in keys {
        let expected = Bounds {
            floor: *floor,
            ceiling: *ceiling,
        };
        assert_eq!(client.get_bounds(key).unwrap(), expected, "{key}");
        assert_raw_reads(&mut raw, key, *floor, *ceiling);
        assert_cli_reads(addr, key, *floor, *ceiling);
    }
}

/// Sets each key's bounds (a key with none gets a counter all the same, by an add).
fn set_all(client: &mut Client, keys: &[(String, Option<i64>, Option<i64>)]) {
    for (key, floor, ceiling) in keys {
        client.set_bounds(key, *floor, *ceiling).unwrap();
        client.incr(key, 1).unwrap();
    }
}

#[test]
fn bounds_set_are_read_back_on_both_cores_by_client_cli_and_raw_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let mut client = Client::connect(server.addr).unwrap();
    let keys = keys_on_both_cores(client.shard_map());

    // Missing counters have no bounds, and reading them creates nothing.
    let missing: Vec<_> = keys
        .iter()
        .map(|(key, ..)| (key.clone(), None, None))
        .collect();
    assert_all_read(server.addr, &missing);
    for (key, ..) in &keys {
        assert!(
            !client.exists(key).unwrap(),
            "reading {key}'s bounds created it"
        );
    }

    set_all(&mut client, &keys);
    assert_all_read(server.addr, &keys);

    // Cleared bounds read as absent; the counters are still there.
    for (key, ..) in &keys {
        client.set_bounds(key, None, None).unwrap();
    }
    let cleared: Vec<_> = keys
        .iter()
        .map(|(key, ..)| (key.clone(), None, None))
        .collect();
    assert_all_read(server.addr, &cleared);
    for (key, ..) in &keys {
        assert!(client.exists(key).unwrap(), "{key}");
    }
}

#[test]
fn bounds_are_read_back_by_the_async_client_and_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = AsyncClient::connect(server.addr).await.unwrap();
        let keys = keys_on_both_cores(&client.shard_map());
        for (key, floor, ceiling) in &keys {
            let none = Bounds::default();
            assert_eq!(client.get_bounds(key).await.unwrap(), none, "{key}");
            client.set_bounds(key, *floor, *ceiling).await.unwrap();
            let expected = Bounds {
                floor: *floor,
                ceiling: *ceiling,
            };
            assert_eq!(client.get_bounds(key).await.unwrap(), expected, "{key}");
        }
        // A pipeline queues single bound reads, spanning both cores in one call.
        let mut pipeline = client.pipeline();
        for (key, ..) in &keys {
            pipeline.get_bound(key, Bound::Floor);
            pipeline.get_bound(key, Bound::Ceiling);
        }
        let results = pipeline.execute().await.unwrap();
        let expected = keys
            .iter()
            .flat_map(|(_, floor, ceiling)| [*floor, *ceiling]);
        for (result, bound) in results.into_iter().zip(expected) {
            let outcome = result.unwrap();
            assert_eq!(outcome.existed.then_some(outcome.value), bound);
        }
    });
}

#[test]
fn bounds_survive_a_graceful_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let mut client = Client::connect(server.addr).unwrap();
    let keys = keys_on_both_cores(client.shard_map());
    set_all(&mut client, &keys);
    drop(client);
    let status = server.signal_and_wait(SIGTERM, SHUTDOWN_TIMEOUT);
    assert!(status.success(), "graceful stop: {status}");

    let mut server = start(dir.path());
    assert_all_read(server.addr, &keys);

    // New bounds, acknowledged durable, then a crash: the journal brings them back.
    let mut client = Client::connect(server.addr).unwrap();
    // Each key takes the next key's shape: every one changes, and each shape admits the
    // counters' value (1).
    let changed: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(index, (key, ..))| {
            let (_, floor, ceiling) = SHAPES[(index + 1) % SHAPES.len()];
            (key.clone(), floor, ceiling)
        })
        .collect();
    for (key, floor, ceiling) in &changed {
        client.set_bounds(key, *floor, *ceiling).unwrap();
    }
    drop(client);
    server.kill9();

    let server = start(dir.path());
    assert_all_read(server.addr, &changed);
}

/// A `GetBound` under an idempotency key is remembered as a read: its retry after a
/// crash answers what the first attempt read, although the bound has changed since,
/// and applies nothing again.
#[test]
fn an_idempotent_retry_of_a_bound_read_gets_its_first_answer_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let map = Client::connect(server.addr).unwrap().shard_map().clone();
    for core in 0..2 {
        let key = key_of_core(&map, "likes", core);
        let key = key.as_bytes();
        let ops = [
            Op::SetBounds {
                key,
                floor: Some(0),
                ceiling: None,
            },
            Op::GetBound {
                key,
                bound: Bound::Floor,
            },
            Op::GetBound {
                key,
                bound: Bound::Ceiling,
            },
        ];
        let idempotency_key = 0xb0_0d00 + core as u128;
        let (mut raw, _) = RawConnection::open(server.addr);
        let RawReply::Batch(first) = raw.batch(Some(idempotency_key), &ops) else {
            panic!("a batch reply")
        };
        assert_eq!(first[1].status, Status::Ok);
        assert!(first[1].existed && first[1].value == 0, "{:?}", first[1]);
        assert!(!first[2].existed, "{:?}", first[2]);
        drop(raw);
        server.kill9();

        server = start(dir.path());
        let mut client = Client::connect(server.addr).unwrap();
        client.set_bounds(key, Some(-3), Some(3)).unwrap();
        let (mut raw, _) = RawConnection::open(server.addr);
        let RawReply::Batch(again) = raw.batch(Some(idempotency_key), &ops) else {
            panic!("a batch reply")
        };
        assert_eq!(
            again, first,
            "core {core}: the retry answers as the first time"
        );
        let bounds = client.get_bounds(key).unwrap();
        assert_eq!(
            (bounds.floor, bounds.ceiling),
            (Some(-3), Some(3)),
            "nothing applied again"
        );
    }
}

/// A `GetBound` naming no bound is refused as a malformed frame, and the connection
/// goes on serving.
#[test]
fn an_unknown_bound_is_refused_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (mut raw, _) = RawConnection::open(server.addr);
    let mut frame = Vec::new();
    let request_id = raw.request_id();
    tally_protocol::encode_batch(
        &mut frame,
        request_id,
        tally_protocol::Durability::ServerDefault,
        None,
        &[Op::GetBound {
            key: b"k".as_slice(),
            bound: Bound::Ceiling,
        }],
    )
    .unwrap();
    *frame.last_mut().unwrap() = 2; // the bound byte: neither floor (0) nor ceiling (1)
    raw.send(&frame);
    match raw.reply_to(request_id) {
        RawReply::Error { code, message } => {
            assert_eq!(code, tally_protocol::ErrorCode::MalformedFrame);
            assert!(message.contains("unknown bound 2"), "{message}");
        }
        other => panic!("answered with {other:?}"),
    }
    assert_raw_reads(&mut raw, "k", None, None);
}
