//! Per-host state and the per-host, per-round pure function [`scrape_round`].
//!
//! Series are interned by their identity (metric name plus sorted labels,
//! [`crate::expfmt::Sample::series_key`]), found through a 64-bit hash whose
//! hits are always confirmed by comparing the full identity (series whose
//! hashes collide are chained, never merged); per series state lives in
//! flat `Vec`s indexed by a dense series index. The identities themselves
//! are shared by the hosts a thread scans (one copy per series, not per
//! host: a third less memory on a node exporter's page). Checks
//! are bound to series once, when a series first appears; histories exist only
//! for bound series of checks that ask for them, so memory is flat across
//! rounds.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::checks::{
    Checks, History, HostView, Observation, PageLookup, Prev, SeriesInfo, SeriesView,
};
use crate::expfmt::{CommentRuns, Format, Hinted, Item, MetricType, Parser, RawLabels};

/// Kind string of findings about a target that could not be scraped.
pub const SCRAPE_KIND: &str = "scrape";

/// One finding: an anomaly of a check on a host's series in a round, or a
/// scrape problem (kind [`SCRAPE_KIND`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Host id.
    pub host: u32,
    /// Round.
    pub round: u64,
    /// Check (rule) name; for scrape problems one of `unreachable`,
    /// `timeout`, `http_status`, `oversize`, `malformed`, `tls`, `bad_url`, `http`.
    pub check: String,
    /// Check kind (`threshold`, `rate`, ..., `scrape`).
    pub kind: String,
    /// Series key `name{labels}` (metric name for `absent`, empty for scrape).
    pub series: String,
    /// Offending value (0 when not applicable).
    pub value: f64,
    /// Explanation.
    pub message: String,
}

/// A value contributed by a host to a fleet-level check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetValue {
    /// Index of the check in the [`Checks`] registry.
    pub check: u32,
    /// Series key.
    pub series: String,
    /// Host id.
    pub host: u32,
    /// Value.
    pub value: f64,
}

/// The result of scraping one host in one round (small, serde; crosses processes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostRound {
    /// Host id.
    pub host: u32,
    /// Round.
    pub round: u64,
    /// Samples parsed.
    pub points: u64,
    /// Page bytes.
    pub bytes: u64,
    /// True when the scrape failed (see findings).
    pub failed: bool,
    /// Samples dropped because their series already appeared earlier on
    /// the same page (the page is kept, as Prometheus does).
    #[serde(default)]
    pub duplicates: u64,
    /// Findings of this host (anomalies and scrape problems).
    pub findings: Vec<Finding>,
    /// Values for fleet-level checks.
    pub fleet_values: Vec<FleetValue>,
    /// Series inside a rule's hysteresis band (see [`crate::Check::hold`]):
    /// not anomalies, but they keep a firing alert firing.
    #[serde(default)]
    pub holds: Vec<Finding>,
    /// Seconds the fetch and the checks took.
    #[serde(default)]
    pub secs: f64,
    /// The host's state after this round, when the runner asked for it.
    #[serde(default)]
    pub state: Option<StateUpdate>,
    /// Not scraped: the worker has no state for the host and the parent
    /// has a checkpoint to give it (see `WorkerState::scrape_checkpointed`).
    #[serde(default)]
    pub need_state: bool,
    /// Not scraped: a round the worker had already applied to the host
    /// (see [`HostRound::stale`]). Counts as neither a scrape nor a
    /// failure.
    #[serde(default)]
    pub stale: bool,
}

impl HostRound {
    /// Not scraped: the worker cannot scrape the host as asked (it has no
    /// state for it, or not the one the parent has) and asks the parent
    /// for its copy (see `WorkerState::scrape_checkpointed`).
    pub fn need_state(host: u32, round: u64) -> Self {
        HostRound {
            host,
            round,
            need_state: true,
            ..HostRound::default()
        }
    }

    /// Not scraped: the worker already applied this round, or a later one,
    /// to the host's state (a redelivered or repeated scrape); nothing
    /// was fetched and the state was left as it was.
    pub fn stale(host: u32, round: u64) -> Self {
        HostRound {
            host,
            round,
            stale: true,
            ..HostRound::default()
        }
    }

    /// A failed scrape: one finding of kind [`SCRAPE_KIND`].
    pub fn failed(host: u32, round: u64, check: &str, message: String) -> Self {
        HostRound {
            host,
            round,
            failed: true,
            findings: vec![Finding {
                host,
                round,
                check: check.to_string(),
                kind: SCRAPE_KIND.to_string(),
                series: String::new(),
                value: 0.0,
                message,
            }],
            ..HostRound::default()
        }
    }
}

/// The part of a host's state that its checks need from one round to the
/// next, small enough to cross to the parent every round: only the series
/// some check watches (with their last value, time, round seen and
/// histories), not the whole page. A replacement worker rebuilds the
/// host's state from it ([`HostState::restore`]); the rest of the series
/// are interned again at its next scrape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostCheckpoint {
    /// Host id.
    pub host: u32,
    /// Round of the last successful scrape.
    pub prev_round: Option<u64>,
    /// The watched series.
    pub series: Vec<SeriesCheckpoint>,
}

/// One watched series in a [`HostCheckpoint`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesCheckpoint {
    /// `name{labels}`.
    pub key: String,
    /// Length of the name in `key`.
    pub name_len: u32,
    /// Family type.
    pub family_type: MetricType,
    /// Last value.
    pub value: f64,
    /// Its time (seconds).
    pub time: f64,
    /// Round last seen (None: never).
    pub last_seen: Option<u64>,
    /// Histories of the checks that keep one for it, in check order.
    pub histories: Vec<Vec<f64>>,
    /// Capacity of each history.
    pub caps: Vec<u32>,
    /// Whether a check needs its values round by round (else only whether
    /// it was seen).
    pub values: bool,
}

