//! Targets: static URLs and Prometheus file-based service discovery.
//!
//! A file-SD file (`.json`, `.yml` or `.yaml`) holds a list of target
//! groups, exactly as Prometheus reads them:
//!
//! ```json
//! [ { "targets": ["10.0.0.1:9100", "10.0.0.2:9100"],
//!     "labels": { "job": "node", "env": "prod" } } ]
//! ```
//!
//! A target is `host:port` (scraped at `http://host:port/metrics`; the
//! labels `__scheme__` and `__metrics_path__` change scheme and path, as in
//! Prometheus) or a full `http(s)://` URL. Labels whose names start with
//! `__` are not target labels; the others travel with the target into
//! findings and reports.
//!
//! [`load_file`] reads one file; [`Targets`] keeps static targets and
//! file-SD files together, re-reads a file when its modification time
//! changed ([`Targets::refresh`], called at each round start), and gives
//! every distinct URL a stable host id, so a host keeps its history while
//! files change. A file that turns unreadable or invalid after a good read
//! keeps its last good groups (as Prometheus does) and the error is
//! reported.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::scan::HostSpec;

/// Labels of a target.
pub type Labels = BTreeMap<String, String>;

/// One group of a file-SD file: targets sharing labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    /// `host:port` or URLs.
    pub targets: Vec<String>,
    /// Labels of every target of the group.
    #[serde(default)]
    pub labels: Labels,
}

/// Why targets could not be loaded.
#[derive(Debug)]
pub enum Error {
    /// The file could not be read.
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a valid list of target groups.
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong (with line and column when known).
        reason: String,
    },
    /// The file's name says neither JSON nor YAML.
    UnknownExtension(PathBuf),
    /// A target that cannot be turned into a URL.
    BadTarget {
        /// File.
        path: PathBuf,
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
    /// The file names no target at all.
    Empty(PathBuf),
    /// The sources together name no target at all.
    NoTargets,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Read { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Parse { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::UnknownExtension(p) => write!(
                f,
                "{}: file-SD files must end in .json, .yml or .yaml",
                p.display()
            ),
            Error::BadTarget {
                path,
                target,
                reason,
            } => write!(f, "{}: target {target:?}: {reason}", path.display()),
            Error::Empty(p) => write!(f, "{}: no targets in this file", p.display()),
            Error::NoTargets => write!(f, "no targets at all"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Read one file-SD file (JSON or YAML by its extension). A file without
/// any target (empty, comments only, `[]`) is [`Error::Empty`].
pub fn load_file(path: &Path) -> Result<Vec<TargetGroup>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let groups = parse(path, &text)?;
    if groups.iter().all(|g| g.targets.is_empty()) {
        return Err(Error::Empty(path.to_path_buf()));
    }
    for g in &groups {
        for t in &g.targets {
            target_url(t, &g.labels).map_err(|reason| Error::BadTarget {
                path: path.to_path_buf(),
                target: t.clone(),
                reason,
            })?;
        }
    }
    Ok(groups)
}

/// Parse the text of a file-SD file named `path`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<TargetGroup>, Error> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let parse_err = |reason: String| Error::Parse {
        path: path.to_path_buf(),
        reason,
    };
    match ext.as_deref() {
        Some("json") => {
            if text.trim().is_empty() {
                return Err(Error::Empty(path.to_path_buf()));
            }
            serde_json::from_str(text).map_err(|e| parse_err(e.to_string()))
        }
        Some("yml" | "yaml") => {
            // An empty or comment-only YAML document is null, not a list.
            let v: Option<Vec<TargetGroup>> =
                serde_yaml_ng::from_str(text).map_err(|e| parse_err(e.to_string()))?;
            v.ok_or_else(|| Error::Empty(path.to_path_buf()))
        }
        _ => Err(Error::UnknownExtension(path.to_path_buf())),
    }
}

/// The URL scraped for `target` with group `labels`.
pub fn target_url(target: &str, labels: &Labels) -> Result<String, String> {
    let t = target.trim();
    if t.is_empty() {
        return Err("empty target".into());
    }
    if t.starts_with("http://") || t.starts_with("https://") {
        crate::http::check_target(t)?;
        return Ok(t.to_string());
    }
    if t.contains('/') || t.contains(char::is_whitespace) {
        return Err("expected host:port or an http(s):// URL".into());
    }
    let scheme = labels.get("__scheme__").map_or("http", String::as_str);
    if scheme != "http" && scheme != "https" {
        return Err(format!("unsupported __scheme__ {scheme:?}"));
    }
    let path = labels
        .get("__metrics_path__")
        .map_or("/metrics", String::as_str);
    let sep = if path.starts_with('/') { "" } else { "/" };
    let url = format!("{scheme}://{t}{sep}{path}");
    crate::http::check_target(&url)?;
    Ok(url)
}

/// Target labels of a group: without the `__`-prefixed meta labels.
pub fn public_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One file-SD file and what was last read from it.
#[derive(Debug)]
struct SdFile {
    group: u32,
    path: PathBuf,
    mtime: Option<SystemTime>,
    groups: Vec<TargetGroup>,
}

/// One source of targets: static URLs and file-SD files sharing client
/// settings (see [`Targets::in_groups`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSource {
    /// Static URLs (no labels).
    pub static_urls: Vec<String>,
    /// File-SD files.
    pub sd_files: Vec<PathBuf>,
}

