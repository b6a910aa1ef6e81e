//! Helpers shared by the integration tests: bounded waits, and processes
//! watched and signalled without polling.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

/// Awaits `fut`, failing the test if it takes more than `secs`: a
/// regression shows as a message instead of a hung suite.
pub(crate) async fn within<F: IntoFuture>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s (the library hung)"),
    }
}

/// Polls a future once (so a call submits its task); true when it is
/// still pending.
pub(crate) async fn poll_once<F: Future>(f: Pin<&mut F>) -> bool {
    let mut f = Some(f);
    std::future::poll_fn(|cx| {
        let pending = f.take().is_some_and(|f| f.poll(cx).is_pending());
        std::task::Poll::Ready(pending)
    })
    .await
}

/// Waits (on a pidfd, woken by the exit, no polling) until `pid` is gone.
pub(crate) fn pid_gone_within(pid: u32, limit: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as libc::c_int;
    if fd < 0 {
        return true;
    }
    let gone = wait_readable(fd, limit);
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    gone
}

/// Waits until `fd` is readable (a pidfd: its process exited), at most
/// `limit`. A signal (SIGCHLD, with children dying around) interrupts
/// `poll`: it is resumed with the time left, not taken as a timeout.
pub(crate) fn wait_readable(fd: libc::c_int, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        if n >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return n == 1;
        }
    }
}

/// Sends `sig` to `pid`.
pub(crate) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

// ---------------------------------------------------------------- tasks

/// `x + 1`.
#[multiloop::task]
pub(crate) async fn inc(x: u64) -> u64 {
    x + 1
}

/// Sleeps `ms` milliseconds, then answers `ms`.
#[multiloop::task]
pub(crate) async fn nap_ms(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// Kills its worker from another thread while the task awaits: a death
/// outside any task's poll, which no task explains.
#[multiloop::task]
pub(crate) async fn killed_while_waiting() -> u64 {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(5));
        std::process::abort();
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    0
}
