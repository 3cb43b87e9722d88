//! A test device driver written only against the old generations, the counterpart of the
//! modern [`dmirror`](crate::dmirror): device memory through 4.14's `hmm_devmem`, one 5.x
//! `hmm_mirror` per process with a device page table kept by `sync_cpu_device_pagetables`,
//! device reads and writes through 5.x `hmm_range_fault` (or 4.14's `hmm_vma_fault`),
//! snapshots through `hmm_range_snapshot` (or `hmm_vma_get_pfns`), migration through the
//! callback `migrate_vma`, and CPU faults on its memory through the devmem `fault` callback.
//!
//! It is the driver the old-API scenarios ([`selftests::EXTRA`](crate::selftests::EXTRA),
//! `old_api_*`) run on the host and in the kernel, beside dmirror on the same data.
//!
//! Device memory is emulated as dmirror's is: a private device page is backed by a RAM frame
//! recorded in the page's driver data (`hmm_devmem_page_set_drvdata`), which is what the
//! "device" reads and writes; a public (coherent) page is CPU-addressable and is its own
//! backing.
//!
//! Invariants: the device page table maps a virtual page only to a frame the CPU page tables
//! map at that address (RAM, or the backing of this device's page), installed under the
//! table's lock after `hmm_range_valid` said the walk is current; every invalidation of the
//! mirrored space removes the entries it covers before it returns.

use super::devmem::{DevmemOps, DevmemResource, HmmDevmem};
use super::migrate::{MigrateOps, migrate_vma};
use super::mirror::{HmmMirror, MirrorOps};
use super::vma::{hmm_vma_fault, hmm_vma_get_pfns};
use super::{HMM_PFN_ERROR, HMM_PFN_VALID, HMM_PFN_WRITE, LegacyError, PfnFormat};
use crate::addr::Pfn;
use crate::dmirror::prot;
use crate::mm::frame::flags;
use crate::mm::migrate::{MigratePfn, migrate_device_range};
use crate::mm::notify::{Event, Owner, Range};
use crate::mm::space::{AddressSpace, FaultError};
use crate::mm::{Error, Mm, SharedSpace};
use crate::pagemap::{MemoryKind, Pagemaps};
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, Once};

const PAGE: u64 = 4096;
/// How many times a device access starts again after an invalidation raced with it.
const RETRIES: usize = 16;

/// The entry format this driver uses: 4.14's `hmm_pfn_t`.
pub const FORMAT: PfnFormat = PfnFormat::HMM_PFN_T;

/// The device (one `hmm_devmem`).
pub struct OldDevice {
    mm: Arc<Mm>,
    owner: Owner,
    devmem: Once<Arc<HmmDevmem>>,
    free: Mutex<Vec<Pfn>>,
    total: u64,
    freed: AtomicU64,
}

impl core::fmt::Debug for OldDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OldDevice").field("owner", &self.owner).field("public", &self.public()).finish_non_exhaustive()
    }
}

impl OldDevice {
    /// Adds `bytes` (a multiple of 2 MiB) of device memory: private with `hmm_devmem_add`,
    /// or `DEVICE_PUBLIC` with `hmm_devmem_add_resource` when `public`.
    pub fn new(pagemaps: &Arc<Pagemaps>, public: bool, owner: Owner, bytes: u64) -> Result<Arc<OldDevice>, Error> {
        let d = Arc::new(OldDevice {
            mm: pagemaps.mm().clone(),
            owner,
            devmem: Once::new(),
            free: Mutex::new(Vec::new()),
            total: bytes / PAGE,
            freed: AtomicU64::new(0),
        });
        let ops: Arc<dyn DevmemOps> = d.clone();
        let w: Weak<dyn DevmemOps> = Arc::downgrade(&ops);
        let dm = if public {
            HmmDevmem::add_resource(pagemaps, w, owner, DevmemResource { bytes, public: true })?
        } else {
            HmmDevmem::add(pagemaps, w, owner, bytes)?
        };
        for &(start, n) in dm.ranges() {
            d.free.lock().extend((0..n).rev().map(|k| Pfn(start.0 + k)));
        }
        d.devmem.call_once(|| dm);
        Ok(d)
    }

    /// The registered memory.
    pub fn devmem(&self) -> Option<&Arc<HmmDevmem>> {
        self.devmem.get()
    }

