//! A seeded randomized interleaving of the HMM stack on the real devices, with both CPUs
//! faulting: a task on the other CPU writes and reads the pages of a process with the CPU
//! while this CPU migrates them at random between RAM and both devices (by DMA, device to
//! device by peer DMA), faults them back with its own CPU reads, and plugs and removes dev0's
//! hot-plug memory (evicting what is there). The operations are random but bounded; the
//! interleaving is whatever the two CPUs do, so the checks are only ones that hold under any
//! interleaving:
//!
//! - Each page holds `(page index, version)` repeated. The writer announces version `v` in
//!   `intent[p]` before it writes and records it in `committed[p]` after, so any read of page
//!   `p` (by either CPU) must see its own index and, in every word, a version between
//!   `committed[p]` as read before and `intent[p]` as read after (no stale or lost copy); when
//!   those are equal no write overlapped the read, and every word has that version.
//! - Device reads go through dev1's MMU mirror (a device fault by `hmm_range_fault`, then DMA by
//!   virtual address into a scratch area of dev1's memory, or, for a page in dev1's own memory,
//!   a read of it there) and are checked the same way: a missed invalidation reads a stale
//!   frame. A DMA the mirror refuses because the page moved since the fault is allowed (the
//!   other CPU's fault may move it); reading wrong data is not.
//! - No CPU access fails (a fault that meets a migration waits for it), no migration returns
//!   an error, and at the end every page holds its last version and no device page is left.
//!
//! The seed is printed on failure with the operation index and the last operations.

use super::TestResult;
use crate::arch::smp;
use crate::devices::{DevError, DevOffset, ResizeFailure};
use crate::devmmu::DevMirror;
use crate::mm::{PhysWindow, uspace};
use crate::sched;
use crate::system::System;
use crate::vram::{self, Vram};
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use drivers::virtio_mem::MemError;
use hmm::mm::SharedSpace;
use hmm::mm::space::{AddressSpace, MapRequest};
use hmm::mm::vma::Prot;
use hmm::place::Rng;

const PAGE: u64 = 4096;
const PAGES: u64 = 256;
const JOIN_MS: u64 = 60_000;

/// What both CPUs share.
struct Shared {
    space: Arc<SharedSpace>,
    a: u64,
    /// dev1's memory BAR, as the CPU reaches it.
    dev1: PhysWindow,
    intent: Vec<AtomicU64>,
    committed: Vec<AtomicU64>,
    stop: AtomicBool,
}

fn page_of(p: u64, v: u64) -> Vec<u8> {
    (0..PAGE / 16).flat_map(|_| p.to_le_bytes().into_iter().chain(v.to_le_bytes())).collect()
}

/// A window onto dev1's memory BAR: the PCI function and BAR whose address the device
/// registry records for dev1.
fn dev1_window() -> Result<PhysWindow, String> {
    let bar = crate::devices::nth(1).map_err(|e| format!("dev1: {e}"))?.vram.at.as_u64();
    let pci = &crate::system::system().ok_or("no system description")?.pci;
    let (n, index) = pci
        .functions
        .iter()
        .enumerate()
        .find_map(|(n, f)| f.bars.iter().find(|b| b.address == bar).map(|b| (n, b.index)))
        .ok_or_else(|| format!("no PCI BAR at dev1's memory address {bar:#x}"))?;
    crate::platform::pci::bar_window(pci, n, index).map_err(|e| format!("dev1's BAR: {e}"))
}

impl Shared {
    /// Reads page `p` with the CPU and checks it against the shadow.
    fn check_read(&self, p: u64) -> Result<(), String> {
        let lo = self.committed[p as usize].load(Ordering::Acquire);
        let mut buf = alloc::vec![0u8; PAGE as usize];
        uspace::run(&self.space, |u| u.read(self.a + p * PAGE, &mut buf))
            .map_err(|f| format!("CPU {} read of page {p}: {:?}", smp::index(), f.error))?;
        let hi = self.intent[p as usize].load(Ordering::Acquire);
        let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        // Every word pair names this page and a version in the window; a read that overlapped
        // a write (lo < hi) may see two versions, one that did not (lo == hi) exactly one.
        for i in (0..PAGE as usize / 8).step_by(2) {
            let (idx, ver) = (word(i), word(i + 1));
            if idx != p {
                return Err(format!("page {p} holds page {idx}'s data (version {ver}) at word {i}"));
            }
            if ver < lo || ver > hi {
                return Err(format!(
                    "page {p} holds version {ver} at word {i}, expected {lo}..={hi}: a stale or lost copy"
                ));
            }
            if lo == hi && ver != lo {
                return Err(format!("page {p} is torn at word {i}: version {ver}, not {lo}"));
            }
        }
        Ok(())
    }

