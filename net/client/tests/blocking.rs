//! The blocking client against the fake server: routing, batching, pipelining, retries
//! with idempotency keys, timeouts and typed errors.

mod fake_server;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_server::FakeServer;
use tally_client::{
    BoundPolicy, Client, ClientConfig, ClientError, Durability, Op, Outcome, Rejection, Status,
};

fn key(index: usize) -> String {
    format!("key:{index}")
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
fn operations_route_to_their_owning_core() {
    let server = FakeServer::start(3, 32);
    let mut client = Client::connect(server.main_addr).unwrap();
    assert_eq!(client.connection_count(), 3);
    for index in 0..200 {
        assert_eq!(client.incr(key(index), index as i64).unwrap(), index as i64);
    }
    assert_eq!(server.state.misrouted_ops.load(Ordering::SeqCst), 0);
    assert_eq!(server.state.main_port_ops.load(Ordering::SeqCst), 0);
    let per_core = server.state.ops_per_core.lock().unwrap().clone();
    assert!(
        per_core.iter().all(|&count| count > 0),
        "every core got keys: {per_core:?}"
    );
    assert_eq!(per_core.iter().sum::<u64>(), 200);
}

#[test]
fn every_single_operation_returns_what_the_server_says() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    assert_eq!(client.get("likes").unwrap(), 0);
    assert!(!client.exists("likes").unwrap());
    assert_eq!(client.incr("likes", 5).unwrap(), 5);
    assert_eq!(client.decr("likes", 2).unwrap(), 3);
    assert!(client.exists("likes").unwrap());
    assert_eq!(client.set("likes", 40).unwrap(), 40);
    assert_eq!(client.del("likes").unwrap(), Some(40));
    assert_eq!(client.del("likes").unwrap(), None);
    assert_eq!(server.value("likes"), None);
    client.ping().unwrap();
    assert!(client
        .stats()
        .unwrap()
        .iter()
        .any(|(name, _)| name == "batches"));
}

#[test]
fn bounds_reject_and_clamp() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    client.set_bounds("quota", Some(0), Some(10)).unwrap();
    assert_eq!(client.incr("quota", 10).unwrap(), 10);
    let error = client.incr("quota", 1).unwrap_err();
    let ClientError::Rejected(rejection) = error else {
        panic!("expected a rejection, got {error:?}")
    };
    assert_eq!(
        rejection,
        Rejection {
            status: Status::AboveCeiling,
            detail: 10
        }
    );
    assert_eq!(
        client.decr("quota", 11).unwrap_err().to_string(),
        "rejected: the value would fall below the floor 0"
    );
    let clamped = client
        .execute(&Op::Add {
            key: "quota",
            delta: -50,
            policy: BoundPolicy::Clamp,
        })
        .unwrap();
    assert_eq!(
        clamped,
        Outcome {
            value: 0,
            existed: true,
            clamped: true
        }
    );
    let invalid = client.set_bounds("quota", Some(5), Some(1)).unwrap_err();
    assert!(matches!(
        invalid,
        ClientError::Rejected(Rejection {
            status: Status::InvalidBounds,
            detail: 5
        })
    ));
    assert!(matches!(
        client.decr("quota", i64::MIN),
        Err(ClientError::Rejected(_))
    ));
}

#[test]
fn batch_across_cores_keeps_the_callers_order() {
    let server = FakeServer::start(3, 64);
    let mut client = Client::connect(server.main_addr).unwrap();
    let mut ops = Vec::new();
    for index in 0..300 {
        ops.push(Op::Add {
            key: key(index % 50),
            delta: 1,
            policy: BoundPolicy::Reject,
        });
        ops.push(Op::Get {
            key: key(index % 50),
        });
    }
    let results = client.batch(&ops).unwrap();
    assert_eq!(results.len(), ops.len());
    // Each key is touched once every 50 pairs, so the nth pair for a key reads n.
    for (pair, chunk) in results.chunks(2).enumerate() {
        let expected = (pair / 50 + 1) as i64;
        assert_eq!(chunk[0].unwrap().value, expected, "add of pair {pair}");
        assert_eq!(chunk[1].unwrap().value, expected, "get of pair {pair}");
    }
    assert_eq!(server.state.misrouted_ops.load(Ordering::SeqCst), 0);
}

