//! Feeds arbitrary bytes to the request parser as a server reads them (request after
//! request until more bytes are needed or a protocol error), serves each command through
//! the door against a trivial store, and feeds the same bytes to the reply parser.
//! Checks that nothing panics, that no request claims more bytes than given, that only
//! protocol errors end the stream, that every parsed command re-encodes to bytes that
//! parse to the same command, that an inline line needing Redis's full splitting
//! rewrites to one whole request, and that an EXEC's queued commands parse again and never
//! end the connection or start another transaction.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_resp::door::{CounterResult, ServerInfo, Session, Step};
use tally_resp::{parse, parse_reply, rewrite_inline, Parsed, RespError};

/// Serves one command; `false` if it closes the connection.
fn serve(session: &mut Session, parsed: Parsed<'_>, out: &mut Vec<u8>, nested: bool) -> bool {
    match session.begin(parsed, &ServerInfo::default(), out) {
        Step::Replied => true,
        Step::ReplyThenClose => {
            assert!(!nested, "no queued command closes the connection");
            false
        }
        Step::Apply(pending) => {
            let results = vec![CounterResult::Applied { value: 1, existed: true }; pending.ops().len()];
            pending.finish(&results, session.version(), out);
            true
        }
        Step::Exec(transaction) => {
            assert!(!nested, "no queued command is an EXEC");
            for command in transaction.commands() {
                assert!(serve(session, Ok(command), out, true));
            }
            true
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut session = Session::new(1);
    let (mut offset, mut out) = (0, Vec::new());
    loop {
        match parse(&data[offset..]) {
            Ok(Some((parsed, consumed))) => {
                assert!(consumed > 0 && consumed <= data.len() - offset);
                if let Ok(command) = &parsed {
                    let mut wire = Vec::new();
                    command.encode(&mut wire);
                    let (again, again_bytes) = parse(&wire).unwrap().unwrap();
                    assert_eq!(again_bytes, wire.len());
                    assert_eq!(again.as_ref(), Ok(command));
                }
                offset += consumed;
                if !serve(&mut session, parsed, &mut out, false) {
                    break;
                }
            }
            Ok(None) => break,
            Err(RespError::InlineEscapeUnsupported) => {
                // Served as the server serves it: split in full, as multibulk.
                let Ok(Some((request, used))) = rewrite_inline(&data[offset..]) else {
                    break;
                };
                assert!(used > 0 && used <= data.len() - offset);
                let (parsed, consumed) = parse(&request).unwrap().expect("a whole request");
                assert_eq!(consumed, request.len());
                offset += used;
                if !serve(&mut session, parsed, &mut out, false) {
                    break;
                }
            }
            Err(error) => {
                assert!(error.closes_connection());
                break;
            }
        }
    }
    if let Ok(Some((_, consumed))) = parse_reply(data) {
        assert!(consumed <= data.len());
    }
});
