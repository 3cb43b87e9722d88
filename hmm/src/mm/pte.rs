//! Page-table entries in the x86_64 format, with the software encodings of non-present entries.
//!
//! A leaf entry is either empty, present (the hardware format: P, RW, US, A, D, PS, NX and the
//! frame), or a *software* entry with P clear that the fault handler recognises, the swap-entry
//! family of Linux:
//!
//! | kind | what it means | Linux |
//! |---|---|---|
//! | [`SoftKind::ProtNone`] | a page kept mapped under `PROT_NONE` | `pte_protnone` |
//! | [`SoftKind::DevicePrivate`] | the page lives in device-private memory | device-private swap entry |
//! | [`SoftKind::Migration`] | the page is being migrated; faults wait | migration entry |
//! | [`SoftKind::Exclusive`] | a device holds the page exclusively | device-exclusive entry |
//!
//! Non-present layout: bit 0 = 0, bits 1..=3 = kind, bit 4 = write, bit 5 = young, bit 6 =
//! dirty, bit 7 kept clear (PS), bit 8 = huge (a PMD-level software entry), bits 12..=51 = frame.
//! Encoding is pure data, so the kernel's real tables and the host tests' fake ones share it.

use crate::addr::Pfn;

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User-accessible.
pub const US: u64 = 1 << 2;
/// Accessed (set by the CPU).
pub const A: u64 = 1 << 5;
/// Dirty (set by the CPU).
pub const D: u64 = 1 << 6;
/// Page size: a leaf at PMD (2 MiB) or PUD (1 GiB) level.
pub const PS: u64 = 1 << 7;
/// No-execute.
pub const NX: u64 = 1 << 63;
/// The frame-number bits.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

const SOFT_KIND_SHIFT: u32 = 1;
const SOFT_KIND_MASK: u64 = 0b111 << SOFT_KIND_SHIFT;
const SOFT_WRITE: u64 = 1 << 4;
const SOFT_YOUNG: u64 = 1 << 5;
const SOFT_DIRTY: u64 = 1 << 6;
const SOFT_HUGE: u64 = 1 << 8;

/// The kind of a non-present software entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftKind {
    /// A page mapped under `PROT_NONE`: kept, but every access faults.
    ProtNone = 1,
    /// The page has moved to device-private memory; the frame is the device frame.
    DevicePrivate = 2,
    /// A migration is in progress; the frame is the source page.
    Migration = 3,
    /// A device holds the page exclusively (atomic access); a CPU access restores it.
    Exclusive = 4,
}

impl SoftKind {
    fn from_bits(bits: u64) -> Option<Self> {
        Some(match bits {
            1 => Self::ProtNone,
            2 => Self::DevicePrivate,
            3 => Self::Migration,
            4 => Self::Exclusive,
            _ => return None,
        })
    }
}

/// A present leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Present {
    /// The (first) frame.
    pub pfn: Pfn,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Dirty.
    pub dirty: bool,
    /// Accessed.
    pub young: bool,
    /// A 2 MiB leaf (only meaningful at PMD level).
    pub huge: bool,
}

/// A non-present software leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Soft {
    /// What the entry stands for.
    pub kind: SoftKind,
    /// The frame it refers to.
    pub pfn: Pfn,
    /// The mapping was (and will be again) writable.
    pub write: bool,
    /// The page was accessed.
    pub young: bool,
    /// The page was dirty when the entry was installed (P4: never lose the dirty bit).
    pub dirty: bool,
    /// Stands for a 2 MiB mapping.
    pub huge: bool,
    /// For [`SoftKind::ProtNone`]: the mapping is executable once restored.
    pub exec: bool,
}

/// A decoded leaf entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pte {
    /// Nothing mapped.
    None,
    /// A hardware mapping.
    Present(Present),
    /// A software entry the fault handler interprets.
    Soft(Soft),
    /// Bits this encoding does not produce (a corrupted entry).
    Bad(u64),
}

