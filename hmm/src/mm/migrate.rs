//! Device migration: `migrate_vma_setup` / `migrate_vma_pages` / `migrate_vma_finalize`
//! (`mm/migrate_device.c`) and the VMA-less `migrate_device_range` eviction.
//!
//! A migration moves the pages of a virtual range between system RAM and device memory in
//! three steps, with the driver's copy in between:
//!
//! 1. [`AddressSpace::migrate_vma_setup`] *collects*: under one `Migrate` invalidation (with
//!    the driver's owner, so the driver can skip its own), every selected page is locked, its
//!    entry becomes a migration entry (write, dirty, young and exec carried in the entry: pitfall
//!    P4), and its reverse-map entry is dropped; the entry's page reference passes to the
//!    migration. Holes of private anonymous memory and zero pages are collected with no page
//!    (with `WRITE` when the mapping is writable). The result is a [`MigrateVma`] guard with `src` filled.
//! 2. The driver allocates destination pages (locked, one reference), copies, and fills
//!    [`MigrateVma::dst_mut`]; leaving an entry 0 declines that page.
//! 3. [`MigrateVma::pages`] is the commit point: entries whose destination is missing, whose
//!    hole was filled meanwhile, or that would put a file page in device memory lose `MIGRATE`.
//!    Holes are filled here. [`MigrateVma::finalize`] (or dropping the guard) replaces every
//!    migration entry by the new page, or by the old one where the migration was declined,
//!    unlocks both and drops the references the migration held. Every failure path restores
//!    the old page: data is never lost. The entry rebuilt in place of a migration entry takes
//!    write, dirty and young from that entry and its rights (exec, `PROT_NONE`) from the VMA
//!    as it is then (`remove_migration_pte`), so an `mprotect` during the migration holds.
//!
//! 2 MiB pages (`SELECT_COMPOUND`, `MIGRATE_PFN_COMPOUND`): with the flag, a PMD-mapped THP,
//! device THP or huge zero page, and an empty THP-eligible 2 MiB hole, lying wholly in the
//! range, is collected as one entry (the other 511 are 0) under one PMD-level migration entry.
//! A 2 MiB destination moves it whole; base-page destinations make [`MigrateVma::pages`]
//! split the source (the 4 KiB fallback: the migration entry becomes a table of 512, the folio
//! 512 base pages); no destination declines it whole. Without the flag, huge mappings are
//! split to 4 KiB before collecting. Eviction by [`migrate_device_range`] splits a mapped
//! device THP first (its per-page driver data lives in the pagemap, so each page keeps it).
//!
//! Pages mapped by other address spaces too (copy-on-write after fork) are migrated for this
//! mapping only: the others keep the old page, and the new entry is read-only, so the pages
//! stay a valid copy-on-write pair. Pinned pages (references beyond their mappings) are not
//! migrated (pitfall P5: partial migration is normal).
//!
//! [`migrate_device_range`] evicts device pages by frame number, through their reverse map,
//! with no VMA: the driver-unbind and memory-removal path. It holds no address-space lock
//! between its steps, so its migration entries keep their reverse-map entries and the finalize
//! finds them through the reverse map wherever `mremap` moved them (`remove_migration_ptes`).
//! A [`MigrateVma`] holds its address space (`&mut`, the mmap lock) from setup to finalize,
//! so no `mremap` or `munmap` can run in between.

use super::frame::{RmapEntry, flags};
use super::notify::{Event, Owner};
use super::pagetable::{PMD_SIZE, PteLookup, Slot, Tables};
use super::platform::TlbFlush;
use super::pte::{Present, Pte, Soft, SoftKind, table_entry};
use super::space::{AddressSpace, PAGE};
use super::vma::Prot;
use super::{Error, HUGE_FRAMES, HUGE_ORDER, Mm};
use crate::addr::Pfn;
use alloc::vec::Vec;

/// `MIGRATE_PFN_*`: one entry of `src` / `dst`, Linux's encoding (`pfn << 6 | flags`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigratePfn(pub u64);

impl MigratePfn {
    /// `MIGRATE_PFN_VALID`: a page is named.
    pub const VALID: u64 = 1 << 0;
    /// `MIGRATE_PFN_MIGRATE`: the entry is (still) being migrated.
    pub const MIGRATE: u64 = 1 << 1;
    /// `MIGRATE_PFN_WRITE`: the mapping was writable.
    pub const WRITE: u64 = 1 << 3;
    /// `MIGRATE_PFN_COMPOUND`: the entry stands for a 2 MiB page.
    pub const COMPOUND: u64 = 1 << 4;
    /// `MIGRATE_PFN_SHIFT`.
    pub const SHIFT: u32 = 6;

