//! The virtio-iommu protocol (virtio 1.2 section 5.13) and a shadow of one domain's mappings.
//!
//! What this module owns: the wire format of the configuration, the requests (ATTACH, DETACH,
//! MAP, UNMAP, PROBE), their status, the probe properties and the fault events; and
//! [`Shadow`], the kernel's copy of a domain's table, which answers translations without
//! asking the device and plans unmaps the device accepts. The kernel moves the bytes through
//! a [`Virtq`](crate::virtq::Virtq) with a timeout on every request.
//!
//! QEMU's device refuses an UNMAP that would split a mapping (`VIRTIO_IOMMU_S_RANGE`), so
//! [`Shadow::plan_unmap`] turns "unmap this range" into whole-mapping unmaps plus the remaps
//! of the parts outside the range. Invariants of a [`Shadow`]: mappings never overlap, each
//! is non-empty and page-aligned, and the shadow holds exactly what the device was told (the
//! caller applies a change only after the device said OK).

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// `VIRTIO_IOMMU_F_INPUT_RANGE`.
pub const F_INPUT_RANGE: u64 = 1 << 0;
/// `VIRTIO_IOMMU_F_DOMAIN_RANGE`.
pub const F_DOMAIN_RANGE: u64 = 1 << 1;
/// `VIRTIO_IOMMU_F_MAP_UNMAP`.
pub const F_MAP_UNMAP: u64 = 1 << 2;
/// `VIRTIO_IOMMU_F_BYPASS`.
pub const F_BYPASS: u64 = 1 << 3;
/// `VIRTIO_IOMMU_F_PROBE`.
pub const F_PROBE: u64 = 1 << 4;
/// `VIRTIO_IOMMU_F_MMIO`.
pub const F_MMIO: u64 = 1 << 5;
/// `VIRTIO_IOMMU_F_BYPASS_CONFIG`.
pub const F_BYPASS_CONFIG: u64 = 1 << 6;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_F_ACCESS_PLATFORM`: the device's DMA goes through the platform's IOMMU.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Request queue index.
pub const REQUEST_QUEUE: u16 = 0;
/// Event queue index.
pub const EVENT_QUEUE: u16 = 1;

const T_ATTACH: u8 = 1;
const T_DETACH: u8 = 2;
const T_MAP: u8 = 3;
const T_UNMAP: u8 = 4;
const T_PROBE: u8 = 5;

/// MAP flag: the device may read.
pub const MAP_READ: u32 = 1 << 0;
/// MAP flag: the device may write.
pub const MAP_WRITE: u32 = 1 << 1;
/// MAP flag: the target is MMIO.
pub const MAP_MMIO: u32 = 1 << 2;

/// Bytes of the device-writable tail of every request (`status`, 3 reserved).
pub const TAIL: usize = 4;
/// Bytes of a fault event.
pub const FAULT_EVENT: usize = 24;

/// The device configuration (`struct virtio_iommu_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Page sizes the device maps (bit n: 2^n bytes).
    pub page_size_mask: u64,
    /// Addresses a mapping may cover, inclusive.
    pub input_range: (u64, u64),
    /// Domain IDs, inclusive.
    pub domain_range: (u32, u32),
    /// Bytes of the probe buffer (0: no PROBE).
    pub probe_size: u32,
    /// Whether endpoints not attached bypass translation.
    pub bypass: bool,
}

impl Config {
    /// Byte offsets of the fields in configuration space.
    pub const OFFSETS: [usize; 8] = [0, 8, 16, 24, 28, 32, 36, 40];

    /// Builds the configuration from its fields as read (`input_range` and `domain_range`
    /// take their defaults, the whole range, when the feature is not offered).
    pub fn from_fields(
        features: u64,
        page_size_mask: u64,
        input: (u64, u64),
        domain: (u32, u32),
        probe_size: u32,
        bypass: u8,
    ) -> Config {
        Config {
            page_size_mask,
            input_range: if features & F_INPUT_RANGE != 0 { input } else { (0, u64::MAX) },
            domain_range: if features & F_DOMAIN_RANGE != 0 { domain } else { (0, u32::MAX) },
            probe_size: if features & F_PROBE != 0 { probe_size } else { 0 },
            bypass: bypass != 0,
        }
    }

    /// The smallest page size the device maps.
    pub fn granule(&self) -> u64 {
        1u64 << self.page_size_mask.trailing_zeros().min(63)
    }

