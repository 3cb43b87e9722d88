//! End-to-end checks of device memory that the default job runs and reports, and the
//! in-kernel tests run as tests: migration both ways ([`round_trip`]), 2 MiB device pages
//! ([`huge_round_trip`]) and device memory added and removed at run time ([`hotplug_cycle`]). Each verifies every byte and where every
//! page is, and returns what it measured; the error names the first thing that was wrong.

use super::{Vram, all, migrate_to_device, migrate_to_ram};
use crate::arch::time;
use crate::devices::{DevError, ResizeFailure};
use crate::mm::uspace;
use crate::mm::uspace::UserFault;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use hmm::mm::SharedSpace;
use hmm::mm::pte::Pte;
use hmm::mm::space::{AddressSpace, Advice, MapRequest};
use hmm::mm::vma::Prot;
use hmm::pagemap::MemoryKind;

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(CheckError::Failed {
                what: format!($($msg)+),
                cond: Some(stringify!($cond)),
                file: file!(),
                line: line!(),
            });
        }
    };
}

/// Why a check of device memory failed: an operation it made failed (typed), or what it found
/// was wrong (described, with the condition and where it is checked).
#[derive(Debug)]
pub enum CheckError {
    /// A device operation failed.
    Device(DevError),
    /// Memory management refused `op` (a new address space, mmap, madvise, the pagemaps).
    Mm {
        /// What was asked.
        op: &'static str,
        /// Why.
        error: hmm::mm::Error,
    },
    /// A CPU access (`op`: a fill, a read back) faulted.
    Cpu {
        /// What the CPU did.
        op: &'static str,
        /// The fault.
        fault: UserFault,
    },
    /// The dmirror test device refused a command.
    Dmirror {
        /// Device.
        device: usize,
        /// Cycle.
        cycle: u32,
        /// The command.
        op: &'static str,
        /// Why.
        error: hmm::dmirror::CmdError,
    },
    /// What the check found is wrong.
    Failed {
        /// What, for people.
        what: String,
        /// The condition that did not hold, if it is one.
        cond: Option<&'static str>,
        /// Where it is checked.
        file: &'static str,
        /// Line.
        line: u32,
    },
}

impl CheckError {
    /// What the check found is wrong (at the caller's line).
    #[track_caller]
    pub fn failed(what: String) -> Self {
        let at = core::panic::Location::caller();
        Self::Failed { what, cond: None, file: at.file(), line: at.line() }
    }

    fn mm(op: &'static str) -> impl FnOnce(hmm::mm::Error) -> Self {
        move |error| Self::Mm { op, error }
    }

    fn cpu(op: &'static str) -> impl FnOnce(UserFault) -> Self {
        move |fault| Self::Cpu { op, fault }
    }
}

impl core::fmt::Display for CheckError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Device(e) => write!(f, "{e}"),
            Self::Mm { op, error } => write!(f, "{op}: {error}"),
            Self::Cpu { op, fault } => write!(f, "{op}: {fault}"),
            Self::Dmirror { device, cycle, op, error } => write!(f, "dev{device}: cycle {cycle}: {op}: {error:?}"),
            Self::Failed { what, cond: Some(c), file, line } => write!(f, "{what} ({c}) at {file}:{line}"),
            Self::Failed { what, cond: None, file, line } => write!(f, "{what} at {file}:{line}"),
        }
    }
}

impl From<DevError> for CheckError {
    fn from(e: DevError) -> Self {
        Self::Device(e)
    }
}

/// The in-kernel tests' protocol is text.
impl From<CheckError> for String {
    fn from(e: CheckError) -> String {
        e.to_string()
    }
}

/// A reproducible byte pattern (xorshift from `seed`).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn ns(cycles: u64) -> u64 {
    time::cycles_to_ns(cycles).unwrap_or(0)
}

/// A fresh process with `huge` THPs (2 MiB-aligned, `MADV_HUGEPAGE`) filled with `data`;
/// checks the CPU mapped them with huge pages.
fn thp_process(huge: u64, data: &[u8]) -> Result<(Arc<SharedSpace>, u64), CheckError> {
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(CheckError::mm("a new address space"))?);
    // Over-allocate by one huge page, then use the aligned part.
    let raw = space.lock().mmap(MapRequest::anon((huge + 1) * HUGE, Prot::RW)).map_err(CheckError::mm("mmap"))?;
    let a = raw.next_multiple_of(HUGE);
    space.lock().madvise(a, huge * HUGE, Advice::HugePage).map_err(CheckError::mm("madvise"))?;
    uspace::run(&space, |u| u.write(a, data)).map_err(CheckError::cpu("CPU fill"))?;
    for k in 0..huge {
        let e = space.lock().lookup(a + k * HUGE);
        ensure!(e.as_ref().is_some_and(|e| e.huge), "THP {k} is not PMD-mapped after the fill: {e:?}");
    }
    Ok((space, a))
}