    /// `migrate_pfn(pfn)`: a valid entry for `pfn`.
    pub const fn new(pfn: Pfn) -> Self {
        Self((pfn.0 << Self::SHIFT) | Self::VALID)
    }
    /// The page, if the entry names one.
    pub const fn pfn(self) -> Option<Pfn> {
        if self.0 & Self::VALID != 0 { Some(Pfn(self.0 >> Self::SHIFT)) } else { None }
    }
    /// Whether the entry is being migrated.
    pub const fn is_migrate(self) -> bool {
        self.0 & Self::MIGRATE != 0
    }
    /// Whether the source mapping was writable.
    pub const fn is_write(self) -> bool {
        self.0 & Self::WRITE != 0
    }
    /// The entry with `WRITE` set.
    pub const fn with_write(self, write: bool) -> Self {
        if write { Self(self.0 | Self::WRITE) } else { Self(self.0 & !Self::WRITE) }
    }
    /// Whether the entry stands for a whole 2 MiB page (or a 2 MiB hole).
    pub const fn is_compound(self) -> bool {
        self.0 & Self::COMPOUND != 0
    }
    /// The entry with `COMPOUND` set: a destination that is one 2 MiB page.
    pub const fn with_compound(self) -> Self {
        Self(self.0 | Self::COMPOUND)
    }
    fn migrating(self) -> Self {
        Self(self.0 | Self::MIGRATE)
    }
    fn declined(self) -> Self {
        Self(self.0 & !Self::MIGRATE)
    }
}

/// Which pages `migrate_vma_setup` collects (`MIGRATE_VMA_SELECT_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Select {
    /// System pages, zero pages and holes in anonymous memory.
    pub system: bool,
    /// Device-private pages whose pagemap owner is the migration's owner.
    pub device_private: bool,
    /// Device-coherent pages whose pagemap owner is the migration's owner.
    pub device_coherent: bool,
    /// `MIGRATE_VMA_SELECT_COMPOUND`: a PMD-mapped page (a THP, a device THP, the huge zero
    /// page) or an empty, THP-eligible 2 MiB hole lying wholly in the range is collected as
    /// one entry with `COMPOUND` set, the other 511 entries 0. Without it huge mappings are
    /// split to 4 KiB first.
    pub compound: bool,
}

impl Select {
    /// `MIGRATE_VMA_SELECT_SYSTEM`.
    pub const SYSTEM: Select = Select { system: true, device_private: false, device_coherent: false, compound: false };
    /// `MIGRATE_VMA_SELECT_DEVICE_PRIVATE`.
    pub const DEVICE_PRIVATE: Select =
        Select { system: false, device_private: true, device_coherent: false, compound: false };
    /// `MIGRATE_VMA_SELECT_DEVICE_COHERENT`.
    pub const DEVICE_COHERENT: Select =
        Select { system: false, device_private: false, device_coherent: true, compound: false };

    /// The same selection with `MIGRATE_VMA_SELECT_COMPOUND` added.
    pub const fn compound(self) -> Select {
        Select { compound: true, ..self }
    }
}

/// The arguments of `migrate_vma_setup` (`struct migrate_vma` inputs).
#[derive(Debug, Clone, Copy)]
pub struct MigrateArgs {
    /// First address (page-aligned).
    pub start: u64,
    /// One past the last address; `[start, end)` must lie in one VMA.
    pub end: u64,
    /// The pagemap owner driving the migration (`pgmap_owner`).
    pub owner: Owner,
    /// What to collect.
    pub select: Select,
    /// The device-private page a CPU fault is migrating (locked and referenced by the fault
    /// path), for `migrate_to_ram`.
    pub fault_page: Option<Pfn>,
}

#[derive(Debug, Clone, Copy, Default)]
struct SrcInfo {
    /// A migration entry was installed (src names a page).
    entry: bool,
    /// The entry's bits, restored or carried to the new page.
    write: bool,
    dirty: bool,
    young: bool,
    /// Other mappings keep the old page: the new entry is read-only.
    shared: bool,
    /// The entry is a PMD (a 2 MiB page).
    huge: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Collected,
    Committed,
    Done,
}

/// A migration in progress (`struct migrate_vma` between setup and finalize). Holds the
/// address space (the mmap lock) until it is finalized; dropping it finalizes.
///
/// So nothing changes the address space's mappings in between: its migration entries stay
/// where setup put them, and the finalize finds them there. An `mremap` (or `munmap`, fork)
/// during the migration does not compile:
///
/// ```compile_fail,E0499
/// # use hmm::mm::space::{AddressSpace, RemapFlags};
/// # use hmm::mm::migrate::MigrateArgs;
/// fn migrate_and_move(s: &mut AddressSpace, args: MigrateArgs, to: u64) {
///     let mig = s.migrate_vma_setup(args).unwrap();
///     let how = RemapFlags { may_move: true, fixed: true, dont_unmap: false };
///     let _ = s.mremap(args.start, args.end - args.start, args.end - args.start, how, to);
///     mig.finalize();
/// }
/// ```
///
/// It does once the migration is finalized:
///
/// ```
/// # use hmm::mm::space::{AddressSpace, RemapFlags};
/// # use hmm::mm::migrate::MigrateArgs;
/// fn migrate_and_move(s: &mut AddressSpace, args: MigrateArgs, to: u64) {
///     let mig = s.migrate_vma_setup(args).unwrap();
///     mig.finalize();
///     let how = RemapFlags { may_move: true, fixed: true, dont_unmap: false };
///     let _ = s.mremap(args.start, args.end - args.start, args.end - args.start, how, to);
/// }
/// ```
pub struct MigrateVma<'a> {
    space: &'a mut AddressSpace,
    args: MigrateArgs,
    src: Vec<MigratePfn>,
    dst: Vec<MigratePfn>,
    info: Vec<SrcInfo>,
    cpages: usize,
    stage: Stage,
}

