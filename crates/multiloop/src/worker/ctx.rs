//! The worker's state while it serves: the tasks queued and running, the
//! outcomes waiting to be written, the chunks being folded, the memory
//! limit. One thread owns it; running tasks reach it through `Ctx::current`.

use std::any::type_name;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::channel::Channel;
use super::panics::panic_details;
use super::watchdog::Watchdog;
use crate::ids::IdMap;
use crate::task::Task;
use crate::wire::{self, FrameWriter, Status, TaskKey};

/// This worker's beacon (see `crate::beacon`), mapped at startup.
pub(super) static BEACON: std::sync::OnceLock<crate::beacon::Beacon> = std::sync::OnceLock::new();

#[inline]
pub(crate) fn beacon() -> Option<&'static crate::beacon::Beacon> {
    BEACON.get()
}

/// A boxed future local to the worker's thread.
pub(crate) type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// The deadline of a task in a RUN frame.
pub(crate) fn timeout_from_us(us: u64) -> Option<Duration> {
    (us > 0).then(|| Duration::from_micros(us))
}

/// Starts one task: decodes its arguments from the front of the cursor and
/// polls it once. `Ok(None)`: it finished and its outcome is written;
/// `Ok(Some(fut))`: it waits, and `fut` writes the outcome when it ends.
pub(crate) type StartFn =
    fn(&mut &[u8], TaskKey, Option<Duration>, &Ctx) -> Result<Option<LocalFuture<()>>, String>;

/// Runs a task as an initializer: decodes its arguments and returns its
/// future, which reports the task's error as text.
pub(crate) type InitFn = fn(&[u8]) -> Result<LocalFuture<Result<(), String>>, String>;

thread_local! {
    static CTX: RefCell<Option<Rc<Ctx>>> = const { RefCell::new(None) };
}

/// A chunk waiting for concurrency slots.
struct Queued {
    chunk: u64,
    start: StartFn,
    timeout: Option<Duration>,
    payload: Bytes,
    pos: usize,
    next: u32,
    count: u32,
}

/// The worker's state, shared by the loop and running tasks.
pub(crate) struct Ctx {
    out: RefCell<Out>,
    queue: RefCell<VecDeque<Queued>>,
    running: Cell<usize>,
    concurrency: usize,
    waiting: RefCell<IdMap<TaskKey, AbortHandle>>,
    wake_loop: Notify,
    /// Chunks whose results are folded here (map-reduce).
    folds: RefCell<IdMap<u64, Folding>>,
    scratch: RefCell<Vec<u8>>,
    channel: Arc<Channel>,
    pub(crate) watchdog: Watchdog,
    memory: RefCell<MemoryLimit>,
}

/// The output buffer: whole frames, plus the RESULTS frame being filled.
struct Out {
    frames: FrameWriter,
    open: Option<usize>,
    max_frame: usize,
}

impl Out {
    /// Appends one outcome, writing its data with `write`, which returns the
    /// status to record (it may turn a value into an encoding error).
    fn push(&mut self, key: TaskKey, write: impl FnOnce(&mut Vec<u8>) -> Status) {
        let start = match self.open {
            Some(start) => start,
            None => {
                let start = self.frames.results_begin();
                self.open = Some(start);
                start
            }
        };
        let mark = self.frames.mark();
        let mut at = self.frames.outcome_header(key.chunk, key.index, Status::Ok);
        let status = write(self.frames.buf());
        self.frames.outcome_set_status(at, status);
        let data_len = self.frames.buf().len() - at - 1;
        // One outcome must fit in a frame on its own.
        if data_len + 40 > self.max_frame {
            self.frames.buf().truncate(at + 1);
            self.frames.outcome_set_status(at, Status::EncodeFailed);
            let msg = format!(
                "the result is {data_len} bytes, more than the frame cap of {} bytes",
                self.max_frame
            );
            self.frames.buf().extend_from_slice(msg.as_bytes());
        }
        if self.frames.body_len(start) + 10 > self.max_frame
            && self.frames.body_len(start) > data_len + 40
        {
            // This outcome fits a frame on its own but not with the ones
            // before it: it starts the next frame.
            let status = self.frames.buf()[at - 1];
            let data = self.frames.buf().split_off(at + 1);
            self.frames.rollback(mark);
            self.frames.finish(start);
            let next = self.frames.results_begin();
            self.open = Some(next);
            at = self.frames.outcome_header(
                key.chunk,
                key.index,
                Status::from_u8(status).unwrap_or(Status::EncodeFailed),
            );
            self.frames.buf().extend_from_slice(&data);
        }
        self.frames.outcome_end(at);
        if let Some(start) = self.open
            && self.frames.body_len(start) > self.max_frame / 2
        {
            self.close();
        }
    }

