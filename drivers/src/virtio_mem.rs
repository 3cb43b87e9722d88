//! The virtio-mem protocol (virtio 1.2, section 5.15): the device configuration, the guest
//! requests (PLUG, UNPLUG, UNPLUG_ALL, STATE) and their responses, and the checks a driver
//! makes before it sends one.
//!
//! A virtio-mem device owns a region of guest-physical memory (`addr`, `region_size`) made of
//! `block_size` blocks. The host asks for an amount (`requested_size`); the driver plugs and
//! unplugs blocks inside the usable part of the region with requests, and may touch only
//! plugged blocks. The kernel's driver moves these bytes over a virtqueue.

use alloc::vec::Vec;

/// The one virtqueue: guest requests.
pub const GUEST_QUEUE: u16 = 0;
/// `VIRTIO_MEM_F_ACPI_PXM`: `node_id` is an ACPI proximity domain.
pub const F_ACPI_PXM: u64 = 1 << 0;
/// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`: the driver must not read unplugged memory (a driver
/// that offers it acks it).
pub const F_UNPLUGGED_INACCESSIBLE: u64 = 1 << 1;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;

/// Bytes of a request.
pub const REQUEST: usize = 24;
/// Bytes of a response (type, padding, state).
pub const RESPONSE: usize = 10;

/// Configuration-space offsets of the fields of [`Config`].
pub mod offset {
    /// `block_size`, u64.
    pub const BLOCK_SIZE: usize = 0;
    /// `node_id`, u16.
    pub const NODE_ID: usize = 8;
    /// `addr`, u64.
    pub const ADDR: usize = 16;
    /// `region_size`, u64.
    pub const REGION_SIZE: usize = 24;
    /// `usable_region_size`, u64.
    pub const USABLE_REGION_SIZE: usize = 32;
    /// `plugged_size`, u64.
    pub const PLUGGED_SIZE: usize = 40;
    /// `requested_size`, u64.
    pub const REQUESTED_SIZE: usize = 48;
}

/// The device configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// Bytes per block (a power of two).
    pub block_size: u64,
    /// NUMA node (with `F_ACPI_PXM`).
    pub node_id: u16,
    /// Guest-physical start of the region.
    pub addr: u64,
    /// Bytes of the region.
    pub region_size: u64,
    /// Bytes at the start of the region that may be plugged now.
    pub usable_region_size: u64,
    /// Bytes plugged.
    pub plugged_size: u64,
    /// Bytes the host asks the guest to have plugged.
    pub requested_size: u64,
}

