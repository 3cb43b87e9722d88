//! The unikernel: boots by PVH, owns the CPU page tables, brings up every CPU, and runs the HMM
//! stack across several virtio-based devices.
//!
//! [`kernel_entry`] is called by `boot`'s entry code on the higher-half boot stack. It brings
//! the machine to *ready* in this order, each step failing with a clear message and a non-zero
//! exit rather than a hang: serial console, `hvm_start_info`, command line and logger,
//! GDT/TSS/IDT, frames + kernel page tables + heap, ACPI, TSC calibration, local APIC and
//! timer, the scheduler, the other CPUs (SMP), PCI. At ready it prints the boot report (a human summary in the log and one
//! `@@BOOT {json}` line for tools), then runs the job the command line names — the default job,
//! nothing, or (in a `ktest` build) the in-kernel tests — and exits QEMU through
//! `isa-debug-exit`.

#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod arch;
mod bench;
mod compute;
mod copyengine;
mod devices;
mod devmmu;
mod experiment;
mod inject;
mod job;
mod json;
mod ktest;
mod logger;
mod mm;
mod pci;
mod report;
mod sched;
mod viommu;
mod virtio;
mod virtiomem;
mod vram;

use arch::{
    exit::{ExitCode, exit},
    serial, time,
};
use boot::{
    cmdline::{Crash, Job, KernelArgs},
    pvh::{self, BootError, BootInfo, PhysRead},
};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Once;

/// What the kernel found while booting; read by the report, the job and the tests.
#[derive(Debug)]
pub struct System {
    /// Parsed `hvm_start_info`.
    pub boot: &'static BootInfo,
    /// Parsed command line.
    pub args: KernelArgs<'static>,
    /// CPU features.
    pub cpu: arch::cpu::Features,
    /// ACPI platform description.
    pub platform: acpi::Platform,
    /// TSC frequency, Hz.
    pub tsc_hz: u64,
    /// APIC mode and timer frequency.
    pub apic: (arch::apic::Mode, u64),
    /// The CPUs brought up (and any that did not come up).
    pub smp: arch::smp::Started,
    /// PCI bus.
    pub pci: pci::Bus,
    /// Nanoseconds from kernel entry to ready.
    pub ready_ns: u64,
}

static BOOT_INFO: Once<BootInfo> = Once::new();
static SYSTEM: Once<System> = Once::new();

/// The system description, once ready.
pub fn system() -> Option<&'static System> {
    SYSTEM.get()
}

/// Reads physical memory through the entry code's identity map of the first GiB.
struct EarlyPhys;

