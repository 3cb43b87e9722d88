//! The HMM stack over the host platform as a [`Mechanism`] ([`HostStack`]): what `--host`,
//! the host tests and a guest point with `mechanism = "host"` run the engine over.
//!
//! It is the same hmm core the kernel's real mechanism drives, over the platform the host
//! tests use: a memory manager ([`Mm`]) over [`FakePlatform`] (software page tables, RAM in a
//! vector), the pagemap registry, one process address space with the point's managed pages
//! (the pages of every process a point's workloads name: this mechanism does not separate
//! them, the kernel's real one gives each process its own space; the engine's decisions and
//! results are the same either way) mapped at [`BASE`] (2 MiB aligned, `madvise(NoHugePage)`, so migrations stay 4 KiB), each
//! page populated by the CPU with its identity word, and per device:
//! - a [`DmirrorDevice`] (device-private memory with its own [`Owner`]) whose storage is
//!   capped at the device's capacity in pages: its allocator refuses a page past it, read
//!   copies included (they are pages of device memory, as on the real devices);
//! - a [`Dmirror`] file open on the address space, whose `migrate_to_dev` / `migrate_to_sys`
//!   are the migrations (`migrate_vma` over the CPU page tables, the notifiers invalidating
//!   every mirror of the pages moved). Device to device goes through RAM (to system memory
//!   from the source, then to the destination): the end state is the same as the kernel's
//!   peer copy, with both migrations' invalidations;
//! - a device MMU ([`Mirror`] over a [`HostDomain`], bound with the device's owner): a device
//!   access is a miss unless the mirror translates the page with the access needed
//!   ([`Mechanism::device_translate`]); a remote mapping is its fault path (`hmm_range_fault`
//!   then a MAP in the domain); a migration to the device maps what it moved, as a fault
//!   batch's migration does.
//!
//! As in the kernel, a device's mapping of a page in another device's memory (a peer mapping,
//! which `hmm_range_fault` cannot give: it would migrate the page to RAM) lives in a side
//! table and goes when the page moves; a read copy is a page of the device's memory holding a
//! copy of the data, made by the mechanism and checked on every read and at the end.
//!
//! Every access is made on the data: a CPU access through the address space (so a CPU access
//! to a page not in RAM would really fault), a device access through its mirror's
//! translation, to the platform's RAM (`Where::Ram`, which the domain must map there) or to
//! the device page's storage (`Where::Local`). A write increments the page's first word (its
//! write count); its second word is `page ^ MAGIC`. [`Mechanism::finish`] checks every page
//! and every read copy against the writes made. Before each access the mechanism checks that
//! the page tables have the page where the engine says.
//!
//! Machines: a memory manager and its pagemap registry reference each other, so one is never
//! freed. A [`HostStack`] therefore leases a machine (memory manager, fake memory, devices)
//! from a pool and gives it back when dropped, idle, as the kernel's devices outlive a point:
//! its teardown unbinds the device MMUs, closes the files, gives back the read copies and
//! unmaps the managed pages (which frees the device pages); a machine that is not back to
//! the free memory it started with is not reused. A point gets a fresh address space.
//!
//! `now_ns` is the clock the constructor was given (the host's monotonic clock for `--host`,
//! a counter in tests): the wall time of the mechanism on the host, not a model.

use super::{CopyFault, DeviceOp, MechError, Mechanism, MirrorFault, NoAddressOf, PageOp, SetupStep, ShortWhy};
use crate::addr::Pfn;
use crate::devmmu::{Domain, DomainError, DomainFailure, DomainOp, IoMap, Mirror, Translation, Where};
use crate::dmirror::{Backing, CmdError, Dmirror, DmirrorDevice, ENOENT, RamBacking};
use crate::mm::notify::Owner;
use crate::mm::platform::Platform;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::pte::{Pte, SoftKind};
use crate::mm::space::AddressSpace;
use crate::mm::{Error, HUGE_FRAMES, Mm, SharedSpace};
use crate::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use crate::place::{Loc, MAX_DEVICES, PAGE};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::ToString;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::pages::{self, va};
pub use super::pages::{BASE, MAGIC};
/// Owner cookie of device `d`'s memory: `OWNER_BASE + d`.
pub const OWNER_BASE: u64 = 0x4057_0000;

