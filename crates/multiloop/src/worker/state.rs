//! Worker-local state: values built once per worker (by the pool's
//! initializer) that every task on that worker can use.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

type Slot = &'static (dyn Any + Send + Sync);

static STATE: Mutex<Option<HashMap<TypeId, Slot>>> = Mutex::new(None);

/// Stores `value` as this process's worker-local state of type `T`, for
/// every later task to read with [`worker_state`].
///
/// Call it from the pool's initializer task, which runs once in each worker
/// before any other task: that is where one HTTP client or one database pool
/// per worker is built. Setting a type again replaces what later calls see
/// (the earlier value lives on, since tasks may still hold it).
///
/// ```
/// #[derive(Debug)]
/// struct Client { base: String }
///
/// multiloop::set_worker_state(Client { base: "http://127.0.0.1".into() });
/// let client: &Client = multiloop::worker_state::<Client>().unwrap();
/// assert_eq!(client.base, "http://127.0.0.1");
/// ```
pub fn set_worker_state<T: Send + Sync + 'static>(value: T) {
    // The state lives as long as the worker process: leaking it is what lets
    // tasks borrow it as `&'static T` across awaits without reference counts.
    let leaked: &'static T = Box::leak(Box::new(value));
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    guard
        .get_or_insert_with(HashMap::new)
        .insert(TypeId::of::<T>(), leaked);
}

/// The worker-local state of type `T`, when the initializer set one.
///
/// See [`set_worker_state`].
pub fn worker_state<T: Send + Sync + 'static>() -> Option<&'static T> {
    let guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    let slot: Slot = *guard.as_ref()?.get(&TypeId::of::<T>())?;
    slot.downcast_ref::<T>()
}
