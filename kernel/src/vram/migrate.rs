//! Migration of a device's pages: RAM to the device ([`migrate_to_device`]), back
//! ([`migrate_to_ram`], and `copy_out` for a CPU fault), and straight to another device
//! ([`migrate_device_to_device`]), each `migrate_vma_setup`, destinations, copies (see
//! `dma`), then `pages` and `finalize`. A failed copy declines its pages (their
//! destinations are dropped before `pages`), so the sources stay and nothing is lost.

use super::{PAGE, Vram};
use crate::copyengine::Dir;
use crate::devices::DevError;
use crate::mm::uspace;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hmm::addr::Pfn;
use hmm::devalloc::BLOCK_PAGES;
use hmm::mm::frame::flags;
use hmm::mm::migrate::{MigrateArgs, MigratePfn, MigrateVma, Select};
use hmm::mm::{Error, SharedSpace};

/// Gives back a locked, referenced destination page a migration did not use (a device page:
/// its `page_free` puts it on the device's free list; a RAM page: back to the allocator).
pub(super) fn unuse(p: Pfn) {
    let mm = uspace::mm();
    if let Some(m) = mm.meta(p) {
        m.unlock();
    }
    mm.put_page(p);
}

impl Vram {
    /// For each device page in `mig` marked to migrate: RAM, filled by DMA (a 2 MiB page for a
    /// device THP when RAM has one, else base pages). Returns how many pages were filled;
    /// failed ones are declined (the device keeps the page).
    pub(super) fn copy_out(&self, mig: &mut MigrateVma<'_>) -> Result<u64, Error> {
        let mm = uspace::mm();
        let mut ram = |huge: bool| {
            let r = mm.alloc_page(flags::ANON, if huge { 9 } else { 0 }, false).ok()?;
            if let Some(m) = mm.meta(r) {
                m.trylock();
            }
            Some(r)
        };
        let mut items = Vec::new();
        for i in 0..mig.src().len() {
            let s = mig.src()[i];
            let Some(from) = s.pfn().filter(|&p| s.is_migrate() && self.offset_of(p).is_some()) else { continue };
            // Device page k of the entry goes to RAM frame `to`.
            if !fill(mig, i, &mut ram, &|k, to| (Pfn(from.0 + k), to), &mut items) {
                break;
            }
        }
        let failed = self.transfer(Dir::ToRam, &self.runs(&items));
        let declined = decline(mig, &failed);
        self.stats.lock().declined += declined;
        Ok(items.len() as u64 - declined)
    }
}

/// Gives entry `i` of `mig` destinations from `alloc` (`alloc(true)`: a 2 MiB page): one 2 MiB
/// page for a compound source when there is one, else a base page per base page (the 4 KiB
/// fallback, which `migrate_vma_pages` splits the source for). `copy(k, destination frame)`
/// names the copy of base page `k` as `(this device's page, the other frame)`; one item per
/// base page goes to `items`, tagged with its entry. `false` when `alloc` ran out (what was
/// filled still migrates).
fn fill(
    mig: &mut MigrateVma<'_>,
    i: usize,
    alloc: &mut dyn FnMut(bool) -> Option<Pfn>,
    copy: &dyn Fn(u64, Pfn) -> (Pfn, Pfn),
    items: &mut Vec<(usize, Pfn, Pfn)>,
) -> bool {
    let s = mig.src()[i];
    if s.is_compound()
        && let Some(d) = alloc(true)
    {
        mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write()).with_compound();
        items.extend((0..BLOCK_PAGES).map(|k| {
            let (a, b) = copy(k, Pfn(d.0 + k));
            (i, a, b)
        }));
        return true;
    }
    let n = if s.is_compound() { BLOCK_PAGES } else { 1 };
    for k in 0..n {
        let Some(d) = alloc(false) else { return false };
        let j = i + k as usize;
        mig.dst_mut()[j] = MigratePfn::new(d).with_write(s.is_write());
        let (a, b) = copy(k, d);
        items.push((j, a, b));
    }
    true
}

/// Drops the destinations of entries `failed` (their copies did not happen: the sources stay);
/// returns how many pages that declines.
fn decline(mig: &mut MigrateVma<'_>, failed: &[usize]) -> u64 {
    let mut failed = failed.to_vec();
    failed.sort_unstable();
    failed.dedup();
    let mut pages = 0;
    for &i in &failed {
        let d = mig.dst()[i];
        if let Some(p) = d.pfn() {
            unuse(p);
            pages += if d.is_compound() { BLOCK_PAGES } else { 1 };
        }
        mig.dst_mut()[i] = MigratePfn(0);
    }
    pages
}

