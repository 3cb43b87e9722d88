//! The sampling profiler (`profile.hz=N` on the command line; off, and free, without it).
//!
//! **Source.** The local APIC timer, the one per-CPU periodic interrupt the kernel has, runs at
//! `N` instead of [`apic::TICK_HZ`](super::apic::TICK_HZ) ([`init`] sets
//! [`apic::set_sub_ticks`](super::apic::set_sub_ticks) to `N / TICK_HZ`): every interrupt takes
//! a sample, and only every `N / TICK_HZ`th is a scheduler tick (preemption, the tick count,
//! the tick hooks), so the scheduler and the watchdog see the same 100 Hz as without the
//! profiler. A separate source would need a second timer per CPU (the HPET or PIT are one per
//! machine and would need IPIs to reach the other CPUs); raising the one timer's rate needs none.
//!
//! **Sample.** [`sample`] (called by the timer interrupt) takes the interrupted RIP, whether the
//! CPU was in user mode, and in kernel mode up to [`MAX_FRAMES`]` - 1` return addresses from the
//! frame-pointer chain (the kernel is built with `-C force-frame-pointers=yes`,
//! `.cargo/config.toml`). The walk never faults: every frame it reads must lie in the
//! interrupted stack (the boot stack or the kernel-stack slot that holds the interrupted RSP,
//! [`stack::containing`]: mapped while code runs on it), above the interrupted RSP, 8-byte
//! aligned, each frame above the one before; it stops at the first return address outside the
//! kernel's text. A function interrupted in its prologue (before `mov rbp, rsp`) shows its
//! caller's caller as its parent: the usual frame-pointer limit.
//!
//! **Storage.** One [`Table`] per CPU known at [`init`] (the ACPI CPU count), allocated there
//! (8192 slots each, fewer when 8 MiB does not hold that many for every CPU),
//! before the timer starts: the interrupt never allocates. The interrupt only `try_lock`s its
//! CPU's table (the reporter is the only other user, and takes it only after sampling stopped,
//! so a sample that meets it busy came after the end and is not taken). A full table counts
//! the sample as a drop (per CPU), a CPU past the tables as lost (in the final line), so every
//! sample taken is in a stack, in a drop count or in the lost count.
//!
//! **Report.** [`report`] (called by [`exit`](super::exit::exit) when the run ends normally)
//! stops sampling and prints each CPU's tables as `@@PROFILE` lines
//! (`boot::protocol::profile`), then a final `{"done":true,..}`; the xtask symbolises them.

use alloc::vec::Vec;
use boot::protocol::{
    Tag,
    profile::{self, MAX_FRAMES, Slot, Stack, Table},
};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::{Mutex, Once};

use super::trap::TrapFrame;
use crate::platform::mm::stack;

/// Most slots of each CPU's table (it holds [`Table::FULL_PERCENT`] of them in stacks).
const MAX_SLOTS_PER_CPU: usize = 8192;
/// Fewest slots per CPU.
const MIN_SLOTS_PER_CPU: usize = 256;
/// The heap all tables together may take (they are split among the CPUs).
const TABLES_BYTES: usize = 8 << 20;

static ENABLED: AtomicBool = AtomicBool::new(false);
static HZ: AtomicU32 = AtomicU32::new(0);
static TABLES: Once<Vec<Mutex<Table<'static>>>> = Once::new();
/// Samples of CPUs past the tables (more CPUs came up than ACPI listed at [`init`]).
static LOST: AtomicU64 = AtomicU64::new(0);

/// Turns the profiler on at `hz` samples per second per CPU (a multiple of `TICK_HZ`, as the
/// command line checked) for `cpus` CPUs. Call once, before the APIC timer starts.
pub fn init(hz: u32, cpus: usize) {
    let cpus = cpus.max(1);
    let per_cpu = (TABLES_BYTES / core::mem::size_of::<Slot>() / cpus).clamp(MIN_SLOTS_PER_CPU, MAX_SLOTS_PER_CPU);
    let tables = TABLES.call_once(|| {
        (0..cpus)
            .map(|_| {
                let slots: &'static mut [Slot] = alloc::vec![Slot::EMPTY; per_cpu].leak();
                Mutex::new(Table::new(slots))
            })
            .collect()
    });
    HZ.store(hz, Ordering::Relaxed);
    super::apic::set_sub_ticks((u64::from(hz) / super::apic::TICK_HZ).max(1) as u32);
    log::info!("profile: sampling at {hz} Hz on {} CPUs, {per_cpu} slots per CPU", tables.len());
    ENABLED.store(true, Ordering::Release);
}

