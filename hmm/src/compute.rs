//! A device's compute engine: kernels (workload code) run lane by lane, and every access goes
//! through the device MMU. A miss is a replayable fault: the lane stalls, the fault goes into
//! the fault buffer, and when the buffer is full or no lane can go on, the batch is serviced
//! and every stalled lane replays its access (NVIDIA UVM's model, `reference/placement.md`
//! 1.2: batches of up to 256 faults, sorted and deduplicated, serviced per contiguous group).
//!
//! This is the one device fault pipeline: [`run`] drives a [`Device`] (its MMU's
//! translations, its loads and stores, the service of a batch). The experiments' engine is one
//! device (`place::engine`: accesses of a workload's phase, each batch serviced by the
//! placement policy); [`Placed`] is the other, for a kernel on a device's [`Mirror`] (the
//! kernel's compute jobs, the devices benchmark): each batch goes to a placement policy
//! ([`crate::place::policy::Policy`], the one policy trait) and its plan is carried out by
//! migration to device memory or by mapping the pages where they are (a range fault). A fault
//! that cannot be serviced (an address the process does not map, a write to read-only memory)
//! is fatal for the kernel, as a GPU's fatal MMU fault kills its channel: [`run`] returns it.
//!
//! The device's access-counter unit ([`AccessCounters`], `access.rs`) counts the accesses
//! [`run`] completes and notifies its driver ([`Device::notify`]) when a region reaches the
//! threshold: access counters come from the compute engine, not from its driver's books.
//!
//! Invariant: a lane's access is executed only when the device's MMU translates its page with
//! the access it needs, so a device access never bypasses the CPU page tables.

mod access;

pub use access::{AccessCounters, CounterConfig, CounterNotification, NEVER};

use crate::devmmu::{Domain, Mirror, MirrorError, Translation, Where};
use crate::place::Loc;
use crate::place::cost::CostModel;
use crate::place::policy::{Action, Ctx, Fault as PlaceFault, Notification, Plan, Policy, Units};
use crate::place::state::State;
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
    /// How many accesses `lane`'s current access stands for, as the access counters count it
    /// (a workload access that covers several cache lines of its page counts each).
    fn weight(&self, lane: usize) -> u32 {
        let _ = lane;
        1
    }
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

/// The device a kernel runs on, as [`run`] sees it.
pub trait Device {
    /// Where the device's MMU takes an access (an address, or a memory).
    type At: Copy;
    /// A failure of the device or of a batch's service.
    type Error;
    /// The MMU's translation of `va` for a read, or a write when `write`, without faulting
    /// (`None`: a miss, which faults).
    fn translate(&mut self, va: u64, write: bool) -> Result<Option<Self::At>, Self::Error>;
    /// Whether `at` is the device's own memory (else the access is remote).
    fn is_local(&self, at: Self::At) -> bool;
    /// Lane `lane` reads the word at `va`, which the device reaches at `at`.
    fn load(&mut self, lane: usize, at: Self::At, va: u64) -> Result<u64, Self::Error>;
    /// Lane `lane` writes the word at `va`.
    fn store(&mut self, lane: usize, at: Self::At, va: u64, value: u64) -> Result<(), Self::Error>;
    /// Services one batch: its faults sorted by page, deduplicated (a write wins) and grouped.
    /// A fault still unmapped afterwards faults again when its lane replays. An error is the
    /// group that could not be serviced and why.
    fn service(&mut self, groups: &[FaultGroup], c: &mut Counters) -> Result<(), (FaultGroup, Self::Error)>;
    /// A monotonic clock (any unit; batch service time is reported in it).
    fn now(&self) -> u64;
    /// The device's access-counter unit, as its driver programmed it now (`None`: the device
    /// counts nothing). [`run`] counts every completed access in it.
    fn access_counters(&mut self) -> Option<&mut AccessCounters> {
        None
    }
    /// The access-counter unit notified: lane `lane`'s access, just completed, brought `n`'s
    /// region to the threshold. The driver services it before the lane goes on.
    fn notify(&mut self, lane: usize, n: &CounterNotification, c: &mut Counters) -> Result<(), Self::Error> {
        let _ = (lane, n, c);
        Ok(())
    }
}

/// The memory side of a [`Placed`] device: word access by translation, migration, a clock.
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
    /// Access-counter notifications raised.
    pub notifications: u64,
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
        self.notifications += c.notifications;
    }
}

