//! The alert lifecycle: a pure state machine, one alert per (rule, target,
//! series). No clock and no I/O inside: each [`AlertEngine::evaluate`] is
//! given the time and what the round observed, and returns the
//! notifications to send.
//!
//! ```text
//!            condition             held for `for`
//! inactive ───────────► pending ──────────────────► firing ──┐
//!    ▲                     │ clears                  │  ▲    │ clears for
//!    └─────────────────────┘                         │  │    │ `keep_firing_for`
//!    ▲                                   cond. again │  └────┘ (flap window while flapping)
//!    └──────────────────── resolved ◄────────────────┘
//! ```
//!
//! * A notification is produced only on a change: entering firing, and
//!   resolving. Re-sending firing alerts to Alertmanager (which needs it to
//!   keep them alive) is the notifier's job ([`AlertEngine::active`]).
//! * Hysteresis: a series in a rule's band ([`Level::Hold`], see
//!   `clear_below`) keeps a pending or firing alert active but never starts
//!   one.
//! * Flapping: changes of the condition of a firing alert are counted in a
//!   sliding window; at [`Policy::flap_limit`] changes the alert is
//!   flapping, and a flapping alert resolves only once its condition has
//!   stayed clear for the whole window.
//! * Groups: when at least [`Policy::group_fraction`] of a group's targets
//!   (and at least [`Policy::group_min_targets`]) trip the same rule in one
//!   round, one group alert fires for the rule and the group, and no new
//!   per-target alert of that rule starts in the group while it lasts.
//! * A target whose scrape failed keeps its alerts as they are (unknown is
//!   not clear); what the round observed about it (that it is down) counts.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

/// Identity of an alert.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    /// Rule name (`alertname`).
    pub rule: String,
    /// Target (`instance`), or `group:NAME` for a group alert.
    pub instance: String,
    /// Series key `name{labels}` (empty for group and target alerts).
    pub series: String,
}

impl AlertKey {
    /// A key.
    pub fn new(rule: &str, instance: &str, series: &str) -> Self {
        AlertKey {
            rule: rule.into(),
            instance: instance.into(),
            series: series.into(),
        }
    }
}

/// Prefix of the `instance` of group alerts.
pub const GROUP_PREFIX: &str = "group:";

/// What a round observed for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// The condition holds (a finding).
    Fire,
    /// Inside the hysteresis band: keeps an active alert active.
    Hold,
}

/// One observation of a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Alert key.
    pub key: AlertKey,
    /// Level.
    pub level: Level,
    /// Value of the series.
    pub value: f64,
    /// Finding message.
    pub message: String,
}

/// Alerting parameters of a rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleParams {
    /// Seconds the condition must hold before firing.
    pub for_secs: f64,
    /// Seconds a firing alert stays firing after its condition cleared.
    pub keep_firing_for_secs: f64,
    /// Labels added to the alerts.
    pub labels: BTreeMap<String, String>,
    /// Annotations of the alerts.
    pub annotations: BTreeMap<String, String>,
}

/// Engine-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Seconds of the flap-detection window.
    pub flap_window_secs: f64,
    /// Condition changes within the window that make an alert flapping
    /// (0: never).
    pub flap_limit: usize,
    /// Fraction of a group's targets tripping a rule in one round that
    /// makes it a group alert (0: never).
    pub group_fraction: f64,
    /// Smallest group for group alerts.
    pub group_min_targets: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            flap_window_secs: 600.0,
            flap_limit: 6,
            group_fraction: 0.3,
            group_min_targets: 10,
        }
    }
}

/// The state of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Condition true, `for` not yet elapsed.
    Pending,
    /// Firing.
    Firing,
    /// Firing and flapping.
    Flapping,
}

impl State {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Flapping => "flapping",
        }
    }
}

/// An active alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// State.
    pub state: State,
    /// When the condition became true (Prometheus' `startsAt`).
    pub active_at: f64,
    /// When it started firing.
    pub fired_at: Option<f64>,
    /// Since when the condition has been clear while firing.
    pub clear_since: Option<f64>,
    /// Times of condition changes within the flap window.
    pub changes: VecDeque<f64>,
    /// The condition at the last evaluation.
    pub last_active: bool,
    /// Last value.
    pub value: f64,
    /// Last message.
    pub message: String,
    /// Labels (alertname, instance, series, rule labels, target labels).
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Whether a notification says firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The alert fires.
    Firing,
    /// The alert is over.
    Resolved,
}

