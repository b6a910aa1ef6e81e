#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The pool's lifecycle with real processes: `close`, `terminate` and drop
//! racing with workers that die, are replaced or recycled; lazy calls and
//! close; restart storms; memory limits; how workers look in `ps`.
//!
//! Every wait is bounded (`within`), so a regression fails with a message
//! instead of hanging the suite.

mod common;

use common::{inc, killed_while_waiting, within};

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use multiloop::{Pool, RestartPolicy};

#[multiloop::task]
async fn poison_at(x: u64, bad: Vec<u64>) -> u64 {
    if bad.contains(&x) {
        std::process::abort();
    }
    x
}

/// Leaks `mib` MiB (touched, so resident), waits, and reports the worker's
/// pid and its peak resident memory so far.
#[multiloop::task]
async fn leak_then_wait(mib: usize, wait_ms: u64) -> (u32, u64) {
    let mut v = vec![0u8; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::mem::forget(v);
    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    (std::process::id(), peak_rss_bytes())
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

#[multiloop::task]
async fn whoami() -> (String, String) {
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let arg0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    (
        comm.trim_end().to_owned(),
        String::from_utf8_lossy(arg0).into_owned(),
    )
}

/// A value whose `Serialize` refuses with its own message.
#[derive(Debug, serde::Deserialize)]
struct Refuses;

impl serde::Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refusing: NaN is not a price"))
    }
}

#[multiloop::task]
async fn returns_refuses() -> Refuses {
    Refuses
}

#[multiloop::task]
async fn takes_refuses(_x: Refuses) -> u64 {
    0
}

// ---------------------------------------------------------------- close and lazy calls

#[tokio::test]
async fn close_returns_when_an_endless_map_stream_is_dropped() {
    for _ in 0..10 {
        let pool = within(60, "build", Pool::builder().processes(2).build())
            .await
            .unwrap();
        let mut stream = pool.map_stream(inc, futures_util::stream::iter(0u64..));
        for i in 0..100u64 {
            assert_eq!(stream.next().await.unwrap().unwrap(), i + 1);
        }
        let closing = pool.close();
        tokio::pin!(closing);
        // close has begun (and waits for the stream's submitted tasks).
        let pending = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(closing.as_mut().poll(cx).is_pending())
        })
        .await;
        assert!(pending, "close waits for the stream's submitted tasks");
        drop(stream);
        within(30, "close after the stream was dropped", closing)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn close_stops_an_endless_map_that_is_still_being_read() {
    let pool = within(60, "build", Pool::builder().processes(2).build())
        .await
        .unwrap();
    let mut stream = pool.map(inc, 0u64..);
    for i in 0..1000u64 {
        assert_eq!(stream.next().await.unwrap().unwrap(), i + 1);
    }
    let reader = async {
        let mut after = 0u64;
        let mut errors = 0;
        while let Some(r) = stream.next().await {
            match r {
                Ok(_) => after += 1,
                Err(e) => {
                    assert!(e.is_pool_closed(), "{e}");
                    errors += 1;
                }
            }
        }
        (after, errors)
    };
    let (closed, (after, errors)) = within(30, "close while reading", async {
        tokio::join!(pool.close(), reader)
    })
    .await;
    closed.unwrap();
    // Inputs taken from the iterator but not submitted (at most a chunk)
    // each end with a pool-closed error; no more are taken.
    assert!(errors >= 1, "the call ends with a pool-closed error");
    // What was already submitted (a bounded window) still came back.
    assert!(
        after + errors < 100_000,
        "{after} results arrived after close"
    );
}

