//! The engine runs phase graphs: a phase is released when its dependencies have ended (not at
//! a barrier), the scheduler places it, and HEFT ranks it over the rest of its graph. Every
//! check reads the trace's `phase` events (lane, start, length, name).

use super::*;
use crate::place::params::{Params, Value};
use crate::place::policies;
use crate::place::workload::dag::{Graph, PhaseGraph};
use crate::place::workload::{self, Access, Setup};
use crate::place::{Rng, sched};

fn run(ws: Vec<Box<dyn Workload>>, caps: &[u32], sched: &str, cpus: u32) -> Outcome {
    let (bases, pages) = layout(&ws.iter().map(|w| w.pages()).collect::<Vec<_>>());
    let mut m = super::tests::stack(pages, caps);
    let mut e = policies::build("tree", &Params::new(), &{
        let mut p = Params::new();
        p.set("order", Value::Text("root-chunk".into()));
        p
    })
    .map(|pol| {
        Engine::new(
            pages,
            caps,
            CostModel::default(),
            pol,
            &mut m,
            Config { cpus, trace_limit: 1 << 20, ..Config::default() },
        )
    })
    .unwrap();
    e.set_scheduler(sched::build(sched).unwrap());
    for (w, b) in ws.into_iter().zip(bases) {
        e.add(w, b);
    }
    let o = e.run().unwrap();
    assert!(o.workloads.iter().all(|w| w.error.is_none()), "{:?}", o.workloads);
    assert_eq!(o.trace_dropped, 0);
    o
}

/// A traced phase: processor, start, end.
#[derive(Debug, Clone, PartialEq)]
struct Ran {
    lane: String,
    start: f64,
    end: f64,
}

/// The one `phase` event named `name`.
fn ran(o: &Outcome, name: &str) -> Ran {
    let ev: Vec<&Event> = o.trace.iter().filter(|e| e.kind == "phase" && e.what == name).collect();
    assert_eq!(ev.len(), 1, "phase {name} ran {} times: {:?}", ev.len(), ev);
    Ran { lane: ev[0].lane.clone(), start: ev[0].t, end: ev[0].t + ev[0].dur }
}

/// A phase `name` on `on` touching `lines` lines of each of `pages`, `passes` times over.
fn phase(name: &'static str, on: Target, pages: core::ops::Range<u32>, lines: u16, passes: u32) -> Phase {
    let mut accesses = Vec::new();
    for _ in 0..passes {
        accesses.extend(pages.clone().map(|page| Access { page, write: true, lines }));
    }
    Phase { name, on, accesses }
}

/// A→{B, C}; C→E; {B, E}→D on one CPU core and two devices: B (long) on dev0, C then E (short)
/// on dev1. By the definition (a phase starts when its last dependency ends and its processor
/// is free), B and C start when A ends, E when C ends (while B still runs: no barrier), D when
/// the later of B and E ends, and the makespan is D's end.
#[test]
fn a_graph_runs_each_phase_when_its_dependencies_end() {
    let mut g = PhaseGraph::default();
    let a = g.add(phase("A", Target::Cpu, 0..48, 1, 1), &[]).unwrap();
    let b = g.add(phase("B", Target::Dev(0), 8..40, 32, 6), &[a]).unwrap();
    let c = g.add(phase("C", Target::Dev(1), 40..44, 8, 1), &[a]).unwrap();
    let e = g.add(phase("E", Target::Dev(1), 44..48, 8, 1), &[c]).unwrap();
    g.add(phase("D", Target::Cpu, 0..48, 1, 1), &[b, e]).unwrap();
    for s in sched::NAMES {
        let o = run(vec![Box::new(Graph::new("diamond", 48, g.clone()))], &[256, 256], s, 1);
        let [a, b, c, e, d] = ["A", "B", "C", "E", "D"].map(|n| ran(&o, n));
        let lanes = [&a, &b, &c, &e, &d].map(|r| r.lane.as_str());
        assert_eq!(lanes, ["cpu0", "dev0", "dev1", "dev1", "cpu0"], "{s}");
        assert_eq!((a.start, b.start, c.start), (0.0, a.end, a.end), "{s}");
        assert_eq!(e.start, c.end, "{s}: E starts when C ends");
        assert!(e.start < b.end && b.start < e.end, "{s}: E overlaps B: {b:?} {e:?}");
        assert_eq!(d.start, b.end.max(e.end), "{s}: D starts when the later of B and E ends");
        assert_eq!(o.stats.sim_ns, d.end, "{s}: the makespan is D's end");
        assert_eq!(o.workloads[0].end_ns, d.end);
    }
}

