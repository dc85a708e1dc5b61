//! Both clients' retry policy against the fake server: a resend that meets its first copy
//! still running waits for that copy's results; a shard port that stops answering sends
//! the client to the main port (for a new map, or to be forwarded); a call that may have
//! been applied never ends with an error that reads "not applied"; a call made while the
//! server restarts waits for it, within its deadline.

mod fake_server;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fake_server::FakeServer;
use tally_client::{AsyncClient, Client, ClientConfig, ClientError, PartialResult, Status};

/// A key the fake server's map (2 cores, 16 partitions) gives to core 1.
fn key_of_core_1(server: &FakeServer) -> String {
    (0..)
        .map(|index| format!("key:{index}"))
        .find(|key| server.hello.owner_of_key(key.as_bytes()) == 1)
        .unwrap()
}

/// The client's defaults with automatic idempotency keys on: every mutating frame carries
/// a key of the client's own, so it is resent after a lost connection.
fn auto_keys() -> ClientConfig {
    ClientConfig {
        auto_idempotency_keys: true,
        ..ClientConfig::default()
    }
}

/// Automatic keys on (as [`auto_keys`]) and a deadline of `call_timeout`.
fn with_call_timeout(call_timeout: Duration) -> ClientConfig {
    ClientConfig {
        call_timeout,
        ..auto_keys()
    }
}

fn assert_unknown_after_refused_connect(error: &ClientError) {
    let ClientError::OutcomeUnknown { cause } = error else {
        panic!("an applied increment must not read as not applied: {error:?}");
    };
    assert!(matches!(**cause, ClientError::Connect { .. }), "{error:?}");
}

/// A resend refused as "idempotency table full" may follow a first copy that was
/// applied: the call's outcome is unknown, its cause the refusal.
fn assert_unknown_after_resend_refused_as_full(error: &ClientError) {
    let ClientError::OutcomeUnknown { cause } = error else {
        panic!("{error:?}");
    };
    assert!(
        matches!(**cause, ClientError::NotApplied { .. }),
        "{cause:?}"
    );
}

/// Reopens every port after `delay`, from another thread.
fn reopen_later(server: &Arc<FakeServer>, delay: Duration) -> std::thread::JoinHandle<()> {
    let server = server.clone();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        server.reopen_port(Some(0));
        server.reopen_port(Some(1));
        server.reopen_port(None);
    })
}

fn close_every_port(server: &FakeServer) {
    server.close_port(Some(0));
    server.close_port(Some(1));
    server.close_port(None);
}

#[test]
fn blocking_a_resend_that_finds_its_first_copy_running_waits_for_its_results() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect_with(server.main_addr, auto_keys()).unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    server.state.busy_on_duplicate.store(2, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).unwrap(), 1);
    assert_eq!(server.state.busy_replies.load(Ordering::SeqCst), 2);
    assert_eq!(server.value("like"), Some(1));
}

#[tokio::test]
async fn async_a_resend_that_finds_its_first_copy_running_waits_for_its_results() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    server.state.busy_on_duplicate.store(2, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
    assert_eq!(server.state.busy_replies.load(Ordering::SeqCst), 2);
    assert_eq!(server.value("like"), Some(1));
}

#[test]
fn blocking_a_vanished_shard_port_asks_the_main_port_for_the_new_map() {
    let server = FakeServer::start(2, 16);
    let key = key_of_core_1(&server);
    let mut client = Client::connect(server.main_addr).unwrap();
    assert_eq!(client.incr(&key, 1).unwrap(), 1);
    // Restarted with one core: core 1's port is gone.
    let new_map = server.shrink_to_one_core();
    server.close_port(Some(1));
    assert_eq!(client.incr(&key, 1).unwrap(), 2);
    assert_eq!(client.shard_map().shard_ports, new_map.shard_ports);
    assert_eq!(client.connection_count(), 1);
    assert_eq!(client.incr(&key, 1).unwrap(), 3);
}

#[tokio::test]
async fn async_a_vanished_shard_port_asks_the_main_port_for_the_new_map() {
    let server = FakeServer::start(2, 16);
    let key = key_of_core_1(&server);
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    assert_eq!(client.incr(&key, 1).await.unwrap(), 1);
    let new_map = server.shrink_to_one_core();
    server.close_port(Some(1));
    assert_eq!(client.incr(&key, 1).await.unwrap(), 2);
    assert_eq!(client.incr(&key, 1).await.unwrap(), 3);
    assert_eq!(client.shard_map().shard_ports, new_map.shard_ports);
}

