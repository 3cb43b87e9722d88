//! A driver written against the old generations (4.14 `hmm_vma_*`, 4.14-5.2 `hmm_devmem`,
//! 4.14-5.3 callback `migrate_vma`, 5.x `hmm_mirror` and `hmm_range_*`) runs read, write,
//! migrate and snapshot on the same data as the modern dmirror and gets the same results; the
//! 5.2 valid-flag race is shown closed.

use super::devmem::{DevmemOps, DevmemResource, HmmDevmem};
use super::migrate::{MigrateOps, migrate_vma};
use super::mirror::{DmaMap, HmmMirror, MirrorOps};
use super::vma::{hmm_vma_fault, hmm_vma_get_pfns};
use super::*;
use crate::dmirror::{Dmirror, DmirrorDevice, prot};
use crate::mm::frame::flags;
use crate::mm::migrate::MigratePfn;
use crate::mm::notify::{Event, Owner, Range};
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::pte::{Pte, SoftKind};
use crate::mm::space::{AddressSpace, FaultError, MapRequest};
use crate::mm::vma::Prot;
use crate::mm::{Error, Mm, SharedSpace};
use crate::pagemap::{MemoryKind, Pagemaps};
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::{Mutex, Once};

const PAGE: u64 = 4096;
const N: u64 = 16;
const OWNER: Owner = Owner(0x01d);

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

fn ints(s: &Arc<SharedSpace>, a: u64, n: u64) -> Vec<i32> {
    let mut b = alloc::vec![0u8; (n * 4) as usize];
    s.lock().read(a, &mut b).unwrap();
    b.chunks(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// A device driver of the old generations: device-private memory through `hmm_devmem`
/// (emulated by RAM backing frames, as dmirror's), a mirror with a device page table, and
/// migration through the callback `migrate_vma`.
struct OldDev {
    mm: Arc<Mm>,
    devmem: Once<Arc<HmmDevmem>>,
    free: Mutex<Vec<Pfn>>,
    freed: AtomicU64,
    /// Device page table: virtual page -> frame the device reads.
    pt: Mutex<BTreeMap<u64, Pfn>>,
    syncs: Mutex<Vec<(u64, u64, Event)>>,
    released: AtomicU64,
}

impl OldDev {
    fn new(pagemaps: &Arc<Pagemaps>, public: bool) -> Arc<OldDev> {
        let d = Arc::new(OldDev {
            mm: pagemaps.mm().clone(),
            devmem: Once::new(),
            free: Mutex::new(Vec::new()),
            freed: AtomicU64::new(0),
            pt: Mutex::new(BTreeMap::new()),
            syncs: Mutex::new(Vec::new()),
            released: AtomicU64::new(0),
        });
        let ops: Arc<dyn DevmemOps> = d.clone();
        let w = Arc::downgrade(&ops);
        let dm = if public {
            HmmDevmem::add_resource(pagemaps, w, OWNER, DevmemResource { bytes: 2 << 20, public: true }).unwrap()
        } else {
            HmmDevmem::add(pagemaps, w, OWNER, 2 << 20).unwrap()
        };
        for &(start, n) in dm.ranges() {
            d.free.lock().extend((0..n).rev().map(|k| Pfn(start.0 + k)));
        }
        d.devmem.call_once(|| dm);
        d
    }
    fn devmem(&self) -> &Arc<HmmDevmem> {
        self.devmem.get().unwrap()
    }
    fn backing(&self, p: Pfn) -> Pfn {
        self.devmem().page_get_drvdata(p).map_or(p, Pfn)
    }
}

impl DevmemOps for OldDev {
    fn free(&self, devmem: &HmmDevmem, page: Pfn) {
        let b = self.backing(page);
        if b != page {
            self.mm.put_page(b);
        }
        devmem.page_set_drvdata(page, 0);
        self.free.lock().push(page);
        self.freed.fetch_add(1, Ordering::Relaxed);
    }
    fn fault(&self, _devmem: &HmmDevmem, space: &mut AddressSpace, va: u64, page: Pfn) -> Result<(), FaultError> {
        let va = va & !(PAGE - 1);
        migrate_vma(&ToRam(self), space, (va, va + PAGE), OWNER, Some(page)).map_err(|_| FaultError::Bus)?;
        Ok(())
    }
}

impl MirrorOps for OldDev {
    fn sync_cpu_device_pagetables(&self, _m: &HmmMirror, update: &Range) -> bool {
        self.syncs.lock().push((update.start, update.end, update.event));
        let mut pt = self.pt.lock();
        let keys: Vec<u64> = pt.range(update.start / PAGE..update.end.div_ceil(PAGE)).map(|(k, _)| *k).collect();
        keys.iter().for_each(|k| {
            pt.remove(k);
        });
        true
    }
    fn release(&self, _m: &HmmMirror) {
        self.released.fetch_add(1, Ordering::Relaxed);
    }
}

struct ToDev<'a>(&'a OldDev);
struct ToRam<'a>(&'a OldDev);