    /// Checks a mapping request against the configuration.
    pub fn check(&self, iova: u64, len: u64) -> Result<(), IommuError> {
        let g = self.granule();
        if len == 0 || !iova.is_multiple_of(g) || !len.is_multiple_of(g) {
            return Err(IommuError::Misaligned { iova, len, granule: g });
        }
        let last = iova.checked_add(len - 1).ok_or(IommuError::OutOfRange { iova, len })?;
        if iova < self.input_range.0 || last > self.input_range.1 {
            return Err(IommuError::OutOfRange { iova, len });
        }
        Ok(())
    }
}

/// A failed IOMMU operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IommuError {
    /// The device answered with a status other than OK.
    Status {
        /// The request type that failed.
        request: &'static str,
        /// `VIRTIO_IOMMU_S_*`.
        status: u8,
    },
    /// The device did not answer within the bound.
    Timeout(&'static str),
    /// A mapping not aligned to the device's page size.
    Misaligned {
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// The device's smallest page size.
        granule: u64,
    },
    /// A mapping outside the device's input range.
    OutOfRange {
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// The mapping overlaps one the domain already has.
    Overlap {
        /// IOVA of the new mapping.
        iova: u64,
    },
    /// The device or its queue is unusable (text says why).
    Device(&'static str),
}

impl IommuError {
    fn status_name(s: u8) -> &'static str {
        match s {
            1 => "IOERR",
            2 => "UNSUPP",
            3 => "DEVERR",
            4 => "INVAL",
            5 => "RANGE",
            6 => "NOENT",
            7 => "FAULT",
            8 => "NOMEM",
            _ => "unknown status",
        }
    }
}

impl core::fmt::Display for IommuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Status { request, status } => {
                write!(f, "virtio-iommu {request} failed: {} ({status})", Self::status_name(status))
            }
            Self::Timeout(r) => write!(f, "virtio-iommu {r}: no answer within the timeout (the device is stuck)"),
            Self::Misaligned { iova, len, granule } => {
                write!(f, "mapping {len:#x} bytes at {iova:#x} is not aligned to the IOMMU page size {granule:#x}")
            }
            Self::OutOfRange { iova, len } => {
                write!(f, "mapping {len:#x} bytes at {iova:#x} is outside the IOMMU's input range")
            }
            Self::Overlap { iova } => write!(f, "a mapping at {iova:#x} overlaps one the domain already has"),
            Self::Device(why) => write!(f, "virtio-iommu: {why}"),
        }
    }
}

/// Checks a request's tail: OK or the device's status as an error.
pub fn check_status(request: &'static str, tail: &[u8]) -> Result<(), IommuError> {
    match tail.first() {
        Some(0) => Ok(()),
        Some(&status) => Err(IommuError::Status { request, status }),
        None => Err(IommuError::Device("a request tail of zero bytes")),
    }
}

fn head(t: u8) -> Vec<u8> {
    alloc::vec![t, 0, 0, 0]
}

/// `ATTACH` endpoint to domain (device-readable part).
pub fn attach(domain: u32, endpoint: u32) -> Vec<u8> {
    let mut b = head(T_ATTACH);
    b.extend(domain.to_le_bytes());
    b.extend(endpoint.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // flags: not a bypass domain
    b.extend([0u8; 4]);
    b
}

/// `DETACH` endpoint from domain.
pub fn detach(domain: u32, endpoint: u32) -> Vec<u8> {
    let mut b = head(T_DETACH);
    b.extend(domain.to_le_bytes());
    b.extend(endpoint.to_le_bytes());
    b.extend([0u8; 8]);
    b
}

/// `MAP` `[iova, iova + len)` to `phys` with `flags` (`len` > 0).
pub fn map(domain: u32, iova: u64, len: u64, phys: u64, flags: u32) -> Vec<u8> {
    let mut b = head(T_MAP);
    b.extend(domain.to_le_bytes());
    b.extend(iova.to_le_bytes());
    b.extend((iova + len - 1).to_le_bytes());
    b.extend(phys.to_le_bytes());
    b.extend(flags.to_le_bytes());
    b
}

/// `UNMAP` `[iova, iova + len)` (`len` > 0).
pub fn unmap(domain: u32, iova: u64, len: u64) -> Vec<u8> {
    let mut b = head(T_UNMAP);
    b.extend(domain.to_le_bytes());
    b.extend(iova.to_le_bytes());
    b.extend((iova + len - 1).to_le_bytes());
    b.extend([0u8; 4]);
    b
}

/// `PROBE` endpoint (device-readable part; the device writes `probe_size` bytes of
/// properties, then the tail).
pub fn probe(endpoint: u32) -> Vec<u8> {
    let mut b = head(T_PROBE);
    b.extend(endpoint.to_le_bytes());
    b.extend([0u8; 64]);
    b
}

/// A property from PROBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// `RESV_MEM`: a range the endpoint must not map (`subtype` 0 reserved, 1 MSI), inclusive.
    ResvMem {
        /// `VIRTIO_IOMMU_RESV_MEM_T_*`.
        subtype: u8,
        /// First address.
        start: u64,
        /// Last address.
        end: u64,
    },
    /// A property this driver does not know: its type and length.
    Other(u16, u16),
}

