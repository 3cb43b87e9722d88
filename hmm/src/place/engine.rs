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
//! latency per faulted page plus the transfers, which serialize on each device's link.
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

pub mod host;
pub mod pages;

use super::cost::{CostModel, Source};
use super::policy::{Ctx, Fault, Notification, Plan, Policy, root_chunk_victims};
use super::sched::{self, Scheduler};
use super::state::State;
use super::workload::{Access, Phase, Target, Workload};
use super::{BLOCK, Loc, PAGE};
use crate::compute;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

/// A failure of the mechanism: what failed, on which page and device. The kernel's device
/// errors are not known here (this crate is portable), so a device's own error reaches a
/// [`MechError::Device`] or [`MirrorFault::Fault`] as its rendered text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MechError {
    /// A device operation failed.
    Device {
        /// What was being done.
        op: DeviceOp,
        /// The device's error, as the kernel renders it.
        cause: String,
    },
    /// A migration moved fewer pages than asked (device memory exhausted or a copy failed).
    Short {
        /// First page.
        first: u32,
        /// Pages asked.
        pages: u32,
        /// From.
        from: Loc,
        /// To.
        to: Loc,
        /// Pages moved.
        moved: u64,
    },
    /// The engine and the page tables disagree on where a page is.
    Misplaced {
        /// The page.
        page: u32,
        /// What the engine was doing.
        op: PageOp,
        /// Where the engine has it.
        expected: Loc,
        /// Where the page tables have it.
        found: Loc,
    },
    /// A page's data (or a read copy's) is not what the run wrote.
    Data {
        /// The page.
        page: u32,
        /// Whose data: the page's own (`None`) or device `d`'s read copy (`Some(d)`).
        copy: Option<u8>,
        /// What is wrong.
        fault: DataFault,
    },
    /// A read copy that is not what the engine says: missing, already there, stale, written.
    Copy {
        /// The page.
        page: u32,
        /// The device.
        dev: u8,
        /// What is wrong.
        fault: CopyFault,
    },
    /// A page moved or was written while devices held read copies of it.
    CopiesOutstanding {
        /// The page.
        page: u32,
        /// The writer (`None`: a migration).
        writer: Option<Loc>,
    },
    /// A device MMU's view of a page is wrong.
    Mirror {
        /// The device.
        dev: u8,
        /// The page.
        page: u32,
        /// What is wrong.
        fault: MirrorFault,
    },
    /// A CPU access faulted.
    CpuFault {
        /// The page.
        page: u32,
        /// The CPU that made it.
        cpu: usize,
        /// The faulting address.
        address: u64,
        /// Why it could not be resolved.
        error: crate::mm::space::FaultError,
    },
    /// A CPU worker did not make its access in time.
    WorkerTimeout {
        /// The CPU.
        cpu: usize,
        /// The page.
        page: u32,
        /// The bound, ms.
        ms: u64,
    },
    /// A page's entry is not one the mechanism can place.
    Entry {
        /// The page.
        page: u32,
        /// Its entry (`None`: nothing mapped).
        pte: Option<crate::mm::pte::Pte>,
    },
    /// A device frame (`pfn`) or read-copy page (`copy`) has no physical address.
    NoAddress {
        /// The device.
        dev: u8,
        /// The frame number, or the read copy's page in device memory.
        at: NoAddressOf,
    },
    /// Setting up (or tearing down) the mechanism's memory and helpers failed.
    Setup(SetupStep),
    /// A page outside the run's pages.
    PageOutOfRange(u32),
    /// A device the mechanism does not have.
    NoDevice(u8),
    /// A phase the engine does not have (an engine bug).
    NoPhase(usize),
}

/// What device operation failed (see [`MechError::Device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOp {
    /// Migrating `[first, first + pages)` from `from` to `to`.
    Migrate {
        /// First page.
        first: u32,
        /// Pages.
        pages: u32,
        /// From.
        from: Loc,
        /// To.
        to: Loc,
    },
    /// Making device `dev`'s read copies of `[first, first + pages)`.
    ReadCopies {
        /// First page.
        first: u32,
        /// Pages.
        pages: u32,
        /// The device.
        dev: u8,
    },
}

/// What the engine was doing when it found a page elsewhere (see [`MechError::Misplaced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOp {
    /// Migrating it.
    Migrate,
    /// Copying it to a device.
    Copy,
    /// An access by this processor.
    Access(Loc),
}

/// What is wrong with data (see [`MechError::Data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFault {
    /// It is another page's data.
    OtherPage(u64),
    /// It has a different number of writes than were made.
    Writes {
        /// Writes its data counts.
        found: u64,
        /// Writes made.
        made: u32,
    },
}

/// What is wrong with a read copy (see [`MechError::Copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFault {
    /// The device holds no copy (to drop).
    Missing,
    /// The device already holds the page (a copy, or the page itself).
    AlreadyHeld,
    /// The copy is older than the page.
    Stale,
    /// The device wrote its read copy.
    Written,
}

/// What is wrong with a device MMU's mirror (see [`MechError::Mirror`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorFault {
    /// The device fault failed (the device's error, as the kernel renders it).
    Fault(String),
    /// A device fault left the page unmapped.
    Unmapped,
    /// The mirror maps the page at `at`, the CPU page table at `cpu`: a missed invalidation.
    Stale {
        /// Physical address in the mirror.
        at: u64,
        /// Physical address in the CPU page table.
        cpu: u64,
    },
}

/// Which address is missing (see [`MechError::NoAddress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAddressOf {
    /// A device frame.
    Frame(crate::addr::Pfn),
    /// A read copy's page in device memory.
    Copy(u64),
}

