//! The real devices' benchmark (`job=bench-devices`, driven by `cargo xtask bench devices`).
//!
//! Per device, each result one `@@BENCH {json}` line with `op`, `device`:
//!
//! | op | what is timed |
//! |---|---|
//! | `dma_to_device`, `dma_to_ram` | the copy engine moving 256 MiB in requests of `size` bytes (4 KiB, 64 KiB, 2 MiB; one contiguous segment each, up to 32 in flight): `bytes`, `ns` |
//! | `cpu_to_device`, `cpu_to_ram` | the CPU copying the same through the BAR (the CPU-copy baseline) |
//! | `migrate_to_device`, `cpu_fault_back`, `cpu_fault_back_single`, `migrate_to_ram` | 256 MiB of a process migrated to the device (4 MiB calls); brought back by one CPU load per page (a #PF brings back its fault-around window, 16 pages by default); again with one page per fault, as Linux's dmirror; migrated again and back explicitly: `pages`, `ns_per_page`, `faults`, with `copier` `dma` or `cpu` |
//! | `migrate_to_device_thp`, `cpu_fault_back_thp`, `migrate_to_ram_thp` | the same 256 MiB as THPs, moving as 2 MiB device pages (a CPU load brings a whole device THP back), DMA copies |
//! | `device_to_device` | 256 MiB of a process on dev0 moved straight into dev1's memory (dev0's engine writing dev1's BAR): `ns_per_page` |
//! | `dma_two_devices` | dev0's and dev1's engines each moving 256 MiB RAM -> device in 2 MiB requests (32 in flight), from RAM buffers of their own: `mode` `sequential` (one device after the other, on one CPU) or `concurrent` (both at once, dev1's from the other CPU): `bytes` (both devices'), `ns` |
//! | `fault_batch` | a compute kernel touching one word in each of 64 MiB of pages from 256 lanes: replayable faults serviced in batches of up to 256 (`policy` `migrate` or `remote`): `batches`, `faults`, `ns_per_batch`, `ns_per_fault` |
//!
//! The host's own memcpy (the physical limit) is measured by the xtask beside it.

use super::{BenchError, mm_err, timed, user_err, warm_guest_ram};
use crate::compute;
use crate::copyengine::Dir;
use crate::devices;
use crate::devices::{DevError, DevOffset};
use crate::devmmu;
use crate::json::Json;
use crate::mm::{FrameRange, Iova, uspace};
use crate::vram::{self, Copier};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hmm::compute::Increment;
use hmm::mm::space::{Advice, MapRequest};
use hmm::mm::vma::Prot;
use hmm::place::policy::Policy;

const PAGE: u64 = 4096;
const TOTAL: u64 = 256 << 20;
/// RAM buffer the transfers cycle through: 64 MiB in 2 MiB blocks.
const BLOCKS: usize = 32;
const BLOCK: u64 = 2 << 20;
const SIZES: [u64; 3] = [4 << 10, 64 << 10, 2 << 20];
const IN_FLIGHT: usize = 32;
/// Pages per migration call (hmm-tests' 4 MiB buffer).
const CALL_PAGES: u64 = 1024;

fn line(f: impl FnOnce(&mut Json)) {
    let mut j = Json::new();
    j.object(f);
    crate::sprintln!("{}", boot::protocol::Tag::Bench.line(j.finish()));
}

/// One throughput result: `TOTAL` bytes moved in `size` pieces in `ns`.
fn copied(op: &str, n: usize, size: u64, ns: u64) {
    line(|j| {
        j.str("op", op);
        j.num("device", n);
        j.num("size", size);
        j.num("bytes", TOTAL);
        j.num("ns", ns);
    });
}

fn dir_name(engine: &str, dir: Dir) -> String {
    format!("{engine}_{}", if dir == Dir::ToDevice { "to_device" } else { "to_ram" })
}

