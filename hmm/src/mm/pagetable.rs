//! Four-level x86_64 page tables over [`TableMemory`]: the one walker of the kernel, for the
//! user half of every address space (over [`Platform`]) and for the kernel's own tables (over
//! the kernel's direct map, `kernel/src/platform/mm/paging.rs`).
//!
//! Owns: the table frames below one root that it walks. For a user half, the kernel half is
//! the platform's, copied into each root by [`Platform::init_root`] and never touched here.
//! Upper levels hold table pointers, or leaves: 1 GiB at PUD level and 2 MiB at PMD level
//! (present with PS, or, in a user half, a huge software entry), 4 KiB at PTE level. What goes
//! into leaves is the caller's business (the address-space code's, or the kernel's mapping
//! calls): this module walks, allocates and frees tables, and never splits a leaf that is in
//! the way ([`Lookup::Blocked`]).
//!
//! Invariants: a table frame is referenced by exactly one upper-level entry; [`Tables::prune`]
//! and [`Tables::prune_path`] free tables left empty and clear the entry that pointed to them.
//! Every table entry this module writes carries the flags of its [`Tables`] ([`Tables::new`]:
//! present, writable, user; [`Tables::kernel`]: present, writable, no user bit): permissions
//! are decided by the leaf alone.

use super::platform::Platform;
use super::pte::{P, RW, US, is_table, raw_pfn};
use crate::addr::Pfn;
use core::sync::atomic::{AtomicU64, Ordering};

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

/// The flags of a table entry in a user half: the user bit is set on the way down, so that
/// user access is decided by the leaf.
const USER_TABLE: u64 = P | RW | US;
/// The flags of a table entry in the kernel half: no user bit, so no user access below it
/// whatever a leaf says.
const KERNEL_TABLE: u64 = P | RW;

/// Page-table frames as a walk reaches them: what [`Tables`] needs from the machine. Every
/// [`Platform`] is one (over its frame allocator and entry accessors); the kernel's own tables
/// implement it over the direct map and the frame allocator's bootstrap run.
pub trait TableMemory {
    /// A zeroed frame for a table; `None` when there is none.
    fn alloc_table(&self) -> Option<Pfn>;
    /// Returns a frame from [`alloc_table`](Self::alloc_table).
    fn free_table(&self, table: Pfn);
    /// Loads entry `index` of the table in frame `table`.
    fn load_entry(&self, table: Pfn, index: usize) -> u64;
    /// Stores entry `index` of the table in frame `table`.
    fn store_entry(&self, table: Pfn, index: usize, value: u64);
    /// Atomically replaces an entry, returning the old value.
    fn swap_entry(&self, table: Pfn, index: usize, value: u64) -> u64;
    /// The 512 entries of the table in frame `table`.
    fn entries(&self, table: Pfn) -> &[AtomicU64];
}

impl<M: Platform + ?Sized> TableMemory for M {
    fn alloc_table(&self) -> Option<Pfn> {
        let pfn = self.alloc(0)?;
        self.zero(pfn, 1);
        Some(pfn)
    }
    fn free_table(&self, table: Pfn) {
        self.free(table, 0)
    }
    fn load_entry(&self, table: Pfn, index: usize) -> u64 {
        self.load(table, index)
    }
    fn store_entry(&self, table: Pfn, index: usize, value: u64) {
        self.store(table, index, value)
    }
    fn swap_entry(&self, table: Pfn, index: usize, value: u64) -> u64 {
        self.swap(table, index, value)
    }
    fn entries(&self, table: Pfn) -> &[AtomicU64] {
        self.table(table)
    }
}

/// No frame for a page table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoTableMemory;

impl core::fmt::Display for NoTableMemory {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no frame for a page table")
    }
}

/// A level of the hierarchy, named by the entries its tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Page-table entries: 4 KiB leaves.
    Pte = 0,
    /// Page-directory entries: 2 MiB leaves or page tables.
    Pmd = 1,
    /// Page-directory-pointer entries: 1 GiB leaves or page directories.
    Pud = 2,
    /// The root's entries: page-directory-pointer tables only.
    Pml4 = 3,
}

impl Level {
    /// Bytes one entry of this level covers.
    pub const fn bytes(self) -> u64 {
        1 << (12 + 9 * self as u32)
    }

    /// The index of `va`'s entry in a table of this level.
    pub const fn index(self, va: u64) -> usize {
        ((va >> (12 + 9 * self as u32)) & 511) as usize
    }

