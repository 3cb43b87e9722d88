//! The device MMUs of the real devices: each device's virtio-iommu domain mirrors the
//! address space bound to it, IOVA = process virtual address (the user half of the domain,
//! see [`devices`](crate::devices)). The protocol is [`hmm::devmmu::Mirror`]'s; this module is
//! its hardware side ([`DeviceDomain`]: MAP/UNMAP through the virtio-iommu, with the domain's
//! shadow kept in step, and DMA settled through the device's copy engine) and the binding of
//! address spaces to devices.
//!
//! Invariant: at most one live mirror per device (one domain, and IOVA = VA leaves room for
//! one address space); binding a second fails with [`DevError::Busy`] until the first is
//! unbound or its address space exits.

use crate::copyengine::Dir;
use crate::devices::Ticket;
use crate::devices::{self, DevError};
use crate::vram;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use drivers::viommu::{MAP_READ, MAP_WRITE, Mapping};
use hmm::devmmu::{Domain, DomainError, DomainFailure, DomainOp, IoMap, Mirror};
use hmm::mm::SharedSpace;
use spin::Mutex;

/// Device `n`'s domain as the hardware side of a mirror.
#[derive(Debug)]
pub struct DeviceDomain {
    /// The device.
    pub n: usize,
}

/// A device's mirror of an address space.
pub type DevMirror = Mirror<DeviceDomain>;

fn on_devices<R>(op: DomainOp, f: impl FnOnce(&mut devices::Devices) -> Result<R, DevError>) -> Result<R, DomainError> {
    match devices::with(f) {
        Some(r) => r.map_err(|e| domain_error(op, &e)),
        None => Err(DomainError { op, failure: DomainFailure::NoDevice }),
    }
}

/// What a device error means to the mirror (the full error is logged here, since the typed
/// value keeps only its kind).
pub fn domain_error(op: DomainOp, e: &DevError) -> DomainError {
    use crate::copyengine::CopyError;
    use drivers::viommu::IommuError;
    log::warn!("device MMU: {e}");
    let failure = match e {
        DevError::NoDevice(_) => DomainFailure::NoDevice,
        DevError::Iommu(IommuError::Status { status, .. }) => DomainFailure::Refused { status: *status },
        DevError::Iommu(IommuError::Timeout(_)) => DomainFailure::TimedOut,
        DevError::Iommu(IommuError::Misaligned { .. }) => {
            DomainFailure::Invalid("a mapping not aligned to the IOMMU's pages")
        }
        DevError::Iommu(IommuError::OutOfRange { .. }) => {
            DomainFailure::Invalid("a mapping outside the IOMMU's input range")
        }
        DevError::Iommu(IommuError::Overlap { .. }) => DomainFailure::Invalid("a mapping over one the domain has"),
        DevError::Iommu(IommuError::Device(why)) => DomainFailure::Unusable(why),
        DevError::Copy(CopyError::Status(s)) => DomainFailure::Refused { status: *s },
        DevError::Copy(CopyError::TimedOut { .. } | CopyError::Abandoned) => DomainFailure::TimedOut,
        DevError::Copy(CopyError::Queue(_)) => DomainFailure::Unusable("the copy engine's queue failed"),
        DevError::Copy(_) => DomainFailure::Invalid("a malformed copy request"),
        DevError::NotMapped { .. } => DomainFailure::Invalid("a DMA segment the domain does not map"),
        DevError::Mirror(_) => DomainFailure::Invalid("the device's mirror refused"),
        DevError::Busy(_) => DomainFailure::Unusable("the device mirrors another address space"),
        DevError::Transport(_)
        | DevError::Group(_)
        | DevError::NoBar2(_)
        | DevError::MapForCpu { .. }
        | DevError::Hotplug { .. }
        | DevError::HotEngineBypassesIommu { .. }
        | DevError::EngineTooSmall { .. }
        | DevError::NoMmu(_)
        | DevError::NotInitialised
        | DevError::Memory(_)
        | DevError::Notifier { .. } => DomainFailure::Unusable("the device could not be bound"),
        DevError::MigrateSetup(_) | DevError::SameDevice(_) | DevError::ReadCopy { .. } | DevError::Resize { .. } => {
            DomainFailure::Unusable("a device-memory operation failed")
        }
    };
    DomainError { op, failure }
}

impl Domain for DeviceDomain {
    type Ticket = Ticket;

    fn map(&mut self, maps: &[IoMap]) -> Result<(), DomainError> {
        let maps: Vec<Mapping> = maps
            .iter()
            .map(|m| Mapping {
                iova: m.iova,
                len: m.len,
                phys: m.phys,
                flags: MAP_READ | if m.write { MAP_WRITE } else { 0 },
            })
            .collect();
        on_devices(DomainOp::Map, |d| d.map(self.n, &maps))
    }

    fn unmap(&mut self, start: u64, end: u64) -> Result<(), DomainError> {
        on_devices(DomainOp::Unmap, |d| d.unmap(self.n, start, end - start))
    }

    fn settle(&mut self, t: Ticket) -> Result<(), DomainError> {
        on_devices(DomainOp::Settle, |d| d.settle(self.n, t))
    }
}

static BOUND: Mutex<Vec<Weak<DevMirror>>> = Mutex::new(Vec::new());

/// Binds `space` to device `n`'s MMU: from now on the device's domain mirrors it.
pub fn bind(n: usize, space: &Arc<SharedSpace>) -> Result<Arc<DevMirror>, DevError> {
    let has_mmu = devices::with(|d| d.list.get(n).map(|dev| dev.mmu.is_some())).flatten();
    match has_mmu {
        None => return Err(DevError::NoDevice(n)),
        Some(false) => return Err(DevError::NoMmu(n)),
        Some(true) => {}
    }
    let v = vram::all().map_err(DevError::Memory)?;
    let owner = v.get(n).ok_or(DevError::NoDevice(n))?.owner();
    let pagemaps = vram::pagemaps().map_err(DevError::Memory)?.clone();
    let mut bound = BOUND.lock();
    if bound.len() <= n {
        bound.resize(n + 1, Weak::new());
    }
    if bound[n].upgrade().is_some_and(|m| m.is_live()) {
        return Err(DevError::Busy(n));
    }
    let m = Mirror::bind(space, owner, Some(pagemaps), DeviceDomain { n })
        .map_err(|error| DevError::Notifier { device: n, error })?;
    bound[n] = Arc::downgrade(&m);
    Ok(m)
}

/// DMA by process virtual address through `m`'s device: `segs` are `(va, len)` of the bound
/// address space, copied to (`Dir::ToDevice`) or from device memory at `offset`. Refused
/// unless the mirror maps every page with the access the device needs.
pub fn dma(m: &DevMirror, dir: Dir, offset: u64, segs: &[(u64, u32)]) -> Result<(), DevError> {
    let req =
        m.dma(segs, dir == Dir::ToRam, |dom| on_devices(DomainOp::Dma, |d| d.submit(dom.n, dir, offset, segs)))?;
    m.complete(req, |dom, t| devices::with(|d| d.wait(dom.n, t)).unwrap_or(Err(DevError::NoDevice(dom.n))))
}
