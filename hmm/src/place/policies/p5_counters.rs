//! P5, access-counter migration, remote first (UVM's access counters, §1.5; IPDPS'20's delayed
//! migration, §4.2).
//!
//! A faulting device maps the pages remotely (zero-copy) instead of migrating them, and
//! migrates what its access counters find hot (with the tree prefetcher's density rule around
//! it when `prefetch` is on). The policy keeps the counters itself: it asks the engine for a
//! notification at every counted access of a 64 KiB sub-region ([`Counters`] with threshold 1)
//! and counts the lines.
//!
//! Two counter semantics (`counting`):
//! - `uvm` (default): UVM's hardware counters (`uvm_gpu_access_counters.c`). Only *remote*
//!   accesses count, per `region` (default 2 MiB, UVM's granularity) with a mask of the
//!   32 × 64 KiB sub-regions accessed; at `threshold` (default 256,
//!   `uvm_perf_access_counter_threshold`) lines the notification migrates the accessed
//!   sub-regions and the region's count and mask start again. `region = "64K"` counts each
//!   sub-region alone.
//! - `ipdps`: IPDPS'20's (UVMSmart's 32-bit access register per 64 KiB basic block, `region
//!   = "64K"` for the paper's granularity). *Every* access counts, local ones included,
//!   cumulatively; when a counter saturates (2^27 − 1) all counters halve. A read fault
//!   migrates when its region's count (the faulting access included) reaches the threshold,
//!   else it is mapped remotely; a remote access that brings the count there migrates its
//!   sub-region. Write faults always migrate. In `adaptive` mode the threshold is `threshold
//!   × penalty × (round trips + 1)` once oversubscribed, where a region's round trips are the
//!   most times one of its pages went to a device and back (UVMSmart counts evictions of the
//!   basic block), and `1 + threshold × occupancy` before (occupancy: the device's used
//!   fraction, UVMSmart's projected occupancy without the in-flight transfers). UVMSmart
//!   serves a read it does not migrate as a zero-copy DMA that takes no fault; with `ahead`
//!   (the default) the same happens here: at the first fault once migration is delayed, every
//!   page the device does not hold is mapped for reads ahead of its accesses
//!   ([`Plan::remote_ahead`](crate::place::policy::Plan::remote_ahead)), so its reads reach
//!   them without a fault while its writes still fault and migrate; evicted pages are
//!   remapped for reads only.
//!
//! Modes (IPDPS'20): `always` delays migration from the start; `oversub` migrates on touch (with
//! the tree prefetcher) until the device is first oversubscribed (its first refused
//! allocation, [`Policy::on_allocation_refused`]), then delays; `adaptive` multiplies the
//! threshold by `penalty` once oversubscribed (with `uvm` counting it migrates on touch before,
//! as `oversub`; with `ipdps`, the occupancy threshold above); `disabled` always migrates on
//! touch (the baseline).
//!
//! Evicted pages stay mapped remotely when `remote_on_evict` (UVM's
//! `uvm_perf_map_remote_on_eviction`), so hot pages come back by count rather than by fault;
//! UVMSmart does not remap them (their next access faults and is decided again), which is
//! `remote_on_evict = false`.
//!
//! `service`: UVM's driver services counter notifications in the background while the GPU
//! goes on accessing remotely (`background`); in IPDPS'20's delayed migration (UVMSmart) the
//! access that brings a block's counter to the threshold is handled as a far fault, so the
//! device waits for the migration (`fault`).

use super::p3_tree::Tree;
use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy, Refusals};
use crate::place::{BIG, BLOCK, Loc, MAX_DEVICES};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::text("mode", "always", &["always", "oversub", "adaptive", "disabled"], "when migration is delayed"),
    ParamDef::int("threshold", 256, 1, 65535, "accesses (lines) of a region before it migrates"),
    ParamDef::text("region", "2M", &["64K", "2M"], "counter granularity (UVM: 2 MiB with a 64 KiB sub-region mask)"),
    ParamDef::text(
        "counting",
        "uvm",
        &["uvm", "ipdps"],
        "uvm: remote accesses, reset at each notification; ipdps: every access, cumulative, halved at saturation",
    ),
    ParamDef::int("penalty", 8, 1, 64, "threshold multiplier once oversubscribed (adaptive)"),
    ParamDef::bool("prefetch", true, "tree prefetch around migrations"),
    ParamDef::bool("remote_on_evict", true, "evicted pages stay mapped remotely"),
    ParamDef::bool(
        "ahead",
        true,
        "counting = ipdps: once migration is delayed, map the device's other pages for reads ahead of its accesses",
    ),
    ParamDef::text(
        "service",
        "background",
        &["background", "fault"],
        "counter-triggered migration: in the background (UVM), or as a far fault the device waits for (IPDPS'20)",
    ),
];

