//! The frame table: per-frame metadata, Linux's `struct page`.
//!
//! Every frame the memory manager hands to an address space, a file or a device pagemap has a
//! [`PageMeta`]: a reference count, a map count, flags (lock, dirty, referenced, kind, compound
//! order), an owner word (the pagemap of a device page, the file of a page-cache page), an index
//! (the page offset in that file), and the reverse map: one entry per page-table mapping, so
//! migration can find and unmap every mapping of a frame.
//!
//! Invariants, checked by the address-space code and its tests:
//! - `refcount` counts every holder: each mapping, the page cache, transient users (migration).
//!   The frame returns to the allocator (or to its pagemap) when it reaches zero.
//! - `mapcount` equals the number of reverse-map entries; a compound page keeps both on its head.
//! - The zero pages are never counted and never in a reverse map.
//!
//! Frames are grouped in sections (RAM, then one per device memory region), like Linux's sparse
//! memory model. A section's storage is never freed, so a `&PageMeta` lives as long as the
//! table; but device memory that goes away takes its section out of use
//! ([`FrameTable::remove_section`]): lookups of its frames find nothing, and memory added again
//! at the same frame numbers reuses the section, its metadata reset (a bigger region there
//! needs a new one). So add/remove cycles of device memory bring
//! [`FrameTable::live_sections`] back to where it was instead of running the table out of its
//! [`MAX_SECTIONS`] slots.

use crate::addr::Pfn;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use spin::{Mutex, Once};

/// Page flags.
pub mod flags {
    /// Locked (migration, exclusive access).
    pub const LOCKED: u32 = 1 << 0;
    /// Contents differ from the backing store.
    pub const DIRTY: u32 = 1 << 1;
    /// Recently accessed.
    pub const REFERENCED: u32 = 1 << 2;
    /// Anonymous memory.
    pub const ANON: u32 = 1 << 3;
    /// A page-cache page of a file (`owner` = file id, `index` = page offset).
    pub const FILE: u32 = 1 << 4;
    /// A zero page (never freed, never counted).
    pub const ZERO: u32 = 1 << 5;
    /// The head of a compound page (order in [`ORDER_SHIFT`]).
    pub const HEAD: u32 = 1 << 6;
    /// A tail of a compound page.
    pub const TAIL: u32 = 1 << 7;
    /// Device memory (`owner` = pagemap id).
    pub const DEVICE: u32 = 1 << 8;
    /// An explicit huge page (hugetlb): never split.
    pub const HUGETLB: u32 = 1 << 9;
    /// `MADV_FREE`d: may be discarded while clean.
    pub const LAZYFREE: u32 = 1 << 10;
    /// Handed out and not yet freed.
    pub const ALLOCATED: u32 = 1 << 11;
    /// Where a compound page's order is stored.
    pub const ORDER_SHIFT: u32 = 24;
}

/// One mapping of a frame: the address space and the virtual address (bit 0: mapped by a PMD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmapEntry {
    /// The address space.
    pub space: u32,
    va: u64,
}

impl RmapEntry {
    /// A mapping of `space` at `va`; `huge` when a PMD maps it.
    pub fn new(space: u32, va: u64, huge: bool) -> Self {
        Self { space, va: va | u64::from(huge) }
    }
    /// The mapped virtual address.
    pub fn va(&self) -> u64 {
        self.va & !1
    }
    /// Mapped by a PMD.
    pub fn huge(&self) -> bool {
        self.va & 1 != 0
    }
}

#[derive(Debug, Default)]
enum Rmap {
    #[default]
    Empty,
    One(RmapEntry),
    Many(Vec<RmapEntry>),
}

/// The metadata of one frame.
#[derive(Debug, Default)]
pub struct PageMeta {
    refcount: AtomicU32,
    mapcount: AtomicU32,
    flags: AtomicU32,
    owner: AtomicU64,
    index: AtomicU64,
    rmap: Mutex<Rmap>,
}

