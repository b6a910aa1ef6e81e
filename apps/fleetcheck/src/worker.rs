//! Per-worker state for running scrapes in a process pool (or any runner).
//!
//! A worker process builds one [`WorkerState`] (from a serde [`WorkerInit`],
//! plus any custom checks registered in code) and then serves
//! `scrape(host, round)` calls for the hosts routed to it. Host state stays in
//! the worker across rounds; the per-host result ([`HostRound`]) is small and
//! serde, and folds into a [`crate::report::Report`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

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
    checks: Arc<Checks>,
    clients: Vec<HttpClient>,
    opts: ScrapeOptions,
    hosts: Mutex<HashMap<u32, HostSlot>>,
}

/// One host's state, locked by the scrape that uses it from its start to
/// its end. The lock is fair (waiters get it in the order they asked) and
/// a scrape asks for it before its first `.await`: as multiloop starts a
/// worker's routed tasks in submission order, the scrapes of one host run
/// one after the other in the order the runner sent them, even when rounds
/// overlap.
type HostSlot = Arc<tokio::sync::Mutex<HostState>>;

/// A place in a host's queue of scrapes ([`WorkerState::turn`]).
pub enum HostTurn {
    /// The host was free: its state is ours.
    Now(tokio::sync::OwnedMutexGuard<HostState>),
    /// Waiting for the scrapes of the host that took a turn before.
    Queued(Pin<Box<dyn Future<Output = tokio::sync::OwnedMutexGuard<HostState>> + Send>>),
}

impl std::fmt::Debug for HostTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostTurn::Now(_) => "HostTurn::Now",
            HostTurn::Queued(_) => "HostTurn::Queued",
        })
    }
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
        WorkerState::with_shared_checks(Arc::new(checks), opts)
    }

    /// Build from a check registry shared with the caller (the in-process
    /// runner, which also runs the fleet-level checks).
    pub(crate) fn with_shared_checks(checks: Arc<Checks>, opts: ScrapeOptions) -> Self {
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

    /// Last round of `host`'s state in this worker (`None`: no state here,
    /// or a scrape of it is running).
    pub fn host_last_round(&self, host: u32) -> Option<u64> {
        let slot = self.hosts.lock().ok()?.get(&host).cloned()?;
        let st = slot.try_lock().ok()?;
        st.last_round()
    }

    /// Whether this worker has state for `host`.
    fn knows(&self, host: u32) -> bool {
        self.hosts
            .lock()
            .map(|h| h.contains_key(&host))
            .unwrap_or(false)
    }

    /// The slot of `host`, made empty when this worker has none.
    fn slot(&self, host: u32) -> Option<HostSlot> {
        let mut hosts = self.hosts.lock().ok()?;
        let slot = hosts
            .entry(host)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(HostState::new(host))));
        Some(Arc::clone(slot))
    }

    /// A place in `host`'s queue of scrapes, taken now: scrapes given
    /// turns of one host run one after the other in the order the turns
    /// were taken ([`WorkerState::scrape_in_turn`]).
    pub fn turn(&self, host: u32) -> Option<HostTurn> {
        let mut lock = Box::pin(self.slot(host)?.lock_owned());
        // The first poll takes the place in the lock's queue (tokio's
        // mutex is fair); a later poll with the task's waker waits there.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        Some(match lock.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(guard) => HostTurn::Now(guard),
            std::task::Poll::Pending => HostTurn::Queued(lock),
        })
    }

    /// [`WorkerState::scrape`] in a turn taken before.
    pub async fn scrape_in_turn(&self, turn: HostTurn, spec: &HostSpec, round: u64) -> HostRound {
        let mut st = match turn {
            HostTurn::Now(guard) => guard,
            HostTurn::Queued(lock) => lock.await,
        };
        self.scrape_locked(&mut st, spec, round).await
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
        match parent {
            ParentCopy::Has(_) if !self.knows(spec.id) => HostRound::need_state(spec.id, round),
            ParentCopy::Has(n) => self.scrape_with_update(spec, round, Some(n), None).await,
            ParentCopy::SendFull => self.scrape_with_update(spec, round, None, None).await,
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
        self.scrape_with_update(spec, round, Some(len), Some(st))
            .await
    }

    /// Scrape (on `restored` when given) with the update against what the
    /// parent has in the result, under one hold of the host's lock.
    async fn scrape_with_update(
        &self,
        spec: &HostSpec,
        round: u64,
        parent_len: Option<u32>,
        restored: Option<HostState>,
    ) -> HostRound {
        let Some(slot) = self.slot(spec.id) else {
            return poisoned(spec, round);
        };
        let mut st = slot.lock().await;
        if let Some(restored) = restored {
            *st = restored;
        }
        let mut hr = self.scrape_locked(&mut st, spec, round).await;
        if !hr.stale {
            hr.state = Some(st.update_for(parent_len, round));
        }
        hr
    }

    /// Fetch, parse and check `spec` for `round`. Concurrent calls for
    /// different hosts run concurrently; calls for the same host run one
    /// after the other, in the order they started (see [`HostSlot`]). A
    /// round this worker already applied to the host, or an earlier one (a
    /// redelivered or repeated task), is answered [`HostRound::stale`]
    /// without fetching or touching the host's state.
    pub async fn scrape(&self, spec: &HostSpec, round: u64) -> HostRound {
        let Some(slot) = self.slot(spec.id) else {
            return poisoned(spec, round);
        };
        let mut st = slot.lock().await;
        self.scrape_locked(&mut st, spec, round).await
    }

    async fn scrape_locked(&self, st: &mut HostState, spec: &HostSpec, round: u64) -> HostRound {
        if st.last_round().is_some_and(|last| round <= last) {
            return HostRound::stale(spec.id, round);
        }
        let start = std::time::Instant::now();
        let client = client_of(&self.clients, spec);
        let page = match client {
            Some(c) => fetch_page(c, spec, round, &self.opts).await,
            None => Err(crate::http::FetchError::Http("no HTTP client".into())),
        };
        let now = self.opts.clock.now(round);
        let mut hr = process_page(st, &self.checks, round, now, &page);
        if let (Ok(p), Some(c)) = (page, client) {
            c.recycle(p.body);
        }
        hr.secs = start.elapsed().as_secs_f64();
        hr
    }
}

