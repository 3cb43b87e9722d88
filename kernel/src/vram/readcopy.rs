//! Read duplication (UVM's read-mostly copies): copies of pages in a device's memory that
//! the driver keeps for itself, outside any pagemap, while the pages stay where they are.

use super::Vram;
use crate::copyengine::Dir;
use crate::devices::{DevError, DevOffset, DevPage, ReadCopyFailure};
use alloc::vec::Vec;
use hmm::addr::Pfn;

impl Vram {
    /// Read duplication (UVM's read-mostly copies): copies each of `frames` (RAM, or another
    /// device's BAR frames) by DMA into a page of this device's memory that the driver keeps
    /// for itself, outside any pagemap: the page stays where it is for the CPU, and this
    /// device reads its copy. Returns the copies' page indices (give each back with
    /// [`drop_read_copy`](Self::drop_read_copy) before the source is written). All or nothing:
    /// if device memory runs out or a copy fails, nothing is kept.
    pub fn read_copies(&self, frames: &[Pfn]) -> Result<Vec<u64>, DevError> {
        let mut pages = Vec::with_capacity(frames.len());
        for _ in frames {
            let k = {
                let mut a = self.alloc.lock();
                if self.room_for(&a, 1) { a.alloc_page() } else { None }
            };
            match k {
                Some(k) => pages.push(k),
                None => {
                    self.drop_read_copies(&pages);
                    return Err(DevError::ReadCopy {
                        device: self.device,
                        failure: ReadCopyFailure::NoRoom { made: pages.len(), wanted: frames.len() },
                    });
                }
            }
        }
        let items: Vec<(usize, DevOffset, Pfn)> =
            pages.iter().zip(frames).enumerate().map(|(i, (&k, &f))| (i, DevPage::new(k).offset(), f)).collect();
        let failed = self.transfer(Dir::ToDevice, &self.runs_at(&items));
        if !failed.is_empty() {
            self.drop_read_copies(&pages);
            return Err(DevError::ReadCopy {
                device: self.device,
                failure: ReadCopyFailure::Dma { failed: failed.len() },
            });
        }
        Ok(pages)
    }

    /// Frees read copies made by [`read_copies`](Self::read_copies).
    pub fn drop_read_copies(&self, pages: &[u64]) {
        let mut a = self.alloc.lock();
        for &k in pages {
            if let Err(e) = a.free(k, 0) {
                log::warn!("dev{}: freeing read copy {k}: {e}", self.device);
            }
        }
    }

    /// Frees one read copy.
    pub fn drop_read_copy(&self, page: u64) {
        self.drop_read_copies(&[page]);
    }
}
