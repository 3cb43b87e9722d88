//! `hmm_range_fault`: snapshot (and fault in) the CPU page table over a range, for a device
//! to mirror (`mm/hmm.c`).
//!
//! The output is generic over a [`PfnEncoding`]: the modern `HMM_PFN_*` word
//! ([`HmmPfn`], the default) or a driver's own format ([`Driver`] over a [`DeviceFormat`]: the
//! 4.17-era `flags[]` / `values[]` / `pfn_shift` scheme), so a range fault can write entries a
//! device page table takes as they are. Requests are read from the same array (`(pfns[i] & pfn_flags_mask) | default_flags`),
//! and every retry re-reads them from what the caller rebuilt (pitfall P2: on `Busy`, entries
//! before the restart point are already outputs).
//!
//! Semantics, entry by entry (Linux 6.x):
//! - present page: valid, writable if the entry is; the zero page is valid read-only; a 2 MiB
//!   leaf reports order 9 for each of its pages;
//! - device-private page of `dev_private_owner`: valid (writable if the entry is), **never
//!   faulted**, even for a write request; another owner's: 0, or faulted home through its
//!   pagemap's `migrate_to_ram` when a fault is requested;
//! - device-exclusive, migration entries: 0, faulted when requested (a migration: `Busy`);
//! - no VMA, or a VMA without read permission: `ERROR`, or `Fault` when a fault is requested;
//! - a write request on a VMA without write permission: `Permission`.
//!
//! The caller holds the address space (`&mut`, the mmap lock) and a `notifier_seq` from
//! [`Interval::read_begin`]; the walk checks the sequence at each step and returns `Busy` when
//! an invalidation hit the interval (the driver restarts from `read_begin`).

use crate::addr::Pfn;
use crate::mm::notify::Owner;
use crate::mm::pagetable::USER_END;
use crate::mm::pte::{Pte, SoftKind};
use crate::mm::space::{Access, AddressSpace, FaultError};
use crate::mm::{HUGE_ORDER, Mm};
use crate::notifier::Interval;

const PAGE: u64 = 4096;
const PMD_SIZE: u64 = 1 << 21;

/// What a slot asks for (`HMM_PFN_REQ_FAULT`, `HMM_PFN_REQ_WRITE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    /// The page must end up valid.
    pub fault: bool,
    /// The page must end up writable (with `fault`).
    pub write: bool,
}

impl Request {
    /// Snapshot: report, never fault.
    pub const NONE: Request = Request { fault: false, write: false };
    /// `HMM_PFN_REQ_FAULT`.
    pub const FAULT: Request = Request { fault: true, write: false };
    /// `HMM_PFN_REQ_FAULT | HMM_PFN_REQ_WRITE`.
    pub const WRITE: Request = Request { fault: true, write: true };

    fn and(self, o: Request) -> Request {
        Request { fault: self.fault && o.fault, write: self.write && o.write }
    }
    fn or(self, o: Request) -> Request {
        Request { fault: self.fault || o.fault, write: self.write || o.write }
    }
}

/// One page as the walk found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageState {
    /// Nothing usable now, but faultable (`0`).
    None,
    /// Inaccessible (`HMM_PFN_ERROR`).
    Error,
    /// A page the device may map.
    Valid {
        /// The frame.
        pfn: Pfn,
        /// Writable.
        write: bool,
        /// Mapping order (9 for a 2 MiB leaf).
        order: u8,
        /// A device-private page of the caller's device.
        device_private: bool,
    },
}

/// An output format for range faults: how requests are read from and results written to a
/// slot.
pub trait PfnEncoding {
    /// One slot.
    type Entry: Copy + Default + core::fmt::Debug;
    /// The request bits of a slot (before mask and defaults).
    fn request(e: Self::Entry) -> Request;
    /// The request flags as slot bits (to build `default_flags`-style words).
    fn request_bits(r: Request) -> Self::Entry;
    /// The slot for a result.
    fn encode(s: PageState) -> Self::Entry;
}

/// The modern `HMM_PFN_*` layout (Linux 6.1: `VALID` 63, `WRITE` 62, `ERROR` 61, order at 56).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HmmPfn;

