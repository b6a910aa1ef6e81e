//! Mergeable scan results ([`Report`]), fleet-level evaluation, output
//! (table / JSON) and precision/recall against ground truth.
//!
//! # JSON schema (`--format json`)
//!
//! ```text
//! {
//!   "summary": {
//!     "targets": u64,            // number of targets
//!     "rounds": u64,             // rounds completed
//!     "scrapes": u64,            // successful host scrapes
//!     "scrape_failures": u64,    // failed host scrapes
//!     "points": u64,             // samples parsed
//!     "bytes": u64,              // page bytes read
//!     "anomalies": u64,          // anomaly findings (excluding scrape problems)
//!     "elapsed_secs": f64,
//!     "points_per_sec": f64
//!   },
//!   "by_check": { "<check name>": u64, ... },        // findings per check (incl. scrape problems)
//!   "top_offenders": [ { "host": u32, "target": string, "findings": u64 }, ... ],  // at most 10
//!   "fleet_stats": [ { "check": string, "series": string, "n": usize, "median": f64, "mad": f64 } ],  // last round
//!   "findings": [ {
//!       "host": u32, "target": string, "round": u64,
//!       "labels": { "<name>": string, ... },   // the target's labels (file-based discovery)
//!       "check": string,          // rule name, or for scrape problems: unreachable|timeout|http_status|oversize|malformed|tls|bad_url|http
//!       "kind": string,           // threshold|rate|zscore|stale|absent|fleet_outlier|scrape|<custom>
//!       "series": string,         // name{labels}; metric name for absent; "" for scrape problems
//!       "value": f64 | null,      // null when not finite
//!       "message": string } ],
//!   "findings_dropped": u64,      // findings not kept (cap of MAX_FINDINGS)
//!   "verification": null | { "expected": u64, "found": u64, "true_positives": u64,
//!                            "precision": f64, "recall": f64,
//!                            "missed": [ExpectedFinding], "unexpected": [Finding] }   // built-in fleet only
//! }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checks::{Checks, FleetStat};
use crate::state::{Finding, FleetValue, HostRound, SCRAPE_KIND, StateUpdate};

/// Maximum number of findings kept in a report (counts stay exact).
pub const MAX_FINDINGS: usize = 200_000;

/// Fleet statistics of one (check, series) in the last round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetStatRow {
    /// Check name.
    pub check: String,
    /// Series key.
    pub series: String,
    /// Statistics.
    #[serde(flatten)]
    pub stat: FleetStat,
}

/// Mergeable aggregate of host rounds. `Report::default()` is the identity,
/// [`Report::add`] folds one [`HostRound`], [`Report::merge`] combines two
/// partials, [`Report::finish_round`] runs fleet-level checks on the pending
/// fleet values of a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Report {
    /// Rounds completed (finish_round calls).
    pub rounds: u64,
    /// Successful scrapes.
    pub scrapes: u64,
    /// Failed scrapes.
    pub scrape_failures: u64,
    /// Samples parsed.
    pub points: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Anomaly findings (excluding scrape problems).
    pub anomalies: u64,
    /// Findings per check name.
    pub by_check: BTreeMap<String, u64>,
    /// Findings per host.
    pub by_host: BTreeMap<u32, u64>,
    /// Findings (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
    /// Findings not kept.
    pub findings_dropped: u64,
    /// Fleet values waiting for [`Report::finish_round`].
    pub fleet_pending: Vec<FleetValue>,
    /// Fleet statistics of the last finished round.
    pub fleet_stats: Vec<FleetStatRow>,
    /// Series inside a hysteresis band (not anomalies; at most
    /// [`MAX_FINDINGS`]; the service reads them per round).
    #[serde(default)]
    pub holds: Vec<Finding>,
    /// Per host of the round: id, scrape seconds, failed (the service's
    /// per-target metrics; at most [`MAX_FINDINGS`]).
    #[serde(default)]
    pub hosts: Vec<HostStat>,
    /// Host state updates of the round (when the runner asked for them).
    #[serde(default)]
    pub updates: Vec<StateUpdate>,
    /// Hosts not scraped because their worker needs their checkpoint.
    #[serde(default)]
    pub need_state: Vec<u32>,
}

/// One host's scrape in a round, as the service's metrics need it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HostStat {
    /// Host id.
    pub host: u32,
    /// Seconds the scrape took.
    pub secs: f64,
    /// Failed scrape.
    pub failed: bool,
}