impl core::fmt::Debug for MigrateVma<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MigrateVma")
            .field("start", &self.args.start)
            .field("end", &self.args.end)
            .field("cpages", &self.cpages)
            .finish_non_exhaustive()
    }
}

fn device_kind(mm: &Mm, pfn: Pfn) -> Option<(Owner, bool)> {
    mm.device_memory().and_then(|d| d.owner_of(pfn))
}

/// The entry that maps `pfn` where a migration entry carrying `i` was, in a mapping whose
/// protection is now `prot` (`remove_migration_pte`): rights and exec come from the mapping as
/// it is now (an `mprotect` during the migration counts), write only if the migration entry
/// was writable too; in a `PROT_NONE` mapping a page of RAM gets a `PROT_NONE` entry.
fn entry_for(mm: &Mm, pfn: Pfn, i: SrcInfo, prot: Prot) -> u64 {
    let write = i.write && !i.shared && prot.write();
    let exec = prot.exec();
    let private = mm.meta(pfn).is_some_and(|m| m.has(flags::DEVICE)) && device_kind(mm, pfn).is_some_and(|(_, p)| p);
    let soft = |kind| Pte::Soft(Soft { kind, pfn, write, young: i.young, dirty: i.dirty, huge: i.huge, exec }).encode();
    if private {
        soft(SoftKind::DevicePrivate)
    } else if prot.is_none() {
        soft(SoftKind::ProtNone)
    } else {
        Pte::Present(Present { pfn, write, exec, dirty: i.dirty, young: i.young, huge: i.huge }).encode()
    }
}

/// What `migrate_vma_setup` needs to collect one leaf.
struct Collector<'a> {
    mm: &'a Mm,
    t: Tables<'a>,
    id: u32,
    owner: Owner,
    select: Select,
    fault_page: Option<Pfn>,
}

impl Collector<'_> {
    /// Collects the non-zero-page leaf `raw` at `slot` (a PMD leaf when `huge`): locks its
    /// page and replaces the leaf by a migration entry. `None` when the page is not selected,
    /// is locked by someone else or is pinned.
    fn leaf(&self, tlb: &mut TlbFlush, slot: Slot, va: u64, raw: u64, huge: bool) -> Option<(MigratePfn, SrcInfo)> {
        let mm = self.mm;
        let (pfn, write, dirty, young, exec) = match Pte::decode(raw) {
            Pte::Present(p) => {
                let eligible = match device_kind(mm, p.pfn) {
                    Some((o, false)) => self.select.device_coherent && o == self.owner,
                    Some((_, true)) => false,
                    None => self.select.system,
                };
                if !eligible {
                    return None;
                }
                (p.pfn, p.write, p.dirty, p.young, p.exec)
            }
            Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => {
                if !(self.select.device_private && device_kind(mm, s.pfn).is_some_and(|(o, _)| o == self.owner)) {
                    return None;
                }
                (s.pfn, s.write, s.dirty, s.young, s.exec)
            }
            _ => return None,
        };
        let m = mm.meta(pfn)?;
        if m.flags() & (flags::ANON | flags::FILE | flags::DEVICE) == 0 || m.has(flags::HUGETLB) || m.has(flags::TAIL) {
            // Not migratable, or a subpage of a pinned huge page that could not be split.
            return None;
        }
        if huge != (m.order() == HUGE_ORDER) {
            // A PMD must map a whole 2 MiB compound page and a PTE a base page.
            return None;
        }
        let is_fault_page = self.fault_page == Some(pfn);
        if !is_fault_page && !m.trylock() {
            return None;
        }
        // The entry's reference passes to the migration; the fault path holds one more on
        // the fault page, a file page one for the page cache.
        let expected = 1 + u32::from(is_fault_page) + u32::from(m.has(flags::FILE));
        let others = m.mapcount().saturating_sub(1);
        if m.refcount() > expected + others {
            // Pinned (GUP): leave it where it is.
            if !is_fault_page {
                m.unlock();
            }
            return None;
        }
        let mig = Soft { kind: SoftKind::Migration, pfn, write, young, dirty, huge, exec };
        self.t.swap(slot, Pte::Soft(mig).encode());
        tlb.add(va, if huge { PMD_SIZE } else { PAGE });
        m.rmap_remove(RmapEntry::new(self.id, va, huge));
        if dirty {
            m.set(flags::DIRTY);
        }
        let mut e = MigratePfn::new(pfn).migrating().with_write(write);
        if huge {
            e = e.with_compound();
        }
        Some((e, SrcInfo { entry: true, write, dirty, young, shared: others > 0, huge }))
    }
}

