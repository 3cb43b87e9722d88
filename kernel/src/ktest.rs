//! The in-kernel test runner and its registry.
//!
//! Tests are plain functions returning [`TestResult`], listed in tables of [`Test`]s (an
//! explicit registry: stable Rust has no custom test frameworks). This module's own table is
//! [`TESTS`]; `main` assembles the list of every table (this one, the experiment engine's) and
//! hands it to [`run`], so the runner names no module whose tests it runs. Test `i` is the
//! `i`-th of the tables in order, then the hmm-tests scenarios. The runner registers its
//! watchdog as a timer-tick hook and its crash report as the platform's crash reporter. It
//! prints a line protocol the xtask reads:
//!
//! ```text
//! ktest: plan N
//! ktest: start I NAME
//! ktest: ok I NAME (T us)            | ktest: FAIL I NAME: MESSAGE
//! ktest: done P passed, F failed
//! ```
//!
//! A test that panics or takes a fatal exception cannot continue (the kernel is built with
//! `panic = "abort"`): the crash path prints `ktest: FAIL I NAME: ...` and exits with
//! [`ExitCode::TestPanicked`]; the xtask boots again with `ktest.from=I+1` and continues. A test
//! that runs past `ktest.timeout_ms` is stopped by the timer-interrupt watchdog with
//! `ktest: HANG I NAME` and [`ExitCode::TestHung`]; one that hangs with interrupts off is cut by
//! the xtask's own timeout.

extern crate alloc;

use alloc::{format, string::String, vec::Vec};
use boot::protocol::{Ktest, Text};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::{
    mm::{
        self, FrameRange, SCRATCH, frame,
        paging::{self, Flags, MapError, PageSize},
    },
    platform::arch::{
        apic,
        exit::{ExitCode, exit},
        serial::write_raw,
        time,
        trap::{self, ProbeError},
    },
    system::System,
};
use spin::Once;

/// A test's outcome: `Err` carries the message and location.
pub type TestResult = Result<(), String>;

/// A registered test.
#[derive(Debug, Clone, Copy)]
pub struct Test {
    /// `area::name`.
    pub name: &'static str,
    /// The body.
    pub run: fn(&System) -> TestResult,
}

/// Fails the test with a message and the location, unless `cond` holds.
macro_rules! check {
    ($cond:expr) => {
        if !$cond {
            return Err(format!("check failed: {} at {}:{}", stringify!($cond), file!(), line!()));
        }
    };
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{} ({}) at {}:{}", format_args!($($msg)+), stringify!($cond), file!(), line!()));
        }
    };
}

/// Turns an error value into a test failure with the location.
macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => return Err(format!("{} failed: {} at {}:{}", stringify!($e), err, file!(), line!())),
        }
    };
}

const NONE: usize = usize::MAX;
static CURRENT: AtomicUsize = AtomicUsize::new(NONE);
static DEADLINE_TSC: AtomicU64 = AtomicU64::new(u64::MAX);
static START_TSC: AtomicU64 = AtomicU64::new(0);
/// The tables [`run`] was given (read by the crash report and the watchdog).
static TABLES: Once<&'static [&'static [Test]]> = Once::new();

// After the macros: textual macro scope.
/// A fresh process with `len` bytes of anonymous read-write memory, written with `data` by the
/// CPU (its length at most `len`): its address space and where the memory starts.
pub(crate) fn process_with(len: u64, data: &[u8]) -> Result<(alloc::sync::Arc<hmm::mm::SharedSpace>, u64), String> {
    use hmm::mm::space::{AddressSpace, MapRequest};
    let mm = crate::mm::uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|e| alloc::format!("{e}"))?);
    let a = space.lock().mmap(MapRequest::anon(len, hmm::mm::vma::Prot::RW)).map_err(|e| alloc::format!("{e}"))?;
    crate::mm::uspace::run(&space, |u| u.write(a, data)).map_err(|f| format!("CPU fill: {:?}", f.error))?;
    Ok((space, a))
}

/// A process with `pages` pages of distinct data (each 8-byte word its index xor the seed's),
/// written by the CPU: what the device tests migrate and then check.
pub(crate) struct Filled {
    /// Its address space.
    pub space: alloc::sync::Arc<hmm::mm::SharedSpace>,
    /// Where its pages start.
    pub a: u64,
    /// What they hold.
    pub data: alloc::vec::Vec<u8>,
}

impl Filled {
    pub(crate) fn new(seed: u64, pages: u64) -> Result<Filled, String> {
        let data: alloc::vec::Vec<u8> = (0..pages * 4096 / 8).flat_map(|i| (i ^ seed << 40).to_le_bytes()).collect();
        let (space, a) = process_with(pages * 4096, &data)?;
        Ok(Filled { space, a, data })
    }

    /// Its pages.
    pub(crate) fn pages(&self) -> u64 {
        self.data.len() as u64 / 4096
    }

    /// Pages `[first, first + n)`, read by the CPU (faulting device pages back), hold their data.
    pub(crate) fn check_range(&self, first: u64, n: u64, what: &str) -> TestResult {
        let (lo, hi) = ((first * 4096) as usize, ((first + n) * 4096) as usize);
        let mut back = alloc::vec![0u8; hi - lo];
        crate::mm::uspace::run(&self.space, |u| u.read(self.a + first * 4096, &mut back))
            .map_err(|f| format!("{what}: CPU read: {:?}", f.error))?;
        if let Some(k) = (0..n as usize).find(|&k| back[k * 4096..(k + 1) * 4096] != self.data[lo + k * 4096..][..4096])
        {
            return Err(format!("{what}: page {} lost its data", first + k as u64));
        }
        Ok(())
    }

