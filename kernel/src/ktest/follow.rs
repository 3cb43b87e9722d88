//! The host resizes device memory while workloads run (issue 27): the test asks the host
//! (`@@HOST`, carried out by `cargo xtask` over QMP) to change dev0's virtio-mem
//! `requested_size`; the configuration interrupt wakes the follower
//! ([`crate::vram::follow`]), which evicts and unplugs, or plugs, until the plugged memory
//! matches, while two workload tasks, one per CPU, keep migrating their pages into that
//! memory and reading them back. Every page's data is checked at the end, and no device page
//! leaks.

use super::TestResult;
use crate::System;
use crate::arch::time;
use crate::sched;
use crate::vram::{self, Vram, follow};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

const PAGE: u64 = 4096;
const HUGE: u64 = 2 << 20;
/// Pages of each workload: one block's worth, so that two fill the two blocks plugged first.
const PAGES: u64 = 512;
/// Bound on each request's being met.
const MET_MS: u64 = 60_000;
/// Bound on a workload task's finishing once told to stop.
const JOIN_MS: u64 = 60_000;

/// A workload's process: `PAGES` pages of distinct data.
type Work = super::Filled;

impl Work {
    /// Until `stop`: migrate every page to `v`, then read back a window of them by the CPU,
    /// a different window each round. Returns the rounds run and the pages moved.
    fn run(&self, v: &Vram, stop: &AtomicBool, name: &str) -> Result<(u64, u64), String> {
        let (mut rounds, mut moved) = (0, 0);
        while !stop.load(Ordering::Acquire) {
            moved += vram::migrate_to_device(v, &self.space, self.a, PAGES).map_err(|e| format!("{name}: {e}"))?;
            let first = (rounds * 37) % (PAGES - 64);
            self.check_range(first, 64, name)?;
            rounds += 1;
            // A tick's pause: the follower and the other workload get their turn.
            sched::park(Some(1));
        }
        Ok((rounds, moved))
    }
}

/// The hot-plug memory of the first device that has some.
fn hot_device() -> Result<Arc<Vram>, String> {
    let all = vram::all().map_err(|e| e.to_string())?;
    all.iter().find(|v| v.hot_pages() > 0).cloned().ok_or_else(|| "no device with hot-plug memory".into())
}

/// dev0's BAR carved out, two blocks of its hot-plug memory plugged by the kernel and filled
/// by two workloads; then the host asks for one block (the follower evicts and unplugs one
/// while the workloads run), then four (it plugs three), then what it asked at boot. Each
/// request is met, by the configuration interrupt when the function has one, and every page
/// of both workloads keeps its data.
pub fn host_resizes_while_workloads_run(_s: &System) -> TestResult {
    let v = hot_device()?;
    let (pages0, plugged0) = (v.pages(), v.plugged_pages());
    let boot = v.follow_state().seen;
    check!(boot >= 4 * HUGE, "dev{}: the host requests {boot} bytes; the test needs 8 MiB", v.device());
    check!(plugged0 == 0, "dev{}: {plugged0} hot-plug pages plugged before the test", v.device());
    let bar = v.bar_pages();
    let Some(carved) = v.carve(bar) else {
        return Err(format!("dev{}: the BAR is in use ({} pages); cannot isolate the test", v.device(), v.in_use()));
    };
    let r = resized_while_running(&v, boot);
    v.uncarve(carved, bar);
    // Back as it was: the host's boot request, nothing plugged.
    if v.follow_state().seen != boot {
        let _ = follow::ask_host(&v, boot, MET_MS);
    }
    if v.plugged_pages() > 0 {
        let _ = v.shrink(v.plugged_pages() * PAGE);
    }
    r?;
    check!(v.pages() == pages0, "dev{}: {} pages online after the test, {pages0} before", v.device(), v.pages());
    Ok(())
}

fn resized_while_running(v: &Arc<Vram>, boot: u64) -> TestResult {
    let base = v.in_use();
    let met0 = v.follow_state().met;
    let irq = v.dev().with_hot_mem(|m| m.config_interrupts()).unwrap_or(false);
    let signals0 = sched::CONFIG_CHANGED.count();
    v.grow(2 * HUGE).map_err(|e| e.to_string())?;
    let works = [Arc::new(Work::new(0x51, PAGES)?), Arc::new(Work::new(0x52, PAGES)?)];
    for (i, w) in works.iter().enumerate() {
        let moved = vram::migrate_to_device(v, &w.space, w.a, PAGES).map_err(|e| e.to_string())?;
        check!(moved == PAGES, "workload {i}: {moved} of {PAGES} pages moved into the two plugged blocks");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, w) in works.iter().enumerate() {
        let (w, v, stop) = (w.clone(), v.clone(), stop.clone());
        let cpu = (i + 1) % crate::arch::smp::count();
        tasks.push(attempt!(sched::spawn_on(cpu, move || w.run(
            &v,
            &stop,
            if i == 0 { "workload 0" } else { "workload 1" }
        ))));
    }
    let asked = |bytes: u64| -> TestResult {
        let t0 = time::rdtsc();
        follow::ask_host(v, bytes, MET_MS).map_err(|e| e.to_string())?;
        let ms = time::cycles_to_ns(time::rdtsc() - t0).unwrap_or(0) / 1_000_000;
        let plugged = v.dev().with_hot_mem(|m| {
            m.refresh();
            m.config.plugged_size
        });
        check!(plugged == Some(bytes), "the device has {plugged:?} bytes plugged, the host asked {bytes}");
        log::info!("dev{}: the host's request for {} MiB met in {ms} ms", v.device(), bytes >> 20);
        Ok(())
    };
    let evicted0 = v.follow_state().evicted;
    let r = asked(HUGE)
        .and_then(|()| {
            // Both blocks were full (the workloads hold at most 64 pages each in RAM at a time),
            // so giving one back moved pages.
            let n = v.follow_state().evicted - evicted0;
            check!(n > 0, "the follower gave a full block back without evicting a page");
            log::info!("dev{}: {n} pages evicted to give the host its block", v.device());
            Ok(())
        })
        .and_then(|()| asked(4 * HUGE));
    stop.store(true, Ordering::Release);
    let mut rounds = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.join(JOIN_MS) {
            Ok(Ok((n, _))) => rounds.push(n),
            Ok(Err(e)) => return Err(format!("workload {i}: {e}")),
            Err(e) => return Err(format!("workload {i}: {e}")),
        }
    }
    r?;
    check!(rounds.iter().all(|&n| n > 0), "a workload never ran a round: {rounds:?}");
    for (i, w) in works.iter().enumerate() {
        w.check(&format!("workload {i} at the end"))?;
    }
    let f = v.follow_state();
    check!(f.met >= met0 + 2 && f.pending.is_none(), "the follower met {} requests, {met0} before: {f:?}", f.met);
    if irq {
        check!(
            sched::CONFIG_CHANGED.count() >= signals0 + 2,
            "{} configuration interrupts for two requests",
            sched::CONFIG_CHANGED.count() - signals0
        );
    }
    follow::ask_host(v, boot, MET_MS).map_err(|e| format!("asking back the boot request: {e}"))?;
    drop(works);
    check!(v.in_use() == base, "{} device pages in use after the workloads went (base {base})", v.in_use());
    Ok(())
}
