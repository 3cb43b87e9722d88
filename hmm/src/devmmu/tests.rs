//! The device MMU mirror against a fake domain that behaves like the virtio-iommu (refuses
//! overlapping MAPs, translates by IOVA) and a fake engine whose DMA reads and writes memory
//! through that translation, so a stale mapping would show as wrong data.

use super::*;
use crate::dmirror::{Dmirror, DmirrorDevice};
use crate::mm::Mm;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::space::{AddressSpace, MapRequest};
use crate::mm::vma::Prot;
use crate::pagemap::MemoryKind;
use crate::testing::{FakeDomain, Hw};
use std::sync::Mutex as StdMutex;

struct Fix {
    mm: Arc<Mm>,
    space: Arc<SharedSpace>,
    hw: Arc<StdMutex<Hw>>,
    mirror: Arc<Mirror<FakeDomain>>,
    pagemaps: Arc<Pagemaps>,
}

const OWNER: Owner = Owner(0x5eed);

fn fix() -> Fix {
    let frames = 8192;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    let pagemaps = Pagemaps::install(&mm).unwrap();
    let space = mm.share(AddressSpace::new(&mm).unwrap());
    let hw = Arc::new(StdMutex::new(Hw::default()));
    let mirror = Mirror::bind(&space, OWNER, Some(pagemaps.clone()), FakeDomain { hw: hw.clone() }).unwrap();
    Fix { mm, space, hw, mirror, pagemaps }
}

impl Fix {
    fn mmap(&self, pages: u64, seed: u8) -> u64 {
        let mut s = self.space.lock();
        let a = s.mmap(MapRequest::anon(pages * PAGE, Prot::RW)).unwrap();
        let data: Vec<u8> = (0..pages * PAGE).map(|i| (i / 8) as u8 ^ seed).collect();
        s.write(a, &data).unwrap();
        a
    }

    /// A device read of `[va, va + len)` by DMA: submitted through the mirror, the data read
    /// through the fake hardware's own translation (as the IOMMU would).
    fn dma_read(&self, va: u64, pages: u64) -> Result<Vec<u8>, MirrorError> {
        let hw = self.hw.clone();
        let d = self.mirror.dma(&[(va, (pages * PAGE) as u32)], false, |_| {
            let mut h = hw.lock().unwrap();
            h.done.push(false);
            Ok(h.done.len() - 1)
        })?;
        let mut out = alloc::vec![0u8; (pages * PAGE) as usize];
        {
            let h = self.hw.lock().unwrap();
            for k in 0..pages {
                let (pa, _) = h.pages.get(&(va + k * PAGE)).copied().expect("the IOMMU does not map a page in flight");
                self.mm.platform().read(pa, &mut out[(k * PAGE) as usize..((k + 1) * PAGE) as usize]);
            }
        }
        self.mirror.complete(d, |_, t| self.hw.lock().unwrap().done[t] = true);
        Ok(out)
    }

    fn cpu(&self, va: u64, pages: u64) -> Vec<u8> {
        let mut b = alloc::vec![0u8; (pages * PAGE) as usize];
        self.space.lock().read(va, &mut b).unwrap();
        b
    }

    /// The hardware maps exactly the RAM pages the mirror holds, at the frames the CPU uses.
    fn consistent(&self, a: u64, pages: u64) {
        let h = self.hw.lock().unwrap();
        assert!(h.violations.is_empty(), "{:?}", h.violations);
        for k in 0..pages {
            let va = a + k * PAGE;
            let t = self.mirror.translate(va);
            let hwp = h.pages.get(&va);
            match t {
                Some(Translation { at: Where::Ram(pa), write }) => {
                    assert_eq!(hwp, Some(&(pa, write)), "page {k}");
                    assert_eq!(self.space.lock().translate(va), Some(pa), "page {k}: the CPU uses another frame");
                }
                _ => assert_eq!(hwp, None, "page {k}: mapped in the domain but not in the mirror"),
            }
        }
    }
}

#[test]
fn fault_maps_what_the_cpu_maps_and_dma_sees_the_data() {
    let f = fix();
    let a = f.mmap(40, 1);
    assert_eq!(f.dma_read(a, 1), Err(MirrorError::NotMapped { va: a, write: false }));
    f.mirror.fault(a, a + 40 * PAGE, false).unwrap();
    f.consistent(a, 40);
    assert_eq!(f.dma_read(a, 40).unwrap(), f.cpu(a, 40));
    // Anonymous pages written by the CPU are writable for the device too; mapped in runs.
    assert!(f.mirror.translate(a).unwrap().write);
    let st = f.mirror.stats();
    assert_eq!(st.pages_mapped, 40);
    assert!(st.maps <= 40);
    // Faulting again changes nothing.
    f.mirror.fault(a, a + 40 * PAGE, true).unwrap();
    assert_eq!(f.mirror.stats().pages_mapped, 40);
    f.consistent(a, 40);
}

