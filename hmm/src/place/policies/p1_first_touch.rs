//! P1, first touch: a page is placed on the first device to touch it and never migrates again;
//! every other device maps it remotely where it is (the "first-touch pinning" baseline of
//! Griffin and GRIT). The CPU can only touch device-private pages by bringing them back, so a
//! CPU touch returns the page to system memory, where it stays placed.
//!
//! With `delay` > 0, Griffin's delayed first touch: devices first map pages remotely and count
//! their accesses per 64 KiB region; the first device whose count reaches `delay` lines gets the
//! region, so pages land with their heaviest early user rather than their first.
//!
//! With `heaviest` > 0, Griffin's inter-device migration to the heaviest user: every device's
//! counter unit counts its accesses per 64 KiB region (local ones too, cumulatively), and
//! notifies once a region's count reaches `heaviest` (or `delay`, when that is lower and
//! the region is still to be placed); when the notifying device does not hold the region and
//! its count is above the holder's (as the holder's unit reads, [`Ctx::count_of`]), the
//! region's pages move to it (device to device) and every unit's counts of the region are
//! cleared, so they start again. The CPU is not a candidate (Griffin balances GPUs). The
//! policy keeps no count of its own.

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy};
use crate::place::{BIG, Loc};
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
    moved: u64,
}

impl FirstTouch {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        FirstTouch { delay: p.int("delay") as u32, heaviest: p.int("heaviest") as u32, placed: Vec::new(), moved: 0 }
    }

    /// Griffin's migration to the heaviest user, after device `n.dev`'s unit notified.
    fn heaviest_user(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        let end = (n.first + n.pages).min(cx.pages());
        // The device holding the region (its first page on a device).
        let Some(owner) = (n.first..end).find_map(|p| cx.state.page(p).loc.dev()).map(|o| o as u8) else { return };
        let (mine, theirs) = (cx.count_of(n.dev, n.first), cx.count_of(owner, n.first));
        if owner == n.dev || mine < self.heaviest || mine <= theirs {
            return;
        }
        for p in n.first..end {
            if cx.state.page(p).loc == Loc::Dev(owner) {
                plan.migrate(p, 1, Loc::Dev(n.dev));
            }
        }
        plan.clear_counts(n.first, end - n.first);
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
            // Every access counted, the holder's too; a notification from the lower of the
            // two thresholds on.
            let at = if self.delay > 0 { self.delay.min(self.heaviest) } else { self.heaviest };
            return Some(Counters { local_too: true, cumulative: true, ..Counters::new(BIG, at) });
        }
        (self.delay > 0).then_some(Counters::new(BIG, self.delay))
    }

    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        let end = (n.first + n.pages).min(cx.pages());
        if self.heaviest > 0 {
            let unplaced = (n.first..end).any(|p| !*self.placed(cx, p));
            // Delayed first touch still deciding: this device's count so far.
            if !(unplaced && self.delay > 0 && cx.count_of(n.dev, n.first) >= self.delay) {
                self.heaviest_user(cx, n, plan);
                return;
            }
        }
        let pages: Vec<u32> = (n.first..n.first + n.pages).filter(|&p| !*self.placed(cx, p)).collect();
        for p in pages {
            *self.placed(cx, p) = true;
            plan.migrate(p, 1, Loc::Dev(n.dev));
        }
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

    /// `lines` lines of device `dev`'s accesses to `page`, counted by its counter unit as the
    /// policy programs it; a notification goes to the policy and the plan's counter clears
    /// to every unit, as the engine delivers and applies them.
    fn access(pol: &mut FirstTouch, units: &mut [Unit; 2], st: &State, dev: u8, page: u32, lines: u32) -> Plan {
        let cost = CostModel::default();
        let c = pol.counters(&Ctx::new(st, &cost, 0), dev);
        units[dev as usize].configure(c.map(Counters::unit));
        let local = st.page(page).loc == Loc::Dev(dev);
        let mut plan = Plan::default();
        let Some(n) = units[dev as usize].count(u64::from(page), false, local, lines) else { return plan };
        let (first, pages) = (n.first as u32, n.pages.min(st.len() - n.first as u32));
        let note = Notification::reads(dev, first, pages, n.reads);
        pol.on_access_counter(&Ctx::new(st, &cost, 0).with_units(Units::new(units, 0)), &note, &mut plan);
        for a in &plan.actions {
            if let Action::ClearCounts { first, pages } = *a {
                units.iter_mut().for_each(|u| u.clear_range(u64::from(first), u64::from(pages)));
            }
        }
        plan
    }

    #[test]
    fn a_placed_region_moves_to_its_heaviest_user() {
        let mut p = Params::new();
        p.set("heaviest", Value::Int(64));
        let mut pol = FirstTouch::new(&p.checked(PARAMS).unwrap());
        let mut units = [Unit::default(), Unit::default()];
        // Region 0 placed on dev0 by first touch.
        let mut st = State::new(64, &[64, 64]);
        for q in 0..16 {
            assert!(st.set_loc(q, Loc::Dev(0), 0, false));
        }
        // dev0 uses it 50 lines, dev1 40 (below `heaviest`): it stays.
        assert!(access(&mut pol, &mut units, &st, 0, 3, 50).actions.is_empty());
        assert!(access(&mut pol, &mut units, &st, 1, 3, 40).actions.is_empty());
        assert_eq!((units[0].count_of(3), units[1].count_of(3)), (50, 40), "the units count, not the policy");
        // dev1 reaches 70 > 64 and > 50: the region moves to dev1, device to device.
        let plan = access(&mut pol, &mut units, &st, 1, 5, 30);
        let to_dev1: u32 = plan
            .actions
            .iter()
            .map(|a| match *a {
                Action::Migrate { pages, to: Loc::Dev(1), .. } => pages,
                _ => 0,
            })
            .sum();
        assert_eq!(to_dev1, 16, "{plan:?}");
        // Counts start again, in both units: dev0 needs `heaviest` lines and more than dev1
        // to take it back.
        assert_eq!((units[0].count_of(3), units[1].count_of(3)), (0, 0));
        for q in 0..16 {
            assert!(st.set_loc(q, Loc::Dev(1), 1, false));
        }
        assert!(access(&mut pol, &mut units, &st, 0, 3, 63).actions.is_empty());
        assert!(access(&mut pol, &mut units, &st, 1, 3, 80).actions.is_empty(), "the holder's own use");
        assert!(access(&mut pol, &mut units, &st, 0, 3, 10).actions.is_empty(), "73 is not more than dev1's 80");
        assert_eq!(pol.report(), alloc::vec![("heaviest_user_moves", 1)]);
    }

    /// A targeted clear removes the counts of exactly the regions the range touches.
    #[test]
    fn a_counter_clear_takes_only_its_regions() {
        let mut u = Unit::default();
        u.configure(Some(Counters { local_too: true, ..Counters::new(BIG, crate::compute::NEVER) }.unit()));
        for page in [0u64, 16, 40, 70] {
            assert!(u.count(page, false, true, 5).is_none());
        }
        u.clear_range(17, 20); // regions 1 and 2 (pages 16..48)
        let left: Vec<u32> = [0u64, 16, 40, 70].iter().map(|&p| u.count_of(p)).collect();
        assert_eq!(left, [5, 0, 0, 5]);
    }
}
