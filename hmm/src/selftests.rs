//! The hmm-tests acceptance suite (`tools/testing/selftests/mm/hmm-tests.c`), ported scenario
//! by scenario against the [`dmirror`](crate::dmirror) test device.
//!
//! Each scenario has the setup and the assertions of its Linux original (return codes,
//! `cpages`, `faults`, snapshot bytes, data) and runs once per fixture variant: device-private
//! (devices 0 and 1) and device-coherent (devices 2 and 3). The CPU side goes through a [`Cpu`]:
//! on the host it is the address space's own access path; in the kernel it is real loads and
//! stores through the MMU, so every fault is a real page fault. Scenarios that cannot run here
//! report [`Outcome::Skip`] with the reason, as hmm-tests' `SKIP()` does.

use crate::dmirror::{Backing, Counts, Dmirror, DmirrorDevice, EINVAL, ENOENT, EPERM, RamBacking, prot};
use crate::legacy::olddev::OldDevice;
use crate::mm::file::MemFile;
use crate::mm::notify::Owner;
use crate::mm::space::{AddressSpace, Advice, FaultError, MapRequest, RemapFlags, with_migration_wait};
use crate::mm::vma::Prot;
use crate::mm::{Error, Mm, SharedSpace};
use crate::pagemap::{MemoryKind, Pagemaps};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

const PAGE: u64 = 4096;
const PMD: u64 = 2 << 20;
/// `HMM_BUFFER_SIZE`: 4 MiB.
const BUFFER: u64 = 4 << 20;
const NPAGES: u64 = BUFFER / PAGE;
/// Device memory of each old-API device.
const OLD_DEVICE_BYTES: u64 = 2 << 20;

/// How a scenario waits for a second thread it started: `Err` if the thread did not finish.
pub type Join = Box<dyn FnOnce() -> Result<(), String>>;

/// The CPU's access to a process's memory, and its second thread.
pub trait Cpu: Sync {
    /// Loads `buf.len()` bytes at `va`.
    fn read(&self, space: &Arc<SharedSpace>, va: u64, buf: &mut [u8]) -> Result<(), FaultError>;
    /// Stores `data` at `va`.
    fn write(&self, space: &Arc<SharedSpace>, va: u64, data: &[u8]) -> Result<(), FaultError>;
    /// Runs `task` concurrently, after a pause of about `pause_us` microseconds (`usleep`),
    /// as another thread of the process (on another CPU where there is one), and returns how
    /// to wait for it; `None` where the platform has no second thread, and the scenarios that
    /// need one skip.
    fn spawn(&self, pause_us: u64, task: Box<dyn FnOnce() + Send>) -> Option<Join> {
        let _ = (pause_us, task);
        None
    }
}

/// The address space's own access path (`access_process_vm`), for host runs. A page under
/// migration is waited for as the kernel's page-fault loop waits ([`with_migration_wait`]:
/// the lock dropped, the platform's bounded [`migration_wait`](crate::mm::Platform::migration_wait),
/// then the access again), so a scenario never sees `Migrating` where a real load or store
/// would have waited.
#[derive(Debug, Default)]
pub struct SpaceCpu;

impl Cpu for SpaceCpu {
    fn read(&self, space: &Arc<SharedSpace>, va: u64, buf: &mut [u8]) -> Result<(), FaultError> {
        with_migration_wait(space, |s| s.read(va, buf))
    }
    fn write(&self, space: &Arc<SharedSpace>, va: u64, data: &[u8]) -> Result<(), FaultError> {
        with_migration_wait(space, |s| s.write(va, data))
    }
    // Host test runs have std threads, each its own notifier context (without that every
    // thread is context 0, and a read_begin during another thread's invalidation looks like a
    // callback waiting on itself).
    #[cfg(test)]
    fn spawn(&self, pause_us: u64, task: Box<dyn FnOnce() + Send>) -> Option<Join> {
        static NEXT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);
        std::thread_local!(static ID: u64 = NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed));
        crate::notifier::set_context_fn(|| ID.with(|i| *i));
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_micros(pause_us));
            task()
        });
        Some(Box::new(move || t.join().map_err(|_| String::from("the second thread panicked"))))
    }
}

/// The fixture variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `hmm_device_private` / `hmm2_device_private`: devices 0 and 1.
    Private,
    /// `hmm_device_coherent` / `hmm2_device_coherent`: devices 2 and 3.
    Coherent,
}

impl Variant {
    /// Both variants, in hmm-tests order.
    pub const ALL: [Variant; 2] = [Variant::Private, Variant::Coherent];
    /// The fixture name (`hmm` or `hmm2` prefix added by the caller).
    pub fn fixture(self, two: bool) -> &'static str {
        match (self, two) {
            (Variant::Private, false) => "hmm_device_private",
            (Variant::Coherent, false) => "hmm_device_coherent",
            (Variant::Private, true) => "hmm2_device_private",
            (Variant::Coherent, true) => "hmm2_device_coherent",
        }
    }
}

/// A scenario's result when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every assertion held.
    Pass,
    /// Not run, with the reason.
    Skip(&'static str),
}

/// What a scenario returns.
pub type Verdict = Result<Outcome, String>;

/// The four dmirror devices and the CPU, shared by every scenario.
pub struct Env<'a> {
    /// The memory manager.
    pub mm: Arc<Mm>,
    /// `hmm_dmirror0..3`: 0 and 1 private, 2 and 3 coherent.
    pub devs: [Arc<DmirrorDevice>; 4],
    /// The old-API device (`hmm_devmem`, `hmm_mirror`) of each variant: private, then
    /// `DEVICE_PUBLIC` (coherent).
    pub old: [Arc<OldDevice>; 2],
    /// The CPU.
    pub cpu: &'a dyn Cpu,
}

impl core::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Env").field("devs", &self.devs).finish_non_exhaustive()
    }
}

