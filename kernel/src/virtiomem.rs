//! The virtio-mem driver: feature negotiation, the configuration, and the guest requests
//! (PLUG, UNPLUG, UNPLUG_ALL, STATE) on its one queue, each bounded by [`TIMEOUT_MS`].
//!
//! The wire format is `drivers::virtio_mem` (host-tested); this module moves its bytes. The
//! device is not behind the IOMMU: its buffers are physical addresses. A device's hot-plug
//! memory ([`devices::Hot`](crate::devices::Hot)) is one of these regions; which blocks are
//! plugged, and what lives in them, is [`vram`](crate::vram)'s business.
//!
//! Invariant: the driver touches no byte of the region it has not plugged (it acks
//! `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`). Each block is [`Block::Plugged`],
//! [`Block::Unplugged`] or, after a request whose outcome the driver could not learn,
//! [`Block::Unknown`]: accessed only when plugged, and plugged again only once a STATE request
//! has said which it is ([`VirtioMem::settle`]), so a block is never left half-removed: plugged
//! on the device while the kernel believes it gone, and sent a second PLUG.

use crate::mm::{FrameRange, Iova, PhysAddr};
use crate::platform::arch::{apic, trap::CONFIG_VECTOR};
use crate::platform::pci::{Msix, MsixError, VirtioCommon};
use crate::virtio::{DmaQueue, VirtioError, config_u64, negotiate};
use drivers::virtio_mem::{self as proto, BlockState, Config, MemError, Request, offset};
use drivers::virtq::Seg;
use virtio_drivers::transport::{Transport, pci::PciTransport};

/// Bound on one request.
pub const TIMEOUT_MS: u64 = 2_000;

/// UNPLUG attempts before the driver asks the device what state the blocks are in.
pub const UNPLUG_TRIES: u32 = 3;

/// What the driver knows of one block of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Unplugged: inaccessible, free to plug.
    Unplugged,
    /// Plugged by this driver: accessible.
    Plugged,
    /// A request for it failed in a way that leaves its state unknown: not accessed, and not
    /// plugged until a STATE request settles it.
    Unknown,
}

/// A bound virtio-mem device.
#[derive(Debug)]
pub struct VirtioMem {
    t: PciTransport,
    q: DmaQueue,
    /// The request (at 0) and response (at [`RESPONSE_OFF`]) buffer.
    buf: FrameRange,
    /// The configuration, as last read.
    pub config: Config,
    /// Negotiated features.
    pub features: u64,
    /// Requests sent.
    pub requests: u64,
    /// Per block of the region: what the driver knows of it.
    blocks: alloc::vec::Vec<Block>,
    /// The device (`dev{n}`) whose hot-plug region this is, for fault injection and logs.
    pub device: Option<usize>,
    /// The configuration-change interrupt, once [`VirtioMem::use_config_interrupt`] set it.
    irq: Option<(Msix, VirtioCommon)>,
}

/// Where the response sits in the request buffer.
const RESPONSE_OFF: u64 = 64;

fn err(e: VirtioError) -> MemError {
    match e {
        VirtioError::Timeout { .. } => MemError::Timeout("request"),
        VirtioError::Features(why) => MemError::Device(why),
        VirtioError::NoMemory => MemError::Device("no memory for the queue"),
        VirtioError::Dead(_) => MemError::Device("the queue timed out earlier"),
        VirtioError::Queue(_) => MemError::Device("queue error"),
    }
}

