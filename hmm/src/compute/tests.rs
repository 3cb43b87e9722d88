//! The compute engine on the fake platform: a device MMU over a fake domain, device memory
//! from a dmirror device with the mirror's owner (its migration and its own view of device
//! pages), kernels that really read and write the process's words, and fault batches
//! serviced by the placement policies ([`Placed`]).

use super::*;
use crate::addr::Pfn;
use crate::dmirror::{Dmirror, DmirrorDevice};
use crate::mm::notify::Owner;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::space::{AddressSpace, MapRequest};
use crate::mm::vma::Prot;
use crate::mm::{Mm, SharedSpace};
use crate::pagemap::{MemoryKind, Pagemaps};
use crate::place::policies::{migrate_on_touch, remote_map};
use crate::place::policy::{Ctx, Fault as PlaceFault, Notification, Plan};
use crate::testing::{FakeDomain, Hw};
use alloc::sync::Arc;
use std::sync::Mutex as StdMutex;

const OWNER: Owner = Owner(0xc0);

struct Fix {
    mm: Arc<Mm>,
    space: Arc<SharedSpace>,
    mirror: Arc<Mirror<FakeDomain>>,
    dev: Arc<DmirrorDevice>,
    file: Arc<Dmirror>,
}

fn fix() -> Fix {
    let frames = 16384;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    let pagemaps = Pagemaps::install(&mm).unwrap();
    let space = mm.share(AddressSpace::new(&mm).unwrap());
    let hw = Arc::new(StdMutex::new(Hw::default()));
    let mirror = Mirror::bind(&space, OWNER, Some(pagemaps.clone()), FakeDomain { hw }).unwrap();
    let dev = DmirrorDevice::new(&pagemaps, MemoryKind::Private, OWNER, 4 << 20);
    let file = Dmirror::open(&dev, &space).unwrap();
    Fix { mm, space, mirror, dev, file }
}

impl Fix {
    /// `pages` of words holding their own index.
    fn array(&self, pages: u64) -> u64 {
        let mut s = self.space.lock();
        let a = s.mmap(MapRequest::anon(pages * PAGE, Prot::RW)).unwrap();
        let data: Vec<u8> = (0..pages * PAGE / 8).flat_map(|i| i.to_le_bytes()).collect();
        s.write(a, &data).unwrap();
        a
    }

    fn words(&self, a: u64, pages: u64) -> Vec<u64> {
        let mut b = alloc::vec![0u8; (pages * PAGE) as usize];
        self.space.lock().read(a, &mut b).unwrap();
        b.chunks(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())).collect()
    }

    fn backend(&self) -> TestBackend<'_> {
        TestBackend { f: self, clock: 0 }
    }
}

struct TestBackend<'a> {
    f: &'a Fix,
    clock: u64,
}

impl Backend for TestBackend<'_> {
    fn load(&mut self, at: Where, va: u64) -> u64 {
        let mut w = [0u8; 8];
        match at {
            Where::Ram(pa) => self.f.mm.platform().read(pa + va % PAGE, &mut w),
            Where::Local(_) => {
                let (page, _) = self.f.file.read(va & !(PAGE - 1), 1).unwrap();
                w.copy_from_slice(&page[(va % PAGE) as usize..][..8]);
            }
        }
        u64::from_le_bytes(w)
    }
    fn store(&mut self, at: Where, va: u64, value: u64) {
        match at {
            Where::Ram(pa) => self.f.mm.platform().write(pa + va % PAGE, &value.to_le_bytes()),
            Where::Local(_) => {
                let p = va & !(PAGE - 1);
                let (mut page, _) = self.f.file.read(p, 1).unwrap();
                page[(va % PAGE) as usize..][..8].copy_from_slice(&value.to_le_bytes());
                self.f.file.write(p, &page).unwrap();
            }
        }
    }
    fn migrate(&mut self, start: u64, end: u64) -> Result<u64, MirrorError> {
        let before = self.f.dev.pages_in_use();
        self.f
            .file
            .migrate_to_dev(start, (end - start) / PAGE)
            .map_err(|_| MirrorError::Invalid("dmirror migration failed"))?;
        Ok(self.f.dev.pages_in_use() - before)
    }
    fn now(&self) -> u64 {
        self.clock
    }
}

