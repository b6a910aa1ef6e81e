//! The service under faults, as a real process watching the simulated
//! fleet: a worker SIGKILLed every 300 ms while another is SIGSTOPped for
//! good, a frozen worker alone, a pool that gives up. The
//! alerts (every finding of the run) equal a clean run's, because host
//! history is kept in the parent and handed back to replacement workers,
//! and a frozen worker costs one bounded wait (the pool kills it), not a
//! stalled service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::{Proc, TempDir};

/// Live worker processes of `parent` (its children but the fleet), not
/// stopped ones.
fn worker_pids(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the parenthesised command: the state, then the parent pid.
        let mut rest = stat.rsplit_once(')').map_or("", |r| r.1).split_whitespace();
        let stopped = rest.next() == Some("T");
        let ppid = rest.next().and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent)
            && !stopped
            && !String::from_utf8_lossy(&cmd).contains("serve-fleet")
        {
            out.push(pid);
        }
    }
    out
}

/// (alertname, target path, series) of every firing notification.
fn firing(path: &std::path::Path) -> BTreeSet<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "firing")
        .map(|v| {
            let l = &v["labels"];
            let inst = l["instance"].as_str().unwrap_or("");
            // The fleet's port differs between runs: keep the path.
            let path = inst.find("/host/").map_or(inst, |i| &inst[i..]);
            (
                l["alertname"].as_str().unwrap().to_string(),
                path.to_string(),
                l["series"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

struct Run {
    firing: BTreeSet<(String, String, String)>,
    kills: u32,
    restored_lines: usize,
    lost_rounds: usize,
    rebuilds: usize,
    longest_round: f64,
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    /// SIGKILL a worker this often.
    KillEvery(Duration),
    /// SIGSTOP one worker after this long, and never continue it.
    StopAfter(Duration),
    /// SIGKILL a worker this often, this many times.
    KillTimes(Duration, u32),
}

fn run(dir: &TempDir, name: &str, fault: Fault) -> Run {
    run_with(dir, name, &[fault], &[])
}

fn run_with(dir: &TempDir, name: &str, faults: &[Fault], extra: &[&str]) -> Run {
    let jsonl = dir.path(&format!("{name}.jsonl"));
    let mut p = Proc::start(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--interval",
            "250ms",
            "--rounds",
            "16",
            "--fleet-hosts",
            "40",
            "--fleet-series",
            "150",
            "--fleet-rounds",
            "12",
            "--processes",
            "2",
            "--worker-concurrency",
            "8",
            "--group-fraction",
            "0",
            "--flap-limit",
            "0",
            "--scrape-timeout",
            "1s",
            "--alerts-jsonl",
            jsonl.to_str().unwrap(),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let mut threads = Vec::new();
    for &fault in faults {
        let (every, signal, times) = match fault {
            Fault::None => continue,
            Fault::KillEvery(d) => (d, libc::SIGKILL, u32::MAX),
            Fault::StopAfter(d) => (d, libc::SIGSTOP, 1),
            Fault::KillTimes(d, n) => (d, libc::SIGKILL, n),
        };
        let (stop, kills, parent) = (stop.clone(), kills.clone(), p.child.id());
        threads.push(std::thread::spawn(move || {
            let (mut n, mut sent) = (0usize, 0u32);
            while !stop.load(Ordering::Relaxed) && sent < times {
                // The fault schedule, not a wait for anything.
                std::thread::sleep(every);
                let w = worker_pids(parent);
                if let Some(&pid) = w.get(n % w.len().max(1)) {
                    // SAFETY: kill(2) on a worker of our child; no memory involved.
                    if unsafe { libc::kill(pid as i32, signal) } == 0 {
                        sent += 1;
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        }));
    }
    let code = p.wait_exit(Duration::from_secs(180));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(code, 0, "{}", p.seen.join("\n"));
    Run {
        firing: firing(&jsonl),
        kills: kills.load(Ordering::Relaxed),
        restored_lines: p
            .seen
            .iter()
            .filter(|l| l.contains("host history handed back"))
            .count(),
        lost_rounds: p.seen.iter().filter(|l| l.contains("round lost")).count(),
        rebuilds: p
            .seen
            .iter()
            .filter(|l| l.contains("worker pool built again"))
            .count(),
        longest_round: p
            .seen
            .iter()
            .filter_map(|l| l.split("secs=").nth(1))
            .filter_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .fold(0.0, f64::max),
    }
}

#[test]
fn sigkill_a_worker_every_300ms_and_sigstop_another_costs_no_finding() {
    let dir = TempDir::new("faults");
    let clean = run(&dir, "clean", Fault::None);
    assert!(clean.firing.len() >= 10, "{:?}", clean.firing);
    let chaos = run_with(
        &dir,
        "chaos",
        &[
            Fault::KillEvery(Duration::from_millis(300)),
            Fault::StopAfter(Duration::from_millis(450)),
        ],
        &[],
    );
    eprintln!(
        "faults: {} signals, {} rounds with history handed back, {} rounds lost and done again, longest round {:.2} s; {} alerts in both runs",
        chaos.kills,
        chaos.restored_lines,
        chaos.lost_rounds,
        chaos.longest_round,
        clean.firing.len()
    );
    assert!(chaos.kills >= 5, "only {} kills", chaos.kills);
    assert!(chaos.restored_lines >= 1, "no worker lost a host's history");
    let missed: Vec<_> = clean.firing.difference(&chaos.firing).collect();
    let extra: Vec<_> = chaos.firing.difference(&clean.firing).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "missed {missed:?}\nextra {extra:?}"
    );
}

#[test]
fn a_frozen_worker_costs_one_bounded_wait_and_no_finding() {
    let dir = TempDir::new("frozen");
    let clean = run(&dir, "clean", Fault::None);
    let frozen = run(&dir, "frozen", Fault::StopAfter(Duration::from_millis(600)));
    eprintln!(
        "frozen worker: longest round {:.2} s (clean {:.2} s), {} rounds with history handed back",
        frozen.longest_round, clean.longest_round, frozen.restored_lines
    );
    assert_eq!(frozen.kills, 1, "one worker stopped");
    // The pool kills a worker silent past the scrape deadline (1 s + 2 s)
    // plus its grace; the round waits that long once, not forever.
    assert!(frozen.longest_round < 10.0, "{}", frozen.longest_round);
    let missed: Vec<_> = clean.firing.difference(&frozen.firing).collect();
    let extra: Vec<_> = frozen.firing.difference(&clean.firing).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "missed {missed:?}\nextra {extra:?}"
    );
}

#[test]
fn a_pool_that_gives_up_is_built_again_and_the_round_done_again() {
    let dir = TempDir::new("giveup");
    let clean = run(&dir, "clean", Fault::None);
    // The pool replaces 2 deaths a minute and gives up at the third that no
    // scrape explains: a kill that lands inside a scrape's poll is that
    // scrape's failure and never counts (multiloop), so enough kills are
    // sent that at least three land between polls.
    let r = run_with(
        &dir,
        "giveup",
        &[Fault::KillTimes(Duration::from_millis(300), 10)],
        &["--worker-restarts-per-minute", "2"],
    );
    eprintln!(
        "pool gave up: {} kills, {} rounds lost and done again, {} rebuilds",
        r.kills, r.lost_rounds, r.rebuilds
    );
    assert_eq!(r.kills, 10);
    assert!(
        r.lost_rounds >= 1 && r.rebuilds >= 1,
        "lost {} rebuilt {}",
        r.lost_rounds,
        r.rebuilds
    );
    let missed: Vec<_> = clean.firing.difference(&r.firing).collect();
    let extra: Vec<_> = r.firing.difference(&clean.firing).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "missed {missed:?}\nextra {extra:?}"
    );
}
