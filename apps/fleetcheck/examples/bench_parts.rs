//! Micro-benchmark of the CPU parts of a scan (no network): page rendering
//! by the simulated fleet, and parse + checks by `scrape_round`.
//!
//! Run: `cargo run --release -p fleetcheck --example bench_parts`; name
//! parts (`render`, `serve`, `scrape`, `parse`, `gzip`) to run only those, e.g.
//! under `valgrind --tool=callgrind` for instruction counts per point.

use std::time::Instant;

use fleetcheck::checks::Checks;
use fleetcheck::fleet::{Fleet, FleetConfig, STEP_SECS};
use fleetcheck::state::{HostState, scrape_round};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    let hosts = 200u32;
    let rounds = 10u64;
    let fleet = Fleet::new(FleetConfig {
        hosts,
        series: 2000,
        seed: 42,
        rounds,
        bad: Vec::new(),
    });
    let pts = f64::from(hosts) * 2000.0 * rounds as f64;
    if run("render") {
        let t = Instant::now();
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for r in 0..rounds {
            for h in 0..hosts {
                out.clear();
                fleet.render(h, r, &mut out);
                bytes += out.len();
            }
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "render: {:.1} M points/s, {:.0} MB/s",
            pts / el / 1e6,
            bytes as f64 / el / 1e6
        );
    }
    if run("serve") {
        // As served: pages kept per host and patched round to round (the
        // first round, rendered whole, is left out).
        for h in 0..hosts {
            let _ = fleet.served_page(h, Some(0), false);
        }
        let pts = pts * (rounds - 1) as f64 / rounds as f64;
        let t = Instant::now();
        let mut bytes = 0usize;
        for r in 1..rounds {
            for h in 0..hosts {
                bytes += fleet.served_page(h, Some(r), false).map_or(0, |p| p.len());
            }
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "serve: {:.1} M points/s, {:.0} MB/s",
            pts / el / 1e6,
            bytes as f64 / el / 1e6
        );
    }
    if !(run("scrape") || run("steady") || run("parse") || run("gzip")) {
        return;
    }
    let mut all = Vec::new();
    for r in 0..rounds {
        for h in 0..hosts {
            let mut out = Vec::new();
            fleet.render(h, r, &mut out);
            all.push(out);
        }
    }
    if run("scrape") {
        let checks = Checks::builtin();
        let mut states: Vec<HostState> = (0..hosts).map(HostState::new).collect();
        let t = Instant::now();
        let mut points = 0u64;
        let mut findings = 0usize;
        for r in 0..rounds {
            for h in 0..hosts {
                let page = &all[(r * u64::from(hosts) + u64::from(h)) as usize];
                let hr = scrape_round(
                    &mut states[h as usize],
                    &checks,
                    page,
                    r,
                    r as f64 * STEP_SECS,
                );
                points += hr.points;
                findings += hr.findings.len();
            }
        }
        let el = t.elapsed().as_secs_f64();
        println!(
            "scrape_round: {:.1} M points/s ({points} points, {findings} findings)",
            points as f64 / el / 1e6
        );
    }
    if run("steady") {
        // Round 0 interns every series; the rounds after it are what a
        // long scan costs per point (`--toggle-collect=*steady_rounds*`).
        let checks = Checks::builtin();
        let mut states: Vec<HostState> = (0..hosts).map(HostState::new).collect();
        for (h, st) in states.iter_mut().enumerate() {
            scrape_round(st, &checks, &all[h], 0, 0.0);
        }
        let t = Instant::now();
        let (points, findings) = steady_rounds(&mut states, &checks, &all, hosts, rounds);
        let el = t.elapsed().as_secs_f64();
        println!(
            "steady scrape_round: {:.1} M points/s ({points} points, {findings} findings)",
            points as f64 / el / 1e6
        );
    }
    if run("parse") {
        let t = Instant::now();
        let mut n = 0usize;
        for p in &all {
            for it in fleetcheck::expfmt::Parser::new(p) {
                if let Ok(fleetcheck::expfmt::Item::Sample(_)) = it {
                    n += 1;
                }
            }
        }
        let el = t.elapsed().as_secs_f64();
        println!("parse only: {:.1} M points/s", n as f64 / el / 1e6);
    }
    if run("gzip") {
        // gzip: what exporters send when asked (level 6, Go's default) and
        // what decompressing costs the scraper, per page of this fleet.
        let mut raw = 0usize;
        let mut packed = Vec::new();
        for p in all.iter().take(100) {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            let _ = e.write_all(p);
            if let Ok(z) = e.finish() {
                raw += p.len();
                packed.push(z);
            }
        }
        let zbytes: usize = packed.iter().map(Vec::len).sum();
        let t = Instant::now();
        let mut out = 0usize;
        for z in &packed {
            if let Ok(p) = fleetcheck::http::gunzip(z, 64 << 20) {
                out += p.len();
            }
        }
        let el = t.elapsed().as_secs_f64();
        let n = packed.len().max(1) as f64;
        println!(
            "gzip: {:.0} kB page -> {:.1} kB on the wire ({:.1}x smaller); gunzip {:.0} MB/s, {:.0} us per page",
            raw as f64 / n / 1e3,
            zbytes as f64 / n / 1e3,
            raw as f64 / zbytes.max(1) as f64,
            out as f64 / el / 1e6,
            el / n * 1e6
        );
    }
}

/// Rounds 1.. of every host (their state already interned by round 0).
#[inline(never)]
fn steady_rounds(
    states: &mut [HostState],
    checks: &Checks,
    pages: &[Vec<u8>],
    hosts: u32,
    rounds: u64,
) -> (u64, usize) {
    let mut points = 0u64;
    let mut findings = 0usize;
    for r in 1..rounds {
        for (h, st) in states.iter_mut().enumerate() {
            let page = &pages[(r * u64::from(hosts)) as usize + h];
            let hr = scrape_round(st, checks, page, r, r as f64 * STEP_SECS);
            points += hr.points;
            findings += hr.findings.len();
        }
    }
    (points, findings)
}
