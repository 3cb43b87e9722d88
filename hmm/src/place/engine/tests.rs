use super::host::HostStack;
use super::*;
use crate::place::params::{Params, Value};
use crate::place::policies;
use crate::place::policy::{Ctx, Fault, Plan};
use crate::place::workload::{self, Access, Setup};

pub(crate) fn wl(kind: &str, pages: u32, device: Target, params: &[(&str, Value)]) -> Box<dyn Workload> {
    let mut p = Params::new();
    for (k, v) in params {
        p.set(k, v.clone());
    }
    let (common, own) = workload::check(kind, &p).unwrap();
    let iterations = common.int("iterations") as u32;
    let alloc = workload::Alloc::of(&common);
    workload::build(kind, &own, &Setup { pages, device, devices: 2, seed: 3, iterations, alloc }).unwrap()
}

pub(crate) fn policy(name: &str, params: &[(&str, Value)], evict: &str) -> Box<dyn Policy> {
    let mut p = Params::new();
    for (k, v) in params {
        p.set(k, v.clone());
    }
    let mut e = Params::new();
    e.set("order", Value::Text(evict.into()));
    policies::build(name, &p, &e).unwrap()
}

/// A deterministic clock: every reading is 1 µs after the last.
pub(crate) fn ticks() -> super::host::Clock {
    let t = core::cell::Cell::new(0u64);
    Box::new(move || {
        t.set(t.get() + 1000);
        t.get()
    })
}

/// The HMM stack over the host platform, for `pages` pages and devices of `caps`.
pub(crate) fn stack(pages: u32, caps: &[u32]) -> HostStack {
    HostStack::new(pages, caps, ticks()).unwrap()
}

/// The engine's view of the pages as its calls to the mechanism tell it (where each page is
/// after each migration, which devices hold read copies), kept beside the stack and compared
/// with the stack's page tables: before each migration (the engine's `from` is where its state
/// has the pages) and at the end of the run, page by page.
struct Books<'s> {
    stack: &'s mut HostStack,
    loc: Vec<Loc>,
    copies: Vec<u8>,
    /// Mismatches found before a migration.
    diverged: Vec<String>,
}

impl<'s> Books<'s> {
    fn new(stack: &'s mut HostStack) -> Self {
        let n = stack.pages() as usize;
        Books { stack, loc: alloc::vec![Loc::Cpu; n], copies: alloc::vec![0; n], diverged: Vec::new() }
    }

    /// Every page where the engine's view has it, in the page tables and the device MMUs.
    fn agree(&self) -> Result<(), String> {
        if let Some(d) = self.diverged.first() {
            return Err(d.clone());
        }
        for p in 0..self.loc.len() as u32 {
            let real = self.stack.locate(p).map_err(|e| e.to_string())?.0;
            if real != self.loc[p as usize] {
                return Err(format!(
                    "page {p}: the engine has it in {}, the page tables in {real}",
                    self.loc[p as usize]
                ));
            }
            if let Loc::Dev(d) = real {
                let t = self.stack.translate(d, p);
                if !matches!(t, Some(crate::devmmu::Translation { at: crate::devmmu::Where::Local(_), .. })) {
                    return Err(format!("page {p} is in dev{d}'s memory, but its MMU has {t:?}"));
                }
            }
        }
        Ok(())
    }
}

impl Mechanism for Books<'_> {
    fn migrate(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        for p in first..first + pages {
            let real = self.stack.locate(p)?.0;
            if real != from || self.loc[p as usize] != from {
                self.diverged.push(format!(
                    "moving page {p} from {from}: the books have it in {}, the page tables in {real}",
                    self.loc[p as usize]
                ));
            }
        }
        let w = self.stack.migrate(first, pages, from, to)?;
        // A full device takes only some: the books follow what arrived.
        for p in first..first + pages {
            if self.stack.locate(p)?.0 == to {
                self.loc[p as usize] = to;
            }
        }
        Ok(w)
    }
    fn set_capacities(&mut self, capacities: &[u32]) {
        self.stack.set_capacities(capacities);
    }
    fn cpu_fault(&mut self, page: u32, write: bool, first: u32, pages: u32) -> Result<u64, MechError> {
        let w = self.stack.cpu_fault(page, write, first, pages)?;
        for p in first.min(page)..(first + pages).max(page + 1) {
            if self.stack.locate(p)?.0 == Loc::Cpu {
                self.loc[p as usize] = Loc::Cpu;
            }
        }
        Ok(w)
    }
    fn device_translate(&mut self, dev: u8, page: u32, write: bool) -> Result<Option<Loc>, MechError> {
        self.stack.device_translate(dev, page, write)
    }
    fn map_remote(&mut self, first: u32, pages: u32, dev: u8, read_only: bool) -> Result<(), MechError> {
        self.stack.map_remote(first, pages, dev, read_only)
    }
    fn unmap_remote(&mut self, first: u32, pages: u32, dev: u8) -> Result<(), MechError> {
        self.stack.unmap_remote(first, pages, dev)
    }
    fn resident(&mut self, page: u32) -> Result<Loc, MechError> {
        self.stack.resident(page)
    }
    fn can_duplicate(&self) -> bool {
        self.stack.can_duplicate()
    }
    fn duplicate(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError> {
        let w = self.stack.duplicate(first, pages, from, dev)?;
        for p in first..first + pages {
            self.copies[p as usize] |= 1 << dev;
        }
        Ok(w)
    }
    fn drop_copy(&mut self, page: u32, dev: u8) -> Result<(), MechError> {
        self.stack.drop_copy(page, dev)?;
        self.copies[page as usize] &= !(1 << dev);
        Ok(())
    }
    fn access(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        self.stack.access(by, at, page, write)
    }
    fn finish(&mut self) -> Result<(), MechError> {
        self.stack.finish()
    }
    fn now_ns(&self) -> u64 {
        self.stack.now_ns()
    }
    fn on_core(&mut self, core: u32) {
        self.stack.on_core(core);
    }
}

