//! ZONE_DEVICE memory: device pagemaps (`struct dev_pagemap`, `memremap_pages`) and the
//! dispatch of the memory manager's device hooks to them.
//!
//! A driver registers device memory as a [`DevPagemap`] of one kind:
//! - [`MemoryKind::Private`]: memory the CPU cannot address. It gets frame numbers from a
//!   physical range no RAM or MMIO uses (`request_free_mem_region`) and page metadata; CPU
//!   page tables hold device-private software entries for it, and a CPU access calls the
//!   driver's [`PagemapOps::migrate_to_ram`].
//! - [`MemoryKind::Coherent`]: memory the CPU can address, mapped by ordinary entries. Here it is
//!   carved out of system RAM (as Linux's test driver uses special-purpose RAM).
//!
//! Reference-count rules (the CVE-2022-3523 class of bugs cannot happen):
//! - A free device page has refcount 0. [`Pagemaps::page_init`] (Linux's
//!   `zone_device_page_init`) gives an allocated page refcount 1 and locks it.
//! - The last `put_page` calls [`PagemapOps::page_free`] (the page is the driver's again).
//! - A CPU fault on a device-private entry takes a reference and the page lock *before* it
//!   calls `migrate_to_ram` and passes the page as `fault_page`; so the page cannot be freed or
//!   migrated away under the callback.
//! - [`Pagemaps::memunmap_pages`] refuses to remove a pagemap while any of its pages is in use:
//!   the driver evicts first (`migrate_device_range`).
//!
//! Per-page driver data (`zone_device_data`) is a word per page in the pagemap.

use crate::addr::Pfn;
use crate::mm::notify::Owner;
use crate::mm::pte::{Pte, SoftKind};
use crate::mm::space::{AddressSpace, FaultError};
use crate::mm::{DeviceMemory, Error, HUGE_FRAMES, HUGE_ORDER, Mm, frame::flags};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::RwLock;

/// The kind of device memory (`MEMORY_DEVICE_PRIVATE` / `MEMORY_DEVICE_COHERENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Not CPU-addressable; CPU page tables hold device-private entries.
    Private,
    /// CPU-addressable and cache-coherent; mapped by ordinary entries.
    Coherent,
}

/// The driver callbacks of a pagemap (`struct dev_pagemap_ops`).
pub trait PagemapOps: Send + Sync {
    /// The last reference to `pfn` went; the page is free for the driver's allocator
    /// (`page_free`). `order` above 0: the whole compound page at `pfn` is free (`folio_free`).
    fn page_free(&self, pagemap: &DevPagemap, pfn: Pfn, order: u32);
    /// A CPU access at `va` in `space` hit device-private page `page` (referenced and locked
    /// by the caller). Migrate at least that page to RAM (`migrate_vma_setup` with
    /// `fault_page = Some(page)` and [`Select::DEVICE_PRIVATE`](crate::mm::migrate::Select)).
    /// `Ok` when the access can be retried (a lost race included).
    fn migrate_to_ram(
        &self,
        pagemap: &DevPagemap,
        space: &mut AddressSpace,
        va: u64,
        page: Pfn,
    ) -> Result<(), FaultError>;
}

/// A registered range of device pages (`struct dev_pagemap`).
pub struct DevPagemap {
    kind: MemoryKind,
    owner: Owner,
    ranges: Vec<(Pfn, u64)>,
    ops: Weak<dyn PagemapOps>,
    data: Vec<AtomicU64>,
    dead: AtomicBool,
    /// The memory is the device's own (a BAR), not carved out of RAM: it never goes to the
    /// RAM allocator.
    external: bool,
}

impl core::fmt::Debug for DevPagemap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DevPagemap")
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("ranges", &self.ranges)
            .finish_non_exhaustive()
    }
}

impl DevPagemap {
    /// The kind.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }
    /// The owner cookie.
    pub fn owner(&self) -> Owner {
        self.owner
    }
    /// The frame ranges `(first, count)`.
    pub fn ranges(&self) -> &[(Pfn, u64)] {
        &self.ranges
    }
    /// The number of pages.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }
    fn index(&self, pfn: Pfn) -> Option<usize> {
        let mut base = 0u64;
        for &(start, n) in &self.ranges {
            if pfn.0 >= start.0 && pfn.0 < start.0 + n {
                return Some((base + pfn.0 - start.0) as usize);
            }
            base += n;
        }
        None
    }
    /// Whether `pfn` belongs to this pagemap.
    pub fn contains(&self, pfn: Pfn) -> bool {
        self.index(pfn).is_some()
    }
    /// The driver data of `pfn` (`page->zone_device_data`).
    pub fn data(&self, pfn: Pfn) -> Option<u64> {
        self.index(pfn).map(|i| self.data[i].load(Ordering::Acquire))
    }
    /// Sets the driver data of `pfn`.
    pub fn set_data(&self, pfn: Pfn, value: u64) {
        if let Some(i) = self.index(pfn) {
            self.data[i].store(value, Ordering::Release);
        }
    }
}