impl<'a> Env<'a> {
    /// Installs the pagemap registry on `mm` and creates the four devices, each adding device
    /// memory `chunk_bytes` at a time.
    pub fn new(mm: &Arc<Mm>, cpu: &'a dyn Cpu, chunk_bytes: u64) -> Result<Env<'a>, Error> {
        Self::with_pagemaps(&Pagemaps::install(mm)?, cpu, chunk_bytes)
    }

    /// [`Env::new`] on a pagemap registry already installed (beside other devices).
    pub fn with_pagemaps(pm: &Arc<Pagemaps>, cpu: &'a dyn Cpu, chunk_bytes: u64) -> Result<Env<'a>, Error> {
        let ram = || -> Arc<dyn Backing> { RamBacking::new(pm.mm()) };
        Self::with_backings(pm, cpu, chunk_bytes, [ram(), ram(), ram(), ram()])
    }

    /// [`Env::with_pagemaps`] with the memory and copy engine of each dmirror device given:
    /// `backings[n]` backs `hmm_dmirror<n>` (0 and 1 private, 2 and 3 coherent), so the suite
    /// runs on real device memory copied by real DMA.
    pub fn with_backings(
        pm: &Arc<Pagemaps>,
        cpu: &'a dyn Cpu,
        chunk_bytes: u64,
        backings: [Arc<dyn Backing>; 4],
    ) -> Result<Env<'a>, Error> {
        let mm = pm.mm();
        let [b0, b1, b2, b3] = backings;
        let dev = |kind, n: u64, b| DmirrorDevice::with_backing(pm, kind, Owner(0xd000 + n), chunk_bytes, b);
        Ok(Env {
            mm: mm.clone(),
            devs: [
                dev(MemoryKind::Private, 0, b0),
                dev(MemoryKind::Private, 1, b1),
                dev(MemoryKind::Coherent, 2, b2),
                dev(MemoryKind::Coherent, 3, b3),
            ],
            old: [
                OldDevice::new(pm, false, Owner(0xd010), OLD_DEVICE_BYTES)?,
                OldDevice::new(pm, true, Owner(0xd011), OLD_DEVICE_BYTES)?,
            ],
            cpu,
        })
    }

    /// Evicts every device's memory to RAM and removes it (driver unbind). Call with no
    /// address space locked.
    pub fn release(&self) -> Result<(), String> {
        for d in &self.devs {
            d.release().map_err(|e| format!("releasing {d:?}: {e}"))?;
        }
        for d in &self.old {
            d.release().map_err(|e| format!("releasing {d:?}: {e}"))?;
        }
        Ok(())
    }

    fn open(&self, v: Variant, second: bool, p: &Arc<SharedSpace>) -> Result<Arc<Dmirror>, String> {
        let n = match v {
            Variant::Private => 0,
            Variant::Coherent => 2,
        } + usize::from(second);
        Dmirror::open(&self.devs[n], p).map_err(|e| format!("open hmm_dmirror{n}: {e}"))
    }

    fn process(&self) -> Result<Arc<SharedSpace>, String> {
        let s = AddressSpace::new(&self.mm).map_err(|e| format!("new address space: {e}"))?;
        Ok(self.mm.share(s))
    }

    fn ints(&self, p: &Arc<SharedSpace>, va: u64, n: u64) -> Result<Vec<i32>, String> {
        let mut b = alloc::vec![0u8; (n * 4) as usize];
        self.cpu.read(p, va, &mut b).map_err(|e| format!("CPU read at {va:#x}: {e}"))?;
        Ok(b.chunks(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn fill(&self, p: &Arc<SharedSpace>, va: u64, n: u64, f: impl Fn(u64) -> i32) -> Result<(), String> {
        let b: Vec<u8> = (0..n).flat_map(|i| f(i).to_le_bytes()).collect();
        self.cpu.write(p, va, &b).map_err(|e| format!("CPU write at {va:#x}: {e}"))
    }
}

fn ints_of(b: &[u8]) -> Vec<i32> {
    b.chunks(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn bytes_of(n: u64, f: impl Fn(u64) -> i32) -> Vec<u8> {
    (0..n).flat_map(|i| f(i).to_le_bytes()).collect()
}

macro_rules! ensure {
    ($c:expr) => {
        if !$c {
            return Err(format!("assertion failed: {} (line {})", stringify!($c), line!()));
        }
    };
    ($c:expr, $($m:tt)+) => {
        if !$c {
            return Err(format!("{} ({}, line {})", format_args!($($m)+), stringify!($c), line!()));
        }
    };
}

macro_rules! ok {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Err(format!("{} failed: {:?} (line {})", stringify!($e), e, line!())),
        }
    };
}

/// Migrates `n` pages at `a` to `d`'s memory, checks that all of them reached the device
/// (`cpages == n`) and returns the ints the device read back.
fn migrated(d: &Dmirror, a: u64, n: u64) -> Result<Vec<i32>, String> {
    let (m, c) = d.migrate_to_dev(a, n).map_err(|e| format!("migrating {n} pages at {a:#x}: {e}"))?;
    counts(c, n, None)?;
    Ok(ints_of(&m))
}

fn check_ints(got: &[i32], f: impl Fn(u64) -> i32, what: &str) -> Result<(), String> {
    for (i, &g) in got.iter().enumerate() {
        let want = f(i as u64);
        if g != want {
            return Err(format!("{what}: int {i} is {g}, expected {want}"));
        }
    }
    Ok(())
}

fn mmap(p: &Arc<SharedSpace>, r: MapRequest) -> Result<u64, String> {
    p.lock().mmap(r).map_err(|e| format!("mmap: {e}"))
}

fn counts(c: Counts, cpages: u64, faults: Option<u64>) -> Result<(), String> {
    ensure!(c.cpages == cpages, "cpages {} != {cpages}", c.cpages);
    if let Some(f) = faults {
        ensure!(c.faults == f, "faults {} != {f}", c.faults);
    }
    Ok(())
}

/// One scenario of the suite.
#[derive(Clone, Copy)]
pub struct Scenario {
    /// The hmm-tests name (without the fixture).
    pub name: &'static str,
    /// Uses the two-device fixture (`hmm2`).
    pub two: bool,
    /// The body.
    pub run: fn(&Env<'_>, Variant) -> Verdict,
}

impl core::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

impl Scenario {
    /// The full kselftest name, e.g. `hmm.hmm_device_private.anon_read`.
    pub fn full_name(&self, v: Variant) -> String {
        format!("{}.{}.{}", if self.two { "hmm2" } else { "hmm" }, v.fixture(self.two), self.name)
    }
}

macro_rules! scenarios {
    ($($name:ident $(two=$two:literal)?),* $(,)?) => {
        /// Every scenario, in hmm-tests order.
        pub const SCENARIOS: &[Scenario] = &[
            $(Scenario { name: stringify!($name), two: false $(|| $two)?, run: $name }),*
        ];
    };
}

scenarios!(
    open_close,
    anon_read,
    anon_read_prot,
    anon_write,
    anon_write_prot,
    anon_write_child,
    anon_write_child_shared,
    anon_write_huge,
    anon_write_hugetlbfs,
    file_read,
    file_write,
    migrate,
    migrate_file_private,
    migrate_fault,
    migrate_release,
    migrate_shared,
    migrate_mixed two = true,
    migrate_multiple,
    anon_read_multiple,
    anon_teardown,
    mixedmap,
    snapshot two = true,
    compound,
    double_map two = true,
    exclusive,
    exclusive_mprotect,
    exclusive_cow,
    hmm_gup_test,
    hmm_cow_in_device,
    migrate_anon_huge_empty,
    migrate_anon_huge_zero,
    migrate_anon_huge_free,
    migrate_anon_huge_fault,
    migrate_partial_unmap_fault,
    migrate_remap_fault,
    migrate_anon_huge_err,
    migrate_anon_huge_zero_err,
    benchmark_thp_migration,
);

// ------------------------------------------------------------------------------------------

/// Open registers the file's notifier over the address space and close removes it: after
/// close no invalidation reaches the file, its table is empty and device accesses are refused.
fn open_close(env: &Env<'_>, v: Variant) -> Verdict {
    use core::sync::atomic::Ordering::Relaxed;
    let p = env.process()?;
    let intervals = || crate::notifier::Subscriptions::of(&mut p.lock()).len();
    let before = intervals();
    let d = env.open(v, false, &p)?;
    ensure!(intervals() == before + 1, "open registered {} intervals", intervals() - before);
    let a = mmap(&p, MapRequest::anon(2 * PAGE, Prot::RW))?;
    env.fill(&p, a, 2048, |i| i as i32)?;
    let (m, _) = ok!(d.read(a, 2));
    check_ints(&ints_of(&m), |i| i as i32, "mirror")?;
    let seen = d.invalidations.load(Relaxed);
    ok!(p.lock().munmap(a + PAGE, PAGE));
    ensure!(d.invalidations.load(Relaxed) == seen + 1, "munmap of an open file's page did not reach it");
    ok!(d.close());
    ensure!(intervals() == before, "{} intervals after close, {before} before open", intervals());
    let seen = d.invalidations.load(Relaxed);
    ok!(p.lock().munmap(a, PAGE));
    ensure!(d.invalidations.load(Relaxed) == seen, "an invalidation reached the closed file");
    let e = d.read(a, 1).err().map(|e| e.errno);
    ensure!(e == Some(EINVAL), "device read through the closed file gave {e:?}");
    Ok(Outcome::Pass)
}

fn anon_read(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    // Fill all but the first two pages.
    env.fill(&p, a + 2 * PAGE, (NPAGES - 2) * 1024, |i| (i + 2048) as i32)?;
    ok!(p.lock().mprotect(a, BUFFER, Prot::READ));
    // Page 1 maps the zero page; page 0 stays empty.
    ensure!(env.ints(&p, a + PAGE, 1)?[0] == 0);
    let (m, c) = ok!(d.read(a, NPAGES));
    counts(c, NPAGES, Some(1))?;
    check_ints(&ints_of(&m), |i| if i < 2048 { 0 } else { i as i32 }, "mirror")?;
    Ok(Outcome::Pass)
}

fn anon_read_prot(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    ok!(p.lock().mprotect(a, BUFFER, Prot::NONE));
    let e = d.read(a, NPAGES).err().map(|e| e.errno);
    ensure!(e == Some(crate::dmirror::EFAULT), "READ of PROT_NONE gave {e:?}");
    ok!(p.lock().mprotect(a, BUFFER, Prot::READ));
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn anon_write(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    let c = ok!(d.write(a, &bytes_of(NPAGES * 1024, |i| i as i32)));
    counts(c, NPAGES, Some(1))?;
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn anon_write_prot(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::READ))?;
    let (_, c) = ok!(d.read(a, 1));
    counts(c, 1, Some(1))?;
    let e = d.write(a, &bytes_of(NPAGES * 1024, |i| i as i32)).err().map(|e| e.errno);
    ensure!(e == Some(EPERM), "WRITE to read-only memory gave {e:?}");
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |_| 0, "CPU")?;
    ok!(p.lock().mprotect(a, BUFFER, Prot::RW));
    let c = ok!(d.write(a, &bytes_of(NPAGES * 1024, |i| i as i32)));
    counts(c, NPAGES, Some(1))?;
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn fork(env: &Env<'_>, p: &Arc<SharedSpace>) -> Result<Arc<SharedSpace>, String> {
    let child = p.lock().fork().map_err(|e| format!("fork: {e}"))?;
    Ok(env.mm.share(child))
}

fn anon_write_child(env: &Env<'_>, v: Variant) -> Verdict {
    for migrate in [false, true] {
        for thp in [false, true] {
            let p = env.process()?;
            let d = env.open(v, false, &p)?;
            let (a, size) = if thp {
                let m = mmap(&p, MapRequest::anon(2 * PMD, Prot::RW))?;
                let a = m.next_multiple_of(PMD);
                ok!(p.lock().madvise(a, PMD, Advice::HugePage));
                (a, PMD)
            } else {
                (mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?, BUFFER)
            };
            let (n, ints) = (size / PAGE, size / 4);
            env.fill(&p, a, ints, |i| i as i32)?;
            if migrate {
                migrated(&d, a, n)?;
            }
            let child = fork(env, &p)?;
            // Child: sees the parent's values, then its own device writes -i.
            check_ints(&env.ints(&child, a, ints)?, |i| i as i32, "child CPU")?;
            let cd = env.open(v, false, &child)?;
            let c = ok!(cd.write(a, &bytes_of(ints, |i| -(i as i32))));
            counts(c, n, Some(1))?;
            check_ints(&env.ints(&child, a, ints)?, |i| -(i as i32), "child CPU after device write")?;
            ok!(cd.close());
            drop(child);
            // Parent: unchanged (copy-on-write).
            check_ints(&env.ints(&p, a, ints)?, |i| i as i32, "parent CPU")?;
        }
    }
    Ok(Outcome::Pass)
}

fn anon_write_child_shared(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW).shared())?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    let child = fork(env, &p)?;
    check_ints(&env.ints(&child, a, NPAGES * 1024)?, |i| i as i32, "child CPU")?;
    let cd = env.open(v, false, &child)?;
    let c = ok!(cd.write(a, &bytes_of(NPAGES * 1024, |i| -(i as i32))));
    counts(c, NPAGES, Some(1))?;
    check_ints(&env.ints(&child, a, NPAGES * 1024)?, |i| -(i as i32), "child CPU")?;
    drop(cd);
    drop(child);
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| -(i as i32), "parent CPU (shared)")?;
    Ok(Outcome::Pass)
}

fn anon_write_huge(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let m = mmap(&p, MapRequest::anon(2 * PMD, Prot::RW))?;
    let a = m.next_multiple_of(PMD);
    ok!(p.lock().madvise(a, PMD, Advice::HugePage));
    let c = ok!(d.write(a, &bytes_of(PMD / 4, |i| i as i32)));
    counts(c, PMD / PAGE, Some(1))?;
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn anon_write_hugetlbfs(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(PMD, Prot::RW).hugetlb())?;
    let c = ok!(d.write(a, &bytes_of(PMD / 4, |i| i as i32)));
    counts(c, PMD / PAGE, Some(1))?;
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn file_read(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let f = MemFile::new(&env.mm, BUFFER);
    ok!(f.write_at(0, &bytes_of(NPAGES * 1024, |i| i as i32)));
    let a = mmap(&p, MapRequest::file(&f, 0, BUFFER, Prot::READ).shared())?;
    let (m, c) = ok!(d.read(a, NPAGES));
    counts(c, NPAGES, Some(1))?;
    check_ints(&ints_of(&m), |i| i as i32, "mirror")?;
    Ok(Outcome::Pass)
}

fn file_write(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let f = MemFile::new(&env.mm, BUFFER);
    let a = mmap(&p, MapRequest::file(&f, 0, BUFFER, Prot::RW).shared())?;
    let c = ok!(d.write(a, &bytes_of(NPAGES * 1024, |i| i as i32)));
    counts(c, NPAGES, Some(1))?;
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| i as i32, "CPU")?;
    let mut b = alloc::vec![0u8; BUFFER as usize];
    ensure!(f.read_at(0, &mut b) == BUFFER as usize);
    check_ints(&ints_of(&b), |i| i as i32, "pread")?;
    Ok(Outcome::Pass)
}

fn migrate(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    check_ints(&migrated(&d, a, NPAGES)?, |i| i as i32, "mirror")?;
    Ok(Outcome::Pass)
}

fn migrate_file_private(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let f = MemFile::new(&env.mm, BUFFER);
    let a = mmap(&p, MapRequest::file(&f, 0, BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    check_ints(&migrated(&d, a, NPAGES)?, |i| i as i32, "mirror")?;
    Ok(Outcome::Pass)
}

fn migrate_fault(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    check_ints(&migrated(&d, a, NPAGES)?, |i| i as i32, "mirror")?;
    check_ints(&env.ints(&p, a, NPAGES * 512)?, |i| i as i32, "CPU (first half, faulted back)")?;
    check_ints(&migrated(&d, a, NPAGES)?, |i| i as i32, "mirror (mixed)")?;
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn migrate_release(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    check_ints(&migrated(&d, a, NPAGES)?, |i| i as i32, "mirror")?;
    ok!(d.device().release());
    ensure!(d.device().pages_in_use() == 0, "device memory still in use after RELEASE");
    check_ints(&env.ints(&p, a, NPAGES * 512)?, |i| i as i32, "CPU after release")?;
    Ok(Outcome::Pass)
}

fn migrate_shared(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW).shared())?;
    let e = d.migrate_to_dev(a, NPAGES).err().map(|e| e.errno);
    ensure!(e == Some(ENOENT), "migrating shared memory gave {e:?}");
    Ok(Outcome::Pass)
}

fn migrate_mixed(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d0 = env.open(v, false, &p)?;
    let d1 = env.open(v, true, &p)?;
    let a = mmap(&p, MapRequest::anon(6 * PAGE, Prot::NONE))?;
    let e = d1.migrate_to_dev(a, 6).err().map(|e| e.errno);
    ensure!(e == Some(EINVAL), "migrating PROT_NONE gave {e:?}");
    ok!(p.lock().munmap(a + PAGE, PAGE));
    let e = d1.migrate_to_dev(a, 3).err().map(|e| e.errno);
    ensure!(e == Some(EINVAL), "migrating over a hole gave {e:?}");
    let p2 = a + 2 * PAGE;
    ok!(p.lock().mprotect(p2, PAGE, Prot::READ));
    ensure!(env.ints(&p, p2, 1)?[0] == 0);
    ok!(p.lock().mprotect(a + 3 * PAGE, PAGE, Prot::RW));
    env.fill(&p, a + 3 * PAGE, 1024, |i| i as i32)?;
    ok!(p.lock().mprotect(a + 3 * PAGE, PAGE, Prot::READ));
    ok!(p.lock().mprotect(a + 4 * PAGE, 2 * PAGE, Prot::RW));
    env.fill(&p, a + 4 * PAGE, 2048, |i| i as i32)?;
    migrated(&d1, p2, 4)?;
    let e = d0.migrate_to_dev(a + 5 * PAGE, 1).err().map(|e| e.errno);
    ensure!(e == Some(ENOENT), "migrating another device's page gave {e:?}");
    Ok(Outcome::Pass)
}

fn migrate_multiple(env: &Env<'_>, v: Variant) -> Verdict {
    for _ in 0..10 {
        let p = env.process()?;
        let d = env.open(v, false, &p)?;
        let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
        env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
        check_ints(&migrated(&d, a, NPAGES)?, |i| i as i32, "mirror")?;
        if v == Variant::Coherent {
            let c = ok!(d.migrate_to_sys(a, NPAGES));
            counts(c, NPAGES, None)?;
        }
        check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| i as i32, "CPU")?;
    }
    Ok(Outcome::Pass)
}

fn anon_read_multiple(env: &Env<'_>, v: Variant) -> Verdict {
    for c0 in 0..10 {
        let p = env.process()?;
        let d = env.open(v, false, &p)?;
        let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
        env.fill(&p, a, NPAGES * 1024, |i| i as i32 + c0)?;
        let (m, c) = ok!(d.read(a, NPAGES));
        counts(c, NPAGES, Some(1))?;
        check_ints(&ints_of(&m), |i| i as i32 + c0, "mirror")?;
    }
    Ok(Outcome::Pass)
}

/// Where [`anon_teardown`] unmaps the buffer's second half, relative to the device read of the
/// whole buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    /// Before the read: the read must fail with `EFAULT`.
    Before,
    /// Between the range fault of the first 64 pages of the second half and its commit (from
    /// the fault hook): the commit is refused, the retry finds no mapping, the read fails with
    /// `EFAULT`; the first half stays mirrored.
    Midway,
    /// After the read: the read succeeds whole; the device then has no entry for the second
    /// half.
    After,
    /// From a second thread after a seeded pause under 32 µs (hmm-tests' way): the read either
    /// succeeds with the right data or fails with `EFAULT`, nothing else.
    Concurrent,
}

/// hmm-tests' anon_teardown, with the munmap at each of the points of [`Teardown`] in turn
/// (ten rounds): every round's outcome is the one its point implies, and the rounds at a fixed
/// point cannot all fail.
fn anon_teardown(env: &Env<'_>, v: Variant) -> Verdict {
    use core::sync::atomic::{AtomicI32, Ordering};
    const POINTS: [Teardown; 4] = [Teardown::Before, Teardown::Midway, Teardown::After, Teardown::Concurrent];
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let (mut completed, mut concurrent_rounds) = (0, 0);
    for c0 in 0..10 {
        let point = POINTS[c0 as usize % POINTS.len()];
        let p = env.process()?;
        let d = env.open(v, false, &p)?;
        let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
        env.fill(&p, a, NPAGES * 1024, |i| i as i32 + c0)?;
        let half = a + BUFFER / 2;
        let unmap = |s: &Arc<SharedSpace>| s.lock().munmap(half, BUFFER / 2).map_err(|e| format!("munmap: {e}"));
        let unmapped = Arc::new(AtomicI32::new(1));
        let mut join = None;
        match point {
            Teardown::Before => unmap(&p)?,
            Teardown::Midway => {
                let (space, u) = (p.clone(), unmapped.clone());
                d.set_fault_hook(Some(Box::new(move |start, _| {
                    if start < half {
                        return true;
                    }
                    let r = space.lock().munmap(half, BUFFER / 2);
                    u.store(if r.is_ok() { 0 } else { -1 }, Ordering::Release);
                    false
                })));
            }
            Teardown::After => {}
            Teardown::Concurrent => {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let (space, u) = (p.clone(), unmapped.clone());
                let task = Box::new(move || {
                    let r = space.lock().munmap(half, BUFFER / 2);
                    u.store(if r.is_ok() { 0 } else { -1 }, Ordering::Release);
                });
                // Without a second thread this round is one more "after".
                join = env.cpu.spawn(seed % 32, task);
                concurrent_rounds += u32::from(join.is_some());
            }
        }
        let read = d.read(a, NPAGES);
        d.set_fault_hook(None);
        if let Some(join) = join {
            join()?;
        } else if point == Teardown::Concurrent || point == Teardown::After {
            unmap(&p)?;
            unmapped.store(0, Ordering::Release);
        }
        if point == Teardown::Midway || point == Teardown::Concurrent || point == Teardown::After {
            ensure!(unmapped.load(Ordering::Acquire) == 0, "round {c0} ({point:?}): the munmap failed or did not run");
        }
        let must_fail = matches!(point, Teardown::Before | Teardown::Midway);
        let must_succeed = point == Teardown::After || (point == Teardown::Concurrent && concurrent_rounds == 0);
        match read {
            Ok((m, c)) => {
                ensure!(!must_fail, "round {c0} ({point:?}): the read of a half-unmapped buffer succeeded");
                counts(c, NPAGES, Some(1))?;
                check_ints(&ints_of(&m), |i| i as i32 + c0, "mirror")?;
                completed += 1;
            }
            Err(e) => {
                ensure!(!must_succeed, "round {c0} ({point:?}): the read failed: {e}");
                ensure!(e.errno == crate::dmirror::EFAULT, "round {c0} ({point:?}): the read failed with {e}");
            }
        }
        // Whatever happened, the device now mirrors nothing of the second half, and the first
        // half reads back right (without a fault where the read got that far).
        let e = d.read(half, 1).err().map(|e| e.errno);
        ensure!(
            e == Some(crate::dmirror::EFAULT),
            "round {c0} ({point:?}): device read of an unmapped page gave {e:?}"
        );
        let (m, c) = ok!(d.read(a, NPAGES / 2));
        check_ints(&ints_of(&m), |i| i as i32 + c0, "mirror of the first half")?;
        if point != Teardown::Before {
            ensure!(c.faults == 0 || point == Teardown::Concurrent, "round {c0} ({point:?}): first half faulted again");
        }
        ok!(p.lock().munmap(a, BUFFER / 2));
    }
    // Rounds After (2 of them) always complete.
    ensure!(completed >= 2, "only {completed} reads completed");
    Ok(Outcome::Pass)
}

fn mixedmap(_env: &Env<'_>, _v: Variant) -> Verdict {
    Ok(Outcome::Skip("mmap of the dmirror device file (vm_insert_page) is not implemented"))
}

fn snapshot(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d0 = env.open(v, false, &p)?;
    let d1 = env.open(v, true, &p)?;
    let a = mmap(&p, MapRequest::anon(7 * PAGE, Prot::NONE))?;
    let pg = |i: u64| a + i * PAGE;
    ok!(p.lock().munmap(pg(1), PAGE));
    ok!(p.lock().mprotect(pg(2), PAGE, Prot::READ));
    ensure!(env.ints(&p, pg(2), 1)?[0] == 0);
    ok!(p.lock().mprotect(pg(3), PAGE, Prot::RW));
    env.fill(&p, pg(3), 1024, |i| i as i32)?;
    ok!(p.lock().mprotect(pg(3), PAGE, Prot::READ));
    ok!(p.lock().mprotect(pg(4), 3 * PAGE, Prot::RW));
    env.fill(&p, pg(4), 3072, |i| i as i32)?;
    migrated(&d0, pg(5), 1)?;
    migrated(&d1, pg(6), 1)?;
    let (m, c) = ok!(d0.snapshot(a, 7));
    counts(c, 7, None)?;
    ensure!(m[0] == prot::ERROR, "m0 {:#x}", m[0]);
    ensure!(m[1] == prot::ERROR, "m1 {:#x}", m[1]);
    ensure!(m[2] == prot::ZERO | prot::READ, "m2 {:#x}", m[2]);
    ensure!(m[3] == prot::READ, "m3 {:#x}", m[3]);
    ensure!(m[4] == prot::WRITE, "m4 {:#x}", m[4]);
    match v {
        Variant::Private => {
            ensure!(m[5] == prot::DEV_PRIVATE_LOCAL | prot::WRITE, "m5 {:#x}", m[5]);
            ensure!(m[6] == prot::NONE, "m6 {:#x}", m[6]);
        }
        Variant::Coherent => {
            ensure!(m[5] == prot::DEV_COHERENT_LOCAL | prot::WRITE, "m5 {:#x}", m[5]);
            ensure!(m[6] == prot::DEV_COHERENT_REMOTE | prot::WRITE, "m6 {:#x}", m[6]);
        }
    }
    Ok(Outcome::Pass)
}

fn compound(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let Ok(a) = mmap(&p, MapRequest::anon(PMD, Prot::RW).hugetlb()) else {
        return Ok(Outcome::Skip("no huge page could be allocated (hmm-tests skips then too)"));
    };
    let n = PMD / PAGE;
    env.fill(&p, a, PMD / 4, |i| i as i32)?;
    let (m, c) = ok!(d.snapshot(a, n));
    counts(c, n, None)?;
    ensure!(m.iter().all(|&b| b == prot::WRITE | prot::PMD), "snapshot {:#x}", m[0]);
    ok!(p.lock().mprotect(a, PMD, Prot::READ));
    let (m, _) = ok!(d.snapshot(a, n));
    ensure!(m.iter().all(|&b| b == prot::READ | prot::PMD), "snapshot after mprotect {:#x}", m[0]);
    Ok(Outcome::Pass)
}

fn double_map(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d0 = env.open(v, false, &p)?;
    let d1 = env.open(v, true, &p)?;
    let a = mmap(&p, MapRequest::anon(6 * PAGE, Prot::RW))?;
    env.fill(&p, a, 6 * 1024, |i| i as i32)?;
    ok!(p.lock().mprotect(a, 6 * PAGE, Prot::READ));
    for d in [&d0, &d1] {
        let (m, c) = ok!(d.read(a, 6));
        counts(c, 6, Some(1))?;
        check_ints(&ints_of(&m), |i| i as i32, "mirror")?;
    }
    migrated(&d1, a, 6)?;
    let (m, c) = ok!(d0.read(a, 6));
    counts(c, 6, Some(1))?;
    check_ints(&ints_of(&m), |i| i as i32, "mirror after the other device migrated")?;
    Ok(Outcome::Pass)
}

fn exclusive(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    let (m, c) = ok!(d.exclusive(a, NPAGES));
    counts(c, NPAGES, None)?;
    check_ints(&ints_of(&m), |i| i as i32, "mirror")?;
    let old = env.ints(&p, a, NPAGES * 1024)?;
    check_ints(&old, |i| i as i32, "CPU before increment")?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32 + 1)?;
    check_ints(&env.ints(&p, a, NPAGES * 1024)?, |i| i as i32 + 1, "CPU")?;
    ok!(d.check_exclusive(a, NPAGES));
    Ok(Outcome::Pass)
}