/// The clock a [`HostStack`] reads for [`Mechanism::now_ns`], ns.
pub type Clock = Box<dyn Fn() -> u64>;

/// A device MMU domain in software: the IOVA pages it maps (IOVA = VA), refusing a MAP over a
/// mapped page as the virtio-iommu does. No DMA is ever in flight (the host's device accesses
/// are synchronous), so there is nothing to settle.
#[derive(Debug, Default)]
pub struct HostDomain {
    /// IOVA page → (physical address, writable).
    pages: BTreeMap<u64, (u64, bool)>,
}

impl HostDomain {
    /// What the domain maps at `va`: (physical address, writable).
    pub fn lookup(&self, va: u64) -> Option<(u64, bool)> {
        self.pages.get(&(va / PAGE)).copied()
    }

    /// Pages mapped.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Nothing mapped.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

impl Domain for HostDomain {
    type Ticket = ();

    fn map(&mut self, maps: &[IoMap]) -> Result<(), DomainError> {
        for m in maps {
            for k in 0..m.len / PAGE {
                if self.pages.insert(m.iova / PAGE + k, (m.phys + k * PAGE, m.write)).is_some() {
                    return Err(DomainError {
                        op: DomainOp::Map,
                        failure: DomainFailure::Invalid("MAP over a mapped IOVA"),
                    });
                }
            }
        }
        Ok(())
    }

    fn unmap(&mut self, start: u64, end: u64) -> Result<(), DomainError> {
        let mut tail = self.pages.split_off(&(start / PAGE));
        let mut rest = tail.split_off(&end.div_ceil(PAGE));
        self.pages.append(&mut rest);
        Ok(())
    }

    fn settle(&mut self, _: ()) -> Result<(), DomainError> {
        Ok(())
    }
}

/// Device memory as `test_hmm` emulates it (storage frames from RAM, CPU copies), capped at a
/// number of pages: past it, the device's allocator is refused.
struct Capped {
    inner: Arc<RamBacking>,
    cap: AtomicU64,
    used: AtomicU64,
}

impl Backing for Capped {
    fn add_chunk(
        &self,
        pagemaps: &Arc<Pagemaps>,
        kind: MemoryKind,
        owner: Owner,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        self.inner.add_chunk(pagemaps, kind, owner, frames, ops)
    }

    fn remove_chunk(&self, pagemaps: &Arc<Pagemaps>, chunk: &Arc<DevPagemap>) -> Result<(), Error> {
        self.inner.remove_chunk(pagemaps, chunk)
    }

    fn alloc_storage(&self, order: u32) -> Result<Pfn, Error> {
        let n = 1u64 << order;
        let cap = self.cap.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u + n <= cap).then_some(u + n))
            .map_err(|_| Error::NoMemory)?;
        self.inner.alloc_storage(order).inspect_err(|_| {
            self.used.fetch_sub(n, Ordering::AcqRel);
        })
    }

    fn free_storage(&self, frame: Pfn) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(1)));
        self.inner.free_storage(frame);
    }

    fn copy(&self, pairs: &[(Pfn, Option<Pfn>)]) -> Result<(), Error> {
        self.inner.copy(pairs)
    }

    fn describe(&self) -> &str {
        "RAM (emulated, as test_hmm), capped at the point's device memory"
    }
}

/// One device of a machine.
struct MachineDev {
    dev: Arc<DmirrorDevice>,
    backing: Arc<Capped>,
}

/// A host machine: fake memory, its memory manager and pagemap registry, and
/// [`MAX_DEVICES`] devices (which take no memory until used).
struct Machine {
    platform: Arc<FakePlatform>,
    mm: Arc<Mm>,
    pagemaps: Arc<Pagemaps>,
    devs: Vec<MachineDev>,
    /// RAM frames.
    frames: u64,
    /// Each device's memory grows in one chunk of this many pages.
    dev_frames: u64,
    /// Free frames when idle.
    idle_free: u64,
}