/// What changed in a host's watched series in one round, relative to the
/// parent's copy of `base` series ([`HostCheckpoint::apply`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostDelta {
    /// Host id.
    pub host: u32,
    /// The round scraped.
    pub round: u64,
    /// False when the scrape did not change the state (failed, malformed).
    pub updated: bool,
    /// Series the parent's copy must have.
    pub base: u32,
    /// Series watched since (full records).
    pub added: Vec<SeriesCheckpoint>,
    /// Positions (< base) of watched series not seen this round.
    pub missing: Vec<u32>,
    /// Positions (< base), values and times of series seen this round whose
    /// values a check needs.
    pub values: Vec<(u32, f64, f64)>,
    /// Positions (< base) and values of the other series seen this round
    /// whose value changed (their last value is kept, not their time).
    pub changed: Vec<(u32, f64)>,
}

/// What the parent has of a host's history, as it tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentCopy {
    /// A copy of this many series: send the changes.
    Has(u32),
    /// No copy: send a full checkpoint.
    SendFull,
    /// No copy, and not this round (full checkpoints are spread over
    /// rounds to bound the parent's memory): send nothing.
    Later,
}

/// A host's state as the worker hands it to the parent after a round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StateUpdate {
    /// The whole checkpoint (the parent had none, or a different one).
    Full(HostCheckpoint),
    /// The changes since the parent's copy.
    Delta(HostDelta),
}

impl StateUpdate {
    /// Host id.
    pub fn host(&self) -> u32 {
        match self {
            StateUpdate::Full(c) => c.host,
            StateUpdate::Delta(d) => d.host,
        }
    }
}

impl HostCheckpoint {
    /// Apply a round's delta to the parent's copy. False (copy unchanged)
    /// when it does not fit (the copy has another number of series).
    pub fn apply(&mut self, d: &HostDelta) -> bool {
        if d.host != self.host || d.base as usize != self.series.len() {
            return false;
        }
        self.series.extend(d.added.iter().cloned());
        if !d.updated {
            return true;
        }
        self.prev_round = Some(d.round);
        let base = d.base as usize;
        let mut missing = d.missing.iter().copied().peekable();
        for (i, s) in self.series[..base].iter_mut().enumerate() {
            if missing.peek() == Some(&(i as u32)) {
                missing.next();
            } else {
                s.last_seen = Some(d.round);
            }
        }
        for &(i, v) in &d.changed {
            if let Some(s) = self.series.get_mut(i as usize) {
                s.value = v;
            }
        }
        for &(i, v, t) in &d.values {
            let Some(s) = self.series.get_mut(i as usize) else {
                continue;
            };
            s.value = v;
            s.time = t;
            for (h, &cap) in s.histories.iter_mut().zip(&s.caps) {
                h.push(v);
                let over = h.len().saturating_sub(cap as usize);
                h.drain(..over);
            }
        }
        true
    }
}

/// The hasher of maps whose keys already are hashes ([`hash_key`]): it
/// passes the key through. Hashing them again (foldhash) cost 17% of
/// `scrape_round`'s throughput in `examples/bench_parts` (9.1 vs 11.0 M
/// points/s, same run).
#[derive(Default, Clone, Copy)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// 64-bit hash of a series key: foldhash, with a fixed seed so that every
/// process of a run agrees (keys cross between workers and the parent).
#[inline]
pub fn hash_key(b: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x7365_7269_6573).hash_one(b)
}

const NEVER: u64 = u64::MAX;

#[derive(Debug, Clone)]
struct Meta {
    /// The series' identity, shared with every other host of this thread
    /// that has the same series ([`shared_key`]).
    key: Arc<str>,
    name_len: u32,
    /// Next series whose key has the same hash ([`NONE`] ends the chain).
    next: u32,
    fam: u64,
}

/// End of a hash chain.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Binding {
    series: u32,
    hist: u32,
}

#[derive(Debug, Default)]
struct Table {
    index: HashMap<u64, u32, BuildHasherDefault<PreHashed>>,
    meta: Vec<Meta>,
    types: Vec<MetricType>,
    slots: Vec<Slot>,
}

/// Hot per-series state, one cache line per series.
#[derive(Debug, Clone, Copy)]
struct Slot {
    value: f64,
    time: f64,
    last_seen: u64,
    prev_value: f64,
    prev_time: f64,
    prev_seen: u64,
    mark: u64,
}

impl Table {
    /// The series whose identity is `key` (hash `h`): a hash hit is
    /// confirmed by comparing the full key, and colliding series are
    /// chained.
    #[inline]
    fn find(&self, h: u64, key: &str) -> Option<u32> {
        let mut i = *self.index.get(&h)?;
        while i != NONE {
            if self.key(i as usize) == key {
                return Some(i);
            }
            i = self.meta[i as usize].next;
        }
        None
    }

    fn key(&self, i: usize) -> &str {
        &self.meta[i].key
    }
    fn name(&self, i: usize) -> &str {
        let m = &self.meta[i];
        m.key.get(..m.name_len as usize).unwrap_or("")
    }
}

/// Series identities interned by this thread, shared by its hosts.
#[derive(Default)]
struct SharedKeys {
    keys: HashMap<u64, Arc<str>, BuildHasherDefault<PreHashed>>,
    /// Size after the last sweep of keys no host holds any more.
    swept: usize,
}

thread_local! {
    static SHARED_KEYS: RefCell<SharedKeys> = RefCell::new(SharedKeys::default());
}

