//! The 4.14 device-fault API: `hmm_vma_get_pfns`, `hmm_vma_fault`, `hmm_vma_range_done`.
//!
//! A driver held `mmap_sem`, called `hmm_vma_get_pfns` (snapshot) or `hmm_vma_fault` (fault
//! in, for write if `write`) over a range inside one VMA, programmed its device from the
//! `hmm_pfn_t` words, then asked `hmm_vma_range_done` whether the range had been invalidated
//! meanwhile (then it started again). Device-private pages were reported as such, whichever
//! device they belonged to, and never migrated back by these calls.
//!
//! Mapping onto the core: each call registers an interval notifier over its range (the 4.14
//! `struct hmm_range` on the per-mm list) and takes its sequence; the walk is
//! [`hmm_range_fault`](crate::range::hmm_range_fault) with
//! [`ANY_DEVICE`](crate::range::ANY_DEVICE); [`VmaRange::done`] is `read_retry` (which, unlike
//! 4.14's `valid` flag, cannot miss an invalidation) and removes the notifier.
//!
//! Errors as in 4.14: `-EINVAL` for a range not inside one VMA, `-EPERM` for a VMA without
//! read access (every entry becomes `ERROR`) or a write on a read-only one, `-EBUSY` when the
//! range was invalidated during the call, `-EAGAIN` when a page is busy (under migration) and
//! `block` is false. 4.14 dropped `mmap_sem` before returning `-EAGAIN`; here the caller holds
//! the address space and simply retries after letting go of it. With `block` set a busy page
//! is `-EBUSY` (the caller's lock is held, so waiting here could not let the migration end).

use super::{LegacyError, PfnFormat, check_range, fault_words};
use crate::mm::space::AddressSpace;
use crate::notifier::{IntervalNotifier, SeqOnly, Subscriptions};
use crate::range::Request;
use alloc::sync::{Arc, Weak};

/// A range handed out by `hmm_vma_get_pfns` / `hmm_vma_fault`, until `hmm_vma_range_done`.
#[derive(Debug)]
pub struct VmaRange {
    sub: IntervalNotifier,
    seq: u64,
    _ops: Arc<SeqOnly>,
}

impl VmaRange {
    /// `hmm_vma_range_done`: `true` if nothing invalidated the range since the call that
    /// produced it (the device entries programmed from it are current). Call with the
    /// driver's lock held, as 4.14 required; the range is unregistered.
    pub fn done(self) -> bool {
        let valid = !self.sub.read_retry(self.seq);
        let _ = self.sub.remove();
        valid
    }
}

fn begin(
    space: &mut AddressSpace,
    start: u64,
    end: u64,
    pfns: &mut [u64],
    fmt: &PfnFormat,
) -> Result<VmaRange, LegacyError> {
    check_range(start, end, pfns.len())?;
    let vma = space.vmas().find(start).cloned().ok_or(LegacyError::Invalid("no VMA at the range start"))?;
    if end > vma.end {
        return Err(LegacyError::Invalid("range is not inside one VMA"));
    }
    if !(vma.prot.read() || vma.prot.write()) {
        pfns.iter_mut().for_each(|w| *w = fmt.values[super::HMM_PFN_ERROR]);
        return Err(LegacyError::Permission);
    }
    let ops = Arc::new(SeqOnly);
    let w: Weak<SeqOnly> = Arc::downgrade(&ops);
    let sub = Subscriptions::of(space).insert(start, end - start, w).map_err(|e| match e {
        crate::mm::Error::Invalid(why) => LegacyError::Invalid(why),
        _ => LegacyError::NoMemory,
    })?;
    let seq = sub.read_begin().map_err(|_| LegacyError::Busy)?;
    Ok(VmaRange { sub, seq, _ops: ops })
}

/// `hmm_vma_get_pfns`: the current state of `[start, end)` (inside one VMA) in `fmt`,
/// faulting nothing. The caller holds the address space (`mmap_sem`).
pub fn hmm_vma_get_pfns(
    space: &mut AddressSpace,
    start: u64,
    end: u64,
    pfns: &mut [u64],
    fmt: &PfnFormat,
) -> Result<VmaRange, LegacyError> {
    walk(space, (start, end), pfns, fmt, Request::NONE, true)
}

/// `hmm_vma_fault`: faults `[start, end)` (inside one VMA) in, writable if `write`, and
/// writes its entries in `fmt`. See the module documentation for `block` and the errors.
pub fn hmm_vma_fault(
    space: &mut AddressSpace,
    start: u64,
    end: u64,
    pfns: &mut [u64],
    fmt: &PfnFormat,
    write: bool,
    block: bool,
) -> Result<VmaRange, LegacyError> {
    let req = if write { Request::WRITE } else { Request::FAULT };
    walk(space, (start, end), pfns, fmt, req, block)
}

fn walk(
    space: &mut AddressSpace,
    (start, end): (u64, u64),
    pfns: &mut [u64],
    fmt: &PfnFormat,
    req: Request,
    block: bool,
) -> Result<VmaRange, LegacyError> {
    let r = begin(space, start, end, pfns, fmt)?;
    pfns.iter_mut().for_each(|w| *w = fmt.values[super::HMM_PFN_NONE]);
    match fault_words(space, &r.sub, r.seq, (start, end), fmt, pfns, req) {
        Ok(_) => Ok(r),
        Err(e) => {
            let _ = r.sub.remove();
            Err(if e == LegacyError::Again && block { LegacyError::Busy } else { e })
        }
    }
}
