//! One supervisor task per worker process: it starts the process, performs
//! the handshake, reads its outcomes, and when the process ends, reports the
//! death to the core so the worker's tasks are retried and the slot refilled.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tracing::Instrument;

use super::Inner;
use super::scheduler::{Actions, Cause, Failure, Outbox, Phase, WorkerId, WorkerSlot};
use crate::beacon::Beacon;
use crate::connection::{FrameReader, ReadError};
use crate::error::{Error, ExitInfo};
use crate::spawn::{self, StderrTail};
use crate::wire::{self, FrameWriter, Message, PROTOCOL_VERSION};
use crate::worker::Registry;

/// How long to wait for a dead worker's last stderr bytes.
const STDERR_DRAIN: Duration = Duration::from_millis(200);

/// Starts a worker for `slot` and its supervisor task. `ready` hears once
/// whether the handshake succeeded.
pub(crate) fn launch(
    inner: &Arc<Inner>,
    slot: usize,
    ready: Option<tokio::sync::oneshot::Sender<Result<(), Error>>>,
) -> Result<(), Error> {
    // A slot refilled after the pool stopped would never be told to exit.
    if !inner.lock().phase.takes_workers() {
        return Ok(());
    }
    let beacon = Arc::new(
        Beacon::new().map_err(|e| Error::io("could not create a worker's beacon page", e))?,
    );
    let mut spawned = match spawn::spawn_worker(
        &inner.lifeline,
        &beacon,
        inner.config.capture_stderr,
        inner.config.worker_executable.as_deref(),
        &format!("worker {slot}"),
    ) {
        Ok(s) => s,
        Err(e) => {
            let err = Error::io("could not start a worker process", e);
            return Err(err);
        }
    };
    let outbox = Arc::new(Outbox::default());
    let rearm = Arc::new(Notify::new());
    let id = {
        let mut core = inner.lock();
        let generation = core.new_generation();
        let id = WorkerId { slot, generation };
        let entry = WorkerSlot {
            id,
            pid: spawned.pid,
            process: Arc::clone(&spawned.handle),
            outbox: Arc::clone(&outbox),
            ready: false,
            alive: true,
            retiring: false,
            assigned: 0,
            lifetime: 0,
            chunks: Default::default(),
            isolating: false,
            last_progress: std::time::Instant::now(),
            rearm: Arc::clone(&rearm),
            cancels: Default::default(),
        };
        if slot < core.workers.len() {
            core.workers[slot] = entry;
        } else {
            core.workers.push(entry);
        }
        // The pool stopped while this worker was starting: `close` and
        // `terminate` could not see it, so it goes now. Its supervisor
        // reaps it and reports it gone like any other, under this same
        // lock's rules, so `join` waits for it and no more.
        if !core.phase.takes_workers() {
            core.workers[slot].retiring = true;
            let _ = spawned.child.start_kill();
        }
        id
    };
    // The setup frame goes first, before any RUN the core may queue.
    outbox.with(|w| {
        w.setup(&wire::Setup {
            protocol: PROTOCOL_VERSION,
            fingerprint: Registry::get().fingerprint,
            concurrency: inner.config.concurrency as u32,
            max_frame: inner.config.max_frame as u32,
            grace_us: inner
                .config
                .timeout_grace
                .as_micros()
                .min(u128::from(u64::MAX)) as u64,
            max_rss: inner.config.max_memory_per_child.unwrap_or(0),
            initializer: inner
                .config
                .initializer
                .as_ref()
                .map(|(n, a)| (*n, a.as_slice())),
        })
    });
    let weak = Arc::downgrade(inner);
    // A root span: a replacement is started from inside its predecessor's
    // span, and nesting them would chain every generation of a slot (and
    // keep them all alive) for as long as the pool runs.
    let span = tracing::info_span!(
        parent: None,
        "worker",
        slot,
        generation = id.generation,
        pid = spawned.pid
    );
    span.in_scope(|| tracing::debug!("worker started"));
    inner
        .runtime
        .spawn(supervise(weak, id, spawned, outbox, beacon, rearm, ready).instrument(span));
    Ok(())
}

