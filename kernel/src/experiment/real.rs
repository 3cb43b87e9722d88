//! The real devices as a [`Mechanism`] ([`Real`]): a point's managed pages in fresh
//! processes (one address space per process the point's workloads name, each page in its
//! workload's), migrations by the devices' DMA engines, device accesses through their MMU
//! mirrors (each device mirrors every process, each in its own window of the device's domain),
//! and the teardown that leaves nothing behind (see the experiment module's header).

use super::worker::Worker;
use super::*;
use crate::arch::{smp, time};
use crate::devices::{DevError, DevPage};
use crate::devmmu::{self, DevMirror};
use crate::mm::{self, uspace};
use crate::vram::{self, Vram};
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use hmm::devmmu::{Translation, Where};
use hmm::mm::SharedSpace;
use hmm::mm::pte::Pte;
use hmm::mm::space::AddressSpace;
use hmm::place::engine::{
    CopyFault, DeviceOp, MechError, Mechanism, MirrorFault, NoAddressOf, PageOp, SetupStep, ShortWhy,
};
use hmm::place::{Loc, PAGE};

/// The real devices as a [`Mechanism`].
pub(super) struct Real {
    /// One address space per process of the point.
    pub(super) spaces: Vec<Arc<SharedSpace>>,
    /// `(first, end, space)`: which space each run of pages is in, covering every page.
    runs: Vec<(u32, u32, usize)>,
    vram: Vec<Arc<Vram>>,
    writes: Vec<u32>,
    /// The CPU core the engine runs CPU accesses on now.
    core: usize,
    /// Per space, a worker per CPU other than the boot CPU, started when the engine first
    /// uses it.
    pub(super) workers: Vec<Vec<Option<Worker>>>,
    /// Read copies: (page, device) → the copy's page in that device's memory.
    copies: alloc::collections::BTreeMap<(u32, u8), u64>,
    /// Mappings no device MMU holds: a device's mapping of a page in another device's memory
    /// (a peer mapping, which `hmm_range_fault` cannot give: it would migrate the page to
    /// RAM), and every mapping of a device without an MMU mirror. Dropped when the page moves,
    /// as the mirrors' are by the migration's invalidation.
    soft_maps: alloc::collections::BTreeSet<(u32, u8)>,
    /// Per space, each device's MMU mirror of it (`None`: the device has no MMU, and its
    /// accesses go to the page's physical address).
    pub(super) mirrors: Vec<Vec<Option<Arc<DevMirror>>>>,
    /// Each device's pages in use before the point's first [`Mechanism::set_capacities`].
    in_use_before: Vec<u64>,
    /// Set when an error of the mechanism (not of a check) was returned.
    mech_failed: core::cell::Cell<bool>,
    /// The device MMU translation [`Mechanism::device_translate`] just gave (device, page,
    /// translation): the one the device's next access of that page goes through. Taken by
    /// that access; cleared by every other operation, since any of them may change mappings.
    seen: Option<(u8, u32, Translation)>,
    /// What [`Real::locate`] answered for each page since the last operation that can move or
    /// remap one (`epoch`), and the device translation of it already checked against that
    /// answer: a device's repeated accesses between two such operations walk the CPU page
    /// table once. Only the access path reads and fills it ([`Real::located`]).
    located: Vec<core::cell::Cell<Located>>,
    /// Counts the operations that can move or remap pages ([`Real::changed`]); an entry of
    /// `located` from an older epoch is stale.
    epoch: u64,
}

/// A page's place as [`Real::locate`] gave it in epoch `epoch`, and the device translation
/// that was checked to agree with it (device, translation), if one was.
#[derive(Clone, Copy)]
struct Located {
    epoch: u64,
    loc: Loc,
    pa: u64,
    agreed: Option<(u8, Translation)>,
}