    /// Every page holds its data.
    pub(crate) fn check(&self, what: &str) -> TestResult {
        self.check_range(0, self.pages(), what)
    }
}

mod devices;
mod faults;
mod follow;
mod hmm_suite;
mod smp;
mod spaces;
mod stress;
mod tenants;
mod user;

/// This module's tests (the kernel's own, the devices', the address spaces'), in run order.
pub const TESTS: &[Test] = &[
    Test { name: "boot::memory_map_sorted_disjoint", run: memory_map_sorted_disjoint },
    Test { name: "frames::alloc_aligned_zeroed", run: frames_alloc_aligned_zeroed },
    Test { name: "frames::exhaustion_and_reuse", run: frames_exhaustion_and_reuse },
    Test { name: "heap::grows_on_demand", run: heap_grows_on_demand },
    Test { name: "paging::map_read_unmap_4k", run: paging_map_read_unmap_4k },
    Test { name: "paging::remap_needs_flush", run: paging_remap_needs_flush },
    Test { name: "paging::huge_2m_pages", run: paging_huge_2m_pages },
    Test { name: "paging::errors_are_values", run: paging_errors_are_values },
    Test { name: "paging::kernel_image_permissions", run: paging_kernel_image_permissions },
    Test { name: "paging::direct_map_covers_ram", run: paging_direct_map_covers_ram },
    Test { name: "hmm_platform::frames_outside_ram_are_refused", run: hmm_platform_frames_outside_ram_are_refused },
    Test { name: "hmm_platform::table_checked_once_not_per_entry", run: hmm_platform_table_checked_once_not_per_entry },
    Test { name: "handles::accesses_are_bounds_checked", run: handles_accesses_are_bounds_checked },
    Test { name: "trap::page_fault_caught_and_decoded", run: trap_page_fault_caught_and_decoded },
    Test { name: "time::tsc_and_apic_timer_tick", run: time_tsc_and_apic_timer_tick },
    Test { name: "acpi::tables_and_cpus", run: acpi_tables_and_cpus },
    Test { name: "pci::bars_assigned_and_enabled", run: pci_bars_assigned_and_enabled },
    Test { name: "pci::virtio_devices_bind", run: pci_virtio_devices_bind },
    Test { name: "devices::registered", run: devices::registered },
    Test { name: "devices::dma_round_trip", run: devices::dma_round_trip },
    Test { name: "devices::completions_interrupt", run: devices::completions_interrupt },
    Test { name: "devices::unmapped_dma_is_refused", run: devices::unmapped_dma_is_refused },
    Test { name: "devices::iommu_errors_are_values", run: devices::iommu_errors_are_values },
    Test { name: "devices::migrate_round_trip", run: devices::migrate_round_trip },
    Test { name: "devices::mirror_is_real", run: devices::mirror_is_real },
    Test { name: "devices::spaces_share_a_device", run: tenants::spaces_share_a_device },
    Test { name: "devices::two_spaces_two_devices_interleaved", run: tenants::two_spaces_two_devices_interleaved },
    Test {
        name: "user::a_program_writes_and_exits_with_its_status",
        run: user::a_program_writes_and_exits_with_its_status,
    },
    Test { name: "user::segments_are_loaded_and_bss_is_zero", run: user::segments_are_loaded_and_bss_is_zero },
    Test { name: "user::faults_end_the_program_not_the_kernel", run: user::faults_end_the_program_not_the_kernel },
    Test {
        name: "user::a_killed_program_ends_and_the_next_one_can_be_killed_too",
        run: user::a_killed_program_ends_and_the_next_one_can_be_killed_too,
    },
    Test {
        name: "user::fpu_state_survives_switches_between_programs",
        run: user::fpu_state_survives_switches_between_programs,
    },
    Test { name: "devices::compute_kernel", run: devices::compute_kernel },
    Test { name: "devices::device_to_device", run: devices::device_to_device },
    Test { name: "devices::two_devices_copy_at_once", run: devices::two_devices_copy_at_once },
    Test { name: "devices::windows_refuse_what_they_do_not_hold", run: devices::windows_refuse_what_they_do_not_hold },
    Test { name: "devices::huge_pages", run: devices::huge_pages },
    Test { name: "devices::hotplug", run: devices::hotplug },
    Test { name: "devices::chunk_cycles_give_sections_back", run: devices::chunk_cycles_give_sections_back },
    Test { name: "faults::dma_error_backs_out", run: faults::dma_error_backs_out },
    Test { name: "faults::dma_timeout_resets_the_engine", run: faults::dma_timeout_resets_the_engine },
    Test { name: "faults::abandoned_copies_are_not_trusted", run: faults::abandoned_copies_are_not_trusted },
    Test { name: "faults::ram_exhausted_during_migrate_to_ram", run: faults::ram_exhausted_during_migrate_to_ram },
    Test { name: "faults::iommu_map_fails_midway", run: faults::iommu_map_fails_midway },
    Test {
        name: "faults::device_memory_removed_during_migration",
        run: faults::device_memory_removed_during_migration,
    },
    Test { name: "faults::failed_unplug_is_retried_or_undone", run: faults::failed_unplug_is_retried_or_undone },
    Test { name: "hotplug::host_resizes_while_workloads_run", run: follow::host_resizes_while_workloads_run },
    Test { name: "stress::two_cpus_devices_and_eviction", run: stress::two_cpus_devices_and_eviction },
    Test { name: "smp::every_madt_cpu_is_online_and_ticking", run: smp::every_madt_cpu_is_online_and_ticking },
    Test { name: "smp::tasks_run_on_the_cpu_they_are_spawned_on", run: smp::tasks_run_on_the_cpu_they_are_spawned_on },
    Test { name: "smp::the_timer_preempts_a_spinning_task", run: smp::the_timer_preempts_a_spinning_task },
    Test { name: "smp::join_times_out_and_the_task_is_reaped", run: smp::join_times_out_and_the_task_is_reaped },
    Test { name: "smp::park_waits_for_unpark_or_timeout", run: smp::park_waits_for_unpark_or_timeout },
    Test { name: "smp::munmap_shoots_down_another_cpus_tlb", run: smp::munmap_shoots_down_another_cpus_tlb },
    Test { name: "smp::device_page_faults_back_on_another_cpu", run: smp::device_page_faults_back_on_another_cpu },
    Test {
        name: "smp::notifier_waits_for_an_invalidation_on_another_cpu",
        run: smp::notifier_waits_for_an_invalidation_on_another_cpu,
    },
    Test { name: "spaces::demand_paging_real_faults", run: spaces::demand_paging_real_faults },
    Test { name: "spaces::bad_access_is_a_fault_value", run: spaces::bad_access_is_a_fault_value },
    Test { name: "spaces::mprotect_and_munmap_flush_the_tlb", run: spaces::mprotect_and_munmap_flush_the_tlb },
    Test { name: "spaces::fork_copy_on_write", run: spaces::fork_copy_on_write },
    Test { name: "spaces::thp_split_on_partial_unmap", run: spaces::thp_split_on_partial_unmap },
    Test { name: "spaces::mremap_preserves_contents", run: spaces::mremap_preserves_contents },
    Test { name: "spaces::file_mappings_private_and_shared", run: spaces::file_mappings_private_and_shared },
    Test { name: "spaces::zero_huge_zero_and_hugetlb_pages", run: spaces::zero_huge_zero_and_hugetlb_pages },
    Test { name: "spaces::madvise_dontneed_free_willneed", run: spaces::madvise_dontneed_free_willneed },
    Test { name: "spaces::out_of_memory_is_a_fault_value", run: spaces::out_of_memory_is_a_fault_value },
    Test { name: "spaces::teardown_frees_every_frame", run: spaces::teardown_frees_every_frame },
];