impl HmmPfn {
    /// `HMM_PFN_VALID` (also `HMM_PFN_REQ_FAULT` on input).
    pub const VALID: u64 = 1 << 63;
    /// `HMM_PFN_WRITE` (also `HMM_PFN_REQ_WRITE` on input).
    pub const WRITE: u64 = 1 << 62;
    /// `HMM_PFN_ERROR`.
    pub const ERROR: u64 = 1 << 61;
    /// `HMM_PFN_ORDER_SHIFT`.
    pub const ORDER_SHIFT: u32 = 56;
    /// `HMM_PFN_FLAGS`: every non-pfn bit.
    pub const FLAGS: u64 = 0xff << 56;

    /// `hmm_pfn_to_page`: the frame of a valid output.
    pub fn pfn(e: u64) -> Pfn {
        Pfn(e & !Self::FLAGS)
    }
    /// `hmm_pfn_to_map_order`.
    pub fn order(e: u64) -> u32 {
        ((e >> Self::ORDER_SHIFT) & 0x1f) as u32
    }
}

impl PfnEncoding for HmmPfn {
    type Entry = u64;
    fn request(e: u64) -> Request {
        Request { fault: e & Self::VALID != 0, write: e & Self::WRITE != 0 }
    }
    fn request_bits(r: Request) -> u64 {
        (if r.fault { Self::VALID } else { 0 }) | (if r.write { Self::WRITE } else { 0 })
    }
    fn encode(s: PageState) -> u64 {
        match s {
            PageState::None => 0,
            PageState::Error => Self::ERROR,
            PageState::Valid { pfn, write, order, .. } => {
                pfn.0 | Self::VALID | if write { Self::WRITE } else { 0 } | (u64::from(order) << Self::ORDER_SHIFT)
            }
        }
    }
}

/// A device's own entry format, in the 4.17 scheme (`range->flags[]`, `range->values[]`,
/// `range->pfn_shift`): a valid entry is `pfn << PFN_SHIFT | VALID [| WRITE] [| DEVICE_PRIVATE]`,
/// and the other outcomes are the fixed words `NONE` and `ERROR`. Declared as a type with
/// constants, so [`Driver<F>`] compiles to the device's format with no table look-ups and a
/// range fault writes entries the device's page table takes as they are (no conversion pass).
///
/// On input, a slot's `VALID` bit asks for a fault and `WRITE` for write access, as in 4.17.
/// `SPECIAL` (special mappings, `VM_PFNMAP` / `VM_MIXEDMAP`) is never produced here: this
/// kernel has no such mappings (they would be reported as `ERROR`, as Linux 5.7+ does).
pub trait DeviceFormat {
    /// `flags[HMM_PFN_VALID]`.
    const VALID: u64;
    /// `flags[HMM_PFN_WRITE]`.
    const WRITE: u64;
    /// `flags[HMM_PFN_DEVICE_PRIVATE]`: the page is the caller's device-private memory.
    const DEVICE_PRIVATE: u64;
    /// `values[HMM_PFN_ERROR]`.
    const ERROR: u64;
    /// `values[HMM_PFN_NONE]`.
    const NONE: u64;
    /// `values[HMM_PFN_SPECIAL]`.
    const SPECIAL: u64;
    /// `pfn_shift`.
    const PFN_SHIFT: u32;
}

/// The range-fault encoding of a driver-defined [`DeviceFormat`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Driver<F>(core::marker::PhantomData<F>);

impl<F: DeviceFormat> Driver<F> {
    /// The frame of a valid entry.
    pub fn pfn(e: u64) -> Option<Pfn> {
        (e & F::VALID != 0 && e != F::ERROR && e != F::NONE).then_some(Pfn(e >> F::PFN_SHIFT))
    }
}

impl<F: DeviceFormat> PfnEncoding for Driver<F> {
    type Entry = u64;
    fn request(e: u64) -> Request {
        if e == F::ERROR || e == F::NONE {
            return Request::NONE;
        }
        Request { fault: e & F::VALID != 0, write: e & F::WRITE != 0 }
    }
    fn request_bits(r: Request) -> u64 {
        (if r.fault { F::VALID } else { 0 }) | (if r.write { F::WRITE } else { 0 })
    }
    fn encode(s: PageState) -> u64 {
        match s {
            PageState::None => F::NONE,
            PageState::Error => F::ERROR,
            PageState::Valid { pfn, write, device_private, .. } => {
                pfn.0 << F::PFN_SHIFT
                    | F::VALID
                    | if write { F::WRITE } else { 0 }
                    | if device_private { F::DEVICE_PRIVATE } else { 0 }
            }
        }
    }
}

