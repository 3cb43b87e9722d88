//! The portable heterogeneous-memory-management core (`no_std` + `alloc`, host-tested).
//!
//! This crate will hold the Linux HMM stack expressed as Rust: interval notifiers with the
//! sequence protocol, range fault, device pages, migration, device-exclusive access, the
//! placement policies and the cost model. It is generic over a page-table trait that the kernel
//! implements over real x86_64 page tables and that tests implement with a fake.
//!
//! Status: the foundation (boot, kernel, xtask) has landed; the HMM core is the next issue. For
//! now the crate holds only the typed addresses every layer shares.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod addr;
