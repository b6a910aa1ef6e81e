#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

const STEP: f64 = 15.0;

fn ctx(now: f64, rules: &[(&str, RuleParams)], targets: &[&str]) -> RoundContext {
    RoundContext {
        now,
        rules: rules
            .iter()
            .map(|(n, p)| (n.to_string(), p.clone()))
            .collect(),
        groups: HashMap::new(),
        target_labels: targets
            .iter()
            .map(|t| (t.to_string(), BTreeMap::new()))
            .collect(),
        unknown: HashSet::new(),
    }
}

fn obs(rule: &str, inst: &str, level: Level, value: f64) -> Observed {
    Observed {
        key: AlertKey::new(rule, inst, "s"),
        level,
        value,
        message: format!("value {value}"),
    }
}

fn params(for_secs: f64, keep: f64) -> RuleParams {
    RuleParams {
        for_secs,
        keep_firing_for_secs: keep,
        labels: BTreeMap::from([("severity".to_string(), "page".to_string())]),
        annotations: BTreeMap::new(),
    }
}

/// Feeds one series through the engine: `Some(level)` per round, `None` clear.
fn run(
    engine: &mut AlertEngine,
    p: &RuleParams,
    seq: &[Option<Level>],
) -> Vec<(usize, Notification)> {
    run_watch(engine, p, seq).0
}

/// Like [`run`], and whether the alert was ever flapping.
fn run_watch(
    engine: &mut AlertEngine,
    p: &RuleParams,
    seq: &[Option<Level>],
) -> (Vec<(usize, Notification)>, bool) {
    let mut out = Vec::new();
    let mut flapping = false;
    for (i, l) in seq.iter().enumerate() {
        let c = ctx(i as f64 * STEP, &[("r", p.clone())], &["h"]);
        let o: Vec<Observed> = l.iter().map(|&l| obs("r", "h", l, i as f64)).collect();
        out.extend(engine.evaluate(&c, o).into_iter().map(|n| (i, n)));
        flapping |= engine.counts().flapping > 0;
    }
    (out, flapping)
}

fn no_groups() -> Policy {
    Policy {
        group_fraction: 0.0,
        ..Policy::default()
    }
}

#[test]
fn pending_then_firing_after_for_then_resolved_with_labels() {
    let mut e = AlertEngine::new(no_groups());
    let p = params(30.0, 0.0);
    let f = Some(Level::Fire);
    let n = run(&mut e, &p, &[f, f, f, f, None]);
    // Active at round 0 (t=0), fires at round 2 (t=30), resolves at round 4.
    assert_eq!(n.len(), 2, "{n:?}");
    assert_eq!(n[0].0, 2);
    assert_eq!(n[0].1.status, Status::Firing);
    assert_eq!(n[0].1.starts_at, 0.0);
    assert_eq!(n[0].1.labels["alertname"], "r");
    assert_eq!(n[0].1.labels["instance"], "h");
    assert_eq!(n[0].1.labels["series"], "s");
    assert_eq!(n[0].1.labels["severity"], "page");
    assert_eq!(n[1].0, 4);
    assert_eq!(n[1].1.status, Status::Resolved);
    assert_eq!(n[1].1.starts_at, 0.0);
    assert_eq!(n[1].1.ends_at, Some(4.0 * STEP));
    assert!(e.alerts().is_empty());
}

/// An `instance` label set on the target (or by the rule) is the alert's
/// `instance`, as in Prometheus; the target's URL is only the default.
#[test]
fn an_instance_label_of_the_target_or_rule_wins_over_the_url() {
    for (target, rule, want) in [
        (None, None, "h"),
        (Some("db-1"), None, "db-1"),
        (Some("db-1"), Some("db-primary"), "db-primary"),
    ] {
        let mut e = AlertEngine::new(no_groups());
        let mut p = params(0.0, 0.0);
        if let Some(r) = rule {
            p.labels.insert("instance".into(), r.into());
        }
        let mut c = ctx(0.0, &[("r", p.clone())], &["h"]);
        if let Some(t) = target {
            c.target_labels.insert(
                "h".into(),
                BTreeMap::from([("instance".to_string(), t.to_string())]),
            );
        }
        let n = e.evaluate(&c, vec![obs("r", "h", Level::Fire, 1.0)]);
        assert_eq!(n.len(), 1, "{n:?}");
        assert_eq!(
            n[0].labels["instance"], want,
            "target {target:?} rule {rule:?}"
        );
    }
}

