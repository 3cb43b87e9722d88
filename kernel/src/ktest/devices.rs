//! In-kernel tests of the real devices: the virtio-iommu domains, the copy engines' DMA in
//! both directions (checked through the ivshmem BAR, the other view of the same memory), and
//! the device MMU refusing what it does not map.

use super::TestResult;
use crate::System;
use crate::copyengine::Dir;
use crate::devices::{self, DevError, KERNEL_IOVA};
use crate::mm::{self, frame};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use drivers::viommu::{MAP_READ, MAP_WRITE, Mapping};

const PAGE: u64 = 4096;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every ivshmem + virtio-blk pair is a device; behind the IOMMU each has its own domain
/// with the kernel half mapped, and its engine negotiated ACCESS_PLATFORM.
pub fn registered(s: &System) -> TestResult {
    let ivshmem = s.pci.functions.iter().filter(|f| f.name() == "ivshmem").count();
    let iommu = s.pci.functions.iter().any(|f| f.name() == "virtio-iommu");
    devices::with(|d| {
        check!(d.list.len() == ivshmem, "{} devices for {ivshmem} ivshmem functions", d.list.len());
        check!(d.iommu.is_some() == iommu, "virtio-iommu bound: {}", d.iommu.is_some());
        let mut domains = Vec::new();
        for dev in &d.list {
            check!(
                dev.engine.capacity == dev.vram.1,
                "{}: engine reaches {:#x} bytes, memory is {:#x}",
                dev.name,
                dev.engine.capacity,
                dev.vram.1
            );
            if iommu {
                let (_, dom) = dev.mmu.ok_or_else(|| String::from("a device without a domain"))?;
                domains.push(dom);
                check!(dev.engine.translated, "{}: ACCESS_PLATFORM not negotiated", dev.name);
                let ram = s.boot.total_ram();
                check!(
                    dev.shadow.bytes() >= ram,
                    "{}: kernel half maps {:#x} of {ram:#x} bytes",
                    dev.name,
                    dev.shadow.bytes()
                );
                check!(dev.shadow.translate(KERNEL_IOVA + 0x10_0000).map(|t| t.0) == Some(0x10_0000));
            }
        }
        domains.dedup();
        check!(domains.len() == if iommu { d.list.len() } else { 0 }, "domains {domains:?}");
        Ok(())
    })
    .unwrap_or_else(|| Err("devices not initialised".into()))
}

/// RAM -> device and device -> RAM through each engine, 4 KiB and a 16-page scatter-gather
/// request from pages that are not contiguous, checked through the BAR.
pub fn dma_round_trip(_s: &System) -> TestResult {
    devices::with(|d| {
        for n in 0..d.list.len() {
            let (bar, size) = d.list[n].vram;
            let pages: Vec<u64> =
                (0..16).map(|_| frame::alloc(1).map_err(|_| String::from("no frames"))).collect::<Result<_, _>>()?;
            let r = (|| {
                let dev = &d.list[n];
                let (translated, kernel) = (dev.mmu.is_some(), dev.iova_of(0));
                let iova = |pa: u64| if translated { kernel + pa } else { pa };
                for (k, &pa) in pages.iter().enumerate() {
                    mm::write_phys(pa, &pattern(n as u64 * 100 + k as u64, PAGE as usize));
                }
                // Single page at the start, then 16 pages near the end of device memory.
                d.dma(n, Dir::ToDevice, 0, &[(iova(pages[0]), PAGE as u32)]).map_err(|e| e.to_string())?;
                let off = size - 16 * PAGE;
                let segs: Vec<(u64, u32)> = pages.iter().rev().map(|&pa| (iova(pa), PAGE as u32)).collect();
                d.dma(n, Dir::ToDevice, off, &segs).map_err(|e| e.to_string())?;
                let mut got = alloc::vec![0u8; PAGE as usize];
                mm::read_phys(bar, &mut got);
                check!(got == pattern(n as u64 * 100, PAGE as usize), "dev{n}: BAR after a 4 KiB DMA write");
                for (k, &pa) in pages.iter().rev().enumerate() {
                    let mut want = alloc::vec![0u8; PAGE as usize];
                    mm::read_phys(pa, &mut want);
                    mm::read_phys(bar + off + k as u64 * PAGE, &mut got);
                    check!(got == want, "dev{n}: BAR page {k} after a scatter-gather DMA write");
                }
                // The other way: the CPU writes the BAR, the engine reads it into RAM.
                let fresh = pattern(0xbeef + n as u64, 16 * PAGE as usize);
                mm::write_phys(bar + off, &fresh);
                d.dma(n, Dir::ToRam, off, &segs).map_err(|e| e.to_string())?;
                for (k, &pa) in pages.iter().rev().enumerate() {
                    mm::read_phys(pa, &mut got);
                    check!(
                        got[..] == fresh[k * PAGE as usize..(k + 1) * PAGE as usize],
                        "dev{n}: RAM page {k} after a DMA read"
                    );
                }
                // Bad requests are values.
                let e = d.dma(n, Dir::ToRam, size, &[(iova(pages[0]), PAGE as u32)]);
                check!(matches!(e, Err(DevError::Copy(_))), "DMA past the end: {e:?}");
                let e = d.dma(n, Dir::ToRam, 100, &[(iova(pages[0]), PAGE as u32)]);
                check!(matches!(e, Err(DevError::Copy(_))), "unaligned DMA: {e:?}");
                Ok(())
            })();
            for pa in pages {
                frame::free(pa, 1);
            }
            r?;
        }
        Ok(())
    })
    .unwrap_or_else(|| Err("devices not initialised".into()))
}