impl PageMeta {
    /// The reference count.
    pub fn refcount(&self) -> u32 {
        self.refcount.load(Ordering::Acquire)
    }
    /// Takes a reference.
    pub fn get(&self) {
        self.refcount.fetch_add(1, Ordering::AcqRel);
    }
    /// Drops a reference; returns the count left.
    pub fn put(&self) -> u32 {
        let old = self.refcount.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(old > 0, "reference count underflow");
        old - 1
    }
    /// The number of page-table mappings.
    pub fn mapcount(&self) -> u32 {
        self.mapcount.load(Ordering::Acquire)
    }
    /// The flags word.
    pub fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }
    /// Whether every bit of `f` is set.
    pub fn has(&self, f: u32) -> bool {
        self.flags() & f == f
    }
    /// Sets flag bits.
    pub fn set(&self, f: u32) {
        self.flags.fetch_or(f, Ordering::AcqRel);
    }
    /// Clears flag bits.
    pub fn clear(&self, f: u32) {
        self.flags.fetch_and(!f, Ordering::AcqRel);
    }
    /// Takes the page lock if free.
    pub fn trylock(&self) -> bool {
        self.flags.fetch_or(flags::LOCKED, Ordering::AcqRel) & flags::LOCKED == 0
    }
    /// Releases the page lock.
    pub fn unlock(&self) {
        self.clear(flags::LOCKED);
    }
    /// The compound order (0 for a base page).
    pub fn order(&self) -> u32 {
        if self.has(flags::HEAD) { self.flags() >> flags::ORDER_SHIFT } else { 0 }
    }
    /// The owner word (file or pagemap id).
    pub fn owner(&self) -> u64 {
        self.owner.load(Ordering::Acquire)
    }
    /// The page's index in its owner (file page offset, or driver data for device pages).
    pub fn index(&self) -> u64 {
        self.index.load(Ordering::Acquire)
    }
    /// Sets the owner and index.
    pub fn set_owner(&self, owner: u64, index: u64) {
        self.owner.store(owner, Ordering::Release);
        self.index.store(index, Ordering::Release);
    }

    /// Initialises a freshly allocated page: one reference, no mappings, `kind` flags.
    pub fn init(&self, kind: u32, order: u32) {
        let mut f = kind | flags::ALLOCATED;
        if order > 0 {
            f |= flags::HEAD | (order << flags::ORDER_SHIFT);
        }
        self.flags.store(f, Ordering::Release);
        self.refcount.store(1, Ordering::Release);
        self.mapcount.store(0, Ordering::Release);
        self.owner.store(0, Ordering::Release);
        self.index.store(0, Ordering::Release);
        *self.rmap.lock() = Rmap::Empty;
    }

    /// Back to the state of a never-used frame (a section taken into use again).
    fn wipe(&self) {
        self.reset();
        self.owner.store(0, Ordering::Release);
        self.index.store(0, Ordering::Release);
    }

    /// Marks the page free.
    pub fn reset(&self) {
        self.flags.store(0, Ordering::Release);
        self.refcount.store(0, Ordering::Release);
        self.mapcount.store(0, Ordering::Release);
        *self.rmap.lock() = Rmap::Empty;
    }

    /// Records a mapping (and bumps the map count).
    pub fn rmap_add(&self, e: RmapEntry) {
        let mut r = self.rmap.lock();
        *r = match core::mem::take(&mut *r) {
            Rmap::Empty => Rmap::One(e),
            Rmap::One(a) => Rmap::Many(alloc::vec![a, e]),
            Rmap::Many(mut v) => {
                v.push(e);
                Rmap::Many(v)
            }
        };
        self.mapcount.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets a mapping; returns whether it was recorded.
    pub fn rmap_remove(&self, e: RmapEntry) -> bool {
        let mut r = self.rmap.lock();
        let found = match &mut *r {
            Rmap::Empty => false,
            Rmap::One(a) => {
                if *a == e {
                    *r = Rmap::Empty;
                    true
                } else {
                    false
                }
            }
            Rmap::Many(v) => match v.iter().position(|x| *x == e) {
                Some(i) => {
                    v.swap_remove(i);
                    if v.len() == 1 {
                        *r = Rmap::One(v[0]);
                    }
                    true
                }
                None => false,
            },
        };
        if found {
            self.mapcount.fetch_sub(1, Ordering::AcqRel);
        }
        found
    }

    /// Replaces a mapping's address in place (mremap moves), keeping the map count.
    pub fn rmap_move(&self, from: RmapEntry, to: RmapEntry) -> bool {
        let mut r = self.rmap.lock();
        match &mut *r {
            Rmap::Empty => false,
            Rmap::One(a) if *a == from => {
                *a = to;
                true
            }
            Rmap::One(_) => false,
            Rmap::Many(v) => match v.iter_mut().find(|x| **x == from) {
                Some(x) => {
                    *x = to;
                    true
                }
                None => false,
            },
        }
    }

    /// Every mapping of the page.
    pub fn rmap(&self) -> Vec<RmapEntry> {
        match &*self.rmap.lock() {
            Rmap::Empty => Vec::new(),
            Rmap::One(a) => alloc::vec![*a],
            Rmap::Many(v) => v.clone(),
        }
    }
}

