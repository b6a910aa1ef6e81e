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
fn ctrl_c_on_scan_reports_and_exits_130() {
    use std::io::Read;
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
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("fleetcheck report"), "{out}");
}