#[test]
fn munmap_and_mprotect_take_pages_from_the_device() {
    let f = fix();
    let a = f.mmap(16, 2);
    f.mirror.fault(a, a + 16 * PAGE, true).unwrap();
    let before = f.cpu(a, 16);
    f.space.lock().munmap(a + 4 * PAGE, 4 * PAGE).unwrap();
    f.consistent(a, 16);
    assert_eq!(f.dma_read(a + 4 * PAGE, 1), Err(MirrorError::NotMapped { va: a + 4 * PAGE, write: false }));
    assert!(matches!(f.dma_read(a, 8), Err(MirrorError::NotMapped { .. })));
    // The rest still works and reads what the CPU wrote.
    assert_eq!(f.dma_read(a, 4).unwrap(), before[..4 * PAGE as usize]);
    assert_eq!(f.dma_read(a + 8 * PAGE, 8).unwrap(), before[8 * PAGE as usize..]);
    // A device fault on the hole fails as the CPU's would.
    assert!(matches!(f.mirror.fault(a + 4 * PAGE, a + 5 * PAGE, false), Err(MirrorError::Fault { .. })));

    // Read-only: the device loses write access; a read fault gives read-only entries, a write
    // fault is refused, and a device write by DMA is refused.
    f.space.lock().mprotect(a + 8 * PAGE, 8 * PAGE, Prot::READ).unwrap();
    assert_eq!(f.mirror.translate(a + 8 * PAGE), None);
    f.mirror.fault(a + 8 * PAGE, a + 16 * PAGE, false).unwrap();
    f.consistent(a, 16);
    assert!(!f.mirror.translate(a + 8 * PAGE).unwrap().write);
    let e = f.mirror.fault(a + 8 * PAGE, a + 9 * PAGE, true);
    assert!(matches!(e, Err(MirrorError::Fault { error: RangeError::Permission, .. })), "{e:?}");
    let e = f.mirror.dma(&[(a + 8 * PAGE, PAGE as u32)], true, |_| Ok(0));
    assert!(matches!(e, Err(MirrorError::NotMapped { write: true, .. })), "{e:?}");
    assert_eq!(f.dma_read(a + 8 * PAGE, 8).unwrap(), before[8 * PAGE as usize..]);
    assert_eq!(f.mirror.stats().refused, 3);
}

#[test]
fn invalidation_waits_for_dma_in_flight_before_unmapping() {
    let f = fix();
    let a = f.mmap(8, 3);
    f.mirror.fault(a, a + 8 * PAGE, false).unwrap();
    let hw = f.hw.clone();
    let d = f
        .mirror
        .dma(&[(a + 2 * PAGE, 2 * PAGE as u32)], false, |_| {
            let mut h = hw.lock().unwrap();
            h.done.push(false);
            Ok(h.done.len() - 1)
        })
        .unwrap();
    let other = f
        .mirror
        .dma(&[(a + 6 * PAGE, PAGE as u32)], false, |_| {
            let mut h = hw.lock().unwrap();
            h.done.push(false);
            Ok(h.done.len() - 1)
        })
        .unwrap();
    assert_eq!(f.mirror.in_flight(), 2);
    f.space.lock().munmap(a + 3 * PAGE, PAGE).unwrap();
    // The overlapping request completed before the UNMAP; the other one is untouched.
    assert_eq!(f.hw.lock().unwrap().done, [true, false]);
    assert_eq!(f.mirror.stats().settled, 1);
    f.mirror.complete(d, |_, _| ());
    f.mirror.complete(other, |_, t| f.hw.lock().unwrap().done[t] = true);
    assert_eq!(f.mirror.in_flight(), 0);
    f.consistent(a, 8);
}

#[test]
fn migration_to_the_device_makes_pages_local_and_back_to_ram() {
    let f = fix();
    let dev = DmirrorDevice::new(&f.pagemaps, MemoryKind::Private, OWNER, 2 << 20);
    let file = Dmirror::open(&dev, &f.space).unwrap();
    let a = f.mmap(8, 4);
    let want = f.cpu(a, 8);
    f.mirror.fault(a, a + 8 * PAGE, false).unwrap();
    file.migrate_to_dev(a, 4).unwrap();
    // The migration invalidated the RAM mappings before the RAM pages were freed.
    f.consistent(a, 8);
    assert_eq!(f.mirror.translate(a), None);
    f.mirror.fault(a, a + 8 * PAGE, false).unwrap();
    for k in 0..4 {
        let t = f.mirror.translate(a + k * PAGE).unwrap();
        assert!(matches!(t.at, Where::Local(_)), "page {k}: {t:?}");
    }
    assert!(matches!(f.mirror.translate(a + 4 * PAGE).unwrap().at, Where::Ram(_)));
    f.consistent(a, 8);
    // Local pages are not reachable by DMA through the IOMMU.
    assert!(matches!(f.dma_read(a, 1), Err(MirrorError::NotMapped { .. })));
    // The CPU touches them: they come home and the device loses its local entries.
    assert_eq!(f.cpu(a, 8), want);
    assert_eq!(f.mirror.translate(a), None);
    f.mirror.fault(a, a + 8 * PAGE, false).unwrap();
    assert_eq!(f.dma_read(a, 8).unwrap(), want);
    f.consistent(a, 8);
    file.close().unwrap();
}

