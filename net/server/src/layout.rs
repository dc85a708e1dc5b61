//! Who may serve a data directory, and under which core layout its journals were
//! written.
//!
//! # The lock
//! A server holds an exclusive `flock` on `<data-dir>/lock` from before it opens the
//! directory until after its final checkpoint ([`DataDirLock`]); a second server on
//! the same directory fails to start with [`ServerError::DataDirInUse`]. Two servers
//! on one directory would each acknowledge writes the other then overwrites. The lock
//! dies with the process (`kill -9` included), so a crash never leaves it stale; the
//! file itself stays and holds the owner's pid, for the error message only.
//!
//! # The core layout
//! Each core journals the mutations of the partitions it owns (`partition % cores`),
//! and recovery replays core `k`'s journal into the partitions core `k` owns. A start
//! with another core count would replay each journal into the wrong partitions, or
//! not at all: acknowledged writes lost, or stale ones applied. So the directory
//! records the count its journals were written under, in `<data-dir>/cores`:
//!
//! ```text
//! cores <N>\n      ASCII, N in 1..=1024; written to cores.tmp, fsync'd, renamed, and
//!                  the directory fsync'd
//! ```
//!
//! (A directory from before this file infers N from its `journal/core-<k>` folders.)
//! A file naming fewer cores than those folders show is refused, naming both: it was
//! damaged or edited, and trusting it would replay only some journals.
//! When the count changes, [`migrate`] first recovers every old core's journal into
//! the partitions that core owned, then checkpoints every partition at one LSN `C`
//! above all the old journals' records, so every acknowledged mutation is in a
//! checkpoint; then it renames `journal/` to `journal.previous/<unix-ms>/` and
//! records the new count. Only then do the new cores start, with empty
//! journals that continue at `C + 1` (recovery continues above the highest
//! checkpoint), so no later recovery needs a record of an old journal.
//! A crash at any step leaves the old count recorded, and the next start migrates
//! again from the same checkpoints and journals (replay is by resulting value, so
//! repeating it changes nothing). Idempotency keys recorded before the change live in
//! the old journals: every new core reads the set-aside journals for them at start
//! (`read_idempotency` in `durability.rs`) while their newest segment is younger than
//! the idempotency window, so a retry sent across one change or several applies
//! nothing twice. A migration removes the set-aside generations that no longer hold a
//! segment inside the window. (Directories from before 2026-11-30 hold one generation
//! directly as `journal.previous/core-<k>`; both shapes are read.)

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_engine::journal::checkpoint::checkpoint_all;
use tally_engine::journal::list_segments;
use tally_engine::journal::recovery::{recover, RecoveryOptions};
use tally_engine::{DataDir, Store, CORES_FILE};

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::router::owner_of_partition;

const LOCK_FILE: &str = "lock";
const JOURNAL_DIR: &str = "journal";
const PREVIOUS_JOURNAL_DIR: &str = "journal.previous";
/// The largest core count a layout file may name.
const CORES_MAX: usize = 1024;

/// The exclusive lock on a data directory; released when dropped (or the process
/// ends). The `flock` is taken on the directory itself, which cannot be deleted or
/// replaced while it holds files: a lock on a file inside could be defeated by removing
/// the file (a second server then locks a new one). `<data-dir>/lock` only holds the
/// holder's pid, for the message a second server prints.
#[derive(Debug)]
pub struct DataDirLock {
    _directory: File,
}

