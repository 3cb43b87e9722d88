//! Unit tests of the dmirror device beyond the acceptance suite: what its table records (write
//! and atomic bits, and so what the device may do), the bounds of the fault retry loop, the
//! commands' argument checks and snapshot bytes, each written so that a plausible slip in
//! `dmirror.rs` makes one of them fail.

use super::*;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::space::{Advice, MapRequest};
use crate::mm::vma::Prot;

const KINDS: [MemoryKind; 2] = [MemoryKind::Private, MemoryKind::Coherent];

struct Fixture {
    mm: Arc<Mm>,
    dev: Arc<DmirrorDevice>,
    space: Arc<SharedSpace>,
    d: Arc<Dmirror>,
}

/// A fake machine of 64 MiB, one device of `kind` adding 2 MiB at a time, a process and a
/// file of the device opened for it.
fn fixture(kind: MemoryKind) -> Fixture {
    let frames = 16 * 1024;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    let dev = DmirrorDevice::new(&Pagemaps::install(&mm).unwrap(), kind, Owner(0xd0), 2 << 20);
    let space = mm.share(AddressSpace::new(&mm).unwrap());
    let d = Dmirror::open(&dev, &space).unwrap();
    Fixture { mm, dev, space, d }
}

impl Fixture {
    /// `n` pages of anonymous memory, page `k` filled with byte `k + 1`.
    fn pages(&self, n: u64, prot: Prot) -> u64 {
        let a = self.space.lock().mmap(MapRequest::anon(n * PAGE, Prot::RW)).unwrap();
        for k in 0..n {
            self.space.lock().write(a + k * PAGE, &[k as u8 + 1; PAGE as usize]).unwrap();
        }
        self.space.lock().mprotect(a, n * PAGE, prot).unwrap();
        a
    }

    fn cpu(&self, va: u64) -> Vec<u8> {
        let mut b = alloc::vec![0u8; PAGE as usize];
        self.space.lock().read(va, &mut b).unwrap();
        b
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.d.close().unwrap();
        self.dev.release().unwrap();
        let _ = &self.mm;
    }
}

/// A read-only page is read-only on the device too, whether the device mapped it by a fault,
/// by migrating it, or (already in device memory) again after a migration: device writes are
/// refused and change nothing.
#[test]
fn read_only_pages_stay_read_only_on_the_device() {
    for kind in KINDS {
        let f = fixture(kind);
        let a = f.pages(3, Prot::READ);
        // Page 0 by a device fault, pages 1-2 by migration.
        assert_eq!(f.d.read(a, 1).unwrap().0, [1; PAGE as usize], "{kind:?}");
        f.d.migrate_to_dev(a + PAGE, 2).unwrap();
        for k in 0..3 {
            let r = f.d.write(a + k * PAGE, &[0xee; PAGE as usize]);
            assert!(r.is_err(), "{kind:?}: device write to read-only page {k} succeeded");
        }
        // Migrated again, pages 1-2 move nowhere: the migration's invalidation erased them and
        // `map_local` maps them again, still read-only.
        f.d.migrate_to_dev(a + PAGE, 2).unwrap();
        for k in 1..3 {
            assert!(f.d.write(a + k * PAGE, &[0xee; PAGE as usize]).is_err(), "{kind:?}: page {k} after map_local");
            assert_eq!(f.d.read(a + k * PAGE, 1).unwrap().0, [k as u8 + 1; PAGE as usize], "{kind:?}: page {k}");
        }
        for k in 0..3 {
            assert_eq!(f.cpu(a + k * PAGE), [k as u8 + 1; PAGE as usize], "{kind:?}: page {k}");
        }
    }
}