impl Real {
    /// The point's `pages` over the devices of `vram`, in the processes `procs` says
    /// (`(first, end, process)` runs covering every page: [`hmm::place::spec::Prepared::process_runs`]).
    pub(super) fn new(pages: u32, vram: &[Arc<Vram>], procs: &[(u32, u32, u32)]) -> Result<Self, MechError> {
        let mm = uspace::mm();
        let whole = [(0, pages, 0)];
        let procs = if procs.is_empty() { &whole[..] } else { procs };
        let mut numbers: Vec<u32> = procs.iter().map(|r| r.2).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let mut spaces = Vec::new();
        for _ in &numbers {
            spaces.push(mm.share(AddressSpace::new(mm).map_err(|e| MechError::Setup(SetupStep::AddressSpace(e)))?));
        }
        let runs: Vec<(u32, u32, usize)> =
            procs.iter().map(|&(a, b, n)| (a, b, numbers.iter().position(|&x| x == n).unwrap_or(0))).collect();
        for &(a, b, sp) in &runs {
            hmm::place::engine::pages::map_range(&mut spaces[sp].lock(), a, b)?;
        }
        let n = spaces.len();
        // From here on a failure drops what was set up so far (Real's teardown).
        let mut real = Real {
            spaces,
            runs,
            vram: vram.to_vec(),
            writes: vec![0; pages as usize],
            core: 0,
            workers: (0..n).map(|_| (0..smp::count()).map(|_| None).collect()).collect(),
            copies: alloc::collections::BTreeMap::new(),
            soft_maps: alloc::collections::BTreeSet::new(),
            mirrors: Vec::new(),
            in_use_before: Vec::new(),
            mech_failed: core::cell::Cell::new(false),
            seen: None,
            located: vec![
                core::cell::Cell::new(Located { epoch: 0, loc: Loc::Cpu, pa: 0, agreed: None });
                pages as usize
            ],
            epoch: 1,
        };
        // Every page populated by the CPU, with its identity word.
        let mut page = vec![0u8; PAGE as usize];
        for p in 0..pages as u64 {
            page[8..16].copy_from_slice(&hmm::place::engine::pages::identity(p).to_le_bytes());
            uspace::run(real.space(p as u32), |u| u.write(BASE + p * PAGE, &page))
                .map_err(|f| MechError::Setup(SetupStep::Fill { page: p, error: f.error }))?;
        }
        for sp in 0..real.spaces.len() {
            let mut mirrors = Vec::new();
            for v in vram {
                let m = match devmmu::bind(v.device(), &real.spaces[sp]) {
                    Ok(m) => Some(m),
                    Err(DevError::Busy(n) | DevError::AlreadyBound(n)) => {
                        return Err(MechError::Setup(SetupStep::MmuBusy(n)));
                    }
                    Err(e) => {
                        log::debug!("experiment: dev{}: no device MMU mirror ({e}); physical accesses", v.device());
                        None
                    }
                };
                mirrors.push(m);
            }
            real.mirrors.push(mirrors);
        }
        Ok(real)
    }

    /// The run of pages `p` is in: `(first, end, space)`.
    fn run_of(&self, p: u32) -> Option<(u32, u32, usize)> {
        self.runs.get(self.runs.partition_point(|r| r.1 <= p)).copied()
    }

    /// The index of the space page `p` is in.
    fn space_of(&self, p: u32) -> usize {
        self.run_of(p).map_or(0, |r| r.2)
    }

    /// The address space page `p` is in.
    fn space(&self, p: u32) -> &Arc<SharedSpace> {
        &self.spaces[self.space_of(p)]
    }

    /// `[first, first + pages)` cut where the space changes: `(space, first, pages)` each.
    fn by_space(&self, first: u32, pages: u32) -> Vec<(usize, u32, u32)> {
        let end = first.saturating_add(pages);
        let mut out = Vec::new();
        let mut p = first;
        while p < end {
            let (stop, sp) = self.run_of(p).map_or((end, 0), |r| (r.1.min(end), r.2));
            out.push((sp, p, stop - p));
            p = stop;
        }
        out
    }

    /// Called by every operation that can move a page or change a mapping, before it does:
    /// the translation the engine saw and every [`Real::located`] answer are stale.
    fn changed(&mut self) {
        self.seen = None;
        self.epoch += 1;
    }

    /// Device `dev`'s read copy of `page`, if it has one (most points make none: the access
    /// path asks at every access, so an empty map is not searched).
    #[inline]
    fn copy_of(&self, page: u32, dev: u8) -> Option<u64> {
        if self.copies.is_empty() { None } else { self.copies.get(&(page, dev)).copied() }
    }

