//! The machine's devices, each a group of stock QEMU parts (`qemu/*.toml`, brief "The
//! devices"): device memory (an ivshmem-plain BAR over a host memory object), a copy engine
//! (a virtio-blk over the same object, [`CopyEngine`]) and, when the machine has a
//! virtio-iommu, a device MMU: one domain per device, which the copy engine's endpoint is
//! attached to.
//!
//! One [`Device`] object per device owns all of it: its memory windows (the BAR and, when it
//! has one, the hot-plug region), its copy engines (each behind a lock of its own), its IOMMU
//! domain (the [`Shadow`] of what the virtio-iommu maps, behind the domain's own lock), the
//! mirror bound to it (see [`crate::devmmu`]) and its compute counters. Devices are found by
//! name ([`get`]: `get("dev1")`), by handle ([`DeviceId::get`]) or by their place in PCI order
//! ([`nth`]); the list is built once by [`init`] and never changes, so finding a device takes
//! no lock. The registration of a device's memory as device pages is [`crate::vram`]'s (one
//! `Vram` per device, over its `Device`).
//!
//! A domain has two halves. The user half (below [`KERNEL_IOVA`]) mirrors the address spaces
//! bound to the device, up to [`SPACES`] at once, each in a window of its own: the space in
//! slot k at IOVA = process virtual address + k × [`WINDOW`] ([`window`]), as a PASID would
//! select its tables on an IOMMU that has them. A mirror addresses only its own window, so
//! one space's DMA can never reach another's pages. The kernel half maps system RAM at
//! IOVA = [`KERNEL_IOVA`] + physical address, for the engine's own rings and headers and for
//! migration copies of pages the CPU no longer maps (what `dma_map_page` gives a Linux
//! driver), and the other devices' memory (their BARs at [`KERNEL_IOVA`] + BAR address, for
//! peer-to-peer copies). A device's own memory is not in its domain: its engine reaches it as
//! its disk.
//!
//! Invariants: [`Device::submit`] submits only segments the domain's [`Shadow`] maps with the
//! access the transfer needs (QEMU cannot recover a DMA fault: the request would never
//! complete), checked and submitted under the domain's lock so no unmap slips between; the
//! shadow holds exactly what the virtio-iommu accepted. The user half is unmapped only after
//! the mirror has settled the DMA in flight to it (`hmm::devmmu`'s protocol); the kernel half
//! never changes after [`init`].
//!
//! A device may also have hot-plug memory ([`Hot`]): a virtio-mem region and a second copy
//! engine over the region's host memory, attached to the same domain. Device memory offsets
//! run through the BAR, then the region; a copy is routed to the engine whose disk holds it.
//!
//! Device memory is addressed by [`DevOffset`] (a byte) and [`DevPage`] (a page number), not
//! by physical address. The CPU reaches it only through the device's windows (platform
//! `PhysWindow` handles over the BAR and the hot-plug region, made by `pci::bar_window` and
//! `mm::hotplug_window`): [`Device::window`], [`Device::read_mem`], [`Device::write_mem`].
//!
//! Lock order (a lock may be taken while holding the ones before it, never the reverse):
//! 1. a device's mirror slots (held while a mirror is bound);
//! 2. a device's domain ([`Domain`]'s shadow);
//! 3. the virtio-iommu (one request queue for every domain) or one of the device's copy
//!    engines (never both at once);
//! 4. the device's virtio-mem region (a leaf: held only to read or change its block states).
//!
//! No lock of one device is held while a lock of another is taken, so two devices' copies
//! (and two engines of one device) proceed at once: a copy holds only its engine's lock while
//! it waits for the device.
//!
//! Grouping: functions are grouped in PCI order (`drivers::pci::group`): an ivshmem function,
//! its virtio-blk engine, then optionally a virtio-mem region and its engine form device n,
//! which is how the xtask builds the command line.

use crate::copyengine::{self, CopyEngine, CopyError, CopyStats, Dir};
use crate::mm::Iova;
use crate::viommu::Viommu;
use crate::{System, mm, pci};
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use drivers::pci::Part;
use drivers::viommu::{IommuError, MAP_READ, MAP_WRITE, Mapping, Shadow};
use spin::{Mutex, Once};
use virtio_drivers::transport::DeviceType;

