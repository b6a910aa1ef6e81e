//! Measurement helpers for the side-by-side benchmark (`fleetcheck --bench`):
//! CPU time from `getrusage` and `/proc/PID/stat`, peak RSS from
//! `/proc/PID/status` (reset per round through `/proc/PID/clear_refs`).
//! Linux only; every reading is `None`/0 where `/proc` is not available.

/// CPU time (user + system, seconds) of this process (`RUSAGE_SELF`,
/// every thread) or of its terminated and waited-for children
/// (`RUSAGE_CHILDREN`).
pub fn rusage_cpu_secs(children: bool) -> f64 {
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: getrusage writes into the zeroed struct we pass; no other
    // precondition.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above; `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system, seconds) of a live process, from
/// `/proc/PID/stat`.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) in parens.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some((utime + stime) / hz)
}

fn status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Peak resident set size (bytes) of a process (`None`: this one) since it
/// started or since its last [`reset_peak_rss`].
pub fn peak_rss(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|k| k * 1024)
}

/// Current resident set size (bytes) of a process (`None`: this one).
pub fn current_rss(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

/// Reset the peak RSS of a process (`None`: this one) to its current RSS
/// (`echo 5 > /proc/PID/clear_refs`). Returns false when not possible.
pub fn reset_peak_rss(pid: Option<u32>) -> bool {
    let path = match pid {
        Some(p) => format!("/proc/{p}/clear_refs"),
        None => "/proc/self/clear_refs".to_string(),
    };
    std::fs::write(path, "5").is_ok()
}

/// Peak RSS of one round: the parent's and the workers' (summed over the
/// workers alive at the end of the round).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundMem {
    /// The fleetcheck process.
    pub parent: u64,
    /// The worker processes, summed (0 in-process).
    pub workers: u64,
}

impl RoundMem {
    /// Parent + workers.
    pub fn total(&self) -> u64 {
        self.parent + self.workers
    }
}

/// Read and reset the per-round peak RSS of this process and `workers`.
/// `reset_ok` tells whether the peaks could be reset (otherwise the values
/// are peaks since start).
pub fn round_mem(workers: &[u32]) -> (RoundMem, bool) {
    let parent = peak_rss(None).or_else(|| current_rss(None)).unwrap_or(0);
    let mut ok = reset_peak_rss(None);
    let mut sum = 0;
    for &p in workers {
        sum += peak_rss(Some(p))
            .or_else(|| current_rss(Some(p)))
            .unwrap_or(0);
        ok &= reset_peak_rss(Some(p));
    }
    (
        RoundMem {
            parent,
            workers: sum,
        },
        ok,
    )
}

/// Bytes as MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Result of one run of the benchmark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchRun {
    /// `pool` or `in-process`.
    pub mode: String,
    /// Wall time of the scan (seconds; pool start-up included).
    pub wall_secs: f64,
    /// Points parsed.
    pub points: u64,
    /// CPU seconds of fleetcheck: parent (`RUSAGE_SELF`) + workers
    /// (`RUSAGE_CHILDREN` after the pool closed).
    pub cpu_parent: f64,
    /// CPU seconds of the workers.
    pub cpu_workers: f64,
    /// CPU seconds of the fleet process during the run.
    pub cpu_fleet: f64,
    /// Peak RSS per round.
    pub mem: Vec<RoundMem>,
    /// Whether the peaks were reset each round.
    pub per_round_peaks: bool,
    /// Findings verified against the injected anomalies.
    pub verified: bool,
    /// Anomalies found.
    pub anomalies: u64,
}

impl BenchRun {
    /// Points per second.
    pub fn points_per_sec(&self) -> f64 {
        if self.wall_secs > 0.0 {
            self.points as f64 / self.wall_secs
        } else {
            0.0
        }
    }

    /// CPU seconds of fleetcheck (parent + workers).
    pub fn cpu_fleetcheck(&self) -> f64 {
        self.cpu_parent + self.cpu_workers
    }

    /// Largest per-round peak (parent + workers).
    pub fn max_round_peak(&self) -> u64 {
        self.mem.iter().map(RoundMem::total).max().unwrap_or(0)
    }
}