#[test]
fn batch_over_the_frame_limit_is_split() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    let ops: Vec<Op> = (0..25_000)
        .map(|index| Op::Add {
            key: key(index % 7).into_bytes(),
            delta: 1,
            policy: BoundPolicy::Reject,
        })
        .collect();
    let results = client.batch_with(&ops, Durability::Relaxed).unwrap();
    assert_eq!(results.len(), 25_000);
    assert!(results.iter().all(Result::is_ok));
    let total: i64 = (0..7).map(|index| server.value(&key(index)).unwrap()).sum();
    assert_eq!(total, 25_000);
    assert!(
        server.state.batch_frames.load(Ordering::SeqCst) >= 3,
        "25,000 ops need at least 3 frames"
    );
}

#[test]
fn pipeline_sends_one_frame_per_operation_when_asked() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    let mut pipeline = client.pipeline();
    for index in 0..500 {
        pipeline.incr(key(index % 10), 2);
    }
    pipeline.get(key(0)).exists("missing").del(key(1));
    pipeline.ops_per_frame(1);
    assert_eq!(pipeline.len(), 503);
    let results = pipeline.execute().unwrap();
    assert_eq!(results.len(), 503);
    assert_eq!(results[500].unwrap().value, 100);
    assert!(!results[501].unwrap().existed);
    assert_eq!(results[502].unwrap().value, 100);
    assert_eq!(server.state.batch_frames.load(Ordering::SeqCst), 503);
}

#[test]
fn pipeline_decr_of_i64_min_fails_without_sending() {
    let server = FakeServer::start(1, 4);
    let mut client = Client::connect(server.main_addr).unwrap();
    let mut pipeline = client.pipeline();
    pipeline.incr("a", 1).decr("a", i64::MIN);
    assert!(matches!(pipeline.execute(), Err(ClientError::Rejected(_))));
    assert_eq!(server.state.batch_frames.load(Ordering::SeqCst), 0);
}

#[test]
fn lost_reply_is_retried_with_the_same_idempotency_key() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect_with(server.main_addr, auto_keys()).unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like:post:1", 1).unwrap(), 1);
    assert_eq!(server.value("like:post:1"), Some(1), "applied exactly once");
    assert_eq!(server.state.duplicate_batches.load(Ordering::SeqCst), 1);
    // The connection was replaced; the client keeps working.
    assert_eq!(client.incr("like:post:1", 1).unwrap(), 2);
}

/// Without automatic keys (the default) a write whose reply was lost is not resent: it
/// may have been applied, so the call says so; a read is still resent (review1 F1).
#[test]
fn by_default_a_write_whose_reply_was_lost_is_not_resent() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    let error = client.incr("like:post:1", 1).unwrap_err();
    assert!(
        matches!(error, ClientError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert_eq!(server.value("like:post:1"), Some(1), "applied once");
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    assert_eq!(client.get("like:post:1").unwrap(), 1, "a read is resent");
    let ops: Vec<Op> = (0..50)
        .map(|index| Op::Add {
            key: key(index).into_bytes(),
            delta: 1,
            policy: BoundPolicy::Reject,
        })
        .collect();
    client.batch(&ops).unwrap();
    assert_eq!(
        server.state.keyed_frames.load(Ordering::SeqCst),
        0,
        "no keys sent"
    );
    assert_eq!(server.state.duplicate_batches.load(Ordering::SeqCst), 0);
}

/// With automatic keys on, each key is drawn so that the server keeps it on the core the
/// frame goes to: no cross-core hop (review1 F7).
#[test]
fn automatic_keys_are_homed_on_the_core_the_frame_is_sent_to() {
    let server = FakeServer::start(4, 32);
    let mut client = Client::connect_with(server.main_addr, auto_keys()).unwrap();
    for index in 0..100 {
        client.incr(key(index), 1).unwrap();
    }
    let ops: Vec<Op> = (0..100)
        .map(|index| Op::Add {
            key: key(index).into_bytes(),
            delta: 1,
            policy: BoundPolicy::Reject,
        })
        .collect();
    client
        .batch_framed(&ops, Durability::ServerDefault, 7)
        .unwrap();
    assert!(server.state.keyed_frames.load(Ordering::SeqCst) >= 100 + 4);
    assert_eq!(server.state.keys_homed_elsewhere.load(Ordering::SeqCst), 0);
    assert_eq!(server.state.misrouted_ops.load(Ordering::SeqCst), 0);
}

#[test]
fn lost_reply_of_a_batch_is_retried_per_core() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect_with(server.main_addr, auto_keys()).unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    let ops: Vec<Op> = (0..100)
        .map(|index| Op::Add {
            key: key(index).into_bytes(),
            delta: 3,
            policy: BoundPolicy::Reject,
        })
        .collect();
    let results = client.batch(&ops).unwrap();
    assert!(results.iter().all(|result| result.unwrap().value == 3));
    assert!(
        (0..100).all(|index| server.value(&key(index)) == Some(3)),
        "no operation applied twice"
    );
}

