//! Time since boot, from the TSC calibrated against the ACPI PM timer.
//!
//! The TSC is read at kernel entry; [`now_ns`] is nanoseconds since then. Until
//! [`calibrate`] has run, [`now_ns`] returns `None` (the log prints the raw cycle count).
//! Calibration counts TSC cycles over a fixed number of PM-timer ticks (3.579545 MHz, from the
//! FADT's port); every wait is bounded, so a missing PM timer is an error, not a hang.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is available on every x86_64 CPU.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Records the entry time; called first thing at entry.
pub fn mark_boot() {
    BOOT_TSC.store(rdtsc(), Ordering::Relaxed);
}

/// TSC cycles since entry.
pub fn cycles_since_boot() -> u64 {
    rdtsc().wrapping_sub(BOOT_TSC.load(Ordering::Relaxed))
}

/// The calibrated TSC frequency, if calibrated.
pub fn tsc_hz() -> Option<u64> {
    match TSC_HZ.load(Ordering::Relaxed) {
        0 => None,
        hz => Some(hz),
    }
}

/// Converts TSC cycles to nanoseconds.
pub fn cycles_to_ns(cycles: u64) -> Option<u64> {
    tsc_hz().map(|hz| (u128::from(cycles) * 1_000_000_000 / u128::from(hz)) as u64)
}

/// Nanoseconds since entry, once calibrated.
pub fn now_ns() -> Option<u64> {
    cycles_to_ns(cycles_since_boot())
}

/// A point in time a bounded wait gives up at (TSC-based; before calibration a nanosecond is
/// taken as one cycle, which only makes early waits shorter).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `ns` nanoseconds from now.
    pub fn after_ns(ns: u64) -> Self {
        let hz = tsc_hz().unwrap_or(1_000_000_000);
        let cycles = (u128::from(ns) * u128::from(hz) / 1_000_000_000).min(u128::from(u64::MAX / 2)) as u64;
        Deadline(rdtsc().saturating_add(cycles))
    }
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Self::after_ns(ms.saturating_mul(1_000_000))
    }
    /// Whether it has passed.
    pub fn passed(self) -> bool {
        rdtsc() > self.0
    }
}

/// Busy-waits `ns` nanoseconds (requires calibration; returns at once otherwise).
pub fn delay_ns(ns: u64) {
    let Some(hz) = tsc_hz() else { return };
    let cycles = (u128::from(ns) * u128::from(hz) / 1_000_000_000) as u64;
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// Why calibration failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationError {
    /// The PM timer did not advance: wrong port or no timer.
    PmTimerStuck {
        /// The I/O port read.
        port: u16,
    },
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PmTimerStuck { port } => write!(f, "ACPI PM timer at port {port:#x} does not advance"),
        }
    }
}

/// Calibrates the TSC over `window_us` microseconds of the PM timer at `port`
/// (`wide`: 32-bit counter, else 24-bit).
pub fn calibrate(port: u16, wide: bool, window_us: u64) -> Result<u64, CalibrationError> {
    let mask: u32 = if wide { u32::MAX } else { 0x00ff_ffff };
    let mut pm = Port::<u32>::new(port);
    // SAFETY: the FADT names this port as the PM timer; reading it has no side effects.
    let mut read = move || unsafe { pm.read() } & mask;
    let ticks = (PM_TIMER_HZ * window_us / 1_000_000) as u32;
    // Bound every loop by TSC cycles: 4e9 cycles is seconds on any CPU we run on.
    const SPIN_LIMIT: u64 = 4_000_000_000;
    let guard = rdtsc();
    let start = read();
    let mut now = start;
    while now == start {
        if rdtsc().wrapping_sub(guard) > SPIN_LIMIT {
            return Err(CalibrationError::PmTimerStuck { port });
        }
        now = read();
    }
    let pm0 = now;
    let tsc0 = rdtsc();
    loop {
        let now = read();
        let elapsed = now.wrapping_sub(pm0) & mask;
        if elapsed >= ticks {
            let tsc1 = rdtsc();
            let hz = (u128::from(tsc1 - tsc0) * u128::from(PM_TIMER_HZ) / u128::from(elapsed)) as u64;
            TSC_HZ.store(hz.max(1), Ordering::Relaxed);
            return Ok(hz);
        }
        if rdtsc().wrapping_sub(tsc0) > SPIN_LIMIT {
            return Err(CalibrationError::PmTimerStuck { port });
        }
    }
}
