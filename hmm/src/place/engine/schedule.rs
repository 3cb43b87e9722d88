//! Phase release and placement: the steps and phase graphs of the workloads become phases
//! released to the [`Scheduler`](super::sched::Scheduler), which places each on a processor;
//! a processor runs one phase at a time and queues the rest; a failed workload's phases are
//! dropped. The policy's periodic ticks run here too.

use super::{Engine, GraphRun, LOOKAHEAD, MechError, Release, Running, clamp_target};
use crate::place::policy::{Ctx, Plan, Units};
use crate::place::{Loc, sched};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

impl Engine<'_> {
    /// Starts the next step of every step workload whose step is over and releases every graph
    /// phase whose dependencies have all ended.
    pub(super) fn start_steps(&mut self) {
        let mut released: Vec<Release> = Vec::new();
        for w in 0..self.wls.len() {
            if self.wls[w].done {
                continue;
            }
            if !self.wls[w].asked {
                self.wls[w].asked = true;
                if let Some(g) = self.wls[w].w.graph() {
                    self.start_graph(w, g);
                    if self.wls[w].done {
                        continue;
                    }
                }
            }
            let mut end = self.wls[w].step_end;
            if let Some(g) = self.wls[w].graph.as_mut() {
                let mut any = false;
                while let Some(i) = g.ready.pop_front() {
                    let Some(phase) = g.phases[i].take() else { continue };
                    let at = g.ready_at[i];
                    if phase.accesses.is_empty() {
                        end = end.max(at);
                        g.end(i, at);
                        continue;
                    }
                    any = true;
                    released.push((w, phase, at, Some(i)));
                }
                let finished = g.left == 0;
                let wl = &mut self.wls[w];
                wl.step_end = end;
                wl.steps += u32::from(any);
                wl.done = finished;
                continue;
            }
            if self.wls[w].pending > 0 {
                continue;
            }
            let Some(phases) = self.wls[w].w.next_step() else {
                self.wls[w].done = true;
                continue;
            };
            self.wls[w].steps += 1;
            let ready = self.wls[w].step_end;
            released.extend(phases.into_iter().filter(|p| !p.accesses.is_empty()).map(|p| (w, p, ready, None)));
        }
        if !released.is_empty() {
            self.place(released);
        }
    }

    /// Takes workload `w`'s phase graph `g` to run; a graph that breaks its invariant stops the
    /// workload.
    pub(super) fn start_graph(&mut self, w: usize, mut g: crate::place::workload::dag::PhaseGraph) {
        let n = g.phases.len();
        if let Err(e) = g.check() {
            self.fail_workload(w, format!("{}: {e}", self.wls[w].w.name()));
            return;
        }
        g.deps.resize(n, Vec::new());
        let devices = self.st.devices();
        let procs = self.sched_procs(0.0);
        let mut succs = vec![Vec::new(); n];
        for (i, d) in g.deps.iter().enumerate() {
            for &dep in d {
                succs[dep].push(i);
            }
        }
        let run = GraphRun {
            on: g.phases.iter().map(|p| clamp_target(p.on, devices)).collect(),
            cost: g.phases.iter().map(|p| sched::compute_costs(p, &procs, &self.cost)).collect(),
            passed: (0..n).map(|i| g.deps[i].iter().map(|&d| g.passed(d, i)).collect()).collect(),
            waiting: g.deps.iter().map(Vec::len).collect(),
            ready: (0..n).filter(|&i| g.deps[i].is_empty()).collect(),
            ready_at: vec![0.0; n],
            left: n,
            first: 0,
            succs,
            deps: g.deps,
            phases: g.phases.into_iter().map(Some).collect(),
        };
        self.wls[w].done = n == 0;
        self.wls[w].graph = Some(run);
    }

    /// The processors as a scheduler sees them for a phase released at `ready`: each free when
    /// what is running and queued on it is expected to end (the phases' remaining accesses at
    /// the running average cost per access).
    pub(super) fn sched_procs(&self, ready: f64) -> Vec<sched::Proc> {
        (0..self.procs.len())
            .map(|i| {
                let p = &self.procs[i];
                let mut t = ready.max(p.free);
                for r in p.running.iter().chain(p.queue.iter()) {
                    if let Some(run) = &self.runs[*r] {
                        let left = (run.phase.accesses.len() - run.pos) as f64 * self.per_access_ns;
                        t = t.max(run.clock) + left;
                    }
                }
                sched::Proc { loc: p.loc, avail: t }
            })
            .collect()
    }

    /// Places the phases just released (the steps that start now, of every step workload whose
    /// previous step is over, and the graph phases whose dependencies have ended: phases with no
    /// dependencies among them, each released at its own time) with the scheduler, and queues
    /// each on its processor in the scheduler's order. The graph the scheduler orders also has
    /// the released graph workloads' phases still to come (see the module docs).
    pub(super) fn place(&mut self, released: Vec<Release>) {
        let mut s = self.sched.take().unwrap_or_else(|| Box::new(sched::Eft));
        let devices = self.st.devices();
        let procs = self.sched_procs(released[0].2);
        let mut nodes: Vec<sched::Node> = released
            .iter()
            .map(|(w, ph, ready, _)| {
                let (base, pages) = (self.wls[*w].base, self.wls[*w].w.pages());
                let touched = touched_pages(&ph.accesses, base, pages);
                sched::Node {
                    name: ph.name,
                    on: clamp_target(ph.on, devices),
                    cost: sched::compute_costs(ph, &procs, &self.cost),
                    pages: touched,
                    footprint: (base, pages),
                    deps: Vec::new(),
                    ready: *ready,
                }
            })
            .collect();
        let n = released.len();
        // The phases still to come of the graph workloads released here, after the released.
        let mut at: BTreeMap<(usize, usize), usize> = BTreeMap::new();
        for (k, (w, _, _, node)) in released.iter().enumerate() {
            if let Some(i) = node {
                at.insert((*w, *i), k);
            }
        }
        let mut graph_wls: Vec<usize> = released.iter().filter(|r| r.3.is_some()).map(|r| r.0).collect();
        graph_wls.dedup();
        for w in graph_wls {
            let (base, pages) = (self.wls[w].base, self.wls[w].w.pages());
            let Some(g) = self.wls[w].graph.as_mut() else { continue };
            while g.first < g.phases.len() && g.phases[g.first].is_none() {
                g.first += 1;
            }
            let ready = released.iter().filter(|r| r.0 == w).map(|r| r.2).fold(0.0, f64::max);
            let future = (g.first..g.phases.len()).filter(|&i| g.phases[i].is_some()).take(LOOKAHEAD);
            for i in future.collect::<Vec<_>>() {
                let deps = g.deps[i]
                    .iter()
                    .zip(&g.passed[i])
                    .filter_map(|(d, &pages)| at.get(&(w, *d)).map(|&on| sched::Dep { on, pages }))
                    .collect();
                at.insert((w, i), nodes.len());
                nodes.push(sched::Node {
                    name: g.phases[i].as_ref().map_or("", |p| p.name),
                    on: g.on[i],
                    cost: g.cost[i].clone(),
                    pages: Vec::new(),
                    footprint: (base, pages),
                    deps,
                    ready,
                });
            }
        }
        let graph = sched::Graph { nodes };
        let total = graph.nodes.len();
        let mut order = {
            let view = sched::StateView { state: &self.st, cost: &self.cost };
            s.order(&sched::Ctx::new(&graph, &procs, &view))
        };
        let mut seen = vec![false; total];
        if order.len() != total || order.iter().any(|&i| i >= total || core::mem::replace(&mut seen[i], true)) {
            order = (0..total).collect();
        }
        let mut released: Vec<Option<Release>> = released.into_iter().map(Some).collect();
        for i in order.into_iter().filter(|&i| i < n) {
            let Some((w, phase, ready, node)) = released[i].take() else { continue };
            let proc = {
                let procs = self.sched_procs(ready);
                let view = sched::StateView { state: &self.st, cost: &self.cost };
                let cx = sched::Ctx::new(&graph, &procs, &view);
                let eligible = cx.eligible(i);
                match eligible.first() {
                    None => self.cfg.cpus.max(1) as usize % self.procs.len().max(1),
                    Some(&first) => {
                        let p = s.pick(&cx, i, &eligible);
                        if eligible.contains(&p) { p } else { first }
                    }
                }
            };
            let r = self.runs.len();
            // An idle processor whose last phase ended after `ready` starts it then.
            let start = ready.max(self.procs[proc].free);
            self.runs.push(Some(Running { wl: w, node, phase, pos: 0, proc, clock: start, started: start }));
            self.wls[w].pending += 1;
            let p = &mut self.procs[proc];
            if p.running.is_none() {
                p.running = Some(r);
            } else {
                p.queue.push_back(r);
            }
        }
        self.sched = Some(s);
    }

    pub(super) fn ticks(&mut self, now: f64) -> Result<(), MechError> {
        let Some(every) = self.policy.tick_ns() else { return Ok(()) };
        while let Some(t) = self.next_tick {
            if t as f64 > now {
                break;
            }
            let mut plan = Plan::default();
            let cx = Ctx::new(&self.st, &self.cost, t).with_units(Units::new(&self.counter_units, 0));
            self.policy.on_tick(&cx, &mut plan);
            if !plan.actions.is_empty() {
                self.apply(&plan, t as f64)?;
            }
            self.next_tick = t.checked_add(every.max(1));
        }
        Ok(())
    }

    /// Ends run `r`'s phase at its clock.
    pub(super) fn finish_phase(&mut self, r: usize) {
        let Some(run) = self.runs[r].take() else { return };
        let p = &mut self.procs[run.proc];
        p.busy += run.clock - run.started;
        p.free = p.free.max(run.clock);
        p.phases += 1;
        p.running = None;
        let n = run.phase.accesses.len().max(1) as f64;
        if p.loc != Loc::Cpu {
            self.per_access_ns = 0.8 * self.per_access_ns + 0.2 * (run.clock - run.started) / n;
        }
        let lane = p.name.clone();
        self.event(run.started, run.clock - run.started, &lane, "phase", 0, run.phase.name);
        let w = &mut self.wls[run.wl];
        w.pending -= 1;
        w.step_end = w.step_end.max(run.clock);
        if let (Some(i), Some(g)) = (run.node, w.graph.as_mut()) {
            g.end(i, run.clock);
        }
        // The next queued phase starts no earlier than now.
        while let Some(next) = self.procs[run.proc].queue.pop_front() {
            if let Some(nr) = self.runs[next].as_mut() {
                nr.clock = nr.clock.max(run.clock);
                nr.started = nr.clock;
                self.procs[run.proc].running = Some(next);
                break;
            }
        }
    }

    /// Stops workload `w` with `why`, dropping its phases.
    pub(super) fn fail_workload(&mut self, w: usize, why: String) {
        for r in 0..self.runs.len() {
            if self.runs[r].as_ref().is_some_and(|x| x.wl == w) {
                let proc = self.runs[r].as_ref().map(|x| x.proc).unwrap_or(0);
                if self.procs[proc].running == Some(r) {
                    self.finish_phase(r);
                } else {
                    self.runs[r] = None;
                    self.procs[proc].queue.retain(|&q| q != r);
                    self.wls[w].pending -= 1;
                }
            }
        }
        self.wls[w].error.get_or_insert(why);
        self.wls[w].done = true;
    }
}

