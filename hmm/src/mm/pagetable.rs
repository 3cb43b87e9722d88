//! Four-level x86_64 page tables for the user half of an address space, over [`Platform`].
//!
//! Owns: the table frames below one root (the kernel half is the platform's, copied into each
//! root by [`Platform::init_root`] and never touched here). Upper levels hold plain table
//! pointers; leaves live at PMD level (2 MiB: present with PS, or a huge software entry) or at
//! PTE level (4 KiB). This module walks and allocates tables; what goes into leaves is the
//! address-space code's business.
//!
//! Invariant: a table frame is referenced by exactly one upper-level entry; [`Tables::prune`]
//! frees tables left empty and clears the entry that pointed to them.

use super::platform::Platform;
use super::pte::{is_table, raw_pfn, table_entry};
use crate::addr::Pfn;
use core::sync::atomic::Ordering;

/// Entries per table.
pub const ENTRIES: usize = 512;
/// Bytes covered by one PMD entry.
pub const PMD_SIZE: u64 = 1 << 21;
/// Bytes covered by one PUD entry.
pub const PUD_SIZE: u64 = 1 << 30;
/// Bytes covered by one PML4 entry.
pub const PML4_SIZE: u64 = 1 << 39;
/// The end of the user half (exclusive).
pub const USER_END: u64 = 1 << 47;

/// No frame for a page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoTableMemory;

/// One entry of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The table's frame.
    pub table: Pfn,
    /// The entry's index.
    pub index: usize,
}

/// Where a 4 KiB lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PteLookup {
    /// The PTE slot.
    Pte(Slot),
    /// The PMD holds a leaf (huge mapping or huge software entry); its slot.
    Huge(Slot),
    /// No table on the way (only when not creating).
    Missing,
}

/// A leaf found by [`Tables::walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// First virtual address the leaf maps.
    pub va: u64,
    /// Where it is.
    pub slot: Slot,
    /// Its raw value (never 0).
    pub raw: u64,
    /// A PMD-level (2 MiB) leaf.
    pub huge: bool,
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * level)) & 511) as usize
}

/// The page tables below one root.
pub struct Tables<'a> {
    p: &'a dyn Platform,
    root: Pfn,
}

impl core::fmt::Debug for Tables<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tables").field("root", &self.root).finish()
    }
}

impl<'a> Tables<'a> {
    /// The tables below `root`.
    pub fn new(p: &'a dyn Platform, root: Pfn) -> Self {
        Self { p, root }
    }

    /// Allocates a zeroed table frame.
    pub fn alloc_table(p: &dyn Platform) -> Result<Pfn, NoTableMemory> {
        let pfn = p.alloc(0).ok_or(NoTableMemory)?;
        p.zero(pfn, 1);
        Ok(pfn)
    }

    /// Loads a slot.
    pub fn load(&self, s: Slot) -> u64 {
        self.p.load(s.table, s.index)
    }
    /// Stores a slot.
    pub fn store(&self, s: Slot, v: u64) {
        self.p.store(s.table, s.index, v)
    }
    /// Swaps a slot, returning the old value.
    pub fn swap(&self, s: Slot, v: u64) -> u64 {
        self.p.swap(s.table, s.index, v)
    }

    /// Follows `slot` to the next-level table, creating it if asked. `Ok(None)`: missing (or a
    /// leaf, which upper levels above the PMD never hold in a user half).
    fn next(&self, slot: Slot, create: bool) -> Result<Option<Pfn>, NoTableMemory> {
        let raw = self.load(slot);
        if is_table(raw) {
            return Ok(Some(raw_pfn(raw)));
        }
        if raw != 0 || !create {
            return Ok(None);
        }
        let t = Self::alloc_table(self.p)?;
        self.store(slot, table_entry(t));
        Ok(Some(t))
    }

