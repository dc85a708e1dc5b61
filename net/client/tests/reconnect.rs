//! Both clients against a fake server that closes connections the way tallyd does: a
//! parting `Error Timeout` with request id 0, then the close. Calls after it reconnect and
//! count once; the requests a parting frame left unanswered were not applied
//! (PROTOCOL.md, "Closing"), so they are resent, even mutations without an idempotency
//! key, and without retries end `NotApplied`, never `OutcomeUnknown`; a reconnect that
//! finds a new shard map re-routes.

mod fake_server;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fake_server::FakeServer;
use tally_client::{AsyncClient, Client, ClientConfig, ClientError, ErrorCode};

fn keys() -> Vec<String> {
    (0..16).map(|index| format!("idle:{index}")).collect()
}

fn without_retries(spin: Duration) -> ClientConfig {
    ClientConfig {
        retries: 0,
        spin,
        ..ClientConfig::default()
    }
}

/// A mutation sent on a connection the server then parted, and not sent again: the
/// server's parting word says it did not run.
fn assert_parted_not_applied(error: &ClientError) {
    let ClientError::NotApplied { cause } = error else {
        panic!("expected not applied, got {error:?}");
    };
    let error = cause.as_ref();
    assert!(
        matches!(
            error,
            ClientError::Disconnected {
                code: ErrorCode::Timeout,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_transient(), "{error:?}");
}

/// The client's defaults with automatic idempotency keys on: every mutating frame carries
/// a key of the client's own, so it is resent after a lost connection.
fn auto_keys() -> ClientConfig {
    ClientConfig {
        auto_idempotency_keys: true,
        ..ClientConfig::default()
    }
}

#[test]
fn blocking_calls_after_an_idle_close_reconnect_and_count_once() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    for round in 1..=3 {
        for key in keys() {
            assert_eq!(client.incr(&key, 1).unwrap(), round, "{key}");
        }
        server.part_idle_connections(2);
    }
    assert_eq!(client.get("idle:0").unwrap(), 3);
    assert_eq!(
        server.state.batch_frames.load(Ordering::SeqCst),
        3 * 16 + 1,
        "no frame was sent to a closed connection and resent"
    );
}

#[test]
fn blocking_without_retries_checks_an_idle_connection_before_sending() {
    // Spinning keeps the socket non-blocking; without spin it is blocking: both probe.
    for spin in [Duration::from_micros(75), Duration::ZERO] {
        let server = FakeServer::start(2, 16);
        let mut client = Client::connect_with(server.main_addr, without_retries(spin)).unwrap();
        client.incr("likes", 1).unwrap();
        server.part_idle_connections(2);
        assert_eq!(client.incr("likes", 1).unwrap(), 2, "spin {spin:?}");
        client.ping().unwrap();
    }
}

#[test]
fn blocking_a_parting_error_in_reply_to_a_batch_resends_it_with_its_key() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect_with(server.main_addr, auto_keys()).unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).unwrap(), 1);
    assert_eq!(server.value("like"), Some(1));
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 1);
    assert_eq!(client.incr("like", 1).unwrap(), 2);
}

/// Increments of 1 on `keys()`, one frame each when sent with `batch_framed(.., 1)`.
fn increments() -> Vec<tally_client::Op> {
    keys()
        .iter()
        .map(|key| tally_client::Op::Add {
            key: key.clone().into_bytes(),
            delta: 1,
            policy: tally_client::BoundPolicy::Reject,
        })
        .collect()
}

#[test]
fn blocking_a_mutation_without_a_key_answered_by_a_parting_error_is_resent_once() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    assert!(!client.config().auto_idempotency_keys);
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).unwrap(), 1);
    assert_eq!(server.value("like"), Some(1));
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 1);
    assert_eq!(server.state.keyed_frames.load(Ordering::SeqCst), 0);
    // Pipelined frames behind the parted one were not applied either: all resent once.
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    let results = client
        .batch_framed(&increments(), Default::default(), 1)
        .unwrap();
    for (key, result) in keys().iter().zip(results) {
        assert_eq!(result.unwrap().value, 1, "{key}");
        assert_eq!(server.value(key), Some(1), "{key}");
    }
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 2);
}

