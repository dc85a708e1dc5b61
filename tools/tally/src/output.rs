//! Printing results: plain text for people, one JSON object per line for scripts.
//!
//! Plain text: a single command prints just its value (`5`, `true`, `deleted (was 40)`);
//! in `batch`, each line is `KEY<TAB>VALUE` so results can be matched to input lines.
//! A rejected operation goes to stderr for a single command and stays on stdout (as
//! `KEY<TAB>error: ...`) in batch, keeping one output line per input line.
//!
//! JSON: `{"op","key","ok":true,"outcome":"applied","value","existed","clamped"}` or
//! `{"op","key","ok":false,"outcome","status","detail","error"}`; `op` is the verb the
//! user wrote. A failed call is `{"ok":false,"outcome","error"}`, with `"idempotency_key"`
//! (32 hex digits) when the request carried one. `outcome` is whether the change took
//! effect: `applied`, `not_applied`, or `unknown` (it may have been applied: a call that
//! ended without an answer, or a `Status::Unavailable` result with detail 0).
//!
//! Bounds (`tally bounds KEY`): `floor N, ceiling M`, with `none` for a side without a
//! bound; JSON `{"op":"bounds","key","ok":true,"outcome":"applied","floor","ceiling"}`
//! with `null` for none. If either read is refused, the first refusal is printed as for
//! any operation.
//!
//! Statistics: one row per statistic with a column per core and a `total` column (plain),
//! or one JSON object of the totals with a `per_core` array of every core's own object
//! (`{"cores":2, ..., "per_core":[{"core":0, ...}, ...]}`). The total adds the cores
//! up, except for what is not a per-core amount: `core` and `journal_durable_lsn` (each
//! core's own position) have no total, and `cores`, `partitions` and `connections_open`
//! (server-wide, the same on every core) are not added up; the plain table shows
//! `connections_open` in the total column only, so it does not read as per core.

use std::io::Write;

use serde_json::json;
use tally_client::{Bounds, Op, OpResult, Rejection};

use crate::batch_input::Request;
use crate::{write_stdout, CliError};

/// Statistics that are one core's own position: no total.
const STATS_PER_CORE_ONLY: [&str; 3] = ["core", "journal_durable_lsn", "seconds_since_checkpoint"];
/// Statistics that are server-wide, the same on every core: the total is the value.
const STATS_SERVER_WIDE: [&str; 5] = [
    "version",
    "uptime_s",
    "cores",
    "partitions",
    "connections_open",
];
/// Server-wide statistics the plain table shows only in the total column: repeated in
/// every core's column, `connections_open` read as that many per core.
const STATS_SHOWN_ONCE: [&str; 3] = ["version", "uptime_s", "connections_open"];

/// Whether every operation was applied; the variants are in order of severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    AllApplied,
    /// Some operation was refused (not applied).
    SomeRejected,
    /// Some operation was refused for now, before it was applied (`Unavailable`,
    /// detail 1: the server's journal cannot take mutations): sending it again later is
    /// safe, under the same idempotency key.
    SomeNotApplied,
    /// Some operation may or may not have been applied (`Unavailable`, detail 0).
    SomeUnknown,
}

impl Verdict {
    /// The verdict of two parts: the more severe.
    pub(crate) fn and(self, other: Verdict) -> Verdict {
        self.max(other)
    }
}

