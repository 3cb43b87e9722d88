//! P0, static placement by advice: preferred location, accessed-by, read-mostly, and prefetch on
//! advice (UVM's residency rules 3, 7 and 9, §1.1; AMD SVM's `PREFERRED_LOC`, `ACCESS`,
//! `PREFETCH_LOC`, `GPU_READ_MOSTLY`). The advice covers all managed memory.
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
];

/// Placement by advice.
#[derive(Debug, Clone)]
pub struct Advice {
    preferred: Option<Loc>,
    accessed_by: bool,
    read_mostly: bool,
    prefetch: bool,
    started: bool,
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
        }
    }
}

impl Policy for Advice {
    fn name(&self) -> &str {
        "advice"
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        let me = Loc::Dev(dev);
        for f in faults {
            let at = cx.state.page(f.page).loc;
            if self.preferred == Some(me) {
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
            for b in 0..cx.state.blocks() {
                let r = cx.state.block_range(b);
                plan.prefetch(r.start, r.end - r.start, pref);
            }
        }
    }
}
