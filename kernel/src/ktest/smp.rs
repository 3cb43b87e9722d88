//! In-kernel tests of SMP and the scheduler: every CPU the MADT lists is up and ticking, tasks
//! run where they are put and are preempted by the timer, and a page-table change on one CPU
//! reaches the TLB of another that is using the same address space, and a task waiting on an
//! interval notifier for an invalidation another CPU runs waits for it (each of these would
//! hang, read stale data or fail at once without the mechanism under test, and the bounded
//! joins turn that into a failure).

use alloc::{
    format,
    string::String,
    sync::{Arc, Weak},
    vec::Vec,
};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use hmm::mm::notify::Range as NotifyRange;
use hmm::mm::space::{FaultError, MapRequest};
use hmm::mm::vma::Prot;
use hmm::notifier::{Interval, IntervalOps, Subscriptions};

use super::TestResult;
use crate::arch::{smp, time};
use crate::mm::uspace;
use crate::sched::{self, SchedError};
use crate::system::System;

const PAGE: u64 = 4096;
const JOIN_MS: u64 = 5_000;

/// The CPU the cross-CPU tests use: the last one (CPU 0 itself on a one-CPU machine, where
/// they still check the mechanism on one CPU).
fn other_cpu() -> usize {
    smp::count() - 1
}

pub fn every_madt_cpu_is_online_and_ticking(s: &System) -> TestResult {
    let enabled = s.platform.cpus.iter().filter(|c| c.enabled).count().min(smp::MAX_CPUS);
    check!(smp::count() == enabled, "{} CPUs online, the MADT enables {enabled}", smp::count());
    check!(s.smp.failed.is_empty(), "CPUs that did not start: {:?}", s.smp.failed);
    let before: Vec<u64> = (0..smp::count()).map(|c| smp::cpu(c).ticks.load(Ordering::Relaxed)).collect();
    time::delay_ns(50_000_000);
    for (c, b) in before.iter().enumerate() {
        let now = smp::cpu(c).ticks.load(Ordering::Relaxed);
        check!(now > *b, "CPU {c}'s timer did not tick in 50 ms ({b} -> {now})");
    }
    Ok(())
}

pub fn tasks_run_on_the_cpu_they_are_spawned_on(_: &System) -> TestResult {
    let mut handles = Vec::new();
    for c in 0..smp::count() {
        for k in 0..3u64 {
            handles.push((c, attempt!(sched::spawn_on(c, move || (smp::index(), k * k)))));
        }
    }
    for (i, (c, h)) in handles.into_iter().enumerate() {
        let (ran_on, v) = attempt!(h.join(JOIN_MS));
        check!(ran_on == c, "task spawned on CPU {c} ran on CPU {ran_on}");
        check!(v == (i as u64 % 3).pow(2), "task {i} returned {v}");
    }
    let e = sched::spawn_on(smp::count(), || ()).err();
    check!(matches!(e, Some(SchedError::NoSuchCpu { .. })), "spawning on a CPU that is not online: {e:?}");
    Ok(())
}

/// Two tasks on one CPU: the first spins (never yielding) until the second has run. Only the
/// timer's preemption lets the second run at all.
pub fn the_timer_preempts_a_spinning_task(_: &System) -> TestResult {
    let cpu = other_cpu();
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let spinner = attempt!(sched::spawn_on(cpu, move || {
        let t0 = time::rdtsc();
        while !f.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        time::rdtsc() - t0
    }));
    let f = flag.clone();
    let setter = attempt!(sched::spawn_on(cpu, move || f.store(true, Ordering::Release)));
    attempt!(setter.join(JOIN_MS));
    let spun = attempt!(spinner.join(JOIN_MS));
    check!(spun > 0);
    // And the boot task itself is preempted: it spins here while a task on its CPU sets the flag.
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let setter = attempt!(sched::spawn_on(0, move || f.store(true, Ordering::Release)));
    let deadline = time::Deadline::after_ms(JOIN_MS);
    while !flag.load(Ordering::Acquire) {
        check!(!deadline.passed(), "the boot task was never preempted");
        core::hint::spin_loop();
    }
    attempt!(setter.join(JOIN_MS));
    let (busy, switches, ticks) = sched::cpu_stats(cpu);
    check!(busy > 0 && switches >= 2 && ticks > 0, "CPU {cpu}: busy {busy}, switches {switches}, ticks {ticks}");
    Ok(())
}