/// A run of frames with metadata: `live` frames from `base` are in use (0: the section is
/// vacant, its storage kept for reuse at the same base).
#[derive(Debug)]
struct Section {
    base: u64,
    metas: Vec<PageMeta>,
    live: AtomicU64,
}

impl Section {
    fn covers(&self) -> core::ops::Range<u64> {
        self.base..self.base + self.live.load(Ordering::Acquire)
    }
}

/// The maximum number of sections (RAM plus device memory regions).
pub const MAX_SECTIONS: usize = 32;

/// The frame table.
#[derive(Debug)]
pub struct FrameTable {
    sections: [Once<Section>; MAX_SECTIONS],
    /// Slots with a section (live or vacant); held while sections are added or removed.
    count: Mutex<usize>,
}

impl Default for FrameTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The frame table has no room for another section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

impl FrameTable {
    /// An empty table.
    pub fn new() -> Self {
        Self { sections: [const { Once::new() }; MAX_SECTIONS], count: Mutex::new(0) }
    }

    /// Adds metadata for frames `[base, base + frames)`: a vacant section at `base` with room
    /// for them is taken into use again (its metadata reset), otherwise a new one is made.
    pub fn add_section(&self, base: Pfn, frames: u64) -> Result<(), TableFull> {
        let mut count = self.count.lock();
        let vacant = self.sections[..*count]
            .iter()
            .filter_map(Once::get)
            .filter(|s| s.base == base.0 && s.live.load(Ordering::Acquire) == 0 && s.metas.len() as u64 >= frames)
            .min_by_key(|s| s.metas.len());
        if let Some(s) = vacant {
            s.metas[..frames as usize].iter().for_each(PageMeta::wipe);
            s.live.store(frames, Ordering::Release);
            return Ok(());
        }
        if *count == MAX_SECTIONS {
            return Err(TableFull);
        }
        let mut metas = Vec::new();
        metas.resize_with(frames as usize, PageMeta::default);
        self.sections[*count].call_once(|| Section { base: base.0, metas, live: AtomicU64::new(frames) });
        *count += 1;
        Ok(())
    }

    /// Takes the section starting at `base` out of use: its frames have no metadata until a
    /// section is added there again. Returns the frames it has room for, `None` if no section
    /// in use starts there. The caller makes sure no frame of it is referenced.
    pub fn remove_section(&self, base: Pfn) -> Option<u64> {
        let count = self.count.lock();
        let s = self.sections[..*count]
            .iter()
            .filter_map(Once::get)
            .find(|s| s.base == base.0 && s.live.load(Ordering::Acquire) > 0)?;
        s.live.store(0, Ordering::Release);
        Some(s.metas.len() as u64)
    }

    /// The frames of the section in use that starts at `base`, if there is one.
    pub fn section_at(&self, base: Pfn) -> Option<u64> {
        self.sections
            .iter()
            .map_while(|s| s.get())
            .map(|s| (s.base, s.live.load(Ordering::Acquire)))
            .find(|&(b, live)| b == base.0 && live > 0)
            .map(|(_, live)| live)
    }

