//! Process-level tests of `tallyd`: a real daemon on 127.0.0.1 with a free port, driven
//! over std sockets with the protocol crate's codec.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

mod common;

use tally_protocol::{
    decode_reply, encode_batch, encode_hello, encode_ping, BoundPolicy, Durability, ErrorCode,
    HelloReply, Op, OpReply, Reply, Status,
};

/// A running `tallyd`, the address it listens on and its shard ports.
struct Daemon {
    process: common::Process,
    addr: SocketAddr,
    shard_ports: Vec<u16>,
}

impl Daemon {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Daemon {
        Daemon::start_with_partitions(dir, 16, extra)
    }

    /// `partitions` 0 passes no `--partitions`.
    fn start_with_partitions(dir: &std::path::Path, partitions: u32, extra: &[&str]) -> Daemon {
        // "tallyd listening on 127.0.0.1:PORT (shard ports A,B)"
        let (process, rest) = common::start(dir, partitions, extra, "tallyd listening on ");
        let (addr, ports) = rest
            .split_once(" (shard ports ")
            .unwrap_or_else(|| panic!("shard ports in the start line: {rest:?}"));
        let shard_ports = ports
            .trim_end_matches(')')
            .split(',')
            .map(|port| port.parse().unwrap())
            .collect();
        Daemon {
            process,
            addr: addr.parse().unwrap(),
            shard_ports,
        }
    }

    fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    fn shard(&self, core: usize) -> Client {
        Client::connect(SocketAddr::from(([127, 0, 0, 1], self.shard_ports[core])))
    }

    /// Sends SIGTERM and returns the exit code.
    fn terminate(self) -> Option<i32> {
        self.process.terminate()
    }
}

/// A blocking test client that owns the replies it decodes.
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
    next_id: u64,
}

#[derive(Debug)]
enum Answer {
    Hello(HelloReply),
    Pong,
    Results(Vec<OpReply>),
    Error(ErrorCode, String),
    Closed,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buffer: Vec::new(),
            next_id: 1,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn hello(&mut self) -> HelloReply {
        let mut out = Vec::new();
        let id = self.id();
        encode_hello(&mut out, id, "test").unwrap();
        self.send(&out);
        match self.answer(id) {
            Answer::Hello(reply) => reply,
            other => panic!("expected a HelloReply, got {other:?}"),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn batch_with(&mut self, key: Option<u128>, ops: &[Op<&[u8]>]) -> Answer {
        let mut out = Vec::new();
        let id = self.id();
        encode_batch(&mut out, id, Durability::ServerDefault, key, ops).unwrap();
        self.send(&out);
        self.answer(id)
    }

    fn batch(&mut self, ops: &[Op<&[u8]>]) -> Vec<OpReply> {
        match self.batch_with(None, ops) {
            Answer::Results(results) => results,
            other => panic!("expected results, got {other:?}"),
        }
    }

    fn get(&mut self, key: &[u8]) -> i64 {
        self.batch(&[Op::Get { key }])[0].value
    }

    /// Reads the next reply and checks it answers `id` (0 for connection-level errors).
    fn answer(&mut self, id: u64) -> Answer {
        let (reply_id, answer) = self.next_answer();
        if !matches!(answer, Answer::Closed) {
            assert!(
                reply_id == id || reply_id == 0,
                "reply {reply_id} for request {id}"
            );
        }
        answer
    }

    fn next_answer(&mut self) -> (u64, Answer) {
        loop {
            if let Some(frame) = decode_reply(&self.buffer).expect("server framing is valid") {
                let consumed = frame.frame_bytes;
                let answer = match frame.reply.expect("server replies decode") {
                    Reply::HelloReply(reply) => Answer::Hello(reply),
                    Reply::Pong => Answer::Pong,
                    Reply::BatchReply(results) => Answer::Results(results.results().collect()),
                    Reply::Error(error) => Answer::Error(error.code, error.message.to_string()),
                    other => panic!("unexpected reply {other:?}"),
                };
                let id = frame.request_id;
                self.buffer.drain(..consumed);
                return (id, answer);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return (0, Answer::Closed),
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
            }
        }
    }
}

fn add(key: &[u8], delta: i64) -> Op<&[u8]> {
    Op::Add {
        key,
        delta,
        policy: BoundPolicy::Reject,
    }
}

fn keys(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|index| format!("key:{index}").into_bytes())
        .collect()
}

#[test]
fn handshake_and_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    let hello = client.hello();
    assert_eq!(hello.partition_count, 16);
    assert_eq!(hello.shard_ports, daemon.shard_ports);
    assert_eq!(hello.owners.len(), 16);
    assert!(hello
        .owners
        .iter()
        .enumerate()
        .all(|(p, &owner)| usize::from(owner) == p % 2));
    let key = b"views".as_slice();
    let results = client.batch(&[
        add(key, 5),
        add(key, -2),
        Op::Get { key },
        Op::Exists { key },
        Op::Set {
            key,
            value: 40,
            policy: BoundPolicy::Reject,
        },
        Op::Delete { key },
        Op::Exists { key },
        Op::Get { key },
    ]);
    let values: Vec<i64> = results.iter().map(|r| r.value).collect();
    assert!(
        results.iter().all(|r| r.status == Status::Ok),
        "{results:?}"
    );
    assert_eq!(values, [5, 3, 3, 1, 40, 40, 0, 0]);
    assert!(!results[0].existed && results[1].existed && !results[7].existed);
    let empty = client.batch(&[Op::Get {
        key: b"".as_slice(),
    }]);
    assert_eq!(empty[0].status, Status::InvalidKey);
    let mut ping = Vec::new();
    encode_ping(&mut ping, 99);
    client.send(&ping);
    assert!(matches!(client.answer(99), Answer::Pong));
}

