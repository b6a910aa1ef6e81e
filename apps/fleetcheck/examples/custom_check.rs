//! A custom check, registered exactly like the built-in ones.
//!
//! Run: `cargo run -p fleetcheck --example custom_check`
//!
//! `SuddenDrop` flags a gauge that fell below `factor` times its previous
//! value. It is registered with `Checks::builtin().with(SuddenDrop { .. })`
//! and then runs on every host next to the built-in rules.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetcheck::checks::{Anomaly, Check, Checks, Observation, SeriesInfo};
use fleetcheck::fleet::{Fleet, FleetConfig, FleetServer, STEP_SECS};
use fleetcheck::report::{RenderCtx, render_table};
use fleetcheck::scan::{Clock, ScanConfig, ScrapeOptions, host_specs, scan_inprocess};

/// Flags a series whose value dropped below `factor` × its previous value.
struct SuddenDrop {
    metric: &'static str,
    factor: f64,
}

impl Check for SuddenDrop {
    fn name(&self) -> &str {
        "sudden_drop"
    }

    fn kind(&self) -> &str {
        "custom"
    }

    /// Called once per host and new series: bind to the metric.
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        s.name == self.metric
    }

    /// Called for every watched series present in a scrape.
    fn evaluate(&self, o: &Observation<'_>) -> Option<Anomaly> {
        let prev = o.prev?;
        (o.value < prev.value * self.factor).then(|| Anomaly {
            value: o.value,
            message: format!("dropped from {:.0} to {:.0}", prev.value, o.value),
        })
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // The injected disk-full anomaly makes node_filesystem_avail_bytes drop sharply.
        let checks = Checks::builtin().with(SuddenDrop {
            metric: "node_filesystem_avail_bytes",
            factor: 0.5,
        });
        let fleet = Arc::new(Fleet::new(FleetConfig {
            hosts: 50,
            series: 300,
            seed: 42,
            rounds: 6,
            bad: Vec::new(),
        }));
        let server = FleetServer::start(fleet, 0).await?;
        let urls = server.target_urls();
        let cfg = ScanConfig {
            targets: host_specs(&urls),
            rounds: 6,
            interval: Duration::ZERO,
            concurrency: 8,
            opts: ScrapeOptions {
                timeout_ms: 5_000,
                max_bytes: 4 << 20,
                round_query: true,
                clock: Clock::Logical { step: STEP_SECS },
            },
            clients: Vec::new(),
            discovery: None,
        };
        let start = std::time::Instant::now();
        let report = scan_inprocess(&cfg, Arc::new(checks), Arc::new(Mutex::new(()))).await;
        let ctx = RenderCtx {
            targets: &urls,
            labels: &[],
            elapsed_secs: start.elapsed().as_secs_f64(),
            verification: None,
            max_listed: 30,
        };
        println!("{}", render_table(&report, &ctx));
        let custom = report
            .findings
            .iter()
            .filter(|f| f.kind == "custom")
            .count();
        println!("custom check findings: {custom}");
        Ok(())
    })
}
