//! Fork of an [`AddressSpace`] (`dup_mmap`, `copy_page_range`): the child gets the same VMAs
//! and a copy of every leaf.
//!
//! Private (copy-on-write) mappings are write-protected in parent and child under a
//! `ProtectionPage` invalidation of the parent; shared mappings share their pages. A THP is
//! split first (it has one mapping; hugetlb pages and the huge zero page stay shared at
//! 2 MiB); device-exclusive entries are restored in the parent
//! before they are copied; migration entries are copied (with a reverse-map entry on the page,
//! no reference), so the migration in flight puts the new page in the child too.

use super::{AddressSpace, PAGE, held_frame, leaf_size};
use crate::mm::Error;
use crate::mm::frame::RmapEntry;
use crate::mm::notify::Event;
use crate::mm::pagetable::{PteLookup, Tables};
use crate::mm::pte::{Present, Pte, Soft, SoftKind};
use alloc::vec::Vec;

impl AddressSpace {
    /// Fork: a child address space with the same mappings. Private pages become copy-on-write
    /// in both; shared mappings share pages.
    pub fn fork(&mut self) -> Result<AddressSpace, Error> {
        let mut child = AddressSpace::new(&self.mm)?;
        let ranges: Vec<(u64, u64, bool)> = self.vmas.iter().map(|v| (v.start, v.end, v.is_cow())).collect();
        for &(s, e, cow) in &ranges {
            if cow {
                // A transparent huge page has one mapping; fork splits it (hugetlb pages and
                // the huge zero page stay shared at 2 MiB).
                self.split_all(s, e, false)?;
            }
        }
        child.vmas = self.vmas.clone();
        for (s, e, cow) in ranges {
            // Only copy-on-write mappings change in the parent (write protection), so only
            // they are invalidated, as in Linux's copy_page_range. Shared mappings never hold
            // device-exclusive entries (those exist in private anonymous memory only).
            let r = cow.then(|| self.begin(s, e, Event::ProtectionPage, None));
            let res = self.copy_range(&mut child, s, e, cow);
            match r {
                Some(r) => self.finish(r),
                None => self.flush(),
            }
            res?;
        }
        Ok(child)
    }

    fn copy_range(&mut self, child: &mut AddressSpace, start: u64, end: u64, cow: bool) -> Result<(), Error> {
        let pt = Tables::new(self.mm.platform(), self.root);
        let ct = Tables::new(child.mm.platform(), child.root);
        let mm = &*self.mm;
        let cid = child.id;
        let tlb = &mut self.tlb;
        pt.walk::<Error, _>(start, end, &mut |l| {
            let dest = if l.huge {
                ct.pmd(l.va, true).ok().flatten()
            } else {
                match ct.pte(l.va, true) {
                    Ok(PteLookup::Pte(s)) => Some(s),
                    _ => None,
                }
            };
            let dest = dest.ok_or(Error::NoMemory)?;
            let mut raw = pt.load(l.slot);
            if let Pte::Soft(s) = Pte::decode(raw) {
                match s.kind {
                    SoftKind::Migration => {
                        // copy_nonpresent_pte: the child gets the migration entry too (read-only
                        // in both when the mapping is copy-on-write, below). It holds no
                        // reference, but a reverse-map entry on the page, so the migration
                        // finds it and puts the new page in the child as well.
                        if let Some(m) = mm.meta(s.pfn) {
                            m.rmap_add(RmapEntry::new(cid, l.va, l.huge));
                        }
                    }
                    SoftKind::Exclusive => {
                        // Device-exclusive entries are restored in the parent first.
                        raw = Pte::Present(Present {
                            pfn: s.pfn,
                            write: s.write,
                            exec: s.exec,
                            dirty: s.dirty,
                            young: s.young,
                            huge: false,
                        })
                        .encode();
                        pt.store(l.slot, raw);
                        tlb.add(l.va, PAGE);
                    }
                    _ => {}
                }
            }
            let writable = match Pte::decode(raw) {
                Pte::Present(p) => p.write,
                Pte::Soft(s) => s.write,
                _ => false,
            };
            if let Some((pfn, _)) = held_frame(mm, raw) {
                mm.get_page(pfn);
                if let Some(m) = mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(cid, l.va, l.huge));
                }
            }
            let wp = |raw: u64| match Pte::decode(raw) {
                Pte::Present(p) => Pte::Present(Present { write: false, ..p }).encode(),
                Pte::Soft(s) => Pte::Soft(Soft { write: false, ..s }).encode(),
                _ => raw,
            };
            if cow && writable {
                let cur = pt.swap(l.slot, 0);
                pt.store(l.slot, wp(cur));
                tlb.add(l.va, leaf_size(l.huge));
                ct.store(dest, wp(raw));
            } else {
                ct.store(dest, raw);
            }
            Ok(())
        })
    }
}
