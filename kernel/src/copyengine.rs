//! The DMA copy engine of a device: a virtio-blk function whose backing is the same host
//! memory object as the device's ivshmem BAR (see `../shared/reference/platform.md`, "One
//! host file, two views"). A blk WRITE moves system RAM into device memory, a READ moves
//! device memory into RAM; the byte offset in device memory is the sector times 512.
//!
//! Requests are scatter-gather (up to the device's `seg_max` segments of RAM, each a device
//! address: an IOVA in the device's domain when it sits behind the virtio-iommu), several are
//! in flight at once ([`CopyEngine::submit`] / [`CopyEngine::wait`]), and every wait is
//! bounded. The caller guarantees that every segment is mapped in the device's domain
//! before it submits: QEMU cannot recover a DMA fault (the request never completes).
//!
//! A failed request leaves the source intact; the destination range is undefined, so a
//! migration backs out.

use crate::mm::frame;
use crate::virtio::{DmaQueue, VirtioError, negotiate};
use alloc::vec::Vec;
use drivers::virtq::Seg;
use virtio_drivers::transport::{Transport, pci::PciTransport};

/// Bound on one request.
pub const TIMEOUT_MS: u64 = 5_000;
const SECTOR: u64 = 512;
/// Header slots (16-byte header, status byte at +16), one page of them.
const SLOT: u64 = 32;
const SLOTS: usize = 128;

const F_SEG_MAX: u64 = 1 << 2;
const F_VERSION_1: u64 = 1 << 32;
const F_ACCESS_PLATFORM: u64 = 1 << 33;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;

/// Which way a copy goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// System RAM to device memory (blk WRITE).
    ToDevice,
    /// Device memory to system RAM (blk READ).
    ToRam,
}

/// A failed copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// The request is malformed (the text says how).
    Invalid(&'static str),
    /// The device-memory range is past the end of the device.
    OutOfRange {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Device memory bytes.
        capacity: u64,
    },
    /// More segments than the device takes in one request.
    TooManySegments {
        /// Segments given.
        given: usize,
        /// The device's limit.
        max: usize,
    },
    /// The device answered with an error status.
    Status(u8),
    /// The queue failed or timed out.
    Queue(VirtioError),
}

impl core::fmt::Display for CopyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Invalid(why) => write!(f, "copy request: {why}"),
            Self::OutOfRange { offset, len, capacity } => {
                write!(
                    f,
                    "copy of {len:#x} bytes at device offset {offset:#x} runs past the device's {capacity:#x} bytes"
                )
            }
            Self::TooManySegments { given, max } => {
                write!(f, "copy request with {given} segments: the device takes at most {max}; split it")
            }
            Self::Status(s) => write!(f, "the copy engine reported status {s} (1: I/O error, 2: unsupported)"),
            Self::Queue(e) => write!(f, "copy engine: {e}"),
        }
    }
}

impl From<VirtioError> for CopyError {
    fn from(e: VirtioError) -> Self {
        Self::Queue(e)
    }
}

/// A submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    token: u16,
    slot: usize,
    bytes: u64,
    dir: Dir,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Requests completed.
    pub requests: u64,
    /// Bytes moved RAM to device.
    pub to_device: u64,
    /// Bytes moved device to RAM.
    pub to_ram: u64,
}

/// A bound copy engine.
#[derive(Debug)]
pub struct CopyEngine {
    t: PciTransport,
    q: DmaQueue,
    headers: u64,
    iova_of: fn(u64) -> u64,
    free_slots: Vec<usize>,
    /// Device memory bytes the engine reaches.
    pub capacity: u64,
    /// Segments per request.
    pub seg_max: usize,
    /// Whether DMA goes through the IOMMU (ACCESS_PLATFORM negotiated).
    pub translated: bool,
    /// Counters.
    pub stats: CopyStats,
}