/// The diamond A→{B, C}→D with B and C for any device: the cost-aware schedulers and
/// round-robin put them on the two devices, where they run at the same time; static puts both
/// on dev0, one after the other.
#[test]
fn independent_phases_of_a_graph_run_on_two_devices_at_once() {
    let mut g = PhaseGraph::default();
    let a = g.add(phase("A", Target::Cpu, 0..32, 1, 1), &[]).unwrap();
    let b = g.add(phase("B", Target::AnyDev, 0..16, 16, 2), &[a]).unwrap();
    let c = g.add(phase("C", Target::AnyDev, 16..32, 16, 2), &[a]).unwrap();
    g.add(phase("D", Target::Cpu, 0..32, 1, 1), &[b, c]).unwrap();
    for s in sched::NAMES {
        let o = run(vec![Box::new(Graph::new("diamond", 32, g.clone()))], &[256, 256], s, 1);
        let [a, b, c, d] = ["A", "B", "C", "D"].map(|n| ran(&o, n));
        assert_eq!(b.start, a.end, "{s}");
        assert_eq!(d.start, b.end.max(c.end), "{s}");
        if *s == "static" {
            assert_eq!((b.lane.as_str(), c.lane.as_str()), ("dev0", "dev0"));
            assert_eq!(c.start, b.end, "static queues C behind B");
        } else {
            assert_eq!((b.lane.as_str(), c.lane.as_str()), ("dev0", "dev1"), "{s}");
            assert!(b.start < c.end && c.start < b.end, "{s}: B and C overlap: {b:?} {c:?}");
            assert_eq!(c.start, a.end, "{s}");
        }
    }
}

/// HEFT ranks the released phases over the rest of their graph: X and Y are released together
/// on the one device, Y listed first and slightly longer, but X has a long successor Z, so X's
/// upward rank is higher and X runs first. Ranking only the released phases would run Y first.
#[test]
fn heft_ranks_released_phases_over_their_remaining_graph() {
    let mut g = PhaseGraph::default();
    let y = g.add(phase("Y", Target::Dev(0), 0..12, 8, 1), &[]).unwrap();
    let x = g.add(phase("X", Target::Dev(0), 12..20, 8, 1), &[]).unwrap();
    g.add(phase("Z", Target::Cpu, 12..20, 32, 40), &[x]).unwrap();
    let _ = y;
    let o = run(vec![Box::new(Graph::new("ranked", 20, g.clone()))], &[256], "heft", 1);
    let [x, y, z] = ["X", "Y", "Z"].map(|n| ran(&o, n));
    assert_eq!((x.start, y.start), (0.0, x.end), "X first, Y queued behind it: {x:?} {y:?}");
    assert_eq!(z.start, x.end, "Z on the core as soon as X ends, while Y runs");
    // eft places in arrival order: Y first.
    let o = run(vec![Box::new(Graph::new("ranked", 20, g))], &[256], "eft", 1);
    let [x, y] = ["X", "Y"].map(|n| ran(&o, n));
    assert_eq!((y.start, x.start), (0.0, y.end));
}

const NAMES: [&str; 20] = [
    "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13", "p14", "p15", "p16", "p17",
    "p18", "p19",
];

/// A random DAG of 20 phases over `pages` pages: each phase depends on each earlier one with
/// probability 1/5, runs on a random target, and touches a random run of pages.
fn random_dag(seed: u64, pages: u32) -> PhaseGraph {
    let mut rng = Rng::new(seed);
    let mut g = PhaseGraph::default();
    let targets = [Target::Cpu, Target::Dev(0), Target::Dev(1), Target::AnyDev, Target::Any];
    for (i, name) in NAMES.iter().enumerate() {
        let deps: Vec<usize> = (0..i).filter(|_| rng.below(5) == 0).collect();
        let first = rng.below(pages as u64 - 8) as u32;
        let n = 1 + rng.below(8) as u32;
        let mut p = phase(name, targets[rng.below(5) as usize], first..first + n, 1 + rng.below(16) as u16, 1);
        for a in &mut p.accesses {
            a.write = rng.below(2) == 0;
        }
        g.add(p, &deps).unwrap();
    }
    g
}

