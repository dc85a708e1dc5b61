//! Tests of the whole codec: commands as clients send them, errors as Redis words them,
//! round trips of every command, and random bytes.

use super::*;
use proptest::prelude::*;

/// Encode arguments as a multibulk request.
fn multibulk(arguments: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    reply::write_array_header(&mut out, arguments.len());
    for argument in arguments {
        reply::write_bulk(&mut out, argument);
    }
    out
}

/// Parse a request that must be complete and framed correctly.
fn command(buf: &[u8]) -> Parsed<'_> {
    let (parsed, consumed) = parse(buf).expect("framing is valid").expect("complete");
    assert_eq!(consumed, buf.len());
    parsed
}

fn error_text(buf: &[u8]) -> String {
    command(buf).expect_err("command error").to_string()
}

#[test]
fn parses_counter_commands_case_insensitively() {
    let buf = multibulk(&[b"iNcRbY", b"pages", b"-12"]);
    assert_eq!(
        command(&buf),
        Ok(Command::IncrBy {
            key: b"pages",
            delta: -12
        })
    );
    assert_eq!(
        command(b"incr likes\r\n"),
        Ok(Command::Incr { key: b"likes" })
    );
    assert_eq!(
        command(b"SET a 9223372036854775807\r\n"),
        Ok(Command::Set {
            key: b"a",
            value: i64::MAX
        })
    );
    assert_eq!(
        command(b"mget a b c\r\n"),
        Ok(Command::MGet {
            keys: vec![b"a", b"b", b"c"]
        })
    );
}

#[test]
fn parses_what_redis_tools_send_on_connect() {
    assert_eq!(
        command(&multibulk(&[b"COMMAND", b"DOCS"])),
        Ok(Command::Command(CommandQuery::Docs { names: vec![] }))
    );
    assert_eq!(
        command(&multibulk(&[b"CONFIG", b"GET", b"save"])),
        Ok(Command::ConfigGet {
            parameters: vec![b"save"]
        })
    );
    assert_eq!(
        command(&multibulk(&[b"HELLO", b"3", b"SETNAME", b"bench"])),
        Ok(Command::Hello {
            protocol_version: Some(ProtocolVersion::Resp3),
            auth: None,
            client_name: Some(b"bench"),
        })
    );
}

#[test]
fn wrong_arity_reads_like_redis() {
    assert_eq!(
        error_text(b"INCR\r\n"),
        "ERR wrong number of arguments for 'incr' command"
    );
    assert_eq!(
        error_text(b"incrby a 1 2\r\n"),
        "ERR wrong number of arguments for 'incrby' command"
    );
    assert_eq!(
        error_text(b"DEL\r\n"),
        "ERR wrong number of arguments for 'del' command"
    );
    assert_eq!(
        error_text(b"CONFIG GET\r\n"),
        "ERR wrong number of arguments for 'config|get' command"
    );
}