/// UVMSmart's access counter saturates at 27 bits; then every counter halves.
pub const SATURATION: u32 = (1 << 27) - 1;

/// When migration is delayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Always,
    Oversub,
    Adaptive,
    Disabled,
}

/// One region's counter.
#[derive(Debug, Clone, Copy, Default)]
struct Count {
    /// Lines counted.
    lines: u32,
    /// 64 KiB sub-regions accessed since the last notification (`uvm` counting).
    mask: u32,
}

/// Access-counter migration.
#[derive(Debug, Clone)]
pub struct AccessCounters {
    mode: Mode,
    threshold: u32,
    region: u32,
    ipdps: bool,
    penalty: u32,
    prefetch: bool,
    remote_on_evict: bool,
    ahead: bool,
    /// Devices whose pages were mapped ahead.
    mapped_ahead: [bool; MAX_DEVICES],
    sync: bool,
    tree: Tree,
    refused: Refusals,
    /// Per device, per region.
    counts: [Vec<Count>; MAX_DEVICES],
    notifications: u64,
    halvings: u64,
}

impl AccessCounters {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        let mode = match p.text("mode") {
            "oversub" => Mode::Oversub,
            "adaptive" => Mode::Adaptive,
            "disabled" => Mode::Disabled,
            _ => Mode::Always,
        };
        AccessCounters {
            mode,
            threshold: p.int("threshold") as u32,
            region: if p.text("region") == "64K" { BIG } else { BLOCK },
            ipdps: p.text("counting") == "ipdps",
            penalty: p.int("penalty") as u32,
            prefetch: p.bool("prefetch"),
            remote_on_evict: p.bool("remote_on_evict"),
            ahead: p.bool("ahead"),
            mapped_ahead: [false; MAX_DEVICES],
            sync: p.text("service") == "fault",
            tree: Tree::default(),
            refused: Refusals::default(),
            counts: Default::default(),
            notifications: 0,
            halvings: 0,
        }
    }

    /// Whether device `dev`'s faults are delayed (mapped remotely unless hot) now.
    fn delaying(&self, dev: u8) -> bool {
        match self.mode {
            Mode::Always => true,
            Mode::Oversub => self.refused.of(dev),
            Mode::Adaptive => self.ipdps || self.refused.of(dev),
            Mode::Disabled => false,
        }
    }

    fn count(&mut self, cx: &Ctx<'_>, dev: u8, page: u32) -> &mut Count {
        let v = &mut self.counts[dev as usize];
        if v.is_empty() {
            v.resize(cx.pages().div_ceil(self.region) as usize, Count::default());
        }
        &mut v[(page / self.region) as usize]
    }

    /// Lines counted for `page`'s region on `dev`.
    fn lines(&self, dev: u8, page: u32) -> u32 {
        self.counts[dev as usize].get((page / self.region) as usize).map_or(0, |c| c.lines)
    }

    /// Round trips of `page`'s region: the most times one of its pages went to a device and
    /// back.
    fn round_trips(&self, cx: &Ctx<'_>, page: u32) -> u32 {
        let first = page / self.region * self.region;
        let end = (first + self.region).min(cx.pages());
        (first..end).map(|p| cx.state.page(p).migrations as u32 / 2).max().unwrap_or(0)
    }

    /// The count at which `page`'s region migrates to `dev`.
    fn threshold_for(&self, cx: &Ctx<'_>, dev: u8, page: u32) -> u32 {
        let oversub = self.refused.of(dev);
        if !self.ipdps {
            return if self.mode == Mode::Adaptive && oversub {
                self.threshold.saturating_mul(self.penalty)
            } else {
                self.threshold
            };
        }
        match self.mode {
            Mode::Adaptive if oversub => {
                let base = self.threshold.saturating_mul(self.penalty);
                // Round trips only matter once the base is reached (they only raise it).
                if self.lines(dev, page).saturating_add(1) < base {
                    return base;
                }
                base.saturating_mul(self.round_trips(cx, page) + 1)
            }
            Mode::Adaptive => {
                let m = cx.state.dev(dev as usize);
                let occupancy = m.used as f64 / m.capacity.max(1) as f64;
                (1.0 + self.threshold as f64 * occupancy) as u32
            }
            _ => self.threshold,
        }
    }

    /// Plans the migration of `pages` (faults or hot pages) to `dev`.
    fn migrate(&self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        if self.prefetch {
            self.tree.plan(cx, dev, faults, &BTreeSet::new(), plan);
        } else {
            for f in faults {
                plan.migrate(f.page, 1, Loc::Dev(dev));
            }
        }
    }

    fn halve_all(&mut self) {
        self.halvings += 1;
        for v in &mut self.counts {
            for c in v.iter_mut() {
                c.lines /= 2;
            }
        }
    }
}

