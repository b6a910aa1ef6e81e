//! fleetcheck against real software on loopback: Debian's
//! `prometheus-node-exporter` (several, over rounds, one restarted
//! mid-scan) and `prometheus-pushgateway` carrying crafted metrics.
//!
//! The binaries come from the packages `.ci/run` installs; when they are
//! missing these tests fail and say so (they never pass silently).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetcheck::checks::Checks;
use fleetcheck::http::{FetchConfig, HttpClient};
use fleetcheck::rules::Rules;
use fleetcheck::state::{HostState, scrape_page};

/// The executable of a Debian package, or a failure naming the package.
fn binary(name: &str) -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: install the Debian packages prometheus-node-exporter and \
                 prometheus-pushgateway (apt-get install -y prometheus-node-exporter \
                 prometheus-pushgateway; .ci/run does it)"
            )
        })
}

/// A child process killed (and reaped) when dropped.
struct Proc {
    child: Child,
    what: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Wait until `port` accepts connections, for at most 20 s; fails early
    /// with the process's stderr if it exits.
    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{} exited ({status}) before listening: {err}", self.what);
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on port {port} after 20 s",
                self.what
            );
            // Retry the connect with a short backoff, bounded by the deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn node_exporter(port: u16) -> Proc {
    let child = Command::new(binary("prometheus-node-exporter"))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // A fast, container-safe set of collectors.
        .args([
            "--collector.disable-defaults",
            "--collector.cpu",
            "--collector.loadavg",
            "--collector.meminfo",
            "--collector.netdev",
            "--collector.filesystem",
            "--collector.stat",
            "--collector.time",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus-node-exporter");
    let mut p = Proc {
        child,
        what: format!("node_exporter on {port}"),
    };
    p.wait_ready(port);
    p
}

fn fetch_cfg() -> FetchConfig {
    FetchConfig {
        timeout: Duration::from_secs(10),
        max_bytes: 16 << 20,
        round: None,
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

const RULES: &str = r#"
[[rule]]
name = "negative_rate"
kind = "rate"
metric = "process_cpu_seconds_total"
below = -0.000001

[[rule]]
name = "handler_rate_negative"
kind = "rate"
metric = "promhttp_metric_handler_requests_total"
below = -0.000001

[[rule]]
name = "exporter_missing"
kind = "absent"
metric = "node_exporter_build_info"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_exporters_scraped_over_rounds_one_restarted_mid_scan() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut procs: Vec<Option<Proc>> = ports.iter().map(|&p| Some(node_exporter(p))).collect();
    let checks = Checks::from_rules(&Rules::parse(RULES).unwrap());
    let client = HttpClient::new();
    let mut states: Vec<HostState> = (0..3).map(HostState::new).collect();
    let key = "promhttp_metric_handler_requests_total{code=\"200\"}";
    let mut before_restart = 0.0;
    for round in 0..5u64 {
        if round == 3 {
            // Restart the second exporter on the same port.
            before_restart = states[1].value_of(key).unwrap();
            procs[1] = None; // killed and reaped
            procs[1] = Some(node_exporter(ports[1]));
        }
        for (i, &port) in ports.iter().enumerate() {
            let page = client
                .get(&format!("http://127.0.0.1:{port}/metrics"), &fetch_cfg())
                .await
                .unwrap_or_else(|e| panic!("round {round} host {i}: {e}"));
            // node_exporter compresses when asked: gzip end to end.
            assert!(
                page.wire_bytes < page.body.len() / 2,
                "gzip: {} of {}",
                page.wire_bytes,
                page.body.len()
            );
            let hr = scrape_page(
                &mut states[i],
                &checks,
                &page.body,
                page.format,
                round,
                now(),
            );
            assert!(!hr.failed, "round {round} host {i}: {:?}", hr.findings);
            assert!(
                hr.points > 100,
                "round {round} host {i}: {} points",
                hr.points
            );
            assert!(
                hr.findings.is_empty(),
                "round {round} host {i}: no false finding, got {:?}",
                hr.findings
            );
        }
    }
    // The restart did reset the exporter's own counters, and no rate fired.
    let after = states[1].value_of(key).unwrap();
    assert!(after < before_restart, "{after} < {before_restart}");
    // (The handler counts a scrape once it is answered: 4 after 5.)
    assert_eq!(states[0].value_of(key), Some(4.0));
    drop(procs);
}

/// PUT `body` to the pushgateway for job `job`; returns the status line.
fn push(port: u16, job: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!(
        "PUT /metrics/job/{job} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn pushgateway_with_crafted_metrics_is_read_exactly() {
    let port = free_port();
    let child = Command::new(binary("prometheus-pushgateway"))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus-pushgateway");
    let mut gw = Proc {
        child,
        what: format!("pushgateway on {port}"),
    };
    gw.wait_ready(port);
    let body = "# TYPE rpc_latency_seconds gauge\n\
                rpc_latency_seconds{quantile=\"p99\"} 0.5\n\
                # HELP escaped_metric Help with a \\\\ backslash\\nand a newline.\n\
                # TYPE escaped_metric gauge\n\
                escaped_metric{path=\"C:\\\\dir\",msg=\"say \\\"hi\\\"\\nbye\"} 1\n\
                # TYPE unicode_metric gauge\n\
                unicode_metric{city=\"Z\u{fc}rich\",name=\"\u{6771}\u{4eac}\"} 2\n";
    let status = push(port, "fleetcheck", body);
    assert!(
        status.contains(" 200 ") || status.contains(" 202 "),
        "{status}"
    );

    let client = HttpClient::new();
    let page = client
        .get(&format!("http://127.0.0.1:{port}/metrics"), &fetch_cfg())
        .await
        .unwrap();
    let mut st = HostState::new(0);
    let hr = scrape_page(&mut st, &Checks::new(), &page.body, page.format, 0, now());
    assert!(
        !hr.failed,
        "{:?}\n{}",
        hr.findings,
        String::from_utf8_lossy(&page.body)
    );
    assert!(hr.points > 20, "{} points", hr.points);
    // The pushgateway adds job="fleetcheck" and an empty instance (an
    // empty label is no label).
    assert_eq!(
        st.value_of("rpc_latency_seconds{job=\"fleetcheck\",quantile=\"p99\"}"),
        Some(0.5)
    );
    assert_eq!(
        st.value_of(
            "escaped_metric{job=\"fleetcheck\",msg=\"say \\\"hi\\\"\\nbye\",path=\"C:\\\\dir\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        st.value_of(
            "unicode_metric{city=\"Z\u{fc}rich\",job=\"fleetcheck\",name=\"\u{6771}\u{4eac}\"}"
        ),
        Some(2.0)
    );
    // The HELP text survives the round trip, escapes and all.
    let fams = fleetcheck::expfmt::parse_families_with(&page.body, page.format).unwrap();
    let help = fams
        .iter()
        .find(|f| f.name == "escaped_metric")
        .and_then(|f| f.help.clone());
    assert_eq!(
        help.as_deref(),
        Some("Help with a \\ backslash\nand a newline.")
    );
    drop(gw);
}
