//! `Batch` requests and their `BatchReply`: every data operation travels in a batch.
//!
//! `Batch` body (header flag bit 0 = FLAG_IDEMPOTENCY_KEY, other bits 0):
//!
//! ```text
//! offset size field
//!      0    1 durability       0 server default, 1 durable, 2 relaxed
//!      1    4 op_count         u32 LE, 0..=BATCH_OPS_MAX
//!      5   16 idempotency_key  u128 LE, present only if the header flag is set
//!  5(+16) ... ops              op_count operations, back to back (see `op`)
//! ```
//!
//! `BatchReply` body (header flags 0):
//!
//! ```text
//! offset size field
//!      0    4 result_count  u32 LE, equal to the batch's op_count
//!      4 10*n results       one OpReply per operation, in the batch's order (see `status`)
//! ```
//!
//! A batch is decoded and checked whole before any of it is applied: a bad operation makes
//! the whole frame an error (`Error` reply), never half a batch. An operation's own
//! failure (bound, overflow, invalid key) is its result's status and does not affect the
//! other operations.

use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::frame::{begin_frame, finish_frame, MessageType, FLAG_IDEMPOTENCY_KEY, HEADER_BYTES};
use crate::op::{Durability, Op, OpRef, OP_BYTES_MAX};
use crate::status::{OpReply, OP_REPLY_BYTES};
use crate::{BATCH_OPS_MAX, FRAME_BYTES_MAX};

const BATCH_FIXED_BYTES: usize = 1 + 4 + 16;
const BATCH_REPLY_FIXED_BYTES: usize = 4;

// The largest batch, and its reply, fit in a frame: a full batch never fails to encode.
const _: () =
    assert!(HEADER_BYTES + BATCH_FIXED_BYTES + BATCH_OPS_MAX * OP_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(
    HEADER_BYTES + BATCH_REPLY_FIXED_BYTES + BATCH_OPS_MAX * OP_REPLY_BYTES <= FRAME_BYTES_MAX
);
const _: () = assert!(BATCH_OPS_MAX <= u32::MAX as usize);

/// A decoded batch; its operations are borrowed from the frame and already checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRef<'a> {
    /// When to acknowledge.
    pub durability: Durability,
    /// The key under which the server remembers this batch's results, if any.
    pub idempotency_key: Option<u128>,
    op_count: u32,
    ops_bytes: &'a [u8],
}

impl<'a> BatchRef<'a> {
    pub(crate) fn decode(flags: u8, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let undefined = flags & !FLAG_IDEMPOTENCY_KEY;
        if undefined != 0 {
            return Err(ProtocolError::UnknownFlags {
                message_type: MessageType::Batch as u8,
                flags,
            });
        }
        let mut cursor = Cursor::new(body);
        let durability = Durability::from_u8(cursor.u8("durability")?)?;
        let op_count = cursor.u32("operation count")?;
        if op_count as usize > BATCH_OPS_MAX {
            return Err(ProtocolError::BatchTooLarge {
                count: u64::from(op_count),
                max: BATCH_OPS_MAX,
            });
        }
        let idempotency_key = if flags & FLAG_IDEMPOTENCY_KEY != 0 {
            Some(cursor.u128("idempotency key")?)
        } else {
            None
        };
        let ops_start = cursor.clone();
        for _ in 0..op_count {
            OpRef::decode(&mut cursor)?;
        }
        cursor.finish()?;
        let ops_bytes = ops_start
            .clone()
            .take(ops_start.remaining_bytes(), "operations")?;
        Ok(BatchRef {
            durability,
            idempotency_key,
            op_count,
            ops_bytes,
        })
    }

    /// How many operations the batch holds.
    pub fn op_count(&self) -> usize {
        self.op_count as usize
    }

    /// The operations, in order, borrowing keys from the frame.
    pub fn ops(&self) -> OpIter<'a> {
        OpIter {
            cursor: Cursor::new(self.ops_bytes),
            remaining: self.op_count,
        }
    }

    /// Whether any operation can change state.
    pub fn has_mutation(&self) -> bool {
        self.ops().any(|op| op.is_mutation())
    }
}

/// The operations of a [`BatchRef`], in order.
#[derive(Clone, Debug)]
pub struct OpIter<'a> {
    cursor: Cursor<'a>,
    remaining: u32,
}

impl<'a> Iterator for OpIter<'a> {
    type Item = OpRef<'a>;

    fn next(&mut self) -> Option<OpRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        Some(
            OpRef::decode(&mut self.cursor)
                .expect("operations were checked when the batch was decoded"),
        )
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for OpIter<'_> {}

/// Builds a `Batch` frame in place, one operation at a time.
///
/// Dropping the writer without [`BatchWriter::finish`] removes the partial frame.
#[derive(Debug)]
pub struct BatchWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    count_offset: usize,
    op_count: u32,
    finished: bool,
}

impl<'o> BatchWriter<'o> {
    /// Appends the header and fixed fields of a batch to `out`.
    pub fn begin(
        out: &'o mut Vec<u8>,
        request_id: u64,
        durability: Durability,
        idempotency_key: Option<u128>,
    ) -> Self {
        let flags = if idempotency_key.is_some() {
            FLAG_IDEMPOTENCY_KEY
        } else {
            0
        };
        let start = begin_frame(out, MessageType::Batch, flags, request_id);
        out.push(durability as u8);
        let count_offset = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        if let Some(key) = idempotency_key {
            out.extend_from_slice(&key.to_le_bytes());
        }
        BatchWriter {
            out,
            start,
            count_offset,
            op_count: 0,
            finished: false,
        }
    }