/// Takes a sample of the interrupted context (from the timer interrupt). One relaxed load when
/// the profiler is off.
#[inline]
pub fn sample(frame: &TrapFrame) {
    if ENABLED.load(Ordering::Relaxed) {
        record(frame);
    }
}

#[inline(never)]
fn record(frame: &TrapFrame) {
    let Some(tables) = TABLES.get() else { return };
    let cpu = super::smp::index();
    let Some(table) = tables.get(cpu) else {
        LOST.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(mut t) = table.try_lock() else {
        // Only the reporter holds it, after sampling stopped: this sample came too late.
        return;
    };
    let mut pcs = [0u64; MAX_FRAMES];
    let user = frame.cs & 3 != 0;
    let n = if user { walk_user(frame, &mut pcs) } else { walk(frame, &mut pcs) };
    t.record(&Stack::new(user, &pcs[..n]));
}

fn walk_user(frame: &TrapFrame, pcs: &mut [u64; MAX_FRAMES]) -> usize {
    pcs[0] = frame.rip;
    1
}

/// The interrupted RIP and the return addresses of the frame-pointer chain, bounded as the
/// module header says. Returns how many of `pcs` it filled.
fn walk(frame: &TrapFrame, pcs: &mut [u64; MAX_FRAMES]) -> usize {
    pcs[0] = frame.rip;
    let mut n = 1;
    let Some(range) = stack_containing(frame.rsp) else { return n };
    let text = crate::platform::mm::image().text;
    let mut low = frame.rsp;
    let mut fp = frame.rbp;
    while n < MAX_FRAMES {
        let Some(end) = fp.checked_add(16) else { break };
        if !fp.is_multiple_of(8) || fp < low || fp < range.start || end > range.end {
            break;
        }
        // SAFETY: `[fp, fp + 16)` lies inside the stack the interrupted code runs on (checked
        // just above), which stays mapped while code runs on it; this CPU is in its interrupt
        // handler, so nothing writes those words meanwhile. The reads are plain loads of
        // memory; a stale or garbage value only ends the walk at the checks.
        let (next, ret) =
            unsafe { (core::ptr::read_volatile(fp as *const u64), core::ptr::read_volatile((fp + 8) as *const u64)) };
        if ret < text.0 || ret >= text.1 {
            break;
        }
        pcs[n] = ret;
        n += 1;
        low = end;
        fp = next;
    }
    n
}

/// The stack `addr` lies on: the boot stack, or a kernel-stack slot.
fn stack_containing(addr: u64) -> Option<core::ops::Range<u64>> {
    let guard = boot::entry::boot_stack_guard();
    let boot = guard.end..guard.end + boot::layout::BOOT_STACK_SIZE as u64;
    if boot.contains(&addr) { Some(boot) } else { stack::containing(addr) }
}

/// Stops sampling and prints the report (`@@PROFILE` lines). Does nothing when the profiler
/// is off; prints once.
pub fn report() {
    if !ENABLED.swap(false, Ordering::AcqRel) {
        return;
    }
    let Some(tables) = TABLES.get() else { return };
    let hz = HZ.load(Ordering::Relaxed);
    for (cpu, table) in tables.iter().enumerate() {
        // A CPU's interrupt holds its table for one sample at most: the lock comes free.
        let t = table.lock();
        crate::sprintln!("{}", Tag::Profile.line(profile::write_summary(alloc::string::String::new(), cpu, hz, &t)));
        for (s, count) in t.entries() {
            crate::sprintln!(
                "{}",
                Tag::Profile.line(profile::write_stack(alloc::string::String::new(), cpu, s, count))
            );
        }
    }
    crate::sprintln!(
        "{}",
        Tag::Profile.line(profile::write_done(
            alloc::string::String::new(),
            tables.len(),
            LOST.load(Ordering::Relaxed)
        ))
    );
}
