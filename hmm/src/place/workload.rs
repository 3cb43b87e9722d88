//! Workload generators: access streams, in phases, over a footprint of pages.
//!
//! A workload is a sequence of steps; a step is one or more [`Phase`]s that run at the same time
//! (on different processors) and end together (a barrier). [`dag`] turns steps into a phase
//! graph with dependencies (each phase of a step depends on every phase of the step before, the
//! default translation) and lets a workload give its own dependencies instead
//! ([`Workload::graph`]; [`tasks`] has two such kinds). A phase runs on a processor
//! ([`Target`]) and is a list of [`Access`]es to the workload's pages, each one a run of 128-byte
//! lines on one page (consecutive lines on a page are merged, so a sequential sweep is one access
//! per page, a random one an access per line).
//!
//! Every generator is parameterised by its footprint in pages (the engine sizes it from the
//! oversubscription ratio and device memory; a generator never uses more, so a ratio of 1.0
//! fits device memory exactly) and by its own parameters, declared as a table as
//! the policies' are. Generators are deterministic for a seed.

pub mod backprop;
pub mod dag;
pub mod graph;
pub mod micro;
pub mod pingpong;
pub mod simple;
pub mod stencil;
pub mod tasks;
pub mod zipf;

use super::params::{ParamDef, ParamError, Params};
use super::{MAX_DEVICES, PAGE};
use alloc::boxed::Box;
use alloc::format;
use alloc::vec::Vec;

/// Bytes in a line, the unit of access.
pub const LINE: u64 = 128;

/// Where a phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A CPU core.
    Cpu,
    /// A given device's compute engine.
    Dev(u8),
    /// Whichever device the scheduler picks.
    AnyDev,
    /// Whichever processor the scheduler picks: a CPU core or a device.
    Any,
}

/// A run of lines on one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The page, relative to the workload.
    pub page: u32,
    /// Any line is written.
    pub write: bool,
    /// Lines accessed.
    pub lines: u16,
}

/// Accesses on one processor.
#[derive(Debug, Clone)]
pub struct Phase {
    /// What it does, for traces.
    pub name: &'static str,
    /// Where it runs.
    pub on: Target,
    /// In order.
    pub accesses: Vec<Access>,
}

/// A workload.
pub trait Workload {
    /// Its kind.
    fn name(&self) -> &str;
    /// Its footprint, pages.
    fn pages(&self) -> u32;
    /// The next step's phases (run together), or `None` when done.
    fn next_step(&mut self) -> Option<Vec<Phase>>;
    /// The whole workload as a phase graph with its own dependencies, for workloads with real
    /// ones (a fork-join, a pipeline). Asked once, before any step; `Some` replaces the steps
    /// (the engine then never calls [`Workload::next_step`]) and releases each phase when its
    /// dependencies have ended. The default `None` keeps the step chain, which stays lazy: a
    /// large generator gives one step at a time and is never materialised.
    fn graph(&mut self) -> Option<dag::PhaseGraph> {
        None
    }
}

impl core::fmt::Debug for dyn Workload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Workload({}, {} pages)", self.name(), self.pages())
    }
}

/// Builds accesses from byte addresses, merging consecutive lines on one page.
#[derive(Debug, Default)]
pub struct Emit {
    /// Accesses so far.
    pub out: Vec<Access>,
}

impl Emit {
    /// One line at byte `addr`.
    pub fn line(&mut self, addr: u64, write: bool) {
        self.lines(addr, 1, write);
    }
    /// `n` lines on the page of byte `addr`.
    pub fn lines(&mut self, addr: u64, n: u16, write: bool) {
        let page = (addr / PAGE) as u32;
        if let Some(last) = self.out.last_mut()
            && last.page == page
        {
            last.lines = last.lines.saturating_add(n);
            last.write |= write;
            return;
        }
        self.out.push(Access { page, write, lines: n });
    }
    /// Every line of `[addr, addr + len)`.
    pub fn range(&mut self, addr: u64, len: u64, write: bool) {
        let mut a = addr / LINE * LINE;
        let end = addr + len;
        while a < end {
            let page_end = (a / PAGE + 1) * PAGE;
            let stop = page_end.min(end);
            let n = (stop - a).div_ceil(LINE);
            self.lines(a, n as u16, write);
            a = page_end;
        }
    }
    /// The phase made of what was emitted.
    pub fn phase(&mut self, name: &'static str, on: Target) -> Phase {
        Phase { name, on, accesses: core::mem::take(&mut self.out) }
    }
}

