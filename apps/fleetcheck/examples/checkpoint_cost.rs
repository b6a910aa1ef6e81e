//! What keeping host history in the parent costs per round, at 1,000 hosts
//! × 2,000 series with the built-in rules (one thread, no I/O):
//! `cargo run --release -p fleetcheck --example checkpoint_cost`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use fleetcheck::checks::Checks;
use fleetcheck::fleet::{Fleet, FleetConfig, STEP_SECS};
use fleetcheck::history::HistoryStore;
use fleetcheck::state::{HostState, StateUpdate, scrape_round};

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
    let mut scrape = |states: &mut [HostState], round: u64| {
        let t = Instant::now();
        for (h, st) in states.iter_mut().enumerate() {
            page.clear();
            fleet.render(h as u32, round, &mut page);
            scrape_round(st, &checks, &page, round, round as f64 * STEP_SECS);
        }
        t.elapsed().as_secs_f64()
    };
    for round in 0..rounds {
        scrape(&mut states, round);
    }
    // The parent's copies after the first round: a full checkpoint each.
    let mut store = HistoryStore::default();
    let (mut full_bytes, mut watched) = (0usize, 0usize);
    for st in &states {
        let cp = st.checkpoint();
        full_bytes += postcard::to_stdvec(&cp).unwrap().len();
        watched += cp.series.len();
        store.apply(StateUpdate::Full(cp));
    }
    // Every later round: a delta per host, made and encoded in the worker,
    // decoded and applied in the parent.
    let (mut make, mut enc, mut dec, mut apply, mut bytes) = (0.0, 0.0, 0.0, 0.0, 0usize);
    let mut scrape_secs = f64::MAX;
    let extra = 5u64;
    for round in rounds..rounds + extra {
        scrape_secs = scrape_secs.min(scrape(&mut states, round));
        let t = Instant::now();
        let ups: Vec<StateUpdate> = states
            .iter()
            .map(|st| st.update_for(store.len_of(st.host()), round))
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
        for u in back {
            assert!(matches!(u, StateUpdate::Delta(_)));
            store.apply(u);
        }
        apply += t.elapsed().as_secs_f64();
    }
    let n = extra as f64;
    let (make, enc, dec, apply, bytes) = (make / n, enc / n, dec / n, apply / n, bytes as f64 / n);
    assert!(
        states
            .iter()
            .all(|s| store.checkpoint(s.host()) == Some(s.checkpoint()))
    );
    // What lost hosts cost once: rebuilding their state from the copies.
    let t = Instant::now();
    let restored: Vec<HostState> = (0..hosts)
        .filter_map(|h| store.checkpoint(h))
        .map(|c| HostState::restore(&checks, &c))
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
        full_bytes as f64 / f64::from(1 << 20)
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