/// Every pagemap of one memory manager; implements the manager's [`DeviceMemory`] hooks.
pub struct Pagemaps {
    mm: Arc<Mm>,
    maps: RwLock<Vec<Arc<DevPagemap>>>,
}

impl core::fmt::Debug for Pagemaps {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pagemaps").field("maps", &self.maps.read().len()).finish()
    }
}

impl Pagemaps {
    /// The pagemap registry of `mm`, installed as its device hooks. Errors if `mm` already
    /// has device hooks.
    pub fn install(mm: &Arc<Mm>) -> Result<Arc<Pagemaps>, Error> {
        if mm.device_memory().is_some() {
            return Err(Error::Exists);
        }
        let p = Arc::new(Pagemaps { mm: mm.clone(), maps: RwLock::new(Vec::new()) });
        mm.set_device_memory(p.clone());
        Ok(p)
    }

    /// The memory manager.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.mm
    }

    /// `memremap_pages`: registers `frames` pages of device memory (a multiple of 512).
    /// Private memory gets unused frame numbers; coherent memory is taken from RAM in 2 MiB
    /// blocks.
    pub fn memremap_pages(
        &self,
        kind: MemoryKind,
        owner: Owner,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        if frames == 0 || !frames.is_multiple_of(HUGE_FRAMES) {
            return Err(Error::Invalid("device memory must be a non-zero multiple of 2 MiB"));
        }
        if ops.upgrade().is_none() {
            return Err(Error::Invalid("a pagemap needs page_free and migrate_to_ram callbacks"));
        }
        let ranges = match kind {
            MemoryKind::Private => alloc::vec![(self.mm.add_device_private_region(frames)?, frames)],
            MemoryKind::Coherent => {
                let mut r: Vec<(Pfn, u64)> = Vec::new();
                for _ in 0..frames / HUGE_FRAMES {
                    match self.mm.platform().alloc(HUGE_ORDER) {
                        Some(p) => r.push((p, HUGE_FRAMES)),
                        None => {
                            for (p, _) in r {
                                self.mm.platform().free(p, HUGE_ORDER);
                            }
                            return Err(Error::NoMemory);
                        }
                    }
                }
                r
            }
        };
        Ok(self.register(kind, owner, ranges, ops, false))
    }

    /// `memremap_pages` for coherent memory the device has at physical frames `[base, base +
    /// frames)` (a BAR the CPU can address, `MEMORY_DEVICE_COHERENT` proper): the frames get
    /// metadata and are mapped by ordinary CPU page-table entries. `base` and `frames` are
    /// 2 MiB-aligned; the range must not be RAM, nor in another live pagemap.
    pub fn memremap_pages_at(
        &self,
        owner: Owner,
        base: Pfn,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        self.check_at(base, frames, &ops)?;
        self.mm.add_device_region_at(base, frames)?;
        self.check_free(base, frames)?;
        Ok(self.register(MemoryKind::Coherent, owner, alloc::vec![(base, frames)], ops, true))
    }

    /// `memremap_pages` for private memory at frame numbers `[base, base + frames)` of a
    /// device-private region reserved earlier (`Mm::add_device_private_region`): how memory
    /// that comes and goes (hot-plug) is registered piece by piece in one reservation, so the
    /// frame table does not grow with every piece. 2 MiB-aligned; the frames must be free and
    /// in no other live pagemap.
    pub fn memremap_private_at(
        &self,
        owner: Owner,
        base: Pfn,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        self.check_at(base, frames, &ops)?;
        if !self.mm.is_device_private(base, frames) {
            return Err(Error::Invalid("private device frames outside a reserved device-private region"));
        }
        self.check_free(base, frames)?;
        Ok(self.register(MemoryKind::Private, owner, alloc::vec![(base, frames)], ops, true))
    }

    fn check_at(&self, base: Pfn, frames: u64, ops: &Weak<dyn PagemapOps>) -> Result<(), Error> {
        if frames == 0 || !frames.is_multiple_of(HUGE_FRAMES) || !base.0.is_multiple_of(HUGE_FRAMES) {
            return Err(Error::Invalid("device memory must be a non-zero, 2 MiB-aligned multiple of 2 MiB"));
        }
        if ops.upgrade().is_none() {
            return Err(Error::Invalid("a pagemap needs page_free and migrate_to_ram callbacks"));
        }
        if self.maps.read().iter().any(|m| m.ranges.iter().any(|&(s, n)| s.0 < base.0 + frames && base.0 < s.0 + n)) {
            return Err(Error::Exists);
        }
        Ok(())
    }

    fn check_free(&self, base: Pfn, frames: u64) -> Result<(), Error> {
        for i in 0..frames {
            if self.mm.meta(Pfn(base.0 + i)).is_some_and(|m| m.refcount() != 0 || m.has(flags::ALLOCATED)) {
                return Err(Error::Busy("device memory still referenced from an earlier registration"));
            }
        }
        Ok(())
    }

    fn register(
        &self,
        kind: MemoryKind,
        owner: Owner,
        ranges: Vec<(Pfn, u64)>,
        ops: Weak<dyn PagemapOps>,
        external: bool,
    ) -> Arc<DevPagemap> {
        let frames: u64 = ranges.iter().map(|r| r.1).sum();
        let mut data = Vec::new();
        data.resize_with(frames as usize, || AtomicU64::new(0));
        let pm = Arc::new(DevPagemap { kind, owner, ranges, ops, data, dead: AtomicBool::new(false), external });
        self.maps.write().push(pm.clone());
        pm
    }

    /// `memunmap_pages`: removes a pagemap whose pages are all free. `Busy` if any is still in
    /// use (evict with `migrate_device_range` first). Coherent memory goes back to RAM; private
    /// memory from [`memremap_pages`](Self::memremap_pages) gives its frame numbers and its
    /// frame-table section back, for the next `memremap_pages` to reuse (memory registered
    /// `_at` a range keeps its metadata: the range is the caller's).
    pub fn memunmap_pages(&self, pm: &Arc<DevPagemap>) -> Result<(), Error> {
        for &(start, n) in &pm.ranges {
            for i in 0..n {
                if self.mm.meta(Pfn(start.0 + i)).is_some_and(|m| m.refcount() > 0) {
                    return Err(Error::Busy("device pages still in use; evict them first"));
                }
            }
        }
        if (pm.kind, pm.external) == (MemoryKind::Private, false) {
            // Its frame numbers and section go back (a refusal leaves the pagemap as it was).
            for &(start, _) in &pm.ranges {
                self.mm.remove_device_private_region(start)?;
            }
        }
        pm.dead.store(true, Ordering::Release);
        self.maps.write().retain(|m| !Arc::ptr_eq(m, pm));
        if (pm.kind, pm.external) == (MemoryKind::Coherent, false) {
            for &(start, _) in &pm.ranges {
                self.mm.platform().free(start, HUGE_ORDER);
            }
        }
        Ok(())
    }

    /// The pagemap holding `pfn`.
    pub fn find(&self, pfn: Pfn) -> Option<Arc<DevPagemap>> {
        self.maps.read().iter().find(|m| m.contains(pfn)).cloned()
    }

    /// The owner of the pagemap holding `pfn` (`page_pgmap(page)->owner`), without taking a
    /// reference to the pagemap: what a device MMU asks of every translation.
    pub fn owner_of(&self, pfn: Pfn) -> Option<Owner> {
        self.maps.read().iter().find(|m| m.contains(pfn)).map(|m| m.owner())
    }

    /// `zone_device_page_init`: a free device page becomes allocated: refcount 1, locked.
    pub fn page_init(&self, pfn: Pfn) -> Result<(), Error> {
        self.folio_init(pfn, 0)
    }

    /// `zone_device_folio_init`: `2^order` free device pages starting at `head` (aligned to
    /// their size, in one pagemap) become one compound page: the head gets refcount 1 and the
    /// lock, the tails none (as a compound RAM page's).
    pub fn folio_init(&self, head: Pfn, order: u32) -> Result<(), Error> {
        let n = 1u64 << order;
        if !head.0.is_multiple_of(n) {
            return Err(Error::Invalid("compound device page not aligned to its size"));
        }
        let pm = self.find(head).ok_or(Error::Invalid("not a device page"))?;
        if !pm.contains(Pfn(head.0 + n - 1)) {
            return Err(Error::Invalid("compound device page crosses its pagemap's end"));
        }
        for i in 0..n {
            let m = self.mm.meta(Pfn(head.0 + i)).ok_or(Error::Invalid("not a device page"))?;
            if m.refcount() != 0 || m.has(flags::ALLOCATED) {
                return Err(Error::Busy("device page is not free"));
            }
        }
        for i in 1..n {
            if let Some(t) = self.mm.meta(Pfn(head.0 + i)) {
                t.init(flags::DEVICE | flags::TAIL, 0);
                t.put();
            }
        }
        let m = self.mm.meta(head).ok_or(Error::Invalid("not a device page"))?;
        m.init(flags::DEVICE, order);
        m.trylock();
        Ok(())
    }
}

