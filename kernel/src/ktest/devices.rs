//! In-kernel tests of the real devices: the virtio-iommu domains, the copy engines' DMA in
//! both directions (checked through the ivshmem BAR, the other view of the same memory), and
//! the device MMU refusing what it does not map.

use super::TestResult;
use crate::System;
use crate::copyengine::Dir;
use crate::devices::{self, DevError, DevOffset, KERNEL_IOVA, Region};

/// Byte `b` of a device's memory.
fn at(b: u64) -> DevOffset {
    DevOffset::new(b)
}
use crate::mm::{FrameRange, HandleError, Iova};
use crate::vram::checks::pattern;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use drivers::viommu::{MAP_READ, MAP_WRITE, Mapping};

const PAGE: u64 = 4096;

/// Every ivshmem + virtio-blk pair is a device; behind the IOMMU each has its own domain
/// with the kernel half mapped, and its engine negotiated ACCESS_PLATFORM.
pub fn registered(s: &System) -> TestResult {
    let ivshmem = s.pci.functions.iter().filter(|f| f.name() == "ivshmem").count();
    let iommu = s.pci.functions.iter().any(|f| f.name() == "virtio-iommu");
    let list = devices::all();
    check!(list.len() == ivshmem, "{} devices for {ivshmem} ivshmem functions", list.len());
    check!(devices::iommu().is_some() == iommu, "virtio-iommu bound: {}", devices::iommu().is_some());
    let mut domains = Vec::new();
    for (n, dev) in list.iter().enumerate() {
        check!(dev.index() == n && devices::get(&dev.name).is_some_and(|d| core::ptr::eq(d, dev)));
        check!(dev.id().get().is_some_and(|d| core::ptr::eq(d, dev)) && dev.name == format!("{}", dev.id()));
        let (capacity, translated) = dev.with_engine(Region::Bar, |e| (e.capacity, e.translated)).unwrap_or_default();
        check!(
            capacity == dev.vram.bytes,
            "{}: engine reaches {:#x} bytes, memory is {:#x}",
            dev.name,
            capacity,
            dev.vram.bytes
        );
        if iommu {
            let (_, dom) = dev.mmu().ok_or_else(|| String::from("a device without a domain"))?;
            domains.push(dom);
            check!(translated, "{}: ACCESS_PLATFORM not negotiated", dev.name);
            let ram = s.boot.total_ram();
            let bytes = dev.with_shadow(|s| s.bytes()).unwrap_or(0);
            check!(bytes >= ram, "{}: kernel half maps {:#x} of {ram:#x} bytes", dev.name, bytes);
            let t = dev.with_shadow(|s| s.translate(KERNEL_IOVA + 0x10_0000).map(|t| t.0)).flatten();
            check!(t == Some(0x10_0000));
        }
    }
    domains.dedup();
    check!(domains.len() == if iommu { list.len() } else { 0 }, "domains {domains:?}");
    check!(devices::get("nodev").is_none() && matches!(devices::nth(list.len()), Err(DevError::NoDevice(_))));
    Ok(())
}

