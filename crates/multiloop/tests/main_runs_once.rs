#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A program's `main` runs once, in the parent: never in a worker, not even
//! in one whose parent died before it started. Real processes: the
//! `worker_entry` example (`#[tokio::main]`, no set-up call).
//!
//! One test in its own binary: it makes this process the reaper of the
//! example's orphaned workers, and waits for every child it has.

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn example() -> PathBuf {
    // `cargo test` builds the examples next to the test binaries.
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("worker_entry");
    assert!(path.exists(), "{} is built by `cargo test`", path.display());
    path
}

/// Waits for every child and orphaned descendant of this process (it is
/// their reaper) to exit, within `limit`.
fn reap_all_within(limit: Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            // SAFETY: waitpid with a null status pointer and no flags.
            let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
            if r < 0 {
                break; // ECHILD: nothing left
            }
        }
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .expect("a process started by the example did not exit");
}

#[test]
fn main_runs_once_in_the_parent_and_never_in_a_worker() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag on this process.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let dir = std::env::temp_dir().join(format!("multiloop-main-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let exe = example();

    // The usual program: #[tokio::main], a pool, a map.
    let out = Command::new(&exe)
        .env("MULTILOOP_MAIN_LOG", &dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    // The parent exits while its four workers are starting, at moments
    // from 0 to 4 ms: some workers find their parent gone before `main`.
    let runs = 40;
    for i in 0..runs {
        let status = Command::new(&exe)
            .args(["--exit-during-start", &(i * 100).to_string()])
            .env("MULTILOOP_MAIN_LOG", &dir)
            .status()
            .unwrap();
        assert!(status.success());
    }
    reap_all_within(Duration::from_secs(60));
    let log = std::fs::read_to_string(&dir).unwrap();
    let _ = std::fs::remove_file(&dir);
    assert_eq!(
        log.lines().count(),
        runs as usize + 1,
        "`main` ran in a worker:\n{log}"
    );
}
