//! The experiment job (`job=experiment`): runs the points the xtask wrote into the boot module
//! (`hmm::place::spec`) over the real devices, and prints one `@@POINT {json}` line per point,
//! `@@TRACE {json}` lines when a point is traced, and `@@EXPERIMENT {json}` at the end.
//!
//! The real mechanism ([`Real`]) backs a point's managed pages with a fresh process address
//! space: one anonymous mapping (2 MiB pages off, so migrations stay 4 KiB), every page
//! written by the CPU first. Migrations are `migrate_vma` to and from device memory, copied by
//! the devices' DMA engines (`vram::migrate_to_device`, `migrate_to_ram`,
//! `migrate_device_to_device`). Every access the engine executes is made on the real data:
//! a CPU access through the process's page tables, a device access at the physical address the
//! page lives at (device memory, or the RAM frame a remote mapping reaches). Before each access
//! the mechanism reads the CPU page table and checks that the page is where the engine says
//! (RAM or that device's memory); a disagreement stops the point with an error. A write
//! increments the page's first word; at the end every page's count and its identity word are
//! checked, so a migration that lost or misplaced data fails the point.
//!
//! Read duplication has no HMM mechanism (Linux HMM keeps one copy of a page), so this
//! mechanism declines it and the engine maps such pages remotely (counted as
//! `dup_unsupported`); `mechanism=model` runs a point over the model instead.

use crate::arch::time;
use crate::mm::{self, uspace};
use crate::vram::{self, Vram};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use hmm::mm::SharedSpace;
use hmm::mm::pte::Pte;
use hmm::mm::space::{AddressSpace, Advice, MapRequest};
use hmm::mm::vma::Prot;
use hmm::place::engine::model::Model;
use hmm::place::engine::{MechError, Mechanism};
use hmm::place::spec::{self, Point};
use hmm::place::{Loc, PAGE};

/// Where the managed region starts in its address space (2 MiB aligned, so VA blocks line up
/// with the engine's).
const BASE: u64 = 0x10_0000_0000;
/// The identity word: page `p`'s second word holds `p ^ MAGIC`.
const MAGIC: u64 = 0x5eed_0000_0000_0000;

/// The real devices as a [`Mechanism`].
struct Real {
    space: Arc<SharedSpace>,
    vram: Vec<Arc<Vram>>,
    writes: Vec<u32>,
}

fn err(e: impl core::fmt::Display) -> MechError {
    MechError(e.to_string())
}

impl Real {
    fn new(pages: u32, vram: &[Arc<Vram>]) -> Result<Self, MechError> {
        let mm = uspace::mm();
        let space = mm.share(AddressSpace::new(mm).map_err(err)?);
        let len = pages as u64 * PAGE;
        {
            let mut s = space.lock();
            s.mmap(MapRequest::anon(len, Prot::RW).fixed(BASE))
                .map_err(|e| err(format!("mmap of {len} bytes: {e}")))?;
            s.madvise(BASE, len, Advice::NoHugePage).map_err(err)?;
        }
        // Every page populated by the CPU, with its identity word.
        let mut page = vec![0u8; PAGE as usize];
        for p in 0..pages as u64 {
            page[8..16].copy_from_slice(&(p ^ MAGIC).to_le_bytes());
            uspace::run(&space, |u| u.write(BASE + p * PAGE, &page))
                .map_err(|f| err(format!("CPU fill of page {p}: {:?}", f.error)))?;
        }
        Ok(Real { space, vram: vram.to_vec(), writes: vec![0; pages as usize] })
    }

    fn va(p: u32) -> u64 {
        BASE + p as u64 * PAGE
    }

    /// Where page `p` really is, and the physical address of its data.
    fn locate(&self, p: u32) -> Result<(Loc, u64), MechError> {
        let entry = self.space.lock().lookup(Self::va(p));
        match entry {
            Some(e) => {
                if let Pte::Present(x) = e.pte
                    && !self.vram.iter().any(|v| v.holds(&e.pte).is_some())
                {
                    return Ok((Loc::Cpu, x.pfn.addr()));
                }
                for (d, v) in self.vram.iter().enumerate() {
                    if let Some(pfn) = v.holds(&e.pte) {
                        let pa = v.phys_of(pfn).ok_or_else(|| err(format!("dev{d} page {pfn:?} has no address")))?;
                        return Ok((Loc::Dev(d as u8), pa));
                    }
                }
                Err(err(format!("page {p}: unexpected entry {:?}", e.pte)))
            }
            None => Err(err(format!("page {p} is not mapped"))),
        }
    }

    fn vram(&self, d: u8) -> Result<&Arc<Vram>, MechError> {
        self.vram.get(d as usize).ok_or_else(|| err(format!("no device {d}")))
    }
}

fn ns_since(t0: u64) -> u64 {
    time::cycles_to_ns(time::rdtsc().saturating_sub(t0)).unwrap_or(0)
}