impl Report {
    /// Fold one host round.
    pub fn add(&mut self, mut hr: HostRound) {
        if hr.need_state {
            self.need_state.push(hr.host);
            return;
        }
        if hr.stale {
            return;
        }
        if let Some(u) = hr.state.take() {
            self.updates.push(u);
        }
        if hr.failed {
            self.scrape_failures += 1;
        } else {
            self.scrapes += 1;
        }
        self.points += hr.points;
        self.bytes += hr.bytes;
        if self.hosts.len() < MAX_FINDINGS {
            self.hosts.push(HostStat {
                host: hr.host,
                secs: hr.secs,
                failed: hr.failed,
            });
        }
        let room = MAX_FINDINGS.saturating_sub(self.holds.len());
        self.holds.extend(hr.holds.into_iter().take(room));
        for f in hr.findings {
            self.push_finding(f);
        }
        self.fleet_pending.extend(hr.fleet_values);
    }

    fn push_finding(&mut self, f: Finding) {
        if f.kind != SCRAPE_KIND {
            self.anomalies += 1;
        }
        *self.by_check.entry(f.check.clone()).or_default() += 1;
        *self.by_host.entry(f.host).or_default() += 1;
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        } else {
            self.findings_dropped += 1;
        }
    }

    /// Merge another partial into this one.
    pub fn merge(&mut self, o: Report) {
        self.rounds += o.rounds;
        self.scrapes += o.scrapes;
        self.scrape_failures += o.scrape_failures;
        self.points += o.points;
        self.bytes += o.bytes;
        self.anomalies += o.anomalies;
        for (k, v) in o.by_check {
            *self.by_check.entry(k).or_default() += v;
        }
        for (k, v) in o.by_host {
            *self.by_host.entry(k).or_default() += v;
        }
        let room = MAX_FINDINGS.saturating_sub(self.findings.len());
        let n = o.findings.len();
        self.findings.extend(o.findings.into_iter().take(room));
        self.findings_dropped += o.findings_dropped + n.saturating_sub(room) as u64;
        self.fleet_pending.extend(o.fleet_pending);
        let room = MAX_FINDINGS.saturating_sub(self.holds.len());
        self.holds.extend(o.holds.into_iter().take(room));
        let room = MAX_FINDINGS.saturating_sub(self.hosts.len());
        self.hosts.extend(o.hosts.into_iter().take(room));
        self.updates.extend(o.updates);
        self.need_state.extend(o.need_state);
        if !o.fleet_stats.is_empty() {
            self.fleet_stats = o.fleet_stats;
        }
    }

    /// Evaluate fleet-level checks for `round` on the pending fleet values
    /// (all hosts of the round must have been merged in), add their findings
    /// and record fleet statistics.
    pub fn finish_round(&mut self, checks: &Checks, round: u64) {
        let mut pending = std::mem::take(&mut self.fleet_pending);
        pending.sort_by(|a, b| (a.check, &a.series, a.host).cmp(&(b.check, &b.series, b.host)));
        let mut stats = Vec::new();
        let mut i = 0;
        let mut values = Vec::new();
        while i < pending.len() {
            let j = i + pending[i..]
                .iter()
                .position(|v| v.check != pending[i].check || v.series != pending[i].series)
                .unwrap_or(pending.len() - i);
            values.clear();
            values.extend(pending[i..j].iter().map(|v| (v.host, v.value)));
            if let Some(c) = checks.get(pending[i].check as usize) {
                let ev = c.evaluate_fleet(&pending[i].series, &values);
                if let Some(stat) = ev.stat {
                    stats.push(FleetStatRow {
                        check: c.name().to_string(),
                        series: pending[i].series.clone(),
                        stat,
                    });
                }
                for (host, a) in ev.outliers {
                    self.push_finding(Finding {
                        host,
                        round,
                        check: c.name().to_string(),
                        kind: c.kind().to_string(),
                        series: pending[i].series.clone(),
                        value: a.value,
                        message: a.message,
                    });
                }
            }
            i = j;
        }
        if !stats.is_empty() {
            self.fleet_stats = stats;
        }
        self.rounds += 1;
    }

    /// Hosts with the most findings, most first.
    pub fn top_offenders(&self, n: usize) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self.by_host.iter().map(|(h, c)| (*h, *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Exit status: 0 no findings, 1 findings (anomalies or scrape problems).
    pub fn exit_code(&self) -> i32 {
        if self.anomalies > 0 || self.scrape_failures > 0 {
            1
        } else {
            0
        }
    }
}

/// An expected finding (ground truth of the simulated fleet).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExpectedFinding {
    /// Host id.
    pub host: u32,
    /// Round.
    pub round: u64,
    /// Check (rule) name.
    pub check: String,
    /// Series key.
    pub series: String,
}

