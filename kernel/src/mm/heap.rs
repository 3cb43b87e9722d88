//! The kernel heap: a buddy heap that grows from the frame allocator on demand.
//!
//! It starts with [`INITIAL_HEAP`] bytes; when an allocation does not fit, the rescue hook
//! adds a naturally aligned block of frames at least as large as the request (2 MiB minimum).
//! When frames run out the allocation fails and Rust reports it with its size.

use buddy_system_allocator::{Heap, LockedHeapWithRescue};
use core::alloc::Layout;

use super::{PAGE_SIZE, frame, phys_to_virt};

/// Heap size at start.
pub const INITIAL_HEAP: usize = 4 << 20;
const GROW_MIN: usize = 2 << 20;

#[global_allocator]
static HEAP: LockedHeapWithRescue<32> = LockedHeapWithRescue::new(grow);

fn add_frames(heap: &mut Heap<32>, bytes: usize) -> bool {
    let frames = bytes.div_ceil(PAGE_SIZE as usize).next_power_of_two();
    let Ok(paddr) = frame::alloc(frames) else { return false };
    let start = phys_to_virt(paddr) as usize;
    // SAFETY: the frames were just allocated for the heap's exclusive use and are mapped
    // read-write by the direct map for as long as the kernel runs.
    unsafe { heap.add_to_heap(start, start + frames * PAGE_SIZE as usize) };
    true
}

fn grow(heap: &mut Heap<32>, layout: &Layout) {
    let need = layout.size().max(layout.align()).saturating_mul(2).max(GROW_MIN);
    if !add_frames(heap, need) {
        log::error!("heap: cannot grow by {need} bytes for a {}-byte allocation", layout.size());
    }
}

/// Gives the heap its first frames (after the direct map is live).
pub fn init() -> bool {
    add_frames(&mut HEAP.lock(), INITIAL_HEAP)
}

/// Bytes the heap manages in total, and bytes allocated.
pub fn stats() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.stats_total_bytes(), heap.stats_alloc_actual())
}
