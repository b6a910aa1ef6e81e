//! End to end with the real components: Debian's `prometheus-alertmanager`
//! and `prometheus-node-exporter` on loopback, `fleetcheck run` between
//! them. A textfile-collector metric trips a rule; the alert must reach
//! Alertmanager firing with the right labels (also when Alertmanager was
//! down when it started firing), and later resolve. `.ci/run` installs
//! both; without them this test fails and says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TempDir};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const MIN: Duration = Duration::from_secs(60);

/// A child process killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn require(bin: &str, package: &str) {
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: install it with `apt-get install -y {package}` (.ci/run does)"
    );
}

/// Retry `check` (bounded) until it gives `Some`.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        // A short pause between two questions to another process.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    use std::io::{Read, Write};
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    // Alertmanager answers JSON with chunked encoding: drop the chunk sizes.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Some((status, body))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn start_alertmanager(dir: &TempDir, port: u16) -> Daemon {
    let cfg = dir.path("alertmanager.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: 'null'\n  group_wait: 1s\n  group_interval: 1s\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let storage = dir.path("am-data");
    std::fs::create_dir_all(&storage).unwrap();
    let child = Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", storage.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let am = Daemon(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually("alertmanager ready", MIN, || {
        get(addr, "/-/ready").filter(|(s, _)| *s == 200)
    });
    am
}

fn set_metric(dir: &std::path::Path, v: u32) {
    let tmp = dir.join("fleetcheck.prom.tmp");
    std::fs::write(
        &tmp,
        format!("# TYPE fleetcheck_e2e_value gauge\nfleetcheck_e2e_value {v}\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join("fleetcheck.prom")).unwrap();
}

/// The alerts Alertmanager holds for our rule.
fn am_alerts(addr: SocketAddr) -> Option<Vec<serde_json::Value>> {
    let (status, body) = get(addr, "/api/v2/alerts")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v.as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == "e2e_value_high")
            .cloned()
            .collect(),
    )
}

#[test]
fn alert_reaches_alertmanager_firing_then_resolves_even_if_it_was_down() {
    require(ALERTMANAGER, "prometheus-alertmanager");
    require(NODE_EXPORTER, "prometheus-node-exporter");
    let dir = TempDir::new("am");
    let textfiles = dir.path("textfiles");
    std::fs::create_dir_all(&textfiles).unwrap();
    set_metric(&textfiles, 0);

    let ne_port = free_port();
    let _ne = Daemon(
        Command::new(NODE_EXPORTER)
            .arg(format!("--web.listen-address=127.0.0.1:{ne_port}"))
            .arg("--collector.disable-defaults")
            .arg("--collector.textfile")
            .arg(format!(
                "--collector.textfile.directory={}",
                textfiles.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ne: SocketAddr = format!("127.0.0.1:{ne_port}").parse().unwrap();
    eventually("node_exporter serving the textfile metric", MIN, || {
        get(ne, "/metrics").filter(|(s, b)| *s == 200 && b.contains("fleetcheck_e2e_value 0"))
    });

    let am_port = free_port();
    let am_addr: SocketAddr = format!("127.0.0.1:{am_port}").parse().unwrap();
    let am = start_alertmanager(&dir, am_port);

    let target = format!("http://127.0.0.1:{ne_port}/metrics");
    let cfg = dir.path("fleetcheck.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\ninterval = \"300ms\"\nresend_interval = \"1s\"\nprocesses = 1\n\
             targets = [\"{target}\"]\nalertmanagers = [\"http://127.0.0.1:{am_port}\"]\n\
             [[rule]]\nname = \"e2e_value_high\"\nkind = \"threshold\"\nmetric = \"fleetcheck_e2e_value\"\n\
             above = 0.5\nalert_labels = {{ severity = \"test\" }}\nannotations = {{ summary = \"the e2e value is high\" }}\n"
        ),
    )
    .unwrap();
    let mut fc = Proc::start(&["run", "--config", cfg.to_str().unwrap()]);
    fc.wait_line(MIN, |l| l.contains("round done"));
    assert_eq!(am_alerts(am_addr).unwrap().len(), 0);

    // Alertmanager goes down; the metric trips the rule meanwhile.
    drop(am);
    set_metric(&textfiles, 1);
    fc.wait_line(MIN, |l| {
        l.contains("alert firing") && l.contains("e2e_value_high")
    });
    fc.wait_line(MIN, |l| l.contains("cannot deliver alerts"));
    // Back up: the alert arrives, firing, with the rule's and target's labels.
    let _am = start_alertmanager(&dir, am_port);
    let alert = eventually("the alert in Alertmanager", MIN, || {
        am_alerts(am_addr)?
            .into_iter()
            .find(|a| a["status"]["state"] == "active")
    });
    let l = &alert["labels"];
    assert_eq!(l["alertname"], "e2e_value_high");
    assert_eq!(l["instance"], target.as_str());
    assert_eq!(l["series"], "fleetcheck_e2e_value");
    assert_eq!(l["severity"], "test");
    assert_eq!(alert["annotations"]["summary"], "the e2e value is high");

    // The condition clears: the alert resolves in Alertmanager.
    set_metric(&textfiles, 0);
    fc.wait_line(MIN, |l| {
        l.contains("alert resolved") && l.contains("e2e_value_high")
    });
    eventually("the alert resolved in Alertmanager", MIN, || {
        let alerts = am_alerts(am_addr)?;
        alerts
            .iter()
            .all(|a| a["status"]["state"] != "active")
            .then_some(())
    });
    fc.signal(libc::SIGTERM);
    assert_eq!(fc.wait_exit(MIN), 0);
}
