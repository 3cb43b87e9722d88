//! What the kernel found while booting ([`System`]), published once at *ready* and read by the
//! report, the jobs, the devices and the tests.
//!
//! Owns: the one `System` value (set by `main` through [`publish`], never changed after).

use crate::platform::{acpi, arch, pci};
use boot::{cmdline::KernelArgs, pvh::BootInfo};
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
    /// Where the TSC frequency came from.
    pub tsc_source: arch::time::TscSource,
    /// APIC mode and timer frequency.
    pub apic: (arch::apic::Mode, u64),
    /// The CPUs brought up (and any that did not come up).
    pub smp: arch::smp::Started,
    /// PCI bus.
    pub pci: pci::Bus,
    /// virtio-mmio transports the command line names, probed.
    pub virtio_mmio: alloc::vec::Vec<crate::platform::virtio_mmio::Probed>,
    /// Nanoseconds from kernel entry to ready.
    pub ready_ns: u64,
}

static SYSTEM: Once<System> = Once::new();

/// The system description, once ready.
pub fn system() -> Option<&'static System> {
    SYSTEM.get()
}

/// Publishes the system description (once, at ready); returns the published value.
pub fn publish(s: System) -> &'static System {
    SYSTEM.call_once(|| s)
}