/// RAM -> device and device -> RAM through each engine, 4 KiB and a 16-page scatter-gather
/// request from pages that are not contiguous, checked through the BAR.
pub fn dma_round_trip(_s: &System) -> TestResult {
    {
        for (n, dev) in devices::all().iter().enumerate() {
            let size = dev.vram.bytes;
            let mut bufs: Vec<FrameRange> = (0..16)
                .map(|_| FrameRange::alloc(1).map_err(|_| String::from("no frames")))
                .collect::<Result<_, _>>()?;
            let pages: Vec<u64> = bufs.iter().map(|b| b.phys().as_u64()).collect();
            {
                let (translated, kernel) = (dev.mmu().is_some(), dev.iova_of(0));
                let iova = |pa: u64| if translated { kernel.offset(pa) } else { Iova::new(pa) };
                for (k, b) in bufs.iter_mut().enumerate() {
                    b.write(0, &pattern(n as u64 * 100 + k as u64, PAGE as usize)).map_err(|e| e.to_string())?;
                }
                // Single page at the start, then 16 pages near the end of device memory.
                dev.dma(Dir::ToDevice, at(0), &[(iova(pages[0]), PAGE as u32)]).map_err(|e| e.to_string())?;
                let off = size - 16 * PAGE;
                let segs: Vec<(Iova, u32)> = pages.iter().rev().map(|&pa| (iova(pa), PAGE as u32)).collect();
                dev.dma(Dir::ToDevice, at(off), &segs).map_err(|e| e.to_string())?;
                let mut got = alloc::vec![0u8; PAGE as usize];
                dev.read_mem(at(0), &mut got).map_err(|e| e.to_string())?;
                check!(got == pattern(n as u64 * 100, PAGE as usize), "dev{n}: BAR after a 4 KiB DMA write");
                for (k, b) in bufs.iter().rev().enumerate() {
                    let mut want = alloc::vec![0u8; PAGE as usize];
                    b.read(0, &mut want).map_err(|e| e.to_string())?;
                    dev.read_mem(at(off + k as u64 * PAGE), &mut got).map_err(|e| e.to_string())?;
                    check!(got == want, "dev{n}: BAR page {k} after a scatter-gather DMA write");
                }
                // The other way: the CPU writes the BAR, the engine reads it into RAM.
                let fresh = pattern(0xbeef + n as u64, 16 * PAGE as usize);
                dev.write_mem(at(off), &fresh).map_err(|e| e.to_string())?;
                dev.dma(Dir::ToRam, at(off), &segs).map_err(|e| e.to_string())?;
                for (k, b) in bufs.iter().rev().enumerate() {
                    b.read(0, &mut got).map_err(|e| e.to_string())?;
                    check!(
                        got[..] == fresh[k * PAGE as usize..(k + 1) * PAGE as usize],
                        "dev{n}: RAM page {k} after a DMA read"
                    );
                }
                // Bad requests are values.
                let end = size + dev.hot_bytes();
                let e = dev.dma(Dir::ToRam, at(end), &[(iova(pages[0]), PAGE as u32)]);
                check!(matches!(e, Err(DevError::Copy(_))), "DMA past the end: {e:?}");
                if end > size {
                    // The hot-plug region: nothing is plugged outside the hot-plug test.
                    let e = dev.dma(Dir::ToDevice, at(size), &[(iova(pages[0]), PAGE as u32)]);
                    check!(matches!(e, Err(DevError::Copy(_))), "DMA to unplugged memory: {e:?}");
                }
                let e = dev.dma(Dir::ToRam, at(100), &[(iova(pages[0]), PAGE as u32)]);
                check!(matches!(e, Err(DevError::Copy(_))), "unaligned DMA: {e:?}");
            }
        }
        Ok(())
    }
}

/// Every copy engine signals its completions by MSI-X (so a CPU waiting for a copy halts
/// instead of spinning): a copy's completion raises the DMA vector on the waiting CPU, on the
/// boot CPU and on another CPU (the entry follows the waiter).
pub fn completions_interrupt(_s: &System) -> TestResult {
    use crate::arch::smp;
    use crate::platform::arch::{time, trap::DMA_INTERRUPTS};
    use core::sync::atomic::Ordering;
    let copy = |n: usize, dev: &devices::Device| -> TestResult {
        for region in [Region::Bar, Region::Hotplug] {
            let irq = dev.with_engine(region, |e| e.interrupts());
            check!(irq != Some(false), "dev{n}: its {region:?} copy engine's completions do not interrupt");
        }
        let buf = FrameRange::alloc(1).map_err(|_| String::from("no frames"))?;
        let iova = dev.iova_of(buf.phys().as_u64());
        let before = DMA_INTERRUPTS.load(Ordering::SeqCst);
        dev.dma(Dir::ToDevice, at(0), &[(iova, PAGE as u32)]).map_err(|e| e.to_string())?;
        // The message is sent after the used ring is written, so it may land just after the
        // wait saw the completion: give it a bounded while.
        let until = time::Deadline::after_ms(2_000);
        while DMA_INTERRUPTS.load(Ordering::SeqCst) == before && !until.passed() {
            core::hint::spin_loop();
        }
        check!(DMA_INTERRUPTS.load(Ordering::SeqCst) > before, "dev{n}: a completed copy raised no interrupt");
        let halts = dev.with_engine(Region::Bar, |e| e.halts()).unwrap_or(0);
        log::info!("dev{n}: copy-engine waits halted {halts} times so far");
        Ok(())
    };
    for (n, dev) in devices::all().iter().enumerate() {
        copy(n, dev)?;
    }
    if smp::count() > 1 {
        let other = (smp::index() + 1) % smp::count();
        let h = crate::sched::spawn_on(other, move || copy(0, devices::nth(0).map_err(|e| e.to_string())?))
            .map_err(|e| format!("a task on CPU {other}: {e:?}"))?;
        h.join(10_000).map_err(|e| format!("the copy on CPU {other}: {e:?}"))??;
    }
    Ok(())
}

