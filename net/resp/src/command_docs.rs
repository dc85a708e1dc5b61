//! The door's command documentation, as `COMMAND DOCS` reports it in Redis 7's format:
//! what `redis-cli` reads at start for its `help` command, its hints and tab completion.
//!
//! Each command's entry is a map (a flat array in RESP2):
//!
//! ```text
//! summary      bulk string: one line, Redis's wording, with what Tally does differently
//! since        bulk string: the Redis version that added the command
//! group        bulk string: string, generic, connection, server, transactions
//! complexity   bulk string
//! arguments    array of argument maps (left out when the command takes none):
//!                name   bulk string
//!                type   key, string, integer, unix-time, pure-token, oneof or block
//!                token  bulk string, the literal word before the value (left out if none)
//!                flags  set of simple strings: optional, multiple (left out if none)
//!                arguments  the members of a oneof or block, as above
//! subcommands  map from `parent|sub` to an entry like this one (container commands)
//! ```
//!
//! Names, versions, groups and arguments are Redis 7.0's for the same commands, so that
//! `redis-cli`'s `help incr` and `help @string` read as against Redis. Key arguments carry
//! no `key_spec_index`, since `COMMAND INFO` reports no key specifications.

use crate::reply::{self, ProtocolVersion};

/// One command's documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandDoc {
    pub name: &'static str,
    pub summary: &'static str,
    pub since: &'static str,
    pub group: &'static str,
    pub complexity: &'static str,
    pub arguments: &'static [Argument],
    pub subcommands: &'static [CommandDoc],
}

/// One argument of a command, or a member of a `oneof` or `block` argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argument {
    pub name: &'static str,
    pub kind: &'static str,
    pub token: Option<&'static str>,
    pub optional: bool,
    pub multiple: bool,
    pub members: &'static [Argument],
}

const fn argument(name: &'static str, kind: &'static str) -> Argument {
    Argument {
        name,
        kind,
        token: None,
        optional: false,
        multiple: false,
        members: &[],
    }
}

impl Argument {
    const fn optional(self) -> Argument {
        Argument {
            optional: true,
            ..self
        }
    }

    const fn multiple(self) -> Argument {
        Argument {
            multiple: true,
            ..self
        }
    }

    const fn token(self, token: &'static str) -> Argument {
        Argument {
            token: Some(token),
            ..self
        }
    }

    const fn members(self, members: &'static [Argument]) -> Argument {
        Argument { members, ..self }
    }
}

const fn pure_token(name: &'static str, token: &'static str) -> Argument {
    argument(name, "pure-token").token(token)
}

const fn doc(
    name: &'static str,
    summary: &'static str,
    since: &'static str,
    group: &'static str,
    complexity: &'static str,
    arguments: &'static [Argument],
) -> CommandDoc {
    CommandDoc {
        name,
        summary,
        since,
        group,
        complexity,
        arguments,
        subcommands: &[],
    }
}

const KEY: &[Argument] = &[argument("key", "key")];
const KEYS: &[Argument] = &[argument("key", "key").multiple()];
const EXPIRY_CONDITION: Argument = argument("condition", "oneof").optional().members(&[
    pure_token("nx", "NX"),
    pure_token("xx", "XX"),
    pure_token("gt", "GT"),
    pure_token("lt", "LT"),
]);
const HELLO_ARGUMENTS: &[Argument] = &[argument("arguments", "block").optional().members(&[
    argument("protover", "integer"),
    argument("username_password", "block")
        .token("AUTH")
        .optional()
        .members(&[
            argument("username", "string"),
            argument("password", "string"),
        ]),
    argument("clientname", "string").token("SETNAME").optional(),
])];
const COMMAND_NAMES: &[Argument] = &[argument("command-name", "string").optional().multiple()];
const HELP_COMPLEXITY: &str = "O(1)";

