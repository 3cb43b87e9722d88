//! A software device page table: virtual page → device-visible frame, with write and atomic
//! bits, in 512-entry leaves (one per 2 MiB of virtual space) like a real device MMU's last
//! level.
//!
//! It is what a mirroring driver keeps coherent with the CPU page tables: dmirror's table
//! (`dmirror->pt`, an xarray in Linux) and the shadow of a device MMU domain. Leaves make the
//! operations a mirror does in bulk cheap: filling a range touches one leaf per 2 MiB, and an
//! invalidation clears whole leaves by dropping them (a partial leaf by clearing entries), so
//! invalidating a range costs O(leaves + entries in partial leaves), not a lookup per page.
//!
//! Invariants: a leaf exists only while it holds at least one entry (`live` counts them); an
//! entry is 0 when absent, otherwise `frame << 12 | flags` with `PRESENT` set.

use crate::addr::Pfn;
use crate::range::DeviceFormat;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;

const LEAF: u64 = 512;
const PRESENT: u64 = 1 << 0;
const WRITE: u64 = 1 << 1;
const ATOMIC: u64 = 1 << 2;

/// One device page-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The frame the device reads and writes.
    pub frame: Pfn,
    /// The device may write.
    pub write: bool,
    /// Device-exclusive (atomic) access.
    pub atomic: bool,
}

impl Entry {
    fn encode(self) -> u64 {
        self.frame.0 << 12 | PRESENT | if self.write { WRITE } else { 0 } | if self.atomic { ATOMIC } else { 0 }
    }
    fn decode(e: u64) -> Option<Entry> {
        (e & PRESENT != 0).then_some(Entry { frame: Pfn(e >> 12), write: e & WRITE != 0, atomic: e & ATOMIC != 0 })
    }
}

/// The leaf entry format as a range-fault [`DeviceFormat`]: a range fault with
/// [`Driver<LeafFormat>`](crate::range::Driver) writes words that [`DevPageTable::fill_raw`]
/// stores as they are. `DEVICE_PRIVATE` marks the device's own memory (the frame is then the
/// device page's number, which this table's users resolve themselves); `ERROR` and `NONE` are
/// not present and store nothing.
#[derive(Debug, Clone, Copy)]
pub struct LeafFormat;

impl DeviceFormat for LeafFormat {
    const VALID: u64 = PRESENT;
    const WRITE: u64 = WRITE;
    const DEVICE_PRIVATE: u64 = 1 << 3;
    const ERROR: u64 = 1 << 4;
    const NONE: u64 = 0;
    const SPECIAL: u64 = 1 << 5;
    const PFN_SHIFT: u32 = 12;
}

struct Leaf {
    live: u16,
    e: [u64; LEAF as usize],
}

/// The table, keyed by virtual page number.
#[derive(Default)]
pub struct DevPageTable {
    leaves: BTreeMap<u64, Box<Leaf>>,
    entries: u64,
}

impl core::fmt::Debug for DevPageTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DevPageTable").field("entries", &self.entries).field("leaves", &self.leaves.len()).finish()
    }
}

