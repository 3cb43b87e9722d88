//! The experiment job (`job=experiment`): runs the points the xtask wrote into the boot module
//! (`hmm::place::spec`) over the real devices, and prints one `@@POINT {json}` line per point,
//! `@@TRACE {json}` lines when a point is traced, and `@@EXPERIMENT {json}` at the end.
//!
//! The real mechanism ([`Real`]) backs a point's managed pages with a fresh process address
//! space: one anonymous mapping (2 MiB pages off, so migrations stay 4 KiB), every page
//! written by the CPU first. Migrations are `migrate_vma` to and from device memory, copied by
//! the devices' DMA engines (`vram::migrate_to_device`, `migrate_to_ram`,
//! `migrate_device_to_device`). Every access the engine executes is made on the real data:
//! a CPU access through the process's page tables, a device access through the device's MMU:
//! each device's virtio-iommu domain mirrors the point's address space (`devmmu::bind`, the
//! interval-notifier mirror), a page it has not mapped is a device fault (`hmm_range_fault`,
//! then a map in the domain), and the translation must agree with the CPU page table (a
//! mirror that missed an invalidation fails the point). Peer accesses to another device's
//! memory, which HMM cannot map for a device, go to the page's physical address. Before each access
//! the mechanism reads the CPU page table and checks that the page is where the engine says
//! (RAM or that device's memory); a disagreement stops the point with an error. A write
//! increments the page's first word; at the end every page's count and its identity word are
//! checked, so a migration that lost or misplaced data fails the point.
//!
//! CPU accesses run on the CPU core the engine scheduled the phase on: core 0 is the boot CPU,
//! which runs the engine; each other core's accesses are made by a worker task pinned to that
//! CPU ([`Worker`]) running in the point's address space, so they go through that CPU's TLB
//! and fault there, and every migration the boot CPU makes shoots their translations down.
//!
//! Read duplication (P8) is a driver's job in HMM terms (Linux keeps one copy of a page; UVM's
//! read-mostly pages are copies its driver keeps): a device's read copy is a page of its own
//! memory that the driver fills by DMA from wherever the page lives (`Vram::read_copies`), and
//! the page itself does not move. A device read of a duplicated page reads the copy, and is
//! checked to hold that page's data with as many writes as the page itself; the engine drops
//! every copy before the page is written or moved, and the copies left at the end are checked
//! the same way.
//!
//! One point's failure does not leak into the next: a point's teardown ([`Real`]'s drop) stops
//! its CPU workers, unbinds the device MMUs, gives its read copies back and unmaps its memory
//! (which frees its device pages) whatever state the point stopped in, and before each point
//! the runner checks that device memory is back to the state it had before the first point and
//! that every copy engine still works ([`Idle`]); if not, the point fails with an error saying
//! what was left. A failed point's error says whether the mechanism failed (a migration, a DMA,
//! a CPU worker, device memory left in use: [`FailKind::Mechanism`], after which the xtask runs
//! the rest of the boot's points in a fresh guest) or the point's own checks did
//! ([`FailKind::Check`]).

use crate::arch::{smp, time};
use crate::devices::DevError;
use crate::devmmu::{self, DevMirror};
use crate::mm::{self, uspace};
use crate::sched;
use crate::vram::{self, Vram};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use boot::protocol::{Tag, json::Json};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hmm::devmmu::Where;
use hmm::mm::SharedSpace;
use hmm::mm::pte::Pte;
use hmm::mm::space::{AddressSpace, Advice, MapRequest};
use hmm::mm::vma::Prot;
use hmm::place::cost::{self, HmatValue};
use hmm::place::engine::model::Model;
use hmm::place::engine::{
    CopyFault, DataFault, DeviceOp, MechError, Mechanism, MirrorFault, NoAddressOf, PageOp, SetupStep,
};
use hmm::place::spec::{self, Point};
use hmm::place::{Loc, PAGE};

/// Where the managed region starts in its address space (2 MiB aligned, so VA blocks line up
/// with the engine's).
const BASE: u64 = 0x10_0000_0000;
/// The identity word: page `p`'s second word holds `p ^ MAGIC`.
const MAGIC: u64 = 0x5eed_0000_0000_0000;

/// Why a point failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The mechanism: a migration, a DMA, the device MMU, a CPU worker, setting the point up,
    /// or device memory not back to its empty state. It may have left the guest unable to
    /// run more points.
    Mechanism,
    /// The point itself: its data or placement checks, its spec, or the engine.
    Check,
}

impl FailKind {
    /// The name in the `@@POINT` error object (`"kind"`).
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Mechanism => "mechanism",
            FailKind::Check => "check",
        }
    }
}

/// A point that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointError {
    /// Which part failed.
    pub kind: FailKind,
    /// What went wrong, naming the point.
    pub msg: String,
}

impl core::fmt::Display for PointError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({} error)", self.msg, self.kind.name())
    }
}

/// The state device memory is in between points: pages in use per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idle {
    in_use: Vec<u64>,
}

impl Idle {
    /// The state now.
    pub fn now(vram: &[Arc<Vram>]) -> Idle {
        Idle { in_use: vram.iter().map(|v| v.in_use()).collect() }
    }

