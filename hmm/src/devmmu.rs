//! A device MMU that mirrors a process address space: the driver half of an IOMMU domain
//! whose user half translates IOVA = process virtual address (shared virtual addressing
//! without PASIDs, so one address space per domain at a time).
//!
//! A [`Mirror`] owns the device's view of one address space:
//! - a per-page table ([`DevPageTable`]): each mirrored page is either a system-RAM frame that
//!   the domain maps at IOVA = VA, or a page of the device's own memory (a device-private page
//!   of its owner), which the device reaches locally and never through the IOMMU;
//! - the DMA requests in flight through the domain;
//! - an interval notifier over the whole user half.
//!
//! The protocols are Linux's `mmu_interval_notifier` driver pattern (brief "Device MMU"):
//! - device fault ([`Mirror::fault`]): `read_begin`, `hmm_range_fault`, then under the mirror
//!   lock, and only if `read_retry` says nothing changed meanwhile, MAP what is new and record
//!   it; a lost race starts again;
//! - DMA ([`Mirror::dma`]): under the mirror lock every page of every segment must be mapped
//!   with the access the transfer needs; the request is submitted and recorded in flight
//!   before the lock is dropped. A device whose DMA faults cannot recover (QEMU's virtio
//!   devices stop), so the driver maps before it submits and refuses what is not mapped;
//! - invalidate: take the mirror lock, `set_seq`, wait for every in-flight request that
//!   overlaps the range, UNMAP, forget; only then return, so the CPU side may free or change
//!   the pages once the callback is done.
//!
//! Invariants: every RAM entry of the table is mapped in the domain with at least its access,
//! and the user half maps nothing the table does not hold; the segments of a request in flight
//! stay mapped until it is completed ([`Mirror::complete`]) or settled by an invalidation.
//! Lock order: address space, notifier state, the mirror lock, then whatever the [`Domain`]
//! takes; the mirror never locks the address space while it holds its own lock.

use crate::addr::Pfn;
use crate::devpt::{DevPageTable, Entry};
use crate::mm::SharedSpace;
use crate::mm::notify::{Event, Owner, Range};
use crate::mm::pagetable::USER_END;
use crate::notifier::{Interval, IntervalNotifier, IntervalOps, Subscriptions};
use crate::pagemap::Pagemaps;
use crate::range::{HmmPfn, RangeError, Request, fault_round};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use spin::Mutex;

const PAGE: u64 = 4096;
/// Pages per range fault (one leaf of the table).
const CHUNK: u64 = 512;
/// Lost races a fault tolerates before it reports that the range keeps changing.
const RETRIES: u32 = 1000;

/// One IOMMU mapping of the user half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoMap {
    /// Device address (= process virtual address).
    pub iova: u64,
    /// Bytes (a multiple of 4 KiB).
    pub len: u64,
    /// Physical address.
    pub phys: u64,
    /// The device may write.
    pub write: bool,
}

/// Which request to the hardware side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainOp {
    /// Entering mappings in the domain.
    Map,
    /// Removing mappings from the domain.
    Unmap,
    /// Waiting for a DMA request in flight.
    Settle,
    /// Starting or completing a DMA request.
    Dma,
    /// Migrating pages into the device's memory (on its fault path).
    Migrate,
}

/// Why the hardware side failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainFailure {
    /// The IOMMU or the engine answered with an error status (its `VIRTIO_*_S_*` code).
    Refused {
        /// The device's status code.
        status: u8,
    },
    /// The device did not answer within its bound.
    TimedOut,
    /// The request was malformed (misaligned, out of the device's range, overlapping, or not
    /// mapped for the access): a driver bug, refused before it reached the device.
    Invalid(&'static str),
    /// No such device, or its drivers are not up.
    NoDevice,
    /// The device or its driver is unusable (the text says how).
    Unusable(&'static str),
}

/// A failure of the hardware side: the request and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainError {
    /// The request.
    pub op: DomainOp,
    /// Why it failed.
    pub failure: DomainFailure,
}

