//! The tokio client against a real `tallyd`: many tasks incrementing at once (the client
//! packs their calls into shared batch frames), on a multi-thread and a current-thread
//! runtime. Each increment must apply exactly once and return its own result, and a
//! ceiling must admit exactly as many concurrent calls as it allows.

use std::collections::HashMap;
use std::time::Duration;

use tally_client::{AsyncClient, ClientConfig, ClientError, Op, Rejection, Status};
use tally_tests::{add, key_per_core, Tallyd};

const TASK_COUNT: usize = 32;
const INCREMENTS_PER_TASK: usize = 200;
const KEY_COUNT: usize = 8;

fn start() -> (tempfile::TempDir, Tallyd) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2"]);
    (dir, server)
}

/// Runs `TASK_COUNT` tasks of `INCREMENTS_PER_TASK` increments by 1 over `KEY_COUNT` keys
/// and checks that, per key, the values returned are exactly 1..=n: every increment was
/// applied once and every caller got the reply to its own call.
async fn concurrent_increments_are_exact(client: AsyncClient) {
    concurrent_increments_with_prefix_are_exact(client, "async").await;
}

/// [`concurrent_increments_are_exact`] on keys named `prefix:index`.
async fn concurrent_increments_with_prefix_are_exact(client: AsyncClient, prefix: &str) {
    let keys: Vec<String> = (0..KEY_COUNT)
        .map(|index| format!("{prefix}:{index}"))
        .collect();
    let cores: std::collections::BTreeSet<usize> = keys
        .iter()
        .map(|key| client.shard_map().owner_of_key(key.as_bytes()))
        .collect();
    assert_eq!(cores.len(), 2, "the keys must span both cores");

    let mut tasks = Vec::new();
    for task in 0..TASK_COUNT {
        let client = client.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(INCREMENTS_PER_TASK);
            for step in 0..INCREMENTS_PER_TASK {
                let key = &keys[(task + step) % KEY_COUNT];
                seen.push((key.clone(), client.incr(key, 1).await.expect("incr")));
            }
            seen
        }));
    }
    let mut returned: HashMap<String, Vec<i64>> = HashMap::new();
    for task in tasks {
        for (key, value) in task.await.expect("task") {
            returned.entry(key).or_default().push(value);
        }
    }
    let per_key = (TASK_COUNT * INCREMENTS_PER_TASK / KEY_COUNT) as i64;
    for key in &keys {
        let mut values = returned.remove(key).unwrap_or_default();
        values.sort_unstable();
        let expected: Vec<i64> = (1..=per_key).collect();
        assert!(
            values == expected,
            "{key}: returned values are not exactly 1..={per_key}"
        );
        assert_eq!(client.get(key).await.unwrap(), per_key, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_increment_exactly_on_a_multi_thread_runtime() {
    let (_dir, server) = start();
    let client = AsyncClient::connect(server.addr).await.unwrap();
    concurrent_increments_are_exact(client).await;
}

#[tokio::test(flavor = "current_thread")]
async fn many_tasks_increment_exactly_on_a_current_thread_runtime() {
    let (_dir, server) = start();
    let client = AsyncClient::connect(server.addr).await.unwrap();
    concurrent_increments_are_exact(client).await;
}

/// The connection task's spin phase (polling the socket and the call queue before it
/// parks) and its parking path must both deliver every reply to its own call: a spin
/// long enough to catch almost every reply, and none at all.
#[tokio::test(flavor = "current_thread")]
async fn increments_are_exact_with_a_long_spin_and_with_none() {
    let (_dir, server) = start();
    for spin in [Duration::from_millis(5), Duration::ZERO] {
        let config = ClientConfig {
            spin,
            ..ClientConfig::default()
        };
        let client = AsyncClient::connect_with(server.addr, config)
            .await
            .unwrap();
        let prefix = format!("spin{}", spin.as_micros());
        concurrent_increments_with_prefix_are_exact(client, &prefix).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ceiling_admits_exactly_its_limit_under_concurrency() {
    let (_dir, server) = start();
    let client = AsyncClient::connect(server.addr).await.unwrap();
    const LIMIT: i64 = 100;
    client
        .set_bounds("rate:alice:0", Some(0), Some(LIMIT))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for _ in 0..300 {
        let client = client.clone();
        tasks.push(tokio::spawn(
            async move { client.incr("rate:alice:0", 1).await },
        ));
    }
    let (mut allowed, mut refused) = (Vec::new(), 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(value) => allowed.push(value),
            Err(ClientError::Rejected(Rejection {
                status: Status::AboveCeiling,
                detail: LIMIT,
            })) => refused += 1,
            Err(error) => panic!("unexpected error: {error}"),
        }
    }
    allowed.sort_unstable();
    assert_eq!(allowed, (1..=LIMIT).collect::<Vec<_>>());
    assert_eq!(refused, 300 - LIMIT as usize);
    assert_eq!(client.get("rate:alice:0").await.unwrap(), LIMIT);
}

#[tokio::test(flavor = "current_thread")]
async fn every_operation_and_batches_through_the_async_client() {
    let (_dir, server) = start();
    let client = AsyncClient::connect(server.addr).await.unwrap();
    assert_eq!(client.get("a").await.unwrap(), 0);
    assert!(!client.exists("a").await.unwrap());
    assert_eq!(client.incr("a", 7).await.unwrap(), 7);
    assert_eq!(client.decr("a", 10).await.unwrap(), -3);
    assert_eq!(client.set("a", 40).await.unwrap(), 40);
    assert!(client.exists("a").await.unwrap());
    assert_eq!(client.del("a").await.unwrap(), Some(40));
    assert_eq!(client.del("a").await.unwrap(), None);

    client.set_bounds("likes", Some(0), None).await.unwrap();
    match client.decr("likes", 1).await {
        Err(ClientError::Rejected(rejection)) => {
            assert_eq!(rejection.status, Status::BelowFloor);
        }
        other => panic!("expected BelowFloor, got {other:?}"),
    }
    let too_long = vec![b'k'; 256];
    assert!(matches!(
        client.incr(&too_long, 1).await,
        Err(ClientError::InvalidKey { length: 256 })
    ));

    // A batch over many keys on both cores, results in order.
    let keys: Vec<String> = (0..500).map(|index| format!("batch:{index}")).collect();
    let ops: Vec<Op<&str>> = keys
        .iter()
        .enumerate()
        .map(|(index, key)| add(key.as_str(), index as i64))
        .collect();
    let results = client.batch(&ops).await.unwrap();
    for (index, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().value, index as i64, "{}", keys[index]);
    }
    let reads: Vec<Op<&str>> = keys
        .iter()
        .map(|key| Op::Get { key: key.as_str() })
        .collect();
    let results = client.batch(&reads).await.unwrap();
    for (index, result) in results.into_iter().enumerate() {
        assert_eq!(result.unwrap().value, index as i64, "{}", keys[index]);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn calls_after_the_server_closed_an_idle_connection_reconnect_and_count_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2", "--read-timeout-ms", "200"]);
    let client = AsyncClient::connect(server.addr).await.unwrap();
    let keys: Vec<String> = (0..8).map(|index| format!("idle:{index}")).collect();
    for round in 1..=3 {
        // Idle past the server's read timeout: it closes both shard connections.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        for key in &keys {
            assert_eq!(client.incr(key, 1).await.unwrap(), round, "{key}");
        }
    }
}

/// Calls timed to land at the server's idle close, with automatic idempotency keys off
/// (the default), one per core at once: a call that crosses the parting frame was not
/// applied (PROTOCOL.md, "Closing"), so the client sends it again on a new connection.
/// No call ends with an unknown outcome, and every increment counts exactly once.
///
/// A regression guard against a real tallyd, not a proof: the connection task reads
/// while idle, so a call crosses the parting frame only in a window of microseconds, and
/// a run may pass without any call crossing it. The crossing itself is tested
/// deterministically against the fake server (`net/client/tests/reconnect.rs`:
/// `async_a_mutation_without_a_key_answered_by_a_parting_error_is_resent_once`,
/// `async_frames_answered_before_a_parting_frame_are_not_resent`).
#[tokio::test(flavor = "current_thread")]
async fn calls_that_cross_the_idle_close_count_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let read_timeout = Duration::from_millis(50);
    let timeout_flag = read_timeout.as_millis().to_string();
    let server = Tallyd::start(
        dir.path(),
        &["--cores", "2", "--read-timeout-ms", &timeout_flag],
    );
    let client = AsyncClient::connect(server.addr).await.unwrap();
    assert!(!ClientConfig::default().auto_idempotency_keys);
    let keys = key_per_core(&client.shard_map(), "cross");
    let mut count = 0;
    for idle in tally_tests::idle_times_around(read_timeout) {
        tokio::time::sleep(idle).await;
        count += 1;
        let (first, second) = tokio::join!(client.incr(&keys[0], 1), client.incr(&keys[1], 1));
        for (key, result) in keys.iter().zip([first, second]) {
            let value =
                result.unwrap_or_else(|error| panic!("{key} after {idle:?} idle: {error:?}"));
            assert_eq!(value, count, "{key} after {idle:?} idle");
        }
    }
    for key in &keys {
        assert_eq!(client.get(key).await.unwrap(), count, "{key}");
    }
}

/// Connecting needs no more connections than the client keeps (one per core): under a
/// server limit of exactly that, connect succeeds (the main connection is closed before
/// the shard connections open).
#[tokio::test(flavor = "current_thread")]
async fn connects_under_a_connection_limit_of_one_per_core() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2", "--max-connections", "2"]);
    let client = AsyncClient::connect(server.addr).await.unwrap();
    for key in ["limit:a", "limit:b", "limit:c", "limit:d"] {
        assert_eq!(client.incr(key, 1).await.unwrap(), 1, "{key}");
    }
}