    /// The level below (`None` below the PTEs).
    const fn down(self) -> Option<Self> {
        match self {
            Self::Pte => None,
            Self::Pmd => Some(Self::Pte),
            Self::Pud => Some(Self::Pmd),
            Self::Pml4 => Some(Self::Pud),
        }
    }

    /// The level above (`None` above the root's entries).
    const fn up(self) -> Option<Self> {
        match self {
            Self::Pte => Some(Self::Pmd),
            Self::Pmd => Some(Self::Pud),
            Self::Pud => Some(Self::Pml4),
            Self::Pml4 => None,
        }
    }
}

/// One entry of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The table's frame.
    pub table: Pfn,
    /// The entry's index.
    pub index: usize,
}

/// Where a walk to one level's entry ended ([`Tables::slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The entry at the level asked for (empty or not).
    Slot(Slot),
    /// An entry above that level is not a table (a huge leaf, or a software entry): it covers
    /// the address, and the walk does not split it.
    Blocked {
        /// The entry in the way.
        slot: Slot,
        /// Its level.
        level: Level,
    },
    /// No table on the way (only when not creating).
    Missing,
}

/// The entry a walk for one address ends at ([`Tables::find`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Where it is.
    pub slot: Slot,
    /// Its level: [`Level::Pte`], or the level of an upper entry that is not a table.
    pub level: Level,
    /// Its raw value (never 0).
    pub raw: u64,
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

/// The page tables below one root, over the table memory `M` (by default a [`Platform`]).
pub struct Tables<'a, M: TableMemory + ?Sized = dyn Platform + 'a> {
    p: &'a M,
    root: Pfn,
    /// The flags of the table entries this walker creates.
    table_flags: u64,
}

impl<M: TableMemory + ?Sized> core::fmt::Debug for Tables<'_, M> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tables").field("root", &self.root).field("table_flags", &self.table_flags).finish()
    }
}

impl<'a, M: TableMemory + ?Sized> Tables<'a, M> {
    /// The tables of a user half below `root`: tables it creates are user-accessible.
    pub fn new(p: &'a M, root: Pfn) -> Self {
        Self { p, root, table_flags: USER_TABLE }
    }

    /// The tables of the kernel half below `root`: tables it creates are not user-accessible.
    pub fn kernel(p: &'a M, root: Pfn) -> Self {
        Self { p, root, table_flags: KERNEL_TABLE }
    }

    /// Allocates a zeroed table frame.
    pub fn alloc_table(p: &M) -> Result<Pfn, NoTableMemory> {
        p.alloc_table().ok_or(NoTableMemory)
    }

    /// Loads a slot.
    pub fn load(&self, s: Slot) -> u64 {
        self.p.load_entry(s.table, s.index)
    }
    /// Stores a slot.
    pub fn store(&self, s: Slot, v: u64) {
        self.p.store_entry(s.table, s.index, v)
    }
    /// Swaps a slot, returning the old value.
    pub fn swap(&self, s: Slot, v: u64) -> u64 {
        self.p.swap_entry(s.table, s.index, v)
    }

    /// Hooks a fresh table under the empty `slot` and returns it.
    fn hook(&self, slot: Slot) -> Result<Pfn, NoTableMemory> {
        let t = Self::alloc_table(self.p)?;
        self.store(slot, self.table_flags | (t.0 << 12));
        Ok(t)
    }

    /// The entry for `va` at `level`, creating the missing tables above it if asked. An entry
    /// above `level` that is neither empty nor a table is [`Lookup::Blocked`], never replaced.
    pub fn slot(&self, va: u64, level: Level, create: bool) -> Result<Lookup, NoTableMemory> {
        let mut table = self.root;
        let mut l = Level::Pml4;
        while l > level {
            let slot = Slot { table, index: l.index(va) };
            let raw = self.load(slot);
            table = if is_table(raw) {
                raw_pfn(raw)
            } else if raw != 0 {
                return Ok(Lookup::Blocked { slot, level: l });
            } else if create {
                self.hook(slot)?
            } else {
                return Ok(Lookup::Missing);
            };
            l = l.down().expect("above `level`, so not the PTE level");
        }
        Ok(Lookup::Slot(Slot { table, index: level.index(va) }))
    }

    /// The entry a walk for `va` ends at: the PTE, or the first upper entry that is not a
    /// table (a 1 GiB or 2 MiB leaf, or a software entry). `None` where the walk meets an
    /// empty entry.
    pub fn find(&self, va: u64) -> Option<Entry> {
        let mut table = self.root;
        let mut level = Level::Pml4;
        loop {
            let slot = Slot { table, index: level.index(va) };
            let raw = self.load(slot);
            if raw == 0 {
                return None;
            }
            match level.down() {
                Some(below) if is_table(raw) => {
                    table = raw_pfn(raw);
                    level = below;
                }
                _ => return Some(Entry { slot, level, raw }),
            }
        }
    }

