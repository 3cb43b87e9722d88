//! Static ELF64 executables for x86-64: what the kernel must map to start one.
//!
//! [`parse`] checks the file header and program headers and returns the executable's
//! [`Image`]: its entry point, where its program headers are in memory (for `AT_PHDR`), and the
//! `PT_LOAD` segments with their protections. It refuses what a static loader cannot run: a
//! dynamically linked file (`PT_INTERP`), another class, byte order or machine, a segment
//! outside the file, or a segment whose file part is larger than its memory part.
//!
//! A position-independent static executable (`ET_DYN` without `PT_INTERP`, `gcc -static-pie`)
//! is placed at [`PIE_BASE`]; its relocations are its own startup code's business.

use alloc::vec::Vec;
use core::fmt;

use crate::mm::vma::Prot;

/// Where a position-independent executable's address 0 goes.
pub const PIE_BASE: u64 = 0x5555_5555_4000;

/// `e_type`: an executable.
const ET_EXEC: u16 = 2;
/// `e_type`: a shared object (a PIE).
const ET_DYN: u16 = 3;
/// `e_machine`: x86-64.
const EM_X86_64: u16 = 62;
/// `p_type`: a loadable segment.
const PT_LOAD: u32 = 1;
/// `p_type`: the program interpreter (a dynamically linked file).
const PT_INTERP: u32 = 3;
/// `p_type`: where the program headers are.
const PT_PHDR: u32 = 6;
/// `p_flags`: executable, writable, readable.
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
/// Size of one program header.
pub const PHENT: u16 = 56;

/// Why a file is not a static x86-64 executable this loader runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than its headers say.
    Truncated,
    /// No `\x7fELF` magic.
    NotElf,
    /// Not 64-bit little-endian (the `EI_CLASS` and `EI_DATA` bytes).
    NotElf64Le,
    /// Another machine (`e_machine`).
    Machine(u16),
    /// Neither an executable nor a PIE (`e_type`).
    Type(u16),
    /// It names a program interpreter: dynamically linked.
    Dynamic,
    /// Program headers of another size than 56 bytes.
    Phent(u16),
    /// No `PT_LOAD` segment.
    NoSegments,
    /// Segment `index` is malformed: what is wrong with it.
    Segment {
        /// Its index among the program headers.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "the file is shorter than its ELF headers say"),
            Self::NotElf => write!(f, "not an ELF file (no \\x7fELF magic)"),
            Self::NotElf64Le => write!(f, "not a 64-bit little-endian ELF file"),
            Self::Machine(m) => write!(f, "built for machine {m}, not x86-64 (62)"),
            Self::Type(t) => write!(f, "ELF type {t} is neither an executable (2) nor a PIE (3)"),
            Self::Dynamic => write!(
                f,
                "dynamically linked (it names a program interpreter): only static executables run; link with `gcc -static`"
            ),
            Self::Phent(n) => write!(f, "program headers of {n} bytes, not {PHENT}"),
            Self::NoSegments => write!(f, "no loadable segment"),
            Self::Segment { index, why } => write!(f, "program header {index}: {why}"),
        }
    }
}

/// One `PT_LOAD` segment, at its final address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address of its first byte.
    pub vaddr: u64,
    /// Bytes in memory (the tail past `filesz` is zero: `.bss`).
    pub memsz: u64,
    /// Bytes from the file.
    pub filesz: u64,
    /// Where those bytes are in the file.
    pub offset: u64,
    /// Its protection.
    pub prot: Prot,
}

impl Segment {
    /// The page-aligned range `[start, end)` it covers.
    pub fn pages(&self) -> (u64, u64) {
        (self.vaddr & !0xfff, (self.vaddr + self.memsz + 0xfff) & !0xfff)
    }
}

/// What starting the executable needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The entry point.
    pub entry: u64,
    /// The program headers' address in memory (`AT_PHDR`).
    pub phdr: u64,
    /// Their count (`AT_PHNUM`).
    pub phnum: u16,
    /// The loadable segments, in file order.
    pub segments: Vec<Segment>,
    /// The end of the highest segment, page-aligned: where the heap (`brk`) starts.
    pub end: u64,
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ElfError> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or(ElfError::Truncated)
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, ElfError> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes"))).ok_or(ElfError::Truncated)
}
fn u64_at(b: &[u8], at: usize) -> Result<u64, ElfError> {
    b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes"))).ok_or(ElfError::Truncated)
}

