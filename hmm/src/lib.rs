//! The portable heterogeneous-memory-management core (`no_std` + `alloc`, host-tested).
//!
//! This crate holds the Linux HMM stack expressed as Rust: interval notifiers with the
//! sequence protocol, range fault, device pages, migration, device-exclusive access, the
//! placement policies and the cost model. It is generic over a page-table trait that the kernel
//! implements over real x86_64 page tables and that tests implement with a fake.
//!
//! Layers, bottom up:
//! - [`mm`]: the address spaces the HMM stack mirrors (page tables, VMAs, faults, copy-on-write,
//!   huge pages, files, the invalidation path), plus the page-table side of device migration
//!   ([`mm::migrate`]) and device-exclusive access ([`mm::exclusive`]), and the buddy frame
//!   allocator the kernel runs ([`mm::buddy`]);
//! - [`itree`], [`notifier`]: MMU interval notifiers and the sequence protocol;
//! - [`range`]: `hmm_range_fault`, generic over the output encoding;
//! - [`pagemap`]: ZONE_DEVICE pagemaps (device-private and coherent memory);
//! - [`devpt`]: a software device page table (what a mirroring driver keeps coherent);
//! - [`dmirror`]: Linux's test device, and [`selftests`]: the hmm-tests acceptance suite over it;
//! - [`stress`]: a seeded randomized interleaving of the whole stack against a shadow model of
//!   every page (single-threaded and deterministic, or threaded);
//! - [`place`]: placement policies (P0–P8), the cost model, workload generators and the engine
//!   that runs experiments over a model or the real devices;
//! - [`abi`]: the Linux x86-64 user ABI's facts the kernel's user mode matches (static ELF
//!   loading, the initial stack, system call numbers, errno).
//!
//! Lock order: an address space's lock (the mmap lock), then the notifier state, then a driver's
//! user lock (taken in its invalidate callback); a driver never holds its user lock while it
//! locks or changes an address space.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod addr;
pub mod compute;
pub mod devalloc;
pub mod devmmu;
pub mod devpt;
pub mod dmirror;
pub mod itree;
pub mod legacy;
pub mod mm;
pub mod notifier;
pub mod pagemap;
pub mod place;
pub mod range;
pub mod selftests;
pub mod stress;
#[cfg(test)]
pub(crate) mod testing;