/// What [`huge_round_trip`] measured.
#[derive(Debug, Clone, Copy)]
pub struct HugeTrip {
    /// THPs moved each way.
    pub thps: u64,
    /// ns per 4 KiB of THPs migrated to the device (whole 2 MiB device pages).
    pub to_device_ns_per_page: u64,
    /// ns for the CPU fault that brought one device THP back whole (private memory), or for
    /// the CPU read of it in place (coherent).
    pub fault_back_ns: u64,
    /// ns per 4 KiB of THPs migrated back explicitly.
    pub to_ram_ns_per_page: u64,
}

/// 2 MiB pages on a real device: `thps` THPs move whole into 2 MiB device pages (one PMD
/// entry each, one compound device page, the bytes in device memory), a CPU touch of private
/// memory brings its whole THP back in one fault (coherent memory is read in place), an
/// explicit migration brings the rest back as THPs, the bytes are intact and no device page
/// leaks.
pub fn huge_round_trip(v: &Vram, thps: u64) -> Result<HugeTrip, CheckError> {
    let n = v.device();
    let pages = thps * 512;
    let data = pattern(0x2e9 + n as u64, (thps * HUGE) as usize);
    let (space, a) = thp_process(thps, &data)?;
    let used = v.in_use();
    let t0 = time::rdtsc();
    let moved = migrate_to_device(v, &space, a, pages)?;
    let to_device_ns_per_page = ns(time::rdtsc() - t0) / pages;
    ensure!(moved == pages, "dev{n}: {moved} pages moved");
    ensure!(v.in_use() == used + pages, "dev{n}: {} pages in use", v.in_use() - used);
    let mut page = alloc::vec![0u8; HUGE as usize];
    for k in 0..thps {
        let e = space.lock().lookup(a + k * HUGE);
        let Some(e) = e.filter(|e| e.huge) else {
            return Err(CheckError::failed(format!("dev{n}: THP {k} not a huge entry")));
        };
        let pfn = v
            .holds(&e.pte)
            .ok_or_else(|| CheckError::failed(format!("dev{n}: THP {k} not in device memory: {e:?}")))?;
        let order = uspace::mm().meta(pfn).map(|m| m.order());
        ensure!(order == Some(9), "dev{n}: THP {k} is a device page of order {order:?}");
        let off =
            v.offset_of(pfn).ok_or_else(|| CheckError::failed(format!("dev{n}: THP {k} has no device offset")))?;
        v.dev().read_mem(off, &mut page)?;
        ensure!(page[..] == data[(k * HUGE) as usize..((k + 1) * HUGE) as usize], "THP {k} bytes in device memory");
    }
    let faults = v.stats.lock().cpu_faults;
    let mut got = [0u8; 8];
    let t0 = time::rdtsc();
    uspace::run(&space, |u| u.read(a + 12345, &mut got)).map_err(CheckError::cpu("CPU read"))?;
    let fault_back_ns = ns(time::rdtsc() - t0);
    ensure!(got[..] == data[12345..12353], "CPU read of THP 0");
    let private = v.kind() == MemoryKind::Private;
    if private {
        ensure!(v.stats.lock().cpu_faults == faults + 1, "one CPU fault for a device THP");
        let e = space.lock().lookup(a);
        ensure!(
            e.as_ref().is_some_and(|e| e.huge && matches!(e.pte, Pte::Present(_))),
            "THP 0 back in RAM as a THP: {e:?}"
        );
        ensure!(v.in_use() == used + pages - 512, "dev{n}: {} pages in use after the fault", v.in_use() - used);
    }
    let t0 = time::rdtsc();
    let back = migrate_to_ram(v, &space, a, pages)?;
    let expect = if private { pages - 512 } else { pages };
    let to_ram_ns_per_page = ns(time::rdtsc() - t0) / expect.max(1);
    ensure!(back == expect, "dev{n}: {back} pages back explicitly, {expect} expected");
    let e = space.lock().lookup(a + (thps - 1) * HUGE);
    ensure!(e.as_ref().is_some_and(|e| e.huge), "the last THP back in RAM whole: {e:?}");
    let mut all = alloc::vec![0u8; data.len()];
    uspace::run(&space, |u| u.read(a, &mut all)).map_err(CheckError::cpu("CPU read"))?;
    ensure!(all == data, "data after the round trip");
    ensure!(v.in_use() == used, "dev{n}: {} device pages leaked", v.in_use() - used);
    Ok(HugeTrip { thps, to_device_ns_per_page, fault_back_ns, to_ram_ns_per_page })
}

