//! Host tests of the address-space code over the fake platform: every operation, the fault
//! paths, copy-on-write, huge pages, files, the invalidation events, and frame accounting.
//! The kernel runs the same scenarios against real page tables (kernel/src/ktest.rs).

use super::file::MemFile;
use super::notify::{Event, Notifier, Range};
use super::platform::fake::{BASE_PFN, FakePlatform};
use super::pte::{Pte, Soft, SoftKind};
use super::space::{Access, AddressSpace, Advice, FaultError, MapRequest, RemapFlags};
use super::vma::Prot;
use super::{Error, Mm, Platform, ThpMode};
use crate::addr::Pfn;
use crate::testing::Rng;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use spin::Mutex;

const FRAMES: usize = 8192; // 32 MiB
const M2: u64 = 2 << 20;

struct Fixture {
    plat: Arc<FakePlatform>,
    mm: Arc<Mm>,
    baseline: u64,
}

fn fixture() -> Fixture {
    let plat = Arc::new(FakePlatform::new(FRAMES));
    let mm = Mm::new(plat.clone(), &[(Pfn(BASE_PFN), FRAMES as u64)]).unwrap();
    let baseline = plat.free_frames();
    Fixture { plat, mm, baseline }
}

impl Fixture {
    fn space(&self) -> AddressSpace {
        AddressSpace::new(&self.mm).unwrap()
    }
    /// Every frame handed out since the fixture was built has come back.
    fn assert_no_leak(&self) {
        assert_eq!(self.plat.free_frames(), self.baseline, "frames leaked");
    }
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(Event, u64, u64, bool)>>,
}

impl Notifier for Recorder {
    fn invalidate_start(&self, r: &Range) -> bool {
        self.events.lock().push((r.event, r.start, r.end, true));
        true
    }
    fn invalidate_end(&self, r: &Range) {
        self.events.lock().push((r.event, r.start, r.end, false));
    }
    fn as_any(&self) -> &dyn core::any::Any {
        self
    }
}

impl Recorder {
    fn take(&self) -> Vec<(Event, u64, u64, bool)> {
        core::mem::take(&mut *self.events.lock())
    }
    fn starts(&self) -> Vec<(Event, u64, u64)> {
        self.take().into_iter().filter(|e| e.3).map(|e| (e.0, e.1, e.2)).collect()
    }
}

fn put_u32(s: &mut AddressSpace, va: u64, v: u32) {
    s.write(va, &v.to_le_bytes()).unwrap();
}

fn get_u32(s: &mut AddressSpace, va: u64) -> u32 {
    let mut b = [0; 4];
    s.read(va, &mut b).unwrap();
    u32::from_le_bytes(b)
}

/// Writes `i` at the start of every page `i` of `[va, va + pages * 4 KiB)`.
fn fill(s: &mut AddressSpace, va: u64, pages: u64, tag: u32) {
    for i in 0..pages {
        put_u32(s, va + i * 4096, tag + i as u32);
    }
}

fn check(s: &mut AddressSpace, va: u64, pages: u64, tag: u32) {
    for i in 0..pages {
        assert_eq!(get_u32(s, va + i * 4096), tag + i as u32, "page {i} at {:#x}", va + i * 4096);
    }
}

fn present(s: &AddressSpace, va: u64) -> Option<super::pte::Present> {
    match s.lookup(va)?.pte {
        Pte::Present(p) => Some(p),
        _ => None,
    }
}

#[test]
fn demand_paging_zero_page_then_private_page() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(3 * 4096, Prot::RW)).unwrap();
    assert!(s.lookup(a).is_none(), "nothing is mapped before the first touch");
    assert_eq!(get_u32(&mut s, a), 0);
    let p = present(&s, a).unwrap();
    assert_eq!(p.pfn, f.mm.zero_pfn(), "a read fault maps the zero page");
    assert!(!p.write);
    put_u32(&mut s, a + 8, 0xabcd);
    let p = present(&s, a).unwrap();
    assert_ne!(p.pfn, f.mm.zero_pfn(), "the first write replaces the zero page");
    assert!(p.write && p.dirty);
    assert_eq!(get_u32(&mut s, a + 8), 0xabcd);
    assert_eq!(f.mm.meta(p.pfn).unwrap().mapcount(), 1);
    assert_eq!(s.resident_bytes(), 4096);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn faults_outside_mappings_and_rights_are_errors() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(4096, Prot::READ)).unwrap();
    assert_eq!(s.fault(a + 4096, Access::Read), Err(FaultError::NoMapping));
    assert_eq!(s.fault(a, Access::Write), Err(FaultError::Protection));
    assert_eq!(s.fault(a, Access::Exec), Err(FaultError::Protection));
    assert_eq!(s.fault(1 << 47, Access::Read), Err(FaultError::NoMapping));
    assert_eq!(s.write(a, &[1]), Err(FaultError::Protection));
    assert_eq!(s.fault(a, Access::Read), Ok(()));
}

