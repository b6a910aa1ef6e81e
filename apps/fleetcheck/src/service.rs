//! `fleetcheck run`: the monitoring service. Rounds on a wall-clock
//! interval, forever (or `rounds`), each one routed `map_reduce` on the
//! worker pool; findings feed the alert lifecycle ([`crate::alert`]);
//! notifications go to Alertmanager and/or JSON lines ([`crate::notify`]);
//! its own metrics are served by [`crate::server`].
//!
//! Faults: every scrape has a pool-side deadline (scrape timeout + 2 s), so
//! a frozen worker costs one scrape, not a round; when the pool fails (it
//! gave up restarting workers, or anything else), the round is counted
//! failed, the pool is dropped and built again before a later round, with
//! a growing delay (1 s doubling to 60 s) between attempts. A target whose
//! scrape failed keeps its alerts as they are.
//!
//! Signals: SIGHUP reloads the config, and so does a change of the config
//! or rules file seen at a round (a bad one keeps the old, says why on
//! stderr and sets `fleetcheck_config_last_reload_successful` to 0);
//! SIGTERM or SIGINT finish the round in progress, flush the alerts, save
//! the state and exit 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{SignalKind, signal};

use crate::alert::{AlertEngine, AlertKey, Level, Observed, RoundContext, RuleParams, Snapshot};
use crate::config::{RunArgs, ServiceConfig};
use crate::dur::Dur;
use crate::error::Error;
#[cfg(feature = "simulator")]
use crate::fleet::FleetConfig;
use crate::history::HistoryStore;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::pool::{
    CheckpointCost, POOL_FAILURE_CHECK, PoolScanner, PoolSettings, default_processes,
};
use crate::report::Report;
use crate::rules::Rules;
use crate::scan::{Clock, HostSpec, ScrapeOptions};
use crate::server::Listener;
use crate::state::SCRAPE_KIND;
use crate::worker::WorkerInit;

/// Rule name of the alert for a target that cannot be scraped.
pub const TARGET_DOWN: &str = "target_down";
/// Extra time the pool gives a scrape beyond the scrape timeout.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(2);
/// Longest wait between two attempts to build the pool.
pub const MAX_REBUILD_DELAY: Duration = Duration::from_secs(60);

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What a config turns into: targets, rules, the workers' init.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    targets: Vec<HostSpec>,
    labels: HashMap<String, BTreeMap<String, String>>,
    groups: HashMap<String, String>,
    rules: Rules,
    params: HashMap<String, RuleParams>,
    init: WorkerInit,
    settings: PoolSettings,
}

fn plan(cfg: &ServiceConfig, fleet_addr: Option<&str>) -> Result<Plan, Error> {
    let grouped = cfg.grouped_targets()?;
    let mut clients = grouped.clients;
    let mut targets = grouped.targets;
    let simulated = targets.is_empty();
    if simulated {
        let addr = fleet_addr.ok_or_else(|| {
            Error::Usage("no targets, and the simulated fleet is not running".into())
        })?;
        targets = (0..cfg.fleet_hosts)
            .map(|i| {
                (
                    format!("http://{addr}/host/{i}/metrics"),
                    BTreeMap::new(),
                    0,
                )
            })
            .collect();
        // One default client, as before: the simulated fleet needs no TLS.
        clients = Vec::new();
    }
    let rules = cfg.load_rules()?;
    let mut params: HashMap<String, RuleParams> = rules
        .rules
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                RuleParams {
                    for_secs: r.for_.map_or(0.0, |d| d.secs()),
                    keep_firing_for_secs: r.keep_firing_for.map_or(0.0, |d| d.secs()),
                    labels: r.alert_labels.clone(),
                    annotations: r.annotations.clone(),
                },
            )
        })
        .collect();
    params.entry(TARGET_DOWN.into()).or_default();
    let specs: Vec<HostSpec> = targets
        .iter()
        .enumerate()
        .map(|(i, (u, _, g))| HostSpec {
            id: i as u32,
            url: u.clone(),
            group: *g,
        })
        .collect();
    let groups = targets
        .iter()
        .filter_map(|(u, l, _)| l.get("group").map(|g| (u.clone(), g.clone())))
        .collect();
    let labels = targets.into_iter().map(|(u, l, _)| (u, l)).collect();
    let opts = ScrapeOptions {
        timeout_ms: (cfg.scrape_timeout.secs() * 1000.0).ceil() as u64,
        max_bytes: cfg.max_page_bytes,
        round_query: simulated,
        clock: if simulated {
            Clock::Logical {
                step: crate::scan::SIMULATED_STEP_SECS,
            }
        } else {
            Clock::Wall
        },
    };
    Ok(Plan {
        targets: specs,
        labels,
        groups,
        params,
        init: WorkerInit {
            rules: rules.clone(),
            opts,
            // TLS and auth per target group (`HostSpec::group`): group 0
            // has the default settings, then one per `[[static_configs]]`
            // and `[[file_sd_configs]]` table.
            clients,
        },
        rules,
        settings: PoolSettings {
            processes: match (cfg.processes, &cfg.cluster) {
                (0, Some(_)) => crate::pool::CLUSTER_PARTITIONS,
                (0, None) => default_processes(),
                (n, _) => n,
            },
            concurrency: cfg.worker_concurrency,
        },
    })
}

