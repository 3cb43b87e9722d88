//! A pure parser from PVH's `hvm_start_info` to a typed [`BootInfo`].
//!
//! The structures are those of Xen's `public/arch-x86/hvm/start_info.h`, which QEMU,
//! cloud-hypervisor and Firecracker fill in. Physical memory is read through [`PhysRead`], so the
//! parser runs unchanged on the host (over a byte buffer) and in the kernel (over the early
//! identity map).
//!
//! Invariants of a parsed [`BootInfo`]:
//! - `memory_map` is sorted by address, its regions do not overlap, no two neighbours that touch
//!   have the same kind, and no region is empty. Where the firmware's entries overlap, the more
//!   restrictive kind wins (reserved over ACPI over RAM), as Linux's `e820__update_table` does,
//!   so memory reported both as RAM and reserved is never handed out.
//! - `cmdline` is valid UTF-8 of at most [`MAX_CMDLINE`] bytes.
//! - Every module lies entirely within the 64-bit physical address space.

use crate::fixed::FixedVec;

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Most memory-map entries accepted from the firmware (QEMU gives about 10).
pub const MAX_MEMMAP_ENTRIES: usize = 128;
/// Most modules accepted.
pub const MAX_MODULES: usize = 8;
/// Longest command line accepted, in bytes (without the NUL).
pub const MAX_CMDLINE: usize = 4096;

/// Reads guest-physical memory. The kernel implements it over its identity map; tests over a
/// byte buffer.
pub trait PhysRead {
    /// Fills `buf` from physical address `paddr`, or fails if any byte is not readable.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError>;
}

/// Why `hvm_start_info` could not be parsed. Each variant names the field at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// The start-info pointer was null.
    NullStartInfo,
    /// `magic` was not [`START_INFO_MAGIC`]: not booted by PVH, or `%ebx` was clobbered.
    BadMagic(u32),
    /// Version 0 has no memory map, and no other source of one is supported.
    NoMemoryMap {
        /// The start-info version the loader wrote.
        version: u32,
    },
    /// A structure lies (partly) outside readable memory.
    Unreadable {
        /// Physical address of the structure.
        paddr: u64,
        /// Its length in bytes.
        len: usize,
    },
    /// More memory-map entries than [`MAX_MEMMAP_ENTRIES`].
    TooManyMemmapEntries(u32),
    /// A memory-map entry whose end overflows the address space.
    MemmapOverflow {
        /// The entry's index in the map.
        index: usize,
        /// Its start address.
        addr: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// More modules than [`MAX_MODULES`].
    TooManyModules(u32),
    /// A module whose end overflows the address space.
    ModuleOverflow {
        /// The module's index.
        index: usize,
        /// Its physical address.
        paddr: u64,
        /// Its size in bytes.
        size: u64,
    },
    /// The command line has no NUL within [`MAX_CMDLINE`] bytes.
    CmdlineTooLong,
    /// The command line is not UTF-8.
    CmdlineNotUtf8,
    /// The memory map holds no usable RAM at all.
    NoUsableRam,
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::NullStartInfo => write!(f, "hvm_start_info pointer is null: boot this kernel by PVH"),
            Self::BadMagic(m) => {
                write!(f, "hvm_start_info magic is {m:#x}, expected {START_INFO_MAGIC:#x}: boot this kernel by PVH")
            }
            Self::NoMemoryMap { version } => write!(
                f,
                "hvm_start_info version {version} carries no memory map: use a hypervisor that gives version >= 1"
            ),
            Self::Unreadable { paddr, len } => {
                write!(f, "hvm_start_info data at {paddr:#x} (+{len}) is not readable")
            }
            Self::TooManyMemmapEntries(n) => {
                write!(f, "memory map has {n} entries, at most {MAX_MEMMAP_ENTRIES} are supported")
            }
            Self::MemmapOverflow { index, addr, size } => {
                write!(f, "memory map entry {index} ({addr:#x}, size {size:#x}) overflows the address space")
            }
            Self::TooManyModules(n) => {
                write!(f, "{n} boot modules given, at most {MAX_MODULES} are supported")
            }
            Self::ModuleOverflow { index, paddr, size } => {
                write!(f, "boot module {index} ({paddr:#x}, size {size:#x}) overflows the address space")
            }
            Self::CmdlineTooLong => write!(f, "kernel command line is longer than {MAX_CMDLINE} bytes"),
            Self::CmdlineNotUtf8 => write!(f, "kernel command line is not valid UTF-8"),
            Self::NoUsableRam => write!(f, "the memory map has no usable RAM"),
        }
    }
}