#[test]
fn a_batch_across_cores_is_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let keys = keys(300);
    for core in 0..2 {
        let mut client = daemon.shard(core);
        let hello = client.hello();
        let owners: Vec<usize> = keys.iter().map(|key| hello.owner_of_key(key)).collect();
        assert!(
            owners.contains(&0) && owners.contains(&1),
            "keys span both cores"
        );
        let ops: Vec<Op<&[u8]>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| add(key, i as i64 + 1))
            .collect();
        let results = client.batch(&ops);
        for (index, result) in results.iter().enumerate() {
            assert_eq!(result.status, Status::Ok);
            let expected = (index as i64 + 1) * (core as i64 + 1);
            assert_eq!(result.value, expected, "key {index} through core {core}");
        }
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    let keys = keys(50);
    let mut out = Vec::new();
    for round in 0..200u64 {
        let key = keys[round as usize % keys.len()].as_slice();
        encode_batch(
            &mut out,
            1000 + round,
            Durability::Relaxed,
            None,
            &[add(key, 1)],
        )
        .unwrap();
    }
    client.send(&out);
    for round in 0..200u64 {
        let (id, answer) = client.next_answer();
        assert_eq!(id, 1000 + round);
        let Answer::Results(results) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!(results[0].value, (round / 50 + 1) as i64);
    }
}

/// A pipeline mixing durabilities, idempotency keys, keys of both cores and frames whose
/// local operations overflow one store batch: the server groups a turn's local
/// operations, and every reply must still be what applying the frames one by one, in
/// order, gives.
#[test]
fn pipelined_frames_of_every_kind_match_applying_them_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    let keys = keys(40);
    let mut model = vec![0i64; keys.len()];
    let mut out = Vec::new();
    let mut expected = Vec::new();
    for round in 0..60usize {
        let durability = match round % 3 {
            1 => Durability::Durable,
            _ => Durability::Relaxed,
        };
        let idempotency = (round % 7 == 3).then_some(round as u128 + 1);
        let picks: Vec<(usize, i64)> = if round % 5 == 4 {
            // 6,000 operations: two such frames in a turn exceed one store batch.
            (0..6_000).map(|i| (i % keys.len(), 1)).collect()
        } else {
            let delta = round as i64 + 1;
            vec![
                (round % 40, delta),
                ((round * 7) % 40, -1),
                (round % 40, delta),
            ]
        };
        let ops: Vec<_> = picks
            .iter()
            .map(|&(key, delta)| add(&keys[key], delta))
            .collect();
        let values: Vec<i64> = picks
            .iter()
            .map(|&(key, delta)| {
                model[key] += delta;
                model[key]
            })
            .collect();
        encode_batch(&mut out, 1000 + round as u64, durability, idempotency, &ops).unwrap();
        expected.push(values);
    }
    client.send(&out);
    for (round, values) in expected.iter().enumerate() {
        let (id, answer) = client.next_answer();
        assert_eq!(id, 1000 + round as u64);
        let Answer::Results(results) = answer else {
            panic!("round {round}: {answer:?}")
        };
        let got: Vec<i64> = results
            .iter()
            .map(|result| {
                assert_eq!(result.status, Status::Ok, "round {round}");
                result.value
            })
            .collect();
        assert_eq!(&got, values, "round {round}");
    }
    for (key, value) in keys.iter().zip(&model) {
        assert_eq!(client.get(key), *value);
    }
}