/// Runs workloads (over one device of `cap` pages, or two) on the HMM stack and checks that
/// the engine's view and the stack's page tables agree on every page at the end.
fn run_with(ws: Vec<Box<dyn Workload>>, caps: &[u32], pol: Box<dyn Policy>, cost: CostModel) -> Outcome {
    run_on(ws, caps, pol, cost).0
}

/// [`run_with`], also returning what the stack did (migrations and read-copy calls).
fn run_on(ws: Vec<Box<dyn Workload>>, caps: &[u32], pol: Box<dyn Policy>, cost: CostModel) -> (Outcome, u64) {
    let (bases, pages) = layout(&ws.iter().map(|w| w.pages()).collect::<Vec<_>>());
    let mut m = stack(pages, caps);
    let mut books = Books::new(&mut m);
    let o = {
        let mut e = Engine::new(pages, caps, cost, pol, &mut books, Config { trace_limit: 100, ..Config::default() });
        for (w, b) in ws.into_iter().zip(bases) {
            e.add(w, b);
        }
        e.run().unwrap()
    };
    books.agree().unwrap();
    for w in &o.workloads {
        assert!(w.error.is_none(), "{:?}", w.error);
    }
    (o, m.moves())
}

fn run1(kind: &str, ratio: f64, pol: Box<dyn Policy>) -> Outcome {
    // 16 MiB: eight VA blocks, so whole-block prefetch and eviction have room to work.
    let cap = 4096;
    let pages = (cap as f64 * ratio) as u32;
    run_with(alloc::vec![wl(kind, pages, Target::Dev(0), &[])], &[cap], pol, CostModel::default())
}

#[test]
fn the_engine_and_the_stack_agree_under_every_policy() {
    let kinds = ["stream", "bfs", "pingpong", "broadcast", "zipf", "halo"];
    for d in policies::PLACEMENT {
        for order in policies::p7_evict::ORDERS {
            let (bases, pages) = layout(&[300, 300]);
            let mut m = stack(pages, &[128, 96]);
            let mut books = Books::new(&mut m);
            let o = {
                let mut e = Engine::new(
                    pages,
                    &[128, 96],
                    CostModel::default(),
                    policy(d.name, &[], order),
                    &mut books,
                    Config::default(),
                );
                for (i, b) in bases.iter().enumerate() {
                    e.add(wl(kinds[(i + d.name.len()) % kinds.len()], 300, Target::AnyDev, &[]), *b);
                }
                e.state().check().unwrap();
                e.run().unwrap_or_else(|err| panic!("{} + {order}: {err}", d.name))
            };
            books.agree().unwrap_or_else(|err| panic!("{} + {order}: {err}", d.name));
            assert!(o.stats.sim_ns > 0.0);
            assert!(o.workloads.iter().all(|w| w.error.is_none()), "{} {:?}", d.name, o.workloads);
            for dev in 0..2 {
                let cap = [128, 96][dev as usize];
                assert!(m.device_pages_used(dev).unwrap() <= cap, "{} + {order}: dev{dev} over capacity", d.name);
            }
        }
    }
}

#[test]
fn capacity_holds_and_residency_matches_the_page_tables() {
    let (bases, pages) = layout(&[3000]);
    let mut m = stack(pages, &[1000]);
    {
        let mut e =
            Engine::new(pages, &[1000], CostModel::default(), policy("tree", &[], "lru4k"), &mut m, Config::default());
        e.add(wl("fdtd", 3000, Target::Dev(0), &[]), bases[0]);
        let o = e.run().unwrap();
        assert!(o.stats.evicted > 0);
    }
    let on_dev = (0..pages).filter(|&p| m.locate(p).unwrap().0 == Loc::Dev(0)).count();
    assert_eq!(m.device(0).unwrap().pages_in_use(), on_dev as u64);
    assert!(on_dev <= 1000, "{on_dev} pages on a 1000-page device");
    assert!(on_dev > 900, "device memory stays used: {on_dev}");
}

#[test]
fn tree_prefetch_is_far_ahead_of_on_demand() {
    // placement.md 5.3 (A): on-demand ÷ TBNp is 30–43×, SLp ÷ TBNp about 3×.
    for kind in ["backprop", "fdtd", "hotspot", "bfs"] {
        let demand = run1(kind, 0.9, policy("on-touch", &[], "lru4k")).stats.sim_ns;
        let slp =
            run1(kind, 0.9, policy("on-touch", &[("granularity", Value::Text("64K".into()))], "lru4k")).stats.sim_ns;
        let tree = run1(kind, 0.9, policy("tree", &[], "lru4k")).stats.sim_ns;
        assert!(demand > 10.0 * tree, "{kind}: on-demand {demand} vs tree {tree}");
        assert!(slp > tree && demand > slp, "{kind}: {demand} > {slp} > {tree}");
    }
}

