//! The parent's bookkeeping: queued and in-flight chunks, worker credits,
//! and what happens to a worker's tasks when it dies.
//!
//! Everything here runs under one mutex, held for short, non-async
//! critical sections: submitting a chunk, handling a frame of outcomes, a
//! worker's death. Frames for workers are appended to their outboxes; a
//! small one is sent at once with a non-blocking send (never a wait), the
//! rest by the workers' writer tasks, which are woken.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::error::{Error, ExitInfo, Kind};
use crate::ids::{IdMap, IdSet};
use crate::wire::{FrameWriter, Status};

/// What a job (one `map`, `apply`, ...) receives from the pool.
pub(crate) enum Event {
    /// Outcomes from one RESULTS frame; `listed` holds the input indices
    /// of items whose tasks are not consecutive inputs.
    Outcomes {
        frame: Bytes,
        items: Vec<Item>,
        listed: Vec<u64>,
    },
    /// Tasks that ended without an outcome from a worker.
    Failed { indices: Vec<u64>, failure: Failure },
}

/// A run of outcomes of one job: where they lie in the frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    /// The first task's input index; for a partial, how many tasks it
    /// folds.
    pub(crate) index: u64,
    /// How many outcomes lie back to back in `start..end`, each as the
    /// worker wrote it (status, data length, data); a partial's range is
    /// its data alone.
    pub(crate) count: u32,
    /// Where the input indices of the run are listed in the event's
    /// `listed`; [`Item::CONSECUTIVE`]: they are `index..index + count`.
    pub(crate) listed: u32,
    /// A map-reduce chunk's folded results.
    pub(crate) partial: bool,
    /// The tasks all succeeded: their values lie back to back, alone.
    pub(crate) dense: bool,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Item {
    /// The run's tasks are consecutive inputs.
    pub(crate) const CONSECUTIVE: u32 = u32::MAX;

    /// The input index of the run's `k`-th task.
    #[inline]
    pub(crate) fn input_index(&self, listed: &[u64], k: u32) -> u64 {
        match self.listed {
            Item::CONSECUTIVE => self.index + u64::from(k),
            at => listed
                .get(at as usize + k as usize)
                .copied()
                .unwrap_or(u64::MAX),
        }
    }
}

/// Where a group of outcomes lies: chunk, first index, count, dense, and
/// its body's range in the frame (what [`Core::on_results`] takes).
pub(crate) type GroupRange = (u64, u32, u32, bool, u32, u32);

/// The groups of a whole RESULTS frame (prefix included), for a frame
/// built in this process (a cluster caller's, the tests').
#[cfg(any(test, feature = "cluster"))]
pub(crate) fn group_ranges(frame: &Bytes) -> Result<Vec<GroupRange>, crate::wire::WireError> {
    let body = frame.get(4..).unwrap_or_default();
    let crate::wire::Message::Results(results) = crate::wire::Message::decode(body)? else {
        return Err(crate::wire::WireError::BadValue("message tag", 0));
    };
    let base = frame.as_ptr() as usize;
    results
        .groups()
        .map(|g| {
            let g = g?;
            let start = (g.body.as_ptr() as usize - base) as u32;
            Ok((
                g.chunk,
                g.first,
                g.count,
                g.dense,
                start,
                start + g.body.len() as u32,
            ))
        })
        .collect()
}

/// Queues the outcomes gathered for one job from a frame (none: nothing).
fn send_outcomes(
    gathered: Option<(u64, JobSink, Vec<Item>, Vec<u64>)>,
    frame: &Bytes,
    actions: &mut Actions,
) {
    if let Some((_, sink, items, listed)) = gathered
        && !items.is_empty()
    {
        let frame = frame.clone();
        actions.events.push((
            sink,
            Event::Outcomes {
                frame,
                items,
                listed,
            },
        ));
    }
}

/// The bits of tasks `first..first + count` (`count > 0`), as
/// (word, mask) pairs of a chunk's `done` bitmap.
fn word_masks(first: u32, count: u32) -> impl Iterator<Item = (usize, u64)> {
    let (first, last) = (u64::from(first), u64::from(first) + u64::from(count) - 1);
    (first / 64..=last / 64).map(move |w| {
        let lo = if w == first / 64 { first % 64 } else { 0 };
        let hi = if w == last / 64 { last % 64 } else { 63 };
        let mask = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
        (w as usize, mask)
    })
}

/// Why tasks ended without an outcome; turned into one [`Error`] per task.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Crash {
        task: &'static str,
        exit: ExitInfo,
        attempts: u32,
        stderr_tail: String,
    },
    Terminated,
    Closed,
    RestartIntensity {
        restarts: u32,
        within: Duration,
        last: ExitInfo,
        /// The end of the last dead worker's stderr.
        stderr_tail: String,
        backoff: Option<Duration>,
    },
    Setup(String),
    /// The worker stopped answering while running this task past its
    /// deadline, so the parent killed it.
    HardTimeout {
        after: Duration,
    },
    /// The cluster's broker could not be reached or refused the work.
    #[cfg(feature = "cluster")]
    Cluster(String),
    /// The tokio runtime the pool was built on has shut down: nothing
    /// reads its workers any more.
    RuntimeGone,
}

impl Failure {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            Failure::Crash {
                task,
                exit,
                attempts,
                stderr_tail,
            } => Error::new(Kind::Crash {
                task: Some(task),
                exit: exit.clone(),
                attempts: *attempts,
                stderr_tail: stderr_tail.clone(),
            }),
            Failure::Terminated => Error::terminated(),
            Failure::Closed => Error::pool_closed(),
            Failure::RestartIntensity {
                restarts,
                within,
                last,
                stderr_tail,
                backoff,
            } => Error::new(Kind::RestartIntensity {
                restarts: *restarts,
                within: *within,
                last: last.clone(),
                stderr_tail: stderr_tail.clone(),
                backoff: *backoff,
            }),
            Failure::HardTimeout { after } => Error::new(Kind::Timeout {
                after: *after,
                hard: true,
            }),
            Failure::Setup(reason) => Error::new(Kind::Initializer {
                reason: reason.clone(),
            }),
            Failure::RuntimeGone => Error::usage(
                "the tokio runtime this pool was built on has shut down, and its workers with it: \
                 a pool lives on the runtime that built it (build one per #[tokio::test], say)",
            ),
            #[cfg(feature = "cluster")]
            Failure::Cluster(reason) => Error::io(
                "the cluster failed the task",
                std::io::Error::other(reason.clone()),
            ),
        }
    }
}

pub(crate) use super::events::JobSink;

