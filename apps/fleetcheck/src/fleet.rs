//! The simulated fleet: many node_exporter-like hosts served over HTTP on
//! 127.0.0.1, deterministic from a seed, with anomalies injected at known
//! hosts, series and rounds ([`Fleet::ground_truth`]).
//!
//! * URL of host `i`: `http://127.0.0.1:PORT/host/{i}/metrics`.
//! * Round: the query `?round=N` selects round `N` (the scanner sends it);
//!   without it, each host advances one round per scrape of that host.
//! * Time: round `N` is at `N * STEP_SECS` seconds (the scanner's logical clock).
//! * Pages are rendered from one pre-built template (HELP/TYPE lines, series
//!   keys) with only the numbers computed per (host, series, round); as
//!   served, a host's page is kept and only its changing values are
//!   rewritten the next round (same bytes, `patch.rs`).
//! * Bad hosts (ids after the regular hosts) return 500, garbage, an oversize
//!   page or answer slowly ([`BadKind`]).
//!
//! Injected anomalies match the built-in rules ([`crate::rules::Rules::builtin`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::report::ExpectedFinding;

mod patch;

/// Seconds between two rounds of the simulated fleet (the scanner's
/// logical clock).
pub const STEP_SECS: f64 = crate::scan::SIMULATED_STEP_SECS;

/// The request header that asks the simulated fleet for a given round.
pub const ROUND_HEADER: &str = crate::http::ROUND_HEADER;

/// Misbehaviour of a bad host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    /// Always HTTP 500.
    Status500,
    /// A page that is not exposition format.
    Garbage,
    /// A valid-looking page of this many bytes.
    Oversize(usize),
    /// Answers after this delay.
    Slow(Duration),
}

impl std::str::FromStr for BadKind {
    type Err = String;

    /// `500`, `garbage`, `oversize[:BYTES]` (default 20 MiB, over the
    /// default page cap), `slow[:MS]` (default 30000).
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let num = |d: u64| -> Result<u64, String> {
            arg.map_or(Ok(d), |a| {
                a.parse()
                    .map_err(|_| format!("bad host {s:?}: {a:?} is not a number"))
            })
        };
        Ok(match kind {
            "500" => BadKind::Status500,
            "garbage" => BadKind::Garbage,
            "oversize" => BadKind::Oversize(num(20 << 20)? as usize),
            "slow" => BadKind::Slow(Duration::from_millis(num(30_000)?)),
            _ => {
                return Err(format!(
                    "unknown bad host {s:?} (500, garbage, oversize[:BYTES], slow[:MS])"
                ));
            }
        })
    }
}

/// Fleet parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// Number of regular hosts.
    pub hosts: u32,
    /// Series per page (at least the core set of ~70).
    pub series: u32,
    /// Seed of values and injection schedule.
    pub seed: u64,
    /// Rounds the injection schedule spans.
    pub rounds: u64,
    /// Extra misbehaving hosts (ids `hosts..hosts+bad.len()`).
    pub bad: Vec<BadKind>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            hosts: 1000,
            series: 2000,
            seed: 42,
            rounds: 10,
            bad: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Gen {
    Const(f64),
    Gauge { base: f64, spread: f64, amp: f64 },
    Counter { base: f64, rate: f64 },
    FracOf { of: u32, lo: f64, hi: f64 },
}

#[derive(Debug, Clone, Copy)]
struct Spec {
    gv: Gen,
    dec: u8,
    group: u32,
    head: (u32, u32),
    line: (u32, u32),
}

#[derive(Debug, Default)]
struct Template {
    text: Vec<u8>,
    specs: Vec<Spec>,
    groups: u32,
    head_start: u32,
}

impl Template {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        self.head_start = self.text.len() as u32;
        self.text
            .extend_from_slice(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes());
        self.groups += 1;
    }
    fn series(&mut self, key: &str, gv: Gen, dec: u8) -> u32 {
        self.series_g(key, gv, dec, None)
    }
    fn series_g(&mut self, key: &str, gv: Gen, dec: u8, group: Option<u32>) -> u32 {
        let head = (self.head_start, self.text.len() as u32);
        self.head_start = self.text.len() as u32;
        let ls = self.text.len() as u32;
        self.text.extend_from_slice(key.as_bytes());
        self.text.push(b' ');
        let idx = self.specs.len() as u32;
        let group = group.unwrap_or_else(|| {
            self.groups += 1;
            self.groups
        });
        self.specs.push(Spec {
            gv,
            dec,
            group,
            head,
            line: (ls, self.text.len() as u32),
        });
        self.head_start = self.text.len() as u32;
        idx
    }
    fn key(&self, i: u32) -> String {
        let s = self.specs[i as usize];
        String::from_utf8_lossy(&self.text[s.line.0 as usize..s.line.1 as usize - 1]).into_owned()
    }
}

#[derive(Debug, Default)]
struct Special {
    build_info: u32,
    load15: u32,
    dirty: u32,
    fs_avail: Vec<u32>,
    temps: Vec<u32>,
    errs: Vec<u32>,
    units: Vec<[u32; 5]>,
}

const MODES: [&str; 8] = [
    "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
];
const UNIT_STATES: [&str; 5] = ["activating", "active", "deactivating", "failed", "inactive"];

