#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The lifecycle stress test: random interleavings, with real processes,
//! of every kind of call, streams and futures dropped half-way, workers
//! killed from outside, poison tasks, recycling by count and by memory,
//! and `close`, `terminate` or drop at a random moment.
//!
//! Invariants, checked on every iteration:
//! - every call ends, within a deadline, whatever happened;
//! - `close`, `terminate` and drop return within a deadline;
//! - results arrive at most once each, and every value is right;
//! - a call that ended with no error got every result (none lost);
//! - no worker process is left behind.
//!
//! `cargo test --test stress` runs the short mode (a few seconds). The long
//! mode runs for as many seconds as `MULTILOOP_STRESS_SECS` says:
//!
//! ```text
//! MULTILOOP_STRESS_SECS=1200 cargo test --release -p multiloop --test stress -- --nocapture
//! ```
//!
//! Each iteration prints nothing unless it fails; a failure names the seed,
//! and `MULTILOOP_STRESS_SEED=<seed>` replays that iteration's choices
//! (the timing of the processes themselves cannot be replayed).

mod common;

use std::collections::HashSet;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use multiloop::{Error, Pool, RestartPolicy};

/// Deadline for anything to end once it should.
const DEADLINE: Duration = Duration::from_secs(60);

async fn within<F: IntoFuture>(what: &str, seed: u64, fut: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, fut.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("seed {seed}: {what} did not end within {DEADLINE:?} (hung)"),
    }
}

/// xorshift64*: enough randomness for choosing operations, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[multiloop::task]
async fn inc(x: u64) -> u64 {
    if x.is_multiple_of(7) {
        tokio::task::yield_now().await;
    }
    x + 1
}

#[multiloop::task]
async fn nap_inc(x: u64, ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    x + 1
}

#[multiloop::task]
async fn poison(x: u64) -> u64 {
    if x == 3 {
        std::process::abort();
    }
    x + 1
}