    /// The number of sections in use (RAM included).
    pub fn live_sections(&self) -> usize {
        let count = self.count.lock();
        self.sections[..*count].iter().filter_map(Once::get).filter(|s| s.live.load(Ordering::Acquire) > 0).count()
    }

    /// Whether any section in use covers a frame of `[base, base + frames)`.
    pub fn overlaps(&self, base: Pfn, frames: u64) -> bool {
        self.sections.iter().map_while(|s| s.get()).any(|s| {
            let r = s.covers();
            r.start < base.0 + frames && base.0 < r.end
        })
    }

    /// The metadata of frame `pfn`, if any section in use covers it.
    pub fn get(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.sections
            .iter()
            .map_while(|s| s.get())
            .find_map(|s| if s.covers().contains(&pfn.0) { s.metas.get((pfn.0 - s.base) as usize) } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_cover_their_frames_only() {
        let t = FrameTable::new();
        t.add_section(Pfn(100), 10).unwrap();
        t.add_section(Pfn(1000), 5).unwrap();
        assert!(t.get(Pfn(99)).is_none());
        assert!(t.get(Pfn(109)).is_some());
        assert!(t.get(Pfn(110)).is_none());
        assert!(t.get(Pfn(1004)).is_some());
        assert!(t.get(Pfn(1005)).is_none());
    }

    #[test]
    fn removed_sections_are_reused_at_their_base_and_come_back_clean() {
        let t = FrameTable::new();
        t.add_section(Pfn(0), 100).unwrap();
        t.add_section(Pfn(1000), 10).unwrap();
        assert_eq!(t.live_sections(), 2);
        t.get(Pfn(1003)).unwrap().init(flags::DEVICE, 0);
        t.get(Pfn(1003)).unwrap().set_owner(5, 6);
        assert_eq!(t.remove_section(Pfn(1000)), Some(10));
        assert_eq!(t.remove_section(Pfn(1000)), None);
        assert!(t.get(Pfn(1003)).is_none() && !t.overlaps(Pfn(1000), 10));
        assert_eq!(t.live_sections(), 1);
        // Far more cycles than slots, at one base.
        for _ in 0..10 * MAX_SECTIONS {
            t.add_section(Pfn(1000), 8).unwrap();
            let m = t.get(Pfn(1003)).unwrap();
            assert_eq!((m.refcount(), m.flags(), m.owner(), m.index()), (0, 0, 0, 0));
            m.init(flags::DEVICE, 0);
            assert!(t.get(Pfn(1008)).is_none(), "only the frames asked for are covered");
            t.remove_section(Pfn(1000)).unwrap();
        }
        assert_eq!(t.live_sections(), 1);
        // A bigger region at that base needs a new slot: with every other slot live, none is
        // left (the vacant one is too small).
        for k in 1..MAX_SECTIONS as u64 - 1 {
            t.add_section(Pfn(1000 * (k + 1)), 20).unwrap();
        }
        assert_eq!(t.add_section(Pfn(1000), 20), Err(TableFull));
        assert_eq!(t.live_sections(), MAX_SECTIONS - 1);
    }

    #[test]
    fn rmap_counts_mappings() {
        let m = PageMeta::default();
        m.init(flags::ANON, 0);
        let a = RmapEntry::new(1, 0x1000, false);
        let b = RmapEntry::new(2, 0x1000, false);
        let c = RmapEntry::new(2, 0x2000, true);
        m.rmap_add(a);
        m.rmap_add(b);
        m.rmap_add(c);
        assert_eq!(m.mapcount(), 3);
        assert!(m.rmap_remove(b));
        assert!(!m.rmap_remove(b));
        assert_eq!(m.rmap(), alloc::vec![a, c]);
        assert!(m.rmap_move(c, RmapEntry::new(2, 0x4000, true)));
        assert!(m.rmap_remove(a));
        assert_eq!(m.mapcount(), 1);
        assert_eq!(m.rmap()[0].va(), 0x4000);
        assert!(m.rmap()[0].huge());
    }

    #[test]
    fn lock_bit_excludes() {
        let m = PageMeta::default();
        assert!(m.trylock());
        assert!(!m.trylock());
        m.unlock();
        assert!(m.trylock());
    }
}
