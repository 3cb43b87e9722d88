//! Device memory of the real devices as ZONE_DEVICE-style pages, and migration between system
//! RAM and it, copied by the device's DMA engine.
//!
//! Each device's ivshmem BAR becomes one [`DevPagemap`]: device page k (the k-th frame number
//! of the pagemap) is the 4 KiB at offset k * 4096 of the BAR. By default the memory is
//! private: the CPU never maps these pages. A device the machine file marks coherent
//! (`devices.coherent=N` on the command line) registers its BAR frames themselves
//! (`MEMORY_DEVICE_COHERENT`): the CPU maps them with ordinary entries and reads and writes
//! device memory in place, and only an explicit migration brings pages back. Either way the
//! copy engine moves data in and out:
//! - [`migrate_to_device`]: `migrate_vma_setup` (system pages), allocate device pages,
//!   scatter-gather DMA RAM -> device in requests of consecutive device pages (several in
//!   flight), `pages`, `finalize`;
//! - CPU touch of a device page: the pagemap's `migrate_to_ram`, which DMAs the page back
//!   into a fresh RAM page from inside the page-fault handler;
//! - [`migrate_to_ram`]: the explicit way back for a range.
//!
//! A failed DMA declines the page (its destination is dropped before `pages`), so the source
//! stays where it was and nothing is lost. RAM pages are DMA'd at the kernel half of the
//! device's domain (see [`devices`](crate::devices)).
//!
//! Part of a device's memory can be carved out ([`Vram::carve`]) for a driver that manages it
//! itself: [`backing::BarBacking`] runs dmirror test devices, and so the acceptance suite, on
//! it.

use crate::copyengine::Dir;
use crate::devices::{self, DevError};
use crate::mm::uspace;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use hmm::addr::Pfn;
use hmm::mm::frame::flags;
use hmm::mm::migrate::{MigrateArgs, MigratePfn, MigrateVma, Select};
use hmm::mm::notify::Owner;
use hmm::mm::space::{AddressSpace, FaultError};
use hmm::mm::{Error, SharedSpace};
use hmm::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use spin::{Mutex, Once};

pub mod backing;

const PAGE: u64 = 4096;
/// Pages per DMA request (each request is one run of consecutive device pages).
const RUN: usize = 32;
/// Requests in flight at once.
const IN_FLIGHT: usize = 6;
/// Pages a CPU fault on device memory brings back by default (a 64 KiB window: one DMA
/// request costs about as much as 16 page copies).
const FAULT_AROUND: u64 = 16;

static PAGEMAPS: Once<Result<Arc<Pagemaps>, Error>> = Once::new();
/// Bit n: device n's memory is coherent (set from the command line before first use).
static COHERENT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Marks the devices whose memory is coherent (bit n: device n). Call before [`all`].
pub fn set_coherent(mask: u64) {
    COHERENT.store(mask, core::sync::atomic::Ordering::Relaxed);
}

/// The kernel's pagemap registry (installed on first use).
pub fn pagemaps() -> Result<&'static Arc<Pagemaps>, Error> {
    PAGEMAPS.call_once(|| Pagemaps::install(uspace::mm())).as_ref().map_err(Clone::clone)
}

/// Pages moved and faults served, per device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VramStats {
    /// Pages migrated RAM -> device.
    pub to_device: u64,
    /// Pages migrated device -> RAM (explicitly or by CPU faults).
    pub to_ram: u64,
    /// CPU faults on device pages.
    pub cpu_faults: u64,
    /// Pages a failed DMA declined.
    pub declined: u64,
}

/// What copies pages between RAM and device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copier {
    /// The device's copy engine (DMA through its domain): the default.
    Dma,
    /// The CPU, through the direct map and the BAR: the baseline.
    Cpu,
}