/// A chunk of tasks of one job, from submission to its last outcome.
pub(crate) struct ChunkRec {
    pub(crate) job: u64,
    pub(crate) sink: JobSink,
    pub(crate) task: &'static str,
    pub(crate) timeout: Option<Duration>,
    /// The serialized arguments, back to back.
    pub(crate) payload: Bytes,
    /// `offsets[i]..offsets[i + 1]` are task `i`'s arguments.
    pub(crate) offsets: Vec<u32>,
    /// The job index of each task; `None` means `base + i`.
    pub(crate) indices: Option<Vec<u64>>,
    pub(crate) base: u64,
    pub(crate) done: Vec<u64>,
    pub(crate) remaining: u32,
    /// Which worker incarnation runs it.
    pub(crate) worker: Option<WorkerId>,
    pub(crate) dispatched: Option<Instant>,
    /// Attempts used so far, including the current one.
    pub(crate) attempt: u32,
    /// Run on a worker with nothing else to do (a suspect after a crash
    /// nobody could be blamed for).
    pub(crate) isolated: bool,
    /// Only the worker in this slot may run it (routing by key).
    pub(crate) affinity: Option<usize>,
    /// The reducer folding the chunk's results in the worker: its registry
    /// name and serialized value.
    pub(crate) reduce: Option<(&'static str, Bytes)>,
    pub(crate) max_attempts: u32,
    /// When it was submitted (the pool's count of chunks then); its parts
    /// run again after a death keep it, so they still sort in submission
    /// order.
    pub(crate) seq: u64,
}

impl ChunkRec {
    /// A chunk of a job's tasks as a call submits it: `job` is the job's id
    /// and where its outcomes go; `tasks` the arguments back to back, their
    /// offsets, and their job indices (`None`: `base + i`).
    pub(crate) fn new(
        job: (u64, JobSink),
        task: &'static str,
        tasks: (Bytes, Vec<u32>, Option<Vec<u64>>, u64),
        timeout: Option<Duration>,
        max_attempts: u32,
        affinity: Option<usize>,
        reduce: Option<(&'static str, Bytes)>,
    ) -> Self {
        let (payload, offsets, indices, base) = tasks;
        let count = offsets.len().saturating_sub(1);
        ChunkRec {
            job: job.0,
            sink: job.1,
            task,
            timeout,
            payload,
            offsets,
            indices,
            base,
            done: vec![0; count.div_ceil(64)],
            remaining: count as u32,
            worker: None,
            dispatched: None,
            attempt: 1,
            isolated: false,
            affinity,
            reduce,
            max_attempts: max_attempts.max(1),
            seq: 0,
        }
    }

    pub(crate) fn count(&self) -> u32 {
        (self.offsets.len() - 1) as u32
    }

    /// Where the chunk's tasks stand in submission order: when the chunk
    /// they came from was submitted, then their first job index (parts of
    /// one chunk share its `seq`).
    fn submission_order(&self) -> (u64, u64) {
        let first = match &self.indices {
            Some(ix) => ix.first().copied().unwrap_or(self.base),
            None => self.base,
        };
        (self.seq, first)
    }

    pub(crate) fn job_index(&self, i: u32) -> u64 {
        match &self.indices {
            Some(ix) => ix[i as usize],
            None => self.base + u64::from(i),
        }
    }

    fn is_done(&self, i: u32) -> bool {
        self.done[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set_done(&mut self, i: u32) {
        self.done[(i / 64) as usize] |= 1 << (i % 64);
    }

    /// Whether none of tasks `first..first + count` has an outcome yet.
    fn none_done(&self, first: u32, count: u32) -> bool {
        word_masks(first, count).all(|(w, mask)| self.done[w] & mask == 0)
    }

    /// Marks tasks `first..first + count` done.
    fn set_done_range(&mut self, first: u32, count: u32) {
        for (w, mask) in word_masks(first, count) {
            self.done[w] |= mask;
        }
    }

    fn args(&self, i: u32) -> &[u8] {
        &self.payload[self.offsets[i as usize] as usize..self.offsets[i as usize + 1] as usize]
    }

    /// A new chunk of the tasks in `which`, for a retry or a split.
    fn subset(&self, which: &[u32], attempt: u32) -> ChunkRec {
        let mut payload = Vec::with_capacity(which.iter().map(|&i| self.args(i).len()).sum());
        let mut offsets = Vec::with_capacity(which.len() + 1);
        offsets.push(0);
        let mut indices = Vec::with_capacity(which.len());
        for &i in which {
            payload.extend_from_slice(self.args(i));
            offsets.push(payload.len() as u32);
            indices.push(self.job_index(i));
        }
        ChunkRec {
            job: self.job,
            sink: self.sink.clone(),
            task: self.task,
            timeout: self.timeout,
            payload: Bytes::from(payload),
            offsets,
            indices: Some(indices),
            base: 0,
            done: vec![0; which.len().div_ceil(64)],
            remaining: which.len() as u32,
            worker: None,
            dispatched: None,
            attempt,
            isolated: false,
            affinity: self.affinity,
            reduce: self.reduce.clone(),
            max_attempts: self.max_attempts,
            seq: self.seq,
        }
    }

    fn pending(&self) -> Vec<u32> {
        (0..self.count()).filter(|&i| !self.is_done(i)).collect()
    }
}

/// A worker incarnation: its slot and the generation that distinguishes it
/// from the worker that held the slot before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct WorkerId {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
}

/// Frames waiting to be written to one worker.
///
/// The worker's writer task writes them. A small frame queued while no
/// write is under way is sent at once instead, by whoever queued it, with
/// one non-blocking send: a round trip (an `apply`) then skips a wake-up
/// of the writer task. What that send could not take waits for the writer
/// task, which keeps the order: nothing is sent at once while it writes.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) buf: Mutex<Pending>,
    pub(crate) notify: Notify,
    /// The worker's socket, once its writer task runs.
    pub(crate) socket: std::sync::OnceLock<Arc<tokio::net::unix::OwnedWriteHalf>>,
}

/// The frames not yet written, and whether the writer task is writing.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) frames: FrameWriter,
    pub(crate) writing: bool,
}

impl Outbox {
    /// Frames up to this size are sent at once (a larger batch of tasks
    /// goes to the writer task, keeping the core's lock short).
    const SEND_AT_ONCE: usize = 4096;

    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut FrameWriter) -> R) -> R {
        let mut pending = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let r = f(&mut pending.frames);
        if !pending.writing
            && pending.frames.len() <= Self::SEND_AT_ONCE
            && let Some(socket) = self.socket.get()
            && let Ok(sent) = socket.try_write(pending.frames.as_bytes())
        {
            pending.frames.consume(sent);
        }
        let left = !pending.frames.is_empty();
        drop(pending);
        if left {
            self.notify.notify_one();
        }
        r
    }
}

/// The parent's view of one worker.
pub(crate) struct WorkerSlot {
    pub(crate) id: WorkerId,
    pub(crate) pid: u32,
    /// Kills this very process, never one that reused its pid.
    pub(crate) process: Arc<crate::spawn::ProcessHandle>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) ready: bool,
    pub(crate) alive: bool,
    /// No new work: it is being recycled or shut down.
    pub(crate) retiring: bool,
    pub(crate) assigned: usize,
    /// Tasks given to this worker over its life (for recycling).
    pub(crate) lifetime: u64,
    pub(crate) chunks: ChunkSet,
    /// Runs an isolated chunk: gets nothing else until it finishes.
    pub(crate) isolating: bool,
    /// When the worker last answered, or was given work while idle.
    pub(crate) last_progress: Instant,
    /// Wakes the supervisor to re-arm its deadline when the worker is
    /// given a task that has one, or told to drop some.
    pub(crate) rearm: Arc<Notify>,
    /// Chunks the worker was told to drop and has not confirmed dropping.
    pub(crate) cancels: CancelWatch,
}