fn exclusive_mprotect(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    let (m, c) = ok!(d.exclusive(a, NPAGES));
    counts(c, NPAGES, None)?;
    check_ints(&ints_of(&m), |i| i as i32, "mirror")?;
    ok!(p.lock().mprotect(a, BUFFER, Prot::READ));
    let e = d.write(a, &bytes_of(NPAGES * 1024, |i| i as i32)).err().map(|e| e.errno);
    ensure!(e == Some(EPERM), "device write after mprotect(READ) gave {e:?}");
    Ok(Outcome::Pass)
}

fn exclusive_cow(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(BUFFER, Prot::RW))?;
    env.fill(&p, a, NPAGES * 1024, |i| i as i32)?;
    let (_, c) = ok!(d.exclusive(a, NPAGES));
    counts(c, NPAGES, None)?;
    let child = fork(env, &p)?;
    for s in [&child, &p] {
        env.fill(s, a, NPAGES * 1024, |i| i as i32 + 1)?;
        check_ints(&env.ints(s, a, NPAGES * 1024)?, |i| i as i32 + 1, "CPU after increment")?;
    }
    Ok(Outcome::Pass)
}

fn hmm_gup_test(_env: &Env<'_>, _v: Variant) -> Verdict {
    Ok(Outcome::Skip("no gup_test interface (Linux skips it too without /sys/kernel/debug/gup_test)"))
}

