//! A pure parser from the Multiboot2 boot information (what GRUB hands a kernel, on BIOS and on
//! UEFI) to the same typed [`BootInfo`] that [`crate::pvh`] gives, so the rest of the kernel
//! does not care which loader started it.
//!
//! The format is that of the Multiboot2 specification (version 2.0, `multiboot2.h`): the
//! loader enters the image's 32-bit entry with `%eax` = [`BOOTLOADER_MAGIC`] and `%ebx` = the
//! physical address of the information structure: a `u32 total_size`, a reserved `u32`, then
//! tags, each `u32 type, u32 size` followed by its payload and padded to 8 bytes, ended by a
//! tag of type 0 and size 8. The tags read here:
//!
//! | type | tag | becomes |
//! |---|---|---|
//! | 1 | command line (NUL-terminated UTF-8) | [`BootInfo::cmdline`] |
//! | 3 | module (`u32 mod_start, u32 mod_end`, string) | [`BootInfo::modules`] |
//! | 6 | memory map (`u32 entry_size, u32 entry_version`, entries of `u64 base, u64 len, u32 type, u32 reserved`) | [`BootInfo::memory_map`] |
//! | 14 | ACPI 1.0 RSDP (a copy) | [`BootInfo::rsdp`], when no type 15 is given |
//! | 15 | ACPI 2.0+ RSDP (a copy) | [`BootInfo::rsdp`] |
//!
//! Other tags (loader name, framebuffer, EFI tables, ...) are skipped. The RSDP tags hold a
//! *copy* of the RSDP, not its address, so [`BootInfo::rsdp`] points at the copy inside the
//! information structure; that is why the structure's own pages are marked reserved in the
//! returned memory map: the frame allocator must not hand them out before ACPI is parsed.
//!
//! Invariants of a parsed [`BootInfo`] are those of [`crate::pvh`] (sorted, overlap-free
//! memory map with usable RAM; UTF-8 command line; modules inside the address space), and in
//! addition no RAM region covers the information structure.
//!
//! The Multiboot2 *header* that makes GRUB load the image is in `entry.rs`, beside the PVH note;
//! [`HEADER_MAGIC`] and [`header_checksum`] are what it must satisfy, tested here.

use crate::fixed::FixedVec;
use crate::pvh::{
    BootError, BootInfo, Loader, MAX_CMDLINE, MAX_MEMMAP_ENTRIES, MAX_MODULES, MemoryKind, MemoryMap, MemoryRegion,
    Module, PhysRead, normalize,
};

/// `%eax` at a Multiboot2 entry.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// The first word of the Multiboot2 header in the image.
pub const HEADER_MAGIC: u32 = 0xe852_50d6;
/// The header's architecture field for 32-bit protected-mode i386 (what x86_64 images use).
pub const ARCH_I386: u32 = 0;
/// Largest information structure accepted (GRUB's are a few KiB; the EFI memory map tag is
/// the largest part).
pub const MAX_INFO_SIZE: u32 = 1 << 20;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_MODULE: u32 = 3;
const TAG_MMAP: u32 = 6;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;

/// The checksum field of a Multiboot2 header: the four header words sum to 0 mod 2^32.
pub const fn header_checksum(architecture: u32, header_length: u32) -> u32 {
    0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(architecture).wrapping_add(header_length))
}

