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
//! The host's changes of what it requests are followed by a task of their own ([`follow`]).
//!
//! Part of a device's memory can be carved out ([`Vram::carve`]) for a driver that manages it
//! itself: [`backing::BarBacking`] runs dmirror test devices, and so the acceptance suite, on
//! it.
//!
//! This module owns the [`Vram`] of each device (its pages, chunks, allocator and counters,
//! registered over the device's [`Device`] object) and the page-number arithmetic; the
//! rest is in submodules along their seams:
//! - `migrate`: the migrations both ways and device to device (`migrate_vma_*` around the
//!   copies) and what they share (destinations, declines, `pages` + `finalize`);
//! - `dma`: grouping pages into runs of consecutive device pages and running them on the
//!   copy engine (or the CPU baseline), several requests in flight;
//! - `fault`: the pagemap's callbacks: a freed device page, and a CPU fault on one;
//! - `hotplug`: growing and shrinking device memory (virtio-mem blocks, eviction);
//! - [`follow`]: following the host's requests (the configuration interrupt, the follower);
//! - `readcopy`: read duplication;
//! - [`checks`]: end-to-end checks on the real devices (round trips, hot-plug cycles, ...);
//! - [`backing`]: dmirror test devices over carved-out device memory.

use crate::devices::{self, DevOffset, DevPage, Device};
use crate::mm::uspace;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use hmm::addr::Pfn;
use hmm::devalloc::{BLOCK_PAGES, DevAlloc};
use hmm::mm::Error;
use hmm::mm::migrate::Select;
use hmm::mm::notify::Owner;
use hmm::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use spin::{Mutex, Once, RwLock};

pub mod backing;
pub mod checks;
mod dma;
mod fault;
pub mod follow;
mod hotplug;
mod migrate;
mod readcopy;

pub use checks::round_trip;
pub use migrate::{migrate_device_to_device, migrate_to_device, migrate_to_ram};

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
    /// The host's request for the hot-plug memory, as the follower knows it.
    follow: Mutex<follow::Follow>,
    copier: Mutex<Copier>,
    fault_around: core::sync::atomic::AtomicU64,
    /// The most pages that may be in use at once (`u64::MAX`: all there are); see
    /// [`Vram::set_limit`].
    limit: core::sync::atomic::AtomicU64,
    /// Counters.
    pub stats: Mutex<VramStats>,
}

impl Vram {
    /// Registers `dev`'s memory (its BAR, a multiple of 2 MiB) as device pages of `kind`:
    /// private pages, or (coherent) the BAR's own frames. Its hot-plug region, if it has one,
    /// may be added later.
    pub fn register(dev: &'static Device, kind: MemoryKind) -> Result<Arc<Vram>, Error> {
        let (bytes, hot) = (dev.vram.bytes, dev.hot_bytes());
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
            follow: Mutex::new(follow::Follow {
                seen: dev.with_hot_mem(|m| m.config.requested_size).unwrap_or(0),
                ..Default::default()
            }),
            copier: Mutex::new(Copier::Dma),
            fault_around: core::sync::atomic::AtomicU64::new(FAULT_AROUND),
            limit: core::sync::atomic::AtomicU64::new(u64::MAX),
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
                let at = self.phys(DevPage::new(index).offset()).ok_or(Error::Invalid("no such device memory"))?;
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
        self.entry_pfn(pte).filter(|&pfn| self.offset_of(pfn).is_some())
    }

    /// The frame an entry of this device's kind names (device-private: a device-private
    /// swap entry; coherent: a present entry), whether or not the frame is this device's.
    fn entry_pfn(&self, pte: &hmm::mm::pte::Pte) -> Option<Pfn> {
        use hmm::mm::pte::{Pte, SoftKind};
        match (self.kind, pte) {
            (MemoryKind::Private, Pte::Soft(s)) if s.kind == SoftKind::DevicePrivate => Some(s.pfn),
            (MemoryKind::Coherent, Pte::Present(p)) => Some(p.pfn),
            _ => None,
        }
    }