#[test]
fn argument_validation() {
    let f = fixture();
    let mut s = f.space();
    assert_eq!(s.mmap(MapRequest::anon(0, Prot::RW)), Err(Error::Invalid("length is zero")));
    assert!(matches!(s.mmap(MapRequest::anon(4096, Prot::RW).fixed(0x1234)), Err(Error::Invalid(_))));
    assert!(matches!(s.mmap(MapRequest::anon(4096, Prot::RW).fixed(0x1000)), Err(Error::NoSpace(_))));
    assert!(matches!(s.mmap(MapRequest::anon(u64::MAX, Prot::RW)), Err(Error::NoSpace(_))));
    let file = MemFile::new(&f.mm, 4096);
    assert!(matches!(s.mmap(MapRequest::file(&file, 100, 4096, Prot::READ)), Err(Error::Invalid(_))));
    assert!(matches!(s.mmap(MapRequest::anon(M2, Prot::RW).hugetlb().shared()), Err(Error::Invalid(_))));
    assert!(matches!(s.munmap(0x1001, 10), Err(Error::Invalid(_))));
    assert!(matches!(s.munmap(0x1000, 0), Err(Error::Invalid(_))));
    assert!(matches!(s.munmap(!0xfff, 0x2000), Err(Error::Invalid(_))));
    assert_eq!(s.munmap(0x10_0000, 0x1000), Ok(()), "unmapping a hole is fine");
    assert!(matches!(s.mprotect(0x10_0000, 0x1000, Prot::READ), Err(Error::NoSpace(_))));
    assert_eq!(Error::NoSpace("x").errno(), 12);
    let a = s.mmap(MapRequest::anon(8192, Prot::RW)).unwrap();
    assert_eq!(s.mmap(MapRequest::anon(4096, Prot::RW).fixed_noreplace(a)), Err(Error::Exists));
    let mv = RemapFlags { may_move: true, ..Default::default() };
    assert!(matches!(
        s.mremap(a, 8192, 4096, RemapFlags { fixed: true, ..Default::default() }, 0),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        s.mremap(a, 8192, 4096, RemapFlags { dont_unmap: true, may_move: true, ..Default::default() }, 0),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(s.mremap(a + 4096, 8192, 4096, mv, 0), Err(Error::Fault(_))));
    assert!(matches!(s.mremap(a, 8192, 0, mv, 0), Err(Error::Invalid(_))));
    assert!(matches!(
        s.mremap(a, 8192, 8192, RemapFlags { fixed: true, may_move: true, ..Default::default() }, a + 4096),
        Err(Error::Invalid("old and new ranges overlap"))
    ));
    assert!(matches!(s.madvise(a, 4096 * 3, Advice::DontNeed), Err(Error::NoSpace(_))));
    let shared = s.mmap(MapRequest::anon(4096, Prot::RW).shared()).unwrap();
    assert!(matches!(s.madvise(shared, 4096, Advice::Free), Err(Error::Invalid(_))));
}

#[test]
fn munmap_makes_a_hole_and_frees_its_frames() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(3 * 4096, Prot::RW)).unwrap();
    fill(&mut s, a, 3, 10);
    let free = f.plat.free_frames();
    s.munmap(a + 4096, 4096).unwrap();
    assert_eq!(f.plat.free_frames(), free + 1);
    assert_eq!(s.vmas().len(), 2);
    assert_eq!(s.fault(a + 4096, Access::Read), Err(FaultError::NoMapping));
    assert_eq!(get_u32(&mut s, a), 10);
    assert_eq!(get_u32(&mut s, a + 8192), 12);
    s.munmap(a, 3 * 4096).unwrap();
    assert!(s.vmas().is_empty());
    assert_eq!(s.resident_bytes(), 0);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn mprotect_none_keeps_data_and_vmas_merge_back() {
    let f = fixture();
    let mut s = f.space();
    let rec = Arc::new(Recorder::default());
    s.set_notifier(Some(rec.clone()));
    let a = s.mmap(MapRequest::anon(4 * 4096, Prot::RW)).unwrap();
    fill(&mut s, a, 4, 100);
    rec.take();
    s.mprotect(a + 4096, 2 * 4096, Prot::NONE).unwrap();
    assert_eq!(rec.starts(), alloc::vec![(Event::ProtectionVma, a + 4096, a + 3 * 4096)]);
    assert_eq!(s.vmas().len(), 3);
    assert_eq!(s.fault(a + 4096, Access::Read), Err(FaultError::Protection));
    assert!(matches!(s.lookup(a + 4096).unwrap().pte, Pte::Soft(Soft { kind: SoftKind::ProtNone, .. })));
    s.mprotect(a + 4096, 2 * 4096, Prot::READ).unwrap();
    assert_eq!(get_u32(&mut s, a + 4096), 101, "PROT_NONE kept the page");
    assert_eq!(s.write(a + 4096, &[0]), Err(FaultError::Protection));
    s.mprotect(a, 4 * 4096, Prot::RW).unwrap();
    assert_eq!(s.vmas().len(), 1, "same rights merge again");
    let pfn = present(&s, a + 4096).unwrap().pfn;
    put_u32(&mut s, a + 4096, 7);
    assert_eq!(present(&s, a + 4096).unwrap().pfn, pfn, "an exclusive page is reused, not copied");
    check(&mut s, a + 2 * 4096, 2, 102);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn fork_is_copy_on_write_for_private_and_shares_shared() {
    let f = fixture();
    let mut parent = f.space();
    let rec = Arc::new(Recorder::default());
    parent.set_notifier(Some(rec.clone()));
    let private = parent.mmap(MapRequest::anon(4 * 4096, Prot::RW)).unwrap();
    let shared = parent.mmap(MapRequest::anon(4 * 4096, Prot::RW).shared()).unwrap();
    fill(&mut parent, private, 4, 1);
    fill(&mut parent, shared, 4, 50);
    rec.take();
    let mut child = parent.fork().unwrap();
    let starts = rec.starts();
    assert!(starts.contains(&(Event::ProtectionPage, private, private + 4 * 4096)), "{starts:?}");
    let pp = present(&parent, private).unwrap();
    assert!(!pp.write, "private pages are write-protected in the parent");
    assert_eq!(present(&child, private).unwrap().pfn, pp.pfn, "and shared with the child");
    let meta = f.mm.meta(pp.pfn).unwrap();
    assert_eq!((meta.mapcount(), meta.refcount()), (2, 2));
    let spaces: Vec<u32> = meta.rmap().iter().map(|e| e.space).collect();
    assert!(spaces.contains(&parent.id()) && spaces.contains(&child.id()));

    check(&mut child, private, 4, 1);
    put_u32(&mut child, private, 999);
    assert_eq!(get_u32(&mut child, private), 999);
    assert_eq!(get_u32(&mut parent, private), 1, "the parent does not see the child's write");
    assert_eq!(meta.mapcount(), 1, "the child broke COW onto its own copy");
    put_u32(&mut parent, private, 5);
    assert_eq!(present(&parent, private).unwrap().pfn, pp.pfn, "the parent's page is exclusive again: reused");
    assert_eq!(get_u32(&mut child, private), 999);

    put_u32(&mut child, shared, 777);
    assert_eq!(get_u32(&mut parent, shared), 777, "shared mappings do not copy");
    put_u32(&mut parent, shared + 4096, 778);
    assert_eq!(get_u32(&mut child, shared + 4096), 778);
    drop(child);
    check(&mut parent, private + 4096, 3, 2);
    drop(parent);
    f.assert_no_leak();
}

#[test]
fn thp_fault_split_on_partial_unmap_and_mprotect() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(2 * M2, Prot::RW)).unwrap();
    assert_eq!(a % M2, 0, "mappings of 2 MiB or more are 2 MiB-aligned");
    s.madvise(a, 2 * M2, Advice::HugePage).unwrap();
    fill(&mut s, a, 512, 0);
    assert!(s.lookup(a).unwrap().huge, "a write fault in a MADV_HUGEPAGE range maps 2 MiB");
    assert_eq!(s.stats.huge_faults, 1);
    s.munmap(a + 100 * 4096, 4096).unwrap();
    assert!(!s.lookup(a).unwrap().huge, "partial munmap splits");
    assert_eq!(f.mm.stats.thp_splits.load(Ordering::Relaxed), 1);
    assert_eq!(s.fault(a + 100 * 4096, Access::Read), Err(FaultError::NoMapping));
    for i in (0..512).filter(|i| *i != 100) {
        assert_eq!(get_u32(&mut s, a + i * 4096), i as u32);
    }
    let sub = present(&s, a + 5 * 4096).unwrap().pfn;
    assert_eq!(f.mm.meta(sub).unwrap().mapcount(), 1, "each base page has its own mapping");
    // Second THP: a partial mprotect splits too.
    put_u32(&mut s, a + M2, 42);
    assert!(s.lookup(a + M2).unwrap().huge);
    s.mprotect(a + M2, 4096, Prot::READ).unwrap();
    assert!(!s.lookup(a + M2).unwrap().huge);
    assert_eq!(s.write(a + M2, &[0]), Err(FaultError::Protection));
    put_u32(&mut s, a + M2 + 4096, 43);
    assert_eq!(get_u32(&mut s, a + M2), 42);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn huge_zero_page_then_thp_on_write() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(M2, Prot::RW)).unwrap();
    s.madvise(a, M2, Advice::HugePage).unwrap();
    assert_eq!(get_u32(&mut s, a + 4096 * 7), 0);
    let e = s.lookup(a).unwrap();
    assert!(e.huge);
    assert!(matches!(e.pte, Pte::Present(p) if p.pfn == f.mm.huge_zero_pfn() && !p.write));
    put_u32(&mut s, a, 1);
    let e = s.lookup(a).unwrap();
    assert!(matches!(e.pte, Pte::Present(p) if p.write && !f.mm.is_zero(p.pfn)) && e.huge);
    assert_eq!(get_u32(&mut s, a + 4096 * 7), 0);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn thp_falls_back_to_base_pages_without_huge_frames() {
    let f = fixture();
    f.mm.set_thp_mode(ThpMode::Always);
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(2 * M2, Prot::RW)).unwrap();
    // An empty PMD: the 2 MiB allocation fails (the upper tables exist already).
    assert_eq!(get_u32(&mut s, a + M2), 0);
    f.plat.fail_allocs.store(1, Ordering::Relaxed);
    put_u32(&mut s, a, 3);
    assert!(!s.lookup(a).unwrap().huge);
    assert_eq!(get_u32(&mut s, a), 3);
    // The huge zero page: replacing it fails, so it splits into zero-page PTEs.
    assert!(s.lookup(a + M2).unwrap().huge);
    f.plat.fail_allocs.store(1, Ordering::Relaxed);
    put_u32(&mut s, a + M2 + 4096, 4);
    assert!(!s.lookup(a + M2).unwrap().huge);
    assert_eq!(present(&s, a + M2).unwrap().pfn, f.mm.zero_pfn());
    assert_eq!(get_u32(&mut s, a + M2 + 4096), 4);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn fork_splits_thp_and_keeps_contents() {
    let f = fixture();
    f.mm.set_thp_mode(ThpMode::Always);
    let mut p = f.space();
    let a = p.mmap(MapRequest::anon(M2, Prot::RW)).unwrap();
    fill(&mut p, a, 512, 7);
    assert!(p.lookup(a).unwrap().huge);
    let mut c = p.fork().unwrap();
    check(&mut c, a, 512, 7);
    put_u32(&mut c, a, 1);
    assert_eq!(get_u32(&mut p, a), 7);
    drop(p);
    drop(c);
    f.assert_no_leak();
}

