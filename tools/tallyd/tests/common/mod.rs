//! What the daemon's process tests share: starting a real `tallyd` on 127.0.0.1 with the
//! tests' defaults, reading what it prints when it listens, and stopping it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `tallyd` child process; killed on drop if still running.
pub struct Process {
    child: Child,
}

/// `tallyd --listen 127.0.0.1:0 --cores 2 --partitions PARTITIONS --spin-us 20
/// --data-dir DIR EXTRA...` (no `--partitions` if PARTITIONS is 0; short spins, since the
/// tests share two CPUs with the daemon, unless EXTRA gives `--spin-us`; 2 cores unless
/// EXTRA gives `--cores`; a free port unless EXTRA gives `--listen`), logging warnings
/// and worse.
fn command(dir: &Path, partitions: u32, extra: &[&str]) -> Command {
    let spin: &[&str] = if extra.contains(&"--spin-us") {
        &[]
    } else {
        &["--spin-us", "20"]
    };
    let cores: &[&str] = if extra.contains(&"--cores") {
        &[]
    } else {
        &["--cores", "2"]
    };
    let listen: &[&str] = if extra.contains(&"--listen") {
        &[]
    } else {
        &["--listen", "127.0.0.1:0"]
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_tallyd"));
    command.args(listen).args(cores);
    if partitions != 0 {
        command.args(["--partitions", &partitions.to_string()]);
    }
    command
        .args(spin)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn");
    command
}

/// Starts [`command`] and returns it with the rest of the first line of its standard
/// output containing `marker`. Standard output is closed after that line, so later
/// output can never fill a pipe nobody reads.
pub fn start(dir: &Path, partitions: u32, extra: &[&str], marker: &str) -> (Process, String) {
    start_logging_to(dir, partitions, extra, marker, Stdio::inherit())
}

/// [`start`] with tallyd's standard error (its log) going to `stderr`.
pub fn start_logging_to(
    dir: &Path,
    partitions: u32,
    extra: &[&str],
    marker: &str,
    stderr: Stdio,
) -> (Process, String) {
    let mut child = command(dir, partitions, extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn tallyd");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    // The child is killed (by `Process`'s drop) if the line never comes.
    let process = Process { child };
    for line in stdout.lines() {
        let line = line.expect("read tallyd's standard output");
        if let Some((_, rest)) = line.split_once(marker) {
            return (process, rest.trim().to_owned());
        }
    }
    panic!("tallyd exited without printing `{marker}`");
}

/// Starts [`command`] expecting it to refuse to start (exit with a failure within
/// 30 s); returns what it wrote to standard error.
#[allow(dead_code)] // not every test binary has a refusal to check
pub fn start_refused(dir: &Path, partitions: u32, extra: &[&str]) -> String {
    let mut child = command(dir, partitions, extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tallyd");
    let started = std::time::Instant::now();
    while child.try_wait().expect("poll tallyd").is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("tallyd started (or hung) instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("reap tallyd");
    assert!(!output.status.success(), "tallyd exited with success");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

impl Process {
    /// The daemon's process id.
    #[allow(dead_code)] // not every test file looks at the process
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash: nothing runs in the daemon after it.
    #[allow(dead_code)] // not every test file crashes the daemon
    pub fn kill_9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM; returns the exit code.
    #[allow(dead_code)] // not every test file stops the daemon gracefully
    pub fn terminate(mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("reap").code()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
