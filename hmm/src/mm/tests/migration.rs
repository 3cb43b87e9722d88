//! Host tests of device migration (`mm/migrate.rs`) against the dmirror test device: the
//! entries rebuilt after a migration, faults that meet migration entries, fork during an
//! eviction, and the deviations from Linux 6.1 that the migration code once had.

use crate::addr::Pfn;
use crate::dmirror::{Dmirror, DmirrorDevice};
use crate::mm::migrate::{DeviceMigration, MigrateArgs, MigratePfn, Select, migrate_device_range};
use crate::mm::notify::{Event, Notifier, Owner, Range};
use crate::mm::pagetable::PMD_SIZE;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform, MIGRATION_WAIT_ROUNDS};
use crate::mm::pte::{Pte, Soft, SoftKind};
use crate::mm::space::{
    Access, AddressSpace, Advice, FaultError, MapRequest, RemapFlags, fault_shared, with_migration_wait,
};
use crate::mm::vma::Prot;
use crate::mm::{Mm, SharedSpace, frame::flags};
use crate::pagemap::{MemoryKind, Pagemaps};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use spin::Mutex;

const PAGE: u64 = 4096;
const FRAMES: usize = 16 * 1024;
const OWNER: Owner = Owner(0xd00d);

pub(super) struct Dev {
    pub plat: Arc<FakePlatform>,
    pub mm: Arc<Mm>,
    pub dev: Arc<DmirrorDevice>,
    pub space: Arc<SharedSpace>,
    pub d: Arc<Dmirror>,
}

pub(super) fn device(kind: MemoryKind) -> Dev {
    let plat = Arc::new(FakePlatform::new(FRAMES));
    let mm = Mm::new(plat.clone(), &[(Pfn(BASE_PFN), FRAMES as u64)]).unwrap();
    let pm = Pagemaps::install(&mm).unwrap();
    let dev = DmirrorDevice::new(&pm, kind, OWNER, 2 << 20);
    let space = mm.share(AddressSpace::new(&mm).unwrap());
    let d = Dmirror::open(&dev, &space).unwrap();
    Dev { plat, mm, dev, space, d }
}

