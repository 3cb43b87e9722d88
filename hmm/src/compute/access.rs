//! A device's access-counter unit: the hardware that counts the compute engine's accesses per
//! region of virtual memory and raises a notification when a region's count reaches the
//! threshold its driver programmed (NVIDIA's access counters, `reference/placement.md` 1.5;
//! IPDPS'20's per-block access registers, §4.2).
//!
//! [`run`](super::run) feeds the unit every access a lane completes, weighted by
//! [`Kernel::weight`](super::Kernel::weight) (a workload access that covers several cache
//! lines counts each), and hands each notification to
//! [`Device::notify`](super::Device::notify), where the driver services it (the placement
//! policy's [`on_access_counter`](crate::place::policy::Policy::on_access_counter)). The driver
//! can also read a region's count at any time ([`AccessCounters::count_of`]), as it does at
//! fault time to decide whether a faulting page is hot.
//!
//! Modes ([`CounterConfig`]):
//! - *resetting* (UVM's access counters, the default): a notification resets its region's
//!   count and sub-region mask;
//! - *cumulative* (IPDPS'20's): counts are never reset by a notification; a region at or
//!   above the threshold notifies at every counted access, and its mask starts again;
//! - *halving* at saturation (IPDPS'20's 27-bit registers): when one region's count reaches
//!   [`CounterConfig::halve_at`], every region's counts halve;
//! - a notification carries the *sub-region mask* (UVM's `sub_granularity`): one bit per
//!   [`CounterConfig::mask_pages`] pages of the region, set for those accessed since the
//!   region's last notification.
//!
//! Invariants: a region's count holds the reads and writes counted since its last reset (a
//! notification in the resetting mode, [`AccessCounters::clear`], or a change of region size),
//! halved once per halving since; its mask holds the sub-regions counted since its last
//! notification. Reprogramming the unit with the same region size
//! ([`AccessCounters::configure`]) keeps the counts, as the driver's change of threshold does
//! not clear the hardware's counters; a new region size clears them (they would no longer
//! name regions of that size).

use alloc::vec::Vec;

/// A threshold that never notifies: the unit only counts, for the driver to read.
pub const NEVER: u32 = u32::MAX;

/// What the driver programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterConfig {
    /// Pages per counted region (a power of two is expected; any positive size works).
    pub region: u32,
    /// Accesses counted in a region before it notifies ([`NEVER`]: it never does).
    pub threshold: u32,
    /// Count accesses to the device's own memory too (hotness sampling), not only remote ones.
    pub count_local: bool,
    /// A notification does not reset the region's count (IPDPS'20): a region at or above the
    /// threshold notifies at every counted access.
    pub cumulative: bool,
    /// When one region's count reaches this, every region's reads and writes halve (`None`:
    /// counts saturate at `u32::MAX`).
    pub halve_at: Option<u32>,
    /// Pages per bit of a notification's sub-region mask (UVM: 16, 64 KiB of a 2 MiB
    /// region). Bits past the 32nd fold into bit 31.
    pub mask_pages: u32,
}

impl CounterConfig {
    /// UVM's programming: `threshold` accesses of remote memory per `region`, reset at each
    /// notification, no halving, a mask bit per 64 KiB.
    pub fn new(region: u32, threshold: u32) -> Self {
        CounterConfig { region, threshold, count_local: false, cumulative: false, halve_at: None, mask_pages: 16 }
    }
}

/// A region's count reached the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterNotification {
    /// The region's first page (virtual address / 4096).
    pub first: u64,
    /// Pages in the region.
    pub pages: u32,
    /// Reads counted in the region (since its last reset).
    pub reads: u32,
    /// Writes counted there.
    pub writes: u32,
    /// Sub-regions accessed since the region's last notification: bit `i` covers pages
    /// `first + i × mask_pages ..` (`mask_pages` as programmed).
    pub mask: u32,
    /// Pages per mask bit.
    pub mask_pages: u32,
}

/// One region's counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Count {
    reads: u32,
    writes: u32,
    mask: u32,
}

impl Count {
    fn total(self) -> u32 {
        self.reads.saturating_add(self.writes)
    }
}

/// The per-region counts: one entry per region counted since the last [`Regions::clear`],
/// sorted by region; a region reset is zeroed, not removed (a zero count is no count), so a
/// region keeps its entry and the next access to it finds it where the last one did.
///
/// The compute engine counts every access a lane completes (millions in a wave), mostly in the
/// region the previous access counted: [`Regions::slot`] looks at that entry first, then
/// searches.
#[derive(Debug, Clone, Default)]
struct Regions {
    entries: Vec<(u64, Count)>,
    /// The index [`Regions::slot`] last answered with.
    last: usize,
}

