#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]
//! Acceptance tests: aiomultiprocess's own test suite (`test_core.py`,
//! `test_pool.py`, `test_scheduler.py`, ...) translated to multiloop, plus the
//! failure modes a process pool must survive. Every crash, timeout and
//! cancellation here happens to a real worker process.

use std::collections::{BTreeSet, HashSet};
use std::future::{Future, IntoFuture};
use std::io::Write as _;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use multiloop::{Error, Pool, Process, Worker};
use serde::de::Error as _;
use serde::ser::{Error as _, SerializeTuple as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// ---------------------------------------------------------------- helpers

/// Bounds an await that must not hang: a hang is a failure, not a stuck run.
async fn within<F: IntoFuture>(secs: u64, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(Duration::from_secs(secs), fut.into_future()).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {secs} s (the library hung)"),
    }
}

/// Polls a stream exactly once (so a lazy `map` submits its first chunks),
/// without waiting for it. The stream must not be ready yet.
async fn poll_stream_once<S: futures_util::Stream + Unpin>(s: &mut S) {
    std::future::poll_fn(|cx| {
        assert!(
            s.poll_next_unpin(cx).is_pending(),
            "the stream was expected to be pending"
        );
        Poll::Ready(())
    })
    .await
}

/// Polls a future exactly once (so an `apply` submits its task).
async fn poll_future_once<F: Future + Unpin>(f: &mut F) {
    std::future::poll_fn(|cx| {
        assert!(
            std::pin::Pin::new(&mut *f).poll(cx).is_pending(),
            "the future was expected to be pending"
        );
        Poll::Ready(())
    })
    .await
}

fn pid_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// True when `pid` is a zombie: dead, waiting for a parent that is not us
/// to reap it (in a container, PID 1 may never do it).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Waits (bounded) until none of `pids` exists any more; the runtime keeps
/// running meanwhile, so the pool's supervisors can reap their children.
async fn assert_pids_gone(pids: &[u32], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| pid_exists(p)).collect();
        if alive.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("worker processes {alive:?} still exist {limit:?} after the pool went away");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pool(processes: usize) -> Pool {
    within(
        60,
        "Pool::build",
        Pool::builder().processes(processes).build(),
    )
    .await
    .unwrap()
}

// ---------------------------------------------------------------- tasks

#[multiloop::task]
async fn inc(x: u64) -> u64 {
    x + 1
}

#[multiloop::task]
async fn square(x: u64) -> u64 {
    x * x
}

#[multiloop::task]
async fn answer() -> u64 {
    42
}

#[multiloop::task]
async fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[multiloop::task]
async fn fma(a: i64, b: i64, c: i64) -> i64 {
    a * b + c
}

#[multiloop::task]
async fn sleep_ms(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[multiloop::task]
async fn whoami() -> u32 {
    std::process::id()
}

#[multiloop::task]
async fn double_with_pid(x: u64) -> (u64, u32) {
    (x * 2, std::process::id())
}

#[multiloop::task]
async fn add_with_pid(a: u64, b: u64) -> (u64, u32) {
    (a + b, std::process::id())
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Sleeps longer for earlier inputs, so tasks complete in reverse order;
/// returns the input and when it completed.
#[multiloop::task]
async fn late(i: u64, n: u64) -> (u64, u128) {
    tokio::time::sleep(Duration::from_millis((n - i) * 25)).await;
    (i, now_ns())
}

#[multiloop::task]
async fn late1(i: u64) -> (u64, u128) {
    tokio::time::sleep(Duration::from_millis((16 - i) * 25)).await;
    (i, now_ns())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum MyErr {
    Odd(u64),
    TooBig { value: u64, limit: u64 },
}

#[multiloop::task]
async fn even_only(x: u64) -> Result<u64, MyErr> {
    if x > 1000 {
        Err(MyErr::TooBig {
            value: x,
            limit: 1000,
        })
    } else if x % 2 == 1 {
        Err(MyErr::Odd(x))
    } else {
        Ok(x)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Detailed {
    code: u32,
    message: String,
    path: Vec<String>,
    cause: Option<Box<Detailed>>,
}

#[multiloop::task]
async fn detailed_failure(code: u32) -> Result<String, Detailed> {
    tokio::task::yield_now().await;
    Err(Detailed {
        code,
        message: format!("failed with {code}"),
        path: vec!["a".into(), "b".into()],
        cause: Some(Box::new(Detailed {
            code: 1,
            message: "root".into(),
            path: vec![],
            cause: None,
        })),
    })
}

#[multiloop::task]
async fn panics_now(x: u64) -> u64 {
    if x == 3 {
        panic!("boom at {x}");
    }
    x
}

#[multiloop::task]
async fn panics_later(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(5)).await;
    if x == 3 {
        panic!("late boom at {x}");
    }
    x
}

#[multiloop::task]
async fn chatty(x: u64) -> u64 {
    let mut out = std::io::stdout().lock();
    for i in 0..3000u64 {
        writeln!(out, "chatty {x}: line {i} of noise").unwrap();
        if i % 100 == 0 {
            // Bytes that look like frames of the protocol, and not UTF-8.
            out.write_all(&[
                0x05, 0, 0, 0, 0x11, 0, 0, 0, 0xff, 0xfe, 0x00, 0x80, 0x10, b'\n',
            ])
            .unwrap();
            out.write_all(&[0xff; 64]).unwrap();
            out.write_all(b"\n").unwrap();
        }
    }
    out.flush().unwrap();
    drop(out);
    for i in 0..200u64 {
        eprintln!("chatty {x}: stderr line {i} \u{0}\u{1}\u{7f}");
    }
    x * 3
}

#[multiloop::task]
async fn abort_now() -> u64 {
    std::process::abort()
}

#[multiloop::task]
async fn exit_three() -> u64 {
    std::process::exit(3)
}

#[derive(Debug)]
struct Greeting(String);

#[multiloop::task]
async fn init_greeting(text: String) {
    multiloop::set_worker_state(Greeting(text));
}

#[multiloop::task]
async fn read_greeting() -> Option<String> {
    multiloop::worker_state::<Greeting>().map(|g| g.0.clone())
}

#[multiloop::task]
async fn failing_init() -> Result<(), String> {
    Err("the database is down".to_owned())
}

/// A value that refuses to serialize when it is a multiple of 3, after
/// having written part of itself (so a half-written value must be undone).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Picky(u64);

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        if self.0.is_multiple_of(3) {
            return Err(S::Error::custom(format!(
                "Picky({}) refuses to be serialized",
                self.0
            )));
        }
        t.serialize_element(&self.0)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (a, b) = <(u64, u64)>::deserialize(d)?;
        if a != b {
            return Err(D::Error::custom("Picky halves differ"));
        }
        Ok(Picky(a))
    }
}

#[multiloop::task]
async fn make_picky(x: u64) -> Picky {
    Picky(x)
}

#[multiloop::task]
async fn take_picky(p: Picky) -> u64 {
    p.0 * 10
}

#[multiloop::task]
async fn init_picky(_p: Picky) {}

#[multiloop::task]
async fn abort_on_five(x: u64) -> u64 {
    if x == 5 {
        std::process::abort();
    }
    x
}

#[multiloop::task]
async fn blob(n: usize) -> Vec<u8> {
    vec![7u8; n]
}

#[multiloop::task]
async fn blob_len(b: Vec<u8>) -> usize {
    b.len()
}

#[multiloop::task(
    name = "acceptance::a_task_whose_registered_name_is_very_long_because_its_author_wanted_to_keep_a_stable_versioned_name_across_refactorings_of_the_module_tree_and_chose_to_spell_out_everything_about_it_including_the_version_v1_and_the_team_owning_it_billing_and_payments"
)]
async fn long_named(b: Vec<u8>) -> usize {
    b.len()
}

