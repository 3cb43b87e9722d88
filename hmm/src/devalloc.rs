//! A device-memory allocator in 4 KiB pages and 2 MiB blocks, with memory that comes and goes
//! at run time (what a GPU driver's VRAM allocator does, plus the hot-plug states of a
//! virtio-mem region).
//!
//! Device memory is numbered in pages, grouped in naturally aligned blocks of
//! [`BLOCK_PAGES`]. A block is offline (not device memory now), free, allocated whole (a
//! device THP), split (some of its base pages allocated), or carved (lent to a driver that
//! manages it itself). Base pages come from already split blocks first, so whole blocks stay
//! whole for 2 MiB allocations; a split block whose last page comes back is whole again.
//!
//! Removing memory is isolate, evict, offline: [`DevAlloc::isolate`] stops allocation from a
//! range of blocks and says how many pages there are still in use; the caller migrates them
//! away (freeing them here as usual); [`DevAlloc::offline`] then succeeds, or
//! [`DevAlloc::unisolate`] gives the blocks back if eviction could not finish.
//!
//! Invariants: `free_blocks` holds exactly the free, non-isolated blocks; `base` holds, for
//! every split block, its free page offsets (empty lists are removed); a split block's `used`
//! counts its allocated pages (1 to 511).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

/// Pages in a block (2 MiB of 4 KiB pages).
pub const BLOCK_PAGES: u64 = 512;

/// What a block is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not device memory now (never added, or removed).
    Offline,
    /// Every page free.
    Free,
    /// Allocated as one 2 MiB page.
    Huge,
    /// Split into base pages, `used` of them allocated.
    Split {
        /// Allocated pages.
        used: u16,
    },
    /// Lent out whole by [`DevAlloc::carve`].
    Carved,
}

/// A request the allocator cannot do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The block range is beyond the allocator's capacity.
    OutOfRange,
    /// A block in the range is not in the state the operation needs (for example adding a
    /// block that is already online, or offlining one with pages in use).
    WrongState {
        /// The block.
        block: u64,
        /// Its state.
        state: State,
    },
    /// Pages are still in use in the range (evict them first).
    InUse(u64),
}

