//! The host's side: pull chunks only as the local pool has room, run each
//! on the local pool with progress acks while it runs, publish its
//! outcomes to the caller, and only then acknowledge it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};

use super::envelope::{self, Cancel, Lost, Outcomes, Work};
use super::redelivery::{self, Run};
use super::registry::HostStats;
use super::{ClusterConfig, Connection};
use crate::error::Error;
use crate::pool::{ChunkRec, Event};
use crate::wire::Status;
use crate::{Pool, PoolBuilder};

/// How long one pull request waits for work before the next. Short: the
/// server may deliver to a pull request of a host that just died (until
/// the request expires), which costs that delivery an `ack_wait`; with
/// `ack_wait` at least 1 s and progress acks every third of it, a dead
/// host's requests have expired before its chunks are redelivered.
const PULL_EXPIRES: Duration = Duration::from_millis(500);

/// Serves pool `cluster` as a host: runs the chunks it pulls on a local
/// pool built from `local` (its processes, concurrency, timeouts, attempts
/// and initializer). Returns only if setting up fails (the local pool, the
/// connection, the streams); after that it serves until the process ends,
/// riding out server restarts.
///
/// A program can call this instead of setting
/// [`ENV_HOST`](super::ENV_HOST); either way it runs the tasks linked into
/// this executable, so hosts run the caller's binary (or one registering
/// the same tasks).
///
/// ```no_run
/// # async fn run() -> Result<(), multiloop::Error> {
/// use multiloop::cluster::{ClusterConfig, serve};
/// let cluster = ClusterConfig::new("nats://10.0.0.1:4222", "inc-pool");
/// serve(cluster, multiloop::Pool::builder().processes(8)).await
/// # }
/// ```
pub async fn serve(cluster: ClusterConfig, local: PoolBuilder) -> Result<(), Error> {
    serve_with(cluster, local, || {}).await
}