/// What part of a mechanism's setup failed (see [`MechError::Setup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Creating the address space.
    AddressSpace(crate::mm::Error),
    /// Mapping its memory.
    Mmap {
        /// Bytes.
        len: u64,
        /// Why.
        error: crate::mm::Error,
    },
    /// Advising on it.
    Madvise(crate::mm::Error),
    /// Filling page `page` from the CPU.
    Fill {
        /// The page.
        page: u64,
        /// Why.
        error: crate::mm::space::FaultError,
    },
    /// Device `dev`'s MMU mirrors another address space.
    MmuBusy(usize),
    /// Starting a CPU worker (the scheduler's error, rendered).
    Worker {
        /// The CPU.
        cpu: usize,
        /// Why.
        cause: String,
    },
    /// No CPU worker on `cpu` (started but gone).
    NoWorker(usize),
}

impl core::fmt::Display for MechError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Device { op, cause } => write!(f, "{op}: {cause}"),
            Self::Short { first, pages, from, to, moved } => write!(
                f,
                "migrating pages {first}..{} {from}->{to}: {moved} of {pages} moved (device memory exhausted or a copy failed)",
                first + pages
            ),
            Self::Misplaced { page, op, expected, found } => match op {
                PageOp::Migrate => {
                    write!(f, "page {page} is to move from {expected}, but the page tables have it in {found}")
                }
                PageOp::Copy => {
                    write!(f, "read copy of page {page} from {expected}, but the page tables have it in {found}")
                }
                PageOp::Access(by) => write!(
                    f,
                    "{by} reaches page {page} in {expected} per the engine, but the page tables have it in {found}"
                ),
            },
            Self::Data { page, copy, fault } => {
                match copy {
                    Some(d) => write!(f, "dev{d}'s read copy of page {page}")?,
                    None => write!(f, "page {page}")?,
                }
                match fault {
                    DataFault::OtherPage(other) => write!(f, " holds page {other}'s data"),
                    DataFault::Writes { found, made } => write!(f, ": {found} writes found, {made} made"),
                }
            }
            Self::Copy { page, dev, fault } => match fault {
                CopyFault::Missing => write!(f, "dev{dev} holds no read copy of page {page}"),
                CopyFault::AlreadyHeld => write!(f, "dev{dev} already holds page {page}"),
                CopyFault::Stale => write!(f, "dev{dev}'s read copy of page {page} is stale"),
                CopyFault::Written => write!(f, "dev{dev} wrote its read copy of page {page}"),
            },
            Self::CopiesOutstanding { page, writer: None } => {
                write!(f, "page {page} moved with read copies outstanding")
            }
            Self::CopiesOutstanding { page, writer: Some(by) } => {
                write!(f, "{by} wrote page {page} with read copies outstanding")
            }
            Self::Mirror { dev, page, fault } => match fault {
                MirrorFault::Fault(cause) => write!(f, "dev{dev}'s MMU fault on page {page}: {cause}"),
                MirrorFault::Unmapped => write!(f, "dev{dev}'s MMU fault on page {page} left it unmapped"),
                MirrorFault::Stale { at, cpu } => write!(
                    f,
                    "dev{dev}'s MMU maps page {page} at {at:#x}, the CPU page table at {cpu:#x}: the mirror is stale"
                ),
            },
            Self::CpuFault { page, cpu, address, error } => {
                write!(f, "CPU {cpu}'s access to page {page}: {error} at {address:#x}")
            }
            Self::WorkerTimeout { cpu, page, ms } => {
                write!(f, "the CPU worker on CPU {cpu} did not make its access to page {page} within {ms} ms")
            }
            Self::Entry { page, pte: Some(pte) } => write!(f, "page {page}: unexpected entry {pte:?}"),
            Self::Entry { page, pte: None } => write!(f, "page {page} is not mapped"),
            Self::NoAddress { dev, at: NoAddressOf::Frame(pfn) } => write!(f, "dev{dev} page {pfn:?} has no address"),
            Self::NoAddress { dev, at: NoAddressOf::Copy(k) } => write!(f, "dev{dev} copy page {k} has no address"),
            Self::Setup(s) => write!(f, "{s}"),
            Self::PageOutOfRange(p) => write!(f, "page {p} out of range"),
            Self::NoDevice(d) => write!(f, "no device {d}"),
            Self::NoPhase(r) => write!(f, "no such phase ({r})"),
        }
    }
}

impl core::fmt::Display for DeviceOp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Migrate { first, pages, from, to } => {
                write!(f, "migrating pages {first}..{} {from}->{to}", first + pages)
            }
            Self::ReadCopies { first, pages, dev } => {
                write!(f, "dev{dev}'s read copies of pages {first}..{}", first + pages)
            }
        }
    }
}

impl core::fmt::Display for SetupStep {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::AddressSpace(e) => write!(f, "creating the address space: {e}"),
            Self::Mmap { len, error } => write!(f, "mmap of {len} bytes: {error}"),
            Self::Madvise(e) => write!(f, "madvise: {e}"),
            Self::Fill { page, error } => write!(f, "CPU fill of page {page}: {error}"),
            Self::MmuBusy(n) => write!(f, "dev{n}'s MMU mirrors another address space; unbind it first"),
            Self::Worker { cpu, cause } => write!(f, "starting the worker on CPU {cpu}: {cause}"),
            Self::NoWorker(cpu) => write!(f, "no worker on CPU {cpu}"),
        }
    }
}

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
    /// the device's page table).
    fn map_remote(&mut self, first: u32, pages: u32, dev: u8) -> Result<(), MechError>;
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