impl core::fmt::Display for DomainError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let op = match self.op {
            DomainOp::Map => "MAP",
            DomainOp::Unmap => "UNMAP",
            DomainOp::Settle => "waiting for a DMA request",
            DomainOp::Dma => "DMA",
            DomainOp::Migrate => "migration to device memory",
        };
        match self.failure {
            DomainFailure::Refused { status } => write!(f, "{op}: the device answered status {status}"),
            DomainFailure::TimedOut => write!(f, "{op}: the device did not answer in time"),
            DomainFailure::Invalid(why) => write!(f, "{op}: refused before reaching the device: {why}"),
            DomainFailure::NoDevice => write!(f, "{op}: no such device (or its drivers are not up)"),
            DomainFailure::Unusable(why) => write!(f, "{op}: the device is unusable: {why}"),
        }
    }
}

/// What broke a mirror: a request on `[start, end)` that failed inside an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakage {
    /// First address of the range being invalidated.
    pub start: u64,
    /// One past its last address.
    pub end: u64,
    /// The failed request.
    pub cause: DomainError,
}

impl core::fmt::Display for Breakage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "invalidating {:#x}..{:#x}: {}", self.start, self.end, self.cause)
    }
}

/// The hardware side of a mirror: an IOMMU domain, and the engine whose DMA goes through it.
pub trait Domain: Send {
    /// A request in flight.
    type Ticket: Copy + core::fmt::Debug + Send;
    /// MAPs `maps` (nothing in them is mapped yet).
    fn map(&mut self, maps: &[IoMap]) -> Result<(), DomainError>;
    /// UNMAPs everything in `[start, end)` of the user half; afterwards the device cannot
    /// reach it.
    fn unmap(&mut self, start: u64, end: u64) -> Result<(), DomainError>;
    /// Waits (bounded) until request `t` has completed; its result stays for its submitter.
    fn settle(&mut self, t: Self::Ticket) -> Result<(), DomainError>;
}

/// Where a mirrored page is, for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// System RAM at this physical address, mapped in the domain at IOVA = VA.
    Ram(u64),
    /// A page of the device's own memory (a device-private frame of its owner).
    Local(Pfn),
}

/// A mirrored page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Where the page is.
    pub at: Where,
    /// The device may write it.
    pub write: bool,
}

/// Why a mirror operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorError {
    /// The address space is gone (exited) or the mirror was unbound.
    Gone,
    /// The range fault failed at `va` (e.g. `Fault` for an unmapped page, `Permission` for a
    /// write to a read-only mapping).
    Fault {
        /// The first page of the failing chunk.
        va: u64,
        /// Why.
        error: RangeError,
    },
    /// The range kept being invalidated while it was faulted.
    Unstable(u64),
    /// A DMA segment covers a page the mirror does not map with the access needed: the
    /// request was refused before it reached the device.
    NotMapped {
        /// The page.
        va: u64,
        /// The device would have written there.
        write: bool,
    },
    /// A range that is not page-aligned or not in the user half.
    Invalid(&'static str),
    /// The domain refused or failed.
    Domain(DomainError),
    /// Removing the interval notifier failed.
    Notifier(crate::mm::Error),
    /// An earlier UNMAP failed inside an invalidation, so the domain may still map pages the
    /// CPU freed: the mirror refuses all DMA until it is unbound.
    Broken(Breakage),
}

impl core::fmt::Display for MirrorError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Gone => write!(f, "the mirrored address space is gone; bind the device to a live one"),
            Self::Fault { va, error } => write!(f, "device fault at {va:#x}: range fault failed ({error:?})"),
            Self::Unstable(va) => write!(f, "device fault at {va:#x}: the range kept changing under the fault"),
            Self::NotMapped { va, write } => write!(
                f,
                "DMA {} {va:#x} refused: the device MMU does not map it{} (fault it in first)",
                if *write { "to" } else { "from" },
                if *write { " writable" } else { "" }
            ),
            Self::Invalid(why) => write!(f, "device MMU: {why}"),
            Self::Domain(e) => write!(f, "device MMU: {e}"),
            Self::Notifier(e) => write!(f, "device MMU: removing the interval notifier: {e}"),
            Self::Broken(why) => write!(f, "device MMU out of step with the CPU tables ({why}); unbind and bind again"),
        }
    }
}

