//! The default job: a self-measurement of the kernel's memory mechanisms on real page tables
//! and real frames, then a check of every device. It prints one `@@RESULT {json}` line that
//! the xtask turns into a table; `main` then runs the default experiment when the xtask passed
//! its image as a boot module.
//!
//! Measured, each as a median over several rounds:
//! - frame allocation + free, per 4 KiB frame;
//! - kernel page-table map + unmap with per-page flush, per 4 KiB page (in the platform's
//!   scratch window, [`SCRATCH`]);
//! - 2 MiB page map + unmap;
//! - CPU copy bandwidth over 8 MiB (between two owned [`FrameRange`]s);
//! - a caught page fault (exception entry, fixup, return).
//!
//! Then, on each device: 1 MiB of a process to device memory and back (DMA, CPU faults, an
//! explicit migration), two THPs the same way, a hot-plug grow/fill/shrink cycle where the
//! device has a hot-plug region, and a compute kernel through the device MMU where it has
//! one. A failed device check fails the job (the others still run).

extern crate alloc;

use alloc::vec::Vec;

use crate::{
    json::Json,
    mm::{
        self, FrameRange, SCRATCH, frame,
        paging::{Flags, PageSize},
    },
    platform::arch::{time, trap},
    system::System,
};

/// What the result says on a machine without devices (microvm, Firecracker: no PCI).
const NO_DEVICES: &str = "this machine has no devices: the CPU-side checks ran, the device checks \
                          (round trips, THPs, hot-plug, device kernels) are skipped";

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ns(cycles: u64) -> u64 {
    time::cycles_to_ns(cycles).unwrap_or(0)
}

/// Runs the job; the error names what failed.
pub fn run(_s: &System) -> Result<(), alloc::string::String> {
    match selfcheck() {
        Ok(true) => Ok(()),
        Ok(false) => Err("a device round trip failed (see the log)".into()),
        Err(e) => Err(alloc::format!("{e}")),
    }
}

/// Why the self-measurement stopped.
#[derive(Debug)]
enum Failure {
    /// Out of frames.
    Frames(frame::OutOfFrames),
    /// A kernel mapping failed.
    Map(mm::MapError),
    /// A frame handle refused an access.
    Handle(mm::HandleError),
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Frames(e) => write!(f, "{e}"),
            Self::Map(e) => write!(f, "{e}"),
            Self::Handle(e) => write!(f, "{e}"),
        }
    }
}

impl From<frame::OutOfFrames> for Failure {
    fn from(e: frame::OutOfFrames) -> Self {
        Self::Frames(e)
    }
}

impl From<mm::MapError> for Failure {
    fn from(e: mm::MapError) -> Self {
        Self::Map(e)
    }
}

