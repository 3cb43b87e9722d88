//! Device logic that needs no hardware to test: ACPI table parsing and PCI enumeration with
//! BAR assignment, generic over virtio-drivers' configuration-access trait.
//!
//! This crate never touches hardware directly and never prints except through `log`; the kernel
//! provides physical-memory readers and configuration-space access, and host tests provide
//! fakes. It is where the virtio-iommu, virtio-mem, ivshmem and copy-engine drivers will live,
//! generic over virtio-drivers' `Hal` and `Transport`.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod pci;