mod addr;
mod error;

pub use addr::{DevOffset, DevPage};
pub use error::{DevError, ReadCopyFailure, Region, ResizeFailure, WindowFailure};

/// Where the kernel half of every domain starts: RAM at `KERNEL_IOVA + pa` (the direct
/// map's own offset, so a kernel buffer's IOVA is its kernel virtual address).
pub const KERNEL_IOVA: u64 = boot::layout::DIRECT_MAP_BASE;

const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);

fn iova_translated(pa: u64) -> mm::Iova {
    mm::Iova::new(KERNEL_IOVA + pa)
}

fn iova_identity(pa: u64) -> mm::Iova {
    mm::Iova::identity(mm::PhysAddr::new(pa))
}

/// A device's handle: its place in PCI order (`DeviceId` n is `dev{n}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(usize);

impl DeviceId {
    /// The device's place in PCI order.
    pub fn index(self) -> usize {
        self.0
    }

    /// The device this handle names.
    pub fn get(self) -> Option<&'static Device> {
        all().get(self.0)
    }
}

impl core::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "dev{}", self.0)
    }
}

/// A device's IOMMU domain: its endpoint, its number, and the kernel's copy of what it maps.
#[derive(Debug)]
pub struct Domain {
    /// The copy engine's IOMMU endpoint.
    pub endpoint: u32,
    /// The domain's number.
    pub id: u32,
    shadow: Mutex<Shadow>,
}

/// A device's hot-plug memory: a virtio-mem region (2 MiB blocks the kernel plugs and unplugs)
/// and a second copy engine whose disk is the region's host memory, as the BAR's is the
/// BAR's. Device memory offsets past the BAR are offsets in this region.
#[derive(Debug)]
pub struct Hot {
    /// The region: physical address and bytes.
    pub region: (u64, u64),
    window: mm::PhysWindow,
    mem: Mutex<crate::virtiomem::VirtioMem>,
    engine: Mutex<CopyEngine>,
}

/// What a device's mirror slot remembers of the mirror bound to it (implemented by
/// [`crate::devmmu::DevMirror`]): whether it still mirrors a live address space, and which.
pub trait Bound: Send + Sync {
    /// Whether the mirror is still bound to a live address space.
    fn is_live(&self) -> bool;
    /// Whether it mirrors `space`.
    fn mirrors(&self, space: &Arc<hmm::mm::SharedSpace>) -> bool;
}

/// Address spaces one device mirrors at once (its mirror slots).
pub const SPACES: usize = 4;

/// The IOVA distance between two slots' windows: a process's user half (below 2^47) fits.
pub const WINDOW: u64 = 1 << 48;

/// Where the window of mirror slot `slot` starts in a device's domain.
pub const fn window(slot: usize) -> u64 {
    slot as u64 * WINDOW
}

// Every window lies below the kernel half, and a device mirrors every process an experiment
// point may have.
const _: () = assert!(window(SPACES) <= KERNEL_IOVA);
const _: () = assert!(SPACES >= hmm::place::workload::PROCESSES as usize);

/// A device's memory as the CPU sees it: its BAR's physical address and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMemory {
    /// Where the BAR starts.
    pub at: mm::PhysAddr,
    /// Its size in bytes.
    pub bytes: u64,
}

/// A device of the machine: its memory windows, copy engines, IOMMU domain, bound mirror and
/// counters (see the module header for what each lock guards and their order).
pub struct Device {
    id: DeviceId,
    /// `dev0`, `dev1`, ... in PCI order.
    pub name: String,
    /// Device memory: where its BAR is and how large.
    pub vram: BarMemory,
    bar: mm::PhysWindow,
    engine: Mutex<CopyEngine>,
    domain: Option<Domain>,
    hot: Option<Hot>,
    mirrors: Mutex<[Option<Weak<dyn Bound>>; SPACES]>,
    compute: Mutex<hmm::compute::Counters>,
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("vram", &self.vram)
            .field("domain", &self.domain)
            .field("hot", &self.hot.as_ref().map(|h| h.region))
            .finish_non_exhaustive()
    }
}