/// Counts of one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Simulated time until the last phase ended, ns.
    pub sim_ns: f64,
    /// Measured wall time of the run, ns.
    pub wall_ns: u64,
    /// Accesses executed.
    pub accesses: u64,
    /// Device faults (deduplicated per batch).
    pub dev_faults: u64,
    /// Fault batches.
    pub batches: u64,
    /// CPU faults on device pages.
    pub cpu_faults: u64,
    /// Pages moved system → device.
    pub to_dev: u64,
    /// Pages moved device → system (eviction included).
    pub to_cpu: u64,
    /// Pages moved device → device.
    pub dev_to_dev: u64,
    /// Pages moved ahead of demand.
    pub prefetched: u64,
    /// Prefetched pages moved away again before any access.
    pub prefetch_unused: u64,
    /// Pages evicted.
    pub evicted: u64,
    /// Pages mapped remotely.
    pub remote_maps: u64,
    /// Read copies made.
    pub duplicates: u64,
    /// Read copies dropped by writes.
    pub invalidations: u64,
    /// Throttles (stalls asked by the policy).
    pub throttles: u64,
    /// Faulted pages the policy's plan left unreachable, completed by the engine.
    pub fallbacks: u64,
    /// Copies asked of a mechanism that cannot keep them (mapped remotely instead).
    pub dup_unsupported: u64,
    /// Lines accessed in the accessor's own memory.
    pub local_lines: u64,
    /// Lines accessed remotely.
    pub remote_lines: u64,
    /// Access-counter notifications.
    pub notifications: u64,
    /// Pages that migrated more than once.
    pub remigrated: u64,
    /// Link busy time, ns.
    pub transfer_ns: f64,
}

/// One processor's share.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcStats {
    /// "cpu0", "dev1", …
    pub name: String,
    /// Simulated busy time, ns.
    pub busy_ns: f64,
    /// Phases run.
    pub phases: u32,
    /// Its cost per 128-byte line in its own memory (a CPU core: system memory, which the
    /// HMAT may make differ per core).
    pub line_ns: f64,
    /// Busy time over the makespan ([`Stats::sim_ns`]; 0 when nothing ran).
    pub utilisation: f64,
}

/// One link's share: the PCIe-like link between system memory and a device (a device-to-device
/// move uses both devices' links).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStats {
    /// "link0", "link1", … (link `d` is device `d`'s).
    pub name: String,
    /// Bytes moved into the device over it (migrations, prefetches, read copies).
    pub in_bytes: u64,
    /// Bytes moved out of the device over it (migrations back, evictions, device-to-device).
    pub out_bytes: u64,
    /// Time the link was busy, simulated ns.
    pub busy_ns: f64,
}

/// One workload's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadResult {
    /// Its kind.
    pub name: String,
    /// Footprint, pages.
    pub pages: u32,
    /// Steps run (a phase-graph workload: the times some of its phases were released together).
    pub steps: u32,
    /// When its last phase ended, ns.
    pub end_ns: f64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// A traced event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Start, simulated ns.
    pub t: f64,
    /// Length, ns.
    pub dur: f64,
    /// The processor (`cpu0`, `dev1`) or link (`link1`).
    pub lane: String,
    /// `phase`, `faults`, `migrate`, `evict`, `prefetch`, `cpu-fault`, `counter`.
    pub kind: &'static str,
    /// Pages involved.
    pub pages: u32,
    /// Detail (phase name, direction).
    pub what: String,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Totals ([`Stats::sim_ns`] is the makespan: when the last phase ended).
    pub stats: Stats,
    /// The scheduler that placed the phases.
    pub scheduler: &'static str,
    /// Per processor.
    pub procs: Vec<ProcStats>,
    /// Per link.
    pub links: Vec<LinkStats>,
    /// Per workload.
    pub workloads: Vec<WorkloadResult>,
    /// The policy's own counters.
    pub policy: Vec<(&'static str, u64)>,
    /// The trace, if asked for.
    pub trace: Vec<Event>,
    /// Events not traced past the limit.
    pub trace_dropped: u64,
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
    links: Vec<f64>,
    link_stats: Vec<LinkStats>,
    counters: BTreeMap<(u8, u32), (u32, u32)>,
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

/// Sorted pages as runs `(first, count)` of consecutive pages that do not cross a 2 MiB block.
fn runs(pages: &[u32]) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = Vec::new();
    for &p in pages {
        match v.last_mut() {
            Some((a, n)) if *a + *n == p && !p.is_multiple_of(BLOCK) => *n += 1,
            _ => v.push((p, 1)),
        }
    }
    v
}

/// A device wave as a compute kernel: lane `i` makes access `i` (a load, or a store for a
/// write) on its page's first word, at virtual address page × 4096.
struct WaveKernel<'a> {
    accesses: &'a [Access],
    base: u32,
    done: Vec<bool>,
}

impl compute::Kernel for WaveKernel<'_> {
    fn lanes(&self) -> usize {
        self.accesses.len()
    }
    fn op(&mut self, lane: usize) -> Option<compute::Op> {
        let a = self.accesses.get(lane).filter(|_| !self.done[lane])?;
        let va = (self.base + a.page) as u64 * PAGE;
        Some(if a.write { compute::Op::Store(va, 0) } else { compute::Op::Load(va) })
    }
    fn retire(&mut self, lane: usize, _value: u64) {
        self.done[lane] = true;
    }
}

/// The engine as the device a wave runs on: translations from the mechanism's device MMU,
/// accesses through the mechanism (charged by the cost model), batches serviced by the
/// policy.
struct WaveDevice<'e, 'm> {
    e: &'e mut Engine<'m>,
    d: u8,
    accesses: &'e [Access],
    base: u32,
    start: f64,
    /// Line time of the accesses that completed without a fault (they run in parallel).
    busy: f64,
    /// When an access counter's migration on the fault path lets the device go on.
    wait: f64,
    /// After the first batch: the device's clock (replays run one after another).
    clock: f64,
    serviced: bool,
    /// An access of the current pass was remote.
    remote: bool,
}

impl WaveDevice<'_, '_> {
    /// When the accesses so far are done.
    fn end(&self) -> f64 {
        let latency = if self.remote { self.e.cost.remote_latency_ns } else { 0.0 };
        if self.serviced { self.clock + latency } else { (self.start + self.busy + latency).max(self.wait) }
    }

