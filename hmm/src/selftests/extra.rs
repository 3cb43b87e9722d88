//! Our own scenarios beyond hmm-tests (same fixtures, same reporting): failure paths the
//! issue asks for and 2 MiB compound migration (device THPs), which hmm-tests exercises only
//! through data checks. These also assert where the pages are: a PMD-level device entry after
//! a compound migration, 4 KiB entries after a fallback or a split.

use super::*;
use crate::mm::frame::flags;
use crate::mm::pte::{Pte, SoftKind};
use crate::mm::space::Entry;

/// Our own scenarios, run after [`SCENARIOS`] in both variants; the `old_api_*` ones are the
/// old-API generations' (`old_api.rs`), the mirror-coherence ones `coherence.rs`'s.
pub const EXTRA: &[Scenario] = &[
    Scenario { name: "migrate_alloc_fail_midway", two: false, run: migrate_alloc_fail_midway },
    Scenario { name: "migrate_thp_compound", two: false, run: migrate_thp_compound },
    Scenario { name: "migrate_thp_fallback", two: false, run: migrate_thp_fallback },
    Scenario { name: "migrate_thp_partial_unmap", two: false, run: migrate_thp_partial_unmap },
    Scenario { name: "migrate_thp_remap", two: false, run: migrate_thp_remap },
    Scenario { name: "migrate_thp_fork", two: false, run: migrate_thp_fork },
    Scenario { name: "migrate_thp_release", two: false, run: migrate_thp_release },
    Scenario {
        name: "mirror_sees_cpu_write_after_fork",
        two: false,
        run: super::coherence::mirror_sees_cpu_write_after_fork,
    },
    Scenario {
        name: "mirror_sees_cpu_write_after_reopen",
        two: false,
        run: super::coherence::mirror_sees_cpu_write_after_reopen,
    },
    Scenario { name: "fault_racing_own_migration", two: false, run: super::coherence::fault_racing_own_migration },
    Scenario {
        name: "release_waits_for_a_busy_page",
        two: false,
        run: super::coherence::release_waits_for_a_busy_page,
    },
    Scenario { name: "old_api_read", two: false, run: super::old_api::old_api_read },
    Scenario { name: "old_api_write", two: false, run: super::old_api::old_api_write },
    Scenario { name: "old_api_migrate", two: false, run: super::old_api::old_api_migrate },
    Scenario { name: "old_api_migrate_fault", two: false, run: super::old_api::old_api_migrate_fault },
    Scenario { name: "old_api_migrate_sys", two: false, run: super::old_api::old_api_migrate_sys },
    Scenario { name: "old_api_snapshot", two: false, run: super::old_api::old_api_snapshot },
    Scenario { name: "old_api_invalidate", two: false, run: super::old_api::old_api_invalidate },
    Scenario { name: "old_api_busy", two: false, run: super::old_api::old_api_busy },
];

/// A device allocation fails in the middle of a 4 KiB migration: the first half of the range
/// is already on the device (not selected again), so the first allocation the migration makes
/// is for the middle page, and FAIL_ALLOC makes it fail. That page stays in RAM; the pages
/// after it still migrate; the command reports `-ENOENT` as dmirror does (a page did not reach
/// the device); every int reads back intact through the CPU, and a second migration finishes
/// the job.
fn migrate_alloc_fail_midway(env: &Env<'_>, v: Variant) -> Verdict {
    const N: u64 = 8;
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(N * PAGE, Prot::RW))?;
    env.fill(&p, a, N * 1024, |i| i as i32)?;
    migrated(&d, a, N / 2)?;
    d.set_flags(1);
    let r = d.migrate_to_dev(a, N);
    ensure!(r.as_ref().is_err_and(|e| e.errno == ENOENT), "migration with a failed page: {:?}", r.map(|(_, c)| c));
    let (snap, _) = ok!(d.snapshot(a, N));
    let local = match v {
        Variant::Private => prot::DEV_PRIVATE_LOCAL,
        Variant::Coherent => prot::DEV_COHERENT_LOCAL,
    };
    for (i, &b) in snap.iter().enumerate() {
        let on_dev = i as u64 != N / 2;
        ensure!((b & 0xf0 == local) == on_dev, "page {i}: snapshot byte {b:#x}, on the device: {on_dev}");
    }
    check_ints(&env.ints(&p, a, N * 1024)?, |i| i as i32, "CPU read after the failed allocation")?;
    // The CPU read brought every device page home; the retry moves them all.
    check_ints(&migrated(&d, a, N)?, |i| i as i32, "mirror after the retry")?;
    Ok(Outcome::Pass)
}