#[multiloop::task]
async fn leak_inc(x: u64) -> u64 {
    let mut v = vec![0u8; 8 << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::mem::forget(v);
    tokio::task::yield_now().await;
    x + 1
}

/// Errors that a stop, a storm or a kill can explain.
fn allowed(e: &Error) -> bool {
    e.is_pool_closed() || e.is_restart_intensity() || e.is_crash() || e.is_timeout()
}

/// What one call saw: outcomes delivered (values and errors), and errors.
struct Report {
    what: &'static str,
    delivered: usize,
    errors: usize,
}

/// Runs one call to its end, checking every result as it comes.
async fn call(pool_calls: Call, seed: u64) -> Report {
    match pool_calls {
        Call::Apply(f) => {
            let (x, fut) = f;
            match fut.await {
                Ok(v) => {
                    assert_eq!(v, x + 1, "seed {seed}: apply({x})");
                    Report {
                        what: "apply",
                        delivered: 1,
                        errors: 0,
                    }
                }
                Err(e) => {
                    assert!(allowed(&e), "seed {seed}: apply: {e}");
                    Report {
                        what: "apply",
                        delivered: 1,
                        errors: 1,
                    }
                }
            }
        }
        Call::Map(n, stream, take) => {
            let mut stream = stream;
            let mut i = 0u64;
            let mut errors = 0;
            while let Some(r) = stream.next().await {
                match r {
                    Ok(v) => assert_eq!(v, i + 1, "seed {seed}: map result {i}"),
                    Err(e) => {
                        assert!(allowed(&e), "seed {seed}: map result {i}: {e}");
                        errors += 1;
                    }
                }
                i += 1;
                if take.is_some_and(|t| i >= t) {
                    break; // dropped half-way: cancels the rest
                }
            }
            assert!(i <= n, "seed {seed}: map of {n} gave {i} results");
            if take.is_none() && errors == 0 {
                assert_eq!(i, n, "seed {seed}: a map with no error lost results");
            }
            Report {
                what: "map",
                delivered: i as usize,
                errors,
            }
        }
        Call::Unordered(n, stream, take) => {
            let mut stream = stream;
            let mut seen = HashSet::new();
            let mut errors = 0;
            while let Some((index, r)) = stream.next().await {
                assert!(index < n, "seed {seed}: index {index} of {n}");
                assert!(
                    seen.insert(index),
                    "seed {seed}: index {index} delivered twice"
                );
                match r {
                    Ok(v) => assert_eq!(v, index + 1, "seed {seed}: unordered {index}"),
                    Err(e) => {
                        assert!(allowed(&e), "seed {seed}: unordered {index}: {e}");
                        errors += 1;
                    }
                }
                if take.is_some_and(|t| seen.len() as u64 >= t) {
                    break;
                }
            }
            if take.is_none() && errors == 0 {
                assert_eq!(
                    seen.len() as u64,
                    n,
                    "seed {seed}: an unordered map lost results"
                );
            }
            Report {
                what: "map_unordered",
                delivered: seen.len(),
                errors,
            }
        }
        Call::Reduce(n, fut) => match fut.await {
            Ok(r) => {
                let indices: HashSet<u64> = r.errors.iter().map(|(i, _)| *i).collect();
                assert_eq!(indices.len(), r.errors.len(), "seed {seed}: an error twice");
                for (i, e) in &r.errors {
                    assert!(*i < n && allowed(e), "seed {seed}: map_reduce {i}: {e}");
                }
                assert!(
                    r.folded + r.errors.len() as u64 <= n,
                    "seed {seed}: folded twice"
                );
                let total: u64 = (1..=n).sum();
                if r.errors.is_empty() {
                    assert_eq!(r.folded, n, "seed {seed}: map_reduce lost results");
                    assert_eq!(r.value, total, "seed {seed}: map_reduce sum");
                } else {
                    assert!(r.value <= total, "seed {seed}: map_reduce folded too much");
                }
                Report {
                    what: "map_reduce",
                    delivered: (r.folded + r.errors.len() as u64) as usize,
                    errors: r.errors.len(),
                }
            }
            Err(e) => {
                assert!(allowed(&e), "seed {seed}: map_reduce: {e}");
                Report {
                    what: "map_reduce",
                    delivered: 1,
                    errors: 1,
                }
            }
        },
        Call::Dropped(fut, after) => {
            // An apply dropped before it ends: cancellation.
            let _ = tokio::time::timeout(after, fut).await;
            Report {
                what: "dropped apply",
                delivered: 0,
                errors: 0,
            }
        }
    }
}

type Boxed<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type BoxStream<T> = std::pin::Pin<Box<dyn futures_util::Stream<Item = T> + Send>>;

enum Call {
    Apply((u64, Boxed<Result<u64, Error>>)),
    Map(u64, BoxStream<Result<u64, Error>>, Option<u64>),
    Unordered(u64, BoxStream<(u64, Result<u64, Error>)>, Option<u64>),
    Reduce(u64, Boxed<Result<multiloop::Reduced<u64>, Error>>),
    Dropped(Boxed<Result<u64, Error>>, Duration),
}

fn random_call(pool: &Pool, rng: &mut Rng) -> Call {
    let n = 1 + rng.below(2_000);
    let take = rng.chance(25).then(|| rng.below(n));
    match rng.below(8) {
        0 => {
            let x = rng.below(1000);
            Call::Apply((x, Box::pin(pool.apply(inc, x).into_future())))
        }
        1 => Call::Map(n, Box::pin(pool.map(inc, 0..n)), take),
        2 => {
            let ms = rng.below(5);
            Call::Map(
                n.min(300),
                Box::pin(pool.map(nap_inc, (0..n.min(300)).map(move |x| (x, ms)))),
                take,
            )
        }
        3 => Call::Unordered(n, Box::pin(pool.map_unordered(inc, 0..n)), take),
        4 => Call::Reduce(
            n,
            Box::pin(
                pool.map_reduce(inc, 0..n, multiloop::reduce::Sum::new())
                    .into_future(),
            ),
        ),
        5 => Call::Map(20, Box::pin(pool.map(poison, 0..20)), None),
        6 => Call::Map(
            40,
            Box::pin(pool.map(leak_inc, 0..40)),
            take.map(|t| t % 40),
        ),
        _ => {
            let after = Duration::from_millis(rng.below(20));
            Call::Dropped(Box::pin(pool.apply(nap_inc, (1, 50)).into_future()), after)
        }
    }
}

/// The workers seen during an iteration, each held by a pidfd opened
/// when it was first seen: pids are reused quickly on a busy machine, a
/// pidfd always names the process it was opened for.
#[derive(Default)]
struct Seen(std::collections::HashMap<u32, std::os::fd::OwnedFd>);

impl Seen {
    fn add(&mut self, pids: impl IntoIterator<Item = u32>) {
        use std::os::fd::FromRawFd;
        for pid in pids {
            if self.0.contains_key(&pid) {
                continue;
            }
            // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
            if fd < 0 {
                continue; // already gone
            }
            // SAFETY: a new descriptor that nobody else owns.
            let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) };
            // Opened after the pool named it: make sure it is still one of
            // our workers (our child), not a process that took over its pid.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            if ppid == Some(std::process::id().to_string().as_str()) {
                self.0.insert(pid, fd);
            }
        }
    }

    /// The first worker still running after `limit`, if any.
    fn still_running_after(&self, limit: Duration) -> Option<u32> {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + limit;
        for (&pid, fd) in &self.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if !common::wait_readable(fd.as_raw_fd(), left) {
                return Some(pid);
            }
        }
        None
    }
}

