//! Stopping `tallyd` under load and starting it again on the same data directory.
//!
//! Two writers run while the server is stopped: a raw connection that pipelines up to
//! `WINDOW_FRAMES` batches of increments over keys on both cores (so the server is
//! forwarding between cores when the signal lands), and the native blocking client making
//! single-frame calls. Each writer counts, per key, the increments the server
//! acknowledged. After the restart every counter must equal its acknowledged count:
//!
//! - SIGTERM (graceful): nothing acknowledged is lost and nothing unacknowledged was
//!   applied (a request the server read is answered before it closes, one it did not
//!   read changes nothing), so the count is exact.
//! - `kill -9` (durable requests, through the journal): every acknowledged increment is
//!   there, and no counter exceeds what was sent.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tally_client::{Client, ClientConfig, Durability, Op, Status};
use tally_protocol::encode_batch;
use tally_tests::{add, RawConnection, RawReply, Rng, Tallyd};

const KEY_COUNT: usize = 40;
const WINDOW_FRAMES: usize = 32;
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the writers run before the server is stopped.
const LOAD_BEFORE_STOP: Duration = Duration::from_millis(700);

fn key(index: usize) -> String {
    format!("views:{index}")
}

/// Per key: increments acknowledged, and increments sent (acknowledged or not).
#[derive(Default, Debug)]
struct Tally {
    acknowledged: HashMap<String, i64>,
    sent: HashMap<String, i64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (key, count) in other.acknowledged {
            *self.acknowledged.entry(key).or_default() += count;
        }
        for (key, count) in other.sent {
            *self.sent.entry(key).or_default() += count;
        }
    }

    fn total_acknowledged(&self) -> i64 {
        self.acknowledged.values().sum()
    }
}

/// Pipelines batches of 1..=20 increments on random keys until the server goes away.
fn pipelining_writer(addr: SocketAddr, durability: Durability) -> Tally {
    let mut rng = Rng::from_env(0x5e7_7e57);
    let (mut connection, _) = RawConnection::open(addr);
    let mut tally = Tally::default();
    let mut in_flight: VecDeque<(u64, Vec<String>)> = VecDeque::new();
    let mut writable = true;
    loop {
        while writable && in_flight.len() < WINDOW_FRAMES {
            let keys: Vec<String> = (0..rng.between(1, 20))
                .map(|_| key(rng.below(KEY_COUNT as u64) as usize))
                .collect();
            let ops: Vec<Op<&str>> = keys.iter().map(|key| add(key.as_str(), 1)).collect();
            let request_id = connection.request_id();
            let mut frame = Vec::new();
            encode_batch(&mut frame, request_id, durability, None, &ops).unwrap();
            for key in &keys {
                *tally.sent.entry(key.clone()).or_default() += 1;
            }
            writable = connection.stream.write_all(&frame).is_ok();
            in_flight.push_back((request_id, keys));
        }
        let Some((request_id, keys)) = in_flight.pop_front() else {
            return tally;
        };
        match connection.next_reply() {
            None => return tally,
            Some((id, RawReply::Batch(results))) => {
                assert_eq!(id, request_id, "replies come in order");
                assert_eq!(results.len(), keys.len());
                for (key, result) in keys.iter().zip(results) {
                    assert_eq!(result.status, Status::Ok, "{key}");
                    *tally.acknowledged.entry(key.clone()).or_default() += 1;
                }
            }
            // Refused whole (shutting down): nothing of it was applied.
            Some((_, RawReply::Error { .. })) => {}
            Some((id, other)) => panic!("request {id} answered with {other:?}"),
        }
    }
}

/// Calls through the native client until one fails. Each call is a batch of increments on
/// one key, so it travels as one frame: the server applies all of it and must answer, or
/// applies none of it.
fn client_writer(addr: SocketAddr, durability: Durability) -> Tally {
    let config = ClientConfig {
        durability,
        ..ClientConfig::default()
    };
    let mut client = Client::connect_with(addr, config).unwrap();
    let mut tally = Tally::default();
    for round in 0.. {
        let name = key(round % KEY_COUNT);
        let ops = vec![add(name.as_str(), 1); 1 + round % 8];
        *tally.sent.entry(name.clone()).or_default() += ops.len() as i64;
        match client.batch(&ops) {
            Ok(results) => {
                assert!(results.iter().all(Result::is_ok), "{results:?}");
                *tally.acknowledged.entry(name).or_default() += ops.len() as i64;
            }
            Err(error) => {
                eprintln!("client writer stops: {error}");
                break;
            }
        }
    }
    tally
}