impl AddressSpace {
    /// `migrate_vma_setup`: validates the range, collects and unmaps the selected pages. See
    /// the module documentation.
    ///
    /// Errors (`Invalid`, Linux's `-EINVAL`): an unaligned or empty range, a range not inside
    /// one VMA, an explicit huge page (hugetlb) VMA, or a `fault_page` that is not a locked
    /// device-private page.
    pub fn migrate_vma_setup(&mut self, args: MigrateArgs) -> Result<MigrateVma<'_>, Error> {
        let MigrateArgs { start, end, owner, select, fault_page } = args;
        if !start.is_multiple_of(PAGE) || !end.is_multiple_of(PAGE) {
            return Err(Error::Invalid("migration range is not page-aligned"));
        }
        if start >= end {
            return Err(Error::Invalid("migration range is empty"));
        }
        let vma = self.vmas.find(start).cloned().ok_or(Error::Invalid("no VMA at the migration start"))?;
        if end > vma.end {
            return Err(Error::Invalid("migration range is not inside one VMA"));
        }
        if vma.flags.hugetlb {
            return Err(Error::Invalid("explicit huge page (hugetlb) mappings cannot be migrated"));
        }
        if let Some(fp) = fault_page {
            let private = device_kind(&self.mm, fp).is_some_and(|(_, p)| p);
            if !private || !self.mm.meta(fp).is_some_and(|m| m.has(flags::LOCKED)) {
                return Err(Error::Invalid("fault_page must be a locked device-private page"));
            }
        }
        let n = ((end - start) / PAGE) as usize;
        // Huge leaves: with SELECT_COMPOUND the ones wholly inside the range are collected
        // whole and only those straddling an end are split; without it every one is split to
        // 4 KiB (the fallback). A huge page that cannot be split (pinned) stays and is not
        // collected.
        let _ = if select.compound { self.split_boundaries(start, end) } else { self.split_all(start, end, true) };
        // Holes of private anonymous memory are collected whatever the selection (Linux 6.1's
        // migrate_vma_collect_hole and pte_none); the zero page only with SELECT_SYSTEM.
        let anon_holes = vma.is_anon() && vma.is_cow();
        // A hole or zero page of a writable mapping is writable where it goes (what Linux's
        // test driver derives from the VMA for a source without a page: `!spage && VM_WRITE`).
        let empty = MigratePfn(MigratePfn::MIGRATE).with_write(vma.prot.write());
        let hole = if anon_holes { empty } else { MigratePfn(0) };
        let mut src = alloc::vec![hole; n];
        let mut info = alloc::vec![SrcInfo::default(); n];
        // Empty, THP-eligible PMDs wholly inside the range are compound holes.
        let mut huge_holes = Vec::new();
        if select.compound && anon_holes {
            let mut b = start.next_multiple_of(PMD_SIZE);
            while b + PMD_SIZE <= end {
                let none = match self.tables().pmd(b, false) {
                    Ok(Some(slot)) => self.tables().load(slot) == 0,
                    Ok(None) => true,
                    Err(_) => false,
                };
                if none && self.thp_eligible(&vma, b) {
                    huge_holes.push(((b - start) / PAGE) as usize);
                }
                b += PMD_SIZE;
            }
        }
        let r = self.begin(start, end, Event::Migrate, Some(owner));
        let mm = self.mm.clone();
        let c = Collector { mm: &mm, t: Tables::new(mm.platform(), self.root), id: self.id, owner, select, fault_page };
        let tlb = &mut self.tlb;
        let _ = c.t.walk::<(), _>(start, end, &mut |l| {
            let i = ((l.va.max(start) - start) / PAGE) as usize;
            if l.huge {
                let stop = (((l.va + PMD_SIZE).min(end) - start) / PAGE) as usize;
                src[i..stop].fill(MigratePfn(0));
                if !(select.compound && l.va >= start && l.va + PMD_SIZE <= end) {
                    return Ok(());
                }
            } else {
                src[i] = MigratePfn(0);
            }
            if matches!(Pte::decode(l.raw), Pte::Present(p) if mm.is_zero(p.pfn)) {
                // The zero page (huge or not) is collected like a hole.
                if l.huge && anon_holes && select.system {
                    src[i] = empty.with_compound();
                } else if !l.huge && select.system {
                    src[i] = empty;
                }
                return Ok(());
            }
            if let Some((e, inf)) = c.leaf(tlb, l.slot, l.va, l.raw, l.huge) {
                src[i] = e;
                info[i] = inf;
            }
            Ok(())
        });
        for i in huge_holes {
            src[i] = empty.with_compound();
            src[i + 1..i + HUGE_FRAMES as usize].fill(MigratePfn(0));
        }
        self.finish(r);
        let cpages = src.iter().filter(|s| s.is_migrate()).count();
        Ok(MigrateVma {
            space: self,
            args,
            src,
            dst: alloc::vec![MigratePfn(0); n],
            info,
            cpages,
            stage: Stage::Collected,
        })
    }
}

