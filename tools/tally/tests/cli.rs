//! The `tally` binary against the client crate's fake server: output, exit status and
//! error messages, as a person or a script would see them.

#[path = "../../../net/client/tests/fake_server/mod.rs"]
mod fake_server;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering;

use fake_server::FakeServer;

fn tally(server: &FakeServer, arguments: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .arg("--addr")
        .arg(server.main_addr.to_string())
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn single_commands_print_plain_values() {
    let server = FakeServer::start(2, 16);
    let run = |arguments: &[&str]| {
        let output = tally(&server, arguments, "");
        assert!(
            output.status.success(),
            "{arguments:?}: {}",
            stderr(&output)
        );
        stdout(&output)
    };
    assert_eq!(run(&["incr", "page:1"]), "1\n");
    assert_eq!(run(&["incr", "page:1", "5"]), "6\n");
    assert_eq!(run(&["decr", "page:1", "2"]), "4\n");
    assert_eq!(run(&["incr", "page:1", "-4"]), "0\n");
    assert_eq!(run(&["set", "page:1", "-7"]), "-7\n");
    assert_eq!(run(&["get", "page:1"]), "-7\n");
    assert_eq!(run(&["exists", "page:1"]), "true\n");
    assert_eq!(run(&["del", "page:1"]), "deleted (was -7)\n");
    assert_eq!(run(&["del", "page:1"]), "not found\n");
    assert_eq!(run(&["exists", "page:1"]), "false\n");
    assert_eq!(
        run(&["bounds", "q", "--floor", "0", "--ceiling", "3"]),
        "bounds set (value 0)\n"
    );
    assert_eq!(run(&["--durability", "durable", "incr", "q", "3"]), "3\n");
    assert_eq!(run(&["ping"]), "PONG\n");
    assert_eq!(server.value("q"), Some(3));
}

#[test]
fn json_prints_one_object_per_result() {
    let server = FakeServer::start(2, 16);
    let output = tally(&server, &["--json", "incr", "likes", "2"], "");
    assert!(output.status.success());
    let value: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(value["ok"], true);
    assert_eq!(value["op"], "incr");
    assert_eq!(value["key"], "likes");
    assert_eq!(value["value"], 2);
    assert_eq!(value["existed"], false);
}

#[test]
fn a_rejected_operation_exits_1_with_a_clear_message() {
    let server = FakeServer::start(1, 4);
    assert!(tally(&server, &["bounds", "stock", "--floor", "0"], "")
        .status
        .success());
    let output = tally(&server, &["decr", "stock"], "");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "tally: stock: rejected: the value would fall below the floor 0\n"
    );
    let output = tally(&server, &["--json", "decr", "stock"], "");
    assert_eq!(output.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(
        (
            value["ok"].clone(),
            value["status"].clone(),
            value["detail"].clone()
        ),
        (false.into(), "below_floor".into(), 0.into())
    );
}

#[test]
fn batch_reads_stdin_and_prints_one_line_per_operation() {
    let server = FakeServer::start(2, 16);
    let input = "# views\nincr page:1 5\nincr page:2\n\nget page:1\nexists nope\nbounds cap --ceiling 1\nincr cap 2\n";
    let output = tally(&server, &["batch"], input);
    assert_eq!(output.status.code(), Some(1), "one operation was rejected");
    let expected = "page:1\t5\npage:2\t1\npage:1\t5\nnope\tfalse\ncap\tbounds set (value 0)\ncap\terror: rejected: the value would rise above the ceiling 1\n";
    assert_eq!(stdout(&output), expected);

    let output = tally(&server, &["--json", "batch"], "incr a 1\nget a\n");
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["value"], 1);
}

#[test]
fn batch_with_a_bad_line_sends_nothing() {
    let server = FakeServer::start(1, 4);
    let output = tally(&server, &["batch"], "incr a 1\nfly a\nincr a 1\n");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "tally: line 2: unknown operation \"fly\": \"fly a\"\ntally: 1 bad line(s), nothing was applied\n"
    );
    assert_eq!(server.value("a"), None);
}

#[test]
fn batch_over_ten_thousand_lines_is_sent_in_several_frames() {
    let server = FakeServer::start(2, 16);
    let input: String = (0..12_000)
        .map(|index| format!("incr k{} 1\n", index % 3))
        .collect();
    let output = tally(&server, &["batch"], &input);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 12_000);
    assert_eq!(
        (0..3)
            .map(|index| server.value(&format!("k{index}")).unwrap())
            .sum::<i64>(),
        12_000
    );
}

#[test]
fn connection_refused_exits_2_and_says_so() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--addr", &free.to_string(), "get", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!("tally: cannot connect to {free}:")),
        "{message}"
    );
}

#[test]
fn bounds_without_a_bound_prints_them_and_clears_nothing() {
    let server = FakeServer::start(1, 4);
    assert!(tally(&server, &["bounds", "likes", "--floor", "0"], "")
        .status
        .success());
    // Once this printed "bounds set" and removed the floor; then it was refused; now it
    // reads the bounds back.
    let output = tally(&server, &["bounds", "likes"], "");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "floor 0, ceiling none\n");
    let output = tally(&server, &["decr", "likes"], "");
    assert_eq!(output.status.code(), Some(1), "the floor is still there");
    // A batch line cannot print two bounds as one result: still refused, naming the
    // lines that read one bound each.
    let output = tally(&server, &["batch"], "bounds likes\n");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("`floor KEY` and `ceiling KEY`"),
        "{}",
        stderr(&output)
    );
    let output = tally(&server, &["bounds", "likes", "--clear", "--floor", "0"], "");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = tally(&server, &["bounds", "likes", "--clear"], "");
    assert_eq!(stdout(&output), "bounds set (value 0)\n");
    assert_eq!(stdout(&tally(&server, &["decr", "likes"], "")), "-1\n");
    let output = tally(&server, &["bounds", "likes"], "");
    assert_eq!(stdout(&output), "floor none, ceiling none\n");
}

