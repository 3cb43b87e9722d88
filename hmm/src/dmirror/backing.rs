//! Where a dmirror device's memory lives and what copies it.
//!
//! Linux's `test_hmm` emulates device memory: private pages are backed by RAM pages the driver
//! allocates, coherent pages are special-purpose RAM, and the "device" copies with `memcpy`.
//! [`RamBacking`] does the same and is the default. A real device has memory of its own and a
//! copy engine: the kernel gives a dmirror device a [`Backing`] over a device's BAR whose copies
//! are DMA, and the acceptance suite then runs unchanged on real device memory.
//!
//! Invariants a backing keeps:
//! - storage frames are addressable by the memory manager's platform (`read`/`write`), since the
//!   emulated device accesses its memory through them;
//! - [`Backing::copy`] either copies every pair or reports an error: the caller then backs the
//!   migration out, so the source is never lost.

use crate::addr::Pfn;
use crate::mm::notify::Owner;
use crate::mm::{Error, Mm};
use crate::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use alloc::sync::{Arc, Weak};

/// A device's memory and copy engine, as a dmirror device uses them.
pub trait Backing: Send + Sync {
    /// `memremap_pages` for `frames` (a multiple of 512) more device memory of `kind`.
    fn add_chunk(
        &self,
        pagemaps: &Arc<Pagemaps>,
        kind: MemoryKind,
        owner: Owner,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error>;
    /// `memunmap_pages` of a chunk from [`add_chunk`](Self::add_chunk) whose pages are all free;
    /// its memory goes back to where it came from. `Busy` (chunk kept) if a page is in use.
    fn remove_chunk(&self, pagemaps: &Arc<Pagemaps>, chunk: &Arc<DevPagemap>) -> Result<(), Error>;
    /// Storage for `2^order` private device pages (`order` 0 or 9): contiguous
    /// frames, given back one at a time with [`free_storage`](Self::free_storage).
    fn alloc_storage(&self, order: u32) -> Result<Pfn, Error>;
    /// Gives back one frame of storage.
    fn free_storage(&self, frame: Pfn);
    /// Copies one frame per pair, `(destination, source)`; a source of `None` zero-fills. The
    /// frames are RAM, storage, or coherent device pages. On error some destinations may hold
    /// anything; the sources are untouched.
    fn copy(&self, pairs: &[(Pfn, Option<Pfn>)]) -> Result<(), Error>;
    /// What this backing is, for logs.
    fn describe(&self) -> &str;
}

/// `test_hmm`'s emulation: private storage is RAM pages, coherent memory is carved out of RAM,
/// and the CPU copies.
#[derive(Debug)]
pub struct RamBacking {
    mm: Arc<Mm>,
}

impl RamBacking {
    /// The emulation over `mm`'s RAM.
    pub fn new(mm: &Arc<Mm>) -> Arc<RamBacking> {
        Arc::new(RamBacking { mm: mm.clone() })
    }
}

impl Backing for RamBacking {
    fn add_chunk(
        &self,
        pagemaps: &Arc<Pagemaps>,
        kind: MemoryKind,
        owner: Owner,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        pagemaps.memremap_pages(kind, owner, frames, ops)
    }

    fn remove_chunk(&self, pagemaps: &Arc<Pagemaps>, chunk: &Arc<DevPagemap>) -> Result<(), Error> {
        pagemaps.memunmap_pages(chunk)
    }

    fn alloc_storage(&self, order: u32) -> Result<Pfn, Error> {
        let b = self.mm.alloc_page(0, order, false)?;
        self.mm.split_folio(b, 0);
        Ok(b)
    }

    fn free_storage(&self, frame: Pfn) {
        self.mm.put_page(frame);
    }

    fn copy(&self, pairs: &[(Pfn, Option<Pfn>)]) -> Result<(), Error> {
        for &(d, s) in pairs {
            match s {
                Some(s) => self.mm.platform().copy(d, s, 1),
                None => self.mm.platform().zero(d, 1),
            }
        }
        Ok(())
    }

    fn describe(&self) -> &str {
        "RAM (emulated, as test_hmm)"
    }
}
