//! The parent side: [`Pool`], its builder, and the machinery behind them.
//!
//! - `scheduler`: the bookkeeping of chunks and workers (one mutex);
//! - `supervisor`: one task per worker process (handshake, outcomes, death);
//! - `job`: the caller's side of a call (lazy inputs, window, typed results).
//!
//! Starting a worker process is `crate::spawn`, shared with `Process`.

mod events;
mod job;
mod scheduler;
mod supervisor;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::Notify;

#[cfg(feature = "cluster")]
pub(crate) use self::events::channel as job_events;
pub(crate) use self::job::decode_outcome;
pub use self::job::{
    Apply, Collect, Input, IterInput, Map, MapReduce, MapUnordered, Partials, StreamInput,
};
pub use self::scheduler::RestartPolicy;
#[cfg(feature = "cluster")]
pub(crate) use self::scheduler::{
    Actions as ClusterActions, Cause, ChunkRec, Event, Failure as ClusterFailure, Outbox, WorkerId,
    WorkerSlot, group_ranges,
};
use self::scheduler::{Actions, Core, Failure, Limits, Phase};
use crate::error::Error;
use crate::reduce::Reducer;
use crate::task::Task;

/// Everything the builder settles; fixed for the pool's life.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) concurrency: usize,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) initializer: Option<(&'static str, Vec<u8>)>,
    pub(crate) max_attempts: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) timeout_grace: Duration,
    pub(crate) chunk_size: Option<usize>,
    pub(crate) max_frame: usize,
    pub(crate) restart_limit: u32,
    pub(crate) restart_window: Duration,
    pub(crate) restart_policy: RestartPolicy,
    pub(crate) startup_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) capture_stderr: bool,
    pub(crate) worker_executable: Option<std::path::PathBuf>,
    /// Run the tasks on cluster hosts instead of local workers.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: Option<crate::cluster::ClusterConfig>,
}

/// The state shared by the pool handle, its calls and its supervisors.
pub(crate) struct Inner {
    pub(crate) config: Config,
    core: Mutex<Core>,
    pub(crate) lifeline: crate::spawn::Lifeline,
    pub(crate) runtime: tokio::runtime::Handle,
    /// Woken whenever a worker process has ended.
    pub(crate) worker_exited: Notify,
    /// Woken whenever work finished or failed (for `close`).
    progress: Notify,
    /// The cluster connection, when the pool's workers are cluster lanes.
    #[cfg(feature = "cluster")]
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Caller>>,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // The core's invariants hold between statements that can panic, so
        // a poisoned lock's data is still consistent.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Carries out what a core method asked for, outside the lock.
    pub(crate) fn after(self: &Arc<Self>, actions: Actions) {
        let (respawn, retire) = actions.deliver();
        for (slot, at) in respawn {
            tracing::debug!(
                slot,
                delay = ?at.map(|at| at.saturating_duration_since(std::time::Instant::now())),
                "starting a replacement worker"
            );
            match at {
                None => self.respawn(slot),
                Some(at) => {
                    // After a restart storm: wait, holding no strong
                    // reference, so a pool dropped meanwhile just goes.
                    let weak = Arc::downgrade(self);
                    self.runtime.spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        if let Some(inner) = weak.upgrade() {
                            inner.respawn(slot);
                        }
                    });
                }
            }
        }
        if !retire.is_empty() {
            let core = self.lock();
            for id in retire {
                if let Some(w) = core.workers.get(id.slot).filter(|w| w.id == id) {
                    supervisor::retire(&w.outbox);
                }
            }
        }
        self.progress.notify_waiters();
    }

    /// Starts a fresh worker in `slot` (when the pool still takes workers).
    fn respawn(self: &Arc<Self>, slot: usize) {
        if let Err(e) = supervisor::launch(self, slot, None) {
            let mut actions = Actions::default();
            self.lock()
                .break_pool(Failure::Setup(e.to_string()), &mut actions);
            actions.deliver();
        }
    }

    /// Where the frame cap comes from, when not from the builder: a cluster
    /// pool's frames must fit in the nats-server's messages.
    pub(crate) fn frame_cap_origin(&self) -> String {
        #[cfg(feature = "cluster")]
        if let Some(caller) = self.cluster.get() {
            return format!(
                " (the nats-server's max_payload of {} bytes, less room for the chunk's envelope)",
                caller.max_payload()
            );
        }
        String::new()
    }

    /// Kills every live worker at once.
    fn kill_all(&self, core: &Core) {
        for w in core.workers.iter().filter(|w| w.alive) {
            w.process.kill();
        }
    }
}

