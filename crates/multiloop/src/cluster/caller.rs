//! The caller's side: lanes that stand in the scheduler's worker slots and
//! publish its chunks, the loop that hands the hosts' outcomes back to the
//! scheduler, and the reaper that ends chunks no host finished.
//!
//! A lane reads its outbox exactly as a local worker's writer task does;
//! the frames it finds (RUN, CANCEL, SHUTDOWN) become publishes, deletions
//! and the lane's end. Everything above the outbox is the local pool's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};

use super::envelope::{self, Cancel, Outcomes, Work};
use super::registry::{self, HostStats, Hosts};
use super::{ClusterConfig, Connection, nats_error};
use crate::error::{Error, ExitInfo};
use crate::pool::{
    Cause, ClusterActions as Actions, ClusterFailure as Failure, Config, Inner, Outbox, WorkerId,
    WorkerSlot, group_ranges,
};
use crate::wire::{Message, Status, check_frame};

/// Room in a message for the envelope around a chunk's arguments: the
/// offsets (at most 5 bytes for each of up to 32 Ki tasks) and names.
const ENVELOPE_ROOM: usize = 5 * 32 * 1024 + 4096;

/// One pool's link to its cluster.
pub(crate) struct Caller {
    conn: Connection,
    config: ClusterConfig,
    /// This caller's id: its results subject and message ids.
    id: String,
    results: jetstream::consumer::PullConsumer,
    advisories: jetstream::consumer::Consumer<jetstream::consumer::pull::OrderedConfig>,
    /// The host registry, and the hosts it lists now.
    registry: jetstream::kv::Store,
    hosts: watch::Sender<Hosts>,
    /// Hosts' questions about chunks delivered again (taken by `start`).
    asks: Mutex<Option<async_nats::Subscriber>>,
    published: Mutex<Published>,
    loops: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// Stream sequence numbers of the chunks published and not finished.
#[derive(Default)]
struct Published {
    by_chunk: HashMap<u64, u64>,
    by_seq: HashMap<u64, u64>,
}

impl Published {
    fn forget(&mut self, chunk: u64) -> Option<u64> {
        let seq = self.by_chunk.remove(&chunk)?;
        self.by_seq.remove(&seq);
        Some(seq)
    }
}

impl Caller {
    /// Connects for a pool about to be built, and fits its frames to the
    /// server's message size.
    pub(crate) async fn connect(
        cluster: ClusterConfig,
        config: &mut Config,
    ) -> Result<Arc<Caller>, Error> {
        if config.initializer.is_some() {
            return Err(Error::usage(
                "a cluster pool has no initializer: each host's own pool runs its initializer",
            ));
        }
        let conn = super::connect(&cluster).await?;
        super::work_consumer(&conn, &cluster, true).await?;
        for slot in 0..config.processes {
            super::partition_consumer(&conn, &cluster, slot).await?;
        }
        let Some(room) = conn
            .max_payload
            .checked_sub(ENVELOPE_ROOM)
            .filter(|&r| r >= 4096)
        else {
            return Err(Error::usage(format!(
                "the nats-server at {} takes messages of at most {} bytes; the cluster needs \
                 at least {} (raise max_payload)",
                cluster.url,
                conn.max_payload,
                ENVELOPE_ROOM + 4096
            )));
        };
        config.max_frame = config.max_frame.min(room);
        let id = super::new_id();
        let results = conn
            .js
            .create_consumer_on_stream(
                jetstream::consumer::pull::Config {
                    durable_name: Some(super::redelivery::results_consumer(&id)),
                    filter_subject: conn.names.results_subject(&id),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 1 << 20,
                    // A caller that died leaves its consumer behind this long.
                    inactive_threshold: Duration::from_secs(3600),
                    ..Default::default()
                },
                conn.names.results_stream.as_str(),
            )
            .await
            .map_err(|e| nats_error("could not create the results consumer", &cluster, e))?;
        let advisories = conn
            .js
            .create_consumer_on_stream(
                jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    ..Default::default()
                },
                conn.names.advisory_stream.as_str(),
            )
            .await
            .map_err(|e| nats_error("could not read the advisories", &cluster, e))?;
        let registry = registry::open(&conn, &cluster, cluster.ack_wait, true).await?;
        let asks = conn
            .client
            .subscribe(conn.names.ask_subject(&id))
            .await
            .map_err(|e| nats_error("could not subscribe to hosts' questions", &cluster, e))?;
        Ok(Arc::new(Caller {
            conn,
            config: cluster,
            id,
            results,
            advisories,
            registry,
            hosts: watch::Sender::new(Hosts::new()),
            asks: Mutex::new(Some(asks)),
            published: Mutex::new(Published::default()),
            loops: Mutex::new(Vec::new()),
        }))
    }

