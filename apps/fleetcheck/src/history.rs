//! The parent's copy of every host's history ([`HistoryStore`]): the
//! authoritative state of the watched series, kept up to date by the
//! workers' [`StateUpdate`]s and handed back as a [`HostCheckpoint`] to a
//! worker that lost it (replaced after a death, or a new pool).
//!
//! Held compactly: series keys are interned once for the whole fleet (a
//! fleet's hosts mostly share their series), and histories are boxed only
//! for the series that have one; at 1,000 hosts × 604 watched series that is
//! a few tens of MiB instead of the ≈ 130 MiB of plain checkpoints.

use std::collections::HashMap;

use crate::expfmt::MetricType;
use crate::state::{HostCheckpoint, HostDelta, SeriesCheckpoint, StateUpdate};

/// The histories of a series: (capacity, values) per check that keeps one.
type Histories = Box<[(u32, Vec<f64>)]>;

/// One watched series of a host, compact.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    key: u32,
    name_len: u32,
    family_type: MetricType,
    values: bool,
    value: f64,
    time: f64,
    last_seen: Option<u64>,
    hist: Option<Histories>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Host {
    prev_round: Option<u64>,
    series: Vec<Stored>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct HistoryStore {
    ids: HashMap<String, u32>,
    keys: Vec<String>,
    hosts: HashMap<u32, Host>,
}

impl HistoryStore {
    /// Series in the copy of `host` (`None`: no copy).
    pub fn len_of(&self, host: u32) -> Option<u32> {
        self.hosts.get(&host).map(|h| h.series.len() as u32)
    }

    /// The round of the last successful scrape in the copy of `host`
    /// (`None`: no copy, or no successful scrape yet).
    pub fn prev_round_of(&self, host: u32) -> Option<u64> {
        self.hosts.get(&host).and_then(|h| h.prev_round)
    }

    /// Hosts with a copy.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// True when no host has a copy.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    fn intern(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push(key.to_string());
        self.ids.insert(key.to_string(), id);
        id
    }

    fn store(&mut self, s: &SeriesCheckpoint) -> Stored {
        let hist = (!s.histories.is_empty()).then(|| {
            s.histories
                .iter()
                .zip(s.caps.iter().chain(std::iter::repeat(&0)))
                .map(|(h, &c)| (c, h.clone()))
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        Stored {
            key: self.intern(&s.key),
            name_len: s.name_len,
            family_type: s.family_type,
            values: s.values,
            value: s.value,
            time: s.time,
            last_seen: s.last_seen,
            hist,
        }
    }

    /// Bring the copy up to date with a worker's update. A delta that does
    /// not fit drops the copy (the worker sends a full one next round).
    pub fn apply(&mut self, u: StateUpdate) {
        match u {
            StateUpdate::Full(cp) => {
                let series = cp.series.iter().map(|s| self.store(s)).collect();
                self.hosts.insert(
                    cp.host,
                    Host {
                        prev_round: cp.prev_round,
                        series,
                    },
                );
            }
            StateUpdate::Delta(d) => {
                if !self.apply_delta(&d) {
                    self.hosts.remove(&d.host);
                }
            }
        }
    }

    fn apply_delta(&mut self, d: &HostDelta) -> bool {
        if self.len_of(d.host) != Some(d.base) {
            return false;
        }
        let added: Vec<Stored> = d.added.iter().map(|s| self.store(s)).collect();
        let Some(h) = self.hosts.get_mut(&d.host) else {
            return false;
        };
        h.series.extend(added);
        if !d.updated {
            return true;
        }
        h.prev_round = Some(d.round);
        let mut missing = d.missing.iter().copied().peekable();
        for (i, s) in h.series[..d.base as usize].iter_mut().enumerate() {
            if missing.peek() == Some(&(i as u32)) {
                missing.next();
            } else {
                s.last_seen = Some(d.round);
            }
        }
        for &(i, v) in &d.changed {
            if let Some(s) = h.series.get_mut(i as usize) {
                s.value = v;
            }
        }
        for &(i, v, t) in &d.values {
            let Some(s) = h.series.get_mut(i as usize) else {
                continue;
            };
            s.value = v;
            s.time = t;
            for (cap, hist) in s.hist.iter_mut().flat_map(|b| b.iter_mut()) {
                hist.push(v);
                let over = hist.len().saturating_sub(*cap as usize);
                hist.drain(..over);
            }
        }
        true
    }

    /// The checkpoint of `host`, to hand to a worker.
    pub fn checkpoint(&self, host: u32) -> Option<HostCheckpoint> {
        let h = self.hosts.get(&host)?;
        let series = h
            .series
            .iter()
            .map(|s| {
                let hist = s.hist.as_deref().unwrap_or(&[]);
                SeriesCheckpoint {
                    key: self.keys.get(s.key as usize).cloned().unwrap_or_default(),
                    name_len: s.name_len,
                    family_type: s.family_type,
                    value: s.value,
                    time: s.time,
                    last_seen: s.last_seen,
                    histories: hist.iter().map(|(_, h)| h.clone()).collect(),
                    caps: hist.iter().map(|(c, _)| *c).collect(),
                    values: s.values,
                }
            })
            .collect();
        Some(HostCheckpoint {
            host,
            prev_round: h.prev_round,
            series,
        })
    }
}