/// What [`Pool::stats`] reports: counters since the pool started, and the
/// state at this moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Worker processes running now (on a cluster pool, its lanes: see
    /// [`PoolStats::hosts_alive`] for the hosts).
    pub workers_alive: usize,
    /// Worker processes started, replacements included.
    pub workers_spawned: u64,
    /// Workers that exited cleanly when recycled (`max_tasks_per_child`,
    /// `max_memory_per_child`), or ended because the pool stopped (`close`,
    /// `terminate`, drop).
    pub workers_retired: u64,
    /// Workers that died inside a task's poll (a crash that task is charged
    /// for: abort, segfault, `exit()`, a hard timeout).
    pub workers_died_in_task: u64,
    /// Workers that died outside any task (killed from outside, the OOM
    /// killer while tasks waited, a crash at start-up).
    pub workers_died_outside_tasks: u64,
    /// Workers the pool killed for breaking the protocol.
    pub workers_killed_for_protocol: u64,
    /// Workers the pool killed for not answering past their tasks'
    /// deadlines, or found stuck in the poll of a cancelled task.
    pub workers_killed_unresponsive: u64,
    /// Tasks waiting for a worker now.
    pub tasks_queued: u64,
    /// Tasks given to workers now.
    pub tasks_running: u64,
    /// Tasks whose outcome (a value or the task's own error, a panic, a
    /// soft timeout) came back from a worker.
    pub tasks_done: u64,
    /// Task runs started again because a worker died under them.
    pub tasks_retried: u64,
    /// Tasks that ended without an outcome from a worker: crashed on their
    /// last attempt, hard timeouts the pool enforced, failed by a restart
    /// storm, terminated.
    pub tasks_failed: u64,
    /// Deaths no task explains within the restart window now (the storm
    /// threshold is `restart_intensity`).
    pub restarts_in_window: usize,
    /// Restart storms so far.
    pub restart_storms: u64,
    /// Hosts serving a cluster pool now, as its host registry lists them
    /// (each host's entry lives `ack_wait` past its last heartbeat); 0 for
    /// a local pool. [`Pool::hosts`] describes each one.
    pub hosts_alive: usize,
}

/// A pool of worker processes, each running many async tasks at once on its
/// own single-threaded event loop.
///
/// Build one with [`Pool::builder`]. Calls take `&self`, so share the pool
/// by reference or in an `Arc`. Dropping the pool kills its workers at once;
/// call [`close`](Pool::close) first to let queued work finish.
///
/// ```
/// #[multiloop::task]
/// async fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// # fn main() -> Result<(), multiloop::Error> {
/// # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// # rt.block_on(async {
/// let pool = multiloop::Pool::builder().processes(2).build().await?;
/// assert_eq!(pool.apply(double, 21).await?, 42);
/// assert_eq!(pool.map(double, 1..=3).await?, vec![2, 4, 6]);
/// pool.close().await
/// # })
/// # }
/// ```
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// The longest wait any setting holds: a longer one (`Duration::MAX` for
/// "never", say) means the same, and no deadline computed from it can
/// overflow the clock.
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The largest fixed chunk a pool or a call takes.
pub(crate) const MAX_CHUNK_SIZE: usize = 1 << 20;

