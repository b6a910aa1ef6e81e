//! The worker's event loop: read chunks, run their tasks up to the
//! concurrency limit, write outcomes back in batches.
//!
//! Everything runs on one thread. Tasks are started inline: a task's future
//! is polled once right where its arguments are decoded, and a task that
//! finishes on that first poll (most CPU-bound or trivial tasks) never
//! becomes a spawned tokio task. Only tasks that wait are spawned. Outcomes
//! are appended to one output buffer that the loop writes out once per turn,
//! so one write carries every outcome produced since the last.

use std::any::type_name;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::watchdog::{Channel, Watchdog};
use super::{EXIT_ORPHANED, EXIT_SETUP, LocalFuture, Marker, timeout_from_us};
use crate::ids::IdMap;
use crate::task::{Registry, Task};
use crate::wire::{self, FrameWriter, Message, PROTOCOL_VERSION, Status};

/// Starts one task: decodes its arguments from the front of the cursor and
/// polls it once. `Ok(None)`: it finished and its outcome is written;
/// `Ok(Some(fut))`: it waits, and `fut` writes the outcome when it ends.
pub(crate) type StartFn =
    fn(&mut &[u8], Key, Option<Duration>, &Ctx) -> Result<Option<LocalFuture<()>>, String>;

/// Runs a task as an initializer: decodes its arguments and returns its
/// future, which reports the task's error as text.
pub(crate) type InitFn = fn(&[u8]) -> Result<LocalFuture<Result<(), String>>, String>;

/// Which task an outcome belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) chunk: u64,
    pub(crate) index: u32,
}

