//! P8, multi-device placement: read duplication and GRIT-style per-region choice.
//!
//! - `duplicate`: a read fault gives the faulting device a read-only copy of the page's 64 KiB
//!   window (UVM's read duplication, rule 2); a write migrates the page to the writer, which
//!   invalidates every copy (the engine drops them on any write).
//! - `grit`: per 64 KiB region, the policy watches which devices fault and whether anyone
//!   writes (GRIT, HPCA'24): a region used by one device migrates on touch; a region read by
//!   several is duplicated; a region written by several is mapped remotely where it is, so it
//!   stops moving.

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Ctx, Fault, Plan, Policy};
use crate::place::{BIG, Loc};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::text("mode", "duplicate", &["duplicate", "grit"], "always duplicate reads, or choose per region"),
    ParamDef::text("granularity", "64K", &["4K", "64K"], "window copied or migrated per fault"),
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
    choices: [u64; 3],
}

impl Duplicate {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        Duplicate {
            grit: p.text("mode") == "grit",
            window: if p.text("granularity") == "4K" { 1 } else { BIG },
            regions: BTreeMap::new(),
            choices: [0; 3],
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

    fn report(&self) -> Vec<(&'static str, u64)> {
        alloc::vec![
            ("chose_migrate", self.choices[0]),
            ("chose_duplicate", self.choices[1]),
            ("chose_remote", self.choices[2])
        ]
    }
}