#[test]
fn mremap_moves_populated_pages_and_grows() {
    let f = fixture();
    let mut s = f.space();
    let rec = Arc::new(Recorder::default());
    s.set_notifier(Some(rec.clone()));
    let a = s.mmap(MapRequest::anon(8 * 4096, Prot::RW)).unwrap();
    let blocker = s.mmap(MapRequest::anon(4096, Prot::READ).fixed(a + 8 * 4096)).unwrap();
    fill(&mut s, a, 8, 30);
    let pfn = present(&s, a).unwrap().pfn;
    rec.take();
    // Cannot grow in place (blocker), so it moves.
    let mv = RemapFlags { may_move: true, ..Default::default() };
    let b = s.mremap(a, 8 * 4096, 16 * 4096, mv, 0).unwrap();
    assert_ne!(b, a);
    assert_eq!(rec.starts(), alloc::vec![(Event::Unmap, a, a + 8 * 4096)]);
    assert_eq!(present(&s, b).unwrap().pfn, pfn, "pages move, not copy");
    let rm = f.mm.meta(pfn).unwrap().rmap();
    assert_eq!(rm.len(), 1);
    assert_eq!(rm[0].va(), b, "the reverse map follows the move");
    check(&mut s, b, 8, 30);
    assert_eq!(get_u32(&mut s, b + 12 * 4096), 0, "the grown part is fresh memory");
    assert_eq!(s.fault(a, Access::Read), Err(FaultError::NoMapping));
    // Without MAYMOVE, growth into the blocker fails.
    s.munmap(b + 16 * 4096, 4096).unwrap();
    let c = s.mmap(MapRequest::anon(4096, Prot::READ).fixed(b + 16 * 4096)).unwrap();
    assert!(matches!(s.mremap(b, 16 * 4096, 17 * 4096, RemapFlags::default(), 0), Err(Error::NoSpace(_))));
    s.munmap(c, 4096).unwrap();
    assert_eq!(s.mremap(b, 16 * 4096, 17 * 4096, RemapFlags::default(), 0), Ok(b), "grows in place");
    // Shrink.
    assert_eq!(s.mremap(b, 17 * 4096, 4 * 4096, RemapFlags::default(), 0), Ok(b));
    assert_eq!(s.fault(b + 5 * 4096, Access::Read), Err(FaultError::NoMapping));
    s.munmap(blocker, 4096).unwrap();
    drop(s);
    f.assert_no_leak();
}

