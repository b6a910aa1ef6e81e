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
        ("a{x=\"1\"}b 2\n", 1, "invalid value"),
        ("# TYPE a bogus\n", 1, "unknown metric type"),
        ("# TYPE a counter\n# TYPE a counter\n", 2, "second TYPE"),
        ("# HELP 9bad text\n", 1, "invalid metric name"),
        (
            "# TYPE h histogram\nh_bucket{le=\"abc\"} 1\n",
            2,
            "invalid le",
        ),
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

fn om_samples(src: &str) -> Vec<Sample<'_>> {
    Parser::with_format(src.as_bytes(), Format::OpenMetrics)
        .filter_map(|r| match r.unwrap() {
            Item::Sample(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn om_err(src: &str) -> ParseError {
    Parser::with_format(src.as_bytes(), Format::OpenMetrics)
        .find_map(Result::err)
        .expect("expected an error")
}

fn identity(s: &Sample<'_>) -> String {
    let mut buf = String::new();
    s.series_key(&mut buf).to_string()
}

// Item 1
#[test]
fn le_and_quantile_are_plain_labels_outside_buckets_and_quantiles() {
    let s = samples("rpc_latency_seconds{quantile=\"p99\"} 0.5\nb{le=\"big\"} 1\n");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].role, SampleRole::Plain);
    assert_eq!(s[0].labels.get("quantile").as_deref(), Some("p99"));
    let s = samples("# TYPE g gauge\ng{le=\"x\"} 1\n# TYPE h histogram\nh_sum{le=\"x\"} 1\n");
    assert_eq!(s.len(), 2);
    // still numbers where they mean something
    assert!(
        err("# TYPE s summary\ns{quantile=\"p99\"} 1\n")
            .reason
            .contains("invalid quantile")
    );
    assert!(
        err("# TYPE h histogram\nh_bucket{le=\"x\"} 1\n")
            .reason
            .contains("invalid le")
    );
}

// Item 2
#[test]
fn format_is_chosen_by_content_type() {
    let om = Format::from_content_type(Some(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    ));
    assert_eq!(om, Format::OpenMetrics);
    assert_eq!(
        Format::from_content_type(Some("text/plain; version=0.0.4")),
        Format::Text
    );
    assert_eq!(Format::from_content_type(None), Format::Text);
    assert!(ACCEPT.starts_with("application/openmetrics-text;version=1.0.0"));
    assert!(ACCEPT.contains("text/plain;version=0.0.4"));
}

#[test]
fn openmetrics_timestamps_are_float_seconds() {
    let s = om_samples("# TYPE a counter\na_total 1 1700000000.5\na_created 1.5e9\n# EOF\n");
    assert_eq!(s[0].timestamp_ms, Some(1_700_000_000_500));
    assert_eq!(s[0].family_type, MetricType::Counter);
    assert_eq!(s[1].role, SampleRole::Created);
    // the text format's timestamps stay integer milliseconds
    assert_eq!(
        samples("a 1 1700000000500\n")[0].timestamp_ms,
        Some(1_700_000_000_500)
    );
    assert!(
        err("a 1 1700000000.5\n")
            .reason
            .contains("invalid timestamp")
    );
}

#[test]
fn openmetrics_exemplars_are_accepted_where_allowed() {
    let page = "# TYPE a counter\na_total 5 # {trace_id=\"abc\"} 1.0\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2 123 # {} 0.5 1.5\nh_count 2\nh_sum 1\n# EOF\n";
    let s = om_samples(page);
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].value, 5.0);
    assert_eq!(s[1].role, SampleRole::Bucket { le: f64::INFINITY });
    assert_eq!(s[1].timestamp_ms, Some(123_000));
    let e = om_err("# TYPE g gauge\ng 1 # {a=\"b\"} 1\n# EOF\n");
    assert!(e.reason.contains("exemplar"), "{e}");
    let long = "x".repeat(130);
    let e = om_err(&format!(
        "# TYPE a counter\na_total 1 # {{t=\"{long}\"}} 1\n# EOF\n"
    ));
    assert!(e.reason.contains("limit 128"), "{e}");
    assert!(
        om_err("# TYPE a counter\na_total 1 # {}1\n# EOF\n")
            .reason
            .contains("exemplar")
    );
    // the text format has no exemplars
    assert!(err("a_total 5 # {trace_id=\"abc\"} 1.0\n").line == 1);
}