    /// Checks a page image `buf` of page `p` read with the window `lo..=hi`.
    fn check_image(p: u64, buf: &[u8], lo: u64, hi: u64) -> Result<(), String> {
        let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        for i in (0..PAGE as usize / 8).step_by(2) {
            let (idx, ver) = (word(i), word(i + 1));
            if idx != p || ver < lo || ver > hi || (lo == hi && ver != lo) {
                return Err(format!(
                    "device read of page {p}: word {i} holds page {idx} version {ver}, expected {lo}..={hi}"
                ));
            }
        }
        Ok(())
    }

    /// Reads page `p` as dev1 does, through its MMU mirror `m`; `scratch` is a byte offset of
    /// dev1's memory this test owns. Returns whether the read happened (false: the page moved
    /// between the device fault and the DMA).
    fn device_read(&self, m: &DevMirror, v1: &Vram, scratch: u64, p: u64) -> Result<bool, String> {
        use crate::copyengine::Dir;
        use hmm::devmmu::{MirrorError, Where};
        let va = self.a + p * PAGE;
        let lo = self.committed[p as usize].load(Ordering::Acquire);
        m.fault(va, va + PAGE, false).map_err(|e| format!("device fault on page {p}: {e}"))?;
        let mut buf = alloc::vec![0u8; PAGE as usize];
        let bar_read = |off: u64, buf: &mut [u8]| {
            self.dev1.read(off, buf).map_err(|e| format!("device read of page {p} through dev1's BAR: {e}"))
        };
        match m.translate(va).map(|t| t.at) {
            Some(Where::Local(f)) => {
                let off = v1.offset_of(f).ok_or_else(|| format!("page {p}: a local frame outside dev1's memory"))?;
                if off.get() >= v1.bar_pages() * PAGE {
                    return Ok(false);
                }
                bar_read(off.get(), &mut buf)?;
            }
            Some(Where::Ram(_)) => {
                match crate::devmmu::dma(m, Dir::ToDevice, DevOffset::new(scratch), &[(va, PAGE as u32)]) {
                    Ok(()) => bar_read(scratch, &mut buf)?,
                    Err(crate::devices::DevError::Mirror(MirrorError::NotMapped { .. })) => return Ok(false),
                    Err(e) => return Err(format!("device read of page {p}: {e}")),
                }
            }
            None => return Ok(false),
        }
        let hi = self.intent[p as usize].load(Ordering::Acquire);
        Self::check_image(p, &buf, lo, hi)?;
        Ok(true)
    }

    /// Writes the next version of page `p` with the CPU.
    fn write(&self, p: u64) -> Result<(), String> {
        let v = self.intent[p as usize].load(Ordering::Acquire) + 1;
        self.intent[p as usize].store(v, Ordering::Release);
        let data = page_of(p, v);
        uspace::run(&self.space, |u| u.write(self.a + p * PAGE, &data))
            .map_err(|f| format!("CPU {} write of page {p}: {:?}", smp::index(), f.error))?;
        self.committed[p as usize].store(v, Ordering::Release);
        Ok(())
    }
}

/// The other CPU's part: random writes and checked reads until told to stop (or `max` ops).
fn writer(sh: Arc<Shared>, seed: u64, max: u64) -> Result<u64, String> {
    let mut rng = Rng::new(seed ^ 0x5555);
    let mut ops = 0;
    while !sh.stop.load(Ordering::Acquire) && ops < max {
        let p = rng.below(PAGES);
        if rng.below(3) == 0 { sh.check_read(p) } else { sh.write(p) }.map_err(|e| format!("writer op {ops}: {e}"))?;
        ops += 1;
    }
    Ok(ops)
}

/// One run: `ops` operations on this CPU against the writer on the other.
fn run(seed: u64, ops: u64) -> TestResult {
    let vs: Vec<Arc<Vram>> = vram::all().map_err(|e| e.to_string())?.to_vec();
    if vs.len() < 2 || smp::count() < 2 {
        return Err(format!("needs two devices and two CPUs ({} and {})", vs.len(), smp::count()));
    }
    let base: Vec<u64> = vs.iter().map(|v| v.in_use()).collect();
    let plugged = vs[0].plugged_pages();
    // With dev0's BAR taken, its pages come from hot-plug memory, so that removing it evicts
    // pages while the other CPU is using them.
    let mut carved = Vec::new();
    if vs[0].hot_pages() > 0 {
        while let Some(first) = vs[0].carve(512) {
            carved.push(first);
        }
    }
    let r = run_carved(seed, ops, &vs, plugged);
    for first in carved {
        vs[0].uncarve(first, 512);
    }
    r?;
    for (v, b) in vs.iter().zip(&base) {
        check!(
            v.in_use() == *b,
            "dev{}: {} device pages in use after the process went (base {b})",
            v.device(),
            v.in_use()
        );
    }
    Ok(())
}

