//! Conformance corpus for the page parser: each case is a page, its format,
//! and the verdict and values of the reference implementation.
//!
//! Cases are written for this repository after the public references:
//! prometheus/common `expfmt/text_parse_test.go` (scenarios and error
//! scenarios of the text format 0.0.4; quoted UTF-8 names, a later
//! extension, are left out) and the OpenMetrics project's parser test data
//! (`tests/testdata/parsers/*`). `src` names the reference case each one
//! follows. Where fleetcheck departs from a reference on purpose, a comment
//! on the case says so and the case expects fleetcheck's verdict.
//!
//! Values: each accepted page lists every sample as (series identity,
//! value, timestamp in ms); a NaN value is written `f64::NAN` and compared
//! as NaN.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::approx_constant)]

use fleetcheck::expfmt::{Format, Item, Parser};

enum Verdict {
    /// The page is accepted with exactly these samples.
    Ok(&'static [(&'static str, f64, Option<i64>)]),
    /// The page is refused at this line, with a reason containing the text.
    Err(u32, &'static str),
}

struct Case {
    name: &'static str,
    src: &'static str,
    format: Format,
    page: &'static str,
    verdict: Verdict,
}

const T: Format = Format::Text;
const OM: Format = Format::OpenMetrics;
const NAN: f64 = f64::NAN;
const INF: f64 = f64::INFINITY;

use Verdict::{Err as Bad, Ok as Good};