#[test]
fn del_help_says_the_bounds_go_with_the_counter() {
    let server = FakeServer::start(1, 4);
    let help = stdout(&tally(&server, &["del", "--help"], ""));
    assert!(help.contains("with its bounds"), "{help}");
}

#[test]
fn help_lists_every_exit_status() {
    let server = FakeServer::start(1, 4);
    let help = stdout(&tally(&server, &["--help"], ""));
    for status in ["  0  ", "  1  ", "  2  ", "  3  outcome unknown"] {
        assert!(help.contains(status), "{status:?} missing from:\n{help}");
    }
}

#[test]
fn an_unanswered_change_exits_3_with_its_key_and_a_rerun_under_it_counts_once() {
    let server = FakeServer::start(1, 4);
    // The increment is applied, its connection dropped, and every port then refuses.
    server.state.drop_after_apply.store(1, Ordering::SeqCst);
    let closed_after_apply = &server.state.closed_ports_after_apply;
    closed_after_apply.store(true, Ordering::SeqCst);
    let arguments = ["--json", "--timeout-ms", "300", "incr", "likes"];
    let output = tally(&server, &arguments, "");
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let failure: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(failure["ok"], false);
    assert_eq!(failure["outcome"], "unknown");
    let key = failure["idempotency_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 32, "{key}");
    assert!(stderr(&output).contains(&format!("--idempotency-key {key}")));
    // The server comes back; the rerun under the key is answered with the first result
    // instead of counting again.
    closed_after_apply.store(false, Ordering::SeqCst);
    server.reopen_port(None);
    server.reopen_port(Some(0));
    let output = tally(&server, &["--idempotency-key", &key, "incr", "likes"], "");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "1\n");
    assert_eq!(server.value("likes"), Some(1));
}

#[test]
fn an_unavailable_result_exits_3_and_says_outcome_unknown() {
    let server = FakeServer::start(1, 4);
    let output = tally(&server, &["--json", "incr", "unavailable"], "");
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let result: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(result["outcome"], "unknown");
    assert_eq!(result["status"], "unavailable");
    let output = tally(&server, &["batch"], "incr a\nincr unavailable\n");
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
}

/// An operation the server refused for now, before applying it (`Unavailable`, detail
/// 1), is not a refusal for good (exit 1) nor of unknown outcome (exit 3): exit 2, and
/// a batch says which key repeats it without applying the rest twice.
#[test]
fn a_result_refused_for_now_exits_2_with_the_key_to_run_again_under() {
    let server = FakeServer::start(1, 4);
    let output = tally(&server, &["--json", "incr", "refused"], "");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let result: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(result["outcome"], "not_applied");
    let output = tally(&server, &["batch"], "incr a\nincr refused\n");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("--idempotency-key"),
        "{}",
        stderr(&output)
    );
    assert_eq!(server.value("refused"), None, "nothing applied");
}

/// A printed key pasted with a digit missing is refused, not read as another key (whose
/// request would count again).
#[test]
fn an_idempotency_key_must_have_all_its_32_digits() {
    let server = FakeServer::start(1, 4);
    let short = "0".repeat(31);
    let output = tally(&server, &["--idempotency-key", &short, "incr", "k"], "");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("32 hex digits"),
        "{}",
        stderr(&output)
    );
    assert_eq!(server.value("k"), None, "nothing sent");
    let full = "0".repeat(31) + "1";
    let output = tally(&server, &["--idempotency-key", &full, "incr", "k"], "");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn a_failure_that_applied_nothing_exits_2_with_outcome_not_applied() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["--addr", &free.to_string(), "--json", "incr", "x"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let failure: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(failure["outcome"], "not_applied");
}

/// With `--json`, every failure is an object with `"outcome"` on stdout: a bad batch line
/// (with its `"line"` number) and a bad argument, which clap refuses before anything runs.
#[test]
fn json_failures_all_say_their_outcome() {
    let server = FakeServer::start(1, 4);
    let output = tally(&server, &["--json", "batch"], "incr a 1\nincr\n");
    assert_eq!(output.status.code(), Some(2));
    let objects: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    assert_eq!(objects.len(), 2, "{}", stdout(&output));
    assert_eq!(objects[0]["line"], 2, "{}", objects[0]);
    for object in &objects {
        assert_eq!(object["ok"], false, "{object}");
        assert_eq!(object["outcome"], "not_applied", "{object}");
    }

    let output = tally(&server, &["--json", "incr", "a", "x"], "");
    assert_eq!(output.status.code(), Some(2));
    let object: serde_json::Value =
        serde_json::from_str(stdout(&output).trim()).expect("a JSON object on stdout");
    assert_eq!(object["outcome"], "not_applied", "{object}");
    assert!(
        object["error"]
            .as_str()
            .unwrap()
            .contains("invalid value 'x'"),
        "{object}"
    );
    assert!(
        stderr(&output).contains("invalid value 'x'"),
        "{}",
        stderr(&output)
    );
    assert_eq!(server.value("a"), None);
}
