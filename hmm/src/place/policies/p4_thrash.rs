//! P4, thrashing detection with throttling and pinning (UVM's `uvm_perf_thrashing.c`, §1.4), on
//! top of the tree prefetcher.
//!
//! A page migrated again within `lapse` of its previous migration records a thrashing event;
//! `threshold` (3) consecutive events mark it thrashing. A thrashing page is first throttled:
//! the faulting processor waits `nap` × lapse before it is serviced. After `pin_threshold` (10)
//! throttles, the page is pinned in system memory, which every processor can reach, and devices
//! map it remotely, for `pin` × lapse (300 × 500 µs = 150 ms); then it is speculatively
//! unpinned. Thrashing pages are never grown or prefetched. The lapse adapts by voting: events
//! far inside the lapse vote it down, events near its edge vote it up, ±lapse/8 per 32 votes,
//! within [5 µs, 500 ms]. A page with no event for `epoch` × lapse is forgotten, at most
//! `max_resets` times.

use super::p3_tree::Tree;
use crate::place::Loc;
use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Ctx, Fault, Plan, Policy};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::int("threshold", 3, 1, 7, "consecutive events that mark a page thrashing"),
    ParamDef::float("lapse_us", 500.0, 5.0, 500_000.0, "events closer than this are thrashing"),
    ParamDef::int("nap", 1, 1, 100, "throttle length, in lapses"),
    ParamDef::int("pin_threshold", 10, 1, 100, "throttles before the page is pinned"),
    ParamDef::int("pin", 300, 1, 100_000, "pin length, in lapses"),
    ParamDef::int("epoch", 2000, 1, 1_000_000, "quiet time after which a page is forgotten, in lapses"),
    ParamDef::int("max_resets", 4, 0, 100, "times a page may be forgotten"),
    ParamDef::bool("adaptive_lapse", true, "adjust the lapse by voting"),
];

#[derive(Debug, Clone, Copy, Default)]
struct Thrash {
    events: u8,
    throttles: u32,
    pinned_until: u64,
    last_event: u64,
    resets: u32,
}

/// Thrashing mitigation.
#[derive(Debug, Clone)]
pub struct Thrashing {
    threshold: u8,
    lapse: u64,
    nap: u64,
    pin_threshold: u32,
    pin: u64,
    epoch: u64,
    max_resets: u32,
    adaptive: bool,
    vote: i32,
    pages: BTreeMap<u32, Thrash>,
    tree: Tree,
    throttled: u64,
    pinned: u64,
}

impl Thrashing {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        Thrashing {
            threshold: p.int("threshold") as u8,
            lapse: (p.float("lapse_us") * 1000.0) as u64,
            nap: p.int("nap") as u64,
            pin_threshold: p.int("pin_threshold") as u32,
            pin: p.int("pin") as u64,
            epoch: p.int("epoch") as u64,
            max_resets: p.int("max_resets") as u32,
            adaptive: p.bool("adaptive_lapse"),
            vote: 0,
            pages: BTreeMap::new(),
            tree: Tree::default(),
            throttled: 0,
            pinned: 0,
        }
    }

    /// Records a fault on `page`; returns its state if it is thrashing.
    fn event(&mut self, cx: &Ctx<'_>, page: u32) -> Option<&mut Thrash> {
        let pg = cx.state.page(page);
        if pg.migrations == 0 {
            return None;
        }
        let gap = cx.now.saturating_sub(pg.last_migration);
        let lapse = self.lapse;
        let t = self.pages.entry(page).or_default();
        if gap < lapse {
            t.events = t.events.saturating_add(1).min(7);
            t.last_event = cx.now;
            if self.adaptive {
                self.vote += if gap < lapse / 4 {
                    -1
                } else if gap > lapse * 3 / 4 {
                    1
                } else {
                    0
                };
                if self.vote.abs() >= 32 {
                    let step = self.lapse / 8;
                    self.lapse = if self.vote > 0 { self.lapse + step } else { self.lapse - step };
                    self.lapse = self.lapse.clamp(5_000, 500_000_000);
                    self.vote = 0;
                }
            }
        } else if cx.now < t.pinned_until {
            // Still pinned.
        } else {
            t.events = 0;
        }
        let t = self.pages.get_mut(&page)?;
        (t.events >= self.threshold || cx.now < t.pinned_until).then_some(t)
    }
}

impl Policy for Thrashing {
    fn name(&self) -> &str {
        "thrashing"
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        let (lapse, nap, pin, pin_threshold) = (self.lapse, self.nap, self.pin, self.pin_threshold);
        let mut exclude = BTreeSet::new();
        let mut normal = Vec::new();
        let mut stall = 0;
        for f in faults {
            let Some(t) = self.event(cx, f.page) else {
                normal.push(*f);
                continue;
            };
            exclude.insert(f.page);
            if cx.now < t.pinned_until {
                plan.remote(f.page, 1, dev);
            } else if t.throttles < pin_threshold {
                t.throttles += 1;
                self.throttled += 1;
                stall = nap * lapse;
                plan.migrate(f.page, 1, Loc::Dev(dev));
            } else {
                // Pin in system memory, reachable by all; map the device remotely.
                t.pinned_until = cx.now + pin * lapse;
                t.throttles = 0;
                t.events = 0;
                self.pinned += 1;
                if cx.state.page(f.page).loc != Loc::Cpu {
                    plan.migrate(f.page, 1, Loc::Cpu);
                }
                plan.remote(f.page, 1, dev);
            }
        }
        if stall > 0 {
            plan.stall(stall);
        }
        self.tree.plan(cx, dev, &normal, &exclude, plan);
    }

    fn on_cpu_fault(&mut self, cx: &Ctx<'_>, page: u32, _write: bool, plan: &mut Plan) {
        let _ = self.event(cx, page);
        plan.migrate(page, 1, Loc::Cpu);
    }

    fn tick_ns(&self) -> Option<u64> {
        Some(self.epoch * self.lapse)
    }

    fn on_tick(&mut self, cx: &Ctx<'_>, _plan: &mut Plan) {
        let quiet = self.epoch * self.lapse;
        let max = self.max_resets;
        for t in self.pages.values_mut() {
            if cx.now.saturating_sub(t.last_event) >= quiet && cx.now >= t.pinned_until && t.resets < max {
                *t = Thrash { resets: t.resets + 1, ..Thrash::default() };
            }
        }
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        alloc::vec![("throttles", self.throttled), ("pins", self.pinned), ("lapse_ns", self.lapse)]
    }
}
