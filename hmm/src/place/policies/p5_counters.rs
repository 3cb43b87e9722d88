//! P5, access-counter migration, remote first (UVM's access counters, §1.5; IPDPS'20's delayed
//! migration, §4.2).
//!
//! A faulting device maps the pages remotely (zero-copy) instead of migrating them, and
//! migrates what its access counters find hot (with the tree prefetcher's density rule around
//! it when `prefetch` is on). The device's counter unit ([`crate::compute::AccessCounters`])
//! does the counting, programmed through [`Policy::counters`] as the hardware is: the policy
//! sees its notifications and reads a region's count at fault time ([`Ctx::count_of`]); it
//! counts nothing itself.
//!
//! Two counter semantics (`counting`):
//! - `uvm` (default): UVM's hardware counters (`uvm_gpu_access_counters.c`). Only *remote*
//!   accesses count, per `region` (default 2 MiB, UVM's granularity) with a mask of the
//!   32 × 64 KiB sub-regions accessed; at `threshold` (default 256,
//!   `uvm_perf_access_counter_threshold`) lines the unit notifies, resetting the region's
//!   count and mask, and the policy migrates the accessed sub-regions. `region = "64K"`
//!   counts each sub-region alone.
//! - `ipdps`: IPDPS'20's (UVMSmart's 32-bit access register per 64 KiB basic block, `region
//!   = "64K"` for the paper's granularity). *Every* access counts, local ones included,
//!   cumulatively (the unit's cumulative mode); when a counter saturates (2^27 − 1) the unit
//!   halves all counters. A read fault migrates when its region's count (read from the unit,
//!   the faulting access included) reaches the threshold, else it is mapped remotely; while
//!   migration is delayed, every counted access of a region at the threshold notifies and the
//!   pages of its accessed sub-regions that the device reaches remotely migrate (so a hot
//!   block's remote pages come over at its next access). Write faults always migrate. In `adaptive` mode the threshold is `threshold
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
//! goes on accessing remotely (`background`); in IPDPS'20's delayed migration (UVMSmart) an
//! access to a block whose count has reached the threshold is a far fault (`fault`): with
//! `ipdps` counting the notification drops the block's remote mappings
//! ([`Plan::unmap_remote`]), so the device's next accesses to its pages fault and migrate in the
//! fault path, every faulted page a far fault as any fault is (UVMSmart's `gmmu_t::cycle`
//! sends such an access down its page-fault path, where several pages of one block faulting
//! in one turn are each charged); with `uvm` counting the migration is one far fault the
//! device waits for.

