//! Address spaces: VMAs over page tables, the page-fault handler, and the mapping operations
//! (`mmap`, `munmap`, `mprotect`, `mremap`, `madvise`, fork with copy-on-write).
//!
//! Owns one root page table (the user half below it), the VMA tree, the TLB batch of the
//! operation in progress, and the optional [`Notifier`] that the HMM layer attaches.
//!
//! The code is split by concern, each part a private submodule with its own `impl AddressSpace`
//! block (the types they define are re-exported here):
//!
//! - `mod.rs` (here): the [`AddressSpace`] itself: creation, lookups, the invalidation bracket
//!   (`begin` / `finish`), teardown of leaves and tables, what a leaf holds (`held_frame`,
//!   `release_leaf`), and the wait for a page under migration ([`with_migration_wait`]);
//! - `fault.rs`: the page-fault handler (demand paging, zero pages, copy-on-write, THP and
//!   hugetlb faults, device-private and device-exclusive entries) and access from outside
//!   ([`AddressSpace::read`], [`AddressSpace::write`]);
//! - `ops.rs`: `mmap` (and populate), `munmap`, `mprotect`, `madvise`;
//! - `remap.rs`: `mremap`, resizing and moving mappings with their pages;
//! - `fork.rs`: fork, copying the page tables for copy-on-write;
//! - `huge.rs`: splitting 2 MiB mappings (and the transparent huge pages behind them).
//!
//! Lock order: every method runs with the address space locked (its [`SharedSpace`] mutex,
//! Linux's mmap lock, or `&mut` ownership before it is shared); notifier callbacks run under
//! it ([`Notifier::invalidate_start`] / [`Notifier::invalidate_end`]), and so do the frame
//! table's reverse-map locks. A fault that meets a migration entry returns
//! [`FaultError::Migrating`] and the wait happens with the lock dropped
//! ([`with_migration_wait`]), since the migration may need the lock to finish.
//!
//! Invariants:
//! - Every leaf change happens between [`Notifier::invalidate_start`] and
//!   [`Notifier::invalidate_end`] of a range that covers it, and the TLB is flushed before the
//!   end callback (one flush per operation, batched in [`TlbFlush`]).
//! - Every present leaf, and every software leaf except a migration entry, holds one page
//!   reference and one reverse-map entry on its frame (zero pages: neither). A migration entry
//!   holds no reference: the migration owns the page while it exists. Those `migrate_vma_setup`
//!   made hold nothing either (that migration holds the address space until it puts the pages
//!   back, so nothing moves them). Those an eviction (`migrate_device_range`, which holds no
//!   address-space lock in between) made, and every copy fork makes of a migration entry, hold
//!   a reverse-map entry, which `mremap` moves, `munmap` drops and fork copies with the entry,
//!   so that the migration finds each one wherever it is and puts the new page there.
//! - A transparent huge page is mapped by at most one PMD (fork splits it first), or, once its
//!   mapping was split while the page had references beyond it (a pin), by PTEs of its
//!   subpages, each holding its reference and reverse-map entry on the head (the page stays
//!   whole: it is neither migrated nor made device-exclusive then); an explicit (hugetlb) huge
//!   page is only ever mapped by PMDs, and its VMAs change only at 2 MiB bounds.
//! - A read fault on private anonymous memory maps the zero page; the first write replaces it.
//! - Write permission on a private page means the page is exclusively this mapping's; the
//!   write fault on a read-only private page is the copy-on-write break (or the reuse of a page
//!   that became exclusive).
//!
//! The address space must not be installed on any CPU when it is dropped (the kernel switches
//! away first); dropping tears down every mapping and frees every frame and table.

use super::frame::{RmapEntry, flags};
use super::notify::{Event, Notifier, Owner, Range};
use super::pagetable::{PMD_SIZE, PteLookup, Tables, USER_END};
use super::platform::TlbFlush;
use super::pte::{Pte, SoftKind};
use super::vma::VmaTree;
use super::{Error, HUGE_FRAMES, Mm, SharedSpace};
use crate::addr::{Pfn, align_up};
use alloc::sync::Arc;
use alloc::vec::Vec;

