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
            bus::{Cam, DeviceFunction, MmioCam, PciRoot},
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
    let virt = *ECAM.get()?;
    // SAFETY: `virt` maps the whole ECAM region of segment 0 uncached for the kernel's
    // lifetime (mapped once by `init`); configuration accesses are independent MMIO reads and
    // writes, and only the drivers binding a function touch its registers.
    Some(PciRoot::new(unsafe { MmioCam::new(virt as *mut u8, Cam::Ecam) }))
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
    PciTransport::new::<KernelHal, _>(&mut root, df).map_err(|error| TransportError::Bind { df, error })
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
        let (bound, features) = match PciTransport::new::<KernelHal, _>(&mut root, f.df) {
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