/// Runs `k` on the fixture's device under `policy`, for the region of `pages` at `a`.
fn launch(
    f: &Fix,
    k: &mut dyn Kernel,
    policy: &mut dyn Policy,
    (a, pages): (u64, u64),
    batch: usize,
    c: &mut Counters,
) -> Result<(), RunError<MirrorError>> {
    let mut b = f.backend();
    let mut dev = Placed::new(&f.mirror, &mut b, policy, 0, (a, pages as u32), 1024);
    run(k, &mut dev, batch, c)
}

#[test]
fn migrate_on_touch_moves_the_data_and_computes_on_it() {
    let f = fix();
    let pages = 64;
    let a = f.array(pages);
    let words = pages * 512;
    let mut k = Increment::new(a, words, 1, 32);
    let mut c = Counters::default();
    launch(&f, &mut k, &mut *migrate_on_touch(), (a, pages), BATCH_MAX, &mut c).unwrap();
    assert_eq!(k.sum, words * (words - 1) / 2, "the kernel read other values than the CPU wrote");
    assert_eq!(c.pages_to_device, pages);
    assert_eq!(f.dev.pages_in_use(), pages);
    assert_eq!((c.local_accesses, c.remote_accesses), (words, 0));
    assert!(c.batches >= 1 && c.faults >= pages && c.replays >= 1, "{c:?}");
    // The CPU reads the results back (its faults bring the pages home).
    let got = f.words(a, pages);
    assert!(got.iter().enumerate().all(|(i, &w)| w == i as u64 + 1));
    assert_eq!(f.dev.pages_in_use(), 0);
    f.file.close().unwrap();
}

#[test]
fn remote_map_leaves_the_pages_in_ram() {
    let f = fix();
    let pages = 16;
    let a = f.array(pages);
    let words = pages * 512;
    let mut k = Increment::new(a, words, 1, 8);
    let mut c = Counters::default();
    launch(&f, &mut k, &mut *remote_map(), (a, pages), BATCH_MAX, &mut c).unwrap();
    assert_eq!((c.pages_to_device, c.local_accesses, c.remote_accesses), (0, 0, words));
    assert_eq!(c.remote_groups, c.batches, "one group per batch of consecutive pages: {c:?}");
    assert_eq!(f.dev.pages_in_use(), 0);
    assert!(f.words(a, pages).iter().enumerate().all(|(i, &w)| w == i as u64 + 1));
}

#[test]
fn batches_hold_at_most_the_buffer_size_and_deduplicate() {
    let f = fix();
    let pages = 300;
    let a = f.array(pages);
    // 600 lanes, two per page: every page faults twice in the same batch.
    let mut k = Increment::new(a, pages * 512, 256, 600);
    let mut c = Counters::default();
    launch(&f, &mut k, &mut *remote_map(), (a, pages), BATCH_MAX, &mut c).unwrap();
    assert_eq!(c.max_batch, 256);
    assert_eq!(c.faults, 600);
    assert_eq!(c.duplicates, 300);
    assert_eq!(c.batches, 3, "{c:?}");
    let got = f.words(a, pages);
    assert!((0..pages * 512).all(|i| got[i as usize] == i + u64::from(i % 256 == 0)));
    // A batch size of 1 services every fault alone.
    let mut k = Increment::new(a, 8 * 512, 512, 8);
    let mut c1 = Counters::default();
    f.space.lock().munmap(a, 8 * PAGE).unwrap();
    let b = f.array(8);
    k.base = b;
    launch(&f, &mut k, &mut *remote_map(), (b, 8), 1, &mut c1).unwrap();
    assert_eq!((c1.batches, c1.max_batch), (8, 1));
}

#[test]
fn faults_that_cannot_be_serviced_stop_the_kernel_naming_the_access() {
    let f = fix();
    let a = f.array(8);
    f.space.lock().munmap(a + 5 * PAGE, PAGE).unwrap();
    let mut k = Increment::new(a, 8 * 512, 512, 8);
    let mut c = Counters::default();
    let e = launch(&f, &mut k, &mut *remote_map(), (a, 8), BATCH_MAX, &mut c).unwrap_err();
    let RunError::Fatal(x) = &e else { panic!("{e:?}") };
    assert_eq!((x.lane, x.va, x.write), (5, a + 5 * PAGE, true));
    assert!(e.to_string().contains("lane 5"), "{e}");
    // A write to read-only memory is refused too, and reads of it work.
    f.space.lock().mprotect(a, PAGE, Prot::READ).unwrap();
    let mut k = Increment::new(a, 512, 512, 1);
    let e = launch(&f, &mut k, &mut *migrate_on_touch(), (a, 1), BATCH_MAX, &mut c).unwrap_err();
    assert!(
        matches!(
            &e,
            RunError::Fatal(FatalFault {
                error: Some(MirrorError::Fault { error: crate::range::RangeError::Permission, .. }),
                ..
            })
        ),
        "{e:?}"
    );
}