/// Precision/recall of anomaly findings against ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Expected findings.
    pub expected: u64,
    /// Anomaly findings found.
    pub found: u64,
    /// Found and expected.
    pub true_positives: u64,
    /// TP / found (1 when nothing found).
    pub precision: f64,
    /// TP / expected (1 when nothing expected).
    pub recall: f64,
    /// Expected but not found (at most 50).
    pub missed: Vec<ExpectedFinding>,
    /// Found but not expected (at most 50).
    pub unexpected: Vec<Finding>,
}

impl Verification {
    /// Does it meet the bar (recall 1.0, precision >= 0.99)?
    pub fn passed(&self) -> bool {
        self.recall >= 1.0 && self.precision >= 0.99
    }
}

/// Compare anomaly findings (scrape problems excluded) with ground truth.
pub fn verify(findings: &[Finding], truth: &[ExpectedFinding]) -> Verification {
    let truth_set: HashSet<&ExpectedFinding> = truth.iter().collect();
    let mut found_set = HashSet::new();
    let mut unexpected = Vec::new();
    let mut tp = 0u64;
    let mut found = 0u64;
    for f in findings.iter().filter(|f| f.kind != SCRAPE_KIND) {
        let e = ExpectedFinding {
            host: f.host,
            round: f.round,
            check: f.check.clone(),
            series: f.series.clone(),
        };
        if !found_set.insert(e.clone()) {
            continue;
        }
        found += 1;
        if truth_set.contains(&e) {
            tp += 1;
        } else if unexpected.len() < 50 {
            unexpected.push(f.clone());
        }
    }
    let missed: Vec<ExpectedFinding> = truth
        .iter()
        .filter(|e| !found_set.contains(*e))
        .take(50)
        .cloned()
        .collect();
    Verification {
        expected: truth.len() as u64,
        found,
        true_positives: tp,
        precision: if found == 0 {
            1.0
        } else {
            tp as f64 / found as f64
        },
        recall: if truth.is_empty() {
            1.0
        } else {
            tp as f64 / truth.len() as f64
        },
        missed,
        unexpected,
    }
}

/// Context for rendering.
#[derive(Debug, Clone, Default)]
pub struct RenderCtx<'a> {
    /// Target URL per host id.
    pub targets: &'a [String],
    /// Target labels per host id (file-based discovery; may be empty).
    pub labels: &'a [crate::discovery::Labels],
    /// Wall time of the scan.
    pub elapsed_secs: f64,
    /// Verification against ground truth (built-in fleet).
    pub verification: Option<&'a Verification>,
    /// Maximum findings listed in the table.
    pub max_listed: usize,
}

/// The host's target labels as `{a="1",b="2"}` ("" without labels).
fn labels_text(ctx: &RenderCtx<'_>, host: u32) -> String {
    match ctx.labels.get(host as usize).filter(|l| !l.is_empty()) {
        None => String::new(),
        Some(l) => {
            let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{{{}}}", inner.join(","))
        }
    }
}

fn target_of<'a>(ctx: &RenderCtx<'a>, host: u32) -> &'a str {
    ctx.targets
        .get(host as usize)
        .map(String::as_str)
        .unwrap_or("?")
}