#[test]
fn bounds_reject_and_clamp() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    let key = b"likes".as_slice();
    let results = client.batch(&[
        Op::SetBounds {
            key,
            floor: Some(0),
            ceiling: Some(10),
        },
        add(key, 3),
        add(key, -5),
        Op::Add {
            key,
            delta: -5,
            policy: BoundPolicy::Clamp,
        },
        add(key, 11),
        Op::SetBounds {
            key,
            floor: Some(5),
            ceiling: Some(1),
        },
    ]);
    assert_eq!(results[0].status, Status::Ok);
    assert_eq!(results[1].value, 3);
    assert_eq!(
        (results[2].status, results[2].value),
        (Status::BelowFloor, 0)
    );
    assert!(results[3].status == Status::Ok && results[3].value == 0 && results[3].clamped);
    assert_eq!(
        (results[4].status, results[4].value),
        (Status::AboveCeiling, 10)
    );
    assert_eq!(results[5].status, Status::InvalidBounds);
    assert_eq!(client.get(key), 0);
}

#[test]
fn an_idempotent_retry_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let keys = keys(20);
    let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key, 7)).collect();
    let idempotency_key = 0x1234_5678_9abc_def0_1122_3344_5566_7788u128;
    let mut first = daemon.shard(0);
    first.hello();
    let Answer::Results(original) = first.batch_with(Some(idempotency_key), &ops) else {
        panic!()
    };
    // The retry arrives on another core's port and another connection.
    let mut retry = daemon.shard(1);
    retry.hello();
    let Answer::Results(replayed) = retry.batch_with(Some(idempotency_key), &ops) else {
        panic!()
    };
    assert_eq!(original, replayed);
    for key in &keys {
        assert_eq!(retry.get(key), 7);
    }
    let Answer::Results(fresh) = retry.batch_with(Some(idempotency_key + 1), &ops) else {
        panic!()
    };
    assert!(fresh.iter().all(|result| result.value == 14));
}

/// An idempotency key reused with other operations is an error, not a replay of the
/// first batch's results (which would not even have one result per operation).
/// A window of 0 s once started and silently turned deduplication off, so clients'
/// resends under a key were applied twice (review1 F13): it is refused at start.
#[test]
fn an_idempotency_window_of_zero_seconds_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = common::start_refused(dir.path(), 8, &["--idempotency-window-s", "0"]);
    assert!(
        stderr.contains("idempotency window must be at least 1 s"),
        "{stderr}"
    );
}

#[test]
fn an_idempotency_key_reused_for_another_batch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let keys = keys(3);
    let three: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key, 1)).collect();
    let idempotency_key = 0xfeed_u128;
    for core in 0..2 {
        let mut client = daemon.shard(core);
        client.hello();
        if core == 0 {
            let Answer::Results(first) = client.batch_with(Some(idempotency_key), &three) else {
                panic!()
            };
            assert_eq!(first.len(), 3);
        }
        // Another batch: one operation instead of three, then the same count of others.
        for other in [
            vec![add(&keys[0], 1)],
            keys.iter().map(|k| add(k, 2)).collect(),
        ] {
            let answer = client.batch_with(Some(idempotency_key), &other);
            let Answer::Error(code, message) = answer else {
                panic!("core {core}: expected an error, got {answer:?}")
            };
            assert_eq!(code.to_u16(), 12, "core {core}: {message}");
            assert!(message.contains("idempotency key"), "{message}");
        }
        // The same batch is still a replay, and nothing was applied twice.
        let Answer::Results(replayed) = client.batch_with(Some(idempotency_key), &three) else {
            panic!()
        };
        assert!(replayed.iter().all(|result| result.value == 1));
        assert_eq!(client.get(&keys[0]), 1);
    }
}