#[test]
fn locality_blind_lru_collapses_and_tbne_degrades_gracefully() {
    // placement.md 5.3 (B), (C): at 110 % LRU 4K without prefetch is far behind TBNe + TBNp;
    // TBNe + TBNp slows down gradually with oversubscription.
    for kind in ["fdtd", "bfs"] {
        let lru = run1(kind, 1.1, policy("on-touch", &[], "lru4k")).stats.sim_ns;
        let tbn = run1(kind, 1.1, policy("tree", &[], "tbne")).stats.sim_ns;
        assert!(lru > 2.0 * tbn, "{kind}: LRU4K {lru} vs TBNe+TBNp {tbn}");
        let base = run1(kind, 0.9, policy("tree", &[], "tbne")).stats.sim_ns;
        let over = run1(kind, 1.5, policy("tree", &[], "tbne")).stats.sim_ns;
        assert!(over > base, "{kind}");
    }
}

#[test]
fn access_counters_migrate_hot_regions_and_map_the_rest() {
    let o = run1(
        "bfs",
        1.25,
        policy("counters", &[("threshold", Value::Int(8)), ("mode", Value::Text("always".into()))], "lfu2m"),
    );
    assert!(o.stats.notifications > 0 && o.stats.remote_lines > 0 && o.stats.to_dev > 0, "{:?}", o.stats);
    let disabled = run1("bfs", 1.25, policy("counters", &[("mode", Value::Text("disabled".into()))], "lfu2m"));
    assert_eq!(disabled.stats.notifications, 0);
    assert_eq!(disabled.stats.remote_lines, 0);
}

/// On-touch placement that records the device's free pages at each batch once its allocator
/// has refused (`Rc` so the test reads them after the engine consumed the policy).
struct FreeAtBatches {
    inner: policies::p2_on_touch::OnTouch,
    refused: bool,
    free: std::rc::Rc<core::cell::RefCell<Vec<u32>>>,
}

impl Policy for FreeAtBatches {
    fn name(&self) -> &str {
        "free-at-batches"
    }
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        if self.refused {
            self.free.borrow_mut().push(cx.state.free(dev as usize));
        }
        self.inner.on_device_faults(cx, dev, faults, plan)
    }
    fn on_allocation_refused(&mut self, _cx: &Ctx<'_>, _dev: u8) {
        self.refused = true;
    }
}

#[test]
fn the_free_page_buffer_is_kept_after_every_migration_once_oversubscribed() {
    let free = std::rc::Rc::new(core::cell::RefCell::new(Vec::new()));
    let place =
        FreeAtBatches { inner: policies::p2_on_touch::OnTouch { window: 1 }, refused: false, free: free.clone() };
    let mut e = Params::new();
    e.set("order", Value::Text("lru4k".into()));
    e.set("free_buffer", Value::Int(10));
    let evict = (policies::EVICTION.build)(&e.checked(policies::EVICTION.params).unwrap());
    let pol = Box::new(crate::place::policy::Stack::new(Box::new(place), evict));
    let cap = 1024;
    let o = run_with(alloc::vec![wl("random", cap * 5 / 4, Target::Dev(0), &[])], &[cap], pol, CostModel::default());
    let free = free.borrow();
    assert!(free.len() > 10 && o.stats.evicted > 0, "{} batches after the refusal, {:?}", free.len(), o.stats);
    // UVMSmart's should_evict_page: every batch after the first refusal finds the buffer
    // (10 % of 1,024 pages) free, not only the one after a refusal.
    let low: Vec<_> = free.iter().enumerate().filter(|&(_, &f)| f < cap / 10).collect();
    assert!(low.is_empty(), "batches (index, free pages) below the buffer: {low:?}");
}

/// UVMSmart's `should_evict_page` counts the buffer from the start: a device with a 10 %
/// buffer is oversubscribed once 90 % of it is used, without any refusal, and a policy that
/// switches when memory first fills (`until_full`) switches then.
#[test]
fn a_free_page_buffer_oversubscribes_the_device_before_it_is_full() {
    let cap = 1024;
    let run = |buffer: i64| {
        let mut p = Params::new();
        p.set("granularity", Value::Text("4K".into()));
        p.set("until_full", Value::Text("tree".into()));
        let mut e = Params::new();
        e.set("order", Value::Text("lru4k".into()));
        e.set("free_buffer", Value::Int(buffer));
        let pol = policies::build("on-touch", &p, &e).unwrap();
        // 95 % of the device: it fits whole.
        run_with(alloc::vec![wl("stream", cap * 95 / 100, Target::Dev(0), &[])], &[cap], pol, CostModel::default())
    };
    let switched = |o: &Outcome| o.policy.iter().find(|(k, _)| *k == "oversubscribed_devices").map(|(_, v)| *v);
    let plain = run(0);
    assert_eq!((plain.stats.evicted, switched(&plain)), (0, Some(0)), "without a buffer it fits");
    let buffered = run(10);
    assert!(buffered.stats.evicted > 0, "the buffer is kept from 90 % on: {:?}", buffered.stats);
    assert_eq!(switched(&buffered), Some(1), "the tree prefetcher hands over at 90 %");
    // Past 90 % the named policy (4 KiB on-touch) faults page by page.
    assert!(buffered.stats.dev_faults > plain.stats.dev_faults, "{:?} {:?}", buffered.stats, plain.stats);
}

#[test]
fn a_fetch_waits_for_the_write_backs_that_free_its_pages() {
    let mut m = stack(512, &[64]);
    let mut e =
        Engine::new(512, &[64], CostModel::default(), policy("on-touch", &[], "lru4k"), &mut m, Config::default());
    // 64 free pages, 4 of them freed by write-backs still in flight (ending at 10 and 20).
    e.pending_free[0].extend([10.0, 10.0, 20.0, 20.0]);
    // 60 are usable now: a fetch of 60 starts at once, the next 3 pages wait for the write-backs.
    assert_eq!(e.gate(0, 60, 5.0), 5.0);
    assert_eq!(e.pending_free[0].len(), 4, "a fetch that has its pages takes no pending ones");
    for p in 0..60 {
        e.st.set_loc(p, Loc::Dev(0), 5, false);
    }
    assert_eq!(e.gate(0, 3, 5.0), 20.0, "the third page's write-back ends at 20");
    assert_eq!(e.gate(0, 1, 30.0), 30.0, "ready by then");
}

