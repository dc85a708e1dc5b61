//! Streaming records out of a journal from any LSN: the API replication ships
//! segments with, and tests read journals with.
//!
//! The reader holds one segment's bytes at a time (from the block holding its current
//! position to the end of the file). At the end of the last segment it answers
//! `None`; a later call re-reads from its position, so it follows a live journal. A
//! caller following a live journal must stop at the writer's `durable_lsn`: records
//! above it may still be torn or rewritten. A bad record in a segment that is not the
//! last is corruption; in the last one it is treated as "not written yet".
//!
//! Invariant: the records streamed have consecutive LSNs. Moving to the next segment,
//! its first LSN (from its name) must be the last LSN read plus one; a hole (a segment
//! moved away or lost) is [`JournalError::Corrupted`] naming the missing LSNs and both
//! files. Recovery leaves no legitimate hole behind (it sets the segments before one
//! aside), so a reader never has to tell one from a loss.

use std::path::{Path, PathBuf};

use super::record::{decode, decode_again, DecodeError, LoggedRecord, OwnedRecord};
use super::segment::{gap_reason, list_segments, read_segment_into, SegmentInfo};
use super::{journal_dir, JournalError, Lsn, BLOCK_BYTES};

/// Reads one core's journal in LSN order.
pub struct JournalReader {
    dir: PathBuf,
    segments: Vec<SegmentInfo>,
    /// Index into `segments` of the loaded segment; `None` before the first load.
    current: Option<usize>,
    /// File offset of `bytes[0]`.
    base: u64,
    bytes: Vec<u8>,
    /// Position in `bytes` of the next record.
    position: usize,
    last_lsn: Option<Lsn>,
    /// Records below this LSN are skipped.
    from_lsn: Lsn,
}

impl JournalReader {
    /// Opens core `core`'s journal under `data_dir`, positioned at its first record.
    pub fn open(data_dir: &Path, core: u32) -> Result<Self, JournalError> {
        Self::open_dir(&journal_dir(data_dir, core))
    }

    /// Opens the journal in directory `dir` directly.
    pub fn open_dir(dir: &Path) -> Result<Self, JournalError> {
        Ok(JournalReader {
            dir: dir.to_path_buf(),
            segments: list_segments(dir)?,
            current: None,
            base: 0,
            bytes: Vec::new(),
            position: 0,
            last_lsn: None,
            from_lsn: 0,
        })
    }

    /// Positions the reader so that the next record returned has an LSN of at least
    /// `lsn` (the first such record still kept in the journal).
    pub fn seek(&mut self, lsn: Lsn) -> Result<(), JournalError> {
        self.segments = list_segments(&self.dir)?;
        let index = self
            .segments
            .iter()
            .rposition(|s| s.first_lsn <= lsn)
            .unwrap_or(0);
        self.from_lsn = lsn;
        self.last_lsn = None;
        self.load(index, 0)
    }

    fn load(&mut self, index: usize, offset: u64) -> Result<(), JournalError> {
        self.current = Some(index);
        self.base = offset / BLOCK_BYTES as u64 * BLOCK_BYTES as u64;
        self.position = (offset - self.base) as usize;
        // The same buffer for every segment: a scan faults fresh memory in once.
        match self.segments.get(index) {
            Some(segment) => read_segment_into(&segment.path, self.base, &mut self.bytes)?,
            None => self.bytes.clear(),
        }
        Ok(())
    }

    /// The next record, or `None` at the (current) end of the journal.
    pub fn next_record(&mut self) -> Result<Option<LoggedRecord<'_>>, JournalError> {
        loop {
            let Some(index) = self.current else {
                self.seek(self.from_lsn)?;
                continue;
            };
            match decode(&self.bytes[self.position..]).map(|(logged, length)| (logged.lsn, length))
            {
                Ok((lsn, length)) => {
                    self.check_sequence(index, lsn)?;
                    let start = self.position;
                    self.position += length;
                    self.last_lsn = Some(lsn);
                    if lsn >= self.from_lsn {
                        // Checked above: its checksum is not computed twice.
                        return Ok(Some(decode_again(&self.bytes[start..])));
                    }
                }
                Err(stop) => {
                    if !self.advance_segment(index, &stop)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The next record with its key copied out.
    pub fn next_owned(&mut self) -> Result<Option<OwnedRecord>, JournalError> {
        Ok(self.next_record()?.map(|r| r.to_owned_record()))
    }

    fn check_sequence(&self, index: usize, lsn: Lsn) -> Result<(), JournalError> {
        let segment = &self.segments[index];
        let at_start = self.base + self.position as u64 == 0;
        let ok = match (at_start, self.last_lsn) {
            (true, _) => lsn == segment.first_lsn && self.last_lsn.is_none_or(|l| lsn > l),
            (false, Some(last)) => lsn == last + 1,
            (false, None) => lsn >= segment.first_lsn,
        };
        if ok {
            return Ok(());
        }
        Err(JournalError::Corrupted {
            path: segment.path.clone(),
            offset: self.base + self.position as u64,
            reason: format!("LSN {lsn} out of sequence (previous {:?})", self.last_lsn),
        })
    }

    /// At the end of the loaded segment's records: moves to the next segment if there
    /// is one, else re-reads the last one for new records. Returns whether to go on.
    fn advance_segment(&mut self, index: usize, stop: &DecodeError) -> Result<bool, JournalError> {
        let offset = self.base + self.position as u64;
        let Some(current) = self.segments.get(index).cloned() else {
            // The journal had no segment when listed: look again from the start.
            self.segments = list_segments(&self.dir)?;
            if self.segments.is_empty() {
                return Ok(false);
            }
            self.seek(self.from_lsn)?;
            return Ok(true);
        };
        self.segments = list_segments(&self.dir)?;
        let Some(index) = self
            .segments
            .iter()
            .position(|s| s.first_lsn == current.first_lsn)
        else {
            return Err(JournalError::Corrupted {
                path: current.path,
                offset,
                reason: "segment removed while being read (a checkpoint released it)".into(),
            });
        };
        if index + 1 < self.segments.len() {
            let at_end = self.position == self.bytes.len() || matches!(stop, DecodeError::End);
            if !at_end {
                return Err(JournalError::Corrupted {
                    path: current.path,
                    offset,
                    reason: format!("bad record before the next segment: {stop:?}"),
                });
            }
            self.check_continuity(&current, index + 1)?;
            self.load(index + 1, 0)?;
            return Ok(true);
        }
        self.load(index, offset)?;
        Ok(self.has_record_here())
    }

    /// The segment at `next` must start right after the last record read from
    /// `current`: a hole (a segment moved away or lost) is refused, naming the LSNs
    /// and both files, rather than streamed past. One comparison per segment.
    fn check_continuity(&self, current: &SegmentInfo, next: usize) -> Result<(), JournalError> {
        let next = &self.segments[next];
        let Some(last) = self.last_lsn else {
            return Ok(());
        };
        if next.first_lsn == last + 1 {
            return Ok(());
        }
        let reason = if next.first_lsn > last + 1 {
            gap_reason(
                last + 1,
                next.first_lsn - 1,
                Some(&current.path),
                &next.path,
            )
        } else {
            format!(
                "segment starts at LSN {} but {} ends at LSN {last}",
                next.first_lsn,
                current.path.display()
            )
        };
        Err(JournalError::Corrupted {
            path: next.path.clone(),
            offset: 0,
            reason,
        })
    }

    fn has_record_here(&self) -> bool {
        decode(&self.bytes[self.position..]).is_ok()
    }
}

impl Iterator for JournalReader {
    type Item = Result<OwnedRecord, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_owned().transpose()
    }
}
