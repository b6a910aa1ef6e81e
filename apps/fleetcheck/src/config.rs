//! The service's configuration: one TOML file (`fleetcheck run --config
//! FILE`) and the same settings as flags. Every flag of [`RunArgs`] has the
//! config key of the same name (`--scrape-timeout` is `scrape_timeout`) and
//! every key a flag, except the tables `[[static_configs]]` (targets with
//! labels, TLS and auth), `[[file_sd_configs]]` (file discovery with TLS
//! and auth) and `[[rule]]` (inline rules; `--rules FILE` is the flag form).
//! Each `[[static_configs]]` / `[[file_sd_configs]]` table is a target
//! group with its own [`ClientSettings`] (see [`ServiceConfig::grouped_targets`]).
//! Flags override the file. See `fleetcheck.example.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alert::Policy;
use crate::dur::Dur;
use crate::error::Error;
use crate::http::{BasicAuth, ClientSettings, DEFAULT_MAX_CONNS_PER_HOST, ScrapeAuth, TlsSettings};
use crate::rules::{Rule, Rules, RulesError};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A target URL and its labels.
pub type LabelledTarget = (String, BTreeMap<String, String>);

/// Targets sharing labels (like Prometheus' `static_configs`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// Target URLs.
    pub targets: Vec<String>,
    /// Labels of these targets' alerts; `group` names the group for group
    /// alerts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// TLS of these targets (`[static_configs.tls_config]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsSettings>,
    /// File holding the bearer token sent to these targets (re-read when
    /// it changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth of these targets (`{ username, password_file }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
}

/// File discovery files sharing TLS and auth (like Prometheus'
/// `file_sd_configs`); each entry is one target group of its own.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSdConfig {
    /// File-SD files (JSON or YAML, see [`crate::discovery`]).
    pub files: Vec<PathBuf>,
    /// TLS of these targets (`[file_sd_configs.tls_config]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsSettings>,
    /// File holding the bearer token sent to these targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth of these targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
}

/// The TLS and auth keys of a group table.
fn group_auth(
    tls_config: &Option<TlsSettings>,
    bearer_token_file: &Option<PathBuf>,
    basic_auth: &Option<BasicAuth>,
) -> ScrapeAuth {
    ScrapeAuth {
        tls_config: tls_config.clone(),
        bearer_token_file: bearer_token_file.clone(),
        basic_auth: basic_auth.clone(),
    }
}

impl StaticConfig {
    /// Its TLS and auth.
    pub fn scrape_auth(&self) -> ScrapeAuth {
        group_auth(&self.tls_config, &self.bearer_token_file, &self.basic_auth)
    }
}

impl FileSdConfig {
    /// Its TLS and auth.
    pub fn scrape_auth(&self) -> ScrapeAuth {
        group_auth(&self.tls_config, &self.bearer_token_file, &self.basic_auth)
    }
}

/// The service's targets: each with its labels and client group, and the
/// client settings of each group (group 0: the plain `targets`,
/// `targets_file` and `file_sd`, default settings).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GroupedTargets {
    /// URL, labels, group.
    pub targets: Vec<(String, BTreeMap<String, String>, u32)>,
    /// Client settings by group.
    pub clients: Vec<ClientSettings>,
}