#[test]
fn malformed_and_unknown_frames_get_errors_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut bad = daemon.connect();
    bad.hello();
    let mut other = daemon.connect();
    other.hello();
    // A Batch whose body is 3 bytes of garbage.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(12u32 + 3).to_le_bytes());
    frame.extend_from_slice(&[0x05, 0, 0, 0]);
    frame.extend_from_slice(&77u64.to_le_bytes());
    frame.extend_from_slice(&[9, 9, 9]);
    bad.send(&frame);
    let Answer::Error(code, message) = bad.answer(77) else {
        panic!("expected an error")
    };
    assert_eq!(code, ErrorCode::MalformedFrame);
    assert!(!message.is_empty(), "errors explain themselves");
    // An unknown message type.
    frame[4] = 0x42;
    frame[8..16].copy_from_slice(&78u64.to_le_bytes());
    bad.send(&frame);
    assert!(matches!(
        bad.answer(78),
        Answer::Error(ErrorCode::UnknownMessageType, _)
    ));
    // An unknown operation code inside a batch.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(12u32 + 5 + 3).to_le_bytes());
    frame.extend_from_slice(&[0x05, 0, 0, 0]);
    frame.extend_from_slice(&79u64.to_le_bytes());
    frame.extend_from_slice(&[0, 1, 0, 0, 0, 0x33, 1, b'k']);
    bad.send(&frame);
    assert!(matches!(
        bad.answer(79),
        Answer::Error(ErrorCode::UnknownOperation, _)
    ));
    assert_eq!(bad.batch(&[add(b"k", 1)])[0].value, 1);
    assert_eq!(other.batch(&[add(b"k", 1)])[0].value, 2);
}

#[test]
fn a_batch_over_the_limit_is_refused_and_the_connection_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    // durability 0, op_count 10,001: refused before any operation is read.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(12u32 + 5).to_le_bytes());
    frame.extend_from_slice(&[0x05, 0, 0, 0]);
    frame.extend_from_slice(&5u64.to_le_bytes());
    frame.push(0);
    frame.extend_from_slice(&10_001u32.to_le_bytes());
    client.send(&frame);
    assert!(matches!(
        client.answer(5),
        Answer::Error(ErrorCode::BatchTooLarge, _)
    ));
    let keys = keys(10_000);
    let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key, 1)).collect();
    let results = client.batch(&ops);
    assert_eq!(results.len(), 10_000);
    assert!(results.iter().all(|result| result.value == 1));
}

#[test]
fn an_oversize_frame_is_refused_and_closed_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    let mut other = daemon.connect();
    other.hello();
    let mut header = Vec::new();
    header.extend_from_slice(&(64u32 << 20).to_le_bytes());
    header.extend_from_slice(&[0x05, 0, 0, 0]);
    header.extend_from_slice(&6u64.to_le_bytes());
    client.send(&header);
    assert!(matches!(
        client.answer(6),
        Answer::Error(ErrorCode::FrameTooLarge, _)
    ));
    assert!(matches!(client.next_answer().1, Answer::Closed));
    assert_eq!(other.batch(&[add(b"x", 2)])[0].value, 2);
}

/// Good frames, then a length field that cannot be framed, then a good frame, all in
/// one write: the frames before the bad length are answered and applied, then the
/// parting `MalformedFrame` arrives, and nothing after it is applied.
#[test]
fn frames_before_an_unframeable_length_are_answered_and_none_after_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    let mut pipeline = Vec::new();
    for id in [10, 11] {
        encode_batch(
            &mut pipeline,
            id,
            Durability::Durable,
            None,
            &[add(b"before", 1)],
        )
        .unwrap();
    }
    // A length below the header's size: the receiver cannot find the next frame.
    pipeline.extend_from_slice(&3u32.to_le_bytes());
    encode_batch(
        &mut pipeline,
        12,
        Durability::Durable,
        None,
        &[add(b"after", 1)],
    )
    .unwrap();
    client.send(&pipeline);
    for (id, value) in [(10, 1), (11, 2)] {
        match client.next_answer() {
            (answered, Answer::Results(results)) if answered == id => {
                assert_eq!(results[0].value, value)
            }
            other => panic!("expected the answer to {id}, got {other:?}"),
        }
    }
    let (id, parting) = client.next_answer();
    assert!(
        id == 0 && matches!(parting, Answer::Error(ErrorCode::MalformedFrame, _)),
        "{id} {parting:?}"
    );
    assert!(matches!(client.next_answer().1, Answer::Closed));
    let mut fresh = daemon.connect();
    fresh.hello();
    assert_eq!(fresh.get(b"before"), 2);
    assert_eq!(
        fresh.get(b"after"),
        0,
        "nothing after the bad length was applied"
    );
}

