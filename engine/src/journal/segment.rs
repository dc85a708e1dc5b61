//! Segment files: naming, listing, scanning and judging how a segment ends.
//!
//! A segment is named `segment-<first LSN as 20 decimal digits>.log`, so names sort in
//! LSN order. Scanning decodes records from offset 0 until the bytes end, a zero byte
//! (padding) starts, or a record fails its checks. How the scan stopped is judged by
//! [`judge_stop`]:
//! - end of file, or zero padding with no valid record after it: a clean end;
//! - otherwise, in the last segment, when no valid record follows the damage: a torn
//!   tail (the last commit's write stopped part way), to be truncated;
//! - anything else (damage in an earlier segment, or any valid record after the
//!   damage): corruption in the middle, reported with file and offset.
//!
//! Why any valid record after the damage means corruption: only the last commit can
//! be torn, and a tear loses the end of what that write carried, so nothing valid
//! follows it. A valid record after damaged bytes was written after them, by the same
//! commit or a later one; a later one only started once the damaged one was durable
//! and acknowledged. Truncating there (as a former rule did for damage within 4 MiB of
//! the end) would silently drop acknowledged records after a media bit flip. The one
//! tear this refuses is a power loss that persisted the sectors of the last write out
//! of order; `RecoveryOptions::recover_to_corruption` then cuts at the damage, which
//! loses only that unacknowledged commit.
//!
//! A valid record that breaks the LSN sequence is corruption wherever it is: a torn
//! write cannot produce one with a good checksum.
//!
//! Across segments the names carry the sequence: a segment's first LSN must be the
//! last LSN of the segment before plus one. That is checked once per segment, by
//! recovery (`recovery::scan_journal_needing`) and by `JournalReader`, which name a
//! hole with [`gap_reason`]; nothing here costs anything per record.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::record::{decode, DecodeError, LoggedRecord, RECORD_BYTES_MIN, RECORD_MAGIC};
use super::{JournalError, Lsn};

const NAME_PREFIX: &str = "segment-";
const NAME_SUFFIX: &str = ".log";
const LSN_DIGITS: usize = 20;

/// A segment file and the LSN its name says it starts at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub first_lsn: Lsn,
    pub path: PathBuf,
}

/// The path of the segment starting at `first_lsn` in journal directory `dir`.
pub fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!(
        "{NAME_PREFIX}{first_lsn:0LSN_DIGITS$}{NAME_SUFFIX}"
    ))
}

