//! The door's command table, as `COMMAND`, `COMMAND INFO`, `COMMAND COUNT`, `COMMAND LIST`
//! and `COMMAND DOCS` report it, in Redis 7's format.
//!
//! Each `COMMAND INFO` entry is an array of ten fields (Redis 7.0):
//!
//! ```text
//!  1 name          bulk string, lower case
//!  2 arity         integer: exact argument count counting the name, or -N for "at least N"
//!  3 flags         set of simple strings (an array in RESP2): write, readonly, fast, ...
//!  4 first key     integer: the index of the first key argument, 0 for none
//!  5 last key      integer: the last key's index, -1 for "the last argument"
//!  6 step          integer: between two keys
//!  7 ACL categories, 8 tips, 9 key specifications, 10 subcommands:
//!                  empty sets (arrays in RESP2): Tally has no ACLs, no cluster tips,
//!                  and serves the subcommands it knows under their parent's entry
//! ```
//!
//! Names, arities, flags and key positions are Redis 7.0's for the same commands, so a
//! client library that reads the table (to find keys, or to check arity) sees what it
//! would on Redis. `COMMAND DOCS` answers each known name asked for (every command when
//! none is) with its documentation from [`crate::command_docs`]: `redis-cli` asks for all
//! of it at start and builds its `help`, hints and completion from the answer alone (an
//! empty answer leaves it with no help at all).

use crate::command_docs::{self, find_doc, CommandDoc, COMMAND_DOCS};
use crate::reply::{self, ProtocolVersion};

/// One command the door serves, with what `COMMAND INFO` says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);
const WRITE_FAST: &[&str] = &["write", "denyoom", "fast"];
const READ_FAST: &[&str] = &["readonly", "fast"];
const CONNECTION: &[&str] = &[
    "noscript",
    "loading",
    "stale",
    "fast",
    "no_auth",
    "allow_busy",
];
const EXPIRY_WRITE: &[&str] = &["write", "fast"];
const TRANSACTION: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];

/// The commands the door serves, in `COMMAND LIST` order.
pub const COMMAND_TABLE: [CommandSpec; 31] = [
    spec("ping", -1, &["fast"], NO_KEYS),
    spec("echo", 2, &["loading", "stale", "fast"], NO_KEYS),
    spec("hello", -1, CONNECTION, NO_KEYS),
    spec("incr", 2, WRITE_FAST, ONE_KEY),
    spec("incrby", 3, WRITE_FAST, ONE_KEY),
    spec("decr", 2, WRITE_FAST, ONE_KEY),
    spec("decrby", 3, WRITE_FAST, ONE_KEY),
    spec("get", 2, READ_FAST, ONE_KEY),
    spec("set", -3, &["write", "denyoom"], ONE_KEY),
    spec("del", -2, &["write"], ALL_KEYS),
    spec("exists", -2, READ_FAST, ALL_KEYS),
    spec("mget", -2, READ_FAST, ALL_KEYS),
    spec("command", -1, &["loading", "stale"], NO_KEYS),
    spec("info", -1, &["loading", "stale"], NO_KEYS),
    spec("quit", -1, CONNECTION, NO_KEYS),
    spec("select", 2, &["loading", "stale", "fast"], NO_KEYS),
    spec("config", -2, &[], NO_KEYS),
    spec("client", -2, &[], NO_KEYS),
    spec("expire", -3, EXPIRY_WRITE, ONE_KEY),
    spec("pexpire", -3, EXPIRY_WRITE, ONE_KEY),
    spec("expireat", -3, EXPIRY_WRITE, ONE_KEY),
    spec("pexpireat", -3, EXPIRY_WRITE, ONE_KEY),
    spec("persist", 2, EXPIRY_WRITE, ONE_KEY),
    spec("ttl", 2, READ_FAST, ONE_KEY),
    spec("pttl", 2, READ_FAST, ONE_KEY),
    spec("multi", 1, TRANSACTION, NO_KEYS),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        NO_KEYS,
    ),
    spec("discard", 1, TRANSACTION, NO_KEYS),
    spec("watch", -2, TRANSACTION, ALL_KEYS),
    spec("unwatch", 1, TRANSACTION, NO_KEYS),
    spec("reset", 1, CONNECTION, NO_KEYS),
];

/// `COMMAND HELP`, one simple string per line.
pub const COMMAND_HELP: [&str; 13] = [
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all the commands Tally's Redis door serves.",
    "COUNT",
    "    Return the number of commands served.",
    "LIST",
    "    Return the names of the commands served.",
    "INFO [<command-name> ...]",
    "    Return details about the named commands (nil for an unknown name), or all.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about the named commands, or all.",
    "HELP",
    "    Print this help.",
];

