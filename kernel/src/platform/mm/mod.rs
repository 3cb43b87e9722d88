//! Memory: physical frames, the kernel heap, and the kernel's own page tables.
//!
//! Bootstrap order ([`init`]):
//! 1. RAM below the early map's 1 GiB goes into the frame allocator (minus the first MiB, the
//!    kernel image and the boot modules); while the early identity map is live,
//!    [`phys_to_virt`] is the identity.
//! 2. The kernel page table is built: the direct map of every RAM/ACPI region at
//!    [`DIRECT_MAP_BASE`](boot::layout::DIRECT_MAP_BASE) (write-back, no-execute, 2 MiB pages
//!    where aligned), and the kernel image at its link address with per-section permissions
//!    (text RX, rodata R+NX, data/bss RW+NX), all global.
//! 3. CR3 switches to it; from then on [`phys_to_virt`] adds the direct-map base, and the
//!    lower half is empty.
//! 4. RAM above 1 GiB joins the frame allocator; the heap gets its first frames. (The
//!    address-space manager above, `crate::mm::uspace`, starts after this, from `main`.)
//!
//! MMIO is mapped on demand into the direct-map range, uncached ([`map_mmio`]).
//!
//! **Reaching physical memory.** From above this layer, only through values: owned frames
//! ([`FrameRange`], freed on drop), windows onto device memory the platform mapped
//! ([`PhysWindow`]), and, for `hmm::mm`'s `Platform`, the accessors of [`ram`], which check
//! every frame against the RAM the frame allocator manages (and device memory mapped with
//! [`map_phys`]) and panic with the frame's number rather than write anywhere else. The raw
//! direct-map copies behind them ([`read_phys`]/[`write_phys`], and
//! [`map_phys`], which makes memory reachable) are private to the platform layer; boot
//! modules are read with [`read_module`]. Physical addresses are [`PhysAddr`], device (DMA) addresses [`Iova`].

mod addr;
pub mod frame;
mod handles;
pub mod heap;
pub mod paging;
pub mod ram;
pub mod stack;

pub use addr::Iova;
pub use handles::{FrameRange, HandleError, PhysWindow};
pub use x86_64::PhysAddr;

/// The kernel-half window reserved for scratch mappings (the paging tests and the default
/// job's TLB timing map frames of their own here): no Rust object ever lives in it.
pub const SCRATCH: u64 = 0xffff_c000_0000_0000;

use boot::{
    layout::{DIRECT_MAP_BASE, DIRECT_MAP_MAX_PHYS, EARLY_MAP_SIZE, KERNEL_VMA_OFFSET},
    pvh::{BootInfo, MemoryKind},
};
use core::sync::atomic::{AtomicBool, Ordering};
use paging::{Flags, FlushBatch, PageSize, PageTable};
use spin::Mutex;

pub use paging::MapError;

/// The base page size.
pub const PAGE_SIZE: u64 = 4096;
const HUGE: u64 = 2 << 20;
/// Frames set aside for the page tables built before the direct map is live.
const BOOTSTRAP_BYTES: u64 = 2 << 20;

static DIRECT_MAP_LIVE: AtomicBool = AtomicBool::new(false);
static NX: AtomicBool = AtomicBool::new(false);
static KERNEL_PT: Mutex<Option<PageTable>> = Mutex::new(None);

/// The kernel image's sections, as virtual address ranges.
#[derive(Debug, Clone, Copy)]
pub struct ImageLayout {
    /// Executable code.
    pub text: (u64, u64),
    /// Read-only data.
    pub rodata: (u64, u64),
    /// Writable data and bss.
    pub data: (u64, u64),
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
}

/// The kernel image's section boundaries (from the linker script).
pub fn image() -> ImageLayout {
    ImageLayout {
        text: ((&raw const __text_start) as u64, (&raw const __text_end) as u64),
        rodata: ((&raw const __rodata_start) as u64, (&raw const __rodata_end) as u64),
        data: ((&raw const __data_start) as u64, (&raw const __data_end) as u64),
    }
}

/// Whether the kernel page tables (and so the direct map) are installed.
pub fn direct_map_live() -> bool {
    DIRECT_MAP_LIVE.load(Ordering::Relaxed)
}

/// The virtual address of physical address `paddr`.
pub fn phys_to_virt(paddr: u64) -> u64 {
    if DIRECT_MAP_LIVE.load(Ordering::Relaxed) { DIRECT_MAP_BASE + paddr } else { paddr }
}