impl DataDirLock {
    /// Creates `data_dir` if needed (not its parent: [`create_data_dir`]) and locks
    /// it, or says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, ServerError> {
        let io_error =
            |action: &'static str, path: &Path, source: io::Error| ServerError::DataDirIo {
                action,
                path: path.to_path_buf(),
                source,
            };
        create_data_dir(data_dir)?;
        let directory = File::open(data_dir).map_err(|e| io_error("open", data_dir, e))?;
        let path = data_dir.join(LOCK_FILE);
        let lock = || {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            let locked =
                unsafe { libc::flock(directory.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            match locked {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        };
        let in_use = |error: &io::Error| error.raw_os_error() == Some(libc::EWOULDBLOCK);
        if let Err(error) = crate::wait_for_killed_server("the data directory's lock", lock, in_use)
        {
            if in_use(&error) {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                return Err(ServerError::DataDirInUse {
                    path: data_dir.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
            return Err(io_error("lock", data_dir, error));
        }
        // Best effort: the pid only makes the error message of a second server useful.
        let _ = fs::write(&path, format!("pid {}\n", std::process::id()));
        Ok(DataDirLock {
            _directory: directory,
        })
    }
}

/// Creates the data directory if it does not exist, but never its missing parents: a
/// typo in the path, or a data volume that failed to mount, would otherwise start an
/// empty store in a directory nobody meant, and every counter would read 0. The
/// default `./tally-data` has a parent (the working directory) anyway. A path that
/// exists but is no directory is named as such.
fn create_data_dir(data_dir: &Path) -> Result<(), ServerError> {
    let layout_error = |path: &Path, message: String| ServerError::Layout {
        path: path.to_path_buf(),
        message,
    };
    match fs::metadata(data_dir) {
        Ok(metadata) if metadata.is_dir() => return Ok(()),
        Ok(_) => {
            let message = "exists and is not a directory (--data-dir names a directory)";
            return Err(layout_error(data_dir, message.to_string()));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::DataDirIo {
                action: "look up",
                path: data_dir.to_path_buf(),
                source,
            })
        }
    }
    match fs::create_dir(data_dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty());
            let parent = parent.unwrap_or(Path::new("."));
            let message = format!(
                "does not exist, so the data directory {} cannot be created in it (a typo, \
                 or a volume not mounted?); tallyd creates the data directory but not its \
                 parents: create them first",
                data_dir.display()
            );
            Err(layout_error(parent, message))
        }
        Err(source) => Err(ServerError::DataDirIo {
            action: "create",
            path: data_dir.to_path_buf(),
            source,
        }),
    }
}

/// The core count the journals of `data_dir` were written under: from the layout
/// file, else from the `journal/core-<k>` folders; `None` for a directory without
/// journals.
fn recorded_cores(data_dir: &Path) -> Result<Option<usize>, ServerError> {
    let path = data_dir.join(CORES_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let cores = tally_engine::parse_core_count(&text)
                .map(|cores| cores as usize)
                .filter(|cores| *cores <= CORES_MAX);
            return match cores {
                Some(cores) => check_against_journals(data_dir, &path, cores).map(Some),
                None => Err(ServerError::Layout {
                    path,
                    message: format!(
                        "expected \"cores N\" with N in 1..={CORES_MAX}, found {text:?}"
                    ),
                }),
            };
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::DataDirIo {
                action: "read",
                path,
                source,
            })
        }
    }
    journal_core_count(data_dir)
}

/// Refuses a `cores` file that names fewer cores than there are journals: trusting
/// it would replay only some journals and set the others aside, losing their
/// acknowledged writes. (More cores than journals is normal: a core that never wrote.)
fn check_against_journals(
    data_dir: &Path,
    path: &Path,
    cores: usize,
) -> Result<usize, ServerError> {
    match journal_core_count(data_dir)? {
        Some(written) if written > cores => Err(ServerError::Layout {
            path: path.to_path_buf(),
            message: format!(
                "it says {cores} core(s), but {} exists: the journals were written by at \
                 least {written} cores. The file is damaged or was edited; write the core \
                 count the server last ran with into it (\"cores N\"), or remove it to \
                 let the journals decide",
                data_dir
                    .join(JOURNAL_DIR)
                    .join(format!("core-{}", written - 1))
                    .display()
            ),
        }),
        _ => Ok(cores),
    }
}

