//! The unikernel: boots by PVH, owns the CPU page tables, brings up every CPU, and runs the HMM
//! stack across several virtio-based devices.
//!
//! **Layers.** [`platform`] holds every line of unsafe code (CPU, traps, paging, frames, heap,
//! APIC, SMP, tasks, ACPI, PCI, the virtio DMA HAL); this root denies `unsafe_code` and allows
//! it only there. Above it: [`system`] (what boot found), [`mm`] (user address spaces over
//! `hmm::mm`), the devices (`devices`, `copyengine`, `viommu`, `devmmu`, `vram`, `virtiomem`,
//! `compute`, `inject`), the jobs (`job`, `bench`, `experiment`), the report and logger, and
//! the test runner (`ktest`). Nothing below calls up: the layers above register hooks (the
//! page-fault handler, tick hooks, the crash reporter). `xtask/src/layers.rs` checks from the
//! sources that no import circle exists outside the platform and no `unsafe` outside it.
//!
//! The platform's `kernel_entry` ([`entry_point!`]) is called by `boot`'s entry code on the
//! higher-half boot stack and enters [`kernel_main`]. It brings the machine to *ready* in this
//! order, each step failing with a clear message and a non-zero exit rather than a hang:
//! serial console, `hvm_start_info`, command line and logger, GDT/TSS/IDT, frames + kernel
//! page tables + heap, the address-space manager, ACPI, TSC calibration, local APIC and timer,
//! the scheduler, the other CPUs (SMP), PCI. At ready it prints the boot report (a human
//! summary in the log and one `@@BOOT {json}` line for tools), then runs the job the command
//! line names — the default job, nothing, or (in a `ktest` build) the in-kernel tests, whose
//! tables are listed here ([`KTESTS`]) — and exits QEMU through `isa-debug-exit`.

#![no_std]
#![no_main]
// Unsafe code lives only in the platform layer (`platform/`); the layering check in
// `xtask/src/layers.rs` holds the same line from the sources.
#![deny(unsafe_code)]

extern crate alloc;

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
mod linux;
mod logger;
mod mm;
#[allow(unsafe_code)]
mod platform;
mod report;
mod system;
mod viommu;
mod virtiomem;
mod vram;

// The platform's modules under their old names, for the files that name them so
// (`crate::arch::time`, `crate::sched`, `crate::pci`, `crate::virtio`); `crate::System` and
// `crate::system()` likewise. The layering check resolves these to the modules they name.
pub use platform::{acpi, arch, pci, sched, virtio};
pub use system::{System, system};

use boot::{
    cmdline::{Crash, Job, KernelArgs},
    pvh::BootInfo,
};
use platform::arch::{
    exit::{ExitCode, exit},
    serial, time,
};
use spin::Once;

static BOOT_INFO: Once<BootInfo> = Once::new();

/// Reports a boot step that failed and exits with a failure code.
fn fail(step: &str, err: impl core::fmt::Display) -> ! {
    serial::write_raw(format_args!("\nBOOT FAILED: {step}: {err}\n"));
    exit(ExitCode::Failure)
}

crate::entry_point!(kernel_main);