/// One device's memory.
#[derive(Debug)]
pub struct Vram {
    device: usize,
    kind: MemoryKind,
    owner: Owner,
    pagemap: Once<Arc<DevPagemap>>,
    free: Mutex<Vec<u64>>,
    pages: u64,
    copier: Mutex<Copier>,
    fault_around: core::sync::atomic::AtomicU64,
    /// Counters.
    pub stats: Mutex<VramStats>,
}

impl Vram {
    /// Registers device `device`'s memory (`bytes`, a multiple of 2 MiB) as device pages of
    /// `kind`: private pages, or (coherent) the BAR's own frames.
    pub fn register(device: usize, bytes: u64, kind: MemoryKind) -> Result<Arc<Vram>, Error> {
        let pages = bytes / PAGE;
        let v = Arc::new(Vram {
            device,
            kind,
            owner: Owner(0x7e00 + device as u64),
            pagemap: Once::new(),
            free: Mutex::new((0..pages).rev().collect()),
            pages,
            copier: Mutex::new(Copier::Dma),
            fault_around: core::sync::atomic::AtomicU64::new(FAULT_AROUND),
            stats: Mutex::new(VramStats::default()),
        });
        let ops: Arc<dyn PagemapOps> = v.clone();
        let w: Weak<dyn PagemapOps> = Arc::downgrade(&ops);
        let pm = match kind {
            MemoryKind::Private => pagemaps()?.memremap_pages(kind, v.owner, pages, w)?,
            MemoryKind::Coherent => {
                let bar = devices::with(|d| d.list.get(device).map(|x| x.vram.0))
                    .flatten()
                    .ok_or(Error::Invalid("no such device"))?;
                pagemaps()?.memremap_pages_at(v.owner, Pfn(bar / PAGE), pages, w)?
            }
        };
        v.pagemap.call_once(|| pm);
        Ok(v)
    }

    /// Chooses what copies this device's migrations (both ways, faults included).
    pub fn set_copier(&self, c: Copier) {
        *self.copier.lock() = c;
    }

    /// What copies this device's migrations.
    pub fn copier(&self) -> Copier {
        *self.copier.lock()
    }

