#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What happens when things go wrong, with real processes: workers killed
//! at random, poison tasks, stuck tasks, restart storms, cancellation,
//! orphaned workers, leaking workers, a worker that corrupts its channel.

mod common;

use common::{inc, pid_gone_within, within};

use std::collections::HashSet;
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use multiloop::Pool;

#[multiloop::task]
async fn slow_square(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_micros(500)).await;
    x * x
}

#[multiloop::task]
async fn poison(x: u64) -> u64 {
    if x == 13 {
        eprintln!("poison task {x} aborting its worker");
        std::process::abort();
    }
    x
}

#[multiloop::task]
async fn spin_if_zero(x: u64) -> u64 {
    if x == 0 {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            std::hint::spin_loop();
        }
    }
    x
}

/// Appends one byte to `path` (to count, from the parent, how many tasks
/// really ran), then naps.
#[multiloop::task]
async fn count_and_nap(path: String) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .unwrap();
    f.write_all(b"x").unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    1
}

#[multiloop::task]
async fn leak(mib: usize) -> u32 {
    leak_resident(mib);
    std::process::id()
}

/// Leaks `mib` MiB of resident memory (every page touched).
fn leak_resident(mib: usize) {
    let mut v = vec![0u8; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    std::mem::forget(v);
}

/// Writes garbage into every socket this process holds: the worker's
/// channel to its parent among them.
fn write_garbage_to_every_socket() {
    for fd in 3..256 {
        // SAFETY: fstat on any integer is fine; it fails on a closed fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
        {
            let garbage = [0xffu8, 0xff, 0xff, 0x7f, 1, 2, 3];
            // SAFETY: writing a valid buffer to an open descriptor.
            unsafe { libc::write(fd, garbage.as_ptr().cast(), garbage.len()) };
        }
    }
}

/// Task 7 corrupts its worker's channel.
#[multiloop::task]
async fn corrupt_channel(x: u64) -> u64 {
    if x == 7 {
        write_garbage_to_every_socket();
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    x
}

/// Set by task 8 of `corrupt_while_another_runs` when it starts spinning.
static SPINNING: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

/// Task 7 corrupts its worker's channel from a thread, at the moment task 8
/// is inside its poll (or after a second, when it runs without task 8), so
/// the parent reads the garbage while the worker's beacon names task 8,
/// which did nothing wrong.
#[multiloop::task]
async fn corrupt_while_another_runs(x: u64) -> u64 {
    if x == 7 {
        std::thread::spawn(|| {
            let (lock, cvar) = &SPINNING;
            let guard = lock.lock().unwrap();
            drop(cvar.wait_timeout_while(guard, Duration::from_secs(1), |spinning| !*spinning));
            write_garbage_to_every_socket();
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    if x == 8 {
        *SPINNING.0.lock().unwrap() = true;
        SPINNING.1.notify_all();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            std::hint::spin_loop();
        }
    }
    x
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_random_sigkills_lose_nothing() {
    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .concurrency(256)
            .max_attempts(1000)
            .restart_intensity(100_000, Duration::from_secs(1))
            .build()
            .await
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (pool, stop, kills) = (Arc::clone(&pool), Arc::clone(&stop), Arc::clone(&kills));
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // The chaos itself is paced by time: a kill every few ms.
                std::thread::sleep(Duration::from_millis(10));
                let pids = pool.worker_pids();
                if pids.is_empty() {
                    continue;
                }
                n = n.wrapping_mul(31).wrapping_add(7);
                let pid = pids[n % pids.len()];
                // SAFETY: kill has no memory-safety preconditions.
                if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                    kills.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    const N: u64 = 100_000;
    let mut seen = vec![false; N as usize];
    let mut stream = pool.map_unordered(slow_square, 0..N);
    let mut delivered = 0u64;
    while let Some((i, r)) = stream.next().await {
        assert!(!seen[i as usize], "result {i} delivered twice");
        seen[i as usize] = true;
        assert_eq!(r.unwrap(), i * i);
        delivered += 1;
    }
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();
    assert_eq!(delivered, N);
    let kills = kills.load(Ordering::Relaxed);
    eprintln!("chaos: {N} tasks, {kills} workers SIGKILLed, {delivered} results checked");
    assert!(kills >= 10, "the chaos killed only {kills} workers");
}

#[tokio::test]
async fn poison_task_fails_alone_with_its_crash() {
    let pool = Pool::builder().processes(2).build().await.unwrap();
    let results: Vec<_> = pool.map(poison, 0..1000u64).collect().await;
    for (i, r) in results.iter().enumerate() {
        if i == 13 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_crash(), "{e}");
            assert_eq!(e.exit_info().unwrap().signal, Some(libc::SIGABRT));
            assert!(e.stderr_tail().unwrap().contains("poison task 13"), "{e}");
            assert!(e.to_string().contains("attempt 3 of 3"), "{e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
    assert_eq!(pool.apply(poison, 1).await.unwrap(), 1);
}

#[tokio::test]
async fn stuck_task_gets_hard_timeout_and_worker_is_replaced() {
    let pool = Pool::builder()
        .processes(2)
        .timeout_grace(Duration::from_millis(250))
        .build()
        .await
        .unwrap();
    let before: HashSet<u32> = pool.worker_pids().into_iter().collect();
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let results: Vec<_> = pool
        .map(spin_if_zero, 0..100u64)
        .timeout(deadline)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let e = results[0].as_ref().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(
        e.to_string().contains("killed"),
        "a hard timeout says so: {e}"
    );
    for (i, r) in results.iter().enumerate().skip(1) {
        assert_eq!(*r.as_ref().unwrap(), i as u64, "sibling {i} completes");
    }
    assert!(
        elapsed < deadline + Duration::from_millis(250) + Duration::from_millis(700),
        "{elapsed:?}"
    );
    let after: HashSet<u32> = pool.worker_pids().into_iter().collect();
    assert!(
        before.difference(&after).count() >= 1,
        "the stuck worker is gone"
    );
    assert!(
        before
            .iter()
            .filter(|p| !after.contains(p))
            .all(|&p| pid_gone_within(p, Duration::from_secs(1)))
    );
}

#[tokio::test]
async fn dropping_a_map_stream_cancels_its_queued_tasks() {
    let dir = std::env::temp_dir().join(format!("multiloop-cancel-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let path = dir.to_string_lossy().into_owned();
    let pool = Pool::builder()
        .processes(2)
        .concurrency(8)
        .build()
        .await
        .unwrap();
    const N: usize = 100_000;
    {
        let mut stream = pool.map(count_and_nap, std::iter::repeat_n(path.clone(), N));
        for _ in 0..50 {
            stream.next().await.unwrap().unwrap();
        }
    } // dropped midway
    assert_eq!(
        pool.apply(slow_square, 12).await.unwrap(),
        144,
        "the pool serves the next caller"
    );
    pool.close().await.unwrap(); // workers exited: the count is final
    let ran = std::fs::metadata(&dir)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let _ = std::fs::remove_file(&dir);
    eprintln!("cancel: {ran} of {N} tasks ran after taking 50 results");
    assert!((50..1_000).contains(&ran), "{ran} tasks ran");
}

#[tokio::test]
async fn leaking_worker_is_recycled_without_losing_tasks() {
    let pool = Pool::builder()
        .processes(2)
        .concurrency(1)
        .max_memory_per_child(150 << 20)
        .build()
        .await
        .unwrap();
    let pids: Vec<u32> = pool.map(leak, vec![20usize; 40]).await.unwrap();
    assert_eq!(pids.len(), 40);
    let distinct: HashSet<u32> = pids.into_iter().collect();
    assert!(distinct.len() > 2, "workers were replaced: {distinct:?}");
}

#[tokio::test]
async fn corrupt_frame_replaces_the_worker_and_retries_its_tasks() {
    let pool = Pool::builder()
        .processes(2)
        .max_attempts(2)
        .build()
        .await
        .unwrap();
    let results: Vec<_> = pool.map(corrupt_channel, 0..200u64).collect().await;
    assert_only_task_7_failed_with_a_bad_frame(&results);
}

/// Task 7 wrote the garbage: it alone fails, with a crash naming the bad
/// frame; every other task gives its own input back.
fn assert_only_task_7_failed_with_a_bad_frame(results: &[Result<u64, multiloop::Error>]) {
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_crash(), "{e}");
            assert!(e.to_string().contains("bad frame"), "{e}");
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64, "task {i}");
        }
    }
}

#[tokio::test]
async fn a_protocol_violation_is_not_blamed_on_the_task_being_polled() {
    // One worker, so task 8 runs beside task 7; one attempt, so a task
    // charged for the crash fails at once.
    let pool = Pool::builder()
        .processes(1)
        .max_attempts(1)
        .build()
        .await
        .unwrap();
    let results: Vec<_> = pool
        .map(corrupt_while_another_runs, 0..16u64)
        .collect()
        .await;
    // Task 8 was inside its poll when the worker was killed; it must not
    // pay for task 7's garbage.
    assert_only_task_7_failed_with_a_bad_frame(&results);
}

/// Runs only when started by `orphaned_workers_exit_when_the_parent_is_killed`.
#[tokio::test]
#[ignore = "helper process for the orphan test"]
async fn orphan_parent_role() {
    if std::env::var_os("MULTILOOP_TEST_ORPHAN_ROLE").is_none() {
        return;
    }
    let pool = Pool::builder().processes(2).build().await.unwrap();
    let pids = pool.worker_pids();
    println!(
        "PIDS {}",
        pids.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Keep a stuck task in flight too: its worker must still go.
    let _stuck = pool.apply(spin_if_zero, 0);
    std::future::pending::<()>().await;
}

#[test]
fn orphaned_workers_exit_when_the_parent_is_killed() {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "orphan_parent_role",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MULTILOOP_TEST_ORPHAN_ROLE", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut pids = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        // libtest may print "test orphan_parent_role ... " on the same line.
        if let Some(rest) = line.split("PIDS ").nth(1) {
            pids = rest.split(' ').map(|p| p.parse::<u32>().unwrap()).collect();
            break;
        }
    }
    assert_eq!(pids.len(), 2);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for pid in pids {
        assert!(
            pid_gone_within(pid, Duration::from_secs(1)),
            "worker {pid} outlived its parent"
        );
    }
}

#[tokio::test]
async fn a_worker_from_a_different_binary_is_refused_at_the_handshake() {
    // `cargo test` builds the examples next to the test binaries; the
    // quickstart registers other tasks than this test binary.
    let exe = std::env::current_exe().unwrap();
    let other = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("quickstart");
    assert!(
        other.exists(),
        "{} is built by `cargo test`",
        other.display()
    );
    let e = Pool::builder()
        .processes(1)
        .worker_executable(&other)
        .build()
        .await
        .unwrap_err();
    assert!(e.is_protocol(), "{e}");
    assert!(e.to_string().contains("refused at the handshake"), "{e}");
}

#[multiloop::task]
async fn nap_ms(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[tokio::test]
async fn a_frozen_worker_is_killed_past_its_tasks_deadline() {
    let pool = Pool::builder()
        .processes(1)
        .timeout_grace(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let frozen = pool.worker_pids()[0];
    // Freeze the whole worker, watchdog thread included: only the parent
    // can notice.
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(frozen as libc::pid_t, libc::SIGSTOP) },
        0
    );
    let start = Instant::now();
    let e = pool
        .apply(nap_ms, 5_000)
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert!(e.is_timeout(), "{e}");
    // Killed at 300 ms + 2 × 100 ms; then the task ran again on a fresh
    // worker (the frozen one was not inside its poll) and timed out there.
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(
        pid_gone_within(frozen, Duration::from_secs(1)),
        "the frozen worker was killed"
    );
    assert_eq!(pool.apply(nap_ms, 1).await.unwrap(), 1, "the pool goes on");
}

thread_local! {
    /// The last sequence number each key started with, in this worker.
    static LAST_STARTED: std::cell::RefCell<std::collections::HashMap<u64, u64>> =
        Default::default();
}

/// 1 when this task started before a task of its key submitted earlier
/// (in this worker), else 0; the check runs before the first `.await`.
#[multiloop::task]
async fn started_out_of_order(args: (u64, u64)) -> u64 {
    let (key, seq) = args;
    let out_of_order = started_after_a_later_one(key, seq);
    // Tasks of one key overlap: they finish in any order.
    tokio::time::sleep(Duration::from_micros((seq * 7919) % 900)).await;
    out_of_order
}

/// 1 when a task of `key` submitted after `seq` already started in this
/// worker, else 0; records `seq` as the key's latest start.
fn started_after_a_later_one(key: u64, seq: u64) -> u64 {
    let before = LAST_STARTED.with(|l| l.borrow_mut().insert(key, seq));
    u64::from(before.is_some_and(|b| b > seq))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_tasks_start_in_submission_order_even_after_workers_die() {
    use multiloop::reduce::{Partial, Sum};
    let pool = Pool::builder()
        .processes(2)
        .concurrency(16)
        .max_attempts(100)
        .build()
        .await
        .unwrap();
    const N: u64 = 6_000;
    let inputs = (0..N).map(|seq| (seq % 8, seq));
    let mut pieces = pool
        .map_reduce(started_out_of_order, inputs, Sum::<u64>::new())
        .route_by(|(key, _)| *key)
        .chunk_size(5)
        .partials();
    let (mut out_of_order, mut folded, mut kills) = (0, 0, 0);
    while let Some(piece) = pieces.next().await {
        match piece.unwrap() {
            Partial::Folded { value, tasks } => {
                (out_of_order, folded) = (out_of_order + value, folded + tasks)
            }
            Partial::Failed { index, error } => panic!("task {index} failed: {error}"),
        }
        // Kill a worker at a third and at two thirds, mid-call.
        if folded * 3 > N * (kills + 1) && kills < 2 {
            let pids = pool.worker_pids();
            let pid = pids[kills as usize % pids.len()];
            // SAFETY: kill has no memory-safety preconditions.
            assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
            kills += 1;
        }
    }
    assert_eq!(kills, 2);
    assert_eq!(folded, N, "every task folded once");
    assert_eq!(
        out_of_order, 0,
        "a key's tasks started out of submission order"
    );
    assert!(pool.stats().workers_spawned >= 4, "{:?}", pool.stats());
    pool.close().await.unwrap();
}

/// [`started_out_of_order`], and then, when `leak_mib` > 0, leaks that
/// much resident memory (pushing its worker over `max_memory_per_child`).
#[multiloop::task]
async fn started_out_of_order_then_leak(args: (u64, u64, usize)) -> u64 {
    let (key, seq, leak_mib) = args;
    let out_of_order = started_after_a_later_one(key, seq);
    tokio::time::sleep(Duration::from_micros((seq * 7919) % 900)).await;
    leak_resident(leak_mib);
    out_of_order
}

/// Workers that pass their memory limit retire mid-call and hand back the
/// routed tasks they had not started, and one is SIGKILLed on top: the
/// tasks handed back and those of the dead worker still start in
/// submission order on the slot's next workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_tasks_keep_their_order_through_retirements_and_deaths() {
    use multiloop::reduce::{Partial, Sum};
    let pool = Pool::builder()
        .processes(2)
        .concurrency(16)
        .max_memory_per_child(120 << 20)
        .max_attempts(100)
        .build()
        .await
        .unwrap();
    const N: u64 = 4_000;
    // Every 250th task leaks 40 MiB: a worker retires after a few.
    let inputs = (0..N).map(|seq| (seq % 8, seq, if seq % 250 == 0 { 40 } else { 0 }));
    let mut pieces = pool
        .map_reduce(started_out_of_order_then_leak, inputs, Sum::<u64>::new())
        .route_by(|(key, _, _)| *key)
        .chunk_size(5)
        .partials();
    let (mut out_of_order, mut folded, mut killed) = (0, 0, false);
    // A retiring worker that stopped starting the rest of a chunk whose
    // fold had begun left the call waiting forever: bound the wait.
    let read_all = async {
        while let Some(piece) = pieces.next().await {
            match piece.unwrap() {
                Partial::Folded { value, tasks } => {
                    (out_of_order, folded) = (out_of_order + value, folded + tasks)
                }
                Partial::Failed { index, error } => panic!("task {index} failed: {error}"),
            }
            if !killed && folded * 2 > N {
                let pid = pool.worker_pids()[0];
                // SAFETY: kill has no memory-safety preconditions.
                assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
                killed = true;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read_all)
        .await
        .unwrap_or_else(|_| panic!("the call hung: {folded} of {N} tasks folded"));
    assert_eq!(folded, N, "every task folded once");
    assert_eq!(
        out_of_order, 0,
        "a key's tasks started out of submission order"
    );
    let stats = pool.stats();
    assert!(stats.workers_retired >= 2, "{stats:?}");
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- cancelled tasks that never yield

/// Tells the test it has started (a connection to `port`), then spins in a
/// CPU loop for ever: no cancel can reach it.
#[multiloop::task]
async fn spin_after_calling(port: u16) -> u64 {
    let _told = std::net::TcpStream::connect(("127.0.0.1", port));
    loop {
        std::hint::spin_loop();
    }
}

/// Tells the test it has started, then blocks its worker's event loop for
/// `ms` milliseconds (a long CPU-bound step that does finish).
#[multiloop::task]
async fn block_after_calling(port: u16, ms: u64) -> u64 {
    let _told = std::net::TcpStream::connect(("127.0.0.1", port));
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A dropped call whose task spins for ever (no timeout set): its worker
/// is found stuck in the cancelled task's poll and replaced, and every
/// later call is served; nothing fails.
#[tokio::test]
async fn a_cancelled_task_that_never_yields_does_not_hold_up_later_calls() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(2)
            .timeout_grace(Duration::from_millis(200))
            .build(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spinning = pool.apply(spin_after_calling, port);
    tokio::select! {
        _ = spinning => panic!("a task that spins for ever ended"),
        accepted = listener.accept() => drop(accepted.unwrap()),
    }
    // The call is dropped: cancelled while its task spins.
    for i in 0..10u64 {
        let got = within(10, "an apply after the cancel", pool.apply(inc, i)).await;
        assert_eq!(got.unwrap(), i + 1);
    }
    let all: Vec<u64> = within(
        30,
        "a map after the cancel",
        pool.map(inc, 0..200u64).collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
    let stats = within(
        10,
        "the stuck worker replaced",
        pool.wait_for_stats(|s| s.workers_killed_unresponsive == 1 && s.workers_alive == 2),
    )
    .await;
    assert_eq!(stats.tasks_failed, 0, "{stats:?}");
    within(10, "close", pool.close()).await.unwrap();
}

/// A cancel while the worker's loop is busy with another call's long
/// CPU-bound step (which does end) kills nothing: that call's task
/// finishes, on the same worker.
#[tokio::test]
async fn a_cancel_while_another_task_blocks_the_worker_kills_nothing() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .concurrency(2)
            .timeout_grace(Duration::from_millis(100))
            .build(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let blocking = pool.apply(block_after_calling, (port, 1_500));
    let napping = pool.apply(nap_ms, 30_000);
    let both = async {
        let (blocked, ()) = tokio::join!(blocking, async {
            tokio::select! {
                _ = napping => panic!("the nap ended before it was cancelled"),
                accepted = listener.accept() => drop(accepted.unwrap()),
            }
            // `napping` is dropped (cancelled) while the other task holds
            // the worker's event loop for 1.5 s: 15 graces.
        });
        blocked
    };
    let blocked = within(30, "the blocking task", both).await;
    assert_eq!(blocked.unwrap(), 1_500);
    let s = pool.stats();
    assert_eq!(s.workers_spawned, 1, "{s:?}");
    assert_eq!(s.workers_killed_unresponsive, 0, "{s:?}");
    assert_eq!(
        within(10, "an apply after", pool.apply(inc, 1))
            .await
            .unwrap(),
        2
    );
    within(10, "close", pool.close()).await.unwrap();
}
