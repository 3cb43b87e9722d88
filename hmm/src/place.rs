//! Placement: where pages live across the CPU and the devices, decided by pluggable policies,
//! priced by a cost model, driven by workload generators, and run by one engine that the host
//! tests and `--host` drive over the HMM stack on the host platform ([`engine::host`]) and the
//! kernel drives over the real devices.
//!
//! The pieces, bottom up:
//! - [`cost`]: the cost model. Far-fault latency, the PCIe transfer curve of UVMSmart
//!   (`reference/placement.md` 1.7), access costs per (initiator, memory) pair; or costs the
//!   mechanism measured.
//! - [`params`]: named, typed, range-checked parameters with defaults, shared by policies,
//!   workloads and the experiment format, so the host validates exactly what the guest accepts.
//! - [`state`]: residency of every managed page (which memory holds it, which devices map it
//!   remotely or hold a read copy), per-page access history, device memory use and UVM's root
//!   chunk allocation order.
//! - [`policy`]: the [`policy::Policy`] trait (hooks for CPU faults, device fault batches,
//!   access-counter notifications, eviction pressure and a periodic tick) and [`policies`], the
//!   P0–P8 policies of `reference/placement.md` 5.1, one file each.
//! - [`workload`]: generators of access streams (stream, stencils, graphs, Zipf, ping-pong, …)
//!   parameterised by footprint and oversubscription.
//! - [`sched`]: the heterogeneous workload scheduler, a [`sched::Scheduler`] trait chosen by
//!   name (static, round-robin, eft, heft, dmda) over phase graphs, processors and a cost view.
//! - [`engine`]: runs workloads' phases on processors (placed by the chosen scheduler), services
//!   faults in UVM-style batches through the policy, evicts under pressure, and accounts
//!   simulated time beside the mechanism's measured wall time.
//! - [`spec`]: one experiment point as compact text (the xtask writes it, the guest reads it).
//!
//! Pages are numbered from 0 over all managed memory; 512 consecutive pages form a 2 MiB VA
//! block, aligned, as UVM's `uvm_va_block` (the mechanism maps page `p` at a 2 MiB-aligned base
//! plus `p * 4096`).

pub mod cost;
pub mod engine;
pub mod params;
pub mod policies;
pub mod policy;
pub mod sched;
pub mod spec;
pub mod state;
pub mod workload;

/// Bytes in a page.
pub const PAGE: u64 = 4096;
/// Pages in a 2 MiB VA block (UVM's `UVM_VA_BLOCK_SIZE`, the tree prefetcher's extent).
pub const BLOCK: u32 = 512;
/// Pages in a 64 KiB big page (UVM's `UVM_BIG_PAGE_SIZE`).
pub const BIG: u32 = 16;
/// Devices a run can use (bit masks of devices are `u8`).
pub const MAX_DEVICES: usize = 8;

/// A memory, or the processor whose local memory it is: the CPU (system RAM) or a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Loc {
    /// System memory / the CPU.
    Cpu,
    /// Device `n`'s memory / its compute engine.
    Dev(u8),
}

impl Loc {
    /// The device index, if a device.
    pub fn dev(self) -> Option<usize> {
        match self {
            Loc::Cpu => None,
            Loc::Dev(d) => Some(d as usize),
        }
    }
}

impl core::fmt::Display for Loc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Loc::Cpu => write!(f, "cpu"),
            Loc::Dev(d) => write!(f, "dev{d}"),
        }
    }
}

/// A small deterministic generator (SplitMix64): workloads and randomised policies must give the
/// same run for the same seed on the host and in the guest.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
