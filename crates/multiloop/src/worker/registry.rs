//! The registry of tasks by stable name, and the type-erased glue that
//! runs one: each `#[multiloop::task]` puts a [`TaskEntry`] in [`TASKS`];
//! an entry's `start` decodes a task's arguments and polls it, reporting to
//! the worker's context. The entry and the function it points to live
//! together, as rayon-core keeps `JobRef` beside its execute function.

use std::any::type_name;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::FutureExt;

use super::ctx::{Ctx, InitFn, LocalFuture, StartFn, beacon};
use super::panics::panic_details;
use super::slot::Slot;
use super::watchdog::Watchdog;
use crate::task::Task;
use crate::wire::TaskKey;

/// One registered task, as the worker sees it: a name and a type-erased entry
/// point. Created by `#[multiloop::task]`; not meant to be used directly.
#[doc(hidden)]
pub struct TaskEntry {
    pub(crate) name: &'static str,
    pub(crate) start: StartFn,
    pub(crate) init: InitFn,
    /// Splits the body of a dense group of this task's results into its
    /// values (a cluster host forwards them one by one).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) split_values: SplitFn,
}

/// Splits the body of a dense group of `count` results into the values.
pub(crate) type SplitFn = for<'a> fn(&'a [u8], u32) -> Result<Vec<&'a [u8]>, String>;

impl TaskEntry {
    /// The entry for task type `T`.
    #[doc(hidden)]
    pub const fn new<T: Task>() -> Self {
        TaskEntry {
            name: T::NAME,
            start: start::<T>,
            init: init_task::<T>,
            split_values: split_values::<T>,
        }
    }
}

/// Every task linked into the executable. The linker gathers the entries
/// into one section, so the slice is complete before any code runs, even
/// code that runs before `main` (where workers start).
#[linkme::distributed_slice]
pub static TASKS: [TaskEntry];

/// The registry: every task linked into this executable, by name.
pub(crate) struct Registry {
    by_name: HashMap<&'static str, &'static TaskEntry>,
    /// Names registered twice (a registry conflict the user must fix).
    pub(crate) duplicates: Vec<&'static str>,
    /// A fingerprint of the set of task names, compared at the handshake so
    /// that a worker built from different code is refused.
    pub(crate) fingerprint: u64,
}

impl Registry {
    pub(crate) fn get() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let mut by_name = HashMap::new();
            let mut duplicates = Vec::new();
            for entry in TASKS {
                if by_name.insert(entry.name, entry).is_some() {
                    duplicates.push(entry.name);
                }
            }
            let mut names: Vec<&str> = by_name.keys().copied().collect();
            names.sort_unstable();
            // Stable across processes of the same build, unlike
            // `DefaultHasher`'s random seed.
            let fingerprint = crate::ids::stable_hash(&names);
            Registry {
                by_name,
                duplicates,
                fingerprint,
            }
        })
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<&'static TaskEntry> {
        self.by_name.get(name).copied()
    }
}

/// The [`StartFn`] of task `T`.
pub(crate) fn start<T: Task>(
    input: &mut &[u8],
    key: TaskKey,
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
    // Most tasks finish on this first poll: their future's place is reused.
    let mut slot = Slot::new_with(|| Tracked {
        inner: T::default().call(args),
        key,
        // A deadline past the clock's end is none.
        watch: timeout.and_then(|limit| {
            Some((
                std::time::Instant::now().checked_add(limit)?,
                limit,
                ctx.watchdog.clone(),
            ))
        }),
    });
    let mut cx = Context::from_waker(Waker::noop());
    match std::panic::catch_unwind(AssertUnwindSafe(|| slot.as_pin_mut().poll(&mut cx))) {
        Ok(Poll::Ready(result)) => {
            slot.recycle();
            ctx.push_result::<T>(key, Ok(result));
            Ok(None)
        }
        Err(panic) => {
            drop(slot);
            ctx.push_panic(key, panic);
            Ok(None)
        }
        // Polling a future again is always allowed: the spawned task polls
        // it with its real waker, which replaces the no-op one.
        Ok(Poll::Pending) => Ok(Some(Box::pin(async move {
            let fut = slot.into_box();
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
        key: TaskKey,
        watch: Option<(std::time::Instant, Duration, Watchdog)>,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let watch: &Option<_> = this.watch;
        if let Some(b) = beacon() {
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
        if let Some(b) = beacon() {
            b.leave();
        }
        if let Some(w) = self.watch {
            w.leave();
        }
    }
}

/// The [`SplitFn`] of task `T`: each value's extent, found by decoding it.
fn split_values<T: Task>(mut body: &[u8], count: u32) -> Result<Vec<&[u8]>, String> {
    let mut values = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (_, rest) = postcard::take_from_bytes::<T::Output>(body).map_err(|e| {
            format!(
                "could not read a result of `{}` as `{}`: {e}",
                T::NAME,
                type_name::<T::Output>()
            )
        })?;
        values.push(&body[..body.len() - rest.len()]);
        body = rest;
    }
    Ok(values)
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