impl MigrateVma<'_> {
    /// The collected sources (read-only after setup).
    pub fn src(&self) -> &[MigratePfn] {
        &self.src
    }
    /// The destinations the driver fills (before [`pages`](Self::pages)).
    pub fn dst_mut(&mut self) -> &mut [MigratePfn] {
        &mut self.dst
    }
    /// The destinations.
    pub fn dst(&self) -> &[MigratePfn] {
        &self.dst
    }
    /// Entries collected by setup (`cpages`).
    pub fn cpages(&self) -> usize {
        self.cpages
    }
    /// The first address.
    pub fn start(&self) -> u64 {
        self.args.start
    }
    /// The memory manager (for the driver's copies).
    pub fn mm(&self) -> &alloc::sync::Arc<Mm> {
        &self.space.mm
    }

    /// `migrate_vma_pages`: the commit point. Afterwards `src()[i].is_migrate()` says which
    /// entries really move; only those may go into the device's page table (pitfall P5).
    ///
    /// A compound source whose destination is one 2 MiB page (`COMPOUND` in `dst`) moves
    /// whole. One whose driver fell back to base pages (`dst[i..i + 512]` without `COMPOUND`)
    /// is split here: the huge migration entry becomes 512 migration entries and the source
    /// folio 512 base pages (or the hole 512 holes), which then move one by one; pages left
    /// without a destination stay where they are. With no destination at all it is declined
    /// whole.
    pub fn pages(&mut self) {
        if self.stage != Stage::Collected {
            return;
        }
        self.settle_compound();
        let mm = self.space.mm.clone();
        let start = self.args.start;
        let vma = self.space.vmas.find(start).cloned();
        let mut holes = Vec::new();
        for i in 0..self.src.len() {
            if !self.src[i].is_migrate() {
                continue;
            }
            let d = self.dst[i];
            let Some(dpfn) = d.pfn() else {
                self.src[i] = self.src[i].declined();
                continue;
            };
            if d.is_compound() != self.src[i].is_compound() {
                // A 2 MiB destination for a base page (or the reverse) cannot be mapped.
                self.src[i] = self.src[i].declined();
                continue;
            }
            match self.src[i].pfn() {
                Some(spfn) => {
                    let to_device = mm.meta(dpfn).is_some_and(|m| m.has(flags::DEVICE));
                    let file = mm.meta(spfn).is_some_and(|m| m.has(flags::FILE));
                    if file && to_device {
                        // Only anonymous memory may live in device memory.
                        self.src[i] = self.src[i].declined();
                        continue;
                    }
                    if let (Some(s), Some(d)) = (mm.meta(spfn), mm.meta(dpfn))
                        && s.has(flags::DIRTY)
                    {
                        d.set(flags::DIRTY);
                    }
                }
                None => holes.push(i),
            }
        }
        if !holes.is_empty() {
            let Some(vma) = vma else { return };
            let r = self.space.begin(start, self.args.end, Event::Migrate, Some(self.args.owner));
            let id = self.space.id;
            for i in holes {
                let va = start + i as u64 * PAGE;
                let dpfn = self.dst[i].pfn().unwrap_or(Pfn(0));
                let huge = self.src[i].is_compound();
                let t = Tables::new(mm.platform(), self.space.root);
                let slot = if huge {
                    t.pmd(va, true).ok().flatten()
                } else {
                    match t.pte(va, true) {
                        Ok(PteLookup::Pte(s)) => Some(s),
                        _ => None,
                    }
                };
                let old = slot.map_or(0, |s| t.load(s));
                // A hole may take the page if it is still empty or maps a zero page (a PMD
                // holding a page table is not empty).
                let replaceable = match Pte::decode(old) {
                    Pte::None => true,
                    Pte::Present(p) => mm.is_zero(p.pfn) && p.huge == huge,
                    _ => false,
                };
                let Some(slot) = slot.filter(|_| replaceable) else {
                    self.src[i] = self.src[i].declined();
                    continue;
                };
                let inf = SrcInfo {
                    write: vma.prot.write(),
                    dirty: vma.prot.write(),
                    young: true,
                    huge,
                    ..SrcInfo::default()
                };
                mm.get_page(dpfn);
                if let Some(m) = mm.meta(dpfn) {
                    m.rmap_add(RmapEntry::new(id, va, huge));
                }
                t.swap(slot, entry_for(&mm, dpfn, inf, vma.prot));
                if old != 0 {
                    self.space.tlb.add(va, if huge { PMD_SIZE } else { PAGE });
                }
                self.info[i] = inf;
            }
            self.space.finish(r);
        }
        self.stage = Stage::Committed;
    }

    /// Decides every compound source: whole (a compound destination), split (base-page
    /// destinations), or declined (no destination).
    fn settle_compound(&mut self) {
        let n = self.src.len();
        for i in 0..n {
            let s = self.src[i];
            if !(s.is_compound() && s.is_migrate()) || self.dst[i].is_compound() {
                continue;
            }
            let end = (i + HUGE_FRAMES as usize).min(n);
            if self.dst[i..end].iter().all(|d| d.pfn().is_none()) {
                self.src[i] = s.declined();
                continue;
            }
            if self.split_source(i).is_err() {
                self.src[i] = s.declined();
            }
        }
    }

    /// Splits compound source `i` into 512 base-page sources (the 4 KiB fallback).
    fn split_source(&mut self, i: usize) -> Result<(), Error> {
        let va = self.args.start + i as u64 * PAGE;
        let s = self.src[i];
        let inf = self.info[i];
        let mm = self.space.mm.clone();
        let Some(head) = s.pfn() else {
            // A hole: a huge zero page there becomes 512 zero-page PTEs, then 512 holes.
            self.space.split_pmd_at(va)?;
            self.src[i..i + HUGE_FRAMES as usize].fill(MigratePfn(MigratePfn::MIGRATE).with_write(s.is_write()));
            return Ok(());
        };
        let t = Tables::new(mm.platform(), self.space.root);
        let pmd = t.pmd(va, false).ok().flatten().ok_or(Error::Busy("migration entry vanished"))?;
        let raw = t.load(pmd);
        let Pte::Soft(mig) = Pte::decode(raw) else { return Err(Error::Busy("migration entry vanished")) };
        if mig.kind != SoftKind::Migration || !mig.huge || mig.pfn != head {
            return Err(Error::Busy("migration entry vanished"));
        }
        let pt = Tables::alloc_table(mm.platform()).map_err(|_| Error::NoMemory)?;
        for k in 0..HUGE_FRAMES {
            let e = Soft { pfn: Pfn(head.0 + k), huge: false, ..mig };
            mm.platform().store(pt, k as usize, Pte::Soft(e).encode());
        }
        let r = self.space.begin(va, va + PMD_SIZE, Event::Migrate, Some(self.args.owner));
        t.store(pmd, table_entry(pt));
        self.space.tlb.add(va, PMD_SIZE);
        self.space.finish(r);
        // The migration held the folio's reference and lock; now it holds every base page's.
        mm.split_folio(head, flags::LOCKED);
        mm.stats.thp_splits.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        for k in 0..HUGE_FRAMES as usize {
            self.src[i + k] = MigratePfn::new(Pfn(head.0 + k as u64)).migrating().with_write(s.is_write());
            self.info[i + k] = SrcInfo { huge: false, ..inf };
        }
        Ok(())
    }

    /// `migrate_vma_finalize`: every migration entry points at its new page (or back at the
    /// old one), pages are unlocked and the migration's references dropped.
    pub fn finalize(mut self) {
        self.finish_all();
    }

    fn finish_all(&mut self) {
        if self.stage == Stage::Done {
            return;
        }
        let committed = self.stage == Stage::Committed;
        let mm = self.space.mm.clone();
        let id = self.space.id;
        let t = Tables::new(mm.platform(), self.space.root);
        // The range lies in one VMA, which cannot change while the migration holds the space.
        let prot = self.space.vmas.find(self.args.start).map_or(Prot::NONE, |v| v.prot);
        for i in 0..self.src.len() {
            let inf = self.info[i];
            let dst = self.dst[i].pfn();
            let va = self.args.start + i as u64 * PAGE;
            if inf.entry {
                let Some(spfn) = self.src[i].pfn() else { continue };
                let moved = committed && self.src[i].is_migrate() && dst.is_some();
                let new = if moved { dst.unwrap_or(spfn) } else { spfn };
                let slot = if inf.huge {
                    t.pmd(va, false).ok().flatten()
                } else {
                    match t.pte(va, false) {
                        Ok(PteLookup::Pte(s)) => Some(s),
                        _ => None,
                    }
                };
                let ours = slot.is_some_and(|s| {
                    matches!(Pte::decode(t.load(s)),
                        Pte::Soft(x) if x.kind == SoftKind::Migration && x.pfn == spfn && x.huge == inf.huge)
                });
                if let (Some(slot), true) = (slot, ours) {
                    if new != spfn {
                        mm.get_page(new);
                    }
                    if let Some(m) = mm.meta(new) {
                        m.rmap_add(RmapEntry::new(id, va, inf.huge));
                    }
                    let restore = SrcInfo { shared: inf.shared && new != spfn, ..inf };
                    t.store(slot, entry_for(&mm, new, restore, prot));
                    if new != spfn {
                        mm.put_page(spfn);
                    }
                } else {
                    // The entry went away meanwhile (cannot happen while we hold the space,
                    // kept for safety): the migration's reference is ours to drop.
                    mm.put_page(spfn);
                }
                if self.args.fault_page != Some(spfn)
                    && let Some(m) = mm.meta(spfn)
                {
                    m.unlock();
                }
            }
            if let Some(d) = dst {
                if let Some(m) = mm.meta(d) {
                    m.unlock();
                }
                // The driver's reference (a mapping took its own if the page was used).
                mm.put_page(d);
            }
        }
        self.stage = Stage::Done;
    }
}

