//! Harness for Tally's integration tests: real `tallyd` processes on 127.0.0.1.
//!
//! Every test starts its own server on `127.0.0.1:0` in its own temporary data
//! directory; the server prints the address it bound (`listening on ADDR`), which the
//! harness reads from the server's output. Processes are killed when their handle drops,
//! so a failing test leaves nothing running.
//!
//! The binaries are the ones `cargo test --workspace` builds into the same target
//! directory as the test executable (`target/<profile>/tallyd`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    use std::io::Write;
    let mut child = Command::new(binary_path("tally"))
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let output = child.wait_with_output().expect("tally output");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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