    /// The largest message the server takes.
    pub(crate) fn max_payload(&self) -> usize {
        self.conn.max_payload
    }

    /// The hosts the registry lists now.
    pub(crate) fn hosts(&self) -> Vec<HostStats> {
        self.hosts.borrow().values().cloned().collect()
    }

    /// How many hosts the registry lists now.
    pub(crate) fn hosts_alive(&self) -> usize {
        self.hosts.borrow().len()
    }

    /// Waits until the hosts the registry lists satisfy `until`.
    pub(crate) async fn wait_for_hosts(
        &self,
        mut until: impl FnMut(&[HostStats]) -> bool,
    ) -> Vec<HostStats> {
        let mut changes = self.hosts.subscribe();
        loop {
            let now: Vec<HostStats> = changes.borrow_and_update().values().cloned().collect();
            if until(&now) {
                return now;
            }
            // The sender lives as long as `self`: this never ends the loop.
            if changes.changed().await.is_err() {
                return now;
            }
        }
    }

    fn published(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts a lane in every worker slot and starts the loops.
    pub(crate) fn start(self: Arc<Self>, inner: &Arc<Inner>) {
        let _ = inner.cluster.set(Arc::clone(&self));
        let mut loops = Vec::new();
        for slot in 0..inner.config.processes {
            let outbox = Arc::new(Outbox::default());
            let stop = Arc::new(Notify::new());
            let id = {
                let mut core = inner.lock();
                let id = WorkerId {
                    slot,
                    generation: core.new_generation(),
                };
                core.workers.push(WorkerSlot {
                    id,
                    pid: 0,
                    process: Arc::new(crate::spawn::ProcessHandle::lane(Arc::clone(&stop))),
                    outbox: Arc::clone(&outbox),
                    ready: true,
                    alive: true,
                    retiring: false,
                    assigned: 0,
                    lifetime: 0,
                    chunks: Default::default(),
                    isolating: false,
                    last_progress: std::time::Instant::now(),
                    rearm: Arc::new(Notify::new()),
                    cancels: Default::default(),
                });
                id
            };
            let lane = lane(Arc::downgrade(inner), id, outbox, stop, Arc::clone(&self));
            inner.runtime.spawn(lane);
        }
        let weak = Arc::downgrade(inner);
        loops.push(
            inner
                .runtime
                .spawn(results_loop(weak.clone(), Arc::clone(&self)))
                .abort_handle(),
        );
        loops.push(
            inner
                .runtime
                .spawn(reaper(weak.clone(), Arc::clone(&self)))
                .abort_handle(),
        );
        let watch = registry::watch(self.registry.clone(), self.hosts.clone());
        loops.push(inner.runtime.spawn(watch).abort_handle());
        let asks = self
            .asks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(asks) = asks {
            let answer = super::redelivery::answer(weak, self.conn.client.clone(), asks);
            loops.push(inner.runtime.spawn(answer).abort_handle());
        }
        *self.loops.lock().unwrap_or_else(PoisonError::into_inner) = loops;
    }

    /// Publishes one RUN frame's chunk; a task waits for the server's
    /// confirmation (retrying through an outage) and records its sequence.
    fn publish(self: &Arc<Self>, inner: &Weak<Inner>, lane: WorkerId, run: crate::wire::Run<'_>) {
        let Some(pool) = inner.upgrade() else { return };
        let Some((offsets, max_attempts, affinity)) = pool
            .lock()
            .chunks
            .get(&run.chunk)
            .map(|r| (r.offsets.clone(), r.max_attempts, r.affinity))
        else {
            return; // cancelled since
        };
        let body = envelope::encode(&Work {
            caller: &self.id,
            chunk: run.chunk,
            task: run.task,
            timeout_us: run.timeout_us,
            max_attempts,
            reducer: run.reducer,
            offsets,
            payload: run.payload,
        });
        let chunk = run.chunk;
        let caller = Arc::clone(self);
        let inner = inner.clone();
        pool.runtime.spawn(async move {
            let subject = match affinity {
                Some(slot) => caller.conn.names.partition_subject(&slot.to_string()),
                None => caller.conn.names.work_subject.clone(),
            };
            match caller
                .publish_confirmed(subject, chunk, Bytes::from(body))
                .await
            {
                Ok(seq) => {
                    // Checked and recorded under the lock `cancel` takes
                    // after the chunk left the scheduler: a chunk
                    // cancelled meanwhile is either found there or seen
                    // gone here.
                    let recorded = {
                        let mut p = caller.published();
                        let running = inner
                            .upgrade()
                            .is_some_and(|i| i.lock().chunks.contains_key(&chunk));
                        if running {
                            p.by_chunk.insert(chunk, seq);
                            p.by_seq.insert(seq, chunk);
                        }
                        running
                    };
                    if !recorded {
                        // Cancelled (or answered) while being published: a
                        // host may have taken it already.
                        let _ = caller.conn.work.delete_message(seq).await;
                        let body = envelope::encode(&Cancel {
                            caller: &caller.id,
                            chunks: vec![chunk],
                        });
                        let subject = caller.conn.names.cancel_subject.clone();
                        let _ = caller.conn.client.publish(subject, body.into()).await;
                    }
                }
                Err(reason) => {
                    if let Some(inner) = inner.upgrade() {
                        let mut actions = Actions::default();
                        let failure = |_| Failure::Cluster(reason);
                        inner
                            .lock()
                            .fail_tasks(lane, chunk, None, failure, &mut actions);
                        inner.after(actions);
                    }
                }
            }
        });
    }

    async fn publish_confirmed(
        &self,
        subject: String,
        chunk: u64,
        body: Bytes,
    ) -> Result<u64, String> {
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}.{chunk}", self.id).as_str(),
        );
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let ack = self
                    .conn
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())
            };
            let failed = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(ack)) => return Ok(ack.sequence),
                Ok(Err(e)) => e,
                Err(_) => "no confirmation".to_owned(),
            };
            if tokio::time::Instant::now() + backoff >= deadline {
                return Err(format!(
                    "the nats-server at {} did not store a chunk within {:?}: {failed}",
                    self.config.url, self.config.publish_timeout
                ));
            }
            // A server that is down answers at once: wait before asking again.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Chunks the caller dropped: removes the ones no host took yet, and
    /// tells hosts to stop the ones they run.
    fn cancel(self: &Arc<Self>, runtime: &tokio::runtime::Handle, chunks: Vec<u64>) {
        let seqs: Vec<u64> = {
            let mut p = self.published();
            chunks.iter().filter_map(|&c| p.forget(c)).collect()
        };
        let caller = Arc::clone(self);
        runtime.spawn(async move {
            let body = envelope::encode(&Cancel {
                caller: &caller.id,
                chunks,
            });
            // Queued chunks go first: hosts whose running chunks stop pull
            // again at once, and must not find the rest of this call.
            // A chunk already taken fails to delete: the broadcast stops it.
            let work = &caller.conn.work;
            futures_util::future::join_all(seqs.into_iter().map(|seq| work.delete_message(seq)))
                .await;
            let subject = caller.conn.names.cancel_subject.clone();
            let _ = caller.conn.client.publish(subject, body.into()).await;
        });
    }

    /// Hands one message of outcomes to the scheduler.
    fn on_outcomes(&self, inner: &Arc<Inner>, payload: &Bytes) -> Result<(), String> {
        let outcomes: Outcomes<'_> = envelope::decode(payload)?;
        let chunk = outcomes.chunk;
        let mut actions = Actions::default();
        let finished = {
            let mut core = inner.lock();
            let Some(owner) = core.chunks.get(&chunk).and_then(|r| r.worker) else {
                // Finished or cancelled: a late copy from a second run.
                drop(core);
                self.published().forget(chunk);
                return Ok(());
            };
            for (indices, lost) in &outcomes.lost {
                core.fail_tasks(
                    owner,
                    chunk,
                    Some(indices),
                    |task| lost.to_failure(task),
                    &mut actions,
                );
            }
            // The outcomes as a RESULTS frame of the local protocol, which
            // the scheduler reads.
            let mut w = crate::wire::FrameWriter::new();
            let start = w.results_begin();
            for &(index, status, data) in &outcomes.done {
                let Ok(status) = Status::from_u8(status) else {
                    continue;
                };
                let at = w.outcome_header(chunk, index, status);
                w.buf().extend_from_slice(data);
                w.outcome_end(at);
            }
            w.finish(start);
            let frame = Bytes::from(w.take());
            let groups = group_ranges(&frame).map_err(|e| format!("bad outcomes: {e}"))?;
            if let Err(e) = core.on_results(owner, &frame, groups.into_iter(), &mut actions) {
                tracing::warn!(error = %e, chunk, "cluster: a host's outcomes were refused");
            }
            !core.chunks.contains_key(&chunk)
        };
        inner.after(actions);
        if finished {
            self.published().forget(chunk);
        }
        Ok(())
    }

    /// No host finished the chunk at stream sequence `seq` within its
    /// deliveries: a chunk of several tasks runs again one task per chunk
    /// (so only a task that kills its hosts fails); a chunk of one task
    /// fails.
    fn on_exhausted(&self, inner: &Arc<Inner>, seq: u64, deliveries: u64) {
        let Some(chunk) = self.published().by_seq.get(&seq).copied() else {
            return; // another caller's chunk
        };
        self.published().forget(chunk);
        let mut actions = Actions::default();
        {
            let mut core = inner.lock();
            if let Some(owner) = core.chunks.get(&chunk).and_then(|r| r.worker)
                && !core.isolate_exhausted(owner, chunk)
            {
                let failure = |task| Failure::Crash {
                    task,
                    exit: ExitInfo::default(),
                    attempts: deliveries.min(u64::from(u32::MAX)) as u32,
                    stderr_tail: format!(
                        "[multiloop cluster] no host finished the task: it was delivered \
                         {deliveries} time(s), and each host died, lost its link or stopped \
                         acknowledging within ack_wait {:?}",
                        self.config.ack_wait
                    ),
                };
                core.fail_tasks(owner, chunk, None, failure, &mut actions);
            }
        }
        inner.after(actions);
        let work = self.conn.work.clone();
        inner.runtime.spawn(async move {
            let _ = work.delete_message(seq).await;
        });
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        for l in self.loops.get_mut().unwrap_or_else(PoisonError::into_inner) {
            l.abort();
        }
    }
}

