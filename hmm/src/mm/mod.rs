//! The portable memory manager: address spaces over x86_64-format page tables.
//!
//! This is the part of the kernel the HMM stack mirrors, written once and run twice: in the
//! kernel over real page tables (the kernel implements [`Platform`] with its frame allocator,
//! direct map and `invlpg`) and on the host over [`platform::fake::FakePlatform`].
//!
//! | Linux | here |
//! |---|---|
//! | `struct page`, `mem_map` | [`frame::PageMeta`], [`frame::FrameTable`] |
//! | `mm_struct`, page tables | [`space::AddressSpace`], [`pagetable::Tables`] |
//! | `vm_area_struct` | [`vma::Vma`], [`vma::VmaTree`] |
//! | `mmu_notifier_range`, `MMU_NOTIFY_*` | [`notify::Range`], [`notify::Event`] |
//! | swap entries (device-private, migration, exclusive) | [`pte::Soft`] |
//! | tmpfs / shmem file | [`file::MemFile`] |
//!
//! [`Mm`] is what every address space shares: the platform, the frame table, the zero pages
//! and the transparent-huge-page mode.

pub mod buddy;
pub mod exclusive;
pub mod file;
pub mod frame;
pub mod migrate;
pub mod notify;
pub mod pagetable;
pub mod platform;
pub mod pte;
pub mod space;
pub mod vma;

#[cfg(test)]
mod tests;

use crate::addr::Pfn;
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use frame::{FrameTable, PageMeta, flags};
pub use platform::Platform;
use space::{AddressSpace, FaultError};
use spin::{Mutex, Once};

/// An address space behind its lock (the `mmap_lock`), as shared by the kernel, the devices
/// that mirror it and the reverse-map walks of device-memory eviction.
pub type SharedSpace = Mutex<AddressSpace>;

/// First frame number of the physical range handed to device-private memory: far above any
/// RAM or MMIO the machines here have (64 TiB), below the 52-bit PTE limit.
pub const DEVICE_PRIVATE_BASE: u64 = 1 << 34;

/// Frames in a 2 MiB page.
pub const HUGE_FRAMES: u64 = 512;
/// The order of a 2 MiB page.
pub const HUGE_ORDER: u32 = 9;