pub fn join_times_out_and_the_task_is_reaped(_: &System) -> TestResult {
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let h = attempt!(sched::spawn_on(other_cpu(), move || {
        while !r.load(Ordering::Acquire) {
            sched::yield_now();
        }
        7u32
    }));
    let e = h.join(30).err();
    check!(matches!(e, Some(SchedError::Timeout { ms: 30, .. })), "join of a task that cannot finish: {e:?}");
    let msg = format!("{}", e.unwrap_or(SchedError::TooManyTasks));
    check!(msg.contains("did not finish within 30 ms"), "message: {msg}");
    release.store(true, Ordering::Release);
    // The detached task finishes and a later spawn frees its slot: many spawns still work.
    for _ in 0..(2 * sched::MAX_TASKS) {
        let h = attempt!(sched::spawn_on(other_cpu(), || 1u8));
        check!(attempt!(h.join(JOIN_MS)) == 1);
    }
    Ok(())
}

/// `park` and `unpark`: a wake that comes before the park is kept (the park returns at once);
/// a timed park nobody wakes ends after its timeout and not before; a task parked on another
/// CPU stays parked (off its run queue) until this one wakes it; and an [`sched::Event`]
/// signalled wakes the task waiting for it with the new count. Without the mechanism the
/// parked task would never be seen parked, or never wake, and the bounded waits fail.
pub fn park_waits_for_unpark_or_timeout(_: &System) -> TestResult {
    use sched::Woken;
    sched::unpark(sched::me());
    check!(sched::park(Some(JOIN_MS)) == Woken::Unparked, "a wake before the park was lost");
    let t0 = time::rdtsc();
    check!(sched::park(Some(20)) == Woken::TimedOut, "a timed park nobody woke did not time out");
    let ns = time::cycles_to_ns(time::rdtsc() - t0).unwrap_or(0);
    check!(ns >= 20_000_000, "a 20 ms park returned after {ns} ns");

    let cpu = other_cpu();
    let slot = Arc::new(spin::Mutex::new(None));
    let s = slot.clone();
    let h = attempt!(sched::spawn_on(cpu, move || {
        *s.lock() = Some(sched::me());
        sched::park(Some(JOIN_MS))
    }));
    let deadline = time::Deadline::after_ms(JOIN_MS);
    let task = loop {
        if let Some(t) = *slot.lock()
            && sched::is_parked(t)
        {
            break t;
        }
        check!(!deadline.passed(), "the task on CPU {cpu} was never seen parked");
        sched::yield_now();
    };
    sched::unpark(task);
    check!(attempt!(h.join(JOIN_MS)) == Woken::Unparked, "the parked task timed out instead of waking");

    static EVENT: sched::Event = sched::Event::new();
    let before = EVENT.count();
    let slot = Arc::new(spin::Mutex::new(None));
    let s = slot.clone();
    let h = attempt!(sched::spawn_on(cpu, move || {
        *s.lock() = Some(sched::me());
        EVENT.wait(before, JOIN_MS)
    }));
    let deadline = time::Deadline::after_ms(JOIN_MS);
    while !slot.lock().is_some_and(sched::is_parked) {
        check!(!deadline.passed(), "the task waiting for the event was never seen parked");
        sched::yield_now();
    }
    EVENT.signal();
    let seen = attempt!(h.join(JOIN_MS));
    check!(seen == before + 1, "the waiter saw count {seen}, expected {}", before + 1);
    Ok(())
}

/// A task on another CPU reads a page of an address space in a loop, keeping the translation
/// in its TLB; the boot CPU then unmaps the page. Without a shootdown the reader would go on
/// reading the old frame through its stale translation and never see the fault.
pub fn munmap_shoots_down_another_cpus_tlb(_: &System) -> TestResult {
    let space = attempt!(uspace::new_space());
    let a = attempt!(space.lock().mmap(MapRequest::anon(4 * PAGE, Prot::RW)));
    attempt!(uspace::run(&space, |u| u.write_u64(a + PAGE, 0x5107)));
    let reads = Arc::new(AtomicU64::new(0));
    let (sp, r) = (space.clone(), reads.clone());
    let reader = attempt!(sched::spawn_on(other_cpu(), move || {
        uspace::run(&sp, |u| -> Result<u64, String> {
            loop {
                match u.read_u64(a + PAGE) {
                    Ok(0x5107) => {
                        r.fetch_add(1, Ordering::Release);
                    }
                    Ok(v) => return Err(format!("read {v:#x} instead of 0x5107")),
                    Err(f) if f.error == FaultError::NoMapping => return Ok(r.load(Ordering::Relaxed)),
                    Err(f) => return Err(format!("unexpected fault: {f}")),
                }
            }
        })
    }));
    // Let the reader warm its TLB.
    let deadline = time::Deadline::after_ms(JOIN_MS);
    while reads.load(Ordering::Acquire) < 1000 {
        check!(!deadline.passed(), "the reader never read the page");
        sched::yield_now();
    }
    let before = smp::SHOOTDOWNS.load(Ordering::Relaxed);
    attempt!(space.lock().munmap(a + PAGE, PAGE));
    let n = attempt!(attempt!(reader.join(JOIN_MS)));
    check!(n >= 1000, "{n} reads");
    if smp::count() > 1 {
        check!(smp::SHOOTDOWNS.load(Ordering::Relaxed) > before, "no shootdown was sent");
    }
    Ok(())
}