/// One retry, and the first two sends of a frame parted: resending a parted frame is
/// not charged to its retry budget (the server applied nothing), so the third send runs.
fn one_retry() -> ClientConfig {
    ClientConfig {
        retries: 1,
        ..ClientConfig::default()
    }
}

#[test]
fn blocking_resending_a_parted_frame_costs_no_retry() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect_with(server.main_addr, one_retry()).unwrap();
    server.state.part_on_batch.store(2, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).unwrap(), 1);
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 2);
    assert_eq!(server.value("like"), Some(1));
}

#[tokio::test(flavor = "current_thread")]
async fn async_resending_a_parted_frame_costs_no_retry() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect_with(server.main_addr, one_retry())
        .await
        .unwrap();
    server.state.part_on_batch.store(2, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 2);
    assert_eq!(server.value("like"), Some(1));
}

#[test]
fn blocking_without_retries_a_parted_mutation_is_not_applied() {
    let server = FakeServer::start(2, 16);
    let config = without_retries(Duration::from_micros(75));
    let mut client = Client::connect_with(server.main_addr, config).unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    assert_parted_not_applied(&client.incr("like", 1).unwrap_err());
    assert_eq!(
        server.value("like"),
        None,
        "the parted batch was not applied"
    );
    assert_eq!(
        client.incr("like", 1).unwrap(),
        1,
        "the next call reconnects"
    );
}

#[test]
fn blocking_a_new_shard_map_on_reconnect_reroutes() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    for key in keys() {
        assert_eq!(client.incr(&key, 1).unwrap(), 1);
    }
    let new_map = server.change_shard_map(32);
    server.part_idle_connections(2);
    let ops: Vec<_> = keys()
        .iter()
        .map(|key| tally_client::Op::Add {
            key: key.clone().into_bytes(),
            delta: 1,
            policy: tally_client::BoundPolicy::Reject,
        })
        .collect();
    for result in client.batch_framed(&ops, Default::default(), 1).unwrap() {
        assert_eq!(result.unwrap().value, 2);
    }
    assert_eq!(client.shard_map().partition_count, new_map.partition_count);
    assert_eq!(client.shard_map().owners, new_map.owners);
    assert_eq!(server.state.misrouted_ops.load(Ordering::SeqCst), 0);
}

