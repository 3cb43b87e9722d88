//! The engine: runs workloads on processors under a policy, over a [`Mechanism`] that moves and
//! touches the data, and accounts simulated time by the cost model beside measured wall time.
//!
//! **Scheduling.** A workload is either a chain of steps (a step's phases start together and
//! the next step starts when all have finished; the steps are asked for one at a time, so a
//! large generator is never materialised) or, when [`Workload::graph`] gives one, a phase graph
//! with its own dependencies: a graph phase is released when its last dependency ends, at the
//! latest end among them (a phase without dependencies at 0), with no barrier; a phase without
//! accesses ends as soon as it is released. A phase runs on a processor: a CPU core or a
//! device's compute engine. Which one is the chosen [`Scheduler`]'s decision ([`super::sched`];
//! `eft` unless [`Engine::set_scheduler`] says otherwise): the phases released at once (the next
//! step of every step workload whose previous step is over, and every graph phase whose
//! dependencies have all ended, each released at its own time) are placed together: they form
//! one [`sched::Graph`] (released phases have no dependencies left among them), followed by the
//! phases of the same graph workloads not yet released (at most [`LOOKAHEAD`] per workload, in
//! topological order), with their dependencies on the released phases and on each other, their
//! compute costs and the pages each dependency passes, but no pages of their own (where pages
//! will be then is not known) and no processor. The scheduler orders that whole graph once, so
//! HEFT's upward rank of a released phase counts its remaining successors' mean compute and
//! communication; then, in that order, the engine asks it for a processor for each released
//! phase only, seeing every processor free when what is queued on it is expected to end. Step
//! workloads give exactly the graph they always did (no successors are known). A processor runs
//! one phase at a time; others queue in the order placed, and a phase placed on an idle
//! processor starts no earlier than the processor's last phase ended (the engine may place it
//! after advancing that phase past its release).
//! Among running phases the engine always advances the one with the earliest clock by one wave,
//! so concurrent workloads interleave in simulated time and compete for device memory.
//!
//! **Execution-driven.** The mechanism (the HMM stack: the real devices in the kernel, the
//! same core over the host platform with `--host`) decides which accesses fault and what
//! really moved; the engine calls the policy where the stack would and charges simulated time
//! by the cost model for what happened.
//!
//! **A device wave** runs on the device's compute engine ([`crate::compute::run`], the one
//! device fault pipeline): up to `wave` lines of accesses issue as lanes; those the device's
//! MMU translates ([`Mechanism::device_translate`]: its own memory, a read copy, a remote
//! mapping) complete at their line cost; the others stall and fault into the fault buffer.
//! Faults are sorted, deduplicated and serviced in batches of at most `batch` (UVM's 256): the
//! policy plans ([`Policy::on_device_faults`]), the engine moves data through the mechanism,
//! and when a device's allocator refuses a migration (the device is full) evicts in the
//! policy's order and asks again; the stalled lanes replay. A batch costs the far-fault
//! latency per faulted page plus the transfers, which serialize on each direction of each
//! device's link (full duplex: transfers into a device and out of it overlap).
//!
//! **A CPU access** to a page the CPU page tables do not have in system memory is a CPU fault:
//! the policy's plan gives the fault-around window, and the access faults in the real
//! page-fault path, whose device driver migrates the window back ([`Mechanism::cpu_fault`]).
//!
//! Invariants: the engine's [`State`] is kept from what the mechanism did (pages that arrived
//! are read back from the page tables; the mechanism checks each access against where the
//! state says the data is); a write drops every read copy first; a plan that leaves a faulted
//! page unreachable is completed here (migrate to the faulter, else map remotely), so no
//! workload can stall forever.
//!
//! **Files.** This file holds the [`Mechanism`] trait, the engine's state and its main loop
//! ([`Engine::run`]); `schedule.rs` releases and places phases; `wave.rs` runs device and CPU
//! waves (the compute-engine kernel and device, batch service, CPU faults, access counters);
//! `movement.rs` carries out plans (migration, copies, remote maps, eviction, link time);
//! `error.rs` and `outcome.rs` are the mechanism's errors and what a run produced; `host.rs`
//! is the mechanism over the host platform and `pages.rs` the layout both mechanisms share.

mod error;
pub mod host;
mod movement;
mod outcome;
pub mod pages;
mod schedule;
mod wave;

pub use error::{CopyFault, DataFault, DeviceOp, MechError, MirrorFault, NoAddressOf, PageOp, SetupStep, ShortWhy};
pub use outcome::{Event, LinkStats, Outcome, ProcStats, Stats, WorkloadCounts, WorkloadResult};

