//! The mapping operations of an [`AddressSpace`] that do not move pages between addresses: `mmap`
//! (with `MAP_POPULATE`), `munmap`, `mprotect` and `madvise`.
//!
//! Owns the request types ([`MapRequest`], [`Placement`], [`Advice`]) and the placement of new
//! mappings. Each operation changes its leaves under one invalidation of its range (events
//! `Unmap`, `ProtectionVma`, `Clear`), after splitting the huge leaves that straddle its ends
//! (`huge.rs`); VMAs are split at the range's ends and, after `mmap`, `mprotect` and the
//! huge-page advice, merged with like neighbours.

use super::fault::Access;
use super::{AddressSpace, Entry, PAGE, leaf_size, page_range};
use super::{MMAP_FLOOR, MMAP_TOP};
use crate::addr::align_up;
use crate::mm::Error;
use crate::mm::file::MemFile;
use crate::mm::frame::flags;
use crate::mm::notify::Event;
use crate::mm::pagetable::{PMD_SIZE, Tables, USER_END};
use crate::mm::pte::{Present, Pte, Soft, SoftKind};
use crate::mm::vma::{Backing, Prot, Vma, VmaFlags};
use alloc::sync::Arc;
use alloc::vec::Vec;

/// How `mmap` treats the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hint: used if free, otherwise the kernel picks (0: always pick).
    Hint,
    /// `MAP_FIXED`: exactly there, replacing what was mapped.
    Fixed,
    /// `MAP_FIXED_NOREPLACE`: exactly there, `EEXIST` if anything is mapped.
    FixedNoReplace,
}

/// An `mmap` request.
#[derive(Debug, Clone)]
pub struct MapRequest {
    /// Address (see [`placement`](Self::placement)).
    pub addr: u64,
    /// Length in bytes (rounded up to pages).
    pub len: u64,
    /// Protection.
    pub prot: Prot,
    /// `MAP_SHARED`.
    pub shared: bool,
    /// The file and byte offset, for a file mapping.
    pub file: Option<(Arc<MemFile>, u64)>,
    /// How the address is used.
    pub placement: Placement,
    /// `MAP_HUGETLB`: explicit 2 MiB pages.
    pub hugetlb: bool,
    /// `MAP_POPULATE`: fault everything in now.
    pub populate: bool,
}

impl MapRequest {
    /// Private anonymous memory.
    pub fn anon(len: u64, prot: Prot) -> Self {
        Self {
            addr: 0,
            len,
            prot,
            shared: false,
            file: None,
            placement: Placement::Hint,
            hugetlb: false,
            populate: false,
        }
    }
    /// A private mapping of `file` from byte `offset`.
    pub fn file(file: &Arc<MemFile>, offset: u64, len: u64, prot: Prot) -> Self {
        Self { file: Some((file.clone(), offset)), ..Self::anon(len, prot) }
    }
    /// `MAP_SHARED`.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }
    /// `MAP_FIXED` at `addr`.
    pub fn fixed(mut self, addr: u64) -> Self {
        self.addr = addr;
        self.placement = Placement::Fixed;
        self
    }
    /// `MAP_FIXED_NOREPLACE` at `addr`.
    pub fn fixed_noreplace(mut self, addr: u64) -> Self {
        self.addr = addr;
        self.placement = Placement::FixedNoReplace;
        self
    }
    /// A placement hint.
    pub fn hint(mut self, addr: u64) -> Self {
        self.addr = addr;
        self.placement = Placement::Hint;
        self
    }
    /// `MAP_HUGETLB`.
    pub fn hugetlb(mut self) -> Self {
        self.hugetlb = true;
        self
    }
    /// `MAP_POPULATE`.
    pub fn populate(mut self) -> Self {
        self.populate = true;
        self
    }
}

/// `madvise` advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_NORMAL`: no special treatment.
    Normal,
    /// `MADV_WILLNEED`: fault the range in now.
    WillNeed,
    /// `MADV_DONTNEED`: drop the pages; private anonymous memory reads zeros afterwards.
    DontNeed,
    /// `MADV_FREE`: the pages may be discarded while clean (private anonymous only).
    Free,
    /// `MADV_HUGEPAGE`: use 2 MiB pages here.
    HugePage,
    /// `MADV_NOHUGEPAGE`: never use 2 MiB pages here.
    NoHugePage,
}