    /// Whether the memory is `DEVICE_PUBLIC` (coherent).
    pub fn public(&self) -> bool {
        self.devmem().is_some_and(|d| d.pagemap().kind() == MemoryKind::Coherent)
    }

    /// The owner its pages carry.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Device pages the `free` callback has given back so far.
    pub fn freed(&self) -> u64 {
        self.freed.load(Ordering::Relaxed)
    }

    /// Device pages in use.
    pub fn pages_in_use(&self) -> u64 {
        self.total - self.free.lock().len() as u64
    }

    /// Whether `pfn` is one of this device's pages.
    pub fn owns(&self, pfn: Pfn) -> bool {
        self.devmem().is_some_and(|d| d.pagemap().contains(pfn))
    }

    /// The frame the device reads for `pfn`: the backing of one of its private pages, the
    /// page itself otherwise.
    fn backing(&self, pfn: Pfn) -> Pfn {
        match self.devmem() {
            Some(d) if d.pagemap().contains(pfn) => d.page_get_drvdata(pfn).filter(|&b| b != 0).map_or(pfn, Pfn),
            _ => pfn,
        }
    }

    /// A free device page, initialised and backed (`None` when the memory is full).
    fn alloc(&self) -> Option<Pfn> {
        let dm = self.devmem()?;
        let p = self.free.lock().pop()?;
        let backing = if self.public() {
            p
        } else {
            match self.mm.alloc_page(0, 0, false) {
                Ok(b) => b,
                Err(_) => {
                    self.free.lock().push(p);
                    return None;
                }
            }
        };
        if dm.page_init(p).is_err() {
            if backing != p {
                self.mm.put_page(backing);
            }
            return None;
        }
        dm.page_set_drvdata(p, backing.0);
        Some(p)
    }

    /// Evicts every page still in use to RAM (`migrate_device_range`), then removes the
    /// memory (`hmm_devmem_remove`). Call with no address space locked.
    pub fn release(&self) -> Result<(), Error> {
        let Some(dm) = self.devmem() else { return Ok(()) };
        for &(start, n) in dm.ranges() {
            let mut mig = migrate_device_range(&self.mm, start, n);
            for i in 0..n as usize {
                let s = mig.src()[i];
                let Some(from) = s.pfn().filter(|_| s.is_migrate()) else { continue };
                let Ok(r) = self.mm.alloc_page(flags::ANON, 0, false) else { continue };
                if let Some(m) = self.mm.meta(r) {
                    m.trylock();
                }
                self.mm.platform().copy(r, self.backing(from), 1);
                mig.dst_mut()[i] = MigratePfn::new(r).with_write(s.is_write());
            }
            mig.pages();
            mig.finalize();
        }
        dm.remove()
    }
}

impl DevmemOps for OldDevice {
    fn free(&self, devmem: &HmmDevmem, page: Pfn) {
        let b = self.backing(page);
        if b != page {
            self.mm.put_page(b);
        }
        devmem.page_set_drvdata(page, 0);
        self.free.lock().push(page);
        self.freed.fetch_add(1, Ordering::Relaxed);
    }

    /// The CPU touched one of its private pages: migrate that page back with the callback
    /// `migrate_vma` (the mirrors lose it through the migration's invalidation).
    fn fault(&self, _devmem: &HmmDevmem, space: &mut AddressSpace, va: u64, page: Pfn) -> Result<(), FaultError> {
        let va = va & !(PAGE - 1);
        migrate_vma(&ToRam(self), space, (va, va + PAGE), self.owner, Some(page)).map_err(|_| FaultError::Bus)?;
        Ok(())
    }
}

/// One process mirrored by the device (what opening the device file created).
pub struct OldMirror {
    dev: Arc<OldDevice>,
    space: Weak<SharedSpace>,
    mirror: Once<Arc<HmmMirror>>,
    /// The device page table: virtual page -> (frame the device accesses, writable).
    pt: Mutex<BTreeMap<u64, (Pfn, bool)>>,
    syncs: Mutex<Vec<(u64, u64, Event)>>,
    released: AtomicU64,
}

impl core::fmt::Debug for OldMirror {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OldMirror").field("dev", &self.dev).field("entries", &self.pt.lock().len()).finish()
    }
}

