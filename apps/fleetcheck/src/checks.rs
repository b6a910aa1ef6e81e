//! The [`Check`] trait, the built-in check kinds and the [`Checks`] registry.
//!
//! A check is asked once per (host, new series) whether it [`watches`](Check::watches)
//! the series. For every watched series present in a scrape it gets an
//! [`Observation`] (value, previous value, bounded history, lookup of other
//! series of the same page). Host-level checks (stale, absent) implement
//! [`Check::end_round`]; fleet-level checks contribute per-host values with
//! [`Check::fleet_value`] and are evaluated on the merged fleet with
//! [`Check::evaluate_fleet`].
//!
//! Custom checks implement the same trait and are registered like the built-ins:
//! `Checks::builtin().with(MyCheck)`.

use std::fmt;

use crate::expfmt::{MetricType, RawLabels};
use crate::rules::{Rule, RuleKind, Rules};

/// A series as seen when a check decides whether it watches it.
#[derive(Debug, Clone, Copy)]
pub struct SeriesInfo<'a> {
    /// Sample name.
    pub name: &'a str,
    /// Labels (validated raw text).
    pub labels: RawLabels<'a>,
    /// `name{labels}` as on the page.
    pub key: &'a str,
    /// Family type.
    pub family_type: MetricType,
}

/// Bounded history of a series' past values (oldest first), excluding the
/// current observation.
#[derive(Debug, Clone, Default)]
pub struct History {
    buf: Vec<f64>,
    start: usize,
    len: usize,
}

impl History {
    /// Empty history holding at most `cap` values.
    pub fn with_capacity(cap: usize) -> Self {
        History {
            buf: vec![0.0; cap],
            start: 0,
            len: 0,
        }
    }

    /// Number of stored values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity (window).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Values, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        let cap = self.buf.len();
        (0..self.len).map(move |i| self.buf[(self.start + i) % cap])
    }

    /// Append a value, evicting the oldest when full.
    pub fn push(&mut self, v: f64) {
        let cap = self.buf.len();
        if cap == 0 {
            return;
        }
        if self.len < cap {
            self.buf[(self.start + self.len) % cap] = v;
            self.len += 1;
        } else {
            self.buf[self.start] = v;
            self.start = (self.start + 1) % cap;
        }
    }

    /// Mean and population standard deviation of the finite values.
    pub fn mean_std(&self) -> Option<(f64, f64)> {
        let (mut n, mut sum) = (0usize, 0.0);
        for v in self.iter().filter(|v| v.is_finite()) {
            n += 1;
            sum += v;
        }
        if n == 0 {
            return None;
        }
        let mean = sum / n as f64;
        let var = self
            .iter()
            .filter(|v| v.is_finite())
            .map(|v| (v - mean) * (v - mean))
            .sum::<f64>()
            / n as f64;
        Some((mean, var.sqrt()))
    }
}

/// Previous observation of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prev {
    /// Value.
    pub value: f64,
    /// Time in seconds.
    pub time: f64,
}

/// Lookup of other series' current values on the same page.
pub trait PageLookup {
    /// Current-scrape value of the series with exactly this `name{labels}` key.
    fn value_of(&self, key: &str) -> Option<f64>;
}

/// One observation of a watched series.
pub struct Observation<'a> {
    /// Host id.
    pub host: u32,
    /// Round.
    pub round: u64,
    /// `name{labels}` key.
    pub key: &'a str,
    /// Sample name.
    pub name: &'a str,
    /// Current value.
    pub value: f64,
    /// Time of the value in seconds (sample timestamp or scrape time).
    pub time: f64,
    /// Previous observation, if any.
    pub prev: Option<Prev>,
    /// Past values (bounded by [`Check::history_len`]).
    pub history: &'a History,
    /// Other series of this page.
    pub page: &'a dyn PageLookup,
}

impl Observation<'_> {
    /// The `{labels}` part of the key (empty when there are no labels).
    pub fn labels_part(&self) -> &str {
        self.key.get(self.name.len()..).unwrap_or("")
    }
}

/// A detected anomaly (the engine adds host, round, check and series).
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// The offending value.
    pub value: f64,
    /// Human-readable explanation.
    pub message: String,
}

