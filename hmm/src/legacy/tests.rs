//! Host tests of the old-API layers' own semantics: entry formats, 4.14 `hmm_vma_*` errors,
//! `hmm_range_dma_map`. The old-API driver runs the read / write / migrate / snapshot
//! scenarios beside the modern dmirror in `selftests` (`old_api_*`), on the host and in the
//! kernel.

use super::mirror::DmaMap;
use super::olddev::{OldDevice, OldMirror};
use super::vma::{hmm_vma_fault, hmm_vma_get_pfns};
use super::*;
use crate::mm::frame::flags;
use crate::mm::notify::Owner;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::space::{AddressSpace, MapRequest};
use crate::mm::vma::Prot;
use crate::mm::{Error, Mm, SharedSpace};
use crate::pagemap::Pagemaps;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

const PAGE: u64 = 4096;
const N: u64 = 16;

fn setup() -> (Arc<Mm>, Arc<Pagemaps>) {
    let frames = 16 * 1024;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    let pm = Pagemaps::install(&mm).unwrap();
    (mm, pm)
}

fn process(mm: &Arc<Mm>) -> (Arc<SharedSpace>, u64) {
    let mut s = AddressSpace::new(mm).unwrap();
    let a = s.mmap(MapRequest::anon(N * PAGE, Prot::RW)).unwrap();
    let data: Vec<u8> = (0..N * 1024).flat_map(|i| (i as i32).to_le_bytes()).collect();
    s.write(a, &data).unwrap();
    (mm.share(s), a)
}

#[test]
fn formats_are_checked_and_round_trip() {
    assert!(PfnFormat::new([1, 2, 4], [8, 16, 32], 0).is_err());
    assert!(PfnFormat::new([1, 1, 4], [8, 16, 32], 6).is_err());
    assert!(PfnFormat::new([1, 2, 4], [8, 8, 32], 6).is_err());
    assert!(PfnFormat::new([1, 2, 4], [9, 16, 32], 6).is_err(), "a value that reads as valid");
    let f = PfnFormat::new([1, 2, 4], [!0, 0, 8], 12).unwrap();
    for fmt in [f, PfnFormat::HMM_PFN_T] {
        let w = fmt.encode(PageState::Valid { pfn: Pfn(0x1234), write: true, order: 0, device_private: true });
        assert_eq!(fmt.pfn(w), Some(Pfn(0x1234)));
        assert!(fmt.is_write(w) && fmt.is_device_private(w));
        assert_eq!(fmt.pfn(fmt.encode(PageState::Error)), None);
        assert_eq!(fmt.pfn(fmt.encode(PageState::None)), None);
        assert_eq!(fmt.request(fmt.flags[HMM_PFN_VALID] | fmt.flags[HMM_PFN_WRITE]), Request::WRITE);
        assert_eq!(fmt.request(fmt.values[HMM_PFN_NONE]), Request::NONE);
    }
}

#[test]
fn vma_fault_4_14_semantics() {
    let (mm, _pm) = setup();
    let (s, a) = process(&mm);
    let fmt = PfnFormat::HMM_PFN_T;
    let mut w = alloc::vec![0u64; N as usize];
    let r = hmm_vma_fault(&mut s.lock(), a, a + N * PAGE, &mut w, &fmt, true, true).unwrap();
    for (i, &x) in w.iter().enumerate() {
        let va = a + i as u64 * PAGE;
        assert_eq!(fmt.pfn(x).map(|p| p.addr()), s.lock().translate(va), "page {i}");
        assert!(fmt.is_write(x));
    }
    assert!(r.done(), "nothing invalidated the range");
    // An invalidation between the call and hmm_vma_range_done is seen.
    let r = hmm_vma_get_pfns(&mut s.lock(), a, a + N * PAGE, &mut w, &fmt).unwrap();
    s.lock().mprotect(a, PAGE, Prot::READ).unwrap();
    assert!(!r.done());
    // Errors.
    let e = hmm_vma_fault(&mut s.lock(), a, a + PAGE, &mut w[..1], &fmt, true, false);
    assert_eq!(e.unwrap_err(), LegacyError::Permission, "write on a read-only page");
    let e = hmm_vma_fault(&mut s.lock(), a, a + 2 * PAGE, &mut w[..2], &fmt, false, true);
    assert!(matches!(e, Err(LegacyError::Invalid(_))), "a range across two VMAs");
    let e = hmm_vma_fault(&mut s.lock(), a, a + 2 * N * PAGE, &mut w, &fmt, false, true);
    assert!(matches!(e, Err(LegacyError::Invalid(_))), "wrong pfns length / outside the VMA");
    s.lock().mprotect(a, N * PAGE, Prot::NONE).unwrap();
    let e = hmm_vma_fault(&mut s.lock(), a, a + N * PAGE, &mut w, &fmt, false, true);
    assert_eq!(e.unwrap_err(), LegacyError::Permission);
    assert!(w.iter().all(|&x| x == fmt.values[HMM_PFN_ERROR]));
}

/// A process with `N` written pages and an old-API driver mirroring it.
fn mirrored() -> (Arc<Mm>, Arc<OldMirror>, Arc<SharedSpace>, u64) {
    let (mm, pm) = setup();
    let dev = OldDevice::new(&pm, false, Owner(0x01d), 2 << 20).unwrap();
    let (s, a) = process(&mm);
    let m = OldMirror::open(&dev, &s).unwrap();
    (mm, m, s, a)
}

struct Identity(AtomicU64);

impl DmaMap for Identity {
    fn map(&self, pfn: Pfn, _write: bool) -> Result<u64, Error> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(pfn.addr())
    }
    fn unmap(&self, _daddr: u64) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[test]
fn range_dma_map_maps_every_valid_page_and_unmaps_dirty() {
    let (mm, m, s, a) = mirrored();
    let mirror = m.hmm_mirror().unwrap();
    let fmt = PfnFormat::HMM_PFN_T;
    let mut range = mirror.range_register(a, a + N * PAGE).unwrap();
    let mut w = alloc::vec![fmt.flags[HMM_PFN_VALID] | fmt.flags[HMM_PFN_WRITE]; N as usize];
    let mut daddrs = alloc::vec![0u64; N as usize];
    let dma = Identity(AtomicU64::new(0));
    assert!(range.wait_until_valid());
    assert_eq!(range.dma_map(&mut w, &fmt, &dma, &mut daddrs, true), Ok(N as usize));
    for (i, &d) in daddrs.iter().enumerate() {
        assert_eq!(Some(d), s.lock().translate(a + i as u64 * PAGE));
        mm.meta(Pfn(d / PAGE)).unwrap().clear(flags::DIRTY);
    }
    assert_eq!(range.dma_unmap(&w, &fmt, &dma, &mut daddrs, true), N as usize);
    assert_eq!(dma.0.load(Ordering::Relaxed), 0);
    assert!(w.iter().all(|&x| mm.meta(fmt.pfn(x).unwrap()).unwrap().has(flags::DIRTY)));
}
