//! Journal records: one mutation of one counter, with the value it left behind; or,
//! for an operation of an idempotent batch that changed nothing, its outcome alone.
//!
//! Replay is *redo by resulting value*: a record carries the counter's value (and, for
//! `SetBounds`, its bounds) after the mutation, so replaying a record whose effect is
//! already present changes nothing. That is what makes replay idempotent.
//!
//! # Layout (little-endian, every record a multiple of 8 bytes)
//! ```text
//! offset size field
//!      0    1 magic and version: 0xA1 (never 0, so a zero byte ends a segment's records)
//!      1    1 kind: 1 Add, 2 Set, 3 Delete, 4 SetBounds, 5 Outcome (see below)
//!      2    1 flags: bit 0 floor present, bit 1 ceiling present,
//!               bit 2 bounds section present, bit 3 idempotency section present;
//!               other bits zero
//!      3    1 key length K, 1..=255
//!      4    4 record length L in bytes, this field and the checksum included
//!      8    8 LSN
//!     16    4 partition
//!     20    4 reserved, zero
//!     24    8 operand: the delta for Add, the requested value for Set, else 0
//!     32    8 resulting value (for Delete: the value the counter had)
//!     40    K key
//!   40+K   16 bounds section, if flag bit 2: floor i64, ceiling i64 (0 when absent)
//!      .   32 idempotency section, if flag bit 3: key u128, result 16 bytes
//!      .    . zero padding up to L - 8
//!  L - 8    8 xxh3_64 of bytes 0..L-8
//! ```
//! An *Outcome* record changes nothing and replay skips it: it keeps, for its
//! idempotency section, the outcome of an operation of an idempotent batch that
//! changed no state (a read, a no-op, a refused operation), so that a retry after a
//! restart is answered exactly as the first attempt was. It always carries the
//! idempotency section and never bounds; operand and value hold what the result's
//! layout (`net/server/src/durability.rs`) says.
//!
//! Worked example: Add of delta 5 to the 8-byte key `page:one` with no bounds and no
//! idempotency key: 40 + 8 = 48 bytes, already a multiple of 8, plus the 8-byte
//! checksum: L = 56.

use super::Lsn;
use crate::op::{Op, Outcome};

/// The first byte of every record: magic nibble 0xA, format version 1.
pub const RECORD_MAGIC: u8 = 0xA1;
/// Bytes before the key.
pub const RECORD_HEADER_BYTES: usize = 40;
/// The longest key a record carries.
pub const RECORD_KEY_BYTES_MAX: usize = 255;
const BOUNDS_BYTES: usize = 16;
const IDEMPOTENCY_BYTES: usize = 32;
const CHECKSUM_BYTES: usize = 8;
/// The shortest possible record (a 1-byte key).
pub const RECORD_BYTES_MIN: usize = encoded_bytes(1, false, false);
/// The longest possible record.
pub const RECORD_BYTES_MAX: usize = encoded_bytes(RECORD_KEY_BYTES_MAX, true, true);

const FLAG_FLOOR: u8 = 1;
const FLAG_CEILING: u8 = 2;
const FLAG_BOUNDS: u8 = 4;
const FLAG_IDEMPOTENCY: u8 = 8;
const FLAGS_KNOWN: u8 = FLAG_FLOOR | FLAG_CEILING | FLAG_BOUNDS | FLAG_IDEMPOTENCY;

const _: () = assert!(RECORD_BYTES_MIN == 56);
// `encode` zeroes the word before the checksum after writing the header.
const _: () = assert!(RECORD_BYTES_MIN >= RECORD_HEADER_BYTES + 2 * CHECKSUM_BYTES);
const _: () = assert!(RECORD_BYTES_MAX == 352);
const _: () = assert!(RECORD_BYTES_MAX.is_multiple_of(8));

