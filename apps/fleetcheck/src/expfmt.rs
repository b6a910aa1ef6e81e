//! Parser for the Prometheus text exposition format (version 0.0.4) and
//! OpenMetrics 1.0 text, each by its own rules ([`Format`], chosen from the
//! response's `Content-Type` by [`Format::from_content_type`]).
//!
//! The parser is a zero-copy streaming iterator over a `&[u8]` page: every
//! [`Item`] borrows from the input, no `String` is allocated per sample, and
//! label values are only unescaped when asked for ([`RawLabels::iter`]).
//!
//! Supported: `# HELP` / `# TYPE` lines, other comments, blank lines, labels
//! with escapes (`\\`, `\"`, `\n`), trailing commas in label sets, counters,
//! gauges, untyped, histograms (`_bucket` with `le`, `_sum`, `_count`),
//! summaries (`quantile` label, `_sum`, `_count`), `NaN`, `+Inf`, `-Inf`,
//! optional millisecond timestamps, `\r\n` line endings.
//!
//! Where the text format's references (prometheus/common `expfmt`, a
//! Prometheus scrape) keep a page, so does this parser: `le` and `quantile`
//! are numbers only on histogram buckets and summary quantiles, a bare
//! `# HELP` is a comment, a comment may hold any bytes, a value may follow
//! `}` without a blank, and a bucket without `le` (a summary sample without
//! `quantile`) is a plain sample. A `__name__` label and a label repeated
//! anywhere in a set are refused.
//!
//! OpenMetrics: timestamps are seconds (floats allowed; handed out as
//! milliseconds like the text format's), exemplars (`# {labels} value
//! [timestamp]`, on counter `_total` and histogram `_bucket` samples only),
//! the types `info`, `stateset`, `gaugehistogram` and `unknown`, `# UNIT`,
//! type suffixes (`_total`, `_created`, `_gsum`, ...), and `# EOF` as the
//! last line, with nothing after it.
//!
//! Series identity ([`Sample::series_key`]) is the metric name plus its
//! labels sorted by name (empty values dropped, as Prometheus does): the
//! spellings `a{y="2",x="1"}`, `a{x="1",y="2",}` and `a {x="1",y="2"}` are
//! one series.
//!
//! Malformed input yields a [`ParseError`] with the 1-based line number and a
//! reason; the parser never panics. After an error the iterator is fused.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

mod comments;
pub use comments::{CommentRuns, Mark};

/// The type of a metric family as declared by `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    /// Monotonic counter.
    Counter,
    /// Arbitrary value.
    Gauge,
    /// Histogram (`_bucket`, `_sum`, `_count`).
    Histogram,
    /// Summary (`quantile` label, `_sum`, `_count`).
    Summary,
    /// No `# TYPE` line (or explicitly `untyped`), text format.
    Untyped,
    /// OpenMetrics `info` (`_info` samples).
    Info,
    /// OpenMetrics `stateset`.
    Stateset,
    /// OpenMetrics `gaugehistogram` (`_bucket`, `_gsum`, `_gcount`).
    #[serde(rename = "gaugehistogram")]
    GaugeHistogram,
    /// OpenMetrics `unknown` (also a family without `# TYPE`).
    Unknown,
}

impl MetricType {
    fn from_word(w: &[u8], format: Format) -> Option<Self> {
        let om = format == Format::OpenMetrics;
        Some(match w {
            b"counter" => Self::Counter,
            b"gauge" => Self::Gauge,
            b"histogram" => Self::Histogram,
            b"summary" => Self::Summary,
            b"untyped" if !om => Self::Untyped,
            b"info" if om => Self::Info,
            b"stateset" if om => Self::Stateset,
            b"gaugehistogram" if om => Self::GaugeHistogram,
            b"unknown" if om => Self::Unknown,
            _ => return None,
        })
    }

    /// The word of a `# TYPE` line.
    pub fn word(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Untyped => "untyped",
            Self::Info => "info",
            Self::Stateset => "stateset",
            Self::GaugeHistogram => "gaugehistogram",
            Self::Unknown => "unknown",
        }
    }
}

/// Exposition format of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Format {
    /// Prometheus text format 0.0.4 (`text/plain`, and anything unknown).
    #[default]
    Text,
    /// OpenMetrics 1.0 text (`application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The format of a response by its `Content-Type` (text 0.0.4 unless
    /// the media type is `application/openmetrics-text`).
    pub fn from_content_type(ct: Option<&str>) -> Format {
        let media = ct.and_then(|c| c.split(';').next()).map(str::trim);
        match media {
            Some(m) if m.eq_ignore_ascii_case("application/openmetrics-text") => {
                Format::OpenMetrics
            }
            _ => Format::Text,
        }
    }
}

/// The `Accept` header of a scrape: both formats, OpenMetrics preferred,
/// as Prometheus sends it.
pub const ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";

/// Role of a sample inside its family.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SampleRole {
    /// Counter, gauge or untyped value.
    Plain,
    /// Histogram bucket with its upper bound (`le`).
    Bucket {
        /// The bucket's upper bound.
        le: f64,
    },
    /// Summary quantile.
    Quantile {
        /// The quantile (0..=1).
        q: f64,
    },
    /// `_sum` of a histogram or summary.
    Sum,
    /// `_count` of a histogram or summary (`_gcount` of a gauge histogram).
    Count,
    /// OpenMetrics `_created` of a counter, histogram or summary.
    Created,
}

/// A parse error with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: u32,
    /// Human-readable reason.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for ParseError {}

/// The raw, validated text between `{` and `}` of a sample (without braces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawLabels<'a>(pub &'a str);