/// The copy engine and the CPU moving `TOTAL` bytes in `size` pieces between the buffer and
/// device memory.
fn throughput(n: usize, bufs: &mut [FrameRange], blocks: &[u64], vram_bytes: u64) -> Result<(), BenchError> {
    let dev = devices::nth(n)?;
    let dev_err = |error: DevError| BenchError::Device { device: Some(n), error };
    let kernel = dev.iova_of(0);
    let span = (BLOCKS as u64 * BLOCK).min(vram_bytes);
    for size in SIZES {
        // Piece k: RAM at blocks[(k * size) / BLOCK] + (k * size) % BLOCK, device at k * size.
        let pieces = TOTAL / size;
        let at = |k: u64| {
            let off = (k * size) % span;
            (blocks[(off / BLOCK) as usize] + off % BLOCK, off)
        };
        for dir in [Dir::ToDevice, Dir::ToRam] {
            let (r, ns, _) = timed(|| -> Result<(), BenchError> {
                let mut k = 0;
                while k < pieces {
                    let w = (pieces - k).min(IN_FLIGHT as u64);
                    let segs: Vec<[(Iova, u32); 1]> =
                        (k..k + w).map(|i| [(kernel.offset(at(i).0), size as u32)]).collect();
                    let reqs = (k..k + w).zip(&segs).map(|(i, s)| (DevOffset::new(at(i).1), &s[..]));
                    for res in dev.dma_many(dir, reqs) {
                        res.map_err(|error| BenchError::Device { device: Some(n), error })?;
                    }
                    k += w;
                }
                Ok(())
            });
            r?;
            copied(&dir_name("dma", dir), n, size, ns);
            // The CPU copies through the BAR's window, from and to the owned buffer blocks.
            let (bar, _) = dev.window(DevOffset::new(0), span).map_err(dev_err)?;
            let (r, ns, _) = timed(|| -> Result<(), BenchError> {
                for k in 0..pieces {
                    let off = (k * size) % span;
                    let (b, at) = (&mut bufs[(off / BLOCK) as usize], off % BLOCK);
                    match dir {
                        Dir::ToDevice => bar.copy_from_frames(off, b, at, size),
                        Dir::ToRam => bar.copy_to_frames(off, b, at, size),
                    }
                    .map_err(|e| dev_err(e.into()))?;
                }
                Ok(())
            });
            r?;
            copied(&dir_name("cpu", dir), n, size, ns);
        }
    }
    Ok(())
}

/// 256 MiB of a process to device `n` and back, with the device's copier set to `copier`.
/// `huge`: the process's memory is THPs (`MADV_HUGEPAGE`), which move as 2 MiB device pages
/// (ops named `..._thp`); otherwise 4 KiB pages (`MADV_NOHUGEPAGE`).
fn migration(n: usize, copier: Copier, huge: bool) -> Result<(), BenchError> {
    let v = vram::all().map_err(DevError::Memory)?.get(n).ok_or(DevError::NoDevice(n))?.clone();
    v.set_copier(copier);
    let s = uspace::new_space().map_err(mm_err("address space"))?;
    let pages = TOTAL / PAGE;
    let a = {
        let mut sp = s.lock();
        let a = sp.mmap(MapRequest::anon(TOTAL, Prot::RW)).map_err(mm_err("mmap"))?;
        let advice = if huge { Advice::HugePage } else { Advice::NoHugePage };
        sp.madvise(a, TOTAL, advice).map_err(mm_err("madvise"))?;
        a
    };
    super::touch(&s, a, TOTAL)?;
    let name = if copier == Copier::Dma { "dma" } else { "cpu" };
    let report = |op: &str, ns: u64, faults: u64| {
        line(|j| {
            j.str("op", &if huge { format!("{op}_thp") } else { op.into() });
            j.num("device", n);
            j.str("copier", name);
            j.num("pages", pages);
            j.num("ns_per_page", ns / pages);
            j.num("faults", faults);
        })
    };
    let to_device = || -> Result<(), BenchError> {
        for k in (0..pages).step_by(CALL_PAGES as usize) {
            let moved = vram::migrate_to_device(&v, &s, a + k * PAGE, CALL_PAGES)?;
            if moved != CALL_PAGES {
                return Err(BenchError::Wrong(format!(
                    "dev{n}: {moved} of {CALL_PAGES} pages migrated (device memory full?)"
                )));
            }
        }
        Ok(())
    };
    let (r, ns, f) = timed(to_device);
    r?;
    report("migrate_to_device", ns, f);
    let (r, ns, f) = timed(|| super::load_each(&s, a, TOTAL));
    r?;
    report("cpu_fault_back", ns, f);
    // The same with one page per fault (no fault-around), as Linux's dmirror does (a device
    // THP always comes back whole).
    if !huge {
        to_device()?;
        let around = v.fault_around();
        v.set_fault_around(1).map_err(mm_err("setting the fault-around window"))?;
        let (r, ns, f) = timed(|| super::load_each(&s, a, TOTAL));
        v.set_fault_around(around).map_err(mm_err("setting the fault-around window"))?;
        r?;
        report("cpu_fault_back_single", ns, f);
    }
    to_device()?;
    let (r, ns, f) = timed(|| -> Result<(), BenchError> {
        for k in (0..pages).step_by(CALL_PAGES as usize) {
            vram::migrate_to_ram(&v, &s, a + k * PAGE, CALL_PAGES)?;
        }
        Ok(())
    });
    r?;
    report("migrate_to_ram", ns, f);
    // Every word is still what the first touch stored (its own address).
    uspace::run(&s, |u| -> Result<(), BenchError> {
        for k in 0..pages {
            let va = a + k * PAGE;
            let w = u.read_u64(va).map_err(user_err("load"))?;
            if w != va {
                return Err(BenchError::Wrong(format!(
                    "dev{n}: page {k} holds {w:#x} after the round trips, not {va:#x}"
                )));
            }
        }
        Ok(())
    })?;
    drop(s);
    v.set_copier(Copier::Dma);
    if v.in_use() != 0 {
        return Err(BenchError::Wrong(format!("dev{n}: {} device pages in use after the process went", v.in_use())));
    }
    Ok(())
}