impl Regions {
    fn find(&self, key: u64) -> Result<usize, usize> {
        match self.entries.get(self.last) {
            Some(&(k, _)) if k == key => Ok(self.last),
            _ => self.entries.binary_search_by_key(&key, |&(k, _)| k),
        }
    }

    fn get(&self, key: u64) -> Count {
        self.find(key).map_or(Count::default(), |i| self.entries[i].1)
    }

    /// The count of region `key`, made (zero) if it has none.
    fn slot(&mut self, key: u64) -> &mut Count {
        let i = self.find(key).unwrap_or_else(|i| {
            self.entries.insert(i, (key, Count::default()));
            i
        });
        self.last = i;
        &mut self.entries[i].1
    }

    /// Zeroes the counts of regions `lo..=hi`.
    fn reset(&mut self, lo: u64, hi: u64) {
        let from = self.entries.partition_point(|&(k, _)| k < lo);
        for (_, c) in self.entries[from..].iter_mut().take_while(|(k, _)| *k <= hi) {
            *c = Count::default();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.last = 0;
    }

    fn halve(&mut self) {
        for (_, v) in &mut self.entries {
            v.reads /= 2;
            v.writes /= 2;
        }
    }
}

/// The unit: its programming and its per-region counts.
#[derive(Debug, Clone, Default)]
pub struct AccessCounters {
    config: Option<CounterConfig>,
    /// The region size the counts are kept in (pages; 0 before the first programming).
    region: u32,
    counts: Regions,
    notifications: u64,
    halvings: u64,
    /// Programmed to halve at least once.
    halving: bool,
}

impl AccessCounters {
    /// Programs the unit (`None`: it counts nothing). The counts are kept unless the region
    /// size changes.
    pub fn configure(&mut self, config: Option<CounterConfig>) {
        if let Some(c) = config {
            let region = c.region.max(1);
            if region != self.region {
                self.counts.clear();
                self.region = region;
            }
            self.halving |= c.halve_at.is_some();
        }
        self.config = config;
    }

    /// What the unit is programmed with.
    pub fn config(&self) -> Option<CounterConfig> {
        self.config
    }

    /// Notifications raised so far.
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// Times every count was halved at saturation; `None` if the unit was never programmed
    /// to halve.
    pub fn halvings(&self) -> Option<u64> {
        self.halving.then_some(self.halvings)
    }

    /// Clears every count.
    pub fn clear(&mut self) {
        self.counts.clear();
    }

    /// Clears the counts of the regions of `[first, first + pages)` (a targeted clear, as UVM's
    /// driver clears a region it has serviced).
    pub fn clear_range(&mut self, first: u64, pages: u64) {
        if self.region == 0 || pages == 0 {
            return;
        }
        let region = u64::from(self.region);
        self.counts.reset(first / region, (first + pages - 1) / region);
    }

    /// The reads and writes counted in `page`'s region (in the region size last programmed;
    /// 0 before any programming).
    pub fn count_of(&self, page: u64) -> u32 {
        if self.region == 0 {
            return 0;
        }
        self.counts.get(page / u64::from(self.region)).total()
    }