impl<'a> RawLabels<'a> {
    /// Iterate over `(name, unescaped value)` pairs.
    ///
    /// Only meaningful on label text produced by the parser (already
    /// validated); on other text it stops at the first malformed pair.
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter {
            s: self.0.as_bytes(),
            src: self.0,
            pos: 0,
        }
    }

    /// Value of the label `name`, unescaped.
    pub fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// True when there are no labels.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// Iterator over decoded labels; see [`RawLabels::iter`].
#[derive(Debug, Clone)]
pub struct LabelIter<'a> {
    s: &'a [u8],
    src: &'a str,
    pos: usize,
}

impl<'a> LabelIter<'a> {
    /// The next label's name as bytes (works on validated text that need
    /// not be UTF-8-checked yet).
    fn next_name(&mut self) -> Option<&'a [u8]> {
        let s = self.s;
        let mut p = self.pos;
        while p < s.len() && (s[p] == b' ' || s[p] == b'\t' || s[p] == b',') {
            p += 1;
        }
        let ns = p;
        while p < s.len() && is_label_char(s[p]) {
            p += 1;
        }
        if ns == p {
            return None;
        }
        let name = &s[ns..p];
        while p < s.len() && s[p] != b'"' {
            p += 1;
        }
        p += 1;
        while p < s.len() && s[p] != b'"' {
            p += if s[p] == b'\\' { 2 } else { 1 };
        }
        self.pos = p + 1;
        Some(name)
    }
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s;
        let mut p = self.pos;
        while p < s.len() && (s[p] == b' ' || s[p] == b'\t' || s[p] == b',') {
            p += 1;
        }
        if p >= s.len() {
            return None;
        }
        let ns = p;
        while p < s.len() && is_label_char(s[p]) {
            p += 1;
        }
        let name = self.src.get(ns..p)?;
        while p < s.len() && (s[p] == b' ' || s[p] == b'\t') {
            p += 1;
        }
        if s.get(p) != Some(&b'=') {
            return None;
        }
        p += 1;
        while p < s.len() && (s[p] == b' ' || s[p] == b'\t') {
            p += 1;
        }
        if s.get(p) != Some(&b'"') {
            return None;
        }
        p += 1;
        let vs = p;
        let mut escaped = false;
        while p < s.len() && s[p] != b'"' {
            if s[p] == b'\\' {
                escaped = true;
                p += 1;
            }
            p += 1;
        }
        let raw = self.src.get(vs..p.min(s.len()))?;
        self.pos = p + 1;
        let value = if escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        };
        Some((name, value))
    }
}

/// Unescape `\\`, `\"` and `\n` (HELP text and label values).
pub fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One sample line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// Metric name of this sample line (e.g. `foo_bucket`).
    pub name: &'a str,
    /// Label text between the braces.
    pub labels: RawLabels<'a>,
    /// `name{labels}` exactly as on the page (see [`Sample::series_key`]
    /// for the series' identity).
    pub key: &'a str,
    /// True when `key` is already the series' identity: labels sorted by
    /// name, no blanks, no trailing comma, no empty value, no `{}`.
    pub canonical: bool,
    /// The value.
    pub value: f64,
    /// Optional timestamp in milliseconds since the epoch (OpenMetrics
    /// seconds are converted).
    pub timestamp_ms: Option<i64>,
    /// Type of the family this sample belongs to.
    pub family_type: MetricType,
    /// Role within the family.
    pub role: SampleRole,
    /// 1-based line number.
    pub line: u32,
}

impl<'a> Sample<'a> {
    /// The series' identity: `name{a="1",b="2"}` with labels sorted by
    /// name, empty values dropped and values escaped. Borrowed from the
    /// page when the page wrote it that way (the common case), else
    /// written into `buf`.
    pub fn series_key<'b>(&'b self, buf: &'b mut String) -> &'b str {
        if self.canonical {
            return self.key;
        }
        canonical_key(self.name, self.labels, buf);
        buf.as_str()
    }
}

