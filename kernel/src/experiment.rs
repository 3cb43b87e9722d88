//! The experiment job (`job=experiment`): runs the points the xtask wrote into the boot module
//! (`hmm::place::spec`) over the real devices, and prints one `@@POINT {json}` line per point,
//! `@@TRACE {json}` lines when a point is traced, and `@@EXPERIMENT {json}` at the end.
//!
//! The real mechanism ([`Real`]) backs a point's managed pages with fresh process address
//! spaces, one per process its workloads name (`process = N`; one for most points), each
//! holding its workloads' pages as anonymous mappings at their place (2 MiB pages off, so
//! migrations stay 4 KiB), every page written by the CPU first. Migrations are `migrate_vma` to and from device memory, copied by
//! the devices' DMA engines (`vram::migrate_to_device`, `migrate_to_ram`,
//! `migrate_device_to_device`). Every access the engine executes is made on the real data:
//! a CPU access through the process's page tables, a device access through the device's MMU:
//! each device's virtio-iommu domain mirrors each of the point's address spaces, each in its
//! own window (`devmmu::bind`, the interval-notifier mirror), a page it has not mapped is a device fault (`hmm_range_fault`,
//! then a map in the domain), and the translation must agree with the CPU page table (a
//! mirror that missed an invalidation fails the point). Peer accesses to another device's
//! memory, which HMM cannot map for a device, go to the page's physical address. Before each access
//! the mechanism reads the CPU page table and checks that the page is where the engine says
//! (RAM or that device's memory); a disagreement stops the point with an error. A write
//! increments the page's first word; at the end every page's count and its identity word are
//! checked, so a migration that lost or misplaced data fails the point.
//!
//! CPU accesses run on the CPU core the engine scheduled the phase on: core 0 is the boot CPU,
//! which runs the engine; each other core's accesses are made by a worker task pinned to that
//! CPU ([`Worker`]) per address space, running in it, so they go through that CPU's TLB
//! and fault there, and every migration the boot CPU makes shoots their translations down.
//!
//! Read duplication (P8) is a driver's job in HMM terms (Linux keeps one copy of a page; UVM's
//! read-mostly pages are copies its driver keeps): a device's read copy is a page of its own
//! memory that the driver fills by DMA from wherever the page lives (`Vram::read_copies`), and
//! the page itself does not move. A device read of a duplicated page reads the copy, and is
//! checked to hold that page's data with as many writes as the page itself; the engine drops
//! every copy before the page is written or moved, and the copies left at the end are checked
//! the same way.
//!
//! A point's `[[event]]`s change a device's memory during the run: the engine evicts what no
//! longer fits, and the mechanism moves the device allocator's limit to the new share.
//!
//! One point's failure does not leak into the next: a point's teardown ([`Real`]'s drop) stops
//! its CPU workers, unbinds the device MMUs, gives its read copies back and unmaps its memory
//! (which frees its device pages) whatever state the point stopped in, and before each point
//! the runner checks that device memory is back to the state it had before the first point and
//! that every copy engine still works ([`Idle`]); if not, the point fails with an error saying
//! what was left. A failed point's error says whether the mechanism failed (a migration, a DMA,
//! a CPU worker, device memory left in use: [`FailKind::Mechanism`], after which the xtask runs
//! the rest of the boot's points in a fresh guest) or the point's own checks did
//! ([`FailKind::Check`]).
//!
//! The module is split along its seams: `error` (why a point or the run failed), `idle` (the
//! state device memory must be back to between points), `real` (the [`Mechanism`] over the
//! real devices), `worker` (the CPU workers on the other cores), `hmat` (CPU line costs from
//! the ACPI HMAT), and [`ktests`]; this file holds the runner.

use crate::arch::{smp, time};
use crate::mm::{self, uspace};
use crate::vram::{self, Vram};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use boot::protocol::{Tag, json::Json};
use core::sync::atomic::Ordering;
use hmm::place::Loc;
use hmm::place::engine::host::HostStack;
use hmm::place::engine::{DataFault, MechError, Mechanism, PageOp};
use hmm::place::spec::{self, Point};

mod error;
mod hmat;
mod idle;
pub mod ktests;
mod real;
mod worker;

pub use error::{FailKind, HmatError, PointError, RunError};
use hmat::{cpu_domain, hmat_lines};
pub use idle::Idle;
use real::Real;

/// Where the managed region starts in its address space, as on the host (`hmm::place::engine::pages`).
pub(super) use hmm::place::engine::pages::BASE;