impl DeviceMemory for Pagemaps {
    fn page_free(&self, pfn: Pfn, order: u32) {
        if let Some(pm) = self.find(pfn)
            && let Some(ops) = pm.ops.upgrade()
        {
            ops.page_free(&pm, pfn, order);
        }
    }

    fn migrate_to_ram(&self, space: &mut AddressSpace, va: u64, pfn: Pfn) -> Result<(), FaultError> {
        let pm = self.find(pfn).ok_or(FaultError::Corrupt)?;
        let ops = pm.ops.upgrade().ok_or(FaultError::Bus)?;
        let m = self.mm.meta(pfn).ok_or(FaultError::Corrupt)?;
        // Pin and lock the page across the callback (pitfall P3).
        m.get();
        if !m.trylock() {
            self.mm.put_page(pfn);
            return Err(FaultError::Migrating);
        }
        let r = ops.migrate_to_ram(&pm, space, va, pfn);
        m.unlock();
        self.mm.put_page(pfn);
        // Not moved (someone else holds a reference: pitfall P5): Linux's fault returns and
        // the access faults again. Under this lock the holder may never let go (the other
        // process after fork, another CPU's fault between its `get` and `put`), so the
        // caller is told to retry with the lock dropped, as for a page under migration.
        let stayed = matches!(space.lookup(va).map(|e| e.pte),
            Some(Pte::Soft(s)) if s.kind == SoftKind::DevicePrivate && s.pfn == pfn);
        match r {
            Ok(()) if stayed => Err(FaultError::Migrating),
            r => r,
        }
    }