thread_local! {
    /// The message and location of the last panic on this thread, recorded
    /// by the worker's panic hook for the task boundary to pick up.
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
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
    waiting: RefCell<IdMap<Key, AbortHandle>>,
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
    fn push(&mut self, key: Key, write: impl FnOnce(&mut Vec<u8>) -> Status) {
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

    fn close(&mut self) {
        if let Some(start) = self.open.take() {
            self.frames.finish(start);
        }
    }
}

impl Ctx {
    fn current() -> Option<Rc<Ctx>> {
        CTX.with(|c| c.borrow().clone())
    }

    pub(crate) fn push_result<T: Task>(
        &self,
        key: Key,
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
    fn fold<V: Serialize>(&self, key: Key, value: &V) -> Option<String> {
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
    fn settle(&self, key: Key) {
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
        let partial = Key {
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

    fn push_outcome<T: Task>(&self, key: Key, result: Result<Result<T::Output, T::Error>, String>) {
        let mut out = self.out.borrow_mut();
        match result {
            Ok(Ok(value)) => out.push(key, |buf| encode_into(buf, &value, Status::Ok)),
            Ok(Err(error)) => out.push(key, |buf| encode_into(buf, &error, Status::TaskError)),
            Err(timeout) => out.push(key, |buf| {
                buf.extend_from_slice(timeout.as_bytes());
                Status::Timeout
            }),
        }
    }

    fn push_panic(&self, key: Key, payload: Box<dyn std::any::Any + Send>) {
        let (message, location) = panic_details(payload);
        self.out.borrow_mut().push(key, |buf| {
            wire::encode_panic(buf, &message, location.as_deref());
            Status::Panic
        });
        self.settle(key);
    }

    fn push_failure(&self, key: Key, status: Status, message: &str) {
        self.out.borrow_mut().push(key, |buf| {
            buf.extend_from_slice(message.as_bytes());
            status
        });
        self.settle(key);
    }

    /// Starts queued tasks while there are free slots, and while this
    /// worker's memory is within its limit (checked before every start, so
    /// the peak is the limit plus what running tasks allocate).
    fn fill(self: &Rc<Self>) {
        loop {
            if self.running.get() >= self.concurrency {
                return;
            }
            let mut queue = self.queue.borrow_mut();
            let Some(q) = queue.front_mut() else { return };
            if q.next >= q.count {
                queue.pop_front();
                continue;
            }
            if self.memory.borrow_mut().is_over() {
                drop(queue);
                self.hand_back();
                return;
            }
            let key = Key {
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
                        self.push_failure(Key { chunk, index }, Status::DecodeFailed, &reason);
                    }
                }
            }
        }
    }

    fn spawn(self: &Rc<Self>, key: Key, fut: LocalFuture<()>) {
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
    fn cancel(&self, chunks: &[u64]) {
        self.queue
            .borrow_mut()
            .retain(|q| !chunks.contains(&q.chunk));
        self.folds.borrow_mut().retain(|c, _| !chunks.contains(c));
        let handles: Vec<AbortHandle> = {
            let mut waiting = self.waiting.borrow_mut();
            let keys: Vec<Key> = waiting
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

    fn idle(&self) -> bool {
        self.running.get() == 0 && self.queue.borrow().is_empty()
    }

    /// Writes every finished outcome to the parent.
    fn flush(&self, spare: &mut Vec<u8>) -> std::io::Result<()> {
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
    key: Key,
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

/// The [`StartFn`] of task `T`.
pub(crate) fn start<T: Task>(
    input: &mut &[u8],
    key: Key,
    timeout: Option<Duration>,
    ctx: &Ctx,
) -> Result<Option<LocalFuture<()>>, String> {
    let (args, rest) = postcard::take_from_bytes::<T::Args>(input).map_err(|e| {
        format!(
            "could not deserialize the arguments of `{}` as `{}`: {e}",
            T::NAME,
            type_name::<T::Args>()
        )
    })?;
    *input = rest;
    let mut fut = Box::pin(Tracked {
        inner: T::default().call(args),
        key,
        watch: timeout.map(|limit| {
            (
                std::time::Instant::now() + limit,
                limit,
                ctx.watchdog.clone(),
            )
        }),
    });
    let mut cx = Context::from_waker(Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
        Ok(Poll::Ready(result)) => {
            ctx.push_result::<T>(key, Ok(result));
            Ok(None)
        }
        Err(panic) => {
            ctx.push_panic(key, panic);
            Ok(None)
        }
        // Polling a future again is always allowed: the spawned task polls
        // it with its real waker, which replaces the no-op one.
        Ok(Poll::Pending) => Ok(Some(Box::pin(async move {
            let guarded = AssertUnwindSafe(fut).catch_unwind();
            let outcome = match timeout {
                None => Ok(guarded.await),
                Some(limit) => tokio::time::timeout(limit, guarded)
                    .await
                    .map_err(|_| format!("{}", limit.as_micros())),
            };
            let Some(ctx) = Ctx::current() else { return };
            match outcome {
                Ok(Ok(result)) => ctx.push_result::<T>(key, Ok(result)),
                Ok(Err(panic)) => ctx.push_panic(key, panic),
                Err(timeout) => ctx.push_result::<T>(key, Err(timeout)),
            }
        }))),
    }
}

pin_project_lite::pin_project! {
    /// A running task. Each poll is announced on the beacon (so that the
    /// parent knows whom to blame if the worker dies during it) and, for a
    /// task with a deadline, to the watchdog (which ends the worker if one
    /// poll runs past the deadline plus the grace).
    struct Tracked<F> {
        #[pin]
        inner: F,
        key: Key,
        watch: Option<(std::time::Instant, Duration, Watchdog)>,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let watch: &Option<_> = this.watch;
        if let Some(b) = super::beacon() {
            b.enter(this.key.chunk, this.key.index);
        }
        if let Some((deadline, limit, watchdog)) = watch {
            watchdog.enter(*this.key, *deadline, *limit);
        }
        let _leave = Leave {
            watch: watch.as_ref().map(|w| &w.2),
        };
        this.inner.poll(cx)
    }
}

/// Tells the beacon and the watchdog a poll ended, even by panicking.
struct Leave<'a> {
    watch: Option<&'a Watchdog>,
}

impl Drop for Leave<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(b) = super::beacon() {
            b.leave();
        }
        if let Some(w) = self.watch {
            w.leave();
        }
    }
}

/// The [`InitFn`] of task `T`.
pub(crate) fn init_task<T: Task>(args: &[u8]) -> Result<LocalFuture<Result<(), String>>, String> {
    let args = postcard::from_bytes::<T::Args>(args).map_err(|e| {
        format!(
            "could not deserialize the initializer arguments of `{}` as `{}`: {e}",
            T::NAME,
            type_name::<T::Args>()
        )
    })?;
    Ok(Box::pin(async move {
        match AssertUnwindSafe(T::default().call(args))
            .catch_unwind()
            .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("`{}` returned an error: {e:?}", T::NAME)),
            Err(panic) => {
                let (message, location) = panic_details(panic);
                Err(format!(
                    "`{}` panicked at {}: {message}",
                    T::NAME,
                    location.as_deref().unwrap_or("an unknown place")
                ))
            }
        }
    }))
}

/// The message of a caught panic, and its location from the panic hook.
fn panic_details(payload: Box<dyn std::any::Any + Send>) -> (String, Option<String>) {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    };
    let location = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .and_then(|(_, loc)| loc);
    (message, location)
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((String::new(), location)));
        previous(info);
    }));
}

