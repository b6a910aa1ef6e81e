//! The marker that makes a process a worker: the environment variable the
//! parent sets when it starts a worker, written by `spawn` and read by the
//! worker before `main`. Both ends share this one module, so the format has
//! one definition.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The environment variable that marks a process as a worker.
pub(crate) const ENV_MARKER: &str = "MULTILOOP_WORKER";

/// The version of the marker's format.
const MARKER_VERSION: &str = "2";

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

/// Why a process carrying the marker cannot serve as a worker.
pub(crate) enum Refusal {
    /// The parent the marker names is gone (it died before this process
    /// got this far): nobody waits for this worker.
    Orphaned,
    Invalid(String),
}

pub(crate) fn parse_marker(value: &OsString) -> Result<Marker, Refusal> {
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
