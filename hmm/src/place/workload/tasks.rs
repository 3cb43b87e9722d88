//! Task graphs with real dependencies, given whole to the engine as phase graphs
//! ([`super::Workload::graph`]): a fork-join and a software pipeline. Their phases touch every
//! page of their footprint, so data moves between the processors the scheduler picks and the
//! data checks run on every page.
//!
//! - `forkjoin`: per round, a `split` on a CPU core writes the whole array; `width` independent
//!   `work` phases (on the common `device`: `any` lets the scheduler spread them over CPU cores
//!   and devices) each update their own slice; a `join` on a CPU core reads a line of every page
//!   and writes the result page. A round's split depends on the previous round's join; the
//!   workers depend only on their round's split, the join on every worker.
//! - `pipeline`: the array is cut into chunks (`iterations`, default 8) that flow through
//!   `stages` stages; stage `s` of chunk `c` updates chunk `c` and stage `s`'s own state page, and
//!   depends on stage `s - 1` of chunk `c` (its input) and on stage `s` of chunk `c - 1` (the
//!   state it carries), so stages of different chunks overlap on different processors.

use super::dag::{Graph, PhaseGraph};
use super::{Emit, Layout, Setup, Target, WorkloadDef, or};
use crate::place::PAGE;
use crate::place::params::{ParamDef, ParamError, Params};
use alloc::boxed::Box;
use alloc::vec::Vec;

/// Stage names (a phase's name is static).
const STAGES: [&str; 16] = [
    "stage0", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "stage8", "stage9", "stage10",
    "stage11", "stage12", "stage13", "stage14", "stage15",
];

/// `[first, end)` pages of slice `k` of `n` over `pages` pages (every page in exactly one slice;
/// a slice may be empty when there are more slices than pages).
fn slice(pages: u32, n: u32, k: u32) -> (u32, u32) {
    let per = pages / n;
    let extra = pages % n;
    let first = k * per + k.min(extra);
    (first, first + per + u32::from(k < extra))
}

/// Accesses a graph may hold: it is materialised whole (in the guest too), so a fork-join or
/// pipeline larger than this is refused with the parameter to lower.
pub const MAX_ACCESSES: u64 = 1 << 22;

/// Refuses a graph of `accesses` accesses over [`MAX_ACCESSES`], naming `name = value`.
fn fits(accesses: u64, name: &str, value: u64) -> Result<(), ParamError> {
    if accesses <= MAX_ACCESSES {
        return Ok(());
    }
    Err(ParamError::Bad {
        name: name.into(),
        value: alloc::format!("{value}"),
        allowed: alloc::format!(
            "a value giving at most {MAX_ACCESSES} accesses in the whole graph (this gives {accesses}; a graph is held in memory whole)"
        ),
    })
}

/// Adds a phase whose dependencies were made by this builder (always earlier, so `add` cannot
/// refuse it).
fn add(g: &mut PhaseGraph, p: super::Phase, deps: &[usize]) -> Result<usize, ParamError> {
    g.add(p, deps).map_err(|e| ParamError::Other(alloc::format!("{e}")))
}

/// Fork-join rounds.
pub const FORKJOIN: WorkloadDef = WorkloadDef {
    name: "forkjoin",
    help: "fork-join: a CPU split, `width` independent workers (device = \"any\": any processor), a CPU join, per round",
    params: &[
        ParamDef::int("width", 4, 1, 64, "independent work phases per round"),
        ParamDef::int("touch", 8, 1, 32, "lines each worker updates per page"),
    ],
    build: |p: &Params, s: &Setup| {
        let (width, touch) = (p.int("width") as u32, p.int("touch") as u16);
        let mut l = Layout::of(s);
        // The last page holds the join's result.
        let data_pages = s.pages.saturating_sub(1).max(1);
        let data = l.array(data_pages as u64 * PAGE);
        let result = l.array(PAGE);
        let rounds = or(s.iterations, 2);
        fits(rounds as u64 * (3 * data_pages as u64 + 1), "iterations", rounds as u64)?;
        let mut g = PhaseGraph::default();
        let mut e = Emit::default();
        let mut prev_join: Option<usize> = None;
        for _ in 0..rounds {
            for pg in 0..data_pages as u64 {
                e.lines(data + pg * PAGE, 1, true);
            }
            let split = add(&mut g, e.phase("split", Target::Cpu), prev_join.as_slice())?;
            let mut workers = Vec::new();
            for k in 0..width {
                let (first, end) = slice(data_pages, width, k);
                for pg in first as u64..end as u64 {
                    e.lines(data + pg * PAGE, touch, true);
                }
                workers.push(add(&mut g, e.phase("work", s.device), &[split])?);
            }
            for pg in 0..data_pages as u64 {
                e.line(data + pg * PAGE, false);
            }
            e.line(result, true);
            prev_join = Some(add(&mut g, e.phase("join", Target::Cpu), &workers)?);
        }
        Ok(Box::new(Graph::laid_out("forkjoin", &l, g)))
    },
};