static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MAX_RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Returns the most tasks this worker has seen running at once.
#[multiloop::task]
async fn track_concurrency(ms: u64) -> usize {
    use std::sync::atomic::Ordering::SeqCst;
    let now = RUNNING.fetch_add(1, SeqCst) + 1;
    MAX_RUNNING.fetch_max(now, SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, SeqCst);
    MAX_RUNNING.load(SeqCst)
}

#[multiloop::task]
async fn spin_ms(ms: u64) -> u64 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(ms) {
        std::hint::spin_loop();
    }
    ms
}

/// Builds a pool, reports its worker pids over a Unix socket, then waits
/// forever (until its process is killed).
#[multiloop::task]
async fn pool_then_hang(socket_path: String) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let pool = Pool::builder()
        .processes(2)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let pids: Vec<String> = pool.worker_pids().iter().map(|p| p.to_string()).collect();
    let mut s = tokio::net::UnixStream::connect(&socket_path)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(pids.join(",").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())?;
    std::future::pending::<()>().await;
    drop(pool);
    Ok(())
}

#[multiloop::task]
async fn slow_first(i: u64) -> u64 {
    if i == 0 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    i
}

#[multiloop::task]
async fn panicking_init() {
    panic!("init exploded");
}

#[multiloop::task]
async fn spawns_inside(x: u64) -> u64 {
    let a = tokio::spawn(async move { x + 1 }).await.unwrap();
    let b = tokio::task::spawn_local(async move { x * 2 })
        .await
        .unwrap();
    a + b
}

#[multiloop::task]
async fn picky_error(x: u64) -> Result<u64, PickyErr> {
    if x.is_multiple_of(2) {
        Ok(x)
    } else {
        Err(PickyErr(x))
    }
}

/// A task error that cannot be serialized when odd multiples of 3.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PickyErr(u64);

impl Serialize for PickyErr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Picky(self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for PickyErr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Picky::deserialize(d).map(|p| PickyErr(p.0))
    }
}

#[multiloop::task]
async fn nested_sum(n: u64) -> Result<(u64, u32, Vec<u32>), String> {
    let pool = Pool::builder()
        .processes(2)
        .build()
        .await
        .map_err(|e| format!("nested build: {e}"))?;
    let values = pool
        .map(inc, 0..n)
        .await
        .map_err(|e| format!("nested map: {e}"))?;
    let pids: BTreeSet<u32> = pool
        .map(whoami, vec![(); 8])
        .await
        .map_err(|e| format!("nested whoami: {e}"))?
        .into_iter()
        .collect();
    pool.close()
        .await
        .map_err(|e| format!("nested close: {e}"))?;
    Ok((
        values.iter().sum(),
        std::process::id(),
        pids.into_iter().collect(),
    ))
}

// ---------------------------------------------------------------- Process

#[tokio::test]
async fn process_start_join_is_alive_name_pid() {
    let mut p = Process::new(sleep_ms, 300).unwrap().with_name("sleeper");
    assert_eq!(p.name(), "sleeper");
    assert_eq!(p.pid(), None);
    assert!(!p.is_alive());
    p.start().unwrap();
    let pid = p.pid().expect("pid after start");
    assert!(pid > 0 && pid != std::process::id());
    assert!(p.is_alive());
    assert!(pid_exists(pid));
    let exit = within(30, "join", p.join(None)).await.unwrap();
    assert_eq!(exit.code, Some(0));
    assert_eq!(exit.signal, None);
    assert!(!p.is_alive());
    assert_eq!(p.exit_status(), Some(&exit));
    // Joining again answers the same exit at once.
    assert_eq!(within(5, "join again", p.join(None)).await.unwrap(), exit);
}

#[tokio::test]
async fn process_default_name_is_the_task_name() {
    let p = Process::new(square, 3).unwrap();
    assert_eq!(p.name(), "square");
}

#[tokio::test]
async fn process_start_twice_is_a_usage_error() {
    let mut p = Process::new(answer, ()).unwrap();
    p.start().unwrap();
    assert!(p.start().unwrap_err().is_usage());
    within(30, "join", p.join(None)).await.unwrap();
}

#[tokio::test]
async fn process_await_starts_and_joins() {
    let exit = within(30, "process.await", Process::new(square, 12).unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code, Some(0));
    assert_eq!(exit.signal, None);
}

#[tokio::test]
async fn process_join_before_start_is_a_usage_error() {
    let mut p = Process::new(answer, ()).unwrap();
    let err = p.join(None).await.unwrap_err();
    assert!(err.is_usage(), "{err}");
    let err = p.join(Some(Duration::from_millis(10))).await.unwrap_err();
    assert!(err.is_usage(), "{err}");
}

#[tokio::test]
async fn process_signals_before_start_are_usage_errors() {
    let p = Process::new(answer, ()).unwrap();
    assert!(p.terminate().unwrap_err().is_usage());
    assert!(p.kill().unwrap_err().is_usage());
}

#[tokio::test]
async fn process_terminate_gives_sigterm_exit() {
    let mut p = Process::new(sleep_ms, 60_000).unwrap();
    p.start().unwrap();
    let pid = p.pid().unwrap();
    p.terminate().unwrap();
    let exit = within(30, "join after terminate", p.join(None))
        .await
        .unwrap();
    assert_eq!(exit.signal, Some(libc::SIGTERM));
    assert_eq!(exit.code, None);
    assert!(!p.is_alive());
    assert!(!pid_exists(pid));
}

#[tokio::test]
async fn process_kill_gives_sigkill_exit() {
    let mut p = Process::new(sleep_ms, 60_000).unwrap();
    p.start().unwrap();
    p.kill().unwrap();
    let exit = within(30, "join after kill", p.join(None)).await.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    assert!(!p.is_alive());
}

