//! Rules file (TOML) and the built-in default rules.
//!
//! ```toml
//! # Each [[rule]] has a unique `name` and a `kind`.
//! [[rule]]
//! name = "disk_almost_full"
//! kind = "threshold"            # value (or ratio) above/below a bound
//! metric = "node_filesystem_avail_bytes"
//! ratio_to = "node_filesystem_size_bytes"   # optional: same labels, value = metric / ratio_to
//! below = 0.05                  # `above` and/or `below`
//! labels = { fstype = "ext4" }  # optional exact label matchers
//!
//! [[rule]]
//! name = "nic_errors"
//! kind = "rate"                 # counter increase per second (resets handled)
//! metric = "node_network_receive_errs_total"
//! above = 5.0
//!
//! [[rule]]
//! name = "dirty_spike"
//! kind = "zscore"               # |x - mean(history)| / max(stddev, min_stddev)
//! metric = "node_memory_Dirty_bytes"
//! threshold = 6.0
//! window = 30                   # history length (bounded)
//! min_samples = 3
//! min_stddev = 1e6
//!
//! [[rule]]
//! name = "series_vanished"
//! kind = "stale"                # series present at the previous scrape, missing now
//! metric = "node_systemd_unit_state"   # optional; all series when omitted
//!
//! [[rule]]
//! name = "exporter_missing"
//! kind = "absent"               # no series of `metric` on the page
//! metric = "node_exporter_build_info"
//!
//! [[rule]]
//! name = "load_outlier"
//! kind = "fleet_outlier"        # |x - fleet median| / (1.4826 * MAD) > threshold
//! metric = "node_load15"
//! threshold = 8.0
//! min_hosts = 5
//! min_mad = 0.1
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::dur::Dur;

/// Kind of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Value (or ratio) above/below bounds.
    Threshold,
    /// Counter increase per second above/below bounds.
    Rate,
    /// Z-score against the series' own recent history.
    Zscore,
    /// Series present at the previous scrape of the host and missing now.
    Stale,
    /// Metric without any series on the page.
    Absent,
    /// Host value far from the fleet median (median/MAD).
    FleetOutlier,
}

impl RuleKind {
    /// The snake_case name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Rate => "rate",
            Self::Zscore => "zscore",
            Self::Stale => "stale",
            Self::Absent => "absent",
            Self::FleetOutlier => "fleet_outlier",
        }
    }
}

