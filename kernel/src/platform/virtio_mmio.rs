//! virtio-mmio transports named on the kernel command line (`virtio_mmio.device=`, as
//! Firecracker and QEMU's microvm without ACPI pass their devices) or declared in the DSDT
//! (`_HID` `"LNRO0005"`, as QEMU's microvm with ACPI declares them; `drivers::acpi::dsdt`):
//! each register window is mapped uncached and its identification registers are read (magic,
//! version, device id, vendor), so the boot report says which transports exist, where they
//! were found and what sits behind them. No driver binds to them yet.

use boot::cmdline::VirtioMmio;

use crate::platform::mm;

/// "virt", little-endian: the magic value at offset 0.
const MAGIC: u32 = 0x7472_6976;

/// What a transport's identification registers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// 1 (legacy) or 2.
    pub version: u32,
    /// The virtio device id (0: no device behind the transport).
    pub device_id: u32,
    /// The vendor id.
    pub vendor: u32,
}

/// Why a transport could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// The window is smaller than the identification registers.
    TooSmall(u64),
    /// Mapping the window failed.
    Map(mm::MapError),
    /// Offset 0 does not hold the virtio magic.
    BadMagic(u32),
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooSmall(n) => write!(f, "a {n}-byte window is too small for virtio-mmio registers"),
            Self::Map(e) => write!(f, "mapping the window: {e}"),
            Self::BadMagic(m) => write!(f, "no virtio-mmio transport there (magic {m:#010x}, not \"virt\")"),
        }
    }
}

/// Where a transport was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `virtio_mmio.device=` on the kernel command line.
    CommandLine,
    /// A DSDT device.
    Acpi,
}

impl Source {
    /// Its name in the boot report.
    pub fn name(self) -> &'static str {
        match self {
            Self::CommandLine => "cmdline",
            Self::Acpi => "acpi",
        }
    }
}

/// A transport and what probing it found.
#[derive(Debug, Clone, Copy)]
pub struct Probed {
    /// Its window and interrupt (0 when ACPI names none).
    pub at: VirtioMmio,
    /// Where it was found.
    pub from: Source,
    /// Its identification registers, or why they could not be read.
    pub found: Result<Ids, ProbeError>,
}

/// Reads transport `t`'s identification registers.
pub fn probe(t: &VirtioMmio) -> Result<Ids, ProbeError> {
    if t.size < 0x10 {
        return Err(ProbeError::TooSmall(t.size));
    }
    let virt = mm::map_mmio(t.base, t.size).map_err(ProbeError::Map)?;
    // SAFETY: `virt` maps [base, base + size) uncached (just mapped), size covers the four
    // 32-bit identification registers at offsets 0, 4, 8 and 12, which are read-only and have
    // no side effects on a virtio-mmio transport (and plain reads of unclaimed MMIO return
    // all ones, which the magic check rejects).
    let read = |off: u64| unsafe { core::ptr::read_volatile((virt + off) as *const u32) };
    let magic = read(0);
    if magic != MAGIC {
        return Err(ProbeError::BadMagic(magic));
    }
    Ok(Ids { version: read(4), device_id: read(8), vendor: read(12) })
}

/// Probes every transport the command line names, then those the DSDT declares (`acpi`:
/// base, length, interrupt) at a base the command line does not name.
pub fn discover(cmdline: &[VirtioMmio], acpi: &[(u64, u64, Option<u32>)]) -> alloc::vec::Vec<Probed> {
    let declared = acpi
        .iter()
        .filter(|(base, ..)| !cmdline.iter().any(|c| c.base == *base))
        .map(|&(base, size, irq)| (VirtioMmio { size, base, irq: irq.unwrap_or(0), id: None }, Source::Acpi));
    cmdline
        .iter()
        .map(|t| (*t, Source::CommandLine))
        .chain(declared)
        .map(|(at, from)| Probed { at, from, found: probe(&at) })
        .collect()
}
