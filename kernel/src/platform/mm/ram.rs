//! Checked access to the physical memory `hmm::mm` manages: the frames of the kernel's
//! `hmm::mm::Platform` implementation (`crate::mm::uspace`).
//!
//! `hmm` names memory by frame number. Every accessor here first checks that the whole range
//! lies in memory `hmm` can legitimately have been handed: RAM the frame allocator manages
//! (every region given to [`super::frame::add_region`], and the bootstrap run that holds the
//! kernel's first page tables, whose kernel half every address space copies), or device
//! memory mapped for the CPU with [`super::map_phys`] (a coherent device's BAR). Anything
//! else — the first MiB, the kernel image, the frame allocator's own links, a hole, a made-up
//! number — panics with the frame's number and the operation, instead of writing through
//! the direct map to whatever is there.
//!
//! Owns: the table of those ranges ([`MAX_RANGES`] slots, filled at boot and when devices
//! map their memory; never shrunk). Readers are lock-free: a slot is written once, its end
//! published last with `Release`, and read with `Acquire`. And a small cache of page-table
//! frames already checked ([`CHECKED_TABLES`]), so the per-entry accessors ([`table`]) search
//! the range table once per table frame, not on every entry: it holds only frames that passed
//! the check, which stay inside forever because ranges are never removed.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use hmm::addr::Pfn;

use super::{PAGE_SIZE, phys_to_virt};

/// Slots of the range table.
pub const MAX_RANGES: usize = 64;

static STARTS: [AtomicU64; MAX_RANGES] = [const { AtomicU64::new(0) }; MAX_RANGES];
static ENDS: [AtomicU64; MAX_RANGES] = [const { AtomicU64::new(0) }; MAX_RANGES];
/// Whether slot i is RAM the frame allocator manages (set before its end is published).
static MANAGED: [AtomicBool; MAX_RANGES] = [const { AtomicBool::new(false) }; MAX_RANGES];
static USED: AtomicUsize = AtomicUsize::new(0);
/// The slots that held the last two ranges checked, newest first (hints only: any value below
/// `USED` is valid). Two, because the experiments' device accesses alternate between a
/// device's memory and the RAM its page tables live in.
static HINT: AtomicUsize = AtomicUsize::new(0);
static HINT2: AtomicUsize = AtomicUsize::new(0);
static ADDING: spin::Mutex<()> = spin::Mutex::new(());
/// Searches of the range table the page-table accessors have made (table frames not in
/// [`CHECKED_TABLES`]), for tests of how often they pay for one.
static TABLE_SEARCHES: AtomicU64 = AtomicU64::new(0);

/// How many times the page-table accessors have searched the range table since boot.
pub fn table_searches() -> u64 {
    TABLE_SEARCHES.load(Ordering::Relaxed)
}

fn add(start: u64, end: u64, managed: bool) {
    if start >= end || check(start, end - start).is_ok() {
        return;
    }
    let _g = ADDING.lock();
    let i = USED.load(Ordering::Relaxed);
    if i == MAX_RANGES {
        log::error!("ram: range table full; [{start:#x}, {end:#x}) is not reachable by hmm's platform");
        return;
    }
    STARTS[i].store(start, Ordering::Relaxed);
    MANAGED[i].store(managed, Ordering::Relaxed);
    ENDS[i].store(end, Ordering::Release);
    USED.store(i + 1, Ordering::Release);
}

/// Records `[start, end)` as RAM the frame allocator manages.
pub(super) fn add_managed(start: u64, end: u64) {
    add(start, end, true);
}

/// Records `[start, end)` as device memory mapped for the CPU.
pub(super) fn add_device(start: u64, end: u64) {
    add(start, end, false);
}

/// Memory `hmm` named that it cannot have been handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutsideRam {
    /// Physical address of the access.
    pub pa: u64,
    /// Its length in bytes.
    pub len: u64,
}

impl core::fmt::Display for OutsideRam {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} bytes at physical {:#x} (frame {:#x}) are outside the RAM the frame allocator manages and the device memory mapped for the CPU",
            self.len,
            self.pa,
            self.pa / PAGE_SIZE
        )
    }
}

/// Whether `[pa, pa + len)` lies inside one recorded range (see the module docs).
#[inline(always)]
pub fn check(pa: u64, len: u64) -> Result<(), OutsideRam> {
    // The range that answered last first, inline: nearly every frame hmm uses is in the one
    // large RAM region or a device's memory, so most checks are two comparisons (and no call:
    // under TCG a call and its return cost more than the comparisons).
    let hint = HINT.load(Ordering::Relaxed);
    if let Some(end) = pa.checked_add(len)
        && hint < USED.load(Ordering::Acquire)
        && ENDS[hint].load(Ordering::Acquire) >= end
        && STARTS[hint].load(Ordering::Relaxed) <= pa
    {
        return Ok(());
    }
    check_slow(pa, len)
}