/// The registered test `i`, across the tables.
fn registered(i: usize) -> Option<&'static Test> {
    let mut i = i;
    for t in TABLES.get().copied().unwrap_or(&[]) {
        match t.get(i) {
            Some(test) => return Some(test),
            None => i -= t.len(),
        }
    }
    None
}

/// Tests in the tables.
fn registered_count() -> usize {
    TABLES.get().map_or(0, |t| t.iter().map(|t| t.len()).sum())
}

/// The number of tests: the registry plus the hmm-tests scenarios (two variants each).
fn total() -> usize {
    registered_count() + hmm_suite::count()
}

/// The name of test `i`.
fn name_of(i: usize) -> Option<String> {
    match registered(i) {
        Some(t) => Some(String::from(t.name)),
        None => hmm_suite::name(i - registered_count()),
    }
}

/// Runs the tests of `tables` (then the hmm-tests scenarios) the command line selects, and
/// exits.
pub fn run(s: &System, tables: &'static [&'static [Test]]) -> ! {
    TABLES.call_once(|| tables);
    if !crate::platform::set_crash_reporter(report_crash) {
        log::warn!("ktest: another crash reporter is registered; a crashing test is not named");
    }
    if let Err(e) = apic::on_tick(watchdog) {
        log::warn!("ktest: no watchdog: {e}");
    }
    let from = s.args.ktest_from;
    let filter = s.args.ktest_filter;
    crate::sprintln!("{}", Ktest::Plan { total: total() });
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let baseline = (frame::free_frames(), mm::heap::stats().0);
    let timeout_cycles = s.tsc_hz.saturating_mul(s.args.ktest_timeout_ms) / 1000;
    for i in from..total() {
        let Some(name) = name_of(i) else { continue };
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        crate::sprintln!("{}", Ktest::Start { index: i, name: &name });
        let start = time::rdtsc();
        START_TSC.store(start, Ordering::SeqCst);
        DEADLINE_TSC.store(start.saturating_add(timeout_cycles), Ordering::SeqCst);
        CURRENT.store(i, Ordering::SeqCst);
        let result = match registered(i) {
            Some(t) => (t.run)(s).map(|()| None),
            None => hmm_suite::run(i - registered_count()),
        };
        CURRENT.store(NONE, Ordering::SeqCst);
        let us = time::cycles_to_ns(time::rdtsc() - start).unwrap_or(0) / 1000;
        match result {
            Ok(None) => {
                passed += 1;
                crate::sprintln!("{}", Ktest::Ok { index: i, name: &name, us });
            }
            Ok(Some(why)) => {
                skipped += 1;
                crate::sprintln!("{}", Ktest::Skip { index: i, name: &name, why: Text::Display(&why) });
            }
            Err(msg) => {
                failed += 1;
                crate::sprintln!("{}", Ktest::Fail { index: i, name: &name, why: Text::Display(&msg) });
            }
        }
    }
    // Device memory of the test devices goes back before the leak check.
    if let Err(e) = hmm_suite::teardown() {
        failed += 1;
        crate::sprintln!("{}", Ktest::Fail { index: total(), name: "hmm::teardown", why: Text::Display(&e) });
    }
    let leaked = check_leaks(baseline);
    crate::sprintln!("{}", Ktest::Done { passed, failed, skipped });
    exit(if failed == 0 && leaked.is_none() { ExitCode::Success } else { ExitCode::Failure })
}

