//! Graceful shutdown: a process-wide request flag, and the per-core machinery that stops
//! accepting, lets in-flight requests finish, and drains connections.
//!
//! Sequence on every core once [`ShutdownSignal::is_requested`] turns true (a request
//! wakes each core through a socket it waits on, so idle cores never poll;
//! SIGINT/SIGTERM set the flag from a thread that waits for signals, no work runs in a
//! signal handler; SIGHUP is logged and ignored):
//!
//! 1. the accept loops end ([`StopNotice`] fires), so no new connection is taken;
//! 2. the read half of every open connection is shut down ([`ConnectionRegistry`]),
//!    so its next read sees end-of-stream; frames already read are answered and their
//!    replies written, then (native door) an `Error` frame `ShuttingDown` with request
//!    id 0, before the connection closes;
//! 3. the core waits for all its connection tasks, then announces itself drained
//!    ([`DrainBarrier`]) but keeps serving requests forwarded by other cores until every
//!    core has drained, since a peer's last in-flight batch may still need it;
//! 4. the core closes its mesh senders, waits for its mesh tasks, and closes its store.
//!
//! Invariants: the flag only ever goes from false to true; a connection's fd is in the
//! registry exactly while its stream is alive, so `shutdown(2)` never hits a reused fd.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::ServerError;

/// How often a core looks at the drain barrier during a stop, and at the shutdown flag
/// if it could not [`ShutdownSignal::subscribe`] (out of descriptors).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A process-wide "please stop" flag, shared by the cores, the signal handlers and the
/// [`crate::ServerHandle`].
#[derive(Clone, Debug, Default)]
pub struct ShutdownSignal {
    requested: Arc<AtomicBool>,
    /// [`STARTING`], then [`SERVING`] or [`STOPPED_IN_START`], whichever comes first:
    /// a stop requested before the cores serve keeps them from ever serving.
    phase: Arc<AtomicU8>,
    /// One socket per core waiting for a stop ([`ShutdownSignal::subscribe`]): a
    /// request writes a byte to each, which wakes the core at once, so an idle core
    /// never wakes to look at the flag.
    wakers: Arc<Mutex<Vec<UnixStream>>>,
}

/// The server has not yet started serving.
const STARTING: u8 = 0;
/// The server serves (or did): a stop is a graceful stop.
const SERVING: u8 = 1;
/// A stop was requested during start-up: the cores finish recovering, then stop
/// without opening their listeners.
const STOPPED_IN_START: u8 = 2;

impl ShutdownSignal {
    /// A flag that is not set.
    pub fn new() -> ShutdownSignal {
        ShutdownSignal::default()
    }

    /// Asks every core to stop gracefully. Idempotent. Before the server serves, it
    /// keeps it from serving at all ([`ShutdownSignal::begin_serving`]).
    pub fn request(&self) {
        self.request_noting_start();
    }

