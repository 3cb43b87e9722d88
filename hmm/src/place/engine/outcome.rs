//! What a run produced: the totals, per processor, per link, per workload, the trace.

use alloc::string::String;
use alloc::vec::Vec;

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
    /// Time the link was busy, simulated ns, summed over its two directions (full duplex: a
    /// transfer in and one out may overlap).
    pub busy_ns: f64,
}

/// One workload's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadResult {
    /// Its kind.
    pub name: String,
    /// The process (address space) it ran in: workloads of one point with different numbers
    /// are separate processes sharing the devices.
    pub process: u32,
    /// Footprint, pages.
    pub pages: u32,
    /// What happened to its own pages.
    pub counts: WorkloadCounts,
    /// Steps run (a phase-graph workload: the times some of its phases were released together).
    pub steps: u32,
    /// When its last phase ended, ns.
    pub end_ns: f64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// A workload's share of a run's counters: what happened to its own pages, whoever caused it
/// (a page of one workload evicted to make room for another's counts as the first's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadCounts {
    /// Device faults and CPU faults on device pages.
    pub faults: u64,
    /// Pages moved system → device.
    pub to_dev: u64,
    /// Pages moved device → system (eviction included).
    pub to_cpu: u64,
    /// Pages evicted.
    pub evicted: u64,
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