/// What the pool did during one round, from `Pool::stats`.
#[derive(Debug, Clone, Copy)]
struct PoolDelta {
    /// Live workers at the end of the round.
    workers: u64,
    /// Workers started to replace others (deaths and recycling).
    restarts: u64,
    /// Scrapes run again because a worker died under them.
    retried: u64,
}

/// Growing delay between attempts to build the pool.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    not_before: Option<Instant>,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            delay: Duration::from_secs(1),
            not_before: None,
        }
    }
    fn failed(&mut self) {
        self.not_before = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(MAX_REBUILD_DELAY);
    }
    fn succeeded(&mut self) {
        *self = Backoff::new();
    }
    fn ready(&self) -> bool {
        self.not_before.is_none_or(|t| Instant::now() >= t)
    }
}

/// Load the alert states of `path` (absent: none; unreadable: none, said
/// on stderr).
fn load_state(path: &Path, engine: &mut AlertEngine) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::error!(
                "cannot read the state file {}: {e}; starting with no alerts",
                path.display()
            );
            return;
        }
    };
    match serde_json::from_str::<Snapshot>(&text) {
        Ok(s) => {
            let n = s.alerts.len();
            *engine = AlertEngine::restore(engine.policy().clone(), s);
            tracing::info!("restored {n} alerts from {}", path.display());
        }
        Err(e) => tracing::error!(
            "the state file {} is not valid ({e}); starting with no alerts",
            path.display()
        ),
    }
}

/// Write the alert states atomically (temp file + rename).
fn save_state(path: &Path, engine: &AlertEngine) -> Result<(), Error> {
    let json = serde_json::to_vec(&engine.snapshot())
        .map_err(|e| Error::io("encoding the alert state", std::io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, json).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        Error::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })
}

/// The running service.
struct Service {
    args: RunArgs,
    cfg: ServiceConfig,
    plan: Plan,
    fleet_addr: Option<String>,
    metrics: Arc<Metrics>,
    engine: AlertEngine,
    notifier: Notifier,
    scanner: Option<PoolScanner>,
    history: HistoryStore,
    built_once: bool,
    backoff: Backoff,
    round: u64,
    last_resend: Option<f64>,
    /// The pool's counters at the end of the last round.
    last_stats: multiloop::PoolStats,
    generator_url: String,
    /// Modification times and sizes of the config and rules files at the
    /// last (re)load.
    stamp: Vec<Option<(SystemTime, u64)>>,
}