/// A copy in flight on one of a device's engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    hot: bool,
    inner: copyengine::Ticket,
}

impl Device {
    /// The device's handle.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The device's place in PCI order (`dev{index}`).
    pub fn index(&self) -> usize {
        self.id.index()
    }

    /// The physical address of byte `offset` of this device's memory: in the BAR, then in the
    /// hot-plug region (plugged blocks only).
    pub fn phys_of(&self, offset: DevOffset) -> Option<u64> {
        let offset = offset.get();
        let (bar, size) = (self.vram.at.as_u64(), self.vram.bytes);
        if offset < size {
            return Some(bar + offset);
        }
        let h = self.hot.as_ref()?;
        let r = offset - size;
        h.mem.lock().is_plugged(r, 1).then(|| h.region.0 + r)
    }

    /// The window through which the CPU reaches `[offset, offset + len)` of this device's
    /// memory, and the offset in it: the BAR, or the hot-plug region (plugged blocks only).
    /// A range that crosses from one into the other, or runs past the memory, has none.
    pub fn window(&self, offset: DevOffset, len: u64) -> Result<(&mm::PhysWindow, u64), DevError> {
        let offset = offset.get();
        let out = DevError::Access { device: self.index(), offset, len };
        let end = offset.checked_add(len).ok_or(out.clone())?;
        let size = self.vram.bytes;
        if end <= size {
            return Ok((&self.bar, offset));
        }
        let h = self.hot.as_ref().ok_or(out.clone())?;
        if offset < size || !h.mem.lock().is_plugged(offset - size, len) {
            return Err(out);
        }
        Ok((&h.window, offset - size))
    }

    /// Reads `buf.len()` bytes of this device's memory at `offset` with the CPU.
    pub fn read_mem(&self, offset: DevOffset, buf: &mut [u8]) -> Result<(), DevError> {
        let (w, at) = self.window(offset, buf.len() as u64)?;
        Ok(w.read(at, buf)?)
    }

    /// Writes `data` into this device's memory at `offset` with the CPU.
    pub fn write_mem(&self, offset: DevOffset, data: &[u8]) -> Result<(), DevError> {
        let (w, at) = self.window(offset, data.len() as u64)?;
        Ok(w.write(at, data)?)
    }

    /// The hot-plug region: physical address and bytes.
    pub fn hot_region(&self) -> Option<(u64, u64)> {
        self.hot.as_ref().map(|h| h.region)
    }

    /// Bytes of the hot-plug region (0 without one).
    pub fn hot_bytes(&self) -> u64 {
        self.hot.as_ref().map_or(0, |h| h.region.1)
    }

    /// Runs `f` on the hot-plug region's virtio-mem device (None without one).
    pub fn with_hot_mem<R>(&self, f: impl FnOnce(&mut crate::virtiomem::VirtioMem) -> R) -> Option<R> {
        self.hot.as_ref().map(|h| f(&mut h.mem.lock()))
    }

    /// The engine's IOMMU endpoint and its domain, when behind the virtio-iommu.
    pub fn mmu(&self) -> Option<(u32, u32)> {
        self.domain.as_ref().map(|d| (d.endpoint, d.id))
    }

    /// Runs `f` on the kernel's copy of the domain (None without a device MMU).
    pub fn with_shadow<R>(&self, f: impl FnOnce(&Shadow) -> R) -> Option<R> {
        self.domain.as_ref().map(|d| f(&d.shadow.lock()))
    }

    /// The device address of physical RAM `pa` for this device.
    pub fn iova_of(&self, pa: u64) -> Iova {
        if self.domain.is_some() { iova_translated(pa) } else { iova_identity(pa) }
    }

    /// Runs `f` on the copy engine of `region` (None: the device has no hot-plug region),
    /// holding that engine's lock.
    pub fn with_engine<R>(&self, region: Region, f: impl FnOnce(&mut CopyEngine) -> R) -> Option<R> {
        match region {
            Region::Bar => Some(f(&mut self.engine.lock())),
            Region::Hotplug => self.hot.as_ref().map(|h| f(&mut h.engine.lock())),
        }
    }