/// A series bound to a check, as seen at the end of a round.
#[derive(Debug, Clone, Copy)]
pub struct SeriesView<'a> {
    /// `name{labels}` key.
    pub key: &'a str,
    /// Sample name.
    pub name: &'a str,
    /// Last value seen.
    pub value: f64,
    /// Round it was last seen (None: never).
    pub last_seen: Option<u64>,
}

/// What host-level checks see at the end of a host's round.
pub trait HostView {
    /// Host id.
    fn host(&self) -> u32;
    /// Current round.
    fn round(&self) -> u64;
    /// Round of the previous successful scrape of this host.
    fn prev_round(&self) -> Option<u64>;
    /// Series bound to the check being evaluated (seen now or earlier).
    fn watched(&self) -> Box<dyn Iterator<Item = SeriesView<'_>> + '_>;
    /// The watched series missing from this round's page (seen earlier or
    /// never). Usually few or none: cheaper than filtering
    /// [`HostView::watched`] when a check watches every series.
    fn unseen(&self) -> Box<dyn Iterator<Item = SeriesView<'_>> + '_> {
        let round = self.round();
        Box::new(self.watched().filter(move |s| s.last_seen != Some(round)))
    }
}

/// Fleet-wide statistics for one (check, series).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetStat {
    /// Number of hosts.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// Median absolute deviation.
    pub mad: f64,
}

/// Result of a fleet-level evaluation.
#[derive(Debug, Clone, Default)]
pub struct FleetEval {
    /// Statistics (if computed).
    pub stat: Option<FleetStat>,
    /// Outlying hosts.
    pub outliers: Vec<(u32, Anomaly)>,
}

/// A check. See the module docs.
pub trait Check: Send + Sync {
    /// Unique name (used in findings).
    fn name(&self) -> &str;
    /// Kind (e.g. `"threshold"`, or any string for custom checks).
    fn kind(&self) -> &str;
    /// Does this check evaluate the series? Called once per host and series.
    fn watches(&self, series: &SeriesInfo<'_>) -> bool;
    /// Number of past values kept per watched series (0: none).
    fn history_len(&self) -> usize {
        0
    }
    /// Whether evaluation uses a series' past values ([`Observation::prev`]).
    /// When false (and there is no history), the parent's copy of the host
    /// history does not follow the series' values round by round, only
    /// whether it was seen. Custom checks: true unless you override it.
    fn uses_prev(&self) -> bool {
        true
    }
    /// Whether the check judges single series ([`Check::evaluate`],
    /// [`Check::hold`], [`Check::fleet_value`]). A check that judges only
    /// the host as a whole in [`Check::end_round`] returns false, and the
    /// engine skips the per-series calls (for a check watching all 2,000
    /// series of a host, that is 6,000 calls per scrape).
    fn per_series(&self) -> bool {
        true
    }
    /// Evaluate one watched series present in this scrape.
    fn evaluate(&self, _obs: &Observation<'_>) -> Option<Anomaly> {
        None
    }
    /// Hysteresis: called for a watched series when [`Check::evaluate`]
    /// found nothing; `Some` means the value is inside the band where an
    /// alert that already fires keeps firing (it never starts one).
    fn hold(&self, _obs: &Observation<'_>) -> Option<Anomaly> {
        None
    }
    /// Host-level evaluation after the whole page; push `(series, anomaly)`.
    fn end_round(&self, _host: &dyn HostView, _out: &mut Vec<(String, Anomaly)>) {}
    /// Value this host contributes to a fleet-level evaluation.
    fn fleet_value(&self, _obs: &Observation<'_>) -> Option<f64> {
        None
    }
    /// Evaluate the fleet's values `(host, value)` of one series.
    fn evaluate_fleet(&self, _series: &str, _values: &[(u32, f64)]) -> FleetEval {
        FleetEval::default()
    }
}

/// The registry of checks run on every host.
#[derive(Default)]
pub struct Checks {
    list: Vec<Box<dyn Check>>,
}

impl fmt::Debug for Checks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|c| c.name()))
            .finish()
    }
}

impl Checks {
    /// No checks.
    pub fn new() -> Self {
        Checks::default()
    }

    /// The built-in default rules.
    pub fn builtin() -> Self {
        Checks::from_rules(&Rules::builtin())
    }