const CASES: &[Case] = &[
    // ---- prometheus/common expfmt, text 0.0.4, accepted pages ----
    Case {
        name: "empty_lines",
        src: "expfmt text_parse_test scenario 0",
        format: T,
        page: "\n\n",
        verdict: Good(&[]),
    },
    Case {
        name: "minimal",
        src: "expfmt scenario 1",
        format: T,
        page: "\nminimal_metric 1.234\nanother_metric -3e3 103948\n# Even that:\nno_labels{} 3\n# HELP line for non-existing metric will be ignored.\n",
        verdict: Good(&[
            ("minimal_metric", 1.234, None),
            ("another_metric", -3e3, Some(103948)),
            ("no_labels", 3.0, None),
        ]),
    },
    Case {
        name: "whitespace_escapes_docstrings",
        src: "expfmt scenario 2",
        format: T,
        page: "\n# A normal comment.\n#\n# TYPE name counter\nname{labelname=\"val1\",basename=\"basevalue\"} NaN\nname {labelname=\"val2\",basename=\"base\\\"v\\\\al\\nue\"} 0.23 1234567890\n# HELP name two-line\\n doc  str\\\\ing\n\n # HELP  name2  \tdoc str\"ing 2\n  #    TYPE    name2 gauge\nname2{labelname=\"val2\"\t,basename   =   \"basevalue2\"\t\t} +Inf 54321\nname2{ labelname = \"val1\" , }-Inf\n",
        verdict: Good(&[
            ("name{basename=\"basevalue\",labelname=\"val1\"}", NAN, None),
            (
                "name{basename=\"base\\\"v\\\\al\\nue\",labelname=\"val2\"}",
                0.23,
                Some(1234567890),
            ),
            (
                "name2{basename=\"basevalue2\",labelname=\"val2\"}",
                INF,
                Some(54321),
            ),
            ("name2{labelname=\"val1\"}", f64::NEG_INFINITY, None),
        ]),
    },
    Case {
        name: "evil_summary",
        src: "expfmt scenario 3",
        format: T,
        page: "\n# TYPE my_summary summary\nmy_summary{n1=\"val1\",quantile=\"0.5\"} 110\ndecoy -1 -2\nmy_summary{n1=\"val1\",quantile=\"0.9\"} 140 1\nmy_summary_count{n1=\"val1\"} 42\n# Latest timestamp wins in case of a summary.\nmy_summary_sum{n1=\"val1\"} 4711 2\nfake_sum{n1=\"val1\"} 2001\n# TYPE another_summary summary\nanother_summary_count{n2=\"val2\",n1=\"val1\"} 20\nmy_summary_count{n2=\"val2\",n1=\"val1\"} 5 5\nanother_summary{n1=\"val1\",n2=\"val2\",quantile=\".3\"} -1.2\nmy_summary_sum{n1=\"val2\"} 08 15\nmy_summary{n1=\"val3\", quantile=\"0.2\"} 4711\n  my_summary{n1=\"val1\",n2=\"val2\",quantile=\"-12.34\",} NaN\n# some\n# funny comments\n# HELP\n# HELP\n# HELP my_summary\n# HELP my_summary\n",
        verdict: Good(&[
            ("my_summary{n1=\"val1\",quantile=\"0.5\"}", 110.0, None),
            ("decoy", -1.0, Some(-2)),
            ("my_summary{n1=\"val1\",quantile=\"0.9\"}", 140.0, Some(1)),
            ("my_summary_count{n1=\"val1\"}", 42.0, None),
            ("my_summary_sum{n1=\"val1\"}", 4711.0, Some(2)),
            ("fake_sum{n1=\"val1\"}", 2001.0, None),
            ("another_summary_count{n1=\"val1\",n2=\"val2\"}", 20.0, None),
            ("my_summary_count{n1=\"val1\",n2=\"val2\"}", 5.0, Some(5)),
            (
                "another_summary{n1=\"val1\",n2=\"val2\",quantile=\".3\"}",
                -1.2,
                None,
            ),
            ("my_summary_sum{n1=\"val2\"}", 8.0, Some(15)),
            ("my_summary{n1=\"val3\",quantile=\"0.2\"}", 4711.0, None),
            (
                "my_summary{n1=\"val1\",n2=\"val2\",quantile=\"-12.34\"}",
                NAN,
                None,
            ),
        ]),
    },
    Case {
        name: "histogram",
        src: "expfmt scenario 4",
        format: T,
        page: "\n# HELP request_duration_microseconds The response latency.\n# TYPE request_duration_microseconds histogram\nrequest_duration_microseconds_bucket{le=\"100\"} 123\nrequest_duration_microseconds_bucket{le=\"120\"} 412\nrequest_duration_microseconds_bucket{le=\"+Inf\"} 2693\nrequest_duration_microseconds_sum 1.7560473e+06\nrequest_duration_microseconds_count 2693\n",
        verdict: Good(&[
            (
                "request_duration_microseconds_bucket{le=\"100\"}",
                123.0,
                None,
            ),
            (
                "request_duration_microseconds_bucket{le=\"120\"}",
                412.0,
                None,
            ),
            (
                "request_duration_microseconds_bucket{le=\"+Inf\"}",
                2693.0,
                None,
            ),
            ("request_duration_microseconds_sum", 1.7560473e6, None),
            ("request_duration_microseconds_count", 2693.0, None),
        ]),
    },
    Case {
        name: "quantile_not_a_number_outside_summary",
        src: "issue 9 item 1 (a Prometheus scrape keeps this page)",
        format: T,
        page: "rpc_latency_seconds{quantile=\"p99\"} 0.5\n# TYPE g gauge\ng{le=\"big\"} 1\n",
        verdict: Good(&[
            ("rpc_latency_seconds{quantile=\"p99\"}", 0.5, None),
            ("g{le=\"big\"}", 1.0, None),
        ]),
    },
    Case {
        name: "bucket_without_le_summary_without_quantile",
        src: "expfmt drops such samples and keeps the page; a Prometheus scrape keeps them",
        format: T,
        page: "# TYPE h histogram\nh_bucket{x=\"1\"} 1\n# TYPE s summary\ns 2\n",
        verdict: Good(&[("h_bucket{x=\"1\"}", 1.0, None), ("s", 2.0, None)]),
    },
    // A non-UTF-8 byte in a comment (expfmt ignores comments byte-wise) is
    // in the unit tests (`non_utf8_in_a_comment_keeps_the_page`): this
    // table holds `&str` pages.
    Case {
        name: "no_final_newline",
        src: "expfmt error scenario 0 (refused there)",
        format: T,
        // Departure: expfmt refuses a page whose last line has no newline;
        // fleetcheck keeps it, as prometheus_client's parser does.
        page: "\nbla 3.14\nblubber 42",
        verdict: Good(&[("bla", 3.14, None), ("blubber", 42.0, None)]),
    },
    // ---- prometheus/common expfmt, text 0.0.4, refused pages ----
    Case {
        name: "invalid_escape",
        src: "expfmt error scenario 1",
        format: T,
        page: "metric{label=\"\\t\"} 3.14",
        verdict: Bad(1, "invalid escape sequence"),
    },
    Case {
        name: "newline_in_label_value",
        src: "expfmt error scenario 2",
        format: T,
        page: "\nmetric{label=\"new\nline\"} 3.14\n",
        verdict: Bad(2, "unterminated label value"),
    },
    Case {
        name: "invalid_label_name",
        src: "expfmt error scenario 3",
        format: T,
        page: "metric{@=\"bla\"} 3.14",
        verdict: Bad(1, "invalid label name"),
    },
    Case {
        name: "reserved_name_label",
        src: "expfmt error scenario 4",
        format: T,
        page: "metric{__name__=\"bla\"} 3.14",
        verdict: Bad(1, "\"__name__\" is reserved"),
    },
    Case {
        name: "label_name_then_junk",
        src: "expfmt error scenario 5",
        format: T,
        page: "metric{label+=\"bla\"} 3.14",
        verdict: Bad(1, "expected '=' after label name"),
    },
    Case {
        name: "unquoted_label_value",
        src: "expfmt error scenario 6",
        format: T,
        page: "metric{label=bla} 3.14",
        verdict: Bad(1, "expected '\"'"),
    },
    Case {
        name: "summary_quantile_not_a_number",
        src: "expfmt error scenario 7",
        format: T,
        page: "\n# TYPE metric summary\nmetric{quantile=\"bla\"} 3.14\n",
        verdict: Bad(3, "invalid quantile label value"),
    },
    Case {
        name: "junk_after_label_value",
        src: "expfmt error scenario 8",
        format: T,
        page: "metric{label=\"bla\"+} 3.14",
        verdict: Bad(1, "expected ',' or '}'"),
    },
    Case {
        name: "float_timestamp",
        src: "expfmt error scenario 9",
        format: T,
        page: "metric{label=\"bla\"} 3.14 2.72\n",
        verdict: Bad(1, "invalid timestamp"),
    },
    Case {
        name: "text_after_timestamp",
        src: "expfmt error scenario 10",
        format: T,
        page: "metric{label=\"bla\"} 3.14 2 3\n",
        verdict: Bad(1, "unexpected text after timestamp"),
    },
    Case {
        name: "value_not_a_number",
        src: "expfmt error scenario 11",
        format: T,
        page: "metric{label=\"bla\"} blubb\n",
        verdict: Bad(1, "invalid value"),
    },
    Case {
        name: "second_help",
        src: "expfmt error scenario 12",
        format: T,
        page: "\n# HELP metric one\n# HELP metric two\n",
        verdict: Bad(3, "second HELP line"),
    },
    Case {
        name: "second_type",
        src: "expfmt error scenario 13",
        format: T,
        page: "\n# TYPE metric counter\n# TYPE metric untyped\n",
        verdict: Bad(3, "second TYPE line"),
    },
    Case {
        name: "unknown_type",
        src: "expfmt error scenario 15",
        format: T,
        page: "\n# TYPE metric bla\n",
        verdict: Bad(2, "unknown metric type"),
    },
    Case {
        name: "invalid_name_in_type",
        src: "expfmt error scenario 16",
        format: T,
        page: "\n# TYPE met-ric\n",
        verdict: Bad(2, "invalid metric name"),
    },
    Case {
        name: "invalid_metric_name",
        src: "expfmt error scenario 17",
        format: T,
        page: "@invalidmetric{label=\"bla\"} 3.14 2",
        verdict: Bad(1, "expected metric name"),
    },
    Case {
        name: "missing_metric_name",
        src: "expfmt error scenarios 18 and 47",
        format: T,
        page: "{label=\"bla\"} 3.14 2",
        verdict: Bad(1, "expected metric name"),
    },
    Case {
        name: "le_not_a_number",
        src: "expfmt error scenario 19",
        format: T,
        page: "\n# TYPE metric histogram\nmetric_bucket{le=\"bla\"} 3.14\n",
        verdict: Bad(3, "invalid le label value"),
    },
    Case {
        name: "underscore_in_number",
        src: "expfmt error scenario 21",
        format: T,
        page: "foo 1_2\n",
        verdict: Bad(1, "invalid value"),
    },
    Case {
        name: "hex_float",
        src: "expfmt error scenarios 22-31",
        format: T,
        page: "foo 0x1p-3\n",
        verdict: Bad(1, "invalid value"),
    },
    Case {
        name: "binary_literal",
        src: "expfmt error scenario 24",
        format: T,
        page: "foo 0B1\n",
        verdict: Bad(1, "invalid value"),
    },
    Case {
        name: "hex_float_le",
        src: "expfmt error scenario 32",
        format: T,
        page: "\n# TYPE metric histogram\nmetric_bucket{le=\"0x1p-3\"} 3.14\n",
        verdict: Bad(3, "invalid le label value"),
    },
    Case {
        name: "duplicate_label",
        src: "expfmt error scenario 34",
        format: T,
        page: "metric{label=\"bla\",label=\"bla\"} 3.14",
        verdict: Bad(1, "duplicate label"),
    },
    Case {
        name: "type_after_samples",
        src: "expfmt error scenario 14 (refused there)",
        format: T,
        // Departure: a Prometheus scrape keeps this page (its parser does
        // not order metadata), and so does fleetcheck.
        page: "\nmetric 4.12\n# TYPE metric counter\n",
        verdict: Good(&[("metric", 4.12, None)]),
    },
    Case {
        name: "negative_histogram_count",
        src: "expfmt error scenarios 43-46 (refused there)",
        format: T,
        // Departure: values are not validated against their role; a
        // Prometheus scrape stores them too.
        page: "# TYPE h histogram\nh_bucket{le=\"+Inf\"} -1\nh_count -1\n",
        verdict: Good(&[
            ("h_bucket{le=\"+Inf\"}", -1.0, None),
            ("h_count", -1.0, None),
        ]),
    },
    // ---- OpenMetrics parser test data ----
    Case {
        name: "om_simple_counter",
        src: "OpenMetrics testdata simple_counter",
        format: OM,
        page: "# TYPE a counter\n# HELP a help\na_total 1\n# EOF",
        verdict: Good(&[("a_total", 1.0, None)]),
    },
    Case {
        name: "om_escaping",
        src: "OpenMetrics testdata escaping (valid escapes only)",
        format: OM,
        page: "# TYPE a counter\n# HELP a he\\n\\\\l\\tp\na_total{foo=\"b\\\"a\\nr\"} 1\n# EOF\n",
        verdict: Good(&[("a_total{foo=\"b\\\"a\\nr\"}", 1.0, None)]),
    },
    Case {
        name: "om_float_timestamps",
        src: "OpenMetrics spec: timestamps are seconds",
        format: OM,
        page: "# TYPE a gauge\na 1 1520430000.123\na{x=\"y\"} 2 1520430000\n# EOF\n",
        verdict: Good(&[
            ("a", 1.0, Some(1_520_430_000_123)),
            ("a{x=\"y\"}", 2.0, Some(1_520_430_000_000)),
        ]),
    },
    Case {
        name: "om_exemplars_wide_chars",
        src: "OpenMetrics testdata exemplars_wide_chars",
        format: OM,
        page: "# TYPE a histogram\na_bucket{le=\"+Inf\"} 1 # {a=\"\u{2603}345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678\"} 1 1\n# EOF\n",
        verdict: Good(&[("a_bucket{le=\"+Inf\"}", 1.0, None)]),
    },
    Case {
        name: "om_new_types",
        src: "OpenMetrics spec: info, stateset, gaugehistogram, unknown",
        format: OM,
        page: "# TYPE i info\ni_info{v=\"1\"} 1\n# TYPE s stateset\ns{s=\"a\"} 1\n# TYPE g gaugehistogram\ng_bucket{le=\"+Inf\"} 3\ng_gcount 3\ng_gsum 2\n# TYPE u unknown\nu 1\n# EOF\n",
        verdict: Good(&[
            ("i_info{v=\"1\"}", 1.0, None),
            ("s{s=\"a\"}", 1.0, None),
            ("g_bucket{le=\"+Inf\"}", 3.0, None),
            ("g_gcount", 3.0, None),
            ("g_gsum", 2.0, None),
            ("u", 1.0, None),
        ]),
    },
    Case {
        name: "om_bad_no_eof",
        src: "OpenMetrics testdata bad_no_eof",
        format: OM,
        page: "# TYPE a counter\na_total 1\n",
        verdict: Bad(2, "without '# EOF'"),
    },
    Case {
        name: "om_bad_text_after_eof",
        src: "OpenMetrics testdata bad_text_after_eof",
        format: OM,
        page: "# TYPE a counter\na_total 1\n# EOF\nblah\n",
        verdict: Bad(4, "after '# EOF'"),
    },
    Case {
        name: "om_bad_blank_line",
        src: "OpenMetrics testdata bad_blank_line",
        format: OM,
        page: "a 1\n\n# EOF\n",
        verdict: Bad(2, "blank line"),
    },
    Case {
        name: "om_bad_exemplars_0",
        src: "OpenMetrics testdata bad_exemplars_0",
        format: OM,
        page: "# TYPE a histogram\na_bucket{le=\"+Inf\"} 1 #\n# EOF\n",
        verdict: Bad(2, "exemplar"),
    },
    Case {
        name: "om_bad_exemplars_3",
        src: "OpenMetrics testdata bad_exemplars_3",
        format: OM,
        page: "# TYPE a histogram\na_bucket{le=\"+Inf\"} 1 # {}1\n# EOF\n",
        verdict: Bad(2, "exemplar"),
    },
    Case {
        name: "om_bad_exemplars_5",
        src: "OpenMetrics testdata bad_exemplars_5",
        format: OM,
        page: "# TYPE a histogram\na_bucket{le=\"+Inf\"} 1 # {} 1 1 \n# EOF\n",
        verdict: Bad(2, "exemplar"),
    },
    Case {
        name: "om_bad_exemplars_7",
        src: "OpenMetrics testdata bad_exemplars_7",
        format: OM,
        page: "# TYPE a histogram\na_bucket{le=\"+Inf\"} 1 # {} 0x1p-3\n# EOF\n",
        verdict: Bad(2, "invalid exemplar value"),
    },
    Case {
        name: "om_bad_exemplars_size_0",
        src: "OpenMetrics testdata bad_exemplars_size_0",
        format: OM,
        page: "# TYPE a counter\n# HELP a help\na_total{foo=\"bar\"} 1 # {a=\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"} 1\n# EOF\n",
        verdict: Bad(3, "limit 128"),
    },
    Case {
        name: "om_bad_exemplar_timestamp_nan",
        src: "OpenMetrics testdata bad_exemplar_timestamp_NaN",
        format: OM,
        page: "# TYPE a counter\na_total 1 # {a=\"b\"} 0.5 NaN\n# EOF",
        verdict: Bad(2, "invalid timestamp"),
    },
    Case {
        name: "om_bad_exemplar_on_gauge",
        src: "OpenMetrics spec: exemplars only on counters and buckets",
        format: OM,
        page: "# TYPE a gauge\na 1 # {a=\"b\"} 1\n# EOF\n",
        verdict: Bad(2, "cannot have one"),
    },
    Case {
        name: "om_bad_counter_without_total",
        src: "OpenMetrics testdata bad_counter_values family: counter samples need _total",
        format: OM,
        page: "# TYPE a counter\na 1\n# EOF\n",
        verdict: Bad(2, "_total"),
    },
    Case {
        name: "om_bad_bucket_without_le",
        src: "OpenMetrics testdata bad_histograms family",
        format: OM,
        page: "# TYPE a histogram\na_bucket 1\n# EOF\n",
        verdict: Bad(2, "without 'le'"),
    },
    Case {
        name: "om_bad_histogram_plain_sample",
        src: "OpenMetrics testdata bad_histograms family",
        format: OM,
        page: "# TYPE a histogram\na 1\n# EOF\n",
        verdict: Bad(2, "_bucket"),
    },
    Case {
        name: "om_bad_untyped",
        src: "OpenMetrics spec: untyped is not a type",
        format: OM,
        page: "# TYPE a untyped\na 1\n# EOF\n",
        verdict: Bad(1, "unknown metric type"),
    },
    Case {
        name: "om_bad_comment",
        src: "OpenMetrics testdata bad_metadata family",
        format: OM,
        page: "# just a comment\na 1\n# EOF\n",
        verdict: Bad(1, "only HELP, TYPE, UNIT and EOF"),
    },
    Case {
        name: "om_bad_double_space",
        src: "OpenMetrics spec: one space between tokens",
        format: OM,
        page: "a 1  2\n# EOF\n",
        verdict: Bad(1, "one space"),
    },
];

