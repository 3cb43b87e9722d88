//! x86_64 4-level page tables, walked and edited through the direct map.
//!
//! [`PageTable`] maps, unmaps, re-protects and translates 4 KiB, 2 MiB and 1 GiB pages. The
//! walk is `hmm`'s ([`hmm::mm::pagetable::Tables`], the one the user halves use too), over
//! [`DirectMap`]: table frames reached through the direct map (the early identity map during
//! bootstrap) and allocated from [`frame`] (its bootstrap run before the buddy allocator).
//! Every change that can leave a stale TLB entry returns a [`Flush`] token:
//! - `#[must_use]`, so ignoring it is a compiler warning (an error under `-D warnings`);
//! - consumed by [`Flush::flush`] (invalidate now) or [`Flush::defer`] (add to a
//!   [`FlushBatch`] that invalidates once for a whole operation);
//! - and if dropped anyway, it flushes in its `Drop`, so a forgotten flush costs time, never
//!   correctness. (Only an explicit `mem::forget` can skip it.)
//!
//! Invariants: intermediate entries are present + writable (+ user below the kernel half:
//! [`Tables::new`] there, [`Tables::kernel`] above); permissions are decided by the leaf
//! alone. A huge page is never silently split: mapping a 4 KiB page inside one is
//! [`MapError::HugePageInTheWay`] (the walker's [`Lookup::Blocked`]).

use core::cell::Cell;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::{
    registers::control::{Cr3, Cr3Flags, Cr4, Cr4Flags},
    structures::paging::{PageTableFlags as F, PhysFrame},
};

use super::{frame, phys_to_virt};
use hmm::addr::Pfn;
use hmm::mm::pagetable::{Level, Lookup, NoTableMemory, Slot, TableMemory, Tables};
use hmm::mm::platform::TlbFlush;
use hmm::mm::pte::ADDR_MASK;

pub use x86_64::structures::paging::PageTableFlags as Flags;

/// Count of single-page invalidations performed.
pub static INVLPG_COUNT: AtomicU64 = AtomicU64::new(0);
/// Count of full TLB flushes performed.
pub static FULL_FLUSH_COUNT: AtomicU64 = AtomicU64::new(0);
/// Count of flush tokens that were dropped instead of consumed (flushed by `Drop`).
pub static DROPPED_FLUSH_TOKENS: AtomicU64 = AtomicU64::new(0);

/// Above this many pages, a flush reloads the whole TLB instead of invalidating page by page.
const FULL_FLUSH_THRESHOLD: u64 = 64;

/// The first address of the kernel half.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// A page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
    /// 1 GiB.
    Size1G,
}

impl PageSize {
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }
    /// The level whose entry is the leaf.
    const fn level(self) -> Level {
        match self {
            Self::Size4K => Level::Pte,
            Self::Size2M => Level::Pmd,
            Self::Size1G => Level::Pud,
        }
    }

    /// The page size of a leaf at `level` (`None` at the root's level, which holds no leaves).
    const fn of(level: Level) -> Option<Self> {
        match level {
            Level::Pte => Some(Self::Size4K),
            Level::Pmd => Some(Self::Size2M),
            Level::Pud => Some(Self::Size1G),
            Level::Pml4 => None,
        }
    }
}

/// A page-table edit that could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The virtual or physical address is not aligned to the page size.
    Misaligned { vaddr: u64, paddr: u64, size: PageSize },
    /// The virtual address is not canonical.
    NonCanonical(u64),
    /// Something is already mapped there.
    AlreadyMapped(u64),
    /// Nothing is mapped there.
    NotMapped(u64),
    /// A larger page covers the address; it would have to be split first.
    HugePageInTheWay(u64),
    /// A page table could not be allocated.
    OutOfFrames(frame::OutOfFrames),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Misaligned { vaddr, paddr, size } => {
                write!(f, "cannot map {vaddr:#x} -> {paddr:#x}: not aligned to {} bytes", size.bytes())
            }
            Self::NonCanonical(v) => write!(f, "{v:#x} is not a canonical virtual address"),
            Self::AlreadyMapped(v) => write!(f, "{v:#x} is already mapped"),
            Self::NotMapped(v) => write!(f, "{v:#x} is not mapped"),
            Self::HugePageInTheWay(v) => write!(f, "{v:#x} lies inside a huge page"),
            Self::OutOfFrames(e) => write!(f, "no frame for a page table: {e}"),
        }
    }
}