/// `key` (hash `h`) as an identity shared with the other hosts of this
/// thread: a fleet's hosts mostly expose the same series, so a thread
/// scanning hundreds of hosts keeps one copy of each identity instead of
/// one per host, and the identities a page is compared with stay in the
/// cache from one host to the next. Identities no host holds any more are
/// dropped whenever the pool has doubled since the last sweep.
fn shared_key(h: u64, key: &str) -> Arc<str> {
    SHARED_KEYS
        .try_with(|pool| {
            let Ok(mut pool) = pool.try_borrow_mut() else {
                return Arc::from(key);
            };
            if let Some(k) = pool.keys.get(&h)
                && **k == *key
            {
                return k.clone();
            }
            if pool.keys.len() >= (pool.swept * 2).max(1 << 14) {
                pool.keys.retain(|_, k| Arc::strong_count(k) > 1);
                pool.swept = pool.keys.len();
            }
            let k: Arc<str> = Arc::from(key);
            // A colliding identity keeps the first one's place (and is not
            // shared).
            pool.keys.entry(h).or_insert_with(|| k.clone());
            k
        })
        // The thread is ending: nothing left to share with.
        .unwrap_or_else(|_| Arc::from(key))
}

struct Lookup<'a> {
    t: &'a Table,
    round: u64,
}

impl PageLookup for Lookup<'_> {
    fn value_of(&self, key: &str) -> Option<f64> {
        let i = self.t.find(hash_key(key.as_bytes()), key)? as usize;
        (self.t.slots[i].last_seen == self.round).then(|| self.t.slots[i].value)
    }
}

/// State of one host: its series and the checks' per-series state.
#[derive(Debug)]
pub struct HostState {
    host: u32,
    t: Table,
    order: Vec<u32>,
    bindings: Vec<Vec<Binding>>,
    hists: Vec<History>,
    prev_round: Option<u64>,
    scrapes: u64,
    /// Reused buffer for series identities written out of page order.
    scratch: String,
    /// Series bound to some check, in the order they were first bound.
    watched: Vec<Watched>,
    /// Whether the last scrape changed the state.
    updated: bool,
    /// The comment lines of the last page, skipped when found again.
    comments: CommentRuns,
}

/// A series bound to some check: its histories and whether a check needs
/// its values.
#[derive(Debug, Clone)]
struct Watched {
    series: u32,
    hists: Vec<u32>,
    values: bool,
}

impl HostState {
    /// Fresh state for `host`.
    pub fn new(host: u32) -> Self {
        HostState {
            host,
            t: Table::default(),
            order: Vec::new(),
            bindings: Vec::new(),
            hists: Vec::new(),
            prev_round: None,
            scrapes: 0,
            scratch: String::new(),
            watched: Vec::new(),
            updated: false,
            comments: CommentRuns::default(),
        }
    }

    /// Host id.
    pub fn host(&self) -> u32 {
        self.host
    }

    /// Record that this round's scrape did not reach the checks (the
    /// fetch failed): the state did not change.
    pub fn not_updated(&mut self) {
        self.updated = false;
    }

    /// Number of interned series.
    pub fn series_count(&self) -> usize {
        self.t.meta.len()
    }

    /// Round of the last successful scrape.
    pub fn last_round(&self) -> Option<u64> {
        self.prev_round
    }

    /// Current value of a series (`name{labels}`), if it was ever seen.
    pub fn value_of(&self, key: &str) -> Option<f64> {
        let i = self.t.find(hash_key(key.as_bytes()), key)? as usize;
        (self.t.slots[i].last_seen != NEVER).then(|| self.t.slots[i].value)
    }

    /// Number of series in [`HostState::checkpoint`].
    pub fn checkpoint_len(&self) -> u32 {
        self.watched.len() as u32
    }

    /// The watched series' state (see [`HostCheckpoint`]).
    pub fn checkpoint(&self) -> HostCheckpoint {
        HostCheckpoint {
            host: self.host,
            prev_round: self.prev_round,
            series: self
                .watched
                .iter()
                .map(|w| self.series_checkpoint(w))
                .collect(),
        }
    }

    fn series_checkpoint(&self, w: &Watched) -> SeriesCheckpoint {
        let (i, t) = (w.series as usize, &self.t);
        let sl = &t.slots[i];
        let hists = w.hists.iter().filter_map(|&h| self.hists.get(h as usize));
        SeriesCheckpoint {
            key: t.key(i).to_string(),
            name_len: t.meta[i].name_len,
            family_type: t.types.get(i).copied().unwrap_or(MetricType::Untyped),
            value: sl.value,
            // Only the checks that use past values need its time.
            time: if w.values { sl.time } else { 0.0 },
            last_seen: (sl.last_seen != NEVER).then_some(sl.last_seen),
            histories: hists.clone().map(|h| h.iter().collect()).collect(),
            caps: hists.map(|h| h.capacity() as u32).collect(),
            values: w.values,
        }
    }

    /// What the parent needs after this round's scrape, given that its copy
    /// has `parent_len` series (`None`: no copy): the changes since, or
    /// the whole checkpoint when the copy cannot be brought up to date.
    pub fn update_for(&self, parent_len: Option<u32>, round: u64) -> StateUpdate {
        let Some(base) = parent_len.filter(|&n| n as usize <= self.watched.len()) else {
            return StateUpdate::Full(self.checkpoint());
        };
        let mut d = HostDelta {
            host: self.host,
            round,
            updated: self.updated,
            base,
            added: self.watched[base as usize..]
                .iter()
                .map(|w| self.series_checkpoint(w))
                .collect(),
            ..HostDelta::default()
        };
        if self.updated {
            for (pos, w) in self.watched[..base as usize].iter().enumerate() {
                let sl = &self.t.slots[w.series as usize];
                if sl.last_seen != round {
                    d.missing.push(pos as u32);
                } else if w.values {
                    d.values.push((pos as u32, sl.value, sl.time));
                } else if sl.prev_seen == NEVER || sl.value.to_bits() != sl.prev_value.to_bits() {
                    d.changed.push((pos as u32, sl.value));
                }
            }
        }
        StateUpdate::Delta(d)
    }

