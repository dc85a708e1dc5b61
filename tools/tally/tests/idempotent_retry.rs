//! The native client's calls under a caller's idempotency key, against a real `tallyd` on
//! 127.0.0.1: a call that ends `OutcomeUnknown` (the server stopped with `SIGSTOP` past
//! the call's deadline) and is repeated with the same key after a `kill -9` and restart
//! counts exactly once, whether the server had applied it or not; and a new key refused
//! because the server's idempotency memory is full ends at once as `NotApplied`, not as
//! `OutcomeUnknown` at the deadline (blocking, async, and the `tally` CLI).
//!
//! `tallyd` is the one `cargo test --workspace` (or `-p tallyd -p tally`) builds next to
//! this test's executable.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tally_client::{
    random_idempotency_key, AsyncClient, Client, ClientConfig, ClientError, Durability,
};
use tally_tests::{stat, tally_cli, Tallyd};

/// A call deadline short enough to run out while the server is stopped.
fn short_deadline() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_millis(300),
        read_timeout: Duration::from_millis(300),
        call_timeout: Duration::from_millis(900),
        durability: Durability::Durable,
        ..ClientConfig::default()
    }
}

/// Sends `signal` (`STOP`, `CONT`) to the server.
fn signal(server: &Tallyd, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal}");
}

fn start(dir: &Path, extra: &[&str]) -> Tallyd {
    Tallyd::start(dir, extra)
}