/// Frames the tests took and did not return, beyond what the heap grew by (heap growth is
/// kept by the heap). Reported as a failure of the run.
fn check_leaks((free_before, heap_before): (usize, usize)) -> Option<usize> {
    let heap_growth = (mm::heap::stats().0 - heap_before) / 4096;
    let leaked = free_before.saturating_sub(frame::free_frames()).saturating_sub(heap_growth);
    (leaked > 0).then(|| {
        crate::sprintln!("{}", Ktest::Leak { frames: leaked });
        leaked
    })
}

/// The crash reporter [`run`] registers: prints the failing test, if one is running. Returns
/// whether a test was running.
fn report_crash(what: core::fmt::Arguments<'_>) -> bool {
    let i = CURRENT.load(Ordering::SeqCst);
    if i == NONE {
        return false;
    }
    let name = name_of(i).unwrap_or_default();
    write_raw(format_args!("{}\n", Ktest::Fail { index: i, name: &name, why: Text::Display(&what) }));
    true
}

/// The timer-tick hook [`run`] registers: stops a test that overran its deadline.
fn watchdog() {
    let i = CURRENT.load(Ordering::Relaxed);
    if i == NONE {
        return;
    }
    let now = time::rdtsc();
    if now > DEADLINE_TSC.load(Ordering::Relaxed) {
        let ms = time::cycles_to_ns(now - START_TSC.load(Ordering::Relaxed)).unwrap_or(0) / 1_000_000;
        // No allocation from the timer interrupt: the registry name, or the index.
        match registered(i) {
            Some(t) => write_raw(format_args!("{}\n", Ktest::Hang { index: i, name: t.name, ms })),
            None => write_raw(format_args!("{}\n", Ktest::Hang { index: i, name: "hmm-scenario", ms })),
        }
        exit(ExitCode::TestHung);
    }
}

// ---- tests ---------------------------------------------------------------------------------

fn memory_map_sorted_disjoint(s: &System) -> TestResult {
    let map = &s.boot.memory_map;
    check!(!map.is_empty());
    for w in map.windows(2) {
        check!(w[0].end <= w[1].start, "regions {:?} and {:?} overlap or are unsorted", w[0], w[1]);
        check!(!(w[0].end == w[1].start && w[0].kind == w[1].kind), "touching regions of one kind not merged");
    }
    check!(s.boot.total_ram() >= 64 << 20, "less than 64 MiB of RAM: {}", s.boot.total_ram());
    Ok(())
}

fn frames_alloc_aligned_zeroed(_s: &System) -> TestResult {
    let before = frame::free_frames();
    let p = attempt!(frame::alloc(8));
    check!(p % (8 * 4096) == 0, "8-frame block at {p:#x} is not 32 KiB aligned");
    frame::free(p, 8);
    let z = attempt!(FrameRange::alloc_zeroed(4));
    check!(z.is_zero(), "alloc_zeroed returned dirty memory");
    drop(z);
    check!(frame::free_frames() == before, "free count {} != {before} after freeing", frame::free_frames());
    Ok(())
}

fn frames_exhaustion_and_reuse(_s: &System) -> TestResult {
    let before = frame::free_frames();
    // Reserve the bookkeeping first: no heap growth may happen while frames are exhausted.
    let mut taken: Vec<(u64, usize)> = Vec::with_capacity(before / 512 + 64);
    let err = loop {
        match frame::alloc(512) {
            Ok(p) => taken.push((p, 512)),
            Err(e) => break e,
        }
        check!(taken.len() < taken.capacity(), "allocator handed out more 2 MiB blocks than it had frames");
    };
    check!(err.requested == 512);
    // Drain the remaining fragments in single frames.
    while taken.len() + 1 < taken.capacity() {
        match frame::alloc(1) {
            Ok(p) => taken.push((p, 1)),
            Err(_) => break,
        }
    }
    let exhausted_free = frame::free_frames();
    let single = frame::alloc(1);
    if let Ok(p) = single {
        taken.push((p, 1));
    }
    check!(
        single.is_err() || taken.len() >= taken.capacity(),
        "alloc succeeded with {exhausted_free} frames free after exhaustion"
    );
    let first = taken[0].0;
    for &(p, n) in &taken {
        frame::free(p, n);
    }
    check!(frame::free_frames() == before, "after freeing all: {} free, {before} before", frame::free_frames());
    // Freed blocks are reused: a fresh 2 MiB allocation succeeds, and the same block can come back.
    let again = attempt!(frame::alloc(512));
    frame::free(again, 512);
    let _ = first;
    Ok(())
}

fn heap_grows_on_demand(_s: &System) -> TestResult {
    let (total_before, _) = mm::heap::stats();
    let big: Vec<u8> = alloc::vec![0xa5; 24 << 20];
    check!(big.iter().step_by(4096).all(|&b| b == 0xa5));
    let (total_after, _) = mm::heap::stats();
    check!(total_after > total_before, "heap did not grow: {total_before} -> {total_after}");
    drop(big);
    Ok(())
}