#[test]
fn blocking_an_unreachable_shard_port_falls_back_to_the_main_port() {
    let server = FakeServer::start(2, 16);
    let key = key_of_core_1(&server);
    let mut client = Client::connect(server.main_addr).unwrap();
    assert_eq!(client.incr(&key, 1).unwrap(), 1);
    server.close_port(Some(1));
    assert_eq!(client.incr(&key, 1).unwrap(), 2);
    assert_eq!(client.incr(&key, 1).unwrap(), 3);
    assert_eq!(server.state.main_port_ops.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn async_an_unreachable_shard_port_falls_back_to_the_main_port() {
    let server = FakeServer::start(2, 16);
    let key = key_of_core_1(&server);
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    assert_eq!(client.incr(&key, 1).await.unwrap(), 1);
    server.close_port(Some(1));
    assert_eq!(client.incr(&key, 1).await.unwrap(), 2);
    assert_eq!(client.incr(&key, 1).await.unwrap(), 3);
    assert_eq!(server.state.main_port_ops.load(Ordering::SeqCst), 2);
}

#[test]
fn blocking_an_applied_increment_whose_reconnects_are_refused_is_of_unknown_outcome() {
    let server = FakeServer::start(2, 16);
    let config = with_call_timeout(Duration::from_millis(300));
    let mut client = Client::connect_with(server.main_addr, config).unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    // The first copy is applied, its connection dropped, and every port then refuses.
    server
        .state
        .closed_ports_after_apply
        .store(true, Ordering::SeqCst);
    let error = client.incr("like", 1).unwrap_err();
    assert_unknown_after_refused_connect(&error);
    assert_eq!(server.value("like"), Some(1));
}

#[tokio::test]
async fn async_an_applied_increment_whose_reconnects_are_refused_is_of_unknown_outcome() {
    let server = FakeServer::start(2, 16);
    let config = with_call_timeout(Duration::from_millis(300));
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    server
        .state
        .closed_ports_after_apply
        .store(true, Ordering::SeqCst);
    let error = client.incr("like", 1).await.unwrap_err();
    assert_unknown_after_refused_connect(&error);
    assert_eq!(server.value("like"), Some(1));
}

#[test]
fn blocking_a_call_made_while_the_server_restarts_waits_for_it() {
    let server = Arc::new(FakeServer::start(2, 16));
    let mut client = Client::connect(server.main_addr).unwrap();
    close_every_port(&server);
    let reopened = reopen_later(&server, Duration::from_millis(300));
    assert_eq!(client.incr("like", 1).unwrap(), 1);
    reopened.join().unwrap();
    assert_eq!(server.value("like"), Some(1));
}

#[tokio::test]
async fn async_a_call_made_while_the_server_restarts_waits_for_it() {
    let server = Arc::new(FakeServer::start(2, 16));
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    close_every_port(&server);
    let reopened = reopen_later(&server, Duration::from_millis(300));
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
    reopened.join().unwrap();
    assert_eq!(server.value("like"), Some(1));
}

#[test]
fn blocking_a_call_that_sent_nothing_ends_by_its_deadline_saying_so() {
    let server = FakeServer::start(2, 16);
    let config = with_call_timeout(Duration::from_millis(200));
    let mut client = Client::connect_with(server.main_addr, config).unwrap();
    close_every_port(&server);
    let error = client.incr("like", 1).unwrap_err();
    assert!(
        matches!(error, ClientError::Connect { .. }),
        "nothing was sent: {error:?}"
    );
}

#[tokio::test]
async fn async_a_call_that_sent_nothing_ends_by_its_deadline_saying_so() {
    let server = FakeServer::start(2, 16);
    let config = with_call_timeout(Duration::from_millis(200));
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    close_every_port(&server);
    // Let the connection tasks see their connections closed, so nothing is written.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let error = client.incr("like", 1).await.unwrap_err();
    assert!(
        matches!(error, ClientError::Connect { .. }),
        "nothing was sent: {error:?}"
    );
}

fn assert_unavailable_is_unknown(error: &ClientError) {
    let ClientError::OutcomeUnknown { cause } = error else {
        panic!("Unavailable is of unknown outcome: {error:?}");
    };
    let ClientError::Rejected(rejection) = **cause else {
        panic!("{error:?}");
    };
    assert_eq!(rejection.status, Status::Unavailable);
    assert!(rejection.is_outcome_unknown());
}

#[test]
fn blocking_unavailable_is_of_unknown_outcome() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    assert_unavailable_is_unknown(&client.incr("unavailable", 1).unwrap_err());
    assert_eq!(server.value("unavailable"), Some(1));
}

#[tokio::test]
async fn async_unavailable_is_of_unknown_outcome() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    assert_unavailable_is_unknown(&client.incr("unavailable", 1).await.unwrap_err());
}

