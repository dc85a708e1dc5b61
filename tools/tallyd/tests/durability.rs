//! Crash tests of `tallyd`'s journal with real processes: a writer thread pipelines
//! increments and counts what it sent and what was acknowledged, the test `kill -9`s
//! the daemon at a random moment, restarts it on the same data directory, and checks
//! every counter against those counts. The seed of each random kill is printed, so a
//! failure can be replayed with `TALLYD_CRASH_SEED=N`; `TALLYD_CRASH_ROUNDS=N` runs a
//! longer crash loop (default 4 rounds).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

mod common;

use tally_protocol::{
    decode_reply, encode_batch, encode_hello, BoundPolicy, Durability, ErrorCode, Op, OpReply,
    Reply, Status,
};

const KEY_COUNT: usize = 64;
const OPS_PER_FRAME: usize = 8;
const FRAMES_PER_ROUND_TRIP: usize = 16;

/// A running `tallyd` and the address it listens on.
struct Daemon {
    process: common::Process,
    addr: SocketAddr,
}

impl Daemon {
    fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Daemon::started(common::start(dir, 8, extra, "tallyd listening on "))
    }

    /// [`Daemon::start`] with its log going to `stderr`.
    fn start_logging_to(dir: &Path, extra: &[&str], stderr: std::process::Stdio) -> Daemon {
        Daemon::started(common::start_logging_to(
            dir,
            8,
            extra,
            "tallyd listening on ",
            stderr,
        ))
    }

    /// The daemon and the rest of its start line:
    /// "tallyd listening on 127.0.0.1:PORT (shard ports A,B)".
    fn started((process, rest): (common::Process, String)) -> Daemon {
        let addr = rest
            .split_once(' ')
            .map(|(addr, _)| addr.parse().expect("an address"))
            .unwrap_or_else(|| panic!("start line: {rest:?}"));
        Daemon { process, addr }
    }

    /// SIGKILL, as a crash: nothing runs in the daemon after it.
    fn kill_9(self) {
        self.process.kill_9();
    }

    /// SIGTERM; returns the exit code.
    fn terminate(self) -> Option<i32> {
        self.process.terminate()
    }
}

/// A reply the tests expect.
enum Answer {
    Hello,
    Results(Vec<OpReply>),
    /// An `Error` reply: its code.
    Refused(ErrorCode),
}

/// A blocking client that pipelines batches; `None` from a call means the connection
/// ended (the daemon was killed).
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
    next_id: u64,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut client = Client {
            stream,
            buffer: Vec::new(),
            // The hello is request 1, batches follow (id 0 is the server's parting word).
            next_id: 1,
        };
        let mut out = Vec::new();
        encode_hello(&mut out, 1, "durability-test").unwrap();
        client.stream.write_all(&out).unwrap();
        assert!(matches!(client.next_reply(), Some(Answer::Hello)));
        client
    }

    /// Sends frames without waiting for their replies.
    fn send(
        &mut self,
        frames: &[Vec<Op<&[u8]>>],
        durability: Durability,
        key: Option<u128>,
    ) -> Option<()> {
        let mut out = Vec::new();
        for ops in frames {
            self.next_id += 1;
            encode_batch(&mut out, self.next_id, durability, key, ops).unwrap();
        }
        self.stream.write_all(&out).ok()
    }

    fn next_results(&mut self) -> Option<Vec<OpReply>> {
        match self.next_reply()? {
            Answer::Results(results) => Some(results),
            Answer::Hello => panic!("expected a BatchReply, got a HelloReply"),
            Answer::Refused(code) => panic!("expected a BatchReply, got an error {code:?}"),
        }
    }

    fn next_reply(&mut self) -> Option<Answer> {
        loop {
            if let Some(frame) = decode_reply(&self.buffer).expect("server framing is valid") {
                let consumed = frame.frame_bytes;
                let reply = match frame.reply.expect("server replies decode") {
                    Reply::BatchReply(results) => Answer::Results(results.results().collect()),
                    Reply::HelloReply(_) => Answer::Hello,
                    Reply::Error(error) => Answer::Refused(error.code),
                    other => panic!("unexpected reply {other:?}"),
                };
                self.buffer.drain(..consumed);
                return Some(reply);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
            }
        }
    }

    /// Sends one durable batch and returns its answer, results or refusal.
    fn answer(&mut self, ops: &[Op<&[u8]>], key: Option<u128>) -> Answer {
        self.send(&[ops.to_vec()], Durability::Durable, key)
            .expect("send");
        self.next_reply().expect("a reply")
    }

    fn batch(&mut self, ops: &[Op<&[u8]>], key: Option<u128>) -> Vec<OpReply> {
        self.send(&[ops.to_vec()], Durability::Durable, key)
            .expect("send");
        self.next_results().expect("a reply")
    }

    fn values(&mut self, keys: &[Vec<u8>]) -> Vec<i64> {
        let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| Op::Get { key: &key[..] }).collect();
        self.batch(&ops, None)
            .iter()
            .map(|reply| reply.value)
            .collect()
    }
}

fn keys() -> Vec<Vec<u8>> {
    (0..KEY_COUNT)
        .map(|index| format!("crash:{index}").into_bytes())
        .collect()
}

fn add(key: &[u8], delta: i64) -> Op<&[u8]> {
    Op::Add {
        key,
        delta,
        policy: BoundPolicy::Reject,
    }
}

/// Per key: increments sent, and increments acknowledged `Ok`.
#[derive(Clone, Debug)]
struct Tally {
    sent: Vec<i64>,
    acked: Vec<i64>,
    /// Increments answered "refused before it was applied" (not counted as sent).
    refused_unapplied: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sent: vec![0; KEY_COUNT],
            acked: vec![0; KEY_COUNT],
            refused_unapplied: 0,
        }
    }
}