/// [`check`] past the last range that answered.
#[inline(never)]
fn check_slow(pa: u64, len: u64) -> Result<(), OutsideRam> {
    let outside = OutsideRam { pa, len };
    let end = pa.checked_add(len).ok_or(outside)?;
    let n = USED.load(Ordering::Acquire);
    let holds = |i: usize| {
        let e = ENDS[i].load(Ordering::Acquire);
        STARTS[i].load(Ordering::Relaxed) <= pa && end <= e
    };
    // `check` tried the range that answered last; the one before it next, then every range.
    let hint = HINT.load(Ordering::Relaxed);
    let hint2 = HINT2.load(Ordering::Relaxed);
    let found = if hint2 < n && holds(hint2) { Some(hint2) } else { (0..n).find(|&i| holds(i)) };
    match found {
        Some(i) => {
            HINT2.store(hint, Ordering::Relaxed);
            HINT.store(i, Ordering::Relaxed);
            Ok(())
        }
        None => Err(outside),
    }
}

/// Whether `[start, end)` overlaps RAM the frame allocator manages (not device memory).
pub(super) fn overlaps_managed(start: u64, end: u64) -> bool {
    let n = USED.load(Ordering::Acquire);
    (0..n).any(|i| {
        let e = ENDS[i].load(Ordering::Acquire);
        MANAGED[i].load(Ordering::Relaxed) && STARTS[i].load(Ordering::Relaxed) < end && start < e
    })
}

/// Panics unless `[pa, pa + len)` is memory `hmm` may use.
#[track_caller]
#[inline]
fn require(op: &str, pa: u64, len: u64) {
    if let Err(e) = check(pa, len) {
        refused(op, e);
    }
}

/// Zeroes `count` frames from `pfn`.
#[track_caller]
pub fn zero(pfn: Pfn, count: u64) {
    let len = count * PAGE_SIZE;
    require("zero", pfn.addr(), len);
    // SAFETY: the range is RAM or mapped device memory that hmm owns (checked against the
    // ranges above; the frame allocator handed it out, hmm asks for it zeroed), covered by
    // the direct map; nothing else references it as a Rust object.
    unsafe { core::ptr::write_bytes(phys_to_virt(pfn.addr()) as *mut u8, 0, len as usize) }
}

/// Copies `count` frames from `src` to `dst` (distinct allocations: they never overlap).
#[track_caller]
pub fn copy(dst: Pfn, src: Pfn, count: u64) {
    let len = count * PAGE_SIZE;
    require("copy from", src.addr(), len);
    require("copy to", dst.addr(), len);
    assert!(
        src.addr() + len <= dst.addr() || dst.addr() + len <= src.addr(),
        "hmm platform: copy of overlapping frames {:#x} and {:#x}",
        src.0,
        dst.0
    );
    // SAFETY: both runs are checked memory hmm owns, direct-mapped, and do not overlap
    // (checked).
    unsafe {
        core::ptr::copy_nonoverlapping(
            phys_to_virt(src.addr()) as *const u8,
            phys_to_virt(dst.addr()) as *mut u8,
            len as usize,
        )
    }
}

/// The little-endian word at physical `pa` (8-aligned), incremented there when `bump`; returns
/// the word as it was. One check and one load (and store): the experiments' access path reads
/// a word of a page, and bumps it on a write, at each of its millions of accesses.
#[track_caller]
#[inline]
pub fn bump_u64(pa: u64, bump: bool) -> u64 {
    require("word access", pa, 8);
    assert!(pa.is_multiple_of(8), "hmm platform: unaligned word access at {pa:#x}");
    let at = phys_to_virt(pa) as *mut u64;
    // SAFETY: `pa..pa + 8` is checked memory hmm owns, direct-mapped, and aligned (checked);
    // no Rust reference to it exists (hmm reaches its frames only through this module).
    let w = u64::from_le(unsafe { core::ptr::read(at) });
    if bump {
        // SAFETY: as above.
        unsafe { core::ptr::write(at, w.wrapping_add(1).to_le()) }
    }
    w
}