/// The resident memory of process `pid`, in KiB, from /proc.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A frame header claiming a near-maximal frame (8 MiB) whose body never comes: the
/// server must not set memory aside for bytes it was only promised.
#[test]
fn headers_claiming_large_frames_cost_only_what_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let pid = daemon.process.id();
    let mut served = daemon.connect();
    served.hello();
    let before_kib = resident_kib(pid);
    let mut header = Vec::new();
    header.extend_from_slice(&((8u32 << 20) - 4).to_le_bytes());
    header.extend_from_slice(&[0x01, 0, 0, 0]);
    header.extend_from_slice(&1u64.to_le_bytes());
    let liars: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(daemon.addr).unwrap();
            stream.write_all(&header).unwrap();
            stream
        })
        .collect();
    // The server takes the headers in its own time: look for a while. With the whole
    // claim reserved, 50 headers cost 400 MB; as received, 50 buffers of 64 KiB.
    let mut growth_kib = 0;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        growth_kib = resident_kib(pid).saturating_sub(before_kib);
        assert!(growth_kib < 100 * 1024, "RSS grew by {growth_kib} KiB");
    }
    println!("RSS growth for 50 claimed 8 MiB frames: {growth_kib} KiB");
    assert_eq!(served.batch(&[add(b"k", 4)])[0].value, 4);
    let mut fresh = daemon.connect();
    fresh.hello();
    assert_eq!(fresh.get(b"k"), 4);
    drop(liars);
}

/// A client that sends a frame one byte at a time, each well within the read timeout,
/// still has to finish the frame within the read timeout of its first byte.
#[test]
fn a_frame_trickled_byte_by_byte_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--read-timeout-ms", "1000"]);
    let mut slow = daemon.connect();
    slow.hello();
    let mut frame = Vec::new();
    encode_batch(
        &mut frame,
        9,
        Durability::Relaxed,
        None,
        &[add(
            b"a-long-enough-key-to-trickle-for-a-while-0123456789",
            1,
        )],
    )
    .unwrap();
    assert!(frame.len() > 40);
    slow.stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    // Up to 40 bytes, one per 250 ms: 10 s, ten times the timeout.
    let mut answer = None;
    for byte in &frame[..40] {
        if slow.stream.write_all(std::slice::from_ref(byte)).is_err() {
            break;
        }
        let mut chunk = [0u8; 1024];
        match slow.stream.read(&mut chunk) {
            Ok(count) => {
                slow.buffer.extend_from_slice(&chunk[..count]);
                answer = Some(slow.next_answer().1);
                break;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let answer = answer.expect("the server answered before the frame's 40th byte");
    assert!(
        matches!(answer, Answer::Error(ErrorCode::Timeout, _)),
        "{answer:?}"
    );
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(matches!(slow.next_answer().1, Answer::Closed));
    let mut fresh = daemon.connect();
    fresh.hello();
    assert_eq!(fresh.batch(&[add(b"z", 3)])[0].value, 3);
}

#[test]
fn requests_before_hello_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    let Answer::Error(code, _) = client.batch_with(None, &[add(b"x", 1)]) else {
        panic!()
    };
    assert_eq!(code, ErrorCode::HandshakeRequired);
    assert!(matches!(client.next_answer().1, Answer::Closed));
}

#[test]
fn connections_over_the_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--max-connections", "2"]);
    let mut first = daemon.connect();
    first.hello();
    let mut second = daemon.shard(1);
    second.hello();
    let mut third = daemon.connect();
    assert!(matches!(
        third.next_answer().1,
        Answer::Error(ErrorCode::ServerBusy, _)
    ));
    assert!(matches!(third.next_answer().1, Answer::Closed));
    drop(first);
    // The slot frees once the server sees the close; retry briefly.
    let served = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        let mut client = daemon.connect();
        let mut out = Vec::new();
        encode_hello(&mut out, 1, "retry").unwrap();
        client.send(&out);
        matches!(client.next_answer().1, Answer::Hello(_))
    });
    assert!(served);
    assert_eq!(second.batch(&[add(b"y", 1)])[0].value, 1);
}