use super::p3_tree::Tree;
use crate::compute::NEVER;
use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy, Refusals};
use crate::place::{BIG, BLOCK, Loc, MAX_DEVICES};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::cell::Cell;

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
        "counter-triggered migration: in the background (UVM), or through the fault path the device waits for (IPDPS'20)",
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
    /// Notifications that migrated pages.
    migrations: u64,
    /// Notifications that dropped a hot block's remote mappings (`service = "fault"`).
    unmaps: u64,
    /// The last adaptive threshold computed from an occupancy: (pages used, capacity,
    /// threshold). Under IPDPS'20's counting nearly every access notifies and asks for it, and
    /// under TCG its soft-float arithmetic was several per cent of such a point.
    occupancy_memo: Cell<(u32, u32, u32)>,
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
            migrations: 0,
            unmaps: 0,
            occupancy_memo: Cell::new((u32::MAX, 0, 0)),
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

    /// Round trips of `page`'s region: the most times one of its pages went to a device and
    /// back.
    fn round_trips(&self, cx: &Ctx<'_>, page: u32) -> u32 {
        let first = page / self.region * self.region;
        let end = (first + self.region).min(cx.pages());
        (first..end).map(|p| cx.state.page(p).migrations as u32 / 2).max().unwrap_or(0)
    }

    /// The threshold programmed into `dev`'s counter unit now: the count at which a region
    /// notifies, before its round trips (`threshold_for`).
    fn unit_threshold(&self, cx: &Ctx<'_>, dev: u8) -> u32 {
        let oversub = self.refused.of(dev);
        match self.mode {
            Mode::Adaptive if oversub => self.threshold.saturating_mul(self.penalty),
            Mode::Adaptive if self.ipdps => {
                let m = cx.state.dev(dev as usize);
                let (used, capacity, memo) = self.occupancy_memo.get();
                if (used, capacity) == (m.used, m.capacity) {
                    return memo;
                }
                let occupancy = m.used as f64 / m.capacity.max(1) as f64;
                let t = (1.0 + self.threshold as f64 * occupancy) as u32;
                self.occupancy_memo.set((m.used, m.capacity, t));
                t
            }
            _ => self.threshold,
        }
    }

    /// The count at which `page`'s region migrates to `dev`, for a region whose count is
    /// `count`: the unit's threshold, times the region's round trips + 1 in `ipdps`'s
    /// adaptive mode once oversubscribed.
    fn threshold_for(&self, cx: &Ctx<'_>, dev: u8, page: u32, count: u32) -> u32 {
        let base = self.unit_threshold(cx, dev);
        // Round trips only matter once the base is reached (they only raise it).
        if !(self.ipdps && self.mode == Mode::Adaptive && self.refused.of(dev)) || count < base {
            return base;
        }
        base.saturating_mul(self.round_trips(cx, page) + 1)
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
        // first read it does not migrate (`should_cause_page_migration` false: before that
        // every fault migrates, as in the disabled mode), so later reads reach them without a
        // fault and writes still fault (and migrate).
        let mut hot = Vec::new();
        for f in faults {
            // The driver reads the region's count from the device's unit.
            let count = cx.count_of(dev, f.page).saturating_add(1);
            if f.write || count >= self.threshold_for(cx, dev, f.page, count) {
                hot.push(*f);
            } else if !self.ahead {
                plan.remote(f.page, 1, dev);
            } else if !core::mem::replace(&mut self.mapped_ahead[dev as usize % MAX_DEVICES], true) {
                plan.remote_ahead(0, cx.pages(), dev);
            } else {
                plan.remote_ahead(f.page, 1, dev);
            }
        }
        self.migrate(cx, dev, &hot, plan);
    }

    fn counters(&self, cx: &Ctx<'_>, dev: u8) -> Option<Counters> {
        let unit = Counters { sync: self.sync, ..Counters::new(self.region, self.unit_threshold(cx, dev)) };
        if !self.ipdps {
            // UVM's counters run only while migration is delayed.
            return self.delaying(dev).then_some(unit);
        }
        // IPDPS'20's counter runs from the start, counting every access cumulatively; it
        // notifies only while migration is delayed.
        (self.mode != Mode::Disabled).then_some(Counters {
            threshold: if self.delaying(dev) { unit.threshold } else { NEVER },
            local_too: true,
            cumulative: true,
            halve_at: Some(SATURATION),
            ..unit
        })
    }

    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        let dev = n.dev;
        let count = n.reads.saturating_add(n.writes);
        if self.ipdps {
            // IPDPS'20: the accessed sub-regions' pages the device reaches remotely migrate
            // once the region's count reaches its threshold. The pages are looked for first:
            // a region with none (most notifications: its pages are local) needs no threshold.
            if !self.delaying(dev) || !cx.state.any_remote(dev, n.first..n.first.saturating_add(n.pages)) {
                return;
            }
            let hot: Vec<Fault> = n
                .accessed()
                .flat_map(|(a, b)| cx.state.remote_pages(dev, a..b))
                .map(|page| Fault { page, write: false })
                .collect();
            if hot.is_empty() || count < self.threshold_for(cx, dev, n.first, count) {
                return;
            }
            if self.sync {
                // UVMSmart: an access to a block at its threshold is a far fault. The block's
                // remote mappings go, so its next accesses fault and migrate in the fault
                // path, each faulted page a far fault as any fault is.
                self.unmaps += 1;
                for (a, b) in n.accessed() {
                    plan.unmap_remote(a, b.saturating_sub(a), dev);
                }
                return;
            }
            self.migrations += 1;
            self.migrate(cx, dev, &hot, plan);
            return;
        }
        // UVM: the accessed sub-regions migrate.
        let mut hot = Vec::new();
        for (a, b) in n.accessed() {
            for page in a..b.min(cx.pages()) {
                if cx.state.page(page).loc != Loc::Dev(dev) {
                    hot.push(Fault { page, write: n.writes > 0 });
                }
            }
        }
        self.migrations += 1;
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
        alloc::vec![("counter_migrations", self.migrations), ("counter_unmaps", self.unmaps)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::AccessCounters as Unit;
    use crate::place::cost::CostModel;
    use crate::place::params::Value;
    use crate::place::policy::{Action, Units};
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

    /// The policy with IPDPS'20's counting over 64 KiB regions at threshold 8, and `extra`.
    fn ipdps(extra: &[(&str, Value)]) -> AccessCounters {
        let mut params =
            alloc::vec![("counting", text("ipdps")), ("region", text("64K")), ("threshold", Value::Int(8))];
        params.extend(extra.iter().cloned());
        policy(&params)
    }

    /// An access of `lines` lines by dev0 to `page`, counted by dev0's counter unit
    /// (`unit[0]`) as the policy programs it; a notification goes to the policy, as the
    /// engine delivers it.
    fn access(pol: &mut AccessCounters, unit: &mut [Unit; 1], st: &State, page: u32, lines: u32, write: bool) -> Plan {
        let cost = CostModel::default();
        let c = pol.counters(&Ctx::new(st, &cost, 0).with_units(Units::new(unit, 0)), 0);
        unit[0].configure(c.map(Counters::unit));
        let local = st.page(page).loc == Loc::Dev(0);
        let mut plan = Plan::default();
        if c.is_none() {
            return plan;
        }
        if let Some(n) = unit[0].count(u64::from(page), write, local, lines) {
            let first = n.first as u32;
            let note = Notification {
                dev: 0,
                first,
                pages: n.pages.min(st.len() - first),
                reads: n.reads,
                writes: n.writes,
                mask: n.mask,
                mask_pages: n.mask_pages,
            };
            pol.on_access_counter(&Ctx::new(st, &cost, 0).with_units(Units::new(unit, 0)), &note, &mut plan);
        }
        plan
    }

    /// A read or write fault of dev0 on `page`; the policy reads `unit`.
    fn fault(pol: &mut AccessCounters, unit: &[Unit; 1], st: &State, page: u32, write: bool) -> Plan {
        let cost = CostModel::default();
        let cx = Ctx::new(st, &cost, 0).with_units(Units::new(unit, 0));
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
        let cost = CostModel::default();
        let c = pol.counters(&Ctx::new(&st, &cost, 0), 0).unwrap();
        assert!(!c.local_too, "UVM counts remote accesses only");
        // The unit does the counting: 2 MiB regions, threshold 256, reset at notification.
        assert_eq!((c.region, c.threshold, c.cumulative, c.halve_at, c.mask_pages), (512, 256, false, None, 16));
        let mut unit = [Unit::default()];
        // 255 lines over two sub-regions (0 and 5) of block 1: no notification yet.
        for _ in 0..127 {
            assert!(access(&mut pol, &mut unit, &st, 512 + 3, 1, false).actions.is_empty());
            assert!(access(&mut pol, &mut unit, &st, 512 + 5 * 16 + 2, 1, false).actions.is_empty());
        }
        assert!(access(&mut pol, &mut unit, &st, 512 + 1, 1, false).actions.is_empty());
        assert_eq!(unit[0].notifications(), 0, "the unit notifies at the threshold, not at every access");
        // The 256th: the two accessed sub-regions migrate, nothing else.
        let plan = access(&mut pol, &mut unit, &st, 512 + 5 * 16, 1, false);
        let want: Vec<u32> = (512..512 + 16).chain(512 + 80..512 + 96).collect();
        assert_eq!(migrated(&plan), want);
        assert_eq!(unit[0].notifications(), 1);
        assert_eq!(pol.report(), alloc::vec![("counter_migrations", 1), ("counter_unmaps", 0)]);
        // Count and mask start again.
        assert!(access(&mut pol, &mut unit, &st, 512 + 5 * 16, 255, false).actions.is_empty());
        // `region = "64K"` keeps a counter per sub-region.
        let mut small = policy(&[("prefetch", Value::Bool(false)), ("region", text("64K"))]);
        let mut unit = [Unit::default()];
        assert!(access(&mut small, &mut unit, &st, 3, 200, false).actions.is_empty());
        assert!(access(&mut small, &mut unit, &st, 20, 200, false).actions.is_empty(), "another sub-region's count");
        assert_eq!(migrated(&access(&mut small, &mut unit, &st, 4, 56, false)), (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn uvm_adaptive_programs_the_penalty_once_oversubscribed() {
        let mut pol = policy(&[("mode", text("adaptive")), ("threshold", Value::Int(4)), ("penalty", Value::Int(3))]);
        let st = State::new(1024, &[512]);
        let cost = CostModel::default();
        let cx = Ctx::new(&st, &cost, 0);
        assert_eq!(pol.counters(&cx, 0), None, "UVM's counters run only while migration is delayed");
        pol.on_allocation_refused(&cx, 0);
        assert_eq!(pol.counters(&cx, 0).map(|c| c.threshold), Some(12));
    }

    #[test]
    fn ipdps_counts_every_access_cumulatively_and_write_faults_migrate() {
        let mut pol = ipdps(&[("prefetch", Value::Bool(false))]);
        let mut st = State::new(1024, &[512]);
        let cost = CostModel::default();
        let c = pol.counters(&Ctx::new(&st, &cost, 0), 0).unwrap();
        assert!(c.local_too, "IPDPS'20 counts local accesses too");
        assert_eq!((c.region, c.threshold, c.cumulative, c.halve_at), (16, 8, true, Some(SATURATION)));
        let mut unit = [Unit::default()];
        // A cold read fault is mapped remotely, a write fault migrates.
        assert!(migrated(&fault(&mut pol, &unit, &st, 40, false)).is_empty());
        assert_eq!(migrated(&fault(&mut pol, &unit, &st, 41, true)), alloc::vec![41]);
        // Seven lines to the region (local ones count): the next read fault there is the
        // eighth access and migrates; the policy reads the count from the unit.
        for p in 0..7 {
            assert!(st.set_loc(32 + p, Loc::Dev(0), 0, false));
        }
        for p in 0..7 {
            assert!(access(&mut pol, &mut unit, &st, 32 + p, 1, false).actions.is_empty());
        }
        assert_eq!(unit[0].count_of(44), 7);
        assert_eq!(migrated(&fault(&mut pol, &unit, &st, 44, false)), alloc::vec![44]);
        // The same fault with a unit that counted nothing stays remote.
        assert!(migrated(&fault(&mut pol, &[Unit::default()], &st, 44, false)).is_empty());
        // Cumulative: no reset; a remote access to a hot region migrates its remote pages.
        remote_map(&mut st, 45..48);
        assert_eq!(migrated(&access(&mut pol, &mut unit, &st, 45, 1, false)), alloc::vec![45, 46, 47]);
        assert_eq!(unit[0].count_of(45), 8);
        // Saturation halves every counter (the unit's).
        assert!(access(&mut pol, &mut unit, &st, 100, SATURATION, false).actions.is_empty());
        assert_eq!(unit[0].halvings(), Some(1));
        assert_eq!(unit[0].count_of(100), SATURATION / 2);
        assert_eq!(unit[0].count_of(40), 8 / 2);
        assert_eq!(pol.report(), alloc::vec![("counter_migrations", 1), ("counter_unmaps", 0)]);
    }

    /// `service = "fault"` (UVMSmart): a hot block's remote pages are not migrated by the
    /// notification; their remote mappings go, and the read fault that follows migrates, as
    /// an access over the threshold faults there.
    #[test]
    fn ipdps_on_the_fault_path_unmaps_a_hot_block_so_its_next_read_faults_and_migrates() {
        let mut pol = ipdps(&[("prefetch", Value::Bool(false)), ("service", text("fault"))]);
        let mut st = State::new(1024, &[512]);
        let mut unit = [Unit::default()];
        remote_map(&mut st, 32..48);
        for _ in 0..7 {
            assert!(access(&mut pol, &mut unit, &st, 33, 1, false).actions.is_empty());
        }
        let plan = access(&mut pol, &mut unit, &st, 33, 1, false);
        assert_eq!(plan.actions, alloc::vec![Action::UnmapRemote { first: 32, pages: 16, dev: 0 }]);
        assert!(!plan.moves_pages());
        for p in 32..48 {
            st.unmap_remote(p, 0);
        }
        assert!(!st.any_remote(0, 32..48));
        // A region with nothing remote left declines the notifications that follow.
        assert!(access(&mut pol, &mut unit, &st, 34, 1, false).actions.is_empty());
        assert_eq!(migrated(&fault(&mut pol, &unit, &st, 40, false)), alloc::vec![40]);
        assert_eq!(pol.report(), alloc::vec![("counter_migrations", 0), ("counter_unmaps", 1)]);
    }

    #[test]
    fn ipdps_before_migration_is_delayed_counts_without_notifying() {
        let params = [("counting", text("ipdps")), ("region", text("64K")), ("mode", text("oversub"))];
        let mut pol = policy(&params);
        let mut st = State::new(1024, &[512]);
        remote_map(&mut st, 0..16);
        let mut unit = [Unit::default()];
        // Not yet oversubscribed: the unit counts (cumulatively) but never notifies.
        assert!(access(&mut pol, &mut unit, &st, 3, 300, false).actions.is_empty());
        assert_eq!((unit[0].notifications(), unit[0].count_of(3)), (0, 300));
        let cost = CostModel::default();
        pol.on_allocation_refused(&Ctx::new(&st, &cost, 0), 0);
        // Delayed from now on: the region is hot (301 >= 256), its remote pages migrate.
        assert_eq!(migrated(&access(&mut pol, &mut unit, &st, 3, 1, false)).len(), 16);
        assert_eq!(unit[0].notifications(), 1);
    }

    /// Before oversubscription the adaptive threshold follows the device's occupancy, `1 +
    /// 8 × used / capacity`, through every change of it (the memo of the last one is never
    /// stale), here across two states of different capacities.
    #[test]
    fn ipdps_adaptive_threshold_follows_the_occupancy() {
        let pol = ipdps(&[("mode", text("adaptive"))]);
        let cost = CostModel::default();
        let mut st = State::new(2048, &[512]);
        let mut other = State::new(2048, &[640]);
        let threshold = |st: &State| pol.counters(&Ctx::new(st, &cost, 0), 0).map(|c| c.threshold);
        let mut held = 0;
        for target in [0, 64, 64, 256, 100, 511, 512, 0] {
            while held < target {
                assert!(st.set_loc(held, Loc::Dev(0), 0, false));
                assert!(other.set_loc(held, Loc::Dev(0), 0, false));
                held += 1;
            }
            while held > target {
                held -= 1;
                assert!(st.set_loc(held, Loc::Cpu, 0, false) && other.set_loc(held, Loc::Cpu, 0, false));
            }
            assert_eq!(threshold(&st), Some(1 + 8 * target / 512), "{target} of 512");
            assert_eq!(threshold(&other), Some(1 + (8.0 * target as f64 / 640.0) as u32), "{target} of 640");
            assert_eq!(threshold(&st), Some(1 + 8 * target / 512), "{target} of 512 again");
        }
    }

    #[test]
    fn ipdps_adaptive_threshold_grows_with_penalty_and_round_trips() {
        let mut pol =
            ipdps(&[("penalty", Value::Int(2)), ("mode", text("adaptive")), ("prefetch", Value::Bool(false))]);
        let mut st = State::new(1024, &[512]);
        let mut unit = [Unit::default()];
        // Before oversubscription: 1 + 8 × occupancy (empty device: 1), the first access migrates.
        assert_eq!(migrated(&fault(&mut pol, &unit, &st, 3, false)), alloc::vec![3]);
        // Oversubscribed: 8 × 2 × (round trips + 1). Page 20 went to the device and back once.
        let cost = CostModel::default();
        let cx = Ctx::new(&st, &cost, 0);
        pol.on_allocation_refused(&cx, 0);
        assert_eq!(pol.counters(&cx, 0).map(|c| c.threshold), Some(16), "the unit notifies at 8 × 2");
        assert!(st.set_loc(20, Loc::Dev(0), 0, false) && st.set_loc(20, Loc::Cpu, 1, false));
        remote_map(&mut st, 16..32);
        assert!(access(&mut pol, &mut unit, &st, 17, 30, false).actions.is_empty(), "30 < 32");
        assert!(migrated(&fault(&mut pol, &unit, &st, 18, false)).is_empty(), "31 accesses < 32");
        assert!(access(&mut pol, &mut unit, &st, 17, 1, false).actions.is_empty());
        assert_eq!(migrated(&fault(&mut pol, &unit, &st, 18, false)), alloc::vec![18], "32 accesses");
        assert_eq!(migrated(&access(&mut pol, &mut unit, &st, 17, 1, false)).len(), 16, "32: the block migrates");
        // A region without round trips needs 16.
        assert!(access(&mut pol, &mut unit, &st, 70, 15, false).actions.is_empty());
        assert_eq!(migrated(&fault(&mut pol, &unit, &st, 71, false)), alloc::vec![71]);
    }

    /// UVMSmart serves a read remotely only when it does not migrate it (its count below the
    /// threshold). In adaptive mode on a device nothing fills (the artifact's 1 GB: threshold
    /// `1 + 8 × occupancy` = 1, and the faulting access counts one) every read migrates and
    /// nothing is mapped ahead, as in the disabled mode; once the occupancy raises the
    /// threshold, the first read below it maps the device's other pages ahead.
    #[test]
    fn ipdps_adaptive_maps_ahead_only_at_the_first_read_it_does_not_migrate() {
        let mut pol = ipdps(&[("mode", text("adaptive")), ("prefetch", Value::Bool(false))]);
        let mut st = State::new(1024, &[512]);
        let unit = [Unit::default()];
        let remote = |plan: &Plan| plan.actions.iter().filter(|a| matches!(a, Action::MapRemote { .. })).count();
        for page in [3, 200, 700] {
            let plan = fault(&mut pol, &unit, &st, page, false);
            assert_eq!((migrated(&plan), remote(&plan)), (alloc::vec![page], 0), "{plan:?}");
        }
        // 64 of 512 pages held: the threshold is 2, and a cold read (count 1) stays remote.
        for p in 100..164 {
            assert!(st.set_loc(p, Loc::Dev(0), 0, false));
        }
        let plan = fault(&mut pol, &unit, &st, 400, false);
        assert!(migrated(&plan).is_empty(), "{plan:?}");
        assert!(
            plan.actions.contains(&Action::MapRemote { first: 0, pages: 1024, dev: 0, read_only: true }),
            "{plan:?}"
        );
    }

    #[test]
    fn ipdps_maps_the_pages_ahead_for_reads_at_the_first_delayed_fault() {
        let st = State::new(1024, &[512]);
        let mut pol = ipdps(&[]);
        let unit = [Unit::default()];
        let ahead = |plan: &Plan| {
            plan.actions.iter().filter(|a| matches!(a, Action::MapRemote { read_only: true, .. })).count()
        };
        let first = fault(&mut pol, &unit, &st, 40, false);
        assert!(
            first.actions.contains(&Action::MapRemote { first: 0, pages: 1024, dev: 0, read_only: true }),
            "{first:?}"
        );
        assert!(!first.actions.iter().any(|a| matches!(a, Action::MapRemote { read_only: false, .. })), "{first:?}");
        // Once: later read faults (pages the CPU moved back) are mapped for reads alone.
        let later = fault(&mut pol, &unit, &st, 300, false);
        assert_eq!(later.actions, alloc::vec![Action::MapRemote { first: 300, pages: 1, dev: 0, read_only: true }]);
        assert_eq!(ahead(&fault(&mut pol, &unit, &st, 301, true)), 0, "a write fault migrates");
        assert!(pol.remote_read_only(), "evicted pages are remapped for reads only");
        // `ahead = false`: each cold read fault is mapped remotely, writable, as before.
        let mut off = ipdps(&[("ahead", Value::Bool(false))]);
        let plan = fault(&mut off, &unit, &st, 40, false);
        assert_eq!(plan.actions, alloc::vec![Action::MapRemote { first: 40, pages: 1, dev: 0, read_only: false }]);
        assert!(!off.remote_read_only());
        // The disabled mode never maps ahead.
        let mut disabled = policy(&[("counting", text("ipdps")), ("mode", text("disabled"))]);
        assert_eq!(ahead(&fault(&mut disabled, &unit, &st, 40, false)), 0);
    }
}