#[tokio::test]
async fn process_join_timeout_leaves_it_running() {
    let mut p = Process::new(sleep_ms, 60_000).unwrap();
    p.start().unwrap();
    let err = within(
        30,
        "join with timeout",
        p.join(Some(Duration::from_millis(200))),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(p.is_alive());
    assert!(pid_exists(p.pid().unwrap()));
    p.kill().unwrap();
    let exit = within(30, "join after kill", p.join(None)).await.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn process_bad_arguments_are_a_serialization_error() {
    let err = Process::new(take_picky, Picky(3)).unwrap_err();
    assert!(err.is_serialization(), "{err}");
}

// ---------------------------------------------------------------- Worker

#[tokio::test]
async fn worker_result_before_join_is_an_error() {
    let mut w = Worker::new(square, 7).unwrap();
    let err = w.result().unwrap_err();
    assert!(err.is_usage(), "{err}");
    w.start().unwrap();
    let err = w.result().unwrap_err();
    assert!(err.is_usage(), "{err}");
    let exit = within(30, "worker join", w.join(None)).await.unwrap();
    assert_eq!(exit.code, Some(0));
    assert_eq!(w.result().unwrap(), 49);
}

#[tokio::test]
async fn worker_await_gives_the_value() {
    assert_eq!(
        within(30, "worker.await", Worker::new(square, 12).unwrap())
            .await
            .unwrap(),
        144
    );
    assert_eq!(
        within(30, "worker.await", Worker::new(answer, ()).unwrap())
            .await
            .unwrap(),
        42
    );
    assert_eq!(
        within(30, "worker.await", Worker::new(add, (2, 3)).unwrap())
            .await
            .unwrap(),
        5
    );
}

#[tokio::test]
async fn worker_task_error_is_typed() {
    let err = within(30, "worker.await", Worker::new(even_only, 5).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.task_error::<MyErr>(), Some(&MyErr::Odd(5)));
}

/// Blocks until the child `pid` has exited, without reaping it (so the
/// library still sees its exit status) and without yielding to the runtime
/// (so no task of the library runs meanwhile).
fn wait_exited_no_reap(pid: u32) {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(r, 0, "waitid({pid}): {}", std::io::Error::last_os_error());
}

#[tokio::test]
async fn worker_killed_is_a_crash() {
    let mut w = Worker::new(sleep_ms, 60_000).unwrap();
    w.start().unwrap();
    let pid = w.process().pid().unwrap();
    send_signal(pid, libc::SIGKILL);
    // Deterministic timing: the worker is dead before the library's driver
    // task first runs (it could otherwise run before or after the death).
    wait_exited_no_reap(pid);
    let exit = within(30, "worker join", w.join(None)).await.unwrap();
    assert_eq!(exit.signal, Some(libc::SIGKILL));
    let err = w.result().unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert_eq!(err.exit_info().unwrap().signal, Some(libc::SIGKILL));
}

#[tokio::test]
async fn worker_abort_is_a_crash() {
    let err = within(30, "worker.await", Worker::new(abort_now, ()).unwrap())
        .await
        .unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert_eq!(err.exit_info().unwrap().signal, Some(libc::SIGABRT));
}

// ---------------------------------------------------------------- initializer

#[tokio::test]
async fn initializer_runs_before_tasks_in_every_worker() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(2)
            .max_tasks_per_child(3)
            .initializer(init_greeting, "hello from init".to_owned())
            .build(),
    )
    .await
    .unwrap();
    // Recycled workers run the initializer too.
    let seen = within(60, "map", pool.map(read_greeting, vec![(); 30]))
        .await
        .unwrap();
    assert_eq!(seen.len(), 30);
    assert!(
        seen.iter().all(|s| s.as_deref() == Some("hello from init")),
        "{seen:?}"
    );
    assert_eq!(
        pool.apply(read_greeting, ()).await.unwrap().as_deref(),
        Some("hello from init")
    );
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn without_initializer_there_is_no_state() {
    let pool = pool(1).await;
    assert_eq!(pool.apply(read_greeting, ()).await.unwrap(), None);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn failing_initializer_fails_build() {
    let err = within(
        60,
        "build",
        Pool::builder()
            .processes(2)
            .initializer(failing_init, ())
            .build(),
    )
    .await
    .unwrap_err();
    assert!(err.is_initializer(), "{err}");
    assert!(err.to_string().contains("the database is down"), "{err}");
}

/// Fails once `flag` exists: the first workers start, their replacements
/// do not.
#[multiloop::task]
async fn init_unless_flagged(flag: String) -> Result<(), String> {
    if std::path::Path::new(&flag).exists() {
        return Err(format!("refusing to start: {flag} is present"));
    }
    Ok(())
}

/// A replacement worker whose initializer fails is a worker that died at
/// start-up, not one that broke the protocol: when they keep failing, the
/// restart storm's error quotes the initializer's own words.
#[tokio::test]
async fn a_replacement_whose_initializer_fails_is_named_in_the_storm() {
    let flag = std::env::temp_dir().join(format!("multiloop-init-flag-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .initializer(init_unless_flagged, flag.display().to_string())
            .restart_intensity(2, Duration::from_secs(60))
            .restart_policy(multiloop::RestartPolicy::Stop)
            .build(),
    )
    .await
    .unwrap();
    assert_eq!(pool.apply(inc, 1).await.unwrap(), 2);
    std::fs::write(&flag, b"").unwrap();
    let pid = pool.worker_pids()[0];
    // SAFETY: kill(2) on a worker of our own pool.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let err = within(60, "a call while replacements fail", pool.apply(inc, 2))
        .await
        .unwrap_err();
    let _ = std::fs::remove_file(&flag);
    assert!(err.is_restart_intensity(), "{err}");
    assert!(err.to_string().contains("is present"), "{err}");
    assert!(
        err.stderr_tail().is_some_and(|t| t.contains("is present")),
        "{err}"
    );
    let s = pool.stats();
    assert_eq!(s.workers_killed_for_protocol, 0, "{s:?}");
    assert!(s.workers_died_outside_tasks >= 3, "{s:?}");
}

#[tokio::test]
async fn initializer_arguments_that_fail_to_serialize_fail_build() {
    let err = Pool::builder()
        .processes(1)
        .initializer(init_picky, Picky(3))
        .build()
        .await
        .unwrap_err();
    assert!(err.is_serialization(), "{err}");
}

// ---------------------------------------------------------------- typed errors

#[tokio::test]
async fn task_error_reaches_the_caller_typed() {
    let pool = pool(2).await;
    let err = pool.apply(even_only, 3).await.unwrap_err();
    assert!(err.is_task_error());
    assert_eq!(err.task_error::<MyErr>(), Some(&MyErr::Odd(3)));
    assert_eq!(err.task_error::<String>(), None);
    let err = pool.apply(even_only, 5000).await.unwrap_err();
    // Asking for the wrong type gives the error back intact.
    let err = err.into_task_error::<String>().unwrap_err();
    assert_eq!(
        err.into_task_error::<MyErr>().unwrap(),
        MyErr::TooBig {
            value: 5000,
            limit: 1000
        }
    );
    assert_eq!(pool.apply(even_only, 4).await.unwrap(), 4);
    // In a map, the first error in input order fails the awaited call.
    let err = pool.map(even_only, [2, 4, 7, 9]).await.unwrap_err();
    assert_eq!(err.task_error::<MyErr>(), Some(&MyErr::Odd(7)));
    pool.close().await.unwrap();
}

#[tokio::test]
async fn struct_task_error_round_trips() {
    let pool = pool(1).await;
    let err = pool.apply(detailed_failure, 77).await.unwrap_err();
    let expected = Detailed {
        code: 77,
        message: "failed with 77".into(),
        path: vec!["a".into(), "b".into()],
        cause: Some(Box::new(Detailed {
            code: 1,
            message: "root".into(),
            path: vec![],
            cause: None,
        })),
    };
    assert_eq!(err.task_error::<Detailed>(), Some(&expected));
    assert!(err.to_string().contains("failed with 77"), "{err}");
    assert_eq!(err.into_task_error::<Detailed>().unwrap(), expected);
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- panics

#[tokio::test]
async fn panic_message_and_location_reach_the_caller() {
    let pool = pool(2).await;
    for (what, err) in [
        (
            "on the first poll",
            pool.apply(panics_now, 3).await.unwrap_err(),
        ),
        (
            "after an await",
            pool.apply(panics_later, 3).await.unwrap_err(),
        ),
    ] {
        assert!(err.is_panic(), "{what}: {err}");
        let message = err.panic_message().unwrap();
        assert!(message.contains("boom at 3"), "{what}: {message}");
        let location = err.panic_location().expect("a panic location");
        assert!(location.contains("acceptance.rs"), "{what}: {location}");
    }
    // A panicking task does not take its neighbours or its worker down.
    let mut results: Vec<(u64, Result<u64, Error>)> =
        pool.map_unordered(panics_later, 0..8).collect().await;
    results.sort_by_key(|(i, _)| *i);
    for (i, r) in results {
        if i == 3 {
            assert!(r.unwrap_err().is_panic());
        } else {
            assert_eq!(r.unwrap(), i);
        }
    }
    assert_eq!(pool.apply(inc, 1).await.unwrap(), 2);
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- output noise

#[tokio::test]
async fn printing_tasks_still_return_correct_results() {
    let pool = pool(2).await;
    let out = within(120, "map chatty", pool.map(chatty, 0..6))
        .await
        .unwrap();
    assert_eq!(out, (0..6).map(|x| x * 3).collect::<Vec<_>>());
    assert_eq!(pool.apply(inc, 9).await.unwrap(), 10);
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- crashes

#[tokio::test]
async fn aborting_task_is_a_crash_and_the_pool_survives() {
    let pool = pool(2).await;
    let err = within(60, "apply abort", pool.apply(abort_now, ()).max_attempts(1))
        .await
        .unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert_eq!(err.exit_info().unwrap().signal, Some(libc::SIGABRT));
    // With retries it still ends, as a crash, once the attempts are used up.
    let err = within(
        60,
        "apply abort x3",
        pool.apply(abort_now, ()).max_attempts(3),
    )
    .await
    .unwrap_err();
    assert!(err.is_crash(), "{err}");
    // The pool replaced its workers and still serves.
    assert_eq!(
        within(60, "apply after crash", pool.apply(inc, 41))
            .await
            .unwrap(),
        42
    );
    assert_eq!(
        within(60, "map after crash", pool.map(square, 0..100))
            .await
            .unwrap()[99],
        99 * 99
    );
    assert_eq!(pool.worker_pids().len(), 2);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn exiting_task_is_a_crash_with_its_exit_code() {
    let pool = pool(1).await;
    let err = within(60, "apply exit", pool.apply(exit_three, ()).max_attempts(1))
        .await
        .unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert_eq!(err.exit_info().unwrap().code, Some(3));
    assert_eq!(
        within(60, "apply after crash", pool.apply(inc, 1))
            .await
            .unwrap(),
        2
    );
    pool.close().await.unwrap();
}

#[tokio::test]
async fn a_crash_fails_only_the_crashing_task_of_a_map() {
    let pool = pool(2).await;
    let mut results: Vec<(u64, Result<u64, Error>)> = within(
        120,
        "map with crash",
        pool.map_unordered(abort_on_five, 0..20)
            .chunk_size(4)
            .collect::<Vec<_>>(),
    )
    .await;
    results.sort_by_key(|(i, _)| *i);
    assert_eq!(results.len(), 20);
    let mut bystanders_failed = Vec::new();
    for (i, r) in results {
        match r {
            Ok(v) => {
                assert_ne!(i, 5, "the aborting task succeeded");
                assert_eq!(v, i);
            }
            Err(e) => {
                assert!(e.is_crash(), "input {i}: {e}");
                if i != 5 {
                    bystanders_failed.push(i);
                }
            }
        }
    }
    assert!(
        bystanders_failed.is_empty(),
        "tasks {bystanders_failed:?} never crash themselves, yet failed as crashes after sharing a worker with the crashing task"
    );
    pool.close().await.unwrap();
}

#[tokio::test]
async fn killed_worker_task_is_retried_elsewhere() {
    let pool = pool(1).await;
    let pid = pool.worker_pids()[0];
    let mut call = pool.apply(sleep_ms, 100);
    poll_future_once(&mut call).await; // the task is now assigned to `pid`
    send_signal(pid, libc::SIGKILL);
    assert_eq!(within(60, "retried apply", call).await.unwrap(), 100);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 1);
    assert_ne!(pids[0], pid);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn killed_worker_task_without_retries_is_a_crash() {
    let pool = pool(1).await;
    let pid = pool.worker_pids()[0];
    let mut call = pool.apply(sleep_ms, 60_000).max_attempts(1);
    poll_future_once(&mut call).await;
    send_signal(pid, libc::SIGKILL);
    let err = within(60, "crashed apply", call).await.unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert_eq!(err.exit_info().unwrap().signal, Some(libc::SIGKILL));
    assert_eq!(
        within(60, "apply after crash", pool.apply(inc, 1))
            .await
            .unwrap(),
        2
    );
    pool.close().await.unwrap();
}

#[tokio::test]
async fn task_timeout_is_reported() {
    let pool = pool(1).await;
    let err = within(
        60,
        "apply with timeout",
        pool.apply(sleep_ms, 60_000)
            .timeout(Duration::from_millis(100)),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(
        pool.apply(sleep_ms, 1)
            .timeout(Duration::from_secs(30))
            .await
            .unwrap(),
        1
    );
    pool.close().await.unwrap();
}

#[tokio::test]
async fn no_worker_left_after_the_pool_is_dropped() {
    let pool = pool(3).await;
    assert_eq!(pool.apply(inc, 1).await.unwrap(), 2);
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| pid_exists(p)));
    drop(pool);
    assert_pids_gone(&pids, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn no_worker_left_after_the_pool_is_dropped_mid_task() {
    let pool = pool(2).await;
    let pids = pool.worker_pids();
    let mut m = pool.map(sleep_ms, vec![60_000; 8]);
    poll_stream_once(&mut m).await;
    drop(m);
    drop(pool);
    assert_pids_gone(&pids, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn no_worker_left_after_close() {
    let pool = pool(2).await;
    let pids = pool.worker_pids();
    assert_eq!(pool.map(inc, 0..10).await.unwrap().len(), 10);
    within(30, "close", pool.close()).await.unwrap();
    assert!(pool.worker_pids().is_empty());
    assert_pids_gone(&pids, Duration::from_secs(10)).await;
}

// ---------------------------------------------------------------- recycling

#[tokio::test]
async fn max_tasks_per_child_recycles_workers_with_apply() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(2).max_tasks_per_child(2).build(),
    )
    .await
    .unwrap();
    let mut pids = HashSet::new();
    for _ in 0..10 {
        pids.insert(within(60, "apply", pool.apply(whoami, ())).await.unwrap());
    }
    assert!(
        pids.len() > 2,
        "only {} distinct worker pids: {pids:?}",
        pids.len()
    );
    assert!(!pids.contains(&std::process::id()));
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn max_tasks_per_child_recycles_workers_with_map() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(2).max_tasks_per_child(10).build(),
    )
    .await
    .unwrap();
    let out = within(120, "map", pool.map(double_with_pid, 0..200))
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (0..200).map(|x| x * 2).collect::<Vec<_>>()
    );
    let pids: HashSet<u32> = out.iter().map(|(_, p)| *p).collect();
    assert!(pids.len() > 2, "only {} distinct worker pids", pids.len());
    // No worker ran more than its share.
    for pid in &pids {
        let n = out.iter().filter(|(_, p)| p == pid).count();
        assert!(
            n <= 10,
            "worker {pid} ran {n} tasks, more than max_tasks_per_child = 10"
        );
    }
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn max_tasks_per_child_recycles_workers_with_starmap() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(2).max_tasks_per_child(5).build(),
    )
    .await
    .unwrap();
    let inputs: Vec<(u64, u64)> = (0..60).map(|i| (i, 1000 * i)).collect();
    let out = within(120, "starmap", pool.starmap(add_with_pid, inputs.clone()))
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        inputs.iter().map(|(a, b)| a + b).collect::<Vec<_>>()
    );
    let pids: HashSet<u32> = out.iter().map(|(_, p)| *p).collect();
    assert!(pids.len() > 2, "only {} distinct worker pids", pids.len());
    within(30, "close", pool.close()).await.unwrap();
}

// ---------------------------------------------------------------- map / starmap

fn assert_completed_out_of_order(out: &[(u64, u128)]) {
    assert!(
        out.windows(2).any(|w| w[0].1 > w[1].1),
        "the tasks completed in input order, so the test proves nothing: {out:?}"
    );
}

#[tokio::test]
async fn map_awaited_keeps_input_order() {
    let pool = pool(2).await;
    let out = within(60, "map", pool.map(late1, 0..16)).await.unwrap();
    assert_eq!(
        out.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    assert_completed_out_of_order(&out);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn map_streamed_keeps_input_order() {
    let pool = pool(2).await;
    let mut stream = pool.map(late1, 0..16);
    let mut out = Vec::new();
    while let Some(r) = within(60, "map next", stream.next()).await {
        out.push(r.unwrap());
    }
    assert_eq!(
        out.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    assert_completed_out_of_order(&out);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn starmap_keeps_input_order() {
    let pool = pool(2).await;
    let out = within(60, "starmap", pool.starmap(late, (0..16).map(|i| (i, 16))))
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..16).collect::<Vec<_>>()
    );
    assert_completed_out_of_order(&out);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn starmap_with_two_and_three_arguments() {
    let pool = pool(2).await;
    let out = pool
        .starmap(add, (0..50).map(|i| (i, i * 100)))
        .await
        .unwrap();
    assert_eq!(out, (0..50).map(|i| i * 101).collect::<Vec<_>>());
    let out = pool
        .starmap(fma, (-20..20).map(|i| (i, i, -i)))
        .await
        .unwrap();
    assert_eq!(out, (-20..20i64).map(|i| i * i - i).collect::<Vec<_>>());
    assert_eq!(pool.apply(fma, (2, 3, 4)).await.unwrap(), 10);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn apply_zero_argument_task() {
    let pool = pool(1).await;
    assert_eq!(pool.apply(answer, ()).await.unwrap(), 42);
    assert_eq!(pool.map(answer, vec![(); 5]).await.unwrap(), vec![42; 5]);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn map_of_nothing_is_empty() {
    let pool = pool(1).await;
    assert_eq!(
        pool.map(inc, Vec::<u64>::new()).await.unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(pool.map_unordered(inc, Vec::<u64>::new()).count().await, 0);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn map_unordered_covers_every_index_once() {
    let pool = pool(2).await;
    let inputs: Vec<u64> = (0..500).map(|i| (i * 7919) % 1000).collect();
    let pairs: Vec<(u64, Result<u64, Error>)> = within(
        60,
        "map_unordered",
        pool.map_unordered(square, inputs.clone())
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(pairs.len(), inputs.len());
    let mut seen = vec![false; inputs.len()];
    for (i, r) in pairs {
        let i = i as usize;
        assert!(!seen[i], "index {i} yielded twice");
        seen[i] = true;
        assert_eq!(r.unwrap(), inputs[i] * inputs[i]);
    }
    assert!(seen.iter().all(|&s| s));
    // With varying durations, it yields in completion order.
    let pairs: Vec<(u64, Result<(u64, u128), Error>)> = within(
        60,
        "map_unordered late",
        pool.map_unordered(late1, 0..16).collect::<Vec<_>>(),
    )
    .await;
    let indices: Vec<u64> = pairs.iter().map(|(i, _)| *i).collect();
    assert_ne!(indices, (0..16).collect::<Vec<_>>());
    let mut sorted = indices.clone();
    sorted.sort();
    assert_eq!(sorted, (0..16).collect::<Vec<_>>());
    pool.close().await.unwrap();
}

#[tokio::test]
async fn map_stream_input() {
    let pool = pool(2).await;
    let out = pool
        .map_stream(inc, futures_util::stream::iter(0..100u64))
        .await
        .unwrap();
    assert_eq!(out, (1..=100).collect::<Vec<_>>());
    pool.close().await.unwrap();
}

#[tokio::test]
async fn map_of_100k_trivial_tasks_on_two_workers() {
    let pool = pool(2).await;
    let out = within(300, "map 100k", pool.map(inc, 0..100_000u64))
        .await
        .unwrap();
    assert_eq!(out.len(), 100_000);
    assert!(out.iter().enumerate().all(|(i, &x)| x == i as u64 + 1));
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- closing

#[tokio::test]
async fn closed_pool_refuses_new_calls() {
    let pool = pool(2).await;
    assert_eq!(pool.apply(inc, 1).await.unwrap(), 2);
    within(30, "close", pool.close()).await.unwrap();
    let err = pool.apply(inc, 1).await.unwrap_err();
    assert!(err.is_pool_closed(), "{err}");
    let err = pool.map(inc, 0..3).await.unwrap_err();
    assert!(err.is_pool_closed(), "{err}");
    // A refused call pulls none of its inputs: one error stands for them
    // all, even for an endless input.
    let items: Vec<Result<u64, Error>> = pool.map(inc, 0..).collect().await;
    assert_eq!(items.len(), 1);
    assert!(
        items
            .iter()
            .all(|r| r.as_ref().unwrap_err().is_pool_closed())
    );
    let pairs: Vec<(u64, Result<u64, Error>)> = pool.map_unordered(inc, 0..3).collect().await;
    assert_eq!(pairs.len(), 1);
    assert!(
        pairs
            .iter()
            .all(|(_, r)| r.as_ref().unwrap_err().is_pool_closed())
    );
    // close and join again are harmless.
    within(30, "close again", pool.close()).await.unwrap();
    within(30, "join", pool.join()).await.unwrap();
}

#[tokio::test]
async fn close_waits_for_submitted_work() {
    let pool = pool(2).await;
    let mut m = pool.map(sleep_ms, vec![200; 4]);
    poll_stream_once(&mut m).await;
    within(30, "close", pool.close()).await.unwrap();
    let out: Vec<Result<u64, Error>> = m.collect().await;
    assert_eq!(out.len(), 4);
    assert!(out.into_iter().all(|r| r.unwrap() == 200));
}

#[tokio::test]
async fn join_while_open_is_a_usage_error() {
    let pool = pool(1).await;
    let err = pool.join().await.unwrap_err();
    assert!(err.is_usage(), "{err}");
    pool.close().await.unwrap();
}

#[tokio::test]
async fn terminate_fails_pending_tasks() {
    let pool = pool(2).await;
    let pids = pool.worker_pids();
    let mut m = pool.map(sleep_ms, vec![60_000; 10]);
    poll_stream_once(&mut m).await;
    let mut a = pool.apply(sleep_ms, 60_000);
    poll_future_once(&mut a).await;
    within(30, "terminate", pool.terminate()).await.unwrap();
    let out: Vec<Result<u64, Error>> =
        within(30, "map after terminate", m.collect::<Vec<_>>()).await;
    assert_eq!(out.len(), 10);
    for r in out {
        let err = r.unwrap_err();
        assert!(err.is_pool_closed(), "{err}");
    }
    let err = within(30, "apply after terminate", a).await.unwrap_err();
    assert!(err.is_pool_closed(), "{err}");
    let err = pool.apply(inc, 1).await.unwrap_err();
    assert!(err.is_pool_closed(), "{err}");
    assert!(pool.worker_pids().is_empty());
    assert_pids_gone(&pids, Duration::from_secs(10)).await;
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn zero_processes_or_concurrency_is_a_usage_error() {
    let err = Pool::builder().processes(0).build().await.unwrap_err();
    assert!(err.is_usage(), "{err}");
    let err = Pool::builder()
        .processes(1)
        .concurrency(0)
        .build()
        .await
        .unwrap_err();
    assert!(err.is_usage(), "{err}");
    let err = Pool::builder()
        .processes(1)
        .max_attempts(0)
        .build()
        .await
        .unwrap_err();
    assert!(err.is_usage(), "{err}");
    let err = Pool::builder()
        .processes(1)
        .max_tasks_per_child(0)
        .build()
        .await
        .unwrap_err();
    assert!(err.is_usage(), "{err}");
    let err = Pool::builder()
        .processes(1)
        .chunk_size(0)
        .build()
        .await
        .unwrap_err();
    assert!(err.is_usage(), "{err}");
    let err = Pool::builder()
        .processes(1)
        .max_frame_bytes(1023)
        .build()
        .await
        .unwrap_err();
    assert!(err.is_usage(), "{err}");
}

#[tokio::test]
async fn a_chunk_size_too_large_or_a_zero_timeout_is_a_usage_error() {
    let err = Pool::builder()
        .processes(1)
        .chunk_size(usize::MAX)
        .build()
        .await
        .unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("chunk_size"),
        "{err}"
    );
    let err = Pool::builder()
        .processes(1)
        .timeout(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(
        err.is_usage() && err.to_string().contains("timeout"),
        "{err}"
    );
}

/// `Duration::MAX` (or any wait past the clock's end) means "never", in
/// every setting and on every call: no overflow, no hang. A call's chunk
/// size past the largest is taken as the largest.
#[tokio::test]
async fn waits_meaning_never_and_huge_chunks_are_taken_as_the_largest() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(2)
            .timeout(Duration::MAX)
            .timeout_grace(Duration::MAX)
            .startup_timeout(Duration::MAX)
            .shutdown_timeout(Duration::MAX)
            .restart_intensity(8, Duration::MAX)
            .build(),
    )
    .await
    .unwrap();
    let one = within(30, "apply", pool.apply(inc, 1).timeout(Duration::MAX)).await;
    assert_eq!(one.unwrap(), 2);
    let far = Duration::from_secs(u64::MAX / 4);
    let all = within(
        30,
        "map",
        pool.map(inc, 0..1000u64)
            .timeout(far)
            .chunk_size(usize::MAX)
            .collect::<Vec<_>>(),
    )
    .await;
    let all: Vec<u64> = all.into_iter().map(Result::unwrap).collect();
    assert_eq!(all, (1..=1000).collect::<Vec<_>>());
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn result_that_fails_to_serialize_fails_only_that_task() {
    let pool = pool(2).await;
    let err = pool.apply(make_picky, 3).await.unwrap_err();
    assert!(err.is_serialization(), "{err}");
    // (postcard drops a custom serde message, so only the type is named)
    assert!(err.to_string().contains("Picky"), "{err}");
    assert_eq!(pool.apply(make_picky, 4).await.unwrap(), Picky(4));
    for chunk in [None, Some(8)] {
        let call = pool.map(make_picky, 0..30);
        let call = match chunk {
            Some(n) => call.chunk_size(n),
            None => call,
        };
        let out: Vec<Result<Picky, Error>> =
            within(60, "map picky", call.collect::<Vec<_>>()).await;
        assert_eq!(out.len(), 30);
        for (i, r) in out.into_iter().enumerate() {
            if i % 3 == 0 {
                let err = r.unwrap_err();
                assert!(err.is_serialization(), "input {i}: {err}");
            } else {
                assert_eq!(
                    r.unwrap(),
                    Picky(i as u64),
                    "input {i} (chunk size {chunk:?})"
                );
            }
        }
    }
    pool.close().await.unwrap();
}

#[tokio::test]
async fn arguments_that_fail_to_serialize_fail_only_that_call() {
    let pool = pool(2).await;
    let err = pool.apply(take_picky, Picky(3)).await.unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert_eq!(pool.apply(take_picky, Picky(4)).await.unwrap(), 40);
    for chunk in [None, Some(1), Some(4), Some(64)] {
        let call = pool.map(take_picky, (0..40).map(Picky));
        let call = match chunk {
            Some(n) => call.chunk_size(n),
            None => call,
        };
        let out: Vec<Result<u64, Error>> =
            within(60, "map picky args", call.collect::<Vec<_>>()).await;
        assert_eq!(out.len(), 40);
        for (i, r) in out.into_iter().enumerate() {
            if i % 3 == 0 {
                let err = r.unwrap_err();
                assert!(err.is_serialization(), "input {i}: {err}");
            } else {
                assert_eq!(
                    r.unwrap(),
                    i as u64 * 10,
                    "input {i} (chunk size {chunk:?})"
                );
            }
        }
        // Unordered: the same, by index.
        let mut pairs: Vec<(u64, Result<u64, Error>)> = within(
            60,
            "map_unordered picky args",
            pool.map_unordered(take_picky, (0..40).map(Picky))
                .chunk_size(chunk.unwrap_or(1))
                .collect::<Vec<_>>(),
        )
        .await;
        pairs.sort_by_key(|(i, _)| *i);
        assert_eq!(
            pairs.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..40).collect::<Vec<_>>()
        );
        for (i, r) in pairs {
            assert_eq!(r.is_err(), i % 3 == 0, "input {i}");
        }
    }
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- nesting

#[tokio::test]
async fn a_task_can_build_its_own_pool_inside_a_worker() {
    let pool = pool(1).await;
    let outer = pool.worker_pids()[0];
    let result = within(120, "nested pool", pool.apply(nested_sum, 100)).await;
    let (sum, ran_in, inner_pids) = match result {
        Ok(v) => v,
        Err(e) => panic!(
            "the nested pool failed: {:?} / {e}",
            e.task_error::<String>()
        ),
    };
    assert_eq!(sum, (1..=100).sum::<u64>());
    assert_eq!(ran_in, outer);
    assert!(!inner_pids.is_empty());
    assert!(!inner_pids.contains(&outer));
    assert!(!inner_pids.contains(&std::process::id()));
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- cancellation

#[tokio::test]
async fn dropping_an_apply_cancels_its_task() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).concurrency(1).build(),
    )
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    let mut long = pool.apply(sleep_ms, 60_000);
    poll_future_once(&mut long).await;
    drop(long);
    // The worker's only slot is free again at once, and the worker lives.
    assert_eq!(
        within(15, "apply after cancel", pool.apply(inc, 1))
            .await
            .unwrap(),
        2
    );
    assert_eq!(pool.worker_pids(), vec![pid]);
    within(15, "close after cancel", pool.close())
        .await
        .unwrap();
}

#[tokio::test]
async fn dropping_a_map_cancels_its_tasks() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).concurrency(2).build(),
    )
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    let mut m = pool.map(sleep_ms, vec![60_000; 6]);
    poll_stream_once(&mut m).await;
    drop(m);
    assert_eq!(
        within(15, "map after cancel", pool.map(inc, 0..4))
            .await
            .unwrap(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(pool.worker_pids(), vec![pid]);
    within(15, "close after cancel", pool.close())
        .await
        .unwrap();
}

// ---------------------------------------------------------------- laziness and limits

#[tokio::test]
async fn close_stops_a_lazy_map_pulling_and_ends_it_with_one_error() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).concurrency(2).build(),
    )
    .await
    .unwrap();
    // An endless input: the call ends only because close stops it.
    let mut m = pool.map(inc, 0..).chunk_size(1);
    poll_stream_once(&mut m).await;
    within(30, "close", pool.close()).await.unwrap();
    let out: Vec<Result<u64, Error>> = within(30, "rest of the map", m.collect::<Vec<_>>()).await;
    let done = out.iter().take_while(|r| r.is_ok()).count();
    assert!(done > 0, "some inputs were submitted before close");
    assert_eq!(out.len(), done + 1, "one error ends the call");
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(v, i as u64 + 1),
            Err(e) => assert!(i == done && e.is_pool_closed(), "input {i}: {e}"),
        }
    }
}

#[tokio::test]
async fn map_stream_yields_results_while_inputs_still_arrive() {
    let pool = pool(2).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let inputs =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
    let mut m = pool.map_stream(square, Box::pin(inputs));
    for i in 0..20u64 {
        tx.send(i).unwrap();
        // The result of input i comes before input i + 1 exists.
        assert_eq!(
            within(30, "ping-pong", m.next()).await.unwrap().unwrap(),
            i * i
        );
    }
    drop(tx);
    assert!(within(30, "end of stream", m.next()).await.is_none());
    pool.close().await.unwrap();
}

#[tokio::test]
async fn concurrency_bounds_the_tasks_running_in_a_worker() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).concurrency(3).build(),
    )
    .await
    .unwrap();
    let seen = within(60, "map", pool.map(track_concurrency, vec![40; 24]))
        .await
        .unwrap();
    let max = seen.into_iter().max().unwrap();
    assert_eq!(
        max, 3,
        "the worker ran {max} tasks at once with concurrency 3"
    );
    pool.close().await.unwrap();
}

#[tokio::test]
async fn a_crash_loop_inside_one_task_is_that_tasks_failure_not_a_storm() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .restart_intensity(2, Duration::from_secs(60))
            .build(),
    )
    .await
    .unwrap();
    let err = within(60, "crash loop", pool.apply(abort_now, ()).max_attempts(10))
        .await
        .unwrap_err();
    assert!(err.is_crash() && !err.is_restart_intensity(), "{err}");
    assert!(err.to_string().contains("attempt 10 of 10"), "{err}");
    assert_eq!(
        within(60, "apply after the poison task", pool.apply(inc, 1))
            .await
            .unwrap(),
        2
    );
    within(30, "close", pool.close()).await.unwrap();
}