impl MigrateOps for ToDev<'_> {
    fn alloc_and_copy(&self, _start: u64, src: &[MigratePfn], dst: &mut [MigratePfn]) {
        let d = self.0;
        for (s, t) in src.iter().zip(dst.iter_mut()) {
            let from = s.pfn();
            if !s.is_migrate() || from.is_some_and(|p| d.mm.meta(p).is_some_and(|m| m.has(flags::DEVICE))) {
                continue;
            }
            let Some(p) = d.free.lock().pop() else { continue };
            d.devmem().page_init(p).unwrap();
            let public = d.devmem().pagemap().kind() == MemoryKind::Coherent;
            let backing = if public { p } else { d.mm.alloc_page(0, 0, false).unwrap() };
            d.devmem().page_set_drvdata(p, backing.0);
            match from {
                Some(f) => d.mm.platform().copy(backing, f, 1),
                None => d.mm.platform().zero(backing, 1),
            }
            *t = MigratePfn::new(p).with_write(s.is_write());
        }
    }
    fn finalize_and_map(&self, start: u64, src: &[MigratePfn], dst: &[MigratePfn]) {
        let mut pt = self.0.pt.lock();
        for (i, (s, t)) in src.iter().zip(dst).enumerate() {
            if let (true, Some(p)) = (s.is_migrate(), t.pfn()) {
                pt.insert(start / PAGE + i as u64, self.0.backing(p));
            }
        }
    }
}

impl MigrateOps for ToRam<'_> {
    fn alloc_and_copy(&self, _start: u64, src: &[MigratePfn], dst: &mut [MigratePfn]) {
        let d = self.0;
        for (s, t) in src.iter().zip(dst.iter_mut()) {
            let Some(from) = s.pfn() else { continue };
            if !s.is_migrate() || !d.mm.meta(from).is_some_and(|m| m.has(flags::DEVICE)) {
                continue;
            }
            let r = d.mm.alloc_page(flags::ANON, 0, false).unwrap();
            d.mm.meta(r).unwrap().trylock();
            d.mm.platform().copy(r, d.backing(from), 1);
            *t = MigratePfn::new(r).with_write(s.is_write());
        }
    }
    fn finalize_and_map(&self, start: u64, src: &[MigratePfn], _dst: &[MigratePfn]) {
        let mut pt = self.0.pt.lock();
        for (i, s) in src.iter().enumerate() {
            if s.is_migrate() {
                pt.remove(&(start / PAGE + i as u64));
            }
        }
    }
}

