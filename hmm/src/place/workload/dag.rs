//! Phase graphs: a workload's phases with the dependencies between them.
//!
//! A workload gives steps (a chain of barriers); [`PhaseGraph::from_steps`] is the default
//! translation: every phase of a step depends on every phase of the step before. A generator
//! with real dependencies (a fork-join, a pipeline) builds a [`PhaseGraph`] directly with
//! [`PhaseGraph::add`] and gives it through [`Workload::graph`] ([`Graph`] wraps one). Invariant:
//! phases are in topological order (a dependency is always an earlier phase), which
//! [`PhaseGraph::add`] enforces and [`PhaseGraph::check`] checks (the fields are public).

use super::{Phase, Workload};
use alloc::vec;
use alloc::vec::Vec;

/// Phases and, for each, the earlier phases it depends on.
#[derive(Debug, Clone, Default)]
pub struct PhaseGraph {
    /// The phases, in topological order.
    pub phases: Vec<Phase>,
    /// `deps[i]`: the phases phase `i` waits for (all earlier than `i`).
    pub deps: Vec<Vec<usize>>,
}

/// A dependency on a phase that is not earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotEarlier {
    /// The phase being added.
    pub phase: usize,
    /// The dependency named.
    pub dep: usize,
}

impl core::fmt::Display for NotEarlier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "phase {} cannot depend on phase {}: dependencies must be earlier phases", self.phase, self.dep)
    }
}

impl PhaseGraph {
    /// Adds `phase` after `deps`; returns its index.
    pub fn add(&mut self, phase: Phase, deps: &[usize]) -> Result<usize, NotEarlier> {
        let i = self.phases.len();
        if let Some(&dep) = deps.iter().find(|&&d| d >= i) {
            return Err(NotEarlier { phase: i, dep });
        }
        let mut d = deps.to_vec();
        d.sort_unstable();
        d.dedup();
        self.phases.push(phase);
        self.deps.push(d);
        Ok(i)
    }

    /// Checks the invariant: one dependency list per phase, each naming only earlier phases.
    pub fn check(&self) -> Result<(), NotEarlier> {
        let n = self.phases.len();
        for i in 0..self.deps.len().max(n) {
            let deps = self.deps.get(i).map(Vec::as_slice).unwrap_or(&[]);
            if let Some(&dep) = deps.iter().find(|&&d| d >= i || i >= n) {
                return Err(NotEarlier { phase: i, dep });
            }
        }
        Ok(())
    }

    /// Each phase's level: 0 without dependencies, else one more than its deepest dependency's.
    /// Phases of one level never depend on each other, so the levels in order are barrier steps
    /// that keep every dependency.
    pub fn levels(&self) -> Vec<usize> {
        let mut level = vec![0usize; self.phases.len()];
        for i in 0..self.phases.len() {
            level[i] = self.deps[i].iter().map(|&d| level[d] + 1).max().unwrap_or(0);
        }
        level
    }

    /// Steps as a graph: each phase of step `k + 1` depends on every phase of step `k`.
    pub fn from_steps(steps: Vec<Vec<Phase>>) -> Self {
        let mut g = PhaseGraph::default();
        let mut prev: Vec<usize> = Vec::new();
        for step in steps {
            let mut now = Vec::new();
            for p in step {
                // `prev` holds earlier phases only, so this cannot fail.
                if let Ok(i) = g.add(p, &prev) {
                    now.push(i);
                }
            }
            prev = now;
        }
        g
    }

    /// Every step of `w` as a graph (drains it).
    pub fn of(w: &mut dyn Workload) -> Self {
        let mut steps = Vec::new();
        while let Some(s) = w.next_step() {
            steps.push(s);
        }
        Self::from_steps(steps)
    }

    /// Pages phase `i` touches (sorted, distinct), relative to the workload.
    pub fn pages(&self, i: usize) -> Vec<u32> {
        let mut v: Vec<u32> = self.phases[i].accesses.iter().map(|a| a.page).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Pages phase `dep` writes that phase `i` touches (what must follow `i` to its processor).
    pub fn passed(&self, dep: usize, i: usize) -> u32 {
        let mut w: Vec<u32> = self.phases[dep].accesses.iter().filter(|a| a.write).map(|a| a.page).collect();
        w.sort_unstable();
        w.dedup();
        self.pages(i).iter().filter(|p| w.binary_search(p).is_ok()).count() as u32
    }
}

/// A workload given as a whole phase graph ([`Workload::graph`] hands it over). Asked for steps
/// instead, it gives the graph's levels ([`PhaseGraph::levels`]) as barrier steps, which keep
/// every dependency.
#[derive(Debug)]
pub struct Graph {
    name: &'static str,
    pages: u32,
    allocated: u32,
    extents: Vec<(u32, u32)>,
    graph: Option<PhaseGraph>,
    steps: alloc::collections::VecDeque<Vec<Phase>>,
}

impl Graph {
    /// Workload `name` over `pages` pages running `graph`.
    pub fn new(name: &'static str, pages: u32, graph: PhaseGraph) -> Self {
        Graph { name, pages, allocated: pages, extents: Vec::new(), graph: Some(graph), steps: Default::default() }
    }
    /// Workload `name` over the arrays of `l` running `graph`.
    pub fn laid_out(name: &'static str, l: &super::Layout, graph: PhaseGraph) -> Self {
        Graph { allocated: l.allocated_pages(), extents: l.rests().to_vec(), ..Self::new(name, l.pages(), graph) }
    }
}

impl Workload for Graph {
    fn name(&self) -> &str {
        self.name
    }
    fn pages(&self) -> u32 {
        self.pages
    }
    fn allocated_pages(&self) -> u32 {
        self.allocated
    }
    fn extents(&self) -> Vec<(u32, u32)> {
        self.extents.clone()
    }
    fn next_step(&mut self) -> Option<Vec<Phase>> {
        if let Some(g) = self.graph.take() {
            let level = g.levels();
            let mut steps: Vec<Vec<Phase>> = vec![Vec::new(); level.iter().max().map_or(0, |m| m + 1)];
            for (p, l) in g.phases.into_iter().zip(level) {
                steps[l].push(p);
            }
            self.steps = steps.into();
        }
        self.steps.pop_front()
    }
    fn graph(&mut self) -> Option<PhaseGraph> {
        self.graph.take()
    }
}