async fn supervise(
    inner: Weak<Inner>,
    id: WorkerId,
    spawned: spawn::Spawned,
    outbox: Arc<Outbox>,
    beacon: Arc<Beacon>,
    rearm: Arc<Notify>,
    mut ready: Option<tokio::sync::oneshot::Sender<Result<(), Error>>>,
) {
    let spawn::Spawned {
        mut child,
        pid: _,
        handle: _,
        stream,
        stderr,
    } = spawned;
    let tail = Arc::new(Mutex::new(StderrTail::default()));
    let stderr_task = stderr.map(|s| tokio::spawn(spawn::forward_stderr(s, Arc::clone(&tail))));
    let (rd, wr) = stream.into_split();
    let wr = Arc::new(wr);
    let _ = outbox.socket.set(Arc::clone(&wr));
    let writer = tokio::spawn(write_loop(wr, Arc::clone(&outbox)));
    let max_frame = match inner.upgrade() {
        Some(i) => i.config.max_frame,
        None => return,
    };
    let mut gone = RuntimeGone {
        inner: inner.clone(),
        id,
        armed: true,
    };
    let mut cause = Cause::Exited;
    let conn = FrameReader::new(rd, max_frame);
    let outcome = read_loop(&inner, id, conn, &rearm, &beacon, &mut cause, &mut ready).await;
    writer.abort();
    if let Err(reason) = &outcome {
        match cause {
            Cause::Violated => tracing::warn!(%reason, "worker broke the protocol; killing it"),
            Cause::Unresponsive => tracing::warn!(%reason, "worker stopped answering; killing it"),
            Cause::Exited => tracing::debug!(%reason, "worker's channel ended"),
        }
    }
    if outcome.is_err() {
        // A worker that broke the protocol, or stopped answering, cannot be
        // trusted with more work.
        let _ = child.start_kill();
    }
    let status = child.wait().await;
    if let Some(task) = stderr_task {
        let _ = tokio::time::timeout(STDERR_DRAIN, task).await;
    }
    let exit = match status {
        Ok(s) => spawn::exit_info(s),
        Err(_) => ExitInfo::default(),
    };
    let mut tail_text = tail.lock().unwrap_or_else(PoisonError::into_inner).text();
    if let Err(reason) = &outcome {
        tail_text.push_str(&format!("\n[multiloop] {reason}"));
    }
    if let Some(tx) = ready.take() {
        let reason = match &outcome {
            Err(reason) => reason.clone(),
            Ok(()) => format!("the worker {exit} during startup"),
        };
        let _ = tx.send(Err(Error::protocol(format!(
            "{reason}{}",
            tail_suffix(&tail_text)
        ))));
    }
    gone.armed = false;
    let Some(inner) = inner.upgrade() else { return };
    let mut actions = Actions::default();
    {
        let mut core = inner.lock();
        core.on_death(id, &exit, &tail_text, beacon.read(), cause, &mut actions);
    }
    inner.after(actions);
    inner.worker_exited.notify_waiters();
}

/// Dropped with a supervisor that did not finish: the runtime the pool was
/// built on has shut down (a pool kept in a static and shared between
/// `#[tokio::test]`s, each with its runtime, say). Nothing reads the
/// worker any more: it is killed, and the pool fails every pending and
/// later call with an error saying so, instead of leaving them waiting.
struct RuntimeGone {
    inner: Weak<Inner>,
    id: WorkerId,
    armed: bool,
}

impl Drop for RuntimeGone {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut actions = Actions::default();
        {
            let mut core = inner.lock();
            if let Some(w) = core
                .workers
                .get_mut(self.id.slot)
                .filter(|w| w.id == self.id && w.alive)
            {
                w.process.kill();
                w.alive = false;
            }
            if !matches!(core.phase, Phase::Stopped | Phase::Terminated) {
                core.break_pool(Failure::RuntimeGone, &mut actions);
            }
        }
        // No replacement: there is no runtime left to run it.
        let _ = actions.deliver();
        inner.progress.notify_waiters();
        inner.worker_exited.notify_waiters();
    }
}