#[tokio::test]
async fn async_a_call_given_up_while_the_server_is_away_is_never_sent() {
    let server = Arc::new(FakeServer::start(2, 16));
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    close_every_port(&server);
    // Let the connection tasks see their connections closed, so nothing is written.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let given_up = tokio::time::timeout(Duration::from_millis(100), client.incr("like", 1)).await;
    assert!(given_up.is_err(), "the server is away: {given_up:?}");
    server.reopen_port(Some(0));
    server.reopen_port(Some(1));
    server.reopen_port(None);
    // The task's next connect attempt comes within its backoff (at most 500 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.value("like"), None);
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
}

/// A batch of an increment on one core and the poisoned key (refused whole by the fake
/// server) on the other.
fn half_poisoned_batch(server: &FakeServer) -> Vec<tally_client::Op<String>> {
    let poisoned_core = server.hello.owner_of_key(b"poison");
    let other = (0..)
        .map(|index| format!("key:{index}"))
        .find(|key| server.hello.owner_of_key(key.as_bytes()) != poisoned_core)
        .unwrap();
    [other, "poison".to_owned()]
        .into_iter()
        .map(|key| tally_client::Op::Add {
            key,
            delta: 1,
            policy: tally_client::BoundPolicy::Reject,
        })
        .collect()
}

/// Waits until the fake server has applied what was sent to `key` (its connection thread
/// may still be reading it when the client returns).
fn wait_for_value(server: &FakeServer, key: &[u8], value: i64) {
    let key = std::str::from_utf8(key).unwrap();
    for _ in 0..500 {
        if server.value(key) == Some(value) {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{key} never reached {value}: {:?}", server.value(key));
}

/// The poisoned half was refused whole (not applied), the other half applied: the
/// error says so per operation, not `OutcomeUnknown` for all.
fn assert_partly_applied_after_refusal(error: &ClientError) {
    let ClientError::PartlyApplied { results, cause } = error else {
        panic!("half the batch was applied, half refused: {error:?}");
    };
    assert!(matches!(**cause, ClientError::Server { .. }), "{error:?}");
    assert!(
        matches!(results[..], [PartialResult::Answered(Ok(outcome)), PartialResult::NotApplied] if outcome.value == 1),
        "{results:?}"
    );
}

#[test]
fn blocking_a_batch_refused_on_one_core_and_applied_on_another_is_partly_applied() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    let ops = half_poisoned_batch(&server);
    assert_partly_applied_after_refusal(&client.batch(&ops).unwrap_err());
    wait_for_value(&server, ops[0].key(), 1);
}

#[tokio::test]
async fn async_a_batch_refused_on_one_core_and_applied_on_another_is_partly_applied() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    let ops = half_poisoned_batch(&server);
    assert_partly_applied_after_refusal(&client.batch(&ops).await.unwrap_err());
    wait_for_value(&server, ops[0].key(), 1);
}