    /// The PMD slot for `va`, creating the upper tables if asked.
    pub fn pmd(&self, va: u64, create: bool) -> Result<Option<Slot>, NoTableMemory> {
        let Some(pdpt) = self.next(Slot { table: self.root, index: index(va, 3) }, create)? else {
            return Ok(None);
        };
        let Some(pd) = self.next(Slot { table: pdpt, index: index(va, 2) }, create)? else {
            return Ok(None);
        };
        Ok(Some(Slot { table: pd, index: index(va, 1) }))
    }

    /// The PTE slot for `va`, creating tables if asked; stops at a PMD leaf.
    pub fn pte(&self, va: u64, create: bool) -> Result<PteLookup, NoTableMemory> {
        let Some(pmd) = self.pmd(va, create)? else { return Ok(PteLookup::Missing) };
        let raw = self.load(pmd);
        if raw != 0 && !is_table(raw) {
            return Ok(PteLookup::Huge(pmd));
        }
        match self.next(pmd, create)? {
            Some(pt) => Ok(PteLookup::Pte(Slot { table: pt, index: index(va, 0) })),
            None => Ok(PteLookup::Missing),
        }
    }

    /// Installs a fresh page table under an empty PMD slot and returns it.
    pub fn install_pt(&self, pmd: Slot) -> Result<Pfn, NoTableMemory> {
        let t = Self::alloc_table(self.p)?;
        self.store(pmd, table_entry(t));
        Ok(t)
    }

    /// Calls `f` for every non-empty leaf intersecting `[start, end)`, in address order.
    /// A PMD leaf is reported once, with its 2 MiB-aligned address, even when it only partly
    /// overlaps the range. `f` may rewrite the leaf's slot but not the table structure.
    ///
    /// Generic over the callback so that the per-leaf call is inlined: walks are the inner
    /// loop of range faults, invalidations and teardown.
    pub fn walk<E, F>(&self, start: u64, end: u64, f: &mut F) -> Result<(), E>
    where
        F: FnMut(Leaf) -> Result<(), E> + ?Sized,
    {
        let mut va = start;
        while va < end {
            let pml4 = Slot { table: self.root, index: index(va, 3) };
            let raw = self.load(pml4);
            if !is_table(raw) {
                va = (va & !(PML4_SIZE - 1)) + PML4_SIZE;
                continue;
            }
            let pdpt = Slot { table: raw_pfn(raw), index: index(va, 2) };
            let raw = self.load(pdpt);
            if !is_table(raw) {
                va = (va & !(PUD_SIZE - 1)) + PUD_SIZE;
                continue;
            }
            let pmd = Slot { table: raw_pfn(raw), index: index(va, 1) };
            let raw = self.load(pmd);
            let pmd_base = va & !(PMD_SIZE - 1);
            if raw == 0 {
                va = pmd_base + PMD_SIZE;
                continue;
            }
            if !is_table(raw) {
                f(Leaf { va: pmd_base, slot: pmd, raw, huge: true })?;
                va = pmd_base + PMD_SIZE;
                continue;
            }
            let pt = raw_pfn(raw);
            let stop = end.min(pmd_base + PMD_SIZE);
            let entries = self.p.table(pt);
            while va < stop {
                let i = index(va, 0);
                let raw = entries[i].load(Ordering::Acquire);
                if raw != 0 {
                    f(Leaf { va, slot: Slot { table: pt, index: i }, raw, huge: false })?;
                }
                va += 4096;
            }
        }
        Ok(())
    }

    fn empty(&self, table: Pfn) -> bool {
        (0..ENTRIES).all(|i| self.p.load(table, i) == 0)
    }

