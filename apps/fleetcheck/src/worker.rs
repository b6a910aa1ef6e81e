//! Per-worker state for running scrapes in a process pool (or any runner).
//!
//! A worker process builds one [`WorkerState`] (from a serde [`WorkerInit`],
//! plus any custom checks registered in code) and then serves
//! `scrape(host, round)` calls for the hosts routed to it. Host state stays in
//! the worker across rounds; the per-host result ([`HostRound`]) is small and
//! serde, and folds into a [`crate::report::Report`].

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::checks::Checks;
use crate::http::{ClientSettings, HttpClient};
use crate::rules::Rules;
use crate::scan::{HostSpec, ScrapeOptions, client_of, clients_for, fetch_page, process_page};
use crate::state::{HostCheckpoint, HostRound, HostState, ParentCopy};

/// What a worker needs to build its state (sent once per worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInit {
    /// Rules (built-in kinds). Custom checks are added in code.
    pub rules: Rules,
    /// Scrape options.
    pub opts: ScrapeOptions,
    /// Client settings per target group (empty: one default client).
    #[serde(default)]
    pub clients: Vec<ClientSettings>,
}

/// State of one worker: checks, HTTP client, and the state of every host
/// routed to it.
#[derive(Debug)]
pub struct WorkerState {
    checks: Checks,
    clients: Vec<HttpClient>,
    opts: ScrapeOptions,
    hosts: Mutex<HashMap<u32, HostState>>,
}

impl WorkerState {
    /// Build from rules and options (custom checks: see [`WorkerState::with_checks`]).
    pub fn new(init: &WorkerInit) -> Self {
        WorkerState::with_checks(Checks::from_rules(&init.rules), init.opts)
            .with_clients(&init.clients)
    }

    /// Use these client settings per target group (TLS, auth, caps).
    pub fn with_clients(mut self, settings: &[ClientSettings]) -> Self {
        self.clients = clients_for(settings);
        self
    }

    /// Build from an explicit check registry.
    pub fn with_checks(checks: Checks, opts: ScrapeOptions) -> Self {
        WorkerState {
            checks,
            clients: clients_for(&[]),
            opts,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The checks.
    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    /// Number of hosts with state in this worker.
    pub fn host_count(&self) -> usize {
        self.hosts.lock().map_or(0, |h| h.len())
    }

    /// Last round of `host`'s state in this worker (`None`: no state here).
    pub fn host_last_round(&self, host: u32) -> Option<u64> {
        self.hosts
            .lock()
            .ok()
            .and_then(|h| h.get(&host).and_then(HostState::last_round))
    }

    /// Like [`WorkerState::scrape`], with the host's state update in the
    /// result, as `parent` asks. When this worker has no state for the host
    /// and the parent has a copy, nothing is fetched: the result says
    /// `need_state`, and the parent calls
    /// [`WorkerState::restore_and_scrape`] with its copy.
    pub async fn scrape_checkpointed(
        &self,
        spec: &HostSpec,
        round: u64,
        parent: ParentCopy,
    ) -> HostRound {
        let known = self
            .hosts
            .lock()
            .map(|h| h.contains_key(&spec.id))
            .unwrap_or(false);
        match parent {
            ParentCopy::Has(_) if !known => HostRound::need_state(spec.id, round),
            ParentCopy::Has(n) => self.scrape_with_update(spec, round, Some(n)).await,
            ParentCopy::SendFull => self.scrape_with_update(spec, round, None).await,
            ParentCopy::Later => self.scrape(spec, round).await,
        }
    }

    /// Rebuild the host's state from `cp`, then scrape it with its
    /// state update in the result.
    pub async fn restore_and_scrape(
        &self,
        spec: &HostSpec,
        round: u64,
        cp: &HostCheckpoint,
    ) -> HostRound {
        let st = HostState::restore(&self.checks, cp);
        let len = st.checkpoint_len();
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.insert(spec.id, st);
        }
        self.scrape_with_update(spec, round, Some(len)).await
    }

    async fn scrape_with_update(
        &self,
        spec: &HostSpec,
        round: u64,
        parent_len: Option<u32>,
    ) -> HostRound {
        let mut hr = self.scrape(spec, round).await;
        if hr.stale {
            return hr;
        }
        hr.state = self
            .hosts
            .lock()
            .ok()
            .and_then(|h| h.get(&spec.id).map(|st| st.update_for(parent_len, round)));
        hr
    }

    /// Fetch, parse and check `spec` for `round`. The host lock is never
    /// held across an `.await`; concurrent calls for different hosts are fine
    /// (calls for the same host must not overlap — route by host and run
    /// rounds in order). A round this worker already applied to the host,
    /// or an earlier one (a redelivered or repeated task), is answered
    /// [`HostRound::stale`] without fetching or touching the host's state.
    pub async fn scrape(&self, spec: &HostSpec, round: u64) -> HostRound {
        if self
            .host_last_round(spec.id)
            .is_some_and(|last| round <= last)
        {
            return HostRound::stale(spec.id, round);
        }
        let start = std::time::Instant::now();
        let client = client_of(&self.clients, spec);
        let page = match client {
            Some(c) => fetch_page(c, spec, round, &self.opts).await,
            None => Err(crate::http::FetchError::Http("no HTTP client".into())),
        };
        let now = self.opts.clock.now(round);
        let mut st = {
            let Ok(mut hosts) = self.hosts.lock() else {
                return HostRound::failed(
                    spec.id,
                    round,
                    "internal",
                    "worker state poisoned".into(),
                );
            };
            hosts
                .remove(&spec.id)
                .unwrap_or_else(|| HostState::new(spec.id))
        };
        let mut hr = process_page(&mut st, &self.checks, round, now, &page);
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.insert(spec.id, st);
        }
        if let (Ok(p), Some(c)) = (page, client) {
            c.recycle(p.body);
        }
        hr.secs = start.elapsed().as_secs_f64();
        hr
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use crate::fleet::{Fleet, FleetConfig, FleetServer, STEP_SECS};
    use crate::report::{Report, verify};
    use crate::scan::{Clock, host_specs};
    use std::sync::Arc;

    /// The built-in rules, scraping the simulated fleet by round number on
    /// its logical clock.
    pub(crate) fn simulated_init() -> WorkerInit {
        WorkerInit {
            rules: Rules::builtin(),
            opts: ScrapeOptions {
                round_query: true,
                clock: Clock::Logical { step: STEP_SECS },
                ..Default::default()
            },
            clients: Vec::new(),
        }
    }

    #[test]
    fn worker_types_are_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<WorkerState>();
        assert_send_sync::<WorkerInit>();
        assert_send_sync::<HostRound>();
        assert_send_sync::<Report>();
    }

