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
//!
//! Arrays are laid out by a [`Layout`]: one after another, page-aligned (the default), or as
//! UVMSmart's `cudaMallocManaged` allocates them ([`Alloc::Uvmsmart`]): rounded up, each from a
//! 2 MiB boundary, so that the footprint oversubscription counts
//! ([`Workload::allocated_pages`]) includes the padding, and the blocks an allocation ends
//! inside ([`Workload::extents`]) end there for every policy. Under it the footprint sizes what
//! the arrays hold; what is laid out (holes included) is larger.

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
use super::{BLOCK, MAX_DEVICES, PAGE};
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
    /// Its footprint, pages: the span its pages are laid out over.
    fn pages(&self) -> u32;
    /// The memory its allocations take, pages, as oversubscription counts it: [`Layout`]'s
    /// [`Layout::allocated_pages`] (under [`Alloc::Pages`] its span).
    fn allocated_pages(&self) -> u32 {
        self.pages()
    }
    /// The blocks its allocations end inside, `(first page, pages)` from its own page 0: the
    /// engine's policies see those blocks end there ([`crate::place::state::State::set_extent`]).
    fn extents(&self) -> Vec<(u32, u32)> {
        Vec::new()
    }
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

/// How a workload's arrays are allocated (the common `allocation` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Alloc {
    /// One after another, each rounded up to a page.
    #[default]
    Pages,
    /// As UVMSmart's `cudaMallocManaged` allocates (`libcuda/cuda_runtime_api.cc`): each
    /// allocation rounded up to whole 2 MiB large pages plus, for the rest, the smallest power of
    /// two from 64 KiB that holds it, with its own prefetch trees from its start (a 2 MiB root
    /// per large page and one of the rest's size). Oversubscription counts the rounded sizes,
    /// so padding no access touches is part of the footprint and the tree prefetcher can bring
    /// it in. Each allocation starts on a 2 MiB boundary here, so the engine's 2 MiB blocks are
    /// its trees; a rest smaller than 2 MiB leaves the rest of its block a hole, which no tree
    /// node reaches more than half of, so nothing prefetches into it.
    Uvmsmart,
}

impl Alloc {
    /// From the common `allocation` parameter.
    pub fn of(common: &Params) -> Alloc {
        match common.text("allocation") {
            "uvmsmart" => Alloc::Uvmsmart,
            _ => Alloc::Pages,
        }
    }
}

/// UVMSmart's managed allocation size for `bytes`: whole 2 MiB large pages, then the rest
/// rounded up to a power of two of at least 64 KiB.
pub fn uvmsmart_size(bytes: u64) -> u64 {
    const LARGE: u64 = 2 << 20;
    let (large, rest) = (bytes / LARGE, bytes % LARGE);
    let rest = if rest == 0 { 0 } else { rest.next_power_of_two().max(64 << 10) };
    large * LARGE + rest
}

/// Lays arrays out one after another: page-aligned, or as [`Alloc::Uvmsmart`] says.
#[derive(Debug, Default, Clone)]
pub struct Layout {
    alloc: Alloc,
    end: u64,
    /// Bytes of the arrays, each rounded up to a page.
    data: u64,
    /// Bytes allocated.
    allocated: u64,
    /// The allocations' rests smaller than 2 MiB: (first page, pages), each at the start of a
    /// block.
    rests: Vec<(u32, u32)>,
}