    /// Unhooks the page tables in `[start, end)` (user half) that hold no entries, bottom up,
    /// and appends their frames to `freed`. The caller frees them after the TLB flush, since
    /// the CPU's paging-structure caches may still point at them until then.
    pub fn prune(&self, start: u64, end: u64, freed: &mut alloc::vec::Vec<Pfn>) {
        let end = end.min(USER_END);
        let mut va = start & !(PML4_SIZE - 1);
        while va < end {
            let pml4 = Slot { table: self.root, index: index(va, 3) };
            let raw = self.load(pml4);
            if is_table(raw) {
                let pdpt = raw_pfn(raw);
                let mut v2 = va.max(start & !(PUD_SIZE - 1));
                let e2 = end.min(va + PML4_SIZE);
                while v2 < e2 {
                    let s2 = Slot { table: pdpt, index: index(v2, 2) };
                    let r2 = self.load(s2);
                    if is_table(r2) {
                        let pd = raw_pfn(r2);
                        let mut v1 = v2.max(start & !(PMD_SIZE - 1));
                        let e1 = e2.min(v2 + PUD_SIZE);
                        while v1 < e1 {
                            let s1 = Slot { table: pd, index: index(v1, 1) };
                            let r1 = self.load(s1);
                            if is_table(r1) && self.empty(raw_pfn(r1)) {
                                self.store(s1, 0);
                                freed.push(raw_pfn(r1));
                            }
                            v1 = (v1 & !(PMD_SIZE - 1)) + PMD_SIZE;
                        }
                        if self.empty(pd) {
                            self.store(s2, 0);
                            freed.push(pd);
                        }
                    }
                    v2 = (v2 & !(PUD_SIZE - 1)) + PUD_SIZE;
                }
                if self.empty(pdpt) {
                    self.store(pml4, 0);
                    freed.push(pdpt);
                }
            }
            va += PML4_SIZE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::platform::fake::FakePlatform;

    #[test]
    fn create_walk_prune() {
        let p = FakePlatform::new(64);
        let before = p.free_frames();
        let root = Tables::alloc_table(&p).unwrap();
        let t = Tables::new(&p, root);
        let PteLookup::Pte(s) = t.pte(0x40_0000_1000, true).unwrap() else { panic!() };
        t.store(s, 0x1234_5000 | 1);
        let PteLookup::Pte(s2) = t.pte(0x7fff_ffe0_0000, true).unwrap() else { panic!() };
        t.store(s2, 0x5000 | 1);
        assert_eq!(p.free_frames(), before - 7, "root + 2 × (pdpt, pd, pt)");
        let mut seen = alloc::vec::Vec::new();
        t.walk::<(), _>(0, USER_END, &mut |l| {
            seen.push((l.va, l.raw));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, alloc::vec![(0x40_0000_1000, 0x1234_5001), (0x7fff_ffe0_0000, 0x5001)]);
        let mut freed = alloc::vec::Vec::new();
        t.prune(0, USER_END, &mut freed);
        assert!(freed.is_empty(), "nothing empty yet");
        t.store(s, 0);
        t.prune(0, USER_END, &mut freed);
        assert_eq!(freed.len(), 3);
        assert_eq!(t.pte(0x40_0000_1000, false).unwrap(), PteLookup::Missing);
        t.store(s2, 0);
        t.prune(0x7fff_ffe0_0000, 0x7fff_ffe0_1000, &mut freed);
        assert_eq!(freed.len(), 6);
        freed.iter().for_each(|f| p.free(*f, 0));
        p.free(root, 0);
        assert_eq!(p.free_frames(), before);
    }

    #[test]
    fn huge_leaf_stops_pte_lookup() {
        let p = FakePlatform::new(16);
        let root = Tables::alloc_table(&p).unwrap();
        let t = Tables::new(&p, root);
        let pmd = t.pmd(0x20_0000, true).unwrap().unwrap();
        t.store(pmd, 0x4000_0000 | 0x81);
        assert_eq!(t.pte(0x20_1000, true).unwrap(), PteLookup::Huge(pmd));
        let mut n = 0;
        t.walk::<(), _>(0x30_0000, 0x30_1000, &mut |l| {
            assert!(l.huge && l.va == 0x20_0000);
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
