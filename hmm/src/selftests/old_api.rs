//! The acceptance scenarios for the older API generations (issue 7): hmm-tests began in 5.7,
//! so these are the equivalents for the calls that came before it. Each runs the old-API
//! driver [`OldMirror`] (4.14 `hmm_vma_*`, `hmm_devmem`, callback `migrate_vma`, 5.x
//! `hmm_mirror` / `hmm_range_*`) on the same data as the modern dmirror, in the same
//! fixtures (the coherent variant is 4.14's `DEVICE_PUBLIC`), and checks both give the same
//! data, the same snapshot and the same placement. In the kernel the CPU side is real loads
//! and stores, so a CPU touch of old-API device memory is a real #PF served by the devmem
//! `fault` callback.

use super::*;
use crate::legacy::LegacyError;
use crate::legacy::olddev::{OldDevice, OldMirror};
use crate::mm::notify::Event;

const N: u64 = 16;

/// The old-API device of the fixture variant.
fn old_dev<'e>(env: &'e Env<'_>, v: Variant) -> &'e Arc<OldDevice> {
    match v {
        Variant::Private => &env.old[0],
        Variant::Coherent => &env.old[1],
    }
}

/// A process with `N` pages of ints `i` written by the CPU, mirrored by the old device.
fn setup(env: &Env<'_>, v: Variant) -> Result<(Arc<SharedSpace>, Arc<OldMirror>, u64), String> {
    let p = env.process()?;
    let m = OldMirror::open(old_dev(env, v), &p).map_err(|e| format!("hmm_mirror_register: {e}"))?;
    let a = mmap(&p, MapRequest::anon(N * PAGE, Prot::RW))?;
    env.fill(&p, a, N * 1024, |i| i as i32)?;
    Ok((p, m, a))
}

/// The same process again for the modern dmirror.
fn modern(env: &Env<'_>, v: Variant) -> Result<(Arc<SharedSpace>, Arc<Dmirror>, u64), String> {
    let p = env.process()?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(N * PAGE, Prot::RW))?;
    env.fill(&p, a, N * 1024, |i| i as i32)?;
    Ok((p, d, a))
}

/// Ends a scenario: the process goes, the mirror is released once, and the device has every
/// page it lent back.
fn teardown(dev: &Arc<OldDevice>, p: Arc<SharedSpace>, m: Arc<OldMirror>, in_use: u64) -> Verdict {
    drop(p);
    ensure!(m.released() == 1, "release called {} times on teardown", m.released());
    ensure!(m.entries() == 0, "{} device entries left after release", m.entries());
    drop(m);
    ensure!(dev.pages_in_use() == in_use, "device pages in use: {} before, {} after", in_use, dev.pages_in_use());
    Ok(Outcome::Pass)
}

/// The old-API driver and dmirror, each on its own process holding the same data.
struct Pair<'e> {
    dev: &'e Arc<OldDevice>,
    in_use: u64,
    p: Arc<SharedSpace>,
    m: Arc<OldMirror>,
    a: u64,
    q: Arc<SharedSpace>,
    d: Arc<Dmirror>,
    b: u64,
}

fn pair<'e>(env: &'e Env<'_>, v: Variant) -> Result<Pair<'e>, String> {
    let dev = old_dev(env, v);
    let in_use = dev.pages_in_use();
    let (p, m, a) = setup(env, v)?;
    let (q, d, b) = modern(env, v)?;
    Ok(Pair { dev, in_use, p, m, a, q, d, b })
}

impl Pair<'_> {
    /// Both migrate all `N` pages to their device.
    fn migrate_both(&self) -> Result<(), String> {
        let moved = ok!(self.m.migrate_to_dev(self.a, N));
        ensure!(moved == N as usize, "migrate_vma moved {moved} of {N} pages");
        migrated(&self.d, self.b, N).map(|_| ())
    }

    /// dmirror's process goes, then [`teardown`] of the old-API one.
    fn finish(self) -> Verdict {
        drop((self.q, self.d));
        teardown(self.dev, self.p, self.m, self.in_use)
    }
}

/// Device reads (5.x `hmm_range_fault` and 4.14 `hmm_vma_fault`) give what the CPU wrote and
/// what dmirror reads; the device table maps exactly the frames the CPU maps.
pub(super) fn old_api_read(env: &Env<'_>, v: Variant) -> Verdict {
    let x = pair(env, v)?;
    let Pair { ref p, ref m, a, ref d, b, .. } = x;
    let new = ok!(d.read(b, N)).0;
    ensure!(ok!(m.read(a, N)) == new, "5.x hmm_range_fault read differs from dmirror's");
    ensure!(ok!(m.read_4_14(a, N)) == new, "4.14 hmm_vma_fault read differs from dmirror's");
    check_ints(&ints_of(&new), |i| i as i32, "device read")?;
    ensure!(m.entries() == N as usize, "device table has {} entries", m.entries());
    for k in 0..N {
        let va = a + k * PAGE;
        let cpu = p.lock().translate(va);
        ensure!(m.entry(va).map(|(f, _)| f.addr()) == cpu, "page {k}: device maps {:?}, CPU {cpu:?}", m.entry(va));
    }
    x.finish()
}

