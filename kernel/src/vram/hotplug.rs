//! Hot-plug of a device's memory ([`Vram::grow`], [`Vram::shrink`]): growing plugs virtio-mem
//! blocks and registers each as a pagemap; shrinking isolates blocks in the allocator, evicts
//! what lives there with `migrate_device_range` (DMA to fresh RAM pages), takes them offline,
//! `memunmap_pages`, and unplugs. A page that cannot be evicted (pinned, locked by a migration
//! in flight, no RAM, a failed copy) leaves its block online, and the error says why. An
//! UNPLUG the device refuses, after the driver's retries, brings the block back online if the
//! device still has it plugged; a block whose state the device cannot tell stays offline and
//! is asked about again before a later grow plugs it.

use super::migrate::unuse;
use super::{HUGE, PAGE, Vram, pagemaps};
use crate::copyengine::Dir;
use crate::devices::{DevError, ResizeFailure};
use crate::mm::uspace;
use crate::virtiomem::Block;
use alloc::sync::Arc;
use alloc::vec::Vec;
use drivers::virtio_mem::MemError;
use hmm::devalloc::{BLOCK_PAGES, State};
use hmm::mm::frame::flags;
use hmm::mm::migrate::MigratePfn;

impl Vram {
    /// Pages of the hot-plug region (plugged or not; 0 without one).
    pub fn hot_pages(&self) -> u64 {
        self.alloc.lock().capacity() * BLOCK_PAGES - self.bar_pages
    }

    /// Pages of the hot-plug region plugged now.
    pub fn plugged_pages(&self) -> u64 {
        self.pages() - self.bar_pages
    }

    /// Adds `bytes` (whole 2 MiB blocks) of the hot-plug region to this device's memory: the
    /// lowest unplugged blocks are plugged (virtio-mem PLUG) and each becomes a pagemap of
    /// device pages. Returns the blocks' device-memory offsets. Refused, with nothing changed,
    /// when the region has no room, or the host has not requested that much.
    pub fn grow(self: &Arc<Self>, bytes: u64) -> Result<Vec<u64>, DevError> {
        let _serial = self.resize.lock();
        let blocks = whole_blocks(self.device, bytes)?;
        let first = self.bar_pages / BLOCK_PAGES;
        let offline: Vec<u64> = {
            let a = self.alloc.lock();
            (first..a.capacity()).filter(|&b| a.state(b) == Some(State::Offline)).collect()
        };
        if (offline.len() as u64) < blocks {
            return Err(self.resize_error(ResizeFailure::NoRoom { asked: bytes, left: offline.len() as u64 * HUGE }));
        }
        let mut added = Vec::new();
        for &b in &offline {
            if added.len() as u64 == blocks {
                break;
            }
            let off = (b - first) * HUGE;
            // A block an earlier UNPLUG left in an unknown state is asked about first: still
            // plugged, it comes back without a PLUG (a second PLUG would be refused); if the
            // device cannot say, it is passed over.
            let known = self.with_hot(|m| match m.block(off) {
                Some(Block::Unknown) => m.settle(off, HUGE).map(Some).or(Ok(None)),
                other => Ok(other),
            })?;
            let plugged = match known {
                Some(Block::Unplugged) => self.with_hot(|m| m.plug(off, HUGE)),
                Some(Block::Plugged) => Ok(()),
                Some(Block::Unknown) | None => {
                    log::warn!("dev{}: hot-plug block {b} is in an unknown state; passed over", self.device);
                    continue;
                }
            };
            let r = plugged.and_then(|()| {
                self.add_chunk(b * BLOCK_PAGES, BLOCK_PAGES).map_err(|e| {
                    let _ = self.with_hot(|m| m.unplug(off, HUGE));
                    self.resize_error(ResizeFailure::Register(e))
                })
            });
            if let Err(e) = r {
                // Give back what this call added: all or nothing.
                let _ = self.shrink_blocks(&added);
                return Err(e);
            }
            added.push(b);
        }
        if (added.len() as u64) < blocks {
            let _ = self.shrink_blocks(&added);
            return Err(self.resize_error(ResizeFailure::NoRoom { asked: bytes, left: added.len() as u64 * HUGE }));
        }
        Ok(added.iter().map(|b| b * BLOCK_PAGES * PAGE).collect())
    }