/// The physical address of a kernel virtual address (direct map or kernel image).
pub fn virt_to_phys(vaddr: u64) -> Option<u64> {
    if vaddr >= KERNEL_VMA_OFFSET {
        Some(vaddr - KERNEL_VMA_OFFSET)
    } else if (DIRECT_MAP_BASE..DIRECT_MAP_BASE + DIRECT_MAP_MAX_PHYS).contains(&vaddr) {
        Some(vaddr - DIRECT_MAP_BASE)
    } else {
        with_kernel_pt(|pt| pt.translate(vaddr).map(|t| t.paddr)).flatten()
    }
}

/// Reads `buf.len()` bytes of physical memory at `pa` through the direct map: for buffers the
/// caller owns (DMA buffers it allocated, device memory it mapped with [`map_phys`]). Private
/// to the platform layer: everything above it reaches memory through handles.
pub(in crate::platform) fn read_phys(pa: u64, buf: &mut [u8]) {
    assert!(
        pa.checked_add(buf.len() as u64).is_some_and(|e| e <= DIRECT_MAP_MAX_PHYS),
        "read_phys past the direct map"
    );
    // SAFETY: the range lies inside the direct map (checked) and, by this function's contract,
    // in memory the caller owns and has mapped; `buf` is a distinct kernel buffer.
    unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(pa) as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Writes `data` to physical memory at `pa` through the direct map (same contract as
/// [`read_phys`]; private to the platform layer like it).
pub(in crate::platform) fn write_phys(pa: u64, data: &[u8]) {
    assert!(
        pa.checked_add(data.len() as u64).is_some_and(|e| e <= DIRECT_MAP_MAX_PHYS),
        "write_phys past the direct map"
    );
    // SAFETY: as in `read_phys`, in the other direction.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), phys_to_virt(pa) as *mut u8, data.len()) }
}

/// Runs `f` on the kernel page table (None before [`init`]), with interrupts off so the timer
/// does not preempt the holder. Waiting for the lock happens with interrupts on, so a CPU that
/// waits here still answers the TLB shootdown the holder may be waiting for.
pub fn with_kernel_pt<R>(f: impl FnOnce(&mut PageTable) -> R) -> Option<R> {
    let mut f = Some(f);
    loop {
        let done = x86_64::instructions::interrupts::without_interrupts(|| {
            let mut pt = KERNEL_PT.try_lock()?;
            let f = f.take()?;
            Some(pt.as_mut().map(f))
        });
        if let Some(r) = done {
            return r;
        }
        core::hint::spin_loop();
    }
}

static KERNEL_ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Physical address of the kernel page table's root (after [`init`]).
pub fn kernel_root() -> u64 {
    KERNEL_ROOT.load(Ordering::Relaxed)
}

/// No-execute, if the CPU supports it (otherwise the bit is reserved and must stay clear).
pub fn nx() -> Flags {
    if NX.load(Ordering::Relaxed) { Flags::NO_EXECUTE } else { Flags::empty() }
}

/// Why memory set-up failed.
#[derive(Debug)]
pub enum MmError {
    /// A mapping could not be made.
    Map(MapError),
    /// The heap could not get its first frames.
    NoHeap,
    /// No free 2 MiB run of RAM below 1 GiB for the bootstrap page tables.
    NoBootstrap,
    /// No free run of RAM large enough for the frame allocator's links (bytes needed).
    NoFrameLinks(u64),
}

impl core::fmt::Display for MmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(e) => write!(f, "building the kernel page tables: {e}"),
            Self::NoHeap => write!(f, "no memory for the kernel heap: give the machine more memory"),
            Self::NoBootstrap => write!(f, "no free 2 MiB of RAM below 1 GiB for the bootstrap page tables"),
            Self::NoFrameLinks(n) => {
                write!(f, "no free run of {n} bytes of RAM for the frame allocator's links: RAM is too fragmented")
            }
        }
    }
}

impl From<MapError> for MmError {
    fn from(e: MapError) -> Self {
        Self::Map(e)
    }
}

/// Maps `[start, end)` of physical memory into the direct map with `flags`, using 2 MiB pages
/// where alignment allows; ranges already mapped are left as they are.
fn map_direct(pt: &mut PageTable, start: u64, end: u64, flags: Flags, batch: &mut FlushBatch) -> Result<(), MapError> {
    let mut p = start & !(PAGE_SIZE - 1);
    while p < end {
        let size = if p.is_multiple_of(HUGE) && p + HUGE <= end { PageSize::Size2M } else { PageSize::Size4K };
        match pt.map(DIRECT_MAP_BASE + p, p, size, flags) {
            Ok(flush) => flush.defer(batch),
            Err(MapError::AlreadyMapped(_) | MapError::HugePageInTheWay(_)) => {}
            Err(e) => return Err(e),
        }
        p += size.bytes();
    }
    Ok(())
}