fn paging_map_read_unmap_4k(_s: &System) -> TestResult {
    let mut frame = attempt!(FrameRange::alloc_zeroed(1));
    attempt!(frame.write_u64(0, 0x1122_3344_5566_7788));
    let f = frame.phys().as_u64();
    attempt!(
        mm::with_kernel_pt(|pt| pt.map(SCRATCH, f, PageSize::Size4K, Flags::WRITABLE | mm::nx()))
            .ok_or("no kernel page table")?
    )
    .flush();
    check!(trap::probe_read_u64(SCRATCH) == Ok(0x1122_3344_5566_7788), "read through the new mapping");
    let t = mm::with_kernel_pt(|pt| pt.translate(SCRATCH + 8)).flatten();
    check!(t.map(|t| (t.paddr, t.size)) == Some((f + 8, PageSize::Size4K)), "translate gave {t:?}");
    // Write-protect it: a write now faults as a protection violation.
    attempt!(mm::with_kernel_pt(|pt| pt.protect(SCRATCH, mm::nx())).ok_or("no kernel page table")?).flush();
    let w = trap::probe_write_must_fault(SCRATCH, 1);
    check!(
        matches!(w, Err(ProbeError::Fault(f)) if f.error.protection() && f.error.write()),
        "write to a protected page: {w:?}"
    );
    check!(trap::probe_read_u64(SCRATCH) == Ok(0x1122_3344_5566_7788), "read after protect");
    let (pa, size, flush) = attempt!(mm::with_kernel_pt(|pt| pt.unmap(SCRATCH)).ok_or("no kernel page table")?);
    let before = paging::INVLPG_COUNT.load(core::sync::atomic::Ordering::Relaxed);
    flush.flush();
    check!(paging::INVLPG_COUNT.load(core::sync::atomic::Ordering::Relaxed) == before + 1, "flush did not invalidate");
    check!(pa == f && size == PageSize::Size4K);
    let fault = trap::probe_read_u64(SCRATCH);
    check!(matches!(fault, Err(trap::Fault { address: SCRATCH, .. })), "read after unmap+flush: {fault:?}");
    drop(frame);
    Ok(())
}

fn paging_remap_needs_flush(_s: &System) -> TestResult {
    let (mut fa, mut fb) = (attempt!(FrameRange::alloc(1)), attempt!(FrameRange::alloc(1)));
    attempt!(fa.write_u64(0, 0xaaaa));
    attempt!(fb.write_u64(0, 0xbbbb));
    let (a, b) = (fa.phys().as_u64(), fb.phys().as_u64());
    let flags = Flags::WRITABLE | mm::nx();
    mm::with_kernel_pt(|pt| -> Result<(), MapError> {
        pt.map(SCRATCH, a, PageSize::Size4K, flags)?.flush();
        Ok(())
    })
    .ok_or("no kernel page table")?
    .map_err(|e| format!("{e}"))?;
    check!(trap::probe_read_u64(SCRATCH) == Ok(0xaaaa));
    // Remap to b; the token is dropped rather than consumed, which must still flush.
    let dropped_before = paging::DROPPED_FLUSH_TOKENS.load(core::sync::atomic::Ordering::Relaxed);
    mm::with_kernel_pt(|pt| -> Result<(), MapError> {
        pt.unmap(SCRATCH)?.2.flush();
        let token = pt.map(SCRATCH, b, PageSize::Size4K, flags)?;
        drop(token);
        Ok(())
    })
    .ok_or("no kernel page table")?
    .map_err(|e| format!("{e}"))?;
    check!(paging::DROPPED_FLUSH_TOKENS.load(core::sync::atomic::Ordering::Relaxed) == dropped_before + 1);
    check!(trap::probe_read_u64(SCRATCH) == Ok(0xbbbb), "stale translation after a dropped flush token");
    // Batched: remap 8 pages, one batch.
    mm::with_kernel_pt(|pt| -> Result<(), MapError> {
        let mut batch = paging::FlushBatch::new();
        pt.unmap(SCRATCH)?.2.defer(&mut batch);
        for i in 0..8 {
            pt.map(SCRATCH + i * 4096, if i % 2 == 0 { a } else { b }, PageSize::Size4K, flags)?.defer(&mut batch);
        }
        batch.finish();
        Ok(())
    })
    .ok_or("no kernel page table")?
    .map_err(|e| format!("{e}"))?;
    for i in 0..8u64 {
        let want = if i % 2 == 0 { 0xaaaa } else { 0xbbbb };
        check!(trap::probe_read_u64(SCRATCH + i * 4096) == Ok(want), "page {i} after batched remap");
    }
    mm::with_kernel_pt(|pt| -> Result<(), MapError> {
        for i in 0..8 {
            pt.unmap(SCRATCH + i * 4096)?.2.flush();
        }
        Ok(())
    })
    .ok_or("no kernel page table")?
    .map_err(|e| format!("{e}"))?;
    drop((fa, fb));
    Ok(())
}