/// Chunks a worker was told to drop and has not yet confirmed dropping. A
/// cancelled task that never yields (a CPU loop) cannot be reached by the
/// cancel, and would hold its worker's event loop, and every task queued
/// there, for ever: the parent looks at the worker's beacon a grace after
/// the cancel and then every grace, and kills a worker found twice in a row
/// in the same poll of a cancelled task. The worker's other tasks run again
/// elsewhere without losing an attempt (it died in another task's poll).
#[derive(Debug, Default)]
pub(crate) struct CancelWatch {
    chunks: Vec<u64>,
    unanswered: u32,
    /// Cancelled tasks still charged to the worker: they hold its slots
    /// until it confirms (new work goes to other workers first meanwhile).
    held: usize,
    /// The cancel, or the last look.
    since: Option<Instant>,
    /// The cancelled task being polled at the last look.
    seen: Option<(u64, u32)>,
}

#[cfg(test)]
impl CancelWatch {
    /// Cancelled tasks still charged to the worker.
    pub(crate) fn held(&self) -> usize {
        self.held
    }
}

impl WorkerSlot {
    /// Tells the worker to drop `chunks`' tasks (`held` of them still
    /// charged to it), and watches it until it confirms.
    fn cancel(&mut self, chunks: &[u64], held: usize, shutdown: bool) {
        self.outbox.with(|o| {
            o.cancel(chunks);
            if shutdown {
                o.shutdown();
            }
        });
        let c = &mut self.cancels;
        c.chunks.extend_from_slice(chunks);
        c.unanswered += 1;
        c.held += held;
        c.since.get_or_insert_with(Instant::now);
        self.rearm.notify_one();
    }
}

/// Pool-wide settings the core needs.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) concurrency: usize,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) restart_limit: u32,
    pub(crate) restart_window: Duration,
    pub(crate) restart_policy: RestartPolicy,
}

/// What a pool does when its workers die more often than its restart
/// intensity allows, for reasons no task explains (killed from outside,
/// dying at start-up, the OOM killer while tasks wait). A death inside a
/// task's poll is that task's own failure and never counts.
///
/// Either way, every task pending at that moment ends with an error for
/// which [`Error::is_restart_intensity`](crate::Error::is_restart_intensity)
/// is true, naming the cause.
///
/// ```
/// use std::time::Duration;
/// use multiloop::{Pool, RestartPolicy};
///
/// // A batch job that would rather stop than limp along:
/// let builder = Pool::builder().restart_policy(RestartPolicy::Stop);
/// // A service that waits out storms, retrying at most every minute:
/// let builder = Pool::builder()
///     .restart_policy(RestartPolicy::backoff(Duration::from_millis(50), Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartPolicy {
    /// The default: the pool waits before starting workers again, `initial`
    /// after the first storm, doubling while storms follow each other, up
    /// to `max`, and back to `initial` once the pool ran calm for a restart
    /// window. Live workers keep serving; calls made later are served as
    /// usual.
    Backoff {
        /// The first delay (default 100 ms).
        initial: Duration,
        /// The longest delay (default 30 s).
        max: Duration,
    },
    /// Stop for good (as an OTP supervisor does): workers are stopped and
    /// every later call fails at once with the same error.
    Stop,
}

impl RestartPolicy {
    /// [`RestartPolicy::Backoff`] from `initial` doubling up to `max`.
    pub fn backoff(initial: Duration, max: Duration) -> Self {
        RestartPolicy::Backoff { initial, max }
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy::backoff(Duration::from_millis(100), Duration::from_secs(30))
    }
}

/// What the caller of a core method must do after the lock is released.
#[derive(Default)]
pub(crate) struct Actions {
    /// Events to deliver to jobs.
    pub(crate) events: Vec<(JobSink, Event)>,
    /// Slots that need a fresh worker, and when (`None`: now).
    pub(crate) respawn: Vec<(usize, Option<Instant>)>,
    /// Workers to ask to exit once idle.
    pub(crate) retire: Vec<WorkerId>,
    /// Calls to wake (they wait for an input while the pool stopped).
    pub(crate) wake: Vec<std::task::Waker>,
}

impl Actions {
    pub(crate) fn deliver(self) -> (Vec<(usize, Option<Instant>)>, Vec<WorkerId>) {
        for (sink, event) in self.events {
            // A job whose receiver is gone was cancelled: nothing to do.
            let _ = sink.send(event);
        }
        for waker in self.wake {
            waker.wake();
        }
        (self.respawn, self.retire)
    }
}

/// Whether the pool takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    /// `close()` waits for submitted work to finish.
    Closing,
    /// `close()` stopped the workers.
    Stopped,
    Terminated,
    /// Workers died too often; pending work failed.
    Broken,
}

impl Phase {
    /// Whether a slot whose worker ended gets a fresh one.
    pub(crate) fn takes_workers(self) -> bool {
        matches!(self, Phase::Open | Phase::Closing)
    }
}

/// Counters kept by the scheduler since the pool started, for
/// [`Pool::stats`](crate::Pool::stats).
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub(crate) spawned: u64,
    pub(crate) retired: u64,
    pub(crate) died_in_task: u64,
    pub(crate) died_outside_tasks: u64,
    pub(crate) killed_for_protocol: u64,
    pub(crate) killed_unresponsive: u64,
    pub(crate) done: u64,
    pub(crate) retried: u64,
    pub(crate) failed: u64,
    pub(crate) storms: u64,
}

pub(crate) struct Core {
    pub(crate) limits: Limits,
    pub(crate) phase: Phase,
    pub(crate) workers: Vec<WorkerSlot>,
    pub(crate) queue: VecDeque<u64>,
    pub(crate) chunks: IdMap<u64, ChunkRec>,
    next_chunk: u64,
    next_job: u64,
    next_generation: u64,
    /// Deaths no task explains, within the restart window.
    deaths: VecDeque<Instant>,
    pub(crate) broken: Option<Failure>,
    /// After a restart storm: no worker starts before this instant.
    respawn_at: Option<Instant>,
    /// The delay set at the last storm, and when that storm was.
    backoff: Option<(Duration, Instant)>,
    pub(crate) counters: Counters,
    /// Calls waiting only for their lazy input (nothing in flight), by
    /// job id: woken when the pool stops taking work, which nothing else
    /// would tell them.
    pub(crate) input_waiters: HashMap<u64, std::task::Waker>,
}

impl Core {
    pub(crate) fn new(limits: Limits) -> Self {
        Core {
            limits,
            phase: Phase::Open,
            workers: Vec::new(),
            queue: VecDeque::new(),
            chunks: HashMap::default(),
            next_chunk: 1,
            next_job: 1,
            next_generation: 1,
            deaths: VecDeque::new(),
            broken: None,
            respawn_at: None,
            backoff: None,
            counters: Counters::default(),
            input_waiters: HashMap::new(),
        }
    }