/// A call fed by a stream that has nothing for now (a channel kept open):
/// its submitted tasks come back, then `close` (or `terminate`) ends it
/// with one pool-closed error instead of leaving it waiting for inputs it
/// may never get.
#[tokio::test]
async fn close_or_terminate_ends_a_call_whose_input_stream_waits() {
    for terminate in [false, true] {
        let pool = within(60, "build", Pool::builder().processes(2).build())
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let input =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
            );
        let mut stream = pool.map_stream(inc, Box::pin(input));
        for i in 0..5u64 {
            tx.send(i).unwrap();
        }
        for i in 0..5u64 {
            let got = within(30, "a result", stream.next()).await;
            assert_eq!(got.unwrap().unwrap(), i + 1);
        }
        // Nothing in flight: the call now only waits for its input.
        let stopping = async {
            if terminate {
                pool.terminate().await
            } else {
                pool.close().await
            }
        };
        let rest = async {
            let mut rest = Vec::new();
            while let Some(r) = stream.next().await {
                rest.push(r);
            }
            rest
        };
        let (stopped, rest) = within(30, "the call ends once the pool stops", async {
            tokio::join!(stopping, rest)
        })
        .await;
        stopped.unwrap();
        assert_eq!(rest.len(), 1, "one error for the inputs not pulled");
        let e = rest.into_iter().next().unwrap().unwrap_err();
        assert!(e.is_pool_closed(), "terminate {terminate}: {e}");
        // The sender is still open: the call did not end for lack of input.
        assert!(tx.send(9).is_ok());
    }
}

/// A pool kept past the runtime that built it (a pool in a static, shared
/// by `#[tokio::test]`s that each have their own runtime): its workers are
/// killed with the runtime, and calls on it fail at once with an error
/// that says why, instead of waiting for workers nobody reads.
#[test]
fn a_pool_whose_runtime_shut_down_says_so_instead_of_hanging() {
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pool = first
        .block_on(within(60, "build", Pool::builder().processes(2).build()))
        .unwrap();
    let pids = pool.worker_pids();
    assert_eq!(first.block_on(pool.apply(inc, 1)).unwrap(), 2);
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let err = within(10, "a call after the runtime", pool.apply(inc, 1))
            .await
            .unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("runtime"),
            "{err}"
        );
        let mapped: Vec<_> = within(
            10,
            "a map after the runtime",
            pool.map(inc, 0..10u64).collect::<Vec<_>>(),
        )
        .await;
        assert!(mapped.iter().all(Result::is_err), "{mapped:?}");
        within(10, "close", pool.close()).await.unwrap();
    });
    for pid in pids {
        assert!(
            common::pid_gone_within(pid, Duration::from_secs(10)),
            "worker {pid} outlived its runtime"
        );
    }
}

// ---------------------------------------------------------------- poison inputs and restart storms

#[tokio::test]
async fn three_poison_inputs_fail_alone_under_the_default_limits() {
    let pool = within(60, "build", Pool::builder().processes(2).build())
        .await
        .unwrap();
    let bad = vec![100, 500, 900];
    let out: Vec<Result<u64, multiloop::Error>> = within(
        120,
        "map with poison",
        pool.map(poison_at, (0..1000u64).map(|x| (x, bad.clone())))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(out.len(), 1000);
    for (i, r) in out.iter().enumerate() {
        if bad.contains(&(i as u64)) {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_crash() && !e.is_restart_intensity(), "{i}: {e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64, "input {i}");
        }
    }
    assert_eq!(
        within(30, "apply after", pool.apply(inc, 1)).await.unwrap(),
        2
    );
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn a_restart_storm_fails_pending_tasks_then_the_pool_serves_again() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .restart_intensity(2, Duration::from_secs(60))
            .restart_policy(RestartPolicy::backoff(
                Duration::from_millis(50),
                Duration::from_secs(1),
            ))
            .build(),
    )
    .await
    .unwrap();
    // Three deaths that no task explains (each charges its task, which then
    // runs again): the third trips the limit.
    let err = within(
        60,
        "storm",
        pool.apply(killed_while_waiting, ()).max_attempts(10),
    )
    .await
    .unwrap_err();
    assert!(err.is_restart_intensity(), "{err}");
    assert!(err.to_string().contains("starts workers again"), "{err}");
    // After the backoff the pool serves again.
    assert_eq!(
        within(60, "apply after the storm", pool.apply(inc, 41))
            .await
            .unwrap(),
        42
    );
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn a_restart_storm_under_the_stop_policy_stops_for_good() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(2)
            .restart_intensity(2, Duration::from_secs(60))
            .restart_policy(RestartPolicy::Stop)
            .build(),
    )
    .await
    .unwrap();
    let results: Vec<_> = within(
        60,
        "storm",
        pool.map(killed_while_waiting, vec![(); 4])
            .max_attempts(10)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(results.iter().all(|r| r.is_err()));
    let e = results
        .iter()
        .find_map(|r| r.as_ref().err().filter(|e| e.is_restart_intensity()))
        .unwrap();
    assert!(e.to_string().contains("stopped for good"), "{e}");
    let e = within(30, "apply on a stopped pool", pool.apply(inc, 1))
        .await
        .unwrap_err();
    assert!(e.is_restart_intensity(), "{e}");
    within(30, "join", pool.join()).await.unwrap();
    assert!(pool.worker_pids().is_empty());
}

