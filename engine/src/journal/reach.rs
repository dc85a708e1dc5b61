//! The reach of a core's journal: an LSN known durable, recorded outside the journal,
//! so that recovery notices when the newest segments (or the whole journal directory)
//! are gone.
//!
//! Recovery checks that consecutive segments continue each other, so a missing middle
//! segment is seen. Nothing in the segments themselves says where the journal ended:
//! without this file, losing the newest segments looks like a journal that simply ended
//! earlier, and acknowledged mutations would vanish without a word.
//!
//! # Layout
//! ```text
//! <data-dir>/journal-reach/core-<N>        32 bytes, little-endian (an LSN stamp,
//!                                          `super::stamp`, owner = the core):
//! offset size field
//!      0    8 magic "TLYREACH"
//!      8    4 core
//!     12    4 reserved, zero
//!     16    8 reach LSN: every record up to it was durable in core N's journal
//!     24    8 xxh3_64 of bytes 0..24
//! ```
//! It lives beside `journal/`, not in it, so that losing the journal directory does not
//! lose the record of it.
//!
//! # When it is written
//! The writer records the last LSN of the first commit that becomes durable in each
//! segment it starts, right after that commit's fdatasync succeeded, and again after
//! a commit that becomes durable [`REACH_REFRESH`] or more after the last record:
//! at most once per segment (64 MiB by default) plus once per 5 s of writing, so its
//! cost (one 32-byte write and one fdatasync, blocking the core for about 0.3 ms
//! here) stays below a thousandth of the core's time. The refresh bounds what a
//! newest segment truncated or damaged outside a crash can lose unnoticed to the last
//! 5 s of records; a segment's first commit alone left all of a 64 MiB segment
//! after it unchecked. The first time the file is written to `core-<N>.tmp`,
//! fsync'd, renamed and its directory fsync'd; later it is overwritten in place (one
//! sector, written atomically under the journal's media assumption) and fdatasync'd.
//! A failure to write it fails nothing: the records are durable either way, only the
//! check is weaker until the next segment records it again.
//!
//! # Invariant
//! The reach LSN was durable when it was recorded, so any journal that recovery finds
//! must reach it, unless no partition needs those records any more (every checkpoint
//! covers them: after a core-count migration, or after `--recover-to-corruption`
//! checkpointed every partition above the records it lost). A crash can never make it
//! wrong: a segment created but never committed to, or a commit never made durable,
//! was never recorded, and a torn tail only ever loses records that were not durable.
//! So recovery refuses to start when the journal ends below the reach and some
//! partition still needs the records in between (see `recovery`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::stamp::{self, StampError};
use super::writer::create_dir_durably;
use super::{JournalError, Lsn};

const REACH_DIR: &str = "journal-reach";
/// How old the recorded reach may grow while commits become durable.
pub const REACH_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);
const REACH_MAGIC: &[u8; 8] = b"TLYREACH";
/// The file is a stamp (`super::stamp`): one write of it stays inside one sector.
const REACH_BYTES: usize = stamp::STAMP_BYTES;

/// The reach file of core `core` under `data_dir`.
pub fn reach_path(data_dir: &Path, core: u32) -> PathBuf {
    data_dir.join(REACH_DIR).join(format!("core-{core}"))
}

fn encode(core: u32, lsn: Lsn) -> [u8; REACH_BYTES] {
    stamp::encode(REACH_MAGIC, core, lsn)
}

/// The reach LSN recorded for core `core`, if the file exists.
pub fn read_reach(data_dir: &Path, core: u32) -> Result<Option<Lsn>, JournalError> {
    let path = reach_path(data_dir, core);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(JournalError::io("read journal reach", &path, error)),
    };
    let lsn = stamp::decode(&bytes, REACH_MAGIC, core).map_err(|error| {
        let offset = if matches!(error, StampError::Range(_)) {
            16
        } else {
            0
        };
        JournalError::Corrupted {
            path: path.clone(),
            offset,
            reason: error.reason("journal reach", "reach of another core"),
        }
    })?;
    Ok(Some(lsn))
}

/// The writer's handle on its reach file.
pub(crate) struct ReachFile {
    data_dir: PathBuf,
    core: u32,
    /// Open once the file exists (after the first record).
    file: Option<File>,
}

impl ReachFile {
    pub(crate) fn new(data_dir: &Path, core: u32) -> ReachFile {
        ReachFile {
            data_dir: data_dir.to_path_buf(),
            core,
            file: None,
        }
    }

    /// Records `lsn` (durable now) durably; see the module doc.
    pub(crate) fn record(&mut self, lsn: Lsn) -> Result<(), JournalError> {
        let path = reach_path(&self.data_dir, self.core);
        let bytes = encode(self.core, lsn);
        if self.file.is_none() {
            match OpenOptions::new().write(true).open(&path) {
                Ok(file) => self.file = Some(file),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    self.file = Some(create(&path, &bytes)?);
                    return Ok(());
                }
                Err(error) => return Err(JournalError::io("open journal reach", &path, error)),
            }
        }
        let file = self.file.as_ref().expect("opened above");
        file.write_all_at(&bytes, 0)
            .and_then(|()| file.sync_data())
            .map_err(|error| JournalError::io("write journal reach", &path, error))
    }
}

/// Creates the reach file at `path` holding `bytes`, durably (temporary file, fsync,
/// rename, directory fsync), and returns it open for the next records (a rename keeps
/// the open file: it is the same inode under its final name).
fn create(path: &Path, bytes: &[u8; REACH_BYTES]) -> Result<File, JournalError> {
    let dir = path.parent().expect("a reach file has a directory");
    create_dir_durably(dir)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let file = File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()?;
            Ok(file)
        })
        .map_err(|error| JournalError::io("write journal reach", &temporary, error))?;
    std::fs::rename(&temporary, path)
        .map_err(|error| JournalError::io("rename journal reach", &temporary, error))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| JournalError::io("sync directory", dir, error))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_reach_reads_back_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_reach(dir.path(), 3).unwrap(), None);
        let mut reach = ReachFile::new(dir.path(), 3);
        reach.record(41).unwrap();
        assert_eq!(read_reach(dir.path(), 3).unwrap(), Some(41));
        reach.record(9_000).unwrap();
        assert_eq!(read_reach(dir.path(), 3).unwrap(), Some(9_000));
        let path = reach_path(dir.path(), 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), REACH_BYTES as u64);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[17] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let error = read_reach(dir.path(), 3).unwrap_err();
        assert!(matches!(error, JournalError::Corrupted { .. }), "{error}");
        assert!(matches!(read_reach(dir.path(), 2), Ok(None)));
    }
}
