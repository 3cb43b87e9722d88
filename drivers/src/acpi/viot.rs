//! VIOT (Virtual I/O Translation table): which PCI endpoints sit behind which virtio-iommu.
//! QEMU emits it when a `virtio-iommu-pci` is present. Endpoint ids are what the virtio-iommu
//! ATTACH request takes.

use super::{AcpiError, SDT_HEADER_LEN, u16_at, u32_at, u64_at};
use alloc::vec::Vec;

/// Where an IOMMU lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuLocation {
    /// A virtio-iommu PCI function: segment and BDF.
    Pci {
        /// PCI segment group.
        segment: u16,
        /// Bus, device and function, as `bus << 8 | dev << 3 | fn`.
        bdf: u16,
    },
    /// A virtio-iommu MMIO device at this base address.
    Mmio {
        /// Physical base address of its registers.
        base: u64,
    },
}

/// An IOMMU node, identified by its offset in the table (what endpoint nodes point at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iommu {
    /// Offset of the node in the VIOT.
    pub node_offset: u16,
    /// Where it is.
    pub location: IommuLocation,
}

/// A range of PCI endpoints translated by one IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciRange {
    /// Endpoint id of `bdf_start`; ids increase with the BDF.
    pub endpoint_start: u32,
    /// First PCI segment.
    pub segment_start: u16,
    /// Last PCI segment.
    pub segment_end: u16,
    /// First BDF.
    pub bdf_start: u16,
    /// Last BDF.
    pub bdf_end: u16,
    /// Offset of the IOMMU node.
    pub iommu: u16,
}

/// The parsed VIOT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viot {
    /// IOMMUs.
    pub iommus: Vec<Iommu>,
    /// PCI endpoint ranges.
    pub pci_ranges: Vec<PciRange>,
    /// MMIO endpoints: (endpoint id, base address, iommu node offset).
    pub mmio_endpoints: Vec<(u32, u64, u16)>,
}

impl Viot {
    /// The endpoint id and IOMMU for a PCI function, if it is translated.
    pub fn endpoint_for(&self, segment: u16, bdf: u16) -> Option<(u32, &Iommu)> {
        self.pci_ranges.iter().find_map(|r| {
            let inside =
                (r.segment_start..=r.segment_end).contains(&segment) && (r.bdf_start..=r.bdf_end).contains(&bdf);
            let iommu = self.iommus.iter().find(|i| i.node_offset == r.iommu)?;
            inside.then(|| (r.endpoint_start + u32::from(bdf - r.bdf_start), iommu))
        })
    }
}

/// Parses a whole VIOT (header included, checksum already verified).
pub fn parse(table: &[u8]) -> Result<Viot, AcpiError> {
    let bad = |offset| AcpiError::Truncated { signature: *b"VIOT", offset };
    if table.len() < SDT_HEADER_LEN + 12 {
        return Err(AcpiError::BadLength { signature: *b"VIOT", length: table.len() as u32 });
    }
    let count = u16_at(table, 36);
    let mut off = usize::from(u16_at(table, 38));
    let mut viot = Viot::default();
    for _ in 0..count {
        let node = table.get(off..off + 4).ok_or(bad(off))?;
        let len = usize::from(u16_at(node, 2));
        let node = table.get(off..off + len).filter(|_| len >= 4).ok_or(bad(off))?;
        let need = |n: usize| if len < n { Err(bad(off)) } else { Ok(()) };
        match node[0] {
            1 => {
                need(24)?;
                viot.pci_ranges.push(PciRange {
                    endpoint_start: u32_at(node, 4),
                    segment_start: u16_at(node, 8),
                    segment_end: u16_at(node, 10),
                    bdf_start: u16_at(node, 12),
                    bdf_end: u16_at(node, 14),
                    iommu: u16_at(node, 16),
                });
            }
            2 => {
                need(24)?;
                viot.mmio_endpoints.push((u32_at(node, 4), u64_at(node, 8), u16_at(node, 16)));
            }
            3 => {
                need(16)?;
                viot.iommus.push(Iommu {
                    node_offset: off as u16,
                    location: IommuLocation::Pci { segment: u16_at(node, 6), bdf: u16_at(node, 8) },
                });
            }
            4 => {
                need(16)?;
                viot.iommus
                    .push(Iommu { node_offset: off as u16, location: IommuLocation::Mmio { base: u64_at(node, 8) } });
            }
            _ => {}
        }
        off += len;
    }
    Ok(viot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::testutil::table;

    /// VIOT as QEMU 7.2 builds it for one virtio-iommu at 00:03.0 covering bus 0.
    fn qemu_like() -> Vec<u8> {
        let mut body = vec![0u8; 12];
        body[0..2].copy_from_slice(&2u16.to_le_bytes());
        body[2..4].copy_from_slice(&48u16.to_le_bytes());
        // iommu node at offset 48
        let mut iommu = vec![0u8; 16];
        iommu[0] = 3;
        iommu[2..4].copy_from_slice(&16u16.to_le_bytes());
        iommu[8..10].copy_from_slice(&0x18u16.to_le_bytes());
        body.extend_from_slice(&iommu);
        let mut range = vec![0u8; 24];
        range[0] = 1;
        range[2..4].copy_from_slice(&24u16.to_le_bytes());
        range[4..8].copy_from_slice(&0u32.to_le_bytes());
        range[12..14].copy_from_slice(&0u16.to_le_bytes());
        range[14..16].copy_from_slice(&0xffu16.to_le_bytes());
        range[16..18].copy_from_slice(&48u16.to_le_bytes());
        body.extend_from_slice(&range);
        table(b"VIOT", 0, &body)
    }

    #[test]
    fn finds_endpoint_ids() {
        let v = parse(&qemu_like()).unwrap();
        assert_eq!(v.iommus.len(), 1);
        assert_eq!(v.iommus[0].location, IommuLocation::Pci { segment: 0, bdf: 0x18 });
        let (ep, iommu) = v.endpoint_for(0, 0x20).unwrap();
        assert_eq!(ep, 0x20);
        assert_eq!(iommu.node_offset, 48);
        assert!(v.endpoint_for(0, 0x100).is_none());
        assert!(v.endpoint_for(1, 0x20).is_none());
    }

    #[test]
    fn nodes_past_the_end_are_errors() {
        let mut t = qemu_like();
        t[36..38].copy_from_slice(&3u16.to_le_bytes());
        assert!(matches!(parse(&t), Err(AcpiError::Truncated { .. })));
        let mut t = qemu_like();
        t[48 + 2] = 0; // zero-length node
        assert!(parse(&t).is_err());
    }
}
