//! A test device like Linux's `lib/test_hmm.c` (dmirror): the harness of the hmm-tests
//! acceptance suite.
//!
//! A [`DmirrorDevice`] is one `/dev/hmm_dmirrorN`: device memory of one kind (private pages
//! emulated by system frames, or coherent pages carved out of RAM), registered as pagemaps in
//! chunks, with a free list of 4 KiB pages and one of 2 MiB blocks. A [`Dmirror`] is one open
//! file: an interval notifier over the whole address space of the process that opened it and a
//! software device page table (virtual page → frame, with write and atomic bits). The device
//! "accesses" memory by copying through that table, as dmirror does.
//!
//! The invariants are dmirror's: the table holds no page references (the notifier keeps it
//! coherent: every CPU page-table change erases the affected entries first, the device's own
//! migrations included, and a device fault commits only what no invalidation overtook); for
//! private memory it stores the *backing* frame; a device page's driver data is its backing
//! frame.

use crate::addr::Pfn;
use crate::devpt::{DevPageTable, Entry};
use crate::mm::frame::flags;
use crate::mm::migrate::{MigrateArgs, MigratePfn, MigrateVma, Select, migrate_device_range};
use crate::mm::notify::{Owner, Range};
use crate::mm::pagetable::{PMD_SIZE, USER_END};
use crate::mm::space::{AddressSpace, FaultError};
use crate::mm::{Error, HUGE_FRAMES, HUGE_ORDER, Mm, SharedSpace};
use crate::notifier::{Interval, IntervalNotifier, IntervalOps, SeqOnly, Subscriptions};
use crate::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use crate::range::{HmmPfn, Request, fault_round};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::{Mutex, RwLock};

mod backing;
pub use backing::{Backing, RamBacking};
#[cfg(test)]
mod tests;

const PAGE: u64 = 4096;
/// Pages per range-fault round (dmirror's 64-entry `pfns` array).
const FAULT_CHUNK: u64 = 64;
/// Pages per snapshot round.
const SNAPSHOT_CHUNK: u64 = 32;
/// Pages per migration round (one PMD).
const MIGRATE_CHUNK: u64 = 512;
/// Eviction rounds of a device release before `ETIMEDOUT` (see [`DmirrorDevice::release`]).
pub const RELEASE_ROUNDS: u32 = 1000;
/// Spins between two eviction rounds of a device release.
pub const RELEASE_SPINS: u32 = 100_000;
/// Range-fault retries before `Busy` (stands in for `HMM_RANGE_DEFAULT_TIMEOUT`).
const FAULT_RETRIES: u32 = 1000;

/// Snapshot bytes (`HMM_DMIRROR_PROT_*`).
pub mod prot {
    /// `HMM_PFN_ERROR`.
    pub const ERROR: u8 = 0xff;
    /// Not valid.
    pub const NONE: u8 = 0x00;
    /// Readable.
    pub const READ: u8 = 0x01;
    /// Writable.
    pub const WRITE: u8 = 0x02;
    /// Mapped at PMD level.
    pub const PMD: u8 = 0x04;
    /// Mapped at PUD level.
    pub const PUD: u8 = 0x08;
    /// The zero page.
    pub const ZERO: u8 = 0x10;
    /// Private page of this device.
    pub const DEV_PRIVATE_LOCAL: u8 = 0x20;
    /// Private page of another device.
    pub const DEV_PRIVATE_REMOTE: u8 = 0x30;
    /// Coherent page of this device.
    pub const DEV_COHERENT_LOCAL: u8 = 0x40;
    /// Coherent page of another device.
    pub const DEV_COHERENT_REMOTE: u8 = 0x50;
}

/// A failed command: the errno dmirror's ioctl returns, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdError {
    /// Positive Linux errno.
    pub errno: i32,
    /// What went wrong.
    pub why: &'static str,
}

/// `EINVAL`.
pub const EINVAL: i32 = 22;
/// `EFAULT`.
pub const EFAULT: i32 = 14;
/// `EIO`.
pub const EIO: i32 = 5;
/// `EPERM`.
pub const EPERM: i32 = 1;
/// `ENOENT`.
pub const ENOENT: i32 = 2;
/// `ENOMEM`.
pub const ENOMEM: i32 = 12;
/// `EBUSY`.
pub const EBUSY: i32 = 16;
/// `ETIMEDOUT`.
pub const ETIMEDOUT: i32 = 110;

fn err(errno: i32, why: &'static str) -> CmdError {
    CmdError { errno, why }
}

impl core::fmt::Display for CmdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "errno {}: {}", self.errno, self.why)
    }
}

/// A hook run between a range fault and its commit (see [`Dmirror::set_fault_hook`]): called
/// with the round's `[start, end)`, it returns whether it stays installed.
pub type FaultHook = alloc::boxed::Box<dyn FnMut(u64, u64) -> bool + Send>;

/// The counters a command returns (`cpages`, `faults`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pages copied, snapshotted or migrated.
    pub cpages: u64,
    /// Device-fault rounds.
    pub faults: u64,
}

#[derive(Debug, Default)]
struct DevState {
    chunks: Vec<Arc<DevPagemap>>,
    free: Vec<Pfn>,
    free_huge: Vec<Pfn>,
    calloc: u64,
    cfree: u64,
}

/// One dmirror device (`struct dmirror_device`).
pub struct DmirrorDevice {
    this: Weak<DmirrorDevice>,
    pagemaps: Arc<Pagemaps>,
    kind: MemoryKind,
    owner: Owner,
    chunk_frames: u64,
    backing: Arc<dyn Backing>,
    state: Mutex<DevState>,
}

