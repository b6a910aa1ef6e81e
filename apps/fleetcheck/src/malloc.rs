//! glibc malloc settings for a scraper's page-sized buffers.
//!
//! A scrape holds a page (~140 kB) and a connection's read buffer
//! (256 kB, see [`crate::http`]); a buffer hyper must replace while the
//! page still holds the old one is allocated afresh. Above glibc's default
//! thresholds such blocks are mmapped and unmapped, or returned to the OS
//! when the heap's top is trimmed, so each one costs page faults and
//! zeroing again. [`tune`] keeps them in the heap and keeps freed memory
//! for reuse (page faults of a 100M-point scan: 393K -> 158K). It also
//! turns off glibc's fastbins: with them, every allocation of 1 kB or
//! more (a scrape makes several) first consolidated them, ~3 times per
//! scrape (31K `malloc_consolidate` calls per 20M points, 12 without;
//! small blocks still come from the per-thread cache). Other allocators
//! and platforms: nothing to do.

/// Blocks up to this size come from the heap (never mmapped).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 4 << 20;
/// Free memory at the heap's top kept for reuse before trimming.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Apply the settings (idempotent); called first thing in `main`, and in
/// every pool worker through its runtime hook.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters, under its
    // own lock; it has no other precondition.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        // No fastbins (see the module docs).
        libc::mallopt(libc::M_MXFAST, 0);
    }
}

fn worker_hook(_: &mut tokio::runtime::Builder) {
    tune();
}

multiloop::worker_runtime_hook!(worker_hook);
