//! A split virtqueue (virtio 1.2 section 2.7) whose buffers are raw device addresses.
//!
//! virtio-drivers' `VirtQueue` takes Rust slices and turns each into a device address through
//! `Hal::share`. The copy engine and the virtio-iommu need more than that: a segment is a
//! device address (an IOVA in a device's domain: a process virtual address, a device-memory
//! page), a request may have up to the device's segment limit of them, and several requests
//! are in flight at once. This queue does only the ring bookkeeping; the rings themselves are
//! handed in as slices of atomics over DMA memory (the kernel builds them from frames it
//! allocated, host tests from vectors), so this module needs no unsafe code.
//!
//! Invariants: a descriptor is either on the free list or in exactly one chain in flight;
//! `avail.idx` is published (release) only after the chain's descriptors and ring slot are
//! written; a used entry is read (acquire) only after `used.idx` says it is there; a chain is
//! freed exactly once, when its used entry is popped.

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering, fence};

/// `VIRTQ_DESC_F_NEXT`.
const DESC_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: the device writes this buffer.
const DESC_WRITE: u16 = 2;

/// One buffer of a request: a device address and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Device address (physical, or an IOVA when the device is behind an IOMMU).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (device-writable buffers follow every readable one).
    pub device_writes: bool,
}

impl Seg {
    /// A buffer the device reads.
    pub fn read(addr: u64, len: u32) -> Seg {
        Seg { addr, len, device_writes: false }
    }
    /// A buffer the device writes.
    pub fn write(addr: u64, len: u32) -> Seg {
        Seg { addr, len, device_writes: true }
    }
}

/// Byte sizes and alignments of the three rings of a queue of `size` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Descriptor table bytes (16 per entry, align 16).
    pub desc: usize,
    /// Driver area bytes (`flags`, `idx`, `ring[size]`, `used_event`; align 2).
    pub avail: usize,
    /// Device area bytes (`flags`, `idx`, `ring[size]` of 8 bytes, `avail_event`; align 4).
    pub used: usize,
}

impl Layout {
    /// The layout for `size` entries.
    pub fn new(size: u16) -> Layout {
        let n = usize::from(size);
        Layout { desc: 16 * n, avail: 6 + 2 * n, used: 6 + 8 * n }
    }
}

/// Why a queue operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The size is not a power of two between 1 and 32768, or the rings do not match it.
    BadSize(u16),
    /// Not enough free descriptors for the chain (`needed`, `free`): wait for completions.
    Full {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free now.
        free: usize,
    },
    /// An empty chain, a zero-length buffer, or a readable buffer after a writable one.
    BadChain(&'static str),
    /// The device reported a used entry for a descriptor that is not the head of a chain in
    /// flight: the device (or the ring memory) is broken.
    BadUsed(u32),
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadSize(s) => write!(f, "virtqueue size {s} is not a power of two in 1..=32768 matching its rings"),
            Self::Full { needed, free } => {
                write!(f, "virtqueue full: the request needs {needed} descriptors, {free} are free")
            }
            Self::BadChain(why) => write!(f, "bad buffer chain: {why}"),
            Self::BadUsed(id) => write!(f, "the device returned descriptor {id}, which is not in flight"),
        }
    }
}

/// The ring memory: views of the three areas as atomics of their natural field width.
#[derive(Debug)]
pub struct Rings<'a> {
    /// Descriptor table: two words per descriptor (`addr`; `len | flags << 32 | next << 48`).
    pub desc: &'a [AtomicU64],
    /// Driver area: `flags`, `idx`, `ring[size]`, `used_event`.
    pub avail: &'a [AtomicU16],
    /// Device area: word 0 is `flags | idx << 16`, then `id`, `len` per entry, then
    /// `avail_event`.
    pub used: &'a [AtomicU32],
}

/// A split virtqueue in the driver's hands.
#[derive(Debug)]
pub struct Virtq<'a> {
    rings: Rings<'a>,
    size: u16,
    free_head: u16,
    num_free: usize,
    /// Next `avail.idx` to publish.
    avail_idx: u16,
    /// `used.idx` up to which entries were popped.
    last_used: u16,
    /// Chain length of each head in flight (0: not a head in flight).
    chain_len: Vec<u16>,
}

impl<'a> Virtq<'a> {
    /// Takes over zeroed rings for `size` entries.
    pub fn new(rings: Rings<'a>, size: u16) -> Result<Virtq<'a>, QueueError> {
        let n = usize::from(size);
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(QueueError::BadSize(size));
        }
        if rings.desc.len() < 2 * n || rings.avail.len() < 3 + n || rings.used.len() < 2 + 2 * n {
            return Err(QueueError::BadSize(size));
        }
        for i in 0..n {
            let next = if i + 1 < n { (i + 1) as u64 } else { 0 };
            rings.desc[2 * i].store(0, Ordering::Relaxed);
            rings.desc[2 * i + 1].store(next << 48, Ordering::Relaxed);
        }
        Ok(Virtq { rings, size, free_head: 0, num_free: n, avail_idx: 0, last_used: 0, chain_len: vec![0; n] })
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.num_free
    }