    pub(crate) fn new_job(&mut self) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        id
    }

    /// Deaths no task explains within the restart window, now.
    pub(crate) fn restarts_in_window(&self) -> usize {
        let now = Instant::now();
        self.deaths
            .iter()
            .filter(|t| now.duration_since(**t) <= self.limits.restart_window)
            .count()
    }

    /// Tasks waiting for a worker, and tasks given to workers.
    pub(crate) fn tasks_queued_and_running(&self) -> (u64, u64) {
        let mut queued = 0;
        let mut running = 0;
        for rec in self.chunks.values() {
            match rec.worker {
                Some(_) => running += u64::from(rec.remaining),
                None => queued += u64::from(rec.remaining),
            }
        }
        (queued, running)
    }

    /// A new worker incarnation is starting.
    pub(crate) fn new_generation(&mut self) -> u64 {
        self.counters.spawned += 1;
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// The calls waiting for their input, to wake once the pool has
    /// stopped taking work.
    pub(crate) fn take_input_waiters(&mut self) -> Vec<std::task::Waker> {
        self.input_waiters.drain().map(|(_, w)| w).collect()
    }

    /// Whether a new call may start.
    pub(crate) fn accepting(&self) -> Result<(), Failure> {
        match self.phase {
            Phase::Open => Ok(()),
            Phase::Closing | Phase::Stopped => Err(Failure::Closed),
            Phase::Terminated => Err(Failure::Terminated),
            Phase::Broken => Err(self.broken.clone().unwrap_or(Failure::Terminated)),
        }
    }

    /// True when nothing is queued or running.
    pub(crate) fn is_idle(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Queues a chunk and hands out work, or gives the chunk back with the
    /// reason the pool refuses it.
    pub(crate) fn submit(&mut self, rec: ChunkRec) -> Result<(), Box<(Failure, ChunkRec)>> {
        match self.phase {
            Phase::Open => {}
            // A call still pulling lazy inputs when `close` was called
            // submits nothing more: `close` returns once what was submitted
            // before it has finished.
            Phase::Closing | Phase::Stopped => return Err(Box::new((Failure::Closed, rec))),
            Phase::Terminated => return Err(Box::new((Failure::Terminated, rec))),
            Phase::Broken => {
                let failure = self.broken.clone().unwrap_or(Failure::Terminated);
                return Err(Box::new((failure, rec)));
            }
        }
        let id = self.next_chunk;
        self.next_chunk += 1;
        let mut rec = rec;
        rec.seq = id;
        self.chunks.insert(id, rec);
        self.queue.push_back(id);
        self.dispatch();
        Ok(())
    }

    fn cap(&self) -> usize {
        self.limits.concurrency * 2
    }

    /// Gives queued chunks to the workers with the most free capacity.
    /// A routed chunk that must wait for its worker holds back the later
    /// chunks routed there (others may pass it): each worker receives its
    /// routed tasks in the order they were submitted.
    pub(crate) fn dispatch(&mut self) {
        let mut i = 0;
        let mut held_back: Vec<bool> = Vec::new();
        while i < self.queue.len() {
            let cap = self.cap();
            if !self.workers.iter().any(|w| self.takes_work(w, cap)) {
                return;
            }
            let id = self.queue[i];
            let Some(rec) = self.chunks.get(&id).filter(|r| r.remaining > 0) else {
                self.queue.remove(i);
                continue;
            };
            let (isolated, affinity) = (rec.isolated, rec.affinity);
            if affinity.is_some_and(|a| held_back.get(a).copied().unwrap_or(false)) {
                i += 1;
                continue;
            }
            let best = self
                .workers
                .iter()
                .enumerate()
                .filter(|(s, w)| affinity.is_none_or(|a| a == *s) && self.takes_work(w, cap))
                .filter(|(_, w)| !isolated || w.chunks.is_empty())
                .min_by_key(|(_, w)| w.assigned)
                .map(|(s, _)| s);
            // This chunk waits for its worker; later ones may go elsewhere.
            let Some(slot) = best else {
                if let Some(a) = affinity {
                    if held_back.len() <= a {
                        held_back.resize(a + 1, false);
                    }
                    held_back[a] = true;
                }
                i += 1;
                continue;
            };
            self.queue.remove(i);
            self.split_for_recycling(id, slot);
            self.split_to_fit(id, slot);
            self.assign(id, slot);
        }
    }

    /// Whether worker `w` may be given another chunk.
    fn takes_work(&self, w: &WorkerSlot, cap: usize) -> bool {
        w.ready
            && w.alive
            && !w.retiring
            && !w.isolating
            && (w.assigned < cap || w.chunks.len() < 3)
    }

    /// Recycling: never give a worker more tasks than it has left; the rest
    /// of the chunk goes back to the front of the queue.
    fn split_for_recycling(&mut self, id: u64, slot: usize) {
        let Some(max) = self.limits.max_tasks_per_child else {
            return;
        };
        let left = max.saturating_sub(self.workers[slot].lifetime);
        let Some(rec) = self.chunks.get(&id) else {
            return;
        };
        let count = rec.count();
        if u64::from(count) <= left || left == 0 {
            return;
        }
        self.split(id, left as u32);
    }

    /// Balance: while another worker has free slots, a chunk must not push
    /// this worker past its concurrency (its extra tasks would wait while
    /// the other worker idles): the part that does not fit goes back to the
    /// front of the queue.
    fn split_to_fit(&mut self, id: u64, slot: usize) {
        let concurrency = self.limits.concurrency;
        let free = concurrency.saturating_sub(self.workers[slot].assigned);
        let Some(rec) = self.chunks.get(&id) else {
            return;
        };
        let count = rec.count() as usize;
        if free == 0 || count <= free || rec.affinity.is_some() || rec.remaining as usize != count {
            return;
        }
        let others_free = self.workers.iter().enumerate().any(|(s, w)| {
            s != slot && w.ready && w.alive && !w.retiring && w.assigned < concurrency
        });
        if !others_free {
            return;
        }
        self.split(id, free as u32);
    }

    /// Keeps the first `keep` tasks of chunk `id` under its id and puts the
    /// rest back at the front of the queue as a chunk of its own.
    fn split(&mut self, id: u64, keep: u32) {
        let Some(rec) = self.chunks.get(&id) else {
            return;
        };
        let head: Vec<u32> = (0..keep).collect();
        let tail: Vec<u32> = (keep..rec.count()).collect();
        let (head, tail) = (
            rec.subset(&head, rec.attempt),
            rec.subset(&tail, rec.attempt),
        );
        self.chunks.insert(id, head);
        self.requeue(tail);
    }

    /// Gives chunk `id` to the worker in `slot`: writes its RUN frame.
    fn assign(&mut self, id: u64, slot: usize) {
        let Some(rec) = self.chunks.get_mut(&id) else {
            return;
        };
        let worker = &mut self.workers[slot];
        if worker.assigned == 0 {
            worker.last_progress = Instant::now();
        }
        if rec.timeout.is_some() {
            worker.rearm.notify_one();
        }
        worker.isolating = rec.isolated;
        rec.worker = Some(worker.id);
        rec.dispatched = Some(Instant::now());
        let count = rec.count();
        worker.assigned += rec.remaining as usize;
        worker.lifetime += u64::from(count);
        worker.chunks.insert(id);
        let timeout_us = rec
            .timeout
            .map_or(0, |d| d.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
        let (task, payload, reduce) = (rec.task, &rec.payload, &rec.reduce);
        worker.outbox.with(|w| {
            let reducer = reduce.as_ref().map(|(name, value)| (*name, value.as_ref()));
            let start = w.run_header(id, task, timeout_us, count, reducer);
            w.buf().extend_from_slice(payload);
            w.finish(start);
        });
        if let Some(max) = self.limits.max_tasks_per_child
            && worker.lifetime >= max
            && !worker.retiring
        {
            worker.retiring = true;
            tracing::info!(
                slot,
                pid = worker.pid,
                tasks = worker.lifetime,
                "worker retiring: it was given max_tasks_per_child tasks"
            );
        }
    }

    /// Records the outcomes of one RESULTS frame from worker `from`:
    /// `groups` are its groups as (chunk, first index, count, and where the
    /// group's body lies in `frame`). A group that answers tasks of its
    /// chunk still pending, in order, goes to its job whole, unread (the
    /// job decodes it); any other is read outcome by outcome. A malformed
    /// group ends the frame: what came before is delivered, and the error
    /// returned.
    pub(crate) fn on_results(
        &mut self,
        from: WorkerId,
        frame: &Bytes,
        groups: impl Iterator<Item = GroupRange>,
        actions: &mut Actions,
    ) -> Result<(), crate::wire::WireError> {
        // The event being built: its job, where it goes, items, listed.
        let mut current: Option<(u64, JobSink, Vec<Item>, Vec<u64>)> = None;
        let mut finished: Vec<u64> = Vec::new();
        let mut freed = 0usize;
        let mut bad = None;
        'groups: for (chunk, first, count, dense, start, end) in groups {
            let Some(rec) = self
                .chunks
                .get_mut(&chunk)
                .filter(|rec| rec.worker == Some(from))
            else {
                continue;
            };
            if !matches!(&current, Some((job, ..)) if *job == rec.job) {
                send_outcomes(current.take(), frame, actions);
                current = Some((rec.job, rec.sink.clone(), Vec::new(), Vec::new()));
            }
            let Some((_, _, items, listed)) = current.as_mut() else {
                continue;
            };
            let fits = u64::from(first) + u64::from(count) <= u64::from(rec.count())
                && rec.none_done(first, count);
            if dense && !fits {
                // Values alone cannot be told apart here: a worker that
                // answers a task twice, or one it was not given, with
                // them broke the protocol.
                bad = Some(crate::wire::WireError::BadValue(
                    "answered task",
                    u64::from(first),
                ));
                break 'groups;
            }
            if fits && (dense || rec.reduce.is_none()) {
                rec.set_done_range(first, count);
                rec.remaining -= count;
                freed += count as usize;
                let at = match &rec.indices {
                    None => Item::CONSECUTIVE,
                    Some(ix) => {
                        let at = listed.len() as u32;
                        listed.extend_from_slice(&ix[first as usize..(first + count) as usize]);
                        at
                    }
                };
                items.push(Item {
                    index: rec.job_index(first),
                    count,
                    listed: at,
                    partial: false,
                    dense,
                    start,
                    end,
                });
            } else {
                let body = frame.get(start as usize..end as usize).unwrap_or_default();
                let mut reader = crate::wire::Reader::new(body);
                for k in 0..count {
                    let at = start + (body.len() - reader.remaining()) as u32;
                    let (status, data) = match crate::wire::next_outcome(&mut reader) {
                        Ok(o) => o,
                        Err(e) => {
                            bad = Some(e);
                            break 'groups;
                        }
                    };
                    let after = start + (body.len() - reader.remaining()) as u32;
                    let index = first.wrapping_add(k);
                    if status == Status::Partial {
                        // A reduced chunk's folded results: every task not
                        // answered on its own is in it. The index carries
                        // how many.
                        if index != rec.count() || rec.reduce.is_none() || rec.remaining == 0 {
                            continue;
                        }
                        let folded = rec.remaining;
                        for i in 0..rec.count() {
                            rec.set_done(i);
                        }
                        rec.remaining = 0;
                        freed += folded as usize;
                        items.push(Item {
                            index: u64::from(folded),
                            count: 1,
                            listed: Item::CONSECUTIVE,
                            partial: true,
                            dense: false,
                            start: after - data.len() as u32,
                            end: after,
                        });
                    } else {
                        // Only the worker running the chunk now may answer,
                        // once per task: a late answer from an earlier
                        // attempt is dropped.
                        if index >= rec.count() || rec.is_done(index) {
                            continue;
                        }
                        rec.set_done(index);
                        rec.remaining -= 1;
                        freed += 1;
                        items.push(Item {
                            index: rec.job_index(index),
                            count: 1,
                            listed: Item::CONSECUTIVE,
                            partial: false,
                            dense: false,
                            start: at,
                            end: after,
                        });
                    }
                }
            }
            if rec.remaining == 0 && finished.last() != Some(&chunk) {
                finished.push(chunk);
            }
        }
        send_outcomes(current.take(), frame, actions);
        for id in &finished {
            self.chunks.remove(id);
        }
        self.counters.done += freed as u64;
        if let Some(w) = self.workers.get_mut(from.slot).filter(|w| w.id == from) {
            w.last_progress = Instant::now();
            w.assigned = w.assigned.saturating_sub(freed);
            if !finished.is_empty() {
                for c in &finished {
                    w.chunks.remove(c);
                }
                if w.chunks.is_empty() {
                    w.isolating = false;
                }
            }
            if w.retiring && w.chunks.is_empty() && w.alive {
                actions.retire.push(w.id);
            }
        }
        self.dispatch();
        bad.map_or(Ok(()), Err)
    }

    /// When the supervisor of worker `id` must look at it next: when it
    /// must have answered by (it holds tasks with a deadline, and a worker
    /// whose event loop runs answers within the longest of them (soft
    /// timeouts) plus the grace (its watchdog); twice the grace past that,
    /// only a worker that cannot run at all (stopped, frozen) is still
    /// silent), or when to look whether it is stuck in a cancelled task
    /// (see [`CancelWatch`]), whichever comes first.
    pub(crate) fn answer_deadline(&self, id: WorkerId, grace: Duration) -> Option<Instant> {
        let w = self
            .workers
            .get(id.slot)
            .filter(|w| w.id == id && w.alive)?;
        let look = w.cancels.since.and_then(|t| t.checked_add(grace));
        match (look, self.tasks_answer_deadline(w, grace)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When `w` must have answered by, for the deadlines of its tasks.
    fn tasks_answer_deadline(&self, w: &WorkerSlot, grace: Duration) -> Option<Instant> {
        let longest = w
            .chunks
            .iter()
            .filter_map(|c| self.chunks.get(c)?.timeout)
            .max()?;
        // No deadline past the clock's end (a timeout meaning "never").
        w.last_progress
            .checked_add(longest)?
            .checked_add(grace.saturating_mul(2))
    }

    /// Worker `id` has not answered past its deadline: whether it is past
    /// its tasks' answer deadline (`Some`, with the reason to kill it), or
    /// stuck in the poll of a cancelled task, found so at this look and
    /// the one before (`polling`: its beacon now).
    pub(crate) fn overdue(
        &mut self,
        id: WorkerId,
        grace: Duration,
        polling: Option<(u64, u32)>,
    ) -> Option<&'static str> {
        let now = Instant::now();
        let w = self
            .workers
            .get(id.slot)
            .filter(|w| w.id == id && w.alive)?;
        if self
            .tasks_answer_deadline(w, grace)
            .is_some_and(|at| at <= now)
        {
            return Some(
                "the worker stopped answering past its tasks' deadlines plus twice the grace; killed",
            );
        }
        let c = &mut self.workers[id.slot].cancels;
        if c.since
            .and_then(|t| t.checked_add(grace))
            .is_some_and(|t| t <= now)
        {
            let stuck = polling.filter(|(chunk, _)| c.chunks.contains(chunk));
            if stuck.is_some() && stuck == c.seen {
                return Some(
                    "a cancelled task kept the worker's event loop busy past twice the grace without yielding; killed",
                );
            }
            c.seen = stuck;
            c.since = Some(now);
        }
        None
    }

    /// Worker `id` carried out a cancel: once it has carried out all of
    /// them, it is no longer watched for a cancelled task.
    pub(crate) fn on_cancelled(&mut self, id: WorkerId) {
        if let Some(w) = self.workers.get_mut(id.slot).filter(|w| w.id == id) {
            let c = &mut w.cancels;
            c.unanswered = c.unanswered.saturating_sub(1);
            if c.unanswered == 0 {
                w.assigned = w.assigned.saturating_sub(c.held);
                *c = CancelWatch::default();
                self.dispatch();
            }
        }
    }

    /// A worker asked to be replaced (its memory passed the limit): it gets
    /// no new work, and exits once it has finished what it holds. The tasks
    /// it hands back unstarted (`(chunk, from)`: tasks `from..` of `chunk`)
    /// go back to the front of the queue, uncharged.
    pub(crate) fn retire_worker(
        &mut self,
        id: WorkerId,
        rss: u64,
        returned: &[(u64, u32)],
        actions: &mut Actions,
    ) {
        let Some(w) = self
            .workers
            .get_mut(id.slot)
            .filter(|w| w.id == id && w.alive)
        else {
            return;
        };
        if !w.retiring {
            tracing::info!(
                slot = id.slot,
                pid = w.pid,
                rss,
                handed_back = returned.len(),
                "worker retiring: its resident memory passed max_memory_per_child"
            );
        }
        w.retiring = true;
        for &(chunk, from) in returned {
            let Some(rec) = self.chunks.get_mut(&chunk).filter(|r| r.worker == Some(id)) else {
                continue;
            };
            let back: Vec<u32> = (from..rec.count()).filter(|&i| !rec.is_done(i)).collect();
            if back.is_empty() {
                continue;
            }
            let mut tail = rec.subset(&back, rec.attempt);
            tail.isolated = rec.isolated;
            // Any late answer for them from this worker is now dropped.
            for &i in &back {
                rec.set_done(i);
            }
            rec.remaining -= back.len() as u32;
            let finished = rec.remaining == 0;
            let w = &mut self.workers[id.slot];
            w.assigned = w.assigned.saturating_sub(back.len());
            if finished {
                self.chunks.remove(&chunk);
                w.chunks.remove(&chunk);
            }
            self.requeue(tail);
        }
        let w = &mut self.workers[id.slot];
        if w.chunks.is_empty() {
            w.isolating = false;
            actions.retire.push(id);
        }
        self.dispatch();
    }

    /// A worker died (or was killed): its unfinished tasks go back to the
    /// queue, or fail when they used their last attempt.
    ///
    /// `culprit` is the task the worker was polling when it died (from its
    /// beacon): only that task is charged an attempt; the others run again
    /// for free; a worker that died outside any poll charges every task it
    /// held. A worker the parent killed for breaking the protocol was
    /// polling whatever it happened to be polling, so its beacon blames
    /// nobody: its tasks run again one at a time, and only a worker that
    /// breaks the protocol while running one task alone charges that task.
    pub(crate) fn on_death(
        &mut self,
        id: WorkerId,
        exit: &ExitInfo,
        stderr_tail: &str,
        culprit: Option<(u64, u32)>,
        cause: Cause,
        actions: &mut Actions,
    ) {
        let (violated, unresponsive) = (cause == Cause::Violated, cause == Cause::Unresponsive);
        let Some(worker) = self.workers.get_mut(id.slot).filter(|w| w.id == id) else {
            return;
        };
        let was_retiring_clean = worker.retiring && worker.chunks.is_empty();
        worker.alive = false;
        worker.ready = false;
        let chunks = std::mem::take(&mut worker.chunks);
        worker.assigned = 0;
        worker.isolating = false;
        // After a protocol violation the beacon names an innocent bystander
        // at best: the parent, not the task, ended the worker.
        let polled = culprit.filter(|_| !violated);
        // A death inside a task's poll is that task's failure (charged
        // below), not a sign that workers cannot run: it never counts
        // towards the restart intensity.
        let now = Instant::now();
        // Recycled and exited cleanly, or killed because the pool stopped
        // (terminate, drop, a shutdown timeout, a replacement that started
        // as the pool stopped): not a death. A worker that crashed on its
        // own as the pool stopped still did.
        let killed_with_pool =
            !self.phase.takes_workers() && worker.retiring && exit.signal == Some(libc::SIGKILL);
        let retired = killed_with_pool || (was_retiring_clean && exit_is_clean(exit));
        if polled.is_none() && !retired {
            self.deaths.push_back(now);
        }
        let c = &mut self.counters;
        match () {
            () if retired => c.retired += 1,
            () if violated => c.killed_for_protocol += 1,
            () if unresponsive => c.killed_unresponsive += 1,
            () if polled.is_some() => c.died_in_task += 1,
            () => c.died_outside_tasks += 1,
        }
        if retired {
            tracing::debug!(%exit, "worker exited (retired)");
        } else if exit.code == Some(crate::worker::EXIT_STUCK) {
            tracing::warn!(%exit, "worker ended by its watchdog: a task ran past its deadline without yielding");
        } else {
            tracing::warn!(%exit, ?cause, in_task = polled.is_some(), "worker died");
        }
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.limits.restart_window)
        {
            self.deaths.pop_front();
        }
        // Only a culprit among the worker's pending tasks is charged (one
        // that already answered, like a task its watchdog timed out, is
        // not), but any task inside its poll explains the death.
        let culprit = polled.filter(|(c, i)| {
            chunks.contains(c)
                && self
                    .chunks
                    .get(c)
                    .is_some_and(|r| *i < r.count() && !r.is_done(*i))
        });
        let death = Death {
            exit,
            stderr_tail,
            died_in_a_poll: polled.is_some(),
            violated,
            unresponsive,
        };
        // Each goes back in submission order (see `requeue`).
        for chunk in chunks {
            let blamed = culprit.filter(|(c, _)| *c == chunk).map(|(_, i)| i);
            self.requeue_after_crash(chunk, &death, blamed, actions);
        }
        if self.deaths.len() as u32 > self.limits.restart_limit && self.phase.takes_workers() {
            self.restart_storm(exit, stderr_tail, now, actions);
            if !self.phase.takes_workers() {
                return;
            }
        }
        if self.phase.takes_workers() {
            let at = self.respawn_at.filter(|&at| at > now);
            actions.respawn.push((id.slot, at));
        }
        self.dispatch();
    }

    /// Workers died more often than the restart intensity allows: every
    /// pending task fails, then the pool either waits before starting
    /// workers again or stops for good, as its policy says.
    fn restart_storm(
        &mut self,
        last: &ExitInfo,
        stderr_tail: &str,
        now: Instant,
        actions: &mut Actions,
    ) {
        let restarts = self.deaths.len() as u32;
        self.deaths.clear();
        self.counters.storms += 1;
        let (initial, max) = match self.limits.restart_policy {
            RestartPolicy::Stop => {
                tracing::error!(
                    restarts,
                    within = ?self.limits.restart_window,
                    "restart storm: workers died more often than the pool allows; it stops for good"
                );
                let failure = Failure::RestartIntensity {
                    restarts,
                    within: self.limits.restart_window,
                    last: last.clone(),
                    stderr_tail: stderr_tail.to_owned(),
                    backoff: None,
                };
                self.break_pool(failure, actions);
                return;
            }
            RestartPolicy::Backoff { initial, max } => (initial, max),
        };
        // Storms that follow each other double the delay; a calm restart
        // window since the last one starts it over.
        let delay = match self.backoff {
            Some((delay, at)) if now.duration_since(at) < self.limits.restart_window + delay => {
                (delay * 2).min(max)
            }
            _ => initial,
        };
        self.backoff = Some((delay, now));
        self.respawn_at = Some(now + delay);
        tracing::error!(
            restarts,
            within = ?self.limits.restart_window,
            backoff = ?delay,
            "restart storm: workers died more often than the pool allows; pending tasks fail, workers start again after the backoff"
        );
        let failure = Failure::RestartIntensity {
            restarts,
            within: self.limits.restart_window,
            last: last.clone(),
            stderr_tail: stderr_tail.to_owned(),
            backoff: Some(delay),
        };
        self.fail_pending(&failure, actions);
    }

    fn requeue_after_crash(
        &mut self,
        chunk: u64,
        death: &Death<'_>,
        blamed: Option<u32>,
        actions: &mut Actions,
    ) {
        let Death {
            exit,
            stderr_tail,
            died_in_a_poll,
            violated,
            unresponsive,
        } = *death;
        let Some(rec) = self.chunks.remove(&chunk) else {
            return;
        };
        let pending = rec.pending();
        let (charged, free): (Vec<u32>, Vec<u32>) = match blamed {
            // The worker died inside this chunk's task `culprit`: it alone
            // is charged.
            Some(culprit) => pending.iter().partition(|&&i| i == culprit),
            // The worker broke the protocol while running this one task
            // alone: it did it. While running several, nobody is known to
            // be guilty.
            None if violated => {
                if rec.isolated {
                    (pending.clone(), Vec::new())
                } else {
                    (Vec::new(), pending.clone())
                }
            }
            // The worker died inside another task's poll: not their doing.
            None if died_in_a_poll => (Vec::new(), pending.clone()),
            // The worker died outside any poll (killed from outside, say,
            // while its tasks awaited): each task it held was running when
            // its worker died under it, and is charged.
            None => (pending.clone(), Vec::new()),
        };
        self.counters.retried += free.len() as u64;
        // What runs again goes back in submission order (see `requeue`),
        // so a key's tasks still start in that order on the slot's next
        // worker.
        let mut retries: Vec<ChunkRec> = Vec::new();
        let mut retry_charged = !charged.is_empty();
        if retry_charged && unresponsive && blamed.is_some() {
            // Frozen inside this task's poll past its deadline: it timed out.
            let failure = Failure::HardTimeout {
                after: rec.timeout.unwrap_or_default(),
            };
            let indices = charged.iter().map(|&i| rec.job_index(i)).collect();
            self.fail(&rec.sink, indices, failure, actions);
            retry_charged = false;
        } else if retry_charged && rec.attempt >= rec.max_attempts {
            tracing::warn!(
                task = rec.task,
                attempts = rec.attempt,
                tasks = charged.len(),
                "task failed: its worker died under it on every attempt"
            );
            let failure = Failure::Crash {
                task: rec.task,
                exit: exit.clone(),
                attempts: rec.attempt,
                stderr_tail: stderr_tail.to_owned(),
            };
            let indices = charged.iter().map(|&i| rec.job_index(i)).collect();
            self.fail(&rec.sink, indices, failure, actions);
            retry_charged = false;
        } else if retry_charged {
            self.counters.retried += charged.len() as u64;
        }
        // Runs of pending tasks alike, charged or not (after a protocol
        // violation, every task alone).
        retries.extend(
            pending
                .chunk_by(|a, b| !violated && charged.contains(a) == charged.contains(b))
                .filter_map(|run| {
                    let run_charged = run.first().is_some_and(|i| charged.contains(i));
                    Self::retry(&rec, run, run_charged, retry_charged, violated)
                }),
        );
        for retry in retries {
            self.requeue(retry);
        }
    }

    /// A run of a dead worker's pending tasks, to run again (`None`: not
    /// run again: charged tasks that failed for good). After a protocol
    /// violation, every task runs alone: any of them may have written the
    /// bad bytes, so each runs again alone, uncharged, and the one that did
    /// it is found and charged while the others finish; a task found guilty
    /// keeps running alone.
    fn retry(
        rec: &ChunkRec,
        run: &[u32],
        charged: bool,
        retry_charged: bool,
        violated: bool,
    ) -> Option<ChunkRec> {
        if run.is_empty() || (charged && !retry_charged) {
            return None;
        }
        let attempt = if charged {
            rec.attempt + 1
        } else {
            rec.attempt
        };
        let mut retry = rec.subset(run, attempt);
        retry.isolated = violated;
        Some(retry)
    }

    /// Ends tasks of a job without an outcome from a worker.
    fn fail(&mut self, sink: &JobSink, indices: Vec<u64>, failure: Failure, actions: &mut Actions) {
        self.counters.failed += indices.len() as u64;
        actions
            .events
            .push((sink.clone(), Event::Failed { indices, failure }));
    }

    /// Ends tasks `which` (all when `None`) of chunk `chunk`, run by
    /// `from`, with the failure `failure` makes from the chunk's task name:
    /// a cluster host reported they ended without an outcome, or no host
    /// finished them. Tasks already answered are left alone.
    #[cfg(feature = "cluster")]
    pub(crate) fn fail_tasks(
        &mut self,
        from: WorkerId,
        chunk: u64,
        which: Option<&[u32]>,
        failure: impl FnOnce(&'static str) -> Failure,
        actions: &mut Actions,
    ) {
        let Some(rec) = self
            .chunks
            .get_mut(&chunk)
            .filter(|r| r.worker == Some(from))
        else {
            return;
        };
        let which: Vec<u32> = match which {
            Some(w) => w.to_vec(),
            None => (0..rec.count()).collect(),
        };
        let mut indices = Vec::with_capacity(which.len());
        for i in which {
            if i < rec.count() && !rec.is_done(i) {
                rec.set_done(i);
                rec.remaining -= 1;
                indices.push(rec.job_index(i));
            }
        }
        if indices.is_empty() {
            return;
        }
        let (sink, failure, finished) = (rec.sink.clone(), failure(rec.task), rec.remaining == 0);
        if finished {
            self.chunks.remove(&chunk);
        }
        if let Some(w) = self.workers.get_mut(from.slot).filter(|w| w.id == from) {
            w.assigned = w.assigned.saturating_sub(indices.len());
            if finished {
                w.chunks.remove(&chunk);
                if w.chunks.is_empty() {
                    w.isolating = false;
                }
            }
        }
        self.fail(&sink, indices, failure, actions);
        self.dispatch();
    }

    /// A chunk of several tasks that no cluster host finished within its
    /// deliveries (hosts died under it): its unanswered tasks go back to
    /// the front of the queue one per chunk, as locally after a crash
    /// nobody could be blamed for, so that only a task that kills its
    /// hosts fails. `false` (nothing done) for a chunk of one task.
    #[cfg(feature = "cluster")]
    pub(crate) fn isolate_exhausted(&mut self, from: WorkerId, chunk: u64) -> bool {
        let Some(rec) = self.chunks.get(&chunk).filter(|r| r.worker == Some(from)) else {
            return true;
        };
        if rec.count() <= 1 {
            return false;
        }
        let pending = rec.pending();
        // Isolated: a lane with one of these publishes nothing else until
        // it is answered, so the task runs without the caller's other work.
        let singles: Vec<ChunkRec> = pending
            .iter()
            .map(|&i| {
                let mut single = rec.subset(&[i], rec.attempt);
                single.isolated = true;
                single
            })
            .collect();
        self.chunks.remove(&chunk);
        if let Some(w) = self.workers.get_mut(from.slot).filter(|w| w.id == from) {
            w.assigned = w.assigned.saturating_sub(pending.len());
            w.chunks.remove(&chunk);
            if w.chunks.is_empty() {
                w.isolating = false;
            }
        }
        self.counters.retried += singles.len() as u64;
        for single in singles.into_iter().rev() {
            self.requeue(single);
        }
        self.dispatch();
        true
    }

    /// The tasks of `chunk` still without an outcome, by index in the chunk
    /// (none for a chunk that ended or is unknown): what a cluster host
    /// that got the chunk again still has to run.
    #[cfg(feature = "cluster")]
    pub(crate) fn still_pending(&self, chunk: u64) -> Vec<u32> {
        self.chunks
            .get(&chunk)
            .map_or_else(Vec::new, ChunkRec::pending)
    }

    /// Puts a chunk that runs again (after a death, handed back by a
    /// retiring worker, or split off) back in the queue ahead of every
    /// chunk submitted after it: whichever path sends tasks back, and in
    /// whatever order, a key's routed tasks still start in the order they
    /// were submitted. Requeued chunks are old, so the place is found near
    /// the front.
    fn requeue(&mut self, rec: ChunkRec) {
        let key = rec.submission_order();
        let at = self
            .queue
            .iter()
            .position(|id| {
                self.chunks
                    .get(id)
                    .is_none_or(|r| r.submission_order() > key)
            })
            .unwrap_or(self.queue.len());
        let id = self.next_chunk;
        self.next_chunk += 1;
        self.chunks.insert(id, rec);
        self.queue.insert(at, id);
    }

    /// Fails everything pending with `failure` and stops taking work.
    pub(crate) fn break_pool(&mut self, failure: Failure, actions: &mut Actions) {
        self.phase = if matches!(failure, Failure::Terminated) {
            Phase::Terminated
        } else {
            Phase::Broken
        };
        self.broken = Some(failure.clone());
        actions.wake.extend(self.take_input_waiters());
        for w in &mut self.workers {
            w.retiring = true;
        }
        self.fail_pending(&failure, actions);
    }

    /// Ends every queued and running task with `failure`; workers are told
    /// to drop the tasks they run, and retiring ones to exit.
    fn fail_pending(&mut self, failure: &Failure, actions: &mut Actions) {
        self.queue.clear();
        let chunks: Vec<ChunkRec> = self.chunks.drain().map(|(_, rec)| rec).collect();
        for rec in chunks {
            let indices: Vec<u64> = rec.pending().iter().map(|&i| rec.job_index(i)).collect();
            if !indices.is_empty() {
                self.fail(&rec.sink, indices, failure.clone(), actions);
            }
        }
        for w in &mut self.workers {
            let running: Vec<u64> = w.chunks.iter().copied().collect();
            if w.alive && !running.is_empty() {
                w.cancel(&running, 0, false);
            }
            w.chunks.clear();
            w.assigned = 0;
            w.isolating = false;
            if w.alive && w.retiring {
                actions.retire.push(w.id);
            }
        }
    }

    /// Drops a job's queued chunks and tells workers to drop its running
    /// ones.
    pub(crate) fn cancel_job(&mut self, job: u64) {
        let ids: Vec<u64> = self
            .chunks
            .iter()
            .filter(|(_, r)| r.job == job)
            .map(|(&id, _)| id)
            .collect();
        if ids.is_empty() {
            return;
        }
        // Per worker: the chunks it drops, and their tasks it still holds
        // (charged until it confirms).
        let mut per_worker: HashMap<usize, (Vec<u64>, usize)> = HashMap::new();
        for id in &ids {
            if let Some(rec) = self.chunks.remove(id)
                && let Some(wid) = rec.worker
                && let Some(w) = self.workers.get_mut(wid.slot).filter(|w| w.id == wid)
            {
                w.chunks.remove(id);
                if w.chunks.is_empty() {
                    w.isolating = false;
                }
                let entry = per_worker.entry(wid.slot).or_default();
                entry.0.push(*id);
                entry.1 += rec.remaining as usize;
            }
        }
        let chunks = &self.chunks;
        self.queue.retain(|id| chunks.contains_key(id));
        for (slot, (chunks, held)) in per_worker {
            if let Some(w) = self.workers.get_mut(slot).filter(|w| w.alive) {
                // A retiring worker left with nothing to finish exits now,
                // so its replacement can start.
                let exit = w.retiring && w.chunks.is_empty();
                w.cancel(&chunks, held, exit);
            }
        }
        self.dispatch();
    }
}

/// Why a worker's supervisor stopped reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// It closed its channel: it exited or was killed.
    Exited,
    /// The parent killed it for breaking the protocol.
    Violated,
    /// The parent killed it for not answering past its tasks' deadlines.
    Unresponsive,
}

/// What is known about a worker's death.
#[derive(Clone, Copy)]
struct Death<'a> {
    exit: &'a ExitInfo,
    stderr_tail: &'a str,
    /// The worker died inside a task's poll (of any chunk, finished or not).
    died_in_a_poll: bool,
    /// The parent killed it for breaking the protocol.
    violated: bool,
    /// The parent killed it for not answering past its tasks' deadlines.
    unresponsive: bool,
}

/// A set of chunk ids.
pub(crate) type ChunkSet = IdSet<u64>;

fn exit_is_clean(exit: &ExitInfo) -> bool {
    exit.code == Some(0) && exit.signal.is_none()
}

#[cfg(test)]
mod tests;
