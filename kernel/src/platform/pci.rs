//! PCI bring-up: ECAM from the MCFG, enumeration and BAR assignment (by `drivers::pci`), and
//! virtio devices bound through virtio-drivers' PCI transport to check they answer. Device
//! memory is reached through [`bar_window`], which makes a [`mm::PhysWindow`] only for a
//! memory BAR of an enumerated function.

extern crate alloc;

use alloc::vec::Vec;
use core::ptr::NonNull;
use drivers::pci::{self as dpci, Function, Windows};
use virtio_drivers::{
    BufferDirection, Hal, PhysAddr,
    transport::{
        Transport,
        pci::{
            PciTransport, VirtioPciError,
            bus::{Cam, ConfigurationAccess, DeviceFunction, MmioCam, PciRoot},
        },
    },
};

use crate::platform::mm::{self, frame};

/// The virtio HAL: DMA buffers from the frame allocator, MMIO through the direct map, and
/// identity IOVAs (physical addresses) until the virtio-iommu driver maps them.
#[derive(Debug)]
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, exclusively owned, physically contiguous frames mapped
// at the returned virtual address; `share` returns the physical address of memory the
// direct map or the kernel image maps, which is what the device sees while the IOMMU (if any)
// is in bypass.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let paddr = frame::alloc_zeroed(pages).unwrap_or_else(|e| panic!("virtio DMA buffer of {pages} pages: {e}"));
        let vaddr = NonNull::new(mm::phys_to_virt(paddr) as *mut u8).expect("direct map is never null");
        (paddr, vaddr)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        frame::free(paddr, pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let v = mm::map_mmio(paddr, size as u64).unwrap_or_else(|e| panic!("mapping virtio BAR at {paddr:#x}: {e}"));
        NonNull::new(v as *mut u8).expect("direct map is never null")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let v = buffer.as_ptr() as *mut u8 as u64;
        let pa = mm::virt_to_phys(v).unwrap_or_else(|| panic!("virtio buffer at {v:#x} is not in kernel memory"));
        // What virtio-drivers calls a physical address here is the address the device uses.
        mm::Iova::identity(mm::PhysAddr::new(pa)).get()
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// A virtio function that bound through the transport.
#[derive(Debug, Clone)]
pub struct VirtioDevice {
    /// Index into [`Bus::functions`].
    pub function: usize,
    /// Device features offered.
    pub features: u64,
    /// Whether the transport bound (capabilities found, BARs mapped).
    pub bound: Result<(), VirtioPciError>,
}

/// The enumerated bus.
#[derive(Debug, Default)]
pub struct Bus {
    /// ECAM physical base.
    pub ecam_base: u64,
    /// Functions on bus 0, BARs assigned.
    pub functions: Vec<Function>,
    /// Virtio functions and whether they bound.
    pub virtio: Vec<VirtioDevice>,
}

/// The BAR windows of QEMU's q35 machine: 32-bit above the ECAM hole up to the I/O APIC,
/// 64-bit from 512 GiB (inside 40 physical address bits).
pub fn q35_windows(ecam_end: u64) -> Windows {
    Windows {
        mem32: ecam_end.max(0xc000_0000)..0xfec0_0000,
        mem64: 0x80_0000_0000..0x100_0000_0000,
        io: 0xc000..0x1_0000,
    }
}

/// Why PCI bring-up failed.
#[derive(Debug)]
pub enum BusError {
    /// No MCFG (no ECAM): not a q35 machine.
    NoEcam,
    /// The ECAM window could not be mapped.
    Map(mm::MapError),
    /// Enumeration or BAR assignment failed.
    Pci(dpci::PciError),
}

impl core::fmt::Display for BusError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoEcam => write!(f, "no PCI ECAM in the ACPI MCFG: use QEMU's q35 machine"),
            Self::Map(e) => write!(f, "mapping the PCI ECAM window: {e}"),
            Self::Pci(e) => write!(f, "{e}"),
        }
    }
}

/// The ECAM window's virtual address, once [`init`] mapped it.
static ECAM: spin::Once<u64> = spin::Once::new();

/// A configuration-space root over the mapped ECAM window.
fn root() -> Option<PciRoot<MmioCam<'static>>> {
    Some(PciRoot::new(cam()?))
}

/// Why a virtio PCI transport could not be bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// [`init`] has not mapped the configuration space.
    NotInitialised,
    /// virtio-drivers refused function `df`.
    Bind {
        /// The function.
        df: DeviceFunction,
        /// What virtio-drivers found.
        error: VirtioPciError,
    },
}

impl core::fmt::Display for TransportError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotInitialised => write!(f, "PCI is not initialised"),
            Self::Bind { df, error } => write!(f, "binding {df}: {error}"),
        }
    }
}