/// Write the identity of series `name` with `labels` into `out` (cleared
/// first); see [`Sample::series_key`].
pub fn canonical_key(name: &str, labels: RawLabels<'_>, out: &mut String) {
    out.clear();
    out.push_str(name);
    let mut pairs: Vec<(&str, Cow<'_, str>)> =
        labels.iter().filter(|(_, v)| !v.is_empty()).collect();
    if pairs.is_empty() {
        return;
    }
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (n, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// One meaningful line of a page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    /// `# HELP name text` (text still escaped; see [`unescape`]).
    Help {
        /// Metric family name.
        name: &'a str,
        /// Escaped help text.
        text: &'a str,
    },
    /// `# TYPE name type`.
    Type {
        /// Metric family name.
        name: &'a str,
        /// Declared type.
        kind: MetricType,
    },
    /// Any other `#` comment (text after `#`).
    Comment(&'a str),
    /// A sample.
    Sample(Sample<'a>),
}

/// Metric names seen on a page.
type NameSet<'a> = std::collections::HashSet<&'a str, foldhash::fast::RandomState>;

/// Streaming parser; an iterator of `Result<Item, ParseError>`.
#[derive(Debug)]
pub struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    line: u32,
    family: &'a str,
    /// Where `family` is on the page.
    family_at: usize,
    family_type: MetricType,
    /// Families with a TYPE / HELP line so far (a set: with a vector the
    /// duplicate checks were quadratic in families, ~1,000 instructions
    /// per comment line on a node_exporter-sized page).
    typed: NameSet<'a>,
    helped: NameSet<'a>,
    failed: bool,
    fam_hash: u64,
    format: Format,
    eof: bool,
    /// Label names of the current line (reused; no allocation per line).
    names: Vec<&'a [u8]>,
    /// A comment was parsed: no more comment runs are skipped
    /// ([`CommentRuns`]).
    no_skip: bool,
    /// The end of the last comment run skipped.
    skipped_to: usize,
}

/// What the family context expects of a sample, before its labels are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Plain,
    Bucket,
    Quantile,
    Sum,
    Count,
    Created,
}

impl<'a> Parser<'a> {
    /// Parse `src` as text format 0.0.4.
    pub fn new(src: &'a [u8]) -> Self {
        Parser::with_format(src, Format::Text)
    }

    /// Parse `src` by the rules of `format`.
    pub fn with_format(src: &'a [u8], format: Format) -> Self {
        let family_type = match format {
            Format::Text => MetricType::Untyped,
            Format::OpenMetrics => MetricType::Unknown,
        };
        Parser {
            src,
            pos: 0,
            line: 0,
            family: "",
            family_at: 0,
            family_type,
            // Room for a node_exporter page's families without growing.
            typed: NameSet::with_capacity_and_hasher(64, Default::default()),
            helped: NameSet::with_capacity_and_hasher(64, Default::default()),
            failed: false,
            fam_hash: family_hash("", family_type),
            format,
            eof: false,
            names: Vec::new(),
            no_skip: false,
            skipped_to: 0,
        }
    }

    /// The format this parser follows.
    pub fn format(&self) -> Format {
        self.format
    }

    fn err<T>(&mut self, reason: impl Into<String>) -> Option<Result<T, ParseError>> {
        self.failed = true;
        Some(Err(ParseError {
            line: self.line,
            reason: reason.into(),
        }))
    }

    fn parse_comment(&mut self, l: &'a [u8]) -> Result<Item<'a>, String> {
        // l starts with '#'
        self.stop_skipping()?;
        let rest = &l[1..];
        let om = self.format == Format::OpenMetrics;
        if om && rest == b" EOF" {
            self.eof = true;
            return Ok(Item::Comment(" EOF"));
        }
        let t = trim_blanks_start(rest);
        let (word, after) = split_word_b(t);
        let keyword = t.len() != rest.len()
            && (word == b"HELP" || word == b"TYPE" || (om && word == b"UNIT"));
        if !keyword {
            if om {
                return Err(
                    "unexpected comment (OpenMetrics allows only HELP, TYPE, UNIT and EOF)".into(),
                );
            }
            // A free-text comment is ignored, whatever its bytes (a
            // non-UTF-8 byte ends the text handed out).
            let text = match std::str::from_utf8(rest) {
                Ok(t) => t,
                Err(e) => std::str::from_utf8(&rest[..e.valid_up_to()]).unwrap_or(""),
            };
            return Ok(Item::Comment(text));
        }
        let after = trim_blanks_start(after);
        let (name_b, tail) = split_word_b(after);
        if name_b.is_empty() {
            if om {
                return Err(format!(
                    "{} line without a metric name",
                    String::from_utf8_lossy(word)
                ));
            }
            // `# HELP` alone is a comment to the reference parser.
            return Ok(Item::Comment(std::str::from_utf8(rest).unwrap_or("")));
        }
        let name = std::str::from_utf8(name_b)
            .ok()
            .filter(|n| valid_metric_name(n.as_bytes()))
            .ok_or_else(|| {
                format!(
                    "invalid metric name {:?} in {} line",
                    String::from_utf8_lossy(name_b),
                    String::from_utf8_lossy(word)
                )
            })?;
        let tail = trim_blanks_start(tail);
        if tail.is_empty() && !om {
            // `# HELP name` / `# TYPE name` and nothing more: ignored by
            // the reference parser.
            return Ok(Item::Comment(std::str::from_utf8(rest).unwrap_or("")));
        }
        match word {
            b"HELP" => {
                let text = std::str::from_utf8(tail)
                    .map_err(|_| format!("HELP text of {name} is not valid UTF-8"))?;
                if !self.helped.insert(name) {
                    return Err(format!("second HELP line for metric {name}"));
                }
                Ok(Item::Help { name, text })
            }
            b"UNIT" => Ok(Item::Comment(std::str::from_utf8(rest).unwrap_or(""))),
            _ => {
                let (kw, extra) = split_word_b(tail);
                if !trim_blanks_start(extra).is_empty() {
                    return Err(format!(
                        "unexpected text after type in TYPE line: {:?}",
                        String::from_utf8_lossy(extra)
                    ));
                }
                let kind = MetricType::from_word(kw, self.format).ok_or_else(|| {
                    format!(
                        "unknown metric type {:?} for {name}",
                        String::from_utf8_lossy(kw)
                    )
                })?;
                if !self.typed.insert(name) {
                    return Err(format!("second TYPE line for metric {name}"));
                }
                self.family = name;
                self.family_at = (name.as_ptr() as usize).wrapping_sub(self.src.as_ptr() as usize);
                self.family_type = kind;
                self.fam_hash = family_hash(name, kind);
                Ok(Item::Type { name, kind })
            }
        }
    }

    /// Type and expected role of a sample named `name` in the current family.
    fn classify(&self, name: &[u8]) -> Result<(MetricType, Expect), String> {
        use MetricType as T;
        let om = self.format == Format::OpenMetrics;
        let other = if om { T::Unknown } else { T::Untyped };
        let fam = self.family.as_bytes();
        if fam.is_empty() || !name.starts_with(fam) {
            return Ok((other, Expect::Plain));
        }
        let ft = self.family_type;
        let suffix = &name[fam.len()..];
        let bad = |what: &str| {
            Err(format!(
                "{} sample {} {what}",
                ft.word(),
                String::from_utf8_lossy(name)
            ))
        };
        Ok(match (ft, suffix) {
            (T::Histogram | T::GaugeHistogram, b"_bucket") => (ft, Expect::Bucket),
            (T::Histogram | T::Summary, b"_sum") | (T::GaugeHistogram, b"_gsum") => {
                (ft, Expect::Sum)
            }
            (T::Histogram | T::Summary, b"_count") | (T::GaugeHistogram, b"_gcount") => {
                (ft, Expect::Count)
            }
            (T::Counter | T::Histogram | T::Summary, b"_created") if om => (ft, Expect::Created),
            (T::Counter, b"_total") if om => (ft, Expect::Plain),
            (T::Info, b"_info") if om => (ft, Expect::Plain),
            (T::Summary, b"") => (ft, Expect::Quantile),
            (T::Histogram | T::GaugeHistogram, b"") if om => {
                return bad("needs a _bucket/_sum/_count suffix");
            }
            (T::Counter, b"") if om => return bad("needs the _total suffix"),
            (T::Info, b"") if om => return bad("needs the _info suffix"),
            (_, b"") => (ft, Expect::Plain),
            _ => (other, Expect::Plain),
        })
    }

    #[inline(always)]
    fn parse_sample(&mut self, l: &'a [u8]) -> Result<Sample<'a>, String> {
        let om = self.format == Format::OpenMetrics;
        let mut p = 0;
        if !(l[0].is_ascii_alphabetic() || l[0] == b'_' || l[0] == b':') {
            return Err(format!(
                "expected metric name, found {:?}",
                char::from(l[0])
            ));
        }
        while p < l.len() && is_name_char(l[p]) {
            p += 1;
        }
        let name_end = p;
        let (family_type, expect) = self.classify(&l[..name_end])?;
        let mut le = None;
        let mut quantile = None;
        let mut label_range = (p, p);
        let mut key_end = p;
        let mut canonical = true;
        let mut after_brace = false;
        let mut q = p;
        while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
            q += 1;
        }
        if q < l.len() && l[q] == b'{' {
            // Blanks anywhere in `name {a = "1"}`: not the canonical form,
            // and not OpenMetrics.
            let mut blank = q != p;
            q += 1;
            let ls = q;
            let mut prev: &[u8] = &[];
            let mut sorted = true;
            let mut trailing_comma = false;
            loop {
                let b = q;
                while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
                    q += 1;
                }
                blank |= b != q;
                match l.get(q) {
                    None => return Err("unterminated label set (missing '}')".into()),
                    Some(b'}') => {
                        if om && trailing_comma {
                            return Err("trailing comma in label set (not OpenMetrics)".into());
                        }
                        canonical &= !trailing_comma && !prev.is_empty();
                        break;
                    }
                    _ => {}
                }
                let lns = q;
                if !(l[q].is_ascii_alphabetic() || l[q] == b'_') {
                    return Err(format!("invalid label name start {:?}", char::from(l[q])));
                }
                while q < l.len() && is_label_char(l[q]) {
                    q += 1;
                }
                let lname = &l[lns..q];
                if lname == b"__name__" {
                    return Err("label name \"__name__\" is reserved".into());
                }
                // Names in increasing order cannot repeat; only an
                // unsorted set is checked for duplicates (below).
                sorted &= match (lname.first(), prev.first()) {
                    (_, None) => true,
                    (Some(a), Some(b)) if a != b => a > b,
                    _ => lname > prev,
                };
                prev = lname;
                let b = q;
                while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
                    q += 1;
                }
                if l.get(q) != Some(&b'=') {
                    return Err(format!(
                        "expected '=' after label name {:?}",
                        String::from_utf8_lossy(lname)
                    ));
                }
                q += 1;
                while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
                    q += 1;
                }
                blank |= b + 1 != q;
                if l.get(q) != Some(&b'"') {
                    return Err(format!(
                        "expected '\"' to open value of label {:?}",
                        String::from_utf8_lossy(lname)
                    ));
                }
                q += 1;
                let (vend, escaped) = scan_label_value(l, q)?;
                let raw = &l[q..vend];
                q = vend + 1;
                canonical &= !raw.is_empty();
                let special = match expect {
                    Expect::Bucket => lname == b"le",
                    Expect::Quantile => lname == b"quantile",
                    _ => false,
                };
                if special {
                    let f = parse_special(raw, escaped).ok_or_else(|| {
                        format!(
                            "invalid {} label value {:?} (expected a number)",
                            String::from_utf8_lossy(lname),
                            String::from_utf8_lossy(raw)
                        )
                    })?;
                    if expect == Expect::Bucket {
                        le = Some(f);
                    } else {
                        quantile = Some(f);
                    }
                }
                let b = q;
                while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
                    q += 1;
                }
                blank |= b != q;
                match l.get(q) {
                    Some(b',') => {
                        q += 1;
                        trailing_comma = true;
                    }
                    Some(b'}') => break,
                    None => return Err("unterminated label set (missing '}')".into()),
                    Some(c) => {
                        return Err(format!(
                            "expected ',' or '}}' after label value, found {:?}",
                            char::from(*c)
                        ));
                    }
                }
            }
            if blank && om {
                return Err("blank in label set (not OpenMetrics)".into());
            }
            canonical &= !blank;
            if !sorted {
                canonical = false;
                self.names.clear();
                let mut it = LabelIter {
                    s: &l[ls..q],
                    src: "",
                    pos: 0,
                };
                while let Some(n) = it.next_name() {
                    self.names.push(n);
                }
                self.names.sort_unstable();
                if let Some(w) = self.names.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!(
                        "duplicate label {:?}",
                        String::from_utf8_lossy(w[0])
                    ));
                }
            }
            label_range = (ls, q);
            q += 1; // '}'
            key_end = q;
            p = q;
            after_brace = true;
        }
        let exemplar_ok = om
            && match family_type {
                MetricType::Counter => l[..name_end].ends_with(b"_total"),
                MetricType::Histogram | MetricType::GaugeHistogram => expect == Expect::Bucket,
                _ => false,
            };
        let (value, timestamp_ms) = if om {
            parse_value_ts_om(l, p, exemplar_ok)?
        } else {
            parse_value_ts(l, p, after_brace)?
        };
        let key =
            std::str::from_utf8(&l[..key_end]).map_err(|_| "invalid UTF-8 in series labels")?;
        let name = key.get(..name_end).ok_or("invalid metric name")?;
        let labels = RawLabels(key.get(label_range.0..label_range.1).unwrap_or(""));
        let role = match expect {
            Expect::Plain => SampleRole::Plain,
            Expect::Sum => SampleRole::Sum,
            Expect::Count => SampleRole::Count,
            Expect::Created => SampleRole::Created,
            // The reference keeps the page when `le` / `quantile` is
            // missing (text format); OpenMetrics requires them.
            Expect::Bucket => match le {
                Some(le) => SampleRole::Bucket { le },
                None if om => return Err(format!("histogram bucket {name} without 'le' label")),
                None => SampleRole::Plain,
            },
            Expect::Quantile => match quantile {
                Some(q) => SampleRole::Quantile { q },
                None if om => {
                    return Err(format!("summary sample {name} without 'quantile' label"));
                }
                None => SampleRole::Plain,
            },
        };
        Ok(Sample {
            name,
            labels,
            key,
            canonical,
            value,
            timestamp_ms,
            family_type,
            role,
            line: self.line,
        })
    }
}

