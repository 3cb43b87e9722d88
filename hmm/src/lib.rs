//! The portable heterogeneous-memory-management core (`no_std` + `alloc`, host-tested).
//!
//! This crate will hold the Linux HMM stack expressed as Rust: interval notifiers with the
//! sequence protocol, range fault, device pages, migration, device-exclusive access, the
//! placement policies and the cost model. It is generic over a page-table trait that the kernel
//! implements over real x86_64 page tables and that tests implement with a fake.
//!
//! Status: [`mm`] holds the address spaces the HMM stack mirrors (page tables, VMAs, faults,
//! copy-on-write, huge pages, files, the invalidation path); the HMM layers themselves are the
//! next issue.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod addr;
pub mod dmirror;
pub mod itree;
pub mod mm;
pub mod notifier;
pub mod pagemap;
pub mod range;
pub mod selftests;
