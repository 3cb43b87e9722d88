//! The heterogeneous workload scheduler: which processor (a CPU core or a device's compute
//! engine) runs each phase of a phase graph, behind one [`Scheduler`] trait with the baselines a
//! researcher compares against, chosen by name ([`NAMES`], [`build`]).
//!
//! **What a scheduler sees.** A [`Graph`] of phases in topological order (every dependency
//! points to an earlier phase), each with its target ([`Target`]: which processors may run it),
//! its expected compute time on every processor (from the cost model; infinite where it cannot
//! run), the pages it touches and its workload's footprint; the [`Proc`]essors (their memory and
//! when each is free); and a [`CostView`]: where every page is now and what moving pages between
//! two memories costs. It answers the order in which to place the phases (once per graph:
//! [`Scheduler::order`]) and, for each phase in that order, its processor
//! ([`Scheduler::pick`]). Nothing here knows the engine: the engine (the phases released at one
//! moment followed by what remains of their workloads' graphs, picking processors for the
//! released ones only, queued on processors) and [`schedule`] (a whole graph under the execution
//! model below, for tests and planning) both drive the same trait.
//!
//! **Execution model of [`schedule`]** (the one HEFT and dmda estimate with): phase `i` on
//! processor `p` may start when `p` is free and every dependency has finished, plus the
//! transfer of the dependency's output pages when it ran in another memory; it occupies `p` for
//! the transfer of the pages it touches that are not in `p`'s memory ([`Ctx::fetch_ns`]) plus
//! its compute time. CPU cores share system memory, so moving data between two cores is free.
//! A list scheduler appends a phase after the last one placed on the processor; an insertion
//! scheduler (HEFT) may put it in an idle gap between two placed phases if it fits.
//!
//! **The baselines** (`reference/placement.md`, issue 22):
//! - `static`: the phase's own target; a phase for any device or any processor goes to device
//!   0 (core 0 when there is no device), a CPU phase to core 0. No look at load or data.
//! - `round-robin`: the next eligible processor after the one chosen last, cyclically over all
//!   processors (state kept across graphs).
//! - `eft` (the default, the engine's behaviour before the trait, kept bit-identical): earliest
//!   expected finish = when the processor is free + its compute time + the cost of bringing the
//!   workload's footprint pages that are not in its memory, one page at a time. A term equal for
//!   every candidate is left out (it cannot change the choice, and leaving it out keeps the
//!   arithmetic, hence every result, what it was).
//! - `heft` (Topcuoglu, Hariri and Wu, 2002): upward rank `rank(i) = mean compute(i) +
//!   max over successors j (mean communication(i, j) + rank(j))`, means over the processors that
//!   may run a phase and over pairs of distinct processors; phases placed in decreasing rank
//!   (ties: lower index first), each on the processor giving the earliest finish with
//!   insertion-based slots.
//! - `dmda` (StarPU's deque model data aware): in arrival order, each phase on the processor
//!   with the minimum expected completion: when it is free (and the dependencies' data is
//!   there) + the transfer of the pages the phase touches that are not where that processor
//!   reaches them, given where pages are now, grouped by the memory they come from + its
//!   expected compute time.
//!
//! Ties everywhere go to the lower processor index. Invariants: a pick is always an eligible
//! processor when one exists ([`Ctx::eligible`]); [`schedule`] places every phase exactly once,
//! after all its dependencies, and never overlaps two phases on one processor.

#[cfg(test)]
mod tests;

use super::Loc;
use super::workload::Target;
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// The schedulers experiments can name, the default first.
pub const NAMES: &[&str] = &["eft", "static", "round-robin", "heft", "dmda"];

/// The default scheduler.
pub const DEFAULT: &str = "eft";

/// A processor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proc {
    /// What it is and the memory it reaches locally: `Loc::Cpu` for a CPU core, `Loc::Dev(d)`
    /// for device `d`'s compute engine.
    pub loc: Loc,
    /// When it is free for new work (after what is already queued on it), ns.
    pub avail: f64,
}

