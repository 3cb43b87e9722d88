//! P4, thrashing detection with throttling and pinning (UVM's `uvm_perf_thrashing.c`, §1.4), on
//! top of the tree prefetcher.
//!
//! Detection, as UVM's `thrashing_event_cb`:
//! - The events are the migrations this policy plans (on a device fault, its prefetches, a CPU
//!   fault's migration back): evictions are chosen by the eviction policy and never count, as
//!   UVM skips eviction-caused migrations.
//! - A VA block tracks its pages only once two different processors migrated pages of it within
//!   one lapse (a single device that evicts and faults its pages back never thrashes).
//! - A tracked page's event within `lapse` of its previous one is a thrashing event;
//!   `threshold` (3) consecutive ones mark it thrashing; an event after a longer gap clears a
//!   thrashing page that is not pinned.
//!
//! The hint at each fault on a thrashing page (UVM's `uvm_perf_thrashing_get_hint`):
//! - A throttling period of `nap` × lapse starts at the first fault after the previous one
//!   ended; its `do_not_throttle` processor is the one that faulted first in it (never the same
//!   one two periods running).
//! - Any other processor faulting in the period is throttled: it is not serviced until the
//!   period ends and the page stays where it is. A device's fault waits until then (a stall);
//!   its replay after the nap is the engine's completion of the unserviced fault (it migrates
//!   the page to the faulter, counted as a fallback), as UVM's replay finds the throttled
//!   processor the next period's `do_not_throttle` one. The CPU's fault path always brings its
//!   page back: a throttled CPU fault waits after it.
//! - The `do_not_throttle` processor is serviced (the tree prefetcher plans it, never growing
//!   or prefetching thrashing pages); after `pin_threshold` (10) throttles of the page it is
//!   pinned instead: in system memory, which every processor reaches, with devices mapping it
//!   remotely, for `pin` × lapse (300 × 500 µs = 150 ms); then it is unpinned at its next fault.
//! - A block with no thrashing for `epoch` × lapse forgets its pages, at most `max_resets`
//!   times.
//!
//! The lapse adapts by voting (`adaptive_lapse`): every throttle or pin hint votes, +1 if the
//! page's previous event was more than half a lapse earlier (events near the lapse's edge: it
//! may be too short), −1 otherwise; at |vote| ≥ 32 the lapse moves by lapse/8 that way, within
//! [5 µs, 500 ms], and the vote halves. The nap, pin and epoch are multiples of the current
//! lapse.

use super::p3_tree::Tree;
use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Action, Ctx, Fault, Plan, Policy};
use crate::place::{BLOCK, Loc};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::int("threshold", 3, 1, 7, "consecutive events that mark a page thrashing"),
    ParamDef::float("lapse_us", 500.0, 5.0, 500_000.0, "events closer than this are thrashing"),
    ParamDef::int("nap", 1, 1, 100, "throttle length, in lapses"),
    ParamDef::int("pin_threshold", 10, 1, 100, "throttles before the page is pinned"),
    ParamDef::int("pin", 300, 1, 100_000, "pin length, in lapses"),
    ParamDef::int("epoch", 2000, 1, 1_000_000, "quiet time after which a block is forgotten, in lapses"),
    ParamDef::int("max_resets", 4, 0, 100, "times a block may be forgotten"),
    ParamDef::bool("adaptive_lapse", true, "adjust the lapse by voting"),
];

/// Votes that move the lapse.
pub const VOTE_THRESHOLD: i32 = 32;
/// The lapse's bounds, ns.
pub const LAPSE_MIN_NS: u64 = 5_000;
/// The lapse's upper bound, ns.
pub const LAPSE_MAX_NS: u64 = 500_000_000;

/// The CPU's bit in processor masks (devices are bits 0..8).
const CPU: u16 = 1 << 15;

fn bit(dev: Option<u8>) -> u16 {
    dev.map_or(CPU, |d| 1 << d)
}