    /// Requests handed to the device and not yet popped.
    pub fn in_flight(&self) -> usize {
        self.chain_len.iter().filter(|&&l| l > 0).count()
    }

    /// Places a chain (readable buffers first, then writable ones) in the driver area and
    /// publishes it; returns its token (the head descriptor). The caller then notifies the
    /// device.
    pub fn add(&mut self, segs: &[Seg]) -> Result<u16, QueueError> {
        if segs.is_empty() {
            return Err(QueueError::BadChain("no buffers"));
        }
        if segs.iter().any(|s| s.len == 0) {
            return Err(QueueError::BadChain("a zero-length buffer"));
        }
        if segs.windows(2).any(|w| w[0].device_writes && !w[1].device_writes) {
            return Err(QueueError::BadChain("a device-readable buffer after a device-writable one"));
        }
        if segs.len() > self.num_free {
            return Err(QueueError::Full { needed: segs.len(), free: self.num_free });
        }
        let head = self.free_head;
        let mut d = head;
        for (k, s) in segs.iter().enumerate() {
            let i = usize::from(d);
            let next = (self.rings.desc[2 * i + 1].load(Ordering::Relaxed) >> 48) as u16;
            let mut flags = if s.device_writes { DESC_WRITE } else { 0 };
            if k + 1 < segs.len() {
                flags |= DESC_NEXT;
            }
            self.rings.desc[2 * i].store(s.addr, Ordering::Relaxed);
            self.rings.desc[2 * i + 1]
                .store(u64::from(s.len) | u64::from(flags) << 32 | u64::from(next) << 48, Ordering::Relaxed);
            if k + 1 < segs.len() {
                d = next;
            } else {
                self.free_head = next;
            }
        }
        self.num_free -= segs.len();
        self.chain_len[usize::from(head)] = segs.len() as u16;
        let slot = usize::from(self.avail_idx % self.size);
        self.rings.avail[2 + slot].store(head, Ordering::Relaxed);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The descriptors and the slot before the index (virtio 2.7.13: a write barrier).
        self.rings.avail[1].store(self.avail_idx, Ordering::Release);
        // And the index before the notification the caller sends next.
        fence(Ordering::SeqCst);
        Ok(head)
    }

    /// Whether the device has returned a chain not yet popped.
    pub fn can_pop(&self) -> bool {
        (self.rings.used[0].load(Ordering::Acquire) >> 16) as u16 != self.last_used
    }

    /// Takes the next used chain: its token and the bytes the device wrote. The chain's
    /// descriptors go back to the free list.
    pub fn pop_used(&mut self) -> Result<Option<(u16, u32)>, QueueError> {
        if !self.can_pop() {
            return Ok(None);
        }
        let slot = usize::from(self.last_used % self.size);
        let id = self.rings.used[1 + 2 * slot].load(Ordering::Acquire);
        let len = self.rings.used[2 + 2 * slot].load(Ordering::Acquire);
        let head = u16::try_from(id).ok().filter(|&h| h < self.size).ok_or(QueueError::BadUsed(id))?;
        let n = self.chain_len[usize::from(head)];
        if n == 0 {
            return Err(QueueError::BadUsed(id));
        }
        self.last_used = self.last_used.wrapping_add(1);
        self.chain_len[usize::from(head)] = 0;
        // Walk to the chain's tail and splice the chain onto the free list.
        let mut tail = usize::from(head);
        for _ in 1..n {
            tail = (self.rings.desc[2 * tail + 1].load(Ordering::Relaxed) >> 48) as usize;
        }
        let w = self.rings.desc[2 * tail + 1].load(Ordering::Relaxed) & 0x0000_ffff_ffff_ffff;
        self.rings.desc[2 * tail + 1].store(w | u64::from(self.free_head) << 48, Ordering::Relaxed);
        self.free_head = head;
        self.num_free += usize::from(n);
        Ok(Some((head, len)))
    }
}

