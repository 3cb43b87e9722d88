//! Virtual memory areas: the ordered, non-overlapping set of mappings of an address space.
//!
//! Owns the VMA records (range, protection, flags, backing) and the range arithmetic on them:
//! lookup, splitting at a boundary, removal, merging of compatible neighbours, and the search
//! for free gaps. It never touches page tables.
//!
//! Invariants: VMAs are page-aligned, non-empty, non-overlapping, below [`USER_END`]; a file
//! VMA's `pgoff` is the file page mapped at its `start`.

use super::file::MemFile;
use super::pagetable::USER_END;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// Access protection of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prot(u8);

impl Prot {
    /// No access.
    pub const NONE: Prot = Prot(0);
    /// Readable.
    pub const READ: Prot = Prot(1);
    /// Writable.
    pub const WRITE: Prot = Prot(2);
    /// Executable.
    pub const EXEC: Prot = Prot(4);
    /// Readable and writable.
    pub const RW: Prot = Prot(3);

    /// From Linux's `PROT_*` bits (1 read, 2 write, 4 exec); other bits are an error.
    pub fn from_bits(bits: u32) -> Option<Prot> {
        if bits & !7 != 0 { None } else { Some(Prot(bits as u8)) }
    }
    /// Whether every right in `other` is here.
    pub fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }
    /// Readable.
    pub fn read(self) -> bool {
        self.contains(Prot::READ)
    }
    /// Writable.
    pub fn write(self) -> bool {
        self.contains(Prot::WRITE)
    }
    /// Executable.
    pub fn exec(self) -> bool {
        self.contains(Prot::EXEC)
    }
    /// No access at all.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl core::ops::BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

/// Mapping flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmaFlags {
    /// `MAP_SHARED`: writes go to the backing object and are seen by every mapping.
    pub shared: bool,
    /// `MADV_HUGEPAGE`.
    pub hugepage: bool,
    /// `MADV_NOHUGEPAGE`.
    pub nohugepage: bool,
    /// `MAP_HUGETLB`: backed by explicit 2 MiB pages, never split.
    pub hugetlb: bool,
}

/// What a mapping shows.
#[derive(Debug, Clone)]
pub enum Backing {
    /// Private anonymous memory (zero-filled on demand).
    Anon,
    /// A file (or the anonymous file behind `MAP_SHARED | MAP_ANONYMOUS`).
    File {
        /// The file.
        file: Arc<MemFile>,
        /// The file page mapped at the VMA's start.
        pgoff: u64,
    },
}

/// One mapping.
#[derive(Debug, Clone)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Protection.
    pub prot: Prot,
    /// Flags.
    pub flags: VmaFlags,
    /// Backing.
    pub backing: Backing,
}

impl Vma {
    /// Private anonymous memory.
    pub fn is_anon(&self) -> bool {
        matches!(self.backing, Backing::Anon)
    }
    /// Writes are private copies (copy-on-write mapping).
    pub fn is_cow(&self) -> bool {
        !self.flags.shared
    }
    /// The length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// Never empty (kept for API completeness).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// The file page index backing `va`, for a file VMA.
    pub fn file_index(&self, va: u64) -> Option<(&Arc<MemFile>, u64)> {
        match &self.backing {
            Backing::File { file, pgoff } => Some((file, pgoff + (va - self.start) / 4096)),
            Backing::Anon => None,
        }
    }

    /// The part of this VMA from `at` on, with the backing offset adjusted.
    fn tail_from(&self, at: u64) -> Vma {
        let mut t = self.clone();
        t.start = at;
        if let Backing::File { pgoff, .. } = &mut t.backing {
            *pgoff += (at - self.start) / 4096;
        }
        t
    }

    /// Whether `next` continues this VMA exactly (same rights and flags, contiguous backing).
    fn mergeable(&self, next: &Vma) -> bool {
        if self.end != next.start || self.prot != next.prot || self.flags != next.flags {
            return false;
        }
        match (&self.backing, &next.backing) {
            (Backing::Anon, Backing::Anon) => true,
            (Backing::File { file: a, pgoff: pa }, Backing::File { file: b, pgoff: pb }) => {
                Arc::ptr_eq(a, b) && pa + self.len() / 4096 == *pb
            }
            _ => false,
        }
    }
}

/// The VMAs of one address space.
#[derive(Debug, Default, Clone)]
pub struct VmaTree {
    map: BTreeMap<u64, Vma>,
}

