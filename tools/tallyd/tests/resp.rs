//! The Redis door against a real `tallyd` on 127.0.0.1: every command through the
//! `redis` crate (single commands and pipelines, checked against a `HashMap` model),
//! errors, bad input over a raw socket, connection limits, and the stock `redis-cli`
//! and `redis-benchmark` tools (`.ci/run` installs the Debian package `redis-tools`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use redis::Value;

mod common;

/// A running `tallyd` with a Redis door, in its own data directory.
struct Daemon {
    _process: common::Process,
    resp_addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra: Vec<&str> = ["--resp-listen", "127.0.0.1:0"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        let (process, addr) = common::start(dir.path(), 16, &extra, "resp listening on ");
        Daemon {
            _process: process,
            resp_addr: addr.parse().expect("a socket address"),
            _dir: dir,
        }
    }

    fn client(&self) -> redis::Connection {
        let url = format!("redis://{}/", self.resp_addr);
        let client = redis::Client::open(url).expect("client");
        client
            .get_connection_with_timeout(Duration::from_secs(10))
            .expect("connect")
    }

    fn raw(&self) -> TcpStream {
        let stream = TcpStream::connect(self.resp_addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    fn port(&self) -> String {
        self.resp_addr.port().to_string()
    }
}

fn query<T: redis::FromRedisValue>(connection: &mut redis::Connection, args: &[&str]) -> T {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command
        .query(connection)
        .unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

fn query_error(connection: &mut redis::Connection, args: &[&str]) -> String {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    match command.query::<Value>(connection) {
        Ok(value) => panic!("{args:?} succeeded with {value:?}"),
        Err(error) => error.to_string(),
    }
}

/// Reads until the server closes the connection; returns everything it sent.
fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("the server closes the connection");
    String::from_utf8_lossy(&received).into_owned()
}

#[test]
fn every_counter_command_matches_a_model() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    let mut model: HashMap<String, i64> = HashMap::new();
    // Forty keys spread over both cores and sixteen partitions.
    for round in 0..5_i64 {
        for key_index in 0..40 {
            let key = format!("k{key_index}");
            let value = model.entry(key.clone()).or_insert(0);
            let (returned, expected): (i64, i64) = match key_index % 4 {
                0 => (query(&mut redis, &["INCR", &key]), *value + 1),
                1 => (
                    query(&mut redis, &["INCRBY", &key, &(round * 7).to_string()]),
                    *value + round * 7,
                ),
                2 => (query(&mut redis, &["DECR", &key]), *value - 1),
                _ => (query(&mut redis, &["DECRBY", &key, "-3"]), *value + 3),
            };
            assert_eq!(returned, expected, "{key} in round {round}");
            *value = expected;
        }
    }
    assert_eq!(query::<String>(&mut redis, &["SET", "k0", "-42"]), "OK");
    model.insert("k0".into(), -42);
    for (key, value) in &model {
        assert_eq!(
            query::<Option<i64>>(&mut redis, &["GET", key]),
            Some(*value)
        );
    }
    assert_eq!(query::<Option<i64>>(&mut redis, &["GET", "missing"]), None);
    let keys: Vec<String> = (0..40).map(|index| format!("k{index}")).collect();
    let mut mget = vec!["MGET", "missing"];
    mget.extend(keys.iter().map(String::as_str));
    let values: Vec<Option<i64>> = query(&mut redis, &mget);
    assert_eq!(values[0], None);
    for (key, value) in keys.iter().zip(&values[1..]) {
        assert_eq!(*value, Some(model[key]), "MGET {key}");
    }
    let exists: i64 = query(&mut redis, &["EXISTS", "k1", "k2", "missing", "k1"]);
    assert_eq!(exists, 3, "EXISTS counts repeated keys, as Redis does");
    let deleted: i64 = query(&mut redis, &["DEL", "k1", "k2", "missing"]);
    assert_eq!(deleted, 2);
    assert_eq!(query::<Option<i64>>(&mut redis, &["GET", "k1"]), None);
    assert_eq!(query::<i64>(&mut redis, &["EXISTS", "k1", "k2"]), 0);
    assert_eq!(
        query::<i64>(&mut redis, &["INCR", "k1"]),
        1,
        "a deleted key restarts"
    );
}

#[test]
fn pipelines_keep_their_order_across_cores() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    let mut model: HashMap<String, i64> = HashMap::new();
    let mut pipe = redis::pipe();
    let mut expected = Vec::new();
    for index in 0..2_000_i64 {
        let key = format!("p{}", index % 37);
        if index % 5 == 4 {
            pipe.cmd("GET").arg(&key);
        } else {
            pipe.cmd("INCRBY").arg(&key).arg(index);
            *model.entry(key.clone()).or_insert(0) += index;
        }
        // A GET before the key's first INCRBY reads nil.
        expected.push(model.get(&key).copied());
    }
    let replies: Vec<Option<i64>> = pipe.query(&mut redis).expect("pipeline");
    assert_eq!(replies, expected);
    // An error inside a pipeline: the client reports it, every command still ran.
    let error = redis::pipe()
        .cmd("INCR")
        .arg("mixed")
        .cmd("SET")
        .arg("mixed")
        .arg("not-a-number")
        .cmd("INCR")
        .arg("mixed")
        .query::<Vec<i64>>(&mut redis)
        .expect_err("the SET fails");
    assert!(error.to_string().contains("integers only"), "{error}");
    assert_eq!(query::<i64>(&mut redis, &["GET", "mixed"]), 2);
    // The exact bytes of a pipeline mixing counters, other commands and errors.
    let mut raw = daemon.raw();
    raw.write_all(b"INCR m\r\nPING\r\nSET m x\r\nECHO hi\r\nMGET m p0 none\r\nINCR m\r\nQUIT\r\n")
        .unwrap();
    let p0 = model["p0"];
    let wanted = format!(
        ":1\r\n+PONG\r\n-ERR Tally stores integers only: value is not an integer or out of range\r\n$2\r\nhi\r\n*3\r\n$1\r\n1\r\n${}\r\n{p0}\r\n$-1\r\n:2\r\n+OK\r\n",
        p0.to_string().len()
    );
    assert_eq!(read_to_close(&mut raw), wanted);
}

