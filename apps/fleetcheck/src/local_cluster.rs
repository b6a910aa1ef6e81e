//! A cluster on this machine, for `fleetcheck bench --cluster-agents N`:
//! a nats-server (JetStream, a temporary store, a free loopback port) and
//! `N` agents (this executable started again as `fleetcheck agent`), each
//! in its own process group. Everything is killed, and the store removed,
//! when it is dropped; the processes are also killed when the benchmark
//! dies (`PR_SET_PDEATHSIG`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::cluster::ClusterAddr;
use crate::error::Error;

/// How long the server and each agent may take to say they are ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// See the module docs.
#[derive(Debug)]
pub struct LocalCluster {
    server: Child,
    agents: Vec<Child>,
    store: PathBuf,
    addr: ClusterAddr,
}

/// The nats-server binary: `given`, else `$MULTILOOP_NATS_SERVER`, else
/// `nats-server` (from `PATH`).
pub fn server_binary(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MULTILOOP_NATS_SERVER").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl LocalCluster {
    /// Starts the server `server` and `agents` agents of `processes`
    /// workers (0: one per core) with `concurrency` scrapes each, and
    /// waits until all are ready.
    pub async fn start(
        server: &Path,
        agents: usize,
        processes: usize,
        concurrency: usize,
    ) -> Result<Self, Error> {
        let store =
            std::env::temp_dir().join(format!("fleetcheck-bench-nats-{}", std::process::id()));
        std::fs::create_dir_all(&store)
            .map_err(|e| Error::io(format!("creating {}", store.display()), e))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("finding a free port for nats-server", e))?
            .port();
        let mut cmd = Command::new(server);
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store);
        let what = format!("nats-server ({})", server.display());
        let server = ready(cmd, &what, "Server is ready").await?;
        let addr = ClusterAddr {
            url: format!("nats://127.0.0.1:{port}"),
            pool: "fleetcheck-bench".into(),
        };
        let mut cluster = LocalCluster {
            server,
            agents: Vec::new(),
            store,
            addr,
        };
        let exe = std::env::current_exe()
            .map_err(|e| Error::io("cannot find fleetcheck's own executable", e))?;
        let target = format!("{}/{}", cluster.addr.url, cluster.addr.pool);
        for _ in 0..agents {
            let mut cmd = Command::new(&exe);
            cmd.args(["agent", "--cluster", &target])
                .args(["--processes", &processes.to_string()])
                .args(["--worker-concurrency", &concurrency.to_string()]);
            let agent = ready(cmd, "a fleetcheck agent", "cluster host ready").await?;
            cluster.agents.push(agent);
        }
        Ok(cluster)
    }

    /// The address to give the runner.
    pub fn addr(&self) -> &ClusterAddr {
        &self.addr
    }

    /// The number of agents.
    pub fn agents(&self) -> usize {
        self.agents.len()
    }

    /// Process ids of the agents, their workers and the server.
    pub fn pids(&self) -> Vec<u32> {
        let (server, agents, workers) = self.processes();
        server.into_iter().chain(agents).chain(workers).collect()
    }

    /// Process ids of the server, the agents and the agents' workers.
    fn processes(&self) -> (Option<u32>, Vec<u32>, Vec<u32>) {
        let agents: Vec<u32> = self.agents.iter().filter_map(Child::id).collect();
        let workers = agents
            .iter()
            .flat_map(|agent| {
                std::fs::read_to_string(format!("/proc/{agent}/task/{agent}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        (self.server.id(), agents, workers)
    }

    /// CPU seconds the server, the agents (their own processes) and the
    /// agents' workers used so far.
    pub fn cpu_breakdown(&self) -> [f64; 3] {
        let cpu = |pids: &[u32]| -> f64 {
            pids.iter()
                .filter_map(|&p| crate::bench::proc_cpu_secs(p))
                .sum()
        };
        let (server, agents, workers) = self.processes();
        [cpu(server.as_slice()), cpu(&agents), cpu(&workers)]
    }

    /// CPU seconds the agents, their workers and the server used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.cpu_breakdown().iter().sum()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.agents.iter().chain([&self.server]) {
            if let Some(pid) = child.id() {
                // SAFETY: kill has no memory-safety preconditions; the
                // group is the child's own (`process_group(0)`).
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Spawns `cmd` in its own process group and waits until its stderr has
/// a line containing `needle`; the rest of its stderr is drained.
async fn ready(mut cmd: Command, what: &str, needle: &str) -> Result<Child, Error> {
    // SAFETY: the closure runs in the child between fork and exec and
    // only calls prctl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            // Killed when the benchmark dies, even by SIGKILL: no server
            // or agent outlives it (an agent's workers follow their host).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {what}"), e))?;
    let Some(stderr) = child.stderr.take() else {
        return Err(Error::Cluster(format!("{what} has no stderr")));
    };
    let mut lines = BufReader::new(stderr).lines();
    let found = tokio::time::timeout(READY_WITHIN, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => {
            tokio::spawn(drain(lines));
            Ok(child)
        }
        Ok(false) => Err(Error::Cluster(format!(
            "{what} exited before it was ready (is it nats-server 2.11 or newer?)"
        ))),
        Err(_) => Err(Error::Cluster(format!(
            "{what} did not say it was ready within {READY_WITHIN:?}"
        ))),
    }
}

async fn drain(mut lines: tokio::io::Lines<BufReader<impl AsyncRead + Unpin>>) {
    while let Ok(Some(_)) = lines.next_line().await {}
}