fn build_template(series: u32) -> (Template, Special) {
    let mut t = Template::default();
    let mut sp = Special::default();
    let g = |base: f64, spread: f64, amp: f64| Gen::Gauge { base, spread, amp };
    t.family("node_exporter_build_info", "A metric with a constant '1' value labeled by version, revision, branch, goversion from which node_exporter was built, and the goos and goarch for the build.", "gauge");
    sp.build_info = t.series(
        "node_exporter_build_info{branch=\"HEAD\",goarch=\"amd64\",goos=\"linux\",goversion=\"go1.21.4\",revision=\"7333465abf9efba81876303bb57e6fadb946041b\",tags=\"netgo osusergo static_build\",version=\"1.7.0\"}",
        Gen::Const(1.0),
        0,
    );
    t.family(
        "go_gc_duration_seconds",
        "A summary of the pause duration of garbage collection cycles.",
        "summary",
    );
    let gg = t.groups;
    for (q, b) in [
        ("0", 1.5e-5),
        ("0.25", 3e-5),
        ("0.5", 4.2e-5),
        ("0.75", 6e-5),
        ("1", 3e-4),
    ] {
        t.series_g(
            &format!("go_gc_duration_seconds{{quantile=\"{q}\"}}"),
            g(b, 0.2, b * 0.05),
            7,
            Some(gg),
        );
    }
    t.series_g(
        "go_gc_duration_seconds_sum",
        Gen::Counter {
            base: 0.0,
            rate: 0.0001,
        },
        6,
        Some(gg),
    );
    t.series_g(
        "go_gc_duration_seconds_count",
        Gen::Counter {
            base: 0.0,
            rate: 0.05,
        },
        0,
        Some(gg),
    );
    t.family("node_load1", "1m load average.", "gauge");
    t.series("node_load1", g(1.0, 1.0, 0.3), 2);
    t.family("node_load5", "5m load average.", "gauge");
    t.series("node_load5", g(1.0, 1.0, 0.1), 2);
    t.family("node_load15", "15m load average.", "gauge");
    sp.load15 = t.series("node_load15", g(1.0, 1.0, 0.05), 2);
    let gib = 1024.0 * 1024.0 * 1024.0;
    t.family(
        "node_memory_MemTotal_bytes",
        "Memory information field MemTotal_bytes.",
        "gauge",
    );
    let memtotal = t.series("node_memory_MemTotal_bytes", g(32.0 * gib, 0.0, 0.0), 0);
    t.family(
        "node_memory_MemAvailable_bytes",
        "Memory information field MemAvailable_bytes.",
        "gauge",
    );
    t.series(
        "node_memory_MemAvailable_bytes",
        Gen::FracOf {
            of: memtotal,
            lo: 0.3,
            hi: 0.7,
        },
        0,
    );
    t.family(
        "node_memory_Dirty_bytes",
        "Memory information field Dirty_bytes.",
        "gauge",
    );
    sp.dirty = t.series("node_memory_Dirty_bytes", g(5.0e7, 0.5, 1.0e6), 0);
    for f in [
        "Active",
        "Inactive",
        "Cached",
        "Buffers",
        "SwapCached",
        "Slab",
        "PageTables",
        "Mapped",
    ] {
        t.family(
            &format!("node_memory_{f}_bytes"),
            &format!("Memory information field {f}_bytes."),
            "gauge",
        );
        t.series(
            &format!("node_memory_{f}_bytes"),
            g(2.0 * gib, 0.8, 1.0e7),
            0,
        );
    }
    let mounts = [
        ("/dev/nvme0n1p2", "ext4", "/"),
        ("/dev/nvme0n1p1", "vfat", "/boot/efi"),
        ("/dev/sda1", "xfs", "/var/lib/data"),
        ("tmpfs", "tmpfs", "/run"),
    ];
    let fskey = |m: &str, (d, f, p): (&str, &str, &str)| {
        format!("node_filesystem_{m}{{device=\"{d}\",fstype=\"{f}\",mountpoint=\"{p}\"}}")
    };
    t.family(
        "node_filesystem_size_bytes",
        "Filesystem size in bytes.",
        "gauge",
    );
    let sizes: Vec<u32> = mounts
        .iter()
        .map(|m| t.series(&fskey("size_bytes", *m), g(500.0 * gib, 1.0, 0.0), 0))
        .collect();
    t.family(
        "node_filesystem_avail_bytes",
        "Filesystem space available to non-root users in bytes.",
        "gauge",
    );
    for (m, &sz) in mounts.iter().zip(&sizes) {
        sp.fs_avail.push(t.series(
            &fskey("avail_bytes", *m),
            Gen::FracOf {
                of: sz,
                lo: 0.3,
                hi: 0.8,
            },
            0,
        ));
    }
    t.family(
        "node_filesystem_free_bytes",
        "Filesystem free space in bytes.",
        "gauge",
    );
    for (m, &sz) in mounts.iter().zip(&sizes) {
        t.series(
            &fskey("free_bytes", *m),
            Gen::FracOf {
                of: sz,
                lo: 0.85,
                hi: 0.9,
            },
            0,
        );
    }
    t.family(
        "node_hwmon_temp_celsius",
        "Hardware monitor for temperature (input)",
        "gauge",
    );
    for i in 1..=4 {
        sp.temps.push(t.series(
            &format!("node_hwmon_temp_celsius{{chip=\"platform_coretemp_0\",sensor=\"temp{i}\"}}"),
            g(45.0, 0.2, 3.0),
            1,
        ));
    }
    let devs = ["eth0", "eth1", "lo"];
    for (m, rate, help) in [
        (
            "receive_bytes_total",
            2.0e5,
            "Network device statistic receive_bytes.",
        ),
        (
            "receive_packets_total",
            300.0,
            "Network device statistic receive_packets.",
        ),
        (
            "receive_errs_total",
            0.01,
            "Network device statistic receive_errs.",
        ),
        (
            "receive_drop_total",
            0.02,
            "Network device statistic receive_drop.",
        ),
        (
            "transmit_bytes_total",
            1.0e5,
            "Network device statistic transmit_bytes.",
        ),
        (
            "transmit_packets_total",
            200.0,
            "Network device statistic transmit_packets.",
        ),
    ] {
        t.family(&format!("node_network_{m}"), help, "counter");
        for d in devs {
            let i = t.series(
                &format!("node_network_{m}{{device=\"{d}\"}}"),
                Gen::Counter { base: 100.0, rate },
                0,
            );
            if m == "receive_errs_total" && d != "lo" {
                sp.errs.push(i);
            }
        }
    }
    t.family(
        "promhttp_metric_handler_requests_total",
        "Total number of scrapes by HTTP status code.",
        "counter",
    );
    for (c, r) in [("200", 0.066), ("500", 0.0), ("503", 0.0)] {
        t.series(
            &format!("promhttp_metric_handler_requests_total{{code=\"{c}\"}}"),
            Gen::Counter { base: 0.0, rate: r },
            0,
        );
    }
    t.family(
        "http_request_duration_seconds",
        "Latency of HTTP requests.",
        "histogram",
    );
    let hg = t.groups;
    for (le, frac) in [
        ("0.005", 0.1),
        ("0.01", 0.25),
        ("0.025", 0.5),
        ("0.05", 0.7),
        ("0.1", 0.85),
        ("0.25", 0.93),
        ("0.5", 0.97),
        ("1", 0.99),
        ("2.5", 0.995),
        ("5", 0.999),
        ("10", 1.0),
        ("+Inf", 1.0),
    ] {
        t.series_g(
            &format!("http_request_duration_seconds_bucket{{handler=\"/metrics\",le=\"{le}\"}}"),
            Gen::Counter {
                base: 0.0,
                rate: 2.0 * frac,
            },
            0,
            Some(hg),
        );
    }
    t.series_g(
        "http_request_duration_seconds_sum{handler=\"/metrics\"}",
        Gen::Counter {
            base: 0.0,
            rate: 0.08,
        },
        3,
        Some(hg),
    );
    t.series_g(
        "http_request_duration_seconds_count{handler=\"/metrics\"}",
        Gen::Counter {
            base: 0.0,
            rate: 2.0,
        },
        0,
        Some(hg),
    );
    t.family("node_systemd_unit_state", "Systemd unit", "gauge");
    let core_units = [
        "sshd.service",
        "cron.service",
        "systemd-journald.service",
        "nginx.service",
    ];
    let unit = |t: &mut Template, name: &str| -> [u32; 5] {
        let mut ids = [0u32; 5];
        for (k, st) in UNIT_STATES.iter().enumerate() {
            let v = if *st == "active" { 1.0 } else { 0.0 };
            ids[k] = t.series(
                &format!(
                    "node_systemd_unit_state{{name=\"{name}\",state=\"{st}\",type=\"simple\"}}"
                ),
                Gen::Const(v),
                0,
            );
        }
        ids
    };
    for u in core_units {
        let ids = unit(&mut t, u);
        sp.units.push(ids);
    }
    // Filler up to `series`: more units, cpus, disks, textfile mtimes.
    let core = t.specs.len() as u32;
    let remaining = series.saturating_sub(core);
    let n_units = remaining * 3 / 10 / 5;
    for k in 0..n_units {
        let ids = unit(&mut t, &format!("app-{k:04}.service"));
        sp.units.push(ids);
    }
    let cpus = remaining * 4 / 10 / 8;
    if cpus > 0 {
        t.family(
            "node_cpu_seconds_total",
            "Seconds the CPUs spent in each mode.",
            "counter",
        );
        for c in 0..cpus {
            for (k, m) in MODES.iter().enumerate() {
                let rate = if *m == "idle" {
                    0.8
                } else {
                    0.02 * (k as f64 + 1.0)
                };
                t.series(
                    &format!("node_cpu_seconds_total{{cpu=\"{c}\",mode=\"{m}\"}}"),
                    Gen::Counter { base: 1000.0, rate },
                    2,
                );
            }
        }
    }
    let disks = remaining.saturating_sub(t.specs.len() as u32 - core) / 2 / 4;
    for (m, rate) in [
        ("reads_completed_total", 20.0),
        ("writes_completed_total", 35.0),
        ("read_bytes_total", 4.0e5),
        ("written_bytes_total", 9.0e5),
    ] {
        if disks == 0 {
            break;
        }
        t.family(
            &format!("node_disk_{m}"),
            &format!("The total number of {m}."),
            "counter",
        );
        for d in 0..disks {
            t.series(
                &format!(
                    "node_disk_{m}{{device=\"sd{}{}\"}}",
                    char::from(b'a' + (d / 26 % 26) as u8),
                    char::from(b'a' + (d % 26) as u8)
                ),
                Gen::Counter { base: 1.0e4, rate },
                0,
            );
        }
    }
    let left = series.saturating_sub(t.specs.len() as u32);
    if left > 0 {
        t.family(
            "node_textfile_mtime_seconds",
            "Unixtime mtime of textfiles successfully read.",
            "gauge",
        );
        for k in 0..left {
            t.series(
                &format!(
                    "node_textfile_mtime_seconds{{file=\"/var/lib/node_exporter/job_{k}.prom\"}}"
                ),
                Gen::Const(1.7e9 + f64::from(k)),
                0,
            );
        }
    }
    (t, sp)
}