    /// Sets how many pages (a power of two, 1 to 512) a CPU fault on this device's memory
    /// brings back: the aligned window around the faulting page.
    pub fn set_fault_around(&self, pages: u64) -> Result<(), Error> {
        if !pages.is_power_of_two() || pages > 512 {
            return Err(Error::Invalid("fault-around must be a power of two from 1 to 512 pages"));
        }
        self.fault_around.store(pages, core::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Pages a CPU fault brings back.
    pub fn fault_around(&self) -> u64 {
        self.fault_around.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Private or coherent.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// The device page a CPU page-table entry maps, if it is one of this device's: a
    /// device-private entry for private memory, an ordinary entry for coherent memory.
    pub fn holds(&self, pte: &hmm::mm::pte::Pte) -> Option<Pfn> {
        use hmm::mm::pte::{Pte, SoftKind};
        let pfn = match (self.kind, pte) {
            (MemoryKind::Private, Pte::Soft(s)) if s.kind == SoftKind::DevicePrivate => s.pfn,
            (MemoryKind::Coherent, Pte::Present(p)) => p.pfn,
            _ => return None,
        };
        self.offset_of(pfn).map(|_| pfn)
    }

    /// What `migrate_vma_setup` selects to find this device's pages.
    fn select(&self) -> Select {
        match self.kind {
            MemoryKind::Private => Select::DEVICE_PRIVATE,
            MemoryKind::Coherent => Select::DEVICE_COHERENT,
        }
    }

    /// The owner of this device's pages (the device MMU mirrors them as local).
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Pages of device memory.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Pages in use.
    pub fn in_use(&self) -> u64 {
        self.pages - self.free.lock().len() as u64
    }

    fn first(&self) -> Option<Pfn> {
        self.pagemap.get().map(|p| p.ranges()[0].0)
    }

    /// The byte offset in device memory of device page `pfn`.
    pub fn offset_of(&self, pfn: Pfn) -> Option<u64> {
        let first = self.first()?;
        (pfn.0 >= first.0 && pfn.0 - first.0 < self.pages).then(|| (pfn.0 - first.0) * PAGE)
    }

    /// Takes `pages` free pages at a 2 MiB-aligned offset out of this device's allocator, for a
    /// driver that manages them itself (a dmirror device over this memory); returns the first
    /// page's index. `None` if no such run is free.
    pub fn carve(&self, pages: u64) -> Option<u64> {
        const BLOCK: u64 = 512;
        let mut free = self.free.lock();
        let mut is_free = alloc::vec![false; self.pages as usize];
        for &k in free.iter() {
            is_free[k as usize] = true;
        }
        let first = (0..self.pages.saturating_sub(pages.max(1) - 1))
            .step_by(BLOCK as usize)
            .find(|&f| (f..f + pages).all(|k| is_free[k as usize]))?;
        free.retain(|&k| !(first..first + pages).contains(&k));
        Some(first)
    }

    /// Gives back pages taken with [`carve`](Self::carve).
    pub fn uncarve(&self, first: u64, pages: u64) {
        self.free.lock().extend((first..first + pages).rev());
    }

    /// The BAR frame holding page `index` of this device's memory.
    pub fn bar_frame(&self, index: u64) -> Option<Pfn> {
        let bar = devices::with(|d| d.list.get(self.device).map(|dev| dev.vram.0)).flatten()?;
        (index < self.pages).then(|| Pfn(bar / PAGE + index))
    }

    /// The device number.
    pub fn device(&self) -> usize {
        self.device
    }

    /// A free device page, referenced and locked for a migration.
    fn alloc(&self) -> Option<Pfn> {
        let k = self.free.lock().pop()?;
        let p = Pfn(self.first()?.0 + k);
        match pagemaps().ok()?.page_init(p) {
            Ok(()) => Some(p),
            Err(_) => {
                self.free.lock().push(k);
                None
            }
        }
    }
}

/// Gives back a locked, referenced destination page a migration did not use (a device page:
/// its `page_free` puts it on the device's free list; a RAM page: back to the allocator).
fn unuse(p: Pfn) {
    let mm = uspace::mm();
    if let Some(m) = mm.meta(p) {
        m.unlock();
    }
    mm.put_page(p);
}

impl PagemapOps for Vram {
    fn page_free(&self, _pm: &DevPagemap, pfn: Pfn, order: u32) {
        let Some(first) = self.first() else { return };
        let mut free = self.free.lock();
        for k in 0..1u64 << order {
            free.push(pfn.0 + k - first.0);
        }
    }

    fn migrate_to_ram(&self, _pm: &DevPagemap, space: &mut AddressSpace, va: u64, page: Pfn) -> Result<(), FaultError> {
        // Fault-around: this device's pages in the aligned window around the fault come back
        // in the same DMA request (AMD SVM migrates its whole granule on a CPU fault), within
        // the faulting VMA.
        let window = self.fault_around() * PAGE;
        let (lo, hi) = space.vmas().find(va).map(|v| (v.start, v.end)).ok_or(FaultError::Bus)?;
        let start = (va & !(window - 1)).max(lo);
        let end = ((va & !(window - 1)) + window).min(hi);
        let args = MigrateArgs { start, end, owner: self.owner, select: self.select(), fault_page: Some(page) };
        let mut mig = space.migrate_vma_setup(args).map_err(|_| FaultError::Bus)?;
        let moved = self.copy_out(&mut mig).map_err(|_| FaultError::Bus)?;
        let i = ((va - start) / PAGE) as usize;
        let faulting_moved = mig.dst().get(i).is_some_and(|d| d.pfn().is_some());
        mig.pages();
        mig.finalize();
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

/// A DMA run: consecutive device pages starting at `offset`, with their RAM pages.
struct Run {
    offset: u64,
    entries: Vec<usize>,
    /// The RAM pages as device addresses (one segment each), and as physical addresses.
    ram: Vec<(u64, u32)>,
    pas: Vec<u64>,
}

impl Vram {
    /// Runs the DMA for `runs` (several requests in flight); returns the entries whose copy
    /// failed.
    fn transfer(&self, dir: Dir, runs: &[Run]) -> Vec<usize> {
        if self.copier() == Copier::Cpu {
            return self.cpu_transfer(dir, runs);
        }
        let mut failed = Vec::new();
        devices::with(|d| {
            for window in runs.chunks(IN_FLIGHT) {
                let results = d.dma_many(self.device, dir, window.iter().map(|r| (r.offset, &r.ram[..])));
                for (r, res) in window.iter().zip(results) {
                    if let Err(e) = res {
                        log::warn!(
                            "dev{}: DMA of {} pages at {:#x} failed: {e}",
                            self.device,
                            r.entries.len(),
                            r.offset
                        );
                        failed.extend(&r.entries);
                    }
                }
            }
        })
        .unwrap_or_else(|| failed.extend(runs.iter().flat_map(|r| r.entries.iter().copied())));
        failed
    }

    /// The CPU-copy baseline: the same runs copied by the CPU through the BAR.
    fn cpu_transfer(&self, dir: Dir, runs: &[Run]) -> Vec<usize> {
        let Some(bar) = devices::with(|d| d.list.get(self.device).map(|dev| dev.vram.0)).flatten() else {
            return runs.iter().flat_map(|r| r.entries.iter().copied()).collect();
        };
        for r in runs {
            for (k, &pa) in r.pas.iter().enumerate() {
                let dev = bar + r.offset + k as u64 * PAGE;
                match dir {
                    Dir::ToDevice => crate::mm::copy_phys(dev, pa, PAGE),
                    Dir::ToRam => crate::mm::copy_phys(pa, dev, PAGE),
                }
            }
        }
        Vec::new()
    }

    /// Groups `(entry, device page, ram pfn)` into runs of consecutive device pages.
    fn runs(&self, items: &[(usize, Pfn, Pfn)]) -> Vec<Run> {
        let at: Vec<(usize, u64, Pfn)> =
            items.iter().filter_map(|&(i, dp, ram)| Some((i, self.offset_of(dp)?, ram))).collect();
        self.runs_at(&at)
    }

    /// Groups `(entry, byte offset in device memory, ram pfn)` into runs of consecutive device
    /// pages. The "RAM" frame may be another device's BAR frame (peer to peer).
    fn runs_at(&self, items: &[(usize, u64, Pfn)]) -> Vec<Run> {
        let kernel = devices::with(|d| d.list.get(self.device).map(|dev| dev.iova_of(0))).flatten().unwrap_or(0);
        let mut runs: Vec<Run> = Vec::new();
        for &(i, off, ram) in items {
            let seg = (kernel + ram.addr(), PAGE as u32);
            match runs.last_mut() {
                Some(r) if r.offset + r.ram.len() as u64 * PAGE == off && r.ram.len() < RUN => {
                    r.entries.push(i);
                    r.ram.push(seg);
                    r.pas.push(ram.addr());
                }
                _ => runs.push(Run {
                    offset: off,
                    entries: alloc::vec![i],
                    ram: alloc::vec![seg],
                    pas: alloc::vec![ram.addr()],
                }),
            }
        }
        runs
    }

    /// For each device page in `mig` marked to migrate: a RAM page, filled by DMA. Returns how
    /// many were filled; failed ones are declined (the device keeps the page).
    fn copy_out(&self, mig: &mut MigrateVma<'_>) -> Result<u64, Error> {
        let mm = uspace::mm();
        let mut items = Vec::new();
        for i in 0..mig.src().len() {
            let s = mig.src()[i];
            let Some(from) = s.pfn().filter(|&p| s.is_migrate() && self.offset_of(p).is_some()) else { continue };
            let Ok(r) = mm.alloc_page(flags::ANON, 0, false) else { continue };
            if let Some(m) = mm.meta(r) {
                m.trylock();
            }
            mig.dst_mut()[i] = MigratePfn::new(r).with_write(s.is_write());
            items.push((i, from, r));
        }
        let failed = self.transfer(Dir::ToRam, &self.runs(&items));
        for &i in &failed {
            if let Some(r) = mig.dst()[i].pfn() {
                unuse(r);
            }
            mig.dst_mut()[i] = MigratePfn(0);
        }
        self.stats.lock().declined += failed.len() as u64;
        Ok((items.len() - failed.len()) as u64)
    }
}

/// Migrates `npages` at `start` of `space` to device memory; returns how many moved. Pages
/// already on a device, and pages for which device memory ran out, stay.
pub fn migrate_to_device(v: &Vram, space: &Arc<SharedSpace>, start: u64, npages: u64) -> Result<u64, DevError> {
    let mm = uspace::mm();
    let mut s = space.lock();
    let args =
        MigrateArgs { start, end: start + npages * PAGE, owner: v.owner, select: Select::SYSTEM, fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(|e| DevError::Bind(alloc::format!("migrate_vma_setup: {e}")))?;
    let zero = mm.zero_pfn();
    let mut items = Vec::new();
    for i in 0..mig.src().len() {
        let src = mig.src()[i];
        if !src.is_migrate() {
            continue;
        }
        let Some(dp) = v.alloc() else { break };
        mig.dst_mut()[i] = MigratePfn::new(dp).with_write(src.is_write());
        // An empty page is filled from the zero page.
        items.push((i, dp, src.pfn().unwrap_or(zero)));
    }
    let failed = v.transfer(Dir::ToDevice, &v.runs(&items));
    let moved = finish(mig, &failed);
    let mut st = v.stats.lock();
    st.to_device += moved;
    st.declined += failed.len() as u64;
    Ok(moved)
}

/// Ends a migration to device memory whose copies of entries `failed` did not happen: those
/// destinations are given back (the sources stay), then `pages` and `finalize`. Returns the
/// pages that moved.
fn finish(mut mig: MigrateVma<'_>, failed: &[usize]) -> u64 {
    for &i in failed {
        if let Some(dp) = mig.dst()[i].pfn() {
            unuse(dp);
        }
        mig.dst_mut()[i] = MigratePfn(0);
    }
    mig.pages();
    let moved =
        (0..mig.src().len()).filter(|&i| mig.src()[i].is_migrate() && mig.dst()[i].pfn().is_some()).count() as u64;
    mig.finalize();
    moved
}

/// Migrates this device's pages among `npages` at `start` back to RAM; returns how many moved.
pub fn migrate_to_ram(v: &Vram, space: &Arc<SharedSpace>, start: u64, npages: u64) -> Result<u64, DevError> {
    let mut s = space.lock();
    let args = MigrateArgs { start, end: start + npages * PAGE, owner: v.owner, select: v.select(), fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(|e| DevError::Bind(alloc::format!("migrate_vma_setup: {e}")))?;
    let moved = v.copy_out(&mut mig).map_err(|e| DevError::Bind(alloc::format!("{e}")))?;
    mig.pages();
    mig.finalize();
    v.stats.lock().to_ram += moved;
    Ok(moved)
}

/// Migrates `from`'s pages among `npages` at `start` of `space` straight into `to`'s memory:
/// `from`'s engine copies each run from its memory into `to`'s BAR, which every other device's
/// domain maps (peer to peer, no bounce through RAM). Returns how many moved; pages for which
/// `to` has no room, or whose copy failed, stay on `from`.
pub fn migrate_device_to_device(
    from: &Vram,
    to: &Vram,
    space: &Arc<SharedSpace>,
    start: u64,
    npages: u64,
) -> Result<u64, DevError> {
    if from.device == to.device {
        return Err(DevError::Bind("device-to-device migration needs two different devices".into()));
    }
    let to_bar =
        devices::with(|d| d.list.get(to.device).map(|x| x.vram.0)).flatten().ok_or(DevError::NoDevice(to.device))?;
    let mut s = space.lock();
    let args =
        MigrateArgs { start, end: start + npages * PAGE, owner: from.owner, select: from.select(), fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(|e| DevError::Bind(alloc::format!("migrate_vma_setup: {e}")))?;
    let mut items = Vec::new();
    for i in 0..mig.src().len() {
        let src = mig.src()[i];
        let Some(sp) = src.pfn().filter(|&p| src.is_migrate() && from.offset_of(p).is_some()) else { continue };
        let Some(dp) = to.alloc() else { break };
        let Some(off) = to.offset_of(dp) else { break };
        mig.dst_mut()[i] = MigratePfn::new(dp).with_write(src.is_write());
        // The destination, as the source engine sees it: a page of `to`'s BAR.
        items.push((i, sp, Pfn((to_bar + off) / PAGE)));
    }
    let failed = from.transfer(Dir::ToRam, &from.runs(&items));
    let moved = finish(mig, &failed);
    from.stats.lock().declined += failed.len() as u64;
    to.stats.lock().to_device += moved;
    Ok(moved)
}

static VRAMS: Once<Result<Vec<Arc<Vram>>, Error>> = Once::new();

/// Every device's memory, registered on first use.
pub fn all() -> Result<&'static [Arc<Vram>], Error> {
    VRAMS
        .call_once(|| {
            let sizes: Vec<u64> = devices::with(|d| d.list.iter().map(|dev| dev.vram.1).collect()).unwrap_or_default();
            let coherent = COHERENT.load(core::sync::atomic::Ordering::Relaxed);
            let kind = |n: usize| if coherent >> n & 1 == 1 { MemoryKind::Coherent } else { MemoryKind::Private };
            sizes.iter().enumerate().map(|(n, &b)| Vram::register(n, b, kind(n))).collect()
        })
        .as_ref()
        .map(|v| &v[..])
        .map_err(Clone::clone)
}

/// What [`round_trip`] measured.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrip {
    /// Pages moved each way.
    pub pages: u64,
    /// ns per page, RAM -> device (migrate_vma + DMA).
    pub to_device_ns: u64,
    /// ns per page, CPU faults bringing pages back (migrate_to_ram + DMA each).
    pub fault_back_ns: u64,
    /// ns per page, explicit migration back.
    pub to_ram_ns: u64,
}

/// Migrates `pages` pages of a fresh process to device `n` and back, both ways (CPU faults,
/// explicit), checking where the pages are and that every byte survives (read through the
/// BAR while on the device, through real loads after).
pub fn round_trip(n: usize, pages: u64) -> Result<RoundTrip, alloc::string::String> {
    use crate::arch::time;
    use hmm::mm::pte::Pte;
    use hmm::mm::space::MapRequest;
    use hmm::mm::vma::Prot;
    let v =
        all().map_err(|e| alloc::format!("registering device memory: {e}"))?.get(n).ok_or("no such device")?.clone();
    let bar = devices::with(|d| d.list[n].vram.0).ok_or("devices not initialised")?;
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|e| alloc::format!("{e}"))?);
    let a = space.lock().mmap(MapRequest::anon(pages * PAGE, Prot::RW)).map_err(|e| alloc::format!("mmap: {e}"))?;
    let data: Vec<u8> = (0..pages * PAGE / 8).flat_map(|i| (i ^ (n as u64) << 40).to_le_bytes()).collect();
    uspace::run(&space, |u| u.write(a, &data)).map_err(|f| alloc::format!("CPU fill: {:?}", f.error))?;
    let ns = |c: u64| time::cycles_to_ns(c).unwrap_or(0) / pages;

    let t0 = time::rdtsc();
    let moved = migrate_to_device(&v, &space, a, pages).map_err(|e| alloc::format!("{e}"))?;
    let to_device_ns = ns(time::rdtsc() - t0);
    if moved != pages {
        return Err(alloc::format!("{moved} of {pages} pages reached dev{n}"));
    }
    let mut page = alloc::vec![0u8; PAGE as usize];
    for k in 0..pages {
        let e = space.lock().lookup(a + k * PAGE).map(|e| e.pte);
        let Some(pfn) = e.as_ref().and_then(|e| v.holds(e)) else {
            return Err(alloc::format!("page {k} is not in dev{n}'s {:?} memory after the migration: {e:?}", v.kind));
        };
        let off = v.offset_of(pfn).ok_or("a device entry outside this device's memory")?;
        crate::mm::read_phys(bar + off, &mut page);
        if page[..] != data[(k * PAGE) as usize..((k + 1) * PAGE) as usize] {
            return Err(alloc::format!("page {k}: device memory differs from what the CPU wrote"));
        }
    }
    let faults = v.stats.lock().cpu_faults;
    let mut back = alloc::vec![0u8; data.len()];
    let t0 = time::rdtsc();
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|f| alloc::format!("CPU read back: {:?}", f.error))?;
    let fault_back_ns = ns(time::rdtsc() - t0);
    if back != data {
        return Err("data differs after the CPU faulted the pages back".into());
    }
    if v.kind == MemoryKind::Coherent {
        // The CPU writes device memory in place too.
        let e = space.lock().lookup(a).map(|e| e.pte);
        let Some(Pte::Present(p)) = e else { return Err(alloc::format!("coherent page 0 unmapped: {e:?}")) };
        let flipped: Vec<u8> = data[..PAGE as usize].iter().map(|b| !b).collect();
        uspace::run(&space, |u| u.write(a, &flipped)).map_err(|f| alloc::format!("CPU write: {:?}", f.error))?;
        crate::mm::read_phys(bar + v.offset_of(p.pfn).unwrap_or(0), &mut page);
        if page != flipped {
            return Err("a CPU store to coherent device memory did not reach the BAR".into());
        }
        uspace::run(&space, |u| u.write(a, &data[..PAGE as usize])).map_err(|f| alloc::format!("{:?}", f.error))?;
    }
    let faulted = v.stats.lock().cpu_faults - faults;
    // One fault per fault-around window the range touches; none at all on coherent memory,
    // which the CPU read in place.
    let windows = match v.kind {
        MemoryKind::Private => (a + pages * PAGE).div_ceil(v.fault_around() * PAGE) - a / (v.fault_around() * PAGE),
        MemoryKind::Coherent => 0,
    };
    if faulted != windows {
        return Err(alloc::format!(
            "{faulted} CPU faults for {pages} device pages in {windows} fault-around windows of {} pages",
            v.fault_around()
        ));
    }
    migrate_to_device(&v, &space, a, pages).map_err(|e| alloc::format!("{e}"))?;
    let t0 = time::rdtsc();
    let moved = migrate_to_ram(&v, &space, a, pages).map_err(|e| alloc::format!("{e}"))?;
    let to_ram_ns = ns(time::rdtsc() - t0);
    back.fill(0);
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|f| alloc::format!("CPU read: {:?}", f.error))?;
    if moved != pages || back != data {
        return Err(alloc::format!("explicit migration back: {moved} pages, data intact: {}", back == data));
    }
    drop(space);
    if v.in_use() != 0 {
        return Err(alloc::format!("{} device pages still in use after the process went", v.in_use()));
    }
    Ok(RoundTrip { pages, to_device_ns, fault_back_ns, to_ram_ns })
}