/// The number of descriptors process `pid` has open.
fn open_descriptor_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64
}

/// A busy pipelining client whose every write ends in the middle of a frame is not
/// slow: each frame has its own read timeout, counted from its own first byte.
#[test]
fn frames_split_across_writes_each_get_the_whole_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--read-timeout-ms", "1000"]);
    let mut client = daemon.connect();
    client.hello();
    let mut frame = Vec::new();
    encode_batch(
        &mut frame,
        9,
        Durability::Relaxed,
        None,
        &[add(b"split", 1)],
    )
    .unwrap();
    let half = frame.len() / 2;
    client.send(&frame[..half]);
    // 15 rounds of 200 ms: three times the timeout, with a frame always half sent.
    for round in 1..=15 {
        std::thread::sleep(Duration::from_millis(200));
        let mut next = frame[half..].to_vec();
        next.extend_from_slice(&frame[..half]);
        client.send(&next);
        let answer = client.answer(9);
        let Answer::Results(results) = answer else {
            panic!("round {round}: {answer:?}")
        };
        assert_eq!(results[0].value, round);
    }
}

/// Out of file descriptors, every client still gets an answer: `Timeout` after the read
/// timeout if its connection was accepted (it sends nothing), else `ServerBusy` at once
/// and a close. None is left hanging, and the server serves normally once descriptors
/// are free again.
#[test]
fn clients_beyond_the_open_files_limit_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--read-timeout-ms", "3000"]);
    let pid = daemon.process.id();
    let mut served = daemon.connect();
    served.hello();
    // The journal opens its segment at the first write: before descriptors run out.
    assert_eq!(served.batch(&[add(b"fd", 1)])[0].value, 1);
    // Room for 20 more descriptors: most of the flood cannot be accepted.
    let limit = open_descriptor_count(pid) + 20;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("run prlimit");
    assert!(status.success());
    let mut flood: Vec<Client> = (0..150).map(|_| daemon.connect()).collect();
    assert_eq!(served.batch(&[add(b"fd", 1)])[0].value, 2);
    let (mut timed_out, mut busy) = (0, 0);
    for client in &mut flood {
        match client.next_answer().1 {
            Answer::Error(ErrorCode::Timeout, _) => timed_out += 1,
            Answer::Error(ErrorCode::ServerBusy, _) => busy += 1,
            // `next_answer` reports its 10 s read timeout as Closed too.
            Answer::Closed => panic!("a client got no answer ({timed_out} timed out, {busy} busy)"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(client.next_answer().1, Answer::Closed));
    }
    assert!(busy > 0, "the limit was reached ({timed_out} accepted)");
    drop(flood);
    // The server frees a descriptor when its close completes: retry briefly.
    let mut hello = Vec::new();
    encode_hello(&mut hello, 1, "after").unwrap();
    let mut fresh = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            let mut client = daemon.connect();
            client.send(&hello);
            matches!(client.next_answer().1, Answer::Hello(_)).then_some(client)
        })
        .expect("served again once descriptors are free");
    assert_eq!(fresh.batch(&[add(b"fd", 1)])[0].value, 3);
}

#[test]
fn idle_connections_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--read-timeout-ms", "200"]);
    let mut idle = daemon.connect();
    idle.hello();
    assert!(matches!(
        idle.next_answer().1,
        Answer::Error(ErrorCode::Timeout, _)
    ));
    assert!(matches!(idle.next_answer().1, Answer::Closed));
    let mut fresh = daemon.connect();
    fresh.hello();
    assert_eq!(fresh.batch(&[add(b"z", 3)])[0].value, 3);
}

