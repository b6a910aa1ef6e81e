//! The marker that makes a process a worker: the environment variable the
//! parent sets when it starts a worker, written by `spawn` and read by the
//! worker before `main`. Both ends share this one module, so the format has
//! one definition.

use std::ffi::OsString;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

/// The environment variable that marks a process as a worker.
pub(crate) const ENV_MARKER: &str = "MULTILOOP_WORKER";

/// The version of the marker's format.
const MARKER_VERSION: &str = "3";

/// A worker's channels: its socket (inherited as its standard input), and
/// its lifeline and beacon (sent over the socket, see `crate::fdpass`).
pub(crate) struct Marker {
    pub(crate) socket: OwnedFd,
    pub(crate) lifeline: OwnedFd,
    pub(crate) beacon: OwnedFd,
}

/// The marker's text: `version:parent pid:name`, where `name` is the
/// parent's own short name (its `comm`), which the worker takes too.
pub(crate) fn marker_value() -> String {
    let name = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    format!(
        "{MARKER_VERSION}:{}:{}",
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

/// Reads the marker and takes the worker's channels: the socket from the
/// standard input (which becomes `/dev/null`, as for any worker), the
/// lifeline and beacon from the socket.
pub(crate) fn parse_marker(value: &OsString) -> Result<Marker, Refusal> {
    let invalid = || {
        Refusal::Invalid(format!(
            "its value {value:?} is not a marker this version of multiloop wrote"
        ))
    };
    let value = value.to_str().ok_or_else(invalid)?;
    let mut parts = value.splitn(3, ':');
    if parts.next() != Some(MARKER_VERSION) {
        return Err(invalid());
    }
    let ppid = parts
        .next()
        .and_then(|p| p.parse::<i64>().ok())
        .ok_or_else(invalid)?;
    let name = parts.next().ok_or_else(invalid)?;
    if i64::from(std::os::unix::process::parent_id()) != ppid {
        return Err(Refusal::Orphaned);
    }
    let setup = |what: &str, e: std::io::Error| Refusal::Invalid(format!("{what}: {e}"));
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor (the lowest free one
    // from 3) of the standard input, or fails; it touches no memory.
    let moved = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(setup(
            "its standard input is not the socket the parent gives a worker",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `moved` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(moved) };
    let null = std::fs::File::open("/dev/null").map_err(|e| setup("cannot open /dev/null", e))?;
    // SAFETY: dup2 onto descriptor 0, whose old description (the socket)
    // lives on in `socket`; nothing in this process holds 0 as an owned
    // descriptor (this runs before `main`).
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
        return Err(setup(
            "cannot make /dev/null its standard input",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `socket` is open for the duration of the borrow.
    let borrowed = unsafe { BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&socket)) };
    let [lifeline, beacon] = match crate::fdpass::receive(borrowed) {
        Ok(Some(fds)) => fds,
        // The parent closed the socket before sending them: it is gone.
        Ok(None) => return Err(Refusal::Orphaned),
        Err(e) => return Err(setup("did not receive its lifeline and beacon", e)),
    };
    set_process_name(name);
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