    /// Removes `bytes` (whole 2 MiB blocks) of plugged hot-plug memory, the highest blocks
    /// first: allocation stops there, every page still in use is evicted to RAM
    /// (`migrate_device_range`, DMA by the region's engine) with nothing lost, the pagemaps go
    /// (`memunmap_pages`) and the blocks are unplugged. Returns the pages evicted. If a page
    /// cannot be evicted (pinned, no RAM, a failed copy), the blocks stay online and the error
    /// says why.
    pub fn shrink(self: &Arc<Self>, bytes: u64) -> Result<u64, DevError> {
        let _serial = self.resize.lock();
        let (blocks, online) = self.online_for(bytes)?;
        self.shrink_blocks(&online[..blocks as usize])
    }

    /// The whole blocks in `bytes`, and every online block of the hot-plug region, highest
    /// first; refused unless that many are online.
    fn online_for(&self, bytes: u64) -> Result<(u64, Vec<u64>), DevError> {
        let blocks = whole_blocks(self.device, bytes)?;
        let first = self.bar_pages / BLOCK_PAGES;
        let online: Vec<u64> = {
            let a = self.alloc.lock();
            (first..a.capacity()).rev().filter(|&b| a.state(b).is_some_and(|s| s != State::Offline)).collect()
        };
        if (online.len() as u64) < blocks {
            return Err(
                self.resize_error(ResizeFailure::NotPlugged { asked: bytes, plugged: online.len() as u64 * HUGE })
            );
        }
        Ok((blocks, online))
    }

    /// Removes `bytes` of plugged hot-plug memory like [`Vram::shrink`], but block by block
    /// from the highest, passing over a block that cannot go now (a page pinned or held by a
    /// migration in flight, a refused UNPLUG) for the next one: what the host asks back is
    /// taken where it can be. Returns the pages evicted; if fewer blocks went than asked, the
    /// last refusal (the ones that went stay gone).
    pub fn shrink_where_possible(self: &Arc<Self>, bytes: u64) -> Result<u64, DevError> {
        let _serial = self.resize.lock();
        let (mut blocks, online) = self.online_for(bytes)?;
        let (mut evicted, mut refused) = (0, None);
        for b in online {
            if blocks == 0 {
                break;
            }
            match self.shrink_blocks(&[b]) {
                Ok(n) => {
                    evicted += n;
                    blocks -= 1;
                }
                Err(e) => refused = Some(e),
            }
        }
        match refused {
            Some(e) if blocks > 0 => Err(e),
            _ => Ok(evicted),
        }
    }

    fn shrink_blocks(self: &Arc<Self>, blocks: &[u64]) -> Result<u64, DevError> {
        let first = self.bar_pages / BLOCK_PAGES;
        let mut evicted = 0;
        for &b in blocks {
            let busy = self.alloc.lock().isolate(b, 1);
            busy.map_err(|error| self.resize_error(ResizeFailure::Isolate { block: b, error }))?;
            let r = self.evict(b).and_then(|n| {
                evicted += n;
                self.alloc
                    .lock()
                    .offline(b, 1)
                    .map_err(|error| self.resize_error(ResizeFailure::StillBusy { block: b, error }))
            });
            if let Err(e) = r {
                let _ = self.alloc.lock().unisolate(b, 1);
                return Err(e);
            }
            let chunk = {
                let mut chunks = self.chunks.write();
                let i = chunks.iter().position(|c| c.index == b * BLOCK_PAGES);
                i.map(|i| chunks.remove(i))
            };
            if let Some(c) = chunk
                && let Err(e) = pagemaps().and_then(|p| p.memunmap_pages(&c.pagemap))
            {
                // Cannot happen after a clean offline; keep the memory rather than lose track.
                log::warn!("dev{}: memunmap of block {b}: {e}", self.device);
                self.chunks.write().push(c);
                let _ = self.alloc.lock().add(b, 1);
                return Err(self.resize_error(ResizeFailure::Unmap { block: b, error: e }));
            }
            if let Err(e) = self.with_hot(|m| m.unplug((b - first) * HUGE, HUGE)) {
                return Err(self.unplug_failed(b, e));
            }
        }
        Ok(evicted)
    }

