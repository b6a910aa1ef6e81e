//! Compile-time checks of the auto traits the crate documents (see "Threads
//! and pinning" in the crate docs): if a change makes a public type lose
//! `Send`, `Sync` or `Unpin`, the crate stops compiling here instead of
//! breaking a user's `tokio::spawn`.
//!
//! The generic checks are type-checked for every task, input and reducer
//! type at once; none of these functions is ever called.

use futures_core::Stream;

use crate::{
    Apply, Collect, Error, ExitInfo, IterInput, Map, MapReduce, MapUnordered, Pool, PoolBuilder,
    Process, Reduced, Reducer, StreamInput, Task, Worker,
};

const fn send<T: Send>() {}
const fn send_sync<T: Send + Sync>() {}
const fn unpin<T: Unpin>() {}
fn send_value<T: Send>(_: &T) {}

/// The handles shared across threads and tasks.
const _: () = {
    send_sync::<Pool>();
    unpin::<Pool>();
    send_sync::<PoolBuilder>();
    send_sync::<ExitInfo>();
    send::<Process>();
    unpin::<Process>();
};

/// `Error` fits `Box<dyn std::error::Error + Send + Sync + 'static>` (and
/// so `anyhow::Error`).
const _: () = {
    const fn error<E: std::error::Error + Send + Sync + Unpin + 'static>() {}
    error::<Error>();
};

/// A call's stream or future is `Send` whenever its inputs are (and so can
/// be awaited in a spawned task), and always `Unpin` (so it can be polled
/// with `StreamExt::next` or `select!` without pinning it first).
const fn _calls<T, I, S, R>()
where
    T: Task,
    I: Iterator<Item = T::Args> + Send,
    S: Stream<Item = T::Args> + Unpin + Send,
    R: Reducer<Item = T::Output>,
{
    send::<Apply<T>>();
    unpin::<Apply<T>>();

    send::<Map<T, IterInput<I>>>();
    send::<Map<T, StreamInput<S>>>();
    send::<Collect<T, IterInput<I>>>();
    send::<Collect<T, StreamInput<S>>>();
    send::<MapUnordered<T, IterInput<I>>>();
    send::<MapUnordered<T, StreamInput<S>>>();
    send::<MapReduce<T, IterInput<I>, R>>();
    send::<MapReduce<T, StreamInput<S>, R>>();

    send::<Reduced<R::Acc>>();
    send::<Worker<T>>();
}

/// `Unpin` holds whatever the input: a call never pins its source in place.
const fn _calls_unpin<T: Task, In, R: Reducer>() {
    unpin::<Map<T, In>>();
    unpin::<Collect<T, In>>();
    unpin::<MapUnordered<T, In>>();
    unpin::<MapReduce<T, In, R>>();
}

/// The pool's own `async fn`s can run in a spawned task.
const _: fn(PoolBuilder, &Pool, &mut Process) = pool_futures;
fn pool_futures(builder: PoolBuilder, pool: &Pool, process: &mut Process) {
    send_value(&builder.build());
    send_value(&pool.close());
    send_value(&pool.terminate());
    send_value(&pool.join());
    send_value(&process.join(None));
}