/// A request that crosses the idle timeout's parting frame is not applied, and the
/// parting frame still arrives, followed by the end of the stream, not a reset: the
/// server reads and discards what comes after it before closing (PROTOCOL.md, "Closing").
#[test]
fn a_request_sent_after_the_idle_timeout_gets_the_parting_frame_and_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--read-timeout-ms", "200"]);
    let mut late = daemon.connect();
    late.hello();
    // Past the timeout: the server has sent its parting frame and shut its side.
    std::thread::sleep(Duration::from_millis(500));
    let mut frame = Vec::new();
    encode_batch(&mut frame, 7, Durability::Durable, None, &[add(b"late", 1)]).unwrap();
    late.stream
        .write_all(&frame)
        .expect("the server still reads");
    // Time for a reset to come back, if the server's socket answers with one.
    std::thread::sleep(Duration::from_millis(100));
    let (id, parting) = late.next_answer();
    assert!(
        id == 0 && matches!(parting, Answer::Error(ErrorCode::Timeout, _)),
        "{id} {parting:?}"
    );
    assert!(late.buffer.is_empty(), "the parting frame is the last");
    let mut chunk = [0u8; 64];
    match late.stream.read(&mut chunk) {
        Ok(0) => {}
        other => panic!("expected the end of the stream, got {other:?}"),
    }
    // Linux lets the bytes received before a reset be read; the reset still shows as
    // the socket's pending error, and fails the next write.
    assert!(
        late.stream.take_error().unwrap().is_none(),
        "the connection was reset"
    );
    late.stream
        .write_all(&frame)
        .expect("the server is still reading and discarding, not reset");
    let mut fresh = daemon.connect();
    fresh.hello();
    assert_eq!(fresh.get(b"late"), 0, "the late increment was not applied");
}

/// Request id 0 is reserved for the server's parting word (PROTOCOL.md, "Frames"): a
/// request that uses it ends the connection. The frames before it are answered and
/// applied, then the parting `MalformedFrame` arrives, and neither it nor the frames
/// after it are applied, so the parting frame's promise holds.
#[test]
fn a_request_with_id_0_gets_the_parting_frame_and_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    let mut pipeline = Vec::new();
    for (id, key) in [(1, b"id-1"), (0, b"id-0"), (2, b"id-2")] {
        encode_batch(&mut pipeline, id, Durability::Durable, None, &[add(key, 1)]).unwrap();
    }
    client.send(&pipeline);
    match client.next_answer() {
        (1, Answer::Results(results)) => assert_eq!(results[0].value, 1),
        other => panic!("the frame before id 0 is answered first, got {other:?}"),
    }
    let (id, parting) = client.next_answer();
    assert!(
        id == 0
            && matches!(&parting, Answer::Error(ErrorCode::MalformedFrame, message)
                if message.contains("request id 0 is reserved")),
        "{id} {parting:?}"
    );
    assert!(matches!(client.next_answer().1, Answer::Closed));
    let mut fresh = daemon.connect();
    fresh.hello();
    assert_eq!(fresh.get(b"id-1"), 1, "the frame before id 0 was applied");
    assert_eq!(fresh.get(b"id-0"), 0, "the frame with id 0 was not applied");
    assert_eq!(
        fresh.get(b"id-2"),
        0,
        "the frame after id 0 was not applied"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let keys = keys(100);
    let mut client = daemon.connect();
    client.hello();
    let ops: Vec<Op<&[u8]>> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| add(key, i as i64))
        .collect();
    client.batch(&ops);
    client.batch(&ops);
    assert_eq!(daemon.terminate(), Some(0));
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = daemon.connect();
    client.hello();
    let gets: Vec<Op<&[u8]>> = keys
        .iter()
        .map(|key| Op::Get {
            key: key.as_slice(),
        })
        .collect();
    let results = client.batch(&gets);
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result.value, 2 * index as i64);
    }
    assert_eq!(daemon.terminate(), Some(0));
}