#[inline]
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[inline]
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InjKind {
    DiskFull,
    Hot,
    RateSpike,
    CounterReset,
    DirtySpike,
    UnitVanish,
    Absent,
    LoadOutlier,
}

#[derive(Debug, Clone, Copy)]
struct Injection {
    kind: InjKind,
    series: u32,
    unit: usize,
    round: u64,
}

/// A gauge's or counter's constants for one (host, series), computed once:
/// [`Curve::at`] is the whole per-round cost of its value.
#[derive(Debug, Clone, Copy)]
enum Curve {
    /// `level + amp * noise(key, round)`, noise uniform in [-1, 1).
    Gauge { level: f64, amp: f64, key: u64 },
    /// `start + slope * (round * STEP_SECS + offset)`.
    Counter { start: f64, slope: f64, offset: f64 },
}

impl Curve {
    /// The value at `round`.
    #[inline]
    fn at(self, round: u64) -> f64 {
        match self {
            Curve::Gauge { level, amp, key } => {
                let n = unit(mix(key ^ round.wrapping_mul(0x9E37_79B9))) * 2.0 - 1.0;
                level + amp * n
            }
            Curve::Counter {
                start,
                slope,
                offset,
            } => start + slope * (round as f64 * STEP_SECS + offset),
        }
    }
}