// ---------------------------------------------------------------- memory

/// The limit, the leak per task, and the slack above limit + one task's
/// leak allowed for the runtime itself and the allocator.
const LIMIT: u64 = 200 << 20;
const LEAK_MIB: usize = 50;
const SLACK: u64 = 40 << 20;

async fn peak_under_memory_limit(concurrency: usize, chunk: Option<usize>) -> (u64, usize) {
    let mut builder = Pool::builder()
        .processes(2)
        .concurrency(concurrency)
        .max_memory_per_child(LIMIT);
    if let Some(n) = chunk {
        builder = builder.chunk_size(n);
    }
    let pool = within(60, "build", builder.build()).await.unwrap();
    let out = within(
        120,
        "leaking map",
        pool.map(leak_then_wait, vec![(LEAK_MIB, 50); 30]),
    )
    .await
    .unwrap();
    assert_eq!(out.len(), 30, "every task delivered");
    let peak = out.iter().map(|&(_, peak)| peak).max().unwrap();
    let pids: HashSet<u32> = out.iter().map(|&(pid, _)| pid).collect();
    within(30, "close", pool.close()).await.unwrap();
    (peak, pids.len())
}

#[tokio::test]
async fn max_memory_per_child_bounds_a_workers_peak() {
    let (peak, workers) = peak_under_memory_limit(16, None).await;
    eprintln!("memory: peak {} MiB over {workers} workers", peak >> 20);
    assert!(
        peak <= LIMIT + ((LEAK_MIB as u64) << 20) + SLACK,
        "a worker peaked at {} MiB with a limit of {} MiB",
        peak >> 20,
        LIMIT >> 20
    );
    assert!(
        workers > 2,
        "workers were recycled during the call ({workers} seen)"
    );
}

#[tokio::test]
async fn max_memory_per_child_bounds_the_peak_one_task_at_a_time() {
    let (peak, workers) = peak_under_memory_limit(1, Some(1)).await;
    eprintln!(
        "memory, concurrency 1: peak {} MiB over {workers} workers",
        peak >> 20
    );
    assert!(
        peak <= LIMIT + ((LEAK_MIB as u64) << 20) + SLACK,
        "a worker peaked at {} MiB with a limit of {} MiB",
        peak >> 20,
        LIMIT >> 20
    );
    assert!(
        workers > 2,
        "workers were recycled during the call ({workers} seen)"
    );
}

// ---------------------------------------------------------------- names and messages

#[tokio::test]
async fn workers_keep_the_programs_name_and_say_they_are_workers() {
    let pool = within(60, "build", Pool::builder().processes(1).build())
        .await
        .unwrap();
    let (comm, arg0) = within(30, "whoami", pool.apply(whoami, ())).await.unwrap();
    let mine = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        comm,
        mine.trim_end(),
        "pgrep -x and killall match the worker"
    );
    let my_arg0 = std::env::args().next().unwrap();
    assert_eq!(arg0, format!("{my_arg0}: multiloop worker 0"));
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn a_serde_custom_error_reaches_the_caller_in_its_own_words() {
    let pool = within(60, "build", Pool::builder().processes(1).build())
        .await
        .unwrap();
    let e = within(30, "result", pool.apply(returns_refuses, ()))
        .await
        .unwrap_err();
    assert!(e.is_serialization(), "{e}");
    assert!(
        e.to_string().contains("refusing: NaN is not a price"),
        "{e}"
    );
    let e = within(30, "argument", pool.apply(takes_refuses, Refuses))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("refusing: NaN is not a price"),
        "{e}"
    );
    within(30, "close", pool.close()).await.unwrap();
}