/// One rule as written in the rules file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique name (used in findings).
    pub name: String,
    /// Kind of check.
    pub kind: RuleKind,
    /// Metric name the rule watches (optional for `stale`).
    #[serde(default)]
    pub metric: Option<String>,
    /// Exact label matchers.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Upper bound (threshold, rate); `fire_above` is the same field.
    #[serde(default, alias = "fire_above")]
    pub above: Option<f64>,
    /// Lower bound (threshold, rate); `fire_below` is the same field.
    #[serde(default, alias = "fire_below")]
    pub below: Option<f64>,
    /// Threshold: divide by this metric with the same labels.
    #[serde(default)]
    pub ratio_to: Option<String>,
    /// Z-score / fleet outlier threshold.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Z-score: history window.
    #[serde(default)]
    pub window: Option<usize>,
    /// Z-score: minimum history before evaluating.
    #[serde(default)]
    pub min_samples: Option<usize>,
    /// Z-score: floor for the standard deviation.
    #[serde(default)]
    pub min_stddev: Option<f64>,
    /// Fleet outlier: minimum number of hosts reporting the series.
    #[serde(default)]
    pub min_hosts: Option<usize>,
    /// Fleet outlier: floor for the MAD.
    #[serde(default)]
    pub min_mad: Option<f64>,
    /// Fleet outlier: floor for the spread as a fraction of |median|
    /// (default 0.01).
    #[serde(default)]
    pub min_mad_ratio: Option<f64>,
    /// Z-score: floor for the standard deviation as a fraction of |mean|
    /// (default 0.01).
    #[serde(default)]
    pub min_stddev_ratio: Option<f64>,
    /// Threshold with `above`: once firing, the alert holds while the value
    /// stays at or above this (hysteresis; must be < `above`).
    #[serde(default)]
    pub clear_below: Option<f64>,
    /// Threshold with `below`: once firing, the alert holds while the value
    /// stays at or below this (hysteresis; must be > `below`).
    #[serde(default)]
    pub clear_above: Option<f64>,
    /// Alerting: how long the condition must hold before the alert fires
    /// (pending until then). Default 0: fires at the first round.
    #[serde(default, rename = "for")]
    pub for_: Option<Dur>,
    /// Alerting: how long a firing alert stays firing after its condition
    /// cleared (a clear shorter than this does not resolve it).
    #[serde(default)]
    pub keep_firing_for: Option<Dur>,
    /// Alerting: labels added to the rule's alerts (e.g. `severity`).
    #[serde(default)]
    pub alert_labels: BTreeMap<String, String>,
    /// Alerting: annotations of the rule's alerts (e.g. `summary`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Rule {
    fn new(name: &str, kind: RuleKind, metric: Option<&str>) -> Self {
        Rule {
            name: name.into(),
            kind,
            metric: metric.map(Into::into),
            labels: BTreeMap::new(),
            above: None,
            below: None,
            ratio_to: None,
            threshold: None,
            window: None,
            min_samples: None,
            min_stddev: None,
            min_hosts: None,
            min_mad: None,
            min_mad_ratio: None,
            min_stddev_ratio: None,
            clear_below: None,
            clear_above: None,
            for_: None,
            keep_firing_for: None,
            alert_labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Check the fields required by the rule's kind.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("rule name must not be empty".into());
        }
        let need_metric = !matches!(self.kind, RuleKind::Stale);
        if need_metric && self.metric.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "rule {:?} ({}) needs `metric`",
                self.name,
                self.kind.as_str()
            ));
        }
        let allowed: &[&str] = match self.kind {
            RuleKind::Threshold => &[
                "above",
                "below",
                "ratio_to",
                "labels",
                "clear_below",
                "clear_above",
            ],
            RuleKind::Rate => &["above", "below", "labels"],
            RuleKind::Zscore => &[
                "threshold",
                "window",
                "min_samples",
                "min_stddev",
                "min_stddev_ratio",
                "labels",
            ],
            RuleKind::Stale => &["labels"],
            RuleKind::Absent => &[],
            RuleKind::FleetOutlier => &[
                "threshold",
                "min_hosts",
                "min_mad",
                "min_mad_ratio",
                "labels",
            ],
        };
        let set: [(&str, bool); 14] = [
            ("above", self.above.is_some()),
            ("below", self.below.is_some()),
            ("ratio_to", self.ratio_to.is_some()),
            ("threshold", self.threshold.is_some()),
            ("window", self.window.is_some()),
            ("min_samples", self.min_samples.is_some()),
            ("min_stddev", self.min_stddev.is_some()),
            ("min_hosts", self.min_hosts.is_some()),
            ("min_mad", self.min_mad.is_some()),
            ("labels", !self.labels.is_empty()),
            ("clear_below", self.clear_below.is_some()),
            ("clear_above", self.clear_above.is_some()),
            ("min_mad_ratio", self.min_mad_ratio.is_some()),
            ("min_stddev_ratio", self.min_stddev_ratio.is_some()),
        ];
        for (field, present) in set {
            if present && !allowed.contains(&field) {
                return Err(format!(
                    "rule {:?}: `{field}` is not valid for kind {}",
                    self.name,
                    self.kind.as_str()
                ));
            }
        }
        if matches!(self.kind, RuleKind::Threshold | RuleKind::Rate)
            && self.above.is_none()
            && self.below.is_none()
        {
            return Err(format!("rule {:?} needs `above` or `below`", self.name));
        }
        for (n, v) in [
            ("above", self.above),
            ("below", self.below),
            ("threshold", self.threshold),
        ] {
            if v.is_some_and(|v| v.is_nan()) {
                return Err(format!("rule {:?}: `{n}` must be a number", self.name));
            }
        }
        if let Some(c) = self.clear_below {
            match self.above {
                Some(a) if c < a => {}
                _ => {
                    return Err(format!(
                        "rule {:?}: `clear_below` needs `above` (or `fire_above`) greater than it",
                        self.name
                    ));
                }
            }
        }
        if let Some(c) = self.clear_above {
            match self.below {
                Some(b) if c > b => {}
                _ => {
                    return Err(format!(
                        "rule {:?}: `clear_above` needs `below` (or `fire_below`) less than it",
                        self.name
                    ));
                }
            }
        }
        for (n, v) in [
            ("min_mad", self.min_mad),
            ("min_mad_ratio", self.min_mad_ratio),
            ("min_stddev", self.min_stddev),
            ("min_stddev_ratio", self.min_stddev_ratio),
        ] {
            if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
                return Err(format!("rule {:?}: `{n}` must be a number >= 0", self.name));
            }
        }
        if self.threshold.is_some_and(|t| t <= 0.0) {
            return Err(format!("rule {:?}: `threshold` must be > 0", self.name));
        }
        if self.window == Some(0) {
            return Err(format!("rule {:?}: `window` must be > 0", self.name));
        }
        if self.window.is_some_and(|w| w > 10_000) {
            return Err(format!("rule {:?}: `window` must be <= 10000", self.name));
        }
        Ok(())
    }
}

