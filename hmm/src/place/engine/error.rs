//! The mechanism's failures: what failed, on which page and device ([`MechError`] and the
//! parts it names). Rendered for results and reports; a device's own error arrives as text,
//! since this crate does not know the kernel's error types.

use super::super::Loc;
use alloc::string::String;

/// A failure of the mechanism: what failed, on which page and device. The kernel's device
/// errors are not known here (this crate is portable), so a device's own error reaches a
/// [`MechError::Device`] or [`MirrorFault::Fault`] as its rendered text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MechError {
    /// A device operation failed.
    Device {
        /// What was being done.
        op: DeviceOp,
        /// The device's error, as the kernel renders it.
        cause: String,
    },
    /// A migration moved fewer pages than asked.
    Short {
        /// First page.
        first: u32,
        /// Pages asked.
        pages: u32,
        /// From.
        from: Loc,
        /// To.
        to: Loc,
        /// Pages moved.
        moved: u64,
        /// Why the rest did not.
        why: ShortWhy,
    },
    /// The engine and the page tables disagree on where a page is.
    Misplaced {
        /// The page.
        page: u32,
        /// What the engine was doing.
        op: PageOp,
        /// Where the engine has it.
        expected: Loc,
        /// Where the page tables have it.
        found: Loc,
    },
    /// A page's data (or a read copy's) is not what the run wrote.
    Data {
        /// The page.
        page: u32,
        /// Whose data: the page's own (`None`) or device `d`'s read copy (`Some(d)`).
        copy: Option<u8>,
        /// What is wrong.
        fault: DataFault,
    },
    /// A read copy that is not what the engine says: missing, already there, stale, written.
    Copy {
        /// The page.
        page: u32,
        /// The device.
        dev: u8,
        /// What is wrong.
        fault: CopyFault,
    },
    /// A page moved or was written while devices held read copies of it.
    CopiesOutstanding {
        /// The page.
        page: u32,
        /// The writer (`None`: a migration).
        writer: Option<Loc>,
    },
    /// A device MMU's view of a page is wrong.
    Mirror {
        /// The device.
        dev: u8,
        /// The page.
        page: u32,
        /// What is wrong.
        fault: MirrorFault,
    },
    /// A CPU access faulted.
    CpuFault {
        /// The page.
        page: u32,
        /// The CPU that made it.
        cpu: usize,
        /// The faulting address.
        address: u64,
        /// Why it could not be resolved.
        error: crate::mm::space::FaultError,
    },
    /// A CPU worker did not make its access in time.
    WorkerTimeout {
        /// The CPU.
        cpu: usize,
        /// The page.
        page: u32,
        /// The bound, ms.
        ms: u64,
    },
    /// A page's entry is not one the mechanism can place.
    Entry {
        /// The page.
        page: u32,
        /// Its entry (`None`: nothing mapped).
        pte: Option<crate::mm::pte::Pte>,
    },
    /// A device frame (`pfn`) or read-copy page (`copy`) has no physical address.
    NoAddress {
        /// The device.
        dev: u8,
        /// The frame number, or the read copy's page in device memory.
        at: NoAddressOf,
    },
    /// Setting up (or tearing down) the mechanism's memory and helpers failed.
    Setup(SetupStep),
    /// A page outside the run's pages.
    PageOutOfRange(u32),
    /// A device the mechanism does not have.
    NoDevice(u8),
    /// A phase the engine does not have (an engine bug).
    NoPhase(usize),
}

/// What device operation failed (see [`MechError::Device`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOp {
    /// Migrating `[first, first + pages)` from `from` to `to`.
    Migrate {
        /// First page.
        first: u32,
        /// Pages.
        pages: u32,
        /// From.
        from: Loc,
        /// To.
        to: Loc,
    },
    /// Making device `dev`'s read copies of `[first, first + pages)`.
    ReadCopies {
        /// First page.
        first: u32,
        /// Pages.
        pages: u32,
        /// The device.
        dev: u8,
    },
}

/// What the engine was doing when it found a page elsewhere (see [`MechError::Misplaced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOp {
    /// Migrating it.
    Migrate,
    /// Copying it to a device.
    Copy,
    /// An access by this processor.
    Access(Loc),
}

/// What is wrong with data (see [`MechError::Data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFault {
    /// It is another page's data.
    OtherPage(u64),
    /// It has a different number of writes than were made.
    Writes {
        /// Writes its data counts.
        found: u64,
        /// Writes made.
        made: u32,
    },
}

/// What is wrong with a read copy (see [`MechError::Copy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFault {
    /// The device holds no copy (to drop).
    Missing,
    /// The device already holds the page (a copy, or the page itself).
    AlreadyHeld,
    /// The copy is older than the page.
    Stale,
    /// The device wrote its read copy.
    Written,
}

/// What is wrong with a device MMU's mirror (see [`MechError::Mirror`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorFault {
    /// The device fault failed (the device's error, as the kernel renders it).
    Fault(String),
    /// A device fault left the page unmapped.
    Unmapped,
    /// The mirror maps the page at `at`, the CPU page table at `cpu`: a missed invalidation.
    Stale {
        /// Physical address in the mirror.
        at: u64,
        /// Physical address in the CPU page table.
        cpu: u64,
    },
}

/// Which address is missing (see [`MechError::NoAddress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAddressOf {
    /// A device frame.
    Frame(crate::addr::Pfn),
    /// A read copy's page in device memory.
    Copy(u64),
}

