//! The Python anchor of the benchmark (`fleetcheck bench --anchors`):
//! `anchors/fleetcheck_py.py`, the same scan written in good Python
//! (aiomultiprocess pool, uvloop, aiohttp keep-alive sessions, a fast line
//! parser, the same rules, host state sharded per worker), run against the
//! same simulated fleet in the same invocation as fleetcheck, so the ratio
//! of the two is measured rather than quoted.
//!
//! 1. [`provision`] finds an interpreter that can import the anchor's
//!    packages, or creates a virtual environment (`target/venv-fleetcheck-anchor`
//!    next to the binary) and installs `anchors/requirements.txt` into it;
//!    it fails with a message naming what is missing, before any scan.
//! 2. [`compare`] scans the fleet with fleetcheck on the pool, then runs the
//!    Python version on the same fleet (targets and rules handed over as
//!    files), checks that both found the same anomalies and renders points/s,
//!    CPU per point and the ratios ([`render`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::Error;
use crate::bench::{self, BenchRun};
use crate::pool::PoolSettings;
use crate::report::ExpectedFinding;
use crate::rules::Rules;
use crate::scan::ScanConfig;
use crate::state::{Finding, SCRAPE_KIND};
use crate::worker::WorkerInit;

/// What the anchor needs: `import` check run by [`provision`].
const IMPORTS: &str = "import sys\n\
if sys.version_info < (3, 11): sys.exit('Python >= 3.11 is needed (tomllib), this is ' + sys.version.split()[0])\n\
import aiomultiprocess, aiohttp, uvloop\n";

/// Where the anchor's files are and which interpreter runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorSettings {
    /// An interpreter given by the user (`--anchor-python`); it must already
    /// have the packages. None: the virtual environment below.
    pub python: Option<PathBuf>,
    /// `fleetcheck_py.py`.
    pub script: PathBuf,
    /// `requirements.txt` (exact versions).
    pub requirements: PathBuf,
    /// Virtual environment created when needed.
    pub venv: PathBuf,
}

impl Default for AnchorSettings {
    /// The files of this source tree (`apps/fleetcheck/anchors`) and a
    /// virtual environment beside the build profile's directory
    /// (`target/venv-fleetcheck-anchor` for `target/release/fleetcheck`).
    fn default() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("anchors");
        let target = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
        AnchorSettings {
            python: None,
            script: dir.join("fleetcheck_py.py"),
            requirements: dir.join("requirements.txt"),
            venv: target.join("venv-fleetcheck-anchor"),
        }
    }
}

/// Does `python` start, is it recent enough and does it import the
/// anchor's packages? Err: what it said (its last line of stderr).
fn check_python(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args(["-c", IMPORTS])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("failed without a message")
        .trim()
        .to_string())
}

fn run_step(cmd: &mut Command, what: &str) -> Result<(), Error> {
    // Their output goes to our stderr; stdout is the report's.
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .map_err(|e| Error::io("duplicating stderr", e))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .status()
        .map_err(|e| Error::Anchor(format!("{what}: cannot start it: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Anchor(format!("{what} failed ({status})")))
    }
}

/// An interpreter that runs the anchor: `settings.python` when given
/// (checked, never changed), else the virtual environment, created with
/// `python3 -m venv` and provisioned with `pip install -r requirements.txt`
/// when it cannot import the packages yet. Blocking (pip may take a minute
/// the first time); every failure names what is missing.
pub fn provision(settings: &AnchorSettings) -> Result<PathBuf, Error> {
    if !settings.script.is_file() {
        return Err(Error::Anchor(format!(
            "script {} not found",
            settings.script.display()
        )));
    }
    let req = settings.requirements.display();
    if let Some(p) = &settings.python {
        return check_python(p).map(|()| p.clone()).map_err(|e| {
            Error::Anchor(format!(
                "{} cannot run the anchor: {e} (install its packages with `{} -m pip install -r {req}`)",
                p.display(),
                p.display()
            ))
        });
    }
    let python = settings.venv.join("bin").join("python");
    if check_python(&python).is_ok() {
        return Ok(python);
    }
    if !python.exists() {
        eprintln!("anchors: creating {}", settings.venv.display());
        check_python(Path::new("python3")).or_else(|e| {
            // Only the version and the start matter before the venv exists.
            if e.contains("cannot run") || e.contains(">= 3.11") {
                Err(Error::Anchor(format!(
                    "{e}: the Python anchor needs Python 3.11 or later as `python3` (or pass --anchor-python)"
                )))
            } else {
                Ok(())
            }
        })?;
        run_step(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&settings.venv),
            "python3 -m venv",
        )?;
    }
    eprintln!("anchors: installing {req} into {}", settings.venv.display());
    run_step(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--timeout",
                "30",
                "--retries",
                "2",
                "-r",
            ])
            .arg(&settings.requirements),
        &format!("pip install -r {req}"),
    )
    .map_err(|e| Error::Anchor(format!("{e}: the packages of {req} could not be installed")))?;
    check_python(&python).map_err(|e| {
        Error::Anchor(format!(
            "{} still cannot run the anchor after pip install -r {req}: {e}",
            python.display()
        ))
    })?;
    Ok(python)
}

