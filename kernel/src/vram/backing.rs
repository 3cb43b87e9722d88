//! A dmirror device's memory on a real device: [`BarBacking`] implements
//! [`hmm::dmirror::Backing`] over memory carved out of one device's BAR, copied by the devices'
//! DMA engines. With it the acceptance suite runs on real device memory.
//!
//! - Private dmirror memory: the pagemap gets unused frame numbers as usual; each device page's
//!   storage is a frame of the BAR, taken from 2 MiB blocks carved out of the device's
//!   allocator on demand and given back when a chunk goes and its blocks are free.
//! - Coherent dmirror memory: the chunk *is* BAR frames (`memremap_pages_at`), which the CPU
//!   maps with ordinary entries: device memory the CPU addresses, as `MEMORY_DEVICE_COHERENT`
//!   describes.
//! - Copies: RAM -> BAR by the owning device's engine (a blk write), BAR -> RAM by a blk read,
//!   BAR -> another device's BAR by the source engine straight into the peer BAR; a zero-fill
//!   of device memory copies the zero page. Only a copy within one BAR, or RAM to RAM, is done
//!   by the CPU (counted apart). A failed DMA is an [`Error::Io`]: dmirror backs the migration
//!   out.

use super::Vram;
use super::dma::Run;
use crate::copyengine::Dir;
use crate::devices::{self, DevOffset, DevPage};
use crate::mm::uspace;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use hmm::addr::Pfn;
use hmm::dmirror::Backing;
use hmm::mm::Error;
use hmm::mm::notify::Owner;
use hmm::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use spin::Mutex;

const BLOCK: u64 = 512;

#[derive(Debug, Default)]
struct Pool {
    /// Carved 2 MiB blocks (first page index) used for private storage.
    blocks: Vec<u64>,
    /// Free storage: whole blocks, and single pages of split blocks.
    free_huge: Vec<u64>,
    free: Vec<u64>,
    /// Coherent chunks: (first BAR frame, page index, pages).
    coherent: Vec<(Pfn, u64, u64)>,
}

/// A dmirror device's memory and copy engine on real device `vram`.
#[derive(Debug)]
pub struct BarBacking {
    vram: Arc<Vram>,
    name: alloc::string::String,
    pool: Mutex<Pool>,
    /// Pages copied by DMA, and by the CPU.
    pub dma_pages: AtomicU64,
    /// Pages copied by the CPU (within one BAR, or RAM to RAM).
    pub cpu_pages: AtomicU64,
}

/// Where a frame lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Ram,
    /// Device n's memory, at this byte offset.
    Bar(usize, u64),
}

fn locate(bars: &[(u64, u64)], p: Pfn) -> Loc {
    let pa = p.addr();
    bars.iter().position(|&(b, n)| (b..b + n).contains(&pa)).map_or(Loc::Ram, |n| Loc::Bar(n, pa - bars[n].0))
}

impl BarBacking {
    /// A backing over memory of `vram`'s device.
    pub fn new(vram: &Arc<Vram>) -> Arc<BarBacking> {
        Arc::new(BarBacking {
            vram: vram.clone(),
            name: alloc::format!("dev{} memory, DMA copies", vram.device()),
            pool: Mutex::new(Pool::default()),
            dma_pages: AtomicU64::new(0),
            cpu_pages: AtomicU64::new(0),
        })
    }

    fn frame(&self, index: u64) -> Result<Pfn, Error> {
        self.vram.bar_frame(DevPage::new(index)).ok_or(Error::Invalid("device memory index outside the BAR"))
    }

    fn carve_block(&self, pool: &mut Pool) -> Result<u64, Error> {
        let b = self.vram.carve(BLOCK).ok_or(Error::NoMemory)?.get();
        pool.blocks.push(b);
        Ok(b)
    }

    /// Makes every block whose pages are all free a whole free block again (storage of a
    /// device THP comes back page by page).
    fn coalesce(pool: &mut Pool) {
        let whole = hmm::dmirror::take_whole_blocks(&mut pool.free, |&k| k, BLOCK);
        pool.free_huge.extend(whole);
    }

    /// Gives carved storage blocks with no page in use back to the device's allocator.
    fn trim(&self, pool: &mut Pool) {
        Self::coalesce(pool);
        for b in core::mem::take(&mut pool.free_huge) {
            pool.blocks.retain(|&x| x != b);
            self.vram.uncarve(DevPage::new(b), BLOCK);
        }
    }

    /// A free 2 MiB block of storage: a whole free one, one made whole again, or a new one.
    fn block(&self, pool: &mut Pool) -> Result<u64, Error> {
        if pool.free_huge.is_empty() {
            Self::coalesce(pool);
        }
        match pool.free_huge.pop() {
            Some(b) => Ok(b),
            None => self.carve_block(pool),
        }
    }
}

