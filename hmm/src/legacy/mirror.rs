//! The 5.0-5.4 mirror API: `hmm_mirror_register` with `sync_cpu_device_pagetables` and
//! `release`, and ranges tracked by `hmm_range_register` / `hmm_range_wait_until_valid` /
//! `hmm_range_valid`, read by `hmm_range_snapshot` / `hmm_range_fault(range, block)` and mapped
//! for DMA by `hmm_range_dma_map` / `hmm_range_dma_unmap`.
//!
//! The driver's loop of that generation:
//!
//! ```text
//! hmm_range_register(range, mirror, start, end)
//! again: if !hmm_range_wait_until_valid(range, TIMEOUT) { goto again or fail }
//!        lock space; n = hmm_range_fault(range, block); unlock space
//!        if n == -EBUSY { goto again }
//!        lock(driver); if !hmm_range_valid(range) { unlock; goto again }
//!        program the device; unlock(driver)
//! hmm_range_unregister(range)
//! ```
//!
//! Mapping onto the core: a [`HmmMirror`] is an interval notifier over the whole user address
//! space whose callback is the driver's `sync_cpu_device_pagetables` (and, for the teardown
//! event, `release`). A [`MirrorRange`] is an interval notifier over its range:
//! `wait_until_valid` is `read_begin`, `valid` is `!read_retry`. In 5.2 `valid` was a flag that
//! invalidate-start cleared and invalidate-end set again, so a whole invalidation between
//! `wait_until_valid` and `hmm_range_valid` went unseen (Linux commit 04ec32fbc2b2, pitfall
//! P1); the sequence number closes that race. [`MirrorRange::flag`] still computes the old
//! flag, only so tests can show the difference.
//!
//! `hmm_range_dma_map` maps through a [`DmaMap`] the driver supplies (its device's IOMMU
//! domain once the devices issue brings one; an identity map for devices without one).

use super::{LegacyError, PfnFormat, check_range, fault_words};
use crate::addr::Pfn;
use crate::mm::notify::{Event, Range};
use crate::mm::pagetable::USER_END;
use crate::mm::{Error, Mm, SharedSpace};
use crate::notifier::{Interval, IntervalNotifier, IntervalOps, SeqOnly, Subscriptions};
use crate::range::Request;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

/// The driver side of a mirror (`struct hmm_mirror_ops`).
pub trait MirrorOps: Send + Sync {
    /// `sync_cpu_device_pagetables`: the CPU page tables of `update` are about to change;
    /// remove the device's mappings of that range. When `!update.blockable` the driver may
    /// not sleep: it returns `false` (`-EAGAIN`) if it cannot do it without blocking.
    fn sync_cpu_device_pagetables(&self, mirror: &HmmMirror, update: &Range) -> bool;
    /// `release`: the address space is being torn down; stop using it.
    fn release(&self, mirror: &HmmMirror);
}

/// A device's mirror of one address space (`struct hmm_mirror`).
pub struct HmmMirror {
    space: Weak<SharedSpace>,
    mm: Arc<Mm>,
    ops: Weak<dyn MirrorOps>,
    notifier: Arc<dyn IntervalOps>,
    sub: Mutex<Option<IntervalNotifier>>,
    this: Weak<HmmMirror>,
    released: AtomicBool,
}

impl core::fmt::Debug for HmmMirror {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HmmMirror").field("released", &self.released.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

struct MirrorNotifier(Weak<HmmMirror>);

impl IntervalOps for MirrorNotifier {
    fn invalidate(&self, sub: &Interval, range: &Range, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        let Some(m) = self.0.upgrade() else { return true };
        let Some(ops) = m.ops.upgrade() else { return true };
        if range.event == Event::Release {
            if !m.released.swap(true, Ordering::AcqRel) {
                ops.release(&m);
            }
            return true;
        }
        ops.sync_cpu_device_pagetables(&m, range)
    }
}

impl HmmMirror {
    /// `hmm_mirror_register`: mirrors `space` for a driver. The caller must not hold the
    /// address space's lock.
    pub fn register(space: &Arc<SharedSpace>, ops: Weak<dyn MirrorOps>) -> Result<Arc<HmmMirror>, Error> {
        if ops.upgrade().is_none() {
            return Err(Error::Invalid("a mirror needs its sync_cpu_device_pagetables and release callbacks"));
        }
        let mut guard = space.lock();
        let m = Arc::new_cyclic(|this: &Weak<HmmMirror>| HmmMirror {
            space: Arc::downgrade(space),
            mm: guard.mm().clone(),
            ops,
            notifier: Arc::new(MirrorNotifier(this.clone())),
            sub: Mutex::new(None),
            this: this.clone(),
            released: AtomicBool::new(false),
        });
        let subs = Subscriptions::of(&mut guard);
        drop(guard);
        let sub = subs.insert(0, USER_END, Arc::downgrade(&m.notifier))?;
        *m.sub.lock() = Some(sub);
        Ok(m)
    }