impl core::fmt::Debug for DmirrorDevice {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmirrorDevice")
            .field("kind", &self.kind)
            .field("owner", &self.owner)
            .field("backing", &self.backing.describe())
            .finish_non_exhaustive()
    }
}

/// One open dmirror file (`struct dmirror`).
pub struct Dmirror {
    dev: Arc<DmirrorDevice>,
    space: Weak<SharedSpace>,
    mm: Arc<Mm>,
    /// The interval notifier; read-locked by every user of it, so `close` waits for them.
    notifier: RwLock<Option<IntervalNotifier>>,
    /// The device page table; its lock is the driver's user lock.
    pt: Mutex<DevPageTable>,
    fail_alloc: AtomicBool,
    /// See [`Dmirror::set_fault_hook`].
    fault_hook: Mutex<Option<FaultHook>>,
    /// Invalidations that reached the device page table.
    pub invalidations: AtomicU64,
}

impl core::fmt::Debug for Dmirror {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Dmirror").field("dev", &self.dev).field("entries", &self.pt.lock().len()).finish()
    }
}

impl DmirrorDevice {
    /// A device of `kind` with owner cookie `owner`, adding device memory `chunk_bytes` at a
    /// time (a multiple of 2 MiB).
    pub fn new(pagemaps: &Arc<Pagemaps>, kind: MemoryKind, owner: Owner, chunk_bytes: u64) -> Arc<DmirrorDevice> {
        Self::with_backing(pagemaps, kind, owner, chunk_bytes, RamBacking::new(pagemaps.mm()))
    }

    /// [`DmirrorDevice::new`] over `backing`'s memory and copy engine (a real device's).
    pub fn with_backing(
        pagemaps: &Arc<Pagemaps>,
        kind: MemoryKind,
        owner: Owner,
        chunk_bytes: u64,
        backing: Arc<dyn Backing>,
    ) -> Arc<DmirrorDevice> {
        Arc::new_cyclic(|this| DmirrorDevice {
            this: this.clone(),
            pagemaps: pagemaps.clone(),
            kind,
            owner,
            chunk_frames: (chunk_bytes / PAGE).div_ceil(HUGE_FRAMES).max(1) * HUGE_FRAMES,
            backing,
            state: Mutex::new(DevState::default()),
        })
    }

    /// What backs this device's memory.
    pub fn backing(&self) -> &Arc<dyn Backing> {
        &self.backing
    }