/// A device write faults the pages in for write; the CPU reads what the device wrote, as it
/// does after dmirror's write; a read-only mapping refuses the write with -EPERM.
pub(super) fn old_api_write(env: &Env<'_>, v: Variant) -> Verdict {
    let x = pair(env, v)?;
    let Pair { ref p, ref m, a, ref q, ref d, b, .. } = x;
    let data = bytes_of(N * 1024, |i| -(i as i32));
    ok!(m.write(a, &data));
    ok!(d.write(b, &data));
    ensure!(env.ints(p, a, N * 1024)? == env.ints(q, b, N * 1024)?, "CPU view after the device writes differs");
    check_ints(&env.ints(p, a, N * 1024)?, |i| -(i as i32), "CPU read after the device write")?;
    ensure!((0..N).all(|k| m.entry(a + k * PAGE).is_some_and(|(_, w)| w)), "device entries not writable");
    ok!(p.lock().mprotect(a, N * PAGE, Prot::READ));
    ensure!(m.entries() == 0, "mprotect left {} device entries", m.entries());
    let r = m.write(a, &data[..PAGE as usize]);
    ensure!(r == Err(LegacyError::Permission), "write to a read-only page: {r:?}");
    ensure!(ok!(m.read(a, 1)) == data[..PAGE as usize], "read-only page still readable by the device");
    x.finish()
}

/// Callback `migrate_vma` to the device: both snapshot calls see what the modern snapshot
/// sees (private), the device reads its own memory without moving it back (4.14 never
/// migrated on a device fault), and data is intact.
pub(super) fn old_api_migrate(env: &Env<'_>, v: Variant) -> Verdict {
    let x = pair(env, v)?;
    let Pair { dev, in_use, ref m, a, ref d, b, .. } = x;
    ensure!(ok!(m.migrate_to_dev(a, N)) == N as usize, "not every page moved");
    ensure!(dev.pages_in_use() == in_use + N, "device pages in use: {}", dev.pages_in_use());
    ensure!(m.entries() == N as usize, "finalize_and_map mapped {} pages", m.entries());
    migrated(d, b, N)?;
    let modern_snap = ok!(d.snapshot(b, N)).0;
    let snap = ok!(m.snapshot(a, N));
    ensure!(ok!(m.snapshot_4_14(a, N)) == snap, "4.14 and 5.x snapshots differ");
    match v {
        Variant::Private => {
            ensure!(snap == modern_snap, "snapshot {snap:x?}, dmirror's {modern_snap:x?}");
            let local = prot::DEV_PRIVATE_LOCAL | prot::WRITE;
            ensure!(snap.iter().all(|&x| x == local), "snapshot {snap:x?}");
        }
        Variant::Coherent => {
            // DEVICE_PUBLIC pages are mapped like RAM; the old API had no flag for them.
            ensure!(modern_snap.iter().all(|&x| x == prot::DEV_COHERENT_LOCAL | prot::WRITE), "{modern_snap:x?}");
            ensure!(snap.iter().all(|&x| x == prot::WRITE), "snapshot {snap:x?}");
        }
    }
    let freed = dev.freed();
    check_ints(&ints_of(&ok!(m.read(a, N))), |i| i as i32, "device read of its own memory")?;
    check_ints(&ints_of(&ok!(m.read_4_14(a, N))), |i| i as i32, "4.14 device read of its own memory")?;
    ensure!(dev.freed() == freed && dev.pages_in_use() == in_use + N, "a device read moved pages");
    ensure!(ok!(m.migrate_to_dev(a, N)) == 0, "pages already on the device moved again");
    x.finish()
}