/// Prints in the chosen format.
pub(crate) struct Printer {
    json: bool,
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
    pub(crate) fn result(
        &mut self,
        request: &Request,
        result: &OpResult,
        with_key: bool,
    ) -> Verdict {
        let (verb, op) = (request.verb, &request.op);
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
                    Op::GetBound { .. } => shown_bound(outcome.existed.then_some(outcome.value)),
                    _ if outcome.clamped => format!("{} (clamped)", outcome.value),
                    _ => outcome.value.to_string(),
                };
                let human = if with_key {
                    format!("{key}\t{human}")
                } else {
                    human
                };
                // A bound that is not set has no value: null, as in `tally bounds KEY`.
                let value = match op {
                    Op::GetBound { .. } if !outcome.existed => None,
                    _ => Some(outcome.value),
                };
                let json = json!({"op": verb, "key": key, "ok": true, "outcome": "applied",
                    "value": value, "existed": outcome.existed,
                    "clamped": outcome.clamped});
                self.line(&human, &json);
                Verdict::AllApplied
            }
            Err(rejection) => self.rejection(verb, &key, rejection, with_key),
        }
    }

    /// Prints a refused operation; its verdict.
    fn rejection(
        &mut self,
        verb: &str,
        key: &str,
        rejection: &Rejection,
        with_key: bool,
    ) -> Verdict {
        let (outcome, verdict) = if rejection.is_outcome_unknown() {
            ("unknown", Verdict::SomeUnknown)
        } else if rejection.is_not_applied() {
            ("not_applied", Verdict::SomeNotApplied)
        } else {
            ("not_applied", Verdict::SomeRejected)
        };
        let json = json!({"op": verb, "key": key, "ok": false, "outcome": outcome,
            "status": rejection.status.name(), "detail": rejection.detail,
            "error": rejection.to_string()});
        if self.json {
            write_stdout(&json.to_string());
        } else if with_key {
            write_stdout(&format!("{key}\terror: {rejection}"));
        } else {
            eprintln!("tally: {key}: {rejection}");
        }
        verdict
    }

    /// Prints the bounds of `key` read by `tally bounds KEY` (the client's
    /// `get_bounds`), or the refusal of the read.
    pub(crate) fn bounds(&mut self, key: &[u8], read: Result<Bounds, Rejection>) -> Verdict {
        let key = String::from_utf8_lossy(key);
        let Bounds { floor, ceiling } = match read {
            Ok(bounds) => bounds,
            Err(rejection) => return self.rejection("bounds", &key, &rejection, false),
        };
        let human = format!(
            "floor {}, ceiling {}",
            shown_bound(floor),
            shown_bound(ceiling)
        );
        let json = json!({"op": "bounds", "key": key, "ok": true, "outcome": "applied",
            "floor": floor, "ceiling": ceiling});
        self.line(&human, &json);
        Verdict::AllApplied
    }

    /// Prints every core's statistics (in core order) and their totals.
    pub(crate) fn stats(&mut self, cores: &[Vec<(String, u64)>]) {
        let total = stats_total(cores);
        if self.json {
            let object = |entries: &[(String, u64)]| {
                let map: serde_json::Map<String, serde_json::Value> = entries
                    .iter()
                    .map(|(name, value)| (name.clone(), json!(value)))
                    .collect();
                serde_json::Value::Object(map)
            };
            let per_core: Vec<serde_json::Value> = cores.iter().map(|core| object(core)).collect();
            let mut all = object(&total);
            all["per_core"] = serde_json::Value::Array(per_core);
            write_stdout(&all.to_string());
        } else {
            write_stdout(&stats_table(cores, &total));
        }
        for (core, entries) in cores.iter().enumerate() {
            let set = |stat: &str| {
                entries
                    .iter()
                    .any(|(name, value)| name == stat && *value != 0)
            };
            if set("journal_failed") {
                eprintln!("tally: warning: core {core}'s journal has failed: it refuses writes");
            } else if set("journal_degraded") {
                eprintln!(
                    "tally: warning: core {core}'s journal is degraded (disk full?): it \
                     refuses writes until a retry succeeds"
                );
            }
        }
    }

    /// Reports a failed call on stderr (and as a JSON object on stdout with `--json`).
    pub(crate) fn failure(&mut self, error: &CliError) {
        if let CliError::BadLines(parsed) = error {
            for line in &parsed.bad_lines {
                if self.json {
                    let json = json!({"ok": false, "outcome": "not_applied",
                        "line": line.number, "error": line.to_string()});
                    write_stdout(&json.to_string());
                }
                eprintln!("tally: {line}");
            }
            let unreported = parsed.bad_line_count - parsed.bad_lines.len();
            if unreported > 0 {
                eprintln!("tally: ... and {unreported} more bad line(s)");
            }
        }
        if self.json {
            let outcome = if error.is_outcome_unknown() {
                "unknown"
            } else {
                "not_applied"
            };
            let mut json = json!({"ok": false, "outcome": outcome, "error": error.to_string()});
            if let Some(key) = error.idempotency_key() {
                json["idempotency_key"] = json!(format!("{key:032x}"));
            }
            write_stdout(&json.to_string());
        }
        eprintln!("tally: {error}");
        if let Some(advice) = error.advice() {
            eprintln!("tally: {advice}");
        }
    }

    pub(crate) fn flush(&mut self) {
        let _ = std::io::stdout().flush();
    }
}