fn paging_huge_2m_pages(_s: &System) -> TestResult {
    let mut huge = attempt!(FrameRange::alloc(512));
    let f = huge.phys().as_u64();
    check!(f % (2 << 20) == 0, "512-frame block {f:#x} not 2 MiB aligned");
    let off = 1536 * 1024u64;
    attempt!(huge.write_u64(off, 0x2222));
    attempt!(
        mm::with_kernel_pt(|pt| pt.map(SCRATCH, f, PageSize::Size2M, Flags::WRITABLE | mm::nx()))
            .ok_or("no kernel page table")?
    )
    .flush();
    check!(trap::probe_read_u64(SCRATCH + off) == Ok(0x2222));
    let t = mm::with_kernel_pt(|pt| pt.translate(SCRATCH + off)).flatten();
    check!(t.map(|t| (t.paddr, t.size)) == Some((f + off, PageSize::Size2M)), "translate gave {t:?}");
    // A 4 KiB mapping inside it is refused, not silently split.
    let inner =
        mm::with_kernel_pt(|pt| pt.map(SCRATCH + 4096, f, PageSize::Size4K, Flags::WRITABLE).map(|fl| fl.flush()))
            .ok_or("no pt")?;
    check!(inner == Err(MapError::HugePageInTheWay(SCRATCH + 4096)), "got {inner:?}");
    let (pa, size, flush) = attempt!(mm::with_kernel_pt(|pt| pt.unmap(SCRATCH + off)).ok_or("no kernel page table")?);
    flush.flush();
    check!(pa == f && size == PageSize::Size2M);
    check!(trap::probe_read_u64(SCRATCH + off).is_err());
    drop(huge);
    Ok(())
}

fn paging_errors_are_values(_s: &System) -> TestResult {
    let f = attempt!(frame::alloc(1));
    let r = mm::with_kernel_pt(|pt| -> [Result<(), MapError>; 5] {
        let w = Flags::WRITABLE;
        let first = pt.map(SCRATCH, f, PageSize::Size4K, w).map(|fl| fl.flush());
        let twice = pt.map(SCRATCH, f, PageSize::Size4K, w).map(|fl| fl.flush());
        let unmapped = pt.unmap(SCRATCH + 4096).map(|(_, _, fl)| fl.flush());
        let misaligned = pt.map(SCRATCH + 4096, f + 1, PageSize::Size4K, w).map(|fl| fl.flush());
        let noncanonical = pt.map(0x0000_8000_0000_0000, f, PageSize::Size4K, w).map(|fl| fl.flush());
        if let Ok((_, _, fl)) = pt.unmap(SCRATCH) {
            fl.flush();
        }
        [first, twice, unmapped, misaligned, noncanonical]
    })
    .ok_or("no kernel page table")?;
    check!(r[0].is_ok());
    check!(r[1] == Err(MapError::AlreadyMapped(SCRATCH)), "{:?}", r[1]);
    check!(r[2] == Err(MapError::NotMapped(SCRATCH + 4096)), "{:?}", r[2]);
    check!(matches!(r[3], Err(MapError::Misaligned { .. })), "{:?}", r[3]);
    check!(r[4] == Err(MapError::NonCanonical(0x0000_8000_0000_0000)), "{:?}", r[4]);
    frame::free(f, 1);
    Ok(())
}

fn paging_kernel_image_permissions(_s: &System) -> TestResult {
    let img = mm::image();
    let tr = |v: u64| mm::with_kernel_pt(|pt| pt.translate(v)).flatten();
    let text = tr(img.text.0).ok_or("text unmapped")?;
    check!(
        !text.flags.contains(Flags::WRITABLE) && !text.flags.contains(Flags::NO_EXECUTE),
        "text flags {:?}",
        text.flags
    );
    let ro = tr(img.rodata.0).ok_or("rodata unmapped")?;
    check!(!ro.flags.contains(Flags::WRITABLE), "rodata writable: {:?}", ro.flags);
    let data = tr(img.data.0).ok_or("data unmapped")?;
    check!(data.flags.contains(Flags::WRITABLE), "data not writable: {:?}", data.flags);
    if !mm::nx().is_empty() {
        check!(ro.flags.contains(Flags::NO_EXECUTE) && data.flags.contains(Flags::NO_EXECUTE), "NX missing on data");
    }
    // Writing rodata faults with a protection-violation write (CR0.WP is on).
    let w = trap::probe_write_must_fault(img.rodata.0, 0);
    let Err(ProbeError::Fault(fault)) = w else { return Err(format!("write to rodata did not fault: {w:?}")) };
    check!(fault.error.protection() && fault.error.write(), "fault was {}", fault.error);
    // The lower half is empty.
    check!(tr(0x1000).is_none() && tr(0x10_0000).is_none(), "lower half still mapped");
    Ok(())
}

fn paging_direct_map_covers_ram(s: &System) -> TestResult {
    for r in s.boot.usable_ram(4096) {
        for p in [r.start, r.end - 4096, (r.start + (r.end - r.start) / 2) & !4095] {
            let v = mm::phys_to_virt(p);
            let t = mm::with_kernel_pt(|pt| pt.translate(v)).flatten();
            check!(t.map(|t| t.paddr) == Some(p), "direct map of {p:#x} gave {t:?}");
        }
    }
    Ok(())
}

