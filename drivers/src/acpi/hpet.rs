//! HPET (IA-PC High Precision Event Timer table): where the event-timer block's registers are.
//! The kernel counts TSC cycles against the block's main counter when neither CPUID nor
//! kvmclock names the TSC frequency and no PM timer works; the counter's period comes from
//! the block's own capabilities register (`crate::tsc::hpet_period_fs`), not from the table.

use super::{AcpiError, SDT_HEADER_LEN, u32_at, u64_at};

/// The table's fixed part: the header, the block id (4), the base address (a 12-byte
/// generic address structure), the HPET number (1), the minimum tick (2), page protection (1).
const HPET_LEN: usize = SDT_HEADER_LEN + 4 + 12 + 1 + 2 + 1;

/// The generic address structure's address space for system memory.
const SYSTEM_MEMORY: u8 = 0;

/// The event-timer block the HPET table describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hpet {
    /// Physical address of its registers (1 KiB), when they are in system memory.
    pub base: Option<u64>,
    /// The generic address structure's address space id (0: system memory).
    pub address_space: u8,
    /// The event timer block id: hardware revision (bits 7..0), timers − 1 (12..8), vendor
    /// (31..16).
    pub block_id: u32,
    /// The HPET's sequence number.
    pub number: u8,
}

/// Parses an HPET table (the whole table, header included).
pub fn parse(table: &[u8]) -> Result<Hpet, AcpiError> {
    if table.len() < HPET_LEN {
        return Err(AcpiError::BadLength { signature: *b"HPET", length: table.len() as u32 });
    }
    let address_space = table[SDT_HEADER_LEN + 4];
    let address = u64_at(table, SDT_HEADER_LEN + 8);
    Ok(Hpet {
        base: (address_space == SYSTEM_MEMORY && address != 0).then_some(address),
        address_space,
        block_id: u32_at(table, SDT_HEADER_LEN),
        number: table[SDT_HEADER_LEN + 16],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HPET table as QEMU's q35 builds it: block 0x8086a201, registers at 0xfed00000.
    fn qemu_hpet(address_space: u8) -> [u8; HPET_LEN] {
        let mut t = [0u8; HPET_LEN];
        t[..4].copy_from_slice(b"HPET");
        t[4..8].copy_from_slice(&(HPET_LEN as u32).to_le_bytes());
        t[8] = 1;
        t[36..40].copy_from_slice(&0x8086_a201u32.to_le_bytes());
        t[40] = address_space;
        t[41] = 64;
        t[44..52].copy_from_slice(&0xfed0_0000u64.to_le_bytes());
        t
    }

    #[test]
    fn base_in_system_memory() {
        let h = parse(&qemu_hpet(0)).unwrap();
        assert_eq!(h.base, Some(0xfed0_0000));
        assert_eq!(h.block_id, 0x8086_a201);
        assert_eq!(h.number, 0);
    }

    #[test]
    fn base_elsewhere_is_not_used() {
        let h = parse(&qemu_hpet(1)).unwrap();
        assert_eq!(h.base, None);
        assert_eq!(h.address_space, 1);
    }

    #[test]
    fn short_table_is_refused() {
        let t = qemu_hpet(0);
        assert!(matches!(
            parse(&t[..50]),
            Err(AcpiError::BadLength { signature: [b'H', b'P', b'E', b'T'], length: 50 })
        ));
    }
}
