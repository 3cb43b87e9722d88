//! The machine's devices, each a group of stock QEMU parts (`qemu/*.toml`, brief "The
//! devices"): device memory (an ivshmem-plain BAR over a host memory object), a copy engine
//! (a virtio-blk over the same object, [`CopyEngine`]) and, when the machine has a
//! virtio-iommu, a device MMU: one domain per device, which the copy engine's endpoint is
//! attached to.
//!
//! A domain has two halves. The user half (below [`KERNEL_IOVA`]) mirrors the address spaces
//! bound to the device: IOVA = process virtual address. The kernel half maps system RAM at
//! IOVA = [`KERNEL_IOVA`] + physical address, for the engine's own rings and headers and for
//! migration copies of pages the CPU no longer maps (what `dma_map_page` gives a Linux
//! driver), and the other devices' memory (their BARs at [`KERNEL_IOVA`] + BAR address, for
//! peer-to-peer copies). A device's own memory is not in its domain: its engine reaches it as
//! its disk.
//!
//! Invariants: [`Devices::dma`] submits only segments the domain's [`Shadow`] maps with the
//! access the transfer needs (QEMU cannot recover a DMA fault: the request would never
//! complete); the shadow holds exactly what the virtio-iommu accepted.
//!
//! A device may also have hot-plug memory ([`Hot`]): a virtio-mem region and a second copy
//! engine over the region's host memory, attached to the same domain. Device memory offsets
//! run through the BAR, then the region; a copy is routed to the engine whose disk holds it.
//!
//! Grouping: functions are grouped in PCI order (`drivers::pci::group`): an ivshmem function,
//! its virtio-blk engine, then optionally a virtio-mem region and its engine form device n,
//! which is how the xtask builds the command line.

use crate::copyengine::{self, CopyEngine, CopyError, Dir};
use crate::viommu::Viommu;
use crate::{System, mm, pci};
use alloc::string::String;
use alloc::vec::Vec;
use drivers::pci::Part;
use drivers::viommu::{IommuError, MAP_READ, MAP_WRITE, Mapping, Shadow};
use drivers::virtio_mem::MemError;
use spin::Mutex;
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::pci::bus::DeviceFunction;

/// Where the kernel half of every domain starts: RAM at `KERNEL_IOVA + pa` (the direct
/// map's own offset, so a kernel buffer's IOVA is its kernel virtual address).
pub const KERNEL_IOVA: u64 = boot::layout::DIRECT_MAP_BASE;

const IVSHMEM: (u16, u16) = (0x1af4, 0x1110);

fn iova_translated(pa: u64) -> u64 {
    KERNEL_IOVA + pa
}

fn iova_identity(pa: u64) -> u64 {
    pa
}

/// A device of the machine.
#[derive(Debug)]
pub struct Device {
    /// `dev0`, `dev1`, ... in PCI order.
    pub name: String,
    /// Device memory: physical address of the BAR and its size.
    pub vram: (u64, u64),
    /// The copy engine.
    pub engine: CopyEngine,
    /// The engine's IOMMU endpoint and its domain, when behind the virtio-iommu.
    pub mmu: Option<(u32, u32)>,
    /// The kernel's copy of the domain.
    pub shadow: Shadow,
    /// The device's hot-plug memory region, when it has one.
    pub hot: Option<Hot>,
}

/// A device's hot-plug memory: a virtio-mem region (2 MiB blocks the kernel plugs and unplugs)
/// and a second copy engine whose disk is the region's host memory, as the BAR's is the
/// BAR's. Device memory offsets past the BAR are offsets in this region.
#[derive(Debug)]
pub struct Hot {
    /// The virtio-mem device.
    pub mem: crate::virtiomem::VirtioMem,
    /// The region's copy engine.
    pub engine: CopyEngine,
}

impl Device {
    /// The physical address of byte `offset` of this device's memory: in the BAR, then in the
    /// hot-plug region (plugged blocks only).
    pub fn phys_of(&self, offset: u64) -> Option<u64> {
        let (bar, size) = self.vram;
        if offset < size {
            return Some(bar + offset);
        }
        let h = self.hot.as_ref()?;
        let r = offset - size;
        h.mem.is_plugged(r, 1).then(|| h.mem.config.addr + r)
    }

    /// The hot-plug region: physical address and bytes.
    pub fn hot_region(&self) -> Option<(u64, u64)> {
        self.hot.as_ref().map(|h| (h.mem.config.addr, h.mem.config.region_size))
    }

    /// Bytes of the hot-plug region (0 without one).
    pub fn hot_bytes(&self) -> u64 {
        self.hot.as_ref().map_or(0, |h| h.mem.config.region_size)
    }