use super::cost::CostModel;
use super::policy::Policy;
use super::sched::{self, Scheduler};
use super::state::State;
use super::workload::{Phase, Target, Workload};
use super::{BLOCK, Loc};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// What moves and touches the data, and says which accesses fault: the HMM stack over the
/// host platform with `--host` and in the host tests, the real devices in the kernel.
///
/// The mechanism, not the engine, decides whether an access faults: a device access faults
/// when that device's MMU ([`Mechanism::device_translate`]) has no translation with the access
/// needed, a CPU access when the CPU page tables do not have the page in system memory
/// ([`Mechanism::resident`]). The engine's [`State`] is the policies' view of residency, kept
/// from what the mechanism did; where the two disagree the mechanism's answer stands (an
/// access the state thinks reachable still faults).
pub trait Mechanism {
    /// Moves pages `[first, first + pages)`, all now in `from`, to `to`. Returns the wall time
    /// it took, ns. Moving pages to a device also maps them in that device's MMU (as UVM maps
    /// what a fault batch migrated); every other device's mapping of them goes. A device whose
    /// allocator is full takes only what it has room for; the others stay where they are (the
    /// engine reads back which moved with [`Mechanism::resident`] and evicts). Any other short
    /// move (a failed copy, no RAM) is an error.
    fn migrate(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError>;
    /// Device `dev`'s MMU translation of `page` for a read, or for a write when `write`,
    /// without faulting: `Some(Loc::Dev(dev))` its own memory (or, for a read, its read copy),
    /// `Some(at)` memory `at` reached through a remote mapping, `None` a miss (a device fault).
    fn device_translate(&mut self, dev: u8, page: u32, write: bool) -> Result<Option<Loc>, MechError>;
    /// Maps `[first, first + pages)` in device `dev`'s MMU where the pages are now, for
    /// remote access (the device fault path's range fault, as `hmm_range_fault` then a map in
    /// the device's page table). With `read_only` the device's mapping allows reads only,
    /// whatever the CPU allows, so its writes still fault (a mapping made ahead of the
    /// device's accesses; a peer mapping of another device's page is not restricted).
    fn map_remote(&mut self, first: u32, pages: u32, dev: u8, read_only: bool) -> Result<(), MechError>;
    /// Drops device `dev`'s remote mappings of `[first, first + pages)` (its own pages and
    /// read copies stay), so its next accesses there fault and reach the fault path
    /// ([`Mirror::unmap_remote`](crate::devmmu::Mirror::unmap_remote)).
    fn unmap_remote(&mut self, first: u32, pages: u32, dev: u8) -> Result<(), MechError>;
    /// Where the CPU page tables have `page` (a CPU access faults unless it is `Loc::Cpu`).
    fn resident(&mut self, page: u32) -> Result<Loc, MechError>;
    /// Device `d` holds at most `capacities[d]` of the run's pages (and read copies): its
    /// allocator refuses more, as a full device does, and [`Mechanism::migrate`] to it then
    /// moves only the pages it had room for. The engine says so once, before the run.
    fn set_capacities(&mut self, capacities: &[u32]);
    /// A CPU access to `page`, which is not in system memory: it faults in the CPU page-fault
    /// path, whose device driver migrates back that device's pages in `[first, first +
    /// pages)` (the policy's fault-around window, set on the address space before the access;
    /// a device THP comes back whole), and then completes. Returns the wall time, ns. What
    /// moved the engine reads back with [`Mechanism::resident`].
    fn cpu_fault(&mut self, page: u32, write: bool, first: u32, pages: u32) -> Result<u64, MechError>;
    /// Whether it can keep read copies on devices.
    fn can_duplicate(&self) -> bool;
    /// Gives device `dev` a read copy of `[first, first + pages)`, now in `from`.
    fn duplicate(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError>;
    /// Drops device `dev`'s read copy of `page`.
    fn drop_copy(&mut self, page: u32, dev: u8) -> Result<(), MechError>;
    /// One access by `by` to `page`, whose data it reaches in `at` (a write updates the page's
    /// data so [`Mechanism::finish`] can check nothing was lost).
    fn access(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError>;
    /// Checks every page's data after the run.
    fn finish(&mut self) -> Result<(), MechError>;
    /// Wall clock, ns.
    fn now_ns(&self) -> u64;
    /// The CPU accesses that follow run on CPU core `core` (of [`Config::cpus`]).
    fn on_core(&mut self, core: u32) {
        let _ = core;
    }
}

/// How the engine runs.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Lines a device has in flight before it must service its faults (64 warps × one 128-byte
    /// line: a sequential sweep has two pages in flight, a random one up to 64).
    pub wave: u32,
    /// Faults per batch.
    pub batch: u32,
    /// CPU cores for CPU phases.
    pub cpus: u32,
    /// Events kept for the trace (0: no trace).
    pub trace_limit: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { wave: 64, batch: 256, cpus: 1, trace_limit: 0 }
    }
}

struct Proc {
    loc: Loc,
    name: String,
    /// When its last phase ended, simulated ns (nothing it runs starts earlier).
    free: f64,
    busy: f64,
    phases: u32,
    running: Option<usize>,
    queue: VecDeque<usize>,
}

struct Running {
    wl: usize,
    /// The phase's index in its workload's graph (`None`: a step's phase).
    node: Option<usize>,
    phase: Phase,
    pos: usize,
    proc: usize,
    clock: f64,
    started: f64,
}

struct Wl {
    w: Box<dyn Workload>,
    base: u32,
    /// Its process ([`Engine::add_in`]).
    process: u32,
    /// What happened to its pages.
    counts: WorkloadCounts,
    pending: usize,
    step_end: f64,
    done: bool,
    /// Steps started; for a graph workload, the times some of its phases were released.
    steps: u32,
    error: Option<String>,
    /// Whether [`Workload::graph`] was asked.
    asked: bool,
    /// Its phase graph being run, when it gave one.
    graph: Option<GraphRun>,
}

/// A phase released to be placed: its workload, the phase, its release time, and its index in
/// its workload's graph (`None`: a step's phase).
type Release = (usize, Phase, f64, Option<usize>);

/// Graph phases of one workload the scheduler sees beyond those released, at most.
pub const LOOKAHEAD: usize = 256;

/// A phase graph being run: what is released, what has ended, what each phase waits for.
/// Invariants: `waiting[i]` is the number of `i`'s dependencies not ended; a phase is in `ready`
/// exactly when it waits for nothing and is not released; `phases[i]` is `None` once released.
struct GraphRun {
    phases: Vec<Option<Phase>>,
    deps: Vec<Vec<usize>>,
    succs: Vec<Vec<usize>>,
    waiting: Vec<usize>,
    /// The latest end among the ended dependencies (the release time once all have ended).
    ready_at: Vec<f64>,
    ready: VecDeque<usize>,
    /// Phases not ended.
    left: usize,
    /// No phase before it is unreleased (where the look-ahead starts).
    first: usize,
    /// Each phase's scheduler target, compute costs per processor, and pages passed per
    /// dependency (in `deps` order), computed once.
    on: Vec<Target>,
    cost: Vec<Vec<f64>>,
    passed: Vec<Vec<u32>>,
}

impl GraphRun {
    /// Phase `i` ended at `t`: releases the successors that waited only for it.
    fn end(&mut self, i: usize, t: f64) {
        self.left -= 1;
        for k in 0..self.succs[i].len() {
            let j = self.succs[i][k];
            self.ready_at[j] = self.ready_at[j].max(t);
            self.waiting[j] -= 1;
            if self.waiting[j] == 0 {
                self.ready.push_back(j);
            }
        }
    }
}

/// The engine. Build with [`Engine::new`], add workloads, [`Engine::run`].
pub struct Engine<'m> {
    st: State,
    cost: CostModel,
    policy: Box<dyn Policy>,
    mech: &'m mut dyn Mechanism,
    cfg: Config,
    /// When each device link's inbound (`[0]`) and outbound (`[1]`) direction is next free.
    links: Vec<[f64; 2]>,
    link_stats: Vec<LinkStats>,
    /// Each device's access-counter unit (its compute engine's).
    counter_units: Vec<crate::compute::AccessCounters>,
    /// Device memory changes still to come, the next last.
    resizes: Vec<crate::place::spec::Resize>,
    /// Devices whose allocator has refused a migration: oversubscribed, for good (from then
    /// on their free-page buffer is kept, [`Policy::free_buffer`]).
    refused: Vec<bool>,
    /// Per device, when its pages freed by evictions still in flight become usable (their
    /// write-backs' ends, in order): a fetch into the device starts once it has the pages
    /// (UVMSmart starts a fetch only when enough pages are free). Kept for devices with a
    /// free-page buffer; never longer than the device's free pages.
    pending_free: Vec<VecDeque<f64>>,
    stats: Stats,
    trace: Vec<Event>,
    dropped: u64,
    procs: Vec<Proc>,
    runs: Vec<Option<Running>>,
    wls: Vec<Wl>,
    per_access_ns: f64,
    next_tick: Option<u64>,
    sched: Option<Box<dyn Scheduler>>,
    sched_name: &'static str,
}