/// Parses the properties PROBE wrote (stops at type 0, `NONE`).
pub fn parse_probe(buf: &[u8]) -> Result<Vec<Property>, IommuError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let t = u16::from_le_bytes([buf[off], buf[off + 1]]) & 0xfff;
        let len = u16::from_le_bytes([buf[off + 2], buf[off + 3]]);
        if t == 0 {
            break;
        }
        let body = buf
            .get(off + 4..off + 4 + usize::from(len))
            .ok_or(IommuError::Device("a probe property runs past the buffer"))?;
        out.push(match (t, body.len()) {
            (1, 20..) => Property::ResvMem { subtype: body[0], start: le64(&body[4..12]), end: le64(&body[12..20]) },
            _ => Property::Other(t, len),
        });
        off += 4 + usize::from(len);
    }
    Ok(out)
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// A translation fault the device reported on the event queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultEvent {
    /// 0 unknown, 1 domain (endpoint not attached), 2 mapping (no or insufficient mapping).
    pub reason: u8,
    /// `READ` 1, `WRITE` 2, `EXEC` 4, `ADDRESS` 0x100 (the address is valid).
    pub flags: u32,
    /// The endpoint that faulted.
    pub endpoint: u32,
    /// The faulting address, when `flags` has `ADDRESS`.
    pub address: u64,
}

impl FaultEvent {
    /// Parses an event buffer (`virtio_iommu_fault`).
    pub fn parse(b: &[u8]) -> Option<FaultEvent> {
        (b.len() >= FAULT_EVENT).then(|| FaultEvent {
            reason: b[0],
            flags: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            endpoint: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            address: le64(&b[16..24]),
        })
    }
}

impl core::fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let reason = match self.reason {
            1 => "endpoint not attached to a domain",
            2 => "no mapping, or the mapping forbids the access",
            _ => "unknown reason",
        };
        let access = match self.flags & 3 {
            1 => "read",
            2 => "write",
            3 => "read/write",
            _ => "access",
        };
        write!(f, "IOMMU fault: endpoint {:#x} {access}", self.endpoint)?;
        if self.flags & 0x100 != 0 {
            write!(f, " at {:#x}", self.address)?;
        }
        write!(f, ": {reason}")
    }
}

/// One mapping of a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// First IOVA.
    pub iova: u64,
    /// Bytes.
    pub len: u64,
    /// Physical address of `iova`.
    pub phys: u64,
    /// `MAP_READ` / `MAP_WRITE` / `MAP_MMIO`.
    pub flags: u32,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.iova + self.len
    }
}

/// What the device must be told to unmap a range: whole mappings to unmap, then the pieces of
/// them outside the range to map again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnmapPlan {
    /// Mappings to UNMAP, whole.
    pub unmap: Vec<Mapping>,
    /// Pieces to MAP again afterwards.
    pub remap: Vec<Mapping>,
}

/// The kernel's copy of a domain's mappings, keyed by IOVA.
#[derive(Debug, Clone, Default)]
pub struct Shadow {
    maps: BTreeMap<u64, Mapping>,
}

impl Shadow {
    /// An empty domain.
    pub fn new() -> Shadow {
        Shadow::default()
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.maps.len()
    }

    /// Whether the domain maps nothing.
    pub fn is_empty(&self) -> bool {
        self.maps.is_empty()
    }

    /// Bytes mapped.
    pub fn bytes(&self) -> u64 {
        self.maps.values().map(|m| m.len).sum()
    }

