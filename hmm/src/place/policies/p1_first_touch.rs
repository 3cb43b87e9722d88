//! P1, first touch: a page is placed on the first device to touch it and never migrates again;
//! every other device maps it remotely where it is (the "first-touch pinning" baseline of
//! Griffin and GRIT). The CPU can only touch device-private pages by bringing them back, so a
//! CPU touch returns the page to system memory, where it stays placed.
//!
//! With `delay` > 0, Griffin's delayed first touch: devices first map pages remotely and count
//! their accesses per 64 KiB region; the first device whose count reaches `delay` lines gets the
//! region, so pages land with their heaviest early user rather than their first.

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy};
use crate::place::{BIG, Loc};
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] =
    &[ParamDef::int("delay", 0, 0, 1_000_000, "accesses (lines) per 64 KiB before placement; 0 = plain first touch")];

/// First-touch placement.
#[derive(Debug, Clone)]
pub struct FirstTouch {
    delay: u32,
    placed: Vec<bool>,
}

impl FirstTouch {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        FirstTouch { delay: p.int("delay") as u32, placed: Vec::new() }
    }
    fn placed(&mut self, cx: &Ctx<'_>, p: u32) -> &mut bool {
        if self.placed.len() < cx.pages() as usize {
            self.placed.resize(cx.pages() as usize, false);
        }
        &mut self.placed[p as usize]
    }
}

impl Policy for FirstTouch {
    fn name(&self) -> &str {
        if self.delay > 0 { "first-touch-delayed" } else { "first-touch" }
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        for f in faults {
            if self.delay == 0 && !*self.placed(cx, f.page) {
                *self.placed(cx, f.page) = true;
                plan.migrate(f.page, 1, Loc::Dev(dev));
            } else {
                plan.remote(f.page, 1, dev);
            }
        }
    }

    fn on_cpu_fault(&mut self, cx: &Ctx<'_>, page: u32, _write: bool, plan: &mut Plan) {
        *self.placed(cx, page) = true;
        plan.migrate(page, 1, Loc::Cpu);
    }

    fn counters(&self, _cx: &Ctx<'_>, _dev: u8) -> Option<Counters> {
        (self.delay > 0).then_some(Counters { region: BIG, threshold: self.delay, local_too: false, sync: false })
    }

    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        let first = n.first;
        let pages: Vec<u32> = (first..first + n.pages).filter(|&p| !*self.placed(cx, p)).collect();
        for p in pages {
            *self.placed(cx, p) = true;
            plan.migrate(p, 1, Loc::Dev(n.dev));
        }
    }
}