impl core::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Engine({} pages, {})", self.st.len(), self.policy.name())
    }
}

/// Pages managed for `workloads` of these footprints: each starts on a 2 MiB boundary.
pub fn layout(footprints: &[u32]) -> (Vec<u32>, u32) {
    let mut bases = Vec::new();
    let mut next = 0u32;
    for &p in footprints {
        bases.push(next);
        next += p.div_ceil(BLOCK) * BLOCK;
    }
    (bases, next)
}

/// A phase's target as the scheduler sees it: a device the machine lacks means its last device
/// (as always).
fn clamp_target(on: Target, devices: usize) -> Target {
    match on {
        Target::Dev(d) => Target::Dev(d.min(devices.saturating_sub(1) as u8)),
        t => t,
    }
}

impl<'m> Engine<'m> {
    /// An engine over `pages` managed pages and devices of `capacities` (pages).
    pub fn new(
        pages: u32,
        capacities: &[u32],
        cost: CostModel,
        policy: Box<dyn Policy>,
        mech: &'m mut dyn Mechanism,
        cfg: Config,
    ) -> Self {
        mech.set_capacities(capacities);
        let mut procs: Vec<Proc> = (0..cfg.cpus.max(1))
            .map(|c| Proc {
                loc: Loc::Cpu,
                name: format!("cpu{c}"),
                free: 0.0,
                busy: 0.0,
                phases: 0,
                running: None,
                queue: VecDeque::new(),
            })
            .collect();
        for d in 0..capacities.len() {
            procs.push(Proc {
                loc: Loc::Dev(d as u8),
                name: format!("dev{d}"),
                free: 0.0,
                busy: 0.0,
                phases: 0,
                running: None,
                queue: VecDeque::new(),
            });
        }
        let next_tick = policy.tick_ns().map(|_| 0);
        Engine {
            st: State::new(pages, capacities),
            cost,
            policy,
            mech,
            cfg,
            links: vec![[0.0; 2]; capacities.len()],
            link_stats: (0..capacities.len())
                .map(|d| LinkStats { name: format!("link{d}"), ..LinkStats::default() })
                .collect(),
            counter_units: vec![Default::default(); capacities.len()],
            resizes: Vec::new(),
            refused: vec![false; capacities.len()],
            pending_free: vec![VecDeque::new(); capacities.len()],
            stats: Stats::default(),
            trace: Vec::new(),
            dropped: 0,
            procs,
            runs: Vec::new(),
            wls: Vec::new(),
            per_access_ns: 50.0,
            next_tick,
            sched: Some(Box::new(sched::Eft)),
            sched_name: "eft",
        }
    }