/// `COMMAND`'s subcommands.
const COMMAND_SUBCOMMANDS: &[CommandDoc] = &[
    doc(
        "command|count",
        "Get total number of commands",
        "2.8.13",
        "server",
        "O(1)",
        &[],
    ),
    doc(
        "command|docs",
        "Get array of specific command documentation",
        "7.0.0",
        "server",
        "O(N) where N is the number of commands to look up",
        COMMAND_NAMES,
    ),
    doc(
        "command|info",
        "Get array of specific command details, or all when no argument is given.",
        "2.8.13",
        "server",
        "O(N) where N is the number of commands to look up",
        COMMAND_NAMES,
    ),
    doc(
        "command|list",
        "Get an array of command names (Tally: no FILTERBY)",
        "7.0.0",
        "server",
        "O(N) where N is the total number of commands",
        &[],
    ),
    doc(
        "command|help",
        "Show helpful text about the different subcommands",
        "5.0.0",
        "server",
        HELP_COMPLEXITY,
        &[],
    ),
];

/// `CONFIG`'s one subcommand.
const CONFIG_SUBCOMMANDS: &[CommandDoc] = &[doc(
    "config|get",
    "Get the values of configuration parameters (Tally: save, appendonly, databases)",
    "2.0.0",
    "server",
    "O(N) when N is the number of configuration parameters provided",
    &[argument("parameter", "block")
        .multiple()
        .members(&[argument("parameter", "string")])],
)];

/// `CLIENT`'s subcommands.
const CLIENT_SUBCOMMANDS: &[CommandDoc] = &[
    doc(
        "client|setname",
        "Set the current connection name",
        "2.6.9",
        "connection",
        "O(1)",
        &[argument("connection-name", "string")],
    ),
    doc(
        "client|getname",
        "Get the current connection name",
        "2.6.9",
        "connection",
        "O(1)",
        &[],
    ),
    doc(
        "client|id",
        "Returns the client ID for the current connection",
        "5.0.0",
        "connection",
        "O(1)",
        &[],
    ),
    doc(
        "client|setinfo",
        "Set client or connection specific info (accepted, not kept)",
        "7.2.0",
        "connection",
        "O(1)",
        &[argument("attr", "oneof").members(&[
            argument("libname", "string").token("LIB-NAME"),
            argument("libver", "string").token("LIB-VER"),
        ])],
    ),
];

const fn container(
    name: &'static str,
    summary: &'static str,
    since: &'static str,
    group: &'static str,
    subcommands: &'static [CommandDoc],
) -> CommandDoc {
    CommandDoc {
        subcommands,
        ..doc(name, summary, since, group, "Depends on subcommand.", &[])
    }
}

