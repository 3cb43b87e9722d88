//! A device's compute engine: kernels (workload code) run lane by lane, and every access goes
//! through the device MMU ([`Mirror`]). A miss is a replayable fault: the lane stalls, the
//! fault goes into the fault buffer, and when the buffer is full or no lane can go on, the
//! batch is serviced and every stalled lane replays its access (NVIDIA UVM's model,
//! `reference/placement.md` 1.2: batches of up to 256 faults, sorted and deduplicated, serviced
//! per contiguous group).
//!
//! Servicing a group is a [`Policy`] decision: migrate it to device memory (the default,
//! [`MigrateOnTouch`]), or map the system pages for remote access (a range fault). A migration
//! that moves fewer pages than asked leaves the rest in RAM, mapped remotely. A fault that
//! cannot be serviced (an address the process does not map, a write to read-only memory) is
//! fatal for the kernel, as a GPU's fatal MMU fault kills its channel: [`run`] returns it.
//!
//! Invariant: a lane's access is executed only when the mirror translates its page with the
//! access it needs, so a device access never bypasses the CPU page tables.

use crate::devmmu::{Domain, Mirror, MirrorError, Translation, Where};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

const PAGE: u64 = 4096;
/// UVM's fault batch size.
pub const BATCH_MAX: usize = 256;
/// Batches serviced in a row without any access completing before the engine gives up.
const STUCK_BATCHES: u32 = 64;
/// Pages in a virtual-address block (2 MiB): a service group never crosses one.
const BLOCK: u64 = 512;

/// One access of a lane, on a 64-bit word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read the word at the address.
    Load(u64),
    /// Write a value.
    Store(u64, u64),
    /// Add to the word (read-modify-write), as an atomic would.
    Add(u64, u64),
}

impl Op {
    /// The address.
    pub fn va(self) -> u64 {
        match self {
            Op::Load(a) | Op::Store(a, _) | Op::Add(a, _) => a,
        }
    }
    /// Whether it writes.
    pub fn writes(self) -> bool {
        !matches!(self, Op::Load(_))
    }
}

/// Workload code: independent lanes, each a sequence of accesses.
pub trait Kernel {
    /// How many lanes.
    fn lanes(&self) -> usize;
    /// The current access of `lane` (`None` once it has finished). Asked again after a replay
    /// until it is retired.
    fn op(&mut self, lane: usize) -> Option<Op>;
    /// `lane`'s current access completed; `value` is the word it read (the old value for
    /// [`Op::Add`], 0 for a store).
    fn retire(&mut self, lane: usize, value: u64);
}

/// How a fault group is serviced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Migrate the pages to device memory.
    Migrate,
    /// Leave them where they are and map them for remote access.
    Remote,
}

/// Faults of one batch on consecutive pages of one 2 MiB block, with the same access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultGroup {
    /// First page.
    pub start: u64,
    /// One past the last page.
    pub end: u64,
    /// A write fault.
    pub write: bool,
    /// Faults in the group (after deduplication: one per page).
    pub faults: usize,
}

/// Decides how each fault group is serviced.
pub trait Policy {
    /// The decision for `g`.
    fn decide(&mut self, g: &FaultGroup) -> Decision;
}

/// Migrate on first touch (UVM's and SVM's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOnTouch;

impl Policy for MigrateOnTouch {
    fn decide(&mut self, _g: &FaultGroup) -> Decision {
        Decision::Migrate
    }
}

/// Never migrate: the device reaches system memory remotely (pinned to system memory,
/// `cudaMemAdviseSetPreferredLocation(cpu)` + `SetAccessedBy`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoteMap;

impl Policy for RemoteMap {
    fn decide(&mut self, _g: &FaultGroup) -> Decision {
        Decision::Remote
    }
}

/// Map remotely until a 2 MiB block has faulted `threshold` times, then migrate it (an
/// access-counter style policy, UVM's `uvm_perf_access_counter` threshold in spirit).
#[derive(Debug, Clone, Default)]
pub struct MigrateAfter {
    /// Faults on a block before it migrates.
    pub threshold: u32,
    counts: BTreeMap<u64, u32>,
}

impl MigrateAfter {
    /// Migrate a block after `threshold` faults on it.
    pub fn new(threshold: u32) -> Self {
        MigrateAfter { threshold, counts: BTreeMap::new() }
    }
}