    /// The device address of physical RAM `pa` for this device.
    pub fn iova_of(&self, pa: u64) -> u64 {
        if self.mmu.is_some() { iova_translated(pa) } else { pa }
    }
}

/// A device operation that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevError {
    /// No such device.
    NoDevice(usize),
    /// The devices are not initialised ([`init`] has not run or failed).
    NotInitialised,
    /// A PCI function could not be bound to virtio-drivers' transport.
    Transport(pci::TransportError),
    /// The PCI functions do not group into devices (`drivers::pci::group`).
    Group(drivers::pci::GroupError),
    /// An ivshmem function (a device's memory) without BAR2.
    NoBar2(DeviceFunction),
    /// Device memory could not be mapped for the CPU.
    MapForCpu {
        /// Device.
        device: usize,
        /// Which memory.
        region: Region,
        /// What the kernel page tables refused.
        error: crate::mm::paging::MapError,
    },
    /// The device's virtio-mem function (its hot-plug region) could not be bound.
    Hotplug {
        /// Device.
        device: usize,
        /// The virtio-mem function.
        df: DeviceFunction,
        /// What the virtio-mem driver found.
        error: MemError,
    },
    /// The hot-plug region's copy engine is not behind the IOMMU, but the device is: the
    /// engine could not reach the device's domain.
    HotEngineBypassesIommu {
        /// Device.
        device: usize,
        /// The region's copy engine.
        df: DeviceFunction,
    },
    /// A copy engine's disk is smaller than the memory it copies.
    EngineTooSmall {
        /// Device.
        device: usize,
        /// Which memory.
        region: Region,
        /// Bytes the engine's disk holds.
        capacity: u64,
        /// Bytes of memory.
        size: u64,
    },
    /// The device has no device MMU (the machine has no virtio-iommu).
    NoMmu(usize),
    /// Device memory could not be registered (pagemaps, the devices' memory).
    Memory(hmm::mm::Error),
    /// The mirror's interval notifier could not be inserted.
    Notifier {
        /// Device.
        device: usize,
        /// Why.
        error: hmm::mm::Error,
    },
    /// `migrate_vma_setup` refused the range.
    MigrateSetup(hmm::mm::Error),
    /// A device-to-device migration from a device to itself.
    SameDevice(usize),
    /// Read duplication failed; nothing was kept.
    ReadCopy {
        /// Device.
        device: usize,
        /// What failed.
        failure: ReadCopyFailure,
    },
    /// Hot-plug memory could not be added or removed.
    Resize {
        /// Device.
        device: usize,
        /// What failed.
        failure: ResizeFailure,
    },
    /// The virtio-iommu refused or failed.
    Iommu(IommuError),
    /// The copy engine failed.
    Copy(CopyError),
    /// The device's mirror of an address space refused or failed.
    Mirror(hmm::devmmu::MirrorError),
    /// The device already mirrors another address space (one per domain: IOVA = VA).
    Busy(usize),
    /// A DMA segment is not mapped in the device's domain with the access it needs: the
    /// transfer is refused before it reaches the device.
    NotMapped {
        /// Device.
        device: usize,
        /// First IOVA of the segment.
        iova: u64,
        /// Whether the device would have written there.
        write: bool,
    },
}

impl core::fmt::Display for DevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoDevice(n) => write!(f, "no device {n} on this machine"),
            Self::NotInitialised => write!(f, "devices not initialised"),
            Self::Transport(e) => write!(f, "{e}"),
            Self::Group(e) => write!(f, "grouping devices: {e}"),
            Self::NoBar2(df) => write!(f, "{df}: ivshmem without BAR2"),
            Self::MapForCpu { device, region, error } => write!(f, "mapping {region} of dev{device}: {error}"),
            Self::Hotplug { device, df, error } => write!(f, "dev{device}: hot-plug region {df}: {error}"),
            Self::HotEngineBypassesIommu { device, df } => write!(
                f,
                "dev{device}: the hot-plug region's copy engine {df} is not behind the IOMMU but the device is"
            ),
            Self::EngineTooSmall { device, region, capacity, size } => {
                write!(f, "dev{device}: the copy engine of {region} holds {capacity} bytes, the memory {size}")
            }
            Self::NoMmu(n) => write!(f, "dev{n} has no device MMU (no virtio-iommu)"),
            Self::Memory(e) => write!(f, "device memory: {e}"),
            Self::Notifier { device, error } => write!(f, "dev{device}: interval notifier: {error}"),
            Self::MigrateSetup(e) => write!(f, "migrate_vma_setup: {e}"),
            Self::SameDevice(n) => {
                write!(f, "device-to-device migration needs two different devices (dev{n} twice)")
            }
            Self::ReadCopy { device, failure } => write!(f, "dev{device}: {failure}"),
            Self::Resize { device, failure } => write!(f, "dev{device}: {failure}"),
            Self::Iommu(e) => write!(f, "{e}"),
            Self::Copy(e) => write!(f, "{e}"),
            Self::Mirror(e) => write!(f, "{e}"),
            Self::Busy(n) => {
                write!(
                    f,
                    "device {n} already mirrors another address space; unbind that one first (one per device MMU)"
                )
            }
            Self::NotMapped { device, iova, write } => write!(
                f,
                "device {device}: DMA {} {iova:#x} refused: the device MMU does not map it{}",
                if *write { "to" } else { "from" },
                if *write { " writable" } else { "" }
            ),
        }
    }
}