/// Settings for a [`Pool`]; every one has a default.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    config: Config,
    initializer_error: Option<Error>,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PoolBuilder {
            config: Config {
                processes: cores,
                concurrency: 16,
                max_tasks_per_child: None,
                max_memory_per_child: None,
                initializer: None,
                max_attempts: 3,
                timeout: None,
                timeout_grace: Duration::from_millis(500),
                chunk_size: None,
                max_frame: crate::wire::DEFAULT_MAX_FRAME,
                restart_limit: 0,
                restart_window: Duration::from_secs(10),
                restart_policy: RestartPolicy::default(),
                startup_timeout: Duration::from_secs(20),
                shutdown_timeout: Duration::from_secs(10),
                capture_stderr: true,
                worker_executable: None,
                #[cfg(feature = "cluster")]
                cluster: None,
            },
            initializer_error: None,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes (default: the number of cores).
    pub fn processes(mut self, n: usize) -> Self {
        self.config.processes = n;
        self
    }

    /// How many tasks each worker runs at once on its event loop
    /// (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// Replaces a worker after it was given `n` tasks; the tasks it holds
    /// finish first (default: never).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.config.max_tasks_per_child = Some(n);
        self
    }

    /// Replaces a worker whose resident memory passes `bytes`: it takes no
    /// new work, finishes the tasks it holds, and a fresh worker takes its
    /// place (default: no limit). Checked by the worker every few
    /// milliseconds while it is busy.
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.config.max_memory_per_child = Some(bytes);
        self
    }

    /// A task to run once in each worker before any other, typically to
    /// build worker-local state with [`set_worker_state`](crate::set_worker_state).
    /// If it fails, the worker does not start and [`build`](PoolBuilder::build)
    /// reports why.
    pub fn initializer<T: Task>(mut self, task: T, args: T::Args) -> Self {
        let _ = task;
        let mut buf = Vec::new();
        match crate::wire::append_value(&mut buf, &args) {
            Ok(()) => self.config.initializer = Some((T::NAME, buf)),
            Err(e) => {
                self.initializer_error = Some(Error::serialization(
                    "initializer arguments",
                    std::any::type_name::<T::Args>(),
                    e,
                ))
            }
        }
        self
    }

    /// How many times a task may run when workers die under it
    /// (default 3). A task still failing after that ends with a crash error.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n;
        self
    }

    /// A default deadline for every task (default: none).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.config.timeout = Some(limit.min(LONGEST_WAIT));
        self
    }

    /// How long past its deadline a task may keep its worker's event loop
    /// busy (a CPU loop, a blocking call) before the worker is ended and
    /// replaced (default 500 ms). The task ends with a timeout error; the
    /// worker's other tasks run again elsewhere without losing an attempt.
    /// A cancelled task is at its deadline: a worker found twice, a grace
    /// apart, in the same poll of a cancelled task is replaced the same
    /// way.
    pub fn timeout_grace(mut self, grace: Duration) -> Self {
        self.config.timeout_grace = grace.min(LONGEST_WAIT);
        self
    }

    /// Sends tasks in chunks of exactly `n` instead of sizing chunks from
    /// the measured throughput (default: adaptive); `n` is 1 to 1,048,576.
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.config.chunk_size = Some(n);
        self
    }

    /// The largest frame either side accepts (default 64 MiB). A task whose
    /// arguments or result do not fit fails with a serialization error.
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.config.max_frame = n;
        self
    }

    /// A restart storm is more than `restarts` worker deaths within
    /// `within` that no task explains (default: `max(8, 4 × processes)`
    /// within 10 seconds). Deaths inside a task's poll (a poison task) are
    /// that task's failure and never count. In a storm every pending task
    /// fails with an error naming the cause; what follows is the
    /// [`restart_policy`](PoolBuilder::restart_policy).
    pub fn restart_intensity(mut self, restarts: u32, within: Duration) -> Self {
        self.config.restart_limit = restarts;
        self.config.restart_window = within.min(LONGEST_WAIT);
        self
    }

    /// What the pool does after a restart storm (default: back off from
    /// 100 ms up to 30 s and serve again; see [`RestartPolicy`]).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.config.restart_policy = policy;
        self
    }

    /// Starts workers from another executable instead of this one (default:
    /// this process's own, `/proc/self/exe`). It must call
    /// link multiloop and register the same tasks: a worker whose task
    /// registry differs is refused at the handshake.
    pub fn worker_executable(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.worker_executable = Some(path.into());
        self
    }

    /// Runs the pool's tasks on the hosts of a cluster instead of local
    /// worker processes; every call is the same. See [`crate::cluster`]:
    /// there, [`processes`](PoolBuilder::processes) is the number of
    /// lanes to the cluster and [`concurrency`](PoolBuilder::concurrency)
    /// the tasks in flight per lane.
    #[cfg(feature = "cluster")]
    pub fn cluster(mut self, cluster: crate::cluster::ClusterConfig) -> Self {
        self.config.cluster = Some(cluster);
        self
    }

    /// How long a new worker may take to answer the handshake (default 20 s).
    pub fn startup_timeout(mut self, limit: Duration) -> Self {
        self.config.startup_timeout = limit.min(LONGEST_WAIT);
        self
    }

    /// How long [`close`](Pool::close) and [`join`](Pool::join) let workers
    /// take to exit once asked before killing them (default 10 s). Work
    /// submitted before `close` is waited for in full first; this bounds only
    /// the workers' exit (a cancelled task that never yields, say).
    pub fn shutdown_timeout(mut self, limit: Duration) -> Self {
        self.config.shutdown_timeout = limit.min(LONGEST_WAIT);
        self
    }

    /// Starts the workers and waits until each one has run its initializer.
    ///
    /// Must be called inside a tokio runtime; the pool's supervisors run on
    /// it.
    pub async fn build(mut self) -> Result<Pool, Error> {
        if let Some(e) = self.initializer_error.take() {
            return Err(e);
        }
        let c = &mut self.config;
        if c.processes == 0 {
            return Err(Error::usage("processes must be at least 1"));
        }
        if c.concurrency == 0 {
            return Err(Error::usage("concurrency must be at least 1"));
        }
        if c.concurrency > u32::MAX as usize {
            return Err(Error::usage("concurrency must fit in 32 bits"));
        }
        if c.max_memory_per_child == Some(0) {
            return Err(Error::usage("max_memory_per_child must be at least 1 byte"));
        }
        if c.max_tasks_per_child == Some(0) {
            return Err(Error::usage("max_tasks_per_child must be at least 1"));
        }
        if c.max_attempts == 0 {
            return Err(Error::usage("max_attempts must be at least 1"));
        }
        if c.chunk_size == Some(0) {
            return Err(Error::usage("chunk_size must be at least 1"));
        }
        if c.chunk_size.is_some_and(|n| n > MAX_CHUNK_SIZE) {
            return Err(Error::usage(format!(
                "chunk_size must be at most {MAX_CHUNK_SIZE}"
            )));
        }
        if c.timeout == Some(Duration::ZERO) {
            return Err(Error::usage(
                "timeout must be more than zero (leave it unset for no deadline)",
            ));
        }
        if c.max_frame < 1024 || c.max_frame > u32::MAX as usize {
            return Err(Error::usage(
                "max_frame_bytes must be between 1 KiB and 4 GiB",
            ));
        }
        if c.restart_limit == 0 {
            c.restart_limit = (4 * c.processes).max(8) as u32;
        }
        let registry = crate::worker::Registry::get();
        if let Some(name) = registry.duplicates.first() {
            return Err(Error::usage(format!(
                "two tasks are registered under the name `{name}`"
            )));
        }
        if let Some((name, _)) = &c.initializer
            && registry.lookup(name).is_none()
        {
            return Err(Error::usage(format!(
                "the initializer `{name}` is not a registered task"
            )));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::usage("Pool::build must be called inside a tokio runtime"))?;
        let lifeline = crate::spawn::Lifeline::new()
            .map_err(|e| Error::io("could not create the lifeline pipe", e))?;
        let limits = Limits {
            concurrency: c.concurrency,
            max_tasks_per_child: c.max_tasks_per_child,
            restart_limit: c.restart_limit,
            restart_window: c.restart_window,
            restart_policy: c.restart_policy,
        };
        #[cfg(feature = "cluster")]
        let cluster = match self.config.cluster.clone() {
            Some(cluster) => {
                Some(crate::cluster::Caller::connect(cluster, &mut self.config).await?)
            }
            None => None,
        };
        let inner = Arc::new(Inner {
            config: self.config,
            core: Mutex::new(Core::new(limits)),
            lifeline,
            runtime,
            worker_exited: Notify::new(),
            progress: Notify::new(),
            #[cfg(feature = "cluster")]
            cluster: std::sync::OnceLock::new(),
        });
        let pool = Pool { inner };
        #[cfg(feature = "cluster")]
        if let Some(caller) = cluster {
            caller.start(&pool.inner);
            return Ok(pool);
        }
        let mut waits = Vec::with_capacity(pool.inner.config.processes);
        for slot in 0..pool.inner.config.processes {
            let (tx, rx) = tokio::sync::oneshot::channel();
            supervisor::launch(&pool.inner, slot, Some(tx))?;
            waits.push(rx);
        }
        let limit = pool.inner.config.startup_timeout;
        for rx in waits {
            match tokio::time::timeout(limit, rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => {
                    return Err(Error::protocol(
                        "a worker's supervisor ended during startup",
                    ));
                }
                Err(_) => {
                    return Err(Error::protocol(format!(
                        "a worker did not answer the handshake within {limit:?}"
                    )));
                }
            }
        }
        Ok(pool)
    }
}