    /// The memory kind.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// The owner cookie (`pgmap->owner`).
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Pages allocated and freed so far (`calloc`, `cfree`).
    pub fn counters(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.calloc, s.cfree)
    }

    /// Device pages in use.
    pub fn pages_in_use(&self) -> u64 {
        let s = self.state.lock();
        let total: u64 = s.chunks.iter().map(|c| c.pages()).sum();
        total - s.free.len() as u64 - s.free_huge.len() as u64 * HUGE_FRAMES
    }

    fn add_chunk(&self, s: &mut DevState) -> Result<(), Error> {
        let ops: Weak<DmirrorDevice> = self.this.clone();
        let pm = self.backing.add_chunk(&self.pagemaps, self.kind, self.owner, self.chunk_frames, ops)?;
        for &(start, n) in pm.ranges() {
            let mut p = start.0;
            while p + HUGE_FRAMES <= start.0 + n {
                s.free_huge.push(Pfn(p));
                p += HUGE_FRAMES;
            }
        }
        s.chunks.push(pm);
        Ok(())
    }

    /// Allocates a device page: a 4 KiB page, or with `huge` one 2 MiB compound page (a device
    /// THP). Private memory gets its storage frames from the backing (2 MiB contiguous for a
    /// THP, given back one by one so that a split device THP can free them page by page); each
    /// page's driver data is its storage frame. The page comes initialised: one reference,
    /// locked (`zone_device_folio_init`).
    fn alloc(&self, huge: bool) -> Result<Pfn, Error> {
        let p = {
            let mut s = self.state.lock();
            if huge {
                if s.free_huge.is_empty() {
                    coalesce(&mut s);
                }
                if s.free_huge.is_empty() {
                    self.add_chunk(&mut s)?;
                }
                s.free_huge.pop().ok_or(Error::NoMemory)?
            } else {
                if s.free.is_empty() {
                    if s.free_huge.is_empty() {
                        self.add_chunk(&mut s)?;
                    }
                    let b = s.free_huge.pop().ok_or(Error::NoMemory)?;
                    s.free.extend((0..HUGE_FRAMES).rev().map(|i| Pfn(b.0 + i)));
                }
                s.free.pop().ok_or(Error::NoMemory)?
            }
        };
        let (order, n) = if huge { (HUGE_ORDER, HUGE_FRAMES) } else { (0, 1) };
        let give_back = |e: Error| {
            let mut s = self.state.lock();
            if huge {
                s.free_huge.push(p)
            } else {
                s.free.push(p)
            }
            e
        };
        let backing = match self.kind {
            MemoryKind::Private => self.backing.alloc_storage(order).map_err(give_back)?,
            MemoryKind::Coherent => p,
        };
        let pm = self.pagemaps.find(p).ok_or(Error::Invalid("device page outside its pagemap"))?;
        for k in 0..n {
            pm.set_data(Pfn(p.0 + k), backing.0 + k);
        }
        if let Err(e) = self.pagemaps.folio_init(p, order) {
            for k in 0..n {
                pm.set_data(Pfn(p.0 + k), 0);
                if backing != p {
                    self.backing.free_storage(Pfn(backing.0 + k));
                }
            }
            return Err(give_back(e));
        }
        self.state.lock().calloc += n;
        Ok(p)
    }

    /// The frame the device reads for device page `p` (its storage frame if private).
    fn storage(&self, p: Pfn) -> Pfn {
        self.pagemaps.find(p).and_then(|pm| pm.data(p)).map_or(p, Pfn)
    }

    /// A locked anonymous RAM page to receive device page `p`, and the storage frame to copy
    /// from (every device-to-RAM migration).
    fn ram_for(&self, p: Pfn) -> Result<(Pfn, Pfn), Error> {
        let d = self.pagemaps.mm().alloc_page(flags::ANON, 0, false)?;
        lock_new(self.pagemaps.mm(), d);
        Ok((d, self.storage(p)))
    }

    /// Copies what `mig`'s entries in `filled` need, `(destination, source)` per frame, with the
    /// backing's engine. If the copy fails, every destination in `filled` is given back and
    /// cleared, so those sources stay where they were.
    fn copy_or_back_out(
        &self,
        dst: &mut [MigratePfn],
        filled: &[usize],
        pairs: &[(Pfn, Option<Pfn>)],
    ) -> Result<(), Error> {
        if pairs.is_empty() {
            return Ok(());
        }
        let r = self.backing.copy(pairs);
        if r.is_err() {
            let mm = self.pagemaps.mm();
            for &i in filled {
                if let Some(d) = dst[i].pfn() {
                    unuse(mm, d);
                }
                dst[i] = MigratePfn(0);
            }
        }
        r
    }

    /// Fills the destination of source `i` of a device-to-RAM migration: one 2 MiB RAM page
    /// for a compound source when `huge_ok` and RAM has one, else a 4 KiB page per base page
    /// (the fallback, which makes `migrate_vma_pages` split the source), then copies. (The
    /// device-side invalidation is the migration's own: see [`Dmirror`]'s `invalidate`.)
    /// Returns the pages copied; on an allocation failure, what was filled so far still
    /// migrates; on a copy failure, nothing of this entry does.
    fn migrate_out(&self, mig: &mut MigrateVma<'_>, i: usize, huge_ok: bool) -> Result<u64, Error> {
        let s = mig.src()[i];
        let (Some(spfn), true) = (s.pfn(), s.is_migrate()) else { return Ok(0) };
        let mm = self.pagemaps.mm().clone();
        let mut filled = Vec::new();
        let mut pairs = Vec::new();
        let mut copied = 0u64;
        let mut alloc_failed = None;
        if !s.is_compound() {
            let (d, from) = self.ram_for(spfn)?;
            mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write());
            filled.push(i);
            pairs.push((d, Some(from)));
            copied = 1;
        } else if huge_ok && let Ok(d) = mm.alloc_page(flags::ANON, HUGE_ORDER, false) {
            lock_new(&mm, d);
            for k in 0..HUGE_FRAMES {
                let from = self.storage(Pfn(spfn.0 + k));
                pairs.push((Pfn(d.0 + k), Some(from)));
            }
            copied = HUGE_FRAMES;
            mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write()).with_compound();
            filled.push(i);
        } else {
            for k in 0..HUGE_FRAMES {
                let j = i + k as usize;
                match self.ram_for(Pfn(spfn.0 + k)) {
                    Ok((d, from)) => {
                        mig.dst_mut()[j] = MigratePfn::new(d).with_write(s.is_write());
                        filled.push(j);
                        pairs.push((d, Some(from)));
                        copied += 1;
                    }
                    Err(e) => {
                        alloc_failed = Some(e);
                        break;
                    }
                }
            }
        }
        self.copy_or_back_out(mig.dst_mut(), &filled, &pairs)?;
        match alloc_failed {
            Some(e) if copied == 0 => Err(e),
            _ => Ok(copied),
        }
    }

    /// Evicts all device memory to RAM and removes the chunks (`HMM_DMIRROR_RELEASE` and
    /// driver unbind). A page another thread holds (a migration in flight has it locked) is
    /// waited for, as Linux's `memunmap_pages` waits, but boundedly: [`RELEASE_ROUNDS`]
    /// eviction rounds [`RELEASE_SPINS`] spins apart, then `ETIMEDOUT`. Must be called with no
    /// address space locked.
    pub fn release(&self) -> Result<(), CmdError> {
        self.release_waiting(RELEASE_ROUNDS, &mut |_| (0..RELEASE_SPINS).for_each(|_| core::hint::spin_loop()))
    }

    /// [`release`](Self::release) in at most `rounds` eviction rounds: after every round but
    /// the last that left pages in use, `wait(round)` runs (rounds count from 0, no lock is
    /// held), then the next round evicts what is left. Free pages stop being handed out at
    /// once, and pages freed meanwhile stay off the free lists. Returns `ENOMEM` or `EIO` when
    /// an eviction fails (without waiting further), `ETIMEDOUT` when pages are still in use
    /// after the last round; either way the chunks still in use stay, usable again.
    pub fn release_waiting(&self, rounds: u32, wait: &mut dyn FnMut(u32)) -> Result<(), CmdError> {
        let mut chunks = {
            let mut s = self.state.lock();
            s.free.clear();
            s.free_huge.clear();
            core::mem::take(&mut s.chunks)
        };
        let mut round = 0;
        loop {
            let failure = self.evict(&chunks);
            chunks.retain(|pm| self.backing.remove_chunk(&self.pagemaps, pm).is_err());
            if chunks.is_empty() {
                return failure.map_or(Ok(()), Err);
            }
            round += 1;
            if failure.is_some() || round >= rounds {
                self.keep(chunks);
                return Err(failure.unwrap_or(err(ETIMEDOUT, "device pages still in use after waiting for them")));
            }
            wait(round - 1);
        }
    }

    /// One eviction round over `chunks` (`migrate_device_range`, copy, `pages`, `finalize`):
    /// pages free or held by someone else are skipped. The last failure, if any.
    fn evict(&self, chunks: &[Arc<DevPagemap>]) -> Option<CmdError> {
        let mm = self.pagemaps.mm().clone();
        let mut failure = None;
        for pm in chunks {
            for &(start, n) in pm.ranges() {
                let mut mig = migrate_device_range(&mm, start, n);
                let (mut filled, mut pairs) = (Vec::new(), Vec::new());
                for i in 0..n as usize {
                    let s = mig.src()[i];
                    let Some(spfn) = s.pfn() else { continue };
                    if !s.is_migrate() {
                        continue;
                    }
                    match self.ram_for(spfn) {
                        Ok((d, from)) => {
                            mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write());
                            filled.push(i);
                            pairs.push((d, Some(from)));
                        }
                        Err(_) => failure = Some(err(ENOMEM, "no RAM to evict device memory into")),
                    }
                }
                if self.copy_or_back_out(mig.dst_mut(), &filled, &pairs).is_err() {
                    failure = Some(err(EIO, "the device failed to copy its memory out"));
                }
                mig.pages();
                mig.finalize();
            }
        }
        failure
    }

    /// Makes `chunks` (still in use after a release) usable again: back in the device, their
    /// free pages back on the free list.
    fn keep(&self, chunks: Vec<Arc<DevPagemap>>) {
        let mm = self.pagemaps.mm();
        let mut s = self.state.lock();
        for pm in chunks {
            for &(start, n) in pm.ranges() {
                for i in 0..n {
                    let p = Pfn(start.0 + i);
                    if mm.meta(p).is_some_and(|m| m.refcount() == 0 && !m.has(flags::ALLOCATED)) {
                        s.free.push(p);
                    }
                }
            }
            s.chunks.push(pm);
        }
    }
}

