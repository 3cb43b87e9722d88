//! The pagemap's callbacks ([`PagemapOps`]) of a device's memory: a device page freed (back to
//! the device's allocator), and a CPU fault on a device page, which DMAs its fault-around
//! window (a device THP whole) back into fresh RAM from inside the page-fault handler.

use super::migrate::settle;
use super::{HUGE, PAGE, Vram};
use crate::mm::uspace;
use hmm::addr::Pfn;
use hmm::devalloc::AllocError;
use hmm::mm::migrate::MigrateArgs;
use hmm::mm::space::{AddressSpace, FaultError};
use hmm::pagemap::{DevPagemap, PagemapOps};

impl PagemapOps for Vram {
    fn page_free(&self, _pm: &DevPagemap, pfn: Pfn, order: u32) {
        let freed = self.index_of(pfn).ok_or(AllocError::OutOfRange).and_then(|k| self.alloc.lock().free(k, order));
        if let Err(e) = freed {
            log::warn!("dev{}: freeing device page {pfn:?} (order {order}): {e}", self.device);
        }
    }

    fn migrate_to_ram(&self, _pm: &DevPagemap, space: &mut AddressSpace, va: u64, page: Pfn) -> Result<(), FaultError> {
        // A device THP comes back whole (into a 2 MiB RAM page when there is one). Otherwise
        // fault-around: this device's pages in the aligned window around the fault come back
        // in the same DMA request (AMD SVM migrates its whole granule on a CPU fault), within
        // the faulting VMA.
        // A placement policy may have chosen the window instead (`set_fault_window`).
        let huge = uspace::mm().meta(page).is_some_and(|m| m.order() == 9);
        let window = if huge { HUGE } else { self.fault_around() * PAGE };
        let (lo, hi) = space.vmas().find(va).map(|v| (v.start, v.end)).ok_or(FaultError::Bus)?;
        let (start, end) = match space.fault_window(va) {
            Some(w) if !huge => w,
            _ => ((va & !(window - 1)).max(lo), ((va & !(window - 1)) + window).min(hi)),
        };
        let args = MigrateArgs { start, end, owner: self.owner, select: self.select(), fault_page: Some(page) };
        let mut mig = space.migrate_vma_setup(args).map_err(|_| FaultError::Bus)?;
        self.copy_out(&mut mig).map_err(|_| FaultError::Bus)?;
        let i = ((va - start) / PAGE) as usize;
        // The faulting page's entry: its own, or its THP's head.
        let head = if huge { 0 } else { i };
        let faulting_moved = mig.dst().get(head).is_some_and(|d| d.pfn().is_some())
            || mig.dst().get(i).is_some_and(|d| d.pfn().is_some());
        let moved = settle(mig);
        let mut s = self.stats.lock();
        s.cpu_faults += 1;
        s.to_ram += moved;
        if !faulting_moved {
            // The DMA failed: the page stays on the device and the access cannot proceed.
            return Err(FaultError::Bus);
        }
        Ok(())
    }
}
