//! The copies of a device's migrations: pages grouped into runs of consecutive device pages
//! (one copy request each, never across from the BAR into the hot-plug region), run on the
//! device's copy engine, [`IN_FLIGHT`](super::IN_FLIGHT) requests at once, or copied by the
//! CPU for the baseline. A failed request's entries are returned so that the migration
//! declines them.

use super::{Copier, IN_FLIGHT, PAGE, RUN, RUN_PAGES, Vram};
use crate::copyengine::Dir;
use crate::devices::DevOffset;
use crate::mm::Iova;
use alloc::vec::Vec;
use hmm::addr::Pfn;

/// A DMA run: consecutive device pages starting at `offset`, with their RAM pages.
pub(super) struct Run {
    offset: DevOffset,
    entries: Vec<usize>,
    /// The RAM pages as device addresses (one segment each), and as physical addresses.
    ram: Vec<(Iova, u32)>,
    pas: Vec<u64>,
}

impl Vram {
    /// Runs the DMA for `runs` (several requests in flight); returns the entries whose copy
    /// failed.
    pub(super) fn transfer(&self, dir: Dir, runs: &[Run]) -> Vec<usize> {
        if self.copier() == Copier::Cpu {
            return self.cpu_transfer(dir, runs);
        }
        let mut failed = Vec::new();
        for (w, window) in runs.chunks(IN_FLIGHT).enumerate() {
            if w > 0 {
                crate::inject::reach(crate::inject::Point::BetweenCopies, Some(self.device));
            }
            let results = self.dev.dma_many(dir, window.iter().map(|r| (r.offset, &r.ram[..])));
            for (r, res) in window.iter().zip(results) {
                if let Err(e) = res {
                    log::warn!("dev{}: DMA of {} pages at {:#x} failed: {e}", self.device, r.entries.len(), r.offset);
                    failed.extend(&r.entries);
                }
            }
        }
        failed
    }

    /// The CPU-copy baseline: the same runs copied by the CPU through the BAR.
    fn cpu_transfer(&self, dir: Dir, runs: &[Run]) -> Vec<usize> {
        let mut failed = Vec::new();
        for r in runs {
            for (k, &pa) in r.pas.iter().enumerate() {
                let off = r.offset.add(k as u64 * PAGE);
                let pa = crate::mm::PhysAddr::new(pa);
                let copied = self.dev.window(off, PAGE).and_then(|(w, at)| {
                    Ok(match dir {
                        Dir::ToDevice => w.copy_from_ram(at, pa, PAGE),
                        Dir::ToRam => w.copy_to_ram(at, pa, PAGE),
                    }?)
                });
                if let Err(e) = copied {
                    log::warn!("dev{}: CPU copy of page {k} at {off:#x} failed: {e}", self.device);
                    failed.extend(&r.entries);
                    break;
                }
            }
        }
        failed
    }

    /// Groups `(entry, device page, ram pfn)` into runs of consecutive device pages.
    pub(super) fn runs(&self, items: &[(usize, Pfn, Pfn)]) -> Vec<Run> {
        let at: Vec<(usize, DevOffset, Pfn)> =
            items.iter().filter_map(|&(i, dp, ram)| Some((i, self.offset_of(dp)?, ram))).collect();
        self.runs_at(&at)
    }

    /// Groups `(entry, byte offset in device memory, ram pfn)` into runs of consecutive device
    /// pages. The "RAM" frame may be another device's BAR frame (peer to peer).
    pub(super) fn runs_at(&self, items: &[(usize, DevOffset, Pfn)]) -> Vec<Run> {
        let kernel = self.dev.iova_of(0);
        // Requests never cross from the BAR into the hot-plug region (another engine's disk).
        let region = |off: DevOffset| off.get() >= self.bar_pages * PAGE;
        let mut runs: Vec<Run> = Vec::new();
        for &(i, off, ram) in items {
            let seg = (kernel.offset(ram.addr()), PAGE as u32);
            let joins = runs.last().is_some_and(|r| {
                let next_to = r.ram.last().is_some_and(|l| l.0.offset(u64::from(l.1)) == seg.0);
                r.offset.add(r.pas.len() as u64 * PAGE) == off
                    && region(r.offset) == region(off)
                    && r.pas.len() < RUN_PAGES
                    && (next_to || r.ram.len() < RUN)
            });
            match runs.last_mut() {
                Some(r) if joins => {
                    if r.entries.last() != Some(&i) {
                        r.entries.push(i);
                    }
                    match r.ram.last_mut() {
                        // Physically contiguous RAM (a THP) is one segment.
                        Some(l) if l.0.offset(u64::from(l.1)) == seg.0 => l.1 += PAGE as u32,
                        _ => r.ram.push(seg),
                    }
                    r.pas.push(ram.addr());
                }
                _ => runs.push(Run {
                    offset: off,
                    entries: alloc::vec![i],
                    ram: alloc::vec![seg],
                    pas: alloc::vec![ram.addr()],
                }),
            }
        }
        runs
    }
}