impl Policy for AccessCounters {
    fn name(&self) -> &str {
        match self.mode {
            Mode::Always => "counters",
            Mode::Oversub => "counters-oversub",
            Mode::Adaptive => "counters-adaptive",
            Mode::Disabled => "counters-disabled",
        }
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        if !self.delaying(dev) {
            self.migrate(cx, dev, faults, plan);
            return;
        }
        if !self.ipdps {
            for f in faults {
                plan.remote(f.page, 1, dev);
            }
            return;
        }
        // IPDPS'20: writes migrate; a read migrates if its region is hot (the faulting access
        // counts one), else it is accessed remotely. In UVMSmart such a read is a zero-copy
        // DMA that never faults: the device's other pages are mapped for reads ahead, at the
        // first fault once migration is delayed, so later reads reach them without a fault
        // and writes still fault (and migrate).
        let ahead = self.ahead && !core::mem::replace(&mut self.mapped_ahead[dev as usize % MAX_DEVICES], true);
        if ahead {
            plan.remote_ahead(0, cx.pages(), dev);
        }
        let mut hot = Vec::new();
        for f in faults {
            if f.write || self.lines(dev, f.page).saturating_add(1) >= self.threshold_for(cx, dev, f.page) {
                hot.push(*f);
            } else if !ahead {
                if self.ahead {
                    plan.remote_ahead(f.page, 1, dev);
                } else {
                    plan.remote(f.page, 1, dev);
                }
            }
        }
        self.migrate(cx, dev, &hot, plan);
    }

