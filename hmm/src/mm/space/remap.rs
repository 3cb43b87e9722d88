//! `mremap` on an [`AddressSpace`]: shrinking, growing in place, and moving a mapping with its
//! pages (`MREMAP_MAYMOVE`, `MREMAP_FIXED`, `MREMAP_DONTUNMAP`).
//!
//! Owns [`RemapFlags`] and the move of leaves between addresses. Invariants: a move creates
//! every destination table before it changes anything (it cannot fail halfway); huge leaves
//! move whole only to a 2 MiB-aligned destination, and are split otherwise; every leaf moves
//! with its reverse-map entry (a migration entry of an eviction or fork's copy of one
//! included, so that the migration finds it at its new address).

use super::{AddressSpace, MMAP_FLOOR, MMAP_TOP, PAGE, held_frame, leaf_size};
use crate::addr::align_up;
use crate::mm::Error;
use crate::mm::frame::RmapEntry;
use crate::mm::notify::Event;
use crate::mm::pagetable::{PMD_SIZE, PteLookup, Tables, USER_END};
use crate::mm::pte::{Pte, SoftKind, is_table, raw_pfn};

/// `mremap` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemapFlags {
    /// `MREMAP_MAYMOVE`.
    pub may_move: bool,
    /// `MREMAP_FIXED` (with the new address).
    pub fixed: bool,
    /// `MREMAP_DONTUNMAP`: move the pages, keep the old (now empty) mapping.
    pub dont_unmap: bool,
}

impl AddressSpace {
    /// `mremap`: resizes and/or moves a mapping; returns its (new) address.
    pub fn mremap(
        &mut self,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: RemapFlags,
        new_addr: u64,
    ) -> Result<u64, Error> {
        if !old_addr.is_multiple_of(PAGE) {
            return Err(Error::Invalid("old address is not page-aligned"));
        }
        if flags.fixed && !flags.may_move {
            return Err(Error::Invalid("MREMAP_FIXED needs MREMAP_MAYMOVE"));
        }
        if flags.dont_unmap && !flags.may_move {
            return Err(Error::Invalid("MREMAP_DONTUNMAP needs MREMAP_MAYMOVE"));
        }
        if old_len == 0 {
            return Err(Error::Invalid("old size 0 (duplicating a shared mapping) is not supported"));
        }
        if new_len == 0 {
            return Err(Error::Invalid("new size is zero"));
        }
        let old_len = align_up(old_len, PAGE).ok_or(Error::Invalid("old size overflows"))?;
        let new_len = align_up(new_len, PAGE).ok_or(Error::Invalid("new size overflows"))?;
        if flags.dont_unmap && old_len != new_len {
            return Err(Error::Invalid("MREMAP_DONTUNMAP needs equal old and new sizes"));
        }
        let old_end = old_addr
            .checked_add(old_len)
            .filter(|e| *e <= USER_END)
            .ok_or(Error::Invalid("old range extends past the user address space"))?;
        let vma = self.vmas.find(old_addr).cloned().ok_or(Error::Fault("old range is not mapped"))?;
        if old_end > vma.end {
            return Err(Error::Fault("old range spans more than one mapping"));
        }
        if vma.flags.hugetlb && !(old_addr | old_len | new_len).is_multiple_of(PMD_SIZE) {
            return Err(Error::Invalid("explicit huge page mappings move and resize in 2 MiB units"));
        }
        if flags.dont_unmap && !(vma.is_anon() && vma.is_cow()) {
            return Err(Error::Invalid("MREMAP_DONTUNMAP works on private anonymous mappings only"));
        }
        if flags.fixed {
            let gran = if vma.flags.hugetlb { PMD_SIZE } else { PAGE };
            if !new_addr.is_multiple_of(gran) {
                return Err(Error::Invalid("new address is not aligned"));
            }
            let new_end = new_addr
                .checked_add(new_len)
                .filter(|e| *e <= USER_END && new_addr >= MMAP_FLOOR)
                .ok_or(Error::Invalid("new range outside the user address space"))?;
            if new_addr < old_end && old_addr < new_end {
                return Err(Error::Invalid("old and new ranges overlap"));
            }
            self.munmap(new_addr, new_len)?;
            let mut moved = old_len;
            if new_len < old_len {
                self.munmap(old_addr + new_len, old_len - new_len)?;
                moved = new_len;
            }
            self.move_range(old_addr, moved, new_addr, new_len, flags.dont_unmap)?;
            return Ok(new_addr);
        }
        if !flags.dont_unmap {
            if new_len <= old_len {
                if new_len < old_len {
                    self.munmap(old_addr + new_len, old_len - new_len)?;
                }
                return Ok(old_addr);
            }
            let grow_end = old_addr.checked_add(new_len).filter(|e| *e <= USER_END);
            if let Some(grow_end) = grow_end
                && old_end == vma.end
                && self.vmas.is_free(old_end, grow_end)
            {
                for v in self.vmas.range_mut(vma.start, vma.start + 1) {
                    v.end = grow_end;
                }
                self.vmas.merge_around(old_addr, grow_end);
                return Ok(old_addr);
            }
            if !flags.may_move {
                return Err(Error::NoSpace("cannot grow in place and MREMAP_MAYMOVE was not given"));
            }
        }
        let align = Self::placement_align(vma.flags.hugetlb || (vma.is_anon() && vma.is_cow()), new_len);
        let new = self
            .vmas
            .find_gap(new_len, align, MMAP_FLOOR, MMAP_TOP)
            .ok_or(Error::NoSpace("no free range big enough"))?;
        self.move_range(old_addr, old_len, new, new_len, flags.dont_unmap)?;
        Ok(new)
    }

