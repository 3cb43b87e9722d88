//! Host tests of device migration (`mm/migrate.rs`) against the dmirror test device: the
//! entries rebuilt after a migration, faults that meet migration entries, fork during an
//! eviction, and the deviations from Linux 6.1 that the migration code once had.

use crate::addr::Pfn;
use crate::dmirror::{Dmirror, DmirrorDevice};
use crate::mm::migrate::{MigrateArgs, MigratePfn, Select, migrate_device_range};
use crate::mm::notify::Owner;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::pte::{Pte, Soft, SoftKind};
use crate::mm::space::{Access, AddressSpace, FaultError, MapRequest};
use crate::mm::vma::Prot;
use crate::mm::{Mm, Platform, SharedSpace, frame::flags};
use crate::pagemap::{MemoryKind, Pagemaps};
use alloc::sync::Arc;

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