    fn access(&mut self, lane: usize, at: Loc) -> Result<(), MechError> {
        let a = self.accesses[lane];
        let (p, by) = (self.base + a.page, Loc::Dev(self.d));
        self.remote |= at != by;
        let now = if self.serviced { self.clock } else { self.start };
        let t = self.e.touch(0, by, at, p, &a, now)?;
        let counted = self.e.count(self.d, p, at, &a, now + if self.serviced { t } else { 0.0 })?;
        if self.serviced {
            self.clock += t;
            if let Some(w) = counted {
                self.clock = self.clock.max(w);
            }
        } else {
            self.busy += t;
            if let Some(w) = counted {
                self.wait = self.wait.max(w);
            }
        }
        Ok(())
    }
}

impl compute::Device for WaveDevice<'_, '_> {
    type At = Loc;
    type Error = MechError;

    fn translate(&mut self, va: u64, write: bool) -> Result<Option<Loc>, MechError> {
        self.e.mech.device_translate(self.d, (va / PAGE) as u32, write)
    }
    fn is_local(&self, at: Loc) -> bool {
        at == Loc::Dev(self.d)
    }
    fn load(&mut self, lane: usize, at: Loc, _va: u64) -> Result<u64, MechError> {
        self.access(lane, at)?;
        Ok(0)
    }
    fn store(&mut self, lane: usize, at: Loc, _va: u64, _value: u64) -> Result<(), MechError> {
        self.access(lane, at)
    }
    fn now(&self) -> u64 {
        self.e.mech.now_ns()
    }