impl Mechanism for Real {
    fn migrate(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        let t0 = time::rdtsc();
        let (va, n) = (Self::va(first), pages as u64);
        let moved = match (from, to) {
            (Loc::Cpu, Loc::Dev(d)) => vram::migrate_to_device(self.vram(d)?, &self.space, va, n),
            (Loc::Dev(d), Loc::Cpu) => vram::migrate_to_ram(self.vram(d)?, &self.space, va, n),
            (Loc::Dev(a), Loc::Dev(b)) => {
                vram::migrate_device_to_device(self.vram(a)?, self.vram(b)?, &self.space, va, n)
            }
            (Loc::Cpu, Loc::Cpu) => Ok(0),
        }
        .map_err(|e| err(format!("migrating pages {first}..{} {from}->{to}: {e}", first + pages)))?;
        if moved != n {
            return Err(err(format!(
                "migrating pages {first}..{} {from}->{to}: {moved} of {n} moved (device memory exhausted or a copy failed)",
                first + pages
            )));
        }
        Ok(ns_since(t0))
    }

    fn can_duplicate(&self) -> bool {
        false
    }

    fn duplicate(&mut self, _first: u32, _pages: u32, _from: Loc, dev: u8) -> Result<u64, MechError> {
        Err(err(format!("read copies on dev{dev}: HMM keeps one copy of a page")))
    }

    fn drop_copy(&mut self, page: u32, dev: u8) -> Result<(), MechError> {
        Err(err(format!("dev{dev} holds no read copy of page {page}")))
    }