mod fault;
mod fork;
mod huge;
mod ops;
mod remap;

pub use fault::{Access, FaultError};
pub use ops::{Advice, MapRequest, Placement};
pub use remap::RemapFlags;

/// The lowest address `mmap` hands out (Linux's `mmap_min_addr`).
pub const MMAP_FLOOR: u64 = 0x1_0000;
/// Placement searches downward from here.
pub const MMAP_TOP: u64 = 0x7f00_0000_0000;

pub(super) const PAGE: u64 = 4096;

/// A leaf as seen by a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The decoded entry.
    pub pte: Pte,
    /// Found at PMD level (maps 2 MiB).
    pub huge: bool,
}

/// Per-address-space counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceStats {
    /// Faults handled (resolved or not).
    pub faults: u64,
    /// Faults that found the entry already good (stale TLB, racing fault).
    pub spurious: u64,
    /// Read faults served by the zero page.
    pub zero_maps: u64,
    /// Read faults served by the huge zero page.
    pub huge_zero_maps: u64,
    /// Faults that allocated a 2 MiB page.
    pub huge_faults: u64,
    /// Faults on file mappings.
    pub file_faults: u64,
    /// Copy-on-write breaks that copied.
    pub cow_copies: u64,
}

/// One address space.
pub struct AddressSpace {
    pub(super) mm: Arc<Mm>,
    pub(super) id: u32,
    pub(super) root: Pfn,
    pub(super) vmas: VmaTree,
    notifier: Option<Arc<dyn Notifier>>,
    pub(super) tlb: TlbFlush,
    dead_tables: Vec<Pfn>,
    /// A fault returned [`FaultError::Migrating`] since [`take_migration_wait`](Self::take_migration_wait).
    migration_met: bool,
    /// The window a placement policy chose for CPU faults on device pages
    /// ([`set_fault_window`](Self::set_fault_window)).
    fault_window: Option<(u64, u64)>,
    /// Counters.
    pub stats: SpaceStats,
}

/// Runs `f` on the locked space; while it fails with [`FaultError::Migrating`] (a page it
/// needs is under migration), drops the lock, waits with the platform's
/// [`migration_wait`](super::Platform::migration_wait) and runs it again: Linux's
/// `migration_entry_wait` and refault. The migration needs the lock to finish (an eviction
/// takes each address space's lock to put the new page in), so the wait cannot happen under
/// it. Bounded: `Err(MigrationTimeout)` once the platform says the wait lasted long enough.
/// `f` must be safe to run again from the start (faults and copies are).
pub fn with_migration_wait<R>(
    space: &SharedSpace,
    mut f: impl FnMut(&mut AddressSpace) -> Result<R, FaultError>,
) -> Result<R, FaultError> {
    let mut round = 0;
    loop {
        let mut s = space.lock();
        let r = f(&mut s);
        if !matches!(r, Err(FaultError::Migrating)) {
            return r;
        }
        let mm = s.mm.clone();
        drop(s);
        round += 1;
        if !mm.platform().migration_wait(round) {
            return Err(FaultError::MigrationTimeout);
        }
    }
}

/// [`AddressSpace::fault`] on a shared space, waiting for pages under migration
/// ([`with_migration_wait`]).
pub fn fault_shared(space: &SharedSpace, va: u64, access: Access) -> Result<(), FaultError> {
    with_migration_wait(space, |s| s.fault(va, access))
}

impl core::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AddressSpace")
            .field("id", &self.id)
            .field("root", &self.root)
            .field("vmas", &self.vmas.len())
            .finish_non_exhaustive()
    }
}

