//! The tokio client against the fake server: operations, automatic batching of concurrent
//! calls, retries with idempotency keys, and timeouts.

mod fake_server;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_server::FakeServer;
use tally_client::{AsyncClient, BoundPolicy, ClientConfig, ClientError, Op, Rejection, Status};

/// The client's defaults with automatic idempotency keys on: every mutating frame carries
/// a key of the client's own, so it is resent after a lost connection.
fn auto_keys() -> ClientConfig {
    ClientConfig {
        auto_idempotency_keys: true,
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn operations_return_what_the_server_says() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    assert_eq!(client.incr("a", 5).await.unwrap(), 5);
    assert_eq!(client.decr("a", 1).await.unwrap(), 4);
    assert_eq!(client.get("a").await.unwrap(), 4);
    assert_eq!(client.set("a", 9).await.unwrap(), 9);
    assert!(client.exists("a").await.unwrap());
    assert_eq!(client.del("a").await.unwrap(), Some(9));
    client.set_bounds("b", None, Some(1)).await.unwrap();
    let error = client.incr("b", 2).await.unwrap_err();
    assert!(matches!(
        error,
        ClientError::Rejected(Rejection {
            status: Status::AboveCeiling,
            detail: 1
        })
    ));
    assert!(matches!(
        client.incr(vec![0u8; 300], 1).await,
        Err(ClientError::InvalidKey { length: 300 })
    ));
    // An empty key is refused before sending too (review1 F8), on every path.
    let frames_before = server.state.batch_frames.load(Ordering::SeqCst);
    assert!(matches!(
        client.incr("", 1).await,
        Err(ClientError::InvalidKey { length: 0 })
    ));
    let ops = [Op::Get { key: &b"a"[..] }, Op::Get { key: &b""[..] }];
    assert!(matches!(
        client.batch(&ops).await,
        Err(ClientError::InvalidKey { length: 0 })
    ));
    assert!(matches!(
        client.incr_idempotent("", 1, 7).await,
        Err(ClientError::InvalidKey { length: 0 })
    ));
    assert!(matches!(
        client.pipeline().incr("", 1).execute().await,
        Err(ClientError::InvalidKey { length: 0 })
    ));
    assert_eq!(
        server.state.batch_frames.load(Ordering::SeqCst),
        frames_before,
        "nothing was sent"
    );
    assert_eq!(server.state.misrouted_ops.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn concurrent_calls_are_coalesced_into_few_frames() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|index| {
            let client = client.clone();
            tokio::spawn(async move { client.incr(format!("page:{}", index % 4), 1).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let total: i64 = (0..4)
        .map(|index| server.value(&format!("page:{index}")).unwrap())
        .sum();
    assert_eq!(total, 200);
    let frames = server.state.batch_frames.load(Ordering::SeqCst);
    assert!(frames < 200, "200 concurrent calls took {frames} frames");
}

#[tokio::test]
async fn batch_keeps_order_across_cores() {
    let server = FakeServer::start(3, 32);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    let ops: Vec<Op> = (0..12_000)
        .map(|index| Op::Add {
            key: format!("k{}", index % 30).into_bytes(),
            delta: 1,
            policy: BoundPolicy::Reject,
        })
        .collect();
    let results = client.batch(&ops).await.unwrap();
    for (index, result) in results.iter().enumerate() {
        assert_eq!(
            result.unwrap().value,
            (index / 30 + 1) as i64,
            "operation {index}"
        );
    }
}

/// Without automatic keys (the default) a write whose reply was lost is not resent: it
/// may have been applied, so the call says so; a read is still resent (review1 F1).
#[tokio::test]
async fn by_default_a_write_whose_reply_was_lost_is_not_resent() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect(server.main_addr).await.unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    let error = client.incr("like", 1).await.unwrap_err();
    assert!(
        matches!(error, ClientError::OutcomeUnknown { .. }),
        "{error:?}"
    );
    assert_eq!(server.value("like"), Some(1), "applied once");
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    assert_eq!(client.get("like").await.unwrap(), 1, "a read is resent");
    assert_eq!(
        server.state.keyed_frames.load(Ordering::SeqCst),
        0,
        "no keys sent"
    );
}

/// With automatic keys on, each key is drawn so that the server keeps it on the core the
/// frame goes to: no cross-core hop (review1 F7).
#[tokio::test]
async fn automatic_keys_are_homed_on_the_core_the_frame_is_sent_to() {
    let server = FakeServer::start(4, 32);
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    for index in 0..100 {
        client.incr(format!("page:{index}"), 1).await.unwrap();
    }
    assert!(server.state.keyed_frames.load(Ordering::SeqCst) >= 100);
    assert_eq!(server.state.keys_homed_elsewhere.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn lost_reply_is_retried_once_applied_once() {
    let server = FakeServer::start(2, 16);
    let client = AsyncClient::connect_with(server.main_addr, auto_keys())
        .await
        .unwrap();
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    assert_eq!(client.incr("like", 1).await.unwrap(), 1);
    assert_eq!(server.value("like"), Some(1));
    assert_eq!(server.state.duplicate_batches.load(Ordering::SeqCst), 1);
    assert_eq!(client.incr("like", 1).await.unwrap(), 2);
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_client_recovers() {
    let server = FakeServer::start(1, 4);
    let config = ClientConfig {
        read_timeout: Duration::from_millis(150),
        retries: 0,
        ..ClientConfig::default()
    };
    let client = AsyncClient::connect_with(server.main_addr, config)
        .await
        .unwrap();
    server.state.stall.store(true, Ordering::SeqCst);
    let error = client.incr("x", 1).await.unwrap_err();
    let ClientError::OutcomeUnknown { cause } = &error else {
        panic!("a sent increment without a reply is of unknown outcome: {error:?}");
    };
    assert!(matches!(**cause, ClientError::Timeout { .. }), "{error:?}");
    server.state.stall.store(false, Ordering::SeqCst);
    assert_eq!(
        client.get("x").await.unwrap(),
        1,
        "the stalled increment was applied, not retried"
    );
}
