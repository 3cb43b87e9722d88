//! P3 variant, ISCA'19's random prefetcher (Rp): each faulted page migrates with one random
//! other page of its 2 MiB block that the device does not hold yet.

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Ctx, Fault, Plan, Policy, UNTIL_FULL};
use crate::place::{BLOCK, Loc, Rng};

/// Parameters.
pub const PARAMS: &[ParamDef] = &[ParamDef::int("seed", 1, 0, i64::MAX, "random stream"), UNTIL_FULL];

/// The random prefetcher.
#[derive(Debug, Clone)]
pub struct RandomPrefetch {
    rng: Rng,
}

impl RandomPrefetch {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        RandomPrefetch { rng: Rng::new(p.int("seed") as u64) }
    }
}

impl Policy for RandomPrefetch {
    fn name(&self) -> &str {
        "random-prefetch"
    }
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        for f in faults {
            plan.migrate(f.page, 1, Loc::Dev(dev));
            let r = cx.state.block_range(f.page / BLOCK);
            let p = r.start + self.rng.below((r.end - r.start) as u64) as u32;
            if cx.state.page(p).loc != Loc::Dev(dev) && p != f.page {
                plan.prefetch(p, 1, Loc::Dev(dev));
            }
        }
    }
}
