//! x86_64 specifics: serial port, CPU features, descriptor tables, traps (with the probes,
//! the user-copy routine and the page-fault hook), the local APIC (with the timer-tick hooks),
//! SMP bring-up and TLB shootdown, timekeeping, the sampling profiler and QEMU's exit device. Part of the platform
//! layer: its `unsafe` blocks are justified where they stand.

pub mod apic;
pub mod cpu;
pub mod exit;
pub mod gdt;
pub mod profile;
pub mod serial;
pub mod smp;
pub mod time;
pub mod trap;
pub mod user;