    fn service(
        &mut self,
        groups: &[compute::FaultGroup],
        _c: &mut compute::Counters,
    ) -> Result<(), (compute::FaultGroup, MechError)> {
        let faults: Vec<Fault> = groups
            .iter()
            .flat_map(|g| (g.start / PAGE..g.end / PAGE).map(move |p| Fault { page: p as u32, write: g.write }))
            .collect();
        if !self.serviced {
            self.clock = self.end();
            self.serviced = true;
        }
        self.remote = false;
        let first = groups[0];
        self.clock = self.e.service(self.d, &faults, self.clock).map_err(|e| (first, e))?;
        // A plan that left a faulted page unreachable is completed here (migrate to the
        // faulter, else map remotely), so no workload can stall.
        for f in &faults {
            let reach = self.e.mech.device_translate(self.d, f.page, f.write).map_err(|e| (first, e))?;
            if reach.is_none() {
                self.e.stats.fallbacks += 1;
                self.e.force(f.page, self.d, self.clock).map_err(|e| (first, e))?;
            }
        }
        Ok(())
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
            links: vec![0.0; capacities.len()],
            link_stats: (0..capacities.len())
                .map(|d| LinkStats { name: format!("link{d}"), ..LinkStats::default() })
                .collect(),
            counters: BTreeMap::new(),
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

    /// Adds a workload whose pages start at `base` (from [`layout`]).
    pub fn add(&mut self, w: Box<dyn Workload>, base: u32) {
        self.wls.push(Wl {
            w,
            base,
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
                    pages: w.w.pages(),
                    steps: w.steps,
                    end_ns: w.step_end,
                    error: w.error.clone(),
                })
                .collect(),
            policy: self.policy.report(),
            trace: self.trace,
            trace_dropped: self.dropped,
        })
    }

    fn clock(&self, r: usize) -> f64 {
        self.runs[r].as_ref().map_or(f64::INFINITY, |r| r.clock)
    }

    /// Starts the next step of every step workload whose step is over and releases every graph
    /// phase whose dependencies have all ended.
    fn start_steps(&mut self) {
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
    fn start_graph(&mut self, w: usize, mut g: super::workload::dag::PhaseGraph) {
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
    fn sched_procs(&self, ready: f64) -> Vec<sched::Proc> {
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
    fn place(&mut self, released: Vec<Release>) {
        let mut s = self.sched.take().unwrap_or_else(|| Box::new(sched::Eft));
        let devices = self.st.devices();
        let procs = self.sched_procs(released[0].2);
        let mut nodes: Vec<sched::Node> = released
            .iter()
            .map(|(w, ph, ready, _)| {
                let (base, pages) = (self.wls[*w].base, self.wls[*w].w.pages());
                let mut touched: Vec<u32> = ph.accesses.iter().map(|a| base + a.page).collect();
                touched.sort_unstable();
                touched.dedup();
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

    fn ticks(&mut self, now: f64) -> Result<(), MechError> {
        let Some(every) = self.policy.tick_ns() else { return Ok(()) };
        while let Some(t) = self.next_tick {
            if t as f64 > now {
                break;
            }
            let mut plan = Plan::default();
            let cx = Ctx { state: &self.st, cost: &self.cost, now: t };
            self.policy.on_tick(&cx, &mut plan);
            if !plan.actions.is_empty() {
                self.apply(&plan, t as f64)?;
            }
            self.next_tick = t.checked_add(every.max(1));
        }
        Ok(())
    }

    /// Ends run `r`'s phase at its clock.
    fn finish_phase(&mut self, r: usize) {
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
    fn fail_workload(&mut self, w: usize, why: String) {
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

    /// Runs one wave of run `r`.
    fn wave(&mut self, r: usize) -> Result<(), MechError> {
        let (w, proc, pos, len) = {
            let run = self.runs[r].as_ref().ok_or(MechError::NoPhase(r))?;
            (run.wl, run.proc, run.pos, run.phase.accesses.len())
        };
        let by = self.procs[proc].loc;
        let end = {
            let acc = &self.runs[r].as_ref().ok_or(MechError::NoPhase(r))?.phase.accesses;
            let (mut end, mut lines) = (pos, 0u32);
            while end < len && (end == pos || lines < self.cfg.wave.max(1)) {
                lines += acc[end].lines as u32;
                end += 1;
            }
            end
        };
        let base = self.wls[w].base;
        let limit = self.wls[w].w.pages();
        let accesses: Vec<Access> =
            self.runs[r].as_ref().map(|x| x.phase.accesses[pos..end].to_vec()).unwrap_or_default();
        if let Some(bad) = accesses.iter().find(|a| a.page >= limit) {
            let why = format!(
                "{} accessed page {} outside its {} pages (address {:#x} of its region)",
                self.wls[w].w.name(),
                bad.page,
                limit,
                bad.page as u64 * PAGE
            );
            self.fail_workload(w, why);
            return Ok(());
        }
        let mut clock = self.clock(r);
        match by {
            Loc::Dev(d) => {
                if pos == 0 {
                    clock += self.cost.launch_ns;
                }
                clock = self.device_wave(d, base, &accesses, clock)?;
            }
            Loc::Cpu => {
                self.mech.on_core(proc as u32);
                clock = self.cpu_wave(proc, base, &accesses, clock)?
            }
        }
        let run = self.runs[r].as_mut().ok_or(MechError::NoPhase(r))?;
        run.pos = end;
        run.clock = clock;
        if end == len {
            self.finish_phase(r);
        }
        Ok(())
    }

    /// Drops every read copy of page `p` (before it is written or moved).
    fn drop_all_copies(&mut self, p: u32) -> Result<(), MechError> {
        let copies = self.st.page(p).copies;
        if copies == 0 {
            return Ok(());
        }
        for d in 0..self.st.devices() as u8 {
            if copies & (1 << d) != 0 {
                self.mech.drop_copy(p, d)?;
            }
        }
        self.stats.invalidations += self.st.drop_copies(p) as u64;
        Ok(())
    }

    /// One access that can proceed: invalidates copies on a write, moves the data, counts.
    /// (`core` is the CPU core making a CPU access; devices pass 0.)
    fn touch(&mut self, core: usize, by: Loc, at: Loc, p: u32, a: &Access, now: f64) -> Result<f64, MechError> {
        if a.write {
            self.drop_all_copies(p)?;
        }
        self.mech.access(by, at, p, a.write)?;
        self.account(by, at, p, a, now);
        Ok(a.lines as f64 * self.cost.line_ns_on(core, by, at))
    }

    /// Counts an access that was made.
    fn account(&mut self, by: Loc, at: Loc, p: u32, a: &Access, now: f64) {
        self.st.touch(p, now as u64, a.lines as u32);
        self.stats.accesses += 1;
        if by == at {
            self.stats.local_lines += a.lines as u64;
        } else {
            self.stats.remote_lines += a.lines as u64;
        }
    }

    /// One wave of a device phase, run on the device's compute engine ([`compute::run`], the
    /// one device fault pipeline): each access is a lane; one the device's MMU cannot
    /// translate stalls and its fault goes into the fault buffer; the batch (sorted,
    /// deduplicated, at most `batch`) is serviced through the policy ([`Engine::service`]) and
    /// the stalled lanes replay. The accesses that complete at once cost their lines in
    /// parallel; replays one after another.
    fn device_wave(&mut self, d: u8, base: u32, accesses: &[Access], start: f64) -> Result<f64, MechError> {
        let mut kernel = WaveKernel { accesses, base, done: vec![false; accesses.len()] };
        let batch = self.cfg.batch.max(1) as usize;
        let mut dev = WaveDevice {
            e: self,
            d,
            accesses,
            base,
            start,
            busy: 0.0,
            wait: start,
            clock: start,
            serviced: false,
            remote: false,
        };
        let mut c = compute::Counters::default();
        match compute::run(&mut kernel, &mut dev, batch, &mut c) {
            Ok(()) => {}
            Err(
                compute::RunError::Device(e) | compute::RunError::Fatal(compute::FatalFault { error: Some(e), .. }),
            ) => {
                return Err(e);
            }
            Err(compute::RunError::Fatal(f)) => {
                let page = (f.va / PAGE) as u32;
                return Err(MechError::Mirror { dev: d, page, fault: MirrorFault::Unmapped });
            }
        }
        Ok(dev.end())
    }

    /// Makes page `p` reachable by device `d` when the policy did not: migrate it there, or map
    /// it remotely if no room can be made.
    fn force(&mut self, p: u32, d: u8, now: f64) -> Result<Loc, MechError> {
        let mut plan = Plan::default();
        plan.migrate(p, 1, Loc::Dev(d));
        self.apply(&plan, now)?;
        if self.st.page(p).loc != Loc::Dev(d) {
            self.map_remote(p, 1, d)?;
        }
        Ok(self.st.page(p).loc)
    }

    /// Services one batch of device `d`'s faults; returns when the device can replay.
    fn service(&mut self, d: u8, batch: &[Fault], clock: f64) -> Result<f64, MechError> {
        self.stats.batches += 1;
        self.stats.dev_faults += batch.len() as u64;
        let wall0 = self.mech.now_ns();
        let mut plan = Plan::default();
        let cx = Ctx { state: &self.st, cost: &self.cost, now: clock as u64 };
        self.policy.on_device_faults(&cx, d, batch, &mut plan);
        let service = self.cost.batch_ns + self.cost.far_fault_ns * batch.len() as f64;
        let (done, stall, moved_wall) = self.apply_timed(&plan, clock + service)?;
        let wall = self.mech.now_ns().saturating_sub(wall0);
        let end = match self.cost.source {
            Source::Model => done.max(clock + service),
            // Measured: the batch took what it took on the real devices.
            Source::Measured => clock + (wall.max(moved_wall)) as f64,
        } + stall;
        let lane = format!("dev{d}");
        self.event(clock, end - clock, &lane, "faults", batch.len() as u32, "batch");
        Ok(end)
    }

    /// One wave of a CPU phase on CPU core `proc` (CPU cores come first among the processors).
    ///
    /// An access to a page the CPU page tables do not have in system memory is a CPU fault:
    /// the policy plans ([`Policy::on_cpu_fault`]); the migration back to system memory that
    /// covers the page is its fault-around window, which the real fault path carries out (the
    /// access faults and the device's driver migrates its pages in the window, see
    /// [`Mechanism::cpu_fault`]); the rest of the plan (prefetches, other moves) is applied
    /// after it. What the fault moved is read back from the page tables and charged on the
    /// links.
    fn cpu_wave(&mut self, proc: usize, base: u32, accesses: &[Access], start: f64) -> Result<f64, MechError> {
        let mut clock = start;
        for a in accesses {
            let p = base + a.page;
            if self.mech.resident(p)? != Loc::Cpu {
                clock = self.cpu_fault(proc, p, a, clock)?;
            } else {
                clock += self.touch(proc, Loc::Cpu, Loc::Cpu, p, a, clock)?;
            }
        }
        Ok(clock)
    }

    /// A CPU fault on page `p` by core `proc` at `clock`, and its access; returns when the
    /// access completed.
    fn cpu_fault(&mut self, proc: usize, p: u32, a: &Access, clock: f64) -> Result<f64, MechError> {
        use super::policy::Action;
        self.stats.cpu_faults += 1;
        let wall0 = self.mech.now_ns();
        let mut plan = Plan::default();
        let cx = Ctx { state: &self.st, cost: &self.cost, now: clock as u64 };
        self.policy.on_cpu_fault(&cx, p, a.write, &mut plan);
        // The fault-around window: the first demand migration to system memory that covers
        // the page (else the page alone, the engine's completion of the plan).
        let window = plan.actions.iter().position(|x| {
            matches!(*x, Action::Migrate { first, pages, to: Loc::Cpu, prefetch: false }
                if first <= p && p < first.saturating_add(pages))
        });
        let (first, pages) = match window.map(|i| plan.actions.remove(i)) {
            Some(Action::Migrate { first, pages, .. }) => {
                let end = first.saturating_add(pages).min(self.st.len());
                (first, end - first)
            }
            _ => {
                self.stats.fallbacks += 1;
                (p, 1)
            }
        };
        // The device whose pages the fault brings back, and what it holds in the window.
        let from = self.st.page(p).loc;
        let held: Vec<u32> = (first..first + pages).filter(|&q| self.st.page(q).loc == from).collect();
        for &q in &held {
            self.drop_all_copies(q)?;
        }
        if a.write {
            self.drop_all_copies(p)?;
        }
        let fault_wall = self.mech.cpu_fault(p, a.write, first, pages)?;
        if self.mech.resident(p)? != Loc::Cpu {
            return Err(MechError::Misplaced {
                page: p,
                op: PageOp::Access(Loc::Cpu),
                expected: Loc::Cpu,
                found: from,
            });
        }
        // What moved: the held pages now in system memory, in runs for the link.
        let t = clock + self.cost.cpu_fault_ns;
        let mut done = t;
        let mut moved: Vec<u32> = Vec::new();
        for &q in &held {
            if self.mech.resident(q)? == Loc::Cpu {
                moved.push(q);
            }
        }
        let mut i = 0;
        while i < moved.len() {
            let mut j = i + 1;
            while j < moved.len() && moved[j] == moved[j - 1] + 1 {
                j += 1;
            }
            let n = (j - i) as u32;
            for &q in &moved[i..j] {
                if self.st.page(q).prefetched {
                    self.stats.prefetch_unused += 1;
                }
                self.st.set_loc(q, Loc::Cpu, t as u64, false);
            }
            self.stats.to_cpu += n as u64;
            // The fault's measured time goes with its first run.
            let e = self.transfer(from, Loc::Cpu, n, if i == 0 { fault_wall } else { 0 }, done);
            let lane = format!("link{}", from.dev().unwrap_or(0));
            self.event(done, e - done, &lane, "migrate", n, &format!("{from}->cpu (fault)"));
            done = done.max(e);
            i = j;
        }
        // The access itself was made in the fault path.
        self.account(Loc::Cpu, Loc::Cpu, p, a, clock);
        let (rest_done, stall, _) = self.apply_timed(&plan, done)?;
        let end = match self.cost.source {
            Source::Model => done.max(rest_done).max(clock + self.cost.cpu_fault_ns),
            Source::Measured => clock + self.mech.now_ns().saturating_sub(wall0) as f64,
        } + stall;
        let lane = self.procs[proc].name.clone();
        self.event(clock, end - clock, &lane, "cpu-fault", moved.len() as u32, "");
        Ok(end + a.lines as f64 * self.cost.line_ns_on(proc, Loc::Cpu, Loc::Cpu))
    }

    /// Access counters: counts the lines, notifies at the threshold.
    /// Returns when the device may go on, if it must wait for the notification's migration
    /// (`Counters::sync`).
    fn count(&mut self, d: u8, p: u32, at: Loc, a: &Access, now: f64) -> Result<Option<f64>, MechError> {
        let cx = Ctx { state: &self.st, cost: &self.cost, now: now as u64 };
        let Some(c) = self.policy.counters(&cx, d) else { return Ok(None) };
        if at == Loc::Dev(d) && !c.local_too {
            return Ok(None);
        }
        let region = c.region.max(1);
        let key = (d, p / region);
        let e = self.counters.entry(key).or_insert((0, 0));
        if a.write {
            e.1 += a.lines as u32;
        } else {
            e.0 += a.lines as u32;
        }
        if e.0 + e.1 < c.threshold {
            return Ok(None);
        }
        let (reads, writes) = *e;
        self.counters.remove(&key);
        self.stats.notifications += 1;
        let first = p / region * region;
        let n = Notification { dev: d, first, pages: region.min(self.st.len() - first), reads, writes };
        let mut plan = Plan::default();
        let cx = Ctx { state: &self.st, cost: &self.cost, now: now as u64 };
        self.policy.on_access_counter(&cx, &n, &mut plan);
        if plan.actions.is_empty() {
            return Ok(None);
        }
        let lane = format!("dev{d}");
        if c.sync {
            // On the fault path: one far fault, then the transfer; the device waits.
            let done = self.apply(&plan, now + self.cost.far_fault_ns)?;
            self.event(now, done - now, &lane, "counter", n.pages, "fault path");
            return Ok(Some(done));
        }
        // Serviced in the background: the links are busy, the device goes on.
        self.apply(&plan, now)?;
        self.event(now, 0.0, &lane, "counter", n.pages, "");
        Ok(None)
    }

    fn apply(&mut self, plan: &Plan, t: f64) -> Result<f64, MechError> {
        Ok(self.apply_timed(plan, t)?.0)
    }

    /// Applies a plan from time `t`: demand actions first, then prefetches, making room as
    /// needed. Returns (when the last transfer ends, the stall asked for, measured wall ns of
    /// the moves).
    fn apply_timed(&mut self, plan: &Plan, t: f64) -> Result<(f64, f64, u64), MechError> {
        use super::policy::Action;
        let mut done = t;
        let mut stall = 0.0;
        let mut wall = 0;
        // Pages this plan brings to a device are protected from its own evictions.
        let mut protect: Vec<(u32, u32)> = Vec::new();
        for a in &plan.actions {
            if let Action::Migrate { first, pages, to: Loc::Dev(_), .. } | Action::Duplicate { first, pages, .. } = *a {
                protect.push((first, first.saturating_add(pages)));
            }
        }
        for prefetch_pass in [false, true] {
            for a in &plan.actions {
                match *a {
                    Action::Migrate { first, pages, to, prefetch } if prefetch == prefetch_pass => {
                        let (e, w) = self.migrate(first, pages, to, prefetch, &protect, t)?;
                        done = done.max(e);
                        wall += w;
                    }
                    Action::MapRemote { first, pages, dev } if !prefetch_pass => {
                        self.stats.remote_maps += self.map_remote(first, pages, dev)? as u64;
                    }
                    Action::Duplicate { first, pages, dev } if !prefetch_pass => {
                        let (e, w) = self.duplicate(first, pages, dev, &protect, t)?;
                        done = done.max(e);
                        wall += w;
                    }
                    Action::Stall { ns } if !prefetch_pass => {
                        self.stats.throttles += 1;
                        stall += ns as f64;
                    }
                    _ => {}
                }
            }
        }
        Ok((done, stall, wall))
    }

    /// Occupies the links a transfer between `from` and `to` uses; returns its end.
    fn transfer(&mut self, from: Loc, to: Loc, pages: u32, measured: u64, t: f64) -> f64 {
        let dur = match self.cost.source {
            Source::Model => self.cost.transfer_ns(pages as u64 * PAGE),
            Source::Measured => measured as f64,
        };
        let links: Vec<usize> = [from.dev(), to.dev()].into_iter().flatten().collect();
        let start = links.iter().map(|&l| self.links[l]).fold(t, f64::max);
        for &l in &links {
            self.links[l] = start + dur;
            self.link_stats[l].busy_ns += dur;
        }
        let bytes = pages as u64 * PAGE;
        if let Some(d) = from.dev() {
            self.link_stats[d].out_bytes += bytes;
        }
        if let Some(d) = to.dev() {
            self.link_stats[d].in_bytes += bytes;
        }
        self.stats.transfer_ns += dur;
        start + dur
    }

    /// Maps `[first, first + pages)` (clipped to the managed pages) for remote access by
    /// device `d`, in the device's MMU and in the state; returns the pages.
    fn map_remote(&mut self, first: u32, pages: u32, d: u8) -> Result<u32, MechError> {
        let end = first.saturating_add(pages).min(self.st.len());
        if end <= first {
            return Ok(0);
        }
        self.mech.map_remote(first, end - first, d)?;
        for p in first..end {
            self.st.map_remote(p, d);
        }
        Ok(end - first)
    }

    fn protected(protect: &[(u32, u32)], p: u32) -> bool {
        protect.iter().any(|&(a, b)| p >= a && p < b)
    }

    /// Moves `[first, first + pages)` to `to`, in runs of pages that share a source.
    fn migrate(
        &mut self,
        first: u32,
        pages: u32,
        to: Loc,
        prefetch: bool,
        protect: &[(u32, u32)],
        t: f64,
    ) -> Result<(f64, u64), MechError> {
        let end = first.saturating_add(pages).min(self.st.len());
        let mut done = t;
        let mut wall = 0;
        let mut p = first;
        while p < end {
            let from = self.st.page(p).loc;
            if from == to {
                p += 1;
                continue;
            }
            let mut q = p;
            while q < end && self.st.page(q).loc == from && q - p < BLOCK && (q == p || !q.is_multiple_of(BLOCK)) {
                q += 1;
            }
            let n = q - p;
            for x in p..q {
                self.drop_all_copies(x)?;
            }
            let mut w = self.mech.migrate(p, n, from, to)?;
            let mut moved = self.arrived(p, q, to)?;
            if let Loc::Dev(d) = to
                && moved.len() < n as usize
            {
                // The device's allocator refused the rest: it is full. Evict in the policy's
                // order (UVM evicts when its allocator fails), then move what is left.
                done = done.max(self.make_room(d, n - moved.len() as u32, protect, t)?);
                let left: Vec<u32> = (p..q).filter(|x| !moved.contains(x)).collect();
                for (a, k) in runs(&left) {
                    w += self.mech.migrate(a, k, from, to)?;
                }
                moved = self.arrived(p, q, to)?;
            }
            wall += w;
            if moved.is_empty() {
                // Full, and nothing could be evicted: the rest stays where it is.
                break;
            }
            for (k, (a, m)) in runs(&moved).into_iter().enumerate() {
                for x in a..a + m {
                    if self.st.page(x).prefetched {
                        self.stats.prefetch_unused += 1;
                    }
                    if !self.st.set_loc(x, to, t as u64, prefetch) {
                        // The mechanism found room the state does not have.
                        return Err(MechError::Misplaced { page: x, op: PageOp::Migrate, expected: from, found: to });
                    }
                }
                match (from, to) {
                    (Loc::Cpu, _) => self.stats.to_dev += m as u64,
                    (_, Loc::Cpu) => self.stats.to_cpu += m as u64,
                    _ => self.stats.dev_to_dev += m as u64,
                }
                if prefetch {
                    self.stats.prefetched += m as u64;
                }
                // The measured time goes with the first run.
                let e = self.transfer(from, to, m, if k == 0 { w } else { 0 }, done);
                let lane = match (from, to) {
                    (Loc::Dev(d), _) | (_, Loc::Dev(d)) => format!("link{d}"),
                    _ => "link".into(),
                };
                self.event(
                    done,
                    e - done,
                    &lane,
                    if prefetch { "prefetch" } else { "migrate" },
                    m,
                    &format!("{from}->{to}"),
                );
                done = done.max(e);
            }
            if moved.len() < n as usize {
                break;
            }
            p = q;
        }
        Ok((done, wall))
    }

    /// The pages of `[p, q)` the page tables have in `to`.
    fn arrived(&mut self, p: u32, q: u32, to: Loc) -> Result<Vec<u32>, MechError> {
        let mut v = Vec::new();
        for x in p..q {
            if self.mech.resident(x)? == to {
                v.push(x);
            }
        }
        Ok(v)
    }

    fn duplicate(
        &mut self,
        first: u32,
        pages: u32,
        dev: u8,
        protect: &[(u32, u32)],
        t: f64,
    ) -> Result<(f64, u64), MechError> {
        let end = first.saturating_add(pages).min(self.st.len());
        if !self.mech.can_duplicate() {
            self.stats.dup_unsupported += self.map_remote(first, pages, dev)? as u64;
            return Ok((t, 0));
        }
        let mut done = t;
        let mut wall = 0;
        for p in first..end {
            let pg = *self.st.page(p);
            if pg.loc == Loc::Dev(dev) || pg.copies & (1 << dev) != 0 {
                continue;
            }
            if self.st.free(dev as usize) == 0 {
                done = done.max(self.make_room(dev, 1, protect, t)?);
                if self.st.free(dev as usize) == 0 {
                    self.map_remote(p, 1, dev)?;
                    continue;
                }
            }
            let w = self.mech.duplicate(p, 1, pg.loc, dev)?;
            wall += w;
            self.st.add_copy(p, dev);
            self.stats.duplicates += 1;
            let e = self.transfer(pg.loc, Loc::Dev(dev), 1, w, done);
            done = done.max(e);
        }
        Ok((done, wall))
    }

    /// Frees at least `need` pages of device `d` (if it can without touching `protect`);
    /// returns when the evictions' transfers end.
    fn make_room(&mut self, d: u8, need: u32, protect: &[(u32, u32)], t: f64) -> Result<f64, MechError> {
        let mut victims = Vec::new();
        let cx = Ctx { state: &self.st, cost: &self.cost, now: t as u64 };
        self.policy.on_eviction_pressure(&cx, d, need, &mut victims);
        let mut done = t;
        let freed = self.evict(d, &victims, protect, &mut done)?;
        if freed < need {
            let mut more = Vec::new();
            let cx = Ctx { state: &self.st, cost: &self.cost, now: t as u64 };
            root_chunk_victims(&cx, d, self.st.dev(d as usize).capacity, &mut more);
            let mut left = need - freed;
            let mut picked = Vec::new();
            for (first, n) in more {
                for p in first..first + n {
                    if left == 0 {
                        break;
                    }
                    let pg = self.st.page(p);
                    if (pg.loc == Loc::Dev(d) || pg.copies & (1 << d) != 0) && !Self::protected(protect, p) {
                        picked.push((p, 1));
                        left -= 1;
                    }
                }
            }
            self.evict(d, &picked, protect, &mut done)?;
        }
        Ok(done)
    }

    /// Evicts the victims' pages held by `d` to system memory (dropping read copies), in
    /// contiguous runs. Returns the pages freed.
    fn evict(
        &mut self,
        d: u8,
        victims: &[(u32, u32)],
        protect: &[(u32, u32)],
        done: &mut f64,
    ) -> Result<u32, MechError> {
        let mut pages: Vec<u32> = Vec::new();
        let mut freed = 0;
        for &(first, n) in victims {
            for p in first..first.saturating_add(n).min(self.st.len()) {
                if Self::protected(protect, p) {
                    continue;
                }
                if self.st.page(p).copies & (1 << d) != 0 {
                    self.mech.drop_copy(p, d)?;
                    self.st.drop_copy(p, d);
                    freed += 1;
                } else if self.st.page(p).loc == Loc::Dev(d) {
                    pages.push(p);
                }
            }
        }
        pages.sort_unstable();
        pages.dedup();
        let remote = self.policy.remote_after_eviction();
        let mut i = 0;
        while i < pages.len() {
            let mut j = i + 1;
            while j < pages.len() && pages[j] == pages[j - 1] + 1 && !pages[j].is_multiple_of(BLOCK) {
                j += 1;
            }
            let (first, n) = (pages[i], (j - i) as u32);
            for x in first..first + n {
                self.drop_all_copies(x)?;
            }
            let w = self.mech.migrate(first, n, Loc::Dev(d), Loc::Cpu)?;
            for p in first..first + n {
                if self.st.page(p).prefetched {
                    self.stats.prefetch_unused += 1;
                }
                self.st.set_loc(p, Loc::Cpu, *done as u64, false);
            }
            if remote {
                self.map_remote(first, n, d)?;
            }
            self.stats.evicted += n as u64;
            self.stats.to_cpu += n as u64;
            let e = self.transfer(Loc::Dev(d), Loc::Cpu, n, w, *done);
            let lane = format!("link{d}");
            self.event(*done, e - *done, &lane, "evict", n, &format!("dev{d}->cpu"));
            *done = done.max(e);
            freed += n;
            i = j;
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod dag_tests;
#[cfg(test)]
mod tests;