#[test]
fn bad_values_read_like_redis() {
    assert_eq!(
        error_text(b"INCRBY a 1.5\r\n"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error_text(b"INCRBY a 9223372036854775808\r\n"),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        error_text(b"SET a hello\r\n"),
        "ERR Tally stores integers only: value is not an integer or out of range"
    );
    assert_eq!(
        error_text(b"HELLO 4\r\n"),
        "NOPROTO unsupported protocol version"
    );
    // Redis 7's words, checked against redis-server 7.0.15.
    assert_eq!(
        error_text(b"HELLO 3 FOO\r\n"),
        "ERR Syntax error in HELLO option 'FOO'"
    );
    assert_eq!(
        error_text(b"HELLO 3 AUTH a\r\n"),
        "ERR Syntax error in HELLO option 'AUTH'"
    );
    let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
    assert_eq!(
        command(&multibulk(&[b"GET", &long_key])),
        Err(RespError::InvalidKeyLength { length: 256 })
    );
    assert_eq!(
        command(&multibulk(&[b"GET", b""])),
        Err(RespError::InvalidKeyLength { length: 0 })
    );
}

#[test]
fn unknown_commands_read_like_redis() {
    assert_eq!(
        error_text(b"HSET h f v\r\n"),
        "ERR unknown command 'HSET', with args beginning with: 'h' 'f' 'v' "
    );
    assert_eq!(
        error_text(&multibulk(&[b"FOO\r\nBAR"])),
        "ERR unknown command 'FOO  BAR', with args beginning with: "
    );
    assert_eq!(
        error_text(b"CLIENT KILL x\r\n"),
        "ERR unknown subcommand 'KILL'. Try CLIENT HELP."
    );
}

#[test]
fn command_errors_keep_the_stream_in_step() {
    let mut buf = b"INCR\r\n".to_vec();
    buf.extend_from_slice(&multibulk(&[b"GET", b"a"]));
    let (first, consumed) = parse(&buf).unwrap().unwrap();
    assert!(first.is_err());
    assert_eq!(command(&buf[consumed..]), Ok(Command::Get { key: b"a" }));
}

#[test]
fn protocol_errors_close_and_command_errors_do_not() {
    let protocol = parse(b"*1\r\n$7000000\r\n").unwrap_err();
    assert_eq!(
        protocol.to_string(),
        "ERR Protocol error: bulk length 7000000 over Tally's limit of 4194304 bytes per request"
    );
    assert!(protocol.closes_connection());
    assert!(!command(b"INCR\r\n").unwrap_err().closes_connection());
}

#[test]
fn skips_empty_requests() {
    let (parsed, consumed) = parse(b"\r\n*0\r\nPING\r\n").unwrap().unwrap();
    assert_eq!(parsed, Ok(Command::Ping { message: None }));
    assert_eq!(consumed, 12);
    assert_eq!(parse(b"\r\n\r\n"), Ok(None));
}

#[test]
fn an_mget_over_the_key_limit_is_a_command_error_naming_the_limit() {
    let keys: Vec<Vec<u8>> = (0..20_000)
        .map(|i| format!("key:{i}").into_bytes())
        .collect();
    let mut arguments: Vec<&[u8]> = vec![b"MGET"];
    arguments.extend(keys.iter().map(Vec::as_slice));
    let mut buf = multibulk(&arguments);
    buf.extend_from_slice(b"PING\r\n");
    let (parsed, consumed) = parse(&buf).unwrap().unwrap();
    let error = parsed.unwrap_err();
    assert!(!error.closes_connection());
    assert_eq!(
        error.to_string(),
        "ERR request has 20001 arguments, over Tally's limit of 10002 (at most 10000 keys per command)"
    );
    assert_eq!(
        command(&buf[consumed..]),
        Ok(Command::Ping { message: None })
    );
}

#[test]
fn accepts_an_mget_of_ten_thousand_keys() {
    let keys: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!("key:{i}").into_bytes())
        .collect();
    let mut arguments: Vec<&[u8]> = vec![b"MGET"];
    arguments.extend(keys.iter().map(Vec::as_slice));
    let buf = multibulk(&arguments);
    let Ok(Command::MGet { keys: parsed }) = command(&buf) else {
        panic!("MGET of 10,000 keys must parse");
    };
    assert_eq!(parsed.len(), 10_000);
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..=KEY_BYTES_MAX)
}

fn keys() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(key(), 1..20)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

/// HELLO's RESP3 flag, credentials and client name.
type HelloOptions = (bool, Option<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>);

/// An owned description of a command, from which every variant can be borrowed.
#[derive(Clone, Debug)]
enum Owned {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    Hello(Option<HelloOptions>),
    Key(u8, Vec<u8>),
    KeyInteger(u8, Vec<u8>, i64),
    Keys(u8, Vec<Vec<u8>>),
    Strings(u8, Vec<Vec<u8>>),
    Select(i64),
    Name(Vec<u8>),
    SetInfo(Vec<u8>, Vec<u8>),
    Bare(u8),
}

fn owned() -> impl Strategy<Value = Owned> {
    let hello_options = (
        any::<bool>(),
        proptest::option::of((bytes(), bytes())),
        proptest::option::of(bytes()),
    );
    prop_oneof![
        proptest::option::of(bytes()).prop_map(Owned::Ping),
        bytes().prop_map(Owned::Echo),
        proptest::option::of(hello_options).prop_map(Owned::Hello),
        (0..7_u8, key()).prop_map(|(kind, key)| Owned::Key(kind, key)),
        (0..7_u8, key(), any::<i64>()).prop_map(|(k, key, v)| Owned::KeyInteger(k, key, v)),
        (0..4_u8, keys()).prop_map(|(kind, keys)| Owned::Keys(kind, keys)),
        (0..4_u8, proptest::collection::vec(bytes(), 0..5))
            .prop_map(|(kind, strings)| Owned::Strings(kind, strings)),
        any::<i64>().prop_map(Owned::Select),
        bytes().prop_map(Owned::Name),
        (bytes(), bytes()).prop_map(|(a, v)| Owned::SetInfo(a, v)),
        (0..12_u8).prop_map(Owned::Bare),
    ]
}

