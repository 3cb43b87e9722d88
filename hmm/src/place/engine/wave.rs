//! Running phases: a wave of a device phase on the device's compute engine
//! ([`crate::compute::run`], with [`WaveKernel`] and [`WaveDevice`]), a wave of a CPU phase on a
//! CPU core with its CPU faults in the real page-fault path, the batch service through the
//! policy, access counters, and the accounting of each access.

use super::{Engine, MechError, MirrorFault, PageOp};
use crate::compute;
use crate::place::cost::Source;
use crate::place::policy::{Ctx, Fault, Notification, Plan, Units};
use crate::place::workload::Access;
use crate::place::{Loc, PAGE};
use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

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
    fn weight(&self, lane: usize) -> u32 {
        self.accesses[lane].lines as u32
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
    /// When the last access completed (what an access-counter notification it raised sees).
    at: f64,
    /// The access counters' notifications are serviced on the fault path (the device waits).
    sync: bool,
    /// What the policy last said of the counter unit ([`Policy::counters`]), until a batch
    /// service or a notification the policy acted on (the only changes to the state it reads
    /// within a wave).
    ///
    /// [`Policy::counters`]: crate::place::policy::Policy::counters
    asked: Option<Option<crate::place::policy::Counters>>,
    /// The last access time converted to whole ns: (its bits, the ns).
    now_ns: (u64, u64),
    /// [`WaveDevice::line_time`]'s products: local ([0]) and from system memory ([1]), by
    /// line count (the cost model does not change within a wave).
    line_times: [[Option<f64>; LINE_TIMES]; 2],
}

/// Line counts whose access time a wave remembers (an access covers at most a page's 32
/// lines).
const LINE_TIMES: usize = 33;

impl WaveDevice<'_, '_> {
    /// `lines` lines of memory at `at` accessed by this device: `lines × line_ns_on`, as
    /// [`Engine::touch`] has it (the same product, remembered per line count).
    fn line_time(&mut self, at: Loc, lines: u16) -> f64 {
        let by = Loc::Dev(self.d);
        // Local memory and system memory are kept (a peer's memory is not: peers differ).
        let kept = match at {
            _ if at == by => self.line_times[0].get_mut(lines as usize),
            Loc::Cpu => self.line_times[1].get_mut(lines as usize),
            Loc::Dev(_) => None,
        };
        if let Some(Some(t)) = kept {
            return *t;
        }
        let t = lines as f64 * self.e.cost.line_ns_on(0, by, at);
        if let Some(slot) = kept {
            *slot = Some(t);
        }
        t
    }