#[test]
fn mremap_fixed_and_dontunmap() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(4 * 4096, Prot::RW)).unwrap();
    fill(&mut s, a, 4, 60);
    let target = s.mmap(MapRequest::anon(4 * 4096, Prot::READ)).unwrap();
    let both = RemapFlags { may_move: true, fixed: true, dont_unmap: true };
    assert_eq!(s.mremap(a, 4 * 4096, 4 * 4096, both, target), Ok(target), "FIXED replaces the target");
    check(&mut s, target, 4, 60);
    assert_eq!(s.vmas().find(target).unwrap().prot, Prot::RW);
    assert_eq!(get_u32(&mut s, a), 0, "DONTUNMAP leaves an empty mapping behind");
    assert_eq!(s.vmas().find(a).map(|v| v.prot), Some(Prot::RW));
    drop(s);
    f.assert_no_leak();
}

#[test]
fn mremap_of_thp_moves_whole_pmds_when_aligned_and_splits_otherwise() {
    let f = fixture();
    f.mm.set_thp_mode(ThpMode::Always);
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(M2, Prot::RW)).unwrap();
    fill(&mut s, a, 512, 0);
    assert!(s.lookup(a).unwrap().huge);
    let fixed = RemapFlags { may_move: true, fixed: true, ..Default::default() };
    let dst = 0x4000_0000;
    assert_eq!(s.mremap(a, M2, M2, fixed, dst), Ok(dst));
    assert!(s.lookup(dst).unwrap().huge, "2 MiB-aligned moves keep the huge mapping");
    let odd = 0x5000_0000 + 512 * 1024;
    assert_eq!(s.mremap(dst, M2, M2, fixed, odd), Ok(odd));
    assert!(!s.lookup(odd).unwrap().huge);
    check(&mut s, odd, 512, 0);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn file_mappings_private_copy_and_shared() {
    let f = fixture();
    let mut s = f.space();
    let file = MemFile::new(&f.mm, 0);
    for i in 0..4u32 {
        file.write_at(u64::from(i) * 4096, &(i + 500).to_le_bytes()).unwrap();
    }
    let shared = s.mmap(MapRequest::file(&file, 0, 4 * 4096, Prot::RW).shared()).unwrap();
    let private = s.mmap(MapRequest::file(&file, 0, 4 * 4096, Prot::RW)).unwrap();
    check(&mut s, private, 4, 500);
    check(&mut s, shared, 4, 500);
    assert_eq!(present(&s, private).unwrap().pfn, present(&s, shared).unwrap().pfn, "both show the cached page");
    put_u32(&mut s, private, 1);
    let mut b = [0; 4];
    file.read_at(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 500, "a private write is a copy");
    put_u32(&mut s, shared + 4096, 2);
    file.read_at(4096, &mut b);
    assert_eq!(u32::from_le_bytes(b), 2, "a shared write reaches the file");
    assert_eq!(get_u32(&mut s, private + 4096), 2, "and the private mapping that did not copy sees it");
    // Offset mapping and the end of the file.
    let off = s.mmap(MapRequest::file(&file, 2 * 4096, 4 * 4096, Prot::READ)).unwrap();
    assert_eq!(get_u32(&mut s, off), 502);
    assert_eq!(s.fault(off + 2 * 4096, Access::Read), Err(FaultError::Bus), "past the end of the file");
    assert!(file.set_len(4096).is_err(), "mapped pages cannot be truncated away");
    drop(s);
    file.set_len(4096).unwrap();
    assert_eq!(file.cached_pages(), 1);
    drop(file);
    f.assert_no_leak();
}