    /// Operations appended so far.
    pub fn op_count(&self) -> usize {
        self.op_count as usize
    }

    /// Appends one operation; fails (appending nothing) if its key is over 255 bytes or
    /// the batch already holds [`BATCH_OPS_MAX`] operations.
    pub fn push<K: AsRef<[u8]>>(&mut self, op: &Op<K>) -> Result<(), ProtocolError> {
        if self.op_count as usize >= BATCH_OPS_MAX {
            return Err(ProtocolError::BatchTooLarge {
                count: u64::from(self.op_count) + 1,
                max: BATCH_OPS_MAX,
            });
        }
        op.encode(self.out)?;
        self.op_count += 1;
        Ok(())
    }

    /// Patches the count and length; the frame is complete in `out`.
    pub fn finish(mut self) -> Result<(), ProtocolError> {
        let count = self.op_count.to_le_bytes();
        self.out[self.count_offset..self.count_offset + 4].copy_from_slice(&count);
        self.finished = true;
        finish_frame(self.out, self.start)
    }
}

impl Drop for BatchWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

/// Appends a whole `Batch` frame; on error `out` is left as it was.
pub fn encode_batch<K: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    request_id: u64,
    durability: Durability,
    idempotency_key: Option<u128>,
    ops: &[Op<K>],
) -> Result<(), ProtocolError> {
    if ops.len() > BATCH_OPS_MAX {
        return Err(ProtocolError::BatchTooLarge {
            count: ops.len() as u64,
            max: BATCH_OPS_MAX,
        });
    }
    let mut writer = BatchWriter::begin(out, request_id, durability, idempotency_key);
    for op in ops {
        writer.push(op)?;
    }
    writer.finish()
}

/// A decoded batch reply; its results are already checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchReplyRef<'a> {
    result_count: u32,
    results_bytes: &'a [u8],
}

impl<'a> BatchReplyRef<'a> {
    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut cursor = Cursor::new(body);
        let result_count = cursor.u32("result count")?;
        if result_count as usize > BATCH_OPS_MAX {
            return Err(ProtocolError::BatchTooLarge {
                count: u64::from(result_count),
                max: BATCH_OPS_MAX,
            });
        }
        let results_bytes = cursor.clone().take(cursor.remaining_bytes(), "results")?;
        for _ in 0..result_count {
            OpReply::decode(&mut cursor)?;
        }
        cursor.finish()?;
        Ok(BatchReplyRef {
            result_count,
            results_bytes,
        })
    }

    /// How many results the reply holds.
    pub fn result_count(&self) -> usize {
        self.result_count as usize
    }

    /// The results, in the batch's order.
    pub fn results(&self) -> impl ExactSizeIterator<Item = OpReply> + 'a {
        let bytes = self.results_bytes;
        (0..self.result_count as usize).map(move |index| {
            let mut cursor = Cursor::new(&bytes[index * OP_REPLY_BYTES..]);
            OpReply::decode(&mut cursor).expect("results were checked when the reply was decoded")
        })
    }
}

/// Builds a `BatchReply` frame in place, one result at a time.
///
/// Dropping the writer without [`BatchReplyWriter::finish`] removes the partial frame.
#[derive(Debug)]
pub struct BatchReplyWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    result_count: u32,
    finished: bool,
}

impl<'o> BatchReplyWriter<'o> {
    /// Appends the header of a batch reply to `out`.
    pub fn begin(out: &'o mut Vec<u8>, request_id: u64) -> Self {
        let start = begin_frame(out, MessageType::BatchReply, 0, request_id);
        out.extend_from_slice(&[0; 4]); // result_count, patched by `finish`
        BatchReplyWriter {
            out,
            start,
            result_count: 0,
            finished: false,
        }
    }

    /// Appends one result; fails if the reply already holds [`BATCH_OPS_MAX`] results.
    pub fn push(&mut self, reply: &OpReply) -> Result<(), ProtocolError> {
        if self.result_count as usize >= BATCH_OPS_MAX {
            return Err(ProtocolError::BatchTooLarge {
                count: u64::from(self.result_count) + 1,
                max: BATCH_OPS_MAX,
            });
        }
        reply.encode(self.out);
        self.result_count += 1;
        Ok(())
    }

    /// Patches the count and length; the frame is complete in `out`.
    pub fn finish(mut self) -> Result<(), ProtocolError> {
        let count_offset = self.start + HEADER_BYTES;
        self.out[count_offset..count_offset + 4].copy_from_slice(&self.result_count.to_le_bytes());
        self.finished = true;
        finish_frame(self.out, self.start)
    }
}

impl Drop for BatchReplyWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.out.truncate(self.start);
        }
    }
}

/// Appends a whole `BatchReply` frame; on error `out` is left as it was.
pub fn encode_batch_reply(
    out: &mut Vec<u8>,
    request_id: u64,
    results: &[OpReply],
) -> Result<(), ProtocolError> {
    if results.len() > BATCH_OPS_MAX {
        return Err(ProtocolError::BatchTooLarge {
            count: results.len() as u64,
            max: BATCH_OPS_MAX,
        });
    }
    let mut writer = BatchReplyWriter::begin(out, request_id);
    for result in results {
        writer.push(result)?;
    }
    writer.finish()
}
