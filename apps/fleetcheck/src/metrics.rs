//! The service's own metrics, rendered in the Prometheus text format for
//! its `/metrics` page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Upper bounds of the round duration histogram (seconds).
pub const ROUND_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Everything `/metrics` shows.
#[derive(Debug, Default, Clone)]
pub struct Values {
    /// Rounds completed.
    pub rounds: u64,
    /// Rounds that failed (the pool failed).
    pub rounds_failed: u64,
    /// Histogram counts per bucket of [`ROUND_BUCKETS`] (not cumulative).
    pub round_buckets: [u64; ROUND_BUCKETS.len()],
    /// Sum of round durations.
    pub round_sum: f64,
    /// Last scrape duration per target.
    pub scrape_secs: BTreeMap<String, f64>,
    /// Failed scrapes per target.
    pub scrape_failures: BTreeMap<String, u64>,
    /// Findings per rule.
    pub findings: BTreeMap<String, u64>,
    /// Alerts pending.
    pub alerts_pending: u64,
    /// Alerts firing (flapping included).
    pub alerts_firing: u64,
    /// Alerts flapping.
    pub alerts_flapping: u64,
    /// Notifications per status.
    pub notifications: BTreeMap<String, u64>,
    /// Live worker processes.
    pub pool_workers: u64,
    /// Workers started to replace others (deaths and recycling).
    pub worker_restarts: u64,
    /// Scrapes run again because a worker died under them.
    pub tasks_retried: u64,
    /// Scrape tasks that failed in the pool (worker died on every attempt,
    /// or the pool-side deadline passed).
    pub tasks_failed: u64,
    /// Pools built after the previous one failed.
    pub pool_rebuilds: u64,
    /// Points per second of the last round.
    pub points_per_second: f64,
    /// Points scraped.
    pub points: u64,
    /// Targets.
    pub targets: u64,
    /// Whether the last reload worked.
    pub reload_ok: bool,
    /// Time of the last successful (re)load.
    pub reload_time: f64,
    /// Sent batches per Alertmanager that failed.
    pub am_failures: BTreeMap<String, u64>,
    /// Alerts waiting per Alertmanager.
    pub am_queue: BTreeMap<String, u64>,
    /// Alerts dropped because a queue was full.
    pub am_dropped: u64,
    /// Host-state checkpoint bytes of the last round.
    pub checkpoint_bytes: u64,
    /// Hosts whose history was handed back to a worker.
    pub states_restored: u64,
}

/// Shared metrics: the service writes, the listener renders.
#[derive(Debug, Default)]
pub struct Metrics {
    values: Mutex<Values>,
    ready: AtomicBool,
}

/// Escape a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labelled<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    label: &str,
    m: &BTreeMap<String, V>,
) {
    for (k, v) in m {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {v}", esc(k));
    }
}

impl Metrics {
    /// New, not ready.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Change the values.
    pub fn update(&self, f: impl FnOnce(&mut Values)) {
        if let Ok(mut v) = self.values.lock() {
            f(&mut v);
        }
    }