/// The device MMU is real: a page mapped at a user-half IOVA is reachable, and once it is
/// unmapped (splitting the mapping it was part of) the kernel refuses the DMA, while the
/// page beside it still works and its data is intact.
pub fn unmapped_dma_is_refused(_s: &System) -> TestResult {
    {
        if devices::iommu().is_none() {
            return Ok(());
        }
        let d = devices::nth(0).map_err(|e| e.to_string())?;
        let mut buf = FrameRange::alloc(2).map_err(|_| String::from("no frames"))?;
        let pa = buf.phys().as_u64();
        let iova = 0x7000_0000u64;
        let r = (|| {
            d.map(&[Mapping { iova, len: 2 * PAGE, phys: pa, flags: MAP_READ | MAP_WRITE }])
                .map_err(|e| e.to_string())?;
            let data = pattern(7, 2 * PAGE as usize);
            buf.write(0, &data).map_err(|e| e.to_string())?;
            d.dma(Dir::ToDevice, at(0), &[(Iova::new(iova), 2 * PAGE as u32)]).map_err(|e| e.to_string())?;
            d.unmap(iova, PAGE).map_err(|e| e.to_string())?;
            let e = d.dma(Dir::ToDevice, at(0), &[(Iova::new(iova), PAGE as u32)]);
            check!(matches!(e, Err(DevError::NotMapped { iova: 0x7000_0000, .. })), "DMA from an unmapped page: {e:?}");
            let e = d.dma(Dir::ToRam, at(0), &[(Iova::new(iova), 2 * PAGE as u32)]);
            check!(matches!(e, Err(DevError::NotMapped { .. })), "DMA over a partly unmapped range: {e:?}");
            d.dma(Dir::ToRam, at(PAGE), &[(Iova::new(iova + PAGE), PAGE as u32)]).map_err(|e| e.to_string())?;
            let mut got = alloc::vec![0u8; PAGE as usize];
            buf.read(PAGE, &mut got).map_err(|e| e.to_string())?;
            check!(got[..] == data[PAGE as usize..], "the still-mapped page after a DMA read of its own data");
            let mapped = |va: u64| d.with_shadow(|s| s.translate(va).is_some()).unwrap_or(false);
            check!(!mapped(iova) && mapped(iova + PAGE));
            // A mapping that overlaps is refused before it reaches the device.
            let e = d.map(&[Mapping { iova: iova + PAGE, len: PAGE, phys: pa, flags: MAP_READ }]);
            check!(e.is_err(), "an overlapping map was accepted");
            d.unmap(iova, 2 * PAGE).map_err(|e| e.to_string())?;
            check!(!mapped(iova + PAGE));
            Ok(())
        })();
        drop(buf);
        r
    }
}

/// virtio-iommu requests that the device refuses come back as values naming the request and
/// the status; requests the configuration forbids are refused before they are sent.
pub fn iommu_errors_are_values(_s: &System) -> TestResult {
    {
        let Some(io) = devices::iommu() else { return Ok(()) };
        let mut io = io.lock();
        let domain = io.new_domain().map_err(|e| e.to_string())?;
        let e = io.attach(domain, 0xfff0).unwrap_err().to_string();
        check!(e.contains("ATTACH") && e.contains("NOENT"), "attach of an unknown endpoint: {e}");
        let e = io.detach(domain, 0xfff0).unwrap_err().to_string();
        check!(e.contains("DETACH"), "detach of an unknown endpoint: {e}");
        let m = Mapping { iova: 0x1000_0800, len: PAGE, phys: 0, flags: MAP_READ };
        let e = io.map(domain, &[m]).unwrap_err().to_string();
        check!(e.contains("not aligned"), "unaligned map: {e}");
        check!(io.features & drivers::viommu::F_MAP_UNMAP != 0);
        Ok(())
    }
}

/// Device memory as private pages: 256 pages of a process migrate to each device by DMA,
/// sit in its memory (read through the BAR), come back by CPU faults and by explicit
/// migration, every byte intact, and the device pages are all free again afterwards.
/// Each device runs it three ways: DMA with the default fault-around, DMA one page per CPU
/// fault, and the CPU-copy baseline.
pub fn migrate_round_trip(_s: &System) -> TestResult {
    use crate::vram::{self, Copier};
    let n = devices::all().len();
    for dev in 0..n {
        let v = vram::all().map_err(|e| e.to_string())?[dev].clone();
        let around = v.fault_around();
        for (copier, fa) in [(Copier::Dma, around), (Copier::Dma, 1), (Copier::Cpu, around)] {
            v.set_copier(copier);
            v.set_fault_around(fa).map_err(|e| e.to_string())?;
            let r = vram::round_trip(dev, 256);
            v.set_copier(Copier::Dma);
            v.set_fault_around(around).map_err(|e| e.to_string())?;
            let r = r.map_err(|e| format!("dev{dev} ({copier:?}, fault-around {fa}): {e}"))?;
            log::info!("dev{dev} ({copier:?}, fault-around {fa}): {r:?}");
        }
        check!(v.set_fault_around(3).is_err() && v.set_fault_around(1024).is_err(), "bad fault-around accepted");
    }
    Ok(())
}