#[test]
fn errors_read_like_redis_and_keep_the_connection() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    let cases: [(&[&str], &str); 8] = [
        (&["SET", "s", "hello"], "integers only"),
        (&["INCRBY", "s", "abc"], "not an integer"),
        (&["INCRBY", "s", "1.5"], "not an integer"),
        (&["INCR"], "wrong number of arguments"),
        (&["GET", "a", "b"], "wrong number of arguments"),
        (&["EXPIRE", "s", "10"], "expiry"),
        (&["LPUSH", "s", "x"], "unknown command"),
        (&["SET", "s", "1", "EX", "10"], "SET options"),
    ];
    for (args, wanted) in cases {
        let error = query_error(&mut redis, args);
        assert!(error.contains(wanted), "{args:?}: {error}");
    }
    assert_eq!(
        query::<String>(&mut redis, &["SET", "big", &i64::MAX.to_string()]),
        "OK"
    );
    assert!(query_error(&mut redis, &["INCR", "big"]).contains("overflow"));
    assert!(
        query_error(&mut redis, &["DECRBY", "big", &i64::MIN.to_string()]).contains("overflow")
    );
    assert_eq!(
        query::<i64>(&mut redis, &["GET", "big"]),
        i64::MAX,
        "nothing changed"
    );
    assert_eq!(query::<String>(&mut redis, &["PING"]), "PONG");
}