/// The flags of `fleetcheck run` (each one overrides the config key of the
/// same name).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the HTTP listener (/metrics, /-/healthy, /-/ready).
    #[arg(long)]
    pub listen: Option<String>,
    /// Time between round starts (e.g. 15s).
    #[arg(long)]
    pub interval: Option<Dur>,
    /// Deadline of one scrape (e.g. 10s).
    #[arg(long)]
    pub scrape_timeout: Option<Dur>,
    /// Target URL (repeatable).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// File with one target URL per line.
    #[arg(long)]
    pub targets_file: Option<PathBuf>,
    /// File service discovery: target files (repeatable).
    #[arg(long)]
    pub file_sd: Vec<PathBuf>,
    /// Rules file (TOML); default: the config's `[[rule]]`s, else the built-in rules.
    #[arg(long = "rules")]
    pub rules_file: Option<PathBuf>,
    /// Alertmanager base URL, e.g. http://127.0.0.1:9093 (repeatable).
    #[arg(long = "alertmanager")]
    pub alertmanagers: Vec<String>,
    /// Write alert notifications as JSON lines to this file (`-`: stdout).
    #[arg(long)]
    pub alerts_jsonl: Option<String>,
    /// Keep alert states in this file across restarts.
    #[arg(long)]
    pub state_file: Option<PathBuf>,
    /// How often firing alerts are sent again to Alertmanager.
    #[arg(long)]
    pub resend_interval: Option<Dur>,
    /// Base of the alerts' generatorURL (default: http://LISTEN).
    #[arg(long)]
    pub external_url: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Worker processes (0: one per core).
    #[arg(long)]
    pub processes: Option<usize>,
    /// Concurrent scrapes per worker process.
    #[arg(long)]
    pub worker_concurrency: Option<usize>,
    /// Rounds to run before exiting (0: forever).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// Maximum page size in bytes.
    #[arg(long)]
    pub max_page_bytes: Option<usize>,
    /// Flap detection window.
    #[arg(long)]
    pub flap_window: Option<Dur>,
    /// Condition changes within the window that make an alert flapping (0: off).
    #[arg(long)]
    pub flap_limit: Option<usize>,
    /// Fraction of a group tripping one rule that gives one group alert (0: off).
    #[arg(long)]
    pub group_fraction: Option<f64>,
    /// Smallest group for group alerts.
    #[arg(long)]
    pub group_min_targets: Option<usize>,
    /// Keep host history in the parent so that it survives a worker's
    /// death (true/false).
    #[arg(long)]
    pub host_checkpoints: Option<bool>,
    /// Worker deaths per minute the pool replaces before it gives up (then
    /// the service builds a new pool, with a growing delay).
    #[arg(long)]
    pub worker_restarts_per_minute: Option<u32>,
    /// Hosts of the simulated fleet (used when there are no targets).
    #[arg(long)]
    pub fleet_hosts: Option<u32>,
    /// Series per host of the simulated fleet.
    #[arg(long)]
    pub fleet_series: Option<u32>,
    /// Seed of the simulated fleet.
    #[arg(long)]
    pub fleet_seed: Option<u64>,
    /// Rounds of the simulated fleet's anomaly schedule.
    #[arg(long)]
    pub fleet_rounds: Option<u64>,
    /// Scrape on the agents of a cluster (`fleetcheck agent`) through the
    /// nats-server at `nats://host:4222[/pool]`; `processes` is then the
    /// number of partitions (default 12).
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// How long an agent may go silent before its partitions move to
    /// another agent (e.g. 5s; at least 1s).
    #[arg(long)]
    pub cluster_ack_wait: Option<Dur>,
}