/// A page's thrashing state.
#[derive(Debug, Clone, Copy, Default)]
struct Page {
    /// Time of the last event (0: none yet).
    last: u64,
    events: u8,
    /// Processors that migrated it.
    processors: u16,
    /// Processors throttled in the current period.
    throttled: u16,
    /// End of the throttling period (0: none).
    end: u64,
    /// Not throttled in the current period.
    do_not_throttle: Option<u16>,
    /// Throttles since the last pin.
    throttles: u32,
    pinned: bool,
    pinned_until: u64,
}

/// A VA block's state.
#[derive(Debug, Clone, Copy, Default)]
struct Block {
    /// Pages are tracked (two processors migrated pages of it within a lapse).
    tracked: bool,
    last_processor: u16,
    last: u64,
    last_thrashing: u64,
    resets: u32,
}

/// What to do with a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    None,
    Throttle { until: u64 },
    Pin,
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
    pages: Vec<Page>,
    blocks: Vec<Block>,
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
            pages: Vec::new(),
            blocks: Vec::new(),
            tree: Tree::default(),
            throttled: 0,
            pinned: 0,
        }
    }

    /// The current lapse, ns.
    pub fn lapse_ns(&self) -> u64 {
        self.lapse
    }

    fn size(&mut self, cx: &Ctx<'_>) {
        if self.pages.len() < cx.pages() as usize {
            self.pages.resize(cx.pages() as usize, Page::default());
            self.blocks.resize(cx.pages().div_ceil(BLOCK) as usize, Block::default());
        }
    }

    /// Records the migration of `page` by processor `proc` (a bit) at `now`
    /// (`thrashing_event_cb`).
    fn event(&mut self, page: u32, proc: u16, now: u64) {
        let lapse = self.lapse;
        let b = &mut self.blocks[(page / BLOCK) as usize];
        if !b.tracked {
            let start = b.last != 0 && b.last_processor != proc && now.saturating_sub(b.last) <= lapse;
            b.last = now;
            b.last_processor = proc;
            if !start {
                return;
            }
            b.tracked = true;
        }
        b.last = now;
        b.last_processor = proc;
        let threshold = self.threshold;
        let pg = &mut self.pages[page as usize];
        pg.processors |= proc;
        let last = pg.last;
        pg.last = now;
        if last == 0 {
            return;
        }
        if now.saturating_sub(last) <= lapse {
            pg.events = (pg.events + 1).min(7);
            if pg.events >= threshold {
                self.blocks[(page / BLOCK) as usize].last_thrashing = now;
            }
        } else if pg.events >= threshold && !pg.pinned {
            *pg = Page { last: now, processors: proc, ..Page::default() };
        }
    }

    /// Records the events of every migration in `plan` (from action `from` on) by processor
    /// `proc`: the pages that move.
    fn record(&mut self, cx: &Ctx<'_>, plan: &Plan, from: usize, proc: u16) {
        for a in &plan.actions[from..] {
            if let Action::Migrate { first, pages, to, .. } = *a {
                for p in first..first.saturating_add(pages).min(self.pages.len() as u32) {
                    if cx.state.page(p).loc != to {
                        self.event(p, proc, cx.now);
                    }
                }
            }
        }
    }

    /// Whether `page` is thrashing.
    fn thrashing(&self, page: u32) -> bool {
        let pg = &self.pages[page as usize];
        self.blocks[(page / BLOCK) as usize].tracked && (pg.events >= self.threshold || pg.pinned)
    }

    /// The hint for a fault on `page` by processor `r` at `now` (`uvm_perf_thrashing_get_hint`).
    fn hint(&mut self, page: u32, r: u16, now: u64) -> Hint {
        let (lapse, threshold) = (self.lapse, self.threshold);
        let bi = (page / BLOCK) as usize;
        let b = self.blocks[bi];
        if !b.tracked {
            return Hint::None;
        }
        // A block quiet for an epoch forgets its pages (none pinned), at most max_resets times.
        let block = bi as u32 * BLOCK..((bi as u32 + 1) * BLOCK).min(self.pages.len() as u32);
        if b.last_thrashing != 0
            && now.saturating_sub(b.last_thrashing) > self.epoch * lapse
            && b.resets < self.max_resets
            && !block.clone().any(|p| self.pages[p as usize].pinned)
        {
            for p in block {
                self.pages[p as usize] = Page::default();
            }
            self.blocks[bi] = Block { resets: b.resets + 1, ..Block::default() };
            return Hint::None;
        }
        let pg = &mut self.pages[page as usize];
        if pg.pinned && now >= pg.pinned_until {
            // Speculative unpin: the page is decided afresh.
            *pg = Page { last: pg.last, processors: pg.processors, ..Page::default() };
        }
        if pg.events < threshold && !pg.pinned {
            return Hint::None;
        }
        if pg.throttled & r != 0 {
            if now < pg.end && pg.do_not_throttle != Some(r) {
                return Hint::Throttle { until: pg.end };
            }
            pg.throttled &= !r;
            if pg.throttled == 0 {
                pg.end = 0;
            }
        }
        let gap = now.saturating_sub(pg.last);
        if gap > lapse && !pg.pinned {
            return Hint::None;
        }
        pg.processors |= r;
        // A new throttling period, or its first processor.
        if now > pg.end {
            pg.end = now + self.nap * lapse;
            pg.do_not_throttle = if pg.do_not_throttle == Some(r) { None } else { Some(r) };
        } else if pg.do_not_throttle.is_none() {
            pg.do_not_throttle = Some(r);
        }
        let hint = if pg.pinned {
            // Pinned in system memory: devices map it there.
            Hint::Pin
        } else if pg.do_not_throttle != Some(r) {
            Hint::Throttle { until: pg.end }
        } else if pg.throttles >= self.pin_threshold {
            Hint::Pin
        } else {
            Hint::None
        };
        match hint {
            Hint::Pin if !pg.pinned => {
                pg.pinned = true;
                pg.pinned_until = now + self.pin * lapse;
                pg.throttles = 0;
                pg.throttled = 0;
                pg.end = 0;
                self.pinned += 1;
            }
            Hint::Throttle { .. } => {
                if pg.throttled & r == 0 {
                    pg.throttled |= r;
                    pg.throttles += 1;
                }
                self.throttled += 1;
            }
            _ => {}
        }
        if hint != Hint::None {
            self.vote(gap);
        }
        hint
    }

    /// A throttled fault by `r` on `page`, throttled until `until`: its replay after the nap,
    /// decided now (UVM's processor re-faults when its nap ends; the engine's completion of
    /// the unserviced fault, and the CPU's fault path, do not ask again). Returns the replay's
    /// hint (never a throttle: a replay throttled again waits for that period too) and when
    /// it is serviced.
    fn replay(&mut self, page: u32, r: u16, mut until: u64) -> (Hint, u64) {
        for _ in 0..2 {
            match self.hint(page, r, until) {
                Hint::Throttle { until: u } => until = u.max(until + 1),
                h => return (h, until),
            }
        }
        (Hint::None, until)
    }

    /// One hint's vote on the lapse.
    fn vote(&mut self, gap: u64) {
        if !self.adaptive {
            return;
        }
        self.vote += if gap > self.lapse / 2 { 1 } else { -1 };
        if self.vote.abs() >= VOTE_THRESHOLD {
            let step = self.lapse / 8;
            self.lapse = if self.vote > 0 { self.lapse + step } else { self.lapse - step };
            self.lapse = self.lapse.clamp(LAPSE_MIN_NS, LAPSE_MAX_NS);
            self.vote /= 2;
        }
    }
}

