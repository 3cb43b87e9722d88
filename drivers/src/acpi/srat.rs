//! SRAT (System Resource Affinity Table): which CPUs and memory ranges belong to which
//! proximity domain (NUMA node). QEMU emits it with `-numa`.

use super::{AcpiError, SDT_HEADER_LEN, subtables, u32_at, u64_at};
use alloc::vec::Vec;

/// A CPU's proximity domain (from a local APIC or x2APIC affinity entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuAffinity {
    /// (x2)APIC id.
    pub apic_id: u32,
    /// Proximity domain.
    pub domain: u32,
}

/// A memory range's proximity domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryAffinity {
    /// Proximity domain.
    pub domain: u32,
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub length: u64,
    /// Hot-pluggable (where virtio-mem / DIMMs may appear).
    pub hotpluggable: bool,
    /// Non-volatile.
    pub non_volatile: bool,
}

/// The parsed SRAT: enabled entries only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Srat {
    /// CPU affinities.
    pub cpus: Vec<CpuAffinity>,
    /// Memory affinities.
    pub memory: Vec<MemoryAffinity>,
    /// Proximity domains of generic initiators (devices that initiate memory accesses).
    pub generic_initiators: Vec<u32>,
}

impl Srat {
    /// Distinct proximity domains, sorted.
    pub fn domains(&self) -> Vec<u32> {
        let mut d: Vec<u32> = self
            .cpus
            .iter()
            .map(|c| c.domain)
            .chain(self.memory.iter().map(|m| m.domain))
            .chain(self.generic_initiators.iter().copied())
            .collect();
        d.sort_unstable();
        d.dedup();
        d
    }
}

const BODY: usize = SDT_HEADER_LEN + 12;

/// Parses a whole SRAT (header included, checksum already verified).
pub fn parse(table: &[u8]) -> Result<Srat, AcpiError> {
    let body = table.get(BODY..).ok_or(AcpiError::BadLength { signature: *b"SRAT", length: table.len() as u32 })?;
    let mut srat = Srat::default();
    for sub in subtables(body, *b"SRAT", BODY, false) {
        let (ty, e) = sub?;
        let short = || AcpiError::Truncated { signature: *b"SRAT", offset: 0 };
        match ty {
            0 => {
                if e.len() < 16 {
                    return Err(short());
                }
                if u32_at(e, 4) & 1 != 0 {
                    let domain =
                        u32::from(e[2]) | (u32::from(e[9]) << 8) | (u32::from(e[10]) << 16) | (u32::from(e[11]) << 24);
                    srat.cpus.push(CpuAffinity { apic_id: u32::from(e[3]), domain });
                }
            }
            1 => {
                if e.len() < 40 {
                    return Err(short());
                }
                let flags = u32_at(e, 28);
                if flags & 1 != 0 {
                    srat.memory.push(MemoryAffinity {
                        domain: u32_at(e, 2),
                        base: u64_at(e, 8),
                        length: u64_at(e, 16),
                        hotpluggable: flags & 2 != 0,
                        non_volatile: flags & 4 != 0,
                    });
                }
            }
            2 => {
                if e.len() < 24 {
                    return Err(short());
                }
                if u32_at(e, 12) & 1 != 0 {
                    srat.cpus.push(CpuAffinity { apic_id: u32_at(e, 8), domain: u32_at(e, 4) });
                }
            }
            5 => {
                if e.len() < 32 {
                    return Err(short());
                }
                if u32_at(e, 24) & 1 != 0 {
                    srat.generic_initiators.push(u32_at(e, 4));
                }
            }
            _ => {}
        }
    }
    Ok(srat)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::acpi::testutil::table;

    pub fn lapic(apic: u8, domain: u32, enabled: bool) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e[0] = 0;
        e[1] = 16;
        e[2] = domain as u8;
        e[3] = apic;
        e[4] = enabled as u8;
        e[9..12].copy_from_slice(&domain.to_le_bytes()[1..]);
        e
    }

    pub fn mem(domain: u32, base: u64, len: u64, flags: u32) -> Vec<u8> {
        let mut e = vec![0u8; 40];
        e[0] = 1;
        e[1] = 40;
        e[2..6].copy_from_slice(&domain.to_le_bytes());
        e[8..16].copy_from_slice(&base.to_le_bytes());
        e[16..24].copy_from_slice(&len.to_le_bytes());
        e[28..32].copy_from_slice(&flags.to_le_bytes());
        e
    }

    pub fn srat(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; 12];
        body[0] = 1;
        for e in entries {
            body.extend_from_slice(e);
        }
        table(b"SRAT", 3, &body)
    }

    #[test]
    fn parses_two_nodes_like_qemu() {
        let t = srat(&[
            lapic(0, 0, true),
            lapic(1, 1, true),
            lapic(2, 1, false),
            mem(0, 0, 0xa0000, 1),
            mem(0, 0x10_0000, 0xff0_0000, 1),
            mem(1, 0x1000_0000, 0x1000_0000, 1),
            mem(1, 0x1_0000_0000, 0x4000_0000, 3),
            mem(0, 0, 0, 0),
        ]);
        let s = parse(&t).unwrap();
        assert_eq!(s.cpus, vec![CpuAffinity { apic_id: 0, domain: 0 }, CpuAffinity { apic_id: 1, domain: 1 }]);
        assert_eq!(s.memory.len(), 4);
        assert!(s.memory[3].hotpluggable);
        assert_eq!(s.domains(), vec![0, 1]);
    }

    #[test]
    fn x2apic_and_generic_initiator_entries() {
        let mut x2 = vec![0u8; 24];
        x2[0] = 2;
        x2[1] = 24;
        x2[4..8].copy_from_slice(&3u32.to_le_bytes());
        x2[8..12].copy_from_slice(&300u32.to_le_bytes());
        x2[12] = 1;
        let mut gi = vec![0u8; 32];
        gi[0] = 5;
        gi[1] = 32;
        gi[4..8].copy_from_slice(&7u32.to_le_bytes());
        gi[24] = 1;
        let s = parse(&srat(&[x2, gi])).unwrap();
        assert_eq!(s.cpus, vec![CpuAffinity { apic_id: 300, domain: 3 }]);
        assert_eq!(s.generic_initiators, vec![7]);
    }

    #[test]
    fn short_entries_are_errors() {
        let mut e = lapic(0, 0, true);
        e[1] = 8;
        e.truncate(8);
        assert!(parse(&srat(&[e])).is_err());
        assert!(parse(&[0u8; 20]).is_err());
    }
}