fn hmm_cow_in_device(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(4 * PAGE, Prot::RW))?;
    env.fill(&p, a, 4 * 1024, |i| i as i32)?;
    migrated(&d, a, 4)?;
    let child = fork(env, &p)?;
    env.fill(&p, a, 4 * 1024, |i| -(i as i32))?;
    drop(child); // the child is killed
    let (m, c) = ok!(d.snapshot(a, 4));
    counts(c, 4, None)?;
    ensure!(m.iter().all(|&b| b == prot::WRITE), "snapshot {:x?}", m);
    check_ints(&env.ints(&p, a, 4 * 1024)?, |i| -(i as i32), "CPU")?;
    Ok(Outcome::Pass)
}

fn thp_region(p: &Arc<SharedSpace>, prot: Prot) -> Result<u64, String> {
    let m = mmap(p, MapRequest::anon(2 * PMD, prot))?;
    let a = m.next_multiple_of(PMD);
    ok!(p.lock().madvise(a, PMD, Advice::HugePage));
    Ok(a)
}

/// A process with a written THP (int `i` at index `i`) and `v`'s first device open on it.
fn filled_thp(env: &Env<'_>, v: Variant) -> Result<(Arc<SharedSpace>, Arc<Dmirror>, u64), String> {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = thp_region(&p, Prot::RW)?;
    env.fill(&p, a, PMD / 4, |i| i as i32)?;
    Ok((p, d, a))
}