impl Policy for Thrashing {
    fn name(&self) -> &str {
        "thrashing"
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        self.size(cx);
        let r = bit(Some(dev));
        let mut exclude = BTreeSet::new();
        let mut normal = Vec::new();
        let mut until = 0;
        let mut pin = Vec::new();
        for f in faults {
            if self.thrashing(f.page) {
                exclude.insert(f.page);
            }
            match self.hint(f.page, r, cx.now) {
                Hint::None => normal.push(*f),
                Hint::Throttle { until: u } => {
                    // Not serviced: the page stays where it is until the period ends. Its
                    // replay then: pinned (at once: a remote mapping needs no wait), or the
                    // engine's completion, which migrates the page when the stall ends.
                    exclude.insert(f.page);
                    match self.replay(f.page, r, u) {
                        (Hint::Pin, _) => pin.push(f.page),
                        (_, at) => {
                            until = until.max(at);
                            self.event(f.page, r, at);
                        }
                    }
                }
                Hint::Pin => {
                    exclude.insert(f.page);
                    pin.push(f.page);
                }
            }
        }
        for &p in &pin {
            // Pinned in system memory, reachable by all; the device maps it there.
            if cx.state.page(p).loc != Loc::Cpu {
                plan.migrate(p, 1, Loc::Cpu);
            }
            plan.remote(p, 1, dev);
        }
        let from = plan.actions.len();
        self.tree.plan(cx, dev, &normal, &exclude, plan);
        self.record(cx, plan, from, r);
        if until > cx.now {
            plan.stall(until - cx.now);
        }
    }

