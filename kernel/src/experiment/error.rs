//! Why a point failed ([`PointError`], of a [`FailKind`]), why the CPU line costs could not
//! come from the HMAT ([`HmatError`]), and why the experiment could not run ([`RunError`]).

use alloc::string::String;
use hmm::place::engine::MechError;
use hmm::place::spec;

/// Why a point failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The mechanism: a migration, a DMA, the device MMU, a CPU worker, setting the point up,
    /// or device memory not back to its empty state. It may have left the guest unable to
    /// run more points.
    Mechanism,
    /// The point itself: its data or placement checks, its spec, or the engine.
    Check,
}

impl FailKind {
    /// The name in the `@@POINT` error object (`"kind"`).
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Mechanism => "mechanism",
            FailKind::Check => "check",
        }
    }
}

/// A point that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointError {
    /// Which part failed.
    pub kind: FailKind,
    /// What went wrong, naming the point.
    pub msg: String,
}

impl core::fmt::Display for PointError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({} error)", self.msg, self.kind.name())
    }
}

/// Why the CPU line costs could not be taken from the HMAT (`cost.lines = "hmat"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HmatError {
    /// The system is not up.
    NoSystem,
    /// The machine has no such ACPI table ("SRAT", "HMAT").
    NoTable(&'static str),
    /// A CPU the SRAT gives no domain.
    NoAffinity {
        /// The CPU.
        cpu: usize,
        /// Its APIC id.
        apic: u32,
    },
    /// The point's pages could not be located.
    Locate(MechError),
    /// The point's pages lie in no SRAT memory range.
    NoMemoryDomain,
    /// The cost model refused the HMAT's values.
    Cost(String),
}

impl core::fmt::Display for HmatError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSystem => write!(f, "the system is not up"),
            Self::NoTable(what) => write!(
                f,
                "cost.lines = \"hmat\", but the machine has no {what}: give its file [[numa.node]]s and [[numa.hmat]] entries (qemu/numa-devices.toml does)"
            ),
            Self::NoAffinity { cpu, apic } => write!(f, "CPU {cpu} (APIC id {apic}) has no SRAT affinity"),
            Self::Locate(e) => write!(f, "locating the point's pages: {e}"),
            Self::NoMemoryDomain => write!(f, "the point's pages lie in no SRAT memory range"),
            Self::Cost(e) => write!(f, "{e}"),
        }
    }
}

/// Why the experiment could not run at all (a point's own failure is its result instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// No boot module holds the experiment image.
    NoImage,
    /// The image is not UTF-8.
    NotUtf8(core::str::Utf8Error),
    /// A point does not decode.
    Spec(spec::SpecError),
    /// Device memory could not be registered.
    Memory(hmm::mm::Error),
}

impl core::fmt::Display for RunError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoImage => write!(f, "job=experiment needs the experiment image as a boot module (-initrd)"),
            Self::NotUtf8(e) => write!(f, "the experiment image is not UTF-8: {e}"),
            Self::Spec(e) => write!(f, "{e}"),
            Self::Memory(e) => write!(f, "device memory: {e}"),
        }
    }
}
