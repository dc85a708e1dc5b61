//! Harness for Tally's integration tests: real `tallyd` processes on 127.0.0.1.
//!
//! Every test starts its own server on `127.0.0.1:0` in its own temporary data
//! directory; the server prints the address it bound (`listening on ADDR`), which the
//! harness reads from the server's output. Processes are killed when their handle drops,
//! so a failing test leaves nothing running.
//!
//! The binaries are the ones `cargo test --workspace` builds into the same target
//! directory as the test executable (`target/<profile>/tallyd`).
//!
//! [`RawConnection`] speaks the protocol below the native client, with the codec of
//! `tally-protocol` and a plain `TcpStream`, for what the client never sends: idempotency
//! keys of the test's choosing, batches over the limit, garbage, half frames.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tally_protocol::{
    decode_reply, encode_batch, encode_hello, encode_stats, BoundPolicy, Durability, ErrorCode,
    HelloReply, Op, OpReply, Reply,
};

/// How long a server may take to start listening before the test gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a binary built by this workspace (`tallyd`, `tally`, `tally-bench`).
pub fn binary_path(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/; binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A running `tallyd` child process.
pub struct Tallyd {
    child: Option<Child>,
    /// The address the server bound for the native protocol.
    pub addr: SocketAddr,
    /// Every line the server printed so far (stdout and stderr, interleaved).
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    data_dir: PathBuf,
}

impl Tallyd {
    /// Starts `tallyd --data-dir DATA_DIR --listen 127.0.0.1:0 EXTRA_ARGS...` and waits
    /// until it listens.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Tallyd {
        let mut child = Command::new(binary_path("tallyd"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tallyd");
        let (sender, lines) = mpsc::channel();
        forward_lines(child.stdout.take().expect("stdout"), sender.clone());
        forward_lines(child.stderr.take().expect("stderr"), sender);
        let mut server = Tallyd {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
            log: Vec::new(),
            data_dir: data_dir.to_path_buf(),
        };
        server.addr = server.wait_for_address("listening on ");
        server
    }

    /// Waits for a line containing `marker` followed by an address, and returns it.
    pub fn wait_for_address(&mut self, marker: &str) -> SocketAddr {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(addr) = self.log.iter().find_map(|line| address_after(line, marker)) {
                return addr;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(remaining) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "tallyd printed no `{marker}ADDR` within {START_TIMEOUT:?}; output:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Collects what the server printed since the last call.
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: the process gets no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
    }

    /// Sends a signal (SIGTERM, SIGINT) and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({signal})");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.drain_log();
                return status;
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                panic!("tallyd did not exit within {timeout:?} after signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for Tallyd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

fn forward_lines(stream: impl std::io::Read + Send + 'static, sender: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

/// Parses the address that follows `marker` in `line`, if any.
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let token: String = rest
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    token.parse().ok()
}

/// Runs the `tally` CLI against `addr` and returns (exit status, stdout, stderr).
pub fn tally_cli(
    addr: SocketAddr,
    args: &[&str],
    stdin: Option<&str>,
) -> (ExitStatus, String, String) {
    let mut child = Command::new(binary_path("tally"))
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    // Written on its own thread: `tally batch` prints while it reads, so writing all of a
    // long input before reading any output would deadlock on a full stdout pipe.
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.unwrap_or_default().to_owned();
    let writer = std::thread::spawn(move || {
        // A CLI that stops reading early (a bad line) closes the pipe: not a test failure.
        let _ = input.write_all(text.as_bytes());
    });
    let output = child.wait_with_output().expect("tally output");
    writer.join().expect("stdin writer");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// How long a raw connection waits for a reply before the test fails.
pub const RAW_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A reply decoded and copied out of the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawReply {
    Hello(HelloReply),
    Pong,
    Batch(Vec<OpReply>),
    Stats(Vec<(String, u64)>),
    Error { code: ErrorCode, message: String },
}

/// One protocol connection over a plain `TcpStream`, without the native client.
pub struct RawConnection {
    pub stream: TcpStream,
    received: Vec<u8>,
    next_request_id: u64,
}

impl RawConnection {
    /// Opens a TCP connection; no hello is sent.
    pub fn connect(addr: SocketAddr) -> RawConnection {
        let stream = TcpStream::connect(addr).expect("connect to tallyd");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(RAW_READ_TIMEOUT))
            .expect("read timeout");
        RawConnection {
            stream,
            received: Vec::new(),
            next_request_id: 1,
        }
    }

    /// Opens a connection and completes the handshake.
    pub fn open(addr: SocketAddr) -> (RawConnection, HelloReply) {
        let mut connection = RawConnection::connect(addr);
        let hello = connection.hello();
        (connection, hello)
    }

    /// Sends `Hello` and returns the shard map.
    pub fn hello(&mut self) -> HelloReply {
        let mut frame = Vec::new();
        let request_id = self.request_id();
        encode_hello(&mut frame, request_id, "tally-tests").expect("encode hello");
        self.send(&frame);
        match self.reply_to(request_id) {
            RawReply::Hello(hello) => hello,
            other => panic!("hello answered with {other:?}"),
        }
    }

    /// Sends `Hello` and returns whatever comes back: `Some(HelloReply)` when admitted,
    /// `Some(Error ...)` or `None` (closed) when the server refuses the connection.
    pub fn try_hello(&mut self) -> Option<RawReply> {
        let mut frame = Vec::new();
        let request_id = self.request_id();
        encode_hello(&mut frame, request_id, "tally-tests").expect("encode hello");
        // A refused connection may already be closed: the write can fail, the refusal
        // may still be readable.
        let _ = self.stream.write_all(&frame);
        self.next_reply().map(|(_, reply)| reply)
    }

    /// A fresh request id.
    pub fn request_id(&mut self) -> u64 {
        self.next_request_id += 1;
        self.next_request_id
    }

    /// Writes bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to tallyd");
    }

    /// Sends one batch and returns its reply.
    pub fn batch<K: AsRef<[u8]>>(
        &mut self,
        idempotency_key: Option<u128>,
        ops: &[Op<K>],
    ) -> RawReply {
        let mut frame = Vec::new();
        let request_id = self.request_id();
        encode_batch(
            &mut frame,
            request_id,
            Durability::ServerDefault,
            idempotency_key,
            ops,
        )
        .expect("encode batch");
        self.send(&frame);
        self.reply_to(request_id)
    }

    /// Sends one batch and returns its results, failing the test on an `Error` reply.
    pub fn batch_results<K: AsRef<[u8]>>(&mut self, ops: &[Op<K>]) -> Vec<OpReply> {
        match self.batch(None, ops) {
            RawReply::Batch(results) => results,
            other => panic!("batch answered with {other:?}"),
        }
    }

    /// Sends `Stats` and returns the answering core's statistics.
    pub fn stats(&mut self) -> Vec<(String, u64)> {
        let mut frame = Vec::new();
        let request_id = self.request_id();
        encode_stats(&mut frame, request_id);
        self.send(&frame);
        match self.reply_to(request_id) {
            RawReply::Stats(entries) => entries,
            other => panic!("stats answered with {other:?}"),
        }
    }

    /// The next reply, which must answer `request_id`.
    pub fn reply_to(&mut self, request_id: u64) -> RawReply {
        match self.next_reply() {
            Some((id, reply)) => {
                assert_eq!(id, request_id, "reply {reply:?} answers another request");
                reply
            }
            None => panic!("tallyd closed the connection instead of answering {request_id}"),
        }
    }

    /// The next reply and the request id it carries, or `None` when the server closed
    /// the connection (end of stream or reset) before a whole reply arrived.
    pub fn next_reply(&mut self) -> Option<(u64, RawReply)> {
        loop {
            if let Some(decoded) = self.decode_buffered() {
                return Some(decoded);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(count) => self.received.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if is_reset(&error) => return None,
                Err(error) => panic!("reading a reply from tallyd: {error}"),
            }
        }
    }

    /// Whether the server closed the connection (nothing but end of stream is left).
    pub fn is_closed_by_server(&mut self) -> bool {
        self.next_reply().is_none()
    }

    fn decode_buffered(&mut self) -> Option<(u64, RawReply)> {
        let frame = decode_reply(&self.received).expect("tallyd sent a bad frame")?;
        let reply = match frame
            .reply
            .expect("tallyd sent a reply that does not decode")
        {
            Reply::HelloReply(hello) => RawReply::Hello(hello),
            Reply::Pong => RawReply::Pong,
            Reply::BatchReply(batch) => RawReply::Batch(batch.results().collect()),
            Reply::StatsReply(stats) => RawReply::Stats(stats.entries),
            Reply::Error(error) => RawReply::Error {
                code: error.code,
                message: error.message.to_owned(),
            },
            other => panic!("unexpected reply {other:?}"),
        };
        let decoded = (frame.request_id, reply);
        let frame_bytes = frame.frame_bytes;
        self.received.drain(..frame_bytes);
        Some(decoded)
    }
}

fn is_reset(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// The value of statistic `name`, failing the test if the server does not report it.
pub fn stat(entries: &[(String, u64)], name: &str) -> u64 {
    entries
        .iter()
        .find(|(entry, _)| entry == name)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("tallyd reports no statistic {name:?}: {entries:?}"))
}

/// An `Add` with the reject policy.
pub fn add<K>(key: K, delta: i64) -> Op<K> {
    Op::Add {
        key,
        delta,
        policy: BoundPolicy::Reject,
    }
}

/// A small deterministic generator (SplitMix64) so a failing run can be replayed: tests
/// print the seed, and `TALLY_TEST_SEED` sets it.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `TALLY_TEST_SEED` if set, else from `default_seed`; prints the seed.
    pub fn from_env(default_seed: u64) -> Rng {
        let seed = std::env::var("TALLY_TEST_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(default_seed);
        eprintln!("seed {seed} (set TALLY_TEST_SEED to replay)");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "empty range");
        self.next_u64() % bound
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: i64, high: i64) -> i64 {
        assert!(low <= high, "empty range");
        let span = (high as i128 - low as i128 + 1) as u128;
        (low as i128 + (u128::from(self.next_u64()) % span) as i128) as i64
    }
}

/// Idle times that sweep across `read_timeout`, from a fifth below it to a fifth above
/// in quarter-millisecond steps: a loop that sleeps each one and then calls lands some
/// calls on the server's idle close (as its parting frame is written) whatever the
/// machine's timing.
pub fn idle_times_around(read_timeout: Duration) -> impl Iterator<Item = Duration> {
    const STEP: Duration = Duration::from_micros(250);
    let first = read_timeout - read_timeout / 5;
    let last = read_timeout + read_timeout / 5;
    let step_count = ((last - first).as_micros() / STEP.as_micros()) as u32;
    (0..=step_count).map(move |step| first + STEP * step)
}

/// One key owned by each core of `hello`'s shard map, in core order.
pub fn key_per_core(hello: &tally_protocol::HelloReply, prefix: &str) -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; hello.core_count()];
    for index in 0.. {
        let key = format!("{prefix}:{index}");
        let owner = hello.owner_of_key(key.as_bytes());
        keys[owner].get_or_insert(key);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.into_iter().map(Option::unwrap).collect()
}

#[cfg(test)]
mod tests {
    use super::address_after;

    #[test]
    fn finds_the_address_in_a_log_line() {
        let line = "2026-11-28T04:00:00Z INFO tallyd listening on 127.0.0.1:40123 (shard ports 40124, 40125)";
        assert_eq!(address_after(line, "listening on ").unwrap().port(), 40123);
        assert!(address_after("nothing here", "listening on ").is_none());
    }
}