impl From<DomainError> for MirrorError {
    fn from(e: DomainError) -> Self {
        Self::Domain(e)
    }
}

/// Counters of one mirror.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Device faults served ([`Mirror::fault`] calls that mapped something).
    pub faults: u64,
    /// Pages entered in the table (RAM and local).
    pub pages_mapped: u64,
    /// MAP requests' mappings sent to the domain.
    pub maps: u64,
    /// Invalidations that cleared something.
    pub invalidations: u64,
    /// Pages removed by invalidations.
    pub pages_unmapped: u64,
    /// In-flight requests an invalidation waited for.
    pub settled: u64,
    /// DMA requests submitted.
    pub dma: u64,
    /// DMA requests refused because a page was not mapped.
    pub refused: u64,
    /// Lost races (a fault's results invalidated before they were committed).
    pub retries: u64,
}

/// A DMA request in flight through a mirror.
#[derive(Debug)]
#[must_use = "complete the request (Mirror::complete) to learn its result"]
pub struct Dma<T> {
    id: u64,
    /// The hardware's ticket.
    pub ticket: T,
}

#[derive(Debug)]
struct InFlight<T> {
    id: u64,
    ranges: Vec<(u64, u64)>,
    ticket: T,
    settled: bool,
}

struct State<D: Domain> {
    domain: D,
    pt: DevPageTable,
    inflight: Vec<InFlight<D::Ticket>>,
    next_id: u64,
    broken: Option<Breakage>,
    dead: bool,
    stats: MirrorStats,
}

/// A device's mirror of one address space.
pub struct Mirror<D: Domain> {
    owner: Owner,
    pagemaps: Option<Arc<Pagemaps>>,
    space: Weak<SharedSpace>,
    notifier: Mutex<Option<IntervalNotifier>>,
    state: Mutex<State<D>>,
}

impl<D: Domain> core::fmt::Debug for Mirror<D> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mirror").field("owner", &self.owner).finish_non_exhaustive()
    }
}

fn check(start: u64, end: u64) -> Result<(), MirrorError> {
    if !start.is_multiple_of(PAGE) || !end.is_multiple_of(PAGE) || start >= end {
        return Err(MirrorError::Invalid("range must be page-aligned and non-empty"));
    }
    if end > USER_END {
        return Err(MirrorError::Invalid("range reaches past the user half"));
    }
    Ok(())
}

/// Appends `m` to `maps`, merging it with the last mapping when they continue each other.
fn push_merged(maps: &mut Vec<IoMap>, m: IoMap) {
    match maps.last_mut() {
        Some(l) if l.iova + l.len == m.iova && l.phys + l.len == m.phys && l.write == m.write => l.len += m.len,
        _ => maps.push(m),
    }
}

impl<D: Domain + 'static> Mirror<D> {
    /// Binds `domain` to `space`: inserts an interval notifier over the user half. Device
    /// pages of `owner` (found through `pagemaps`) are mirrored as local pages.
    pub fn bind(
        space: &Arc<SharedSpace>,
        owner: Owner,
        pagemaps: Option<Arc<Pagemaps>>,
        domain: D,
    ) -> Result<Arc<Mirror<D>>, crate::mm::Error> {
        let mut s = space.lock();
        let subs = Subscriptions::of(&mut s);
        let m = Arc::new(Mirror {
            owner,
            pagemaps,
            space: Arc::downgrade(space),
            notifier: Mutex::new(None),
            state: Mutex::new(State {
                domain,
                pt: DevPageTable::new(),
                inflight: Vec::new(),
                next_id: 0,
                broken: None,
                dead: false,
                stats: MirrorStats::default(),
            }),
        });
        let ops: Weak<Mirror<D>> = Arc::downgrade(&m);
        let n = subs.insert(0, USER_END, ops)?;
        *m.notifier.lock() = Some(n);
        Ok(m)
    }
}