/// Parse a page into (identity, value, timestamp) or the first error.
/// Samples as (identity, value, timestamp).
type Samples = Vec<(String, f64, Option<i64>)>;

fn run(format: Format, page: &str) -> Result<Samples, (u32, String)> {
    let mut out = Vec::new();
    let mut buf = String::new();
    for item in Parser::with_format(page.as_bytes(), format) {
        match item {
            Ok(Item::Sample(s)) => {
                out.push((s.series_key(&mut buf).to_string(), s.value, s.timestamp_ms))
            }
            Ok(_) => {}
            Err(e) => return Err((e.line, e.reason)),
        }
    }
    Ok(out)
}

#[test]
fn corpus_verdicts_and_values_match_the_references() {
    let mut failures = Vec::new();
    for c in CASES {
        let got = run(c.format, c.page);
        let ok = match (&c.verdict, &got) {
            (Good(want), Ok(got)) => {
                want.len() == got.len()
                    && want.iter().zip(got).all(|(w, g)| {
                        w.0 == g.0 && (w.1 == g.1 || (w.1.is_nan() && g.1.is_nan())) && w.2 == g.2
                    })
            }
            (Bad(line, reason), Err((l, r))) => line == l && r.contains(reason),
            _ => false,
        };
        if !ok {
            failures.push(format!("{} ({}): got {got:?}", c.name, c.src));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(n, names.len());
}