/// The device MMU mirrors a process: DMA by virtual address through the device's domain
/// reaches the process's own frames (both ways); after munmap or mprotect of part of the
/// range the device can no longer reach that part (the kernel refuses the request, and the
/// domain itself no longer maps it, so the virtio-iommu would refuse the DMA), while the rest
/// still works and the data is intact; pages migrated to the device become local; unbind
/// empties the user half.
pub fn mirror_is_real(_s: &System) -> TestResult {
    use crate::devmmu;
    use crate::mm::uspace;
    use hmm::devmmu::{MirrorError, Where};
    use hmm::mm::space::{AddressSpace, MapRequest};
    use hmm::mm::vma::Prot;
    let Some(dev0) = devices::all().first().filter(|_| devices::iommu().is_some()) else { return Ok(()) };
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|e| e.to_string())?);
    let pages = 16u64;
    let a = space.lock().mmap(MapRequest::anon(pages * PAGE, Prot::RW)).map_err(|e| e.to_string())?;
    let data = pattern(0x51, (pages * PAGE) as usize);
    uspace::run(&space, |u| u.write(a, &data)).map_err(|f| format!("CPU fill: {:?}", f.error))?;
    let m = devmmu::bind(0, &space).map_err(|e| e.to_string())?;
    let e = devmmu::bind(0, &space);
    check!(matches!(e, Err(DevError::AlreadyBound(0))), "a second bind of one space to dev0: {e:?}");
    // The space's window in dev0's domain (slot 0's starts at 0: IOVA = VA).
    let base = m.with_domain(|d| d.base);
    let shadow = |va: u64| dev0.with_shadow(|s| s.translate(va + base).map(|t| t.0)).flatten();
    let seg = |k: u64, n: u64| [(a + k * PAGE, (n * PAGE) as u32)];
    let bar_page = |k: u64| {
        let mut b = alloc::vec![0u8; PAGE as usize];
        dev0.read_mem(at(k * PAGE), &mut b).map(|()| b).map_err(|e| e.to_string())
    };
    let want = |k: u64| &data[(k * PAGE) as usize..((k + 1) * PAGE) as usize];

    // Before a device fault nothing is mapped, and DMA is refused.
    let e = devmmu::dma(&m, Dir::ToDevice, at(0), &seg(0, 1));
    check!(matches!(e, Err(DevError::Mirror(MirrorError::NotMapped { .. }))), "DMA before a fault: {e:?}");
    m.fault(a, a + pages * PAGE, true).map_err(|e| e.to_string())?;
    for k in 0..pages {
        let cpu = space.lock().translate(a + k * PAGE);
        check!(
            cpu.is_some() && shadow(a + k * PAGE) == cpu,
            "page {k}: the domain maps {:?}, the CPU {cpu:?}",
            shadow(a + k * PAGE)
        );
    }
    // The device reads the process by virtual address...
    devmmu::dma(&m, Dir::ToDevice, at(0), &seg(0, pages)).map_err(|e| e.to_string())?;
    for k in 0..pages {
        check!(bar_page(k)? == want(k), "page {k}: device memory after a DMA by virtual address");
    }
    // ...and writes it: the CPU sees it through its own mapping.
    let fresh = pattern(0x77, PAGE as usize);
    dev0.write_mem(at(100 * PAGE), &fresh).map_err(|e| e.to_string())?;
    devmmu::dma(&m, Dir::ToRam, at(100 * PAGE), &seg(15, 1)).map_err(|e| e.to_string())?;
    let mut got = alloc::vec![0u8; PAGE as usize];
    uspace::run(&space, |u| u.read(a + 15 * PAGE, &mut got)).map_err(|f| format!("{:?}", f.error))?;
    check!(got == fresh, "the CPU does not see what the device wrote at the last page");
    dev0.write_mem(at(100 * PAGE), want(15)).map_err(|e| e.to_string())?;
    devmmu::dma(&m, Dir::ToRam, at(100 * PAGE), &seg(15, 1)).map_err(|e| e.to_string())?;

    // munmap of pages 4..8: gone from the domain, refused, the rest intact.
    space.lock().munmap(a + 4 * PAGE, 4 * PAGE).map_err(|e| e.to_string())?;
    for k in 4..8 {
        check!(shadow(a + k * PAGE).is_none(), "page {k} is still mapped in the domain after munmap");
    }
    let e = devmmu::dma(&m, Dir::ToDevice, at(0), &seg(4, 1));
    check!(
        matches!(e, Err(DevError::Mirror(MirrorError::NotMapped { va, .. })) if va == a + 4 * PAGE),
        "DMA from an unmapped page: {e:?}"
    );
    let e = devmmu::dma(&m, Dir::ToDevice, at(0), &seg(0, 8));
    check!(matches!(e, Err(DevError::Mirror(MirrorError::NotMapped { .. }))), "DMA over a hole: {e:?}");
    let e = dev0.dma(Dir::ToDevice, at(0), &seg(4, 1).map(|(va, l)| (Iova::new(va + base), l)));
    check!(matches!(e, Err(DevError::NotMapped { .. })), "the domain check let an unmapped page through: {e:?}");
    dev0.write_mem(at(0), &[0u8; 8 * PAGE as usize]).map_err(|e| e.to_string())?;
    devmmu::dma(&m, Dir::ToDevice, at(0), &seg(0, 4)).map_err(|e| e.to_string())?;
    devmmu::dma(&m, Dir::ToDevice, at(8 * PAGE), &seg(8, 8)).map_err(|e| e.to_string())?;
    for k in (0..4).chain(8..16) {
        check!(bar_page(k)? == want(k), "page {k} after munmap of 4..8: the rest must still work");
    }

    // mprotect of 8..12 read-only: the device loses it, gets it back read-only, and a
    // device write is refused while device reads work.
    space.lock().mprotect(a + 8 * PAGE, 4 * PAGE, Prot::READ).map_err(|e| e.to_string())?;
    check!(shadow(a + 8 * PAGE).is_none(), "page 8 still mapped after mprotect");
    m.fault(a + 8 * PAGE, a + 12 * PAGE, false).map_err(|e| e.to_string())?;
    let e = devmmu::dma(&m, Dir::ToRam, at(0), &seg(8, 1));
    check!(matches!(e, Err(DevError::Mirror(MirrorError::NotMapped { write: true, .. }))), "device write: {e:?}");
    let e = m.fault(a + 8 * PAGE, a + 9 * PAGE, true);
    check!(matches!(e, Err(MirrorError::Fault { .. })), "write fault on a read-only page: {e:?}");
    devmmu::dma(&m, Dir::ToDevice, at(8 * PAGE), &seg(8, 4)).map_err(|e| e.to_string())?;
    for k in 8..12 {
        check!(bar_page(k)? == want(k), "page {k} read by the device after mprotect");
    }

    // Pages 12..16 migrate to the device: the domain drops them; faulted again they are local.
    let v = crate::vram::all().map_err(|e| e.to_string())?[0].clone();
    let moved = crate::vram::migrate_to_device(&v, &space, a + 12 * PAGE, 4).map_err(|e| e.to_string())?;
    check!(moved == 4, "{moved} of 4 pages migrated");
    check!(shadow(a + 12 * PAGE).is_none(), "a migrated page is still mapped in the domain");
    m.fault(a + 12 * PAGE, a + 16 * PAGE, false).map_err(|e| e.to_string())?;
    for k in 12..16 {
        let t = m.translate(a + k * PAGE);
        let Some(Where::Local(p)) = t.map(|t| t.at) else { return Err(format!("page {k}: {t:?}")) };
        let off = v.offset_of(p).ok_or("a local page outside dev0's memory")?;
        check!(bar_page(off.page().get())? == want(k), "page {k}: device memory after the migration");
    }
    let mut all = alloc::vec![0u8; (4 * PAGE) as usize];
    uspace::run(&space, |u| u.read(a + 12 * PAGE, &mut all)).map_err(|f| format!("{:?}", f.error))?;
    check!(all[..] == data[(12 * PAGE) as usize..], "pages 12..16 after coming back to the CPU");

    let st = m.stats();
    check!(st.invalidations >= 3 && st.refused >= 4, "{st:?}");
    m.unbind().map_err(|e| e.to_string())?;
    check!(shadow(a).is_none(), "the user half is not empty after unbind");
    let m2 = devmmu::bind(0, &space).map_err(|e| format!("bind after unbind: {e}"))?;
    drop(space);
    check!(!m2.is_live(), "the mirror outlived its address space");
    Ok(())
}