    fn owner_of(&self, pfn: Pfn) -> Option<(Owner, bool)> {
        let maps = self.maps.read();
        let pm = maps.iter().find(|m| m.contains(pfn))?;
        Some((pm.owner, pm.kind == MemoryKind::Private))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::platform::fake::{BASE_PFN, FakePlatform};

    struct Nothing;
    impl PagemapOps for Nothing {
        fn page_free(&self, _: &DevPagemap, _: Pfn, _: u32) {}
        fn migrate_to_ram(&self, _: &DevPagemap, _: &mut AddressSpace, _: u64, _: Pfn) -> Result<(), FaultError> {
            Err(FaultError::Bus)
        }
    }

    #[test]
    fn coherent_memory_at_a_physical_range_is_registered_once_and_reused() {
        let frames = 4096;
        let mm = Mm::new(Arc::new(FakePlatform::new(frames as usize)), &[(Pfn(BASE_PFN), frames)]).unwrap();
        let pm = Pagemaps::install(&mm).unwrap();
        let ops: Arc<dyn PagemapOps> = Arc::new(Nothing);
        let w = || Arc::downgrade(&ops);
        let bar = Pfn((BASE_PFN + frames).next_multiple_of(HUGE_FRAMES) + 64 * HUGE_FRAMES);
        let free_before = mm.platform().free_frames();
        let a = pm.memremap_pages_at(Owner(1), bar, 2 * HUGE_FRAMES, w()).unwrap();
        assert_eq!(a.kind(), MemoryKind::Coherent);
        assert!(mm.meta(bar).is_some() && mm.meta(Pfn(bar.0 + 2 * HUGE_FRAMES - 1)).is_some());
        assert!(mm.meta(Pfn(bar.0 + 2 * HUGE_FRAMES)).is_none());
        assert_eq!(pm.memremap_pages_at(Owner(2), bar, HUGE_FRAMES, w()).unwrap_err(), Error::Exists);
        // In use: not removable.
        pm.page_init(bar).unwrap();
        assert!(matches!(pm.memunmap_pages(&a), Err(Error::Busy(_))));
        mm.meta(bar).unwrap().unlock();
        mm.put_page(bar);
        pm.memunmap_pages(&a).unwrap();
        // The BAR's frames never went to (or came from) the RAM allocator.
        assert_eq!(mm.platform().free_frames(), free_before);
        // Added back: same metadata; a part of it, too; a range straddling its end is refused.
        let b = pm.memremap_pages_at(Owner(1), bar, 2 * HUGE_FRAMES, w()).unwrap();
        pm.memunmap_pages(&b).unwrap();
        let c = pm.memremap_pages_at(Owner(1), Pfn(bar.0 + HUGE_FRAMES), HUGE_FRAMES, w()).unwrap();
        pm.memunmap_pages(&c).unwrap();
        assert!(matches!(
            pm.memremap_pages_at(Owner(1), Pfn(bar.0 + HUGE_FRAMES), 2 * HUGE_FRAMES, w()),
            Err(Error::Invalid(_))
        ));
        // RAM is not device memory; misaligned ranges are refused.
        let ram = Pfn(BASE_PFN.next_multiple_of(HUGE_FRAMES));
        assert!(matches!(pm.memremap_pages_at(Owner(1), ram, HUGE_FRAMES, w()), Err(Error::Invalid(_))));
        assert!(matches!(pm.memremap_pages_at(Owner(1), Pfn(bar.0 + 1), HUGE_FRAMES, w()), Err(Error::Invalid(_))));
    }

    #[test]
    fn private_memory_is_registered_piece_by_piece_in_one_reservation() {
        let frames = 4096;
        let mm = Mm::new(Arc::new(FakePlatform::new(frames as usize)), &[(Pfn(BASE_PFN), frames)]).unwrap();
        let pm = Pagemaps::install(&mm).unwrap();
        let ops: Arc<dyn PagemapOps> = Arc::new(Nothing);
        let w = || Arc::downgrade(&ops);
        let base = mm.add_device_private_region(4 * HUGE_FRAMES).unwrap();
        let piece = |k: u64| Pfn(base.0 + k * HUGE_FRAMES);
        let a = pm.memremap_private_at(Owner(1), piece(1), HUGE_FRAMES, w()).unwrap();
        assert_eq!(a.kind(), MemoryKind::Private);
        assert_eq!(pm.memremap_private_at(Owner(1), piece(1), HUGE_FRAMES, w()).unwrap_err(), Error::Exists);
        let b = pm.memremap_private_at(Owner(1), piece(2), 2 * HUGE_FRAMES, w()).unwrap();
        pm.folio_init(piece(2), 9).unwrap();
        assert!(matches!(pm.memunmap_pages(&b), Err(Error::Busy(_))));
        mm.meta(piece(2)).unwrap().unlock();
        mm.put_page(piece(2));
        pm.memunmap_pages(&b).unwrap();
        pm.memunmap_pages(&a).unwrap();
        // Removed pieces come back at the same frame numbers.
        let c = pm.memremap_private_at(Owner(1), piece(1), 3 * HUGE_FRAMES, w()).unwrap();
        assert!(c.contains(piece(3)));
        // Beyond the reservation, RAM, or misaligned: refused.
        let beyond = pm.memremap_private_at(Owner(1), piece(4), HUGE_FRAMES, w());
        assert!(matches!(beyond, Err(Error::Invalid(_))));
        let ram = Pfn(BASE_PFN.next_multiple_of(HUGE_FRAMES));
        assert!(matches!(pm.memremap_private_at(Owner(1), ram, HUGE_FRAMES, w()), Err(Error::Invalid(_))));
        assert!(matches!(pm.memremap_private_at(Owner(1), Pfn(base.0 + 1), HUGE_FRAMES, w()), Err(Error::Invalid(_))));
    }

    /// The memory manager, its pagemaps, a private dmirror device, a file of it bound to one
    /// process, the process, and a buffer's address.
    type Fixture = (
        Arc<Mm>,
        Arc<Pagemaps>,
        Arc<crate::dmirror::DmirrorDevice>,
        Arc<crate::dmirror::Dmirror>,
        Arc<crate::mm::SharedSpace>,
        u64,
    );

    /// A private device with `chunk` bytes of memory per pagemap, one process, and a buffer of
    /// `pages` pages filled with a pattern.
    fn dmirror_fixture(frames: u64, chunk: u64, pages: u64) -> Fixture {
        use crate::mm::space::MapRequest;
        use crate::mm::vma::Prot;
        let mm = Mm::new(Arc::new(FakePlatform::new(frames as usize)), &[(Pfn(BASE_PFN), frames)]).unwrap();
        let pm = Pagemaps::install(&mm).unwrap();
        let dev = crate::dmirror::DmirrorDevice::new(&pm, MemoryKind::Private, Owner(0xd000), chunk);
        let p = mm.share(AddressSpace::new(&mm).unwrap());
        let d = crate::dmirror::Dmirror::open(&dev, &p).unwrap();
        let a = p.lock().mmap(MapRequest::anon(pages * 4096, Prot::RW)).unwrap();
        let data: Vec<u8> = (0..pages * 4096).map(|i| (i / 4096 + i) as u8).collect();
        p.lock().write(a, &data).unwrap();
        (mm, pm, dev, d, p, a)
    }

    /// A CPU fault on a device-private page that someone else holds a reference to (another
    /// CPU's fault between its `get` and its `put`, the other process's after fork, a pin) does
    /// not move it (pitfall P5): the fault must say "retry once the lock is dropped", as
    /// Linux's fault returns and the access faults again, not report a corrupt page table
    /// after the copy loop's few tries (the threaded stress test's "CPU write returned
    /// Corrupt").
    #[test]
    fn a_fault_on_a_held_device_private_page_asks_for_a_retry() {
        use crate::mm::pte::{Pte, SoftKind};
        use crate::mm::space::{Access, FaultError};
        let (mm, _pm, _dev, d, p, a) = dmirror_fixture(4096, 2 << 20, 1);
        d.migrate_to_dev(a, 1).unwrap();
        let dpfn = match p.lock().lookup(a).map(|e| e.pte) {
            Some(Pte::Soft(s)) if s.kind == SoftKind::DevicePrivate => s.pfn,
            other => panic!("not on the device: {other:?}"),
        };
        let m = mm.meta(dpfn).unwrap();
        m.get();
        let mut b = [0u8; 8];
        assert_eq!(p.lock().read(a, &mut b), Err(FaultError::Migrating));
        assert_eq!(p.lock().fault(a, Access::Write), Err(FaultError::Migrating));
        mm.put_page(dpfn);
        // Let go: the next try moves it.
        p.lock().read(a, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert!(matches!(p.lock().lookup(a).map(|e| e.pte), Some(Pte::Present(_))));
    }

    #[test]
    fn device_memory_added_and_removed_100_times_gives_its_sections_back() {
        let (mm, _pm, dev, d, p, a) = dmirror_fixture(4096, 2 << 20, 16);
        let start = mm.frames().live_sections();
        for cycle in 0..100 {
            // The migration adds a chunk (a pagemap, a section); release removes it.
            let r = d.migrate_to_dev(a, 16);
            assert!(r.is_ok(), "cycle {cycle}: migrate_to_dev: {:?}", r.err());
            assert_eq!(dev.pages_in_use(), 16, "cycle {cycle}");
            assert_eq!(mm.frames().live_sections(), start + 1, "cycle {cycle}");
            dev.release().unwrap();
            assert_eq!(dev.pages_in_use(), 0, "cycle {cycle}");
            assert_eq!(mm.frames().live_sections(), start, "cycle {cycle}: a section leaked");
        }
        // A migration still works, and the data made every trip.
        let (buf, _) = d.migrate_to_dev(a, 16).unwrap();
        let want: Vec<u8> = (0..16 * 4096u64).map(|i| (i / 4096 + i) as u8).collect();
        assert!(buf == want, "data changed over the cycles");
        let mut back = alloc::vec![0u8; 16 * 4096];
        dev.release().unwrap();
        p.lock().read(a, &mut back).unwrap();
        assert!(back == want);
        assert_eq!(mm.frames().live_sections(), start);
    }

    #[test]
    fn memremap_and_memunmap_reuse_frame_numbers_and_sections() {
        let frames = 4096;
        let mm = Mm::new(Arc::new(FakePlatform::new(frames as usize)), &[(Pfn(BASE_PFN), frames)]).unwrap();
        let pm = Pagemaps::install(&mm).unwrap();
        let ops: Arc<dyn PagemapOps> = Arc::new(Nothing);
        let w = || Arc::downgrade(&ops);
        let start = mm.frames().live_sections();
        let first = pm.memremap_pages(MemoryKind::Private, Owner(1), HUGE_FRAMES, w()).unwrap();
        let base = first.ranges()[0].0;
        pm.memunmap_pages(&first).unwrap();
        assert_eq!(mm.frames().live_sections(), start);
        // The removed range has no metadata any more.
        assert!(mm.meta(base).is_none());
        for _ in 0..200 {
            let a = pm.memremap_pages(MemoryKind::Private, Owner(1), HUGE_FRAMES, w()).unwrap();
            assert_eq!(a.ranges()[0].0, base, "released frame numbers are handed out again");
            // Metadata comes back clean even if a page was used the last time round.
            let m = mm.meta(base).unwrap();
            assert_eq!((m.refcount(), m.flags(), m.owner(), m.index()), (0, 0, 0, 0));
            pm.page_init(base).unwrap();
            m.set_owner(7, 9);
            m.unlock();
            mm.put_page(base);
            pm.memunmap_pages(&a).unwrap();
        }
        assert_eq!(mm.frames().live_sections(), start);
        // Live pagemaps of other sizes sit side by side; frees in any order are reused.
        let x = pm.memremap_pages(MemoryKind::Private, Owner(1), 2 * HUGE_FRAMES, w()).unwrap();
        let y = pm.memremap_pages(MemoryKind::Private, Owner(1), HUGE_FRAMES, w()).unwrap();
        let z = pm.memremap_pages(MemoryKind::Private, Owner(1), HUGE_FRAMES, w()).unwrap();
        let (xb, zb) = (x.ranges()[0].0, z.ranges()[0].0);
        assert_eq!(xb.0 + 2 * HUGE_FRAMES, zb.0, "fresh regions are adjacent");
        // A page in use right after x's frames does not keep x from going.
        pm.page_init(zb).unwrap();
        pm.memunmap_pages(&x).unwrap();
        assert!(matches!(pm.memunmap_pages(&z), Err(Error::Busy(_))));
        mm.meta(zb).unwrap().unlock();
        mm.put_page(zb);
        pm.memunmap_pages(&z).unwrap();
        pm.memunmap_pages(&y).unwrap();
        assert_eq!(mm.frames().live_sections(), start);
    }

    #[test]
    fn a_full_frame_table_is_a_typed_error_at_memremap_and_at_migration() {
        let frames = 4096;
        let mm = Mm::new(Arc::new(FakePlatform::new(frames as usize)), &[(Pfn(BASE_PFN), frames)]).unwrap();
        let pm = Pagemaps::install(&mm).unwrap();
        let ops: Arc<dyn PagemapOps> = Arc::new(Nothing);
        let mut live = Vec::new();
        let err = loop {
            match pm.memremap_pages(MemoryKind::Private, Owner(1), HUGE_FRAMES, Arc::downgrade(&ops)) {
                Ok(m) => live.push(m),
                Err(e) => break e,
            }
            assert!(live.len() <= crate::mm::frame::MAX_SECTIONS, "the table never filled");
        };
        assert_eq!(err, Error::FrameTableFull);
        assert_eq!(mm.frames().live_sections(), crate::mm::frame::MAX_SECTIONS);
        // A dmirror device that needs a chunk now says why, instead of a later quiet ENOENT.
        let dev = crate::dmirror::DmirrorDevice::new(&pm, MemoryKind::Private, Owner(0xd000), 2 << 20);
        let p = mm.share(AddressSpace::new(&mm).unwrap());
        let d = crate::dmirror::Dmirror::open(&dev, &p).unwrap();
        let a = p.lock().mmap(crate::mm::space::MapRequest::anon(4 * 4096, crate::mm::vma::Prot::RW)).unwrap();
        p.lock().write(a, &[1u8; 4 * 4096]).unwrap();
        let e = d.migrate_to_dev(a, 4).map(|_| ()).unwrap_err();
        assert_eq!(e.errno, Error::FrameTableFull.errno(), "{e:?}");
        assert!(e.why.contains("frame table"), "{e:?}");
        // Freeing one pagemap makes room again.
        pm.memunmap_pages(&live.pop().unwrap()).unwrap();
        d.migrate_to_dev(a, 4).unwrap();
    }
}
