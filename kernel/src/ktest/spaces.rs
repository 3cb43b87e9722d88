//! In-kernel tests of address spaces on real page tables: every access below is a real CPU
//! load or store in an installed address space, faulting through the #PF handler into
//! `hmm::mm` (the same code the host tests run over a fake platform).

use alloc::{format, sync::Arc, vec::Vec};
use hmm::mm::file::MemFile;
use hmm::mm::space::{Advice, FaultError, MapRequest, RemapFlags};
use hmm::mm::vma::Prot;
use hmm::mm::{Error, ThpMode};

use super::TestResult;
use crate::mm::uspace::{self, Space, USER_FAULTS, User};
use crate::mm::{frame, heap};
use crate::system::System;

const PAGE: u64 = 4096;
const M2: u64 = 2 << 20;

fn space() -> Result<Arc<Space>, alloc::string::String> {
    uspace::new_space().map_err(|e| format!("new address space: {e}"))
}

fn mmap(s: &Arc<Space>, req: MapRequest) -> Result<u64, alloc::string::String> {
    s.lock().mmap(req).map_err(|e| format!("mmap: {e}"))
}

/// Stores `tag + i` at the start of each of `pages` pages from `va`.
fn fill(u: &User, va: u64, pages: u64, tag: u64) -> Result<(), alloc::string::String> {
    for i in 0..pages {
        u.write_u64(va + i * PAGE, tag + i).map_err(|e| format!("store at page {i}: {e}"))?;
    }
    Ok(())
}

/// Checks what [`fill`] stored.
fn verify(u: &User, va: u64, pages: u64, tag: u64) -> Result<(), alloc::string::String> {
    for i in 0..pages {
        let v = u.read_u64(va + i * PAGE).map_err(|e| format!("load at page {i}: {e}"))?;
        check!(v == tag + i, "page {i} at {:#x} holds {v:#x}, expected {:#x}", va + i * PAGE, tag + i);
    }
    Ok(())
}

pub fn demand_paging_real_faults(_: &System) -> TestResult {
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(16 * PAGE, Prot::RW))?;
    let faults = USER_FAULTS.load(core::sync::atomic::Ordering::Relaxed);
    uspace::run(&s, |u| -> TestResult {
        check!(u.read_u64(a + 5 * PAGE) == Ok(0), "fresh anonymous memory reads zero");
        fill(u, a, 16, 0x1000)?;
        verify(u, a, 16, 0x1000)
    })?;
    let taken = USER_FAULTS.load(core::sync::atomic::Ordering::Relaxed) - faults;
    check!(taken >= 17, "only {taken} CPU faults for 16 pages plus a zero-page read");
    let sp = s.lock();
    check!(sp.resident_bytes() == 16 * PAGE);
    let zero = uspace::mm().zero_pfn().addr();
    let pa = sp.translate(a);
    check!(pa.is_some_and(|pa| pa % PAGE == 0 && pa != zero), "written page {a:#x} maps {pa:?}");
    Ok(())
}

pub fn bad_access_is_a_fault_value(_: &System) -> TestResult {
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(2 * PAGE, Prot::READ))?;
    uspace::run(&s, |u| -> TestResult {
        let e = u.read_u64(a + 2 * PAGE).err().map(|e| e.error);
        check!(e == Some(FaultError::NoMapping), "load past the mapping: {e:?}");
        let e = u.write_u64(a, 1).err();
        check!(e.is_some_and(|e| e.error == FaultError::Protection && e.address == a), "store to read-only: {e:?}");
        let mut buf = [0u8; 64];
        check!(u.read(a + 2 * PAGE - 32, &mut buf).is_err(), "a copy running off the mapping fails");
        check!(u.read(u64::MAX - 8, &mut buf).is_err(), "a range wrapping the address space fails");
        check!(u.read(a, &mut buf).is_ok());
        let e = u.write(a + 8, &buf).err().map(|e| e.error);
        check!(e == Some(FaultError::Protection), "copy into a read-only mapping: {e:?}");
        Ok(())
    })
}