impl MirrorOps for OldMirror {
    fn sync_cpu_device_pagetables(&self, _m: &HmmMirror, update: &Range) -> bool {
        self.syncs.lock().push((update.start, update.end, update.event));
        let mut pt = self.pt.lock();
        let keys: Vec<u64> = pt.range(update.start / PAGE..update.end.div_ceil(PAGE)).map(|(k, _)| *k).collect();
        for k in keys {
            pt.remove(&k);
        }
        true
    }

    fn release(&self, _m: &HmmMirror) {
        self.pt.lock().clear();
        self.released.fetch_add(1, Ordering::Relaxed);
    }
}

impl OldMirror {
    /// `hmm_mirror_register` of `space` for `dev`. Call with the space unlocked.
    pub fn open(dev: &Arc<OldDevice>, space: &Arc<SharedSpace>) -> Result<Arc<OldMirror>, Error> {
        let m = Arc::new(OldMirror {
            dev: dev.clone(),
            space: Arc::downgrade(space),
            mirror: Once::new(),
            pt: Mutex::new(BTreeMap::new()),
            syncs: Mutex::new(Vec::new()),
            released: AtomicU64::new(0),
        });
        let ops: Arc<dyn MirrorOps> = m.clone();
        let w: Weak<dyn MirrorOps> = Arc::downgrade(&ops);
        let hm = HmmMirror::register(space, w)?;
        m.mirror.call_once(|| hm);
        Ok(m)
    }

    fn space(&self) -> Result<Arc<SharedSpace>, LegacyError> {
        self.space.upgrade().ok_or(LegacyError::Invalid("the address space is gone"))
    }

    /// The `hmm_mirror` behind it.
    pub fn hmm_mirror(&self) -> Result<&Arc<HmmMirror>, LegacyError> {
        self.mirror.get().ok_or(LegacyError::Invalid("the mirror is not registered"))
    }

    /// Entries in the device page table.
    pub fn entries(&self) -> usize {
        self.pt.lock().len()
    }

    /// The device page table entry for `va`: the frame the device accesses and whether it
    /// may write.
    pub fn entry(&self, va: u64) -> Option<(Pfn, bool)> {
        self.pt.lock().get(&(va / PAGE)).copied()
    }

    /// The invalidations `sync_cpu_device_pagetables` received: `(start, end, event)`.
    pub fn syncs(&self) -> Vec<(u64, u64, Event)> {
        self.syncs.lock().clone()
    }

    /// How many times `release` was called.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }

    /// Installs the valid words of `words` (the range at `va`) in the device page table.
    fn install(&self, pt: &mut BTreeMap<u64, (Pfn, bool)>, va: u64, words: &[u64]) -> Result<(), LegacyError> {
        for (i, &w) in words.iter().enumerate() {
            let Some(pfn) = FORMAT.pfn(w) else { continue };
            if FORMAT.is_device_private(w) && !self.dev.owns(pfn) {
                // Another device's memory: this device cannot reach it.
                return Err(LegacyError::Fault);
            }
            pt.insert(va / PAGE + i as u64, (self.dev.backing(pfn), FORMAT.is_write(w)));
        }
        Ok(())
    }