impl DevPageTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries in the table.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The entry for virtual page `vpn`.
    pub fn get(&self, vpn: u64) -> Option<Entry> {
        self.leaves.get(&(vpn / LEAF)).and_then(|l| Entry::decode(l.e[(vpn % LEAF) as usize]))
    }

    /// Sets the entry for `vpn`.
    pub fn insert(&mut self, vpn: u64, e: Entry) {
        let leaf = self.leaves.entry(vpn / LEAF).or_insert_with(|| Box::new(Leaf { live: 0, e: [0; LEAF as usize] }));
        let slot = &mut leaf.e[(vpn % LEAF) as usize];
        if *slot == 0 {
            leaf.live += 1;
            self.entries += 1;
        }
        *slot = e.encode();
    }

    /// Stores `words` (in [`LeafFormat`]) for the pages from `vpn` on, as they are: present
    /// words become entries, others remove the entry.
    pub fn fill_raw(&mut self, vpn: u64, words: &[u64]) {
        let mut i = 0;
        while i < words.len() {
            let v = vpn + i as u64;
            let (key, off) = (v / LEAF, (v % LEAF) as usize);
            let n = (LEAF as usize - off).min(words.len() - i);
            let leaf = self.leaves.entry(key).or_insert_with(|| Box::new(Leaf { live: 0, e: [0; LEAF as usize] }));
            for (slot, &w) in leaf.e[off..off + n].iter_mut().zip(&words[i..i + n]) {
                let new = if w & PRESENT != 0 { w } else { 0 };
                match (*slot != 0, new != 0) {
                    (false, true) => {
                        leaf.live += 1;
                        self.entries += 1;
                    }
                    (true, false) => {
                        leaf.live -= 1;
                        self.entries -= 1;
                    }
                    _ => {}
                }
                *slot = new;
            }
            if leaf.live == 0 {
                self.leaves.remove(&key);
            }
            i += n;
        }
    }

    /// Removes the entry for `vpn` if it maps `frame` (the erase of a page the device no
    /// longer owns); returns whether it did.
    pub fn remove_if(&mut self, vpn: u64, frame: Pfn) -> bool {
        let key = vpn / LEAF;
        let Some(leaf) = self.leaves.get_mut(&key) else { return false };
        let slot = &mut leaf.e[(vpn % LEAF) as usize];
        if Entry::decode(*slot).is_none_or(|e| e.frame != frame) {
            return false;
        }
        *slot = 0;
        leaf.live -= 1;
        self.entries -= 1;
        if leaf.live == 0 {
            self.leaves.remove(&key);
        }
        true
    }

    /// Removes every entry in `[start, end)` (virtual page numbers); returns how many.
    pub fn clear(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let mut removed = 0;
        let keys: alloc::vec::Vec<u64> = self.leaves.range(start / LEAF..end.div_ceil(LEAF)).map(|(k, _)| *k).collect();
        for k in keys {
            let (ls, le) = (k * LEAF, (k + 1) * LEAF);
            if start <= ls && le <= end {
                if let Some(l) = self.leaves.remove(&k) {
                    removed += u64::from(l.live);
                }
                continue;
            }
            let Some(leaf) = self.leaves.get_mut(&k) else { continue };
            for slot in &mut leaf.e[(start.max(ls) - ls) as usize..(end.min(le) - ls) as usize] {
                if *slot != 0 {
                    *slot = 0;
                    leaf.live -= 1;
                    removed += 1;
                }
            }
            if leaf.live == 0 {
                self.leaves.remove(&k);
            }
        }
        self.entries -= removed;
        removed
    }

    /// Removes everything.
    pub fn clear_all(&mut self) {
        self.leaves.clear();
        self.entries = 0;
    }

    /// Whether any entry in `[start, end)` is atomic.
    pub fn any_atomic(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        self.leaves.range(start / LEAF..end.div_ceil(LEAF)).any(|(&k, l)| {
            let (ls, le) = (k * LEAF, (k + 1) * LEAF);
            l.e[(start.max(ls) - ls) as usize..(end.min(le) - ls) as usize].iter().any(|&e| e & ATOMIC != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    fn e(f: u64, write: bool) -> Entry {
        Entry { frame: Pfn(f), write, atomic: false }
    }

    #[test]
    fn fill_raw_takes_leaf_format_words() {
        use crate::range::{DeviceFormat, Driver, PageState, PfnEncoding};
        let mut t = DevPageTable::new();
        let valid = |f: u64, write: bool| {
            Driver::<LeafFormat>::encode(PageState::Valid { pfn: Pfn(f), write, order: 0, device_private: false })
        };
        let mut words = alloc::vec![LeafFormat::NONE; 600];
        words[0] = valid(0x10, true);
        words[599] = valid(0x20, false);
        words[300] = LeafFormat::ERROR;
        t.fill_raw(500, &words);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(500), Some(e(0x10, true)));
        assert_eq!(t.get(1099), Some(e(0x20, false)));
        assert_eq!(t.get(800), None, "an error word stores nothing");
        t.fill_raw(500, &[LeafFormat::NONE]);
        assert_eq!(t.get(500), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.leaves.len(), 1, "the emptied leaf is dropped");
    }

    #[test]
    fn insert_get_remove() {
        let mut t = DevPageTable::new();
        assert_eq!(t.get(7), None);
        t.insert(7, e(0x1234, true));
        t.insert(7, e(0x1235, false));
        assert_eq!(t.get(7), Some(e(0x1235, false)));
        assert_eq!(t.len(), 1);
        assert!(!t.remove_if(7, Pfn(0x1234)), "another frame is not erased");
        assert!(t.remove_if(7, Pfn(0x1235)));
        assert!(t.is_empty());
        assert!(t.leaves.is_empty(), "empty leaves are dropped");
    }

    /// Random inserts and clears checked against a map.
    #[test]
    fn clear_matches_a_model() {
        let mut t = DevPageTable::new();
        let mut m: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut rng = crate::testing::Rng(0x2545_f491_4f6c_dd1d);
        let mut rnd = || rng.next();
        for _ in 0..5000 {
            let a = rnd() % 4096;
            if rnd() % 4 == 0 {
                let b = a + rnd() % 1500;
                let n = t.clear(a, b);
                let keys: alloc::vec::Vec<u64> = m.range(a..b).map(|(k, _)| *k).collect();
                assert_eq!(n, keys.len() as u64);
                keys.iter().for_each(|k| {
                    m.remove(k);
                });
            } else {
                let v = Entry { frame: Pfn(rnd() % 1_000_000), write: rnd() % 2 == 0, atomic: rnd() % 7 == 0 };
                t.insert(a, v);
                m.insert(a, v);
            }
            assert_eq!(t.len(), m.len() as u64);
        }
        for k in 0..4096 {
            assert_eq!(t.get(k), m.get(&k).copied());
        }
        assert_eq!(t.any_atomic(0, 4096), m.values().any(|e| e.atomic));
        t.clear(0, u64::MAX / 2);
        assert!(t.is_empty() && t.leaves.is_empty());
    }
}
