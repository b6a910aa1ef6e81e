//! Comment lines remembered from a host's previous page.
//!
//! A scrape of a known host finds most comment lines (`# HELP`, `# TYPE`)
//! byte for byte where the previous page had them. [`CommentRuns`] keeps
//! each run of comment lines between two samples with the family context it
//! leaves behind; the parser skips a run found again at the same place
//! (after the same number of samples) and takes its recorded effect instead
//! of parsing its lines. On the built-in fleet's pages (a third of the lines
//! are comments) that is a fifth of a steady scrape's instructions.
//!
//! Skipping stays exact: it only defers the duplicate HELP/TYPE checks. The
//! first comment of a page that is not skipped replays every skipped line
//! into the parser's sets before it is parsed, and no run is skipped after
//! it on that page. The runs a page skipped were recorded in one earlier
//! parse, in the same order, where they passed those checks together.

use super::{Format, MetricType, Parser};

/// The comment runs of a host's last page (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct CommentRuns {
    runs: Vec<Run>,
    bytes: Vec<u8>,
    /// The run expected next on the page being parsed.
    next: usize,
    /// This page differs from the runs: they are being rewritten from it.
    recording: bool,
    /// Where the run being recorded starts and ends on the page.
    run_from: usize,
    run_to: usize,
}

#[derive(Debug, Clone)]
struct Run {
    /// Samples on the page before the run.
    before: usize,
    /// The run's lines in `bytes`, each ending with `\n`.
    start: usize,
    end: usize,
    lines: u32,
    /// The family context a `# TYPE` line of the run leaves.
    family: Option<RunFamily>,
}

/// The family a run's last `# TYPE` line names: where the name is in the
/// run, and the type.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunFamily {
    pub(super) at: usize,
    pub(super) len: usize,
    pub(super) kind: MetricType,
    pub(super) hash: u64,
}

/// Where the parser stood before a line: see [`CommentRuns::record`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pos: usize,
    line: u32,
}

impl CommentRuns {
    /// Start on a new page of the host.
    pub fn begin(&mut self) {
        self.next = 0;
        self.recording = false;
    }

    /// If the lines at the parser's position are the run expected after
    /// `samples` samples, skip them and return true.
    #[inline]
    pub fn skip(&mut self, p: &mut Parser<'_>, samples: usize) -> bool {
        let Some(r) = self.runs.get(self.next) else {
            return false;
        };
        if r.before != samples || !p.skip_comments(&self.bytes[r.start..r.end], r.lines, r.family) {
            return false;
        }
        self.next += 1;
        true
    }

    /// Remember the comment line the parser just read from `from` on,
    /// after `samples` samples of the page.
    pub fn record(&mut self, p: &Parser<'_>, samples: usize, from: Mark) {
        if !self.recording {
            self.recording = true;
            self.runs.truncate(self.next);
            self.bytes.truncate(self.runs.last().map_or(0, |r| r.end));
            self.run_to = usize::MAX;
        }
        let Some(text) = p.src.get(from.pos..p.pos) else {
            return;
        };
        let extends =
            self.run_to == from.pos && self.runs.last().is_some_and(|r| r.before == samples);
        if !extends {
            self.run_from = from.pos;
            self.runs.push(Run {
                before: samples,
                start: self.bytes.len(),
                end: self.bytes.len(),
                lines: 0,
                family: None,
            });
        }
        self.run_to = p.pos;
        self.bytes.extend_from_slice(text);
        let run_from = self.run_from;
        if let Some(r) = self.runs.last_mut() {
            r.end = self.bytes.len();
            r.lines += p.line - from.line;
            if p.family_at >= run_from && !p.family.is_empty() {
                r.family = Some(RunFamily {
                    at: p.family_at - run_from,
                    len: p.family.len(),
                    kind: p.family_type,
                    hash: p.fam_hash,
                });
            }
        }
    }

    /// End of the page: forget the runs it did not have.
    pub fn end(&mut self) {
        if !self.recording {
            self.runs.truncate(self.next);
            self.bytes.truncate(self.runs.last().map_or(0, |r| r.end));
        }
    }
}

impl<'a> Parser<'a> {
    /// Where the parser stands (for [`CommentRuns::record`]).
    pub fn mark(&self) -> Mark {
        Mark {
            pos: self.pos,
            line: self.line,
        }
    }

    /// Skip `run` (`lines` whole comment lines) if the page continues with
    /// exactly those bytes, leaving the family context `family` sets.
    fn skip_comments(&mut self, run: &[u8], lines: u32, family: Option<RunFamily>) -> bool {
        if self.no_skip || self.failed || self.format != Format::Text || run.last() != Some(&b'\n')
        {
            return false;
        }
        let Some(rest) = self.src.get(self.pos..) else {
            return false;
        };
        if !rest.starts_with(run) {
            return false;
        }
        if let Some(f) = family {
            let at = self.pos + f.at;
            let Some(name) = self
                .src
                .get(at..at + f.len)
                .and_then(|b| std::str::from_utf8(b).ok())
            else {
                return false;
            };
            self.family = name;
            self.family_at = at;
            self.family_type = f.kind;
            self.fam_hash = f.hash;
        }
        self.pos += run.len();
        self.line = self.line.saturating_add(lines);
        self.skipped_to = self.pos;
        true
    }

    /// Called before a comment line is parsed: from now on nothing is
    /// skipped on this page, and the lines skipped so far enter the
    /// duplicate checks first.
    pub(super) fn stop_skipping(&mut self) -> Result<(), String> {
        if self.no_skip {
            return Ok(());
        }
        self.no_skip = true;
        let end = std::mem::take(&mut self.skipped_to);
        if end == 0 {
            return Ok(());
        }
        let context = (self.family, self.family_at, self.family_type, self.fam_hash);
        let src = self.src;
        let mut at = 0;
        while at < end {
            let rest = &src[at..end];
            let (line, adv) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], i + 1),
                None => (rest, rest.len()),
            };
            at += adv;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = super::trim_blanks_start(line);
            if line.first() == Some(&b'#') {
                self.parse_comment(line)?;
            }
        }
        (self.family, self.family_at, self.family_type, self.fam_hash) = context;
        Ok(())
    }
}