/// Each device's compute engine runs a kernel over a process's array through its MMU:
/// migrate-on-touch moves the pages by DMA and computes in device memory, remote mapping
/// computes on system RAM through the domain; the CPU reads every result back, and the
/// counters add up.
pub fn compute_kernel(_s: &System) -> TestResult {
    use crate::compute;
    use crate::devmmu;
    use crate::mm::uspace;
    use crate::vram;
    use hmm::compute::{Increment, RunError};
    use hmm::mm::space::{AddressSpace, MapRequest};
    use hmm::mm::vma::Prot;
    use hmm::pagemap::MemoryKind;
    use hmm::place::policies::{migrate_on_touch, remote_map};
    let n = if devices::iommu().is_some() { devices::all().len() } else { 0 };
    for dev in 0..n {
        let mm = uspace::mm();
        let space = mm.share(AddressSpace::new(mm).map_err(|e| e.to_string())?);
        let pages = 64u64;
        let words = pages * 512;
        let mut arrays = Vec::new();
        for _ in 0..2 {
            let a = space.lock().mmap(MapRequest::anon(pages * PAGE, Prot::RW)).map_err(|e| e.to_string())?;
            let data: Vec<u8> = (0..words).flat_map(|i| i.to_le_bytes()).collect();
            uspace::run(&space, |u| u.write(a, &data)).map_err(|f| format!("CPU fill: {:?}", f.error))?;
            arrays.push(a);
        }
        let m = devmmu::bind(dev, &space).map_err(|e| e.to_string())?;
        let before = compute::counters(dev).map_err(|e| e.to_string())?;
        let mut k = Increment::new(arrays[0], words, 1, 32);
        let c = compute::launch(&m, &space, &mut k, &mut *migrate_on_touch(), (arrays[0], pages as u32), 256)
            .map_err(|e| e.to_string())?;
        check!(k.sum == words * (words - 1) / 2, "dev{dev}: the kernel read other values than the CPU wrote");
        check!(c.pages_to_device == pages && c.local_accesses == words && c.remote_accesses == 0, "dev{dev}: {c:?}");
        check!(c.batches >= 1 && c.max_batch <= 256 && c.faults >= pages, "dev{dev}: {c:?}");
        let mut k = Increment::new(arrays[1], words, 1, 32);
        let r = compute::launch(&m, &space, &mut k, &mut *remote_map(), (arrays[1], pages as u32), 256)
            .map_err(|e| e.to_string())?;
        check!(r.pages_to_device == 0 && r.remote_accesses == words, "dev{dev} remote: {r:?}");
        for &a in &arrays {
            let mut back = alloc::vec![0u8; (words * 8) as usize];
            uspace::run(&space, |u| u.read(a, &mut back)).map_err(|f| format!("CPU read: {:?}", f.error))?;
            let ok = back.chunks(8).enumerate().all(|(i, w)| u64::from_le_bytes(w.try_into().unwrap()) == i as u64 + 1);
            check!(ok, "dev{dev}: the CPU does not read the kernel's results at {a:#x}");
        }
        let after = compute::counters(dev).map_err(|e| e.to_string())?;
        check!(after.compute.batches == before.compute.batches + c.batches + r.batches);
        check!(after.vram.to_device - before.vram.to_device >= pages, "{after:?}");
        // The CPU's reads bring private pages back; coherent ones it reads in place.
        let back = after.vram.to_ram - before.vram.to_ram;
        match vram::all().map_err(|e| e.to_string())?[dev].kind() {
            MemoryKind::Private => check!(back >= pages, "the CPU's reads did not bring the pages back"),
            MemoryKind::Coherent => check!(back == 0 && after.vram.cpu_faults == before.vram.cpu_faults),
        }
        check!(after.dma.to_device - before.dma.to_device >= pages * PAGE, "{after:?}");
        // A fault the engine cannot service names the access.
        space.lock().munmap(arrays[1] + 8 * PAGE, PAGE).map_err(|e| e.to_string())?;
        let mut k = Increment::new(arrays[1], words, 512, 64);
        let e = compute::launch(&m, &space, &mut k, &mut *remote_map(), (arrays[1], pages as u32), 256);
        check!(
            matches!(&e, Err(compute::LaunchError::Fatal(RunError::Fatal(f))) if f.va == arrays[1] + 8 * PAGE && f.lane == 8),
            "dev{dev}: a kernel touching an unmapped page: {e:?}"
        );
        m.unbind().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Device-to-device migration: a process's pages on dev0 move straight into dev1's memory
/// (dev0's engine copying into dev1's BAR through its domain), byte for byte, dev0's pages
/// are freed, and the CPU reads everything back from dev1.
pub fn device_to_device(_s: &System) -> TestResult {
    use crate::mm::uspace;
    use crate::vram;
    use hmm::mm::space::{AddressSpace, MapRequest};
    use hmm::mm::vma::Prot;
    let v = vram::all().map_err(|e| e.to_string())?;
    if v.len() < 2 {
        return Ok(());
    }
    let (from, to) = (v[0].clone(), v[1].clone());
    let dev1 = to.dev();
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|e| e.to_string())?);
    let pages = 64u64;
    let a = space.lock().mmap(MapRequest::anon(pages * PAGE, Prot::RW)).map_err(|e| e.to_string())?;
    let data = pattern(0xd2d, (pages * PAGE) as usize);
    uspace::run(&space, |u| u.write(a, &data)).map_err(|f| format!("CPU fill: {:?}", f.error))?;
    let (used0, used1) = (from.in_use(), to.in_use());
    let moved = vram::migrate_to_device(&from, &space, a, pages).map_err(|e| e.to_string())?;
    check!(moved == pages, "{moved} pages reached dev0");
    let moved = vram::migrate_device_to_device(&from, &to, &space, a, pages).map_err(|e| e.to_string())?;
    check!(moved == pages, "{moved} of {pages} pages moved dev0 -> dev1");
    check!(from.in_use() == used0, "dev0 still holds {} pages", from.in_use() - used0);
    check!(to.in_use() == used1 + pages, "dev1 holds {} new pages", to.in_use() - used1);
    let mut page = alloc::vec![0u8; PAGE as usize];
    for k in 0..pages {
        let e = space.lock().lookup(a + k * PAGE).map(|e| e.pte);
        let Some(pfn) = e.as_ref().and_then(|e| to.holds(e)) else {
            return Err(format!("page {k} is not in dev1's {:?} memory after the move: {e:?}", to.kind()));
        };
        let off = to.offset_of(pfn).ok_or_else(|| format!("page {k} is not in dev1's memory"))?;
        dev1.read_mem(off, &mut page).map_err(|e| e.to_string())?;
        check!(page[..] == data[(k * PAGE) as usize..((k + 1) * PAGE) as usize], "page {k} in dev1's memory");
    }
    let e = vram::migrate_device_to_device(&to, &to, &space, a, pages);
    check!(e.is_err(), "a migration from a device to itself was accepted");
    let mut back = alloc::vec![0u8; data.len()];
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|f| format!("CPU read: {:?}", f.error))?;
    check!(back == data, "data differs after coming back from dev1");
    drop(space);
    check!(to.in_use() == used1, "dev1 pages leaked");
    Ok(())
}

