//! Feeds arbitrary bytes to the frame and message decoders, as a server and a client
//! would read them: frame after frame until more bytes are needed or framing fails.
//! Checks that nothing panics, that a decoded frame never claims more bytes than given,
//! that framing errors are exactly the fatal ones, and that a decoded batch re-encodes
//! to a frame that decodes to the same operations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_protocol::{decode_frame, encode_batch, Op, Reply, Request, HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut offset = 0;
    loop {
        match decode_frame(&data[offset..]) {
            Ok(Some((frame, consumed))) => {
                assert!(consumed >= HEADER_BYTES && consumed <= data.len() - offset);
                if let Ok(Request::Batch(batch)) = frame.request() {
                    let ops: Vec<Op<&[u8]>> = batch.ops().collect();
                    assert_eq!(ops.len(), batch.op_count());
                    let mut wire = Vec::new();
                    encode_batch(&mut wire, frame.request_id, batch.durability, batch.idempotency_key, &ops)
                        .expect("a decoded batch re-encodes");
                    let (again, _) = decode_frame(&wire).unwrap().unwrap();
                    let Ok(Request::Batch(again)) = again.request() else { panic!("re-encoded batch does not decode") };
                    assert!(again.ops().eq(ops.iter().cloned()));
                }
                if let Ok(Reply::BatchReply(reply)) = frame.reply() {
                    assert_eq!(reply.results().count(), reply.result_count());
                }
                offset += consumed;
            }
            Ok(None) => return,
            Err(error) => {
                assert!(error.is_fatal());
                return;
            }
        }
    }
});