/// Lays arrays out one after another, page-aligned.
#[derive(Debug, Default)]
pub struct Layout {
    end: u64,
}

impl Layout {
    /// An array of `bytes`; returns its base.
    pub fn array(&mut self, bytes: u64) -> u64 {
        let base = self.end;
        self.end = (base + bytes).div_ceil(PAGE) * PAGE;
        base
    }
    /// Pages laid out.
    pub fn pages(&self) -> u32 {
        (self.end / PAGE) as u32
    }
}

/// What every generator is given.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Footprint to fill, pages.
    pub pages: u32,
    /// Where device phases run.
    pub device: Target,
    /// Devices in the machine.
    pub devices: u8,
    /// Random seed.
    pub seed: u64,
    /// Repetitions (iterations, time steps, passes; each generator says).
    pub iterations: u32,
}

/// Builds a workload from its checked parameters.
pub type Build = fn(&Params, &Setup) -> Result<Box<dyn Workload>, ParamError>;

/// A workload experiments can name.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadDef {
    /// Its name in experiment files.
    pub name: &'static str,
    /// One line.
    pub help: &'static str,
    /// Its own parameters (besides [`COMMON`]).
    pub params: &'static [ParamDef],
    /// Builds it.
    pub build: Build,
}

/// Parameters every workload takes.
pub const COMMON: &[ParamDef] = &[
    ParamDef::float("oversubscription", 1.0, 0.01, 4.0, "footprint as a multiple of device memory"),
    ParamDef::int("footprint_pages", 0, 0, 1 << 22, "footprint in pages (overrides oversubscription)"),
    ParamDef::text(
        "device",
        "dev0",
        &["any", "anydev", "dev0", "dev1", "dev2", "dev3", "dev4", "dev5", "dev6", "dev7"],
        "where its device phases run: a device, `anydev` (the scheduler picks a device) or `any` (the scheduler picks a CPU core or a device)",
    ),
    ParamDef::int("iterations", 0, 0, 10_000, "iterations (0: the generator's default)"),
    ParamDef::int("seed", 1, 0, i64::MAX, "random seed"),
];

/// Every workload.
pub const ALL: &[WorkloadDef] = &[
    simple::STREAM,
    simple::STRIDED,
    simple::RANDOM,
    stencil::STENCIL,
    stencil::HOTSPOT,
    stencil::FDTD,
    stencil::WAVEFRONT,
    graph::BFS,
    graph::SSSP,
    graph::PAGERANK,
    zipf::ZIPF,
    pingpong::PINGPONG,
    pingpong::BROADCAST,
    stencil::HALO,
    backprop::BACKPROP,
    tasks::FORKJOIN,
    tasks::PIPELINE,
    micro::GRID_STRIDE,
    micro::BLOCK_STRIDE,
    micro::RANDOM_WARP,
    stencil::SRAD,
    stencil::PATHFINDER,
];

/// The workload named `name`.
pub fn find(name: &str) -> Result<&'static WorkloadDef, ParamError> {
    ALL.iter().find(|d| d.name == name).ok_or_else(|| {
        let names: Vec<&str> = ALL.iter().map(|d| d.name).collect();
        ParamError::Other(format!("unknown workload `{name}`; known: {}", names.join(", ")))
    })
}