/// What [`hotplug_cycle`] measured.
#[derive(Debug, Clone, Copy)]
pub struct HotCycle {
    /// Bytes plugged and removed again.
    pub bytes: u64,
    /// Pages that lived in them and were evicted to RAM on removal.
    pub evicted: u64,
    /// ns to plug them and register their pagemaps.
    pub grow_ns: u64,
    /// ns to remove them: isolate, evict by DMA, memunmap, unplug.
    pub shrink_ns: u64,
}

/// Device memory added and removed at run time on a device with a hot-plug region: 4 MiB
/// are plugged (virtio-mem) and become device pages; with the BAR taken, migrations must fill
/// them (base pages, and a THP as a 2 MiB device page) (the region's own engine copies: the bytes are read back through the region);
/// removing them evicts every page to RAM first, losing nothing, then unplugs, as the device's
/// STATE confirms. Bad sizes are refused with nothing changed.
pub fn hotplug_cycle(v: &Arc<Vram>) -> Result<HotCycle, CheckError> {
    let n = v.device();
    let (pages0, plugged0) = (v.pages(), v.plugged_pages());
    let refused = |r: Result<_, DevError>| match r {
        Err(DevError::Resize { failure, .. }) => Some(failure),
        _ => None,
    };
    let r = refused(v.grow(3 << 20).map(|_| ()));
    ensure!(matches!(r, Some(ResizeFailure::NotBlocks(_))), "dev{n}: a 3 MiB grow: {r:?}");
    let r = refused(v.grow(v.hot_pages() * PAGE + HUGE).map(|_| ()));
    ensure!(matches!(r, Some(ResizeFailure::NoRoom { .. })), "dev{n}: a grow past the region: {r:?}");
    let r = refused(v.shrink(plugged0 * PAGE + HUGE).map(|_| ()));
    ensure!(matches!(r, Some(ResizeFailure::NotPlugged { .. })), "dev{n}: a shrink past what is plugged: {r:?}");
    ensure!(v.pages() == pages0, "dev{n}: a refused resize changed the memory");
    let t0 = time::rdtsc();
    let offs = v.grow(2 * HUGE)?;
    let grow_ns = ns(time::rdtsc() - t0);
    ensure!(offs.iter().all(|&o| o >= v.bar_pages() * PAGE), "dev{n}: plugged at {offs:x?}");
    ensure!(v.pages() == pages0 + 1024, "dev{n}: {} pages after plugging 4 MiB", v.pages());
    let plugged = v.dev().with_hot_mem(|m| m.config.plugged_size);
    ensure!(plugged == Some((plugged0 + 1024) * PAGE), "dev{n}: the device says {plugged:?} bytes are plugged");
    let region = offs[0] - v.bar_pages() * PAGE;
    let state = |len| v.dev().with_hot_mem(|m| m.state(region, len));
    ensure!(
        matches!(state(2 * HUGE), Some(Ok(drivers::virtio_mem::BlockState::Plugged))),
        "dev{n}: STATE of the new blocks: {:?}",
        state(2 * HUGE)
    );
    // Everything else of the device is taken, so the migration must land in the new blocks.
    let bar = v.bar_pages();
    let Some(carved) = v.carve(bar) else {
        v.shrink(2 * HUGE)?;
        return Err(CheckError::failed(format!(
            "dev{n}: the BAR is in use ({} pages); cannot isolate the hot-plug check",
            v.in_use()
        )));
    };
    let r = fill_and_remove(v, &state, pages0, plugged0);
    v.uncarve(carved, bar);
    let (evicted, shrink_ns) = r?;
    Ok(HotCycle { bytes: 2 * HUGE, evicted, grow_ns, shrink_ns })
}