#[test]
fn hugetlb_maps_2m_pages_and_only_splits_at_2m() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(M2 + 1, Prot::RW).hugetlb()).unwrap();
    assert_eq!(s.vmas().find(a).unwrap().len(), 2 * M2, "rounded to 2 MiB");
    put_u32(&mut s, a + 4096, 9);
    assert!(s.lookup(a).unwrap().huge);
    assert!(matches!(s.munmap(a + 4096, 4096), Err(Error::Invalid(_))));
    assert!(matches!(s.mprotect(a, 4096, Prot::READ), Err(Error::Invalid(_))));
    s.mprotect(a, M2, Prot::READ).unwrap();
    assert!(s.lookup(a).unwrap().huge, "protection changes keep the 2 MiB page");
    assert_eq!(get_u32(&mut s, a + 4096), 9);
    s.mprotect(a, M2, Prot::RW).unwrap();
    let mut c = s.fork().unwrap();
    put_u32(&mut c, a + 4096, 10);
    assert_eq!(get_u32(&mut s, a + 4096), 9, "hugetlb copy-on-write at 2 MiB");
    assert!(c.lookup(a).unwrap().huge);
    drop(c);
    s.munmap(a + M2, M2).unwrap();
    drop(s);
    f.assert_no_leak();
}

#[test]
fn madvise_dontneed_and_free() {
    let f = fixture();
    let mut s = f.space();
    let rec = Arc::new(Recorder::default());
    s.set_notifier(Some(rec.clone()));
    let a = s.mmap(MapRequest::anon(4 * 4096, Prot::RW)).unwrap();
    fill(&mut s, a, 4, 1);
    rec.take();
    s.madvise(a, 2 * 4096, Advice::DontNeed).unwrap();
    assert_eq!(rec.starts(), alloc::vec![(Event::Clear, a, a + 2 * 4096)]);
    assert_eq!(get_u32(&mut s, a), 0, "private anonymous memory reads zeros after DONTNEED");
    assert_eq!(get_u32(&mut s, a + 2 * 4096), 3);
    s.madvise(a + 2 * 4096, 2 * 4096, Advice::Free).unwrap();
    let p = present(&s, a + 2 * 4096).unwrap();
    assert!(!p.dirty);
    assert_eq!(get_u32(&mut s, a + 2 * 4096), 3, "without reclaim, lazily freed pages keep their data");
    s.madvise(a, 4 * 4096, Advice::WillNeed).unwrap();
    assert!(present(&s, a + 4096).unwrap().write, "WILLNEED populated the range");
    drop(s);
    f.assert_no_leak();
}

#[test]
fn populate_and_placement_hints() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(3 * 4096, Prot::RW).hint(0x1234_5000).populate()).unwrap();
    assert_eq!(a, 0x1234_5000, "a free hint is honoured");
    assert_eq!(s.resident_bytes(), 3 * 4096);
    let b = s.mmap(MapRequest::anon(4096, Prot::RW).hint(0x1234_5000)).unwrap();
    assert_ne!(b, a, "a taken hint is not");
    drop(s);
    f.assert_no_leak();
}

#[test]
fn out_of_memory_is_a_fault_result_and_leaks_nothing() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(4 * 4096, Prot::RW)).unwrap();
    put_u32(&mut s, a, 1);
    f.plat.fail_allocs.store(1, Ordering::Relaxed);
    assert_eq!(s.fault(a + 4096, Access::Write), Err(FaultError::OutOfMemory));
    put_u32(&mut s, a + 4096, 2);
    // Exhaust everything: faults fail cleanly, and teardown returns it all.
    let big = s.mmap(MapRequest::anon(64 << 20, Prot::RW)).unwrap();
    let mut va = big;
    let err = loop {
        if let Err(e) = s.fault(va, Access::Write) {
            break e;
        }
        va += 4096;
    };
    assert_eq!(err, FaultError::OutOfMemory);
    assert!(va > big + (16 << 20));
    assert_eq!(get_u32(&mut s, a + 4096), 2);
    drop(s);
    f.assert_no_leak();
}