// ---------------------------------------------------------------- frame cap

#[tokio::test]
async fn oversized_arguments_fail_alone() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).max_frame_bytes(1024).build(),
    )
    .await
    .unwrap();
    for chunk in [1, 3] {
        let out: Vec<Result<usize, Error>> = within(
            60,
            "map",
            pool.map(
                blob_len,
                vec![vec![0u8; 10], vec![0u8; 5000], vec![0u8; 20]],
            )
            .chunk_size(chunk)
            .collect::<Vec<_>>(),
        )
        .await;
        assert_eq!(out[0].as_ref().unwrap(), &10);
        assert!(
            out[1].as_ref().unwrap_err().is_serialization(),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2].as_ref().unwrap(), &20);
    }
    pool.close().await.unwrap();
}

#[tokio::test]
async fn oversized_result_fails_alone() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).max_frame_bytes(1024).build(),
    )
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    let out: Vec<Result<Vec<u8>, Error>> = within(
        60,
        "map",
        pool.map(blob, [10, 5000, 20]).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(out[0].as_ref().unwrap().len(), 10);
    assert!(
        out[1].as_ref().unwrap_err().is_serialization(),
        "{:?}",
        out[1]
    );
    assert_eq!(out[2].as_ref().unwrap().len(), 20);
    assert_eq!(pool.worker_pids(), vec![pid]);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn results_that_fit_the_frame_cap_are_delivered_in_any_batch() {
    // Each result fits a frame on its own; several finishing together must
    // not be packed into a frame over the cap.
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).max_frame_bytes(1024).build(),
    )
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    let sizes = vec![300usize, 900, 300, 900, 100, 950, 10, 980];
    let out: Vec<Result<Vec<u8>, Error>> = within(
        60,
        "map",
        pool.map(blob, sizes.clone())
            .chunk_size(sizes.len())
            .max_attempts(1)
            .collect::<Vec<_>>(),
    )
    .await;
    for (r, n) in out.iter().zip(&sizes) {
        match r {
            Ok(v) => assert_eq!(v.len(), *n),
            Err(e) => panic!("a {n}-byte result under the 1024-byte cap failed: {e}"),
        }
    }
    assert_eq!(pool.worker_pids(), vec![pid], "the worker was replaced");
    pool.close().await.unwrap();
}