impl Policy for MigrateAfter {
    fn decide(&mut self, g: &FaultGroup) -> Decision {
        let c = self.counts.entry(g.start / PAGE / BLOCK).or_insert(0);
        *c += g.faults as u32;
        if *c >= self.threshold { Decision::Migrate } else { Decision::Remote }
    }
}

/// The device side of the engine: memory access by translation, migration, a clock.
pub trait Backend {
    /// Reads the word at `va`, which the device sees at `at`.
    fn load(&mut self, at: Where, va: u64) -> u64;
    /// Writes the word at `va`.
    fn store(&mut self, at: Where, va: u64, value: u64);
    /// Migrates `[start, end)` to this device's memory; returns the pages moved.
    fn migrate(&mut self, start: u64, end: u64) -> Result<u64, MirrorError>;
    /// A monotonic clock (any unit; batch service time is reported in it).
    fn now(&self) -> u64;
}

/// Counters of a device's compute engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Faults raised (one per stalled lane access).
    pub faults: u64,
    /// Faults that repeated a page already in the batch.
    pub duplicates: u64,
    /// Batches serviced.
    pub batches: u64,
    /// The largest batch (faults, before deduplication).
    pub max_batch: u64,
    /// Groups serviced by migration / by remote mapping.
    pub migrated_groups: u64,
    /// Groups mapped remotely.
    pub remote_groups: u64,
    /// Pages migrated to the device by fault service.
    pub pages_to_device: u64,
    /// Accesses served from the device's own memory.
    pub local_accesses: u64,
    /// Accesses that went to system memory through the IOMMU.
    pub remote_accesses: u64,
    /// Replays (a stalled lane retrying its access after a batch).
    pub replays: u64,
    /// Total batch service time, in the backend's clock.
    pub service_time: u64,
}

impl core::ops::AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, c: &Counters) {
        self.faults += c.faults;
        self.duplicates += c.duplicates;
        self.batches += c.batches;
        self.max_batch = self.max_batch.max(c.max_batch);
        self.migrated_groups += c.migrated_groups;
        self.remote_groups += c.remote_groups;
        self.pages_to_device += c.pages_to_device;
        self.local_accesses += c.local_accesses;
        self.remote_accesses += c.remote_accesses;
        self.replays += c.replays;
        self.service_time += c.service_time;
    }
}

/// A kernel stopped by a fault that could not be serviced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalFault {
    /// The lane.
    pub lane: usize,
    /// The address.
    pub va: u64,
    /// A write.
    pub write: bool,
    /// Why the service failed.
    pub error: MirrorError,
}

impl core::fmt::Display for FatalFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "fatal device fault: lane {} {} {:#x}: {}",
            self.lane,
            if self.write { "writing" } else { "reading" },
            self.va,
            self.error
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    page: u64,
    write: bool,
    lane: usize,
}

fn allowed(t: Option<Translation>, write: bool) -> Option<Where> {
    t.filter(|t| t.write || !write).map(|t| t.at)
}

/// Runs `kernel` to completion on the device that `mirror` belongs to, servicing faults in
/// batches of at most `batch_max` (≤ [`BATCH_MAX`]) as `policy` decides.
pub fn run<D: Domain>(
    mirror: &Mirror<D>,
    kernel: &mut dyn Kernel,
    backend: &mut dyn Backend,
    policy: &mut dyn Policy,
    batch_max: usize,
    c: &mut Counters,
) -> Result<(), FatalFault> {
    let batch_max = batch_max.clamp(1, BATCH_MAX);
    let lanes = kernel.lanes();
    let mut stalled = alloc::vec![false; lanes];
    let mut buffer: Vec<Fault> = Vec::with_capacity(batch_max);
    // Batches in a row after which no access completed.
    let mut idle = 0u32;
    loop {
        let mut live = false;
        let mut progress = false;
        'lanes: for (lane, stall) in stalled.iter_mut().enumerate() {
            if *stall {
                continue;
            }
            // A lane runs until it finishes or faults.
            while let Some(op) = kernel.op(lane) {
                live = true;
                let va = op.va();
                let Some(at) = allowed(mirror.translate(va), op.writes()) else {
                    *stall = true;
                    c.faults += 1;
                    buffer.push(Fault { page: va & !(PAGE - 1), write: op.writes(), lane });
                    if buffer.len() >= batch_max {
                        break 'lanes;
                    }
                    continue 'lanes;
                };
                match at {
                    Where::Local(_) => c.local_accesses += 1,
                    Where::Ram(_) => c.remote_accesses += 1,
                }
                let value = match op {
                    Op::Load(_) => backend.load(at, va),
                    Op::Store(_, v) => {
                        backend.store(at, va, v);
                        0
                    }
                    Op::Add(_, d) => {
                        let old = backend.load(at, va);
                        backend.store(at, va, old.wrapping_add(d));
                        old
                    }
                };
                kernel.retire(lane, value);
                progress = true;
            }
        }
        if buffer.is_empty() {
            if !live {
                return Ok(());
            }
            continue;
        }
        idle = if progress { 0 } else { idle + 1 };
        if idle > STUCK_BATCHES {
            // Serviced, yet the same accesses miss again: say so instead of spinning.
            let f = buffer[0];
            return Err(FatalFault { lane: f.lane, va: f.page, write: f.write, error: MirrorError::Unstable(f.page) });
        }
        let t0 = backend.now();
        service(mirror, &mut buffer, backend, policy, c)?;
        c.service_time += backend.now().saturating_sub(t0);
        c.replays += stalled.iter().filter(|&&s| s).count() as u64;
        stalled.iter_mut().for_each(|s| *s = false);
    }
}