/// A dependency of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dep {
    /// The phase that must finish first (an earlier index).
    pub on: usize,
    /// Pages of its output this phase reads (moved when the two run in different memories).
    pub pages: u32,
}

/// One phase as a scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// For traces and errors.
    pub name: &'static str,
    /// Which processors may run it.
    pub on: Target,
    /// Expected compute time on each processor, ns (`f64::INFINITY`: it cannot run there).
    pub cost: Vec<f64>,
    /// Pages it touches (sorted, distinct).
    pub pages: Vec<u32>,
    /// Its workload's pages, `[first, first + n)` (what `eft` counts).
    pub footprint: (u32, u32),
    /// Phases that must finish first.
    pub deps: Vec<Dep>,
    /// Earliest start (when the phase is released), ns.
    pub ready: f64,
}

/// A phase graph in topological order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// The phases.
    pub nodes: Vec<Node>,
}

/// Where pages are and what moving them costs.
pub trait CostView {
    /// Time to move `pages` pages from memory `from` to memory `to` in one transfer, ns (0 when
    /// `from == to`).
    fn transfer_ns(&self, from: Loc, to: Loc, pages: u32) -> f64;
    /// Where page `page` is now.
    fn page_loc(&self, page: u32) -> Loc;
}

/// Where and when a phase runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// The processor (index into the processors).
    pub proc: usize,
    /// Start, ns.
    pub start: f64,
    /// Finish, ns.
    pub finish: f64,
}

/// A whole graph's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Per phase.
    pub slots: Vec<Slot>,
    /// When the last phase finishes, ns.
    pub makespan: f64,
    /// Busy time per processor, ns.
    pub busy: Vec<f64>,
}

impl Schedule {
    /// Processor `p`'s busy time over the makespan.
    pub fn utilisation(&self, p: usize) -> f64 {
        if self.makespan > 0.0 { self.busy.get(p).copied().unwrap_or(0.0) / self.makespan } else { 0.0 }
    }
}

/// A graph or a scheduler that cannot give a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedError {
    /// A scheduler name that is not one of [`NAMES`].
    Unknown(alloc::string::String),
    /// Phase `phase` depends on `dep`, which is not an earlier phase.
    BadDep {
        /// The phase.
        phase: usize,
        /// Its dependency.
        dep: usize,
    },
    /// Phase `phase` has `got` costs for `procs` processors.
    CostLen {
        /// The phase.
        phase: usize,
        /// Costs given.
        got: usize,
        /// Processors.
        procs: usize,
    },
    /// No processor may run phase `phase`.
    NoProcessor(usize),
    /// The scheduler's order is not a topological order of every phase once.
    BadOrder,
    /// The scheduler picked processor `proc` for phase `phase`, which may not run it.
    BadPick {
        /// The phase.
        phase: usize,
        /// The processor.
        proc: usize,
    },
}

impl core::fmt::Display for SchedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "unknown scheduler `{n}`; known: {}", NAMES.join(", ")),
            Self::BadDep { phase, dep } => write!(f, "phase {phase} depends on phase {dep}, which is not earlier"),
            Self::CostLen { phase, got, procs } => {
                write!(f, "phase {phase} has {got} compute costs for {procs} processors")
            }
            Self::NoProcessor(i) => write!(f, "no processor may run phase {i}"),
            Self::BadOrder => write!(f, "the scheduler's order is not a topological order of every phase"),
            Self::BadPick { phase, proc } => write!(f, "processor {proc} may not run phase {phase}"),
        }
    }
}

/// Whether a processor of memory `loc` may run a phase for `on`.
pub fn may_run(on: Target, loc: Loc) -> bool {
    match on {
        Target::Cpu => loc == Loc::Cpu,
        Target::Dev(d) => loc == Loc::Dev(d),
        Target::AnyDev => loc != Loc::Cpu,
        Target::Any => true,
    }
}

/// What a scheduler decides from: the graph, the processors, the costs, and what is placed so
/// far.
pub struct Ctx<'a> {
    /// The graph.
    pub graph: &'a Graph,
    /// The processors.
    pub procs: &'a [Proc],
    /// Residency and transfer costs.
    pub view: &'a dyn CostView,
    /// Placed phases' intervals per processor, sorted by start.
    busy: &'a [Vec<(f64, f64)>],
    /// Where each phase placed so far runs.
    placed: &'a [Option<Slot>],
}

