//! The compile errors of `#[multiloop::task]`, pinned by trybuild: each
//! file in `tests/ui/` must fail to compile with exactly the messages in
//! the `.stderr` file beside it.
//!
//! After a deliberate change to a message (or a new compiler that words
//! its own errors differently), regenerate the files with
//! `TRYBUILD=overwrite cargo test -p multiloop --test ui` and review the
//! diff.

#[test]
fn task_macro_refuses_each_mistake_with_its_message() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