#[test]
fn pending_that_clears_never_notifies() {
    let mut e = AlertEngine::new(no_groups());
    let f = Some(Level::Fire);
    let n = run(&mut e, &params(60.0, 0.0), &[f, f, None, f, f, None]);
    assert!(n.is_empty(), "{n:?}");
}

#[test]
fn no_duplicate_notifications_while_firing() {
    let mut e = AlertEngine::new(no_groups());
    let f = Some(Level::Fire);
    let n = run(&mut e, &params(0.0, 0.0), &[f; 50]);
    assert_eq!(n.len(), 1);
    assert_eq!(e.counts().firing, 1);
    assert_eq!(e.active().len(), 1, "re-sendable while firing");
}

#[test]
fn hysteresis_fires_at_91_holds_at_85_resolves_at_79() {
    // fire_above = 90, clear_below = 80: the check reports 91 as Fire,
    // 85 and 89 as Hold, 79 as nothing.
    let level = |v: f64| {
        if v > 90.0 {
            Some(Level::Fire)
        } else if v >= 80.0 {
            Some(Level::Hold)
        } else {
            None
        }
    };
    let values = [89.0, 91.0, 85.0, 79.0];
    let seq: Vec<_> = values.iter().map(|&v| level(v)).collect();
    let mut e = AlertEngine::new(no_groups());
    let n = run(&mut e, &params(0.0, 0.0), &seq);
    let at: Vec<(usize, Status)> = n.iter().map(|(i, n)| (*i, n.status)).collect();
    assert_eq!(at, vec![(1, Status::Firing), (3, Status::Resolved)]);
}

#[test]
fn flapping_every_round_gives_one_firing_and_one_resolved() {
    // The condition crosses its line every round for 20 rounds, then stays
    // clear. A clear shorter than one round does not resolve
    // (keep_firing_for = one interval); flapping keeps it firing through
    // the longer gaps until the series has been quiet for the window.
    let mut e = AlertEngine::new(no_groups());
    let seq: Vec<Option<Level>> = (0..80)
        .map(|i| (i < 20 && i % 2 == 0).then_some(Level::Fire))
        .collect();
    let (n, flapping_seen) = run_watch(&mut e, &params(0.0, STEP), &seq);
    let st: Vec<Status> = n.iter().map(|(_, n)| n.status).collect();
    assert_eq!(st, vec![Status::Firing, Status::Resolved], "{n:?}");
    assert!(flapping_seen);
    assert!(e.alerts().is_empty());
}

#[test]
fn flapping_two_on_two_off_is_two_pairs_not_five() {
    // Each two-round gap resolves the alert (keep_firing_for is one round)
    // until four changes within the window make it flapping: from then on
    // it stays firing until the series has been quiet for the window.
    let seq: Vec<Option<Level>> = (0..80)
        .map(|i| (i < 20 && i % 4 < 2).then_some(Level::Fire))
        .collect();
    let p = params(0.0, STEP);
    let mut with = AlertEngine::new(Policy {
        flap_limit: 4,
        ..no_groups()
    });
    let (n, flapping) = run_watch(&mut with, &p, &seq);
    let st: Vec<Status> = n.iter().map(|(_, n)| n.status).collect();
    use Status::{Firing, Resolved};
    assert_eq!(st, vec![Firing, Resolved, Firing, Resolved], "{n:?}");
    assert!(flapping);
    let mut without = AlertEngine::new(Policy {
        flap_limit: 0,
        ..no_groups()
    });
    let n = run(&mut without, &p, &seq);
    assert_eq!(n.len(), 10, "without flap detection: 5 pairs");
}