/// xorshift64: the test's only randomness, seeded and printed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Pipelines increments of 1 on random keys until the connection ends or
/// `round_trips` round trips are done; adds what it sent and what was acknowledged
/// to `tally`.
fn write_until_closed(
    addr: SocketAddr,
    durability: Durability,
    mut seed: u64,
    round_trips: usize,
    mut tally: Tally,
) -> Tally {
    let keys = keys();
    let mut client = Client::connect(addr);
    for _ in 0..round_trips {
        let mut frames = Vec::with_capacity(FRAMES_PER_ROUND_TRIP);
        let mut indexes = Vec::with_capacity(FRAMES_PER_ROUND_TRIP);
        for _ in 0..FRAMES_PER_ROUND_TRIP {
            let picked: Vec<usize> = (0..OPS_PER_FRAME)
                .map(|_| next_random(&mut seed) as usize % KEY_COUNT)
                .collect();
            frames.push(picked.iter().map(|&k| add(&keys[k], 1)).collect());
            indexes.push(picked);
        }
        for &key in indexes.iter().flatten() {
            tally.sent[key] += 1;
        }
        if client.send(&frames, durability, None).is_none() {
            return tally;
        }
        for picked in &indexes {
            let Some(results) = client.next_results() else {
                return tally;
            };
            for (reply, &key) in results.iter().zip(picked) {
                if reply.status == Status::Ok {
                    tally.acked[key] += 1;
                }
            }
        }
    }
    tally
}

fn seed() -> u64 {
    let seed = std::env::var("TALLYD_CRASH_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |elapsed| elapsed.as_nanos() as u64) | 1
        });
    println!("crash test seed {seed} (TALLYD_CRASH_SEED={seed} to replay)");
    seed
}

/// Checks acked <= value <= sent for every key; returns the values.
fn check_bounds(addr: SocketAddr, tally: &Tally, what: &str) -> Vec<i64> {
    let values = Client::connect(addr).values(&keys());
    for (key, value) in values.iter().enumerate() {
        assert!(
            *value >= tally.acked[key],
            "{what}: key {key} lost acknowledged increments: {value} < {} acknowledged",
            tally.acked[key]
        );
        assert!(
            *value <= tally.sent[key],
            "{what}: key {key} counted twice: {value} > {} sent",
            tally.sent[key]
        );
    }
    values
}

/// One crash round: starts tallyd with `extra`; if `after` names a crash before it,
/// checks what survived (acknowledged <= value <= sent) and takes it as this round's
/// floor and ceiling; pipelines durable increments until a `kill -9` at a random moment.
fn crash_round(
    dir: &Path,
    extra: &[&str],
    after: Option<&str>,
    mut tally: Tally,
    random: &mut u64,
) -> Tally {
    let daemon = Daemon::start(dir, extra);
    let addr = daemon.addr;
    if let Some(what) = after {
        let values = check_bounds(addr, &tally, what);
        tally.acked.clone_from(&values);
        tally.sent = values;
    }
    let writer_seed = next_random(random);
    let start = tally.clone();
    let writer = thread::spawn(move || {
        write_until_closed(addr, Durability::Durable, writer_seed, usize::MAX, start)
    });
    thread::sleep(Duration::from_millis(100 + next_random(random) % 300));
    daemon.kill_9();
    let tally = writer.join().unwrap();
    assert!(
        tally.acked.iter().sum::<i64>() > 0,
        "some increments were acknowledged"
    );
    tally
}

#[test]
fn durable_acknowledged_increments_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = seed();
    let rounds = std::env::var("TALLYD_CRASH_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(4);
    let mut tally = Tally::new();
    for round in 0..rounds {
        let after = (round > 0).then(|| format!("after crash {round}"));
        tally = crash_round(dir.path(), &[], after.as_deref(), tally, &mut random);
    }
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(daemon.addr, &tally, "after the last crash");
}

/// The core count changes between crashes (2, 1, 2, 1 cores, then 2): every journal
/// must reach the partitions it was written for before the new layout serves, or
/// acknowledged increments are lost (a journal ignored) or stale values come back (an
/// old journal replayed over newer checkpoints).
#[test]
fn a_core_count_change_after_kill_9_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = seed();
    let mut tally = Tally::new();
    for (round, cores) in ["2", "1", "2", "1"].into_iter().enumerate() {
        let after = (round > 0).then(|| format!("after a crash and a restart on {cores} cores"));
        tally = crash_round(
            dir.path(),
            &["--cores", cores],
            after.as_deref(),
            tally,
            &mut random,
        );
    }
    let daemon = Daemon::start(dir.path(), &["--cores", "2"]);
    check_bounds(daemon.addr, &tally, "after the last restart on 2 cores");
    assert!(
        dir.path().join("journal.previous").is_dir(),
        "the old journals were set aside"
    );
}

/// Two servers on one data directory would each acknowledge writes the other later
/// overwrites: the second one must refuse to start, naming the directory, even after
/// someone deleted `<data-dir>/lock`.
#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start(dir.path(), &[]);
    let stderr = start_refused(dir.path(), &["--cores", "1"]);
    assert!(
        stderr.contains("in use by another tallyd"),
        "unclear refusal: {stderr}"
    );
    // Deleting the pid file beside the lock defeats nothing: the lock is the directory's.
    std::fs::remove_file(dir.path().join("lock")).unwrap();
    let stderr = start_refused(dir.path(), &["--cores", "1"]);
    assert!(stderr.contains("in use by another tallyd"), "{stderr}");
    // The first one still serves, and after it stops the directory is free again.
    Client::connect(first.addr).values(&keys());
    assert_eq!(first.terminate(), Some(0));
    let again = Daemon::start(dir.path(), &[]);
    Client::connect(again.addr).values(&keys());
}

#[test]
fn relaxed_increments_are_on_disk_after_the_flush_interval_and_never_doubled() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = seed();
    let daemon = Daemon::start(dir.path(), &["--durability", "relaxed"]);
    // Phase 1: a fixed amount of traffic, then quiet for 30 times the flush interval.
    let tally = write_until_closed(
        daemon.addr,
        Durability::ServerDefault,
        next_random(&mut random),
        50,
        Tally::new(),
    );
    assert_eq!(
        tally.sent, tally.acked,
        "every relaxed increment is acknowledged"
    );
    thread::sleep(Duration::from_millis(300));
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &["--durability", "relaxed"]);
    let values = check_bounds(daemon.addr, &tally, "relaxed, flushed before the crash");
    assert_eq!(
        values, tally.sent,
        "flushed relaxed increments are all there"
    );
    // Phase 2: killed under traffic: nothing counted twice, nothing flushed lost.
    let addr = daemon.addr;
    let start = tally.clone();
    let writer_seed = next_random(&mut random);
    let writer = thread::spawn(move || {
        write_until_closed(addr, Durability::Relaxed, writer_seed, usize::MAX, start)
    });
    thread::sleep(Duration::from_millis(100 + next_random(&mut random) % 200));
    daemon.kill_9();
    let mut under_load = writer.join().unwrap();
    // Only what was acknowledged before phase 2 is sure to be on disk.
    under_load.acked = tally.acked;
    let daemon = Daemon::start(dir.path(), &["--durability", "relaxed"]);
    check_bounds(daemon.addr, &under_load, "relaxed, killed under load");
}