    /// Appends the value of a task that succeeded, in a dense group (no
    /// header of its own). A value that cannot be serialized, or is larger
    /// than a frame, goes through [`push`](Out::push), which makes it an
    /// encoding error.
    fn push_value<V: Serialize>(&mut self, key: TaskKey, value: &V) {
        let start = match self.open {
            Some(start) => start,
            None => {
                let start = self.frames.results_begin();
                self.open = Some(start);
                start
            }
        };
        let mark = self.frames.mark();
        self.frames.value_header(key.chunk, key.index);
        let at = self.frames.buf().len();
        let encoded = wire::append_value(self.frames.buf(), value).is_ok();
        let data_len = self.frames.buf().len() - at;
        if !encoded || data_len + 40 > self.max_frame {
            self.frames.rollback(mark);
            return self.push(key, |buf| encode_into(buf, value, Status::Ok));
        }
        if self.frames.body_len(start) + 10 > self.max_frame
            && self.frames.body_len(start) > data_len + 40
        {
            // It fits a frame on its own but not with the outcomes before
            // it: it starts the next frame.
            let data = self.frames.buf().split_off(at);
            self.frames.rollback(mark);
            self.frames.finish(start);
            let next = self.frames.results_begin();
            self.open = Some(next);
            self.frames.value_header(key.chunk, key.index);
            self.frames.buf().extend_from_slice(&data);
        }
        self.frames.value_end();
        if let Some(start) = self.open
            && self.frames.body_len(start) > self.max_frame / 2
        {
            self.close();
        }
    }

    fn close(&mut self) {
        if let Some(start) = self.open.take() {
            self.frames.finish(start);
        }
    }
}

impl Ctx {
    /// The context of a worker that passed the handshake; running tasks
    /// find it with [`Ctx::current`].
    pub(super) fn install(
        channel: Arc<Channel>,
        watchdog: Watchdog,
        setup: &wire::Setup<'_>,
        max_frame: usize,
    ) -> Rc<Ctx> {
        let ctx = Rc::new(Ctx {
            out: RefCell::new(Out {
                frames: FrameWriter::new(),
                open: None,
                max_frame,
            }),
            queue: RefCell::new(VecDeque::new()),
            running: Cell::new(0),
            concurrency: setup.concurrency.max(1) as usize,
            waiting: RefCell::new(IdMap::default()),
            wake_loop: Notify::new(),
            folds: RefCell::new(IdMap::default()),
            scratch: RefCell::new(Vec::new()),
            channel,
            watchdog,
            memory: RefCell::new(MemoryLimit::new(setup.max_rss)),
        });
        CTX.with(|c| *c.borrow_mut() = Some(Rc::clone(&ctx)));
        ctx
    }

    pub(super) fn current() -> Option<Rc<Ctx>> {
        CTX.with(|c| c.borrow().clone())
    }

    pub(crate) fn push_result<T: Task>(
        &self,
        key: TaskKey,
        result: Result<Result<T::Output, T::Error>, String>,
    ) {
        let result = match result {
            Ok(Ok(value)) if self.is_folded(key.chunk) => match self.fold(key, &value) {
                None => return self.settle(key),
                Some(reason) => {
                    self.push_failure(key, Status::EncodeFailed, &reason);
                    return;
                }
            },
            other => other,
        };
        self.push_outcome::<T>(key, result);
        self.settle(key);
    }

