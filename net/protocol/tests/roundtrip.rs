//! Property tests: every message type survives encode → decode unchanged, at any split of
//! the byte stream, and partial frames ask for more bytes instead of failing.

use proptest::prelude::*;
use tally_protocol::*;

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=KEY_BYTES_MAX)
}

fn policy() -> impl Strategy<Value = BoundPolicy> {
    prop_oneof![Just(BoundPolicy::Reject), Just(BoundPolicy::Clamp)]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::ServerDefault),
        Just(Durability::Durable),
        Just(Durability::Relaxed)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (key(), any::<i64>(), policy()).prop_map(|(key, delta, policy)| Op::Add {
            key,
            delta,
            policy
        }),
        (key(), any::<i64>(), policy()).prop_map(|(key, value, policy)| Op::Set {
            key,
            value,
            policy
        }),
        key().prop_map(|key| Op::Get { key }),
        key().prop_map(|key| Op::Delete { key }),
        key().prop_map(|key| Op::Exists { key }),
        (key(), any::<Option<i64>>(), any::<Option<i64>>()).prop_map(|(key, floor, ceiling)| {
            Op::SetBounds {
                key,
                floor,
                ceiling,
            }
        }),
        (key(), prop_oneof![Just(Bound::Floor), Just(Bound::Ceiling)])
            .prop_map(|(key, bound)| Op::GetBound { key, bound }),
    ]
}

fn op_reply() -> impl Strategy<Value = OpReply> {
    (
        prop::sample::select(Status::ALL.to_vec()),
        any::<i64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(status, value, existed, clamped)| OpReply {
            status,
            value,
            existed,
            clamped,
        })
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    (1usize..=8, 1u32..=300, any::<u64>(), any::<u16>()).prop_flat_map(
        |(cores, partitions, server_id, version_seed)| {
            let _ = version_seed;
            (
                prop::collection::vec(any::<u16>(), cores),
                prop::collection::vec(0..cores as u16, partitions as usize),
            )
                .prop_map(move |(shard_ports, owners)| HelloReply {
                    version: PROTOCOL_VERSION,
                    server_id,
                    partition_count: partitions,
                    shard_ports,
                    owners,
                })
        },
    )
}

