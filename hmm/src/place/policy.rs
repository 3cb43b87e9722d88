//! The placement policy trait: every decision about where pages go goes through it.
//!
//! This is the one policy trait: the HMM stack calls it where UVM's and SVM's drivers decide,
//! at six points:
//! - [`Policy::on_device_faults`]: a batch of device faults from a device's compute engine
//!   (its MMU's misses in the replayable fault buffer, deduplicated, sorted by page, at most
//!   256, UVM's `uvm_perf_fault_batch_count`), after which the device replays them;
//! - [`Policy::on_cpu_fault`]: the CPU touched a page held by a device; the plan's demand
//!   migration to the CPU that covers the page is the window the CPU page-fault path migrates
//!   back (its fault-around);
//! - [`Policy::on_access_counter`]: a device's access counter for a region reached its
//!   threshold ([`Policy::counters`] turns the counters on, as
//!   `uvm_perf_access_counter_migration_enable` does);
//! - [`Policy::on_eviction_pressure`]: a device's allocator refused a migration (the device is
//!   full): the order in which to evict;
//! - [`Policy::on_allocation_refused`]: the same refusal, told to every policy of a [`Stack`]
//!   (not only the eviction policy), before the victims are chosen. A device counts as
//!   oversubscribed from its first refusal on, for good ([`Refusals`]): UVMSmart's `over_sub`,
//!   set at the first batch whose pages do not fit, which switches its prefetcher
//!   (`hwprefetch_oversub`) and its delayed-migration modes. Device memory that is merely full
//!   (every page used, nothing refused yet, as at exactly 100 %) is not oversubscription;
//! - [`Policy::on_tick`]: periodically, every [`Policy::tick_ns`] of simulated time.
//!
//! A policy answers with a [`Plan`] (migrations, remote mappings, read copies, a throttle) or a
//! list of victims. It reads the residency through [`Ctx`] and never changes it: the engine
//! applies the plan, makes room, and keeps the books. A plan that leaves a faulted page
//! unreachable is completed by the engine (the page migrates to the faulter, counted as a
//! fallback), so a policy can never hang a workload.

//!
//! # Writing a policy
//!
//! Implement [`Policy`]: a name and the hooks you need (the others keep UVM's defaults). This
//! one keeps a hot set in device memory and the rest in system memory: a device fault on one
//! of the first `hot` pages migrates it, any other is mapped remotely where it is. It runs
//! over the HMM stack on the host platform (the same engine and stack run in the guest over
//! the real devices):
//!
//! ```
//! use hmm::place::engine::host::HostStack;
//! use hmm::place::params::{Params, Value};
//! use hmm::place::policy::{Ctx, Fault, Plan, Policy};
//! use hmm::place::spec::Point;
//! use hmm::place::Loc;
//!
//! /// The first `hot` pages in device memory, the rest reached remotely.
//! struct HotSet {
//!     hot: u32,
//! }
//!
//! impl Policy for HotSet {
//!     fn name(&self) -> &str {
//!         "hot-set"
//!     }
//!     fn on_device_faults(&mut self, _cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
//!         for f in faults {
//!             if f.page < self.hot {
//!                 plan.migrate(f.page, 1, Loc::Dev(dev)); // migrate_vma, DMA into device memory
//!             } else {
//!                 plan.remote(f.page, 1, dev); // a range fault into the device's MMU
//!             }
//!         }
//!     }
//! }
//!
//! // A point: a 256-page stream on a device of 512 pages.
//! let mut w = Params::new();
//! w.set("footprint_pages", Value::Int(256));
//! let point = Point {
//!     id: 0,
//!     label: "hot-set".into(),
//!     devices: vec![512],
//!     run: Params::new(),
//!     cost: Params::new(),
//!     policy: "on-touch".into(), // replaced below
//!     policy_params: Params::new(),
//!     evict: Params::new(),
//!     workloads: vec![("stream".into(), w)],
//!     events: vec![],
//! };
//! let mut prepared = point.prepare(&[512]).unwrap();
//! prepared.policy = Box::new(HotSet { hot: 64 });
//! let clock = std::time::Instant::now();
//! let mut stack =
//!     HostStack::new(prepared.pages, &prepared.capacities, Box::new(move || clock.elapsed().as_nanos() as u64))
//!         .unwrap();
//! let out = prepared.run(&mut stack).unwrap();
//! // What the stack did: 64 pages moved, the rest mapped remotely, and the device's accesses
//! // to those went to system memory.
//! assert_eq!(out.stats.to_dev, 64, "{:?}", out.stats);
//! assert!(out.stats.remote_maps >= 190 && out.stats.remote_lines > 0, "{:?}", out.stats);
//! ```
//!
//! To name it in experiment files, add it to `PLACEMENT` in [`super::policies`] with its
//! parameter table (see `policies/p2_on_touch.rs`, the smallest).

