//! Host tests of the pagemap registry (`pagemap.rs`) that its own inline tests leave open,
//! found by mutation testing (`cargo xtask mutants`): the exact end of a pagemap, the
//! per-frame check of a registration, and what the `Debug` output says.

use crate::addr::Pfn;
use crate::mm::notify::Owner;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::space::{AddressSpace, FaultError};
use crate::mm::{Error, HUGE_FRAMES, Mm};
use crate::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use alloc::format;
use alloc::sync::Arc;

struct Nothing;
impl PagemapOps for Nothing {
    fn page_free(&self, _: &DevPagemap, _: Pfn, _: u32) {}
    fn migrate_to_ram(&self, _: &DevPagemap, _: &mut AddressSpace, _: u64, _: Pfn) -> Result<(), FaultError> {
        Err(FaultError::Bus)
    }
}

fn setup() -> (Arc<Mm>, Arc<Pagemaps>, Arc<dyn PagemapOps>) {
    let frames = 4096;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames as usize)), &[(Pfn(BASE_PFN), frames)]).unwrap();
    let pm = Pagemaps::install(&mm).unwrap();
    (mm, pm, Arc::new(Nothing))
}

/// A pagemap covers `[first, first + count)` exactly: the next frame is not its (nor its
/// data's), even when another pagemap starts there.
#[test]
fn a_pagemap_ends_exactly_at_its_last_frame() {
    let (mm, pm, ops) = setup();
    let base = mm.add_device_private_region(2 * HUGE_FRAMES).unwrap();
    let a = pm.memremap_private_at(Owner(1), base, HUGE_FRAMES, Arc::downgrade(&ops)).unwrap();
    let end = Pfn(base.0 + HUGE_FRAMES);
    assert!(a.contains(Pfn(end.0 - 1)) && a.contains(base));
    assert!(!a.contains(end), "the frame after the last is not in the pagemap");
    assert_eq!(a.data(end), None);
    a.set_data(end, 7);
    let b = pm.memremap_private_at(Owner(2), end, HUGE_FRAMES, Arc::downgrade(&ops)).unwrap();
    assert!(Arc::ptr_eq(&pm.find(end).unwrap(), &b), "the next pagemap owns its first frame");
    assert_eq!(b.data(end), Some(0), "a set_data past a pagemap's end wrote nowhere");
    assert_eq!(pm.find(Pfn(end.0 - 1)).map(|m| m.owner()), Some(Owner(1)));
    assert_eq!((a.pages(), b.pages()), (HUGE_FRAMES, HUGE_FRAMES));
}

/// A registration checks every frame it takes, not only the first: a reference to any of
/// them (here the tenth) is refused with `Busy`.
#[test]
fn a_registration_refuses_a_range_with_any_referenced_frame() {
    let (mm, pm, ops) = setup();
    let base = mm.add_device_private_region(2 * HUGE_FRAMES).unwrap();
    let piece = Pfn(base.0 + HUGE_FRAMES);
    let held = Pfn(piece.0 + 9);
    mm.meta(held).unwrap().get();
    let r = pm.memremap_private_at(Owner(1), piece, HUGE_FRAMES, Arc::downgrade(&ops));
    assert!(matches!(r, Err(Error::Busy(_))), "{r:?}");
    // The frames below the range are none of its business.
    // (`put`, not `put_page`: the frame is no page yet, nothing to free.)
    mm.meta(held).unwrap().put();
    mm.meta(Pfn(piece.0 - 9)).unwrap().get();
    pm.memremap_private_at(Owner(1), piece, HUGE_FRAMES, Arc::downgrade(&ops)).unwrap();
}

/// `Debug` names what a pagemap is (kind, owner, frames) and how many a registry holds.
#[test]
fn debug_output_describes_the_pagemaps() {
    let (_mm, pm, ops) = setup();
    let a = pm.memremap_pages(MemoryKind::Private, Owner(0x77), HUGE_FRAMES, Arc::downgrade(&ops)).unwrap();
    let s = format!("{a:?}");
    assert!(s.starts_with("DevPagemap") && s.contains("Private") && s.contains("119"), "{s}");
    assert!(s.contains(&format!("{}", a.ranges()[0].0.0)), "{s}");
    let s = format!("{pm:?}");
    assert!(s.contains("Pagemaps") && s.contains("maps: 1"), "{s}");
}

/// `memunmap_pages` refuses while any page of the pagemap is in use, not only its first (a
/// pagemap registered at a range: nothing else checks its frames on the way out).
#[test]
fn memunmap_refuses_while_any_page_is_in_use() {
    let (mm, pm, ops) = setup();
    let base = mm.add_device_private_region(HUGE_FRAMES).unwrap();
    let a = pm.memremap_private_at(Owner(1), base, HUGE_FRAMES, Arc::downgrade(&ops)).unwrap();
    let used = Pfn(base.0 + 5);
    pm.page_init(used).unwrap();
    let r = pm.memunmap_pages(&a);
    assert!(matches!(r, Err(Error::Busy(_))), "{r:?}");
    mm.meta(used).unwrap().unlock();
    mm.put_page(used);
    pm.memunmap_pages(&a).unwrap();
}