    /// The PMD slot for `va`, creating the upper tables if asked (`Ok(None)`: missing, or a
    /// PUD leaf in the way).
    pub fn pmd(&self, va: u64, create: bool) -> Result<Option<Slot>, NoTableMemory> {
        Ok(match self.slot(va, Level::Pmd, create)? {
            Lookup::Slot(s) => Some(s),
            Lookup::Blocked { .. } | Lookup::Missing => None,
        })
    }

    /// The PTE slot for `va`, creating tables if asked; stops at a PMD leaf.
    pub fn pte(&self, va: u64, create: bool) -> Result<PteLookup, NoTableMemory> {
        Ok(match self.slot(va, Level::Pte, create)? {
            Lookup::Slot(s) => PteLookup::Pte(s),
            Lookup::Blocked { slot, level: Level::Pmd } => PteLookup::Huge(slot),
            Lookup::Blocked { .. } | Lookup::Missing => PteLookup::Missing,
        })
    }

    /// Installs a fresh page table under an empty PMD slot and returns it.
    pub fn install_pt(&self, pmd: Slot) -> Result<Pfn, NoTableMemory> {
        self.hook(pmd)
    }

    /// Calls `f` for every non-empty leaf intersecting `[start, end)`, in address order.
    /// A PMD leaf is reported once, with its 2 MiB-aligned address, even when it only partly
    /// overlaps the range. `f` may rewrite the leaf's slot but not the table structure.
    /// Entries above the PMD that are not tables (1 GiB leaves, which only the kernel half
    /// holds) are passed over: this is the user halves' range walk.
    ///
    /// Generic over the callback so that the per-leaf call is inlined: walks are the inner
    /// loop of range faults, invalidations and teardown.
    pub fn walk<E, F>(&self, start: u64, end: u64, f: &mut F) -> Result<(), E>
    where
        F: FnMut(Leaf) -> Result<(), E> + ?Sized,
    {
        let mut va = start;
        while va < end {
            let pml4 = Slot { table: self.root, index: Level::Pml4.index(va) };
            let raw = self.load(pml4);
            if !is_table(raw) {
                va = (va & !(PML4_SIZE - 1)) + PML4_SIZE;
                continue;
            }
            let pdpt = Slot { table: raw_pfn(raw), index: Level::Pud.index(va) };
            let raw = self.load(pdpt);
            if !is_table(raw) {
                va = (va & !(PUD_SIZE - 1)) + PUD_SIZE;
                continue;
            }
            let pmd = Slot { table: raw_pfn(raw), index: Level::Pmd.index(va) };
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
            let entries = self.p.entries(pt);
            while va < stop {
                let i = Level::Pte.index(va);
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
        (0..ENTRIES).all(|i| self.p.load_entry(table, i) == 0)
    }

    /// Unhooks the tables on `va`'s path that hold no entries, bottom up: first the table of
    /// `level`'s entries (the one a leaf was just cleared from), then the one above, and so on,
    /// stopping at the first table that is not empty and before the tables of level `keep`
    /// (the root is never unhooked). Each frame unhooked goes to `free`, in that order; the
    /// caller decides when it is freed (the TLB's paging-structure caches may still hold it).
    pub fn prune_path(&self, va: u64, level: Level, keep: Level, free: &mut dyn FnMut(Pfn)) {
        // path[l] = the table of level l's entries on the way to `va`.
        let mut path = [self.root; 4];
        let mut l = Level::Pml4;
        while l > level {
            let raw = self.load(Slot { table: path[l as usize], index: l.index(va) });
            if !is_table(raw) {
                return; // nothing below to prune
            }
            l = l.down().expect("above `level`");
            path[l as usize] = raw_pfn(raw);
        }
        let mut l = level;
        while l < keep && self.empty(path[l as usize]) {
            let above = l.up().expect("below `keep`, so not the root's level");
            self.store(Slot { table: path[above as usize], index: above.index(va) }, 0);
            free(path[l as usize]);
            l = above;
        }
    }

    /// Unhooks the page tables in `[start, end)` (user half) that hold no entries, bottom up,
    /// and appends their frames to `freed`. The caller frees them after the TLB flush, since
    /// the CPU's paging-structure caches may still point at them until then.
    pub fn prune(&self, start: u64, end: u64, freed: &mut alloc::vec::Vec<Pfn>) {
        let end = end.min(USER_END);
        let mut va = start & !(PML4_SIZE - 1);
        while va < end {
            let pml4 = Slot { table: self.root, index: Level::Pml4.index(va) };
            let raw = self.load(pml4);
            if is_table(raw) {
                let pdpt = raw_pfn(raw);
                let mut v2 = va.max(start & !(PUD_SIZE - 1));
                let e2 = end.min(va + PML4_SIZE);
                while v2 < e2 {
                    let s2 = Slot { table: pdpt, index: Level::Pud.index(v2) };
                    let r2 = self.load(s2);
                    if is_table(r2) {
                        let pd = raw_pfn(r2);
                        let mut v1 = v2.max(start & !(PMD_SIZE - 1));
                        let e1 = e2.min(v2 + PUD_SIZE);
                        while v1 < e1 {
                            let s1 = Slot { table: pd, index: Level::Pmd.index(v1) };
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
    use crate::mm::pte::PS;

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

    /// The table entries on `va`'s way down to its PTE (root's, PUD's, PMD's).
    fn path_entries(t: &Tables<'_, FakePlatform>, va: u64) -> [u64; 3] {
        let root = t.root;
        let pml4 = t.load(Slot { table: root, index: Level::Pml4.index(va) });
        let pud = t.load(Slot { table: raw_pfn(pml4), index: Level::Pud.index(va) });
        let pmd = t.load(Slot { table: raw_pfn(pud), index: Level::Pmd.index(va) });
        [pml4, pud, pmd]
    }

    #[test]
    fn kernel_tables_are_not_user_accessible_and_user_tables_are() {
        let p = FakePlatform::new(16);
        let root = Tables::alloc_table(&p).unwrap();
        let kernel_va = 0xffff_c000_0020_3000;
        let k = Tables::kernel(&p, root);
        assert!(matches!(k.slot(kernel_va, Level::Pte, true), Ok(Lookup::Slot(_))));
        for (level, e) in ["PML4", "PUD", "PMD"].iter().zip(path_entries(&k, kernel_va)) {
            assert!(is_table(e) && e & RW != 0, "{level} entry {e:#x} is a writable table");
            assert_eq!(e & US, 0, "{level} entry {e:#x} of a kernel walk has the user bit");
        }
        let u = Tables::new(&p, root);
        let user_va = 0x40_0000_1000;
        assert!(matches!(u.slot(user_va, Level::Pte, true), Ok(Lookup::Slot(_))));
        for (level, e) in ["PML4", "PUD", "PMD"].iter().zip(path_entries(&u, user_va)) {
            assert_eq!(e & (P | RW | US), P | RW | US, "{level} entry {e:#x} of a user walk");
        }
        // The same page table through pte(), install_pt's path, also honours the walk's flags.
        let pmd = k.pmd(kernel_va + PMD_SIZE, true).unwrap().unwrap();
        k.install_pt(pmd).unwrap();
        assert_eq!(k.load(pmd) & (P | RW | US), P | RW);
    }

    #[test]
    fn one_gib_leaf_is_found_and_blocks_lower_walks() {
        let p = FakePlatform::new(16);
        let root = Tables::alloc_table(&p).unwrap();
        let t = Tables::kernel(&p, root);
        let va = 0xffff_c000_4000_0000; // 1 GiB aligned
        let Lookup::Slot(pud) = t.slot(va, Level::Pud, true).unwrap() else { panic!("no PUD slot") };
        let leaf = 0x8000_0000 | P | RW | PS;
        t.store(pud, leaf);
        let inside = va + 0x1234_5678;
        assert_eq!(t.find(inside), Some(Entry { slot: pud, level: Level::Pud, raw: leaf }));
        let free = p.free_frames();
        for level in [Level::Pte, Level::Pmd] {
            assert_eq!(
                t.slot(inside, level, true).unwrap(),
                Lookup::Blocked { slot: pud, level: Level::Pud },
                "a walk to {level:?} must stop at the 1 GiB leaf"
            );
        }
        assert_eq!(p.free_frames(), free, "no table was created under the leaf");
        assert_eq!(t.load(pud), leaf, "the leaf is kept");
        assert_eq!(t.pmd(inside, true).unwrap(), None);
        assert_eq!(t.pte(inside, true).unwrap(), PteLookup::Missing);
        // The neighbouring gigabyte is walked as usual.
        assert!(matches!(t.slot(va + PUD_SIZE, Level::Pte, true), Ok(Lookup::Slot(_))));
        assert_eq!(t.find(va + PUD_SIZE), None, "its PTE is empty");
    }

    #[test]
    fn two_mib_leaf_is_in_the_way_of_a_4k_walk_and_a_pte_is_found_at_its_level() {
        let p = FakePlatform::new(16);
        let root = Tables::alloc_table(&p).unwrap();
        let t = Tables::kernel(&p, root);
        let va = 0xffff_8000_0020_0000;
        let Lookup::Slot(pmd) = t.slot(va, Level::Pmd, true).unwrap() else { panic!("no PMD slot") };
        t.store(pmd, 0x20_0000 | P | PS);
        assert_eq!(t.slot(va + 0x5000, Level::Pte, true).unwrap(), Lookup::Blocked { slot: pmd, level: Level::Pmd });
        assert_eq!(t.find(va + 0x5000).map(|e| e.level), Some(Level::Pmd));
        let Lookup::Slot(pte) = t.slot(va + PMD_SIZE, Level::Pte, true).unwrap() else { panic!("no PTE slot") };
        // At PTE level bit 7 is PAT, not PS: the entry is still the PTE.
        t.store(pte, 0x9000 | P | PS);
        assert_eq!(t.find(va + PMD_SIZE), Some(Entry { slot: pte, level: Level::Pte, raw: 0x9000 | P | PS }));
        assert_eq!(t.slot(va, Level::Pte, false).unwrap(), Lookup::Blocked { slot: pmd, level: Level::Pmd });
        assert_eq!(t.slot(va + PUD_SIZE, Level::Pte, false).unwrap(), Lookup::Missing);
        assert_eq!(t.find(va + PUD_SIZE), None);
    }

    #[test]
    fn prune_path_frees_empty_tables_up_to_the_kept_level() {
        let p = FakePlatform::new(16);
        let root = Tables::alloc_table(&p).unwrap();
        let t = Tables::kernel(&p, root);
        let (a, b) = (0xffff_c000_0000_0000, 0xffff_c000_0000_1000); // one page table
        let PteLookup::Pte(sa) = t.pte(a, true).unwrap() else { panic!() };
        let PteLookup::Pte(sb) = t.pte(b, true).unwrap() else { panic!() };
        t.store(sa, 0x1000 | P);
        t.store(sb, 0x2000 | P);
        let [pml4, pud, pmd] = path_entries(&t, a);
        let mut freed = alloc::vec::Vec::new();
        t.store(sa, 0);
        t.prune_path(a, Level::Pte, Level::Pud, &mut |f| freed.push(f));
        assert!(freed.is_empty(), "the page table still maps b");
        t.store(sb, 0);
        t.prune_path(b, Level::Pte, Level::Pud, &mut |f| freed.push(f));
        assert_eq!(freed, [raw_pfn(pmd), raw_pfn(pud)], "PT, then PD; the kept PDPT stays");
        assert_eq!(t.load(Slot { table: root, index: Level::Pml4.index(a) }), pml4);
        assert_eq!(t.load(Slot { table: raw_pfn(pml4), index: Level::Pud.index(a) }), 0, "the PD is unhooked");
        assert_eq!(t.find(a), None);
        // Up to the root: the PDPT goes too, the root stays.
        let Lookup::Slot(leaf) = t.slot(a, Level::Pmd, true).unwrap() else { panic!() };
        t.store(leaf, 0x20_0000 | P | PS);
        let pd = leaf.table;
        t.store(leaf, 0);
        freed.clear();
        t.prune_path(a, Level::Pmd, Level::Pml4, &mut |f| freed.push(f));
        assert_eq!(freed, [pd, raw_pfn(pml4)]);
        assert_eq!(t.load(Slot { table: root, index: Level::Pml4.index(a) }), 0);
        // A path that ends above the level asked for has nothing to prune.
        freed.clear();
        t.prune_path(a, Level::Pte, Level::Pml4, &mut |f| freed.push(f));
        assert!(freed.is_empty());
    }

    #[test]
    fn levels_cover_their_sizes() {
        assert_eq!(
            [Level::Pte, Level::Pmd, Level::Pud, Level::Pml4].map(Level::bytes),
            [4096, PMD_SIZE, PUD_SIZE, PML4_SIZE]
        );
        let va = 0xffff_c0ab_cdef_1234u64;
        assert_eq!(Level::Pml4.index(va), 0x181);
        assert_eq!(Level::Pud.index(va), 0x0af);
        assert_eq!(Level::Pmd.index(va), 0x06f);
        assert_eq!(Level::Pte.index(va), 0x0f1);
    }
}