    /// Whether `chunk`'s results are folded here (cheap when nothing is).
    #[inline]
    fn is_folded(&self, chunk: u64) -> bool {
        let folds = self.folds.borrow();
        !folds.is_empty() && folds.contains_key(&chunk)
    }

    /// Folds a result into its chunk's accumulator: `None` when folded, or
    /// why folding failed.
    fn fold<V: Serialize>(&self, key: TaskKey, value: &V) -> Option<String> {
        let mut folds = self.folds.borrow_mut();
        let f = folds.get_mut(&key.chunk)?;
        let mut scratch = self.scratch.borrow_mut();
        scratch.clear();
        if let Err(e) = wire::append_value(&mut scratch, value) {
            return Some(format!(
                "could not serialize the result of type `{}`: {e}",
                type_name::<V>()
            ));
        }
        f.fold.fold_bytes(&scratch).err()
    }

    /// One more task of `key`'s chunk has ended; a folded chunk whose tasks
    /// have all ended sends its accumulator.
    fn settle(&self, key: TaskKey) {
        if !self.is_folded(key.chunk) {
            return;
        }
        let mut folds = self.folds.borrow_mut();
        let Some(f) = folds.get_mut(&key.chunk) else {
            return;
        };
        f.remaining = f.remaining.saturating_sub(1);
        if f.remaining > 0 {
            return;
        }
        let Some(mut f) = folds.remove(&key.chunk) else {
            return;
        };
        drop(folds);
        let partial = TaskKey {
            chunk: key.chunk,
            index: f.count,
        };
        self.out
            .borrow_mut()
            .push(partial, |buf| match f.fold.finish(buf) {
                Ok(()) => Status::Partial,
                Err(reason) => {
                    buf.extend_from_slice(reason.as_bytes());
                    Status::EncodeFailed
                }
            });
    }

    fn push_outcome<T: Task>(
        &self,
        key: TaskKey,
        result: Result<Result<T::Output, T::Error>, String>,
    ) {
        let mut out = self.out.borrow_mut();
        match result {
            Ok(Ok(value)) => out.push_value(key, &value),
            Ok(Err(error)) => out.push(key, |buf| encode_into(buf, &error, Status::TaskError)),
            Err(timeout) => out.push(key, |buf| {
                buf.extend_from_slice(timeout.as_bytes());
                Status::Timeout
            }),
        }
    }

    pub(super) fn push_panic(&self, key: TaskKey, payload: Box<dyn std::any::Any + Send>) {
        let (message, location) = panic_details(payload);
        self.out.borrow_mut().push(key, |buf| {
            wire::encode_panic(buf, &message, location.as_deref());
            Status::Panic
        });
        self.settle(key);
    }

    fn push_failure(&self, key: TaskKey, status: Status, message: &str) {
        self.out.borrow_mut().push(key, |buf| {
            buf.extend_from_slice(message.as_bytes());
            status
        });
        self.settle(key);
    }

    /// Starts queued tasks while there are free slots, and while this
    /// worker's memory is within its limit (checked before every start, so
    /// the peak is the limit plus what running tasks allocate). Over the
    /// limit, what has not started goes back to the parent, except the
    /// rest of a map-reduce chunk whose fold has begun: its partial must
    /// fold every task of it, so those tasks still start here.
    pub(super) fn fill(self: &Rc<Self>) {
        loop {
            if self.running.get() >= self.concurrency {
                return;
            }
            if self.memory.borrow_mut().is_over() {
                self.hand_back();
            }
            let mut queue = self.queue.borrow_mut();
            let Some(q) = queue.front_mut() else { return };
            if q.next >= q.count {
                queue.pop_front();
                continue;
            }
            self.memory.borrow_mut().started_one = true;
            let key = TaskKey {
                chunk: q.chunk,
                index: q.next,
            };
            q.next += 1;
            let mut cursor = &q.payload[q.pos..];
            let before = cursor.len();
            let start = q.start;
            let timeout = q.timeout;
            let started = start(&mut cursor, key, timeout, self);
            q.pos += before - cursor.len();
            match started {
                Ok(None) => {}
                Ok(Some(fut)) => {
                    drop(queue);
                    self.spawn(key, fut);
                }
                Err(reason) => {
                    // The cursor cannot be trusted past a bad argument: fail
                    // the rest of the chunk with the same reason.
                    let (chunk, from, count) = (q.chunk, q.next - 1, q.count);
                    queue.pop_front();
                    drop(queue);
                    for index in from..count {
                        self.push_failure(TaskKey { chunk, index }, Status::DecodeFailed, &reason);
                    }
                }
            }
        }
    }

