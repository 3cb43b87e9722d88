//! Device memory of the real devices as ZONE_DEVICE-style pages, and migration between system
//! RAM and it, copied by the device's DMA engine.
//!
//! Device memory is numbered in 4 KiB device pages: the ivshmem BAR first, then the device's
//! hot-plug region (virtio-mem), if it has one; page k's data is at byte k * 4096 of that
//! range, which is also where the device's copy engines address it. The BAR is one
//! [`DevPagemap`]; each plugged 2 MiB block of the region is another. [`DevAlloc`] hands out
//! base pages and 2 MiB blocks: a THP moves whole into a compound device page (`folio_init`
//! order 9, one PMD entry), falling back to base pages when no block is free. By default the memory is
//! private: the CPU never maps these pages. A device the machine file marks coherent
//! (`devices.coherent=N` on the command line) registers its BAR frames themselves
//! (`MEMORY_DEVICE_COHERENT`): the CPU maps them with ordinary entries and reads and writes
//! device memory in place, and only an explicit migration brings pages back. Either way the
//! copy engine moves data in and out:
//! - [`migrate_to_device`]: `migrate_vma_setup` (system pages), allocate device pages,
//!   scatter-gather DMA RAM -> device in requests of consecutive device pages (several in
//!   flight), `pages`, `finalize`;
//! - CPU touch of a device page: the pagemap's `migrate_to_ram`, which DMAs the page (its
//!   fault-around window; a device THP whole, into a 2 MiB RAM page when there is one) back
//!   into fresh RAM from inside the page-fault handler;
//! - [`migrate_to_ram`]: the explicit way back for a range.
//!
//! A failed DMA declines the page (its destination is dropped before `pages`), so the source
//! stays where it was and nothing is lost. RAM pages are DMA'd at the kernel half of the
//! device's domain (see [`devices`](crate::devices)).
//!
//! Hot-plug ([`Vram::grow`], [`Vram::shrink`]): growing plugs blocks and registers them;
//! shrinking isolates blocks in the allocator, evicts what lives there with
//! `migrate_device_range` (DMA to fresh RAM pages), takes them offline, `memunmap_pages`, and
//! unplugs. A page that cannot be evicted leaves its block online, and the error says why.
//!
//! Part of a device's memory can be carved out ([`Vram::carve`]) for a driver that manages it
//! itself: [`backing::BarBacking`] runs dmirror test devices, and so the acceptance suite, on
//! it.

use crate::copyengine::Dir;
use crate::devices::{self, DevError, Device, ReadCopyFailure, ResizeFailure};
use crate::mm::uspace;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use drivers::virtio_mem::MemError;
use hmm::addr::Pfn;
use hmm::devalloc::{AllocError, BLOCK_PAGES, DevAlloc, State};
use hmm::mm::frame::flags;
use hmm::mm::migrate::{MigrateArgs, MigratePfn, MigrateVma, Select};
use hmm::mm::notify::Owner;
use hmm::mm::space::{AddressSpace, FaultError};
use hmm::mm::{Error, SharedSpace};
use hmm::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use spin::{Mutex, Once, RwLock};

pub mod backing;
pub mod checks;

const PAGE: u64 = 4096;
/// RAM segments per DMA request (each request is one run of consecutive device pages).
const RUN: usize = 32;
/// Pages per DMA request at most (a 2 MiB page is one request of one segment).
const RUN_PAGES: usize = 512;
const HUGE: u64 = 2 << 20;
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

/// A registered range of one device's memory: device pages `[index, index + pages)` are the
/// frames of `pagemap`'s single range.
#[derive(Debug, Clone)]
struct Chunk {
    index: u64,
    pages: u64,
    pagemap: Arc<DevPagemap>,
}

/// One device's memory.
///
/// Device memory is numbered in pages: the BAR first (`0..bar_pages`), then the device's
/// hot-plug region, if it has one. Each registered range is a [`Chunk`] with its own pagemap;
/// [`DevAlloc`] hands out 4 KiB pages and 2 MiB blocks of what is online.
#[derive(Debug)]
pub struct Vram {
    /// The device whose memory this is.
    dev: &'static Device,
    device: usize,
    kind: MemoryKind,
    owner: Owner,
    chunks: RwLock<Vec<Chunk>>,
    alloc: Mutex<DevAlloc>,
    bar_pages: u64,
    /// The frames of the hot-plug region's pages, reserved once: device-private frame numbers,
    /// or (coherent) the region's physical frames.
    hot_frames: Option<Pfn>,
    /// Serialises growing and shrinking.
    resize: Mutex<()>,
    copier: Mutex<Copier>,
    fault_around: core::sync::atomic::AtomicU64,
    /// Counters.
    pub stats: Mutex<VramStats>,
}