/// Why a Multiboot2 information structure could not be parsed. Each variant names the part at
/// fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mb2Error {
    /// `%eax` was not [`BOOTLOADER_MAGIC`]: the loader is not Multiboot2 (a Multiboot1 loader
    /// gives 0x2badb002).
    BadMagic(u32),
    /// The information pointer was null.
    NullInfo,
    /// The structure is not 8-byte aligned, as the specification requires.
    Unaligned(u64),
    /// Part of the structure is not readable.
    Unreadable {
        /// Where the read started.
        paddr: u64,
        /// How many bytes it wanted.
        len: usize,
    },
    /// `total_size` is below the 16 bytes of an empty structure or above [`MAX_INFO_SIZE`].
    BadTotalSize(u32),
    /// A tag whose size is below 8 or runs past `total_size`.
    TagOverrun {
        /// The tag's offset in the structure.
        offset: u32,
        /// Its type.
        ty: u32,
        /// Its size field.
        size: u32,
    },
    /// No end tag (type 0, size 8) before `total_size`.
    NoEndTag,
    /// A tag shorter than its fixed fields.
    ShortTag {
        /// The tag's type.
        ty: u32,
        /// Its size field.
        size: u32,
    },
    /// No memory-map tag (type 6): nothing says where RAM is.
    NoMemoryMap,
    /// A memory-map entry size below 24 bytes.
    BadMmapEntrySize(u32),
    /// More memory-map entries than [`MAX_MEMMAP_ENTRIES`].
    TooManyMemmapEntries(usize),
    /// A memory-map entry whose end overflows the address space.
    MemmapOverflow {
        /// Index of the entry.
        index: usize,
        /// Its base address.
        addr: u64,
        /// Its length.
        size: u64,
    },
    /// More module tags than [`MAX_MODULES`].
    TooManyModules,
    /// A module that ends before it starts.
    ModuleReversed {
        /// Index of the module tag.
        index: usize,
        /// `mod_start`.
        start: u32,
        /// `mod_end`.
        end: u32,
    },
    /// Two command-line tags.
    TwoCmdlines,
    /// The command line has no NUL inside its tag.
    CmdlineUnterminated,
    /// The command line is longer than [`MAX_CMDLINE`] bytes.
    CmdlineTooLong,
    /// The command line is not UTF-8.
    CmdlineNotUtf8,
    /// The memory map holds no usable RAM at all.
    NoUsableRam,
}

impl From<BootError> for Mb2Error {
    fn from(e: BootError) -> Self {
        match e {
            BootError::Unreadable { paddr, len } => Self::Unreadable { paddr, len },
            // PhysRead only fails with Unreadable; anything else is mapped to the closest.
            _ => Self::Unreadable { paddr: 0, len: 0 },
        }
    }
}

impl core::fmt::Display for Mb2Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::BadMagic(m) => write!(
                f,
                "the loader's magic is {m:#x}, expected {BOOTLOADER_MAGIC:#x}: boot this kernel by PVH or Multiboot2 (GRUB's `multiboot2` command)"
            ),
            Self::NullInfo => write!(f, "the Multiboot2 information pointer is null"),
            Self::Unaligned(p) => write!(f, "the Multiboot2 information at {p:#x} is not 8-byte aligned"),
            Self::Unreadable { paddr, len } => {
                write!(
                    f,
                    "Multiboot2 information at {paddr:#x} (+{len}) is not readable (it must lie in the first GiB)"
                )
            }
            Self::BadTotalSize(n) => {
                write!(f, "Multiboot2 total_size {n} is outside 16..={MAX_INFO_SIZE} bytes")
            }
            Self::TagOverrun { offset, ty, size } => {
                write!(f, "Multiboot2 tag {ty} at offset {offset} has size {size}, which runs past the structure")
            }
            Self::NoEndTag => write!(f, "the Multiboot2 information has no end tag"),
            Self::ShortTag { ty, size } => write!(f, "Multiboot2 tag {ty} has size {size}, too short for its fields"),
            Self::NoMemoryMap => write!(f, "the Multiboot2 information has no memory-map tag (type 6)"),
            Self::BadMmapEntrySize(n) => write!(f, "Multiboot2 memory-map entry size {n} is below 24 bytes"),
            Self::TooManyMemmapEntries(n) => {
                write!(f, "memory map has {n} entries, at most {MAX_MEMMAP_ENTRIES} are supported")
            }
            Self::MemmapOverflow { index, addr, size } => {
                write!(f, "memory map entry {index} ({addr:#x}, size {size:#x}) overflows the address space")
            }
            Self::TooManyModules => write!(f, "more than {MAX_MODULES} boot modules given"),
            Self::ModuleReversed { index, start, end } => {
                write!(f, "boot module {index} ends ({end:#x}) before it starts ({start:#x})")
            }
            Self::TwoCmdlines => write!(f, "the Multiboot2 information has two command-line tags"),
            Self::CmdlineUnterminated => write!(f, "the Multiboot2 command line has no NUL inside its tag"),
            Self::CmdlineTooLong => write!(f, "kernel command line is longer than {MAX_CMDLINE} bytes"),
            Self::CmdlineNotUtf8 => write!(f, "kernel command line is not valid UTF-8"),
            Self::NoUsableRam => write!(f, "the memory map has no usable RAM"),
        }
    }
}