/// The boot CPU moves pages to device memory while a task on another CPU has them in its TLB:
/// the task's next accesses fault, and the faults, on that CPU, migrate the pages back to RAM
/// by DMA with their data intact. Then every CPU writes its own pages of one address space at
/// once (demand paging on all of them concurrently) and all data is checked. (QEMU happens to
/// flush every vCPU's TLB somewhere in the DMA path, so the shootdown itself is checked by
/// `munmap_shoots_down_another_cpus_tlb`, which fails without it.)
pub fn device_page_faults_back_on_another_cpu(_: &System) -> TestResult {
    let vram = match crate::vram::all() {
        Ok(v) if !v.is_empty() => v,
        _ => return Ok(()), // no device on this machine: the suite's device tests say so
    };
    let dev = vram[0].clone();
    let space = attempt!(uspace::new_space());
    let n = 64u64;
    let a = attempt!(space.lock().mmap(MapRequest::anon(n * PAGE, Prot::RW)));
    attempt!(space.lock().madvise(a, n * PAGE, hmm::mm::space::Advice::NoHugePage));
    attempt!(uspace::run(&space, |u| -> Result<(), uspace::UserFault> {
        for i in 0..n {
            u.write_u64(a + i * PAGE, 0xd00d_0000 + i)?;
        }
        Ok(())
    }));
    let go = Arc::new(AtomicBool::new(false));
    let (sp, g) = (space.clone(), go.clone());
    let user = attempt!(sched::spawn_on(other_cpu(), move || {
        uspace::run(&sp, |u| -> Result<(), String> {
            // Loads and stores: both kinds of translation are cached now.
            for i in 0..n {
                let v = u.read_u64(a + i * PAGE).map_err(|f| format!("{f}"))?;
                if v != 0xd00d_0000 + i {
                    return Err(format!("page {i} read {v:#x} before the migration"));
                }
                u.write_u64(a + i * PAGE, v).map_err(|f| format!("{f}"))?;
            }
            while !g.load(Ordering::Acquire) {
                sched::yield_now();
            }
            for i in 0..n {
                let v = u.read_u64(a + i * PAGE).map_err(|f| format!("page {i}: {f}"))?;
                if v != 0xd00d_0000 + i {
                    return Err(format!("page {i} read {v:#x} after coming back from the device"));
                }
                u.write_u64(a + i * PAGE, v + 1).map_err(|f| format!("page {i}: {f}"))?;
            }
            Ok(())
        })
    }));
    let moved = attempt!(crate::vram::migrate_to_device(&dev, &space, a, n));
    check!(moved == n, "{moved} of {n} pages moved to the device");
    go.store(true, Ordering::Release);
    attempt!(attempt!(user.join(JOIN_MS)));
    let on_dev =
        (0..n).filter(|i| space.lock().lookup(a + i * PAGE).is_some_and(|e| dev.holds(&e.pte).is_some())).count();
    check!(on_dev == 0, "{on_dev} pages still on the device after the other CPU touched them");

    // Concurrent demand paging: each CPU writes its own pages of one fresh mapping.
    let m = 256u64;
    let b = attempt!(space.lock().mmap(MapRequest::anon(m * PAGE, Prot::RW)));
    let cpus = smp::count() as u64;
    let mut hs = Vec::new();
    for c in 0..cpus {
        let sp = space.clone();
        hs.push(attempt!(sched::spawn_on(c as usize, move || {
            uspace::run(&sp, |u| -> Result<(), uspace::UserFault> {
                for i in (c..m).step_by(cpus as usize) {
                    u.write_u64(b + i * PAGE, 0xcafe_0000 + i)?;
                }
                Ok(())
            })
        })));
    }
    for h in hs {
        attempt!(attempt!(h.join(JOIN_MS)));
    }
    attempt!(uspace::run(&space, |u| -> Result<(), String> {
        for i in 0..m {
            let v = u.read_u64(b + i * PAGE).map_err(|f| format!("{f}"))?;
            if v != 0xcafe_0000 + i {
                return Err(format!("page {i} holds {v:#x}"));
            }
        }
        for i in 0..n {
            let v = u.read_u64(a + i * PAGE).map_err(|f| format!("{f}"))?;
            if v != 0xd00d_0001 + i {
                return Err(format!("page {i} of the migrated range holds {v:#x}"));
            }
        }
        Ok(())
    }));
    Ok(())
}

/// Interval-notifier ops that hold every invalidation open until a caller waits for it
/// (`Subscriptions::waiters`), bounded: the cross-CPU wait is forced, never left to timing.
struct HoldUntilWaited {
    cur_seq: AtomicU64,
    in_callback: AtomicBool,
    returned: AtomicBool,
    no_waiter: AtomicBool,
}