/// Render the human-readable report.
pub fn render_table(r: &Report, ctx: &RenderCtx<'_>) -> String {
    let mut s = String::new();
    let pps = if ctx.elapsed_secs > 0.0 {
        r.points as f64 / ctx.elapsed_secs
    } else {
        0.0
    };
    let _ = writeln!(s, "fleetcheck report");
    let _ = writeln!(s, "=================");
    let _ = writeln!(
        s,
        "targets {}  rounds {}  scrapes {}  failed {}  points {}  bytes {}",
        ctx.targets.len(),
        r.rounds,
        r.scrapes,
        r.scrape_failures,
        r.points,
        r.bytes
    );
    let _ = writeln!(
        s,
        "elapsed {:.2}s  throughput {:.0} points/s",
        ctx.elapsed_secs, pps
    );
    let _ = writeln!(
        s,
        "anomalies {}  scrape problems {}",
        r.anomalies, r.scrape_failures
    );
    if !r.by_check.is_empty() {
        let _ = writeln!(s, "\n{:<28} {:>10}", "check", "findings");
        for (c, n) in &r.by_check {
            let _ = writeln!(s, "{c:<28} {n:>10}");
        }
    }
    let top = r.top_offenders(10);
    if !top.is_empty() {
        let _ = writeln!(s, "\ntop offenders");
        for (h, n) in top {
            let _ = writeln!(s, "  {:>6}  {:<50} {n:>6}", h, target_of(ctx, h));
        }
    }
    if !r.fleet_stats.is_empty() {
        let _ = writeln!(s, "\nfleet statistics (last round)");
        for f in r.fleet_stats.iter().take(20) {
            let _ = writeln!(
                s,
                "  {:<20} {:<40} n {:>5}  median {:>12.4}  MAD {:>10.4}",
                f.check, f.series, f.stat.n, f.stat.median, f.stat.mad
            );
        }
    }
    if !r.findings.is_empty() {
        let _ = writeln!(s, "\nfindings (round, host, check, series, value, message)");
        let mut v: Vec<&Finding> = r.findings.iter().collect();
        v.sort_by(|a, b| {
            (a.round, a.host, &a.check, &a.series).cmp(&(b.round, b.host, &b.check, &b.series))
        });
        for f in v.iter().take(ctx.max_listed) {
            let _ = writeln!(
                s,
                "  r{:<4} {:<45} {:<18} {:<50} {:>14.4}  {}",
                f.round,
                format!("{}{}", target_of(ctx, f.host), labels_text(ctx, f.host)),
                f.check,
                f.series,
                f.value,
                f.message
            );
        }
        if v.len() > ctx.max_listed {
            let _ = writeln!(
                s,
                "  ... {} more (use --format json for all)",
                v.len() - ctx.max_listed
            );
        }
    }
    if let Some(vf) = ctx.verification {
        let _ = writeln!(
            s,
            "\nverification vs injected anomalies: expected {}  found {}  true positives {}  precision {:.4}  recall {:.4}  => {}",
            vf.expected,
            vf.found,
            vf.true_positives,
            vf.precision,
            vf.recall,
            if vf.passed() { "PASS" } else { "FAIL" }
        );
        for m in vf.missed.iter().take(10) {
            let _ = writeln!(
                s,
                "  missed: host {} round {} {} {}",
                m.host, m.round, m.check, m.series
            );
        }
        for u in vf.unexpected.iter().take(10) {
            let _ = writeln!(
                s,
                "  unexpected: host {} round {} {} {} ({})",
                u.host, u.round, u.check, u.series, u.message
            );
        }
    }
    s
}