    /// Counts `weight` accesses to `page` (a write when `write`; `local` when the device
    /// reached its own memory). Returns the notification when the page's region is at or
    /// above the threshold; in the resetting mode that region's count starts again from
    /// zero.
    pub fn count(&mut self, page: u64, write: bool, local: bool, weight: u32) -> Option<CounterNotification> {
        let c = self.config?;
        if local && !c.count_local {
            return None;
        }
        let region = u64::from(self.region);
        let key = page / region;
        let mask_pages = c.mask_pages.max(1);
        let bit = ((page % region) / u64::from(mask_pages)).min(31);
        let e = self.counts.slot(key);
        if write {
            e.writes = e.writes.saturating_add(weight);
        } else {
            e.reads = e.reads.saturating_add(weight);
        }
        e.mask |= 1 << bit;
        let mut now = *e;
        if c.halve_at.is_some_and(|limit| now.total() >= limit) {
            self.halvings += 1;
            self.counts.halve();
            now = *self.counts.slot(key);
        }
        if c.threshold == NEVER || now.total() < c.threshold {
            return None;
        }
        let e = self.counts.slot(key);
        if c.cumulative {
            e.mask = 0;
        } else {
            *e = Count::default();
        }
        self.notifications += 1;
        Some(CounterNotification {
            first: key * region,
            pages: self.region,
            reads: now.reads,
            writes: now.writes,
            mask: now.mask,
            mask_pages,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(region: u32, threshold: u32, count_local: bool) -> AccessCounters {
        let mut u = AccessCounters::default();
        u.configure(Some(CounterConfig { count_local, ..CounterConfig::new(region, threshold) }));
        u
    }

    fn totals(n: Option<CounterNotification>) -> Option<(u64, u32, u32)> {
        n.map(|n| (n.first, n.reads, n.writes))
    }

    #[test]
    fn a_region_notifies_at_its_threshold_and_starts_again() {
        let mut u = unit(16, 8, false);
        // Pages 16..32 are one region: 3 + 4 accesses stay below 8.
        assert_eq!(u.count(17, false, false, 3), None);
        assert_eq!(u.count(31, true, false, 4), None);
        // Another region's accesses do not add up with it.
        assert_eq!(u.count(32, false, false, 7), None);
        let n = u.count(20, false, false, 1).expect("the eighth access notifies");
        assert_eq!(totals(Some(n)), Some((16, 4, 4)));
        assert_eq!(n.pages, 16);
        assert_eq!(u.notifications(), 1);
        // Reset: the region counts from zero again.
        assert_eq!(u.count_of(20), 0);
        assert_eq!(u.count(20, false, false, 7), None);
        assert!(u.count(20, false, false, 1).is_some());
        // Region 32's count is still there.
        assert_eq!(u.count_of(40), 7);
        assert_eq!(totals(u.count(33, true, false, 1)), Some((32, 7, 1)));
    }

    #[test]
    fn local_accesses_count_only_when_asked_and_unprogrammed_counts_nothing() {
        let mut u = unit(1, 2, false);
        assert_eq!(u.count(5, false, true, 10), None, "a local access counted without count_local");
        let mut v = unit(1, 2, true);
        assert!(v.count(5, false, true, 2).is_some());
        let mut off = AccessCounters::default();
        assert_eq!(off.count(5, false, false, 100), None);
        assert_eq!(off.count_of(5), 0);
        // Reprogramming keeps the counts.
        let mut w = unit(4, 10, false);
        assert_eq!(w.count(0, false, false, 6), None);
        w.configure(Some(CounterConfig::new(4, 8)));
        assert_eq!(w.count(1, false, false, 2).map(|n| n.reads), Some(8));
        w.configure(None);
        assert_eq!(w.count(1, false, false, 100), None);
    }

    #[test]
    fn a_new_region_size_clears_the_counts() {
        let mut u = unit(16, 100, false);
        assert_eq!(u.count(3, false, false, 50), None);
        assert_eq!(u.count_of(0), 50);
        u.configure(Some(CounterConfig::new(512, 100)));
        assert_eq!(u.count_of(0), 0, "counts of 16-page regions named 512-page ones");
        assert_eq!(u.count(3, false, false, 60), None);
        assert_eq!(u.count_of(511), 60);
    }

    #[test]
    fn the_notification_carries_the_sub_regions_accessed_since_the_last_one() {
        // UVM: 2 MiB regions, a bit per 64 KiB.
        let mut u = unit(512, 4, false);
        assert_eq!(u.count(512 + 3, false, false, 1), None);
        assert_eq!(u.count(512 + 5 * 16 + 2, false, false, 1), None);
        assert_eq!(u.count(512 + 5 * 16 + 9, false, false, 1), None);
        let n = u.count(512 + 31 * 16, true, false, 1).expect("the fourth access notifies");
        assert_eq!((n.first, n.pages, n.mask, n.mask_pages), (512, 512, 1 | 1 << 5 | 1 << 31, 16));
        // The mask starts again with the count.
        assert_eq!(u.count(512 + 7 * 16, false, false, 3), None);
        assert_eq!(u.count(512 + 7 * 16, false, false, 1).map(|n| n.mask), Some(1 << 7));
        // More sub-regions than 32 bits fold into bit 31.
        let mut wide = AccessCounters::default();
        wide.configure(Some(CounterConfig { mask_pages: 1, ..CounterConfig::new(64, 1) }));
        assert_eq!(wide.count(60, false, false, 1).map(|n| n.mask), Some(1 << 31));
    }

    #[test]
    fn cumulative_counts_are_not_reset_and_notify_at_every_access_above_the_threshold() {
        let mut u = AccessCounters::default();
        u.configure(Some(CounterConfig { cumulative: true, count_local: true, ..CounterConfig::new(16, 8) }));
        assert_eq!(u.count(2, false, true, 7), None);
        let n = u.count(3, true, false, 1).expect("the eighth access notifies");
        assert_eq!((n.reads, n.writes, n.mask), (7, 1, 1));
        assert_eq!(u.count_of(0), 8, "a cumulative count is not reset");
        // Every later access of the region notifies, with the count so far.
        assert_eq!(totals(u.count(4, false, true, 2)), Some((0, 9, 1)));
        assert_eq!(u.count_of(15), 10);
        assert_eq!(u.notifications(), 2);
        // Raising the threshold above the count silences it; the count stays.
        u.configure(Some(CounterConfig { cumulative: true, count_local: true, ..CounterConfig::new(16, 64) }));
        assert_eq!(u.count(4, false, true, 1), None);
        assert_eq!(u.count_of(4), 11);
        // A threshold of NEVER counts without notifying.
        u.configure(Some(CounterConfig { cumulative: true, count_local: true, ..CounterConfig::new(16, NEVER) }));
        assert_eq!(u.count(4, false, true, 1_000_000), None);
        assert_eq!(u.count_of(4), 1_000_011);
    }

    #[test]
    fn saturation_halves_every_region() {
        let mut u = AccessCounters::default();
        let config = CounterConfig { cumulative: true, halve_at: Some(100), ..CounterConfig::new(16, 60) };
        u.configure(Some(config));
        assert_eq!(u.halvings(), Some(0));
        assert_eq!(u.count(0, false, false, 9), None);
        assert_eq!(u.count(0, true, false, 4), None);
        assert_eq!(u.count(40, false, false, 30), None);
        // Region 16 reaches 100: every region's reads and writes halve, the notification sees
        // the halved count (50 < 60: none).
        assert_eq!(u.count(20, false, false, 100), None);
        assert_eq!(u.halvings(), Some(1));
        assert_eq!((u.count_of(20), u.count_of(0), u.count_of(40)), (50, 4 + 2, 15));
        // 50 + 10 = 60: at the threshold.
        assert_eq!(totals(u.count(21, false, false, 10)), Some((16, 60, 0)));
        // A unit never programmed to halve says so.
        assert_eq!(unit(16, 8, false).halvings(), None);
    }

    /// The region store against a map of the counts (the store's former shape): seeded random
    /// counts, targeted clears and halvings, clustered as a wave's accesses are and scattered.
    #[test]
    fn the_region_store_keeps_what_a_map_of_the_counts_keeps() {
        use alloc::collections::BTreeMap;
        let mut rng = crate::place::Rng::new(0x5eed_0ac7);
        for round in 0..40 {
            let mut store = Regions::default();
            let mut model: BTreeMap<u64, Count> = BTreeMap::new();
            let span = [4u64, 64, 1 << 20][round % 3];
            let mut key = rng.below(span);
            for _ in 0..2_000 {
                match rng.below(100) {
                    0..=69 => {
                        // Mostly the region just counted, else a jump.
                        if rng.below(4) == 0 {
                            key = rng.below(span);
                        }
                        let w = rng.below(50) as u32;
                        let write = rng.below(2) == 0;
                        let (a, b) = (store.slot(key), model.entry(key).or_default());
                        for c in [a, b] {
                            if write {
                                c.writes += w;
                            } else {
                                c.reads += w;
                            }
                            c.mask |= 1 << (w % 32);
                        }
                    }
                    70..=79 => {
                        let lo = rng.below(span);
                        let hi = lo + rng.below(8);
                        store.reset(lo, hi);
                        model.retain(|&k, _| k < lo || k > hi);
                    }
                    80..=84 => {
                        store.halve();
                        for v in model.values_mut() {
                            v.reads /= 2;
                            v.writes /= 2;
                        }
                    }
                    85 => {
                        store.clear();
                        model.clear();
                    }
                    _ => {
                        let k = if rng.below(2) == 0 { key } else { rng.below(span) };
                        assert_eq!(store.get(k), model.get(&k).copied().unwrap_or_default(), "region {k}");
                    }
                }
            }
            for (&k, &c) in &model {
                assert_eq!(store.get(k), c, "region {k} at the end of round {round}");
            }
            let nonzero = store.entries.iter().filter(|(_, c)| *c != Count::default()).count();
            assert_eq!(nonzero, model.values().filter(|c| **c != Count::default()).count());
            assert!(store.entries.windows(2).all(|w| w[0].0 < w[1].0), "entries out of order");
        }
    }
}