/// The part of [`hotplug_cycle`] that runs with the BAR carved out.
fn fill_and_remove(
    v: &Arc<Vram>,
    state: &dyn Fn(u64) -> Option<Result<drivers::virtio_mem::BlockState, drivers::virtio_mem::MemError>>,
    pages0: u64,
    plugged0: u64,
) -> Result<(u64, u64), CheckError> {
    let n = v.device();
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(CheckError::mm("a new address space"))?);
    let pages = 300u64;
    let a = space.lock().mmap(MapRequest::anon(pages * PAGE, Prot::RW)).map_err(CheckError::mm("mmap"))?;
    let data = pattern(0x407 + n as u64, (pages * PAGE) as usize);
    uspace::run(&space, |u| u.write(a, &data)).map_err(CheckError::cpu("CPU fill"))?;
    let moved = migrate_to_device(v, &space, a, pages)?;
    ensure!(moved == pages, "dev{n}: {moved} of {pages} pages reached the plugged memory");
    let mut page = alloc::vec![0u8; PAGE as usize];
    for k in 0..pages {
        let e = space.lock().lookup(a + k * PAGE).map(|e| e.pte);
        let pfn = e
            .as_ref()
            .and_then(|e| v.holds(e))
            .ok_or_else(|| CheckError::failed(format!("page {k} is not in dev{n}'s memory: {e:?}")))?;
        let off =
            v.offset_of(pfn).ok_or_else(|| CheckError::failed(format!("page {k}: no offset in dev{n}'s memory")))?;
        ensure!(off.get() >= v.bar_pages() * PAGE, "page {k} at offset {off:#x}, in the BAR");
        v.dev().read_mem(off, &mut page)?;
        ensure!(page[..] == data[(k * PAGE) as usize..((k + 1) * PAGE) as usize], "page {k} in the region");
    }
    // And a THP, which takes the other block whole.
    let thp_data = pattern(0x7e5 + n as u64, HUGE as usize);
    let (thp_space, t) = thp_process(1, &thp_data)?;
    let moved = migrate_to_device(v, &thp_space, t, 512)?;
    let e = thp_space.lock().lookup(t);
    let off = e.as_ref().filter(|e| e.huge).and_then(|e| v.holds(&e.pte)).and_then(|p| v.offset_of(p));
    ensure!(
        moved == 512 && off.is_some_and(|o| o.get() >= v.bar_pages() * PAGE),
        "dev{n}: the THP is not a device THP in the plugged memory: {moved} pages, {e:?}"
    );
    let t0 = time::rdtsc();
    let evicted = v.shrink(2 * HUGE)?;
    let shrink_ns = ns(time::rdtsc() - t0);
    ensure!(evicted == pages + 512, "dev{n}: {evicted} pages evicted, {} lived there", pages + 512);
    let mut back = alloc::vec![0u8; HUGE as usize];
    uspace::run(&thp_space, |u| u.read(t, &mut back)).map_err(CheckError::cpu("CPU read"))?;
    ensure!(back == thp_data, "dev{n}: the evicted THP's data differs");
    drop(thp_space);
    ensure!(v.pages() == pages0, "dev{n}: {} pages after unplugging", v.pages());
    for k in 0..pages {
        let e = space.lock().lookup(a + k * PAGE).map(|e| e.pte);
        ensure!(matches!(e, Some(Pte::Present(_))), "page {k} not in RAM after eviction: {e:?}");
    }
    let mut back = alloc::vec![0u8; data.len()];
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(CheckError::cpu("CPU read"))?;
    ensure!(back == data, "dev{n}: data differs after eviction");
    let plugged = v.dev().with_hot_mem(|m| m.config.plugged_size);
    ensure!(plugged == Some(plugged0 * PAGE), "dev{n}: {plugged:?} bytes still plugged");
    ensure!(
        matches!(state(2 * HUGE), Some(Ok(drivers::virtio_mem::BlockState::Unplugged))),
        "dev{n}: STATE after the removal: {:?}",
        state(2 * HUGE)
    );
    // Plugged again, the same blocks serve again.
    v.grow(HUGE)?;
    v.shrink(HUGE)?;
    Ok((evicted, shrink_ns))
}

