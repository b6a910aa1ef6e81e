//! End-to-end: simulated fleet on loopback + in-process scan.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetcheck::checks::Checks;
use fleetcheck::fleet::{BadKind, Fleet, FleetConfig, FleetServer, STEP_SECS};
use fleetcheck::report::verify;
use fleetcheck::scan::{Clock, ScanConfig, ScrapeOptions, host_specs, scan_inprocess};

multiloop::init_before_main!();

fn opts(timeout_ms: u64, max_bytes: usize) -> ScrapeOptions {
    ScrapeOptions {
        timeout_ms,
        max_bytes,
        round_query: true,
        clock: Clock::Logical { step: STEP_SECS },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fleet_findings_equal_injected() {
    let rounds = 5;
    let cfg = FleetConfig {
        hosts: 20,
        series: 50,
        seed: 7,
        rounds,
        bad: Vec::new(),
    };
    let fleet = Arc::new(Fleet::new(cfg));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let scan = ScanConfig {
        targets: host_specs(&server.target_urls()),
        rounds,
        interval: Duration::ZERO,
        concurrency: 4,
        opts: opts(5_000, 1 << 20),
        clients: Vec::new(),
        discovery: None,
    };
    let report = scan_inprocess(&scan, Arc::new(Checks::builtin()), Arc::new(Mutex::new(()))).await;
    assert_eq!(report.rounds, rounds);
    assert_eq!(report.scrape_failures, 0);
    assert_eq!(report.scrapes, 20 * rounds);
    let truth = fleet.ground_truth(rounds);
    assert!(truth.len() >= 11, "{truth:?}");
    let v = verify(&report.findings, &truth);
    assert_eq!(v.recall, 1.0, "missed {:?}", v.missed);
    assert_eq!(v.precision, 1.0, "unexpected {:?}", v.unexpected);
    assert_eq!(report.anomalies as usize, truth.len());
    let kinds: std::collections::BTreeSet<&str> =
        report.findings.iter().map(|f| f.kind.as_str()).collect();
    for k in [
        "threshold",
        "rate",
        "zscore",
        "stale",
        "absent",
        "fleet_outlier",
    ] {
        assert!(kinds.contains(k), "{k} not found: {kinds:?}");
    }
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_become_findings_and_scan_completes() {
    let rounds = 2;
    let cfg = FleetConfig {
        hosts: 6,
        series: 50,
        seed: 1,
        rounds,
        bad: vec![
            BadKind::Status500,
            BadKind::Garbage,
            BadKind::Oversize(2 << 20),
            BadKind::Slow(Duration::from_secs(30)),
        ],
    };
    let fleet = Arc::new(Fleet::new(cfg));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let mut urls = server.target_urls();
    // refused connection: a port that was just free
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    urls.push(format!("http://{dead}/metrics"));
    urls.push("ftp://example.invalid/metrics".to_string());
    let scan = ScanConfig {
        targets: host_specs(&urls),
        rounds,
        interval: Duration::ZERO,
        concurrency: 12,
        opts: opts(300, 1 << 20),
        clients: Vec::new(),
        discovery: None,
    };
    let report = scan_inprocess(&scan, Arc::new(Checks::builtin()), Arc::new(Mutex::new(()))).await;
    assert_eq!(report.rounds, rounds);
    assert_eq!(report.scrapes, 6 * rounds);
    assert_eq!(report.scrape_failures, 6 * rounds);
    let by_host = |h: u32| -> Vec<&str> {
        report
            .findings
            .iter()
            .filter(|f| f.host == h && f.kind == "scrape")
            .map(|f| f.check.as_str())
            .collect()
    };
    assert_eq!(by_host(6), vec!["http_status"; 2]);
    assert_eq!(by_host(7), vec!["malformed"; 2]);
    assert_eq!(by_host(8), vec!["oversize"; 2]);
    assert_eq!(by_host(9), vec!["timeout"; 2]);
    assert_eq!(by_host(10), vec!["unreachable"; 2]);
    assert_eq!(by_host(11), vec!["bad_url"; 2]);
    let m = report
        .findings
        .iter()
        .find(|f| f.check == "malformed")
        .unwrap();
    assert!(m.message.starts_with("line 1:"), "{}", m.message);
    // good hosts still verified
    let v = verify(&report.findings, &fleet.ground_truth(rounds));
    assert_eq!(v.recall, 1.0, "{v:?}");
    assert_eq!(v.precision, 1.0, "{v:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn per_host_functions_work_on_a_single_threaded_runtime() {
    use fleetcheck::http::HttpClient;
    use fleetcheck::scan::{HostSpec, scrape_host};
    use fleetcheck::state::HostState;
    let fleet = Arc::new(Fleet::new(FleetConfig {
        hosts: 3,
        series: 80,
        seed: 3,
        rounds: 3,
        bad: Vec::new(),
    }));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let client = HttpClient::new();
    let checks = Checks::builtin();
    let spec = HostSpec {
        id: 1,
        url: server.target_urls()[1].clone(),
        group: 0,
    };
    let mut st = HostState::new(1);
    for round in 0..3 {
        let hr = scrape_host(
            &client,
            &mut st,
            &checks,
            &spec,
            round,
            &opts(2_000, 1 << 20),
        )
        .await;
        assert!(!hr.failed, "{hr:?}");
        assert!(hr.points >= 80);
        let _ = postcard_like_roundtrip(&hr);
    }
    assert_eq!(st.last_round(), Some(2));
}

fn postcard_like_roundtrip(hr: &fleetcheck::HostRound) -> fleetcheck::HostRound {
    let s = serde_json::to_string(hr).unwrap();
    serde_json::from_str(&s).unwrap()
}
