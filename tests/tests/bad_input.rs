//! Bad input and overload at the process level, over plain `TcpStream`s: garbage, frames
//! that break the protocol, an oversize frame, a batch over 10,000 operations, a flood of
//! connections beyond `--max-connections`, and a client that stalls mid-frame. Each gets an
//! error reply or a closed connection, the server never crashes, and other clients keep
//! being served.

use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use tally_client::{Client, ErrorCode, Op, Status};
use tally_protocol::{
    encode_batch, Durability, OpReply, BATCH_OPS_MAX, FRAME_BYTES_MAX, HEADER_BYTES,
};
use tally_tests::{add, RawConnection, RawReply, Rng, Tallyd};

fn start(extra_args: &[&str]) -> (tempfile::TempDir, Tallyd) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec!["--cores", "2"];
    args.extend_from_slice(extra_args);
    let server = Tallyd::start(dir.path(), &args);
    (dir, server)
}

/// A frame header: length (bytes after the length field), type, flags, reserved, id.
fn header(body_bytes: usize, message_type: u8, flags: u8, request_id: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&((HEADER_BYTES - 4 + body_bytes) as u32).to_le_bytes());
    frame.extend_from_slice(&[message_type, flags, 0, 0]);
    frame.extend_from_slice(&request_id.to_le_bytes());
    frame
}

/// A whole frame with `body`.
fn frame(message_type: u8, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = header(body.len(), message_type, 0, request_id);
    frame.extend_from_slice(body);
    frame
}

/// Asserts the connection answers `request_id` with an `Error` carrying `code`.
#[track_caller]
fn expect_error(connection: &mut RawConnection, request_id: u64, code: ErrorCode) {
    match connection.reply_to(request_id) {
        RawReply::Error { code: got, message } => {
            assert_eq!(got, code, "message: {message}");
            assert!(!message.is_empty(), "an error reply explains itself");
        }
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
}

/// Asserts the connection still works: an increment on it is applied.
#[track_caller]
fn assert_usable(connection: &mut RawConnection, key: &str, expected: i64) {
    let results = connection.batch_results(&[add(key, 1)]);
    assert_eq!(results[0].status, Status::Ok);
    assert_eq!(results[0].value, expected);
}

#[test]
fn frames_that_break_the_protocol_get_errors_and_the_connection_stays_usable() {
    let (_dir, server) = start(&[]);
    let (mut bystander, _) = RawConnection::open(server.addr);
    let (mut connection, _) = RawConnection::open(server.addr);
    let mut count = 0;

    // An unknown message type, and a reply type sent as a request.
    connection.send(&frame(0x42, 100, &[]));
    expect_error(&mut connection, 100, ErrorCode::UnknownMessageType);
    connection.send(&frame(0x04, 101, &[]));
    expect_error(&mut connection, 101, ErrorCode::UnknownMessageType);
    count += 1;
    assert_usable(&mut connection, "usable", count);

    // A batch holding an unknown operation code (9): nothing of it is applied.
    let mut body = vec![0u8];
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[1, 6]);
    body.extend_from_slice(b"usable");
    body.extend_from_slice(&5i64.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&[9, 1, b'k']);
    connection.send(&frame(0x05, 102, &body));
    expect_error(&mut connection, 102, ErrorCode::UnknownOperation);
    count += 1;
    assert_usable(&mut connection, "usable", count);

    // A batch whose count promises more operations than the body holds.
    let mut truncated = vec![0u8];
    truncated.extend_from_slice(&3u32.to_le_bytes());
    truncated.extend_from_slice(&[3, 1, b'k']);
    connection.send(&frame(0x05, 103, &truncated));
    expect_error(&mut connection, 103, ErrorCode::MalformedFrame);

    // Unknown flags, a non-zero reserved field, a bad durability byte, a Ping with a body.
    let mut flagged = header(0, 0x03, 0x80, 104);
    connection.send(&flagged);
    expect_error(&mut connection, 104, ErrorCode::MalformedFrame);
    flagged = header(0, 0x03, 0, 105);
    flagged[6] = 1;
    connection.send(&flagged);
    expect_error(&mut connection, 105, ErrorCode::MalformedFrame);
    let mut bad_durability = vec![7u8];
    bad_durability.extend_from_slice(&0u32.to_le_bytes());
    connection.send(&frame(0x05, 106, &bad_durability));
    expect_error(&mut connection, 106, ErrorCode::MalformedFrame);
    connection.send(&frame(0x03, 107, b"extra"));
    expect_error(&mut connection, 107, ErrorCode::MalformedFrame);
    count += 1;
    assert_usable(&mut connection, "usable", count);

    // A length below the header's size: framing is lost, error then close.
    connection.send(&[3, 0, 0, 0, 0x03, 0, 0]);
    expect_error(&mut connection, 0, ErrorCode::MalformedFrame);
    assert!(connection.is_closed_by_server());

    // A request before the hello is refused and the connection closed.
    let mut early = RawConnection::connect(server.addr);
    early.send(&frame(0x03, 9, &[]));
    expect_error(&mut early, 9, ErrorCode::HandshakeRequired);
    assert!(early.is_closed_by_server());

    assert_usable(&mut bystander, "bystander", 1);
}

