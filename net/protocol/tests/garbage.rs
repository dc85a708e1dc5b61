//! Hostile input: random bytes and corrupted frames never panic the decoders, and each
//! kind of damage is reported as the right error class (fatal or recoverable).

use proptest::prelude::*;
use tally_protocol::*;

/// Feeds `bytes` through the frame decoder and both message decoders as a receiver
/// would: frame after frame until more bytes are needed or framing fails.
fn decode_everything(bytes: &[u8]) {
    let mut offset = 0;
    loop {
        match decode_frame(&bytes[offset..]) {
            Ok(Some((frame, consumed))) => {
                assert!(consumed >= HEADER_BYTES && consumed <= bytes.len() - offset);
                if let Ok(Request::Batch(batch)) = frame.request() {
                    assert_eq!(batch.ops().count(), batch.op_count());
                }
                if let Ok(Reply::BatchReply(reply)) = frame.reply() {
                    assert_eq!(reply.results().count(), reply.result_count());
                }
                offset += consumed;
            }
            Ok(None) => return,
            Err(error) => {
                assert!(error.is_fatal(), "framing errors are fatal: {error}");
                return;
            }
        }
    }
}

/// A frame header with `length` covering `body`, then `body`.
fn framed(message_type: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut wire = ((12 + body.len()) as u32).to_le_bytes().to_vec();
    wire.extend_from_slice(&[message_type, flags, 0, 0]);
    wire.extend_from_slice(&42u64.to_le_bytes());
    wire.extend_from_slice(body);
    wire
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// Random bodies behind a valid header reach the message decoders, not just framing.
    #[test]
    fn random_bodies_never_panic(message_type in 0u8..=9, flags in 0u8..2, body in prop::collection::vec(any::<u8>(), 0..256)) {
        let message_type = if message_type == 9 { 0xFF } else { message_type };
        decode_everything(&framed(message_type, flags, &body));
    }

    /// Flipping one byte of a valid batch gives a value or a recoverable error, never a panic.
    #[test]
    fn corrupted_batches_never_panic(position in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let ops = [
            Op::Add { key: b"a".to_vec(), delta: 3, policy: BoundPolicy::Clamp },
            Op::SetBounds { key: b"bb".to_vec(), floor: Some(0), ceiling: None },
            Op::Exists { key: b"ccc".to_vec() },
            Op::GetBound { key: b"dd".to_vec(), bound: Bound::Ceiling },
        ];
        let mut wire = Vec::new();
        encode_batch(&mut wire, 1, Durability::Relaxed, Some(77), &ops).unwrap();
        let index = position.index(wire.len());
        wire[index] ^= xor;
        decode_everything(&wire);
    }
}

#[test]
fn oversize_length_is_fatal() {
    let mut wire = (FRAME_BYTES_MAX as u32).to_le_bytes().to_vec();
    wire.extend_from_slice(&[0; 12]);
    let error = decode_frame(&wire).unwrap_err();
    assert!(matches!(error, ProtocolError::FrameTooLarge { .. }));
    assert!(error.is_fatal());
    assert_eq!(error.error_code(), ErrorCode::FrameTooLarge);
    // The largest legal length is accepted (and waits for its bytes).
    let largest = ((FRAME_BYTES_MAX - 4) as u32).to_le_bytes();
    assert_eq!(decode_frame(&largest), Ok(None));
}

#[test]
fn short_length_is_fatal() {
    let error = decode_frame(&11u32.to_le_bytes()).unwrap_err();
    assert_eq!(
        error,
        ProtocolError::FrameTooShort {
            length: 11,
            min: 12
        }
    );
}