    /// Places phases with `s` instead of the default `eft`.
    pub fn set_scheduler(&mut self, s: Box<dyn Scheduler>) {
        self.sched_name = s.name();
        self.sched = Some(s);
    }

    /// Adds a workload whose pages start at `base` (from [`layout`]), in process 0.
    pub fn add(&mut self, w: Box<dyn Workload>, base: u32) {
        self.add_in(w, base, 0);
    }

    /// Adds a workload whose pages start at `base` (from [`layout`]), running in process
    /// `process` (its results say which; the mechanism maps each process's pages in an
    /// address space of its own).
    pub fn add_in(&mut self, w: Box<dyn Workload>, base: u32, process: u32) {
        for (first, pages) in w.extents() {
            self.st.set_extent((base + first) / BLOCK, pages);
        }
        // The pages after its last one up to the next 2 MiB boundary (where the next workload
        // starts) belong to no workload: nothing migrates there, so a full device holds only
        // workload pages.
        let end = base + w.pages();
        if !end.is_multiple_of(BLOCK) {
            let b = end / BLOCK;
            self.st.set_extent(b, self.st.block_extent(b).min(end % BLOCK));
        }
        self.wls.push(Wl {
            w,
            base,
            process,
            counts: WorkloadCounts::default(),
            pending: 0,
            step_end: 0.0,
            done: false,
            steps: 0,
            error: None,
            asked: false,
            graph: None,
        });
    }

    /// The residency (for checks).
    pub fn state(&self) -> &State {
        &self.st
    }

    /// Device memory changes during the run ([`crate::place::spec::Resize`]), in time order.
    pub fn set_events(&mut self, events: &[crate::place::spec::Resize]) {
        self.resizes = events.iter().rev().copied().collect();
    }

