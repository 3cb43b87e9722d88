//! The older generations of the HMM driver API, as thin layers over the one modern core, so
//! that a driver written against any of them runs here and the generations can be compared
//! (`../shared/reference/linux-hmm.md` section 4). Linux dropped each of them; the table says
//! what each reproduces and what it maps onto.
//!
//! | generation | Linux API | here | maps onto |
//! |---|---|---|---|
//! | 4.14 | `hmm_vma_get_pfns`, `hmm_vma_fault(write, block)`, `hmm_vma_range_done`, `hmm_pfn_t` | [`vma`] | one interval notifier per call; [`hmm_range_fault`](crate::range::hmm_range_fault) with [`ANY_DEVICE`](crate::range::ANY_DEVICE) (device memory is never migrated back) |
//! | 4.14-5.2 | `hmm_devmem_add`, `hmm_devmem_add_resource`, `hmm_devmem_remove`, `hmm_devmem_ops.free/fault`, `hmm_devmem_page_{set,get}_drvdata` | [`devmem`] | a [`DevPagemap`](crate::pagemap::DevPagemap) whose callbacks forward to the driver's |
//! | 4.14-5.3 | `migrate_vma(ops, vma, start, end, src, dst)` with `alloc_and_copy` / `finalize_and_map` | [`migrate`] | `migrate_vma_setup` / `pages` / `finalize` |
//! | 4.17-5.6 | `range->flags[]`, `range->values[]`, `range->pfn_shift` | [`PfnFormat`] | [`StateSlot`](crate::range::StateSlot) output translated per page (the compile-time form is [`Driver`](crate::range::Driver)) |
//! | 5.0-5.4 | `hmm_mirror_register`, `sync_cpu_device_pagetables`, `release`, `hmm_range_register`, `hmm_range_wait_until_valid`, `hmm_range_valid`, `hmm_range_snapshot`, `hmm_range_fault(range, block)`, `hmm_range_dma_map` / `dma_unmap` | [`mirror`] | an interval notifier over the whole address space for the mirror, one per registered range |
//!
//! The one deliberate difference: where the old API checked a `valid` flag (4.14's
//! `hmm_vma_range_done`, 5.x's `hmm_range_valid`), these layers check the interval's sequence
//! number. The flag missed an invalidation that started and ended between
//! `hmm_range_wait_until_valid` and the check (pitfall P1, Linux commit 04ec32fbc2b2); the
//! sequence cannot. [`mirror::MirrorRange::flag`] keeps the old flag only to show the race.

pub mod devmem;
pub mod migrate;
pub mod mirror;
pub mod olddev;
pub mod vma;

#[cfg(test)]
mod tests;

use crate::addr::Pfn;
use crate::range::{PageState, RangeError, Request, StateSlot};

/// Index of `flags[]`: the entry is valid (on input: fault it in).
pub const HMM_PFN_VALID: usize = 0;
/// Index of `flags[]`: the entry is writable (on input: fault it in for write).
pub const HMM_PFN_WRITE: usize = 1;
/// Index of `flags[]`: the page is device-private memory.
pub const HMM_PFN_DEVICE_PRIVATE: usize = 2;
/// Index of `values[]`: the address cannot be mirrored.
pub const HMM_PFN_ERROR: usize = 0;
/// Index of `values[]`: nothing there (yet).
pub const HMM_PFN_NONE: usize = 1;
/// Index of `values[]`: a special mapping (never produced: this kernel has none).
pub const HMM_PFN_SPECIAL: usize = 2;

/// A driver-defined entry format chosen at run time (`range->flags`, `range->values`,
/// `range->pfn_shift`, 4.17-5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PfnFormat {
    /// Bits for [`HMM_PFN_VALID`], [`HMM_PFN_WRITE`], [`HMM_PFN_DEVICE_PRIVATE`].
    pub flags: [u64; 3],
    /// Words for [`HMM_PFN_ERROR`], [`HMM_PFN_NONE`], [`HMM_PFN_SPECIAL`].
    pub values: [u64; 3],
    /// Where the frame number starts.
    pub pfn_shift: u32,
}

