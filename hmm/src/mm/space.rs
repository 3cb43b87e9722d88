//! Address spaces: VMAs over page tables, the page-fault handler, and the mapping operations
//! (`mmap`, `munmap`, `mprotect`, `mremap`, `madvise`, fork with copy-on-write).
//!
//! Owns one root page table (the user half below it), the VMA tree, the TLB batch of the
//! operation in progress, and the optional [`Notifier`] that the HMM layer attaches.
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

use super::file::MemFile;
use super::frame::{RmapEntry, flags};
use super::notify::{Event, Notifier, Owner, Range};
use super::pagetable::{PMD_SIZE, PteLookup, Slot, Tables, USER_END};
use super::platform::TlbFlush;
use super::pte::{Present, Pte, Soft, SoftKind, is_table, table_entry};
use super::vma::{Backing, Prot, Vma, VmaFlags, VmaTree};
use super::{Error, HUGE_FRAMES, HUGE_ORDER, Mm};
use crate::addr::{Pfn, align_up};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

/// The lowest address `mmap` hands out (Linux's `mmap_min_addr`).
pub const MMAP_FLOOR: u64 = 0x1_0000;
/// Placement searches downward from here.
pub const MMAP_TOP: u64 = 0x7f00_0000_0000;

pub(super) const PAGE: u64 = 4096;

/// The kind of access that faulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A load.
    Read,
    /// A store.
    Write,
    /// An instruction fetch.
    Exec,
}

/// Why a fault could not be resolved; what a process would get as a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// No mapping at the address (`SIGSEGV`, `SEGV_MAPERR`).
    NoMapping,
    /// The mapping forbids the access (`SIGSEGV`, `SEGV_ACCERR`).
    Protection,
    /// No memory for the page or its table (`VM_FAULT_OOM`).
    OutOfMemory,
    /// Past the end of the mapped file (`SIGBUS`).
    Bus,
    /// The page is being migrated; retry once the migration finishes. Returned by
    /// [`AddressSpace::fault`], which runs under the address space's lock: the holder drops it
    /// and waits ([`fault_shared`], [`with_migration_wait`]), so the migration can finish.
    Migrating,
    /// The page stayed under migration for longer than the platform's wait bound
    /// ([`Platform::migration_wait`](super::Platform::migration_wait)).
    MigrationTimeout,
    /// The page lives in device-private memory: its pagemap must migrate it to RAM first.
    DevicePrivate {
        /// The device frame.
        pfn: Pfn,
    },
    /// The page table holds an entry this code never writes.
    Corrupt,
    /// The code that faulted holds the address space's lock (a kernel bug: user memory was
    /// touched inside an address-space operation), so the fault cannot be resolved.
    Locked,
}

impl core::fmt::Display for FaultError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FaultError::NoMapping => write!(f, "segmentation fault: no mapping at the address"),
            FaultError::Protection => write!(f, "segmentation fault: the mapping forbids this access"),
            FaultError::OutOfMemory => write!(f, "out of memory while handling the fault"),
            FaultError::Bus => write!(f, "bus error: access past the end of the mapped file"),
            FaultError::Migrating => write!(f, "page under migration; retry"),
            FaultError::MigrationTimeout => {
                write!(f, "the page stayed under migration past the wait bound (a migration is stuck)")
            }
            FaultError::DevicePrivate { pfn } => write!(f, "page {:#x} is in device-private memory", pfn.0),
            FaultError::Corrupt => write!(f, "corrupt page-table entry"),
            FaultError::Locked => write!(f, "user memory touched while its address space is locked"),
        }
    }
}

/// How `mmap` treats the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hint: used if free, otherwise the kernel picks (0: always pick).
    Hint,
    /// `MAP_FIXED`: exactly there, replacing what was mapped.
    Fixed,
    /// `MAP_FIXED_NOREPLACE`: exactly there, `EEXIST` if anything is mapped.
    FixedNoReplace,
}

/// An `mmap` request.
#[derive(Debug, Clone)]
pub struct MapRequest {
    /// Address (see [`placement`](Self::placement)).
    pub addr: u64,
    /// Length in bytes (rounded up to pages).
    pub len: u64,
    /// Protection.
    pub prot: Prot,
    /// `MAP_SHARED`.
    pub shared: bool,
    /// The file and byte offset, for a file mapping.
    pub file: Option<(Arc<MemFile>, u64)>,
    /// How the address is used.
    pub placement: Placement,
    /// `MAP_HUGETLB`: explicit 2 MiB pages.
    pub hugetlb: bool,
    /// `MAP_POPULATE`: fault everything in now.
    pub populate: bool,
}

impl MapRequest {
    /// Private anonymous memory.
    pub fn anon(len: u64, prot: Prot) -> Self {
        Self {
            addr: 0,
            len,
            prot,
            shared: false,
            file: None,
            placement: Placement::Hint,
            hugetlb: false,
            populate: false,
        }
    }
    /// A private mapping of `file` from byte `offset`.
    pub fn file(file: &Arc<MemFile>, offset: u64, len: u64, prot: Prot) -> Self {
        Self { file: Some((file.clone(), offset)), ..Self::anon(len, prot) }
    }
    /// `MAP_SHARED`.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }
    /// `MAP_FIXED` at `addr`.
    pub fn fixed(mut self, addr: u64) -> Self {
        self.addr = addr;
        self.placement = Placement::Fixed;
        self
    }
    /// `MAP_FIXED_NOREPLACE` at `addr`.
    pub fn fixed_noreplace(mut self, addr: u64) -> Self {
        self.addr = addr;
        self.placement = Placement::FixedNoReplace;
        self
    }
    /// A placement hint.
    pub fn hint(mut self, addr: u64) -> Self {
        self.addr = addr;
        self.placement = Placement::Hint;
        self
    }
    /// `MAP_HUGETLB`.
    pub fn hugetlb(mut self) -> Self {
        self.hugetlb = true;
        self
    }
    /// `MAP_POPULATE`.
    pub fn populate(mut self) -> Self {
        self.populate = true;
        self
    }
}

/// `mremap` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemapFlags {
    /// `MREMAP_MAYMOVE`.
    pub may_move: bool,
    /// `MREMAP_FIXED` (with the new address).
    pub fixed: bool,
    /// `MREMAP_DONTUNMAP`: move the pages, keep the old (now empty) mapping.
    pub dont_unmap: bool,
}

