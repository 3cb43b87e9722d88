//! Residency of the managed pages: where each page lives, who maps it remotely, who holds a
//! read copy, its access history, and each device memory's use.
//!
//! Invariants (checked by [`State::check`], which the tests run after every operation):
//! - a device's `used` equals the pages resident on it plus the read copies it holds, and never
//!   exceeds its capacity;
//! - `per_block[b]` counts the same pages per 2 MiB VA block;
//! - a page never has a read copy on the device that holds it, nor a remote mapping there;
//! - a device's `remote` bitmap has bit `p` set exactly when page `p`'s `remote` has that
//!   device's bit (the bitmap answers [`State::remote_pages`] a word at a time).

use super::{BLOCK, Loc, MAX_DEVICES};
use alloc::vec;
use alloc::vec::Vec;

/// What is known of one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// The memory holding the page's data.
    pub loc: Loc,
    /// Devices that map it where it is, remotely (bit n = device n).
    pub remote: u8,
    /// Devices holding a read-only copy (bit n = device n), for read duplication.
    pub copies: u8,
    /// Simulated time of the last access (or arrival in device memory), ns.
    pub last_access: u64,
    /// Lines accessed (saturating), for frequency-based policies.
    pub accesses: u32,
    /// Times migrated.
    pub migrations: u16,
    /// Simulated time of the last migration, ns.
    pub last_migration: u64,
    /// Brought in by a prefetch and not accessed since.
    pub prefetched: bool,
    /// Any processor has touched it.
    pub touched: bool,
}

impl Page {
    fn new() -> Self {
        Page {
            loc: Loc::Cpu,
            remote: 0,
            copies: 0,
            last_access: 0,
            accesses: 0,
            migrations: 0,
            last_migration: 0,
            prefetched: false,
            touched: false,
        }
    }
}

/// One device's memory.
#[derive(Debug, Clone)]
pub struct DevMem {
    /// Pages it may hold.
    pub capacity: u32,
    /// Pages it holds (resident pages plus read copies).
    pub used: u32,
    /// Per VA block: pages of the block it holds.
    pub per_block: Vec<u32>,
    /// Per VA block: allocation stamp of the block's last allocation here (UVM moves a root
    /// chunk to the tail of its list when a VA block allocates from it).
    pub stamp: Vec<u64>,
    /// Device memory filled up at least once (oversubscription has begun).
    pub filled: bool,
    /// The pages it maps remotely, a bit per page (as the pages' `remote` bits say).
    remote: Vec<u64>,
}

/// Residency of all managed pages.
#[derive(Debug, Clone)]
pub struct State {
    pages: Vec<Page>,
    devs: Vec<DevMem>,
    stamp: u64,
    /// Per block, the pages of it from its start that an allocation holds (`BLOCK` unless an
    /// allocation ends inside it: [`State::set_extent`]).
    extent: Vec<u32>,
}

impl State {
    /// `pages` pages, all in system memory, and devices of the given capacities (pages).
    pub fn new(pages: u32, capacities: &[u32]) -> Self {
        assert!(capacities.len() <= MAX_DEVICES);
        let blocks = pages.div_ceil(BLOCK) as usize;
        let devs = capacities
            .iter()
            .map(|&capacity| DevMem {
                capacity,
                used: 0,
                per_block: vec![0; blocks],
                stamp: vec![0; blocks],
                filled: false,
                remote: vec![0; (pages as usize).div_ceil(64)],
            })
            .collect();
        State { pages: vec![Page::new(); pages as usize], devs, stamp: 0, extent: vec![BLOCK; blocks] }
    }

    /// Block `b`'s allocation ends `pages` pages into it (UVMSmart's smaller tree root of an
    /// allocation's rest, [`crate::place::workload::Alloc::Uvmsmart`], or a workload's last page
    /// before the next 2 MiB boundary): the rest of the block is a hole no policy's block range
    /// reaches and nothing migrates into.
    pub fn set_extent(&mut self, b: u32, pages: u32) {
        if let Some(e) = self.extent.get_mut(b as usize) {
            *e = pages.min(BLOCK);
        }
    }
    /// The pages of block `b` from its start an allocation holds.
    pub fn block_extent(&self, b: u32) -> u32 {
        self.extent.get(b as usize).copied().unwrap_or(BLOCK)
    }
    /// Whether page `p` lies in an allocation (not in a hole after one).
    pub fn in_extent(&self, p: u32) -> bool {
        p % BLOCK < self.block_extent(p / BLOCK)
    }