#[test]
fn device_exclusive_entry_is_restored_on_cpu_access() {
    let f = fixture();
    let mut s = f.space();
    let rec = Arc::new(Recorder::default());
    s.set_notifier(Some(rec.clone()));
    let a = s.mmap(MapRequest::anon(4096, Prot::RW)).unwrap();
    put_u32(&mut s, a, 77);
    // Install an exclusive entry by hand the way make_device_exclusive will.
    let p = present(&s, a).unwrap();
    let soft =
        Soft { kind: SoftKind::Exclusive, pfn: p.pfn, write: true, young: true, dirty: true, huge: false, exec: false };
    poke(&s, a, Pte::Soft(soft).encode());
    rec.take();
    assert_eq!(get_u32(&mut s, a), 77);
    assert_eq!(rec.starts(), alloc::vec![(Event::Exclusive, a, a + 4096)]);
    assert_eq!(present(&s, a).unwrap().pfn, p.pfn);
    // Migration entries make faults wait; device-private entries ask for migrate_to_ram.
    let mig = Soft { kind: SoftKind::Migration, ..soft };
    let old = poke(&s, a, Pte::Soft(mig).encode());
    assert_eq!(s.fault(a, Access::Read), Err(FaultError::Migrating));
    poke(&s, a, old);
    drop(s);
    f.assert_no_leak();
}

/// Replaces the 4 KiB leaf at `va` (test helper standing in for the HMM layer).
fn poke(s: &AddressSpace, va: u64, raw: u64) -> u64 {
    let t = super::pagetable::Tables::new(s.mm().platform(), s.root());
    match t.pte(va, false).unwrap() {
        super::pagetable::PteLookup::Pte(slot) => t.swap(slot, raw),
        other => panic!("no pte at {va:#x}: {other:?}"),
    }
}

#[test]
fn teardown_sends_release_and_frees_tables() {
    let f = fixture();
    let mut s = f.space();
    let rec = Arc::new(Recorder::default());
    s.set_notifier(Some(rec.clone()));
    for i in 0..8u64 {
        let a = s.mmap(MapRequest::anon(4096, Prot::RW).fixed(0x1000_0000 + i * (1 << 30))).unwrap();
        put_u32(&mut s, a, 1);
    }
    rec.take();
    drop(s);
    assert_eq!(rec.starts(), alloc::vec![(Event::Release, 0, u64::MAX)]);
    f.assert_no_leak();
}

#[test]
fn tlb_flushes_are_batched_per_operation() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(64 * 4096, Prot::RW)).unwrap();
    fill(&mut s, a, 64, 0);
    let before = f.plat.flushes.load(Ordering::Relaxed);
    s.mprotect(a, 64 * 4096, Prot::READ).unwrap();
    assert_eq!(f.plat.flushes.load(Ordering::Relaxed), before + 1, "one flush for 64 pages");
    s.munmap(a, 64 * 4096).unwrap();
    assert_eq!(f.plat.flushes.load(Ordering::Relaxed), before + 2);
}

/// The model of one address space: per page of the arena, `None` (unmapped) or its rights and
/// the value stored at its start.
type Model = Vec<Option<(Prot, u64)>>;

const ARENA: u64 = 0x4000_0000;
const ARENA_PAGES: u64 = 3 * 512;

fn arena_range(rng: &mut Rng) -> (u64, u64) {
    // Bias towards ranges that straddle and cover 2 MiB boundaries.
    let start = rng.below(ARENA_PAGES);
    let cap = if rng.below(4) == 0 { 1024 } else { 40 };
    let len = 1 + rng.below((ARENA_PAGES - start).min(cap));
    (start, len)
}

