//! In-memory files (tmpfs): the page cache behind file mappings and `MAP_SHARED | MAP_ANONYMOUS`.
//!
//! Owns: the file's size and its page cache, one frame per written or faulted page index. The
//! cache holds one reference on each page; every mapping holds its own. Reads past the end
//! return short; writes extend the file; a hole reads as zeros.
//!
//! Invariant: a cached page's metadata says `FILE`, with `owner` = this file's id and `index`
//! = its page offset.

use super::frame::flags;
use super::{Error, Mm};
use crate::addr::Pfn;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use spin::Mutex;

#[derive(Debug)]
struct Inner {
    size: u64,
    pages: BTreeMap<u64, Pfn>,
}

/// An in-memory file.
#[derive(Debug)]
pub struct MemFile {
    id: u64,
    mm: Arc<Mm>,
    inner: Mutex<Inner>,
}

impl MemFile {
    /// A file of `size` bytes of zeros.
    pub fn new(mm: &Arc<Mm>, size: u64) -> Arc<MemFile> {
        Arc::new(MemFile {
            id: mm.new_file_id(),
            mm: mm.clone(),
            inner: Mutex::new(Inner { size, pages: BTreeMap::new() }),
        })
    }

    /// The file's identity (the `owner` of its pages).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The size in bytes.
    pub fn len(&self) -> u64 {
        self.inner.lock().size
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pages in the cache.
    pub fn cached_pages(&self) -> usize {
        self.inner.lock().pages.len()
    }

    /// Resizes the file. Shrinking drops the cached pages past the new end; it is refused
    /// while any of them is still mapped (unmap first).
    pub fn set_len(&self, size: u64) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        let first_gone = size.div_ceil(4096);
        let gone: alloc::vec::Vec<(u64, Pfn)> = inner.pages.range(first_gone..).map(|(i, p)| (*i, *p)).collect();
        if gone.iter().any(|(_, p)| self.mm.meta(*p).is_some_and(|m| m.mapcount() > 0)) {
            return Err(Error::Busy("truncating pages that are still mapped"));
        }
        for (i, p) in gone {
            inner.pages.remove(&i);
            self.mm.put_page(p);
        }
        if !size.is_multiple_of(4096)
            && let Some(p) = inner.pages.get(&(size / 4096))
        {
            let tail = 4096 - (size % 4096) as usize;
            self.mm.platform().write(p.addr() + size % 4096, &alloc::vec![0u8; tail]);
        }
        inner.size = size;
        Ok(())
    }

    /// The cached page at `index`, created (zeroed) if missing and `index` is inside the file.
    /// The cache keeps its own reference; the caller takes another if it keeps the page.
    pub fn page(&self, index: u64) -> Result<Option<Pfn>, Error> {
        let mut inner = self.inner.lock();
        if index >= inner.size.div_ceil(4096) {
            return Ok(None);
        }
        if let Some(p) = inner.pages.get(&index) {
            return Ok(Some(*p));
        }
        let p = self.mm.alloc_page(flags::FILE, 0, true)?;
        if let Some(m) = self.mm.meta(p) {
            m.set_owner(self.id, index);
        }
        inner.pages.insert(index, p);
        Ok(Some(p))
    }

    /// Reads at `offset`; returns the bytes read (short at the end of the file).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let size = self.len();
        if offset >= size {
            return 0;
        }
        let n = buf.len().min((size - offset) as usize);
        let mut done = 0;
        while done < n {
            let at = offset + done as u64;
            let chunk = (4096 - (at % 4096) as usize).min(n - done);
            let page = self.inner.lock().pages.get(&(at / 4096)).copied();
            match page {
                Some(p) => self.mm.platform().read(p.addr() + at % 4096, &mut buf[done..done + chunk]),
                None => buf[done..done + chunk].fill(0),
            }
            done += chunk;
        }
        n
    }

    /// Writes at `offset`, extending the file as needed; returns the bytes written.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<usize, Error> {
        let end = offset.checked_add(data.len() as u64).ok_or(Error::Invalid("offset + length overflows"))?;
        {
            let mut inner = self.inner.lock();
            inner.size = inner.size.max(end);
        }
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let chunk = (4096 - (at % 4096) as usize).min(data.len() - done);
            let p = self.page(at / 4096)?.ok_or(Error::Invalid("write past the end of the file"))?;
            self.mm.platform().write(p.addr() + at % 4096, &data[done..done + chunk]);
            if let Some(m) = self.mm.meta(p) {
                m.set(flags::DIRTY);
            }
            done += chunk;
        }
        Ok(done)
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let pages = core::mem::take(&mut self.inner.get_mut().pages);
        for (_, p) in pages {
            self.mm.put_page(p);
        }
    }
}