/// Reads `buf.len()` bytes at physical `pa`.
#[track_caller]
pub fn read(pa: u64, buf: &mut [u8]) {
    require("read", pa, buf.len() as u64);
    // SAFETY: `pa..pa + len` is checked memory hmm owns (it resolved it from its own page
    // tables), direct-mapped; `buf` is a distinct kernel buffer.
    unsafe { core::ptr::copy_nonoverlapping(phys_to_virt(pa) as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Writes `data` at physical `pa`.
#[track_caller]
pub fn write(pa: u64, data: &[u8]) {
    require("write", pa, data.len() as u64);
    // SAFETY: as in `read`, in the other direction.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), phys_to_virt(pa) as *mut u8, data.len()) }
}

/// The 512 entries of the page-table frame `table`, as atomics (checked once per frame: see
/// [`CHECKED_TABLES`]).
#[track_caller]
#[inline]
pub fn table(table: Pfn) -> &'static [AtomicU64; 512] {
    match try_table(table) {
        Ok(t) => t,
        Err(e) => refused("page-table access", e),
    }
}

/// The panic of an access to memory outside the recorded ranges.
#[cold]
#[track_caller]
fn refused(op: &str, e: OutsideRam) -> ! {
    panic!("hmm platform: {op}: {e}")
}

/// Slots of [`CHECKED_TABLES`] (a power of two): enough that the tables a walk alternates
/// between (fork's parent and child table, a walk's four levels) rarely share one.
const TABLE_SLOTS: usize = 64;

/// Page-table frames that passed [`check`], plus one (0: empty), in the slot their number's
/// low bits pick: a direct-mapped cache, so an entry access of a table checked before costs
/// one load and one comparison instead of a search of the range table. Sound because ranges
/// are only ever added: a frame once inside one stays inside for the kernel's lifetime. Only
/// frames that passed are stored; a slot read while another CPU replaces it holds either
/// value, both checked.
static CHECKED_TABLES: [AtomicU64; TABLE_SLOTS] = [const { AtomicU64::new(0) }; TABLE_SLOTS];

/// [`table`], with a frame outside the recorded ranges an error instead of a panic.
#[inline]
pub fn try_table(table: Pfn) -> Result<&'static [AtomicU64; 512], OutsideRam> {
    if in_cache(table) { Ok(direct_table(table)) } else { try_table_miss(table) }
}

/// Runs `f` on entry `index` (below 512) of the page-table frame `table` ([`table`]'s check:
/// a frame outside the recorded ranges panics). The per-entry accessors of
/// hmm's platform: when the frame is in the cache the access is inlined and makes no call (a
/// call on the fast path would make every access save and restore registers), otherwise an
/// out-of-line tail call checks it.
#[inline]
#[track_caller]
pub fn entry<R>(table: Pfn, index: usize, f: impl FnOnce(&AtomicU64) -> R) -> R {
    debug_assert!(index < 512, "page-table index {index}");
    // Masked rather than bounds-checked: one branch less on every access, and an index past
    // 511 (a bug in hmm) still stays inside the checked frame.
    if in_cache(table) { f(&direct_table(table)[index % 512]) } else { entry_miss(table, index, f) }
}

#[cold]
#[inline(never)]
#[track_caller]
fn entry_miss<R>(table: Pfn, index: usize, f: impl FnOnce(&AtomicU64) -> R) -> R {
    match try_table_miss(table) {
        Ok(t) => f(&t[index]),
        Err(e) => refused("page-table access", e),
    }
}

/// Whether `table` is in [`CHECKED_TABLES`] (so it passed [`check`]).
#[inline]
fn in_cache(table: Pfn) -> bool {
    CHECKED_TABLES[table.0 as usize % TABLE_SLOTS].load(Ordering::Relaxed) == table.0.wrapping_add(1)
}

/// The range-table search for a table frame not in the cache, which records it there if it
/// passes.
#[cold]
#[inline(never)]
fn try_table_miss(table: Pfn) -> Result<&'static [AtomicU64; 512], OutsideRam> {
    TABLE_SEARCHES.fetch_add(1, Ordering::Relaxed);
    // A number whose address does not fit is outside everything (and its tag could wrap).
    if table.0 >= 1 << (64 - 12) {
        return Err(OutsideRam { pa: u64::MAX, len: PAGE_SIZE });
    }
    check(table.addr(), PAGE_SIZE)?;
    CHECKED_TABLES[table.0 as usize % TABLE_SLOTS].store(table.0 + 1, Ordering::Relaxed);
    Ok(direct_table(table))
}

/// The direct-map view of a table frame that passed [`check`] (now or earlier).
#[inline]
fn direct_table(table: Pfn) -> &'static [AtomicU64; 512] {
    // SAFETY: only called for a frame that passed `check` (just now, or earlier and recorded in
    // `CHECKED_TABLES`; ranges never shrink): memory hmm owns (a page-table frame it
    // allocated, or the kernel root in the bootstrap run), mapped read-write by the direct map
    // for the kernel's lifetime: 512 naturally aligned u64s, which every user accesses only
    // atomically.
    unsafe { &*(phys_to_virt(table.addr()) as *const [AtomicU64; 512]) }
}
