//! TSC frequency arithmetic for the kernel's calibration (`kernel/src/platform/arch/time.rs`
//! does the CPUID reads and the port I/O): CPUID leaf 0x15 (TSC/crystal ratio and crystal
//! frequency), leaf 0x16 (base MHz, the fallback when 0x15 names no crystal frequency), and
//! counting TSC cycles against the 8254 PIT (1.193182 MHz) or the ACPI PM timer
//! (3.579545 MHz).
//!
//! Owns: [`TscSource`] (the names the boot report uses) and pure functions; nothing here
//! touches hardware. Every function returns `None` rather than a frequency it cannot justify
//! (a zero ratio, a zero window).

/// The 8254 PIT's input clock.
pub const PIT_HZ: u64 = 1_193_182;

/// The ACPI PM timer's frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// Where the TSC frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscSource {
    /// Counted against the FADT's ACPI PM timer.
    PmTimer,
    /// CPUID leaf 0x15: crystal frequency times the TSC/crystal ratio.
    Cpuid15h,
    /// CPUID leaf 0x15's ratio with leaf 0x16's base frequency (0x15 names no crystal).
    Cpuid16h,
    /// Counted against PIT channel 0, polled.
    Pit,
}

impl TscSource {
    /// The name in the boot report (`tsc_source`) and the log.
    pub fn name(self) -> &'static str {
        match self {
            Self::PmTimer => "pm-timer",
            Self::Cpuid15h => "cpuid-15h",
            Self::Cpuid16h => "cpuid-16h",
            Self::Pit => "pit",
        }
    }
}

/// The TSC frequency from CPUID leaf 0x15 (`eax` = ratio denominator, `ebx` = ratio
/// numerator, `ecx` = crystal Hz) and, when `ecx` is 0, leaf 0x16's `eax` (base MHz; pass 0
/// when the CPU has no leaf 0x16). `None` when the CPU does not enumerate the ratio.
///
/// With a crystal: `ecx * ebx / eax`. Without: leaf 0x16's base frequency (which is the TSC
/// frequency on the CPUs that enumerate 0x15 but not the crystal, as Linux's
/// `native_calibrate_tsc` assumes).
pub fn from_cpuid(leaf15: (u32, u32, u32), leaf16_eax: u32) -> Option<(u64, TscSource)> {
    let (denominator, numerator, crystal_hz) = leaf15;
    if denominator == 0 || numerator == 0 {
        return None;
    }
    if crystal_hz != 0 {
        let hz = u64::from(crystal_hz) * u64::from(numerator) / u64::from(denominator);
        return (hz > 0).then_some((hz, TscSource::Cpuid15h));
    }
    let base_mhz = u64::from(leaf16_eax & 0xffff);
    (base_mhz != 0).then(|| (base_mhz * 1_000_000, TscSource::Cpuid16h))
}

/// TSC Hz from `cycles` TSC cycles counted over `ticks` ticks of a timer of `timer_hz`.
pub fn hz_from_ticks(cycles: u64, ticks: u64, timer_hz: u64) -> Option<u64> {
    if ticks == 0 || cycles == 0 {
        return None;
    }
    let hz = u128::from(cycles) * u128::from(timer_hz) / u128::from(ticks);
    u64::try_from(hz).ok().filter(|&hz| hz > 0)
}

/// PIT ticks between two latched reads of a down-counter that reloads with `reload` (1 to
/// 65536; a programmed count of 0 means 65536): how far it counted down from `prev` to `now`,
/// across one reload if `now` is above `prev`. The caller must read again within one period.
pub fn pit_elapsed(prev: u16, now: u16, reload: u32) -> u32 {
    let (prev, now) = (u32::from(prev), u32::from(now));
    if now <= prev { prev - now } else { prev + reload - now }
}

/// Accumulates PIT ticks over successive latched reads of a counter reloading with
/// `reload`.
#[derive(Debug, Clone, Copy)]
pub struct PitWindow {
    reload: u32,
    last: u16,
    ticks: u64,
}

impl PitWindow {
    /// Starts at the read `first`.
    pub fn new(first: u16, reload: u32) -> Self {
        PitWindow { reload, last: first, ticks: 0 }
    }

    /// Adds the read `now`; returns the ticks since the first read.
    pub fn advance(&mut self, now: u16) -> u64 {
        self.ticks += u64::from(pit_elapsed(self.last, now, self.reload));
        self.last = now;
        self.ticks
    }

    /// Ticks since the first read.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

/// PIT ticks in `us` microseconds.
pub fn pit_ticks_for_us(us: u64) -> u64 {
    PIT_HZ * us / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuid_15h_with_a_crystal() {
        // A 24 MHz crystal, ratio 176/2: 2.112 GHz.
        assert_eq!(from_cpuid((2, 176, 24_000_000), 0), Some((2_112_000_000, TscSource::Cpuid15h)));
        // The crystal wins over leaf 0x16.
        assert_eq!(from_cpuid((2, 176, 24_000_000), 3000), Some((2_112_000_000, TscSource::Cpuid15h)));
    }

    #[test]
    fn cpuid_15h_without_a_crystal_falls_back_to_16h() {
        assert_eq!(from_cpuid((2, 176, 0), 2100), Some((2_100_000_000, TscSource::Cpuid16h)));
        // Only the low 16 bits of leaf 0x16's eax are the frequency.
        assert_eq!(from_cpuid((2, 176, 0), 0xabcd_0834), Some((2_100_000_000, TscSource::Cpuid16h)));
        assert_eq!(from_cpuid((2, 176, 0), 0), None);
    }

    #[test]
    fn cpuid_without_a_ratio_gives_nothing() {
        // What QEMU's TCG `-cpu max` reports: leaf 0x15 all zero.
        assert_eq!(from_cpuid((0, 0, 0), 0), None);
        assert_eq!(from_cpuid((0, 176, 24_000_000), 2100), None);
        assert_eq!(from_cpuid((2, 0, 24_000_000), 2100), None);
    }

    #[test]
    fn hz_from_timer_ticks() {
        // 20 ms of the PIT at 2 GHz.
        let ticks = pit_ticks_for_us(20_000);
        assert_eq!(ticks, 23_863);
        let hz = hz_from_ticks(40_000_000, ticks, PIT_HZ).unwrap();
        assert!(hz.abs_diff(2_000_000_000) < 100_000, "{hz}");
        assert_eq!(hz_from_ticks(3_579_545, PM_TIMER_HZ, PM_TIMER_HZ), Some(3_579_545));
        assert_eq!(hz_from_ticks(1000, 0, PIT_HZ), None);
        assert_eq!(hz_from_ticks(0, 10, PIT_HZ), None);
    }

    #[test]
    fn pit_counts_down_across_reloads() {
        assert_eq!(pit_elapsed(1000, 400, 65536), 600);
        assert_eq!(pit_elapsed(1000, 1000, 65536), 0);
        // Reloaded in between: 100 down to 0, then 65536 down to 65000.
        assert_eq!(pit_elapsed(100, 65000, 65536), 100 + 536);
        assert_eq!(pit_elapsed(5, 1190, 1193), 5 + 3);
        let mut w = PitWindow::new(30_000, 65536);
        assert_eq!(w.advance(10_000), 20_000);
        assert_eq!(w.advance(60_000), 20_000 + 10_000 + 5_536);
        assert_eq!(w.advance(60_000), 35_536);
        assert_eq!(w.ticks(), 35_536);
    }
}