    fn spawn(self: &Rc<Self>, key: TaskKey, fut: LocalFuture<()>) {
        self.running.set(self.running.get() + 1);
        let guard = Running {
            ctx: Rc::clone(self),
            key,
        };
        let handle = tokio::task::spawn_local(async move {
            let _guard = guard;
            fut.await;
        });
        if !handle.is_finished() {
            self.waiting.borrow_mut().insert(key, handle.abort_handle());
        }
    }

    /// Drops every queued and running task of these chunks.
    pub(super) fn cancel(&self, chunks: &[u64]) {
        self.queue
            .borrow_mut()
            .retain(|q| !chunks.contains(&q.chunk));
        self.folds.borrow_mut().retain(|c, _| !chunks.contains(c));
        let handles: Vec<AbortHandle> = {
            let mut waiting = self.waiting.borrow_mut();
            let keys: Vec<TaskKey> = waiting
                .keys()
                .filter(|k| chunks.contains(&k.chunk))
                .copied()
                .collect();
            keys.iter().filter_map(|k| waiting.remove(k)).collect()
        };
        for h in handles {
            h.abort();
        }
    }

    /// Tells the parent a CANCEL is carried out: until then it watches
    /// for a cancelled task that never yields (which no cancel reaches).
    pub(super) fn answer_cancel(&self) {
        let mut w = FrameWriter::new();
        w.cancelled();
        // A broken channel is noticed by the loop's next read.
        let _ = self.channel.write_all(&w.take());
    }

    /// Queues the tasks of a RUN frame; `payload` is the frame, advanced
    /// to the arguments; `fold` folds their results (map-reduce).
    pub(super) fn enqueue(
        &self,
        chunk: u64,
        count: u32,
        timeout_us: u64,
        start: StartFn,
        fold: Option<Box<dyn crate::reduce::Fold>>,
        payload: Bytes,
    ) {
        if let Some(fold) = fold {
            self.folds.borrow_mut().insert(
                chunk,
                Folding {
                    fold,
                    count,
                    remaining: count,
                },
            );
        }
        self.queue.borrow_mut().push_back(Queued {
            chunk,
            start,
            timeout: timeout_from_us(timeout_us),
            payload,
            pos: 0,
            next: 0,
            count,
        });
    }

    /// Fails every task of a chunk this worker cannot run (its task or
    /// reducer is not registered here).
    pub(super) fn refuse(&self, chunk: u64, count: u32, status: Status, reason: &str) {
        for index in 0..count {
            self.push_failure(TaskKey { chunk, index }, status, reason);
        }
    }

    /// Resolves when a running task ends (a slot is free, or an outcome
    /// waits to be written).
    pub(super) async fn task_ended(&self) {
        self.wake_loop.notified().await;
    }

    /// Checks the memory limit while tasks run with nothing left to start,
    /// so that the parent stops sending.
    pub(super) fn check_memory(&self) {
        if self.memory.borrow_mut().is_over() {
            self.hand_back();
        }
    }

    /// Over the memory limit: hands the tasks not yet started back to the
    /// parent (which runs them elsewhere, uncharged) and asks to be
    /// replaced. A map-reduce chunk whose fold has begun is finished here:
    /// its partial must fold every task of it.
    fn hand_back(&self) {
        let mut returned = Vec::new();
        {
            let mut folds = self.folds.borrow_mut();
            self.queue.borrow_mut().retain(|q| {
                if q.next >= q.count {
                    return false;
                }
                if q.next > 0 && folds.contains_key(&q.chunk) {
                    return true;
                }
                if q.next == 0 {
                    folds.remove(&q.chunk);
                }
                returned.push((q.chunk, q.next));
                false
            });
        }
        let mut memory = self.memory.borrow_mut();
        if returned.is_empty() && memory.retire_sent {
            return;
        }
        memory.retire_sent = true;
        let mut w = FrameWriter::new();
        w.retire(memory.over.unwrap_or_default(), &returned);
        // A broken channel is noticed by the loop's next read.
        let _ = self.channel.write_all(&w.take());
    }