/// The entry `raw` with the rights of protection `prot`.
fn reprotect(raw: u64, prot: Prot) -> u64 {
    match Pte::decode(raw) {
        Pte::Present(p) if prot.is_none() => Pte::Soft(Soft {
            kind: SoftKind::ProtNone,
            pfn: p.pfn,
            write: p.write,
            young: p.young,
            dirty: p.dirty,
            huge: p.huge,
            exec: p.exec,
        })
        .encode(),
        Pte::Present(p) => Pte::Present(Present { write: p.write && prot.write(), exec: prot.exec(), ..p }).encode(),
        Pte::Soft(s) if s.kind == SoftKind::ProtNone => {
            if prot.is_none() {
                raw
            } else {
                Pte::Present(Present {
                    pfn: s.pfn,
                    write: s.write && prot.write(),
                    exec: prot.exec(),
                    dirty: s.dirty,
                    young: s.young,
                    huge: s.huge,
                })
                .encode()
            }
        }
        Pte::Soft(s) => Pte::Soft(Soft { write: s.write && prot.write(), ..s }).encode(),
        Pte::None | Pte::Bad(_) => raw,
    }
}

impl AddressSpace {
    pub(super) fn placement_align(anon_private_or_huge: bool, len: u64) -> u64 {
        if anon_private_or_huge && len >= PMD_SIZE { PMD_SIZE } else { PAGE }
    }

    /// `mmap`: creates a mapping and returns its address.
    pub fn mmap(&mut self, req: MapRequest) -> Result<u64, Error> {
        if req.len == 0 {
            return Err(Error::Invalid("length is zero"));
        }
        let gran = if req.hugetlb { PMD_SIZE } else { PAGE };
        let len = align_up(req.len, gran).ok_or(Error::NoSpace("length overflows"))?;
        if len > USER_END - MMAP_FLOOR {
            return Err(Error::NoSpace("length exceeds the user address space"));
        }
        if req.hugetlb && (req.file.is_some() || req.shared) {
            return Err(Error::Invalid("MAP_HUGETLB supports private anonymous mappings only"));
        }
        let backing = match (&req.file, req.shared) {
            (Some((file, offset)), _) => {
                if offset % PAGE != 0 {
                    return Err(Error::Invalid("file offset is not page-aligned"));
                }
                Backing::File { file: file.clone(), pgoff: offset / PAGE }
            }
            // MAP_SHARED | MAP_ANONYMOUS: an unnamed in-memory file, as Linux's shmem does.
            (None, true) => Backing::File { file: MemFile::new(&self.mm, len), pgoff: 0 },
            (None, false) => Backing::Anon,
        };
        let align = Self::placement_align(req.hugetlb || (req.file.is_none() && !req.shared), len);
        let start = match req.placement {
            Placement::Fixed | Placement::FixedNoReplace => {
                if !req.addr.is_multiple_of(gran) {
                    return Err(Error::Invalid("fixed address is not aligned (4 KiB, or 2 MiB for MAP_HUGETLB)"));
                }
                let end = req.addr.checked_add(len).ok_or(Error::NoSpace("fixed range overflows"))?;
                if req.addr < MMAP_FLOOR || end > USER_END {
                    return Err(Error::NoSpace("fixed range outside the user address space"));
                }
                if !self.vmas.is_free(req.addr, end) {
                    if req.placement == Placement::FixedNoReplace {
                        return Err(Error::Exists);
                    }
                    self.munmap(req.addr, len)?;
                }
                req.addr
            }
            Placement::Hint => {
                let hint = req.addr & !(gran - 1);
                match hint.checked_add(len) {
                    Some(end) if hint >= MMAP_FLOOR && end <= USER_END && self.vmas.is_free(hint, end) => hint,
                    _ => self
                        .vmas
                        .find_gap(len, align, MMAP_FLOOR, MMAP_TOP)
                        .ok_or(Error::NoSpace("no free range big enough"))?,
                }
            }
        };
        let flags = VmaFlags { shared: req.shared, hugetlb: req.hugetlb, ..VmaFlags::default() };
        self.vmas.insert(Vma { start, end: start + len, prot: req.prot, flags, backing });
        self.vmas.merge_around(start, start + len);
        if req.populate {
            self.populate(start, start + len, req.prot);
        }
        Ok(start)
    }

    /// Faults in `[start, end)` (`MAP_POPULATE`, `MADV_WILLNEED`); failures are left for the
    /// access to meet, as Linux does.
    fn populate(&mut self, start: u64, end: u64, prot: Prot) {
        let access = if prot.write() { Access::Write } else { Access::Read };
        let mut va = start;
        while va < end {
            if self.fault(va, access).is_err() {
                return;
            }
            va += match self.lookup(va) {
                Some(Entry { huge: true, .. }) => PMD_SIZE - (va & (PMD_SIZE - 1)),
                _ => PAGE,
            };
        }
    }