impl Drop for MigrateVma<'_> {
    fn drop(&mut self) {
        self.finish_all();
    }
}

// ------------------------------------------------------------------------------------------
// VMA-less eviction

/// What [`AddressSpace::unmap_for_migration`] found at a mapping of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unmap {
    /// The mapping became a migration entry; the migration holds its page reference now.
    Replaced {
        /// The mapping was writable.
        write: bool,
    },
    /// Already a migration entry of the page: one this eviction made, or fork's copy of one.
    Migrating,
    /// Not a 4 KiB mapping of the page (or its address space is going away).
    Failed,
}

/// How many times [`migrate_device_range`] goes over a page's mappings: once to replace them,
/// once more to see that a fork meanwhile did not copy one it had not reached yet.
const UNMAP_PASSES: usize = 4;

/// A device-range migration in progress (`migrate_device_range` .. `migrate_device_finalize`).
/// Dropping it finalizes. No address-space lock may be held while it runs: it takes each
/// mapping's space lock in turn, and holds none in between.
///
/// Because it holds no address-space lock, the address spaces go on changing around its
/// migration entries: an `mremap` moves one, `munmap` removes one, fork copies one. So every
/// migration entry it makes keeps its mapping's reverse-map entry (which those operations move,
/// drop and copy with it), and the finalize finds the entries through the reverse map, wherever
/// they are then, as Linux's `remove_migration_ptes` walks the folio's rmap.
pub struct DeviceMigration<'a> {
    mm: &'a Mm,
    src: Vec<MigratePfn>,
    dst: Vec<MigratePfn>,
    /// Per page: the page references the migration holds for the mappings it replaced.
    held: Vec<u32>,
    committed: bool,
    done: bool,
}