    /// The BAR's copy engine's counters.
    pub fn engine_stats(&self) -> CopyStats {
        self.engine.lock().stats
    }

    /// Whether one of the device's copy engines is unusable (a reset after a timeout failed).
    pub fn engine_dead(&self) -> bool {
        self.engine.lock().is_dead() || self.hot.as_ref().is_some_and(|h| h.engine.lock().is_dead())
    }

    /// The compute engine's counters so far (see [`crate::compute`]).
    pub fn compute_counters(&self) -> hmm::compute::Counters {
        *self.compute.lock()
    }

    /// Adds a launch's counters to the device's.
    pub fn add_compute(&self, c: &hmm::compute::Counters) {
        *self.compute.lock() += c;
    }

    /// Binds a mirror of `space` to this device with `bind`, given the free slot it takes
    /// (its IOVA window is [`window`]`(slot)`). Refused when the device mirrors `space`
    /// already ([`DevError::AlreadyBound`]) or mirrors [`SPACES`] live spaces
    /// ([`DevError::Busy`]). The slots are held while `bind` runs, so two binds cannot take
    /// one slot.
    pub fn bind_mirror<M: Bound + 'static>(
        &self,
        space: &Arc<hmm::mm::SharedSpace>,
        bind: impl FnOnce(usize) -> Result<Arc<M>, DevError>,
    ) -> Result<Arc<M>, DevError> {
        let mut slots = self.mirrors.lock();
        let live = |s: &Option<Weak<dyn Bound>>| s.as_ref().and_then(Weak::upgrade).filter(|m| m.is_live());
        if slots.iter().filter_map(live).any(|m| m.mirrors(space)) {
            return Err(DevError::AlreadyBound(self.index()));
        }
        let slot = slots.iter().position(|s| live(s).is_none()).ok_or(DevError::Busy(self.index()))?;
        let m = bind(slot)?;
        let w: Weak<M> = Arc::downgrade(&m);
        slots[slot] = Some(w);
        Ok(m)
    }

    /// Live mirrors bound to this device now.
    pub fn mirrors_bound(&self) -> usize {
        let slots = self.mirrors.lock();
        slots.iter().filter(|s| s.as_ref().and_then(Weak::upgrade).is_some_and(|m| m.is_live())).count()
    }

    fn iommu_domain(&self) -> Result<(&'static Mutex<Viommu>, &Domain), DevError> {
        match (iommu(), self.domain.as_ref()) {
            (Some(io), Some(d)) => Ok((io, d)),
            _ => Err(IommuError::Device("the device has no MMU").into()),
        }
    }

    /// Maps `maps` in the device's domain (refusing overlaps), then records them.
    pub fn map(&self, maps: &[Mapping]) -> Result<(), DevError> {
        let (io, d) = self.iommu_domain()?;
        let mut shadow = d.shadow.lock();
        map_recorded(&mut io.lock(), self.index(), d.id, &mut shadow, maps)
    }

    /// Unmaps `[iova, iova + len)` from the device's domain: the mappings it touches go, and
    /// the parts of them outside the range are mapped again.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<(), DevError> {
        let (io, d) = self.iommu_domain()?;
        let mut shadow = d.shadow.lock();
        let plan = shadow.plan_unmap(iova, iova.saturating_add(len));
        let mut io = io.lock();
        io.unmap(d.id, &plan.unmap)?;
        for m in &plan.unmap {
            shadow.remove(m);
        }
        map_recorded(&mut io, self.index(), d.id, &mut shadow, &plan.remap)
    }

    fn check_mapped(&self, shadow: Option<&Shadow>, dir: Dir, ram: &[(Iova, u32)]) -> Result<(), DevError> {
        let write = dir == Dir::ToRam;
        if let Some(shadow) = shadow {
            let need = if write { MAP_WRITE } else { MAP_READ };
            if let Some(&(iova, _)) = ram.iter().find(|&&(a, l)| !shadow.covers(a.get(), u64::from(l), need)) {
                return Err(DevError::NotMapped { device: self.index(), iova: iova.get(), write });
            }
        }
        Ok(())
    }

    /// The engine whose disk holds `[offset, offset + bytes)` of this device's memory, and the
    /// offset on that disk. None if the range is past the memory, crosses from the BAR into
    /// the hot-plug region, or touches a block of the region that is not plugged.
    fn engine_for(&self, offset: DevOffset, bytes: u64) -> Option<(bool, &Mutex<CopyEngine>, u64)> {
        let offset = offset.get();
        let bar = self.vram.bytes;
        let end = offset.checked_add(bytes)?;
        if end <= bar {
            return Some((false, &self.engine, offset));
        }
        let h = self.hot.as_ref().filter(|h| offset >= bar && h.mem.lock().is_plugged(offset - bar, bytes))?;
        Some((true, &h.engine, offset - bar))
    }

    fn engine_of(&self, hot: bool) -> Result<&Mutex<CopyEngine>, DevError> {
        match (hot, self.hot.as_ref()) {
            (false, _) => Ok(&self.engine),
            (true, Some(h)) => Ok(&h.engine),
            (true, None) => Err(DevError::Copy(CopyError::Invalid("no hot-plug region"))),
        }
    }

    /// Submits one copy between this device's memory at `offset` and the RAM segments `ram`
    /// (device addresses) without waiting for it: refused unless the domain maps every
    /// segment with the access needed. Holds the domain's lock (check and submit) and then
    /// the engine's, only while submitting.
    pub fn submit(&self, dir: Dir, offset: DevOffset, ram: &[(Iova, u32)]) -> Result<Ticket, DevError> {
        self.start(dir, offset, ram, true)
    }

    /// Checks and publishes a copy as [`submit`](Self::submit) does; the device is notified
    /// only when `notify` (else by a later [`CopyEngine::kick`] of the ticket's engine).
    fn start(&self, dir: Dir, offset: DevOffset, ram: &[(Iova, u32)], notify: bool) -> Result<Ticket, DevError> {
        let shadow = self.domain.as_ref().map(|d| d.shadow.lock());
        self.check_mapped(shadow.as_deref(), dir, ram)?;
        let bytes: u64 = ram.iter().map(|&(_, l)| u64::from(l)).sum();
        let capacity = self.vram.bytes + self.hot_bytes();
        let out = CopyError::OutOfRange { offset: offset.get(), len: bytes, capacity };
        let (hot, engine, at) = self.engine_for(offset, bytes).ok_or(DevError::Copy(out))?;
        let mut e = engine.lock();
        let inner = if notify { e.submit(dir, at, ram)? } else { e.push(dir, at, ram)? };
        Ok(Ticket { hot, inner })
    }

    /// Collects the result of a copy [`submit`](Self::submit)ted to this device (a bounded
    /// wait, holding only that copy's engine's lock).
    pub fn wait(&self, t: Ticket) -> Result<(), DevError> {
        Ok(self.engine_of(t.hot)?.lock().wait(t.inner)?)
    }

    /// Waits until a copy submitted to this device has completed, leaving its result for
    /// [`wait`](Self::wait).
    pub fn settle(&self, t: Ticket) -> Result<(), DevError> {
        Ok(self.engine_of(t.hot)?.lock().settle(t.inner)?)
    }

    /// Copies between this device's memory at `offset` and the RAM segments `ram`, checked as
    /// [`submit`](Self::submit) checks, and waits for it.
    pub fn dma(&self, dir: Dir, offset: DevOffset, ram: &[(Iova, u32)]) -> Result<(), DevError> {
        let t = self.submit(dir, offset, ram)?;
        self.wait(t)
    }

    /// Several copies at once (`(offset, ram segments)` each, all in flight together); one
    /// result per copy, in order. Each is checked as [`submit`](Self::submit) checks.
    pub fn dma_many<'r>(
        &self,
        dir: Dir,
        reqs: impl Iterator<Item = (DevOffset, &'r [(Iova, u32)])>,
    ) -> Vec<Result<(), DevError>> {
        // All published first, then one notification per engine that got any: the device
        // starts them together (a copy that could not be published is its error).
        let tickets: Vec<Result<Ticket, DevError>> =
            reqs.map(|(offset, ram)| self.start(dir, offset, ram, false)).collect();
        for hot in [false, true] {
            if tickets.iter().any(|t| t.as_ref().is_ok_and(|t| t.hot == hot))
                && let Ok(e) = self.engine_of(hot)
            {
                e.lock().kick();
            }
        }
        tickets.into_iter().map(|t| self.wait(t?)).collect()
    }
}

