//! Fault injection on the real devices ([`crate::inject`]): a copy-engine I/O error, a copy
//! that times out, an IOMMU MAP refused midway through a batch, and RAM exhausted during
//! migration to RAM. Each test makes the fault happen in the middle of a real operation and
//! checks that the operation backs out with every page's data intact, that the error is
//! reported, that no device page leaks, and that the same operation then works again.

use super::TestResult;
use crate::System;
use crate::devices::{self, DevError, DevOffset, ResizeFailure};
use crate::inject::{self, Fault};
use crate::mm::uspace;
use crate::vram::{self, Vram};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use hmm::mm::space::Advice;
use hmm::mm::space::MapRequest;
use hmm::mm::vma::Prot;

const PAGE: u64 = 4096;
const PAGES: u64 = 64;

/// A process with `PAGES` pages of distinct data.
type Proc = super::Filled;

impl Proc {
    /// Pages now in `v`'s memory.
    fn on_device(&self, v: &Vram) -> u64 {
        let s = self.space.lock();
        (0..PAGES).filter(|k| s.lookup(self.a + k * PAGE).is_some_and(|e| v.holds(&e.pte).is_some())).count() as u64
    }
}

fn dev0() -> Result<Arc<Vram>, String> {
    vram::all().map_err(|e| e.to_string())?.first().cloned().ok_or_else(|| "no device".into())
}

fn resets(n: usize) -> u64 {
    devices::nth(n).map_or(0, |d| d.engine_stats().resets)
}

