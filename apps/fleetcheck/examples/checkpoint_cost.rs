//! What keeping host history in the parent costs per round, at 1,000 hosts
//! × 2,000 series with the built-in rules (one thread, no I/O):
//! `cargo run --release -p fleetcheck --example checkpoint_cost`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use fleetcheck::checks::Checks;
use fleetcheck::fleet::{Fleet, FleetConfig, STEP_SECS};
use fleetcheck::state::{HostCheckpoint, HostState, StateUpdate, scrape_round};

fn main() {
    let (hosts, series, rounds) = (1000u32, 2000u32, 6u64);
    let fleet = Fleet::new(FleetConfig {
        hosts,
        series,
        seed: 42,
        rounds: 10,
        bad: Vec::new(),
    });
    let checks = Checks::builtin();
    let mut states: Vec<HostState> = (0..hosts).map(HostState::new).collect();
    let mut page = Vec::new();
    let mut scrape_secs = 0.0;
    for round in 0..rounds {
        let t = Instant::now();
        for (h, st) in states.iter_mut().enumerate() {
            page.clear();
            fleet.render(h as u32, round, &mut page);
            scrape_round(st, &checks, &page, round, round as f64 * STEP_SECS);
        }
        scrape_secs = t.elapsed().as_secs_f64();
    }
    // The parent's copies after the first round (a full checkpoint each).
    let mut copies: Vec<HostCheckpoint> = states.iter().map(HostState::checkpoint).collect();
    let full_bytes: usize = copies
        .iter()
        .map(|c| postcard::to_stdvec(c).unwrap().len())
        .sum();
    let watched: usize = copies.iter().map(|c| c.series.len()).sum();
    // What every later round pays: a delta per host, made and encoded in
    // the worker, decoded and applied in the parent.
    let (mut make, mut enc, mut dec, mut apply, mut bytes) = (0.0, 0.0, 0.0, 0.0, 0usize);
    let extra = 5u64;
    for round in rounds..rounds + extra {
        let t = Instant::now();
        for (h, st) in states.iter_mut().enumerate() {
            page.clear();
            fleet.render(h as u32, round, &mut page);
            scrape_round(st, &checks, &page, round, round as f64 * STEP_SECS);
        }
        scrape_secs = scrape_secs.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let ups: Vec<StateUpdate> = states
            .iter()
            .zip(&copies)
            .map(|(st, c)| st.update_for(Some(c.series.len() as u32), round))
            .collect();
        make += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let wire: Vec<Vec<u8>> = ups
            .iter()
            .map(|u| postcard::to_stdvec(u).unwrap())
            .collect();
        enc += t.elapsed().as_secs_f64();
        bytes += wire.iter().map(Vec::len).sum::<usize>();
        let t = Instant::now();
        let back: Vec<StateUpdate> = wire
            .iter()
            .map(|w| postcard::from_bytes(w).unwrap())
            .collect();
        dec += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (u, c) in back.iter().zip(copies.iter_mut()) {
            match u {
                StateUpdate::Delta(d) => assert!(c.apply(d)),
                StateUpdate::Full(f) => *c = f.clone(),
            }
        }
        apply += t.elapsed().as_secs_f64();
    }
    let n = extra as f64;
    let (make, enc, dec, apply) = (make / n, enc / n, dec / n, apply / n);
    let bytes = bytes as f64 / n;
    assert!(
        copies
            .iter()
            .zip(&states)
            .all(|(c, s)| *c == s.checkpoint())
    );
    // What a lost host costs once: rebuilding its state from the copy.
    let t = Instant::now();
    let restored: Vec<HostState> = copies
        .iter()
        .map(|c| HostState::restore(&checks, c))
        .collect();
    let restore = t.elapsed().as_secs_f64();
    assert_eq!(restored.len(), hosts as usize);
    let per_round = make + enc + dec + apply;
    println!(
        "{hosts} hosts x {series} series, built-in rules ({watched} watched series, {:.0} per host)",
        watched as f64 / f64::from(hosts)
    );
    println!(
        "parse + checks of one round (scrape_round, all hosts): {:.1} ms",
        scrape_secs * 1e3
    );
    println!(
        "first round: full checkpoints, {:.2} MiB",
        full_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "every later round: deltas {:.1} KiB ({:.0} B per host); make {:.2} ms + encode {:.2} ms + decode {:.2} ms + apply {:.2} ms = {:.2} ms ({:.2}% of parse + checks)",
        bytes / 1024.0,
        bytes / f64::from(hosts),
        make * 1e3,
        enc * 1e3,
        dec * 1e3,
        apply * 1e3,
        per_round * 1e3,
        100.0 * per_round / scrape_secs
    );
    println!(
        "restore of all {hosts} hosts (after a pool rebuild): {:.1} ms",
        restore * 1e3
    );
}