fn migrate_anon_huge_empty(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = thp_region(&p, Prot::READ)?;
    let (m, c) = ok!(d.migrate_to_dev(a, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    ensure!(m.iter().all(|&b| b == 0), "mirror not zero");
    Ok(Outcome::Pass)
}

fn migrate_anon_huge_zero(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = thp_region(&p, Prot::READ)?;
    ensure!(env.ints(&p, a, 1)?[0] == 0);
    let (m, c) = ok!(d.migrate_to_dev(a, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    ensure!(m.iter().all(|&b| b == 0), "mirror not zero");
    check_ints(&env.ints(&p, a, PMD / 4)?, |_| 0, "CPU")?;
    Ok(Outcome::Pass)
}

/// MADV_FREE of a device THP succeeds and discards nothing (Linux leaves device-private entries
/// alone, and there is no reclaim of lazily freed pages): the device's entries are invalidated,
/// the THP stays one device THP, the device reads it again whole and the CPU reads the data.
fn migrate_anon_huge_free(env: &Env<'_>, v: Variant) -> Verdict {
    use core::sync::atomic::Ordering::Relaxed;
    let (p, d, a) = filled_thp(env, v)?;
    check_ints(&migrated(&d, a, PMD / PAGE)?, |i| i as i32, "mirror")?;
    let seen = d.invalidations.load(Relaxed);
    ok!(p.lock().madvise(a, PMD, Advice::Free));
    ensure!(d.invalidations.load(Relaxed) > seen, "MADV_FREE did not invalidate the device's entries");
    extra::all_at(env, &p, a, 1, extra::Place::DevThp)?;
    let (m, c) = ok!(d.read(a, PMD / PAGE));
    counts(c, PMD / PAGE, Some(1))?;
    check_ints(&ints_of(&m), |i| i as i32, "mirror after MADV_FREE")?;
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU after MADV_FREE")?;
    Ok(Outcome::Pass)
}

fn migrate_anon_huge_fault(env: &Env<'_>, v: Variant) -> Verdict {
    let (p, d, a) = filled_thp(env, v)?;
    check_ints(&migrated(&d, a, PMD / PAGE)?, |i| i as i32, "mirror")?;
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn migrate_partial_unmap_fault(env: &Env<'_>, v: Variant) -> Verdict {
    for thp in [true, false] {
        for off in [0, 512 << 10, 1 << 20] {
            let p = env.process()?;
            let d = env.open(v, false, &p)?;
            let a = thp_region(&p, Prot::RW)?;
            if !thp {
                ok!(p.lock().madvise(a, PMD, Advice::NoHugePage));
            }
            env.fill(&p, a, PMD / 4, |i| i as i32)?;
            check_ints(&migrated(&d, a, PMD / PAGE)?, |i| i as i32, "mirror")?;
            ok!(p.lock().munmap(a + off, 1 << 20));
            let got = env.ints(&p, a, off / 4);
            check_ints(&got?, |i| i as i32, "CPU below the hole")?;
            let after = a + off + (1 << 20);
            let n = (a + PMD - after) / 4;
            let got = env.ints(&p, after, n)?;
            check_ints(&got, |i| ((after - a) / 4 + i) as i32, "CPU above the hole")?;
        }
    }
    Ok(Outcome::Pass)
}

fn migrate_remap_fault(env: &Env<'_>, v: Variant) -> Verdict {
    for before in [false, true] {
        for dont_unmap in [false, true] {
            for thp in [false, true] {
                for off in [0, 512 << 10, 1 << 20] {
                    let p = env.process()?;
                    let d = env.open(v, false, &p)?;
                    let m = mmap(&p, MapRequest::anon(4 * PMD, Prot::RW))?;
                    let a = m.next_multiple_of(PMD);
                    ok!(p.lock().madvise(a, PMD, if thp { Advice::HugePage } else { Advice::NoHugePage }));
                    env.fill(&p, a, PMD / 4, |i| i as i32)?;
                    let dest = a + PMD + off;
                    let flags = RemapFlags { may_move: true, fixed: true, dont_unmap };
                    let mut at = a;
                    if before {
                        at = ok!(p.lock().mremap(a, PMD, PMD, flags, dest));
                    }
                    check_ints(&migrated(&d, at, PMD / PAGE)?, |i| i as i32, "mirror")?;
                    if !before {
                        at = ok!(p.lock().mremap(a, PMD, PMD, flags, dest));
                    }
                    check_ints(&env.ints(&p, at, PMD / 4)?, |i| i as i32, "CPU at the new address")?;
                }
            }
        }
    }
    Ok(Outcome::Pass)
}

fn migrate_anon_huge_err(env: &Env<'_>, v: Variant) -> Verdict {
    let (p, d, a) = filled_thp(env, v)?;
    d.set_flags(1);
    check_ints(&migrated(&d, a, PMD / PAGE)?, |i| i as i32, "mirror")?;
    ensure!(env.ints(&p, a + 2048 * 4, 1)?[0] == 2048);
    let (p, d, a) = filled_thp(env, v)?;
    migrated(&d, a, PMD / PAGE)?;
    d.set_flags(1);
    ok!(d.migrate_to_sys(a, PMD / PAGE));
    ensure!(env.ints(&p, a + 2048 * 4, 1)?[0] == 2048);
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU")?;
    Ok(Outcome::Pass)
}

fn migrate_anon_huge_zero_err(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = thp_region(&p, Prot::READ)?;
    d.set_flags(1);
    let (m, c) = ok!(d.migrate_to_dev(a, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    ensure!(m.iter().all(|&b| b == 0), "mirror not zero");
    ensure!(env.ints(&p, a + 2048 * 4, 1)?[0] == 0);
    ok!(p.lock().munmap(a, PMD));
    let a = thp_region(&p, Prot::READ)?;
    ensure!(env.ints(&p, a, 1)?[0] == 0);
    d.set_flags(1);
    let (m, c) = ok!(d.migrate_to_dev(a, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    ensure!(m.iter().all(|&b| b == 0), "mirror not zero");
    check_ints(&env.ints(&p, a, PMD / 4)?, |_| 0, "CPU")?;
    Ok(Outcome::Pass)
}

fn benchmark_thp_migration(env: &Env<'_>, v: Variant) -> Verdict {
    // The timings themselves are `cargo xtask bench hmm`'s; here every call must succeed.
    for size in [512u64 << 10, 1 << 20, 2 << 20, 4 << 20] {
        for thp in [false, true] {
            let p = env.process()?;
            let d = env.open(v, false, &p)?;
            let m = mmap(&p, MapRequest::anon(size + PMD, Prot::RW))?;
            let a = m.next_multiple_of(PMD);
            ok!(p.lock().madvise(a, size, if thp { Advice::HugePage } else { Advice::NoHugePage }));
            env.fill(&p, a, size / 4, |i| i as i32)?;
            for _ in 0..5 {
                ok!(d.migrate_to_dev(a, size / PAGE));
                ok!(d.migrate_to_sys(a, size / PAGE));
            }
            check_ints(&env.ints(&p, a, size / 4)?, |i| i as i32, "CPU")?;
        }
    }
    Ok(Outcome::Pass)
}

/// Runs every scenario in both variants, calling `report(name, verdict)` for each.
pub fn run_all(env: &Env<'_>, report: &mut dyn FnMut(&str, &Verdict)) {
    for s in SCENARIOS.iter().chain(EXTRA) {
        for v in Variant::ALL {
            let verdict = (s.run)(env, v);
            report(&s.full_name(v), &verdict);
        }
    }
}

mod coherence;
mod extra;
mod old_api;
pub use extra::EXTRA;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Pfn;
    use crate::mm::platform::fake::{BASE_PFN, FakePlatform};

    #[test]
    fn every_scenario_passes_on_the_host() {
        let frames = 64 * 1024; // 256 MiB
        let plat = Arc::new(FakePlatform::new(frames));
        let mm = Mm::new(plat.clone(), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
        let cpu = SpaceCpu;
        let env = Env::new(&mm, &cpu, 8 << 20).unwrap();
        let mut failures = Vec::new();
        let mut passed = 0;
        let mut skipped = 0;
        run_all(&env, &mut |name, v| match v {
            Ok(Outcome::Pass) => passed += 1,
            Ok(Outcome::Skip(_)) => skipped += 1,
            Err(e) => failures.push(format!("{name}: {e}")),
        });
        assert!(failures.is_empty(), "{} failed:\n{}", failures.len(), failures.join("\n"));
        assert_eq!(passed + skipped, (SCENARIOS.len() + EXTRA.len()) * 2);
        assert_eq!(skipped, 2 * 2, "only mixedmap and hmm_gup_test skip");
    }

    /// A backing over RAM that counts its copies and can be told to fail them, as a device's
    /// copy engine can.
    #[derive(Debug)]
    struct Engine {
        ram: Arc<RamBacking>,
        copies: core::sync::atomic::AtomicU64,
        broken: core::sync::atomic::AtomicBool,
    }

    impl Backing for Engine {
        fn add_chunk(
            &self,
            pm: &Arc<Pagemaps>,
            kind: MemoryKind,
            owner: Owner,
            frames: u64,
            ops: alloc::sync::Weak<dyn crate::pagemap::PagemapOps>,
        ) -> Result<Arc<crate::pagemap::DevPagemap>, Error> {
            self.ram.add_chunk(pm, kind, owner, frames, ops)
        }
        fn remove_chunk(&self, pm: &Arc<Pagemaps>, chunk: &Arc<crate::pagemap::DevPagemap>) -> Result<(), Error> {
            self.ram.remove_chunk(pm, chunk)
        }
        fn alloc_storage(&self, order: u32) -> Result<Pfn, Error> {
            self.ram.alloc_storage(order)
        }
        fn free_storage(&self, frame: Pfn) {
            self.ram.free_storage(frame)
        }
        fn copy(&self, pairs: &[(Pfn, Option<Pfn>)]) -> Result<(), Error> {
            use core::sync::atomic::Ordering::Relaxed;
            if self.broken.load(Relaxed) {
                // A real engine may have written part of the destination before failing.
                if let Some(&(d, _)) = pairs.first() {
                    self.ram.copy(&[(d, None)])?;
                }
                return Err(Error::Io("copy engine broken (test)"));
            }
            self.copies.fetch_add(pairs.len() as u64, Relaxed);
            self.ram.copy(pairs)
        }
        fn describe(&self) -> &str {
            "counting engine (test)"
        }
    }

    #[test]
    fn whole_blocks_come_back_from_base_pages() {
        // Block 0 (pages 0-3) entirely free, block 1 missing page 5, block 2 entirely free.
        let mut free: Vec<u64> = alloc::vec![3, 9, 0, 4, 8, 2, 6, 1, 10, 11, 7];
        let whole = crate::dmirror::take_whole_blocks(&mut free, |&k| k, 4);
        assert_eq!(whole, [0, 8]);
        free.sort();
        assert_eq!(free, [4, 6, 7]);
        assert!(crate::dmirror::take_whole_blocks(&mut free, |&k| k, 4).is_empty());
    }

    /// The host CPU meets a page under migration as the kernel's page-fault loop does: it waits
    /// (`with_migration_wait`, the lock dropped so the migration can finish) and faults again,
    /// instead of failing the access with `Migrating`. Here a coherent page is being evicted
    /// (`migrate_device_range` done, the copy and finalize pending) and the eviction finishes
    /// at the first wait.
    #[test]
    fn the_host_cpu_waits_for_a_page_under_migration() {
        use crate::mm::frame::flags;
        use crate::mm::migrate::{DeviceMigration, MigratePfn, migrate_device_range};
        use core::sync::atomic::Ordering::Relaxed;
        for write in [false, true] {
            let frames = 16 * 1024;
            let plat = Arc::new(FakePlatform::new(frames));
            // The eviction outlives this frame in the platform's hook.
            let mm: &'static Arc<Mm> =
                Box::leak(Box::new(Mm::new(plat.clone(), &[(Pfn(BASE_PFN), frames as u64)]).unwrap()));
            let pm = Pagemaps::install(mm).unwrap();
            let dev = DmirrorDevice::new(&pm, MemoryKind::Coherent, Owner(0xd00d), 2 << 20);
            let space = mm.share(AddressSpace::new(mm).unwrap());
            let d = Dmirror::open(&dev, &space).unwrap();
            let a = mmap(&space, MapRequest::anon(PAGE, Prot::RW)).unwrap();
            SpaceCpu.write(&space, a, &40u32.to_le_bytes()).unwrap();
            d.migrate_to_dev(a, 1).unwrap();
            let pfn = space.lock().lookup(a).and_then(|e| e.pte.pfn()).unwrap();
            assert!(mm.meta(pfn).unwrap().has(flags::DEVICE));
            let mig: Arc<spin::Mutex<Option<DeviceMigration<'static>>>> =
                Arc::new(spin::Mutex::new(Some(migrate_device_range(mm, pfn, 1))));
            assert!(mig.lock().as_ref().unwrap().src()[0].is_migrate());
            let pending = mig.clone();
            plat.migration_hook.set(move |round| {
                assert_eq!(round, 1, "one wait");
                let Some(mut m) = pending.lock().take() else { return };
                let dst = mm.alloc_page(flags::ANON, 0, false).unwrap();
                assert!(mm.meta(dst).unwrap().trylock());
                mm.platform().copy(dst, pfn, 1);
                m.dst_mut()[0] = MigratePfn::new(dst).with_write(true);
                m.pages();
                m.finalize();
            });
            let mut b = [0; 4];
            if write {
                assert_eq!(SpaceCpu.write(&space, a, &41u32.to_le_bytes()), Ok(()));
                SpaceCpu.read(&space, a, &mut b).unwrap();
                assert_eq!(u32::from_le_bytes(b), 41);
            } else {
                assert_eq!(SpaceCpu.read(&space, a, &mut b), Ok(()));
                assert_eq!(u32::from_le_bytes(b), 40);
            }
            assert_eq!(plat.migration_waits.load(Relaxed), 1, "write {write}");
            assert!(mig.lock().is_none(), "the eviction finished in the wait");
            let back = space.lock().lookup(a).and_then(|e| e.pte.pfn()).unwrap();
            assert!(!mm.meta(back).unwrap().has(flags::DEVICE));
            drop(d);
        }
    }

    static CPU: SpaceCpu = SpaceCpu;

    /// The four test devices over counting engines, in a machine of `frames` frames.
    fn over_engines(frames: usize, chunk_bytes: u64) -> (Env<'static>, [Arc<Engine>; 4]) {
        let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
        let e: [Arc<Engine>; 4] = core::array::from_fn(|_| {
            Arc::new(Engine { ram: RamBacking::new(&mm), copies: Default::default(), broken: Default::default() })
        });
        let b: [Arc<dyn Backing>; 4] = core::array::from_fn(|i| e[i].clone() as Arc<dyn Backing>);
        (Env::with_backings(&Pagemaps::install(&mm).unwrap(), &CPU, chunk_bytes, b).unwrap(), e)
    }

    #[test]
    fn every_scenario_passes_over_a_device_backing_and_its_copies() {
        let (env, e) = over_engines(64 * 1024, 8 << 20);
        let mut failures = Vec::new();
        run_all(&env, &mut |name, v| {
            if let Err(e) = v {
                failures.push(format!("{name}: {e}"))
            }
        });
        assert!(failures.is_empty(), "{} failed:\n{}", failures.len(), failures.join("\n"));
        for (i, e) in e.iter().enumerate() {
            let n = e.copies.load(core::sync::atomic::Ordering::Relaxed);
            assert!(n > if i % 2 == 0 { 1000 } else { 0 }, "dmirror{i} copied only {n} pages through its engine");
        }
        env.release().unwrap();
    }

    #[test]
    fn a_failed_device_copy_backs_the_migration_out_and_loses_nothing() {
        use core::sync::atomic::Ordering::Relaxed;
        let (env, e) = over_engines(16 * 1024, 2 << 20);
        for v in Variant::ALL {
            let dev = if v == Variant::Private { 0 } else { 2 };
            let p = env.process().unwrap();
            let d = env.open(v, false, &p).unwrap();
            let a = mmap(&p, MapRequest::anon(16 * PAGE, Prot::RW)).unwrap();
            env.fill(&p, a, 16 * PAGE / 4, |i| i as i32 ^ 0x5a5a).unwrap();
            // To the device: the copy fails, the pages stay in RAM with their data.
            e[dev].broken.store(true, Relaxed);
            let r = d.migrate_to_dev(a, 16);
            assert_eq!(r.map(|_| ()).unwrap_err().errno, crate::dmirror::EIO, "{v:?}");
            assert_eq!(env.devs[dev].pages_in_use(), 0, "{v:?}: device pages left behind");
            let (snap, _) = d.snapshot(a, 16).unwrap();
            assert!(snap.iter().all(|&b| b == prot::WRITE), "{v:?}: {snap:?}");
            check_ints(&env.ints(&p, a, 16 * PAGE / 4).unwrap(), |i| i as i32 ^ 0x5a5a, "CPU").unwrap();
            // On the device, then back: the copy fails, the pages stay on the device, intact.
            e[dev].broken.store(false, Relaxed);
            d.migrate_to_dev(a, 16).unwrap();
            e[dev].broken.store(true, Relaxed);
            assert_eq!(d.migrate_to_sys(a, 16).map(|_| ()).unwrap_err().errno, crate::dmirror::EIO, "{v:?}");
            assert_eq!(env.devs[dev].pages_in_use(), 16, "{v:?}");
            // A working engine again: everything comes back with its data.
            e[dev].broken.store(false, Relaxed);
            d.migrate_to_sys(a, 16).unwrap();
            check_ints(&env.ints(&p, a, 16 * PAGE / 4).unwrap(), |i| i as i32 ^ 0x5a5a, "CPU").unwrap();
            assert_eq!(env.devs[dev].pages_in_use(), 0, "{v:?}");
        }
        env.release().unwrap();
    }
}