#[test]
fn garbage_gets_an_error_or_a_close_and_others_are_still_served() {
    let (_dir, mut server) = start(&[]);
    let mut client = Client::connect(server.addr).unwrap();
    let mut rng = Rng::from_env(0x6a7b_a6e5);
    let http = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec();
    for round in 0..24 {
        let garbage: Vec<u8> = match round {
            0 => http.clone(),
            _ => (0..rng.between(1, 4096))
                .map(|_| rng.next_u64() as u8)
                .collect(),
        };
        let mut connection = RawConnection::connect(server.addr);
        if round % 2 == 1 {
            connection.hello();
        }
        // The server may close while the garbage is still being written.
        let _ = std::io::Write::write_all(&mut connection.stream, &garbage);
        // Without more input a frame that looks long would wait forever: end the input.
        let _ = connection.stream.shutdown(Shutdown::Write);
        while let Some((_, reply)) = connection.next_reply() {
            assert!(
                matches!(reply, RawReply::Error { .. }),
                "round {round}: garbage answered with {reply:?}"
            );
        }
        assert_eq!(client.incr("survivor", 1).unwrap(), round + 1);
    }
    assert!(server.is_running(), "{}", server.drain_log().join("\n"));
}

#[test]
fn an_oversize_frame_is_refused_and_closed() {
    let (_dir, server) = start(&[]);
    let mut client = Client::connect(server.addr).unwrap();
    let (mut connection, _) = RawConnection::open(server.addr);
    // The length field alone says 8 MiB + 12: the body is never sent.
    let oversize = header(FRAME_BYTES_MAX + 8 - HEADER_BYTES, 0x05, 0, 77);
    assert!(u32::from_le_bytes(oversize[..4].try_into().unwrap()) as usize + 4 > FRAME_BYTES_MAX);
    connection.send(&oversize);
    expect_error(&mut connection, 0, ErrorCode::FrameTooLarge);
    assert!(connection.is_closed_by_server());

    // One byte over the limit is refused as well.
    let (mut connection, _) = RawConnection::open(server.addr);
    connection.send(&header(FRAME_BYTES_MAX + 1 - HEADER_BYTES, 0x05, 0, 78));
    expect_error(&mut connection, 0, ErrorCode::FrameTooLarge);
    assert!(connection.is_closed_by_server());
    assert_eq!(client.incr("after-oversize", 2).unwrap(), 2);
}

