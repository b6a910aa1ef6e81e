#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::report::Report;
use crate::state::{Finding, HostRound, HostState, scrape_round};

fn rules(src: &str) -> Checks {
    Checks::from_rules(&Rules::parse(src).unwrap())
}

fn run(checks: &Checks, st: &mut HostState, pages: &[String]) -> Vec<HostRound> {
    pages
        .iter()
        .enumerate()
        .map(|(r, p)| scrape_round(st, checks, p.as_bytes(), r as u64, r as f64 * 10.0))
        .collect()
}

fn found(rounds: &[HostRound]) -> Vec<(u64, String, String)> {
    rounds
        .iter()
        .flat_map(|r| {
            r.findings
                .iter()
                .map(|f| (f.round, f.check.clone(), f.series.clone()))
        })
        .collect()
}

#[test]
fn history_ring_is_bounded() {
    let mut h = History::with_capacity(3);
    assert!(h.is_empty());
    for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
        h.push(v);
    }
    assert_eq!(h.len(), 3);
    assert_eq!(h.iter().collect::<Vec<_>>(), vec![3.0, 4.0, 5.0]);
    let (m, s) = h.mean_std().unwrap();
    assert_eq!(m, 4.0);
    assert!((s - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
}

#[test]
fn threshold_plain_and_label_matcher() {
    let c = rules(
        "[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nmetric = \"temp\"\nabove = 90.0\nlabels = { sensor = \"a\" }\n\
         [[rule]]\nname = \"cold\"\nkind = \"threshold\"\nmetric = \"temp\"\nbelow = 0.0\n",
    );
    let mut st = HostState::new(0);
    let pages: Vec<String> = [(50, 95), (95, -1), (50, 50)]
        .iter()
        .map(|(a, b)| format!("temp{{sensor=\"a\"}} {a}\ntemp{{sensor=\"b\"}} {b}\n"))
        .collect();
    let f = found(&run(&c, &mut st, &pages));
    assert_eq!(
        f,
        vec![
            (1, "hot".into(), "temp{sensor=\"a\"}".into()),
            (1, "cold".into(), "temp{sensor=\"b\"}".into()),
        ]
    );
}

#[test]
fn threshold_ratio_of_two_series() {
    let c = rules(
        "[[rule]]\nname = \"disk\"\nkind = \"threshold\"\nmetric = \"avail\"\nratio_to = \"size\"\nbelow = 0.05\n",
    );
    let mut st = HostState::new(0);
    // denominator after the numerator on the page, two mountpoints, one missing denominator
    let pages = vec![
        "avail{m=\"/\"} 50\navail{m=\"/x\"} 1\nsize{m=\"/\"} 100\nsize{m=\"/x\"} 100\navail{m=\"/nodenom\"} 0\n".to_string(),
        "avail{m=\"/\"} 4\navail{m=\"/x\"} 10\nsize{m=\"/\"} 100\nsize{m=\"/x\"} 100\n".to_string(),
        "avail{m=\"/\"} 4\nsize{m=\"/\"} 0\n".to_string(),
    ];
    let r = run(&c, &mut st, &pages);
    assert_eq!(
        found(&r),
        vec![
            (0, "disk".into(), "avail{m=\"/x\"}".into()),
            (1, "disk".into(), "avail{m=\"/\"}".into())
        ]
    );
    assert!((r[1].findings[0].value - 0.04).abs() < 1e-12);
}

#[test]
fn counter_rate_handles_resets() {
    assert_eq!(
        counter_rate(
            Prev {
                value: 10.0,
                time: 0.0
            },
            30.0,
            10.0
        ),
        Some(2.0)
    );
    assert_eq!(
        counter_rate(
            Prev {
                value: 100.0,
                time: 0.0
            },
            5.0,
            10.0
        ),
        Some(0.5)
    );
    assert_eq!(
        counter_rate(
            Prev {
                value: 1.0,
                time: 10.0
            },
            5.0,
            10.0
        ),
        None
    );
    let c =
        rules("[[rule]]\nname = \"errs\"\nkind = \"rate\"\nmetric = \"errs_total\"\nabove = 5.0\n");
    let mut st = HostState::new(0);
    // rounds are 10 s apart: 0->10 (1/s), reset to 3 (0.3/s), 3->203 (20/s), 203->213 (1/s)
    let pages: Vec<String> = [0, 10, 3, 203, 213]
        .iter()
        .map(|v| format!("errs_total {v}\n"))
        .collect();
    let r = run(&c, &mut st, &pages);
    assert_eq!(found(&r), vec![(3, "errs".into(), "errs_total".into())]);
    assert_eq!(r[3].findings[0].value, 20.0);
}

#[test]
fn rate_uses_sample_timestamps() {
    let c = rules("[[rule]]\nname = \"errs\"\nkind = \"rate\"\nmetric = \"e\"\nabove = 5.0\n");
    let mut st = HostState::new(0);
    let pages = vec!["e 0 1000\n".to_string(), "e 100 2000\n".to_string()];
    let r = run(&c, &mut st, &pages);
    assert_eq!(r[1].findings[0].value, 100.0); // 100 over 1 s, not 10 s
}

#[test]
fn zscore_spike_against_own_history() {
    let c = rules(
        "[[rule]]\nname = \"z\"\nkind = \"zscore\"\nmetric = \"g\"\nthreshold = 4.0\nwindow = 5\nmin_samples = 3\n",
    );
    let mut st = HostState::new(0);
    let vals = [10.0, 11.0, 9.0, 10.0, 50.0, 10.5, 9.5, 10.0, 11.0, 10.0];
    let pages: Vec<String> = vals.iter().map(|v| format!("g {v}\nother 1\n")).collect();
    let r = run(&c, &mut st, &pages);
    assert_eq!(found(&r), vec![(4, "z".into(), "g".into())]);
    // not enough history: a spike in round 1 is not judged
    let mut st = HostState::new(1);
    let pages: Vec<String> = [1.0, 100.0].iter().map(|v| format!("g {v}\n")).collect();
    assert!(found(&run(&c, &mut st, &pages)).is_empty());
    // min_stddev floors constant history
    let c2 = rules(
        "[[rule]]\nname = \"z\"\nkind = \"zscore\"\nmetric = \"g\"\nthreshold = 4.0\nmin_samples = 2\nmin_stddev = 1.0\n",
    );
    let mut st = HostState::new(2);
    let pages: Vec<String> = [5.0, 5.0, 5.0, 8.0, 20.0]
        .iter()
        .map(|v| format!("g {v}\n"))
        .collect();
    assert_eq!(
        found(&run(&c2, &mut st, &pages)),
        vec![(4, "z".into(), "g".into())]
    );
}

#[test]
fn stale_series_reported_once() {
    let c = rules("[[rule]]\nname = \"gone\"\nkind = \"stale\"\nmetric = \"unit\"\n");
    let mut st = HostState::new(0);
    let pages = vec![
        "unit{n=\"a\"} 1\nunit{n=\"b\"} 1\nx 1\n".to_string(),
        "unit{n=\"a\"} 1\nunit{n=\"b\"} 1\n".to_string(), // x vanishes: not watched
        "unit{n=\"a\"} 1\n".to_string(),                  // b vanishes
        "unit{n=\"a\"} 1\n".to_string(),                  // still gone: not again
        "unit{n=\"a\"} 1\nunit{n=\"b\"} 1\n".to_string(), // back
        "unit{n=\"b\"} 1\n".to_string(),                  // a vanishes
    ];
    let r = run(&c, &mut st, &pages);
    assert_eq!(
        found(&r),
        vec![
            (2, "gone".into(), "unit{n=\"b\"}".into()),
            (5, "gone".into(), "unit{n=\"a\"}".into())
        ]
    );
    // all series when no metric is given
    let c = rules("[[rule]]\nname = \"gone\"\nkind = \"stale\"\n");
    let mut st = HostState::new(0);
    let r = run(&c, &mut st, &pages[..2]);
    assert_eq!(found(&r), vec![(1, "gone".into(), "x".into())]);
}

#[test]
fn absent_metric() {
    let c = rules("[[rule]]\nname = \"missing\"\nkind = \"absent\"\nmetric = \"up\"\n");
    let mut st = HostState::new(0);
    let pages = vec![
        "other 1\n".to_string(),
        "up 1\n".to_string(),
        "other 2\n".to_string(),
    ];
    let r = run(&c, &mut st, &pages);
    assert_eq!(
        found(&r),
        vec![
            (0, "missing".into(), "up".into()),
            (2, "missing".into(), "up".into())
        ]
    );
}

#[test]
fn median_and_mad() {
    let s = median_mad([1.0, 2.0, 3.0, 4.0, 100.0].into_iter()).unwrap();
    assert_eq!(s.median, 3.0);
    assert_eq!(s.mad, 1.0);
    assert_eq!(s.n, 5);
    let s = median_mad([1.0, 2.0, f64::NAN, 3.0, 4.0].into_iter()).unwrap();
    assert_eq!(s.median, 2.5);
    assert!(median_mad(std::iter::empty()).is_none());
}

#[test]
fn fleet_outlier_on_merged_values() {
    let c = rules(
        "[[rule]]\nname = \"load\"\nkind = \"fleet_outlier\"\nmetric = \"load\"\nthreshold = 5.0\nmin_hosts = 5\n",
    );
    // Each "worker" folds its hosts; the parent merges and finishes the round.
    let mut parts = vec![Report::default(), Report::default()];
    for h in 0..10u32 {
        let v = if h == 7 {
            9.0
        } else {
            1.0 + f64::from(h) * 0.01
        };
        let mut st = HostState::new(h);
        let hr = scrape_round(&mut st, &c, format!("load {v}\nx 1\n").as_bytes(), 0, 0.0);
        assert_eq!(hr.fleet_values.len(), 1);
        assert!(hr.findings.is_empty());
        parts[(h % 2) as usize].add(hr);
    }
    let mut total = Report::default();
    for p in parts {
        total.merge(p);
    }
    total.finish_round(&c, 0);
    let f: Vec<(u32, &str)> = total
        .findings
        .iter()
        .map(|f| (f.host, f.series.as_str()))
        .collect();
    assert_eq!(f, vec![(7, "load")]);
    assert_eq!(total.fleet_stats[0].stat.n, 10);
    // too few hosts: nothing
    let mut r = Report::default();
    for h in 0..3u32 {
        let mut st = HostState::new(h);
        r.add(scrape_round(
            &mut st,
            &c,
            format!("load {}\n", h * 100).as_bytes(),
            0,
            0.0,
        ));
    }
    r.finish_round(&c, 0);
    assert_eq!(r.anomalies, 0);
}

/// A custom check registered next to the built-ins.
struct EvenValues;

impl Check for EvenValues {
    fn name(&self) -> &str {
        "even"
    }
    fn kind(&self) -> &str {
        "custom"
    }
    fn watches(&self, s: &SeriesInfo<'_>) -> bool {
        s.name.starts_with("cnt")
    }
    fn evaluate(&self, o: &Observation<'_>) -> Option<Anomaly> {
        (o.value % 2.0 == 0.0).then(|| Anomaly {
            value: o.value,
            message: "even".into(),
        })
    }
}

#[test]
fn custom_check_registered_like_builtins() {
    let c = Checks::builtin().with(EvenValues);
    assert_eq!(c.len(), Rules::builtin().rules.len() + 1);
    let mut st = HostState::new(0);
    let r = run(&c, &mut st, &["cnt 3\ncnt_b 4\nzzz 2\n".to_string()]);
    let f: Vec<_> = r[0]
        .findings
        .iter()
        .filter(|f| f.kind == "custom")
        .map(|f| f.series.clone())
        .collect();
    assert_eq!(f, vec!["cnt_b".to_string()]);
}

#[test]
fn zscore_relative_floor_ignores_noise_after_a_constant_history() {
    let c = rules(
        "[[rule]]\nname = \"z\"\nkind = \"zscore\"\nmetric = \"g\"\nthreshold = 4.0\nmin_samples = 3\n",
    );
    // Constant history, then a 0.5% change (noise: the 1% floor holds it),
    // then a doubling (fires).
    let mut st = HostState::new(0);
    let pages: Vec<String> = [1000.0, 1000.0, 1000.0, 1000.0, 1005.0, 2000.0]
        .iter()
        .map(|v| format!("g {v}\n"))
        .collect();
    assert_eq!(
        found(&run(&c, &mut st, &pages)),
        vec![(5, "z".into(), "g".into())]
    );
    // A history all at 0: any change is judged with a finite score.
    let mut st = HostState::new(1);
    let pages: Vec<String> = [0.0, 0.0, 0.0, 0.0, 1.0]
        .iter()
        .map(|v| format!("g {v}\n"))
        .collect();
    let r = run(&c, &mut st, &pages);
    assert_eq!(found(&r), vec![(4, "z".into(), "g".into())]);
    assert!(
        !r[4].findings[0].message.contains("inf"),
        "{:?}",
        r[4].findings
    );
}

#[test]
fn fleet_outlier_with_zero_mad_uses_the_relative_floor() {
    let c = rules("[[rule]]\nname = \"o\"\nkind = \"fleet_outlier\"\nmetric = \"mem\"\n");
    let check = c.get(0).unwrap();
    // Five real node_exporters: four equal, one 0.0015% off. MAD = 0.
    let base = 16_000_000_000.0;
    let vals: Vec<(u32, f64)> = (0..5)
        .map(|h| (h, if h == 3 { base * 1.000_015 } else { base }))
        .collect();
    let ev = check.evaluate_fleet("mem", &vals);
    assert_eq!(ev.stat.unwrap().mad, 0.0);
    assert!(ev.outliers.is_empty(), "{:?}", ev.outliers);
    // A real outlier still is one, with a finite score.
    let vals: Vec<(u32, f64)> = (0..5)
        .map(|h| (h, if h == 3 { base * 2.0 } else { base }))
        .collect();
    let ev = check.evaluate_fleet("mem", &vals);
    assert_eq!(ev.outliers.len(), 1);
    assert!(
        !ev.outliers[0].1.message.contains("inf"),
        "{:?}",
        ev.outliers
    );
    // All at 0 but one: finite too.
    let vals: Vec<(u32, f64)> = (0..6).map(|h| (h, f64::from(u8::from(h == 2)))).collect();
    let ev = check.evaluate_fleet("mem", &vals);
    assert_eq!(ev.outliers.len(), 1);
    assert!(
        ev.outliers[0].1.message.contains("robust z"),
        "{:?}",
        ev.outliers
    );
}

#[test]
fn hysteresis_rule_fires_at_91_holds_at_85_resolves_at_79() {
    use crate::alert::{AlertEngine, AlertKey, Level, Observed, Policy, RoundContext, Status};
    let c = rules(
        "[[rule]]\nname = \"hot\"\nkind = \"threshold\"\nmetric = \"t\"\nfire_above = 90.0\nclear_below = 80.0\n",
    );
    let mut st = HostState::new(0);
    let pages: Vec<String> = [89.0, 91.0, 85.0, 79.0]
        .iter()
        .map(|v| format!("t {v}\n"))
        .collect();
    let r = run(&c, &mut st, &pages);
    // Findings (what `scan` reports) only past the firing line; holds in the band.
    assert_eq!(found(&r), vec![(1, "hot".into(), "t".into())]);
    let holds: Vec<u64> = r
        .iter()
        .flat_map(|h| h.holds.iter().map(|f| f.round))
        .collect();
    assert_eq!(holds, vec![0, 2]);
    // Through the alert lifecycle: fires at 91, still firing at 85, resolved at 79.
    let mut e = AlertEngine::new(Policy::default());
    let mut ctx = RoundContext::default();
    ctx.rules.insert("hot".into(), Default::default());
    let mut got = Vec::new();
    for hr in &r {
        ctx.now = hr.round as f64 * 15.0;
        let obs = |f: &Finding, level| Observed {
            key: AlertKey::new(&f.check, "h", &f.series),
            level,
            value: f.value,
            message: f.message.clone(),
        };
        let o: Vec<Observed> = hr
            .findings
            .iter()
            .map(|f| obs(f, Level::Fire))
            .chain(hr.holds.iter().map(|f| obs(f, Level::Hold)))
            .collect();
        got.extend(
            e.evaluate(&ctx, o)
                .into_iter()
                .map(|n| (hr.round, n.status)),
        );
    }
    assert_eq!(got, vec![(1, Status::Firing), (3, Status::Resolved)]);
}
