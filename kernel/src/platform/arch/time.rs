//! Time since boot, from the TSC, its frequency taken from the best source the machine has.
//!
//! The TSC is read at kernel entry; [`now_ns`] is nanoseconds since then. Until a calibration
//! has run, [`now_ns`] returns `None` (the log prints the raw cycle count). [`calibrate_with`]
//! tries, in order (or only the one `tsc.source` names):
//! 1. CPUID leaf 0x15 (with 0x16's base MHz when 0x15 names no crystal): exact, no waiting;
//! 2. KVM's paravirtual clock ([`kvmclock_hz`]): the hypervisor's own TSC-to-nanoseconds
//!    scale, exact and read at once. It comes before the counted sources, which under a
//!    hypervisor count emulated timers whose every read exits to the host, so a vCPU
//!    descheduled inside the window skews the count (Linux, too, takes the TSC frequency from
//!    kvmclock when it has it: `kvmclock_init` sets `x86_platform.calibrate_tsc`);
//! 3. the ACPI PM timer the FADT names ([`measure_pm_timer`]: TSC cycles over 5 ms of its
//!    3.579545 MHz ticks);
//! 4. the HPET the ACPI HPET table names ([`measure_hpet`]: 5 ms of its main counter, at the
//!    period its capabilities register gives);
//! 5. PIT channel 0 polled ([`measure_pit`]: QEMU's microvm has neither PM timer nor HPET,
//!    but a PIT).
//!
//! The arithmetic is `drivers::tsc`'s (host-tested); this file does the CPUID and MSR reads,
//! port and MMIO accesses. Every wait is bounded, so a missing or stuck timer is an error, not
//! a hang.

use boot::cmdline::ClockSource;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

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
    /// The TSC value it passes at.
    pub fn tsc(self) -> u64 {
        self.0
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
    /// The HPET's registers do not read as an HPET, or its counter does not advance.
    Hpet(HpetError),
    /// KVM's paravirtual clock could not be read.
    Kvmclock(KvmclockError),
    /// The source `tsc.source` names is not on this machine.
    Missing(ClockSource),
    /// No source at all: CPUID names no frequency, there is no kvmclock, no PM timer or HPET
    /// works, and the PIT does not count.
    NoSource,
}

/// Why the HPET gave no frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpetError {
    /// Its registers could not be mapped.
    Unmapped {
        /// The base address the HPET table names.
        base: u64,
    },
    /// The capabilities register names no valid period (all ones: nothing at the address).
    BadCapabilities {
        /// The base address.
        base: u64,
        /// What the register read.
        capabilities: u64,
    },
    /// The main counter did not advance after it was enabled.
    Stuck {
        /// The base address.
        base: u64,
    },
}

/// Why kvmclock gave no frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmclockError {
    /// No page for the time structure.
    NoMemory,
    /// The hypervisor never published a complete structure (version stayed 0 or odd).
    NeverUpdated,
    /// The structure's scale gives no frequency (multiplier 0).
    BadScale {
        /// `tsc_to_system_mul`.
        mul: u32,
        /// `tsc_shift`.
        shift: i8,
    },
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::PmTimerStuck { port } => write!(f, "ACPI PM timer at port {port:#x} does not advance"),
            Self::PitStuck => write!(f, "PIT channel 0 does not count down (no 8254 PIT)"),
            Self::Hpet(HpetError::Unmapped { base }) => {
                write!(f, "the HPET's registers at {base:#x} could not be mapped")
            }
            Self::Hpet(HpetError::BadCapabilities { base, capabilities }) => {
                write!(f, "the HPET at {base:#x} reads capabilities {capabilities:#x}, which name no counter period")
            }
            Self::Hpet(HpetError::Stuck { base }) => write!(f, "the HPET's main counter at {base:#x} does not advance"),
            Self::Kvmclock(KvmclockError::NoMemory) => write!(f, "kvmclock: no free page for its time structure"),
            Self::Kvmclock(KvmclockError::NeverUpdated) => {
                write!(f, "kvmclock: the hypervisor never published the time structure")
            }
            Self::Kvmclock(KvmclockError::BadScale { mul, shift }) => {
                write!(f, "kvmclock: the time structure's scale (mul {mul}, shift {shift}) gives no frequency")
            }
            Self::Missing(c) => write!(
                f,
                "tsc.source={} but this machine has no {}; use tsc.source=auto to take what it has",
                c.name(),
                match c {
                    ClockSource::Cpuid => "TSC frequency in CPUID leaves 0x15/0x16",
                    ClockSource::Kvmclock => "KVM paravirtual clock (no KVM signature or clock feature in CPUID)",
                    ClockSource::PmTimer => "ACPI PM timer (the FADT names none)",
                    ClockSource::Hpet => "HPET (no ACPI HPET table, or its registers are not in memory)",
                    ClockSource::Pit | ClockSource::Auto => "such source",
                }
            ),
            Self::NoSource => write!(
                f,
                "no TSC frequency source: CPUID leaves 0x15/0x16 name none, no kvmclock, no working ACPI PM \
                 timer or HPET, and PIT channel 0 does not count down"
            ),
        }
    }
}