/// Static targets plus file-SD files, with stable host ids.
#[derive(Debug, Default)]
pub struct Targets {
    statics: Vec<(String, Labels, u32)>,
    files: Vec<SdFile>,
    ids: HashMap<String, u32>,
    urls: Vec<String>,
    labels: Vec<Labels>,
    active: Vec<HostSpec>,
}

impl Targets {
    /// Static URLs (no labels) and file-SD files, all read now: an
    /// unreadable or invalid file, or no target at all, is an error.
    pub fn new(static_urls: &[String], sd_files: &[PathBuf]) -> Result<Self, Error> {
        Targets::in_groups(&[TargetSource {
            static_urls: static_urls.to_vec(),
            sd_files: sd_files.to_vec(),
        }])
    }

    /// Targets of several sources; the targets of `sources[i]` are scraped
    /// with client group `i` ([`HostSpec::group`]: its TLS and auth
    /// settings). A URL listed by two sources belongs to the first.
    pub fn in_groups(sources: &[TargetSource]) -> Result<Self, Error> {
        let mut t = Targets::default();
        for (g, src) in sources.iter().enumerate() {
            let g = g as u32;
            t.statics.extend(
                src.static_urls
                    .iter()
                    .map(|u| (u.clone(), Labels::new(), g)),
            );
            for p in &src.sd_files {
                let mtime = std::fs::metadata(p).and_then(|m| m.modified()).ok();
                t.files.push(SdFile {
                    group: g,
                    path: p.clone(),
                    mtime,
                    groups: load_file(p)?,
                });
            }
        }
        t.rebuild();
        if t.active.is_empty() {
            return Err(Error::NoTargets);
        }
        Ok(t)
    }