#[test]
fn group_alert_instead_of_many_target_alerts() {
    let targets: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    let trefs: Vec<&str> = targets.iter().map(String::as_str).collect();
    let mut e = AlertEngine::new(Policy::default()); // 30% of >= 10 targets
    let p = params(0.0, 0.0);
    // Round 0: 2 of 20 trip: two target alerts.
    let c = ctx(0.0, &[("r", p.clone())], &trefs);
    let n = e.evaluate(
        &c,
        vec![
            obs("r", "h0", Level::Fire, 1.0),
            obs("r", "h1", Level::Fire, 1.0),
        ],
    );
    assert_eq!(n.len(), 2);
    // Round 1: 8 of 20 (40%) trip: one group alert; the two firing target
    // alerts go on, no new target alert starts.
    let c = ctx(STEP, &[("r", p.clone())], &trefs);
    let o: Vec<Observed> = (0..8)
        .map(|i| obs("r", &format!("h{i}"), Level::Fire, 1.0))
        .collect();
    let n = e.evaluate(&c, o);
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0].labels["group"], "fleet");
    assert_eq!(n[0].key.instance, "group:fleet");
    assert!(!n[0].labels.contains_key("instance"));
    assert_eq!(e.counts().firing, 3);
    // Round 2: all clear: three resolved.
    let c = ctx(2.0 * STEP, &[("r", p)], &trefs);
    let n = e.evaluate(&c, Vec::new());
    assert_eq!(n.len(), 3);
    assert!(n.iter().all(|n| n.status == Status::Resolved));
}

#[test]
fn unknown_target_keeps_its_alert_and_removed_rule_resolves() {
    let mut e = AlertEngine::new(no_groups());
    let p = params(0.0, 0.0);
    let c = ctx(0.0, &[("r", p.clone())], &["h"]);
    assert_eq!(
        e.evaluate(&c, vec![obs("r", "h", Level::Fire, 1.0)]).len(),
        1
    );
    let mut c = ctx(STEP, &[("r", p)], &["h"]);
    c.unknown.insert("h".into());
    assert!(e.evaluate(&c, Vec::new()).is_empty());
    assert_eq!(e.counts().firing, 1);
    let c = ctx(2.0 * STEP, &[], &["h"]);
    let n = e.evaluate(&c, vec![obs("r", "h", Level::Fire, 1.0)]);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].status, Status::Resolved);
}

#[test]
fn a_target_that_is_down_fires_its_own_alert_and_keeps_the_others() {
    let mut e = AlertEngine::new(no_groups());
    let p = params(0.0, 0.0);
    let rules = [("r", p.clone()), ("target_down", p)];
    let c = ctx(0.0, &rules, &["h"]);
    assert_eq!(
        e.evaluate(&c, vec![obs("r", "h", Level::Fire, 1.0)]).len(),
        1
    );
    // Down: its `target_down` fires, `r` is kept.
    let mut c = ctx(STEP, &rules, &["h"]);
    c.unknown.insert("h".into());
    let down = Observed {
        key: AlertKey::new("target_down", "h", ""),
        level: Level::Fire,
        value: 0.0,
        message: "unreachable".into(),
    };
    let n = e.evaluate(&c, vec![down]);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].labels["alertname"], "target_down");
    assert_eq!(e.counts().firing, 2);
    // Back, without the condition of `r`: both resolve.
    let c = ctx(2.0 * STEP, &rules, &["h"]);
    let n = e.evaluate(&c, Vec::new());
    assert_eq!(n.iter().filter(|n| n.status == Status::Resolved).count(), 2);
}

#[test]
fn snapshot_restores_firing_alerts_with_their_starts_at() {
    let mut e = AlertEngine::new(no_groups());
    let f = Some(Level::Fire);
    let p = params(30.0, 0.0);
    run(&mut e, &p, &[f, f, f]);
    let json = serde_json::to_string(&e.snapshot()).unwrap();
    let mut back = AlertEngine::restore(no_groups(), serde_json::from_str(&json).unwrap());
    assert_eq!(back.alerts(), e.alerts());
    // Still firing after the restart: no new notification, same startsAt.
    let c = ctx(3.0 * STEP, &[("r", p)], &["h"]);
    assert!(
        back.evaluate(&c, vec![obs("r", "h", Level::Fire, 1.0)])
            .is_empty()
    );
    assert_eq!(back.active()[0].starts_at, 0.0);
}

/// The reference model of one alert without flapping or groups.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    Inactive,
    Pending(f64),
    Firing { start: f64, clear: Option<f64> },
}