#[test]
fn an_idempotent_retry_after_kill_9_applies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    // Keys on both cores, a read, and a rejected operation in the same batch.
    let mut ops: Vec<Op<&[u8]>> = keys[..16].iter().map(|key| add(key, 5)).collect();
    ops.push(Op::Get { key: &keys[20][..] });
    ops.push(Op::SetBounds {
        key: &keys[21][..],
        floor: Some(10),
        ceiling: Some(1),
    });
    let idempotency_key = 0xfeed_beef_0000_0000_0000_0000_0000_0001u128;
    let daemon = Daemon::start(dir.path(), &[]);
    let first = Client::connect(daemon.addr).batch(&ops, Some(idempotency_key));
    assert!(first[..16]
        .iter()
        .all(|reply| reply.status == Status::Ok && reply.value == 5));
    assert_eq!(first[17].status, Status::InvalidBounds);
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = Client::connect(daemon.addr);
    let retried = client.batch(&ops, Some(idempotency_key));
    assert_eq!(
        &retried[..16],
        &first[..16],
        "journaled results are returned again"
    );
    assert_eq!(retried[17].status, Status::InvalidBounds);
    assert!(
        client.values(&keys[..16]).iter().all(|&value| value == 5),
        "applied once"
    );
    // A new key applies again, proving the batch itself was not refused.
    let fresh = client.batch(&ops, Some(idempotency_key + 1));
    assert!(fresh[..16].iter().all(|reply| reply.value == 10));
    // And the retry is still answered after a second crash.
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = Client::connect(daemon.addr);
    let again = client.batch(&ops, Some(idempotency_key));
    assert_eq!(&again[..16], &first[..16]);
    assert!(client.values(&keys[..16]).iter().all(|&value| value == 10));
}

#[test]
fn a_graceful_restart_keeps_every_relaxed_increment() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = seed();
    let daemon = Daemon::start(
        dir.path(),
        &["--durability", "relaxed", "--relaxed-flush-ms", "60000"],
    );
    let tally = write_until_closed(
        daemon.addr,
        Durability::ServerDefault,
        next_random(&mut random),
        40,
        Tally::new(),
    );
    // No wait: the records are still in the journal's buffer (flush interval 60 s);
    // the shutdown must sync them and checkpoint.
    assert_eq!(daemon.terminate(), Some(0));
    let daemon = Daemon::start(dir.path(), &[]);
    let values = Client::connect(daemon.addr).values(&keys());
    assert_eq!(values, tally.sent);
    assert_eq!(tally.sent, tally.acked);
}

/// The covered LSN of every partition's checkpoint (0 without one), read from
/// `checkpoint/<partition>/journal-position` (layout in engine/src/journal/checkpoint.rs:
/// the LSN is bytes 16..24, little-endian).
fn covered_lsns(dir: &Path, partitions: u32) -> Vec<u64> {
    (0..partitions)
        .map(|partition| {
            let path = dir.join(format!("checkpoint/{partition}/journal-position"));
            std::fs::read(path).map_or(0, |bytes| {
                u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"))
            })
        })
        .collect()
}

/// Durable increments across graceful stops and a `kill -9`: every count is exact
/// after each restart, and each graceful stop checkpoints every partition that changed
/// since its last checkpoint, also when it changed only after a restart (the final
/// checkpoint used to skip those: its "changed" test read an LSN live applies never
/// set).
#[test]
fn graceful_stops_checkpoint_what_changed_and_a_later_crash_loses_nothing() {
    const PARTITIONS: u32 = 8;
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let mut expected = vec![0i64; KEY_COUNT];
    for run in 0..5i64 {
        let daemon = Daemon::start(dir.path(), &[]);
        let mut client = Client::connect(daemon.addr);
        assert_eq!(client.values(&keys), expected, "at the start of run {run}");
        for repeat in 0..=run {
            let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key, repeat + 1)).collect();
            let replies = client.batch(&ops, None);
            assert!(replies.iter().all(|reply| reply.status == Status::Ok));
            for value in &mut expected {
                *value += repeat + 1;
            }
        }
        drop(client);
        if run == 2 {
            daemon.kill_9();
            continue;
        }
        let before = covered_lsns(dir.path(), PARTITIONS);
        assert_eq!(daemon.terminate(), Some(0));
        let after = covered_lsns(dir.path(), PARTITIONS);
        for partition in 0..PARTITIONS as usize {
            assert!(
                after[partition] > before[partition],
                "run {run}: partition {partition} changed but its checkpoint stayed at LSN {}",
                before[partition]
            );
        }
    }
    let daemon = Daemon::start(dir.path(), &[]);
    assert_eq!(Client::connect(daemon.addr).values(&keys), expected);
}

/// A durable mutation that changes nothing (a delete of a counter already gone, an add
/// refused by a bound) writes no record, but its answer reports what earlier records
/// did: it is acknowledged only once those are durable too. Here a relaxed delete that
/// would not be flushed for a minute is followed by durable operations on another
/// connection that see the counter gone; after `kill -9` it must still be gone (before
/// the fix, the durable answers came at once and the counter came back).
#[test]
fn a_durable_no_op_is_acknowledged_only_once_what_it_saw_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--cores", "1", "--relaxed-flush-ms", "60000"];
    let (key, bounded) = (&b"liked"[..], &b"quota"[..]);
    let floor = Op::SetBounds {
        key: bounded,
        floor: Some(0),
        ceiling: None,
    };
    let daemon = Daemon::start(dir.path(), &extra);
    let mut first = Client::connect(daemon.addr);
    let set = |key, value| Op::Set {
        key,
        value,
        policy: BoundPolicy::Reject,
    };
    let replies = first.batch(&[set(key, 5), floor, set(bounded, 1)], None);
    assert!(replies.iter().all(|reply| reply.status == Status::Ok));
    // Relaxed: applied and answered at once, on disk only at the next flush.
    let relaxed = [Op::Delete { key }, add(bounded, -1)];
    first
        .send(&[relaxed.to_vec()], Durability::Relaxed, None)
        .unwrap();
    assert!(first
        .next_results()
        .unwrap()
        .iter()
        .all(|r| r.status == Status::Ok));
    let mut second = Client::connect(daemon.addr);
    let replies = second.batch(&[Op::Delete { key }, add(bounded, -1)], None);
    assert_eq!(replies[0].status, Status::Ok);
    assert!(!replies[0].existed, "the relaxed delete was applied first");
    assert_eq!(
        replies[1].status,
        Status::BelowFloor,
        "the relaxed add took it to 0"
    );
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &extra);
    let replies =
        Client::connect(daemon.addr).batch(&[Op::Get { key }, Op::Get { key: bounded }], None);
    assert!(
        !replies[0].existed,
        "a durable answer said it was gone: {:?}",
        replies[0]
    );
    assert_eq!(
        replies[1].value, 0,
        "a durable refusal said it was at its floor"
    );
}