/// The TSC frequency counted over `window_us` microseconds of the PM timer at `port`
/// (`wide`: 32-bit counter, else 24-bit).
pub fn measure_pm_timer(port: u16, wide: bool, window_us: u64) -> Result<u64, CalibrationError> {
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
            return drivers::tsc::hz_from_ticks(tsc1 - tsc0, u64::from(elapsed), PM_TIMER_HZ)
                .ok_or(CalibrationError::PmTimerStuck { port });
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

/// The TSC frequency counted over `window_us` microseconds of PIT channel 0, polled: the channel is
/// programmed as a rate generator (mode 2) over the full 65536 count and latched and read
/// until the window's ticks have passed. The legacy PICs are masked first, so the channel's
/// IRQ 0 is never delivered (interrupts are off here anyway).
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

/// HPET registers: General Capabilities and ID, General Configuration, Main Counter.
const HPET_CAPABILITIES: u64 = 0x000;
const HPET_CONFIG: u64 = 0x010;
const HPET_COUNTER: u64 = 0x0f0;
/// `ENABLE_CNF` in the General Configuration register: the main counter runs.
const HPET_ENABLE: u64 = 1;

/// The TSC frequency counted over `window_us` microseconds of the HPET whose registers are at
/// physical `base`. The main counter is enabled if it was not (and left running: nothing
/// else uses the HPET, and no timer of it is armed); its period is the capabilities
/// register's.
pub fn measure_hpet(base: u64, window_us: u64) -> Result<u64, CalibrationError> {
    let err = CalibrationError::Hpet;
    let regs = crate::platform::mm::map_mmio(base, 0x400).map_err(|_| err(HpetError::Unmapped { base }))?;
    // SAFETY: `regs` maps the HPET's 1 KiB register block (the ACPI HPET table's base),
    // uncached; the offsets are the specification's 64-bit registers, 8-byte aligned.
    let read = |off: u64| unsafe { core::ptr::read_volatile((regs + off) as *const u64) };
    let capabilities = read(HPET_CAPABILITIES);
    let period_fs =
        drivers::tsc::hpet_period_fs(capabilities).ok_or(err(HpetError::BadCapabilities { base, capabilities }))?;
    let config = read(HPET_CONFIG);
    if config & HPET_ENABLE == 0 {
        // SAFETY: as above; setting ENABLE_CNF only starts the main counter (legacy
        // replacement routing, bit 1, is kept as it was).
        unsafe { core::ptr::write_volatile((regs + HPET_CONFIG) as *mut u64, config | HPET_ENABLE) };
    }
    let wide = drivers::tsc::hpet_counter_is_64_bit(capabilities);
    let counter = || if wide { read(HPET_COUNTER) } else { read(HPET_COUNTER) & u64::from(u32::MAX) };
    let mask = if wide { u64::MAX } else { u64::from(u32::MAX) };
    let want = drivers::tsc::hpet_ticks_for_us(window_us, period_fs);
    let guard = rdtsc();
    let first = counter();
    let mut now = first;
    while now == first {
        if rdtsc().wrapping_sub(guard) > SPIN_LIMIT {
            return Err(err(HpetError::Stuck { base }));
        }
        now = counter();
    }
    let (start, tsc0) = (now, rdtsc());
    loop {
        let elapsed = counter().wrapping_sub(start) & mask;
        if elapsed >= want {
            let tsc1 = rdtsc();
            return drivers::tsc::hz_from_ticks(tsc1 - tsc0, elapsed, drivers::tsc::hpet_hz(period_fs))
                .ok_or(err(HpetError::Stuck { base }));
        }
        if rdtsc().wrapping_sub(tsc0) > SPIN_LIMIT {
            return Err(err(HpetError::Stuck { base }));
        }
    }
}

/// The system-time MSR of KVM's paravirtual clock, if the hypervisor is KVM and offers one.
pub fn kvmclock_msr() -> Option<u32> {
    use core::arch::x86_64::__cpuid;
    // CPUID.1:ECX[31]: running under a hypervisor, so leaves 0x4000_0000 and up are its own.
    if __cpuid(1).ecx & (1 << 31) == 0 {
        return None;
    }
    let l0 = __cpuid(0x4000_0000);
    let mut signature = [0u8; 12];
    signature[..4].copy_from_slice(&l0.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&l0.ecx.to_le_bytes());
    signature[8..].copy_from_slice(&l0.edx.to_le_bytes());
    let features = if l0.eax >= 0x4000_0001 { __cpuid(0x4000_0001).eax } else { 0 };
    drivers::tsc::kvmclock_msr(signature, features)
}

/// The TSC frequency KVM's paravirtual clock gives, registered through `msr`: the boot CPU's
/// time structure is placed in a fresh page, read once the hypervisor has published it (an
/// even, non-zero version), then unregistered and the page freed.
pub fn kvmclock_hz(msr: u32) -> Result<u64, CalibrationError> {
    use crate::platform::mm::{frame, phys_to_virt};
    use drivers::tsc::PvclockTimeInfo;
    let err = CalibrationError::Kvmclock;
    let page = frame::alloc_zeroed(1).map_err(|_| err(KvmclockError::NoMemory))?;
    let info = phys_to_virt(page) as *const PvclockTimeInfo;
    let mut reg = Msr::new(msr);
    // SAFETY: `msr` is the system-time MSR the KVM CPUID leaves name; the value is the
    // physical address of a zeroed page this function owns, with bit 0 (enable) set, so the
    // hypervisor writes only that page's first 32 bytes.
    unsafe { reg.write(page | 1) };
    let guard = rdtsc();
    let result = loop {
        // SAFETY: `info` is the page's direct-map address; the hypervisor writes it
        // concurrently, so every read is volatile and the version is checked around it.
        let (v0, t, v1) = unsafe {
            let v0 = core::ptr::read_volatile(core::ptr::addr_of!((*info).version));
            let t = core::ptr::read_volatile(info);
            let v1 = core::ptr::read_volatile(core::ptr::addr_of!((*info).version));
            (v0, t, v1)
        };
        if v0 != 0 && v0 % 2 == 0 && v0 == v1 {
            let (mul, shift) = (t.tsc_to_system_mul, t.tsc_shift);
            break drivers::tsc::kvmclock_hz(mul, shift).ok_or(err(KvmclockError::BadScale { mul, shift }));
        }
        if rdtsc().wrapping_sub(guard) > SPIN_LIMIT {
            break Err(err(KvmclockError::NeverUpdated));
        }
        core::hint::spin_loop();
    };
    // SAFETY: writing 0 unregisters the structure; the hypervisor stops writing the page, which
    // is then freed.
    unsafe { reg.write(0) };
    frame::free(page, 1);
    result
}

/// The platform's clock hardware, as ACPI describes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClockHardware {
    /// The FADT's PM timer: I/O port and whether it is 32 bits wide.
    pub pm_timer: Option<(u16, bool)>,
    /// The HPET's register base.
    pub hpet: Option<u64>,
}

