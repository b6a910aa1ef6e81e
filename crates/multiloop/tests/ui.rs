//! The compile errors of `#[multiloop::task]`, pinned by trybuild: each
//! file in `tests/ui/` must fail to compile with exactly the messages in
//! the `.stderr` file beside it.
//!
//! After a deliberate change to a message (or a new compiler that words
//! its own errors differently), regenerate the files with
//! `TRYBUILD=overwrite cargo test --workspace --test ui` and review the
//! diff.
//!
//! A few messages end with rustc's list of other types that implement
//! `Deserialize`, whose wording depends on the whole dependency graph:
//! rustc words it one way with the `cluster` feature's dependencies built
//! in and another way without them. Their files are written for the
//! workspace build (`cargo test --workspace`, which the README and CI run,
//! turns the feature on); a build without the feature checks every other
//! file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn task_macro_refuses_each_mistake_with_its_message() {
    let cases = trybuild::TestCases::new();
    let mut files: Vec<_> = std::fs::read_dir("tests/ui")
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no ui cases found in tests/ui");
    for file in files {
        let expected = std::fs::read_to_string(file.with_extension("stderr")).unwrap_or_default();
        if !cfg!(feature = "cluster") && expected.contains("other types implement trait") {
            continue;
        }
        cases.compile_fail(file);
    }
}
