//! Crash test with real processes and a real `kill -9`: the child
//! (`src/bin/tally-crash-child.rs`) increments counters through store + journal and
//! reports what it sent and acknowledged; the parent kills it at random moments,
//! restarts it, and checks that every durably acknowledged increment is present
//! exactly once and that no counter exceeds what was sent.
//!
//! 20 rounds by default; `TALLY_CRASH_ROUNDS=500 cargo test -p tally-engine --test
//! journal_crash` runs a longer mode.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const COUNTERS: usize = 500;

#[derive(Default)]
struct Ledger {
    sent: Vec<u64>,
    durable_acked: Vec<u64>,
    relaxed_acked: Vec<u64>,
}

fn counters_of(line: &str) -> impl Iterator<Item = usize> + '_ {
    line.split_whitespace()
        .skip(1)
        .map(|c| c.parse().expect("counter index"))
}

impl Ledger {
    fn record(&mut self, line: &str) {
        let column = match line.chars().next() {
            Some('S') => &mut self.sent,
            Some('D') => &mut self.durable_acked,
            Some('R') => &mut self.relaxed_acked,
            _ => return, // a line cut by the kill
        };
        // A line cut short by the kill may end in a partial number; the child flushes
        // whole lines, so only the very last line can be cut, and it lacks its newline.
        for counter in counters_of(line) {
            column[counter] += 1;
        }
    }

    /// Checks the values the restarted child recovered.
    fn check(&self, values: &[u64], round: usize) {
        for (counter, &value) in values.iter().enumerate() {
            assert!(
                value >= self.durable_acked[counter],
                "round {round}: counter {counter} = {value} lost durable increments ({} acknowledged)",
                self.durable_acked[counter]
            );
            assert!(
                value <= self.sent[counter],
                "round {round}: counter {counter} = {value} exceeds the {} increments sent",
                self.sent[counter]
            );
        }
    }
}

fn rounds() -> usize {
    std::env::var("TALLY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

#[test]
fn kill_minus_nine_never_loses_or_duplicates_an_acknowledged_increment() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger {
        sent: vec![0; COUNTERS],
        durable_acked: vec![0; COUNTERS],
        relaxed_acked: vec![0; COUNTERS],
    };
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..=rounds() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tally-crash-child"))
            .arg(dir.path())
            .arg(seed.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the crash child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut values = vec![0u64; COUNTERS];
        for line in lines.by_ref() {
            let line = line.expect("child output");
            if line == "READY" {
                break;
            }
            let mut parts = line.split_whitespace().skip(1);
            let counter: usize = parts.next().unwrap().parse().unwrap();
            values[counter] = parts.next().unwrap().parse().unwrap();
        }
        ledger.check(&values, round);
        if round == rounds() {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 180));
        child.kill().expect("kill -9 the child");
        child.wait().unwrap();
        let output = reader.join().unwrap();
        let durable_before: u64 = ledger.durable_acked.iter().sum();
        for line in &output {
            ledger.record(line);
        }
        let acked: u64 = ledger.durable_acked.iter().sum::<u64>() - durable_before;
        eprintln!(
            "round {round}: {} lines, {acked} durable acks",
            output.len()
        );
    }
    let total_durable: u64 = ledger.durable_acked.iter().sum();
    assert!(
        total_durable > 0,
        "the child acknowledged durable increments"
    );
}