    /// Whether device `dev` reaches `page` by a mapping no mirror holds (as [`Real::copy_of`]).
    #[inline]
    fn soft_mapped(&self, page: u32, dev: u8) -> bool {
        !self.soft_maps.is_empty() && self.soft_maps.contains(&(page, dev))
    }

    /// [`Real::locate`] for the access path, remembered until the next [`Real::changed`].
    fn located(&self, p: u32) -> Result<Located, MechError> {
        let cell = self.located.get(p as usize).ok_or(MechError::Entry { page: p, pte: None })?;
        let l = cell.get();
        if l.epoch == self.epoch {
            return Ok(l);
        }
        let (loc, pa) = self.locate(p)?;
        let l = Located { epoch: self.epoch, loc, pa, agreed: None };
        cell.set(l);
        Ok(l)
    }

    /// Marks `e` as the mechanism's failure (see [`FailKind`]).
    fn mech(&self, e: MechError) -> MechError {
        self.mech_failed.set(true);
        e
    }

    /// Why the point failed, given that it did.
    pub(super) fn fail_kind(&self) -> FailKind {
        if self.mech_failed.get() { FailKind::Mechanism } else { FailKind::Check }
    }

    pub(super) fn va(p: u32) -> u64 {
        BASE + p as u64 * PAGE
    }

    /// Where page `p` really is, and the physical address of its data.
    fn locate(&self, p: u32) -> Result<(Loc, u64), MechError> {
        let e = self.space(p).lock().lookup(Self::va(p)).ok_or(MechError::Entry { page: p, pte: None })?;
        // A device's page (private, or coherent and so also present), else a RAM page.
        for (d, v) in self.vram.iter().enumerate() {
            if let Some((pfn, pa)) = v.held_at(&e.pte) {
                let pa = pa.ok_or(MechError::NoAddress { dev: d as u8, at: NoAddressOf::Frame(pfn) })?;
                return Ok((Loc::Dev(d as u8), pa));
            }
        }
        match e.pte {
            Pte::Present(x) => Ok((Loc::Cpu, x.pfn.addr())),
            pte => Err(MechError::Entry { page: p, pte: Some(pte) }),
        }
    }

    /// Where device `d`'s MMU takes its access to `page`: its mirror's translation, which
    /// the engine has seen (through [`Mechanism::device_translate`], `seen`, else translated
    /// again) before it makes the access. It must be `pa`, where the CPU page table has the
    /// page: a mirror that missed an invalidation would still point at the old frame.
    fn through_mirror(
        &self,
        m: &DevMirror,
        d: u8,
        page: u32,
        write: bool,
        pa: u64,
        seen: Option<Translation>,
    ) -> Result<u64, MechError> {
        let t = seen
            .or_else(|| m.translate(Self::va(page)))
            .filter(|t| t.write || !write)
            .ok_or_else(|| self.mech(MechError::Mirror { dev: d, page, fault: MirrorFault::Unmapped }))?;
        let at = match t.at {
            Where::Ram(x) => x,
            Where::Local(pfn) => {
                self.vram(d)?.phys_of(pfn).ok_or(MechError::NoAddress { dev: d, at: NoAddressOf::Frame(pfn) })?
            }
        };
        if at != pa {
            return Err(MechError::Mirror { dev: d, page, fault: MirrorFault::Stale { at, cpu: pa } });
        }
        Ok(at)
    }

    /// Device `d`'s MMU mirror of the space page `p` is in, if it has one.
    fn mirror(&self, d: u8, p: u32) -> Option<&Arc<DevMirror>> {
        self.mirrors.get(self.space_of(p)).and_then(|ms| ms.get(d as usize)).and_then(|m| m.as_ref())
    }

    /// A device fault on `[first, first + pages)` through device `d`'s mirror
    /// (`hmm_range_fault`, then a map in the device's IOMMU domain).
    fn mirror_fault(&self, m: &DevMirror, d: u8, first: u32, pages: u32) -> Result<(), MechError> {
        self.mirror_map(m, d, first, pages, false)
    }