/// One lane: publishes the chunks its outbox receives until the pool stops.
async fn lane(
    inner: Weak<Inner>,
    id: WorkerId,
    outbox: Arc<Outbox>,
    stop: Arc<Notify>,
    caller: Arc<Caller>,
) {
    let mut spare = Vec::new();
    let killed = loop {
        {
            let mut buf = outbox.buf.lock().unwrap_or_else(PoisonError::into_inner);
            buf.frames.swap(&mut spare);
        }
        if spare.is_empty() {
            tokio::select! {
                () = outbox.notify.notified() => continue,
                () = stop.notified() => break true,
            }
        }
        let mut rest = &spare[..];
        let mut shutdown = false;
        while let Ok(Some(frame)) = check_frame(rest, usize::MAX) {
            match Message::decode(&rest[4..frame.len]) {
                Ok(Message::Run(run)) => caller.publish(&inner, id, run),
                Ok(Message::Cancel(chunks)) => {
                    if let Some(i) = inner.upgrade() {
                        caller.cancel(&i.runtime, chunks);
                        // Handed on to the hosts: a lane has no event loop
                        // to be stuck in.
                        i.lock().on_cancelled(id);
                    }
                }
                Ok(Message::Shutdown) => shutdown = true,
                _ => {}
            }
            rest = &rest[frame.len..];
        }
        spare.clear();
        if shutdown {
            break false;
        }
    };
    let Some(inner) = inner.upgrade() else { return };
    let exit = match killed {
        true => ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL),
        },
        false => ExitInfo {
            code: Some(0),
            signal: None,
        },
    };
    let mut actions = Actions::default();
    inner
        .lock()
        .on_death(id, &exit, "", None, Cause::Exited, &mut actions);
    inner.after(actions);
    inner.worker_exited.notify_waiters();
}