/// A kernel stopped by a fault that could not be serviced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatalFault<E = MirrorError> {
    /// The lane.
    pub lane: usize,
    /// The address.
    pub va: u64,
    /// A write.
    pub write: bool,
    /// Why the service failed.
    pub error: E,
}

impl<E: core::fmt::Display> core::fmt::Display for FatalFault<E> {
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

/// Why [`run`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError<E> {
    /// A fault the device could not service (or serviced, yet the access kept missing).
    Fatal(FatalFault<Option<E>>),
    /// The device failed on an access.
    Device(E),
}

impl<E: core::fmt::Display> core::fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RunError::Fatal(x) => match &x.error {
                Some(e) => write!(f, "{}", FatalFault { lane: x.lane, va: x.va, write: x.write, error: e }),
                None => write!(
                    f,
                    "fatal device fault: lane {} {} {:#x}: serviced, yet the access misses again",
                    x.lane,
                    if x.write { "writing" } else { "reading" },
                    x.va
                ),
            },
            RunError::Device(e) => write!(f, "{e}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    page: u64,
    write: bool,
    lane: usize,
}

/// Runs `kernel` to completion on `dev`, servicing faults in batches of at most `batch_max`
/// (≤ [`BATCH_MAX`]).
///
/// Generic in the kernel too (a `&mut dyn Kernel` works): a kernel's `op`, `weight` and
/// `retire` run at every access, and a known kernel type lets them inline.
pub fn run<K: Kernel + ?Sized, D: Device + ?Sized>(
    kernel: &mut K,
    dev: &mut D,
    batch_max: usize,
    c: &mut Counters,
) -> Result<(), RunError<D::Error>> {
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
                let Some(at) = dev.translate(va, op.writes()).map_err(RunError::Device)? else {
                    *stall = true;
                    c.faults += 1;
                    buffer.push(Fault { page: va & !(PAGE - 1), write: op.writes(), lane });
                    if buffer.len() >= batch_max {
                        break 'lanes;
                    }
                    continue 'lanes;
                };
                let local = dev.is_local(at);
                if local {
                    c.local_accesses += 1;
                } else {
                    c.remote_accesses += 1;
                }
                let value = match op {
                    Op::Load(_) => dev.load(lane, at, va).map_err(RunError::Device)?,
                    Op::Store(_, v) => {
                        dev.store(lane, at, va, v).map_err(RunError::Device)?;
                        0
                    }
                    Op::Add(_, d) => {
                        let old = dev.load(lane, at, va).map_err(RunError::Device)?;
                        dev.store(lane, at, va, old.wrapping_add(d)).map_err(RunError::Device)?;
                        old
                    }
                };
                let weight = kernel.weight(lane);
                let page = va / PAGE;
                if let Some(n) = dev.access_counters().and_then(|u| u.count(page, op.writes(), local, weight)) {
                    c.notifications += 1;
                    dev.notify(lane, &n, c).map_err(RunError::Device)?;
                }
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
            return Err(RunError::Fatal(FatalFault { lane: f.lane, va: f.page, write: f.write, error: None }));
        }
        let t0 = dev.now();
        service(dev, &mut buffer, c)?;
        c.service_time += dev.now().saturating_sub(t0);
        c.replays += stalled.iter().filter(|&&s| s).count() as u64;
        stalled.iter_mut().for_each(|s| *s = false);
    }
}

/// Services one batch: sort, deduplicate, group, hand to the device; empties `buffer`.
fn service<D: Device + ?Sized>(
    dev: &mut D,
    buffer: &mut Vec<Fault>,
    c: &mut Counters,
) -> Result<(), RunError<D::Error>> {
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
    let mut groups: Vec<FaultGroup> = Vec::new();
    for f in buffer.iter() {
        match groups.last_mut() {
            Some(g) if g.end == f.page && g.write == f.write && g.start / PAGE / BLOCK == f.page / PAGE / BLOCK => {
                g.end += PAGE;
                g.faults += 1;
            }
            _ => groups.push(FaultGroup { start: f.page, end: f.page + PAGE, write: f.write, faults: 1 }),
        }
    }
    if let Err((g, error)) = dev.service(&groups, c) {
        // Name the group's first faulting lane.
        let f = buffer.iter().find(|f| f.page >= g.start && f.page < g.end).copied().unwrap_or(buffer[0]);
        return Err(RunError::Fatal(FatalFault { lane: f.lane, va: f.page, write: f.write, error: Some(error) }));
    }
    buffer.clear();
    Ok(())
}