impl Vram {
    /// Registers `dev`'s memory (its BAR, a multiple of 2 MiB) as device pages of `kind`:
    /// private pages, or (coherent) the BAR's own frames. Its hot-plug region, if it has one,
    /// may be added later.
    pub fn register(dev: &'static Device, kind: MemoryKind) -> Result<Arc<Vram>, Error> {
        let (bytes, hot) = (dev.vram.1, dev.hot_bytes());
        let pages = bytes / PAGE;
        let hot_pages = hot / PAGE;
        let hot_frames = match (hot_pages, kind) {
            (0, _) => None,
            (_, MemoryKind::Private) => Some(uspace::mm().add_device_private_region(hot_pages)?),
            (_, MemoryKind::Coherent) => {
                let (at, _) = dev.hot_region().ok_or(Error::Invalid("no hot-plug region"))?;
                uspace::mm().add_device_region_at(Pfn(at / PAGE), hot_pages)?;
                Some(Pfn(at / PAGE))
            }
        };
        let v = Arc::new(Vram {
            dev,
            device: dev.index(),
            kind,
            owner: Owner(0x7e00 + dev.index() as u64),
            chunks: RwLock::new(Vec::new()),
            alloc: Mutex::new(DevAlloc::new((bytes + hot) / (PAGE * BLOCK_PAGES))),
            bar_pages: pages,
            hot_frames,
            resize: Mutex::new(()),
            copier: Mutex::new(Copier::Dma),
            fault_around: core::sync::atomic::AtomicU64::new(FAULT_AROUND),
            stats: Mutex::new(VramStats::default()),
        });
        v.add_chunk(0, pages)?;
        Ok(v)
    }

    /// Registers device pages `[index, index + pages)` (2 MiB-aligned) as a new pagemap and
    /// gives them to the allocator.
    fn add_chunk(self: &Arc<Self>, index: u64, pages: u64) -> Result<(), Error> {
        let ops: Arc<dyn PagemapOps> = self.clone();
        let w: Weak<dyn PagemapOps> = Arc::downgrade(&ops);
        let hot =
            |k: u64| self.hot_frames.map(|f| Pfn(f.0 + k - self.bar_pages)).ok_or(Error::Invalid("no hot-plug region"));
        let pm = match self.kind {
            MemoryKind::Private if index < self.bar_pages => {
                pagemaps()?.memremap_pages(self.kind, self.owner, pages, w)?
            }
            MemoryKind::Private => pagemaps()?.memremap_private_at(self.owner, hot(index)?, pages, w)?,
            MemoryKind::Coherent => {
                let at = self.phys(index * PAGE).ok_or(Error::Invalid("no such device memory"))?;
                pagemaps()?.memremap_pages_at(self.owner, Pfn(at / PAGE), pages, w)?
            }
        };
        if let Err(e) = self.alloc.lock().add(index / BLOCK_PAGES, pages / BLOCK_PAGES) {
            log::warn!("dev{}: adding device pages {index}+{pages}: {e}", self.device);
            let _ = pagemaps()?.memunmap_pages(&pm);
            return Err(Error::Invalid("device memory added twice"));
        }
        self.chunks.write().push(Chunk { index, pages, pagemap: pm });
        Ok(())
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
    /// brings back: the aligned window around the faulting page. A device THP always comes
    /// back whole.
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

    /// What `migrate_vma_setup` selects to find this device's pages (2 MiB pages whole).
    fn select(&self) -> Select {
        match self.kind {
            MemoryKind::Private => Select::DEVICE_PRIVATE.compound(),
            MemoryKind::Coherent => Select::DEVICE_COHERENT.compound(),
        }
    }

    /// The owner of this device's pages (the device MMU mirrors them as local).
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Pages of device memory online now.
    pub fn pages(&self) -> u64 {
        self.alloc.lock().online_pages()
    }

    /// Pages of the BAR.
    pub fn bar_pages(&self) -> u64 {
        self.bar_pages
    }

    /// Pages in use (allocated, carved, or in memory being removed).
    pub fn in_use(&self) -> u64 {
        let a = self.alloc.lock();
        a.online_pages() - a.free_pages()
    }

    /// The frame of device page `index`.
    fn pfn(&self, index: u64) -> Option<Pfn> {
        let chunks = self.chunks.read();
        let c = chunks.iter().find(|c| (c.index..c.index + c.pages).contains(&index))?;
        Some(Pfn(c.pagemap.ranges()[0].0.0 + index - c.index))
    }

    /// The device page number of frame `pfn`.
    fn index_of(&self, pfn: Pfn) -> Option<u64> {
        let chunks = self.chunks.read();
        let c = chunks.iter().find(|c| c.pagemap.contains(pfn))?;
        Some(c.index + pfn.0 - c.pagemap.ranges()[0].0.0)
    }

    /// The byte offset in device memory of device page `pfn`.
    pub fn offset_of(&self, pfn: Pfn) -> Option<u64> {
        self.index_of(pfn).map(|k| k * PAGE)
    }

    /// The physical address at which the CPU reaches byte `offset` of this device's memory
    /// (the BAR, or the hot-plug region).
    pub fn phys(&self, offset: u64) -> Option<u64> {
        self.dev.phys_of(offset)
    }

    /// Where device page `pfn`'s data is, for the CPU.
    pub fn phys_of(&self, pfn: Pfn) -> Option<u64> {
        self.phys(self.offset_of(pfn)?)
    }

    /// Takes `pages` (a multiple of 512) free pages of the BAR at a 2 MiB-aligned offset out
    /// of this device's allocator, for a driver that manages them itself (a dmirror device
    /// over this memory); returns the first page's index. `None` if no such run is free.
    pub fn carve(&self, pages: u64) -> Option<u64> {
        let blocks = pages.div_ceil(BLOCK_PAGES);
        let mut a = self.alloc.lock();
        let first = a.carve(blocks)?;
        if first + blocks * BLOCK_PAGES > self.bar_pages {
            let _ = a.uncarve(first, blocks);
            return None;
        }
        Some(first)
    }

    /// Gives back pages taken with [`carve`](Self::carve).
    pub fn uncarve(&self, first: u64, pages: u64) {
        if let Err(e) = self.alloc.lock().uncarve(first, pages.div_ceil(BLOCK_PAGES)) {
            log::warn!("dev{}: giving back carved pages {first}+{pages}: {e}", self.device);
        }
    }

    /// The BAR frame holding page `index` of this device's memory.
    pub fn bar_frame(&self, index: u64) -> Option<Pfn> {
        let bar = self.dev.vram.0;
        (index < self.bar_pages).then(|| Pfn(bar / PAGE + index))
    }

    /// The device number.
    pub fn device(&self) -> usize {
        self.device
    }

    /// The device whose memory this is.
    pub fn dev(&self) -> &'static Device {
        self.dev
    }