const fn encoded_bytes(key_bytes: usize, bounds: bool, idempotency: bool) -> usize {
    let mut body = RECORD_HEADER_BYTES + key_bytes;
    if bounds {
        body += BOUNDS_BYTES;
    }
    if idempotency {
        body += IDEMPOTENCY_BYTES;
    }
    body.div_ceil(8) * 8 + CHECKSUM_BYTES
}

/// What a record's mutation was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    Add = 1,
    Set = 2,
    Delete = 3,
    SetBounds = 4,
    /// No mutation: an idempotent batch's outcome of an operation that changed nothing.
    Outcome = 5,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Add),
            2 => Some(RecordKind::Set),
            3 => Some(RecordKind::Delete),
            4 => Some(RecordKind::SetBounds),
            5 => Some(RecordKind::Outcome),
            _ => None,
        }
    }
}

/// Why `Record::validate` refuses a record.
#[derive(Clone, Copy, Debug)]
enum Problem {
    KeyLength(usize),
    SetBoundsWithoutBounds,
    FloorAboveCeiling { floor: i64, ceiling: i64 },
    OutcomeShape,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Problem::KeyLength(length) => write!(f, "key length {length} is outside 1..=255"),
            Problem::SetBoundsWithoutBounds => {
                write!(f, "a SetBounds record must carry its bounds")
            }
            Problem::OutcomeShape => write!(
                f,
                "an Outcome record must carry an idempotency section and no bounds"
            ),
            Problem::FloorAboveCeiling { floor, ceiling } => {
                write!(f, "floor {floor} is above ceiling {ceiling}")
            }
        }
    }
}

/// A counter's floor and ceiling after the mutation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bounds {
    pub floor: Option<i64>,
    pub ceiling: Option<i64>,
}

/// A client's idempotency key and the 16-byte result it produced, so a retry after a
/// restart gets the same answer instead of applying twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idempotency {
    pub key: u128,
    pub result: [u8; 16],
}

/// One mutation to journal. The LSN is assigned by the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub partition: u32,
    pub kind: RecordKind,
    pub key: &'a [u8],
    /// The delta for Add, the requested value for Set, else 0.
    pub operand: i64,
    /// The counter's value after the mutation (for Delete: the value it had).
    pub value: i64,
    /// The bounds after the mutation; required for SetBounds, optional otherwise
    /// (replay of Add and Set keeps the bounds the counter already has).
    pub bounds: Option<Bounds>,
    pub idempotency: Option<Idempotency>,
}

/// A record read back from a journal, borrowing its key from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedRecord<'a> {
    pub lsn: Lsn,
    pub record: Record<'a>,
}

/// A record read back from a journal that owns its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedRecord {
    pub lsn: Lsn,
    pub partition: u32,
    pub kind: RecordKind,
    pub key: Vec<u8>,
    pub operand: i64,
    pub value: i64,
    pub bounds: Option<Bounds>,
    pub idempotency: Option<Idempotency>,
}

impl LoggedRecord<'_> {
    /// Copies the key out.
    pub fn to_owned_record(&self) -> OwnedRecord {
        let r = &self.record;
        OwnedRecord {
            lsn: self.lsn,
            partition: r.partition,
            kind: r.kind,
            key: r.key.to_vec(),
            operand: r.operand,
            value: r.value,
            bounds: r.bounds,
            idempotency: r.idempotency,
        }
    }
}

impl OwnedRecord {
    /// Borrows it as a [`Record`].
    pub fn as_record(&self) -> Record<'_> {
        Record {
            partition: self.partition,
            kind: self.kind,
            key: &self.key,
            operand: self.operand,
            value: self.value,
            bounds: self.bounds,
            idempotency: self.idempotency,
        }
    }
}

