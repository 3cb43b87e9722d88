//! Physical frames: [`hmm::mm::buddy::Buddy`] over the span of usable RAM, in 4 KiB frames.
//!
//! The buddy's per-frame links (12 bytes a frame) are carved out of RAM before anything else
//! is allocated: the kernel heap grows *from* this allocator, so it must not depend on the
//! heap. Because the links are reached through the direct map, the buddy allocator starts
//! only once the direct map is live; before that, [`alloc`] hands out frames from a bump
//! allocator over one low RAM run (page tables for the direct map itself), and those frames
//! are never returned.
//!
//! Invariants: a frame is in the allocator only if it is usable RAM outside the first MiB, the
//! kernel image, the boot modules, the bootstrap run and the links themselves; a block of `n`
//! frames is aligned to `n.next_power_of_two()` frames and must be freed with the same `n`.
//! Every region given to the allocator is also recorded in [`super::ram`], whose checks
//! accept only such memory for `hmm`'s platform. Exhaustion is an [`OutOfFrames`] value; a
//! free that the buddy refuses (double free, a block it never handed out) is logged and
//! ignored rather than corrupting the lists. The lock
//! is held with interrupts off ([`buddy`]): code that runs with interrupts off (the kernel page
//! table's users) allocates frames too, and must never wait for a task preempted holding it.

use hmm::addr::Pfn;
use hmm::mm::buddy::{Buddy, Link};
use spin::Mutex;

use super::{PAGE_SIZE, phys_to_virt};

static FRAMES: Mutex<Option<Buddy<&'static mut [Link]>>> = Mutex::new(None);
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

fn order(count: usize) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// Bytes of links a span of `[lo, hi)` (physical addresses) needs, in whole pages.
pub fn links_bytes(lo: u64, hi: u64) -> u64 {
    hmm::mm::buddy::storage_bytes((hi - span_base(lo)) / PAGE_SIZE).next_multiple_of(PAGE_SIZE)
}

/// Where the allocator's span starts for RAM from `lo`: on a MAX_ORDER boundary, so the
/// largest blocks can form.
fn span_base(lo: u64) -> u64 {
    lo & !((1u64 << (hmm::mm::buddy::MAX_ORDER as u64 + 12)) - 1)
}

/// Starts the buddy allocator for the RAM span `[lo, hi)` with its links at physical address
/// `links` (at least [`links_bytes`] of RAM that nothing else uses, never given to
/// [`add_region`]). Only once the direct map is live.
pub fn init(lo: u64, hi: u64, links: u64) {
    let base = span_base(lo);
    let frames = ((hi - base) / PAGE_SIZE) as usize;
    // SAFETY: the caller gives `links_bytes(lo, hi)` bytes of RAM at `links` that nothing else
    // owns and that stay reserved for the kernel's lifetime; the direct map maps them
    // read-write; `Link` is plain data for which any bytes are overwritten by `Buddy::new`
    // before being read, and the alignment of a page suffices.
    let slice = unsafe { core::slice::from_raw_parts_mut(phys_to_virt(links) as *mut Link, frames) };
    *FRAMES.lock() = Some(Buddy::new(Pfn(base / PAGE_SIZE), slice));
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

/// Runs `f` on the buddy allocator under its lock, with interrupts off (`spin_lock_irqsave`).
fn buddy<R>(f: impl FnOnce(Option<&mut Buddy<&'static mut [Link]>>) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| f(FRAMES.lock().as_mut()))
}

/// Adds the frames of `[start, end)` (page-aligned physical addresses) to the buddy allocator.
/// Only after [`init`].
pub fn add_region(start: u64, end: u64) {
    super::ram::add_managed(start, end);
    buddy(|b| {
        if let Some(b) = b {
            b.add_range(Pfn(start / PAGE_SIZE), Pfn(end / PAGE_SIZE));
        }
    })
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
    buddy(|b| {
        let b = b.ok_or(OutOfFrames { requested: n, free: 0 })?;
        match b.alloc(order(n)) {
            Some(p) => Ok(p.addr()),
            None => Err(OutOfFrames { requested: n, free: b.free_frames() as usize }),
        }
    })
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
/// Contract: the block came from [`alloc`] with the same `count` and is no longer used. A
/// block the buddy can tell was not handed out (outside the span, misaligned, already free)
/// is logged and left alone.
pub fn free(paddr: u64, count: usize) {
    let refused = buddy(|b| b.and_then(|b| b.free(Pfn(paddr / PAGE_SIZE), order(count)).err()));
    if let Some(e) = refused {
        log::error!("frame::free({paddr:#x}, {count}) refused: {e:?}; the block stays out of the allocator");
    }
}

/// Frames currently free.
pub fn free_frames() -> usize {
    buddy(|b| b.map_or(0, |b| b.free_frames() as usize))
}

/// Frames the buddy allocator's span covers.
pub fn total_frames() -> usize {
    buddy(|b| b.map_or(0, |b| b.span().1 as usize))
}