impl<'a> Parser<'a> {
    /// Identifies the current family context (name and type of the last
    /// `# TYPE` line); stored with a series to validate later hints.
    pub fn family_context(&self) -> u64 {
        self.fam_hash
    }

    /// The fast path of [`Parser::next_hinted`] for the commonest line of
    /// a page scraped before: when the next line is exactly `key`, one
    /// space, a plain decimal value and the end of the line (no
    /// timestamp, no other blanks) and the family context is `ctx`, consume
    /// it and return the value. `None` (nothing consumed) otherwise: call
    /// [`Parser::next_hinted`] then, which takes every other spelling.
    /// Such a line is exactly one that `next_hinted` answers with
    /// [`Hinted::Known`] and no timestamp; this path skips its separate
    /// newline search and blank handling (text format only).
    #[inline(always)]
    pub fn next_known(&mut self, key: &[u8], ctx: u64) -> Option<f64> {
        if self.failed || self.format != Format::Text || ctx != self.fam_hash || key.is_empty() {
            return None;
        }
        let rest = self.src.get(self.pos..)?;
        if rest.get(key.len()) != Some(&b' ') || !rest.starts_with(key) {
            return None;
        }
        let (v, end) = scan_decimal(rest, key.len() + 1)?;
        let adv = match rest.get(end) {
            None => end,
            Some(b'\n') => end + 1,
            Some(_) => return None,
        };
        self.pos += adv;
        self.line = self.line.saturating_add(1);
        Some(v)
    }

