//! P0, static placement by advice: preferred location, accessed-by, read-mostly, and prefetch on
//! advice (UVM's residency rules 3, 7 and 9, §1.1; AMD SVM's `PREFERRED_LOC`, `ACCESS`,
//! `PREFETCH_LOC`, `GPU_READ_MOSTLY`). The advice covers the range `[from_pct, to_pct)` of the
//! managed memory (in percent of its pages; all of it by default), as `cudaMemAdvise` and
//! `SVM_ATTR_*` apply to an address range; a page outside it has no advice and migrates to the
//! faulting device (UVM's rule 10).
//!
//! For a faulting device: if it is the preferred location, the page migrates there; if a
//! preferred location is set and the device is in accessed-by, it maps the page where it is
//! (remotely) without migrating; with read-mostly, a read fault makes a local read copy; else the
//! page moves to the preferred location (and is mapped remotely from there when that is not the
//! faulter), or to the faulter when nothing is preferred. With `prefetch`, everything moves to
//! the preferred location at the start.

use crate::place::Loc;
use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Ctx, Fault, Plan, Policy};

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::text(
        "preferred",
        "none",
        &["none", "cpu", "dev0", "dev1", "dev2", "dev3", "dev4", "dev5", "dev6", "dev7"],
        "preferred location",
    ),
    ParamDef::bool("accessed_by", true, "devices map the preferred location remotely instead of migrating"),
    ParamDef::bool("read_mostly", false, "read faults make read copies"),
    ParamDef::bool("prefetch", false, "move everything to the preferred location at the start"),
    ParamDef::int("from_pct", 0, 0, 100, "the advised range starts at this % of the managed pages"),
    ParamDef::int("to_pct", 100, 0, 100, "the advised range ends at this % of the managed pages"),
];

/// Placement by advice.
#[derive(Debug, Clone)]
pub struct Advice {
    preferred: Option<Loc>,
    accessed_by: bool,
    read_mostly: bool,
    prefetch: bool,
    started: bool,
    /// The advised range, in % of the managed pages.
    range_pct: (u32, u32),
}

impl Advice {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        let preferred = match p.text("preferred") {
            "none" => None,
            "cpu" => Some(Loc::Cpu),
            d => d.strip_prefix("dev").and_then(|n| n.parse().ok()).map(Loc::Dev),
        };
        Advice {
            preferred,
            accessed_by: p.bool("accessed_by"),
            read_mostly: p.bool("read_mostly"),
            prefetch: p.bool("prefetch"),
            started: false,
            range_pct: (p.int("from_pct") as u32, p.int("to_pct") as u32),
        }
    }

    /// The advised pages, `[first, end)`.
    fn range(&self, cx: &Ctx<'_>) -> (u32, u32) {
        let n = cx.pages() as u64;
        let at = |pct: u32| (n * pct as u64 / 100) as u32;
        (at(self.range_pct.0), at(self.range_pct.1.max(self.range_pct.0)))
    }
}

impl Policy for Advice {
    fn name(&self) -> &str {
        "advice"
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        let me = Loc::Dev(dev);
        let (first, end) = self.range(cx);
        for f in faults {
            let at = cx.state.page(f.page).loc;
            if f.page < first || f.page >= end {
                // No advice here.
                plan.migrate(f.page, 1, me);
            } else if self.preferred == Some(me) {
                plan.migrate(f.page, 1, me);
            } else if self.read_mostly && !f.write {
                plan.duplicate(f.page, 1, dev);
            } else if let Some(pref) = self.preferred {
                if !self.accessed_by && at != pref {
                    plan.migrate(f.page, 1, pref);
                }
                plan.remote(f.page, 1, dev);
            } else {
                plan.migrate(f.page, 1, me);
            }
        }
    }

    fn tick_ns(&self) -> Option<u64> {
        self.prefetch.then_some(u64::MAX / 4)
    }

    fn on_tick(&mut self, cx: &Ctx<'_>, plan: &mut Plan) {
        if self.started || !self.prefetch {
            return;
        }
        self.started = true;
        if let Some(pref @ Loc::Dev(_)) = self.preferred {
            let (first, end) = self.range(cx);
            for b in 0..cx.state.blocks() {
                let r = cx.state.block_range(b);
                let (a, z) = (r.start.max(first), r.end.min(end));
                if a < z {
                    plan.prefetch(a, z - a, pref);
                }
            }
        }
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
    fn advice_covers_its_range_only() {
        // Preferred location the CPU with accessed-by over the first half: dev0 maps those
        // pages where they are; the second half has no advice and migrates on touch.
        let mut p = Params::new();
        p.set("preferred", Value::Text("cpu".into()));
        p.set("to_pct", Value::Int(50));
        p.set("prefetch", Value::Bool(true));
        let mut pol = Advice::new(&p.checked(PARAMS).unwrap());
        let st = State::new(1024, &[1024]);
        let cost = CostModel::default();
        let cx = Ctx::new(&st, &cost, 0);
        let mut plan = Plan::default();
        pol.on_device_faults(&cx, 0, &[Fault { page: 10, write: false }, Fault { page: 700, write: false }], &mut plan);
        assert_eq!(
            plan.actions,
            alloc::vec![
                Action::MapRemote { first: 10, pages: 1, dev: 0, read_only: false },
                Action::Migrate { first: 700, pages: 1, to: Loc::Dev(0), prefetch: false },
            ]
        );
        // Prefetch on advice moves only the advised range.
        let mut p = Params::new();
        p.set("preferred", Value::Text("dev0".into()));
        p.set("from_pct", Value::Int(25));
        p.set("prefetch", Value::Bool(true));
        let mut pol = Advice::new(&p.checked(PARAMS).unwrap());
        let mut plan = Plan::default();
        pol.on_tick(&cx, &mut plan);
        let moved: u32 =
            plan.actions.iter().map(|a| if let Action::Migrate { pages, .. } = *a { pages } else { 0 }).sum();
        assert_eq!(moved, 768);
    }
}