/// `pages` and `finalize`; returns the pages that moved (a 2 MiB page counts 512).
pub(super) fn settle(mut mig: MigrateVma<'_>) -> u64 {
    mig.pages();
    let moved = (0..mig.src().len())
        .filter(|&i| mig.src()[i].is_migrate())
        .filter_map(|i| mig.dst()[i].pfn().map(|_| if mig.dst()[i].is_compound() { BLOCK_PAGES } else { 1 }))
        .sum();
    mig.finalize();
    moved
}

/// Migrates `npages` at `start` of `space` to device memory; returns how many moved. A THP
/// moves whole into a 2 MiB device page (or, when the device has no free block, into base
/// pages). Pages already on a device, and pages for which device memory ran out, stay.
pub fn migrate_to_device(v: &Vram, space: &Arc<SharedSpace>, start: u64, npages: u64) -> Result<u64, DevError> {
    let mm = uspace::mm();
    let mut s = space.lock();
    let select = Select::SYSTEM.compound();
    let args = MigrateArgs { start, end: start + npages * PAGE, owner: v.owner, select, fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(DevError::MigrateSetup)?;
    crate::inject::reach(crate::inject::Point::SetUp, Some(v.device));
    let zero = mm.zero_pfn();
    let mut items = Vec::new();
    for i in 0..mig.src().len() {
        let src = mig.src()[i];
        if !src.is_migrate() {
            continue;
        }
        // An empty page is filled from the zero page.
        let from = |k: u64| src.pfn().map_or(zero, |p| Pfn(p.0 + k));
        if !fill(&mut mig, i, &mut |huge| v.alloc(huge), &|k, d| (d, from(k)), &mut items) {
            break;
        }
    }
    let failed = v.transfer(Dir::ToDevice, &v.runs(&items));
    crate::inject::reach(crate::inject::Point::Copied, Some(v.device));
    let declined = decline(&mut mig, &failed);
    let moved = settle(mig);
    let mut st = v.stats.lock();
    st.to_device += moved;
    st.declined += declined;
    Ok(moved)
}

/// Migrates this device's pages among `npages` at `start` back to RAM; returns how many moved.
pub fn migrate_to_ram(v: &Vram, space: &Arc<SharedSpace>, start: u64, npages: u64) -> Result<u64, DevError> {
    let mut s = space.lock();
    let args = MigrateArgs { start, end: start + npages * PAGE, owner: v.owner, select: v.select(), fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(DevError::MigrateSetup)?;
    v.copy_out(&mut mig).map_err(DevError::Memory)?;
    crate::inject::reach(crate::inject::Point::Copied, Some(v.device));
    let moved = settle(mig);
    v.stats.lock().to_ram += moved;
    Ok(moved)
}

/// Migrates `from`'s pages among `npages` at `start` of `space` straight into `to`'s memory:
/// `from`'s engine copies each run from its memory into `to`'s, which every other device's
/// domain maps (peer to peer, no bounce through RAM). A device THP moves whole when `to` has a
/// free block. Returns how many moved; pages for which `to` has no room, or whose copy failed,
/// stay on `from`.
pub fn migrate_device_to_device(
    from: &Vram,
    to: &Vram,
    space: &Arc<SharedSpace>,
    start: u64,
    npages: u64,
) -> Result<u64, DevError> {
    if from.device == to.device {
        return Err(DevError::SameDevice(from.device));
    }
    let mut s = space.lock();
    let args =
        MigrateArgs { start, end: start + npages * PAGE, owner: from.owner, select: from.select(), fault_page: None };
    let mut mig = s.migrate_vma_setup(args).map_err(DevError::MigrateSetup)?;
    let mut items = Vec::new();
    // The destination, as the source engine sees it: `to`'s memory at its physical address.
    let peer = |d: Pfn| to.phys_of(d).map_or(Pfn(0), |pa| Pfn(pa / PAGE));
    for i in 0..mig.src().len() {
        let src = mig.src()[i];
        let Some(sp) = src.pfn().filter(|&p| src.is_migrate() && from.offset_of(p).is_some()) else { continue };
        if !fill(&mut mig, i, &mut |huge| to.alloc(huge), &|k, d| (Pfn(sp.0 + k), peer(d)), &mut items) {
            break;
        }
    }
    let failed = from.transfer(Dir::ToRam, &from.runs(&items));
    crate::inject::reach(crate::inject::Point::Copied, Some(from.device));
    let declined = decline(&mut mig, &failed);
    let moved = settle(mig);
    from.stats.lock().declined += declined;
    to.stats.lock().to_device += moved;
    Ok(moved)
}
