//! The `tally-bench` binary as a user runs it: against a real `tallyd` on 127.0.0.1 (a
//! native run pointed at the RESP port, a run where every operation fails) and on its own
//! (`recovery` arguments, a reader that closes the pipe).
//!
//! `tallyd` is the one `cargo test --workspace` builds next to this test's executable.

use std::process::{Command, Output, Stdio};

use tally_tests::Tallyd;

fn tally_bench(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(arguments)
        .stdin(Stdio::null())
        .output()
        .expect("run tally-bench")
}

/// `tally-bench` with `PATH` set to `dir` alone.
fn tally_bench_with_path(dir: &std::path::Path, arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(arguments)
        .env("PATH", dir)
        .stdin(Stdio::null())
        .output()
        .expect("run tally-bench")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts that the run failed; returns what it wrote to standard error.
fn refusal(output: &Output) -> String {
    let message = stderr(output);
    assert!(!output.status.success(), "the run succeeded: {message}");
    message
}

fn start() -> (tempfile::TempDir, Tallyd) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(
        dir.path(),
        &["--cores", "2", "--resp-listen", "127.0.0.1:0"],
    );
    (dir, server)
}

#[test]
fn a_native_run_at_the_resp_port_says_it_is_probably_the_wrong_port() {
    let (_dir, mut server) = start();
    let resp = server.wait_for_address("resp listening on ").to_string();
    let output = tally_bench(&["server", "--addr", &resp, "--ops", "10"]);
    let message = refusal(&output);
    assert!(
        message.contains("waiting for the hello reply") && message.contains("native port"),
        "{message}"
    );
    assert!(!message.contains("os error 11"), "{message}");
}

