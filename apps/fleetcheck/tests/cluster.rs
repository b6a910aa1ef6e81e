//! fleetcheck across hosts: a runner (`scan --cluster`) and three agents
//! (`fleetcheck agent`, each in its own process group) on a nats-server
//! this test starts (JetStream, a temporary store, a free loopback port).
//! One agent is SIGKILLed, with its workers, in the middle of the scan;
//! the report must be the one a single machine gives for the same fleet.
//!
//! The server comes from `MULTILOOP_NATS_SERVER` (`.ci/run` sets it to the
//! pinned nats-server it installs); without it the test says why and
//! skips.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

multiloop::init_before_main!();

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetcheck"))
}

/// The nats-server of `MULTILOOP_NATS_SERVER`; `None` (with the reason
/// printed) when it is not set.
fn server_binary() -> Option<PathBuf> {
    let found = std::env::var_os("MULTILOOP_NATS_SERVER").map(PathBuf::from);
    if found.is_none() {
        eprintln!(
            "skipped: MULTILOOP_NATS_SERVER is not set (the path of a nats-server 2.11+; \
             `.ci/run` installs one into .ci/venv)"
        );
    }
    found
}

/// Sends each line of `from` on a channel, from a thread that drains it
/// to the end (so the writer never blocks).
fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining.
                continue;
            }
        }
    });
    rx
}

/// Waits (at most 60 s) for a line containing `needle`.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, who: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(_) => panic!("{who} did not say {needle:?} within 60 s"),
        }
    }
}

/// A process killed with its whole process group on drop.
struct Group(Child);

impl Group {
    fn kill(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the group is
        // the child's own (`process_group(0)`).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server with JetStream on a free loopback port; its store is
/// removed on drop.
struct Nats {
    _server: Group,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start(binary: &Path) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // One store per server: the tests of this file run at once.
        let store =
            std::env::temp_dir().join(format!("fleetcheck-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&store).unwrap();
        let mut child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("could not start nats-server");
        let stderr = lines(child.stderr.take().unwrap());
        let server = Group(child);
        wait_for(&stderr, "Server is ready", "nats-server");
        Nats {
            _server: server,
            port,
            store,
        }
    }

    fn url(&self, pool: &str) -> String {
        format!("nats://127.0.0.1:{}/{pool}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// `fleetcheck agent` with two workers, in its own process group.
fn agent(url: &str) -> Group {
    let mut child = bin()
        .args(["agent", "--cluster", url, "--processes", "2"])
        .args(["--worker-concurrency", "8"])
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines(child.stderr.take().unwrap());
    let agent = Group(child);
    wait_for(&stderr, "cluster host ready", "an agent");
    agent
}

/// The runner: `FLEET` scanned on the agents of `url` (ack wait 1 s),
/// with its stdout and stderr lines.
fn runner(url: &str, extra: &[&str]) -> (Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = bin()
        .args(FLEET)
        .args(["--cluster", url, "--cluster-ack-wait", "1"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    (child, stdout, stderr)
}

/// CPU seconds the workers of process `pid` have used.
fn workers_cpu(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter_map(fleetcheck::bench::proc_cpu_secs)
        .sum()
}

/// The scan both runs make.
const FLEET: [&str; 11] = [
    "--fleet-hosts",
    "40",
    "--fleet-series",
    "150",
    "--rounds",
    "8",
    "--format",
    "json",
    "--no-progress",
    "--seed",
    "7",
];

/// What must match between two runs: the report without the targets'
/// addresses (each run has its own simulated fleet) and timings.
fn comparable(report: &Value) -> Value {
    let mut findings: Vec<Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let mut f = f.clone();
            f.as_object_mut().unwrap().remove("target");
            f
        })
        .collect();
    findings.sort_by_key(|f| f.to_string());
    let s = &report["summary"];
    serde_json::json!({
        "summary": [s["rounds"], s["scrapes"], s["scrape_failures"], s["points"], s["anomalies"]],
        "by_check": report["by_check"],
        "findings": findings,
        "verified": report["verification"]["passed"],
    })
}

#[test]
fn a_scan_on_three_agents_one_sigkilled_reports_what_one_machine_does() {
    let Some(server) = server_binary() else {
        return;
    };
    let local = bin().args(FLEET).output().unwrap();
    assert_eq!(
        local.status.code(),
        Some(1),
        "local scan: {}",
        String::from_utf8_lossy(&local.stderr)
    );
    let local: Value = serde_json::from_slice(&local.stdout).unwrap();

    let nats = Nats::start(&server);
    let url = nats.url("fc-test");
    let mut agents: Vec<Group> = (0..3).map(|_| agent(&url)).collect();
    let (mut runner, stdout, stderr) = runner(&url, &["--processes", "6"]);
    wait_for(&stderr, "round done on the cluster round=2", "the runner");
    // The agent that has scraped the most so far: its hosts must move.
    let busiest = (0..agents.len())
        .max_by(|&a, &b| {
            let cpu = |i: usize| workers_cpu(agents[i].0.id());
            cpu(a).total_cmp(&cpu(b))
        })
        .unwrap();
    agents[busiest].kill();
    let status = runner.wait().unwrap();
    let cluster: String = stdout.iter().collect::<Vec<_>>().join("\n");
    let log: Vec<String> = stderr.iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains("host history handed") && !l.contains("round=0")),
        "the dead agent's hosts went on elsewhere from the runner's copy: {log:?}"
    );
    assert_eq!(status.code(), Some(1), "runner: {cluster}\n{log:?}");
    let cluster: Value = serde_json::from_str(&cluster).unwrap();
    assert_eq!(local["verification"]["passed"], true);
    assert_eq!(comparable(&cluster), comparable(&local), "{log:?}");
}

/// A runner started before any agent says that it waits for one, and
/// scans once one joins.
#[test]
fn a_scan_started_before_its_agents_says_it_waits_and_goes_on_when_one_joins() {
    let Some(server) = server_binary() else {
        return;
    };
    let nats = Nats::start(&server);
    let url = nats.url("fc-wait");
    let (mut runner, stdout, stderr) = runner(&url, &[]);
    wait_for(&stderr, "no agent has joined", "the runner");
    let _agent = agent(&url);
    let status = runner.wait().unwrap();
    let report: String = stdout.iter().collect::<Vec<_>>().join("\n");
    assert_eq!(status.code(), Some(1), "runner: {report}");
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["verification"]["passed"], true);
    assert_eq!(report["summary"]["scrapes"], 40 * 8);
}