/// The kernel's `hmm::mm::Platform` checks the frames hmm hands it: memory outside the RAM the
/// frame allocator manages (the first MiB, the kernel image, beyond RAM, a range running off
/// its end) is refused by the check every accessor makes, and frames the allocator handed
/// out pass it and work.
fn hmm_platform_frames_outside_ram_are_refused(s: &System) -> TestResult {
    use hmm::addr::Pfn;
    let ram = mm::ram::check;
    check!(ram(0, 4096).is_err(), "frame 0 accepted");
    check!(ram(0x9_f000, 4096).is_err(), "the first MiB accepted");
    let img = mm::image();
    let text = mm::virt_to_phys(img.text.0).ok_or("kernel text has no physical address")?;
    check!(ram(text, 4096).is_err(), "the kernel image at {text:#x} accepted");
    let top = s.boot.usable_ram(4096).map(|r| r.end).max().unwrap_or(0);
    check!(ram(top, 4096).is_err(), "the frame past the end of RAM ({top:#x}) accepted");
    check!(ram(u64::MAX - 100, 4096).is_err(), "an overflowing range accepted");
    let mut f = attempt!(FrameRange::alloc(2));
    let pa = f.phys().as_u64();
    check!(ram(pa, 8192).is_ok(), "an allocated frame {pa:#x} refused");
    // Through the Platform itself: zero and write/read back a frame it may use.
    attempt!(f.write_u64(8, 0x77));
    let platform = mm::uspace::mm().platform();
    platform.zero(Pfn::containing(pa), 1);
    check!(f.read_u64(8) == Ok(0), "Platform::zero did not zero the frame");
    platform.write(pa + 4096, &[5, 6, 7]);
    let mut back = [0u8; 3];
    platform.read(pa + 4096, &mut back);
    check!(back == [5, 6, 7], "Platform read back {back:?}");
    // The message a refused frame panics with names the frame.
    let msg = format!("{}", ram(text, 4096).err().ok_or("accepted")?);
    check!(msg.contains(&format!("frame {:#x}", text / 4096)), "message '{msg}'");
    Ok(())
}

/// The page-table entry accessors of the kernel's `hmm::mm::Platform` check a table frame
/// once, not on every entry (issue 21: one range-table search per entry access made
/// `invalidate_mprotect` 1.5x slower), and still refuse a frame outside RAM after a good one
/// was let through.
fn hmm_platform_table_checked_once_not_per_entry(_: &System) -> TestResult {
    use hmm::addr::Pfn;
    let f = attempt!(FrameRange::alloc(1));
    let table = Pfn::containing(f.phys().as_u64());
    let platform = mm::uspace::mm().platform();
    let before = mm::ram::table_searches();
    for i in 0..512 {
        let v = platform.load(table, i);
        platform.store(table, i, v);
        platform.swap(table, i, v);
    }
    let searched = mm::ram::table_searches() - before;
    // One search for the frame, a few for whatever else ran meanwhile (the other CPU, a timer
    // tick); per entry it would be 3 x 512.
    check!(searched <= 8, "1536 entry accesses of one table searched the range table {searched} times");
    let text = mm::virt_to_phys(mm::image().text.0).ok_or("kernel text has no physical address")?;
    let outside = Pfn::containing(text);
    check!(mm::ram::try_table(outside).is_err(), "the kernel image's frame {:#x} accepted as a table", outside.0);
    check!(mm::ram::try_table(table).is_ok(), "the table frame {:#x} refused", table.0);
    check!(mm::ram::try_table(outside).is_err(), "the kernel image's frame accepted right after a good table");
    check!(mm::ram::try_table(Pfn(u64::MAX >> 12)).is_err(), "the last frame number accepted");
    drop(f);
    Ok(())
}

/// Frame and BAR handles: reads and writes inside the handle work, anything reaching past it
/// is a [`mm::HandleError`] value, and frames go back to the allocator when the handle drops.
fn handles_accesses_are_bounds_checked(s: &System) -> TestResult {
    let before = frame::free_frames();
    let mut f = attempt!(FrameRange::alloc(2));
    check!(f.count() == 2 && f.size() == 8192);
    attempt!(f.write(8190, &[1, 2]));
    let mut two = [0u8; 2];
    attempt!(f.read(8190, &mut two));
    check!(two == [1, 2]);
    let past = f.write(8191, &[1, 2]);
    check!(matches!(past, Err(mm::HandleError::OutOfBounds { offset: 8191, len: 2, size: 8192 })), "{past:?}");
    check!(f.read_u64(8192).is_err() && f.read_u64(4) == Err(mm::HandleError::Misaligned(4)));
    check!(f.read(u64::MAX, &mut two).is_err(), "an overflowing offset was accepted");
    let small = attempt!(FrameRange::alloc(1));
    check!(f.copy_from(&small) == Err(mm::HandleError::SizeMismatch(4096, 8192)));
    drop((f, small));
    check!(
        frame::free_frames() == before,
        "dropping the handles freed {} of 3 frames",
        frame::free_frames() + 3 - before
    );
    // A window onto a plain-memory BAR (ivshmem's BAR 2), where the machine has one.
    let ivshmem = s.pci.functions.iter().position(|f| f.name() == "ivshmem");
    if let Some(n) = ivshmem {
        let w = attempt!(crate::platform::pci::bar_window(&s.pci, n, 2));
        let last = w.size() - 8;
        let old = attempt!(w.read_u64(last));
        attempt!(w.write_u64(last, 0x5a5a_0000_1234));
        check!(w.read_u64(last) == Ok(0x5a5a_0000_1234), "BAR word did not read back");
        attempt!(w.write_u64(last, old));
        let mut b = [0u8; 8];
        check!(w.read(w.size() - 4, &mut b).is_err(), "a read past the BAR was accepted");
        attempt!(w.write(0, &[]));
        check!(w.phys().as_u64() != 0);
    }
    check!(
        crate::platform::pci::bar_window(&s.pci, usize::MAX, 0).is_err(),
        "a window onto a function that does not exist"
    );
    Ok(())
}

