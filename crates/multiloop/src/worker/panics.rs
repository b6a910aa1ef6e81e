//! Panics inside tasks: the hook records where each panic happened, and
//! the task boundary turns a caught panic into its message and location.

use std::cell::RefCell;

thread_local! {
    /// The message and location of the last panic on this thread, recorded
    /// by the worker's panic hook for the task boundary to pick up.
    static LAST_PANIC: RefCell<Option<(String, Option<String>)>> = const { RefCell::new(None) };
}

/// The message of a caught panic, and its location from the panic hook.
pub(super) fn panic_details(payload: Box<dyn std::any::Any + Send>) -> (String, Option<String>) {
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

pub(super) fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((String::new(), location)));
        previous(info);
    }));
}