/// The simulated fleet (pure; see [`serve`] for HTTP).
#[derive(Debug)]
pub struct Fleet {
    cfg: FleetConfig,
    tpl: Template,
    sp: Special,
    inj: HashMap<u32, Vec<Injection>>,
    scrapes: Vec<AtomicU64>,
    kept: patch::Pages,
}

enum Override {
    Omit,
    Value(f64),
    Add(f64),
    Reset(u64),
}

impl Fleet {
    /// Build the fleet (template and injection schedule).
    pub fn new(cfg: FleetConfig) -> Self {
        let (tpl, sp) = build_template(cfg.series);
        let mut inj: HashMap<u32, Vec<Injection>> = HashMap::new();
        let hosts = cfg.hosts;
        let k = (hosts / 100).max(1);
        let mut rng = mix(cfg.seed ^ 0x5eed);
        let mut next = || {
            rng = mix(rng);
            rng
        };
        let kinds = [
            (InjKind::DiskFull, 0u64),
            (InjKind::Hot, 0),
            (InjKind::RateSpike, 1),
            (InjKind::CounterReset, 1),
            (InjKind::DirtySpike, 3),
            (InjKind::UnitVanish, 1),
            (InjKind::Absent, 0),
            (InjKind::LoadOutlier, 0),
        ];
        for (kind, min_round) in kinds {
            if hosts == 0 || cfg.rounds <= min_round {
                continue;
            }
            let mut used = Vec::new();
            for _ in 0..k.min(hosts) {
                let mut h = (next() % u64::from(hosts)) as u32;
                while used.contains(&h) {
                    h = (h + 1) % hosts;
                }
                used.push(h);
                let round = min_round + next() % (cfg.rounds - min_round);
                let r = next() as usize;
                let (series, unit) = match kind {
                    InjKind::DiskFull => (sp.fs_avail[r % sp.fs_avail.len()], 0),
                    InjKind::Hot => (sp.temps[r % sp.temps.len()], 0),
                    InjKind::RateSpike => (sp.errs[0], 0),
                    InjKind::CounterReset => (sp.errs[1], 0),
                    InjKind::DirtySpike => (sp.dirty, 0),
                    InjKind::UnitVanish => (0, r % sp.units.len()),
                    InjKind::Absent => (sp.build_info, 0),
                    InjKind::LoadOutlier => (sp.load15, 0),
                };
                inj.entry(h).or_default().push(Injection {
                    kind,
                    series,
                    unit,
                    round,
                });
            }
        }
        // a host may have at most one vanishing unit (keeps the truth simple)
        for v in inj.values_mut() {
            let mut seen = false;
            v.retain(|i| {
                if i.kind != InjKind::UnitVanish {
                    return true;
                }
                let keep = !seen;
                seen = true;
                keep
            });
        }
        let n = cfg.hosts as usize + cfg.bad.len();
        Fleet {
            cfg,
            tpl,
            sp,
            inj,
            scrapes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            kept: patch::Pages::new(n),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// Number of hosts including bad ones.
    pub fn host_count(&self) -> u32 {
        self.cfg.hosts + self.cfg.bad.len() as u32
    }

    /// Series per page.
    pub fn series_count(&self) -> usize {
        self.tpl.specs.len()
    }

    /// Target URLs for a fleet served at `addr`.
    pub fn target_urls(&self, addr: SocketAddr) -> Vec<String> {
        (0..self.host_count())
            .map(|i| format!("http://{addr}/host/{i}/metrics"))
            .collect()
    }

    /// Expected anomaly findings of the built-in rules for rounds `0..rounds`.
    pub fn ground_truth(&self, rounds: u64) -> Vec<ExpectedFinding> {
        let mut out = Vec::new();
        for (&host, v) in &self.inj {
            for i in v {
                if i.round >= rounds {
                    continue;
                }
                let mut e = |check: &str, series: String| {
                    out.push(ExpectedFinding {
                        host,
                        round: i.round,
                        check: check.into(),
                        series,
                    })
                };
                match i.kind {
                    InjKind::DiskFull => e("disk_almost_full", self.tpl.key(i.series)),
                    InjKind::Hot => e("overheating", self.tpl.key(i.series)),
                    InjKind::RateSpike => e("nic_errors", self.tpl.key(i.series)),
                    InjKind::CounterReset => {}
                    InjKind::DirtySpike => e("dirty_spike", self.tpl.key(i.series)),
                    InjKind::UnitVanish => {
                        for s in self.sp.units[i.unit] {
                            e("unit_vanished", self.tpl.key(s));
                        }
                    }
                    InjKind::Absent => e("exporter_missing", "node_exporter_build_info".into()),
                    InjKind::LoadOutlier => e("load_outlier", "node_load15".into()),
                }
            }
        }
        out.sort();
        out
    }

    /// A host's uniform draw for a group of series (one per host and group).
    fn host_unit(&self, host: u32, group: u32) -> f64 {
        unit(mix(self.cfg.seed
            ^ (u64::from(host) << 32)
            ^ u64::from(group).wrapping_mul(0x2545_F491_4F6C_DD1D)))
    }

    /// The constants of series `s`'s curve on `host` (None: not a gauge or
    /// counter).
    fn curve(&self, host: u32, s: u32) -> Option<Curve> {
        let spec = self.tpl.specs[s as usize];
        match spec.gv {
            Gen::Gauge { base, spread, amp } => Some(Curve::Gauge {
                level: base * (1.0 + spread * (self.host_unit(host, spec.group) - 0.5)),
                amp,
                key: self.cfg.seed ^ (u64::from(host) << 40) ^ (u64::from(s) << 20),
            }),
            Gen::Counter { base, rate } => {
                let h = self.host_unit(host, spec.group);
                Some(Curve::Counter {
                    start: base * (1.0 + h),
                    slope: rate * (0.5 + h),
                    offset: 1.0e5 * (1.0 + h),
                })
            }
            Gen::Const(_) | Gen::FracOf { .. } => None,
        }
    }

    /// Whether series `s`'s value (without injections) changes between rounds.
    fn varies(&self, s: u32) -> bool {
        match self.tpl.specs[s as usize].gv {
            Gen::Const(_) => false,
            Gen::Gauge { amp, .. } => amp != 0.0,
            Gen::Counter { rate, .. } => rate != 0.0,
            Gen::FracOf { of, .. } => self.varies(of),
        }
    }

    /// Whether an injection on `host` touches series `s`.
    fn injected(&self, host: u32, s: u32) -> bool {
        self.inj
            .get(&host)
            .is_some_and(|v| v.iter().any(|i| i.series == s))
    }

    fn base_value(&self, host: u32, s: u32, round: u64) -> f64 {
        if let Some(c) = self.curve(host, s) {
            return c.at(round);
        }
        let spec = self.tpl.specs[s as usize];
        match spec.gv {
            Gen::FracOf { of, lo, hi } => {
                let total = self.base_value(host, of, round);
                total * (lo + (hi - lo) * self.host_unit(host, spec.group))
            }
            Gen::Const(v) => v,
            // Covered by the curve above.
            Gen::Gauge { .. } | Gen::Counter { .. } => f64::NAN,
        }
    }

    fn value(&self, host: u32, s: u32, round: u64, ov: Option<&Override>) -> Option<f64> {
        let spec = self.tpl.specs[s as usize];
        let round_f = |v: f64| {
            let p = 10f64.powi(i32::from(spec.dec));
            (v * p).round() / p
        };
        Some(match ov {
            None => self.base_value(host, s, round),
            Some(Override::Omit) => return None,
            Some(Override::Value(v)) => *v,
            Some(Override::Add(d)) => self.base_value(host, s, round) + d,
            Some(Override::Reset(at)) => {
                round_f(self.base_value(host, s, round)) - round_f(self.base_value(host, s, *at))
                    + 2.0
            }
        })
    }

    fn overrides(&self, host: u32, round: u64) -> Vec<(u32, Override)> {
        let mut out = Vec::new();
        let Some(v) = self.inj.get(&host) else {
            return out;
        };
        for i in v {
            match i.kind {
                InjKind::DiskFull if round == i.round => {
                    let of = match self.tpl.specs[i.series as usize].gv {
                        Gen::FracOf { of, .. } => of,
                        _ => i.series,
                    };
                    out.push((
                        i.series,
                        Override::Value((self.base_value(host, of, round) * 0.02).round()),
                    ));
                }
                InjKind::Hot if round == i.round => out.push((i.series, Override::Value(97.0))),
                InjKind::RateSpike if round >= i.round => {
                    out.push((i.series, Override::Add(5000.0)))
                }
                InjKind::CounterReset if round >= i.round => {
                    out.push((i.series, Override::Reset(i.round)))
                }
                InjKind::DirtySpike if round == i.round => {
                    out.push((i.series, Override::Add(3.0e8)));
                }
                InjKind::UnitVanish if round >= i.round => {
                    for s in self.sp.units[i.unit] {
                        out.push((s, Override::Omit));
                    }
                }
                InjKind::Absent if round == i.round => out.push((i.series, Override::Omit)),
                InjKind::LoadOutlier if round == i.round => {
                    out.push((i.series, Override::Value(40.0)))
                }
                _ => {}
            }
        }
        out.sort_by_key(|o| o.0);
        out
    }

    /// Render host `host`'s page for `round` into `out` (appends).
    pub fn render(&self, host: u32, round: u64, out: &mut Vec<u8>) {
        self.render_with(host, round, None, out);
    }

    /// [`Fleet::render`], every sample stamped `ts_ms` when given.
    fn render_with(&self, host: u32, round: u64, ts_ms: Option<u64>, out: &mut Vec<u8>) {
        let ovs = self.overrides(host, round);
        self.render_marked(host, round, ts_ms, &ovs, out, |_, _, _| {});
    }

    /// [`Fleet::render_with`] given the round's overrides; `mark(series,
    /// scaled, range)` learns each value (as [`scaled`] gives it) and where
    /// its text went in `out`.
    fn render_marked(
        &self,
        host: u32,
        round: u64,
        ts_ms: Option<u64>,
        ovs: &[(u32, Override)],
        out: &mut Vec<u8>,
        mut mark: impl FnMut(u32, Option<i64>, std::ops::Range<usize>),
    ) {
        let mut oi = 0;
        let text = &self.tpl.text;
        out.reserve(text.len() + self.tpl.specs.len() * 14);
        for (s, spec) in self.tpl.specs.iter().enumerate() {
            let s = s as u32;
            out.extend_from_slice(&text[spec.head.0 as usize..spec.head.1 as usize]);
            while oi < ovs.len() && ovs[oi].0 < s {
                oi += 1;
            }
            let ov = ovs.get(oi).filter(|o| o.0 == s).map(|o| &o.1);
            let Some(v) = self.value(host, s, round, ov) else {
                continue;
            };
            out.extend_from_slice(&text[spec.line.0 as usize..spec.line.1 as usize]);
            let at = out.len();
            write_num(out, v, spec.dec);
            mark(s, scaled(v, spec.dec), at..out.len());
            if let Some(ts) = ts_ms {
                out.push(b' ');
                write_u64(out, ts);
            }
            out.push(b'\n');
        }
    }

    /// The page served for `host` at `round` (None: host unknown).
    /// Bad hosts give their misbehaviour via [`Fleet::bad_kind`].
    pub fn page(&self, host: u32, round: Option<u64>) -> Option<Vec<u8>> {
        self.page_with(host, round, false)
    }

    /// [`Fleet::page`]; with `stamped`, every sample carries its simulated
    /// time (round x [`STEP_SECS`]) as timestamp.
    pub fn page_with(&self, host: u32, round: Option<u64>, stamped: bool) -> Option<Vec<u8>> {
        let round = self.round_of(host, round)?;
        let mut out = Vec::new();
        self.render_with(host, round, stamped.then(|| stamp_ms(round)), &mut out);
        Some(out)
    }

    /// [`Fleet::page_with`] as served over HTTP: the same bytes, but a
    /// plain page is patched from the host's page of an earlier round
    /// where it can be (only the values that change are written).
    pub fn served_page(&self, host: u32, round: Option<u64>, stamped: bool) -> Option<Bytes> {
        let round = self.round_of(host, round)?;
        if stamped {
            let mut out = Vec::new();
            self.render_with(host, round, Some(stamp_ms(round)), &mut out);
            return Some(out.into());
        }
        Some(self.kept.page(self, host, round))
    }

    /// The round to serve (`round`, or the host's next one); None for an
    /// unknown host.
    fn round_of(&self, host: u32, round: Option<u64>) -> Option<u64> {
        if host >= self.cfg.hosts {
            return None;
        }
        Some(round.unwrap_or_else(|| {
            self.scrapes
                .get(host as usize)
                .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed))
        }))
    }