impl VirtioMem {
    /// Negotiates, sets up the queue, reads the configuration and, if blocks are plugged
    /// already (a warm reboot), unplugs them all: the kernel starts from an empty region.
    pub fn new(mut t: PciTransport) -> Result<VirtioMem, MemError> {
        let wanted = proto::F_VERSION_1 | proto::F_ACPI_PXM | proto::F_UNPLUGGED_INACCESSIBLE;
        let features = negotiate(&mut t, wanted, &[(proto::F_VERSION_1, "VIRTIO_F_VERSION_1")]).map_err(err)?;
        let q = DmaQueue::new(&mut t, "virtio-mem", proto::GUEST_QUEUE, 8, |pa| Iova::identity(PhysAddr::new(pa)))
            .map_err(err)?;
        let buf = FrameRange::alloc_zeroed(1).map_err(|_| MemError::Device("no memory for requests"))?;
        t.finish_init();
        let mut m = VirtioMem {
            t,
            q,
            buf,
            config: Config::default(),
            features,
            requests: 0,
            blocks: Default::default(),
            device: None,
            irq: None,
        };
        m.refresh();
        m.config.validate()?;
        m.blocks = alloc::vec![Block::Unplugged; (m.config.region_size / m.config.block_size) as usize];
        if m.config.plugged_size != 0 {
            m.send(Request::UnplugAll)?;
            m.refresh();
        }
        Ok(m)
    }

    /// Signals configuration changes (the host changed `requested_size`) through MSI-X entry 0
    /// of the function (`msix`, `common`: its table and common configuration) as
    /// [`CONFIG_VECTOR`] to this CPU.
    pub fn use_config_interrupt(&mut self, msix: Msix, common: VirtioCommon) -> Result<(), MsixError> {
        msix.route(0, CONFIG_VECTOR, apic::id())?;
        common.set_config_vector(Some(0))?;
        self.irq = Some((msix, common));
        Ok(())
    }

    /// Whether configuration changes interrupt.
    pub fn config_interrupts(&self) -> bool {
        self.irq.is_some()
    }

    /// Reads the configuration again (the host changes `requested_size`, and the device
    /// `plugged_size` and `usable_region_size`).
    pub fn refresh(&mut self) {
        let t = &self.t;
        self.config = Config {
            block_size: config_u64(t, offset::BLOCK_SIZE),
            node_id: t.read_config_space::<u16>(offset::NODE_ID).unwrap_or(0),
            addr: config_u64(t, offset::ADDR),
            region_size: config_u64(t, offset::REGION_SIZE),
            usable_region_size: config_u64(t, offset::USABLE_REGION_SIZE),
            plugged_size: config_u64(t, offset::PLUGGED_SIZE),
            requested_size: config_u64(t, offset::REQUESTED_SIZE),
        };
    }

    fn send(&mut self, req: Request) -> Result<Option<BlockState>, MemError> {
        let outside = |_| MemError::Device("request or response outside its buffer");
        self.buf.write(0, &req.encode()).map_err(outside)?;
        self.buf.write(RESPONSE_OFF, &[0xff; proto::RESPONSE]).map_err(outside)?;
        let pa = self.buf.phys().as_u64();
        let segs = [Seg::read(pa, proto::REQUEST as u32), Seg::write(pa + RESPONSE_OFF, proto::RESPONSE as u32)];
        let tok = self.q.submit(&mut self.t, &segs).map_err(err)?;
        self.q.wait(tok, TIMEOUT_MS).map_err(|e| match e {
            VirtioError::Timeout { .. } => MemError::Timeout(req.name()),
            e => err(e),
        })?;
        self.requests += 1;
        let mut r = [0u8; proto::RESPONSE];
        self.buf.read(RESPONSE_OFF, &mut r).map_err(outside)?;
        proto::decode_response(&req, &r)
    }

    /// Runs `make(addr, blocks)` requests over `[off, off + len)` of the region.
    fn each(&mut self, off: u64, len: u64, make: fn(u64, u16) -> Request) -> Result<Option<BlockState>, MemError> {
        self.refresh();
        let mut last = None;
        for (at, blocks) in proto::split(&self.config, off, len)? {
            use crate::inject::{Fault, take};
            let mut req = make(self.config.addr + at, blocks);
            let fault = match req {
                Request::Unplug { .. } => Some(Fault::UnplugError),
                Request::State { .. } => Some(Fault::StateError),
                _ => None,
            };
            if let Request::Unplug { addr, .. } | Request::State { addr, .. } = &mut req
                && let Some(fault) = fault
                && take(fault, self.device)
            {
                // Past the region's end: the device answers ERROR and changes nothing.
                *addr = self.config.addr + self.config.region_size;
            }
            last = self.send(req)?;
        }
        self.refresh();
        Ok(last)
    }

