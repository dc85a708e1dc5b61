//! Parsing `tally batch` input: one operation per line.
//!
//! Grammar (whitespace-separated; blank lines are skipped, and a word starting with `#`
//! begins a comment that runs to the end of the line, so `get a   # note` is `get a`):
//!
//! ```text
//! incr KEY [DELTA] [--clamp]      decr KEY [DELTA] [--clamp]      set KEY VALUE [--clamp]
//! get KEY      del KEY      exists KEY      bounds KEY [--floor N] [--ceiling N] | --clear
//! floor KEY    ceiling KEY
//! ```
//!
//! `floor KEY` and `ceiling KEY` read one bound each (one operation, one result line, so
//! output lines still follow input lines one to one); `bounds KEY` in a batch sets bounds.
//!
//! `--clamp` applies as much of an addition or a set as the counter's bounds allow instead
//! of refusing it. Keys cannot contain whitespace or start with `#` here (use the
//! single-operation commands for those), and are 1 to [`KEY_BYTES_MAX`] bytes.
//!
//! The whole input is parsed before anything is sent: one bad line means nothing is
//! applied, and every bad line is reported.

use tally_client::{Bound, BoundPolicy, Op};
use tally_protocol::KEY_BYTES_MAX;

/// Most bad lines kept for the report; past this, the count alone is given, so a wrong
/// file piped in does not flood the terminal.
pub(crate) const BAD_LINES_REPORTED_MAX: usize = 100;

/// One operation as the user wrote it: the verb is kept so results report the operation
/// asked for (`decr`, even when written as `incr k -1`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) verb: &'static str,
    pub(crate) op: Op,
}

/// The operations of a whole input, or the reasons it cannot be run.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) requests: Vec<Request>,
    /// In line order, at most [`BAD_LINES_REPORTED_MAX`].
    pub(crate) bad_lines: Vec<BadLine>,
    pub(crate) bad_line_count: usize,
}

/// A line that is not an operation; shown as `line N: reason: "text"`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadLine {
    /// 1-based.
    pub(crate) number: usize,
    pub(crate) reason: String,
    /// The line without its surrounding whitespace.
    pub(crate) text: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "line {}: {}: {:?}",
            self.number, self.reason, self.text
        )
    }
}

/// Parses every line of `input`; stops only at a read error.
pub(crate) fn read_all<R: std::io::BufRead>(input: R) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    for (index, line) in input.lines().enumerate() {
        let line = line.map_err(|error| format!("reading stdin: {error}"))?;
        let words = words(&line);
        if words.is_empty() {
            continue;
        }
        match parse_words(&words) {
            Ok(request) => parsed.requests.push(request),
            Err(reason) => {
                parsed.bad_line_count += 1;
                if parsed.bad_lines.len() < BAD_LINES_REPORTED_MAX {
                    parsed.bad_lines.push(BadLine {
                        number: index + 1,
                        reason,
                        text: line.trim().to_owned(),
                    });
                }
            }
        }
    }
    debug_assert!(parsed.bad_lines.len() <= parsed.bad_line_count);
    Ok(parsed)
}

/// The words of a line, up to a comment.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .take_while(|word| !word.starts_with('#'))
        .collect()
}

/// Parses one line (comments allowed).
#[cfg(test)]
pub(crate) fn parse_line(line: &str) -> Result<Request, String> {
    parse_words(&words(line))
}

/// Parses one operation from its words (no comment, at least one word).
fn parse_words(words: &[&str]) -> Result<Request, String> {
    let (&verb_word, rest) = words.split_first().ok_or("empty line")?;
    let verb = verb_name(verb_word).ok_or_else(|| format!("unknown operation {verb_word:?}"))?;
    let (&key, arguments) = rest.split_first().ok_or("missing key")?;
    let key = checked_key(key.as_bytes())?;
    let op = match verb {
        "bounds" => parse_bounds(key, arguments)?,
        _ => {
            let (policy, arguments) = clamp_flag(verb, arguments)?;
            counter_op(verb, key, arguments, policy)?
        }
    };
    Ok(Request { verb, op })
}

/// The operation a verb names, as a static string.
fn verb_name(word: &str) -> Option<&'static str> {
    [
        "incr", "decr", "get", "set", "del", "exists", "bounds", "floor", "ceiling",
    ]
    .into_iter()
    .find(|verb| *verb == word)
}

