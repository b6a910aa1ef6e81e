//! C1: the cluster path on this machine, side by side with the local pool
//! in the same run: a nats-server (JetStream, temporary store, loopback)
//! and two hosts that are this binary started again with
//! `MULTILOOP_CLUSTER_HOST`, each with one worker process.
//!
//! - trivial tasks/s: `map(inc)` through the cluster vs the local pool of
//!   two processes;
//! - `apply` round trip p50: cluster vs local;
//! - failover: from SIGKILL of the host running a task to the task running
//!   on the other host (≈ `ack_wait`, the detection time).
//!
//! The server binary is `MULTILOOP_NATS_SERVER` or `nats-server` on PATH;
//! without one, C1 is skipped with a message.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiloop::Pool;
use multiloop::cluster::{ClusterConfig, ENV_HOST, ENV_HOST_CONCURRENCY, ENV_HOST_PROCESSES};

use crate::workloads::{BoxResult, parent_runtime};

#[multiloop::task]
async fn c1_inc(x: u64) -> u64 {
    x + 1
}

/// Writes its host's pid (its worker's parent) to the FIFO at `path`, then
/// sleeps (it is cancelled when the figure is taken).
#[multiloop::task]
async fn c1_mark_then_sleep(path: String) -> u64 {
    use std::io::Write;
    // SAFETY: getppid has no preconditions.
    let host = unsafe { libc::getppid() };
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) {
        let _ = f.write_all(&host.to_le_bytes());
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
    0
}

/// The ack_wait of the failover figure.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(2);
/// The chunk size of the cluster's map.
pub(crate) const CLUSTER_CHUNK: usize = 16_384;

/// C1's figures.
#[derive(Debug)]
pub(crate) struct C1 {
    pub(crate) n: u64,
    pub(crate) cluster_tasks_per_s: f64,
    pub(crate) local_tasks_per_s: f64,
    pub(crate) cluster_apply_us: Vec<f64>,
    pub(crate) local_apply_us: Vec<f64>,
    pub(crate) failover_s: f64,
}

/// The nats-server binary, or `None` (C1 is then skipped).
pub(crate) fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MULTILOOP_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Runs C1 over `n` trivial tasks and `applies` round trips.
pub(crate) fn c1(server: PathBuf, n: u64, applies: usize, limit: Duration) -> BoxResult<C1> {
    let nats = Nats::start(&server)?;
    let rt = parent_runtime()?;
    rt.block_on(async {
        let run = async {
            let cluster = Pool::builder()
                .cluster(ClusterConfig::new(nats.url(), "bench").ack_wait(ACK_WAIT))
                .processes(2)
                .concurrency(64 * 1024)
                .chunk_size(CLUSTER_CHUNK)
                .build()
                .await?;
            let hosts = [Host::start(&nats.url(), 1)?, Host::start(&nats.url(), 1)?];
            let local = Pool::builder().processes(2).build().await?;
            // Warm up both (connections, worker start).
            cluster.map(c1_inc, 0..1000).await?;
            local.map(c1_inc, 0..1000).await?;
            let t = Instant::now();
            let out: Vec<u64> = cluster.map(c1_inc, 0..n).await?;
            let cluster_s = t.elapsed().as_secs_f64();
            check(&out, n)?;
            let t = Instant::now();
            let out: Vec<u64> = local.map(c1_inc, 0..n).await?;
            let local_s = t.elapsed().as_secs_f64();
            check(&out, n)?;
            let mut cluster_apply_us = Vec::with_capacity(applies);
            let mut local_apply_us = Vec::with_capacity(applies);
            for i in 0..applies as u64 {
                let t = Instant::now();
                cluster.apply(c1_inc, i).await?;
                cluster_apply_us.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                local.apply(c1_inc, i).await?;
                local_apply_us.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let failover_s = failover(&cluster, &hosts).await?;
            local.close().await?;
            drop(cluster);
            BoxResult::Ok(C1 {
                n,
                cluster_tasks_per_s: n as f64 / cluster_s,
                local_tasks_per_s: n as f64 / local_s,
                cluster_apply_us,
                local_apply_us,
                failover_s,
            })
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("C1 did not finish within {limit:?} (hang?)").into()),
        }
    })
}

fn check(out: &[u64], n: u64) -> BoxResult<()> {
    if out.len() as u64 != n || out.iter().enumerate().any(|(i, &v)| v != i as u64 + 1) {
        return Err(format!(
            "C1: the cluster's map gave wrong results ({} of {n})",
            out.len()
        )
        .into());
    }
    Ok(())
}

/// Starts a task that reports its host through a FIFO, SIGKILLs that
/// host, and times until the task reports from the other host.
async fn failover(pool: &Pool, hosts: &[Host; 2]) -> BoxResult<f64> {
    let fifo = std::env::temp_dir().join(format!("multiloop-c1-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes())?;
    // SAFETY: mkfifo reads the NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // Read and write, so it never reads an end of file between writers.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)?;
    let call = pool.apply(c1_mark_then_sleep, fifo.to_string_lossy().into_owned());
    tokio::pin!(call);
    let read_pid = |mut r: std::fs::File| {
        tokio::task::spawn_blocking(move || -> std::io::Result<(i32, std::fs::File)> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            Ok((i32::from_le_bytes(b), r))
        })
    };
    let first = tokio::select! {
        r = read_pid(reader) => r??,
        r = &mut call => return Err(format!("the task ended: {r:?}").into()),
    };
    let (victim, r) = first;
    reader = r;
    let host = hosts
        .iter()
        .find(|h| h.child.id() as i32 == victim)
        .ok_or("the task ran on no host of this benchmark")?;
    let killed = Instant::now();
    host.kill();
    let (again, _) = tokio::select! {
        r = read_pid(reader) => r??,
        r = &mut call => return Err(format!("the task ended: {r:?}").into()),
    };
    let failover = killed.elapsed().as_secs_f64();
    if again == victim {
        return Err("the task ran again on the host that was killed".into());
    }
    let _ = std::fs::remove_file(&fifo);
    Ok(failover)
}

/// A nats-server for the benchmark, killed and its store removed on drop.
struct Nats {
    child: Child,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start(binary: &std::path::Path) -> BoxResult<Nats> {
        let store =
            std::env::temp_dir().join(format!("multiloop-bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&store)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let nats = Nats { child, port, store };
        wait_for_line(stderr, "Server is ready", "nats-server")?;
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A host: this binary with `MULTILOOP_CLUSTER_HOST`, in its own process
/// group.
struct Host {
    child: Child,
}

impl Host {
    fn start(url: &str, processes: usize) -> BoxResult<Host> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(ENV_HOST, format!("{url}/bench"))
            .env(ENV_HOST_PROCESSES, processes.to_string())
            .env(ENV_HOST_CONCURRENCY, "256")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let host = Host { child };
        wait_for_line(stderr, "multiloop cluster host ready", "a cluster host")?;
        Ok(host)
    }

    /// SIGKILLs the whole host, workers included.
    fn kill(&self) {
        // SAFETY: kill has no memory-safety preconditions; the group is
        // the host's own.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
        let _ = self.child.wait();
    }
}

/// Reads `from` until a line contains `needle` (30 s at most), then keeps
/// draining it on a thread.
fn wait_for_line(
    from: impl Read + Send + 'static,
    needle: &'static str,
    who: &str,
) -> BoxResult<()> {
    let (tx, rx) = std::sync::mpsc::channel();
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
        .map_err(|_| format!("{who} did not say {needle:?} within 30 s").into())
}