impl<'a> Record<'a> {
    /// The record of a mutation that `outcome` reports applied, for the journal of the
    /// core owning `partition`; `None` for a read (`Get`, `GetBound`), which is not
    /// journaled.
    pub fn from_op(op: &Op<'a>, outcome: &Outcome, partition: u32) -> Option<Record<'a>> {
        let (kind, operand, bounds) = match *op {
            Op::Add { delta, .. } => (RecordKind::Add, delta, None),
            Op::Set { value, .. } => (RecordKind::Set, value, None),
            Op::Delete { .. } => (RecordKind::Delete, 0, None),
            Op::SetBounds { floor, ceiling, .. } => {
                (RecordKind::SetBounds, 0, Some(Bounds { floor, ceiling }))
            }
            Op::Get { .. } | Op::GetBound { .. } => return None,
        };
        Some(Record {
            partition,
            kind,
            key: op.key(),
            operand,
            value: outcome.value,
            bounds,
            idempotency: None,
        })
    }
}

impl Record<'_> {
    /// The encoded size in bytes.
    pub fn encoded_bytes(&self) -> usize {
        encoded_bytes(
            self.key.len(),
            self.bounds.is_some(),
            self.idempotency.is_some(),
        )
    }

    /// Checks what the format cannot represent or replay cannot apply.
    pub fn validate(&self) -> Result<(), String> {
        match self.problem() {
            Some(problem) => Err(problem.to_string()),
            None => Ok(()),
        }
    }

    /// What `validate` refuses, without building a message.
    #[inline(always)]
    fn problem(&self) -> Option<Problem> {
        if self.key.is_empty() || self.key.len() > RECORD_KEY_BYTES_MAX {
            return Some(Problem::KeyLength(self.key.len()));
        }
        self.bounds_problem()
    }

    /// `problem` but for the key's length, which `decode` has checked against the
    /// record's length already (it runs this once per record on recovery's reader thread).
    #[inline(always)]
    fn bounds_problem(&self) -> Option<Problem> {
        if self.kind == RecordKind::SetBounds && self.bounds.is_none() {
            return Some(Problem::SetBoundsWithoutBounds);
        }
        if self.kind == RecordKind::Outcome && (self.idempotency.is_none() || self.bounds.is_some())
        {
            return Some(Problem::OutcomeShape);
        }
        if let Some(Bounds {
            floor: Some(floor),
            ceiling: Some(ceiling),
        }) = self.bounds
        {
            if floor > ceiling {
                return Some(Problem::FloorAboveCeiling { floor, ceiling });
            }
        }
        None
    }

    fn flags(&self) -> u8 {
        let mut flags = 0;
        if let Some(bounds) = self.bounds {
            flags |= FLAG_BOUNDS;
            if bounds.floor.is_some() {
                flags |= FLAG_FLOOR;
            }
            if bounds.ceiling.is_some() {
                flags |= FLAG_CEILING;
            }
        }
        if self.idempotency.is_some() {
            flags |= FLAG_IDEMPOTENCY;
        }
        flags
    }