    /// `hmm_mirror_unregister`: no more callbacks once this returns. The caller must not hold
    /// the address space's lock, nor call it from a callback.
    pub fn unregister(&self) -> Result<(), Error> {
        match self.sub.lock().take() {
            Some(sub) => sub.remove().map_err(|(_, e)| e),
            None => Ok(()),
        }
    }

    /// Whether `release` was called (the address space is gone).
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// `hmm_range_register`: tracks `[start, end)` for invalidations until the range is
    /// dropped (`hmm_range_unregister`).
    pub fn range_register(&self, start: u64, end: u64) -> Result<MirrorRange, LegacyError> {
        check_range(start, end, ((end.saturating_sub(start)) / 4096) as usize)?;
        let space = self.space.upgrade().ok_or(LegacyError::Invalid("the address space is gone"))?;
        let ops: Arc<dyn IntervalOps> = Arc::new(SeqOnly);
        let subs = Subscriptions::of(&mut space.lock());
        let sub = subs
            .insert(start, end - start, Arc::downgrade(&ops))
            .map_err(|_| LegacyError::Invalid("the address space has been torn down"))?;
        let mirror = self.this.upgrade().ok_or(LegacyError::Invalid("the mirror is gone"))?;
        Ok(MirrorRange { mirror, subs, sub, seq: None, start, end, _ops: ops })
    }
}

impl Drop for HmmMirror {
    fn drop(&mut self) {
        let _ = self.unregister();
    }
}

/// A registered range (`struct hmm_range` of 5.0-5.4); dropping it is `hmm_range_unregister`.
pub struct MirrorRange {
    mirror: Arc<HmmMirror>,
    subs: Arc<Subscriptions>,
    sub: IntervalNotifier,
    seq: Option<u64>,
    start: u64,
    end: u64,
    _ops: Arc<dyn IntervalOps>,
}

impl core::fmt::Debug for MirrorRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MirrorRange").field("start", &self.start).field("end", &self.end).finish_non_exhaustive()
    }
}

/// DMA mapping for `hmm_range_dma_map` (`dma_map_page` / `dma_unmap_page` of the device).
pub trait DmaMap {
    /// Maps `pfn` for the device (writable if `write`); returns the device address.
    fn map(&self, pfn: Pfn, write: bool) -> Result<u64, Error>;
    /// Undoes one `map`.
    fn unmap(&self, daddr: u64);
}

impl MirrorRange {
    /// First address.
    pub fn start(&self) -> u64 {
        self.start
    }
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// `hmm_range_wait_until_valid`: waits (bounded) until no invalidation of the range is
    /// running and takes the sequence the next `valid` checks against. `false` on timeout.
    pub fn wait_until_valid(&mut self) -> bool {
        match self.sub.read_begin() {
            Ok(seq) => {
                self.seq = Some(seq);
                true
            }
            Err(_) => false,
        }
    }

    /// `hmm_range_valid`: whether what was read since `wait_until_valid` is still current.
    /// Call with the driver's lock held (the one its `sync_cpu_device_pagetables` takes).
    pub fn valid(&self) -> bool {
        self.seq.is_some_and(|s| !self.sub.read_retry(s))
    }

    /// The 5.2 `range->valid` flag: false while an invalidation runs, true again once it has
    /// ended, whatever happened in between. Kept only to show the race it had; do not decide
    /// anything with it.
    pub fn flag(&self) -> bool {
        !self.subs.is_invalidating()
    }