    /// Checks that device memory is back to `self` (the state before the first point) and that
    /// every copy engine still works; the error says what an earlier point left behind.
    pub fn check(&self, vram: &[Arc<Vram>]) -> Result<(), NotIdle> {
        let mut wrong = NotIdle::default();
        for (v, &was) in vram.iter().zip(&self.in_use) {
            let now = v.in_use();
            if now != was {
                wrong.in_use.push(InUse { device: v.device(), now, was });
            }
        }
        crate::devices::with(|d| {
            for (n, dev) in d.list.iter().enumerate() {
                let hot_dead = dev.hot.as_ref().is_some_and(|h| h.engine.is_dead());
                if dev.engine.is_dead() || hot_dead {
                    wrong.dead_engines.push(n);
                }
            }
        });
        if wrong.in_use.is_empty() && wrong.dead_engines.is_empty() {
            return Ok(());
        }
        Err(wrong)
    }
}

/// What an earlier point left behind (see [`Idle::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotIdle {
    /// Devices with a different number of pages in use than before the first point.
    pub in_use: Vec<InUse>,
    /// Devices whose copy engine (or hot-plug region's engine) stopped after a DMA timed out.
    pub dead_engines: Vec<usize>,
}

/// A device's pages in use, now and before the first point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse {
    /// Device.
    pub device: usize,
    /// Pages in use now.
    pub now: u64,
    /// Pages in use before the first point.
    pub was: u64,
}

impl core::fmt::Display for NotIdle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "device memory is not back to its empty state: ")?;
        let mut sep = "";
        for u in &self.in_use {
            write!(f, "{sep}dev{} has {} device pages in use, {} before the first point", u.device, u.now, u.was)?;
            sep = "; ";
        }
        for n in &self.dead_engines {
            write!(f, "{sep}dev{n}'s copy engine stopped after a DMA timed out (its queue is dead)")?;
            sep = "; ";
        }
        Ok(())
    }
}

/// Why the CPU line costs could not be taken from the HMAT (`cost.lines = "hmat"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HmatError {
    /// The system is not up.
    NoSystem,
    /// The machine has no such ACPI table ("SRAT", "HMAT").
    NoTable(&'static str),
    /// A CPU the SRAT gives no domain.
    NoAffinity {
        /// The CPU.
        cpu: usize,
        /// Its APIC id.
        apic: u32,
    },
    /// The point's pages could not be located.
    Locate(MechError),
    /// The point's pages lie in no SRAT memory range.
    NoMemoryDomain,
    /// The cost model refused the HMAT's values.
    Cost(String),
}

impl core::fmt::Display for HmatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSystem => write!(f, "the system is not up"),
            Self::NoTable(what) => write!(
                f,
                "cost.lines = \"hmat\", but the machine has no {what}: give its file [[numa.node]]s and [[numa.hmat]] entries (qemu/numa-devices.toml does)"
            ),
            Self::NoAffinity { cpu, apic } => write!(f, "CPU {cpu} (APIC id {apic}) has no SRAT affinity"),
            Self::Locate(e) => write!(f, "locating the point's pages: {e}"),
            Self::NoMemoryDomain => write!(f, "the point's pages lie in no SRAT memory range"),
            Self::Cost(e) => write!(f, "{e}"),
        }
    }
}

/// Why the experiment could not run at all (a point's own failure is its result instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// No boot module holds the experiment image.
    NoImage,
    /// The image is not UTF-8.
    NotUtf8(core::str::Utf8Error),
    /// A point does not decode.
    Spec(spec::SpecError),
    /// Device memory could not be registered.
    Memory(hmm::mm::Error),
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoImage => write!(f, "job=experiment needs the experiment image as a boot module (-initrd)"),
            Self::NotUtf8(e) => write!(f, "the experiment image is not UTF-8: {e}"),
            Self::Spec(e) => write!(f, "{e}"),
            Self::Memory(e) => write!(f, "device memory: {e}"),
        }
    }
}

/// The real devices as a [`Mechanism`].
struct Real {
    space: Arc<SharedSpace>,
    vram: Vec<Arc<Vram>>,
    writes: Vec<u32>,
    /// The CPU core the engine runs CPU accesses on now.
    core: usize,
    /// A worker per CPU other than the boot CPU, started when the engine first uses it.
    workers: Vec<Option<Worker>>,
    /// Read copies: (page, device) → the copy's page in that device's memory.
    copies: alloc::collections::BTreeMap<(u32, u8), u64>,
    /// Each device's MMU mirror of the point's address space (`None`: the device has no MMU,
    /// and its accesses go to the page's physical address).
    mirrors: Vec<Option<Arc<DevMirror>>>,
    /// Set when an error of the mechanism (not of a check) was returned.
    mech_failed: core::cell::Cell<bool>,
}

/// How long the boot CPU waits for a worker to make one access.
const WORKER_TIMEOUT_NS: u64 = 5_000_000_000;

/// One access handed to a worker: the boot CPU writes `page` and `write`, then bumps `seq`;
/// the worker makes the access and sets `ack` to `seq`.
#[derive(Debug, Default)]
struct Mailbox {
    page: AtomicU32,
    write: AtomicBool,
    seq: AtomicU64,
    ack: AtomicU64,
    quit: AtomicBool,
    /// The worker is (about to be) halted: a new request must kick it.
    sleeping: AtomicBool,
    error: spin::Mutex<Option<MechError>>,
    /// Accesses this worker made.
    served: AtomicU64,
}