    /// [`Self::mirror_fault`], for reads only when `read_only` (a mapping made ahead of the
    /// device's accesses, whose writes must still fault).
    fn mirror_map(&self, m: &DevMirror, d: u8, first: u32, pages: u32, read_only: bool) -> Result<(), MechError> {
        let va = Self::va(first);
        let (a, b) = (va, va + pages as u64 * PAGE);
        let r = if read_only { m.fault_read_only(a, b) } else { m.fault(a, b, false) };
        r.map_err(|e| self.mech(MechError::Mirror { dev: d, page: first, fault: MirrorFault::Fault(e.to_string()) }))
    }

    /// Checks that the data at `pa` is page `p`'s (its identity word) with every write the
    /// page has had (its count); `copy` is the device whose read copy it is, if it is one.
    fn check_data(&self, copy: Option<u8>, p: u32, pa: u64) -> Result<(), MechError> {
        let mut w = [0u8; 16];
        mm::ram::read(pa, &mut w);
        hmm::place::engine::pages::check(copy, p, w, self.writes[p as usize])
    }

    /// Checks device `d`'s read copy (its page `k`) of page `p` (a copy a write made stale
    /// has too few writes).
    fn check_copy(&self, p: u32, d: u8, k: u64) -> Result<(), MechError> {
        let pa = self
            .vram(d)?
            .phys(DevPage::new(k).offset())
            .ok_or(MechError::NoAddress { dev: d, at: NoAddressOf::Copy(k) })?;
        self.check_data(Some(d), p, pa)
    }

    /// The SRAT memory domain that holds most of the point's pages (all in RAM after
    /// [`Real::new`]).
    pub(super) fn memory_domain(&self) -> Result<u32, HmatError> {
        let srat =
            crate::system().ok_or(HmatError::NoSystem)?.platform.srat.as_ref().ok_or(HmatError::NoTable("SRAT"))?;
        let mut count: Vec<(u32, u32)> = Vec::new();
        for p in 0..self.writes.len() as u32 {
            let (_, pa) = self.locate(p).map_err(HmatError::Locate)?;
            let d = srat.memory.iter().find(|m| m.base <= pa && pa < m.base + m.length).map_or(u32::MAX, |m| m.domain);
            match count.iter_mut().find(|(x, _)| *x == d) {
                Some((_, n)) => *n += 1,
                None => count.push((d, 1)),
            }
        }
        match count.iter().max_by_key(|(_, n)| *n) {
            Some(&(d, _)) if d != u32::MAX => Ok(d),
            _ => Err(HmatError::NoMemoryDomain),
        }
    }

    /// [`Mechanism::map_remote`] of pages of one space.
    fn map_remote_in(&mut self, first: u32, pages: u32, dev: u8, read_only: bool) -> Result<(), MechError> {
        let mirror = self.mirror(dev, first).cloned();
        let mut run: Option<(u32, u32)> = None;
        for p in first..first + pages {
            let here = self.locate(p)?.0;
            match (&mirror, here) {
                // In RAM (or its own memory): the mirror's range fault maps it.
                (Some(_), Loc::Cpu) => {
                    run = match run {
                        Some((a, n)) if a + n == p => Some((a, n + 1)),
                        Some((a, n)) => {
                            self.mirror_map(mirror.as_deref().ok_or(MechError::NoDevice(dev))?, dev, a, n, read_only)?;
                            Some((p, 1))
                        }
                        None => Some((p, 1)),
                    };
                }
                (Some(_), Loc::Dev(d)) if d == dev => {}
                _ => {
                    self.soft_maps.insert((p, dev));
                }
            }
        }
        if let (Some(m), Some((a, n))) = (&mirror, run) {
            self.mirror_map(m, dev, a, n, read_only)?;
        }
        Ok(())
    }

    fn vram(&self, d: u8) -> Result<&Arc<Vram>, MechError> {
        self.vram.get(d as usize).ok_or(MechError::NoDevice(d))
    }
}

fn ns_since(t0: u64) -> u64 {
    time::cycles_to_ns(time::rdtsc().saturating_sub(t0)).unwrap_or(0)
}

impl Mechanism for Real {
    fn migrate(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        self.changed();
        self.migrate_pages(first, pages, from, to).map_err(|e| self.mech(e))
    }