/// Closes idle connections from a blocking thread while the runtime keeps running.
async fn part_idle(server: &std::sync::Arc<FakeServer>, count: u64) {
    let server = server.clone();
    tokio::task::spawn_blocking(move || server.part_idle_connections(count))
        .await
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_calls_after_an_idle_close_reconnect_and_count_once() {
    let server = std::sync::Arc::new(FakeServer::start(2, 16));
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    for round in 1..=3 {
        for key in keys() {
            assert_eq!(client.incr(&key, 1).await.unwrap(), round, "{key}");
        }
        part_idle(&server, 2).await;
    }
    assert_eq!(client.get("idle:0").await.unwrap(), 3);
    client.ping().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn async_without_retries_an_idle_close_never_counts_twice() {
    let server = std::sync::Arc::new(FakeServer::start(2, 16));
    let config = without_retries(Duration::ZERO);
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    client.incr("likes", 1).await.unwrap();
    part_idle(&server, 2).await;
    // The task notices the close while idle; if the call raced it, the error says the
    // connection was lost and the increment was not applied.
    let first = client.incr("likes", 1).await;
    if let Err(error) = &first {
        assert!(error.is_transient(), "{error:?}");
    }
    let applied = i64::from(first.is_ok());
    assert_eq!(client.incr("likes", 1).await.unwrap(), 2 + applied);
}

#[tokio::test(flavor = "current_thread")]
async fn async_a_parting_error_in_reply_to_a_batch_resends_it_with_its_key() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
    assert_eq!(server.value("like"), Some(1));
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 1);
    assert_eq!(client.incr("like", 1).await.unwrap(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn async_a_mutation_without_a_key_answered_by_a_parting_error_is_resent_once() {
    // One core: every frame goes down the one connection that parts.
    let server = FakeServer::start(1, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
    assert_eq!(server.value("like"), Some(1));
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 1);
    assert_eq!(server.state.keyed_frames.load(Ordering::SeqCst), 0);
    // Concurrent calls, one frame each, in flight behind the parted frame: all resent once.
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    let frames_before = server.state.batch_frames.load(Ordering::SeqCst);
    increment_in_separate_frames(&client, &server).await;
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 2);
    let frames = server.state.batch_frames.load(Ordering::SeqCst) - frames_before;
    // The fake server counts the frames it answers, not the parted ones.
    assert_eq!(frames, 16, "one frame per call, each applied once");
}

#[tokio::test(flavor = "current_thread")]
async fn async_without_retries_a_parted_mutation_is_not_applied() {
    let server = FakeServer::start(2, 16);
    let config = without_retries(Duration::ZERO);
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    assert_parted_not_applied(&client.incr("like", 1).await.unwrap_err());
    assert_eq!(
        server.value("like"),
        None,
        "the parted batch was not applied"
    );
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn async_a_new_shard_map_on_reconnect_reroutes() {
    let server = std::sync::Arc::new(FakeServer::start(2, 16));
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    for key in keys() {
        assert_eq!(client.incr(&key, 1).await.unwrap(), 1);
    }
    let new_map = server.change_shard_map(32);
    part_idle(&server, 2).await;
    // The first calls reconnect and find the new map (still correct: a server forwards
    // keys another core owns); the calls after them route by it.
    for key in keys() {
        assert_eq!(client.incr(&key, 1).await.unwrap(), 2);
    }
    assert_eq!(client.shard_map().partition_count, new_map.partition_count);
    let misrouted = server.state.misrouted_ops.load(Ordering::SeqCst);
    for key in keys() {
        assert_eq!(client.incr(&key, 1).await.unwrap(), 3);
    }
    assert_eq!(server.state.misrouted_ops.load(Ordering::SeqCst), misrouted);
}

#[tokio::test(flavor = "current_thread")]
async fn async_ping_stats_and_pipeline() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    client.ping().await.unwrap();
    let mut pipeline = client.pipeline();
    pipeline
        .incr("a", 2)
        .decr("a", 1)
        .set("b", 7)
        .get("a")
        .exists("c");
    assert_eq!(pipeline.len(), 5);
    let values: Vec<i64> = pipeline
        .execute()
        .await
        .unwrap()
        .into_iter()
        .map(|result| result.unwrap().value)
        .collect();
    assert_eq!(values, [2, 1, 7, 1, 0]);
    assert!(pipeline.is_empty());
    let stats = client.stats().await.unwrap();
    let batches = stats.iter().find(|(name, _)| name == "batches").unwrap().1;
    assert_eq!(batches, server.state.batch_frames.load(Ordering::SeqCst));
    pipeline.decr("a", i64::MIN);
    assert!(matches!(
        pipeline.execute().await,
        Err(ClientError::Rejected(_))
    ));
}

/// A map change that adds a core starts a connection task for it. The task must run on
/// the runtime the client was made on: not on the runtime of whoever made the call that
/// noticed the change (here a throw-away one per call), which would take the task down
/// with it, and `shard_map()` from plain code, outside any runtime, must not panic.
#[test]
fn async_tasks_a_map_change_starts_run_on_the_clients_own_runtime() {
    let server = FakeServer::start(2, 16);
    let two_cores = server.hello.clone();
    server.shrink_to_one_core();
    // The client's runtime: driven by a thread of its own until the test ends.
    let (client_sender, client_receiver) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let main_addr = server.main_addr;
    let runtime_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            client_sender
                .send(AsyncClient::connect(main_addr).await)
                .unwrap();
            let _ = stopped.await;
        });
    });
    let client = client_receiver.recv().unwrap().unwrap();
    assert_eq!(client.shard_map().core_count(), 1);
    let throw_away = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    for key in keys() {
        assert_eq!(throw_away().block_on(client.incr(&key, 1)).unwrap(), 1);
    }
    server.set_shard_map(two_cores.clone());
    server.part_idle_connections(1);
    // This call's reconnect finds the two-core map; the next routing adopts it.
    assert_eq!(throw_away().block_on(client.incr("idle:0", 1)).unwrap(), 2);
    assert_eq!(
        client.shard_map().core_count(),
        2,
        "adopted outside a runtime"
    );
    for round in 2..=4 {
        let calls = throw_away();
        for key in keys().iter().skip(1) {
            let result = calls.block_on(client.incr(key, 1));
            assert_eq!(result.unwrap(), round, "{key}");
        }
        drop(calls);
    }
    assert_eq!(client.shard_map().owners, two_cores.owners);
    stop.send(()).unwrap();
    runtime_thread.join().unwrap();
}