#[test]
fn transactions_apply_each_command_once_in_order() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    // An atomic pipeline is MULTI ... EXEC, as redis-py's default pipeline().
    let (first, second): (i64, i64) = redis::pipe()
        .atomic()
        .incr("tx", 1)
        .incr("tx", 1)
        .query(&mut redis)
        .expect("EXEC answers the replies");
    assert_eq!((first, second), (1, 2));
    // Keys on every core, and a transaction queued over several round trips.
    let mut pipe = redis::pipe();
    pipe.atomic();
    for index in 0..50_i64 {
        pipe.incr(format!("tx{index}"), index);
    }
    let values: Vec<i64> = pipe.query(&mut redis).expect("EXEC");
    assert_eq!(values, (0..50).collect::<Vec<i64>>());
    assert_eq!(query::<String>(&mut redis, &["MULTI"]), "OK");
    assert_eq!(query::<String>(&mut redis, &["INCR", "tx"]), "QUEUED");
    assert_eq!(query::<String>(&mut redis, &["GET", "tx"]), "QUEUED");
    let replies: (i64, i64) = query(&mut redis, &["EXEC"]);
    assert_eq!(replies, (3, 3));
    // DISCARD and an aborted transaction apply nothing.
    let mut raw = daemon.raw();
    raw.write_all(b"MULTI\r\nINCR tx\r\nDISCARD\r\nMULTI\r\nINCR tx\r\nEXPIRE tx 10\r\nEXEC\r\nGET tx\r\nEXEC\r\nQUIT\r\n")
        .unwrap();
    assert_eq!(
        read_to_close(&mut raw),
        "+OK\r\n+QUEUED\r\n+OK\r\n+OK\r\n+QUEUED\r\n-ERR Tally does not support key expiry yet (EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT)\r\n-EXECABORT Transaction discarded because of previous errors.\r\n$1\r\n3\r\n-ERR EXEC without MULTI\r\n+OK\r\n"
    );
}

#[test]
fn ttl_reads_as_for_keys_without_expiry() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    assert_eq!(query::<i64>(&mut redis, &["TTL", "ttl"]), -2);
    assert_eq!(query::<i64>(&mut redis, &["PTTL", "ttl"]), -2);
    assert_eq!(query::<i64>(&mut redis, &["PERSIST", "ttl"]), 0);
    assert_eq!(query::<i64>(&mut redis, &["INCR", "ttl"]), 1);
    assert_eq!(query::<i64>(&mut redis, &["TTL", "ttl"]), -1);
    assert_eq!(query::<i64>(&mut redis, &["PTTL", "ttl"]), -1);
    assert_eq!(query::<i64>(&mut redis, &["PERSIST", "ttl"]), 0);
    assert!(query_error(&mut redis, &["PEXPIRE", "ttl", "100"]).contains("expiry"));
}

#[test]
fn administrative_commands_answer() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    assert_eq!(query::<String>(&mut redis, &["PING", "hello"]), "hello");
    assert_eq!(query::<String>(&mut redis, &["ECHO", "echo me"]), "echo me");
    assert!(query::<i64>(&mut redis, &["COMMAND", "COUNT"]) >= 15);
    let names: Vec<String> = query(&mut redis, &["COMMAND", "LIST"]);
    assert!(names.iter().any(|name| name == "incrby"));
    assert_eq!(query::<String>(&mut redis, &["SELECT", "0"]), "OK");
    assert!(query_error(&mut redis, &["SELECT", "1"]).contains("out of range"));
    let hello: Value = query(&mut redis, &["HELLO", "2"]);
    let Value::Array(fields) = hello else {
        panic!("HELLO 2 is a flat array: {hello:?}");
    };
    assert_eq!(fields[0], Value::BulkString(b"server".to_vec()));
    // RESP3 after HELLO 3: a missing key is the typed null.
    let mut raw = daemon.raw();
    raw.write_all(b"HELLO 3\r\nGET missing\r\nQUIT\r\n")
        .unwrap();
    let received = read_to_close(&mut raw);
    assert!(received.starts_with("%7\r\n"), "{received:?}");
    assert!(received.ends_with("_\r\n+OK\r\n"), "{received:?}");
}