/// What went wrong talking to a virtio-mem device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// The configuration makes no sense (named).
    BadConfig(&'static str),
    /// A request outside the usable region, or not block-aligned.
    Range {
        /// Offset in the region.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The device refused (`NACK`): plugging beyond the requested size, for example.
    Nack(&'static str),
    /// The device is busy (`BUSY`): try again later.
    Busy(&'static str),
    /// The device failed the request (`ERROR`).
    Failed(&'static str),
    /// No answer in time.
    Timeout(&'static str),
    /// A response that is not one of the four.
    BadResponse(u16),
    /// The queue or transport failed.
    Device(&'static str),
    /// A block whose state is unknown after an UNPLUG that failed: a STATE request must settle
    /// it before it is plugged again.
    Unsettled {
        /// Region offset of the block.
        offset: u64,
    },
}

impl core::fmt::Display for MemError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadConfig(why) => write!(f, "virtio-mem: bad configuration: {why}"),
            Self::Range { offset, len } => write!(
                f,
                "virtio-mem: {len:#x} bytes at region offset {offset:#x} are not whole blocks of the usable region"
            ),
            Self::Nack(r) => write!(f, "virtio-mem: {r} refused (NACK): more than the host's requested size?"),
            Self::Busy(r) => write!(f, "virtio-mem: {r}: the device is busy; retry later"),
            Self::Failed(r) => write!(f, "virtio-mem: {r} failed on the device (ERROR)"),
            Self::Timeout(r) => write!(f, "virtio-mem: {r} timed out"),
            Self::BadResponse(t) => write!(f, "virtio-mem: unknown response type {t}"),
            Self::Device(why) => write!(f, "virtio-mem: {why}"),
            Self::Unsettled { offset } => write!(
                f,
                "virtio-mem: the block at region offset {offset:#x} is in an unknown state after a failed UNPLUG; \
                 settle it with a STATE request before plugging it"
            ),
        }
    }
}

impl Config {
    /// Checks what a driver relies on: a power-of-two block size of at least 4 KiB, a
    /// block-aligned region, a usable part inside it.
    pub fn validate(&self) -> Result<(), MemError> {
        if !self.block_size.is_power_of_two() || self.block_size < 4096 {
            return Err(MemError::BadConfig("block size is not a power of two of at least 4 KiB"));
        }
        if !self.addr.is_multiple_of(self.block_size) || !self.region_size.is_multiple_of(self.block_size) {
            return Err(MemError::BadConfig("region not aligned to the block size"));
        }
        if self.usable_region_size > self.region_size || self.plugged_size > self.region_size {
            return Err(MemError::BadConfig("usable or plugged size beyond the region"));
        }
        Ok(())
    }

    /// Checks that `[offset, offset + len)` of the region is whole blocks of its usable part;
    /// returns the block count.
    pub fn blocks(&self, offset: u64, len: u64) -> Result<u16, MemError> {
        let bad = MemError::Range { offset, len };
        if self.block_size == 0 || len == 0 || !offset.is_multiple_of(self.block_size) {
            return Err(bad);
        }
        if !len.is_multiple_of(self.block_size) || offset.checked_add(len).is_none_or(|e| e > self.usable_region_size) {
            return Err(bad);
        }
        u16::try_from(len / self.block_size).map_err(|_| bad)
    }
}

/// A guest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Plug `blocks` blocks at guest-physical `addr`.
    Plug {
        /// First byte.
        addr: u64,
        /// Blocks.
        blocks: u16,
    },
    /// Unplug them.
    Unplug {
        /// First byte.
        addr: u64,
        /// Blocks.
        blocks: u16,
    },
    /// Unplug every block (and shrink the usable region).
    UnplugAll,
    /// Ask whether they are plugged.
    State {
        /// First byte.
        addr: u64,
        /// Blocks.
        blocks: u16,
    },
}

impl Request {
    /// Its name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plug { .. } => "PLUG",
            Self::Unplug { .. } => "UNPLUG",
            Self::UnplugAll => "UNPLUG_ALL",
            Self::State { .. } => "STATE",
        }
    }

    /// The little-endian wire form (`struct virtio_mem_req`).
    pub fn encode(&self) -> [u8; REQUEST] {
        let (ty, addr, blocks) = match *self {
            Self::Plug { addr, blocks } => (0u16, addr, blocks),
            Self::Unplug { addr, blocks } => (1, addr, blocks),
            Self::UnplugAll => (2, 0, 0),
            Self::State { addr, blocks } => (3, addr, blocks),
        };
        let mut b = [0u8; REQUEST];
        b[0..2].copy_from_slice(&ty.to_le_bytes());
        b[8..16].copy_from_slice(&addr.to_le_bytes());
        b[16..18].copy_from_slice(&blocks.to_le_bytes());
        b
    }
}

/// What STATE says about a range of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Every block plugged.
    Plugged,
    /// Every block unplugged.
    Unplugged,
    /// Some of each.
    Mixed,
}

/// Decodes the response to `req`: `Ok(Some(state))` for an acknowledged STATE, `Ok(None)` for
/// any other acknowledged request, the refusal otherwise.
pub fn decode_response(req: &Request, b: &[u8]) -> Result<Option<BlockState>, MemError> {
    if b.len() < RESPONSE {
        return Err(MemError::Device("short response"));
    }
    let ty = u16::from_le_bytes([b[0], b[1]]);
    let name = req.name();
    match ty {
        0 => {}
        1 => return Err(MemError::Nack(name)),
        2 => return Err(MemError::Busy(name)),
        3 => return Err(MemError::Failed(name)),
        t => return Err(MemError::BadResponse(t)),
    }
    if !matches!(req, Request::State { .. }) {
        return Ok(None);
    }
    match u16::from_le_bytes([b[8], b[9]]) {
        0 => Ok(Some(BlockState::Plugged)),
        1 => Ok(Some(BlockState::Unplugged)),
        2 => Ok(Some(BlockState::Mixed)),
        t => Err(MemError::BadResponse(t)),
    }
}