    /// `munmap`: removes every mapping in the range (holes are fine).
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<(), Error> {
        let (start, end) = page_range(addr, len)?;
        self.check_hugetlb_bounds(start, end)?;
        self.split_boundaries(start, end)?;
        let r = self.begin(start, end, Event::Unmap, None);
        self.zap(start, end);
        self.vmas.split_at(start);
        self.vmas.split_at(end);
        let removed = self.vmas.remove_range(start, end);
        self.prune(start, end);
        self.finish(r);
        drop(removed);
        Ok(())
    }

    /// `mprotect`: changes the protection of a fully mapped range.
    pub fn mprotect(&mut self, addr: u64, len: u64, prot: Prot) -> Result<(), Error> {
        let (start, end) = page_range(addr, len)?;
        if !self.vmas.covers(start, end) {
            return Err(Error::NoSpace("part of the range is not mapped"));
        }
        self.check_hugetlb_bounds(start, end)?;
        self.split_boundaries(start, end)?;
        let r = self.begin(start, end, Event::ProtectionVma, None);
        let t = Tables::new(self.mm.platform(), self.root);
        let tlb = &mut self.tlb;
        let _ = t.walk::<(), _>(start, end, &mut |l| {
            if reprotect(l.raw, prot) != l.raw {
                // Clear, then write the new value computed from what was there, so a dirty
                // bit the CPU set meanwhile is kept.
                let cur = t.swap(l.slot, 0);
                t.store(l.slot, reprotect(cur, prot));
                tlb.add(l.va, leaf_size(l.huge));
            }
            Ok(())
        });
        self.finish(r);
        self.vmas.split_at(start);
        self.vmas.split_at(end);
        for v in self.vmas.range_mut(start, end) {
            v.prot = prot;
        }
        self.vmas.merge_around(start, end);
        Ok(())
    }

    /// `madvise`.
    pub fn madvise(&mut self, addr: u64, len: u64, advice: Advice) -> Result<(), Error> {
        let (start, end) = page_range(addr, len)?;
        if !self.vmas.covers(start, end) {
            return Err(Error::NoSpace("part of the range is not mapped"));
        }
        match advice {
            Advice::Normal => Ok(()),
            Advice::WillNeed => {
                let prots: Vec<(u64, u64, Prot)> =
                    self.vmas.overlapping(start, end).map(|v| (v.start.max(start), v.end.min(end), v.prot)).collect();
                for (s, e, p) in prots {
                    self.populate(s, e, p);
                }
                Ok(())
            }
            Advice::DontNeed => {
                self.check_hugetlb_bounds(start, end)?;
                self.split_boundaries(start, end)?;
                let r = self.begin(start, end, Event::Clear, None);
                self.zap(start, end);
                self.prune(start, end);
                self.finish(r);
                Ok(())
            }
            Advice::Free => {
                if self.vmas.overlapping(start, end).any(|v| !(v.is_anon() && v.is_cow()) || v.flags.hugetlb) {
                    return Err(Error::Invalid("MADV_FREE applies to private anonymous memory only"));
                }
                self.split_boundaries(start, end)?;
                let r = self.begin(start, end, Event::Clear, None);
                let t = Tables::new(self.mm.platform(), self.root);
                let mm = &*self.mm;
                let tlb = &mut self.tlb;
                let _ = t.walk::<(), _>(start, end, &mut |l| {
                    if let Pte::Present(p) = Pte::decode(l.raw)
                        && !mm.is_zero(p.pfn)
                    {
                        // Clean and lazily freeable: a later write dirties it again and keeps
                        // it. (There is no reclaim yet that would discard clean lazy pages.)
                        let cur = t.swap(l.slot, 0);
                        t.store(l.slot, cur & !crate::mm::pte::D);
                        tlb.add(l.va, leaf_size(l.huge));
                        if let Some(m) = mm.meta(p.pfn) {
                            m.clear(flags::DIRTY);
                            m.set(flags::LAZYFREE);
                        }
                    }
                    Ok(())
                });
                self.finish(r);
                Ok(())
            }
            Advice::HugePage | Advice::NoHugePage => {
                // The VMA splits at an unaligned end: a huge leaf across it splits first, so no
                // 2 MiB mapping (a device THP's included) straddles two VMAs (Linux's
                // split_vma -> vma_adjust_trans_huge). Advice leaves hugetlb VMAs as they are.
                if self.vmas.overlapping(start, end).all(|v| !v.flags.hugetlb) {
                    self.split_boundaries(start, end)?;
                }
                self.vmas.split_at(start);
                self.vmas.split_at(end);
                for v in self.vmas.range_mut(start, end) {
                    if !v.flags.hugetlb {
                        v.flags.hugepage = advice == Advice::HugePage;
                        v.flags.nohugepage = advice == Advice::NoHugePage;
                    }
                }
                self.vmas.merge_around(start, end);
                Ok(())
            }
        }
    }
}