/// Maps physical `[paddr, paddr + len)` uncached for device registers; returns its virtual
/// address (in the direct-map range).
pub fn map_mmio(paddr: u64, len: u64) -> Result<u64, MapError> {
    map_phys_untracked(paddr, len, Flags::WRITABLE | Flags::NO_CACHE | Flags::WRITE_THROUGH)?;
    Ok(phys_to_virt(paddr))
}

/// Makes physical `[paddr, paddr + len)` reachable through the direct map with `flags`
/// (write-back memory outside the memory map, such as firmware tables, or MMIO). Above the
/// platform layer device memory is mapped by making its window ([`hotplug_window`],
/// `pci::bar_window`).
pub(in crate::platform) fn map_phys(paddr: u64, len: u64, flags: Flags) -> Result<(), MapError> {
    map_phys_untracked(paddr, len, flags)?;
    // Device memory the CPU can now reach (a device's BAR, hot-plugged memory): hmm may be
    // handed its frames (coherent device memory), so the checked accessors accept them.
    ram::add_device(paddr, paddr.saturating_add(len));
    Ok(())
}

/// Why [`hotplug_window`] made no window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowError {
    /// `[start, end)` overlaps RAM the kernel already manages.
    Ram(u64, u64),
    /// Mapping it for the CPU failed.
    Map(MapError),
}

impl core::fmt::Display for WindowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ram(s, e) => write!(f, "[{s:#x}, {e:#x}) overlaps RAM the kernel manages"),
            Self::Map(e) => write!(f, "{e}"),
        }
    }
}

/// A [`PhysWindow`] onto the hot-plug region `[paddr, paddr + len)` a memory device (virtio-mem)
/// reported, mapped uncached for the CPU like a BAR and recorded as device memory `hmm` may be
/// handed. Refused if the range overlaps RAM the frame allocator manages.
pub fn hotplug_window(paddr: u64, len: u64) -> Result<PhysWindow, WindowError> {
    let end = paddr.checked_add(len).ok_or(WindowError::Map(MapError::NonCanonical(paddr)))?;
    if ram::overlaps_managed(paddr, end) {
        return Err(WindowError::Ram(paddr, end));
    }
    map_phys(paddr, len, Flags::WRITABLE | Flags::NO_CACHE).map_err(WindowError::Map)?;
    Ok(PhysWindow::new(paddr, len))
}

/// The bytes of boot module `m` (the memory it occupies is reserved at boot and never given to
/// the frame allocator, so it still holds what the loader put there).
pub fn read_module(info: &BootInfo, index: usize) -> Option<alloc::vec::Vec<u8>> {
    let m = info.modules.get(index)?;
    let mut bytes = alloc::vec![0u8; m.size as usize];
    read_phys(m.paddr, &mut bytes);
    Some(bytes)
}

/// [`map_phys`] without recording the range as memory `hmm` may be handed ([`ram`]): for
/// device registers and firmware tables.
pub(in crate::platform) fn map_phys_untracked(paddr: u64, len: u64, flags: Flags) -> Result<(), MapError> {
    if !DIRECT_MAP_LIVE.load(Ordering::Relaxed) {
        return Ok(()); // identity-mapped until then (below 1 GiB)
    }
    let end = paddr.checked_add(len).filter(|&e| e <= DIRECT_MAP_MAX_PHYS).ok_or(MapError::NonCanonical(paddr))?;
    let flags = flags | nx() | Flags::GLOBAL;
    with_kernel_pt(|pt| {
        let mut batch = FlushBatch::new();
        let r = map_direct(pt, paddr, end, flags, &mut batch);
        batch.finish();
        r
    })
    .unwrap_or(Ok(()))
}