impl Machine {
    fn new(frames: u64, dev_frames: u64) -> Result<Machine, MechError> {
        let setup = |e| MechError::Setup(SetupStep::AddressSpace(e));
        let platform = Arc::new(FakePlatform::new(frames as usize));
        let mm = Mm::new(platform.clone(), &[(Pfn(BASE_PFN), frames)]).map_err(setup)?;
        let pagemaps = Pagemaps::install(&mm).map_err(setup)?;
        let devs = (0..MAX_DEVICES as u64)
            .map(|d| {
                let backing =
                    Arc::new(Capped { inner: RamBacking::new(&mm), cap: AtomicU64::new(0), used: AtomicU64::new(0) });
                let dev = DmirrorDevice::with_backing(
                    &pagemaps,
                    MemoryKind::Private,
                    Owner(OWNER_BASE + d),
                    dev_frames * PAGE,
                    backing.clone(),
                );
                MachineDev { dev, backing }
            })
            .collect();
        let idle_free = platform.free_frames();
        Ok(Machine { platform, mm, pagemaps, devs, frames, dev_frames, idle_free })
    }

    fn fits(&self, frames: u64, dev_frames: u64) -> bool {
        self.frames >= frames && self.dev_frames >= dev_frames
    }

    /// Back to the state it started in: no device page or storage in use, every frame free
    /// that was free then.
    fn idle(&self) -> bool {
        self.platform.free_frames() == self.idle_free
            && self.devs.iter().all(|d| d.dev.pages_in_use() == 0 && d.backing.used.load(Ordering::Acquire) == 0)
    }
}

/// The pool of idle machines [`HostStack`]s lease from.
struct Machines(spin::Mutex<Vec<Machine>>);

static MACHINES: Machines = Machines(spin::Mutex::new(Vec::new()));

impl Machines {
    /// The smallest idle machine with `frames` of RAM and devices of `dev_frames`, or a new one
    /// (sizes rounded up to powers of two, so few sizes exist).
    fn lease(&'static self, frames: u64, dev_frames: u64) -> Result<Lease, MechError> {
        let found = {
            let mut free = self.0.lock();
            let best = (0..free.len()).filter(|&i| free[i].fits(frames, dev_frames)).min_by_key(|&i| free[i].frames);
            best.map(|i| free.swap_remove(i))
        };
        let m = match found {
            Some(m) => m,
            None => {
                Machine::new(frames.next_power_of_two().max(4096), dev_frames.next_power_of_two().max(HUGE_FRAMES))?
            }
        };
        Ok(Lease { machine: Some(m), pool: self })
    }
}

/// A machine leased from the pool; back to it when dropped, if idle.
struct Lease {
    machine: Option<Machine>,
    pool: &'static Machines,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(m) = self.machine.take()
            && m.idle()
        {
            self.pool.0.lock().push(m);
        }
    }
}

/// One device of a point.
struct Dev {
    dev: Arc<DmirrorDevice>,
    backing: Arc<Capped>,
    file: Arc<Dmirror>,
    mirror: Arc<Mirror<HostDomain>>,
}

/// The HMM stack over the host platform as a [`Mechanism`].
pub struct HostStack {
    platform: Arc<FakePlatform>,
    mm: Arc<Mm>,
    pagemaps: Arc<Pagemaps>,
    space: Arc<SharedSpace>,
    devs: Vec<Dev>,
    /// Writes made to each page.
    writes: Vec<u32>,
    /// The CPU core the engine runs CPU accesses on now (all share the one address space).
    core: usize,
    /// Read copies: (page, device) → the copy's storage frame in that device's memory.
    copies: BTreeMap<(u32, u8), Pfn>,
    /// Peer mappings: a device's mapping of a page in another device's memory, which no
    /// device MMU holds; dropped when the page moves.
    soft_maps: BTreeSet<(u32, u8)>,
    clock: Clock,
    /// Migrations and read-copy calls made.
    moves: u64,
    /// Last: back to the pool once everything above is gone.
    _lease: Lease,
}

impl core::fmt::Debug for HostStack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostStack")
            .field("pages", &self.writes.len())
            .field("devices", &self.devs.len())
            .field("copies", &self.copies.len())
            .finish_non_exhaustive()
    }
}

