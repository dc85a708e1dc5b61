//! Parsing `tally batch` input: one operation per line.
//!
//! Grammar (whitespace-separated; blank lines and lines starting with `#` are skipped):
//!
//! ```text
//! incr KEY [DELTA]      decr KEY [DELTA]      get KEY      set KEY VALUE
//! del KEY               exists KEY            bounds KEY [--floor N] [--ceiling N]
//! ```
//!
//! Keys cannot contain whitespace here (use the single-operation commands for those).

use std::io::Lines;

use tally_client::{BoundPolicy, Op};

use crate::CliError;

/// Reads up to `max` operations. Returns them with the first parse error, if any (the
/// operations before the bad line are still returned so they can be sent).
pub(crate) fn read_chunk<R: std::io::BufRead>(
    lines: &mut std::iter::Enumerate<Lines<R>>,
    max: usize,
) -> Result<(Vec<Op>, Option<CliError>), CliError> {
    let mut ops = Vec::new();
    while ops.len() < max {
        let Some((index, line)) = lines.next() else {
            break;
        };
        let line = line.map_err(|error| CliError::Input(format!("reading stdin: {error}")))?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(op) => ops.push(op),
            Err(message) => {
                return Ok((
                    ops,
                    Some(CliError::Input(format!(
                        "line {}: {message}: {line:?}",
                        index + 1
                    ))),
                ))
            }
        }
    }
    Ok((ops, None))
}

/// Parses one operation.
pub(crate) fn parse_line(line: &str) -> Result<Op, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (&verb, rest) = words.split_first().ok_or("empty line")?;
    let (&key, arguments) = rest.split_first().ok_or("missing key")?;
    let key = key.as_bytes().to_vec();
    let policy = BoundPolicy::Reject;
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
        ("decr", [delta]) => {
            let delta = number(delta)?
                .checked_neg()
                .ok_or("decr by i64::MIN overflows")?;
            Op::Add { key, delta, policy }
        }
        ("get", []) => Op::Get { key },
        ("set", [value]) => Op::Set {
            key,
            value: number(value)?,
            policy,
        },
        ("del", []) => Op::Delete { key },
        ("exists", []) => Op::Exists { key },
        ("bounds", arguments) => parse_bounds(key, arguments)?,
        ("incr" | "decr" | "get" | "set" | "del" | "exists", _) => {
            return Err("wrong number of arguments".to_owned())
        }
        _ => return Err(format!("unknown operation {verb:?}")),
    };
    Ok(op)
}

fn parse_bounds(key: Vec<u8>, arguments: &[&str]) -> Result<Op, String> {
    let (mut floor, mut ceiling) = (None, None);
    let mut pairs = arguments.chunks(2);
    for pair in &mut pairs {
        match pair {
            ["--floor", value] => floor = Some(number(value)?),
            ["--ceiling", value] => ceiling = Some(number(value)?),
            _ => return Err("bounds takes --floor N and --ceiling N".to_owned()),
        }
    }
    Ok(Op::SetBounds {
        key,
        floor,
        ceiling,
    })
}

fn number(text: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a 64-bit integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_operation() {
        assert_eq!(
            parse_line("incr a"),
            Ok(Op::Add {
                key: b"a".to_vec(),
                delta: 1,
                policy: BoundPolicy::Reject
            })
        );
        assert_eq!(
            parse_line("incr a -5"),
            Ok(Op::Add {
                key: b"a".to_vec(),
                delta: -5,
                policy: BoundPolicy::Reject
            })
        );
        assert_eq!(
            parse_line("decr a 2"),
            Ok(Op::Add {
                key: b"a".to_vec(),
                delta: -2,
                policy: BoundPolicy::Reject
            })
        );
        assert_eq!(parse_line("  get   a "), Ok(Op::Get { key: b"a".to_vec() }));
        assert_eq!(
            parse_line("set a 9"),
            Ok(Op::Set {
                key: b"a".to_vec(),
                value: 9,
                policy: BoundPolicy::Reject
            })
        );
        assert_eq!(parse_line("del a"), Ok(Op::Delete { key: b"a".to_vec() }));
        assert_eq!(
            parse_line("exists a"),
            Ok(Op::Exists { key: b"a".to_vec() })
        );
        let bounds = parse_line("bounds a --ceiling 10 --floor -1");
        assert_eq!(
            bounds,
            Ok(Op::SetBounds {
                key: b"a".to_vec(),
                floor: Some(-1),
                ceiling: Some(10)
            })
        );
        assert_eq!(
            parse_line("bounds a"),
            Ok(Op::SetBounds {
                key: b"a".to_vec(),
                floor: None,
                ceiling: None
            })
        );
    }

    #[test]
    fn refuses_bad_lines_with_a_reason() {
        assert!(parse_line("jump a")
            .unwrap_err()
            .contains("unknown operation"));
        assert!(parse_line("incr").unwrap_err().contains("missing key"));
        assert!(parse_line("incr a x")
            .unwrap_err()
            .contains("not a 64-bit integer"));
        assert!(parse_line("get a b").unwrap_err().contains("wrong number"));
        assert!(parse_line("set a").unwrap_err().contains("wrong number"));
        assert!(parse_line("bounds a --floor").is_err());
        assert!(parse_line("decr a -9223372036854775808").is_err());
    }

    #[test]
    fn chunks_skip_comments_and_stop_at_the_first_bad_line() {
        let input = "# comment\nincr a\n\nget a\nbogus\nget b\n";
        let mut lines = std::io::BufRead::lines(input.as_bytes()).enumerate();
        let (ops, error) = read_chunk(&mut lines, 10).unwrap();
        assert_eq!(ops.len(), 2);
        assert!(error.unwrap().to_string().starts_with("line 5:"));
        let mut lines = std::io::BufRead::lines("incr a\nincr b\nincr c\n".as_bytes()).enumerate();
        assert_eq!(read_chunk(&mut lines, 2).unwrap().0.len(), 2);
        assert_eq!(read_chunk(&mut lines, 2).unwrap().0.len(), 1);
    }
}
