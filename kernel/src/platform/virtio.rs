//! Virtio plumbing for the drivers that move raw device addresses (the virtio-iommu and the
//! copy engines): feature negotiation on virtio-drivers' PCI transport, and [`DmaQueue`], a
//! [`drivers::virtq::Virtq`] on frames of its own with a bounded wait.
//!
//! Every wait on a device is bounded: a request that does not complete within its timeout
//! marks the queue dead (its buffers may still be owned by the device, so they are not
//! reused) and is reported as an error naming the device and the queue. A driver that can
//! reset its device (the copy engines) then does so and [`DmaQueue::reset`]s the queue: once
//! the device reads back status 0 it owns no buffer, and the queue starts again empty on the
//! same rings.
//!
//! A queue may signal its completions by MSI-X ([`DmaQueue::use_interrupt`]). Its waits then
//! poll for [`SPIN_US`] and after that halt the CPU between looks at the used ring, so under
//! emulation the host core goes to the emulator's threads doing the copy. The interrupt is
//! routed to the waiting CPU before it looks; the look and the halt run with interrupts off
//! up to `sti; hlt`, so a completion after the look wakes the halt. The APIC timer's tick
//! also ends every halt, so a lost message costs at most a tick, and the wait stays bounded
//! by its timeout.
//! A wait entered with interrupts off spins as before.

use crate::platform::arch::{apic, time, trap};
use crate::platform::mm::{self, Iova, frame};
use crate::platform::pci::{Msix, MsixError, VirtioCommon};
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64};
use drivers::virtq::{Layout, QueueError, Rings, Seg, Virtq};
use virtio_drivers::transport::{DeviceStatus, Transport, pci::PciTransport};
use x86_64::instructions::interrupts;

/// A failed virtio operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtioError {
    /// Feature negotiation failed (the text names the missing feature).
    Features(&'static str),
    /// The queue could not be set up or used.
    Queue(QueueError),
    /// No frames for the rings.
    NoMemory,
    /// The device did not complete a request in time; the queue is unusable from now on.
    Timeout {
        /// Which device.
        device: &'static str,
        /// The bound, in milliseconds.
        ms: u64,
    },
    /// An earlier timeout left the queue unusable.
    Dead(&'static str),
}

impl core::fmt::Display for VirtioError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Features(why) => write!(f, "feature negotiation: {why}"),
            Self::Queue(e) => write!(f, "{e}"),
            Self::NoMemory => write!(f, "no memory for the virtqueue rings"),
            Self::Timeout { device, ms } => {
                write!(f, "{device}: no completion within {ms} ms; the device is considered broken")
            }
            Self::Dead(device) => write!(f, "{device}: the queue timed out earlier and is no longer used"),
        }
    }
}

impl From<QueueError> for VirtioError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}