/// A pipeline of stages over chunks.
pub const PIPELINE: WorkloadDef = WorkloadDef {
    name: "pipeline",
    help: "software pipeline: `stages` stages over chunks (iterations, default 8); stage s of chunk c after stage s-1 of c and stage s of c-1",
    params: &[
        ParamDef::int("stages", 3, 1, 16, "stages each chunk passes through"),
        ParamDef::int("touch", 8, 1, 32, "lines each stage updates per page of its chunk"),
        ParamDef::bool("spread", false, "stage s runs on device s mod devices (instead of the common `device`)"),
    ],
    build: |p: &Params, s: &Setup| {
        let (stages, touch) = (p.int("stages") as u32, p.int("touch") as u16);
        let chunks = or(s.iterations, 8);
        let mut l = Layout::of(s);
        // One state page per stage, the rest is the data.
        let data_pages = s.pages.saturating_sub(stages).max(1);
        let data = l.array(data_pages as u64 * PAGE);
        let state = l.array(stages as u64 * PAGE);
        fits(stages as u64 * (data_pages as u64 + chunks as u64), "stages", stages as u64)?;
        let on = |st: u32| {
            if p.bool("spread") { Target::Dev((st % s.devices.max(1) as u32) as u8) } else { s.device }
        };
        let mut g = PhaseGraph::default();
        let mut e = Emit::default();
        // `last[s]`: stage s of the previous chunk.
        let mut last: Vec<Option<usize>> = alloc::vec![None; stages as usize];
        for c in 0..chunks {
            let (first, end) = slice(data_pages, chunks, c);
            let mut input: Option<usize> = None;
            for st in 0..stages {
                for pg in first as u64..end as u64 {
                    e.lines(data + pg * PAGE, touch, true);
                }
                e.lines(state + st as u64 * PAGE, 1, true);
                let deps: Vec<usize> = input.into_iter().chain(last[st as usize]).collect();
                let i = add(&mut g, e.phase(STAGES[st as usize], on(st)), &deps)?;
                last[st as usize] = Some(i);
                input = Some(i);
            }
        }
        Ok(Box::new(Graph::laid_out("pipeline", &l, g)))
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    fn build(
        def: &WorkloadDef,
        pages: u32,
        iterations: u32,
        own: &[(&str, crate::place::params::Value)],
    ) -> PhaseGraph {
        let mut p = Params::new();
        for (k, v) in own {
            p.set(k, v.clone());
        }
        let p = p.checked(def.params).unwrap();
        let setup = Setup {
            pages,
            device: Target::Any,
            devices: 2,
            seed: 1,
            iterations,
            alloc: crate::place::workload::Alloc::Pages,
        };
        let mut w = (def.build)(&p, &setup).unwrap();
        assert!(w.pages() <= pages, "{} uses {} of {pages} pages", def.name, w.pages());
        let g = w.graph().expect("a graph");
        g.check().unwrap();
        g
    }

    fn touched(g: &PhaseGraph) -> Vec<u32> {
        let mut v: Vec<u32> = (0..g.phases.len()).flat_map(|i| g.pages(i)).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn forkjoin_forks_width_workers_between_a_split_and_a_join() {
        let g = build(&FORKJOIN, 100, 2, &[("width", crate::place::params::Value::Int(3))]);
        let names: Vec<&str> = g.phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["split", "work", "work", "work", "join", "split", "work", "work", "work", "join"]);
        assert_eq!(g.deps, [&[][..], &[0], &[0], &[0], &[1, 2, 3], &[4], &[5], &[5], &[5], &[6, 7, 8]]);
        // The workers' slices cover the data exactly once; every page is touched.
        let mut w: Vec<u32> = (1..4).flat_map(|i| g.pages(i)).collect();
        w.sort_unstable();
        assert_eq!(w, (0..99).collect::<Vec<_>>());
        assert_eq!(touched(&g), (0..100).collect::<Vec<_>>());
        assert!(g.phases[1].on == Target::Any && g.phases[0].on == Target::Cpu);
    }

    #[test]
    fn pipeline_stages_wait_for_their_input_and_their_previous_chunk() {
        let g = build(&PIPELINE, 64, 4, &[("stages", crate::place::params::Value::Int(3))]);
        assert_eq!(g.phases.len(), 12);
        // Phase 3c + s is stage s of chunk c.
        for c in 0..4usize {
            for (s, stage) in STAGES.iter().enumerate().take(3) {
                let mut want = Vec::new();
                if s > 0 {
                    want.push(3 * c + s - 1);
                }
                if c > 0 {
                    want.push(3 * (c - 1) + s);
                }
                want.sort_unstable();
                assert_eq!(g.deps[3 * c + s], want, "chunk {c} stage {s}");
                assert_eq!(g.phases[3 * c + s].name, *stage);
            }
        }
        assert_eq!(touched(&g), (0..64).collect::<Vec<_>>());
        let spread = build(&PIPELINE, 64, 4, &[("spread", crate::place::params::Value::Bool(true))]);
        let on: Vec<Target> = spread.phases[..3].iter().map(|p| p.on).collect();
        assert_eq!(on, [Target::Dev(0), Target::Dev(1), Target::Dev(0)]);
    }

    #[test]
    fn a_graph_too_large_to_hold_is_refused() {
        let mut p = Params::new();
        p.set("width", crate::place::params::Value::Int(4));
        let p = p.checked(FORKJOIN.params).unwrap();
        let setup = Setup {
            pages: 1 << 20,
            device: Target::Any,
            devices: 2,
            seed: 1,
            iterations: 10,
            alloc: crate::place::workload::Alloc::Pages,
        };
        let e = (FORKJOIN.build)(&p, &setup).unwrap_err();
        assert!(e.to_string().contains("iterations"), "{e}");
        assert!((FORKJOIN.build)(&p, &Setup { iterations: 1, ..setup }).is_ok());
    }

    #[test]
    fn slices_cover_every_page_once() {
        for (pages, n) in [(10, 3), (3, 5), (64, 8), (1, 1)] {
            let mut all = Vec::new();
            for k in 0..n {
                let (a, b) = slice(pages, n, k);
                all.extend(a..b);
            }
            assert_eq!(all, (0..pages).collect::<Vec<_>>(), "{pages} pages in {n}");
        }
    }
}
