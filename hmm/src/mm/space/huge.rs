//! Splitting the 2 MiB mappings of an [`AddressSpace`] (`__split_huge_pmd`,
//! `split_huge_page`): what an operation on part of a huge leaf does first.
//!
//! A transparent huge page mapped once and referenced only by that mapping is split into 512
//! base pages, each mapped by its PTE; one referenced beyond its mapping (pinned) stays whole
//! and is mapped by 512 PTEs of its subpages, each holding a reference and a reverse-map entry
//! on the head; the huge zero page becomes 512 zero-page PTEs. Explicit (hugetlb) huge pages
//! are never split: their mappings change only at 2 MiB bounds. A huge migration entry, and a
//! referenced device-private THP, are not split (`Busy`). A split happens under a
//! `Clear` invalidation of the 2 MiB range.

use super::{AddressSpace, PAGE};
use crate::addr::Pfn;
use crate::mm::frame::{RmapEntry, flags};
use crate::mm::notify::Event;
use crate::mm::pagetable::{PMD_SIZE, Slot, Tables, USER_END};
use crate::mm::pte::{Present, Pte, Soft, SoftKind, is_table, table_entry};
use crate::mm::{Error, HUGE_FRAMES};
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

impl AddressSpace {
    /// Splits the PMD leaf at `pmd` (mapping `[base, base + 2 MiB)`) into 512 PTEs, and the
    /// compound page behind it into base pages.
    pub(in crate::mm) fn split_leaf(&mut self, pmd: Slot, base: u64) -> Result<(), Error> {
        let t = Tables::new(self.mm.platform(), self.root);
        let raw = t.load(pmd);
        if raw == 0 || is_table(raw) {
            return Ok(());
        }
        let (pfn, migrating) = match Pte::decode(raw) {
            Pte::Present(p) => (p.pfn, false),
            Pte::Soft(s) => (s.pfn, s.kind == SoftKind::Migration),
            _ => return Err(Error::Busy("corrupt huge entry")),
        };
        if migrating {
            return Err(Error::Busy("huge page under migration"));
        }
        let zero = self.mm.is_zero(pfn);
        let mut keep_folio = false;
        if !zero {
            let m = self.mm.meta(pfn).ok_or(Error::Busy("huge page without metadata"))?;
            if m.has(flags::HUGETLB) {
                return Err(Error::Invalid("explicit (hugetlb) huge pages cannot be split"));
            }
            if m.refcount() != 1 || m.mapcount() != 1 {
                // Referenced beyond its mapping (pinned): only the mapping is split, into PTEs
                // of the subpages of the page, which stays whole (`__split_huge_pmd` without
                // `split_huge_page`). A device-private one stays huge: its CPU fault path
                // migrates whole folios or base pages.
                if matches!(Pte::decode(raw), Pte::Soft(_)) {
                    return Err(Error::Busy("referenced device-private huge page"));
                }
                keep_folio = true;
            }
        }
        let pt = Tables::alloc_table(self.mm.platform()).map_err(|_| Error::NoMemory)?;
        let r = self.begin(base, base + PMD_SIZE, Event::Clear, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let old = t.swap(pmd, 0);
        self.tlb.add(base, PMD_SIZE);
        let zero_pfn = self.mm.zero_pfn();
        let sub = |i: u64| match Pte::decode(old) {
            Pte::Present(p) => {
                Pte::Present(Present { pfn: if zero { zero_pfn } else { Pfn(pfn.0 + i) }, huge: false, ..p })
            }
            Pte::Soft(s) => Pte::Soft(Soft { pfn: if zero { zero_pfn } else { Pfn(pfn.0 + i) }, huge: false, ..s }),
            other => other,
        };
        for i in 0..HUGE_FRAMES {
            self.mm.platform().store(pt, i as usize, sub(i).encode());
        }
        if keep_folio {
            self.map_compound_by_ptes(pfn, base);
        } else if !zero {
            self.split_compound(pfn, base);
        }
        t.store(pmd, table_entry(pt));
        self.mm.stats.thp_splits.fetch_add(1, Ordering::Relaxed);
        self.finish(r);
        Ok(())
    }

    /// Turns the compound page at `head`, PMD-mapped once at `base`, into 512 base pages each
    /// mapped once by its PTE (the head keeps the compound page's one reference).
    fn split_compound(&self, head: Pfn, base: u64) {
        let Some(h) = self.mm.meta(head) else { return };
        h.rmap_remove(RmapEntry::new(self.id, base, true));
        self.mm.split_folio(head, 0);
        for i in 0..HUGE_FRAMES {
            if let Some(m) = self.mm.meta(Pfn(head.0 + i)) {
                m.rmap_add(RmapEntry::new(self.id, base + i * PAGE, false));
            }
        }
    }

    /// The compound page at `head`, PMD-mapped once at `base`, stays whole and is mapped by
    /// 512 PTEs, each holding a reference and a reverse-map entry on the head ([`held_frame`]).
    fn map_compound_by_ptes(&self, head: Pfn, base: u64) {
        let Some(h) = self.mm.meta(head) else { return };
        h.rmap_remove(RmapEntry::new(self.id, base, true));
        for i in 0..HUGE_FRAMES {
            h.rmap_add(RmapEntry::new(self.id, base + i * PAGE, false));
            if i > 0 {
                h.get();
            }
        }
    }

    /// Splits the huge leaf mapping `va`, if there is one.
    pub(in crate::mm) fn split_pmd_at(&mut self, va: u64) -> Result<(), Error> {
        if let Ok(Some(pmd)) = self.tables().pmd(va, false) {
            let raw = self.tables().load(pmd);
            if raw != 0 && !is_table(raw) {
                self.split_leaf(pmd, va & !(PMD_SIZE - 1))?;
            }
        }
        Ok(())
    }

    /// Splits the huge leaves that straddle `start` or `end`.
    pub(in crate::mm) fn split_boundaries(&mut self, start: u64, end: u64) -> Result<(), Error> {
        for at in [start, end] {
            if at % PMD_SIZE == 0 || at >= USER_END {
                continue;
            }
            self.split_pmd_at(at)?;
        }
        Ok(())
    }

    /// Splits every transparent huge leaf in `[start, end)` (not zero pages, not hugetlb).
    pub(in crate::mm) fn split_all(&mut self, start: u64, end: u64, zero_too: bool) -> Result<(), Error> {
        let mut leaves = Vec::new();
        let mm = &*self.mm;
        let _ = self.tables().walk::<(), _>(start, end, &mut |l| {
            if l.huge {
                let pfn = Pte::decode(l.raw).pfn();
                let hugetlb = pfn.and_then(|p| mm.meta(p)).is_some_and(|m| m.has(flags::HUGETLB));
                let zero = pfn.is_some_and(|p| mm.is_zero(p));
                if !hugetlb && (zero_too || !zero) {
                    leaves.push((l.slot, l.va));
                }
            }
            Ok(())
        });
        for (slot, va) in leaves {
            self.split_leaf(slot, va)?;
        }
        Ok(())
    }

    pub(super) fn check_hugetlb_bounds(&self, start: u64, end: u64) -> Result<(), Error> {
        for v in self.vmas.overlapping(start, end) {
            if v.flags.hugetlb
                && ((start > v.start && !start.is_multiple_of(PMD_SIZE))
                    || (end < v.end && !end.is_multiple_of(PMD_SIZE)))
            {
                return Err(Error::Invalid("explicit huge page mappings change only at 2 MiB boundaries"));
            }
        }
        Ok(())
    }
}