impl From<frame::OutOfFrames> for MapError {
    fn from(e: frame::OutOfFrames) -> Self {
        Self::OutOfFrames(e)
    }
}

/// A pending TLB invalidation of `[start, start + len)`.
#[must_use = "a page-table change leaves stale TLB entries: call .flush() or .defer(&mut batch)"]
#[derive(Debug)]
pub struct Flush {
    start: u64,
    len: u64,
    armed: bool,
    /// Other CPUs may cache the old translation (an unmap or a protection change); a new
    /// mapping replaced a not-present entry, which no CPU caches, so it is flushed here only.
    remote: bool,
}

impl Flush {
    fn new(start: u64, len: u64) -> Self {
        Self { start, len, armed: true, remote: true }
    }

    fn new_mapping(start: u64, len: u64) -> Self {
        Self { start, len, armed: true, remote: false }
    }

    /// Invalidates the range now.
    pub fn flush(mut self) {
        self.armed = false;
        flush_range(self.start, self.len, self.remote);
    }

    /// Adds the range to `batch`, which invalidates when it is finished.
    pub fn defer(mut self, batch: &mut FlushBatch) {
        self.armed = false;
        batch.add(self.start, self.len, self.remote);
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        if self.armed {
            DROPPED_FLUSH_TOKENS.fetch_add(1, Ordering::Relaxed);
            flush_range(self.start, self.len, self.remote);
        }
    }
}

/// Invalidations gathered over one operation, performed once by [`FlushBatch::finish`] (or
/// on drop). The range is gathered in `hmm`'s batch ([`TlbFlush`], the one the user half's
/// flushes use); on top of it the kernel half counts 4 KiB pages (a 2 MiB entry is 512 of
/// them, for the full-flush threshold) and whether other CPUs must flush too.
#[derive(Debug, Default)]
#[must_use = "a batch invalidates when finished or dropped"]
pub struct FlushBatch {
    range: TlbFlush,
    pages: u64,
    /// Some change needs the other CPUs to flush too.
    remote: bool,
}

impl FlushBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, start: u64, len: u64, remote: bool) {
        self.remote |= remote;
        self.range.add(start, len);
        self.pages += len.div_ceil(4096);
    }

    /// Performs the invalidations.
    pub fn finish(mut self) {
        self.run();
    }

    fn run(&mut self) {
        if self.pages == 0 {
            return;
        }
        if self.pages > FULL_FLUSH_THRESHOLD {
            flush_all();
            if self.remote {
                crate::platform::arch::smp::shootdown(0, 0, 0, true);
            }
        } else {
            flush_range(self.range.start, self.range.end - self.range.start, self.remote);
        }
        self.range = TlbFlush::default();
        self.pages = 0;
        self.remote = false;
    }
}

impl Drop for FlushBatch {
    fn drop(&mut self) {
        self.run();
    }
}

/// Invalidates `[start, start + len)` here, and with `remote` on every other CPU too (these are
/// kernel page tables, whose mappings every CPU shares).
fn flush_range(start: u64, len: u64, remote: bool) {
    let pages = len.div_ceil(4096);
    if pages > FULL_FLUSH_THRESHOLD {
        flush_all();
    } else {
        for i in 0..pages {
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(start + i * 4096));
            INVLPG_COUNT.fetch_add(1, Ordering::Relaxed);
        }
    }
    if remote {
        crate::platform::arch::smp::shootdown(0, start, start + len, pages > FULL_FLUSH_THRESHOLD);
    }
}

/// Flushes every TLB entry of this CPU, global ones included (toggling CR4.PGE).
pub fn flush_all() {
    FULL_FLUSH_COUNT.fetch_add(1, Ordering::Relaxed);
    let cr4 = Cr4::read();
    if cr4.contains(Cr4Flags::PAGE_GLOBAL) {
        // SAFETY: clearing and restoring PGE only flushes the TLB; no mapping changes.
        unsafe {
            Cr4::write(cr4 - Cr4Flags::PAGE_GLOBAL);
            Cr4::write(cr4);
        }
    } else {
        x86_64::instructions::tlb::flush_all();
    }
}