/// The JSON summary `fleetcheck_py.py` prints (the fields used here).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PyReport {
    /// Samples parsed.
    pub points: u64,
    /// Successful scrapes.
    pub scrapes: u64,
    /// Failed scrapes.
    pub scrape_failures: u64,
    /// Wall seconds from pool start to pool closed, as the script timed it.
    pub wall_secs: f64,
    /// CPU seconds of the script's parent process.
    pub cpu_parent_secs: f64,
    /// CPU seconds of its worker processes.
    pub cpu_workers_secs: f64,
    /// Anomalies as `[host, round, check, series]`.
    pub findings: Vec<(u32, u64, String, String)>,
    /// Python version.
    pub python: String,
    /// Versions of aiomultiprocess, aiohttp and uvloop.
    pub versions: std::collections::BTreeMap<String, String>,
}

/// The anomalies of a scan as comparable keys.
fn anomaly_set(findings: impl Iterator<Item = ExpectedFinding>) -> BTreeSet<ExpectedFinding> {
    findings.collect()
}

/// fleetcheck's anomalies (scrape problems left out) as comparable keys.
pub fn fleetcheck_anomalies(findings: &[Finding]) -> BTreeSet<ExpectedFinding> {
    anomaly_set(
        findings
            .iter()
            .filter(|f| f.kind != SCRAPE_KIND)
            .map(|f| ExpectedFinding {
                host: f.host,
                round: f.round,
                check: f.check.clone(),
                series: f.series.clone(),
            }),
    )
}

impl PyReport {
    /// The Python version's anomalies as comparable keys.
    pub fn anomalies(&self) -> BTreeSet<ExpectedFinding> {
        anomaly_set(
            self.findings
                .iter()
                .map(|(host, round, check, series)| ExpectedFinding {
                    host: *host,
                    round: *round,
                    check: check.clone(),
                    series: series.clone(),
                }),
        )
    }
}

/// How two sets of anomalies differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnomalyDiff {
    /// Found by both.
    pub both: usize,
    /// Found by fleetcheck only.
    pub only_fleetcheck: Vec<ExpectedFinding>,
    /// Found by the Python version only.
    pub only_python: Vec<ExpectedFinding>,
}

impl AnomalyDiff {
    /// Compare fleetcheck's anomalies with the Python version's.
    pub fn new(fc: &BTreeSet<ExpectedFinding>, py: &BTreeSet<ExpectedFinding>) -> Self {
        AnomalyDiff {
            both: fc.intersection(py).count(),
            only_fleetcheck: fc.difference(py).cloned().collect(),
            only_python: py.difference(fc).cloned().collect(),
        }
    }

    /// The same anomalies on both sides.
    pub fn same(&self) -> bool {
        self.only_fleetcheck.is_empty() && self.only_python.is_empty()
    }
}