/// At shutdown, every connection, idle or not, gets its replies and then an Error frame
/// `ShuttingDown` with request id 0 before the close.
#[test]
fn shutdown_says_so_before_closing() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut idle = daemon.connect();
    idle.hello();
    let mut busy = daemon.shard(1);
    busy.hello();
    let mut pipeline = Vec::new();
    for id in 100..150 {
        encode_batch(
            &mut pipeline,
            id,
            Durability::Durable,
            None,
            &[add(b"s", 1)],
        )
        .unwrap();
    }
    busy.send(&pipeline);
    let (id, answer) = busy.next_answer();
    assert!(
        id == 100 && matches!(answer, Answer::Results(_)),
        "{answer:?}"
    );
    let stopping = std::thread::spawn(move || daemon.terminate());
    let mut answered = 1;
    for (name, client) in [("idle", &mut idle), ("busy", &mut busy)] {
        let mut ids = Vec::new();
        let last = loop {
            match client.next_answer() {
                (id, Answer::Results(_)) => ids.push(id),
                other => break other,
            }
        };
        assert_eq!(
            ids,
            (101..101 + ids.len() as u64).collect::<Vec<_>>(),
            "{name}"
        );
        assert!(
            matches!(last, (0, Answer::Error(ErrorCode::ShuttingDown, _))),
            "{name}: {last:?}"
        );
        assert!(matches!(client.next_answer().1, Answer::Closed), "{name}");
        answered += ids.len() as i64;
    }
    assert_eq!(stopping.join().unwrap(), Some(0));
    // The parting word's promise: the frames it left unanswered were not applied.
    let daemon = Daemon::start(dir.path(), &[]);
    let mut fresh = daemon.connect();
    fresh.hello();
    assert_eq!(
        fresh.get(b"s"),
        answered,
        "exactly the answered frames were applied"
    );
}

/// Without `--partitions`, an existing data directory opens with its own partition
/// count; with a different one, tallyd refuses to start and says why.
#[test]
fn an_existing_data_directory_keeps_its_partition_count() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(daemon.terminate(), Some(0));
    let daemon = Daemon::start_with_partitions(dir.path(), 0, &[]);
    assert_eq!(daemon.connect().hello().partition_count, 16);
    assert_eq!(daemon.terminate(), Some(0));
    let stderr = common::start_refused(dir.path(), 8, &[]);
    assert!(stderr.contains("16") && stderr.contains('8'), "{stderr}");
}

/// A `--log-level` that names no level is a start-up error, not a silent default.
#[test]
fn an_invalid_log_level_is_a_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .args(["--listen", "127.0.0.1:0", "--cores", "1"])
        .args(["--log-level", "warning", "--data-dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon that started anyway never exits by itself: give it 10 s.
    let status = (0..200).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        child.try_wait().unwrap()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tallyd started with --log-level warning");
    };
    assert_eq!(status.code(), Some(2));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("--log-level") && stderr.contains("warning"),
        "{stderr}"
    );
}

/// Both idempotency limits are flags, shown by `--help`; a byte limit too small for a
/// largest batch's results is a start-up error, not a table that refuses every batch.
#[test]
fn the_idempotency_limits_are_flags() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in ["--idempotency-max-keys", "--idempotency-max-reply-bytes"] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .args(["--listen", "127.0.0.1:0", "--cores", "1"])
        .args(["--idempotency-max-reply-bytes", "99999", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("idempotency reply bytes must be at least 100000"),
        "{stderr}"
    );
}

/// Logs written to a file carry no terminal colour codes.
#[test]
fn logs_to_a_file_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("tallyd.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tallyd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--log-level",
            "info",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening"), "{line}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
}

/// Opt-in (`TALLYD_LATENCY=1`, best with `--release`): one connection, no pipelining,
/// round trips through the main port and through the owner's shard port. Prints
/// percentiles; asserts only that every reply is correct, never a timing.
#[test]
fn round_trip_latency_report() {
    if std::env::var_os("TALLYD_LATENCY").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &["--spin-us", "200"]);
    let key = b"rate:user:1".as_slice();
    let owner = daemon.connect().hello().owner_of_key(key);
    for (name, mut client) in [
        ("main port", daemon.connect()),
        ("shard port", daemon.shard(owner)),
    ] {
        client.hello();
        client.stream.set_nodelay(true).unwrap();
        let rounds = 20_000usize;
        let mut latencies_ns = Vec::with_capacity(rounds);
        let start_value = client.get(key);
        for round in 0..rounds {
            let started = std::time::Instant::now();
            let results = client.batch(&[add(key, 1)]);
            latencies_ns.push(started.elapsed().as_nanos() as u64);
            assert_eq!(results[0].value, start_value + round as i64 + 1);
        }
        latencies_ns.sort_unstable();
        let percentile =
            |p: f64| latencies_ns[((rounds as f64 * p) as usize).min(rounds - 1)] as f64 / 1000.0;
        println!(
            "{name}: p50_us {:.1} p99_us {:.1} p999_us {:.1}",
            percentile(0.50),
            percentile(0.99),
            percentile(0.999)
        );
    }
}
