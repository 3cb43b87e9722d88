//! Typed addresses: [`PhysAddr`] (x86_64's) for CPU physical addresses, [`Iova`] for what a
//! device's DMA uses. They do not convert into each other implicitly: turning a physical
//! address into an IOVA is a mapping decision (identity without an IOMMU, a domain's offset
//! with one), made by whoever owns the device's domain.

use super::PhysAddr;

/// An I/O virtual address: where a device's DMA reaches memory (through its IOMMU domain, or
/// the physical address itself without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(u64);

impl Iova {
    /// The IOVA `v`.
    pub const fn new(v: u64) -> Iova {
        Iova(v)
    }

    /// Its value, for the device's registers and descriptors.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The IOVA equal to `pa`: a device without an IOMMU (or an identity domain).
    pub const fn identity(pa: PhysAddr) -> Iova {
        Iova(pa.as_u64())
    }

    /// `self + bytes`.
    pub const fn offset(self, bytes: u64) -> Iova {
        Iova(self.0 + bytes)
    }
}