pub(super) fn page_range(addr: u64, len: u64) -> Result<(u64, u64), Error> {
    if !addr.is_multiple_of(PAGE) {
        return Err(Error::Invalid("address is not page-aligned"));
    }
    if len == 0 {
        return Err(Error::Invalid("length is zero"));
    }
    let len = align_up(len, PAGE).ok_or(Error::Invalid("length overflows"))?;
    let end = addr.checked_add(len).ok_or(Error::Invalid("address + length overflows"))?;
    if end > USER_END {
        return Err(Error::Invalid("range extends past the end of the user address space"));
    }
    Ok((addr, end))
}

fn leaf_size(huge: bool) -> u64 {
    if huge { PMD_SIZE } else { PAGE }
}

/// The frame a leaf holds a reference (and a reverse-map entry) on, with the leaf's dirty bit:
/// present and software entries do, except migration entries and the zero pages. A PTE that
/// maps a subpage of a compound page (a THP whose mapping was split while it was referenced)
/// holds them on the compound page's head.
pub(super) fn held_frame(mm: &Mm, raw: u64) -> Option<(Pfn, bool)> {
    let (pfn, dirty) = match Pte::decode(raw) {
        Pte::Present(p) => (p.pfn, p.dirty),
        Pte::Soft(s) if s.kind != SoftKind::Migration => (s.pfn, s.dirty),
        _ => return None,
    };
    if mm.is_zero(pfn) {
        return None;
    }
    let head = Pfn(pfn.0 & !(HUGE_FRAMES - 1));
    let tail = mm.meta(pfn).is_some_and(|m| m.has(flags::TAIL)) && mm.meta(head).is_some_and(|h| h.order() > 0);
    Some((if tail { head } else { pfn }, dirty))
}

/// Drops what a leaf held: its reverse-map entry and its page reference (a migration entry:
/// its reverse-map entry, if it has one).
pub(super) fn release_leaf(mm: &Mm, id: u32, va: u64, raw: u64, huge: bool) {
    if let Pte::Soft(s) = Pte::decode(raw)
        && s.kind == SoftKind::Migration
    {
        if let Some(m) = mm.meta(s.pfn) {
            m.rmap_remove(RmapEntry::new(id, va, huge));
        }
        return;
    }
    let Some((pfn, dirty)) = held_frame(mm, raw) else { return };
    if let Some(m) = mm.meta(pfn) {
        if dirty {
            m.set(flags::DIRTY);
        }
        m.rmap_remove(RmapEntry::new(id, va, huge));
    }
    mm.put_page(pfn);
}

impl AddressSpace {
    /// An empty address space.
    pub fn new(mm: &Arc<Mm>) -> Result<Self, Error> {
        let root = Tables::alloc_table(mm.platform()).map_err(|_| Error::NoMemory)?;
        mm.platform().init_root(root);
        Ok(Self {
            mm: mm.clone(),
            id: mm.new_space_id(),
            root,
            vmas: VmaTree::new(),
            notifier: None,
            tlb: TlbFlush::default(),
            dead_tables: Vec::new(),
            migration_met: false,
            fault_window: None,
            stats: SpaceStats::default(),
        })
    }

    /// The identity used in reverse-map entries and notifier ranges.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The root page table (what CR3 points to).
    pub fn root(&self) -> Pfn {
        self.root
    }
    /// The shared memory manager.
    pub fn mm(&self) -> &Arc<Mm> {
        &self.mm
    }
    /// The VMAs.
    pub fn vmas(&self) -> &VmaTree {
        &self.vmas
    }
    /// The observer of page-table changes, if any.
    pub fn notifier(&self) -> Option<&Arc<dyn Notifier>> {
        self.notifier.as_ref()
    }
    /// Attaches (or detaches) the observer of page-table changes.
    pub fn set_notifier(&mut self, notifier: Option<Arc<dyn Notifier>>) {
        self.notifier = notifier;
    }