impl HostStack {
    /// `pages` managed pages, all in system memory with their identity words, and devices of
    /// `capacities` pages; `clock` is what [`Mechanism::now_ns`] reads.
    pub fn new(pages: u32, capacities: &[u32], clock: Clock) -> Result<HostStack, MechError> {
        if capacities.len() > MAX_DEVICES {
            return Err(MechError::NoDevice(capacities.len() as u8 - 1));
        }
        let dev_frames = capacities.iter().copied().max().unwrap_or(0) as u64;
        let caps: u64 = capacities.iter().map(|&c| c as u64).sum();
        // The pages, the device memory (storage and read copies), page tables, the zero pages
        // and what a migration holds while it copies.
        let frames = pages as u64 + caps + (pages as u64).div_ceil(512) * 4 + 2 * HUGE_FRAMES + 64;
        let mut lease = MACHINES.lease(frames, dev_frames)?;
        let m = lease.machine.as_mut().ok_or(MechError::Setup(SetupStep::MmuBusy(0)))?;
        for (d, md) in m.devs.iter().enumerate() {
            if md.dev.pages_in_use() != 0 || md.backing.used.load(Ordering::Acquire) != 0 {
                return Err(MechError::Setup(SetupStep::MmuBusy(d)));
            }
            let cap = capacities.get(d).copied().unwrap_or(0);
            md.backing.cap.store(cap as u64, Ordering::Release);
        }
        let (platform, mm, pagemaps) = (m.platform.clone(), m.mm.clone(), m.pagemaps.clone());
        let machine_devs: Vec<(Arc<DmirrorDevice>, Arc<Capped>)> =
            m.devs.iter().take(capacities.len()).map(|d| (d.dev.clone(), d.backing.clone())).collect();
        let space = mm.share(AddressSpace::new(&mm).map_err(|e| MechError::Setup(SetupStep::AddressSpace(e)))?);
        pages::map(&mut space.lock(), pages)?;
        // From here on a failure drops what was set up so far (the teardown).
        let mut stack = HostStack {
            platform,
            mm,
            pagemaps,
            space,
            devs: Vec::new(),
            writes: vec![0; pages as usize],
            core: 0,
            copies: BTreeMap::new(),
            soft_maps: BTreeSet::new(),
            clock,
            moves: 0,
            _lease: lease,
        };
        // Every page populated by the CPU, with its identity word (the rest of it zero).
        {
            let mut s = stack.space.lock();
            let mut w = [0u8; 16];
            for p in 0..pages as u64 {
                w[8..].copy_from_slice(&pages::identity(p).to_le_bytes());
                s.write(BASE + p * PAGE, &w).map_err(|error| MechError::Setup(SetupStep::Fill { page: p, error }))?;
            }
        }
        for (dev, backing) in machine_devs {
            let owner = dev.owner();
            let file = Dmirror::open(&dev, &stack.space).map_err(|e| MechError::Setup(SetupStep::AddressSpace(e)))?;
            let mirror = Mirror::bind(&stack.space, owner, Some(stack.pagemaps.clone()), HostDomain::default());
            let mirror = match mirror {
                Ok(m) => m,
                Err(e) => {
                    let _ = file.close();
                    return Err(MechError::Setup(SetupStep::AddressSpace(e)));
                }
            };
            stack.devs.push(Dev { dev, backing, file, mirror });
        }
        Ok(stack)
    }

    /// Device `d`'s MMU.
    pub fn mirror(&self, d: u8) -> Option<&Arc<Mirror<HostDomain>>> {
        self.devs.get(d as usize).map(|x| &x.mirror)
    }

    /// Device `d`'s MMU translation of `page` (no fault).
    pub fn translate(&self, d: u8, page: u32) -> Option<Translation> {
        self.mirror(d)?.translate(va(page))
    }

    /// Device `d`'s memory.
    pub fn device(&self, d: u8) -> Option<&Arc<DmirrorDevice>> {
        self.devs.get(d as usize).map(|x| &x.dev)
    }

    /// Pages of device `d`'s memory in use: its pages and its read copies.
    pub fn device_pages_used(&self, d: u8) -> Option<u64> {
        self.devs.get(d as usize).map(|x| x.backing.used.load(Ordering::Acquire))
    }

    /// The platform (the machine's memory, for tests that reach behind the stack).
    pub fn platform(&self) -> &Arc<FakePlatform> {
        &self.platform
    }

    /// The address space holding the managed pages at [`BASE`].
    pub fn space(&self) -> &Arc<SharedSpace> {
        &self.space
    }