/// Splits `params` into the common and the workload's own, checks both.
pub fn check(name: &str, params: &Params) -> Result<(Params, Params), ParamError> {
    let d = find(name)?;
    let (mut common, mut own) = (Params::new(), Params::new());
    for (k, v) in params.iter() {
        if COMMON.iter().any(|c| c.name == k) {
            common.set(k, v.clone());
        } else {
            own.set(k, v.clone());
        }
    }
    let common = common.checked(COMMON)?;
    let own = own.checked(d.params).map_err(|e| match e {
        ParamError::Unknown { name, mut allowed } => {
            allowed.extend(COMMON.iter().map(|c| c.name));
            ParamError::Unknown { name, allowed }
        }
        e => e,
    })?;
    Ok((common, own))
}

/// The footprint, in pages, for common parameters and the device memory it is sized against.
pub fn footprint(common: &Params, device_pages: u32) -> u32 {
    match common.int("footprint_pages") {
        0 => ((common.float("oversubscription") * device_pages as f64) as u32).max(1),
        n => n as u32,
    }
}

/// The device memory, in pages, a workload's footprint is sized against: its device's, or the
/// largest device's for phases that may run anywhere. `None`: the device is not among them.
pub fn basis(device: Target, devices: &[u32]) -> Option<u32> {
    match device {
        Target::Dev(d) => devices.get(d as usize).copied(),
        _ => Some(devices.iter().copied().max().unwrap_or(0)),
    }
}

/// The target of device phases named by the common `device` parameter.
pub fn target(common: &Params) -> Target {
    match common.text("device") {
        "any" => Target::Any,
        "anydev" => Target::AnyDev,
        d => Target::Dev(d.strip_prefix("dev").and_then(|n| n.parse().ok()).unwrap_or(0)),
    }
}

/// Builds workload `name` over `setup.pages` pages.
pub fn build(name: &str, own: &Params, setup: &Setup) -> Result<Box<dyn Workload>, ParamError> {
    if let Target::Dev(d) = setup.device
        && d >= setup.devices
    {
        return Err(ParamError::Bad {
            name: "device".into(),
            value: format!("dev{d}"),
            allowed: format!("a device the machine has (it has {})", setup.devices),
        });
    }
    if setup.devices as usize > MAX_DEVICES {
        return Err(ParamError::Other(format!("at most {MAX_DEVICES} devices")));
    }
    let d = find(name)?;
    (d.build)(own, setup)
}

/// A workload from a list of steps computed up front (small generators use it).
#[derive(Debug)]
pub struct Steps {
    name: &'static str,
    pages: u32,
    steps: alloc::collections::VecDeque<Vec<Phase>>,
}

impl Steps {
    /// From steps.
    pub fn new(name: &'static str, pages: u32, steps: Vec<Vec<Phase>>) -> Self {
        Steps { name, pages, steps: steps.into() }
    }
}

impl Workload for Steps {
    fn name(&self) -> &str {
        self.name
    }
    fn pages(&self) -> u32 {
        self.pages
    }
    fn next_step(&mut self) -> Option<Vec<Phase>> {
        self.steps.pop_front()
    }
}

/// A workload generated one step at a time by a closure (large generators use it, so only one
/// step's accesses are in memory at once).
pub struct Lazy<F: FnMut(u32) -> Option<Vec<Phase>>> {
    name: &'static str,
    pages: u32,
    step: u32,
    f: F,
}

impl<F: FnMut(u32) -> Option<Vec<Phase>>> core::fmt::Debug for Lazy<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Lazy({}, step {})", self.name, self.step)
    }
}

impl<F: FnMut(u32) -> Option<Vec<Phase>>> Lazy<F> {
    /// `f(step)` gives step `step`.
    pub fn new(name: &'static str, pages: u32, f: F) -> Self {
        Lazy { name, pages, step: 0, f }
    }
}

impl<F: FnMut(u32) -> Option<Vec<Phase>>> Workload for Lazy<F> {
    fn name(&self) -> &str {
        self.name
    }
    fn pages(&self) -> u32 {
        self.pages
    }
    fn next_step(&mut self) -> Option<Vec<Phase>> {
        let s = (self.f)(self.step);
        self.step += 1;
        s
    }
}

/// `n` or the default `d` when `n` is 0.
pub fn or(n: u32, d: u32) -> u32 {
    if n == 0 { d } else { n }
}

#[cfg(test)]
mod tests;