/// A slot that carries a [`Request`] in and the walk's [`PageState`] out: the encoding for
/// layers whose output format is only known at run time (the `flags[]` / `values[]` /
/// `pfn_shift` of a 4.17-5.6 `struct hmm_range`, see [`crate::legacy`]), which translate the
/// state themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateSlot {
    /// What the caller asks for this page (input).
    Request(Request),
    /// What the walk found (output).
    State(PageState),
}

impl Default for StateSlot {
    fn default() -> Self {
        StateSlot::Request(Request::NONE)
    }
}

impl PfnEncoding for StateSlot {
    type Entry = StateSlot;
    fn request(e: StateSlot) -> Request {
        match e {
            StateSlot::Request(r) => r,
            StateSlot::State(_) => Request::NONE,
        }
    }
    fn request_bits(r: Request) -> StateSlot {
        StateSlot::Request(r)
    }
    fn encode(s: PageState) -> StateSlot {
        StateSlot::State(s)
    }
}

/// A `dev_private_owner` that matches every device: device-private pages of any device are
/// reported as they are and never faulted back to RAM. This is the behaviour of the 4.14-5.6
/// API generations (before `dev_private_owner` existed), which [`crate::legacy`] reproduces.
pub const ANY_DEVICE: Owner = Owner(u64::MAX);

/// Converts a modern `HMM_PFN_*` output word to a driver format: the pass a driver of the
/// modern API runs over every range-fault result before filling its page table (what
/// [`Driver<F>`] makes unnecessary). `device_private` says whether the page is the caller's
/// device memory, which the modern word does not carry (the driver looks the page up).
pub fn convert<F: DeviceFormat>(e: u64, device_private: impl Fn(Pfn) -> bool) -> u64 {
    if e & HmmPfn::ERROR != 0 {
        return F::ERROR;
    }
    if e & HmmPfn::VALID == 0 {
        return F::NONE;
    }
    let pfn = HmmPfn::pfn(e);
    pfn.0 << F::PFN_SHIFT
        | F::VALID
        | if e & HmmPfn::WRITE != 0 { F::WRITE } else { 0 }
        | if device_private(pfn) { F::DEVICE_PRIVATE } else { 0 }
}

/// A range to fault (`struct hmm_range`).
#[derive(Debug)]
pub struct HmmRange<'a, E: PfnEncoding = HmmPfn> {
    /// The interval notifier covering the range.
    pub notifier: &'a Interval,
    /// The sequence from `read_begin`.
    pub notifier_seq: u64,
    /// First address (page-aligned).
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Requests in, results out: one slot per page.
    pub pfns: &'a mut [E::Entry],
    /// Requested for every page.
    pub default_flags: Request,
    /// Which per-slot request bits count.
    pub pfn_flags_mask: Request,
    /// Device-private pages of this owner are reported, not faulted.
    pub dev_private_owner: Option<Owner>,
}

/// Why a range fault failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// `-EBUSY`: the range was invalidated; restart from `read_begin`.
    Busy,
    /// `-EFAULT`: a requested page cannot be made valid.
    Fault,
    /// `-EPERM`: a write was requested on a mapping without write permission.
    Permission,
    /// `-ENOMEM`.
    NoMemory,
    /// `-EINVAL`: the range is malformed; the text says how.
    Invalid(&'static str),
}

impl RangeError {
    /// The Linux errno (positive).
    pub fn errno(self) -> i32 {
        match self {
            RangeError::Busy => 16,
            RangeError::Fault => 14,
            RangeError::Permission => 1,
            RangeError::NoMemory => 12,
            RangeError::Invalid(_) => 22,
        }
    }
}

impl core::fmt::Display for RangeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RangeError::Busy => write!(f, "range invalidated during the walk; retry from read_begin"),
            RangeError::Fault => write!(f, "a requested page cannot be made valid (no mapping or no access)"),
            RangeError::Permission => write!(f, "write requested on a mapping without write permission"),
            RangeError::NoMemory => write!(f, "out of memory while faulting the range"),
            RangeError::Invalid(why) => write!(f, "invalid range: {why}"),
        }
    }
}

