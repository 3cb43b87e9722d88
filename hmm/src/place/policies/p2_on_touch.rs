//! P2, migrate on touch: a faulted page moves to the faulting device with the aligned window
//! around it, 4 KiB (on demand, UVMSmart's baseline), 64 KiB (a big page: ISCA'19's SLp) or
//! 2 MiB (AMD SVM's default granularity, `svm_default_granularity` = 9). The window never
//! crosses a 2 MiB VA block.
//!
//! `until_full = "tree"` runs UVM's tree prefetcher until device memory is first
//! oversubscribed and this policy from then on, as ISCA'19's eviction × prefetch runs do
//! (UVMSmart's `hwprefetch_oversub`; see [`crate::place::policy::UntilFull`]). `tree` and
//! `random-prefetch` take the same parameter.

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Ctx, Fault, Plan, Policy, UNTIL_FULL};
use crate::place::{BLOCK, Loc};

/// Parameters.
pub const PARAMS: &[ParamDef] =
    &[ParamDef::text("granularity", "4K", &["4K", "64K", "2M"], "window migrated around each fault"), UNTIL_FULL];

/// Pages in a granularity word.
pub fn pages_of(g: &str) -> u32 {
    match g {
        "64K" => 16,
        "2M" => BLOCK,
        _ => 1,
    }
}

/// Migrate on touch.
#[derive(Debug, Clone)]
pub struct OnTouch {
    /// Window, pages.
    pub window: u32,
}

impl OnTouch {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        OnTouch { window: pages_of(p.text("granularity")) }
    }
}

impl Policy for OnTouch {
    fn name(&self) -> &str {
        match self.window {
            1 => "on-touch-4K",
            16 => "on-touch-64K",
            _ => "on-touch-2M",
        }
    }
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        for (f, first, end) in cx.fault_windows(faults, self.window) {
            plan.migrate(f.page, 1, Loc::Dev(dev));
            if f.page > first {
                plan.prefetch(first, f.page - first, Loc::Dev(dev));
            }
            if end > f.page + 1 {
                plan.prefetch(f.page + 1, end - f.page - 1, Loc::Dev(dev));
            }
        }
    }
}