#[tokio::test]
async fn arguments_that_fit_the_frame_cap_run_whatever_the_task_name() {
    // 760 bytes of arguments pass the parent's check (payload + 256 <= cap);
    // the RUN frame must then fit too, or the task must fail alone.
    let pool = within(
        60,
        "build",
        Pool::builder().processes(1).max_frame_bytes(1024).build(),
    )
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    let r = within(
        60,
        "apply",
        pool.apply(long_named, vec![1u8; 760]).max_attempts(1),
    )
    .await;
    match r {
        Ok(n) => assert_eq!(n, 760),
        Err(e) => assert!(
            e.is_serialization(),
            "a task whose RUN frame is over the cap should fail alone: {e}"
        ),
    }
    assert_eq!(pool.worker_pids(), vec![pid], "the worker was replaced");
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- process lifetimes

#[tokio::test]
async fn no_process_left_after_a_started_process_is_dropped() {
    let mut p = Process::new(sleep_ms, 60_000).unwrap();
    p.start().unwrap();
    let pid = p.pid().unwrap();
    assert!(pid_exists(pid));
    drop(p);
    assert_pids_gone(&[pid], Duration::from_secs(10)).await;
}

#[tokio::test]
async fn workers_exit_when_their_parent_is_killed() {
    let path =
        std::env::temp_dir().join(format!("multiloop-acceptance-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let mut parent = Process::new(pool_then_hang, path.to_string_lossy().into_owned()).unwrap();
    parent.start().unwrap();
    let (mut conn, _) = within(60, "the middle process reports its pool", listener.accept())
        .await
        .unwrap();
    let mut text = String::new();
    within(
        30,
        "read pids",
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut text),
    )
    .await
    .unwrap();
    let _ = std::fs::remove_file(&path);
    let pids: Vec<u32> = text.split(',').map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{text:?}");
    assert!(pids.iter().all(|&p| pid_exists(p)));
    parent.kill().unwrap();
    assert_eq!(
        within(30, "join parent", parent.join(None))
            .await
            .unwrap()
            .signal,
        Some(libc::SIGKILL)
    );
    // The orphaned workers are no children of ours: once dead they may stay
    // zombies until init reaps them, which counts as gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| pid_exists(p) && !is_zombie(p))
            .collect();
        if alive.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphaned workers {alive:?} still run 10 s after their parent died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- hard timeouts

#[tokio::test]
async fn a_task_hogging_the_event_loop_past_its_deadline_times_out() {
    let pool = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .timeout_grace(Duration::from_millis(300))
            .build(),
    )
    .await
    .unwrap();
    let mut neighbour = pool.apply(sleep_ms, 50).max_attempts(1);
    poll_future_once(&mut neighbour).await;
    let hog = pool
        .apply(spin_ms, 30_000)
        .timeout(Duration::from_millis(100));
    let (hog, neighbour) = within(20, "hog and neighbour", async {
        tokio::join!(hog, neighbour)
    })
    .await;
    let err = hog.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The neighbour ran again elsewhere without losing its only attempt.
    assert_eq!(neighbour.unwrap(), 50);
    assert_eq!(
        within(30, "apply after hard timeout", pool.apply(inc, 1))
            .await
            .unwrap(),
        2
    );
    pool.close().await.unwrap();
}

// ---------------------------------------------------------------- memory bounds

#[tokio::test]
async fn ordered_map_over_an_endless_iterator_stays_bounded_behind_a_slow_task() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let pool = pool(2).await;
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let inputs = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    // Fixed chunks of 1: the window is processes x concurrency x 2 = 64.
    let mut m = pool.map(slow_first, inputs).chunk_size(1);
    assert_eq!(
        within(30, "first result", m.next()).await.unwrap().unwrap(),
        0
    );
    let n = pulled.load(Ordering::SeqCst);
    assert!(
        n <= 64 * 4,
        "{n} inputs were pulled while the first task ran: results parked behind it are not bounded by the window"
    );
    drop(m);
    pool.close().await.unwrap();
}

#[tokio::test]
async fn max_tasks_per_child_splits_chunks_larger_than_a_worker_has_left() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(2).max_tasks_per_child(7).build(),
    )
    .await
    .unwrap();
    let out = within(120, "map", pool.map(double_with_pid, 0..100).chunk_size(25))
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        (0..100).map(|x| x * 2).collect::<Vec<_>>()
    );
    let pids: HashSet<u32> = out.iter().map(|(_, p)| *p).collect();
    for pid in &pids {
        let n = out.iter().filter(|(_, p)| p == pid).count();
        assert!(
            n <= 7,
            "worker {pid} ran {n} tasks, more than max_tasks_per_child = 7"
        );
    }
    assert!(
        pids.len() >= 100 / 7,
        "only {} workers for 100 tasks at 7 per worker",
        pids.len()
    );
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test]
async fn worker_panic_reaches_the_caller() {
    let err = within(30, "worker.await", Worker::new(panics_later, 3).unwrap())
        .await
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert!(err.panic_message().unwrap().contains("late boom at 3"));
    assert!(err.panic_location().unwrap().contains("acceptance.rs"));
}

