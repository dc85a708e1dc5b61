//! The `tally` CLI against a real `tallyd`: every subcommand in plain and `--json` output,
//! `batch` from stdin, and the exit status contract: 0 success, 1 an operation was
//! rejected (with a clear message on stderr), 2 the call failed (connection refused, bad
//! input).

use std::net::{SocketAddr, TcpListener};
use std::process::ExitStatus;

use serde_json::Value;
use tally_client::Client;
use tally_tests::{tally_cli, Tallyd};

fn start() -> (tempfile::TempDir, Tallyd) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Tallyd::start(dir.path(), &["--cores", "2"]);
    (dir, server)
}

/// Runs `tally ARGS`, expects exit 0, returns stdout without its final newline.
#[track_caller]
fn ok(addr: SocketAddr, args: &[&str]) -> String {
    let (status, stdout, stderr) = tally_cli(addr, args, None);
    assert!(
        status.success(),
        "tally {args:?}: {status}\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout.trim_end_matches('\n').to_owned()
}

/// Runs `tally --json ARGS`, expects exit 0 and one JSON object.
#[track_caller]
fn json(addr: SocketAddr, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(addr, &all)).expect("one JSON object")
}

fn code(status: ExitStatus) -> Option<i32> {
    status.code()
}

#[test]
fn every_subcommand_prints_its_result() {
    let (_dir, server) = start();
    let addr = server.addr;
    assert_eq!(ok(addr, &["get", "page:home"]), "0");
    assert_eq!(ok(addr, &["exists", "page:home"]), "false");
    assert_eq!(ok(addr, &["incr", "page:home", "5"]), "5");
    assert_eq!(ok(addr, &["incr", "page:home"]), "6");
    assert_eq!(ok(addr, &["incr", "page:home", "-10"]), "-4");
    assert_eq!(ok(addr, &["decr", "page:home", "3"]), "-7");
    assert_eq!(ok(addr, &["decr", "page:home"]), "-8");
    assert_eq!(ok(addr, &["decr", "page:home", "-20"]), "12");
    assert_eq!(ok(addr, &["get", "page:home"]), "12");
    assert_eq!(ok(addr, &["exists", "page:home"]), "true");
    assert_eq!(ok(addr, &["set", "page:home", "-40"]), "-40");
    assert_eq!(ok(addr, &["del", "page:home"]), "deleted (was -40)");
    assert_eq!(ok(addr, &["del", "page:home"]), "not found");
    assert_eq!(ok(addr, &["get", "page:home"]), "0");
    assert_eq!(
        ok(addr, &["bounds", "likes", "--floor", "0", "--ceiling", "9"]),
        "bounds set (value 0)"
    );
    assert_eq!(
        ok(addr, &["--durability", "durable", "incr", "likes", "9"]),
        "9"
    );
    assert_eq!(ok(addr, &["--durability", "relaxed", "get", "likes"]), "9");
    assert_eq!(ok(addr, &["ping"]), "PONG");
    let stats = ok(addr, &["stats"]);
    assert!(
        stats
            .lines()
            .any(|line| line.split_whitespace().eq(["cores", "2", "2", "2"])),
        "{stats}"
    );

    // The CLI and the client see the same counters.
    let mut client = Client::connect(addr).unwrap();
    assert_eq!(client.get("likes").unwrap(), 9);
    client.incr("from-client", 3).unwrap();
    assert_eq!(ok(addr, &["get", "from-client"]), "3");
}

#[test]
fn json_output_parses_and_carries_every_field() {
    let (_dir, server) = start();
    let addr = server.addr;
    let incr = json(addr, &["incr", "page:1", "5"]);
    assert_eq!(incr["ok"], true);
    assert_eq!(incr["op"], "incr");
    assert_eq!(incr["key"], "page:1");
    assert_eq!(incr["value"], 5);
    assert_eq!(incr["existed"], false);
    assert_eq!(incr["clamped"], false);

    let decr = json(addr, &["decr", "page:1", "2"]);
    assert_eq!(
        (decr["op"].as_str(), decr["value"].as_i64()),
        (Some("decr"), Some(3))
    );
    assert_eq!(decr["existed"], true);
    assert_eq!(json(addr, &["get", "page:1"])["value"], 3);
    assert_eq!(json(addr, &["set", "page:1", "-9"])["value"], -9);
    assert_eq!(json(addr, &["exists", "page:1"])["value"], 1);
    let del = json(addr, &["del", "page:1"]);
    assert_eq!(
        (del["op"].as_str(), del["value"].as_i64()),
        (Some("del"), Some(-9))
    );
    assert_eq!(json(addr, &["exists", "page:1"])["existed"], false);
    assert_eq!(
        json(addr, &["bounds", "k", "--ceiling", "3"])["op"],
        "bounds"
    );
    assert_eq!(json(addr, &["ping"])["ok"], true);
    let stats = json(addr, &["stats"]);
    assert_eq!(stats["cores"], 2);
    assert!(stats["partitions"].as_u64().unwrap() > 0);
}