    /// After block `b`'s UNPLUG failed (`e`, retried by the driver): a block the device still
    /// has plugged is brought back into use (a pagemap and free pages again), so nothing is
    /// left half-removed; one whose state the device could not tell stays offline, marked
    /// unknown, and a later grow asks again. The error says which.
    fn unplug_failed(self: &Arc<Self>, b: u64, e: DevError) -> DevError {
        let first = self.bar_pages / BLOCK_PAGES;
        let error = match e {
            DevError::Resize { failure: ResizeFailure::Request(m), .. } => m,
            other => return other,
        };
        let still = self.with_hot(|m| Ok(m.block((b - first) * HUGE))).ok().flatten();
        let online = still == Some(Block::Plugged) && {
            match self.add_chunk(b * BLOCK_PAGES, BLOCK_PAGES) {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("dev{}: block {b} is still plugged but could not be registered again: {e}", self.device);
                    false
                }
            }
        };
        self.resize_error(ResizeFailure::Unplug { block: b, error, online })
    }

    /// Evicts every page in use in block `b` to RAM; returns how many moved.
    fn evict(&self, b: u64) -> Result<u64, DevError> {
        let Some(start) = self.pfn(b * BLOCK_PAGES) else { return Ok(0) };
        let mm = uspace::mm();
        let mut mig = hmm::mm::migrate::migrate_device_range(mm, start, BLOCK_PAGES);
        let mut items = Vec::new();
        let mut no_ram = false;
        for i in 0..BLOCK_PAGES as usize {
            let s = mig.src()[i];
            let Some(from) = s.pfn().filter(|_| s.is_migrate()) else { continue };
            let Ok(r) = mm.alloc_page(flags::ANON, 0, false) else {
                no_ram = true;
                break;
            };
            if let Some(m) = mm.meta(r) {
                m.trylock();
            }
            mig.dst_mut()[i] = MigratePfn::new(r).with_write(s.is_write());
            items.push((i, from, r));
        }
        let mut failed = self.transfer(Dir::ToRam, &self.runs(&items));
        failed.sort_unstable();
        for &i in &failed {
            if let Some((_, _, r)) = items.iter().find(|x| x.0 == i) {
                unuse(*r);
            }
            mig.dst_mut()[i] = MigratePfn(0);
        }
        mig.pages();
        mig.finalize();
        let moved = (items.len() - failed.len()) as u64;
        self.stats.lock().to_ram += moved;
        if no_ram || !failed.is_empty() {
            return Err(self.resize_error(ResizeFailure::Evict { block: b, no_ram }));
        }
        Ok(moved)
    }

    pub(super) fn with_hot<R>(
        &self,
        f: impl FnOnce(&mut crate::virtiomem::VirtioMem) -> Result<R, MemError>,
    ) -> Result<R, DevError> {
        match self.dev.with_hot_mem(f) {
            Some(r) => r.map_err(|e| self.resize_error(ResizeFailure::Request(e))),
            None => Err(self.resize_error(ResizeFailure::NoRegion)),
        }
    }

    fn resize_error(&self, failure: ResizeFailure) -> DevError {
        DevError::Resize { device: self.device, failure }
    }
}

/// Whole 2 MiB blocks in `bytes`.
fn whole_blocks(device: usize, bytes: u64) -> Result<u64, DevError> {
    if bytes == 0 || !bytes.is_multiple_of(HUGE) {
        return Err(DevError::Resize { device, failure: ResizeFailure::NotBlocks(bytes) });
    }
    Ok(bytes / HUGE)
}