#[test]
fn unknown_message_type_is_recoverable_and_next_frame_decodes() {
    let mut wire = framed(0x42, 0, b"whatever");
    encode_ping(&mut wire, 9);
    let first = decode_request(&wire).unwrap().unwrap();
    let error = first.request.unwrap_err();
    assert_eq!(error, ProtocolError::UnknownMessageType(0x42));
    assert!(!error.is_fatal());
    assert_eq!(error.error_code(), ErrorCode::UnknownMessageType);
    assert_eq!(first.request_id, 42);
    let second = decode_request(&wire[first.frame_bytes..]).unwrap().unwrap();
    assert_eq!((second.request_id, second.request), (9, Ok(Request::Ping)));
}

#[test]
fn unknown_opcode_is_recoverable() {
    let mut body = vec![0u8];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&[0x63, 1, b'k']);
    let wire = framed(MessageType::Batch as u8, 0, &body);
    let frame = decode_request(&wire).unwrap().unwrap();
    let error = frame.request.unwrap_err();
    assert_eq!(error, ProtocolError::UnknownOperation(0x63));
    assert_eq!(error.error_code(), ErrorCode::UnknownOperation);
}

/// A `GetBound` naming neither the floor (0) nor the ceiling (1) is refused whole, as a
/// malformed frame the connection survives, like a bad bit in a `SetBounds` mask.
#[test]
fn get_bound_of_unknown_bound_is_refused() {
    for code in [2u8, 0x80, 0xff] {
        let mut body = vec![0u8];
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&[3, 1, b'k']); // a Get first: refused whole all the same
        body.extend_from_slice(&[7, 1, b'k', code]);
        let wire = framed(MessageType::Batch as u8, 0, &body);
        let frame = decode_request(&wire).unwrap().unwrap();
        let error = frame.request.unwrap_err();
        assert_eq!(error, ProtocolError::UnknownBound(code));
        assert!(!error.is_fatal());
        assert_eq!(error.error_code(), ErrorCode::MalformedFrame);
        assert!(error.to_string().contains("0 reads the floor"), "{error}");
    }
    // Without its bound byte the operation is truncated, not misread.
    let mut body = vec![0u8];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&[7, 1, b'k']);
    let wire = framed(MessageType::Batch as u8, 0, &body);
    let frame = decode_request(&wire).unwrap().unwrap();
    assert_eq!(
        frame.request.unwrap_err(),
        ProtocolError::Truncated { what: "bound" }
    );
}

#[test]
fn batch_count_over_limit_is_refused_before_reading_ops() {
    let mut body = vec![0u8];
    body.extend_from_slice(&(BATCH_OPS_MAX as u32 + 1).to_le_bytes());
    let wire = framed(MessageType::Batch as u8, 0, &body);
    let frame = decode_request(&wire).unwrap().unwrap();
    let error = frame.request.unwrap_err();
    assert_eq!(error.error_code(), ErrorCode::BatchTooLarge);
}

#[test]
fn count_larger_than_body_is_truncated_not_panic() {
    let mut body = vec![0u8];
    body.extend_from_slice(&5u32.to_le_bytes());
    body.extend_from_slice(&[3, 1, b'k']); // one Get, four missing
    let wire = framed(MessageType::Batch as u8, 0, &body);
    let frame = decode_request(&wire).unwrap().unwrap();
    assert!(matches!(
        frame.request,
        Err(ProtocolError::Truncated { .. })
    ));
}

#[test]
fn trailing_bytes_and_reserved_and_flags_are_refused() {
    let mut ping = framed(MessageType::Ping as u8, 0, &[0]);
    let frame = decode_request(&ping).unwrap().unwrap();
    assert_eq!(
        frame.request,
        Err(ProtocolError::TrailingBytes { count: 1 })
    );
    ping = framed(MessageType::Ping as u8, 0, &[]);
    ping[6] = 1;
    assert_eq!(
        decode_request(&ping).unwrap().unwrap().request,
        Err(ProtocolError::ReservedNotZero(1))
    );
    let flagged = framed(MessageType::Ping as u8, 1, &[]);
    assert!(matches!(
        decode_request(&flagged).unwrap().unwrap().request,
        Err(ProtocolError::UnknownFlags { .. })
    ));
}