impl PagemapOps for DmirrorDevice {
    fn page_free(&self, pm: &DevPagemap, pfn: Pfn, order: u32) {
        let n = 1u64 << order;
        for k in 0..n {
            let p = Pfn(pfn.0 + k);
            if self.kind == MemoryKind::Private
                && let Some(d) = pm.data(p)
                && d != 0
                && d != p.0
            {
                self.backing.free_storage(Pfn(d));
            }
            pm.set_data(p, 0);
        }
        let mut s = self.state.lock();
        s.cfree += n;
        if s.chunks.iter().any(|c| c.contains(pfn)) {
            if order == HUGE_ORDER {
                s.free_huge.push(pfn);
            } else {
                s.free.extend((0..n).map(|k| Pfn(pfn.0 + k)));
            }
        }
    }

    fn migrate_to_ram(&self, _: &DevPagemap, space: &mut AddressSpace, va: u64, page: Pfn) -> Result<(), FaultError> {
        let select = match self.kind {
            MemoryKind::Private => Select::DEVICE_PRIVATE,
            MemoryKind::Coherent => Select::DEVICE_COHERENT,
        };
        // A device THP moves back whole (or, failing a 2 MiB RAM page, as base pages).
        let huge = self.pagemaps.mm().meta(page).is_some_and(|m| m.order() == HUGE_ORDER);
        // Else the page alone (test_hmm's choice), or the window a placement policy set.
        let (start, len, select) = if huge {
            (va & !(PMD_SIZE - 1), PMD_SIZE, select.compound())
        } else if let Some((s, e)) = space.fault_window(va) {
            (s, e - s, select)
        } else {
            (va & !(PAGE - 1), PAGE, select)
        };
        let args = MigrateArgs { start, end: start + len, owner: self.owner, select, fault_page: Some(page) };
        // Its invalidation has erased these pages from every file mirroring this address space.
        let mut mig = space.migrate_vma_setup(args).map_err(|_| FaultError::Bus)?;
        let mut result = Ok(());
        for i in 0..mig.src().len() {
            if let Err(e) = self.migrate_out(&mut mig, i, true) {
                result = Err(if matches!(e, Error::Io(_)) { FaultError::Bus } else { FaultError::OutOfMemory });
                break;
            }
        }
        mig.pages();
        mig.finalize();
        result
    }
}

/// Makes every 2 MiB block whose base pages are all free a free block again (a split device
/// THP comes back page by page), so device memory does not fragment into base pages for good:
/// a real device has no more memory to add.
fn coalesce(s: &mut DevState) {
    let whole = take_whole_blocks(&mut s.free, |p| p.0, HUGE_FRAMES);
    s.free_huge.extend(whole.into_iter().rev().map(Pfn));
}

/// Removes from `free` (page numbers, found with `num`) every naturally aligned block of
/// `block` pages that is entirely there, and returns the blocks' first page numbers in
/// ascending order: how a device allocator that splits blocks into base pages gets whole blocks
/// back.
pub fn take_whole_blocks<T>(free: &mut Vec<T>, num: impl Fn(&T) -> u64, block: u64) -> Vec<u64> {
    let mut count = alloc::collections::BTreeMap::<u64, u64>::new();
    for p in free.iter() {
        *count.entry(num(p) / block).or_default() += 1;
    }
    let whole: Vec<u64> = count.into_iter().filter(|&(_, n)| n == block).map(|(b, _)| b).collect();
    if !whole.is_empty() {
        free.retain(|p| whole.binary_search(&(num(p) / block)).is_err());
    }
    whole.into_iter().map(|b| b * block).collect()
}

/// Locks a freshly allocated page (a migration destination).
fn lock_new(mm: &Mm, p: Pfn) {
    if let Some(m) = mm.meta(p) {
        m.trylock();
    }
}