/// The entry for `name` (any case), if the door serves it.
pub fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMAND_TABLE
        .iter()
        .find(|spec| spec.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Appends the ten-field `COMMAND INFO` entry of `spec`.
pub fn write_info(out: &mut Vec<u8>, spec: &CommandSpec, version: ProtocolVersion) {
    const FIELD_COUNT: usize = 10;
    reply::write_array_header(out, FIELD_COUNT);
    reply::write_bulk(out, spec.name.as_bytes());
    reply::write_integer(out, spec.arity);
    reply::write_set_header(out, spec.flags.len(), version);
    for flag in spec.flags {
        reply::write_simple(out, flag);
    }
    reply::write_integer(out, spec.first_key);
    reply::write_integer(out, spec.last_key);
    reply::write_integer(out, spec.step);
    // ACL categories, tips, key specifications, subcommands: none.
    for _ in 0..4 {
        reply::write_set_header(out, 0, version);
    }
}

/// `COMMAND` or `COMMAND INFO` with no names: every entry.
pub fn write_table(out: &mut Vec<u8>, version: ProtocolVersion) {
    reply::write_array_header(out, COMMAND_TABLE.len());
    for spec in &COMMAND_TABLE {
        write_info(out, spec, version);
    }
}

/// `COMMAND INFO name ...`: one entry per name, nil for a name the door does not serve.
pub fn write_infos(out: &mut Vec<u8>, names: &[&[u8]], version: ProtocolVersion) {
    if names.is_empty() {
        return write_table(out, version);
    }
    reply::write_array_header(out, names.len());
    for name in names {
        match find(name) {
            Some(spec) => write_info(out, spec, version),
            None => reply::write_null(out, version),
        }
    }
}

/// `COMMAND DOCS [name ...]`: a map from each known name asked for to its documentation
/// (unknown names are left out, as Redis does); with no names, every command's.
pub fn write_docs(out: &mut Vec<u8>, names: &[&[u8]], version: ProtocolVersion) {
    if names.is_empty() {
        reply::write_map_header(out, COMMAND_DOCS.len(), version);
        for doc in &COMMAND_DOCS {
            reply::write_bulk(out, doc.name.as_bytes());
            command_docs::write_doc(out, doc, version);
        }
        return;
    }
    let known: Vec<&CommandDoc> = names.iter().filter_map(|name| find_doc(name)).collect();
    reply::write_map_header(out, known.len(), version);
    for doc in known {
        reply::write_bulk(out, doc.name.as_bytes());
        command_docs::write_doc(out, doc, version);
    }
}

/// `COMMAND HELP`.
pub fn write_help(out: &mut Vec<u8>) {
    reply::write_array_header(out, COMMAND_HELP.len());
    for line in COMMAND_HELP {
        reply::write_simple(out, line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lower_case_and_findable_in_any_case() {
        for (index, spec) in COMMAND_TABLE.iter().enumerate() {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert_eq!(find(spec.name.to_ascii_uppercase().as_bytes()), Some(spec));
            assert!(COMMAND_TABLE[..index]
                .iter()
                .all(|other| other.name != spec.name));
        }
        assert_eq!(find(b"flushall"), None);
    }

    #[test]
    fn info_reads_like_redis_7() {
        let mut out = Vec::new();
        write_infos(&mut out, &[b"GET", b"nosuch"], ProtocolVersion::Resp2);
        assert_eq!(
            out,
            b"*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n$-1\r\n"
        );
        out.clear();
        write_infos(&mut out, &[b"del"], ProtocolVersion::Resp3);
        assert_eq!(
            out,
            b"*1\r\n*10\r\n$3\r\ndel\r\n:-2\r\n~1\r\n+write\r\n:1\r\n:-1\r\n:1\r\n~0\r\n~0\r\n~0\r\n~0\r\n"
        );
    }

    #[test]
    fn docs_have_one_entry_per_known_name() {
        let mut out = Vec::new();
        write_docs(
            &mut out,
            &[b"get", b"nosuch", b"INCR"],
            ProtocolVersion::Resp3,
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with(
                "%2\r\n$3\r\nget\r\n%5\r\n$7\r\nsummary\r\n$22\r\nGet the value of a key\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("$4\r\nincr\r\n%5\r\n"), "{text}");
        out.clear();
        write_docs(&mut out, &[], ProtocolVersion::Resp2);
        let all = format!("*{}\r\n$4\r\nping\r\n*10\r\n", 2 * COMMAND_TABLE.len());
        assert!(out.starts_with(all.as_bytes()));
    }
}