impl Dev {
    /// Maps `pages` of private anonymous memory with `prot` and writes `tag + i` in page `i`.
    fn mapped(&self, pages: u64, prot: Prot, tag: u32) -> u64 {
        let mut s = self.space.lock();
        let a = s.mmap(MapRequest::anon(pages * PAGE, prot)).unwrap();
        if prot.write() {
            for i in 0..pages {
                s.write(a + i * PAGE, &(tag + i as u32).to_le_bytes()).unwrap();
            }
        }
        a
    }
    fn lookup(&self, va: u64) -> Pte {
        self.space.lock().lookup(va).map_or(Pte::None, |e| e.pte)
    }
    fn get_u32(&self, va: u64) -> Result<u32, FaultError> {
        let mut b = [0; 4];
        self.space.lock().read(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn on_device(&self, va: u64) -> bool {
        match self.lookup(va) {
            Pte::Soft(s) => s.kind == SoftKind::DevicePrivate,
            Pte::Present(p) => self.mm.meta(p.pfn).is_some_and(|m| m.has(flags::DEVICE)),
            _ => false,
        }
    }
}

/// How the page comes back from device memory.
#[derive(Debug, Clone, Copy)]
enum Back {
    /// `HMM_DMIRROR_MIGRATE_TO_SYS` (`migrate_vma_*`).
    ToSys,
    /// Device release (`migrate_device_range`, the remap-after-migration path).
    Release,
}

fn bring_back(dv: &Dev, a: u64, n: u64, how: Back) {
    match how {
        Back::ToSys => {
            dv.d.migrate_to_sys(a, n).unwrap();
        }
        Back::Release => dv.dev.release().unwrap(),
    }
}

/// A page migrated to the device, then made PROT_NONE, comes back inaccessible: the entry
/// rebuilt after the migration follows the mapping as it is now, not the bits saved when the
/// migration entry was made.
#[test]
fn entry_rebuilt_after_migration_follows_prot_none() {
    for (kind, how) in [
        (MemoryKind::Private, Back::ToSys),
        (MemoryKind::Private, Back::Release),
        (MemoryKind::Coherent, Back::Release),
    ] {
        let dv = device(kind);
        let a = dv.mapped(2, Prot::RW, 40);
        dv.d.migrate_to_dev(a, 2).unwrap();
        assert!(dv.on_device(a), "{kind:?}");
        dv.space.lock().mprotect(a, 2 * PAGE, Prot::NONE).unwrap();
        bring_back(&dv, a, 2, how);
        assert!(!dv.on_device(a), "{kind:?} {how:?}: the page came back");
        match dv.lookup(a) {
            Pte::Soft(Soft { kind: SoftKind::ProtNone, .. }) => {}
            other => panic!("{kind:?} {how:?}: PROT_NONE page came back as {other:?}"),
        }
        assert_eq!(dv.space.lock().fault(a, Access::Read), Err(FaultError::Protection));
        assert_eq!(dv.get_u32(a), Err(FaultError::Protection), "{kind:?} {how:?}");
        // Access given back: the data is there, and writes work.
        dv.space.lock().mprotect(a, 2 * PAGE, Prot::RW).unwrap();
        assert_eq!(dv.get_u32(a + PAGE), Ok(41), "{kind:?} {how:?}");
        dv.space.lock().write(a, &7u32.to_le_bytes()).unwrap();
        assert_eq!(dv.get_u32(a), Ok(7));
    }
}

/// Exec is the mapping's: a page migrated while executable, made non-executable on the device,
/// comes back non-executable (and the reverse).
#[test]
fn entry_rebuilt_after_migration_follows_exec() {
    for (kind, how) in [
        (MemoryKind::Private, Back::ToSys),
        (MemoryKind::Private, Back::Release),
        (MemoryKind::Coherent, Back::Release),
    ] {
        for (before, after) in [(Prot::RW | Prot::EXEC, Prot::RW), (Prot::RW, Prot::RW | Prot::EXEC)] {
            let dv = device(kind);
            let a = dv.mapped(1, before, 40);
            dv.d.migrate_to_dev(a, 1).unwrap();
            dv.space.lock().mprotect(a, PAGE, after).unwrap();
            bring_back(&dv, a, 1, how);
            match dv.lookup(a) {
                Pte::Present(p) => {
                    assert!(!dv.mm.meta(p.pfn).unwrap().has(flags::DEVICE), "{kind:?} {how:?}");
                    assert_eq!(p.exec, after.exec(), "{kind:?} {how:?}: {before:?} -> {after:?}");
                }
                other => panic!("{kind:?} {how:?}: {other:?}"),
            }
            assert_eq!(dv.get_u32(a), Ok(40));
        }
    }
}

/// The device page mapped at `va` (private or coherent).
fn device_pfn(dv: &Dev, va: u64) -> Pfn {
    assert!(dv.on_device(va), "{va:#x} is not on the device");
    dv.lookup(va).pfn().unwrap()
}

/// The driver's half of an eviction started with `migrate_device_range` (coherent pages,
/// whose frame is their storage): copy each page to RAM, commit, finalize.
fn finish_eviction(mm: &Mm, mut mig: DeviceMigration<'_>) {
    for i in 0..mig.src().len() {
        let s = mig.src()[i];
        let (Some(p), true) = (s.pfn(), s.is_migrate()) else { continue };
        let d = mm.alloc_page(flags::ANON, 0, false).unwrap();
        assert!(mm.meta(d).unwrap().trylock());
        mm.platform().copy(d, p, 1);
        mig.dst_mut()[i] = MigratePfn::new(d).with_write(s.is_write());
    }
    mig.pages();
    mig.finalize();
}

/// A coherent device with page `a` (value 40) on it and an eviction of that page started:
/// its entry is a migration entry until the eviction is finished.
fn eviction_pending(dv: &Dev) -> (u64, &'static Mm, Arc<Mutex<Option<DeviceMigration<'static>>>>) {
    let a = dv.mapped(1, Prot::RW, 40);
    dv.d.migrate_to_dev(a, 1).unwrap();
    let pfn = device_pfn(dv, a);
    // The eviction outlives this frame in the platform's hook: give it a memory manager that
    // lives as long as the test process.
    let mm: &'static Mm = Box::leak(Box::new(dv.mm.clone()));
    let mig = migrate_device_range(mm, pfn, 1);
    assert!(mig.src()[0].is_migrate());
    assert!(matches!(dv.lookup(a), Pte::Soft(Soft { kind: SoftKind::Migration, .. })));
    (a, mm, Arc::new(Mutex::new(Some(mig))))
}

/// The hook that finishes the pending eviction at the first wait.
fn finish_at_first_wait(dv: &Dev, mm: &'static Mm, mig: &Arc<Mutex<Option<DeviceMigration<'static>>>>) {
    let mig = mig.clone();
    dv.plat.migration_hook.set(move |round| {
        assert_eq!(round, 1, "the fault waits once");
        if let Some(m) = mig.lock().take() {
            finish_eviction(mm, m);
        }
    });
}

/// A CPU fault on a page being evicted from device memory waits for the eviction (with the
/// address space unlocked, so the eviction can put the new page in) and faults again.
#[test]
fn cpu_fault_meeting_an_eviction_waits_and_refaults() {
    let dv = device(MemoryKind::Coherent);
    let (a, mm, mig) = eviction_pending(&dv);
    // Under the lock the fault can only report it.
    assert_eq!(dv.space.lock().fault(a, Access::Write), Err(FaultError::Migrating));
    finish_at_first_wait(&dv, mm, &mig);
    assert_eq!(fault_shared(&dv.space, a, Access::Write), Ok(()));
    assert_eq!(dv.plat.migration_waits.load(Ordering::Relaxed), 1);
    assert!(mig.lock().is_none(), "the eviction finished in the wait");
    assert!(!dv.on_device(a));
    assert!(matches!(dv.lookup(a), Pte::Present(p) if p.write), "{:?}", dv.lookup(a));
    let mut b = [0; 4];
    with_migration_wait(&dv.space, |s| s.read(a, &mut b)).unwrap();
    assert_eq!(u32::from_le_bytes(b), 40);
}

/// A device fault (`hmm_range_fault`) on a page being evicted waits for the eviction too,
/// instead of returning `Busy` to the driver until its retries run out.
#[test]
fn range_fault_meeting_an_eviction_waits_and_refaults() {
    let dv = device(MemoryKind::Coherent);
    let (a, mm, mig) = eviction_pending(&dv);
    finish_at_first_wait(&dv, mm, &mig);
    let (data, _) = dv.d.read(a, 1).unwrap();
    assert_eq!(u32::from_le_bytes(data[..4].try_into().unwrap()), 40);
    assert_eq!(dv.plat.migration_waits.load(Ordering::Relaxed), 1);
    assert!(mig.lock().is_none(), "the eviction finished in the wait");
    assert!(!dv.on_device(a));
}

/// A migration that never finishes: the wait is bounded and ends in a typed error.
#[test]
fn a_fault_waiting_on_a_stuck_migration_times_out() {
    let dv = device(MemoryKind::Coherent);
    let (a, mm, mig) = eviction_pending(&dv);
    assert_eq!(fault_shared(&dv.space, a, Access::Read), Err(FaultError::MigrationTimeout));
    assert_eq!(dv.plat.migration_waits.load(Ordering::Relaxed), u64::from(MIGRATION_WAIT_ROUNDS) + 1);
    assert!(dv.d.read(a, 1).is_err(), "the device fault gives up too");
    // Once the migration ends, the page is reachable again.
    finish_eviction(mm, mig.lock().take().unwrap());
    assert_eq!(dv.get_u32(a), Ok(40));
}

/// A CPU fault on a device-private page that someone else holds locked (a migration of it in
/// progress) waits for the lock and migrates it back once it is free.
#[test]
fn cpu_fault_on_a_locked_device_private_page_waits() {
    let dv = device(MemoryKind::Private);
    let a = dv.mapped(1, Prot::RW, 40);
    dv.d.migrate_to_dev(a, 1).unwrap();
    let pfn = device_pfn(&dv, a);
    let mm = dv.mm.clone();
    assert!(mm.meta(pfn).unwrap().trylock());
    dv.plat.migration_hook.set(move |round| {
        if round == 2 {
            mm.meta(pfn).unwrap().unlock();
        }
    });
    assert_eq!(fault_shared(&dv.space, a, Access::Read), Ok(()));
    assert_eq!(dv.plat.migration_waits.load(Ordering::Relaxed), 2);
    assert!(!dv.on_device(a));
    assert_eq!(dv.get_u32(a), Ok(40));
}

/// Fork during an eviction copies the migration entries (`copy_nonpresent_pte`): a writable
/// one becomes read-only in parent and child, and the eviction puts the new page in both, a
/// copy-on-write pair.
#[test]
fn fork_copies_migration_entries_and_the_eviction_finishes_both() {
    for child_first in [false, true] {
        let dv = device(MemoryKind::Coherent);
        let (a, mm, mig) = eviction_pending(&dv);
        let child = dv.space.lock().fork().expect("fork during a migration");
        let child = dv.mm.share(child);
        for s in [&dv.space, &child] {
            match s.lock().lookup(a).map(|e| e.pte) {
                Some(Pte::Soft(m)) => assert!(m.kind == SoftKind::Migration && !m.write, "{m:?}"),
                other => panic!("{other:?}"),
            }
        }
        if child_first {
            // The child goes away before the eviction ends.
            drop(child);
            finish_eviction(mm, mig.lock().take().unwrap());
            let Pte::Present(p) = dv.lookup(a) else { panic!("{:?}", dv.lookup(a)) };
            let m = dv.mm.meta(p.pfn).unwrap();
            assert!(!m.has(flags::DEVICE));
            assert_eq!((m.refcount(), m.mapcount()), (1, 1));
            assert_eq!(dv.get_u32(a), Ok(40));
            continue;
        }
        finish_eviction(mm, mig.lock().take().unwrap());
        let (Pte::Present(p), Some(Pte::Present(c))) = (dv.lookup(a), child.lock().lookup(a).map(|e| e.pte)) else {
            panic!("not both present: {:?}", dv.lookup(a))
        };
        assert_eq!(p.pfn, c.pfn, "parent and child share the new page");
        assert!(!p.write && !c.write, "copy-on-write");
        let m = dv.mm.meta(p.pfn).unwrap();
        assert!(!m.has(flags::DEVICE));
        assert_eq!((m.refcount(), m.mapcount()), (2, 2));
        child.lock().write(a, &99u32.to_le_bytes()).unwrap();
        assert_eq!(dv.get_u32(a), Ok(40), "the parent does not see the child's write");
        let mut b = [0; 4];
        child.lock().read(a, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 99);
        dv.space.lock().write(a, &41u32.to_le_bytes()).unwrap();
        assert_eq!(dv.get_u32(a), Ok(41));
    }
}

/// mremap while an eviction is in flight (`migrate_device_range` drops each address space's
/// lock, so the range can move between collect and finalize, as Linux's mremap can run while
/// `migrate_device_range` holds only the page lock): the migration entry moves with the
/// mapping, and the finalize replaces it where it is now (Linux finds it through the reverse
/// map), so the page comes back to RAM at the new address with its data. It used to look only
/// at the old address: the new one kept the migration entry for ever (every access waited
/// until `MigrationTimeout`) and the data was lost.
#[test]
fn an_eviction_finishes_where_mremap_moved_its_migration_entry() {
    for dont_unmap in [false, true] {
        let dv = device(MemoryKind::Coherent);
        let (a, mm, mig) = eviction_pending(&dv);
        let pfn = dv.lookup(a).pfn().unwrap();
        let to = a + (256 << 20);
        let how = RemapFlags { may_move: true, fixed: true, dont_unmap };
        assert_eq!(dv.space.lock().mremap(a, PAGE, PAGE, how, to), Ok(to));
        assert!(matches!(dv.lookup(to), Pte::Soft(Soft { kind: SoftKind::Migration, .. })), "{:?}", dv.lookup(to));
        assert_eq!(dv.lookup(a), Pte::None);
        finish_eviction(mm, mig.lock().take().unwrap());
        let Pte::Present(p) = dv.lookup(to) else {
            panic!("dont_unmap {dont_unmap}: the moved entry was not replaced: {:?}", dv.lookup(to))
        };
        assert!(p.write, "dont_unmap {dont_unmap}");
        let m = dv.mm.meta(p.pfn).unwrap();
        assert!(!m.has(flags::DEVICE) && !m.has(flags::LOCKED), "dont_unmap {dont_unmap}");
        assert_eq!((m.refcount(), m.mapcount()), (1, 1), "dont_unmap {dont_unmap}");
        assert_eq!(dv.get_u32(to), Ok(40), "dont_unmap {dont_unmap}");
        assert_eq!(dv.lookup(a), Pte::None, "dont_unmap {dont_unmap}");
        assert_eq!(dv.mm.meta(pfn).unwrap().refcount(), 0, "the device page is free");
        assert_eq!(dv.dev.pages_in_use(), 0, "dont_unmap {dont_unmap}");
        dv.space.lock().write(to, &41u32.to_le_bytes()).unwrap();
        assert_eq!(dv.get_u32(to), Ok(41));
    }
}

/// A notifier that, at the first migration invalidation of its address space, moves a page of
/// another address space with mremap (what another thread of that process can do while an
/// eviction holds no address-space lock).
struct MoveAtMigrate {
    space: Arc<SharedSpace>,
    from: u64,
    to: u64,
    moved: core::sync::atomic::AtomicBool,
}

impl Notifier for MoveAtMigrate {
    fn invalidate_start(&self, r: &Range) -> bool {
        if r.event == Event::Migrate && !self.moved.swap(true, Ordering::Relaxed) {
            let how = RemapFlags { may_move: true, fixed: true, dont_unmap: false };
            assert_eq!(self.space.lock().mremap(self.from, PAGE, PAGE, how, self.to), Ok(self.to));
        }
        true
    }
    fn invalidate_end(&self, _: &Range) {}
    fn as_any(&self) -> &dyn core::any::Any {
        self
    }
}

/// The same when `migrate_device_range` backs out (a mapping it cannot replace) after an
/// mremap moved one it had replaced: the page is restored where the entry is now. The device
/// page is mapped by the parent (replaced first), a shared child (whose invalidation moves the
/// parent's entry) and a child the eviction cannot reach, so it gives up.
#[test]
fn an_eviction_backing_out_restores_the_entry_mremap_moved() {
    let dv = device(MemoryKind::Coherent);
    let a = dv.mapped(1, Prot::RW, 40);
    dv.d.migrate_to_dev(a, 1).unwrap();
    let pfn = device_pfn(&dv, a);
    let to = a + (256 << 20);
    let reachable = dv.mm.share(dv.space.lock().fork().unwrap());
    let hook = Arc::new(MoveAtMigrate { space: dv.space.clone(), from: a, to, moved: Default::default() });
    reachable.lock().set_notifier(Some(hook.clone()));
    let unreachable = dv.space.lock().fork().unwrap();
    assert_eq!(dv.mm.meta(pfn).unwrap().rmap()[0].space, dv.space.lock().id(), "the parent is replaced first");
    let mig = migrate_device_range(&dv.mm, pfn, 1);
    assert!(hook.moved.load(Ordering::Relaxed), "the mremap ran during the eviction");
    assert!(!mig.src()[0].is_migrate(), "{:?}", mig.src()[0]);
    mig.finalize();
    assert_eq!(dv.lookup(a), Pte::None);
    assert!(matches!(dv.lookup(to), Pte::Present(p) if p.pfn == pfn), "not restored: {:?}", dv.lookup(to));
    let m = dv.mm.meta(pfn).unwrap();
    assert_eq!((m.refcount(), m.mapcount()), (3, 3));
    assert!(!m.has(flags::LOCKED));
    assert_eq!(dv.get_u32(to), Ok(40));
    reachable.lock().set_notifier(None);
    drop((reachable, unreachable));
    dv.dev.release().unwrap();
    assert!(!dv.on_device(to));
    assert_eq!(dv.get_u32(to), Ok(40));
}

/// The same through a whole device release of device-private memory (dmirror's eviction:
/// `migrate_device_range`, the device's copy out, finalize): the parent's entry, replaced
/// first, is moved by mremap while the eviction replaces the child's; both come back to RAM
/// with the data, the parent's at its new address.
#[test]
fn a_device_release_finishes_where_mremap_moved_the_entry() {
    let dv = device(MemoryKind::Private);
    let a = dv.mapped(1, Prot::RW, 40);
    dv.d.migrate_to_dev(a, 1).unwrap();
    assert!(dv.on_device(a));
    let to = a + (256 << 20);
    let child = dv.mm.share(dv.space.lock().fork().unwrap());
    let hook = Arc::new(MoveAtMigrate { space: dv.space.clone(), from: a, to, moved: Default::default() });
    child.lock().set_notifier(Some(hook.clone()));
    dv.dev.release().unwrap();
    assert!(hook.moved.load(Ordering::Relaxed), "the mremap ran during the eviction");
    assert_eq!(dv.lookup(a), Pte::None);
    let Pte::Present(p) = dv.lookup(to) else { panic!("the moved entry was not replaced: {:?}", dv.lookup(to)) };
    let Some(Pte::Present(c)) = child.lock().lookup(a).map(|e| e.pte) else { panic!("the child's page") };
    assert_eq!(p.pfn, c.pfn, "a copy-on-write pair again");
    let m = dv.mm.meta(p.pfn).unwrap();
    assert!(!m.has(flags::DEVICE) && !m.has(flags::LOCKED));
    assert_eq!((m.refcount(), m.mapcount()), (2, 2));
    assert_eq!(dv.get_u32(to), Ok(40));
    let mut b = [0; 4];
    child.lock().read(a, &mut b).unwrap();
    assert_eq!(u32::from_le_bytes(b), 40);
    assert_eq!(dv.dev.pages_in_use(), 0);
    child.lock().set_notifier(None);
}

fn plain() -> (Arc<FakePlatform>, Arc<Mm>) {
    let plat = Arc::new(FakePlatform::new(FRAMES));
    let mm = Mm::new(plat.clone(), &[(Pfn(BASE_PFN), FRAMES as u64)]).unwrap();
    (plat, mm)
}

fn args(start: u64, end: u64, select: Select) -> MigrateArgs {
    MigrateArgs { start, end, owner: OWNER, select, fault_page: None }
}

/// A pinned page is not collected, and is left unlocked (not locked for good).
#[test]
fn a_pinned_page_is_left_unlocked() {
    let (_plat, mm) = plain();
    let mut s = AddressSpace::new(&mm).unwrap();
    let a = s.mmap(MapRequest::anon(PAGE, Prot::RW)).unwrap();
    s.write(a, &[1]).unwrap();
    let pfn = s.lookup(a).unwrap().pte.pfn().unwrap();
    mm.get_page(pfn); // the pin
    let mig = s.migrate_vma_setup(args(a, a + PAGE, Select::SYSTEM)).unwrap();
    assert_eq!(mig.cpages(), 0);
    assert!(!mm.meta(pfn).unwrap().has(flags::LOCKED), "the pinned page stayed locked");
    mig.finalize();
    assert!(!mm.meta(pfn).unwrap().has(flags::LOCKED));
    mm.put_page(pfn);
}

/// With `SELECT_COMPOUND`, a huge page that straddles an end of the range (its split failed)
/// is not collected: it would migrate whole, past the range.
#[test]
fn a_huge_page_straddling_the_range_is_not_collected_whole() {
    let (plat, mm) = plain();
    let mut s = AddressSpace::new(&mm).unwrap();
    let a = s.mmap(MapRequest::anon(3 * PMD_SIZE, Prot::RW)).unwrap();
    s.madvise(a, 3 * PMD_SIZE, Advice::HugePage).unwrap();
    s.write(a, &[1]).unwrap();
    s.write(a + PMD_SIZE, &[2]).unwrap();
    for (start, end) in [(a, a + PMD_SIZE / 2), (a + PMD_SIZE + PMD_SIZE / 2, a + 3 * PMD_SIZE)] {
        let huge = s.lookup(start).unwrap();
        assert!(huge.huge);
        // The split at the range's end fails (no frame for the page table).
        plat.fail_allocs.store(1, Ordering::Relaxed);
        let mig = s.migrate_vma_setup(args(start, end, Select::SYSTEM.compound())).unwrap();
        assert!(mig.src().iter().all(|e| e.pfn().is_none()), "{start:#x}..{end:#x}: {:?}", &mig.src()[..2]);
        mig.finalize();
        assert_eq!(s.lookup(start), Some(huge), "the huge page stays where it is");
    }
}

/// A never-touched page migrated to the device gets the entry of a first write there:
/// writable (in a writable mapping), dirty and young, with the mapping's exec.
#[test]
fn a_hole_migrated_to_the_device_is_mapped_writable_dirty_young() {
    for kind in [MemoryKind::Private, MemoryKind::Coherent] {
        for prot in [Prot::RW, Prot::RW | Prot::EXEC] {
            let dv = device(kind);
            let a = dv.space.lock().mmap(MapRequest::anon(PAGE, prot)).unwrap();
            dv.d.migrate_to_dev(a, 1).unwrap();
            let bits = match dv.lookup(a) {
                Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => (s.write, s.dirty, s.young, s.exec),
                Pte::Present(p) if dv.on_device(a) => (p.write, p.dirty, p.young, p.exec),
                other => panic!("{kind:?}: {other:?}"),
            };
            assert_eq!(bits, (true, true, true, prot.exec()), "{kind:?} {prot:?}: (write, dirty, young, exec)");
        }
    }
}

/// A page that other mappings share (MAP_SHARED), declined by the driver, comes back with its
/// write permission: only a page that moves away from the others is mapped read-only.
#[test]
fn a_declined_shared_page_comes_back_writable() {
    let (_plat, mm) = plain();
    let mut s = AddressSpace::new(&mm).unwrap();
    let file = crate::mm::file::MemFile::new(&mm, PAGE);
    let a = s.mmap(MapRequest::file(&file, 0, PAGE, Prot::RW).shared()).unwrap();
    let b = s.mmap(MapRequest::file(&file, 0, PAGE, Prot::RW).shared()).unwrap();
    s.write(a, &[1]).unwrap();
    s.write(b, &[2]).unwrap();
    let mut mig = s.migrate_vma_setup(args(a, a + PAGE, Select::SYSTEM)).unwrap();
    assert_eq!(mig.cpages(), 1);
    mig.pages(); // no destination: declined
    assert!(!mig.src()[0].is_migrate());
    mig.finalize();
    match s.lookup(a).unwrap().pte {
        Pte::Present(p) => assert!(p.write, "the declined page came back read-only"),
        other => panic!("{other:?}"),
    }
    drop(s);
}

/// A never-touched page or a zero page of a writable mapping, migrated to the device, is
/// writable on the device at once (no extra device fault on the first write); in a
/// read-only mapping it is not.
#[test]
fn holes_and_zero_pages_of_a_writable_mapping_are_writable_on_the_device() {
    for kind in [MemoryKind::Private, MemoryKind::Coherent] {
        for zero in [false, true] {
            let dv = device(kind);
            let a = dv.space.lock().mmap(MapRequest::anon(PAGE, Prot::RW)).unwrap();
            if zero {
                assert_eq!(dv.get_u32(a), Ok(0));
            }
            dv.d.migrate_to_dev(a, 1).unwrap();
            let c = dv.d.write(a, &[7u8; PAGE as usize]).unwrap();
            assert_eq!(c.faults, 0, "{kind:?} zero={zero}: the device had to fault for write");
            assert_eq!(dv.get_u32(a), Ok(0x0707_0707));
        }
        let dv = device(kind);
        let a = dv.space.lock().mmap(MapRequest::anon(PAGE, Prot::READ)).unwrap();
        dv.d.migrate_to_dev(a, 1).unwrap();
        assert!(dv.d.write(a, &[7u8; PAGE as usize]).is_err(), "{kind:?}: read-only mapping");
    }
}

/// A write fault on a read-only coherent device page that is exclusive to its mapping reuses
/// it (`do_wp_page`), as for any anonymous page: it does not copy it out of device memory.
#[test]
fn an_exclusive_coherent_page_is_reused_on_a_write_fault() {
    let dv = device(MemoryKind::Coherent);
    let a = dv.mapped(1, Prot::RW, 40);
    dv.space.lock().mprotect(a, PAGE, Prot::READ).unwrap();
    dv.d.migrate_to_dev(a, 1).unwrap();
    let pfn = device_pfn(&dv, a);
    dv.space.lock().mprotect(a, PAGE, Prot::RW).unwrap();
    assert!(matches!(dv.lookup(a), Pte::Present(p) if !p.write));
    dv.space.lock().write(a, &41u32.to_le_bytes()).unwrap();
    assert_eq!(dv.lookup(a).pfn(), Some(pfn), "the exclusive device page was copied");
    assert!(matches!(dv.lookup(a), Pte::Present(p) if p.write));
    assert_eq!(dv.get_u32(a), Ok(41));
    // Shared with a child it is copied (copy-on-write).
    let mut child = dv.space.lock().fork().unwrap();
    child.write(a, &42u32.to_le_bytes()).unwrap();
    assert_ne!(child.lookup(a).unwrap().pte.pfn(), Some(pfn));
    assert_eq!(dv.get_u32(a), Ok(41));
}

/// `migrate_device_range` does not migrate a page it could not unmap everywhere (here the
/// child's address space cannot be looked up): the mappings it did replace are restored.
#[test]
fn a_device_page_still_mapped_somewhere_is_not_evicted() {
    let dv = device(MemoryKind::Coherent);
    let a = dv.mapped(1, Prot::RW, 40);
    dv.d.migrate_to_dev(a, 1).unwrap();
    let pfn = device_pfn(&dv, a);
    // A child that is not shared: the eviction cannot reach its mapping.
    let child = dv.space.lock().fork().unwrap();
    let before = dv.lookup(a);
    let mig = migrate_device_range(&dv.mm, pfn, 1);
    assert!(!mig.src()[0].is_migrate(), "a page still mapped was collected: {:?}", mig.src()[0]);
    assert_eq!(dv.lookup(a), before, "the parent's mapping is restored");
    mig.finalize();
    assert_eq!(dv.lookup(a), before);
    let m = dv.mm.meta(pfn).unwrap();
    assert_eq!((m.refcount(), m.mapcount()), (2, 2));
    assert!(!m.has(flags::LOCKED));
    drop(child);
    assert_eq!(dv.get_u32(a), Ok(40));
    dv.dev.release().unwrap();
    assert!(!dv.on_device(a));
    assert_eq!(dv.get_u32(a), Ok(40));
}

/// Holes of private anonymous memory are collected whatever the selection (Linux 6.1's
/// `migrate_vma_collect_hole` and `pte_none` case do not look at the select flags), the zero
/// page only with `SELECT_SYSTEM`.
#[test]
fn holes_are_collected_without_select_system_and_the_zero_page_is_not() {
    let d = device(MemoryKind::Private);
    let mut s = d.space.lock();
    let a = s.mmap(MapRequest::anon(4 * PAGE, Prot::RW)).unwrap();
    // Page 1 maps the zero page (a read fault), pages 0, 2 and 3 are holes.
    let mut b = [0u8; 4];
    s.read(a + PAGE, &mut b).unwrap();
    let args =
        MigrateArgs { start: a, end: a + 4 * PAGE, owner: OWNER, select: Select::DEVICE_PRIVATE, fault_page: None };
    let mig = s.migrate_vma_setup(args).unwrap();
    let migrating: alloc::vec::Vec<bool> = mig.src().iter().map(|e| e.is_migrate()).collect();
    assert_eq!(migrating, [true, false, true, true], "{:x?}", mig.src());
    assert_eq!(mig.cpages(), 3);
    drop(mig);
}