/// The kind of a memory-map region (E820 types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum MemoryKind {
    /// Usable RAM (type 1).
    #[default]
    Ram,
    /// ACPI tables, reclaimable once parsed (type 3).
    AcpiReclaimable,
    /// Persistent memory (type 7).
    Persistent,
    /// ACPI non-volatile storage (type 4).
    AcpiNvs,
    /// Reserved (type 2) or any type we do not know.
    Reserved,
    /// Defective memory (type 5).
    Unusable,
}

impl MemoryKind {
    /// Maps an E820 type to a kind; unknown types are reserved (never used as RAM).
    pub fn from_e820(ty: u32) -> Self {
        match ty {
            1 => Self::Ram,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Unusable,
            7 => Self::Persistent,
            _ => Self::Reserved,
        }
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ram => "ram",
            Self::AcpiReclaimable => "acpi",
            Self::Persistent => "pmem",
            Self::AcpiNvs => "acpi-nvs",
            Self::Reserved => "reserved",
            Self::Unusable => "unusable",
        }
    }

    /// Precedence when firmware entries overlap: the larger wins.
    fn precedence(self) -> u8 {
        match self {
            Self::Ram => 0,
            Self::AcpiReclaimable => 1,
            Self::Persistent => 2,
            Self::AcpiNvs => 3,
            Self::Reserved => 4,
            Self::Unusable => 5,
        }
    }
}

/// A half-open physical range `[start, end)` of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What the firmware says it is.
    pub kind: MemoryKind,
}

impl MemoryRegion {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// A boot module (QEMU's `-initrd` gives one): the experiment image, for example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Module {
    /// Physical address of the first byte.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The sorted, overlap-free memory map.
pub type MemoryMap = FixedVec<MemoryRegion, MAX_MEMMAP_ENTRIES>;

/// Which boot protocol entered the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loader {
    /// PVH: `hvm_start_info` (QEMU, cloud-hypervisor, Firecracker).
    Pvh,
    /// Multiboot2: GRUB's information structure ([`crate::multiboot2`]), on BIOS or UEFI.
    Multiboot2,
}

impl Loader {
    /// The name the boot report prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pvh => "pvh",
            Self::Multiboot2 => "multiboot2",
        }
    }
}

/// Everything the kernel learns from the hypervisor (or the boot loader) at entry.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// The protocol that gave it.
    pub loader: Loader,
    /// `hvm_start_info.version` (0 under Multiboot2).
    pub version: u32,
    /// `hvm_start_info.flags` (0 under Multiboot2).
    pub flags: u32,
    /// The kernel command line (`-append`).
    pub cmdline: FixedVec<u8, MAX_CMDLINE>,
    /// Physical address of the ACPI RSDP, if given.
    pub rsdp: Option<u64>,
    /// The normalised memory map.
    pub memory_map: MemoryMap,
    /// Boot modules.
    pub modules: FixedVec<Module, MAX_MODULES>,
}

impl BootInfo {
    /// The command line as text (validated UTF-8 at parse time).
    pub fn cmdline(&self) -> &str {
        core::str::from_utf8(&self.cmdline).unwrap_or("")
    }

    /// Usable RAM regions, shrunk inward to whole `align`-byte pages.
    pub fn usable_ram(&self, align: u64) -> impl Iterator<Item = MemoryRegion> + '_ {
        self.memory_map.iter().filter(|r| r.kind == MemoryKind::Ram).filter_map(move |r| {
            let start = r.start.checked_next_multiple_of(align)?;
            let end = r.end - r.end % align;
            (start < end).then_some(MemoryRegion { start, end, kind: MemoryKind::Ram })
        })
    }

    /// Total usable RAM in bytes (4 KiB pages).
    pub fn total_ram(&self) -> u64 {
        self.usable_ram(4096).map(|r| r.len()).sum()
    }
}