/// `madvise` advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_NORMAL`: no special treatment.
    Normal,
    /// `MADV_WILLNEED`: fault the range in now.
    WillNeed,
    /// `MADV_DONTNEED`: drop the pages; private anonymous memory reads zeros afterwards.
    DontNeed,
    /// `MADV_FREE`: the pages may be discarded while clean (private anonymous only).
    Free,
    /// `MADV_HUGEPAGE`: use 2 MiB pages here.
    HugePage,
    /// `MADV_NOHUGEPAGE`: never use 2 MiB pages here.
    NoHugePage,
}

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
    space: &super::SharedSpace,
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
pub fn fault_shared(space: &super::SharedSpace, va: u64, access: Access) -> Result<(), FaultError> {
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

/// The entry `raw` with the rights of protection `prot`.
fn reprotect(raw: u64, prot: Prot) -> u64 {
    match Pte::decode(raw) {
        Pte::Present(p) if prot.is_none() => Pte::Soft(Soft {
            kind: SoftKind::ProtNone,
            pfn: p.pfn,
            write: p.write,
            young: p.young,
            dirty: p.dirty,
            huge: p.huge,
            exec: p.exec,
        })
        .encode(),
        Pte::Present(p) => Pte::Present(Present { write: p.write && prot.write(), exec: prot.exec(), ..p }).encode(),
        Pte::Soft(s) if s.kind == SoftKind::ProtNone => {
            if prot.is_none() {
                raw
            } else {
                Pte::Present(Present {
                    pfn: s.pfn,
                    write: s.write && prot.write(),
                    exec: prot.exec(),
                    dirty: s.dirty,
                    young: s.young,
                    huge: s.huge,
                })
                .encode()
            }
        }
        Pte::Soft(s) => Pte::Soft(Soft { write: s.write && prot.write(), ..s }).encode(),
        Pte::None | Pte::Bad(_) => raw,
    }
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
    // Huge-page splitting

    /// Splits the PMD leaf at `pmd` (mapping `[base, base + 2 MiB)`) into 512 PTEs, and the
    /// compound page behind it into base pages.
    pub(super) fn split_leaf(&mut self, pmd: Slot, base: u64) -> Result<(), Error> {
        let t = Tables::new(self.mm.platform(), self.root);
        let raw = t.load(pmd);
        if raw == 0 || is_table(raw) {
            return Ok(());
        }
        let (pfn, migrating) = match Pte::decode(raw) {
            Pte::Present(p) => (p.pfn, false),
            Pte::Soft(s) => (s.pfn, s.kind == SoftKind::Migration),
            _ => return Err(Error::Busy("corrupt huge entry")),
        };
        if migrating {
            return Err(Error::Busy("huge page under migration"));
        }
        let zero = self.mm.is_zero(pfn);
        let mut keep_folio = false;
        if !zero {
            let m = self.mm.meta(pfn).ok_or(Error::Busy("huge page without metadata"))?;
            if m.has(flags::HUGETLB) {
                return Err(Error::Invalid("explicit (hugetlb) huge pages cannot be split"));
            }
            if m.refcount() != 1 || m.mapcount() != 1 {
                // Referenced beyond its mapping (pinned): only the mapping is split, into PTEs
                // of the subpages of the page, which stays whole (`__split_huge_pmd` without
                // `split_huge_page`). A device-private one stays huge: its CPU fault path
                // migrates whole folios or base pages.
                if matches!(Pte::decode(raw), Pte::Soft(_)) {
                    return Err(Error::Busy("referenced device-private huge page"));
                }
                keep_folio = true;
            }
        }
        let pt = Tables::alloc_table(self.mm.platform()).map_err(|_| Error::NoMemory)?;
        let r = self.begin(base, base + PMD_SIZE, Event::Clear, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let old = t.swap(pmd, 0);
        self.tlb.add(base, PMD_SIZE);
        let zero_pfn = self.mm.zero_pfn();
        let sub = |i: u64| match Pte::decode(old) {
            Pte::Present(p) => {
                Pte::Present(Present { pfn: if zero { zero_pfn } else { Pfn(pfn.0 + i) }, huge: false, ..p })
            }
            Pte::Soft(s) => Pte::Soft(Soft { pfn: if zero { zero_pfn } else { Pfn(pfn.0 + i) }, huge: false, ..s }),
            other => other,
        };
        for i in 0..HUGE_FRAMES {
            self.mm.platform().store(pt, i as usize, sub(i).encode());
        }
        if keep_folio {
            self.map_compound_by_ptes(pfn, base);
        } else if !zero {
            self.split_compound(pfn, base);
        }
        t.store(pmd, table_entry(pt));
        self.mm.stats.thp_splits.fetch_add(1, Ordering::Relaxed);
        self.finish(r);
        Ok(())
    }

    /// Turns the compound page at `head`, PMD-mapped once at `base`, into 512 base pages each
    /// mapped once by its PTE (the head keeps the compound page's one reference).
    fn split_compound(&self, head: Pfn, base: u64) {
        let Some(h) = self.mm.meta(head) else { return };
        h.rmap_remove(RmapEntry::new(self.id, base, true));
        self.mm.split_folio(head, 0);
        for i in 0..HUGE_FRAMES {
            if let Some(m) = self.mm.meta(Pfn(head.0 + i)) {
                m.rmap_add(RmapEntry::new(self.id, base + i * PAGE, false));
            }
        }
    }

    /// The compound page at `head`, PMD-mapped once at `base`, stays whole and is mapped by
    /// 512 PTEs, each holding a reference and a reverse-map entry on the head ([`held_frame`]).
    fn map_compound_by_ptes(&self, head: Pfn, base: u64) {
        let Some(h) = self.mm.meta(head) else { return };
        h.rmap_remove(RmapEntry::new(self.id, base, true));
        for i in 0..HUGE_FRAMES {
            h.rmap_add(RmapEntry::new(self.id, base + i * PAGE, false));
            if i > 0 {
                h.get();
            }
        }
    }

    /// Splits the huge leaf mapping `va`, if there is one.
    pub(super) fn split_pmd_at(&mut self, va: u64) -> Result<(), Error> {
        if let Ok(Some(pmd)) = self.tables().pmd(va, false) {
            let raw = self.tables().load(pmd);
            if raw != 0 && !is_table(raw) {
                self.split_leaf(pmd, va & !(PMD_SIZE - 1))?;
            }
        }
        Ok(())
    }

    /// Splits the huge leaves that straddle `start` or `end`.
    pub(super) fn split_boundaries(&mut self, start: u64, end: u64) -> Result<(), Error> {
        for at in [start, end] {
            if at % PMD_SIZE == 0 || at >= USER_END {
                continue;
            }
            self.split_pmd_at(at)?;
        }
        Ok(())
    }

    /// Splits every transparent huge leaf in `[start, end)` (not zero pages, not hugetlb).
    pub(super) fn split_all(&mut self, start: u64, end: u64, zero_too: bool) -> Result<(), Error> {
        let mut leaves = Vec::new();
        let mm = &*self.mm;
        let _ = self.tables().walk::<(), _>(start, end, &mut |l| {
            if l.huge {
                let pfn = Pte::decode(l.raw).pfn();
                let hugetlb = pfn.and_then(|p| mm.meta(p)).is_some_and(|m| m.has(flags::HUGETLB));
                let zero = pfn.is_some_and(|p| mm.is_zero(p));
                if !hugetlb && (zero_too || !zero) {
                    leaves.push((l.slot, l.va));
                }
            }
            Ok(())
        });
        for (slot, va) in leaves {
            self.split_leaf(slot, va)?;
        }
        Ok(())
    }

    fn check_hugetlb_bounds(&self, start: u64, end: u64) -> Result<(), Error> {
        for v in self.vmas.overlapping(start, end) {
            if v.flags.hugetlb
                && ((start > v.start && !start.is_multiple_of(PMD_SIZE))
                    || (end < v.end && !end.is_multiple_of(PMD_SIZE)))
            {
                return Err(Error::Invalid("explicit huge page mappings change only at 2 MiB boundaries"));
            }
        }
        Ok(())
    }

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

    // ---------------------------------------------------------------------------------------
    // Mapping operations

    fn placement_align(anon_private_or_huge: bool, len: u64) -> u64 {
        if anon_private_or_huge && len >= PMD_SIZE { PMD_SIZE } else { PAGE }
    }

    /// `mmap`: creates a mapping and returns its address.
    pub fn mmap(&mut self, req: MapRequest) -> Result<u64, Error> {
        if req.len == 0 {
            return Err(Error::Invalid("length is zero"));
        }
        let gran = if req.hugetlb { PMD_SIZE } else { PAGE };
        let len = align_up(req.len, gran).ok_or(Error::NoSpace("length overflows"))?;
        if len > USER_END - MMAP_FLOOR {
            return Err(Error::NoSpace("length exceeds the user address space"));
        }
        if req.hugetlb && (req.file.is_some() || req.shared) {
            return Err(Error::Invalid("MAP_HUGETLB supports private anonymous mappings only"));
        }
        let backing = match (&req.file, req.shared) {
            (Some((file, offset)), _) => {
                if offset % PAGE != 0 {
                    return Err(Error::Invalid("file offset is not page-aligned"));
                }
                Backing::File { file: file.clone(), pgoff: offset / PAGE }
            }
            // MAP_SHARED | MAP_ANONYMOUS: an unnamed in-memory file, as Linux's shmem does.
            (None, true) => Backing::File { file: MemFile::new(&self.mm, len), pgoff: 0 },
            (None, false) => Backing::Anon,
        };
        let align = Self::placement_align(req.hugetlb || (req.file.is_none() && !req.shared), len);
        let start = match req.placement {
            Placement::Fixed | Placement::FixedNoReplace => {
                if !req.addr.is_multiple_of(gran) {
                    return Err(Error::Invalid("fixed address is not aligned (4 KiB, or 2 MiB for MAP_HUGETLB)"));
                }
                let end = req.addr.checked_add(len).ok_or(Error::NoSpace("fixed range overflows"))?;
                if req.addr < MMAP_FLOOR || end > USER_END {
                    return Err(Error::NoSpace("fixed range outside the user address space"));
                }
                if !self.vmas.is_free(req.addr, end) {
                    if req.placement == Placement::FixedNoReplace {
                        return Err(Error::Exists);
                    }
                    self.munmap(req.addr, len)?;
                }
                req.addr
            }
            Placement::Hint => {
                let hint = req.addr & !(gran - 1);
                match hint.checked_add(len) {
                    Some(end) if hint >= MMAP_FLOOR && end <= USER_END && self.vmas.is_free(hint, end) => hint,
                    _ => self
                        .vmas
                        .find_gap(len, align, MMAP_FLOOR, MMAP_TOP)
                        .ok_or(Error::NoSpace("no free range big enough"))?,
                }
            }
        };
        let flags = VmaFlags { shared: req.shared, hugetlb: req.hugetlb, ..VmaFlags::default() };
        self.vmas.insert(Vma { start, end: start + len, prot: req.prot, flags, backing });
        self.vmas.merge_around(start, start + len);
        if req.populate {
            self.populate(start, start + len, req.prot);
        }
        Ok(start)
    }

    /// Faults in `[start, end)` (`MAP_POPULATE`, `MADV_WILLNEED`); failures are left for the
    /// access to meet, as Linux does.
    fn populate(&mut self, start: u64, end: u64, prot: Prot) {
        let access = if prot.write() { Access::Write } else { Access::Read };
        let mut va = start;
        while va < end {
            if self.fault(va, access).is_err() {
                return;
            }
            va += match self.lookup(va) {
                Some(Entry { huge: true, .. }) => PMD_SIZE - (va & (PMD_SIZE - 1)),
                _ => PAGE,
            };
        }
    }

    /// `munmap`: removes every mapping in the range (holes are fine).
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        let (start, end) = page_range(addr, len)?;
        self.check_hugetlb_bounds(start, end)?;
        self.split_boundaries(start, end)?;
        let r = self.begin(start, end, Event::Unmap, None);
        self.zap(start, end);
        self.vmas.split_at(start);
        self.vmas.split_at(end);
        let removed = self.vmas.remove_range(start, end);
        self.prune(start, end);
        self.finish(r);
        drop(removed);
        Ok(())
    }

    /// `mprotect`: changes the protection of a fully mapped range.
    pub fn mprotect(&mut self, addr: u64, len: u64, prot: Prot) -> Result<(), Error> {
        let (start, end) = page_range(addr, len)?;
        if !self.vmas.covers(start, end) {
            return Err(Error::NoSpace("part of the range is not mapped"));
        }
        self.check_hugetlb_bounds(start, end)?;
        self.split_boundaries(start, end)?;
        let r = self.begin(start, end, Event::ProtectionVma, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let tlb = &mut self.tlb;
        let _ = t.walk::<(), _>(start, end, &mut |l| {
            if reprotect(l.raw, prot) != l.raw {
                // Clear, then write the new value computed from what was there, so a dirty
                // bit the CPU set meanwhile is kept.
                let cur = t.swap(l.slot, 0);
                t.store(l.slot, reprotect(cur, prot));
                tlb.add(l.va, leaf_size(l.huge));
            }
            Ok(())
        });
        self.finish(r);
        self.vmas.split_at(start);
        self.vmas.split_at(end);
        for v in self.vmas.range_mut(start, end) {
            v.prot = prot;
        }
        self.vmas.merge_around(start, end);
        Ok(())
    }

    /// `madvise`.
    pub fn madvise(&mut self, addr: u64, len: u64, advice: Advice) -> Result<(), Error> {
        let (start, end) = page_range(addr, len)?;
        if !self.vmas.covers(start, end) {
            return Err(Error::NoSpace("part of the range is not mapped"));
        }
        match advice {
            Advice::Normal => Ok(()),
            Advice::WillNeed => {
                let prots: Vec<(u64, u64, Prot)> =
                    self.vmas.overlapping(start, end).map(|v| (v.start.max(start), v.end.min(end), v.prot)).collect();
                for (s, e, p) in prots {
                    self.populate(s, e, p);
                }
                Ok(())
            }
            Advice::DontNeed => {
                self.check_hugetlb_bounds(start, end)?;
                self.split_boundaries(start, end)?;
                let r = self.begin(start, end, Event::Clear, None);
                self.zap(start, end);
                self.prune(start, end);
                self.finish(r);
                Ok(())
            }
            Advice::Free => {
                if self.vmas.overlapping(start, end).any(|v| !(v.is_anon() && v.is_cow()) || v.flags.hugetlb) {
                    return Err(Error::Invalid("MADV_FREE applies to private anonymous memory only"));
                }
                self.split_boundaries(start, end)?;
                let r = self.begin(start, end, Event::Clear, None);
                let t = Tables::new(self.mm.platform(), self.root);
                let mm = &*self.mm;
                let tlb = &mut self.tlb;
                let _ = t.walk::<(), _>(start, end, &mut |l| {
                    if let Pte::Present(p) = Pte::decode(l.raw)
                        && !mm.is_zero(p.pfn)
                    {
                        // Clean and lazily freeable: a later write dirties it again and keeps
                        // it. (There is no reclaim yet that would discard clean lazy pages.)
                        let cur = t.swap(l.slot, 0);
                        t.store(l.slot, cur & !super::pte::D);
                        tlb.add(l.va, leaf_size(l.huge));
                        if let Some(m) = mm.meta(p.pfn) {
                            m.clear(flags::DIRTY);
                            m.set(flags::LAZYFREE);
                        }
                    }
                    Ok(())
                });
                self.finish(r);
                Ok(())
            }
            Advice::HugePage | Advice::NoHugePage => {
                // The VMA splits at an unaligned end: a huge leaf across it splits first, so no
                // 2 MiB mapping (a device THP's included) straddles two VMAs (Linux's
                // split_vma -> vma_adjust_trans_huge). Advice leaves hugetlb VMAs as they are.
                if self.vmas.overlapping(start, end).all(|v| !v.flags.hugetlb) {
                    self.split_boundaries(start, end)?;
                }
                self.vmas.split_at(start);
                self.vmas.split_at(end);
                for v in self.vmas.range_mut(start, end) {
                    if !v.flags.hugetlb {
                        v.flags.hugepage = advice == Advice::HugePage;
                        v.flags.nohugepage = advice == Advice::NoHugePage;
                    }
                }
                self.vmas.merge_around(start, end);
                Ok(())
            }
        }
    }

    /// `mremap`: resizes and/or moves a mapping; returns its (new) address.
    pub fn mremap(
        &mut self,
        old_addr: u64,
        old_len: u64,
        new_len: u64,
        flags: RemapFlags,
        new_addr: u64,
    ) -> Result<u64, Error> {
        if !old_addr.is_multiple_of(PAGE) {
            return Err(Error::Invalid("old address is not page-aligned"));
        }
        if flags.fixed && !flags.may_move {
            return Err(Error::Invalid("MREMAP_FIXED needs MREMAP_MAYMOVE"));
        }
        if flags.dont_unmap && !flags.may_move {
            return Err(Error::Invalid("MREMAP_DONTUNMAP needs MREMAP_MAYMOVE"));
        }
        if old_len == 0 {
            return Err(Error::Invalid("old size 0 (duplicating a shared mapping) is not supported"));
        }
        if new_len == 0 {
            return Err(Error::Invalid("new size is zero"));
        }
        let old_len = align_up(old_len, PAGE).ok_or(Error::Invalid("old size overflows"))?;
        let new_len = align_up(new_len, PAGE).ok_or(Error::Invalid("new size overflows"))?;
        if flags.dont_unmap && old_len != new_len {
            return Err(Error::Invalid("MREMAP_DONTUNMAP needs equal old and new sizes"));
        }
        let old_end = old_addr
            .checked_add(old_len)
            .filter(|e| *e <= USER_END)
            .ok_or(Error::Invalid("old range extends past the user address space"))?;
        let vma = self.vmas.find(old_addr).cloned().ok_or(Error::Fault("old range is not mapped"))?;
        if old_end > vma.end {
            return Err(Error::Fault("old range spans more than one mapping"));
        }
        if vma.flags.hugetlb && !(old_addr | old_len | new_len).is_multiple_of(PMD_SIZE) {
            return Err(Error::Invalid("explicit huge page mappings move and resize in 2 MiB units"));
        }
        if flags.dont_unmap && !(vma.is_anon() && vma.is_cow()) {
            return Err(Error::Invalid("MREMAP_DONTUNMAP works on private anonymous mappings only"));
        }
        if flags.fixed {
            let gran = if vma.flags.hugetlb { PMD_SIZE } else { PAGE };
            if !new_addr.is_multiple_of(gran) {
                return Err(Error::Invalid("new address is not aligned"));
            }
            let new_end = new_addr
                .checked_add(new_len)
                .filter(|e| *e <= USER_END && new_addr >= MMAP_FLOOR)
                .ok_or(Error::Invalid("new range outside the user address space"))?;
            if new_addr < old_end && old_addr < new_end {
                return Err(Error::Invalid("old and new ranges overlap"));
            }
            self.munmap(new_addr, new_len)?;
            let mut moved = old_len;
            if new_len < old_len {
                self.munmap(old_addr + new_len, old_len - new_len)?;
                moved = new_len;
            }
            self.move_range(old_addr, moved, new_addr, new_len, flags.dont_unmap)?;
            return Ok(new_addr);
        }
        if !flags.dont_unmap {
            if new_len <= old_len {
                if new_len < old_len {
                    self.munmap(old_addr + new_len, old_len - new_len)?;
                }
                return Ok(old_addr);
            }
            let grow_end = old_addr.checked_add(new_len).filter(|e| *e <= USER_END);
            if let Some(grow_end) = grow_end
                && old_end == vma.end
                && self.vmas.is_free(old_end, grow_end)
            {
                for v in self.vmas.range_mut(vma.start, vma.start + 1) {
                    v.end = grow_end;
                }
                self.vmas.merge_around(old_addr, grow_end);
                return Ok(old_addr);
            }
            if !flags.may_move {
                return Err(Error::NoSpace("cannot grow in place and MREMAP_MAYMOVE was not given"));
            }
        }
        let align = Self::placement_align(vma.flags.hugetlb || (vma.is_anon() && vma.is_cow()), new_len);
        let new = self
            .vmas
            .find_gap(new_len, align, MMAP_FLOOR, MMAP_TOP)
            .ok_or(Error::NoSpace("no free range big enough"))?;
        self.move_range(old_addr, old_len, new, new_len, flags.dont_unmap)?;
        Ok(new)
    }

    /// Moves the pages of `[old, old + old_len)` (inside one VMA) to `new`, creating a VMA of
    /// `new_len` there (the free range is the caller's guarantee).
    fn move_range(&mut self, old: u64, old_len: u64, new: u64, new_len: u64, keep_old: bool) -> Result<(), Error> {
        let old_end = old + old_len;
        self.vmas.split_at(old);
        self.vmas.split_at(old_end);
        let tmpl = self.vmas.find(old).cloned().ok_or(Error::Fault("old range is not mapped"))?;
        // Huge leaves move whole only if they stay 2 MiB-aligned; otherwise split them.
        if new.wrapping_sub(old).is_multiple_of(PMD_SIZE) {
            self.split_boundaries(old, old_end)?;
        } else {
            self.split_all(old, old_end, true)?;
        }
        // Create every destination table first, so the move itself cannot fail halfway.
        let t = Tables::new(self.mm.platform(), self.root);
        let prepared = t.walk::<(), _>(old, old_end, &mut |l| {
            let dest = new + (l.va - old);
            let ok = if l.huge {
                t.pmd(dest, true).ok().flatten().is_some()
            } else {
                matches!(t.pte(dest, true), Ok(PteLookup::Pte(_)))
            };
            if ok { Ok(()) } else { Err(()) }
        });
        if prepared.is_err() {
            self.prune(new, new + new_len);
            self.flush();
            return Err(Error::NoMemory);
        }
        let r = self.begin(old, old_end, Event::Unmap, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let mm = &*self.mm;
        let id = self.id;
        let tlb = &mut self.tlb;
        let dead = &mut self.dead_tables;
        let _ = t.walk::<(), _>(old, old_end, &mut |l| {
            let dest = new + (l.va - old);
            let raw = t.swap(l.slot, 0);
            tlb.add(l.va, leaf_size(l.huge));
            let slot = if l.huge {
                let Ok(Some(pmd)) = t.pmd(dest, false) else { return Ok(()) };
                let cur = t.load(pmd);
                if is_table(cur) {
                    // An empty page table left over at the destination: the leaf replaces it.
                    dead.push(super::pte::raw_pfn(cur));
                }
                pmd
            } else {
                let Ok(PteLookup::Pte(s)) = t.pte(dest, false) else { return Ok(()) };
                s
            };
            t.store(slot, raw);
            // An eviction's migration entry, or fork's copy of one, has a reverse-map entry to
            // move too (the finalize finds it there).
            let rmapped = match Pte::decode(raw) {
                Pte::Soft(s) if s.kind == SoftKind::Migration => Some(s.pfn),
                _ => held_frame(mm, raw).map(|(pfn, _)| pfn),
            };
            if let Some(m) = rmapped.and_then(|pfn| mm.meta(pfn)) {
                m.rmap_move(RmapEntry::new(id, l.va, l.huge), RmapEntry::new(id, dest, l.huge));
            }
            Ok(())
        });
        if !keep_old {
            self.vmas.remove_range(old, old_end);
            self.prune(old, old_end);
        }
        self.finish(r);
        let mut nv = tmpl;
        nv.start = new;
        nv.end = new + new_len;
        self.vmas.insert(nv);
        self.vmas.merge_around(new, new + new_len);
        Ok(())
    }

    /// Fork: a child address space with the same mappings. Private pages become copy-on-write
    /// in both; shared mappings share pages.
    pub fn fork(&mut self) -> Result<AddressSpace, Error> {
        let mut child = AddressSpace::new(&self.mm)?;
        let ranges: Vec<(u64, u64, bool)> = self.vmas.iter().map(|v| (v.start, v.end, v.is_cow())).collect();
        for &(s, e, cow) in &ranges {
            if cow {
                // A transparent huge page has one mapping; fork splits it (hugetlb pages and
                // the huge zero page stay shared at 2 MiB).
                self.split_all(s, e, false)?;
            }
        }
        child.vmas = self.vmas.clone();
        for (s, e, cow) in ranges {
            // Only copy-on-write mappings change in the parent (write protection), so only
            // they are invalidated, as in Linux's copy_page_range. Shared mappings never hold
            // device-exclusive entries (those exist in private anonymous memory only).
            let r = cow.then(|| self.begin(s, e, Event::ProtectionPage, None));
            let res = self.copy_range(&mut child, s, e, cow);
            match r {
                Some(r) => self.finish(r),
                None => self.flush(),
            }
            res?;
        }
        Ok(child)
    }

    fn copy_range(&mut self, child: &mut AddressSpace, start: u64, end: u64, cow: bool) -> Result<(), Error> {
        let pt = Tables::new(self.mm.platform(), self.root);
        let ct = Tables::new(child.mm.platform(), child.root);
        let mm = &*self.mm;
        let cid = child.id;
        let tlb = &mut self.tlb;
        pt.walk::<Error, _>(start, end, &mut |l| {
            let dest = if l.huge {
                ct.pmd(l.va, true).ok().flatten()
            } else {
                match ct.pte(l.va, true) {
                    Ok(PteLookup::Pte(s)) => Some(s),
                    _ => None,
                }
            };
            let dest = dest.ok_or(Error::NoMemory)?;
            let mut raw = pt.load(l.slot);
            if let Pte::Soft(s) = Pte::decode(raw) {
                match s.kind {
                    SoftKind::Migration => {
                        // copy_nonpresent_pte: the child gets the migration entry too (read-only
                        // in both when the mapping is copy-on-write, below). It holds no
                        // reference, but a reverse-map entry on the page, so the migration
                        // finds it and puts the new page in the child as well.
                        if let Some(m) = mm.meta(s.pfn) {
                            m.rmap_add(RmapEntry::new(cid, l.va, l.huge));
                        }
                    }
                    SoftKind::Exclusive => {
                        // Device-exclusive entries are restored in the parent first.
                        raw = Pte::Present(Present {
                            pfn: s.pfn,
                            write: s.write,
                            exec: s.exec,
                            dirty: s.dirty,
                            young: s.young,
                            huge: false,
                        })
                        .encode();
                        pt.store(l.slot, raw);
                        tlb.add(l.va, PAGE);
                    }
                    _ => {}
                }
            }
            let writable = match Pte::decode(raw) {
                Pte::Present(p) => p.write,
                Pte::Soft(s) => s.write,
                _ => false,
            };
            if let Some((pfn, _)) = held_frame(mm, raw) {
                mm.get_page(pfn);
                if let Some(m) = mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(cid, l.va, l.huge));
                }
            }
            let wp = |raw: u64| match Pte::decode(raw) {
                Pte::Present(p) => Pte::Present(Present { write: false, ..p }).encode(),
                Pte::Soft(s) => Pte::Soft(Soft { write: false, ..s }).encode(),
                _ => raw,
            };
            if cow && writable {
                let cur = pt.swap(l.slot, 0);
                pt.store(l.slot, wp(cur));
                tlb.add(l.va, leaf_size(l.huge));
                ct.store(dest, wp(raw));
            } else {
                ct.store(dest, raw);
            }
            Ok(())
        })
    }

    // ---------------------------------------------------------------------------------------
    // Faults

    pub(super) fn thp_eligible(&self, vma: &Vma, va: u64) -> bool {
        let base = va & !(PMD_SIZE - 1);
        let mode_ok = match self.mm.thp_mode() {
            super::ThpMode::Never => false,
            super::ThpMode::Madvise => vma.flags.hugepage,
            super::ThpMode::Always => true,
        };
        mode_ok
            && vma.is_anon()
            && vma.is_cow()
            && !vma.flags.nohugepage
            && base >= vma.start
            && base + PMD_SIZE <= vma.end
    }

    /// Whether a fault met a page under migration ([`FaultError::Migrating`]) since the last
    /// call; clears the record. For callers that hold the lock across several faults (the
    /// range fault) and wait once they have dropped it.
    pub fn take_migration_wait(&mut self) -> bool {
        core::mem::take(&mut self.migration_met)
    }

    /// Handles a fault at `va`: demand paging, copy-on-write, zero pages, huge pages, restore
    /// of device-exclusive entries. `Ok` means the access can be retried. A page under
    /// migration is `Err(Migrating)`: the caller drops the lock and waits
    /// ([`with_migration_wait`]).
    pub fn fault(&mut self, va: u64, access: Access) -> Result<(), FaultError> {
        let r = self.fault_locked(va, access);
        if r == Err(FaultError::Migrating) {
            self.migration_met = true;
        }
        r
    }

    fn fault_locked(&mut self, va: u64, access: Access) -> Result<(), FaultError> {
        self.stats.faults += 1;
        if va >= USER_END {
            return Err(FaultError::NoMapping);
        }
        let vma = self.vmas.find(va).cloned().ok_or(FaultError::NoMapping)?;
        let allowed = match access {
            Access::Read => vma.prot.read() || vma.prot.write() || vma.prot.exec(),
            Access::Write => vma.prot.write(),
            Access::Exec => vma.prot.exec(),
        };
        if !allowed {
            return Err(FaultError::Protection);
        }
        let write = access == Access::Write;
        if vma.flags.hugetlb {
            return self.hugetlb_fault(&vma, va, write);
        }
        let pmd = match self.tables().pmd(va, true) {
            Ok(Some(s)) => s,
            _ => return Err(FaultError::OutOfMemory),
        };
        let raw = self.tables().load(pmd);
        let base = va & !(PMD_SIZE - 1);
        if raw == 0 && self.thp_eligible(&vma, va) && self.huge_anon_fault(&vma, pmd, base, write)? {
            return Ok(());
        }
        if raw != 0 && !is_table(raw) {
            match Pte::decode(raw) {
                Pte::Present(p) if !write || p.write => {
                    self.stats.spurious += 1;
                    return Ok(());
                }
                Pte::Present(p) => {
                    if self.huge_wp(&vma, pmd, base, p)? {
                        return Ok(());
                    }
                    // Could not keep it huge: split and take the 4 KiB path.
                    self.split_leaf(pmd, base).map_err(|_| FaultError::OutOfMemory)?;
                }
                Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => {
                    // A device-private THP: its pagemap moves the whole folio (or, failing
                    // a 2 MiB page, its 4 KiB pages) back to RAM.
                    return match self.mm.device_memory().cloned() {
                        Some(dev) => dev.migrate_to_ram(self, va, s.pfn),
                        None => Err(FaultError::DevicePrivate { pfn: s.pfn }),
                    };
                }
                Pte::Soft(s) => return Err(self.soft_fault_error(s)),
                _ => return Err(FaultError::Corrupt),
            }
        }
        let slot = match self.tables().pte(va, true) {
            Ok(PteLookup::Pte(s)) => s,
            Ok(PteLookup::Huge(_)) => return Err(FaultError::Corrupt),
            _ => return Err(FaultError::OutOfMemory),
        };
        let va = va & !(PAGE - 1);
        match Pte::decode(self.tables().load(slot)) {
            Pte::None => self.fault_none(&vma, slot, va, write),
            Pte::Present(p) if write && !p.write => self.fault_wp(&vma, slot, va, p),
            Pte::Present(_) => {
                self.stats.spurious += 1;
                Ok(())
            }
            Pte::Soft(s) if s.kind == SoftKind::Exclusive => {
                self.restore_exclusive(slot, va, s);
                Ok(())
            }
            Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => match self.mm.device_memory().cloned() {
                // do_swap_page -> pgmap->ops->migrate_to_ram
                Some(dev) => dev.migrate_to_ram(self, va, s.pfn),
                None => Err(FaultError::DevicePrivate { pfn: s.pfn }),
            },
            Pte::Soft(s) => Err(self.soft_fault_error(s)),
            Pte::Bad(_) => Err(FaultError::Corrupt),
        }
    }

    fn soft_fault_error(&self, s: Soft) -> FaultError {
        match s.kind {
            SoftKind::Migration => FaultError::Migrating,
            SoftKind::DevicePrivate => FaultError::DevicePrivate { pfn: s.pfn },
            // The VMA allows the access but the entry is PROT_NONE: cannot happen, since
            // mprotect rewrites entries with the VMA; report rather than guess.
            SoftKind::ProtNone | SoftKind::Exclusive => FaultError::Protection,
        }
    }

    /// A fault on an empty PTE.
    fn fault_none(&mut self, vma: &Vma, slot: Slot, va: u64, write: bool) -> Result<(), FaultError> {
        let exec = vma.prot.exec();
        let t = Tables::new(self.mm.platform(), self.root);
        match &vma.backing {
            Backing::Anon if !write => {
                let pte =
                    Present { pfn: self.mm.zero_pfn(), write: false, exec, dirty: false, young: true, huge: false };
                t.store(slot, Pte::Present(pte).encode());
                self.stats.zero_maps += 1;
            }
            Backing::Anon => {
                let pfn = self.mm.alloc_page(flags::ANON, 0, true).map_err(|_| FaultError::OutOfMemory)?;
                if let Some(m) = self.mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(self.id, va, false));
                }
                t.store(
                    slot,
                    Pte::Present(Present { pfn, write: true, exec, dirty: true, young: true, huge: false }).encode(),
                );
            }
            Backing::File { .. } => {
                let Some((file, index)) = vma.file_index(va) else { return Err(FaultError::Corrupt) };
                let page = file.page(index).map_err(|_| FaultError::OutOfMemory)?.ok_or(FaultError::Bus)?;
                self.stats.file_faults += 1;
                let (pfn, writable) = if vma.flags.shared || !write {
                    self.mm.get_page(page);
                    (page, vma.flags.shared && write)
                } else {
                    let new = self.mm.alloc_page(flags::ANON, 0, false).map_err(|_| FaultError::OutOfMemory)?;
                    self.mm.platform().copy(new, page, 1);
                    self.stats.cow_copies += 1;
                    self.mm.stats.cow_copies.fetch_add(1, Ordering::Relaxed);
                    (new, true)
                };
                if let Some(m) = self.mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(self.id, va, false));
                    if writable {
                        m.set(flags::DIRTY);
                    }
                }
                let pte = Present { pfn, write: writable, exec, dirty: writable, young: true, huge: false };
                t.store(slot, Pte::Present(pte).encode());
            }
        }
        Ok(())
    }

    /// A write fault on a present, read-only PTE in a writable VMA.
    fn fault_wp(&mut self, vma: &Vma, slot: Slot, va: u64, p: Present) -> Result<(), FaultError> {
        let t = Tables::new(self.mm.platform(), self.root);
        if vma.flags.shared {
            if let Some(m) = self.mm.meta(p.pfn) {
                m.set(flags::DIRTY);
            }
            let cur = t.swap(slot, 0);
            let Pte::Present(c) = Pte::decode(cur) else { return Err(FaultError::Corrupt) };
            t.store(slot, Pte::Present(Present { write: true, dirty: true, young: true, ..c }).encode());
            self.tlb.add(va, PAGE);
            self.flush();
            return Ok(());
        }
        if !self.mm.is_zero(p.pfn)
            && let Some(m) = self.mm.meta(p.pfn)
            && (m.has(flags::ANON) || m.has(flags::DEVICE))
            && m.refcount() == 1
            && m.mapcount() == 1
        {
            // The page became exclusive (the other sharers went away): reuse it. A coherent
            // device page here is anonymous memory too (device pages live only there).
            let cur = t.swap(slot, 0);
            let Pte::Present(c) = Pte::decode(cur) else { return Err(FaultError::Corrupt) };
            t.store(slot, Pte::Present(Present { write: true, dirty: true, young: true, ..c }).encode());
            m.clear(flags::LAZYFREE);
            self.mm.stats.cow_reuses.fetch_add(1, Ordering::Relaxed);
            self.tlb.add(va, PAGE);
            self.flush();
            return Ok(());
        }
        let zero = self.mm.is_zero(p.pfn);
        let new = self.mm.alloc_page(flags::ANON, 0, zero).map_err(|_| FaultError::OutOfMemory)?;
        if !zero {
            self.mm.platform().copy(new, p.pfn, 1);
            self.stats.cow_copies += 1;
            self.mm.stats.cow_copies.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(m) = self.mm.meta(new) {
            m.rmap_add(RmapEntry::new(self.id, va, false));
        }
        let r = self.begin(va, va + PAGE, Event::Clear, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let pte = Present { pfn: new, write: true, exec: p.exec, dirty: true, young: true, huge: false };
        let old = t.swap(slot, Pte::Present(pte).encode());
        self.tlb.add(va, PAGE);
        release_leaf(&self.mm, self.id, va, old, false);
        self.finish(r);
        Ok(())
    }

    /// Maps a fresh 2 MiB page (write) or the huge zero page (read) at an empty PMD. Returns
    /// `Ok(false)` when no 2 MiB page is free, so the caller falls back to 4 KiB.
    fn huge_anon_fault(&mut self, vma: &Vma, pmd: Slot, base: u64, write: bool) -> Result<bool, FaultError> {
        let exec = vma.prot.exec();
        let t = Tables::new(self.mm.platform(), self.root);
        if !write {
            let pte =
                Present { pfn: self.mm.huge_zero_pfn(), write: false, exec, dirty: false, young: true, huge: true };
            t.store(pmd, Pte::Present(pte).encode());
            self.stats.huge_zero_maps += 1;
            return Ok(true);
        }
        let Ok(pfn) = self.mm.alloc_page(flags::ANON, HUGE_ORDER, true) else { return Ok(false) };
        if let Some(m) = self.mm.meta(pfn) {
            m.rmap_add(RmapEntry::new(self.id, base, true));
        }
        t.store(pmd, Pte::Present(Present { pfn, write: true, exec, dirty: true, young: true, huge: true }).encode());
        self.stats.huge_faults += 1;
        Ok(true)
    }

    /// A write fault on a read-only huge PMD: reuse an exclusive THP, or replace the huge zero
    /// page by a fresh THP. `Ok(false)`: split instead.
    fn huge_wp(&mut self, vma: &Vma, pmd: Slot, base: u64, p: Present) -> Result<bool, FaultError> {
        let t = Tables::new(self.mm.platform(), self.root);
        if self.mm.is_zero(p.pfn) {
            let Ok(pfn) = self.mm.alloc_page(flags::ANON, HUGE_ORDER, true) else { return Ok(false) };
            if let Some(m) = self.mm.meta(pfn) {
                m.rmap_add(RmapEntry::new(self.id, base, true));
            }
            let r = self.begin(base, base + PMD_SIZE, Event::Clear, None);
            let t = Tables::new(self.mm.platform(), self.root);
            let pte = Present { pfn, write: true, exec: vma.prot.exec(), dirty: true, young: true, huge: true };
            t.swap(pmd, Pte::Present(pte).encode());
            self.tlb.add(base, PMD_SIZE);
            self.stats.huge_faults += 1;
            self.finish(r);
            return Ok(true);
        }
        match self.mm.meta(p.pfn) {
            Some(m) if (m.has(flags::ANON) || m.has(flags::DEVICE)) && m.refcount() == 1 && m.mapcount() == 1 => {
                let cur = t.swap(pmd, 0);
                let Pte::Present(c) = Pte::decode(cur) else { return Err(FaultError::Corrupt) };
                t.store(pmd, Pte::Present(Present { write: true, dirty: true, young: true, ..c }).encode());
                self.mm.stats.cow_reuses.fetch_add(1, Ordering::Relaxed);
                self.tlb.add(base, PMD_SIZE);
                self.flush();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A fault in an explicit huge page mapping: always 2 MiB, copy-on-write at 2 MiB.
    fn hugetlb_fault(&mut self, vma: &Vma, va: u64, write: bool) -> Result<(), FaultError> {
        let base = va & !(PMD_SIZE - 1);
        let pmd = match self.tables().pmd(va, true) {
            Ok(Some(s)) => s,
            _ => return Err(FaultError::OutOfMemory),
        };
        let t = Tables::new(self.mm.platform(), self.root);
        let exec = vma.prot.exec();
        match Pte::decode(t.load(pmd)) {
            Pte::None => {
                let pfn = self
                    .mm
                    .alloc_page(flags::ANON | flags::HUGETLB, HUGE_ORDER, true)
                    .map_err(|_| FaultError::OutOfMemory)?;
                if let Some(m) = self.mm.meta(pfn) {
                    m.rmap_add(RmapEntry::new(self.id, base, true));
                }
                let writable = vma.prot.write();
                let pte = Present { pfn, write: writable, exec, dirty: write, young: true, huge: true };
                t.store(pmd, Pte::Present(pte).encode());
                self.stats.huge_faults += 1;
                Ok(())
            }
            Pte::Present(p) if write && !p.write => {
                let exclusive = self.mm.meta(p.pfn).is_some_and(|m| m.refcount() == 1 && m.mapcount() == 1);
                if exclusive {
                    let cur = t.swap(pmd, 0);
                    t.store(pmd, cur | super::pte::RW | super::pte::D);
                    self.tlb.add(base, PMD_SIZE);
                    self.flush();
                    return Ok(());
                }
                let new = self
                    .mm
                    .alloc_page(flags::ANON | flags::HUGETLB, HUGE_ORDER, false)
                    .map_err(|_| FaultError::OutOfMemory)?;
                self.mm.platform().copy(new, p.pfn, HUGE_FRAMES);
                if let Some(m) = self.mm.meta(new) {
                    m.rmap_add(RmapEntry::new(self.id, base, true));
                }
                self.stats.cow_copies += 1;
                let r = self.begin(base, base + PMD_SIZE, Event::Clear, None);
                let t = Tables::new(self.mm.platform(), self.root);
                let pte = Present { pfn: new, write: true, exec, dirty: true, young: true, huge: true };
                let old = t.swap(pmd, Pte::Present(pte).encode());
                self.tlb.add(base, PMD_SIZE);
                release_leaf(&self.mm, self.id, base, old, true);
                self.finish(r);
                Ok(())
            }
            Pte::Present(_) => {
                self.stats.spurious += 1;
                Ok(())
            }
            Pte::Soft(s) => Err(self.soft_fault_error(s)),
            Pte::Bad(_) => Err(FaultError::Corrupt),
        }
    }

    /// A CPU access to a device-exclusive entry: the device loses exclusivity (it learns
    /// through the `Exclusive` invalidation) and the normal entry comes back.
    fn restore_exclusive(&mut self, slot: Slot, va: u64, s: Soft) {
        let r = self.begin(va, va + PAGE, Event::Exclusive, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let pte = Present { pfn: s.pfn, write: s.write, exec: s.exec, dirty: s.dirty, young: true, huge: false };
        t.store(slot, Pte::Present(pte).encode());
        self.finish(r);
    }

    // ---------------------------------------------------------------------------------------
    // Access from outside (copy_from_user / copy_to_user / access_process_vm)

    /// The physical address behind `va`, faulting it in (for write: writable) if needed.
    fn resolve(&mut self, va: u64, write: bool) -> Result<u64, FaultError> {
        for _ in 0..4 {
            if let Some(Entry { pte: Pte::Present(p), huge }) = self.lookup(va)
                && (!write || p.write)
            {
                let offset = if huge { va & (PMD_SIZE - 1) } else { va & (PAGE - 1) };
                return Ok(p.pfn.addr() + offset);
            }
            self.fault(va, if write { Access::Write } else { Access::Read })?;
        }
        Err(FaultError::Corrupt)
    }

    /// Copies from the address space at `va` into `buf`, faulting pages in.
    pub fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), FaultError> {
        let mut done = 0;
        while done < buf.len() {
            let at = va.checked_add(done as u64).ok_or(FaultError::NoMapping)?;
            let chunk = ((PAGE - (at % PAGE)) as usize).min(buf.len() - done);
            let pa = self.resolve(at, false)?;
            self.mm.platform().read(pa, &mut buf[done..done + chunk]);
            done += chunk;
        }
        Ok(())
    }

    /// Copies `data` into the address space at `va`, faulting pages in (breaking COW).
    pub fn write(&mut self, va: u64, data: &[u8]) -> Result<(), FaultError> {
        let mut done = 0;
        while done < data.len() {
            let at = va.checked_add(done as u64).ok_or(FaultError::NoMapping)?;
            let chunk = ((PAGE - (at % PAGE)) as usize).min(data.len() - done);
            let pa = self.resolve(at, true)?;
            self.mm.platform().write(pa, &data[done..done + chunk]);
            done += chunk;
        }
        Ok(())
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