impl CopyEngine {
    /// Binds a virtio-blk function. `behind_iommu`: negotiate ACCESS_PLATFORM, and `iova_of`
    /// turns the physical addresses of the engine's own buffers (rings, headers) into the
    /// device addresses its domain maps them at.
    pub fn new(mut t: PciTransport, behind_iommu: bool, iova_of: fn(u64) -> u64) -> Result<CopyEngine, CopyError> {
        let mut wanted = F_VERSION_1 | F_SEG_MAX;
        let mut required = alloc::vec![(F_VERSION_1, "VIRTIO_F_VERSION_1")];
        if behind_iommu {
            wanted |= F_ACCESS_PLATFORM;
            required.push((F_ACCESS_PLATFORM, "VIRTIO_F_ACCESS_PLATFORM (start QEMU with iommu_platform=on)"));
        }
        let features = negotiate(&mut t, wanted, &required)?;
        let sectors = crate::virtio::config_u64(&t, 0);
        let seg_max = if features & F_SEG_MAX != 0 { t.read_config_space::<u32>(12).unwrap_or(1) } else { 1 };
        let q = DmaQueue::new(&mut t, "virtio-blk copy engine", 0, 256, iova_of)?;
        let headers = frame::alloc_zeroed(1).map_err(|_| CopyError::Queue(VirtioError::NoMemory))?;
        t.finish_init();
        // Two descriptors of each chain are the header and the status.
        let seg_max = (seg_max.max(1) as usize).min(usize::from(q.size()) - 2);
        Ok(CopyEngine {
            t,
            q,
            headers,
            iova_of,
            free_slots: (0..SLOTS).rev().collect(),
            capacity: sectors * SECTOR,
            seg_max,
            translated: features & F_ACCESS_PLATFORM != 0,
            stats: CopyStats::default(),
        })
    }

    /// Starts a copy between device memory at `offset` and the RAM segments `ram` (device
    /// addresses and lengths, in order). Offsets and lengths are multiples of 512 bytes.
    pub fn submit(&mut self, dir: Dir, offset: u64, ram: &[(u64, u32)]) -> Result<Ticket, CopyError> {
        if ram.is_empty() {
            return Err(CopyError::Invalid("no RAM segments"));
        }
        if ram.len() > self.seg_max {
            return Err(CopyError::TooManySegments { given: ram.len(), max: self.seg_max });
        }
        let bytes: u64 = ram.iter().map(|&(_, l)| u64::from(l)).sum();
        if !offset.is_multiple_of(SECTOR) || !bytes.is_multiple_of(SECTOR) || ram.iter().any(|&(_, l)| l == 0) {
            return Err(CopyError::Invalid("device offset and lengths must be non-zero multiples of 512 bytes"));
        }
        if offset.checked_add(bytes).is_none_or(|e| e > self.capacity) {
            return Err(CopyError::OutOfRange { offset, len: bytes, capacity: self.capacity });
        }
        let slot = self.free_slots.pop().ok_or(CopyError::Invalid("too many copies in flight"))?;
        let hdr = self.headers + slot as u64 * SLOT;
        let mut h = [0u8; 17];
        h[0..4].copy_from_slice(&if dir == Dir::ToDevice { T_OUT } else { T_IN }.to_le_bytes());
        h[8..16].copy_from_slice(&(offset / SECTOR).to_le_bytes());
        h[16] = 0xff;
        crate::mm::write_phys(hdr, &h);
        let iova = self.iova_of;
        let mut segs = Vec::with_capacity(ram.len() + 2);
        segs.push(Seg::read(iova(hdr), 16));
        segs.extend(ram.iter().map(|&(a, l)| Seg { addr: a, len: l, device_writes: dir == Dir::ToRam }));
        segs.push(Seg::write(iova(hdr + 16), 1));
        match self.q.submit(&mut self.t, &segs) {
            Ok(token) => Ok(Ticket { token, slot, bytes, dir }),
            Err(e) => {
                self.free_slots.push(slot);
                Err(e.into())
            }
        }
    }

    /// Whether a copy timed out: its queue is dead and the engine takes no more.
    pub fn is_dead(&self) -> bool {
        self.q.is_dead()
    }

    /// Waits (bounded) until request `t` has completed, without collecting it: its status
    /// stays for [`wait`](Self::wait).
    pub fn settle(&mut self, t: Ticket) -> Result<(), CopyError> {
        Ok(self.q.settle(t.token, TIMEOUT_MS)?)
    }

    /// Waits (bounded) for a submitted copy.
    pub fn wait(&mut self, t: Ticket) -> Result<(), CopyError> {
        self.q.wait(t.token, TIMEOUT_MS)?;
        let mut status = [0u8; 1];
        crate::mm::read_phys(self.headers + t.slot as u64 * SLOT + 16, &mut status);
        self.free_slots.push(t.slot);
        if status[0] != 0 {
            return Err(CopyError::Status(status[0]));
        }
        self.stats.requests += 1;
        match t.dir {
            Dir::ToDevice => self.stats.to_device += t.bytes,
            Dir::ToRam => self.stats.to_ram += t.bytes,
        }
        Ok(())
    }
}