/// The result of a scrape on a worker whose host table is poisoned.
fn poisoned(spec: &HostSpec, round: u64) -> HostRound {
    HostRound::failed(spec.id, round, "internal", "worker state poisoned".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use crate::fleet::{Fleet, FleetConfig, FleetServer, STEP_SECS};
    use crate::report::{Report, verify};
    use crate::scan::{Clock, host_specs};
    use std::sync::Arc;

    /// The worker's copy of a host's state (none while it is scraped).
    fn checkpoint_of(w: &WorkerState, host: u32) -> Option<crate::state::HostCheckpoint> {
        let slot = w.hosts.lock().unwrap().get(&host).cloned()?;
        let st = slot.try_lock().ok()?;
        Some(st.checkpoint())
    }

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
        assert_eq!(Some(copy.clone()), checkpoint_of(&w, specs[0].id));
        // A worker given the copy rebuilds the host and goes on from it.
        let w2 = WorkerState::new(&init);
        let r = w2.restore_and_scrape(&specs[0], 3, &copy).await;
        assert!(matches!(r.state, Some(StateUpdate::Delta(ref d)) if d.base == n));
    }

    /// A simulated fleet of two hosts of 80 series (4 rounds).
    async fn two_hosts() -> (FleetServer, Vec<HostSpec>) {
        let fleet = Arc::new(Fleet::new(FleetConfig {
            hosts: 2,
            series: 80,
            seed: 3,
            rounds: 4,
            bad: Vec::new(),
        }));
        let server = FleetServer::start(fleet, 0).await.unwrap();
        let specs = host_specs(&server.target_urls());
        (server, specs)
    }

    /// Scrapes of one host run in the order their turns were taken, even
    /// when the later one is polled first (rounds overlap).
    #[tokio::test(flavor = "current_thread")]
    async fn a_hosts_scrapes_run_in_the_order_of_their_turns() {
        let (_server, specs) = two_hosts().await;
        let w = WorkerState::new(&simulated_init());
        let first = w.turn(specs[0].id).unwrap();
        let second = w.turn(specs[0].id).unwrap();
        assert!(matches!(first, HostTurn::Now(_)) && matches!(second, HostTurn::Queued(_)));
        let (later, earlier) = tokio::join!(
            w.scrape_in_turn(second, &specs[0], 1),
            w.scrape_in_turn(first, &specs[0], 0),
        );
        assert!(!earlier.stale && earlier.points > 0, "{earlier:?}");
        assert!(!later.stale && later.points > 0, "{later:?}");
        assert_eq!(w.host_last_round(specs[0].id), Some(1));
        // Taken in the other order, the earlier round comes second: it is
        // stale and changes nothing.
        let third = w.turn(specs[0].id).unwrap();
        let stale = w.turn(specs[0].id).unwrap();
        assert!(!w.scrape_in_turn(third, &specs[0], 3).await.stale);
        assert!(w.scrape_in_turn(stale, &specs[0], 2).await.stale);
        assert_eq!(w.host_last_round(specs[0].id), Some(3));
    }

    /// A redelivered (or repeated) scrape of a round the worker already
    /// applied changes nothing and fetches nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stale_round_leaves_the_host_state_alone() {
        let (_server, specs) = two_hosts().await;
        let init = simulated_init();
        let w = WorkerState::new(&init);
        for round in 0..3 {
            assert!(w.scrape(&specs[0], round).await.points > 0);
        }
        let before = checkpoint_of(&w, specs[0].id).unwrap();
        for round in [2, 1, 0] {
            let r = w.scrape(&specs[0], round).await;
            assert!(r.stale && r.points == 0 && r.findings.is_empty(), "{r:?}");
            let n = before.series.len() as u32;
            let r = w
                .scrape_checkpointed(&specs[0], round, ParentCopy::Has(n))
                .await;
            assert!(r.stale && r.state.is_none(), "{r:?}");
        }
        let after = checkpoint_of(&w, specs[0].id).unwrap();
        assert_eq!(after, before, "the host's state is untouched");
        assert_eq!(w.host_last_round(specs[0].id), Some(2));
        let r = w.scrape(&specs[0], 3).await;
        assert!(!r.stale && r.points > 0, "the next round is scraped");
        let mut rep = Report::default();
        rep.add(HostRound::stale(specs[0].id, 1));
        assert_eq!((rep.scrapes, rep.scrape_failures, rep.points), (0, 0, 0));
    }
}
