//! Physical frames: `buddy_system_allocator`'s intrusive buddy `Heap` over the direct map of
//! usable RAM, in 4 KiB frames.
//!
//! The buddy free lists live inside the free frames themselves, so the frame allocator never
//! allocates (the kernel heap grows *from* it, so it must not depend on the heap). Because the
//! lists hold direct-map addresses, the buddy allocator starts only once the direct map is
//! live; before that, [`alloc`] hands out frames from a bump allocator over one low RAM run
//! (page tables for the direct map itself), and those frames are never returned.
//!
//! Invariants: a frame is in the allocator only if it is usable RAM outside the first MiB, the
//! kernel image, the boot modules and the bootstrap run; a block of `n` frames is aligned to
//! `n.next_power_of_two()` frames and must be freed with the same `n`. Exhaustion is an
//! [`OutOfFrames`] value.

use buddy_system_allocator::Heap;
use core::{alloc::Layout, ptr::NonNull};
use spin::Mutex;

use super::{PAGE_SIZE, phys_to_virt};

static FRAMES: Mutex<Heap<33>> = Mutex::new(Heap::empty());
static BOOTSTRAP: Mutex<Bump> = Mutex::new(Bump { start: 0, next: 0, end: 0 });

/// The bootstrap allocator: frames `[next, end)` of one RAM run, handed out in order.
#[derive(Debug)]
struct Bump {
    start: u64,
    next: u64,
    end: u64,
}

/// No run of free frames of the requested size is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfFrames {
    /// Frames asked for.
    pub requested: usize,
    /// Frames free at the time (possibly fragmented).
    pub free: usize,
}

impl core::fmt::Display for OutOfFrames {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "out of physical memory: {} contiguous frames requested, {} free; give the machine more memory",
            self.requested, self.free
        )
    }
}

fn layout(count: usize) -> Layout {
    let bytes = count.max(1).next_power_of_two() * PAGE_SIZE as usize;
    // Sizes are powers of two times 4 KiB, so the layout is always valid.
    Layout::from_size_align(bytes, PAGE_SIZE as usize).unwrap_or(Layout::new::<u8>())
}

/// Sets the bootstrap run `[start, end)` (before the direct map is live).
pub fn set_bootstrap(start: u64, end: u64) {
    *BOOTSTRAP.lock() = Bump { start, next: start, end };
}

/// The bootstrap frames used so far.
pub fn bootstrap_used() -> (u64, u64) {
    let b = BOOTSTRAP.lock();
    (b.start, b.next)
}

/// Adds the frames of `[start, end)` (page-aligned physical addresses) to the buddy allocator.
/// Only once the direct map is live.
pub fn add_region(start: u64, end: u64) {
    if start >= end {
        return;
    }
    let (vs, ve) = (phys_to_virt(start) as usize, phys_to_virt(end) as usize);
    // SAFETY: `[start, end)` is usable RAM that nothing else owns (the caller excludes the
    // kernel image, modules and bootstrap run), mapped read-write by the direct map for the
    // kernel's lifetime; the allocator may write its free lists into it.
    unsafe { FRAMES.lock().add_to_heap(vs, ve) };
}

/// Allocates `count` contiguous frames; returns the physical address of the first.
pub fn alloc(count: usize) -> Result<u64, OutOfFrames> {
    let n = count.max(1);
    if !super::direct_map_live() {
        let mut b = BOOTSTRAP.lock();
        let bytes = n as u64 * PAGE_SIZE;
        if b.next + bytes > b.end {
            return Err(OutOfFrames { requested: n, free: ((b.end - b.next) / PAGE_SIZE) as usize });
        }
        b.next += bytes;
        return Ok(b.next - bytes);
    }
    let result = FRAMES.lock().alloc(layout(n)); // the guard drops here: free_frames() locks too
    let block = result.map_err(|_| OutOfFrames { requested: n, free: free_frames() })?;
    Ok(block.as_ptr() as u64 - phys_to_virt(0))
}

/// Allocates `count` contiguous zeroed frames.
pub fn alloc_zeroed(count: usize) -> Result<u64, OutOfFrames> {
    let paddr = alloc(count)?;
    // SAFETY: the frames were just allocated, so nothing else refers to them, and they are
    // RAM covered by the direct map (or the early identity map during bootstrap).
    unsafe { core::ptr::write_bytes(phys_to_virt(paddr) as *mut u8, 0, count.max(1) * PAGE_SIZE as usize) };
    Ok(paddr)
}

/// Returns `count` frames starting at `paddr`, exactly as [`alloc`] gave them.
///
/// Contract (not yet enforced by types; the per-frame table of the address-space work will
/// own frames): the block came from [`alloc`] with the same `count` and is no longer used.
pub fn free(paddr: u64, count: usize) {
    let Some(ptr) = NonNull::new(phys_to_virt(paddr) as *mut u8) else { return };
    // SAFETY: by the contract above, `ptr` is a block this allocator handed out with this
    // layout, and nothing uses it any more.
    unsafe { FRAMES.lock().dealloc(ptr, layout(count)) };
}

/// Frames currently free.
pub fn free_frames() -> usize {
    let h = FRAMES.lock();
    (h.stats_total_bytes() - h.stats_alloc_actual()) / PAGE_SIZE as usize
}

/// Frames the buddy allocator manages.
pub fn total_frames() -> usize {
    FRAMES.lock().stats_total_bytes() / PAGE_SIZE as usize
}
