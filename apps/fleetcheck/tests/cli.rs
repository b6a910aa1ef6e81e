//! The binary: built-in fleet in a child process, JSON output, exit codes,
//! rules-file errors, serve-fleet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

multiloop::init_before_main!();

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fleetcheck"))
}

#[test]
fn builtin_fleet_json_verifies_and_exits_1() {
    let out = bin()
        .args([
            "--fleet-hosts",
            "30",
            "--fleet-series",
            "120",
            "--rounds",
            "5",
            "--format",
            "json",
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["rounds"], 5);
    assert_eq!(v["summary"]["scrape_failures"], 0);
    assert!(v["summary"]["anomalies"].as_u64().unwrap() > 0);
    assert_eq!(v["verification"]["passed"], true);
    assert_eq!(v["verification"]["recall"], 1.0);
    assert!(v["findings"].as_array().unwrap().iter().all(|f| {
        f["target"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    }));
}

#[test]
fn malformed_rules_refused_with_line() {
    let dir = std::env::temp_dir().join(format!("fleetcheck-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.toml");
    std::fs::write(
        &p,
        "[[rule]]\nname = \"x\"\nkind = \"threshold\"\nmetric = \"m\"\n",
    )
    .unwrap();
    let out = bin()
        .args(["--rules", p.to_str().unwrap(), "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("above"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unreachable_target_is_a_finding() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let out = bin()
        .args([
            "--target",
            &format!("http://{addr}/metrics"),
            "--rounds",
            "2",
            "--format",
            "json",
            "--no-progress",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["scrape_failures"], 2);
    assert_eq!(v["findings"][0]["check"], "unreachable");
    assert!(v["verification"].is_null());
}

#[test]
fn serve_fleet_then_scan_it_from_a_targets_file() {
    let dir = std::env::temp_dir().join(format!("fleetcheck-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let targets = dir.join("targets.txt");
    let mut child = bin()
        .args([
            "serve-fleet",
            "--hosts",
            "5",
            "--series",
            "80",
            "--port",
            "0",
            "--exit-on-stdin-eof",
        ])
        .args(["--targets-out", targets.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening http://127.0.0.1:"), "{first}");
    // The targets file is complete before the banner is printed.
    let out = bin()
        .args([
            "--targets",
            targets.to_str().unwrap(),
            "--rounds",
            "3",
            "--format",
            "json",
            "--no-progress",
        ])
        .output()
        .unwrap();
    drop(child.stdin.take()); // closes stdin: the fleet exits
    let status = child.wait().unwrap();
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["summary"]["scrapes"], 15, "{v}");
    assert!(v["summary"]["points"].as_u64().unwrap() >= 15 * 80);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pool_default_and_inprocess_baseline_agree() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let out = bin()
            .args([
                "--fleet-hosts",
                "24",
                "--fleet-series",
                "100",
                "--rounds",
                "4",
                "--format",
                "json",
                "--no-progress",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{extra:?} stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let pool = run(&["--processes", "2", "--worker-concurrency", "4"]);
    let base = run(&["--baseline"]);
    let same = run(&["--mode", "inprocess"]);
    for v in [&pool, &base, &same] {
        assert_eq!(v["verification"]["passed"], true, "{v}");
        assert_eq!(v["summary"]["scrapes"], 24 * 4);
    }
    for k in ["points", "anomalies", "bytes"] {
        assert_eq!(pool["summary"][k], base["summary"][k], "{k}");
        assert_eq!(same["summary"][k], base["summary"][k], "{k}");
    }
    assert_eq!(pool["by_check"], base["by_check"]);
}

#[test]
fn empty_or_comment_only_targets_file_is_an_error_exit_2() {
    let dir = std::env::temp_dir().join(format!("fleetcheck-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text, flag) in [
        ("empty.txt", "", "--targets"),
        ("comments.txt", "# nothing\n\n  # here\n", "--targets"),
        ("empty.json", "[]", "--file-sd"),
        ("comments.yml", "# nothing\n", "--file-sd"),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        let out = bin()
            .args([flag, p.to_str().unwrap(), "--rounds", "1", "--no-progress"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(
            err.contains("no targets") && err.contains(name),
            "{name}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{name}: no report of an invented fleet"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_sd_target_labels_travel_into_findings() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let dir = std::env::temp_dir().join(format!("fleetcheck-filesd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("targets.yml");
    std::fs::write(
        &p,
        format!("- targets: ['{addr}']\n  labels:\n    env: test\n    job: node\n"),
    )
    .unwrap();
    let out = bin()
        .args(["--file-sd", p.to_str().unwrap()])
        .args(["--rounds", "1", "--format", "json", "--no-progress"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &v["findings"][0];
    assert_eq!(f["check"], "unreachable");
    assert_eq!(f["target"], format!("http://{addr}/metrics"));
    assert_eq!(f["labels"]["env"], "test");
    assert_eq!(f["labels"]["job"], "node");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{f}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Findings as comparable rows: (round, host, check, series, value bits).
fn finding_rows(v: &serde_json::Value) -> Vec<(u64, u64, String, String, String)> {
    let mut rows: Vec<_> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["round"].as_u64().unwrap(),
                f["host"].as_u64().unwrap(),
                f["check"].as_str().unwrap().to_string(),
                f["series"].as_str().unwrap().to_string(),
                f["value"].to_string(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn serve_fleet_as_external_targets_gives_the_builtin_report_every_time() {
    let (hosts, series, rounds) = ("30", "120", "5");
    let dir = std::env::temp_dir().join(format!("fleetcheck-same-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let targets = dir.join("targets.txt");
    let mut child = bin()
        .args(["serve-fleet", "--hosts", hosts, "--series", series])
        .args(["--rounds", rounds, "--port", "0", "--exit-on-stdin-eof"])
        .args(["--targets-out", targets.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("listening http://127.0.0.1:"), "{first}");
    let run = |args: &[&str]| {
        let out = bin()
            .args(args)
            .args(["--rounds", rounds, "--format", "json", "--no-progress"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let builtin = run(&["--fleet-hosts", hosts, "--fleet-series", series]);
    let external = run(&["--targets", targets.to_str().unwrap()]);
    let again = run(&["--targets", targets.to_str().unwrap()]);
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    let want = finding_rows(&builtin);
    assert!(!want.is_empty());
    assert_eq!(finding_rows(&external), want, "first external scan");
    assert_eq!(finding_rows(&again), want, "second external scan");
    assert_eq!(
        external["summary"]["anomalies"],
        builtin["summary"]["anomalies"]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_fleet_starts_bad_hosts_on_request() {
    let mut child = bin()
        .args([
            "serve-fleet",
            "--hosts",
            "2",
            "--series",
            "80",
            "--port",
            "0",
        ])
        .args(["--exit-on-stdin-eof", "--print-targets"])
        .args(["--bad", "500,garbage,oversize,slow:2000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(2 + 6)
        .map(Result::unwrap)
        .collect();
    let urls = &lines[2..];
    let mut args: Vec<String> = Vec::new();
    for u in urls {
        args.push("--target".into());
        args.push(u.clone());
    }
    let out = bin()
        .args(&args)
        .args([
            "--rounds",
            "1",
            "--timeout-ms",
            "500",
            "--format",
            "json",
            "--no-progress",
        ])
        .output()
        .unwrap();
    drop(child.stdin.take());
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut checks: Vec<String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "scrape")
        .map(|f| f["check"].as_str().unwrap().to_string())
        .collect();
    checks.sort();
    assert_eq!(checks, ["http_status", "malformed", "oversize", "timeout"]);
}

#[test]
fn scan_subcommand_equals_no_subcommand() {
    let run = |sub: &[&str]| -> serde_json::Value {
        let out = bin()
            .args(sub)
            .args([
                "--fleet-hosts",
                "12",
                "--fleet-series",
                "80",
                "--rounds",
                "3",
                "--format",
                "json",
                "--no-progress",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{sub:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let a = run(&[]);
    let b = run(&["scan"]);
    assert_eq!(a["summary"]["points"], b["summary"]["points"]);
    assert_eq!(a["by_check"], b["by_check"]);
    assert_eq!(b["verification"]["passed"], true);
}

#[test]
fn ctrl_c_or_sigterm_on_scan_reports_and_exits_130_or_143() {
    use std::io::Read;
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        // A target that is down, scanned forever: a round every 100 ms.
        let mut child = bin()
            .args(["scan", "--target", &format!("http://{addr}/metrics")])
            .args(["--rounds", "0", "--interval", "0.1", "--no-progress"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = err.next().unwrap().unwrap();
        assert!(first.starts_with("round 1:"), "{first}");
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {sig}");
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(out.contains("fleetcheck report"), "signal {sig}: {out}");
    }
}

/// A target that cannot be scraped as written is refused before anything
/// runs, by name (a port out of range used to be read as port 80).
#[test]
fn a_target_that_is_not_a_scrapable_url_is_refused_by_name() {
    for (target, says) in [
        (
            "http://127.0.0.1:99999/metrics",
            "the port must be a number from 1 to 65535",
        ),
        (
            "http://127.0.0.1:0/metrics",
            "the port must be a number from 1 to 65535",
        ),
        ("ftp://127.0.0.1/metrics", "http(s)://"),
        ("http://exa mple/metrics", "not a URL"),
        ("exa mple:9100", "expected host:port"),
    ] {
        let out = bin()
            .args(["scan", "--target", target, "--rounds", "1", "--no-progress"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{target}: {err}");
        assert!(
            err.contains(target) && err.contains(says),
            "{target}: {err}"
        );
    }
}

#[test]
fn a_bad_cluster_address_or_combination_is_refused_by_name() {
    for (args, says) in [
        (
            &["scan", "--cluster", "127.0.0.1:4222"][..],
            "--cluster \"127.0.0.1:4222\"",
        ),
        (&["scan", "--cluster", "nats://h:4222/a.b"][..], "pool name"),
        (
            &["scan", "--cluster", "nats://h:4222", "--baseline"][..],
            "--mode inprocess",
        ),
        (
            &[
                "scan",
                "--cluster",
                "nats://h:4222",
                "--cluster-ack-wait",
                "0.1",
            ][..],
            "--cluster-ack-wait",
        ),
        (
            &["bench", "--cluster", "nats://h:4222"][..],
            "--cluster-agents",
        ),
        (&["agent", "--cluster", "http://h:4222"][..], "nats://"),
    ] {
        let out = bin().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
