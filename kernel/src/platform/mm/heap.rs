//! The kernel heap: size-class free lists in front of a buddy heap that grows from the frame
//! allocator on demand.
//!
//! Allocations of up to [`SLAB_MAX`] bytes come from per-size-class free lists (16, 32, ...
//! 2048 bytes), each an intrusive singly linked list through its free objects: O(1) both
//! ways. A class refills by carving a [`SLAB_CHUNK`] block from the buddy heap; freed objects
//! stay in their class (the lists are never shrunk). That keeps the hot small allocations of
//! the memory manager (tree nodes, page arrays of a migration, notifier intervals) off the
//! buddy heap, whose free must search a free list for the buddy and slows down as the heap
//! fragments.
//!
//! Larger allocations go to the buddy heap. It starts with [`INITIAL_HEAP`] bytes; when an
//! allocation does not fit, the rescue hook adds a naturally aligned block of frames at least
//! as large as the request (2 MiB minimum). When frames run out the allocation fails and Rust
//! reports it with its size.

use buddy_system_allocator::{Heap, LockedHeapWithRescue};
use core::alloc::{GlobalAlloc, Layout};
use spin::Mutex;

use super::{PAGE_SIZE, frame, phys_to_virt};

/// Heap size at start.
pub const INITIAL_HEAP: usize = 4 << 20;
const GROW_MIN: usize = 2 << 20;

/// The largest allocation served by the size classes.
pub const SLAB_MAX: usize = 2048;
/// Bytes a size class takes from the buddy heap at a time.
pub const SLAB_CHUNK: usize = 32 << 10;
const CLASSES: usize = 8; // 16 .. 2048

static HEAP: LockedHeapWithRescue<32> = LockedHeapWithRescue::new(grow);
/// The head of each class's free list (0: empty).
static SLABS: Mutex<[usize; CLASSES]> = Mutex::new([0; CLASSES]);

struct KernelHeap;

#[global_allocator]
static ALLOCATOR: KernelHeap = KernelHeap;

/// The size class of `layout`, if small enough: objects of `16 << class` bytes, aligned to
/// their size (up to a page).
fn class(layout: &Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(16).next_power_of_two();
    (size <= SLAB_MAX).then(|| size.trailing_zeros() as usize - 4)
}

/// Carves a new chunk into objects of class `c` and returns the first (the rest go on the
/// list); null when the buddy heap has nothing left.
fn refill(c: usize) -> *mut u8 {
    let size = 16usize << c;
    // SAFETY: the layout has a non-zero size.
    let chunk = unsafe { HEAP.alloc(Layout::from_size_align(SLAB_CHUNK, 4096).unwrap_or(Layout::new::<u64>())) };
    if chunk.is_null() {
        return chunk;
    }
    let mut slabs = SLABS.lock();
    for off in (size..SLAB_CHUNK).step_by(size).rev() {
        // SAFETY: the chunk is ours (just allocated) and `off + size <= SLAB_CHUNK`; each
        // object is at least 16 bytes and aligned to its size, so it holds an aligned usize.
        unsafe {
            let obj = chunk.add(off);
            (obj as *mut usize).write(slabs[c]);
            slabs[c] = obj as usize;
        }
    }
    chunk
}

// SAFETY: objects come from size-class lists (each object `16 << class` bytes, aligned to its
// size, handed out once until freed) or from the buddy heap, and `dealloc` returns each to
// where `alloc` took it from, decided by the same `class(layout)`.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(&layout) else {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { HEAP.alloc(layout) };
        };
        let mut slabs = SLABS.lock();
        let head = slabs[c];
        if head == 0 {
            drop(slabs);
            return refill(c);
        }
        // SAFETY: `head` is a free object of this class; its first word is the next link.
        slabs[c] = unsafe { (head as *const usize).read() };
        head as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(c) = class(&layout) else {
            // SAFETY: `ptr` came from `HEAP.alloc` with this layout (same class test).
            return unsafe { HEAP.dealloc(ptr, layout) };
        };
        let mut slabs = SLABS.lock();
        // SAFETY: `ptr` is an object of class `c` that the caller no longer uses; it is large
        // and aligned enough for the link word.
        unsafe { (ptr as *mut usize).write(slabs[c]) };
        slabs[c] = ptr as usize;
    }
}

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