/// Runs one point; the JSON line on success, the error otherwise. The point's mechanism is
/// torn down (dropped) before this returns, whatever happened.
fn run_point(p: &Point, have: &[u32], vram: &[Arc<Vram>]) -> Result<String, PointError> {
    let fail =
        |kind, e: &dyn core::fmt::Display| PointError { kind, msg: format!("point {} ({}): {e}", p.id, p.label) };
    let mut prepared = p.prepare(have).map_err(|e| fail(FailKind::Check, &e))?;
    let host = prepared.host;
    let pages = prepared.pages;
    let hmat = prepared.cost.lines_from_hmat;
    let cores = prepared.cfg.cpus;
    let (outcome, mech) = if host {
        if hmat {
            // Its memory is the kernel heap's, not a domain of its own: the boot CPU's domain.
            let srat = crate::system().and_then(|s| s.platform.srat.as_ref());
            let memory =
                srat.map(|s| cpu_domain(s, 0)).transpose().map_err(|e| fail(FailKind::Check, &e))?.unwrap_or(0);
            hmat_lines(&mut prepared.cost, cores, memory).map_err(|e| fail(FailKind::Check, &e))?;
        }
        // The HMM stack over the host platform (software page tables, RAM-backed devices in
        // the kernel heap), timed by the kernel's clock.
        let clock = alloc::boxed::Box::new(|| time::now_ns().unwrap_or(0));
        let mut m = HostStack::new(pages, &prepared.capacities, clock).map_err(|e| fail(FailKind::Check, &e))?;
        let o = prepared.run(&mut m).map_err(|e| fail(FailKind::Check, &e));
        drop(m);
        (o, "host")
    } else {
        let procs = prepared.process_runs();
        let mut m = Real::new(pages, vram, &procs).map_err(|e| fail(FailKind::Mechanism, &e))?;
        if hmat {
            let memory = m.memory_domain().map_err(|e| fail(FailKind::Check, &e))?;
            hmat_lines(&mut prepared.cost, cores, memory).map_err(|e| fail(FailKind::Check, &e))?;
        }
        let o = prepared.run(&mut m).map_err(|e| fail(m.fail_kind(), &e));
        drop(m);
        (o, "real")
    };
    let o = outcome?;
    for e in &o.trace {
        crate::sprintln!("{}", Tag::Trace.line(spec::trace_json(p.id, e)));
    }
    Ok(spec::result_json(p, &o, mech))
}

/// Runs `points` in order, handing each result to `each`. Before each point, device memory
/// must be back to `idle`, the state it had before the first ([`Idle::check`]): a point that
/// finds it otherwise fails with a mechanism error saying what was left, and does not run.
pub fn run_points(
    points: &[Point],
    have: &[u32],
    vram: &[Arc<Vram>],
    idle: &Idle,
    mut each: impl FnMut(&Point, Result<String, PointError>),
) {
    for p in points {
        let r = match idle.check(vram) {
            Ok(()) => run_point(p, have, vram),
            Err(e) => Err(PointError {
                kind: FailKind::Mechanism,
                msg: format!("point {} ({}): before it started: {e}", p.id, p.label),
            }),
        };
        each(p, r);
    }
}

/// The `@@POINT` line of a failed point: its id, the error and its kind.
fn error_line(id: u32, e: &PointError) -> String {
    let mut j = Json::<String>::new();
    j.object(|j| {
        j.num("id", id);
        j.str("error", &e.msg);
        j.str("kind", e.kind.name());
    });
    j.finish()
}

/// Runs the experiment in the first boot module.
pub fn run(s: &crate::System) -> Result<(), RunError> {
    let bytes = mm::read_module(s.boot, 0).ok_or(RunError::NoImage)?;
    let text = core::str::from_utf8(&bytes).map_err(RunError::NotUtf8)?;
    let points = Point::decode_all(text).map_err(RunError::Spec)?;
    let vram = vram::all().map_err(RunError::Memory)?;
    let have: Vec<u32> = vram.iter().map(|v| v.bar_pages() as u32).collect();
    let (mut ok, mut failed) = (0, 0);
    let t0 = time::now_ns().unwrap_or(0);
    let idle = Idle::now(vram);
    run_points(&points, &have, vram, &idle, |p, r| match r {
        Ok(line) => {
            crate::sprintln!("{}", Tag::Point.line(line));
            ok += 1;
        }
        Err(e) => {
            crate::sprintln!("{}", Tag::Point.line(error_line(p.id, &e)));
            log::error!("experiment: {e}");
            failed += 1;
        }
    });
    let ns = time::now_ns().unwrap_or(0).saturating_sub(t0);
    let mut j = Json::<String>::new();
    j.object(|j| {
        j.num("points", points.len());
        j.num("ok", ok);
        j.num("failed", failed);
        j.num("wall_ns", ns);
    });
    crate::sprintln!("{}", Tag::Experiment.line(j.finish()));
    Ok(())
}