    /// Re-read the files whose modification time changed. Returns whether
    /// the target list changed; a file that fails keeps its last groups
    /// and its error is returned (after the others were refreshed).
    pub fn refresh(&mut self) -> Result<bool, Error> {
        let mut changed = false;
        let mut first_err = None;
        for f in &mut self.files {
            let mtime = std::fs::metadata(&f.path).and_then(|m| m.modified()).ok();
            if mtime.is_some() && mtime == f.mtime {
                continue;
            }
            match load_file(&f.path) {
                Ok(g) => {
                    f.mtime = mtime;
                    if g != f.groups {
                        f.groups = g;
                        changed = true;
                    }
                }
                Err(e) => {
                    f.mtime = mtime;
                    first_err.get_or_insert(e);
                }
            }
        }
        if changed {
            self.rebuild();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    fn rebuild(&mut self) {
        let mut active = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let from_files = self.files.iter().flat_map(|f| {
            f.groups.iter().flat_map(move |g| {
                g.targets
                    .iter()
                    .filter_map(|t| target_url(t, &g.labels).ok())
                    .map(move |u| (u, public_labels(&g.labels), f.group))
            })
        });
        let all: Vec<(String, Labels, u32)> =
            self.statics.iter().cloned().chain(from_files).collect();
        for (url, labels, group) in all {
            if !seen.insert(url.clone()) {
                continue;
            }
            let next = self.urls.len() as u32;
            let id = *self.ids.entry(url.clone()).or_insert(next);
            if id == next {
                self.urls.push(url.clone());
                self.labels.push(labels.clone());
            } else if let Some(l) = self.labels.get_mut(id as usize) {
                *l = labels;
            }
            active.push(HostSpec { id, url, group });
        }
        self.active = active;
    }

    /// The targets to scrape now (ids stable across refreshes).
    pub fn active(&self) -> &[HostSpec] {
        &self.active
    }

    /// URL of every host id ever seen (index = id).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Target labels of every host id ever seen (index = id).
    pub fn labels(&self) -> &[Labels] {
        &self.labels
    }

    /// True when there are file-SD files to watch.
    pub fn has_files(&self) -> bool {
        !self.files.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fleetcheck-sd-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn json_and_yaml_files_give_the_same_groups() {
        let d = dir("formats");
        let j = d.join("t.json");
        std::fs::write(
            &j,
            r#"[{"targets": ["a:9100", "b:9100"], "labels": {"job": "node", "__metrics_path__": "/m"}}]"#,
        )
        .unwrap();
        let y = d.join("t.yml");
        std::fs::write(
            &y,
            "# fleet\n- targets: ['a:9100', 'b:9100']\n  labels:\n    job: node\n    __metrics_path__: /m\n",
        )
        .unwrap();
        let gj = load_file(&j).unwrap();
        assert_eq!(gj, load_file(&y).unwrap());
        assert_eq!(gj[0].targets, vec!["a:9100", "b:9100"]);
        let t = Targets::new(&[], &[j]).unwrap();
        assert_eq!(t.active()[0].url, "http://a:9100/m");
        assert_eq!(t.labels()[0].get("job").map(String::as_str), Some("node"));
        assert!(!t.labels()[0].contains_key("__metrics_path__"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn empty_or_comment_only_files_are_errors() {
        let d = dir("empty");
        for (name, text) in [
            ("e.json", ""),
            ("l.json", "[]"),
            ("c.yml", "# nothing here\n"),
            ("g.yaml", "- targets: []\n"),
        ] {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            let e = load_file(&p).unwrap_err();
            assert!(matches!(e, Error::Empty(_)), "{name}: {e}");
            assert!(e.to_string().contains("no targets"), "{e}");
        }
        let p = d.join("bad.json");
        std::fs::write(&p, r#"[{"targets": "a:1"}]"#).unwrap();
        let e = load_file(&p).unwrap_err();
        assert!(e.to_string().contains("bad.json"), "{e}");
        let p = d.join("t.txt");
        std::fs::write(&p, "[]").unwrap();
        assert!(matches!(load_file(&p), Err(Error::UnknownExtension(_))));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn refresh_rereads_changed_files_and_keeps_host_ids() {
        let d = dir("refresh");
        let p = d.join("t.json");
        std::fs::write(&p, r#"[{"targets": ["a:1", "b:2"]}]"#).unwrap();
        let mut t = Targets::new(
            &["http://s:3/metrics".to_string()],
            std::slice::from_ref(&p),
        )
        .unwrap();
        assert_eq!(t.active().len(), 3);
        assert!(!t.refresh().unwrap(), "unchanged file, no change");
        let b_id = t.active()[2].id;
        // Rewrite with another mtime: b stays with its id, a leaves, c comes.
        std::fs::write(
            &p,
            r#"[{"targets": ["b:2", "c:4"], "labels": {"env": "x"}}]"#,
        )
        .unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(t.refresh().unwrap());
        let urls: Vec<&str> = t.active().iter().map(|s| s.url.as_str()).collect();
        assert_eq!(
            urls,
            vec![
                "http://s:3/metrics",
                "http://b:2/metrics",
                "http://c:4/metrics"
            ]
        );
        assert_eq!(t.active()[1].id, b_id);
        assert_eq!(t.active()[2].id, 3);
        assert_eq!(
            t.labels()[b_id as usize].get("env").map(String::as_str),
            Some("x")
        );
        // A broken rewrite keeps the last good targets and says why.
        std::fs::write(&p, "[{").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(t.refresh().is_err());
        assert_eq!(t.active().len(), 3);
        let _ = std::fs::remove_dir_all(&d);
    }
}
