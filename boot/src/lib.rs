//! Boot: how the unikernel is entered, and what it is told when it is.
//!
//! The kernel is booted by the PVH protocol (the one QEMU, cloud-hypervisor, Firecracker and
//! rust-hypervisor-firmware speak): the hypervisor loads our ELF at its physical addresses,
//! finds the `XEN_ELFNOTE_PHYS32_ENTRY` note and jumps to that address in 32-bit protected
//! mode, paging off, with `%ebx` pointing at an `hvm_start_info` structure.
//!
//! This crate owns:
//! - [`layout`]: the virtual-memory layout constants shared by the entry code and the kernel;
//! - [`pvh`]: a pure, host-tested parser from `hvm_start_info` (read through the
//!   [`pvh::PhysRead`] trait) to a typed [`pvh::BootInfo`] whose memory map is sorted, with
//!   overlaps resolved and neighbours merged;
//! - [`multiboot2`]: a pure, host-tested parser from GRUB's Multiboot2 information to the
//!   same [`pvh::BootInfo`], so the image also boots through GRUB on BIOS and UEFI machines;
//! - [`cmdline`]: a pure, host-tested parser of the kernel command line into typed
//!   [`cmdline::KernelArgs`];
//! - `entry` (only when built for `x86_64-unknown-none`): the ELF note, the 32-bit entry, the
//!   early page tables, GDT and boot stack that take the CPU to 64-bit mode in the higher half
//!   and call the kernel's `kernel_entry(info_paddr, loader, magic)`;
//! - [`protocol`]: the guest/host protocol the kernel answers in and the xtask decodes (the
//!   `@@` lines, the in-kernel test runner's lines, exit codes), with its JSON writer
//!   ([`protocol::json`]);
//! - `linker.ld`: the kernel's linker script (the kernel's `build.rs` passes it to the linker).
//!
//! Nothing here allocates: the parsers run before the kernel has a heap, and the protocol's
//! writers append to a sink the caller gives.

#![cfg_attr(not(test), no_std)]

pub mod cmdline;
#[cfg(target_os = "none")]
pub mod entry;
pub mod fixed;
pub mod layout;
pub mod multiboot2;
pub mod protocol;
pub mod pvh;