/// A CPU touch of old-API device-private memory runs the devmem `fault` callback, which
/// migrates the page back; `sync_cpu_device_pagetables` sees the migration; the data is
/// what dmirror's CPU fault gives. Coherent pages are read in place.
pub(super) fn old_api_migrate_fault(env: &Env<'_>, v: Variant) -> Verdict {
    let x = pair(env, v)?;
    let Pair { dev, ref p, ref m, a, ref q, b, .. } = x;
    x.migrate_both()?;
    let freed = dev.freed();
    env.cpu.write(p, a + 8, &7i32.to_le_bytes()).map_err(|e| format!("CPU write: {e}"))?;
    env.cpu.write(q, b + 8, &7i32.to_le_bytes()).map_err(|e| format!("CPU write: {e}"))?;
    if v == Variant::Private {
        ensure!(dev.freed() == freed + 1, "the fault callback moved {} pages", dev.freed() - freed);
        let seen = m.syncs().iter().any(|&(s, e, ev)| s <= a && a < e && ev == Event::Migrate);
        ensure!(seen, "no migrate invalidation reached sync_cpu_device_pagetables: {:?}", m.syncs());
        ensure!(m.entry(a).is_none(), "the device still maps the migrated page");
    } else {
        ensure!(dev.freed() == freed, "a CPU access moved coherent memory");
    }
    let (old_ints, new_ints) = (env.ints(p, a, N * 1024)?, env.ints(q, b, N * 1024)?);
    ensure!(old_ints == new_ints, "CPU view after the faults differs from dmirror's");
    check_ints(&old_ints, |i| if i == 2 { 7 } else { i as i32 }, "CPU read")?;
    // Coherent pages stay on the device until the process goes.
    x.finish()
}

/// Callback `migrate_vma` back to RAM: every page comes back, the device frees them, data
/// matches dmirror's after its MIGRATE_TO_SYS.
pub(super) fn old_api_migrate_sys(env: &Env<'_>, v: Variant) -> Verdict {
    let x = pair(env, v)?;
    let Pair { dev, in_use, ref p, ref m, a, ref q, ref d, b } = x;
    x.migrate_both()?;
    ensure!(ok!(m.migrate_to_sys(a, N)) == N as usize, "not every page came back");
    ok!(d.migrate_to_sys(b, N));
    ensure!(dev.pages_in_use() == in_use, "device pages in use after migrating back: {}", dev.pages_in_use());
    ensure!(ok!(m.snapshot(a, N)) == ok!(d.snapshot(b, N)).0, "snapshots after migrating back differ");
    ensure!(env.ints(p, a, N * 1024)? == env.ints(q, b, N * 1024)?, "CPU view differs");
    check_ints(&env.ints(p, a, N * 1024)?, |i| i as i32, "CPU read after migrating back")?;
    x.finish()
}

/// Snapshots of a mixed range, against the modern snapshot of the same process: never
/// touched, read-faulted (zero page), written, written then read-only, on the device.
pub(super) fn old_api_snapshot(env: &Env<'_>, v: Variant) -> Verdict {
    let dev = old_dev(env, v);
    let in_use = dev.pages_in_use();
    let p = env.process()?;
    let m = OldMirror::open(dev, &p).map_err(|e| format!("hmm_mirror_register: {e}"))?;
    let d = env.open(v, false, &p)?;
    let a = mmap(&p, MapRequest::anon(5 * PAGE, Prot::RW))?;
    let mut one = [0u8; 4];
    env.cpu.read(&p, a + PAGE, &mut one).map_err(|e| format!("CPU read: {e}"))?;
    env.fill(&p, a + 2 * PAGE, 2048, |i| i as i32)?;
    env.fill(&p, a + 4 * PAGE, 1024, |i| i as i32)?;
    // 4.14 calls work inside one VMA: take that snapshot before mprotect splits it.
    let before = ok!(m.snapshot_4_14(a, 5));
    ok!(p.lock().mprotect(a + 3 * PAGE, PAGE, Prot::READ));
    ensure!(ok!(m.migrate_to_dev(a + 4 * PAGE, 1)) == 1, "page 4 did not move");
    let snap = ok!(m.snapshot(a, 5));
    let want = [
        prot::NONE,
        prot::READ | prot::ZERO,
        prot::WRITE,
        prot::READ,
        if v == Variant::Private { prot::DEV_PRIVATE_LOCAL | prot::WRITE } else { prot::WRITE },
    ];
    // The old API has no zero-page flag: the zero page reads as a read-only page.
    let want: Vec<u8> = want.iter().map(|&x| x & !prot::ZERO).collect();
    ensure!(snap == want, "5.x snapshot {snap:x?}, expected {want:x?}");
    ensure!(before[..4] == [prot::NONE, prot::READ, prot::WRITE, prot::WRITE], "4.14 snapshot {before:x?}");
    let modern_snap = ok!(d.snapshot(a, 4)).0;
    let plain: Vec<u8> = modern_snap.iter().map(|&x| x & !prot::ZERO).collect();
    ensure!(plain == snap[..4], "modern snapshot {modern_snap:x?} differs from 5.x {snap:x?} on RAM pages");
    drop(d);
    teardown(dev, p, m, in_use)
}