fn trap_page_fault_caught_and_decoded(_s: &System) -> TestResult {
    let before = trap::FIXED_UP_FAULTS.load(Ordering::Relaxed);
    let addr = SCRATCH + 0x1234_5000;
    let f = trap::probe_read_u64(addr).err().ok_or("read of an unmapped address did not fault")?;
    check!(f.vector == 14 && f.address == addr, "fault {f:?}");
    check!(!f.error.protection() && !f.error.write() && !f.error.user(), "error bits {:#x}", f.error.0);
    let text = format!("{}", f.error);
    check!(text == "not-present page read in kernel mode", "decoded as '{text}'");
    let w = trap::probe_write_must_fault(addr, 1);
    let Err(ProbeError::Fault(w)) = w else { return Err(format!("write did not fault: {w:?}")) };
    check!(w.error.write() && format!("{}", w.error).contains("write"));
    check!(trap::FIXED_UP_FAULTS.load(Ordering::Relaxed) == before + 2);
    // The lower half (where address spaces will live) faults too.
    check!(trap::probe_read_u64(0x40_0000).is_err());
    Ok(())
}

fn time_tsc_and_apic_timer_tick(s: &System) -> TestResult {
    check!(s.tsc_hz > 10_000_000, "TSC calibrated to {} Hz", s.tsc_hz);
    let t0 = time::now_ns().ok_or("clock not calibrated")?;
    let ticks0 = apic::ticks();
    // Wait for at least 3 ticks, bounded by 2 s of TSC time.
    while apic::ticks() < ticks0 + 3 {
        check!(
            time::now_ns().unwrap_or(0) - t0 < 2_000_000_000,
            "APIC timer ticked {} times in 2 s",
            apic::ticks() - ticks0
        );
        core::hint::spin_loop();
    }
    let elapsed = time::now_ns().unwrap_or(0) - t0;
    // 3 ticks at 100 Hz is >= 20 ms (the first tick may come at once).
    check!(elapsed >= 15_000_000, "3 ticks took only {elapsed} ns: timer too fast or clock wrong");
    check!(apic::id() == s.platform.cpus.first().map_or(0, |c| c.apic_id), "APIC id mismatch");
    Ok(())
}

fn acpi_tables_and_cpus(s: &System) -> TestResult {
    let has = |sig: &str| s.platform.tables.iter().any(|t| t.name() == sig);
    for sig in ["FACP", "APIC", "MCFG"] {
        check!(has(sig), "ACPI table {sig} missing");
    }
    check!(!s.platform.cpus.is_empty(), "MADT lists no CPU");
    check!(s.platform.pm_timer.is_some());
    check!(!s.platform.ecam.is_empty());
    check!(s.platform.viot.is_some() == has("VIOT"));
    if let Some(srat) = &s.platform.srat {
        check!(srat.cpus.len() == s.platform.cpus.len(), "SRAT and MADT disagree on CPUs");
    }
    Ok(())
}

fn pci_bars_assigned_and_enabled(s: &System) -> TestResult {
    let funcs = &s.pci.functions;
    check!(funcs.iter().any(|f| f.info.vendor_id == 0x8086 && f.info.device_id == 0x29c0), "no q35 host bridge");
    let mut bars: Vec<(u64, u64, bool)> = Vec::new();
    for f in funcs {
        for b in &f.bars {
            check!(
                b.address != 0 && b.address % b.size == 0,
                "{} BAR{} at {:#x} size {:#x}",
                f.df,
                b.index,
                b.address,
                b.size
            );
            bars.push((b.address, b.size, b.kind == drivers::pci::BarKind::Io));
        }
    }
    bars.sort_unstable();
    for w in bars.windows(2) {
        check!(w[0].2 != w[1].2 || w[0].0 + w[0].1 <= w[1].0, "BARs overlap: {w:?}");
    }
    Ok(())
}

fn pci_virtio_devices_bind(s: &System) -> TestResult {
    for v in &s.pci.virtio {
        let f = &s.pci.functions[v.function];
        check!(v.bound.is_ok(), "{} {} did not bind: {:?}", f.df, f.name(), v.bound);
        check!(v.features & (1 << 32) != 0, "{} {} does not offer VIRTIO_F_VERSION_1", f.df, f.name());
    }
    // Devices the test machine (qemu/default.toml) has.
    let count = |name: &str| s.pci.virtio.iter().filter(|v| s.pci.functions[v.function].name() == name).count();
    let ivshmem = s.pci.functions.iter().filter(|f| f.name() == "ivshmem").count();
    check!(
        count("virtio-blk") >= 1 && ivshmem >= 1,
        "expected the default machine's devices, found {} virtio-blk, {ivshmem} ivshmem",
        count("virtio-blk")
    );
    if count("virtio-iommu") > 0 {
        // Every virtio-blk is behind the IOMMU and has an endpoint id.
        let viot = s.platform.viot.as_ref().ok_or("virtio-iommu without VIOT")?;
        for v in &s.pci.virtio {
            let f = &s.pci.functions[v.function];
            check!(viot.endpoint_for(0, f.bdf()).is_some(), "{} has no VIOT endpoint", f.df);
        }
    }
    Ok(())
}