    /// Checks for the given rules.
    pub fn from_rules(rules: &Rules) -> Self {
        let mut c = Checks::new();
        for r in &rules.rules {
            c.list.push(rule_check(r));
        }
        c
    }

    /// Register another check (builder style).
    pub fn with(mut self, check: impl Check + 'static) -> Self {
        self.list.push(Box::new(check));
        self
    }

    /// Register a boxed check.
    pub fn push(&mut self, check: Box<dyn Check>) {
        self.list.push(check);
    }

    /// Number of checks.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Check by index.
    pub fn get(&self, i: usize) -> Option<&dyn Check> {
        self.list.get(i).map(|b| &**b)
    }

    /// All checks.
    pub fn iter(&self) -> impl Iterator<Item = &dyn Check> {
        self.list.iter().map(|b| &**b)
    }
}

/// Default relative floor of `zscore`'s standard deviation (fraction of
/// |mean|) and of `fleet_outlier`'s spread (fraction of |median|).
pub const DEFAULT_MIN_RATIO: f64 = 0.01;

/// The spread used when every other floor is 0 (a history or a fleet all
/// exactly at 0): any other value is an outlier, with a finite score.
pub const ZERO_SPREAD: f64 = 1e-9;

/// Build the check for one rule.
pub fn rule_check(r: &Rule) -> Box<dyn Check> {
    let m = Matcher {
        metric: r.metric.clone(),
        labels: r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let name = r.name.clone();
    match r.kind {
        RuleKind::Threshold => Box::new(ThresholdCheck {
            name,
            m,
            above: r.above,
            below: r.below,
            ratio_to: r.ratio_to.clone(),
            clear_below: r.clear_below,
            clear_above: r.clear_above,
        }),
        RuleKind::Rate => Box::new(RateCheck {
            name,
            m,
            above: r.above,
            below: r.below,
        }),
        RuleKind::Zscore => Box::new(ZscoreCheck {
            name,
            m,
            threshold: r.threshold.unwrap_or(4.0),
            window: r.window.unwrap_or(30),
            min_samples: r.min_samples.unwrap_or(5).max(1),
            min_stddev: r.min_stddev.unwrap_or(0.0),
            min_stddev_ratio: r.min_stddev_ratio.unwrap_or(DEFAULT_MIN_RATIO),
        }),
        RuleKind::Stale => Box::new(StaleCheck { name, m }),
        RuleKind::Absent => Box::new(AbsentCheck {
            name,
            metric: r.metric.clone().unwrap_or_default(),
            m,
        }),
        RuleKind::FleetOutlier => Box::new(FleetOutlierCheck {
            name,
            m,
            threshold: r.threshold.unwrap_or(5.0),
            min_hosts: r.min_hosts.unwrap_or(5),
            min_mad: r.min_mad.unwrap_or(0.0),
            min_mad_ratio: r.min_mad_ratio.unwrap_or(DEFAULT_MIN_RATIO),
        }),
    }
}

/// Metric name + exact label matchers.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// Metric name (None: any).
    pub metric: Option<String>,
    /// Exact label matchers.
    pub labels: Vec<(String, String)>,
}

impl Matcher {
    /// Does the series match?
    pub fn matches(&self, s: &SeriesInfo<'_>) -> bool {
        if let Some(m) = &self.metric
            && m != s.name
        {
            return false;
        }
        self.labels
            .iter()
            .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == v.as_str()))
    }
}

fn bounds(v: f64, above: Option<f64>, below: Option<f64>) -> Option<String> {
    if let Some(a) = above
        && v > a
    {
        return Some(format!("above {a}"));
    }
    if let Some(b) = below
        && v < b
    {
        return Some(format!("below {b}"));
    }
    None
}

/// Threshold on a value, or on the ratio of two series with the same labels.
#[derive(Debug, Clone)]
pub struct ThresholdCheck {
    /// Name.
    pub name: String,
    /// Watched series.
    pub m: Matcher,
    /// Upper bound.
    pub above: Option<f64>,
    /// Lower bound.
    pub below: Option<f64>,
    /// Denominator metric.
    pub ratio_to: Option<String>,
    /// Hysteresis with `above`: holds while the value is >= this.
    pub clear_below: Option<f64>,
    /// Hysteresis with `below`: holds while the value is <= this.
    pub clear_above: Option<f64>,
}