    #[test]
    fn targets_file_and_round_query() {
        let t = crate::scan::parse_targets("# fleet\nhttp://a/metrics\n\n  http://b/m?x=1  # b\n");
        assert_eq!(
            t,
            vec!["http://a/metrics".to_string(), "http://b/m?x=1".to_string()]
        );
        let specs = host_specs(&t);
        let o = ScrapeOptions {
            round_query: true,
            ..Default::default()
        };
        assert_eq!(o.url(&specs[0], 3), "http://a/metrics?round=3");
        assert_eq!(o.url(&specs[1], 4), "http://b/m?x=1&round=4");
        assert_eq!(
            ScrapeOptions::default().url(&specs[0], 3),
            "http://a/metrics"
        );
    }

    /// Simulates the pool: two workers, hosts routed by id, one reduce per round.
    #[tokio::test(flavor = "current_thread")]
    async fn two_workers_fold_and_merge() {
        let rounds = 5;
        let fleet = Arc::new(Fleet::new(FleetConfig {
            hosts: 12,
            series: 60,
            seed: 9,
            rounds,
            bad: Vec::new(),
        }));
        let server = FleetServer::start(fleet.clone(), 0).await.unwrap();
        let specs = host_specs(&server.target_urls());
        let init = simulated_init();
        let init: WorkerInit =
            serde_json::from_str(&serde_json::to_string(&init).unwrap()).unwrap();
        let workers = [WorkerState::new(&init), WorkerState::new(&init)];
        let parent_checks = Checks::from_rules(&init.rules);
        let mut total = Report::default();
        for round in 0..rounds {
            let mut parts = [Report::default(), Report::default()];
            for s in &specs {
                let w = (s.id % 2) as usize;
                let hr = workers[w].scrape(s, round).await;
                // crosses the process boundary as serde
                let hr: HostRound =
                    serde_json::from_str(&serde_json::to_string(&hr).unwrap()).unwrap();
                parts[w].add(hr);
            }
            let mut round_rep = Report::default();
            for p in parts {
                round_rep.merge(p);
            }
            round_rep.finish_round(&parent_checks, round);
            total.merge(round_rep);
        }
        assert_eq!(workers[0].host_count(), 6);
        assert_eq!(total.rounds, rounds);
        let v = verify(&total.findings, &fleet.ground_truth(rounds));
        assert!(v.passed(), "{v:?}");
        assert_eq!(v.precision, 1.0);
    }