#[test]
fn bad_magic_and_version_are_refused() {
    let frame_of = |body: &[u8]| framed(MessageType::Hello as u8, 0, body);
    let bad_magic = frame_of(b"RDIS\x01\x00\x00");
    let error = decode_request(&bad_magic)
        .unwrap()
        .unwrap()
        .request
        .unwrap_err();
    assert_eq!(error, ProtocolError::BadMagic(*b"RDIS"));
    let bad_version = frame_of(b"TALY\x02\x00\x00");
    let error = decode_request(&bad_version)
        .unwrap()
        .unwrap()
        .request
        .unwrap_err();
    assert_eq!(error, ProtocolError::UnsupportedVersion(2));
    assert_eq!(error.error_code(), ErrorCode::UnsupportedVersion);
}

#[test]
fn requests_are_not_replies() {
    let mut wire = Vec::new();
    encode_ping(&mut wire, 1);
    let (frame, _) = decode_frame(&wire).unwrap().unwrap();
    assert_eq!(
        frame.reply(),
        Err(ProtocolError::UnexpectedMessageType(
            MessageType::Ping as u8
        ))
    );
}

#[test]
fn hostile_hello_reply_counts_do_not_allocate() {
    let mut body = 1u16.to_le_bytes().to_vec();
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&PARTITION_COUNT_MAX.to_le_bytes());
    body.extend_from_slice(&CORE_COUNT_MAX.to_le_bytes());
    let wire = framed(MessageType::HelloReply as u8, 0, &body);
    let frame = decode_reply(&wire).unwrap().unwrap();
    assert_eq!(
        frame.reply,
        Err(ProtocolError::Truncated { what: "shard map" })
    );
}

#[test]
fn owner_outside_core_range_is_refused() {
    let reply = HelloReply {
        version: 1,
        server_id: 0,
        partition_count: 2,
        shard_ports: vec![1],
        owners: vec![0, 1],
    };
    assert!(matches!(
        reply.validate(),
        Err(ProtocolError::InvalidHandshake { .. })
    ));
    let mut out = Vec::new();
    assert!(reply.encode(&mut out, 1).is_err());
}

#[test]
fn a_damaged_add_is_reported_by_the_field_that_is_wrong() {
    // durability 0, one operation: Add (opcode 1) of delta 5 to key "ab", policy 0.
    let mut add = vec![1u8, 2, b'a', b'b'];
    add.extend_from_slice(&5i64.to_le_bytes());
    add.push(0);
    let wire_of = |op: &[u8]| {
        let mut body = vec![0u8];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(op);
        framed(MessageType::Batch as u8, 0, &body)
    };
    let decoded = |op: &[u8]| {
        let wire = wire_of(op);
        let request = decode_request(&wire).unwrap().unwrap().request;
        request.map(|_| ())
    };
    let wire = wire_of(&add);
    let Ok(Request::Batch(whole)) = decode_request(&wire).unwrap().unwrap().request else {
        panic!("a well-formed Add decodes");
    };
    let expected = Op::Add {
        key: &b"ab"[..],
        delta: 5,
        policy: BoundPolicy::Reject,
    };
    assert_eq!(whole.ops().collect::<Vec<_>>(), vec![expected]);
    for cut in 0..add.len() {
        let what = match cut {
            0 => "operation code",
            1 => "key length",
            2..=3 => "key",
            4..=11 => "delta",
            _ => "bound policy",
        };
        assert_eq!(
            decoded(&add[..cut]),
            Err(ProtocolError::Truncated { what }),
            "cut at {cut}"
        );
    }
    let mut bad_policy = add.clone();
    *bad_policy.last_mut().unwrap() = 7;
    assert_eq!(decoded(&bad_policy), Err(ProtocolError::UnknownPolicy(7)));
}