    fn device_translate(&mut self, dev: u8, page: u32, write: bool) -> Result<Option<Loc>, MechError> {
        self.seen = None;
        if !write && self.copy_of(page, dev).is_some() {
            return Ok(Some(Loc::Dev(dev)));
        }
        if self.soft_mapped(page, dev) {
            return Ok(Some(self.locate(page)?.0));
        }
        let Some(m) = self.mirror(dev, page) else {
            // No MMU: the device reaches its own memory, and nothing else unless mapped.
            let here = self.locate(page)?.0;
            return Ok((here == Loc::Dev(dev)).then_some(here));
        };
        // The translation this epoch already walked and checked against the CPU page table
        // (`access_page`): the mirror has not changed since, as every change to it (a
        // migration's invalidation, a fault, a mapping) begins a new epoch ([`Real::changed`]).
        // A mirror that missed an invalidation is still caught: by the first access after it.
        let cached = self.located.get(page as usize).map(core::cell::Cell::get);
        let t = match cached {
            Some(Located { epoch, agreed: Some((d, t)), .. }) if epoch == self.epoch && d == dev => Some(t),
            _ => m.translate(Self::va(page)),
        };
        self.seen = t.map(|t| (dev, page, t));
        Ok(t.filter(|t| t.write || !write).map(|t| match t.at {
            Where::Local(_) => Loc::Dev(dev),
            Where::Ram(_) => Loc::Cpu,
        }))
    }

    fn map_remote(&mut self, first: u32, pages: u32, dev: u8, read_only: bool) -> Result<(), MechError> {
        self.changed();
        for (_, a, n) in self.by_space(first, pages) {
            self.map_remote_in(a, n, dev, read_only)?;
        }
        Ok(())
    }

    fn unmap_remote(&mut self, first: u32, pages: u32, dev: u8) -> Result<(), MechError> {
        self.changed();
        for (_, a, n) in self.by_space(first, pages) {
            if let Some(m) = self.mirror(dev, a).cloned() {
                let va = Self::va(a);
                m.unmap_remote(va, va + n as u64 * PAGE).map_err(|e| {
                    self.mech(MechError::Mirror { dev, page: a, fault: MirrorFault::Fault(e.to_string()) })
                })?;
            }
        }
        for p in first..first + pages {
            self.soft_maps.remove(&(p, dev));
        }
        Ok(())
    }

    fn set_capacities(&mut self, capacities: &[u32]) {
        self.changed();
        // Each device's allocator refuses past the point's share of it, as a full device does.
        // The limit counts from what was in use when the point first set it (nothing, after
        // the idle check), so a resize during the run (an experiment's event, after the engine
        // evicted what no longer fits) moves it by the change.
        if self.in_use_before.is_empty() {
            self.in_use_before = self.vram.iter().map(|v| v.in_use()).collect();
        }
        for ((v, &cap), base) in self.vram.iter().zip(capacities).zip(&self.in_use_before) {
            v.set_limit(Some(base + cap as u64));
        }
    }

    fn resident(&mut self, page: u32) -> Result<Loc, MechError> {
        Ok(self.locate(page)?.0)
    }

    fn cpu_fault(&mut self, page: u32, write: bool, first: u32, pages: u32) -> Result<u64, MechError> {
        self.changed();
        let t0 = time::rdtsc();
        let from = self.locate(page)?.0;
        // The window stays in the faulting page's process: another's pages are not its to move.
        let (lo, hi) = self.run_of(page).map_or((0, self.writes.len() as u32), |r| (r.0, r.1));
        let first = first.max(lo);
        let end = first.saturating_add(pages).min(self.writes.len() as u32).min(hi);
        let held: Vec<u32> = (first..end).filter(|&p| self.locate(p).is_ok_and(|(l, _)| l == from)).collect();
        // The access faults on its core (#PF, `uspace::handle_page_fault`), and the device's
        // `migrate_to_ram` migrates the window the policy chose.
        let space = self.space(page).clone();
        hmm::place::engine::pages::fault_in_window(&space, page, from, (first, end), || self.cpu_access(page, write))?;
        // Mappings no mirror holds go with the pages that moved (the mirrors' went in the
        // migration's invalidation).
        for p in held {
            if self.locate(p)?.0 != from {
                self.soft_maps.retain(|&(q, _)| q != p);
            }
        }
        Ok(ns_since(t0))
    }

    fn can_duplicate(&self) -> bool {
        true
    }