/// munmap and mprotect reach the device table through `sync_cpu_device_pagetables`; the
/// device then gets -EFAULT / -EPERM for what it can no longer reach, and the 5.2 valid
/// flag's race (an invalidation between wait-until-valid and the check) is closed.
pub(super) fn old_api_invalidate(env: &Env<'_>, v: Variant) -> Verdict {
    let dev = old_dev(env, v);
    let in_use = dev.pages_in_use();
    let (p, m, a) = setup(env, v)?;
    ok!(m.read(a, N));
    ensure!(m.entries() == N as usize, "device table has {} entries", m.entries());
    ok!(p.lock().munmap(a, N / 2 * PAGE));
    let seen = m.syncs().iter().any(|&(s, e, ev)| s <= a && a + N / 2 * PAGE <= e && ev == Event::Unmap);
    ensure!(seen, "munmap did not reach sync_cpu_device_pagetables: {:?}", m.syncs());
    ensure!(m.entries() == N as usize / 2, "{} device entries after munmap of half", m.entries());
    ensure!(m.read(a, 1) == Err(LegacyError::Fault), "device read of an unmapped page");
    let rest = a + N / 2 * PAGE;
    check_ints(&ints_of(&ok!(m.read(rest, N / 2))), |i| (i + N / 2 * 1024) as i32, "the mapped half")?;
    ok!(p.lock().mprotect(rest, N / 2 * PAGE, Prot::NONE));
    ensure!(m.entries() == 0, "{} device entries after mprotect(PROT_NONE)", m.entries());
    let r = m.read(rest, 1);
    ensure!(r == Err(LegacyError::Permission), "device read of a PROT_NONE page: {r:?}");
    ok!(p.lock().mprotect(rest, N / 2 * PAGE, Prot::RW));

    // The race: wait_until_valid, walk, then a whole invalidation before the valid check.
    let mirror = ok!(m.hmm_mirror());
    let mut range = ok!(mirror.range_register(rest, rest + N / 2 * PAGE));
    let fmt = crate::legacy::olddev::FORMAT;
    let mut w = alloc::vec![fmt.flags[crate::legacy::HMM_PFN_VALID]; (N / 2) as usize];
    ensure!(range.wait_until_valid());
    ok!(range.fault(&mut w, &fmt, true));
    ok!(p.lock().mprotect(rest, PAGE, Prot::READ));
    ensure!(range.flag(), "the 5.2 flag is set again once the invalidation ended");
    ensure!(!range.valid(), "the sequence must see the invalidation the flag missed");
    ensure!(range.wait_until_valid());
    // The words are requests again (the last results would ask for write access).
    w.iter_mut().for_each(|x| *x = fmt.flags[crate::legacy::HMM_PFN_VALID]);
    ok!(range.fault(&mut w, &fmt, true));
    ensure!(range.valid(), "a fresh walk is valid");
    ensure!(!fmt.is_write(w[0]) && fmt.pfn(w[1]).is_some(), "entries after mprotect: {:x?}", &w[..2]);
    drop(range);
    teardown(dev, p, m, in_use)
}

/// A device access while an eviction holds its pages under migration: 4.14's hmm_vma_fault
/// says -EAGAIN without `block` and -EBUSY with it; the 5.x call waits it out (`block`) once
/// the eviction ends. Declined, the pages stay on the device.
pub(super) fn old_api_busy(env: &Env<'_>, v: Variant) -> Verdict {
    let dev = old_dev(env, v);
    let in_use = dev.pages_in_use();
    let (p, m, a) = setup(env, v)?;
    ok!(m.migrate_to_dev(a, N));
    let dm = dev.devmem().ok_or("no device memory")?;
    let fmt = crate::legacy::olddev::FORMAT;
    let mut w = alloc::vec![0u64; N as usize];
    let (first, last) = (dm.pfn_first(), dm.pfn_last());
    let ev = crate::mm::migrate::migrate_device_range(&env.mm, first, last.0 - first.0);
    let e = crate::legacy::vma::hmm_vma_fault(&mut p.lock(), a, a + N * PAGE, &mut w, &fmt, false, false);
    ensure!(e.as_ref().err() == Some(&LegacyError::Again), "hmm_vma_fault(block=false): {:?}", e.map(|_| ()));
    let e = crate::legacy::vma::hmm_vma_fault(&mut p.lock(), a, a + N * PAGE, &mut w, &fmt, false, true);
    ensure!(e.as_ref().err() == Some(&LegacyError::Busy), "hmm_vma_fault(block=true): {:?}", e.map(|_| ()));
    drop(ev); // declined: every page stays on the device
    ensure!(m.entries() == 0, "the eviction's invalidation did not reach the device table");
    ensure!(dev.pages_in_use() == in_use + N, "the declined eviction moved pages");
    check_ints(&ints_of(&ok!(m.read(a, N))), |i| i as i32, "device read after the eviction")?;
    check_ints(&env.ints(&p, a, N * 1024)?, |i| i as i32, "CPU read")?;
    teardown(dev, p, m, in_use)
}
