//! Benchmarks that run inside the kernel (`job=bench-mm`, `job=bench-hmm` and
//! `job=bench-devices`, driven by `cargo xtask bench mm`, `hmm` and `devices`; the devices'
//! benchmark is in [`devices`]).
//!
//! Each operation is timed on a fresh address space with real CPU faults, for 4, 64 and
//! 256 MiB, and printed as one `@@BENCH {json}` line: `op`, `mib`, `pages` (4 KiB pages
//! covered), `ns_per_page`, and `faults` (CPU faults the operation took).
//!
//! The address-space operations ([`mm`]):
//!
//! | op | what is timed |
//! |---|---|
//! | `first_touch_4k` | one store per page of fresh anonymous memory, 4 KiB pages (`MADV_NOHUGEPAGE`) |
//! | `first_touch_2m` | the same with 2 MiB pages (`MADV_HUGEPAGE`): one fault per 512 pages |
//! | `fork` | fork of the populated 4 KiB range (write-protects parent, copies entries) |
//! | `cow_break` | one store per page in the parent after fork: a copy per page |
//! | `mprotect` | read-only over the populated range (one invalidation, one TLB flush) |
//! | `munmap` | unmapping the populated range (frees every frame and table) |
//!
//! The HMM operations ([`hmm`]), the ones Linux 6.1's lib/test_hmm was timed on in the same
//! QEMU (`reference/platform.md`), in this order on one 4 KiB-page anonymous range (THP off, as
//! in that measurement) mirrored by one private dmirror device. Device commands are issued in
//! `HMM_BUFFER_SIZE` (4 MiB) calls, as hmm-tests issues its ioctls, and each includes what the
//! ioctl includes (a migration to the device reads the pages back through the device).
//!
//! | op | what is timed |
//! |---|---|
//! | `cpu_first_touch` | one store per page of fresh anonymous memory |
//! | `dev_read_fault` | device read of the range: range fault, mirror fill, copy out |
//! | `dev_read_mapped` | the same read again, every page already mirrored |
//! | `snapshot` | `HMM_DMIRROR_SNAPSHOT` of the range (range fault without faulting) |
//! | `invalidate_mprotect` | mprotect(READ) of the mirrored range: one notifier invalidation |
//! | `migrate_to_dev` | migrate_vma of the range to device-private memory, copy, read back |
//! | `cpu_fault_migrate_back` | one CPU load per page: each a #PF that migrates the page to RAM |
//! | `migrate_to_dev_again` | the same migration, into device pages freed by the previous step |
//! | `migrate_to_sys` | explicit migration of the whole range back to RAM |
//! | `munmap_device_pages` | munmap of the range after migrating it to the device again |
//!
//! And the cost of the output encoding (issue 7's comparison), on the mirrored range before
//! the migrations, each a snapshot-mode range fault in 512-page rounds whose results fill a
//! device page table ([`hmm::devpt`]):
//!
//! | op | what is timed |
//! |---|---|
//! | `range_fault_driver_format` | the range fault writes the table's own entry format ([`hmm::range::Driver`]); the words go in as they are |
//! | `range_fault_modern_convert` | the range fault writes `HMM_PFN_*` words; a pass converts each (looking up whether the page is device memory) before they go in |

mod devices;
pub use devices::devices;

use alloc::{format, string::String, sync::Arc};
use core::sync::atomic::Ordering;
use hmm::devpt::{DevPageTable, LeafFormat};
use hmm::dmirror::{Dmirror, DmirrorDevice};
use hmm::mm::frame::flags;
use hmm::mm::notify::Owner;
use hmm::mm::space::{Advice, MapRequest};
use hmm::mm::vma::Prot;
use hmm::notifier::{IntervalOps, SeqOnly, Subscriptions};
use hmm::pagemap::{MemoryKind, Pagemaps};
use hmm::range::{Driver, HmmPfn, HmmRange, PfnEncoding, Request, convert, hmm_range_fault};

use crate::json::Json;
use crate::mm::uspace::{self, Space, USER_FAULTS};
use crate::platform::arch::time;

const PAGE: u64 = 4096;
const SIZES_MIB: [u64; 3] = [4, 64, 256];
/// Pages per device command (hmm-tests' `HMM_BUFFER_SIZE`, 4 MiB).
const IOCTL_PAGES: u64 = 1024;