/// Binds virtio-drivers' PCI transport to virtio function `df` (a driver then owns it).
pub fn transport(df: DeviceFunction) -> Result<PciTransport, TransportError> {
    let mut root = root().ok_or(TransportError::NotInitialised)?;
    bind(&mut root, df).map_err(|error| TransportError::Bind { df, error })
}

/// `PciTransport::new` with the function's address decoding off, restored afterwards.
/// virtio-drivers sizes the BAR of each of the (four or five) capabilities it reads, and turns
/// decoding off and on around every sizing when it finds it on: each turn changes the
/// machine's memory map, which costs QEMU a rebuild of every address space (one per device
/// behind the IOMMU) and a TLB flush of every vCPU (2.5 to 7 ms per function at boot under
/// TCG). Binding with decoding off makes that two changes per function. No register of the
/// function is read before it returns.
fn bind(root: &mut PciRoot<MmioCam<'static>>, df: DeviceFunction) -> Result<PciTransport, VirtioPciError> {
    use virtio_drivers::transport::pci::bus::Command;
    let (_, command) = root.get_status_command(df);
    let off = command & !(Command::IO_SPACE | Command::MEMORY_SPACE);
    if off != command {
        root.set_command(df, off);
    }
    let t = PciTransport::new::<KernelHal, _>(root, df);
    if off != command {
        root.set_command(df, command);
    }
    t
}

/// Enumerates bus 0, assigns BARs and binds virtio transports. A machine without an ECAM for
/// segment 0 (QEMU's microvm, Firecracker: no PCI) has an empty bus (`ecam_base` 0), not an
/// error.
pub fn init(ecam: &[(u64, u16, u8, u8)]) -> Result<Bus, BusError> {
    let Some(&(base, _segment, _first, last)) = ecam.iter().find(|e| e.1 == 0) else {
        log::info!("pci: no PCI (no ECAM in the ACPI MCFG): no PCI devices on this machine");
        return Ok(Bus::default());
    };
    let size = (u64::from(last) + 1) << 20;
    let virt = mm::map_mmio(base, size).map_err(BusError::Map)?;
    ECAM.call_once(|| virt);
    let mut root = root().ok_or(BusError::NoEcam)?;
    let mut functions = dpci::enumerate(&mut root, 0).map_err(BusError::Pci)?;
    dpci::assign(&mut root, &mut functions, &q35_windows(base + size)).map_err(BusError::Pci)?;

    let mut virtio = Vec::new();
    for (i, f) in functions.iter().enumerate() {
        if f.virtio.is_none() {
            continue;
        }
        let (bound, features) = match bind(&mut root, f.df) {
            Ok(mut t) => (Ok(()), t.read_device_features()),
            Err(e) => (Err(e), 0),
        };
        virtio.push(VirtioDevice { function: i, features, bound });
    }
    Ok(Bus { ecam_base: base, functions, virtio })
}

/// Why [`bar_window`] made no window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarWindowError {
    /// No function with that index on the bus.
    NoFunction(usize),
    /// The function has no BAR in that slot.
    NoBar(usize, u8),
    /// The BAR is an I/O-port BAR.
    NotMemory(usize, u8),
    /// The BAR has no address assigned.
    Unassigned(usize, u8),
    /// Mapping it for the CPU failed.
    Map(mm::MapError),
}

impl core::fmt::Display for BarWindowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoFunction(n) => write!(f, "no PCI function {n}"),
            Self::NoBar(n, b) => write!(f, "PCI function {n} has no BAR {b}"),
            Self::NotMemory(n, b) => write!(f, "BAR {b} of PCI function {n} is an I/O BAR"),
            Self::Unassigned(n, b) => write!(f, "BAR {b} of PCI function {n} has no address"),
            Self::Map(e) => write!(f, "mapping the BAR: {e}"),
        }
    }
}

/// A [`PhysWindow`](mm::PhysWindow) onto memory BAR `bar` of `bus.functions[function]`,
/// mapped uncached into the direct map: the handle through which the CPU reaches a device's
/// memory.
pub fn bar_window(bus: &Bus, function: usize, bar: u8) -> Result<mm::PhysWindow, BarWindowError> {
    let f = bus.functions.get(function).ok_or(BarWindowError::NoFunction(function))?;
    let b = f.bars.iter().find(|b| b.index == bar).ok_or(BarWindowError::NoBar(function, bar))?;
    if b.kind == dpci::BarKind::Io {
        return Err(BarWindowError::NotMemory(function, bar));
    }
    if b.address == 0 || b.size == 0 {
        return Err(BarWindowError::Unassigned(function, bar));
    }
    let uncached = mm::paging::Flags::WRITABLE | mm::paging::Flags::NO_CACHE;
    mm::map_phys(b.address, b.size, uncached).map_err(BarWindowError::Map)?;
    Ok(mm::PhysWindow::new(b.address, b.size))
}