impl Service {
    /// Modification times and sizes of the config file and the rules file.
    /// What the config names on disk: the config and rules files, and the
    /// target files (`targets_file`, `file_sd`, `file_sd_configs`), which
    /// are re-read when they change, as Prometheus re-reads file SD.
    fn file_stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        let cfg = &self.cfg;
        [
            self.args.config.as_ref(),
            cfg.rules_file.as_ref(),
            cfg.targets_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(&cfg.file_sd)
        .chain(cfg.file_sd_configs.iter().flat_map(|c| &c.files))
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
    }

    /// Reload when the config, rules or a target file changed since the
    /// last look.
    async fn reload_if_changed(&mut self) {
        let now = self.file_stamp();
        if now != self.stamp {
            self.stamp = now;
            tracing::info!("configuration, rules or target file changed: reloading");
            self.reload().await;
            self.stamp = self.file_stamp();
        }
    }

    fn pool_deadline(&self) -> Duration {
        self.cfg.scrape_timeout.duration() + DEADLINE_GRACE
    }

    async fn ensure_pool(&mut self) -> bool {
        if self.scanner.is_some() {
            return true;
        }
        if !self.backoff.ready() {
            return false;
        }
        // Workers killed from outside are no reason to stop monitoring: the
        // pool keeps replacing them (`worker_restarts_per_minute`, default
        // 600), and past that the service's own rebuild backoff takes over
        // (which hands the new workers the hosts' checkpoints), so the pool
        // stops for good rather than backing off by itself.
        let restarts = self.cfg.worker_restarts_per_minute;
        let tune = |b: multiloop::PoolBuilder| {
            b.restart_intensity(restarts, Duration::from_secs(60))
                .restart_policy(multiloop::RestartPolicy::Stop)
        };
        let started = match &self.cfg.cluster {
            Some(url) => match crate::cluster::ClusterAddr::parse(url) {
                Ok(addr) => {
                    let cluster = addr.config(self.cfg.cluster_ack_wait.duration());
                    PoolScanner::start_cluster(self.plan.init.clone(), self.plan.settings, cluster)
                        .await
                }
                Err(e) => Err(e),
            },
            None => {
                PoolScanner::start_tuned(self.plan.init.clone(), self.plan.settings, tune).await
            }
        };
        match started {
            Ok(s) => {
                if self.built_once {
                    self.metrics.update(|v| v.pool_rebuilds += 1);
                    tracing::info!("worker pool built again");
                }
                self.built_once = true;
                self.last_stats = s.pool().stats();
                self.scanner = Some(s);
                true
            }
            Err(e) => {
                tracing::error!("{e}; next attempt in {:?}", self.backoff.delay);
                self.backoff.failed();
                false
            }
        }
    }

    async fn drop_pool(&mut self) {
        if let Some(s) = self.scanner.take() {
            let _ = s.pool().terminate().await;
        }
    }