fn report(op: &str, mib: u64, ns: u64, faults: u64) {
    let pages = mib * 256;
    let mut j = Json::new();
    j.object(|j| {
        j.str("op", op);
        j.num("mib", mib);
        j.num("pages", pages);
        j.num("ns_per_page", ns / pages);
        j.num("faults", faults);
    });
    crate::sprintln!("{}", boot::protocol::Tag::Bench.line(j.finish()));
}

/// Why a benchmark stopped.
#[derive(Debug)]
pub enum BenchError {
    /// Memory management refused `op` (an address space, mmap, madvise, fork, ...).
    Mm {
        /// What was asked.
        op: &'static str,
        /// Why.
        error: hmm::mm::Error,
    },
    /// A user access (`op`: a store, a load) faulted.
    User {
        /// What the CPU did.
        op: &'static str,
        /// The fault.
        fault: crate::mm::uspace::UserFault,
    },
    /// The dmirror device refused `op` (at `va`).
    Dmirror {
        /// The command.
        op: &'static str,
        /// Where, if it was over a range.
        va: Option<u64>,
        /// Why.
        error: hmm::dmirror::CmdError,
    },
    /// `hmm_range_fault` failed at `va`.
    Range {
        /// First address of the round.
        va: u64,
        /// Why.
        error: hmm::range::RangeError,
    },
    /// A device failed.
    Device {
        /// The device, when the benchmark knows which.
        device: Option<usize>,
        /// Why.
        error: crate::devices::DevError,
    },
    /// A kernel on device `device` could not run.
    Launch {
        /// The device.
        device: usize,
        /// Why.
        error: crate::compute::LaunchError,
    },
    /// A device MMU mirror refused.
    Mirror(hmm::devmmu::MirrorError),
    /// The benchmark cannot run on this machine, or what it measured is wrong (described).
    Wrong(String),
}

impl core::fmt::Display for BenchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Mm { op, error } => write!(f, "{op}: {error}"),
            Self::User { op, fault } => write!(f, "{op}: {fault}"),
            Self::Dmirror { op, va: Some(va), error } => write!(f, "{op} at {va:#x}: {error}"),
            Self::Dmirror { op, va: None, error } => write!(f, "{op}: {error}"),
            Self::Range { va, error } => write!(f, "range fault at {va:#x}: {error}"),
            Self::Device { device: Some(n), error } => write!(f, "dev{n}: {error}"),
            Self::Device { device: None, error } => write!(f, "{error}"),
            Self::Launch { device, error } => write!(f, "dev{device}: {error}"),
            Self::Mirror(e) => write!(f, "{e}"),
            Self::Wrong(what) => f.write_str(what),
        }
    }
}

impl From<crate::devices::DevError> for BenchError {
    fn from(error: crate::devices::DevError) -> Self {
        Self::Device { device: None, error }
    }
}

/// `op`'s memory-management error.
fn mm_err(op: &'static str) -> impl FnOnce(hmm::mm::Error) -> BenchError {
    move |error| BenchError::Mm { op, error }
}

/// `op`'s user fault.
fn user_err(op: &'static str) -> impl FnOnce(crate::mm::uspace::UserFault) -> BenchError {
    move |fault| BenchError::User { op, fault }
}

/// Times `f` in nanoseconds, with the CPU faults it took.
fn timed<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let faults = USER_FAULTS.load(Ordering::Relaxed);
    let t0 = time::rdtsc();
    let r = f();
    let ns = time::cycles_to_ns(time::rdtsc() - t0).unwrap_or(0);
    (r, ns, USER_FAULTS.load(Ordering::Relaxed) - faults)
}

fn touch(s: &Arc<Space>, va: u64, len: u64) -> Result<(), BenchError> {
    uspace::run(s, |u| {
        let mut a = va;
        while a < va + len {
            u.write_u64(a, a).map_err(user_err("store"))?;
            a += PAGE;
        }
        Ok(())
    })
}

fn anon(s: &Arc<Space>, len: u64, advice: Advice) -> Result<u64, BenchError> {
    let mut sp = s.lock();
    let a = sp.mmap(MapRequest::anon(len, Prot::RW)).map_err(mm_err("mmap"))?;
    sp.madvise(a, len, advice).map_err(mm_err("madvise"))?;
    Ok(a)
}