/// Reads the caller's outcomes for as long as the pool lives.
async fn results_loop(inner: Weak<Inner>, caller: Arc<Caller>) {
    loop {
        let mut messages = match caller.results.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: reading outcomes failed; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let Some(pool) = inner.upgrade() else { return };
            match message {
                Ok(message) => {
                    if let Err(e) = caller.on_outcomes(&pool, &message.payload) {
                        tracing::warn!(error = %e, "cluster: dropped a message of outcomes");
                    }
                    let _ = message.ack().await;
                }
                Err(e) => tracing::debug!(error = %e, "cluster: outcome stream hiccup"),
            }
        }
    }
}

/// Ends the tasks of chunks that used up their deliveries, from the
/// server's advisories (kept in a stream, so none is missed while the
/// caller reconnects).
async fn reaper(inner: Weak<Inner>, caller: Arc<Caller>) {
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: u64,
    }
    loop {
        let mut messages = match caller.advisories.clone().messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: reading advisories failed; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let Some(pool) = inner.upgrade() else { return };
            let Ok(message) = message else { continue };
            match serde_json::from_slice::<Advisory>(&message.payload) {
                Ok(a) => caller.on_exhausted(&pool, a.stream_seq, a.deliveries),
                Err(e) => tracing::warn!(error = %e, "cluster: unreadable advisory"),
            }
        }
    }
}