    /// [`ShutdownSignal::request`]; `true` if it came during start-up (the first
    /// request then, before the server began to serve).
    fn request_noting_start(&self) -> bool {
        self.requested.store(true, Ordering::Release);
        // After the store: a core subscribing meanwhile sees the flag or gets the byte.
        // A core that has ended closed its end: its socket is dropped here, so a signal
        // reused across starts (or asked to stop twice) keeps no dead sockets.
        self.wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(wake);
        let phase = self.phase.compare_exchange(
            STARTING,
            STOPPED_IN_START,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        phase.is_ok() || phase == Err(STOPPED_IN_START)
    }

    /// A socket that turns readable once a stop is requested (at once if it was
    /// already), for a core to await instead of polling the flag.
    pub(crate) fn subscribe(&self) -> std::io::Result<UnixStream> {
        let (theirs, ours) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if self.is_requested() {
            // Its peer is `theirs`, open: the byte is written.
            let _ = wake(&ours);
        }
        wakers.push(ours);
        Ok(theirs)
    }

    /// Called once start-up is complete: `true` if the server may serve, `false` if a
    /// stop was requested first (then it must stop without ever accepting).
    pub(crate) fn begin_serving(&self) -> bool {
        let phase =
            self.phase
                .compare_exchange(STARTING, SERVING, Ordering::AcqRel, Ordering::Acquire);
        // A signal reused for a second server (after a start that failed) serves again.
        phase != Err(STOPPED_IN_START)
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Makes SIGINT and SIGTERM request a graceful stop, and SIGHUP do nothing but say
    /// so, instead of the default actions (which kill the process with nothing logged,
    /// losing relaxed writes not yet on disk). A thread of its own (`tally-signals`)
    /// waits for them, so each is logged the moment it arrives, during start-up too;
    /// nothing runs in a signal handler but signal-hook's self-pipe write.
    ///
    /// A second SIGINT during a stop (Ctrl-C again) exits at once with status 1, as
    /// Redis does; a second SIGTERM changes nothing (supervisors repeat themselves).
    ///
    /// SIGHUP is ignored, as Redis does: a closed terminal or ssh session, a logrotate
    /// `kill -HUP` or a `systemctl reload` must not stop a server. tallyd has no
    /// settings to reload and writes its log to standard error, so there is nothing to
    /// reopen either.
    pub fn install_os_handlers(&self) -> Result<(), ServerError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
            .map_err(ServerError::Signals)?;
        let shutdown = self.clone();
        let watcher = move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => tracing::warn!(
                        "SIGHUP received and ignored: tallyd stops gracefully on SIGTERM or \
                         SIGINT (it has no settings to reload, and logs to standard error)"
                    ),
                    SIGINT if shutdown.is_requested() => {
                        // Ctrl-C again during a stop: the operator insists, as Redis
                        // lets them. Like `kill -9` for what is left: durable writes
                        // acknowledged are on disk; the next start recovers.
                        tracing::warn!(
                            "SIGINT again during the stop: exiting now, without waiting \
                             for connections, the final sync or the final checkpoint \
                             (acknowledged durable writes are on disk; relaxed ones from \
                             the last --relaxed-flush-ms may be lost; the next start \
                             recovers from the journal)"
                        );
                        std::process::exit(1);
                    }
                    _ => {
                        let name = if signal == SIGINT {
                            "SIGINT"
                        } else {
                            "SIGTERM"
                        };
                        if shutdown.request_noting_start() {
                            tracing::warn!(
                                signal = name,
                                "stop requested during start-up: recovery runs to its end \
                                 first (cut short, the next start would redo it), then \
                                 tallyd stops without serving"
                            );
                        } else {
                            tracing::info!(signal = name, "stop requested");
                        }
                    }
                }
            }
        };
        std::thread::Builder::new()
            .name("tally-signals".to_string())
            .spawn(watcher)
            .map_err(ServerError::Signals)?;
        Ok(())
    }
}