impl Layout {
    /// An empty layout allocating as `alloc` says.
    pub fn new(alloc: Alloc) -> Self {
        Layout { alloc, ..Layout::default() }
    }
    /// An empty layout allocating as the workload's setup says.
    pub fn of(s: &Setup) -> Self {
        Self::new(s.alloc)
    }
    /// One array of the whole footprint, `s.pages`, at 0 (single-array workloads).
    pub fn one_array(s: &Setup) -> Self {
        let mut l = Self::of(s);
        l.array(s.pages as u64 * PAGE);
        l
    }
    /// An array of `bytes`; returns its base.
    pub fn array(&mut self, bytes: u64) -> u64 {
        let pages = bytes.div_ceil(PAGE) * PAGE;
        self.data += pages;
        let (base, size) = match self.alloc {
            Alloc::Pages => (self.end, pages),
            Alloc::Uvmsmart if bytes == 0 => (self.end, 0),
            Alloc::Uvmsmart => (self.end.next_multiple_of(BLOCK as u64 * PAGE), uvmsmart_size(bytes)),
        };
        self.end = base + size;
        self.allocated += size;
        let rest = size % (BLOCK as u64 * PAGE);
        if self.alloc == Alloc::Uvmsmart && rest != 0 {
            self.rests.push((((self.end - rest) / PAGE) as u32, (rest / PAGE) as u32));
        }
        base
    }
    /// The blocks an allocation ends inside: (first page of the block, pages it holds), for
    /// [`Workload::extents`].
    pub fn rests(&self) -> &[(u32, u32)] {
        &self.rests
    }
    /// Pages laid out: the span, holes included.
    pub fn pages(&self) -> u32 {
        (self.end / PAGE) as u32
    }
    /// Pages the arrays hold, each rounded up to a page: what fills a footprint.
    pub fn data_pages(&self) -> u32 {
        (self.data / PAGE) as u32
    }
    /// Pages allocated: the arrays' under [`Alloc::Pages`], their rounded sizes under
    /// [`Alloc::Uvmsmart`].
    pub fn allocated_pages(&self) -> u32 {
        (self.allocated / PAGE) as u32
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
    /// How its arrays are allocated.
    pub alloc: Alloc,
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
    ParamDef::int(
        "process",
        0,
        0,
        PROCESSES as i64 - 1,
        "the process (address space) it runs in: workloads of one point with different numbers are separate processes sharing the devices, each device mirroring each process",
    ),
    ParamDef::text(
        "allocation",
        "pages",
        &["pages", "uvmsmart"],
        "pages: arrays page-aligned, one after another; uvmsmart: as UVMSmart's cudaMallocManaged rounds them (2 MiB pages, then a power of two from 64 KiB), each from a 2 MiB boundary (an experiment's scale = \"device_memory\" sizes devices from the rounded sizes)",
    ),
];

/// Processes one point may have (a device mirrors this many address spaces at once).
pub const PROCESSES: u32 = 4;

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
    allocated: u32,
    extents: Vec<(u32, u32)>,
    steps: alloc::collections::VecDeque<Vec<Phase>>,
}

impl Steps {
    /// From steps.
    pub fn new(name: &'static str, pages: u32, steps: Vec<Vec<Phase>>) -> Self {
        Steps { name, pages, allocated: pages, extents: Vec::new(), steps: steps.into() }
    }
    /// From steps over the arrays of `l`.
    pub fn laid_out(name: &'static str, l: &Layout, steps: Vec<Vec<Phase>>) -> Self {
        Steps { allocated: l.allocated_pages(), extents: l.rests().to_vec(), ..Self::new(name, l.pages(), steps) }
    }
}

impl Workload for Steps {
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
        self.steps.pop_front()
    }
}

/// A workload generated one step at a time by a closure (large generators use it, so only one
/// step's accesses are in memory at once).
pub struct Lazy<F: FnMut(u32) -> Option<Vec<Phase>>> {
    name: &'static str,
    pages: u32,
    allocated: u32,
    extents: Vec<(u32, u32)>,
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
        Lazy { name, pages, allocated: pages, extents: Vec::new(), step: 0, f }
    }
    /// `f(step)` gives step `step`, over the arrays of `l`.
    pub fn laid_out(name: &'static str, l: &Layout, f: F) -> Self {
        Lazy { allocated: l.allocated_pages(), extents: l.rests().to_vec(), ..Self::new(name, l.pages(), f) }
    }
}

impl<F: FnMut(u32) -> Option<Vec<Phase>>> Workload for Lazy<F> {
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
