//! The errors of device operations ([`DevError`] and the failures it carries), with
//! `Display` for people. Device numbers in them are indices in PCI order (`dev{n}`).

use crate::copyengine::CopyError;
use crate::pci;
use drivers::viommu::IommuError;
use drivers::virtio_mem::MemError;
use virtio_drivers::transport::pci::bus::DeviceFunction;

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
        /// Why no window was made.
        error: WindowFailure,
    },
    /// A CPU access to `[offset, offset + len)` of a device's memory that is past its memory,
    /// crosses from the BAR into the hot-plug region, or touches an unplugged block.
    Access {
        /// Device.
        device: usize,
        /// Byte offset in the device's memory.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// A device-memory window refused a CPU access or copy.
    Handle(crate::mm::HandleError),
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
    /// The device mirrors as many address spaces as it has slots for ([`super::SPACES`]).
    Busy(usize),
    /// The device mirrors this address space already.
    AlreadyBound(usize),
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

/// Why a device's memory window could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFailure {
    /// The BAR's window (`pci::bar_window`).
    Bar(pci::BarWindowError),
    /// The hot-plug region's window (`mm::hotplug_window`).
    Hotplug(crate::mm::WindowError),
}

impl core::fmt::Display for WindowFailure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Bar(e) => write!(f, "{e}"),
            Self::Hotplug(e) => write!(f, "{e}"),
        }
    }
}

impl From<crate::mm::HandleError> for DevError {
    fn from(e: crate::mm::HandleError) -> Self {
        Self::Handle(e)
    }
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
            Self::Access { device, offset, len } => write!(
                f,
                "{len} bytes at offset {offset:#x} of dev{device}'s memory are past it, cross into the hot-plug region or are not plugged"
            ),
            Self::Handle(e) => write!(f, "device memory: {e}"),
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
                write!(f, "device {n} mirrors {} address spaces already (its slots); unbind one first", super::SPACES)
            }
            Self::AlreadyBound(n) => write!(f, "device {n} mirrors this address space already"),
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
    /// A block's UNPLUG failed after the driver's retries.
    Unplug {
        /// Block index.
        block: u64,
        /// The last refusal.
        error: MemError,
        /// True: the device still had it plugged, and it is back in use; false: its state is
        /// unknown, and it stays offline until a grow asks the device again.
        online: bool,
    },
    /// The host did not change the device's `requested_size` to what a guest request
    /// ([`crate::vram::follow::ask_host`]) asked for in time.
    HostIgnored {
        /// Bytes asked for.
        asked: u64,
        /// The bound, in milliseconds.
        ms: u64,
    },
    /// The host's request was not met in time (the follower keeps trying).
    NotMet {
        /// Bytes the host requests.
        asked: u64,
        /// Bytes plugged.
        plugged: u64,
        /// The bound, in milliseconds.
        ms: u64,
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
            Self::Unplug { block, error, online: true } => {
                write!(f, "unplugging block {block}: {error}; the device still has it plugged, so it is back in use")
            }
            Self::Unplug { block, error, online: false } => write!(
                f,
                "unplugging block {block}: {error}; the device cannot say whether it is plugged, so it stays \
                 offline until a grow asks again"
            ),
            Self::HostIgnored { asked, ms } => write!(
                f,
                "asked the host for {} MiB of hot-plug memory; its request did not change within {ms} ms (run \
                 under cargo xtask, which carries out @@HOST requests over QMP)",
                asked >> 20
            ),
            Self::NotMet { asked, plugged, ms } => write!(
                f,
                "the host requests {} MiB of hot-plug memory; {} MiB still plugged after {ms} ms (pages that \
                 cannot move yet?)",
                asked >> 20,
                plugged >> 20
            ),
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