fn start_writers(addr: SocketAddr, durability: Durability) -> Vec<JoinHandle<Tally>> {
    // Both run until the server goes away: a server that keeps serving after the signal
    // fails the test in `signal_and_wait`, which then kills it.
    vec![
        std::thread::spawn(move || pipelining_writer(addr, durability)),
        std::thread::spawn(move || client_writer(addr, durability)),
    ]
}

fn join(writers: Vec<JoinHandle<Tally>>) -> Tally {
    let mut tally = Tally::default();
    for writer in writers {
        tally.merge(writer.join().expect("writer thread"));
    }
    tally
}

/// Every counter's value after the restart.
fn read_all(addr: SocketAddr) -> HashMap<String, i64> {
    let mut client = Client::connect(addr).unwrap();
    let keys: Vec<String> = (0..KEY_COUNT).map(key).collect();
    let ops: Vec<Op<&str>> = keys
        .iter()
        .map(|key| Op::Get { key: key.as_str() })
        .collect();
    let results = client.batch(&ops).unwrap();
    keys.into_iter()
        .zip(results)
        .map(|(key, result)| (key, result.unwrap().value))
        .collect()
}

#[test]
fn sigterm_under_pipelined_load_keeps_exactly_the_acknowledged_increments() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Tallyd::start(dir.path(), &["--cores", "2"]);
    let writers = start_writers(server.addr, Durability::ServerDefault);
    std::thread::sleep(LOAD_BEFORE_STOP);
    let status = server.signal_and_wait(libc::SIGTERM, SHUTDOWN_TIMEOUT);
    assert!(
        status.success(),
        "tallyd exited with {status}:\n{}",
        server.log.join("\n")
    );
    let tally = join(writers);
    assert!(
        tally.total_acknowledged() > 0,
        "no increment was acknowledged before the stop"
    );
    eprintln!("acknowledged {} increments", tally.total_acknowledged());

    let server = Tallyd::start(dir.path(), &["--cores", "2"]);
    let values = read_all(server.addr);
    for (key, value) in &values {
        let acknowledged = tally.acknowledged.get(key).copied().unwrap_or(0);
        assert_eq!(
            *value, acknowledged,
            "{key}: counted {value}, acknowledged {acknowledged}"
        );
    }
}

#[test]
fn kill_9_keeps_every_acknowledged_durable_increment() {
    let dir = tempfile::tempdir().unwrap();
    let mut tally = Tally::default();
    for round in 0..3 {
        let mut server = Tallyd::start(dir.path(), &["--cores", "2"]);
        // Without the journal the page cache alone would carry the counts through a
        // kill -9, and this test would prove nothing about durability.
        assert!(
            !server
                .log
                .iter()
                .any(|line| line.contains("journal is not wired")),
            "tallyd runs without its journal"
        );
        let writers = start_writers(server.addr, Durability::Durable);
        std::thread::sleep(LOAD_BEFORE_STOP);
        server.kill9();
        tally.merge(join(writers));

        let server = Tallyd::start(dir.path(), &["--cores", "2"]);
        let values = read_all(server.addr);
        for (key, value) in &values {
            let acknowledged = tally.acknowledged.get(key).copied().unwrap_or(0);
            let sent = tally.sent.get(key).copied().unwrap_or(0);
            assert!(
                acknowledged <= *value && *value <= sent,
                "round {round}, {key}: counted {value}, acknowledged {acknowledged}, sent {sent}"
            );
        }
        // What the crash left unacknowledged but applied counts from now on as sent and
        // acknowledged, so the next round's bounds stay exact.
        for (key, value) in values {
            tally.acknowledged.insert(key.clone(), value);
            tally.sent.insert(key, value);
        }
    }
}
