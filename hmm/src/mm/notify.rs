//! The one invalidation path: every change to a page table of an address space is bracketed by
//! `invalidate_start` / `invalidate_end` with an event kind, Linux's `mmu_notifier_range`.
//!
//! The address-space code calls [`Notifier::invalidate_start`] before it edits any leaf in the
//! range and [`Notifier::invalidate_end`] after the edit and its TLB flush. The interval
//! notifiers of the HMM layer implement [`Notifier`]; nothing else in the address-space code
//! knows about mirrors.

/// Why a range is being invalidated (`MMU_NOTIFY_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// munmap, mremap move: the range goes away.
    Unmap,
    /// Pages are zapped but the mapping stays (madvise, page replacement, COW break).
    Clear,
    /// mprotect of a VMA range.
    ProtectionVma,
    /// Per-page write protection (copy-on-write at fork).
    ProtectionPage,
    /// Soft-dirty tracking reset.
    SoftDirty,
    /// The address space is being torn down; sent once as `[0, u64::MAX)`.
    Release,
    /// Pages are being migrated; `owner` names the pagemap owner driving it.
    Migrate,
    /// A device takes exclusive access; `owner` names it.
    Exclusive,
}

/// An opaque owner cookie (a device or pagemap identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner(pub u64);

/// One invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The address space.
    pub space: u32,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Why.
    pub event: Event,
    /// Who drives it (migration, exclusive access), if anyone.
    pub owner: Option<Owner>,
    /// Callbacks may sleep (always true for the operations here; OOM-style paths are not).
    pub blockable: bool,
}

/// Observer of page-table changes in an address space.
pub trait Notifier: Send + Sync {
    /// Called before any entry in `range` changes. Returns `false` only when the range is not
    /// blockable and the callback could not take its lock.
    fn invalidate_start(&self, range: &Range) -> bool;
    /// Called after the change and its TLB flush.
    fn invalidate_end(&self, range: &Range);
    /// The notifier as `Any`, so the layer that installed it can find its own type again.
    fn as_any(&self) -> &dyn core::any::Any;
}
