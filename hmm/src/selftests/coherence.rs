//! Our own scenarios on the coherence of the device page table (same fixtures, same
//! reporting): a dmirror file must never keep an entry for a frame the CPU side moved away,
//! whoever moved it (another file of the same device, a migration racing a device fault), and
//! device release must wait for pages a migration holds. Each one stages its interleaving in a
//! fixed order from one thread (through [`Dmirror::set_fault_hook`] or a page lock taken by
//! the test), so it fails the same way every time the defect is there.

use super::*;
use crate::addr::Pfn;
use crate::mm::pte::Pte;
use crate::mm::space::Entry;
use alloc::sync::Weak;
use spin::Mutex;

/// The frame that backs the CPU mapping at `va` (a device page for a device-private entry).
fn frame_at(p: &Arc<SharedSpace>, va: u64) -> Result<Pfn, String> {
    match p.lock().lookup(va) {
        Some(Entry { pte: Pte::Present(x), .. }) => Ok(x.pfn),
        Some(Entry { pte: Pte::Soft(s), .. }) => Ok(s.pfn),
        other => Err(format!("nothing mapped at {va:#x}: {other:?}")),
    }
}

/// One page of tag `t`.
fn page_of(t: i32) -> Vec<u8> {
    bytes_of(1024, |_| t)
}

/// Reads one page through `d` and checks that every int is `t`.
fn mirror_is(d: &Dmirror, a: u64, t: i32, what: &str) -> Result<(), String> {
    let (m, _) = d.read(a, 1).map_err(|e| format!("{what}: device read: {e}"))?;
    check_ints(&ints_of(&m), |_| t, what)
}

/// A device page shared by parent and child after fork, mirrored by a file of the same device
/// in each: when the child's CPU write brings its copy back to RAM (a migration by this very
/// device, made for the parent's file), the child's file must drop its entry and see the
/// write; its device write must reach the child's page. The parent keeps its own data.
pub(super) fn mirror_sees_cpu_write_after_fork(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let a = mmap(&p, MapRequest::anon(PAGE, Prot::RW))?;
    env.fill(&p, a, 1024, |_| 1)?;
    let fp = env.open(v, false, &p)?;
    check_ints(&migrated(&fp, a, 1)?, |_| 1, "mirror after the migration")?;
    let c = fork(env, &p)?;
    let fc = env.open(v, false, &c)?;
    mirror_is(&fc, a, 1, "child's mirror")?;
    env.fill(&c, a, 1024, |_| 3)?;
    mirror_is(&fc, a, 3, "child's mirror after the child's CPU write")?;
    ok!(fc.write(a, &page_of(4)));
    check_ints(&env.ints(&c, a, 1024)?, |_| 4, "child's CPU after the child's device write")?;
    check_ints(&env.ints(&p, a, 1024)?, |_| 1, "parent's CPU")?;
    mirror_is(&fp, a, 1, "parent's mirror")?;
    env.fill(&p, a, 1024, |_| 5)?;
    mirror_is(&fp, a, 5, "parent's mirror after the parent's CPU write")?;
    Ok(Outcome::Pass)
}

/// The file a page was migrated for is closed (and dropped, or kept open-ended), a new file
/// of the same device mirrors the device page; the CPU write that brings the page back must
/// reach the new file: its reads see the write, not the freed device storage, and its writes
/// land in the process's page.
pub(super) fn mirror_sees_cpu_write_after_reopen(env: &Env<'_>, v: Variant) -> Verdict {
    for keep_old in [false, true] {
        let p = env.process()?;
        let a = mmap(&p, MapRequest::anon(PAGE, Prot::RW))?;
        env.fill(&p, a, 1024, |_| 1)?;
        let old = env.open(v, false, &p)?;
        migrated(&old, a, 1)?;
        ok!(old.close());
        let old = keep_old.then_some(old);
        let f = env.open(v, false, &p)?;
        mirror_is(&f, a, 1, "new file's mirror")?;
        env.fill(&p, a, 1024, |_| 3)?;
        mirror_is(&f, a, 3, "new file's mirror after the CPU write")?;
        ok!(f.write(a, &page_of(4)));
        check_ints(&env.ints(&p, a, 1024)?, |_| 4, "CPU after the new file's device write")?;
        drop(old);
    }
    Ok(Outcome::Pass)
}

const RACE_PAGES: u64 = 16;

/// Int `i` of the race buffer: page and position.
fn race_int(i: u64) -> i32 {
    (((i / 1024) << 16) | (i % 1024)) as i32
}

