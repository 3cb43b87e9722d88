//! Memory above the platform layer: user address spaces over `hmm::mm` ([`uspace`]).
//!
//! Frames, the kernel page tables, the heap and physical-memory handles belong to the
//! platform layer (`crate::platform::mm`); they are re-exported here so `crate::mm::frame`,
//! `crate::mm::paging` and the rest keep resolving. The transitional raw accessors among them
//! (`read_phys`, `write_phys`, `copy_phys`) are used only by the device files until they move
//! to handles.

pub mod uspace;

pub use crate::platform::mm::*;
