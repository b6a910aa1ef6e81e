//! The child side: how a re-executed process becomes a worker, and the
//! worker's event loop.
//!
//! A worker is the parent's own executable started again with
//! [`ENV_MARKER`] in its environment. Every program that links multiloop
//! checks for the marker in a constructor that runs before `main`
//! ([`enter_if_worker`]): a worker builds its single-threaded tokio runtime
//! and serves the parent over the inherited socket until told to stop or
//! until the parent goes away, and never returns to `main`.
//!
//! Why before `main`, not from a call in `main`: a worker must never run
//! the user's code other than tasks and initializers, whatever the user
//! forgot or wrote first (a `#[tokio::main]` runtime, argument parsing,
//! logging set-up). Before `main` nothing of the user's has run, no runtime
//! exists yet (so the worker can build its own), and no thread has been
//! started (so removing the marker from the environment is sound).

mod run;
mod state;
mod watchdog;

use std::ffi::OsString;
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::time::Duration;

pub(crate) use run::{InitFn, StartFn, init_task, reserve_for_frame, start};
pub use state::{set_worker_state, worker_state};

/// The environment variable that marks a process as a worker.
pub(crate) const ENV_MARKER: &str = "MULTILOOP_WORKER";

/// The version of the marker's format.
const MARKER_VERSION: &str = "2";

/// Exit code of a worker whose parent went away.
pub(crate) const EXIT_ORPHANED: i32 = 70;
/// Exit code of a worker that could not start or broke the protocol.
pub(crate) const EXIT_SETUP: i32 = 71;

/// Hooks that tune each worker's tokio runtime before it is built,
/// registered with [`worker_runtime_hook!`](crate::worker_runtime_hook).
#[linkme::distributed_slice]
pub static RUNTIME_HOOKS: [fn(&mut tokio::runtime::Builder)];

/// Formerly turned the process into a worker; workers now start before
/// `main` in every program that links multiloop, so this does nothing.
///
/// Kept so that programs written for earlier versions still build; remove
/// the call.
#[deprecated(
    since = "0.2.0",
    note = "workers start before `main` now: remove the call (it does nothing)"
)]
pub fn init() {}

/// Formerly [`init`] with a hook for the workers' runtime; the hook was
/// never run in a worker started before `main`.
///
/// Register the hook with [`worker_runtime_hook!`](crate::worker_runtime_hook)
/// instead; this function does nothing.
#[deprecated(
    since = "0.2.0",
    note = "register the hook with `multiloop::worker_runtime_hook!(your_fn)` instead"
)]
pub fn init_with(hook: impl FnOnce(&mut tokio::runtime::Builder) + Send + 'static) {
    let _ = hook;
}

/// What the parent put in the marker: which descriptors to use, and the
/// name to show in `ps`.
pub(crate) struct Marker {
    pub(crate) socket: OwnedFd,
    pub(crate) lifeline: OwnedFd,
    pub(crate) beacon: OwnedFd,
}

/// The marker's text: `version:parent pid:socket:lifeline:beacon:name`,
/// where `name` is the parent's own short name (its `comm`), which the
/// worker takes too.
pub(crate) fn marker_value(fds: [RawFd; 3]) -> String {
    let [socket, lifeline, beacon] = fds;
    let name = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    format!(
        "{MARKER_VERSION}:{}:{socket}:{lifeline}:{beacon}:{}",
        std::process::id(),
        name.trim_end_matches('\n')
    )
}

/// Runs before `main` in every program that links multiloop: when this
/// process was started as a worker it serves its parent and never returns;
/// otherwise it returns at once (one environment lookup).
///
/// A process that carries the marker but cannot be the worker it names
/// (its parent already died, the descriptors are missing, the marker is
/// from another version) exits: it must not run the user's `main`.
pub(crate) fn enter_if_worker() {
    let Some(value) = std::env::var_os(ENV_MARKER) else {
        return;
    };
    // SAFETY: this runs in a constructor before `main`, before any thread
    // of this process was started, so nothing reads the environment at the
    // same time. Removed so that processes started by tasks do not inherit it.
    unsafe { std::env::remove_var(ENV_MARKER) };
    match parse_marker(&value) {
        Ok(marker) => run::serve(marker),
        Err(Refusal::Orphaned) => std::process::exit(EXIT_ORPHANED),
        Err(Refusal::Invalid(reason)) => {
            eprintln!(
                "multiloop: {ENV_MARKER} is set but {reason}; exiting without running `main`"
            );
            std::process::exit(EXIT_SETUP);
        }
    }
}

/// Why a process carrying the marker cannot serve as a worker.
enum Refusal {
    /// The parent the marker names is gone (it died before this process
    /// got this far): nobody waits for this worker.
    Orphaned,
    Invalid(String),
}

fn parse_marker(value: &OsString) -> Result<Marker, Refusal> {
    let invalid = || {
        Refusal::Invalid(format!(
            "its value {value:?} is not a marker this version of multiloop wrote"
        ))
    };
    let value = value.to_str().ok_or_else(invalid)?;
    let mut parts = value.splitn(6, ':');
    if parts.next() != Some(MARKER_VERSION) {
        return Err(invalid());
    }
    let mut number = || {
        parts
            .next()
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(invalid)
    };
    let ppid = number()?;
    let fds = [number()?, number()?, number()?];
    let name = parts.next().ok_or_else(invalid)?;
    if i64::from(std::os::unix::process::parent_id()) != ppid {
        return Err(Refusal::Orphaned);
    }
    let mut raw = [0 as RawFd; 3];
    for (slot, fd) in raw.iter_mut().zip(fds) {
        *slot = RawFd::try_from(fd).map_err(|_| invalid())?;
        if !fd_is_open(*slot) {
            return Err(Refusal::Invalid(format!(
                "descriptor {fd} it names is not open in this process"
            )));
        }
    }
    set_process_name(name);
    // SAFETY: the parent opened these descriptors for this process alone
    // (they were close-on-exec everywhere else), we checked they are open,
    // and nothing else in this process knows their numbers, so we are their
    // only owner.
    let [socket, lifeline, beacon] = raw.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(Marker {
        socket,
        lifeline,
        beacon,
    })
}

/// Gives the worker its program's short name (what `ps`, `top`, `pgrep -x`
/// and `killall` match), instead of `exe` from `/proc/self/exe`.
fn set_process_name(name: &str) {
    // The kernel keeps 15 bytes and a NUL.
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    bytes.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // from the pointer, which `bytes` is for the duration of the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, bytes.as_ptr() as libc::c_ulong, 0, 0, 0) };
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