/// The result of a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address the virtual address maps to.
    pub paddr: u64,
    /// Size of the page that maps it.
    pub size: PageSize,
    /// The leaf entry's flags.
    pub flags: F,
}

/// One 4-level page-table hierarchy, owned through its root frame.
#[derive(Debug)]
pub struct PageTable {
    root: u64,
}

/// The kernel's page-table frames as `hmm`'s walker reaches them: through the direct map (the
/// early identity map before it is live), allocated zeroed from [`frame`] and freed to it.
/// Made for one operation; it keeps the allocator's error, which the walker only reports as
/// [`NoTableMemory`].
#[derive(Debug, Default)]
struct DirectMap {
    failed: Cell<Option<frame::OutOfFrames>>,
}

impl DirectMap {
    /// The error behind a [`NoTableMemory`] of this operation's walk.
    fn out_of_frames(&self, _: NoTableMemory) -> MapError {
        MapError::OutOfFrames(self.failed.get().unwrap_or(frame::OutOfFrames { requested: 1, free: 0 }))
    }
}

/// The 512 entries of the page-table frame `table`.
fn entries(table: Pfn) -> &'static [AtomicU64; 512] {
    // SAFETY: only frames of a kernel page-table hierarchy come here: its root, or a frame
    // read from one of its table entries, every one allocated by `DirectMap::alloc_table` (or
    // `PageTable::new`) for this purpose and freed only after being unhooked. Such a frame is
    // RAM that the direct map (the early identity map during bootstrap) maps read-write for
    // the kernel's lifetime; it holds 512 naturally aligned u64s, which every user (the CPU's
    // walker included) accesses only as whole atomic words.
    unsafe { &*(phys_to_virt(table.addr()) as *const [AtomicU64; 512]) }
}

impl TableMemory for DirectMap {
    fn alloc_table(&self) -> Option<Pfn> {
        frame::alloc_zeroed(1).map(Pfn::containing).map_err(|e| self.failed.set(Some(e))).ok()
    }
    fn free_table(&self, table: Pfn) {
        frame::free(table.addr(), 1)
    }
    fn load_entry(&self, table: Pfn, index: usize) -> u64 {
        entries(table)[index].load(Ordering::Acquire)
    }
    fn store_entry(&self, table: Pfn, index: usize, value: u64) {
        entries(table)[index].store(value, Ordering::Release)
    }
    fn swap_entry(&self, table: Pfn, index: usize, value: u64) -> u64 {
        entries(table)[index].swap(value, Ordering::AcqRel)
    }
    fn entries(&self, table: Pfn) -> &[AtomicU64] {
        entries(table)
    }
}

/// The present leaf that maps `vaddr`: its slot, size and raw entry.
fn leaf(t: &Tables<'_, DirectMap>, vaddr: u64) -> Option<(Slot, PageSize, u64)> {
    let e = t.find(vaddr).filter(|e| e.raw & F::PRESENT.bits() != 0)?;
    Some((e.slot, PageSize::of(e.level)?, e.raw))
}

fn canonical(vaddr: u64) -> bool {
    ((vaddr as i64) << 16 >> 16) as u64 == vaddr
}

impl PageTable {
    /// A new, empty hierarchy.
    pub fn new() -> Result<Self, MapError> {
        Ok(Self { root: frame::alloc_zeroed(1)? })
    }

    /// The physical address of the root (PML4) table.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Installs this hierarchy in CR3.
    ///
    /// # Safety
    /// The hierarchy must map everything the CPU is about to touch: the running code, its stack,
    /// the data it uses, the IDT, GDT and TSS.
    pub unsafe fn activate(&self) {
        let frame = PhysFrame::containing_address(x86_64::PhysAddr::new(self.root));
        // SAFETY: guaranteed by the caller.
        unsafe { Cr3::write(frame, Cr3Flags::empty()) };
    }