    /// Like [`Iterator::next`], but when the next sample line starts with
    /// `hint.0` (a key seen earlier, followed by a blank) and the family
    /// context equals `hint.1`, the key is not re-parsed: same bytes in the
    /// same context were already validated. Hints are ignored on
    /// OpenMetrics pages (exemplars make the tail depend on the family).
    pub fn next_hinted(
        &mut self,
        hint: Option<(&[u8], u64)>,
    ) -> Option<Result<Hinted<'a>, ParseError>> {
        if self.failed {
            return None;
        }
        if self.format == Format::OpenMetrics {
            return self.next_om();
        }
        // The text format's loop, kept free of OpenMetrics checks: it runs
        // for every line of every scrape.
        loop {
            if self.pos >= self.src.len() {
                return None;
            }
            let l = self.next_line();
            let mut s = 0;
            while s < l.len() && (l[s] == b' ' || l[s] == b'\t') {
                s += 1;
            }
            let l = &l[s..];
            if l.is_empty() {
                continue;
            }
            if l[0] == b'#' {
                return match self.parse_comment(l) {
                    Ok(it) => Some(Ok(Hinted::Item(it))),
                    Err(e) => self.err(e),
                };
            }
            if let Some((key, ctx)) = hint
                && ctx == self.fam_hash
                && l.len() > key.len()
                && (l[key.len()] == b' ' || l[key.len()] == b'\t')
                && l.starts_with(key)
            {
                return match parse_value_ts(l, key.len(), false) {
                    Ok((value, timestamp_ms)) => Some(Ok(Hinted::Known {
                        value,
                        timestamp_ms,
                        line: self.line,
                    })),
                    Err(e) => self.err(e),
                };
            }
            return match self.parse_sample(l) {
                Ok(s) => Some(Ok(Hinted::Item(Item::Sample(s)))),
                Err(e) => self.err(e),
            };
        }
    }

    /// The next line (without its `\n` and a final `\r`); `pos` must be
    /// before the end of the input.
    #[inline(always)]
    fn next_line(&mut self) -> &'a [u8] {
        let rest = &self.src[self.pos..];
        let (mut l, adv) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.pos += adv;
        self.line = self.line.saturating_add(1);
        if let [head @ .., b'\r'] = l {
            l = head;
        }
        l
    }

    /// [`Parser::next_hinted`] for OpenMetrics pages (no hints: exemplars
    /// make a line's tail depend on its family).
    #[inline(never)]
    fn next_om(&mut self) -> Option<Result<Hinted<'a>, ParseError>> {
        if self.pos >= self.src.len() {
            if !self.eof {
                return self.err("OpenMetrics page without '# EOF' at its end");
            }
            return None;
        }
        let l = self.next_line();
        if self.eof {
            return self.err("text after '# EOF'");
        }
        match l.first() {
            None => self.err("blank line (not allowed in OpenMetrics)"),
            Some(b' ' | b'\t') => self.err("line starts with a blank (not OpenMetrics)"),
            Some(b'#') => match self.parse_comment(l) {
                Ok(it) => Some(Ok(Hinted::Item(it))),
                Err(e) => self.err(e),
            },
            Some(_) => match self.parse_sample(l) {
                Ok(s) => Some(Ok(Hinted::Item(Item::Sample(s)))),
                Err(e) => self.err(e),
            },
        }
    }
}