impl core::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Ctx({} phases, {} processors)", self.graph.nodes.len(), self.procs.len())
    }
}

impl<'a> Ctx<'a> {
    /// A context with nothing placed (the engine's: what is queued is in [`Proc::avail`]).
    pub fn new(graph: &'a Graph, procs: &'a [Proc], view: &'a dyn CostView) -> Self {
        Ctx { graph, procs, view, busy: &[], placed: &[] }
    }

    /// The processors that may run phase `i`, in index order.
    pub fn eligible(&self, i: usize) -> Vec<usize> {
        let n = &self.graph.nodes[i];
        (0..self.procs.len())
            .filter(|&p| may_run(n.on, self.procs[p].loc) && n.cost.get(p).is_some_and(|c| c.is_finite()))
            .collect()
    }

    /// When phase `i`'s inputs are available in processor `p`'s memory: its release, and each
    /// placed dependency's finish plus the move of its output from another memory.
    pub fn data_ready(&self, i: usize, p: usize) -> f64 {
        let n = &self.graph.nodes[i];
        let to = self.procs[p].loc;
        let mut t = n.ready;
        for d in &n.deps {
            if let Some(Some(s)) = self.placed.get(d.on) {
                let from = self.procs[s.proc].loc;
                let c = if from == to { 0.0 } else { self.view.transfer_ns(from, to, d.pages) };
                t = t.max(s.finish + c);
            }
        }
        t
    }

    /// Time to bring the pages phase `i` touches that are not in processor `p`'s memory, one
    /// transfer per memory they come from (in memory order).
    pub fn fetch_ns(&self, i: usize, p: usize) -> f64 {
        let to = self.procs[p].loc;
        let mut from: alloc::collections::BTreeMap<Loc, u32> = alloc::collections::BTreeMap::new();
        for &pg in &self.graph.nodes[i].pages {
            let at = self.view.page_loc(pg);
            if at != to {
                *from.entry(at).or_insert(0) += 1;
            }
        }
        from.iter().map(|(&f, &n)| self.view.transfer_ns(f, to, n)).sum()
    }

    /// The cost of bringing the pages of phase `i`'s workload footprint that are not in
    /// processor `p`'s memory, one page at a time over `p`'s link (`eft`'s locality term, as
    /// the engine always counted it: the source of each page is not looked at).
    pub fn footprint_ns(&self, i: usize, p: usize) -> f64 {
        let to = self.procs[p].loc;
        let (first, n) = self.graph.nodes[i].footprint;
        let away = (first..first + n).filter(|&pg| self.view.page_loc(pg) != to).count();
        let from = if to == Loc::Cpu { Loc::Dev(0) } else { Loc::Cpu };
        self.view.transfer_ns(from, to, 1) * away as f64
    }

    /// How long phase `i` occupies processor `p`: the fetch of its pages plus its compute.
    pub fn duration(&self, i: usize, p: usize) -> f64 {
        self.fetch_ns(i, p) + self.graph.nodes[i].cost[p]
    }

    /// When phase `i` can start on processor `p` for `dur` ns: after its data is ready and the
    /// processor is free; in the first idle gap that fits when `insertion`, else after the last
    /// phase placed there.
    pub fn start(&self, i: usize, p: usize, dur: f64, insertion: bool) -> f64 {
        let mut t = self.data_ready(i, p).max(self.procs[p].avail);
        let Some(busy) = self.busy.get(p) else { return t };
        if !insertion {
            return busy.last().map_or(t, |&(_, e)| t.max(e));
        }
        for &(s, e) in busy {
            if t + dur <= s {
                return t;
            }
            t = t.max(e);
        }
        t
    }

    /// When phase `i` would finish on `p` under the execution model.
    pub fn finish(&self, i: usize, p: usize, insertion: bool) -> f64 {
        let dur = self.duration(i, p);
        self.start(i, p, dur, insertion) + dur
    }
}