/// Applies a random operation to `s` and to the model, and checks that they agree.
/// Returns whether the operation was a successful move (so the test can check it ran some).
fn random_op(rng: &mut Rng, s: &mut AddressSpace, m: &mut Model) -> bool {
    let (p, n) = arena_range(rng);
    let va = ARENA + p * 4096;
    let len = n * 4096;
    let range = p as usize..(p + n) as usize;
    match rng.below(10) {
        0 | 9 => {
            s.mmap(MapRequest::anon(len, Prot::RW).fixed(va)).unwrap();
            m[range].iter_mut().for_each(|e| *e = Some((Prot::RW, 0)));
        }
        1 => {
            s.munmap(va, len).unwrap();
            m[range].iter_mut().for_each(|e| *e = None);
        }
        2 => {
            let prot = [Prot::NONE, Prot::READ, Prot::RW][rng.below(3) as usize];
            let r = s.mprotect(va, len, prot);
            if m[range.clone()].iter().all(Option::is_some) {
                r.unwrap();
                m[range].iter_mut().for_each(|e| e.as_mut().unwrap().0 = prot);
            } else {
                assert!(matches!(r, Err(Error::NoSpace(_))), "{r:?}");
            }
        }
        3 | 4 => {
            // Prefer a mapped page, so most writes land.
            let mut p = p;
            for _ in 0..8 {
                if m[p as usize].is_some() {
                    break;
                }
                p = rng.below(ARENA_PAGES);
            }
            let va = ARENA + p * 4096;
            let v = rng.next() | 1;
            let r = s.write(va, &v.to_le_bytes());
            match m[p as usize] {
                Some((prot, ref mut val)) if prot.write() => {
                    r.unwrap();
                    *val = v;
                }
                Some(_) => assert_eq!(r, Err(FaultError::Protection)),
                None => assert_eq!(r, Err(FaultError::NoMapping)),
            }
        }
        5 => {
            let r = s.madvise(va, len, if rng.below(2) == 0 { Advice::DontNeed } else { Advice::HugePage });
            if m[range.clone()].iter().all(Option::is_some) {
                r.unwrap();
            } else {
                assert!(matches!(r, Err(Error::NoSpace(_))), "{r:?}");
            }
            // DONTNEED zeroes; HUGEPAGE changes nothing visible. Re-read to learn which.
            if r.is_ok() {
                for i in range {
                    let mut b = [0; 8];
                    if let Some((prot, val)) = &mut m[i]
                        && !prot.is_none()
                    {
                        s.read(ARENA + i as u64 * 4096, &mut b).unwrap();
                        let got = u64::from_le_bytes(b);
                        assert!(got == *val || got == 0, "page {i}: {got:#x} is neither {val:#x} nor 0");
                        *val = got;
                    }
                }
            }
        }
        6 => {
            // mremap a random range to a random fixed destination (which it replaces).
            let dest = arena_range(rng).0;
            let dest = dest.min(ARENA_PAGES - n);
            let fixed = RemapFlags { may_move: true, fixed: true, ..Default::default() };
            let r = s.mremap(va, len, len, fixed, ARENA + dest * 4096);
            let overlap = dest < p + n && p < dest + n;
            match r {
                Ok(_) => {
                    assert!(!overlap);
                    let moved: Vec<_> = m[range.clone()].to_vec();
                    m[range].iter_mut().for_each(|e| *e = None);
                    m[dest as usize..(dest + n) as usize].clone_from_slice(&moved);
                    return true;
                }
                Err(Error::Invalid(_)) => assert!(overlap),
                Err(Error::Fault(_)) => assert!(m[range].iter().any(Option::is_none) || n > 1),
                Err(e) => panic!("mremap: {e:?}"),
            }
        }
        _ => {
            // Check a few pages.
            for _ in 0..8 {
                let i = rng.below(ARENA_PAGES) as usize;
                let mut b = [0; 8];
                let r = s.read(ARENA + i as u64 * 4096, &mut b);
                match m[i] {
                    Some((prot, val)) if !prot.is_none() => {
                        r.unwrap();
                        assert_eq!(u64::from_le_bytes(b), val, "page {i}");
                    }
                    Some(_) => assert_eq!(r, Err(FaultError::Protection)),
                    None => assert_eq!(r, Err(FaultError::NoMapping)),
                }
            }
        }
    }
    false
}

#[test]
fn randomized_operations_agree_with_a_model() {
    for seed in 1..=6u64 {
        let f = fixture();
        f.mm.set_thp_mode(if seed % 2 == 0 { ThpMode::Always } else { ThpMode::Madvise });
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut s = f.space();
        let mut m: Model = alloc::vec![None; ARENA_PAGES as usize];
        let mut child: Option<(AddressSpace, Model)> = None;
        let mut moves = 0;
        for _ in 0..3000 {
            match rng.below(40) {
                0 if child.is_none() => {
                    let c = s.fork().unwrap();
                    child = Some((c, m.clone()));
                }
                1 => child = None,
                _ => {
                    if let Some((c, cm)) = child.as_mut()
                        && rng.below(2) == 0
                    {
                        moves += usize::from(random_op(&mut rng, c, cm));
                    } else {
                        moves += usize::from(random_op(&mut rng, &mut s, &mut m));
                    }
                }
            }
        }
        let st = &f.mm.stats;
        assert!(moves > 10, "seed {seed}: only {moves} successful mremaps");
        assert!(st.cow_copies.load(Ordering::Relaxed) > 0, "seed {seed}: no copy-on-write happened");
        if seed % 2 == 0 {
            assert!(st.huge_pages.load(Ordering::Relaxed) > 0, "seed {seed}: no huge page was used");
            assert!(st.thp_splits.load(Ordering::Relaxed) > 0, "seed {seed}: no huge page was split");
        }
        // Final full comparison.
        for (sp, model) in core::iter::once((&mut s, &m)).chain(child.as_mut().map(|(c, cm)| (c, &*cm))) {
            for (i, e) in model.iter().enumerate() {
                if let Some((prot, val)) = e
                    && !prot.is_none()
                {
                    let mut b = [0; 8];
                    sp.read(ARENA + i as u64 * 4096, &mut b).unwrap();
                    assert_eq!(u64::from_le_bytes(b), *val, "seed {seed}, page {i}");
                }
            }
        }
        drop(child);
        drop(s);
        f.assert_no_leak();
    }
}

/// `make_device_exclusive` inside a THP splits the PMD mapping at the THP's own start: the
/// split's invalidation covers the whole 2 MiB (mirrors of the pages before the address hear
/// of it) and every base page keeps its data and frame.
#[test]
fn device_exclusive_inside_a_thp_splits_it_in_place() {
    use super::notify::Owner;
    let f = fixture();
    let mut s = f.space();
    // 4 MiB-aligned, so that no address bit above the PMD offset hides a wrong split base.
    let a = s.mmap(MapRequest::anon(M2, Prot::RW).fixed(0x4000_0000)).unwrap();
    s.madvise(a, M2, Advice::HugePage).unwrap();
    fill(&mut s, a, 512, 100);
    assert!(s.lookup(a).unwrap().huge);
    let rec = Arc::new(Recorder::default());
    s.set_notifier(Some(rec.clone()));
    let va = a + 5 * 4096;
    let g = s.make_device_exclusive(va, Owner(7)).unwrap();
    drop(g);
    assert!(!s.lookup(a).unwrap().huge, "the THP is split for the exclusive entry");
    // Mirrors of the first pages hear of the split too.
    let starts = rec.starts();
    assert!(starts.contains(&(Event::Clear, a, a + M2)), "the split's invalidation: {starts:x?}");
    check(&mut s, a, 512, 100);
    for i in [0u64, 4, 6, 511] {
        let head = present(&s, a).unwrap().pfn;
        assert_eq!(present(&s, a + i * 4096).unwrap().pfn.0, head.0 + i, "page {i} maps its own frame");
    }
    s.munmap(a, M2).unwrap();
    drop(s);
    f.assert_no_leak();
}