/// Writable pages are writable on the device by every way in: a write fault, a migration, and
/// `map_local` after a migration that found them on the device already. Those ways make no
/// device fault (`faults == 0`) where the table has the entry.
#[test]
fn writable_pages_are_writable_on_the_device() {
    for kind in KINDS {
        let f = fixture(kind);
        let a = f.pages(2, Prot::RW);
        let c = f.d.write(a, &[9; PAGE as usize]).unwrap();
        assert_eq!(c, Counts { cpages: 1, faults: 1 }, "{kind:?}");
        f.d.migrate_to_dev(a + PAGE, 1).unwrap();
        let c = f.d.write(a + PAGE, &[10; PAGE as usize]).unwrap();
        assert_eq!(c.faults, 0, "{kind:?}: the migrated page was not mapped writable");
        // Already on the device: the migration's invalidation erased it, map_local maps it.
        f.d.migrate_to_dev(a, 2).unwrap();
        let c = f.d.write(a, &[11; 2 * PAGE as usize]).unwrap();
        assert_eq!(c.faults, 0, "{kind:?}: pages mapped again were not writable");
        assert_eq!(f.cpu(a), [11; PAGE as usize], "{kind:?}");
        assert_eq!(f.cpu(a + PAGE), [11; PAGE as usize], "{kind:?}");
    }
}

/// Only device-exclusive access makes atomic entries: a device fault does not, exclusive
/// access does (CHECK_EXCLUSIVE then refuses), and a CPU access that revokes it erases them.
#[test]
fn only_exclusive_access_makes_atomic_entries() {
    for kind in KINDS {
        let f = fixture(kind);
        let a = f.pages(2, Prot::RW);
        f.d.write(a, &[3; 2 * PAGE as usize]).unwrap();
        assert_eq!(f.d.check_exclusive(a, 2), Ok(()), "{kind:?}: a device fault made an atomic entry");
        let (m, c) = f.d.exclusive(a, 2).unwrap();
        assert_eq!((m, c.cpages), (alloc::vec![3; 2 * PAGE as usize], 2), "{kind:?}");
        assert_eq!(f.d.check_exclusive(a, 2).map_err(|e| e.errno), Err(EPERM), "{kind:?}");
        assert_eq!(f.d.check_exclusive(a + PAGE, 1).map_err(|e| e.errno), Err(EPERM), "{kind:?}");
        assert_eq!(f.cpu(a), [3; PAGE as usize], "{kind:?}");
        // The CPU took page 0 back; page 1 is still exclusive.
        assert_eq!(f.d.check_exclusive(a, 1), Ok(()), "{kind:?}");
        assert_eq!(f.d.check_exclusive(a, 2).map_err(|e| e.errno), Err(EPERM), "{kind:?}");
    }
}

/// A device fault invalidated after every range fault (from the hook) gives up after
/// [`FAULT_RETRIES`] rounds with `EBUSY`, committing nothing; without the invalidations the
/// same read succeeds.
#[test]
fn a_fault_invalidated_every_round_gives_up_with_ebusy() {
    use core::sync::atomic::AtomicU32;
    for kind in KINDS {
        let f = fixture(kind);
        let a = f.pages(1, Prot::RW);
        let other = f.pages(1, Prot::RW);
        let rounds = Arc::new(AtomicU32::new(0));
        let (space, r) = (Arc::downgrade(&f.space), rounds.clone());
        f.d.set_fault_hook(Some(alloc::boxed::Box::new(move |_, _| {
            r.fetch_add(1, Ordering::Relaxed);
            // Any invalidation of the file's interval (the whole address space) will do.
            space.upgrade().is_some_and(|s| s.lock().madvise(other, PAGE, Advice::DontNeed).is_ok())
        })));
        let e = f.d.read(a, 1).map(|_| ()).unwrap_err();
        assert_eq!(e.errno, EBUSY, "{kind:?}: {e}");
        assert_eq!(rounds.load(Ordering::Relaxed), FAULT_RETRIES, "{kind:?}");
        f.d.set_fault_hook(None);
        assert_eq!(f.d.read(a, 1).unwrap().0, [1; PAGE as usize], "{kind:?}");
    }
}