    /// The mapping holding `iova`.
    fn holding(&self, iova: u64) -> Option<&Mapping> {
        self.maps.range(..=iova).next_back().map(|(_, m)| m).filter(|m| iova < m.end())
    }

    /// The physical address and flags `iova` translates to.
    pub fn translate(&self, iova: u64) -> Option<(u64, u32)> {
        self.holding(iova).map(|m| (m.phys + (iova - m.iova), m.flags))
    }

    /// Whether every byte of `[iova, iova + len)` is mapped with at least `flags`.
    pub fn covers(&self, iova: u64, len: u64, flags: u32) -> bool {
        let mut at = iova;
        let end = iova.saturating_add(len);
        while at < end {
            match self.holding(at) {
                Some(m) if m.flags & flags == flags => at = m.end(),
                _ => return false,
            }
        }
        true
    }

    /// The mappings overlapping `[start, end)`.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Mapping> {
        let first = self.holding(start).map_or(start, |m| m.iova);
        self.maps.range(first..end).map(|(_, m)| m)
    }

    /// Checks that `m` overlaps nothing (before sending MAP).
    pub fn check_free(&self, m: &Mapping) -> Result<(), IommuError> {
        match self.overlapping(m.iova, m.end()).next() {
            Some(_) => Err(IommuError::Overlap { iova: m.iova }),
            None => Ok(()),
        }
    }

    /// Records a mapping the device accepted.
    pub fn insert(&mut self, m: Mapping) -> Result<(), IommuError> {
        self.check_free(&m)?;
        self.maps.insert(m.iova, m);
        Ok(())
    }

    /// Records that the device unmapped `m` (whole).
    pub fn remove(&mut self, m: &Mapping) {
        self.maps.remove(&m.iova);
    }

    /// How to unmap `[start, end)`: the overlapping mappings go whole, and the parts of them
    /// outside the range are mapped again.
    pub fn plan_unmap(&self, start: u64, end: u64) -> UnmapPlan {
        let mut plan = UnmapPlan::default();
        for m in self.overlapping(start, end) {
            plan.unmap.push(*m);
            if m.iova < start {
                plan.remap.push(Mapping { len: start - m.iova, ..*m });
            }
            if m.end() > end {
                plan.remap.push(Mapping {
                    iova: end,
                    len: m.end() - end,
                    phys: m.phys + (end - m.iova),
                    flags: m.flags,
                });
            }
        }
        plan
    }

    /// Every mapping, by IOVA.
    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.maps.values()
    }
}