/// A supervisor restarts a killed server at once, on the same fixed ports: the killed
/// process may hold them for a few milliseconds after it is reaped (its io_uring torn
/// down by the kernel), and its data directory's lock until its exit completes; the
/// start waits for both instead of failing with "address in use" (1 to 3 restarts in 5
/// failed so) or "in use by another tallyd" (5 in 10).
#[test]
fn a_restart_right_after_kill_9_binds_its_ports() {
    let dir = tempfile::tempdir().unwrap();
    // A main port whose two shard ports (main + 1 + core) are free too.
    let port = (0..100)
        .find_map(|_| {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let port = probe.local_addr().ok()?.port();
            let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
            (port < u16::MAX - 2 && free(port + 1) && free(port + 2)).then_some(port)
        })
        .expect("three free ports in a row");
    let listen = format!("127.0.0.1:{port}");
    let extra = ["--listen", &listen];
    for round in 0..5 {
        let daemon = Daemon::start(dir.path(), &extra);
        assert_eq!(daemon.addr.port(), port, "round {round}");
        let mut client = Client::connect(daemon.addr);
        assert_eq!(
            client.batch(&[add(b"restarts", 1)], None)[0].value,
            round + 1
        );
        drop(client);
        if round % 2 == 0 {
            daemon.kill_9();
            continue;
        }
        // Killed by someone else (a supervisor's `kill -9`): the next start does not
        // wait for this exit to complete, so the old server may still hold the data
        // directory's lock for a moment.
        let killed = Command::new("kill")
            .args(["-9", &daemon.process.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let next = Daemon::start(dir.path(), &extra);
        drop(daemon);
        next.kill_9();
    }
}

/// A log that cannot be written (stderr on a full disk; here `/dev/full`) loses its
/// lines and nothing else: tracing's fallback for a failed write printed with
/// `eprintln!`, which panicked a core (exit 101, or a server that stopped answering).
#[test]
fn a_log_that_cannot_be_written_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let (process, rest) =
        common::start_logging_to(dir.path(), 8, &[], "tallyd listening on ", full.into());
    let addr: SocketAddr = rest.split_once(' ').unwrap().0.parse().unwrap();
    // A malformed frame is logged (a warning) on the way to its error reply.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(&[0xff; 64]).unwrap();
    let mut client = Client::connect(addr);
    let mut tally = Tally::new();
    for _ in 0..3 {
        send_acknowledged_round(&mut client, &keys(), &mut tally);
    }
    drop(client);
    assert_eq!(process.terminate(), Some(0));
}

/// Restarts inside the idempotency window must not let more keys in than the limit,
/// nor forget any: each run admitted up to `--idempotency-max-keys` new keys on top of
/// those its journal held, and a start then dropped the newest past twice the limit,
/// so retries of the batches in flight at a crash applied again (the review saw 20
/// doubles in 80). Now recovered keys count against the limit: new keys are refused
/// (nothing applied) while it is full, and every retry gets its first answer.
#[test]
fn restarts_inside_the_window_neither_admit_nor_forget_keys_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--cores", "1", "--idempotency-max-keys", "20"];
    let ops = [add(b"likes", 1)];
    let mut applied = Vec::new();
    let mut next_key = 0x11ce_0000u128;
    for _ in 0..4 {
        let daemon = Daemon::start(dir.path(), &extra);
        let mut client = Client::connect(daemon.addr);
        for _ in 0..25 {
            next_key += 1;
            match client.answer(&ops, Some(next_key)) {
                Answer::Results(replies) => {
                    assert_eq!(replies[0].status, Status::Ok);
                    applied.push(next_key);
                }
                Answer::Refused(code) => assert_eq!(code, ErrorCode::ServerBusy),
                Answer::Hello => unreachable!(),
            }
        }
        drop(client);
        daemon.kill_9();
    }
    assert_eq!(applied.len(), 20, "the limit holds across restarts");
    let daemon = Daemon::start(dir.path(), &extra);
    let mut client = Client::connect(daemon.addr);
    let value = |client: &mut Client| client.batch(&[Op::Get { key: b"likes" }], None)[0].value;
    assert_eq!(value(&mut client), 20);
    for &key in applied.iter().rev() {
        let replies = client.batch(&ops, Some(key));
        assert_eq!(
            replies[0].status,
            Status::Ok,
            "a recovered key's retry runs"
        );
    }
    assert_eq!(value(&mut client), 20, "no retry applied twice");
}

/// A tmpfs mounted for one test, unmounted on drop.
struct SmallFilesystem {
    dir: tempfile::TempDir,
}

impl SmallFilesystem {
    /// Mounts a tmpfs of `size` (e.g. "4m") on a new directory; `Err` says why not
    /// (not root, no mount permission in this sandbox or CI).
    fn mount(size: &str) -> Result<SmallFilesystem, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(SmallFilesystem { dir })
    }

    /// [`SmallFilesystem::mount`], or `None` after saying why `test` is skipped.
    fn mount_or_skip(size: &str, test: &str) -> Option<SmallFilesystem> {
        SmallFilesystem::mount(size)
            .inspect_err(|reason| eprintln!("SKIPPED {test}: cannot mount a small tmpfs: {reason}"))
            .ok()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the file system has no space left.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0xA5u8; 64 << 10];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    assert_eq!(error.raw_os_error(), Some(libc_enospc()), "{error}");
                    break;
                }
            }
        }
        path
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// ENOSPC on Linux (the test crate does not depend on libc for one constant).
fn libc_enospc() -> i32 {
    28
}