    fn access(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        let (real, pa) = self.locate(page)?;
        if real != at {
            return Err(err(format!(
                "{by} reaches page {page} in {at} per the engine, but the page tables have it in {real}"
            )));
        }
        if by == Loc::Cpu {
            // A real user access through the page tables (it would fault if the page were not
            // in RAM).
            let va = Self::va(page);
            let r = uspace::run(&self.space, |u| {
                let v = u.read_u64(va)?;
                if write { u.write_u64(va, v + 1) } else { Ok(()) }
            });
            r.map_err(|f| err(format!("CPU access to page {page}: {:?}", f.error)))?;
        } else if write {
            let mut w = [0u8; 8];
            mm::read_phys(pa, &mut w);
            mm::write_phys(pa, &(u64::from_le_bytes(w) + 1).to_le_bytes());
        } else {
            let mut w = [0u8; 8];
            mm::read_phys(pa, &mut w);
        }
        if write {
            self.writes[page as usize] += 1;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), MechError> {
        for p in 0..self.writes.len() as u32 {
            let (_, pa) = self.locate(p)?;
            let mut w = [0u8; 16];
            mm::read_phys(pa, &mut w);
            let count = u64::from_le_bytes(w[..8].try_into().unwrap_or_default());
            let id = u64::from_le_bytes(w[8..].try_into().unwrap_or_default());
            if id != p as u64 ^ MAGIC {
                return Err(err(format!("page {p} holds page {}'s data", id ^ MAGIC)));
            }
            if count != self.writes[p as usize] as u64 {
                return Err(err(format!("page {p}: {count} writes found, {} made", self.writes[p as usize])));
            }
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        time::now_ns().unwrap_or(0)
    }
}

impl Drop for Real {
    fn drop(&mut self) {
        // Unmapping frees the device pages for the next point.
        let len = self.writes.len() as u64 * PAGE;
        if let Err(e) = self.space.lock().munmap(BASE, len) {
            log::warn!("experiment: unmapping the point's memory: {e}");
        }
    }
}

/// Runs one point; the JSON line on success, the error otherwise.
fn run_point(p: &Point, have: &[u32], vram: &[Arc<Vram>]) -> Result<String, String> {
    let prepared = p.prepare(have).map_err(|e| format!("point {} ({}): {e}", p.id, p.label))?;
    let model = prepared.model;
    let pages = prepared.pages;
    let (outcome, mech) = if model {
        let mut m = Model::new(pages);
        (prepared.run(&mut m), "model")
    } else {
        let mut m = Real::new(pages, vram).map_err(|e| format!("point {}: {e}", p.id))?;
        (prepared.run(&mut m), "real")
    };
    let o = outcome.map_err(|e| format!("point {} ({}): {e}", p.id, p.label))?;
    for e in &o.trace {
        crate::sprintln!("@@TRACE {}", spec::trace_json(p.id, e));
    }
    Ok(spec::result_json(p, &o, mech))
}

/// Runs the experiment in the first boot module.
pub fn run(s: &crate::System) -> Result<(), String> {
    let m =
        s.boot.modules.iter().next().ok_or("job=experiment needs the experiment image as a boot module (-initrd)")?;
    let mut bytes = vec![0u8; m.size as usize];
    mm::read_phys(m.paddr, &mut bytes);
    let text = core::str::from_utf8(&bytes).map_err(|e| format!("the experiment image is not UTF-8: {e}"))?;
    let points = Point::decode_all(text).map_err(|e| e.to_string())?;
    let vram = vram::all().map_err(|e| format!("device memory: {e}"))?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let (mut ok, mut failed) = (0, 0);
    let t0 = time::now_ns().unwrap_or(0);
    for p in &points {
        match run_point(p, &have, vram) {
            Ok(line) => {
                crate::sprintln!("@@POINT {line}");
                ok += 1;
            }
            Err(e) => {
                let mut j = String::new();
                spec::json_str(&mut j, &e);
                crate::sprintln!("@@POINT {{\"id\":{},\"error\":{j}}}", p.id);
                log::error!("experiment: {e}");
                failed += 1;
            }
        }
    }
    let ns = time::now_ns().unwrap_or(0).saturating_sub(t0);
    crate::sprintln!("@@EXPERIMENT {{\"points\":{},\"ok\":{ok},\"failed\":{failed},\"wall_ns\":{ns}}}", points.len());
    Ok(())
}

/// In-kernel tests of the experiment runner over the real devices.
pub mod ktests {
    use super::*;
    use hmm::place::params::{Params, Value};

    fn point(devices: Vec<u32>, policy: &str, evict: &str, kind: &str, over: f64) -> Point {
        let mut w = Params::new();
        w.set("oversubscription", Value::Float(over));
        let mut e = Params::new();
        e.set("order", Value::Text(evict.into()));
        Point {
            id: 0,
            label: format!("{policy}/{kind}/{over}"),
            devices,
            run: Params::new(),
            cost: Params::new(),
            policy: policy.into(),
            policy_params: Params::new(),
            evict: e,
            workloads: vec![(kind.into(), w)],
        }
    }

    fn run_real(p: &Point) -> Result<hmm::place::engine::Outcome, String> {
        let vram = vram::all().map_err(|e| e.to_string())?;
        let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
        let prepared = p.prepare(&have).map_err(|e| e.to_string())?;
        let mut m = Real::new(prepared.pages, vram).map_err(|e| e.to_string())?;
        prepared.run(&mut m).map_err(|e| e.to_string())
    }

    /// A stream at 150 % of 2 MiB of dev0 under the tree prefetcher and TBNe: pages move to
    /// the device and are evicted by DMA, every access is checked against the page tables,
    /// and every page's data is checked at the end.
    pub fn oversubscribed_stream(_s: &crate::System) -> crate::ktest::TestResult {
        let o = run_real(&point(vec![512], "tree", "tbne", "stream", 1.5))?;
        let s = &o.stats;
        if s.to_dev < 512 || s.evicted == 0 || s.dev_faults == 0 || o.workloads[0].error.is_some() {
            return Err(format!("unexpected counts: {s:?} {:?}", o.workloads));
        }
        Ok(())
    }

    /// A halo exchange over two devices with migrate on touch: pages move device to device
    /// (peer DMA) as the slabs' halos are read.
    pub fn two_devices_peer_migration(_s: &crate::System) -> crate::ktest::TestResult {
        let o = run_real(&point(vec![256, 256], "on-touch", "lru4k", "halo", 0.9))?;
        if o.stats.dev_to_dev == 0
            || o.procs.iter().filter(|p| p.name.starts_with("dev") && p.busy_ns > 0.0).count() != 2
        {
            return Err(format!("no peer migration or an idle device: {:?} {:?}", o.stats, o.procs));
        }
        Ok(())
    }

    /// The mechanism refuses what the page tables contradict.
    pub fn disagreement_is_caught(_s: &crate::System) -> crate::ktest::TestResult {
        let vram = vram::all().map_err(|e| e.to_string())?;
        let mut m = Real::new(16, vram).map_err(|e| e.to_string())?;
        let e = m.access(Loc::Dev(0), Loc::Dev(0), 3, true).err().ok_or("a device access to a RAM page passed")?;
        if !e.0.contains("page tables have it in cpu") {
            return Err(format!("wrong error: {e}"));
        }
        m.migrate(3, 1, Loc::Cpu, Loc::Dev(0)).map_err(|e| e.to_string())?;
        m.access(Loc::Dev(0), Loc::Dev(0), 3, true).map_err(|e| e.to_string())?;
        if m.access(Loc::Cpu, Loc::Cpu, 3, false).is_ok() {
            return Err("a CPU access to a device page passed".into());
        }
        m.migrate(3, 1, Loc::Dev(0), Loc::Cpu).map_err(|e| e.to_string())?;
        m.finish().map_err(|e| format!("data after one device write: {e}"))?;
        if m.duplicate(0, 1, Loc::Cpu, 0).is_ok() {
            return Err("duplication claimed".into());
        }
        Ok(())
    }
}
