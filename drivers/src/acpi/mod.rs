//! ACPI tables read from raw bytes: the root-table walk and the tables the `acpi` crate (5.2,
//! the version that builds on stable) does not parse: SRAT, HMAT and VIOT; and the devices a
//! DSDT declares ([`dsdt`]).
//!
//! Everything here is pure: tables are read through [`PhysMem`], so the same code walks QEMU's
//! tables in the kernel and hand-built tables in host tests. Fields are read little-endian from
//! byte offsets (never through references into the table, which may be misaligned), every
//! length is bounds-checked, and checksums are verified. A malformed table is an
//! [`AcpiError`], never a panic.

extern crate alloc;

use alloc::vec::Vec;

pub mod dsdt;
pub mod hmat;
pub mod hpet;
pub mod srat;
pub mod viot;

/// Reads physical memory for the table walk.
pub trait PhysMem {
    /// Copies `buf.len()` bytes from physical address `paddr`, or fails.
    fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), AcpiError>;
}

/// A malformed or missing ACPI structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiError {
    /// Memory at this address could not be read.
    Unreadable(u64),
    /// The RSDP signature is not "RSD PTR ".
    BadRsdpSignature,
    /// A checksum did not sum to zero; the signature names the structure.
    BadChecksum([u8; 4]),
    /// A length field is impossible (too short for its header, or past the table's end).
    BadLength {
        /// The table's signature.
        signature: [u8; 4],
        /// The length field found.
        length: u32,
    },
    /// A subtable runs past the end of its table.
    Truncated {
        /// The table's signature.
        signature: [u8; 4],
        /// Byte offset of the subtable in the table.
        offset: usize,
    },
    /// The root table is not RSDT/XSDT.
    BadRootSignature([u8; 4]),
}

impl core::fmt::Display for AcpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unreadable(a) => write!(f, "ACPI: memory at {a:#x} is not readable"),
            Self::BadRsdpSignature => write!(f, "ACPI: RSDP signature is not 'RSD PTR '"),
            Self::BadChecksum(s) => write!(f, "ACPI: {} checksum does not sum to zero", sig(s)),
            Self::BadLength { signature, length } => {
                write!(f, "ACPI: {} has impossible length {length}", sig(signature))
            }
            Self::Truncated { signature, offset } => {
                write!(f, "ACPI: {} subtable at offset {offset} runs past the table", sig(signature))
            }
            Self::BadRootSignature(s) => write!(f, "ACPI: root table is '{}', not RSDT/XSDT", sig(s)),
        }
    }
}

fn sig(s: &[u8; 4]) -> &str {
    core::str::from_utf8(s).unwrap_or("????")
}

/// One table found through the root table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableRef {
    /// The 4-byte signature, e.g. `*b"APIC"`.
    pub signature: [u8; 4],
    /// Physical address of the header.
    pub paddr: u64,
    /// Length from the header.
    pub length: u32,
    /// Header revision.
    pub revision: u8,
}

impl TableRef {
    /// The signature as text.
    pub fn name(&self) -> &str {
        core::str::from_utf8(&self.signature).unwrap_or("????")
    }
}

/// Header length of every system description table.
pub const SDT_HEADER_LEN: usize = 36;

pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}

fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a.wrapping_add(x)) == 0
}

/// Reads and checksums the whole table whose header is at `paddr`.
pub fn read_table(mem: &impl PhysMem, paddr: u64) -> Result<Vec<u8>, AcpiError> {
    let mut header = [0u8; SDT_HEADER_LEN];
    mem.read(paddr, &mut header)?;
    let mut signature = [0u8; 4];
    signature.copy_from_slice(&header[..4]);
    let length = u32_at(&header, 4);
    if (length as usize) < SDT_HEADER_LEN || length > 16 << 20 {
        return Err(AcpiError::BadLength { signature, length });
    }
    let mut table = alloc::vec![0u8; length as usize];
    mem.read(paddr, &mut table)?;
    if !checksum_ok(&table) {
        return Err(AcpiError::BadChecksum(signature));
    }
    Ok(table)
}

