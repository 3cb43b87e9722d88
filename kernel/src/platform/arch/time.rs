//! Time since boot, from the TSC, its frequency taken from the best source the machine has.
//!
//! The TSC is read at kernel entry; [`now_ns`] is nanoseconds since then. Until a calibration
//! has run, [`now_ns`] returns `None` (the log prints the raw cycle count). [`calibrate_best`]
//! tries, in order: CPUID leaf 0x15 (with 0x16's base MHz when 0x15 names no crystal), the
//! ACPI PM timer the FADT names ([`calibrate`]: TSC cycles over a fixed number of 3.579545 MHz
//! ticks), then PIT channel 0 polled ([`calibrate_pit`]: QEMU's microvm has no PM timer but a
//! PIT). HPET and kvmclock are not used. The arithmetic is `drivers::tsc`'s (host-tested);
//! this file does the CPUID reads and port I/O. Every wait is bounded, so a missing or stuck
//! timer is an error, not a hang.

use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// The PM timer's frequency.
pub const PM_TIMER_HZ: u64 = drivers::tsc::PM_TIMER_HZ;

pub use drivers::tsc::TscSource;

/// Bound on every calibration loop, in TSC cycles: 4e9 cycles is seconds on any CPU we run on.
const SPIN_LIMIT: u64 = 4_000_000_000;

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
    /// PIT channel 0 did not count down (no PIT, e.g. microvm with `pit=off`).
    PitStuck,
    /// No source at all: CPUID names no frequency, no PM timer works, and the PIT does not
    /// count.
    NoSource,
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PmTimerStuck { port } => write!(f, "ACPI PM timer at port {port:#x} does not advance"),
            Self::PitStuck => write!(f, "PIT channel 0 does not count down (no 8254 PIT)"),
            Self::NoSource => write!(
                f,
                "no TSC frequency source: CPUID leaves 0x15/0x16 name none, no working ACPI PM timer, \
                 and PIT channel 0 does not count down"
            ),
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
            let hz = drivers::tsc::hz_from_ticks(tsc1 - tsc0, u64::from(elapsed), PM_TIMER_HZ)
                .ok_or(CalibrationError::PmTimerStuck { port })?;
            TSC_HZ.store(hz, Ordering::Relaxed);
            return Ok(hz);
        }
        if rdtsc().wrapping_sub(tsc0) > SPIN_LIMIT {
            return Err(CalibrationError::PmTimerStuck { port });
        }
    }
}

/// The TSC frequency CPUID enumerates (leaf 0x15, else 0x15's ratio with 0x16), if any. Under
/// QEMU's TCG leaf 0x15 is all zero, so this is `None` there.
pub fn cpuid_tsc_hz() -> Option<(u64, TscSource)> {
    use core::arch::x86_64::__cpuid;
    let max = __cpuid(0).eax;
    if max < 0x15 {
        return None;
    }
    let l15 = __cpuid(0x15);
    let l16 = if max >= 0x16 { __cpuid(0x16).eax } else { 0 };
    drivers::tsc::from_cpuid((l15.eax, l15.ebx, l15.ecx), l16)
}

/// PIT I/O ports: channel 0 data, mode/command.
const PIT_CH0: u16 = 0x40;
const PIT_CMD: u16 = 0x43;

/// Calibrates the TSC over `window_us` microseconds of PIT channel 0, polled: the channel is
/// programmed as a rate generator (mode 2) over the full 65536 count and latched and read
/// until the window's ticks have passed. The legacy PICs are masked first, so the channel's
/// IRQ 0 is never delivered (interrupts are off here anyway).
pub fn calibrate_pit(window_us: u64) -> Result<u64, CalibrationError> {
    let hz = measure_pit(window_us)?;
    TSC_HZ.store(hz, Ordering::Relaxed);
    Ok(hz)
}

/// The TSC frequency counted over `window_us` microseconds of PIT channel 0 (what
/// [`calibrate_pit`] makes the kernel's).
pub fn measure_pit(window_us: u64) -> Result<u64, CalibrationError> {
    let mut cmd = Port::<u8>::new(PIT_CMD);
    let mut ch0 = Port::<u8>::new(PIT_CH0);
    // SAFETY: ports 0x21/0xa1 are the 8259 PICs' mask registers and 0x40/0x43 the 8254 PIT's
    // channel 0 and command registers on every PC-compatible machine (QEMU's microvm included);
    // on a machine without them, writes are ignored and reads return all ones, which the
    // bounded loop below reports as a stuck PIT. Nothing else uses the PIT.
    let mut latch = move || unsafe {
        cmd.write(0x00); // latch channel 0
        let lo = ch0.read();
        let hi = ch0.read();
        u16::from_le_bytes([lo, hi])
    };
    // SAFETY: as above.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
        // Channel 0, lobyte/hibyte access, mode 2 (rate generator), binary; count 0 = 65536.
        Port::<u8>::new(PIT_CMD).write(0b0011_0100);
        Port::<u8>::new(PIT_CH0).write(0);
        Port::<u8>::new(PIT_CH0).write(0);
    }
    let want = drivers::tsc::pit_ticks_for_us(window_us);
    let guard = rdtsc();
    // Wait for the counter to move, so the window starts at a tick edge.
    let first = latch();
    let mut now = first;
    while now == first {
        if rdtsc().wrapping_sub(guard) > SPIN_LIMIT {
            return Err(CalibrationError::PitStuck);
        }
        now = latch();
    }
    let tsc0 = rdtsc();
    let mut window = drivers::tsc::PitWindow::new(now, 65536);
    loop {
        let now = latch();
        if window.advance(now) >= want {
            let tsc1 = rdtsc();
            return drivers::tsc::hz_from_ticks(tsc1 - tsc0, window.ticks(), drivers::tsc::PIT_HZ)
                .ok_or(CalibrationError::PitStuck);
        }
        if rdtsc().wrapping_sub(tsc0) > SPIN_LIMIT {
            return Err(CalibrationError::PitStuck);
        }
    }
}

/// Calibrates the TSC from the best source present: CPUID, then the PM timer (`pm_timer`:
/// the FADT's port and width), then the PIT. Returns the frequency and where it came from.
pub fn calibrate_best(pm_timer: Option<(u16, bool)>) -> Result<(u64, TscSource), CalibrationError> {
    if let Some((hz, source)) = cpuid_tsc_hz() {
        TSC_HZ.store(hz, Ordering::Relaxed);
        return Ok((hz, source));
    }
    if let Some((port, wide)) = pm_timer {
        match calibrate(port, wide, 5_000) {
            Ok(hz) => return Ok((hz, TscSource::PmTimer)),
            Err(e) => log::warn!("time: {e}; trying the PIT"),
        }
    }
    calibrate_pit(20_000).map(|hz| (hz, TscSource::Pit)).map_err(|_| CalibrationError::NoSource)
}