/// The distinct pages `accesses` touch (pages of a workload at `base` with `pages` pages),
/// sorted: a bitmap over the workload's pages, not a sort of the accesses (a phase has up to
/// millions; an access past the workload's pages, which a workload does not make, is kept
/// too).
fn touched_pages(accesses: &[crate::place::workload::Access], base: u32, pages: u32) -> Vec<u32> {
    let mut bits = vec![0u64; (pages as usize).div_ceil(64)];
    let mut outside: Vec<u32> = Vec::new();
    for a in accesses {
        match bits.get_mut(a.page as usize / 64) {
            Some(w) if a.page < pages => *w |= 1 << (a.page % 64),
            _ => outside.push(a.page),
        }
    }
    outside.sort_unstable();
    outside.dedup();
    let mut touched: Vec<u32> = Vec::new();
    for (i, &w) in bits.iter().enumerate() {
        let mut w = w;
        while w != 0 {
            touched.push(i as u32 * 64 + w.trailing_zeros());
            w &= w - 1;
        }
    }
    touched.extend(outside);
    touched.iter_mut().for_each(|p| *p += base);
    touched
}

#[cfg(test)]
mod touched_tests {
    use super::touched_pages;
    use crate::place::workload::Access;

    /// The bitmap gives what sorting and deduplicating the accesses' pages gives.
    #[test]
    fn touched_pages_are_the_sorted_distinct_pages_of_the_accesses() {
        let mut rng = crate::place::Rng::new(7);
        for pages in [1u32, 63, 64, 65, 1000] {
            for n in [0usize, 1, 10, 5000] {
                let accesses: alloc::vec::Vec<Access> = (0..n)
                    .map(|_| {
                        // Now and then a page past the workload's (no workload makes one).
                        let page = if rng.below(50) == 0 {
                            pages + rng.below(5) as u32
                        } else {
                            rng.below(pages as u64) as u32
                        };
                        Access { page, write: rng.below(2) == 0, lines: 1 }
                    })
                    .collect();
                let mut want: alloc::vec::Vec<u32> = accesses.iter().map(|a| 100 + a.page).collect();
                want.sort_unstable();
                want.dedup();
                assert_eq!(touched_pages(&accesses, 100, pages), want, "{pages} pages, {n} accesses");
            }
        }
    }
}