/// Asserts no two traced phases overlap on one processor.
fn one_at_a_time(o: &Outcome, what: &str) {
    let mut all: Vec<(&str, f64, f64, &str)> = o
        .trace
        .iter()
        .filter(|e| e.kind == "phase")
        .map(|e| (e.lane.as_str(), e.t, e.t + e.dur, e.what.as_str()))
        .collect();
    all.sort_by(|a, b| a.0.cmp(b.0).then(a.1.total_cmp(&b.1)));
    for w in all.windows(2) {
        assert!(w[0].0 != w[1].0 || w[1].1 >= w[0].2, "{what}: {:?} overlaps {:?}", w[0], w[1]);
    }
}

fn stream(seed: u64) -> Box<dyn Workload> {
    let mut p = Params::new();
    p.set("iterations", Value::Int(3));
    let (common, own) = workload::check("stream", &p).unwrap();
    let setup = Setup {
        pages: 128,
        device: Target::Any,
        devices: 2,
        seed,
        iterations: common.int("iterations") as u32,
        alloc: crate::place::workload::Alloc::Pages,
    };
    workload::build("stream", &own, &setup).unwrap()
}

/// A graph workload that gives only its levels as steps (what the engine ran before graphs).
struct Levels(Graph);
impl Workload for Levels {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn pages(&self) -> u32 {
        self.0.pages()
    }
    fn next_step(&mut self) -> Option<Vec<Phase>> {
        self.0.next_step()
    }
}

/// Step workloads only: a processor whose last phase ended later in simulated time than a newly
/// placed phase's release, idle by the time the engine places it, starts it when the last one
/// ended, not at the release (which ran two phases on one processor at once).
#[test]
fn a_processor_runs_one_phase_at_a_time() {
    for seed in 1..=6 {
        for s in sched::NAMES {
            let levels = Levels(Graph::new("dag", 64, random_dag(seed, 64)));
            let o = run(vec![Box::new(levels), stream(seed)], &[96, 96], s, 2);
            one_at_a_time(&o, &alloc::format!("seed {seed} {s}"));
        }
    }
}

/// Over random DAGs and every scheduler, beside a step workload: every phase runs once, on a
/// processor its target allows, one at a time, and never starts before all its dependencies
/// have ended.
#[test]
fn no_phase_starts_before_its_dependencies_end() {
    let mut released_early = 0;
    for seed in 1..=6 {
        let g = random_dag(seed, 64);
        for s in sched::NAMES {
            let o = run(vec![Box::new(Graph::new("dag", 64, g.clone())), stream(seed)], &[96, 96], s, 2);
            let runs: Vec<Ran> = NAMES.iter().map(|n| ran(&o, n)).collect();
            one_at_a_time(&o, &alloc::format!("seed {seed} {s}"));
            for (i, r) in runs.iter().enumerate() {
                let ok = match g.phases[i].on {
                    Target::Cpu => r.lane.starts_with("cpu"),
                    Target::Dev(d) => r.lane == alloc::format!("dev{d}"),
                    Target::AnyDev => r.lane.starts_with("dev"),
                    Target::Any => true,
                };
                assert!(ok, "seed {seed} {s}: {} for {:?} ran on {}", NAMES[i], g.phases[i].on, r.lane);
                for &d in &g.deps[i] {
                    assert!(
                        r.start >= runs[d].end,
                        "seed {seed} {s}: {} started at {} before its dependency {} ended at {}",
                        NAMES[i],
                        r.start,
                        NAMES[d],
                        runs[d].end
                    );
                }
                // Released no later than needed: a phase whose dependencies ended starts then
                // unless its processor is busy.
                let ready = g.deps[i].iter().map(|&d| runs[d].end).fold(0.0, f64::max);
                if r.start == ready {
                    released_early += 1;
                }
            }
        }
    }
    // Most phases start the moment their last dependency ends (a barrier would delay many).
    assert!(released_early > 6 * 5 * 20 / 2, "{released_early}");
}

fn registered(kind: &str, pages: u32, own: &[(&str, Value)]) -> Box<dyn Workload> {
    let mut p = Params::new();
    for (k, v) in own {
        p.set(k, v.clone());
    }
    let (common, own) = workload::check(kind, &p).unwrap();
    let setup = Setup {
        pages,
        device: workload::target(&common),
        devices: 2,
        seed: 1,
        iterations: common.int("iterations") as u32,
        alloc: workload::Alloc::of(&common),
    };
    workload::build(kind, &own, &setup).unwrap()
}

/// `forkjoin` with `device = "any"` (eft keeps the workers on the two cores: a device pays its
/// launch and faults) and `"anydev"` (on both devices, moving their slices): the workers of a
/// round spread over processors and run at the same time, the join waits for all of them, and
/// the next round's split for the join; the model checks the data of every page at the end.
#[test]
fn forkjoin_workers_run_concurrently_between_split_and_join() {
    for device in ["any", "anydev"] {
        forkjoin_on(device);
    }
}