/// The core count the journals were written under, from their `journal/core-<k>`
/// folders: the highest `k` plus one, or `None` without any.
fn journal_core_count(data_dir: &Path) -> Result<Option<usize>, ServerError> {
    let journals = data_dir.join(JOURNAL_DIR);
    let entries = match fs::read_dir(&journals) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ServerError::DataDirIo {
                action: "list",
                path: journals,
                source,
            })
        }
    };
    let mut cores = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|name| name.strip_prefix("core-"))
            .and_then(|index| index.parse::<usize>().ok());
        if let Some(index) = index {
            // A name past any core count (damage, a stray folder) is not a core:
            // counting it would make the count wrap or exceed what can run.
            let Some(count) = index.checked_add(1).filter(|&count| count <= CORES_MAX) else {
                return Err(ServerError::InvalidConfig(format!(
                    "{}: a journal folder core-{index} is beyond the most cores a layout \
                     records ({CORES_MAX}): remove or rename it",
                    journals.display()
                )));
            };
            cores = Some(cores.unwrap_or(0).max(count));
        }
    }
    Ok(cores)
}

/// Records `cores` as the directory's layout, durably.
fn record_cores(data_dir: &Path, cores: usize) -> Result<(), ServerError> {
    let path = data_dir.join(CORES_FILE);
    let temporary = data_dir.join(format!("{CORES_FILE}.tmp"));
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::DataDirIo {
            action,
            path,
            source,
        }
    };
    let mut file = File::create(&temporary).map_err(io_error("create", &temporary))?;
    writeln!(file, "cores {cores}").map_err(io_error("write", &temporary))?;
    file.sync_all().map_err(io_error("sync", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("rename", &temporary))?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| ServerError::DataDirIo {
            action: "sync",
            path: dir.to_path_buf(),
            source,
        })
}