/// The service's settings: the config file's keys (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// `--listen`.
    pub listen: String,
    /// `--interval`.
    pub interval: Dur,
    /// `--scrape-timeout`.
    pub scrape_timeout: Dur,
    /// `--target`.
    pub targets: Vec<String>,
    /// `--targets-file`.
    pub targets_file: Option<PathBuf>,
    /// `--file-sd`.
    pub file_sd: Vec<PathBuf>,
    /// Targets with labels, TLS and auth (config only).
    pub static_configs: Vec<StaticConfig>,
    /// File discovery with TLS and auth (config only).
    pub file_sd_configs: Vec<FileSdConfig>,
    /// `--rules`.
    pub rules_file: Option<PathBuf>,
    /// Inline rules (config only; `[[rule]]` as in a rules file).
    #[serde(rename = "rule")]
    pub rules: Vec<Rule>,
    /// `--alertmanager`.
    pub alertmanagers: Vec<String>,
    /// `--alerts-jsonl`.
    pub alerts_jsonl: Option<String>,
    /// `--state-file`.
    pub state_file: Option<PathBuf>,
    /// `--resend-interval`.
    pub resend_interval: Dur,
    /// `--external-url`.
    pub external_url: Option<String>,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// `--processes`.
    pub processes: usize,
    /// `--worker-concurrency`.
    pub worker_concurrency: usize,
    /// `--rounds`.
    pub rounds: u64,
    /// `--max-page-bytes`.
    pub max_page_bytes: usize,
    /// `--flap-window`.
    pub flap_window: Dur,
    /// `--flap-limit`.
    pub flap_limit: usize,
    /// `--group-fraction`.
    pub group_fraction: f64,
    /// `--group-min-targets`.
    pub group_min_targets: usize,
    /// `--host-checkpoints`.
    pub host_checkpoints: bool,
    /// `--worker-restarts-per-minute`.
    pub worker_restarts_per_minute: u32,
    /// `--fleet-hosts`.
    pub fleet_hosts: u32,
    /// `--fleet-series`.
    pub fleet_series: u32,
    /// `--fleet-seed`.
    pub fleet_seed: u64,
    /// `--fleet-rounds`.
    pub fleet_rounds: u64,
    /// `--cluster`.
    pub cluster: Option<String>,
    /// `--cluster-ack-wait`.
    pub cluster_ack_wait: Dur,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        let p = Policy::default();
        ServiceConfig {
            listen: "127.0.0.1:9899".into(),
            interval: Dur::from_secs(15.0),
            scrape_timeout: Dur::from_secs(10.0),
            targets: Vec::new(),
            targets_file: None,
            file_sd: Vec::new(),
            static_configs: Vec::new(),
            file_sd_configs: Vec::new(),
            rules_file: None,
            rules: Vec::new(),
            alertmanagers: Vec::new(),
            alerts_jsonl: None,
            state_file: None,
            resend_interval: Dur::from_secs(60.0),
            external_url: None,
            log_format: LogFormat::Human,
            processes: 0,
            worker_concurrency: crate::pool::DEFAULT_WORKER_CONCURRENCY,
            rounds: 0,
            max_page_bytes: 16 << 20,
            flap_window: Dur::from_secs(p.flap_window_secs),
            flap_limit: p.flap_limit,
            group_fraction: p.group_fraction,
            group_min_targets: p.group_min_targets,
            host_checkpoints: true,
            worker_restarts_per_minute: 600,
            fleet_hosts: 200,
            fleet_series: 500,
            fleet_seed: 42,
            fleet_rounds: 10,
            cluster: None,
            cluster_ack_wait: Dur::from_secs(crate::cluster::DEFAULT_ACK_WAIT.as_secs_f64()),
        }
    }
}

/// The same file with the rules kept with their spans (for line numbers).
#[derive(Deserialize)]
struct Spans {
    #[serde(default)]
    rule: Vec<toml::Spanned<Rule>>,
}

impl ServiceConfig {
    /// Parse a config file's text (`path` only names it in errors).
    pub fn parse(src: &str, path: &Path) -> Result<Self, Error> {
        let err = |e: RulesError| Error::Config {
            path: path.to_path_buf(),
            reason: format!("line {}: {}", e.line, e.reason),
        };
        let mut cfg: ServiceConfig =
            toml::from_str(src).map_err(|e| err(RulesError::toml(src, &e)))?;
        let spans: Spans = toml::from_str(src).map_err(|e| err(RulesError::toml(src, &e)))?;
        cfg.rules = Rules::from_spanned(src, spans.rule).map_err(err)?.rules;
        cfg.check().map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Read and parse a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        ServiceConfig::parse(&src, path)
    }

    /// The config file (if any) with the flags applied on top.
    pub fn from_args(args: &RunArgs) -> Result<Self, Error> {
        let mut cfg = match &args.config {
            Some(p) => ServiceConfig::load(p)?,
            None => ServiceConfig::default(),
        };
        cfg.apply(args);
        cfg.check().map_err(Error::Usage)?;
        // The TLS and auth files of the config's target groups, named with
        // the config file.
        if let Some(path) = &args.config {
            cfg.group_settings().map_err(|reason| Error::Config {
                path: path.clone(),
                reason,
            })?;
        }
        Ok(cfg)
    }