/// Splits `[offset, offset + len)` into requests of at most `u16::MAX` blocks each (the
/// request's block count is 16 bits): `(offset, blocks)` pairs.
pub fn split(cfg: &Config, offset: u64, len: u64) -> Result<Vec<(u64, u16)>, MemError> {
    if cfg.block_size == 0 || !len.is_multiple_of(cfg.block_size) || !offset.is_multiple_of(cfg.block_size) {
        return Err(MemError::Range { offset, len });
    }
    let mut out = Vec::new();
    let step = u64::from(u16::MAX) * cfg.block_size;
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(step);
        out.push((at, cfg.blocks(at, n)?));
        at += n;
    }
    if out.is_empty() {
        return Err(MemError::Range { offset, len });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config {
            block_size: 2 << 20,
            node_id: 0,
            addr: 1 << 32,
            region_size: 32 << 20,
            usable_region_size: 32 << 20,
            plugged_size: 0,
            requested_size: 32 << 20,
        }
    }

    #[test]
    fn requests_encode_as_the_spec_lays_them_out() {
        let b = Request::Plug { addr: 0x1_0020_0000, blocks: 3 }.encode();
        assert_eq!(&b[0..2], &[0, 0]);
        assert_eq!(&b[8..16], &0x1_0020_0000u64.to_le_bytes());
        assert_eq!(&b[16..18], &[3, 0]);
        assert_eq!(Request::Unplug { addr: 0, blocks: 1 }.encode()[0], 1);
        assert_eq!(Request::UnplugAll.encode()[0], 2);
        assert_eq!(Request::State { addr: 0, blocks: 1 }.encode()[0], 3);
    }

    #[test]
    fn responses_decode_to_values() {
        let plug = Request::Plug { addr: 0, blocks: 1 };
        let state = Request::State { addr: 0, blocks: 1 };
        let mut r = [0u8; RESPONSE];
        assert_eq!(decode_response(&plug, &r), Ok(None));
        assert_eq!(decode_response(&state, &r), Ok(Some(BlockState::Plugged)));
        r[8] = 2;
        assert_eq!(decode_response(&state, &r), Ok(Some(BlockState::Mixed)));
        r[0] = 1;
        assert_eq!(decode_response(&plug, &r), Err(MemError::Nack("PLUG")));
        r[0] = 2;
        assert_eq!(decode_response(&plug, &r), Err(MemError::Busy("PLUG")));
        r[0] = 3;
        assert_eq!(decode_response(&plug, &r), Err(MemError::Failed("PLUG")));
        r[0] = 9;
        assert_eq!(decode_response(&plug, &r), Err(MemError::BadResponse(9)));
        assert!(decode_response(&plug, &r[..4]).is_err());
    }

    #[test]
    fn ranges_must_be_whole_usable_blocks() {
        let mut c = cfg();
        assert_eq!(c.blocks(0, 4 << 20), Ok(2));
        assert!(c.blocks(1 << 20, 2 << 20).is_err(), "unaligned");
        assert!(c.blocks(0, 3 << 20).is_err(), "partial block");
        assert!(c.blocks(30 << 20, 4 << 20).is_err(), "beyond the region");
        assert!(c.blocks(0, 0).is_err());
        c.usable_region_size = 8 << 20;
        assert!(c.blocks(8 << 20, 2 << 20).is_err(), "beyond the usable part");
        assert!(c.blocks(u64::MAX - (2 << 20) + 1, 2 << 20).is_err(), "overflow");
    }

    #[test]
    fn configs_are_checked() {
        assert_eq!(cfg().validate(), Ok(()));
        assert!(Config { block_size: 3 << 20, ..cfg() }.validate().is_err());
        assert!(Config { addr: (1 << 32) + 4096, ..cfg() }.validate().is_err());
        assert!(Config { usable_region_size: 64 << 20, ..cfg() }.validate().is_err());
    }

    #[test]
    fn large_ranges_split_into_16_bit_block_counts() {
        let c = Config { block_size: 4096, region_size: 1 << 30, usable_region_size: 1 << 30, ..cfg() };
        let s = split(&c, 0, 1 << 30).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0], (0, u16::MAX));
        assert_eq!(s.iter().map(|&(_, n)| u64::from(n)).sum::<u64>(), (1 << 30) / 4096);
        assert!(split(&c, 0, 0).is_err());
    }
}