impl ThresholdCheck {
    /// The checked value (the ratio when `ratio_to` is set) and a note.
    fn value(&self, o: &Observation<'_>) -> Option<(f64, String)> {
        match &self.ratio_to {
            None => Some((o.value, String::new())),
            Some(den) => {
                let key = format!("{den}{}", o.labels_part());
                let d = o.page.value_of(&key)?;
                if d == 0.0 || !d.is_finite() {
                    return None;
                }
                Some((o.value / d, format!(" (ratio to {den})")))
            }
        }
    }
}

impl Check for ThresholdCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "threshold"
    }
    fn uses_prev(&self) -> bool {
        false
    }
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        self.m.matches(s)
    }
    fn evaluate(&self, o: &Observation<'_>) -> Option<Anomaly> {
        let (v, what) = self.value(o)?;
        let b = bounds(v, self.above, self.below)?;
        Some(Anomaly {
            value: v,
            message: format!("value {v:.4}{what} {b}"),
        })
    }
    fn hold(&self, o: &Observation<'_>) -> Option<Anomaly> {
        if self.clear_below.is_none() && self.clear_above.is_none() {
            return None;
        }
        let (v, what) = self.value(o)?;
        let up = matches!((self.clear_below, self.above), (Some(c), Some(_)) if v >= c);
        let down = matches!((self.clear_above, self.below), (Some(c), Some(_)) if v <= c);
        (up || down).then(|| Anomaly {
            value: v,
            message: format!("value {v:.4}{what} not yet cleared"),
        })
    }
}

/// Counter increase per second, handling counter resets.
#[derive(Debug, Clone)]
pub struct RateCheck {
    /// Name.
    pub name: String,
    /// Watched series.
    pub m: Matcher,
    /// Upper bound (per second).
    pub above: Option<f64>,
    /// Lower bound (per second).
    pub below: Option<f64>,
}

/// Per-second increase of a counter between two observations; a decrease is
/// a reset (the counter restarted from 0). None when time did not advance.
pub fn counter_rate(prev: Prev, value: f64, time: f64) -> Option<f64> {
    let dt = time - prev.time;
    if dt <= 0.0 || !value.is_finite() || !prev.value.is_finite() {
        return None;
    }
    let inc = if value >= prev.value {
        value - prev.value
    } else {
        value
    };
    Some(inc / dt)
}

impl Check for RateCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "rate"
    }
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        self.m.matches(s)
    }
    fn evaluate(&self, o: &Observation<'_>) -> Option<Anomaly> {
        let rate = counter_rate(o.prev?, o.value, o.time)?;
        let b = bounds(rate, self.above, self.below)?;
        Some(Anomaly {
            value: rate,
            message: format!("rate {rate:.4}/s {b}"),
        })
    }
}

/// Z-score of the value against the series' own recent history.
#[derive(Debug, Clone)]
pub struct ZscoreCheck {
    /// Name.
    pub name: String,
    /// Watched series.
    pub m: Matcher,
    /// |z| above which the value is anomalous.
    pub threshold: f64,
    /// History length.
    pub window: usize,
    /// Minimum history before evaluating.
    pub min_samples: usize,
    /// Floor of the standard deviation.
    pub min_stddev: f64,
    /// Floor of the standard deviation as a fraction of |mean|.
    pub min_stddev_ratio: f64,
}

impl Check for ZscoreCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "zscore"
    }
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        self.m.matches(s)
    }
    fn history_len(&self) -> usize {
        self.window
    }
    fn evaluate(&self, o: &Observation<'_>) -> Option<Anomaly> {
        if o.history.len() < self.min_samples || !o.value.is_finite() {
            return None;
        }
        let (mean, std) = o.history.mean_std()?;
        let sd = std
            .max(self.min_stddev)
            .max(self.min_stddev_ratio * mean.abs());
        let dev = (o.value - mean).abs();
        if dev == 0.0 {
            return None;
        }
        let z = dev / if sd > 0.0 { sd } else { ZERO_SPREAD };
        (z > self.threshold).then(|| Anomaly {
            value: o.value,
            message: format!(
                "z-score {z:.2} > {} (mean {mean:.4}, stddev {sd:.4})",
                self.threshold
            ),
        })
    }
}