/// Gives back a locked, referenced migration destination that will not be used (a device page
/// returns to its free list through `page_free`).
fn unuse(mm: &Mm, p: Pfn) {
    if let Some(m) = mm.meta(p) {
        m.unlock();
    }
    mm.put_page(p);
}

fn check_range(addr: u64, npages: u64) -> Result<(u64, u64), CmdError> {
    if !addr.is_multiple_of(PAGE) {
        return Err(err(EINVAL, "address is not page-aligned"));
    }
    if npages == 0 {
        return Err(err(EINVAL, "no pages"));
    }
    let end = npages
        .checked_mul(PAGE)
        .and_then(|l| addr.checked_add(l))
        .filter(|&e| e <= USER_END)
        .ok_or(err(EINVAL, "range overflows the address space"))?;
    Ok((addr, end))
}

impl Dmirror {
    /// Opens the device for the process whose address space is `space` (inserts a notifier
    /// over the whole address space).
    pub fn open(dev: &Arc<DmirrorDevice>, space: &Arc<SharedSpace>) -> Result<Arc<Dmirror>, Error> {
        let mut s = space.lock();
        let mm = s.mm().clone();
        let subs = Subscriptions::of(&mut s);
        let d = Arc::new(Dmirror {
            dev: dev.clone(),
            space: Arc::downgrade(space),
            mm,
            notifier: RwLock::new(None),
            pt: Mutex::new(DevPageTable::new()),
            fail_alloc: AtomicBool::new(false),
            fault_hook: Mutex::new(None),
            invalidations: AtomicU64::new(0),
        });
        let ops: Weak<Dmirror> = Arc::downgrade(&d);
        let n = subs.insert(0, USER_END, ops)?;
        *d.notifier.write() = Some(n);
        Ok(d)
    }

    /// Closes the file: removes the notifier and drops the device page table.
    pub fn close(&self) -> Result<(), Error> {
        if let Some(n) = self.notifier.write().take() {
            n.remove().map_err(|(_, e)| e)?;
        }
        self.pt.lock().clear_all();
        Ok(())
    }

    /// The device.
    pub fn device(&self) -> &Arc<DmirrorDevice> {
        &self.dev
    }

    fn space(&self) -> Result<Arc<SharedSpace>, CmdError> {
        self.space.upgrade().ok_or(err(EINVAL, "the process's address space is gone"))
    }

    /// Installs (or with `None` removes) a hook that runs after every successful range fault of
    /// this file (device faults, snapshots), before the result is checked against the
    /// notifier sequence and committed, with no lock of this file held: what another thread
    /// does at that point of a device fault, a test does from the hook, in a fixed order. The
    /// hook may use this file; it is not installed while it runs (a device access from it does
    /// not run it again) and stays installed while it returns `true`.
    pub fn set_fault_hook(&self, hook: Option<FaultHook>) {
        *self.fault_hook.lock() = hook;
    }

    fn run_fault_hook(&self, a: u64, b: u64) {
        let Some(mut hook) = self.fault_hook.lock().take() else { return };
        if hook(a, b) {
            self.fault_hook.lock().get_or_insert(hook);
        }
    }

    /// `HMM_DMIRROR_FLAGS`: bit 0 makes the next device allocation fail.
    pub fn set_flags(&self, flags: u64) {
        self.fail_alloc.store(flags & 1 != 0, Ordering::Relaxed);
    }

    /// Copies through the device page table; `Err(k)` names the first page without a
    /// (writable, for `write`) entry.
    fn copy(&self, start: u64, buf: &mut [u8], data: Option<&[u8]>, from: u64) -> Result<(), u64> {
        let pt = self.pt.lock();
        let n = buf.len().max(data.map_or(0, |d| d.len())) as u64 / PAGE;
        for k in from..n {
            let Some(e) = pt.get(start / PAGE + k) else { return Err(k) };
            let r = (k * PAGE) as usize..((k + 1) * PAGE) as usize;
            match data {
                Some(d) => {
                    if !e.write {
                        return Err(k);
                    }
                    self.mm.platform().write(e.frame.addr(), &d[r]);
                }
                None => self.mm.platform().read(e.frame.addr(), &mut buf[r]),
            }
        }
        Ok(())
    }

    /// One range fault of `[a, b)` under the sequence protocol (dmirror's §1.2 loop):
    /// `read_begin`, fault with `req` for every page, then, under the user lock and only if
    /// `read_retry` says nothing invalidated the interval meanwhile, `commit` the results.
    /// `Busy` walks and lost races retry, up to [`FAULT_RETRIES`] times.
    fn fault_locked<R>(
        &self,
        space: &SharedSpace,
        sub: &Interval,
        (a, b): (u64, u64),
        req: Request,
        commit: impl Fn(&mut DevPageTable, &[u64]) -> Result<R, CmdError>,
    ) -> Result<R, CmdError> {
        let mut pfns = alloc::vec![0u64; ((b - a) / PAGE) as usize];
        for _ in 0..FAULT_RETRIES {
            let seq = sub.read_begin().map_err(|_| err(EBUSY, "notifier wait failed"))?;
            let r = fault_round(space, sub, seq, (a, b), req, Some(self.dev.owner), &mut pfns);
            match r {
                Err(crate::range::RangeError::Busy) => continue,
                Err(e) => return Err(err(e.errno(), "range fault failed")),
                Ok(()) => {}
            }
            self.run_fault_hook(a, b);
            let mut pt = self.pt.lock();
            if sub.read_retry(seq) {
                continue;
            }
            return commit(&mut pt, &pfns);
        }
        Err(err(EBUSY, "range fault kept being invalidated"))
    }