/// Which of a device's memories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The ivshmem BAR.
    Bar,
    /// The virtio-mem hot-plug region.
    Hotplug,
}

impl core::fmt::Display for Region {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Bar => "the device memory",
            Self::Hotplug => "the hot-plug region",
        })
    }
}

/// Why read duplication ([`crate::vram::Vram::read_copies`]) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadCopyFailure {
    /// Device memory ran out after `made` of `wanted` pages.
    NoRoom {
        /// Pages allocated.
        made: usize,
        /// Pages asked for.
        wanted: usize,
    },
    /// The DMA of `failed` of the copies failed.
    Dma {
        /// Copies that failed.
        failed: usize,
    },
}

impl core::fmt::Display for ReadCopyFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRoom { made, wanted } => {
                write!(f, "no free device page for a read copy ({made} of {wanted} made)")
            }
            Self::Dma { failed } => write!(f, "the DMA of {failed} read copies failed"),
        }
    }
}

/// Why hot-plug memory could not be added ([`crate::vram::Vram::grow`]) or removed
/// ([`crate::vram::Vram::shrink`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResizeFailure {
    /// Not a whole number of 2 MiB blocks (or none).
    NotBlocks(u64),
    /// Grow: the region has fewer unplugged bytes left than asked.
    NoRoom {
        /// Bytes asked.
        asked: u64,
        /// Bytes of the region still unplugged.
        left: u64,
    },
    /// Shrink: fewer bytes plugged than asked.
    NotPlugged {
        /// Bytes asked.
        asked: u64,
        /// Bytes plugged.
        plugged: u64,
    },
    /// The device has no hot-plug region.
    NoRegion,
    /// The virtio-mem request failed (a `NACK`: the host has not requested that much).
    Request(MemError),
    /// Plugged memory could not be registered as device pages.
    Register(hmm::mm::Error),
    /// A block could not be taken out of allocation.
    Isolate {
        /// Block (2 MiB) index in device memory.
        block: u64,
        /// Why.
        error: hmm::devalloc::AllocError,
    },
    /// A block's pages could not all be evicted to RAM.
    Evict {
        /// Block index.
        block: u64,
        /// True: no RAM to evict into; false: the copy engine failed.
        no_ram: bool,
    },
    /// A block still had pages in use after its eviction.
    StillBusy {
        /// Block index.
        block: u64,
        /// What the allocator said.
        error: hmm::devalloc::AllocError,
    },
    /// A block's pagemap could not be unregistered.
    Unmap {
        /// Block index.
        block: u64,
        /// Why.
        error: hmm::mm::Error,
    },
}

impl core::fmt::Display for ResizeFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotBlocks(bytes) => {
                write!(f, "{bytes:#x} bytes: device memory is added and removed in 2 MiB blocks")
            }
            Self::NoRoom { asked, left } => {
                write!(f, "{} MiB asked, {} MiB of the hot-plug region left unplugged", asked >> 20, left >> 20)
            }
            Self::NotPlugged { asked, plugged } => {
                write!(f, "{} MiB asked, {} MiB of hot-plug memory plugged", asked >> 20, plugged >> 20)
            }
            Self::NoRegion => write!(f, "no hot-plug region"),
            Self::Request(e) => write!(f, "virtio-mem: {e}"),
            Self::Register(e) => write!(f, "registering plugged memory: {e}"),
            Self::Isolate { block, error } => write!(f, "removing block {block}: {error}"),
            Self::Evict { block, no_ram } => write!(
                f,
                "evicting block {block}: {}",
                if *no_ram { "no RAM to evict into" } else { "the copy engine failed; the pages stay on the device" }
            ),
            Self::StillBusy { block, error } => write!(f, "block {block} still busy after eviction: {error}"),
            Self::Unmap { block, error } => write!(f, "unregistering block {block}: {error}"),
        }
    }
}