impl PhysRead for EarlyPhys {
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
        let end = paddr.checked_add(buf.len() as u64);
        if paddr == 0 || end.is_none_or(|e| e > boot::layout::EARLY_MAP_SIZE) {
            return Err(BootError::Unreadable { paddr, len: buf.len() });
        }
        // SAFETY: `[paddr, end)` lies in the first GiB, which the entry code identity-maps,
        // and the hypervisor's start_info structures there are not written by anyone now.
        unsafe { core::ptr::copy_nonoverlapping(paddr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// Reports a boot step that failed and exits with a failure code.
fn fail(step: &str, err: impl core::fmt::Display) -> ! {
    serial::write_raw(format_args!("\nBOOT FAILED: {step}: {err}\n"));
    exit(ExitCode::Failure)
}

/// The 64-bit entry, called by `boot::entry` with the `hvm_start_info` physical address.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_entry(start_info: u64) -> ! {
    time::mark_boot();
    arch::smp::init_bsp();
    serial::init();

    let info = match pvh::parse(&EarlyPhys, start_info) {
        Ok(info) => BOOT_INFO.call_once(|| info),
        Err(e) => fail("reading hvm_start_info", e),
    };
    let args = match KernelArgs::parse(info.cmdline()) {
        Ok(args) => args,
        Err(e) => fail("kernel command line", e),
    };
    logger::init(args.clone());
    log::info!("hmm-unikernel {} booting by PVH, command line '{}'", env!("CARGO_PKG_VERSION"), info.cmdline());

    arch::gdt::init();
    arch::trap::init();
    let cpu = arch::cpu::features();

    if let Err(e) = mm::init(info, cpu.nx) {
        fail("memory", e);
    }
    log::debug!("memory: {} frames ({} MiB) free", mm::frame::free_frames(), mm::frame::free_frames() / 256);

    let platform = acpi::discover(info.rsdp).unwrap_or_else(|e| fail("ACPI", e));
    let tsc_hz = match platform.pm_timer {
        Some((port, wide)) => time::calibrate(port, wide, 5_000).unwrap_or_else(|e| fail("TSC calibration", e)),
        None => fail("TSC calibration", "the FADT names no PM timer"),
    };
    let apic = arch::apic::init(cpu.x2apic).unwrap_or_else(|e| fail("local APIC", e));
    sched::init().unwrap_or_else(|e| fail("scheduler", e));
    let smp = arch::smp::start_aps(info, &platform.cpus).unwrap_or_else(|e| fail("SMP", e));
    log::info!("smp: {} of {} CPUs online", smp.online.len(), platform.cpus.iter().filter(|c| c.enabled).count());
    let pci = pci::init(&platform.ecam).unwrap_or_else(|e| fail("PCI", e));

    let ready_ns = time::now_ns().unwrap_or(0);
    let system = SYSTEM.call_once(|| System { boot: info, args, cpu, platform, tsc_hz, apic, smp, pci, ready_ns });
    vram::set_coherent(system.args.coherent_devices);
    if let Err(e) = devices::init(system) {
        fail("devices", e);
    }
    report::print(system);

    if let Some(crash) = system.args.crash {
        deliberate_crash(crash);
    }
    if cfg!(feature = "ktest") {
        ktest::run(system)
    }
    match system.args.job {
        Job::None => exit(ExitCode::Success),
        Job::BenchMm => match bench::mm() {
            Ok(()) => exit(ExitCode::Success),
            Err(e) => fail("mm benchmark", e),
        },
        Job::BenchHmm => match bench::hmm() {
            Ok(()) => exit(ExitCode::Success),
            Err(e) => fail("hmm benchmark", e),
        },
        Job::BenchDevices => match bench::devices() {
            Ok(()) => exit(ExitCode::Success),
            Err(e) => fail("devices benchmark", e),
        },
        Job::Experiment => match experiment::run(system) {
            Ok(()) => exit(ExitCode::Success),
            Err(e) => fail("experiment", e),
        },
        // The default job, then the default experiment when the xtask passed its image.
        Job::Default => match job::run(system).and_then(|()| {
            if system.boot.modules.is_empty() {
                Ok(())
            } else {
                experiment::run(system).map_err(|e| alloc::format!("{e}"))
            }
        }) {
            Ok(()) => exit(ExitCode::Success),
            Err(e) => fail("default job", e),
        },
    }
}

fn deliberate_crash(crash: Crash) -> ! {
    log::warn!("performing the deliberate crash the command line asks for: {crash:?}");
    match crash {
        Crash::PageFault => {
            // SAFETY: deliberately reads an unmapped lower-half address to test the fatal
            // page-fault report; the read never completes.
            let v = unsafe { core::ptr::read_volatile(0xdead_b000 as *const u64) };
            fail("deliberate page fault", format_args!("read returned {v:#x}"))
        }
        Crash::Panic => panic!("deliberate panic requested by ktest.crash=panic"),
        Crash::TripleFault => arch::trap::triple_fault(),
        Crash::StackOverflow => {
            // A task on the last CPU recurses until it runs into its stack's guard page.
            let cpu = arch::smp::count() - 1;
            let task = sched::spawn_on(cpu, || recurse(0)).unwrap_or_else(|e| fail("deliberate stack overflow", e));
            match task.join(10_000) {
                Ok(depth) => fail("deliberate stack overflow", format_args!("returned at depth {depth}")),
                Err(e) => fail("deliberate stack overflow", e),
            }
        }
    }
}

/// Recurses until the stack runs out (the depth limit is never reached), each frame keeping a
/// buffer live so the stack really grows.
fn recurse(depth: u64) -> u64 {
    let buf = core::hint::black_box([depth; 64]);
    if core::hint::black_box(depth) == u64::MAX {
        return buf[0];
    }
    recurse(depth + 1) + buf[(depth % 64) as usize]
}

static CRASHING: AtomicBool = AtomicBool::new(false);

/// The end of every crash (panic or fatal exception): tells the test runner, then exits.
pub fn crash(what: core::fmt::Arguments<'_>) -> ! {
    if CRASHING.swap(true, Ordering::SeqCst) {
        serial::write_raw(format_args!("\nnested crash while reporting a crash\n"));
        exit(ExitCode::Failure);
    }
    if ktest::report_crash(what) {
        exit(ExitCode::TestPanicked);
    }
    exit(ExitCode::Failure)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    x86_64::instructions::interrupts::disable();
    match info.location() {
        Some(l) => {
            serial::write_raw(format_args!("\nPANIC at {}:{}:{}: {}\n", l.file(), l.line(), l.column(), info.message()))
        }
        None => serial::write_raw(format_args!("\nPANIC: {}\n", info.message())),
    }
    match info.location() {
        Some(l) => crash(format_args!("panicked at {}:{}: {}", l.file(), l.line(), info.message())),
        None => crash(format_args!("panicked: {}", info.message())),
    }
}
