//! In-kernel tests of the experiment runner over the real devices.

use super::*;
use hmm::devmmu::Where;
use hmm::place::engine::MirrorFault;
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
        events: Vec::new(),
    }
}

fn run_real(p: &Point) -> Result<hmm::place::engine::Outcome, String> {
    let vram = vram::all().map_err(|e| e.to_string())?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let prepared = p.prepare(&have).map_err(|e| e.to_string())?;
    let mut m = Real::new(prepared.pages, vram, &prepared.process_runs()).map_err(|e| e.to_string())?;
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

/// dev0's memory shrinks during a point (an experiment's `[[event]]`): a stream that fits
/// 2 MiB of dev0 loses three quarters of it after its first sweep; the engine evicts what no
/// longer fits by DMA, the device's allocator then refuses past the new share (the engine's
/// state and the mechanism agree at every access), and every page's data is checked at the
/// end.
pub fn a_device_shrunk_mid_point_keeps_every_page(_s: &crate::System) -> crate::ktest::TestResult {
    let mut p = point(vec![512], "on-touch", "lru4k", "stream", 0.9);
    p.workloads[0].1.set("iterations", Value::Int(3));
    let whole = run_real(&p)?;
    p.events = vec![hmm::place::spec::Resize { at_ns: whole.stats.sim_ns as u64 / 3, device: 0, pages: 128 }];
    let o = run_real(&p)?;
    let s = &o.stats;
    if whole.stats.evicted != 0 || s.evicted < 460 - 128 || o.workloads[0].error.is_some() {
        return Err(format!("evictions {} without the shrink, {} with: {s:?}", whole.stats.evicted, s.evicted));
    }
    Ok(())
}

/// A halo exchange over two devices with migrate on touch: pages move device to device
/// (peer DMA) as the slabs' halos are read.
pub fn two_devices_peer_migration(_s: &crate::System) -> crate::ktest::TestResult {
    let o = run_real(&point(vec![256, 256], "on-touch", "lru4k", "halo", 0.9))?;
    if o.stats.dev_to_dev == 0 || o.procs.iter().filter(|p| p.name.starts_with("dev") && p.busy_ns > 0.0).count() != 2 {
        return Err(format!("no peer migration or an idle device: {:?} {:?}", o.stats, o.procs));
    }
    Ok(())
}

/// Two processes in one point (issue 27): two ping-pongs, one per process, at once with two
/// CPU cores, over both devices at 150 % of their memory. Each process's pages are in its own
/// address space (the other's are not mapped there), every device mirrors both, each core has
/// a worker per process, and the run ends with every page's data checked. Each workload's own
/// counters are its pages' and add up to the point's.
pub fn processes_share_the_devices(_s: &crate::System) -> crate::ktest::TestResult {
    let mut p = point(vec![256, 256], "on-touch", "lru4k", "pingpong", 1.5);
    let mut second = p.workloads[0].clone();
    second.1.set("device", Value::Text("dev1".into()));
    second.1.set("process", Value::Int(1));
    p.workloads.push(second);
    p.run.set("cpus", Value::Int(smp::count().min(2) as i64));
    let vram = vram::all().map_err(|e| e.to_string())?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let prepared = p.prepare(&have).map_err(|e| e.to_string())?;
    let runs = prepared.process_runs();
    if runs.len() != 2 || runs[0].2 != 0 || runs[1].2 != 1 {
        return Err(format!("the point's pages are not split between two processes: {runs:?}"));
    }
    let mut m = Real::new(prepared.pages, vram, &runs).map_err(|e| e.to_string())?;
    if m.spaces.len() != 2 {
        return Err(format!("{} address spaces for two processes", m.spaces.len()));
    }
    let (a, b) = (runs[0], runs[1]);
    if m.spaces[0].lock().lookup(Real::va(b.0)).is_some() || m.spaces[1].lock().lookup(Real::va(a.0)).is_some() {
        return Err("a process maps the other's pages".into());
    }
    for v in vram.iter().filter(|v| v.dev().mmu().is_some()) {
        let n = v.dev().mirrors_bound();
        if n < 2 {
            return Err(format!("dev{} mirrors {n} address spaces during a point of two processes", v.device()));
        }
    }
    let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
    let procs: Vec<u32> = o.workloads.iter().map(|w| w.process).collect();
    if procs != [0, 1] {
        return Err(format!("the workloads ran in processes {procs:?}"));
    }
    let sum = |f: fn(&hmm::place::engine::WorkloadCounts) -> u64| o.workloads.iter().map(|w| f(&w.counts)).sum::<u64>();
    let s = &o.stats;
    if sum(|c| c.to_dev) != s.to_dev
        || sum(|c| c.to_cpu) != s.to_cpu
        || sum(|c| c.evicted) != s.evicted
        || sum(|c| c.faults) != s.dev_faults + s.cpu_faults
    {
        return Err(format!("the workloads' counts do not add up to the point's: {:?} against {s:?}", o.workloads));
    }
    if o.workloads.iter().any(|w| w.counts.to_dev == 0 || w.error.is_some()) {
        return Err(format!("a process's pages never moved, or it stopped: {:?}", o.workloads));
    }
    drop(m);
    for v in vram.iter().filter(|v| v.dev().mmu().is_some()) {
        if v.dev().mirrors_bound() != 0 {
            return Err(format!("dev{} still mirrors {} spaces after the point", v.device(), v.dev().mirrors_bound()));
        }
    }
    Ok(())
}

/// Two CPU↔device ping-pongs at once (with dev0 and with dev1) with two CPU cores: their CPU
/// phases overlap, so the
/// engine puts them on both cores, and core 1's accesses are made on CPU 1 (its worker)
/// while the boot CPU migrates pages back and forth under it; the data check at the end
/// covers both.
pub fn cpu_phases_run_on_their_core(_s: &crate::System) -> crate::ktest::TestResult {
    if smp::count() < 2 {
        return Ok(()); // one CPU: the worker path is not used (smp:: tests say how many)
    }
    let mut p = point(vec![256, 256], "on-touch", "lru4k", "pingpong", 0.4);
    let mut second = p.workloads[0].clone();
    second.1.set("device", Value::Text("dev1".into()));
    p.workloads.push(second);
    p.run.set("cpus", Value::Int(2));
    let vram = vram::all().map_err(|e| e.to_string())?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let prepared = p.prepare(&have).map_err(|e| e.to_string())?;
    let mut m = Real::new(prepared.pages, vram, &prepared.process_runs()).map_err(|e| e.to_string())?;
    let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
    let served = m.workers[0].get(1).and_then(|w| w.as_ref()).map_or(0, |w| w.mail.served.load(Ordering::Relaxed));
    let busy: Vec<f64> = o.procs.iter().filter(|p| p.name.starts_with("cpu")).map(|p| p.busy_ns).collect();
    if served == 0 || busy.len() != 2 || busy.iter().any(|&b| b <= 0.0) || o.stats.to_cpu == 0 {
        return Err(format!("core 1 made {served} accesses; CPU busy {busy:?}; stats {:?}", o.stats));
    }
    Ok(())
}

/// A point whose migration fails (the `n`-th DMA from its start fails, injected) fails
/// with a mechanism error, its teardown gives everything back, and the points after it on
/// the same boot run and pass. Device memory left in use (a read copy nobody gives back)
/// makes the next point fail before it starts, saying so, rather than fail obscurely.
pub fn a_failed_migration_does_not_poison_the_next_point(_s: &crate::System) -> crate::ktest::TestResult {
    let vram = vram::all().map_err(|e| e.to_string())?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let before = Idle::now(vram);
    let mut points = vec![point(vec![512], "tree", "tbne", "stream", 1.5); 3];
    for (i, p) in points.iter_mut().enumerate() {
        p.id = i as u32;
    }
    // The third copy-engine request of the first point fails with a device I/O error: a
    // migration RAM -> dev0 (the tree prefetcher moves pages as they fault) or an eviction
    // back.
    let armed = crate::inject::arm(crate::inject::Fault::DmaError, None, 2);
    let mut got = Vec::new();
    run_points(&points, &have, vram, &before, |p, r| got.push((p.id, r)));
    let pending = !armed.fired();
    drop(armed);
    if pending {
        return Err("the injected DMA failure never happened".into());
    }
    match &got[0].1 {
        Err(e) if e.kind == FailKind::Mechanism && e.msg.contains("moved") => {}
        other => return Err(format!("point 0: expected a failed migration (a mechanism error), got {other:?}")),
    }
    for (id, r) in &got[1..] {
        if let Err(e) = r {
            return Err(format!("point {id} after the failed one: {e}"));
        }
    }
    before.check(vram).map_err(|e| format!("after the points: {e}"))?;
    // Device memory an earlier point did not give back is found before the next starts.
    let leak = vram[0].read_copies(&[uspace::mm().zero_pfn()]).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    run_points(&points[..1], &have, vram, &before, |p, r| got.push((p.id, r)));
    vram[0].drop_read_copies(&leak);
    let want =
        format!("dev0 has {} device pages in use, {} before the first point", before.in_use[0] + 1, before.in_use[0]);
    match &got[0].1 {
        Err(e) if e.kind == FailKind::Mechanism && e.msg.contains("before it started") && e.msg.contains(&want) => {}
        other => return Err(format!("a device page left in use was not reported: {other:?}")),
    }
    let mut got = Vec::new();
    run_points(&points[..1], &have, vram, &before, |p, r| got.push((p.id, r)));
    got[0].1.as_ref().map(|_| ()).map_err(|e| format!("once the page is back: {e}"))
}

/// The mechanism refuses what the page tables contradict.
pub fn disagreement_is_caught(_s: &crate::System) -> crate::ktest::TestResult {
    let vram = vram::all().map_err(|e| e.to_string())?;
    let mut m = Real::new(16, vram, &[]).map_err(|e| e.to_string())?;
    let e = m.access(Loc::Dev(0), Loc::Dev(0), 3, true).err().ok_or("a device access to a RAM page passed")?;
    let want =
        MechError::Misplaced { page: 3, op: PageOp::Access(Loc::Dev(0)), expected: Loc::Dev(0), found: Loc::Cpu };
    if e != want || !e.to_string().contains("page tables have it in cpu") {
        return Err(format!("wrong error: {e}"));
    }
    m.migrate(3, 1, Loc::Cpu, Loc::Dev(0)).map_err(|e| e.to_string())?;
    m.access(Loc::Dev(0), Loc::Dev(0), 3, true).map_err(|e| e.to_string())?;
    // That access went through dev0's MMU mirror (the default machine has an IOMMU), which
    // the migration filled; a remote one to a RAM page needs the device fault's mapping first
    // (an access the device MMU cannot translate is refused, not faulted in behind the
    // engine's back); migrating the page back invalidates the mirror.
    let mirror = m.mirrors[0].first().cloned().flatten().ok_or("dev0 has no MMU mirror")?;
    if m.device_translate(0, 3, true) != Ok(Some(Loc::Dev(0))) || m.device_translate(0, 5, false) != Ok(None) {
        return Err("dev0's MMU translations of pages 3 and 5 are not local and missing".into());
    }
    let e = m.access(Loc::Dev(0), Loc::Cpu, 5, false).err().ok_or("an access dev0's MMU does not map passed")?;
    if e != (MechError::Mirror { dev: 0, page: 5, fault: MirrorFault::Unmapped }) {
        return Err(format!("wrong error for an unmapped device access: {e}"));
    }
    // Mapped ahead for reads only: the IOMMU mirror serves reads, a write still misses.
    m.map_remote(5, 1, 0, true).map_err(|e| e.to_string())?;
    if m.device_translate(0, 5, false) != Ok(Some(Loc::Cpu)) || m.device_translate(0, 5, true) != Ok(None) {
        return Err("page 5 mapped ahead for reads is not read-only in dev0's MMU".into());
    }
    m.map_remote(5, 1, 0, false).map_err(|e| e.to_string())?;
    if m.device_translate(0, 5, true) != Ok(Some(Loc::Cpu)) {
        return Err("page 5 is not mapped remotely in dev0's MMU after map_remote".into());
    }
    m.access(Loc::Dev(0), Loc::Cpu, 5, false).map_err(|e| e.to_string())?;
    if mirror.pages() != 2 {
        return Err(format!("dev0's mirror maps {} pages, expected 2", mirror.pages()));
    }
    if m.access(Loc::Cpu, Loc::Cpu, 3, false).is_ok() {
        return Err("a CPU access to a device page passed".into());
    }
    m.migrate(3, 1, Loc::Dev(0), Loc::Cpu).map_err(|e| e.to_string())?;
    if mirror.translate(Real::va(3)).is_some() {
        return Err("dev0's mirror still maps a page that left its memory".into());
    }
    // The access path remembers where page 3 was (it was accessed on dev0 above); the
    // migration made that stale, so dev0's access is refused, not served from memory.
    let e = m.access(Loc::Dev(0), Loc::Dev(0), 3, false).err().ok_or("dev0 accessed page 3 after it left")?;
    if e != (MechError::Misplaced { page: 3, op: PageOp::Access(Loc::Dev(0)), expected: Loc::Dev(0), found: Loc::Cpu })
    {
        return Err(format!("wrong error for an access after the page moved: {e}"));
    }
    m.finish().map_err(|e| format!("data after one device write: {e}"))?;
    // A read copy is checked against its page: fresh it passes, after a write the engine
    // failed to drop it for, it is stale.
    m.duplicate(3, 2, Loc::Cpu, 0).map_err(|e| e.to_string())?;
    m.access(Loc::Dev(0), Loc::Dev(0), 3, false).map_err(|e| format!("reading a fresh copy: {e}"))?;
    if m.access(Loc::Dev(0), Loc::Dev(0), 3, true).is_ok() {
        return Err("a device wrote its read copy".into());
    }
    m.access(Loc::Cpu, Loc::Cpu, 4, true).map_err(|e| e.to_string())?;
    let e = m.access(Loc::Dev(0), Loc::Dev(0), 4, false).err().ok_or("a stale read copy passed")?;
    let want = MechError::Data { page: 4, copy: Some(0), fault: DataFault::Writes { found: 0, made: 1 } };
    if e != want || !e.to_string().contains("read copy of page 4: 0 writes found, 1 made") {
        return Err(format!("wrong error for a stale copy: {e}"));
    }
    m.drop_copy(4, 0).map_err(|e| e.to_string())?;
    if m.drop_copy(4, 0).is_ok() {
        return Err("a copy dropped twice".into());
    }
    m.finish().map_err(|e| format!("data with one copy left: {e}"))?;
    Ok(())
}

/// Read duplication on the real devices: a read-mostly table broadcast to both devices
/// under P8, every device read served from its own copy (checked to hold the page's data
/// and writes), copies dropped before each write and checked again at the end.
pub fn read_duplication_on_two_devices(_s: &crate::System) -> crate::ktest::TestResult {
    let vram = vram::all().map_err(|e| e.to_string())?;
    if vram.len() < 2 {
        return Ok(()); // the default machine has two devices; one-device machines skip
    }
    let mut p = point(vec![256, 256], "duplicate", "lru4k", "broadcast", 0.5);
    p.workloads[0].1.set("writes", Value::Float(0.01));
    let o = run_real(&p)?;
    let s = &o.stats;
    if s.duplicates == 0 || s.dup_unsupported != 0 || s.invalidations == 0 || o.workloads[0].error.is_some() {
        return Err(format!("unexpected counts: {s:?} {:?}", o.workloads));
    }
    Ok(())
}

/// Where device `d`'s MMU mirror takes each of the first `pages` pages: `(local, ram, none)`
/// counts, after checking every RAM translation against the CPU page table.
fn mirror_view(m: &Real, d: usize, pages: u32) -> Result<(u32, u32, u32), String> {
    let mirror = m.mirrors[0].get(d).and_then(|x| x.as_ref()).ok_or(format!("dev{d} has no MMU mirror"))?;
    let (mut local, mut ram, mut none) = (0, 0, 0);
    for p in 0..pages {
        match mirror.translate(Real::va(p)).map(|t| t.at) {
            Some(Where::Local(_)) => local += 1,
            Some(Where::Ram(_)) => ram += 1,
            None => none += 1,
        }
    }
    Ok((local, ram, none))
}

/// A policy's decision is what the device MMU does: with the advice "preferred location
/// system memory, dev0 accesses it" no page migrates, every page the device touched is
/// mapped remotely in dev0's MMU mirror (its IOMMU domain), and the accesses count as remote;
/// with migrate on touch the same workload's pages are in dev0's memory, mapped locally.
pub fn policy_decisions_are_seen_in_the_device_mmu(_s: &crate::System) -> crate::ktest::TestResult {
    let vram = vram::all().map_err(|e| e.to_string())?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    for (policy, remote) in [("advice", true), ("on-touch", false)] {
        let mut p = point(vec![512], policy, "lru4k", "stream", 0.5);
        if remote {
            p.policy_params.set("preferred", Value::Text("cpu".into()));
            p.policy_params.set("accessed_by", Value::Bool(true));
        }
        let prepared = p.prepare(&have).map_err(|e| e.to_string())?;
        let mut m = Real::new(prepared.pages, vram, &prepared.process_runs()).map_err(|e| e.to_string())?;
        let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
        let touched = o.workloads[0].pages;
        let (local, ram, none) = mirror_view(&m, 0, touched)?;
        let s = &o.stats;
        let ok = if remote {
            s.to_dev == 0 && s.remote_maps > 0 && s.remote_lines > 0 && s.local_lines == 0 && ram == touched
        } else {
            s.to_dev >= touched as u64 && s.remote_maps == 0 && local == touched
        };
        if !ok || s.dev_faults == 0 {
            return Err(format!(
                "{policy}: dev0's MMU maps {local} pages locally, {ram} remotely, {none} not at all of {touched}; {s:?}"
            ));
        }
    }
    Ok(())
}

/// A test policy: device faults migrate their page; a CPU fault brings back the aligned
/// 16-page window around it (a 64 KiB fault-around).
struct Window16;

impl hmm::place::policy::Policy for Window16 {
    fn name(&self) -> &str {
        "window16"
    }
    fn on_device_faults(
        &mut self,
        _cx: &hmm::place::policy::Ctx<'_>,
        dev: u8,
        faults: &[hmm::place::policy::Fault],
        plan: &mut hmm::place::policy::Plan,
    ) {
        for f in faults {
            plan.migrate(f.page, 1, Loc::Dev(dev));
        }
    }
    fn on_cpu_fault(
        &mut self,
        cx: &hmm::place::policy::Ctx<'_>,
        page: u32,
        _w: bool,
        plan: &mut hmm::place::policy::Plan,
    ) {
        let (first, end) = cx.window(page, 16);
        plan.migrate(first, end - first, Loc::Cpu);
    }
}

/// The policy's CPU fault window is what the real page-fault path migrates: a ping-pong
/// between dev0 and the CPU, whose CPU accesses fault (#PF) on pages in device memory, moves
/// 16 pages back per fault. The device driver's own counters (its `migrate_to_ram`) see the
/// same faults and pages as the engine.
pub fn the_policy_chooses_the_cpu_fault_window(_s: &crate::System) -> crate::ktest::TestResult {
    let vram = vram::all().map_err(|e| e.to_string())?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let p = point(vec![512], "on-touch", "lru4k", "pingpong", 0.25);
    let mut prepared = p.prepare(&have).map_err(|e| e.to_string())?;
    prepared.policy = alloc::boxed::Box::new(Window16);
    let before = *vram[0].stats.lock();
    let mut m = Real::new(prepared.pages, vram, &prepared.process_runs()).map_err(|e| e.to_string())?;
    let o = prepared.run(&mut m).map_err(|e| e.to_string())?;
    drop(m);
    let after = *vram[0].stats.lock();
    let s = &o.stats;
    let (faults, back) = (after.cpu_faults - before.cpu_faults, after.to_ram - before.to_ram);
    if s.cpu_faults == 0 || s.to_cpu != 16 * s.cpu_faults || faults != s.cpu_faults || back != s.to_cpu {
        return Err(format!(
            "engine: {} CPU faults, {} pages back; dev0's fault path: {faults} faults, {back} pages back",
            s.cpu_faults, s.to_cpu
        ));
    }
    Ok(())
}

/// A point's device of N pages is full at N: with room for 4 pages, a migration of 8 moves
/// the first 4 (dev0's allocator refuses the rest, which stay in RAM and mapped for the
/// CPU), read copies are refused too, and after evicting 2 pages, 2 more fit.
pub fn a_full_device_refuses_past_the_points_capacity(_s: &crate::System) -> crate::ktest::TestResult {
    let vram = vram::all().map_err(|e| e.to_string())?;
    let mut m = Real::new(16, vram, &[]).map_err(|e| e.to_string())?;
    m.set_capacities(&[4]);
    m.migrate(0, 8, Loc::Cpu, Loc::Dev(0)).map_err(|e| e.to_string())?;
    let at = |m: &mut Real| (0..8).map(|p| m.resident(p)).collect::<Result<Vec<Loc>, MechError>>();
    let want = |dev: u32| (0..8).map(|p| if p < dev { Loc::Dev(0) } else { Loc::Cpu }).collect::<Vec<Loc>>();
    if at(&mut m).map_err(|e| e.to_string())? != want(4) {
        return Err(format!("after moving 8 pages to a device of 4: {:?}", at(&mut m)));
    }
    if m.duplicate(8, 1, Loc::Cpu, 0).is_ok() {
        return Err("a read copy on a full device was made".into());
    }
    m.migrate(2, 2, Loc::Dev(0), Loc::Cpu).map_err(|e| e.to_string())?;
    m.migrate(4, 4, Loc::Cpu, Loc::Dev(0)).map_err(|e| e.to_string())?;
    let got = at(&mut m).map_err(|e| e.to_string())?;
    let dev = [0, 1, 4, 5];
    if got.iter().enumerate().any(|(p, &l)| (l == Loc::Dev(0)) != dev.contains(&p)) {
        return Err(format!("after evicting 2 and moving 4 more: {got:?}"));
    }
    m.finish().map_err(|e| e.to_string())
}

/// Whether some interval of `a` overlaps some interval of `b` (start, length).
fn overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.iter().any(|&(s, d)| b.iter().any(|&(t, e)| s < t + e && t < s + d))
}