/// Run `fleetcheck_py.py` with `python` on the targets of `cfg` (the
/// simulated fleet: `?round=N` and the logical clock, as fleetcheck scans
/// it), `settings.processes` workers of `settings.concurrency` scrapes each.
/// CPU is measured from here (`RUSAGE_CHILDREN` once the script and,
/// through it, its workers were reaped). Killed after `timeout`.
pub async fn run_python(
    python: &Path,
    anchor: &AnchorSettings,
    cfg: &ScanConfig,
    rules: &Rules,
    settings: PoolSettings,
    timeout: Duration,
) -> Result<(PyReport, BenchRun), Error> {
    let dir = std::env::temp_dir().join(format!("fleetcheck-anchor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let targets = dir.join("targets.txt");
    let rules_file = dir.join("rules.toml");
    let mut text = String::new();
    for t in &cfg.targets {
        text.push_str(&t.url);
        text.push('\n');
    }
    std::fs::write(&targets, text)
        .map_err(|e| Error::io(format!("writing {}", targets.display()), e))?;
    std::fs::write(&rules_file, rules.to_toml())
        .map_err(|e| Error::io(format!("writing {}", rules_file.display()), e))?;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&anchor.script)
        .arg("--targets")
        .arg(&targets)
        .arg("--rules")
        .arg(&rules_file)
        .args(["--rounds", &cfg.rounds.to_string()])
        .args(["--processes", &settings.processes.to_string()])
        .args(["--concurrency", &settings.concurrency.to_string()])
        .args(["--timeout-ms", &cfg.opts.timeout_ms.to_string()])
        .args(["--max-page-bytes", &cfg.opts.max_bytes.to_string()]);
    if cfg.opts.round_query {
        cmd.arg("--round-query");
    }
    match cfg.opts.clock {
        crate::scan::Clock::Logical { step } => {
            cmd.args(["--clock", "logical", "--step", &step.to_string()])
        }
        crate::scan::Clock::Wall => cmd.args(["--clock", "wall"]),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let children0 = bench::rusage_cpu_secs(true);
    let start = Instant::now();
    let child = cmd
        .spawn()
        .map_err(|e| Error::Anchor(format!("cannot start {}: {e}", python.display())))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output()).await;
    let wall = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out
        .map_err(|_| {
            Error::Anchor(format!(
                "{} did not finish in {} s (killed)",
                anchor.script.display(),
                timeout.as_secs()
            ))
        })?
        .map_err(|e| Error::io("waiting for the Python anchor", e))?;
    if !out.status.success() {
        return Err(Error::Anchor(format!(
            "{} failed ({}); its messages are above",
            anchor.script.display(),
            out.status
        )));
    }
    let report: PyReport = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Anchor(format!(
            "{} printed no summary that can be read: {e}",
            anchor.script.display()
        ))
    })?;
    let mut cpu = bench::rusage_cpu_secs(true) - children0;
    if cpu <= 0.0 {
        cpu = report.cpu_parent_secs + report.cpu_workers_secs;
    }
    let run = BenchRun {
        mode: "python".into(),
        wall_secs: wall,
        points: report.points,
        cpu_parent: (cpu - report.cpu_workers_secs).max(0.0),
        cpu_workers: report.cpu_workers_secs,
        anomalies: report.findings.len() as u64,
        ..Default::default()
    };
    Ok((report, run))
}