use super::cost::CostModel;
use super::state::State;
use super::{BLOCK, Loc};
use alloc::vec::Vec;

/// One deduplicated device fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The page.
    pub page: u32,
    /// Any of the accesses writes.
    pub write: bool,
}

/// Something a policy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Move pages to a memory. `prefetch` marks pages moved ahead of demand.
    Migrate {
        /// First page.
        first: u32,
        /// Page count.
        pages: u32,
        /// Destination.
        to: Loc,
        /// Moved ahead of demand.
        prefetch: bool,
    },
    /// Map pages for device `dev` where they are (zero-copy, remote access).
    MapRemote {
        /// First page.
        first: u32,
        /// Page count.
        pages: u32,
        /// The device.
        dev: u8,
        /// For reads only: the device's writes still fault ([`Plan::remote_ahead`]).
        read_only: bool,
    },
    /// Drop device `dev`'s remote mappings of pages, so its next accesses there fault (and
    /// the fault path decides again).
    UnmapRemote {
        /// First page.
        first: u32,
        /// Page count.
        pages: u32,
        /// The device.
        dev: u8,
    },
    /// Give device `dev` a read-only copy of pages (read duplication).
    Duplicate {
        /// First page.
        first: u32,
        /// Page count.
        pages: u32,
        /// The device.
        dev: u8,
    },
    /// Clear every device's access counts of the regions of pages `[first, first + pages)`
    /// (the driver's targeted clear of the counter units).
    ClearCounts {
        /// First page.
        first: u32,
        /// Page count.
        pages: u32,
    },
    /// Hold the faulting processor back this long before it replays (thrashing throttle).
    Stall {
        /// Nanoseconds.
        ns: u64,
    },
}

/// A policy's answer.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// In the order they are applied.
    pub actions: Vec<Action>,
}

impl Plan {
    /// Clears every device's access counts of `[first, first + pages)`'s regions.
    pub fn clear_counts(&mut self, first: u32, pages: u32) {
        self.actions.push(Action::ClearCounts { first, pages });
    }
    /// Moves `[first, first + pages)` to `to`, on demand.
    pub fn migrate(&mut self, first: u32, pages: u32, to: Loc) {
        self.actions.push(Action::Migrate { first, pages, to, prefetch: false });
    }
    /// Moves `[first, first + pages)` to `to` ahead of demand.
    pub fn prefetch(&mut self, first: u32, pages: u32, to: Loc) {
        self.actions.push(Action::Migrate { first, pages, to, prefetch: true });
    }
    /// Maps `[first, first + pages)` for `dev` where they are.
    pub fn remote(&mut self, first: u32, pages: u32, dev: u8) {
        self.actions.push(Action::MapRemote { first, pages, dev, read_only: false });
    }
    /// Maps `[first, first + pages)` for `dev` where they are, for reads only, ahead of its
    /// accesses (as `cudaMemAdviseSetAccessedBy` maps eagerly): its reads then reach them
    /// without a fault, its writes still fault.
    pub fn remote_ahead(&mut self, first: u32, pages: u32, dev: u8) {
        self.actions.push(Action::MapRemote { first, pages, dev, read_only: true });
    }
    /// Drops `dev`'s remote mappings of `[first, first + pages)`: its next accesses there fault.
    pub fn unmap_remote(&mut self, first: u32, pages: u32, dev: u8) {
        self.actions.push(Action::UnmapRemote { first, pages, dev });
    }
    /// Whether the plan moves or copies pages (a plan that only maps or unmaps costs no
    /// transfer).
    pub fn moves_pages(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Migrate { .. } | Action::Duplicate { .. }))
    }
    /// Read copies of `[first, first + pages)` for `dev`.
    pub fn duplicate(&mut self, first: u32, pages: u32, dev: u8) {
        self.actions.push(Action::Duplicate { first, pages, dev });
    }
    /// A throttle.
    pub fn stall(&mut self, ns: u64) {
        self.actions.push(Action::Stall { ns });
    }
    /// Empties the plan.
    pub fn clear(&mut self) {
        self.actions.clear();
    }
}