impl From<IommuError> for DevError {
    fn from(e: IommuError) -> Self {
        Self::Iommu(e)
    }
}

impl From<hmm::devmmu::MirrorError> for DevError {
    fn from(e: hmm::devmmu::MirrorError) -> Self {
        Self::Mirror(e)
    }
}

impl From<CopyError> for DevError {
    fn from(e: CopyError) -> Self {
        Self::Copy(e)
    }
}

/// Every device, and the virtio-iommu they sit behind.
#[derive(Debug, Default)]
pub struct Devices {
    /// The virtio-iommu, if the machine has one.
    pub iommu: Option<Viommu>,
    /// The devices, in PCI order.
    pub list: Vec<Device>,
}

static DEVICES: Mutex<Option<Devices>> = Mutex::new(None);

/// Runs `f` on the devices (None before [`init`]).
pub fn with<R>(f: impl FnOnce(&mut Devices) -> R) -> Option<R> {
    DEVICES.lock().as_mut().map(f)
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
        let uncached =
            x86_64::structures::paging::PageTableFlags::WRITABLE | x86_64::structures::paging::PageTableFlags::NO_CACHE;
        mm::map_phys(bar.address, bar.size, uncached).map_err(|error| DevError::MapForCpu {
            device: n,
            region: Region::Bar,
            error,
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
            Some((m, e)) => Some(bind_hot(s, n, &funcs[m], &funcs[e], iommu.as_mut(), mmu, uncached)?),
            None => None,
        };
        list.push(Device { name: alloc::format!("dev{n}"), vram: (bar.address, bar.size), engine, mmu, shadow, hot });
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
                core::iter::once((n, d.vram)).chain(hot)
            })
            .collect();
        for (n, d) in list.iter_mut().enumerate() {
            let Some((_, domain)) = d.mmu else { continue };
            let peers: Vec<Mapping> = mems
                .iter()
                .filter(|&&(m, _)| m != n)
                .map(|&(_, (pa, len))| Mapping { iova: KERNEL_IOVA + pa, len, phys: pa, flags: MAP_READ | MAP_WRITE })
                .collect();
            map_recorded(io, n, domain, &mut d.shadow, &peers)?;
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
    *DEVICES.lock() = Some(Devices { iommu, list });
    Ok(())
}