/// A task on another CPU that runs in the point's address space and makes the CPU accesses
/// the engine schedules on that core: real loads and stores through that CPU's MMU and TLB,
/// so the boot CPU's migrations must shoot its translations down.
#[derive(Debug)]
struct Worker {
    cpu: usize,
    mail: Arc<Mailbox>,
    task: Option<sched::JoinHandle<()>>,
}

/// Polls of an empty mailbox before a worker halts.
const IDLE_SPINS: u32 = 2000;

impl Worker {
    fn start(cpu: usize, space: Arc<SharedSpace>) -> Result<Self, MechError> {
        let mail = Arc::new(Mailbox::default());
        let m = mail.clone();
        let task = sched::spawn_on(cpu, move || {
            uspace::run(&space, |u| {
                let (mut last, mut idle) = (0, 0u32);
                while !m.quit.load(Ordering::Acquire) {
                    let seq = m.seq.load(Ordering::Acquire);
                    if seq == last {
                        // Spin a little, then sleep until the boot CPU's kick (or a tick).
                        idle += 1;
                        if idle > IDLE_SPINS {
                            m.sleeping.store(true, Ordering::SeqCst);
                            if m.seq.load(Ordering::SeqCst) == last && !m.quit.load(Ordering::SeqCst) {
                                x86_64::instructions::interrupts::enable_and_hlt();
                            }
                            m.sleeping.store(false, Ordering::SeqCst);
                            idle = 0;
                        }
                        core::hint::spin_loop();
                        continue;
                    }
                    idle = 0;
                    let (page, write) = (m.page.load(Ordering::Relaxed), m.write.load(Ordering::Relaxed));
                    let va = Real::va(page);
                    let r = u.read_u64(va).and_then(|v| if write { u.write_u64(va, v + 1) } else { Ok(()) });
                    if let Err(f) = r {
                        *m.error.lock() = Some(MechError::CpuFault { page, cpu, address: f.address, error: f.error });
                    }
                    m.served.fetch_add(1, Ordering::Relaxed);
                    last = seq;
                    m.ack.store(seq, Ordering::Release);
                }
            })
        })
        .map_err(|e| MechError::Setup(SetupStep::Worker { cpu, cause: e.to_string() }))?;
        Ok(Worker { cpu, mail, task: Some(task) })
    }

    /// Has the worker make one access, and waits for it.
    fn access(&self, page: u32, write: bool) -> Result<(), MechError> {
        let m = &self.mail;
        m.page.store(page, Ordering::Relaxed);
        m.write.store(write, Ordering::Relaxed);
        let seq = m.seq.load(Ordering::Relaxed) + 1;
        m.seq.store(seq, Ordering::SeqCst);
        if m.sleeping.load(Ordering::SeqCst) {
            sched::kick(self.cpu);
        }
        let deadline = time::Deadline::after_ns(WORKER_TIMEOUT_NS);
        while m.ack.load(Ordering::Acquire) != seq {
            if deadline.passed() {
                return Err(MechError::WorkerTimeout { cpu: self.cpu, page, ms: WORKER_TIMEOUT_NS / 1_000_000 });
            }
            core::hint::spin_loop();
        }
        match m.error.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.mail.quit.store(true, Ordering::SeqCst);
        sched::kick(self.cpu);
        if let Some(t) = self.task.take()
            && let Err(e) = t.join(WORKER_TIMEOUT_NS / 1_000_000)
        {
            log::error!("experiment: stopping a CPU worker: {e}");
        }
    }
}

impl Real {
    fn new(pages: u32, vram: &[Arc<Vram>]) -> Result<Self, MechError> {
        let mm = uspace::mm();
        let space = mm.share(AddressSpace::new(mm).map_err(|e| MechError::Setup(SetupStep::AddressSpace(e)))?);
        let len = pages as u64 * PAGE;
        {
            let mut s = space.lock();
            s.mmap(MapRequest::anon(len, Prot::RW).fixed(BASE))
                .map_err(|error| MechError::Setup(SetupStep::Mmap { len, error }))?;
            s.madvise(BASE, len, Advice::NoHugePage).map_err(|e| MechError::Setup(SetupStep::Madvise(e)))?;
        }
        // From here on a failure drops what was set up so far (Real's teardown).
        let mut real = Real {
            space,
            vram: vram.to_vec(),
            writes: vec![0; pages as usize],
            core: 0,
            workers: (0..smp::count()).map(|_| None).collect(),
            copies: alloc::collections::BTreeMap::new(),
            mirrors: Vec::new(),
            mech_failed: core::cell::Cell::new(false),
        };
        // Every page populated by the CPU, with its identity word.
        let mut page = vec![0u8; PAGE as usize];
        for p in 0..pages as u64 {
            page[8..16].copy_from_slice(&(p ^ MAGIC).to_le_bytes());
            uspace::run(&real.space, |u| u.write(BASE + p * PAGE, &page))
                .map_err(|f| MechError::Setup(SetupStep::Fill { page: p, error: f.error }))?;
        }
        for v in vram {
            let m = match devmmu::bind(v.device(), &real.space) {
                Ok(m) => Some(m),
                Err(DevError::Busy(n)) => {
                    return Err(MechError::Setup(SetupStep::MmuBusy(n)));
                }
                Err(e) => {
                    log::debug!("experiment: dev{}: no device MMU mirror ({e}); physical accesses", v.device());
                    None
                }
            };
            real.mirrors.push(m);
        }
        Ok(real)
    }