    fn on_cpu_fault(&mut self, cx: &Ctx<'_>, page: u32, _write: bool, plan: &mut Plan) {
        self.size(cx);
        // The CPU's fault path brings the page back whatever the hint: a throttled CPU waits
        // after it, and its event is when UVM would service it, after the nap.
        plan.migrate(page, 1, Loc::Cpu);
        match self.hint(page, CPU, cx.now) {
            Hint::Throttle { until } => {
                let (_, at) = self.replay(page, CPU, until);
                if cx.state.page(page).loc != Loc::Cpu {
                    self.event(page, CPU, at);
                }
                plan.stall(at.saturating_sub(cx.now));
            }
            _ => {
                let from = plan.actions.len() - 1;
                self.record(cx, plan, from, CPU);
            }
        }
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        alloc::vec![("throttles", self.throttled), ("pins", self.pinned), ("lapse_ns", self.lapse)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::cost::CostModel;
    use crate::place::state::State;

    fn policy(params: &[(&str, crate::place::params::Value)]) -> Thrashing {
        let mut p = Params::new();
        for (k, v) in params {
            p.set(k, v.clone());
        }
        Thrashing::new(&p.checked(PARAMS).unwrap())
    }

    /// Device 0 faults on `page` at `now`; the plan is applied to the state.
    fn dev_fault(pol: &mut Thrashing, st: &mut State, page: u32, now: u64) -> Plan {
        let cost = CostModel::default();
        let mut plan = Plan::default();
        pol.on_device_faults(&Ctx::new(st, &cost, now), 0, &[Fault { page, write: true }], &mut plan);
        apply(st, &plan, now);
        plan
    }

    fn cpu_fault(pol: &mut Thrashing, st: &mut State, page: u32, now: u64) -> Plan {
        let cost = CostModel::default();
        let mut plan = Plan::default();
        pol.on_cpu_fault(&Ctx::new(st, &cost, now), page, true, &mut plan);
        apply(st, &plan, now);
        plan
    }

    fn apply(st: &mut State, plan: &Plan, now: u64) {
        for a in &plan.actions {
            if let Action::Migrate { first, pages, to, prefetch } = *a {
                for p in first..first + pages {
                    st.set_loc(p, to, now, prefetch);
                }
            }
        }
    }

    fn stalled(plan: &Plan) -> bool {
        plan.actions.iter().any(|a| matches!(a, Action::Stall { .. }))
    }

    fn moves(plan: &Plan, page: u32) -> bool {
        plan.actions
            .iter()
            .any(|a| matches!(*a, Action::Migrate { first, pages, .. } if first <= page && page < first + pages))
    }

    #[test]
    fn eviction_moves_do_not_count_as_thrashing() {
        // One device, too small: each fault brings the page in, an eviction takes it out
        // 10 µs later, the next fault brings it back; all well inside the 500 µs lapse.
        let mut pol = policy(&[]);
        let mut st = State::new(512, &[512]);
        let mut t = 1_000;
        for _ in 0..20 {
            let plan = dev_fault(&mut pol, &mut st, 7, t);
            assert!(!stalled(&plan) && moves(&plan, 7), "an evicted page is not thrashing: {plan:?}");
            assert!(st.set_loc(7, Loc::Cpu, t + 10_000, false), "evicted");
            t += 20_000;
        }
        assert_eq!(pol.report()[0], ("throttles", 0));
    }

    #[test]
    fn a_throttled_fault_is_not_serviced_for_the_nap_and_the_page_stays() {
        // The CPU and device 0 take a page in turn, 10 µs apart.
        let mut pol = policy(&[("adaptive_lapse", crate::place::params::Value::Bool(false))]);
        let mut st = State::new(512, &[512]);
        let mut t = 1_000;
        let mut throttled = None;
        for i in 0..12 {
            let plan = if i % 2 == 0 { dev_fault(&mut pol, &mut st, 7, t) } else { cpu_fault(&mut pol, &mut st, 7, t) };
            if i % 2 == 0 && stalled(&plan) {
                throttled = Some(plan);
                break;
            }
            t += 10_000;
        }
        let plan = throttled.expect("the device is throttled once the page thrashes");
        assert!(!moves(&plan, 7), "a throttled fault is not serviced: {plan:?}");
        assert_eq!(st.page(7).loc, Loc::Cpu, "the page stays where it is");
        // The stall lasts to the end of the throttling period: at most one nap (one lapse).
        let Some(Action::Stall { ns }) = plan.actions.iter().find(|a| matches!(a, Action::Stall { .. })).copied()
        else {
            unreachable!()
        };
        assert!(ns > 0 && ns <= 500_000, "{ns}");
    }

    #[test]
    fn the_lapse_moves_by_an_eighth_every_32_votes_and_the_vote_halves() {
        let mut pol = policy(&[]);
        let lapse = |p: &Thrashing| p.report()[2].1;
        // Hints whose previous event is more than half a lapse back vote it up.
        for _ in 0..31 {
            pol.vote(300_000);
        }
        assert_eq!(lapse(&pol), 500_000, "31 votes");
        pol.vote(300_000);
        assert_eq!(lapse(&pol), 562_500, "the 32nd: + lapse / 8");
        // The vote halved (16): 16 more move it again.
        for _ in 0..15 {
            pol.vote(400_000);
        }
        assert_eq!(lapse(&pol), 562_500);
        pol.vote(400_000);
        assert_eq!(lapse(&pol), 562_500 + 562_500 / 8);
        // Close events vote it down, never below 5 us.
        for _ in 0..10_000 {
            pol.vote(0);
        }
        assert_eq!(lapse(&pol), LAPSE_MIN_NS);
        // Without adaptation it stays.
        let mut fixed = policy(&[("adaptive_lapse", crate::place::params::Value::Bool(false))]);
        for _ in 0..100 {
            fixed.vote(0);
        }
        assert_eq!(lapse(&fixed), 500_000);
    }

    #[test]
    fn close_ping_pong_votes_the_lapse_down() {
        // The CPU and device 0 take a page in turn, 10 us apart: the hints vote the lapse down.
        let mut pol = policy(&[("pin_threshold", crate::place::params::Value::Int(100))]);
        let mut st = State::new(512, &[512]);
        let mut t = 1_000;
        for i in 0..2000 {
            if i % 2 == 0 {
                dev_fault(&mut pol, &mut st, 7, t);
                // The engine completes a throttled fault after the stall.
                st.set_loc(7, Loc::Dev(0), t, false);
            } else {
                cpu_fault(&mut pol, &mut st, 7, t);
            }
            t += 10_000;
        }
        assert!(pol.lapse_ns() < 500_000, "{}", pol.lapse_ns());
    }
}