    fn walk(&mut self, pfns: &mut [u64], fmt: &PfnFormat, req: Request, block: bool) -> Result<usize, LegacyError> {
        check_range(self.start, self.end, pfns.len())?;
        let space = self.mirror.space.upgrade().ok_or(LegacyError::Invalid("the address space is gone"))?;
        let Some(seq) = self.seq else { return Err(LegacyError::Busy) };
        for _ in 0..64 {
            let mut s = space.lock();
            // 5.x: a VMA without read access fails the whole call with -EPERM, the entries
            // cleared (6.x reports -EFAULT from the walk instead).
            if s.vmas().overlapping(self.start, self.end).any(|v| !(v.prot.read() || v.prot.write())) {
                pfns.iter_mut().for_each(|w| *w = fmt.values[super::HMM_PFN_NONE]);
                return Err(LegacyError::Permission);
            }
            let r = fault_words(&mut s, &self.sub, seq, (self.start, self.end), fmt, pfns, req);
            drop(s);
            match r {
                // A busy page (migration in flight): with `block`, let go of the space so the
                // migration can end, and walk again.
                Err(LegacyError::Again) if block => core::hint::spin_loop(),
                r => return r,
            }
        }
        Err(LegacyError::Again)
    }

    /// `hmm_range_snapshot`: the entries of the range in `fmt` (`pfns` holds one per page),
    /// faulting nothing; returns the number of valid pages. `-EBUSY` when the range was
    /// invalidated (or never waited on): `wait_until_valid` and call again; `-EPERM` when a
    /// VMA of the range has no read access.
    pub fn snapshot(&mut self, pfns: &mut [u64], fmt: &PfnFormat) -> Result<usize, LegacyError> {
        pfns.iter_mut().for_each(|w| *w = fmt.values[super::HMM_PFN_NONE]);
        self.walk(pfns, fmt, Request::NONE, true)
    }

    /// `hmm_range_fault(range, block)`: faults in the pages whose `pfns` word asks for it
    /// (`flags[VALID]`, with `flags[WRITE]` for write) and writes every entry in `fmt`; returns
    /// the number of valid pages. `-EAGAIN` when a page is busy and `!block`; `-EPERM` for a
    /// VMA without read access, or a write request on a read-only page.
    pub fn fault(&mut self, pfns: &mut [u64], fmt: &PfnFormat, block: bool) -> Result<usize, LegacyError> {
        self.walk(pfns, fmt, Request::NONE, block)
    }

    /// `hmm_range_dma_map`: faults the range like [`fault`](Self::fault), then maps every
    /// valid page through `dma` into `daddrs` (0 where nothing was mapped); returns the number
    /// mapped. On a mapping failure everything mapped is unmapped again.
    pub fn dma_map(
        &mut self,
        pfns: &mut [u64],
        fmt: &PfnFormat,
        dma: &dyn DmaMap,
        daddrs: &mut [u64],
        block: bool,
    ) -> Result<usize, LegacyError> {
        if daddrs.len() != pfns.len() {
            return Err(LegacyError::Invalid("daddrs must hold one entry per page"));
        }
        self.fault(pfns, fmt, block)?;
        let mut mapped = 0;
        for i in 0..pfns.len() {
            daddrs[i] = 0;
            let Some(pfn) = fmt.pfn(pfns[i]) else { continue };
            if fmt.is_device_private(pfns[i]) {
                // Device memory is addressed by the device itself, not through DMA.
                continue;
            }
            match dma.map(pfn, fmt.is_write(pfns[i])) {
                Ok(a) => {
                    daddrs[i] = a;
                    mapped += 1;
                }
                Err(_) => {
                    self.dma_unmap(pfns, fmt, dma, daddrs, false);
                    return Err(LegacyError::NoMemory);
                }
            }
        }
        Ok(mapped)
    }

    /// `hmm_range_dma_unmap`: unmaps what `dma_map` mapped; with `dirty`, the pages the device
    /// could write are marked dirty. Returns the number unmapped.
    pub fn dma_unmap(&self, pfns: &[u64], fmt: &PfnFormat, dma: &dyn DmaMap, daddrs: &mut [u64], dirty: bool) -> usize {
        let mut n = 0;
        for (i, d) in daddrs.iter_mut().enumerate() {
            if *d == 0 {
                continue;
            }
            dma.unmap(*d);
            *d = 0;
            n += 1;
            if dirty
                && fmt.is_write(pfns[i])
                && let Some(meta) = fmt.pfn(pfns[i]).and_then(|p| self.mirror.mm.meta(p))
            {
                meta.set(crate::mm::frame::flags::DIRTY);
            }
        }
        n
    }
}