impl core::fmt::Display for AllocError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfRange => write!(f, "device memory block range beyond the device's memory"),
            Self::WrongState { block, state } => write!(f, "device memory block {block} is {state:?}"),
            Self::InUse(n) => write!(f, "{n} device pages still in use in the range; evict them first"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Block {
    state: State,
    isolated: bool,
}

/// The allocator. Page numbers are `block * BLOCK_PAGES + offset`.
#[derive(Debug)]
pub struct DevAlloc {
    blocks: Vec<Block>,
    free_blocks: BTreeSet<u64>,
    base: BTreeMap<u64, Vec<u16>>,
}

impl DevAlloc {
    /// An allocator for up to `capacity` blocks, all offline.
    pub fn new(capacity: u64) -> DevAlloc {
        let b = Block { state: State::Offline, isolated: false };
        DevAlloc { blocks: alloc::vec![b; capacity as usize], free_blocks: BTreeSet::new(), base: BTreeMap::new() }
    }

    /// Blocks this allocator can hold.
    pub fn capacity(&self) -> u64 {
        self.blocks.len() as u64
    }

    /// The state of `block`.
    pub fn state(&self, block: u64) -> Option<State> {
        self.blocks.get(block as usize).map(|b| b.state)
    }

    /// Whether `block` is isolated (being removed).
    pub fn is_isolated(&self, block: u64) -> bool {
        self.blocks.get(block as usize).is_some_and(|b| b.isolated)
    }

    /// Pages online (device memory now, carved blocks included).
    pub fn online_pages(&self) -> u64 {
        self.blocks.iter().filter(|b| b.state != State::Offline).count() as u64 * BLOCK_PAGES
    }

    /// Pages free to allocate (not isolated).
    pub fn free_pages(&self) -> u64 {
        let split: u64 =
            self.base.iter().filter(|(b, _)| !self.blocks[**b as usize].isolated).map(|(_, v)| v.len() as u64).sum();
        self.free_blocks.len() as u64 * BLOCK_PAGES + split
    }

    /// Pages allocated (THPs and base pages; carved blocks not counted).
    pub fn used_pages(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| match b.state {
                State::Huge => BLOCK_PAGES,
                State::Split { used } => u64::from(used),
                _ => 0,
            })
            .sum()
    }

    fn range(&self, first: u64, n: u64) -> Result<core::ops::Range<u64>, AllocError> {
        match first.checked_add(n) {
            Some(end) if end <= self.capacity() => Ok(first..end),
            _ => Err(AllocError::OutOfRange),
        }
    }

    fn expect(&self, r: core::ops::Range<u64>, ok: impl Fn(&Block) -> bool) -> Result<(), AllocError> {
        match r.clone().find(|&b| !ok(&self.blocks[b as usize])) {
            Some(block) => Err(AllocError::WrongState { block, state: self.blocks[block as usize].state }),
            None => Ok(()),
        }
    }

    /// Brings offline blocks `[first, first + n)` online, free.
    pub fn add(&mut self, first: u64, n: u64) -> Result<(), AllocError> {
        let r = self.range(first, n)?;
        self.expect(r.clone(), |b| b.state == State::Offline)?;
        for b in r {
            self.blocks[b as usize] = Block { state: State::Free, isolated: false };
            self.free_blocks.insert(b);
        }
        Ok(())
    }

    /// One free base page, from a split block if there is one (lowest first), else by
    /// splitting a free block.
    pub fn alloc_page(&mut self) -> Option<u64> {
        let blocks = &self.blocks;
        let b = match self.base.keys().find(|&&b| !blocks[b as usize].isolated) {
            Some(&b) => b,
            None => {
                let b = self.free_blocks.pop_first()?;
                self.base.insert(b, (0..BLOCK_PAGES as u16).rev().collect());
                self.blocks[b as usize].state = State::Split { used: 0 };
                b
            }
        };
        let list = self.base.get_mut(&b)?;
        let off = list.pop()?;
        if list.is_empty() {
            self.base.remove(&b);
        }
        if let State::Split { used } = &mut self.blocks[b as usize].state {
            *used += 1;
        }
        Some(b * BLOCK_PAGES + u64::from(off))
    }

    /// One free 2 MiB block (its first page number).
    pub fn alloc_block(&mut self) -> Option<u64> {
        let b = self.free_blocks.pop_first()?;
        self.blocks[b as usize].state = State::Huge;
        Some(b * BLOCK_PAGES)
    }

    /// Frees `2^order` pages at `page`: a base page (order 0) or a whole block (order 9).
    /// Freeing what is not allocated is refused.
    pub fn free(&mut self, page: u64, order: u32) -> Result<(), AllocError> {
        let b = page / BLOCK_PAGES;
        let blk = *self.blocks.get(b as usize).ok_or(AllocError::OutOfRange)?;
        let wrong = AllocError::WrongState { block: b, state: blk.state };
        // A 2 MiB page split into base pages (a partial unmap, an eviction) comes back page by
        // page: its block becomes a split block with every page in use.
        let state = match (blk.state, order) {
            (State::Huge, 0) => State::Split { used: BLOCK_PAGES as u16 },
            (s, _) => s,
        };
        let now_free = match (state, order) {
            (State::Huge, 9) if page.is_multiple_of(BLOCK_PAGES) => true,
            (State::Split { used }, 0) => {
                let off = (page % BLOCK_PAGES) as u16;
                let list = self.base.entry(b).or_default();
                if list.contains(&off) {
                    return Err(wrong);
                }
                if used == 1 {
                    self.base.remove(&b);
                    true
                } else {
                    list.push(off);
                    self.blocks[b as usize].state = State::Split { used: used - 1 };
                    false
                }
            }
            _ => return Err(wrong),
        };
        if now_free {
            self.blocks[b as usize].state = State::Free;
            if !blk.isolated {
                self.free_blocks.insert(b);
            }
        }
        Ok(())
    }

    /// Lends `n` consecutive free blocks (the lowest such run) to a driver that manages them
    /// itself; returns the first page number.
    pub fn carve(&mut self, n: u64) -> Option<u64> {
        let n = n.max(1);
        let mut run = (0, 0);
        for &b in &self.free_blocks {
            run = if run.1 > 0 && run.0 + run.1 == b { (run.0, run.1 + 1) } else { (b, 1) };
            if run.1 == n {
                break;
            }
        }
        if run.1 < n {
            return None;
        }
        for b in run.0..run.0 + n {
            self.free_blocks.remove(&b);
            self.blocks[b as usize].state = State::Carved;
        }
        Some(run.0 * BLOCK_PAGES)
    }

    /// Takes back `n` blocks lent by [`carve`](Self::carve) at page `first`.
    pub fn uncarve(&mut self, first: u64, n: u64) -> Result<(), AllocError> {
        let r = self.range(first / BLOCK_PAGES, n)?;
        self.expect(r.clone(), |b| b.state == State::Carved)?;
        for b in r {
            self.blocks[b as usize].state = State::Free;
            if !self.blocks[b as usize].isolated {
                self.free_blocks.insert(b);
            }
        }
        Ok(())
    }

    /// Stops allocation from online blocks `[first, first + n)` (the first step of removing
    /// them); returns the pages still allocated there, which the caller evicts. Carved blocks
    /// cannot be isolated.
    pub fn isolate(&mut self, first: u64, n: u64) -> Result<u64, AllocError> {
        let r = self.range(first, n)?;
        self.expect(r.clone(), |b| !matches!(b.state, State::Offline | State::Carved))?;
        for b in r.clone() {
            self.blocks[b as usize].isolated = true;
            self.free_blocks.remove(&b);
        }
        Ok(self.used_in(r))
    }

    fn used_in(&self, r: core::ops::Range<u64>) -> u64 {
        r.map(|b| match self.blocks[b as usize].state {
            State::Huge => BLOCK_PAGES,
            State::Split { used } => u64::from(used),
            _ => 0,
        })
        .sum()
    }

    /// Gives isolated blocks back to allocation (removal abandoned).
    pub fn unisolate(&mut self, first: u64, n: u64) -> Result<(), AllocError> {
        let r = self.range(first, n)?;
        self.expect(r.clone(), |b| b.isolated)?;
        for b in r {
            self.blocks[b as usize].isolated = false;
            if self.blocks[b as usize].state == State::Free {
                self.free_blocks.insert(b);
            }
        }
        Ok(())
    }

    /// Takes isolated, wholly free blocks `[first, first + n)` offline. `InUse` if pages are
    /// still allocated there (nothing changes).
    pub fn offline(&mut self, first: u64, n: u64) -> Result<(), AllocError> {
        let r = self.range(first, n)?;
        self.expect(r.clone(), |b| b.isolated)?;
        match self.used_in(r.clone()) {
            0 => {}
            used => return Err(AllocError::InUse(used)),
        }
        for b in r {
            self.blocks[b as usize] = Block { state: State::Offline, isolated: false };
        }
        Ok(())
    }

    /// The allocated pages of blocks `[first, first + n)`: `(first page, order)` per THP or
    /// base page, what an eviction walks.
    pub fn allocated_in(&self, first: u64, n: u64) -> Vec<(u64, u32)> {
        let Ok(r) = self.range(first, n) else { return Vec::new() };
        let mut out = Vec::new();
        for b in r {
            match self.blocks[b as usize].state {
                State::Huge => out.push((b * BLOCK_PAGES, 9)),
                State::Split { .. } => {
                    let free = self.base.get(&b).map(|v| &v[..]).unwrap_or(&[]);
                    out.extend(
                        (0..BLOCK_PAGES as u16)
                            .filter(|o| !free.contains(o))
                            .map(|o| (b * BLOCK_PAGES + u64::from(o), 0)),
                    );
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn online(blocks: u64) -> DevAlloc {
        let mut a = DevAlloc::new(blocks);
        a.add(0, blocks).unwrap();
        a
    }

    #[test]
    fn base_pages_come_from_split_blocks_and_blocks_reform() {
        let mut a = online(2);
        let p: Vec<u64> = (0..3).map(|_| a.alloc_page().unwrap()).collect();
        assert_eq!(p, [0, 1, 2], "one block is split, lowest pages first");
        assert_eq!(a.state(0), Some(State::Split { used: 3 }));
        assert_eq!(a.alloc_block(), Some(512), "the other block stays whole");
        assert_eq!(a.alloc_block(), None);
        for &q in &p {
            a.free(q, 0).unwrap();
        }
        assert_eq!(a.state(0), Some(State::Free), "the last page back makes the block whole");
        assert_eq!(a.alloc_block(), Some(0));
        assert_eq!(a.free_pages(), 0);
        assert_eq!(a.used_pages(), 1024);
    }

    #[test]
    fn freeing_what_is_not_allocated_is_refused() {
        let mut a = online(1);
        assert!(matches!(a.free(5, 0), Err(AllocError::WrongState { block: 0, state: State::Free })));
        let p = a.alloc_page().unwrap();
        a.alloc_page().unwrap();
        a.free(p, 0).unwrap();
        assert!(a.free(p, 0).is_err(), "double free");
        assert!(a.free(0, 9).is_err(), "a block free of a split block");
        assert_eq!(a.free(1 << 20, 0), Err(AllocError::OutOfRange));
    }

    #[test]
    fn a_split_2m_page_comes_back_page_by_page() {
        let mut a = online(1);
        let h = a.alloc_block().unwrap();
        for k in (0..BLOCK_PAGES).rev() {
            a.free(h + k, 0).unwrap();
            let left = k as u16;
            let want = if left == 0 { State::Free } else { State::Split { used: left } };
            assert_eq!(a.state(0), Some(want));
        }
        assert_eq!(a.alloc_block(), Some(0));
        // Isolated meanwhile: freed pages still count down, and the block can go offline.
        a.free(0, 9).unwrap();
        let h = a.alloc_block().unwrap();
        assert_eq!(a.isolate(0, 1), Ok(512));
        for k in 0..BLOCK_PAGES {
            a.free(h + k, 0).unwrap();
        }
        a.offline(0, 1).unwrap();
    }

    #[test]
    fn exhausting_base_pages_uses_every_page_once() {
        let mut a = online(3);
        let mut seen = BTreeSet::new();
        while let Some(p) = a.alloc_page() {
            assert!(seen.insert(p));
        }
        assert_eq!(seen.len(), 3 * 512);
        assert_eq!(a.free_pages(), 0);
        assert_eq!(a.alloc_block(), None);
    }

    #[test]
    fn carve_takes_consecutive_free_blocks() {
        let mut a = online(4);
        let h = a.alloc_block().unwrap();
        assert_eq!(h, 0);
        assert_eq!(a.carve(3), Some(512));
        assert_eq!(a.carve(1), None);
        a.uncarve(512, 3).unwrap();
        a.free(0, 9).unwrap();
        assert_eq!(a.carve(4), Some(0));
        assert!(a.uncarve(512, 4).is_err(), "beyond the carved run");
    }

    #[test]
    fn removal_isolates_evicts_then_offlines() {
        let mut a = DevAlloc::new(4);
        a.add(0, 2).unwrap();
        a.add(2, 2).unwrap();
        assert_eq!(a.online_pages(), 4 * 512);
        assert!(a.add(3, 1).is_err(), "already online");
        let _low = a.alloc_block().unwrap();
        let h = a.alloc_block().unwrap();
        let p = a.alloc_page().unwrap();
        assert_eq!((h, p), (512, 1024));
        assert_eq!(a.isolate(1, 3), Ok(513));
        assert_eq!(a.alloc_page(), None, "no allocation from isolated blocks");
        assert_eq!(a.allocated_in(1, 3), alloc::vec![(512, 9), (1024, 0)]);
        assert_eq!(a.offline(1, 3), Err(AllocError::InUse(513)));
        a.free(h, 9).unwrap();
        a.free(p, 0).unwrap();
        assert_eq!(a.alloc_block(), None, "freed isolated blocks do not return to allocation");
        a.offline(1, 3).unwrap();
        assert_eq!(a.online_pages(), 512);
        assert_eq!(a.state(2), Some(State::Offline));
        a.add(1, 1).unwrap();
        assert_eq!(a.alloc_block(), Some(512));
    }

    #[test]
    fn abandoned_removal_gives_the_blocks_back() {
        let mut a = online(2);
        let p = a.alloc_page().unwrap();
        assert_eq!(a.isolate(0, 2), Ok(1));
        a.unisolate(0, 2).unwrap();
        assert_eq!(a.alloc_page(), Some(p + 1), "the split block serves again");
        assert_eq!(a.alloc_block(), Some(512));
        assert!(a.unisolate(0, 1).is_err(), "not isolated");
        assert!(matches!(a.isolate(0, 3), Err(AllocError::OutOfRange)));
    }

    #[test]
    fn carved_blocks_cannot_be_removed() {
        let mut a = online(2);
        a.carve(1).unwrap();
        assert!(matches!(a.isolate(0, 2), Err(AllocError::WrongState { block: 0, state: State::Carved })));
    }
}