impl Backing for BarBacking {
    fn add_chunk(
        &self,
        pagemaps: &Arc<Pagemaps>,
        kind: MemoryKind,
        owner: Owner,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        match kind {
            // Storage is carved page by page as the device allocates; the pagemap itself has
            // no memory behind its frame numbers.
            MemoryKind::Private => pagemaps.memremap_pages(kind, owner, frames, ops),
            MemoryKind::Coherent => {
                let Some(first) = self.vram.carve(frames) else {
                    log::warn!(
                        "dev{}: no {} free contiguous pages for coherent dmirror memory ({} of {} in use, {} storage blocks)",
                        self.vram.device(),
                        frames,
                        self.vram.in_use(),
                        self.vram.pages(),
                        self.pool.lock().blocks.len()
                    );
                    return Err(Error::NoMemory);
                };
                let base = self.frame(first.get())?;
                // The whole BAR gets metadata once, so chunks can come and go anywhere in it.
                let whole = self.frame(0).and_then(|b| pagemaps.mm().add_device_region_at(b, self.vram.pages()));
                match whole.and_then(|()| pagemaps.memremap_pages_at(owner, base, frames, ops)) {
                    Ok(pm) => {
                        self.pool.lock().coherent.push((base, first.get(), frames));
                        Ok(pm)
                    }
                    Err(e) => {
                        log::warn!("dev{}: registering coherent dmirror memory: {e}", self.vram.device());
                        self.vram.uncarve(first, frames);
                        Err(e)
                    }
                }
            }
        }
    }

    fn remove_chunk(&self, pagemaps: &Arc<Pagemaps>, chunk: &Arc<DevPagemap>) -> Result<(), Error> {
        pagemaps.memunmap_pages(chunk)?;
        let mut pool = self.pool.lock();
        let base = chunk.ranges()[0].0;
        if let Some(i) = pool.coherent.iter().position(|c| c.0 == base) {
            let (_, first, n) = pool.coherent.remove(i);
            self.vram.uncarve(DevPage::new(first), n);
        }
        self.trim(&mut pool);
        Ok(())
    }

    fn alloc_storage(&self, order: u32) -> Result<Pfn, Error> {
        let mut pool = self.pool.lock();
        let index = match order {
            0 => match pool.free.pop() {
                Some(k) => k,
                None => {
                    let b = self.block(&mut pool)?;
                    pool.free.extend((b + 1..b + BLOCK).rev());
                    b
                }
            },
            9 => self.block(&mut pool)?,
            _ => return Err(Error::Invalid("device storage comes in 4 KiB and 2 MiB")),
        };
        self.frame(index)
    }

    fn free_storage(&self, frame: Pfn) {
        let Some(bar) = self.vram.bar_frame(DevPage::new(0)) else { return };
        self.pool.lock().free.push(frame.0 - bar.0);
    }

    fn copy(&self, pairs: &[(Pfn, Option<Pfn>)]) -> Result<(), Error> {
        let bars: Vec<(u64, u64)> = devices::all().iter().map(|x| (x.vram.at.as_u64(), x.vram.bytes)).collect();
        let vrams = super::all()?;
        let zero = uspace::mm().zero_pfn();
        // Per (engine, direction): (entry, offset in that device's memory, RAM or peer frame).
        type Items = Vec<(usize, DevOffset, Pfn)>;
        let mut jobs: Vec<((usize, Dir), Items)> = Vec::new();
        let mut add = |key: (usize, Dir), item| match jobs.iter_mut().find(|j| j.0 == key) {
            Some(j) => j.1.push(item),
            None => jobs.push((key, alloc::vec![item])),
        };
        let mut cpu = 0;
        for (i, &(dst, src)) in pairs.iter().enumerate() {
            match (locate(&bars, dst), src.map(|s| (s, locate(&bars, s)))) {
                (Loc::Bar(n, off), None) => add((n, Dir::ToDevice), (i, DevOffset::new(off), zero)),
                (Loc::Bar(n, off), Some((s, Loc::Ram))) => add((n, Dir::ToDevice), (i, DevOffset::new(off), s)),
                (Loc::Ram, Some((_, Loc::Bar(n, off)))) => add((n, Dir::ToRam), (i, DevOffset::new(off), dst)),
                (Loc::Bar(m, _), Some((_, Loc::Bar(n, off)))) if m != n => {
                    add((n, Dir::ToRam), (i, DevOffset::new(off), dst))
                }
                (_, None) => {
                    crate::mm::ram::zero(dst, 1);
                    cpu += 1;
                }
                (_, Some((s, _))) => {
                    crate::mm::ram::copy(dst, s, 1);
                    cpu += 1;
                }
            }
        }
        self.cpu_pages.fetch_add(cpu, Ordering::Relaxed);
        for ((n, dir), items) in jobs {
            let v = vrams.get(n).ok_or(Error::Invalid("a frame in the BAR of a device with no memory registered"))?;
            let runs: Vec<Run> = v.runs_at(&items);
            let failed = v.transfer(dir, &runs);
            if !failed.is_empty() {
                return Err(Error::Io("a DMA request of the device's copy engine failed"));
            }
            self.dma_pages.fetch_add(items.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn describe(&self) -> &str {
        &self.name
    }
}