/// Every command checks its range as dmirror's ioctl does: page-aligned, at least one page,
/// within the address space; a write takes whole pages.
#[test]
fn commands_check_their_range() {
    let f = fixture(MemoryKind::Private);
    let a = f.pages(1, Prot::RW);
    let bad = [(a + 1, 1), (a, 0), (USER_END - PAGE, 2), (a, u64::MAX / 2)];
    for (addr, n) in bad {
        let what = alloc::format!("{addr:#x} x {n}");
        assert_eq!(f.d.read(addr, n).map(|_| ()).unwrap_err().errno, EINVAL, "read {what}");
        assert_eq!(f.d.migrate_to_dev(addr, n).map(|_| ()).unwrap_err().errno, EINVAL, "to dev {what}");
        assert_eq!(f.d.migrate_to_sys(addr, n).map(|_| ()).unwrap_err().errno, EINVAL, "to sys {what}");
        assert_eq!(f.d.snapshot(addr, n).map(|_| ()).unwrap_err().errno, EINVAL, "snapshot {what}");
        assert_eq!(f.d.exclusive(addr, n).map(|_| ()).unwrap_err().errno, EINVAL, "exclusive {what}");
        assert_eq!(f.d.check_exclusive(addr, n).unwrap_err().errno, EINVAL, "check {what}");
    }
    assert_eq!(f.d.write(a + 1, &[0; PAGE as usize]).unwrap_err().errno, EINVAL);
    assert_eq!(f.d.write(a, &[0; 100]).unwrap_err().errno, EINVAL);
    assert_eq!(f.d.write(a, &[]).unwrap_err().errno, EINVAL);
    // The last page of the address space is a valid range (unmapped here: EFAULT).
    assert_eq!(f.d.read(USER_END - PAGE, 1).map(|_| ()).unwrap_err().errno, EFAULT);
}

/// Snapshot bytes of a THP in RAM, of the huge zero page, of a device THP and after
/// mprotect: the level bit and the protection bits follow the CPU mapping.
#[test]
fn snapshot_bytes_follow_the_cpu_mapping() {
    for kind in KINDS {
        let f = fixture(kind);
        let m = f.space.lock().mmap(MapRequest::anon(2 * PMD_SIZE, Prot::RW)).unwrap();
        let a = m.next_multiple_of(PMD_SIZE);
        f.space.lock().madvise(a, PMD_SIZE, Advice::HugePage).unwrap();
        let n = PMD_SIZE / PAGE;
        // Read first: the huge zero page.
        f.cpu(a);
        let (s, _) = f.d.snapshot(a, n).unwrap();
        assert!(s.iter().all(|&b| b == prot::ZERO | prot::READ | prot::PMD), "{kind:?}: huge zero {:#x}", s[0]);
        f.space.lock().write(a, &[1]).unwrap();
        let (s, _) = f.d.snapshot(a, n).unwrap();
        assert!(s.iter().all(|&b| b == prot::WRITE | prot::PMD), "{kind:?}: THP {:#x}", s[0]);
        f.d.migrate_to_dev(a, n).unwrap();
        let local = match kind {
            MemoryKind::Private => prot::DEV_PRIVATE_LOCAL,
            MemoryKind::Coherent => prot::DEV_COHERENT_LOCAL,
        };
        let (s, _) = f.d.snapshot(a, n).unwrap();
        assert!(s.iter().all(|&b| b == local | prot::WRITE | prot::PMD), "{kind:?}: device THP {:#x}", s[0]);
        f.space.lock().mprotect(a, PMD_SIZE, Prot::READ).unwrap();
        let (s, _) = f.d.snapshot(a, 1).unwrap();
        assert_eq!(s, [local | prot::READ | prot::PMD], "{kind:?}: read-only device THP");
        // A base page next to it, never touched: nothing mapped.
        let (s, _) = f.d.snapshot(a + PMD_SIZE, 1).unwrap();
        assert_eq!(s, [prot::NONE], "{kind:?}: untouched page");
    }
}