/// Brings up frames, the kernel page table and the heap (see the module docs).
pub fn init(info: &BootInfo, nx_supported: bool) -> Result<(), MmError> {
    NX.store(nx_supported, Ordering::Relaxed);
    let img = image();
    let kernel_phys_end = img.data.1 - KERNEL_VMA_OFFSET;
    let reserved = |s: u64, e: u64| -> bool {
        s < 0x10_0000
            || (s < kernel_phys_end && e > boot::layout::KERNEL_PHYS_BASE)
            || info.modules.iter().any(|m| s < m.paddr + m.size && e > m.paddr)
    };
    // Step 1: page tables for the direct map come from a bootstrap run: the first 2 MiB of
    // free RAM inside the early identity map.
    let mut bootstrap = None;
    for r in info.usable_ram(PAGE_SIZE) {
        let mut s = r.start.max(0x10_0000);
        let e = r.end.min(EARLY_MAP_SIZE);
        while s + BOOTSTRAP_BYTES <= e {
            if !reserved(s, s + BOOTSTRAP_BYTES) {
                bootstrap = Some(s);
                break;
            }
            s += PAGE_SIZE;
        }
        if bootstrap.is_some() {
            break;
        }
    }
    let bootstrap = bootstrap.ok_or(MmError::NoBootstrap)?;
    frame::set_bootstrap(bootstrap, bootstrap + BOOTSTRAP_BYTES);

    // Step 2: the kernel page table.
    let mut pt = PageTable::new()?;
    let mut batch = FlushBatch::new();
    let wb = Flags::WRITABLE | nx() | Flags::GLOBAL;
    for r in info.memory_map.iter() {
        if matches!(
            r.kind,
            MemoryKind::Ram | MemoryKind::AcpiReclaimable | MemoryKind::AcpiNvs | MemoryKind::Persistent
        ) {
            map_direct(&mut pt, r.start, r.end, wb, &mut batch)?;
        }
    }
    let sections = [
        (img.text, Flags::GLOBAL),
        (img.rodata, nx() | Flags::GLOBAL),
        (img.data, Flags::WRITABLE | nx() | Flags::GLOBAL),
    ];
    let guard = boot::entry::boot_stack_guard();
    for ((start, end), flags) in sections {
        let mut v = start;
        while v < end {
            if guard.contains(&v) {
                v += PAGE_SIZE;
                continue;
            }
            pt.map(v, v - KERNEL_VMA_OFFSET, PageSize::Size4K, flags)?.defer(&mut batch);
            v += PAGE_SIZE;
        }
    }

    pt.populate_kernel_half()?;

    // Step 3: switch. Global pages on first, so kernel entries survive CR3 reloads.
    // SAFETY: enabling PGE changes only TLB retention; the CPU reports support.
    unsafe {
        use x86_64::registers::control::{Cr4, Cr4Flags};
        if crate::platform::arch::cpu::features().pge {
            Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL));
        }
    }
    // SAFETY: the new hierarchy maps the whole kernel image (code, data, bss, hence the boot
    // stack, GDT, TSS and IDT, which are statics) at the addresses they are running at, and
    // the direct map covers every frame the allocator has handed out (page tables included).
    unsafe { pt.activate() };
    drop(batch); // CR3 reload flushed non-global entries; the batch's flush is harmless.
    paging::flush_all();
    DIRECT_MAP_LIVE.store(true, Ordering::Relaxed);
    KERNEL_ROOT.store(pt.root(), Ordering::Relaxed);
    crate::platform::arch::smp::set_root(pt.root());
    *KERNEL_PT.lock() = Some(pt);

    // Step 4: the frame allocator. Its links are carved from the first free run that holds
    // them; then every usable frame not reserved and not used otherwise is added.
    let (used_start, used_end) = frame::bootstrap_used();
    // What no RAM run may include: the first MiB, the kernel image, the boot modules and the
    // bootstrap frames used. Runs are RAM minus these intervals (at most 2 + modules + 1).
    let free_runs = |f: &mut dyn FnMut(u64, u64)| {
        let fixed = [(0, 0x10_0000), (boot::layout::KERNEL_PHYS_BASE, kernel_phys_end), (used_start, used_end)];
        let modules =
            info.modules.iter().map(|m| (m.paddr & !(PAGE_SIZE - 1), (m.paddr + m.size).next_multiple_of(PAGE_SIZE)));
        for r in info.usable_ram(PAGE_SIZE) {
            // Walk the run, jumping over every hole that overlaps the current position.
            let mut p = r.start;
            while p < r.end {
                let overlapping =
                    fixed.iter().copied().chain(modules.clone()).filter(|&(s, e)| s < r.end && e > p && s < e);
                match overlapping.min_by_key(|&(s, _)| s) {
                    Some((s, e)) if s <= p => p = e.min(r.end),
                    Some((s, _)) => {
                        f(p, s);
                        p = s;
                    }
                    None => {
                        f(p, r.end);
                        p = r.end;
                    }
                }
            }
        }
    };
    let lo = info.usable_ram(PAGE_SIZE).map(|r| r.start).min().unwrap_or(0);
    let hi = info.usable_ram(PAGE_SIZE).map(|r| r.end).max().unwrap_or(0);
    let need = frame::links_bytes(lo, hi);
    let mut links = None;
    free_runs(&mut |s, e| {
        if links.is_none() && e - s >= need {
            links = Some(s);
        }
    });
    let links = links.ok_or(MmError::NoFrameLinks(need))?;
    frame::init(lo, hi, links);
    free_runs(&mut |s, e| {
        // The links' run is split around them.
        if s <= links && links < e {
            frame::add_region(s, links);
            frame::add_region(links + need, e);
        } else {
            frame::add_region(s, e);
        }
    });
    ram::add_managed(used_start, used_end);
    if !heap::init() {
        return Err(MmError::NoHeap);
    }
    Ok(())
}
