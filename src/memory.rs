//! Memory: where per-connection buffers live, and giving freed memory back to the
//! operating system.
//!
//! glibc's allocator keeps freed pages in its arenas: after a burst of 1,000 watches
//! closes, the process would go on holding tens of MiB it no longer uses, counted against
//! the container's memory limit. A sidecar's footprint should follow its load, so every
//! half minute the heap is trimmed (`malloc_trim`), and the number of arenas is capped at
//! start (`M_ARENA_MAX`): with a couple of worker threads, more arenas only fragment.
//! The heap is also trimmed once when start-up is done, before the first request.
//!
//! Each HTTP/1.1 client connection holds two 8 KiB buffers for its whole life: hyper's
//! read buffer and its header write buffer (`INIT_BUFFER_SIZE`, fixed in hyper; there is
//! no setting for it). A watch writes a few hundred bytes at the start of each and never
//! more, so most of both buffers is never touched. In glibc's heap they sit unaligned
//! between other allocations, and the pages they straddle are resident anyway: measured
//! with 1,000 watches, 14.2 KiB of anonymous memory per watch. [`Allocator`] gives
//! allocations of exactly that size page-aligned slots of their own in one reserved
//! region, where a buffer's untouched pages stay untouched: about 10 KiB per watch, all
//! of it counted (VmRSS 13.7 MiB with 1,000 watches, 3.7 MiB idle). Up to
//! [`KEEP_DIRTY`] freed slots keep their pages, to be reused first by connections that
//! come and go; the pages of any others go back to the kernel when freed
//! (`MADV_DONTNEED`), and the periodic trim gives back the kept ones too. Without that
//! bound, 1,000 watches closing and 1,000 others opening would keep the pages either
//! set touched (measured: +2.1 MiB).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
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
    BUFFERS.release_free();
}

/// The size that gets a slot: hyper's per-connection buffers.
const SLOT: usize = 8192;

/// Freed slots that keep their pages for quick reuse: those of 32 connections.
const KEEP_DIRTY: usize = 64;

/// Slots in the region: two per connection for 8,192 connections. The region is reserved,
/// not committed (128 MiB of address space); beyond it, buffers come from the heap.
const SLOTS: usize = 16_384;

static BUFFERS: Slots<SLOTS> = Slots::new();

/// The process's allocator (`#[global_allocator]` in `main.rs`): the system allocator,
/// except that [`SLOT`]-byte allocations get a page-aligned slot while slots are left.
pub struct Allocator;

/// The alignment every slot has: the region is only page-aligned (mmap's guarantee) and
/// slots are [`SLOT`] bytes apart, so a slot is aligned to 4 KiB, not to its own size.
/// hyper's buffers ask for 1 (they are `Vec<u8>` and `BytesMut`).
const SLOT_ALIGN: usize = 4096;

fn is_slot(layout: Layout) -> bool {
    layout.size() == SLOT && layout.align() <= SLOT_ALIGN
}

/// How many slots are handed out now. For the tests: hyper's buffer size is private
/// (`INIT_BUFFER_SIZE`), so a hyper release that changes it would silently send every
/// buffer back to the heap; `tests/allocator.rs` holds a real connection open and checks
/// that its buffers are here.
pub fn slots_in_use() -> usize {
    BUFFERS.in_use.load(Ordering::Relaxed)
}

// SAFETY: every pointer handed out is either the system allocator's (and goes back to it)
// or a slot of BUFFERS, recognised by its address, that nobody else holds until freed.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_slot(layout)
            && let Some(p) = BUFFERS.alloc()
        {
            return p;
        }
        // SAFETY: the caller's contract for `layout` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_slot(layout) && BUFFERS.owns(ptr) {
            BUFFERS.free(ptr);
            return;
        }
        // SAFETY: not a slot, so the system allocator gave it out with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    // A reused slot is not zeroed; zeroed requests are rare, so they stay with the system
    // allocator (`dealloc` tells the two apart by address, not by size).
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `layout` is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees a valid alignment and a non-zero size that does
        // not overflow, as for `GlobalAlloc::realloc`.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !is_slot(layout) && !is_slot(new) {
            // SAFETY: neither side is a slot, so this is the system allocator's block.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Into or out of a slot: move by hand.
        // SAFETY: as in `alloc`; `ptr` holds `layout.size()` bytes and the new block at
        // least `new_size`, and they are distinct allocations.
        unsafe {
            let to = self.alloc(new);
            if !to.is_null() {
                std::ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            to
        }
    }
}

