//! The `tally` binary against a real `tallyd` with two cores on 127.0.0.1: `batch` checks
//! all of its input before sending any, keys are checked the same way whatever their
//! length, results name the operation asked for, `--clamp`, and `stats` from every core.
//!
//! `tallyd` is the one `cargo test --workspace` builds next to this test's executable.

use std::net::SocketAddr;

use serde_json::Value;
use tally_tests::{tally_cli, Tallyd};

fn start() -> (tempfile::TempDir, Tallyd) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2", "--partitions", "16"]);
    (dir, server)
}

/// Runs `tally ARGS`, expects exit 0, returns stdout.
#[track_caller]
fn ok(addr: SocketAddr, args: &[&str]) -> String {
    let (status, stdout, stderr) = tally_cli(addr, args, None);
    assert!(status.success(), "tally {args:?}: {status}\n{stderr}");
    stdout
}

#[test]
fn a_batch_with_bad_lines_applies_nothing_and_reports_every_one() {
    let (_dir, server) = start();
    let input = "incr a 1\nfoo bar\nget a\nfoo\nincr a\nset a\n";
    let (status, stdout, stderr) = tally_cli(server.addr, &["batch"], Some(input));
    assert_eq!(status.code(), Some(2), "stdout: {stdout}");
    assert!(stdout.is_empty(), "{stdout}");
    let reported: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        reported,
        [
            "tally: line 2: unknown operation \"foo\": \"foo bar\"",
            "tally: line 4: unknown operation \"foo\": \"foo\"",
            "tally: line 6: wrong number of arguments: \"set a\"",
            "tally: 3 bad line(s), nothing was applied",
        ]
    );
    assert_eq!(ok(server.addr, &["exists", "a"]), "false\n");
}

#[test]
fn a_batch_line_may_end_with_a_comment() {
    let (_dir, server) = start();
    let input = "incr s 4   # four\nget s # note\n# whole line\n";
    let (status, stdout, stderr) = tally_cli(server.addr, &["batch"], Some(input));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "s\t4\ns\t4\n");
}

#[test]
fn invalid_keys_are_bad_input_whatever_their_length() {
    let (_dir, server) = start();
    let long_key = "k".repeat(256);
    for (key, reason) in [("", "cannot be empty"), (long_key.as_str(), "256 bytes")] {
        let (status, stdout, stderr) = tally_cli(server.addr, &["incr", key], None);
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert!(stdout.is_empty());
        assert!(
            stderr.starts_with("tally: invalid key: ") && stderr.contains(reason),
            "{stderr}"
        );
    }
    let input = format!("incr {long_key}\n");
    let (status, _, stderr) = tally_cli(server.addr, &["batch"], Some(&input));
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("line 1: invalid key: 256 bytes"),
        "{stderr}"
    );
}

#[test]
fn json_results_name_the_operation_asked_for() {
    let (_dir, server) = start();
    let parse = |stdout: String| -> Value { serde_json::from_str(stdout.trim()).unwrap() };
    let incr = parse(ok(server.addr, &["--json", "incr", "k", "--", "-1"]));
    assert_eq!(
        (incr["op"].as_str(), incr["value"].as_i64()),
        (Some("incr"), Some(-1))
    );
    let decr = parse(ok(server.addr, &["--json", "decr", "k", "--", "-5"]));
    assert_eq!(
        (decr["op"].as_str(), decr["value"].as_i64()),
        (Some("decr"), Some(4))
    );
    let (status, stdout, _) = tally_cli(server.addr, &["--json", "batch"], Some("incr k -1\n"));
    assert!(status.success());
    assert_eq!(parse(stdout)["op"], "incr");
}

#[test]
fn clamp_applies_what_the_bounds_allow() {
    let (_dir, server) = start();
    ok(
        server.addr,
        &["bounds", "stock", "--floor", "0", "--ceiling", "10"],
    );
    let (status, _, stderr) = tally_cli(server.addr, &["incr", "stock", "12"], None);
    assert_eq!(status.code(), Some(1), "without --clamp: {stderr}");
    assert_eq!(
        ok(server.addr, &["incr", "stock", "12", "--clamp"]),
        "10 (clamped)\n"
    );
    assert_eq!(ok(server.addr, &["decr", "stock", "3", "--clamp"]), "7\n");
    assert_eq!(
        ok(server.addr, &["set", "stock", "-4", "--clamp"]),
        "0 (clamped)\n"
    );
    let input = "incr stock 50 --clamp\ndecr stock 99 --clamp # empty it\nset stock 3\n";
    let (status, stdout, stderr) = tally_cli(server.addr, &["batch"], Some(input));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "stock\t10 (clamped)\nstock\t0 (clamped)\nstock\t3\n"
    );
    let (status, stdout, _) = tally_cli(
        server.addr,
        &["--json", "incr", "stock", "9", "--clamp"],
        None,
    );
    assert!(status.success());
    let result: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (result["value"].as_i64(), result["clamped"].as_bool()),
        (Some(10), Some(true))
    );
}

#[test]
fn stats_shows_every_core_and_the_totals() {
    let (_dir, server) = start();
    // Enough keys that both cores own some.
    let input: String = (0..64).map(|index| format!("incr key{index}\n")).collect();
    let (status, _, stderr) = tally_cli(server.addr, &["batch"], Some(&input));
    assert!(status.success(), "{stderr}");

    let stats: Value = serde_json::from_str(ok(server.addr, &["--json", "stats"]).trim()).unwrap();
    let per_core = stats["per_core"].as_array().expect("per_core");
    let cores: Vec<u64> = per_core
        .iter()
        .map(|core| core["core"].as_u64().unwrap())
        .collect();
    assert_eq!(cores, [0, 1], "each core answers for itself");
    assert_eq!(stats["cores"], 2);
    let records: Vec<u64> = per_core
        .iter()
        .map(|core| core["journal_records"].as_u64().unwrap())
        .collect();
    assert!(
        records.iter().all(|count| *count > 0),
        "both cores journal: {records:?}"
    );
    assert_eq!(stats["journal_records"], records.iter().sum::<u64>());
    assert_eq!(stats["journal_failed"], 0);
    assert!(stats.get("core").is_none(), "no total for a core's index");

    let table = ok(server.addr, &["stats"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["stat", "core_0", "core_1", "total"]);
    let row = |name: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap();
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    assert_eq!(row("core"), ["0", "1", "-"]);
    assert_eq!(row("cores"), ["2", "2", "2"]);
    assert_eq!(row("journal_failed"), ["0", "0", "0"]);
}