    /// A host state rebuilt from a checkpoint, for `checks` (the same
    /// checks that made it; a series they no longer watch is skipped).
    pub fn restore(checks: &Checks, cp: &HostCheckpoint) -> Self {
        let mut st = HostState::new(cp.host);
        st.prev_round = cp.prev_round;
        for s in &cp.series {
            let name = s.key.get(..s.name_len as usize).unwrap_or("");
            let labels = s
                .key
                .get(s.name_len as usize..)
                .and_then(|l| l.strip_prefix('{'))
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or("");
            let info = SeriesInfo {
                name,
                labels: RawLabels(labels),
                key: &s.key,
                family_type: s.family_type,
            };
            let h = hash_key(s.key.as_bytes());
            if st.t.index.contains_key(&h) {
                continue;
            }
            let first_hist = st.hists.len();
            let idx = st.intern(checks, &info, h) as usize;
            if st.watched.last().is_none_or(|w| w.series as usize != idx) {
                continue; // no longer watched (other checks)
            }
            for (k, hist) in st.hists[first_hist..].iter_mut().enumerate() {
                for &v in s.histories.get(k).map(Vec::as_slice).unwrap_or(&[]) {
                    hist.push(v);
                }
            }
            let sl = &mut st.t.slots[idx];
            sl.value = s.value;
            sl.time = s.time;
            sl.last_seen = s.last_seen.unwrap_or(NEVER);
        }
        st
    }

    fn intern(&mut self, checks: &Checks, info: &SeriesInfo<'_>, h: u64) -> u32 {
        let idx = self.t.meta.len() as u32;
        self.t.meta.push(Meta {
            key: shared_key(h, info.key),
            name_len: info.name.len() as u32,
            fam: 0,
            next: NONE,
        });
        self.t.types.push(info.family_type);
        self.t.slots.push(Slot {
            value: f64::NAN,
            time: 0.0,
            last_seen: NEVER,
            prev_value: f64::NAN,
            prev_time: 0.0,
            prev_seen: NEVER,
            mark: NEVER,
        });
        if let Some(head) = self.t.index.insert(h, idx) {
            self.t.meta[idx as usize].next = head;
        }
        if self.bindings.len() < checks.len() {
            self.bindings.resize_with(checks.len(), Vec::new);
        }
        let mut w = Watched {
            series: idx,
            hists: Vec::new(),
            values: false,
        };
        let mut bound = false;
        for (ci, c) in checks.iter().enumerate() {
            if c.watches(info) {
                bound = true;
                w.values |= c.uses_prev();
                let hl = c.history_len();
                let hist = if hl > 0 {
                    self.hists.push(History::with_capacity(hl));
                    w.values = true;
                    w.hists.push((self.hists.len() - 1) as u32);
                    (self.hists.len() - 1) as u32
                } else {
                    u32::MAX
                };
                self.bindings[ci].push(Binding { series: idx, hist });
            }
        }
        if bound {
            self.watched.push(w);
        }
        idx
    }
}

struct View<'a> {
    st: &'a HostState,
    check: usize,
    round: u64,
    prev_round: Option<u64>,
}

impl HostView for View<'_> {
    fn host(&self) -> u32 {
        self.st.host
    }
    fn round(&self) -> u64 {
        self.round
    }
    fn prev_round(&self) -> Option<u64> {
        self.prev_round
    }
    fn watched(&self) -> Box<dyn Iterator<Item = SeriesView<'_>> + '_> {
        Box::new(self.binds().iter().map(|b| self.series_view(b.series)))
    }
    fn unseen(&self) -> Box<dyn Iterator<Item = SeriesView<'_>> + '_> {
        let slots = &self.st.t.slots;
        Box::new(
            self.binds()
                .iter()
                .filter(|b| slots[b.series as usize].last_seen != self.round)
                .map(|b| self.series_view(b.series)),
        )
    }
}

impl View<'_> {
    fn binds(&self) -> &[Binding] {
        self.st
            .bindings
            .get(self.check)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn series_view(&self, series: u32) -> SeriesView<'_> {
        let t = &self.st.t;
        let i = series as usize;
        SeriesView {
            key: t.key(i),
            name: t.name(i),
            value: t.slots[i].value,
            last_seen: (t.slots[i].last_seen != NEVER).then_some(t.slots[i].last_seen),
        }
    }
}

thread_local! {
    /// A scrape's samples before they are applied (a malformed page applies
    /// none): one buffer per thread, shared by every host it scrapes, so it
    /// is still in cache from the last scrape instead of one cold 48 kB
    /// buffer per host of 2,000 series.
    static PENDING: Cell<Vec<(u32, f64, f64)>> = const { Cell::new(Vec::new()) };
}

/// Record series `idx` as the `pos`-th sample of this scrape with `value`
/// at time `t` (a repeat of a series on the page is counted and dropped).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn known(
    state: &mut HostState,
    pending: &mut Vec<(u32, f64, f64)>,
    pos: &mut usize,
    duplicates: &mut u64,
    idx: u32,
    value: f64,
    t: f64,
    scrape: u64,
) {
    match state.order.get_mut(*pos) {
        Some(o) => *o = idx,
        None => state.order.push(idx),
    }
    *pos += 1;
    let m = &mut state.t.slots[idx as usize].mark;
    if *m == scrape {
        // Prometheus keeps the page and drops the repeated sample.
        *duplicates += 1;
        return;
    }
    *m = scrape;
    pending.push((idx, value, t));
}