    /// Managed pages.
    pub fn len(&self) -> u32 {
        self.pages.len() as u32
    }
    /// No pages.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
    /// VA blocks.
    pub fn blocks(&self) -> u32 {
        self.len().div_ceil(BLOCK)
    }
    /// The pages of block `b`.
    pub fn block_range(&self, b: u32) -> core::ops::Range<u32> {
        b * BLOCK..(b * BLOCK + self.block_extent(b)).min(self.len())
    }
    /// Devices.
    pub fn devices(&self) -> usize {
        self.devs.len()
    }
    /// Page `p`.
    pub fn page(&self, p: u32) -> &Page {
        &self.pages[p as usize]
    }
    /// Device `d`'s memory.
    pub fn dev(&self, d: usize) -> &DevMem {
        &self.devs[d]
    }
    /// Device `d` may hold `pages` pages from now on (never fewer than it holds: the caller
    /// evicts first). Full at once if it holds that many.
    pub fn set_capacity(&mut self, d: usize, pages: u32) {
        let m = &mut self.devs[d];
        m.capacity = pages.max(m.used);
        if m.used == m.capacity {
            m.filled = true;
        }
    }

    /// Pages device `d` can still take.
    pub fn free(&self, d: usize) -> u32 {
        self.devs[d].capacity - self.devs[d].used
    }
    /// Whether device `d` can read page `p` without a fault, and where the data it reads lives.
    pub fn readable_by(&self, p: u32, d: u8) -> Option<Loc> {
        let pg = &self.pages[p as usize];
        if pg.loc == Loc::Dev(d) || pg.copies & (1 << d) != 0 {
            Some(Loc::Dev(d))
        } else if pg.remote & (1 << d) != 0 {
            Some(pg.loc)
        } else {
            None
        }
    }
    /// Whether device `d` can write page `p` without a fault (a read copy is not writable).
    pub fn writable_by(&self, p: u32, d: u8) -> Option<Loc> {
        let pg = &self.pages[p as usize];
        (pg.loc == Loc::Dev(d) || pg.remote & (1 << d) != 0).then_some(pg.loc)
    }
    /// The words of device `d`'s remote bitmap that cover `range`, each masked to the pages
    /// of `range`: (the word's first page, its bits).
    fn remote_words(&self, d: u8, range: core::ops::Range<u32>) -> impl Iterator<Item = (u32, u64)> + '_ {
        let bits = self.devs.get(d as usize).map_or(&[][..], |m| &m.remote[..]);
        let end = range.end.min(self.len());
        let words = (range.start / 64) as usize..(end as usize).div_ceil(64).min(bits.len());
        words.map(move |w| {
            let first = w as u32 * 64;
            let (lo, hi) = (first.max(range.start), (first + 64).min(end));
            let span = hi.saturating_sub(lo);
            let mask = if span >= 64 { u64::MAX } else { ((1u64 << span) - 1) << (lo % 64) };
            (first, bits[w] & mask)
        })
    }

    /// The pages of `range` device `d` maps remotely, in order (a word of the device's bitmap
    /// at a time: policies ask of a region at each access-counter notification).
    pub fn remote_pages(&self, d: u8, range: core::ops::Range<u32>) -> impl Iterator<Item = u32> + '_ {
        self.remote_words(d, range).flat_map(|(first, mut word)| {
            core::iter::from_fn(move || {
                (word != 0).then(|| {
                    let b = word.trailing_zeros();
                    word &= word - 1;
                    first + b
                })
            })
        })
    }

    /// Whether device `d` maps any page of `range` remotely (a word or two of its bitmap).
    pub fn any_remote(&self, d: u8, range: core::ops::Range<u32>) -> bool {
        self.remote_words(d, range).any(|(_, w)| w != 0)
    }

    /// Sets or clears page `p`'s bit in device `d`'s remote bitmap.
    fn set_remote_bit(&mut self, d: usize, p: u32, on: bool) {
        let w = &mut self.devs[d].remote[p as usize / 64];
        if on {
            *w |= 1 << (p % 64);
        } else {
            *w &= !(1 << (p % 64));
        }
    }

    /// Pages of block `b` on device `d`.
    pub fn on_dev_in_block(&self, d: usize, b: u32) -> u32 {
        self.devs[d].per_block[b as usize]
    }

    /// Records an access of `lines` lines at time `now`.
    pub fn touch(&mut self, p: u32, now: u64, lines: u32) {
        let pg = &mut self.pages[p as usize];
        pg.last_access = now;
        pg.accesses = pg.accesses.saturating_add(lines);
        pg.prefetched = false;
        pg.touched = true;
    }

    /// Moves page `p` to `to` (dropping remote mappings and read copies). The caller has made
    /// room; returns false (and changes nothing) if `to` is full.
    pub fn set_loc(&mut self, p: u32, to: Loc, now: u64, prefetch: bool) -> bool {
        let from = self.pages[p as usize].loc;
        if from == to {
            return true;
        }
        if let Loc::Dev(d) = to
            && self.free(d as usize) == 0
        {
            return false;
        }
        self.drop_copies(p);
        let b = (p / BLOCK) as usize;
        if let Loc::Dev(d) = from {
            let m = &mut self.devs[d as usize];
            m.used -= 1;
            m.per_block[b] -= 1;
        }
        if let Loc::Dev(d) = to {
            self.hold(d, b);
        }
        for d in 0..self.devs.len() {
            if self.pages[p as usize].remote & (1 << d) != 0 {
                self.set_remote_bit(d, p, false);
            }
        }
        let pg = &mut self.pages[p as usize];
        pg.loc = to;
        pg.remote = 0;
        pg.migrations = pg.migrations.saturating_add(1);
        pg.last_migration = now;
        pg.prefetched = prefetch;
        if to != Loc::Cpu {
            // Arriving in device memory counts as a use for LRU orders (UVM and UVMSmart put a
            // newly populated chunk at the tail of the list), else prefetched pages not yet
            // touched would be the first victims.
            pg.last_access = now;
        }
        true
    }

    /// Device `d` takes one more page of block `b` (an allocation: the block's chunk moves to
    /// the tail of the allocation order).
    fn hold(&mut self, d: u8, b: usize) {
        self.stamp += 1;
        let m = &mut self.devs[d as usize];
        m.used += 1;
        m.per_block[b] += 1;
        m.stamp[b] = self.stamp;
        if m.used == m.capacity {
            m.filled = true;
        }
    }

    /// Maps page `p` for remote access by device `d` where it is.
    pub fn map_remote(&mut self, p: u32, d: u8) {
        if self.pages[p as usize].loc != Loc::Dev(d) {
            self.pages[p as usize].remote |= 1 << d;
            self.set_remote_bit(d as usize, p, true);
        }
    }

    /// Device `d` no longer maps page `p` remotely.
    pub fn unmap_remote(&mut self, p: u32, d: u8) {
        self.pages[p as usize].remote &= !(1 << d);
        self.set_remote_bit(d as usize, p, false);
    }

    /// Gives device `d` a read copy of page `p`; false if `d` is full.
    pub fn add_copy(&mut self, p: u32, d: u8) -> bool {
        let pg = self.pages[p as usize];
        if pg.loc == Loc::Dev(d) || pg.copies & (1 << d) != 0 {
            return true;
        }
        if self.free(d as usize) == 0 {
            return false;
        }
        self.hold(d, (p / BLOCK) as usize);
        self.pages[p as usize].copies |= 1 << d;
        self.pages[p as usize].remote &= !(1 << d);
        self.set_remote_bit(d as usize, p, false);
        true
    }

    /// Drops every read copy of page `p` (a write invalidates them); returns how many.
    pub fn drop_copies(&mut self, p: u32) -> u32 {
        let copies = self.pages[p as usize].copies;
        let b = (p / BLOCK) as usize;
        for d in 0..self.devs.len() {
            if copies & (1 << d) != 0 {
                self.devs[d].used -= 1;
                self.devs[d].per_block[b] -= 1;
            }
        }
        self.pages[p as usize].copies = 0;
        copies.count_ones()
    }

    /// Drops device `d`'s read copy of page `p` (eviction of a copy); true if it had one.
    pub fn drop_copy(&mut self, p: u32, d: u8) -> bool {
        if self.pages[p as usize].copies & (1 << d) == 0 {
            return false;
        }
        self.pages[p as usize].copies &= !(1 << d);
        let m = &mut self.devs[d as usize];
        m.used -= 1;
        m.per_block[(p / BLOCK) as usize] -= 1;
        true
    }

    /// Halves every page's access count (cooling, as HeMem does).
    pub fn cool(&mut self) {
        for pg in &mut self.pages {
            pg.accesses /= 2;
        }
    }

    /// Checks the invariants; the error names the first one broken.
    pub fn check(&self) -> Result<(), alloc::string::String> {
        for (d, m) in self.devs.iter().enumerate() {
            let mut per_block = vec![0u32; m.per_block.len()];
            for (p, pg) in self.pages.iter().enumerate() {
                let here = pg.loc == Loc::Dev(d as u8);
                if here && pg.copies & (1 << d) != 0 {
                    return Err(alloc::format!("page {p} is resident on dev{d} and has a copy there"));
                }
                if here && pg.remote & (1 << d) != 0 {
                    return Err(alloc::format!("page {p} is resident on dev{d} and mapped remotely there"));
                }
                if here || pg.copies & (1 << d) != 0 {
                    per_block[p / BLOCK as usize] += 1;
                }
            }
            let used: u32 = per_block.iter().sum();
            if used != m.used || per_block != m.per_block {
                return Err(alloc::format!("dev{d}: used {} but {used} pages held", m.used));
            }
            for (p, pg) in self.pages.iter().enumerate() {
                let bit = m.remote[p / 64] & (1 << (p % 64)) != 0;
                if bit != (pg.remote & (1 << d) != 0) {
                    return Err(alloc::format!("page {p}: dev{d}'s remote bitmap says {bit}, the page does not"));
                }
            }
            if m.used > m.capacity {
                return Err(alloc::format!("dev{d}: {} pages held, capacity {}", m.used, m.capacity));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_counts_follow_moves_and_copies() {
        let mut s = State::new(1500, &[2, 1]);
        assert_eq!(s.blocks(), 3);
        assert!(s.set_loc(3, Loc::Dev(0), 10, false));
        assert!(s.set_loc(600, Loc::Dev(0), 11, true));
        assert!(!s.set_loc(601, Loc::Dev(0), 12, false), "full");
        assert!(s.dev(0).filled);
        assert_eq!(s.on_dev_in_block(0, 1), 1);
        assert!(s.dev(0).stamp[1] > s.dev(0).stamp[0]);
        s.map_remote(3, 1);
        assert_eq!(s.readable_by(3, 1), Some(Loc::Dev(0)));
        assert!(s.add_copy(3, 1));
        assert_eq!(s.readable_by(3, 1), Some(Loc::Dev(1)));
        assert_eq!(s.writable_by(3, 1), None, "a copy is read-only");
        assert!(!s.add_copy(4, 1), "dev1 full");
        s.check().unwrap();
        assert!(s.set_loc(3, Loc::Cpu, 20, false));
        assert_eq!(s.page(3).copies, 0, "moving invalidates copies");
        assert_eq!(s.free(1), 1);
        assert_eq!(s.page(3).migrations, 2);
        s.check().unwrap();
        s.touch(600, 30, 4);
        assert!(!s.page(600).prefetched);
        assert_eq!(s.page(600).accesses, 4);
        s.cool();
        assert_eq!(s.page(600).accesses, 2);
    }

    /// The remote bitmap follows the pages' bits through random moves, remote mappings and
    /// copies, and `remote_pages` answers as a scan of the pages does.
    #[test]
    fn remote_pages_are_the_pages_mapped_remotely() {
        let mut rng = crate::place::Rng::new(11);
        let n = 300u32;
        let mut s = State::new(n, &[100, 60]);
        for step in 0..3_000 {
            let p = rng.below(n as u64) as u32;
            let d = rng.below(2) as u8;
            match rng.below(4) {
                0 => {
                    s.map_remote(p, d);
                }
                1 => {
                    let to = if rng.below(3) == 0 { Loc::Cpu } else { Loc::Dev(d) };
                    s.set_loc(p, to, step, false);
                }
                2 => {
                    s.add_copy(p, d);
                }
                _ => {
                    s.drop_copies(p);
                }
            }
            if step % 97 == 0 {
                s.check().unwrap();
            }
            let a = rng.below(n as u64 + 10) as u32;
            let b = a + rng.below(140) as u32;
            let want: Vec<u32> = (a..b.min(n)).filter(|&q| s.page(q).remote & (1 << d) != 0).collect();
            let got: Vec<u32> = s.remote_pages(d, a..b).collect();
            assert_eq!(got, want, "dev{d} pages {a}..{b} at step {step}");
            assert_eq!(s.any_remote(d, a..b), !want.is_empty(), "dev{d} pages {a}..{b} at step {step}");
        }
        s.check().unwrap();
        assert!((0..2).any(|d| s.remote_pages(d, 0..n).next().is_some()), "the test mapped nothing remotely");
        assert_eq!(s.remote_pages(5, 0..n).count(), 0, "no such device");
    }
}