#[test]
fn info_reports_real_figures() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    for index in 0..25 {
        let _: i64 = query(&mut redis, &["INCR", &format!("info{index}")]);
    }
    let text: String = query(&mut redis, &["INFO"]);
    for section in ["# Server", "# Memory", "# Stats", "# Keyspace"] {
        assert!(text.contains(section), "{section} missing: {text}");
    }
    assert!(
        text.contains(&format!("tcp_port:{}", daemon.port())),
        "{text}"
    );
    let field = |text: &str, name: &str| -> u64 {
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing: {text}"));
        line.trim().parse().expect("a number")
    };
    assert!(field(&text, "used_memory:") > 0);
    assert!(field(&text, "total_commands_processed:") >= 26);
    // Each core publishes its figures once a second; the other core's may lag that long.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keyspace: String = query(&mut redis, &["INFO", "keyspace"]);
        assert!(!keyspace.contains("# Server"), "only the asked section");
        if keyspace.contains("db0:keys=25,") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keyspace never showed 25 keys: {keyspace}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn info_counts_every_command_before_it_in_a_pipeline() {
    let daemon = Daemon::start(&[]);
    let mut raw = daemon.raw();
    let mut requests = b"INFO stats\r\n".to_vec();
    requests.extend_from_slice(&b"PING\r\n".repeat(100));
    requests.extend_from_slice(b"INFO stats\r\nQUIT\r\n");
    raw.write_all(&requests).unwrap();
    let received = read_to_close(&mut raw);
    let counts: Vec<u64> = received
        .lines()
        .filter_map(|line| line.strip_prefix("total_commands_processed:"))
        .map(|count| count.trim().parse().expect("a number"))
        .collect();
    assert_eq!(counts.len(), 2, "{received}");
    assert_eq!(counts[1] - counts[0], 101, "the first INFO and 100 PINGs");
}

#[test]
fn bad_input_gets_an_error_and_others_are_still_served() {
    let daemon = Daemon::start(&[]);
    let mut bystander = daemon.client();
    let _: i64 = query(&mut bystander, &["INCR", "steady"]);
    let cases: [(&[u8], &str); 4] = [
        (
            b"*1\r\n$x\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$99999999\r\n",
            "-ERR Protocol error: bulk length 99999999 over Tally's limit of 4194304 bytes per request\r\n",
        ),
        (
            b"*2\r\n+GET\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*abc\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
    ];
    for (garbage, wanted) in cases {
        let mut raw = daemon.raw();
        raw.write_all(garbage).unwrap();
        assert_eq!(read_to_close(&mut raw), wanted, "{garbage:?}");
    }
    // Binary garbage on one line is an unknown inline command: the connection stays.
    let mut raw = daemon.raw();
    raw.write_all(b"\x00\xff\xfe garbage\r\nPING\r\nQUIT\r\n")
        .unwrap();
    let received = read_to_close(&mut raw);
    assert!(received.starts_with("-ERR unknown command"), "{received:?}");
    assert!(received.ends_with("+PONG\r\n+OK\r\n"), "{received:?}");
    // Inline lines are split as Redis splits them, escapes and all (what redis-server
    // 7.0.15 answers to the same bytes); an unbalanced quote is a protocol error.
    let mut raw = daemon.raw();
    raw.write_all(b"SET \"esc\\x41\" 7\r\nECHO \"a\\x41\\n\\q\"\r\nECHO 'it\\'s'\r\n")
        .unwrap();
    raw.write_all(b"ECHO a\"b c\"\r\nINCRBY escA 1\r\nECHO \"ab\"c\r\n")
        .unwrap();
    assert_eq!(
        read_to_close(&mut raw),
        "+OK\r\n$4\r\naA\nq\r\n$4\r\nit's\r\n$4\r\nab c\r\n:8\r\n\
         -ERR Protocol error: unbalanced quotes in request\r\n"
    );
    // A line longer than the inline limit without a newline is refused.
    let mut raw = daemon.raw();
    let _ = raw.write_all(&vec![b'a'; 70 * 1024]);
    assert!(read_to_close(&mut raw).starts_with("-ERR Protocol error: too big inline request"));
    assert_eq!(query::<i64>(&mut bystander, &["INCR", "steady"]), 2);
}

#[test]
fn requests_over_the_argument_limits_are_refused_and_the_connection_stays() {
    let daemon = Daemon::start(&[]);
    let mut redis = daemon.client();
    let keys: Vec<String> = (0..20_000).map(|index| format!("many{index}")).collect();
    let mut del = vec!["DEL"];
    del.extend(keys.iter().map(String::as_str));
    let error = query_error(&mut redis, &del);
    assert!(
        error.contains("request has 20001 arguments, over Tally's limit of 10002"),
        "{error}"
    );
    let long = "x".repeat(70_000);
    let error = query_error(&mut redis, &["ECHO", &long]);
    assert!(
        error.contains("argument of 70000 bytes, over Tally's limit of 65536 bytes"),
        "{error}"
    );
    assert_eq!(query::<String>(&mut redis, &["PING"]), "PONG");
}

#[test]
fn connection_limit_and_read_timeout_apply() {
    let daemon = Daemon::start(&["--max-connections", "2", "--read-timeout-ms", "300"]);
    let mut first = daemon.client();
    assert_eq!(query::<String>(&mut first, &["PING"]), "PONG");
    let mut second = daemon.raw();
    second.write_all(b"PING\r\n").unwrap();
    let mut pong = [0_u8; 7];
    second.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let mut third = daemon.raw();
    assert_eq!(
        read_to_close(&mut third),
        "-ERR max number of clients reached\r\n"
    );
    // Idle connections stay open past the read timeout, as Redis's `timeout 0`...
    std::thread::sleep(Duration::from_millis(900));
    second.write_all(b"PING\r\n").unwrap();
    second.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    assert_eq!(query::<String>(&mut first, &["PING"]), "PONG");
    // ...but a command must be complete within the read timeout of its first byte.
    second.write_all(b"*1\r\n$4\r\nPI").unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut second), "");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_idle_timeout_closes_idle_connections_when_set() {
    let daemon = Daemon::start(&["--resp-idle-timeout-ms", "300"]);
    let mut raw = daemon.raw();
    raw.write_all(b"PING\r\n").unwrap();
    let mut pong = [0_u8; 7];
    raw.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let started = Instant::now();
    assert_eq!(
        read_to_close(&mut raw),
        "",
        "closed silently, as Redis does"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
}

fn run_tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("running {program} (install the Debian package redis-tools): {error}")
        });
    assert!(output.status.success(), "{program} {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8 output")
}