/// Waits until the counter reads `expected` (the stopped server catching up).
fn wait_for_value(server: &Tallyd, key: &str, expected: i64) {
    let mut client = Client::connect(server.addr).expect("connect");
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get(key).expect("get") != expected {
        assert!(Instant::now() < deadline, "{key} never reached {expected}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[track_caller]
fn assert_unknown(error: &ClientError) {
    assert!(
        matches!(error, ClientError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    // A generic "retry if transient" loop must not take it for safe to repeat.
    assert!(!error.is_transient(), "{error:?}");
}

#[test]
fn blocking_an_applied_call_of_unknown_outcome_repeated_with_its_key_counts_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = start(dir.path(), &["--cores", "2"]);
    let mut client = Client::connect_with(server.addr, short_deadline()).expect("connect");
    let first = client.incr_idempotent("likes:p1", 1, random_idempotency_key());
    assert_eq!(first.unwrap(), 1);
    let key = random_idempotency_key();
    signal(&server, "STOP");
    let error = client.incr_idempotent("likes:p1", 1, key).unwrap_err();
    assert_unknown(&error);
    // The server resumes and applies what reached it; then it crashes and restarts.
    signal(&server, "CONT");
    wait_for_value(&server, "likes:p1", 2);
    std::thread::sleep(Duration::from_millis(300));
    server.kill9();
    let server = start(dir.path(), &["--cores", "2"]);
    let mut client = Client::connect(server.addr).expect("connect");
    // The repeat is answered with the first application's value and applies nothing.
    assert_eq!(client.incr_idempotent("likes:p1", 1, key).unwrap(), 2);
    assert_eq!(client.incr_idempotent("likes:p1", 1, key).unwrap(), 2);
    assert_eq!(client.get("likes:p1").unwrap(), 2);
}

#[test]
fn blocking_a_call_lost_in_a_crash_repeated_with_its_key_counts_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = start(dir.path(), &["--cores", "2"]);
    let mut client = Client::connect_with(server.addr, short_deadline()).expect("connect");
    let key = random_idempotency_key();
    let ops = [
        tally_tests::add("likes:p2", 1),
        tally_tests::add("likes:p3", 1),
    ];
    signal(&server, "STOP");
    let error = client
        .batch_idempotent(&ops, Durability::Durable, key)
        .unwrap_err();
    assert_unknown(&error);
    // Killed while stopped: the request never ran.
    server.kill9();
    let server = start(dir.path(), &["--cores", "2"]);
    let mut client = Client::connect(server.addr).expect("connect");
    for _ in 0..2 {
        let results = client.batch_idempotent(&ops, Durability::Durable, key);
        let values: Vec<i64> = results
            .unwrap()
            .into_iter()
            .map(|result| result.unwrap().value)
            .collect();
        assert_eq!(values, [1, 1]);
    }
    assert_eq!(client.get("likes:p2").unwrap(), 1);
    assert_eq!(client.get("likes:p3").unwrap(), 1);
}

#[tokio::test]
async fn async_a_call_of_unknown_outcome_repeated_with_its_key_after_a_restart_counts_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = start(dir.path(), &["--cores", "2"]);
    let client = AsyncClient::connect_with(server.addr, short_deadline())
        .await
        .expect("connect");
    let key = random_idempotency_key();
    signal(&server, "STOP");
    let error = client
        .incr_idempotent("likes:p4", 1, key)
        .await
        .unwrap_err();
    assert_unknown(&error);
    signal(&server, "CONT");
    wait_for_value(&server, "likes:p4", 1);
    std::thread::sleep(Duration::from_millis(300));
    server.kill9();
    let server = start(dir.path(), &["--cores", "2"]);
    let client = AsyncClient::connect(server.addr).await.expect("connect");
    // Concurrent plain calls are packed into frames; the keyed one keeps a frame of its
    // own, so its key covers exactly its operation.
    let (repeat, other) = tokio::join!(
        client.incr_idempotent("likes:p4", 1, key),
        client.incr("likes:p4", 10)
    );
    assert_eq!(repeat.unwrap(), 1);
    assert_eq!(other.unwrap(), 11);
    assert_eq!(client.get("likes:p4").await.unwrap(), 11);
}

/// A server whose one core remembers at most 20 idempotency keys, already full.
fn full_server(dir: &Path) -> (Tallyd, Vec<u128>) {
    let server = start(dir, &["--cores", "1", "--idempotency-max-keys", "20"]);
    let mut client = Client::connect(server.addr).expect("connect");
    let keys: Vec<u128> = (0..20).map(|_| random_idempotency_key()).collect();
    for (index, &key) in keys.iter().enumerate() {
        let value = client.incr_idempotent("full:post", 1, key).unwrap();
        assert_eq!(value, index as i64 + 1);
    }
    (server, keys)
}

fn full_refusals(client: &mut Client) -> u64 {
    stat(&client.stats().expect("stats"), "idempotency_full_refusals")
}

/// A long deadline: the refusal must come back long before it. Automatic keys on, so
/// that a plain call carries a key of the client's own, which the full table refuses.
fn long_deadline() -> ClientConfig {
    ClientConfig {
        call_timeout: Duration::from_secs(5),
        auto_idempotency_keys: true,
        ..ClientConfig::default()
    }
}

#[track_caller]
fn assert_not_applied(error: &ClientError, elapsed: Duration) {
    assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
    assert!(error.is_transient(), "{error:?}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[test]
fn blocking_a_new_key_refused_by_a_full_table_is_not_applied_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, keys) = full_server(dir.path());
    let mut client = Client::connect_with(server.addr, long_deadline()).expect("connect");
    let started = Instant::now();
    let error = client
        .incr_idempotent("full:post", 1, random_idempotency_key())
        .unwrap_err();
    assert_not_applied(&error, started.elapsed());
    // A plain call (a key of the client's own) is refused the same way.
    let started = Instant::now();
    let error = client.incr("full:post", 1).unwrap_err();
    assert_not_applied(&error, started.elapsed());
    // Sent once each, not resent until the deadline.
    assert_eq!(full_refusals(&mut client), 2);
    assert_eq!(client.get("full:post").unwrap(), 20);
    // A key the server knows is still answered, with its first result.
    assert_eq!(client.incr_idempotent("full:post", 1, keys[0]).unwrap(), 1);
}

#[tokio::test]
async fn async_a_new_key_refused_by_a_full_table_is_not_applied_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _keys) = full_server(dir.path());
    let client = AsyncClient::connect_with(server.addr, long_deadline())
        .await
        .expect("connect");
    let started = Instant::now();
    let error = client.incr("full:post", 1).await.unwrap_err();
    assert_not_applied(&error, started.elapsed());
    let started = Instant::now();
    let key = random_idempotency_key();
    let error = client
        .incr_idempotent("full:post", 1, key)
        .await
        .unwrap_err();
    assert_not_applied(&error, started.elapsed());
    assert_eq!(client.get("full:post").await.unwrap(), 20);
}

#[test]
fn cli_a_change_refused_by_a_full_table_exits_2_not_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _keys) = full_server(dir.path());
    let started = Instant::now();
    let (status, stdout, stderr) = tally_cli(
        server.addr,
        &["--json", "--timeout-ms", "5000", "incr", "full:post"],
        None,
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{stderr}");
    assert_eq!(status.code(), Some(2), "{stderr}");
    let failure: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(failure["outcome"], "not_applied");
    assert!(stderr.contains("not applied"), "{stderr}");
    assert!(!stderr.contains("outcome unknown"), "{stderr}");
}