/// Device memory added and removed many times on a real device: a dmirror device over `v`'s
/// BAR (`vram::backing`) with 2 MiB chunks migrates 16 pages in (its first chunk is added:
/// `memremap_pages`) and is released (evicted by DMA, the chunk removed: `memunmap_pages`),
/// `cycles` times, more than the frame table has sections. Every cycle moves every page and
/// gives its section back; afterwards a migration still works and the data is intact. Returns
/// what it measured, for the log.
pub fn dmirror_chunk_cycles(v: &Arc<Vram>, cycles: u32) -> Result<String, CheckError> {
    use hmm::dmirror::{Dmirror, DmirrorDevice};
    let n = v.device();
    let pm = super::pagemaps().map_err(CheckError::mm("the pagemap registry"))?;
    let mm = uspace::mm();
    let backing = super::backing::BarBacking::new(v);
    let dev = DmirrorDevice::with_backing(
        pm,
        MemoryKind::Private,
        hmm::mm::notify::Owner(0xc7c0 + n as u64),
        HUGE,
        backing.clone(),
    );
    let space = mm.share(AddressSpace::new(mm).map_err(CheckError::mm("a new address space"))?);
    let d = Dmirror::open(&dev, &space).map_err(CheckError::mm("opening the dmirror"))?;
    let pages = 16;
    let a = space.lock().mmap(MapRequest::anon(pages * PAGE, Prot::RW)).map_err(CheckError::mm("mmap"))?;
    let data = pattern(0xc7c + n as u64, (pages * PAGE) as usize);
    uspace::run(&space, |u| u.write(a, &data)).map_err(CheckError::cpu("CPU write"))?;
    let start = mm.frames().live_sections();
    for cycle in 0..=cycles {
        let (got, _) = d.migrate_to_dev(a, pages).map_err(|error| CheckError::Dmirror {
            device: n,
            cycle,
            op: "migrate",
            error,
        })?;
        ensure!(got == data, "dev{n}: cycle {cycle}: the device read back other data");
        ensure!(dev.pages_in_use() == pages, "dev{n}: cycle {cycle}: {} device pages in use", dev.pages_in_use());
        ensure!(
            mm.frames().live_sections() == start + 1,
            "dev{n}: cycle {cycle}: {} sections",
            mm.frames().live_sections()
        );
        dev.release().map_err(|error| CheckError::Dmirror { device: n, cycle, op: "release", error })?;
        ensure!(dev.pages_in_use() == 0, "dev{n}: cycle {cycle}: pages left after release");
        ensure!(
            mm.frames().live_sections() == start,
            "dev{n}: cycle {cycle}: {} sections in use after release, {start} before (a section leaked)",
            mm.frames().live_sections()
        );
    }
    let mut back = alloc::vec![0u8; data.len()];
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(CheckError::cpu("CPU read"))?;
    ensure!(back == data, "dev{n}: data changed over the cycles");
    d.close().map_err(CheckError::mm("closing the dmirror"))?;
    let dma_pages = backing.dma_pages.load(core::sync::atomic::Ordering::Relaxed);
    ensure!(dma_pages >= u64::from(cycles) * pages * 2, "dev{n}: only {dma_pages} pages copied by DMA");
    Ok(format!(
        "{} cycles, sections in use {start} before and {} after, {dma_pages} pages copied by DMA",
        cycles + 1,
        mm.frames().live_sections()
    ))
}

/// What [`round_trip`] measured.
#[derive(Debug, Clone, Copy)]
pub struct RoundTrip {
    /// Pages moved each way.
    pub pages: u64,
    /// ns per page, RAM -> device (migrate_vma + DMA).
    pub to_device_ns: u64,
    /// ns per page, CPU faults bringing pages back (migrate_to_ram + DMA each).
    pub fault_back_ns: u64,
    /// ns per page, explicit migration back.
    pub to_ram_ns: u64,
}

