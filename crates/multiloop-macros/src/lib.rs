//! The procedural macro behind `#[multiloop::task]`.
//!
//! Use it through the `multiloop` crate, which re-exports it as
//! `multiloop::task`: the code it generates names `::multiloop`, so a crate
//! that depends on `multiloop-macros` alone cannot use it.
//!
//! The attribute turns an `async fn` into a unit struct of the same name that
//! implements `multiloop::Task`, registers it under a stable name so that a
//! worker process can find it, and keeps the function itself callable
//! in-process as `name::run(..)`. Signatures that cannot cross a process
//! boundary (borrowed or generic arguments, `self`, non-`async` functions, ...)
//! are refused at compile time, with the error at the offending token.

mod task;

use proc_macro::TokenStream;

/// Makes an `async fn` a task that a `multiloop` pool can run in a worker
/// process.
///
/// ```ignore
/// /// Adds two numbers.
/// #[multiloop::task]
/// pub async fn add(a: u64, b: u64) -> Result<u64, MyError> {
///     Ok(a + b)
/// }
/// ```
///
/// becomes:
///
/// - a unit struct `add` (with the function's visibility and doc comments,
///   deriving `Clone`, `Copy`, `Debug`, `Default`, `PartialEq`, `Eq` and
///   `Hash`), which is the value passed to the pool;
/// - `add::run(a, b)`, the original function, to call in the current process
///   (the function's other attributes stay on it);
/// - `impl multiloop::Task for add` with `Args = (u64, u64)`, `Output = u64`,
///   `Error = MyError` and `NAME = "<module path>::add"`;
/// - a registration that lets a worker find the task by that name.
///
/// # Arguments and return type
///
/// - `Args` is `()` for no argument, the argument's own type for one, and a
///   tuple for several (at most 16).
/// - A return type whose last path segment is `Result` with exactly two type
///   arguments (`Result<T, E>`, `std::result::Result<T, E>`, ...) gives
///   `Output = T` and `Error = E`. Any other return type, including a
///   one-argument alias such as `io::Result<T>`, is the `Output`, with
///   `Error = multiloop::NoError`; no return type gives `Output = ()`.
/// - Every argument type, the `Output` and the `Error` must be owned
///   (`'static`) and implement serde's `Serialize` and `DeserializeOwned`;
///   arguments and output must be `Send`, and the error also `Debug + Sync`.
///   A type that is not is reported at the type itself.
///
/// # Refused at compile time
///
/// Functions that are not `async`, or are `const`, `unsafe` or `extern`;
/// generic functions; methods (`self`); variadics; argument patterns other
/// than a name (`x`, `mut x`) or `_`; `impl Trait`, references and
/// non-`'static` lifetimes in argument or return types.
///
/// # Options
///
/// `#[multiloop::task(name = "billing::charge_v1")]` sets `NAME`, so that the
/// task keeps its name when the function moves or is renamed. No other
/// option exists.
///
/// Inside the body, call the task itself (recursion) as `add::run(..)`: the
/// name `add` now denotes the struct.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(attr.into(), item.into()).into()
}
