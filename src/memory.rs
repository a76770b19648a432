//! Memory: giving freed memory back to the operating system.
//!
//! glibc's allocator keeps freed pages in its arenas: after a burst of 1,000 watches
//! closes, the process would go on holding tens of MiB it no longer uses, counted against
//! the container's memory limit. A sidecar's footprint should follow its load, so every
//! half minute the heap is trimmed (`malloc_trim`), and the number of arenas is capped at
//! start (`M_ARENA_MAX`): with a couple of worker threads, more arenas only fragment.
//! The heap is also trimmed once when start-up is done, before the first request.
//!
//! The process uses the system allocator. A global allocator of our own used to give
//! hyper's two 8 KiB per-connection buffers (`INIT_BUFFER_SIZE`, private to hyper)
//! page-aligned slots, so that a watch's untouched buffer pages stayed untouched. Measured
//! with 1,000 watches held through the release binary (`bench/watch-memory.sh`; figures in
//! bench/results.md, "Allocators"), anonymous memory per watch: that allocator 11.3 KiB,
//! glibc 14.3, tikv-jemallocator 12.9 (and +0.45 MiB idle), mimalloc 21.5 (and +9.5 MiB
//! idle). 3 KiB a watch (3 MiB at 1,000, about 0.1 MiB at the tens of watches a pod's
//! client holds) did not pay for ~300 lines of lock-free `unsafe` code keyed on a
//! constant hyper does not export, and neither well-kept allocator beat glibc at the
//! watch counts a sidecar sees. What those buffers cost was measured by building against a
//! copy of hyper with `INIT_BUFFER_SIZE` at 1 KiB: 1,000 watches in 15.8 MiB instead of
//! 22.3, 6.5 KiB a watch (bench/README.md, "Where a watch's memory goes"). hyper's server
//! builder has no setting for either buffer, so that needs hyper, not an allocator.

use std::time::Duration;

/// How often the heap is trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Caps glibc's arenas; call before the runtime starts its threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads run.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Trims the heap periodically, for the life of the process.
pub fn spawn_trim() {
    #[cfg(target_os = "linux")]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            // Off the async workers: trimming walks the heap.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    });
}

/// Gives the heap's free pages back now. Called once when start-up is done: building the
/// filters' regexes alone frees a ~320 KiB scratch table (regex-automata's UTF-8 compiler
/// cache), which would otherwise stay resident until the first periodic trim.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
