//! The kernel's virtual-memory layout.
//!
//! Invariants:
//! - The kernel image is loaded at physical [`KERNEL_PHYS_BASE`] and linked at
//!   `KERNEL_VMA_OFFSET + physical` (the top 2 GiB, `-mcmodel=kernel` style).
//! - All physical memory is reachable at `DIRECT_MAP_BASE + physical` once the kernel's own
//!   page tables are installed (RAM write-back, MMIO mapped on demand as uncached).
//! - The lower half (PML4 entries 0..256) belongs to address spaces; the kernel never maps
//!   anything there after boot.

/// Physical address where the kernel image starts (the linker script agrees).
pub const KERNEL_PHYS_BASE: u64 = 0x10_0000;
/// Offset between the kernel image's virtual and physical addresses.
pub const KERNEL_VMA_OFFSET: u64 = 0xFFFF_FFFF_8000_0000;
/// Base of the direct map of all physical memory.
pub const DIRECT_MAP_BASE: u64 = 0xFFFF_8000_0000_0000;
/// Largest physical address the direct map covers (1 TiB, 40 physical address bits).
pub const DIRECT_MAP_MAX_PHYS: u64 = 1 << 40;
/// Base of the kernel stacks (tasks and application processors), each above an unmapped guard
/// page; a PML4 slot of its own in the kernel half, away from the direct map, the image and
/// the scratch window the default job and the tests map at `0xFFFF_C000_0000_0000`.
pub const STACKS_BASE: u64 = 0xFFFF_D000_0000_0000;
/// The first kernel-half PML4 slot; slots below it belong to address spaces.
pub const KERNEL_PML4_FIRST: usize = 256;
/// Size of the boot stack the entry code sets up (above a 4 KiB guard page that the kernel
/// leaves unmapped, so an overflow is a double fault, not silent corruption).
pub const BOOT_STACK_SIZE: usize = 256 * 1024;
/// Size of the guard page below the boot stack.
pub const BOOT_STACK_GUARD: usize = 4096;
/// The early page tables identity-map and higher-half-map this much physical memory.
pub const EARLY_MAP_SIZE: u64 = 1 << 30;