impl Pte {
    /// Decodes a raw leaf entry (`pmd_level`: the entry is a PMD-level leaf).
    pub fn decode(raw: u64) -> Self {
        if raw == 0 {
            return Self::None;
        }
        let pfn = Pfn((raw & ADDR_MASK) >> 12);
        if raw & P != 0 {
            return Self::Present(Present {
                pfn,
                write: raw & RW != 0,
                exec: raw & NX == 0,
                dirty: raw & D != 0,
                young: raw & A != 0,
                huge: raw & PS != 0,
            });
        }
        let Some(kind) = SoftKind::from_bits((raw & SOFT_KIND_MASK) >> SOFT_KIND_SHIFT) else {
            return Self::Bad(raw);
        };
        Self::Soft(Soft {
            kind,
            pfn,
            write: raw & SOFT_WRITE != 0,
            young: raw & SOFT_YOUNG != 0,
            dirty: raw & SOFT_DIRTY != 0,
            huge: raw & SOFT_HUGE != 0,
            exec: raw & NX == 0,
        })
    }

    /// The raw entry.
    pub fn encode(self) -> u64 {
        match self {
            Self::None => 0,
            Self::Bad(raw) => raw,
            Self::Present(p) => {
                let mut raw = P | US | (p.pfn.0 << 12);
                if p.write {
                    raw |= RW;
                }
                if !p.exec {
                    raw |= NX;
                }
                if p.dirty {
                    raw |= D;
                }
                if p.young {
                    raw |= A;
                }
                if p.huge {
                    raw |= PS;
                }
                raw
            }
            Self::Soft(s) => {
                let mut raw = ((s.kind as u64) << SOFT_KIND_SHIFT) | (s.pfn.0 << 12);
                if s.write {
                    raw |= SOFT_WRITE;
                }
                if s.young {
                    raw |= SOFT_YOUNG;
                }
                if s.dirty {
                    raw |= SOFT_DIRTY;
                }
                if s.huge {
                    raw |= SOFT_HUGE;
                }
                if !s.exec {
                    raw |= NX;
                }
                raw
            }
        }
    }

    /// The frame this entry refers to, if any.
    pub fn pfn(self) -> Option<Pfn> {
        match self {
            Self::Present(p) => Some(p.pfn),
            Self::Soft(s) => Some(s.pfn),
            Self::None | Self::Bad(_) => None,
        }
    }
}

/// Whether a raw entry at an upper level points to a next-level table (present, not a leaf).
pub fn is_table(raw: u64) -> bool {
    raw & P != 0 && raw & PS == 0
}

/// The raw entry of an upper-level table pointer; permissions are decided at the leaf.
pub fn table_entry(pfn: Pfn) -> u64 {
    P | RW | US | (pfn.0 << 12)
}

/// The frame of a raw entry.
pub fn raw_pfn(raw: u64) -> Pfn {
    Pfn((raw & ADDR_MASK) >> 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_round_trips() {
        let p = Present { pfn: Pfn(0x12345), write: true, exec: false, dirty: true, young: false, huge: true };
        let raw = Pte::Present(p).encode();
        assert_eq!(raw & (P | RW | US | D | PS | NX), P | RW | US | D | PS | NX);
        assert_eq!(Pte::decode(raw), Pte::Present(p));
    }

    #[test]
    fn soft_entries_are_not_present_and_round_trip() {
        for kind in [SoftKind::ProtNone, SoftKind::DevicePrivate, SoftKind::Migration, SoftKind::Exclusive] {
            for bits in 0..32u32 {
                let s = Soft {
                    kind,
                    pfn: Pfn(0xf_ffff_ffff),
                    write: bits & 1 != 0,
                    young: bits & 2 != 0,
                    dirty: bits & 4 != 0,
                    huge: bits & 8 != 0,
                    exec: bits & 16 != 0,
                };
                let raw = Pte::Soft(s).encode();
                assert_eq!(raw & P, 0, "{kind:?} must fault");
                assert_eq!(raw & PS, 0);
                assert_eq!(Pte::decode(raw), Pte::Soft(s));
            }
        }
    }

    #[test]
    fn unknown_software_bits_are_bad() {
        assert_eq!(Pte::decode(0b1110), Pte::Bad(0b1110));
        assert_eq!(Pte::decode(0), Pte::None);
    }
}