/// The kernel's main, entered from the platform's `kernel_entry` with what the loader
/// (PVH or Multiboot2) handed over (boot timestamp, per-CPU base and serial console already set
/// up).
fn kernel_main(entry: platform::Entry) -> ! {
    let info = match entry.parse() {
        Ok(info) => BOOT_INFO.call_once(|| info),
        Err(e) => fail("boot information", e),
    };
    let args = match KernelArgs::parse(info.cmdline()) {
        Ok(args) => args,
        Err(e) => fail("kernel command line", e),
    };
    logger::init(args.clone());
    log::info!(
        "hmm-unikernel {} booting by {}, command line '{}'",
        env!("CARGO_PKG_VERSION"),
        info.loader.name(),
        info.cmdline()
    );

    arch::gdt::init();
    arch::trap::init();
    arch::user::init_cpu();
    let cpu = arch::cpu::features();

    if let Err(e) = mm::init(info, cpu.nx) {
        fail("memory", e);
    }
    // The address-space manager over hmm::mm; it registers the user page-fault handler.
    if let Err(e) = mm::uspace::init(info, mm::kernel_root()) {
        fail("starting the address-space manager", e);
    }
    // The Linux-compatible user mode's system calls.
    linux::init();
    log::debug!("memory: {} frames ({} MiB) free", mm::frame::free_frames(), mm::frame::free_frames() / 256);

    // No RSDP (microvm with acpi=off): an empty description, so one CPU, no PCI, no PM timer.
    let mut platform = match acpi::discover(info.rsdp) {
        Err(acpi::PlatformError::NoRsdp) => {
            log::info!("acpi: no ACPI (no RSDP): one CPU, no PCI, no PM timer");
            acpi::Platform::default()
        }
        r => r.unwrap_or_else(|e| fail("ACPI", e)),
    };
    let clocks = time::ClockHardware { pm_timer: platform.pm_timer, hpet: platform.hpet.and_then(|h| h.base) };
    let (tsc_hz, tsc_source) =
        time::calibrate_with(args.tsc_source, clocks).unwrap_or_else(|e| fail("TSC calibration", e));
    log::info!("time: TSC at {} kHz, from {}", tsc_hz / 1000, tsc_source.name());
    if let Some(hz) = args.profile_hz {
        // Before the timer starts: it runs at the profiler's rate from calibration on.
        arch::profile::init(hz, platform.cpus.len().max(1));
    }
    let apic = arch::apic::init(cpu.x2apic).unwrap_or_else(|e| fail("local APIC", e));
    sched::init().unwrap_or_else(|e| fail("scheduler", e));
    if platform.cpus.is_empty() {
        // No MADT: only the boot CPU is known.
        platform.cpus.push(acpi::Cpu { apic_id: arch::apic::id(), uid: 0, enabled: true });
    }
    let smp = arch::smp::start_aps(info, &platform.cpus).unwrap_or_else(|e| fail("SMP", e));
    log::info!("smp: {} of {} CPUs online", smp.online.len(), platform.cpus.iter().filter(|c| c.enabled).count());
    let pci = pci::init(&platform.ecam).unwrap_or_else(|e| fail("PCI", e));
    let virtio_mmio = platform::virtio_mmio::discover(&args.virtio_mmio, &platform.virtio_mmio);
    for p in &virtio_mmio {
        match p.found {
            Ok(ids) => log::info!(
                "virtio-mmio at {:#x} (from {}): device id {}, version {}",
                p.at.base,
                p.from.name(),
                ids.device_id,
                ids.version
            ),
            Err(e) => log::warn!("virtio-mmio at {:#x}: {e}", p.at.base),
        }
    }

    let ready_ns = time::now_ns().unwrap_or(0);
    let system = system::publish(System {
        boot: info,
        args,
        cpu,
        platform,
        tsc_hz,
        tsc_source,
        apic,
        smp,
        pci,
        virtio_mmio,
        ready_ns,
    });
    vram::set_coherent(system.args.coherent_devices);
    if let Err(e) = devices::init(system) {
        fail("devices", e);
    }
    if let Err(e) = vram::follow::start() {
        fail("the follower of the host's device-memory requests", e);
    }
    report::print(system);

    if let Some(crash) = system.args.crash {
        deliberate_crash(crash);
    }
    if cfg!(feature = "ktest") {
        ktest::run(system, KTESTS)
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
        Job::Run => match linux::job(system) {
            Ok(()) => exit(ExitCode::Success),
            Err(e) => fail("run", e),
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
        Crash::PageFault => platform::deliberate_page_fault(),
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

/// Every in-kernel test table, in run order: the registry is assembled here, at the top, so
/// the runner (`ktest`) needs no module whose tests it runs.
const KTESTS: &[&[ktest::Test]] = &[ktest::TESTS, EXPERIMENT_TESTS];

/// The experiment engine's tests (`experiment::ktests`).
const EXPERIMENT_TESTS: &[ktest::Test] = &[
    ktest::Test { name: "experiment::oversubscribed_stream", run: experiment::ktests::oversubscribed_stream },
    ktest::Test { name: "experiment::two_devices_peer_migration", run: experiment::ktests::two_devices_peer_migration },
    ktest::Test { name: "experiment::disagreement_is_caught", run: experiment::ktests::disagreement_is_caught },
    ktest::Test {
        name: "experiment::a_failed_migration_does_not_poison_the_next_point",
        run: experiment::ktests::a_failed_migration_does_not_poison_the_next_point,
    },
    ktest::Test {
        name: "experiment::read_duplication_on_two_devices",
        run: experiment::ktests::read_duplication_on_two_devices,
    },
    ktest::Test {
        name: "experiment::cpu_phases_run_on_their_core",
        run: experiment::ktests::cpu_phases_run_on_their_core,
    },
    ktest::Test {
        name: "experiment::processes_share_the_devices",
        run: experiment::ktests::processes_share_the_devices,
    },
    ktest::Test {
        name: "experiment::a_device_shrunk_mid_point_keeps_every_page",
        run: experiment::ktests::a_device_shrunk_mid_point_keeps_every_page,
    },
    ktest::Test {
        name: "experiment::policy_decisions_are_seen_in_the_device_mmu",
        run: experiment::ktests::policy_decisions_are_seen_in_the_device_mmu,
    },
    ktest::Test {
        name: "experiment::the_policy_chooses_the_cpu_fault_window",
        run: experiment::ktests::the_policy_chooses_the_cpu_fault_window,
    },
    ktest::Test {
        name: "experiment::a_full_device_refuses_past_the_points_capacity",
        run: experiment::ktests::a_full_device_refuses_past_the_points_capacity,
    },
    ktest::Test {
        name: "experiment::devices_and_a_cpu_core_run_at_once",
        run: experiment::ktests::devices_and_a_cpu_core_run_at_once,
    },
];

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
        Some(l) => platform::crash(format_args!("panicked at {}:{}: {}", l.file(), l.line(), info.message())),
        None => platform::crash(format_args!("panicked: {}", info.message())),
    }
}