/// Processors run at once: a stream on dev1 beside a ping-pong between dev0 and the CPU, on
/// the real devices. The trace's phases show dev1 busy while dev0 is, and while the CPU is,
/// in simulated time, and every page's data checks out at the end.
pub fn devices_and_a_cpu_core_run_at_once(_s: &crate::System) -> crate::ktest::TestResult {
    let mut p = point(vec![256, 256], "on-touch", "lru4k", "pingpong", 0.5);
    let mut stream = p.workloads[0].clone();
    stream.0 = "stream".into();
    stream.1.set("device", Value::Text("dev1".into()));
    stream.1.set("iterations", Value::Int(4));
    p.workloads.push(stream);
    p.run.set("trace", Value::Int(10_000));
    let o = run_real(&p)?;
    let busy = |lane: &str| -> Vec<(f64, f64)> {
        o.trace.iter().filter(|e| e.kind == "phase" && e.lane == lane).map(|e| (e.t, e.dur)).collect()
    };
    let (d0, d1, c0) = (busy("dev0"), busy("dev1"), busy("cpu0"));
    if d0.is_empty() || d1.is_empty() || c0.is_empty() || !overlap(&d1, &d0) || !overlap(&d1, &c0) {
        return Err(format!("phases dev0 {d0:?}, dev1 {d1:?}, cpu0 {c0:?}: dev1 does not overlap both"));
    }
    if o.workloads.iter().any(|w| w.error.is_some()) {
        return Err(format!("{:?}", o.workloads));
    }
    Ok(())
}