impl core::fmt::Debug for DeviceMigration<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceMigration").field("pages", &self.src.len()).finish_non_exhaustive()
    }
}

/// `migrate_device_range(src, start_pfn, npages)`: takes the allocated device pages of
/// `[start, start + n)` out of every address space that maps them (migration entries through
/// the reverse map), for the driver to copy out. Free pages, pages locked by someone else and
/// pages still mapped where no migration entry could replace the mapping are left (entry 0;
/// the mappings that were replaced get the page back).
pub fn migrate_device_range(mm: &Mm, start: Pfn, n: u64) -> DeviceMigration<'_> {
    let mut src = alloc::vec![MigratePfn(0); n as usize];
    let mut held = alloc::vec![0; n as usize];
    for i in 0..n as usize {
        let pfn = Pfn(start.0 + i as u64);
        let Some(m) = mm.meta(pfn) else { continue };
        if m.order() > 0 && m.has(flags::DEVICE) {
            // A device THP is evicted as base pages: split it at its mapping first (its
            // per-page driver data stays with each page).
            for e in m.rmap() {
                if let Some(space) = mm.space(e.space) {
                    let _ = space.lock().split_pmd_at(e.va());
                }
            }
            if m.order() > 0 {
                // Not mapped, or the split was refused (pinned): leave it.
                continue;
            }
        }
        if m.refcount() == 0 || !m.has(flags::DEVICE) || !m.trylock() {
            continue;
        }
        m.get();
        let mut write = false;
        // Until a pass replaces nothing: a fork between two address spaces' turns can copy a
        // mapping not replaced yet into a new address space (its migration entries copied
        // there are fine: they are the migration's too).
        let mut settled = false;
        for _ in 0..UNMAP_PASSES {
            let (mut replaced, mut failed) = (false, false);
            for e in m.rmap() {
                let Some(space) = mm.space(e.space) else {
                    failed = true;
                    continue;
                };
                match space.lock().unmap_for_migration(e.va(), pfn) {
                    Unmap::Replaced { write: w } => {
                        write |= w;
                        held[i] += 1;
                        replaced = true;
                    }
                    Unmap::Migrating => {}
                    Unmap::Failed => failed = true,
                }
            }
            if failed {
                break;
            }
            if !replaced {
                settled = true;
                break;
            }
        }
        if !settled {
            // Still mapped somewhere (a mapping that could not be replaced): not migrated
            // (migrate_vma_unmap). The mappings replaced get the page back, wherever they are
            // now, and the references the migration held for them go.
            remove_migration_ptes(mm, pfn, pfn);
            for _ in 0..core::mem::take(&mut held[i]) {
                mm.put_page(pfn);
            }
            m.unlock();
            mm.put_page(pfn);
            continue;
        }
        src[i] = MigratePfn::new(pfn).migrating().with_write(write);
    }
    DeviceMigration { mm, src, dst: alloc::vec![MigratePfn(0); n as usize], held, committed: false, done: false }
}

