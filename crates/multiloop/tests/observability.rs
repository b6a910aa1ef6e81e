#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `Pool::stats` and the `tracing` events, with real processes: each
//! counter is driven by the event it counts, and each lifecycle event is
//! seen by a capturing subscriber.
//!
//! One test binary with a global subscriber: every thread of every runtime
//! here reports to it.

mod common;

use common::{inc, killed_while_waiting, nap_ms, poll_once, signal, within};

use std::future::IntoFuture;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use multiloop::{Pool, RestartPolicy};

/// Everything the library logged, as text.
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Capture(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&log().lock().unwrap()).into_owned()
}

#[multiloop::task]
async fn abort_now() -> u64 {
    std::process::abort()
}

#[multiloop::task]
async fn spin_forever() -> u64 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        std::hint::spin_loop();
    }
    0
}

/// Writes a frame header promising more than the cap into every socket.
#[multiloop::task]
async fn corrupt_channel() -> u64 {
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
    tokio::time::sleep(Duration::from_secs(30)).await;
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_tasks_done_and_workers_spawned_and_retired() {
    log();
    let pool = within(
        60,
        "build",
        Pool::builder().processes(2).max_tasks_per_child(10).build(),
    )
    .await
    .unwrap();
    let start = pool.stats();
    assert_eq!(start.workers_alive, 2);
    assert_eq!(start.workers_spawned, 2);
    within(60, "map", pool.map(inc, 0..100)).await.unwrap();
    let s = pool.stats();
    assert_eq!(s.tasks_done, 100);
    assert!(
        s.workers_spawned > 2,
        "recycled workers were replaced: {s:?}"
    );
    assert_eq!((s.tasks_queued, s.tasks_running), (0, 0));
    within(30, "close", pool.close()).await.unwrap();
    let s = pool.stats();
    assert_eq!(s.workers_alive, 0);
    assert_eq!(
        s.workers_retired, s.workers_spawned,
        "every worker exited cleanly: {s:?}"
    );
    assert_eq!(s.tasks_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_tasks_queued_and_running() {
    log();
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .concurrency(1)
            .chunk_size(1)
            .build(),
    )
    .await
    .unwrap();
    let calls: Vec<_> = (0..5)
        .map(|_| tokio::spawn(pool.apply(nap_ms, 300).into_future()))
        .collect();
    // Wait (bounded) until all five calls have submitted their task.
    within(30, "submitted", async {
        loop {
            let s = pool.stats();
            if s.tasks_queued + s.tasks_running == 5 {
                break s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let s = pool.stats();
    assert!(s.tasks_running >= 1 && s.tasks_queued >= 1, "{s:?}");
    for c in calls {
        within(30, "apply", c).await.unwrap().unwrap();
    }
    assert_eq!(pool.stats().tasks_done, 5);
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_deaths_in_tasks_retries_and_failures() {
    log();
    let pool = within(60, "build", Pool::builder().processes(1).build())
        .await
        .unwrap();
    let e = within(60, "poison", pool.apply(abort_now, ()).max_attempts(2))
        .await
        .unwrap_err();
    assert!(e.is_crash(), "{e}");
    let s = pool.stats();
    assert_eq!(s.workers_died_in_task, 2, "{s:?}");
    assert_eq!(s.tasks_retried, 1, "{s:?}");
    assert_eq!(s.tasks_failed, 1, "{s:?}");
    assert_eq!(s.restarts_in_window, 0, "poison deaths never count: {s:?}");
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_deaths_outside_tasks_and_storms() {
    log();
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .restart_intensity(2, Duration::from_secs(60))
            .restart_policy(RestartPolicy::backoff(
                Duration::from_millis(20),
                Duration::from_millis(100),
            ))
            .build(),
    )
    .await
    .unwrap();
    let victim = pool.worker_pids()[0];
    let mut napping = Box::pin(pool.apply(nap_ms, 200).into_future());
    // Submitted once polled; kill the worker while the task awaits.
    assert!(poll_once(napping.as_mut()).await);
    signal(victim, libc::SIGKILL);
    assert_eq!(within(60, "retried nap", napping).await.unwrap(), 200);
    let s = pool.stats();
    assert_eq!(s.workers_died_outside_tasks, 1, "{s:?}");
    assert!(s.tasks_retried >= 1, "{s:?}");
    assert_eq!(s.restarts_in_window, 1, "{s:?}");
    let e = within(
        60,
        "storm",
        pool.apply(killed_while_waiting, ()).max_attempts(10),
    )
    .await
    .unwrap_err();
    assert!(e.is_restart_intensity(), "{e}");
    let s = pool.stats();
    assert_eq!(s.restart_storms, 1, "{s:?}");
    within(30, "close", pool.close()).await.unwrap();
    let text = logged();
    assert!(text.contains("restart storm"), "{text}");
    assert!(text.contains("starting a replacement worker"), "{text}");
    assert!(text.contains("worker died"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_workers_killed_for_the_protocol_and_for_silence() {
    log();
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).max_attempts(1).build(),
    )
    .await
    .unwrap();
    let e = within(60, "corrupt", pool.apply(corrupt_channel, ()))
        .await
        .unwrap_err();
    assert!(e.is_crash(), "{e}");
    let s = pool.stats();
    assert!(s.workers_killed_for_protocol >= 1, "{s:?}");
    // A worker stopped (SIGSTOP) past its task's deadline plus twice the
    // grace is killed by the parent.
    let pool2 = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .timeout_grace(Duration::from_millis(100))
            .build(),
    )
    .await
    .unwrap();
    let pid = pool2.worker_pids()[0];
    let mut frozen = Box::pin(
        pool2
            .apply(nap_ms, 5_000)
            .timeout(Duration::from_millis(200))
            .into_future(),
    );
    assert!(poll_once(frozen.as_mut()).await);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let e = within(30, "frozen", frozen).await.unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let s = pool2.stats();
    assert_eq!(s.workers_killed_unresponsive, 1, "{s:?}");
    within(30, "close", pool.close()).await.unwrap();
    within(30, "close", pool2.close()).await.unwrap();
    let text = logged();
    assert!(text.contains("broke the protocol"), "{text}");
    assert!(text.contains("stopped answering"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_reach_a_subscriber_with_the_workers_span() {
    log();
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .max_tasks_per_child(3)
            .timeout_grace(Duration::from_millis(100))
            .build(),
    )
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    within(60, "map", pool.map(inc, 0..10)).await.unwrap();
    let e = within(
        60,
        "stuck",
        pool.apply(spin_forever, ())
            .timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    within(30, "close", pool.close()).await.unwrap();
    let text = logged();
    for needle in [
        "worker started",
        "worker ready",
        "worker retiring",
        "worker exited (retired)",
        "worker ended by its watchdog",
        &format!("pid={pid}"),
        "slot=0",
        "generation=",
    ] {
        assert!(text.contains(needle), "`{needle}` not logged:\n{text}");
    }
    // Replacements (recycled, then after the watchdog) are not logged
    // inside their predecessor's span: each generation has a span of its own.
    assert!(
        !text.contains("}:worker{"),
        "a worker's span nested in another's:\n{text}"
    );
}