/// Measures the memory basics and runs the device round trips; `Ok(false)` if a round trip
/// failed.
fn selfcheck() -> Result<bool, Failure> {
    const ROUNDS: usize = 5;
    const PAGES: u64 = 1024;

    let mut alloc_ns = Vec::new();
    let mut map_ns = Vec::new();
    let mut huge_ns = Vec::new();
    let mut copy_mbps = Vec::new();
    let mut fault_ns = Vec::new();

    for _ in 0..ROUNDS {
        // Frames.
        let mut frames = Vec::with_capacity(PAGES as usize);
        let t0 = time::rdtsc();
        for _ in 0..PAGES {
            frames.push(frame::alloc(1)?);
        }
        for &f in &frames {
            frame::free(f, 1);
        }
        alloc_ns.push(ns(time::rdtsc() - t0) / PAGES);

        // 4 KiB map + unmap, flushing each page.
        let backing = frame::alloc(1)?;
        let t0 = time::rdtsc();
        mm::with_kernel_pt(|pt| -> Result<(), mm::MapError> {
            for i in 0..PAGES {
                pt.map(SCRATCH + i * 4096, backing, PageSize::Size4K, Flags::WRITABLE | mm::nx())?.flush();
            }
            for i in 0..PAGES {
                pt.unmap(SCRATCH + i * 4096)?.2.flush();
            }
            Ok(())
        })
        .unwrap_or(Ok(()))?;
        map_ns.push(ns(time::rdtsc() - t0) / PAGES);
        frame::free(backing, 1);

        // 2 MiB.
        let huge = frame::alloc(512)?;
        let t0 = time::rdtsc();
        mm::with_kernel_pt(|pt| -> Result<(), mm::MapError> {
            pt.map(SCRATCH, huge, PageSize::Size2M, Flags::WRITABLE | mm::nx())?.flush();
            pt.unmap(SCRATCH)?.2.flush();
            Ok(())
        })
        .unwrap_or(Ok(()))?;
        huge_ns.push(ns(time::rdtsc() - t0));
        frame::free(huge, 512);

        // Copy bandwidth: 8 MiB between two frame runs through the direct map.
        let (src, mut dst) = (FrameRange::alloc(2048)?, FrameRange::alloc(2048)?);
        let len = dst.size();
        let t0 = time::rdtsc();
        dst.copy_from(&src).map_err(Failure::Handle)?;
        let t = ns(time::rdtsc() - t0).max(1);
        copy_mbps.push(len * 1000 / t);
        drop((src, dst));

        // A caught page fault.
        let t0 = time::rdtsc();
        let r = trap::probe_read_u64(SCRATCH);
        fault_ns.push(ns(time::rdtsc() - t0));
        debug_assert!(r.is_err());
    }

    let mut failed = false;
    let mut j = Json::new();
    j.object(|j| {
        j.str("job", "memory-selfcheck, device round trips and device kernels");
        j.num("rounds", ROUNDS);
        j.num("frame_alloc_free_ns_per_frame", median(alloc_ns));
        j.num("map_unmap_4k_ns_per_page", median(map_ns));
        j.num("map_unmap_2m_ns", median(huge_ns));
        j.num("copy_mb_per_s", median(copy_mbps));
        j.num("caught_page_fault_ns", median(fault_ns));
        // Each device: 1 MiB of a process to its memory by DMA and back (CPU faults, then an
        // explicit migration), data verified through the BAR and by real loads.
        let n = crate::devices::all().len();
        if n == 0 {
            log::warn!("default job: {NO_DEVICES}");
            j.str("devices", NO_DEVICES);
        }
        for dev in 0..n {
            match crate::vram::round_trip(dev, 256) {
                Ok(r) => {
                    j.str(&alloc::format!("dev{dev}_round_trip"), &alloc::format!("{} pages, data verified", r.pages));
                    j.num(&alloc::format!("dev{dev}_migrate_to_device_ns_per_page"), r.to_device_ns);
                    // Private memory comes back by CPU faults; coherent memory the CPU reads in place.
                    let kind = crate::vram::all().ok().and_then(|v| v.get(dev).map(|v| v.kind()));
                    let coherent = kind == Some(hmm::pagemap::MemoryKind::Coherent);
                    j.str(&alloc::format!("dev{dev}_memory"), if coherent { "coherent" } else { "private" });
                    let key = if coherent { "cpu_read_in_place" } else { "cpu_fault_back" };
                    j.num(&alloc::format!("dev{dev}_{key}_ns_per_page"), r.fault_back_ns);
                    j.num(&alloc::format!("dev{dev}_migrate_to_ram_ns_per_page"), r.to_ram_ns);
                }
                Err(e) => {
                    log::error!("dev{dev} round trip: {e}");
                    j.str(&alloc::format!("dev{dev}_round_trip"), &alloc::format!("FAILED: {e}"));
                    failed = true;
                }
            }
            // 2 MiB pages: two THPs to the device whole and back, and, on a device with a
            // hot-plug region, 4 MiB plugged, filled, and removed with eviction.
            let Some(v) = crate::vram::all().ok().and_then(|v| v.get(dev)) else { continue };
            match crate::vram::checks::huge_round_trip(v, 2) {
                Ok(r) => {
                    j.str(
                        &alloc::format!("dev{dev}_thp_round_trip"),
                        &alloc::format!("{} THPs, data verified", r.thps),
                    );
                    j.num(&alloc::format!("dev{dev}_thp_to_device_ns_per_page"), r.to_device_ns_per_page);
                    j.num(&alloc::format!("dev{dev}_thp_cpu_touch_ns"), r.fault_back_ns);
                    j.num(&alloc::format!("dev{dev}_thp_to_ram_ns_per_page"), r.to_ram_ns_per_page);
                }
                Err(e) => {
                    log::error!("dev{dev} THP round trip: {e}");
                    j.str(&alloc::format!("dev{dev}_thp_round_trip"), &alloc::format!("FAILED: {e}"));
                    failed = true;
                }
            }
            if v.hot_pages() > 0 {
                match crate::vram::checks::hotplug_cycle(v) {
                    Ok(r) => {
                        j.str(
                            &alloc::format!("dev{dev}_hotplug"),
                            &alloc::format!(
                                "{} MiB plugged, {} pages evicted on removal, data verified",
                                r.bytes >> 20,
                                r.evicted
                            ),
                        );
                        j.num(&alloc::format!("dev{dev}_hotplug_grow_ns"), r.grow_ns);
                        j.num(&alloc::format!("dev{dev}_hotplug_shrink_ns"), r.shrink_ns);
                    }
                    Err(e) => {
                        log::error!("dev{dev} hot-plug: {e}");
                        j.str(&alloc::format!("dev{dev}_hotplug"), &alloc::format!("FAILED: {e}"));
                        failed = true;
                    }
                }
            }
            // A kernel on the device's compute engine over 1 MiB of a process, through its MMU.
            if crate::devices::nth(dev).map_or(true, |d| d.mmu().is_none()) {
                continue;
            }
            match crate::compute::increment_demo(dev, 256) {
                Ok(c) => {
                    j.str(&alloc::format!("dev{dev}_kernel"), "increment of 1 MiB, results verified by the CPU");
                    j.num(&alloc::format!("dev{dev}_kernel_faults"), c.faults);
                    j.num(&alloc::format!("dev{dev}_kernel_batches"), c.batches);
                    j.num(&alloc::format!("dev{dev}_kernel_pages_to_device"), c.pages_to_device);
                    j.num(&alloc::format!("dev{dev}_kernel_local_accesses"), c.local_accesses);
                    j.num(&alloc::format!("dev{dev}_kernel_ns_per_batch"), ns(c.service_time) / c.batches.max(1));
                }
                Err(e) => {
                    log::error!("dev{dev} kernel: {e}");
                    j.str(&alloc::format!("dev{dev}_kernel"), &alloc::format!("FAILED: {e}"));
                    failed = true;
                }
            }
        }
    });
    crate::sprintln!("{}", boot::protocol::Tag::Result.line(j.finish()));
    Ok(!failed)
}