/// The device MMU is real: a page mapped at a user-half IOVA is reachable, and once it is
/// unmapped (splitting the mapping it was part of) the kernel refuses the DMA, while the
/// page beside it still works and its data is intact.
pub fn unmapped_dma_is_refused(_s: &System) -> TestResult {
    devices::with(|d| {
        if d.iommu.is_none() {
            return Ok(());
        }
        let pa = frame::alloc(2).map_err(|_| String::from("no frames"))?;
        let iova = 0x7000_0000u64;
        let r = (|| {
            d.map(0, &[Mapping { iova, len: 2 * PAGE, phys: pa, flags: MAP_READ | MAP_WRITE }])
                .map_err(|e| e.to_string())?;
            let data = pattern(7, 2 * PAGE as usize);
            mm::write_phys(pa, &data);
            d.dma(0, Dir::ToDevice, 0, &[(iova, 2 * PAGE as u32)]).map_err(|e| e.to_string())?;
            d.unmap(0, iova, PAGE).map_err(|e| e.to_string())?;
            let e = d.dma(0, Dir::ToDevice, 0, &[(iova, PAGE as u32)]);
            check!(matches!(e, Err(DevError::NotMapped { iova: 0x7000_0000, .. })), "DMA from an unmapped page: {e:?}");
            let e = d.dma(0, Dir::ToRam, 0, &[(iova, 2 * PAGE as u32)]);
            check!(matches!(e, Err(DevError::NotMapped { .. })), "DMA over a partly unmapped range: {e:?}");
            d.dma(0, Dir::ToRam, PAGE, &[(iova + PAGE, PAGE as u32)]).map_err(|e| e.to_string())?;
            let mut got = alloc::vec![0u8; PAGE as usize];
            mm::read_phys(pa + PAGE, &mut got);
            check!(got[..] == data[PAGE as usize..], "the still-mapped page after a DMA read of its own data");
            let dev = &d.list[0];
            check!(dev.shadow.translate(iova).is_none() && dev.shadow.translate(iova + PAGE).is_some());
            // A mapping that overlaps is refused before it reaches the device.
            let e = d.map(0, &[Mapping { iova: iova + PAGE, len: PAGE, phys: pa, flags: MAP_READ }]);
            check!(e.is_err(), "an overlapping map was accepted");
            d.unmap(0, iova, 2 * PAGE).map_err(|e| e.to_string())?;
            check!(d.list[0].shadow.translate(iova + PAGE).is_none());
            Ok(())
        })();
        frame::free(pa, 2);
        r
    })
    .unwrap_or_else(|| Err("devices not initialised".into()))
}

/// virtio-iommu requests that the device refuses come back as values naming the request and
/// the status; requests the configuration forbids are refused before they are sent.
pub fn iommu_errors_are_values(_s: &System) -> TestResult {
    devices::with(|d| {
        let Some(io) = d.iommu.as_mut() else { return Ok(()) };
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
    })
    .unwrap_or_else(|| Err("devices not initialised".into()))
}

/// Device memory as private pages: 256 pages of a process migrate to each device by DMA,
/// sit in its memory (read through the BAR), come back by CPU faults and by explicit
/// migration, every byte intact, and the device pages are all free again afterwards.
pub fn migrate_round_trip(_s: &System) -> TestResult {
    let n = devices::with(|d| d.list.len()).unwrap_or(0);
    for dev in 0..n {
        let r = crate::vram::round_trip(dev, 256).map_err(|e| format!("dev{dev}: {e}"))?;
        log::info!("dev{dev}: {r:?}");
    }
    Ok(())
}