/// Sends rounds of one durable increment per key until every key has been refused
/// `Unavailable` at least once (each core's journal degraded); adds the outcomes to
/// `tally`. Each core still has room in its last block and in the zeros written ahead
/// of its commits (up to 768 KiB), so this takes a while.
fn send_until_every_key_is_refused(client: &mut Client, keys: &[Vec<u8>], tally: &mut Tally) {
    let mut refused = vec![false; keys.len()];
    for round in 0..20_000 {
        for (key, status) in send_round(client, keys, tally).into_iter().enumerate() {
            if status != Status::Ok {
                assert_eq!(status, Status::Unavailable, "key {key} in round {round}");
                refused[key] = true;
            }
        }
        if refused.iter().all(|&r| r) {
            return;
        }
    }
    panic!("durable increments are refused on a full disk");
}

/// One durable increment of 1 per key, counted in `tally`; the statuses.
/// [`send_round`], where every increment must be acknowledged.
fn send_acknowledged_round(client: &mut Client, keys: &[Vec<u8>], tally: &mut Tally) {
    let statuses = send_round(client, keys, tally);
    assert!(
        statuses.iter().all(|&status| status == Status::Ok),
        "an increment was not acknowledged: {statuses:?}"
    );
}

/// An increment answered `Unavailable` with detail 1 was refused before it was applied
/// (PROTOCOL.md): it does not count as sent, so `check_bounds` holds the server to it.
fn send_round(client: &mut Client, keys: &[Vec<u8>], tally: &mut Tally) -> Vec<Status> {
    let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key, 1)).collect();
    let replies = client.batch(&ops, None);
    for (key, reply) in replies.iter().enumerate() {
        let not_applied = reply.status == Status::Unavailable && reply.value == 1;
        if !not_applied {
            tally.sent[key] += 1;
        } else {
            tally.refused_unapplied += 1;
        }
        if reply.status == Status::Ok {
            tally.acked[key] += 1;
        }
    }
    replies.iter().map(|reply| reply.status).collect()
}

/// `tallyd` on `data_dir` (inside `filesystem`), 20 acknowledged rounds of durable
/// increments, then `filesystem` filled: the daemon, its client, the counts so far and
/// the filler file to delete.
fn full_disk_after_acknowledged_rounds(
    data_dir: &Path,
    filesystem: &SmallFilesystem,
) -> (Daemon, Client, Tally, std::path::PathBuf) {
    let daemon = Daemon::start(data_dir, &[]);
    let mut client = Client::connect(daemon.addr);
    let mut tally = Tally::new();
    for _ in 0..20 {
        send_acknowledged_round(&mut client, &keys(), &mut tally);
    }
    let filler = filesystem.fill();
    (daemon, client, tally, filler)
}

/// Sends `ops` as durable batches under the keys `key_base`, `key_base + 1`, ... until
/// every operation's key has been refused `Unavailable` once (only `Ok` or that is
/// accepted). Returns how many batches were sent, and the key and replies of each
/// batch with a refusal.
fn send_keyed_until_every_key_is_refused(
    client: &mut Client,
    ops: &[Op<&[u8]>],
    key_base: u128,
) -> (u128, Vec<(u128, Vec<OpReply>)>) {
    let mut batches = 0u128;
    let mut unsettled = Vec::new();
    let mut refused = vec![false; ops.len()];
    while !refused.iter().all(|&r| r) {
        assert!(
            batches < 20_000,
            "durable increments are refused on a full disk"
        );
        let idempotency_key = key_base + batches;
        let replies = client.batch(ops, Some(idempotency_key));
        batches += 1;
        for (key, reply) in replies.iter().enumerate() {
            if reply.status != Status::Ok {
                assert_eq!(reply.status, Status::Unavailable, "key {key}");
                refused[key] = true;
            }
        }
        if replies.iter().any(|reply| reply.status != Status::Ok) {
            unsettled.push((idempotency_key, replies));
        }
    }
    (batches, unsettled)
}

/// Disk full at process level: `tallyd`'s data directory on a small tmpfs that the test
/// fills. Durable increments then fail with `Unavailable` and are not acknowledged
/// while reads keep being served; once the space is freed, without a restart, the
/// journal's retry succeeds and increments are acknowledged again. Filled again, a
/// graceful stop while degraded must leave nothing acknowledged lost; after freeing
/// the space, a `kill -9` and a restart, every acknowledged increment is there and
/// none counted twice. Needs root to mount the tmpfs: without it the test says why and
/// does nothing.
#[test]
fn disk_full_refuses_durable_increments_keeps_reads_and_resumes_once_freed() {
    let Some(filesystem) = SmallFilesystem::mount_or_skip("8m", "disk_full test") else {
        return;
    };
    let data_dir = filesystem.path().join("data");
    let keys = keys();
    let mut tally = Tally::new();
    let daemon = Daemon::start(&data_dir, &[]);
    let mut client = Client::connect(daemon.addr);
    for _ in 0..20 {
        send_acknowledged_round(&mut client, &keys, &mut tally);
    }
    let filler = filesystem.fill();
    send_until_every_key_is_refused(&mut client, &keys, &mut tally);
    let values = client.values(&keys);
    for (key, &value) in values.iter().enumerate() {
        assert!(value >= tally.acked[key] && value <= tally.sent[key]);
    }
    assert!(
        tally.refused_unapplied > 0,
        "a degraded journal refuses increments before applying them, and says so"
    );
    // Space freed: within a few retry intervals every core accepts increments again.
    std::fs::remove_file(&filler).unwrap();
    let resumed = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(100));
        let statuses = send_round(&mut client, &keys, &mut tally);
        statuses.iter().all(|&status| status == Status::Ok)
    });
    assert!(resumed, "durable increments resume once space is freed");
    check_bounds(
        daemon.addr,
        &tally,
        "after the space was freed, without a restart",
    );
    // Full again, then a graceful stop while degraded: the store must stay unclean
    // (its memory holds increments the journal never got) and nothing acknowledged
    // may be lost.
    let filler = filesystem.fill();
    send_until_every_key_is_refused(&mut client, &keys, &mut tally);
    drop(client);
    assert_eq!(
        daemon.terminate(),
        Some(1),
        "a stop that could not sync its journal is not a clean one"
    );
    std::fs::remove_file(&filler).unwrap();
    let daemon = Daemon::start(&data_dir, &[]);
    check_bounds(daemon.addr, &tally, "after a graceful stop while degraded");
    let mut client = Client::connect(daemon.addr);
    for _ in 0..20 {
        send_acknowledged_round(&mut client, &keys, &mut tally);
    }
    drop(client);
    daemon.kill_9();
    let daemon = Daemon::start(&data_dir, &[]);
    check_bounds(daemon.addr, &tally, "after kill -9 and restart");
}