pub fn mprotect_and_munmap_flush_the_tlb(_: &System) -> TestResult {
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(8 * PAGE, Prot::RW))?;
    uspace::run(&s, |u| fill(u, a, 8, 10))?;
    // The TLB holds writable translations now; after mprotect a store must fault.
    s.lock().mprotect(a, 8 * PAGE, Prot::READ).map_err(|e| format!("mprotect: {e}"))?;
    uspace::run(&s, |u| -> TestResult {
        let e = u.write_u64(a + 3 * PAGE, 0).err().map(|e| e.error);
        check!(e == Some(FaultError::Protection), "store after mprotect(READ): {e:?}");
        verify(u, a, 8, 10)
    })?;
    s.lock().mprotect(a + PAGE, PAGE, Prot::NONE).map_err(|e| format!("mprotect: {e}"))?;
    uspace::run(&s, |u| -> TestResult {
        check!(u.read_u64(a + PAGE).is_err(), "PROT_NONE forbids loads");
        Ok(())
    })?;
    s.lock().mprotect(a, 8 * PAGE, Prot::RW).map_err(|e| format!("mprotect: {e}"))?;
    s.lock().munmap(a + 2 * PAGE, PAGE).map_err(|e| format!("munmap: {e}"))?;
    uspace::run(&s, |u| -> TestResult {
        let e = u.read_u64(a + 2 * PAGE).err().map(|e| e.error);
        check!(e == Some(FaultError::NoMapping), "load from the hole: {e:?}");
        verify(u, a, 2, 10)?;
        verify(u, a + 3 * PAGE, 5, 13)?;
        u.write_u64(a + PAGE, 7).map_err(|e| format!("store after mprotect(RW): {e}"))
    })?;
    check!(s.lock().vmas().len() == 2);
    Ok(())
}

pub fn fork_copy_on_write(_: &System) -> TestResult {
    let parent = space()?;
    let private = mmap(&parent, MapRequest::anon(32 * PAGE, Prot::RW))?;
    let shared = mmap(&parent, MapRequest::anon(4 * PAGE, Prot::RW).shared())?;
    uspace::run(&parent, |u| -> TestResult {
        fill(u, private, 32, 100)?;
        fill(u, shared, 4, 500)
    })?;
    let child = Arc::new(spin::Mutex::new(parent.lock().fork().map_err(|e| format!("fork: {e}"))?));
    uspace::run(&child, |u| -> TestResult {
        verify(u, private, 32, 100)?;
        fill(u, private, 32, 9000)?;
        u.write_u64(shared, 1).map_err(|e| format!("{e}"))
    })?;
    uspace::run(&parent, |u| -> TestResult {
        verify(u, private, 32, 100)?;
        check!(u.read_u64(shared) == Ok(1), "the child's store to a shared mapping is visible");
        u.write_u64(private, 5).map_err(|e| format!("{e}"))
    })?;
    uspace::run(&child, |u| verify(u, private, 32, 9000))?;
    let copies = child.lock().stats.cow_copies;
    check!(copies == 32, "the child copied {copies} pages, expected 32");
    Ok(())
}

pub fn thp_split_on_partial_unmap(_: &System) -> TestResult {
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(2 * M2, Prot::RW))?;
    s.lock().madvise(a, 2 * M2, Advice::HugePage).map_err(|e| format!("madvise: {e}"))?;
    uspace::run(&s, |u| fill(u, a, 1024, 0))?;
    {
        let sp = s.lock();
        check!(sp.stats.huge_faults == 2, "{} huge faults for 4 MiB", sp.stats.huge_faults);
        check!(sp.lookup(a).is_some_and(|e| e.huge) && sp.lookup(a + M2).is_some_and(|e| e.huge));
    }
    s.lock().munmap(a + 300 * PAGE, 16 * PAGE).map_err(|e| format!("munmap: {e}"))?;
    check!(s.lock().lookup(a).is_some_and(|e| !e.huge), "the partially unmapped 2 MiB page was split");
    check!(s.lock().lookup(a + M2).is_some_and(|e| e.huge), "the other stays huge");
    uspace::run(&s, |u| -> TestResult {
        verify(u, a, 300, 0)?;
        check!(u.read_u64(a + 300 * PAGE).is_err());
        verify(u, a + 316 * PAGE, 1024 - 316, 316)
    })
}