    pub(super) fn tables(&self) -> Tables<'_> {
        Tables::new(self.mm.platform(), self.root)
    }

    /// Opens an invalidation of `[start, end)`.
    pub(super) fn begin(&self, start: u64, end: u64, event: Event, owner: Option<Owner>) -> Range {
        let r = Range { space: self.id, start, end, event, owner, blockable: true };
        if let Some(n) = &self.notifier {
            n.invalidate_start(&r);
        }
        r
    }

    /// Flushes the batched TLB work, frees unhooked tables, and closes the invalidation.
    pub(super) fn finish(&mut self, r: Range) {
        self.flush();
        if let Some(n) = &self.notifier {
            n.invalidate_end(&r);
        }
    }

    pub(super) fn flush(&mut self) {
        self.tlb.tables_freed |= !self.dead_tables.is_empty();
        if !self.tlb.is_empty() {
            self.mm.platform().flush_tlb(self.root, &self.tlb);
            self.tlb = TlbFlush::default();
        }
        for t in self.dead_tables.drain(..) {
            self.mm.platform().free(t, 0);
        }
    }

    /// The leaf mapping `va`, if any.
    pub fn lookup(&self, va: u64) -> Option<Entry> {
        let t = self.tables();
        match t.pte(va, false) {
            Ok(PteLookup::Pte(s)) => match t.load(s) {
                0 => None,
                raw => Some(Entry { pte: Pte::decode(raw), huge: false }),
            },
            Ok(PteLookup::Huge(s)) => Some(Entry { pte: Pte::decode(t.load(s)), huge: true }),
            _ => None,
        }
    }

    /// Calls `f` for every leaf in `[start, end)` (`va`, the entry, whether it maps 2 MiB);
    /// empty entries and missing tables are skipped. Read-only: the HMM range walk.
    pub fn walk_leaves<F: FnMut(u64, Pte, bool) + ?Sized>(&self, start: u64, end: u64, f: &mut F) {
        let _ = self.tables().walk::<(), _>(start, end, &mut |l| {
            f(l.va, Pte::decode(l.raw), l.huge);
            Ok(())
        });
    }

    /// The physical address `va` maps to through a present entry, if any.
    pub fn translate(&self, va: u64) -> Option<u64> {
        match self.lookup(va)? {
            Entry { pte: Pte::Present(p), huge } => {
                let offset = if huge { va & (PMD_SIZE - 1) } else { va & (PAGE - 1) };
                Some(p.pfn.addr() + offset)
            }
            _ => None,
        }
    }

    /// Resident memory in bytes: present leaves that are not zero pages.
    pub fn resident_bytes(&self) -> u64 {
        let mut total = 0;
        let mm = &*self.mm;
        let _ = self.tables().walk::<(), _>(0, USER_END, &mut |l| {
            if let Pte::Present(p) = Pte::decode(l.raw)
                && !mm.is_zero(p.pfn)
            {
                total += leaf_size(l.huge);
            }
            Ok(())
        });
        total
    }

    // ---------------------------------------------------------------------------------------
    // Teardown

    /// Clears every leaf in `[start, end)` (huge leaves must lie wholly inside).
    fn zap(&mut self, start: u64, end: u64) {
        let t = Tables::new(self.mm.platform(), self.root);
        let mm = &*self.mm;
        let id = self.id;
        let tlb = &mut self.tlb;
        let _ = t.walk::<(), _>(start, end, &mut |l| {
            let old = t.swap(l.slot, 0);
            tlb.add(l.va, leaf_size(l.huge));
            release_leaf(mm, id, l.va, old, l.huge);
            Ok(())
        });
    }

    fn prune(&mut self, start: u64, end: u64) {
        let t = Tables::new(self.mm.platform(), self.root);
        t.prune(start, end, &mut self.dead_tables);
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        self.mm.forget_space(self.id);
        let r = self.begin(0, u64::MAX, Event::Release, None);
        self.zap(0, USER_END);
        self.prune(0, USER_END);
        self.finish(r);
        self.mm.platform().free(self.root, 0);
    }
}