/// Exits the worker as soon as the parent is gone, even while a task spins
/// in a CPU loop: a thread blocks on the lifeline pipe, whose write end only
/// the parent holds, and reads end-of-file when the parent exits or dies.
fn watch_lifeline(lifeline: OwnedFd) {
    let spawned = std::thread::Builder::new()
        .name("multiloop-lifeline".into())
        .spawn(move || {
            let mut file = std::fs::File::from(lifeline);
            let mut byte = [0u8; 1];
            loop {
                match std::io::Read::read(&mut file, &mut byte) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // SAFETY: `_exit` ends the process at once without running atexit
            // handlers, which is what an orphaned worker wants; it is
            // async-signal-safe and has no preconditions.
            unsafe { libc::_exit(EXIT_ORPHANED) };
        });
    if spawned.is_err() {
        eprintln!("multiloop worker: could not start the lifeline thread");
        std::process::exit(EXIT_SETUP);
    }
}

/// Runs the worker until the parent says stop or goes away; never returns.
pub(crate) fn serve(marker: Marker) -> ! {
    // We run before `main`, where the standard library would have set
    // SIGPIPE to be ignored: do the same, so a write to a closed pipe is an
    // error for the task (or for us), as in any Rust program, not a death.
    // SAFETY: setting a signal's disposition to SIG_IGN has no
    // preconditions; no other thread exists yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    watch_lifeline(marker.lifeline);
    match crate::beacon::Beacon::map(marker.beacon) {
        Ok(b) => {
            let _ = super::BEACON.set(b);
        }
        Err(e) => {
            eprintln!("multiloop worker: could not map the beacon page: {e}");
            std::process::exit(EXIT_SETUP);
        }
    }
    install_panic_hook();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    for hook in super::RUNTIME_HOOKS {
        hook(&mut builder);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("multiloop worker: could not build the tokio runtime: {e}");
            std::process::exit(EXIT_SETUP);
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, async move {
        match serve_socket(marker.socket).await {
            Ok(()) => 0,
            Err(reason) => {
                eprintln!("multiloop worker: {reason}");
                EXIT_SETUP
            }
        }
    });
    std::process::exit(code)
}

async fn serve_socket(socket: OwnedFd) -> Result<(), String> {
    let write_fd = socket
        .try_clone()
        .map_err(|e| format!("socket setup failed: {e}"))?;
    let channel = Arc::new(Channel::new(write_fd));
    let std_stream = std::os::unix::net::UnixStream::from(socket);
    std_stream
        .set_nonblocking(true)
        .map_err(|e| format!("socket setup failed: {e}"))?;
    let mut rd =
        UnixStream::from_std(std_stream).map_err(|e| format!("socket setup failed: {e}"))?;
    let mut buf = BytesMut::with_capacity(64 * 1024);

    // The handshake: the first frame must be SETUP.
    let mut max_frame = wire::DEFAULT_MAX_FRAME;
    let frame = loop {
        match wire::check_frame(&buf, max_frame).map_err(|e| format!("bad setup frame: {e}"))? {
            Some(f) => break buf.split_to(f.len).freeze(),
            None => {
                if rd
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| format!("read failed: {e}"))?
                    == 0
                {
                    return Ok(());
                }
            }
        }
    };
    let Ok(Message::Setup(setup)) = Message::decode(&frame[4..]) else {
        return Err("the first frame was not a valid SETUP".into());
    };
    let registry = Registry::get();
    let mut error = String::new();
    if setup.protocol != PROTOCOL_VERSION {
        error = format!(
            "protocol version {} offered, this worker speaks {PROTOCOL_VERSION}",
            setup.protocol
        );
    } else if setup.fingerprint != registry.fingerprint {
        error = "the worker's executable registers different tasks than the parent's (a different binary?)".into();
    } else if let Some((name, args)) = setup.initializer {
        error = match registry.lookup(name) {
            None => format!("no task named `{name}` is registered in this executable"),
            Some(entry) => match (entry.init)(args) {
                Err(e) => e,
                Ok(fut) => fut.await.err().unwrap_or_default(),
            },
        };
    }
    max_frame = (setup.max_frame as usize).max(1024);
    let mut hello = FrameWriter::new();
    hello.ready(&wire::Ready {
        protocol: PROTOCOL_VERSION,
        fingerprint: registry.fingerprint,
        pid: std::process::id(),
        error: &error,
    });
    channel
        .write_all(&hello.take())
        .map_err(|e| format!("write failed: {e}"))?;
    if !error.is_empty() {
        return Err(format!("setup failed: {error}"));
    }
    let watchdog = Watchdog::start(Arc::clone(&channel), Duration::from_micros(setup.grace_us))
        .map_err(|e| format!("could not start the watchdog thread: {e}"))?;

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

    let mut spare = Vec::new();
    let mut draining = false;
    let mut next_memory_check = std::time::Instant::now();
    loop {
        while let Some(f) =
            wire::check_frame(&buf, max_frame).map_err(|e| format!("bad frame: {e}"))?
        {
            let frame = buf.split_to(f.len).freeze();
            handle_frame(&ctx, registry, frame, &mut draining)?;
        }
        ctx.fill();
        // The parent gone is not an error of ours: end quietly.
        if ctx.flush(&mut spare).is_err() {
            return Ok(());
        }
        if draining && ctx.idle() {
            return Ok(());
        }
        // Running tasks may pass the limit with nothing left to start: look
        // every few milliseconds while busy, so the parent stops sending.
        if !ctx.idle() && std::time::Instant::now() >= next_memory_check {
            next_memory_check = std::time::Instant::now() + MemoryLimit::EVERY;
            if ctx.memory.borrow_mut().is_over() {
                ctx.hand_back();
            }
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => {
                match read {
                    // The parent closed the channel: nobody will read what
                    // we would send.
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(_) => {}
                }
            }
            () = ctx.wake_loop.notified() => {}
        }
        reserve_for_frame(&mut buf);
    }
}