#[test]
fn unmap_remote_drops_system_memory_mappings_and_keeps_the_devices_own_pages() {
    let f = fix();
    let dev = DmirrorDevice::new(&f.pagemaps, MemoryKind::Private, OWNER, 2 << 20);
    let file = Dmirror::open(&dev, &f.space).unwrap();
    let a = f.mmap(8, 5);
    let want = f.cpu(a, 8);
    file.migrate_to_dev(a, 2).unwrap();
    f.mirror.fault(a, a + 8 * PAGE, false).unwrap();
    let before = f.mirror.stats().pages_unmapped;
    // Pages 0-1 are the device's own, 2-7 in RAM: dropping 1..6 leaves 0, 1, 6 and 7.
    assert_eq!(f.mirror.unmap_remote(a + PAGE, a + 6 * PAGE).unwrap(), 4);
    assert_eq!(f.mirror.stats().pages_unmapped, before + 4);
    for k in 0..2 {
        assert!(matches!(f.mirror.translate(a + k * PAGE).unwrap().at, Where::Local(_)), "page {k}");
    }
    for k in 2..6 {
        assert_eq!(f.mirror.translate(a + k * PAGE), None, "page {k}");
    }
    f.consistent(a, 8);
    assert!(matches!(f.dma_read(a + 2 * PAGE, 1), Err(MirrorError::NotMapped { .. })));
    assert_eq!(f.dma_read(a + 6 * PAGE, 2).unwrap(), f.cpu(a + 6 * PAGE, 2));
    // The next fault maps them again; nothing was lost.
    f.mirror.fault(a + 2 * PAGE, a + 6 * PAGE, false).unwrap();
    assert_eq!(f.dma_read(a + 2 * PAGE, 4).unwrap(), want[(2 * PAGE) as usize..(6 * PAGE) as usize]);
    assert_eq!(f.cpu(a, 8), want);
    assert!(matches!(f.mirror.unmap_remote(a + 1, a + PAGE), Err(MirrorError::Invalid(_))));
    file.close().unwrap();
}

#[test]
fn exit_empties_the_domain_and_later_use_is_gone() {
    let f = fix();
    let a = f.mmap(4, 5);
    f.mirror.fault(a, a + 4 * PAGE, false).unwrap();
    let Fix { space, hw, mirror, .. } = f;
    drop(space);
    assert!(hw.lock().unwrap().pages.is_empty());
    assert_eq!(mirror.fault(a, a + PAGE, false), Err(MirrorError::Gone));
    assert_eq!(mirror.dma(&[(a, PAGE as u32)], false, |_| Ok(0)).unwrap_err(), MirrorError::Gone);
    mirror.unbind().unwrap();
}

#[test]
fn unbind_empties_the_domain() {
    let f = fix();
    let a = f.mmap(4, 6);
    f.mirror.fault(a, a + 4 * PAGE, false).unwrap();
    f.mirror.unbind().unwrap();
    assert!(f.hw.lock().unwrap().pages.is_empty());
    assert_eq!(f.mirror.pages(), 0);
    // The address space goes on without it.
    f.space.lock().munmap(a, PAGE).unwrap();
    assert_eq!(f.mirror.fault(a + PAGE, a + 2 * PAGE, false), Err(MirrorError::Gone));
}

#[test]
fn a_failed_unmap_breaks_the_mirror_instead_of_leaving_stale_dma() {
    let f = fix();
    let a = f.mmap(4, 7);
    f.mirror.fault(a, a + 4 * PAGE, false).unwrap();
    f.hw.lock().unwrap().fail_unmap = true;
    f.space.lock().munmap(a, PAGE).unwrap();
    let e = f.dma_read(a + PAGE, 1).unwrap_err();
    assert!(matches!(&e, MirrorError::Broken(b) if b.cause.op == DomainOp::Unmap && b.start == a), "{e:?}");
    assert!(e.to_string().contains("unbind"));
    assert!(matches!(f.mirror.unbind(), Err(MirrorError::Broken(_))));
}

#[test]
fn bad_ranges_are_refused() {
    let f = fix();
    assert!(matches!(f.mirror.fault(0x1001, 0x3000, false), Err(MirrorError::Invalid(_))));
    assert!(matches!(f.mirror.fault(0x2000, 0x2000, false), Err(MirrorError::Invalid(_))));
    assert!(matches!(f.mirror.fault(USER_END - PAGE, USER_END + PAGE, false), Err(MirrorError::Invalid(_))));
    assert!(matches!(f.mirror.dma(&[(0x1000, 100)], false, |_| Ok(0)), Err(MirrorError::Invalid(_))));
}