    /// Override keys with the flags that were given.
    pub fn apply(&mut self, a: &RunArgs) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        fn set_opt<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        fn set_vec<T: Clone>(dst: &mut Vec<T>, src: &[T]) {
            if !src.is_empty() {
                *dst = src.to_vec();
            }
        }
        set(&mut self.listen, &a.listen);
        set(&mut self.interval, &a.interval);
        set(&mut self.scrape_timeout, &a.scrape_timeout);
        set_vec(&mut self.targets, &a.targets);
        set_opt(&mut self.targets_file, &a.targets_file);
        set_vec(&mut self.file_sd, &a.file_sd);
        set_opt(&mut self.rules_file, &a.rules_file);
        set_vec(&mut self.alertmanagers, &a.alertmanagers);
        set_opt(&mut self.alerts_jsonl, &a.alerts_jsonl);
        set_opt(&mut self.state_file, &a.state_file);
        set(&mut self.resend_interval, &a.resend_interval);
        set_opt(&mut self.external_url, &a.external_url);
        set(&mut self.log_format, &a.log_format);
        set(&mut self.processes, &a.processes);
        set(&mut self.worker_concurrency, &a.worker_concurrency);
        set(&mut self.rounds, &a.rounds);
        set(&mut self.max_page_bytes, &a.max_page_bytes);
        set(&mut self.flap_window, &a.flap_window);
        set(&mut self.flap_limit, &a.flap_limit);
        set(&mut self.group_fraction, &a.group_fraction);
        set(&mut self.group_min_targets, &a.group_min_targets);
        set(&mut self.host_checkpoints, &a.host_checkpoints);
        set(
            &mut self.worker_restarts_per_minute,
            &a.worker_restarts_per_minute,
        );
        set(&mut self.fleet_hosts, &a.fleet_hosts);
        set(&mut self.fleet_series, &a.fleet_series);
        set(&mut self.fleet_seed, &a.fleet_seed);
        set(&mut self.fleet_rounds, &a.fleet_rounds);
        set_opt(&mut self.cluster, &a.cluster);
        set(&mut self.cluster_ack_wait, &a.cluster_ack_wait);
    }

    /// Values that parse but cannot work.
    pub fn check(&self) -> Result<(), String> {
        if self.interval.secs() <= 0.0 {
            return Err("`interval` must be > 0".into());
        }
        if self.scrape_timeout.secs() <= 0.0 {
            return Err("`scrape_timeout` must be > 0".into());
        }
        if self.max_page_bytes == 0 {
            return Err("`max_page_bytes` must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.group_fraction) {
            return Err(format!(
                "`group_fraction` must be between 0 and 1, not {}",
                self.group_fraction
            ));
        }
        if self.worker_restarts_per_minute == 0 {
            return Err("`worker_restarts_per_minute` must be > 0".into());
        }
        if self.worker_concurrency == 0 {
            return Err("`worker_concurrency` must be > 0".into());
        }
        if let Some(c) = &self.cluster {
            crate::cluster::ClusterAddr::parse(c).map_err(|e| e.to_string())?;
        }
        if !(1.0..=3600.0).contains(&self.cluster_ack_wait.secs()) {
            return Err("`cluster_ack_wait` must be between 1s and 3600s".into());
        }
        for u in &self.alertmanagers {
            if !u.starts_with("http://") {
                return Err(format!(
                    "alertmanager URL {u:?} must start with http:// (e.g. http://127.0.0.1:9093)"
                ));
            }
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "`listen` must be an IP address and port (e.g. 127.0.0.1:9899), not {:?}",
                self.listen
            ));
        }
        Ok(())
    }

    /// The rules in force: `rules_file`, else the inline `[[rule]]`s, else
    /// the built-in rules.
    pub fn load_rules(&self) -> Result<Rules, Error> {
        if let Some(p) = &self.rules_file {
            return Rules::load(p);
        }
        if !self.rules.is_empty() {
            return Ok(Rules {
                rules: self.rules.clone(),
            });
        }
        Ok(Rules::builtin())
    }

    /// The alert engine's policy.
    pub fn policy(&self) -> Policy {
        Policy {
            flap_window_secs: self.flap_window.secs(),
            flap_limit: self.flap_limit,
            group_fraction: self.group_fraction,
            group_min_targets: self.group_min_targets,
        }
    }

    /// Static targets: `targets`, `targets_file`, `static_configs`,
    /// `file_sd`, then `file_sd_configs`, each URL once (first
    /// wins), with its labels and client group; a target may be a URL or
    /// `host:port` (its /metrics), as in Prometheus. Every target and every
    /// group's settings are checked now (an error names the target, and the
    /// table or file at fault).
    pub fn grouped_targets(&self) -> Result<GroupedTargets, Error> {
        let mut out = GroupedTargets {
            targets: Vec::new(),
            clients: vec![ClientSettings::default()],
        };
        let mut seen = std::collections::HashSet::new();
        let mut push = |t: &str, l: &BTreeMap<String, String>, g: u32, from: &str| {
            let u = crate::discovery::target_url(t, l)
                .map_err(|reason| Error::Usage(format!("{from}: target {t:?}: {reason}")))?;
            if seen.insert(u.clone()) {
                out.targets.push((u, l.clone(), g));
            }
            Ok::<(), Error>(())
        };
        let none = BTreeMap::new();
        for t in &self.targets {
            push(t, &none, 0, "`targets`")?;
        }
        if let Some(p) = &self.targets_file {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("reading targets {}", p.display()), e))?;
            let from = format!("targets_file {}", p.display());
            for t in crate::scan::parse_targets(&text) {
                push(&t, &none, 0, &from)?;
            }
        }
        let groups = self.group_settings().map_err(Error::Usage)?;
        let first_sd = 1 + self.static_configs.len() as u32;
        for (i, sc) in self.static_configs.iter().enumerate() {
            let from = format!("`static_configs[{i}]`");
            for t in &sc.targets {
                push(t, &sc.labels, 1 + i as u32, &from)?;
            }
        }
        // Already URLs (file_sd_targets checked them).
        for (t, l) in file_sd_targets(&self.file_sd)? {
            push(&t, &l, 0, "file_sd")?;
        }
        for (i, fc) in self.file_sd_configs.iter().enumerate() {
            for (t, l) in file_sd_targets(&fc.files)? {
                push(&t, &l, first_sd + i as u32, "file_sd_configs")?;
            }
        }
        out.clients.extend(groups);
        Ok(out)
    }

    /// The client settings of the `[[static_configs]]` tables, then of the
    /// `[[file_sd_configs]]` tables (groups 1, 2, ...), each checked now:
    /// an error names the table and the file at fault.
    pub fn group_settings(&self) -> Result<Vec<ClientSettings>, String> {
        let settings = |table: String, auth: ScrapeAuth| {
            auth.client_settings(DEFAULT_MAX_CONNS_PER_HOST, true)
                .and_then(|s| s.check().map(|()| s))
                .map_err(|e| format!("`{table}`: {e}"))
        };
        let statics = self
            .static_configs
            .iter()
            .enumerate()
            .map(|(i, sc)| settings(format!("static_configs[{i}]"), sc.scrape_auth()));
        let sds = self
            .file_sd_configs
            .iter()
            .enumerate()
            .map(|(i, fc)| settings(format!("file_sd_configs[{i}]"), fc.scrape_auth()));
        statics.chain(sds).collect()
    }

    /// The targets with their labels ([`ServiceConfig::grouped_targets`]
    /// without the groups).
    pub fn static_targets(&self) -> Result<Vec<LabelledTarget>, Error> {
        Ok(self
            .grouped_targets()?
            .targets
            .into_iter()
            .map(|(u, l, _)| (u, l))
            .collect())
    }
}

