//! Parser for the Prometheus text exposition format (version 0.0.4).
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
//! Malformed input yields a [`ParseError`] with the 1-based line number and a
//! reason; the parser never panics. After an error the iterator is fused.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// No `# TYPE` line (or explicitly `untyped`).
    Untyped,
}

impl MetricType {
    fn from_word(w: &str) -> Option<Self> {
        Some(match w {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "summary" => Self::Summary,
            "untyped" => Self::Untyped,
            _ => return None,
        })
    }
}

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
    /// `_count` of a histogram or summary.
    Count,
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
    /// `name{labels}` exactly as on the page; the identity of the series.
    pub key: &'a str,
    /// The value.
    pub value: f64,
    /// Optional timestamp in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Type of the family this sample belongs to.
    pub family_type: MetricType,
    /// Role within the family.
    pub role: SampleRole,
    /// 1-based line number.
    pub line: u32,
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

/// Streaming parser; an iterator of `Result<Item, ParseError>`.
#[derive(Debug)]
pub struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    line: u32,
    family: &'a str,
    family_type: MetricType,
    typed: Vec<&'a str>,
    failed: bool,
    fam_hash: u64,
}

impl<'a> Parser<'a> {
    /// Parse `src`.
    pub fn new(src: &'a [u8]) -> Self {
        Parser {
            src,
            pos: 0,
            line: 0,
            family: "",
            family_type: MetricType::Untyped,
            typed: Vec::new(),
            failed: false,
            fam_hash: family_hash("", MetricType::Untyped),
        }
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
        let rest = &l[1..];
        let text = std::str::from_utf8(rest).map_err(|_| "invalid UTF-8 in comment".to_string())?;
        let t = text.trim_start_matches([' ', '\t']);
        if t.len() == text.len() {
            return Ok(Item::Comment(text));
        }
        let (word, after) = split_word(t);
        match word {
            "HELP" | "TYPE" => {
                let after = after.trim_start_matches([' ', '\t']);
                let (name, rest) = split_word(after);
                if name.is_empty() {
                    return Err(format!("{word} line without a metric name"));
                }
                if !valid_metric_name(name.as_bytes()) {
                    return Err(format!("invalid metric name {name:?} in {word} line"));
                }
                let rest = rest.trim_start_matches([' ', '\t']);
                if word == "HELP" {
                    return Ok(Item::Help { name, text: rest });
                }
                let (kw, tail) = split_word(rest);
                if !tail.trim().is_empty() {
                    return Err(format!("unexpected text after type in TYPE line: {tail:?}"));
                }
                let kind = MetricType::from_word(kw)
                    .ok_or_else(|| format!("unknown metric type {kw:?} for {name}"))?;
                if self.typed.contains(&name) {
                    return Err(format!("second TYPE line for metric {name}"));
                }
                self.typed.push(name);
                self.family = name;
                self.family_type = kind;
                self.fam_hash = family_hash(name, kind);
                Ok(Item::Type { name, kind })
            }
            _ => Ok(Item::Comment(text)),
        }
    }

