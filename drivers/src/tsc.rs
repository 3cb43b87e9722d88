//! TSC frequency arithmetic for the kernel's calibration (`kernel/src/platform/arch/time.rs`
//! does the CPUID reads, the MSR, port and MMIO accesses): CPUID leaf 0x15 (TSC/crystal ratio
//! and crystal frequency), leaf 0x16 (base MHz, the fallback when 0x15 names no crystal
//! frequency), KVM's paravirtual clock (the hypervisor's TSC-to-nanoseconds scale, from which
//! the frequency follows exactly), and counting TSC cycles against the 8254 PIT
//! (1.193182 MHz), the ACPI PM timer (3.579545 MHz) or the HPET (the period its capabilities
//! register names).
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
    /// Counted against the HPET's main counter (from the ACPI HPET table).
    Hpet,
    /// KVM's paravirtual clock: the scale the hypervisor converts TSC cycles to nanoseconds
    /// with ([`kvmclock_hz`]).
    Kvmclock,
}

impl TscSource {
    /// The name in the boot report (`tsc_source`) and the log.
    pub fn name(self) -> &'static str {
        match self {
            Self::PmTimer => "pm-timer",
            Self::Cpuid15h => "cpuid-15h",
            Self::Cpuid16h => "cpuid-16h",
            Self::Pit => "pit",
            Self::Hpet => "hpet",
            Self::Kvmclock => "kvmclock",
        }
    }

    /// Every source, in the order `auto` tries them.
    pub const ALL: [TscSource; 6] =
        [Self::Cpuid15h, Self::Cpuid16h, Self::Kvmclock, Self::PmTimer, Self::Hpet, Self::Pit];
}

/// The HPET's counter period in femtoseconds from its General Capabilities and ID register
/// (offset 0: bits 63..32 are `COUNTER_CLK_PERIOD`). The specification bounds it to
/// (0, 100 ns]; anything else is not an HPET (all ones: nothing decodes the address).
pub fn hpet_period_fs(capabilities: u64) -> Option<u64> {
    let period = capabilities >> 32;
    (period != 0 && period <= HPET_MAX_PERIOD_FS).then_some(period)
}

/// The longest counter period the HPET specification allows: 100 ns.
pub const HPET_MAX_PERIOD_FS: u64 = 100_000_000;

/// Whether the HPET's main counter is 64 bits wide (`COUNT_SIZE_CAP`, capabilities bit 13).
pub fn hpet_counter_is_64_bit(capabilities: u64) -> bool {
    capabilities & (1 << 13) != 0
}

/// The HPET's counter frequency for a period of `period_fs` femtoseconds.
pub fn hpet_hz(period_fs: u64) -> u64 {
    1_000_000_000_000_000 / period_fs
}

/// HPET ticks in `us` microseconds.
pub fn hpet_ticks_for_us(us: u64, period_fs: u64) -> u64 {
    (u128::from(us) * 1_000_000_000 / u128::from(period_fs)) as u64
}

/// The TSC frequency KVM's paravirtual clock implies: the hypervisor converts TSC deltas to
/// nanoseconds as `((delta << shift) * mul) >> 32` (a negative `shift` shifts right), so one
/// second is `1e9 * 2^32 / mul` cycles, shifted back. `None` for a zero multiplier (the
/// structure was never written) or a frequency that does not fit.
pub fn kvmclock_hz(tsc_to_system_mul: u32, tsc_shift: i8) -> Option<u64> {
    if tsc_to_system_mul == 0 {
        return None;
    }
    let hz = (1_000_000_000u128 << 32) / u128::from(tsc_to_system_mul);
    let shift = i32::from(tsc_shift);
    let hz = if shift < 0 {
        let left = shift.unsigned_abs();
        if hz.leading_zeros() < left {
            return None;
        }
        hz << left
    } else {
        hz.checked_shr(shift.unsigned_abs()).unwrap_or(0)
    };
    u64::try_from(hz).ok().filter(|&hz| hz > 0)
}

/// KVM's paravirtual time structure (`struct pvclock_vcpu_time_info`), as the hypervisor
/// writes it to the address the guest registers: `version` is odd while an update is under
/// way and changes with each update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PvclockTimeInfo {
    /// Odd while the hypervisor updates the rest.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// The TSC at the last update.
    pub tsc_timestamp: u64,
    /// Guest nanoseconds at the last update.
    pub system_time: u64,
    /// The TSC-to-nanoseconds multiplier (a 32.32 fixed-point fraction).
    pub tsc_to_system_mul: u32,
    /// The shift applied to the TSC delta before the multiplication.
    pub tsc_shift: i8,
    /// `PVCLOCK_TSC_STABLE_BIT` (bit 0) and `PVCLOCK_GUEST_STOPPED` (bit 1).
    pub flags: u8,
    /// Padding.
    pub pad: [u8; 2],
}