    /// Misbehaviour of a bad host.
    pub fn bad_kind(&self, host: u32) -> Option<BadKind> {
        host.checked_sub(self.cfg.hosts)
            .and_then(|i| self.cfg.bad.get(i as usize).copied())
    }
}

/// A stamped page's timestamp for `round` (ms of simulated time).
fn stamp_ms(round: u64) -> u64 {
    (round as f64 * STEP_SECS * 1000.0) as u64
}

/// Two ASCII digits for each of 0..100: number formatting two digits per
/// division.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Powers of ten up to 10^19 (the largest in a u64).
const POW10_U64: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// `x` rounded half away from zero, as `f64::round` does, for
/// |x| < 9e18; without a call into libm (no SSE4.1 `roundsd` on the
/// baseline x86-64 target: `round` was 5% of the fleet's CPU).
#[inline]
fn round_to_i64(x: f64) -> i64 {
    let t = x as i64;
    // Exact: below 2^53 the fraction is representable; above, x is an integer.
    let f = x - t as f64;
    if f >= 0.5 {
        t + 1
    } else if f <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// Write `n`'s decimal digits ending at `buf[end]` (exclusive); returns
/// where they start.
#[inline]
fn digits_backwards(buf: &mut [u8], mut end: usize, mut n: u64) -> usize {
    while n >= 100 {
        let d = (n % 100) as usize * 2;
        n /= 100;
        end -= 2;
        buf[end..end + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if n >= 10 {
        let d = n as usize * 2;
        end -= 2;
        buf[end..end + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    } else {
        end -= 1;
        buf[end] = b'0' + n as u8;
    }
    end
}

/// `v` in units of its last decimal (`dec` at most 9), rounded as
/// `f64::round` does; None when it is not finite or too large for the
/// fixed-decimal spelling.
#[inline]
fn scaled(v: f64, dec: u8) -> Option<i64> {
    let x = v * POW10_U64[usize::from(dec.min(9))] as f64;
    // NaN fails the comparison too.
    (x.abs() < 9.0e18).then(|| round_to_i64(x))
}

/// Whether [`write_fixed`] spells `n` with `dec` decimals in `len` bytes
/// and with the sign of `old`, `len` being the length of `old`'s
/// spelling: the bounds of that width instead of counting `n`'s digits
/// (`ilog10` was 7% of a patched page's instructions, callgrind
/// `examples/bench_parts serve`).
#[inline]
fn same_width(n: i64, old: i64, len: usize, dec: u8) -> bool {
    let dec = usize::from(dec.min(9));
    // Digits of the spelling; fixed decimals pad it to at least dec + 1.
    let Some(digits) = len.checked_sub(usize::from(dec > 0) + usize::from(old < 0)) else {
        return false;
    };
    let lo = match digits.checked_sub(1) {
        Some(d) if digits > dec + 1 => POW10_U64.get(d).copied().unwrap_or(u64::MAX),
        Some(_) => 0,
        None => return false,
    };
    let m = n.unsigned_abs();
    (n < 0) == (old < 0) && m >= lo && POW10_U64.get(digits).is_none_or(|&hi| m < hi)
}

/// Write `n` (from [`scaled`]) with `dec` fixed decimals so that it ends at
/// `buf[end]` (exclusive); returns where it starts.
#[inline]
fn write_fixed(buf: &mut [u8], mut end: usize, n: i64, dec: u8) -> usize {
    // Fraction digits first (divisions by constants, no `div`), then the
    // integer part two digits at a time.
    let mut m = n.unsigned_abs();
    let dec = dec.min(9);
    if dec > 0 {
        for _ in 0..dec {
            end -= 1;
            buf[end] = b'0' + (m % 10) as u8;
            m /= 10;
        }
        end -= 1;
        buf[end] = b'.';
    }
    end = digits_backwards(buf, end, m);
    if n < 0 {
        end -= 1;
        buf[end] = b'-';
    }
    end
}

/// Write a number with `dec` fixed decimals (Prometheus spelling for non-finite).
pub fn write_num(out: &mut Vec<u8>, v: f64, dec: u8) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    let Some(n) = scaled(v, dec) else {
        out.extend_from_slice(format!("{v:e}").as_bytes());
        return;
    };
    let mut buf = [0u8; 40];
    let i = write_fixed(&mut buf, 40, n, dec);
    out.extend_from_slice(&buf[i..]);
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 40];
    let i = digits_backwards(&mut buf, 40, n);
    out.extend_from_slice(&buf[i..]);
}

fn parse_path(path: &str, query: Option<&str>) -> Option<(u32, Option<u64>)> {
    let rest = path.strip_prefix("/host/")?;
    let (id, tail) = rest.split_once('/')?;
    if tail != "metrics" {
        return None;
    }
    let id = id.parse().ok()?;
    let round = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("round=")?.parse().ok())
    });
    Some((id, round))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    fleet: Arc<Fleet>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some((host, query_round)) = parse_path(req.uri().path(), req.uri().query()) else {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
    };
    // `?round=N` (the built-in run, logical clock): plain page. Otherwise
    // the round asked by header, or the host's next one: stamped page.
    let header_round = req
        .headers()
        .get(ROUND_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let stamped = query_round.is_none();
    let round = query_round.or(header_round);
    if let Some(bad) = fleet.bad_kind(host) {
        return Ok(match bad {
            BadKind::Status500 => text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
            BadKind::Garbage => {
                let mut g = b"<html><body>Not metrics { at all\n".to_vec();
                let mut x = fleet.cfg.seed;
                for _ in 0..2048 {
                    x = mix(x);
                    g.push((x & 0xff) as u8);
                }
                text(StatusCode::OK, g)
            }
            BadKind::Oversize(n) => {
                let line =
                    b"node_padding_bytes{pad=\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"} 1\n";
                let mut g = Vec::with_capacity(n + line.len());
                while g.len() < n {
                    g.extend_from_slice(line);
                }
                text(StatusCode::OK, g)
            }
            BadKind::Slow(d) => {
                tokio::time::sleep(d).await;
                match fleet.page_with(0, round, stamped) {
                    Some(p) => text(StatusCode::OK, p),
                    None => text(StatusCode::NOT_FOUND, "not found\n"),
                }
            }
        });
    }
    let page = fleet.served_page(host, round, stamped);
    Ok(match page {
        Some(p) => {
            let mut r = text(StatusCode::OK, p);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        None => text(StatusCode::NOT_FOUND, "no such host\n"),
    })
}