/// Makes room in `buf` for the rest of the frame it starts with (or 64 KiB),
/// so that a large frame is read with one growth, not many.
pub(crate) fn reserve_for_frame(buf: &mut BytesMut) {
    // The frame's length was checked against the cap before we got here.
    let need = match buf.get(..4) {
        Some(p) => {
            (u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize + 4).saturating_sub(buf.len())
        }
        None => 0,
    };
    if buf.capacity() - buf.len() < need.max(4096) {
        buf.reserve(need.max(64 * 1024));
    }
}

/// This worker's resident memory against its limit (`max_memory_per_child`).
struct MemoryLimit {
    /// Bytes; 0: no limit.
    limit: u64,
    /// `/proc/self/statm`, kept open: one `pread` per look (about a
    /// microsecond), cheap enough to look before every task start.
    statm: Option<std::fs::File>,
    /// The resident memory when first seen over the limit; once over, the
    /// worker stays retiring.
    over: Option<u64>,
    retire_sent: bool,
}

impl MemoryLimit {
    /// How often a busy worker looks when it starts nothing.
    const EVERY: Duration = Duration::from_millis(5);

    fn new(limit: u64) -> Self {
        let statm = (limit > 0)
            .then(|| std::fs::File::open("/proc/self/statm").ok())
            .flatten();
        MemoryLimit {
            limit,
            statm,
            over: None,
            retire_sent: false,
        }
    }

    fn is_over(&mut self) -> bool {
        if self.limit == 0 || self.over.is_some() {
            return self.over.is_some();
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

fn handle_frame(
    ctx: &Rc<Ctx>,
    registry: &Registry,
    mut frame: Bytes,
    draining: &mut bool,
) -> Result<(), String> {
    let message = Message::decode(&frame[4..]).map_err(|e| format!("bad frame: {e}"))?;
    match message {
        Message::Run(run) => {
            let payload_len = run.payload.len();
            let chunk = run.chunk;
            let count = run.count;
            let timeout = timeout_from_us(run.timeout_us);
            let fold = match run
                .reducer
                .map(|(name, value)| (name, crate::reduce::lookup(name), value))
            {
                None => None,
                Some((_, Some(entry), value)) => Some(crate::reduce::make(entry, value)),
                Some((name, None, _)) => Some(Err(format!(
                    "no reducer named `{name}` is registered in this executable"
                ))),
            };
            let fold = match fold.transpose() {
                Ok(fold) => fold,
                Err(reason) => {
                    for index in 0..count {
                        ctx.push_failure(Key { chunk, index }, Status::DecodeFailed, &reason);
                    }
                    return Ok(());
                }
            };
            match registry.lookup(run.task) {
                Some(entry) => {
                    if let Some(fold) = fold {
                        ctx.folds.borrow_mut().insert(
                            chunk,
                            Folding {
                                fold,
                                count,
                                remaining: count,
                            },
                        );
                    }
                    frame.advance(frame.len() - payload_len);
                    ctx.queue.borrow_mut().push_back(Queued {
                        chunk,
                        start: entry.start,
                        timeout,
                        payload: frame,
                        pos: 0,
                        next: 0,
                        count,
                    });
                }
                None => {
                    let msg = run.task.to_owned();
                    for index in 0..count {
                        ctx.push_failure(Key { chunk, index }, Status::UnknownTask, &msg);
                    }
                }
            }
        }
        Message::Cancel(chunks) => ctx.cancel(&chunks),
        Message::Shutdown => *draining = true,
        other => return Err(format!("unexpected message from the parent: {other:?}")),
    }
    Ok(())
}