    /// Moves the pages of `[old, old + old_len)` (inside one VMA) to `new`, creating a VMA of
    /// `new_len` there (the free range is the caller's guarantee).
    fn move_range(&mut self, old: u64, old_len: u64, new: u64, new_len: u64, keep_old: bool) -> Result<(), Error> {
        let old_end = old + old_len;
        self.vmas.split_at(old);
        self.vmas.split_at(old_end);
        let tmpl = self.vmas.find(old).cloned().ok_or(Error::Fault("old range is not mapped"))?;
        // Huge leaves move whole only if they stay 2 MiB-aligned; otherwise split them.
        if new.wrapping_sub(old).is_multiple_of(PMD_SIZE) {
            self.split_boundaries(old, old_end)?;
        } else {
            self.split_all(old, old_end, true)?;
        }
        // Create every destination table first, so the move itself cannot fail halfway.
        let t = Tables::new(self.mm.platform(), self.root);
        let prepared = t.walk::<(), _>(old, old_end, &mut |l| {
            let dest = new + (l.va - old);
            let ok = if l.huge {
                t.pmd(dest, true).ok().flatten().is_some()
            } else {
                matches!(t.pte(dest, true), Ok(PteLookup::Pte(_)))
            };
            if ok { Ok(()) } else { Err(()) }
        });
        if prepared.is_err() {
            self.prune(new, new + new_len);
            self.flush();
            return Err(Error::NoMemory);
        }
        let r = self.begin(old, old_end, Event::Unmap, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let mm = &*self.mm;
        let id = self.id;
        let tlb = &mut self.tlb;
        let dead = &mut self.dead_tables;
        let _ = t.walk::<(), _>(old, old_end, &mut |l| {
            let dest = new + (l.va - old);
            let raw = t.swap(l.slot, 0);
            tlb.add(l.va, leaf_size(l.huge));
            let slot = if l.huge {
                let Ok(Some(pmd)) = t.pmd(dest, false) else { return Ok(()) };
                let cur = t.load(pmd);
                if is_table(cur) {
                    // An empty page table left over at the destination: the leaf replaces it.
                    dead.push(raw_pfn(cur));
                }
                pmd
            } else {
                let Ok(PteLookup::Pte(s)) = t.pte(dest, false) else { return Ok(()) };
                s
            };
            t.store(slot, raw);
            // An eviction's migration entry, or fork's copy of one, has a reverse-map entry to
            // move too (the finalize finds it there).
            let rmapped = match Pte::decode(raw) {
                Pte::Soft(s) if s.kind == SoftKind::Migration => Some(s.pfn),
                _ => held_frame(mm, raw).map(|(pfn, _)| pfn),
            };
            if let Some(m) = rmapped.and_then(|pfn| mm.meta(pfn)) {
                m.rmap_move(RmapEntry::new(id, l.va, l.huge), RmapEntry::new(id, dest, l.huge));
            }
            Ok(())
        });
        if !keep_old {
            self.vmas.remove_range(old, old_end);
            self.prune(old, old_end);
        }
        self.finish(r);
        let mut nv = tmpl;
        nv.start = new;
        nv.end = new + new_len;
        self.vmas.insert(nv);
        self.vmas.merge_around(new, new + new_len);
        Ok(())
    }
}