/// Checks `file` and returns what to map (see the module docs).
pub fn parse(file: &[u8]) -> Result<Image, ElfError> {
    if file.len() < 64 {
        return Err(if file.starts_with(b"\x7fELF") || file.len() < 4 {
            ElfError::Truncated
        } else {
            ElfError::NotElf
        });
    }
    if &file[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    if file[4] != 2 || file[5] != 1 {
        return Err(ElfError::NotElf64Le);
    }
    let ty = u16_at(file, 16)?;
    let machine = u16_at(file, 18)?;
    if machine != EM_X86_64 {
        return Err(ElfError::Machine(machine));
    }
    let base = match ty {
        ET_EXEC => 0,
        ET_DYN => PIE_BASE,
        t => return Err(ElfError::Type(t)),
    };
    let entry = u64_at(file, 24)?;
    let phoff = u64_at(file, 32)?;
    let phentsize = u16_at(file, 54)?;
    let phnum = u16_at(file, 56)?;
    if phentsize != PHENT {
        return Err(ElfError::Phent(phentsize));
    }
    let mut segments = Vec::new();
    let mut phdr = None;
    for i in 0..phnum as usize {
        let at =
            usize::try_from(phoff).ok().and_then(|o| o.checked_add(i * PHENT as usize)).ok_or(ElfError::Truncated)?;
        let p_type = u32_at(file, at)?;
        let flags = u32_at(file, at + 4)?;
        let offset = u64_at(file, at + 8)?;
        let vaddr = u64_at(file, at + 16)?;
        let filesz = u64_at(file, at + 32)?;
        let memsz = u64_at(file, at + 40)?;
        match p_type {
            PT_INTERP => return Err(ElfError::Dynamic),
            PT_PHDR => phdr = Some(vaddr + base),
            PT_LOAD => {
                let bad = |why| ElfError::Segment { index: i, why };
                if filesz > memsz {
                    return Err(bad("its file size is larger than its memory size"));
                }
                if offset.checked_add(filesz).is_none_or(|e| e > file.len() as u64) {
                    return Err(bad("its bytes lie outside the file"));
                }
                if vaddr % 4096 != offset % 4096 {
                    return Err(bad("its address and file offset differ modulo the page size"));
                }
                let end = (vaddr + base).checked_add(memsz);
                if end.is_none_or(|e| e > crate::mm::pagetable::USER_END) || memsz == 0 {
                    return Err(bad("it is empty or reaches beyond the user half"));
                }
                let mut prot = Prot::NONE;
                for (bit, p) in [(PF_R, Prot::READ), (PF_W, Prot::WRITE), (PF_X, Prot::EXEC)] {
                    if flags & bit != 0 {
                        prot = prot | p;
                    }
                }
                segments.push(Segment { vaddr: vaddr + base, memsz, filesz, offset, prot });
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    for (i, s) in segments.iter().enumerate() {
        // Neighbours may share a page (the loader gives it both protections), not a byte.
        if segments[..i].iter().any(|t| s.vaddr < t.vaddr + t.memsz && t.vaddr < s.vaddr + s.memsz) {
            return Err(ElfError::Segment { index: i, why: "it overlaps an earlier segment" });
        }
    }
    // Without PT_PHDR: the headers are in memory where the segment holding file offset
    // `phoff` maps it.
    let phdr = phdr.or_else(|| {
        segments.iter().find(|s| s.offset <= phoff && phoff < s.offset + s.filesz).map(|s| s.vaddr + (phoff - s.offset))
    });
    let end = segments.iter().map(|s| s.pages().1).max().unwrap_or(0);
    Ok(Image { entry: entry + base, phdr: phdr.unwrap_or(0), phnum, segments, end })
}

/// Where [`minimal`] puts its code (the first segment, headers included, starts at 0x400000).
pub const MINIMAL_ENTRY: u64 = 0x4000b0;

/// A minimal static executable, for tests that need one without a compiler: a read+exec
/// segment at 0x400000 holding the headers and `code` (entry [`MINIMAL_ENTRY`]), and a
/// read+write segment at 0x401000 of 8 bytes of data (0x1122334455667788) and `bss` zero
/// bytes after them.
pub fn minimal(code: &[u8], bss: u64) -> Vec<u8> {
    let code_at = (MINIMAL_ENTRY - 0x400000) as usize;
    let mut f = alloc::vec![0u8; (code_at + code.len()).max(0x1000).next_multiple_of(0x1000)];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    f[24..32].copy_from_slice(&MINIMAL_ENTRY.to_le_bytes());
    f[32..40].copy_from_slice(&64u64.to_le_bytes());
    f[52..54].copy_from_slice(&64u16.to_le_bytes());
    f[54..56].copy_from_slice(&PHENT.to_le_bytes());
    f[56..58].copy_from_slice(&2u16.to_le_bytes());
    let ph = |f: &mut Vec<u8>, at: usize, flags: u32, off: u64, va: u64, filesz: u64, memsz: u64| {
        f[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
        f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
        f[at + 16..at + 24].copy_from_slice(&va.to_le_bytes());
        f[at + 32..at + 40].copy_from_slice(&filesz.to_le_bytes());
        f[at + 40..at + 48].copy_from_slice(&memsz.to_le_bytes());
    };
    f[code_at..code_at + code.len()].copy_from_slice(code);
    let text_end = (code_at + code.len()) as u64;
    ph(&mut f, 64, PF_R | PF_X, 0, 0x400000, text_end, text_end);
    // The data segment follows the text's pages, at the same offset modulo the page size.
    let data_off = f.len() as u64;
    let data_va = 0x400000 + data_off;
    f.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    ph(&mut f, 64 + 56, PF_R | PF_W, data_off, data_va, 8, 8 + bss);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_executable_gives_its_segments_entry_and_headers() {
        let f = minimal(&[0x90, 0xf4], 0x3000);
        let img = parse(&f).unwrap();
        assert_eq!(img.entry, 0x4000b0);
        assert_eq!(img.phdr, 0x400040, "the headers' offset mapped by the first segment");
        assert_eq!(img.phnum, 2);
        assert_eq!(img.segments.len(), 2);
        assert_eq!(img.segments[0].prot, Prot::READ | Prot::EXEC);
        assert_eq!(
            img.segments[1],
            Segment { vaddr: 0x401000, memsz: 0x3008, filesz: 8, offset: 0x1000, prot: Prot::READ | Prot::WRITE }
        );
        assert_eq!(img.end, 0x405000);
    }

    #[test]
    fn what_a_static_loader_cannot_run_is_refused_by_name() {
        let f = minimal(&[0xf4], 0);
        assert_eq!(parse(b"#!/bin/sh\n").unwrap_err(), ElfError::NotElf);
        assert_eq!(parse(&f[..40]).unwrap_err(), ElfError::Truncated);
        let mut g = f.clone();
        g[4] = 1;
        assert_eq!(parse(&g).unwrap_err(), ElfError::NotElf64Le);
        let mut g = f.clone();
        g[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(parse(&g).unwrap_err(), ElfError::Machine(183));
        let mut g = f.clone();
        g[16..18].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(parse(&g).unwrap_err(), ElfError::Type(1));
        // PT_INTERP: dynamically linked, and the message says what to do.
        let mut g = f.clone();
        g[64 + 56..64 + 60].copy_from_slice(&PT_INTERP.to_le_bytes());
        let e = parse(&g).unwrap_err();
        assert_eq!(e, ElfError::Dynamic);
        assert!(alloc::format!("{e}").contains("gcc -static"));
        // File size above memory size; bytes beyond the file.
        let mut g = f.clone();
        g[64 + 56 + 32..64 + 56 + 40].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(
            parse(&g).unwrap_err(),
            ElfError::Segment { index: 1, why: "its file size is larger than its memory size" }
        );
        let mut g = f.clone();
        g[64 + 56 + 8..64 + 56 + 16].copy_from_slice(&0x2000u64.to_le_bytes());
        g[64 + 56 + 16..64 + 56 + 24].copy_from_slice(&0x402000u64.to_le_bytes());
        assert_eq!(parse(&g).unwrap_err(), ElfError::Segment { index: 1, why: "its bytes lie outside the file" });
        // Overlapping segments.
        let mut g = f.clone();
        g[64 + 56 + 8..64 + 56 + 16].copy_from_slice(&0u64.to_le_bytes());
        g[64 + 56 + 16..64 + 56 + 24].copy_from_slice(&0x400000u64.to_le_bytes());
        assert_eq!(parse(&g).unwrap_err(), ElfError::Segment { index: 1, why: "it overlaps an earlier segment" });
    }

    #[test]
    fn a_pie_is_placed_at_its_base() {
        let mut f = minimal(&[0xf4], 0);
        f[16..18].copy_from_slice(&ET_DYN.to_le_bytes());
        let img = parse(&f).unwrap();
        assert_eq!(img.entry, PIE_BASE + 0x4000b0);
        assert_eq!(img.segments[0].vaddr, PIE_BASE + 0x400000);
    }
}