impl Pool {
    /// The shared state, for a cluster host running chunks on this pool.
    #[cfg(feature = "cluster")]
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// A builder with the defaults: one process per core, 16 tasks at once
    /// per process, 3 attempts per task, adaptive chunks.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Runs one task and returns its value.
    ///
    /// Dropping the future before it completes cancels the task.
    pub fn apply<T: Task>(&self, task: T, args: T::Args) -> Apply<T> {
        let _ = task;
        Apply::new(job::Job::new(
            Arc::clone(&self.inner),
            IterInput(Some(args).into_iter()),
        ))
    }

    /// Runs the task once per input; results come in input order.
    ///
    /// Inputs are pulled lazily, a chunk at a time, only as workers free
    /// up: an iterator of any length (even endless) keeps memory flat. Await
    /// the result for a `Vec`, or poll it as a [`Stream`] to handle each
    /// result as soon as it and all before it are ready.
    pub fn map<T, I>(&self, task: T, inputs: I) -> Map<T, IterInput<I::IntoIter>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let _ = task;
        Map::new(job::Job::new(
            Arc::clone(&self.inner),
            IterInput(inputs.into_iter()),
        ))
    }

    /// Like [`map`](Pool::map), with the inputs taken from a stream (which
    /// must be `Unpin`; wrap it in `Box::pin` if it is not).
    pub fn map_stream<T, S>(&self, task: T, inputs: S) -> Map<T, StreamInput<S>>
    where
        T: Task,
        S: Stream<Item = T::Args> + Unpin,
    {
        let _ = task;
        Map::new(job::Job::new(Arc::clone(&self.inner), StreamInput(inputs)))
    }

    /// [`map`](Pool::map) for tasks of several arguments: each input is the
    /// tuple of one call's arguments. (A task's `Args` already is that
    /// tuple, so this is `map` under the name users of `multiprocessing`
    /// look for.)
    pub fn starmap<T, I>(&self, task: T, inputs: I) -> Map<T, IterInput<I::IntoIter>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        self.map(task, inputs)
    }

    /// Runs the task once per input and yields `(input index, result)` as
    /// tasks complete, in whatever order that is.
    pub fn map_unordered<T, I>(&self, task: T, inputs: I) -> MapUnordered<T, IterInput<I::IntoIter>>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
    {
        let _ = task;
        MapUnordered::new(job::Job::new(
            Arc::clone(&self.inner),
            IterInput(inputs.into_iter()),
        ))
    }

    /// Like [`map_unordered`](Pool::map_unordered), with the inputs taken
    /// from a stream.
    pub fn map_unordered_stream<T, S>(&self, task: T, inputs: S) -> MapUnordered<T, StreamInput<S>>
    where
        T: Task,
        S: Stream<Item = T::Args> + Unpin,
    {
        let _ = task;
        MapUnordered::new(job::Job::new(Arc::clone(&self.inner), StreamInput(inputs)))
    }

    /// Runs the task once per input and folds the results with `reducer`:
    /// each worker folds the results of its chunks and sends back one
    /// partial per chunk; the parent merges the partials.
    ///
    /// Failed tasks are not folded: they are listed, with their input
    /// index, in [`Reduced::errors`](crate::Reduced). A worker that dies
    /// loses only the partial of the chunk it was running, and that chunk
    /// runs again: nothing is folded twice.
    ///
    /// ```
    /// #[multiloop::task]
    /// async fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), multiloop::Error> {
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let pool = multiloop::Pool::builder().processes(2).build().await?;
    /// let sum = pool.map_reduce(square, 1..=100, multiloop::reduce::Sum::new()).await?;
    /// assert_eq!(sum.value, 338_350);
    /// assert!(sum.errors.is_empty());
    /// # pool.close().await
    /// # })
    /// # }
    /// ```
    pub fn map_reduce<T, I, R>(
        &self,
        task: T,
        inputs: I,
        reducer: R,
    ) -> MapReduce<T, IterInput<I::IntoIter>, R>
    where
        T: Task,
        I: IntoIterator<Item = T::Args>,
        R: Reducer<Item = T::Output>,
    {
        let _ = task;
        MapReduce::new(
            job::Job::new(Arc::clone(&self.inner), IterInput(inputs.into_iter())),
            reducer,
        )
    }

    /// Like [`map_reduce`](Pool::map_reduce), with the inputs taken from a
    /// stream.
    pub fn map_reduce_stream<T, S, R>(
        &self,
        task: T,
        inputs: S,
        reducer: R,
    ) -> MapReduce<T, StreamInput<S>, R>
    where
        T: Task,
        S: Stream<Item = T::Args> + Unpin,
        R: Reducer<Item = T::Output>,
    {
        let _ = task;
        MapReduce::new(
            job::Job::new(Arc::clone(&self.inner), StreamInput(inputs)),
            reducer,
        )
    }

    /// A snapshot of the pool's counters, cheap enough to take on every
    /// scrape of a service's metrics.
    ///
    /// ```
    /// #[multiloop::task]
    /// async fn inc(x: u64) -> u64 {
    ///     x + 1
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), multiloop::Error> {
    /// let pool = multiloop::Pool::builder().processes(2).build().await?;
    /// pool.map(inc, 0..100).await?;
    /// let stats = pool.stats();
    /// assert_eq!(stats.workers_alive, 2);
    /// assert_eq!(stats.tasks_done, 100);
    /// # pool.close().await
    /// # }
    /// ```
    pub fn stats(&self) -> PoolStats {
        let core = self.inner.lock();
        let c = &core.counters;
        let (tasks_queued, tasks_running) = core.tasks_queued_and_running();
        PoolStats {
            workers_alive: core.workers.iter().filter(|w| w.alive).count(),
            workers_spawned: c.spawned,
            workers_retired: c.retired,
            workers_died_in_task: c.died_in_task,
            workers_died_outside_tasks: c.died_outside_tasks,
            workers_killed_for_protocol: c.killed_for_protocol,
            workers_killed_unresponsive: c.killed_unresponsive,
            tasks_queued,
            tasks_running,
            tasks_done: c.done,
            tasks_retried: c.retried,
            tasks_failed: c.failed,
            restarts_in_window: core.restarts_in_window(),
            restart_storms: c.storms,
            hosts_alive: self.hosts_alive(),
        }
    }

    #[cfg(feature = "cluster")]
    fn hosts_alive(&self) -> usize {
        self.inner.cluster.get().map_or(0, |c| c.hosts_alive())
    }

    #[cfg(not(feature = "cluster"))]
    fn hosts_alive(&self) -> usize {
        0
    }

    /// Waits until the pool's statistics satisfy `until` (asked now and
    /// each time the pool's state changes: a worker starts or dies, tasks
    /// end) and returns them: say, until a killed worker has been noticed
    /// and replaced. Wrap it in a timeout to bound the wait.
    ///
    /// ```
    /// # multiloop::init_before_main!();
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), multiloop::Error> {
    /// # let pool = multiloop::Pool::builder().processes(2).build().await?;
    /// let pid = pool.worker_pids()[0];
    /// // SAFETY: kill has no memory-safety preconditions.
    /// unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    /// let stats = pool
    ///     .wait_for_stats(|s| s.workers_spawned == 3 && s.workers_alive == 2)
    ///     .await;
    /// assert_eq!(stats.workers_died_outside_tasks, 1);
    /// assert!(!pool.worker_pids().contains(&pid));
    /// # pool.close().await
    /// # }
    /// ```
    pub async fn wait_for_stats(&self, mut until: impl FnMut(&PoolStats) -> bool) -> PoolStats {
        loop {
            let changed = self.inner.progress.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let stats = self.stats();
            if until(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    /// The hosts serving a cluster pool now, as their last heartbeats
    /// describe them (empty for a local pool). The list follows the host
    /// registry as it changes: a host appears with its first heartbeat and
    /// drops out `ack_wait` after its last.
    #[cfg(feature = "cluster")]
    pub fn hosts(&self) -> Vec<crate::cluster::HostStats> {
        self.inner
            .cluster
            .get()
            .map_or_else(Vec::new, |c| c.hosts())
    }

    /// Waits until the hosts serving a cluster pool satisfy `until` (called
    /// with the registry's list each time it changes), and returns that
    /// list: say, until at least three hosts joined before starting a big
    /// map. Wrap it in a timeout to bound the wait.
    ///
    /// ```no_run
    /// # async fn run(pool: multiloop::Pool) -> Result<(), multiloop::Error> {
    /// let hosts = pool.wait_for_hosts(|hosts| hosts.len() >= 3).await?;
    /// for h in hosts {
    ///     println!("{} (pid {}): {} tasks done", h.hostname, h.pid, h.tasks_done);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// A usage error for a local pool.
    #[cfg(feature = "cluster")]
    pub async fn wait_for_hosts(
        &self,
        until: impl FnMut(&[crate::cluster::HostStats]) -> bool,
    ) -> Result<Vec<crate::cluster::HostStats>, Error> {
        match self.inner.cluster.get() {
            Some(caller) => Ok(caller.wait_for_hosts(until).await),
            None => Err(Error::usage("wait_for_hosts needs a cluster pool")),
        }
    }

    /// The process ids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.inner
            .lock()
            .workers
            .iter()
            .filter(|w| w.alive && w.pid != 0)
            .map(|w| w.pid)
            .collect()
    }

    /// Stops taking new calls, waits for every submitted task to finish,
    /// then stops the workers and waits for them to exit.
    ///
    /// Calls already made keep their results. A call still pulling a lazy
    /// input (an iterator or stream given to `map` and the like) submits
    /// nothing more once `close` is called: the tasks it submitted before
    /// finish and deliver their results, then one pool-closed error stands
    /// for the inputs it did not pull, and the call ends. Dropping a call's
    /// stream or future cancels its tasks, and `close` does not wait for
    /// them.
    ///
    /// A worker that has not exited within
    /// [`shutdown_timeout`](PoolBuilder::shutdown_timeout) of being asked
    /// (a cancelled task spinning in a CPU loop, say) is killed, so `close`
    /// returns in bounded time once the submitted work is done.
    pub async fn close(&self) -> Result<(), Error> {
        let waiting = {
            let mut core = self.inner.lock();
            if core.phase == Phase::Open {
                core.phase = Phase::Closing;
            }
            core.take_input_waiters()
        };
        // Calls waiting for more input end now (nothing more is pulled).
        for waker in waiting {
            waker.wake();
        }
        loop {
            let progressed = self.inner.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            {
                let core = self.inner.lock();
                if core.phase != Phase::Closing || core.is_idle() {
                    break;
                }
            }
            progressed.await;
        }
        {
            let mut core = self.inner.lock();
            if core.phase == Phase::Closing {
                core.phase = Phase::Stopped;
            }
            // Under the lock that `supervisor::launch` takes to register a
            // worker: one registered after this sees the pool stopped and
            // ends itself, so every worker either hears this or never runs.
            for w in core.workers.iter_mut().filter(|w| w.alive) {
                w.retiring = true;
                supervisor::retire(&w.outbox);
            }
        }
        self.join().await
    }

    /// Stops now: kills the workers, and every task not finished ends with
    /// a pool-terminated error.
    pub async fn terminate(&self) -> Result<(), Error> {
        self.terminate_now();
        self.join().await
    }

    fn terminate_now(&self) {
        let mut actions = Actions::default();
        {
            let mut core = self.inner.lock();
            if !matches!(core.phase, Phase::Stopped | Phase::Terminated) {
                core.break_pool(Failure::Terminated, &mut actions);
            }
            self.inner.kill_all(&core);
        }
        actions.deliver();
        self.inner.progress.notify_waiters();
    }

    /// Waits until every worker process has exited. The pool must have been
    /// closed or terminated first, otherwise this is an error (it would
    /// wait forever).
    ///
    /// Workers still alive [`shutdown_timeout`](PoolBuilder::shutdown_timeout)
    /// after `join` began are killed.
    pub async fn join(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.inner.config.shutdown_timeout;
        let mut killed = false;
        loop {
            let exited = self.inner.worker_exited.notified();
            tokio::pin!(exited);
            exited.as_mut().enable();
            {
                let core = self.inner.lock();
                if core.phase == Phase::Open || core.phase == Phase::Closing {
                    return Err(Error::usage(
                        "join() waits for workers to exit: call close() or terminate() first",
                    ));
                }
                if core.workers.iter().all(|w| !w.alive) {
                    return Ok(());
                }
            }
            if killed {
                exited.await;
            } else if tokio::time::timeout_at(deadline, exited).await.is_err() {
                // A killed process always ends, so this wait is bounded too.
                self.inner.kill_all(&self.inner.lock());
                killed = true;
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate_now();
        self.inner.lifeline.cut();
    }
}