fn allowed(t: Option<Translation>, write: bool) -> Option<Where> {
    t.filter(|t| t.write || !write).map(|t| t.at)
}

/// A kernel on a device's [`Mirror`], its fault batches serviced by a placement policy over
/// the pages of one region (`[base, base + pages * 4096)`, page `p` of the policy's numbering
/// at `base + p * 4096`): the policy's plan migrates pages to this device (through the
/// backend: `migrate_vma` and a copy) or maps them where they are, and then every faulted
/// group is faulted into the mirror (`hmm_range_fault`, a map in the device's domain). Only the
/// plan's actions a compute job can carry out apply: migrations to this device and remote
/// mappings (a read copy is mapped remotely, other moves are left to the CPU's faults). Faults
/// outside the region are mapped where they are. The policy's access counters
/// ([`Policy::counters`]) program the device's counter unit; a notification's plan is carried
/// out the same way and what it migrated is mapped in the mirror.
pub struct Placed<'a, D: Domain> {
    mirror: &'a Mirror<D>,
    backend: &'a mut dyn Backend,
    policy: &'a mut dyn Policy,
    state: State,
    cost: CostModel,
    base: u64,
    dev: u8,
    /// The device's counter unit at index `dev` (the policy reads unit `dev`).
    units: Vec<AccessCounters>,
}

impl<D: Domain> core::fmt::Debug for Placed<'_, D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Placed(dev{}, {} pages at {:#x}, {})", self.dev, self.state.len(), self.base, self.policy.name())
    }
}

impl<'a, D: Domain> Placed<'a, D> {
    /// Device `dev` (its index among the devices a policy may name) with `mirror` and
    /// `backend`, `capacity` pages of device memory for the region's `pages` at `base`.
    pub fn new(
        mirror: &'a Mirror<D>,
        backend: &'a mut dyn Backend,
        policy: &'a mut dyn Policy,
        dev: u8,
        (base, pages): (u64, u32),
        capacity: u32,
    ) -> Self {
        let mut caps = alloc::vec![0u32; dev as usize + 1];
        caps[dev as usize] = capacity;
        let state = State::new(pages, &caps);
        let units = alloc::vec![AccessCounters::default(); dev as usize + 1];
        Placed { mirror, backend, policy, state, cost: CostModel::default(), base, dev, units }
    }

    /// Carries out the plan's migrations to this device; returns the ranges migrated.
    fn migrate_planned(&mut self, plan: &Plan, now: u64, c: &mut Counters) -> Result<Vec<(u32, u32)>, MirrorError> {
        let mut migrated: Vec<(u32, u32)> = Vec::new();
        for a in &plan.actions {
            if let Action::Migrate { first, pages, to: Loc::Dev(d), .. } = *a
                && d == self.dev
            {
                let end = first.saturating_add(pages).min(self.state.len());
                let (s, e) = (self.base + first as u64 * PAGE, self.base + end as u64 * PAGE);
                // Pages that cannot move (device memory full, pinned) stay and are mapped remotely.
                c.pages_to_device += self.backend.migrate(s, e)?;
                for p in first..end {
                    self.state.set_loc(p, Loc::Dev(d), now, false);
                }
                migrated.push((first, end));
            }
        }
        Ok(migrated)
    }

    fn page(&self, va: u64) -> Option<u32> {
        let p = va.checked_sub(self.base)? / PAGE;
        (p < self.state.len() as u64).then_some(p as u32)
    }
}