    /// Marks `e` as the mechanism's failure (see [`FailKind`]).
    fn mech(&self, e: MechError) -> MechError {
        self.mech_failed.set(true);
        e
    }

    /// Why the point failed, given that it did.
    fn fail_kind(&self) -> FailKind {
        if self.mech_failed.get() { FailKind::Mechanism } else { FailKind::Check }
    }

    fn va(p: u32) -> u64 {
        BASE + p as u64 * PAGE
    }

    /// Where page `p` really is, and the physical address of its data.
    fn locate(&self, p: u32) -> Result<(Loc, u64), MechError> {
        let entry = self.space.lock().lookup(Self::va(p));
        match entry {
            Some(e) => {
                if let Pte::Present(x) = e.pte
                    && !self.vram.iter().any(|v| v.holds(&e.pte).is_some())
                {
                    return Ok((Loc::Cpu, x.pfn.addr()));
                }
                for (d, v) in self.vram.iter().enumerate() {
                    if let Some(pfn) = v.holds(&e.pte) {
                        let pa =
                            v.phys_of(pfn).ok_or(MechError::NoAddress { dev: d as u8, at: NoAddressOf::Frame(pfn) })?;
                        return Ok((Loc::Dev(d as u8), pa));
                    }
                }
                Err(MechError::Entry { page: p, pte: Some(e.pte) })
            }
            None => Err(MechError::Entry { page: p, pte: None }),
        }
    }