impl PfnFormat {
    /// 4.14's `hmm_pfn_t`: `VALID` bit 0 (with `READ` bit 1), `WRITE` bit 2, `ERROR` bit 3,
    /// `EMPTY` bit 4, `SPECIAL` bit 5, `DEVICE_UNADDRESSABLE` bit 6, frame from bit 7.
    pub const HMM_PFN_T: PfnFormat =
        PfnFormat { flags: [0b11, 1 << 2, 1 << 6], values: [1 << 3, 1 << 4, 1 << 5], pfn_shift: 7 };

    /// A format, checked: the flags are non-empty, disjoint and below the frame; the values
    /// are distinct and none of them reads as a valid entry.
    pub fn new(flags: [u64; 3], values: [u64; 3], pfn_shift: u32) -> Result<PfnFormat, LegacyError> {
        if !(1..=63).contains(&pfn_shift) {
            return Err(LegacyError::Invalid("pfn_shift must be between 1 and 63"));
        }
        let low = (1u64 << pfn_shift) - 1;
        if flags.iter().any(|&f| f == 0 || f & !low != 0) {
            return Err(LegacyError::Invalid("every flag needs bits, all below pfn_shift"));
        }
        if flags[0] & flags[1] != 0 || flags[0] & flags[2] != 0 || flags[1] & flags[2] != 0 {
            return Err(LegacyError::Invalid("the VALID, WRITE and DEVICE_PRIVATE flags overlap"));
        }
        if values[0] == values[1] || values.iter().any(|&v| v & flags[0] == flags[0] && v & !low == 0) {
            return Err(LegacyError::Invalid("ERROR and NONE must differ and no value may look valid"));
        }
        Ok(PfnFormat { flags, values, pfn_shift })
    }

    /// The word for a walk result.
    pub fn encode(&self, s: PageState) -> u64 {
        match s {
            PageState::None => self.values[HMM_PFN_NONE],
            PageState::Error => self.values[HMM_PFN_ERROR],
            PageState::Valid { pfn, write, device_private, .. } => {
                pfn.0 << self.pfn_shift
                    | self.flags[HMM_PFN_VALID]
                    | if write { self.flags[HMM_PFN_WRITE] } else { 0 }
                    | if device_private { self.flags[HMM_PFN_DEVICE_PRIVATE] } else { 0 }
            }
        }
    }

    /// The request a driver put in a word (`VALID`: fault, `WRITE`: for write).
    pub fn request(&self, w: u64) -> Request {
        if self.values.contains(&w) {
            return Request::NONE;
        }
        let has = |f: u64| w & f == f;
        Request { fault: has(self.flags[HMM_PFN_VALID]), write: has(self.flags[HMM_PFN_WRITE]) }
    }

    /// The frame of a valid word (`hmm_pfn_to_page`).
    pub fn pfn(&self, w: u64) -> Option<Pfn> {
        let valid = w & self.flags[HMM_PFN_VALID] == self.flags[HMM_PFN_VALID] && !self.values.contains(&w);
        valid.then_some(Pfn(w >> self.pfn_shift))
    }

    /// Whether a valid word is writable.
    pub fn is_write(&self, w: u64) -> bool {
        self.pfn(w).is_some() && w & self.flags[HMM_PFN_WRITE] != 0
    }

    /// Whether a valid word names device-private memory.
    pub fn is_device_private(&self, w: u64) -> bool {
        self.pfn(w).is_some() && w & self.flags[HMM_PFN_DEVICE_PRIVATE] != 0
    }

    /// Reads the requests of `words` into core slots.
    fn requests(&self, words: &[u64]) -> alloc::vec::Vec<StateSlot> {
        words.iter().map(|&w| StateSlot::Request(self.request(w))).collect()
    }

    /// Writes the walk results of `slots` into `words`; returns the number of valid pages.
    fn results(&self, slots: &[StateSlot], words: &mut [u64]) -> usize {
        let mut valid = 0;
        for (w, s) in words.iter_mut().zip(slots) {
            let state = match *s {
                StateSlot::State(st) => st,
                StateSlot::Request(_) => PageState::None,
            };
            valid += usize::from(matches!(state, PageState::Valid { .. }));
            *w = self.encode(state);
        }
        valid
    }
}