/// fleetcheck on the pool, as `fleetcheck scan` runs it: the run and its
/// anomalies.
async fn run_fleetcheck(
    cfg: &ScanConfig,
    rules: &Rules,
    settings: PoolSettings,
    fleet_pid: Option<u32>,
    truth: &[ExpectedFinding],
) -> Result<(BenchRun, BTreeSet<ExpectedFinding>), Error> {
    let fleet_cpu = || fleet_pid.and_then(bench::proc_cpu_secs).unwrap_or(0.0);
    let (self0, children0, fleet0) = (
        bench::rusage_cpu_secs(false),
        bench::rusage_cpu_secs(true),
        fleet_cpu(),
    );
    let start = Instant::now();
    let init = WorkerInit {
        rules: rules.clone(),
        opts: cfg.opts,
        clients: cfg.clients.clone(),
    };
    // As the main job and `--bench` scan the built-in fleet.
    let scanner = crate::pool::PoolScanner::start(init, settings)
        .await?
        .with_chunk_size(crate::pool::LOOPBACK_CHUNK);
    let report = scanner.scan(cfg, Arc::new(Mutex::new(()))).await?;
    scanner.close().await?;
    let run = BenchRun {
        mode: "fleetcheck".into(),
        wall_secs: start.elapsed().as_secs_f64(),
        points: report.points,
        cpu_parent: bench::rusage_cpu_secs(false) - self0,
        cpu_workers: bench::rusage_cpu_secs(true) - children0,
        cpu_fleet: fleet_cpu() - fleet0,
        verified: crate::report::verify(&report.findings, truth).passed()
            && report.scrape_failures == 0,
        anomalies: report.anomalies,
        ..Default::default()
    };
    Ok((run, fleetcheck_anomalies(&report.findings)))
}

/// fleetcheck (pool) and the Python anchor, one after the other, `pairs`
/// times (at least once), on the fleet of `cfg` (its process `fleet_pid`,
/// whose CPU is counted apart). Prints each pair and, for more than one,
/// the medians on stdout; Err when the Python version cannot run or the
/// two found different anomalies.
#[allow(clippy::too_many_arguments)]
pub async fn compare(
    python: &Path,
    anchor: &AnchorSettings,
    cfg: &ScanConfig,
    rules: &Rules,
    settings: PoolSettings,
    fleet_pid: Option<u32>,
    truth: &[ExpectedFinding],
    pairs: usize,
) -> Result<(), Error> {
    let fleet_cpu = || fleet_pid.and_then(bench::proc_cpu_secs).unwrap_or(0.0);
    let pairs = pairs.max(1);
    eprintln!(
        "anchors: fleetcheck (pool of {} x {}) then Python ({} processes x {}) on the same fleet, {pairs} time(s)",
        settings.processes, settings.concurrency, settings.processes, settings.concurrency
    );
    let mut done: Vec<(BenchRun, BenchRun)> = Vec::new();
    let mut failure = None;
    for pair in 1..=pairs {
        let (fc, fc_anomalies) = run_fleetcheck(cfg, rules, settings, fleet_pid, truth).await?;
        eprintln!(
            "anchors: pair {pair}: fleetcheck done in {:.2} s; Python next (about {:.0} s at 0.5 M points/s)",
            fc.wall_secs,
            fc.points as f64 / 0.5e6
        );
        // The Python version, same fleet. Bounded: a run 10x slower than
        // 0.1 M points/s is broken, not slow.
        let timeout = Duration::from_secs(120 + fc.points / 100_000);
        let fleet0 = fleet_cpu();
        let (py_report, mut py) = run_python(python, anchor, cfg, rules, settings, timeout).await?;
        py.cpu_fleet = fleet_cpu() - fleet0;
        let py_anomalies = py_report.anomalies();
        py.verified = crate::report::verify(&to_findings(&py_anomalies), truth).passed()
            && py_report.scrape_failures == 0;
        let diff = AnomalyDiff::new(&fc_anomalies, &py_anomalies);
        print_out(&render(&fc, &py, &py_report, &diff));
        if !diff.same() {
            failure.get_or_insert(format!(
                "anchors: fleetcheck and the Python version found different anomalies ({} only by fleetcheck, {} only by Python)",
                diff.only_fleetcheck.len(),
                diff.only_python.len()
            ));
        } else if !(fc.verified && py.verified) {
            failure.get_or_insert(
                "anchors: verification against the injected anomalies failed".to_string(),
            );
        }
        done.push((fc, py));
    }
    if done.len() > 1 {
        print_out(&render_medians(&done));
    }
    match failure {
        Some(f) => Err(Error::Verification(f)),
        None => Ok(()),
    }
}

