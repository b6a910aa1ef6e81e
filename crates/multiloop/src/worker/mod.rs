//! The child side: how a re-executed process becomes a worker, and the
//! worker's event loop.
//!
//! A worker is the parent's own executable started again with
//! [`ENV_MARKER`] in its environment. `init()` (or the
//! [`init_before_main!`](crate::init_before_main) hook) sees the marker,
//! builds a single-threaded tokio runtime and serves the parent over the
//! inherited socket until told to stop or until the parent goes away; it
//! never returns to the caller.

mod run;
mod state;
mod watchdog;

use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

pub(crate) use run::{InitFn, StartFn, init_task, reserve_for_frame, start};
pub use state::{set_worker_state, worker_state};

/// The environment variable that marks a process as a worker.
pub(crate) const ENV_MARKER: &str = "MULTILOOP_WORKER";

/// Exit code of a worker whose parent went away.
pub(crate) const EXIT_ORPHANED: i32 = 70;
/// Exit code of a worker that could not start or broke the protocol.
pub(crate) const EXIT_SETUP: i32 = 71;

type RuntimeHook = Box<dyn FnOnce(&mut tokio::runtime::Builder) + Send>;

static RUNTIME_HOOK: Mutex<Option<RuntimeHook>> = Mutex::new(None);

/// Turns this process into a worker when it was started as one; otherwise
/// returns at once and does nothing.
///
/// Call it first thing in `main`, before starting threads or a runtime: in
/// a worker process it never returns. In a normal run it costs one
/// environment lookup.
///
/// ```no_run
/// multiloop::init(); // in a worker process this never returns
/// // ... build a runtime and a `Pool` ...
/// ```
///
/// Test binaries, benches and other programs whose `main` is not yours use
/// [`init_before_main!`](crate::init_before_main) instead.
pub fn init() {
    if let Some(marker) = take_marker() {
        let hook = RUNTIME_HOOK.lock().ok().and_then(|mut h| h.take());
        run::serve(marker, hook);
    }
}

/// Like [`init`], and lets you tune each worker's tokio runtime before it is
/// built: the analog of aiomultiprocess's `loop_initializer`.
///
/// The runtime is a current-thread runtime with time and I/O enabled; the
/// hook may change its settings (event interval, thread name, ...).
///
/// ```no_run
/// multiloop::init_with(|runtime| {
///     runtime.event_interval(31);
/// });
/// ```
pub fn init_with(hook: impl FnOnce(&mut tokio::runtime::Builder) + Send + 'static) {
    if let Ok(mut slot) = RUNTIME_HOOK.lock() {
        *slot = Some(Box::new(hook));
    }
    init();
}

/// What the parent put in the marker: which descriptors to use.
pub(crate) struct Marker {
    pub(crate) socket: OwnedFd,
    pub(crate) lifeline: OwnedFd,
    pub(crate) beacon: OwnedFd,
}

/// Reads and removes the worker marker, when this process is a worker.
///
/// The marker names the parent's pid: a process that merely inherited the
/// variable (a grandchild started by a task) is not the worker it names.
fn take_marker() -> Option<Marker> {
    let value = std::env::var(ENV_MARKER).ok()?;
    let mut parts = value.split(':');
    let version = parts.next()?;
    let ppid: u32 = parts.next()?.parse().ok()?;
    let socket: RawFd = parts.next()?.parse().ok()?;
    let lifeline: RawFd = parts.next()?.parse().ok()?;
    let beacon: RawFd = parts.next()?.parse().ok()?;
    if version != "1" || std::os::unix::process::parent_id() != ppid {
        return None;
    }
    // SAFETY: `init` is documented to run first in `main` (or before main,
    // from `init_before_main!`), before this process starts other threads,
    // so nothing reads the environment concurrently.
    unsafe { std::env::remove_var(ENV_MARKER) };
    if !fd_is_open(socket) || !fd_is_open(lifeline) || !fd_is_open(beacon) {
        eprintln!(
            "multiloop: {ENV_MARKER} names descriptors this process does not have; not starting as a worker"
        );
        std::process::exit(EXIT_SETUP);
    }
    // SAFETY: the parent opened these descriptors for this process alone
    // (they were close-on-exec everywhere else) and nothing else in this
    // process knows their numbers, so we are their only owner.
    let (socket, lifeline, beacon) = unsafe {
        (
            OwnedFd::from_raw_fd(socket),
            OwnedFd::from_raw_fd(lifeline),
            OwnedFd::from_raw_fd(beacon),
        )
    };
    Some(Marker {
        socket,
        lifeline,
        beacon,
    })
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a
    // valid argument and an unknown descriptor answers -1 (EBADF).
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1
}

/// This worker's beacon (see `crate::beacon`), mapped at startup.
static BEACON: std::sync::OnceLock<crate::beacon::Beacon> = std::sync::OnceLock::new();

#[inline]
pub(crate) fn beacon() -> Option<&'static crate::beacon::Beacon> {
    BEACON.get()
}

/// A boxed future local to the worker's thread.
pub(crate) type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// The deadline of a task in a RUN frame.
pub(crate) fn timeout_from_us(us: u64) -> Option<Duration> {
    (us > 0).then(|| Duration::from_micros(us))
}

/// Called when building a pool: a process started as a worker that never
/// called `init` would otherwise build pools of its own, recursively.
pub(crate) fn refuse_unhandled_worker() {
    if take_marker_peek() {
        eprintln!(
            "multiloop: this process was started as a worker but `multiloop::init()` was not called \
             first thing in `main` (or `multiloop::init_before_main!()` in a test binary); exiting"
        );
        std::process::exit(EXIT_SETUP);
    }
}

fn take_marker_peek() -> bool {
    let Ok(value) = std::env::var(ENV_MARKER) else {
        return false;
    };
    let mut parts = value.split(':');
    parts.next() == Some("1")
        && parts.next().and_then(|p| p.parse::<u32>().ok())
            == Some(std::os::unix::process::parent_id())
}