// ---------------------------------------------------------------- more

#[tokio::test]
async fn dropping_the_pool_fails_outstanding_calls() {
    let pool = pool(1).await;
    let pids = pool.worker_pids();
    let mut call = pool.apply(sleep_ms, 60_000);
    poll_future_once(&mut call).await;
    drop(pool);
    let err = within(30, "call after the pool was dropped", call)
        .await
        .unwrap_err();
    assert!(err.is_pool_closed(), "{err}");
    assert_pids_gone(&pids, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn panicking_initializer_fails_build() {
    let err = within(
        60,
        "build",
        Pool::builder()
            .processes(1)
            .initializer(panicking_init, ())
            .build(),
    )
    .await
    .unwrap_err();
    assert!(err.is_initializer(), "{err}");
    assert!(err.to_string().contains("init exploded"), "{err}");
}

#[tokio::test]
async fn tasks_can_spawn_onto_the_worker_runtime() {
    let pool = pool(1).await;
    assert_eq!(
        pool.map(spawns_inside, 0..10).await.unwrap(),
        (0..10).map(|x| x + 1 + x * 2).collect::<Vec<_>>()
    );
    pool.close().await.unwrap();
}

#[tokio::test]
async fn thousands_of_waiting_tasks_run_at_once() {
    let pool = within(
        60,
        "build",
        Pool::builder().processes(2).concurrency(1000).build(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let out = within(60, "map", pool.map(sleep_ms, vec![300; 4000]))
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(out.len(), 4000);
    // One at a time this would take 4000 x 300 ms / 2 workers = 10 minutes;
    // 2000 at once it takes 2 x 300 ms plus overhead.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    pool.close().await.unwrap();
}

#[tokio::test]
async fn task_error_that_fails_to_serialize_is_a_serialization_error() {
    let pool = pool(1).await;
    assert_eq!(pool.apply(picky_error, 4).await.unwrap(), 4);
    let err = pool.apply(picky_error, 5).await.unwrap_err();
    assert_eq!(err.task_error::<PickyErr>(), Some(&PickyErr(5)));
    let err = pool.apply(picky_error, 9).await.unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert!(err.to_string().contains("task error"), "{err}");
    pool.close().await.unwrap();
}

/// A reducer nobody registered: its workers could not find it.
#[derive(Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Unregistered;

impl multiloop::Reducer for Unregistered {
    type Item = u64;
    type Acc = u64;
    fn identity(&self) -> u64 {
        0
    }
    fn fold(&self, acc: &mut u64, item: u64) {
        *acc += item;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
}

#[tokio::test]
async fn a_map_reduce_with_an_unregistered_reducer_is_refused_naming_the_fix() {
    let pool = Pool::builder().processes(1).build().await.unwrap();
    let err = pool
        .map_reduce(square, 0..10u64, Unregistered)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("register_reducer!"), "{err}");
    // Piece by piece: one error for the whole call, then the end.
    let mut pieces = pool.map_reduce(square, 0..10u64, Unregistered).partials();
    let first = pieces.next().await.unwrap();
    assert!(matches!(&first, Err(e) if e.to_string().contains("register_reducer!")));
    assert!(pieces.next().await.is_none());
    // The pool is fine.
    assert_eq!(pool.apply(square, 7).await.unwrap(), 49);
    pool.close().await.unwrap();
}