/// Calibrates the TSC from `choice` (`tsc.source`): with [`ClockSource::Auto`] the first
/// source in the module's order that works, else only the one named. Returns the frequency
/// and where it came from.
pub fn calibrate_with(choice: ClockSource, hw: ClockHardware) -> Result<(u64, TscSource), CalibrationError> {
    let (hz, source) = measure_with(choice, hw)?;
    TSC_HZ.store(hz, Ordering::Relaxed);
    Ok((hz, source))
}

fn measure_with(choice: ClockSource, hw: ClockHardware) -> Result<(u64, TscSource), CalibrationError> {
    let auto = choice == ClockSource::Auto;
    let wanted = |c: ClockSource| auto || choice == c;
    let missing = |c: ClockSource| if auto { None } else { Some(CalibrationError::Missing(c)) };
    // A source that is present but fails: named, its error is the boot's; under auto the next
    // is tried.
    let mut last = None;
    if wanted(ClockSource::Cpuid) {
        match cpuid_tsc_hz() {
            Some(found) => return Ok(found),
            None => last = missing(ClockSource::Cpuid),
        }
    }
    if wanted(ClockSource::Kvmclock) {
        match kvmclock_msr() {
            Some(msr) => match kvmclock_hz(msr) {
                Ok(hz) => return Ok((hz, TscSource::Kvmclock)),
                Err(e) if auto => log::warn!("time: {e}; trying the next source"),
                Err(e) => return Err(e),
            },
            None => last = missing(ClockSource::Kvmclock),
        }
    }
    if wanted(ClockSource::PmTimer) {
        match hw.pm_timer {
            Some((port, wide)) => match measure_pm_timer(port, wide, 5_000) {
                Ok(hz) => return Ok((hz, TscSource::PmTimer)),
                Err(e) if auto => log::warn!("time: {e}; trying the next source"),
                Err(e) => return Err(e),
            },
            None => last = missing(ClockSource::PmTimer),
        }
    }
    if wanted(ClockSource::Hpet) {
        match hw.hpet {
            Some(base) => match measure_hpet(base, 5_000) {
                Ok(hz) => return Ok((hz, TscSource::Hpet)),
                Err(e) if auto => log::warn!("time: {e}; trying the next source"),
                Err(e) => return Err(e),
            },
            None => last = missing(ClockSource::Hpet),
        }
    }
    if wanted(ClockSource::Pit) {
        return match measure_pit(20_000) {
            Ok(hz) => Ok((hz, TscSource::Pit)),
            Err(e) if !auto => Err(e),
            Err(_) => Err(CalibrationError::NoSource),
        };
    }
    Err(last.unwrap_or(CalibrationError::NoSource))
}