fn model_step(m: Model, l: Option<Level>, t: f64, p: &RuleParams) -> (Model, Option<Status>) {
    match (m, l) {
        (Model::Inactive, Some(Level::Fire)) if p.for_secs <= 0.0 => (
            Model::Firing {
                start: t,
                clear: None,
            },
            Some(Status::Firing),
        ),
        (Model::Inactive, Some(Level::Fire)) => (Model::Pending(t), None),
        (Model::Inactive, _) => (Model::Inactive, None),
        (Model::Pending(s), Some(_)) if t - s >= p.for_secs => (
            Model::Firing {
                start: s,
                clear: None,
            },
            Some(Status::Firing),
        ),
        (Model::Pending(s), Some(_)) => (Model::Pending(s), None),
        (Model::Pending(_), None) => (Model::Inactive, None),
        (Model::Firing { start, .. }, Some(_)) => (Model::Firing { start, clear: None }, None),
        (Model::Firing { start, clear }, None) => {
            let c = clear.unwrap_or(t);
            if t - c >= p.keep_firing_for_secs {
                (Model::Inactive, Some(Status::Resolved))
            } else {
                (
                    Model::Firing {
                        start,
                        clear: Some(c),
                    },
                    None,
                )
            }
        }
    }
}

fn level() -> impl Strategy<Value = Option<Level>> {
    prop_oneof![Just(None), Just(Some(Level::Fire)), Just(Some(Level::Hold)),]
}

proptest! {
    #[test]
    fn engine_matches_model(
        seq in proptest::collection::vec(level(), 1..80),
        for_rounds in 0u32..4,
        keep_rounds in 0u32..3,
    ) {
        let p = params(f64::from(for_rounds) * STEP, f64::from(keep_rounds) * STEP);
        let mut e = AlertEngine::new(Policy { flap_limit: 0, ..no_groups() });
        let mut m = Model::Inactive;
        for (i, l) in seq.iter().enumerate() {
            let t = i as f64 * STEP;
            let c = ctx(t, &[("r", p.clone())], &["h"]);
            let o: Vec<Observed> = l.iter().map(|&l| obs("r", "h", l, 1.0)).collect();
            let got = e.evaluate(&c, o);
            let (next, want) = model_step(m, *l, t, &p);
            m = next;
            prop_assert_eq!(got.iter().map(|n| n.status).collect::<Vec<_>>(), want.into_iter().collect::<Vec<_>>(), "round {}", i);
            if let (Some(n), Model::Firing { start, .. }) = (got.first(), m) {
                prop_assert_eq!(n.starts_at, start);
            }
            let firing = matches!(m, Model::Firing { .. });
            prop_assert_eq!(e.counts().firing, usize::from(firing));
            prop_assert_eq!(e.counts().pending, usize::from(matches!(m, Model::Pending(_))));
        }
    }

    #[test]
    fn notifications_alternate_per_key_with_flapping_and_unknowns(
        rounds in proptest::collection::vec(
            (proptest::collection::vec((0usize..4, level()), 0..6), proptest::collection::vec(0usize..4, 0..2)),
            1..60),
    ) {
        let p = params(0.0, STEP);
        let mut e = AlertEngine::new(Policy { flap_window_secs: 5.0 * STEP, flap_limit: 3, ..no_groups() });
        let targets = ["h0", "h1", "h2", "h3"];
        let mut last: HashMap<AlertKey, Status> = HashMap::new();
        for (i, (obsv, unknown)) in rounds.iter().enumerate() {
            let mut c = ctx(i as f64 * STEP, &[("r", p.clone())], &targets);
            c.unknown = unknown.iter().map(|&u| targets[u].to_string()).collect();
            let o: Vec<Observed> = obsv.iter().filter_map(|(h, l)| l.map(|l| obs("r", targets[*h], l, 1.0))).collect();
            let seen: HashSet<AlertKey> = o.iter().map(|o| o.key.clone()).collect();
            for n in e.evaluate(&c, o) {
                let prev = last.insert(n.key.clone(), n.status);
                match n.status {
                    Status::Firing => prop_assert_ne!(prev, Some(Status::Firing)),
                    Status::Resolved => prop_assert_eq!(prev, Some(Status::Firing)),
                }
                // An unknown target changes only through what was observed.
                prop_assert!(!c.unknown.contains(&n.key.instance) || seen.contains(&n.key));
            }
        }
    }
}