/// Walks RSDP → RSDT/XSDT and lists every table (FADT's DSDT is not followed). Tables whose
/// header cannot be read are skipped with a warning, as Linux does; a bad RSDP or root table is
/// an error.
pub fn list_tables(mem: &impl PhysMem, rsdp_paddr: u64) -> Result<Vec<TableRef>, AcpiError> {
    let mut rsdp = [0u8; 36];
    mem.read(rsdp_paddr, &mut rsdp[..20])?;
    if &rsdp[..8] != b"RSD PTR " {
        return Err(AcpiError::BadRsdpSignature);
    }
    if !checksum_ok(&rsdp[..20]) {
        return Err(AcpiError::BadChecksum(*b"RSDP"));
    }
    let revision = rsdp[15];
    let (root, entry_len) = if revision >= 2 {
        mem.read(rsdp_paddr, &mut rsdp)?;
        if !checksum_ok(&rsdp) {
            return Err(AcpiError::BadChecksum(*b"RSDP"));
        }
        match u64_at(&rsdp, 24) {
            0 => (u64::from(u32_at(&rsdp, 16)), 4),
            x => (x, 8),
        }
    } else {
        (u64::from(u32_at(&rsdp, 16)), 4)
    };
    let root_table = read_table(mem, root)?;
    let want: &[u8; 4] = if entry_len == 8 { b"XSDT" } else { b"RSDT" };
    if &root_table[..4] != want {
        let mut s = [0u8; 4];
        s.copy_from_slice(&root_table[..4]);
        return Err(AcpiError::BadRootSignature(s));
    }
    let mut out = Vec::new();
    for entry in root_table[SDT_HEADER_LEN..].chunks_exact(entry_len) {
        let paddr = if entry_len == 8 { u64_at(entry, 0) } else { u64::from(u32_at(entry, 0)) };
        let mut header = [0u8; SDT_HEADER_LEN];
        if mem.read(paddr, &mut header).is_err() {
            log::warn!("ACPI: skipping unreadable table at {paddr:#x}");
            continue;
        }
        let mut signature = [0u8; 4];
        signature.copy_from_slice(&header[..4]);
        out.push(TableRef { signature, paddr, length: u32_at(&header, 4), revision: header[8] });
    }
    Ok(out)
}