    /// `t as u64`, the last conversion remembered.
    fn whole_ns(&mut self, t: f64) -> u64 {
        match self.now_ns {
            (bits, ns) if bits == t.to_bits() => ns,
            _ => {
                let ns = t as u64;
                self.now_ns = (t.to_bits(), ns);
                ns
            }
        }
    }

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
        // What `Engine::touch` computes, the conversions remembered (the kernel target's
        // floating point is software: a conversion or a product is a call, at each of a
        // wave's up to millions of accesses, and most have the same time and line count).
        let now_ns = self.whole_ns(now);
        self.e.make_access(by, at, p, &a, now_ns)?;
        let t = self.line_time(at, a.lines);
        if self.serviced {
            self.at = now + t;
            self.clock += t;
        } else {
            self.at = now;
            self.busy += t;
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

    /// The device's counter unit, programmed as the policy asks now
    /// ([`Policy::counters`](crate::place::policy::Policy::counters)).
    fn access_counters(&mut self) -> Option<&mut compute::AccessCounters> {
        let c = match self.asked {
            Some(c) => c,
            None => {
                let at = self.whole_ns(self.at);
                let cx = Ctx::new(&self.e.st, &self.e.cost, at).with_units(Units::new(&self.e.counter_units, 0));
                let c = self.e.policy.counters(&cx, self.d);
                self.sync = c.is_some_and(|c| c.sync);
                self.e.counter_units.get_mut(self.d as usize)?.configure(c.map(crate::place::policy::Counters::unit));
                self.asked = Some(c);
                c
            }
        };
        let unit = self.e.counter_units.get_mut(self.d as usize)?;
        c.map(|_| unit)
    }

    /// A notification: the policy plans
    /// ([`Policy::on_access_counter`](crate::place::policy::Policy::on_access_counter)); on the
    /// fault path (`sync`) a plan that moves pages costs one far fault and the transfer, which
    /// the device waits for, else it is serviced in the background while the device goes on
    /// (the links are busy). A plan that only maps or unmaps costs nothing here: the faults an
    /// unmapping causes are charged as faults.
    fn notify(
        &mut self,
        _lane: usize,
        n: &compute::CounterNotification,
        _c: &mut compute::Counters,
    ) -> Result<(), MechError> {
        let at = self.whole_ns(self.at);
        let (e, d, now) = (&mut *self.e, self.d, self.at);
        e.stats.notifications += 1;
        let first = n.first as u32;
        let pages = n.pages.min(e.st.len().saturating_sub(first));
        let note = Notification {
            dev: d,
            first,
            pages,
            reads: n.reads,
            writes: n.writes,
            mask: n.mask,
            mask_pages: n.mask_pages,
        };
        let mut plan = Plan::default();
        let cx = Ctx::new(&e.st, &e.cost, at).with_units(Units::new(&e.counter_units, 0));
        e.policy.on_access_counter(&cx, &note, &mut plan);
        if plan.actions.is_empty() {
            // Declined: nothing changed that the counter programming may depend on.
            return Ok(());
        }
        self.asked = None;
        let lane = format!("dev{d}");
        if self.sync && plan.moves_pages() {
            let done = e.apply(&plan, now + e.cost.far_fault_ns)?;
            e.event(now, done - now, &lane, "counter", pages, "fault path");
            if self.serviced {
                self.clock = self.clock.max(done);
            } else {
                self.wait = self.wait.max(done);
            }
        } else {
            e.apply(&plan, now)?;
            e.event(now, 0.0, &lane, "counter", pages, "");
        }
        Ok(())
    }

    fn service(
        &mut self,
        groups: &[compute::FaultGroup],
        _c: &mut compute::Counters,
    ) -> Result<(), (compute::FaultGroup, MechError)> {
        self.asked = None;
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

impl Engine<'_> {
    /// Runs one wave of run `r`.
    pub(super) fn wave(&mut self, r: usize) -> Result<(), MechError> {
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
    pub(super) fn drop_all_copies(&mut self, p: u32) -> Result<(), MechError> {
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
    pub(super) fn touch(
        &mut self,
        core: usize,
        by: Loc,
        at: Loc,
        p: u32,
        a: &Access,
        now: f64,
    ) -> Result<f64, MechError> {
        self.make_access(by, at, p, a, now as u64)?;
        Ok(a.lines as f64 * self.cost.line_ns_on(core, by, at))
    }

    /// [`Engine::touch`] but for the time it takes: invalidates copies on a write, makes the
    /// access at `now` (ns), counts it.
    fn make_access(&mut self, by: Loc, at: Loc, p: u32, a: &Access, now: u64) -> Result<(), MechError> {
        if a.write {
            self.drop_all_copies(p)?;
        }
        self.mech.access(by, at, p, a.write)?;
        self.account_at(by, at, p, a, now);
        Ok(())
    }

    /// Counts an access that was made.
    pub(super) fn account(&mut self, by: Loc, at: Loc, p: u32, a: &Access, now: f64) {
        self.account_at(by, at, p, a, now as u64);
    }

    fn account_at(&mut self, by: Loc, at: Loc, p: u32, a: &Access, now: u64) {
        self.st.touch(p, now, a.lines as u32);
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
    pub(super) fn device_wave(&mut self, d: u8, base: u32, accesses: &[Access], start: f64) -> Result<f64, MechError> {
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
            at: start,
            sync: false,
            asked: None,
            now_ns: (f64::NAN.to_bits(), 0),
            line_times: [[None; LINE_TIMES]; 2],
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
    pub(super) fn force(&mut self, p: u32, d: u8, now: f64) -> Result<Loc, MechError> {
        let mut plan = Plan::default();
        plan.migrate(p, 1, Loc::Dev(d));
        self.apply(&plan, now)?;
        if self.st.page(p).loc != Loc::Dev(d) {
            self.map_remote(p, 1, d, false)?;
        }
        Ok(self.st.page(p).loc)
    }

    /// Services one batch of device `d`'s faults; returns when the device can replay.
    pub(super) fn service(&mut self, d: u8, batch: &[Fault], clock: f64) -> Result<f64, MechError> {
        self.stats.batches += 1;
        self.stats.dev_faults += batch.len() as u64;
        for f in batch {
            self.charge(f.page, 1, |c| &mut c.faults);
        }
        let wall0 = self.mech.now_ns();
        let mut plan = Plan::default();
        // The driver reads the device's access counters at fault time.
        let cx = Ctx::new(&self.st, &self.cost, clock as u64).with_units(Units::new(&self.counter_units, 0));
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
    pub(super) fn cpu_wave(
        &mut self,
        proc: usize,
        base: u32,
        accesses: &[Access],
        start: f64,
    ) -> Result<f64, MechError> {
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
    pub(super) fn cpu_fault(&mut self, proc: usize, p: u32, a: &Access, clock: f64) -> Result<f64, MechError> {
        use crate::place::policy::Action;
        self.stats.cpu_faults += 1;
        self.charge(p, 1, |c| &mut c.faults);
        let wall0 = self.mech.now_ns();
        let mut plan = Plan::default();
        let cx = Ctx::new(&self.st, &self.cost, clock as u64).with_units(Units::new(&self.counter_units, 0));
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
            self.charge(moved[i], n, |c| &mut c.to_cpu);
            // The fault's measured time goes with its first run.
            let (s, e) = self.transfer(from, Loc::Cpu, n, if i == 0 { fault_wall } else { 0 }, done);
            let lane = format!("link{}", from.dev().unwrap_or(0));
            self.event(s, e - s, &lane, "migrate", n, &format!("{from}->cpu (fault)"));
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
}