impl VmaTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The VMA containing `va`.
    pub fn find(&self, va: u64) -> Option<&Vma> {
        self.map.range(..=va).next_back().map(|(_, v)| v).filter(|v| va < v.end)
    }

    /// The VMAs intersecting `[start, end)`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Vma> {
        let first = self.map.range(..=start).next_back().filter(|(_, v)| v.end > start).map(|(k, _)| *k);
        let from = first.unwrap_or(start);
        self.map.range(from..end).map(|(_, v)| v).filter(move |v| v.end > start)
    }

    /// Whether `[start, end)` is entirely covered by VMAs, without holes.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        for v in self.overlapping(start, end) {
            if v.start > at {
                return false;
            }
            at = v.end;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// Whether no VMA intersects `[start, end)`.
    pub fn is_free(&self, start: u64, end: u64) -> bool {
        self.overlapping(start, end).next().is_none()
    }

    /// Splits the VMA straddling `at` (if any) so that a VMA boundary falls at `at`.
    pub fn split_at(&mut self, at: u64) {
        let Some((&key, v)) = self.map.range(..at).next_back() else { return };
        if v.end <= at {
            return;
        }
        let tail = v.tail_from(at);
        if let Some(v) = self.map.get_mut(&key) {
            v.end = at;
        }
        self.map.insert(at, tail);
    }

    /// Inserts a VMA; the caller guarantees its range is free.
    pub fn insert(&mut self, vma: Vma) {
        debug_assert!(self.is_free(vma.start, vma.end), "overlapping VMA insert");
        self.map.insert(vma.start, vma);
    }

    /// Removes and returns the VMAs wholly inside `[start, end)` (split first).
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<Vma> {
        let keys: Vec<u64> = self.map.range(start..end).map(|(k, _)| *k).collect();
        keys.into_iter().filter_map(|k| self.map.remove(&k)).collect()
    }

    /// Mutable access to the VMAs starting inside `[start, end)`.
    pub fn range_mut(&mut self, start: u64, end: u64) -> impl Iterator<Item = &mut Vma> {
        self.map.range_mut(start..end).map(|(_, v)| v)
    }

    /// Merges compatible neighbours around `[start, end)`.
    pub fn merge_around(&mut self, start: u64, end: u64) {
        let lo = self.map.range(..start).next_back().map(|(k, _)| *k).unwrap_or(start);
        let keys: Vec<u64> = self.map.range(lo..=end).map(|(k, _)| *k).collect();
        let mut prev: Option<u64> = None;
        for k in keys {
            if let Some(p) = prev {
                let merge = match (self.map.get(&p), self.map.get(&k)) {
                    (Some(a), Some(b)) => a.mergeable(b),
                    _ => false,
                };
                if merge {
                    if let Some(b) = self.map.remove(&k)
                        && let Some(a) = self.map.get_mut(&p)
                    {
                        a.end = b.end;
                    }
                    continue;
                }
            }
            prev = Some(k);
        }
    }

    /// Every VMA in order.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> {
        self.map.values()
    }

    /// The number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No VMAs.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The highest free, `align`-aligned range of `len` bytes in `[floor, ceiling)`.
    pub fn find_gap(&self, len: u64, align: u64, floor: u64, ceiling: u64) -> Option<u64> {
        let ceiling = ceiling.min(USER_END);
        let mut top = ceiling;
        // Walk VMAs from the top down; each gap is [vma.end, top).
        let mut iter = self.map.range(..ceiling).rev().map(|(_, v)| v).peekable();
        loop {
            let bottom = iter.peek().map(|v| v.end.max(floor)).unwrap_or(floor);
            if top >= bottom + len {
                let cand = (top - len) & !(align - 1);
                if cand >= bottom {
                    return Some(cand);
                }
            }
            match iter.next() {
                Some(v) => top = v.start.min(top),
                None => return None,
            }
            if top <= floor {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64) -> Vma {
        Vma { start, end, prot: Prot::RW, flags: VmaFlags::default(), backing: Backing::Anon }
    }

    #[test]
    fn find_and_cover() {
        let mut t = VmaTree::new();
        t.insert(anon(0x1000, 0x3000));
        t.insert(anon(0x5000, 0x6000));
        assert!(t.find(0xfff).is_none());
        assert_eq!(t.find(0x2fff).unwrap().start, 0x1000);
        assert!(t.find(0x3000).is_none());
        assert!(t.covers(0x1000, 0x3000));
        assert!(!t.covers(0x1000, 0x5001));
        assert!(t.is_free(0x3000, 0x5000));
        assert!(!t.is_free(0x2000, 0x5001));
        assert_eq!(t.overlapping(0x2000, 0x5001).count(), 2);
    }

    #[test]
    fn split_then_merge_restores_one_vma() {
        let mut t = VmaTree::new();
        t.insert(anon(0x1000, 0x9000));
        t.split_at(0x3000);
        t.split_at(0x5000);
        t.split_at(0x5000);
        assert_eq!(t.len(), 3);
        for v in t.range_mut(0x3000, 0x5000) {
            v.prot = Prot::READ;
        }
        t.merge_around(0x3000, 0x5000);
        assert_eq!(t.len(), 3, "different protection stays separate");
        for v in t.range_mut(0x3000, 0x5000) {
            v.prot = Prot::RW;
        }
        t.merge_around(0x3000, 0x5000);
        assert_eq!(t.len(), 1);
        assert_eq!(t.find(0x4000).unwrap().end, 0x9000);
    }

    #[test]
    fn remove_range_after_split() {
        let mut t = VmaTree::new();
        t.insert(anon(0x1000, 0x9000));
        t.split_at(0x2000);
        t.split_at(0x4000);
        let removed = t.remove_range(0x2000, 0x4000);
        assert_eq!(removed.len(), 1);
        assert_eq!((removed[0].start, removed[0].end), (0x2000, 0x4000));
        assert!(t.is_free(0x2000, 0x4000));
        assert!(t.covers(0x4000, 0x9000) && t.covers(0x1000, 0x2000));
    }

    #[test]
    fn gaps_are_top_down_and_aligned() {
        let mut t = VmaTree::new();
        assert_eq!(t.find_gap(0x2000, 0x1000, 0x1000, 0x10_0000), Some(0xf_e000));
        t.insert(anon(0xf_0000, 0x10_0000));
        assert_eq!(t.find_gap(0x2000, 0x1000, 0x1000, 0x10_0000), Some(0xe_e000));
        assert_eq!(t.find_gap(0x2_0000, 0x2_0000, 0x1000, 0x10_0000), Some(0xc_0000));
        assert_eq!(t.find_gap(0x10_0000, 0x1000, 0x1000, 0x10_0000), None);
        t.insert(anon(0x1000, 0xe_0000));
        assert_eq!(t.find_gap(0x1_0000, 0x1000, 0x1000, 0x10_0000), Some(0xe_0000));
        assert_eq!(t.find_gap(0x1_1000, 0x1000, 0x1000, 0x10_0000), None);
    }
}