/// What a policy may read.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// Residency and history of every page.
    pub state: &'a State,
    /// The cost model.
    pub cost: &'a CostModel,
    /// Simulated time now, ns.
    pub now: u64,
    /// The devices' access-counter units, as the driver reads them ([`Ctx::count_of`]).
    pub units: Units<'a>,
}

/// The devices' access-counter units as a policy reads them: unit `d` is device `d`'s, and
/// policy page `p` is the unit's page `first_page + p` (the managed range's first virtual
/// page).
#[derive(Debug, Clone, Copy, Default)]
pub struct Units<'a> {
    units: &'a [crate::compute::AccessCounters],
    first_page: u64,
}

impl<'a> Units<'a> {
    /// Device `d`'s unit is `units[d]`; policy page 0 is virtual page `first_page`.
    pub fn new(units: &'a [crate::compute::AccessCounters], first_page: u64) -> Self {
        Units { units, first_page }
    }
}

impl<'a> Ctx<'a> {
    /// A context without counter units (their counts read 0).
    pub fn new(state: &'a State, cost: &'a CostModel, now: u64) -> Self {
        Ctx { state, cost, now, units: Units::default() }
    }

    /// The same context reading `units`.
    pub fn with_units(self, units: Units<'a>) -> Self {
        Ctx { units, ..self }
    }

    /// The count device `dev`'s access-counter unit holds for `page`'s region now
    /// ([`AccessCounters::count_of`](crate::compute::AccessCounters::count_of)), as the
    /// driver reads it at fault time; 0 when the device has no unit or it counted nothing.
    pub fn count_of(&self, dev: u8, page: u32) -> u32 {
        self.units.units.get(dev as usize).map_or(0, |u| u.count_of(self.units.first_page + u64::from(page)))
    }
    /// Managed pages.
    pub fn pages(&self) -> u32 {
        self.state.len()
    }
    /// The `[first, end)` of the aligned window of `size` pages around `p`, clipped to the
    /// managed pages.
    pub fn window(&self, p: u32, size: u32) -> (u32, u32) {
        let first = p / size * size;
        // A window within a block stops where the block's allocation does.
        let end = if size <= BLOCK { self.state.block_range(first / BLOCK).end } else { self.pages() };
        (first, (first + size).min(end))
    }

    /// The faults of a batch (sorted by page) that open a new aligned window of `size`
    /// pages, each with its window `[first, end)`: later faults inside a window already
    /// handled are skipped.
    pub fn fault_windows<'f>(
        &'f self,
        faults: &'f [Fault],
        size: u32,
    ) -> impl Iterator<Item = (&'f Fault, u32, u32)> + 'f {
        let mut done_until = 0;
        faults.iter().filter_map(move |f| {
            if f.page < done_until {
                return None;
            }
            let (first, end) = self.window(f.page, size);
            done_until = end;
            Some((f, first, end))
        })
    }
}