    /// The device fault path (`dmirror_fault`): range-faults `[start, end)` in rounds of 64
    /// pages and fills the device page table.
    fn fault(&self, start: u64, end: u64, write: bool) -> Result<(), CmdError> {
        let space = self.space()?;
        let guard = self.notifier.read();
        let sub = guard.as_ref().ok_or(err(EINVAL, "the file is closed"))?;
        let req = if write { Request::WRITE } else { Request::FAULT };
        let mut a = start;
        while a < end {
            let b = (a + FAULT_CHUNK * PAGE).min(end);
            self.fault_locked(&space, sub, (a, b), req, |pt, pfns| {
                for (i, &p) in pfns.iter().enumerate() {
                    if p & HmmPfn::VALID == 0 {
                        return Err(err(EFAULT, "range fault returned an invalid page"));
                    }
                    let w = p & HmmPfn::WRITE != 0;
                    if write && !w {
                        return Err(err(EFAULT, "write fault returned a read-only page"));
                    }
                    let pfn = HmmPfn::pfn(p);
                    let frame = if self.dev.pagemaps.find(pfn).is_some_and(|pm| pm.kind() == MemoryKind::Private) {
                        self.dev.storage(pfn)
                    } else {
                        pfn
                    };
                    pt.insert(a / PAGE + i as u64, Entry { frame, write: w, atomic: false });
                }
                Ok(())
            })?;
            a = b;
        }
        Ok(())
    }

    /// The device accesses `[start, start + npages)` through its page table (a read into a
    /// buffer, or a write of `data`), faulting from the first missing page on and copying
    /// again, as `dmirror_read` / `dmirror_write` do.
    fn access(&self, start: u64, npages: u64, buf: &mut [u8], data: Option<&[u8]>) -> Result<Counts, CmdError> {
        let end = start + npages * PAGE;
        let mut c = Counts::default();
        let mut from = 0;
        for _ in 0..=npages + 1 {
            match self.copy(start, buf, data, from) {
                Ok(()) => {
                    c.cpages = npages;
                    return Ok(c);
                }
                Err(k) => {
                    self.fault(start + k * PAGE, end, data.is_some())?;
                    c.faults += 1;
                    from = k;
                }
            }
        }
        Err(err(EBUSY, "device access did not converge"))
    }

    /// `HMM_DMIRROR_READ`: the device reads `npages` at `addr` into a buffer.
    pub fn read(&self, addr: u64, npages: u64) -> Result<(Vec<u8>, Counts), CmdError> {
        let (start, _) = check_range(addr, npages)?;
        let mut buf = alloc::vec![0u8; (npages * PAGE) as usize];
        let c = self.access(start, npages, &mut buf, None)?;
        Ok((buf, c))
    }