/// A new key refused because the server's idempotency memory is full: nothing applied,
/// said at once, not resent until the deadline.
#[test]
fn blocking_a_new_key_refused_as_table_full_is_not_applied_at_once() {
    let server = FakeServer::start(1, 4);
    let mut client =
        Client::connect_with(server.main_addr, with_call_timeout(Duration::from_secs(5))).unwrap();
    server.state.full_on_new_key.store(1, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let error = client.incr("like", 1).unwrap_err();
    assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(server.value("like"), None);
    assert_eq!(
        client.incr("like", 1).unwrap(),
        1,
        "the next call goes through"
    );
}

#[tokio::test]
async fn async_a_new_key_refused_as_table_full_is_not_applied_at_once() {
    let server = FakeServer::start(1, 4);
    let config = with_call_timeout(Duration::from_secs(5));
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    server.state.full_on_new_key.store(1, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let error = client.incr("like", 1).await.unwrap_err();
    assert!(matches!(error, ClientError::NotApplied { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(server.value("like"), None);
}

/// A resend refused as "table full" after its first copy was applied: the server does not
/// know the key (it forgot it), so the call may have been applied.
#[test]
fn blocking_a_resend_refused_as_table_full_is_of_unknown_outcome() {
    let server = FakeServer::start(1, 4);
    let mut client =
        Client::connect_with(server.main_addr, with_call_timeout(Duration::from_secs(5))).unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    server.state.full_on_known_key.store(1, Ordering::SeqCst);
    let error = client.incr("like", 1).unwrap_err();
    assert_unknown_after_resend_refused_as_full(&error);
    assert_eq!(server.value("like"), Some(1));
}

#[tokio::test]
async fn async_a_resend_refused_as_table_full_is_of_unknown_outcome() {
    let server = FakeServer::start(1, 4);
    let config = with_call_timeout(Duration::from_secs(5));
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    server.state.full_on_known_key.store(1, Ordering::SeqCst);
    let error = client.incr("like", 1).await.unwrap_err();
    assert_unknown_after_resend_refused_as_full(&error);
    assert_eq!(server.value("like"), Some(1));
}

/// A call whose new connection's hello gets no answer was never sent: its error says so,
/// not "waiting for a reply", which reads as "sent, maybe applied" (review1 F3).
fn assert_hello_timeout_not_sent(error: &ClientError) {
    assert!(
        matches!(error, ClientError::Timeout { .. }),
        "nothing was sent: {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("hello") && message.contains("not sent"),
        "{message}"
    );
}

fn hello_stalls_config() -> ClientConfig {
    ClientConfig {
        read_timeout: Duration::from_millis(100),
        call_timeout: Duration::from_millis(300),
        retries: 0,
        ..ClientConfig::default()
    }
}

#[test]
fn blocking_a_call_whose_hello_times_out_says_it_was_not_sent() {
    let server = FakeServer::start(1, 4);
    let mut client = Client::connect_with(server.main_addr, hello_stalls_config()).unwrap();
    client.incr("like", 1).unwrap();
    server.part_idle_connections(1);
    server.state.stall.store(true, Ordering::SeqCst);
    let error = client.incr("like", 1).unwrap_err();
    assert_hello_timeout_not_sent(&error);
    assert_eq!(server.value("like"), Some(1));
}

#[tokio::test]
async fn async_a_call_whose_hello_times_out_says_it_was_not_sent() {
    let server = FakeServer::start(1, 4);
    let client = AsyncClient::connect_with(server.main_addr, hello_stalls_config())
        .await
        .unwrap();
    client.incr("like", 1).await.unwrap();
    server.part_idle_connections(1);
    server.state.stall.store(true, Ordering::SeqCst);
    // Let the connection task see its connection closed, so the call opens a new one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let error = client.incr("like", 1).await.unwrap_err();
    assert_hello_timeout_not_sent(&error);
    assert_eq!(server.value("like"), Some(1));
}

/// Keys spread over both cores of a two-core fake server.
fn spread_keys() -> Vec<String> {
    (0..16).map(|index| format!("part:{index}")).collect()
}

fn adds(keys: &[String]) -> Vec<tally_client::Op<&[u8]>> {
    keys.iter()
        .map(|key| tally_client::Op::Add {
            key: key.as_bytes(),
            delta: 1,
            policy: tally_client::BoundPolicy::Reject,
        })
        .collect()
}

/// A batch whose frame for one core was refused as a whole ("table full", nothing
/// applied) while the other core's was applied: the error carries each operation's fate,
/// which matches the server, and the keys it calls not applied are exactly the ones to
/// send again. Returns those keys.
fn assert_partly_applied(server: &FakeServer, keys: &[String], error: ClientError) -> Vec<String> {
    let ClientError::PartlyApplied { results, cause } = error else {
        panic!("expected a partly applied batch, got {error:?}");
    };
    assert!(
        matches!(*cause, ClientError::NotApplied { .. }),
        "{cause:?}"
    );
    assert_eq!(results.len(), keys.len());
    let mut refused = Vec::new();
    for (key, result) in keys.iter().zip(&results) {
        match result {
            PartialResult::Answered(Ok(outcome)) => {
                assert_eq!(outcome.value, 1, "{key}");
                assert_eq!(server.value(key), Some(1), "{key}");
            }
            PartialResult::NotApplied => {
                assert_eq!(server.value(key), None, "{key}");
                refused.push(key.clone());
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(
        !refused.is_empty() && refused.len() < keys.len(),
        "{results:?}"
    );
    refused
}

#[test]
fn blocking_a_batch_refused_on_one_core_reports_each_operations_fate() {
    let server = FakeServer::start(2, 16);
    // Automatic keys, so that the server can refuse one core's frame as "table full".
    let mut client = Client::connect_with(server.main_addr, auto_keys()).unwrap();
    server.state.full_on_new_key.store(1, Ordering::SeqCst);
    let keys = spread_keys();
    let error = client.batch(&adds(&keys)).unwrap_err();
    let refused = assert_partly_applied(&server, &keys, error);
    for result in client.batch(&adds(&refused)).unwrap() {
        assert_eq!(result.unwrap().value, 1);
    }
    for key in &keys {
        assert_eq!(server.value(key), Some(1), "{key} counted once");
    }
}

#[tokio::test]
async fn async_a_batch_refused_on_one_core_reports_each_operations_fate() {
    let server = FakeServer::start(2, 16);
    // Automatic keys, so that the server can refuse one core's frame as "table full".
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    server.state.full_on_new_key.store(1, Ordering::SeqCst);
    let keys = spread_keys();
    let error = client.batch(&adds(&keys)).await.unwrap_err();
    let refused = assert_partly_applied(&server, &keys, error);
    for result in client.batch(&adds(&refused)).await.unwrap() {
        assert_eq!(result.unwrap().value, 1);
    }
    for key in &keys {
        assert_eq!(server.value(key), Some(1), "{key} counted once");
    }
}

/// Server A (two cores) restarts with one core, freeing core 1's shard port, and another
/// server B starts with its main port there. A client that knew A must not adopt B's map
/// or write to B: it asks A's main address, adopts A's one-core map, and every key keeps
/// counting on A.
fn another_server_on_a_freed_shard_port(server: &FakeServer) -> FakeServer {
    server.shrink_to_one_core();
    server.close_port(Some(1));
    let freed = server.shard_addrs[1].to_string();
    FakeServer::start_at(&freed, 0xB0B, 1, 16)
}

#[test]
fn blocking_a_freed_shard_port_taken_by_another_server_is_not_trusted() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    let keys = spread_keys();
    for key in &keys {
        assert_eq!(client.incr(key, 1).unwrap(), 1);
    }
    let stranger = another_server_on_a_freed_shard_port(&server);
    for key in &keys {
        assert_eq!(client.incr(key, 1).unwrap(), 2, "{key} counted on A");
    }
    assert_eq!(
        client.shard_map().shard_ports,
        vec![server.shard_addrs[0].port()]
    );
    assert_eq!(stranger.state.batch_frames.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn async_a_freed_shard_port_taken_by_another_server_is_not_trusted() {
    let server = Arc::new(FakeServer::start(2, 16));
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    let keys = spread_keys();
    for key in &keys {
        assert_eq!(client.incr(key, 1).await.unwrap(), 1);
    }
    let stranger = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || another_server_on_a_freed_shard_port(&server))
            .await
            .unwrap()
    };
    for round in 2..=3 {
        for key in &keys {
            let value = client.incr(key, 1).await.unwrap();
            assert_eq!(value, round, "{key} counted on A");
        }
    }
    assert_eq!(
        client.shard_map().shard_ports,
        vec![server.shard_addrs[0].port()]
    );
    assert_eq!(stranger.state.batch_frames.load(Ordering::SeqCst), 0);
}

/// The freed shard port is taken by a service that does not speak Tally: its answer is a
/// failed hello like a refused connect, so the client asks the main address, which
/// brings the new map, instead of failing that core's keys for good.
#[test]
fn blocking_a_freed_shard_port_taken_by_another_service_falls_back_to_the_main_port() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    let keys = spread_keys();
    for key in &keys {
        assert_eq!(client.incr(key, 1).unwrap(), 1);
    }
    server.shrink_to_one_core();
    server.close_port(Some(1));
    let junk = std::net::TcpListener::bind(server.shard_addrs[1]).unwrap();
    std::thread::spawn(move || {
        for stream in junk.incoming() {
            use std::io::Write;
            let _ = stream
                .unwrap()
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    for key in &keys {
        assert_eq!(client.incr(key, 1).unwrap(), 2, "{key}");
    }
    assert_eq!(client.shard_map().core_count(), 1);
}

/// The server at the main address is gone and another server answers on its old shard
/// port: the client cannot confirm it, so it refuses (a handshake error, nothing sent)
/// rather than count on the stranger.
#[test]
fn blocking_a_stranger_on_a_shard_port_is_refused_while_the_main_address_is_down() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    let keys = spread_keys();
    for key in &keys {
        assert_eq!(client.incr(key, 1).unwrap(), 1);
    }
    server.close_port(Some(1));
    server.close_port(None);
    let stranger = FakeServer::start_at(&server.shard_addrs[1].to_string(), 0xB0B, 1, 16);
    let core_1_key = keys
        .iter()
        .find(|key| client.route(key.as_bytes()) == 1)
        .unwrap();
    let error = client.incr(core_1_key, 1).unwrap_err();
    assert!(matches!(error, ClientError::Handshake { .. }), "{error:?}");
    assert_eq!(stranger.state.batch_frames.load(Ordering::SeqCst), 0);
}