    /// Read duplication (UVM's read-mostly copies): copies each of `frames` (RAM, or another
    /// device's BAR frames) by DMA into a page of this device's memory that the driver keeps
    /// for itself, outside any pagemap: the page stays where it is for the CPU, and this
    /// device reads its copy. Returns the copies' page indices (give each back with
    /// [`drop_read_copy`](Self::drop_read_copy) before the source is written). All or nothing:
    /// if device memory runs out or a copy fails, nothing is kept.
    pub fn read_copies(&self, frames: &[Pfn]) -> Result<Vec<u64>, DevError> {
        let mut pages = Vec::with_capacity(frames.len());
        for _ in frames {
            match self.alloc.lock().alloc_page() {
                Some(k) => pages.push(k),
                None => {
                    self.drop_read_copies(&pages);
                    return Err(DevError::ReadCopy {
                        device: self.device,
                        failure: ReadCopyFailure::NoRoom { made: pages.len(), wanted: frames.len() },
                    });
                }
            }
        }
        let items: Vec<(usize, u64, Pfn)> =
            pages.iter().zip(frames).enumerate().map(|(i, (&k, &f))| (i, k * PAGE, f)).collect();
        let failed = self.transfer(Dir::ToDevice, &self.runs_at(&items));
        if !failed.is_empty() {
            self.drop_read_copies(&pages);
            return Err(DevError::ReadCopy {
                device: self.device,
                failure: ReadCopyFailure::Dma { failed: failed.len() },
            });
        }
        Ok(pages)
    }

    /// Frees read copies made by [`read_copies`](Self::read_copies).
    pub fn drop_read_copies(&self, pages: &[u64]) {
        let mut a = self.alloc.lock();
        for &k in pages {
            if let Err(e) = a.free(k, 0) {
                log::warn!("dev{}: freeing read copy {k}: {e}", self.device);
            }
        }
    }

    /// Frees one read copy.
    pub fn drop_read_copy(&self, page: u64) {
        self.drop_read_copies(&[page]);
    }