impl<'a> Iterator for Parser<'a> {
    type Item = Result<Item<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_hinted(None)? {
            Ok(Hinted::Item(it)) => Some(Ok(it)),
            Ok(Hinted::Known { .. }) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// Scan a quoted label value starting at `q` (just after the opening
/// quote); returns the position of the closing quote and whether the value
/// holds escapes.
#[inline(always)]
fn scan_label_value(l: &[u8], mut q: usize) -> Result<(usize, bool), String> {
    let mut escaped = false;
    loop {
        if let Some(off) = l
            .get(q..)
            .and_then(|r| r.iter().position(|&b| b == b'"' || b == b'\\'))
        {
            q += off;
        } else {
            q = l.len();
        }
        match l.get(q) {
            None => return Err("unterminated label value".into()),
            Some(b'"') => return Ok((q, escaped)),
            Some(b'\\') => {
                match l.get(q + 1) {
                    Some(b'\\' | b'"' | b'n') => {}
                    Some(c) => {
                        return Err(format!(
                            "invalid escape sequence '\\{}' in label value",
                            char::from(*c)
                        ));
                    }
                    None => return Err("unterminated label value".into()),
                }
                escaped = true;
                q += 2;
            }
            Some(_) => q += 1,
        }
    }
}

/// Value of an `le` or `quantile` label as a number.
fn parse_special(raw: &[u8], escaped: bool) -> Option<f64> {
    let v = std::str::from_utf8(raw).ok()?;
    let v = if escaped {
        Cow::Owned(unescape(v))
    } else {
        Cow::Borrowed(v)
    };
    parse_float(v.trim())
}

/// Validate an exemplar's label set `{...}` starting at `q` (on `{`);
/// returns the position after `}` and the number of characters of its
/// names and values.
fn scan_exemplar_labels(l: &[u8], mut q: usize) -> Result<(usize, usize), String> {
    if l.get(q) != Some(&b'{') {
        return Err("exemplar without a label set".into());
    }
    q += 1;
    let mut chars = 0usize;
    let mut first = true;
    loop {
        match l.get(q) {
            Some(b'}') => return Ok((q + 1, chars)),
            Some(b',') if !first => q += 1,
            Some(_) if first => {}
            _ => return Err("malformed exemplar label set".into()),
        }
        first = false;
        let ns = q;
        if !l
            .get(q)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            return Err("invalid exemplar label name".into());
        }
        while q < l.len() && is_label_char(l[q]) {
            q += 1;
        }
        chars += q - ns;
        if l.get(q) != Some(&b'=') || l.get(q + 1) != Some(&b'"') {
            return Err("malformed exemplar label".into());
        }
        let (vend, _) = scan_label_value(l, q + 2)?;
        let v = std::str::from_utf8(&l[q + 2..vend]).map_err(|_| "invalid UTF-8 in exemplar")?;
        chars += v.chars().count();
        q = vend + 1;
    }
}

/// Maximum characters of an exemplar's label names and values (OpenMetrics).
const EXEMPLAR_MAX_CHARS: usize = 128;

/// OpenMetrics timestamp (seconds, float allowed) as milliseconds.
fn om_timestamp_ms(tok: &[u8]) -> Result<i64, String> {
    let t = std::str::from_utf8(tok)
        .ok()
        .and_then(parse_float)
        .filter(|s| s.is_finite() && s.abs() < 9.2e15)
        .ok_or_else(|| format!("invalid timestamp {:?}", String::from_utf8_lossy(tok)))?;
    Ok((t * 1000.0).round() as i64)
}

/// Next token of an OpenMetrics sample's tail: `None` at the end of the
/// line, else exactly one space and a non-empty token.
fn om_token<'l>(l: &'l [u8], p: &mut usize) -> Result<Option<&'l [u8]>, String> {
    if *p >= l.len() {
        return Ok(None);
    }
    if l[*p] != b' ' {
        return Err(format!(
            "unexpected character {:?} (OpenMetrics separates tokens with one space)",
            char::from(l[*p])
        ));
    }
    *p += 1;
    let s = *p;
    while *p < l.len() && l[*p] != b' ' {
        *p += 1;
    }
    if s == *p {
        return Err("unexpected blank (OpenMetrics separates tokens with one space)".into());
    }
    Ok(Some(&l[s..*p]))
}