#[test]
fn redis_cli_runs_commands() {
    let daemon = Daemon::start(&[]);
    let port = daemon.port();
    let cli = |args: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str()];
        all.extend_from_slice(args);
        run_tool("redis-cli", &all)
    };
    assert_eq!(cli(&["PING"]), "PONG\n");
    assert_eq!(cli(&["INCR", "cli"]), "1\n");
    assert_eq!(cli(&["INCRBY", "cli", "41"]), "42\n");
    assert_eq!(cli(&["GET", "cli"]), "42\n");
    assert_eq!(cli(&["MGET", "cli", "nothing"]), "42\n\n");
    assert_eq!(
        cli(&["SET", "cli", "word"]).trim_end(),
        "ERR Tally stores integers only: value is not an integer or out of range"
    );
    assert!(cli(&["INFO", "server"]).contains("redis_version:"));
}

#[test]
fn redis_cli_help_comes_from_command_docs() {
    let daemon = Daemon::start(&[]);
    let port = daemon.port();
    // redis-cli builds its help table from COMMAND DOCS alone; an empty answer leaves
    // `help` printing nothing.
    let help = |topic: &[&str]| {
        let mut all = vec!["-h", "127.0.0.1", "-p", port.as_str(), "help"];
        all.extend_from_slice(topic);
        run_tool("redis-cli", &all)
    };
    let incr = help(&["incr"]);
    assert!(incr.contains("INCR"), "{incr}");
    assert!(
        incr.contains("Increment the integer value of a key by one"),
        "{incr}"
    );
    let string_group = help(&["@string"]);
    for name in ["INCRBY", "DECRBY", "MGET"] {
        assert!(string_group.contains(name), "{name}: {string_group}");
    }
    let setname = help(&["client", "setname"]);
    assert!(setname.contains("connection-name"), "{setname}");
}

#[test]
fn redis_benchmark_completes_with_exact_counts() {
    let daemon = Daemon::start(&[]);
    let port = daemon.port();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "incr",
        "-n",
        "20000",
        "-P",
        "16",
        "-q",
    ];
    let output = run_tool("redis-benchmark", &args);
    assert!(output.contains("INCR"), "{output}");
    assert!(!output.to_lowercase().contains("error"), "{output}");
    // Without -r, redis-benchmark increments the one key `counter:__rand_int__`.
    let mut redis = daemon.client();
    let total: i64 = query(&mut redis, &["GET", "counter:__rand_int__"]);
    assert_eq!(total, 20_000);
}