fn num(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// Render the JSON report (schema in the module docs).
pub fn render_json(r: &Report, ctx: &RenderCtx<'_>) -> String {
    use serde_json::json;
    let pps = if ctx.elapsed_secs > 0.0 {
        r.points as f64 / ctx.elapsed_secs
    } else {
        0.0
    };
    let findings: Vec<serde_json::Value> = r
        .findings
        .iter()
        .map(|f| {
            json!({
                "host": f.host, "target": target_of(ctx, f.host),
                "labels": ctx.labels.get(f.host as usize).cloned().unwrap_or_default(),
                "round": f.round,
                "check": f.check, "kind": f.kind, "series": f.series,
                "value": num(f.value), "message": f.message,
            })
        })
        .collect();
    let top: Vec<serde_json::Value> = r
        .top_offenders(10)
        .into_iter()
        .map(|(h, n)| json!({"host": h, "target": target_of(ctx, h), "findings": n}))
        .collect();
    let stats: Vec<serde_json::Value> = r
        .fleet_stats
        .iter()
        .map(|f| json!({"check": f.check, "series": f.series, "n": f.stat.n, "median": num(f.stat.median), "mad": num(f.stat.mad)}))
        .collect();
    let v = json!({
        "summary": {
            "targets": ctx.targets.len(), "rounds": r.rounds, "scrapes": r.scrapes,
            "scrape_failures": r.scrape_failures, "points": r.points, "bytes": r.bytes,
            "anomalies": r.anomalies, "elapsed_secs": num(ctx.elapsed_secs), "points_per_sec": num(pps),
        },
        "by_check": r.by_check,
        "top_offenders": top,
        "fleet_stats": stats,
        "findings": findings,
        "findings_dropped": r.findings_dropped,
        "verification": ctx.verification.map(|v| json!({
            "expected": v.expected, "found": v.found, "true_positives": v.true_positives,
            "precision": num(v.precision), "recall": num(v.recall), "passed": v.passed(),
            "missed": v.missed,
            "unexpected": v.unexpected.iter().map(|f| json!({"host": f.host, "round": f.round, "check": f.check, "series": f.series, "message": f.message})).collect::<Vec<_>>(),
        })),
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::state::FleetValue;

    fn f(host: u32, check: &str) -> Finding {
        Finding {
            host,
            round: 0,
            check: check.into(),
            kind: "threshold".into(),
            series: "s".into(),
            value: 1.0,
            message: String::new(),
        }
    }

    #[test]
    fn merge_is_associative_on_counts() {
        let mut a = Report::default();
        a.add(HostRound {
            host: 1,
            points: 10,
            findings: vec![f(1, "x")],
            ..Default::default()
        });
        let mut b = Report::default();
        b.add(HostRound {
            host: 2,
            points: 5,
            findings: vec![f(2, "x"), f(2, "y")],
            ..Default::default()
        });
        b.add(HostRound::failed(3, 0, "timeout", "t".into()));
        let mut m = Report::default();
        m.merge(a.clone());
        m.merge(b.clone());
        assert_eq!(m.points, 15);
        assert_eq!(m.anomalies, 3);
        assert_eq!(m.scrape_failures, 1);
        assert_eq!(m.by_check["x"], 2);
        assert_eq!(m.top_offenders(1), vec![(2, 2)]);
        assert_eq!(m.exit_code(), 1);
        // serde roundtrip
        let j = serde_json::to_string(&m).unwrap();
        let back: Report = serde_json::from_str(&j).unwrap();
        assert_eq!(back, m);
        assert_eq!(Report::default().exit_code(), 0);
    }

    #[test]
    fn finish_round_flags_fleet_outlier() {
        let checks = Checks::builtin();
        let ci = checks
            .iter()
            .position(|c| c.kind() == "fleet_outlier")
            .unwrap() as u32;
        let mut r = Report::default();
        for h in 0..20u32 {
            let value = if h == 13 {
                40.0
            } else {
                1.0 + f64::from(h % 5) * 0.1
            };
            r.add(HostRound {
                host: h,
                fleet_values: vec![FleetValue {
                    check: ci,
                    series: "node_load15".into(),
                    host: h,
                    value,
                }],
                ..Default::default()
            });
        }
        r.finish_round(&checks, 4);
        assert_eq!(r.anomalies, 1);
        assert_eq!(r.findings[0].host, 13);
        assert_eq!(r.findings[0].round, 4);
        assert!(r.fleet_pending.is_empty());
        assert_eq!(r.fleet_stats.len(), 1);
        assert_eq!(r.rounds, 1);
        let t = render_table(
            &r,
            &RenderCtx {
                max_listed: 10,
                ..Default::default()
            },
        );
        assert!(t.contains("load_outlier"), "{t}");
        let j: serde_json::Value =
            serde_json::from_str(&render_json(&r, &RenderCtx::default())).unwrap();
        assert_eq!(j["summary"]["anomalies"], 1);
        assert_eq!(j["findings"][0]["kind"], "fleet_outlier");
    }

    #[test]
    fn verify_counts() {
        let truth = vec![ExpectedFinding {
            host: 1,
            round: 0,
            check: "x".into(),
            series: "s".into(),
        }];
        let v = verify(&[f(1, "x"), f(2, "x")], &truth);
        assert_eq!(v.true_positives, 1);
        assert_eq!(v.recall, 1.0);
        assert_eq!(v.precision, 0.5);
        assert!(!v.passed());
        let v = verify(&[], &truth);
        assert_eq!(v.recall, 0.0);
        assert_eq!(v.missed.len(), 1);
    }
}