/// Access counters a policy asks the device's counter unit to keep, per region (the unit's
/// modes: [`crate::compute::CounterConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Pages per region (16 = 64 KiB, UVM's sub-region granularity).
    pub region: u32,
    /// Lines counted in a region before a notification
    /// ([`NEVER`](crate::compute::NEVER): none, the unit only counts).
    pub threshold: u32,
    /// Count accesses to the device's own memory too (hotness sampling), not just remote ones.
    pub local_too: bool,
    /// Counts are not reset by a notification; a region at or above the threshold notifies
    /// at every counted access (IPDPS'20).
    pub cumulative: bool,
    /// When a region's count reaches this, every count halves (IPDPS'20's saturation).
    pub halve_at: Option<u32>,
    /// Pages per bit of a notification's sub-region mask (16: 64 KiB).
    pub mask_pages: u32,
    /// The migration a notification asks for is serviced on the device's fault path: the
    /// access that reached the threshold waits for it (one far fault and the transfer), as
    /// in IPDPS'20's delayed migration. Otherwise the driver services it in the background
    /// while the device goes on (UVM's access counters).
    pub sync: bool,
}

impl Counters {
    /// UVM's counters: `threshold` remote lines per `region` pages, reset at each
    /// notification, a mask bit per 64 KiB, serviced in the background.
    pub fn new(region: u32, threshold: u32) -> Self {
        Counters {
            region,
            threshold,
            local_too: false,
            cumulative: false,
            halve_at: None,
            mask_pages: super::BIG,
            sync: false,
        }
    }

    /// What the driver programs into the device's counter unit for these counters (the
    /// servicing choice, `sync`, stays with the driver).
    pub fn unit(self) -> crate::compute::CounterConfig {
        crate::compute::CounterConfig {
            region: self.region,
            threshold: self.threshold,
            count_local: self.local_too,
            cumulative: self.cumulative,
            halve_at: self.halve_at,
            mask_pages: self.mask_pages,
        }
    }
}

/// A device's counter for a region reached its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification {
    /// The device.
    pub dev: u8,
    /// First page of the region.
    pub first: u32,
    /// Pages in the region.
    pub pages: u32,
    /// Lines read in the region since its count was last reset (the last notification,
    /// unless the counters are cumulative).
    pub reads: u32,
    /// Lines written since then.
    pub writes: u32,
    /// The region's sub-regions accessed since its last notification: bit `i` covers pages
    /// `first + i × mask_pages ..` (clipped to the region).
    pub mask: u32,
    /// Pages per mask bit.
    pub mask_pages: u32,
}

impl Notification {
    /// A notification of `lines` reads over the whole region, with every sub-region of
    /// `mask_pages` pages marked accessed (what a policy sees of a region it reads as one).
    pub fn reads(dev: u8, first: u32, pages: u32, lines: u32) -> Self {
        Notification { dev, first, pages, reads: lines, writes: 0, mask: u32::MAX, mask_pages: pages.max(1) }
    }

    /// The sub-regions the mask marks accessed, as `[first, end)` page ranges clipped to the
    /// region.
    pub fn accessed(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mp = self.mask_pages.max(1);
        let end = self.first.saturating_add(self.pages);
        let bits = self.pages.div_ceil(mp).min(32);
        (0..bits).filter(move |&i| self.mask & (1 << i) != 0).map(move |i| {
            let a = self.first + i * mp;
            // Bit 31 holds every sub-region past it.
            let b = if i == 31 { end } else { (a + mp).min(end) };
            (a, b)
        })
    }
}

/// A placement policy. Every hook but [`Policy::name`] has a default: migrate the faulted page
/// to the faulter (UVM's rule 10), bring CPU-touched pages back one at a time, evict in UVM's
/// root-chunk order.
pub trait Policy {
    /// The policy's name, as experiments write it.
    fn name(&self) -> &str;