fn read_u32(mem: &impl PhysRead, paddr: u64) -> Result<u32, Mb2Error> {
    let mut b = [0u8; 4];
    mem.read(paddr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(mem: &impl PhysRead, paddr: u64) -> Result<u64, Mb2Error> {
    let mut b = [0u8; 8];
    mem.read(paddr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Parses the Multiboot2 information at `paddr`, given the loader's `%eax`.
pub fn parse(mem: &impl PhysRead, magic: u32, paddr: u64) -> Result<BootInfo, Mb2Error> {
    if magic != BOOTLOADER_MAGIC {
        return Err(Mb2Error::BadMagic(magic));
    }
    if paddr == 0 {
        return Err(Mb2Error::NullInfo);
    }
    if !paddr.is_multiple_of(8) {
        return Err(Mb2Error::Unaligned(paddr));
    }
    let total = read_u32(mem, paddr)?;
    if !(16..=MAX_INFO_SIZE).contains(&total) {
        return Err(Mb2Error::BadTotalSize(total));
    }
    let end = paddr.checked_add(u64::from(total)).ok_or(Mb2Error::BadTotalSize(total))?;

    let mut cmdline = None;
    let mut raw_map: Option<MemoryMap> = None;
    let mut rsdp_old = None;
    let mut rsdp_new = None;
    let mut modules = FixedVec::<Module, MAX_MODULES>::new();
    let mut offset = 8u32;
    loop {
        if offset.checked_add(8).is_none_or(|o| o > total) {
            return Err(Mb2Error::NoEndTag);
        }
        let tag = paddr + u64::from(offset);
        let ty = read_u32(mem, tag)?;
        let size = read_u32(mem, tag + 4)?;
        if size < 8 || offset.checked_add(size).is_none_or(|e| e > total) {
            return Err(Mb2Error::TagOverrun { offset, ty, size });
        }
        let body = tag + 8;
        let body_len = size - 8;
        match ty {
            TAG_END => break,
            TAG_CMDLINE => {
                if cmdline.is_some() {
                    return Err(Mb2Error::TwoCmdlines);
                }
                cmdline = Some(read_string(mem, body, body_len)?);
            }
            TAG_MODULE => {
                if body_len < 8 {
                    return Err(Mb2Error::ShortTag { ty, size });
                }
                let start = read_u32(mem, body)?;
                let mod_end = read_u32(mem, body + 4)?;
                let index = modules.len();
                if mod_end < start {
                    return Err(Mb2Error::ModuleReversed { index, start, end: mod_end });
                }
                // mod_end is one past the last byte (GRUB: mod_start + size).
                let m = Module { paddr: u64::from(start), size: u64::from(mod_end - start) };
                modules.push(m).map_err(|_| Mb2Error::TooManyModules)?;
            }
            TAG_MMAP => raw_map = Some(read_mmap(mem, body, ty, size)?),
            TAG_ACPI_OLD => rsdp_old = Some(body),
            TAG_ACPI_NEW => rsdp_new = Some(body),
            _ => {}
        }
        // Tags are padded to 8 bytes; the padding may run exactly to total_size only for the
        // end tag, which broke out above.
        offset = offset.checked_add(size.next_multiple_of(8)).ok_or(Mb2Error::NoEndTag)?;
    }

    let mut raw = raw_map.ok_or(Mb2Error::NoMemoryMap)?;
    if !raw.iter().any(|r| r.kind == MemoryKind::Ram && !r.is_empty()) {
        return Err(Mb2Error::NoUsableRam);
    }
    // The structure itself (whole pages) is reserved: the RSDP copy lives in it.
    let reserved = MemoryRegion {
        start: paddr & !0xfff,
        end: end.checked_next_multiple_of(0x1000).unwrap_or(u64::MAX),
        kind: MemoryKind::Reserved,
    };
    raw.push(reserved).map_err(|_| Mb2Error::TooManyMemmapEntries(MAX_MEMMAP_ENTRIES + 1))?;
    let memory_map = normalize(&raw);
    if !memory_map.iter().any(|r| r.kind == MemoryKind::Ram) {
        return Err(Mb2Error::NoUsableRam);
    }
    Ok(BootInfo {
        loader: Loader::Multiboot2,
        version: 0,
        flags: 0,
        cmdline: cmdline.unwrap_or_default(),
        rsdp: rsdp_new.or(rsdp_old),
        memory_map,
        modules,
    })
}

fn read_string(mem: &impl PhysRead, at: u64, len: u32) -> Result<FixedVec<u8, MAX_CMDLINE>, Mb2Error> {
    let mut out = FixedVec::new();
    let mut chunk = [0u8; 64];
    let mut done = 0u32;
    while done < len {
        let n = (len - done).min(chunk.len() as u32) as usize;
        mem.read(at + u64::from(done), &mut chunk[..n])?;
        for &b in &chunk[..n] {
            if b == 0 {
                core::str::from_utf8(&out).map_err(|_| Mb2Error::CmdlineNotUtf8)?;
                return Ok(out);
            }
            out.push(b).map_err(|_| Mb2Error::CmdlineTooLong)?;
        }
        done += n as u32;
    }
    Err(Mb2Error::CmdlineUnterminated)
}

fn read_mmap(mem: &impl PhysRead, body: u64, ty: u32, size: u32) -> Result<MemoryMap, Mb2Error> {
    if size < 16 {
        return Err(Mb2Error::ShortTag { ty, size });
    }
    let entry_size = read_u32(mem, body)?;
    if entry_size < 24 {
        return Err(Mb2Error::BadMmapEntrySize(entry_size));
    }
    let count = ((size - 16) / entry_size) as usize;
    if count > MAX_MEMMAP_ENTRIES {
        return Err(Mb2Error::TooManyMemmapEntries(count));
    }
    let mut raw = MemoryMap::new();
    let first = body + 8;
    for index in 0..count {
        let e = first + index as u64 * u64::from(entry_size);
        let addr = read_u64(mem, e)?;
        let len = read_u64(mem, e + 8)?;
        let kind = read_u32(mem, e + 16)?;
        let end = addr.checked_add(len).ok_or(Mb2Error::MemmapOverflow { index, addr, size: len })?;
        if len == 0 {
            continue;
        }
        // Multiboot2's types are E820's (1 RAM, 3 ACPI, 4 NVS, 5 bad RAM, others reserved).
        let region = MemoryRegion { start: addr, end, kind: MemoryKind::from_e820(kind) };
        raw.push(region).map_err(|_| Mb2Error::TooManyMemmapEntries(count))?;
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pvh::test_mem::Mem;

    const INFO: u64 = 0x9000;

    /// Builds an information structure tag by tag, as GRUB lays it out.
    struct Info {
        bytes: Vec<u8>,
    }

    impl Info {
        fn new() -> Self {
            Self { bytes: vec![0; 8] }
        }
        fn tag(mut self, ty: u32, body: &[u8]) -> Self {
            self.bytes.extend_from_slice(&ty.to_le_bytes());
            self.bytes.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            self.bytes.extend_from_slice(body);
            while !self.bytes.len().is_multiple_of(8) {
                self.bytes.push(0);
            }
            self
        }
        fn cmdline(self, s: &[u8]) -> Self {
            let mut b = s.to_vec();
            b.push(0);
            self.tag(TAG_CMDLINE, &b)
        }
        fn mmap(self, entries: &[(u64, u64, u32)]) -> Self {
            let mut b = Vec::new();
            b.extend_from_slice(&24u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            for &(addr, len, ty) in entries {
                b.extend_from_slice(&addr.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
                b.extend_from_slice(&ty.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
            }
            self.tag(TAG_MMAP, &b)
        }
        fn module(self, start: u32, end: u32, name: &[u8]) -> Self {
            let mut b = Vec::new();
            b.extend_from_slice(&start.to_le_bytes());
            b.extend_from_slice(&end.to_le_bytes());
            b.extend_from_slice(name);
            b.push(0);
            self.tag(TAG_MODULE, &b)
        }
        fn end(self) -> Mem {
            let mut s = self.tag(TAG_END, &[]);
            let total = s.bytes.len() as u32;
            s.bytes[..4].copy_from_slice(&total.to_le_bytes());
            Mem { base: INFO, bytes: s.bytes }
        }
    }

    fn typical() -> Info {
        Info::new()
            .cmdline(b"job=default log=debug")
            .tag(2, b"GRUB 2.06\0")
            .module(0x20_0000, 0x20_3000, b"experiment")
            .mmap(&[(0, 0x9fc00, 1), (0x9fc00, 0x400, 2), (0x10_0000, 0x7ff0_0000, 1), (0x7ff0_0000, 0x10_0000, 3)])
            .tag(TAG_ACPI_OLD, &[b'R'; 20])
            .tag(TAG_ACPI_NEW, &[b'X'; 36])
    }

    #[test]
    fn a_grub_structure_gives_the_same_boot_info_as_pvh() {
        let mem = typical().end();
        let info = parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap();
        assert_eq!(info.loader, Loader::Multiboot2);
        assert_eq!(info.cmdline(), "job=default log=debug");
        assert_eq!(&*info.modules, &[Module { paddr: 0x20_0000, size: 0x3000 }]);
        // The ACPI 2.0 copy wins over the 1.0 one; it is the tag body's address.
        let rsdp = info.rsdp.unwrap();
        assert_eq!(mem.bytes[(rsdp - INFO) as usize], b'X');
        // The information structure's page is reserved, carved out of the first RAM region.
        let kinds: Vec<_> = info.memory_map.iter().map(|r| (r.start, r.end, r.kind)).collect();
        assert_eq!(
            kinds,
            [
                (0, 0x9000, MemoryKind::Ram),
                (0x9000, 0xa000, MemoryKind::Reserved),
                (0xa000, 0x9fc00, MemoryKind::Ram),
                (0x9fc00, 0xa0000, MemoryKind::Reserved),
                (0x10_0000, 0x7ff0_0000, MemoryKind::Ram),
                (0x7ff0_0000, 0x8000_0000, MemoryKind::AcpiReclaimable),
            ]
        );
        assert_eq!(info.total_ram(), 0x9000 + (0x9f000 - 0xa000) + 0x7fe0_0000);
    }

    #[test]
    fn only_the_old_rsdp_is_used_when_there_is_no_new_one() {
        let mem = Info::new().mmap(&[(0x10_0000, 0x100_0000, 1)]).tag(TAG_ACPI_OLD, &[b'R'; 20]).end();
        let info = parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap();
        assert_eq!(mem.bytes[(info.rsdp.unwrap() - INFO) as usize], b'R');
        assert_eq!(info.cmdline(), "");
        assert!(info.modules.is_empty());
    }

    #[test]
    fn a_multiboot1_or_pvh_entry_is_refused_by_its_magic() {
        let mem = typical().end();
        assert_eq!(parse(&mem, 0x2bad_b002, INFO).unwrap_err(), Mb2Error::BadMagic(0x2bad_b002));
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, 0).unwrap_err(), Mb2Error::NullInfo);
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO + 4).unwrap_err(), Mb2Error::Unaligned(INFO + 4));
        let msg = format!("{}", Mb2Error::BadMagic(0x2bad_b002));
        assert!(msg.contains("0x2badb002") && msg.contains("multiboot2"), "{msg}");
    }

    #[test]
    fn malformed_structures_are_errors_that_name_the_part() {
        // No memory map.
        let mem = Info::new().cmdline(b"x").end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::NoMemoryMap);
        // Only reserved memory.
        let mem = Info::new().mmap(&[(0, 0x10_0000, 2)]).end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::NoUsableRam);
        // No end tag: the structure stops after the memory map.
        let mut mem = typical().end();
        let len = mem.bytes.len() - 8;
        mem.bytes.truncate(len);
        mem.bytes[..4].copy_from_slice(&(len as u32).to_le_bytes());
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::NoEndTag);
        // A tag that runs past total_size.
        let mut mem = typical().end();
        mem.bytes[12..16].copy_from_slice(&0x1_0000u32.to_le_bytes());
        assert!(matches!(
            parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(),
            Mb2Error::TagOverrun { offset: 8, ty: TAG_CMDLINE, size: 0x1_0000 }
        ));
        // A tag of size < 8 would loop for ever.
        let mut mem = typical().end();
        mem.bytes[12..16].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::TagOverrun { size: 4, .. }));
        // total_size out of bounds; the structure unreadable.
        let mut mem = typical().end();
        mem.bytes[..4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::BadTotalSize(8));
        let mem = Mem { base: INFO, bytes: vec![0; 2] };
        assert!(matches!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::Unreadable { .. }));
        // A reversed module, a module tag too short.
        let mem = Info::new().mmap(&[(0x10_0000, 0x100_0000, 1)]).module(0x3000, 0x2000, b"m").end();
        assert_eq!(
            parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(),
            Mb2Error::ModuleReversed { index: 0, start: 0x3000, end: 0x2000 }
        );
        let mem = Info::new().mmap(&[(0x10_0000, 0x100_0000, 1)]).tag(TAG_MODULE, &[0; 4]).end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::ShortTag { ty: 3, size: 12 });
        // Too many modules.
        let mut info = Info::new().mmap(&[(0x10_0000, 0x100_0000, 1)]);
        for i in 0..=MAX_MODULES as u32 {
            info = info.module(i * 0x1000, i * 0x1000 + 0x1000, b"m");
        }
        assert_eq!(parse(&info.end(), BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::TooManyModules);
    }

    #[test]
    fn memory_map_entries_are_checked() {
        let mem = Info::new().mmap(&[(0x10_0000, 0x100_0000, 1), (u64::MAX - 10, 100, 1)]).end();
        assert_eq!(
            parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(),
            Mb2Error::MemmapOverflow { index: 1, addr: u64::MAX - 10, size: 100 }
        );
        let mut body = Vec::new();
        body.extend_from_slice(&16u32.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        body.extend_from_slice(&[0; 16]);
        let mem = Info::new().tag(TAG_MMAP, &body).end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::BadMmapEntrySize(16));
        let many: Vec<_> = (0..=MAX_MEMMAP_ENTRIES as u64).map(|i| (i << 24, 0x1000, 1)).collect();
        let mem = Info::new().mmap(&many).end();
        assert_eq!(
            parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(),
            Mb2Error::TooManyMemmapEntries(MAX_MEMMAP_ENTRIES + 1)
        );
        // A larger entry size (a later version of the entry) is stepped over by its size.
        let mut body = Vec::new();
        body.extend_from_slice(&32u32.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for (addr, len) in [(0x10_0000u64, 0x10_0000u64), (0x40_0000, 0x20_0000)] {
            body.extend_from_slice(&addr.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(&[0xee; 12]);
        }
        let mem = Info::new().tag(TAG_MMAP, &body).end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap().total_ram(), 0x30_0000);
    }

    #[test]
    fn command_lines_are_checked() {
        let mmap = [(0x10_0000, 0x100_0000, 1)];
        let mem = Info::new().mmap(&mmap).tag(TAG_CMDLINE, b"no nul").end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::CmdlineUnterminated);
        let mem = Info::new().mmap(&mmap).cmdline(&[0xff, 0xfe]).end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::CmdlineNotUtf8);
        let mem = Info::new().mmap(&mmap).cmdline(&[b'a'; MAX_CMDLINE + 1]).end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::CmdlineTooLong);
        let mem = Info::new().mmap(&mmap).cmdline(b"a").cmdline(b"b").end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap_err(), Mb2Error::TwoCmdlines);
        let mem = Info::new().mmap(&mmap).cmdline(&[b'a'; MAX_CMDLINE]).end();
        assert_eq!(parse(&mem, BOOTLOADER_MAGIC, INFO).unwrap().cmdline().len(), MAX_CMDLINE);
    }

    #[test]
    fn the_header_checksum_makes_the_words_sum_to_zero() {
        for len in [16u32, 24, 40, 0xffff_fff0] {
            let sum =
                HEADER_MAGIC.wrapping_add(ARCH_I386).wrapping_add(len).wrapping_add(header_checksum(ARCH_I386, len));
            assert_eq!(sum, 0, "length {len}");
        }
    }
}
