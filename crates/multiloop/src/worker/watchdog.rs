//! The worker's watchdog, which enforces hard deadlines.
//!
//! Outcomes are written with blocking writes under a mutex, from the event
//! loop's thread, once per loop turn: one write carries everything produced
//! since the last. The mutex lets one other thread write too: the
//! watchdog, which enforces hard deadlines. Before the loop polls a task
//! that has a deadline it tells the watchdog (task, deadline + grace); if
//! that same poll is still running past that instant (a CPU loop, a
//! blocking call) the event loop cannot answer for itself, so the watchdog
//! writes the task's timeout outcome and ends the process. The parent then
//! retries the worker's other tasks elsewhere without charging them an
//! attempt.

use std::sync::{Arc, Condvar, Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

use super::channel::Channel;
use crate::wire::{FrameWriter, Status, TaskKey};

/// Exit code of a worker ended by its watchdog.
pub(crate) const EXIT_STUCK: i32 = 72;

#[derive(Default)]
struct Watch {
    /// The task being polled and when its poll becomes a hard timeout.
    current: Option<(TaskKey, Instant, Duration)>,
    /// Bumped on every change, so the watchdog knows a poll it timed ended.
    generation: u64,
}

/// The handle the event loop uses to tell the watchdog what it polls.
#[derive(Clone)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
}

struct Shared {
    state: (Mutex<Watch>, Condvar),
    grace: Duration,
    channel: Arc<Channel>,
    /// The thread starts with the first task that has a deadline: a worker
    /// that never runs one (most pools) does not pay for it at startup.
    started: Once,
}

impl Watchdog {
    /// The watchdog of this worker; its thread starts when first needed.
    pub(crate) fn new(channel: Arc<Channel>, grace: Duration) -> Watchdog {
        Watchdog {
            shared: Arc::new(Shared {
                state: (Mutex::new(Watch::default()), Condvar::new()),
                grace,
                channel,
                started: Once::new(),
            }),
        }
    }

    /// The loop is about to poll task `key`, whose deadline is `deadline`.
    #[inline]
    pub(crate) fn enter(&self, key: TaskKey, deadline: Instant, limit: Duration) {
        self.shared.started.call_once(|| self.start());
        let (lock, cvar) = &self.shared.state;
        let mut w = lock.lock().unwrap_or_else(PoisonError::into_inner);
        w.current = Some((key, deadline + self.shared.grace, limit));
        w.generation += 1;
        cvar.notify_one();
    }

    /// The poll announced by `enter` returned.
    #[inline]
    pub(crate) fn leave(&self) {
        let (lock, _) = &self.shared.state;
        let mut w = lock.lock().unwrap_or_else(PoisonError::into_inner);
        w.current = None;
        w.generation += 1;
        // No wake-up: the watchdog finds the change when its wait ends.
    }

    #[cold]
    fn start(&self) {
        let shared = Arc::clone(&self.shared);
        let (running_tx, running) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("multiloop-watchdog".into())
            .spawn(move || {
                let _ = running_tx.send(());
                watch(&shared.state, &shared.channel)
            });
        // Running before the first poll it guards, as if it had been
        // there from the start (once per worker).
        if spawned.is_ok() {
            let _ = running.recv();
        }
        if let Err(e) = spawned {
            // Without it a task stuck past its deadline could hold the
            // worker forever: end the worker now (the parent retries its
            // tasks) rather than run without the guarantee.
            eprintln!("multiloop worker: could not start the watchdog thread: {e}");
            // SAFETY: `_exit` has no preconditions.
            unsafe { libc::_exit(super::serve::EXIT_SETUP) };
        }
    }
}

fn watch(state: &(Mutex<Watch>, Condvar), channel: &Channel) {
    let (lock, cvar) = state;
    let mut w = lock.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let Some((key, at, limit)) = w.current else {
            w = cvar.wait(w).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let generation = w.generation;
        let now = Instant::now();
        if now < at {
            w = cvar
                .wait_timeout(w, at - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        if w.generation != generation {
            continue;
        }
        // The same poll is still running past its hard deadline.
        let mut out = FrameWriter::new();
        let start = out.results_begin();
        let pos = out.outcome_header(key.chunk, key.index, Status::Timeout);
        out.buf()
            .extend_from_slice(format!("hard:{}", limit.as_micros()).as_bytes());
        out.outcome_end(pos);
        out.finish(start);
        let _ = channel.write_all(&out.take());
        // The parent reports it (a tracing event, and the task's timeout).
        // SAFETY: `_exit` has no preconditions; the event loop is stuck, so
        // ending the process without unwinding it is the only way out.
        unsafe { libc::_exit(EXIT_STUCK) };
    }
}