/// Resets the device and negotiates `wanted` (those in `required` must be offered); returns
/// the negotiated features. Queues are set up after this, then [`Transport::finish_init`].
pub fn negotiate(t: &mut PciTransport, wanted: u64, required: &[(u64, &'static str)]) -> Result<u64, VirtioError> {
    t.set_status(DeviceStatus::empty());
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = t.read_device_features();
    for &(bit, name) in required {
        if offered & bit == 0 {
            t.set_status(DeviceStatus::FAILED);
            return Err(VirtioError::Features(name));
        }
    }
    let features = offered & wanted;
    t.write_driver_features(features);
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    if !t.get_status().contains(DeviceStatus::FEATURES_OK) {
        t.set_status(DeviceStatus::FAILED);
        return Err(VirtioError::Features("the device refused the negotiated features"));
    }
    Ok(features)
}

/// A 64-bit configuration field, read as two 32-bit halves (virtio guarantees only 4-byte
/// alignment of the device configuration; 0 if unreadable).
pub fn config_u64(t: &PciTransport, offset: usize) -> u64 {
    let lo = t.read_config_space::<u32>(offset).unwrap_or(0);
    let hi = t.read_config_space::<u32>(offset + 4).unwrap_or(0);
    u64::from(lo) | u64::from(hi) << 32
}

/// Atomic views of DMA memory.
trait Word: Sized {}
impl Word for AtomicU16 {}
impl Word for AtomicU32 {}
impl Word for AtomicU64 {}

/// `count` words at physical `pa`, seen through the direct map.
fn view<T: Word>(pa: u64, count: usize) -> &'static [T] {
    // SAFETY: `pa` is the start of frames `DmaQueue::new` allocated for this queue alone and
    // never frees (a queue lives as long as its device, the kernel's lifetime); the direct
    // map maps them read-write; `pa` is aligned for `T` (ring offsets are multiples of 16),
    // the frames hold `count` words, and every access (ours and the device's) is atomic or
    // by DMA, which the atomics' orderings account for.
    unsafe { core::slice::from_raw_parts(mm::phys_to_virt(pa) as *const T, count) }
}

/// Tells the device where queue `index`'s rings are: the IOVAs of the descriptor table (at
/// `pa`) and the driver and device areas (at the offsets).
fn set_rings(
    t: &mut PciTransport,
    index: u16,
    size: u16,
    iova: impl Fn(u64) -> Iova,
    pa: u64,
    avail_off: u64,
    used_off: u64,
) {
    let (desc, avail, used) = (iova(pa), iova(pa + avail_off), iova(pa + used_off));
    t.queue_set(index, u32::from(size), desc.get(), avail.get(), used.get());
}

/// How long a wait polls the used ring before it halts (when the queue interrupts): a
/// completion this soon is seen without the halt's wake-up latency (a 4 KiB copy takes tens
/// of microseconds under TCG), a longer wait gives the CPU back.
const SPIN_US: u64 = 50;

/// A virtqueue on its own frames.
#[derive(Debug)]
pub struct DmaQueue {
    device: &'static str,
    index: u16,
    q: Virtq<'static>,
    dead: bool,
    /// Completions popped while waiting for another token: (token, bytes written).
    done: alloc::vec::Vec<(u16, u32)>,
    /// The rings' frames: physical address, pages, and the driver and device areas' offsets.
    rings: (u64, usize, u64, u64),
    /// The completion interrupt, once [`DmaQueue::use_interrupt`] set it up.
    irq: Option<Irq>,
    /// Halts in waits (each ended by an interrupt: the completion's or a tick).
    halts: u64,
}

/// A queue's completion interrupt: an MSI-X entry of its function, and where it points now.
#[derive(Debug)]
pub struct Irq {
    msix: Msix,
    common: VirtioCommon,
    entry: u16,
    /// The APIC id the entry targets.
    target: u32,
}

impl DmaQueue {
    /// Allocates rings for queue `index` (at most `want` entries, at most what the device
    /// takes) and tells the device where they are; `iova` turns a physical address into the
    /// address the device uses (identity without an IOMMU).
    pub fn new(
        t: &mut PciTransport,
        device: &'static str,
        index: u16,
        want: u16,
        iova: impl Fn(u64) -> Iova,
    ) -> Result<DmaQueue, VirtioError> {
        let max = t.max_queue_size(index).min(u32::from(want));
        if max == 0 {
            return Err(VirtioError::Queue(QueueError::BadSize(0)));
        }
        let size = 1u16 << (31 - max.leading_zeros()); // largest power of two <= max
        let l = Layout::new(size);
        let avail_off = l.desc as u64;
        let used_off = (avail_off + l.avail as u64).next_multiple_of(16);
        let bytes = used_off + l.used as u64;
        let pages = bytes.div_ceil(mm::PAGE_SIZE) as usize;
        let pa = frame::alloc_zeroed(pages).map_err(|_| VirtioError::NoMemory)?;
        let rings = Rings {
            desc: view(pa, 2 * usize::from(size)),
            avail: view(pa + avail_off, 3 + usize::from(size)),
            used: view(pa + used_off, 2 + 2 * usize::from(size)),
        };
        let q = Virtq::new(rings, size)?;
        set_rings(t, index, size, iova, pa, avail_off, used_off);
        Ok(DmaQueue {
            device,
            index,
            q,
            dead: false,
            done: alloc::vec::Vec::new(),
            rings: (pa, pages, avail_off, used_off),
            irq: None,
            halts: 0,
        })
    }

    /// Starts the queue again, empty, on the same rings, after the device was reset (it has
    /// read back status 0, so it owns none of the old buffers) and renegotiated; every request
    /// in flight before is forgotten. The caller finishes the device's initialisation.
    pub fn reset(&mut self, t: &mut PciTransport, iova: impl Fn(u64) -> Iova) -> Result<(), VirtioError> {
        let (pa, pages, avail_off, used_off) = self.rings;
        let size = self.q.size();
        for p in 0..pages as u64 {
            mm::write_phys(pa + p * mm::PAGE_SIZE, &[0u8; mm::PAGE_SIZE as usize]);
        }
        let rings = Rings {
            desc: view(pa, 2 * usize::from(size)),
            avail: view(pa + avail_off, 3 + usize::from(size)),
            used: view(pa + used_off, 2 + 2 * usize::from(size)),
        };
        self.q = Virtq::new(rings, size)?;
        set_rings(t, self.index, size, iova, pa, avail_off, used_off);
        self.dead = false;
        self.done.clear();
        // The device's reset forgot the queue's vector.
        if let Some(irq) = &self.irq
            && irq.common.set_queue_vector(self.index, Some(irq.entry)).is_err()
        {
            log::warn!("{}: MSI-X vector refused after the reset; its waits spin", self.device);
            self.irq = None;
        }
        Ok(())
    }

    /// Signals this queue's completions through MSI-X entry `entry` of its function
    /// (`msix`, `common`: that function's table and common configuration) as
    /// [`trap::DMA_VECTOR`] to this CPU for now. Before DRIVER_OK, or after it: the device
    /// takes a vector at any time.
    pub fn use_interrupt(&mut self, msix: Msix, common: VirtioCommon, entry: u16) -> Result<(), MsixError> {
        let target = apic::id();
        msix.route(entry, trap::DMA_VECTOR, target)?;
        common.set_queue_vector(self.index, Some(entry))?;
        self.irq = Some(Irq { msix, common, entry, target });
        Ok(())
    }

    /// Whether completions interrupt (waits halt instead of spinning).
    pub fn interrupts(&self) -> bool {
        self.irq.is_some()
    }

    /// Halts in waits so far.
    pub fn halts(&self) -> u64 {
        self.halts
    }

    /// Whether a request timed out: the queue takes no more.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.q.size()
    }

    /// Publishes a chain and notifies the device; returns its token.
    pub fn submit(&mut self, t: &mut PciTransport, segs: &[Seg]) -> Result<u16, VirtioError> {
        if self.dead {
            return Err(VirtioError::Dead(self.device));
        }
        let token = self.q.add(segs)?;
        t.notify(self.index);
        Ok(token)
    }

    /// Publishes a chain without notifying (several, then [`DmaQueue::kick`]).
    pub fn push(&mut self, segs: &[Seg]) -> Result<u16, VirtioError> {
        if self.dead {
            return Err(VirtioError::Dead(self.device));
        }
        Ok(self.q.add(segs)?)
    }

    /// Notifies the device of what was pushed.
    pub fn kick(&self, t: &mut PciTransport) {
        t.notify(self.index);
    }

    /// A completion, if one is there (without waiting).
    pub fn poll(&mut self) -> Result<Option<(u16, u32)>, VirtioError> {
        if let Some(d) = self.done.pop() {
            return Ok(Some(d));
        }
        Ok(self.q.pop_used()?)
    }

    /// Waits (at most `timeout_ms`) until `token` has completed, leaving its completion for
    /// the [`wait`](Self::wait) of its submitter (an invalidation settling DMA in flight).
    pub fn settle(&mut self, token: u16, timeout_ms: u64) -> Result<(), VirtioError> {
        let len = self.wait(token, timeout_ms)?;
        self.done.push((token, len));
        Ok(())
    }

    /// Waits (at most `timeout_ms`) for the completion of `token`; returns the bytes the
    /// device wrote. Other completions seen meanwhile are kept for [`DmaQueue::poll`] and
    /// later waits.
    pub fn wait(&mut self, token: u16, timeout_ms: u64) -> Result<u32, VirtioError> {
        if let Some(i) = self.done.iter().position(|d| d.0 == token) {
            return Ok(self.done.swap_remove(i).1);
        }
        let start = time::rdtsc();
        let hz = time::tsc_hz().unwrap_or(1_000_000_000);
        let (limit, spin) = (hz / 1000 * timeout_ms, hz / 1_000_000 * SPIN_US);
        let enabled = interrupts::are_enabled() && self.irq.is_some();
        loop {
            // After the first SPIN_US, halt; only when the message comes here (a task moved
            // to another CPU routes it again), with interrupts off from the look to `sti;
            // hlt`: a completion after the look raises its message while they are off, and it
            // wakes the halt.
            let halt = enabled && time::rdtsc().wrapping_sub(start) > spin && self.route_here();
            if halt {
                interrupts::disable();
            }
            let used = self.q.pop_used();
            match used {
                Ok(Some(_)) | Err(_) if halt => interrupts::enable(),
                _ => {}
            }
            match used? {
                Some((t, len)) if t == token => return Ok(len),
                Some(other) => self.done.push(other),
                None if time::rdtsc().wrapping_sub(start) > limit => {
                    if halt {
                        interrupts::enable();
                    }
                    self.dead = true;
                    return Err(VirtioError::Timeout { device: self.device, ms: timeout_ms });
                }
                None if halt => {
                    self.halts += 1;
                    interrupts::enable_and_hlt();
                }
                None => core::hint::spin_loop(),
            }
        }
    }

    /// Points the completion interrupt at this CPU, if it points elsewhere; whether it does.
    fn route_here(&mut self) -> bool {
        let Some(irq) = self.irq.as_mut() else { return false };
        let me = apic::id();
        if irq.target != me {
            if let Err(e) = irq.msix.retarget(irq.entry, me) {
                log::warn!("{}: retargeting its MSI-X entry: {e}", self.device);
                return false;
            }
            irq.target = me;
        }
        true
    }
}