/// A notification: an alert that started firing or resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Key.
    pub key: AlertKey,
    /// Firing or resolved.
    pub status: Status,
    /// Flapping at the time of the notification.
    pub flapping: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// `startsAt` (seconds since the epoch).
    pub starts_at: f64,
    /// `endsAt` of a resolved alert.
    pub ends_at: Option<f64>,
    /// Last value.
    pub value: f64,
}

/// What [`AlertEngine::evaluate`] needs besides the observations.
#[derive(Debug, Clone, Default)]
pub struct RoundContext {
    /// Seconds since the epoch.
    pub now: f64,
    /// Rules currently loaded, by name (alerts of other rules resolve).
    pub rules: HashMap<String, RuleParams>,
    /// Group of each target (targets absent here are in group `fleet`).
    pub groups: HashMap<String, String>,
    /// Labels of each target.
    pub target_labels: HashMap<String, BTreeMap<String, String>>,
    /// Targets that could not be scraped this round: their alerts stay as
    /// they are.
    pub unknown: HashSet<String>,
}

/// Counts of active alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pending.
    pub pending: usize,
    /// Firing (flapping included).
    pub firing: usize,
    /// Flapping.
    pub flapping: usize,
}

/// Every active alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertEngine {
    alerts: BTreeMap<AlertKey, Alert>,
    /// Condition changes of recently resolved alerts, so that an alert that
    /// resolves and fires again within the flap window is seen flapping.
    recent: BTreeMap<AlertKey, VecDeque<f64>>,
    policy: Policy,
}

/// Serialized form of the engine (the state file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// Active alerts.
    pub alerts: Vec<(AlertKey, Alert)>,
    /// Condition changes of recently resolved alerts.
    #[serde(default)]
    pub recent: Vec<(AlertKey, VecDeque<f64>)>,
}

const DEFAULT_GROUP: &str = "fleet";

impl AlertEngine {
    /// An empty engine.
    pub fn new(policy: Policy) -> Self {
        AlertEngine {
            alerts: BTreeMap::new(),
            recent: BTreeMap::new(),
            policy,
        }
    }

    /// Replace the policy (reload).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The active alerts.
    pub fn alerts(&self) -> &BTreeMap<AlertKey, Alert> {
        &self.alerts
    }