fn need_fault(req: Request, s: PageState) -> Option<bool> {
    if !req.fault {
        return None;
    }
    match s {
        PageState::Valid { device_private: true, .. } => None,
        PageState::Valid { write, .. } if req.write && !write => Some(true),
        PageState::Valid { .. } => None,
        _ => Some(req.write),
    }
}

fn leaf_state(mm: &Mm, pte: Pte, huge: bool, offset: u64, owner: Option<Owner>) -> PageState {
    let order = if huge { HUGE_ORDER as u8 } else { 0 };
    match pte {
        Pte::Present(p) if mm.is_zero(p.pfn) => {
            PageState::Valid { pfn: Pfn(p.pfn.0 + offset), write: false, order, device_private: false }
        }
        Pte::Present(p) => {
            PageState::Valid { pfn: Pfn(p.pfn.0 + offset), write: p.write, order, device_private: false }
        }
        Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => {
            let ours = owner == Some(ANY_DEVICE)
                || (owner.is_some() && mm.device_memory().and_then(|d| d.owner_of(s.pfn)).map(|o| o.0) == owner);
            if ours {
                PageState::Valid { pfn: Pfn(s.pfn.0 + offset), write: s.write, order, device_private: true }
            } else {
                PageState::None
            }
        }
        Pte::Soft(_) | Pte::None => PageState::None,
        Pte::Bad(_) => PageState::Error,
    }
}

/// One round of a driver's range-fault loop (the §1.2 pattern): `pfns` cleared, then
/// `hmm_range_fault` of `[start, end)` in the [`HmmPfn`] layout with `req` for every page and
/// device pages of `owner` reported, under `seq` from `sub.read_begin()`. On `Ok` the caller
/// takes its own lock and commits only if `sub.read_retry(seq)` is false; on `Busy` it starts
/// a new round. A fault that meets a page under migration does not cost the driver a round:
/// the lock is dropped, the platform's `migration_wait` lets the migration finish, and the
/// range is walked again (bounded; past the bound the result is `Busy`).
pub fn fault_round(
    space: &crate::mm::SharedSpace,
    sub: &Interval,
    seq: u64,
    (start, end): (u64, u64),
    req: Request,
    owner: Option<Owner>,
    pfns: &mut [u64],
) -> Result<(), RangeError> {
    let mut round = 0;
    loop {
        pfns.iter_mut().for_each(|p| *p = 0);
        let mut s = space.lock();
        s.take_migration_wait();
        let mut range = HmmRange::<HmmPfn> {
            notifier: sub,
            notifier_seq: seq,
            start,
            end,
            pfns: &mut *pfns,
            default_flags: req,
            pfn_flags_mask: Request::NONE,
            dev_private_owner: owner,
        };
        let r = hmm_range_fault(&mut s, &mut range);
        // A fault met a page under migration: wait for it with the lock dropped
        // (migration_entry_wait), then walk again, bounded by the platform's wait.
        if r != Err(RangeError::Busy) || !s.take_migration_wait() {
            return r;
        }
        let mm = s.mm().clone();
        drop(s);
        round += 1;
        if !mm.platform().migration_wait(round) {
            return r;
        }
    }
}