/// Serve `fleet` on `listener` until the task is dropped/aborted.
pub async fn serve(fleet: Arc<Fleet>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let f = fleet.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(f.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A fleet served on the current tokio runtime; stops when dropped.
#[derive(Debug)]
pub struct FleetServer {
    /// Bound address (127.0.0.1:port).
    pub addr: SocketAddr,
    /// The fleet.
    pub fleet: Arc<Fleet>,
    task: tokio::task::JoinHandle<()>,
}

impl FleetServer {
    /// Bind 127.0.0.1:`port` (0: any) and serve.
    pub async fn start(fleet: Arc<Fleet>, port: u16) -> std::io::Result<FleetServer> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(fleet.clone(), listener));
        Ok(FleetServer { addr, fleet, task })
    }

    /// Target URLs of all hosts.
    pub fn target_urls(&self) -> Vec<String> {
        self.fleet.target_urls(self.addr)
    }
}

impl Drop for FleetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start `fleetcheck serve-fleet` (this executable) as a child process and
/// read its address; the child exits when its stdin closes (this process
/// ends) or when the returned handle is dropped.
pub async fn spawn_fleet_process(
    cfg: &FleetConfig,
) -> Result<(tokio::process::Child, String), crate::Error> {
    spawn_fleet(cfg).await.map_err(crate::Error::Fleet)
}

