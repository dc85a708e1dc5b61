//! File descriptors as a limited resource: the process limit, and what the accept loops
//! do when it is reached.
//!
//! Every connection costs one descriptor, and so do the listeners, the journals, the
//! io_uring rings and their eventfds. At start [`raise_open_files_limit`] raises the
//! soft `RLIMIT_NOFILE` to the hard limit (as Redis does); if the connection limit plus
//! [`descriptors_reserved`] still does not fit, it lowers the connection limit (as Redis
//! lowers `maxclients`) and warns: connections beyond it are answered `ServerBusy`, and
//! the journal is not the one to fail when it needs a new segment file.
//!
//! When `accept` fails with `EMFILE`/`ENFILE` the connection stays in the listen queue:
//! retrying at once spins, and not retrying leaves the client hanging. Each accept loop
//! keeps a [`SpareDescriptor`] (an open `/dev/null`): it closes it, accepts the waiting
//! connection into the freed slot, answers it `ServerBusy`, closes it, and opens the
//! spare again. If that fails too (another thread took the slot), the loop backs off
//! for [`ACCEPT_BACKOFF`]. Such failures are logged at most once per
//! [`ACCEPT_ERROR_LOG_INTERVAL`], with the count of those that were not
//! (`durability::SampledLog`).

use std::fs::File;
use std::io;
use std::time::Duration;

/// Descriptors a server needs besides its connections, whatever its core count: the
/// log, the data directory's lock, the signal thread, with room to spare.
const DESCRIPTORS_RESERVED_BASE: u64 = 64;
/// Descriptors each core needs besides its connections: its listeners, journal
/// segments, checkpoint files, io_uring rings and their eventfds, its wake-up sockets
/// and its accept loops' spares, with room to spare.
const DESCRIPTORS_RESERVED_PER_CORE: u64 = 32;

/// Descriptors a server of `cores` cores keeps out of its connections' reach.
pub fn descriptors_reserved(cores: usize) -> u64 {
    DESCRIPTORS_RESERVED_BASE + DESCRIPTORS_RESERVED_PER_CORE * cores as u64
}
/// How long an accept loop waits after an accept failure it could not answer.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// At most one log line per accept loop per this interval about accept failures.
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Raises the soft open-files limit to the hard limit; returns how many of
/// `connections_max` connections fit under it beside what `cores` cores need (warning
/// if not all do).
pub fn raise_open_files_limit(connections_max: usize, cores: usize) -> usize {
    let reserved = descriptors_reserved(cores);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` into the valid, exclusively borrowed
    // `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = io::Error::last_os_error();
        tracing::warn!(%error, "could not read the open-files limit");
        return connections_max;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` only reads the valid `raised`.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = limit.rlim_cur,
                to = raised.rlim_cur,
                "raised the open-files limit to its hard limit"
            );
            limit = raised;
        } else {
            let error = io::Error::last_os_error();
            tracing::warn!(%error, soft = limit.rlim_cur, "could not raise the open-files limit");
        }
    }
    let fit = connections_that_fit(limit.rlim_cur, connections_max, reserved);
    if fit < connections_max {
        tracing::warn!(
            open_files_limit = limit.rlim_cur,
            max_connections = connections_max,
            lowered_to = fit,
            "the open-files limit is below max connections + {reserved} for the cores: \
             lowering max connections; raise the hard `ulimit -n` to serve more"
        );
    }
    fit
}

/// How many of `connections_max` connections fit under `open_files_limit` with
/// `reserved` descriptors kept for the rest (at least one).
fn connections_that_fit(open_files_limit: u64, connections_max: usize, reserved: u64) -> usize {
    if open_files_limit == libc::RLIM_INFINITY {
        return connections_max;
    }
    let room = open_files_limit.saturating_sub(reserved).max(1);
    connections_max.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// Whether an accept error means "out of descriptors" (process or system-wide).
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A descriptor held in reserve, given up for a moment to answer a connection that
/// could not be accepted for lack of descriptors.
#[derive(Debug)]
pub struct SpareDescriptor {
    file: Option<File>,
}

impl SpareDescriptor {
    /// Opens the spare; without one (already out of descriptors) it is retried later.
    pub fn open() -> SpareDescriptor {
        SpareDescriptor {
            file: File::open("/dev/null").ok(),
        }
    }

    /// Closes the spare, freeing its slot; `false` if there was none to close.
    pub fn release(&mut self) -> bool {
        self.file.take().is_some()
    }

    /// Opens the spare again if it is not open.
    pub fn restore(&mut self) {
        if self.file.is_none() {
            self.file = File::open("/dev/null").ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_keep_descriptors_for_the_rest() {
        assert_eq!(connections_that_fit(20_000, 10_000, 256), 10_000);
        assert_eq!(connections_that_fit(1_024, 10_000, 256), 768);
        assert_eq!(connections_that_fit(100, 10_000, 256), 1);
        assert_eq!(
            connections_that_fit(libc::RLIM_INFINITY, 10_000, 256),
            10_000
        );
        assert_eq!(descriptors_reserved(2), 128);
        assert_eq!(descriptors_reserved(64), 64 + 32 * 64);
    }

    #[test]
    fn the_spare_is_released_once_and_restored() {
        let mut spare = SpareDescriptor::open();
        assert!(spare.release());
        assert!(!spare.release());
        spare.restore();
        assert!(spare.release());
    }

    #[test]
    fn emfile_and_enfile_mean_out_of_descriptors() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