/// Splits a trailing `--clamp` off the arguments of `incr`, `decr` and `set`.
fn clamp_flag<'w>(
    verb: &str,
    arguments: &'w [&'w str],
) -> Result<(BoundPolicy, &'w [&'w str]), String> {
    if let Some(unknown) = arguments
        .iter()
        .find(|word| word.starts_with("--") && **word != "--clamp")
    {
        return Err(format!(
            "unknown option {unknown} (the only one is --clamp)"
        ));
    }
    match arguments.split_last() {
        Some((&"--clamp", rest)) if matches!(verb, "incr" | "decr" | "set") => {
            Ok((BoundPolicy::Clamp, rest))
        }
        Some((&"--clamp", _)) => Err(format!("{verb} does not take --clamp")),
        _ => Ok((BoundPolicy::Reject, arguments)),
    }
}

fn counter_op(
    verb: &str,
    key: Vec<u8>,
    arguments: &[&str],
    policy: BoundPolicy,
) -> Result<Op, String> {
    let op = match (verb, arguments) {
        ("incr", []) => Op::Add {
            key,
            delta: 1,
            policy,
        },
        ("incr", [delta]) => Op::Add {
            key,
            delta: number(delta)?,
            policy,
        },
        ("decr", []) => Op::Add {
            key,
            delta: -1,
            policy,
        },
        ("decr", [delta]) => Op::Add {
            key,
            delta: negated(number(delta)?)?,
            policy,
        },
        ("get", []) => Op::Get { key },
        ("set", [value]) => Op::Set {
            key,
            value: number(value)?,
            policy,
        },
        ("del", []) => Op::Delete { key },
        ("exists", []) => Op::Exists { key },
        ("floor", []) => Op::GetBound {
            key,
            bound: Bound::Floor,
        },
        ("ceiling", []) => Op::GetBound {
            key,
            bound: Bound::Ceiling,
        },
        _ => return Err("wrong number of arguments".to_owned()),
    };
    Ok(op)
}

/// `bounds KEY [--floor N] [--ceiling N] | --clear`: at least one of them, so a line that
/// names no bound is refused instead of clearing both.
fn parse_bounds(key: Vec<u8>, arguments: &[&str]) -> Result<Op, String> {
    const USAGE: &str = "in a batch, bounds takes --floor N and/or --ceiling N (an omitted \
                         one is cleared), or --clear alone to remove both (to read them, \
                         `floor KEY` and `ceiling KEY`)";
    let (mut floor, mut ceiling, mut clear) = (None, None, false);
    let mut rest = arguments;
    while !rest.is_empty() {
        rest = match rest {
            ["--floor", value, tail @ ..] if floor.is_none() => {
                floor = Some(number(value)?);
                tail
            }
            ["--ceiling", value, tail @ ..] if ceiling.is_none() => {
                ceiling = Some(number(value)?);
                tail
            }
            ["--clear", tail @ ..] if !clear => {
                clear = true;
                tail
            }
            _ => return Err(USAGE.to_owned()),
        };
    }
    let named = floor.is_some() || ceiling.is_some();
    if named == clear {
        return Err(USAGE.to_owned());
    }
    Ok(Op::SetBounds {
        key,
        floor,
        ceiling,
    })
}

/// The key as bytes, if the server would accept it: 1 to [`KEY_BYTES_MAX`] bytes. Checked
/// here so a bad key is bad input (exit 2, nothing sent) whatever its length.
pub(crate) fn checked_key(key: &[u8]) -> Result<Vec<u8>, String> {
    if key.is_empty() {
        return Err("invalid key: a key cannot be empty".to_owned());
    }
    if key.len() > KEY_BYTES_MAX {
        let length = key.len();
        return Err(format!(
            "invalid key: {length} bytes, longer than the {KEY_BYTES_MAX} bytes a key may have"
        ));
    }
    Ok(key.to_vec())
}

/// `-delta` for `decr`, refusing the one value whose negation overflows.
pub(crate) fn negated(delta: i64) -> Result<i64, String> {
    delta
        .checked_neg()
        .ok_or_else(|| format!("decr by {delta} overflows"))
}