/// Splits `[iova, iova + len) -> phys` runs into mappings: consecutive pages whose physical
/// addresses are consecutive too become one mapping. `pages` gives the physical address of
/// each page of `page` bytes (None: leave the page unmapped).
pub fn coalesce(iova: u64, page: u64, pages: &[Option<u64>], flags: u32) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let Some(phys) = *p else { continue };
        let va = iova + i as u64 * page;
        match out.last_mut() {
            Some(m) if m.end() == va && m.phys + m.len == phys => m.len += page,
            _ => out.push(Mapping { iova: va, len: page, phys, flags }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: u32 = MAP_READ | MAP_WRITE;

    #[test]
    fn requests_have_the_spec_layout() {
        let m = map(7, 0x1000, 0x2000, 0x9000, RW);
        assert_eq!(m.len(), 36);
        assert_eq!(m[0], 3);
        assert_eq!(&m[4..8], &7u32.to_le_bytes());
        assert_eq!(&m[8..16], &0x1000u64.to_le_bytes());
        assert_eq!(&m[16..24], &0x2fffu64.to_le_bytes(), "virt_end is inclusive");
        assert_eq!(&m[24..32], &0x9000u64.to_le_bytes());
        assert_eq!(&m[32..36], &RW.to_le_bytes());
        assert_eq!(attach(1, 0x18).len(), 20);
        assert_eq!(detach(1, 0x18).len(), 20);
        assert_eq!(unmap(1, 0, 0x1000).len(), 28);
        assert_eq!(probe(0x18).len(), 72);
        assert_eq!(check_status("MAP", &[0, 0, 0, 0]), Ok(()));
        let e = check_status("MAP", &[5, 0, 0, 0]).unwrap_err();
        assert_eq!(e, IommuError::Status { request: "MAP", status: 5 });
        assert!(alloc::format!("{e}").contains("RANGE"));
    }

    #[test]
    fn config_checks_alignment_and_range() {
        let c = Config::from_fields(F_INPUT_RANGE, 0xffff_f000, (0, (1 << 48) - 1), (0, 9), 512, 1);
        assert_eq!(c.granule(), 4096);
        assert_eq!(c.domain_range, (0, u32::MAX), "no DOMAIN_RANGE feature: the whole range");
        assert_eq!(c.probe_size, 0, "no PROBE feature");
        assert!(c.check(0x1000, 0x1000).is_ok());
        assert!(matches!(c.check(0x1800, 0x1000), Err(IommuError::Misaligned { .. })));
        assert!(matches!(c.check(0x1000, 0), Err(IommuError::Misaligned { .. })));
        assert!(matches!(c.check(1 << 48, 0x1000), Err(IommuError::OutOfRange { .. })));
        assert!(matches!(c.check(u64::MAX - 0xfff, 0x2000), Err(IommuError::OutOfRange { .. })));
    }

    #[test]
    fn probe_properties_and_fault_events_parse() {
        let mut b = alloc::vec![0u8; 64];
        b[0..2].copy_from_slice(&1u16.to_le_bytes());
        b[2..4].copy_from_slice(&20u16.to_le_bytes());
        b[4] = 1;
        b[8..16].copy_from_slice(&0xfee0_0000u64.to_le_bytes());
        b[16..24].copy_from_slice(&0xfeef_ffffu64.to_le_bytes());
        assert_eq!(parse_probe(&b).unwrap(), [Property::ResvMem { subtype: 1, start: 0xfee0_0000, end: 0xfeef_ffff }]);
        b[2..4].copy_from_slice(&200u16.to_le_bytes());
        assert!(parse_probe(&b).is_err(), "a property past the buffer");
        let mut e = [0u8; 24];
        e[0] = 2;
        e[4..8].copy_from_slice(&0x101u32.to_le_bytes());
        e[8..12].copy_from_slice(&0x18u32.to_le_bytes());
        e[16..24].copy_from_slice(&0x7000_1000u64.to_le_bytes());
        let f = FaultEvent::parse(&e).unwrap();
        assert_eq!((f.reason, f.endpoint, f.address), (2, 0x18, 0x7000_1000));
        assert_eq!(
            alloc::format!("{f}"),
            "IOMMU fault: endpoint 0x18 read at 0x70001000: no mapping, or the mapping forbids the access"
        );
        assert!(FaultEvent::parse(&e[..10]).is_none());
    }

    #[test]
    fn shadow_translates_and_plans_unmaps_the_device_accepts() {
        let mut s = Shadow::new();
        let pages = [Some(0x10_0000), Some(0x10_1000), None, Some(0x20_0000), Some(0x20_1000), Some(0x30_0000)];
        let maps = coalesce(0x4000_0000, 0x1000, &pages, RW);
        assert_eq!(maps.len(), 3, "{maps:x?}");
        for m in &maps {
            s.insert(*m).unwrap();
        }
        assert!(s.insert(Mapping { iova: 0x4000_1000, len: 0x1000, phys: 0, flags: RW }).is_err());
        assert_eq!(s.translate(0x4000_1234), Some((0x10_1234, RW)));
        assert_eq!(s.translate(0x4000_2000), None);
        assert!(s.covers(0x4000_3000, 0x3000, RW));
        assert!(!s.covers(0x4000_0000, 0x3000, MAP_READ));
        // Unmapping the middle page of the second run splits it: unmap it whole, map the
        // outer pieces again.
        let plan = s.plan_unmap(0x4000_4000, 0x4000_5000);
        assert_eq!(plan.unmap, [maps[1]]);
        assert_eq!(plan.remap, [Mapping { iova: 0x4000_3000, len: 0x1000, phys: 0x20_0000, flags: RW }]);
        // A range over everything: every mapping goes, nothing comes back.
        let all = s.plan_unmap(0, u64::MAX);
        assert_eq!((all.unmap.len(), all.remap.len()), (3, 0));
        for m in &plan.unmap {
            s.remove(m);
        }
        for m in &plan.remap {
            s.insert(*m).unwrap();
        }
        assert_eq!(s.translate(0x4000_4000), None);
        assert_eq!(s.translate(0x4000_3000), Some((0x20_0000, RW)));
        assert_eq!(s.bytes(), 0x4000);
    }
}