    /// Writes the record with `lsn` at the start of `out` and returns its length.
    /// The caller has validated the record and sized `out` (a broken invariant panics).
    pub fn encode(&self, lsn: Lsn, out: &mut [u8]) -> usize {
        debug_assert!(self.validate().is_ok());
        let length = self.encoded_bytes();
        assert!(out.len() >= length, "record buffer too small");
        let out = &mut out[..length];
        // Every byte is written below: the header whole, then the word that holds the
        // zero padding (fewer than 8 bytes, always inside the 8 bytes before the
        // checksum) zeroed before the key and sections overwrite its start. Cheaper than
        // zeroing the whole record first, which was a memset call per record.
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[0] = RECORD_MAGIC;
        header[1] = self.kind as u8;
        header[2] = self.flags();
        header[3] = self.key.len() as u8;
        header[4..8].copy_from_slice(&(length as u32).to_le_bytes());
        header[8..16].copy_from_slice(&lsn.to_le_bytes());
        header[16..20].copy_from_slice(&self.partition.to_le_bytes());
        header[24..32].copy_from_slice(&self.operand.to_le_bytes());
        header[32..40].copy_from_slice(&self.value.to_le_bytes());
        out[..RECORD_HEADER_BYTES].copy_from_slice(&header);
        out[length - 2 * CHECKSUM_BYTES..length - CHECKSUM_BYTES].fill(0);
        let mut at = RECORD_HEADER_BYTES;
        // A 16-byte key (the longest inline one, and the common size) is one fixed-size
        // move instead of a call to memcpy.
        match self.key.first_chunk::<16>() {
            Some(key) if self.key.len() == 16 => out[at..at + 16].copy_from_slice(key),
            _ => out[at..at + self.key.len()].copy_from_slice(self.key),
        }
        at += self.key.len();
        if let Some(bounds) = self.bounds {
            out[at..at + 8].copy_from_slice(&bounds.floor.unwrap_or(0).to_le_bytes());
            out[at + 8..at + 16].copy_from_slice(&bounds.ceiling.unwrap_or(0).to_le_bytes());
            at += BOUNDS_BYTES;
        }
        if let Some(idempotency) = self.idempotency {
            out[at..at + 16].copy_from_slice(&idempotency.key.to_le_bytes());
            out[at + 16..at + 32].copy_from_slice(&idempotency.result);
        }
        let checksum = xxhash_rust::xxh3::xxh3_64(&out[..length - CHECKSUM_BYTES]);
        out[length - CHECKSUM_BYTES..].copy_from_slice(&checksum.to_le_bytes());
        length
    }
}

/// Why no record could be decoded at a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A zero byte where a record would start: the records of this segment end here.
    End,
    /// The bytes end before the record does (a torn record, or more is still coming).
    Incomplete,
    /// The bytes are not a valid record.
    Invalid(String),
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The record length a header claims, if `bytes` holds at least the first 8 bytes and
/// the length is plausible. Used to skip quickly over garbage when scanning.
#[inline]
fn claimed_length(bytes: &[u8]) -> Result<usize, DecodeError> {
    let Some(&first) = bytes.first() else {
        return Err(DecodeError::Incomplete);
    };
    if first != RECORD_MAGIC {
        return Err(if first == 0 {
            DecodeError::End
        } else {
            invalid(format_args!("bad magic byte {first:#04x}"))
        });
    }
    if bytes.len() < 8 {
        return Err(DecodeError::Incomplete);
    }
    let length = read_u32(bytes, 4) as usize;
    if !(RECORD_BYTES_MIN..=RECORD_BYTES_MAX).contains(&length) || !length.is_multiple_of(8) {
        return Err(invalid(format_args!("implausible record length {length}")));
    }
    Ok(length)
}

/// An `Invalid` error, built out of line: decoding runs once per record on recovery's
/// reader thread, and errors are rare.
#[cold]
#[inline(never)]
fn invalid(reason: std::fmt::Arguments<'_>) -> DecodeError {
    DecodeError::Invalid(reason.to_string())
}

/// Decodes the record at the start of `bytes`; returns it and its length.
///
/// A decoded record has passed [`Record::validate`]'s checks (made without building a
/// message unless one fails: this runs once per record on recovery's reader thread).
/// Always inlined: the record is large (about 160 bytes with its optional sections),
/// and in line the caller reads its fields where they were decoded instead of copying
/// it out.
#[inline(always)]
pub fn decode(bytes: &[u8]) -> Result<(LoggedRecord<'_>, usize), DecodeError> {
    let length = claimed_length(bytes)?;
    let Some(bytes) = bytes.get(..length) else {
        return Err(DecodeError::Incomplete);
    };
    let (body, stored) = bytes.split_at(length - CHECKSUM_BYTES);
    let stored = u64::from_le_bytes(stored.try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(body) != stored {
        return Err(invalid(format_args!("checksum mismatch")));
    }
    let record = decode_fields(bytes)?;
    Ok((record, length))
}

/// Decodes again the record at the start of `bytes`, which [`decode`] accepted: its
/// fields without computing its checksum a second time (for a reader that checked a
/// record, moved on, and then hands it out).
///
/// # Panics
/// If `bytes` does not start with a record [`decode`] accepts (its checksum aside).
pub fn decode_again(bytes: &[u8]) -> LoggedRecord<'_> {
    let length = claimed_length(bytes).expect("a record decoded before");
    decode_fields(&bytes[..length]).expect("a record decoded before")
}