/// What a process is doing, for a failure message: its state and each
/// thread's name and wait channel.
fn describe_process(pid: u32) -> String {
    let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
    let status = read(format!("/proc/{pid}/status"));
    let state: Vec<&str> = status
        .lines()
        .filter(|l| {
            ["State", "PPid", "SigPnd", "ShdPnd", "SigBlk"]
                .iter()
                .any(|f| l.starts_with(f))
        })
        .collect();
    let mut out = format!(
        "{state:?} cmdline {:?}",
        read(format!("/proc/{pid}/cmdline"))
    );
    // Who else holds the pipes this process holds (its lifeline's write end
    // must be held by nobody once the pool is gone).
    let pipes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .filter(|l| l.starts_with("pipe:"))
                .collect()
        })
        .unwrap_or_default();
    for pipe in pipes {
        let mut holders = Vec::new();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(other) = p.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let holds = std::fs::read_dir(format!("/proc/{other}/fd")).is_ok_and(|d| {
                    d.flatten().any(|e| {
                        std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == pipe)
                    })
                });
                if holds {
                    holders.push(format!(
                        "{other} {:?}",
                        read(format!("/proc/{other}/cmdline"))
                    ));
                }
            }
        }
        out.push_str(&format!("\n  {pipe} held by {holders:?}"));
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let tid = t.file_name().to_string_lossy().into_owned();
            let comm = read(format!("/proc/{pid}/task/{tid}/comm"));
            let wchan = read(format!("/proc/{pid}/task/{tid}/wchan"));
            out.push_str(&format!("\n  thread {tid} {} in {wchan}", comm.trim()));
        }
    }
    out
}

#[derive(Default)]
struct Totals {
    iterations: u64,
    calls: u64,
    results: u64,
    errors: u64,
    kills: u64,
}

/// One iteration: a pool with random settings, random calls, random kills,
/// and a random stop at a random moment.
async fn iteration(seed: u64, totals: &mut Totals) {
    let mut rng = Rng(seed | 1);
    let mut builder = Pool::builder()
        .processes(1 + rng.below(3) as usize)
        .concurrency(1 + rng.below(16) as usize)
        .restart_policy(RestartPolicy::backoff(
            Duration::from_millis(10),
            Duration::from_millis(200),
        ))
        .shutdown_timeout(Duration::from_secs(5));
    if rng.chance(30) {
        builder = builder.max_tasks_per_child(5 + rng.below(100));
    }
    if rng.chance(20) {
        builder = builder.max_memory_per_child(64 << 20);
    }
    let pool = within("build", seed, builder.build()).await.unwrap();
    let mut seen = Seen::default();
    seen.add(pool.worker_pids());
    let calls: Vec<(Duration, Call)> = (0..1 + rng.below(6))
        .map(|_| {
            (
                Duration::from_millis(rng.below(30)),
                random_call(&pool, &mut rng),
            )
        })
        .collect();
    totals.calls += calls.len() as u64;
    let handles: Vec<_> = calls
        .into_iter()
        .map(|(delay, c)| {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                call(c, seed).await
            })
        })
        .collect();
    // Chaos while the calls run: kills at random moments.
    let kills = rng.below(4);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        let live = pool.worker_pids();
        seen.add(live.iter().copied());
        if let Some(&victim) = live.get(rng.below(live.len() as u64) as usize) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
            totals.kills += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(rng.below(60))).await;
    seen.add(pool.worker_pids());
    let stop = rng.below(3);
    match stop {
        0 => within("close", seed, pool.close()).await.unwrap(),
        1 => within("terminate", seed, pool.terminate()).await.unwrap(),
        _ => drop(pool),
    }
    for h in handles {
        let report = within("a call after the stop", seed, h).await.unwrap();
        assert!(
            report.delivered >= report.errors,
            "seed {seed}: {}",
            report.what
        );
        totals.results += report.delivered as u64;
        totals.errors += report.errors as u64;
    }
    if let Some(pid) = seen.still_running_after(Duration::from_secs(10)) {
        let how = ["close", "terminate", "drop"][stop as usize];
        panic!(
            "seed {seed}: worker {pid} outlived its pool (stopped by {how})\n{}",
            describe_process(pid)
        );
    }
    totals.iterations += 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lifecycle_interleavings_keep_every_invariant() {
    let long: Option<u64> = std::env::var("MULTILOOP_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    let replay: Option<u64> = std::env::var("MULTILOOP_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let start = Instant::now();
    let mut totals = Totals::default();
    let mut i = 0u64;
    loop {
        let seed =
            replay.unwrap_or_else(|| base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        iteration(seed, &mut totals).await;
        i += 1;
        let done = match (replay, long) {
            (Some(_), _) => true,
            (None, Some(secs)) => start.elapsed() >= Duration::from_secs(secs),
            (None, None) => i >= 20,
        };
        if done {
            break;
        }
    }
    eprintln!(
        "stress: {} iterations, {} calls, {} results, {} errors, {} kills in {:.1?}",
        totals.iterations,
        totals.calls,
        totals.results,
        totals.errors,
        totals.kills,
        start.elapsed()
    );
}
