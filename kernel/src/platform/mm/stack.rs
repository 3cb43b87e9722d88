//! Kernel stacks with guard pages, for tasks and application processors.
//!
//! Owns the stack area of the kernel half ([`STACKS_BASE`](boot::layout::STACKS_BASE)): slot
//! `s` is `GUARD` bytes left unmapped, then a stack of [`STACK_PAGES`] pages mapped from frames
//! of the frame allocator (write-back, no-execute, global). A stack that overflows runs into
//! its guard page: the page fault cannot push its frame there, so the CPU raises a double fault,
//! which runs on its own IST stack and is reported, instead of the overflow silently
//! corrupting whatever lies below (as a stack carved from the heap would).
//!
//! Invariants: a slot is mapped only between [`alloc`] and [`free`] of the same slot; callers
//! own the slot numbering (the scheduler uses task ids, application processors the slots past
//! them) and never map one twice.

use super::paging::{Flags, FlushBatch, PageSize};
use super::{MapError, PAGE_SIZE, frame, nx, with_kernel_pt};
use boot::layout::STACKS_BASE;

/// Pages of each stack (64 KiB).
pub const STACK_PAGES: u64 = 16;
/// The unmapped guard below each stack.
const GUARD: u64 = PAGE_SIZE;
/// Slots in the area.
pub const SLOTS: usize = 512;

fn base(slot: usize) -> u64 {
    STACKS_BASE + slot as u64 * (GUARD + STACK_PAGES * PAGE_SIZE) + GUARD
}

/// Maps a fresh stack in `slot`; returns its top (16-byte aligned), where the stack pointer
/// starts.
pub fn alloc(slot: usize) -> Result<u64, MapError> {
    if slot >= SLOTS {
        return Err(MapError::NonCanonical(base(slot)));
    }
    let start = base(slot);
    for i in 0..STACK_PAGES {
        let pa = match frame::alloc_zeroed(1) {
            Ok(pa) => pa,
            Err(e) => {
                unmap(start, i);
                return Err(e.into());
            }
        };
        let mapped = with_kernel_pt(|pt| {
            pt.map(start + i * PAGE_SIZE, pa, PageSize::Size4K, Flags::WRITABLE | nx() | Flags::GLOBAL)
        })
        .unwrap_or(Err(MapError::NotMapped(start)));
        match mapped {
            Ok(flush) => flush.flush(),
            Err(e) => {
                frame::free(pa, 1);
                unmap(start, i);
                return Err(e);
            }
        }
    }
    Ok(start + STACK_PAGES * PAGE_SIZE)
}

/// The stack of the slot whose mapped pages hold `addr` (`None` outside the stack area or in a
/// guard page). Whether the slot is mapped is the caller's to know: the profiler asks only for
/// the stack the interrupted code runs on.
pub fn containing(addr: u64) -> Option<core::ops::Range<u64>> {
    let stride = GUARD + STACK_PAGES * PAGE_SIZE;
    let slot = usize::try_from(addr.checked_sub(STACKS_BASE)? / stride).ok().filter(|&s| s < SLOTS)?;
    let start = base(slot);
    let range = start..start + STACK_PAGES * PAGE_SIZE;
    range.contains(&addr).then_some(range)
}

/// Unmaps the stack in `slot` and frees its frames. The caller guarantees no CPU runs on it.
pub fn free(slot: usize) {
    if slot < SLOTS {
        unmap(base(slot), STACK_PAGES);
    }
}

/// Unmaps the first `pages` pages from `start`, freeing their frames, with one shootdown.
fn unmap(start: u64, pages: u64) {
    let mut batch = FlushBatch::new();
    let mut frames = alloc::vec::Vec::new();
    with_kernel_pt(|pt| {
        for i in 0..pages {
            match pt.unmap(start + i * PAGE_SIZE) {
                Ok((pa, _, flush)) => {
                    flush.defer(&mut batch);
                    frames.push(pa);
                }
                Err(e) => log::error!("kernel stack page {:#x}: {e}", start + i * PAGE_SIZE),
            }
        }
    });
    // Every CPU forgets the translations before the frames can be reused.
    batch.finish();
    for pa in frames {
        frame::free(pa, 1);
    }
}