/// One migration to the device and one back, with `fault` armed for the copy of each: the
/// migration moves fewer pages (the failed copy's pages stay where they were), every byte
/// survives, no device page leaks, and both migrations then work in full.
fn copy_fault(fault: Fault) -> TestResult {
    let v = dev0()?;
    let base = v.in_use();
    let p = Proc::new(0x0f, PAGES)?;
    let r0 = resets(0);
    // RAM to device.
    let armed = inject::arm(fault, Some(0), 0);
    let moved = vram::migrate_to_device(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(armed.fired(), "the {fault:?} was never injected");
    drop(armed);
    check!(moved < PAGES, "{moved} of {PAGES} pages moved although their copy failed");
    check!(p.on_device(&v) == moved, "{} pages on the device, {moved} reported moved", p.on_device(&v));
    check!(v.in_use() == base + moved, "device pages in use {} (base {base}, moved {moved})", v.in_use());
    if fault == Fault::DmaTimeout {
        check!(resets(0) == r0 + 1, "the copy engine was not reset after the timeout");
    }
    p.check("after a failed copy to the device")?;
    // The engine works again: the rest moves.
    let again = vram::migrate_to_device(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(
        p.on_device(&v) == PAGES,
        "after the fault, only {} of {PAGES} pages reach the device ({again})",
        p.on_device(&v)
    );
    // Device to RAM.
    let armed = inject::arm(fault, Some(0), 0);
    let back = vram::migrate_to_ram(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(armed.fired(), "the {fault:?} was never injected on the way back");
    drop(armed);
    check!(back < PAGES, "{back} of {PAGES} pages came back although their copy failed");
    check!(p.on_device(&v) == PAGES - back, "{} pages left on the device after {back} came back", p.on_device(&v));
    let rest = vram::migrate_to_ram(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(p.on_device(&v) == 0 && back + rest == PAGES, "{} pages still on the device", p.on_device(&v));
    p.check("after a failed copy back to RAM")?;
    drop(p);
    check!(v.in_use() == base, "{} device pages in use after the process went (base {base})", v.in_use());
    Ok(())
}

/// The copy engine reports an I/O error (a real one: the request names a sector past the
/// disk) in the middle of a migration each way.
pub fn dma_error_backs_out(_s: &System) -> TestResult {
    copy_fault(Fault::DmaError)
}

/// A copy that does not complete in time: the engine is reset (cancelling it, whether or
/// not it ran), the migration backs out, and the engine works again.
pub fn dma_timeout_resets_the_engine(_s: &System) -> TestResult {
    copy_fault(Fault::DmaTimeout)
}

/// A copy abandoned by a reset: with several copies in flight, the first times out and the
/// others fail as abandoned; none of their pages is taken as moved.
pub fn abandoned_copies_are_not_trusted(_s: &System) -> TestResult {
    let v = dev0()?;
    let base = v.in_use();
    let p = Proc::new(0x2b, PAGES)?;
    // Scatter the process's frames so that its pages make several copy requests: every other
    // page first, then the rest (device pages come in allocation order).
    let evens: Vec<u64> = (0..PAGES).step_by(2).collect();
    for &k in &evens {
        vram::migrate_to_device(&v, &p.space, p.a + k * PAGE, 1).map_err(|e| e.to_string())?;
    }
    vram::migrate_to_device(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(p.on_device(&v) == PAGES, "{} of {PAGES} pages on the device", p.on_device(&v));
    let armed = inject::arm(Fault::DmaTimeout, Some(0), 0);
    let back = vram::migrate_to_ram(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(armed.fired(), "the timeout was never injected");
    drop(armed);
    // The timed-out copy and the others in flight with it (each page is a request of its
    // own here) stay on the device; requests after the reset go through.
    check!(back + 2 <= PAGES, "{back} of {PAGES} pages taken as moved: copies the reset abandoned were trusted");
    check!(p.on_device(&v) == PAGES - back, "{} pages on the device, {back} reported moved", p.on_device(&v));
    p.check("after abandoned copies")?;
    drop(p);
    check!(v.in_use() == base, "{} device pages in use after the process went (base {base})", v.in_use());
    Ok(())
}

/// RAM runs out during migration to RAM, explicitly and on a CPU fault: the pages without a
/// frame stay on the device with their data, the CPU access fails with an error (it does not
/// hang), and once RAM is back everything comes home intact.
pub fn ram_exhausted_during_migrate_to_ram(_s: &System) -> TestResult {
    let v = dev0()?;
    let base = v.in_use();
    let p = Proc::new(0x3c, PAGES)?;
    let moved = vram::migrate_to_device(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(moved == PAGES, "{moved} of {PAGES} pages reached the device");
    let armed = inject::arm(Fault::OutOfRam, None, 3);
    let back = vram::migrate_to_ram(&v, &p.space, p.a, PAGES).map_err(|e| e.to_string())?;
    check!(armed.fired(), "RAM exhaustion was never injected");
    drop(armed);
    check!(back == 3, "{back} pages came back with RAM for 3");
    check!(p.on_device(&v) == PAGES - 3, "{} pages on the device", p.on_device(&v));
    // A CPU fault on a device page with no RAM: the access fails, the page stays.
    let armed = inject::arm(Fault::OutOfRam, None, 0);
    let mut b = [0u8; 8];
    let r = uspace::run(&p.space, |u| u.read(p.a + 40 * PAGE, &mut b));
    check!(armed.fired(), "RAM exhaustion was never injected on the CPU fault");
    drop(armed);
    check!(r.is_err(), "a CPU fault without RAM succeeded: {b:?}");
    check!(p.on_device(&v) == PAGES - 3, "{} pages on the device after the failed fault", p.on_device(&v));
    p.check("after RAM ran out")?;
    drop(p);
    check!(v.in_use() == base, "{} device pages in use after the process went (base {base})", v.in_use());
    Ok(())
}

/// The virtio-iommu refuses one MAP in the middle of a device fault's batch: the fault fails
/// with the device's error, the domain keeps none of the batch (the shadow, which holds what
/// the device maps, has nothing in the range), and the same fault then maps everything and
/// DMA by virtual address reaches the process's data.
pub fn iommu_map_fails_midway(_s: &System) -> TestResult {
    use crate::copyengine::Dir;
    use crate::devmmu;
    let Some(dev0) = devices::all().first().filter(|_| devices::iommu().is_some()) else {
        return Err("no virtio-iommu on this machine".into());
    };
    let p = Proc::new(0x4d, PAGES)?;
    // Give every page a frame of its own, not next to its neighbours', so that the device
    // fault's batch is many MAPs: each page is written again after a page of another mapping.
    let filler = p.space.lock().mmap(MapRequest::anon(PAGES * PAGE, Prot::RW)).map_err(|e| e.to_string())?;
    p.space.lock().madvise(p.a, PAGES * PAGE, Advice::DontNeed).map_err(|e| e.to_string())?;
    for k in 0..PAGES {
        let page = &p.data[(k * PAGE) as usize..((k + 1) * PAGE) as usize];
        uspace::run(&p.space, |u| {
            u.write(filler + k * PAGE, &[1])?;
            u.write(p.a + k * PAGE, page)
        })
        .map_err(|f| format!("refill: {:?}", f.error))?;
    }
    let m = devmmu::bind(0, &p.space).map_err(|e| e.to_string())?;
    let mapped = |va: u64| dev0.with_shadow(|s| s.translate(va).is_some()).unwrap_or(false);
    let armed = inject::arm(Fault::MapError, Some(0), 2);
    let r = m.fault(p.a, p.a + PAGES * PAGE, false);
    check!(armed.fired(), "the MAP error was never injected (the batch had fewer than 3 mappings)");
    drop(armed);
    check!(r.is_err(), "a device fault whose MAP the IOMMU refused succeeded");
    if let Some(k) = (0..PAGES).find(|&k| mapped(p.a + k * PAGE)) {
        return Err(format!("page {k} is still mapped in the domain after its batch failed"));
    }
    m.fault(p.a, p.a + PAGES * PAGE, false).map_err(|e| format!("the fault after the failed one: {e}"))?;
    devmmu::dma(&m, Dir::ToDevice, DevOffset::new(0), &[(p.a, (PAGES * PAGE) as u32)])
        .map_err(|e: DevError| e.to_string())?;
    let mut got = alloc::vec![0u8; (PAGES * PAGE) as usize];
    dev0.read_mem(DevOffset::new(0), &mut got).map_err(|e| e.to_string())?;
    check!(got == p.data, "DMA by virtual address after the retried fault does not read the process's data");
    drop(m);
    Ok(())
}

const HUGE: u64 = 2 << 20;

/// What a removal run from a hook returned (None: the hook never ran).
type Removal = Arc<spin::Mutex<Option<Result<u64, DevError>>>>;

/// Installs a hook at `point` of `v`'s next migration that removes 2 MiB of its hot-plug
/// memory (the block the migration uses), and returns where the removal's result lands.
fn remove_at(v: &Arc<Vram>, point: inject::Point, skip: u32) -> (inject::Hooked, Removal) {
    let out: Removal = Arc::new(spin::Mutex::new(None));
    let (o, w) = (out.clone(), v.clone());
    let hook = inject::at(point, Some(v.device()), skip, move || *o.lock() = Some(w.shrink(HUGE)));
    (hook, out)
}

/// Whether a removal was refused, with a typed error, because the migration in flight held
/// pages of the block.
fn refused_busy(r: &Removal) -> Result<(), String> {
    match r.lock().take() {
        Some(Err(DevError::Resize { failure: ResizeFailure::StillBusy { .. }, .. })) => Ok(()),
        other => Err(format!(
            "device memory removed during a migration that holds pages of it: {other:?} (expected a StillBusy refusal)"
        )),
    }
}

impl Proc {
    /// Pages now in `v`'s hot-plug memory, each checked against its data there.
    fn in_hot_memory(&self, v: &Vram) -> Result<u64, String> {
        let mut n = 0;
        let mut page = alloc::vec![0u8; PAGE as usize];
        for k in 0..PAGES {
            let pte = self.space.lock().lookup(self.a + k * PAGE).map(|e| e.pte);
            let Some(off) = pte.as_ref().and_then(|e| v.holds(e)).and_then(|p| v.offset_of(p)) else { continue };
            check!(off.get() >= v.bar_pages() * PAGE, "page {k} is in the BAR (offset {off:#x}), which is carved out");
            v.dev().read_mem(off, &mut page).map_err(|e| format!("page {k}: device offset {off:#x}: {e}"))?;
            check!(page[..] == self.data[(k * PAGE) as usize..((k + 1) * PAGE) as usize], "page {k} in device memory");
            n += 1;
        }
        Ok(n)
    }
}

/// Device memory removed during a migration (issue 20): dev0's hot-plug memory is the only
/// device memory free (the BAR is carved out), and a hook removes it in the middle of a
/// migration: between the copy and the finalize of a migration into it and of one out of
/// it, and between two copy requests of a batch out of it while another process's pages
/// live there too. Each time the removal is refused with a typed error (the migration holds
/// the block's pages), evicting what it could; the migration completes; every page's data is
/// intact; a removal after it evicts the rest; no device page leaks. Removed after a
/// migration's setup and before its allocation, the memory goes and the migration moves
/// nothing. And the memory can be plugged and used again.
pub fn device_memory_removed_during_migration(_s: &System) -> TestResult {
    let all = vram::all().map_err(|e| e.to_string())?;
    let v = all.iter().find(|v| v.hot_pages() > 0).cloned().ok_or("no device with hot-plug memory on this machine")?;
    let (pages0, plugged0) = (v.pages(), v.plugged_pages());
    v.grow(HUGE).map_err(|e| e.to_string())?;
    let bar = v.bar_pages();
    let Some(carved) = v.carve(bar) else {
        v.shrink(HUGE).map_err(|e| e.to_string())?;
        return Err(format!("dev{}: the BAR is in use ({} pages); cannot isolate the test", v.device(), v.in_use()));
    };
    let r = removed_during_migration(&v);
    v.uncarve(carved, bar);
    if v.plugged_pages() > plugged0 {
        v.shrink(v.plugged_pages().saturating_sub(plugged0) * PAGE).map_err(|e| e.to_string())?;
    }
    r?;
    check!(v.pages() == pages0, "dev{}: {} pages online after the test, {pages0} before", v.device(), v.pages());
    Ok(())
}

/// The part of [`device_memory_removed_during_migration`] that runs with one block plugged
/// and the BAR carved out.
fn removed_during_migration(v: &Arc<Vram>) -> TestResult {
    use inject::Point;
    let base = v.in_use();
    let s = |e: DevError| e.to_string();

    // Into the hot-plug memory: removed after the copy, before the finalize.
    let p = Proc::new(0x5e, PAGES)?;
    let (hook, removal) = remove_at(v, Point::Copied, 0);
    let moved = vram::migrate_to_device(v, &p.space, p.a, PAGES).map_err(s)?;
    check!(hook.fired(), "the removal never ran");
    drop(hook);
    refused_busy(&removal)?;
    check!(moved == PAGES, "{moved} of {PAGES} pages moved into the memory being removed");
    let there = p.in_hot_memory(v)?;
    check!(there == PAGES, "{there} of {PAGES} pages in the hot-plug memory after the migration");
    check!(v.in_use() == base + PAGES, "device pages in use {} (base {base})", v.in_use());
    // Removed now, the memory gives its pages back to RAM.
    let evicted = v.shrink(HUGE).map_err(s)?;
    check!(evicted == PAGES && p.on_device(v) == 0, "{evicted} pages evicted, {} left on the device", p.on_device(v));
    check!(v.in_use() == base, "device pages in use {} after the eviction (base {base})", v.in_use());
    p.check("after the removal during a migration to the device")?;

    // Out of the hot-plug memory: removed after the copy, before the finalize.
    v.grow(HUGE).map_err(s)?;
    vram::migrate_to_device(v, &p.space, p.a, PAGES).map_err(s)?;
    check!(p.in_hot_memory(v)? == PAGES, "the pages did not go back to the plugged memory");
    let (hook, removal) = remove_at(v, Point::Copied, 0);
    let back = vram::migrate_to_ram(v, &p.space, p.a, PAGES).map_err(s)?;
    check!(hook.fired(), "the removal never ran on the way back");
    drop(hook);
    refused_busy(&removal)?;
    check!(back == PAGES && p.on_device(v) == 0, "{back} pages came back, {} still on the device", p.on_device(v));
    check!(v.in_use() == base, "device pages in use {} after the migration back (base {base})", v.in_use());
    p.check("after the removal during a migration to RAM")?;

    // Between two copy requests of a batch out of the memory, with another process's pages
    // there too: each page of `p` alone makes a request (every other page first), so the
    // batch has several windows of requests; `q`'s pages are not in the migration.
    let q = Proc::new(0x6f, PAGES)?;
    for k in (0..PAGES).step_by(2) {
        vram::migrate_to_device(v, &p.space, p.a + k * PAGE, 1).map_err(s)?;
    }
    vram::migrate_to_device(v, &p.space, p.a, PAGES).map_err(s)?;
    vram::migrate_to_device(v, &q.space, q.a, PAGES).map_err(s)?;
    check!(p.in_hot_memory(v)? == PAGES && q.in_hot_memory(v)? == PAGES, "not every page in the plugged memory");
    let (hook, removal) = remove_at(v, Point::BetweenCopies, 0);
    let back = vram::migrate_to_ram(v, &p.space, p.a, PAGES).map_err(s)?;
    check!(hook.fired(), "the removal never ran between two copies (the batch had one window)");
    drop(hook);
    refused_busy(&removal)?;
    check!(back == PAGES && p.on_device(v) == 0, "{back} pages came back, {} still on the device", p.on_device(v));
    // What the removal could take (q's pages) went to RAM.
    check!(
        q.on_device(v) == 0,
        "{} of the other process's pages still on the device after the removal",
        q.on_device(v)
    );
    check!(v.in_use() == base, "device pages in use {} after the batch (base {base})", v.in_use());
    p.check("after the removal between two copies")?;
    q.check("the other process, after the removal evicted it")?;

    // Removed after the migration collected its pages and before it allocates: the removal
    // succeeds (nothing of the block is in use), and the migration, with no device memory
    // left (the BAR is carved out), moves nothing; the pages stay in RAM.
    let plugged = v.plugged_pages();
    let (hook, removal) = remove_at(v, Point::SetUp, 0);
    let moved = vram::migrate_to_device(v, &q.space, q.a, PAGES).map_err(s)?;
    check!(hook.fired(), "the removal never ran before the allocation");
    drop(hook);
    let r = removal.lock().take();
    check!(matches!(r, Some(Ok(0))), "removing an unused block during a migration's setup: {r:?}");
    check!(moved == 0 && q.on_device(v) == 0, "{moved} pages moved into removed memory");
    check!(v.plugged_pages() + HUGE / PAGE == plugged, "{} pages plugged, {plugged} before", v.plugged_pages());
    check!(v.in_use() == base, "device pages in use {} (base {base})", v.in_use());
    q.check("after the memory went before the migration allocated")?;

    // The memory is plugged again, and used again.
    v.grow(HUGE).map_err(s)?;
    vram::migrate_to_device(v, &q.space, q.a, PAGES).map_err(s)?;
    check!(q.in_hot_memory(v)? == PAGES, "the plugged-again memory does not take the pages");
    check!(v.shrink(HUGE).map_err(s)? == PAGES, "the pages in the plugged-again memory were not all evicted");
    q.check("after the memory was plugged, used and removed again")?;
    drop((p, q));
    check!(v.in_use() == base, "{} device pages in use after the processes went (base {base})", v.in_use());
    Ok(())
}

/// A virtio-mem UNPLUG the device refuses (issue 27), on dev0's hot-plug memory with the
/// BAR carved out, so a process's pages live in the block being removed:
/// - refused once: the driver sends it again, the shrink succeeds after evicting the pages,
///   and a later grow plugs the block (before, the block stayed plugged on the device while
///   the kernel had it offline, and the grow's PLUG was refused);
/// - refused on every try: the device still has the block plugged (STATE says so), the shrink
///   fails with a typed error saying it is back in use, and it is: pages migrate into it;
/// - refused on every try with the STATE request refused too: the block stays offline, marked
///   unknown; the next grow asks the device again and brings it back without a PLUG.
///
/// Every page's data is intact throughout, and no device page leaks.
pub fn failed_unplug_is_retried_or_undone(_s: &System) -> TestResult {
    let all = vram::all().map_err(|e| e.to_string())?;
    let v = all.iter().find(|v| v.hot_pages() > 0).cloned().ok_or("no device with hot-plug memory on this machine")?;
    let (pages0, plugged0) = (v.pages(), v.plugged_pages());
    let bar = v.bar_pages();
    let Some(carved) = v.carve(bar) else {
        return Err(format!("dev{}: the BAR is in use ({} pages); cannot isolate the test", v.device(), v.in_use()));
    };
    let r = failed_unplug(&v);
    if v.plugged_pages() > plugged0 {
        let _ = v.shrink(v.plugged_pages().saturating_sub(plugged0) * PAGE);
    }
    v.uncarve(carved, bar);
    r?;
    check!(v.pages() == pages0, "dev{}: {} pages online after the test, {pages0} before", v.device(), v.pages());
    check!(
        v.plugged_pages() == plugged0,
        "dev{}: {} pages plugged after, {plugged0} before",
        v.device(),
        v.plugged_pages()
    );
    Ok(())
}

fn failed_unplug(v: &Arc<Vram>) -> TestResult {
    use crate::virtiomem::UNPLUG_TRIES;
    let s = |e: DevError| e.to_string();
    let dev = Some(v.device());
    let base = v.in_use();
    let p = Proc::new(0x7a, PAGES)?;
    let fill = |what: &str| -> TestResult {
        let moved = vram::migrate_to_device(v, &p.space, p.a, PAGES).map_err(s)?;
        let there = p.in_hot_memory(v)?;
        check!(moved == PAGES && there == PAGES, "{what}: {moved} pages moved, {there} in the hot-plug memory");
        Ok(())
    };

    // Refused once: retried.
    v.grow(HUGE).map_err(s)?;
    fill("refused once")?;
    let armed = inject::arm(Fault::UnplugError, dev, 0);
    let evicted = v.shrink(HUGE).map_err(|e| format!("a shrink whose UNPLUG is refused once: {e}"))?;
    check!(armed.fired(), "the UNPLUG was never refused");
    drop(armed);
    check!(evicted == PAGES && p.on_device(v) == 0, "{evicted} pages evicted, {} left on the device", p.on_device(v));
    p.check("after an UNPLUG refused once")?;
    v.grow(HUGE).map_err(|e| format!("plugging again the block whose UNPLUG was retried: {e}"))?;

    // Refused on every try: the block is still plugged, and back in use.
    fill("refused on every try")?;
    let online = v.pages();
    let armed = inject::arm_times(Fault::UnplugError, dev, 0, UNPLUG_TRIES);
    let r = v.shrink(HUGE);
    check!(armed.fired(), "the UNPLUGs were not all refused");
    drop(armed);
    check!(
        matches!(r, Err(DevError::Resize { failure: ResizeFailure::Unplug { online: true, .. }, .. })),
        "a shrink whose UNPLUG is always refused: {r:?} (expected an Unplug error with the block back online)"
    );
    check!(p.on_device(v) == 0, "{} pages left on the device by the failed shrink", p.on_device(v));
    p.check("after an UNPLUG refused on every try")?;
    check!(v.pages() == online, "{} pages online after the failed UNPLUG, {online} before", v.pages());
    fill("the block brought back")?;
    check!(v.shrink(HUGE).map_err(s)? == PAGES, "the brought-back block's pages were not all evicted");
    v.grow(HUGE).map_err(s)?;

    // Refused on every try, and the STATE too: offline, unknown, settled by the next grow.
    let armed = inject::arm_times(Fault::UnplugError, dev, 0, UNPLUG_TRIES);
    let asked = inject::arm(Fault::StateError, dev, 0);
    let r = v.shrink(HUGE);
    check!(armed.fired() && asked.fired(), "the UNPLUGs and the STATE were not all refused");
    drop((armed, asked));
    check!(
        matches!(r, Err(DevError::Resize { failure: ResizeFailure::Unplug { online: false, .. }, .. })),
        "a shrink whose UNPLUG and STATE are refused: {r:?} (expected an Unplug error with the block offline)"
    );
    check!(
        v.pages() + HUGE / PAGE == online,
        "{} pages online, expected the block offline ({online} with it)",
        v.pages()
    );
    v.grow(HUGE).map_err(|e| format!("growing over the block in an unknown state: {e}"))?;
    check!(v.pages() == online, "{} pages online after the grow, {online} expected", v.pages());
    fill("the settled block")?;
    check!(v.shrink(HUGE).map_err(s)? == PAGES, "the settled block's pages were not all evicted");
    p.check("at the end")?;
    drop(p);
    check!(v.in_use() == base, "{} device pages in use after the process went (base {base})", v.in_use());
    Ok(())
}
