//! Fault injection on the real devices ([`crate::inject`]): a copy-engine I/O error, a copy
//! that times out, an IOMMU MAP refused midway through a batch, and RAM exhausted during
//! migration to RAM. Each test makes the fault happen in the middle of a real operation and
//! checks that the operation backs out with every page's data intact, that the error is
//! reported, that no device page leaks, and that the same operation then works again.

use super::TestResult;
use crate::System;
use crate::devices::{self, DevError};
use crate::inject::{self, Fault};
use crate::mm::uspace;
use crate::vram::{self, Vram};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use hmm::mm::SharedSpace;
use hmm::mm::space::Advice;
use hmm::mm::space::{AddressSpace, MapRequest};
use hmm::mm::vma::Prot;

const PAGE: u64 = 4096;
const PAGES: u64 = 64;

/// A process with `PAGES` pages of distinct data.
struct Proc {
    space: Arc<SharedSpace>,
    a: u64,
    data: Vec<u8>,
}

impl Proc {
    fn new(seed: u64) -> Result<Proc, String> {
        let mm = uspace::mm();
        let space = mm.share(AddressSpace::new(mm).map_err(|e| e.to_string())?);
        let a = space.lock().mmap(MapRequest::anon(PAGES * PAGE, Prot::RW)).map_err(|e| e.to_string())?;
        let data: Vec<u8> = (0..PAGES * PAGE / 8).flat_map(|i| (i ^ seed << 40).to_le_bytes()).collect();
        uspace::run(&space, |u| u.write(a, &data)).map_err(|f| format!("CPU fill: {:?}", f.error))?;
        Ok(Proc { space, a, data })
    }

    /// Pages now in `v`'s memory.
    fn on_device(&self, v: &Vram) -> u64 {
        let s = self.space.lock();
        (0..PAGES).filter(|k| s.lookup(self.a + k * PAGE).is_some_and(|e| v.holds(&e.pte).is_some())).count() as u64
    }

    /// Every page's data, read by the CPU (faulting device pages back).
    fn check(&self, what: &str) -> TestResult {
        let mut back = alloc::vec![0u8; self.data.len()];
        uspace::run(&self.space, |u| u.read(self.a, &mut back))
            .map_err(|f| format!("{what}: CPU read: {:?}", f.error))?;
        if let Some(k) =
            (0..PAGES as usize).find(|&k| back[k * 4096..(k + 1) * 4096] != self.data[k * 4096..(k + 1) * 4096])
        {
            return Err(format!("{what}: page {k} lost its data"));
        }
        Ok(())
    }
}

fn dev0() -> Result<Arc<Vram>, String> {
    vram::all().map_err(|e| e.to_string())?.first().cloned().ok_or_else(|| "no device".into())
}

fn resets(n: usize) -> u64 {
    devices::with(|d| d.list[n].engine.stats.resets).unwrap_or(0)
}

/// One migration to the device and one back, with `fault` armed for the copy of each: the
/// migration moves fewer pages (the failed copy's pages stay where they were), every byte
/// survives, no device page leaks, and both migrations then work in full.
fn copy_fault(fault: Fault) -> TestResult {
    let v = dev0()?;
    let base = v.in_use();
    let p = Proc::new(0x0f)?;
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
    let p = Proc::new(0x2b)?;
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
    let p = Proc::new(0x3c)?;
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
    if devices::with(|d| d.iommu.is_none() || d.list.is_empty()).unwrap_or(true) {
        return Err("no virtio-iommu on this machine".into());
    }
    let p = Proc::new(0x4d)?;
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
    let mapped = |va: u64| devices::with(|d| d.list[0].shadow.translate(va).is_some()).unwrap_or(false);
    let armed = inject::arm(Fault::MapError, Some(0), 2);
    let r = m.fault(p.a, p.a + PAGES * PAGE, false);
    check!(armed.fired(), "the MAP error was never injected (the batch had fewer than 3 mappings)");
    drop(armed);
    check!(r.is_err(), "a device fault whose MAP the IOMMU refused succeeded");
    if let Some(k) = (0..PAGES).find(|&k| mapped(p.a + k * PAGE)) {
        return Err(format!("page {k} is still mapped in the domain after its batch failed"));
    }
    m.fault(p.a, p.a + PAGES * PAGE, false).map_err(|e| format!("the fault after the failed one: {e}"))?;
    let (bar, _) = devices::with(|d| d.list[0].vram).ok_or("devices not initialised")?;
    devmmu::dma(&m, Dir::ToDevice, 0, &[(p.a, (PAGES * PAGE) as u32)]).map_err(|e: DevError| e.to_string())?;
    let mut got = alloc::vec![0u8; (PAGES * PAGE) as usize];
    crate::mm::read_phys(bar, &mut got);
    check!(got == p.data, "DMA by virtual address after the retried fault does not read the process's data");
    drop(m);
    Ok(())
}
