//! LSN stamps: the 32-byte sealed record of one LSN that a small file outside the
//! journal keeps for one owner. A checkpoint's `journal-position` (owner: its
//! partition, LSN: the journal it covers) and a core's journal reach (owner: the core,
//! LSN: a durable one) are both stamps, with their own magic.
//!
//! # Layout (little-endian)
//! ```text
//! offset size field
//!      0    8 magic, naming the kind of file
//!      8    4 owner
//!     12    4 reserved: written zero, not read (the checksum covers it)
//!     16    8 LSN
//!     24    8 xxh3_64 of bytes 0..24
//! ```
//! Invariant: a stamp that decodes was written whole for that kind and owner, and its
//! LSN is below [`LSN_LIMIT`]: recovery continues the journal above the LSNs it reads
//! (`+ 1`, and above the reach), so an LSN near `u64::MAX` would wrap. No journal comes
//! near the limit (2^62 records at 10 million a second take 14,000 years), so a stamp
//! above it was crafted or damaged in a way its checksum missed, and is refused.

use super::Lsn;

/// The size of a stamp: one write of it stays inside one 512-byte sector.
pub(crate) const STAMP_BYTES: usize = 32;
const _: () = assert!(STAMP_BYTES <= 512);

/// Every LSN read from a file must lie below this: continuing above it (`+ 1`, or a
/// reach plus the records written since) can then never wrap a `u64`.
pub(crate) const LSN_LIMIT: Lsn = crate::partition::LSN_LIMIT;

/// Why bytes are not a stamp of the wanted kind and owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StampError {
    /// Another length or magic: not this kind of file.
    Kind,
    /// The checksum does not match: damaged.
    Checksum,
    /// A whole stamp of this kind, for another owner.
    Owner,
    /// A whole stamp whose LSN is at or above [`LSN_LIMIT`].
    Range(Lsn),
}

/// The stamp of `lsn` for `owner`, of the kind `magic` names.
pub(crate) fn encode(magic: &[u8; 8], owner: u32, lsn: Lsn) -> [u8; STAMP_BYTES] {
    let mut bytes = [0u8; STAMP_BYTES];
    bytes[0..8].copy_from_slice(magic);
    bytes[8..12].copy_from_slice(&owner.to_le_bytes());
    bytes[16..24].copy_from_slice(&lsn.to_le_bytes());
    let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..24]);
    bytes[24..32].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

/// The LSN `bytes` stamp for `owner`, if they are a whole stamp of the kind `magic`
/// names.
pub(crate) fn decode(bytes: &[u8], magic: &[u8; 8], owner: u32) -> Result<Lsn, StampError> {
    if bytes.len() != STAMP_BYTES || &bytes[0..8] != magic {
        return Err(StampError::Kind);
    }
    let stored = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    if xxhash_rust::xxh3::xxh3_64(&bytes[..24]) != stored {
        return Err(StampError::Checksum);
    }
    if u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) != owner {
        return Err(StampError::Owner);
    }
    let lsn = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if lsn >= LSN_LIMIT {
        return Err(StampError::Range(lsn));
    }
    Ok(lsn)
}

impl StampError {
    /// Why the file is refused, in words for the operator.
    pub(crate) fn reason(self, kind: &str, other_owner: &str) -> String {
        match self {
            StampError::Kind => format!("not a {kind} file"),
            StampError::Checksum => "checksum mismatch".to_string(),
            StampError::Owner => other_owner.to_string(),
            StampError::Range(lsn) => format!(
                "LSN {lsn} is at or above 2^62, beyond any journal: continuing above it \
                 would wrap the LSNs; the file was crafted or damaged"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_only_as_its_kind_and_owner() {
        let bytes = encode(b"TESTSTMP", 7, 123_456);
        assert_eq!(decode(&bytes, b"TESTSTMP", 7), Ok(123_456));
        assert_eq!(decode(&bytes, b"OTHERKND", 7), Err(StampError::Kind));
        assert_eq!(decode(&bytes[..31], b"TESTSTMP", 7), Err(StampError::Kind));
        assert_eq!(decode(&bytes, b"TESTSTMP", 8), Err(StampError::Owner));
        let mut damaged = bytes;
        damaged[17] ^= 1;
        assert_eq!(decode(&damaged, b"TESTSTMP", 7), Err(StampError::Checksum));
    }

    #[test]
    fn a_stamp_near_the_end_of_the_lsns_is_refused() {
        assert_eq!(
            decode(&encode(b"TESTSTMP", 7, LSN_LIMIT - 1), b"TESTSTMP", 7),
            Ok(LSN_LIMIT - 1)
        );
        for lsn in [LSN_LIMIT, u64::MAX - 1, u64::MAX] {
            let bytes = encode(b"TESTSTMP", 7, lsn);
            assert_eq!(decode(&bytes, b"TESTSTMP", 7), Err(StampError::Range(lsn)));
        }
    }
}