/// Touches every free frame once, so the host has backed all guest RAM before anything is
/// timed (QEMU allocates guest memory lazily; the first guest touch of a frame otherwise pays
/// a host page fault that has nothing to do with the code under test).
fn warm_guest_ram() {
    let mut blocks = alloc::vec::Vec::new();
    while let Ok(block) = crate::mm::FrameRange::alloc(512) {
        blocks.push(block);
    }
    for block in &mut blocks {
        for off in (0..block.size()).step_by(PAGE as usize) {
            // In bounds by construction; the handle checks it anyway.
            let _ = block.write_u8(off, 0);
        }
    }
    drop(blocks);
}

/// Runs the address-space benchmark.
pub fn mm() -> Result<(), BenchError> {
    warm_guest_ram();
    for mib in SIZES_MIB {
        let len = mib << 20;
        let space = || uspace::new_space().map_err(mm_err("address space"));

        let s = space()?;
        let a = anon(&s, len, Advice::HugePage)?;
        let (r, ns, faults) = timed(|| touch(&s, a, len));
        r?;
        report("first_touch_2m", mib, ns, faults);
        drop(s);

        let s = space()?;
        let a = anon(&s, len, Advice::NoHugePage)?;
        let (r, ns, faults) = timed(|| touch(&s, a, len));
        r?;
        report("first_touch_4k", mib, ns, faults);

        let (child, ns, _) = timed(|| s.lock().fork());
        let child = child.map_err(mm_err("fork"))?;
        report("fork", mib, ns, 0);
        let (r, ns, faults) = timed(|| touch(&s, a, len));
        r?;
        report("cow_break", mib, ns, faults);
        drop(child);

        let (r, ns, _) = timed(|| s.lock().mprotect(a, len, Prot::READ));
        r.map_err(mm_err("mprotect"))?;
        report("mprotect", mib, ns, 0);

        let (r, ns, _) = timed(|| s.lock().munmap(a, len));
        r.map_err(mm_err("munmap"))?;
        report("munmap", mib, ns, 0);
    }
    crate::sprintln!("{}", boot::protocol::Tag::Bench.line(boot::protocol::BENCH_DONE));
    Ok(())
}

/// Issues `cmd` over `[va, va + len)` in `IOCTL_PAGES` pieces.
fn per_ioctl<T>(
    what: &'static str,
    va: u64,
    len: u64,
    mut cmd: impl FnMut(u64, u64) -> Result<T, hmm::dmirror::CmdError>,
) -> Result<(), BenchError> {
    let mut a = va;
    while a < va + len {
        let n = ((va + len - a) / PAGE).min(IOCTL_PAGES);
        cmd(a, n).map_err(|error| BenchError::Dmirror { op: what, va: Some(a), error })?;
        a += n * PAGE;
    }
    Ok(())
}

/// One CPU load per page.
fn load_each(s: &Arc<Space>, va: u64, len: u64) -> Result<(), BenchError> {
    uspace::run(s, |u| {
        let mut a = va;
        while a < va + len {
            u.read_u64(a).map_err(user_err("load"))?;
            a += PAGE;
        }
        Ok(())
    })
}

/// Snapshot-mode range faults of `[va, va + len)` in 512-page rounds into a device page
/// table, the output in encoding `E`, passed through `finish` before it goes in.
fn fault_into_table<E: PfnEncoding<Entry = u64>>(
    s: &Arc<Space>,
    va: u64,
    len: u64,
    finish: impl Fn(&mut [u64]),
) -> Result<DevPageTable, BenchError> {
    let ops = Arc::new(SeqOnly);
    let w: alloc::sync::Weak<dyn IntervalOps> = Arc::downgrade(&ops) as alloc::sync::Weak<dyn IntervalOps>;
    let sub = Subscriptions::of(&mut s.lock()).insert(va, len, w).map_err(mm_err("notifier"))?;
    let mut table = DevPageTable::new();
    let mut words = alloc::vec![0u64; 512];
    let mut a = va;
    while a < va + len {
        let n = ((va + len - a) / PAGE).min(512) as usize;
        loop {
            let seq = sub.read_begin().map_err(mm_err("read_begin"))?;
            let mut range = HmmRange::<E> {
                notifier: &sub,
                notifier_seq: seq,
                start: a,
                end: a + n as u64 * PAGE,
                pfns: &mut words[..n],
                default_flags: Request::NONE,
                pfn_flags_mask: Request::NONE,
                dev_private_owner: None,
            };
            match hmm_range_fault(&mut s.lock(), &mut range) {
                Ok(()) => break,
                Err(hmm::range::RangeError::Busy) => continue,
                Err(error) => return Err(BenchError::Range { va: a, error }),
            }
        }
        finish(&mut words[..n]);
        table.fill_raw(a / PAGE, &words[..n]);
        a += n as u64 * PAGE;
    }
    Ok(table)
}