/// Parse `value [timestamp] [# {exemplar labels} value [timestamp]]` of an
/// OpenMetrics sample, starting at `p` (end of name or label set).
fn parse_value_ts_om(l: &[u8], p: usize, exemplar_ok: bool) -> Result<(f64, Option<i64>), String> {
    let mut p = p;
    let vt = om_token(l, &mut p)?.ok_or("missing value")?;
    let value = std::str::from_utf8(vt)
        .ok()
        .and_then(parse_float)
        .ok_or_else(|| format!("invalid value {:?}", String::from_utf8_lossy(vt)))?;
    let mut t = om_token(l, &mut p)?;
    let mut ts = None;
    if let Some(tok) = t.filter(|t| *t != b"#") {
        ts = Some(om_timestamp_ms(tok)?);
        t = om_token(l, &mut p)?;
    }
    match t {
        None => return Ok((value, ts)),
        Some(b"#") => {}
        Some(_) => return Err("unexpected text after timestamp".into()),
    }
    if !exemplar_ok {
        return Err("exemplar on a sample that cannot have one".into());
    }
    if l.get(p) != Some(&b' ') {
        return Err("exemplar without a label set".into());
    }
    let (after, chars) = scan_exemplar_labels(l, p + 1)?;
    if chars > EXEMPLAR_MAX_CHARS {
        return Err(format!(
            "exemplar labels of {chars} characters (limit {EXEMPLAR_MAX_CHARS})"
        ));
    }
    p = after;
    let ev = om_token(l, &mut p)
        .map_err(|e| format!("exemplar: {e}"))?
        .ok_or("exemplar without a value")?;
    std::str::from_utf8(ev)
        .ok()
        .and_then(parse_float)
        .ok_or_else(|| format!("invalid exemplar value {:?}", String::from_utf8_lossy(ev)))?;
    if let Some(et) = om_token(l, &mut p).map_err(|e| format!("exemplar: {e}"))? {
        om_timestamp_ms(et).map_err(|e| format!("exemplar: {e}"))?;
    }
    if p < l.len() {
        return Err("unexpected text after exemplar".into());
    }
    Ok((value, ts))
}

fn trim_blanks_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

fn split_word_b(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, &[]),
    }
}

/// Parse `[ws] value [ws timestamp] [ws]` starting at `p` (which must be at
/// the end of the line or at a blank, unless it follows a `}`).
fn parse_value_ts(l: &[u8], mut p: usize, after_brace: bool) -> Result<(f64, Option<i64>), String> {
    if !after_brace && p < l.len() && !(l[p] == b' ' || l[p] == b'\t') {
        return Err(format!(
            "unexpected character {:?} after metric name/labels",
            char::from(l[p])
        ));
    }
    while p < l.len() && (l[p] == b' ' || l[p] == b'\t') {
        p += 1;
    }
    let (value, end) = match scan_decimal(l, p) {
        Some(v) => v,
        None => {
            let vs = p;
            while p < l.len() && !(l[p] == b' ' || l[p] == b'\t') {
                p += 1;
            }
            if vs == p {
                return Err("missing value".into());
            }
            let vtok = std::str::from_utf8(&l[vs..p]).map_err(|_| "invalid UTF-8 in value")?;
            (
                parse_float(vtok).ok_or_else(|| format!("invalid value {vtok:?}"))?,
                p,
            )
        }
    };
    p = end;
    if p == l.len() {
        return Ok((value, None));
    }
    while p < l.len() && (l[p] == b' ' || l[p] == b'\t') {
        p += 1;
    }
    let mut timestamp_ms = None;
    if p < l.len() {
        let ts = p;
        while p < l.len() && !(l[p] == b' ' || l[p] == b'\t') {
            p += 1;
        }
        let ttok = std::str::from_utf8(&l[ts..p]).map_err(|_| "invalid UTF-8 in timestamp")?;
        timestamp_ms = Some(
            ttok.parse::<i64>()
                .map_err(|_| format!("invalid timestamp {ttok:?}"))?,
        );
        while p < l.len() && (l[p] == b' ' || l[p] == b'\t') {
            p += 1;
        }
        if p < l.len() {
            return Err("unexpected text after timestamp".into());
        }
    }
    Ok((value, timestamp_ms))
}

/// A hash of a family name and type (identifies the family context).
fn family_hash(name: &str, kind: MetricType) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(kind as u64).hash_one(name)
}

/// Result of [`Parser::next_hinted`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hinted<'a> {
    /// A fully parsed item.
    Item(Item<'a>),
    /// The line starts with the hinted key in the same family context: only
    /// value and timestamp were parsed.
    Known {
        /// Value.
        value: f64,
        /// Optional timestamp (ms).
        timestamp_ms: Option<i64>,
        /// 1-based line number.
        line: u32,
    },
}

const fn char_table(colon: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'_' || (colon && b == b':');
        i += 1;
    }
    t
}

static NAME_CHARS: [bool; 256] = char_table(true);
static LABEL_CHARS: [bool; 256] = char_table(false);

#[inline]
fn is_name_char(b: u8) -> bool {
    NAME_CHARS[b as usize]
}

#[inline]
fn is_label_char(b: u8) -> bool {
    LABEL_CHARS[b as usize]
}

fn valid_metric_name(n: &[u8]) -> bool {
    match n.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' || *c == b':' => {
            n.iter().all(|&b| is_name_char(b))
        }
        _ => false,
    }
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Exact fast path for plain decimals (`-123.456`): mantissa < 2^53 and at
/// most 22 fraction digits give a correctly rounded quotient.
#[inline]
fn fast_decimal(b: &[u8]) -> Option<f64> {
    let (neg, mut i) = match b.first()? {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    let mut mant: u64 = 0;
    let mut digits = 0u32;
    let mut frac = 0usize;
    let mut dot = false;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            if digits >= 17 {
                return None;
            }
            mant = mant * 10 + u64::from(c - b'0');
            if mant != 0 {
                digits += 1;
            }
            frac += usize::from(dot);
        } else if c == b'.' && !dot {
            dot = true;
        } else {
            return None;
        }
        i += 1;
    }
    if mant > (1u64 << 53) || frac >= POW10.len() || b.len() == usize::from(neg) + usize::from(dot)
    {
        return None;
    }
    let v = mant as f64 / POW10[frac];
    Some(if neg { -v } else { v })
}

