#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

const NODE_PAGE: &str = r#"# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.3e-05
go_gc_duration_seconds{quantile="0.25"} 3.1e-05
go_gc_duration_seconds{quantile="0.5"} 4.2e-05
go_gc_duration_seconds{quantile="0.75"} 6.0e-05
go_gc_duration_seconds{quantile="1"} 0.000311
go_gc_duration_seconds_sum 0.123
go_gc_duration_seconds_count 1234
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 123456.78
node_cpu_seconds_total{cpu="0",mode="user"} 2345.5

# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.42
# A free-form comment
# HELP http_request_duration_seconds Latency with "quotes" and a \\ backslash\nsecond line.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{handler="/metrics",le="0.1"} 10
http_request_duration_seconds_bucket{handler="/metrics",le="0.5"} 15
http_request_duration_seconds_bucket{handler="/metrics",le="+Inf"} 17
http_request_duration_seconds_sum{handler="/metrics"} 2.5
http_request_duration_seconds_count{handler="/metrics"} 17
weird_untyped{path="C:\\dir",msg="say \"hi\"\nbye",} NaN 1700000000000
inf_gauge +Inf
neg_inf_gauge -Inf
spaced_metric { a = "1" , b="2" }   3.5   
"#;

fn samples(src: &str) -> Vec<Sample<'_>> {
    Parser::new(src.as_bytes())
        .filter_map(|r| match r.unwrap() {
            Item::Sample(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn err(src: &str) -> ParseError {
    Parser::new(src.as_bytes())
        .find_map(Result::err)
        .expect("expected an error")
}

#[test]
fn parses_realistic_page() {
    let s = samples(NODE_PAGE);
    assert_eq!(s.len(), 19);
    // summary
    assert_eq!(s[0].family_type, MetricType::Summary);
    assert_eq!(s[0].role, SampleRole::Quantile { q: 0.0 });
    assert_eq!(s[1].role, SampleRole::Quantile { q: 0.25 });
    assert_eq!(s[0].value, 2.3e-5);
    assert_eq!(s[5].role, SampleRole::Sum);
    assert_eq!(s[6].role, SampleRole::Count);
    assert_eq!(s[6].value, 1234.0);
    // counter
    assert_eq!(s[7].family_type, MetricType::Counter);
    assert_eq!(s[7].key, "node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"}");
    assert_eq!(s[7].labels.get("mode").as_deref(), Some("idle"));
    assert_eq!(s[7].line, 12);
    // gauge
    assert_eq!(s[9].name, "node_load1");
    assert_eq!(s[9].family_type, MetricType::Gauge);
    assert!(s[9].labels.is_empty());
    // histogram
    assert_eq!(s[10].role, SampleRole::Bucket { le: 0.1 });
    assert_eq!(s[12].role, SampleRole::Bucket { le: f64::INFINITY });
    assert_eq!(s[13].role, SampleRole::Sum);
    assert_eq!(s[14].role, SampleRole::Count);
    assert_eq!(s[14].family_type, MetricType::Histogram);
    // escapes, NaN, timestamp, trailing comma
    let w = &s[15];
    assert_eq!(w.family_type, MetricType::Untyped);
    assert!(w.value.is_nan());
    assert_eq!(w.timestamp_ms, Some(1_700_000_000_000));
    let labels: Vec<(String, String)> = w
        .labels
        .iter()
        .map(|(n, v)| (n.to_string(), v.into_owned()))
        .collect();
    assert_eq!(
        labels,
        vec![
            ("path".into(), "C:\\dir".into()),
            ("msg".into(), "say \"hi\"\nbye".into())
        ]
    );
    assert_eq!(s[16].value, f64::INFINITY);
    assert_eq!(s[17].value, f64::NEG_INFINITY);
    assert_eq!(s[18].value, 3.5);
    assert_eq!(s[18].labels.get("a").as_deref(), Some("1"));
    assert_eq!(s[18].labels.get("b").as_deref(), Some("2"));
}

#[test]
fn help_and_type_items() {
    let items: Vec<Item<'_>> = Parser::new(NODE_PAGE.as_bytes())
        .map(Result::unwrap)
        .collect();
    let help = items
        .iter()
        .find_map(|i| match i {
            Item::Help {
                name: "http_request_duration_seconds",
                text,
            } => Some(*text),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        unescape(help),
        "Latency with \"quotes\" and a \\ backslash\nsecond line."
    );
    assert!(items.contains(&Item::Type {
        name: "node_load1",
        kind: MetricType::Gauge
    }));
    assert!(items.contains(&Item::Comment(" A free-form comment")));
}

#[test]
fn families_collect_everything() {
    let f = parse_families(NODE_PAGE.as_bytes()).unwrap();
    let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "go_gc_duration_seconds",
            "node_cpu_seconds_total",
            "node_load1",
            "http_request_duration_seconds",
            "weird_untyped",
            "inf_gauge",
            "neg_inf_gauge",
            "spaced_metric"
        ]
    );
    assert_eq!(f[0].samples.len(), 7);
    assert_eq!(f[3].samples.len(), 5);
    assert_eq!(f[3].kind, MetricType::Histogram);
    assert_eq!(f[2].help.as_deref(), Some("1m load average."));
}

#[test]
fn crlf_blank_lines_and_leading_space() {
    let s = samples("\r\n# TYPE a counter\r\na 1\r\n\r\n   b{x=\"y\"} 2 -5\r\n");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].family_type, MetricType::Counter);
    assert_eq!(s[1].timestamp_ms, Some(-5));
    assert_eq!(s[1].line, 5);
    assert!(samples("").is_empty());
    assert!(samples("# only a comment").is_empty());
    // no trailing newline
    assert_eq!(samples("a 1").len(), 1);
    assert_eq!(samples("a{} 1")[0].key, "a{}");
}

