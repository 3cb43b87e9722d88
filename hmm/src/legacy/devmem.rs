//! The 4.14-5.2 device-memory API: `hmm_devmem_add` (hotplug device memory at an unused
//! physical range as ZONE_DEVICE pages), `hmm_devmem_add_resource` (the same for a given
//! resource, `DEVICE_PUBLIC` when the CPU can address it), `hmm_devmem_remove`, the driver's
//! `hmm_devmem_ops.free` / `.fault` callbacks and the per-page driver data
//! (`hmm_devmem_page_set_drvdata` / `_get_drvdata`).
//!
//! Mapping onto the core: an [`HmmDevmem`] is one [`DevPagemap`] (private for `add`, the
//! resource's kind for `add_resource`; `DEVICE_PUBLIC` became `MEMORY_DEVICE_COHERENT`)
//! whose `page_free` and `migrate_to_ram` callbacks forward to the driver's `free` and
//! `fault`. The driver data is the pagemap's per-page word. The refcount rules are the
//! modern ones (a free device page has refcount 0; [`HmmDevmem::page_init`] hands one out
//! locked with one reference; the fault callback runs with the page referenced and locked),
//! which closes the 4.14 use-after-free class (CVE-2022-3523) for old-API drivers too. A 2 MiB
//! device page of the modern core is freed page by page here: this generation had no
//! compound device pages.

use crate::addr::Pfn;
use crate::mm::Error;
use crate::mm::notify::Owner;
use crate::mm::space::{AddressSpace, FaultError};
use crate::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use alloc::sync::{Arc, Weak};
use spin::Once;

/// The driver callbacks (`struct hmm_devmem_ops`).
pub trait DevmemOps: Send + Sync {
    /// `free`: the last reference to `page` went; it is the driver's again.
    fn free(&self, devmem: &HmmDevmem, page: Pfn);
    /// `fault`: a CPU access at `va` hit device page `page` (referenced and locked): migrate
    /// it (at least) back to RAM, typically with [`migrate_vma`](super::migrate::migrate_vma).
    /// `Ok` when the access can be retried.
    fn fault(&self, devmem: &HmmDevmem, space: &mut AddressSpace, va: u64, page: Pfn) -> Result<(), FaultError>;
}

/// A resource to register with [`HmmDevmem::add_resource`] (`struct resource` with its
/// `desc`): its size and whether the CPU can address it (`IORES_DESC_DEVICE_PUBLIC_MEMORY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevmemResource {
    /// Size in bytes (a multiple of 2 MiB).
    pub bytes: u64,
    /// `DEVICE_PUBLIC` (CPU-addressable, coherent) rather than private.
    pub public: bool,
}

/// Registered device memory (`struct hmm_devmem`).
pub struct HmmDevmem {
    pagemaps: Arc<Pagemaps>,
    pagemap: Arc<DevPagemap>,
    ops: Weak<dyn DevmemOps>,
    forward: Arc<Forward>,
}

impl core::fmt::Debug for HmmDevmem {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HmmDevmem").field("pagemap", &self.pagemap).finish_non_exhaustive()
    }
}

/// The pagemap callbacks, forwarding to the driver's.
struct Forward(Once<Weak<HmmDevmem>>);

impl PagemapOps for Forward {
    fn page_free(&self, _pm: &DevPagemap, pfn: Pfn, order: u32) {
        let Some(d) = self.0.get().and_then(Weak::upgrade) else { return };
        let Some(ops) = d.ops.upgrade() else { return };
        for k in 0..1u64 << order {
            ops.free(&d, Pfn(pfn.0 + k));
        }
    }

    fn migrate_to_ram(&self, _pm: &DevPagemap, space: &mut AddressSpace, va: u64, page: Pfn) -> Result<(), FaultError> {
        let d = self.0.get().and_then(Weak::upgrade).ok_or(FaultError::Bus)?;
        let ops = d.ops.upgrade().ok_or(FaultError::Bus)?;
        ops.fault(&d, space, va, page)
    }
}