/// `hmm_range_fault`. See the module documentation.
pub fn hmm_range_fault<E: PfnEncoding>(
    space: &mut AddressSpace,
    range: &mut HmmRange<'_, E>,
) -> Result<(), RangeError> {
    let (start, end) = (range.start, range.end);
    if !start.is_multiple_of(PAGE) || !end.is_multiple_of(PAGE) {
        return Err(RangeError::Invalid("range is not page-aligned"));
    }
    if start >= end || end > USER_END {
        return Err(RangeError::Invalid("range is empty or past the user address space"));
    }
    let n = ((end - start) / PAGE) as usize;
    if range.pfns.len() != n {
        return Err(RangeError::Invalid("pfns has not one slot per page"));
    }
    let mm = space.mm().clone();
    let may_fault = range.default_flags.or(range.pfn_flags_mask).fault;
    let reqs: alloc::vec::Vec<Request> = if may_fault {
        range.pfns.iter().map(|&e| E::request(e).and(range.pfn_flags_mask).or(range.default_flags)).collect()
    } else {
        alloc::vec::Vec::new()
    };
    let req = |reqs: &[Request], i: usize| if may_fault { reqs[i] } else { Request::NONE };
    let mut cur = start;
    let mut states = alloc::vec![PageState::None; n];
    let mut rounds = 0u32;
    'walk: loop {
        rounds += 1;
        if range.notifier.check_retry(range.notifier_seq) {
            return Err(RangeError::Busy);
        }
        if rounds > 64 {
            // Faults keep failing to stick: let the driver retry from read_begin.
            return Err(RangeError::Busy);
        }
        let mut va = cur;
        while va < end {
            let vma = space.vmas().find(va).cloned();
            let (seg_end, readable, writable) = match &vma {
                // `hmm_vma_walk_test`: without read permission (write- or exec-only included)
                // a VMA cannot be mirrored.
                Some(v) => (v.end.min(end), v.prot.read(), v.prot.write()),
                None => {
                    let next = space.vmas().overlapping(va, end).next().map_or(end, |v| v.start.max(va));
                    (next, false, false)
                }
            };
            let (i0, i1) = (((va - start) / PAGE) as usize, ((seg_end - start) / PAGE) as usize);
            if !readable {
                for (i, st) in states.iter_mut().enumerate().take(i1).skip(i0) {
                    if need_fault(req(&reqs, i), PageState::Error).is_some() {
                        return Err(RangeError::Fault);
                    }
                    *st = PageState::Error;
                }
                va = seg_end;
                continue;
            }
            states[i0..i1].iter_mut().for_each(|s| *s = PageState::None);
            let owner = range.dev_private_owner;
            // A PMD leaf overlapping `va` is reported with its aligned address.
            space.walk_leaves(va, seg_end, &mut |lva, pte, huge| {
                let size = if huge { PMD_SIZE } else { PAGE };
                let mut p = lva.max(va);
                while p < (lva + size).min(seg_end) {
                    let i = ((p - start) / PAGE) as usize;
                    states[i] = leaf_state(&mm, pte, huge, (p - lva) / PAGE, owner);
                    p += PAGE;
                }
            });
            // Fault the first run of pages that need it, then walk again from there.
            if let Some(j) = (i0..i1).find(|&i| need_fault(req(&reqs, i), states[i]).is_some()) {
                let mut k = j;
                let mut write = false;
                while k < i1 {
                    match need_fault(req(&reqs, k), states[k]) {
                        Some(w) => write |= w,
                        None => break,
                    }
                    k += 1;
                }
                if write && !writable {
                    return Err(RangeError::Permission);
                }
                let access = if write { Access::Write } else { Access::Read };
                // The whole run with one access, as Linux faults a range with the flags it
                // needs (`hmm_vma_fault`).
                for i in j..k {
                    let a = start + i as u64 * PAGE;
                    match space.fault(a, access) {
                        Ok(()) => {}
                        Err(FaultError::Migrating) | Err(FaultError::Locked) => return Err(RangeError::Busy),
                        Err(FaultError::OutOfMemory) => return Err(RangeError::NoMemory),
                        Err(_) => return Err(RangeError::Fault),
                    }
                }
                // Outputs below the restart point are final; the rest is walked again. Linux
                // restarts at the start of what `hmm_vma_fault` faulted (`hmm_vma_walk->last`),
                // which for an empty or huge PMD is where the walk entered that PMD: restart at
                // the faulted page's PMD (not before this round's start), so the earlier pages
                // of a 2 MiB leaf the fault just mapped are reported, requested or not.
                let restart = ((start + j as u64 * PAGE) & !(PMD_SIZE - 1)).max(cur);
                let r = ((restart - start) / PAGE) as usize;
                for (i, s) in states.iter().enumerate().take(r).skip(((cur - start) / PAGE) as usize) {
                    range.pfns[i] = E::encode(*s);
                }
                cur = restart;
                continue 'walk;
            }
            va = seg_end;
        }
        break;
    }
    if range.notifier.check_retry(range.notifier_seq) {
        return Err(RangeError::Busy);
    }
    for (i, s) in states.iter().enumerate().skip(((cur - start) / PAGE) as usize) {
        range.pfns[i] = E::encode(*s);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