fn print_out(text: &str) {
    use std::io::Write as _;
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(text.as_bytes());
    let _ = so.flush();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians over the pairs (each ratio taken within its pair, so that the
/// load of the moment cancels out as far as it can).
pub fn render_medians(pairs: &[(BenchRun, BenchRun)]) -> String {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let speed: Vec<f64> = pairs
        .iter()
        .map(|(f, p)| ratio(f.points_per_sec(), p.points_per_sec()))
        .collect();
    let cpu: Vec<f64> = pairs
        .iter()
        .map(|(f, p)| ratio(cpu_ns_per_point(p), cpu_ns_per_point(f)))
        .collect();
    let (lo, hi) = speed.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    });
    format!(
        "medians over {} pairs: fleetcheck {:.3}M points/s, {:.0} CPU ns/point; python {:.3}M points/s, {:.0} CPU ns/point; \
         ratio fleetcheck / python (points/s) {:.2}x (range {lo:.2}-{hi:.2}); CPU per point python / fleetcheck {:.2}x\n",
        pairs.len(),
        median(pairs.iter().map(|p| p.0.points_per_sec()).collect()) / 1e6,
        median(pairs.iter().map(|p| cpu_ns_per_point(&p.0)).collect()),
        median(pairs.iter().map(|p| p.1.points_per_sec()).collect()) / 1e6,
        median(pairs.iter().map(|p| cpu_ns_per_point(&p.1)).collect()),
        median(speed),
        median(cpu),
    )
}

fn to_findings(set: &BTreeSet<ExpectedFinding>) -> Vec<Finding> {
    set.iter()
        .map(|e| Finding {
            host: e.host,
            round: e.round,
            check: e.check.clone(),
            kind: "anchor".into(),
            series: e.series.clone(),
            value: 0.0,
            message: String::new(),
        })
        .collect()
}

/// CPU nanoseconds per point (fleetcheck's own, or the Python version's
/// parent + workers; the fleet's apart).
fn cpu_ns_per_point(r: &BenchRun) -> f64 {
    if r.points == 0 {
        0.0
    } else {
        r.cpu_fleetcheck() / r.points as f64 * 1e9
    }
}