fn read_u32(mem: &impl PhysRead, paddr: u64) -> Result<u32, BootError> {
    let mut b = [0u8; 4];
    mem.read(paddr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(mem: &impl PhysRead, paddr: u64) -> Result<u64, BootError> {
    let mut b = [0u8; 8];
    mem.read(paddr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn field(base: u64, offset: u64) -> Result<u64, BootError> {
    base.checked_add(offset).ok_or(BootError::Unreadable { paddr: base, len: offset as usize })
}

/// Parses the `hvm_start_info` at `paddr`.
pub fn parse(mem: &impl PhysRead, paddr: u64) -> Result<BootInfo, BootError> {
    if paddr == 0 {
        return Err(BootError::NullStartInfo);
    }
    let magic = read_u32(mem, paddr)?;
    if magic != START_INFO_MAGIC {
        return Err(BootError::BadMagic(magic));
    }
    let version = read_u32(mem, field(paddr, 4)?)?;
    let flags = read_u32(mem, field(paddr, 8)?)?;
    let nr_modules = read_u32(mem, field(paddr, 12)?)?;
    let modlist_paddr = read_u64(mem, field(paddr, 16)?)?;
    let cmdline_paddr = read_u64(mem, field(paddr, 24)?)?;
    let rsdp_paddr = read_u64(mem, field(paddr, 32)?)?;
    if version < 1 {
        return Err(BootError::NoMemoryMap { version });
    }
    let memmap_paddr = read_u64(mem, field(paddr, 40)?)?;
    let memmap_entries = read_u32(mem, field(paddr, 48)?)?;

    let cmdline = read_cmdline(mem, cmdline_paddr)?;
    let memory_map = read_memmap(mem, memmap_paddr, memmap_entries)?;
    if !memory_map.iter().any(|r| r.kind == MemoryKind::Ram) {
        return Err(BootError::NoUsableRam);
    }

    if nr_modules as usize > MAX_MODULES {
        return Err(BootError::TooManyModules(nr_modules));
    }
    let mut modules = FixedVec::new();
    for index in 0..nr_modules as usize {
        // struct hvm_modlist_entry { u64 paddr; u64 size; u64 cmdline_paddr; u64 reserved; }
        let entry = field(modlist_paddr, index as u64 * 32)?;
        let m_paddr = read_u64(mem, entry)?;
        let size = read_u64(mem, field(entry, 8)?)?;
        if m_paddr.checked_add(size).is_none() {
            return Err(BootError::ModuleOverflow { index, paddr: m_paddr, size });
        }
        modules.push(Module { paddr: m_paddr, size }).map_err(|_| BootError::TooManyModules(nr_modules))?;
    }

    Ok(BootInfo {
        loader: Loader::Pvh,
        version,
        flags,
        cmdline,
        rsdp: (rsdp_paddr != 0).then_some(rsdp_paddr),
        memory_map,
        modules,
    })
}

fn read_cmdline(mem: &impl PhysRead, paddr: u64) -> Result<FixedVec<u8, MAX_CMDLINE>, BootError> {
    let mut out = FixedVec::new();
    if paddr == 0 {
        return Ok(out);
    }
    let mut chunk = [0u8; 64];
    let mut offset = 0u64;
    loop {
        // Read byte-wise at the end of readable memory: a short command line may sit right
        // before an unreadable hole.
        let at = field(paddr, offset)?;
        let n = if mem.read(at, &mut chunk).is_ok() {
            chunk.len()
        } else {
            mem.read(at, &mut chunk[..1])?;
            1
        };
        for &b in &chunk[..n] {
            if b == 0 {
                core::str::from_utf8(&out).map_err(|_| BootError::CmdlineNotUtf8)?;
                return Ok(out);
            }
            out.push(b).map_err(|_| BootError::CmdlineTooLong)?;
        }
        offset += n as u64;
    }
}

fn read_memmap(mem: &impl PhysRead, paddr: u64, count: u32) -> Result<MemoryMap, BootError> {
    if count as usize > MAX_MEMMAP_ENTRIES {
        return Err(BootError::TooManyMemmapEntries(count));
    }
    let mut raw = MemoryMap::new();
    for index in 0..count as usize {
        // struct hvm_memmap_table_entry { u64 addr; u64 size; u32 type; u32 reserved; }
        let entry = field(paddr, index as u64 * 24)?;
        let addr = read_u64(mem, entry)?;
        let size = read_u64(mem, field(entry, 8)?)?;
        let ty = read_u32(mem, field(entry, 16)?)?;
        let end = addr.checked_add(size).ok_or(BootError::MemmapOverflow { index, addr, size })?;
        if size == 0 {
            continue;
        }
        raw.push(MemoryRegion { start: addr, end, kind: MemoryKind::from_e820(ty) })
            .map_err(|_| BootError::TooManyMemmapEntries(count))?;
    }
    Ok(normalize(&raw))
}

/// Sorts `raw`, resolves overlaps by [`MemoryKind`] precedence and merges touching regions of
/// the same kind.
pub fn normalize(raw: &[MemoryRegion]) -> MemoryMap {
    // Every region boundary splits the line into elementary intervals; each takes the kind of
    // highest precedence among the raw regions that cover it. O(n^2) on at most 2n points.
    let mut points = FixedVec::<u64, { 2 * MAX_MEMMAP_ENTRIES }>::new();
    for r in raw.iter().filter(|r| !r.is_empty()) {
        // Capacity is 2 * MAX_MEMMAP_ENTRIES and raw holds at most MAX_MEMMAP_ENTRIES.
        let _ = points.push(r.start);
        let _ = points.push(r.end);
    }
    let points = points.as_mut_slice();
    points.sort_unstable();

    let mut out = MemoryMap::new();
    for pair in points.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        if start == end {
            continue;
        }
        let kind =
            raw.iter().filter(|r| r.start <= start && end <= r.end).map(|r| r.kind).max_by_key(|k| k.precedence());
        let Some(kind) = kind else { continue };
        match out.as_mut_slice().last_mut() {
            Some(last) if last.end == start && last.kind == kind => last.end = end,
            // There are fewer elementary intervals than 2 * entries, but merged output never
            // exceeds the raw count plus the splits an overlap causes; on overflow the tail
            // is dropped, which only loses memory, never hands out reserved memory.
            _ => {
                let _ = out.push(MemoryRegion { start, end, kind });
            }
        }
    }
    out
}

/// Guest memory for the parsers' tests (this one's and `multiboot2`'s).
#[cfg(test)]
pub(crate) mod test_mem {
    use super::{BootError, PhysRead};

    /// A byte buffer at physical address `base`.
    pub(crate) struct Mem {
        pub(crate) base: u64,
        pub(crate) bytes: Vec<u8>,
    }

    impl PhysRead for Mem {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), BootError> {
            let err = BootError::Unreadable { paddr, len: buf.len() };
            let off = paddr.checked_sub(self.base).ok_or(err)? as usize;
            let src = self.bytes.get(off..off + buf.len()).ok_or(err)?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_mem::Mem;
    use super::*;

    const BASE: u64 = 0x1000;
    const INFO: u64 = BASE;
    const MEMMAP: u64 = BASE + 0x100;
    const CMDLINE: u64 = BASE + 0x800;
    const MODLIST: u64 = BASE + 0xc00;

    struct Builder {
        mem: Mem,
    }

    impl Builder {
        fn new() -> Self {
            let mut b = Self { mem: Mem { base: BASE, bytes: vec![0; 0x2000] } };
            b.u32(INFO, START_INFO_MAGIC);
            b.u32(INFO + 4, 1);
            b.u64(INFO + 40, MEMMAP);
            b.memmap(&[(0, 0x9fc00, 1), (0x10_0000, 0x1000_0000, 1), (0xfeff_c000, 0x4000, 2)]);
            b.cmdline(b"log=debug");
            b
        }
        fn u32(&mut self, at: u64, v: u32) {
            let o = (at - BASE) as usize;
            self.mem.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn u64(&mut self, at: u64, v: u64) {
            let o = (at - BASE) as usize;
            self.mem.bytes[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
        fn memmap(&mut self, entries: &[(u64, u64, u32)]) {
            for (i, &(a, s, t)) in entries.iter().enumerate() {
                let e = MEMMAP + i as u64 * 24;
                self.u64(e, a);
                self.u64(e + 8, s);
                self.u32(e + 16, t);
            }
            self.u32(INFO + 48, entries.len() as u32);
        }
        fn cmdline(&mut self, s: &[u8]) {
            let o = (CMDLINE - BASE) as usize;
            self.mem.bytes[o..o + s.len()].copy_from_slice(s);
            self.mem.bytes[o + s.len()] = 0;
            self.u64(INFO + 24, CMDLINE);
        }
        fn parse(&self) -> Result<BootInfo, BootError> {
            parse(&self.mem, INFO)
        }
    }

    fn region(start: u64, end: u64, kind: MemoryKind) -> MemoryRegion {
        MemoryRegion { start, end, kind }
    }

    #[test]
    fn parses_a_qemu_like_start_info() {
        let mut b = Builder::new();
        b.u64(INFO + 32, 0xf_5aa0);
        let info = b.parse().unwrap();
        assert_eq!(info.cmdline(), "log=debug");
        assert_eq!(info.rsdp, Some(0xf_5aa0));
        assert_eq!(info.memory_map.len(), 3);
        assert_eq!(info.memory_map[1], region(0x10_0000, 0x1010_0000, MemoryKind::Ram));
        assert_eq!(info.total_ram(), 0x9f000 + 0x1000_0000);
        assert!(info.modules.is_empty());
    }

    #[test]
    fn unsorted_map_is_sorted_and_touching_ram_merged() {
        // qboot's E820 is not sorted.
        let mut b = Builder::new();
        b.memmap(&[(0x20_0000, 0x10_0000, 1), (0, 0x9fc00, 1), (0x10_0000, 0x10_0000, 1)]);
        let info = b.parse().unwrap();
        assert_eq!(
            &*info.memory_map,
            &[region(0, 0x9fc00, MemoryKind::Ram), region(0x10_0000, 0x30_0000, MemoryKind::Ram)]
        );
    }

    #[test]
    fn overlap_gives_precedence_to_reserved() {
        let mut b = Builder::new();
        b.memmap(&[(0, 0x10_0000, 1), (0x8_0000, 0x1_0000, 2), (0xf_0000, 0x2_0000, 3)]);
        let info = b.parse().unwrap();
        assert_eq!(
            &*info.memory_map,
            &[
                region(0, 0x8_0000, MemoryKind::Ram),
                region(0x8_0000, 0x9_0000, MemoryKind::Reserved),
                region(0x9_0000, 0xf_0000, MemoryKind::Ram),
                region(0xf_0000, 0x11_0000, MemoryKind::AcpiReclaimable),
            ]
        );
    }

    #[test]
    fn usable_ram_is_page_aligned_inward() {
        let mut b = Builder::new();
        b.memmap(&[(0x1234, 0x3000, 1), (0x10_0000, 0x800, 1)]);
        let info = b.parse().unwrap();
        let ram: Vec<_> = info.usable_ram(4096).collect();
        assert_eq!(ram, vec![region(0x2000, 0x4000, MemoryKind::Ram)]);
    }

    #[test]
    fn zero_sized_entries_are_skipped_and_unknown_types_reserved() {
        let mut b = Builder::new();
        b.memmap(&[(0, 0, 1), (0, 0x1000, 1), (0x1000, 0x1000, 99)]);
        let info = b.parse().unwrap();
        assert_eq!(
            &*info.memory_map,
            &[region(0, 0x1000, MemoryKind::Ram), region(0x1000, 0x2000, MemoryKind::Reserved)]
        );
    }

    #[test]
    fn modules_are_read() {
        let mut b = Builder::new();
        b.u32(INFO + 12, 2);
        b.u64(INFO + 16, MODLIST);
        b.u64(MODLIST, 0x20_0000);
        b.u64(MODLIST + 8, 0x1234);
        b.u64(MODLIST + 32, 0x30_0000);
        b.u64(MODLIST + 40, 0x10);
        let info = b.parse().unwrap();
        assert_eq!(
            &*info.modules,
            &[Module { paddr: 0x20_0000, size: 0x1234 }, Module { paddr: 0x30_0000, size: 0x10 }]
        );
    }

    #[test]
    fn null_pointer_and_bad_magic_are_refused() {
        let b = Builder::new();
        assert_eq!(parse(&b.mem, 0).unwrap_err(), BootError::NullStartInfo);
        let mut b = Builder::new();
        b.u32(INFO, 0xdead_beef);
        assert_eq!(b.parse().unwrap_err(), BootError::BadMagic(0xdead_beef));
    }

    #[test]
    fn version_zero_has_no_memory_map() {
        let mut b = Builder::new();
        b.u32(INFO + 4, 0);
        assert_eq!(b.parse().unwrap_err(), BootError::NoMemoryMap { version: 0 });
    }

    #[test]
    fn pointers_outside_memory_are_unreadable_not_panics() {
        let mut b = Builder::new();
        b.u64(INFO + 40, 0xffff_ffff_ffff_fff0);
        assert!(matches!(b.parse().unwrap_err(), BootError::Unreadable { .. }));
        let mut b = Builder::new();
        b.u64(INFO + 24, 0x9999_0000);
        assert!(matches!(b.parse().unwrap_err(), BootError::Unreadable { .. }));
        // The start info itself truncated at the end of memory.
        let mut b = Builder::new();
        b.u32(BASE + 0x2000 - 8, START_INFO_MAGIC);
        assert!(matches!(parse(&b.mem, BASE + 0x2000 - 8).unwrap_err(), BootError::Unreadable { .. }));
    }

    #[test]
    fn overflowing_entries_are_refused() {
        let mut b = Builder::new();
        b.memmap(&[(u64::MAX - 10, 0x1000, 1)]);
        assert!(matches!(b.parse().unwrap_err(), BootError::MemmapOverflow { index: 0, .. }));
        let mut b = Builder::new();
        b.u32(INFO + 12, 1);
        b.u64(INFO + 16, MODLIST);
        b.u64(MODLIST, u64::MAX);
        b.u64(MODLIST + 8, 2);
        assert!(matches!(b.parse().unwrap_err(), BootError::ModuleOverflow { index: 0, .. }));
    }

    #[test]
    fn too_many_entries_or_modules_are_refused() {
        let mut b = Builder::new();
        b.u32(INFO + 48, MAX_MEMMAP_ENTRIES as u32 + 1);
        assert_eq!(b.parse().unwrap_err(), BootError::TooManyMemmapEntries(129));
        let mut b = Builder::new();
        b.u32(INFO + 12, 1000);
        assert_eq!(b.parse().unwrap_err(), BootError::TooManyModules(1000));
    }

    #[test]
    fn cmdline_must_be_terminated_utf8() {
        let mut b = Builder::new();
        b.cmdline(&[b'a', 0xff, b'b']);
        assert_eq!(b.parse().unwrap_err(), BootError::CmdlineNotUtf8);
        // No NUL before the end of memory: unreadable, not an endless loop.
        let mut b = Builder::new();
        let o = (CMDLINE - BASE) as usize;
        b.mem.bytes.truncate(o + 100);
        b.mem.bytes[o..].fill(b'x');
        assert!(matches!(b.parse().unwrap_err(), BootError::Unreadable { .. }));
        // Too long, but readable.
        let mut b = Builder::new();
        b.mem.bytes.resize(0x4000, b'x');
        let o = (CMDLINE - BASE) as usize;
        b.mem.bytes[o..].fill(b'x');
        assert_eq!(b.parse().unwrap_err(), BootError::CmdlineTooLong);
    }

    #[test]
    fn a_map_without_ram_is_refused() {
        let mut b = Builder::new();
        b.memmap(&[(0, 0x1000, 2)]);
        assert_eq!(b.parse().unwrap_err(), BootError::NoUsableRam);
    }

    #[test]
    fn no_cmdline_is_empty() {
        let mut b = Builder::new();
        b.u64(INFO + 24, 0);
        assert_eq!(b.parse().unwrap().cmdline(), "");
    }
}