    /// A batch of device `dev`'s faults.
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        let _ = cx;
        for f in faults {
            plan.migrate(f.page, 1, Loc::Dev(dev));
        }
    }

    /// The CPU touched page `page`, which a device holds. A demand migration to the CPU that
    /// covers `page` is the fault-around window (only the faulting device's pages in it move,
    /// as the fault path selects them); the rest of the plan is applied after the fault.
    fn on_cpu_fault(&mut self, cx: &Ctx<'_>, page: u32, write: bool, plan: &mut Plan) {
        let _ = (cx, write);
        plan.migrate(page, 1, Loc::Cpu);
    }

    /// The access counters this policy wants (none by default: UVM's default on x86/PCIe).
    /// Asked when a device wave starts and again after each fault batch it services and each
    /// counter notification it acts on (plans something for), and the answer holds for the
    /// accesses in between: it may depend on the engine's state and on what the policy does
    /// in those hooks, not on the time of each access nor on notifications it declines (a
    /// unit that notifies at every access, as IPDPS'20's cumulative counters do, is not
    /// reprogrammed at every access; a driver reprograms its counters when it acts).
    fn counters(&self, cx: &Ctx<'_>, dev: u8) -> Option<Counters> {
        let _ = (cx, dev);
        None
    }

    /// A counter notification.
    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        let _ = (cx, n, plan);
    }

    /// Device `dev` must free `need` pages: push victim ranges (pages it holds) until they
    /// cover `need`. The engine skips pages the current plan needs, and completes a short list
    /// in root-chunk order.
    fn on_eviction_pressure(&mut self, cx: &Ctx<'_>, dev: u8, need: u32, victims: &mut Vec<(u32, u32)>) {
        root_chunk_victims(cx, dev, need, victims);
    }

    /// Device `dev`'s allocator refused a migration (it is full and must evict): from now on
    /// the device is oversubscribed. A [`Stack`] tells both its policies, from its
    /// [`Policy::on_eviction_pressure`] (which the engine calls at every refusal, before it
    /// evicts); a policy that is not stacked sees the refusal as its own eviction pressure.
    fn on_allocation_refused(&mut self, cx: &Ctx<'_>, dev: u8) {
        let _ = (cx, dev);
    }

    /// Pages device `dev` keeps free (UVMSmart's free-page buffer, none by default): after
    /// each migration into the device the engine evicts, in [`Policy::on_eviction_pressure`]'s
    /// order, until that many pages are free. The first time it must, the device is
    /// oversubscribed, as at a refusal (UVMSmart's `over_sub` flips when used + incoming +
    /// buffer pages first exceed capacity).
    fn free_buffer(&self, cx: &Ctx<'_>, dev: u8) -> u32 {
        let _ = (cx, dev);
        0
    }

    /// Whether pages evicted from a device stay mapped there remotely (UVM's
    /// `uvm_perf_map_remote_on_eviction`, effective with access-counter migration).
    fn remote_after_eviction(&self) -> bool {
        false
    }

    /// Whether those remote mappings after eviction allow reads only (the device's writes
    /// fault and reach the policy).
    fn remote_read_only(&self) -> bool {
        false
    }

    /// How often [`Policy::on_tick`] runs, in simulated ns (never by default).
    fn tick_ns(&self) -> Option<u64> {
        None
    }

    /// The periodic tick.
    fn on_tick(&mut self, cx: &Ctx<'_>, plan: &mut Plan) {
        let _ = (cx, plan);
    }

    /// Policy-specific counters for the results (name, value).
    fn report(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

impl core::fmt::Debug for dyn Policy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Policy({})", self.name())
    }
}

/// UVM's victim order (`pick_root_chunk_to_evict`): whole 2 MiB root chunks, least recently
/// *allocated into* first (mapping does not refresh a chunk, so this is not an access LRU).
pub fn root_chunk_victims(cx: &Ctx<'_>, dev: u8, need: u32, victims: &mut Vec<(u32, u32)>) {
    let m = cx.state.dev(dev as usize);
    let mut blocks: Vec<u32> = (0..cx.state.blocks()).filter(|&b| m.per_block[b as usize] > 0).collect();
    blocks.sort_by_key(|&b| m.stamp[b as usize]);
    let mut got = 0;
    for b in blocks {
        if got >= need {
            break;
        }
        let r = cx.state.block_range(b);
        victims.push((r.start, r.end - r.start));
        got += m.per_block[b as usize];
    }
}