/// An idempotent batch answered `Unavailable` on a full disk (a degraded journal) is
/// unsettled, not final: those of its increments the journal had in hand when it
/// degraded may still become durable, the others were never applied. Once space is
/// freed, a retry with the same key, without a restart, gets `Ok` for every operation,
/// and every batch is counted exactly once: the retry answers what the degraded
/// journal later made durable and applies only what had been refused. The settled
/// reply then answers every later retry, and survives `kill -9`. Needs root, as the
/// test above.
#[test]
fn a_keyed_batch_refused_on_a_full_disk_settles_on_a_retry_once_space_is_freed() {
    let Some(filesystem) = SmallFilesystem::mount_or_skip("8m", "keyed disk_full test") else {
        return;
    };
    let data_dir = filesystem.path().join("data");
    let keys = keys();
    let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key, 1)).collect();
    let (daemon, mut client, tally, filler) =
        full_disk_after_acknowledged_rounds(&data_dir, &filesystem);
    // Keyed rounds until every key has been refused once; each is one batch to count.
    let (batches, refused_batches) =
        send_keyed_until_every_key_is_refused(&mut client, &ops, 0x5e77_1e00_0000);
    let mut unsettled: Vec<u128> = refused_batches.into_iter().map(|(key, _)| key).collect();
    std::fs::remove_file(&filler).unwrap();
    // Retried with their keys until settled: within a few of the journal's retries.
    let mut settled = Vec::new();
    for _ in 0..100 {
        unsettled.retain(|&idempotency_key| {
            let replies = client.batch(&ops, Some(idempotency_key));
            let ok = replies.iter().all(|reply| reply.status == Status::Ok);
            if ok {
                settled.push((idempotency_key, replies));
            }
            !ok
        });
        if unsettled.is_empty() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        unsettled.is_empty(),
        "{} batches still Unavailable after the space was freed",
        unsettled.len()
    );
    let expected: Vec<i64> = (0..keys.len())
        .map(|key| tally.acked[key] + batches as i64)
        .collect();
    assert_eq!(
        client.values(&keys),
        expected,
        "every keyed batch counted exactly once"
    );
    // Settled, a batch's reply is final: a retry gets it again and applies nothing.
    for (idempotency_key, replies) in &settled {
        assert_eq!(&client.batch(&ops, Some(*idempotency_key)), replies);
    }
    assert_eq!(client.values(&keys), expected);
    drop(client);
    daemon.kill_9();
    let daemon = Daemon::start(&data_dir, &[]);
    let mut client = Client::connect(daemon.addr);
    assert_eq!(client.values(&keys), expected, "after kill -9 and restart");
    for (idempotency_key, replies) in &settled {
        assert_eq!(&client.batch(&ops, Some(*idempotency_key)), replies);
    }
    assert_eq!(client.values(&keys), expected, "retries after the restart");
}

/// Keyed batches answered partly `Ok` and partly `Unavailable` on a full disk (one
/// core's journal degraded before the other's), not retried until after the space was
/// freed, a `kill -9` and a restart: the retry answers every operation acknowledged
/// the first time exactly as then (from its journal record) and applies nothing for
/// it, runs or settles the others, and every batch counts once (PROTOCOL.md: a retry
/// "runs only those operations again and answers the others as the first time"). A
/// client that counts such an operation again when the retry says `Ok` counts it
/// twice: a load harness did, and reported the second count as lost increments.
/// Needs root, as the tests above.
#[test]
fn a_keyed_batch_partly_acknowledged_on_a_full_disk_is_answered_as_before_after_kill_9() {
    let Some(filesystem) = SmallFilesystem::mount_or_skip("8m", "partly acknowledged test") else {
        return;
    };
    let data_dir = filesystem.path().join("data");
    let keys = keys();
    let ops: Vec<Op<&[u8]>> = keys.iter().map(|key| add(key, 1)).collect();
    let (daemon, mut client, tally, filler) =
        full_disk_after_acknowledged_rounds(&data_dir, &filesystem);
    // Keyed batches until every key has been refused once; each one counts once.
    let (mut batches, unsettled) =
        send_keyed_until_every_key_is_refused(&mut client, &ops, 0x9a27_0000_0000);
    let partly = unsettled
        .iter()
        .filter(|(_, replies)| replies.iter().any(|reply| reply.status == Status::Ok))
        .count();
    assert!(
        partly > 0,
        "no batch was answered partly Ok: both journals degraded within one batch"
    );
    // Space freed: a probe batch under its own key, retried until every operation is
    // `Ok` (both journals took a retry), counts once like the others.
    std::fs::remove_file(&filler).unwrap();
    let probe = 0x9a27_ffff_ffff;
    let resumed = (0..100).any(|_| {
        thread::sleep(Duration::from_millis(100));
        let replies = client.batch(&ops, Some(probe));
        replies.iter().all(|reply| reply.status == Status::Ok)
    });
    assert!(resumed, "durable increments resume once space is freed");
    batches += 1;
    drop(client);
    daemon.kill_9();
    let daemon = Daemon::start(&data_dir, &[]);
    let mut client = Client::connect(daemon.addr);
    for (idempotency_key, first) in &unsettled {
        let replies = client.batch(&ops, Some(*idempotency_key));
        for (key, (reply, before)) in replies.iter().zip(first).enumerate() {
            assert_eq!(
                reply.status,
                Status::Ok,
                "key {key} of {idempotency_key:#x}"
            );
            if before.status == Status::Ok {
                assert_eq!(
                    reply, before,
                    "key {key} of {idempotency_key:#x}: acknowledged the first time, so \
                     answered as then"
                );
            }
        }
    }
    let expected: Vec<i64> = (0..keys.len())
        .map(|key| tally.acked[key] + batches as i64)
        .collect();
    assert_eq!(
        client.values(&keys),
        expected,
        "every keyed batch counted exactly once ({partly} of {} retried ones partly Ok)",
        unsettled.len()
    );
}

/// Starts `tallyd` as `Daemon::start` does, expecting it to refuse to start; returns
/// what it wrote to standard error.
fn start_refused(dir: &Path, extra: &[&str]) -> String {
    common::start_refused(dir, 8, extra)
}