    /// Applies the device memory changes due by `now`: a device that shrinks evicts what no
    /// longer fits (by the policy's order, as under pressure), then holds at most its new
    /// size; one that grows takes more from then on. The mechanism's devices follow.
    fn resizes(&mut self, now: f64) -> Result<(), MechError> {
        while let Some(e) = self.resizes.last().copied().filter(|e| e.at_ns as f64 <= now) {
            self.resizes.pop();
            let (d, t) = (e.device as usize, now);
            if d >= self.st.devices() {
                continue;
            }
            let used = self.st.dev(d).used;
            let mut done = t;
            if used > e.pages {
                done = self.make_room(e.device, used - e.pages, &[], t)?;
            }
            self.st.set_capacity(d, e.pages);
            let caps: Vec<u32> = (0..self.st.devices()).map(|k| self.st.dev(k).capacity).collect();
            self.mech.set_capacities(&caps);
            let lane = format!("dev{d}");
            self.event(t, done - t, &lane, "resize", e.pages, &format!("dev{d} memory to {} pages", e.pages));
        }
        Ok(())
    }

    /// Adds `n` pages from `first` to the counter `which` picks of each workload that owns
    /// some of them.
    fn charge(&mut self, first: u32, n: u32, which: fn(&mut WorkloadCounts) -> &mut u64) {
        let end = first.saturating_add(n);
        for w in &mut self.wls {
            let (lo, hi) = (first.max(w.base), end.min(w.base + w.w.pages()));
            if lo < hi {
                *which(&mut w.counts) += u64::from(hi - lo);
            }
        }
    }

    fn event(&mut self, t: f64, dur: f64, lane: &str, kind: &'static str, pages: u32, what: &str) {
        if (self.trace.len() as u32) < self.cfg.trace_limit {
            self.trace.push(Event { t, dur, lane: lane.into(), kind, pages, what: what.into() });
        } else if self.cfg.trace_limit > 0 {
            self.dropped += 1;
        }
    }

    /// Runs every workload to the end; a mechanism failure stops the run and is returned.
    pub fn run(mut self) -> Result<Outcome, MechError> {
        let wall0 = self.mech.now_ns();
        loop {
            self.start_steps();
            // The active phase with the earliest clock.
            let next =
                self.procs.iter().filter_map(|p| p.running).min_by(|&a, &b| self.clock(a).total_cmp(&self.clock(b)));
            let Some(r) = next else { break };
            let now = self.clock(r);
            self.ticks(now)?;
            self.resizes(now)?;
            self.wave(r)?;
        }
        let end = self.wls.iter().map(|w| w.step_end).fold(0.0, f64::max);
        self.stats.sim_ns = end;
        let util = |busy: f64| if end > 0.0 { busy / end } else { 0.0 };
        self.stats.remigrated = (0..self.st.len()).filter(|&p| self.st.page(p).migrations > 1).count() as u64;
        self.stats.prefetch_unused += (0..self.st.len()).filter(|&p| self.st.page(p).prefetched).count() as u64;
        self.mech.finish()?;
        self.stats.wall_ns = self.mech.now_ns().saturating_sub(wall0);
        Ok(Outcome {
            stats: self.stats,
            scheduler: self.sched_name,
            procs: self
                .procs
                .iter()
                .enumerate()
                .map(|(i, p)| ProcStats {
                    name: p.name.clone(),
                    busy_ns: p.busy,
                    phases: p.phases,
                    line_ns: self.cost.line_ns_on(i, p.loc, p.loc),
                    utilisation: util(p.busy),
                })
                .collect(),
            links: self.link_stats,
            workloads: self
                .wls
                .iter()
                .map(|w| WorkloadResult {
                    name: w.w.name().into(),
                    process: w.process,
                    pages: w.w.pages(),
                    counts: w.counts,
                    steps: w.steps,
                    end_ns: w.step_end,
                    error: w.error.clone(),
                })
                .collect(),
            policy: {
                let mut r = self.policy.report();
                // The counter units' halvings at saturation, where a policy programmed them.
                let halvings = self.counter_units.iter().filter_map(|u| u.halvings()).reduce(|a, b| a + b);
                r.extend(halvings.map(|h| ("counter_halvings", h)));
                r
            },
            trace: self.trace,
            trace_dropped: self.dropped,
        })
    }

    fn clock(&self, r: usize) -> f64 {
        self.runs[r].as_ref().map_or(f64::INFINITY, |r| r.clock)
    }
}

#[cfg(test)]
mod dag_tests;
#[cfg(test)]
mod tests;
