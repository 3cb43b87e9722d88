//! P8, multi-device placement: read duplication and GRIT-style per-region choice.
//!
//! - `duplicate`: a read fault gives the faulting device a read-only copy of the page's 64 KiB
//!   window (UVM's read duplication, rule 2); a write migrates the page to the writer, which
//!   invalidates every copy (the engine drops them on any write).
//! - `grit`: per 64 KiB region, the policy watches which devices fault and whether anyone
//!   writes (GRIT, HPCA'24): a region used by one device migrates on touch; a region read by
//!   several is duplicated; a region written by several is mapped remotely where it is, so it
//!   stops moving. With `counter_threshold` > 0 that third choice is GRIT's access-counter
//!   migration instead: the devices map the region remotely and count their remote accesses
//!   per 64 KiB; the device whose count reaches the threshold takes the region (and the others
//!   map it remotely from there, until their own counts reach it).

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy};
use crate::place::{BIG, Loc};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::text("mode", "duplicate", &["duplicate", "grit"], "always duplicate reads, or choose per region"),
    ParamDef::text("granularity", "64K", &["4K", "64K"], "window copied or migrated per fault"),
    ParamDef::int(
        "counter_threshold",
        0,
        0,
        65535,
        "grit: remote lines per 64 KiB after which a shared written region migrates to the counting device; 0 = remote only",
    ),
];

#[derive(Debug, Clone, Copy, Default)]
struct Region {
    devices: u8,
    written: bool,
}

/// Duplication / per-region choice.
#[derive(Debug, Clone)]
pub struct Duplicate {
    grit: bool,
    window: u32,
    regions: BTreeMap<u32, Region>,
    counter_threshold: u32,
    choices: [u64; 3],
    counter_migrations: u64,
}

impl Duplicate {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        Duplicate {
            grit: p.text("mode") == "grit",
            window: if p.text("granularity") == "4K" { 1 } else { BIG },
            regions: BTreeMap::new(),
            counter_threshold: p.int("counter_threshold") as u32,
            choices: [0; 3],
            counter_migrations: 0,
        }
    }
}

impl Policy for Duplicate {
    fn name(&self) -> &str {
        if self.grit { "grit" } else { "duplicate" }
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        for (f, first, end) in cx.fault_windows(faults, self.window) {
            let r = self.regions.entry(f.page / BIG).or_default();
            r.devices |= 1 << dev;
            r.written |= f.write;
            let shared = r.devices.count_ones() > 1;
            let choice = if !self.grit {
                if f.write { 0 } else { 1 }
            } else if !shared {
                0
            } else if !r.written {
                1
            } else {
                2
            };
            self.choices[choice] += 1;
            match choice {
                0 => plan.migrate(first, end - first, Loc::Dev(dev)),
                1 => plan.duplicate(first, end - first, dev),
                _ => plan.remote(first, end - first, dev),
            }
        }
    }

    fn counters(&self, _cx: &Ctx<'_>, _dev: u8) -> Option<Counters> {
        (self.grit && self.counter_threshold > 0).then_some(Counters::new(BIG, self.counter_threshold))
    }

    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        // Only the regions GRIT chose access-counter migration for (shared and written).
        let Some(r) = self.regions.get(&(n.first / BIG)) else { return };
        if r.devices.count_ones() < 2 || !r.written {
            return;
        }
        let end = (n.first + n.pages).min(cx.pages());
        let mut any = false;
        for p in n.first..end {
            if cx.state.page(p).loc != Loc::Dev(n.dev) {
                plan.migrate(p, 1, Loc::Dev(n.dev));
                any = true;
            }
        }
        if any {
            self.counter_migrations += 1;
        }
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        let mut r = alloc::vec![
            ("chose_migrate", self.choices[0]),
            ("chose_duplicate", self.choices[1]),
            ("chose_remote", self.choices[2])
        ];
        if self.counter_threshold > 0 {
            r.push(("counter_migrations", self.counter_migrations));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::cost::CostModel;
    use crate::place::params::Value;
    use crate::place::policy::Action;
    use crate::place::state::State;

    #[test]
    fn grit_migrates_a_shared_written_region_by_access_counter() {
        let mut p = Params::new();
        p.set("mode", Value::Text("grit".into()));
        p.set("counter_threshold", Value::Int(32));
        let mut pol = Duplicate::new(&p.checked(PARAMS).unwrap());
        let st = State::new(64, &[64, 64]);
        let cost = CostModel::default();
        let cx = Ctx::new(&st, &cost, 0);
        assert_eq!(pol.counters(&cx, 0).map(|c| c.threshold), Some(32));
        // dev0 then dev1 write region 0: shared and written, mapped remotely.
        let mut plan = Plan::default();
        pol.on_device_faults(&cx, 0, &[Fault { page: 1, write: true }], &mut plan);
        let mut plan = Plan::default();
        pol.on_device_faults(&cx, 1, &[Fault { page: 2, write: true }], &mut plan);
        assert_eq!(plan.actions, alloc::vec![Action::MapRemote { first: 0, pages: 16, dev: 1, read_only: false }]);
        // dev1's counter for it reaches the threshold: the region migrates to dev1.
        let mut plan = Plan::default();
        pol.on_access_counter(&cx, &Notification { writes: 12, ..Notification::reads(1, 0, 16, 20) }, &mut plan);
        assert_eq!(plan.actions.len(), 16);
        assert!(plan.actions.iter().all(|a| matches!(a, Action::Migrate { to: Loc::Dev(1), .. })));
        // A region only one device uses is not the counters' business.
        let mut plan = Plan::default();
        pol.on_device_faults(&cx, 0, &[Fault { page: 40, write: true }], &mut plan);
        let mut plan = Plan::default();
        pol.on_access_counter(&cx, &Notification::reads(1, 32, 16, 32), &mut plan);
        assert!(plan.actions.is_empty());
    }
}