fn parse_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != LSN_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of journal directory `dir`, in LSN order. A missing directory has none;
/// files with other names (such as set-aside `.corrupt` files) are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentInfo>, JournalError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(JournalError::io("list journal directory", dir, error)),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("list journal directory", dir, e))?;
        let name = entry.file_name();
        if let Some(first_lsn) = name.to_str().and_then(parse_name) {
            segments.push(SegmentInfo {
                first_lsn,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Reads a segment file from `offset` to its end.
pub fn read_segment_from(path: &Path, offset: u64) -> Result<Vec<u8>, JournalError> {
    let mut bytes = Vec::new();
    read_segment_into(path, offset, &mut bytes)?;
    Ok(bytes)
}

/// Like [`read_segment_from`], into `bytes` (cleared first), reusing its memory: a scan
/// of many segments then touches fresh memory once, not once per segment (first
/// touches of fresh pages, zeroed by the kernel, cost more than the copy itself).
pub fn read_segment_into(
    path: &Path,
    offset: u64,
    bytes: &mut Vec<u8>,
) -> Result<(), JournalError> {
    bytes.clear();
    let mut file = File::open(path).map_err(|e| JournalError::io("open segment", path, e))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| JournalError::io("seek segment", path, e))?;
    // Sized up front: growing a 64 MiB vector by doubling would copy it over and over.
    let length = file
        .metadata()
        .map_or(0, |m| m.len())
        .saturating_sub(offset);
    bytes.reserve(usize::try_from(length).unwrap_or(0));
    file.read_to_end(bytes)
        .map_err(|e| JournalError::io("read segment", path, e))?;
    Ok(())
}

/// A whole segment file mapped read-only, for a scan: no copy, and the kernel reads it
/// ahead as the scan advances. An empty file maps to no bytes.
pub struct MappedSegment {
    map: Option<memmap2::Mmap>,
}

impl MappedSegment {
    pub fn open(path: &Path) -> Result<MappedSegment, JournalError> {
        let file = File::open(path).map_err(|e| JournalError::io("open segment", path, e))?;
        let length = file
            .metadata()
            .map_err(|e| JournalError::io("stat segment", path, e))?
            .len();
        if length == 0 {
            return Ok(MappedSegment { map: None });
        }
        // SAFETY: recovery owns the journal directory: no other process or thread writes
        // or truncates this file while the map is alive (a torn tail is cut only after
        // the scan, and bytes past the cut are not read again through this map).
        let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
            .map_err(|e| JournalError::io("map segment", path, e))?;
        Ok(MappedSegment { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Cuts a segment at `offset` (a torn tail) and makes the cut durable.
pub fn truncate_segment(path: &Path, offset: u64) -> Result<(), JournalError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io("open segment to truncate", path, e))?;
    file.set_len(offset)
        .map_err(|e| JournalError::io("truncate segment", path, e))?;
    file.sync_all()
        .map_err(|e| JournalError::io("sync truncated segment", path, e))
}

/// fdatasync of a segment, so what recovery found becomes durable before new records.
pub fn sync_segment(path: &Path) -> Result<(), JournalError> {
    let file = File::open(path).map_err(|e| JournalError::io("open segment", path, e))?;
    file.sync_data()
        .map_err(|e| JournalError::io("sync segment", path, e))
}

/// How a scan of a segment stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// All records read; what follows (if anything) is zero padding.
    Clean,
    /// The last commit was torn at `offset`: truncate there.
    TornTail { offset: u64, reason: String },
    /// Damage at `offset` with valid records after it.
    Corrupted { offset: u64, reason: String },
}

/// What scanning one segment found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub last_lsn: Option<Lsn>,
    pub record_count: u64,
    /// Offset just after the last good record.
    pub end: u64,
    pub verdict: Verdict,
}

/// Decodes every record of segment `info` (content `bytes`), calling `visit` on each,
/// and judges how it ends. `previous_lsn` is the last LSN of the segments before it.
pub fn scan_segment<'b, F>(
    info: &SegmentInfo,
    bytes: &'b [u8],
    previous_lsn: Option<Lsn>,
    is_last: bool,
    mut visit: F,
) -> Result<SegmentScan, JournalError>
where
    F: FnMut(&LoggedRecord<'b>) -> Result<(), JournalError>,
{
    let corrupted = |offset: usize, reason: String| JournalError::Corrupted {
        path: info.path.clone(),
        offset: offset as u64,
        reason,
    };
    if previous_lsn.is_some_and(|last| info.first_lsn <= last) {
        return Err(corrupted(
            0,
            format!(
                "segment starts at LSN {} but LSN {} came before",
                info.first_lsn,
                previous_lsn.unwrap_or(0)
            ),
        ));
    }
    let mut offset = 0usize;
    let mut last_lsn = None;
    let mut record_count = 0u64;
    let stop = loop {
        match decode(&bytes[offset..]) {
            Ok((ref logged, length)) => {
                let expected = last_lsn.map_or(info.first_lsn, |lsn: Lsn| lsn + 1);
                if logged.lsn != expected {
                    return Err(corrupted(
                        offset,
                        format!("LSN {} where {expected} was expected", logged.lsn),
                    ));
                }
                visit(logged)?;
                last_lsn = Some(logged.lsn);
                record_count += 1;
                offset += length;
            }
            Err(stop) => break stop,
        }
    };
    let verdict = judge_stop(bytes, offset, &stop, last_lsn.or(previous_lsn), is_last);
    if let Verdict::Corrupted { offset, reason } = &verdict {
        return Err(corrupted(*offset as usize, reason.clone()));
    }
    Ok(SegmentScan {
        last_lsn,
        record_count,
        end: offset as u64,
        verdict,
    })
}

/// Judges a scan that stopped at `offset` for `stop` (module doc has the rules).
pub fn judge_stop(
    bytes: &[u8],
    offset: usize,
    stop: &DecodeError,
    last_lsn: Option<Lsn>,
    is_last: bool,
) -> Verdict {
    if offset == bytes.len() {
        return Verdict::Clean;
    }
    let later = find_valid_after(bytes, offset + 8, last_lsn);
    let reason = match stop {
        DecodeError::End if later.is_none() => return Verdict::Clean,
        DecodeError::End => "zero bytes where a record should start".to_string(),
        DecodeError::Incomplete => "record cut short by the end of the file".to_string(),
        DecodeError::Invalid(reason) => reason.clone(),
    };
    if !is_last {
        let after = later.map_or(String::new(), |at| format!(", valid record at offset {at}"));
        return Verdict::Corrupted {
            offset: offset as u64,
            reason: format!("{reason} in a segment that is not the last{after}"),
        };
    }
    match later {
        Some(at) => Verdict::Corrupted {
            offset: offset as u64,
            reason: format!("{reason}, followed by a valid record at offset {at}"),
        },
        None => Verdict::TornTail {
            offset: offset as u64,
            reason,
        },
    }
}

/// The offset of the first valid record at or after `offset` with an LSN above
/// `last_lsn`. Records start at multiples of 8, so only those offsets are tried.
fn find_valid_after(bytes: &[u8], offset: usize, last_lsn: Option<Lsn>) -> Option<usize> {
    let mut at = offset.div_ceil(8) * 8;
    while at + RECORD_BYTES_MIN <= bytes.len() {
        if bytes[at] == RECORD_MAGIC {
            if let Ok((logged, _)) = decode(&bytes[at..]) {
                if last_lsn.is_none_or(|last| logged.lsn > last) {
                    return Some(at);
                }
            }
        }
        at += 8;
    }
    None
}

/// The valid records found anywhere in `bytes` (a file set aside after damage, whose
/// records need not follow each other): how many, and the highest LSN among them.
/// Records start at multiples of 8, so only those offsets are tried; a rare path, only
/// run on set-aside files.
pub fn valid_records_in(bytes: &[u8]) -> (u64, Option<Lsn>) {
    let mut count = 0;
    let mut lsn_max = None;
    let mut at = 0;
    while at + RECORD_BYTES_MIN <= bytes.len() {
        if bytes[at] == RECORD_MAGIC {
            if let Ok((logged, length)) = decode(&bytes[at..]) {
                count += 1;
                lsn_max = lsn_max.max(Some(logged.lsn));
                at += length;
                continue;
            }
        }
        at += 8;
    }
    (count, lsn_max)
}

/// The last LSN of records packed from offset 0 of `bytes` (already checked by a scan).
pub fn last_lsn_in(bytes: &[u8]) -> Option<Lsn> {
    let mut at = 0;
    let mut last = None;
    while let Ok((logged, length)) = decode(&bytes[at..]) {
        last = Some(logged.lsn);
        at += length;
    }
    last
}

/// Bytes from `offset` up to the last non-zero byte of `bytes`: how much of a cut was
/// data rather than the zeros written ahead of the commits.
pub fn data_bytes_from(bytes: &[u8], offset: usize) -> u64 {
    let tail = bytes.get(offset..).unwrap_or(&[]);
    tail.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last as u64 + 1)
}

/// The reason naming LSNs `first..=last`, missing between segment `before` (if any) and
/// segment `after`.
pub fn gap_reason(first: Lsn, last: Lsn, before: Option<&Path>, after: &Path) -> String {
    match before {
        Some(before) => format!(
            "LSNs {first}..={last} are missing from the journal: {} ends at LSN {} and {} starts at LSN {}",
            before.display(),
            first - 1,
            after.display(),
            last + 1
        ),
        None => format!(
            "LSNs {first}..={last} are missing from the journal: the first segment, {}, starts at LSN {} but the checkpoints need every record from LSN {first}",
            after.display(),
            last + 1
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::{Record, RecordKind};
    use crate::journal::{BLOCK_BYTES, COMMIT_BYTES_MAX};

    fn segment_bytes(lsns: std::ops::RangeInclusive<Lsn>) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut out = [0u8; 512];
        for lsn in lsns {
            let record = Record {
                partition: 1,
                kind: RecordKind::Add,
                key: b"key",
                operand: 1,
                value: lsn as i64,
                bounds: None,
                idempotency: None,
            };
            let length = record.encode(lsn, &mut out);
            bytes.extend_from_slice(&out[..length]);
        }
        bytes.resize(bytes.len().div_ceil(BLOCK_BYTES) * BLOCK_BYTES, 0);
        bytes
    }

    fn info() -> SegmentInfo {
        SegmentInfo {
            first_lsn: 1,
            path: PathBuf::from("segment-1"),
        }
    }

    #[test]
    fn names_round_trip_and_sort() {
        let path = segment_path(Path::new("/j"), 42);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "segment-00000000000000000042.log");
        assert_eq!(parse_name(name), Some(42));
        assert_eq!(parse_name("segment-42.log"), None);
        assert_eq!(parse_name("segment-00000000000000000042.log.corrupt"), None);
    }

    #[test]
    fn padding_is_a_clean_end() {
        let bytes = segment_bytes(1..=10);
        let scan = scan_segment(&info(), &bytes, None, false, |_| Ok(())).unwrap();
        assert_eq!(scan.last_lsn, Some(10));
        assert_eq!(scan.verdict, Verdict::Clean);
    }

    #[test]
    fn damage_at_the_tail_of_the_last_segment_is_torn() {
        let mut bytes = segment_bytes(1..=10);
        bytes[9 * 56 + 20] ^= 4;
        let scan = scan_segment(&info(), &bytes, None, true, |_| Ok(())).unwrap();
        assert_eq!(scan.last_lsn, Some(9));
        assert!(matches!(
            scan.verdict,
            Verdict::TornTail { offset: 504, .. }
        ));
        let error = scan_segment(&info(), &bytes, None, false, |_| Ok(())).unwrap_err();
        assert!(matches!(error, JournalError::Corrupted { offset: 504, .. }));
    }

    #[test]
    fn damage_before_valid_records_is_corruption_even_near_the_end() {
        let mut bytes = segment_bytes(1..=10);
        bytes[8 * 56 + 20] ^= 4;
        let error = scan_segment(&info(), &bytes, None, true, |_| Ok(())).unwrap_err();
        assert!(matches!(error, JournalError::Corrupted { offset: 448, .. }));
    }

    #[test]
    fn damage_far_before_valid_records_is_corruption() {
        let count = (COMMIT_BYTES_MAX / 56 + 200) as u64;
        let mut bytes = segment_bytes(1..=count);
        bytes[56 * 3 + 30] ^= 1;
        let error = scan_segment(&info(), &bytes, None, true, |_| Ok(())).unwrap_err();
        match error {
            JournalError::Corrupted { offset, .. } => assert_eq!(offset, 168),
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