/// Every command's documentation, in the command table's order.
pub const COMMAND_DOCS: [CommandDoc; 31] = [
    doc("ping", "Ping the server", "1.0.0", "connection", "O(1)", &[argument("message", "string").optional()]),
    doc("echo", "Echo the given string", "1.0.0", "connection", "O(1)", &[argument("message", "string")]),
    doc("hello", "Handshake with the server (Tally: AUTH is accepted and not checked)", "6.0.0", "connection", "O(1)", HELLO_ARGUMENTS),
    doc("incr", "Increment the integer value of a key by one", "1.0.0", "string", "O(1)", KEY),
    doc("incrby", "Increment the integer value of a key by the given amount", "1.0.0", "string", "O(1)", &[argument("key", "key"), argument("increment", "integer")]),
    doc("decr", "Decrement the integer value of a key by one", "1.0.0", "string", "O(1)", KEY),
    doc("decrby", "Decrement the integer value of a key by the given number", "1.0.0", "string", "O(1)", &[argument("key", "key"), argument("decrement", "integer")]),
    doc("get", "Get the value of a key", "1.0.0", "string", "O(1)", KEY),
    doc("set", "Set the value of a key (Tally: an integer, without options)", "1.0.0", "string", "O(1)", &[argument("key", "key"), argument("value", "integer")]),
    doc("del", "Delete keys", "1.0.0", "generic", "O(N) where N is the number of keys that will be removed.", KEYS),
    doc("exists", "Determine if a key exists", "1.0.0", "generic", "O(N) where N is the number of keys to check.", KEYS),
    doc("mget", "Get the values of all the given keys", "1.0.0", "string", "O(N) where N is the number of keys to retrieve.", KEYS),
    container("command", "Get array of command details", "2.8.13", "server", COMMAND_SUBCOMMANDS),
    doc("info", "Get information and statistics about the server", "1.0.0", "server", "O(1)", &[argument("section", "string").optional().multiple()]),
    doc("quit", "Close the connection", "1.0.0", "connection", "O(1)", &[]),
    doc("select", "Change the selected database (Tally: only database 0)", "1.0.0", "connection", "O(1)", &[argument("index", "integer")]),
    container("config", "A container for server configuration commands", "2.0.0", "server", CONFIG_SUBCOMMANDS),
    container("client", "A container for client connection commands", "2.4.0", "connection", CLIENT_SUBCOMMANDS),
    doc("expire", "Set a key's time to live in seconds (refused: Tally has no key expiry yet)", "1.0.0", "generic", "O(1)", &[argument("key", "key"), argument("seconds", "integer"), EXPIRY_CONDITION]),
    doc("pexpire", "Set a key's time to live in milliseconds (refused: Tally has no key expiry yet)", "2.6.0", "generic", "O(1)", &[argument("key", "key"), argument("milliseconds", "integer"), EXPIRY_CONDITION]),
    doc("expireat", "Set the expiration for a key as a UNIX timestamp (refused: Tally has no key expiry yet)", "1.2.0", "generic", "O(1)", &[argument("key", "key"), argument("unix-time-seconds", "unix-time"), EXPIRY_CONDITION]),
    doc("pexpireat", "Set the expiration for a key as a UNIX timestamp in milliseconds (refused: Tally has no key expiry yet)", "2.6.0", "generic", "O(1)", &[argument("key", "key"), argument("unix-time-milliseconds", "unix-time"), EXPIRY_CONDITION]),
    doc("persist", "Remove the expiration from a key (Tally: no key has one, so 0)", "2.2.0", "generic", "O(1)", KEY),
    doc("ttl", "Get the time to live for a key in seconds (Tally: -1, or -2 for a missing key)", "1.0.0", "generic", "O(1)", KEY),
    doc("pttl", "Get the time to live for a key in milliseconds (Tally: -1, or -2 for a missing key)", "2.6.0", "generic", "O(1)", KEY),
    doc("multi", "Mark the start of a transaction block", "1.2.0", "transactions", "O(1)", &[]),
    doc("exec", "Execute all commands issued after MULTI", "1.2.0", "transactions", "Depends on commands in the transaction", &[]),
    doc("discard", "Discard all commands issued after MULTI", "2.0.0", "transactions", "O(N), when N is the number of queued commands", &[]),
    doc("watch", "Watch the given keys to determine execution of the MULTI/EXEC block (refused: Tally has no optimistic locking)", "2.2.0", "transactions", "O(1) for every key.", KEYS),
    doc("unwatch", "Forget about all watched keys (Tally: none ever are)", "2.2.0", "transactions", "O(1)", &[]),
    doc("reset", "Reset the connection", "6.2.0", "connection", "O(1)", &[]),
];

/// The documentation of `name` (any case), if the door serves it.
pub fn find_doc(name: &[u8]) -> Option<&'static CommandDoc> {
    COMMAND_DOCS
        .iter()
        .find(|doc| doc.name.as_bytes().eq_ignore_ascii_case(name))
}