/// Writes the byte that wakes a core waiting on its [`ShutdownSignal::subscribe`]
/// socket; `false` if the core's end is closed (the core has ended), so the socket can
/// go. A full socket (`WouldBlock`) already holds an unread byte: the core wakes
/// anyway; any other error leaves that core to see the flag at its next look.
/// `MSG_NOSIGNAL`: a closed peer must not raise `SIGPIPE` in a program that embeds the
/// server and has not ignored it.
fn wake(waker: &UnixStream) -> bool {
    // SAFETY: the descriptor is `waker`'s, open for the call; the buffer is one valid
    // byte.
    let sent = unsafe {
        libc::send(
            waker.as_raw_fd(),
            [1u8].as_ptr().cast(),
            1,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if sent >= 0 {
        return true;
    }
    let error = std::io::Error::last_os_error();
    match error.kind() {
        // Full of unread bytes: the core is woken already.
        std::io::ErrorKind::WouldBlock => true,
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => false,
        _ => {
            tracing::debug!(%error, "could not wake a core for the stop");
            true
        }
    }
}

/// Counts the cores whose own connections are all closed; shared by all cores.
#[derive(Clone, Debug)]
pub struct DrainBarrier {
    drained: Arc<AtomicUsize>,
    cores: usize,
}

impl DrainBarrier {
    /// A barrier for `cores` cores.
    pub fn new(cores: usize) -> DrainBarrier {
        DrainBarrier {
            drained: Arc::new(AtomicUsize::new(0)),
            cores,
        }
    }

    /// Records that the calling core has drained; call once per core.
    pub fn arrive(&self) {
        let before = self.drained.fetch_add(1, Ordering::AcqRel);
        assert!(
            before < self.cores,
            "a core arrived at the drain barrier twice"
        );
    }

    /// Waits until every core has arrived.
    pub async fn wait(&self) {
        while self.drained.load(Ordering::Acquire) < self.cores {
            glommio::timer::sleep(POLL_INTERVAL).await;
        }
    }
}

/// A per-core, one-shot "stop now" notice that futures can await.
#[derive(Clone, Default)]
pub struct StopNotice {
    inner: Rc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    stopped: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl StopNotice {
    /// Fires the notice, waking every waiter.
    pub fn fire(&self) {
        self.inner.stopped.set(true);
        for waker in self.inner.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Whether the notice has fired.
    pub fn is_fired(&self) -> bool {
        self.inner.stopped.get()
    }

    /// Resolves once the notice has fired. Meant for a few long-lived waiters (accept
    /// loops), not per request: each poll before firing registers a waker.
    pub fn wait(&self) -> StopWait {
        StopWait {
            inner: Rc::clone(&self.inner),
            registered: false,
        }
    }
}

/// The future of [`StopNotice::wait`].
pub struct StopWait {
    inner: Rc<StopInner>,
    registered: bool,
}

impl Future for StopWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        if self.inner.stopped.get() {
            return Poll::Ready(());
        }
        if !self.registered {
            self.inner.wakers.borrow_mut().push(context.waker().clone());
            self.registered = true;
        }
        Poll::Pending
    }
}

/// The fds of the open connections of one core, so shutdown can end their reads.
#[derive(Clone, Default)]
pub struct ConnectionRegistry {
    inner: Rc<RefCell<RegistryInner>>,
}

#[derive(Default)]
struct RegistryInner {
    next_id: u64,
    fds: HashMap<u64, RawFd>,
    closing: bool,
}

impl ConnectionRegistry {
    /// Registers an open connection's fd; the returned guard deregisters it on drop,
    /// and must be dropped before the stream is.
    pub fn register(&self, fd: RawFd) -> RegistrationGuard {
        let mut inner = self.inner.borrow_mut();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.fds.insert(id, fd);
        if inner.closing {
            shutdown_read(fd);
        }
        RegistrationGuard {
            registry: self.clone(),
            id,
        }
    }

    /// Ends the read half of every open connection, now and for later registrations.
    pub fn shutdown_reads(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.closing = true;
        for &fd in inner.fds.values() {
            shutdown_read(fd);
        }
    }

    /// The number of open connections on this core.
    pub fn len(&self) -> usize {
        self.inner.borrow().fds.len()
    }

    /// Whether no connection is open on this core.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Deregisters a connection's fd when dropped.
pub struct RegistrationGuard {
    registry: ConnectionRegistry,
    id: u64,
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        let removed = self.registry.inner.borrow_mut().fds.remove(&self.id);
        debug_assert!(removed.is_some());
    }
}

fn shutdown_read(fd: RawFd) {
    // SAFETY: `shutdown(2)` reads no memory of ours. The fd belongs to a live stream:
    // registry entries are removed (guard drop) before their stream is dropped, and all
    // of this happens on the one thread that owns both, so the fd cannot have been
    // closed and reused in between.
    let result = unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    if result != 0 {
        tracing::debug!(fd, error = %std::io::Error::last_os_error(), "shutdown(SHUT_RD) failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A stop asked for after the cores ended (a second Ctrl-C, a signal reused after a
    /// failed start) drops their closed sockets instead of writing into them again.
    #[test]
    fn a_stop_after_the_cores_ended_drops_their_sockets() {
        let shutdown = ShutdownSignal::new();
        let mut live = shutdown.subscribe().unwrap();
        drop(shutdown.subscribe().unwrap());
        shutdown.request();
        shutdown.request();
        let mut byte = [0u8; 1];
        live.read_exact(&mut byte).unwrap();
        assert_eq!(
            shutdown.wakers.lock().unwrap().len(),
            1,
            "the live core's stays"
        );
        drop(live);
        shutdown.request();
        assert!(shutdown.wakers.lock().unwrap().is_empty());
    }

    #[test]
    fn a_stop_before_serving_keeps_the_server_from_serving() {
        let shutdown = ShutdownSignal::new();
        assert!(shutdown.request_noting_start(), "during start-up");
        assert!(shutdown.request_noting_start(), "still during start-up");
        assert!(!shutdown.begin_serving());
        assert!(shutdown.is_requested());
    }

    #[test]
    fn a_stop_after_serving_began_is_an_ordinary_stop() {
        let shutdown = ShutdownSignal::new();
        assert!(shutdown.begin_serving());
        assert!(!shutdown.request_noting_start());
        assert!(shutdown.is_requested());
    }

    #[test]
    fn a_request_wakes_every_subscriber_even_a_late_one() {
        let shutdown = ShutdownSignal::new();
        let mut early = shutdown.subscribe().unwrap();
        shutdown.request();
        let mut late = shutdown.subscribe().unwrap();
        let mut byte = [0_u8; 1];
        assert_eq!(early.read(&mut byte).unwrap(), 1);
        assert_eq!(late.read(&mut byte).unwrap(), 1);
    }
}
