//! The device MMUs of the real devices: each device's virtio-iommu domain mirrors the
//! address spaces bound to it, each in its own window of the domain's user half, IOVA =
//! process virtual address + the window's base (see [`devices`](crate::devices)). The protocol is [`hmm::devmmu::Mirror`]'s; this module is
//! its hardware side ([`DeviceDomain`]: MAP/UNMAP through the virtio-iommu, with the domain's
//! shadow kept in step, and DMA settled through the device's copy engine) and the binding of
//! address spaces to devices.
//!
//! Invariants: at most [`devices::SPACES`] live mirrors per device, one per address space,
//! each in the slot the device object keeps for it ([`Device::bind_mirror`]); a further bind
//! fails with [`DevError::Busy`] until one is unbound or its address space exits, and a
//! second bind of one space with [`DevError::AlreadyBound`]. A mirror's domain operations and
//! DMA address only its own window ([`DeviceDomain::base`]): what one space maps, unmaps or
//! transfers can never touch another's.

use crate::copyengine::Dir;
use crate::devices::Ticket;
use crate::devices::{self, DevError, Device};
use crate::mm::Iova;
use crate::vram;
use alloc::sync::Arc;
use alloc::vec::Vec;
use drivers::viommu::{MAP_READ, MAP_WRITE, Mapping};
use hmm::devmmu::{Domain, DomainError, DomainOp, IoMap, Mirror};
use hmm::mm::SharedSpace;

/// A device's domain, one window of it, as the hardware side of a mirror.
#[derive(Debug)]
pub struct DeviceDomain {
    /// The device.
    pub dev: &'static Device,
    /// Where the mirror's window starts: IOVA = virtual address + `base`.
    pub base: u64,
}

/// A device's mirror of an address space.
pub type DevMirror = Mirror<DeviceDomain>;

impl devices::Bound for DevMirror {
    fn is_live(&self) -> bool {
        Mirror::is_live(self)
    }
    fn mirrors(&self, space: &Arc<SharedSpace>) -> bool {
        Mirror::mirrors(self, space)
    }
}

/// What a device error means to the mirror (the full error is logged here, since the typed
/// value keeps only its kind).
pub fn domain_error(op: DomainOp, e: &DevError) -> DomainError {
    use crate::copyengine::CopyError;
    use drivers::viommu::IommuError;
    use hmm::devmmu::DomainFailure;
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
        DevError::Busy(_) => DomainFailure::Unusable("the device mirrors as many address spaces as it can"),
        DevError::AlreadyBound(_) => DomainFailure::Unusable("the device mirrors this address space already"),
        DevError::Transport(_)
        | DevError::Group(_)
        | DevError::NoBar2(_)
        | DevError::MapForCpu { .. }
        | DevError::Access { .. }
        | DevError::Handle(_)
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
                iova: m.iova + self.base,
                len: m.len,
                phys: m.phys,
                flags: MAP_READ | if m.write { MAP_WRITE } else { 0 },
            })
            .collect();
        self.dev.map(&maps).map_err(|e| domain_error(DomainOp::Map, &e))
    }

    fn unmap(&mut self, start: u64, end: u64) -> Result<(), DomainError> {
        self.dev.unmap(start + self.base, end - start).map_err(|e| domain_error(DomainOp::Unmap, &e))
    }

    fn settle(&mut self, t: Ticket) -> Result<(), DomainError> {
        self.dev.settle(t).map_err(|e| domain_error(DomainOp::Settle, &e))
    }
}

/// Binds `space` to device `n`'s MMU: from now on a window of the device's domain mirrors it
/// (the other spaces bound to the device keep theirs).
pub fn bind(n: usize, space: &Arc<SharedSpace>) -> Result<Arc<DevMirror>, DevError> {
    let dev = devices::nth(n)?;
    if dev.mmu().is_none() {
        return Err(DevError::NoMmu(n));
    }
    let v = vram::all().map_err(DevError::Memory)?;
    let owner = v.get(n).ok_or(DevError::NoDevice(n))?.owner();
    let pagemaps = vram::pagemaps().map_err(DevError::Memory)?.clone();
    dev.bind_mirror(space, |slot| {
        Mirror::bind(space, owner, Some(pagemaps), DeviceDomain { dev, base: devices::window(slot) })
            .map_err(|error| DevError::Notifier { device: n, error })
    })
}

/// DMA by process virtual address through `m`'s device: `segs` are `(va, len)` of the bound
/// address space, copied to (`Dir::ToDevice`) or from device memory at `offset`. Refused
/// unless the mirror maps every page with the access the device needs.
pub fn dma(m: &DevMirror, dir: Dir, offset: crate::devices::DevOffset, segs: &[(u64, u32)]) -> Result<(), DevError> {
    // The domain maps the address space in its window: IOVA = VA + the window's base.
    let base = m.with_domain(|d| d.base);
    let iovas: Vec<(Iova, u32)> = segs.iter().map(|&(va, l)| (Iova::new(va + base), l)).collect();
    let req = m.dma(segs, dir == Dir::ToRam, |dom| {
        dom.dev.submit(dir, offset, &iovas).map_err(|e| domain_error(DomainOp::Dma, &e))
    })?;
    m.complete(req, |dom, t| dom.dev.wait(t))
}