/// A placement policy paired with a different eviction policy: eviction hooks go to `evict`,
/// everything else to `place` (UVMSmart's prefetcher × eviction combinations).
pub struct Stack {
    /// Decides faults, counters and ticks.
    pub place: alloc::boxed::Box<dyn Policy>,
    /// Chooses victims.
    pub evict: alloc::boxed::Box<dyn Policy>,
    name: alloc::string::String,
}

impl core::fmt::Debug for Stack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Stack({})", self.name)
    }
}

impl Stack {
    /// `place` with `evict`'s victims.
    pub fn new(place: alloc::boxed::Box<dyn Policy>, evict: alloc::boxed::Box<dyn Policy>) -> Self {
        let name = alloc::format!("{}+{}", place.name(), evict.name());
        Stack { place, evict, name }
    }
}

impl Policy for Stack {
    fn name(&self) -> &str {
        &self.name
    }
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        self.place.on_device_faults(cx, dev, faults, plan)
    }
    fn on_cpu_fault(&mut self, cx: &Ctx<'_>, page: u32, write: bool, plan: &mut Plan) {
        self.place.on_cpu_fault(cx, page, write, plan)
    }
    fn counters(&self, cx: &Ctx<'_>, dev: u8) -> Option<Counters> {
        self.place.counters(cx, dev)
    }
    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        self.place.on_access_counter(cx, n, plan)
    }
    fn on_eviction_pressure(&mut self, cx: &Ctx<'_>, dev: u8, need: u32, victims: &mut Vec<(u32, u32)>) {
        // The engine asks for victims exactly when the device's allocator refused: that is
        // the refusal every policy of the stack hears of.
        self.on_allocation_refused(cx, dev);
        self.evict.on_eviction_pressure(cx, dev, need, victims)
    }
    fn free_buffer(&self, cx: &Ctx<'_>, dev: u8) -> u32 {
        self.evict.free_buffer(cx, dev)
    }
    fn on_allocation_refused(&mut self, cx: &Ctx<'_>, dev: u8) {
        self.place.on_allocation_refused(cx, dev);
        self.evict.on_allocation_refused(cx, dev);
    }
    fn remote_after_eviction(&self) -> bool {
        self.place.remote_after_eviction()
    }
    fn remote_read_only(&self) -> bool {
        self.place.remote_read_only()
    }
    fn tick_ns(&self) -> Option<u64> {
        match (self.place.tick_ns(), self.evict.tick_ns()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    fn on_tick(&mut self, cx: &Ctx<'_>, plan: &mut Plan) {
        self.place.on_tick(cx, plan);
        self.evict.on_tick(cx, plan);
    }
    fn report(&self) -> Vec<(&'static str, u64)> {
        let mut r = self.place.report();
        r.extend(self.evict.report());
        r
    }
}

/// The devices whose allocator has refused a migration at least once: oversubscribed, for
/// good (UVMSmart's sticky `over_sub`). A policy keeps one and notes each
/// [`Policy::on_allocation_refused`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals(u8);

impl Refusals {
    /// Device `dev` was refused.
    pub fn note(&mut self, dev: u8) {
        self.0 |= 1 << dev;
    }
    /// Whether device `dev` has been refused: oversubscribed.
    pub fn of(&self, dev: u8) -> bool {
        self.0 & (1 << dev) != 0
    }
}

/// The `until_full` parameter of the prefetching policies (`on-touch`, `tree`,
/// `random-prefetch`): the placement policy (with its defaults) that decides until device
/// memory is first oversubscribed, after which the named policy does ([`UntilFull`]).
/// `none`: the named policy from the first fault.
pub const UNTIL_FULL: super::params::ParamDef = super::params::ParamDef::text(
    "until_full",
    "none",
    &["none", "tree", "on-touch", "random-prefetch"],
    "placement until device memory is first oversubscribed (ISCA'19's runs: tree), then this policy",
);

/// One placement policy until a device's memory is first oversubscribed, another from then on
/// (UVMSmart's `hardware_prefetch` and `hwprefetch_oversub`, which ISCA'19's eviction ×
/// prefetch runs set to the tree prefetcher and then the named one). Per device: a device's
/// faults go to `before` until its allocator first refuses a migration, then to `after`; the
/// batch whose migration was refused was already planned by `before`, as in UVMSmart, which
/// switches after the batch that did not fit. CPU faults, counters and ticks go to `after`
/// once any device is oversubscribed. Victims come from the stack's eviction policy.
pub struct UntilFull {
    before: alloc::boxed::Box<dyn Policy>,
    after: alloc::boxed::Box<dyn Policy>,
    refused: Refusals,
    name: alloc::string::String,
}

impl core::fmt::Debug for UntilFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "UntilFull({})", self.name)
    }
}