// ------------------------------------------------------------------------------------------
// 2 MiB compound migration

/// Where the page at `va` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// In RAM, mapped by a PMD (a THP).
    RamThp,
    /// In RAM, mapped by a PTE.
    Ram4k,
    /// In this variant's device memory, mapped by a PMD (a device THP).
    DevThp,
    /// In device memory, mapped by a PTE.
    Dev4k,
}

fn place(env: &Env<'_>, p: &Arc<SharedSpace>, va: u64) -> Result<Place, String> {
    let Some(Entry { pte, huge }) = p.lock().lookup(va) else { return Err(format!("nothing mapped at {va:#x}")) };
    let (pfn, soft_device) = match pte {
        Pte::Present(x) => (x.pfn, false),
        Pte::Soft(s) if s.kind == SoftKind::DevicePrivate => (s.pfn, true),
        other => return Err(format!("unexpected entry at {va:#x}: {other:?}")),
    };
    let m = env.mm.meta(pfn).ok_or(format!("no metadata for frame {:#x}", pfn.0))?;
    let device = m.has(flags::DEVICE);
    ensure!(soft_device == (device && !m.has(flags::ANON) && soft_device), "device-private entry for a RAM page");
    // A PMD maps a whole compound page; a PTE a base page.
    ensure!(huge == (m.order() == 9), "entry at {va:#x}: huge {huge}, page order {}", m.order());
    Ok(match (device, huge) {
        (false, true) => Place::RamThp,
        (false, false) => Place::Ram4k,
        (true, true) => Place::DevThp,
        (true, false) => Place::Dev4k,
    })
}

/// Every page of `[a, a + n pages)` is at `want`.
pub(super) fn all_at(env: &Env<'_>, p: &Arc<SharedSpace>, a: u64, n: u64, want: Place) -> Result<(), String> {
    for k in 0..n {
        let got = place(env, p, a + k * PAGE)?;
        ensure!(got == want, "page {k} at {:#x}: {got:?}, expected {want:?}", a + k * PAGE);
    }
    Ok(())
}

fn local(v: Variant) -> u8 {
    match v {
        Variant::Private => prot::DEV_PRIVATE_LOCAL,
        Variant::Coherent => prot::DEV_COHERENT_LOCAL,
    }
}

fn thp_splits(env: &Env<'_>) -> u64 {
    env.mm.stats.thp_splits.load(core::sync::atomic::Ordering::Relaxed)
}