/// File service discovery: the targets of Prometheus file-SD files
/// (`.json`, `.yml`, `.yaml`; see [`crate::discovery`]), with their target
/// labels. Read when the service (re)loads its config.
pub fn file_sd_targets(files: &[PathBuf]) -> Result<Vec<LabelledTarget>, Error> {
    let mut out = Vec::new();
    for p in files {
        let groups =
            crate::discovery::load_file(p).map_err(|e| Error::Usage(format!("file_sd {e}")))?;
        for g in groups {
            let labels = crate::discovery::public_labels(&g.labels);
            for t in &g.targets {
                let url = crate::discovery::target_url(t, &g.labels).map_err(|reason| {
                    Error::Usage(format!("file_sd {}: target {t:?}: {reason}", p.display()))
                })?;
                out.push((url, labels.clone()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::{Args, Command};

    const EXAMPLE: &str = include_str!("../fleetcheck.example.toml");

    #[test]
    fn example_config_parses() {
        let cfg = ServiceConfig::parse(EXAMPLE, Path::new("fleetcheck.example.toml")).unwrap();
        assert_eq!(cfg.interval, Dur::from_secs(15.0));
        assert!(!cfg.rules.is_empty());
        assert!(cfg.rules.iter().any(|r| r.clear_below.is_some()));
        assert!(cfg.load_rules().unwrap().rules.len() >= 2);
    }

    #[test]
    fn example_target_group_tables_parse_when_uncommented() {
        let start = EXAMPLE.find("# Each [[static_configs]]").unwrap();
        let block = &EXAMPLE[start..];
        let block = &block[..block.find("\n\n").unwrap()];
        let src: String = block
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = ServiceConfig::parse(&src, Path::new("example")).unwrap();
        assert_eq!(cfg.static_configs.len(), 1);
        let sc = &cfg.static_configs[0];
        let tls = sc.tls_config.as_ref().unwrap();
        assert!(tls.ca_file.is_some() && tls.cert_file.is_some() && tls.key_file.is_some());
        assert!(sc.bearer_token_file.is_some());
        assert_eq!(cfg.file_sd_configs.len(), 1);
        let fc = &cfg.file_sd_configs[0];
        assert_eq!(fc.basic_auth.as_ref().unwrap().username, "fleetcheck");
        assert!(fc.tls_config.as_ref().unwrap().ca_file.is_some());
    }

    /// `host:port` targets, as Prometheus users write them, scrape the
    /// host's /metrics; a target no scrape can fetch is refused at load,
    /// named with the table it is in.
    #[test]
    fn host_port_targets_are_urls_and_bad_targets_are_refused_by_name() {
        let src = "targets = [\"a:9100\", \"http://a:9100/metrics\"]\n\
                   [[static_configs]]\n\
                   targets = [\"b:9100\"]\n\
                   labels = { instance = \"db-1\" }\n";
        let cfg = ServiceConfig::parse(src, Path::new("t.toml")).unwrap();
        let urls: Vec<String> = cfg
            .static_targets()
            .unwrap()
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(urls, ["http://a:9100/metrics", "http://b:9100/metrics"]);
        for (bad, says) in [
            ("targets = [\"http://a:99999/metrics\"]\n", "`targets`"),
            (
                "[[static_configs]]\ntargets = [\"a b:1\"]\n",
                "`static_configs[0]`",
            ),
        ] {
            let cfg = ServiceConfig::parse(bad, Path::new("t.toml")).unwrap();
            let err = cfg.static_targets().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn every_flag_has_a_key_and_every_key_a_flag() {
        let cmd = RunArgs::augment_args(Command::new("run"));
        let flags: std::collections::BTreeSet<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| id != "config")
            .collect();
        let v = toml::Value::try_from(ServiceConfig::default()).unwrap();
        let keys: std::collections::BTreeSet<String> = v
            .as_table()
            .unwrap()
            .keys()
            .cloned()
            .chain(
                [
                    "targets_file",
                    "rules_file",
                    "alerts_jsonl",
                    "state_file",
                    "external_url",
                    "cluster",
                ]
                .map(String::from),
            )
            .filter(|k| !["static_configs", "file_sd_configs", "rule"].contains(&k.as_str()))
            .collect();
        assert_eq!(flags, keys);
    }

    #[test]
    fn flags_override_the_file() {
        let src = "interval = \"1m\"\nlisten = \"127.0.0.1:1\"\ntargets = [\"http://a/metrics\"]\n";
        let mut cfg = ServiceConfig::parse(src, Path::new("x.toml")).unwrap();
        let args = RunArgs {
            interval: Some(Dur::from_secs(5.0)),
            targets: vec!["http://b/metrics".into()],
            ..RunArgs::default()
        };
        cfg.apply(&args);
        assert_eq!(cfg.interval, Dur::from_secs(5.0));
        assert_eq!(cfg.listen, "127.0.0.1:1");
        assert_eq!(cfg.targets, vec!["http://b/metrics".to_string()]);
    }

    #[test]
    fn bad_config_names_the_line_and_the_reason() {
        let e = ServiceConfig::parse("interval = \"15s\"\nbogus = 1\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml") && e.contains("line 2") && e.contains("bogus"),
            "{e}"
        );
        let e = ServiceConfig::parse(
            "[[rule]]\nname = \"x\"\nkind = \"threshold\"\nmetric = \"m\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1") && e.contains("above"), "{e}");
        let e = ServiceConfig::parse(
            "alertmanagers = [\"localhost:9093\"]\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn each_target_group_gets_its_own_tls_and_auth() {
        let dir =
            std::env::temp_dir().join(format!("fleetcheck-cfg-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = dir.join("token");
        std::fs::write(&tok, "t\n").unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "p\n").unwrap();
        let sd = dir.join("sd.json");
        std::fs::write(
            &sd,
            r#"[{"targets": ["10.0.0.9:9100"], "labels": {"__scheme__": "https", "env": "prod"}}]"#,
        )
        .unwrap();
        let src = format!(
            "targets = [\"http://plain/metrics\"]\n\
             [[static_configs]]\ntargets = [\"https://a/metrics\"]\nbearer_token_file = \"{}\"\n\
             [static_configs.tls_config]\ninsecure_skip_verify = true\n\
             [[file_sd_configs]]\nfiles = [\"{}\"]\nbasic_auth = {{ username = \"u\", password_file = \"{}\" }}\n",
            tok.display(),
            sd.display(),
            pw.display()
        );
        let cfg = ServiceConfig::parse(&src, Path::new("g.toml")).unwrap();
        let g = cfg.grouped_targets().unwrap();
        let groups: Vec<(&str, u32)> = g.targets.iter().map(|(u, _, g)| (u.as_str(), *g)).collect();
        assert_eq!(
            groups,
            [
                ("http://plain/metrics", 0),
                ("https://a/metrics", 1),
                ("https://10.0.0.9:9100/metrics", 2)
            ]
        );
        assert_eq!(g.targets[2].1.get("env").map(String::as_str), Some("prod"));
        assert_eq!(g.clients.len(), 3);
        assert_eq!(g.clients[0], ClientSettings::default());
        assert!(g.clients[1].tls.insecure_skip_verify);
        assert_eq!(
            g.clients[1].auth,
            crate::http::AuthSettings::Bearer {
                token_file: tok.clone()
            }
        );
        assert_eq!(
            g.clients[2].auth,
            crate::http::AuthSettings::Basic {
                user: "u".into(),
                password_file: Some(pw.clone())
            }
        );

        // A missing token file: the table and the file are named.
        let bad = src.replace(&tok.display().to_string(), "/nonexistent/tok");
        let e = ServiceConfig::parse(&bad, Path::new("g.toml"))
            .unwrap()
            .grouped_targets()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("static_configs[0]") && e.contains("/nonexistent/tok"),
            "{e}"
        );
        // Loaded as `--config FILE`: the config file is named too.
        let bad_cfg = dir.join("bad.toml");
        std::fs::write(&bad_cfg, &bad).unwrap();
        let e = ServiceConfig::from_args(&RunArgs {
            config: Some(bad_cfg.clone()),
            ..RunArgs::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("{}: `static_configs[0]`", bad_cfg.display()))
                && e.contains("/nonexistent/tok"),
            "{e}"
        );
        // Bearer and basic auth in one group.
        let both = format!(
            "[[static_configs]]\ntargets = [\"https://a/metrics\"]\nbearer_token_file = \"{}\"\n\
             basic_auth = {{ username = \"u\" }}\n",
            tok.display()
        );
        let e = ServiceConfig::parse(&both, Path::new("g.toml"))
            .unwrap()
            .grouped_targets()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("static_configs[0]") && e.contains("basic auth"),
            "{e}"
        );
        // An unknown TLS key names itself and its line.
        let e = ServiceConfig::parse(
            "[[static_configs]]\ntargets = []\n[static_configs.tls_config]\nca = \"x\"\n",
            Path::new("g.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4") && e.contains("ca"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