#[test]
fn a_run_where_every_operation_fails_exits_non_zero() {
    let (_dir, server) = start();
    let addr = server.addr.to_string();
    let max = i64::MAX.to_string();
    let run = |ops: &str| {
        tally_bench(&[
            "server", "--addr", &addr, "--keys", "1", "--ops", ops, "--delta", &max,
        ])
    };
    // The one key goes to i64::MAX; every later increment overflows.
    let first = run("1");
    assert!(first.status.success(), "{}", stderr(&first));
    let output = run("50");
    assert!(!output.status.success(), "{}", stderr(&output));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("(0 ops, 50 failed"), "{report}");
    assert!(
        stderr(&output).contains("all 50 operations failed"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn recovery_refuses_zero_counters_up_front() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path().to_str().unwrap();
    let output = tally_bench(&[
        "recovery",
        "--counters",
        "0",
        "--journal-ops",
        "1000",
        "--dir",
        dir,
    ]);
    let message = refusal(&output);
    assert!(
        message.contains("--counters must be at least 1"),
        "{message}"
    );
}

#[test]
fn recovery_refuses_a_kept_directory_built_with_other_parameters() {
    let dir = tempfile::tempdir().expect("temp dir");
    let kept = dir.path().join("kept");
    let kept = kept.to_str().unwrap();
    let scratch = dir.path().to_str().unwrap();
    let arguments = |counters| {
        [
            "recovery",
            "--counters",
            counters,
            "--journal-ops",
            "100",
            "--cores",
            "2",
            "--partitions",
            "4",
            "--keep",
            kept,
            "--json",
            "--dir",
            scratch,
        ]
    };
    let first = tally_bench(&arguments("100"));
    assert!(first.status.success(), "{}", stderr(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let per_core: u64 = report["per_core"]
        .as_array()
        .unwrap()
        .iter()
        .map(|core| core["partitions_restored"].as_u64().unwrap())
        .sum();
    assert_eq!(
        report["partitions_restored"].as_u64(),
        Some(per_core),
        "the total"
    );
    assert_eq!(per_core, 4);

    let again = tally_bench(&arguments("100"));
    assert!(
        again.status.success(),
        "same parameters reuse it: {}",
        stderr(&again)
    );
    let other = tally_bench(&arguments("200"));
    let message = refusal(&other);
    assert!(
        message.contains("was built with different parameters"),
        "{message}"
    );
}

#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args([
            "recovery",
            "--counters",
            "100",
            "--journal-ops",
            "100",
            "--cores",
            "1",
        ])
        .args(["--partitions", "2", "--json", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tally-bench");
    // Nobody reads: the report's write meets a closed pipe, as under `| head -c 0`.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let message = stderr(&output);
    assert!(!message.contains("panicked"), "{message}");
    assert!(output.status.success(), "{message}");
}

/// The Redis the `compare` tests run, or `None` (the test is skipped) without one.
fn redis_server() -> Option<&'static str> {
    let path = "/usr/bin/redis-server";
    let found = std::path::Path::new(path).exists();
    if !found {
        eprintln!("skipped: no {path}");
    }
    found.then_some(path)
}

/// A `redis-server` in `dir` (with no redis-benchmark beside it) that starts the real
/// one; if `fail_with_aof`, with `appendfsync always` (the second Redis `compare` starts)
/// every INCRBY is an unknown command.
fn redis_wrapper(dir: &std::path::Path, redis: &str, fail_with_aof: bool) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("redis-server");
    let aof = if fail_with_aof {
        "--rename-command INCRBY ''"
    } else {
        ""
    };
    let script = format!(
        "#!/bin/sh\ncase \"$*\" in\n  *always*) exec {redis} \"$@\" {aof} ;;\n  *) exec {redis} \"$@\" ;;\nesac\n"
    );
    std::fs::write(&path, script).expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn compare_checks_its_arguments_and_programs_before_starting_anything() {
    let Some(redis) = redis_server() else { return };
    let cases: [(&[&str], &str); 6] = [
        (&["--seconds", "0", "--redis-only"], "--seconds"),
        (&["--seconds", "nan", "--redis-only"], "--seconds"),
        (&["--keys", "0", "--redis-only"], "--keys"),
        (
            &["--tallyd", "/nonexistent/tallyd"],
            "--tallyd /nonexistent/tallyd",
        ),
        (&["--tallyd", "/etc/passwd"], "not executable"),
        (
            &["--redis-benchmark", "/nonexistent/rb", "--redis-only"],
            "--redis-benchmark /nonexistent/rb",
        ),
    ];
    for (arguments, expected) in cases {
        let output = tally_bench(&quick_compare(redis, arguments));
        let message = stderr(&output);
        assert!(!output.status.success(), "{arguments:?}: {message}");
        assert!(message.contains(expected), "{arguments:?}: {message}");
        assert!(!message.contains("starting"), "{arguments:?}: {message}");
    }
}

#[test]
fn compare_exits_non_zero_when_a_run_fails_and_still_prints_the_others() {
    let Some(redis) = redis_server() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let failing = redis_wrapper(dir.path(), redis, true);
    // No redis-benchmark beside the wrapper nor on this PATH: a note says so.
    let output = tally_bench_with_path(
        dir.path(),
        &quick_compare(failing.to_str().unwrap(), &["--redis-only"]),
    );
    let (table, message) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(!output.status.success(), "{table}\n{message}");
    assert!(
        table.contains("| 1 connection, unpipelined | redis | resp |"),
        "{table}"
    );
    assert!(!table.contains("| redis-aof-always | resp |"), "{table}");
    assert!(
        message.contains("4 of the runs failed")
            && message.contains("redis-aof-always, 1 connection, unpipelined"),
        "{message}"
    );
    assert!(
        table.contains("Note: redis-benchmark runs skipped: no redis-benchmark next to"),
        "{table}"
    );
}

#[test]
fn compare_finds_redis_benchmark_on_the_path() {
    let Some(redis) = redis_server() else { return };
    let Some(bin) = std::path::Path::new(redis).parent() else {
        return;
    };
    if !bin.join("redis-benchmark").exists() {
        eprintln!("skipped: no redis-benchmark beside {redis}");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = redis_wrapper(dir.path(), redis, false);
    let output = tally_bench_with_path(
        bin,
        &quick_compare(wrapper.to_str().unwrap(), &["--redis-only"]),
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}\n{}", stderr(&output));
    assert!(
        table.contains("| redis-benchmark -t incr -P 16 -c 50 against |"),
        "{table}"
    );
    assert!(!table.contains("redis-benchmark runs skipped"), "{table}");
}

#[test]
fn compare_leaves_no_directory_behind_when_a_server_cannot_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    // Executable, so it passes the checks, but its interpreter is missing: spawn fails.
    let broken = dir.path().join("redis-server");
    std::fs::write(&broken, "#!/nonexistent/interpreter\n").expect("write");
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let scratch = dir.path().join("tmp");
    std::fs::create_dir(&scratch).expect("mkdir");
    let output = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(["compare", "--redis-only", "--redis-server"])
        .arg(&broken)
        .env("TMPDIR", &scratch)
        .stdin(Stdio::null())
        .output()
        .expect("run tally-bench");
    let message = refusal(&output);
    assert!(message.contains("cannot start"), "{message}");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .expect("read the scratch directory")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("read /proc");
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let (_, ppid) = process_state(pid)?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// The state letter and parent of `pid` (from /proc/PID/stat), if it exists.
fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// Whether `pid` still runs (a zombie has finished).
fn runs(pid: u32) -> bool {
    process_state(pid).is_some_and(|(state, _)| state != 'Z')
}

#[test]
fn compare_stops_its_servers_when_it_is_stopped() {
    let Some(redis) = redis_server() else { return };
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut compare = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
            .args(["compare", "--redis-only", "--redis-server", redis])
            .args(["--seconds", "0.5", "--keys", "100"])
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run tally-bench");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let servers = loop {
            let servers = children_of(compare.id());
            if !servers.is_empty() {
                break servers;
            }
            assert!(std::time::Instant::now() < deadline, "no server started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Into the first run.
        std::thread::sleep(std::time::Duration::from_millis(200));
        // SAFETY: kill takes plain integers; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(compare.id() as i32, signal) }, 0);
        let status = compare.wait().expect("wait for tally-bench");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while servers.iter().any(|&pid| runs(pid)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for pid in servers {
            assert!(!runs(pid), "signal {signal}: server {pid} still runs");
        }
        if signal != libc::SIGKILL {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.code(), Some(128 + signal), "{status:?}");
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .expect("read the temporary directory")
                .map(|entry| entry.expect("an entry").file_name())
                .collect();
            assert!(left.is_empty(), "signal {signal}: left behind {left:?}");
            assert_eq!(status.signal(), None);
        }
    }
}

#[test]
fn an_unwritable_plot_is_refused_before_the_run() {
    // Nothing listens on port 1: a run would fail to connect, after the plot check.
    let output = tally_bench(&[
        "server",
        "--addr",
        "127.0.0.1:1",
        "--ops",
        "10",
        "--plot",
        "/nonexistent/dir/x.svg",
    ]);
    let message = refusal(&output);
    assert!(
        message.contains("the plot /nonexistent/dir/x.svg cannot be written"),
        "{message}"
    );
    assert!(!message.contains("cannot connect"), "{message}");

    let Some(redis) = redis_server() else { return };
    // /proc exists, and no file can be created in it.
    let output = tally_bench(&quick_compare(
        redis,
        &["--redis-only", "--plot-dir", "/proc"],
    ));
    let message = refusal(&output);
    assert!(message.contains("cannot be written"), "{message}");
    assert!(!message.contains("starting"), "{message}");
}

/// Starts `tally-bench` with `arguments`, its output captured.
fn spawn_tally_bench(arguments: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tally-bench")
}

/// Waits for `child` for at most `limit`; `None` (the child killed) if it still runs.
fn wait_within(child: std::process::Child, limit: std::time::Duration) -> Option<Output> {
    let pid = child.id();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(limit) {
        Ok(output) => Some(output.expect("wait for tally-bench")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            None
        }
    }
}

/// Runs `tally-bench` with `arguments`, killing it if it takes longer than `limit`.
fn tally_bench_within(limit: std::time::Duration, arguments: &[&str]) -> Output {
    wait_within(spawn_tally_bench(arguments), limit).unwrap_or_else(|| {
        panic!("tally-bench {arguments:?} still running after {limit:?}: it hangs")
    })
}

#[test]
fn a_run_with_deep_pipelines_of_big_batches_ends_by_its_deadline() {
    let (_dir, mut server) = start();
    let resp = server.wait_for_address("resp listening on ").to_string();
    let native = server.addr.to_string();
    // 64 requests of 10,000 increments are megabytes each way: a generator that writes
    // them all before reading fills both socket buffers, and tallyd stops reading.
    let limit = std::time::Duration::from_secs(60);
    for (addr, protocol, pipeline, batch) in [
        (&native, "native", "64", "10000"),
        (&resp, "resp", "64", "1000"),
    ] {
        let output = tally_bench_within(
            limit,
            &[
                "server",
                "--addr",
                addr,
                "--protocol",
                protocol,
                "--pipeline",
                pipeline,
                "--batch",
                batch,
                "--duration",
                "1",
                "--json",
            ],
        );
        assert!(output.status.success(), "{protocol}: {}", stderr(&output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(report["ops"].as_u64().unwrap() > 0, "{protocol}: {report}");
    }
}

/// The values of `key:0` .. `key:{keys - 1}` on the server at `addr` (0 if missing).
fn counts(addr: std::net::SocketAddr, keys: u64) -> Vec<i64> {
    let (mut connection, _) = tally_tests::RawConnection::open(addr);
    let ops: Vec<tally_protocol::Op> = (0..keys)
        .map(|rank| tally_protocol::Op::Get {
            key: format!("key:{rank}").into_bytes(),
        })
        .collect();
    connection
        .batch_results(&ops)
        .iter()
        .map(|reply| reply.value)
        .collect()
}

#[test]
fn a_shard_aware_native_run_sends_the_same_keys_as_a_resp_run() {
    let (_dir, mut server) = start();
    let resp = server.wait_for_address("resp listening on ").to_string();
    let native = server.addr;
    let (keys, ops) = (50_u64, 6_000_u64);
    let run = |addr: &str, protocol: &str| {
        let output = tally_bench(&[
            "server",
            "--addr",
            addr,
            "--protocol",
            protocol,
            "--connections",
            "1",
            "--pipeline",
            "4",
            "--batch",
            "10",
            "--keys",
            &keys.to_string(),
            "--ops",
            &ops.to_string(),
            "--distribution",
            "zipfian",
            "--seed",
            "7",
        ]);
        assert!(output.status.success(), "{protocol}: {}", stderr(&output));
    };
    run(&native.to_string(), "native");
    let after_native = counts(native, keys);
    assert_eq!(after_native.iter().sum::<i64>(), ops as i64);
    // One connection reaches both cores: keys of each core were incremented.
    let (_, shard_map) = tally_tests::RawConnection::open(native);
    assert_eq!(shard_map.core_count(), 2);
    for core in 0..2 {
        let touched = (0..keys).filter(|&rank| {
            shard_map.owner_of_key(format!("key:{rank}").as_bytes()) == core
                && after_native[rank as usize] > 0
        });
        assert!(touched.count() > 0, "no key of core {core} incremented");
    }
    run(&resp, "resp");
    let after_both = counts(native, keys);
    // The RESP run of the same seed adds exactly the same count to every key.
    let doubled: Vec<i64> = after_native.iter().map(|count| 2 * count).collect();
    assert_eq!(after_both, doubled, "native {after_native:?}");
}

#[test]
fn a_run_where_some_operations_fail_exits_non_zero_unless_errors_are_allowed() {
    let (_dir, server) = start();
    let addr = server.addr.to_string();
    let max = i64::MAX.to_string();
    // key:0 goes to i64::MAX: every later increment of it overflows, key:1's succeed.
    let first = tally_bench(&[
        "server", "--addr", &addr, "--keys", "1", "--ops", "1", "--delta", &max,
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let run = |extra: &[&str]| {
        let mut arguments = vec![
            "server", "--addr", &addr, "--keys", "2", "--ops", "40", "--json",
        ];
        arguments.extend(extra);
        tally_bench(&arguments)
    };
    let output = run(&[]);
    let message = refusal(&output);
    assert!(
        message.contains("Overflow"),
        "the first failure's reason: {message}"
    );
    assert!(message.contains("--allow-errors"), "{message}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let failed = report["requests_failed"].as_u64().unwrap();
    assert!(
        failed > 0 && report["ops"].as_u64().unwrap() > 0,
        "{report}"
    );
    // Percentiles of the successful requests only.
    assert_eq!(
        report["count"].as_u64().unwrap(),
        report["requests"].as_u64().unwrap() - failed,
        "{report}"
    );
    let allowed = run(&["--allow-errors"]);
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    // The human line says how many requests the percentiles leave out.
    let human = tally_bench(&[
        "server",
        "--addr",
        &addr,
        "--keys",
        "2",
        "--ops",
        "40",
        "--allow-errors",
    ]);
    assert!(human.status.success(), "{}", stderr(&human));
    let line = String::from_utf8_lossy(&human.stdout);
    assert!(
        line.contains("requests failed (not in the percentiles)"),
        "{line}"
    );
}

#[test]
fn an_open_loop_run_times_the_requests_a_stall_at_its_end_held_back() {
    let (_dir, server) = start();
    let addr = server.addr.to_string();
    let pid = server.pid() as libc::pid_t;
    let child = spawn_tally_bench(&[
        "server",
        "--addr",
        &addr,
        "--rate",
        "1000",
        "--duration",
        "2",
        "--json",
    ]);
    // Stop the server over the end of the run: from 1.5 s to 2.5 s.
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    // SAFETY: kill(2) on the pid of the tallyd this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let output = child.wait_with_output().expect("wait for tally-bench");
    let message = stderr(&output);
    assert!(output.status.success(), "{message}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // About 2,000 requests were due; those of the last half second waited for the stall
    // (unpipelined, they could not even be sent during it).
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests >= 1_950, "{report}");
    assert!(report["max_us"].as_f64().unwrap() >= 400_000.0, "{report}");
    assert!(report["p90_us"].as_f64().unwrap() >= 10_000.0, "{report}");
    // The run took the stall longer than its 2 s: under 90% of the target rate.
    assert!(
        report["rate_achieved_fraction"].as_f64().unwrap() < 0.9,
        "{report}"
    );
    assert!(message.contains("of the --rate target"), "{message}");
}

#[test]
fn fill_increments_every_key_once_before_the_run() {
    let (_dir, mut server) = start();
    let resp = server.wait_for_address("resp listening on ").to_string();
    let native = server.addr;
    // 2,500 keys: fill requests of 1,000, the last one shorter.
    let keys = 2_500_u64;
    for (addr, protocol) in [(native.to_string(), "native"), (resp, "resp")] {
        let output = tally_bench(&[
            "server",
            "--addr",
            &addr,
            "--protocol",
            protocol,
            "--keys",
            "2500",
            "--ops",
            "10",
            "--connections",
            "3",
            "--fill",
            "--json",
        ]);
        assert!(output.status.success(), "{protocol}: {}", stderr(&output));
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["ops"].as_u64(), Some(10), "the fill is not counted");
    }
    let values = counts(native, keys);
    assert!(
        values.iter().all(|&value| value >= 2),
        "every key filled twice"
    );
    assert_eq!(values.iter().sum::<i64>(), 2 * keys as i64 + 20);
}

/// `compare` against `redis` with short runs (0.1 s, 100 keys, 1,000 requests of
/// redis-benchmark), then `extra`.
fn quick_compare<'a>(redis: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut arguments = vec!["compare", "--redis-server", redis];
    arguments.extend(QUICK_COMPARE);
    arguments.extend(extra);
    arguments
}

/// The arguments that keep a `compare` run short.
const QUICK_COMPARE: [&str; 6] = [
    "--seconds",
    "0.1",
    "--keys",
    "100",
    "--redis-benchmark-requests",
    "1000",
];

/// A port `P` such that `P..P + count` looked free a moment ago, below the kernel's
/// ephemeral range: a range inside it races with every outgoing connection of the
/// tests running beside this one, which take their local ports there.
fn free_port_range(count: u16) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_low / 2);
    // Spread over the range by process id, so parallel runs start apart.
    let span = ephemeral_low.saturating_sub(low + count).max(1);
    let mut base = low + (std::process::id() % u32::from(span)) as u16;
    for _ in 0..1_000 {
        let free = (base..base + count)
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
        base = low + (base - low + count) % span;
    }
    panic!("no {count} free ports in a row below {ephemeral_low}");
}

#[test]
fn compare_records_what_it_compared_on_the_ports_and_disk_asked_for() {
    let Some(redis) = redis_server() else { return };
    let scratch = tempfile::tempdir().expect("temp dir");
    // One tallyd core: ports P..=P+7.
    let base = free_port_range(8);
    let output = tally_bench(&quick_compare(
        redis,
        &[
            "--tallyd-arg=--cores=1",
            "--port-base",
            &base.to_string(),
            "--scratch-dir",
            scratch.path().to_str().unwrap(),
            "--json",
        ],
    ));
    assert!(output.status.success(), "{}", stderr(&output));
    let comparison: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let environment = &comparison["environment"];
    assert_eq!(
        environment["scratch_dir"].as_str(),
        scratch.path().to_str(),
        "{environment}"
    );
    assert!(
        environment["scratch_filesystem"].is_string(),
        "{environment}"
    );
    assert!(
        environment["redis_server_version"]
            .as_str()
            .unwrap()
            .contains("v="),
        "{environment}"
    );
    assert!(environment["tallyd_version"].is_string(), "{environment}");
    assert!(environment["started_utc"].as_str().unwrap().ends_with('Z'));
    assert_eq!(environment["seconds"].as_f64(), Some(0.1));
    let rows = comparison["rows"].as_array().unwrap();
    let find = |system: &str, protocol: &str| {
        rows.iter()
            .find(|row| row["system"] == system && row["protocol"] == protocol)
            .unwrap_or_else(|| panic!("no {system} {protocol} row: {comparison}"))
    };
    let redis_row = find("redis", "resp");
    assert_eq!(redis_row["addr"], format!("127.0.0.1:{base}"));
    assert_eq!(redis_row["durability"], "none (appendonly no)");
    let tally_row = find("tally-relaxed", "native");
    assert_eq!(tally_row["addr"], format!("127.0.0.1:{}", base + 4));
    assert_eq!(tally_row["durability"], "relaxed");
    assert_eq!(find("tally-durable", "resp")["durability"], "durable");
    assert_eq!(
        find("tally-durable", "resp")["addr"],
        format!("127.0.0.1:{}", base + 3)
    );
    // The scratch dir is left empty.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);

    // A bad tallyd argument is reported as what it is, not blamed on the RESP door.
    let output = tally_bench(&quick_compare(redis, &["--tallyd-arg=--bogus"]));
    let (table, message) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(!output.status.success(), "{table}");
    assert!(
        !table.contains("would not start with --resp-listen"),
        "{table}"
    );
    assert!(message.contains("exited at start"), "{message}");
    assert!(!message.contains("was not ready"), "{message}");
}

#[test]
fn a_resp_run_at_the_native_port_says_it_is_probably_the_wrong_port() {
    let (_dir, server) = start();
    let addr = server.addr.to_string();
    let output = tally_bench(&[
        "server",
        "--addr",
        &addr,
        "--protocol",
        "resp",
        "--ops",
        "10",
    ]);
    let message = refusal(&output);
    assert!(
        message.contains("RESP PING") && message.contains("--resp-listen"),
        "{message}"
    );
}

#[test]
fn addr_accepts_a_host_name() {
    let (_dir, server) = start();
    let addr = format!("localhost:{}", server.addr.port());
    let output = tally_bench(&["server", "--addr", &addr, "--ops", "10"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn engine_refuses_zero_operations() {
    let message = refusal(&tally_bench(&["engine", "--ops", "0", "--counters", "10"]));
    assert!(message.contains("--ops must be at least 1"), "{message}");
}

#[test]
fn a_server_that_dies_mid_run_leaves_a_partial_report() {
    let (_dir, mut server) = start();
    let addr = server.addr.to_string();
    let child = spawn_tally_bench(&[
        "server",
        "--addr",
        &addr,
        "--duration",
        "3",
        "--connections",
        "2",
        "--pipeline",
        "4",
        "--json",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    server.kill9();
    let output = child.wait_with_output().expect("wait for tally-bench");
    let message = refusal(&output);
    assert!(message.contains("partial"), "{message}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("no JSON report ({error}): {message}"));
    assert!(report["ops"].as_u64().unwrap() > 0, "{report}");
    let failure = &report["failure"];
    let after_s = failure["after_s"].as_f64().unwrap();
    assert!((0.5..2.9).contains(&after_s), "{failure}");
    assert!(failure["connection"].as_u64().unwrap() < 2, "{failure}");
}

#[test]
fn a_run_with_an_op_count_fails_instead_of_hanging_when_the_server_stops_answering() {
    let (_dir, server) = start();
    let addr = server.addr.to_string();
    let pid = server.pid() as libc::pid_t;
    let child = spawn_tally_bench(&[
        "server",
        "--addr",
        &addr,
        "--connections",
        "2",
        "--pipeline",
        "16",
        "--ops",
        "2000000000",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    // SAFETY: kill(2) on the pid of the tallyd this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The stall timeout (10 s) plus a margin for a loaded machine.
    let output = wait_within(child, std::time::Duration::from_secs(25));
    // SAFETY: as above; the server must run again to be stopped cleanly.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let Some(output) = output else {
        panic!("tally-bench still running 25 s after the server stopped: it hangs");
    };
    let message = refusal(&output);
    assert!(message.contains("no reply for 10 s"), "{message}");
    // The partial report names the requests the stall left unanswered.
    let partial = String::from_utf8_lossy(&output.stdout);
    assert!(partial.contains("requests unanswered"), "{partial}");
}

#[test]
fn a_server_shutting_down_is_reported_as_closing_not_as_a_reply() {
    let (_dir, server) = start();
    let addr = server.addr.to_string();
    let pid = server.pid() as libc::pid_t;
    let child = spawn_tally_bench(&[
        "server",
        "--addr",
        &addr,
        "--connections",
        "2",
        "--pipeline",
        "16",
        "--batch",
        "10",
        "--duration",
        "20",
        "--allow-errors",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    // SAFETY: kill(2) on the pid of the tallyd this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let output = child.wait_with_output().expect("wait for tally-bench");
    let message = refusal(&output);
    // The parting word (request id 0) ends the run; it is never taken as a reply.
    assert!(
        message.contains("the server is closing the connection")
            || message.contains("the server closed the connection"),
        "{message}"
    );
    assert!(!message.contains("a reply to"), "{message}");
}
