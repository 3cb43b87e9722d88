//! The buddy allocator of physical frames (Linux's `mm/page_alloc.c` free lists).
//!
//! [`Buddy`] manages the frames of one span `[base, base + len)` in power-of-two blocks up to
//! [`MAX_ORDER`]. Each order has a doubly linked free list threaded through a per-frame array
//! of [`Link`]s that the caller provides (in the kernel, carved out of RAM before anything else
//! is allocated, because the kernel heap itself grows from this allocator); the head frame of
//! a free block records the block's order. That makes every step O(1): finding a buddy is an
//! index computation and a look at its `order`, removing it from its list is an unlink. So
//! `alloc` costs O(orders split) and `free` O(orders merged), independent of how fragmented
//! memory is (an allocator that has to search a free list for the buddy slows down in
//! proportion to the list, which is what freeing a fragmented gigabyte page by page does).
//!
//! Invariants: a block of order `k` starts at a frame whose offset from `base` is a multiple
//! of `2^k` (so `base` should be aligned to `2^MAX_ORDER` frames for the largest blocks to
//! form; any `base` is correct); `link.order == k` exactly for the head frame of a free block
//! of order `k`, and `NOT_FREE` for every other frame; two free buddies of the same order are
//! never both on the lists (they are merged at once).

use crate::addr::Pfn;

/// The largest block order (2^18 frames, 1 GiB).
pub const MAX_ORDER: usize = 18;
const NONE: u32 = u32::MAX;
const NOT_FREE: u8 = u8::MAX;

/// Per-frame list links and the free-block order (12 bytes a frame).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Link {
    next: u32,
    prev: u32,
    order: u8,
}

impl Link {
    /// A frame that is not free (the state every frame starts in).
    pub const ALLOCATED: Link = Link { next: NONE, prev: NONE, order: NOT_FREE };
}

/// Bytes of [`Link`] storage a span of `frames` frames needs.
pub const fn storage_bytes(frames: u64) -> u64 {
    frames * core::mem::size_of::<Link>() as u64
}

/// Why a free was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeError {
    /// The block is outside the span, misaligned for its order, or the order is too large.
    Invalid,
    /// The block (or a part of it) is already free.
    DoubleFree,
}

/// A buddy allocator over one span of frames.
pub struct Buddy<S: AsMut<[Link]> + AsRef<[Link]>> {
    base: u64,
    links: S,
    heads: [u32; MAX_ORDER + 1],
    free: u64,
}

impl<S: AsMut<[Link]> + AsRef<[Link]>> core::fmt::Debug for Buddy<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Buddy").field("base", &self.base).field("free", &self.free).finish_non_exhaustive()
    }
}

impl<S: AsMut<[Link]> + AsRef<[Link]>> Buddy<S> {
    /// An allocator for frames `[base, base + links.len())`, all initially allocated: give
    /// usable ranges to it with [`Buddy::add_range`]. Every entry of `links` is reset.
    pub fn new(base: Pfn, mut links: S) -> Self {
        links.as_mut().fill(Link::ALLOCATED);
        Buddy { base: base.0, links, heads: [NONE; MAX_ORDER + 1], free: 0 }
    }

    /// Frames in the span.
    pub fn span(&self) -> (Pfn, u64) {
        (Pfn(self.base), self.links.as_ref().len() as u64)
    }

    /// Free frames.
    pub fn free_frames(&self) -> u64 {
        self.free
    }

    /// Free blocks per order (for reports and tests).
    pub fn free_blocks(&self) -> [u64; MAX_ORDER + 1] {
        let mut n = [0; MAX_ORDER + 1];
        for (k, c) in n.iter_mut().enumerate() {
            let mut i = self.heads[k];
            while i != NONE {
                *c += 1;
                i = self.links.as_ref()[i as usize].next;
            }
        }
        n
    }

    fn push(&mut self, i: u32, order: usize) {
        let head = self.heads[order];
        let links = self.links.as_mut();
        links[i as usize] = Link { next: head, prev: NONE, order: order as u8 };
        if head != NONE {
            links[head as usize].prev = i;
        }
        self.heads[order] = i;
    }

    fn unlink(&mut self, i: u32, order: usize) {
        let links = self.links.as_mut();
        let Link { next, prev, .. } = links[i as usize];
        if prev == NONE {
            self.heads[order] = next;
        } else {
            links[prev as usize].next = next;
        }
        if next != NONE {
            links[next as usize].prev = prev;
        }
        links[i as usize] = Link::ALLOCATED;
    }

    /// Gives the frames `[start, end)` to the allocator (they must be allocated, e.g. never
    /// added before). Frames outside the span are ignored.
    pub fn add_range(&mut self, start: Pfn, end: Pfn) {
        let lo = start.0.max(self.base) - self.base;
        let hi = end.0.min(self.base + self.links.as_ref().len() as u64).saturating_sub(self.base);
        let mut i = lo;
        while i < hi {
            // The largest aligned block that starts at i and fits.
            let mut k = (i.trailing_zeros() as usize).min(MAX_ORDER);
            while i + (1 << k) > hi {
                k -= 1;
            }
            // Adding frames that are already free would corrupt the lists: skip them.
            let _ = self.free(Pfn(self.base + i), k as u32);
            i += 1 << k;
        }
    }

    /// Allocates a block of `2^order` frames, aligned to its size (relative to `base`).
    pub fn alloc(&mut self, order: u32) -> Option<Pfn> {
        let order = order as usize;
        if order > MAX_ORDER {
            return None;
        }
        let k = (order..=MAX_ORDER).find(|&k| self.heads[k] != NONE)?;
        let i = self.heads[k];
        self.unlink(i, k);
        // Split: the upper halves go back on the lists.
        for j in (order..k).rev() {
            self.push(i + (1 << j), j);
        }
        self.free -= 1 << order;
        Some(Pfn(self.base + i as u64))
    }