/// The newest journal segment of a core lost after a crash (each start of `tallyd`
/// begins a new segment, so three runs give each core three): the restart refuses,
/// naming the missing segment and the flag; with `--recover-to-corruption` it starts
/// with what is left (the increments of the first two runs all there, none counted
/// twice), and the next start needs no flag.
#[test]
fn a_lost_newest_segment_refuses_to_start_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let mut tally = Tally::new();
    let mut before_last_run = tally.clone();
    for run in 0..3 {
        if run == 2 {
            before_last_run = tally.clone();
        }
        let daemon = Daemon::start(dir.path(), &[]);
        let mut client = Client::connect(daemon.addr);
        for _ in 0..10 {
            send_acknowledged_round(&mut client, &keys, &mut tally);
        }
        drop(client);
        daemon.kill_9();
    }
    let journal = dir.path().join("journal").join("core-0");
    let mut segments: Vec<_> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 3, "{segments:?}");
    let newest = segments.pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    let stderr = start_refused(dir.path(), &[]);
    let name = newest.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains(&*name),
        "the refusal names {name}: {stderr}"
    );
    assert!(stderr.contains("--recover-to-corruption"), "{stderr}");
    let daemon = Daemon::start(dir.path(), &["--recover-to-corruption"]);
    let mut floor = before_last_run;
    floor.sent = tally.sent.clone();
    check_bounds(
        daemon.addr,
        &floor,
        "after losing the newest segment, with the flag",
    );
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(daemon.addr, &floor, "the start after, without the flag");
}

/// A `cores` file naming fewer cores than wrote the journals (damaged or edited) is
/// refused, naming the file: trusted, it would replay only some journals and set the
/// others aside with their acknowledged increments. Corrected, the start loses nothing.
#[test]
fn a_cores_file_below_the_journals_is_refused_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let mut tally = Tally::new();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = Client::connect(daemon.addr);
    for _ in 0..5 {
        send_acknowledged_round(&mut client, &keys, &mut tally);
    }
    drop(client);
    daemon.kill_9();
    let cores_file = dir.path().join("cores");
    let recorded = std::fs::read_to_string(&cores_file).unwrap();
    assert_eq!(recorded.trim(), "cores 2");
    std::fs::write(&cores_file, "cores 1\n").unwrap();
    let stderr = start_refused(dir.path(), &[]);
    assert!(stderr.contains("cores"), "{stderr}");
    assert!(
        stderr.contains("core-1"),
        "names the journal that contradicts it: {stderr}"
    );
    std::fs::write(&cores_file, recorded).unwrap();
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(daemon.addr, &tally, "after correcting the cores file");
}

/// A file at each partition's temporary checkpoint path (`checkpoint/<p>.tmp`, for the
/// 8 partitions of these tests), where a checkpoint makes its directory: every
/// checkpoint fails while they stand, as on a full disk.
struct CheckpointSquatters {
    paths: Vec<std::path::PathBuf>,
}

impl CheckpointSquatters {
    fn place(data_dir: &Path) -> CheckpointSquatters {
        let checkpoints = data_dir.join("checkpoint");
        std::fs::create_dir_all(&checkpoints).unwrap();
        let paths: Vec<_> = (0..8)
            .map(|partition| checkpoints.join(format!("{partition}.tmp")))
            .collect();
        for path in &paths {
            std::fs::write(path, b"not a checkpoint").unwrap();
        }
        CheckpointSquatters { paths }
    }

    fn remove(self) {
        for path in &self.paths {
            std::fs::remove_file(path).unwrap();
        }
    }
}

/// A final checkpoint that cannot be written at a graceful stop (a file squats each
/// partition's temporary checkpoint path; on a real server, a full disk) is not a
/// journal failure: the journal is synced, the store closes clean, the stop exits 0,
/// and every increment is there at the next start (a crash after it included). It was
/// reported as a failed journal, the store left unclean and the exit status 1.
#[test]
fn a_final_checkpoint_that_cannot_be_written_still_stops_clean() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let mut tally = Tally::new();
    let daemon = Daemon::start(dir.path(), &[]);
    let mut client = Client::connect(daemon.addr);
    for _ in 0..5 {
        send_acknowledged_round(&mut client, &keys, &mut tally);
    }
    let squatters = CheckpointSquatters::place(dir.path());
    drop(client);
    assert_eq!(daemon.terminate(), Some(0), "the store closed clean");
    // The operator frees the space (a start also writes checkpoints).
    squatters.remove();
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(
        daemon.addr,
        &tally,
        "after a stop whose final checkpoint failed",
    );
    let mut client = Client::connect(daemon.addr);
    send_acknowledged_round(&mut client, &keys, &mut tally);
    drop(client);
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(daemon.addr, &tally, "after kill -9 on top");
}

/// A checkpoint that cannot be written (here a file squats each partition's temporary
/// checkpoint path; on a real server, a full disk) leaves the journal whole: writes go
/// on being acknowledged, a later checkpoint succeeds once the obstacle is gone, and a
/// crash after all that loses nothing.
#[test]
fn a_failed_checkpoint_keeps_writes_going_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let mut tally = Tally::new();
    let daemon = Daemon::start(dir.path(), &["--checkpoint-interval-s", "1"]);
    let checkpoints = dir.path().join("checkpoint");
    let squatters = CheckpointSquatters::place(dir.path());
    let mut client = Client::connect(daemon.addr);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2_500) {
        send_acknowledged_round(&mut client, &keys, &mut tally);
        thread::sleep(Duration::from_millis(50));
    }
    squatters.remove();
    thread::sleep(Duration::from_millis(2_000));
    send_acknowledged_round(&mut client, &keys, &mut tally);
    assert!(
        (0..8).any(|partition| checkpoints.join(partition.to_string()).is_dir()),
        "a checkpoint succeeded once the obstacle was gone"
    );
    drop(client);
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(daemon.addr, &tally, "after failed checkpoints and kill -9");
}

/// An ext4 file system in a loop-mounted image that a test can freeze (`fsfreeze -f`:
/// every write to it then blocks until it is thawed); thawed and unmounted on drop.
struct FreezableFilesystem {
    dir: tempfile::TempDir,
    _image: tempfile::TempDir,
}

