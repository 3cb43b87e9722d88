//! In-kernel tests of the TSC calibration sources (`platform::arch::time`): the PIT count
//! must agree with the frequency the kernel calibrated at boot (from the PM timer on q35, from
//! the PIT itself on microvm, from CPUID where the CPU names it).
//!
//! Owns: [`TESTS`], listed in `main`'s registry. Nothing else.

use crate::{
    ktest::{Test, TestResult},
    platform::arch::time,
    system::System,
};

/// The tests, in run order.
pub const TESTS: &[Test] = &[Test { name: "time::pit_agrees_with_the_calibrated_tsc", run: pit_agrees }];

/// PIT channel 0 over 20 ms gives the boot's TSC frequency within 10 % in one of three tries
/// (a try can lose the CPU at a window's edge on a loaded host; a wrong PIT constant or a lost
/// counter reload is off by far more, every time).
fn pit_agrees(s: &System) -> TestResult {
    let mut seen = [0u64; 3];
    for slot in &mut seen {
        let hz = time::measure_pit(20_000).map_err(|e| alloc::format!("{e}"))?;
        if hz.abs_diff(s.tsc_hz) <= s.tsc_hz / 10 {
            return Ok(());
        }
        *slot = hz;
    }
    Err(alloc::format!("the PIT gives {seen:?} Hz, the boot calibrated {} Hz from {}", s.tsc_hz, s.tsc_source.name()))
}
