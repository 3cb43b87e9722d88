//! Memory above the platform layer: user address spaces over `hmm::mm` ([`uspace`]).
//!
//! Frames, the kernel page tables, the heap and physical-memory handles belong to the
//! platform layer (`crate::platform::mm`); they are re-exported here so `crate::mm::frame`,
//! `crate::mm::paging` and the rest keep resolving. Physical memory is reached only through
//! handles (`FrameRange`, `PhysWindow`) and the checked accessors of `ram`; the raw
//! direct-map accessors are private to the platform layer.

pub mod uspace;

pub use crate::platform::mm::*;