    /// The walker for `vaddr` over `mem`: tables it creates get the user bit below the kernel
    /// half only.
    fn tables<'a>(&self, mem: &'a DirectMap, vaddr: u64) -> Tables<'a, DirectMap> {
        let root = Pfn::containing(self.root);
        if vaddr < KERNEL_HALF { Tables::new(mem, root) } else { Tables::kernel(mem, root) }
    }

    /// Maps `vaddr` to `paddr` with a page of `size` and `flags` (PRESENT is implied).
    pub fn map(&mut self, vaddr: u64, paddr: u64, size: PageSize, flags: F) -> Result<Flush, MapError> {
        if !canonical(vaddr) {
            return Err(MapError::NonCanonical(vaddr));
        }
        if !vaddr.is_multiple_of(size.bytes()) || !paddr.is_multiple_of(size.bytes()) {
            return Err(MapError::Misaligned { vaddr, paddr, size });
        }
        let mem = DirectMap::default();
        let t = self.tables(&mem, vaddr);
        let slot = match t.slot(vaddr, size.level(), true).map_err(|e| mem.out_of_frames(e))? {
            Lookup::Slot(slot) => slot,
            Lookup::Blocked { .. } => return Err(MapError::HugePageInTheWay(vaddr)),
            Lookup::Missing => return Err(MapError::NotMapped(vaddr)),
        };
        if t.load(slot) & F::PRESENT.bits() != 0 {
            return Err(MapError::AlreadyMapped(vaddr));
        }
        let mut flags = flags | F::PRESENT;
        if size != PageSize::Size4K {
            flags |= F::HUGE_PAGE;
        }
        t.store(slot, paddr | flags.bits());
        // A not-present entry is never cached, but a local flush of the new page is cheap and
        // makes remapping paths uniform; no other CPU needs one.
        Ok(Flush::new_mapping(vaddr, size.bytes()))
    }

    /// Translates `vaddr`.
    pub fn translate(&self, vaddr: u64) -> Option<Translation> {
        let mem = DirectMap::default();
        let (_, size, e) = leaf(&self.tables(&mem, vaddr), vaddr)?;
        Some(Translation {
            paddr: (e & ADDR_MASK & !(size.bytes() - 1)) + (vaddr & (size.bytes() - 1)),
            size,
            flags: F::from_bits_truncate(e & !ADDR_MASK),
        })
    }

    /// Unmaps the page containing `vaddr`; returns its physical address and size. Page tables
    /// left empty are freed (except the kernel half's PDPTs, which every address space shares
    /// through its PML4), and the flush covers the paging-structure caches of the address.
    pub fn unmap(&mut self, vaddr: u64) -> Result<(u64, PageSize, Flush), MapError> {
        let mem = DirectMap::default();
        let t = self.tables(&mem, vaddr);
        let (slot, size, e) = leaf(&t, vaddr).ok_or(MapError::NotMapped(vaddr))?;
        t.store(slot, 0);
        let keep = if vaddr >= KERNEL_HALF { Level::Pud } else { Level::Pml4 };
        t.prune_path(vaddr, size.level(), keep, &mut |table| mem.free_table(table));
        let start = vaddr & !(size.bytes() - 1);
        Ok((e & ADDR_MASK & !(size.bytes() - 1), size, Flush::new(start, size.bytes())))
    }

    /// Replaces the flags of the page containing `vaddr` (PRESENT and HUGE_PAGE are kept as
    /// they are).
    pub fn protect(&mut self, vaddr: u64, flags: F) -> Result<Flush, MapError> {
        let mem = DirectMap::default();
        let t = self.tables(&mem, vaddr);
        let (slot, size, e) = leaf(&t, vaddr).ok_or(MapError::NotMapped(vaddr))?;
        let kept = ADDR_MASK | F::PRESENT.bits() | F::HUGE_PAGE.bits();
        t.store(slot, (e & kept) | (flags.bits() & !kept));
        let start = vaddr & !(size.bytes() - 1);
        Ok(Flush::new(start, size.bytes()))
    }

    /// Gives every kernel-half PML4 slot its PDPT now, so the kernel half's top level never
    /// changes and address spaces can share it by copying PML4[256..512] once (as Linux
    /// preallocates its kernel PUDs).
    pub fn populate_kernel_half(&mut self) -> Result<(), MapError> {
        let mem = DirectMap::default();
        for i in boot::layout::KERNEL_PML4_FIRST..512 {
            // The first address of PML4 slot i (sign-extended: the kernel half).
            let va = KERNEL_HALF | ((i as u64) << 39);
            self.tables(&mem, va).slot(va, Level::Pud, true).map_err(|e| mem.out_of_frames(e))?;
        }
        Ok(())
    }
}