pub fn mremap_preserves_contents(_: &System) -> TestResult {
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(64 * PAGE, Prot::RW))?;
    let _block = mmap(&s, MapRequest::anon(PAGE, Prot::READ).fixed(a + 64 * PAGE))?;
    uspace::run(&s, |u| fill(u, a, 64, 42))?;
    let mv = RemapFlags { may_move: true, ..Default::default() };
    let b = s.lock().mremap(a, 64 * PAGE, 128 * PAGE, mv, 0).map_err(|e| format!("mremap: {e}"))?;
    check!(b != a, "a blocked mapping moves");
    uspace::run(&s, |u| -> TestResult {
        verify(u, b, 64, 42)?;
        check!(u.read_u64(a).is_err(), "the old range is gone");
        check!(u.read_u64(b + 100 * PAGE) == Ok(0), "the grown part is fresh");
        Ok(())
    })?;
    let target = mmap(&s, MapRequest::anon(64 * PAGE, Prot::READ))?;
    let flags = RemapFlags { may_move: true, fixed: true, dont_unmap: true };
    let c = s.lock().mremap(b, 64 * PAGE, 64 * PAGE, flags, target).map_err(|e| format!("mremap: {e}"))?;
    check!(c == target);
    uspace::run(&s, |u| -> TestResult {
        verify(u, c, 64, 42)?;
        check!(u.read_u64(b) == Ok(0), "DONTUNMAP leaves an empty mapping");
        Ok(())
    })
}

pub fn file_mappings_private_and_shared(_: &System) -> TestResult {
    let mm = uspace::mm();
    let file = MemFile::new(mm, 0);
    for i in 0..8u64 {
        file.write_at(i * PAGE, &(700 + i).to_le_bytes()).map_err(|e| format!("write_at: {e}"))?;
    }
    let s = space()?;
    let shared = mmap(&s, MapRequest::file(&file, 0, 8 * PAGE, Prot::RW).shared())?;
    let private = mmap(&s, MapRequest::file(&file, 0, 8 * PAGE, Prot::RW))?;
    uspace::run(&s, |u| -> TestResult {
        verify(u, private, 8, 700)?;
        verify(u, shared, 8, 700)?;
        u.write_u64(private, 1).map_err(|e| format!("{e}"))?;
        u.write_u64(shared + PAGE, 2).map_err(|e| format!("{e}"))?;
        check!(u.read_u64(private + PAGE) == Ok(2), "the private mapping sees shared writes until it copies");
        check!(u.read_u64(shared) == Ok(700), "a private write is a private copy");
        Ok(())
    })?;
    let mut b = [0u8; 8];
    file.read_at(PAGE, &mut b);
    check!(u64::from_le_bytes(b) == 2, "the shared store reached the file");
    file.read_at(0, &mut b);
    check!(u64::from_le_bytes(b) == 700);
    Ok(())
}

pub fn zero_huge_zero_and_hugetlb_pages(_: &System) -> TestResult {
    let mm = uspace::mm();
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(M2, Prot::RW))?;
    s.lock().madvise(a, M2, Advice::HugePage).map_err(|e| format!("madvise: {e}"))?;
    let h = mmap(&s, MapRequest::anon(M2, Prot::RW).hugetlb())?;
    let z = mmap(&s, MapRequest::anon(PAGE, Prot::READ))?;
    uspace::run(&s, |u| -> TestResult {
        check!(u.read_u64(a + 77 * PAGE) == Ok(0));
        check!(u.read_u64(z) == Ok(0));
        fill(u, h, 512, 3)
    })?;
    {
        let sp = s.lock();
        check!(sp.translate(a) == Some(mm.huge_zero_pfn().addr()), "a read maps the huge zero page");
        check!(sp.translate(z) == Some(mm.zero_pfn().addr()), "a read maps the zero page");
        check!(sp.lookup(h).is_some_and(|e| e.huge), "hugetlb memory is mapped by 2 MiB pages");
    }
    check!(matches!(s.lock().munmap(h + PAGE, PAGE), Err(Error::Invalid(_))));
    uspace::run(&s, |u| -> TestResult {
        u.write_u64(a, 9).map_err(|e| format!("{e}"))?;
        verify(u, h, 512, 3)
    })?;
    let sp = s.lock();
    check!(sp.lookup(a).is_some_and(|e| e.huge) && sp.translate(a) != Some(mm.huge_zero_pfn().addr()));
    Ok(())
}