    fn counters(&self, _cx: &Ctx<'_>, dev: u8) -> Option<Counters> {
        // IPDPS'20's counter runs from the start (it counts every access, cumulatively);
        // UVM's only while migration is delayed.
        let on = if self.ipdps { self.mode != Mode::Disabled } else { self.delaying(dev) };
        on.then_some(Counters { region: BIG, threshold: 1, local_too: self.ipdps, sync: self.sync })
    }

    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        let lines = n.reads.saturating_add(n.writes);
        let region = self.region;
        let dev = n.dev;
        if self.ipdps {
            let c = self.count(cx, dev, n.first);
            c.lines = c.lines.saturating_add(lines);
            if c.lines >= SATURATION {
                self.halve_all();
            }
            if !self.delaying(dev) || self.lines(dev, n.first) < self.threshold_for(cx, dev, n.first) {
                return;
            }
            // Hot: the pages of the accessed sub-region it reaches remotely migrate.
            let end = (n.first + n.pages).min(cx.pages());
            let hot: Vec<Fault> = (n.first..end)
                .filter(|&p| cx.state.page(p).remote & (1 << dev) != 0)
                .map(|page| Fault { page, write: false })
                .collect();
            if !hot.is_empty() {
                self.notifications += 1;
                self.migrate(cx, dev, &hot, plan);
            }
            return;
        }
        let threshold = self.threshold_for(cx, dev, n.first);
        let sub = (n.first % region) / BIG;
        let c = self.count(cx, dev, n.first);
        c.lines = c.lines.saturating_add(lines);
        c.mask |= 1 << sub;
        if c.lines < threshold {
            return;
        }
        let mask = core::mem::take(&mut c.mask);
        c.lines = 0;
        self.notifications += 1;
        // The accessed sub-regions migrate.
        let first = n.first / region * region;
        let mut hot = Vec::new();
        for s in 0..region.div_ceil(BIG) {
            if mask & (1 << s) == 0 {
                continue;
            }
            let a = first + s * BIG;
            for page in a..(a + BIG).min(cx.pages()) {
                if cx.state.page(page).loc != Loc::Dev(dev) {
                    hot.push(Fault { page, write: n.writes > 0 });
                }
            }
        }
        self.migrate(cx, dev, &hot, plan);
    }

    fn on_allocation_refused(&mut self, _cx: &Ctx<'_>, dev: u8) {
        self.refused.note(dev);
    }

    fn remote_after_eviction(&self) -> bool {
        self.remote_on_evict && self.mode != Mode::Disabled
    }

    fn remote_read_only(&self) -> bool {
        self.ipdps && self.ahead
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        alloc::vec![("counter_migrations", self.notifications), ("counter_halvings", self.halvings)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::cost::CostModel;
    use crate::place::params::Value;
    use crate::place::policy::Action;
    use crate::place::state::State;

    fn policy(params: &[(&str, Value)]) -> AccessCounters {
        let mut p = Params::new();
        for (k, v) in params {
            p.set(k, v.clone());
        }
        AccessCounters::new(&p.checked(PARAMS).unwrap())
    }

    fn text(v: &str) -> Value {
        Value::Text(v.into())
    }

    /// An access of `lines` lines by dev0 to the 64 KiB sub-region of `page`, as the engine
    /// reports it with a threshold of 1.
    fn access(pol: &mut AccessCounters, st: &State, page: u32, lines: u32, write: bool) -> Plan {
        let cost = CostModel::default();
        let cx = Ctx { state: st, cost: &cost, now: 0 };
        let first = page / BIG * BIG;
        let n = Notification {
            dev: 0,
            first,
            pages: BIG,
            reads: if write { 0 } else { lines },
            writes: if write { lines } else { 0 },
        };
        let mut plan = Plan::default();
        pol.on_access_counter(&cx, &n, &mut plan);
        plan
    }

    fn fault(pol: &mut AccessCounters, st: &State, page: u32, write: bool) -> Plan {
        let cost = CostModel::default();
        let cx = Ctx { state: st, cost: &cost, now: 0 };
        let mut plan = Plan::default();
        pol.on_device_faults(&cx, 0, &[Fault { page, write }], &mut plan);
        plan
    }

    fn migrated(plan: &Plan) -> Vec<u32> {
        let mut v = Vec::new();
        for a in &plan.actions {
            if let Action::Migrate { first, pages, .. } = *a {
                v.extend(first..first + pages);
            }
        }
        v
    }

    fn remote_map(st: &mut State, pages: core::ops::Range<u32>) {
        for p in pages {
            st.map_remote(p, 0);
        }
    }

    #[test]
    fn uvm_counts_remote_lines_over_2m_and_migrates_the_accessed_sub_regions() {
        let mut pol = policy(&[("prefetch", Value::Bool(false))]);
        let st = State::new(2048, &[1024]);
        let cx_cost = CostModel::default();
        let cx = Ctx { state: &st, cost: &cx_cost, now: 0 };
        let c = pol.counters(&cx, 0).unwrap();
        assert!(!c.local_too, "UVM counts remote accesses only");
        // 255 lines over two sub-regions (0 and 5) of block 1: no notification yet.
        for _ in 0..127 {
            assert!(access(&mut pol, &st, 512 + 3, 1, false).actions.is_empty());
            assert!(access(&mut pol, &st, 512 + 5 * 16 + 2, 1, false).actions.is_empty());
        }
        assert!(access(&mut pol, &st, 512 + 1, 1, false).actions.is_empty());
        // The 256th: the two accessed sub-regions migrate, nothing else.
        let plan = access(&mut pol, &st, 512 + 5 * 16, 1, false);
        let want: Vec<u32> = (512..512 + 16).chain(512 + 80..512 + 96).collect();
        assert_eq!(migrated(&plan), want);
        // Count and mask start again.
        assert!(access(&mut pol, &st, 512 + 5 * 16, 255, false).actions.is_empty());
        // `region = "64K"` keeps a counter per sub-region.
        let mut small = policy(&[("prefetch", Value::Bool(false)), ("region", text("64K"))]);
        assert!(access(&mut small, &st, 3, 200, false).actions.is_empty());
        assert!(access(&mut small, &st, 20, 200, false).actions.is_empty(), "another sub-region's count");
        assert_eq!(migrated(&access(&mut small, &st, 4, 56, false)), (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn ipdps_counts_every_access_cumulatively_and_write_faults_migrate() {
        let params = [
            ("counting", text("ipdps")),
            ("region", text("64K")),
            ("threshold", Value::Int(8)),
            ("prefetch", Value::Bool(false)),
        ];
        let mut pol = policy(&params);
        let mut st = State::new(1024, &[512]);
        let cost = CostModel::default();
        let cx = Ctx { state: &st, cost: &cost, now: 0 };
        assert!(pol.counters(&cx, 0).unwrap().local_too, "IPDPS'20 counts local accesses too");
        // A cold read fault is mapped remotely, a write fault migrates.
        assert!(migrated(&fault(&mut pol, &st, 40, false)).is_empty());
        assert_eq!(migrated(&fault(&mut pol, &st, 41, true)), alloc::vec![41]);
        // Seven lines to the region (local ones count): the next read fault there is the
        // eighth access and migrates.
        for p in 0..7 {
            assert!(st.set_loc(32 + p, Loc::Dev(0), 0, false));
        }
        for p in 0..7 {
            assert!(access(&mut pol, &st, 32 + p, 1, false).actions.is_empty());
        }
        assert_eq!(migrated(&fault(&mut pol, &st, 44, false)), alloc::vec![44]);
        // Cumulative: no reset; a remote access to a hot region migrates its remote pages.
        remote_map(&mut st, 45..48);
        assert_eq!(migrated(&access(&mut pol, &st, 45, 1, false)), alloc::vec![45, 46, 47]);
        // Saturation halves every counter.
        assert!(access(&mut pol, &st, 100, SATURATION, false).actions.is_empty());
        assert_eq!(pol.halvings, 1);
        assert_eq!(pol.lines(0, 100), SATURATION / 2);
        assert_eq!(pol.lines(0, 40), 8 / 2);
    }

    #[test]
    fn ipdps_adaptive_threshold_grows_with_penalty_and_round_trips() {
        let params = [
            ("counting", text("ipdps")),
            ("region", text("64K")),
            ("threshold", Value::Int(8)),
            ("penalty", Value::Int(2)),
            ("mode", text("adaptive")),
            ("prefetch", Value::Bool(false)),
        ];
        let mut pol = policy(&params);
        let mut st = State::new(1024, &[512]);
        // Before oversubscription: 1 + 8 × occupancy (empty device: 1), the first access migrates.
        assert_eq!(migrated(&fault(&mut pol, &st, 3, false)), alloc::vec![3]);
        // Oversubscribed: 8 × 2 × (round trips + 1). Page 20 went to the device and back once.
        let cost = CostModel::default();
        let cx = Ctx { state: &st, cost: &cost, now: 0 };
        pol.on_allocation_refused(&cx, 0);
        assert!(st.set_loc(20, Loc::Dev(0), 0, false) && st.set_loc(20, Loc::Cpu, 1, false));
        assert!(access(&mut pol, &st, 17, 30, false).actions.is_empty());
        assert!(migrated(&fault(&mut pol, &st, 18, false)).is_empty(), "31 accesses < 32");
        assert!(access(&mut pol, &st, 17, 1, false).actions.is_empty());
        assert_eq!(migrated(&fault(&mut pol, &st, 18, false)), alloc::vec![18], "32 accesses");
        // A region without round trips needs 16.
        assert!(access(&mut pol, &st, 70, 15, false).actions.is_empty());
        assert_eq!(migrated(&fault(&mut pol, &st, 71, false)), alloc::vec![71]);
    }

    #[test]
    fn ipdps_maps_the_pages_ahead_for_reads_at_the_first_delayed_fault() {
        let params = [("counting", text("ipdps")), ("region", text("64K")), ("threshold", Value::Int(8))];
        let st = State::new(1024, &[512]);
        let mut pol = policy(&params);
        let ahead = |plan: &Plan| {
            plan.actions.iter().filter(|a| matches!(a, Action::MapRemote { read_only: true, .. })).count()
        };
        let first = fault(&mut pol, &st, 40, false);
        assert!(
            first.actions.contains(&Action::MapRemote { first: 0, pages: 1024, dev: 0, read_only: true }),
            "{first:?}"
        );
        assert!(!first.actions.iter().any(|a| matches!(a, Action::MapRemote { read_only: false, .. })), "{first:?}");
        // Once: later read faults (pages the CPU moved back) are mapped for reads alone.
        let later = fault(&mut pol, &st, 300, false);
        assert_eq!(later.actions, alloc::vec![Action::MapRemote { first: 300, pages: 1, dev: 0, read_only: true }]);
        assert_eq!(ahead(&fault(&mut pol, &st, 301, true)), 0, "a write fault migrates");
        assert!(pol.remote_read_only(), "evicted pages are remapped for reads only");
        // `ahead = false`: each cold read fault is mapped remotely, writable, as before.
        let mut off = policy(&[params[0].clone(), params[1].clone(), params[2].clone(), ("ahead", Value::Bool(false))]);
        let plan = fault(&mut off, &st, 40, false);
        assert_eq!(plan.actions, alloc::vec![Action::MapRemote { first: 40, pages: 1, dev: 0, read_only: false }]);
        assert!(!off.remote_read_only());
        // The disabled mode never maps ahead.
        let mut disabled = policy(&[params[0].clone(), ("mode", text("disabled"))]);
        assert_eq!(ahead(&fault(&mut disabled, &st, 40, false)), 0);
    }
}