/// A memory-management error, named after the Linux errno it corresponds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// `EINVAL`: an argument is malformed; the text says which.
    Invalid(&'static str),
    /// `ENOMEM`: no physical memory left.
    NoMemory,
    /// `ENOMEM`: the address range is not (fully) mapped, or no gap is big enough.
    NoSpace(&'static str),
    /// `EFAULT`: an address is outside any mapping, or not accessible.
    Fault(&'static str),
    /// `EEXIST`: `MAP_FIXED_NOREPLACE` over an existing mapping.
    Exists,
    /// `EBUSY`: a page is in use by a migration or a device and cannot change now.
    Busy(&'static str),
    /// `EACCES`: the mapping's rights forbid this.
    Access(&'static str),
    /// `EIO`: a device failed to copy or transfer; the text says which.
    Io(&'static str),
    /// `ENOMEM`: the frame table has no section left for more device memory
    /// ([`frame::MAX_SECTIONS`] are in use, RAM included): remove device memory first.
    FrameTableFull,
}

impl Error {
    /// The Linux errno value (positive).
    pub fn errno(self) -> i32 {
        match self {
            Error::Invalid(_) => 22,
            Error::NoMemory | Error::NoSpace(_) | Error::FrameTableFull => 12,
            Error::Fault(_) => 14,
            Error::Exists => 17,
            Error::Busy(_) => 16,
            Error::Access(_) => 13,
            Error::Io(_) => 5,
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Invalid(why) => write!(f, "invalid argument: {why}"),
            Error::NoMemory => write!(f, "out of physical memory: free some or give the machine more"),
            Error::NoSpace(why) => write!(f, "no such mapping or no room: {why}"),
            Error::Fault(why) => write!(f, "bad address: {why}"),
            Error::Exists => write!(f, "the fixed range is already mapped (MAP_FIXED_NOREPLACE)"),
            Error::Busy(why) => write!(f, "busy: {why}; retry later"),
            Error::Access(why) => write!(f, "access denied: {why}"),
            Error::Io(why) => write!(f, "device I/O error: {why}"),
            Error::FrameTableFull => write!(
                f,
                "frame table full: all {} sections hold RAM or live device memory; remove device memory first",
                frame::MAX_SECTIONS
            ),
        }
    }
}

/// Transparent huge page policy (`/sys/kernel/mm/transparent_hugepage/enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThpMode {
    /// Never use 2 MiB pages for anonymous memory.
    Never = 0,
    /// Only in ranges marked `MADV_HUGEPAGE` (the default, as in most distributions).
    Madvise = 1,
    /// Wherever a 2 MiB-aligned range of a private anonymous mapping faults.
    Always = 2,
}

/// Counters shared by every address space.
#[derive(Debug, Default)]
pub struct MmStats {
    /// Base pages allocated for anonymous memory.
    pub anon_pages: AtomicU64,
    /// 2 MiB pages allocated (THP and hugetlb).
    pub huge_pages: AtomicU64,
    /// Huge mappings split into base pages.
    pub thp_splits: AtomicU64,
    /// Copy-on-write copies made.
    pub cow_copies: AtomicU64,
    /// Copy-on-write faults resolved by reusing an exclusive page.
    pub cow_reuses: AtomicU64,
}

/// Device memory as the memory manager sees it: the ZONE_DEVICE hooks (`dev_pagemap_ops`)
/// of every registered pagemap, dispatched by frame. The HMM layer implements it.
pub trait DeviceMemory: Send + Sync {
    /// The last reference to device page `pfn` went (`page_free`; `folio_free` when `order`
    /// is above 0: the whole compound page at `pfn` is free).
    fn page_free(&self, pfn: Pfn, order: u32);
    /// A CPU access at `va` hit device-private page `pfn`: move it to RAM
    /// (`migrate_to_ram`). `Ok` means retry the access.
    fn migrate_to_ram(&self, space: &mut AddressSpace, va: u64, pfn: Pfn) -> Result<(), FaultError>;
    /// The owner cookie of the pagemap holding `pfn` and whether it is device-private.
    fn owner_of(&self, pfn: Pfn) -> Option<(notify::Owner, bool)>;
}

/// The memory manager's shared state.
pub struct Mm {
    platform: Arc<dyn Platform>,
    frames: FrameTable,
    zero: Pfn,
    huge_zero: Pfn,
    thp: AtomicU8,
    next_space: AtomicU32,
    next_file: AtomicU64,
    device: Once<Arc<dyn DeviceMemory>>,
    spaces: Mutex<BTreeMap<u32, Weak<SharedSpace>>>,
    next_device_pfn: Mutex<u64>,
    /// Device-private frame ranges given back (`release_mem_region`): `(first, frames its
    /// section has room for)`, handed out again before new frame numbers. Locked after
    /// `next_device_pfn`.
    released_private: Mutex<alloc::vec::Vec<(Pfn, u64)>>,
    /// Physical ranges of CPU-addressable device memory given metadata
    /// ([`add_device_region_at`](Mm::add_device_region_at)).
    device_regions: Mutex<alloc::vec::Vec<(Pfn, u64)>>,
    /// Counters.
    pub stats: MmStats,
}

impl core::fmt::Debug for Mm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mm").field("zero", &self.zero).field("huge_zero", &self.huge_zero).finish_non_exhaustive()
    }
}

impl Mm {
    /// A memory manager over `platform`, whose allocatable frames lie in `sections`
    /// (`(first frame, count)` each). Allocates the zero page and the huge zero page.
    pub fn new(platform: Arc<dyn Platform>, sections: &[(Pfn, u64)]) -> Result<Arc<Mm>, Error> {
        let frames = FrameTable::new();
        for &(base, count) in sections {
            frames.add_section(base, count).map_err(|_| Error::Invalid("too many memory sections"))?;
        }
        let zero = platform.alloc(0).ok_or(Error::NoMemory)?;
        platform.zero(zero, 1);
        let Some(huge_zero) = platform.alloc(HUGE_ORDER) else {
            platform.free(zero, 0);
            return Err(Error::NoMemory);
        };
        platform.zero(huge_zero, HUGE_FRAMES);
        let mm = Mm {
            platform,
            frames,
            zero,
            huge_zero,
            thp: AtomicU8::new(ThpMode::Madvise as u8),
            next_space: AtomicU32::new(1),
            next_file: AtomicU64::new(1),
            device: Once::new(),
            spaces: Mutex::new(BTreeMap::new()),
            next_device_pfn: Mutex::new(DEVICE_PRIVATE_BASE),
            released_private: Mutex::new(alloc::vec::Vec::new()),
            device_regions: Mutex::new(alloc::vec::Vec::new()),
            stats: MmStats::default(),
        };
        for pfn in [zero, huge_zero] {
            if let Some(m) = mm.frames.get(pfn) {
                m.init(flags::ZERO, 0);
            }
        }
        Ok(Arc::new(mm))
    }

    /// The platform.
    pub fn platform(&self) -> &dyn Platform {
        &*self.platform
    }

    /// The frame table.
    pub fn frames(&self) -> &FrameTable {
        &self.frames
    }

    /// The metadata of `pfn`.
    pub fn meta(&self, pfn: Pfn) -> Option<&PageMeta> {
        self.frames.get(pfn)
    }

    /// The shared 4 KiB zero page.
    pub fn zero_pfn(&self) -> Pfn {
        self.zero
    }

    /// The shared 2 MiB zero page.
    pub fn huge_zero_pfn(&self) -> Pfn {
        self.huge_zero
    }

    /// Whether `pfn` is one of the zero pages (or a frame inside the huge one).
    pub fn is_zero(&self, pfn: Pfn) -> bool {
        pfn == self.zero || (pfn.0 >= self.huge_zero.0 && pfn.0 < self.huge_zero.0 + HUGE_FRAMES)
    }

    /// The transparent-huge-page mode.
    pub fn thp_mode(&self) -> ThpMode {
        match self.thp.load(Ordering::Relaxed) {
            0 => ThpMode::Never,
            2 => ThpMode::Always,
            _ => ThpMode::Madvise,
        }
    }

    /// Sets the transparent-huge-page mode.
    pub fn set_thp_mode(&self, mode: ThpMode) {
        self.thp.store(mode as u8, Ordering::Relaxed);
    }

    /// Installs the device-memory hooks (once; later calls are ignored).
    pub fn set_device_memory(&self, d: Arc<dyn DeviceMemory>) {
        self.device.call_once(|| d);
    }

    /// The device-memory hooks, if a device layer is installed.
    pub fn device_memory(&self) -> Option<&Arc<dyn DeviceMemory>> {
        self.device.get()
    }

    /// Reserves `frames` frame numbers for device-private memory that no RAM or MMIO uses
    /// (`request_free_mem_region`) and gives them metadata. 2 MiB-aligned. A range given back
    /// ([`remove_device_private_region`](Self::remove_device_private_region)) that is big
    /// enough is reused, with its frame-table section; [`Error::FrameTableFull`] when a new
    /// section is needed and the table has none left.
    pub fn add_device_private_region(&self, frames: u64) -> Result<Pfn, Error> {
        if frames == 0 {
            return Err(Error::Invalid("device region of 0 frames"));
        }
        let mut next = self.next_device_pfn.lock();
        let mut released = self.released_private.lock();
        // The smallest range given back that fits (its vacant section has room for it).
        if let Some(i) = (0..released.len()).filter(|&i| released[i].1 >= frames).min_by_key(|&i| released[i].1)
            && self.frames.add_section(released[i].0, frames).is_ok()
        {
            return Ok(released.swap_remove(i).0);
        }
        let base = *next;
        let size = frames.div_ceil(HUGE_FRAMES) * HUGE_FRAMES;
        self.frames.add_section(Pfn(base), frames).map_err(|_| Error::FrameTableFull)?;
        *next = base + size;
        Ok(Pfn(base))
    }

    /// Gives back a device-private range from
    /// [`add_device_private_region`](Self::add_device_private_region) whose frames are all free
    /// (`memunmap_pages` of private memory: `release_mem_region` and the section's removal):
    /// its frames have no metadata until the range is handed out again. `Busy` if a frame is
    /// still referenced or allocated; `Invalid` if no such region starts at `base`.
    pub fn remove_device_private_region(&self, base: Pfn) -> Result<(), Error> {
        let _next = self.next_device_pfn.lock();
        let mut released = self.released_private.lock();
        if base.0 < DEVICE_PRIVATE_BASE {
            return Err(Error::Invalid("not a device-private region"));
        }
        let frames = self.frames.section_at(base).ok_or(Error::Invalid("no device-private region starts there"))?;
        for i in 0..frames {
            if self.frames.get(Pfn(base.0 + i)).is_some_and(|m| m.refcount() != 0 || m.has(flags::ALLOCATED)) {
                return Err(Error::Busy("device-private frames still in use"));
            }
        }
        let room = self.frames.remove_section(base).ok_or(Error::Invalid("no device-private region starts there"))?;
        released.push((base, room));
        Ok(())
    }

    /// Whether `[base, base + frames)` lies inside device-private frame numbers handed out by
    /// [`add_device_private_region`](Self::add_device_private_region).
    pub fn is_device_private(&self, base: Pfn, frames: u64) -> bool {
        let next = *self.next_device_pfn.lock();
        base.0 >= DEVICE_PRIVATE_BASE
            && base.0.checked_add(frames).is_some_and(|end| end <= next)
            && (0..frames).step_by(HUGE_FRAMES as usize).all(|i| self.meta(Pfn(base.0 + i)).is_some())
    }

    /// Gives metadata to device memory at physical frames `[base, base + frames)` that the CPU
    /// can address (a device BAR: coherent device memory), so it can be mapped and counted like
    /// RAM. The range must not be RAM. Registering a range again reuses its metadata (memory
    /// removed and added back); a range that overlaps an earlier one only in part is refused.
    pub fn add_device_region_at(&self, base: Pfn, frames: u64) -> Result<(), Error> {
        if frames == 0 {
            return Err(Error::Invalid("device region of 0 frames"));
        }
        let mut regions = self.device_regions.lock();
        if regions.iter().any(|&(b, n)| b.0 <= base.0 && base.0 + frames <= b.0 + n) {
            return Ok(());
        }
        if self.frames.overlaps(base, frames) {
            return Err(Error::Invalid("device region overlaps RAM or another region in part"));
        }
        self.frames
            .add_section(base, frames)
            .map_err(|_| Error::Invalid("frame table full: too many device memory regions"))?;
        regions.push((base, frames));
        Ok(())
    }

    /// Shares `space` behind its lock and records it for reverse-map walks by space id.
    pub fn share(&self, space: AddressSpace) -> Arc<SharedSpace> {
        let id = space.id();
        let shared = Arc::new(Mutex::new(space));
        self.spaces.lock().insert(id, Arc::downgrade(&shared));
        shared
    }

    /// The shared address space with id `id`, if it is still alive.
    pub fn space(&self, id: u32) -> Option<Arc<SharedSpace>> {
        self.spaces.lock().get(&id).and_then(Weak::upgrade)
    }

    pub(crate) fn forget_space(&self, id: u32) {
        self.spaces.lock().remove(&id);
    }

    pub(crate) fn new_space_id(&self) -> u32 {
        self.next_space.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn new_file_id(&self) -> u64 {
        self.next_file.fetch_add(1, Ordering::Relaxed)
    }

    /// Allocates `2^order` frames with metadata of `kind` (one reference), zeroed if asked.
    pub fn alloc_page(&self, kind: u32, order: u32, zero: bool) -> Result<Pfn, Error> {
        let pfn = self.platform.alloc(order).ok_or(Error::NoMemory)?;
        let Some(head) = self.frames.get(pfn) else {
            self.platform.free(pfn, order);
            return Err(Error::Invalid("the platform handed out a frame outside the frame table"));
        };
        head.init(kind, order);
        for i in 1..(1u64 << order) {
            if let Some(t) = self.frames.get(Pfn(pfn.0 + i)) {
                t.init(kind | flags::TAIL, 0);
                t.put();
            }
        }
        if zero {
            self.platform.zero(pfn, 1 << order);
        }
        if order == 0 {
            self.stats.anon_pages.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.huge_pages.fetch_add(1, Ordering::Relaxed);
        }
        Ok(pfn)
    }

    /// Takes a reference on `pfn` (no-op for unmanaged frames and zero pages).
    pub fn get_page(&self, pfn: Pfn) {
        if let Some(m) = self.frames.get(pfn)
            && !m.has(flags::ZERO)
        {
            m.get();
        }
    }

    /// Splits the compound page at `head` into base pages (`split_page`, and the metadata half
    /// of `folio_split`): the head keeps its reference count and page-table map count, each
    /// tail gets one reference (the holder of the compound reference now holds every base
    /// page) and no mappings. The kind flags, the dirty and referenced bits and the owner carry
    /// over (indices continue from the head's); `extra` names more flags to carry (`LOCKED`
    /// when the holder has the compound page locked). Per-page device data lives in the
    /// pagemap, page by page, so it survives as it is. Returns the order split (0: nothing).
    pub fn split_folio(&self, head: Pfn, extra: u32) -> u32 {
        let Some(h) = self.frames.get(head) else { return 0 };
        let order = h.order();
        if order == 0 {
            return 0;
        }
        let keep = h.flags()
            & (flags::ANON | flags::FILE | flags::DEVICE | flags::DIRTY | flags::REFERENCED | flags::LAZYFREE | extra);
        let (owner, index) = (h.owner(), h.index());
        h.clear(flags::HEAD | (0xff << flags::ORDER_SHIFT));
        for i in 1..(1u64 << order) {
            if let Some(t) = self.frames.get(Pfn(head.0 + i)) {
                t.init(keep, 0);
                t.set_owner(owner, index + i);
            }
        }
        order
    }

    /// Drops a reference on `pfn`; the last one frees it (device pages go to their pagemap).
    pub fn put_page(&self, pfn: Pfn) {
        let Some(m) = self.frames.get(pfn) else { return };
        if m.has(flags::ZERO) {
            return;
        }
        if m.put() != 0 {
            return;
        }
        let order = m.order();
        let device = m.has(flags::DEVICE);
        for i in 0..(1u64 << order) {
            if let Some(t) = self.frames.get(Pfn(pfn.0 + i)) {
                t.reset();
            }
        }
        if device {
            if let Some(d) = self.device.get() {
                d.page_free(pfn, order);
            }
        } else {
            self.platform.free(pfn, order);
        }
    }
}
