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
//! migration backs out. A request that does not complete within [`TIMEOUT_MS`] fails as
//! [`CopyError::TimedOut`] and the engine is reset (virtio status 0, which QEMU's virtio-blk
//! honours only once its requests in flight have drained, so no DMA lands after it), then
//! renegotiated on the same rings: the engine works again, and every other request that was
//! in flight fails as [`CopyError::Abandoned`] (its copy may or may not have happened).
//! Tickets carry the engine's reset epoch, so a ticket from before a reset is never confused
//! with a request after it.
//!
//! Fault injection ([`crate::inject`]): [`Fault::DmaError`] sends the request for a sector
//! past the disk's end, which the device refuses with an I/O error; [`Fault::DmaTimeout`]
//! makes the wait for a request in flight give up at once.

use crate::inject::{self, Fault};
use crate::mm::{FrameRange, Iova};
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
    /// The device did not complete the request within the bound; the engine was reset (the
    /// copy may or may not have happened).
    TimedOut {
        /// The bound, in milliseconds.
        ms: u64,
    },
    /// The engine was reset (after another request timed out) while this one was in flight:
    /// its copy may or may not have happened.
    Abandoned,
    /// The queue failed, or the engine could not be reset after a timeout.
    Queue(VirtioError),
    /// A request header slot did not fit the engine's header frames.
    Header(crate::mm::HandleError),
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
            Self::TimedOut { ms } => {
                write!(f, "the copy engine did not complete a request within {ms} ms; the engine was reset")
            }
            Self::Abandoned => write!(f, "the copy engine was reset while this copy was in flight"),
            Self::Queue(e) => write!(f, "copy engine: {e}"),
            Self::Header(e) => write!(f, "copy engine request header: {e}"),
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
    /// The engine's reset epoch when submitted.
    epoch: u32,
    /// Fault injection: the wait gives up at once.
    give_up: bool,
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
    /// Resets after a timeout.
    pub resets: u64,
}