/// A parsed, validated rules file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Rules {
    /// The rules in file order.
    #[serde(rename = "rule", default)]
    pub rules: Vec<Rule>,
}

/// A rules-file error with 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// Reason.
    pub reason: String,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rules line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for RulesError {}

impl RulesError {
    /// A TOML error of `src`, with its line.
    pub fn toml(src: &str, e: &toml::de::Error) -> Self {
        RulesError {
            line: e.span().map(|s| line_of(src, s.start)).unwrap_or(0),
            reason: e.message().trim().to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<Rule>>,
}

fn line_of(src: &str, offset: usize) -> usize {
    src.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Rules {
    /// Parse and validate a rules file.
    pub fn parse(src: &str) -> Result<Rules, RulesError> {
        let raw: RawFile = toml::from_str(src).map_err(|e| RulesError::toml(src, &e))?;
        Rules::from_spanned(src, raw.rule)
    }

    /// Validate rules read with their spans from `src` (a rules file, or
    /// the `[[rule]]` tables of a service config).
    pub fn from_spanned(src: &str, spanned: Vec<toml::Spanned<Rule>>) -> Result<Rules, RulesError> {
        let mut rules = Vec::with_capacity(spanned.len());
        let mut names = std::collections::HashSet::new();
        for sp in spanned {
            let line = line_of(src, sp.span().start);
            let r = sp.into_inner();
            r.validate().map_err(|reason| RulesError { line, reason })?;
            if !names.insert(r.name.clone()) {
                return Err(RulesError {
                    line,
                    reason: format!("duplicate rule name {:?}", r.name),
                });
            }
            rules.push(r);
        }
        Ok(Rules { rules })
    }

    /// Read and parse a rules file.
    pub fn load(path: &std::path::Path) -> Result<Rules, crate::Error> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::io(format!("reading rules {}", path.display()), e))?;
        Rules::parse(&src).map_err(|e| crate::Error::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The built-in default rules (the simulated fleet injects anomalies for each).
    pub fn builtin() -> Rules {
        let mut rules = Vec::new();
        let mut r = Rule::new(
            "disk_almost_full",
            RuleKind::Threshold,
            Some("node_filesystem_avail_bytes"),
        );
        r.ratio_to = Some("node_filesystem_size_bytes".into());
        r.below = Some(0.05);
        rules.push(r);
        let mut r = Rule::new(
            "overheating",
            RuleKind::Threshold,
            Some("node_hwmon_temp_celsius"),
        );
        r.above = Some(90.0);
        rules.push(r);
        let mut r = Rule::new(
            "nic_errors",
            RuleKind::Rate,
            Some("node_network_receive_errs_total"),
        );
        r.above = Some(5.0);
        rules.push(r);
        let mut r = Rule::new(
            "dirty_spike",
            RuleKind::Zscore,
            Some("node_memory_Dirty_bytes"),
        );
        r.threshold = Some(6.0);
        r.window = Some(30);
        r.min_samples = Some(3);
        r.min_stddev = Some(1e6);
        rules.push(r);
        rules.push(Rule::new(
            "unit_vanished",
            RuleKind::Stale,
            Some("node_systemd_unit_state"),
        ));
        rules.push(Rule::new(
            "exporter_missing",
            RuleKind::Absent,
            Some("node_exporter_build_info"),
        ));
        let mut r = Rule::new("load_outlier", RuleKind::FleetOutlier, Some("node_load15"));
        r.threshold = Some(8.0);
        r.min_hosts = Some(5);
        r.min_mad = Some(0.1);
        rules.push(r);
        Rules { rules }
    }

    /// The built-in rules as TOML text (what `--rules` accepts).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn builtin_roundtrips_and_validates() {
        let b = Rules::builtin();
        for r in &b.rules {
            r.validate().unwrap();
        }
        let text = b.to_toml();
        assert!(text.contains("[[rule]]"), "{text}");
        assert_eq!(Rules::parse(&text).unwrap(), b);
    }

    #[test]
    fn parses_doc_example() {
        let src = r#"
[[rule]]
name = "disk"
kind = "threshold"
metric = "node_filesystem_avail_bytes"
ratio_to = "node_filesystem_size_bytes"
below = 0.05
labels = { fstype = "ext4" }

[[rule]]
name = "nic"
kind = "rate"
metric = "errs_total"
above = 5.0

[[rule]]
name = "stale_all"
kind = "stale"
"#;
        let r = Rules::parse(src).unwrap();
        assert_eq!(r.rules.len(), 3);
        assert_eq!(
            r.rules[0].labels.get("fstype").map(String::as_str),
            Some("ext4")
        );
        assert_eq!(r.rules[2].metric, None);
    }

    #[test]
    fn alerting_fields_and_hysteresis_parse() {
        let src = r#"
[[rule]]
name = "hot"
kind = "threshold"
metric = "temp"
fire_above = 90.0
clear_below = 80.0
for = "5m"
keep_firing_for = "30s"
alert_labels = { severity = "page" }
annotations = { summary = "too hot" }
"#;
        let r = Rules::parse(src).unwrap();
        let h = &r.rules[0];
        assert_eq!(h.above, Some(90.0));
        assert_eq!(h.clear_below, Some(80.0));
        assert_eq!(h.for_, Some(Dur::from_secs(300.0)));
        assert_eq!(h.keep_firing_for, Some(Dur::from_secs(30.0)));
        assert_eq!(h.alert_labels["severity"], "page");
        assert_eq!(Rules::parse(&r.to_toml()).unwrap(), r);
        let bad = src.replace("clear_below = 80.0", "clear_below = 95.0");
        let e = Rules::parse(&bad).unwrap_err();
        assert!(e.reason.contains("clear_below"), "{e}");
        let bad = src.replace("\"5m\"", "\"5 parsecs\"");
        let e = Rules::parse(&bad).unwrap_err();
        assert!(e.reason.contains("5 parsecs"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let src = "[[rule]]\nname = \"a\"\nkind = \"threshold\"\nmetric = \"x\"\nabove = \n";
        let e = Rules::parse(src).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
    }

    #[test]
    fn unknown_kind_and_field_have_line() {
        let src = "[[rule]]\nname = \"a\"\nkind = \"bogus\"\nmetric = \"x\"\n";
        let e = Rules::parse(src).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("bogus"), "{e}");
        let src = "[[rule]]\nname = \"a\"\nkind = \"rate\"\nmetric = \"x\"\nabove = 1.0\nfoo = 2\n";
        let e = Rules::parse(src).unwrap_err();
        assert!(e.reason.contains("foo"), "{e}");
        assert!(e.line >= 1, "{e}");
    }

    #[test]
    fn semantic_errors_point_to_rule() {
        let src = "[[rule]]\nname = \"ok\"\nkind = \"absent\"\nmetric = \"m\"\n\n[[rule]]\nname = \"bad\"\nkind = \"threshold\"\nmetric = \"x\"\n";
        let e = Rules::parse(src).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.reason.contains("above"), "{e}");
        let src = "[[rule]]\nname = \"z\"\nkind = \"zscore\"\nmetric = \"m\"\nabove = 3.0\n";
        let e = Rules::parse(src).unwrap_err();
        assert!(e.reason.contains("not valid"), "{e}");
        let src = "[[rule]]\nname = \"a\"\nkind = \"absent\"\nmetric = \"m\"\n[[rule]]\nname = \"a\"\nkind = \"absent\"\nmetric = \"n\"\n";
        let e = Rules::parse(src).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.reason.contains("duplicate"), "{e}");
    }
}
