#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `close`, `terminate` and drop racing with a worker being replaced or
//! recycled: each returns, and no worker process is left behind.
//!
//! One test in its own binary: it counts this process's worker children,
//! which other tests running beside it would add to.

mod common;

use common::{inc, pid_gone_within, signal, within};

use std::collections::HashSet;
use std::time::Duration;

use multiloop::Pool;

/// How the pool is stopped in a race test.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Close,
    Terminate,
    Drop,
}

/// Kills a worker, waits for it to be gone (so its supervisor is about to
/// start the replacement), then stops the pool: it must return, and no
/// worker (old or replacement) may be left.
async fn stop_while_a_worker_is_replaced(stop: Stop) {
    for round in 0..20 {
        let pool = within(60, "build", Pool::builder().processes(2).build())
            .await
            .unwrap();
        assert_eq!(within(30, "apply", pool.apply(inc, 1)).await.unwrap(), 2);
        let victim = pool.worker_pids()[0];
        signal(victim, libc::SIGKILL);
        // Wait until the pool has seen the death: its replacement is being
        // started (or has just been), on another thread of this runtime;
        // that is the window to stop the pool in. Nothing can be awaited
        // for it, so spin, yielding.
        within(30, "the death is seen", async {
            while pool.worker_pids().contains(&victim) {
                tokio::task::yield_now().await;
            }
        })
        .await;
        // Vary the moment between "dead" and "stop" across rounds.
        for _ in 0..round % 4 {
            tokio::task::yield_now().await;
        }
        let seen: HashSet<u32> = pool.worker_pids().into_iter().collect();
        match stop {
            Stop::Close => within(30, "close during replacement", pool.close())
                .await
                .unwrap(),
            Stop::Terminate => within(30, "terminate during replacement", pool.terminate())
                .await
                .unwrap(),
            Stop::Drop => drop(pool),
        }
        // A replacement may have started after `seen` was taken; the
        // stopped pool must have ended it too: no worker outlives it. Its
        // processes are children of this test, so list them from /proc.
        for pid in seen.into_iter().chain(worker_children()) {
            assert!(
                pid_gone_within(pid, Duration::from_secs(10)),
                "{stop:?}, round {round}: worker {pid} outlived the pool"
            );
        }
    }
}

/// This process's children that are multiloop workers (by their argv[0]).
fn worker_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Field 4 is the parent pid; the name (field 2) may hold spaces.
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(me.as_str())
            && String::from_utf8_lossy(&cmdline).contains(": multiloop worker")
        {
            pids.push(pid);
        }
    }
    pids
}

async fn recycle_then_close() {
    for round in 0..10 {
        let pool = within(
            60,
            "build",
            Pool::builder().processes(2).max_tasks_per_child(10).build(),
        )
        .await
        .unwrap();
        let out = within(60, "map", pool.map(inc, 0..200)).await.unwrap();
        assert_eq!(out, (1..=200).collect::<Vec<u64>>());
        within(30, "close after recycling", pool.close())
            .await
            .unwrap();
        for pid in worker_children() {
            assert!(
                pid_gone_within(pid, Duration::from_secs(10)),
                "recycling, round {round}: worker {pid} outlived close"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_terminate_and_drop_leave_no_worker_when_racing_replacement() {
    stop_while_a_worker_is_replaced(Stop::Close).await;
    stop_while_a_worker_is_replaced(Stop::Terminate).await;
    stop_while_a_worker_is_replaced(Stop::Drop).await;
    recycle_then_close().await;
}