#[test]
fn openmetrics_types_info_stateset_gaugehistogram_unknown() {
    let page = "# TYPE i info\ni_info{version=\"1\"} 1\n\
                # TYPE s stateset\ns{s=\"a\"} 1\ns{s=\"b\"} 0\n\
                # TYPE g gaugehistogram\ng_bucket{le=\"1\"} 1\ng_gcount 1\ng_gsum 0.5\n\
                # TYPE u unknown\nu 3\n# EOF\n";
    let s = om_samples(page);
    let types: Vec<MetricType> = s.iter().map(|s| s.family_type).collect();
    use MetricType::*;
    assert_eq!(
        types,
        vec![
            Info,
            Stateset,
            Stateset,
            GaugeHistogram,
            GaugeHistogram,
            GaugeHistogram,
            Unknown
        ]
    );
    assert_eq!(s[4].role, SampleRole::Count);
    assert_eq!(s[5].role, SampleRole::Sum);
    // not types of the text format
    assert!(
        err("# TYPE i info\n")
            .reason
            .contains("unknown metric type")
    );
}

#[test]
fn openmetrics_requires_eof_last() {
    assert!(om_err("a 1\n").reason.contains("without '# EOF'"));
    let e = om_err("a 1\n# EOF\nb 2\n");
    assert_eq!(e.line, 3);
    assert!(e.reason.contains("after '# EOF'"));
    assert!(om_err("a 1\n# EOF\n\n").reason.contains("after '# EOF'"));
    assert_eq!(om_samples("a 1\n# EOF\n").len(), 1);
    assert_eq!(om_samples("a 1\n# EOF").len(), 1);
    assert!(om_err("a 1\n\n# EOF\n").reason.contains("blank line"));
    // `# EOF` is just a comment in the text format
    assert_eq!(samples("a 1\n# EOF\nb 2\n").len(), 2);
}