    fn parse_sample(&mut self, l: &'a [u8]) -> Result<Sample<'a>, String> {
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
        let mut le = None;
        let mut quantile = None;
        let mut label_range = (p, p);
        let mut key_end = p;
        let mut q = p;
        while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
            q += 1;
        }
        if q < l.len() && l[q] == b'{' {
            q += 1;
            let ls = q;
            let mut names: [&[u8]; 16] = [&[]; 16];
            let mut n_names = 0usize;
            loop {
                while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
                    q += 1;
                }
                match l.get(q) {
                    None => return Err("unterminated label set (missing '}')".into()),
                    Some(b'}') => break,
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
                if names[..n_names].contains(&lname) {
                    return Err(format!(
                        "duplicate label {:?}",
                        String::from_utf8_lossy(lname)
                    ));
                }
                if n_names < names.len() {
                    names[n_names] = lname;
                    n_names += 1;
                }
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
                if l.get(q) != Some(&b'"') {
                    return Err(format!(
                        "expected '\"' to open value of label {:?}",
                        String::from_utf8_lossy(lname)
                    ));
                }
                q += 1;
                let vs = q;
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
                        Some(b'"') => break,
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
                let raw = &l[vs..q];
                q += 1;
                if lname == b"le" || lname == b"quantile" {
                    let v = std::str::from_utf8(raw).map_err(|_| "invalid UTF-8 in label value")?;
                    let v = if escaped {
                        Cow::Owned(unescape(v))
                    } else {
                        Cow::Borrowed(v)
                    };
                    let f = parse_float(v.trim()).ok_or_else(|| {
                        format!(
                            "invalid {} label value {v:?}",
                            String::from_utf8_lossy(lname)
                        )
                    })?;
                    if lname == b"le" {
                        le = Some(f);
                    } else {
                        quantile = Some(f);
                    }
                }
                while q < l.len() && (l[q] == b' ' || l[q] == b'\t') {
                    q += 1;
                }
                match l.get(q) {
                    Some(b',') => q += 1,
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
            label_range = (ls, q);
            q += 1; // '}'
            key_end = q;
            p = q;
        }
        let (value, timestamp_ms) = parse_value_ts(l, p)?;
        let key =
            std::str::from_utf8(&l[..key_end]).map_err(|_| "invalid UTF-8 in series labels")?;
        let name = key.get(..name_end).ok_or("invalid metric name")?;
        let labels = RawLabels(key.get(label_range.0..label_range.1).unwrap_or(""));

        // Family association.
        let fam = self.family;
        let (family_type, role) = if !fam.is_empty()
            && name.len() >= fam.len()
            && name.starts_with(fam)
        {
            let suffix = &name[fam.len()..];
            match (self.family_type, suffix) {
                (MetricType::Histogram, "_bucket") => match le {
                    Some(le) => (MetricType::Histogram, SampleRole::Bucket { le }),
                    None => return Err(format!("histogram bucket {name} without 'le' label")),
                },
                (MetricType::Histogram | MetricType::Summary, "_sum") => {
                    (self.family_type, SampleRole::Sum)
                }
                (MetricType::Histogram | MetricType::Summary, "_count") => {
                    (self.family_type, SampleRole::Count)
                }
                (MetricType::Summary, "") => match quantile {
                    Some(q) => (MetricType::Summary, SampleRole::Quantile { q }),
                    None => return Err(format!("summary sample {name} without 'quantile' label")),
                },
                (MetricType::Histogram, "") => {
                    return Err(format!(
                        "histogram sample {name} needs a _bucket/_sum/_count suffix"
                    ));
                }
                (t @ (MetricType::Counter | MetricType::Gauge | MetricType::Untyped), "") => {
                    (t, SampleRole::Plain)
                }
                _ => (MetricType::Untyped, SampleRole::Plain),
            }
        } else {
            (MetricType::Untyped, SampleRole::Plain)
        };
        Ok(Sample {
            name,
            labels,
            key,
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

    /// Like [`Iterator::next`], but when the next sample line starts with
    /// `hint.0` (a key seen earlier, followed by a blank) and the family
    /// context equals `hint.1`, the key is not re-parsed: same bytes in the
    /// same context were already validated.
    pub fn next_hinted(
        &mut self,
        hint: Option<(&[u8], u64)>,
    ) -> Option<Result<Hinted<'a>, ParseError>> {
        if self.failed {
            return None;
        }
        loop {
            if self.pos >= self.src.len() {
                return None;
            }
            let rest = &self.src[self.pos..];
            let (mut l, adv) = match memchr_nl(rest) {
                Some(i) => (&rest[..i], i + 1),
                None => (rest, rest.len()),
            };
            self.pos += adv;
            self.line = self.line.saturating_add(1);
            if let [head @ .., b'\r'] = l {
                l = head;
            }
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
                return match parse_value_ts(l, key.len()) {
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

/// Position of the first `\n` (word-at-a-time search).
#[inline]
fn memchr_nl(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const PAT: u64 = LO * b'\n' as u64;
    let mut i = 0;
    while i + 8 <= s.len() {
        let mut a = [0u8; 8];
        a.copy_from_slice(&s[i..i + 8]);
        let w = u64::from_le_bytes(a) ^ PAT;
        let z = w.wrapping_sub(LO) & !w & HI;
        if z != 0 {
            return Some(i + (z.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..].iter().position(|&b| b == b'\n').map(|p| i + p)
}

/// Parse `[ws] value [ws timestamp] [ws]` starting at `p` (which must be at
/// the end of the line or at a blank).
fn parse_value_ts(l: &[u8], mut p: usize) -> Result<(f64, Option<i64>), String> {
    if p < l.len() && !(l[p] == b' ' || l[p] == b'\t') {
        return Err(format!(
            "unexpected character {:?} after metric name/labels",
            char::from(l[p])
        ));
    }
    while p < l.len() && (l[p] == b' ' || l[p] == b'\t') {
        p += 1;
    }
    let vs = p;
    while p < l.len() && !(l[p] == b' ' || l[p] == b'\t') {
        p += 1;
    }
    if vs == p {
        return Err("missing value".into());
    }
    let value = match fast_decimal(&l[vs..p]) {
        Some(v) => v,
        None => {
            let vtok = std::str::from_utf8(&l[vs..p]).map_err(|_| "invalid UTF-8 in value")?;
            parse_float(vtok).ok_or_else(|| format!("invalid value {vtok:?}"))?
        }
    };
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

/// FNV-1a of a family name and type (identifies the family context).
fn family_hash(name: &str, kind: MetricType) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (kind as u64);
    for &b in name.as_bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
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

fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
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

/// Parse a whole page into owned families (convenient, allocating; the scan
/// path uses [`Parser`] directly).
pub fn parse_families(src: &[u8]) -> Result<Vec<MetricFamily>, ParseError> {
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
    for item in Parser::new(src) {
        match item? {
            Item::Help { name, text } => help.push((name.to_string(), unescape(text))),
            Item::Type { name, kind } => {
                cur_family = name.to_string();
                fam_for(&mut fams, name, kind).kind = kind;
            }
            Item::Comment(_) => {}
            Item::Sample(s) => {
                let fname = if s.family_type != MetricType::Untyped || s.name == cur_family {
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