/// `N` page-aligned slots of [`SLOT`] bytes in one region reserved at first use, handed
/// out without a lock: two lock-free stacks of free slots (`dirty`: freed, pages likely
/// resident; `clean`: pages given back), and a counter of slots never used.
struct Slots<const N: usize> {
    /// The region's address; or one of the states below.
    base: AtomicUsize,
    /// Slots `0..fresh` have been handed out at least once.
    fresh: AtomicUsize,
    dirty: AtomicU64,
    /// At least how many slots `dirty` holds (raised before a push, lowered after a pop).
    dirty_len: AtomicUsize,
    clean: AtomicU64,
    /// Slots handed out and not yet freed ([`slots_in_use`]).
    in_use: AtomicUsize,
    /// Both stacks' links: `next[i]` is the slot under slot `i`, as index + 1 (0: none).
    next: [AtomicU32; N],
}

/// `base` before the region is reserved.
const UNRESERVED: usize = 0;
/// `base` while one thread reserves it (others use the system allocator meanwhile).
const RESERVING: usize = 1;
/// `base` when the reservation failed: no slots, ever.
const FAILED: usize = 2;

/// A stack head: the top slot's index + 1 in the low half, a counter in the high half
/// that every change bumps, so a compare-exchange cannot succeed on a head that was
/// popped and pushed back meanwhile (the ABA problem).
fn head(tag: u64, link: u32) -> u64 {
    (tag << 32) | u64::from(link)
}

fn link_of(head: u64) -> u32 {
    head as u32
}

impl<const N: usize> Slots<N> {
    const fn new() -> Self {
        Self {
            base: AtomicUsize::new(UNRESERVED),
            fresh: AtomicUsize::new(0),
            dirty: AtomicU64::new(0),
            dirty_len: AtomicUsize::new(0),
            clean: AtomicU64::new(0),
            in_use: AtomicUsize::new(0),
            next: [const { AtomicU32::new(0) }; N],
        }
    }

    /// The region's address, reserving it on first use.
    fn region(&self) -> Option<usize> {
        match self.base.load(Ordering::Acquire) {
            UNRESERVED => {}
            RESERVING | FAILED => return None,
            base => return Some(base),
        }
        if self
            .base
            .compare_exchange(UNRESERVED, RESERVING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return self.region_if_reserved();
        }
        let base = reserve(N * SLOT).unwrap_or(FAILED);
        self.base.store(base, Ordering::Release);
        (base != FAILED).then_some(base)
    }

    fn region_if_reserved(&self) -> Option<usize> {
        match self.base.load(Ordering::Acquire) {
            UNRESERVED | RESERVING | FAILED => None,
            base => Some(base),
        }
    }