#[test]
fn notifications_are_the_counter_units_not_every_counted_access() {
    // UVM's counters at threshold 256: a notification per 256 remote lines at most.
    let o = run1("bfs", 1.25, policy("counters", &[("mode", Value::Text("always".into()))], "lfu2m"));
    assert!(o.stats.notifications > 0, "{:?}", o.stats);
    assert!(o.stats.notifications * 256 <= o.stats.remote_lines, "{:?}", o.stats);
    // IPDPS'20's counters before oversubscription (mode oversub, device not full): the unit
    // counts every access and notifies none.
    let ipdps = |mode: &str| {
        [
            ("mode", Value::Text(mode.into())),
            ("counting", Value::Text("ipdps".into())),
            ("region", Value::Text("64K".into())),
            ("threshold", Value::Int(8)),
        ]
    };
    let o = run1("fdtd", 0.9, policy("counters", &ipdps("oversub"), "lfu2m"));
    assert!(o.stats.local_lines > 0, "{:?}", o.stats);
    assert_eq!(o.stats.notifications, 0, "{:?}", o.stats);
    // Once delayed, every counted access of a hot block notifies; the halvings the unit was
    // programmed for are reported with the policy's counters.
    let o = run1("bfs", 1.25, policy("counters", &ipdps("always"), "lfu2m"));
    assert!(o.stats.notifications > 0 && o.stats.notifications < o.stats.accesses, "{:?}", o.stats);
    assert!(o.policy.contains(&("counter_halvings", 0)), "{:?}", o.policy);
}

/// A policy that counts how often the engine asks it for its counter unit
/// ([`Policy::counters`]), forwarding everything to `inner`.
struct CountsAsks {
    inner: Box<dyn Policy>,
    asks: std::rc::Rc<core::cell::Cell<u64>>,
}

impl Policy for CountsAsks {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        self.inner.on_device_faults(cx, dev, faults, plan)
    }
    fn on_cpu_fault(&mut self, cx: &Ctx<'_>, page: u32, write: bool, plan: &mut Plan) {
        self.inner.on_cpu_fault(cx, page, write, plan)
    }
    fn counters(&self, cx: &Ctx<'_>, dev: u8) -> Option<crate::place::policy::Counters> {
        self.asks.set(self.asks.get() + 1);
        self.inner.counters(cx, dev)
    }
    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &crate::place::policy::Notification, plan: &mut Plan) {
        self.inner.on_access_counter(cx, n, plan)
    }
    fn on_eviction_pressure(&mut self, cx: &Ctx<'_>, dev: u8, need: u32, victims: &mut Vec<(u32, u32)>) {
        self.inner.on_eviction_pressure(cx, dev, need, victims)
    }
    fn on_allocation_refused(&mut self, cx: &Ctx<'_>, dev: u8) {
        self.inner.on_allocation_refused(cx, dev)
    }
    fn free_buffer(&self, cx: &Ctx<'_>, dev: u8) -> u32 {
        self.inner.free_buffer(cx, dev)
    }
    fn remote_after_eviction(&self) -> bool {
        self.inner.remote_after_eviction()
    }
    fn remote_read_only(&self) -> bool {
        self.inner.remote_read_only()
    }
    fn tick_ns(&self) -> Option<u64> {
        self.inner.tick_ns()
    }
    fn on_tick(&mut self, cx: &Ctx<'_>, plan: &mut Plan) {
        self.inner.on_tick(cx, plan)
    }
    fn report(&self) -> Vec<(&'static str, u64)> {
        self.inner.report()
    }
}

/// IPDPS'20's counters (`mode`, 64 KiB regions, threshold 8) on bfs at `ratio`: the run and
/// how many times it asked the policy's `counters`, after checking that the same run without
/// the counting wrapper has the same stats.
fn ipdps_asks(mode: &str, ratio: f64) -> (Outcome, u64) {
    let params = [
        ("mode", Value::Text(mode.into())),
        ("counting", Value::Text("ipdps".into())),
        ("region", Value::Text("64K".into())),
        ("threshold", Value::Int(8)),
    ];
    let asks = std::rc::Rc::new(core::cell::Cell::new(0));
    let counted = CountsAsks { inner: policy("counters", &params, "lfu2m"), asks: asks.clone() };
    let o = run1("bfs", ratio, Box::new(counted));
    let plain = run1("bfs", ratio, policy("counters", &params, "lfu2m"));
    assert_eq!(format!("{:?}", o.stats), format!("{:?}", plain.stats));
    (o, asks.get())
}

/// The counter unit is programmed when a wave starts and after each batch or notification
/// it services, not at every access (under TCG asking at every access cost several per cent
/// of a point); what the unit counts and notifies is unchanged. IPDPS'20's counters before
/// oversubscription count every access and notify none, so only waves and batches ask.
#[test]
fn the_counter_unit_is_asked_for_once_per_wave_batch_or_notification() {
    let (o, asks) = ipdps_asks("oversub", 0.9);
    assert!(o.stats.local_lines > 0 && o.stats.batches > 0, "{:?}", o.stats);
    assert_eq!(o.stats.notifications, 0, "{:?}", o.stats);
    assert!(asks > 0);
    assert!(asks * 20 < o.stats.accesses, "{asks} asks for {} accesses: {:?}", o.stats.accesses, o.stats);
}