#[test]
fn batch_reads_stdin_and_prints_one_result_per_operation() {
    let (_dir, server) = start();
    let addr = server.addr;
    let input = "incr a 3\n\n# a comment\nget a\nbounds a --floor 0 --ceiling 5\nincr a 9\n\
                 decr a\nset b 7\ndel b\nexists b\nget missing\n";
    let (status, stdout, stderr) = tally_cli(addr, &["batch"], Some(input));
    // One operation was rejected (over the ceiling): exit 1, but every result is printed.
    assert_eq!(code(status), Some(1), "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "a\t3",
            "a\t3",
            "a\tbounds set (value 3)",
            "a\terror: rejected: the value would rise above the ceiling 5",
            "a\t2",
            "b\t7",
            "b\tdeleted (was 7)",
            "b\tfalse",
            "missing\t0",
        ]
    );

    let (status, stdout, _) = tally_cli(addr, &["--json", "batch"], Some("incr c 2\nincr a 10\n"));
    assert_eq!(code(status), Some(1));
    let results: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(
        (results[0]["ok"].as_bool(), results[0]["value"].as_i64()),
        (Some(true), Some(2))
    );
    assert_eq!(results[1]["ok"], false);
    assert_eq!(results[1]["status"], "above_ceiling");
    assert_eq!(results[1]["detail"], 5);
    assert_eq!(ok(addr, &["get", "a"]), "2");
}

#[test]
fn a_batch_longer_than_one_frame_is_streamed() {
    let (_dir, server) = start();
    let lines = 12_000;
    let input: String = (0..lines)
        .map(|index| format!("incr big:{} 1\n", index % 100))
        .collect();
    let (status, stdout, stderr) = tally_cli(server.addr, &["batch"], Some(&input));
    assert!(status.success(), "{stderr}");
    let output: Vec<&str> = stdout.lines().collect();
    assert_eq!(output.len(), lines);
    // Line i is the (i / 100 + 1)-th increment of its key.
    for (index, line) in output.iter().enumerate() {
        assert_eq!(*line, format!("big:{}\t{}", index % 100, index / 100 + 1));
    }
    let mut client = Client::connect(server.addr).unwrap();
    for key in 0..100 {
        assert_eq!(
            client.get(format!("big:{key}")).unwrap(),
            (lines / 100) as i64
        );
    }
}

#[test]
fn a_bad_batch_line_stops_the_run_before_anything_is_sent() {
    let (_dir, server) = start();
    let input = "incr a 1\nincr a 1\nfrobnicate a\nincr a 1\n";
    let (status, stdout, stderr) = tally_cli(server.addr, &["batch"], Some(input));
    assert_eq!(code(status), Some(2), "stdout: {stdout}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("frobnicate"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(ok(server.addr, &["get", "a"]), "0");
}

#[test]
fn a_rejected_operation_exits_1_with_a_clear_message() {
    let (_dir, server) = start();
    let addr = server.addr;
    ok(addr, &["bounds", "likes", "--floor", "0"]);
    let (status, stdout, stderr) = tally_cli(addr, &["decr", "likes"], None);
    assert_eq!(code(status), Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr.trim_end(),
        "tally: likes: rejected: the value would fall below the floor 0"
    );
    assert_eq!(ok(addr, &["get", "likes"]), "0");

    let (status, stdout, _) = tally_cli(addr, &["--json", "decr", "likes"], None);
    assert_eq!(code(status), Some(1));
    let rejection: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(rejection["ok"], false);
    assert_eq!(rejection["status"], "below_floor");
    assert_eq!(rejection["detail"], 0);

    // Overflow is a rejection too; an empty key is bad input, like a 256-byte one.
    ok(addr, &["set", "max", &i64::MAX.to_string()]);
    let (status, _, stderr) = tally_cli(addr, &["incr", "max"], None);
    assert_eq!(code(status), Some(1));
    assert!(stderr.contains("overflow"), "{stderr}");
    let (status, _, stderr) = tally_cli(addr, &["incr", ""], None);
    assert_eq!(code(status), Some(2));
    assert!(stderr.contains("invalid key"), "{stderr}");
}

#[test]
fn a_failed_call_exits_2_with_a_clear_message() {
    // A port nobody listens on: bind one, then free it.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, stdout, stderr) = tally_cli(closed, &["get", "x"], None);
    assert_eq!(code(status), Some(2));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(stderr.contains(&closed.to_string()), "{stderr}");
    let (status, stdout, _) = tally_cli(closed, &["--json", "incr", "x"], None);
    assert_eq!(code(status), Some(2));
    let failure: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(failure["ok"], false);
    assert!(failure["error"]
        .as_str()
        .unwrap()
        .contains("cannot connect"));

    // Input the CLI cannot send: a 256-byte key, a delta that is not a number.
    let (_dir, server) = start();
    let long_key = "k".repeat(256);
    let (status, _, stderr) = tally_cli(server.addr, &["incr", &long_key], None);
    assert_eq!(code(status), Some(2));
    assert!(
        stderr.contains("invalid key") && stderr.contains("256"),
        "{stderr}"
    );
    let (status, _, stderr) = tally_cli(server.addr, &["incr", "x", "lots"], None);
    assert_eq!(code(status), Some(2));
    assert!(stderr.contains("lots"), "{stderr}");
    assert_eq!(ok(server.addr, &["exists", "x"]), "false");
}