/// What part of a mechanism's setup failed (see [`MechError::Setup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupStep {
    /// Creating the address space.
    AddressSpace(crate::mm::Error),
    /// Mapping its memory.
    Mmap {
        /// Bytes.
        len: u64,
        /// Why.
        error: crate::mm::Error,
    },
    /// Advising on it.
    Madvise(crate::mm::Error),
    /// Filling page `page` from the CPU.
    Fill {
        /// The page.
        page: u64,
        /// Why.
        error: crate::mm::space::FaultError,
    },
    /// Device `dev`'s MMU mirrors another address space.
    MmuBusy(usize),
    /// Starting a CPU worker (the scheduler's error, rendered).
    Worker {
        /// The CPU.
        cpu: usize,
        /// Why.
        cause: String,
    },
    /// No CPU worker on `cpu` (started but gone).
    NoWorker(usize),
}

/// Why a migration moved fewer pages than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortWhy {
    /// A copy of some of them failed (the copy engine's error is in the guest's log); their
    /// sources stayed.
    CopyFailed,
    /// The destination had no room for them.
    NoRoom,
    /// They stayed where they were (not migratable at that moment, or a move to system
    /// memory that must move all).
    Stayed,
}

impl core::fmt::Display for ShortWhy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::CopyFailed => "a copy failed; the guest's log names the copy engine's error",
            Self::NoRoom => "the destination had no room",
            Self::Stayed => "the rest stayed where they were",
        })
    }
}

impl core::fmt::Display for MechError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Device { op, cause } => write!(f, "{op}: {cause}"),
            Self::Short { first, pages, from, to, moved, why } => {
                write!(f, "migrating pages {first}..{} {from}->{to}: {moved} of {pages} moved ({why})", first + pages)
            }
            Self::Misplaced { page, op, expected, found } => match op {
                PageOp::Migrate => {
                    write!(f, "page {page} is to move from {expected}, but the page tables have it in {found}")
                }
                PageOp::Copy => {
                    write!(f, "read copy of page {page} from {expected}, but the page tables have it in {found}")
                }
                PageOp::Access(by) => write!(
                    f,
                    "{by} reaches page {page} in {expected} per the engine, but the page tables have it in {found}"
                ),
            },
            Self::Data { page, copy, fault } => {
                match copy {
                    Some(d) => write!(f, "dev{d}'s read copy of page {page}")?,
                    None => write!(f, "page {page}")?,
                }
                match fault {
                    DataFault::OtherPage(other) => write!(f, " holds page {other}'s data"),
                    DataFault::Writes { found, made } => write!(f, ": {found} writes found, {made} made"),
                }
            }
            Self::Copy { page, dev, fault } => match fault {
                CopyFault::Missing => write!(f, "dev{dev} holds no read copy of page {page}"),
                CopyFault::AlreadyHeld => write!(f, "dev{dev} already holds page {page}"),
                CopyFault::Stale => write!(f, "dev{dev}'s read copy of page {page} is stale"),
                CopyFault::Written => write!(f, "dev{dev} wrote its read copy of page {page}"),
            },
            Self::CopiesOutstanding { page, writer: None } => {
                write!(f, "page {page} moved with read copies outstanding")
            }
            Self::CopiesOutstanding { page, writer: Some(by) } => {
                write!(f, "{by} wrote page {page} with read copies outstanding")
            }
            Self::Mirror { dev, page, fault } => match fault {
                MirrorFault::Fault(cause) => write!(f, "dev{dev}'s MMU fault on page {page}: {cause}"),
                MirrorFault::Unmapped => write!(f, "dev{dev}'s MMU fault on page {page} left it unmapped"),
                MirrorFault::Stale { at, cpu } => write!(
                    f,
                    "dev{dev}'s MMU maps page {page} at {at:#x}, the CPU page table at {cpu:#x}: the mirror is stale"
                ),
            },
            Self::CpuFault { page, cpu, address, error } => {
                write!(f, "CPU {cpu}'s access to page {page}: {error} at {address:#x}")
            }
            Self::WorkerTimeout { cpu, page, ms } => {
                write!(f, "the CPU worker on CPU {cpu} did not make its access to page {page} within {ms} ms")
            }
            Self::Entry { page, pte: Some(pte) } => write!(f, "page {page}: unexpected entry {pte:?}"),
            Self::Entry { page, pte: None } => write!(f, "page {page} is not mapped"),
            Self::NoAddress { dev, at: NoAddressOf::Frame(pfn) } => write!(f, "dev{dev} page {pfn:?} has no address"),
            Self::NoAddress { dev, at: NoAddressOf::Copy(k) } => write!(f, "dev{dev} copy page {k} has no address"),
            Self::Setup(s) => write!(f, "{s}"),
            Self::PageOutOfRange(p) => write!(f, "page {p} out of range"),
            Self::NoDevice(d) => write!(f, "no device {d}"),
            Self::NoPhase(r) => write!(f, "no such phase ({r})"),
        }
    }
}

impl core::fmt::Display for DeviceOp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Migrate { first, pages, from, to } => {
                write!(f, "migrating pages {first}..{} {from}->{to}", first + pages)
            }
            Self::ReadCopies { first, pages, dev } => {
                write!(f, "dev{dev}'s read copies of pages {first}..{}", first + pages)
            }
        }
    }
}

impl core::fmt::Display for SetupStep {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::AddressSpace(e) => write!(f, "creating the address space: {e}"),
            Self::Mmap { len, error } => write!(f, "mmap of {len} bytes: {error}"),
            Self::Madvise(e) => write!(f, "madvise: {e}"),
            Self::Fill { page, error } => write!(f, "CPU fill of page {page}: {error}"),
            Self::MmuBusy(n) => write!(f, "dev{n}'s MMU mirrors another address space; unbind it first"),
            Self::Worker { cpu, cause } => write!(f, "starting the worker on CPU {cpu}: {cause}"),
            Self::NoWorker(cpu) => write!(f, "no worker on CPU {cpu}"),
        }
    }
}