    /// Counts by state.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for a in self.alerts.values() {
            match a.state {
                State::Pending => c.pending += 1,
                State::Firing => c.firing += 1,
                State::Flapping => {
                    c.firing += 1;
                    c.flapping += 1;
                }
            }
        }
        c
    }

    /// The alerts firing now, as notifications (for re-sending).
    pub fn active(&self) -> Vec<Notification> {
        self.alerts
            .iter()
            .filter(|(_, a)| a.state != State::Pending)
            .map(|(k, a)| notification(k, a, Status::Firing, None))
            .collect()
    }

    /// The engine's state, for the state file.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: 1,
            alerts: self
                .alerts
                .iter()
                .map(|(k, a)| (k.clone(), a.clone()))
                .collect(),
            recent: self
                .recent
                .iter()
                .map(|(k, c)| (k.clone(), c.clone()))
                .collect(),
        }
    }

    /// An engine with the alerts of `snap`.
    pub fn restore(policy: Policy, snap: Snapshot) -> Self {
        AlertEngine {
            alerts: snap.alerts.into_iter().collect(),
            recent: snap.recent.into_iter().collect(),
            policy,
        }
    }

    /// One evaluation at `ctx.now` with the round's observations; returns
    /// the notifications (alerts that started firing or resolved).
    pub fn evaluate(&mut self, ctx: &RoundContext, observed: Vec<Observed>) -> Vec<Notification> {
        let mut cond: HashMap<AlertKey, Observed> = HashMap::with_capacity(observed.len());
        for o in observed {
            match cond.get(&o.key) {
                Some(prev) if prev.level == Level::Fire => {}
                _ => {
                    cond.insert(o.key.clone(), o);
                }
            }
        }
        self.group(ctx, &mut cond);
        let horizon = ctx.now - self.policy.flap_window_secs;
        self.recent
            .retain(|_, c| c.back().is_some_and(|&t| t >= horizon));
        let mut keys: Vec<AlertKey> = self.alerts.keys().cloned().collect();
        keys.extend(
            cond.keys()
                .filter(|k| !self.alerts.contains_key(*k))
                .cloned(),
        );
        keys.sort();
        let mut out = Vec::new();
        for key in keys {
            let is_group = key.instance.starts_with(GROUP_PREFIX);
            // A target that could not be scraped: what was observed about
            // it (e.g. that it is down) counts; its other alerts stay as
            // they are.
            if !is_group && ctx.unknown.contains(&key.instance) && !cond.contains_key(&key) {
                continue;
            }
            let params = ctx.rules.get(&key.rule);
            let obs = if params.is_some() {
                cond.remove(&key)
            } else {
                None
            };
            let default = RuleParams::default();
            let params = params.unwrap_or(&default);
            if let Some(n) = self.step(ctx, &key, obs, params) {
                out.push(n);
            }
        }
        out
    }

    /// Group alerts: replace a group's per-target observations of a rule by
    /// one group observation when enough of the group trips it.
    fn group(&self, ctx: &RoundContext, cond: &mut HashMap<AlertKey, Observed>) {
        let p = &self.policy;
        if p.group_fraction <= 0.0 {
            return;
        }
        let group_of = |inst: &str| -> String {
            ctx.groups
                .get(inst)
                .cloned()
                .unwrap_or_else(|| DEFAULT_GROUP.to_string())
        };
        let mut size: HashMap<String, usize> = HashMap::new();
        for t in ctx.target_labels.keys() {
            *size.entry(group_of(t)).or_default() += 1;
        }
        // (rule, group) -> targets tripping it
        let mut hit: HashMap<(String, String), HashSet<String>> = HashMap::new();
        for o in cond.values() {
            if o.level == Level::Fire && !o.key.instance.starts_with(GROUP_PREFIX) {
                hit.entry((o.key.rule.clone(), group_of(&o.key.instance)))
                    .or_default()
                    .insert(o.key.instance.clone());
            }
        }
        let mut grouped = Vec::new();
        for ((rule, g), targets) in hit {
            let n = size.get(&g).copied().unwrap_or(0);
            if n >= p.group_min_targets.max(1)
                && targets.len() as f64 >= p.group_fraction * n as f64
            {
                grouped.push((rule, g, targets.len(), n));
            }
        }
        // A group alert that is active stays so while its rule holds on any
        // of the group (hysteresis: it does not flap at the fraction).
        for (k, _) in self.alerts.iter() {
            if let Some(g) = k.instance.strip_prefix(GROUP_PREFIX) {
                let any = cond
                    .values()
                    .any(|o| o.key.rule == k.rule && group_of(&o.key.instance) == g);
                if any && !grouped.iter().any(|(r, gg, _, _)| *r == k.rule && gg == g) {
                    let n = size.get(g).copied().unwrap_or(0);
                    grouped.push((k.rule.clone(), g.to_string(), 0, n));
                }
            }
        }
        for (rule, g, hits, n) in grouped {
            cond.retain(|k, _| {
                k.rule != rule
                    || k.instance.starts_with(GROUP_PREFIX)
                    || group_of(&k.instance) != g
                    || self.alerts.contains_key(k)
            });
            let key = AlertKey::new(&rule, &format!("{GROUP_PREFIX}{g}"), "");
            cond.insert(
                key.clone(),
                Observed {
                    key,
                    level: if hits > 0 { Level::Fire } else { Level::Hold },
                    value: hits as f64,
                    message: format!("{hits} of {n} targets of group {g} trip {rule}"),
                },
            );
        }
    }

    fn step(
        &mut self,
        ctx: &RoundContext,
        key: &AlertKey,
        obs: Option<Observed>,
        params: &RuleParams,
    ) -> Option<Notification> {
        let now = ctx.now;
        let Some(alert) = self.alerts.get_mut(key) else {
            let o = obs.filter(|o| o.level == Level::Fire)?;
            let mut changes = self.recent.remove(key).unwrap_or_default();
            changes.push_back(now);
            let mut a = Alert {
                state: State::Pending,
                active_at: now,
                fired_at: None,
                clear_since: None,
                changes,
                last_active: true,
                value: o.value,
                message: o.message,
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
            };
            describe(&mut a, key, params, ctx);
            let fire = params.for_secs <= 0.0;
            if fire {
                a.state = firing_state(&mut a.changes, now, &self.policy);
                a.fired_at = Some(now);
            }
            let n = fire.then(|| notification(key, &a, Status::Firing, None));
            self.alerts.insert(key.clone(), a);
            return n;
        };
        let active = obs.is_some();
        if let Some(o) = obs {
            alert.value = o.value;
            alert.message = o.message;
            describe(alert, key, params, ctx);
        }
        if alert.state == State::Pending {
            if !active {
                self.alerts.remove(key);
                return None;
            }
            if now - alert.active_at >= params.for_secs {
                alert.state = firing_state(&mut alert.changes, now, &self.policy);
                alert.fired_at = Some(now);
                return Some(notification(key, alert, Status::Firing, None));
            }
            return None;
        }
        if active != alert.last_active {
            alert.changes.push_back(now);
            alert.last_active = active;
        }
        alert.state = firing_state(&mut alert.changes, now, &self.policy);
        if active {
            alert.clear_since = None;
            return None;
        }
        let since = *alert.clear_since.get_or_insert(now);
        let hold = if alert.state == State::Flapping {
            params
                .keep_firing_for_secs
                .max(self.policy.flap_window_secs)
        } else {
            params.keep_firing_for_secs
        };
        if now - since >= hold {
            let a = self.alerts.remove(key)?;
            let n = notification(key, &a, Status::Resolved, Some(now));
            if self.policy.flap_limit > 0 {
                self.recent.insert(key.clone(), a.changes);
            }
            return Some(n);
        }
        None
    }
}

