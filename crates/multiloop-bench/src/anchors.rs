//! The anchors: `shared/anchors/aiomp_bench.py` run under a Python that has
//! aiomultiprocess.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::workloads::BoxResult;

/// The aiomultiprocess version the anchors were taken with.
const AIOMP: &str = "aiomultiprocess==0.9.1";

/// The workspace root: this crate is `<root>/crates/multiloop-bench`.
pub(crate) fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

/// The anchor script next to the workspace: `<root>/../shared/anchors/aiomp_bench.py`.
pub(crate) fn default_script() -> PathBuf {
    workspace_root()
        .join("..")
        .join("shared")
        .join("anchors")
        .join("aiomp_bench.py")
}

fn has_aiomp(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import aiomultiprocess"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_checked(cmd: &mut Command, what: &str) -> BoxResult<()> {
    // The child's output goes to our stderr, keeping stdout for the report.
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned()?;
    let status = cmd.stdout(Stdio::from(stderr)).status()?;
    if !status.success() {
        return Err(format!("{what} failed: {status}").into());
    }
    Ok(())
}

/// `python3` when it has aiomultiprocess; otherwise the interpreter of
/// `<root>/.venv-anchors`, created and provisioned when needed.
fn python() -> BoxResult<PathBuf> {
    let system = PathBuf::from("python3");
    if has_aiomp(&system) {
        return Ok(system);
    }
    let venv = workspace_root().join(".venv-anchors");
    let python = venv.join("bin").join("python");
    if has_aiomp(&python) {
        return Ok(python);
    }
    if !python.exists() {
        eprintln!("anchors: creating {}", venv.display());
        run_checked(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv",
        )?;
    }
    eprintln!("anchors: installing {AIOMP} into {}", venv.display());
    run_checked(
        Command::new(&python).args(["-m", "pip", "install", "--quiet", AIOMP]),
        "pip install aiomultiprocess",
    )?;
    if !has_aiomp(&python) {
        return Err(format!("{} still cannot import aiomultiprocess", python.display()).into());
    }
    Ok(python)
}

/// Runs the anchor script (all workloads) and returns the JSON object it
/// prints.
pub(crate) fn run(script: &Path) -> BoxResult<serde_json::Map<String, serde_json::Value>> {
    if !script.is_file() {
        return Err(format!(
            "anchor script {} not found (use --anchors-script PATH)",
            script.display()
        )
        .into());
    }
    let python = python()?;
    eprintln!(
        "anchors: running {} all under {}",
        script.display(),
        python.display()
    );
    let out = Command::new(&python)
        .arg(script)
        .arg("all")
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(format!("anchor script {}", out.status).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str(text.trim())? {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(format!("anchor script printed {other}, not a JSON object").into()),
    }
}