/// Appends `doc`'s map (without its name).
pub fn write_doc(out: &mut Vec<u8>, doc: &CommandDoc, version: ProtocolVersion) {
    const ALWAYS: usize = 4;
    let fields =
        ALWAYS + usize::from(!doc.arguments.is_empty()) + usize::from(!doc.subcommands.is_empty());
    reply::write_map_header(out, fields, version);
    for (field, value) in [
        ("summary", doc.summary),
        ("since", doc.since),
        ("group", doc.group),
        ("complexity", doc.complexity),
    ] {
        reply::write_bulk(out, field.as_bytes());
        reply::write_bulk(out, value.as_bytes());
    }
    if !doc.arguments.is_empty() {
        reply::write_bulk(out, b"arguments");
        write_arguments(out, doc.arguments, version);
    }
    if !doc.subcommands.is_empty() {
        reply::write_bulk(out, b"subcommands");
        reply::write_map_header(out, doc.subcommands.len(), version);
        for subcommand in doc.subcommands {
            reply::write_bulk(out, subcommand.name.as_bytes());
            write_doc(out, subcommand, version);
        }
    }
}

fn write_arguments(out: &mut Vec<u8>, arguments: &[Argument], version: ProtocolVersion) {
    reply::write_array_header(out, arguments.len());
    for argument in arguments {
        let flags: &[&str] = match (argument.optional, argument.multiple) {
            (false, false) => &[],
            (true, false) => &["optional"],
            (false, true) => &["multiple"],
            (true, true) => &["optional", "multiple"],
        };
        let fields = 2
            + usize::from(argument.token.is_some())
            + usize::from(!flags.is_empty())
            + usize::from(!argument.members.is_empty());
        reply::write_map_header(out, fields, version);
        reply::write_bulk(out, b"name");
        reply::write_bulk(out, argument.name.as_bytes());
        reply::write_bulk(out, b"type");
        reply::write_bulk(out, argument.kind.as_bytes());
        if let Some(token) = argument.token {
            reply::write_bulk(out, b"token");
            reply::write_bulk(out, token.as_bytes());
        }
        if !flags.is_empty() {
            reply::write_bulk(out, b"flags");
            reply::write_set_header(out, flags.len(), version);
            for flag in flags {
                reply::write_simple(out, flag);
            }
        }
        if !argument.members.is_empty() {
            reply::write_bulk(out, b"arguments");
            write_arguments(out, argument.members, version);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command_table::COMMAND_TABLE;

    #[test]
    fn every_command_in_the_table_has_docs_in_the_same_order() {
        assert_eq!(COMMAND_DOCS.len(), COMMAND_TABLE.len());
        for (doc, spec) in COMMAND_DOCS.iter().zip(&COMMAND_TABLE) {
            assert_eq!(doc.name, spec.name);
            assert!(!doc.summary.is_empty() && !doc.since.is_empty());
            for subcommand in doc.subcommands {
                let prefix = format!("{}|", doc.name);
                assert!(subcommand.name.starts_with(&prefix), "{}", subcommand.name);
            }
        }
    }

    #[test]
    fn docs_read_like_redis_7() {
        let mut out = Vec::new();
        write_doc(&mut out, find_doc(b"PING").unwrap(), ProtocolVersion::Resp2);
        // Redis 7.0.15's entry for PING, as it sends it.
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "*10\r\n$7\r\nsummary\r\n$15\r\nPing the server\r\n$5\r\nsince\r\n$5\r\n1.0.0\r\n$5\r\ngroup\r\n$10\r\nconnection\r\n$10\r\ncomplexity\r\n$4\r\nO(1)\r\n$9\r\narguments\r\n*1\r\n*6\r\n$4\r\nname\r\n$7\r\nmessage\r\n$4\r\ntype\r\n$6\r\nstring\r\n$5\r\nflags\r\n*1\r\n+optional\r\n"
        );
        out.clear();
        write_doc(&mut out, find_doc(b"ping").unwrap(), ProtocolVersion::Resp3);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("%5\r\n$7\r\nsummary\r\n"), "{text}");
        assert!(text.ends_with("*1\r\n%3\r\n$4\r\nname\r\n$7\r\nmessage\r\n$4\r\ntype\r\n$6\r\nstring\r\n$5\r\nflags\r\n~1\r\n+optional\r\n"), "{text}");
    }
}