/// Fault service latency: one word per page of 64 MiB, 256 lanes, batches of up to 256.
fn fault_batches(n: usize, policy: &mut dyn Policy, name: &str) -> Result<(), BenchError> {
    let s = uspace::new_space().map_err(mm_err("address space"))?;
    let len = 64u64 << 20;
    let a = s.lock().mmap(MapRequest::anon(len, Prot::RW)).map_err(mm_err("mmap"))?;
    super::touch(&s, a, len)?;
    let m = devmmu::bind(n, &s).map_err(|error| BenchError::Device { device: Some(n), error })?;
    let mut k = Increment::new(a, len / 8, 512, 256);
    let c = compute::launch(&m, &s, &mut k, policy, (a, (len / 4096) as u32), 256)
        .map_err(|error| BenchError::Launch { device: n, error })?;
    m.unbind().map_err(BenchError::Mirror)?;
    let ns = crate::arch::time::cycles_to_ns(c.service_time).unwrap_or(0);
    line(|j| {
        j.str("op", "fault_batch");
        j.num("device", n);
        j.str("policy", name);
        j.num("batches", c.batches);
        j.num("faults", c.faults);
        j.num("max_batch", c.max_batch);
        j.num("pages_to_device", c.pages_to_device);
        j.num("ns_per_batch", ns / c.batches.max(1));
        j.num("ns_per_fault", ns / c.faults.max(1));
    });
    Ok(())
}

/// Runs the devices benchmark on every device of the machine.
pub fn devices() -> Result<(), BenchError> {
    warm_guest_ram();
    let list: Vec<(u64, u64)> = devices::all().iter().map(|dev| (dev.vram.at.as_u64(), dev.vram.bytes)).collect();
    if list.is_empty() {
        return Err(BenchError::Wrong("the machine has no devices (use qemu/bench-devices.toml)".into()));
    }
    let mut bufs: Vec<FrameRange> = (0..BLOCKS)
        .map(|_| {
            FrameRange::alloc(512).map_err(|_| BenchError::Wrong("no memory for the 64 MiB transfer buffer".into()))
        })
        .collect::<Result<_, _>>()?;
    for b in &mut bufs {
        b.write(0, &[0x5a; 64]).map_err(|e| BenchError::Device { device: None, error: e.into() })?;
    }
    let blocks: Vec<u64> = bufs.iter().map(|b| b.phys().as_u64()).collect();
    let r = (|| {
        for (n, &(_, bytes)) in list.iter().enumerate() {
            throughput(n, &mut bufs, &blocks, bytes)?;
        }
        if list.len() >= 2 {
            two_devices_at_once(&blocks)?;
        }
        Ok::<(), BenchError>(())
    })();
    drop(bufs);
    r?;
    for (n, &(_, bytes)) in list.iter().enumerate() {
        if bytes < TOTAL {
            return Err(BenchError::Wrong(format!(
                "dev{n} has {} MiB of memory; the migration runs need 256 MiB",
                bytes >> 20
            )));
        }
        migration(n, Copier::Dma, false)?;
        migration(n, Copier::Cpu, false)?;
        migration(n, Copier::Dma, true)?;
        fault_batches(n, &mut *hmm::place::policies::migrate_on_touch(), "migrate")?;
        fault_batches(n, &mut *hmm::place::policies::remote_map(), "remote")?;
    }
    if list.len() >= 2 {
        device_to_device()?;
    }
    crate::sprintln!("{}", boot::protocol::Tag::Bench.line(boot::protocol::BENCH_DONE));
    Ok(())
}