    /// A device access to `n` pages at `va` the 5.x way: `hmm_range_register`, then
    /// `wait_until_valid` / `hmm_range_fault(block)` / take the driver lock / `hmm_range_valid`
    /// until a walk is current, then program the device table and run `access` on it with
    /// the lock held (so no invalidation can change it meanwhile).
    fn access<T>(
        &self,
        va: u64,
        n: u64,
        write: bool,
        access: impl FnOnce(&BTreeMap<u64, (Pfn, bool)>) -> T,
    ) -> Result<T, LegacyError> {
        let mut range = self.hmm_mirror()?.range_register(va, va + n * PAGE)?;
        let ask = FORMAT.flags[HMM_PFN_VALID] | if write { FORMAT.flags[HMM_PFN_WRITE] } else { 0 };
        for _ in 0..RETRIES {
            if !range.wait_until_valid() {
                return Err(LegacyError::Busy);
            }
            let mut words = alloc::vec![ask; n as usize];
            match range.fault(&mut words, &FORMAT, true) {
                Err(LegacyError::Busy) => continue,
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            let mut pt = self.pt.lock();
            if !range.valid() {
                continue;
            }
            self.install(&mut pt, va, &words)?;
            return Ok(access(&pt));
        }
        Err(LegacyError::Busy)
    }

    /// The device reads `n` pages at `va` (faulting them in for read, 5.x `hmm_range_fault`).
    pub fn read(&self, va: u64, n: u64) -> Result<Vec<u8>, LegacyError> {
        self.access(va, n, false, |pt| self.read_table(pt, va, n))
    }

    /// What the device reads through its table for `n` pages at `va` (zeros where nothing
    /// is mapped).
    fn read_table(&self, pt: &BTreeMap<u64, (Pfn, bool)>, va: u64, n: u64) -> Vec<u8> {
        let mut out = alloc::vec![0u8; (n * PAGE) as usize];
        for (i, chunk) in out.chunks_mut(PAGE as usize).enumerate() {
            if let Some(&(pfn, _)) = pt.get(&(va / PAGE + i as u64)) {
                self.dev.mm.platform().read(pfn.addr(), chunk);
            }
        }
        out
    }

    /// The device writes `data` (whole pages) at `va` (faulting the pages in for write).
    pub fn write(&self, va: u64, data: &[u8]) -> Result<(), LegacyError> {
        if !data.len().is_multiple_of(PAGE as usize) || data.is_empty() {
            return Err(LegacyError::Invalid("device writes are whole pages"));
        }
        let mm = self.dev.mm.clone();
        let n = data.len() as u64 / PAGE;
        self.access(va, n, true, |pt| {
            for (i, chunk) in data.chunks(PAGE as usize).enumerate() {
                if let Some(&(pfn, true)) = pt.get(&(va / PAGE + i as u64)) {
                    mm.platform().write(pfn.addr(), chunk);
                    if let Some(m) = mm.meta(pfn) {
                        m.set(flags::DIRTY);
                    }
                }
            }
        })
    }

    /// The device reads `n` pages at `va` the 4.14 way: `hmm_vma_fault(write = false,
    /// block = true)` with the space held, program, `hmm_vma_range_done`; again if it says
    /// the range changed.
    pub fn read_4_14(&self, va: u64, n: u64) -> Result<Vec<u8>, LegacyError> {
        let space = self.space()?;
        for _ in 0..RETRIES {
            let mut words = alloc::vec![0u64; n as usize];
            let mut s = space.lock();
            let r = match hmm_vma_fault(&mut s, va, va + n * PAGE, &mut words, &FORMAT, false, true) {
                Err(LegacyError::Busy | LegacyError::Again) => continue,
                r => r?,
            };
            let mut pt = self.pt.lock();
            if !r.done() {
                continue;
            }
            drop(s);
            self.install(&mut pt, va, &words)?;
            return Ok(self.read_table(&pt, va, n));
        }
        Err(LegacyError::Busy)
    }

    /// `hmm_range_snapshot` of `n` pages at `va`, as dmirror's snapshot bytes (see
    /// [`prot_byte`]).
    pub fn snapshot(&self, va: u64, n: u64) -> Result<Vec<u8>, LegacyError> {
        let mut range = self.hmm_mirror()?.range_register(va, va + n * PAGE)?;
        for _ in 0..RETRIES {
            if !range.wait_until_valid() {
                return Err(LegacyError::Busy);
            }
            let mut words = alloc::vec![0u64; n as usize];
            match range.snapshot(&mut words, &FORMAT) {
                Err(LegacyError::Busy) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(words.iter().map(|&w| self.prot_byte(w)).collect()),
            }
        }
        Err(LegacyError::Busy)
    }

    /// 4.14's `hmm_vma_get_pfns` of `n` pages at `va` (inside one VMA), as snapshot bytes.
    pub fn snapshot_4_14(&self, va: u64, n: u64) -> Result<Vec<u8>, LegacyError> {
        let space = self.space()?;
        let mut words = alloc::vec![0u64; n as usize];
        let r = hmm_vma_get_pfns(&mut space.lock(), va, va + n * PAGE, &mut words, &FORMAT)?;
        if !r.done() {
            return Err(LegacyError::Busy);
        }
        Ok(words.iter().map(|&w| self.prot_byte(w)).collect())
    }

    /// An old-API word as a dmirror snapshot byte: `ERROR`, `NONE`, `READ` or `WRITE`, with
    /// `DEV_PRIVATE_LOCAL` / `_REMOTE` for device-private memory of this / another device.
    /// The old API had no flag for coherent (public) memory, which reads as RAM.
    pub fn prot_byte(&self, w: u64) -> u8 {
        if w == FORMAT.values[HMM_PFN_ERROR] {
            return prot::ERROR;
        }
        let Some(pfn) = FORMAT.pfn(w) else { return prot::NONE };
        let dev = match (FORMAT.is_device_private(w), self.dev.owns(pfn)) {
            (false, _) => 0,
            (true, true) => prot::DEV_PRIVATE_LOCAL,
            (true, false) => prot::DEV_PRIVATE_REMOTE,
        };
        dev | if FORMAT.is_write(w) { prot::WRITE } else { prot::READ }
    }

    /// Migrates `n` pages at `va` to device memory with the callback `migrate_vma`; returns
    /// how many moved. Pages already on a device, and pages with no room left, stay.
    pub fn migrate_to_dev(&self, va: u64, n: u64) -> Result<usize, LegacyError> {
        let space = self.space()?;
        let mut s = space.lock();
        migrate_vma(&ToDev(self), &mut s, (va, va + n * PAGE), self.dev.owner, None)
    }

    /// Migrates this device's pages among `n` at `va` back to RAM with the callback
    /// `migrate_vma`; returns how many moved.
    pub fn migrate_to_sys(&self, va: u64, n: u64) -> Result<usize, LegacyError> {
        let space = self.space()?;
        let mut s = space.lock();
        migrate_vma(&ToRam(&self.dev), &mut s, (va, va + n * PAGE), self.dev.owner, None)
    }
}

impl Drop for OldMirror {
    fn drop(&mut self) {
        if let Some(m) = self.mirror.get() {
            let _ = m.unregister();
        }
    }
}

/// `migrate_vma` callbacks towards the device of a mirror.
struct ToDev<'a>(&'a OldMirror);