#[test]
fn without_retries_a_lost_reply_is_an_unknown_outcome_not_a_transient_error() {
    let server = FakeServer::start(1, 4);
    let config = ClientConfig {
        retries: 0,
        ..ClientConfig::default()
    };
    let mut client = Client::connect_with(server.main_addr, config).unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    let error = client.incr("views", 1).unwrap_err();
    // It was applied: a "retry if transient" loop must not repeat it under a new key.
    let ClientError::OutcomeUnknown { cause } = &error else {
        panic!("{error:?}");
    };
    assert!(!error.is_transient(), "{error:?}");
    assert!(
        cause.is_transient(),
        "the cause is a lost connection: {cause:?}"
    );
    assert_eq!(server.value("views"), Some(1));
    assert_eq!(
        client.incr("views", 1).unwrap(),
        2,
        "the client reconnects on the next call"
    );
}

#[test]
fn a_silent_server_times_out() {
    let server = FakeServer::start(1, 4);
    let config = ClientConfig {
        read_timeout: Duration::from_millis(150),
        retries: 1,
        ..ClientConfig::default()
    };
    let mut client = Client::connect_with(server.main_addr, config).unwrap();
    server.state.stall.store(true, Ordering::SeqCst);
    let error = client.get("x").unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    server.state.stall.store(false, Ordering::SeqCst);
    assert_eq!(client.get("x").unwrap(), 0);
}

#[test]
fn whole_request_errors_are_typed_and_the_client_recovers() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    let error = client.incr("poison", 1).unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Server {
                code: tally_client::ErrorCode::Internal,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(client.incr("fine", 1).unwrap(), 1);
}

#[test]
fn invalid_keys_are_caught_before_sending() {
    let server = FakeServer::start(1, 4);
    let mut client = Client::connect(server.main_addr).unwrap();
    let error = client.incr(vec![b'k'; 256], 1).unwrap_err();
    assert!(matches!(error, ClientError::InvalidKey { length: 256 }));
    // An empty key, too (review1 F8), on every path: single calls, batches, pipelines
    // and calls under the caller's key.
    let empty = client.incr("", 1).unwrap_err();
    assert!(
        matches!(empty, ClientError::InvalidKey { length: 0 }),
        "{empty:?}"
    );
    let ops = [Op::Get { key: &b"fine"[..] }, Op::Get { key: &b""[..] }];
    let batch = client.batch(&ops).unwrap_err();
    assert!(
        matches!(batch, ClientError::InvalidKey { length: 0 }),
        "{batch:?}"
    );
    let keyed = client.incr_idempotent("", 1, 7).unwrap_err();
    assert!(
        matches!(keyed, ClientError::InvalidKey { length: 0 }),
        "{keyed:?}"
    );
    let piped = client.pipeline().incr("", 1).execute().unwrap_err();
    assert!(
        matches!(piped, ClientError::InvalidKey { length: 0 }),
        "{piped:?}"
    );
    assert_eq!(
        server.state.batch_frames.load(Ordering::SeqCst),
        0,
        "nothing was sent"
    );
}

#[test]
fn connection_refused_is_a_connect_error() {
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = Client::connect(free_port).unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains("cannot connect"));
}

#[test]
fn without_spinning_or_shard_awareness_everything_still_works() {
    let server = FakeServer::start(2, 16);
    let config = ClientConfig {
        spin: Duration::ZERO,
        shard_aware: false,
        ..ClientConfig::default()
    };
    let mut client = Client::connect_with(server.main_addr, config).unwrap();
    assert_eq!(client.connection_count(), 1);
    for index in 0..50 {
        client.incr(key(index), 1).unwrap();
    }
    assert_eq!(server.state.main_port_ops.load(Ordering::SeqCst), 50);
}

#[test]
fn invalid_configuration_is_refused() {
    let config = ClientConfig {
        retries: 11,
        ..ClientConfig::default()
    };
    assert!(matches!(
        Client::connect_with("127.0.0.1:1", config),
        Err(ClientError::InvalidConfig(_))
    ));
}

#[test]
fn core_stats_of_a_connection_that_does_not_exist_is_an_error() {
    let server = FakeServer::start(2, 16);
    let mut client = Client::connect(server.main_addr).unwrap();
    assert!(client.core_stats(1).is_ok());
    let error = client.core_stats(2).unwrap_err();
    assert!(
        matches!(error, ClientError::NoSuchConnection { index: 2, count: 2 }),
        "{error:?}"
    );
}
