//! HMAT (Heterogeneous Memory Attribute Table): latency and bandwidth between initiator and
//! memory proximity domains. QEMU builds it from `-numa hmat-lb` with `-machine hmat=on`; the
//! cost model reads it.

use super::{AcpiError, SDT_HEADER_LEN, subtables, u16_at, u32_at, u64_at};
use alloc::vec::Vec;

/// What a locality entry measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// Access latency, picoseconds.
    AccessLatency,
    /// Read latency, picoseconds.
    ReadLatency,
    /// Write latency, picoseconds.
    WriteLatency,
    /// Access bandwidth, MB/s.
    AccessBandwidth,
    /// Read bandwidth, MB/s.
    ReadBandwidth,
    /// Write bandwidth, MB/s.
    WriteBandwidth,
}

impl DataType {
    fn from_raw(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::AccessLatency,
            1 => Self::ReadLatency,
            2 => Self::WriteLatency,
            3 => Self::AccessBandwidth,
            4 => Self::ReadBandwidth,
            5 => Self::WriteBandwidth,
            _ => return None,
        })
    }

    /// Whether the value is a latency (picoseconds) rather than a bandwidth (MB/s).
    pub fn is_latency(self) -> bool {
        matches!(self, Self::AccessLatency | Self::ReadLatency | Self::WriteLatency)
    }
}

/// One (initiator, target) measurement of memory (not cache) hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locality {
    /// Initiator proximity domain.
    pub initiator: u32,
    /// Memory proximity domain.
    pub target: u32,
    /// What is measured.
    pub data_type: DataType,
    /// Picoseconds for latencies, MB/s for bandwidths.
    pub value: u64,
}

/// A memory domain's attached initiator (Memory Proximity Domain Attributes structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainAttributes {
    /// The memory domain.
    pub memory: u32,
    /// Its attached initiator, if the entry says it is valid.
    pub initiator: Option<u32>,
}

/// The parsed HMAT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hmat {
    /// Domain attributes.
    pub domains: Vec<DomainAttributes>,
    /// Memory-hierarchy locality values; entries with no information (0) are left out, and
    /// unreachable pairs (0xFFFF) too.
    pub localities: Vec<Locality>,
    /// Count of memory-side cache structures (not otherwise parsed yet).
    pub caches: usize,
}

impl Hmat {
    /// The value for one pair and data type, if given.
    pub fn get(&self, initiator: u32, target: u32, data_type: DataType) -> Option<u64> {
        self.localities
            .iter()
            .find(|l| l.initiator == initiator && l.target == target && l.data_type == data_type)
            .map(|l| l.value)
    }
}

const BODY: usize = SDT_HEADER_LEN + 4;

/// Parses a whole HMAT (header included, checksum already verified).
pub fn parse(table: &[u8]) -> Result<Hmat, AcpiError> {
    let body = table.get(BODY..).ok_or(AcpiError::BadLength { signature: *b"HMAT", length: table.len() as u32 })?;
    let mut hmat = Hmat::default();
    let mut offset = BODY;
    for sub in subtables(body, *b"HMAT", BODY, true) {
        let (ty, s) = sub?;
        let short = AcpiError::Truncated { signature: *b"HMAT", offset };
        offset += s.len();
        match ty {
            0 => {
                if s.len() < 40 {
                    return Err(short);
                }
                let valid = u16_at(s, 8) & 1 != 0;
                hmat.domains.push(DomainAttributes { memory: u32_at(s, 16), initiator: valid.then(|| u32_at(s, 12)) });
            }
            1 => {
                if s.len() < 32 {
                    return Err(short);
                }
                let hierarchy = s[8] & 0xf;
                let Some(data_type) = DataType::from_raw(s[9]) else { continue };
                let ni = u32_at(s, 12) as usize;
                let nt = u32_at(s, 16) as usize;
                let unit = u64_at(s, 24);
                let need = ni
                    .checked_mul(4)
                    .and_then(|a| nt.checked_mul(4).map(|b| a + b))
                    .and_then(|a| ni.checked_mul(nt).and_then(|c| c.checked_mul(2)).map(|c| a + c + 32));
                if need.is_none_or(|n| n > s.len()) {
                    return Err(short);
                }
                if hierarchy != 0 {
                    continue; // cache levels: not used by the cost model
                }
                let inits = 32;
                let targs = inits + 4 * ni;
                let vals = targs + 4 * nt;
                for i in 0..ni {
                    for t in 0..nt {
                        let raw = u16_at(s, vals + 2 * (i * nt + t));
                        if raw == 0 || raw == 0xffff {
                            continue;
                        }
                        hmat.localities.push(Locality {
                            initiator: u32_at(s, inits + 4 * i),
                            target: u32_at(s, targs + 4 * t),
                            data_type,
                            value: u64::from(raw).saturating_mul(unit),
                        });
                    }
                }
            }
            2 => hmat.caches += 1,
            _ => {}
        }
    }
    Ok(hmat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::table;

    fn sub(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut s = vec![0u8; 8];
        s[..2].copy_from_slice(&ty.to_le_bytes());
        s.extend_from_slice(body);
        let len = s.len() as u32;
        s[4..8].copy_from_slice(&len.to_le_bytes());
        s
    }

    fn lb(data_type: u8, unit: u64, inits: &[u32], targs: &[u32], vals: &[u16]) -> Vec<u8> {
        let mut b = vec![0u8; 24];
        b[1] = data_type;
        b[4..8].copy_from_slice(&(inits.len() as u32).to_le_bytes());
        b[8..12].copy_from_slice(&(targs.len() as u32).to_le_bytes());
        b[16..24].copy_from_slice(&unit.to_le_bytes());
        for x in inits.iter().chain(targs) {
            b.extend_from_slice(&x.to_le_bytes());
        }
        for v in vals {
            b.extend_from_slice(&v.to_le_bytes());
        }
        sub(1, &b)
    }

    fn hmat(subs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; 4];
        for s in subs {
            body.extend_from_slice(s);
        }
        table(b"HMAT", 2, &body)
    }

    #[test]
    fn parses_latency_and_bandwidth_matrices() {
        let mut attr = vec![0u8; 32];
        attr[0] = 1;
        attr[4..8].copy_from_slice(&0u32.to_le_bytes());
        attr[8..12].copy_from_slice(&1u32.to_le_bytes());
        let t = hmat(&[
            sub(0, &attr),
            lb(0, 1000, &[0, 1], &[0, 1], &[10, 20, 0, 0xffff]),
            lb(3, 1, &[0], &[0, 1], &[10000, 5000]),
        ]);
        let h = parse(&t).unwrap();
        assert_eq!(h.domains, vec![DomainAttributes { memory: 1, initiator: Some(0) }]);
        assert_eq!(h.get(0, 0, DataType::AccessLatency), Some(10_000));
        assert_eq!(h.get(0, 1, DataType::AccessLatency), Some(20_000));
        assert_eq!(h.get(1, 0, DataType::AccessLatency), None, "0 means no information");
        assert_eq!(h.get(1, 1, DataType::AccessLatency), None, "0xffff means unreachable");
        assert_eq!(h.get(0, 1, DataType::AccessBandwidth), Some(5000));
        assert!(DataType::AccessLatency.is_latency());
    }

    #[test]
    fn matrices_larger_than_their_structure_are_errors() {
        let mut s = lb(0, 1, &[0, 1], &[0, 1], &[1, 2, 3, 4]);
        // Claim 1000 initiators.
        s[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(parse(&hmat(&[s])), Err(AcpiError::Truncated { .. })));
    }
}