    /// [`holds`](Self::holds) with where the CPU reaches the page's data
    /// ([`phys_of`](Self::phys_of); `None` if the device maps no such address), finding the
    /// page's chunk once.
    pub fn held_at(&self, pte: &hmm::mm::pte::Pte) -> Option<(Pfn, Option<u64>)> {
        let pfn = self.entry_pfn(pte)?;
        let offset = self.offset_of(pfn)?;
        Some((pfn, self.phys(offset)))
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

    /// The device page number of frame `pfn`, as a plain index (the allocator's).
    fn index_of(&self, pfn: Pfn) -> Option<u64> {
        self.page_of(pfn).map(DevPage::get)
    }

    /// The device page number of frame `pfn`.
    pub fn page_of(&self, pfn: Pfn) -> Option<DevPage> {
        let chunks = self.chunks.read();
        let c = chunks.iter().find(|c| c.pagemap.contains(pfn))?;
        Some(DevPage::new(c.index + pfn.0 - c.pagemap.ranges()[0].0.0))
    }

    /// The byte offset in device memory of device page `pfn`.
    pub fn offset_of(&self, pfn: Pfn) -> Option<DevOffset> {
        self.page_of(pfn).map(DevPage::offset)
    }

    /// The physical address at which the CPU reaches byte `offset` of this device's memory
    /// (the BAR, or the hot-plug region).
    pub fn phys(&self, offset: DevOffset) -> Option<u64> {
        self.dev.phys_of(offset)
    }

    /// Where device page `pfn`'s data is, for the CPU.
    pub fn phys_of(&self, pfn: Pfn) -> Option<u64> {
        self.phys(self.offset_of(pfn)?)
    }

    /// Takes `pages` (a multiple of 512) free pages of the BAR at a 2 MiB-aligned offset out
    /// of this device's allocator, for a driver that manages them itself (a dmirror device
    /// over this memory); returns the first page's index. `None` if no such run is free.
    pub fn carve(&self, pages: u64) -> Option<DevPage> {
        let blocks = pages.div_ceil(BLOCK_PAGES);
        let mut a = self.alloc.lock();
        let first = a.carve(blocks)?;
        if first + blocks * BLOCK_PAGES > self.bar_pages {
            let _ = a.uncarve(first, blocks);
            return None;
        }
        Some(DevPage::new(first))
    }

    /// Gives back pages taken with [`carve`](Self::carve).
    pub fn uncarve(&self, first: DevPage, pages: u64) {
        if let Err(e) = self.alloc.lock().uncarve(first.get(), pages.div_ceil(BLOCK_PAGES)) {
            log::warn!("dev{}: giving back carved pages {first}+{pages}: {e}", self.device);
        }
    }

    /// The BAR frame holding page `index` of this device's memory.
    pub fn bar_frame(&self, page: DevPage) -> Option<Pfn> {
        let bar = self.dev.vram.at.as_u64();
        (page.get() < self.bar_pages).then(|| Pfn(bar / PAGE + page.get()))
    }

    /// The device number.
    pub fn device(&self) -> usize {
        self.device
    }

    /// Limits the pages in use at once to `pages` (`None`: every page the device has): an
    /// allocation past it is refused as when the memory is full, so an experiment's device of
    /// N pages really runs out at N (and evicts), on a device that has more.
    pub fn set_limit(&self, pages: Option<u64>) {
        self.limit.store(pages.unwrap_or(u64::MAX), core::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `pages` more pages fit under the limit, given the allocator (locked by the
    /// caller).
    fn room_for(&self, a: &DevAlloc, pages: u64) -> bool {
        let used = a.online_pages() - a.free_pages();
        used.saturating_add(pages) <= self.limit.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// The device whose memory this is.
    pub fn dev(&self) -> &'static Device {
        self.dev
    }

    /// A free device page (`huge`: a 2 MiB compound page), referenced and locked for a
    /// migration.
    fn alloc(&self, huge: bool) -> Option<Pfn> {
        let mut a = self.alloc.lock();
        if !self.room_for(&a, if huge { 512 } else { 1 }) {
            return None;
        }
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