/// 2 MiB pages on the real devices (see [`vram::checks::huge_round_trip`]).
pub fn huge_pages(_s: &System) -> TestResult {
    for v in crate::vram::all().map_err(|e| e.to_string())? {
        let r = crate::vram::checks::huge_round_trip(v, 2)?;
        log::info!("dev{}: {r:?}", v.device());
    }
    Ok(())
}

/// Device memory added and removed 100 times on each private device, more than the frame table
/// has sections (see [`vram::checks::dmirror_chunk_cycles`]).
pub fn chunk_cycles_give_sections_back(_s: &System) -> TestResult {
    for v in crate::vram::all().map_err(|e| e.to_string())? {
        if v.kind() == hmm::pagemap::MemoryKind::Private {
            let r = crate::vram::checks::dmirror_chunk_cycles(v, 100)?;
            log::info!("dev{}: {r}", v.device());
        }
    }
    Ok(())
}

/// Device memory added and removed at run time (see [`vram::checks::hotplug_cycle`]).
pub fn hotplug(_s: &System) -> TestResult {
    for v in crate::vram::all().map_err(|e| e.to_string())? {
        if v.hot_pages() > 0 {
            let r = crate::vram::checks::hotplug_cycle(v)?;
            log::info!("dev{}: {r:?}", v.device());
        }
    }
    Ok(())
}