/// Migrates `pages` pages of a fresh process to device `n` and back, both ways (CPU faults,
/// explicit), checking where the pages are and that every byte survives (read through the
/// BAR while on the device, through real loads after).
pub fn round_trip(n: usize, pages: u64) -> Result<RoundTrip, CheckError> {
    use crate::arch::time;
    use hmm::mm::pte::Pte;
    use hmm::mm::space::MapRequest;
    use hmm::mm::vma::Prot;
    let fail = CheckError::failed;
    let v = all().map_err(DevError::Memory)?.get(n).ok_or(DevError::NoDevice(n))?.clone();
    let dev = v.dev();
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|error| CheckError::Mm { op: "a new address space", error })?);
    let a = space
        .lock()
        .mmap(MapRequest::anon(pages * PAGE, Prot::RW))
        .map_err(|error| CheckError::Mm { op: "mmap", error })?;
    let data: Vec<u8> = (0..pages * PAGE / 8).flat_map(|i| (i ^ (n as u64) << 40).to_le_bytes()).collect();
    uspace::run(&space, |u| u.write(a, &data)).map_err(|fault| CheckError::Cpu { op: "CPU fill", fault })?;
    let ns = |c: u64| time::cycles_to_ns(c).unwrap_or(0) / pages;

    let t0 = time::rdtsc();
    let moved = migrate_to_device(&v, &space, a, pages)?;
    let to_device_ns = ns(time::rdtsc() - t0);
    if moved != pages {
        return Err(fail(alloc::format!("{moved} of {pages} pages reached dev{n}")));
    }
    let mut page = alloc::vec![0u8; PAGE as usize];
    for k in 0..pages {
        let e = space.lock().lookup(a + k * PAGE).map(|e| e.pte);
        let Some(pfn) = e.as_ref().and_then(|e| v.holds(e)) else {
            return Err(fail(alloc::format!(
                "page {k} is not in dev{n}'s {:?} memory after the migration: {e:?}",
                v.kind
            )));
        };
        let off =
            v.offset_of(pfn).ok_or_else(|| fail(alloc::format!("page {k}: a device entry outside dev{n}'s memory")))?;
        dev.read_mem(off, &mut page)?;
        if page[..] != data[(k * PAGE) as usize..((k + 1) * PAGE) as usize] {
            return Err(fail(alloc::format!("page {k}: device memory differs from what the CPU wrote")));
        }
    }
    let faults = v.stats.lock().cpu_faults;
    let mut back = alloc::vec![0u8; data.len()];
    let t0 = time::rdtsc();
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|fault| CheckError::Cpu { op: "CPU read back", fault })?;
    let fault_back_ns = ns(time::rdtsc() - t0);
    if back != data {
        return Err(fail("data differs after the CPU faulted the pages back".into()));
    }
    if v.kind == MemoryKind::Coherent {
        // The CPU writes device memory in place too.
        let e = space.lock().lookup(a).map(|e| e.pte);
        let Some(Pte::Present(p)) = e else { return Err(fail(alloc::format!("coherent page 0 unmapped: {e:?}"))) };
        let flipped: Vec<u8> = data[..PAGE as usize].iter().map(|b| !b).collect();
        uspace::run(&space, |u| u.write(a, &flipped)).map_err(|fault| CheckError::Cpu { op: "CPU write", fault })?;
        dev.read_mem(v.offset_of(p.pfn).unwrap_or_default(), &mut page)?;
        if page != flipped {
            return Err(fail("a CPU store to coherent device memory did not reach the BAR".into()));
        }
        uspace::run(&space, |u| u.write(a, &data[..PAGE as usize]))
            .map_err(|fault| CheckError::Cpu { op: "CPU write back", fault })?;
    }
    let faulted = v.stats.lock().cpu_faults - faults;
    // One fault per fault-around window the range touches; none at all on coherent memory,
    // which the CPU read in place.
    let windows = match v.kind {
        MemoryKind::Private => (a + pages * PAGE).div_ceil(v.fault_around() * PAGE) - a / (v.fault_around() * PAGE),
        MemoryKind::Coherent => 0,
    };
    if faulted != windows {
        return Err(fail(alloc::format!(
            "{faulted} CPU faults for {pages} device pages in {windows} fault-around windows of {} pages",
            v.fault_around()
        )));
    }
    migrate_to_device(&v, &space, a, pages)?;
    let t0 = time::rdtsc();
    let moved = migrate_to_ram(&v, &space, a, pages)?;
    let to_ram_ns = ns(time::rdtsc() - t0);
    back.fill(0);
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|fault| CheckError::Cpu { op: "CPU read", fault })?;
    if moved != pages || back != data {
        return Err(fail(alloc::format!("explicit migration back: {moved} pages, data intact: {}", back == data)));
    }
    drop(space);
    if v.in_use() != 0 {
        return Err(fail(alloc::format!("{} device pages still in use after the process went", v.in_use())));
    }
    Ok(RoundTrip { pages, to_device_ns, fault_back_ns, to_ram_ns })
}