/// [`fast_decimal`] fused with finding the end of the value token: parse
/// `l[p..]` up to the next blank, newline or the end as a plain decimal
/// (`-123.456`); returns the value and where the token ends. `None` when
/// the token is anything else (exponent, `NaN`, too many digits, a bad
/// character): the caller then takes the general path, which gives the
/// same value or the error. One pass over the bytes instead of two: value
/// parsing was 25% of `scrape_page`'s instructions (callgrind,
/// `examples/bench_parts scrape`).
#[inline(always)]
fn scan_decimal(l: &[u8], p: usize) -> Option<(f64, usize)> {
    let rest = l.get(p..)?;
    // The commonest value of a node's page (a third of the built-in
    // fleet's): one digit, a state or a flag.
    if let [d, b' ' | b'\t' | b'\n', ..] = rest
        && d.wrapping_sub(b'0') < 10
    {
        return Some((f64::from(d - b'0'), p + 1));
    }
    let (neg, body) = match rest {
        [b'-', body @ ..] => (true, body),
        [b'+', body @ ..] => (false, body),
        _ => (false, rest),
    };
    let (mut mant, mut i) = digits(body, 0, 0);
    let mut frac = 0;
    let dot = body.get(i) == Some(&b'.');
    if dot {
        let from = i + 1;
        (mant, i) = digits(body, from, mant);
        frac = i - from;
    }
    if !matches!(body.get(i), None | Some(b' ' | b'\t' | b'\n')) {
        return None;
    }
    let count = i - usize::from(dot);
    // At most 19 digits cannot overflow a u64; mant <= 2^53 and an exact
    // power of ten make the quotient correctly rounded.
    if count == 0 || count > 19 || mant > (1u64 << 53) {
        return None;
    }
    let v = mant as f64 / *POW10.get(frac)?;
    Some((if neg { -v } else { v }, p + (rest.len() - body.len()) + i))
}

/// The ASCII digits of `l` from `i` on, appended to `mant` (wrapping:
/// callers reject more than 19 digits), and where they end: one test per
/// byte.
#[inline(always)]
fn digits(l: &[u8], mut i: usize, mut mant: u64) -> (u64, usize) {
    while let Some(d) = l.get(i).map(|c| c.wrapping_sub(b'0')).filter(|d| *d < 10) {
        mant = mant.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    (mant, i)
}

/// Parse a sample value: decimal/exponent floats, `NaN`, `+Inf`, `-Inf`, `Inf`.
#[inline]
pub fn parse_float(s: &str) -> Option<f64> {
    if let Some(v) = fast_decimal(s.as_bytes()) {
        return Some(v);
    }
    match s.as_bytes().first() {
        Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'N' | b'n' | b'I' | b'i') => s.parse::<f64>().ok(),
        _ => None,
    }
}

/// An owned sample, as collected by [`parse_families`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnedSample {
    /// Sample name (e.g. `foo_bucket`).
    pub name: String,
    /// Decoded labels in page order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
    /// Optional timestamp (ms).
    pub timestamp_ms: Option<i64>,
}

/// A metric family with all of its samples, as collected by [`parse_families`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricFamily {
    /// Family name.
    pub name: String,
    /// Decoded HELP text.
    pub help: Option<String>,
    /// Declared type.
    pub kind: MetricType,
    /// Samples in page order.
    pub samples: Vec<OwnedSample>,
}

/// Parse a whole text-format page into owned families (convenient,
/// allocating; the scan path uses [`Parser`] directly).
pub fn parse_families(src: &[u8]) -> Result<Vec<MetricFamily>, ParseError> {
    parse_families_with(src, Format::Text)
}

/// [`parse_families`] by the rules of `format`.
pub fn parse_families_with(src: &[u8], format: Format) -> Result<Vec<MetricFamily>, ParseError> {
    let mut fams: Vec<MetricFamily> = Vec::new();
    let mut help: Vec<(String, String)> = Vec::new();
    fn fam_for<'f>(
        fams: &'f mut Vec<MetricFamily>,
        name: &str,
        kind: MetricType,
    ) -> &'f mut MetricFamily {
        let need_new = fams.last().is_none_or(|f| f.name != name);
        if need_new {
            fams.push(MetricFamily {
                name: name.to_string(),
                help: None,
                kind,
                samples: Vec::new(),
            });
        }
        let n = fams.len() - 1;
        &mut fams[n]
    }
    let mut cur_family = String::new();
    for item in Parser::with_format(src, format) {
        match item? {
            Item::Help { name, text } => help.push((name.to_string(), unescape(text))),
            Item::Type { name, kind } => {
                cur_family = name.to_string();
                fam_for(&mut fams, name, kind).kind = kind;
            }
            Item::Comment(_) => {}
            Item::Sample(s) => {
                let fname = if !matches!(s.family_type, MetricType::Untyped | MetricType::Unknown)
                    || s.name == cur_family
                {
                    cur_family.clone()
                } else {
                    s.name.to_string()
                };
                let f = fam_for(&mut fams, &fname, s.family_type);
                f.samples.push(OwnedSample {
                    name: s.name.to_string(),
                    labels: s
                        .labels
                        .iter()
                        .map(|(n, v)| (n.to_string(), v.into_owned()))
                        .collect(),
                    value: s.value,
                    timestamp_ms: s.timestamp_ms,
                });
            }
        }
    }
    for (name, text) in help {
        if let Some(f) = fams.iter_mut().find(|f| f.name == name) {
            f.help = Some(text);
        }
    }
    Ok(fams)
}

#[cfg(test)]
mod tests;