fn number(text: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a 64-bit integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(line: &str) -> Result<Op, String> {
        parse_line(line).map(|request| request.op)
    }

    #[test]
    fn parses_every_operation() {
        let add = |delta, policy| Op::Add {
            key: b"a".to_vec(),
            delta,
            policy,
        };
        assert_eq!(op("incr a"), Ok(add(1, BoundPolicy::Reject)));
        assert_eq!(op("incr a -5"), Ok(add(-5, BoundPolicy::Reject)));
        assert_eq!(op("decr a 2"), Ok(add(-2, BoundPolicy::Reject)));
        assert_eq!(op("decr a --clamp"), Ok(add(-1, BoundPolicy::Clamp)));
        assert_eq!(op("incr a 3 --clamp"), Ok(add(3, BoundPolicy::Clamp)));
        assert_eq!(op("  get   a "), Ok(Op::Get { key: b"a".to_vec() }));
        assert_eq!(
            op("set a 9 --clamp"),
            Ok(Op::Set {
                key: b"a".to_vec(),
                value: 9,
                policy: BoundPolicy::Clamp
            })
        );
        assert_eq!(op("del a"), Ok(Op::Delete { key: b"a".to_vec() }));
        assert_eq!(op("exists a"), Ok(Op::Exists { key: b"a".to_vec() }));
        assert_eq!(
            op("bounds a --ceiling 10 --floor -1"),
            Ok(Op::SetBounds {
                key: b"a".to_vec(),
                floor: Some(-1),
                ceiling: Some(10)
            })
        );
        assert_eq!(
            op("floor a"),
            Ok(Op::GetBound {
                key: b"a".to_vec(),
                bound: Bound::Floor
            })
        );
        assert_eq!(
            op("ceiling a"),
            Ok(Op::GetBound {
                key: b"a".to_vec(),
                bound: Bound::Ceiling
            })
        );
        assert_eq!(
            op("bounds a --clear"),
            Ok(Op::SetBounds {
                key: b"a".to_vec(),
                floor: None,
                ceiling: None
            })
        );
    }

    #[test]
    fn keeps_the_verb_the_user_wrote() {
        assert_eq!(parse_line("incr a -1").unwrap().verb, "incr");
        assert_eq!(parse_line("decr a -1").unwrap().verb, "decr");
    }

    #[test]
    fn a_word_starting_with_a_hash_begins_a_comment() {
        assert_eq!(op("get s   # note"), Ok(Op::Get { key: b"s".to_vec() }));
        assert_eq!(
            op("incr s 2 #note"),
            op("incr s 2"),
            "a comment right after the last word"
        );
        assert_eq!(op("incr page#1"), op("incr page#1 1"), "# inside a word");
    }

    #[test]
    fn refuses_bad_lines_with_a_reason() {
        let reason = |line| parse_line(line).unwrap_err();
        assert!(reason("jump a").contains("unknown operation"));
        assert!(reason("foo").contains("unknown operation \"foo\""));
        assert!(reason("incr").contains("missing key"));
        assert!(reason("incr a x").contains("not a 64-bit integer"));
        assert!(reason("get a b").contains("wrong number"));
        assert!(reason("set a").contains("wrong number"));
        assert!(reason("get a --clamp").contains("does not take --clamp"));
        assert!(reason("incr a 3 --clmp").contains("unknown option --clmp"));
        assert!(reason("incr a --clmp").contains("unknown option --clmp"));
        assert!(reason(&format!("get {}", "k".repeat(256))).contains("256 bytes"));
        assert!(op("bounds a --floor").is_err());
        // Naming no bound would clear both: it takes --clear, alone.
        assert!(op("bounds a").is_err());
        assert!(op("bounds a --clear --floor 0").is_err());
        assert!(op("bounds a --floor 0 --floor 1").is_err());
        assert!(parse_line("floor a 1")
            .unwrap_err()
            .contains("wrong number"));
        assert!(parse_line("ceiling a --clamp")
            .unwrap_err()
            .contains("does not take --clamp"));
        assert!(op("decr a -9223372036854775808").is_err());
    }

    #[test]
    fn reports_every_bad_line_and_skips_comments() {
        let input = "# comment\nincr a\n\nget a # why\nbogus\nget b\nset c\n";
        let parsed = read_all(input.as_bytes()).unwrap();
        assert_eq!(parsed.requests.len(), 3);
        assert_eq!(parsed.bad_line_count, 2);
        assert!(parsed.bad_lines[0]
            .to_string()
            .starts_with("line 5: unknown operation"));
        assert_eq!(parsed.bad_lines[1].number, 7);
        assert_eq!(parsed.bad_lines[1].reason, "wrong number of arguments");
        assert_eq!(parsed.bad_lines[1].text, "set c");
    }

    #[test]
    fn caps_the_bad_lines_reported() {
        let input = "bogus\n".repeat(BAD_LINES_REPORTED_MAX + 5);
        let parsed = read_all(input.as_bytes()).unwrap();
        assert_eq!(parsed.bad_lines.len(), BAD_LINES_REPORTED_MAX);
        assert_eq!(parsed.bad_line_count, BAD_LINES_REPORTED_MAX + 5);
    }
}
