//! The page-fault handler of an [`AddressSpace`] (`handle_mm_fault`), and access to its
//! memory from outside (`access_process_vm`: [`AddressSpace::read`], [`AddressSpace::write`]).
//!
//! Owns the fault paths: demand paging of anonymous and file memory, the zero page and the
//! huge zero page, copy-on-write breaks (and the reuse of a page that became exclusive), THP
//! and hugetlb faults, the restore of device-exclusive entries, and the hand-off of
//! device-private pages to their pagemap's `migrate_to_ram`.
//!
//! Invariants (with those of the [parent module](super)):
//! - A fault changes only the leaf at its address (its 2 MiB leaf, or the 512 leaves a split
//!   of it makes), except through a device-private page's `migrate_to_ram`, a migration of
//!   its own that may move neighbouring pages too (fault-around). It fills an empty leaf, or
//!   upgrades a present one in place (write access to a shared page or to a private page that
//!   became exclusive, the same page: no invalidation, as Linux's `wp_page_reuse`), or
//!   replaces one (copy-on-write, the zero page's replacement, a split, the restore of a
//!   device-exclusive entry) inside an invalidation of its range.
//! - A fault never waits for a migration: a migration entry is [`FaultError::Migrating`]
//!   (recorded for [`AddressSpace::take_migration_wait`]), and the caller waits with the lock
//!   dropped ([`with_migration_wait`](super::with_migration_wait)).

use super::{AddressSpace, Entry, PAGE, release_leaf};
use crate::addr::Pfn;
use crate::mm::frame::{RmapEntry, flags};
use crate::mm::notify::Event;
use crate::mm::pagetable::{PMD_SIZE, PteLookup, Slot, Tables, USER_END};
use crate::mm::pte::{Present, Pte, Soft, SoftKind, is_table};
use crate::mm::vma::{Backing, Vma};
use crate::mm::{HUGE_FRAMES, HUGE_ORDER, ThpMode};
use core::sync::atomic::Ordering;

/// The kind of access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Exec,
}

/// Why a fault could not be resolved; what a process would get as a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// No mapping at the address (`SIGSEGV`, `SEGV_MAPERR`).
    NoMapping,
    /// The mapping forbids the access (`SIGSEGV`, `SEGV_ACCERR`).
    Protection,
    /// No memory for the page or its table (`VM_FAULT_OOM`).
    OutOfMemory,
    /// Past the end of the mapped file (`SIGBUS`).
    Bus,
    /// The page is being migrated; retry once the migration finishes. Returned by
    /// [`AddressSpace::fault`], which runs under the address space's lock: the holder drops it
    /// and waits ([`fault_shared`](super::fault_shared), [`with_migration_wait`](super::with_migration_wait)), so the migration can finish.
    Migrating,
    /// The page stayed under migration for longer than the platform's wait bound
    /// ([`Platform::migration_wait`](crate::mm::Platform::migration_wait)).
    MigrationTimeout,
    /// The page lives in device-private memory: its pagemap must migrate it to RAM first.
    DevicePrivate {
        /// The device frame.
        pfn: Pfn,
    },
    /// The page table holds an entry this code never writes.
    Corrupt,
    /// The code that faulted holds the address space's lock (a kernel bug: user memory was
    /// touched inside an address-space operation), so the fault cannot be resolved.
    Locked,
}

impl core::fmt::Display for FaultError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FaultError::NoMapping => write!(f, "segmentation fault: no mapping at the address"),
            FaultError::Protection => write!(f, "segmentation fault: the mapping forbids this access"),
            FaultError::OutOfMemory => write!(f, "out of memory while handling the fault"),
            FaultError::Bus => write!(f, "bus error: access past the end of the mapped file"),
            FaultError::Migrating => write!(f, "page under migration; retry"),
            FaultError::MigrationTimeout => {
                write!(f, "the page stayed under migration past the wait bound (a migration is stuck)")
            }
            FaultError::DevicePrivate { pfn } => write!(f, "page {:#x} is in device-private memory", pfn.0),
            FaultError::Corrupt => write!(f, "corrupt page-table entry"),
            FaultError::Locked => write!(f, "user memory touched while its address space is locked"),
        }
    }
}

impl AddressSpace {
    pub(in crate::mm) fn thp_eligible(&self, vma: &Vma, va: u64) -> bool {
        let base = va & !(PMD_SIZE - 1);
        let mode_ok = match self.mm.thp_mode() {
            ThpMode::Never => false,
            ThpMode::Madvise => vma.flags.hugepage,
            ThpMode::Always => true,
        };
        mode_ok
            && vma.is_anon()
            && vma.is_cow()
            && !vma.flags.nohugepage
            && base >= vma.start
            && base + PMD_SIZE <= vma.end
    }