/// A notification the policy declines does not ask for the counter programming again:
/// IPDPS'20's cumulative counters notify at nearly every access once a region is hot, and the
/// policy declines those of regions with nothing mapped remotely.
#[test]
fn a_declined_notification_keeps_the_counter_programming() {
    let (o, asks) = ipdps_asks("always", 1.25);
    let acted = o.policy.iter().find(|(n, _)| *n == "counter_migrations").map_or(0, |x| x.1);
    assert!(o.stats.notifications > 1000 && acted > 0, "{:?} {:?}", o.stats, o.policy);
    assert!(
        asks * 20 < o.stats.notifications,
        "{asks} asks for {} notifications ({acted} acted on): {:?}",
        o.stats.notifications,
        o.stats
    );
}

#[test]
fn counter_migrations_on_the_fault_path_make_the_device_wait() {
    let params = |service: &str| {
        [("threshold", Value::Int(8)), ("mode", Value::Text("always".into())), ("service", Value::Text(service.into()))]
    };
    let bg = run1("fdtd", 1.25, policy("counters", &params("background"), "lfu2m"));
    let fault = run1("fdtd", 1.25, policy("counters", &params("fault"), "lfu2m"));
    assert!(bg.stats.notifications > 0 && fault.stats.notifications > 0);
    // Each notification now costs the device a far fault and the transfer.
    let far = CostModel::default().far_fault_ns * fault.stats.notifications as f64;
    assert!(fault.stats.sim_ns > bg.stats.sim_ns + far / 4.0, "{} vs {} (+{far})", fault.stats.sim_ns, bg.stats.sim_ns);
}

/// IPDPS'20's fault path with its counting (UVMSmart): a hot block's remote mappings go from
/// the device's MMU, its next accesses fault there (each faulted page a far fault, in the
/// batches any fault takes) and migrate; every page's data is checked at the end.
#[test]
fn ipdps_hot_blocks_come_over_through_device_faults() {
    let params = |service: &str| {
        [
            ("counting", Value::Text("ipdps".into())),
            ("region", Value::Text("64K".into())),
            ("threshold", Value::Int(8)),
            ("mode", Value::Text("always".into())),
            ("service", Value::Text(service.into())),
        ]
    };
    let bg = run1("fdtd", 1.0, policy("counters", &params("background"), "lfu2m"));
    let fault = run1("fdtd", 1.0, policy("counters", &params("fault"), "lfu2m"));
    let get = |o: &Outcome, k| o.policy.iter().find(|(n, _)| *n == k).map_or(0, |x| x.1);
    assert!(get(&bg, "counter_migrations") > 0 && get(&bg, "counter_unmaps") == 0, "{:?}", bg.policy);
    assert!(get(&fault, "counter_unmaps") > 0 && get(&fault, "counter_migrations") == 0, "{:?}", fault.policy);
    assert!(fault.stats.dev_faults > bg.stats.dev_faults, "{:?} vs {:?}", fault.stats, bg.stats);
    assert_eq!(fault.stats.to_dev, bg.stats.to_dev, "every page still comes over");
}

/// Under UVMSmart's allocation an allocation's rest smaller than 2 MiB leaves a hole after it
/// in its block (fdtd: the 64 KiB `_fict_`): nothing moves into the hole, not even a 2 MiB
/// on-touch window or the random prefetcher's pick, so the device receives exactly what the
/// workload allocates; a tree pruned by TBNe stops at the allocation's root.
#[test]
fn nothing_moves_into_the_hole_after_an_allocation() {
    let alloc = [("allocation", Value::Text("uvmsmart".into())), ("iterations", Value::Int(1))];
    let w = || wl("fdtd", 1100, Target::Dev(0), &alloc);
    let (allocated, pages) = (w().allocated_pages(), w().pages());
    assert_eq!(w().extents(), alloc::vec![(0, 16)], "_fict_'s 64 KiB");
    assert!(pages > allocated, "{pages} pages laid out, {allocated} allocated");
    // 2 MiB windows bring every allocated page, padding included, and nothing else.
    let whole = policy("on-touch", &[("granularity", Value::Text("2M".into()))], "lru2m");
    let o = run_with(alloc::vec![w()], &[8192], whole, CostModel::default());
    assert_eq!(o.stats.to_dev, allocated as u64, "{:?}", o.stats);
    // The random prefetcher picks within the allocation: at most what it allocates.
    let o = run_with(alloc::vec![w()], &[8192], policy("random-prefetch", &[], "random"), CostModel::default());
    assert!(o.stats.prefetched > 0 && o.stats.to_dev <= allocated as u64, "{:?}", o.stats);
    // Oversubscribed, TBNe evicts and prunes inside the allocations (every page checked).
    let o = run_with(alloc::vec![w()], &[allocated * 9 / 10], policy("tree", &[], "tbne"), CostModel::default());
    assert!(o.stats.evicted > 0, "{:?}", o.stats);
}

#[test]
fn thrashing_pages_are_throttled_then_pinned() {
    let pol =
        policy("thrashing", &[("lapse_us", Value::Float(500_000.0)), ("pin_threshold", Value::Int(2))], "root-chunk");
    let w = wl("pingpong", 64, Target::Dev(0), &[("iterations", Value::Int(16))]);
    let o = run_with(alloc::vec![w], &[1024], pol, CostModel::default());
    let get = |k| o.policy.iter().find(|(n, _)| *n == k).map(|x| x.1).unwrap();
    assert!(get("throttles") > 0 && get("pins") > 0, "{:?}", o.policy);
    assert!(o.stats.remote_lines > 0, "pinned pages are reached remotely");
}