/// 256 MiB of a process moved from dev0's memory straight into dev1's (peer to peer).
fn device_to_device() -> Result<(), BenchError> {
    let v = vram::all().map_err(DevError::Memory)?;
    let (from, to) = (v[0].clone(), v[1].clone());
    let s = uspace::new_space().map_err(mm_err("address space"))?;
    let pages = TOTAL / PAGE;
    let a = s.lock().mmap(MapRequest::anon(TOTAL, Prot::RW)).map_err(mm_err("mmap"))?;
    s.lock().madvise(a, TOTAL, Advice::NoHugePage).map_err(mm_err("madvise"))?;
    super::touch(&s, a, TOTAL)?;
    for k in (0..pages).step_by(CALL_PAGES as usize) {
        vram::migrate_to_device(&from, &s, a + k * PAGE, CALL_PAGES)?;
    }
    let (r, ns, _) = timed(|| -> Result<u64, BenchError> {
        let mut moved = 0;
        for k in (0..pages).step_by(CALL_PAGES as usize) {
            moved += vram::migrate_device_to_device(&from, &to, &s, a + k * PAGE, CALL_PAGES)?;
        }
        Ok(moved)
    });
    let moved = r?;
    if moved != pages {
        return Err(BenchError::Wrong(format!("{moved} of {pages} pages moved dev0 -> dev1")));
    }
    line(|j| {
        j.str("op", "device_to_device");
        j.num("device", 0u64);
        j.num("to", 1u64);
        j.num("pages", pages);
        j.num("ns_per_page", ns / pages);
    });
    Ok(())
}

/// `TOTAL` bytes RAM -> `dev`'s memory in 2 MiB requests, `IN_FLIGHT` at once, from the
/// RAM blocks `bufs` in turn.
fn stream(dev: &devices::Device, bufs: &[u64]) -> Result<(), DevError> {
    let kernel = dev.iova_of(0);
    let span = (bufs.len() as u64 * BLOCK).min(dev.vram.bytes);
    let pieces = TOTAL / BLOCK;
    let mut k = 0;
    while k < pieces {
        let w = (pieces - k).min(IN_FLIGHT as u64);
        let segs: Vec<[(Iova, u32); 1]> =
            (k..k + w).map(|i| [(kernel.offset(bufs[i as usize % bufs.len()]), BLOCK as u32)]).collect();
        let reqs = (k..k + w).zip(&segs).map(|(i, s)| (DevOffset::new((i * BLOCK) % span), &s[..]));
        for res in dev.dma_many(Dir::ToDevice, reqs) {
            res?;
        }
        k += w;
    }
    Ok(())
}

/// Two devices' copy engines one after the other, then at once (dev1's driven from the
/// other CPU): each device has a lock of its own per engine, so the second run should take
/// about as long as the slower device alone, not the sum.
fn two_devices_at_once(blocks: &[u64]) -> Result<(), BenchError> {
    use crate::arch::smp;
    let (d0, d1) = (devices::nth(0)?, devices::nth(1)?);
    if smp::count() < 2 {
        return Err(BenchError::Wrong("two devices at once needs two CPUs".into()));
    }
    let (b0, b1) = blocks.split_at(blocks.len() / 2);
    let b1: Vec<u64> = b1.to_vec();
    let dev_err = |n: usize| move |error| BenchError::Device { device: Some(n), error };
    let report = |mode: &str, ns: u64| {
        line(|j| {
            j.str("op", "dma_two_devices");
            j.str("mode", mode);
            j.num("bytes", 2 * TOTAL);
            j.num("ns", ns);
        })
    };
    let (r, ns, _) = timed(|| -> Result<(), BenchError> {
        stream(d0, b0).map_err(dev_err(0))?;
        stream(d1, &b1).map_err(dev_err(1))
    });
    r?;
    report("sequential", ns);
    let other = (smp::index() + 1) % smp::count();
    let (r, ns, _) = timed(|| -> Result<(), BenchError> {
        let h = crate::sched::spawn_on(other, move || stream(d1, &b1))
            .map_err(|e| BenchError::Wrong(format!("starting dev1's copies on cpu{other}: {e:?}")))?;
        let r0 = stream(d0, b0).map_err(dev_err(0));
        let r1 = h.join(120_000).map_err(|e| BenchError::Wrong(format!("dev1's copies on cpu{other}: {e:?}")))?;
        r0?;
        r1.map_err(dev_err(1))
    });
    r?;
    report("concurrent", ns);
    Ok(())
}