    /// Frees a block of `2^order` frames that [`Buddy::alloc`] returned, merging it with its
    /// free buddies.
    pub fn free(&mut self, pfn: Pfn, order: u32) -> Result<(), FreeError> {
        let len = self.links.as_ref().len() as u64;
        let mut k = order as usize;
        if pfn.0 < self.base || k > MAX_ORDER {
            return Err(FreeError::Invalid);
        }
        let off = pfn.0 - self.base;
        if off + (1 << k) > len || !off.is_multiple_of(1 << k) {
            return Err(FreeError::Invalid);
        }
        if self.is_free(off) {
            return Err(FreeError::DoubleFree);
        }
        let mut i = off;
        while k < MAX_ORDER {
            let buddy = i ^ (1 << k);
            if buddy + (1 << k) > len || self.links.as_ref()[buddy as usize].order != k as u8 {
                break;
            }
            self.unlink(buddy as u32, k);
            i = i.min(buddy);
            k += 1;
        }
        self.push(i as u32, k);
        self.free += 1 << order;
        Ok(())
    }

    /// Whether frame `off` (relative to `base`) lies in a free block: a free head of order `k`
    /// at `off` rounded down to `2^k`, for some `k`.
    fn is_free(&self, off: u64) -> bool {
        let links = self.links.as_ref();
        (0..=MAX_ORDER).any(|k| {
            let h = off & !((1u64 << k) - 1);
            links[h as usize].order == k as u8
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn buddy(frames: usize) -> Buddy<Vec<Link>> {
        let mut b = Buddy::new(Pfn(0x1000), vec![Link::ALLOCATED; frames]);
        b.add_range(Pfn(0x1000), Pfn(0x1000 + frames as u64));
        b
    }

    #[test]
    fn allocates_aligned_blocks_and_merges_back() {
        let mut b = buddy(1 << 12);
        assert_eq!(b.free_frames(), 1 << 12);
        assert_eq!(b.free_blocks()[12], 1);
        let a = b.alloc(0).unwrap();
        let h = b.alloc(9).unwrap();
        assert_eq!((h.0 - 0x1000) % 512, 0);
        assert_eq!(b.free_frames(), (1 << 12) - 513);
        b.free(a, 0).unwrap();
        b.free(h, 9).unwrap();
        assert_eq!(b.free_blocks()[12], 1, "everything merged into one block");
        assert_eq!(b.free_frames(), 1 << 12);
    }

    #[test]
    fn refuses_double_free_and_bad_blocks() {
        let mut b = buddy(1024);
        let a = b.alloc(2).unwrap();
        assert_eq!(b.free(Pfn(a.0 + 1), 2), Err(FreeError::Invalid), "misaligned");
        assert_eq!(b.free(Pfn(5), 0), Err(FreeError::Invalid), "outside the span");
        b.free(a, 2).unwrap();
        assert_eq!(b.free(a, 2), Err(FreeError::DoubleFree));
        assert_eq!(b.free(Pfn(a.0 + 1), 0), Err(FreeError::DoubleFree), "inside a free block");
        assert_eq!(b.free_frames(), 1024);
    }

    #[test]
    fn exhaustion_then_reuse() {
        let mut b = buddy(64);
        let all: Vec<Pfn> = (0..64).map(|_| b.alloc(0).unwrap()).collect();
        assert_eq!(b.alloc(0), None);
        for p in &all {
            b.free(*p, 0).unwrap();
        }
        assert_eq!(b.alloc(6), Some(Pfn(0x1000)), "fully merged again");
    }

    #[test]
    fn odd_ranges_with_holes() {
        let mut b = Buddy::new(Pfn(0), vec![Link::ALLOCATED; 3000]);
        b.add_range(Pfn(3), Pfn(1000));
        b.add_range(Pfn(1500), Pfn(2999));
        assert_eq!(b.free_frames(), 997 + 1499);
        let mut got = Vec::new();
        while let Some(p) = b.alloc(0) {
            assert!((3..1000).contains(&p.0) || (1500..2999).contains(&p.0), "{p:?} is in a hole");
            got.push(p);
        }
        assert_eq!(got.len(), 997 + 1499);
    }

    /// Random allocations and frees checked against a model of which frames are taken.
    #[test]
    fn randomized_against_a_model() {
        let frames = 1 << 13;
        let mut b = buddy(frames);
        let mut taken = vec![false; frames];
        let mut live: Vec<(Pfn, u32)> = Vec::new();
        let mut rng = crate::testing::Rng(0x9e37_79b9_7f4a_7c15);
        let mut rnd = || rng.next();
        for _ in 0..20_000 {
            if live.is_empty() || rnd() % 3 != 0 {
                let order = [0, 0, 0, 1, 3, 9][(rnd() % 6) as usize];
                if let Some(p) = b.alloc(order) {
                    let o = (p.0 - 0x1000) as usize;
                    assert_eq!(o % (1 << order), 0);
                    for t in &mut taken[o..o + (1 << order)] {
                        assert!(!*t, "block handed out twice");
                        *t = true;
                    }
                    live.push((p, order));
                }
            } else {
                let (p, order) = live.swap_remove((rnd() % live.len() as u64) as usize);
                let o = (p.0 - 0x1000) as usize;
                taken[o..o + (1 << order)].iter_mut().for_each(|t| *t = false);
                b.free(p, order).unwrap();
            }
            assert_eq!(b.free_frames(), taken.iter().filter(|t| !**t).count() as u64);
        }
        for (p, order) in live.drain(..) {
            b.free(p, order).unwrap();
        }
        assert_eq!(b.free_blocks()[13], 1);
    }
}