    /// A free device page (`huge`: a 2 MiB compound page), referenced and locked for a
    /// migration.
    fn alloc(&self, huge: bool) -> Option<Pfn> {
        let mut a = self.alloc.lock();
        let k = if huge { a.alloc_block()? } else { a.alloc_page()? };
        let order = if huge { 9 } else { 0 };
        let init = self.pfn(k).ok_or(Error::Invalid("no chunk")).and_then(|p| {
            pagemaps()?.folio_init(p, order)?;
            Ok(p)
        });
        match init {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("dev{}: device page {k} cannot be initialised: {e}", self.device);
                let _ = a.free(k, order);
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
        let huge = uspace::mm().meta(page).is_some_and(|m| m.order() == 9);
        let window = if huge { HUGE } else { self.fault_around() * PAGE };
        let (lo, hi) = space.vmas().find(va).map(|v| (v.start, v.end)).ok_or(FaultError::Bus)?;
        let start = (va & !(window - 1)).max(lo);
        let end = ((va & !(window - 1)) + window).min(hi);
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

impl Vram {
    /// Pages of the hot-plug region (plugged or not; 0 without one).
    pub fn hot_pages(&self) -> u64 {
        self.alloc.lock().capacity() * BLOCK_PAGES - self.bar_pages
    }

    /// Pages of the hot-plug region plugged now.
    pub fn plugged_pages(&self) -> u64 {
        self.pages() - self.bar_pages
    }

    /// Adds `bytes` (whole 2 MiB blocks) of the hot-plug region to this device's memory: the
    /// lowest unplugged blocks are plugged (virtio-mem PLUG) and each becomes a pagemap of
    /// device pages. Returns the blocks' device-memory offsets. Refused, with nothing changed,
    /// when the region has no room, or the host has not requested that much.
    pub fn grow(self: &Arc<Self>, bytes: u64) -> Result<Vec<u64>, DevError> {
        let _serial = self.resize.lock();
        let blocks = whole_blocks(self.device, bytes)?;
        let first = self.bar_pages / BLOCK_PAGES;
        let free: Vec<u64> = {
            let a = self.alloc.lock();
            (first..a.capacity()).filter(|&b| a.state(b) == Some(State::Offline)).take(blocks as usize).collect()
        };
        if (free.len() as u64) < blocks {
            return Err(self.resize_error(ResizeFailure::NoRoom { asked: bytes, left: free.len() as u64 * HUGE }));
        }
        let mut added = Vec::new();
        for &b in &free {
            let off = (b - first) * HUGE;
            let plugged = self.with_hot(|m| m.plug(off, HUGE));
            let r = plugged.and_then(|()| {
                self.add_chunk(b * BLOCK_PAGES, BLOCK_PAGES).map_err(|e| {
                    let _ = self.with_hot(|m| m.unplug(off, HUGE));
                    self.resize_error(ResizeFailure::Register(e))
                })
            });
            if let Err(e) = r {
                // Give back what this call added: all or nothing.
                let _ = self.shrink_blocks(&added);
                return Err(e);
            }
            added.push(b);
        }
        Ok(added.iter().map(|b| b * BLOCK_PAGES * PAGE).collect())
    }

    /// Removes `bytes` (whole 2 MiB blocks) of plugged hot-plug memory, the highest blocks
    /// first: allocation stops there, every page still in use is evicted to RAM
    /// (`migrate_device_range`, DMA by the region's engine) with nothing lost, the pagemaps go
    /// (`memunmap_pages`) and the blocks are unplugged. Returns the pages evicted. If a page
    /// cannot be evicted (pinned, no RAM, a failed copy), the blocks stay online and the error
    /// says why.
    pub fn shrink(self: &Arc<Self>, bytes: u64) -> Result<u64, DevError> {
        let _serial = self.resize.lock();
        let blocks = whole_blocks(self.device, bytes)?;
        let first = self.bar_pages / BLOCK_PAGES;
        let online: Vec<u64> = {
            let a = self.alloc.lock();
            (first..a.capacity())
                .rev()
                .filter(|&b| a.state(b).is_some_and(|s| s != State::Offline))
                .take(blocks as usize)
                .collect()
        };
        if (online.len() as u64) < blocks {
            return Err(
                self.resize_error(ResizeFailure::NotPlugged { asked: bytes, plugged: online.len() as u64 * HUGE })
            );
        }
        self.shrink_blocks(&online)
    }

    fn shrink_blocks(&self, blocks: &[u64]) -> Result<u64, DevError> {
        let first = self.bar_pages / BLOCK_PAGES;
        let mut evicted = 0;
        for &b in blocks {
            let busy = self.alloc.lock().isolate(b, 1);
            busy.map_err(|error| self.resize_error(ResizeFailure::Isolate { block: b, error }))?;
            let r = self.evict(b).and_then(|n| {
                evicted += n;
                self.alloc
                    .lock()
                    .offline(b, 1)
                    .map_err(|error| self.resize_error(ResizeFailure::StillBusy { block: b, error }))
            });
            if let Err(e) = r {
                let _ = self.alloc.lock().unisolate(b, 1);
                return Err(e);
            }
            let chunk = {
                let mut chunks = self.chunks.write();
                let i = chunks.iter().position(|c| c.index == b * BLOCK_PAGES);
                i.map(|i| chunks.remove(i))
            };
            if let Some(c) = chunk
                && let Err(e) = pagemaps().and_then(|p| p.memunmap_pages(&c.pagemap))
            {
                // Cannot happen after a clean offline; keep the memory rather than lose track.
                log::warn!("dev{}: memunmap of block {b}: {e}", self.device);
                self.chunks.write().push(c);
                let _ = self.alloc.lock().add(b, 1);
                return Err(self.resize_error(ResizeFailure::Unmap { block: b, error: e }));
            }
            self.with_hot(|m| m.unplug((b - first) * HUGE, HUGE))?;
        }
        Ok(evicted)
    }

    /// Evicts every page in use in block `b` to RAM; returns how many moved.
    fn evict(&self, b: u64) -> Result<u64, DevError> {
        let Some(start) = self.pfn(b * BLOCK_PAGES) else { return Ok(0) };
        let mm = uspace::mm();
        let mut mig = hmm::mm::migrate::migrate_device_range(mm, start, BLOCK_PAGES);
        let mut items = Vec::new();
        let mut no_ram = false;
        for i in 0..BLOCK_PAGES as usize {
            let s = mig.src()[i];
            let Some(from) = s.pfn().filter(|_| s.is_migrate()) else { continue };
            let Ok(r) = mm.alloc_page(flags::ANON, 0, false) else {
                no_ram = true;
                break;
            };
            if let Some(m) = mm.meta(r) {
                m.trylock();
            }
            mig.dst_mut()[i] = MigratePfn::new(r).with_write(s.is_write());
            items.push((i, from, r));
        }
        let mut failed = self.transfer(Dir::ToRam, &self.runs(&items));
        failed.sort_unstable();
        for &i in &failed {
            if let Some((_, _, r)) = items.iter().find(|x| x.0 == i) {
                unuse(*r);
            }
            mig.dst_mut()[i] = MigratePfn(0);
        }
        mig.pages();
        mig.finalize();
        let moved = (items.len() - failed.len()) as u64;
        self.stats.lock().to_ram += moved;
        if no_ram || !failed.is_empty() {
            return Err(self.resize_error(ResizeFailure::Evict { block: b, no_ram }));
        }
        Ok(moved)
    }

    fn with_hot<R>(
        &self,
        f: impl FnOnce(&mut crate::virtiomem::VirtioMem) -> Result<R, MemError>,
    ) -> Result<R, DevError> {
        match self.dev.with_hot_mem(f) {
            Some(r) => r.map_err(|e| self.resize_error(ResizeFailure::Request(e))),
            None => Err(self.resize_error(ResizeFailure::NoRegion)),
        }
    }

    fn resize_error(&self, failure: ResizeFailure) -> DevError {
        DevError::Resize { device: self.device, failure }
    }
}

/// Whole 2 MiB blocks in `bytes`.
fn whole_blocks(device: usize, bytes: u64) -> Result<u64, DevError> {
    if bytes == 0 || !bytes.is_multiple_of(HUGE) {
        return Err(DevError::Resize { device, failure: ResizeFailure::NotBlocks(bytes) });
    }
    Ok(bytes / HUGE)
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
        for (w, window) in runs.chunks(IN_FLIGHT).enumerate() {
            if w > 0 {
                crate::inject::reach(crate::inject::Point::BetweenCopies, Some(self.device));
            }
            let results = self.dev.dma_many(dir, window.iter().map(|r| (r.offset, &r.ram[..])));
            for (r, res) in window.iter().zip(results) {
                if let Err(e) = res {
                    log::warn!("dev{}: DMA of {} pages at {:#x} failed: {e}", self.device, r.entries.len(), r.offset);
                    failed.extend(&r.entries);
                }
            }
        }
        failed
    }

    /// The CPU-copy baseline: the same runs copied by the CPU through the BAR.
    fn cpu_transfer(&self, dir: Dir, runs: &[Run]) -> Vec<usize> {
        let mut failed = Vec::new();
        for r in runs {
            for (k, &pa) in r.pas.iter().enumerate() {
                let Some(dev) = self.phys(r.offset + k as u64 * PAGE) else {
                    failed.extend(&r.entries);
                    break;
                };
                match dir {
                    Dir::ToDevice => crate::mm::copy_phys(dev, pa, PAGE),
                    Dir::ToRam => crate::mm::copy_phys(pa, dev, PAGE),
                }
            }
        }
        failed
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
        let kernel = self.dev.iova_of(0);
        // Requests never cross from the BAR into the hot-plug region (another engine's disk).
        let region = |off: u64| off >= self.bar_pages * PAGE;
        let mut runs: Vec<Run> = Vec::new();
        for &(i, off, ram) in items {
            let seg = (kernel + ram.addr(), PAGE as u32);
            let joins = runs.last().is_some_and(|r| {
                let next_to = r.ram.last().is_some_and(|l| l.0 + u64::from(l.1) == seg.0);
                r.offset + r.pas.len() as u64 * PAGE == off
                    && region(r.offset) == region(off)
                    && r.pas.len() < RUN_PAGES
                    && (next_to || r.ram.len() < RUN)
            });
            match runs.last_mut() {
                Some(r) if joins => {
                    if r.entries.last() != Some(&i) {
                        r.entries.push(i);
                    }
                    match r.ram.last_mut() {
                        // Physically contiguous RAM (a THP) is one segment.
                        Some(l) if l.0 + u64::from(l.1) == seg.0 => l.1 += PAGE as u32,
                        _ => r.ram.push(seg),
                    }
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

    /// For each device page in `mig` marked to migrate: RAM, filled by DMA (a 2 MiB page for a
    /// device THP when RAM has one, else base pages). Returns how many pages were filled;
    /// failed ones are declined (the device keeps the page).
    fn copy_out(&self, mig: &mut MigrateVma<'_>) -> Result<u64, Error> {
        let mm = uspace::mm();
        let mut ram = |huge: bool| {
            let r = mm.alloc_page(flags::ANON, if huge { 9 } else { 0 }, false).ok()?;
            if let Some(m) = mm.meta(r) {
                m.trylock();
            }
            Some(r)
        };
        let mut items = Vec::new();
        for i in 0..mig.src().len() {
            let s = mig.src()[i];
            let Some(from) = s.pfn().filter(|&p| s.is_migrate() && self.offset_of(p).is_some()) else { continue };
            // Device page k of the entry goes to RAM frame `to`.
            if !fill(mig, i, &mut ram, &|k, to| (Pfn(from.0 + k), to), &mut items) {
                break;
            }
        }
        let failed = self.transfer(Dir::ToRam, &self.runs(&items));
        let declined = decline(mig, &failed);
        self.stats.lock().declined += declined;
        Ok(items.len() as u64 - declined)
    }
}

/// Gives entry `i` of `mig` destinations from `alloc` (`alloc(true)`: a 2 MiB page): one 2 MiB
/// page for a compound source when there is one, else a base page per base page (the 4 KiB
/// fallback, which `migrate_vma_pages` splits the source for). `copy(k, destination frame)`
/// names the copy of base page `k` as `(this device's page, the other frame)`; one item per
/// base page goes to `items`, tagged with its entry. `false` when `alloc` ran out (what was
/// filled still migrates).
fn fill(
    mig: &mut MigrateVma<'_>,
    i: usize,
    alloc: &mut dyn FnMut(bool) -> Option<Pfn>,
    copy: &dyn Fn(u64, Pfn) -> (Pfn, Pfn),
    items: &mut Vec<(usize, Pfn, Pfn)>,
) -> bool {
    let s = mig.src()[i];
    if s.is_compound()
        && let Some(d) = alloc(true)
    {
        mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write()).with_compound();
        items.extend((0..BLOCK_PAGES).map(|k| {
            let (a, b) = copy(k, Pfn(d.0 + k));
            (i, a, b)
        }));
        return true;
    }
    let n = if s.is_compound() { BLOCK_PAGES } else { 1 };
    for k in 0..n {
        let Some(d) = alloc(false) else { return false };
        let j = i + k as usize;
        mig.dst_mut()[j] = MigratePfn::new(d).with_write(s.is_write());
        let (a, b) = copy(k, d);
        items.push((j, a, b));
    }
    true
}

/// Drops the destinations of entries `failed` (their copies did not happen: the sources stay);
/// returns how many pages that declines.
fn decline(mig: &mut MigrateVma<'_>, failed: &[usize]) -> u64 {
    let mut failed = failed.to_vec();
    failed.sort_unstable();
    failed.dedup();
    let mut pages = 0;
    for &i in &failed {
        let d = mig.dst()[i];
        if let Some(p) = d.pfn() {
            unuse(p);
            pages += if d.is_compound() { BLOCK_PAGES } else { 1 };
        }
        mig.dst_mut()[i] = MigratePfn(0);
    }
    pages
}

/// `pages` and `finalize`; returns the pages that moved (a 2 MiB page counts 512).
fn settle(mut mig: MigrateVma<'_>) -> u64 {
    mig.pages();
    let moved = (0..mig.src().len())
        .filter(|&i| mig.src()[i].is_migrate())
        .filter_map(|i| mig.dst()[i].pfn().map(|_| if mig.dst()[i].is_compound() { BLOCK_PAGES } else { 1 }))
        .sum();
    mig.finalize();
    moved
}

/// Migrates `npages` at `start` of `space` to device memory; returns how many moved. A THP
/// moves whole into a 2 MiB device page (or, when the device has no free block, into base
/// pages). Pages already on a device, and pages for which device memory ran out, stay.
pub fn migrate_to_device(v: &Vram, space: &Arc<SharedSpace>, start: u64, npages: u64) -> Result<u64, DevError> {
    let mm = uspace::mm();
    let mut s = space.lock();
    let select = Select::SYSTEM.compound();
    let args = MigrateArgs { start, end: start + npages * PAGE, owner: v.owner, select, fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(DevError::MigrateSetup)?;
    let zero = mm.zero_pfn();
    let mut items = Vec::new();
    for i in 0..mig.src().len() {
        let src = mig.src()[i];
        if !src.is_migrate() {
            continue;
        }
        // An empty page is filled from the zero page.
        let from = |k: u64| src.pfn().map_or(zero, |p| Pfn(p.0 + k));
        if !fill(&mut mig, i, &mut |huge| v.alloc(huge), &|k, d| (d, from(k)), &mut items) {
            break;
        }
    }
    let failed = v.transfer(Dir::ToDevice, &v.runs(&items));
    crate::inject::reach(crate::inject::Point::Copied, Some(v.device));
    let declined = decline(&mut mig, &failed);
    let moved = settle(mig);
    let mut st = v.stats.lock();
    st.to_device += moved;
    st.declined += declined;
    Ok(moved)
}

/// Migrates this device's pages among `npages` at `start` back to RAM; returns how many moved.
pub fn migrate_to_ram(v: &Vram, space: &Arc<SharedSpace>, start: u64, npages: u64) -> Result<u64, DevError> {
    let mut s = space.lock();
    let args = MigrateArgs { start, end: start + npages * PAGE, owner: v.owner, select: v.select(), fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(DevError::MigrateSetup)?;
    v.copy_out(&mut mig).map_err(DevError::Memory)?;
    crate::inject::reach(crate::inject::Point::Copied, Some(v.device));
    let moved = settle(mig);
    v.stats.lock().to_ram += moved;
    Ok(moved)
}

/// Migrates `from`'s pages among `npages` at `start` of `space` straight into `to`'s memory:
/// `from`'s engine copies each run from its memory into `to`'s, which every other device's
/// domain maps (peer to peer, no bounce through RAM). A device THP moves whole when `to` has a
/// free block. Returns how many moved; pages for which `to` has no room, or whose copy failed,
/// stay on `from`.
pub fn migrate_device_to_device(
    from: &Vram,
    to: &Vram,
    space: &Arc<SharedSpace>,
    start: u64,
    npages: u64,
) -> Result<u64, DevError> {
    if from.device == to.device {
        return Err(DevError::SameDevice(from.device));
    }
    let mut s = space.lock();
    let args =
        MigrateArgs { start, end: start + npages * PAGE, owner: from.owner, select: from.select(), fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(DevError::MigrateSetup)?;
    let mut items = Vec::new();
    // The destination, as the source engine sees it: `to`'s memory at its physical address.
    let peer = |d: Pfn| to.phys_of(d).map_or(Pfn(0), |pa| Pfn(pa / PAGE));
    for i in 0..mig.src().len() {
        let src = mig.src()[i];
        let Some(sp) = src.pfn().filter(|&p| src.is_migrate() && from.offset_of(p).is_some()) else { continue };
        if !fill(&mut mig, i, &mut |huge| to.alloc(huge), &|k, d| (Pfn(sp.0 + k), peer(d)), &mut items) {
            break;
        }
    }
    let failed = from.transfer(Dir::ToRam, &from.runs(&items));
    crate::inject::reach(crate::inject::Point::Copied, Some(from.device));
    let declined = decline(&mut mig, &failed);
    let moved = settle(mig);
    from.stats.lock().declined += declined;
    to.stats.lock().to_device += moved;
    Ok(moved)
}

static VRAMS: Once<Result<Vec<Arc<Vram>>, Error>> = Once::new();

/// Every device's memory, registered on first use.
pub fn all() -> Result<&'static [Arc<Vram>], Error> {
    VRAMS
        .call_once(|| {
            let coherent = COHERENT.load(core::sync::atomic::Ordering::Relaxed);
            let kind = |n: usize| if coherent >> n & 1 == 1 { MemoryKind::Coherent } else { MemoryKind::Private };
            devices::all().iter().map(|dev| Vram::register(dev, kind(dev.index()))).collect()
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
pub fn round_trip(n: usize, pages: u64) -> Result<RoundTrip, checks::CheckError> {
    use crate::arch::time;
    use checks::CheckError;
    use hmm::mm::pte::Pte;
    use hmm::mm::space::MapRequest;
    use hmm::mm::vma::Prot;
    let fail = checks::CheckError::failed;
    let v = all().map_err(DevError::Memory)?.get(n).ok_or(DevError::NoDevice(n))?.clone();
    let bar = v.dev().vram.0;
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|error| CheckError::Mm { op: "a new address space", error })?);
    let a = space
        .lock()
        .mmap(MapRequest::anon(pages * PAGE, Prot::RW))
        .map_err(|error| CheckError::Mm { op: "mmap", error })?;
    let data: Vec<u8> = (0..pages * PAGE / 8).flat_map(|i| (i ^ (n as u64) << 40).to_le_bytes()).collect();
    uspace::run(&space, |u| u.write(a, &data)).map_err(|fault| CheckError::Cpu { op: "CPU fill", fault })?;
    let ns = |c: u64| time::cycles_to_ns(c).unwrap_or(0) / pages;

    let t0 = time::rdtsc();
    let moved = migrate_to_device(&v, &space, a, pages)?;
    let to_device_ns = ns(time::rdtsc() - t0);
    if moved != pages {
        return Err(fail(alloc::format!("{moved} of {pages} pages reached dev{n}")));
    }
    let mut page = alloc::vec![0u8; PAGE as usize];
    for k in 0..pages {
        let e = space.lock().lookup(a + k * PAGE).map(|e| e.pte);
        let Some(pfn) = e.as_ref().and_then(|e| v.holds(e)) else {
            return Err(fail(alloc::format!(
                "page {k} is not in dev{n}'s {:?} memory after the migration: {e:?}",
                v.kind
            )));
        };
        let off =
            v.offset_of(pfn).ok_or_else(|| fail(alloc::format!("page {k}: a device entry outside dev{n}'s memory")))?;
        crate::mm::read_phys(bar + off, &mut page);
        if page[..] != data[(k * PAGE) as usize..((k + 1) * PAGE) as usize] {
            return Err(fail(alloc::format!("page {k}: device memory differs from what the CPU wrote")));
        }
    }
    let faults = v.stats.lock().cpu_faults;
    let mut back = alloc::vec![0u8; data.len()];
    let t0 = time::rdtsc();
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|fault| CheckError::Cpu { op: "CPU read back", fault })?;
    let fault_back_ns = ns(time::rdtsc() - t0);
    if back != data {
        return Err(fail("data differs after the CPU faulted the pages back".into()));
    }
    if v.kind == MemoryKind::Coherent {
        // The CPU writes device memory in place too.
        let e = space.lock().lookup(a).map(|e| e.pte);
        let Some(Pte::Present(p)) = e else { return Err(fail(alloc::format!("coherent page 0 unmapped: {e:?}"))) };
        let flipped: Vec<u8> = data[..PAGE as usize].iter().map(|b| !b).collect();
        uspace::run(&space, |u| u.write(a, &flipped)).map_err(|fault| CheckError::Cpu { op: "CPU write", fault })?;
        crate::mm::read_phys(bar + v.offset_of(p.pfn).unwrap_or(0), &mut page);
        if page != flipped {
            return Err(fail("a CPU store to coherent device memory did not reach the BAR".into()));
        }
        uspace::run(&space, |u| u.write(a, &data[..PAGE as usize]))
            .map_err(|fault| CheckError::Cpu { op: "CPU write back", fault })?;
    }
    let faulted = v.stats.lock().cpu_faults - faults;
    // One fault per fault-around window the range touches; none at all on coherent memory,
    // which the CPU read in place.
    let windows = match v.kind {
        MemoryKind::Private => (a + pages * PAGE).div_ceil(v.fault_around() * PAGE) - a / (v.fault_around() * PAGE),
        MemoryKind::Coherent => 0,
    };
    if faulted != windows {
        return Err(fail(alloc::format!(
            "{faulted} CPU faults for {pages} device pages in {windows} fault-around windows of {} pages",
            v.fault_around()
        )));
    }
    migrate_to_device(&v, &space, a, pages)?;
    let t0 = time::rdtsc();
    let moved = migrate_to_ram(&v, &space, a, pages)?;
    let to_ram_ns = ns(time::rdtsc() - t0);
    back.fill(0);
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|fault| CheckError::Cpu { op: "CPU read", fault })?;
    if moved != pages || back != data {
        return Err(fail(alloc::format!("explicit migration back: {moved} pages, data intact: {}", back == data)));
    }
    drop(space);
    if v.in_use() != 0 {
        return Err(fail(alloc::format!("{} device pages still in use after the process went", v.in_use())));
    }
    Ok(RoundTrip { pages, to_device_ns, fault_back_ns, to_ram_ns })
}