// Item 3
#[test]
fn duplicate_label_names_are_found_beyond_sixteen_labels() {
    let mut labels: Vec<String> = (0..20).map(|i| format!("l{i:02}=\"v\"")).collect();
    labels.push("l19=\"w\"".into());
    let page = format!("a{{{}}} 1\n", labels.join(","));
    assert!(err(&page).reason.contains("duplicate label \"l19\""));
    // unsorted sets too
    assert!(
        err("a{b=\"1\",a=\"2\",b=\"3\"} 1\n")
            .reason
            .contains("duplicate label")
    );
    let ok = format!(
        "a{{{}}} 1\n",
        (0..40)
            .map(|i| format!("l{i}=\"v\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(samples(&ok).len(), 1);
}

// Item 4
#[test]
fn series_identity_is_name_and_sorted_labels() {
    let s = samples(
        "a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\na{x=\"1\",y=\"2\",} 3\na {x=\"1\", y=\"2\"} 4\na{x=\"1\",y=\"2\",z=\"\"} 5\nb{} 6\n",
    );
    let ids: Vec<String> = s.iter().map(identity).collect();
    for id in &ids[..5] {
        assert_eq!(id, "a{x=\"1\",y=\"2\"}");
    }
    assert_eq!(ids[5], "b");
    assert!(s[0].canonical);
    assert!(!s[1].canonical && !s[2].canonical && !s[3].canonical);
    // escapes survive in identity
    let s = samples("a{y=\"q\\\"\\\\\\n\",x=\"1\"} 1\n");
    assert_eq!(identity(&s[0]), "a{x=\"1\",y=\"q\\\"\\\\\\n\"}");
}

// Item 5
#[test]
fn bare_help_and_type_lines_are_comments() {
    let items: Vec<Item<'_>> = Parser::new(b"# HELP\n# TYPE\n# HELP a\n# TYPE a\na 1\n")
        .map(Result::unwrap)
        .collect();
    assert_eq!(items.len(), 5);
    assert_eq!(items[2], Item::Comment(" HELP a"));
    assert_eq!(items[3], Item::Comment(" TYPE a"));
    assert!(matches!(items[4], Item::Sample(_)));
}

// Item 6
#[test]
fn non_utf8_in_a_comment_keeps_the_page() {
    let page = b"# caf\xe9\na 1\n";
    let items: Vec<Item<'_>> = Parser::new(page).map(Result::unwrap).collect();
    assert_eq!(items[0], Item::Comment(" caf"));
    assert!(matches!(items[1], Item::Sample(s) if s.value == 1.0));
    // HELP text must be UTF-8 (as Prometheus requires)
    let e = Parser::new(b"# HELP a caf\xe9\n")
        .find_map(Result::err)
        .unwrap();
    assert!(e.reason.contains("not valid UTF-8"));
}

// Item 7
#[test]
fn value_may_follow_closing_brace_without_blank() {
    let s = samples("a{x=\"1\"}-Inf\nb{x=\"1\"}2 1000\n");
    assert_eq!(s[0].value, f64::NEG_INFINITY);
    assert_eq!(s[1].value, 2.0);
    assert_eq!(s[1].timestamp_ms, Some(1000));
    // a name still needs a blank before its value
    assert!(err("a{x=\"1\"}b 2\n").reason.contains("invalid value"));
}

// Item 8
#[test]
fn bucket_without_le_and_summary_without_quantile_keep_the_page() {
    let s =
        samples("# TYPE h histogram\nh_bucket{x=\"1\"} 1\nh 2\n# TYPE s summary\ns 1\ns_sum 2\n");
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].role, SampleRole::Plain);
    assert_eq!(s[2].role, SampleRole::Plain);
    assert_eq!(s[3].role, SampleRole::Sum);
    // OpenMetrics requires them
    assert!(
        om_err("# TYPE h histogram\nh_bucket{x=\"1\"} 1\n# EOF\n")
            .reason
            .contains("without 'le'")
    );
}

#[test]
fn name_label_inside_braces_is_refused() {
    let e = err("a{__name__=\"b\"} 1\n");
    assert!(e.reason.contains("__name__"), "{e}");
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

        /// Whatever the spelling of a label set (order, blanks, trailing
        /// comma, escapes), its identity parses back as itself, canonical.
        #[test]
        fn series_identity_is_a_fixed_point(
            labels in proptest::collection::btree_map("[a-z_]{1,4}", "[a-z\\\\\" \n]{0,4}", 0..6),
            reverse in any::<bool>(),
            spaced in any::<bool>(),
            trailing in any::<bool>(),
        ) {
            let esc = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
            if reverse {
                pairs.reverse();
            }
            let sep = if spaced { " , " } else { "," };
            let mut set = pairs.join(sep);
            if trailing && !pairs.is_empty() {
                set.push(',');
            }
            let line = format!("m{{{set}}} 1\n");
            let s = samples(&line);
            let mut buf = String::new();
            let id = s[0].series_key(&mut buf).to_string();
            let again = format!("{id} 2\n");
            let s2 = samples(&again);
            prop_assert!(s2[0].canonical, "{} -> {}", line, id);
            prop_assert_eq!(s2[0].key, id.as_str());
            // same labels, empty values dropped
            let want: Vec<(String, String)> =
                labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            let got: Vec<(String, String)> =
                s2[0].labels.iter().map(|(n, v)| (n.to_string(), v.into_owned())).collect();
            prop_assert_eq!(got, want);
        }

        /// Both formats, identities and the scan path on page-like bytes
        /// (the fuzz target's work, in every test run).
        #[test]
        fn never_panics_on_page_like_bytes(
            lines in proptest::collection::vec(
                "(# (HELP|TYPE|EOF|UNIT) )?[a-z_]{1,4}(\\{([a-z_]{1,3}=\"[a-z\\\\\" ]{0,3}\",? ?){0,3}\\})? ?[-+0-9.eEInfNa]{0,5}( [0-9.]{0,4})?( # \\{\\} 1)?",
                0..12,
            ),
        ) {
            let page = lines.join("\n");
            let checks = crate::checks::Checks::builtin();
            let mut buf = String::new();
            for format in [Format::Text, Format::OpenMetrics] {
                for r in Parser::with_format(page.as_bytes(), format) {
                    if let Ok(Item::Sample(s)) = r {
                        let _ = s.series_key(&mut buf).len();
                    }
                }
                let mut st = crate::state::HostState::new(0);
                let _ = crate::state::scrape_page(&mut st, &checks, page.as_bytes(), format, 0, 0.0);
                let _ = crate::state::scrape_page(&mut st, &checks, page.as_bytes(), format, 1, 15.0);
            }
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
            // The fused scan of a sample line's value gives the same value
            // or hands the token to the general path.
            let line = format!("{txt} 17");
            if let Some((v, end)) = scan_decimal(line.as_bytes(), 0) {
                prop_assert_eq!(v.to_bits(), want.to_bits(), "{}", txt);
                prop_assert_eq!(end, txt.len());
            }
        }

        #[test]
        fn scan_decimal_agrees_with_the_general_path(tok in "[-+]?[0-9.eE+aIN]{0,22}") {
            let line = format!("{tok}\t5");
            if let Some((v, end)) = scan_decimal(line.as_bytes(), 0) {
                prop_assert_eq!(end, tok.len());
                prop_assert_eq!(Some(v.to_bits()), parse_float(&tok).map(f64::to_bits), "{}", tok);
            }
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