/// Iterates over the `(type, bytes)` subtables of a table body that uses the common
/// `type: u8, length: u8` subtable header (SRAT) or a `type: u16, reserved: u16, length: u32`
/// header (HMAT). Yields an error for a subtable that is too short or runs past the end.
pub(crate) fn subtables<'a>(
    body: &'a [u8],
    signature: [u8; 4],
    base_offset: usize,
    wide: bool,
) -> impl Iterator<Item = Result<(u16, &'a [u8]), AcpiError>> + 'a {
    let mut off = 0usize;
    let mut failed = false;
    core::iter::from_fn(move || {
        if failed || off >= body.len() {
            return None;
        }
        let rest = &body[off..];
        let (ty, len, min) = if wide {
            if rest.len() < 8 {
                failed = true;
                return Some(Err(AcpiError::Truncated { signature, offset: base_offset + off }));
            }
            (u16_at(rest, 0), u32_at(rest, 4) as usize, 8)
        } else {
            if rest.len() < 2 {
                failed = true;
                return Some(Err(AcpiError::Truncated { signature, offset: base_offset + off }));
            }
            (u16::from(rest[0]), usize::from(rest[1]), 2)
        };
        if len < min || len > rest.len() {
            failed = true;
            return Some(Err(AcpiError::Truncated { signature, offset: base_offset + off }));
        }
        off += len;
        Some(Ok((ty, &rest[..len])))
    })
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use alloc::{collections::BTreeMap, vec};

    /// Physical memory made of placed byte blobs.
    #[derive(Default)]
    pub struct Mem(pub BTreeMap<u64, Vec<u8>>);

    impl PhysMem for Mem {
        fn read(&self, paddr: u64, buf: &mut [u8]) -> Result<(), AcpiError> {
            let (base, blob) = self.0.range(..=paddr).next_back().ok_or(AcpiError::Unreadable(paddr))?;
            let off = (paddr - base) as usize;
            let src = blob.get(off..off + buf.len()).ok_or(AcpiError::Unreadable(paddr))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    /// Builds a table with a valid header and checksum around `body`.
    pub fn table(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; SDT_HEADER_LEN];
        t[..4].copy_from_slice(sig);
        t[8] = revision;
        t.extend_from_slice(body);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    pub fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let sum = t.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        t[at] = 0u8.wrapping_sub(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::{testutil::*, *};
    use alloc::vec;

    fn rsdp_v0(rsdt: u32) -> Vec<u8> {
        let mut r = vec![0u8; 20];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[16..20].copy_from_slice(&rsdt.to_le_bytes());
        fix_checksum(&mut r, 8);
        r
    }

    fn machine() -> Mem {
        let mut m = Mem::default();
        m.0.insert(0xf0000, rsdp_v0(0x1000));
        let mut entries = Vec::new();
        for a in [0x2000u32, 0x3000] {
            entries.extend_from_slice(&a.to_le_bytes());
        }
        m.0.insert(0x1000, table(b"RSDT", 1, &entries));
        m.0.insert(0x2000, table(b"APIC", 3, &[0; 8]));
        m.0.insert(0x3000, table(b"MCFG", 1, &[0; 24]));
        m
    }

    #[test]
    fn walks_an_rsdt() {
        let tables = list_tables(&machine(), 0xf0000).unwrap();
        let names: Vec<_> = tables.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["APIC", "MCFG"]);
        assert_eq!(tables[0].paddr, 0x2000);
        assert_eq!(tables[0].length, 44);
        assert_eq!(tables[0].revision, 3);
    }

    #[test]
    fn walks_an_xsdt_from_a_v2_rsdp() {
        let mut m = machine();
        let mut r = rsdp_v0(0);
        r[15] = 2;
        r.resize(36, 0);
        r[20..24].copy_from_slice(&36u32.to_le_bytes());
        r[24..32].copy_from_slice(&0x5000u64.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        fix_checksum(&mut r, 32);
        m.0.insert(0xf0000, r);
        m.0.insert(0x5000, table(b"XSDT", 1, &0x2000u64.to_le_bytes()));
        let tables = list_tables(&m, 0xf0000).unwrap();
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].name(), "APIC");
    }

    #[test]
    fn bad_rsdp_and_checksums_are_errors() {
        let mut m = machine();
        m.0.get_mut(&0xf0000).unwrap()[0] = b'X';
        assert_eq!(list_tables(&m, 0xf0000), Err(AcpiError::BadRsdpSignature));
        let mut m = machine();
        m.0.get_mut(&0xf0000).unwrap()[8] ^= 1;
        assert_eq!(list_tables(&m, 0xf0000), Err(AcpiError::BadChecksum(*b"RSDP")));
        let mut m = machine();
        m.0.get_mut(&0x2000).unwrap()[40] = 7;
        assert_eq!(read_table(&m, 0x2000), Err(AcpiError::BadChecksum(*b"APIC")));
        assert_eq!(list_tables(&m, 0x1234_5678), Err(AcpiError::Unreadable(0x1234_5678)));
    }

    #[test]
    fn impossible_lengths_are_errors() {
        let mut m = machine();
        m.0.get_mut(&0x2000).unwrap()[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(read_table(&m, 0x2000), Err(AcpiError::BadLength { length: 10, .. })));
        let mut m = machine();
        m.0.get_mut(&0x2000).unwrap()[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(read_table(&m, 0x2000), Err(AcpiError::Unreadable(0x2000)));
    }

    #[test]
    fn unreadable_tables_are_skipped() {
        let mut m = machine();
        m.0.remove(&0x3000);
        let tables = list_tables(&m, 0xf0000).unwrap();
        assert_eq!(tables.len(), 1);
    }

    #[test]
    fn truncated_subtables_are_reported() {
        let body = [1u8, 4, 0, 0, 2, 9, 0];
        let items: Vec<_> = subtables(&body, *b"SRAT", 48, false).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert_eq!(items[1], Err(AcpiError::Truncated { signature: *b"SRAT", offset: 52 }));
        let zero_len = [1u8, 0];
        let items: Vec<_> = subtables(&zero_len, *b"SRAT", 0, false).collect();
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err());
    }
}