/// madvise(MADV_NOHUGEPAGE) on part of a device THP (found by `hmm::stress`, seed 0x7e6): the
/// VMA splits inside the 2 MiB block, and a later device fault that brings the device THP home
/// must still succeed (the block's migration cannot cover both VMAs at once).
#[test]
fn partial_nohugepage_over_a_device_thp_still_faults_home() {
    let frames = 16 * 1024;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    let pm = Pagemaps::install(&mm).unwrap();
    let dev0 = DmirrorDevice::new(&pm, MemoryKind::Private, Owner(0xd0), 2 << 20);
    let dev1 = DmirrorDevice::new(&pm, MemoryKind::Private, Owner(0xd1), 2 << 20);
    let space = mm.share(AddressSpace::new(&mm).unwrap());
    let (f0, f1) = (Dmirror::open(&dev0, &space).unwrap(), Dmirror::open(&dev1, &space).unwrap());
    let a = 0x4060_0000;
    {
        let mut s = space.lock();
        s.mmap(MapRequest::anon(PMD_SIZE, Prot::RW).fixed(a)).unwrap();
        s.madvise(a, PMD_SIZE, Advice::HugePage).unwrap();
        for k in 0..512u64 {
            s.write(a + k * PAGE, &(k as u32 + 1).to_le_bytes()).unwrap();
        }
    }
    f1.migrate_to_dev(a, 512).unwrap();
    space.lock().madvise(a + 0xc5 * PAGE, 14 * PAGE, Advice::NoHugePage).unwrap();
    let (buf, _) = f0.read(a + 0xde * PAGE, 3).unwrap();
    for k in 0..3usize {
        let v = u32::from_le_bytes(buf[k * PAGE as usize..][..4].try_into().unwrap());
        assert_eq!(v, 0xde + k as u32 + 1, "page {k}");
    }
    drop((f0, f1));
}

/// Where each of `n` pages from `a` is: true when the CPU page table has it in RAM.
fn in_ram(f: &Fixture, a: u64, n: u64) -> Vec<bool> {
    let s = f.space.lock();
    (0..n).map(|k| matches!(s.lookup(a + k * PAGE).map(|e| e.pte), Some(crate::mm::pte::Pte::Present(_)))).collect()
}

/// A CPU fault on a device-private page brings back that page alone (test_hmm's choice), or
/// the device's pages in the window a placement policy set for the address space, clipped to
/// the VMA; the window is the policy's for the faults inside it only.
#[test]
fn a_cpu_fault_migrates_the_window_the_policy_set() {
    let f = fixture(MemoryKind::Private);
    let a = f.pages(8, Prot::RW);
    f.d.migrate_to_dev(a, 8).unwrap();
    assert_eq!(f.cpu(a + PAGE), [2; PAGE as usize]);
    assert_eq!(in_ram(&f, a, 8), [false, true, false, false, false, false, false, false]);
    // Pages 2..6 for a fault inside; the window reaches past the VMA's start, which clips it.
    f.space.lock().set_fault_window(Some((a - 4 * PAGE, a + 6 * PAGE)));
    assert_eq!(f.cpu(a + 3 * PAGE), [4; PAGE as usize]);
    assert_eq!(in_ram(&f, a, 8), [true, true, true, true, true, true, false, false]);
    // A fault outside the window: the page alone.
    assert_eq!(f.space.lock().fault_window(a + 7 * PAGE), None);
    assert_eq!(f.cpu(a + 7 * PAGE), [8; PAGE as usize]);
    assert_eq!(in_ram(&f, a, 8), [true, true, true, true, true, true, false, true]);
    f.space.lock().set_fault_window(None);
    assert_eq!(f.space.lock().fault_window(a + 6 * PAGE), None);
}