/// The first of `cands` with the lowest `f` (ties: the earlier).
fn argmin(cands: &[usize], f: impl Fn(usize) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for &p in cands {
        let v = f(p);
        if best.is_none_or(|(_, b)| v < b) {
            best = Some((p, v));
        }
    }
    best.map(|b| b.0)
}

/// A scheduler: the order to place a graph's phases in, and a processor for each.
pub trait Scheduler {
    /// Its name (one of [`NAMES`]).
    fn name(&self) -> &'static str;
    /// Whether it fills idle gaps between placed phases (insertion-based) rather than appending.
    fn insertion(&self) -> bool {
        false
    }
    /// The order to place `cx.graph`'s phases in: a topological order, every phase once.
    /// Called once per graph. The default is the graph's own order (arrival order).
    fn order(&mut self, cx: &Ctx<'_>) -> Vec<usize> {
        (0..cx.graph.nodes.len()).collect()
    }
    /// The processor for phase `i` (every phase it depends on is placed). `eligible` is
    /// [`Ctx::eligible`], never empty.
    fn pick(&mut self, cx: &Ctx<'_>, i: usize, eligible: &[usize]) -> usize;
}

impl core::fmt::Debug for dyn Scheduler {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Scheduler({})", self.name())
    }
}

/// The phase's own target, by a fixed rule (see the module docs).
#[derive(Debug, Default)]
pub struct Static;

impl Scheduler for Static {
    fn name(&self) -> &'static str {
        "static"
    }
    fn pick(&mut self, cx: &Ctx<'_>, i: usize, eligible: &[usize]) -> usize {
        let want = match cx.graph.nodes[i].on {
            Target::Cpu => Loc::Cpu,
            Target::Dev(d) => Loc::Dev(d),
            Target::AnyDev | Target::Any => Loc::Dev(0),
        };
        eligible.iter().copied().find(|&p| cx.procs[p].loc == want).unwrap_or(eligible[0])
    }
}

/// The next eligible processor after the last one chosen.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }
    fn pick(&mut self, cx: &Ctx<'_>, _i: usize, eligible: &[usize]) -> usize {
        let n = cx.procs.len().max(1);
        let start = self.next % n;
        let p = (0..n).map(|k| (start + k) % n).find(|p| eligible.contains(p)).unwrap_or(eligible[0]);
        self.next = p + 1;
        p
    }
}

/// Earliest expected finish, counting the workload's footprint not in the processor's memory.
#[derive(Debug, Default)]
pub struct Eft;

impl Scheduler for Eft {
    fn name(&self) -> &'static str {
        "eft"
    }
    fn pick(&mut self, cx: &Ctx<'_>, i: usize, eligible: &[usize]) -> usize {
        let n = &cx.graph.nodes[i];
        let terms: Vec<(f64, f64, f64)> = eligible
            .iter()
            .map(|&p| {
                let c = n.cost[p];
                (cx.start(i, p, c, false), c, cx.footprint_ns(i, p))
            })
            .collect();
        let same = |f: fn(&(f64, f64, f64)) -> f64| terms.iter().all(|t| f(t) == f(&terms[0]));
        let (keep_c, keep_m) = (!same(|t| t.1), !same(|t| t.2));
        let score = |k: usize| {
            let (s, c, m) = terms[k];
            s + if keep_c { c } else { 0.0 } + if keep_m { m } else { 0.0 }
        };
        let idx: Vec<usize> = (0..eligible.len()).collect();
        eligible[argmin(&idx, score).unwrap_or(0)]
    }
}

/// HEFT: decreasing upward rank, earliest finish with insertion.
#[derive(Debug, Default)]
pub struct Heft {
    /// The last graph's upward ranks (for reports and tests).
    pub ranks: Vec<f64>,
}

