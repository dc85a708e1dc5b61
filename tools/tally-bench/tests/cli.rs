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

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
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
    assert!(!output.status.success());
    let message = stderr(&output);
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
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--counters must be at least 1"),
        "{}",
        stderr(&output)
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
    assert!(!other.status.success());
    assert!(
        stderr(&other).contains("was built with different parameters"),
        "{}",
        stderr(&other)
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
