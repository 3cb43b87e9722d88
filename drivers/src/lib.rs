//! Device logic that needs no hardware to test: ACPI table parsing and PCI enumeration with
//! BAR assignment, generic over virtio-drivers' configuration-access trait.
//!
//! This crate never touches hardware directly and never prints except through `log`; the kernel
//! provides physical-memory readers and configuration-space access, and host tests provide
//! fakes. `virtq` is a split virtqueue over raw device addresses (what the copy engine and the
//! virtio-iommu need), `viommu` the virtio-iommu protocol and the shadow of a domain,
//! `virtio_mem` the virtio-mem protocol, `tsc` the arithmetic of TSC calibration, `cpuid` what
//! the CPU's vendor and family say about starting application processors.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod cpuid;
pub mod pci;
pub mod tsc;
pub mod viommu;
pub mod virtio_mem;
pub mod virtq;