/// The MSI-X capability's id.
const CAP_MSIX: u8 = 0x11;
/// The vendor-specific capability virtio uses for its structures.
const CAP_VENDOR: u8 = 0x09;
/// `virtio_pci_cap.cfg_type` of the common configuration.
const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// Message Control: MSI-X enable.
const MSIX_ENABLE: u16 = 1 << 15;
/// Message Control: function mask.
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Vector Control: the entry is masked.
const MSIX_ENTRY_MASKED: u32 = 1;
/// An MSI's address: the local APIC's interrupt window, fixed delivery, physical destination.
const MSI_ADDRESS: u32 = 0xfee0_0000;
/// `queue_select` and `queue_msix_vector` in `virtio_pci_common_cfg`.
const COMMON_MSIX_CONFIG: u64 = 0x10;
const COMMON_QUEUE_SELECT: u64 = 0x16;
const COMMON_QUEUE_MSIX_VECTOR: u64 = 0x1a;
/// The value of a virtio vector field that means "no vector".
const VIRTIO_NO_VECTOR: u16 = 0xffff;

/// Why a function's interrupt could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixError {
    /// [`init`] has not mapped the configuration space.
    NotInitialised,
    /// No function with that index on the bus.
    NoFunction(usize),
    /// The function has no MSI-X capability.
    NoMsix(DeviceFunction),
    /// The function's virtio capabilities name no common configuration.
    NoCommonConfig(DeviceFunction),
    /// The entry is past the function's table.
    NoEntry {
        /// The function.
        df: DeviceFunction,
        /// The entry asked for.
        entry: u16,
        /// Entries in its table.
        entries: u16,
    },
    /// The BAR holding the table or the common configuration could not be mapped.
    Bar(BarWindowError),
    /// A register access failed (outside the window, misaligned).
    Access(mm::HandleError),
    /// The device did not take the queue's vector (it read back "no vector").
    VectorRefused {
        /// The function.
        df: DeviceFunction,
        /// The queue.
        queue: u16,
    },
    /// The device did not take the configuration-change vector.
    ConfigVectorRefused(DeviceFunction),
}

impl core::fmt::Display for MsixError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotInitialised => write!(f, "PCI is not initialised"),
            Self::NoFunction(n) => write!(f, "no PCI function {n}"),
            Self::NoMsix(df) => write!(f, "{df} has no MSI-X capability"),
            Self::NoCommonConfig(df) => write!(f, "{df} has no virtio common configuration capability"),
            Self::NoEntry { df, entry, entries } => {
                write!(f, "{df}: MSI-X entry {entry} asked for, its table has {entries}")
            }
            Self::Bar(e) => write!(f, "MSI-X: {e}"),
            Self::Access(e) => write!(f, "MSI-X register: {e}"),
            Self::VectorRefused { df, queue } => {
                write!(f, "{df}: the device refused an MSI-X vector for queue {queue} (it has no free vector)")
            }
            Self::ConfigVectorRefused(df) => {
                write!(f, "{df}: the device refused an MSI-X vector for configuration changes")
            }
        }
    }
}

impl From<mm::HandleError> for MsixError {
    fn from(e: mm::HandleError) -> Self {
        Self::Access(e)
    }
}

/// The MSI-X table of one PCI function, enabled, every entry masked until [`Msix::route`]d.
#[derive(Debug)]
pub struct Msix {
    df: DeviceFunction,
    /// The BAR holding the table.
    bar: mm::PhysWindow,
    /// The table's offset in that BAR.
    table: u64,
    /// Entries in the table.
    entries: u16,
}

impl Msix {
    /// Finds `bus.functions[function]`'s MSI-X capability, maps its table, masks every entry and
    /// enables MSI-X (which also turns the function's INTx off).
    pub fn enable(bus: &Bus, function: usize) -> Result<Msix, MsixError> {
        let f = bus.functions.get(function).ok_or(MsixError::NoFunction(function))?;
        let root = root().ok_or(MsixError::NotInitialised)?;
        let cap = root.capabilities(f.df).find(|c| c.id == CAP_MSIX).ok_or(MsixError::NoMsix(f.df))?;
        let mut cam = cam().ok_or(MsixError::NotInitialised)?;
        let control = cap.private_header;
        let entries = (control & 0x7ff) + 1;
        let location = cam.read_word(f.df, cap.offset + 4);
        let bar = bar_window(bus, function, (location & 7) as u8).map_err(MsixError::Bar)?;
        let m = Msix { df: f.df, bar, table: u64::from(location & !7), entries };
        for e in 0..entries {
            m.bar.write_u32(m.table + u64::from(e) * 16 + 12, MSIX_ENTRY_MASKED)?;
        }
        let word = cam.read_word(f.df, cap.offset);
        let control = (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK;
        cam.write_word(f.df, cap.offset, (word & 0xffff) | u32::from(control) << 16);
        Ok(m)
    }

    /// Entries in the table.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    fn entry(&self, entry: u16) -> Result<u64, MsixError> {
        if entry >= self.entries {
            return Err(MsixError::NoEntry { df: self.df, entry, entries: self.entries });
        }
        Ok(self.table + u64::from(entry) * 16)
    }

