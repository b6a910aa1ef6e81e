//! `fleetcheck bench --anchors` when the Python anchor cannot run: it stops
//! before any scan, exit 2, naming what is missing (the real binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

multiloop::init_before_main!();

fn fleetcheck(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetcheck"))
        .args(args)
        .output()
        .unwrap()
}

fn bench_anchors(python: &str) -> Output {
    fleetcheck(&[
        "bench",
        "--anchors",
        "--points",
        "2M",
        "--anchor-python",
        python,
    ])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One test, so that the stand-in interpreter is written while no other
/// thread of this binary forks (a child holding it open for writing would
/// make its exec fail with ETXTBSY).
#[test]
fn bench_anchors_stops_before_scanning_naming_what_is_missing() {
    // A stand-in interpreter that answers like a Python without uvloop.
    let dir = std::env::temp_dir().join(format!("fleetcheck-anchor-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("python");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'uvloop'\" >&2\nexit 1\n",
    )
    .unwrap();
    let mut perm = std::fs::metadata(&fake).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&fake, perm).unwrap();

    // 1. No interpreter at that path.
    let out = bench_anchors("/nonexistent/python3");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Python anchor"), "{err}");
    assert!(err.contains("/nonexistent/python3"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "a scan ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // 2. An interpreter without the packages: named, with the fix.
    let out = bench_anchors(fake.to_str().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("No module named 'uvloop'"), "{err}");
    assert!(err.contains("pip install -r"), "{err}");
    assert!(err.contains("requirements.txt"), "{err}");
    assert!(out.stdout.is_empty());

    // 3. `--anchors` outside the benchmark.
    let out = fleetcheck(&["scan", "--anchors", "--rounds", "1"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--anchors goes with `bench`"), "{err}");
}
