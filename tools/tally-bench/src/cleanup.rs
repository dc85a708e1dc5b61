//! What `compare` starts and must not leave behind: server processes, redis-benchmark
//! runs and scratch directories, stopped and removed however the run ends.
//!
//! - Normal end, error or panic: each [`GuardedChild`] kills and reaps its process on
//!   drop, and each [`ScratchDir`] removes its directory on drop (after the server
//!   that used it, since a server holds its directory in a field).
//! - SIGINT, SIGTERM, SIGHUP (`kill`, `timeout`, a CI cancellation, a closed terminal):
//!   [`stop_on_signals`] has a thread wait for them, kill and reap every registered
//!   process, remove every registered directory, and exit with 128 + the signal.
//! - SIGKILL of `tally-bench`, which no handler sees: every child is started with
//!   `PR_SET_PDEATHSIG` (Linux), so the kernel kills it when its parent dies. Its
//!   directory stays (nothing of ours runs any more to remove it).
//!
//! Invariant: a pid is in [`REGISTRY`] only while its process is unreaped, so the
//! signal thread never kills a recycled pid; registering and unregistering happen under
//! the registry's lock, and the signal thread holds that lock until the process exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The processes and directories to clean up if a signal ends the run.
struct Registry {
    pids: Vec<libc::pid_t>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    dirs: Vec::new(),
});

/// The registry; a thread that panicked holding it left it consistent (each change is
/// a single push or retain), so a poisoned lock is still used.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Handle SIGINT, SIGTERM and SIGHUP from now on: stop every registered child, remove
/// every registered directory, exit with 128 + the signal.
pub fn stop_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                // Held until the exit, so no child is spawned or reaped meanwhile.
                let registry = registry();
                for &pid in &registry.pids {
                    kill_and_reap(pid);
                }
                for dir in &registry.dirs {
                    let _ = std::fs::remove_dir_all(dir);
                }
                eprintln!(
                    "tally-bench: stopped by signal {signal}; stopped {} started processes and removed their directories",
                    registry.pids.len()
                );
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// SIGKILL `pid` and wait for it.
fn kill_and_reap(pid: libc::pid_t) {
    assert!(pid > 0, "a child's pid, never a process group");
    // SAFETY: kill and waitpid take plain integers (a null status pointer is allowed)
    // and touch no memory of ours; `pid` is an unreaped child of ours (see the module
    // invariant), so it cannot name another process.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Have the kernel SIGKILL the process `command` starts when this process dies, even by
/// SIGKILL, which no handler sees. Precisely, `PR_SET_PDEATHSIG` fires when the *thread*
/// that spawned the child exits: call it from the main thread (as tally-bench does),
/// whose exit is the process's.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: prctl and getppid are plain system calls,
        // and the errors are built without allocating.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // If the parent died before the prctl, no signal will come: give up.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    command
}

/// A child process that is killed and reaped on drop or on a signal.
pub struct GuardedChild {
    child: Child,
}

impl GuardedChild {
    /// Spawn `command` (dying with this process) and register the child.
    pub fn spawn(command: &mut Command) -> std::io::Result<GuardedChild> {
        let mut registry = registry();
        let child = die_with_parent(command).spawn()?;
        registry.pids.push(child.id() as libc::pid_t);
        Ok(GuardedChild { child })
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for GuardedChild {
    fn drop(&mut self) {
        let mut registry = registry();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id() as libc::pid_t;
        registry.pids.retain(|&registered| registered != pid);
    }
}

/// A directory under a scratch directory, removed on drop or on a signal.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Create `<parent>/<name>`.
    pub fn create_in(parent: &Path, name: &str) -> std::io::Result<ScratchDir> {
        let path = parent.join(name);
        let mut registry = registry();
        std::fs::create_dir_all(&path)?;
        registry.dirs.push(path.clone());
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let mut registry = registry();
        let _ = std::fs::remove_dir_all(&self.path);
        registry.dirs.retain(|registered| *registered != self.path);
    }
}