/// The device side of a split queue, for host tests of the drivers built on [`Virtq`]: reads
/// what the driver published and returns chains.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// A chain the driver published: head and its segments.
    pub(crate) type Chain = (u16, Vec<Seg>);

    /// Takes every chain published since the last call (`seen` is the device's avail index).
    pub(crate) fn take(rings: &Rings<'_>, size: u16, seen: &mut u16) -> Vec<Chain> {
        let mut out = Vec::new();
        let idx = rings.avail[1].load(Ordering::Acquire);
        while *seen != idx {
            let head = rings.avail[2 + usize::from(*seen % size)].load(Ordering::Relaxed);
            let mut segs = Vec::new();
            let mut d = usize::from(head);
            loop {
                let w = rings.desc[2 * d + 1].load(Ordering::Relaxed);
                let flags = (w >> 32) as u16;
                segs.push(Seg {
                    addr: rings.desc[2 * d].load(Ordering::Relaxed),
                    len: w as u32,
                    device_writes: flags & DESC_WRITE != 0,
                });
                if flags & DESC_NEXT == 0 {
                    break;
                }
                d = (w >> 48) as usize;
            }
            out.push((head, segs));
            *seen = seen.wrapping_add(1);
        }
        out
    }

    /// Returns chain `head` with `len` bytes written (`used` is the device's used index).
    pub(crate) fn complete(rings: &Rings<'_>, size: u16, used: &mut u16, head: u16, len: u32) {
        let slot = usize::from(*used % size);
        rings.used[1 + 2 * slot].store(u32::from(head), Ordering::Relaxed);
        rings.used[2 + 2 * slot].store(len, Ordering::Relaxed);
        *used = used.wrapping_add(1);
        rings.used[0].store(u32::from(*used) << 16, Ordering::Release);
    }

    /// Zeroed ring memory for `size` entries.
    pub(crate) struct Mem(pub Vec<AtomicU64>, pub Vec<AtomicU16>, pub Vec<AtomicU32>);

    impl Mem {
        pub(crate) fn new(size: u16) -> Mem {
            let n = usize::from(size);
            Mem(
                (0..2 * n).map(|_| AtomicU64::new(0)).collect(),
                (0..3 + n).map(|_| AtomicU16::new(0)).collect(),
                (0..2 + 2 * n).map(|_| AtomicU32::new(0)).collect(),
            )
        }
        pub(crate) fn rings(&self) -> Rings<'_> {
            Rings { desc: &self.0, avail: &self.1, used: &self.2 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::*;
    use super::*;

    #[test]
    fn chains_round_trip_and_descriptors_are_recycled() {
        let mem = Mem::new(8);
        let mut q = Virtq::new(mem.rings(), 8).unwrap();
        let dev = mem.rings();
        let (mut seen, mut used) = (0u16, 0u16);
        // Many rounds so the indices wrap the ring several times.
        for round in 0..40u64 {
            let a = q.add(&[Seg::read(0x1000 + round, 16), Seg::read(0x2000, 512), Seg::write(0x3000, 1)]).unwrap();
            let b = q.add(&[Seg::read(0x4000, 8), Seg::write(0x5000, 4)]).unwrap();
            assert_eq!((q.free_descriptors(), q.in_flight()), (3, 2));
            let chains = take(&dev, 8, &mut seen);
            assert_eq!(chains.len(), 2);
            assert_eq!(chains[0].0, a);
            assert_eq!(
                chains[0].1,
                [Seg::read(0x1000 + round, 16), Seg::read(0x2000, 512), Seg::write(0x3000, 1)].to_vec()
            );
            assert_eq!(chains[1].1, [Seg::read(0x4000, 8), Seg::write(0x5000, 4)].to_vec());
            assert_eq!(q.pop_used(), Ok(None));
            // Completed out of order.
            complete(&dev, 8, &mut used, b, 4);
            complete(&dev, 8, &mut used, a, 1);
            assert_eq!(q.pop_used(), Ok(Some((b, 4))));
            assert_eq!(q.pop_used(), Ok(Some((a, 1))));
            assert_eq!((q.free_descriptors(), q.in_flight()), (8, 0));
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let mem = Mem::new(4);
        assert_eq!(Virtq::new(mem.rings(), 3).unwrap_err(), QueueError::BadSize(3));
        assert_eq!(Virtq::new(mem.rings(), 8).unwrap_err(), QueueError::BadSize(8), "rings too small");
        let mut q = Virtq::new(mem.rings(), 4).unwrap();
        assert!(matches!(q.add(&[]), Err(QueueError::BadChain(_))));
        assert!(matches!(q.add(&[Seg::read(1, 0)]), Err(QueueError::BadChain(_))));
        assert!(matches!(q.add(&[Seg::write(1, 1), Seg::read(2, 1)]), Err(QueueError::BadChain(_))));
        let five = [Seg::read(1, 1); 5];
        assert_eq!(q.add(&five), Err(QueueError::Full { needed: 5, free: 4 }));
        let h = q.add(&five[..3]).unwrap();
        assert_eq!(q.add(&five[..2]), Err(QueueError::Full { needed: 2, free: 1 }));
        // A used entry naming a descriptor that is not a head in flight.
        let dev = mem.rings();
        let mut used = 0;
        complete(&dev, 4, &mut used, h + 1, 0);
        assert_eq!(q.pop_used(), Err(QueueError::BadUsed(u32::from(h) + 1)));
    }
}