/// Increments every key of `keys()` by 1 from concurrent calls, each in a frame of its
/// own (alternating durabilities keep the task from packing them into one frame), and
/// checks that each call, and the server, counted it exactly once.
async fn increment_in_separate_frames(client: &AsyncClient, server: &FakeServer) {
    use tally_client::{BoundPolicy, Durability, Op};
    let calls: Vec<_> = keys()
        .into_iter()
        .enumerate()
        .map(|(index, key)| {
            let client = client.clone();
            let durability = if index % 2 == 0 {
                Durability::Durable
            } else {
                Durability::Relaxed
            };
            tokio::spawn(async move {
                let ops = [Op::Add {
                    key: key.clone().into_bytes(),
                    delta: 1,
                    policy: BoundPolicy::Reject,
                }];
                (client.batch_with(&ops, durability).await, key)
            })
        })
        .collect();
    for call in calls {
        let (result, key) = call.await.unwrap();
        assert_eq!(result.unwrap()[0].as_ref().unwrap().value, 1, "{key}");
        assert_eq!(server.value(&key), Some(1), "{key}");
    }
}

/// The parting frame comes after the replies to the frames pipelined before it, often in
/// the same read: the answered frames must not be resent, the unanswered ones must be.
/// The server parts at the `at`-th batch of a connection, for several positions.
#[test]
fn blocking_frames_answered_before_a_parting_frame_are_not_resent() {
    for at in 2..=8 {
        let server = FakeServer::start(2, 16);
        let mut client = Client::connect(server.main_addr).unwrap();
        server.state.part_at_batch.store(at, Ordering::SeqCst);
        let results = client
            .batch_framed(&increments(), Default::default(), 1)
            .unwrap();
        for (key, result) in keys().iter().zip(results) {
            assert_eq!(result.unwrap().value, 1, "{key}, parted at batch {at}");
            assert_eq!(server.value(key), Some(1), "{key}, parted at batch {at}");
        }
        let parted = server.state.parted_connections.load(Ordering::SeqCst);
        assert_eq!(parted, 1, "parted at batch {at}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn async_frames_answered_before_a_parting_frame_are_not_resent() {
    for at in 2..=8 {
        // One core: every frame goes down the one connection that parts.
        let server = FakeServer::start(1, 16);
        let client = AsyncClient::connect(server.main_addr).await.unwrap();
        server.state.part_at_batch.store(at, Ordering::SeqCst);
        increment_in_separate_frames(&client, &server).await;
        let parted = server.state.parted_connections.load(Ordering::SeqCst);
        assert_eq!(parted, 1, "parted at batch {at}");
        // The fake server counts the frames it answers, not the parted ones.
        let frames = server.state.batch_frames.load(Ordering::SeqCst);
        assert_eq!(frames, 16, "one frame per call, parted at batch {at}");
    }
}

/// One retry, a deadline far away, and (set by the tests) a server that parts on the first
/// batch and then refuses every hello with a parting `ServerBusy` (the connection limit).
fn one_retry_long_deadline() -> ClientConfig {
    ClientConfig {
        retries: 1,
        call_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// Resending the parted frame is free, but a hello refused after it is charged (a
/// parting error to a hello is a failed connection like any other): with one retry the
/// call gives up after a few hellos, not by hammering a full server until its deadline.
fn assert_refused_hellos_were_charged(
    result: Result<i64, ClientError>,
    hellos: u64,
    elapsed: Duration,
) {
    let error = result.unwrap_err();
    assert!(
        matches!(error, ClientError::NotApplied { .. }),
        "the parted increment was not applied: {error:?}"
    );
    // Per connection attempt the shard port's hello and the main address's one.
    assert!(
        hellos <= 4,
        "{hellos} hellos in {elapsed:?}: refusals were free"
    );
    assert!(
        elapsed < one_retry_long_deadline().call_timeout / 2,
        "{hellos} hellos in {elapsed:?}: retried until the deadline"
    );
}

#[test]
fn blocking_hellos_refused_after_a_part_are_charged() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect_with(server.main_addr, one_retry_long_deadline()).unwrap();
    let hellos_before = server.state.hellos.load(Ordering::SeqCst);
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    server.state.part_on_hello.store(1000, Ordering::SeqCst);
    let started = Instant::now();
    let result = client.incr("like", 1);
    let hellos = server.state.hellos.load(Ordering::SeqCst) - hellos_before;
    assert_refused_hellos_were_charged(result, hellos, started.elapsed());
    assert_eq!(server.value("like"), None);
}

#[tokio::test(flavor = "current_thread")]
async fn async_hellos_refused_after_a_part_are_charged() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect_with(server.main_addr, one_retry_long_deadline())
        .await
        .unwrap();
    let hellos_before = server.state.hellos.load(Ordering::SeqCst);
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    server.state.part_on_hello.store(1000, Ordering::SeqCst);
    let started = Instant::now();
    let result = client.incr("like", 1).await;
    let hellos = server.state.hellos.load(Ordering::SeqCst) - hellos_before;
    assert_refused_hellos_were_charged(result, hellos, started.elapsed());
    assert_eq!(server.value("like"), None);
}

/// A parting frame in the same read as a reconnect's `HelloReply` (a server shutting
/// down just after accepting) is not lost with the hello's buffer: the reconnect counts
/// as failed, the next one succeeds, and the parted increment is resent and counts once,
/// instead of being written into the closing socket (an unknown outcome).
#[test]
fn blocking_a_parting_frame_read_with_the_hello_reply_is_not_lost() {
    let server = FakeServer::start(1, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    server.state.part_after_hello.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).unwrap(), 1);
    assert_eq!(server.value("like"), Some(1));
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn async_a_parting_frame_read_with_the_hello_reply_is_not_lost() {
    let server = FakeServer::start(1, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    server.state.part_after_hello.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
    assert_eq!(server.value("like"), Some(1));
    assert_eq!(server.state.parted_connections.load(Ordering::SeqCst), 2);
}

/// A keyed frame parted, then its resend refused as "idempotency table full": the only
/// earlier copy went to a connection that parted, so the server never saw the key and
/// the refusal means what it says, not applied (not an unknown outcome).
#[test]
fn blocking_a_parted_frame_refused_as_table_full_on_resend_is_not_applied() {
    let server = FakeServer::start(1, 16);
    let mut client = Client::connect_with(server.main_addr, auto_keys()).unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    server.state.full_on_new_key.store(1, Ordering::SeqCst);
    let error = client.incr("like", 1).unwrap_err();
    assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
    assert_eq!(server.value("like"), None);
}

#[tokio::test(flavor = "current_thread")]
async fn async_a_parted_frame_refused_as_table_full_on_resend_is_not_applied() {
    let server = FakeServer::start(1, 16);
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    server.state.part_on_batch.store(1, Ordering::SeqCst);
    server.state.full_on_new_key.store(1, Ordering::SeqCst);
    let error = client.incr("like", 1).await.unwrap_err();
    assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
    assert_eq!(server.value("like"), None);
}
