//! Starting a worker process: the executable re-run with the marker, its
//! end of a private socketpair as its standard input (the only descriptor
//! it inherits), and its lifeline and beacon sent over that socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStderr};

use crate::beacon::Beacon;
use crate::marker::{ENV_MARKER, marker_value};

/// The pipe whose read end every worker of a pool holds and whose write end
/// only the parent holds: when the parent dies, the workers read EOF.
pub(crate) struct Lifeline {
    read: OwnedFd,
    /// Kept only to be dropped: closing it tells every worker to exit.
    write: Mutex<Option<OwnedFd>>,
}

impl Lifeline {
    pub(crate) fn new() -> io::Result<Self> {
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by
        // nobody else.
        let (read, write) = unsafe {
            (
                std::os::fd::FromRawFd::from_raw_fd(fds[0]),
                std::os::fd::FromRawFd::from_raw_fd(fds[1]),
            )
        };
        Ok(Lifeline {
            read,
            write: Mutex::new(Some(write)),
        })
    }

    /// Closes the parent's end: every worker holding the read end exits.
    pub(crate) fn cut(&self) {
        self.write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// A handle that signals one process and never another that later reuses
/// its pid (a pidfd), falling back to the pid on kernels without pidfds.
#[derive(Debug)]
pub(crate) struct ProcessHandle {
    pid: u32,
    pidfd: Option<OwnedFd>,
    /// A cluster lane stands in a worker's slot with no process: killing
    /// it wakes this, and the lane ends.
    #[cfg(feature = "cluster")]
    lane: Option<Arc<tokio::sync::Notify>>,
}

impl ProcessHandle {
    /// Must be called before the child can have been reaped.
    fn open(pid: u32) -> Self {
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; it touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: the syscall succeeded, so `fd` is a new descriptor
            // that nobody else owns.
            unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as RawFd) }
        });
        ProcessHandle {
            pid,
            pidfd,
            #[cfg(feature = "cluster")]
            lane: None,
        }
    }

    /// The handle of a cluster lane: `kill` wakes `stop`.
    #[cfg(feature = "cluster")]
    pub(crate) fn lane(stop: Arc<tokio::sync::Notify>) -> Self {
        ProcessHandle {
            pid: 0,
            pidfd: None,
            lane: Some(stop),
        }
    }

    /// A handle to no process, for the scheduler's unit tests.
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        ProcessHandle {
            pid: 0,
            pidfd: None,
            #[cfg(feature = "cluster")]
            lane: None,
        }
    }

    /// Sends SIGKILL. A process already gone (even reaped) is left alone.
    pub(crate) fn kill(&self) {
        if self.pid == 0 {
            #[cfg(feature = "cluster")]
            if let Some(stop) = &self.lane {
                stop.notify_one();
            }
            // Never `kill(0, ..)`: that would be our own process group.
            return;
        }
        match &self.pidfd {
            // SAFETY: pidfd_send_signal reads only its arguments (the info
            // pointer is null).
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            // SAFETY: kill has no memory-safety preconditions.
            None => unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            },
        }
    }
}

/// A started worker process.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) handle: Arc<ProcessHandle>,
    pub(crate) stream: UnixStream,
    pub(crate) stderr: Option<ChildStderr>,
}

/// Starts the current executable as a worker.
///
/// `role` ("worker 3", "process fetch") is shown after the program's name
/// in `ps`: the worker's `argv[0]` becomes `<argv[0]>: multiloop <role>`.
pub(crate) fn spawn_worker(
    lifeline: &Lifeline,
    beacon: &Beacon,
    capture_stderr: bool,
    executable: Option<&std::path::Path>,
    role: &str,
) -> io::Result<Spawned> {
    let (parent_end, child_end) = StdUnixStream::pair()?;
    let exe = if let Some(path) = executable {
        path.to_path_buf()
    } else if std::path::Path::new("/proc/self/exe").exists() {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let mut cmd = tokio::process::Command::new(exe);
    let mut args = std::env::args_os();
    let mut arg0 = args.next().unwrap_or_default();
    arg0.push(format!(": multiloop {role}"));
    cmd.arg0(arg0);
    cmd.args(args);
    cmd.env(ENV_MARKER, marker_value());
    // The socket is the worker's standard input: the only descriptor it
    // inherits, so no code runs between fork and exec and the standard
    // library spawns with `posix_spawn` (see `crate::fdpass`).
    cmd.stdin(Stdio::from(OwnedFd::from(child_end)));
    cmd.stdout(Stdio::inherit());
    cmd.stderr(if capture_stderr {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // Its lifeline and beacon. Should this fail, the worker reads the end
    // of its socket when `child` is dropped (killed) and exits.
    crate::fdpass::send(
        parent_end.as_fd(),
        [lifeline.read.as_fd(), beacon.fd().as_fd()],
    )?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the worker exited before it started"))?;
    parent_end.set_nonblocking(true)?;
    let stream = UnixStream::from_std(parent_end)?;
    let stderr = child.stderr.take();
    Ok(Spawned {
        child,
        pid,
        handle: Arc::new(ProcessHandle::open(pid)),
        stream,
        stderr,
    })
}

/// The last bytes a worker wrote to stderr, kept for crash reports.
#[derive(Default)]
pub(crate) struct StderrTail {
    buf: Vec<u8>,
}

const TAIL_BYTES: usize = 4096;

impl StderrTail {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > TAIL_BYTES * 2 {
            let cut = self.buf.len() - TAIL_BYTES;
            self.buf.drain(..cut);
        }
    }

    pub(crate) fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(TAIL_BYTES);
        String::from_utf8_lossy(&self.buf[start..]).into_owned()
    }
}

/// Copies a worker's stderr to ours while keeping its tail; ends at EOF.
pub(crate) async fn forward_stderr(mut stderr: ChildStderr, tail: Arc<Mutex<StderrTail>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let data = &buf[..n];
                tail.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(data);
                let _ = io::Write::write_all(&mut io::stderr().lock(), data);
            }
        }
    }
}

/// How a child ended, from its wait status.
pub(crate) fn exit_info(status: std::process::ExitStatus) -> crate::error::ExitInfo {
    use std::os::unix::process::ExitStatusExt;
    crate::error::ExitInfo {
        code: status.code(),
        signal: status.signal(),
    }
}