/// The comparison as text: a row per implementation, the ratios, the
/// anomalies on each side.
pub fn render(fc: &BenchRun, py: &BenchRun, pyr: &PyReport, diff: &AnomalyDiff) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<11} {:>9} {:>11} {:>11} {:>9} {:>10} {:>12} {:>9} {:>9} {:>8}",
        "impl",
        "wall s",
        "points",
        "points/s",
        "cpu s",
        "(workers)",
        "cpu ns/point",
        "cpu fleet",
        "anomalies",
        "verified"
    );
    for r in [fc, py] {
        let _ = writeln!(
            s,
            "{:<11} {:>9.2} {:>11} {:>10.3}M {:>9.2} {:>10.2} {:>12.0} {:>9.2} {:>9} {:>8}",
            r.mode,
            r.wall_secs,
            r.points,
            r.points_per_sec() / 1e6,
            r.cpu_fleetcheck(),
            r.cpu_workers,
            cpu_ns_per_point(r),
            r.cpu_fleet,
            r.anomalies,
            r.verified
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let _ = writeln!(
        s,
        "ratio fleetcheck / python (points/s): {:.2}x; CPU per point python / fleetcheck: {:.2}x",
        ratio(fc.points_per_sec(), py.points_per_sec()),
        ratio(cpu_ns_per_point(py), cpu_ns_per_point(fc))
    );
    let versions: Vec<String> = pyr
        .versions
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "python: {} ({}); its own timing {:.2} s, {:.2} CPU-s",
        pyr.python,
        versions.join(", "),
        pyr.wall_secs,
        pyr.cpu_parent_secs + pyr.cpu_workers_secs
    );
    let _ = writeln!(
        s,
        "anomalies: {} by both, {} only by fleetcheck, {} only by python: {}",
        diff.both,
        diff.only_fleetcheck.len(),
        diff.only_python.len(),
        if diff.same() { "the same" } else { "DIFFERENT" }
    );
    for (who, list) in [
        ("only fleetcheck", &diff.only_fleetcheck),
        ("only python", &diff.only_python),
    ] {
        for e in list.iter().take(10) {
            let _ = writeln!(
                s,
                "  {who}: host {} round {} {} {}",
                e.host, e.round, e.check, e.series
            );
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ef(host: u32, check: &str) -> ExpectedFinding {
        ExpectedFinding {
            host,
            round: 1,
            check: check.into(),
            series: "s".into(),
        }
    }

    #[test]
    fn a_missing_interpreter_is_named_not_waited_for() {
        let s = AnchorSettings {
            python: Some(PathBuf::from("/nonexistent/python3")),
            ..AnchorSettings::default()
        };
        let e = provision(&s).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/python3"), "{e}");
        assert!(e.contains("cannot run"), "{e}");
        assert!(e.contains("requirements.txt"), "{e}");
    }

    #[test]
    fn a_missing_script_is_named() {
        let s = AnchorSettings {
            script: PathBuf::from("/nonexistent/fleetcheck_py.py"),
            ..AnchorSettings::default()
        };
        let e = provision(&s).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/fleetcheck_py.py"), "{e}");
    }

    #[test]
    fn the_default_files_are_in_the_source_tree() {
        let s = AnchorSettings::default();
        assert!(s.script.is_file(), "{}", s.script.display());
        let req = std::fs::read_to_string(&s.requirements).unwrap();
        for pin in ["aiomultiprocess==0.9.1", "aiohttp==", "uvloop=="] {
            assert!(req.contains(pin), "{pin} not pinned in {req}");
        }
        assert!(s.venv.ends_with("venv-fleetcheck-anchor"));
    }

    #[test]
    fn diff_of_anomalies_names_each_side() {
        let fc: BTreeSet<_> = [ef(1, "a"), ef(2, "b")].into();
        let py: BTreeSet<_> = [ef(2, "b"), ef(3, "c")].into();
        let d = AnomalyDiff::new(&fc, &py);
        assert_eq!(d.both, 1);
        assert_eq!(d.only_fleetcheck, vec![ef(1, "a")]);
        assert_eq!(d.only_python, vec![ef(3, "c")]);
        assert!(!d.same());
        assert!(AnomalyDiff::new(&fc, &fc).same());
    }

    #[test]
    fn the_summary_of_the_script_is_read_and_rendered() {
        let json = r#"{"impl": "python", "python": "3.11.7", "versions": {"aiohttp": "3.14.5"},
            "points": 4000, "scrapes": 2, "scrape_failures": 0, "wall_secs": 2.0,
            "cpu_parent_secs": 0.5, "cpu_workers_secs": 1.5,
            "findings": [[2, 1, "b", "s"]], "scrape_problems": []}"#;
        let r: PyReport = serde_json::from_str(json).unwrap();
        assert_eq!(r.anomalies(), [ef(2, "b")].into());
        let fc = BenchRun {
            mode: "fleetcheck".into(),
            wall_secs: 0.5,
            points: 4000,
            cpu_parent: 0.1,
            cpu_workers: 0.1,
            ..Default::default()
        };
        let py = BenchRun {
            mode: "python".into(),
            wall_secs: 2.0,
            points: 4000,
            cpu_parent: 0.5,
            cpu_workers: 1.5,
            ..Default::default()
        };
        let d = AnomalyDiff::new(&r.anomalies(), &r.anomalies());
        let text = render(&fc, &py, &r, &d);
        assert!(
            text.contains("ratio fleetcheck / python (points/s): 4.00x"),
            "{text}"
        );
        assert!(
            text.contains("CPU per point python / fleetcheck: 10.00x"),
            "{text}"
        );
        assert!(text.contains("the same"), "{text}");
        let slow = BenchRun {
            wall_secs: 4.0,
            ..py.clone()
        };
        let m = render_medians(&[(fc.clone(), py.clone()), (fc.clone(), slow), (fc, py)]);
        assert!(m.starts_with("medians over 3 pairs"), "{m}");
        assert!(m.contains("(points/s) 4.00x (range 4.00-8.00)"), "{m}");
    }
}