impl HmmDevmem {
    /// `hmm_devmem_add`: `bytes` (a multiple of 2 MiB) of device-private memory at physical
    /// addresses no RAM or MMIO uses, owned by `owner`.
    pub fn add(
        pagemaps: &Arc<Pagemaps>,
        ops: Weak<dyn DevmemOps>,
        owner: Owner,
        bytes: u64,
    ) -> Result<Arc<HmmDevmem>, Error> {
        Self::register(pagemaps, ops, owner, bytes, MemoryKind::Private)
    }

    /// `hmm_devmem_add_resource`: registers `res`, as `DEVICE_PUBLIC` (coherent) memory when
    /// it is CPU-addressable.
    pub fn add_resource(
        pagemaps: &Arc<Pagemaps>,
        ops: Weak<dyn DevmemOps>,
        owner: Owner,
        res: DevmemResource,
    ) -> Result<Arc<HmmDevmem>, Error> {
        let kind = if res.public { MemoryKind::Coherent } else { MemoryKind::Private };
        Self::register(pagemaps, ops, owner, res.bytes, kind)
    }

    fn register(
        pagemaps: &Arc<Pagemaps>,
        ops: Weak<dyn DevmemOps>,
        owner: Owner,
        bytes: u64,
        kind: MemoryKind,
    ) -> Result<Arc<HmmDevmem>, Error> {
        if ops.upgrade().is_none() {
            return Err(Error::Invalid("device memory needs its free and fault callbacks"));
        }
        if bytes == 0 || !bytes.is_multiple_of(2 << 20) {
            return Err(Error::Invalid("device memory size must be a non-zero multiple of 2 MiB"));
        }
        let forward = Arc::new(Forward(Once::new()));
        let fw: Arc<dyn PagemapOps> = forward.clone();
        let pagemap = pagemaps.memremap_pages(kind, owner, bytes / 4096, Arc::downgrade(&fw))?;
        let d = Arc::new(HmmDevmem { pagemaps: pagemaps.clone(), pagemap, ops, forward });
        d.forward.0.call_once(|| Arc::downgrade(&d));
        Ok(d)
    }

    /// The pagemap behind it.
    pub fn pagemap(&self) -> &Arc<DevPagemap> {
        &self.pagemap
    }

    /// The first device page (`devmem->pfn_first`).
    pub fn pfn_first(&self) -> Pfn {
        self.pagemap.ranges()[0].0
    }

    /// One past the last device page (`devmem->pfn_last`).
    pub fn pfn_last(&self) -> Pfn {
        let (start, n) = *self.pagemap.ranges().last().unwrap_or(&(Pfn(0), 0));
        Pfn(start.0 + n)
    }

    /// Every device page `(first, count)` run.
    pub fn ranges(&self) -> &[(Pfn, u64)] {
        self.pagemap.ranges()
    }

    /// Hands out free device page `page`: one reference, locked (what a 4.14 driver did with
    /// `get_page` + `lock_page` on a page from its free list).
    pub fn page_init(&self, page: Pfn) -> Result<(), Error> {
        if !self.pagemap.contains(page) {
            return Err(Error::Invalid("not a page of this device memory"));
        }
        self.pagemaps.page_init(page)
    }

    /// `hmm_devmem_page_set_drvdata`.
    pub fn page_set_drvdata(&self, page: Pfn, data: u64) {
        self.pagemap.set_data(page, data);
    }

    /// `hmm_devmem_page_get_drvdata`.
    pub fn page_get_drvdata(&self, page: Pfn) -> Option<u64> {
        self.pagemap.data(page)
    }

    /// `hmm_devmem_remove`: unregisters the memory. `Busy` while any page is still in use
    /// (4.14 waited for the pages to go; evict them first with
    /// [`migrate_device_range`](crate::mm::migrate::migrate_device_range)).
    pub fn remove(&self) -> Result<(), Error> {
        self.pagemaps.memunmap_pages(&self.pagemap)
    }
}
