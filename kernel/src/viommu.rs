//! The virtio-iommu driver: feature negotiation, the request queue (ATTACH, DETACH, MAP,
//! UNMAP, PROBE, several requests in flight per batch), and the event queue with posted
//! buffers so that translation faults are reported and logged.
//!
//! The wire format and the domain shadow are `drivers::viommu` (host-tested); this module
//! moves their bytes. The virtio-iommu itself is not behind an IOMMU: its buffers are
//! physical addresses. Every request is bounded by [`TIMEOUT_MS`].

use crate::inject::{self, Fault};
use crate::mm::{self, FrameRange, Iova, PhysAddr};

/// The virtio-iommu's own DMA is never translated: its IOVAs are physical addresses.
fn identity(pa: u64) -> Iova {
    Iova::identity(PhysAddr::new(pa))
}
use crate::virtio::{DmaQueue, VirtioError, negotiate};
use alloc::vec::Vec;
use drivers::viommu::{self as proto, Config, FaultEvent, IommuError, Mapping, Property, TAIL};
use drivers::virtq::Seg;
use virtio_drivers::transport::{Transport, pci::PciTransport};

/// Bound on one batch of requests.
pub const TIMEOUT_MS: u64 = 2_000;
/// Bytes per request slot in the scratch area (readable part, then the tail at [`TAIL_OFF`]).
const SLOT: u64 = 128;
const TAIL_OFF: u64 = 96;
const SCRATCH_PAGES: usize = 4;
const SLOTS: usize = (SCRATCH_PAGES as u64 * mm::PAGE_SIZE / SLOT) as usize;
/// A MAP flag bit the virtio-iommu does not define (it defines READ, WRITE and MMIO): the
/// device refuses a MAP that carries it (fault injection).
const UNDEFINED_MAP_FLAG: u32 = 1 << 7;
/// Fault-event buffers kept posted.
const EVENTS: usize = 16;

fn err(e: VirtioError) -> IommuError {
    match e {
        VirtioError::Timeout { .. } => IommuError::Timeout("request"),
        VirtioError::Features(why) => IommuError::Device(why),
        VirtioError::NoMemory => IommuError::Device("no memory for the queues"),
        VirtioError::Dead(_) => IommuError::Device("the request queue timed out earlier"),
        VirtioError::Queue(_) => IommuError::Device("request queue error"),
    }
}

/// A bound virtio-iommu.
#[derive(Debug)]
pub struct Viommu {
    t: PciTransport,
    req: DmaQueue,
    evt: DmaQueue,
    /// The request slots (bodies and status tails), one [`SLOT`] per request in flight.
    scratch: FrameRange,
    /// The fault-event buffers the device writes.
    events: FrameRange,
    /// The device configuration.
    pub config: Config,
    /// Negotiated features.
    pub features: u64,
    next_domain: u32,
    /// Requests sent, for the report.
    pub requests: u64,
    /// Faults the device reported.
    pub faults: Vec<FaultEvent>,
}

impl Viommu {
    /// Negotiates features, sets up both queues and posts the event buffers.
    pub fn new(mut t: PciTransport) -> Result<Viommu, IommuError> {
        let wanted = proto::F_VERSION_1
            | proto::F_INPUT_RANGE
            | proto::F_DOMAIN_RANGE
            | proto::F_MAP_UNMAP
            | proto::F_PROBE
            | proto::F_BYPASS_CONFIG;
        let required = [(proto::F_VERSION_1, "VIRTIO_F_VERSION_1"), (proto::F_MAP_UNMAP, "VIRTIO_IOMMU_F_MAP_UNMAP")];
        let features = negotiate(&mut t, wanted, &required).map_err(err)?;
        let rd32 = |t: &PciTransport, off: usize| t.read_config_space::<u32>(off).unwrap_or(0);
        let rd64 = |t: &PciTransport, off: usize| crate::virtio::config_u64(t, off);
        let config = Config::from_fields(
            features,
            rd64(&t, 0),
            (rd64(&t, 8), rd64(&t, 16)),
            (rd32(&t, 24), rd32(&t, 28)),
            rd32(&t, 32),
            t.read_config_space::<u8>(36).unwrap_or(0),
        );
        let req = DmaQueue::new(&mut t, "virtio-iommu requests", proto::REQUEST_QUEUE, 64, identity).map_err(err)?;
        let mut evt =
            DmaQueue::new(&mut t, "virtio-iommu events", proto::EVENT_QUEUE, EVENTS as u16, identity).map_err(err)?;
        let scratch =
            FrameRange::alloc_zeroed(SCRATCH_PAGES).map_err(|_| IommuError::Device("no memory for requests"))?;
        let events = FrameRange::alloc_zeroed(1).map_err(|_| IommuError::Device("no memory for fault events"))?;
        t.finish_init();
        for i in 0..EVENTS.min(usize::from(evt.size())) {
            let seg = Seg::write(events.phys().as_u64() + (i * proto::FAULT_EVENT) as u64, proto::FAULT_EVENT as u32);
            evt.push(&[seg]).map_err(err)?;
        }
        evt.kick(&mut t);
        let first = config.domain_range.0.max(1);
        Ok(Viommu {
            t,
            req,
            evt,
            scratch,
            events,
            config,
            features,
            next_domain: first,
            requests: 0,
            faults: Vec::new(),
        })
    }