/// A series present at the host's previous scrape is missing now.
#[derive(Debug, Clone)]
pub struct StaleCheck {
    /// Name.
    pub name: String,
    /// Watched series.
    pub m: Matcher,
}

impl Check for StaleCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "stale"
    }
    fn uses_prev(&self) -> bool {
        false
    }
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        self.m.matches(s)
    }
    fn per_series(&self) -> bool {
        false
    }
    fn end_round(&self, h: &dyn HostView, out: &mut Vec<(String, Anomaly)>) {
        let Some(prev) = h.prev_round() else { return };
        for s in h.unseen() {
            if s.last_seen == Some(prev) {
                out.push((
                    s.key.to_string(),
                    Anomaly {
                        value: s.value,
                        message: format!("series missing since round {}", h.round()),
                    },
                ));
            }
        }
    }
}

/// No series of the metric on the page.
#[derive(Debug, Clone)]
pub struct AbsentCheck {
    /// Name.
    pub name: String,
    /// Metric that must be present.
    pub metric: String,
    /// Watched series.
    pub m: Matcher,
}

impl Check for AbsentCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "absent"
    }
    fn uses_prev(&self) -> bool {
        false
    }
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        self.m.matches(s)
    }
    fn per_series(&self) -> bool {
        false
    }
    fn end_round(&self, h: &dyn HostView, out: &mut Vec<(String, Anomaly)>) {
        let round = h.round();
        if !h.watched().any(|s| s.last_seen == Some(round)) {
            out.push((
                self.metric.clone(),
                Anomaly {
                    value: 0.0,
                    message: format!("metric {} absent", self.metric),
                },
            ));
        }
    }
}

/// Host's value far from the fleet median, in units of 1.4826 × MAD.
#[derive(Debug, Clone)]
pub struct FleetOutlierCheck {
    /// Name.
    pub name: String,
    /// Watched series.
    pub m: Matcher,
    /// Robust z threshold.
    pub threshold: f64,
    /// Minimum hosts reporting the series.
    pub min_hosts: usize,
    /// Floor of the MAD.
    pub min_mad: f64,
    /// Floor of the spread as a fraction of |median|.
    pub min_mad_ratio: f64,
}

/// Median of a slice (sorts it); None if empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Median and median absolute deviation of the finite values.
pub fn median_mad(values: impl Iterator<Item = f64>) -> Option<FleetStat> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    let med = median(&mut v)?;
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    let mad = median(&mut dev)?;
    Some(FleetStat {
        n: v.len(),
        median: med,
        mad,
    })
}

impl Check for FleetOutlierCheck {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &str {
        "fleet_outlier"
    }
    fn uses_prev(&self) -> bool {
        false
    }
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        self.m.matches(s)
    }
    fn fleet_value(&self, o: &Observation<'_>) -> Option<f64> {
        o.value.is_finite().then_some(o.value)
    }
    fn evaluate_fleet(&self, _series: &str, values: &[(u32, f64)]) -> FleetEval {
        let Some(stat) = median_mad(values.iter().map(|v| v.1)) else {
            return FleetEval::default();
        };
        let mut ev = FleetEval {
            stat: Some(stat),
            outliers: Vec::new(),
        };
        if stat.n < self.min_hosts {
            return ev;
        }
        let scale = (1.4826 * stat.mad)
            .max(self.min_mad)
            .max(self.min_mad_ratio * stat.median.abs());
        let scale = if scale > 0.0 { scale } else { ZERO_SPREAD };
        for &(host, v) in values {
            if !v.is_finite() {
                continue;
            }
            let z = (v - stat.median).abs() / scale;
            if z > self.threshold {
                ev.outliers.push((
                    host,
                    Anomaly {
                        value: v,
                        message: format!(
                            "robust z {z:.2} > {} (fleet median {:.4}, MAD {:.4}, n {})",
                            self.threshold, stat.median, stat.mad, stat.n
                        ),
                    },
                ));
            }
        }
        ev
    }
}

#[cfg(test)]
mod tests;