/// A device read whose range fault has finished when a migration of the same pages by the same
/// device runs (from the fault hook, so always at that point): the migration frees the frames
/// the range fault returned, so the commit must be refused and the fault retried. The read
/// returns the right data, and a device write afterwards reaches the pages. Staged both ways:
/// RAM to device while the read faults RAM pages in, device to RAM while it maps device pages.
pub(super) fn fault_racing_own_migration(env: &Env<'_>, v: Variant) -> Verdict {
    for to_device in [true, false] {
        let p = env.process()?;
        let a = mmap(&p, MapRequest::anon(RACE_PAGES * PAGE, Prot::RW))?;
        env.fill(&p, a, RACE_PAGES * 1024, race_int)?;
        let d = env.open(v, false, &p)?;
        // The file that reads has an empty table; with `!to_device` the pages start on the
        // device (moved there by another file of the device).
        if !to_device {
            let other = env.open(v, false, &p)?;
            migrated(&other, a, RACE_PAGES)?;
        }
        let moved: Arc<Mutex<Option<Result<u64, String>>>> = Arc::new(Mutex::new(None));
        let (w, m): (Weak<Dmirror>, _) = (Arc::downgrade(&d), moved.clone());
        d.set_fault_hook(Some(Box::new(move |_, _| {
            let Some(d) = w.upgrade() else { return false };
            let r = if to_device {
                d.migrate_to_dev(a, RACE_PAGES).map(|(_, c)| c.cpages)
            } else {
                d.migrate_to_sys(a, RACE_PAGES).map(|c| c.cpages)
            };
            *m.lock() = Some(r.map_err(|e| format!("{e}")));
            false
        })));
        let read = d.read(a, RACE_PAGES);
        d.set_fault_hook(None);
        let what = if to_device { "migration to the device" } else { "migration to RAM" };
        let migrated = moved.lock().take().ok_or(format!("the {what} did not run from the fault hook"))?;
        ensure!(migrated == Ok(RACE_PAGES), "the {what} in the hook: {migrated:?}");
        let (m, _) = read.map_err(|e| format!("device read racing the {what}: {e}"))?;
        check_ints(&ints_of(&m), race_int, &format!("device read racing the {what}"))?;
        // The pages are where the migration put them.
        for k in 0..RACE_PAGES {
            let f = frame_at(&p, a + k * PAGE)?;
            let on_device = env.mm.meta(f).is_some_and(|m| m.has(crate::mm::frame::flags::DEVICE));
            ensure!(on_device == to_device, "page {k} on the device: {on_device}, after the {what}");
        }
        ok!(d.write(a, &bytes_of(RACE_PAGES * 1024, |i| -race_int(i))));
        check_ints(
            &env.ints(&p, a, RACE_PAGES * 1024)?,
            |i| -race_int(i),
            &format!("CPU after a device write following the {what}"),
        )?;
    }
    Ok(Outcome::Pass)
}

/// Device release while another thread's migration holds a device page (the test holds the
/// page's lock, as `migrate_vma_setup` does): release evicts what it can, waits, and evicts
/// the page once the holder lets it go; every int comes back. A holder that never lets go ends
/// the bounded wait with `ETIMEDOUT`, the held page still on the (still usable) device, and a
/// later release succeeds.
pub(super) fn release_waits_for_a_busy_page(env: &Env<'_>, v: Variant) -> Verdict {
    let p = env.process()?;
    let a = mmap(&p, MapRequest::anon(2 * PAGE, Prot::RW))?;
    env.fill(&p, a, 2048, |i| i as i32)?;
    let d = env.open(v, false, &p)?;
    let dev = d.device();
    for gives_up in [false, true] {
        migrated(&d, a, 2)?;
        let held = frame_at(&p, a)?;
        let meta = env.mm.meta(held).ok_or(format!("no metadata for the device page {:#x}", held.0))?;
        ensure!(meta.has(crate::mm::frame::flags::DEVICE), "page 0 is not on the device");
        ensure!(meta.trylock(), "the device page was locked already");
        let mut waits = Vec::new();
        let r = dev.release_waiting(3, &mut |round| {
            waits.push(round);
            if round == 1 && !gives_up {
                meta.unlock();
            }
        });
        if gives_up {
            ensure!(
                r.map_err(|e| e.errno) == Err(crate::dmirror::ETIMEDOUT),
                "release with a page held for good: {r:?}"
            );
            ensure!(waits == [0, 1], "waits {waits:?}");
            ensure!(dev.pages_in_use() == 1, "{} device pages in use, expected the held one", dev.pages_in_use());
            meta.unlock();
            check_ints(&env.ints(&p, a, 2048)?, |i| i as i32, "CPU after the timed-out release")?;
            ok!(dev.release());
        } else {
            ensure!(r.is_ok(), "release waiting for a held page: {r:?}");
            ensure!(waits == [0, 1], "waits {waits:?}");
        }
        ensure!(dev.pages_in_use() == 0, "{} device pages in use after the release", dev.pages_in_use());
        for k in 0..2 {
            let f = frame_at(&p, a + k * PAGE)?;
            ensure!(!env.mm.meta(f).is_some_and(|m| m.has(crate::mm::frame::flags::DEVICE)), "page {k} on the device");
        }
        check_ints(&env.ints(&p, a, 2048)?, |i| i as i32, "CPU after the release")?;
    }
    Ok(Outcome::Pass)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::platform::fake::{BASE_PFN, FakePlatform};

    static CPU: SpaceCpu = SpaceCpu;

    /// Runs `run` in both variants on fresh devices over a fake machine of 128 MiB.
    fn both_variants(run: fn(&Env<'_>, Variant) -> Verdict) {
        let frames = 32 * 1024;
        let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
        let env = Env::new(&mm, &CPU, 4 << 20).unwrap();
        for v in Variant::ALL {
            assert_eq!(run(&env, v), Ok(Outcome::Pass), "{v:?}");
        }
        env.release().unwrap();
    }

    #[test]
    fn the_childs_file_sees_the_childs_cpu_write_after_fork() {
        both_variants(mirror_sees_cpu_write_after_fork);
    }

    #[test]
    fn a_reopened_file_sees_the_cpu_write() {
        both_variants(mirror_sees_cpu_write_after_reopen);
    }

    #[test]
    fn device_release_waits_for_a_page_a_migration_holds() {
        both_variants(release_waits_for_a_busy_page);
    }

    #[test]
    fn a_device_fault_racing_its_own_devices_migration_retries() {
        both_variants(fault_racing_own_migration);
    }
}