pub(crate) async fn serve_with(
    cluster: ClusterConfig,
    local: PoolBuilder,
    ready: impl FnOnce(),
) -> Result<(), Error> {
    let pool = local.build().await?;
    let conn = super::connect(&cluster).await?;
    let (consumer, ack_wait) = super::work_consumer(&conn, &cluster, false).await?;
    let slots = pool.inner().config.processes * 2 + 1;
    let registry = super::registry::open(&conn, &cluster, ack_wait, false).await?;
    let host = Arc::new(Host {
        pool,
        conn,
        ack_wait_ns: AtomicU64::new(nanos(ack_wait)),
        publish_timeout: cluster.publish_timeout,
        running: Mutex::new(HashMap::new()),
        tasks_skipped: AtomicU64::new(0),
    });
    let cancels = host
        .conn
        .client
        .subscribe(host.conn.names.cancel_subject.clone())
        .await
        .map_err(|e| super::nats_error("could not subscribe to cancellations", &cluster, e))?;
    tokio::spawn(cancel_loop(Arc::clone(&host), cancels));
    tokio::spawn(partitions(Arc::clone(&host), cluster.clone()));
    let (id, hostname, me) = (
        super::new_id(),
        super::registry::hostname(),
        Arc::clone(&host),
    );
    tokio::spawn(super::registry::heartbeat(
        registry,
        ack_wait,
        move |ack_wait| {
            me.ack_wait_ns.store(nanos(ack_wait), Ordering::Relaxed);
            me.describe(&id, &hostname)
        },
    ));
    let room = Arc::new(Semaphore::new(slots));
    tracing::info!(pool = cluster.pool, slots, "cluster host ready");
    ready();
    loop {
        let free = room.available_permits();
        if free == 0 {
            let _ = room.acquire().await;
            continue;
        }
        let batch = consumer
            .batch()
            .max_messages(free)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(m) => m,
            Err(e) => {
                // The server is down or restarting: ask again shortly.
                tracing::debug!(error = %e, "cluster host: pull failed");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        // The request ends at its expiry; a stream that stays silent well
        // past it (its end lost in a server restart) is abandoned, so a
        // stalled pull never stops the host. (Idle heartbeats are not
        // used: with them, async-nats 0.51 ended short requests late,
        // delaying the redelivery of a dead host's chunks by seconds.)
        while let Ok(Some(message)) = tokio::time::timeout(PULL_EXPIRES * 4, messages.next()).await
        {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "cluster host: pull ended");
                    break;
                }
            };
            match Arc::clone(&room).try_acquire_owned() {
                Ok(permit) => {
                    let host = Arc::clone(&host);
                    tokio::spawn(async move {
                        host.run(message).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
            }
        }
    }
}

struct Host {
    pool: Pool,
    conn: Connection,
    /// The pool's `ack_wait`, in nanoseconds: what the work consumer had
    /// when the host started, then what the registry's entries live (the
    /// caller sets both), so a host started before its caller follows it.
    ack_wait_ns: AtomicU64,
    publish_timeout: Duration,
    /// The chunks running here, by caller and chunk: woken to cancel.
    running: Mutex<HashMap<(String, u64), Arc<Notify>>>,
    /// Tasks of chunks delivered again that were not run (see
    /// `redelivery`).
    tasks_skipped: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// How a chunk's run on the local pool ended.
enum Ran {
    /// Every task accounted for: the events that say how.
    Done(Vec<Event>),
    /// The local pool stopped: another host should run it.
    Stopped,
    Cancelled,
}

impl Host {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Arc<Notify>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ack_wait(&self) -> Duration {
        Duration::from_nanos(self.ack_wait_ns.load(Ordering::Relaxed))
    }

    /// This host's entry in the registry.
    fn describe(&self, id: &str, hostname: &str) -> HostStats {
        let config = &self.pool.inner().config;
        HostStats {
            id: id.to_owned(),
            hostname: hostname.to_owned(),
            pid: std::process::id(),
            processes: config.processes,
            concurrency: config.concurrency,
            ack_wait: self.ack_wait(),
            chunks_running: self.running().len() as u64,
            tasks_done: self.pool.stats().tasks_done,
            tasks_skipped: self.tasks_skipped.load(Ordering::Relaxed),
        }
    }

    async fn run(&self, message: jetstream::Message) {
        let payload = message.payload.clone();
        let work: Work<'_> = match envelope::decode(&payload) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cluster host: dropped a message that is not work");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        // Listed as running from here: a cancellation that comes while the
        // host asks about a chunk delivered again is kept for the run.
        let key = (work.caller.to_owned(), work.chunk);
        let cancel = Arc::new(Notify::new());
        self.running().insert(key.clone(), Arc::clone(&cancel));
        self.run_wanted(&message, &work, &payload, &cancel).await;
        self.running().remove(&key);
    }

    /// Runs the chunk `work` (its arguments in `payload`), or, when it is
    /// delivered again, the part of it its caller still waits for.
    async fn run_wanted(
        &self,
        message: &jetstream::Message,
        work: &Work<'_>,
        payload: &Bytes,
        cancel: &Notify,
    ) {
        if message.info().is_ok_and(|i| i.delivered > 1) {
            let count = work.offsets.len().saturating_sub(1);
            let wait = self.ack_wait() / 3;
            if let Run::Only(which) = redelivery::still_wanted(&self.conn, work, wait).await
                && which.len() < count
            {
                let skipped = (count - which.len()) as u64;
                self.tasks_skipped.fetch_add(skipped, Ordering::Relaxed);
                if which.is_empty() {
                    let _ = message.double_ack().await;
                    return;
                }
                let (args, offsets) = redelivery::subset(work.payload, &work.offsets, &which);
                let args = Bytes::from(args);
                let part = Work {
                    payload: &args,
                    offsets,
                    ..*work
                };
                return self
                    .run_work(message, &part, &args, cancel, Some(&which))
                    .await;
            }
        }
        self.run_work(message, work, payload, cancel, None).await;
    }

    /// Runs `work` (its arguments in `payload`) until done or `cancel`,
    /// publishes its outcomes and acknowledges `message`. `ran`: the
    /// chunk's index of each task of `work`, when it is part of the chunk.
    async fn run_work(
        &self,
        message: &jetstream::Message,
        work: &Work<'_>,
        payload: &Bytes,
        cancel: &Notify,
        ran: Option<&[u32]>,
    ) {
        let slot = self.local_slot(message.subject.as_str());
        let result = self.run_local(work, payload, slot, message, cancel).await;
        let events = match result {
            Ran::Done(events) => events,
            Ran::Stopped => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
            Ran::Cancelled => {
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let subject = self.conn.names.results_subject(work.caller);
        let count = work.offsets.len().saturating_sub(1) as u32;
        let limit = self.conn.max_payload.saturating_sub(1024).max(1024);
        let parts = match outcomes(work, count, &events, limit, ran) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(error = %e, "cluster host: could not gather a chunk's outcomes");
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
        };
        for part in parts {
            if !self.publish(&subject, part.into()).await {
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
        }
        // Lost (a server restart): the chunk runs again, and the caller
        // keeps only the first outcome of each task.
        let _ = message.double_ack().await;
    }

    /// The local worker slot for a chunk published on `subject`: every
    /// chunk of routed partition `p` runs on local slot `p % processes`, so
    /// the state a routed task keeps per key (`worker_state`) stays in one
    /// worker across rounds, as on one machine. `None` (any worker) for
    /// unrouted work.
    fn local_slot(&self, subject: &str) -> Option<usize> {
        let partition: usize = subject
            .strip_prefix(self.conn.names.partition_subject("").as_str())?
            .parse()
            .ok()?;
        Some(partition % self.pool.inner().config.processes.max(1))
    }

    /// Runs the chunk on the local pool (on local worker `slot` when set),
    /// acknowledging progress while it runs.
    async fn run_local(
        &self,
        work: &Work<'_>,
        payload: &Bytes,
        slot: Option<usize>,
        message: &jetstream::Message,
        cancel: &Notify,
    ) -> Ran {
        let count = work.offsets.len().saturating_sub(1) as u64;
        let Some(task) = crate::worker::Registry::get().lookup(work.task) else {
            return Ran::Done(Vec::new());
        };
        let reduce = match work.reducer {
            None => None,
            Some((name, value)) => match crate::reduce::lookup(name) {
                Some(entry) => Some((entry.name(), payload.slice_ref(value))),
                None => return Ran::Done(Vec::new()),
            },
        };
        let (tx, mut rx) = crate::pool::job_events();
        let inner = self.pool.inner();
        let job = {
            let mut core = inner.lock();
            let job = core.new_job();
            let rec = ChunkRec::new(
                (job, tx),
                task.name,
                (
                    payload.slice_ref(work.payload),
                    work.offsets.clone(),
                    None,
                    0,
                ),
                (work.timeout_us > 0).then(|| Duration::from_micros(work.timeout_us)),
                work.max_attempts,
                slot,
                reduce,
            );
            if core.submit(rec).is_err() {
                return Ran::Stopped;
            }
            job
        };
        let mut events = Vec::new();
        let mut accounted = 0u64;
        // The first tick one period from now: an interval's immediate
        // first tick still waits for the timer wheel's next millisecond,
        // which was most of a trivial chunk's time on the host.
        let period = self.ack_wait() / 3;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        while accounted < count {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event @ Event::Outcomes { .. }) => {
                        if let Event::Outcomes { items, .. } = &event {
                            accounted += items
                                .iter()
                                .map(|i| if i.partial { i.index } else { u64::from(i.count) })
                                .sum::<u64>();
                        }
                        events.push(event);
                    }
                    Some(Event::Failed { indices, failure }) => {
                        if Lost::from_failure(&failure).is_none() {
                            inner.lock().cancel_job(job);
                            return Ran::Stopped;
                        }
                        accounted += indices.len() as u64;
                        events.push(Event::Failed { indices, failure });
                    }
                    None => return Ran::Stopped,
                },
                _ = progress.tick() => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
                () = cancel.notified() => {
                    inner.lock().cancel_job(job);
                    return Ran::Cancelled;
                }
            }
        }
        Ran::Done(events)
    }

    /// Publishes one message of outcomes, retrying through a server
    /// outage; `false` when the server never confirmed it.
    async fn publish(&self, subject: &str, body: Bytes) -> bool {
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = async {
                let ack = self
                    .conn
                    .js
                    .publish(subject.to_owned(), body.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                ack.await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster host: publish failed"),
                Err(_) => return false,
            }
            if tokio::time::Instant::now() + backoff >= deadline {
                return false;
            }
            // A server that is down answers at once: wait before asking again.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// The messages of outcomes for a chunk of `count` tasks, each under
/// `limit` bytes. A task the host has no code for (or a reducer it lacks)
/// is answered as a worker would answer it. `ran`: the chunk's index of
/// each task run, when only some ran (a chunk delivered again).
fn outcomes(
    work: &Work<'_>,
    count: u32,
    events: &[Event],
    limit: usize,
    ran: Option<&[u32]>,
) -> Result<Vec<Vec<u8>>, String> {
    let at = |i: u32| ran.and_then(|r| r.get(i as usize).copied()).unwrap_or(i);
    let mut lost: Vec<(Vec<u32>, Lost<'_>)> = Vec::new();
    let mut done: Vec<(u32, u8, &[u8])> = Vec::new();
    let mut partials: Vec<&[u8]> = Vec::new();
    let mut folded = Vec::new();
    let unknown = if crate::worker::Registry::get().lookup(work.task).is_none() {
        Some(work.task)
    } else {
        work.reducer
            .map(|(name, _)| name)
            .filter(|name| crate::reduce::lookup(name).is_none())
    };
    if let Some(name) = unknown {
        for i in 0..count {
            done.push((at(i), Status::UnknownTask as u8, name.as_bytes()));
        }
    }
    for event in events {
        match event {
            Event::Outcomes {
                frame,
                items,
                listed,
            } => {
                for item in items {
                    let data = frame
                        .get(item.start as usize..item.end as usize)
                        .ok_or("an outcome outside its frame")?;
                    if item.partial {
                        partials.push(data);
                    } else if item.dense {
                        // Values alone: the task's own type finds where
                        // each ends.
                        let entry = crate::worker::Registry::get()
                            .lookup(work.task)
                            .ok_or("results of a task this host does not have")?;
                        for (k, value) in (entry.split_values)(data, item.count)?
                            .into_iter()
                            .enumerate()
                        {
                            let index = item.input_index(listed, k as u32) as u32;
                            done.push((at(index), Status::Ok as u8, value));
                        }
                    } else {
                        let mut reader = crate::wire::Reader::new(data);
                        for k in 0..item.count {
                            let (status, data) = crate::wire::next_outcome(&mut reader)
                                .map_err(|e| e.to_string())?;
                            let index = item.input_index(listed, k) as u32;
                            done.push((at(index), status as u8, data));
                        }
                    }
                }
            }
            Event::Failed { indices, failure } => {
                if let Some(l) = Lost::from_failure(failure) {
                    lost.push((indices.iter().map(|&i| at(i as u32)).collect(), l));
                }
            }
        }
    }
    match partials.as_slice() {
        [] => {}
        [one] => done.push((count, Status::Partial as u8, one)),
        many => {
            // The local pool split the chunk (a worker died under it):
            // merge its partials into the one the caller expects.
            let (name, value) = work.reducer.ok_or("partials without a reducer")?;
            let entry = crate::reduce::lookup(name).ok_or("unknown reducer")?;
            let mut fold = crate::reduce::make(entry, value)?;
            for p in many {
                fold.merge_bytes(p)?;
            }
            fold.finish(&mut folded)?;
            done.push((count, Status::Partial as u8, &folded));
        }
    }
    // Greedy parts under the limit; the lost tasks travel in the first.
    let mut parts = Vec::new();
    let mut part: Vec<(u32, u8, &[u8])> = Vec::new();
    let mut size = 64
        + lost
            .iter()
            .map(|(ix, l)| ix.len() * 5 + lost_size(l))
            .sum::<usize>();
    let too_big = b"the result is larger than the nats-server's max_payload";
    for (index, status, data) in done {
        let (status, data) = match data.len() + 16 > limit {
            true => (Status::EncodeFailed as u8, &too_big[..]),
            false => (status, data),
        };
        if size + data.len() + 16 > limit && !part.is_empty() {
            parts.push(envelope::encode(&Outcomes {
                chunk: work.chunk,
                lost: std::mem::take(&mut lost),
                done: std::mem::take(&mut part),
            }));
            size = 64;
        }
        size += data.len() + 16;
        part.push((index, status, data));
    }
    parts.push(envelope::encode(&Outcomes {
        chunk: work.chunk,
        lost,
        done: part,
    }));
    Ok(parts)
}

fn lost_size(l: &Lost<'_>) -> usize {
    match l {
        Lost::Crash { stderr_tail, .. } => stderr_tail.len() + 32,
        Lost::Setup(reason) => reason.len() + 16,
        _ => 32,
    }
}

/// Pulls every partition (routed lanes' chunks): those that exist now,
/// and each one a caller makes later (from the server's consumer-created
/// advisories). Each partition is pulled as a member of one priority
/// group; the server delivers a partition to one pinned host at a time.
async fn partitions(host: Arc<Host>, cluster: ClusterConfig) {
    let stream = &host.conn.names.work_stream;
    let created = host
        .conn
        .client
        .subscribe(format!("$JS.EVENT.ADVISORY.CONSUMER.CREATED.{stream}.*"))
        .await;
    let mut created = match created {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cluster host: cannot follow new partitions; routed work will not run here");
            return;
        }
    };
    let mut pulled = std::collections::HashSet::new();
    let mut names = host.conn.work.consumer_names();
    let mut found = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        found.push(name);
    }
    loop {
        for name in found.drain(..) {
            if name.starts_with(super::PARTITION_PREFIX) && pulled.insert(name.clone()) {
                tokio::spawn(pull_partition(Arc::clone(&host), cluster.clone(), name));
            }
        }
        let Some(advisory) = created.next().await else {
            return;
        };
        if let Some(name) = advisory.subject.as_str().rsplit('.').next() {
            found.push(name.to_owned());
        }
    }
}

/// Pulls one partition for as long as the host lives.
async fn pull_partition(host: Arc<Host>, cluster: ClusterConfig, name: String) {
    loop {
        let consumer = host
            .conn
            .work
            .get_consumer::<jetstream::consumer::pull::Config>(&name)
            .await;
        let messages = match consumer {
            Ok(c) => {
                c.stream()
                    .group(super::PARTITION_GROUP)
                    .max_messages_per_batch(4)
                    .expires(PULL_EXPIRES)
                    .messages()
                    .await
            }
            Err(e) => {
                tracing::debug!(error = %e, partition = name, pool = cluster.pool, "cluster host: partition gone");
                return;
            }
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "cluster host: partition pull failed");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => {
                    let host = Arc::clone(&host);
                    tokio::spawn(async move { host.run(message).await });
                }
                Err(e) => tracing::debug!(error = %e, "cluster host: partition pull hiccup"),
            }
        }
    }
}

/// Stops the chunks callers cancel.
async fn cancel_loop(host: Arc<Host>, mut cancels: async_nats::Subscriber) {
    while let Some(message) = cancels.next().await {
        let Ok(cancel) = envelope::decode::<Cancel<'_>>(&message.payload) else {
            continue;
        };
        let running = host.running();
        for chunk in cancel.chunks {
            if let Some(stop) = running.get(&(cancel.caller.to_owned(), chunk)) {
                stop.notify_one();
            }
        }
    }
}