    /// One round: scrape everything, run the alert lifecycle, notify.
    async fn round(&mut self) {
        let start = Instant::now();
        // The round number moves on only when the round is done: a round
        // lost to a pool failure is done again (same pages on the
        // simulated fleet).
        let round = self.round;
        if !self.ensure_pool().await {
            self.metrics.update(|v| v.rounds_failed += 1);
            return;
        }
        let Some(scanner) = self.scanner.as_ref() else {
            return;
        };
        let deadline = Some(self.pool_deadline());
        let res = if self.cfg.host_checkpoints {
            scanner
                .round_checkpointed(&self.plan.targets, round, deadline, &mut self.history)
                .await
        } else {
            scanner
                .round_with_deadline(&self.plan.targets, round, deadline)
                .await
                .map(|r| (r, CheckpointCost::default()))
        };
        let (mut rep, cost) = match res {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(
                    round,
                    gave_up = e.is_restart_intensity(),
                    "round lost, the worker pool failed: {e}; building a new pool in {:?}",
                    self.backoff.delay
                );
                self.metrics.update(|v| v.rounds_failed += 1);
                self.drop_pool().await;
                self.backoff.failed();
                return;
            }
        };
        self.backoff.succeeded();
        self.round += 1;
        rep.finish_round(scanner.checks(), round);
        let stats = scanner.pool().stats();
        let pool = PoolDelta {
            workers: stats.workers_alive as u64,
            restarts: stats
                .workers_spawned
                .saturating_sub(self.last_stats.workers_spawned),
            retried: stats
                .tasks_retried
                .saturating_sub(self.last_stats.tasks_retried),
        };
        self.last_stats = stats;
        let now = wall_now();
        self.alerts(&rep, now).await;
        let secs = start.elapsed().as_secs_f64();
        self.record(&rep, secs, pool);
        self.metrics.set_ready();
        self.metrics.update(|v| {
            v.checkpoint_bytes = cost.bytes;
            v.states_restored += cost.restored;
        });
        if cost.restored > 0 {
            tracing::info!(
                round,
                hosts = cost.restored,
                "host history handed back to new workers"
            );
        }
        if let Some(p) = &self.cfg.state_file
            && let Err(e) = save_state(p, &self.engine)
        {
            tracing::error!("cannot save the alert state: {e}");
        }
        tracing::info!(
            round,
            secs = format_args!("{secs:.3}"),
            points = rep.points,
            anomalies = rep.anomalies,
            scrape_failures = rep.scrape_failures,
            "round done"
        );
    }

    /// Findings to alerts to notifications.
    async fn alerts(&mut self, rep: &Report, now: f64) {
        let url = |h: u32| -> String {
            self.plan
                .targets
                .get(h as usize)
                .map(|s| s.url.clone())
                .unwrap_or_default()
        };
        let mut observed = Vec::with_capacity(rep.findings.len() + rep.holds.len());
        let mut unknown = HashSet::new();
        for f in &rep.findings {
            let (key, level) = if f.kind == SCRAPE_KIND {
                unknown.insert(url(f.host));
                if f.check == POOL_FAILURE_CHECK {
                    continue; // our fault, not the target's
                }
                (AlertKey::new(TARGET_DOWN, &url(f.host), ""), Level::Fire)
            } else {
                (
                    AlertKey::new(&f.check, &url(f.host), &f.series),
                    Level::Fire,
                )
            };
            observed.push(Observed {
                key,
                level,
                value: f.value,
                message: f.message.clone(),
            });
        }
        for f in &rep.holds {
            observed.push(Observed {
                key: AlertKey::new(&f.check, &url(f.host), &f.series),
                level: Level::Hold,
                value: f.value,
                message: f.message.clone(),
            });
        }
        let ctx = RoundContext {
            now,
            rules: self.plan.params.clone(),
            groups: self.plan.groups.clone(),
            target_labels: self.plan.labels.clone(),
            unknown,
        };
        let changes = self.engine.evaluate(&ctx, observed);
        let resend_due = self
            .last_resend
            .is_none_or(|t| now - t >= self.cfg.resend_interval.secs());
        let active = resend_due.then(|| self.engine.active());
        if resend_due {
            self.last_resend = Some(now);
        }
        let valid_for = 4.0
            * self
                .cfg
                .interval
                .secs()
                .max(self.cfg.resend_interval.secs());
        self.notifier
            .send(
                &changes,
                active.as_deref(),
                now,
                valid_for,
                &self.generator_url,
            )
            .await;
    }

    fn record(&self, rep: &Report, secs: f64, pool: PoolDelta) {
        let counts = self.engine.counts();
        self.metrics.observe_round(secs);
        self.metrics.update(|v| {
            for h in &rep.hosts {
                let Some(t) = self.plan.targets.get(h.host as usize) else {
                    continue;
                };
                v.scrape_secs.insert(t.url.clone(), h.secs);
                let fails = v.scrape_failures.entry(t.url.clone()).or_default();
                *fails += u64::from(h.failed);
            }
            for f in &rep.findings {
                *v.findings.entry(f.check.clone()).or_default() += 1;
                if f.check == POOL_FAILURE_CHECK {
                    v.tasks_failed += 1;
                }
            }
            v.alerts_pending = counts.pending as u64;
            v.alerts_firing = counts.firing as u64;
            v.alerts_flapping = counts.flapping as u64;
            v.pool_workers = pool.workers;
            v.worker_restarts += pool.restarts;
            v.tasks_retried += pool.retried;
            v.points += rep.points;
            v.points_per_second = if secs > 0.0 {
                rep.points as f64 / secs
            } else {
                0.0
            };
            v.targets = self.plan.targets.len() as u64;
        });
    }

    /// SIGHUP: read the config again; keep the old one when the new one
    /// cannot be used.
    async fn reload(&mut self) {
        let res = ServiceConfig::from_args(&self.args)
            .and_then(|cfg| plan(&cfg, self.fleet_addr.as_deref()).map(|p| (cfg, p)));
        let (cfg, plan) = match res {
            Ok(x) => x,
            Err(e) => {
                self.metrics.update(|v| v.reload_ok = false);
                tracing::error!("reload failed, keeping the running config: {e}");
                return;
            }
        };
        if cfg.alertmanagers != self.cfg.alertmanagers || cfg.alerts_jsonl != self.cfg.alerts_jsonl
        {
            match Notifier::start(
                &cfg.alertmanagers,
                cfg.alerts_jsonl.as_deref(),
                self.metrics.clone(),
            ) {
                Ok(n) => {
                    self.notifier.flush().await;
                    self.notifier = n;
                    self.last_resend = None;
                }
                Err(e) => {
                    self.metrics.update(|v| v.reload_ok = false);
                    tracing::error!("reload failed, keeping the running config: {e}");
                    return;
                }
            }
        }
        // New rules or targets: the workers' state is keyed by host index
        // and built from the rules, so host history starts over, on a new
        // pool. Other pool settings: a new pool that gets the history back.
        if plan.init != self.plan.init || plan.targets != self.plan.targets {
            self.history = HistoryStore::default();
            let urls: HashSet<&str> = plan.targets.iter().map(|t| t.url.as_str()).collect();
            self.metrics.update(|v| {
                v.scrape_secs.retain(|u, _| urls.contains(u.as_str()));
                v.scrape_failures.retain(|u, _| urls.contains(u.as_str()));
            });
        }
        if plan.init != self.plan.init
            || plan.targets != self.plan.targets
            || plan.settings != self.plan.settings
            || cfg.cluster != self.cfg.cluster
            || cfg.cluster_ack_wait != self.cfg.cluster_ack_wait
        {
            self.drop_pool().await;
            self.backoff.succeeded();
        }
        self.engine.set_policy(cfg.policy());
        self.metrics.update(|v| {
            v.reload_ok = true;
            v.reload_time = wall_now();
        });
        tracing::info!(
            targets = plan.targets.len(),
            rules = plan.rules.rules.len(),
            "configuration reloaded"
        );
        self.cfg = cfg;
        self.plan = plan;
    }

    async fn shutdown(mut self) {
        self.notifier.flush().await;
        if let Some(p) = &self.cfg.state_file
            && let Err(e) = save_state(p, &self.engine)
        {
            tracing::error!("cannot save the alert state: {e}");
        }
        if let Some(s) = self.scanner.take()
            && let Err(e) = s.close().await
        {
            tracing::warn!("{e}");
        }
    }
}