/// A bound copy engine.
#[derive(Debug)]
pub struct CopyEngine {
    t: PciTransport,
    q: DmaQueue,
    /// The request headers and status bytes, one [`SLOT`] per copy in flight.
    headers: FrameRange,
    iova_of: fn(u64) -> Iova,
    free_slots: Vec<usize>,
    /// The features asked for and required at binding, negotiated again after a reset.
    wanted: u64,
    required: Vec<(u64, &'static str)>,
    /// Resets so far: tickets from an earlier epoch are abandoned.
    epoch: u32,
    /// Device index, for fault injection (None: not yet known).
    pub device: Option<usize>,
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
    pub fn new(mut t: PciTransport, behind_iommu: bool, iova_of: fn(u64) -> Iova) -> Result<CopyEngine, CopyError> {
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
        let headers = FrameRange::alloc_zeroed(1).map_err(|_| CopyError::Queue(VirtioError::NoMemory))?;
        t.finish_init();
        // Two descriptors of each chain are the header and the status.
        let seg_max = (seg_max.max(1) as usize).min(usize::from(q.size()) - 2);
        Ok(CopyEngine {
            t,
            q,
            headers,
            iova_of,
            free_slots: (0..SLOTS).rev().collect(),
            wanted,
            required,
            epoch: 0,
            device: None,
            capacity: sectors * SECTOR,
            seg_max,
            translated: features & F_ACCESS_PLATFORM != 0,
            stats: CopyStats::default(),
        })
    }

    /// Starts a copy between device memory at `offset` and the RAM segments `ram` (device
    /// addresses and lengths, in order). Offsets and lengths are multiples of 512 bytes.
    pub fn submit(&mut self, dir: Dir, offset: u64, ram: &[(Iova, u32)]) -> Result<Ticket, CopyError> {
        self.start(dir, offset, ram, true)
    }

    /// [`submit`](Self::submit) without notifying the device: several copies are published,
    /// then one [`kick`](Self::kick) starts them all (one notification, which under TCG is
    /// one trap into QEMU, instead of one per copy).
    pub fn push(&mut self, dir: Dir, offset: u64, ram: &[(Iova, u32)]) -> Result<Ticket, CopyError> {
        self.start(dir, offset, ram, false)
    }

    /// Notifies the device of the copies [`push`](Self::push)ed.
    pub fn kick(&mut self) {
        self.q.kick(&mut self.t);
    }

    fn start(&mut self, dir: Dir, offset: u64, ram: &[(Iova, u32)], notify: bool) -> Result<Ticket, CopyError> {
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
        let at = slot as u64 * SLOT;
        let hdr = self.headers.phys().as_u64() + at;
        let mut h = [0u8; 17];
        h[0..4].copy_from_slice(&if dir == Dir::ToDevice { T_OUT } else { T_IN }.to_le_bytes());
        // An injected I/O error: a sector past the disk's end, which the device refuses
        // before it moves any data.
        let sector =
            if inject::take(Fault::DmaError, self.device) { self.capacity / SECTOR + 8 } else { offset / SECTOR };
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        h[16] = 0xff;
        if let Err(e) = self.headers.write(at, &h) {
            self.free_slots.push(slot);
            return Err(CopyError::Header(e));
        }
        let iova = self.iova_of;
        let mut segs = Vec::with_capacity(ram.len() + 2);
        segs.push(Seg::read(iova(hdr).get(), 16));
        segs.extend(ram.iter().map(|&(a, l)| Seg { addr: a.get(), len: l, device_writes: dir == Dir::ToRam }));
        segs.push(Seg::write(iova(hdr + 16).get(), 1));
        let give_up = inject::take(Fault::DmaTimeout, self.device);
        let published = if notify { self.q.submit(&mut self.t, &segs) } else { self.q.push(&segs) };
        match published {
            Ok(token) => Ok(Ticket { token, slot, bytes, dir, epoch: self.epoch, give_up }),
            Err(e) => {
                self.free_slots.push(slot);
                Err(e.into())
            }
        }
    }

    /// Signals completions by MSI-X entry 0 of the engine's function (`msix`, `common`: its
    /// table and common configuration), so waits halt the CPU instead of spinning (see
    /// [`crate::virtio`]); kept across resets.
    pub fn use_interrupt(
        &mut self,
        msix: crate::platform::pci::Msix,
        common: crate::platform::pci::VirtioCommon,
    ) -> Result<(), crate::platform::pci::MsixError> {
        self.q.use_interrupt(msix, common, 0)
    }

    /// Whether completions interrupt.
    pub fn interrupts(&self) -> bool {
        self.q.interrupts()
    }

    /// Halts in waits so far (each ended by the completion's interrupt or a tick).
    pub fn halts(&self) -> u64 {
        self.q.halts()
    }

    /// Whether the engine is unusable: a copy timed out and the reset after it failed.
    pub fn is_dead(&self) -> bool {
        self.q.is_dead()
    }

    /// Waits (bounded) until request `t` has completed, without collecting it: its status
    /// stays for [`wait`](Self::wait). A request abandoned by a reset has ended too (the reset
    /// drained it), and a timeout resets the engine, which ends the request.
    pub fn settle(&mut self, t: Ticket) -> Result<(), CopyError> {
        if t.epoch != self.epoch {
            return Ok(());
        }
        match self.bounded(t, |q, ms| q.settle(t.token, ms)) {
            Ok(_) => Ok(()),
            Err(CopyError::TimedOut { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits for `t` with `op` (bounded by [`TIMEOUT_MS`]); a timeout resets the engine.
    fn bounded<R>(
        &mut self,
        t: Ticket,
        op: impl FnOnce(&mut DmaQueue, u64) -> Result<R, VirtioError>,
    ) -> Result<R, CopyError> {
        let r = if t.give_up {
            Err(VirtioError::Timeout { device: "virtio-blk copy engine", ms: 0 })
        } else {
            op(&mut self.q, TIMEOUT_MS)
        };
        match r {
            Ok(v) => Ok(v),
            Err(VirtioError::Timeout { ms, .. }) => {
                self.reset()?;
                Err(CopyError::TimedOut { ms })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Resets the device (bounded wait for status 0: QEMU completes or cancels the requests
    /// in flight first), negotiates again and restarts the queue on the same rings. Every
    /// ticket submitted before is abandoned.
    fn reset(&mut self) -> Result<(), CopyError> {
        self.t.set_status(virtio_drivers::transport::DeviceStatus::empty());
        let until = crate::arch::time::Deadline::after_ms(TIMEOUT_MS);
        while !self.t.get_status().is_empty() {
            if until.passed() {
                return Err(CopyError::Queue(VirtioError::Dead("virtio-blk copy engine (reset did not complete)")));
            }
            core::hint::spin_loop();
        }
        negotiate(&mut self.t, self.wanted, &self.required)?;
        self.q.reset(&mut self.t, self.iova_of)?;
        self.t.finish_init();
        self.epoch = self.epoch.wrapping_add(1);
        self.free_slots = (0..SLOTS).rev().collect();
        self.stats.resets += 1;
        log::warn!("copy engine of dev{}: reset after a timeout", self.device.map_or(usize::MAX, |d| d));
        Ok(())
    }

    /// Waits (bounded) for a submitted copy.
    pub fn wait(&mut self, t: Ticket) -> Result<(), CopyError> {
        if t.epoch != self.epoch {
            return Err(CopyError::Abandoned);
        }
        self.bounded(t, |q, ms| q.wait(t.token, ms))?;
        let mut status = [0u8; 1];
        let read = self.headers.read(t.slot as u64 * SLOT + 16, &mut status);
        self.free_slots.push(t.slot);
        read.map_err(CopyError::Header)?;
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