/// Decodes exactly one whole frame from `wire`, checking every prefix asks for more.
fn one_frame(wire: &[u8]) -> RawFrame<'_> {
    for cut in [0, 1, 3, 4, 15, wire.len() - 1] {
        if cut < wire.len() {
            assert_eq!(
                decode_frame(&wire[..cut]),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
    }
    let (frame, consumed) = decode_frame(wire)
        .expect("valid frame")
        .expect("whole frame");
    assert_eq!(consumed, wire.len());
    frame
}

proptest! {
    #[test]
    fn batch_round_trips(
        request_id in any::<u64>(),
        durability in durability(),
        idempotency_key in any::<Option<u128>>(),
        ops in prop::collection::vec(op(), 0..64),
    ) {
        let mut wire = vec![0xAA]; // encoders append: existing bytes stay
        encode_batch(&mut wire, request_id, durability, idempotency_key, &ops).unwrap();
        prop_assert_eq!(wire[0], 0xAA);
        let frame = one_frame(&wire[1..]);
        prop_assert_eq!(frame.request_id, request_id);
        let Ok(Request::Batch(batch)) = frame.request() else { panic!("not a batch") };
        prop_assert_eq!(batch.durability, durability);
        prop_assert_eq!(batch.idempotency_key, idempotency_key);
        prop_assert_eq!(batch.op_count(), ops.len());
        let decoded: Vec<Op> = batch.ops().map(|op| op.to_owned_op()).collect();
        prop_assert_eq!(decoded, ops);
    }

    #[test]
    fn batch_reply_round_trips(request_id in any::<u64>(), results in prop::collection::vec(op_reply(), 0..64)) {
        let mut wire = Vec::new();
        encode_batch_reply(&mut wire, request_id, &results).unwrap();
        let frame = one_frame(&wire);
        prop_assert_eq!(frame.request_id, request_id);
        let Ok(Reply::BatchReply(reply)) = frame.reply() else { panic!("not a batch reply") };
        prop_assert_eq!(reply.results().collect::<Vec<_>>(), results);
    }

    #[test]
    fn hello_round_trips(request_id in any::<u64>(), name in "\\PC{0,60}") {
        prop_assume!(name.len() <= 255);
        let mut wire = Vec::new();
        encode_hello(&mut wire, request_id, &name).unwrap();
        let frame = one_frame(&wire);
        prop_assert_eq!(frame.request_id, request_id);
        let expected = Request::Hello(Hello { version: PROTOCOL_VERSION, client_name: &name });
        prop_assert_eq!(frame.request(), Ok(expected));
    }

    #[test]
    fn hello_reply_round_trips(request_id in any::<u64>(), reply in hello_reply()) {
        let mut wire = Vec::new();
        reply.encode(&mut wire, request_id).unwrap();
        let frame = one_frame(&wire);
        prop_assert_eq!(frame.reply(), Ok(Reply::HelloReply(reply)));
    }

    #[test]
    fn control_messages_round_trip(request_id in any::<u64>()) {
        let mut wire = Vec::new();
        encode_ping(&mut wire, request_id);
        prop_assert_eq!(one_frame(&wire).request(), Ok(Request::Ping));
        wire.clear();
        encode_pong(&mut wire, request_id);
        prop_assert_eq!(one_frame(&wire).reply(), Ok(Reply::Pong));
        wire.clear();
        encode_stats(&mut wire, request_id);
        prop_assert_eq!(one_frame(&wire).request(), Ok(Request::Stats));
    }

    #[test]
    fn stats_reply_round_trips(
        request_id in any::<u64>(),
        entries in prop::collection::vec(("[a-z_.]{0,40}", any::<u64>()), 0..32),
    ) {
        let reply = StatsReply { entries };
        let mut wire = Vec::new();
        reply.encode(&mut wire, request_id).unwrap();
        prop_assert_eq!(one_frame(&wire).reply(), Ok(Reply::StatsReply(reply)));
    }

    #[test]
    fn error_round_trips(request_id in any::<u64>(), code in any::<u16>(), message in "\\PC{0,100}") {
        let code = ErrorCode::from_u16(code);
        let mut wire = Vec::new();
        encode_error(&mut wire, request_id, code, &message);
        let frame = one_frame(&wire);
        let expected = Reply::Error(ErrorReply { code, message: &message });
        prop_assert_eq!(frame.reply(), Ok(expected));
        prop_assert_eq!(ErrorCode::from_u16(code.to_u16()), code);
    }

    /// Several frames back to back decode one after another, at any chunking.
    #[test]
    fn pipelined_frames_decode_in_order(ids in prop::collection::vec(any::<u64>(), 1..20)) {
        let mut wire = Vec::new();
        for &id in &ids {
            encode_ping(&mut wire, id);
        }
        let mut offset = 0;
        let mut seen = Vec::new();
        while let Some(frame) = decode_request(&wire[offset..]).unwrap() {
            prop_assert_eq!(&frame.request, &Ok(Request::Ping));
            seen.push(frame.request_id);
            offset += frame.frame_bytes;
        }
        prop_assert_eq!(offset, wire.len());
        prop_assert_eq!(seen, ids);
    }
}

#[test]
fn full_batch_fits_and_one_more_is_refused() {
    let key = vec![b'k'; KEY_BYTES_MAX];
    let ops = vec![
        Op::SetBounds {
            key,
            floor: Some(-1),
            ceiling: Some(1)
        };
        BATCH_OPS_MAX
    ];
    let mut wire = Vec::new();
    encode_batch(&mut wire, 1, Durability::Durable, Some(9), &ops).unwrap();
    assert!(wire.len() <= FRAME_BYTES_MAX);
    let Ok(Request::Batch(batch)) = one_frame(&wire).request() else {
        panic!("not a batch")
    };
    assert_eq!(batch.op_count(), BATCH_OPS_MAX);

    let mut too_many = ops;
    too_many.push(Op::Get { key: b"x".to_vec() });
    let mut out = vec![1, 2, 3];
    let error = encode_batch(&mut out, 1, Durability::Durable, None, &too_many).unwrap_err();
    assert!(matches!(error, ProtocolError::BatchTooLarge { .. }));
    assert_eq!(
        out,
        [1, 2, 3],
        "a failed encode leaves the buffer as it was"
    );
}

#[test]
fn key_over_255_bytes_is_refused_and_leaves_buffer_intact() {
    let mut out = Vec::new();
    let ops = [
        Op::Get {
            key: b"ok".to_vec(),
        },
        Op::Get { key: vec![0; 256] },
    ];
    let error = encode_batch(&mut out, 1, Durability::ServerDefault, None, &ops).unwrap_err();
    assert_eq!(
        error,
        ProtocolError::KeyTooLong {
            length: 256,
            max: 255
        }
    );
    assert!(out.is_empty());
}

#[test]
fn modulo_owner_table_follows_the_rule() {
    let reply = HelloReply::with_modulo_owners(5, 16, vec![7001, 7002, 7003]).unwrap();
    for (partition, owner) in reply.owners.iter().enumerate() {
        assert_eq!(usize::from(*owner), partition % 3);
    }
    let key = b"user:42";
    assert_eq!(reply.owner_of_key(key), partition_of(key, 16) as usize % 3);
}

/// `GetBound` byte for byte, as PROTOCOL.md lays it out: opcode 7, the key, then the
/// bound (0 floor, 1 ceiling); a read, so not a mutation.
#[test]
fn get_bound_encodes_as_documented() {
    for (bound, code) in [(Bound::Floor, 0u8), (Bound::Ceiling, 1)] {
        let op = Op::GetBound {
            key: b"likes:1".as_slice(),
            bound,
        };
        let mut wire = Vec::new();
        op.encode(&mut wire).unwrap();
        let mut expected = vec![7, 7];
        expected.extend_from_slice(b"likes:1");
        expected.push(code);
        assert_eq!(wire, expected);
        assert_eq!(op.encoded_bytes(), wire.len());
        assert!(!op.is_mutation());

        let mut frame = Vec::new();
        encode_batch(
            &mut frame,
            3,
            Durability::ServerDefault,
            None,
            std::slice::from_ref(&op),
        )
        .unwrap();
        let Ok(Request::Batch(batch)) = one_frame(&frame).request() else {
            panic!("not a batch")
        };
        assert_eq!(batch.ops().collect::<Vec<_>>(), [op]);
        assert!(!batch.has_mutation());
    }
    // PROTOCOL.md's worked example: the floor 0 is set, so `existed` (flags bit 0).
    let mut reply = Vec::new();
    encode_batch_reply(&mut reply, 3, &[OpReply::ok(0, true, false)]).unwrap();
    assert_eq!(&reply[reply.len() - 10..], &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
}

/// The worked example of PROTOCOL.md, byte for byte.
#[test]
fn worked_example_matches_protocol_md() {
    let mut wire = Vec::new();
    let ops = [Op::Add {
        key: b"page:1".as_slice(),
        delta: 5,
        policy: BoundPolicy::Reject,
    }];
    encode_batch(&mut wire, 7, Durability::ServerDefault, None, &ops).unwrap();
    let expected: [u8; 33] = [
        0x22, 0, 0, 0, 0x05, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 6, b'p', b'a',
        b'g', b'e', b':', b'1', 5, 0, 0, 0,
    ];
    assert_eq!(&wire[..33], &expected);
    assert_eq!(&wire[33..], &[0, 0, 0, 0, 0]);

    let mut reply = Vec::new();
    encode_batch_reply(&mut reply, 7, &[OpReply::ok(15, true, false)]).unwrap();
    let expected_reply: [u8; 26] = [
        0x1a, 0, 0, 0, 0x06, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0x0f, 0, 0, 0,
    ];
    assert_eq!(&reply[..26], &expected_reply);
    assert_eq!(reply.len(), 4 + 26);
}
