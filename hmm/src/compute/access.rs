//! A device's access-counter unit: the hardware that counts the compute engine's accesses per
//! region of virtual memory and raises a notification when a region's count reaches the
//! threshold its driver programmed (NVIDIA's access counters, `reference/placement.md` 1.5:
//! counted over the accesses that reach another processor's memory, reset when they notify).
//!
//! [`run`](super::run) feeds the unit every access a lane completes, weighted by
//! [`Kernel::weight`](super::Kernel::weight) (a workload access that covers several cache
//! lines counts each), and hands each notification to
//! [`Device::notify`](super::Device::notify), where the driver services it (the placement
//! policy's [`on_access_counter`](crate::place::policy::Policy::on_access_counter)).
//!
//! Invariants: a region's count holds the reads and writes counted since its last
//! notification (or since the unit was cleared); a notification resets exactly that region;
//! reprogramming the unit ([`AccessCounters::configure`]) keeps the counts, as the driver's
//! change of threshold does not clear the hardware's counters.

use alloc::collections::BTreeMap;

/// What the driver programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterConfig {
    /// Pages per counted region (a power of two is expected; any positive size works).
    pub region: u32,
    /// Accesses counted in a region before it notifies.
    pub threshold: u32,
    /// Count accesses to the device's own memory too (hotness sampling), not only remote ones.
    pub count_local: bool,
}

/// A region's count reached the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterNotification {
    /// The region's first page (virtual address / 4096).
    pub first: u64,
    /// Pages in the region.
    pub pages: u32,
    /// Reads counted since the region's last notification.
    pub reads: u32,
    /// Writes counted since then.
    pub writes: u32,
}

/// The unit: its programming and its per-region counts.
#[derive(Debug, Clone, Default)]
pub struct AccessCounters {
    config: Option<CounterConfig>,
    counts: BTreeMap<u64, (u32, u32)>,
    notifications: u64,
}

impl AccessCounters {
    /// Programs the unit (`None`: it counts nothing). The counts are kept.
    pub fn configure(&mut self, config: Option<CounterConfig>) {
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

    /// Clears every count.
    pub fn clear(&mut self) {
        self.counts.clear();
    }

    /// Counts `weight` accesses to `page` (a write when `write`; `local` when the device
    /// reached its own memory). Returns the notification when the page's region reaches the
    /// threshold; that region's count starts again from zero.
    pub fn count(&mut self, page: u64, write: bool, local: bool, weight: u32) -> Option<CounterNotification> {
        let c = self.config?;
        if local && !c.count_local {
            return None;
        }
        let region = u64::from(c.region.max(1));
        let key = page / region;
        let e = self.counts.entry(key).or_insert((0, 0));
        if write {
            e.1 = e.1.saturating_add(weight);
        } else {
            e.0 = e.0.saturating_add(weight);
        }
        if e.0.saturating_add(e.1) < c.threshold {
            return None;
        }
        let (reads, writes) = *e;
        self.counts.remove(&key);
        self.notifications += 1;
        Some(CounterNotification { first: key * region, pages: c.region.max(1), reads, writes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(region: u32, threshold: u32, count_local: bool) -> AccessCounters {
        let mut u = AccessCounters::default();
        u.configure(Some(CounterConfig { region, threshold, count_local }));
        u
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
        assert_eq!(n, CounterNotification { first: 16, pages: 16, reads: 4, writes: 4 });
        assert_eq!(u.notifications(), 1);
        // Reset: the region counts from zero again.
        assert_eq!(u.count(20, false, false, 7), None);
        assert!(u.count(20, false, false, 1).is_some());
        // Region 32's count is still there.
        assert_eq!(u.count(33, true, false, 1).map(|n| (n.first, n.reads, n.writes)), Some((32, 7, 1)));
    }

    #[test]
    fn local_accesses_count_only_when_asked_and_unprogrammed_counts_nothing() {
        let mut u = unit(1, 2, false);
        assert_eq!(u.count(5, false, true, 10), None, "a local access counted without count_local");
        let mut v = unit(1, 2, true);
        assert!(v.count(5, false, true, 2).is_some());
        let mut off = AccessCounters::default();
        assert_eq!(off.count(5, false, false, 100), None);
        // Reprogramming keeps the counts.
        let mut w = unit(4, 10, false);
        assert_eq!(w.count(0, false, false, 6), None);
        w.configure(Some(CounterConfig { region: 4, threshold: 8, count_local: false }));
        assert_eq!(w.count(1, false, false, 2).map(|n| n.reads), Some(8));
        w.configure(None);
        assert_eq!(w.count(1, false, false, 100), None);
    }
}