fn run_carved(seed: u64, ops: u64, vs: &[Arc<Vram>], plugged: u64) -> TestResult {
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|e| e.to_string())?);
    let a = space.lock().mmap(MapRequest::anon(PAGES * PAGE, Prot::RW)).map_err(|e| e.to_string())?;
    let sh = Arc::new(Shared {
        space,
        a,
        dev1: dev1_window()?,
        intent: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
        committed: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
    });
    for p in 0..PAGES {
        sh.write(p)?;
    }
    let m = crate::devmmu::bind(1, &sh.space).map_err(|e| format!("binding dev1's MMU: {e}"))?;
    let scratch_page = vs[1].carve(512).ok_or("no 2 MiB of dev1's memory free for the scratch area")?;
    let r = drive(seed, ops, vs, plugged, &sh, &m, scratch_page.offset().get());
    vs[1].uncarve(scratch_page, 512);
    m.unbind().map_err(|e| format!("unbinding dev1's MMU: {e}"))?;
    r
}

#[allow(clippy::too_many_arguments)]
fn drive(
    seed: u64,
    ops: u64,
    vs: &[Arc<Vram>],
    plugged: u64,
    sh: &Arc<Shared>,
    m: &DevMirror,
    scratch: u64,
) -> TestResult {
    let a = sh.a;
    let w = {
        let sh = sh.clone();
        sched::spawn_on(smp::count() - 1, move || writer(sh, seed, 200_000)).map_err(|e| format!("{e:?}"))?
    };
    let mut rng = Rng::new(seed);
    let mut last: VecDeque<String> = VecDeque::new();
    let mut result = Ok(());
    for i in 0..ops {
        let start = rng.below(PAGES);
        let n = 1 + rng.below(64.min(PAGES - start));
        let (va, d) = (a + start * PAGE, rng.below(2) as usize);
        let op = rng.below(100);
        let what = format!("{i}: op {op} pages {start}+{n} dev{d}");
        let r = match op {
            0..=29 => vram::migrate_to_device(&vs[d], &sh.space, va, n).map(|_| ()).map_err(|e| e.to_string()),
            30..=49 => vram::migrate_to_ram(&vs[d], &sh.space, va, n).map(|_| ()).map_err(|e| e.to_string()),
            50..=64 => vram::migrate_device_to_device(&vs[d], &vs[1 - d], &sh.space, va, n)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            65..=74 => (start..start + n).try_for_each(|p| sh.check_read(p)),
            75..=84 => (start..start + n.min(8)).try_for_each(|p| sh.device_read(m, &vs[1], scratch, p).map(|_| ())),
            _ if vs[0].hot_pages() == 0 => Ok(()),
            // Hot-plug memory comes and goes; removing it evicts the pages there.
            85..=92 => match vs[0].grow(2 << 20) {
                // Refused: the region is full, or the host has not requested more (NACK).
                Ok(_)
                | Err(DevError::Resize {
                    failure: ResizeFailure::NoRoom { .. } | ResizeFailure::Request(MemError::Nack(_)),
                    ..
                }) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
            _ => {
                if vs[0].plugged_pages() > plugged {
                    vs[0].shrink(2 << 20).map(|_| ()).map_err(|e| e.to_string())
                } else {
                    Ok(())
                }
            }
        };
        if last.len() == 16 {
            last.pop_front();
        }
        last.push_back(what);
        if let Err(e) = r {
            result = Err(e);
            break;
        }
        if w.is_done() {
            break;
        }
    }
    sh.stop.store(true, Ordering::Release);
    let wr = w.join(JOIN_MS).map_err(|e| format!("the writer task: {e:?}"))?;
    let report = |e: String| {
        let ops: Vec<&str> = last.iter().map(String::as_str).collect();
        format!("seed {seed:#x}: {e}; last operations: [{}]", ops.join("; "))
    };
    // The writer's failure first: a write that failed midway leaves a torn page behind.
    let writes = wr.map_err(report)?;
    result.map_err(report)?;
    // Everything home, every page at its last version, nothing left on the devices.
    for v in vs {
        vram::migrate_to_ram(v, &sh.space, a, PAGES).map_err(|e| report(e.to_string()))?;
    }
    for p in 0..PAGES {
        sh.check_read(p).map_err(report)?;
        let (c, t) = (sh.committed[p as usize].load(Ordering::Relaxed), sh.intent[p as usize].load(Ordering::Relaxed));
        check!(c == t, "page {p}: version {t} announced, {c} committed");
    }
    while vs[0].plugged_pages() > plugged {
        vs[0].shrink(2 << 20).map_err(|e| report(e.to_string()))?;
    }

    log::info!("stress seed {seed:#x}: {ops} operations here, {writes} on the other CPU");
    Ok(())
}

/// A few seeds of the two-CPU interleaving on the real devices.
pub fn two_cpus_devices_and_eviction(_s: &System) -> TestResult {
    for seed in [0x1u64, 0x2545_f491, 0xdead_beef] {
        run(seed, 600)?;
    }
    Ok(())
}