impl FreezableFilesystem {
    /// Makes and mounts the image; `Err` says why not (not root, no loop devices in
    /// this sandbox or CI, no mkfs.ext4 or fsfreeze).
    fn mount() -> Result<FreezableFilesystem, String> {
        let image_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = image_dir.path().join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(64 << 20))
            .map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F"], &image)?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -o loop failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let mounted = FreezableFilesystem {
            dir,
            _image: image_dir,
        };
        // Checked here, so that a missing fsfreeze skips the test instead of failing it.
        mounted.freeze()?;
        mounted.thaw()?;
        Ok(mounted)
    }

    fn mount_or_skip(test: &str) -> Option<FreezableFilesystem> {
        FreezableFilesystem::mount()
            .inspect_err(|reason| {
                eprintln!("SKIPPED {test}: cannot mount a freezable file system: {reason}")
            })
            .ok()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn freeze(&self) -> Result<(), String> {
        run("fsfreeze", &["-f"], self.path())
    }

    fn thaw(&self) -> Result<(), String> {
        run("fsfreeze", &["-u"], self.path())
    }
}

impl Drop for FreezableFilesystem {
    fn drop(&mut self) {
        let _ = self.thaw();
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Runs `program args path`; `Err` with its output if it fails.
fn run(program: &str, args: &[&str], path: &Path) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{program} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// A checkpoint round does not stop its core: with the checkpoint directory on a
/// frozen file system (each of the round's writes blocks until the thaw, like a disk
/// that stalls), durable increments go on being acknowledged; after the thaw the round
/// completes, and a `kill -9` loses nothing. The round used to run on the core's
/// thread: it stopped answering until the thaw (and, on a healthy disk, for the five or
/// six fsyncs of every changed partition, a second or more under load).
#[test]
fn a_checkpoint_stuck_on_its_disk_does_not_stop_its_core() {
    const PARTITIONS: u32 = 8;
    let test = "a_checkpoint_stuck_on_its_disk_does_not_stop_its_core";
    let Some(disk) = FreezableFilesystem::mount_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let mut tally = Tally::new();
    checkpoints_on(&disk, dir.path(), &mut tally);
    let daemon = Daemon::start(dir.path(), &["--checkpoint-interval-s", "1"]);
    let mut client = Client::connect(daemon.addr);
    send_acknowledged_round(&mut client, &keys, &mut tally);
    let before = covered_lsns(dir.path(), PARTITIONS);
    disk.freeze().unwrap();
    // Every partition changed, so the next round (within a second) writes them all and
    // blocks on its first write.
    thread::sleep(Duration::from_millis(1_500));
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Thawed before anything else is dropped, even on a failure: a daemon stuck on the
    // frozen disk could not be reaped.
    let served_while_frozen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let frozen = std::time::Instant::now();
        while frozen.elapsed() < Duration::from_millis(2_000) {
            // `next_reply` gives up after the read timeout: a core stopped by its round
            // answers nothing until the thaw.
            send_acknowledged_round(&mut client, &keys, &mut tally);
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            covered_lsns(dir.path(), PARTITIONS),
            before,
            "no checkpoint was written while the disk was frozen"
        );
    }));
    disk.thaw().unwrap();
    if let Err(panic) = served_while_frozen {
        std::panic::resume_unwind(panic);
    }
    let thawed = std::time::Instant::now();
    while covered_lsns(dir.path(), PARTITIONS)
        .iter()
        .zip(&before)
        .any(|(after, before)| after <= before)
    {
        assert!(
            thawed.elapsed() < Duration::from_secs(20),
            "the stuck round completed after the thaw: {:?} against {before:?}",
            covered_lsns(dir.path(), PARTITIONS)
        );
        thread::sleep(Duration::from_millis(50));
    }
    send_acknowledged_round(&mut client, &keys, &mut tally);
    drop(client);
    daemon.kill_9();
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(daemon.addr, &tally, "after a stuck checkpoint and kill -9");
    drop(daemon);
}

/// Lays out a data directory in `dir` (a first run, one acknowledged round counted in
/// `tally`), then moves its checkpoints to `disk`, leaving a symlink in their place.
fn checkpoints_on(disk: &FreezableFilesystem, dir: &Path, tally: &mut Tally) {
    let daemon = Daemon::start(dir, &[]);
    send_acknowledged_round(&mut Client::connect(daemon.addr), &keys(), tally);
    assert_eq!(daemon.terminate(), Some(0));
    let checkpoints = dir.join("checkpoint");
    run("cp", &["-a", checkpoints.to_str().unwrap()], disk.path()).unwrap();
    std::fs::remove_dir_all(&checkpoints).unwrap();
    std::os::unix::fs::symlink(disk.path().join("checkpoint"), &checkpoints).unwrap();
}

/// A graceful stop that meets a checkpoint round stuck on its disk says what it waits
/// for (it used to wait in silence, with the listeners already closed), ends once the
/// disk comes back, exits 0, and loses nothing.
#[test]
fn a_stop_waiting_for_a_stuck_checkpoint_round_says_so_and_then_ends() {
    let test = "a_stop_waiting_for_a_stuck_checkpoint_round_says_so_and_then_ends";
    let Some(disk) = FreezableFilesystem::mount_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let mut tally = Tally::new();
    checkpoints_on(&disk, dir.path(), &mut tally);
    let log_path = dir.path().join("tallyd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let daemon = Daemon::start_logging_to(
        dir.path(),
        &["--checkpoint-interval-s", "1"],
        std::process::Stdio::from(log),
    );
    let mut client = Client::connect(daemon.addr);
    send_acknowledged_round(&mut client, &keys, &mut tally);
    drop(client);
    disk.freeze().unwrap();
    // The next round (within a second) blocks on its first write.
    thread::sleep(Duration::from_millis(1_500));
    let stopping = thread::spawn(move || daemon.terminate());
    let said = std::panic::catch_unwind(|| {
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("waiting for the checkpoint round in progress")
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the stop never said what it waits for"
            );
            thread::sleep(Duration::from_millis(100));
        }
    });
    // Thawed whatever happened: the daemon cannot end before.
    disk.thaw().unwrap();
    assert_eq!(stopping.join().unwrap(), Some(0), "the stop ended cleanly");
    if let Err(panic) = said {
        std::panic::resume_unwind(panic);
    }
    let daemon = Daemon::start(dir.path(), &[]);
    check_bounds(
        daemon.addr,
        &tally,
        "after a stop that waited for a stuck round",
    );
}