impl<D: Domain> Device for Placed<'_, D> {
    type At = Where;
    type Error = MirrorError;

    fn translate(&mut self, va: u64, write: bool) -> Result<Option<Where>, MirrorError> {
        Ok(allowed(self.mirror.translate(va), write))
    }
    fn is_local(&self, at: Where) -> bool {
        matches!(at, Where::Local(_))
    }
    fn load(&mut self, _lane: usize, at: Where, va: u64) -> Result<u64, MirrorError> {
        Ok(self.backend.load(at, va))
    }
    fn store(&mut self, _lane: usize, at: Where, va: u64, value: u64) -> Result<(), MirrorError> {
        self.backend.store(at, va, value);
        Ok(())
    }
    fn now(&self) -> u64 {
        self.backend.now()
    }

    fn access_counters(&mut self) -> Option<&mut AccessCounters> {
        let cx =
            Ctx::new(&self.state, &self.cost, self.backend.now()).with_units(Units::new(&self.units, self.base / PAGE));
        let c = self.policy.counters(&cx, self.dev);
        let unit = &mut self.units[self.dev as usize];
        unit.configure(c.map(crate::place::policy::Counters::unit));
        c.map(|_| unit)
    }

    fn notify(&mut self, _lane: usize, n: &CounterNotification, c: &mut Counters) -> Result<(), MirrorError> {
        // Only the region's pages inside the policy's numbering are the policy's (a region
        // may start below the managed range or end past it).
        let (start, end) = (n.first * PAGE, (n.first + u64::from(n.pages)) * PAGE);
        if end <= self.base {
            return Ok(());
        }
        let Some(first) = self.page(start.max(self.base)) else { return Ok(()) };
        let last = self.page(end - PAGE).unwrap_or(self.state.len() - 1);
        if last < first {
            return Ok(());
        }
        let pages = last - first + 1;
        // The mask in the policy's pages: a region clipped at its start shifts its
        // sub-regions, and a policy sub-region is marked if any unit sub-region over it was.
        let shift = (self.base / PAGE + u64::from(first)) - n.first;
        let mask = shift_mask(n.mask, n.mask_pages, n.pages, shift, pages);
        let note = Notification {
            dev: self.dev,
            first,
            pages,
            reads: n.reads,
            writes: n.writes,
            mask,
            mask_pages: n.mask_pages,
        };
        let now = self.backend.now();
        let mut plan = Plan::default();
        let cx = Ctx::new(&self.state, &self.cost, now).with_units(Units::new(&self.units, self.base / PAGE));
        self.policy.on_access_counter(&cx, &note, &mut plan);
        for (a, b) in self.migrate_planned(&plan, now, c)? {
            // What moved is mapped where it is now, as the fault path maps a migrated group.
            self.mirror.fault(self.base + a as u64 * PAGE, self.base + b as u64 * PAGE, false)?;
        }
        Ok(())
    }

    fn service(&mut self, groups: &[FaultGroup], c: &mut Counters) -> Result<(), (FaultGroup, MirrorError)> {
        let faults: Vec<PlaceFault> = groups
            .iter()
            .flat_map(|g| (g.start..g.end).step_by(PAGE as usize).map(move |va| (va, g.write)))
            .filter_map(|(va, write)| self.page(va).map(|page| PlaceFault { page, write }))
            .collect();
        let mut plan = Plan::default();
        let now = self.backend.now();
        let cx = Ctx::new(&self.state, &self.cost, now).with_units(Units::new(&self.units, self.base / PAGE));
        self.policy.on_device_faults(&cx, self.dev, &faults, &mut plan);
        let migrated = self.migrate_planned(&plan, now, c).map_err(|err| (groups[0], err))?;
        for g in groups {
            let moved = self.page(g.start).is_some_and(|p| migrated.iter().any(|&(a, b)| p >= a && p < b));
            if moved {
                c.migrated_groups += 1;
            } else {
                c.remote_groups += 1;
            }
            if let Err(e) = self.mirror.fault(g.start, g.end, g.write) {
                // Name the page that cannot be serviced: the first that fails alone.
                let bad = (g.start..g.end)
                    .step_by(PAGE as usize)
                    .find(|&va| self.mirror.fault(va, va + PAGE, g.write).is_err())
                    .unwrap_or(g.start);
                return Err((FaultGroup { start: bad, end: bad + PAGE, write: g.write, faults: 1 }, e));
            }
        }
        Ok(())
    }
}

/// A sub-region mask (a bit per `mask_pages` pages of a region of `region` pages, bit 31
/// holding the rest) re-expressed for the same region seen from `shift` pages into it, over
/// `pages` pages: a bit of the result is set when any set bit's pages overlap its own.
fn shift_mask(mask: u32, mask_pages: u32, region: u32, shift: u64, pages: u32) -> u32 {
    let mp = u64::from(mask_pages.max(1));
    if shift == 0 {
        return mask;
    }
    let mut out = 0u32;
    for i in 0..32u64 {
        if mask & (1 << i) == 0 {
            continue;
        }
        let lo = i * mp;
        let hi = if i == 31 { u64::from(region).max(lo + mp) } else { lo + mp };
        // Its pages from the clipped start, within the `pages` the policy sees.
        let (lo, hi) = (lo.saturating_sub(shift), hi.saturating_sub(shift).min(u64::from(pages)));
        if lo >= hi {
            continue;
        }
        for j in lo / mp..=((hi - 1) / mp).min(31) {
            out |= 1 << j;
        }
    }
    out
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
