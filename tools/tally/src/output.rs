//! Printing results: plain text for people, one JSON object per line for scripts.
//!
//! Plain text: a single command prints just its value (`5`, `true`, `deleted (was 40)`);
//! in `batch`, each line is `KEY<TAB>VALUE` so results can be matched to input lines.
//! A rejected operation goes to stderr for a single command and stays on stdout (as
//! `KEY<TAB>error: ...`) in batch, keeping one output line per input line.
//!
//! JSON: `{"op","key","ok":true,"value","existed","clamped"}` or
//! `{"op","key","ok":false,"status","detail","error"}`.

use std::io::Write;

use serde_json::json;
use tally_client::{Op, OpResult};

use crate::{write_stdout, CliError};

/// Whether every operation was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    AllApplied,
    SomeRejected,
}

impl Verdict {
    pub(crate) fn and(self, other: Verdict) -> Verdict {
        if self == Verdict::SomeRejected {
            self
        } else {
            other
        }
    }
}

/// Prints in the chosen format.
pub(crate) struct Printer {
    json: bool,
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Add { delta, .. } if *delta < 0 => "decr",
        Op::Add { .. } => "incr",
        Op::Set { .. } => "set",
        Op::Get { .. } => "get",
        Op::Delete { .. } => "del",
        Op::Exists { .. } => "exists",
        Op::SetBounds { .. } => "bounds",
    }
}

impl Printer {
    pub(crate) fn new(json: bool) -> Self {
        Printer { json }
    }

    /// Prints `human` or `json` depending on the format.
    pub(crate) fn line(&mut self, human: &str, json: &serde_json::Value) {
        if self.json {
            write_stdout(&json.to_string());
        } else {
            write_stdout(human);
        }
    }

    /// Prints one operation's result; `with_key` prefixes the key (batch mode).
    pub(crate) fn result(&mut self, op: &Op, result: &OpResult, with_key: bool) -> Verdict {
        let key = String::from_utf8_lossy(op.key());
        match result {
            Ok(outcome) => {
                let human = match op {
                    Op::Delete { .. } if outcome.existed => {
                        format!("deleted (was {})", outcome.value)
                    }
                    Op::Delete { .. } => "not found".to_owned(),
                    Op::Exists { .. } => outcome.existed.to_string(),
                    Op::SetBounds { .. } => format!("bounds set (value {})", outcome.value),
                    _ if outcome.clamped => format!("{} (clamped)", outcome.value),
                    _ => outcome.value.to_string(),
                };
                let human = if with_key {
                    format!("{key}\t{human}")
                } else {
                    human
                };
                let json = json!({"op": op_name(op), "key": key, "ok": true, "value": outcome.value,
                    "existed": outcome.existed, "clamped": outcome.clamped});
                self.line(&human, &json);
                Verdict::AllApplied
            }
            Err(rejection) => {
                let json = json!({"op": op_name(op), "key": key, "ok": false, "status": rejection.status.name(),
                    "detail": rejection.detail, "error": rejection.to_string()});
                if self.json {
                    write_stdout(&json.to_string());
                } else if with_key {
                    write_stdout(&format!("{key}\terror: {rejection}"));
                } else {
                    eprintln!("tally: {key}: {rejection}");
                }
                Verdict::SomeRejected
            }
        }
    }

    /// Prints server statistics, one `name value` per line (or one JSON object).
    pub(crate) fn stats(&mut self, entries: &[(String, u64)]) {
        if self.json {
            let map: serde_json::Map<String, serde_json::Value> = entries
                .iter()
                .map(|(name, value)| (name.clone(), json!(value)))
                .collect();
            write_stdout(&serde_json::Value::Object(map).to_string());
        } else {
            for (name, value) in entries {
                write_stdout(&format!("{name} {value}"));
            }
        }
    }

    /// Reports a failed call on stderr (and as a JSON object on stdout with `--json`).
    pub(crate) fn failure(&mut self, error: &CliError) {
        if self.json {
            write_stdout(&json!({"ok": false, "error": error.to_string()}).to_string());
        }
        eprintln!("tally: {error}");
    }

    pub(crate) fn flush(&mut self) {
        let _ = std::io::stdout().flush();
    }
}