/// Start the simulated fleet when the config names no targets.
#[cfg(feature = "simulator")]
async fn simulated_fleet(
    cfg: &ServiceConfig,
) -> Result<(Option<tokio::process::Child>, Option<String>), Error> {
    if !cfg.static_targets()?.is_empty() {
        return Ok((None, None));
    }
    let fc = FleetConfig {
        hosts: cfg.fleet_hosts,
        series: cfg.fleet_series,
        seed: cfg.fleet_seed,
        rounds: cfg.fleet_rounds,
        bad: Vec::new(),
    };
    let (child, addr) = crate::fleet::spawn_fleet_process(&fc).await?;
    tracing::info!(
        hosts = fc.hosts,
        series = fc.series,
        "no targets: watching the simulated fleet at http://{addr}"
    );
    Ok((Some(child), Some(addr)))
}

/// Built without the simulator: a config must name targets.
#[cfg(not(feature = "simulator"))]
async fn simulated_fleet(
    cfg: &ServiceConfig,
) -> Result<(Option<tokio::process::Child>, Option<String>), Error> {
    if cfg.static_targets()?.is_empty() {
        return Err(Error::Usage(
            "no targets in the config, and this fleetcheck was built without the simulated fleet (feature `simulator`)".into(),
        ));
    }
    Ok((None, None))
}