/// Every device, and the virtio-iommu they sit behind.
struct Devices {
    iommu: Option<Mutex<Viommu>>,
    list: Vec<Device>,
}

static DEVICES: Once<Devices> = Once::new();

/// Every device, in PCI order (empty before [`init`], or if it failed).
pub fn all() -> &'static [Device] {
    DEVICES.get().map_or(&[], |d| &d.list[..])
}

/// The device named `name` (`dev0`, `dev1`, ...).
pub fn get(name: &str) -> Option<&'static Device> {
    all().iter().find(|d| d.name == name)
}

/// The `n`-th device in PCI order (`dev{n}`).
pub fn nth(n: usize) -> Result<&'static Device, DevError> {
    match DEVICES.get() {
        None => Err(DevError::NotInitialised),
        Some(d) => d.list.get(n).ok_or(DevError::NoDevice(n)),
    }
}

/// The virtio-iommu, if the machine has one.
pub fn iommu() -> Option<&'static Mutex<Viommu>> {
    DEVICES.get().and_then(|d| d.iommu.as_ref())
}

/// Binds the virtio-iommu and every device; their domains get the kernel half mapped.
pub fn init(s: &System) -> Result<(), DevError> {
    let funcs = &s.pci.functions;
    let mut iommu = match funcs.iter().find(|f| f.virtio == Some(DeviceType::IOMMU)) {
        Some(f) => Some(Viommu::new(pci::transport(f.df).map_err(DevError::Transport)?)?),
        None => None,
    };
    let parts: Vec<Part> = funcs
        .iter()
        .map(|f| match f.virtio {
            _ if (f.info.vendor_id, f.info.device_id) == IVSHMEM => Part::Memory,
            Some(DeviceType::Block) => Part::Engine,
            Some(DeviceType::Memory) => Part::Hotplug,
            _ => Part::Other,
        })
        .collect();
    let groups = drivers::pci::group(&parts).map_err(DevError::Group)?;
    let mut list = Vec::new();
    // Each device's shadow, filled here and moved into its domain at the end.
    let mut shadows: Vec<Shadow> = Vec::new();
    for (n, g) in groups.iter().enumerate() {
        let (v, b) = (&funcs[g.memory], &funcs[g.engine]);
        let bar = v.bar(2).ok_or(DevError::NoBar2(v.df))?;
        let endpoint = s.platform.viot.as_ref().and_then(|viot| viot.endpoint_for(0, b.bdf())).map(|(ep, _)| ep);
        let behind = iommu.is_some() && endpoint.is_some();
        let iova = if behind { iova_translated } else { iova_identity };
        let t = pci::transport(b.df).map_err(DevError::Transport)?;
        // The domain first: the engine's rings must be reachable before it starts.
        let mut shadow = Shadow::new();
        let mmu = match (iommu.as_mut(), endpoint) {
            (Some(io), Some(ep)) if behind => {
                let domain = io.new_domain()?;
                let maps: Vec<Mapping> = s
                    .boot
                    .usable_ram(mm::PAGE_SIZE)
                    .map(|r| Mapping {
                        iova: KERNEL_IOVA + r.start,
                        len: r.len(),
                        phys: r.start,
                        flags: MAP_READ | MAP_WRITE,
                    })
                    .collect();
                // The device creates a domain on its first ATTACH (MAP to an unknown
                // domain is NOENT); the engine does no DMA before it is started below.
                io.attach(domain, ep)?;
                for p in io.probe(ep)? {
                    log::info!("dev{n}: endpoint {ep:#x} property {p:x?}");
                }
                map_recorded(io, n, domain, &mut shadow, &maps)?;
                Some((ep, domain))
            }
            _ => None,
        };
        let mut engine = CopyEngine::new(t, behind, iova)?;
        engine.device = Some(n);
        interrupt_completions(s, n, g.engine, &mut engine);
        let window = pci::bar_window(&s.pci, g.memory, 2).map_err(|e| DevError::MapForCpu {
            device: n,
            region: Region::Bar,
            error: WindowFailure::Bar(e),
        })?;
        log::info!(
            "dev{n}: {} MiB device memory at {:#x}, copy engine {} ({} segments/request{}){}",
            bar.size >> 20,
            bar.address,
            b.df,
            engine.seg_max,
            if engine.translated { ", DMA through the IOMMU" } else { "" },
            match mmu {
                Some((ep, d)) => alloc::format!(", device MMU: domain {d}, endpoint {ep:#x}"),
                None => String::new(),
            }
        );
        let hot = match g.hot {
            Some((m, e)) => Some(bind_hot(s, n, m, e, iommu.as_mut(), mmu)?),
            None => None,
        };
        shadows.push(shadow);
        list.push(Device {
            id: DeviceId(n),
            name: alloc::format!("dev{n}"),
            vram: BarMemory { at: mm::PhysAddr::new(bar.address), bytes: bar.size },
            bar: window,
            engine: Mutex::new(engine),
            domain: mmu.map(|(endpoint, id)| Domain { endpoint, id, shadow: Mutex::new(Shadow::new()) }),
            hot,
            mirrors: Mutex::new([const { None }; SPACES]),
            compute: Mutex::new(hmm::compute::Counters::default()),
        });
    }
    // Peer to peer: every other device's memory in each domain's kernel half, so one device's
    // engine can copy straight into another's BAR (device-to-device migration).
    if let Some(io) = iommu.as_mut() {
        // (owner, physical range): each device's BAR and hot-plug region.
        let mems: Vec<(usize, (u64, u64))> = list
            .iter()
            .enumerate()
            .flat_map(|(n, d)| {
                let hot = d.hot_region().map(|r| (n, r));
                core::iter::once((n, (d.vram.at.as_u64(), d.vram.bytes))).chain(hot)
            })
            .collect();
        for (n, (d, shadow)) in list.iter().zip(shadows.iter_mut()).enumerate() {
            let Some(domain) = &d.domain else { continue };
            let peers: Vec<Mapping> = mems
                .iter()
                .filter(|&&(m, _)| m != n)
                .map(|&(_, (pa, len))| Mapping { iova: KERNEL_IOVA + pa, len, phys: pa, flags: MAP_READ | MAP_WRITE })
                .collect();
            map_recorded(io, n, domain.id, shadow, &peers)?;
        }
    }
    for (d, shadow) in list.iter().zip(shadows) {
        if let Some(domain) = &d.domain {
            *domain.shadow.lock() = shadow;
        }
    }
    if let Some(io) = &iommu {
        log::info!(
            "virtio-iommu: page sizes {:#x}, input range {:#x}..={:#x}, domains {}..={}, {} requests",
            io.config.page_size_mask,
            io.config.input_range.0,
            io.config.input_range.1,
            io.config.domain_range.0,
            io.config.domain_range.1,
            io.requests
        );
    }
    DEVICES.call_once(|| Devices { iommu: iommu.map(Mutex::new), list });
    Ok(())
}

