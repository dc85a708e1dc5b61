//! What an operator meets around a real `tallyd`: signals, start-up, idle cost, refusals
//! of settings the host cannot honour, and what the log says. Each test starts its own
//! server on 127.0.0.1 in its own temporary data directory.

use std::time::{Duration, Instant};

use tally_tests::{tally_cli, Tallyd};

const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `tally ARGS` against `server`; its standard output, trimmed, after checking it succeeded.
fn cli(server: &Tallyd, args: &[&str]) -> String {
    let (status, stdout, stderr) = tally_cli(server.addr, args, None);
    assert!(status.success(), "tally {args:?} failed: {stdout} {stderr}");
    stdout.trim().to_owned()
}

/// Waits until the server's log has a line containing `text`, or panics after `within`.
fn wait_for_line(server: &mut Tallyd, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !server.drain_log().iter().any(|line| line.contains(text)) {
        assert!(
            Instant::now() < deadline,
            "no line with {text:?} within {within:?}; log:\n{}",
            server.log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGHUP (a closed terminal, a logrotate `kill -HUP`) must not stop tallyd: it is
/// logged and ignored, and a relaxed increment acknowledged after it survives the
/// graceful stop that follows. (The default action killed the process at once, and the
/// relaxed write still in memory was lost.)
#[test]
fn sighup_is_logged_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    // Relaxed writes stay in memory for up to 2 s: a kill in that time loses them.
    let flags = ["--cores", "2", "--durability", "relaxed", "--relaxed-flush-ms", "2000"];
    let mut server = Tallyd::start(dir.path(), &flags);
    assert_eq!(cli(&server, &["incr", "h", "5"]), "5");
    // SAFETY: kill(2) on the child we spawned and still hold.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0);
    wait_for_line(&mut server, "SIGHUP received and ignored", Duration::from_secs(5));
    assert!(server.is_running(), "SIGHUP stopped tallyd");
    assert_eq!(cli(&server, &["incr", "h", "5"]), "10");
    let status = server.signal_and_wait(libc::SIGTERM, STOP_TIMEOUT);
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log.join("\n"));
    let server = Tallyd::start(dir.path(), &flags);
    assert_eq!(cli(&server, &["get", "h"]), "10");
}