/// Sends SIGSTOP or SIGCONT to the server.
fn signal(server: &Tallyd, signal: i32) {
    // SAFETY: kill(2) on the pid of a child the harness spawned and has not reaped.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({signal})");
}

/// A batch too big for the socket buffers, sent to a stopped server (SIGSTOP), must not
/// hold its calls, or a small call queued behind it on the same core, past their
/// deadline: both end within it (generously: 5 s for a 1.5 s budget; the server stays
/// stopped for 12 s). The batch was written in part, so its outcome is unknown; the small
/// call was never written, so it says so (not `OutcomeUnknown`) and is indeed not
/// applied. Once the server resumes, the client serves calls again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_blocked_behind_a_full_socket_end_by_their_deadline() {
    let (_dir, server) = start();
    let budget = Duration::from_millis(1500);
    let config = ClientConfig {
        call_timeout: budget,
        read_timeout: budget,
        ..ClientConfig::default()
    };
    let client = AsyncClient::connect_with(server.addr, config)
        .await
        .unwrap();
    let small_key = "stall:small";
    let core = client.shard_map().owner_of_key(small_key.as_bytes());
    // 100,000 operations with 200-byte keys, all on the small key's core: about 21 MB,
    // far more than the socket buffers hold.
    let ops: Vec<Op<Vec<u8>>> = (0..)
        .map(|index| format!("{index:0>200}").into_bytes())
        .filter(|key| client.shard_map().owner_of_key(key) == core)
        .take(100_000)
        .map(|key| add(key, 1))
        .collect();
    client.incr("stall:warm", 1).await.unwrap();
    signal(&server, libc::SIGSTOP);
    let pid = server.pid();
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(12));
        // SAFETY: kill(2) on the pid of the child the harness spawned, still unreaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    });
    let started = std::time::Instant::now();
    let big = {
        let client = client.clone();
        tokio::spawn(async move { (client.batch(&ops).await, started.elapsed()) })
    };
    // Long enough for the batch's frames to be queued on the connection first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let small_started = std::time::Instant::now();
    let small = client.incr(small_key, 1).await;
    let small_elapsed = small_started.elapsed();
    let (big, big_elapsed) = tokio::time::timeout(Duration::from_secs(30), big)
        .await
        .expect("the batch ended")
        .unwrap();
    let limit = Duration::from_secs(5);
    assert!(small_elapsed < limit, "small call took {small_elapsed:?}");
    assert!(big_elapsed < limit, "batch took {big_elapsed:?}");
    let big_error = big.expect_err("the server was stopped");
    assert!(
        matches!(big_error, ClientError::OutcomeUnknown { .. }),
        "{big_error:?}"
    );
    let small_error = small.expect_err("the server was stopped");
    assert!(
        !matches!(small_error, ClientError::OutcomeUnknown { .. }),
        "never written, so known not applied: {small_error:?}"
    );
    resume.join().unwrap();
    let mut value = None;
    for _ in 0..50 {
        if let Ok(read) = client.get(small_key).await {
            value = Some(read);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(value, Some(0), "the small call was not applied");
    assert_eq!(client.incr("stall:after", 1).await.unwrap(), 1);
}

/// As for the blocking client: every address the name resolves to is tried in turn.
#[tokio::test(flavor = "current_thread")]
async fn connect_tries_every_address_a_name_resolves_to() {
    let (_dir, server) = start();
    let refusing = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let candidates = [refusing, server.addr];
    let client = AsyncClient::connect(&candidates[..])
        .await
        .expect("connect over the second address");
    assert_eq!(client.incr("resolve:a", 1).await.unwrap(), 1);
}