    /// Plugs `[off, off + len)` of the region (whole blocks of its usable part). `Nack` when
    /// that would exceed what the host requested. Blocks in an unknown state must be settled
    /// first ([`Self::settle`]).
    pub fn plug(&mut self, off: u64, len: u64) -> Result<(), MemError> {
        if let Some(offset) = self.first(off, len, Block::Unknown) {
            return Err(MemError::Unsettled { offset });
        }
        self.each(off, len, |addr, blocks| Request::Plug { addr, blocks })?;
        self.mark(off, len, Block::Plugged);
        Ok(())
    }

    fn mark(&mut self, off: u64, len: u64, state: Block) {
        let b = self.config.block_size;
        for k in off / b..(off + len) / b {
            if let Some(x) = self.blocks.get_mut(k as usize) {
                *x = state;
            }
        }
    }

    /// Region offset of the first block `[off, off + len)` touches that is in `state`.
    fn first(&self, off: u64, len: u64, state: Block) -> Option<u64> {
        let b = self.config.block_size.max(1);
        (off / b..(off + len).div_ceil(b)).find(|&k| self.blocks.get(k as usize) == Some(&state)).map(|k| k * b)
    }

    /// What the driver knows of the block at region offset `off`.
    pub fn block(&self, off: u64) -> Option<Block> {
        self.blocks.get((off / self.config.block_size.max(1)) as usize).copied()
    }

    /// Whether every block `[off, off + len)` touches is plugged: what may be accessed (by the
    /// CPU or by DMA).
    pub fn is_plugged(&self, off: u64, len: u64) -> bool {
        let b = self.config.block_size.max(1);
        len > 0 && (off / b..(off + len).div_ceil(b)).all(|k| self.blocks.get(k as usize) == Some(&Block::Plugged))
    }

    /// Unplugs `[off, off + len)`; the memory must no longer be used (its contents are gone).
    /// A refused or unanswered UNPLUG is sent again, up to [`UNPLUG_TRIES`] times; if it
    /// still fails, a STATE request says where the blocks are: all unplugged is success, all
    /// still plugged is the error with the blocks marked plugged again (the caller brings them
    /// back into use), and anything else leaves them [`Block::Unknown`] with the error.
    pub fn unplug(&mut self, off: u64, len: u64) -> Result<(), MemError> {
        // Marked first: whatever the device answers, nothing touches these blocks again until
        // their state is known.
        self.mark(off, len, Block::Unknown);
        let mut error = None;
        for attempt in 1..=UNPLUG_TRIES {
            match self.each(off, len, |addr, blocks| Request::Unplug { addr, blocks }) {
                Ok(_) => {
                    self.mark(off, len, Block::Unplugged);
                    return Ok(());
                }
                Err(e) => {
                    log::warn!(
                        "dev{}: virtio-mem UNPLUG of {len:#x} bytes at region offset {off:#x}, attempt {attempt} of {UNPLUG_TRIES}: {e}",
                        self.device.map_or(-1, |d| d as i64)
                    );
                    error = Some(e);
                }
            }
        }
        let error = error.unwrap_or(MemError::Device("UNPLUG failed"));
        match self.settle(off, len) {
            Ok(Block::Unplugged) => Ok(()),
            _ => Err(error),
        }
    }

    /// Asks the device (STATE) what `[off, off + len)` is and records it: all plugged or all
    /// unplugged; a mixed range, or no answer, stays [`Block::Unknown`].
    pub fn settle(&mut self, off: u64, len: u64) -> Result<Block, MemError> {
        let state = match self.state(off, len)? {
            BlockState::Plugged => Block::Plugged,
            BlockState::Unplugged => Block::Unplugged,
            BlockState::Mixed => Block::Unknown,
        };
        self.mark(off, len, state);
        Ok(state)
    }

    /// Whether `[off, off + len)` is plugged (for ranges of at most 65535 blocks).
    pub fn state(&mut self, off: u64, len: u64) -> Result<BlockState, MemError> {
        self.each(off, len, |addr, blocks| Request::State { addr, blocks })?
            .ok_or(MemError::Device("STATE without a state"))
    }
}