impl Heft {
    /// Upward ranks of `cx.graph`'s phases.
    pub fn upward_ranks(cx: &Ctx<'_>) -> Vec<f64> {
        let g = cx.graph;
        let np = cx.procs.len();
        let mean_cost = |i: usize| {
            let e = cx.eligible(i);
            if e.is_empty() { 0.0 } else { e.iter().map(|&p| g.nodes[i].cost[p]).sum::<f64>() / e.len() as f64 }
        };
        // Mean over ordered pairs of distinct processors of moving `pages` between them.
        let mean_comm = |pages: u32| {
            if np < 2 {
                return 0.0;
            }
            let mut s = 0.0;
            for a in 0..np {
                for b in 0..np {
                    let (fa, fb) = (cx.procs[a].loc, cx.procs[b].loc);
                    if a != b && fa != fb {
                        s += cx.view.transfer_ns(fa, fb, pages);
                    }
                }
            }
            s / (np * (np - 1)) as f64
        };
        // In reverse topological order, each phase's rank is final when it is reached (its
        // successors are later) and is then passed to its dependencies: O(phases + edges).
        let mut rank = vec![0.0; g.nodes.len()];
        let mut succ: Vec<f64> = vec![0.0; g.nodes.len()];
        for i in (0..g.nodes.len()).rev() {
            rank[i] = mean_cost(i) + succ[i];
            for d in &g.nodes[i].deps {
                if d.on < i {
                    succ[d.on] = succ[d.on].max(mean_comm(d.pages) + rank[i]);
                }
            }
        }
        rank
    }
}

impl Scheduler for Heft {
    fn name(&self) -> &'static str {
        "heft"
    }
    fn insertion(&self) -> bool {
        true
    }
    fn order(&mut self, cx: &Ctx<'_>) -> Vec<usize> {
        self.ranks = Self::upward_ranks(cx);
        let mut o: Vec<usize> = (0..self.ranks.len()).collect();
        o.sort_by(|&a, &b| self.ranks[b].total_cmp(&self.ranks[a]).then(a.cmp(&b)));
        o
    }
    fn pick(&mut self, cx: &Ctx<'_>, i: usize, eligible: &[usize]) -> usize {
        argmin(eligible, |p| cx.finish(i, p, true)).unwrap_or(eligible[0])
    }
}

/// StarPU's dmda: minimum expected completion, counting the transfer of the data the phase
/// touches that is not where the processor reaches it.
#[derive(Debug, Default)]
pub struct Dmda;

impl Scheduler for Dmda {
    fn name(&self) -> &'static str {
        "dmda"
    }
    fn pick(&mut self, cx: &Ctx<'_>, i: usize, eligible: &[usize]) -> usize {
        argmin(eligible, |p| cx.finish(i, p, false)).unwrap_or(eligible[0])
    }
}

/// The scheduler named `name` (one of [`NAMES`]).
pub fn build(name: &str) -> Result<Box<dyn Scheduler>, SchedError> {
    Ok(match name {
        "eft" => Box::new(Eft),
        "static" => Box::new(Static),
        "round-robin" => Box::new(RoundRobin::default()),
        "heft" => Box::new(Heft::default()),
        "dmda" => Box::new(Dmda),
        n => return Err(SchedError::Unknown(n.into())),
    })
}

/// Checks `g` against `procs`: dependencies point backwards, one cost per processor.
pub fn check(g: &Graph, procs: &[Proc]) -> Result<(), SchedError> {
    for (i, n) in g.nodes.iter().enumerate() {
        if n.cost.len() != procs.len() {
            return Err(SchedError::CostLen { phase: i, got: n.cost.len(), procs: procs.len() });
        }
        if let Some(d) = n.deps.iter().find(|d| d.on >= i) {
            return Err(SchedError::BadDep { phase: i, dep: d.on });
        }
    }
    Ok(())
}