    /// Where device `d`'s MMU takes its access to `page`: its mirror's translation, after a
    /// device fault (`hmm_range_fault`, then a map in the device's IOMMU domain) if the page is
    /// not mirrored with the access needed. It must be `pa`, where the CPU page table has the
    /// page: a mirror that missed an invalidation would still point at the old frame.
    fn through_mirror(&self, m: &DevMirror, d: u8, page: u32, write: bool, pa: u64) -> Result<u64, MechError> {
        let va = Self::va(page);
        let t = match m.translate(va) {
            Some(t) if t.write || !write => t,
            _ => {
                m.fault(va, va + PAGE, write).map_err(|e| {
                    self.mech(MechError::Mirror { dev: d, page, fault: MirrorFault::Fault(e.to_string()) })
                })?;
                m.translate(va)
                    .ok_or_else(|| self.mech(MechError::Mirror { dev: d, page, fault: MirrorFault::Unmapped }))?
            }
        };
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

    /// Checks that the data at `pa` is page `p`'s (its identity word) with every write the
    /// page has had (its count); `copy` is the device whose read copy it is, if it is one.
    fn check_data(&self, copy: Option<u8>, p: u32, pa: u64) -> Result<(), MechError> {
        let mut w = [0u8; 16];
        mm::read_phys(pa, &mut w);
        let count = u64::from_le_bytes(w[..8].try_into().unwrap_or_default());
        let id = u64::from_le_bytes(w[8..].try_into().unwrap_or_default());
        if id != p as u64 ^ MAGIC {
            return Err(MechError::Data { page: p, copy, fault: DataFault::OtherPage(id ^ MAGIC) });
        }
        let made = self.writes[p as usize];
        if count != u64::from(made) {
            return Err(MechError::Data { page: p, copy, fault: DataFault::Writes { found: count, made } });
        }
        Ok(())
    }

    /// Checks device `d`'s read copy (its page `k`) of page `p` (a copy a write made stale
    /// has too few writes).
    fn check_copy(&self, p: u32, d: u8, k: u64) -> Result<(), MechError> {
        let pa = self.vram(d)?.phys(k * PAGE).ok_or(MechError::NoAddress { dev: d, at: NoAddressOf::Copy(k) })?;
        self.check_data(Some(d), p, pa)
    }

    /// The SRAT memory domain that holds most of the point's pages (all in RAM after
    /// [`Real::new`]).
    fn memory_domain(&self) -> Result<u32, HmatError> {
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

    fn vram(&self, d: u8) -> Result<&Arc<Vram>, MechError> {
        self.vram.get(d as usize).ok_or(MechError::NoDevice(d))
    }
}

fn ns_since(t0: u64) -> u64 {
    time::cycles_to_ns(time::rdtsc().saturating_sub(t0)).unwrap_or(0)
}

impl Mechanism for Real {
    fn migrate(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        self.migrate_pages(first, pages, from, to).map_err(|e| self.mech(e))
    }

    fn can_duplicate(&self) -> bool {
        true
    }

    fn duplicate(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError> {
        self.duplicate_pages(first, pages, from, dev)
    }

    fn drop_copy(&mut self, page: u32, dev: u8) -> Result<(), MechError> {
        let k = self.copies.remove(&(page, dev)).ok_or(MechError::Copy { page, dev, fault: CopyFault::Missing })?;
        self.vram(dev)?.drop_read_copy(k);
        Ok(())
    }

    fn access(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        self.access_page(by, at, page, write)
    }

    fn finish(&mut self) -> Result<(), MechError> {
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
        let (va, n) = (Self::va(first), pages as u64);
        let moved = match (from, to) {
            (Loc::Cpu, Loc::Dev(d)) => vram::migrate_to_device(self.vram(d)?, &self.space, va, n),
            (Loc::Dev(d), Loc::Cpu) => vram::migrate_to_ram(self.vram(d)?, &self.space, va, n),
            (Loc::Dev(a), Loc::Dev(b)) => {
                vram::migrate_device_to_device(self.vram(a)?, self.vram(b)?, &self.space, va, n)
            }
            (Loc::Cpu, Loc::Cpu) => Ok(0),
        }
        .map_err(|e| MechError::Device { op: DeviceOp::Migrate { first, pages, from, to }, cause: e.to_string() })?;
        if moved != n {
            return Err(MechError::Short { first, pages, from, to, moved });
        }
        Ok(ns_since(t0))
    }

    fn duplicate_pages(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError> {
        let t0 = time::rdtsc();
        let mut frames = Vec::with_capacity(pages as usize);
        for p in first..first + pages {
            let (real, pa) = self.locate(p)?;
            if real != from {
                return Err(MechError::Misplaced { page: p, op: PageOp::Copy, expected: from, found: real });
            }
            if real == Loc::Dev(dev) || self.copies.contains_key(&(p, dev)) {
                return Err(MechError::Copy { page: p, dev, fault: CopyFault::AlreadyHeld });
            }
            frames.push(hmm::addr::Pfn(pa / PAGE));
        }
        let made = self.vram(dev)?.read_copies(&frames).map_err(|e| {
            self.mech(MechError::Device { op: DeviceOp::ReadCopies { first, pages, dev }, cause: e.to_string() })
        })?;
        for (p, k) in (first..).zip(made) {
            self.copies.insert((p, dev), k);
        }
        Ok(ns_since(t0))
    }

    fn access_page(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        if let Loc::Dev(d) = by
            && at == by
            && let Some(&k) = self.copies.get(&(page, d))
        {
            if write {
                return Err(MechError::Copy { page, dev: d, fault: CopyFault::Written });
            }
            return self.check_copy(page, d, k);
        }
        let (real, pa) = self.locate(page)?;
        if real != at {
            return Err(MechError::Misplaced { page, op: PageOp::Access(by), expected: at, found: real });
        }
        if by == Loc::Cpu && self.core != 0 {
            // On the core the engine chose: that CPU's worker makes the access.
            let core = self.core;
            if self.workers[core].is_none() {
                self.workers[core] = Some(Worker::start(core, self.space.clone()).map_err(|e| self.mech(e))?);
            }
            let w = self.workers[core].as_ref().ok_or(MechError::Setup(SetupStep::NoWorker(core)))?;
            w.access(page, write).map_err(|e| self.mech(e))?;
        } else if by == Loc::Cpu {
            // A real user access through the page tables (it would fault if the page were not
            // in RAM).
            let va = Self::va(page);
            let r = uspace::run(&self.space, |u| {
                let v = u.read_u64(va)?;
                if write { u.write_u64(va, v + 1) } else { Ok(()) }
            });
            r.map_err(|f| self.mech(MechError::CpuFault { page, cpu: 0, address: f.address, error: f.error }))?;
        } else {
            // A device access: through the device's MMU mirror when it has one (local memory,
            // or RAM mapped remotely), which must agree with the CPU page table.
            let pa = match (by, self.mirrors.get(by.dev().unwrap_or(0))) {
                (Loc::Dev(d), Some(Some(m))) if at == by || at == Loc::Cpu => {
                    self.through_mirror(m, d, page, write, pa)?
                }
                _ => pa,
            };
            let mut w = [0u8; 8];
            mm::read_phys(pa, &mut w);
            if write {
                mm::write_phys(pa, &(u64::from_le_bytes(w) + 1).to_le_bytes());
            }
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
        for m in self.mirrors.drain(..).flatten() {
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
        let len = self.writes.len() as u64 * PAGE;
        if let Err(e) = self.space.lock().munmap(BASE, len) {
            log::warn!("experiment: unmapping the point's memory: {e}");
        }
    }
}

/// The SRAT proximity domain of CPU `cpu`.
fn cpu_domain(srat: &drivers::acpi::srat::Srat, cpu: usize) -> Result<u32, HmatError> {
    let apic = smp::cpu(cpu).apic_id.load(Ordering::Relaxed) as u32;
    srat.cpus.iter().find(|a| a.apic_id == apic).map(|a| a.domain).ok_or(HmatError::NoAffinity { cpu, apic })
}

/// Gives each engine CPU core its line cost on memory domain `memory`, from the ACPI HMAT:
/// core `c` runs on CPU `c` ([`Real::on_core`]), whose domain the SRAT gives.
fn hmat_lines(cost: &mut hmm::place::cost::CostModel, cores: u32, memory: u32) -> Result<(), HmatError> {
    let s = crate::system().ok_or(HmatError::NoSystem)?;
    let srat = s.platform.srat.as_ref().ok_or(HmatError::NoTable("SRAT"))?;
    let hmat = s.platform.hmat.as_ref().ok_or(HmatError::NoTable("HMAT"))?;
    let domains =
        (0..cores as usize).map(|c| cpu_domain(srat, c % smp::count())).collect::<Result<Vec<u32>, HmatError>>()?;
    let values: Vec<HmatValue> = hmat
        .localities
        .iter()
        .map(|l| HmatValue {
            initiator: l.initiator,
            target: l.target,
            latency: l.data_type.is_latency(),
            value: l.value,
        })
        .collect();
    cost.cpu_core_line_ns = cost::cpu_lines_from_hmat(&domains, memory, &values).map_err(HmatError::Cost)?;
    log::info!("experiment: CPU line costs from the HMAT on memory domain {memory}: {:?} ns", cost.cpu_core_line_ns);
    Ok(())
}

/// Runs one point; the JSON line on success, the error otherwise. The point's mechanism is
/// torn down (dropped) before this returns, whatever happened.
fn run_point(p: &Point, have: &[u32], vram: &[Arc<Vram>]) -> Result<String, PointError> {
    let fail =
        |kind, e: &dyn core::fmt::Display| PointError { kind, msg: format!("point {} ({}): {e}", p.id, p.label) };
    let mut prepared = p.prepare(have).map_err(|e| fail(FailKind::Check, &e))?;
    let model = prepared.model;
    let pages = prepared.pages;
    let hmat = prepared.cost.lines_from_hmat;
    let cores = prepared.cfg.cpus;
    let (outcome, mech) = if model {
        if hmat {
            // No real memory: the boot CPU's own domain.
            let srat = crate::system().and_then(|s| s.platform.srat.as_ref());
            let memory =
                srat.map(|s| cpu_domain(s, 0)).transpose().map_err(|e| fail(FailKind::Check, &e))?.unwrap_or(0);
            hmat_lines(&mut prepared.cost, cores, memory).map_err(|e| fail(FailKind::Check, &e))?;
        }
        let mut m = Model::new(pages);
        (prepared.run(&mut m).map_err(|e| fail(FailKind::Check, &e)), "model")
    } else {
        let mut m = Real::new(pages, vram).map_err(|e| fail(FailKind::Mechanism, &e))?;
        if hmat {
            let memory = m.memory_domain().map_err(|e| fail(FailKind::Check, &e))?;
            hmat_lines(&mut prepared.cost, cores, memory).map_err(|e| fail(FailKind::Check, &e))?;
        }
        let o = prepared.run(&mut m).map_err(|e| fail(m.fail_kind(), &e));
        drop(m);
        (o, "real")
    };
    let o = outcome?;
    for e in &o.trace {
        crate::sprintln!("{}", Tag::Trace.line(spec::trace_json(p.id, e)));
    }
    Ok(spec::result_json(p, &o, mech))
}

/// Runs `points` in order, handing each result to `each`. Before each point, device memory
/// must be back to `idle`, the state it had before the first ([`Idle::check`]): a point that
/// finds it otherwise fails with a mechanism error saying what was left, and does not run.
pub fn run_points(
    points: &[Point],
    have: &[u32],
    vram: &[Arc<Vram>],
    idle: &Idle,
    mut each: impl FnMut(&Point, Result<String, PointError>),
) {
    for p in points {
        let r = match idle.check(vram) {
            Ok(()) => run_point(p, have, vram),
            Err(e) => Err(PointError {
                kind: FailKind::Mechanism,
                msg: format!("point {} ({}): before it started: {e}", p.id, p.label),
            }),
        };
        each(p, r);
    }
}

/// The `@@POINT` line of a failed point: its id, the error and its kind.
fn error_line(id: u32, e: &PointError) -> String {
    let mut j = Json::<String>::new();
    j.object(|j| {
        j.num("id", id);
        j.str("error", &e.msg);
        j.str("kind", e.kind.name());
    });
    j.finish()
}

/// Runs the experiment in the first boot module.
pub fn run(s: &crate::System) -> Result<(), RunError> {
    let m = s.boot.modules.iter().next().ok_or(RunError::NoImage)?;
    let mut bytes = vec![0u8; m.size as usize];
    mm::read_phys(m.paddr, &mut bytes);
    let text = core::str::from_utf8(&bytes).map_err(RunError::NotUtf8)?;
    let points = Point::decode_all(text).map_err(RunError::Spec)?;
    let vram = vram::all().map_err(RunError::Memory)?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let (mut ok, mut failed) = (0, 0);
    let t0 = time::now_ns().unwrap_or(0);
    let idle = Idle::now(vram);
    run_points(&points, &have, vram, &idle, |p, r| match r {
        Ok(line) => {
            crate::sprintln!("{}", Tag::Point.line(line));
            ok += 1;
        }
        Err(e) => {
            crate::sprintln!("{}", Tag::Point.line(error_line(p.id, &e)));
            log::error!("experiment: {e}");
            failed += 1;
        }
    });
    let ns = time::now_ns().unwrap_or(0).saturating_sub(t0);
    let mut j = Json::<String>::new();
    j.object(|j| {
        j.num("points", points.len());
        j.num("ok", ok);
        j.num("failed", failed);
        j.num("wall_ns", ns);
    });
    crate::sprintln!("{}", Tag::Experiment.line(j.finish()));
    Ok(())
}

/// In-kernel tests of the experiment runner over the real devices.
pub mod ktests {
    use super::*;
    use hmm::place::params::{Params, Value};

    fn point(devices: Vec<u32>, policy: &str, evict: &str, kind: &str, over: f64) -> Point {
        let mut w = Params::new();
        w.set("oversubscription", Value::Float(over));
        let mut e = Params::new();
        e.set("order", Value::Text(evict.into()));
        Point {
            id: 0,
            label: format!("{policy}/{kind}/{over}"),
            devices,
            run: Params::new(),
            cost: Params::new(),
            policy: policy.into(),
            policy_params: Params::new(),
            evict: e,
            workloads: vec![(kind.into(), w)],
        }
    }

    fn run_real(p: &Point) -> Result<hmm::place::engine::Outcome, String> {
        let vram = vram::all().map_err(|e| e.to_string())?;
        let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
        let prepared = p.prepare(&have).map_err(|e| e.to_string())?;
        let mut m = Real::new(prepared.pages, vram).map_err(|e| e.to_string())?;
        prepared.run(&mut m).map_err(|e| e.to_string())
    }

    /// A stream at 150 % of 2 MiB of dev0 under the tree prefetcher and TBNe: pages move to
    /// the device and are evicted by DMA, every access is checked against the page tables,
    /// and every page's data is checked at the end.
    pub fn oversubscribed_stream(_s: &crate::System) -> crate::ktest::TestResult {
        let o = run_real(&point(vec![512], "tree", "tbne", "stream", 1.5))?;
        let s = &o.stats;
        if s.to_dev < 512 || s.evicted == 0 || s.dev_faults == 0 || o.workloads[0].error.is_some() {
            return Err(format!("unexpected counts: {s:?} {:?}", o.workloads));
        }
        Ok(())
    }

    /// A halo exchange over two devices with migrate on touch: pages move device to device
    /// (peer DMA) as the slabs' halos are read.
    pub fn two_devices_peer_migration(_s: &crate::System) -> crate::ktest::TestResult {
        let o = run_real(&point(vec![256, 256], "on-touch", "lru4k", "halo", 0.9))?;
        if o.stats.dev_to_dev == 0
            || o.procs.iter().filter(|p| p.name.starts_with("dev") && p.busy_ns > 0.0).count() != 2
        {
            return Err(format!("no peer migration or an idle device: {:?} {:?}", o.stats, o.procs));
        }
        Ok(())
    }

    /// Two CPU↔device ping-pongs at once (with dev0 and with dev1) with two CPU cores: their CPU
    /// phases overlap, so the
    /// engine puts them on both cores, and core 1's accesses are made on CPU 1 (its worker)
    /// while the boot CPU migrates pages back and forth under it; the data check at the end
    /// covers both.
    pub fn cpu_phases_run_on_their_core(_s: &crate::System) -> crate::ktest::TestResult {
        if smp::count() < 2 {
            return Ok(()); // one CPU: the worker path is not used (smp:: tests say how many)
        }
        let mut p = point(vec![256, 256], "on-touch", "lru4k", "pingpong", 0.4);
        let mut second = p.workloads[0].clone();
        second.1.set("device", Value::Text("dev1".into()));
        p.workloads.push(second);
        p.run.set("cpus", Value::Int(2));
        let vram = vram::all().map_err(|e| e.to_string())?;
        let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
        let prepared = p.prepare(&have).map_err(|e| e.to_string())?;
        let mut m = Real::new(prepared.pages, vram).map_err(|e| e.to_string())?;
        let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
        let served = m.workers.get(1).and_then(|w| w.as_ref()).map_or(0, |w| w.mail.served.load(Ordering::Relaxed));
        let busy: Vec<f64> = o.procs.iter().filter(|p| p.name.starts_with("cpu")).map(|p| p.busy_ns).collect();
        if served == 0 || busy.len() != 2 || busy.iter().any(|&b| b <= 0.0) || o.stats.to_cpu == 0 {
            return Err(format!("core 1 made {served} accesses; CPU busy {busy:?}; stats {:?}", o.stats));
        }
        Ok(())
    }

    /// A point whose migration fails (the `n`-th DMA from its start fails, injected) fails
    /// with a mechanism error, its teardown gives everything back, and the points after it on
    /// the same boot run and pass. Device memory left in use (a read copy nobody gives back)
    /// makes the next point fail before it starts, saying so, rather than fail obscurely.
    pub fn a_failed_migration_does_not_poison_the_next_point(_s: &crate::System) -> crate::ktest::TestResult {
        let vram = vram::all().map_err(|e| e.to_string())?;
        let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
        let before = Idle::now(vram);
        let mut points = vec![point(vec![512], "tree", "tbne", "stream", 1.5); 3];
        for (i, p) in points.iter_mut().enumerate() {
            p.id = i as u32;
        }
        // The third copy-engine request of the first point fails with a device I/O error: a
        // migration RAM -> dev0 (the tree prefetcher moves pages as they fault) or an eviction
        // back.
        let armed = crate::inject::arm(crate::inject::Fault::DmaError, None, 2);
        let mut got = Vec::new();
        run_points(&points, &have, vram, &before, |p, r| got.push((p.id, r)));
        let pending = !armed.fired();
        drop(armed);
        if pending {
            return Err("the injected DMA failure never happened".into());
        }
        match &got[0].1 {
            Err(e) if e.kind == FailKind::Mechanism && e.msg.contains("moved") => {}
            other => return Err(format!("point 0: expected a failed migration (a mechanism error), got {other:?}")),
        }
        for (id, r) in &got[1..] {
            if let Err(e) = r {
                return Err(format!("point {id} after the failed one: {e}"));
            }
        }
        before.check(vram).map_err(|e| format!("after the points: {e}"))?;
        // Device memory an earlier point did not give back is found before the next starts.
        let leak = vram[0].read_copies(&[uspace::mm().zero_pfn()]).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        run_points(&points[..1], &have, vram, &before, |p, r| got.push((p.id, r)));
        vram[0].drop_read_copies(&leak);
        let want = format!(
            "dev0 has {} device pages in use, {} before the first point",
            before.in_use[0] + 1,
            before.in_use[0]
        );
        match &got[0].1 {
            Err(e) if e.kind == FailKind::Mechanism && e.msg.contains("before it started") && e.msg.contains(&want) => {
            }
            other => return Err(format!("a device page left in use was not reported: {other:?}")),
        }
        let mut got = Vec::new();
        run_points(&points[..1], &have, vram, &before, |p, r| got.push((p.id, r)));
        got[0].1.as_ref().map(|_| ()).map_err(|e| format!("once the page is back: {e}"))
    }

    /// The mechanism refuses what the page tables contradict.
    pub fn disagreement_is_caught(_s: &crate::System) -> crate::ktest::TestResult {
        let vram = vram::all().map_err(|e| e.to_string())?;
        let mut m = Real::new(16, vram).map_err(|e| e.to_string())?;
        let e = m.access(Loc::Dev(0), Loc::Dev(0), 3, true).err().ok_or("a device access to a RAM page passed")?;
        let want =
            MechError::Misplaced { page: 3, op: PageOp::Access(Loc::Dev(0)), expected: Loc::Dev(0), found: Loc::Cpu };
        if e != want || !e.to_string().contains("page tables have it in cpu") {
            return Err(format!("wrong error: {e}"));
        }
        m.migrate(3, 1, Loc::Cpu, Loc::Dev(0)).map_err(|e| e.to_string())?;
        m.access(Loc::Dev(0), Loc::Dev(0), 3, true).map_err(|e| e.to_string())?;
        // That access went through dev0's MMU mirror (the default machine has an IOMMU), and
        // so does a remote one to a RAM page; migrating the page back invalidates the mirror.
        let mirror = m.mirrors.first().cloned().flatten().ok_or("dev0 has no MMU mirror")?;
        m.access(Loc::Dev(0), Loc::Cpu, 5, false).map_err(|e| e.to_string())?;
        if mirror.pages() != 2 {
            return Err(format!("dev0's mirror maps {} pages, expected 2", mirror.pages()));
        }
        if m.access(Loc::Cpu, Loc::Cpu, 3, false).is_ok() {
            return Err("a CPU access to a device page passed".into());
        }
        m.migrate(3, 1, Loc::Dev(0), Loc::Cpu).map_err(|e| e.to_string())?;
        if mirror.translate(Real::va(3)).is_some() {
            return Err("dev0's mirror still maps a page that left its memory".into());
        }
        m.finish().map_err(|e| format!("data after one device write: {e}"))?;
        // A read copy is checked against its page: fresh it passes, after a write the engine
        // failed to drop it for, it is stale.
        m.duplicate(3, 2, Loc::Cpu, 0).map_err(|e| e.to_string())?;
        m.access(Loc::Dev(0), Loc::Dev(0), 3, false).map_err(|e| format!("reading a fresh copy: {e}"))?;
        if m.access(Loc::Dev(0), Loc::Dev(0), 3, true).is_ok() {
            return Err("a device wrote its read copy".into());
        }
        m.access(Loc::Cpu, Loc::Cpu, 4, true).map_err(|e| e.to_string())?;
        let e = m.access(Loc::Dev(0), Loc::Dev(0), 4, false).err().ok_or("a stale read copy passed")?;
        let want = MechError::Data { page: 4, copy: Some(0), fault: DataFault::Writes { found: 0, made: 1 } };
        if e != want || !e.to_string().contains("read copy of page 4: 0 writes found, 1 made") {
            return Err(format!("wrong error for a stale copy: {e}"));
        }
        m.drop_copy(4, 0).map_err(|e| e.to_string())?;
        if m.drop_copy(4, 0).is_ok() {
            return Err("a copy dropped twice".into());
        }
        m.finish().map_err(|e| format!("data with one copy left: {e}"))?;
        Ok(())
    }

    /// Read duplication on the real devices: a read-mostly table broadcast to both devices
    /// under P8, every device read served from its own copy (checked to hold the page's data
    /// and writes), copies dropped before each write and checked again at the end.
    pub fn read_duplication_on_two_devices(_s: &crate::System) -> crate::ktest::TestResult {
        let vram = vram::all().map_err(|e| e.to_string())?;
        if vram.len() < 2 {
            return Ok(()); // the default machine has two devices; one-device machines skip
        }
        let mut p = point(vec![256, 256], "duplicate", "lru4k", "broadcast", 0.5);
        p.workloads[0].1.set("writes", Value::Float(0.01));
        let o = run_real(&p)?;
        let s = &o.stats;
        if s.duplicates == 0 || s.dup_unsupported != 0 || s.invalidations == 0 || o.workloads[0].error.is_some() {
            return Err(format!("unexpected counts: {s:?} {:?}", o.workloads));
        }
        Ok(())
    }
}