/// Makes the directory's journals match `config.cores` before any core starts: see
/// the module doc. Returns the previous core count if it migrated.
pub fn migrate(config: &ServerConfig, dir: &DataDir) -> Result<Option<usize>, ServerError> {
    let data_dir = dir.path();
    let cores = config.cores;
    let old = match recorded_cores(data_dir)? {
        Some(old) if old == cores => return Ok(None),
        None => return record_cores(data_dir, cores).map(|()| None),
        Some(old) => old,
    };
    tracing::warn!(
        from = old,
        to = cores,
        "the core count changed: checkpointing every partition under the old layout first"
    );
    let options = RecoveryOptions {
        recover_to_corruption: config.journal.recover_to_corruption,
    };
    let engine_error = |core| move |source| ServerError::Engine { core, source };
    // Each old core's journal into the partitions it owned, closed clean.
    let mut next_lsn = 1;
    for core in 0..old {
        let owned = (0..dir.partition_count()).filter(|p| owner_of_partition(*p, old) == core);
        let mut store = Store::open(dir, owned).map_err(engine_error(core))?;
        let core_id = u32::try_from(core).expect("a layout has at most CORES_MAX cores");
        let report = recover(data_dir, &mut store, core_id, &options).map_err(|source| {
            // A record for a partition the old core did not own means the recorded
            // count is not the one the journals were written under; anything else (a
            // full disk, damage) is said by the error itself.
            let wrong_count = matches!(
                source,
                tally_engine::journal::JournalError::ReplayRefused {
                    source: tally_engine::OpError::NotOwned { .. },
                    ..
                }
            );
            if wrong_count {
                tracing::error!(
                    core,
                    recorded = old,
                    path = %data_dir.join(CORES_FILE).display(),
                    "an old core's journal holds records of partitions it did not own: the \
                     directory's cores file does not hold the count the journals were \
                     written under"
                );
            }
            ServerError::Journal { core, source }
        })?;
        next_lsn = next_lsn.max(report.next_lsn);
        store.close_clean().map_err(engine_error(core))?;
        tracing::info!(
            core,
            of = old,
            records_replayed = report.records_replayed,
            "old core's journal recovered"
        );
    }
    // Every partition checkpointed at one LSN above all the old journals' records:
    // every new core's journal starts right above it (recovery continues above the
    // highest checkpoint), so no later recovery needs a record of an old journal.
    let store = Store::open(dir, 0..dir.partition_count()).map_err(engine_error(0))?;
    checkpoint_all(data_dir, &store, next_lsn - 1)
        .map_err(|source| ServerError::Journal { core: 0, source })?;
    store.close_clean().map_err(engine_error(0))?;
    let journals = data_dir.join(JOURNAL_DIR);
    let previous: PathBuf = data_dir.join(PREVIOUS_JOURNAL_DIR);
    let io_error = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::DataDirIo {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(&previous).map_err(io_error("create", &previous))?;
    let window = Duration::from_secs(config.idempotency_window_s);
    for generation in previous_generations(data_dir) {
        if !journal_dirs(&generation)
            .iter()
            .any(|dir| written_within(dir, window))
        {
            fs::remove_dir_all(&generation).map_err(io_error("remove", &generation))?;
        }
    }
    if journals.exists() {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut generation = previous.join(since_epoch.as_millis().to_string());
        while generation.exists() {
            let mut name = generation.into_os_string();
            name.push("+");
            generation = PathBuf::from(name);
        }
        fs::rename(&journals, &generation).map_err(io_error("set aside", &journals))?;
        sync_dir(&previous)?;
    }
    sync_dir(data_dir)?;
    record_cores(data_dir, cores)?;
    tracing::warn!(
        from = old,
        to = cores,
        previous = %previous.display(),
        "core count changed: every partition is checkpointed; the old journals were set aside \
         (read at start for idempotency keys while inside the window)"
    );
    Ok(Some(old))
}

/// The journal folders (`core-<k>`) that core-count changes set aside and that may
/// hold idempotency records still inside a window of `window_s` (see the module doc).
pub fn previous_journals_in_window(data_dir: &Path, window_s: u64) -> Vec<PathBuf> {
    let window = Duration::from_secs(window_s);
    let mut dirs: Vec<PathBuf> = previous_generations(data_dir)
        .iter()
        .flat_map(|generation| journal_dirs(generation))
        .filter(|dir| written_within(dir, window))
        .collect();
    dirs.sort();
    dirs
}

/// Each set-aside generation: a folder of `core-<k>` journals (or, from older builds,
/// one such journal folder directly under `journal.previous/`).
fn previous_generations(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(data_dir.join(PREVIOUS_JOURNAL_DIR)) else {
        return Vec::new();
    };
    let mut generations: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    generations.sort();
    generations
}

/// The journal folders of one generation.
fn journal_dirs(generation: &Path) -> Vec<PathBuf> {
    let is_journal = |path: &Path| {
        path.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("core-"))
    };
    if is_journal(generation) {
        return vec![generation.to_path_buf()];
    }
    let Ok(entries) = fs::read_dir(generation) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && is_journal(path))
        .collect()
}

/// Whether journal folder `dir`'s newest segment was written less than `window` ago
/// (a record's time is at most its write's, so an older folder holds no record inside
/// the window). A clock that went back counts as recent.
fn written_within(dir: &Path, window: Duration) -> bool {
    let newest = list_segments(dir)
        .ok()
        .and_then(|mut segments| segments.pop());
    let written = newest.and_then(|segment| fs::metadata(&segment.path).ok()?.modified().ok());
    written.is_some_and(|written| written.elapsed().map_or(true, |age| age < window))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stray journal folder numbered past any core count is refused, naming it, not
    /// counted (`usize::MAX + 1` wrapped to a count of 0 before).
    #[test]
    fn a_journal_folder_past_any_core_count_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let journals = dir.path().join(JOURNAL_DIR);
        fs::create_dir_all(journals.join("core-1")).unwrap();
        assert_eq!(journal_core_count(dir.path()).unwrap(), Some(2));
        fs::create_dir(journals.join(format!("core-{}", usize::MAX))).unwrap();
        let error = journal_core_count(dir.path()).unwrap_err().to_string();
        assert!(error.contains(&format!("core-{}", usize::MAX)), "{error}");
    }
}