fn borrow(owned: &Owned) -> Command<'_> {
    match owned {
        Owned::Ping(message) => Command::Ping {
            message: message.as_deref(),
        },
        Owned::Echo(message) => Command::Echo { message },
        Owned::Hello(None) => Command::Hello {
            protocol_version: None,
            auth: None,
            client_name: None,
        },
        Owned::Hello(Some((resp3, auth, name))) => Command::Hello {
            protocol_version: Some(if *resp3 {
                ProtocolVersion::Resp3
            } else {
                ProtocolVersion::Resp2
            }),
            auth: auth.as_ref().map(|(user, pass)| (&user[..], &pass[..])),
            client_name: name.as_deref(),
        },
        Owned::Key(kind, key) => match kind {
            0 => Command::Incr { key },
            1 => Command::Decr { key },
            2 => Command::Get { key },
            3 => Command::Ttl { key },
            4 => Command::PTtl { key },
            5 => Command::Persist { key },
            _ => Command::Del { keys: vec![key] },
        },
        Owned::KeyInteger(kind, key, value) => match kind {
            0 => Command::IncrBy { key, delta: *value },
            1 => Command::DecrBy { key, delta: *value },
            2 => Command::Set { key, value: *value },
            3 => Command::Expire {
                key,
                seconds: *value,
            },
            4 => Command::PExpire {
                key,
                milliseconds: *value,
            },
            5 => Command::ExpireAt {
                key,
                unix_seconds: *value,
            },
            _ => Command::PExpireAt {
                key,
                unix_milliseconds: *value,
            },
        },
        Owned::Keys(kind, keys) => {
            let keys = keys.iter().map(Vec::as_slice).collect();
            match kind {
                0 => Command::Del { keys },
                1 => Command::Exists { keys },
                2 => Command::Watch { keys },
                _ => Command::MGet { keys },
            }
        }
        Owned::Strings(kind, strings) => {
            let strings: Vec<&[u8]> = strings.iter().map(Vec::as_slice).collect();
            match kind {
                0 => Command::Info { sections: strings },
                1 => Command::Command(CommandQuery::Docs { names: strings }),
                2 => Command::Command(CommandQuery::Info { names: strings }),
                _ if strings.is_empty() => Command::ConfigGet {
                    parameters: vec![b"save"],
                },
                _ => Command::ConfigGet {
                    parameters: strings,
                },
            }
        }
        Owned::Select(index) => Command::Select { index: *index },
        Owned::Name(name) => Command::ClientSetName { name },
        Owned::SetInfo(attribute, value) => Command::ClientSetInfo { attribute, value },
        Owned::Bare(kind) => match kind {
            0 => Command::Quit,
            1 => Command::ClientGetName,
            2 => Command::ClientId,
            3 => Command::Command(CommandQuery::Table),
            4 => Command::Command(CommandQuery::Count),
            5 => Command::Multi,
            6 => Command::Exec,
            7 => Command::Discard,
            8 => Command::Unwatch,
            9 => Command::Reset,
            10 => Command::Command(CommandQuery::Help),
            _ => Command::Command(CommandQuery::List),
        },
    }
}

proptest! {
    #[test]
    fn every_command_round_trips(owned in owned(), split in any::<prop::sample::Index>()) {
        let command = borrow(&owned);
        let mut buf = Vec::new();
        command.encode(&mut buf);
        let (parsed, consumed) = parse(&buf).unwrap().unwrap();
        prop_assert_eq!(parsed, Ok(command));
        prop_assert_eq!(consumed, buf.len());
        // Any strict prefix is incomplete, never an error.
        let end = split.index(buf.len());
        prop_assert_eq!(parse(&buf[..end]), Ok(None));
    }

    #[test]
    fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some((_, consumed))) = parse(&buf) {
            prop_assert!(consumed > 0 && consumed <= buf.len());
        }
        if let Ok(Some((_, consumed))) = parse_reply(&buf) {
            prop_assert!(consumed > 0 && consumed <= buf.len());
        }
    }

    #[test]
    fn mangled_requests_never_panic(
        owned in owned(),
        position in any::<prop::sample::Index>(),
        byte: u8,
    ) {
        let mut buf = Vec::new();
        borrow(&owned).encode(&mut buf);
        let index = position.index(buf.len());
        buf[index] = byte;
        match parse(&buf) {
            Ok(Some((_, consumed))) => prop_assert!(consumed <= buf.len()),
            Ok(None) => {}
            Err(error) => prop_assert!(error.closes_connection()),
        }
    }

    #[test]
    fn every_error_message_is_one_line(owned in owned(), byte: u8) {
        let mut buf = Vec::new();
        borrow(&owned).encode(&mut buf);
        buf.insert(buf.len() / 2, byte);
        let error = match parse(&buf) {
            Ok(Some((Err(error), _))) | Err(error) => error,
            _ => return Ok(()),
        };
        let text = error.to_string();
        prop_assert!(!text.contains('\r') && !text.contains('\n'), "{}", text);
    }
}
