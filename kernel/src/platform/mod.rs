//! The platform layer: every line of the kernel's `unsafe` code, and the safe interface the
//! rest of the kernel is written against (in the style of asterinas' OSTD).
//!
//! Owns: CPU set-up, descriptor tables and traps ([`arch`]), the local APIC, SMP bring-up and
//! TLB shootdown, timekeeping, the serial port and the exit device; paging, the kernel half,
//! physical frames, the heap and task stacks ([`mm`]); the tasks and their context switch
//! ([`sched`]); ACPI discovery ([`acpi`]), PCI configuration space ([`pci`]); the virtio
//! DMA HAL and DMA buffers ([`virtio`]); the kernel's entry point ([`entry_point!`]) and the
//! end of every crash ([`crash`]).
//!
//! Invariants: the crate root denies `unsafe_code` and allows it only on `mod platform`, so no
//! module above this one can hold unsafe code; the layering check (`xtask/src/layers.rs`,
//! run by the host tests) also finds every `unsafe` outside this folder and every import
//! circle above it. Nothing in here names a module above it: what the layers above provide
//! (the page-fault handler of user address spaces, the timer tick's users, the crash report
//! of the test runner) they register through hooks — [`arch::trap::set_page_fault_handler`],
//! [`arch::apic::on_tick`], [`set_crash_reporter`] — the way asterinas injects its page-fault
//! handler. Physical memory is reached from above only through handles ([`mm::FrameRange`],
//! [`mm::PhysWindow`]) or through checked accessors of the memory hmm manages
//! ([`mm::ram`]).

pub mod acpi;
pub mod arch;
pub mod mm;
pub mod pci;
pub mod sched;
pub mod virtio;
pub mod virtio_mmio;

use arch::exit::{ExitCode, exit};
use arch::serial;
use boot::pvh::{BootError, PhysRead};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Once;

/// Reads physical memory through the entry code's identity map of the first GiB: the reader
/// `boot::pvh::parse` and `boot::multiboot2::parse` need, before the kernel page tables exist.
#[derive(Debug)]
pub struct EarlyPhys;

impl PhysRead for EarlyPhys {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        let end = paddr.checked_add(buf.len() as u64);
        if paddr == 0 || end.is_none_or(|e| e > boot::layout::EARLY_MAP_SIZE) || mm::direct_map_live() {
            return Err(BootError::Unreadable { paddr, len: buf.len() });
        }
        // SAFETY: `[paddr, end)` lies in the first GiB, which the entry code identity-maps
        // (checked: the kernel page tables are not live yet), and the hypervisor's start_info
        // structures there are not written by anyone now.
        unsafe { core::ptr::copy_nonoverlapping(paddr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// How the boot loader entered the kernel: the arguments `boot::entry` passes to
/// `kernel_entry`.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Physical address of `hvm_start_info` (PVH) or of the Multiboot2 information.
    pub info: u64,
    /// [`boot::entry::LOADER_PVH`] or [`boot::entry::LOADER_MULTIBOOT2`].
    pub loader: u32,
    /// The loader's `%eax` under Multiboot2 (0 under PVH).
    pub magic: u32,
}

impl Entry {
    /// Parses what the loader handed over into a [`boot::pvh::BootInfo`], by the protocol
    /// that entered the kernel. The error is the text to print, naming the protocol.
    pub fn parse(&self) -> Result<boot::pvh::BootInfo, EntryError> {
        if self.loader == boot::entry::LOADER_MULTIBOOT2 {
            boot::multiboot2::parse(&EarlyPhys, self.magic, self.info).map_err(EntryError::Multiboot2)
        } else {
            boot::pvh::parse(&EarlyPhys, self.info).map_err(EntryError::Pvh)
        }
    }
}

/// Why the boot information could not be read.
#[derive(Debug, Clone, Copy)]
pub enum EntryError {
    /// Entered by PVH; `hvm_start_info` is bad.
    Pvh(BootError),
    /// Entered by Multiboot2; its information structure is bad.
    Multiboot2(boot::multiboot2::Mb2Error),
}

impl core::fmt::Display for EntryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Pvh(e) => write!(f, "reading hvm_start_info: {e}"),
            Self::Multiboot2(e) => write!(f, "reading the Multiboot2 information: {e}"),
        }
    }
}

/// Defines the kernel's 64-bit entry symbol, `kernel_entry`, which `boot::entry` calls on the
/// higher-half boot stack with the boot information's physical address, the loader (PVH or
/// Multiboot2) and the loader's magic. `$main` is a `fn(Entry) -> !`; the entry marks the boot
/// time, sets the boot CPU's per-CPU base and starts the serial console before calling it.
#[macro_export]
macro_rules! entry_point {
    ($main:path) => {
        /// The 64-bit entry, called by `boot::entry` (see [`$crate::platform::Entry`]).
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn kernel_entry(info: u64, loader: u64, magic: u64) -> ! {
            $crate::platform::early_init();
            $main($crate::platform::Entry { info, loader: loader as u32, magic: magic as u32 })
        }
    };
}

/// What the entry does before the kernel's main: boot timestamp, the boot CPU's per-CPU
/// record, the serial console.
pub fn early_init() {
    arch::time::mark_boot();
    arch::smp::init_bsp();
    serial::init();
}

/// Takes the fatal-page-fault path on purpose: reads an unmapped lower-half address outside
/// any probe (the boot check `ktest.crash=page-fault`). Never returns.
pub fn deliberate_page_fault() -> ! {
    // SAFETY: deliberately reads an unmapped lower-half address (nothing is installed at boot
    // and no address space maps it) to test the fatal page-fault report; the read never
    // completes, so no value is produced.
    let v = unsafe { core::ptr::read_volatile(0xdead_b000 as *const u64) };
    crash(format_args!("deliberate page fault: read returned {v:#x}"))
}

static CRASHING: AtomicBool = AtomicBool::new(false);
static CRASH_REPORTER: Once<fn(core::fmt::Arguments<'_>) -> bool> = Once::new();

/// Registers the crash reporter: called with the crash's description at every crash; returns
/// whether it reported a failing test (then the exit code says so). The in-kernel test runner
/// registers one. Only the first registration counts; later ones return `false`.
pub fn set_crash_reporter(f: fn(core::fmt::Arguments<'_>) -> bool) -> bool {
    let mut ours = false;
    CRASH_REPORTER.call_once(|| {
        ours = true;
        f
    });
    ours
}

/// Whether [`crash`] has been called: the run is ending in a crash report.
pub fn crashing() -> bool {
    CRASHING.load(Ordering::Relaxed)
}

/// The end of every crash (panic or fatal exception): tells the registered reporter, then
/// exits ([`ExitCode::TestPanicked`] if it reported a failing test, [`ExitCode::Failure`]
/// otherwise). A crash while reporting a crash exits at once.
pub fn crash(what: core::fmt::Arguments<'_>) -> ! {
    if CRASHING.swap(true, Ordering::SeqCst) {
        serial::write_raw(format_args!("\nnested crash while reporting a crash\n"));
        exit(ExitCode::Failure);
    }
    if CRASH_REPORTER.get().is_some_and(|report| report(what)) {
        exit(ExitCode::TestPanicked);
    }
    exit(ExitCode::Failure)
}