    pub(super) fn idle(&self) -> bool {
        self.running.get() == 0 && self.queue.borrow().is_empty()
    }

    /// Writes every finished outcome to the parent.
    pub(super) fn flush(&self, spare: &mut Vec<u8>) -> std::io::Result<()> {
        {
            let mut out = self.out.borrow_mut();
            out.close();
            out.frames.swap(spare);
        }
        if spare.is_empty() {
            return Ok(());
        }
        let r = self.channel.write_all(spare);
        spare.clear();
        r
    }
}

/// A chunk being folded: its reducer and how many tasks have yet to end.
struct Folding {
    fold: Box<dyn crate::reduce::Fold>,
    count: u32,
    remaining: u32,
}

/// Marks a spawned task as running; frees its slot when it ends or is
/// aborted.
struct Running {
    ctx: Rc<Ctx>,
    key: TaskKey,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.ctx.running.set(self.ctx.running.get() - 1);
        if let Ok(mut waiting) = self.ctx.waiting.try_borrow_mut() {
            waiting.remove(&self.key);
        }
        self.ctx.wake_loop.notify_one();
    }
}

/// Serializes `value` at the end of `buf`; on failure writes the reason
/// instead and answers [`Status::EncodeFailed`].
fn encode_into<V: Serialize>(buf: &mut Vec<u8>, value: &V, ok: Status) -> Status {
    match wire::append_value(buf, value) {
        Ok(()) => ok,
        Err(e) => {
            let what = if ok == Status::Ok {
                "result"
            } else {
                "task error"
            };
            let msg = format!(
                "could not serialize the {what} of type `{}`: {e}",
                type_name::<V>()
            );
            buf.extend_from_slice(msg.as_bytes());
            Status::EncodeFailed
        }
    }
}

/// This worker's resident memory against its limit (`max_memory_per_child`).
pub(super) struct MemoryLimit {
    /// Bytes; 0: no limit.
    limit: u64,
    /// `/proc/self/statm`, kept open: one `pread` per look (about a
    /// microsecond), cheap enough to look before every task start.
    statm: Option<std::fs::File>,
    /// The resident memory when first seen over the limit; once over, the
    /// worker stays retiring.
    over: Option<u64>,
    retire_sent: bool,
    /// A task has been started here.
    started_one: bool,
}

impl MemoryLimit {
    /// How often a busy worker looks when it starts nothing.
    pub(super) const EVERY: Duration = Duration::from_millis(5);

    fn new(limit: u64) -> Self {
        let statm = (limit > 0)
            .then(|| std::fs::File::open("/proc/self/statm").ok())
            .flatten();
        MemoryLimit {
            limit,
            statm,
            over: None,
            retire_sent: false,
            started_one: false,
        }
    }

    /// Whether this worker passed its limit. A worker always gets to start
    /// one task first: one that is over the limit before any task (a limit
    /// below the program's own footprint) would otherwise hand everything
    /// back, be replaced by another just like it, and the pool would churn
    /// without ever running a task.
    fn is_over(&mut self) -> bool {
        if self.limit == 0 || self.over.is_some() {
            return self.over.is_some();
        }
        if !self.started_one {
            return false;
        }
        let Some(statm) = &self.statm else {
            return false;
        };
        let mut buf = [0u8; 128];
        let Ok(n) = std::os::unix::fs::FileExt::read_at(statm, &mut buf, 0) else {
            return false;
        };
        let rss = std::str::from_utf8(&buf[..n])
            .ok()
            .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|pages| pages * page_size());
        if let Some(rss) = rss.filter(|&rss| rss > self.limit) {
            self.over = Some(rss);
        }
        self.over.is_some()
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).unwrap_or(4096)
}