    /// Sets the window `[start, end)` that a CPU fault on a device page inside it migrates
    /// back (`None`: each driver's own choice, its fault-around or THP). A placement policy
    /// chooses it before the access that will fault; the driver's `migrate_to_ram` reads it
    /// with [`fault_window`](Self::fault_window). Only the faulting device's pages in it move
    /// (the driver selects its own pages), and a device THP still comes back whole.
    pub fn set_fault_window(&mut self, window: Option<(u64, u64)>) {
        self.fault_window = window.map(|(s, e)| (s & !(PAGE - 1), e.next_multiple_of(PAGE)));
    }

    /// The window set with [`set_fault_window`](Self::set_fault_window), if it covers `va`,
    /// clipped to the VMA that holds `va` (`None` also when no VMA does).
    pub fn fault_window(&self, va: u64) -> Option<(u64, u64)> {
        let (s, e) = self.fault_window.filter(|&(s, e)| s <= va && va < e)?;
        let v = self.vmas.find(va)?;
        Some((s.max(v.start), e.min(v.end)))
    }

    /// Whether a fault met a page under migration ([`FaultError::Migrating`]) since the last
    /// call; clears the record. For callers that hold the lock across several faults (the
    /// range fault) and wait once they have dropped it.
    pub fn take_migration_wait(&mut self) -> bool {
        core::mem::take(&mut self.migration_met)
    }

    /// Handles a fault at `va`: demand paging, copy-on-write, zero pages, huge pages, restore
    /// of device-exclusive entries. `Ok` means the access can be retried. A page under
    /// migration is `Err(Migrating)`: the caller drops the lock and waits
    /// ([`with_migration_wait`](super::with_migration_wait)).
    pub fn fault(&mut self, va: u64, access: Access) -> Result<(), FaultError> {
        let r = self.fault_locked(va, access);
        if r == Err(FaultError::Migrating) {
            self.migration_met = true;
        }
        r
    }

    fn fault_locked(&mut self, va: u64, access: Access) -> Result<(), FaultError> {
        self.stats.faults += 1;
        if va >= USER_END {
            return Err(FaultError::NoMapping);
        }
        let vma = self.vmas.find(va).cloned().ok_or(FaultError::NoMapping)?;
        let allowed = match access {
            Access::Read => vma.prot.read() || vma.prot.write() || vma.prot.exec(),
            Access::Write => vma.prot.write(),
            Access::Exec => vma.prot.exec(),
        };
        if !allowed {
            return Err(FaultError::Protection);
        }
        let write = access == Access::Write;
        if vma.flags.hugetlb {
            return self.hugetlb_fault(&vma, va, write);
        }
        let pmd = match self.tables().pmd(va, true) {
            Ok(Some(s)) => s,
            _ => return Err(FaultError::OutOfMemory),
        };
        let raw = self.tables().load(pmd);
        let base = va & !(PMD_SIZE - 1);
        if raw == 0 && self.thp_eligible(&vma, va) && self.huge_anon_fault(&vma, pmd, base, write)? {
            return Ok(());
        }
        if raw != 0 && !is_table(raw) {
            match Pte::decode(raw) {
                Pte::Present(p) if !write || p.write => {
                    self.stats.spurious += 1;
                    return Ok(());
                }
                Pte::Present(p) => {
                    if self.huge_wp(&vma, pmd, base, p)? {
                        return Ok(());
                    }
                    // Could not keep it huge: split and take the 4 KiB path.
                    self.split_leaf(pmd, base).map_err(|_| FaultError::OutOfMemory)?;
                }
                Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => {
                    // A device-private THP: its pagemap moves the whole folio (or, failing
                    // a 2 MiB page, its 4 KiB pages) back to RAM.
                    return match self.mm.device_memory().cloned() {
                        Some(dev) => dev.migrate_to_ram(self, va, s.pfn),
                        None => Err(FaultError::DevicePrivate { pfn: s.pfn }),
                    };
                }
                Pte::Soft(s) => return Err(self.soft_fault_error(s)),
                _ => return Err(FaultError::Corrupt),
            }
        }
        let slot = match self.tables().pte(va, true) {
            Ok(PteLookup::Pte(s)) => s,
            Ok(PteLookup::Huge(_)) => return Err(FaultError::Corrupt),
            _ => return Err(FaultError::OutOfMemory),
        };
        let va = va & !(PAGE - 1);
        match Pte::decode(self.tables().load(slot)) {
            Pte::None => self.fault_none(&vma, slot, va, write),
            Pte::Present(p) if write && !p.write => self.fault_wp(&vma, slot, va, p),
            Pte::Present(_) => {
                self.stats.spurious += 1;
                Ok(())
            }
            Pte::Soft(s) if s.kind == SoftKind::Exclusive => {
                self.restore_exclusive(slot, va, s);
                Ok(())
            }
            Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => match self.mm.device_memory().cloned() {
                // do_swap_page -> pgmap->ops->migrate_to_ram
                Some(dev) => dev.migrate_to_ram(self, va, s.pfn),
                None => Err(FaultError::DevicePrivate { pfn: s.pfn }),
            },
            Pte::Soft(s) => Err(self.soft_fault_error(s)),
            Pte::Bad(_) => Err(FaultError::Corrupt),
        }
    }