fn tail_suffix(tail: &str) -> String {
    let t = tail.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{t}")
    }
}

/// Writes what the outbox holds, in order; while it writes, nothing else
/// is sent to this worker (see [`Outbox`]).
async fn write_loop(wr: Arc<OwnedWriteHalf>, outbox: Arc<Outbox>) {
    let mut spare = Vec::new();
    loop {
        {
            let mut pending = outbox.buf.lock().unwrap_or_else(PoisonError::into_inner);
            pending.frames.swap(&mut spare);
            pending.writing = !spare.is_empty();
        }
        if spare.is_empty() {
            outbox.notify.notified().await;
            continue;
        }
        let mut at = 0;
        while at < spare.len() {
            if wr.writable().await.is_err() {
                return;
            }
            match wr.try_write(&spare[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The reader sees the same broken channel and reports it.
                Err(_) => return,
            }
        }
        spare.clear();
    }
}

/// Reads the worker until it closes the channel (`Ok`) or breaks the
/// protocol or stops answering (`Err` with the reason, `cause` set).
async fn read_loop(
    inner: &Weak<Inner>,
    id: WorkerId,
    mut conn: FrameReader<OwnedReadHalf>,
    rearm: &Notify,
    beacon: &Beacon,
    cause: &mut Cause,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), Error>>>,
) -> Result<(), String> {
    if !handshake(&mut conn, inner, id, cause, ready).await? {
        return Ok(());
    }
    loop {
        while let Some(frame) = conn.buffered_frame().map_err(|e| read_failed(cause, e))? {
            let Some(inner) = inner.upgrade() else {
                return Ok(());
            };
            let message = Message::decode(&frame[4..])
                .map_err(|e| violation(cause, format!("bad frame from worker: {e}")))?;
            match message {
                Message::Results(results) => on_results(&inner, id, &frame, results)
                    .map_err(|e| violation(cause, format!("bad results frame from worker: {e}")))?,
                Message::Cancelled => inner.lock().on_cancelled(id),
                Message::Retire(retire) => {
                    let mut actions = Actions::default();
                    inner
                        .lock()
                        .retire_worker(id, retire.rss, &retire.returned, &mut actions);
                    inner.after(actions);
                }
                other => {
                    return Err(violation(
                        cause,
                        format!("unexpected message from worker: {}", describe(&other)),
                    ));
                }
            }
        }
        // Wait for bytes, or for the worker's answer deadline to pass.
        loop {
            let deadline = inner
                .upgrade()
                .and_then(|i| i.lock().answer_deadline(id, i.config.timeout_grace));
            let expired = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = conn.read_more() => {
                    if !read.map_err(|e| read_failed(cause, e))? {
                        return Ok(());
                    }
                    break;
                }
                () = rearm.notified() => {}
                () = expired => {
                    let overdue = inner
                        .upgrade()
                        .and_then(|i| i.lock().overdue(id, i.config.timeout_grace, beacon.read()));
                    if let Some(reason) = overdue {
                        *cause = Cause::Unresponsive;
                        return Err(reason.into());
                    }
                }
            }
        }
    }
}