/// A written THP moves to the device whole: one PMD-level device entry, one compound device
/// page, snapshot bytes with `PMD`; it comes back whole, by a CPU fault (private) or by
/// `MIGRATE_TO_SYS`, and nothing was split on the way. The device page is freed whole.
fn migrate_thp_compound(env: &Env<'_>, v: Variant) -> Verdict {
    let (p, d, a) = filled_thp(env, v)?;
    all_at(env, &p, a, 1, Place::RamThp)?;
    let splits = thp_splits(env);
    let in_use = d.device().pages_in_use();
    check_ints(&migrated(&d, a, PMD / PAGE)?, |i| i as i32, "mirror")?;
    all_at(env, &p, a, PMD / PAGE, Place::DevThp)?;
    ensure!(d.device().pages_in_use() == in_use + PMD / PAGE, "one 2 MiB device page in use");
    let (snap, c) = ok!(d.snapshot(a, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    let want = local(v) | prot::WRITE | prot::PMD;
    ensure!(snap.iter().all(|&b| b == want), "snapshot byte {:#x}, expected {want:#x}", snap[0]);
    // mprotect keeps it one PMD, read-only.
    ok!(p.lock().mprotect(a, PMD, Prot::READ));
    all_at(env, &p, a, 1, Place::DevThp)?;
    let (snap, _) = ok!(d.snapshot(a, PMD / PAGE));
    let want = local(v) | prot::READ | prot::PMD;
    ensure!(snap.iter().all(|&b| b == want), "after mprotect: snapshot byte {:#x}, expected {want:#x}", snap[0]);
    ok!(p.lock().mprotect(a, PMD, Prot::RW));
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU")?;
    if v == Variant::Private {
        // The CPU read faulted the whole folio back into a RAM THP.
        all_at(env, &p, a, 1, Place::RamThp)?;
        check_ints(&migrated(&d, a, PMD / PAGE)?, |i| i as i32, "mirror, second time")?;
    }
    let c = ok!(d.migrate_to_sys(a, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    all_at(env, &p, a, PMD / PAGE, Place::RamThp)?;
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU after MIGRATE_TO_SYS")?;
    ensure!(d.device().pages_in_use() == in_use, "the device THP was not freed");
    ensure!(thp_splits(env) == splits, "a compound migration split a huge page");
    // An untouched THP-eligible hole moves as one zeroed device THP.
    let h = thp_region(&p, Prot::RW)?;
    let (m, c) = ok!(d.migrate_to_dev(h, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    ensure!(m.iter().all(|&b| b == 0), "hole not zero on the device");
    all_at(env, &p, h, 1, Place::DevThp)?;
    // munmap frees it whole.
    ok!(p.lock().munmap(h, PMD));
    ensure!(d.device().pages_in_use() == in_use, "the unmapped device THP was not freed");
    Ok(Outcome::Pass)
}

/// When a 2 MiB page cannot be had the migration falls back to 4 KiB pages in either
/// direction (FAIL_ALLOC fails the 2 MiB attempt): the data arrives all the same, mapped by
/// PTEs.
fn migrate_thp_fallback(env: &Env<'_>, v: Variant) -> Verdict {
    let (p, d, a) = filled_thp(env, v)?;
    d.set_flags(1);
    check_ints(&migrated(&d, a, PMD / PAGE)?, |i| i as i32, "mirror")?;
    all_at(env, &p, a, PMD / PAGE, Place::Dev4k)?;
    let (snap, _) = ok!(d.snapshot(a, PMD / PAGE));
    let want = local(v) | prot::WRITE;
    ensure!(snap.iter().all(|&b| b == want), "snapshot byte {:#x}, expected {want:#x}", snap[0]);
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU")?;

    let b = thp_region(&p, Prot::RW)?;
    env.fill(&p, b, PMD / 4, |i| -(i as i32))?;
    migrated(&d, b, PMD / PAGE)?;
    all_at(env, &p, b, 1, Place::DevThp)?;
    d.set_flags(1);
    let c = ok!(d.migrate_to_sys(b, PMD / PAGE));
    counts(c, PMD / PAGE, None)?;
    all_at(env, &p, b, PMD / PAGE, Place::Ram4k)?;
    check_ints(&env.ints(&p, b, PMD / 4)?, |i| -(i as i32), "CPU after the 4 KiB fallback")?;
    Ok(Outcome::Pass)
}

/// P9: a partial munmap of a device THP splits it, keeping each page's driver data (its
/// backing frame): the unmapped half is freed page by page, the rest stays on the device and
/// reads back intact.
fn migrate_thp_partial_unmap(env: &Env<'_>, v: Variant) -> Verdict {
    const HOLE: u64 = 1 << 20;
    for off in [0, 512 << 10, 1 << 20] {
        let (p, d, a) = filled_thp(env, v)?;
        migrated(&d, a, PMD / PAGE)?;
        all_at(env, &p, a, 1, Place::DevThp)?;
        let in_use = d.device().pages_in_use();
        ok!(p.lock().munmap(a + off, HOLE));
        ensure!(d.device().pages_in_use() == in_use - HOLE / PAGE, "the unmapped pages were not freed");
        all_at(env, &p, a, off / PAGE, Place::Dev4k)?;
        let after = a + off + HOLE;
        all_at(env, &p, after, (a + PMD - after) / PAGE, Place::Dev4k)?;
        if off > 0 {
            let (m, _) = ok!(d.read(a, off / PAGE));
            check_ints(&ints_of(&m), |i| i as i32, "device read below the hole")?;
        }
        check_ints(&env.ints(&p, a, off / 4)?, |i| i as i32, "CPU below the hole")?;
        let n = (a + PMD - after) / 4;
        check_ints(&env.ints(&p, after, n)?, |i| ((after - a) / 4 + i) as i32, "CPU above the hole")?;
    }
    Ok(Outcome::Pass)
}

/// A device THP moved by mremap to a 2 MiB-aligned address stays one PMD; to an unaligned one
/// it is split. Either way the CPU reads the data at the new address.
fn migrate_thp_remap(env: &Env<'_>, v: Variant) -> Verdict {
    for (off, want) in [(0, Place::DevThp), (512 << 10, Place::Dev4k)] {
        let p = env.process()?;
        let d = env.open(v, false, &p)?;
        let m = mmap(&p, MapRequest::anon(4 * PMD, Prot::RW))?;
        let a = m.next_multiple_of(PMD);
        ok!(p.lock().madvise(a, 2 * PMD, Advice::HugePage));
        env.fill(&p, a, PMD / 4, |i| i as i32)?;
        migrated(&d, a, PMD / PAGE)?;
        all_at(env, &p, a, 1, Place::DevThp)?;
        let flags = RemapFlags { may_move: true, fixed: true, dont_unmap: false };
        let at = ok!(p.lock().mremap(a, PMD, PMD, flags, a + PMD + off));
        all_at(env, &p, at, if want == Place::DevThp { 1 } else { PMD / PAGE }, want)?;
        check_ints(&env.ints(&p, at, PMD / 4)?, |i| i as i32, "CPU at the new address")?;
    }
    Ok(Outcome::Pass)
}

/// Fork with a device THP: it is split (a THP has one mapping), both processes read the data,
/// and a write in the parent is not seen by the child (P8: copy-on-write through device pages).
fn migrate_thp_fork(env: &Env<'_>, v: Variant) -> Verdict {
    let (p, d, a) = filled_thp(env, v)?;
    migrated(&d, a, PMD / PAGE)?;
    let child = fork(env, &p)?;
    all_at(env, &p, a, PMD / PAGE, Place::Dev4k)?;
    env.fill(&p, a, 1, |_| -1)?;
    check_ints(&env.ints(&child, a, PMD / 4)?, |i| i as i32, "child")?;
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| if i == 0 { -1 } else { i as i32 }, "parent")?;
    Ok(Outcome::Pass)
}

/// Evicting a device's memory (`HMM_DMIRROR_RELEASE`, `migrate_device_range`) with a device THP
/// mapped: it is split and evicted page by page, nothing is lost.
fn migrate_thp_release(env: &Env<'_>, v: Variant) -> Verdict {
    let (p, d, a) = filled_thp(env, v)?;
    migrated(&d, a, PMD / PAGE)?;
    all_at(env, &p, a, 1, Place::DevThp)?;
    ok!(d.device().release());
    all_at(env, &p, a, PMD / PAGE, Place::Ram4k)?;
    check_ints(&env.ints(&p, a, PMD / 4)?, |i| i as i32, "CPU after the eviction")?;
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Pfn;
    use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
    use core::sync::atomic::Ordering;

    /// The CPU fault on a device THP when RAM has no 2 MiB page left: the folio comes back as
    /// base pages (the source is split in `migrate_vma_pages`), data intact, device memory
    /// freed page by page. (RAM exhaustion can only be staged on the host.)
    #[test]
    fn cpu_fault_on_device_thp_falls_back_to_base_pages() {
        let frames = 16 * 1024;
        let plat = Arc::new(FakePlatform::new(frames));
        let mm = Mm::new(plat.clone(), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
        let cpu = SpaceCpu;
        let env = Env::new(&mm, &cpu, 4 << 20).unwrap();
        let p = env.process().unwrap();
        let d = env.open(Variant::Private, false, &p).unwrap();
        let a = thp_region(&p, Prot::RW).unwrap();
        env.fill(&p, a, PMD / 4, |i| i as i32).unwrap();
        migrated(&d, a, PMD / PAGE).unwrap();
        all_at(&env, &p, a, 1, Place::DevThp).unwrap();
        let in_use = d.device().pages_in_use();
        // The next allocation is the 2 MiB RAM page of the fault path.
        plat.fail_allocs.store(1, Ordering::Relaxed);
        assert_eq!(env.ints(&p, a + 4096, 1).unwrap(), [1024]);
        assert_eq!(plat.fail_allocs.load(Ordering::Relaxed), 0);
        all_at(&env, &p, a, PMD / PAGE, Place::Ram4k).unwrap();
        check_ints(&env.ints(&p, a, PMD / 4).unwrap(), |i| i as i32, "CPU").unwrap();
        assert_eq!(d.device().pages_in_use(), in_use - PMD / PAGE);
    }
}