/// Parse one text-format page of `state`'s host for `round`; see
/// [`scrape_page`].
pub fn scrape_round(
    state: &mut HostState,
    checks: &Checks,
    page: &[u8],
    round: u64,
    now: f64,
) -> HostRound {
    scrape_page(state, checks, page, Format::Text, round, now)
}

/// Parse one page of `state`'s host for `round` (time `now`, seconds) by
/// the rules of `format`, update the host's state and run every check. A
/// malformed page yields one `malformed` scrape finding and leaves the
/// series values untouched. A series repeated on a page keeps its first
/// sample; the others are dropped and counted ([`HostRound::duplicates`]).
pub fn scrape_page(
    state: &mut HostState,
    checks: &Checks,
    page: &[u8],
    format: Format,
    round: u64,
    now: f64,
) -> HostRound {
    let host = state.host;
    state.scrapes += 1;
    let scrape = state.scrapes;
    let mut pending = PENDING.take();
    pending.clear();
    let mut pos = 0usize;
    let mut err = None;
    let mut duplicates = 0u64;
    let mut parser = Parser::with_format(page, format);
    let mut comments = std::mem::take(&mut state.comments);
    comments.begin();
    loop {
        if comments.skip(&mut parser, pos) {
            continue;
        }
        let hint_idx = state.order.get(pos).copied();
        let hint = hint_idx.map(|i| {
            let m = &state.t.meta[i as usize];
            (m.key.as_bytes(), m.fam)
        });
        if let (Some(i), Some((key, ctx))) = (hint_idx, hint)
            && let Some(value) = parser.next_known(key, ctx)
        {
            known(
                state,
                &mut pending,
                &mut pos,
                &mut duplicates,
                i,
                value,
                now,
                scrape,
            );
            continue;
        }
        let mark = parser.mark();
        let (idx, value, ts, _line) = match parser.next_hinted(hint) {
            None => break,
            Some(Ok(Hinted::Known {
                value,
                timestamp_ms,
                line,
            })) => match hint_idx {
                Some(i) => (i, value, timestamp_ms, line),
                None => break,
            },
            Some(Ok(Hinted::Item(Item::Sample(s)))) => {
                let mut buf = std::mem::take(&mut state.scratch);
                let key = s.series_key(&mut buf);
                let h = hash_key(key.as_bytes());
                let idx = match state.t.find(h, key) {
                    Some(i) => i,
                    None => {
                        let labels = key
                            .get(s.name.len() + 1..key.len().saturating_sub(1))
                            .unwrap_or("");
                        let info = SeriesInfo {
                            name: s.name,
                            labels: RawLabels(labels),
                            key,
                            family_type: s.family_type,
                        };
                        state.intern(checks, &info, h)
                    }
                };
                state.scratch = buf;
                state.t.meta[idx as usize].fam = parser.family_context();
                (idx, s.value, s.timestamp_ms, s.line)
            }
            Some(Ok(Hinted::Item(_))) => {
                comments.record(&parser, pos, mark);
                continue;
            }
            Some(Err(e)) => {
                err = Some(e.to_string());
                break;
            }
        };
        let t = match ts {
            None => now,
            Some(ms) => ms as f64 * 0.001,
        };
        known(
            state,
            &mut pending,
            &mut pos,
            &mut duplicates,
            idx,
            value,
            t,
            scrape,
        );
    }
    comments.end();
    state.comments = comments;
    state.order.truncate(pos);
    state.updated = false;
    if let Some(e) = err {
        PENDING.set(pending);
        let mut hr = HostRound::failed(host, round, "malformed", e);
        hr.bytes = page.len() as u64;
        return hr;
    }
    let t = &mut state.t;
    for &(i, v, tm) in &pending {
        let i = i as usize;
        let sl = &mut t.slots[i];
        sl.prev_value = sl.value;
        sl.prev_time = sl.time;
        sl.prev_seen = sl.last_seen;
        sl.value = v;
        sl.time = tm;
        sl.last_seen = round;
    }
    let mut out = HostRound {
        host,
        round,
        points: pending.len() as u64,
        bytes: page.len() as u64,
        duplicates,
        ..HostRound::default()
    };
    PENDING.set(pending);
    let prev_round = state.prev_round;
    let mut ends = Vec::new();
    for (ci, c) in checks.iter().enumerate() {
        let Some(binds) = state.bindings.get(ci) else {
            continue;
        };
        let lookup = Lookup { t: &state.t, round };
        let per_series = c.per_series();
        for b in binds.iter().filter(|_| per_series) {
            let i = b.series as usize;
            let t = &state.t;
            if t.slots[i].last_seen != round {
                continue;
            }
            let empty = History::default();
            let hist = state.hists.get(b.hist as usize).unwrap_or(&empty);
            let obs = Observation {
                host,
                round,
                key: t.key(i),
                name: t.name(i),
                value: t.slots[i].value,
                time: t.slots[i].time,
                prev: (t.slots[i].prev_seen != NEVER).then(|| Prev {
                    value: t.slots[i].prev_value,
                    time: t.slots[i].prev_time,
                }),
                history: hist,
                page: &lookup,
            };
            if let Some(a) = c.evaluate(&obs) {
                out.findings.push(Finding {
                    host,
                    round,
                    check: c.name().to_string(),
                    kind: c.kind().to_string(),
                    series: obs.key.to_string(),
                    value: a.value,
                    message: a.message,
                });
            } else if let Some(a) = c.hold(&obs) {
                out.holds.push(Finding {
                    host,
                    round,
                    check: c.name().to_string(),
                    kind: c.kind().to_string(),
                    series: obs.key.to_string(),
                    value: a.value,
                    message: a.message,
                });
            }
            if let Some(v) = c.fleet_value(&obs) {
                out.fleet_values.push(FleetValue {
                    check: ci as u32,
                    series: obs.key.to_string(),
                    host,
                    value: v,
                });
            }
        }
        // push current values into histories
        for b in binds {
            if let Some(h) = state.hists.get_mut(b.hist as usize) {
                let i = b.series as usize;
                if state.t.slots[i].last_seen == round {
                    h.push(state.t.slots[i].value);
                }
            }
        }
        ends.clear();
        let view = View {
            st: state,
            check: ci,
            round,
            prev_round,
        };
        c.end_round(&view, &mut ends);
        for (series, a) in ends.drain(..) {
            out.findings.push(Finding {
                host,
                round,
                check: c.name().to_string(),
                kind: c.kind().to_string(),
                series,
                value: a.value,
                message: a.message,
            });
        }
    }
    state.prev_round = Some(round);
    state.updated = true;
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A host state rebuilt from its checkpoint (as sent over the wire)
    /// finds exactly what the original finds in the following rounds.
    #[test]
    fn restored_state_finds_what_the_original_finds() {
        use crate::fleet::{Fleet, FleetConfig, STEP_SECS};
        let rounds = 12;
        let fleet = Fleet::new(FleetConfig {
            hosts: 40,
            series: 150,
            seed: 3,
            rounds,
            bad: Vec::new(),
        });
        let checks = Checks::builtin();
        let mut page = Vec::new();
        let (mut same, mut total_findings, mut cp_series) = (0, 0, 0);
        for host in 0..40 {
            for cut in [1u64, 3, 6] {
                let mut a = HostState::new(host);
                let mut b = None::<HostState>;
                // The parent's copy, kept up to date by the deltas (plain,
                // and in the compact store the service uses).
                let mut parent: Option<HostCheckpoint> = None;
                let mut store = crate::history::HistoryStore::default();
                for round in 0..rounds {
                    page.clear();
                    fleet.render(host, round, &mut page);
                    if round == 4 && host % 3 == 0 {
                        page.clear(); // a failed scrape now and then
                        page.extend_from_slice(b"garbage{ 1\n");
                    }
                    let now = round as f64 * STEP_SECS;
                    let ra = scrape_round(&mut a, &checks, &page, round, now);
                    let len = parent.as_ref().map(|c| c.series.len() as u32);
                    let u = a.update_for(len, round);
                    let wire = postcard::to_stdvec(&u).unwrap();
                    let u: StateUpdate = postcard::from_bytes(&wire).unwrap();
                    store.apply(u.clone());
                    match u {
                        StateUpdate::Full(c) => parent = Some(c),
                        StateUpdate::Delta(d) => assert!(parent.as_mut().unwrap().apply(&d)),
                    }
                    assert_eq!(
                        parent.as_ref(),
                        Some(&a.checkpoint()),
                        "host {host} round {round}"
                    );
                    assert_eq!(
                        store.checkpoint(host),
                        parent,
                        "store: host {host} round {round}"
                    );
                    if round == cut {
                        let cp = parent.clone().unwrap();
                        cp_series = cp.series.len();
                        b = Some(HostState::restore(&checks, &cp));
                    } else if let Some(b) = b.as_mut() {
                        let rb = scrape_round(b, &checks, &page, round, now);
                        assert_eq!(
                            ra.findings, rb.findings,
                            "host {host} round {round} cut {cut}"
                        );
                        same += 1;
                        total_findings += ra.findings.len();
                    }
                }
            }
        }
        assert!(same > 0 && total_findings > 0, "{same} {total_findings}");
        assert!(cp_series > 0 && cp_series < 150, "{cp_series}");
    }

    #[test]
    fn hash_differs() {
        assert_ne!(hash_key(b"a{x=\"1\"}"), hash_key(b"a{x=\"2\"}"));
        assert_ne!(hash_key(b""), hash_key(b"\0"));
    }

    #[test]
    fn state_tracks_series_and_order_changes() {
        let checks = Checks::new();
        let mut st = HostState::new(7);
        let r = scrape_round(&mut st, &checks, b"a 1\nb{x=\"1\"} 2\n", 0, 0.0);
        assert_eq!(r.points, 2);
        assert_eq!(st.series_count(), 2);
        let r = scrape_round(&mut st, &checks, b"c 3\nb{x=\"1\"} 5\na 4\n", 1, 15.0);
        assert_eq!(r.points, 3);
        assert_eq!(st.series_count(), 3);
        assert_eq!(st.value_of("a"), Some(4.0));
        assert_eq!(st.value_of("b{x=\"1\"}"), Some(5.0));
        // malformed page: finding, state untouched
        let r = scrape_round(&mut st, &checks, b"a 9\nb{x=\"1\" 2\n", 2, 30.0);
        assert!(r.failed);
        assert_eq!(r.findings[0].check, "malformed");
        assert!(r.findings[0].message.contains("line 2"), "{:?}", r.findings);
        assert_eq!(st.value_of("a"), Some(4.0));
        // duplicate series: the page is kept, the repeated sample dropped
        let r = scrape_round(&mut st, &checks, b"a 9\na 2\n", 3, 45.0);
        assert!(!r.failed, "{r:?}");
        assert_eq!((r.points, r.duplicates), (1, 1));
        assert_eq!(st.value_of("a"), Some(9.0));
    }

    #[test]
    fn series_identity_is_name_and_sorted_labels() {
        let checks = Checks::new();
        let mut st = HostState::new(1);
        let r = scrape_round(
            &mut st,
            &checks,
            b"a{x=\"1\",y=\"2\"} 1\na{y=\"2\",x=\"1\"} 2\na {x=\"1\",y=\"2\",} 3\nb 4\n",
            0,
            0.0,
        );
        assert!(!r.failed, "{r:?}");
        assert_eq!((r.points, r.duplicates), (2, 2));
        assert_eq!(st.series_count(), 2);
        assert_eq!(st.value_of("a{x=\"1\",y=\"2\"}"), Some(1.0));
        // next round, other spelling: same series
        scrape_round(&mut st, &checks, b"a{y=\"2\",x=\"1\"} 7\n", 1, 15.0);
        assert_eq!(st.series_count(), 2);
        assert_eq!(st.value_of("a{x=\"1\",y=\"2\"}"), Some(7.0));
    }

    #[test]
    fn duplicate_series_keeps_the_page_and_drops_the_repeat() {
        let checks = Checks::new();
        let mut st = HostState::new(2);
        let r = scrape_round(
            &mut st,
            &checks,
            b"a{x=\"1\"} 1\nb 2\na{x=\"1\"} 3\nb 4\nc 5\n",
            0,
            0.0,
        );
        assert!(!r.failed, "{r:?}");
        assert_eq!((r.points, r.duplicates), (3, 2));
        assert_eq!(st.value_of("a{x=\"1\"}"), Some(1.0));
        assert_eq!(st.value_of("b"), Some(2.0));
        assert_eq!(st.value_of("c"), Some(5.0));
    }

    #[test]
    fn openmetrics_counter_rate_uses_seconds() {
        let rules = crate::rules::Rules::parse(
            "[[rule]]\nname = \"fast\"\nkind = \"rate\"\nmetric = \"req_total\"\nabove = 50.0\n",
        )
        .unwrap();
        let checks = Checks::from_rules(&rules);
        let mut st = HostState::new(3);
        let page = |v: u32, t: &str| {
            format!("# TYPE req counter\nreq_total {v} {t}\n# EOF\n").into_bytes()
        };
        // 10/s: 100 more in 10.0 s (float seconds, as OpenMetrics writes them).
        let r = scrape_page(
            &mut st,
            &checks,
            &page(1000, "1700000000.0"),
            Format::OpenMetrics,
            0,
            0.0,
        );
        assert!(!r.failed, "{r:?}");
        let r = scrape_page(
            &mut st,
            &checks,
            &page(1100, "1700000010.0"),
            Format::OpenMetrics,
            1,
            0.0,
        );
        assert!(!r.failed, "{r:?}");
        assert!(
            r.findings.is_empty(),
            "10/s is below 50/s: {:?}",
            r.findings
        );
        // 100/s does fire, with the rate in seconds.
        let r = scrape_page(
            &mut st,
            &checks,
            &page(2100, "1700000020.0"),
            Format::OpenMetrics,
            2,
            0.0,
        );
        assert_eq!(r.findings.len(), 1, "{r:?}");
        assert!((r.findings[0].value - 100.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn series_with_colliding_hashes_are_never_merged() {
        let checks = Checks::new();
        let mut st = HostState::new(1);
        let info = |key: &'static str| SeriesInfo {
            name: key,
            labels: RawLabels(""),
            key,
            family_type: crate::expfmt::MetricType::Untyped,
        };
        // Force both keys onto one hash: the table must chain them.
        let a = st.intern(&checks, &info("a"), 42);
        let b = st.intern(&checks, &info("b"), 42);
        assert_ne!(a, b);
        assert_eq!(st.t.find(42, "a"), Some(a));
        assert_eq!(st.t.find(42, "b"), Some(b));
        assert_eq!(st.t.find(42, "c"), None);
        assert_eq!(st.t.find(43, "a"), None);
    }

    /// Hosts scanned by one thread hold one copy of each series identity;
    /// a colliding one gets its own.
    #[test]
    fn hosts_of_a_thread_share_series_identities() {
        let checks = Checks::builtin();
        let page = b"# TYPE a gauge\na{x=\"1\"} 1\na{x=\"2\"} 2\nb 3\n";
        let mut one = HostState::new(1);
        let mut two = HostState::new(2);
        for st in [&mut one, &mut two] {
            let hr = scrape_round(st, &checks, page, 0, 0.0);
            assert_eq!(hr.points, 3);
        }
        for i in 0..3 {
            assert_eq!(one.t.key(i), two.t.key(i));
            assert!(
                Arc::ptr_eq(&one.t.meta[i].key, &two.t.meta[i].key),
                "series {i}"
            );
        }
        let info = SeriesInfo {
            name: "c",
            labels: RawLabels(""),
            key: "c",
            family_type: crate::expfmt::MetricType::Untyped,
        };
        let b = hash_key(b"b");
        let c = one.intern(&checks, &info, b);
        assert_eq!(one.t.key(c as usize), "c");
        assert_eq!(two.t.key(2), "b");
    }

    /// Identities that no host holds any more do not pile up.
    #[test]
    fn identities_no_host_holds_are_swept() {
        let checks = Checks::new();
        let intern_many = |st: &mut HostState, tag: &str| {
            for i in 0..20_000 {
                let key = format!("{tag}_{i}");
                let info = SeriesInfo {
                    name: &key,
                    labels: RawLabels(""),
                    key: &key,
                    family_type: crate::expfmt::MetricType::Untyped,
                };
                st.intern(&checks, &info, hash_key(key.as_bytes()));
            }
        };
        let mut gone = HostState::new(0);
        intern_many(&mut gone, "gone");
        drop(gone);
        let mut kept = HostState::new(1);
        intern_many(&mut kept, "kept");
        let pooled = SHARED_KEYS.with(|p| p.borrow().keys.len());
        assert_eq!(pooled, 20_000, "only the live host's identities stay");
        assert_eq!(kept.t.key(19_999), "kept_19999");
    }

    #[test]
    fn hinted_fast_path_revalidates_when_context_changes() {
        let checks = Checks::new();
        let mut st = HostState::new(0);
        let ok = scrape_round(
            &mut st,
            &checks,
            b"# TYPE h gauge\nh_bucket{le=\"x\"} 1\n",
            0,
            0.0,
        );
        assert!(!ok.failed, "{ok:?}");
        // same key bytes, now inside a histogram family: must be re-parsed and refused
        let r = scrape_round(
            &mut st,
            &checks,
            b"# TYPE h histogram\nh_bucket{le=\"x\"} 1\n",
            1,
            15.0,
        );
        assert!(r.failed);
        assert!(r.findings[0].message.contains("invalid le"), "{r:?}");
        // known key with a bad value is still an error with its line
        let r = scrape_round(
            &mut st,
            &checks,
            b"# TYPE h gauge\nh_bucket{le=\"x\"} abc\n",
            2,
            30.0,
        );
        assert!(r.failed);
        assert!(
            r.findings[0].message.starts_with("line 2: invalid value"),
            "{r:?}"
        );
        // a key that is a prefix of the next line's key is not taken for it
        let mut st = HostState::new(1);
        scrape_round(&mut st, &checks, b"a 1\nab 2\n", 0, 0.0);
        let r = scrape_round(&mut st, &checks, b"ab 3\na 4\n", 1, 15.0);
        assert_eq!(r.points, 2);
        assert_eq!(st.value_of("ab"), Some(3.0));
        assert_eq!(st.value_of("a"), Some(4.0));
        // timestamps on known keys
        let r = scrape_round(&mut st, &checks, b"ab 5 1000\na 6\n", 2, 30.0);
        assert!(!r.failed);
        assert_eq!(st.value_of("ab"), Some(5.0));
    }

    /// What a page says (its error with line number, its points, its
    /// repeated series, every value) as a state that saw `before` first
    /// reads it, beside a fresh state: comment lines skipped because
    /// `before` had them must change nothing.
    fn warm_and_cold(before: &[u8], page: &[u8]) -> (String, String) {
        let checks = Checks::builtin();
        let read = |st: &mut HostState| {
            let r = scrape_round(st, &checks, page, 5, 75.0);
            let mut keys: Vec<&str> = std::str::from_utf8(page)
                .unwrap_or("")
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            keys.dedup();
            let errors: Vec<_> = r
                .findings
                .iter()
                .filter(|f| f.check == "malformed")
                .collect();
            // A malformed page leaves the values as they were.
            let values: Vec<_> = match errors.is_empty() {
                true => keys
                    .iter()
                    .map(|k| (k.to_string(), st.value_of(k)))
                    .collect(),
                false => Vec::new(),
            };
            format!(
                "{errors:?} points {} repeats {} {values:?}",
                r.points, r.duplicates
            )
        };
        let mut warm = HostState::new(1);
        for round in 0..3 {
            scrape_round(&mut warm, &checks, before, round, round as f64 * 15.0);
        }
        (read(&mut warm), read(&mut HostState::new(1)))
    }

    fn families(n: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for f in 0..n {
            lines.push(format!("# HELP m{f} Help of m{f}."));
            lines.push(format!(
                "# TYPE m{f} {}",
                ["gauge", "counter", "untyped"][f % 3]
            ));
            for i in 0..2 {
                lines.push(format!("m{f}{{i=\"{i}\"}} {}.5", f * 10 + i));
            }
        }
        lines
    }

    #[test]
    fn a_repeated_help_after_skipped_comments_is_still_an_error() {
        let before = families(4).join("\n") + "\n";
        let mut lines = families(4);
        lines.push("# HELP m1 Help again.".into());
        lines.push("m9 1".into());
        let page = lines.join("\n") + "\n";
        let (warm, cold) = warm_and_cold(before.as_bytes(), page.as_bytes());
        assert!(
            warm.contains("line 17: second HELP line for metric m1"),
            "{warm}"
        );
        assert_eq!(warm, cold);
    }

    proptest::proptest! {
        /// Pages that differ from the previous one in their comment lines
        /// (lines repeated, dropped, moved, retyped, blank lines, free
        /// text) read the same after that page as on a fresh state.
        #[test]
        fn a_page_reads_the_same_after_a_different_previous_page(
            n in 1usize..5,
            edits in proptest::collection::vec((0u8..6, 0usize..64, 0usize..64), 0..4),
        ) {
            let before = families(n);
            let mut lines = before.clone();
            for (op, a, b) in edits {
                let a = a % lines.len().max(1);
                let b = b % (lines.len() + 1);
                match op {
                    0 => { let l = lines[a].clone(); lines.insert(b, l); }
                    1 if lines.len() > 1 => { lines.remove(a); }
                    2 => lines.insert(b, String::new()),
                    3 => lines.insert(b, "# just a comment".into()),
                    4 => lines[a] = lines[a].replace("gauge", "counter"),
                    _ => { let l = lines.remove(a); lines.insert(b.min(lines.len()), l); }
                }
            }
            let before = before.join("\n") + "\n";
            let page = lines.join("\n") + "\n";
            let (warm, cold) = warm_and_cold(before.as_bytes(), page.as_bytes());
            proptest::prop_assert_eq!(warm, cold, "page:\n{}", page);
        }
    }
}
