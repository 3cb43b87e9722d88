//! x86_64 specifics: serial port, CPU features, descriptor tables, traps, the local APIC,
//! timekeeping and QEMU's exit device. Nearly all of the kernel's `unsafe` lives here and in
//! `mm::paging`, each block justified where it stands.

pub mod apic;
pub mod cpu;
pub mod exit;
pub mod gdt;
pub mod serial;
pub mod time;
pub mod trap;
