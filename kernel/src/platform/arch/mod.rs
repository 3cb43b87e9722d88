//! x86_64 specifics: serial port, CPU features, descriptor tables, traps, the local APIC,
//! SMP bring-up and TLB shootdown, timekeeping and QEMU's exit device. Nearly all of the kernel's `unsafe` lives here and in
//! `mm::paging`, each block justified where it stands.

pub mod apic;
pub mod cpu;
pub mod exit;
pub mod gdt;
pub mod serial;
pub mod smp;
pub mod time;
pub mod trap;