/// Has copy engine `engine` (PCI function `function` of device `n`) signal its completions by
/// MSI-X, so its waits halt instead of spinning. A function without MSI-X keeps polling (the
/// copies work the same, the waits spin), with a warning that says so.
fn interrupt_completions(s: &System, n: usize, function: usize, engine: &mut CopyEngine) {
    let set = pci::Msix::enable(&s.pci, function)
        .and_then(|m| Ok((m, pci::VirtioCommon::find(&s.pci, function)?)))
        .and_then(|(m, c)| engine.use_interrupt(m, c));
    if let Err(e) = set {
        log::warn!("dev{n}: copy-engine completions by polling (no interrupt: {e})");
    }
}

/// Binds device `n`'s hot-plug region, virtio-mem PCI function `memory`, with its
/// configuration changes interrupting ([`crate::platform::sched::CONFIG_CHANGED`]), and its
/// copy engine, PCI function `function` (attached to the device's domain `mmu`, when it has
/// one), and maps the region for the CPU.
fn bind_hot(
    s: &System,
    n: usize,
    memory: usize,
    function: usize,
    iommu: Option<&mut Viommu>,
    mmu: Option<(u32, u32)>,
) -> Result<Hot, DevError> {
    let (mem, eng) = (&s.pci.functions[memory], &s.pci.functions[function]);
    let mut vm = crate::virtiomem::VirtioMem::new(pci::transport(mem.df).map_err(DevError::Transport)?)
        .map_err(|error| DevError::Hotplug { device: n, df: mem.df, error })?;
    vm.device = Some(n);
    let set = pci::Msix::enable(&s.pci, memory)
        .and_then(|m| Ok((m, pci::VirtioCommon::find(&s.pci, memory)?)))
        .and_then(|(m, c)| vm.use_config_interrupt(m, c));
    if let Err(e) = set {
        // QEMU gives virtio-mem-pci MSI-X vectors only from 8.2 on.
        log::info!("dev{n}: the host's device-memory requests are polled for (no configuration interrupt: {e})");
    }
    let endpoint = s.platform.viot.as_ref().and_then(|viot| viot.endpoint_for(0, eng.bdf())).map(|(ep, _)| ep);
    let behind = match (iommu, mmu, endpoint) {
        (Some(io), Some((_, domain)), Some(ep)) => {
            io.attach(domain, ep)?;
            true
        }
        (_, Some(_), None) => {
            return Err(DevError::HotEngineBypassesIommu { device: n, df: eng.df });
        }
        _ => false,
    };
    let mut engine = CopyEngine::new(
        pci::transport(eng.df).map_err(DevError::Transport)?,
        behind,
        if behind { iova_translated } else { iova_identity },
    )?;
    engine.device = Some(n);
    interrupt_completions(s, n, function, &mut engine);
    let c = vm.config;
    if engine.capacity < c.region_size {
        return Err(DevError::EngineTooSmall {
            device: n,
            region: Region::Hotplug,
            capacity: engine.capacity,
            size: c.region_size,
        });
    }
    let window = mm::hotplug_window(c.addr, c.region_size).map_err(|e| DevError::MapForCpu {
        device: n,
        region: Region::Hotplug,
        error: WindowFailure::Hotplug(e),
    })?;
    log::info!(
        "dev{n}: hot-plug region of {} MiB at {:#x} ({} MiB blocks, host requests {} MiB, features {:#x}), copy engine {}",
        c.region_size >> 20,
        c.addr,
        c.block_size >> 20,
        c.requested_size >> 20,
        vm.features,
        eng.df
    );
    Ok(Hot { region: (c.addr, c.region_size), window, mem: Mutex::new(vm), engine: Mutex::new(engine) })
}

/// MAPs `maps` in `domain` after checking they overlap nothing in its `shadow`, then records
/// them there (the shadow holds exactly what the device maps). All or nothing: when the
/// device refuses one MAP of the batch, the ones it accepted are unmapped again before the
/// error is returned (and one it would not unmap stays recorded, so the shadow never
/// forgets a mapping the device still has).
fn map_recorded(io: &mut Viommu, n: usize, domain: u32, shadow: &mut Shadow, maps: &[Mapping]) -> Result<(), DevError> {
    for m in maps {
        shadow.check_free(m)?;
    }
    let results = io.map_each(domain, maps, Some(n))?;
    let Some(first) = results.iter().position(Result::is_err) else {
        for m in maps {
            shadow.insert(*m)?;
        }
        return Ok(());
    };
    let accepted: Vec<Mapping> = maps.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(m, _)| *m).collect();
    if let Err(e) = io.unmap(domain, &accepted) {
        log::warn!("domain {domain}: backing out a failed MAP batch: {e}; the shadow keeps the mappings");
        for m in &accepted {
            shadow.insert(*m)?;
        }
    }
    Err(results[first].unwrap_err().into())
}