impl MigrateOps for ToDev<'_> {
    fn alloc_and_copy(&self, _start: u64, src: &[MigratePfn], dst: &mut [MigratePfn]) {
        let dev = &self.0.dev;
        for (s, t) in src.iter().zip(dst.iter_mut()) {
            if !s.is_migrate() {
                continue;
            }
            let from = s.pfn();
            if from.is_some_and(|p| dev.mm.meta(p).is_some_and(|m| m.has(flags::DEVICE))) {
                continue; // already device memory
            }
            let Some(p) = dev.alloc() else { continue };
            let b = dev.backing(p);
            match from {
                Some(f) => dev.mm.platform().copy(b, f, 1),
                None => dev.mm.platform().zero(b, 1),
            }
            *t = MigratePfn::new(p).with_write(s.is_write());
        }
    }

    fn finalize_and_map(&self, start: u64, src: &[MigratePfn], dst: &[MigratePfn]) {
        let mut pt = self.0.pt.lock();
        for (i, (s, t)) in src.iter().zip(dst).enumerate() {
            if let (true, Some(p)) = (s.is_migrate(), t.pfn()) {
                pt.insert(start / PAGE + i as u64, (self.0.dev.backing(p), t.is_write()));
            }
        }
    }
}

/// `migrate_vma` callbacks from the device to RAM (explicit, or from the fault callback).
struct ToRam<'a>(&'a OldDevice);

impl MigrateOps for ToRam<'_> {
    fn alloc_and_copy(&self, _start: u64, src: &[MigratePfn], dst: &mut [MigratePfn]) {
        let dev = self.0;
        for (s, t) in src.iter().zip(dst.iter_mut()) {
            let Some(from) = s.pfn().filter(|&p| s.is_migrate() && dev.owns(p)) else { continue };
            let Ok(r) = dev.mm.alloc_page(flags::ANON, 0, false) else { continue };
            if let Some(m) = dev.mm.meta(r) {
                m.trylock();
            }
            dev.mm.platform().copy(r, dev.backing(from), 1);
            *t = MigratePfn::new(r).with_write(s.is_write());
        }
    }

    /// Nothing to do: the migration's invalidation already removed the device entries
    /// (`sync_cpu_device_pagetables` with the migrate event).
    fn finalize_and_map(&self, _start: u64, _src: &[MigratePfn], _dst: &[MigratePfn]) {}
}