/// The invalidation `make_device_exclusive` sends covers exactly the page.
#[test]
fn device_exclusive_invalidates_exactly_its_page() {
    use super::notify::Owner;
    let f = fixture();
    let mut s = f.space();
    let rec = Arc::new(Recorder::default());
    s.set_notifier(Some(rec.clone()));
    let a = s.mmap(MapRequest::anon(4 * 4096, Prot::RW)).unwrap();
    fill(&mut s, a, 4, 1);
    rec.take();
    let g = s.make_device_exclusive(a + 2 * 4096, Owner(3)).unwrap();
    let starts = rec.starts();
    assert!(starts.contains(&(Event::Exclusive, a + 2 * 4096, a + 3 * 4096)), "{starts:x?}");
    assert!(starts.iter().all(|&(_, st, e)| st >= a && e <= a + 4 * 4096), "{starts:x?}");
    drop(g);
    check(&mut s, a, 4, 1);
    drop(s);
    f.assert_no_leak();
}

mod migration;
mod pagemap;

/// Unmapping, mprotecting or madvising part of a THP that has a reference beyond its mapping
/// (a pin) splits the PMD mapping into 512 PTEs of the same compound page, which stays whole
/// (`__split_huge_pmd` without `split_huge_page`); everything keeps working on the subpages
/// and the page goes when the last mapping and the pin are gone.
#[test]
fn partial_ops_on_a_referenced_thp_split_the_mapping_only() {
    let f = fixture();
    let mut s = f.space();
    let a = s.mmap(MapRequest::anon(M2, Prot::RW)).unwrap();
    s.madvise(a, M2, Advice::HugePage).unwrap();
    fill(&mut s, a, 512, 0);
    assert!(s.lookup(a).unwrap().huge);
    let head = present(&s, a).unwrap().pfn;
    f.mm.get_page(head); // a pin on the folio (GUP)
    s.munmap(a + 100 * 4096, 4096).unwrap();
    assert!(!s.lookup(a).unwrap().huge, "the mapping is split");
    let h = f.mm.meta(head).unwrap();
    assert_eq!(h.order(), super::HUGE_ORDER, "the pinned page stays whole");
    assert_eq!(present(&s, a + 7 * 4096).unwrap().pfn, Pfn(head.0 + 7), "PTEs map its subpages");
    assert_eq!((h.refcount(), h.mapcount()), (1 + 511, 511));
    s.mprotect(a + 4096, 4096, Prot::READ).unwrap();
    assert_eq!(s.write(a + 4096, &[0]), Err(FaultError::Protection));
    s.madvise(a + 2 * 4096, 4096, Advice::DontNeed).unwrap();
    assert_eq!(get_u32(&mut s, a + 2 * 4096), 0, "DONTNEED dropped the subpage's mapping");
    for i in (0..512).filter(|i| ![2, 100].contains(i)) {
        assert_eq!(get_u32(&mut s, a + i * 4096), i as u32);
    }
    // Writes: in place on a writable subpage, copy-on-write after mprotect gives write back.
    put_u32(&mut s, a + 5 * 4096, 555);
    assert_eq!(present(&s, a + 5 * 4096).unwrap().pfn, Pfn(head.0 + 5));
    s.mprotect(a + 4096, 4096, Prot::RW).unwrap();
    put_u32(&mut s, a + 4096, 111);
    assert_eq!(get_u32(&mut s, a + 4096), 111);
    // Migration and device-exclusive access leave the pinned subpages alone.
    let args = super::migrate::MigrateArgs {
        start: a + 8 * 4096,
        end: a + 9 * 4096,
        owner: super::notify::Owner(1),
        select: super::migrate::Select::SYSTEM,
        fault_page: None,
    };
    assert_eq!(s.migrate_vma_setup(args).unwrap().cpages(), 0);
    let r = s.make_device_exclusive(a + 9 * 4096, super::notify::Owner(1));
    assert!(matches!(r, Err(Error::Busy(_))), "{r:?}");
    assert_eq!(get_u32(&mut s, a + 9 * 4096), 9);
    // Fork shares the subpages copy-on-write.
    let mut c = s.fork().unwrap();
    put_u32(&mut c, a + 6 * 4096, 666);
    assert_eq!(get_u32(&mut s, a + 6 * 4096), 6);
    assert_eq!(get_u32(&mut c, a + 5 * 4096), 555);
    drop(c);
    s.munmap(a, M2).unwrap();
    assert_eq!((h.refcount(), h.mapcount()), (1, 0), "only the pin is left");
    f.mm.put_page(head);
    drop(s);
    f.assert_no_leak();
}