/// A failed old-API call, with the errno that generation returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyError {
    /// `-EINVAL`: bad arguments; the text says which.
    Invalid(&'static str),
    /// `-EPERM`: no read access to the range, or a write on a read-only mapping.
    Permission,
    /// `-EFAULT`: a page cannot be made valid.
    Fault,
    /// `-EBUSY`: the range was invalidated meanwhile; start again.
    Busy,
    /// `-EAGAIN`: the call would have to block and `block` was false.
    Again,
    /// `-ENOMEM`.
    NoMemory,
}

impl LegacyError {
    /// The Linux errno (positive).
    pub fn errno(self) -> i32 {
        match self {
            LegacyError::Invalid(_) => 22,
            LegacyError::Permission => 1,
            LegacyError::Fault => 14,
            LegacyError::Busy => 16,
            LegacyError::Again => 11,
            LegacyError::NoMemory => 12,
        }
    }
}

impl core::fmt::Display for LegacyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            LegacyError::Invalid(why) => write!(f, "invalid argument: {why}"),
            LegacyError::Permission => write!(f, "permission denied by the mapping"),
            LegacyError::Fault => write!(f, "a page in the range cannot be made valid"),
            LegacyError::Busy => write!(f, "the range was invalidated meanwhile; start again"),
            LegacyError::Again => write!(f, "the call would block and block=false; retry"),
            LegacyError::NoMemory => write!(f, "out of memory"),
        }
    }
}

impl From<RangeError> for LegacyError {
    fn from(e: RangeError) -> Self {
        match e {
            RangeError::Busy => LegacyError::Busy,
            RangeError::Fault => LegacyError::Fault,
            RangeError::Permission => LegacyError::Permission,
            RangeError::NoMemory => LegacyError::NoMemory,
            RangeError::Invalid(why) => LegacyError::Invalid(why),
        }
    }
}

/// One old-API range fault of `[start, end)` under interval `sub` and sequence `seq`: the
/// requests come from `words` (with `default` added to each), device-private pages of every
/// device are reported as they are, the results go back into `words` in `fmt`. Returns the
/// number of valid pages. A busy page (a migration in flight) is [`LegacyError::Again`]; an
/// invalidation of the range during the walk is [`LegacyError::Busy`].
#[allow(clippy::too_many_arguments)]
fn fault_words(
    space: &mut crate::mm::space::AddressSpace,
    sub: &crate::notifier::Interval,
    seq: u64,
    (start, end): (u64, u64),
    fmt: &PfnFormat,
    words: &mut [u64],
    default: Request,
) -> Result<usize, LegacyError> {
    let mut slots = fmt.requests(words);
    let r = {
        let mut range = crate::range::HmmRange::<StateSlot> {
            notifier: sub,
            notifier_seq: seq,
            start,
            end,
            pfns: &mut slots,
            default_flags: default,
            pfn_flags_mask: Request::WRITE,
            dev_private_owner: Some(crate::range::ANY_DEVICE),
        };
        crate::range::hmm_range_fault(space, &mut range)
    };
    match r {
        Ok(()) => Ok(fmt.results(&slots, words)),
        Err(RangeError::Busy) if sub.check_retry(seq) => Err(LegacyError::Busy),
        Err(RangeError::Busy) => Err(LegacyError::Again),
        Err(e) => Err(e.into()),
    }
}

/// Checks an old-API range: page-aligned, non-empty, `words` one per page.
fn check_range(start: u64, end: u64, words: usize) -> Result<(), LegacyError> {
    if !start.is_multiple_of(4096) || !end.is_multiple_of(4096) || start >= end {
        return Err(LegacyError::Invalid("range must be page-aligned and non-empty"));
    }
    if end > crate::mm::pagetable::USER_END {
        return Err(LegacyError::Invalid("range is past the user address space"));
    }
    if ((end - start) / 4096) as usize != words {
        return Err(LegacyError::Invalid("pfns must hold one entry per page of the range"));
    }
    Ok(())
}
