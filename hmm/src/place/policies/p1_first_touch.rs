//! P1, first touch: a page is placed on the first device to touch it and never migrates again;
//! every other device maps it remotely where it is (the "first-touch pinning" baseline of
//! Griffin and GRIT). The CPU can only touch device-private pages by bringing them back, so a
//! CPU touch returns the page to system memory, where it stays placed.
//!
//! With `delay` > 0, Griffin's delayed first touch: devices first map pages remotely and count
//! their accesses per 64 KiB region; the first device whose count reaches `delay` lines gets the
//! region, so pages land with their heaviest early user rather than their first.
//!
//! With `heaviest` > 0, Griffin's inter-device migration to the heaviest user: every device
//! access is counted per 64 KiB region and device (local ones too); when a device that does
//! not hold a region has made at least `heaviest` lines of accesses to it and more than the
//! device holding it, the region's pages move to it (device to device) and the region's counts
//! start again. The CPU is not a candidate (Griffin balances GPUs).

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy};
use crate::place::{BIG, Loc, MAX_DEVICES};
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::int("delay", 0, 0, 1_000_000, "accesses (lines) per 64 KiB before placement; 0 = plain first touch"),
    ParamDef::int(
        "heaviest",
        0,
        0,
        1_000_000,
        "lines per 64 KiB after which a heavier user takes a placed region (Griffin); 0 = never",
    ),
];

/// First-touch placement.
#[derive(Debug, Clone)]
pub struct FirstTouch {
    delay: u32,
    heaviest: u32,
    placed: Vec<bool>,
    /// Per 64 KiB region, lines per device since the region last moved (`heaviest`).
    counts: Vec<[u32; MAX_DEVICES]>,
    moved: u64,
}

impl FirstTouch {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        FirstTouch {
            delay: p.int("delay") as u32,
            heaviest: p.int("heaviest") as u32,
            placed: Vec::new(),
            counts: Vec::new(),
            moved: 0,
        }
    }

    /// Griffin's migration to the heaviest user, after device `n.dev`'s access.
    fn heaviest_user(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        let r = (n.first / BIG) as usize;
        if self.counts.len() < cx.pages().div_ceil(BIG) as usize {
            self.counts.resize(cx.pages().div_ceil(BIG) as usize, [0; MAX_DEVICES]);
        }
        let d = n.dev as usize;
        self.counts[r][d] = self.counts[r][d].saturating_add(n.reads.saturating_add(n.writes));
        let end = (n.first + n.pages).min(cx.pages());
        // The device holding the region (its first page on a device).
        let Some(owner) = (n.first..end).find_map(|p| cx.state.page(p).loc.dev()).map(|o| o as u8) else { return };
        let c = self.counts[r];
        if owner == n.dev || c[d] < self.heaviest || c[d] <= c[owner as usize] {
            return;
        }
        for p in n.first..end {
            if cx.state.page(p).loc == Loc::Dev(owner) {
                plan.migrate(p, 1, Loc::Dev(n.dev));
            }
        }
        self.counts[r] = [0; MAX_DEVICES];
        self.moved += 1;
    }
    fn placed(&mut self, cx: &Ctx<'_>, p: u32) -> &mut bool {
        if self.placed.len() < cx.pages() as usize {
            self.placed.resize(cx.pages() as usize, false);
        }
        &mut self.placed[p as usize]
    }
}

impl Policy for FirstTouch {
    fn report(&self) -> Vec<(&'static str, u64)> {
        if self.heaviest > 0 { alloc::vec![("heaviest_user_moves", self.moved)] } else { Vec::new() }
    }

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
        if self.heaviest > 0 {
            // Every access, reported one by one: the policy counts (delay and heaviest).
            return Some(Counters { local_too: true, ..Counters::new(BIG, 1) });
        }
        (self.delay > 0).then_some(Counters::new(BIG, self.delay))
    }

    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        if self.heaviest > 0 {
            let unplaced = (n.first..(n.first + n.pages).min(cx.pages())).any(|p| !*self.placed(cx, p));
            if !(unplaced && self.delay > 0) {
                self.heaviest_user(cx, n, plan);
                return;
            }
            // Delayed first touch still deciding: this device's count so far.
            self.heaviest_user(cx, n, plan);
            let r = (n.first / BIG) as usize;
            if self.counts[r][n.dev as usize] < self.delay {
                return;
            }
        }
        let first = n.first;
        let pages: Vec<u32> = (first..first + n.pages).filter(|&p| !*self.placed(cx, p)).collect();
        for p in pages {
            *self.placed(cx, p) = true;
            plan.migrate(p, 1, Loc::Dev(n.dev));
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

    fn access(pol: &mut FirstTouch, st: &State, dev: u8, page: u32, lines: u32) -> Plan {
        let cost = CostModel::default();
        let cx = Ctx::new(st, &cost, 0);
        let n = Notification::reads(dev, page / BIG * BIG, BIG, lines);
        let mut plan = Plan::default();
        pol.on_access_counter(&cx, &n, &mut plan);
        plan
    }

    #[test]
    fn a_placed_region_moves_to_its_heaviest_user() {
        let mut p = Params::new();
        p.set("heaviest", Value::Int(64));
        let mut pol = FirstTouch::new(&p.checked(PARAMS).unwrap());
        // Region 0 placed on dev0 by first touch.
        let mut st = State::new(64, &[64, 64]);
        for q in 0..16 {
            assert!(st.set_loc(q, Loc::Dev(0), 0, false));
        }
        // dev0 uses it 50 lines, dev1 40 (below `heaviest`): it stays.
        assert!(access(&mut pol, &st, 0, 3, 50).actions.is_empty());
        assert!(access(&mut pol, &st, 1, 3, 40).actions.is_empty());
        // dev1 reaches 70 > 64 and > 50: the region moves to dev1, device to device.
        let plan = access(&mut pol, &st, 1, 5, 30);
        let to_dev1: u32 = plan
            .actions
            .iter()
            .map(|a| match *a {
                Action::Migrate { pages, to: Loc::Dev(1), .. } => pages,
                _ => 0,
            })
            .sum();
        assert_eq!(to_dev1, 16, "{plan:?}");
        // Counts start again: dev0 needs `heaviest` lines and more than dev1 to take it back.
        for q in 0..16 {
            assert!(st.set_loc(q, Loc::Dev(1), 1, false));
        }
        assert!(access(&mut pol, &st, 0, 3, 63).actions.is_empty());
        assert!(access(&mut pol, &st, 1, 3, 80).actions.is_empty(), "the holder's own use");
        assert!(access(&mut pol, &st, 0, 3, 10).actions.is_empty(), "73 is not more than dev1's 80");
        assert_eq!(pol.report(), alloc::vec![("heaviest_user_moves", 1)]);
    }
}