impl Service {
    /// Everything but the pool, which the first round builds.
    fn new(
        args: RunArgs,
        cfg: ServiceConfig,
        metrics: Arc<Metrics>,
        listen: std::net::SocketAddr,
        fleet_addr: Option<String>,
    ) -> Result<Service, Error> {
        let plan = plan(&cfg, fleet_addr.as_deref())?;
        let mut engine = AlertEngine::new(cfg.policy());
        if let Some(p) = &cfg.state_file {
            load_state(p, &mut engine);
        }
        let notifier = Notifier::start(
            &cfg.alertmanagers,
            cfg.alerts_jsonl.as_deref(),
            metrics.clone(),
        )?;
        let generator_url = cfg
            .external_url
            .clone()
            .unwrap_or_else(|| format!("http://{listen}/"));
        metrics.update(|v| {
            v.reload_ok = true;
            v.reload_time = wall_now();
            v.targets = plan.targets.len() as u64;
        });
        let mut svc = Service {
            args,
            plan,
            fleet_addr,
            metrics,
            engine,
            notifier,
            scanner: None,
            history: HistoryStore::default(),
            built_once: false,
            backoff: Backoff::new(),
            round: 0,
            last_resend: None,
            last_stats: multiloop::PoolStats::default(),
            generator_url,
            stamp: Vec::new(),
            cfg,
        };
        svc.stamp = svc.file_stamp();
        Ok(svc)
    }
}

fn ticker(every: Dur) -> tokio::time::Interval {
    let mut t = tokio::time::interval(every.duration());
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Run the service until SIGTERM/SIGINT (or `rounds` rounds).
pub async fn run(args: RunArgs) -> Result<(), Error> {
    let cfg = ServiceConfig::from_args(&args)?;
    let metrics = Arc::new(Metrics::new());
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::io("installing SIGHUP", e))?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| Error::io("installing SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("installing SIGINT", e))?;
    let listener = Listener::start(&cfg.listen, metrics.clone()).await?;
    tracing::info!("listening on http://{}", listener.addr);
    let (fleet, fleet_addr) = simulated_fleet(&cfg).await?;
    let mut svc = Service::new(args, cfg, metrics, listener.addr, fleet_addr)?;
    let mut interval = svc.cfg.interval;
    let mut tick = ticker(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                svc.reload_if_changed().await;
                svc.round().await;
                if svc.cfg.rounds > 0 && svc.round >= svc.cfg.rounds {
                    tracing::info!("{} rounds done", svc.round);
                    break;
                }
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                svc.reload().await;
                svc.stamp = svc.file_stamp();
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping after the round");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping after the round");
                break;
            }
        }
        if svc.cfg.interval != interval {
            interval = svc.cfg.interval;
            tick = ticker(interval);
            tick.reset();
        }
    }
    svc.shutdown().await;
    if let Some(mut c) = fleet {
        let _ = c.kill().await;
    }
    drop(listener);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuild_delay_doubles_up_to_the_bound_and_resets() {
        let mut b = Backoff::new();
        assert!(b.ready());
        let mut seen = Vec::new();
        for _ in 0..9 {
            seen.push(b.delay.as_secs());
            b.failed();
        }
        assert_eq!(seen, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(!b.ready(), "a failure makes the next attempt wait");
        b.succeeded();
        assert!(b.ready());
        assert_eq!(b.delay, Duration::from_secs(1));
    }
}