impl HoldUntilWaited {
    fn new() -> Arc<Self> {
        Arc::new(HoldUntilWaited {
            cur_seq: AtomicU64::new(0),
            in_callback: AtomicBool::new(false),
            returned: AtomicBool::new(false),
            no_waiter: AtomicBool::new(false),
        })
    }
}

impl IntervalOps for HoldUntilWaited {
    fn invalidate(&self, sub: &Interval, _range: &NotifyRange, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        self.cur_seq.store(cur_seq, Ordering::Release);
        self.in_callback.store(true, Ordering::Release);
        let deadline = time::Deadline::after_ms(JOIN_MS);
        while sub.subscriptions().waiters() == 0 {
            if deadline.passed() {
                self.no_waiter.store(true, Ordering::Release);
                break;
            }
            core::hint::spin_loop();
        }
        self.returned.store(true, Ordering::Release);
        true
    }
}

/// Waits (bounded, yielding) until `flag` is set.
fn wait_for(flag: &AtomicBool) -> Result<(), String> {
    let deadline = time::Deadline::after_ms(JOIN_MS);
    while !flag.load(Ordering::Acquire) {
        if deadline.passed() {
            return Err(String::from("the invalidation never reached its callback"));
        }
        sched::yield_now();
    }
    Ok(())
}

/// The boot task munmaps a range whose interval notifier holds the invalidation open; a task on
/// another CPU then calls `read_begin` on that interval (and, in a second round, `remove` on
/// it). Each must wait for the invalidation to end and then succeed. Every task is its own
/// notifier context: were all tasks one (no context function), the waiter would be taken for
/// the invalidator and fail at once with `Busy`, and the callback would give up waiting.
pub fn notifier_waits_for_an_invalidation_on_another_cpu(_: &System) -> TestResult {
    let space = attempt!(uspace::new_space());
    let a = attempt!(space.lock().mmap(MapRequest::anon(4 * PAGE, Prot::RW)));
    let b = attempt!(space.lock().mmap(MapRequest::anon(4 * PAGE, Prot::RW)));
    attempt!(uspace::run(&space, |u| u.write_u64(a, 1)));
    let subs = Subscriptions::of(&mut space.lock());

    // read_begin.
    let ops = HoldUntilWaited::new();
    let w: Weak<dyn IntervalOps> = Arc::downgrade(&ops) as Weak<dyn IntervalOps>;
    let sub = Arc::new(attempt!(subs.insert(a, 4 * PAGE, w)));
    let (s2, o2) = (sub.clone(), ops.clone());
    let reader = attempt!(sched::spawn_on(other_cpu(), move || -> Result<(u64, bool, bool), String> {
        wait_for(&o2.in_callback)?;
        let seq = s2.read_begin().map_err(|e| format!("read_begin: {e}"))?;
        Ok((seq, o2.returned.load(Ordering::Acquire), s2.read_retry(seq)))
    }));
    attempt!(space.lock().munmap(a, 4 * PAGE));
    let (seq, after_callback, retry) = attempt!(attempt!(reader.join(JOIN_MS)));
    check!(
        !ops.no_waiter.load(Ordering::Acquire),
        "read_begin on CPU {} did not wait for the invalidation",
        other_cpu()
    );
    check!(after_callback, "read_begin returned while the invalidation was still in its callback");
    check!(seq == ops.cur_seq.load(Ordering::Acquire), "read_begin returned {seq}, not the invalidation's sequence");
    check!(!retry, "nothing invalidated since read_begin, yet read_retry asks for a retry");
    check!(!subs.is_invalidating() && subs.waiters() == 0);

    // remove.
    let ops = HoldUntilWaited::new();
    let w: Weak<dyn IntervalOps> = Arc::downgrade(&ops) as Weak<dyn IntervalOps>;
    let sub_b = attempt!(subs.insert(b, 4 * PAGE, w));
    let before = subs.len();
    let o2 = ops.clone();
    let remover = attempt!(sched::spawn_on(other_cpu(), move || -> Result<bool, String> {
        wait_for(&o2.in_callback)?;
        sub_b.remove().map_err(|(_, e)| format!("remove: {e}"))?;
        Ok(o2.returned.load(Ordering::Acquire))
    }));
    attempt!(space.lock().munmap(b, 4 * PAGE));
    let after_callback = attempt!(attempt!(remover.join(JOIN_MS)));
    check!(!ops.no_waiter.load(Ordering::Acquire), "remove on CPU {} did not wait for the invalidation", other_cpu());
    check!(after_callback, "remove returned while the invalidation was still in its callback");
    check!(subs.len() == before - 1, "{} intervals after the remove, {before} before", subs.len());
    drop(sub);
    Ok(())
}