/// Drop the changes older than the flap window; firing or flapping.
fn firing_state(changes: &mut VecDeque<f64>, now: f64, policy: &Policy) -> State {
    while changes
        .front()
        .is_some_and(|&t| t < now - policy.flap_window_secs)
    {
        changes.pop_front();
    }
    if policy.flap_limit > 0 && changes.len() >= policy.flap_limit {
        State::Flapping
    } else {
        State::Firing
    }
}

/// Labels and annotations of an alert from its key, rule and target.
fn describe(a: &mut Alert, key: &AlertKey, params: &RuleParams, ctx: &RoundContext) {
    let mut labels = BTreeMap::new();
    if let Some(t) = ctx.target_labels.get(&key.instance) {
        labels.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    labels.extend(params.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert("alertname".into(), key.rule.clone());
    match key.instance.strip_prefix(GROUP_PREFIX) {
        Some(g) => {
            labels.insert("group".into(), g.to_string());
        }
        // As in Prometheus, an `instance` label the target (or the rule)
        // sets wins; the target's URL is the default.
        None => {
            labels
                .entry("instance".into())
                .or_insert_with(|| key.instance.clone());
        }
    }
    if !key.series.is_empty() {
        labels.insert("series".into(), key.series.clone());
    }
    let mut ann = params.annotations.clone();
    ann.entry("summary".into())
        .or_insert_with(|| a.message.clone());
    ann.insert("description".into(), a.message.clone());
    ann.insert("value".into(), format!("{}", a.value));
    a.labels = labels;
    a.annotations = ann;
}

fn notification(key: &AlertKey, a: &Alert, status: Status, ends_at: Option<f64>) -> Notification {
    Notification {
        key: key.clone(),
        status,
        flapping: a.state == State::Flapping,
        labels: a.labels.clone(),
        annotations: a.annotations.clone(),
        starts_at: a.active_at,
        ends_at,
        value: a.value,
    }
}

#[cfg(test)]
mod tests;