/// Runs the HMM benchmark: the ten operations Linux 6.1 was timed on, per size.
pub fn hmm() -> Result<(), BenchError> {
    warm_guest_ram();
    let pagemaps = Pagemaps::install(uspace::mm()).map_err(mm_err("device memory registry"))?;
    // Device memory is added 64 MiB at a time, as the largest run needs it.
    let dev = DmirrorDevice::new(&pagemaps, MemoryKind::Private, Owner(0xbe0c), 64 << 20);
    for mib in SIZES_MIB {
        let len = mib << 20;
        let s = uspace::new_space().map_err(mm_err("address space"))?;
        let a = anon(&s, len, Advice::NoHugePage)?;
        let d = Dmirror::open(&dev, &s).map_err(mm_err("opening the device"))?;

        let (r, ns, faults) = timed(|| touch(&s, a, len));
        r?;
        report("cpu_first_touch", mib, ns, faults);

        let (r, ns, faults) = timed(|| per_ioctl("device read", a, len, |va, n| d.read(va, n)));
        r?;
        report("dev_read_fault", mib, ns, faults);
        let (r, ns, faults) = timed(|| per_ioctl("device read", a, len, |va, n| d.read(va, n)));
        r?;
        report("dev_read_mapped", mib, ns, faults);

        let (r, ns, faults) = timed(|| fault_into_table::<Driver<LeafFormat>>(&s, a, len, |_| {}));
        let native = r?;
        report("range_fault_driver_format", mib, ns, faults);
        let mm = uspace::mm().clone();
        let device = move |p| mm.meta(p).is_some_and(|m| m.has(flags::DEVICE));
        let (r, ns, faults) = timed(|| {
            fault_into_table::<HmmPfn>(&s, a, len, |w| {
                w.iter_mut().for_each(|e| *e = convert::<LeafFormat>(*e, &device));
            })
        });
        let converted = r?;
        report("range_fault_modern_convert", mib, ns, faults);
        if native.len() != len / PAGE || converted.len() != native.len() {
            return Err(BenchError::Wrong(format!(
                "encoding runs mirrored {} and {} of {} pages",
                native.len(),
                converted.len(),
                len / PAGE
            )));
        }
        drop((native, converted));

        let (r, ns, faults) = timed(|| d.snapshot(a, len / PAGE));
        r.map_err(|error| BenchError::Dmirror { op: "snapshot", va: Some(a), error })?;
        report("snapshot", mib, ns, faults);

        let (r, ns, faults) = timed(|| s.lock().mprotect(a, len, Prot::READ));
        r.map_err(mm_err("mprotect"))?;
        report("invalidate_mprotect", mib, ns, faults);
        s.lock().mprotect(a, len, Prot::RW).map_err(mm_err("mprotect"))?;

        let migrate = |d: &Dmirror| per_ioctl("migrate to device", a, len, |va, n| d.migrate_to_dev(va, n));
        let (r, ns, faults) = timed(|| migrate(&d));
        r?;
        report("migrate_to_dev", mib, ns, faults);

        let (r, ns, faults) = timed(|| load_each(&s, a, len));
        r?;
        report("cpu_fault_migrate_back", mib, ns, faults);

        let (r, ns, faults) = timed(|| migrate(&d));
        r?;
        report("migrate_to_dev_again", mib, ns, faults);

        let (r, ns, faults) = timed(|| per_ioctl("migrate to RAM", a, len, |va, n| d.migrate_to_sys(va, n)));
        r?;
        report("migrate_to_sys", mib, ns, faults);

        migrate(&d)?;
        let (r, ns, faults) = timed(|| s.lock().munmap(a, len));
        r.map_err(mm_err("munmap"))?;
        report("munmap_device_pages", mib, ns, faults);

        d.close().map_err(mm_err("closing the device"))?;
        if dev.pages_in_use() != 0 {
            return Err(BenchError::Wrong(format!("{} device pages still in use after munmap", dev.pages_in_use())));
        }
    }
    dev.release().map_err(|error| BenchError::Dmirror { op: "releasing device memory", va: None, error })?;
    crate::sprintln!("{}", boot::protocol::Tag::Bench.line(boot::protocol::BENCH_DONE));
    Ok(())
}