    /// Migrations and read-copy calls made so far.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Managed pages.
    pub fn pages(&self) -> u32 {
        self.writes.len() as u32
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Tears the stack down and hands back its machine instead of returning it to the pool.
    #[cfg(test)]
    fn into_machine(mut self) -> Option<Machine> {
        let m = self._lease.machine.take();
        drop(self);
        m
    }

    fn dev(&self, d: u8) -> Result<&Dev, MechError> {
        self.devs.get(d as usize).ok_or(MechError::NoDevice(d))
    }

    fn check_page(&self, p: u32) -> Result<(), MechError> {
        if (p as usize) < self.writes.len() { Ok(()) } else { Err(MechError::PageOutOfRange(p)) }
    }

    fn check_range(&self, first: u32, pages: u32) -> Result<(), MechError> {
        match first.checked_add(pages) {
            Some(end) if end as usize <= self.writes.len() => Ok(()),
            _ => Err(MechError::PageOutOfRange(first.saturating_add(pages).saturating_sub(1))),
        }
    }

    /// The storage frame of device page `pfn` of device `d`.
    fn storage(&self, d: u8, pfn: Pfn) -> Result<u64, MechError> {
        self.pagemaps
            .find(pfn)
            .and_then(|pm| pm.data(pfn))
            .filter(|&f| f != 0)
            .map(|f| f * PAGE)
            .ok_or(MechError::NoAddress { dev: d, at: NoAddressOf::Frame(pfn) })
    }

    /// Where page `p` really is (the CPU page tables), and the physical address of its data.
    pub fn locate(&self, p: u32) -> Result<(Loc, u64), MechError> {
        self.check_page(p)?;
        let pte = self.space.lock().lookup(va(p)).map(|e| e.pte);
        match pte {
            Some(Pte::Present(x)) => Ok((Loc::Cpu, x.pfn.addr())),
            Some(Pte::Soft(s)) if s.kind == SoftKind::DevicePrivate => {
                let owner = self.pagemaps.find(s.pfn).map(|pm| pm.owner());
                match self.devs.iter().position(|d| Some(d.dev.owner()) == owner) {
                    Some(d) => Ok((Loc::Dev(d as u8), self.storage(d as u8, s.pfn)?)),
                    None => Err(MechError::Entry { page: p, pte }),
                }
            }
            pte => Err(MechError::Entry { page: p, pte }),
        }
    }

    /// Where device `d`'s MMU takes its access to `page`: the mirror's translation (RAM
    /// through the domain, which must map it there), which must be `pa`, where the CPU page
    /// table has the page: a mirror that missed an invalidation would still point at the old
    /// frame.
    fn through_mirror(&self, d: u8, page: u32, write: bool, pa: u64) -> Result<u64, MechError> {
        let dev = self.dev(d)?;
        let t = dev.mirror.translate(va(page)).filter(|t| t.write || !write).ok_or(MechError::Mirror {
            dev: d,
            page,
            fault: MirrorFault::Unmapped,
        })?;
        let at = match t.at {
            Where::Ram(x) => {
                let mapped = dev.mirror.with_domain(|dom| dom.lookup(va(page)));
                match mapped {
                    Some((phys, w)) if phys == x && (w || !write) => x,
                    Some((phys, _)) => {
                        return Err(MechError::Mirror {
                            dev: d,
                            page,
                            fault: MirrorFault::Stale { at: phys, cpu: pa },
                        });
                    }
                    None => return Err(MechError::Mirror { dev: d, page, fault: MirrorFault::Unmapped }),
                }
            }
            Where::Local(pfn) => self.storage(d, pfn)?,
        };
        if at != pa {
            return Err(MechError::Mirror { dev: d, page, fault: MirrorFault::Stale { at, cpu: pa } });
        }
        Ok(at)
    }

    /// A device fault on `[first, first + pages)` through device `d`'s mirror.
    fn mirror_fault(&self, d: u8, first: u32, pages: u32) -> Result<(), MechError> {
        self.mirror_map(d, first, pages, false)
    }

    /// [`Self::mirror_fault`], for reads only when `read_only` (a mapping made ahead).
    fn mirror_map(&self, d: u8, first: u32, pages: u32, read_only: bool) -> Result<(), MechError> {
        let (a, b) = (va(first), va(first) + pages as u64 * PAGE);
        let m = &self.dev(d)?.mirror;
        let r = if read_only { m.fault_read_only(a, b) } else { m.fault(a, b, false) };
        r.map_err(|e| MechError::Mirror { dev: d, page: first, fault: MirrorFault::Fault(e.to_string()) })
    }

    /// Checks that the data at `pa` is page `p`'s (its identity word) with every write the
    /// page has had (its count); `copy` is the device whose read copy it is, if it is one.
    fn check_data(&self, copy: Option<u8>, p: u32, pa: u64) -> Result<(), MechError> {
        let mut w = [0u8; 16];
        self.platform.read(pa, &mut w);
        pages::check(copy, p, w, self.writes[p as usize])
    }

    /// Pages of `[first, first + pages)` now at `at`.
    fn count_at(&self, first: u32, pages: u32, at: Loc) -> Result<u64, MechError> {
        let mut n = 0;
        for p in first..first + pages {
            if self.locate(p)?.0 == at {
                n += 1;
            }
        }
        Ok(n)
    }

    /// `migrate_vma` of `[first, first + pages)` (all in RAM) into device `d`'s memory.
    fn to_dev(&self, d: u8, first: u32, pages: u32, op: DeviceOp) -> Result<u64, MechError> {
        match self.dev(d)?.file.migrate_to_dev(va(first), pages as u64) {
            Ok(_) => Ok(pages as u64),
            // A page did not reach the device (its allocator refused): count what did.
            Err(CmdError { errno: ENOENT, .. }) => self.count_at(first, pages, Loc::Dev(d)),
            Err(e) => Err(MechError::Device { op, cause: e.to_string() }),
        }
    }

    /// `migrate_vma` of device `d`'s pages among `[first, first + pages)` back to RAM.
    fn to_sys(&self, d: u8, first: u32, pages: u32, op: DeviceOp) -> Result<u64, MechError> {
        self.dev(d)?
            .file
            .migrate_to_sys(va(first), pages as u64)
            .map(|c| c.cpages)
            .map_err(|e| MechError::Device { op, cause: e.to_string() })
    }

    fn migrate_pages(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        self.check_range(first, pages)?;
        for p in first..first + pages {
            let here = self.locate(p)?.0;
            if here != from {
                return Err(MechError::Misplaced { page: p, op: PageOp::Migrate, expected: from, found: here });
            }
        }
        let op = DeviceOp::Migrate { first, pages, from, to };
        let moved = match (from, to) {
            (Loc::Cpu, Loc::Dev(d)) => self.to_dev(d, first, pages, op)?,
            (Loc::Dev(d), Loc::Cpu) => self.to_sys(d, first, pages, op)?,
            (Loc::Dev(a), Loc::Dev(b)) if a == b => 0,
            (Loc::Dev(a), Loc::Dev(b)) => {
                // Through RAM: out of `a`, then into `b`; as many as `b` has room for (the
                // first ones), the rest staying in `a`, as a direct device-to-device
                // migration whose allocation on `b` fails leaves them.
                let backing = &self.dev(b)?.backing;
                let room = backing.cap.load(Ordering::Acquire).saturating_sub(backing.used.load(Ordering::Acquire));
                let n = (pages as u64).min(room) as u32;
                if n == 0 {
                    0
                } else {
                    let out = self.to_sys(a, first, n, op)?;
                    if out != n as u64 {
                        return Err(MechError::Short { first, pages, from, to, moved: 0, why: ShortWhy::Stayed });
                    }
                    let moved = self.to_dev(b, first, n, op)?;
                    if moved != n as u64 {
                        return Err(MechError::Short { first, pages, from, to, moved, why: ShortWhy::NoRoom });
                    }
                    moved
                }
            }
            (Loc::Cpu, Loc::Cpu) => 0,
        };
        let want = if from == to { 0 } else { pages as u64 };
        // A device's allocator may refuse pages (the device is full): those stay where they
        // are, and the engine reads back which moved. Any other short move is an error.
        if moved != want && to == Loc::Cpu {
            return Err(MechError::Short { first, pages, from, to, moved, why: ShortWhy::Stayed });
        }
        // The migration invalidated every mirror's mapping of the pages that moved; the peer
        // mappings go with them. The destination device maps what it received, as a fault
        // batch's migration does.
        if moved == want {
            self.soft_maps.retain(|&(p, _)| p < first || p >= first + pages);
            if let Loc::Dev(d) = to
                && from != to
            {
                self.mirror_fault(d, first, pages)?;
            }
        } else if let Loc::Dev(d) = to {
            for p in first..first + pages {
                if self.locate(p)?.0 == to {
                    self.soft_maps.retain(|&(q, _)| q != p);
                    self.mirror_fault(d, p, 1)?;
                }
            }
        }
        Ok(moved)
    }

    fn duplicate_pages(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<(), MechError> {
        self.check_range(first, pages)?;
        let frames = pages::copy_sources(
            (first, pages),
            from,
            dev,
            |p| self.locate(p),
            |p| self.copies.contains_key(&(p, dev)),
        )?;
        let backing = self.dev(dev)?.backing.clone();
        let mut made = Vec::with_capacity(frames.len());
        for &src in &frames {
            match backing.alloc_storage(0) {
                Ok(k) => {
                    self.mm.platform().copy(k, src, 1);
                    made.push(k);
                }
                Err(e) => {
                    for &k in &made {
                        backing.free_storage(k);
                    }
                    return Err(MechError::Device {
                        op: DeviceOp::ReadCopies { first, pages, dev },
                        cause: alloc::format!("{} of {} read copies made: {e}", made.len(), frames.len()),
                    });
                }
            }
        }
        for (p, k) in (first..).zip(made) {
            self.copies.insert((p, dev), k);
        }
        Ok(())
    }

    fn access_page(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        self.check_page(page)?;
        if let Loc::Dev(d) = by
            && at == by
            && let Some(&k) = self.copies.get(&(page, d))
        {
            if write {
                return Err(MechError::Copy { page, dev: d, fault: CopyFault::Written });
            }
            return self.check_data(Some(d), page, k.addr());
        }
        let (real, pa) = self.locate(page)?;
        if real != at {
            return Err(MechError::Misplaced { page, op: PageOp::Access(by), expected: at, found: real });
        }
        match by {
            Loc::Cpu => return self.cpu_access(page, write),
            Loc::Dev(d) => {
                // Through the device's MMU (local memory, or RAM mapped remotely), which must
                // agree with the CPU page table; a peer mapping reaches the other device's
                // memory at its address.
                let pa =
                    if self.soft_maps.contains(&(page, d)) { pa } else { self.through_mirror(d, page, write, pa)? };
                let mut w = [0u8; 8];
                self.platform.read(pa, &mut w);
                if write {
                    self.platform.write(pa, &(u64::from_le_bytes(w) + 1).to_le_bytes());
                }
            }
        }
        if write {
            self.writes[page as usize] += 1;
        }
        Ok(())
    }
}

impl HostStack {
    /// A user access to `page` through the page tables (a page not in RAM faults), counted
    /// when it writes.
    fn cpu_access(&mut self, page: u32, write: bool) -> Result<(), MechError> {
        let a = va(page);
        {
            let mut s = self.space.lock();
            let mut w = [0u8; 8];
            let r = s
                .read(a, &mut w)
                .and_then(|()| if write { s.write(a, &(u64::from_le_bytes(w) + 1).to_le_bytes()) } else { Ok(()) });
            r.map_err(|error| MechError::CpuFault { page, cpu: self.core, address: a, error })?;
        }
        if write {
            self.writes[page as usize] += 1;
        }
        Ok(())
    }
}

impl Mechanism for HostStack {
    fn migrate(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        self.moves += 1;
        let t0 = self.now();
        self.migrate_pages(first, pages, from, to)?;
        Ok(self.now().saturating_sub(t0))
    }

    fn device_translate(&mut self, dev: u8, page: u32, write: bool) -> Result<Option<Loc>, MechError> {
        self.check_page(page)?;
        if !write && self.copies.contains_key(&(page, dev)) {
            return Ok(Some(Loc::Dev(dev)));
        }
        if self.soft_maps.contains(&(page, dev)) {
            return Ok(Some(self.locate(page)?.0));
        }
        Ok(self.dev(dev)?.mirror.translate(va(page)).filter(|t| t.write || !write).map(|t| match t.at {
            Where::Local(_) => Loc::Dev(dev),
            Where::Ram(_) => Loc::Cpu,
        }))
    }

    fn map_remote(&mut self, first: u32, pages: u32, dev: u8, read_only: bool) -> Result<(), MechError> {
        self.check_range(first, pages)?;
        self.dev(dev)?;
        let mut run: Option<(u32, u32)> = None;
        for p in first..first + pages {
            match self.locate(p)?.0 {
                // In RAM: the mirror's range fault maps it.
                Loc::Cpu => {
                    run = match run {
                        Some((a, n)) if a + n == p => Some((a, n + 1)),
                        Some((a, n)) => {
                            self.mirror_map(dev, a, n, read_only)?;
                            Some((p, 1))
                        }
                        None => Some((p, 1)),
                    };
                }
                // Its own memory: mapped already.
                Loc::Dev(d) if d == dev => {}
                // Another device's memory: a peer mapping.
                Loc::Dev(_) => {
                    self.soft_maps.insert((p, dev));
                }
            }
        }
        if let Some((a, n)) = run {
            self.mirror_map(dev, a, n, read_only)?;
        }
        Ok(())
    }

    fn unmap_remote(&mut self, first: u32, pages: u32, dev: u8) -> Result<(), MechError> {
        self.check_range(first, pages)?;
        let m = &self.dev(dev)?.mirror;
        m.unmap_remote(va(first), va(first) + pages as u64 * PAGE).map_err(|e| MechError::Mirror {
            dev,
            page: first,
            fault: MirrorFault::Fault(e.to_string()),
        })?;
        for p in first..first + pages {
            self.soft_maps.remove(&(p, dev));
        }
        Ok(())
    }

    fn resident(&mut self, page: u32) -> Result<Loc, MechError> {
        Ok(self.locate(page)?.0)
    }

    fn set_capacities(&mut self, capacities: &[u32]) {
        // Each device's storage refuses past the run's share, as a full device does.
        for (d, &cap) in self.devs.iter().zip(capacities) {
            d.backing.cap.store(cap as u64, Ordering::Release);
        }
    }

    fn cpu_fault(&mut self, page: u32, write: bool, first: u32, pages: u32) -> Result<u64, MechError> {
        let t0 = self.now();
        self.check_page(page)?;
        let from = self.locate(page)?.0;
        let end = first.saturating_add(pages).min(self.writes.len() as u32);
        // The access faults in the address space's fault path, whose device (dmirror's
        // `migrate_to_ram`) migrates its pages in the window the policy chose.
        let space = self.space.clone();
        pages::fault_in_window(&space, page, from, (first, end), || self.cpu_access(page, write))?;
        // Peer mappings go with the pages that moved.
        for p in first..end {
            if self.locate(p)?.0 == Loc::Cpu {
                self.soft_maps.retain(|&(q, _)| q != p);
            }
        }
        Ok(self.now().saturating_sub(t0))
    }

    fn can_duplicate(&self) -> bool {
        true
    }

    fn duplicate(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError> {
        self.moves += 1;
        let t0 = self.now();
        self.duplicate_pages(first, pages, from, dev)?;
        Ok(self.now().saturating_sub(t0))
    }

    fn drop_copy(&mut self, page: u32, dev: u8) -> Result<(), MechError> {
        let k = self.copies.remove(&(page, dev)).ok_or(MechError::Copy { page, dev, fault: CopyFault::Missing })?;
        self.dev(dev)?.backing.free_storage(k);
        Ok(())
    }

    fn access(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        self.access_page(by, at, page, write)
    }

    fn finish(&mut self) -> Result<(), MechError> {
        for (&(p, d), &k) in &self.copies {
            self.check_data(Some(d), p, k.addr())?;
        }
        for p in 0..self.writes.len() as u32 {
            let (_, pa) = self.locate(p)?;
            self.check_data(None, p, pa)?;
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.now()
    }

    fn on_core(&mut self, core: u32) {
        self.core = core as usize;
    }
}

impl Drop for HostStack {
    fn drop(&mut self) {
        // The device MMUs stop mirroring the space, the files close, the read copies go back
        // to their devices, and unmapping frees the device pages; the machine goes back to
        // the pool if all of it came back (its lease is dropped last).
        for d in &self.devs {
            let _ = d.mirror.unbind();
            let _ = d.file.close();
        }
        for (&(_, d), &k) in &self.copies {
            if let Some(dev) = self.devs.get(d as usize) {
                dev.backing.free_storage(k);
            }
        }
        self.copies.clear();
        let len = self.writes.len() as u64 * PAGE;
        if len > 0 {
            let _ = self.space.lock().munmap(BASE, len);
        }
    }
}

#[cfg(test)]
mod tests;