fn forkjoin_on(device: &str) {
    let w = registered("forkjoin", 400, &[("device", Value::Text(device.into())), ("width", Value::Int(4))]);
    let o = run(vec![w], &[512, 512], "eft", 2);
    let phases: Vec<&Event> = o.trace.iter().filter(|e| e.kind == "phase").collect();
    let of = |n: &str| phases.iter().filter(|e| e.what == n).copied().collect::<Vec<_>>();
    let (mut splits, works, mut joins) = (of("split"), of("work"), of("join"));
    assert_eq!((splits.len(), works.len(), joins.len()), (2, 8, 2));
    splits.sort_by(|a, b| a.t.total_cmp(&b.t));
    joins.sort_by(|a, b| a.t.total_cmp(&b.t));
    let lanes: alloc::collections::BTreeSet<&str> = works.iter().map(|e| e.lane.as_str()).collect();
    assert!(lanes.len() >= 2, "workers on {lanes:?}");
    let end = |e: &Event| e.t + e.dur;
    assert_eq!(splits[1].t, end(joins[0]), "round 1's split starts when round 0's join ends");
    for round in 0..2 {
        let (split, join) = (splits[round], joins[round]);
        let ws: Vec<&Event> = works.iter().copied().filter(|w| w.t >= end(split) && end(w) <= join.t).collect();
        assert_eq!(ws.len(), 4, "round {round}: workers between split and join");
        // Released when the split ends: those not queued behind another start then.
        let now = ws.iter().filter(|w| w.t == end(split)).count();
        assert!(now >= 2, "round {round}: {now} workers start when the split ends: {ws:?}");
        let last = ws.iter().map(|w| end(w)).fold(0.0, f64::max);
        assert_eq!(join.t, last, "round {round}: the join starts when the last worker ends");
        let overlap = ws.iter().any(|a| ws.iter().any(|b| a.lane != b.lane && a.t < end(b) && b.t < end(a)));
        assert!(overlap, "round {round}: two workers overlap: {ws:?}");
    }
    if device == "anydev" {
        assert_eq!(lanes.into_iter().collect::<Vec<_>>(), ["dev0", "dev1"]);
        assert!(o.stats.to_dev > 0 && o.stats.to_cpu > 0, "slices go to the devices and back: {:?}", o.stats);
    }
}

/// `pipeline` spread over the two devices (stage s on device s mod 2): stage s of chunk c starts
/// once stage s - 1 of chunk c and stage s of chunk c - 1 have ended, and stages of different
/// chunks run at the same time on the two devices (stage 1 of a chunk beside stage 0 of later
/// ones).
#[test]
fn pipeline_stages_of_different_chunks_overlap() {
    let w = registered(
        "pipeline",
        300,
        &[("stages", Value::Int(3)), ("spread", Value::Bool(true)), ("iterations", Value::Int(6))],
    );
    let o = run(vec![w], &[512, 512], "eft", 1);
    // at[s][c]: stage s of chunk c (a stage's chunks run in order: each waits for the last).
    let at: Vec<Vec<&Event>> = (0..3)
        .map(|s| {
            let name = alloc::format!("stage{s}");
            let mut v: Vec<&Event> = o.trace.iter().filter(|e| e.kind == "phase" && e.what == name).collect();
            v.sort_by(|a, b| a.t.total_cmp(&b.t));
            assert_eq!(v.len(), 6, "{name}");
            assert!(v.iter().all(|e| e.lane == alloc::format!("dev{}", s % 2)), "{name}: {v:?}");
            v
        })
        .collect();
    let end = |e: &Event| e.t + e.dur;
    let mut overlaps = 0;
    for s in 0..3 {
        for c in 0..6 {
            let deps: Vec<&Event> =
                [(s > 0).then(|| at[s - 1][c]), (c > 0).then(|| at[s][c - 1])].into_iter().flatten().collect();
            let ready = deps.iter().map(|d| end(d)).fold(0.0, f64::max);
            assert!(at[s][c].t >= ready, "stage {s} chunk {c} started before its inputs");
            if s == 1 {
                for later in &at[0][c + 1..] {
                    overlaps += usize::from(at[1][c].t < end(later) && later.t < end(at[1][c]));
                }
            }
        }
    }
    assert!(overlaps >= 3, "stage 1 of a chunk overlaps stage 0 of a later chunk {overlaps} times of 15");
}