/// Griffin's migration to the heaviest user runs on the devices' counter units: a shared
/// array read by both devices has regions moved between them, with fewer notifications than
/// counted accesses (the units notify from the threshold on, the policy counts nothing).
#[test]
fn the_heaviest_user_comes_from_the_counter_units() {
    let w = || alloc::vec![wl("broadcast", 200, Target::Dev(0), &[("writes", Value::Float(0.0))])];
    let pol = policy("first-touch", &[("heaviest", Value::Int(64))], "root-chunk");
    let o = run_with(w(), &[512, 512], pol, CostModel::default());
    let moves = o.policy.iter().find(|(n, _)| *n == "heaviest_user_moves").map_or(0, |x| x.1);
    assert!(moves > 0 && o.stats.dev_to_dev > 0, "{:?} {:?}", o.policy, o.stats);
    assert!(o.stats.notifications > 0, "{:?}", o.stats);
    assert!(o.stats.notifications < o.stats.accesses, "{:?}", o.stats);
}

#[test]
fn duplication_serves_a_broadcast_locally() {
    let mk = || alloc::vec![wl("broadcast", 200, Target::Dev(0), &[("writes", Value::Float(0.0))])];
    let dup = run_with(mk(), &[512, 512], policy("duplicate", &[], "root-chunk"), CostModel::default());
    let touch = run_with(mk(), &[512, 512], policy("on-touch", &[], "root-chunk"), CostModel::default());
    assert!(dup.stats.duplicates > 0);
    assert!(dup.stats.dev_to_dev < touch.stats.dev_to_dev, "{} vs {}", dup.stats.dev_to_dev, touch.stats.dev_to_dev);
    let w = alloc::vec![wl("broadcast", 200, Target::Dev(0), &[("writes", Value::Float(0.05))])];
    let o = run_with(w, &[512, 512], policy("duplicate", &[], "root-chunk"), CostModel::default());
    assert!(o.stats.invalidations > 0, "writes drop copies");
}

#[test]
fn any_device_phases_spread_over_devices() {
    let ws = (0..4).map(|_| wl("stream", 256, Target::AnyDev, &[])).collect();
    let o = run_with(ws, &[600, 600], policy("tree", &[], "root-chunk"), CostModel::default());
    let busy: Vec<f64> = o.procs.iter().filter(|p| p.name.starts_with("dev")).map(|p| p.busy_ns).collect();
    assert!(busy.iter().all(|&b| b > 0.0), "{:?}", o.procs);
    assert!(o.trace.iter().any(|e| e.kind == "phase"));
}

/// A workload that touches a page outside its footprint.
struct Bad;
impl Workload for Bad {
    fn name(&self) -> &str {
        "bad"
    }
    fn pages(&self) -> u32 {
        16
    }
    fn next_step(&mut self) -> Option<Vec<Phase>> {
        let accesses =
            alloc::vec![Access { page: 3, write: true, lines: 1 }, Access { page: 99, write: false, lines: 1 }];
        Some(alloc::vec![Phase { name: "bad", on: Target::Dev(0), accesses }])
    }
}

#[test]
fn a_bad_workload_is_reported_and_the_rest_continues() {
    let (bases, pages) = layout(&[16, 300]);
    let mut m = stack(pages, &[512]);
    let mut e =
        Engine::new(pages, &[512], CostModel::default(), policy("tree", &[], "root-chunk"), &mut m, Config::default());
    e.add(Box::new(Bad), bases[0]);
    e.add(wl("stream", 300, Target::Dev(0), &[]), bases[1]);
    let o = e.run().unwrap();
    let err = o.workloads[0].error.as_deref().unwrap();
    assert!(err.contains("bad accessed page 99 outside its 16 pages"), "{err}");
    assert!(o.workloads[1].error.is_none() && o.workloads[1].steps == 1);
}

#[test]
fn measured_costs_replace_the_model() {
    let cost = CostModel { source: crate::place::cost::Source::Measured, ..CostModel::default() };
    let (o, moves) =
        run_on(alloc::vec![wl("stream", 300, Target::Dev(0), &[])], &[512], policy("tree", &[], "root-chunk"), cost);
    // The test clock advances 1 µs a reading, and the stack reads it before and after each
    // move: each transfer is charged what the mechanism measured, 1 µs, not the cost model.
    assert!(moves > 0);
    assert_eq!(o.stats.transfer_ns, 1000.0 * moves as f64, "{:?}", o.stats);
}

#[test]
fn cpu_touches_bring_pages_back() {
    let o = run1("pingpong", 0.1, policy("on-touch", &[], "root-chunk"));
    assert!(o.stats.cpu_faults > 0 && o.stats.to_cpu > 0);
}