/// A bound as printed: its value, or `none` where there is none.
fn shown_bound(bound: Option<i64>) -> String {
    bound.map_or_else(|| "none".to_owned(), |bound| bound.to_string())
}

/// The totals row: names in the first core's order (every core sends the same names).
fn stats_total(cores: &[Vec<(String, u64)>]) -> Vec<(String, u64)> {
    let Some(first) = cores.first() else {
        return Vec::new();
    };
    first
        .iter()
        .filter(|(name, _)| !STATS_PER_CORE_ONLY.contains(&name.as_str()))
        .map(|(name, value)| {
            let total = if STATS_SERVER_WIDE.contains(&name.as_str()) {
                *value
            } else {
                cores
                    .iter()
                    .filter_map(|core| stat(core, name))
                    .fold(0_u64, u64::saturating_add)
            };
            (name.clone(), total)
        })
        .collect()
}

/// The `version` statistic (major x 1,000,000 + minor x 1,000 + patch) as `M.m.p`.
fn version_text(version: u64) -> String {
    format!(
        "{}.{}.{}",
        version / 1_000_000,
        version / 1_000 % 1_000,
        version % 1_000
    )
}

fn stat(entries: &[(String, u64)], name: &str) -> Option<u64> {
    entries
        .iter()
        .find(|(entry, _)| entry == name)
        .map(|(_, value)| *value)
}

/// `NAME core_0 core_1 ... total`, aligned, one row per statistic; `-` for no total.
fn stats_table(cores: &[Vec<(String, u64)>], total: &[(String, u64)]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["stat".to_owned()];
    header.extend((0..cores.len()).map(|core| format!("core_{core}")));
    header.push("total".to_owned());
    rows.push(header);
    for (name, _) in cores.first().map(Vec::as_slice).unwrap_or_default() {
        let mut row = vec![name.clone()];
        let once = STATS_SHOWN_ONCE.contains(&name.as_str());
        row.extend(cores.iter().map(|core| match stat(core, name) {
            Some(_) if once => String::new(),
            Some(value) => value.to_string(),
            None => "-".to_owned(),
        }));
        row.push(
            stat(total, name).map_or("-".to_owned(), |value| match name.as_str() {
                "version" => version_text(value),
                _ => value.to_string(),
            }),
        );
        rows.push(row);
    }
    let column_count = rows[0].len();
    let widths: Vec<usize> = (0..column_count)
        .map(|column| rows.iter().map(|row| row[column].len()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(column, (cell, width))| match column {
                    0 => format!("{cell:<width$}"),
                    _ => format!("{cell:>width$}"),
                })
                .collect();
            cells.join("  ")
        })
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_statistic_reads_as_major_minor_patch() {
        assert_eq!(version_text(1_000), "0.1.0");
        assert_eq!(version_text(2_003_004), "2.3.4");
    }

    fn core(index: u64, records: u64, failed: u64) -> Vec<(String, u64)> {
        [
            ("core", index),
            ("cores", 2),
            ("journal_records", records),
            ("journal_durable_lsn", records),
            ("journal_failed", failed),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
    }

    #[test]
    fn a_failed_journal_on_one_core_shows_in_its_column_and_the_total() {
        let cores = [core(0, 5, 0), core(1, 7, 1)];
        let total = stats_total(&cores);
        assert_eq!(stat(&total, "journal_records"), Some(12));
        assert_eq!(stat(&total, "journal_failed"), Some(1));
        assert_eq!(stat(&total, "cores"), Some(2), "server-wide: not added up");
        assert_eq!(stat(&total, "core"), None);
        assert_eq!(stat(&total, "journal_durable_lsn"), None);
        let table = stats_table(&cores, &total);
        let row = table
            .lines()
            .find(|line| line.starts_with("journal_failed"))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["journal_failed", "0", "1", "1"]
        );
    }

    #[test]
    fn open_connections_are_shown_once_not_per_core() {
        let mut cores = [core(0, 5, 0), core(1, 7, 0)];
        for core in &mut cores {
            core.push(("connections_open".to_owned(), 2));
        }
        let table = stats_table(&cores, &stats_total(&cores));
        let row = table
            .lines()
            .find(|line| line.starts_with("connections_open"))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["connections_open", "2"]
        );
        let row = table
            .lines()
            .find(|line| line.starts_with("cores"))
            .unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["cores", "2", "2", "2"]
        );
    }
}