/// Two devices' DMA copies overlap (issue 21): a copy is submitted on dev0's engine and, with
/// it outstanding and dev0's engine lock held by this CPU (as while a CPU waits for that copy
/// to complete), a copy on dev1 is submitted and completed by the other CPU; only then is
/// dev0's copy collected. Both land in device memory (checked through the BARs). Each
/// device's engines have locks of their own, so dev1's copy needs nothing dev0 holds; with one
/// lock over every device, dev1's copy would wait for dev0's and the bounded join would fail.
pub fn two_devices_copy_at_once(_s: &System) -> TestResult {
    use crate::arch::smp;
    use crate::sched;
    let list = devices::all();
    check!(list.len() >= 2 && smp::count() >= 2, "needs two devices and two CPUs");
    let (d0, d1) = (&list[0], &list[1]);
    const LEN: u64 = 16 * PAGE;
    let mut b0 = FrameRange::alloc(16).map_err(|_| String::from("no frames"))?;
    let mut b1 = FrameRange::alloc(16).map_err(|_| String::from("no frames"))?;
    let (a0, a1) = (b0.phys().as_u64(), b1.phys().as_u64());
    let r = (|| {
        let (p0, p1) = (pattern(0x0d0, LEN as usize), pattern(0x0d1, LEN as usize));
        let e = |e: HandleError| e.to_string();
        b0.write(0, &p0).map_err(e)?;
        b1.write(0, &p1).map_err(e)?;
        d0.write_mem(at(0), &[0u8; LEN as usize]).map_err(|e| e.to_string())?;
        d1.write_mem(at(0), &[0u8; LEN as usize]).map_err(|e| e.to_string())?;
        let t0 = d0.submit(Dir::ToDevice, at(0), &[(d0.iova_of(a0), LEN as u32)]).map_err(|e| e.to_string())?;
        let other = (smp::index() + 1) % smp::count();
        // dev0's engine is held here, its copy outstanding, while dev1 copies on the other CPU.
        let r1 = d0
            .with_engine(Region::Bar, |_held| {
                let h = sched::spawn_on(other, move || d1.dma(Dir::ToDevice, at(0), &[(d1.iova_of(a1), LEN as u32)]))
                    .map_err(|e| format!("{e:?}"))?;
                h.join(10_000).map_err(|e| format!("dev1's copy while dev0's engine is held: {e:?}"))
            })
            .ok_or("dev0 has no copy engine")?;
        let r0 = d0.wait(t0);
        let r1 = r1?;
        r1.map_err(|e| format!("dev1's copy: {e}"))?;
        r0.map_err(|e| format!("dev0's copy: {e}"))?;
        let mut got = alloc::vec![0u8; LEN as usize];
        d1.read_mem(at(0), &mut got).map_err(|e| e.to_string())?;
        check!(got == p1, "dev1's memory after its copy");
        d0.read_mem(at(0), &mut got).map_err(|e| e.to_string())?;
        check!(got == p0, "dev0's memory after its copy");
        Ok(())
    })();
    drop((b0, b1));
    r
}