    fn duplicate(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError> {
        self.changed();
        self.duplicate_pages(first, pages, from, dev)
    }

    fn drop_copy(&mut self, page: u32, dev: u8) -> Result<(), MechError> {
        self.changed();
        let k = self.copies.remove(&(page, dev)).ok_or(MechError::Copy { page, dev, fault: CopyFault::Missing })?;
        self.vram(dev)?.drop_read_copy(k);
        Ok(())
    }

    fn access(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        self.access_page(by, at, page, write)
    }

    fn finish(&mut self) -> Result<(), MechError> {
        self.changed();
        for (&(p, d), &k) in &self.copies {
            self.check_copy(p, d, k)?;
        }
        for p in 0..self.writes.len() as u32 {
            let (_, pa) = self.locate(p)?;
            self.check_data(None, p, pa)?;
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        time::now_ns().unwrap_or(0)
    }

    fn on_core(&mut self, core: u32) {
        // Engine cores map onto the CPUs that are online (the xtask refuses more cores than
        // the machine has; a CPU that did not start shares another's).
        self.core = core as usize % smp::count();
    }
}

impl Real {
    fn migrate_pages(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        let t0 = time::rdtsc();
        for (sp, a, n) in self.by_space(first, pages) {
            self.migrate_in(sp, a, n, from, to)?;
        }
        Ok(ns_since(t0))
    }

    /// [`Self::migrate_pages`] of pages of space `sp`.
    fn migrate_in(&mut self, sp: usize, first: u32, pages: u32, from: Loc, to: Loc) -> Result<(), MechError> {
        let (va, n) = (Self::va(first), pages as u64);
        let space = self.spaces[sp].clone();
        let declined = |r: &Self| {
            [from.dev(), to.dev()]
                .into_iter()
                .flatten()
                .filter_map(|d| r.vram.get(d))
                .map(|v| v.stats.lock().declined)
                .sum::<u64>()
        };
        let declined0 = declined(self);
        let moved = match (from, to) {
            (Loc::Cpu, Loc::Dev(d)) => vram::migrate_to_device(self.vram(d)?, &space, va, n),
            (Loc::Dev(d), Loc::Cpu) => vram::migrate_to_ram(self.vram(d)?, &space, va, n),
            (Loc::Dev(a), Loc::Dev(b)) => vram::migrate_device_to_device(self.vram(a)?, self.vram(b)?, &space, va, n),
            (Loc::Cpu, Loc::Cpu) => Ok(0),
        }
        .map_err(|e| MechError::Device { op: DeviceOp::Migrate { first, pages, from, to }, cause: e.to_string() })?;
        // A device's allocator may refuse pages (the point's device is full): those stay
        // where they are, and the engine reads back which moved. Anything else (a copy that
        // failed, counted as declined, or a move to RAM) must move all.
        if moved != n && (to == Loc::Cpu || declined(self) != declined0) {
            let why = if declined(self) != declined0 { ShortWhy::CopyFailed } else { ShortWhy::Stayed };
            return Err(MechError::Short { first, pages, from, to, moved, why });
        }
        // The migration invalidated every mirror's mapping of the pages that moved; the peer
        // and MMU-less mappings go with them.
        if moved == n {
            self.soft_maps.retain(|&(p, _)| p < first || p >= first + pages);
        } else {
            for p in first..first + pages {
                if self.locate(p)?.0 == to {
                    self.soft_maps.retain(|&(q, _)| q != p);
                }
            }
        }
        // The destination device maps what it received, as a fault batch's migration does.
        if let (Loc::Dev(d), Some(m)) = (to, self.mirror(to.dev().unwrap_or(0) as u8, first).cloned()) {
            // (A device without an MMU reaches its own memory physically: nothing to map.)
            if moved == n {
                self.mirror_fault(&m, d, first, pages)?;
            } else {
                for p in first..first + pages {
                    if self.locate(p)?.0 == to {
                        self.mirror_fault(&m, d, p, 1)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn duplicate_pages(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError> {
        let t0 = time::rdtsc();
        let frames = hmm::place::engine::pages::copy_sources(
            (first, pages),
            from,
            dev,
            |p| self.locate(p),
            |p| self.copies.contains_key(&(p, dev)),
        )?;
        let made = self.vram(dev)?.read_copies(&frames).map_err(|e| {
            self.mech(MechError::Device { op: DeviceOp::ReadCopies { first, pages, dev }, cause: e.to_string() })
        })?;
        for (p, k) in (first..).zip(made) {
            self.copies.insert((p, dev), k);
        }
        Ok(ns_since(t0))
    }

    fn access_page(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        let seen = self.seen.take();
        if let Loc::Dev(d) = by
            && at == by
            && let Some(k) = self.copy_of(page, d)
        {
            if write {
                return Err(MechError::Copy { page, dev: d, fault: CopyFault::Written });
            }
            return self.check_copy(page, d, k);
        }
        let here = self.located(page)?;
        let (real, pa) = (here.loc, here.pa);
        if real != at {
            return Err(MechError::Misplaced { page, op: PageOp::Access(by), expected: at, found: real });
        }
        if by == Loc::Cpu {
            // The access may fault, and the fault may move or remap the page.
            let r = self.cpu_access(page, write);
            self.changed();
            return r;
        } else {
            // A device access: through the device's MMU mirror when it has one (local memory,
            // or RAM mapped remotely), which must agree with the CPU page table.
            let mirrors = self.mirrors.get(self.space_of(page));
            let pa = match (by, mirrors.and_then(|ms| ms.get(by.dev().unwrap_or(0)))) {
                (Loc::Dev(d), Some(Some(m))) if !self.soft_mapped(page, d) => {
                    let seen = seen.filter(|&(sd, sp, _)| (sd, sp) == (d, page)).map(|(_, _, t)| t);
                    match (seen, here.agreed) {
                        // The translation already checked against the CPU page table in this
                        // epoch, with the access it allows.
                        (Some(t), Some((ad, at))) if ad == d && at == t && (t.write || !write) => pa,
                        _ => {
                            let t = self.through_mirror(m, d, page, write, pa, seen)?;
                            if let Some(t) = seen {
                                self.located[page as usize].set(Located { agreed: Some((d, t)), ..here });
                            }
                            t
                        }
                    }
                }
                _ => pa,
            };
            mm::ram::bump_u64(pa, write);
        }
        if write {
            self.writes[page as usize] += 1;
        }
        Ok(())
    }
}

impl Real {
    /// A real user access to `page` through the page tables on the core the engine chose (a
    /// page not in RAM faults), counted when it writes.
    fn cpu_access(&mut self, page: u32, write: bool) -> Result<(), MechError> {
        if self.core != 0 {
            // That CPU's worker makes the access.
            let (core, sp) = (self.core, self.space_of(page));
            if self.workers[sp][core].is_none() {
                let w = Worker::start(core, self.spaces[sp].clone()).map_err(|e| self.mech(e))?;
                self.workers[sp][core] = Some(w);
            }
            let w = self.workers[sp][core].as_ref().ok_or(MechError::Setup(SetupStep::NoWorker(core)))?;
            w.access(page, write).map_err(|e| self.mech(e))?;
        } else {
            let va = Self::va(page);
            let r = uspace::run(self.space(page), |u| {
                let v = u.read_u64(va)?;
                if write { u.write_u64(va, v + 1) } else { Ok(()) }
            });
            r.map_err(|f| self.mech(MechError::CpuFault { page, cpu: 0, address: f.address, error: f.error }))?;
        }
        if write {
            self.writes[page as usize] += 1;
        }
        Ok(())
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        // The workers leave the address space first, the device MMUs stop mirroring it, and
        // the read copies go back to their devices.
        self.workers.clear();
        for m in self.mirrors.drain(..).flatten().flatten() {
            if let Err(e) = m.unbind() {
                log::warn!("experiment: unbinding a device MMU: {e}");
            }
        }
        for (&(_, d), &k) in &self.copies {
            if let Some(v) = self.vram.get(d as usize) {
                v.drop_read_copy(k);
            }
        }
        // Unmapping frees the device pages for the next point.
        for &(a, b, sp) in &self.runs {
            if let Err(e) = self.spaces[sp].lock().munmap(Self::va(a), (b - a) as u64 * PAGE) {
                log::warn!("experiment: unmapping the point's memory: {e}");
            }
        }
        for v in &self.vram {
            v.set_limit(None);
        }
    }
}