/// The old-API words as dmirror snapshot bytes (device pages are this driver's own).
fn prot_of(fmt: &PfnFormat, w: u64) -> u8 {
    if w == fmt.values[HMM_PFN_ERROR] {
        return prot::ERROR;
    }
    if fmt.pfn(w).is_none() {
        return prot::NONE;
    }
    let dev = if fmt.is_device_private(w) { prot::DEV_PRIVATE_LOCAL } else { 0 };
    dev | if fmt.is_write(w) { prot::WRITE } else { prot::READ }
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

#[test]
fn old_api_driver_gives_the_modern_results() {
    for public in [false, true] {
        let (mm, pm) = setup();
        let old = OldDev::new(&pm, public);
        let kind = if public { MemoryKind::Coherent } else { MemoryKind::Private };
        let modern = DmirrorDevice::new(&pm, kind, Owner(0x11e3), 2 << 20);
        let (s_old, a) = process(&mm);
        let (s_new, b) = process(&mm);
        let d = Dmirror::open(&modern, &s_new).unwrap();
        let ops: Arc<dyn MirrorOps> = old.clone();
        let mirror = HmmMirror::register(&s_old, Arc::downgrade(&ops)).unwrap();
        let fmt = PfnFormat::HMM_PFN_T;

        // Device read (5.x range fault) against the modern read.
        let mut range = mirror.range_register(a, a + N * PAGE).unwrap();
        let mut w = alloc::vec![fmt.flags[HMM_PFN_VALID]; N as usize];
        assert!(range.wait_until_valid());
        assert_eq!(range.fault(&mut w, &fmt, true), Ok(N as usize));
        assert!(range.valid());
        let mut got = Vec::new();
        for &x in &w {
            let mut page = alloc::vec![0u8; PAGE as usize];
            mm.platform().read(fmt.pfn(x).unwrap().addr(), &mut page);
            got.extend(page);
        }
        let (want, _) = d.read(b, N).unwrap();
        assert_eq!(got, want, "device read");

        // Migration to the device (callback migrate_vma) and snapshots of both generations.
        assert_eq!(migrate_vma(&ToDev(&old), &mut s_old.lock(), (a, a + N * PAGE), OWNER, None), Ok(N as usize));
        assert_eq!(old.pt.lock().len(), N as usize, "finalize_and_map filled the device table");
        d.migrate_to_dev(b, N).unwrap();
        let (modern_snap, _) = d.snapshot(b, N).unwrap();
        let mut w414 = alloc::vec![0u64; N as usize];
        hmm_vma_get_pfns(&mut s_old.lock(), a, a + N * PAGE, &mut w414, &fmt).unwrap().done();
        assert!(range.wait_until_valid());
        assert_eq!(range.snapshot(&mut w, &fmt), Ok(N as usize));
        let mine: Vec<u8> = w.iter().map(|&x| prot_of(&fmt, x)).collect();
        let mine414: Vec<u8> = w414.iter().map(|&x| prot_of(&fmt, x)).collect();
        if public {
            // Coherent memory is mapped by ordinary entries: the old API has no flag for it.
            assert!(modern_snap.iter().all(|&x| x == prot::DEV_COHERENT_LOCAL | prot::WRITE));
            assert!(mine.iter().all(|&x| x == prot::WRITE));
        } else {
            assert_eq!(mine, modern_snap, "snapshot, 5.x");
            assert!(matches!(s_old.lock().lookup(a).unwrap().pte, Pte::Soft(x) if x.kind == SoftKind::DevicePrivate));
        }
        assert_eq!(mine414, mine, "snapshot, 4.14");
        if !public {
            // 4.14's hmm_vma_fault reports device memory as it is, never migrating it back.
            let mut f = alloc::vec![0u64; N as usize];
            hmm_vma_fault(&mut s_old.lock(), a, a + N * PAGE, &mut f, &fmt, false, true).unwrap().done();
            assert!(f.iter().all(|&x| fmt.is_device_private(x)));
            assert_eq!(old.freed.load(Ordering::Relaxed), 0);
            // A page under migration (an eviction in flight): -EAGAIN without block, -EBUSY with.
            let first = old.devmem().pfn_first();
            let ev = crate::mm::migrate::migrate_device_range(&mm, first, old.devmem().pfn_last().0 - first.0);
            let e = hmm_vma_fault(&mut s_old.lock(), a, a + N * PAGE, &mut f, &fmt, false, false);
            assert_eq!(e.unwrap_err(), LegacyError::Again);
            let e = hmm_vma_fault(&mut s_old.lock(), a, a + N * PAGE, &mut f, &fmt, false, true);
            assert_eq!(e.unwrap_err(), LegacyError::Busy);
            drop(ev); // declined: every page stays on the device
            assert!(old.pt.lock().is_empty(), "the eviction's invalidation reached sync_cpu_device_pagetables");
        }

        // A CPU write: the devmem fault callback migrates back (private); data as modern.
        for (s, va) in [(&s_old, a), (&s_new, b)] {
            s.lock().write(va + 8, &7i32.to_le_bytes()).unwrap();
        }
        if !public {
            assert_eq!(old.freed.load(Ordering::Relaxed), 1, "the faulted page went back to the driver");
            assert!(old.syncs.lock().iter().any(|&(st, _, e)| st <= a && e == Event::Migrate));
        }
        // Reading everything faults the other device pages back too (private).
        assert_eq!(ints(&s_old, a, N * 1024), ints(&s_new, b, N * 1024));

        // Back to RAM with migrate_vma, then the memory goes away.
        let back = migrate_vma(&ToRam(&old), &mut s_old.lock(), (a, a + N * PAGE), OWNER, None).unwrap();
        d.migrate_to_sys(b, N).unwrap();
        assert_eq!(back, if public { N as usize } else { 0 });
        assert_eq!(ints(&s_old, a, N * 1024), ints(&s_new, b, N * 1024));
        assert_eq!(old.freed.load(Ordering::Relaxed), N);
        assert!(old.pt.lock().is_empty());
        old.devmem().remove().unwrap();
        drop(range);
        drop(d);
        drop(s_new);
        drop(s_old);
        assert_eq!(old.released.load(Ordering::Relaxed), 1, "release on teardown");
        drop(mirror);
    }
}

/// A process with `N` written pages and an old-API driver mirroring it.
fn mirrored() -> (Arc<Mm>, Arc<OldDev>, Arc<SharedSpace>, u64, Arc<HmmMirror>) {
    let (mm, pm) = setup();
    let old = OldDev::new(&pm, false);
    let (s, a) = process(&mm);
    let ops: Arc<dyn MirrorOps> = old.clone();
    let mirror = HmmMirror::register(&s, Arc::downgrade(&ops)).unwrap();
    (mm, old, s, a, mirror)
}

#[test]
fn mirror_range_valid_closes_the_flag_race() {
    let (_mm, _old, s, a, mirror) = mirrored();
    let fmt = PfnFormat::HMM_PFN_T;
    let mut range = mirror.range_register(a, a + N * PAGE).unwrap();
    let mut w = alloc::vec![fmt.flags[HMM_PFN_VALID]; N as usize];
    assert!(range.wait_until_valid());
    range.fault(&mut w, &fmt, true).unwrap();
    // A whole invalidation (start and end) between wait_until_valid and the valid check:
    s.lock().munmap(a, PAGE).unwrap();
    assert!(range.flag(), "the 5.2 flag is set again: it would have let the stale entry through");
    assert!(!range.valid(), "the sequence number sees the invalidation");
    // The driver starts again; the unmapped page now faults with -EFAULT.
    assert!(range.wait_until_valid());
    w.iter_mut().for_each(|x| *x = fmt.flags[HMM_PFN_VALID]);
    assert_eq!(range.fault(&mut w, &fmt, true), Err(LegacyError::Fault));
    let mut snap = alloc::vec![0u64; N as usize];
    assert_eq!(range.snapshot(&mut snap, &fmt), Ok(N as usize - 1));
    assert!(range.valid());
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
    let (mm, _old, s, a, mirror) = mirrored();
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