/// Services one batch: sort, deduplicate, group, decide, migrate or map; empties `buffer`.
fn service<D: Domain>(
    mirror: &Mirror<D>,
    buffer: &mut Vec<Fault>,
    backend: &mut dyn Backend,
    policy: &mut dyn Policy,
    c: &mut Counters,
) -> Result<(), FatalFault> {
    c.batches += 1;
    c.max_batch = c.max_batch.max(buffer.len() as u64);
    buffer.sort_by_key(|f| (f.page, !f.write));
    let n = buffer.len();
    // One entry per page; a write fault wins over a read on the same page.
    buffer.dedup_by(|b, a| {
        let same = a.page == b.page;
        a.write |= same && b.write;
        same
    });
    c.duplicates += (n - buffer.len()) as u64;
    let mut groups: Vec<(FaultGroup, usize)> = Vec::new();
    for (i, f) in buffer.iter().enumerate() {
        match groups.last_mut() {
            Some((g, _))
                if g.end == f.page && g.write == f.write && g.start / PAGE / BLOCK == f.page / PAGE / BLOCK =>
            {
                g.end += PAGE;
                g.faults += 1;
            }
            _ => groups.push((FaultGroup { start: f.page, end: f.page + PAGE, write: f.write, faults: 1 }, i)),
        }
    }
    for (g, first) in groups {
        let r = match policy.decide(&g) {
            Decision::Migrate => {
                c.migrated_groups += 1;
                // Pages that cannot move (device memory full, pinned) stay and are mapped remotely.
                backend.migrate(g.start, g.end).map(|moved| c.pages_to_device += moved)
            }
            Decision::Remote => {
                c.remote_groups += 1;
                Ok(())
            }
        }
        .and_then(|()| mirror.fault(g.start, g.end, g.write));
        if let Err(error) = r {
            // Name the page and lane that cannot be serviced: the first page that fails alone.
            let faults = &buffer[first..first + g.faults];
            let f = faults.iter().find(|f| mirror.fault(f.page, f.page + PAGE, f.write).is_err()).unwrap_or(&faults[0]);
            return Err(FatalFault { lane: f.lane, va: f.page, write: f.write, error });
        }
    }
    buffer.clear();
    Ok(())
}

/// A kernel: lane `l` adds 1 to words `l, l + lanes, l + 2 * lanes, ...` (counted in units
/// of `stride` words, so one word per page when `stride` is 512), and sums what it read.
#[derive(Debug, Clone)]
pub struct Increment {
    /// First word.
    pub base: u64,
    words: u64,
    stride: u64,
    lanes: usize,
    next: Vec<u64>,
    /// The sum of the values read.
    pub sum: u64,
}

impl Increment {
    /// `words` words at `base`, every `stride`-th touched, by `lanes` lanes.
    pub fn new(base: u64, words: u64, stride: u64, lanes: usize) -> Self {
        Increment { base, words, stride, lanes, next: (0..lanes as u64).collect(), sum: 0 }
    }
}

impl Kernel for Increment {
    fn lanes(&self) -> usize {
        self.lanes
    }
    fn op(&mut self, lane: usize) -> Option<Op> {
        let i = self.next[lane] * self.stride;
        (i < self.words).then(|| Op::Add(self.base + i * 8, 1))
    }
    fn retire(&mut self, lane: usize, value: u64) {
        self.sum += value;
        self.next[lane] += self.lanes as u64;
    }
}

#[cfg(test)]
mod tests;