    /// Points `entry` at `vector` on the CPU with local APIC id `apic` (fixed delivery, edge)
    /// and unmasks it.
    pub fn route(&self, entry: u16, vector: u8, apic: u32) -> Result<(), MsixError> {
        let at = self.entry(entry)?;
        self.bar.write_u32(at + 12, MSIX_ENTRY_MASKED)?;
        self.bar.write_u32(at, MSI_ADDRESS | (apic & 0xff) << 12)?;
        self.bar.write_u32(at + 4, 0)?;
        self.bar.write_u32(at + 8, u32::from(vector))?;
        self.bar.write_u32(at + 12, 0)?;
        Ok(())
    }

    /// Sends `entry`'s interrupts to the CPU with APIC id `apic` from now on (one register
    /// write: the device reads the entry when it signals, so a message sent after this goes
    /// there).
    pub fn retarget(&self, entry: u16, apic: u32) -> Result<(), MsixError> {
        let at = self.entry(entry)?;
        self.bar.write_u32(at, MSI_ADDRESS | (apic & 0xff) << 12)?;
        Ok(())
    }
}

/// A virtio function's common configuration, for what virtio-drivers' transport does not set:
/// the queues' MSI-X vectors.
#[derive(Debug)]
pub struct VirtioCommon {
    df: DeviceFunction,
    bar: mm::PhysWindow,
    offset: u64,
}

impl VirtioCommon {
    /// Finds `bus.functions[function]`'s common configuration structure (its
    /// `VIRTIO_PCI_CAP_COMMON_CFG` capability) and maps the BAR holding it.
    pub fn find(bus: &Bus, function: usize) -> Result<VirtioCommon, MsixError> {
        let f = bus.functions.get(function).ok_or(MsixError::NoFunction(function))?;
        let root = root().ok_or(MsixError::NotInitialised)?;
        let cam = cam().ok_or(MsixError::NotInitialised)?;
        let cap = root
            .capabilities(f.df)
            .find(|c| c.id == CAP_VENDOR && (c.private_header >> 8) as u8 == VIRTIO_PCI_CAP_COMMON_CFG)
            .ok_or(MsixError::NoCommonConfig(f.df))?;
        let bar = (cam.read_word(f.df, cap.offset + 4) & 0xff) as u8;
        let offset = u64::from(cam.read_word(f.df, cap.offset + 8));
        let bar = bar_window(bus, function, bar).map_err(MsixError::Bar)?;
        Ok(VirtioCommon { df: f.df, bar, offset })
    }

    /// Signals queue `queue`'s used buffers through MSI-X entry `entry` (or through none, with
    /// `None`). Set after the device's reset and before DRIVER_OK (a reset forgets it).
    pub fn set_queue_vector(&self, queue: u16, entry: Option<u16>) -> Result<(), MsixError> {
        let v = entry.unwrap_or(VIRTIO_NO_VECTOR);
        self.bar.write_u16(self.offset + COMMON_QUEUE_SELECT, queue)?;
        self.bar.write_u16(self.offset + COMMON_QUEUE_MSIX_VECTOR, v)?;
        if self.bar.read_u16(self.offset + COMMON_QUEUE_MSIX_VECTOR)? != v {
            return Err(MsixError::VectorRefused { df: self.df, queue });
        }
        Ok(())
    }

    /// Signals configuration changes through MSI-X entry `entry` (or through none). The
    /// device takes it at any time; a reset forgets it.
    pub fn set_config_vector(&self, entry: Option<u16>) -> Result<(), MsixError> {
        let v = entry.unwrap_or(VIRTIO_NO_VECTOR);
        self.bar.write_u16(self.offset + COMMON_MSIX_CONFIG, v)?;
        if self.bar.read_u16(self.offset + COMMON_MSIX_CONFIG)? != v {
            return Err(MsixError::ConfigVectorRefused(self.df));
        }
        Ok(())
    }
}

/// Raw configuration-space access over the mapped ECAM window.
fn cam() -> Option<MmioCam<'static>> {
    let virt = *ECAM.get()?;
    // SAFETY: `virt` maps the whole ECAM region of segment 0 uncached for the kernel's
    // lifetime (mapped once by `init`); configuration accesses are independent MMIO reads and
    // writes, and only the drivers binding a function touch its registers.
    Some(unsafe { MmioCam::new(virt as *mut u8, Cam::Ecam) })
}