    fn soft_fault_error(&self, s: Soft) -> FaultError {
        match s.kind {
            SoftKind::Migration => FaultError::Migrating,
            SoftKind::DevicePrivate => FaultError::DevicePrivate { pfn: s.pfn },
            // The VMA allows the access but the entry is PROT_NONE: cannot happen, since
            // mprotect rewrites entries with the VMA; report rather than guess.
            SoftKind::ProtNone | SoftKind::Exclusive => FaultError::Protection,
        }
    }

    /// A fault on an empty PTE.
    fn fault_none(&mut self, vma: &Vma, slot: Slot, va: u64, write: bool) -> Result<(), FaultError> {
        let exec = vma.prot.exec();
        let t = Tables::new(self.mm.platform(), self.root);
        match &vma.backing {
            Backing::Anon if !write => {
                let pte =
                    Present { pfn: self.mm.zero_pfn(), write: false, exec, dirty: false, young: true, huge: false };
                t.store(slot, Pte::Present(pte).encode());
                self.stats.zero_maps += 1;
            }
            Backing::Anon => {
                let pfn = self.mm.alloc_page(flags::ANON, 0, true).map_err(|_| FaultError::OutOfMemory)?;
                if let Some(m) = self.mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(self.id, va, false));
                }
                t.store(
                    slot,
                    Pte::Present(Present { pfn, write: true, exec, dirty: true, young: true, huge: false }).encode(),
                );
            }
            Backing::File { .. } => {
                let Some((file, index)) = vma.file_index(va) else { return Err(FaultError::Corrupt) };
                let page = file.page(index).map_err(|_| FaultError::OutOfMemory)?.ok_or(FaultError::Bus)?;
                self.stats.file_faults += 1;
                let (pfn, writable) = if vma.flags.shared || !write {
                    self.mm.get_page(page);
                    (page, vma.flags.shared && write)
                } else {
                    let new = self.mm.alloc_page(flags::ANON, 0, false).map_err(|_| FaultError::OutOfMemory)?;
                    self.mm.platform().copy(new, page, 1);
                    self.stats.cow_copies += 1;
                    self.mm.stats.cow_copies.fetch_add(1, Ordering::Relaxed);
                    (new, true)
                };
                if let Some(m) = self.mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(self.id, va, false));
                    if writable {
                        m.set(flags::DIRTY);
                    }
                }
                let pte = Present { pfn, write: writable, exec, dirty: writable, young: true, huge: false };
                t.store(slot, Pte::Present(pte).encode());
            }
        }
        Ok(())
    }

    /// A write fault on a present, read-only PTE in a writable VMA.
    fn fault_wp(&mut self, vma: &Vma, slot: Slot, va: u64, p: Present) -> Result<(), FaultError> {
        let t = Tables::new(self.mm.platform(), self.root);
        if vma.flags.shared {
            if let Some(m) = self.mm.meta(p.pfn) {
                m.set(flags::DIRTY);
            }
            let cur = t.swap(slot, 0);
            let Pte::Present(c) = Pte::decode(cur) else { return Err(FaultError::Corrupt) };
            t.store(slot, Pte::Present(Present { write: true, dirty: true, young: true, ..c }).encode());
            self.tlb.add(va, PAGE);
            self.flush();
            return Ok(());
        }
        if !self.mm.is_zero(p.pfn)
            && let Some(m) = self.mm.meta(p.pfn)
            && (m.has(flags::ANON) || m.has(flags::DEVICE))
            && m.refcount() == 1
            && m.mapcount() == 1
        {
            // The page became exclusive (the other sharers went away): reuse it. A coherent
            // device page here is anonymous memory too (device pages live only there).
            let cur = t.swap(slot, 0);
            let Pte::Present(c) = Pte::decode(cur) else { return Err(FaultError::Corrupt) };
            t.store(slot, Pte::Present(Present { write: true, dirty: true, young: true, ..c }).encode());
            m.clear(flags::LAZYFREE);
            self.mm.stats.cow_reuses.fetch_add(1, Ordering::Relaxed);
            self.tlb.add(va, PAGE);
            self.flush();
            return Ok(());
        }
        let zero = self.mm.is_zero(p.pfn);
        let new = self.mm.alloc_page(flags::ANON, 0, zero).map_err(|_| FaultError::OutOfMemory)?;
        if !zero {
            self.mm.platform().copy(new, p.pfn, 1);
            self.stats.cow_copies += 1;
            self.mm.stats.cow_copies.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = self.mm.meta(new) {
            m.rmap_add(RmapEntry::new(self.id, va, false));
        }
        let r = self.begin(va, va + PAGE, Event::Clear, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let pte = Present { pfn: new, write: true, exec: p.exec, dirty: true, young: true, huge: false };
        let old = t.swap(slot, Pte::Present(pte).encode());
        self.tlb.add(va, PAGE);
        release_leaf(&self.mm, self.id, va, old, false);
        self.finish(r);
        Ok(())
    }

    /// Maps a fresh 2 MiB page (write) or the huge zero page (read) at an empty PMD. Returns
    /// `Ok(false)` when no 2 MiB page is free, so the caller falls back to 4 KiB.
    fn huge_anon_fault(&mut self, vma: &Vma, pmd: Slot, base: u64, write: bool) -> Result<bool, FaultError> {
        let exec = vma.prot.exec();
        let t = Tables::new(self.mm.platform(), self.root);
        if !write {
            let pte =
                Present { pfn: self.mm.huge_zero_pfn(), write: false, exec, dirty: false, young: true, huge: true };
            t.store(pmd, Pte::Present(pte).encode());
            self.stats.huge_zero_maps += 1;
            return Ok(true);
        }
        let Ok(pfn) = self.mm.alloc_page(flags::ANON, HUGE_ORDER, true) else { return Ok(false) };
        if let Some(m) = self.mm.meta(pfn) {
            m.rmap_add(RmapEntry::new(self.id, base, true));
        }
        t.store(pmd, Pte::Present(Present { pfn, write: true, exec, dirty: true, young: true, huge: true }).encode());
        self.stats.huge_faults += 1;
        Ok(true)
    }

    /// A write fault on a read-only huge PMD: reuse an exclusive THP, or replace the huge zero
    /// page by a fresh THP. `Ok(false)`: split instead.
    fn huge_wp(&mut self, vma: &Vma, pmd: Slot, base: u64, p: Present) -> Result<bool, FaultError> {
        let t = Tables::new(self.mm.platform(), self.root);
        if self.mm.is_zero(p.pfn) {
            let Ok(pfn) = self.mm.alloc_page(flags::ANON, HUGE_ORDER, true) else { return Ok(false) };
            if let Some(m) = self.mm.meta(pfn) {
                m.rmap_add(RmapEntry::new(self.id, base, true));
            }
            let r = self.begin(base, base + PMD_SIZE, Event::Clear, None);
            let t = Tables::new(self.mm.platform(), self.root);
            let pte = Present { pfn, write: true, exec: vma.prot.exec(), dirty: true, young: true, huge: true };
            t.swap(pmd, Pte::Present(pte).encode());
            self.tlb.add(base, PMD_SIZE);
            self.stats.huge_faults += 1;
            self.finish(r);
            return Ok(true);
        }
        match self.mm.meta(p.pfn) {
            Some(m) if (m.has(flags::ANON) || m.has(flags::DEVICE)) && m.refcount() == 1 && m.mapcount() == 1 => {
                let cur = t.swap(pmd, 0);
                let Pte::Present(c) = Pte::decode(cur) else { return Err(FaultError::Corrupt) };
                t.store(pmd, Pte::Present(Present { write: true, dirty: true, young: true, ..c }).encode());
                self.mm.stats.cow_reuses.fetch_add(1, Ordering::Relaxed);
                self.tlb.add(base, PMD_SIZE);
                self.flush();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A fault in an explicit huge page mapping: always 2 MiB, copy-on-write at 2 MiB.
    fn hugetlb_fault(&mut self, vma: &Vma, va: u64, write: bool) -> Result<(), FaultError> {
        let base = va & !(PMD_SIZE - 1);
        let pmd = match self.tables().pmd(va, true) {
            Ok(Some(s)) => s,
            _ => return Err(FaultError::OutOfMemory),
        };
        let t = Tables::new(self.mm.platform(), self.root);
        let exec = vma.prot.exec();
        match Pte::decode(t.load(pmd)) {
            Pte::None => {
                let pfn = self
                    .mm
                    .alloc_page(flags::ANON | flags::HUGETLB, HUGE_ORDER, true)
                    .map_err(|_| FaultError::OutOfMemory)?;
                if let Some(m) = self.mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(self.id, base, true));
                }
                let writable = vma.prot.write();
                let pte = Present { pfn, write: writable, exec, dirty: write, young: true, huge: true };
                t.store(pmd, Pte::Present(pte).encode());
                self.stats.huge_faults += 1;
                Ok(())
            }
            Pte::Present(p) if write && !p.write => {
                let exclusive = self.mm.meta(p.pfn).is_some_and(|m| m.refcount() == 1 && m.mapcount() == 1);
                if exclusive {
                    let cur = t.swap(pmd, 0);
                    t.store(pmd, cur | crate::mm::pte::RW | crate::mm::pte::D);
                    self.tlb.add(base, PMD_SIZE);
                    self.flush();
                    return Ok(());
                }
                let new = self
                    .mm
                    .alloc_page(flags::ANON | flags::HUGETLB, HUGE_ORDER, false)
                    .map_err(|_| FaultError::OutOfMemory)?;
                self.mm.platform().copy(new, p.pfn, HUGE_FRAMES);
                if let Some(m) = self.mm.meta(new) {
                    m.rmap_add(RmapEntry::new(self.id, base, true));
                }
                self.stats.cow_copies += 1;
                let r = self.begin(base, base + PMD_SIZE, Event::Clear, None);
                let t = Tables::new(self.mm.platform(), self.root);
                let pte = Present { pfn: new, write: true, exec, dirty: true, young: true, huge: true };
                let old = t.swap(pmd, Pte::Present(pte).encode());
                self.tlb.add(base, PMD_SIZE);
                release_leaf(&self.mm, self.id, base, old, true);
                self.finish(r);
                Ok(())
            }
            Pte::Present(_) => {
                self.stats.spurious += 1;
                Ok(())
            }
            Pte::Soft(s) => Err(self.soft_fault_error(s)),
            Pte::Bad(_) => Err(FaultError::Corrupt),
        }
    }

    /// A CPU access to a device-exclusive entry: the device loses exclusivity (it learns
    /// through the `Exclusive` invalidation) and the normal entry comes back.
    fn restore_exclusive(&mut self, slot: Slot, va: u64, s: Soft) {
        let r = self.begin(va, va + PAGE, Event::Exclusive, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let pte = Present { pfn: s.pfn, write: s.write, exec: s.exec, dirty: s.dirty, young: true, huge: false };
        t.store(slot, Pte::Present(pte).encode());
        self.finish(r);
    }

    // ---------------------------------------------------------------------------------------
    // Access from outside (copy_from_user / copy_to_user / access_process_vm)

    /// The physical address behind `va`, faulting it in (for write: writable) if needed.
    fn resolve(&mut self, va: u64, write: bool) -> Result<u64, FaultError> {
        for _ in 0..4 {
            if let Some(Entry { pte: Pte::Present(p), huge }) = self.lookup(va)
                && (!write || p.write)
            {
                let offset = if huge { va & (PMD_SIZE - 1) } else { va & (PAGE - 1) };
                return Ok(p.pfn.addr() + offset);
            }
            self.fault(va, if write { Access::Write } else { Access::Read })?;
        }
        Err(FaultError::Corrupt)
    }

    /// Copies from the address space at `va` into `buf`, faulting pages in.
    pub fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), FaultError> {
        let mut done = 0;
        while done < buf.len() {
            let at = va.checked_add(done as u64).ok_or(FaultError::NoMapping)?;
            let chunk = ((PAGE - (at % PAGE)) as usize).min(buf.len() - done);
            let pa = self.resolve(at, false)?;
            self.mm.platform().read(pa, &mut buf[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }

    /// Copies `data` into the address space at `va`, faulting pages in (breaking COW).
    pub fn write(&mut self, va: u64, data: &[u8]) -> Result<(), FaultError> {
        let mut done = 0;
        while done < data.len() {
            let at = va.checked_add(done as u64).ok_or(FaultError::NoMapping)?;
            let chunk = ((PAGE - (at % PAGE)) as usize).min(data.len() - done);
            let pa = self.resolve(at, true)?;
            self.mm.platform().write(pa, &data[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }
}