/// A device's memory windows hold exactly its memory: an access past the BAR, across into the
/// hot-plug region or past the end is refused as a value, and a CPU copy between a window and
/// RAM is refused when the RAM side is not memory the kernel manages (the first MiB) or
/// overlaps the window; a copy from owned frames lands in device memory.
pub fn windows_refuse_what_they_do_not_hold(_s: &System) -> TestResult {
    use crate::mm::PhysAddr;
    for (n, dev) in devices::all().iter().enumerate() {
        let size = dev.vram.bytes;
        let end = size + dev.hot_bytes();
        let mut b = [0u8; 8];
        let e = dev.read_mem(at(end), &mut b);
        check!(matches!(e, Err(DevError::Access { .. })), "dev{n}: a read past the memory: {e:?}");
        let e = dev.window(at(size - PAGE), 2 * PAGE).map(|(_, o)| o);
        check!(matches!(e, Err(DevError::Access { .. })), "dev{n}: a window across the BAR's end: {e:?}");
        let (w, base) = dev.window(at(0), PAGE).map_err(|e| e.to_string())?;
        check!(base == 0 && w.size() == size, "dev{n}: the BAR's window is {:#x} bytes at {base:#x}", w.size());
        let e = w.copy_from_ram(0, PhysAddr::new(0x1000), PAGE);
        check!(matches!(e, Err(HandleError::NotRam(_))), "dev{n}: a copy from the first MiB: {e:?}");
        let e = w.copy_to_ram(0, w.phys() + PAGE / 2, PAGE);
        check!(matches!(e, Err(HandleError::Overlap { .. })), "dev{n}: a copy onto the window itself: {e:?}");
        let e = w.copy_from_ram(size - PAGE / 2, w.phys(), PAGE);
        check!(matches!(e, Err(HandleError::OutOfBounds { .. })), "dev{n}: a copy past the window: {e:?}");
        let mut f = FrameRange::alloc(1).map_err(|_| String::from("no frames"))?;
        let data = pattern(0x3d + n as u64, PAGE as usize);
        f.write(0, &data).map_err(|e| e.to_string())?;
        w.copy_from_frames(PAGE, &f, 0, PAGE).map_err(|e| e.to_string())?;
        let mut got = alloc::vec![0u8; PAGE as usize];
        dev.read_mem(at(PAGE), &mut got).map_err(|e| e.to_string())?;
        check!(got == data, "dev{n}: device memory after a copy from owned frames");
        f.write(0, &[0u8; PAGE as usize]).map_err(|e| e.to_string())?;
        w.copy_to_frames(PAGE, &mut f, 0, PAGE).map_err(|e| e.to_string())?;
        f.read(0, &mut got).map_err(|e| e.to_string())?;
        check!(got == data, "dev{n}: owned frames after a copy from device memory");
    }
    Ok(())
}