    /// A new domain ID (from the device's domain range).
    pub fn new_domain(&mut self) -> Result<u32, IommuError> {
        let id = self.next_domain;
        if id > self.config.domain_range.1 {
            return Err(IommuError::Device("no domain IDs left in the device's domain range"));
        }
        self.next_domain += 1;
        Ok(id)
    }

    /// Sends `reqs` (named for errors), several in flight at once; every one must succeed.
    fn execute(&mut self, reqs: &[(&'static str, Vec<u8>)]) -> Result<(), IommuError> {
        self.execute_each(reqs)?.into_iter().collect()
    }

    /// Runs `reqs` in order and returns each one's status; the outer error is a queue failure
    /// or timeout. Every request of a chunk is waited for before its status is read, even after
    /// one failed: the device owns the scratch slots until then.
    fn execute_each(&mut self, reqs: &[(&'static str, Vec<u8>)]) -> Result<Vec<Result<(), IommuError>>, IommuError> {
        let mut out = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(SLOTS.min(usize::from(self.req.size()) / 2).max(1)) {
            let mut tokens = Vec::with_capacity(chunk.len());
            for (i, (_, body)) in chunk.iter().enumerate() {
                let off = i as u64 * SLOT;
                self.scratch.write(off, body).map_err(|_| IommuError::Device("request larger than a slot"))?;
                self.scratch.write(off + TAIL_OFF, &[0xff; TAIL]).map_err(|_| IommuError::Device("slot outside"))?;
                let at = self.scratch.phys().as_u64() + off;
                let segs = [Seg::read(at, body.len() as u32), Seg::write(at + TAIL_OFF, TAIL as u32)];
                tokens.push(self.req.push(&segs).map_err(err)?);
            }
            self.req.kick(&mut self.t);
            for (&tok, (name, _)) in tokens.iter().zip(chunk) {
                self.req.wait(tok, TIMEOUT_MS).map_err(|e| match e {
                    VirtioError::Timeout { .. } => IommuError::Timeout(name),
                    e => err(e),
                })?;
            }
            for (i, (name, _)) in chunk.iter().enumerate() {
                let mut tail = [0u8; TAIL];
                let read = self.scratch.read(i as u64 * SLOT + TAIL_OFF, &mut tail);
                out.push(
                    read.map_err(|_| IommuError::Device("slot outside")).and_then(|_| proto::check_status(name, &tail)),
                );
            }
            self.requests += chunk.len() as u64;
        }
        self.poll_faults();
        Ok(out)
    }

    /// ATTACH `endpoint` to `domain`.
    pub fn attach(&mut self, domain: u32, endpoint: u32) -> Result<(), IommuError> {
        self.execute(&[("ATTACH", proto::attach(domain, endpoint))])
    }

    /// DETACH `endpoint` from `domain`.
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> Result<(), IommuError> {
        self.execute(&[("DETACH", proto::detach(domain, endpoint))])
    }

    /// MAP every mapping of `maps` in `domain` (checked against the configuration first).
    pub fn map(&mut self, domain: u32, maps: &[Mapping]) -> Result<(), IommuError> {
        self.map_each(domain, maps, None)?.into_iter().collect()
    }

    /// MAPs every mapping of `maps` in `domain` and returns each one's status (the device
    /// goes on after refusing one); the outer error is a bad request or a queue failure, with
    /// nothing sent. Fault injection: [`Fault::MapError`] sends one MAP with a flag the device
    /// does not define, when armed for `device` (the device whose domain this is).
    pub fn map_each(
        &mut self,
        domain: u32,
        maps: &[Mapping],
        device: Option<usize>,
    ) -> Result<Vec<Result<(), IommuError>>, IommuError> {
        for m in maps {
            self.config.check(m.iova, m.len)?;
        }
        let reqs: Vec<_> = maps
            .iter()
            .map(|m| {
                let bogus = if inject::take(Fault::MapError, device) { UNDEFINED_MAP_FLAG } else { 0 };
                ("MAP", proto::map(domain, m.iova, m.len, m.phys, m.flags | bogus))
            })
            .collect();
        self.execute_each(&reqs)
    }

    /// UNMAP every mapping of `maps` (whole) in `domain`.
    pub fn unmap(&mut self, domain: u32, maps: &[Mapping]) -> Result<(), IommuError> {
        let reqs: Vec<_> = maps.iter().map(|m| ("UNMAP", proto::unmap(domain, m.iova, m.len))).collect();
        self.execute(&reqs)
    }

    /// PROBE `endpoint`'s properties (reserved regions); empty without the PROBE feature.
    pub fn probe(&mut self, endpoint: u32) -> Result<Vec<Property>, IommuError> {
        let size = self.config.probe_size as u64;
        if size == 0 {
            return Ok(Vec::new());
        }
        if size + 76 > 2 * mm::PAGE_SIZE {
            return Err(IommuError::Device("probe buffer larger than the driver supports"));
        }
        let mut buf = FrameRange::alloc_zeroed(2).map_err(|_| IommuError::Device("no memory for PROBE"))?;
        let body = proto::probe(endpoint);
        buf.write(0, &body).map_err(|_| IommuError::Device("PROBE request larger than its buffer"))?;
        let (props, tail) = (128, 128 + size);
        let pa = buf.phys().as_u64();
        let segs =
            [Seg::read(pa, body.len() as u32), Seg::write(pa + props, size as u32), Seg::write(pa + tail, TAIL as u32)];
        let r = self
            .req
            .submit(&mut self.t, &segs)
            .and_then(|tok| self.req.wait(tok, TIMEOUT_MS))
            .map_err(|e| match e {
                VirtioError::Timeout { .. } => IommuError::Timeout("PROBE"),
                e => err(e),
            })
            .and_then(|_| {
                let outside = |_| IommuError::Device("PROBE reply outside its buffer");
                let mut t = [0u8; TAIL];
                buf.read(tail, &mut t).map_err(outside)?;
                proto::check_status("PROBE", &t)?;
                let mut p = alloc::vec![0u8; size as usize];
                buf.read(props, &mut p).map_err(outside)?;
                proto::parse_probe(&p)
            });
        // On a timeout the device may still own the buffer: never reuse it (leak it).
        if matches!(r, Err(IommuError::Timeout(_))) {
            core::mem::forget(buf);
        }
        r
    }

    /// Takes the fault events the device posted, logs them, and posts their buffers again.
    /// Returns how many arrived.
    pub fn poll_faults(&mut self) -> usize {
        let mut n = 0;
        while let Ok(Some((tok, _len))) = self.evt.poll() {
            let mut b = [0u8; proto::FAULT_EVENT];
            // The token is the head descriptor; buffers were posted one per descriptor, in
            // order, so descriptor k holds buffer k.
            let off = u64::from(tok) * proto::FAULT_EVENT as u64;
            let at = self.events.phys().as_u64() + off;
            if self.events.read(off, &mut b).is_err() {
                log::warn!("virtio-iommu: fault event token {tok} outside the event buffers");
                continue;
            }
            if let Some(f) = FaultEvent::parse(&b) {
                log::warn!("{f}");
                self.faults.push(f);
            }
            let _ = self.evt.push(&[Seg::write(at, proto::FAULT_EVENT as u32)]);
            n += 1;
        }
        if n > 0 {
            self.evt.kick(&mut self.t);
        }
        n
    }
}
