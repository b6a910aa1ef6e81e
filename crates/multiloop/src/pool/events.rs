//! The queue from the scheduler to one call (a `map`, an `apply`): the
//! outcomes and failures of its tasks, in the order the scheduler produced
//! them.
//!
//! A call is short-lived (an `apply` is one round trip), so making its
//! queue must cost next to nothing: tokio's unbounded channel allocates a
//! block of 32 slots up front (about 2.6 KiB with our events) for every
//! call, which showed in W2 of `multiloop-bench`. This one is a `VecDeque`
//! that allocates on its first event, a waker, and a closed flag, behind
//! one mutex that the scheduler and the call each hold for a push or a pop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use super::scheduler::Event;

/// The scheduler's end: where a call's events go.
pub(crate) struct JobSink {
    shared: Arc<Mutex<Shared>>,
}

/// The call's end.
pub(crate) struct JobEvents {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    queue: VecDeque<Event>,
    waker: Option<Waker>,
    /// The call is gone: events for it are dropped.
    closed: bool,
    /// Sinks alive: with none left and nothing queued, the queue has ended.
    senders: usize,
}

/// A new queue for one call.
pub(crate) fn channel() -> (JobSink, JobEvents) {
    let shared = Arc::new(Mutex::new(Shared {
        senders: 1,
        ..Shared::default()
    }));
    (
        JobSink {
            shared: Arc::clone(&shared),
        },
        JobEvents { shared },
    )
}

impl JobSink {
    /// Queues `event` and wakes the call; gives it back when the call is
    /// gone (it was cancelled: nothing to do).
    pub(crate) fn send(&self, event: Event) -> Result<(), Event> {
        let waker = {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if shared.closed {
                return Err(event);
            }
            shared.queue.push_back(event);
            shared.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Clone for JobSink {
    fn clone(&self) -> Self {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .senders += 1;
        JobSink {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for JobSink {
    fn drop(&mut self) {
        let waker = {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.senders -= 1;
            match shared.senders {
                0 => shared.waker.take(),
                _ => None,
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl JobEvents {
    /// The next event, `Pending` (woken when one comes), or `None` once no
    /// sink is left and nothing is queued. A call holds a sink itself, so
    /// its queue never ends.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        match shared.queue.pop_front() {
            Some(event) => Poll::Ready(Some(event)),
            None if shared.senders == 0 => Poll::Ready(None),
            None => {
                match &mut shared.waker {
                    Some(waker) => waker.clone_from(cx.waker()),
                    None => shared.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// The next event, or `None` once no sink is left and nothing is
    /// queued.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is there.
    pub(crate) fn try_recv(&mut self) -> Option<Event> {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue
            .pop_front()
    }
}

impl Drop for JobEvents {
    fn drop(&mut self) {
        let dropped = {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.closed = true;
            shared.waker = None;
            std::mem::take(&mut shared.queue)
        };
        // Events own frames: freed outside the lock.
        drop(dropped);
    }
}