/// Schedules the whole graph `g` on `procs` with `s` under the execution model of the module
/// docs.
pub fn schedule(s: &mut dyn Scheduler, g: &Graph, procs: &[Proc], view: &dyn CostView) -> Result<Schedule, SchedError> {
    check(g, procs)?;
    let n = g.nodes.len();
    let mut busy: Vec<Vec<(f64, f64)>> = vec![Vec::new(); procs.len()];
    let mut placed: Vec<Option<Slot>> = vec![None; n];
    let order = s.order(&Ctx { graph: g, procs, view, busy: &busy, placed: &placed });
    let mut seen = vec![false; n];
    if order.len() != n || order.iter().any(|&i| i >= n || core::mem::replace(&mut seen[i], true)) {
        return Err(SchedError::BadOrder);
    }
    let insertion = s.insertion();
    for &i in &order {
        if g.nodes[i].deps.iter().any(|d| placed[d.on].is_none()) {
            return Err(SchedError::BadOrder);
        }
        let cx = Ctx { graph: g, procs, view, busy: &busy, placed: &placed };
        let eligible = cx.eligible(i);
        if eligible.is_empty() {
            return Err(SchedError::NoProcessor(i));
        }
        let p = s.pick(&cx, i, &eligible);
        if !eligible.contains(&p) {
            return Err(SchedError::BadPick { phase: i, proc: p });
        }
        let dur = cx.duration(i, p);
        let start = cx.start(i, p, dur, insertion);
        let slot = Slot { proc: p, start, finish: start + dur };
        let b = &mut busy[p];
        let at = b.iter().position(|&(st, _)| st > start).unwrap_or(b.len());
        b.insert(at, (start, slot.finish));
        placed[i] = Some(slot);
    }
    let slots: Vec<Slot> = placed.into_iter().flatten().collect();
    let makespan = slots.iter().map(|s| s.finish).fold(0.0, f64::max);
    let busy = busy.iter().map(|b| b.iter().map(|(s, e)| e - s).sum()).collect();
    Ok(Schedule { slots, makespan, busy })
}

/// The compute cost of `phase` on each of `procs` by the cost model: a CPU core (numbered
/// among the CPU processors, in order) pays its line cost in system memory per line, a device
/// its launch plus its local line cost per line. Faults and transfers are not compute: the
/// schedulers count the data separately.
pub fn compute_costs(phase: &super::workload::Phase, procs: &[Proc], cost: &super::cost::CostModel) -> Vec<f64> {
    let lines: f64 = phase.accesses.iter().map(|a| a.lines as f64).sum();
    let mut core = 0;
    procs
        .iter()
        .map(|p| match p.loc {
            Loc::Cpu => {
                core += 1;
                lines * cost.line_ns_on(core - 1, Loc::Cpu, Loc::Cpu)
            }
            Loc::Dev(d) => cost.launch_ns + lines * cost.line_ns_on(0, Loc::Dev(d), Loc::Dev(d)),
        })
        .collect()
}

/// A workload's phase graph as a scheduler sees it: pages offset by `base` (the workload's
/// first managed page), costs from the cost model, dependencies passing the pages the earlier
/// phase writes and the later touches, every phase released at `ready`.
pub fn graph_of(
    pg: &super::workload::dag::PhaseGraph,
    base: u32,
    footprint: u32,
    procs: &[Proc],
    cost: &super::cost::CostModel,
    ready: f64,
) -> Graph {
    let nodes = (0..pg.phases.len())
        .map(|i| Node {
            name: pg.phases[i].name,
            on: pg.phases[i].on,
            cost: compute_costs(&pg.phases[i], procs, cost),
            pages: pg.pages(i).into_iter().map(|p| base + p).collect(),
            footprint: (base, footprint),
            deps: pg.deps[i].iter().map(|&d| Dep { on: d, pages: pg.passed(d, i) }).collect(),
            ready,
        })
        .collect();
    Graph { nodes }
}

/// The cost view of residency the engine keeps and the cost model's transfer curve: one
/// transfer of `n` pages costs what the link takes for `n` contiguous pages.
#[derive(Debug, Clone, Copy)]
pub struct StateView<'a> {
    /// Where pages are.
    pub state: &'a super::state::State,
    /// Transfer costs.
    pub cost: &'a super::cost::CostModel,
}

impl CostView for StateView<'_> {
    fn transfer_ns(&self, from: Loc, to: Loc, pages: u32) -> f64 {
        if from == to { 0.0 } else { self.cost.transfer_ns(pages as u64 * super::PAGE) }
    }
    fn page_loc(&self, page: u32) -> Loc {
        self.state.page(page).loc
    }
}