impl<D: Domain> Mirror<D> {
    /// The owner whose device pages are local.
    pub fn owner(&self) -> Owner {
        self.owner
    }

    /// Whether this is a mirror of `space`.
    pub fn mirrors(&self, space: &Arc<SharedSpace>) -> bool {
        core::ptr::eq(self.space.as_ptr(), Arc::as_ptr(space))
    }

    /// Still mirroring: bound, and the address space alive.
    pub fn is_live(&self) -> bool {
        self.notifier.lock().is_some() && !self.state.lock().dead
    }

    /// Counters so far.
    pub fn stats(&self) -> MirrorStats {
        self.state.lock().stats
    }

    /// Pages in the table.
    pub fn pages(&self) -> u64 {
        self.state.lock().pt.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.state.lock().inflight.len()
    }

    /// Runs `f` on the domain under the mirror lock (for the hardware's own bookkeeping).
    pub fn with_domain<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut self.state.lock().domain)
    }

    fn is_local(&self, pfn: Pfn) -> bool {
        self.pagemaps.as_ref().and_then(|p| p.owner_of(pfn)) == Some(self.owner)
    }

    /// What the device sees at `va`, if the mirror maps it.
    pub fn translate(&self, va: u64) -> Option<Translation> {
        let e = self.state.lock().pt.get(va / PAGE)?;
        Some(self.translation(e))
    }

    fn translation(&self, e: Entry) -> Translation {
        let at = if self.is_local(e.frame) { Where::Local(e.frame) } else { Where::Ram(e.frame.addr()) };
        Translation { at, write: e.write }
    }

    /// The device fault path: makes `[start, end)` present for the device (writable when
    /// `write`), faulting CPU pages in as needed, and maps the RAM pages in the domain. Pages
    /// already mirrored with the access needed are left as they are.
    pub fn fault(&self, start: u64, end: u64, write: bool) -> Result<(), MirrorError> {
        self.fault_as(start, end, write, false)
    }

    /// Maps `[start, end)` for reads only, whatever the CPU page tables allow: a driver that maps
    /// system memory ahead of the device's accesses (as `cudaMemAdviseSetAccessedBy` does) but
    /// wants its writes to fault, so that they reach the fault path (and its policy). The
    /// device's own pages keep the access the range fault reports.
    pub fn fault_read_only(&self, start: u64, end: u64) -> Result<(), MirrorError> {
        self.fault_as(start, end, false, true)
    }

    fn fault_as(&self, start: u64, end: u64, write: bool, read_only: bool) -> Result<(), MirrorError> {
        check(start, end)?;
        let space = self.space.upgrade().ok_or(MirrorError::Gone)?;
        let guard = self.notifier.lock();
        let sub = guard.as_ref().ok_or(MirrorError::Gone)?;
        let req = if write { Request::WRITE } else { Request::FAULT };
        let mut a = start;
        while a < end {
            let b = (a + CHUNK * PAGE).min(end);
            self.fault_chunk(&space, sub, a, b, req, read_only)?;
            a = b;
        }
        Ok(())
    }

    fn fault_chunk(
        &self,
        space: &SharedSpace,
        sub: &Interval,
        a: u64,
        b: u64,
        req: Request,
        read_only: bool,
    ) -> Result<(), MirrorError> {
        let mut pfns = alloc::vec![0u64; ((b - a) / PAGE) as usize];
        for _ in 0..RETRIES {
            let seq = sub.read_begin().map_err(|_| MirrorError::Unstable(a))?;
            let r = fault_round(space, sub, seq, (a, b), req, Some(self.owner), &mut pfns);
            match r {
                Ok(()) => {}
                Err(RangeError::Busy) => {
                    self.state.lock().stats.retries += 1;
                    continue;
                }
                Err(error) => return Err(MirrorError::Fault { va: a, error }),
            }
            let mut st = self.state.lock();
            if sub.read_retry(seq) {
                st.stats.retries += 1;
                continue;
            }
            return self.commit(&mut st, a, &pfns, req.write, read_only);
        }
        Err(MirrorError::Unstable(a))
    }

    /// Enters a range fault's results (valid under the mirror lock and the sequence check):
    /// stale entries go, new RAM pages are MAPped in merged runs, then the table records them.
    fn commit(&self, st: &mut State<D>, a: u64, pfns: &[u64], write: bool, read_only: bool) -> Result<(), MirrorError> {
        if let Some(why) = &st.broken {
            return Err(MirrorError::Broken(*why));
        }
        if st.dead {
            return Err(MirrorError::Gone);
        }
        let mut maps = Vec::new();
        let mut stale: Vec<(u64, u64)> = Vec::new();
        let mut new = Vec::new();
        for (i, &p) in pfns.iter().enumerate() {
            let va = a + i as u64 * PAGE;
            let frame = HmmPfn::pfn(p);
            // A read-only mapping restricts only system memory, not the device's own pages.
            let allowed = p & HmmPfn::WRITE != 0 && (!read_only || self.is_local(frame));
            let e = Entry { frame, write: allowed, atomic: false };
            if write && !e.write {
                // Reported without write access (the device's own read-only page): a write
                // fault cannot be satisfied, and mapping it read-only would fault forever.
                return Err(MirrorError::Fault { va, error: RangeError::Permission });
            }
            let old = st.pt.get(va / PAGE);
            if old == Some(e) {
                continue;
            }
            if old.is_some_and(|o| !self.is_local(o.frame)) {
                match stale.last_mut() {
                    Some(r) if r.1 == va => r.1 += PAGE,
                    _ => stale.push((va, va + PAGE)),
                }
            }
            if !self.is_local(e.frame) {
                push_merged(&mut maps, IoMap { iova: va, len: PAGE, phys: e.frame.addr(), write: e.write });
            }
            new.push((va, e));
        }
        for &(s, e) in &stale {
            st.domain.unmap(s, e)?;
            st.pt.clear(s / PAGE, e / PAGE);
        }
        if !maps.is_empty() {
            st.domain.map(&maps)?;
            st.stats.maps += maps.len() as u64;
        }
        for &(va, e) in &new {
            st.pt.insert(va / PAGE, e);
        }
        if !new.is_empty() {
            st.stats.faults += 1;
            st.stats.pages_mapped += new.len() as u64;
        }
        Ok(())
    }

    /// The driver drops its mappings of system memory in `[start, end)` (its own pages stay
    /// mapped), so the device's next accesses there fault and reach the fault path again: what
    /// a driver does when pages it serves by zero-copy become hot enough to migrate. In-flight
    /// requests on a dropped page are waited for first, as an invalidation waits. Returns the
    /// pages dropped.
    pub fn unmap_remote(&self, start: u64, end: u64) -> Result<u64, MirrorError> {
        check(start, end)?;
        let mut st = self.state.lock();
        if let Some(why) = &st.broken {
            return Err(MirrorError::Broken(*why));
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for vpn in start / PAGE..end / PAGE {
            if st.pt.get(vpn).is_some_and(|e| !self.is_local(e.frame)) {
                let va = vpn * PAGE;
                match runs.last_mut() {
                    Some(r) if r.1 == va => r.1 += PAGE,
                    _ => runs.push((va, va + PAGE)),
                }
            }
        }
        let mut dropped = 0;
        for (a, b) in runs {
            dropped += self.clear(&mut st, a, b);
        }
        match st.broken {
            Some(why) => Err(MirrorError::Broken(why)),
            None => Ok(dropped),
        }
    }

    /// Submits a DMA request over `segs` (`(va, len)`, page-aligned) through `submit`, under
    /// the mirror lock, after checking that the mirror maps every page with the access the
    /// device needs (`write`: the device writes memory). The request is recorded in flight
    /// until [`complete`](Self::complete).
    pub fn dma(
        &self,
        segs: &[(u64, u32)],
        write: bool,
        submit: impl FnOnce(&mut D) -> Result<D::Ticket, DomainError>,
    ) -> Result<Dma<D::Ticket>, MirrorError> {
        let mut st = self.state.lock();
        if let Some(why) = &st.broken {
            return Err(MirrorError::Broken(*why));
        }
        if st.dead {
            return Err(MirrorError::Gone);
        }
        let mut ranges = Vec::with_capacity(segs.len());
        for &(va, len) in segs {
            let end = va.checked_add(u64::from(len)).ok_or(MirrorError::Invalid("segment wraps"))?;
            check(va, end)?;
            for p in (va..end).step_by(PAGE as usize) {
                let ok = st.pt.get(p / PAGE).is_some_and(|e| !self.is_local(e.frame) && (e.write || !write));
                if !ok {
                    st.stats.refused += 1;
                    return Err(MirrorError::NotMapped { va: p, write });
                }
            }
            ranges.push((va, end));
        }
        let ticket = submit(&mut st.domain)?;
        let id = st.next_id;
        st.next_id += 1;
        st.inflight.push(InFlight { id, ranges, ticket, settled: false });
        st.stats.dma += 1;
        Ok(Dma { id, ticket })
    }

    /// Completes a request: it leaves the in-flight set, and `wait` collects its result.
    pub fn complete<R>(&self, dma: Dma<D::Ticket>, wait: impl FnOnce(&mut D, D::Ticket) -> R) -> R {
        let mut st = self.state.lock();
        st.inflight.retain(|f| f.id != dma.id);
        wait(&mut st.domain, dma.ticket)
    }

    /// Removes every mapping of `[start, end)` (under the lock the caller holds): in-flight
    /// requests on it are waited for first.
    fn clear(&self, st: &mut State<D>, start: u64, end: u64) -> u64 {
        let end = end.min(USER_END);
        if start >= end {
            return 0;
        }
        let State { domain, inflight, stats, broken, pt, .. } = st;
        for f in inflight.iter_mut().filter(|f| !f.settled) {
            if f.ranges.iter().any(|&(s, e)| s < end && start < e) {
                if let Err(e) = domain.settle(f.ticket) {
                    // The request never completed: the device may still be using the pages.
                    *broken = Some(Breakage { start, end, cause: e });
                }
                f.settled = true;
                stats.settled += 1;
            }
        }
        let cleared = pt.clear(start / PAGE, end.div_ceil(PAGE));
        if cleared > 0 {
            if let Err(e) = domain.unmap(start, end) {
                *broken = Some(Breakage { start, end, cause: e });
            }
            stats.invalidations += 1;
            stats.pages_unmapped += cleared;
        }
        cleared
    }

    /// Unbinds: the notifier goes and the user half is emptied (in-flight requests waited for).
    pub fn unbind(&self) -> Result<(), MirrorError> {
        if let Some(n) = self.notifier.lock().take() {
            n.remove().map_err(|(_, e)| MirrorError::Notifier(e))?;
        }
        let mut st = self.state.lock();
        st.dead = true;
        self.clear(&mut st, 0, USER_END);
        match st.broken.take() {
            Some(why) => Err(MirrorError::Broken(why)),
            None => Ok(()),
        }
    }
}

impl<D: Domain> Drop for Mirror<D> {
    fn drop(&mut self) {
        let st = self.state.get_mut();
        if !st.pt.is_empty() {
            // Leave nothing mapped for an address space nobody mirrors any more. A drop cannot
            // report a failure; `unbind` is the way that does.
            let _ = st.domain.unmap(0, USER_END);
            st.pt.clear_all();
        }
    }
}

impl<D: Domain> IntervalOps for Mirror<D> {
    fn invalidate(&self, sub: &Interval, range: &Range, cur_seq: u64) -> bool {
        let mut st = if range.blockable {
            self.state.lock()
        } else {
            match self.state.try_lock() {
                Some(g) => g,
                None => return false,
            }
        };
        sub.set_seq(cur_seq);
        if range.event == Event::Release {
            st.dead = true;
        }
        self.clear(&mut st, range.start, range.end);
        true
    }
}

#[cfg(test)]
mod tests;
