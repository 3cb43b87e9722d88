//! Platform discovery from ACPI: the table list, CPUs (MADT), PCI ECAM (MCFG), the PM timer
//! (FADT) through the `acpi` crate, and SRAT, HMAT and VIOT through `drivers::acpi`'s raw
//! parsers (the `acpi` 5.2 crate has no types for them).

extern crate alloc;

use acpi::{
    AcpiHandler, AcpiTables, PhysicalMapping,
    fadt::Fadt,
    madt::{Madt, MadtEntry},
    mcfg::Mcfg,
};
use alloc::vec::Vec;
use core::ptr::NonNull;
use drivers::acpi::{self as raw, AcpiError, PhysMem, TableRef, hmat::Hmat, srat::Srat, viot::Viot};

use crate::platform::mm::{self, paging::Flags};

/// Maps ACPI tables through the direct map.
#[derive(Debug, Clone, Copy)]
struct Handler;

impl AcpiHandler for Handler {
    unsafe fn map_physical_region<T>(&self, paddr: usize, size: usize) -> PhysicalMapping<Self, T> {
        let _ = mm::map_phys_untracked(paddr as u64, size as u64, Flags::empty());
        let virt = mm::phys_to_virt(paddr as u64) as *mut T;
        // SAFETY: the region is mapped (read-only is enough for the crate) for the kernel's
        // lifetime, and the caller guarantees a `T` lies there.
        unsafe { PhysicalMapping::new(paddr, NonNull::new(virt).expect("direct map is never null"), size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

struct Mem;

impl PhysMem for Mem {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), AcpiError> {
        mm::map_phys_untracked(paddr, buf.len() as u64, Flags::empty()).map_err(|_| AcpiError::Unreadable(paddr))?;
        let src = mm::phys_to_virt(paddr) as *const u8;
        // SAFETY: just mapped; firmware tables are plain memory that nothing writes.
        unsafe { core::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// A CPU from the MADT.
#[derive(Debug, Clone, Copy)]
pub struct Cpu {
    /// (x2)APIC id.
    pub apic_id: u32,
    /// ACPI processor uid.
    pub uid: u32,
    /// Enabled now (otherwise only online-capable).
    pub enabled: bool,
}

/// What ACPI says about the platform.
#[derive(Debug, Default)]
pub struct Platform {
    /// Every table in the RSDT/XSDT.
    pub tables: Vec<TableRef>,
    /// CPUs.
    pub cpus: Vec<Cpu>,
    /// I/O APICs: (id, address).
    pub io_apics: Vec<(u8, u32)>,
    /// ECAM regions: (base, segment, first bus, last bus).
    pub ecam: Vec<(u64, u16, u8, u8)>,
    /// PM timer: (I/O port, 32-bit counter).
    pub pm_timer: Option<(u16, bool)>,
    /// The HPET table's event-timer block, if present.
    pub hpet: Option<raw::hpet::Hpet>,
    /// SRAT, if present.
    pub srat: Option<Srat>,
    /// HMAT, if present.
    pub hmat: Option<Hmat>,
    /// VIOT, if present.
    pub viot: Option<Viot>,
    /// virtio-mmio transports the DSDT declares (`_HID` `"LNRO0005"`): base, length, interrupt.
    pub virtio_mmio: Vec<(u64, u64, Option<u32>)>,
}

/// Why ACPI discovery failed.
#[derive(Debug)]
pub enum PlatformError {
    /// No RSDP was passed by the hypervisor.
    NoRsdp,
    /// The table walk failed.
    Tables(AcpiError),
    /// The `acpi` crate refused the tables.
    Crate(acpi::AcpiError),
}

impl core::fmt::Display for PlatformError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "the hypervisor passed no ACPI RSDP (start_info.rsdp_paddr is 0)"),
            Self::Tables(e) => write!(f, "{e}"),
            Self::Crate(e) => write!(f, "ACPI tables rejected: {e:?}"),
        }
    }
}

fn find(tables: &[TableRef], sig: &[u8; 4]) -> Option<TableRef> {
    tables.iter().find(|t| &t.signature == sig).copied()
}

/// Reads the platform description.
pub fn discover(rsdp: Option<u64>) -> Result<Platform, PlatformError> {
    let rsdp = rsdp.ok_or(PlatformError::NoRsdp)?;
    let mut p = Platform { tables: raw::list_tables(&Mem, rsdp).map_err(PlatformError::Tables)?, ..Default::default() };

    // SAFETY: `rsdp` is the address the hypervisor gave, and its signature and checksum were
    // just verified by `list_tables`.
    let tables = unsafe { AcpiTables::from_rsdp(Handler, rsdp as usize) }.map_err(PlatformError::Crate)?;

    if let Ok(madt) = tables.find_table::<Madt>() {
        for e in madt.get().entries() {
            match e {
                MadtEntry::LocalApic(l) => {
                    let flags = l.flags;
                    if flags & 0b11 != 0 {
                        p.cpus.push(Cpu {
                            apic_id: u32::from(l.apic_id),
                            uid: u32::from(l.processor_id),
                            enabled: flags & 1 != 0,
                        });
                    }
                }
                MadtEntry::LocalX2Apic(l) => {
                    let (flags, id, uid) = (l.flags, l.x2apic_id, l.processor_uid);
                    if flags & 0b11 != 0 {
                        p.cpus.push(Cpu { apic_id: id, uid, enabled: flags & 1 != 0 });
                    }
                }
                MadtEntry::IoApic(io) => p.io_apics.push((io.io_apic_id, io.io_apic_address)),
                _ => {}
            }
        }
    }
    if let Ok(mcfg) = tables.find_table::<Mcfg>() {
        for e in mcfg.entries() {
            p.ecam.push((e.base_address, e.pci_segment_group, e.bus_number_start, e.bus_number_end));
        }
    }
    if let Ok(fadt) = tables.find_table::<Fadt>() {
        if let Ok(Some(block)) = fadt.pm_timer_block() {
            let flags = fadt.flags;
            p.pm_timer = Some((block.address as u16, flags.pm_timer_is_32_bit()));
        }
        // The devices the DSDT declares statically; a DSDT it cannot read costs only them.
        match fadt.dsdt_address().map(|a| raw::read_table(&Mem, a as u64)) {
            Ok(Ok(dsdt)) => {
                let (devices, err) = raw::dsdt::devices(&dsdt);
                if let Some(e) = err {
                    log::warn!("acpi: {e}");
                }
                p.virtio_mmio = raw::dsdt::virtio_mmio(&devices);
            }
            Ok(Err(e)) => log::warn!("acpi: the DSDT: {e}"),
            Err(_) => {}
        }
    }
    let parse = |sig: &[u8; 4]| find(&p.tables, sig).map(|t| raw::read_table(&Mem, t.paddr));
    // A bad HPET table costs only the HPET as a clock source.
    match parse(b"HPET").map(|t| t.and_then(|t| raw::hpet::parse(&t))) {
        Some(Ok(h)) => {
            if h.base.is_none() {
                log::warn!("acpi: the HPET's registers are in address space {}, not memory: not used", h.address_space);
            }
            p.hpet = Some(h);
        }
        Some(Err(e)) => log::warn!("acpi: the HPET table: {e}"),
        None => {}
    }
    if let Some(t) = parse(b"SRAT") {
        p.srat = Some(raw::srat::parse(&t.map_err(PlatformError::Tables)?).map_err(PlatformError::Tables)?);
    }
    if let Some(t) = parse(b"HMAT") {
        p.hmat = Some(raw::hmat::parse(&t.map_err(PlatformError::Tables)?).map_err(PlatformError::Tables)?);
    }
    if let Some(t) = parse(b"VIOT") {
        p.viot = Some(raw::viot::parse(&t.map_err(PlatformError::Tables)?).map_err(PlatformError::Tables)?);
    }
    Ok(p)
}