pub fn teardown_frees_every_frame(_: &System) -> TestResult {
    let mm = uspace::mm();
    let round = || -> TestResult {
        mm.set_thp_mode(ThpMode::Always);
        let s = space()?;
        let a = mmap(&s, MapRequest::anon(4 * M2, Prot::RW))?;
        let b = mmap(&s, MapRequest::anon(64 * PAGE, Prot::RW).hint(0x4000_0000))?;
        uspace::run(&s, |u| -> TestResult {
            fill(u, a, 1024, 0)?;
            fill(u, b, 64, 0)
        })?;
        let child = Arc::new(spin::Mutex::new(s.lock().fork().map_err(|e| format!("fork: {e}"))?));
        uspace::run(&child, |u| fill(u, b, 64, 1))?;
        s.lock().munmap(a + PAGE, PAGE).map_err(|e| format!("munmap: {e}"))?;
        mm.set_thp_mode(ThpMode::Madvise);
        Ok(())
    };
    round()?; // warm the heap up, so its growth does not blur the count
    let before = (frame::free_frames(), heap::stats().0);
    round()?;
    let growth = (heap::stats().0 - before.1) / PAGE as usize;
    let now = frame::free_frames() + growth;
    check!(now == before.0, "{} frames missing after tearing down two address spaces", before.0 as i64 - now as i64);
    Ok(())
}

pub fn out_of_memory_is_a_fault_value(_: &System) -> TestResult {
    // Take almost every frame, then fault: the store fails cleanly and nothing leaks.
    let mut hoard = Vec::new();
    while let Ok(f) = frame::alloc(1) {
        hoard.push(f);
    }
    // With no frame left even the root table may not be made: that is an error value too; but
    // an address space that could be made takes a mapping (a VMA needs no frame).
    let made = uspace::new_space().map(|s| s.lock().mmap(MapRequest::anon(PAGE, Prot::RW)).is_ok());
    for f in hoard.drain(..) {
        frame::free(f, 1);
    }
    check!(made != Ok(false), "an address space made under exhaustion refused a mapping");
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(PAGE, Prot::RW))?;
    let _ = uspace::run(&s, |u| u.write_u64(a, 1)); // page tables now exist
    s.lock().madvise(a, PAGE, Advice::DontNeed).map_err(|e| format!("madvise: {e}"))?;
    let mut hoard = Vec::new();
    while let Ok(f) = frame::alloc(1) {
        hoard.push(f);
    }
    let e = uspace::run(&s, |u| u.write_u64(a, 2)).err().map(|e| e.error);
    for f in hoard.drain(..) {
        frame::free(f, 1);
    }
    check!(e == Some(FaultError::OutOfMemory), "store with no free frame: {e:?}");
    uspace::run(&s, |u| u.write_u64(a, 3)).map_err(|e| format!("after memory came back: {e}"))
}

pub fn madvise_dontneed_free_willneed(_: &System) -> TestResult {
    let s = space()?;
    let a = mmap(&s, MapRequest::anon(16 * PAGE, Prot::RW))?;
    uspace::run(&s, |u| fill(u, a, 16, 40))?;
    let free = frame::free_frames();
    s.lock().madvise(a, 8 * PAGE, Advice::DontNeed).map_err(|e| format!("DONTNEED: {e}"))?;
    check!(frame::free_frames() >= free + 8, "DONTNEED returned its 8 frames");
    s.lock().madvise(a + 8 * PAGE, 8 * PAGE, Advice::Free).map_err(|e| format!("FREE: {e}"))?;
    uspace::run(&s, |u| -> TestResult {
        for i in 0..8 {
            check!(u.read_u64(a + i * PAGE) == Ok(0), "page {i} reads zero after DONTNEED");
        }
        verify(u, a + 8 * PAGE, 8, 48)
    })?;
    let b = mmap(&s, MapRequest::anon(8 * PAGE, Prot::RW))?;
    s.lock().madvise(b, 8 * PAGE, Advice::WillNeed).map_err(|e| format!("WILLNEED: {e}"))?;
    check!(s.lock().resident_bytes() == 16 * PAGE, "WILLNEED populated 8 pages");
    let e = s.lock().madvise(a, 64 * PAGE, Advice::DontNeed).err();
    check!(matches!(e, Some(Error::NoSpace(_))), "advice over unmapped memory: {e:?}");
    Ok(())
}