#[test]
fn a_batch_over_ten_thousand_operations_is_refused_whole() {
    let (_dir, server) = start(&[]);
    let (mut connection, _) = RawConnection::open(server.addr);
    let keys: Vec<String> = (0..=BATCH_OPS_MAX)
        .map(|index| format!("over:{index}"))
        .collect();
    let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key.as_bytes(), 1)).collect();

    // The codec refuses to build it, so append the 10,001st operation by hand.
    let mut wire = Vec::new();
    assert!(encode_batch(&mut wire, 5, Durability::ServerDefault, None, &ops).is_err());
    encode_batch(
        &mut wire,
        5,
        Durability::ServerDefault,
        None,
        &ops[..BATCH_OPS_MAX],
    )
    .unwrap();
    ops[BATCH_OPS_MAX].encode(&mut wire).unwrap();
    let count_offset = HEADER_BYTES + 1;
    wire[count_offset..count_offset + 4].copy_from_slice(&(ops.len() as u32).to_le_bytes());
    let length = (wire.len() - 4) as u32;
    wire[..4].copy_from_slice(&length.to_le_bytes());
    connection.send(&wire);
    expect_error(&mut connection, 5, ErrorCode::BatchTooLarge);

    // Nothing of it was applied, and the same connection still serves a full batch.
    let probes = [&keys[0], &keys[BATCH_OPS_MAX / 2], &keys[BATCH_OPS_MAX]];
    let reads: Vec<Op<&[u8]>> = probes
        .iter()
        .map(|key| Op::Get {
            key: key.as_bytes(),
        })
        .collect();
    for result in connection.batch_results(&reads) {
        assert_eq!(result, OpReply::ok(0, false, false));
    }
    let results = connection.batch_results(&ops[..BATCH_OPS_MAX]);
    assert_eq!(results.len(), BATCH_OPS_MAX);
    assert!(results
        .iter()
        .all(|result| *result == OpReply::ok(1, false, false)));
}

/// Opens connections until `count` were tried; returns (admitted, refused).
fn flood(addr: SocketAddr, count: usize) -> (Vec<RawConnection>, usize) {
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..count {
        let mut connection = RawConnection::connect(addr);
        match connection.try_hello() {
            Some(RawReply::Hello(_)) => admitted.push(connection),
            Some(RawReply::Error { code, .. }) => {
                assert_eq!(code, ErrorCode::ServerBusy);
                assert!(connection.is_closed_by_server());
                refused += 1;
            }
            None => refused += 1,
            Some(other) => panic!("hello answered with {other:?}"),
        }
    }
    (admitted, refused)
}

#[test]
fn a_connection_flood_is_refused_while_existing_clients_keep_working() {
    const CONNECTIONS_MAX: usize = 8;
    let max = CONNECTIONS_MAX.to_string();
    let (_dir, server) = start(&["--max-connections", &max]);
    // Two connections, one per shard port (the main connection it started on is closed).
    let mut client = Client::connect(server.addr).unwrap();
    assert_eq!(client.incr("steady", 1).unwrap(), 1);

    let (mut admitted, refused) = flood(server.addr, 40);
    assert!(
        admitted.len() <= CONNECTIONS_MAX - 2,
        "{} connections admitted beyond the limit of {CONNECTIONS_MAX}",
        admitted.len()
    );
    assert!(
        refused >= 40 - CONNECTIONS_MAX,
        "only {refused} of 40 refused"
    );
    assert_eq!(client.incr("steady", 1).unwrap(), 2);
    for connection in admitted.iter_mut().take(2) {
        assert_eq!(
            connection.batch_results(&[Op::Get { key: "steady" }])[0].value,
            2
        );
    }

    // Once the flood goes away, new clients are admitted again.
    drop(admitted);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut late = loop {
        match Client::connect(server.addr) {
            Ok(late) => break late,
            Err(error) if Instant::now() < deadline => {
                eprintln!("not admitted yet: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("no connection admitted after the flood: {error}"),
        }
    };
    assert_eq!(late.incr("steady", 1).unwrap(), 3);
}

#[test]
fn a_client_that_stalls_mid_frame_is_disconnected() {
    let (_dir, server) = start(&["--read-timeout-ms", "300"]);
    let (mut stalled, _) = RawConnection::open(server.addr);
    let mut request = Vec::new();
    encode_batch(
        &mut request,
        9,
        Durability::ServerDefault,
        None,
        &[add("stall", 1)],
    )
    .unwrap();
    stalled.send(&request[..request.len() / 2]);

    // Meanwhile other clients are served (each on a fresh connection, so none of them
    // can itself run into the timeout on a slow machine).
    for round in 1..=5 {
        let (mut active, _) = RawConnection::open(server.addr);
        assert_usable(&mut active, "active", round);
        std::thread::sleep(Duration::from_millis(100));
    }

    // The stalled connection was told why and closed; its half request changed nothing.
    expect_error(&mut stalled, 0, ErrorCode::Timeout);
    assert!(stalled.is_closed_by_server());
    let (mut active, _) = RawConnection::open(server.addr);
    let get = active.batch_results(&[Op::Get { key: "stall" }]);
    assert_eq!(get[0], OpReply::ok(0, false, false));
}