/// Render runs side by side (the first one is the reference of `ratio`:
/// pool / baseline throughput when the first is the pool).
pub fn render(runs: &[BenchRun]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<11} {:>9} {:>11} {:>13} {:>9} {:>10} {:>9} {:>10} {:>16} {:>8}",
        "mode",
        "wall s",
        "points",
        "points/s",
        "cpu fc s",
        "(workers)",
        "cpu fleet",
        "pts/cpu-s",
        "peak RSS/round",
        "verified"
    );
    for r in runs {
        let cpu = r.cpu_fleetcheck();
        let _ = writeln!(
            s,
            "{:<11} {:>9.2} {:>11} {:>12.2}M {:>9.2} {:>10.2} {:>9.2} {:>9.2}M {:>12.0} MiB {:>8}",
            r.mode,
            r.wall_secs,
            r.points,
            r.points_per_sec() / 1e6,
            cpu,
            r.cpu_workers,
            r.cpu_fleet,
            if cpu > 0.0 {
                r.points as f64 / cpu / 1e6
            } else {
                0.0
            },
            mib(r.max_round_peak()),
            r.verified
        );
    }
    if let [a, b, ..] = runs {
        let base = b.points_per_sec();
        if base > 0.0 {
            let _ = writeln!(
                s,
                "ratio {} / {} (points/s): {:.3}",
                a.mode,
                b.mode,
                a.points_per_sec() / base
            );
        }
    }
    for r in runs {
        let _ = write!(
            s,
            "{} peak RSS per round{} (MiB, parent+workers):",
            r.mode,
            if r.per_round_peaks {
                ""
            } else {
                " (since start: clear_refs unavailable)"
            }
        );
        for m in &r.mem {
            if r.workers_present() {
                let _ = write!(s, " {:.0}+{:.0}", mib(m.parent), mib(m.workers));
            } else {
                let _ = write!(s, " {:.0}", mib(m.parent));
            }
        }
        let _ = writeln!(s);
    }
    s
}

/// The runs as one JSON object (`--bench --format json`): per run its
/// figures (CPU of fleetcheck and of the fleet process apart), and the
/// ratio pool / baseline in points/s when there are two runs.
pub fn render_json(runs: &[BenchRun], injected: usize) -> String {
    let run = |r: &BenchRun| {
        let cpu = r.cpu_fleetcheck();
        serde_json::json!({
            "mode": r.mode,
            "wall_secs": r.wall_secs,
            "points": r.points,
            "points_per_sec": r.points_per_sec(),
            "cpu_fleetcheck_secs": cpu,
            "cpu_parent_secs": r.cpu_parent,
            "cpu_workers_secs": r.cpu_workers,
            "cpu_fleet_secs": r.cpu_fleet,
            "cpu_ns_per_point": if r.points > 0 { cpu * 1e9 / r.points as f64 } else { 0.0 },
            "max_round_peak_rss_mib": mib(r.max_round_peak()),
            "anomalies": r.anomalies,
            "verified": r.verified,
        })
    };
    let ratio = match runs {
        [a, b, ..] if b.points_per_sec() > 0.0 => {
            serde_json::json!(a.points_per_sec() / b.points_per_sec())
        }
        _ => serde_json::Value::Null,
    };
    let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| {
        t.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
    });
    serde_json::json!({
        "runs": runs.iter().map(run).collect::<Vec<_>>(),
        "ratio_points_per_sec": ratio,
        "injected_anomalies": injected,
        "load_average_1m": load,
    })
    .to_string()
}

impl BenchRun {
    fn workers_present(&self) -> bool {
        self.mem.iter().any(|m| m.workers > 0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_this_process() {
        let cpu = rusage_cpu_secs(false);
        assert!(cpu >= 0.0);
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss(None).unwrap() > 0);
            assert!(current_rss(None).unwrap() > 0);
            assert!(proc_cpu_secs(std::process::id()).is_some());
        }
        let run = BenchRun {
            mode: "pool".into(),
            wall_secs: 2.0,
            points: 10,
            ..Default::default()
        };
        let text = render(&[run.clone(), run.clone()]);
        assert!(
            text.contains("ratio pool / pool (points/s): 1.000"),
            "{text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&render_json(&[run.clone(), run], 3)).unwrap();
        assert_eq!(v["ratio_points_per_sec"], 1.0);
        assert_eq!(v["runs"][0]["points_per_sec"], 5.0);
        assert_eq!(v["injected_anomalies"], 3);
    }
}
