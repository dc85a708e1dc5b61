//! Operations on counters, as carried inside a `Batch` request.
//!
//! One operation on the wire:
//!
//! ```text
//! offset size field
//!      0    1 opcode      1 Add, 2 Set, 3 Get, 4 Delete, 5 Exists, 6 SetBounds,
//!                         7 GetBound
//!      1    1 key_length  0..=255 (0 is carried and answered with status InvalidKey)
//!      2    k key         key_length bytes, any bytes
//!    2+k  ... operand     by opcode:
//!                         Add:       delta i64 LE, policy u8 (0 reject, 1 clamp)
//!                         Set:       value i64 LE, policy u8
//!                         Get, Delete, Exists: nothing
//!                         SetBounds: mask u8 (bit 0 floor present, bit 1 ceiling
//!                                    present, other bits 0), then floor i64 LE if
//!                                    present, then ceiling i64 LE if present
//!                         GetBound:  bound u8 (0 floor, 1 ceiling; others refused)
//! ```
//!
//! `GetBound` reads one bound of a counter: its result is `Ok` with `value` the bound
//! and `existed` set if the counter has that bound, or `value` 0 and `existed` clear if
//! it has none (a missing counter has none). It never creates a counter. One result
//! record holds one i64, so a client reads both bounds with two `GetBound` operations
//! in one batch (answered by one core in one pass, so from the same state).
//!
//! The longest operation is `SetBounds` with a 255-byte key and both bounds:
//! [`OP_BYTES_MAX`] = 1 + 1 + 255 + 1 + 8 + 8 = 274 bytes.
//!
//! [`Op`] is generic over its key so one type serves both directions: `Op<&[u8]>`
//! ([`OpRef`]) borrows keys from a received frame without copying, `Op<Vec<u8>>` owns them.

use crate::cursor::Cursor;
use crate::error::ProtocolError;
use crate::KEY_BYTES_MAX;

/// The largest encoded operation, in bytes.
pub const OP_BYTES_MAX: usize = 1 + 1 + KEY_BYTES_MAX + 1 + 8 + 8;

const OPCODE_ADD: u8 = 1;
const OPCODE_SET: u8 = 2;
const OPCODE_GET: u8 = 3;
const OPCODE_DELETE: u8 = 4;
const OPCODE_EXISTS: u8 = 5;
const OPCODE_SET_BOUNDS: u8 = 6;
const OPCODE_GET_BOUND: u8 = 7;

const MASK_FLOOR: u8 = 1 << 0;
const MASK_CEILING: u8 = 1 << 1;

/// What an addition or a set does when it would cross a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum BoundPolicy {
    /// Refuse the operation, leaving the counter unchanged (the default).
    #[default]
    Reject = 0,
    /// Apply as much as the bound allows and report `clamped`.
    Clamp = 1,
}

impl BoundPolicy {
    /// The policy with wire code `code`.
    pub fn from_u8(code: u8) -> Result<Self, ProtocolError> {
        match code {
            0 => Ok(BoundPolicy::Reject),
            1 => Ok(BoundPolicy::Clamp),
            other => Err(ProtocolError::UnknownPolicy(other)),
        }
    }
}

/// Which bound of a counter a [`Op::GetBound`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Bound {
    /// The lowest value the counter may take.
    Floor = 0,
    /// The highest value the counter may take.
    Ceiling = 1,
}

impl Bound {
    /// The bound with wire code `code`.
    pub fn from_u8(code: u8) -> Result<Self, ProtocolError> {
        match code {
            0 => Ok(Bound::Floor),
            1 => Ok(Bound::Ceiling),
            other => Err(ProtocolError::UnknownBound(other)),
        }
    }
}

/// When the server acknowledges a mutating batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Durability {
    /// Whatever the server is configured with (the default).
    #[default]
    ServerDefault = 0,
    /// Reply only after the batch is in the journal and synced to disk.
    Durable = 1,
    /// Reply once the batch is applied in memory; the journal is synced soon after.
    Relaxed = 2,
}

impl Durability {
    /// The durability with wire code `code`.
    pub fn from_u8(code: u8) -> Result<Self, ProtocolError> {
        match code {
            0 => Ok(Durability::ServerDefault),
            1 => Ok(Durability::Durable),
            2 => Ok(Durability::Relaxed),
            other => Err(ProtocolError::UnknownDurability(other)),
        }
    }
}