/// The stack names what it caught: the page, what was done, where the engine and the page
/// tables have it, as a value a caller can match and text a person can read.
#[test]
fn stack_errors_say_what_failed() {
    let mut m = stack(4, &[8, 8]);
    let e = m.migrate(1, 1, Loc::Dev(0), Loc::Cpu).unwrap_err();
    assert_eq!(e, MechError::Misplaced { page: 1, op: PageOp::Migrate, expected: Loc::Dev(0), found: Loc::Cpu });
    assert!(e.to_string().contains("page 1") && e.to_string().contains("have it in cpu"), "{e}");
    assert_eq!(m.migrate(9, 1, Loc::Cpu, Loc::Dev(0)).unwrap_err(), MechError::PageOutOfRange(9));
    let e = m.drop_copy(2, 1).unwrap_err();
    assert_eq!(e, MechError::Copy { page: 2, dev: 1, fault: CopyFault::Missing });
    assert_eq!(e.to_string(), "dev1 holds no read copy of page 2");
    m.duplicate(2, 1, Loc::Cpu, 0).unwrap();
    assert_eq!(
        m.duplicate(2, 1, Loc::Cpu, 0).unwrap_err(),
        MechError::Copy { page: 2, dev: 0, fault: CopyFault::AlreadyHeld }
    );
    let e = m.access(Loc::Dev(0), Loc::Dev(0), 2, true).unwrap_err();
    assert_eq!(e, MechError::Copy { page: 2, dev: 0, fault: CopyFault::Written });
    // A CPU write the engine made without dropping the copy leaves it stale: the end's check
    // finds it.
    m.access(Loc::Cpu, Loc::Cpu, 2, true).unwrap();
    let e = m.finish().unwrap_err();
    assert_eq!(e, MechError::Data { page: 2, copy: Some(0), fault: DataFault::Writes { found: 0, made: 1 } });
    assert_eq!(e.to_string(), "dev0's read copy of page 2: 0 writes found, 1 made");
    m.drop_copy(2, 0).unwrap();
    m.finish().unwrap();
    let e = m.access(Loc::Dev(1), Loc::Dev(1), 3, false).unwrap_err();
    assert_eq!(
        e,
        MechError::Misplaced { page: 3, op: PageOp::Access(Loc::Dev(1)), expected: Loc::Dev(1), found: Loc::Cpu }
    );
}

/// A device error keeps the operation it interrupted in its text.
#[test]
fn device_errors_name_the_operation() {
    let op = DeviceOp::Migrate { first: 4, pages: 2, from: Loc::Cpu, to: Loc::Dev(1) };
    let e = MechError::Device { op, cause: "migrate_vma_setup: EINVAL".into() };
    assert_eq!(e.to_string(), "migrating pages 4..6 cpu->dev1: migrate_vma_setup: EINVAL");
    let e =
        MechError::Short { first: 4, pages: 2, from: Loc::Cpu, to: Loc::Dev(1), moved: 1, why: ShortWhy::CopyFailed };
    assert_eq!(
        e.to_string(),
        "migrating pages 4..6 cpu->dev1: 1 of 2 moved (a copy failed; the guest's log names the copy engine's error)"
    );
}

fn four_workloads(on: Target, cpus: u32, sched: Option<&str>) -> Outcome {
    let ws = (0..4).map(|i| wl(["stream", "bfs", "zipf", "pingpong"][i], 256, on, &[])).collect::<Vec<_>>();
    let (bases, pages) = layout(&ws.iter().map(|w| w.pages()).collect::<Vec<_>>());
    let mut m = stack(pages, &[300, 300]);
    let cfg = Config { cpus, ..Config::default() };
    let mut e = Engine::new(pages, &[300, 300], CostModel::default(), policy("tree", &[], "root-chunk"), &mut m, cfg);
    if let Some(name) = sched {
        e.set_scheduler(crate::place::sched::build(name).unwrap());
    }
    for (w, b) in ws.into_iter().zip(bases) {
        e.add(w, b);
    }
    let o = e.run().unwrap();
    assert!(o.workloads.iter().all(|w| w.error.is_none()), "{:?}", o.workloads);
    o
}

/// `eft` is the default: a run that names no scheduler places every phase as one that names
/// `eft` does, to the bit (four workloads on any device, two CPU cores for the ping-pong's CPU
/// phases). What eft chooses is tested on known graphs in `sched::tests`.
#[test]
fn eft_is_the_default() {
    let bits = |o: &Outcome| {
        let procs: Vec<(String, u64, u32)> =
            o.procs.iter().map(|p| (p.name.clone(), p.busy_ns.to_bits(), p.phases)).collect();
        (o.scheduler, o.stats.sim_ns.to_bits(), o.stats.dev_to_dev, o.stats.to_dev, o.stats.to_cpu, procs)
    };
    let (default, named) = (four_workloads(Target::AnyDev, 2, None), four_workloads(Target::AnyDev, 2, Some("eft")));
    assert_eq!(default.scheduler, "eft");
    assert_eq!(bits(&default), bits(&named));
    assert!(default.procs.iter().filter(|p| p.name.starts_with("dev")).all(|p| p.phases > 0), "{:?}", default.procs);
}

#[test]
fn every_scheduler_places_any_phases_and_reports_utilisation() {
    let mut makespans = Vec::new();
    for &name in crate::place::sched::NAMES {
        let o = four_workloads(Target::Any, 1, Some(name));
        assert_eq!(o.scheduler, name);
        for p in &o.procs {
            assert_eq!(p.utilisation, p.busy_ns / o.stats.sim_ns, "{name} {}", p.name);
            assert!(p.utilisation <= 1.0 + 1e-9, "{name} {}: {}", p.name, p.utilisation);
        }
        let phases = |n: &str| o.procs.iter().find(|p| p.name == n).unwrap().phases;
        match name {
            // Every `any` phase on device 0; only the ping-pong's own CPU phases on the core.
            "static" => assert_eq!(phases("dev1"), 0, "{:?}", o.procs),
            // Cycles over all three processors, so the core runs `any` phases too.
            "round-robin" => assert!(phases("dev1") > 0 && phases("cpu0") > phases("dev1"), "{:?}", o.procs),
            // The data starts in system memory and a device pays a launch and its faults: the
            // cost-aware schedulers run `any` phases on the core too (static: only its 4).
            _ => assert!(phases("cpu0") > 4, "{name}: {:?}", o.procs),
        }
        makespans.push((name, o.stats.sim_ns));
    }
    let st = makespans.iter().find(|m| m.0 == "static").unwrap().1;
    assert!(makespans.iter().any(|m| m.1 != st), "{makespans:?}");
}

