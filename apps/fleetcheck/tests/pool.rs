//! The process-pool runner: end-to-end on a small fleet, routing by host
//! (state stays on one worker across rounds), a killed worker between
//! rounds, bad targets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetcheck::fleet::{BadKind, Fleet, FleetConfig, FleetServer, STEP_SECS};
use fleetcheck::pool::{PoolScanner, PoolSettings, WorkerProbe, probe, route_host, scan_pool};
use fleetcheck::report::{Report, verify};
use fleetcheck::rules::Rules;
use fleetcheck::scan::{Clock, HostSpec, ScanConfig, ScrapeOptions, host_specs};
use fleetcheck::worker::WorkerInit;

multiloop::init_before_main!();

fn opts(timeout_ms: u64, max_bytes: usize) -> ScrapeOptions {
    ScrapeOptions {
        timeout_ms,
        max_bytes,
        round_query: true,
        clock: Clock::Logical { step: STEP_SECS },
    }
}

fn init(o: ScrapeOptions) -> WorkerInit {
    WorkerInit {
        rules: Rules::builtin(),
        opts: o,
        clients: Vec::new(),
    }
}

const TWO: PoolSettings = PoolSettings {
    processes: 2,
    concurrency: 8,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_small_fleet_findings_equal_injected() {
    let rounds = 3;
    let fleet = Arc::new(Fleet::new(FleetConfig {
        hosts: 20,
        series: 50,
        seed: 7,
        rounds,
        bad: Vec::new(),
    }));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let o = opts(5_000, 1 << 20);
    let scan = ScanConfig {
        targets: host_specs(&server.target_urls()),
        rounds,
        interval: Duration::ZERO,
        concurrency: 4,
        opts: o,
        clients: Vec::new(),
        discovery: None,
    };
    let report = scan_pool(&scan, init(o), TWO, Arc::new(Mutex::new(())))
        .await
        .unwrap();
    assert_eq!(report.rounds, rounds);
    assert_eq!(report.scrape_failures, 0);
    assert_eq!(report.scrapes, 20 * rounds);
    assert!(report.points >= 20 * rounds * 50, "{}", report.points);
    let truth = fleet.ground_truth(rounds);
    assert!(!truth.is_empty());
    let v = verify(&report.findings, &truth);
    assert_eq!(v.recall, 1.0, "missed {:?}", v.missed);
    assert_eq!(v.precision, 1.0, "unexpected {:?}", v.unexpected);
    assert_eq!(report.anomalies as usize, truth.len());
    assert_eq!(report.exit_code(), 1);
}

async fn probes(scanner: &PoolScanner, specs: &[HostSpec], round: u64) -> Vec<WorkerProbe> {
    scanner
        .pool()
        .map(probe, specs.iter().map(|s| (s.clone(), round)))
        .route_by(route_host)
        .await
        .unwrap()
}

async fn one_round(scanner: &PoolScanner, specs: &[HostSpec], round: u64) -> Report {
    let mut rep = scanner.round(specs, round).await.unwrap();
    rep.finish_round(scanner.checks(), round);
    rep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_stay_on_their_worker_and_a_killed_worker_loses_no_round() {
    let rounds = 7;
    let hosts = 16;
    let fleet = Arc::new(Fleet::new(FleetConfig {
        hosts,
        series: 50,
        seed: 11,
        rounds,
        bad: Vec::new(),
    }));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let specs = host_specs(&server.target_urls());
    let scanner = PoolScanner::start(init(opts(5_000, 1 << 20)), TWO)
        .await
        .unwrap();
    let mut pid_of: HashMap<u32, u32> = HashMap::new();
    let mut total = Report::default();
    let kill_after = 2;
    let mut killed = None;
    let mut moved = 0;
    for round in 0..rounds {
        let rep = one_round(&scanner, &specs, round).await;
        // every host's result of every round is there
        assert_eq!(rep.scrapes, u64::from(hosts), "round {round}");
        assert_eq!(rep.scrape_failures, 0, "round {round}: {:?}", rep.findings);
        total.merge(rep);
        let ps = probes(&scanner, &specs, round).await;
        for p in &ps {
            // the state of the host is on the worker the probe was routed to
            assert_eq!(p.last_round, Some(round), "{p:?}");
            match (pid_of.get(&p.host), killed) {
                (Some(&old), Some(k)) if old == k => {
                    assert_ne!(p.pid, k, "host {} still on the killed worker", p.host);
                    moved += 1;
                }
                (Some(&old), _) => assert_eq!(p.pid, old, "host {} moved", p.host),
                (None, _) => {}
            }
            pid_of.insert(p.host, p.pid);
        }
        if round == kill_after {
            let distinct: std::collections::BTreeSet<u32> = pid_of.values().copied().collect();
            assert_eq!(distinct.len(), 2, "both workers serve hosts: {pid_of:?}");
            let victim = pid_of[&0];
            // SAFETY: kill has no memory-safety preconditions; the pid is a
            // live worker of our pool.
            assert_eq!(
                unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
                0
            );
            killed = Some(victim);
        }
        if round == kill_after + 1 {
            // the hosts of the killed worker started over with one round of
            // history on the new worker; the others kept theirs
            let victim = killed.unwrap();
            assert!(!scanner.pool().worker_pids().contains(&victim));
        }
    }
    assert!(moved > 0, "no host was on the killed worker");
    assert_eq!(total.rounds, rounds);
    assert_eq!(total.scrapes, u64::from(hosts) * rounds);
    assert_eq!(total.scrape_failures, 0);
    scanner.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_bad_targets_become_findings_and_scan_completes() {
    let rounds = 2;
    let fleet = Arc::new(Fleet::new(FleetConfig {
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
    }));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let mut urls = server.target_urls();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    urls.push(format!("http://{dead}/metrics"));
    urls.push("ftp://example.invalid/metrics".to_string());
    let o = opts(300, 1 << 20);
    let scan = ScanConfig {
        targets: host_specs(&urls),
        rounds,
        interval: Duration::ZERO,
        concurrency: 12,
        opts: o,
        clients: Vec::new(),
        discovery: None,
    };
    let report = scan_pool(&scan, init(o), TWO, Arc::new(Mutex::new(())))
        .await
        .unwrap();
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
    let v = verify(&report.findings, &fleet.ground_truth(rounds));
    assert_eq!(v.recall, 1.0, "{v:?}");
    assert_eq!(v.precision, 1.0, "{v:?}");
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_a_round_loses_no_host_result() {
    let rounds = 4;
    let hosts = 40;
    let fleet = Arc::new(Fleet::new(FleetConfig {
        hosts,
        series: 400,
        seed: 5,
        rounds,
        bad: Vec::new(),
    }));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let specs = host_specs(&server.target_urls());
    let scanner = PoolScanner::start(init(opts(5_000, 1 << 20)), TWO)
        .await
        .unwrap();
    let mut total = Report::default();
    for round in 0..rounds {
        let victim = (round == 1).then(|| scanner.pool().worker_pids()[0]);
        let scan = one_round(&scanner, &specs, round);
        let kill = async {
            if let Some(pid) = victim {
                tokio::time::sleep(Duration::from_millis(2)).await;
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        };
        let (rep, ()) = tokio::join!(scan, kill);
        assert_eq!(rep.scrapes, u64::from(hosts), "round {round}");
        assert_eq!(rep.scrape_failures, 0, "round {round}: {:?}", rep.findings);
        total.merge(rep);
        if let Some(pid) = victim {
            // the pool noticed the death (now or a moment after the round)
            let noticed = scanner
                .pool()
                .wait_for_stats(|s| s.workers_died_in_task + s.workers_died_outside_tasks == 1);
            tokio::time::timeout(Duration::from_secs(10), noticed)
                .await
                .unwrap_or_else(|_| panic!("worker {pid}'s death not noticed in 10 s"));
            assert!(!scanner.pool().worker_pids().contains(&pid));
        }
    }
    assert_eq!(total.scrapes, u64::from(hosts) * rounds);
    // Only history-based findings of the re-started hosts may be missing;
    // nothing is found twice or made up.
    let v = verify(&total.findings, &fleet.ground_truth(rounds));
    assert_eq!(v.precision, 1.0, "{v:?}");
    scanner.close().await.unwrap();
}

/// A custom check for the pool: a gauge that fell below half its previous value.
struct SuddenDrop;

impl fleetcheck::checks::Check for SuddenDrop {
    fn name(&self) -> &str {
        "sudden_drop"
    }
    fn kind(&self) -> &str {
        "custom"
    }
    fn watches(&self, s: &fleetcheck::checks::SeriesInfo<'_>) -> bool {
        s.name == "node_filesystem_avail_bytes"
    }
    fn evaluate(
        &self,
        o: &fleetcheck::checks::Observation<'_>,
    ) -> Option<fleetcheck::checks::Anomaly> {
        let prev = o.prev?;
        (o.value < prev.value * 0.5).then(|| fleetcheck::checks::Anomaly {
            value: o.value,
            message: "dropped".into(),
        })
    }
}

fn custom_checks() -> fleetcheck::Checks {
    fleetcheck::Checks::builtin().with(SuddenDrop)
}

#[multiloop::task]
async fn init_custom(o: ScrapeOptions) {
    multiloop::set_worker_state(fleetcheck::worker::WorkerState::with_checks(
        custom_checks(),
        o,
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_checks_run_in_the_workers() {
    let rounds = 6;
    let fleet = Arc::new(Fleet::new(FleetConfig {
        hosts: 50,
        series: 300,
        seed: 42,
        rounds,
        bad: Vec::new(),
    }));
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let specs = host_specs(&server.target_urls());
    let o = opts(5_000, 4 << 20);
    let scanner = PoolScanner::start_with(custom_checks(), init_custom, o, TWO)
        .await
        .unwrap();
    let scan = ScanConfig {
        targets: specs,
        rounds,
        interval: Duration::ZERO,
        concurrency: 8,
        opts: o,
        clients: Vec::new(),
        discovery: None,
    };
    let report = scanner.scan(&scan, Arc::new(Mutex::new(()))).await.unwrap();
    scanner.close().await.unwrap();
    assert!(report.findings.iter().any(|f| f.kind == "custom"));
    // the built-in rules still find every injected anomaly
    let v = verify(
        &report
            .findings
            .iter()
            .filter(|f| f.kind != "custom")
            .cloned()
            .collect::<Vec<_>>(),
        &fleet.ground_truth(rounds),
    );
    assert_eq!(v.recall, 1.0, "{v:?}");
    assert_eq!(v.precision, 1.0, "{v:?}");
}

/// What two scans of the same fleet must agree on: counts, findings per
/// check and per host, and every finding.
fn same_outcome(a: &Report, b: &Report) {
    assert_eq!(
        (
            a.rounds,
            a.scrapes,
            a.scrape_failures,
            a.points,
            a.bytes,
            a.anomalies
        ),
        (
            b.rounds,
            b.scrapes,
            b.scrape_failures,
            b.points,
            b.bytes,
            b.anomalies
        )
    );
    assert_eq!(a.by_check, b.by_check);
    assert_eq!(a.by_host, b.by_host);
    let sorted = |r: &Report| {
        let mut f: Vec<String> = r.findings.iter().map(|f| format!("{f:?}")).collect();
        f.sort();
        f
    };
    assert_eq!(sorted(a), sorted(b));
}

/// A fleet with one host that answers 40 ms late, in every round.
fn fleet_with_a_slow_host(rounds: u64) -> Arc<Fleet> {
    Arc::new(Fleet::new(FleetConfig {
        hosts: 30,
        series: 200,
        seed: 11,
        rounds,
        bad: vec![BadKind::Slow(Duration::from_millis(40))],
    }))
}

fn scan_config(server: &FleetServer, rounds: u64) -> ScanConfig {
    ScanConfig {
        targets: host_specs(&server.target_urls()),
        rounds,
        interval: Duration::ZERO,
        concurrency: 4,
        opts: opts(5_000, 1 << 20),
        clients: Vec::new(),
        discovery: None,
    }
}

/// Rounds overlap on the pool and in-process: the slow host's scrapes of
/// consecutive rounds queue behind each other on its worker while the
/// other hosts go on; both runners find what a round-by-round scan finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_rounds_find_the_same_on_the_pool_and_in_process() {
    let rounds = 8;
    let fleet = fleet_with_a_slow_host(rounds);
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let scan = scan_config(&server, rounds);
    let on_pool = scan_pool(&scan, init(scan.opts), TWO, Arc::new(Mutex::new(())))
        .await
        .unwrap();
    let checks = Arc::new(fleetcheck::Checks::from_rules(&Rules::builtin()));
    let in_process =
        fleetcheck::scan::scan_inprocess(&scan, checks, Arc::new(Mutex::new(()))).await;
    assert_eq!(
        on_pool.scrapes,
        31 * rounds,
        "every host, every round, none stale"
    );
    assert_eq!(on_pool.scrape_failures, 0, "{:?}", on_pool.findings);
    same_outcome(&on_pool, &in_process);
    // Round by round (the service's way): the same again.
    let scanner = PoolScanner::start(init(scan.opts), TWO).await.unwrap();
    let mut by_round = Report::default();
    for round in 0..rounds {
        let mut rep = scanner.round(&scan.targets, round).await.unwrap();
        rep.finish_round(scanner.checks(), round);
        by_round.merge(rep);
    }
    scanner.close().await.unwrap();
    same_outcome(&on_pool, &by_round);
    let v = verify(&on_pool.findings, &fleet.ground_truth(rounds));
    assert_eq!((v.precision, v.recall), (1.0, 1.0), "{v:?}");
}

/// Kills a worker once a given round is done (rounds after it are then
/// in flight).
struct KillAfterRound {
    round: u64,
    pid: u32,
    rounds_done: Vec<u64>,
}

impl fleetcheck::scan::RoundObserver for KillAfterRound {
    fn round_done(&mut self, round: u64, _report: &Report) {
        self.rounds_done.push(round);
        if round == self.round {
            // SAFETY: kill has no memory-safety preconditions.
            assert_eq!(
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) },
                0
            );
        }
    }
}

/// A worker SIGKILLed while two rounds are in flight: every host of every
/// round has its result, rounds finish in order, nothing is made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_rounds_overlap_loses_no_host_result() {
    let rounds = 8;
    let fleet = fleet_with_a_slow_host(rounds);
    let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
    let scan = scan_config(&server, rounds);
    let scanner = PoolScanner::start(init(scan.opts), TWO).await.unwrap();
    let observer = Arc::new(Mutex::new(KillAfterRound {
        round: 2,
        pid: scanner.pool().worker_pids()[0],
        rounds_done: Vec::new(),
    }));
    let report = scanner.scan(&scan, observer.clone()).await.unwrap();
    assert!(
        scanner.pool().stats().workers_spawned >= 3,
        "the worker was replaced"
    );
    scanner.close().await.unwrap();
    assert_eq!(
        observer.lock().unwrap().rounds_done,
        (0..rounds).collect::<Vec<_>>()
    );
    assert_eq!(report.rounds, rounds);
    assert_eq!(report.scrapes, 31 * rounds, "every host, every round");
    assert_eq!(report.scrape_failures, 0, "{:?}", report.findings);
    // The new worker's hosts start over: history-based findings may be
    // missing, none made up.
    let v = verify(&report.findings, &fleet.ground_truth(rounds));
    assert_eq!(v.precision, 1.0, "{v:?}");
}