/// One operation on one counter. `K` is the key: `&[u8]` when decoded, `Vec<u8>` when owned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op<K = Vec<u8>> {
    /// Add `delta` (negative to subtract); a missing counter starts at 0.
    Add {
        key: K,
        delta: i64,
        policy: BoundPolicy,
    },
    /// Set the value; a missing counter is created.
    Set {
        key: K,
        value: i64,
        policy: BoundPolicy,
    },
    /// Read the value; a missing counter reads 0 with `existed == false`.
    Get { key: K },
    /// Remove the counter and its bounds; the result carries the value it had.
    Delete { key: K },
    /// Whether the counter exists (value 1 or 0), without creating it.
    Exists { key: K },
    /// Set or clear the floor and ceiling.
    SetBounds {
        key: K,
        floor: Option<i64>,
        ceiling: Option<i64>,
    },
    /// Read one bound without creating the counter: `value` is the bound and `existed`
    /// says whether the counter has it (value 0, `existed` false, when it has none).
    GetBound { key: K, bound: Bound },
}

/// An operation borrowing its key from a received frame.
pub type OpRef<'a> = Op<&'a [u8]>;

impl<K: AsRef<[u8]>> Op<K> {
    /// The key this operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Add { key, .. }
            | Op::Set { key, .. }
            | Op::Get { key }
            | Op::Delete { key }
            | Op::Exists { key }
            | Op::SetBounds { key, .. }
            | Op::GetBound { key, .. } => key.as_ref(),
        }
    }

    /// Whether applying this operation can change state.
    pub fn is_mutation(&self) -> bool {
        !matches!(
            self,
            Op::Get { .. } | Op::Exists { .. } | Op::GetBound { .. }
        )
    }

    /// The same operation borrowing its key.
    pub fn as_ref(&self) -> OpRef<'_> {
        match self {
            Op::Add { key, delta, policy } => Op::Add {
                key: key.as_ref(),
                delta: *delta,
                policy: *policy,
            },
            Op::Set { key, value, policy } => Op::Set {
                key: key.as_ref(),
                value: *value,
                policy: *policy,
            },
            Op::Get { key } => Op::Get { key: key.as_ref() },
            Op::Delete { key } => Op::Delete { key: key.as_ref() },
            Op::Exists { key } => Op::Exists { key: key.as_ref() },
            Op::SetBounds {
                key,
                floor,
                ceiling,
            } => Op::SetBounds {
                key: key.as_ref(),
                floor: *floor,
                ceiling: *ceiling,
            },
            Op::GetBound { key, bound } => Op::GetBound {
                key: key.as_ref(),
                bound: *bound,
            },
        }
    }

    /// The same operation owning its key.
    pub fn to_owned_op(&self) -> Op<Vec<u8>> {
        match self.as_ref() {
            Op::Add { key, delta, policy } => Op::Add {
                key: key.to_vec(),
                delta,
                policy,
            },
            Op::Set { key, value, policy } => Op::Set {
                key: key.to_vec(),
                value,
                policy,
            },
            Op::Get { key } => Op::Get { key: key.to_vec() },
            Op::Delete { key } => Op::Delete { key: key.to_vec() },
            Op::Exists { key } => Op::Exists { key: key.to_vec() },
            Op::SetBounds {
                key,
                floor,
                ceiling,
            } => Op::SetBounds {
                key: key.to_vec(),
                floor,
                ceiling,
            },
            Op::GetBound { key, bound } => Op::GetBound {
                key: key.to_vec(),
                bound,
            },
        }
    }

    /// Bytes this operation takes on the wire.
    pub fn encoded_bytes(&self) -> usize {
        let operand_bytes = match self {
            Op::Add { .. } | Op::Set { .. } => 9,
            Op::Get { .. } | Op::Delete { .. } | Op::Exists { .. } => 0,
            Op::SetBounds { floor, ceiling, .. } => {
                1 + 8 * (usize::from(floor.is_some()) + usize::from(ceiling.is_some()))
            }
            Op::GetBound { .. } => 1,
        };
        2 + self.key().len() + operand_bytes
    }

    /// Appends the wire form; fails (writing nothing) if the key is over 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        let key = self.key();
        let key_length = u8::try_from(key.len()).map_err(|_| ProtocolError::KeyTooLong {
            length: key.len(),
            max: KEY_BYTES_MAX,
        })?;
        let start = out.len();
        let opcode = match self {
            Op::Add { .. } => OPCODE_ADD,
            Op::Set { .. } => OPCODE_SET,
            Op::Get { .. } => OPCODE_GET,
            Op::Delete { .. } => OPCODE_DELETE,
            Op::Exists { .. } => OPCODE_EXISTS,
            Op::SetBounds { .. } => OPCODE_SET_BOUNDS,
            Op::GetBound { .. } => OPCODE_GET_BOUND,
        };
        out.push(opcode);
        out.push(key_length);
        out.extend_from_slice(key);
        match self {
            Op::Add {
                delta: number,
                policy,
                ..
            }
            | Op::Set {
                value: number,
                policy,
                ..
            } => {
                out.extend_from_slice(&number.to_le_bytes());
                out.push(*policy as u8);
            }
            Op::Get { .. } | Op::Delete { .. } | Op::Exists { .. } => {}
            Op::SetBounds { floor, ceiling, .. } => encode_bounds(out, *floor, *ceiling),
            Op::GetBound { bound, .. } => out.push(*bound as u8),
        }
        debug_assert_eq!(out.len() - start, self.encoded_bytes());
        Ok(())
    }
}