    /// A free slot, or `None` when the region is used up or could not be reserved.
    fn alloc(&self) -> Option<*mut u8> {
        let base = self.region()?;
        let dirty = self.pop(&self.dirty);
        if dirty.is_some() {
            self.dirty_len.fetch_sub(1, Ordering::Relaxed);
        }
        let index = match dirty.or_else(|| self.pop(&self.clean)) {
            Some(i) => i,
            None => self
                .fresh
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                    (f < N).then_some(f + 1)
                })
                .ok()?,
        };
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some((base + index * SLOT) as *mut u8)
    }

    fn owns(&self, ptr: *mut u8) -> bool {
        self.region_if_reserved()
            .is_some_and(|base| (base..base + N * SLOT).contains(&(ptr as usize)))
    }

    /// Puts back a slot `alloc` gave out.
    fn free(&self, ptr: *mut u8) {
        let Some(base) = self.region_if_reserved() else {
            return;
        };
        let index = (ptr as usize - base) / SLOT;
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        if self.dirty_len.fetch_add(1, Ordering::Relaxed) < KEEP_DIRTY {
            self.push(&self.dirty, index);
        } else {
            self.dirty_len.fetch_sub(1, Ordering::Relaxed);
            discard(base + index * SLOT, SLOT);
            self.push(&self.clean, index);
        }
    }

    /// Gives the pages of every slot freed since the last call back to the kernel.
    fn release_free(&self) {
        let Some(base) = self.region_if_reserved() else {
            return;
        };
        // Taking the whole stack makes its slots ours alone until pushed again.
        let mut link = link_of(
            self.dirty
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                    Some(head((h >> 32).wrapping_add(1), 0))
                })
                .unwrap_or(0),
        );
        while link != 0 {
            self.dirty_len.fetch_sub(1, Ordering::Relaxed);
            let index = (link - 1) as usize;
            link = self.next[index].load(Ordering::Relaxed);
            discard(base + index * SLOT, SLOT);
            self.push(&self.clean, index);
        }
    }

    fn pop(&self, stack: &AtomicU64) -> Option<usize> {
        let mut h = stack.load(Ordering::Acquire);
        loop {
            let top = link_of(h).checked_sub(1)? as usize;
            // Possibly stale if another thread pops this slot first; the tag then makes
            // the exchange below fail.
            let under = self.next[top].load(Ordering::Relaxed);
            match stack.compare_exchange_weak(
                h,
                head((h >> 32).wrapping_add(1), under),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(top),
                Err(now) => h = now,
            }
        }
    }

    fn push(&self, stack: &AtomicU64, index: usize) {
        let mut h = stack.load(Ordering::Relaxed);
        loop {
            self.next[index].store(link_of(h), Ordering::Relaxed);
            // N is far below u32::MAX, so the index fits.
            let link = index as u32 + 1;
            match stack.compare_exchange_weak(
                h,
                head((h >> 32).wrapping_add(1), link),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }
}

/// Reserves `len` bytes of address space; pages are backed only when first written.
#[cfg(target_os = "linux")]
fn reserve(len: usize) -> Option<usize> {
    // SAFETY: a fresh anonymous private mapping, touching no existing memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    // The states above are below any page address, so a mapping never collides with them.
    (p != libc::MAP_FAILED).then_some(p as usize)
}

#[cfg(not(target_os = "linux"))]
fn reserve(_len: usize) -> Option<usize> {
    None
}

/// Drops the pages of `len` bytes at `addr`; they read as zeros and are backed again when
/// next written.
fn discard(addr: usize, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: the range is a free slot of our own mapping, which nobody holds.
    unsafe {
        libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn slots<const N: usize>() -> Box<Slots<N>> {
        Box::new(Slots::new())
    }

    #[test]
    fn slots_are_page_aligned_distinct_and_run_out() {
        let s = slots::<4>();
        let got: Vec<usize> = (0..4).map(|_| s.alloc().unwrap() as usize).collect();
        assert!(got.iter().all(|p| p % 4096 == 0), "{got:x?}");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
        assert!(s.alloc().is_none(), "a fifth slot out of four");
        assert!(got.iter().all(|&p| s.owns(p as *mut u8)));
        assert!(!s.owns(std::ptr::null_mut::<u8>().wrapping_add(got[0] + 4 * SLOT)));
    }

    #[test]
    fn a_freed_slot_is_reused_first_and_released_pages_read_as_zero() {
        let s = slots::<4>();
        let a = s.alloc().unwrap();
        let _b = s.alloc().unwrap();
        // SAFETY: `a` is a slot of SLOT bytes that this test holds.
        unsafe { a.write_bytes(0xAB, SLOT) };
        s.free(a);
        assert_eq!(s.alloc(), Some(a), "the dirty slot comes back first");
        s.free(a);
        s.release_free();
        assert_eq!(s.alloc(), Some(a), "then the clean one, before a fresh one");
        // SAFETY: as above; the slot's pages were discarded, so they read as zeros.
        let bytes = unsafe { std::slice::from_raw_parts(a, SLOT) };
        assert!(
            bytes.iter().all(|&b| b == 0),
            "MADV_DONTNEED was not applied"
        );
    }

    #[test]
    fn slots_freed_beyond_the_kept_ones_lose_their_pages_at_once() {
        let s = slots::<{ KEEP_DIRTY + 1 }>();
        let all: Vec<*mut u8> = (0..=KEEP_DIRTY).map(|_| s.alloc().unwrap()).collect();
        for &p in &all {
            // SAFETY: each is a slot of SLOT bytes that this test holds.
            unsafe { p.write_bytes(0xCD, SLOT) };
            s.free(p);
        }
        // The last one freed found KEEP_DIRTY kept already: it went back clean.
        let last = all[KEEP_DIRTY];
        let again: Vec<*mut u8> = (0..=KEEP_DIRTY).map(|_| s.alloc().unwrap()).collect();
        assert_eq!(
            again.last(),
            Some(&last),
            "clean slots come after the kept ones"
        );
        // SAFETY: as above; its pages were discarded when it was freed.
        let bytes = unsafe { std::slice::from_raw_parts(last, SLOT) };
        assert!(bytes.iter().all(|&b| b == 0));
        // SAFETY: as above; a kept slot still holds what was written.
        assert_eq!(unsafe { again[0].read() }, 0xCD);
    }

    #[test]
    fn threads_never_get_the_same_slot() {
        let s: &'static Slots<64> = Box::leak(slots::<64>());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    for round in 0..20_000u32 {
                        let held: Vec<*mut u8> = (0..8).filter_map(|_| s.alloc()).collect();
                        for &p in &held {
                            // SAFETY: each slot is this thread's until freed below.
                            unsafe { p.write_bytes(t, 64) };
                        }
                        for &p in &held {
                            // SAFETY: as above.
                            let seen = unsafe { std::slice::from_raw_parts(p, 64) };
                            assert!(seen.iter().all(|&b| b == t), "slot shared between threads");
                            s.free(p);
                        }
                        if round % 1000 == 0 {
                            s.release_free();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn only_alignments_a_slot_has_get_one() {
        // Slots are SLOT bytes apart in a page-aligned region: 4 KiB-aligned, no more.
        assert!(is_slot(Layout::from_size_align(SLOT, 1).unwrap()));
        assert!(is_slot(Layout::from_size_align(SLOT, 4096).unwrap()));
        assert!(!is_slot(Layout::from_size_align(SLOT, 8192).unwrap()));
        assert!(!is_slot(Layout::from_size_align(SLOT - 1, 1).unwrap()));
        let a = Allocator;
        let layout = Layout::from_size_align(SLOT, 8192).unwrap();
        // SAFETY: a non-zero size and a valid alignment; freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % 8192, 0, "an 8 KiB-aligned request got {p:p}");
            a.dealloc(p, layout);
        }
    }

    #[test]
    fn the_allocator_moves_blocks_into_and_out_of_slots_intact() {
        let a = Allocator;
        let small = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: non-zero sizes, valid alignments; every block is freed with its layout.
        unsafe {
            let p = a.alloc(small);
            assert!(!p.is_null());
            for i in 0..100 {
                p.add(i).write(i as u8);
            }
            let q = a.realloc(p, small, SLOT);
            assert!(!q.is_null());
            assert!((0..100).all(|i| q.add(i).read() == i as u8));
            let r = a.realloc(q, Layout::from_size_align(SLOT, 8).unwrap(), 3 * SLOT);
            assert!(!r.is_null());
            assert!((0..100).all(|i| r.add(i).read() == i as u8));
            a.dealloc(r, Layout::from_size_align(3 * SLOT, 8).unwrap());
        }
    }
}