#[test]
fn a_link_carries_an_eviction_out_while_a_fetch_comes_in() {
    // PCIe is full duplex (UVMSmart queues reads and writes apart): under oversubscription the
    // evictions out of dev0 and the migrations into it overlap on link0.
    let pages = 1200;
    let ws = alloc::vec![wl("stream", pages, Target::Dev(0), &[])];
    let (bases, total) = layout(&[pages]);
    let mut m = stack(total, &[1000]);
    let o = {
        let cfg = Config { trace_limit: 100_000, ..Config::default() };
        let mut e = Engine::new(total, &[1000], CostModel::default(), policy("on-touch", &[], "lru4k"), &mut m, cfg);
        for (w, b) in ws.into_iter().zip(bases) {
            e.add(w, b);
        }
        e.run().unwrap()
    };
    assert!(o.stats.evicted > 0, "no eviction: {:?}", o.stats);
    let on_link = |kind: &str| -> Vec<(f64, f64)> {
        o.trace.iter().filter(|e| e.lane == "link0" && e.kind == kind).map(|e| (e.t, e.t + e.dur)).collect()
    };
    let (outs, ins) = (on_link("evict"), on_link("migrate"));
    assert!(!outs.is_empty() && !ins.is_empty(), "trace: {} events", o.trace.len());
    let overlap = outs.iter().any(|&(a, b)| ins.iter().any(|&(c, d)| a < d && c < b));
    assert!(overlap, "no eviction overlaps a fetch on link0: {outs:?} / {ins:?}");
}

#[test]
fn each_workload_counts_what_happened_to_its_own_pages() {
    // Two workloads in two processes competing for 256 pages of one device: each one's
    // counters are its pages', they add up to the point's, and the process is reported.
    let (bases, pages) = layout(&[300, 300]);
    let mut m = stack(pages, &[256]);
    let mut e =
        Engine::new(pages, &[256], CostModel::default(), policy("on-touch", &[], "lru4k"), &mut m, Config::default());
    e.add_in(wl("stream", 300, Target::Dev(0), &[]), bases[0], 0);
    e.add_in(wl("random", 300, Target::Dev(0), &[]), bases[1], 1);
    let o = e.run().unwrap();
    let w = &o.workloads;
    assert_eq!((w[0].process, w[1].process), (0, 1));
    let s = &o.stats;
    assert!(s.evicted > 0, "no competition for the device: {s:?}");
    assert_eq!(w[0].counts.to_dev + w[1].counts.to_dev, s.to_dev);
    assert_eq!(w[0].counts.to_cpu + w[1].counts.to_cpu, s.to_cpu);
    assert_eq!(w[0].counts.evicted + w[1].counts.evicted, s.evicted);
    assert_eq!(w[0].counts.faults + w[1].counts.faults, s.dev_faults + s.cpu_faults);
    assert!(w.iter().all(|w| w.counts.to_dev > 0 && w.counts.faults > 0), "{w:?}");
}

/// A stream over 256 pages, fitting its device, with the device resized to `events`.
fn resized(events: &[crate::place::spec::Resize]) -> Outcome {
    let (bases, pages) = layout(&[256]);
    let mut m = stack(pages, &[256]);
    let cfg = Config { trace_limit: 1000, ..Config::default() };
    let mut e = Engine::new(pages, &[256], CostModel::default(), policy("on-touch", &[], "lru4k"), &mut m, cfg);
    e.set_events(events);
    e.add(wl("stream", 256, Target::Dev(0), &[("iterations", Value::Int(3))]), bases[0]);
    e.run().unwrap()
}

#[test]
fn a_device_resized_mid_run_evicts_what_no_longer_fits_and_grows_back() {
    use crate::place::spec::Resize;
    let alone = resized(&[]);
    assert_eq!(alone.stats.evicted, 0, "{:?}", alone.stats);
    // Halfway through, the device shrinks to 64 pages: the stream's pages past that are
    // evicted (by LRU), and it thrashes until it ends; the data check at the end holds.
    let half = alone.stats.sim_ns as u64 / 2;
    let shrunk = resized(&[Resize { at_ns: half, device: 0, pages: 64 }]);
    assert!(shrunk.stats.evicted >= 256 - 64, "{:?}", shrunk.stats);
    assert!(shrunk.stats.sim_ns > alone.stats.sim_ns);
    let ev: Vec<_> = shrunk.trace.iter().filter(|e| e.kind == "resize").collect();
    assert_eq!(ev.len(), 1, "{:?}", shrunk.trace.iter().map(|e| e.kind).collect::<Vec<_>>());
    assert!(ev[0].t >= half as f64 && ev[0].pages == 64, "{ev:?}");
    // Shrunk from the start and grown back at once: the same run as never resized, but for
    // the evictions the shrink needed (none: nothing was there yet).
    let back = resized(&[Resize { at_ns: 0, device: 0, pages: 64 }, Resize { at_ns: 0, device: 0, pages: 256 }]);
    assert_eq!(back.stats.evicted, 0, "{:?}", back.stats);
    assert_eq!(back.stats.to_dev, alone.stats.to_dev);
}