fn encode_bounds(out: &mut Vec<u8>, floor: Option<i64>, ceiling: Option<i64>) {
    let mask = if floor.is_some() { MASK_FLOOR } else { 0 }
        | if ceiling.is_some() { MASK_CEILING } else { 0 };
    out.push(mask);
    for bound in [floor, ceiling].into_iter().flatten() {
        out.extend_from_slice(&bound.to_le_bytes());
    }
}

impl<'a> OpRef<'a> {
    /// Reads one operation, borrowing its key from the input.
    pub(crate) fn decode(cursor: &mut Cursor<'a>) -> Result<OpRef<'a>, ProtocolError> {
        if let Some(add) = Self::decode_add(cursor) {
            return Ok(add);
        }
        let opcode = cursor.u8("operation code")?;
        if !(OPCODE_ADD..=OPCODE_GET_BOUND).contains(&opcode) {
            return Err(ProtocolError::UnknownOperation(opcode));
        }
        let key_length = usize::from(cursor.u8("key length")?);
        let key = cursor.take(key_length, "key")?;
        let op = match opcode {
            OPCODE_ADD => {
                let delta = cursor.i64("delta")?;
                Op::Add {
                    key,
                    delta,
                    policy: BoundPolicy::from_u8(cursor.u8("bound policy")?)?,
                }
            }
            OPCODE_SET => {
                let value = cursor.i64("value")?;
                Op::Set {
                    key,
                    value,
                    policy: BoundPolicy::from_u8(cursor.u8("bound policy")?)?,
                }
            }
            OPCODE_GET => Op::Get { key },
            OPCODE_DELETE => Op::Delete { key },
            OPCODE_EXISTS => Op::Exists { key },
            OPCODE_SET_BOUNDS => decode_bounds(cursor, key)?,
            _ => Op::GetBound {
                key,
                bound: Bound::from_u8(cursor.u8("bound")?)?,
            },
        };
        Ok(op)
    }
}

impl<'a> OpRef<'a> {
    /// The common operation, a well-formed `Add`, read with two length checks instead of
    /// one per field. `None` (anything else, or any field missing or invalid) leaves the
    /// cursor where it was for the checked path, which reports the error: every `Add`
    /// accepted here is one the checked path accepts.
    #[inline(always)]
    fn decode_add(cursor: &mut Cursor<'a>) -> Option<OpRef<'a>> {
        let (&[opcode, key_length], rest) = cursor.rest().split_first_chunk::<2>()?;
        if opcode != OPCODE_ADD {
            return None;
        }
        let key_length = usize::from(key_length);
        let (key, rest) = rest.split_at_checked(key_length)?;
        let (&delta, rest) = rest.split_first_chunk::<8>()?;
        let policy = BoundPolicy::from_u8(*rest.first()?).ok()?;
        cursor.skip(2 + key_length + 9);
        Some(Op::Add {
            key,
            delta: i64::from_le_bytes(delta),
            policy,
        })
    }
}

fn decode_bounds<'a>(cursor: &mut Cursor<'a>, key: &'a [u8]) -> Result<OpRef<'a>, ProtocolError> {
    let mask = cursor.u8("bounds mask")?;
    let undefined = mask & !(MASK_FLOOR | MASK_CEILING);
    if undefined != 0 {
        return Err(ProtocolError::UndefinedBits {
            what: "bounds mask",
            bits: undefined,
        });
    }
    let floor = if mask & MASK_FLOOR != 0 {
        Some(cursor.i64("floor")?)
    } else {
        None
    };
    let ceiling = if mask & MASK_CEILING != 0 {
        Some(cursor.i64("ceiling")?)
    } else {
        None
    };
    Ok(Op::SetBounds {
        key,
        floor,
        ceiling,
    })
}