/// KVM's paravirtual CPUID signature (leaf 0x4000_0000's ebx, ecx, edx).
pub const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";

/// `KVM_FEATURE_CLOCKSOURCE2` in leaf 0x4000_0001's eax: the clock at MSR 0x4b56_4d01.
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// `KVM_FEATURE_CLOCKSOURCE` in leaf 0x4000_0001's eax: the old clock at MSR 0x12.
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
/// The system-time MSR of `KVM_FEATURE_CLOCKSOURCE2`.
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// The system-time MSR of `KVM_FEATURE_CLOCKSOURCE`.
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;

/// The system-time MSR a KVM guest registers its clock with, from the hypervisor leaves
/// (`signature`: leaf 0x4000_0000's ebx, ecx, edx as bytes; `features`: leaf 0x4000_0001's
/// eax). `None` when the hypervisor is not KVM or offers no paravirtual clock.
pub fn kvmclock_msr(signature: [u8; 12], features: u32) -> Option<u32> {
    if signature != KVM_SIGNATURE {
        return None;
    }
    if features & KVM_FEATURE_CLOCKSOURCE2 != 0 {
        Some(MSR_KVM_SYSTEM_TIME_NEW)
    } else if features & KVM_FEATURE_CLOCKSOURCE != 0 {
        Some(MSR_KVM_SYSTEM_TIME)
    } else {
        None
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
    fn hpet_capabilities() {
        // QEMU's HPET: 100 MHz (10,000,000 fs), 64-bit counter, 3 timers, vendor 0x8086.
        let qemu = 0x0098_9680_8086_a201u64;
        assert_eq!(hpet_period_fs(qemu), Some(10_000_000));
        assert!(hpet_counter_is_64_bit(qemu));
        assert_eq!(hpet_hz(10_000_000), 100_000_000);
        // A 14.318 MHz HPET (period 69,841,279 fs), 32-bit counter.
        let pc = (69_841_279u64 << 32) | 0x8086_0201;
        assert_eq!(hpet_period_fs(pc), Some(69_841_279));
        assert!(!hpet_counter_is_64_bit(pc));
        assert_eq!(hpet_hz(69_841_279), 14_318_179);
        // No HPET behind the address: all ones; a zero or over-long period is refused.
        assert_eq!(hpet_period_fs(u64::MAX), None);
        assert_eq!(hpet_period_fs(0x8086_a201), None);
        assert_eq!(hpet_period_fs((100_000_001u64 << 32) | 1), None);
        assert_eq!(hpet_ticks_for_us(5_000, 10_000_000), 500_000);
        let hz = hz_from_ticks(10_000_000, hpet_ticks_for_us(5_000, 10_000_000), hpet_hz(10_000_000)).unwrap();
        assert_eq!(hz, 2_000_000_000);
    }

    #[test]
    fn kvmclock_scale_gives_the_frequency() {
        // What KVM writes for a 2.5 GHz TSC: shift -1, mul = 2^32 * 1e9 * 2 / 2.5e9.
        let mul = ((1u64 << 32) * 2 * 1_000_000_000 / 2_500_000_000) as u32;
        let hz = kvmclock_hz(mul, -1).unwrap();
        assert!(hz.abs_diff(2_500_000_000) < 10, "{hz}");
        // A 500 MHz TSC: shift 1 doubles the delta, mul = 2^32 * 1e9 / (2 * 5e8) ... = 2^32 - 1.
        let hz = kvmclock_hz(u32::MAX, 1).unwrap();
        assert!(hz.abs_diff(500_000_000) < 10, "{hz}");
        assert_eq!(kvmclock_hz(0, 0), None);
        assert_eq!(kvmclock_hz(1, -100), None);
        assert_eq!(kvmclock_hz(1, -62), None);
        assert_eq!(kvmclock_hz(1, 127), None);
        assert_eq!(core::mem::size_of::<PvclockTimeInfo>(), 32);
    }

    #[test]
    fn kvmclock_needs_kvm_and_a_clock_feature() {
        assert_eq!(kvmclock_msr(KVM_SIGNATURE, 0x0100_07fb), Some(MSR_KVM_SYSTEM_TIME_NEW));
        assert_eq!(kvmclock_msr(KVM_SIGNATURE, KVM_FEATURE_CLOCKSOURCE), Some(MSR_KVM_SYSTEM_TIME));
        assert_eq!(kvmclock_msr(KVM_SIGNATURE, 0), None);
        assert_eq!(kvmclock_msr(*b"Microsoft Hv", KVM_FEATURE_CLOCKSOURCE2), None);
        assert_eq!(kvmclock_msr(*b"TCGTCGTCGTCG", 0xffff_ffff), None);
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