impl UntilFull {
    /// `before` until a device is first refused, `after` from then on.
    pub fn new(before: alloc::boxed::Box<dyn Policy>, after: alloc::boxed::Box<dyn Policy>) -> Self {
        let name = alloc::format!("{}-until-full-{}", before.name(), after.name());
        UntilFull { before, after, refused: Refusals::default(), name }
    }

    /// The policy deciding for device `dev` now.
    fn now_for(&mut self, dev: u8) -> &mut dyn Policy {
        if self.refused.of(dev) { &mut *self.after } else { &mut *self.before }
    }

    /// The policy deciding for the CPU and the whole space.
    fn global(&self) -> &dyn Policy {
        if self.refused != Refusals::default() { &*self.after } else { &*self.before }
    }

    fn global_mut(&mut self) -> &mut dyn Policy {
        if self.refused != Refusals::default() { &mut *self.after } else { &mut *self.before }
    }
}

impl Policy for UntilFull {
    fn name(&self) -> &str {
        &self.name
    }
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        self.now_for(dev).on_device_faults(cx, dev, faults, plan)
    }
    fn on_cpu_fault(&mut self, cx: &Ctx<'_>, page: u32, write: bool, plan: &mut Plan) {
        self.global_mut().on_cpu_fault(cx, page, write, plan)
    }
    fn counters(&self, cx: &Ctx<'_>, dev: u8) -> Option<Counters> {
        if self.refused.of(dev) { self.after.counters(cx, dev) } else { self.before.counters(cx, dev) }
    }
    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        self.now_for(n.dev).on_access_counter(cx, n, plan)
    }
    fn on_eviction_pressure(&mut self, cx: &Ctx<'_>, dev: u8, need: u32, victims: &mut Vec<(u32, u32)>) {
        self.on_allocation_refused(cx, dev);
        self.after.on_eviction_pressure(cx, dev, need, victims)
    }
    fn on_allocation_refused(&mut self, cx: &Ctx<'_>, dev: u8) {
        self.refused.note(dev);
        self.before.on_allocation_refused(cx, dev);
        self.after.on_allocation_refused(cx, dev);
    }
    fn remote_after_eviction(&self) -> bool {
        self.global().remote_after_eviction()
    }
    fn remote_read_only(&self) -> bool {
        self.global().remote_read_only()
    }
    fn tick_ns(&self) -> Option<u64> {
        match (self.before.tick_ns(), self.after.tick_ns()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    fn on_tick(&mut self, cx: &Ctx<'_>, plan: &mut Plan) {
        self.global_mut().on_tick(cx, plan)
    }
    fn report(&self) -> Vec<(&'static str, u64)> {
        let mut r = self.before.report();
        r.extend(self.after.report());
        r.push(("oversubscribed_devices", self.refused.0.count_ones() as u64));
        r
    }
}

/// Whether pages `[first, first + pages)` lie in one VA block.
pub fn in_one_block(first: u32, pages: u32) -> bool {
    pages == 0 || first / BLOCK == (first + pages - 1) / BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::params::{Params, Value};
    use crate::place::policies;

    fn build(name: &str, params: &[(&str, &str)]) -> alloc::boxed::Box<dyn Policy> {
        let mut p = Params::new();
        for (k, v) in params {
            p.set(k, Value::Text((*v).into()));
        }
        policies::build(name, &p, &Params::new()).unwrap()
    }

    /// Device 0 holds `held` pages of a space of `pages`, capacity `cap`.
    fn state(pages: u32, caps: &[u32], held: u32) -> State {
        let mut s = State::new(pages, caps);
        for p in 0..held {
            assert!(s.set_loc(p, Loc::Dev(0), 1, false));
        }
        s
    }

    fn faults(pol: &mut dyn Policy, st: &State, dev: u8, pages: &[u32]) -> Plan {
        let cost = CostModel::default();
        let cx = Ctx::new(st, &cost, 10);
        let f: Vec<Fault> = pages.iter().map(|&page| Fault { page, write: false }).collect();
        let mut plan = Plan::default();
        pol.on_device_faults(&cx, dev, &f, &mut plan);
        plan
    }

    /// The engine asks for victims when the device's allocator refused a migration.
    fn refuse(pol: &mut dyn Policy, st: &State, dev: u8) {
        let cost = CostModel::default();
        let cx = Ctx::new(st, &cost, 10);
        let mut v = Vec::new();
        pol.on_eviction_pressure(&cx, dev, 1, &mut v);
    }

    fn remote(plan: &Plan) -> bool {
        plan.actions.iter().any(|a| matches!(a, Action::MapRemote { .. }))
    }

    #[test]
    fn a_device_is_oversubscribed_from_its_first_refused_allocation_not_when_merely_full() {
        let mut p = build("counters", &[("mode", "oversub")]);
        // Full to the last page, nothing refused (a footprint of exactly 100 %): not
        // oversubscribed, the fault migrates.
        let full = state(1024, &[64], 64);
        assert!(full.dev(0).filled);
        let plan = faults(&mut *p, &full, 0, &[600]);
        assert!(!remote(&plan), "merely full is not oversubscribed: {plan:?}");
        // Refused with free pages left (a free-page buffer, or an allocator that refuses a
        // chunk): oversubscribed, delayed migration maps remotely.
        let roomy = state(1024, &[64], 10);
        refuse(&mut *p, &roomy, 0);
        let plan = faults(&mut *p, &roomy, 0, &[700]);
        assert!(remote(&plan), "refused is oversubscribed: {plan:?}");
        // Sticky: still so once the device has room again.
        let empty = state(1024, &[64], 0);
        assert!(remote(&faults(&mut *p, &empty, 0, &[800])));
    }

    #[test]
    fn until_full_runs_the_tree_until_the_first_refusal_then_the_named_prefetcher() {
        let mut p = build("on-touch", &[("until_full", "tree")]);
        assert!(p.name().starts_with("tree-until-full-on-touch-4K"), "{}", p.name());
        let prefetches =
            |plan: &Plan| plan.actions.iter().filter(|a| matches!(a, Action::Migrate { prefetch: true, .. })).count();
        let st = state(2048, &[64, 64], 0);
        assert!(prefetches(&faults(&mut *p, &st, 0, &[0])) > 0, "the tree grows the fault to its big page");
        // Full but never refused: still the tree.
        let full = state(2048, &[64, 64], 64);
        assert!(prefetches(&faults(&mut *p, &full, 0, &[600])) > 0, "no switch before a refusal");
        refuse(&mut *p, &full, 0);
        let plan = faults(&mut *p, &full, 0, &[1200]);
        assert_eq!(
            plan.actions,
            alloc::vec![Action::Migrate { first: 1200, pages: 1, to: Loc::Dev(0), prefetch: false }]
        );
        // Per device: device 1 was never refused.
        assert!(prefetches(&faults(&mut *p, &full, 1, &[1500])) > 0, "dev1 keeps the tree");
        // Without the parameter, the named prefetcher from the first fault.
        let mut plain = build("on-touch", &[]);
        assert_eq!(prefetches(&faults(&mut *plain, &st, 0, &[0])), 0);
    }
}
