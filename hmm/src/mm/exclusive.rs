//! Device-exclusive access (`make_device_exclusive`, `mm/rmap.c`).
//!
//! A device that needs atomic access to a page of system memory takes it exclusively: the
//! CPU's entry becomes a device-exclusive software entry (still holding the page's reference
//! and reverse-map entry, with write, dirty and young carried), after an `Exclusive`
//! invalidation with the device's owner. Any later CPU access restores the normal entry through
//! the fault handler, which sends an `Exclusive` invalidation of its own, so the device learns
//! it lost exclusivity through its interval notifier.
//!
//! [`AddressSpace::make_device_exclusive`] returns an [`ExclusiveGuard`] that holds the page
//! locked and referenced; exclusivity is guaranteed until the driver drops it (programs its
//! page table in between, under its notifier sequence).

use super::frame::flags;
use super::notify::{Event, Owner};
use super::pagetable::{PMD_SIZE, PteLookup};
use super::pte::{Pte, Soft, SoftKind};
use super::space::{Access, AddressSpace, PAGE};
use super::{Error, Mm};
use crate::addr::Pfn;
use alloc::sync::Arc;

/// The page made exclusive, locked and referenced until dropped.
#[derive(Debug)]
pub struct ExclusiveGuard {
    mm: Arc<Mm>,
    pfn: Pfn,
}

impl ExclusiveGuard {
    /// The page.
    pub fn pfn(&self) -> Pfn {
        self.pfn
    }
}

impl Drop for ExclusiveGuard {
    fn drop(&mut self) {
        if let Some(m) = self.mm.meta(self.pfn) {
            m.unlock();
        }
        self.mm.put_page(self.pfn);
    }
}

impl AddressSpace {
    /// `make_device_exclusive(mm, addr, owner, &folio)`: makes the page at `va` exclusive to
    /// the device `owner`. Faults it in writable first (breaking copy-on-write) and splits a
    /// huge mapping.
    ///
    /// Errors: `Fault` if nothing is mapped or the fault fails, `Invalid` for memory that is
    /// not private anonymous or is an explicit huge page (Linux: `-EOPNOTSUPP`), `Busy` if the
    /// page is locked by a migration.
    pub fn make_device_exclusive(&mut self, va: u64, owner: Owner) -> Result<ExclusiveGuard, Error> {
        let va = va & !(PAGE - 1);
        let vma = self.vmas.find(va).cloned().ok_or(Error::Fault("no mapping at the address"))?;
        if vma.flags.hugetlb || !vma.is_anon() || !vma.is_cow() {
            return Err(Error::Invalid("device-exclusive access needs private anonymous memory (not hugetlb)"));
        }
        for _ in 0..4 {
            self.fault(va, Access::Write).map_err(|_| Error::Fault("the page cannot be made writable"))?;
            if let Ok(Some(pmd)) = self.tables().pmd(va, false) {
                let raw = self.tables().load(pmd);
                if matches!(Pte::decode(raw), Pte::Present(p) if p.huge) {
                    self.split_leaf(pmd, va & !(PMD_SIZE - 1))?;
                }
            }
            let t = self.tables();
            let Ok(PteLookup::Pte(slot)) = t.pte(va, false) else { continue };
            let Pte::Present(p) = Pte::decode(t.load(slot)) else { continue };
            if !p.write {
                continue;
            }
            let mm = self.mm.clone();
            let m = mm.meta(p.pfn).ok_or(Error::Invalid("page without metadata"))?;
            if m.has(flags::TAIL) {
                // A subpage of a huge page that stayed whole (it is pinned): Linux cannot split
                // the folio either and fails.
                return Err(Error::Busy("the page is part of a pinned huge page"));
            }
            if !m.trylock() {
                return Err(Error::Busy("the page is locked (under migration)"));
            }
            m.get();
            let r = self.begin(va, va + PAGE, Event::Exclusive, Some(owner));
            let t = self.tables();
            // Re-check after the invalidation (step 4 of make_device_exclusive).
            let cur = t.load(slot);
            let ok = matches!(Pte::decode(cur), Pte::Present(c) if c.pfn == p.pfn && c.write);
            if ok {
                let old = t.swap(slot, 0);
                let Pte::Present(o) = Pte::decode(old) else { unreachable!("checked present above") };
                let e = Soft {
                    kind: SoftKind::Exclusive,
                    pfn: o.pfn,
                    write: true,
                    young: o.young,
                    dirty: o.dirty,
                    huge: false,
                    exec: o.exec,
                };
                if o.dirty {
                    m.set(flags::DIRTY);
                }
                t.store(slot, Pte::Soft(e).encode());
                self.tlb.add(va, PAGE);
            }
            self.finish(r);
            if ok {
                return Ok(ExclusiveGuard { mm: self.mm.clone(), pfn: p.pfn });
            }
            m.unlock();
            self.mm.put_page(p.pfn);
        }
        Err(Error::Busy("the page kept changing while being made exclusive"))
    }
}