    /// A copy of the values.
    pub fn values(&self) -> Values {
        self.values.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Record one round's duration.
    pub fn observe_round(&self, secs: f64) {
        self.update(|v| {
            v.rounds += 1;
            v.round_sum += secs;
            if let Some(i) = ROUND_BUCKETS.iter().position(|&b| secs <= b) {
                v.round_buckets[i] += 1;
            }
        });
    }

    /// Ready to serve (the first round is done).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether the first round is done.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The page.
    pub fn render(&self) -> String {
        let v = self.values();
        let mut o = String::with_capacity(4096 + 160 * v.scrape_secs.len());
        let u = |n: u64| n as f64;
        // (name, type, help, value) of the metrics without labels.
        let plain: [(&str, &str, &str, f64); 15] = [
            (
                "fleetcheck_rounds_total",
                "counter",
                "Rounds completed.",
                u(v.rounds),
            ),
            (
                "fleetcheck_rounds_failed_total",
                "counter",
                "Rounds lost because the worker pool failed (done again).",
                u(v.rounds_failed),
            ),
            (
                "fleetcheck_pool_workers",
                "gauge",
                "Live worker processes.",
                u(v.pool_workers),
            ),
            (
                "fleetcheck_worker_restarts_total",
                "counter",
                "Worker processes replaced.",
                u(v.worker_restarts),
            ),
            (
                "fleetcheck_pool_tasks_retried_total",
                "counter",
                "Scrape tasks run again because their worker died under them.",
                u(v.tasks_retried),
            ),
            (
                "fleetcheck_pool_tasks_failed_total",
                "counter",
                "Scrape tasks that failed in the pool (worker deaths past the attempts, pool-side deadline).",
                u(v.tasks_failed),
            ),
            (
                "fleetcheck_pool_rebuilds_total",
                "counter",
                "Worker pools built again after one failed.",
                u(v.pool_rebuilds),
            ),
            (
                "fleetcheck_points_per_second",
                "gauge",
                "Samples per second of the last round.",
                v.points_per_second,
            ),
            (
                "fleetcheck_points_total",
                "counter",
                "Samples scraped.",
                u(v.points),
            ),
            (
                "fleetcheck_targets",
                "gauge",
                "Targets scraped each round.",
                u(v.targets),
            ),
            (
                "fleetcheck_checkpoint_bytes",
                "gauge",
                "Bytes of host-state updates of the last round.",
                u(v.checkpoint_bytes),
            ),
            (
                "fleetcheck_host_states_restored_total",
                "counter",
                "Hosts whose history the parent handed back to a new worker.",
                u(v.states_restored),
            ),
            (
                "fleetcheck_config_last_reload_successful",
                "gauge",
                "Whether the last configuration (re)load worked.",
                f64::from(u8::from(v.reload_ok)),
            ),
            (
                "fleetcheck_config_last_reload_success_timestamp_seconds",
                "gauge",
                "Time of the last successful configuration (re)load.",
                v.reload_time,
            ),
            (
                "fleetcheck_alertmanager_dropped_total",
                "counter",
                "Alerts dropped because a queue was full.",
                u(v.am_dropped),
            ),
        ];
        for (name, kind, help, value) in plain {
            family(&mut o, name, kind, help);
            let _ = writeln!(o, "{name} {value}");
        }
        let name = "fleetcheck_round_duration_seconds";
        family(&mut o, name, "histogram", "Wall time of a round.");
        let mut cum = 0;
        for (b, n) in ROUND_BUCKETS.iter().zip(v.round_buckets) {
            cum += n;
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", v.rounds);
        let _ = writeln!(o, "{name}_sum {}", v.round_sum);
        let _ = writeln!(o, "{name}_count {}", v.rounds);
        // Both statuses from the start, at 0.
        let mut notifications = v.notifications.clone();
        for status in ["firing", "resolved"] {
            notifications.entry(status.to_string()).or_insert(0);
        }
        let alerts = BTreeMap::from([
            ("firing".to_string(), v.alerts_firing),
            ("flapping".to_string(), v.alerts_flapping),
            ("pending".to_string(), v.alerts_pending),
        ]);
        let f64s = [(
            "fleetcheck_scrape_duration_seconds",
            "gauge",
            "Duration of the last scrape of a target.",
            "instance",
            &v.scrape_secs,
        )];
        for (name, kind, help, label, m) in f64s {
            family(&mut o, name, kind, help);
            labelled(&mut o, name, label, m);
        }
        let u64s = [
            (
                "fleetcheck_scrape_failures_total",
                "counter",
                "Failed scrapes of a target.",
                "instance",
                &v.scrape_failures,
            ),
            (
                "fleetcheck_findings_total",
                "counter",
                "Findings by rule (scrape problems by their kind).",
                "rule",
                &v.findings,
            ),
            (
                "fleetcheck_alerts",
                "gauge",
                "Active alerts by state (firing includes flapping).",
                "state",
                &alerts,
            ),
            (
                "fleetcheck_notifications_total",
                "counter",
                "Alert notifications by status.",
                "status",
                &notifications,
            ),
            (
                "fleetcheck_alertmanager_send_failures_total",
                "counter",
                "Failed deliveries to an Alertmanager.",
                "alertmanager",
                &v.am_failures,
            ),
            (
                "fleetcheck_alertmanager_queue_length",
                "gauge",
                "Alerts waiting for an Alertmanager.",
                "alertmanager",
                &v.am_queue,
            ),
        ];
        for (name, kind, help, label, m) in u64s {
            family(&mut o, name, kind, help);
            labelled(&mut o, name, label, m);
        }
        o
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn page_parses_with_fleetchecks_own_parser() {
        let m = Metrics::new();
        m.observe_round(0.3);
        m.observe_round(7.0);
        m.update(|v| {
            v.scrape_secs
                .insert("http://a:1/metrics?x=\"q\"".into(), 0.01);
            v.scrape_failures.insert("http://b/metrics".into(), 2);
            v.findings.insert("overheating".into(), 3);
            v.reload_ok = true;
        });
        let page = m.render();
        let fams = crate::expfmt::parse_families(page.as_bytes()).unwrap();
        let names: Vec<&str> = fams.iter().map(|f| f.name.as_str()).collect();
        for n in [
            "fleetcheck_rounds_total",
            "fleetcheck_round_duration_seconds",
            "fleetcheck_scrape_duration_seconds",
            "fleetcheck_findings_total",
            "fleetcheck_alerts",
            "fleetcheck_pool_workers",
            "fleetcheck_worker_restarts_total",
            "fleetcheck_pool_tasks_retried_total",
            "fleetcheck_config_last_reload_successful",
        ] {
            assert!(names.contains(&n), "{n} missing: {names:?}");
        }
        assert!(
            page.contains("fleetcheck_round_duration_seconds_bucket{le=\"0.5\"} 1\n"),
            "{page}"
        );
        assert!(page.contains("fleetcheck_round_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(page.contains("instance=\"http://a:1/metrics?x=\\\"q\\\"\""));
    }
}