    /// `HMM_DMIRROR_WRITE`: the device writes `data` (whole pages) at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Counts, CmdError> {
        if data.is_empty() || !(data.len() as u64).is_multiple_of(PAGE) {
            return Err(err(EINVAL, "write buffer is not whole pages"));
        }
        let npages = data.len() as u64 / PAGE;
        let (start, _) = check_range(addr, npages)?;
        self.access(start, npages, &mut [], Some(data))
    }

    /// Fills the destination of source `i` of a RAM-to-device migration (dmirror's
    /// `alloc_and_copy`): a compound source gets one device THP, falling back to 4 KiB device
    /// pages when that allocation fails (a pending FAIL_ALLOC makes it fail, and is used up);
    /// a base page gets a 4 KiB device page unless FAIL_ALLOC is pending. Holes and zero pages
    /// are cleared on the device, other sources copied.
    ///
    /// A device that could not grow because the frame table is full records it in `table_full`:
    /// the command then fails with that, not with a page missing on the device.
    fn migrate_in(
        &self,
        mig: &mut MigrateVma<'_>,
        i: usize,
        filled: &mut Vec<usize>,
        pairs: &mut Vec<(Pfn, Option<Pfn>)>,
        table_full: &mut bool,
    ) {
        let s = mig.src()[i];
        if !s.is_migrate() {
            return;
        }
        let alloc = |huge: bool, table_full: &mut bool| {
            let r = self.dev.alloc(huge);
            *table_full |= r == Err(Error::FrameTableFull);
            r
        };
        // Device page `d` receives source page `k` of the entry.
        let mut fill = |d: Pfn, k: u64| pairs.push((self.dev.storage(d), s.pfn().map(|p| Pfn(p.0 + k))));
        if s.is_compound() {
            if !self.fail_alloc.swap(false, Ordering::Relaxed)
                && let Ok(d) = alloc(true, table_full)
            {
                (0..HUGE_FRAMES).for_each(|k| fill(Pfn(d.0 + k), k));
                mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write()).with_compound();
                filled.push(i);
                return;
            }
            for k in 0..HUGE_FRAMES {
                let Ok(d) = alloc(false, table_full) else { return };
                fill(d, k);
                mig.dst_mut()[i + k as usize] = MigratePfn::new(d).with_write(s.is_write());
                filled.push(i + k as usize);
            }
            return;
        }
        if self.fail_alloc.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Ok(d) = alloc(false, table_full) {
            fill(d, 0);
            mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write());
            filled.push(i);
        }
    }

    /// Runs `step` on one `migrate_vma_setup` per chunk of `[start, end)`: chunks end at a VMA
    /// end or a [`MIGRATE_CHUNK`] boundary, as dmirror's loops do. A range with a hole, or (when
    /// `readable` is required) an unreadable mapping, is `-EINVAL`.
    fn per_chunk(
        &self,
        s: &mut AddressSpace,
        start: u64,
        end: u64,
        select: Select,
        readable: bool,
        mut step: impl FnMut(u64, MigrateVma<'_>) -> Result<(), CmdError>,
    ) -> Result<(), CmdError> {
        let mut a = start;
        while a < end {
            let vma = s.vmas().find(a).cloned().ok_or(err(EINVAL, "no mapping in the range"))?;
            if readable && !vma.prot.read() {
                return Err(err(EINVAL, "the mapping is not readable"));
            }
            let b = vma.end.min(end).min((a / (MIGRATE_CHUNK * PAGE) + 1) * MIGRATE_CHUNK * PAGE);
            let args = MigrateArgs { start: a, end: b, owner: self.dev.owner, select, fault_page: None };
            let mig = s.migrate_vma_setup(args).map_err(|_| err(EINVAL, "migrate_vma_setup refused"))?;
            step(a, mig)?;
            a = b;
        }
        Ok(())
    }

    /// `HMM_DMIRROR_MIGRATE_TO_DEV`: migrates `npages` at `addr` to device memory, then reads
    /// them back through the device (`cpages` = pages read back).
    pub fn migrate_to_dev(&self, addr: u64, npages: u64) -> Result<(Vec<u8>, Counts), CmdError> {
        let (start, end) = check_range(addr, npages)?;
        let space = self.space()?;
        let mut table_full = false;
        {
            let mut s = space.lock();
            self.per_chunk(&mut s, start, end, Select::SYSTEM.compound(), true, |a, mut mig| {
                let n = mig.src().len();
                let (mut filled, mut pairs) = (Vec::new(), Vec::new());
                for i in 0..n {
                    self.migrate_in(&mut mig, i, &mut filled, &mut pairs, &mut table_full);
                }
                // A failed copy backs the chunk out: the sources stay in RAM, intact.
                let copied = self.dev.copy_or_back_out(mig.dst_mut(), &filled, &pairs);
                mig.pages();
                {
                    // finalize_and_map: only entries still migrating go into the table.
                    let mut pt = self.pt.lock();
                    for i in 0..n {
                        let (s, d) = (mig.src()[i], mig.dst()[i]);
                        let (true, Some(dp)) = (s.is_migrate(), d.pfn()) else { continue };
                        let pages = if d.is_compound() { HUGE_FRAMES } else { 1 };
                        for k in 0..pages {
                            pt.insert(
                                a / PAGE + i as u64 + k,
                                Entry { frame: self.dev.storage(Pfn(dp.0 + k)), write: d.is_write(), atomic: false },
                            );
                        }
                    }
                }
                mig.finalize();
                copied.map_err(|_| err(EIO, "the device's copy engine failed; the pages stay in system memory"))
            })?;
        }
        self.map_local(start, end)?;
        let mut buf = alloc::vec![0u8; (npages * PAGE) as usize];
        match self.copy(start, &mut buf, None, 0) {
            Ok(_) => Ok((buf, Counts { cpages: npages, faults: 0 })),
            Err(_) if table_full => Err(err(
                Error::FrameTableFull.errno(),
                "device memory could not grow: the frame table is full (remove device memory first)",
            )),
            Err(_) => Err(err(ENOENT, "a page did not reach the device")),
        }
    }

    /// Maps again the pages of `[start, end)` that are in this device's memory but have no
    /// entry: a migration's invalidation erases its whole range, pages it did not move (those
    /// already on the device) included. A range walk that faults nothing, under the sequence
    /// protocol; pages elsewhere stay unmapped (the read-back then reports them).
    fn map_local(&self, start: u64, end: u64) -> Result<(), CmdError> {
        let complete = {
            let pt = self.pt.lock();
            (start / PAGE..end / PAGE).all(|v| pt.get(v).is_some())
        };
        if complete {
            return Ok(());
        }
        let space = self.space()?;
        let guard = self.notifier.read();
        let sub = guard.as_ref().ok_or(err(EINVAL, "the file is closed"))?;
        let mut a = start;
        while a < end {
            let b = (a + FAULT_CHUNK * PAGE).min(end);
            self.fault_locked(&space, sub, (a, b), Request::NONE, |pt, pfns| {
                for (i, &p) in pfns.iter().enumerate() {
                    let pfn = HmmPfn::pfn(p);
                    let local = self.dev.pagemaps.find(pfn).filter(|pm| pm.owner() == self.dev.owner);
                    let (true, Some(pm)) = (p & HmmPfn::VALID != 0, local) else { continue };
                    let frame = if pm.kind() == MemoryKind::Private { self.dev.storage(pfn) } else { pfn };
                    pt.insert(a / PAGE + i as u64, Entry { frame, write: p & HmmPfn::WRITE != 0, atomic: false });
                }
                Ok(())
            })?;
            a = b;
        }
        Ok(())
    }

    /// `HMM_DMIRROR_MIGRATE_TO_SYS`: migrates this device's pages in the range back to RAM.
    pub fn migrate_to_sys(&self, addr: u64, npages: u64) -> Result<Counts, CmdError> {
        let (start, end) = check_range(addr, npages)?;
        let space = self.space()?;
        let mut s = space.lock();
        let mut c = Counts::default();
        let select = match self.dev.kind {
            MemoryKind::Private => Select::DEVICE_PRIVATE,
            MemoryKind::Coherent => Select::DEVICE_COHERENT,
        };
        self.per_chunk(&mut s, start, end, select.compound(), false, |_, mut mig| {
            for i in 0..mig.src().len() {
                let src = mig.src()[i];
                if !src.is_migrate() || src.pfn().is_none() {
                    continue;
                }
                // FAIL_ALLOC fails the next allocation: the 2 MiB attempt for a device THP
                // (which then falls back to 4 KiB pages), or a base page's, which then stays
                // in device memory, intact.
                let fail = self.fail_alloc.swap(false, Ordering::Relaxed);
                if fail && !src.is_compound() {
                    continue;
                }
                c.cpages += self.dev.migrate_out(&mut mig, i, !fail).map_err(|e| match e {
                    Error::Io(_) => err(EIO, "the device's copy engine failed; the pages stay on the device"),
                    _ => err(ENOMEM, "no RAM to migrate into"),
                })?;
            }
            mig.pages();
            mig.finalize();
            Ok(())
        })?;
        Ok(c)
    }

    /// `HMM_DMIRROR_SNAPSHOT`: one byte per page describing the CPU page table.
    pub fn snapshot(&self, addr: u64, npages: u64) -> Result<(Vec<u8>, Counts), CmdError> {
        let (start, end) = check_range(addr, npages)?;
        let space = self.space()?;
        let mut out = Vec::with_capacity(npages as usize);
        let ops: Arc<SeqOnly> = Arc::new(SeqOnly);
        let mut a = start;
        while a < end {
            let b = (a + SNAPSHOT_CHUNK * PAGE).min(end);
            let subs = Subscriptions::of(&mut space.lock());
            let w: Weak<SeqOnly> = Arc::downgrade(&ops);
            let sub = subs.insert(a, b - a, w).map_err(|_| err(EINVAL, "notifier insert failed"))?;
            let pfns = self.fault_locked(&space, &sub, (a, b), Request::NONE, |_, pfns| Ok(pfns.to_vec()));
            let _ = sub.remove();
            for &p in &pfns? {
                out.push(self.mkentry(p));
            }
            a = b;
        }
        Ok((out, Counts { cpages: npages, faults: 0 }))
    }

    fn mkentry(&self, p: u64) -> u8 {
        if p & HmmPfn::ERROR != 0 {
            return prot::ERROR;
        }
        if p & HmmPfn::VALID == 0 {
            return prot::NONE;
        }
        let pfn = HmmPfn::pfn(p);
        let device = self.mm.meta(pfn).is_some_and(|m| m.has(flags::DEVICE));
        let mut v = match device.then(|| self.dev.pagemaps.find(pfn)).flatten() {
            Some(pm) => match (pm.kind(), pm.owner() == self.dev.owner) {
                (MemoryKind::Private, true) => prot::DEV_PRIVATE_LOCAL,
                (MemoryKind::Private, false) => prot::DEV_PRIVATE_REMOTE,
                (MemoryKind::Coherent, true) => prot::DEV_COHERENT_LOCAL,
                (MemoryKind::Coherent, false) => prot::DEV_COHERENT_REMOTE,
            },
            None if self.mm.is_zero(pfn) => prot::ZERO,
            None => 0,
        };
        v |= if p & HmmPfn::WRITE != 0 { prot::WRITE } else { prot::READ };
        if HmmPfn::order(p) == 9 {
            v |= prot::PMD;
        } else if HmmPfn::order(p) == 18 {
            v |= prot::PUD;
        }
        v
    }

    /// `HMM_DMIRROR_EXCLUSIVE`: takes device-exclusive access to every page, then reads them.
    pub fn exclusive(&self, addr: u64, npages: u64) -> Result<(Vec<u8>, Counts), CmdError> {
        let (start, end) = check_range(addr, npages)?;
        let space = self.space()?;
        {
            let mut s = space.lock();
            let mut va = start;
            while va < end {
                let g = s.make_device_exclusive(va, self.dev.owner).map_err(|e| match e {
                    Error::Invalid(_) => err(EINVAL, "device-exclusive access not supported here"),
                    _ => err(EBUSY, "device-exclusive access failed"),
                })?;
                self.pt.lock().insert(va / PAGE, Entry { frame: g.pfn(), write: true, atomic: true });
                drop(g);
                va += PAGE;
            }
        }
        let mut buf = alloc::vec![0u8; (npages * PAGE) as usize];
        self.copy(start, &mut buf, None, 0).map_err(|_| err(EPERM, "exclusive entry lost"))?;
        Ok((buf, Counts { cpages: npages, faults: 0 }))
    }

    /// `HMM_DMIRROR_CHECK_EXCLUSIVE`: `EPERM` if any page is still exclusive to the device.
    pub fn check_exclusive(&self, addr: u64, npages: u64) -> Result<(), CmdError> {
        let (start, end) = check_range(addr, npages)?;
        let pt = self.pt.lock();
        if pt.any_atomic(start / PAGE, end / PAGE) {
            return Err(err(EPERM, "a page is still device-exclusive"));
        }
        Ok(())
    }
}

impl IntervalOps for Dmirror {
    /// Erases `range` from the table and records the sequence, for every event, this device's
    /// own migrations included. (Linux's dmirror skips those, `MMU_NOTIFY_MIGRATE` with its
    /// owner, on the ground that the migration updates the table itself; but the migration only
    /// updates the file it runs for, or the one a device page was migrated for, so another file
    /// of the device mirroring the same pages kept entries for frames about to be freed; and a
    /// device fault whose range fault had returned those frames committed them, its sequence
    /// unchanged.) A migration to the device maps its pages again after `migrate_vma_pages`.
    fn invalidate(&self, sub: &Interval, range: &Range, cur_seq: u64) -> bool {
        let mut pt = if range.blockable {
            self.pt.lock()
        } else {
            match self.pt.try_lock() {
                Some(g) => g,
                None => return false,
            }
        };
        sub.set_seq(cur_seq);
        pt.clear(range.start / PAGE, range.end.div_ceil(PAGE));
        self.invalidations.fetch_add(1, Ordering::Relaxed);
        true
    }
}