/// Binds device `n`'s hot-plug region `mem` and its copy engine `eng` (attached to the
/// device's domain `mmu`, when it has one) and maps the region for the CPU.
fn bind_hot(
    s: &System,
    n: usize,
    mem: &drivers::pci::Function,
    eng: &drivers::pci::Function,
    iommu: Option<&mut Viommu>,
    mmu: Option<(u32, u32)>,
    flags: x86_64::structures::paging::PageTableFlags,
) -> Result<Hot, DevError> {
    let vm = crate::virtiomem::VirtioMem::new(pci::transport(mem.df).map_err(DevError::Transport)?)
        .map_err(|error| DevError::Hotplug { device: n, df: mem.df, error })?;
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
    let c = vm.config;
    if engine.capacity < c.region_size {
        return Err(DevError::EngineTooSmall {
            device: n,
            region: Region::Hotplug,
            capacity: engine.capacity,
            size: c.region_size,
        });
    }
    mm::map_phys(c.addr, c.region_size, flags).map_err(|error| DevError::MapForCpu {
        device: n,
        region: Region::Hotplug,
        error,
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
    Ok(Hot { mem: vm, engine })
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

impl Devices {
    fn dev(&mut self, n: usize) -> Result<&mut Device, DevError> {
        self.list.get_mut(n).ok_or(DevError::NoDevice(n))
    }

    /// The IOMMU, device `n` and its domain.
    fn mmu(&mut self, n: usize) -> Result<(&mut Viommu, &mut Device, u32), DevError> {
        let d = self.list.get_mut(n).ok_or(DevError::NoDevice(n))?;
        match (self.iommu.as_mut(), d.mmu) {
            (Some(io), Some((_, domain))) => Ok((io, d, domain)),
            _ => Err(IommuError::Device("the device has no MMU").into()),
        }
    }

    /// Maps `maps` in device `n`'s domain (refusing overlaps), then records them.
    pub fn map(&mut self, n: usize, maps: &[Mapping]) -> Result<(), DevError> {
        let (io, d, domain) = self.mmu(n)?;
        map_recorded(io, n, domain, &mut d.shadow, maps)
    }

    /// Unmaps `[iova, iova + len)` from device `n`'s domain: the mappings it touches go, and
    /// the parts of them outside the range are mapped again.
    pub fn unmap(&mut self, n: usize, iova: u64, len: u64) -> Result<(), DevError> {
        let (io, d, domain) = self.mmu(n)?;
        let plan = d.shadow.plan_unmap(iova, iova.saturating_add(len));
        io.unmap(domain, &plan.unmap)?;
        for m in &plan.unmap {
            d.shadow.remove(m);
        }
        map_recorded(io, n, domain, &mut d.shadow, &plan.remap)
    }

    /// Several copies at once (`(offset, ram segments)` each, all in flight together); one
    /// result per copy, in order. Each is checked as [`dma`](Self::dma) checks.
    pub fn dma_many<'r>(
        &mut self,
        n: usize,
        dir: Dir,
        reqs: impl Iterator<Item = (u64, &'r [(u64, u32)])>,
    ) -> Vec<Result<(), DevError>> {
        let tickets: Vec<Result<Ticket, DevError>> =
            reqs.map(|(offset, ram)| self.submit(n, dir, offset, ram)).collect();
        tickets.into_iter().map(|t| self.wait(n, t?)).collect()
    }

    fn check_mapped(d: &Device, n: usize, dir: Dir, ram: &[(u64, u32)]) -> Result<(), DevError> {
        let write = dir == Dir::ToRam;
        if d.mmu.is_some() {
            let need = if write { MAP_WRITE } else { MAP_READ };
            if let Some(&(iova, _)) = ram.iter().find(|&&(a, l)| !d.shadow.covers(a, u64::from(l), need)) {
                return Err(DevError::NotMapped { device: n, iova, write });
            }
        }
        Ok(())
    }

    /// Submits one copy (checked as [`dma`](Self::dma) checks) without waiting for it.
    pub fn submit(&mut self, n: usize, dir: Dir, offset: u64, ram: &[(u64, u32)]) -> Result<Ticket, DevError> {
        let d = self.dev(n)?;
        Self::check_mapped(d, n, dir, ram)?;
        let bytes: u64 = ram.iter().map(|&(_, l)| u64::from(l)).sum();
        let capacity = d.vram.1 + d.hot_bytes();
        let out = CopyError::OutOfRange { offset, len: bytes, capacity };
        let (hot, engine, at) = d.engine_for(offset, bytes).ok_or(DevError::Copy(out))?;
        Ok(Ticket { hot, inner: engine.submit(dir, at, ram)? })
    }

    /// Collects the result of a copy [`submit`](Self::submit)ted to device `n`.
    pub fn wait(&mut self, n: usize, t: Ticket) -> Result<(), DevError> {
        Ok(self.dev(n)?.engine_of(t.hot)?.wait(t.inner)?)
    }

    /// Waits until a copy submitted to device `n` has completed, leaving its result for
    /// [`wait`](Self::wait).
    pub fn settle(&mut self, n: usize, t: Ticket) -> Result<(), DevError> {
        Ok(self.dev(n)?.engine_of(t.hot)?.settle(t.inner)?)
    }

    /// Copies between device `n`'s memory at `offset` and the RAM segments `ram` (device
    /// addresses): refused unless the domain maps every segment with the access needed.
    pub fn dma(&mut self, n: usize, dir: Dir, offset: u64, ram: &[(u64, u32)]) -> Result<(), DevError> {
        let t = self.submit(n, dir, offset, ram)?;
        self.wait(n, t)
    }
}

/// A copy in flight on one of a device's engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    hot: bool,
    inner: copyengine::Ticket,
}

impl Device {
    /// The engine whose disk holds `[offset, offset + bytes)` of this device's memory, and the
    /// offset on that disk. None if the range is past the memory, crosses from the BAR into
    /// the hot-plug region, or touches a block of the region that is not plugged.
    fn engine_for(&mut self, offset: u64, bytes: u64) -> Option<(bool, &mut CopyEngine, u64)> {
        let bar = self.vram.1;
        let end = offset.checked_add(bytes)?;
        if end <= bar {
            return Some((false, &mut self.engine, offset));
        }
        let h = self.hot.as_mut().filter(|h| offset >= bar && h.mem.is_plugged(offset - bar, bytes))?;
        Some((true, &mut h.engine, offset - bar))
    }

    fn engine_of(&mut self, hot: bool) -> Result<&mut CopyEngine, DevError> {
        match (hot, self.hot.as_mut()) {
            (false, _) => Ok(&mut self.engine),
            (true, Some(h)) => Ok(&mut h.engine),
            (true, None) => Err(DevError::Copy(CopyError::Invalid("no hot-plug region"))),
        }
    }
}