#[test]
fn value_spellings() {
    for (txt, v) in [
        ("1", 1.0),
        ("-1.5", -1.5),
        ("1e3", 1000.0),
        ("1.5E-3", 0.0015),
        ("+Inf", f64::INFINITY),
        ("Inf", f64::INFINITY),
        ("-Inf", f64::NEG_INFINITY),
        (".5", 0.5),
    ] {
        let page = format!("m {txt}\n");
        assert_eq!(samples(&page)[0].value, v, "{txt}");
    }
    assert!(samples("m NaN\n")[0].value.is_nan());
}

#[test]
fn malformed_inputs_report_line_and_reason() {
    let cases: &[(&str, u32, &str)] = &[
        ("a 1\nb{x=\"1\" 2\n", 2, "expected ','"),
        ("a 1\n\nb{x=\"1\n", 3, "unterminated label value"),
        ("a{x=1} 2\n", 1, "expected '\"'"),
        ("a{x\"1\"} 2\n", 1, "expected '='"),
        ("a{1x=\"1\"} 2\n", 1, "invalid label name"),
        ("a{x=\"\\q\"} 2\n", 1, "invalid escape"),
        ("a{x=\"1\",x=\"2\"} 2\n", 1, "duplicate label"),
        ("a\n", 1, "missing value"),
        ("a{x=\"1\"}\n", 1, "missing value"),
        ("a abc\n", 1, "invalid value"),
        ("a 1 xyz\n", 1, "invalid timestamp"),
        ("a 1 12 13\n", 1, "unexpected text after timestamp"),
        ("1abc 2\n", 1, "expected metric name"),
        ("a{x=\"1\"}b 2\n", 1, "unexpected character"),
        ("# TYPE a bogus\n", 1, "unknown metric type"),
        ("# TYPE a counter\n# TYPE a counter\n", 2, "second TYPE"),
        ("# TYPE\n", 1, "without a metric name"),
        ("# HELP 9bad text\n", 1, "invalid metric name"),
        (
            "# TYPE h histogram\nh_bucket{x=\"1\"} 1\n",
            2,
            "without 'le'",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"abc\"} 1\n",
            2,
            "invalid le",
        ),
        ("# TYPE h histogram\nh 1\n", 2, "needs a _bucket"),
        ("# TYPE s summary\ns 1\n", 2, "without 'quantile'"),
        ("a{x=\"1\"", 1, "unterminated"),
        ("a{", 1, "unterminated"),
    ];
    for (src, line, reason) in cases {
        let e = err(src);
        assert_eq!(e.line, *line, "{src:?}: {e}");
        assert!(
            e.reason.contains(reason),
            "{src:?}: got {e}, want {reason:?}"
        );
        assert!(e.to_string().starts_with(&format!("line {line}: ")));
    }
}

#[test]
fn invalid_utf8_is_an_error_not_a_panic() {
    let bytes = b"a{x=\"\xff\xfe\"} 1\n";
    let r: Vec<_> = Parser::new(bytes).collect();
    assert!(matches!(r.last(), Some(Err(e)) if e.line == 1));
}

#[test]
fn parser_is_fused_after_error() {
    let mut p = Parser::new(b"a{ 1\nb 2\n");
    assert!(p.next().unwrap().is_err());
    assert!(p.next().is_none());
}

#[test]
fn random_garbage_never_panics() {
    // Simple deterministic fuzzing on top of proptest below.
    let alphabet = b"ab_:{}=\",\\n #\t\r\n01.eE+-InfNaTYPEHELP le quantile\xff";
    let mut x: u64 = 0x1234_5678;
    for _ in 0..20_000 {
        let len = (x % 64) as usize;
        let mut buf = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        for r in Parser::new(&buf) {
            if let Ok(Item::Sample(s)) = r {
                let _ = s.labels.iter().count();
            }
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            for r in Parser::new(&data) {
                if let Ok(Item::Sample(s)) = r {
                    let _ = s.labels.iter().count();
                }
            }
            let _ = parse_families(&data);
        }

        #[test]
        fn fast_decimal_matches_std(m in any::<i64>(), frac in 0usize..24, lead in 0usize..3) {
            let digits = m.unsigned_abs().to_string();
            let digits = format!("{}{digits}", "0".repeat(lead));
            let txt = if frac > 0 && frac < digits.len() {
                format!("{}{}.{}", if m < 0 { "-" } else { "" }, &digits[..digits.len() - frac], &digits[digits.len() - frac..])
            } else {
                format!("{}{digits}", if m < 0 { "-" } else { "" })
            };
            let want: f64 = txt.parse().unwrap();
            prop_assert_eq!(parse_float(&txt).map(f64::to_bits), Some(want.to_bits()), "{}", txt);
        }

        #[test]
        fn roundtrips_generated_samples(
            name in "[a-z_][a-z0-9_]{0,10}",
            lv in "[ -~]{0,12}",
            v in -1.0e12f64..1.0e12,
            ts in proptest::option::of(any::<i64>()),
        ) {
            let esc = lv.replace('\\', "\\\\").replace('"', "\\\"");
            let page = match ts {
                Some(t) => format!("{name}{{l=\"{esc}\"}} {v} {t}\n"),
                None => format!("{name}{{l=\"{esc}\"}} {v}\n"),
            };
            let s = samples(&page);
            prop_assert_eq!(s.len(), 1);
            prop_assert_eq!(s[0].name, name.as_str());
            prop_assert_eq!(s[0].value, v);
            prop_assert_eq!(s[0].timestamp_ms, ts);
            prop_assert_eq!(s[0].labels.get("l").map(|c| c.into_owned()), Some(lv));
        }
    }
}