    /// What the worker sends back depends on what the parent says it has.
    #[tokio::test(flavor = "current_thread")]
    async fn state_update_follows_what_the_parent_has() {
        use crate::state::StateUpdate;
        let fleet = Arc::new(Fleet::new(FleetConfig {
            hosts: 3,
            series: 80,
            seed: 5,
            rounds: 3,
            bad: Vec::new(),
        }));
        let server = FleetServer::start(fleet, 0).await.unwrap();
        let specs = host_specs(&server.target_urls());
        let init = simulated_init();
        let w = WorkerState::new(&init);
        // The parent has a copy but this worker has no state: ask for it.
        let r = w
            .scrape_checkpointed(&specs[0], 0, ParentCopy::Has(7))
            .await;
        assert!(r.need_state && r.points == 0 && r.state.is_none());
        // Not this round: scraped, no update.
        let r = w.scrape_checkpointed(&specs[0], 0, ParentCopy::Later).await;
        assert!(!r.need_state && r.points > 0 && r.state.is_none());
        // A full checkpoint, then changes relative to it.
        let r = w
            .scrape_checkpointed(&specs[0], 1, ParentCopy::SendFull)
            .await;
        let Some(StateUpdate::Full(cp)) = r.state else {
            panic!("{:?}", r.state)
        };
        let n = cp.series.len() as u32;
        let r = w
            .scrape_checkpointed(&specs[0], 2, ParentCopy::Has(n))
            .await;
        let Some(StateUpdate::Delta(d)) = r.state else {
            panic!("{:?}", r.state)
        };
        assert_eq!((d.base, d.round, d.updated), (n, 2, true));
        let mut copy = cp;
        assert!(copy.apply(&d));
        assert_eq!(
            Some(copy.clone()),
            w.hosts
                .lock()
                .unwrap()
                .get(&specs[0].id)
                .map(HostState::checkpoint)
        );
        // A worker given the copy rebuilds the host and goes on from it.
        let w2 = WorkerState::new(&init);
        let r = w2.restore_and_scrape(&specs[0], 3, &copy).await;
        assert!(matches!(r.state, Some(StateUpdate::Delta(ref d)) if d.base == n));
    }

    /// A redelivered (or repeated) scrape of a round the worker already
    /// applied changes nothing and fetches nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stale_round_leaves_the_host_state_alone() {
        let fleet = Arc::new(Fleet::new(FleetConfig {
            hosts: 2,
            series: 80,
            seed: 3,
            rounds: 4,
            bad: Vec::new(),
        }));
        let server = FleetServer::start(fleet, 0).await.unwrap();
        let specs = host_specs(&server.target_urls());
        let init = simulated_init();
        let w = WorkerState::new(&init);
        for round in 0..3 {
            assert!(w.scrape(&specs[0], round).await.points > 0);
        }
        let before = w.hosts.lock().unwrap()[&specs[0].id].checkpoint();
        for round in [2, 1, 0] {
            let r = w.scrape(&specs[0], round).await;
            assert!(r.stale && r.points == 0 && r.findings.is_empty(), "{r:?}");
            let n = before.series.len() as u32;
            let r = w
                .scrape_checkpointed(&specs[0], round, ParentCopy::Has(n))
                .await;
            assert!(r.stale && r.state.is_none(), "{r:?}");
        }
        let after = w.hosts.lock().unwrap()[&specs[0].id].checkpoint();
        assert_eq!(after, before, "the host's state is untouched");
        assert_eq!(w.host_last_round(specs[0].id), Some(2));
        let r = w.scrape(&specs[0], 3).await;
        assert!(!r.stale && r.points > 0, "the next round is scraped");
        let mut rep = Report::default();
        rep.add(HostRound::stale(specs[0].id, 1));
        assert_eq!((rep.scrapes, rep.scrape_failures, rep.points), (0, 0, 0));
    }
}