/// The parent's half of the handshake: the worker's first frame must be
/// READY, from the same protocol and task registry, with its initializer
/// done. Tells `ready` (the pool's build) how it went. `Ok(false)`: the
/// worker or the pool went away first.
async fn handshake(
    conn: &mut FrameReader<OwnedReadHalf>,
    inner: &Weak<Inner>,
    id: WorkerId,
    cause: &mut Cause,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<(), Error>>>,
) -> Result<bool, String> {
    let Some(frame) = conn.read_frame().await.map_err(|e| read_failed(cause, e))? else {
        return Ok(false);
    };
    let message = Message::decode(&frame[4..])
        .map_err(|e| violation(cause, format!("bad frame from worker: {e}")))?;
    let Message::Ready(r) = message else {
        return Err(violation(
            cause,
            format!("unexpected message from worker: {}", describe(&message)),
        ));
    };
    let refusal = if r.protocol != PROTOCOL_VERSION || r.fingerprint != Registry::get().fingerprint
    {
        Some(Error::protocol(format!(
            "worker refused at the handshake: it speaks protocol {} with task registry {:#x}, \
             the parent {} with {:#x} (a different binary?)",
            r.protocol,
            r.fingerprint,
            PROTOCOL_VERSION,
            Registry::get().fingerprint
        )))
    } else if !r.error.is_empty() {
        Some(Error::new(crate::error::Kind::Initializer {
            reason: r.error.to_owned(),
        }))
    } else {
        None
    };
    if let Some(err) = refusal {
        let initializer = err.is_initializer();
        let reason = err.to_string();
        if let Some(tx) = ready.take() {
            let _ = tx.send(Err(err));
        }
        if initializer {
            // Not a protocol violation: the worker exits on its own, its
            // stderr saying why, and is replaced like any worker that died
            // at start-up (a restart storm, if it keeps failing, quotes
            // that stderr).
            return Ok(false);
        }
        return Err(violation(cause, reason));
    }
    let Some(inner) = inner.upgrade() else {
        return Ok(false);
    };
    {
        let mut core = inner.lock();
        if let Some(w) = core.workers.get_mut(id.slot).filter(|w| w.id == id) {
            w.ready = true;
        }
        core.dispatch();
    }
    if let Some(tx) = ready.take() {
        let _ = tx.send(Ok(()));
    }
    tracing::debug!("worker ready");
    Ok(true)
}

/// Hands one RESULTS frame to the scheduler, group by group (see
/// [`Core::on_results`](super::scheduler::Core::on_results)). A malformed
/// group ends the frame: the ones before it are delivered, and the error is
/// returned.
fn on_results(
    inner: &Arc<Inner>,
    id: WorkerId,
    frame: &bytes::Bytes,
    results: wire::Results<'_>,
) -> Result<(), wire::WireError> {
    let base = frame.as_ptr() as usize;
    let mut bad = None;
    let groups = results.groups().map_while(|g| match g {
        Ok(g) => {
            let start = (g.body.as_ptr() as usize - base) as u32;
            Some((
                g.chunk,
                g.first,
                g.count,
                g.dense,
                start,
                start + g.body.len() as u32,
            ))
        }
        Err(e) => {
            bad = Some(e);
            None
        }
    });
    let mut actions = Actions::default();
    let read = inner.lock().on_results(id, frame, groups, &mut actions);
    inner.after(actions);
    match bad {
        Some(e) => Err(e),
        None => read,
    }
}

/// A read that failed: a bad frame is a protocol violation; a reset or a
/// channel closed mid-frame is a death (a worker killed while writing).
fn read_failed(cause: &mut Cause, e: ReadError) -> String {
    match e {
        ReadError::BadFrame(_) => violation(cause, format!("{e} from worker")),
        ReadError::ClosedMidFrame | ReadError::Io(_) => e.to_string(),
    }
}

/// Marks the worker as having broken the protocol (the parent kills it,
/// and its beacon blames nobody); gives back `reason`.
///
/// Reading errors and a channel closed mid-frame are not violations: a
/// worker killed while writing causes them, and it is already dead.
fn violation(cause: &mut Cause, reason: String) -> String {
    *cause = Cause::Violated;
    reason
}

fn describe(m: &Message<'_>) -> &'static str {
    match m {
        Message::Setup(_) => "SETUP",
        Message::Run(_) => "RUN",
        Message::Cancel(_) => "CANCEL",
        Message::Shutdown => "SHUTDOWN",
        Message::Ready(_) => "READY (twice)",
        Message::Results(_) => "RESULTS (before the handshake)",
        Message::Retire(_) => "RETIRE (before the handshake)",
        Message::Cancelled => "CANCELLED (before the handshake)",
    }
}

/// Asks a worker to finish what it holds and exit.
pub(crate) fn retire(outbox: &Outbox) {
    outbox.with(FrameWriter::shutdown);
}
