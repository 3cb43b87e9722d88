//! Typed page and frame numbers shared by the kernel and the HMM core.

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// The huge page size (2 MiB).
pub const HUGE_PAGE_SIZE: u64 = 1 << 21;

/// A physical frame number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Pfn(pub u64);

/// A virtual page number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Vpn(pub u64);

impl Pfn {
    /// The frame containing physical address `paddr`.
    pub const fn containing(paddr: u64) -> Self {
        Self(paddr >> PAGE_SHIFT)
    }
    /// The frame's first physical address.
    pub const fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl Vpn {
    /// The page containing virtual address `vaddr`.
    pub const fn containing(vaddr: u64) -> Self {
        Self(vaddr >> PAGE_SHIFT)
    }
    /// The page's first virtual address.
    pub const fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_numbers_round_trip() {
        assert_eq!(Pfn::containing(0x1234_5678).addr(), 0x1234_5000);
        assert_eq!(Vpn::containing(0x7fff_ffff_f123).addr(), 0x7fff_ffff_f000);
    }

    #[test]
    fn alignment() {
        assert_eq!(align_up(0x1001, PAGE_SIZE), Some(0x2000));
        assert_eq!(align_up(0x2000, PAGE_SIZE), Some(0x2000));
        assert_eq!(align_up(u64::MAX, PAGE_SIZE), None);
        assert_eq!(align_down(0x3_ffff, HUGE_PAGE_SIZE), 0);
    }
}