/// Decodes the fields of a record whose length and checksum are already checked.
#[inline(always)]
fn decode_fields(bytes: &[u8]) -> Result<LoggedRecord<'_>, DecodeError> {
    let Some(kind) = RecordKind::from_byte(bytes[1]) else {
        return Err(invalid(format_args!("unknown kind {}", bytes[1])));
    };
    let flags = bytes[2];
    let key_bytes = bytes[3] as usize;
    if flags & !FLAGS_KNOWN != 0 || (flags & FLAG_BOUNDS == 0 && flags & 3 != 0) {
        return Err(invalid(format_args!("bad flags {flags:#04x}")));
    }
    let has_bounds = flags & FLAG_BOUNDS != 0;
    let has_idempotency = flags & FLAG_IDEMPOTENCY != 0;
    if key_bytes == 0 || encoded_bytes(key_bytes, has_bounds, has_idempotency) != bytes.len() {
        return Err(invalid(format_args!(
            "key length {key_bytes} disagrees with the record length"
        )));
    }
    if read_u32(bytes, 20) != 0 {
        return Err(invalid(format_args!("reserved bytes are not zero")));
    }
    let mut at = RECORD_HEADER_BYTES + key_bytes;
    let mut bounds = None;
    if has_bounds {
        let floor = read_u64(bytes, at) as i64;
        let ceiling = read_u64(bytes, at + 8) as i64;
        at += BOUNDS_BYTES;
        bounds = Some(Bounds {
            floor: (flags & FLAG_FLOOR != 0).then_some(floor),
            ceiling: (flags & FLAG_CEILING != 0).then_some(ceiling),
        });
    }
    let idempotency = has_idempotency.then(|| {
        let key = u128::from_le_bytes(bytes[at..at + 16].try_into().expect("16 bytes"));
        let result = bytes[at + 16..at + 32].try_into().expect("16 bytes");
        Idempotency { key, result }
    });
    let record = Record {
        partition: read_u32(bytes, 16),
        kind,
        key: &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + key_bytes],
        operand: read_u64(bytes, 24) as i64,
        value: read_u64(bytes, 32) as i64,
        bounds,
        idempotency,
    };
    if let Some(problem) = record.bounds_problem() {
        return Err(invalid(format_args!("{problem}")));
    }
    Ok(LoggedRecord {
        lsn: read_u64(bytes, 8),
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(key: &[u8]) -> Record<'_> {
        Record {
            partition: 7,
            kind: RecordKind::Add,
            key,
            operand: 5,
            value: 12,
            bounds: None,
            idempotency: None,
        }
    }

    #[test]
    fn encoding_over_old_bytes_leaves_reserved_and_padding_zero() {
        let key = [b'k'; 255];
        for key_bytes in 1..=255 {
            for (bounds, idempotency) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let record = Record {
                    bounds: bounds.then_some(Bounds {
                        floor: Some(-1),
                        ceiling: None,
                    }),
                    idempotency: idempotency.then_some(Idempotency {
                        key: 7,
                        result: [9; 16],
                    }),
                    ..sample(&key[..key_bytes])
                };
                let mut out = [0xffu8; RECORD_BYTES_MAX];
                let length = record.encode(11, &mut out);
                let content = encoded_bytes(key_bytes, bounds, idempotency) - CHECKSUM_BYTES;
                let end = RECORD_HEADER_BYTES
                    + key_bytes
                    + if bounds { BOUNDS_BYTES } else { 0 }
                    + if idempotency { IDEMPOTENCY_BYTES } else { 0 };
                assert!(
                    out[end..content].iter().all(|&b| b == 0),
                    "padding, key {key_bytes}"
                );
                assert_eq!(out[20..24], [0; 4]);
                let (decoded, used) = decode(&out).expect("decodes");
                assert_eq!((decoded.lsn, decoded.record, used), (11, record, length));
            }
        }
    }

    #[test]
    fn worked_example_is_56_bytes() {
        let mut out = [0u8; RECORD_BYTES_MAX];
        let length = sample(b"page:one").encode(3, &mut out);
        assert_eq!(length, 56);
        let (decoded, used) = decode(&out).expect("decodes");
        assert_eq!(used, 56);
        assert_eq!(decoded.lsn, 3);
        assert_eq!(decoded.record, sample(b"page:one"));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut out = [0u8; RECORD_BYTES_MAX];
        let length = sample(b"likes:42").encode(9, &mut out);
        for bit in 0..length * 8 {
            let mut copy = out;
            copy[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&copy[..length]).is_err(),
                "bit {bit} flipped undetected"
            );
        }
    }

    #[test]
    fn zero_byte_ends_and_short_input_is_incomplete() {
        assert_eq!(decode(&[0u8; 64]).unwrap_err(), DecodeError::End);
        let mut out = [0u8; RECORD_BYTES_MAX];
        let length = sample(b"k").encode(1, &mut out);
        assert_eq!(
            decode(&out[..length - 1]).unwrap_err(),
            DecodeError::Incomplete
        );
    }

    #[test]
    fn invalid_records_are_refused_before_encoding() {
        assert!(sample(b"").validate().is_err());
        assert!(sample(&[1u8; 256]).validate().is_err());
        let mut bad = sample(b"k");
        bad.kind = RecordKind::SetBounds;
        assert!(bad.validate().is_err());
        bad.bounds = Some(Bounds {
            floor: Some(3),
            ceiling: Some(2),
        });
        assert!(bad.validate().is_err());
        let mut outcome = sample(b"k");
        outcome.kind = RecordKind::Outcome;
        assert!(
            outcome.validate().is_err(),
            "an Outcome without idempotency"
        );
        outcome.idempotency = Some(Idempotency {
            key: 1,
            result: [0; 16],
        });
        assert!(outcome.validate().is_ok());
        outcome.bounds = Some(Bounds {
            floor: Some(0),
            ceiling: None,
        });
        assert!(outcome.validate().is_err(), "an Outcome with bounds");
    }

    fn any_kind() -> impl Strategy<Value = RecordKind> {
        prop_oneof![
            Just(RecordKind::Add),
            Just(RecordKind::Set),
            Just(RecordKind::Delete),
            Just(RecordKind::SetBounds),
            Just(RecordKind::Outcome),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(
            kind in any_kind(),
            key in proptest::collection::vec(any::<u8>(), 1..=255),
            partition: u32, lsn: u64, operand: i64, value: i64,
            floor in proptest::option::of(-1000i64..0), ceiling in proptest::option::of(0i64..1000),
            with_bounds: bool, idempotency in proptest::option::of(any::<(u128, [u8; 16])>()),
        ) {
            let record = Record {
                partition, kind, key: &key, operand, value,
                bounds: (kind != RecordKind::Outcome
                    && (with_bounds || kind == RecordKind::SetBounds))
                    .then_some(Bounds { floor, ceiling }),
                idempotency: idempotency
                    .or((kind == RecordKind::Outcome).then_some((7, [1; 16])))
                    .map(|(key, result)| Idempotency { key, result }),
            };
            let mut out = [0u8; RECORD_BYTES_MAX];
            let length = record.encode(lsn, &mut out);
            prop_assert_eq!(length, record.encoded_bytes());
            prop_assert_eq!(length % 8, 0);
            let (decoded, used) = decode(&out).expect("decodes");
            prop_assert_eq!(used, length);
            prop_assert_eq!(decoded.lsn, lsn);
            prop_assert_eq!(decoded.record, record);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