/// `remove_migration_ptes(old, new)`: every migration entry of `old` (found through the
/// reverse map: the eviction's own, moved by `mremap` or not, and fork's copies) maps `new`
/// instead, with a reference on it. The references the migration held are the caller's to
/// drop. Takes each address space's lock in turn.
fn remove_migration_ptes(mm: &Mm, old: Pfn, new: Pfn) {
    for e in mm.meta(old).map(|m| m.rmap()).unwrap_or_default() {
        if let Some(space) = mm.space(e.space) {
            space.lock().remap_migration_entry(e.va(), old, new);
        }
    }
}

impl AddressSpace {
    /// Turns the entry at `va` that maps `pfn` into a migration entry (for eviction). The
    /// migration entry keeps the mapping's reverse-map entry (so that the finalize finds it
    /// wherever it moves), and its page reference passes to the migration.
    fn unmap_for_migration(&mut self, va: u64, pfn: Pfn) -> Unmap {
        let t = Tables::new(self.mm.platform(), self.root);
        let Ok(PteLookup::Pte(slot)) = t.pte(va, false) else { return Unmap::Failed };
        let (write, dirty, young, exec) = match Pte::decode(t.load(slot)) {
            Pte::Soft(s) if s.pfn == pfn && s.kind == SoftKind::Migration => return Unmap::Migrating,
            Pte::Soft(s) if s.pfn == pfn => (s.write, s.dirty, s.young, s.exec),
            Pte::Present(p) if p.pfn == pfn => (p.write, p.dirty, p.young, p.exec),
            _ => return Unmap::Failed,
        };
        let r = self.begin(va, va + PAGE, Event::Migrate, None);
        let mig = Soft { kind: SoftKind::Migration, pfn, write, young, dirty, huge: false, exec };
        let t = Tables::new(self.mm.platform(), self.root);
        t.swap(slot, Pte::Soft(mig).encode());
        self.tlb.add(va, PAGE);
        self.finish(r);
        Unmap::Replaced { write }
    }

    /// Replaces the migration entry of `old` at `va` (it holds a reverse-map entry, no
    /// reference) by an entry of `new`, which it references; `false` if there is none. The new
    /// entry takes write, dirty and young from the migration entry as it is now (an
    /// `mprotect` or fork meanwhile downgraded it) and its rights from the VMA.
    fn remap_migration_entry(&mut self, va: u64, old: Pfn, new: Pfn) -> bool {
        let t = Tables::new(self.mm.platform(), self.root);
        let Ok(PteLookup::Pte(slot)) = t.pte(va, false) else { return false };
        let cur = match Pte::decode(t.load(slot)) {
            Pte::Soft(s) if s.kind == SoftKind::Migration && s.pfn == old => s,
            _ => return false,
        };
        let Some(prot) = self.vmas.find(va).map(|v| v.prot) else { return false };
        let e = RmapEntry::new(self.id, va, false);
        if new != old {
            if let Some(m) = self.mm.meta(old) {
                m.rmap_remove(e);
            }
            if let Some(m) = self.mm.meta(new) {
                m.rmap_add(e);
            }
        }
        self.mm.get_page(new);
        let inf =
            SrcInfo { entry: true, write: cur.write, dirty: cur.dirty, young: cur.young, shared: false, huge: false };
        t.store(slot, entry_for(&self.mm, new, inf, prot));
        true
    }
}

impl DeviceMigration<'_> {
    /// The collected device pages.
    pub fn src(&self) -> &[MigratePfn] {
        &self.src
    }
    /// The destinations the driver fills.
    pub fn dst_mut(&mut self) -> &mut [MigratePfn] {
        &mut self.dst
    }
    /// `migrate_device_pages`: entries without a destination lose `MIGRATE`.
    pub fn pages(&mut self) {
        for (s, d) in self.src.iter_mut().zip(&self.dst) {
            if s.is_migrate() && d.pfn().is_none() {
                *s = s.declined();
            }
        }
        self.committed = true;
    }
    /// `migrate_device_finalize`.
    pub fn finalize(mut self) {
        self.finish_all();
    }

    fn finish_all(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let mm = self.mm;
        for i in 0..self.src.len() {
            let dst = self.dst[i].pfn();
            if let Some(spfn) = self.src[i].pfn() {
                let moved = self.committed && self.src[i].is_migrate() && dst.is_some();
                let new = if moved { dst.unwrap_or(spfn) } else { spfn };
                remove_migration_ptes(mm, spfn, new);
                // The references the migration held for the mappings it replaced go (each
                // entry put back took its own).
                for _ in 0..self.held[i] {
                    mm.put_page(spfn);
                }
                if let Some(m) = mm.meta(spfn) {
                    m.unlock();
                }
                mm.put_page(spfn);
            }
            if let Some(d) = dst {
                if let Some(m) = mm.meta(d) {
                    m.unlock();
                }
                mm.put_page(d);
            }
        }
    }
}

impl Drop for DeviceMigration<'_> {
    fn drop(&mut self) {
        self.finish_all();
    }
}