/// Maps every fault remotely and migrates a region once the device's counters notify on it.
struct Delayed {
    threshold: u32,
    notes: Vec<Notification>,
}

impl Policy for Delayed {
    fn name(&self) -> &str {
        "delayed"
    }
    fn on_device_faults(&mut self, _cx: &Ctx<'_>, dev: u8, faults: &[PlaceFault], plan: &mut Plan) {
        for f in faults {
            plan.remote(f.page, 1, dev);
        }
    }
    fn counters(&self, _cx: &Ctx<'_>, _dev: u8) -> Option<crate::place::policy::Counters> {
        Some(crate::place::policy::Counters::new(4, self.threshold))
    }
    fn on_access_counter(&mut self, _cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        self.notes.push(*n);
        plan.migrate(n.first, n.pages, Loc::Dev(n.dev));
    }
}

#[test]
fn the_compute_engine_counts_remote_accesses_and_its_notifications_migrate() {
    let f = fix();
    let pages = 16;
    let a = f.array(pages);
    let words = pages * 512;
    // Eight lanes: lane l walks words l, l + 8, ..., so every lane touches every page (64
    // words each).
    let mut k = Increment::new(a, words, 1, 8);
    let mut c = Counters::default();
    let mut policy = Delayed { threshold: 1024, notes: Vec::new() };
    launch(&f, &mut k, &mut policy, (a, pages), BATCH_MAX, &mut c).unwrap();
    // Every region of 4 pages (2,048 words) notifies once its 1,024th remote access is
    // counted; the rest of its accesses are local.
    assert_eq!(c.notifications, 4, "{c:?}");
    assert_eq!(policy.notes.len(), 4);
    assert!(policy.notes.iter().all(|n| n.pages == 4 && n.reads + n.writes >= 1024), "{:?}", policy.notes);
    let firsts: Vec<u32> = policy.notes.iter().map(|n| n.first).collect();
    assert_eq!(firsts, [0, 4, 8, 12]);
    assert_eq!(c.pages_to_device, pages);
    assert_eq!(c.remote_accesses + c.local_accesses, words);
    assert!(c.remote_accesses >= 4 * 1024 && c.local_accesses > 0, "{c:?}");
    assert_eq!(k.sum, words * (words - 1) / 2);
    assert!(f.words(a, pages).iter().enumerate().all(|(i, &w)| w == i as u64 + 1));
    // Above the accesses a region gets, nothing notifies and nothing moves.
    let mut k = Increment::new(a, words, 1, 8);
    let mut c = Counters::default();
    let mut policy = Delayed { threshold: 1 << 20, notes: Vec::new() };
    launch(&f, &mut k, &mut policy, (a, pages), BATCH_MAX, &mut c).unwrap();
    assert_eq!((c.notifications, c.pages_to_device, c.local_accesses), (0, 0, 0), "{c:?}");
    f.file.close().unwrap();
}

#[test]
fn a_counter_region_across_the_managed_ranges_start_notifies_its_managed_pages() {
    let f = fix();
    let pages = 16;
    let a = f.array(pages);
    assert_eq!(a % (4 * PAGE), 0, "the array starts on a 4-page region");
    // The policy manages pages 1..16 of the array: the first counter region, pages 0..4,
    // starts one page before it.
    let (base, managed) = (a + PAGE, pages - 1);
    let words = managed * 512;
    let mut k = Increment::new(base, words, 1, 8);
    let mut c = Counters::default();
    let mut policy = Delayed { threshold: 1024, notes: Vec::new() };
    launch(&f, &mut k, &mut policy, (base, managed), BATCH_MAX, &mut c).unwrap();
    let first = policy.notes.first().copied().expect("no notification");
    assert_eq!((first.first, first.pages), (0, 3), "{:?}", policy.notes);
    assert_eq!(c.pages_to_device, managed, "{c:?}");
    f.file.close().unwrap();
}