async fn spawn_fleet(cfg: &FleetConfig) -> Result<(tokio::process::Child, String), String> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve-fleet", "--port", "0", "--exit-on-stdin-eof"])
        .args([
            "--hosts",
            &cfg.hosts.to_string(),
            "--series",
            &cfg.series.to_string(),
        ])
        .args([
            "--seed",
            &cfg.seed.to_string(),
            "--rounds",
            &cfg.rounds.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start fleet process: {e}"))?;
    let stdout = child.stdout.take().ok_or("fleet process has no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .map_err(|_| "fleet process did not report its address in 60 s".to_string())?
        .map_err(|e| format!("reading fleet process output: {e}"))?
        .ok_or("fleet process exited before reporting its address")?;
    let addr = line
        .strip_prefix("listening http://")
        .ok_or_else(|| format!("unexpected fleet process output {line:?}"))?
        .trim()
        .to_string();
    // Keep draining its stdout so it never blocks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addr))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::expfmt::{Item, MetricType, Parser};

    /// The scan's fast path (hints, no identity rewriting) needs every
    /// series written the canonical way.
    #[test]
    fn pages_write_every_series_canonically() {
        let f = Fleet::new(FleetConfig {
            hosts: 3,
            series: 2000,
            ..Default::default()
        });
        let mut page = Vec::new();
        f.render(1, 2, &mut page);
        let mut n = 0;
        for it in Parser::new(&page) {
            if let Item::Sample(s) = it.unwrap() {
                assert!(s.canonical, "line {}: {}", s.line, s.key);
                n += 1;
            }
        }
        assert!(n >= 1900);
    }

    #[test]
    fn stamped_pages_carry_the_simulated_time() {
        let f = Fleet::new(FleetConfig {
            hosts: 2,
            series: 100,
            ..Default::default()
        });
        let page = f.page_with(0, Some(3), true).unwrap();
        for it in Parser::new(&page) {
            if let Item::Sample(s) = it.unwrap() {
                assert_eq!(s.timestamp_ms, Some(45_000));
            }
        }
        assert_eq!(
            f.page_with(0, Some(3), false).unwrap().len(),
            f.page(0, Some(3)).unwrap().len()
        );
    }

    #[test]
    fn page_is_valid_and_sized() {
        for n in [50u32, 500, 2000] {
            let f = Fleet::new(FleetConfig {
                hosts: 10,
                series: n,
                ..Default::default()
            });
            let p = f.page(3, Some(2)).unwrap();
            let mut samples = 0;
            let mut hist = 0;
            let mut summ = 0;
            for it in Parser::new(&p) {
                if let Item::Sample(s) = it.unwrap() {
                    samples += 1;
                    hist += usize::from(s.family_type == MetricType::Histogram);
                    summ += usize::from(s.family_type == MetricType::Summary);
                }
            }
            assert!(samples >= n as usize, "{samples} < {n}");
            if n >= 200 {
                assert_eq!(samples, n as usize);
            }
            assert!(hist >= 14 && summ >= 7);
            // deterministic
            assert_eq!(p, f.page(3, Some(2)).unwrap());
            assert_ne!(p, f.page(3, Some(3)).unwrap());
        }
    }

    #[test]
    fn write_num_formats() {
        let mut v = Vec::new();
        for (x, d) in [
            (1.5, 2),
            (-0.25, 3),
            (12345.0, 0),
            (0.000_015, 7),
            (f64::NAN, 1),
            (f64::INFINITY, 0),
        ] {
            write_num(&mut v, x, d);
            v.push(b' ');
        }
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "1.50 -0.250 12345 0.0000150 NaN +Inf "
        );
    }

    /// The formatting before the digit-pair table (libm `round`, one
    /// digit per division): the pages must not change.
    fn reference_write_num(out: &mut Vec<u8>, v: f64, dec: u8) {
        if !v.is_finite() {
            write_num(out, v, dec);
            return;
        }
        let scale = 10u64.pow(u32::from(dec.min(9)));
        let x = (v * scale as f64).round();
        if x.abs() >= 9.0e18 {
            out.extend_from_slice(format!("{v:e}").as_bytes());
            return;
        }
        let mut n = x as i64;
        if n < 0 {
            out.push(b'-');
            n = -n;
        }
        let n = n as u64;
        out.extend_from_slice((n / scale).to_string().as_bytes());
        if dec > 0 {
            out.push(b'.');
            let s = format!("{:0w$}", n % scale, w = usize::from(dec.min(9)));
            out.extend_from_slice(s.as_bytes());
        }
    }

    #[test]
    fn write_num_matches_the_reference() {
        let mut cases = vec![
            (-0.4, 0),
            (0.5, 0),
            (2.5, 0),
            (-2.5, 0),
            (-0.5, 1),
            (99.995, 2),
            (1e17, 0),
            (8.9e18, 0),
            (-8.9e9, 9),
            (123_456_789.123_456_79, 9),
            (4_503_599_627_370_495.5, 0),
        ];
        let mut x = 1u64;
        for i in 0..200_000u64 {
            x = mix(x ^ i);
            let mag = 10f64.powi((x % 19) as i32 - 6);
            let v = (unit(x) - 0.3) * mag;
            cases.push((v, (x >> 20) as u8 % 11));
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (v, d) in cases {
            a.clear();
            b.clear();
            write_num(&mut a, v, d);
            reference_write_num(&mut b, v, d);
            assert_eq!(a, b, "{v:?} with {d} decimals");
        }
        let mut t = Vec::new();
        write_u64(&mut t, 0);
        write_u64(&mut t, 1_700_000_000_123);
        write_u64(&mut t, u64::MAX);
        assert_eq!(t, b"0170000000012318446744073709551615");
    }

    /// The patch's width check says exactly whether two numbers are
    /// spelled with as many bytes and the same sign.
    #[test]
    fn same_width_matches_the_spelling() {
        let spell = |n: i64, dec: u8| {
            let mut buf = [0u8; 40];
            let i = write_fixed(&mut buf, 40, n, dec);
            40 - i
        };
        let mut x = 7u64;
        let mut pick = || {
            x = mix(x);
            let n = (x >> 1) as i64 % 10i64.pow((x % 18) as u32 + 1);
            if x & 1 == 1 { -n } else { n }
        };
        for dec in 0..=10u8 {
            for _ in 0..20_000 {
                let (old, new) = (pick(), pick());
                for n in [new, old, old + 1, old - 1, -old, 0] {
                    let same = spell(n, dec) == spell(old, dec) && (n < 0) == (old < 0);
                    assert_eq!(
                        same_width(n, old, spell(old, dec), dec),
                        same,
                        "{n} vs {old} with {dec} decimals"
                    );
                }
            }
        }
        assert!(
            !same_width(5, i64::MIN, 0, 2),
            "a slot of width 0 fits nothing"
        );
    }

    #[test]
    fn ground_truth_covers_every_kind() {
        let f = Fleet::new(FleetConfig {
            hosts: 20,
            series: 100,
            rounds: 5,
            ..Default::default()
        });
        let gt = f.ground_truth(5);
        for c in [
            "disk_almost_full",
            "overheating",
            "nic_errors",
            "dirty_spike",
            "unit_vanished",
            "exporter_missing",
            "load_outlier",
        ] {
            assert!(gt.iter().any(|e| e.check == c), "{c} missing in {gt:?}");
        }
    }

    #[test]
    fn path_parsing() {
        assert_eq!(
            parse_path("/host/12/metrics", Some("round=3")),
            Some((12, Some(3)))
        );
        assert_eq!(parse_path("/host/12/metrics", None), Some((12, None)));
        assert_eq!(parse_path("/host/x/metrics", None), None);
        assert_eq!(parse_path("/foo", None), None);
    }
}
