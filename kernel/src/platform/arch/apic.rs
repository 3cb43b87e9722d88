//! The local APIC: x2APIC (MSRs) when the CPU has it, xAPIC (MMIO) otherwise; its timer drives
//! the periodic tick.
//!
//! The legacy 8259 PICs are masked first, so the only interrupt sources are the APIC timer,
//! inter-processor interrupts and spurious interrupts. The timer is calibrated once, on the boot
//! CPU, against the TSC (already calibrated against the PM timer) and runs periodically at
//! [`TICK_HZ`] on every CPU ([`init_ap`] starts it on the others with the same count). The tick
//! drives preemption ([`crate::platform::sched`]); the boot CPU's also counts [`ticks`] and runs
//! the tick hooks the layers above registered with [`on_tick`] (the test runner's watchdog).
//! [`send_ipi`] and [`send_init_sipi`] write the interrupt command register.
//!
//! With the sampling profiler on ([`super::profile`]) the timer runs [`set_sub_ticks`] times
//! faster and only every that many-th interrupt on a CPU is a tick ([`timer_interrupt`] says
//! which), so the tick rate stays [`TICK_HZ`].

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use spin::Once;
use x86_64::{instructions::port::Port, registers::model_specific::Msr};

use super::{time, trap};

/// Periodic tick rate.
pub const TICK_HZ: u64 = 100;

const IA32_APIC_BASE: u32 = 0x1b;
const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_TIMER_INIT: u32 = 0x380;
const REG_TIMER_CURRENT: u32 = 0x390;
const REG_TIMER_DIVIDE: u32 = 0x3e0;

/// How the local APIC is accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MSR access.
    X2Apic,
    /// MMIO at this virtual address.
    XApic(u64),
}

static MODE: Once<Mode> = Once::new();
static TICKS: AtomicU64 = AtomicU64::new(0);
static TIMER_RUNNING: AtomicBool = AtomicBool::new(false);
/// The periodic timer's initial count (set by the boot CPU's calibration).
static TIMER_COUNT: AtomicU64 = AtomicU64::new(0);
/// Timer interrupts per tick (1 unless the profiler samples faster than the tick).
static SUB_TICKS: AtomicU32 = AtomicU32::new(1);
/// Each CPU's timer interrupts since its last tick.
static SINCE_TICK: [AtomicU32; super::smp::MAX_CPUS] = [const { AtomicU32::new(0) }; super::smp::MAX_CPUS];

/// Makes the timer interrupt `n` times per tick (the profiler's rate is `n * TICK_HZ`). Call
/// before [`init`]: the count is set when the timer is calibrated.
pub fn set_sub_ticks(n: u32) {
    SUB_TICKS.store(n.max(1), Ordering::Relaxed);
}

fn read(reg: u32) -> u32 {
    match MODE.get() {
        Some(Mode::X2Apic) => {
            // SAFETY: x2APIC mode is enabled, so MSR 0x800 + reg/16 is the register.
            unsafe { Msr::new(0x800 + (reg >> 4)).read() as u32 }
        }
        // SAFETY: `base` maps the APIC's 4 KiB MMIO page uncached; registers are 32-bit aligned.
        Some(&Mode::XApic(base)) => unsafe { core::ptr::read_volatile((base + u64::from(reg)) as *const u32) },
        None => 0,
    }
}

fn write(reg: u32, value: u32) {
    match MODE.get() {
        Some(Mode::X2Apic) => {
            // SAFETY: as in `read`; these registers only affect interrupt delivery.
            unsafe { Msr::new(0x800 + (reg >> 4)).write(u64::from(value)) }
        }
        // SAFETY: as in `read`.
        Some(&Mode::XApic(base)) => unsafe { core::ptr::write_volatile((base + u64::from(reg)) as *mut u32, value) },
        None => {}
    }
}

fn mask_legacy_pic() {
    // SAFETY: ports 0x21/0xa1 are the 8259 mask registers; masking everything only stops
    // legacy interrupts, which the kernel does not use.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
}

/// Why the APIC could not be brought up.
#[derive(Debug)]
pub enum ApicError {
    /// The xAPIC MMIO page could not be mapped.
    Map(crate::platform::mm::MapError),
    /// The timer did not count down.
    TimerStuck,
}

impl core::fmt::Display for ApicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(e) => write!(f, "local APIC: cannot map its registers: {e}"),
            Self::TimerStuck => write!(f, "local APIC timer does not count"),
        }
    }
}

/// Enables the local APIC (x2APIC if `prefer_x2apic`), calibrates and starts the timer.
/// Returns the mode and the timer's ticks per second at divide-by-16.
pub fn init(prefer_x2apic: bool) -> Result<(Mode, u64), ApicError> {
    mask_legacy_pic();
    let mut base_msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU; setting the enable bits (and x2APIC
    // mode when CPUID reports it) is the architectural way to turn the APIC on.
    let base = unsafe { base_msr.read() };
    let mode = if prefer_x2apic {
        // SAFETY: as above; CPUID says x2APIC is supported.
        unsafe { base_msr.write(base | (1 << 11) | (1 << 10)) };
        Mode::X2Apic
    } else {
        // SAFETY: as above.
        unsafe { base_msr.write(base | (1 << 11)) };
        let phys = base & 0x000f_ffff_ffff_f000;
        let virt = crate::platform::mm::map_mmio(phys, 4096).map_err(ApicError::Map)?;
        Mode::XApic(virt)
    };
    MODE.call_once(|| mode);

    write(REG_SVR, 0x100 | u32::from(trap::SPURIOUS_VECTOR));
    write(REG_TIMER_DIVIDE, 0b0011); // divide by 16
    write(REG_LVT_TIMER, 1 << 16); // masked, one-shot
    write(REG_TIMER_INIT, u32::MAX);
    time::delay_ns(2_000_000);
    let elapsed = u32::MAX - read(REG_TIMER_CURRENT);
    if elapsed == 0 {
        return Err(ApicError::TimerStuck);
    }
    let hz = u64::from(elapsed) * 500;
    write(REG_TIMER_INIT, 0);
    let rate = TICK_HZ * u64::from(SUB_TICKS.load(Ordering::Relaxed));
    TIMER_COUNT.store((hz / rate).clamp(1, u64::from(u32::MAX)), Ordering::Relaxed);
    start_timer();
    TIMER_RUNNING.store(true, Ordering::Relaxed);
    x86_64::instructions::interrupts::enable();
    Ok((mode, hz))
}

fn start_timer() {
    write(REG_TIMER_DIVIDE, 0b0011); // divide by 16
    write(REG_LVT_TIMER, (1 << 17) | u32::from(trap::TIMER_VECTOR)); // periodic
    write(REG_TIMER_INIT, TIMER_COUNT.load(Ordering::Relaxed) as u32);
}

/// Enables this application processor's local APIC in the boot CPU's mode and starts its
/// timer with the boot CPU's calibration. Interrupts stay disabled; the caller enables them.
pub fn init_ap() {
    let mut base_msr = Msr::new(IA32_APIC_BASE);
    // SAFETY: as in `init`: the architectural enable (and x2APIC) bits of IA32_APIC_BASE, in
    // the mode the boot CPU chose (every CPU of the machine has the same features).
    unsafe {
        let base = base_msr.read();
        match MODE.get() {
            Some(Mode::X2Apic) => base_msr.write(base | (1 << 11) | (1 << 10)),
            _ => base_msr.write(base | (1 << 11)),
        }
    }
    write(REG_SVR, 0x100 | u32::from(trap::SPURIOUS_VECTOR));
    start_timer();
}

/// Writes the interrupt command register: `low` (vector, delivery mode, level) to the CPU
/// with APIC id `dest`. In xAPIC mode it first waits (bounded) for the previous command to be
/// delivered.
fn command(dest: u32, low: u32) {
    match MODE.get() {
        Some(Mode::X2Apic) => {
            // SAFETY: the x2APIC ICR (MSR 0x830) takes the destination in its high half; one
            // write sends the interrupt.
            unsafe { Msr::new(0x830).write((u64::from(dest) << 32) | u64::from(low)) }
        }
        Some(Mode::XApic(_)) => {
            let deadline = time::Deadline::after_ms(10);
            while read(REG_ICR_LOW) & (1 << 12) != 0 && !deadline.passed() {
                core::hint::spin_loop();
            }
            write(REG_ICR_HIGH, dest << 24);
            write(REG_ICR_LOW, low);
        }
        None => {}
    }
}

/// Sends fixed interrupt `vector` to the CPU with APIC id `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    command(dest, (1 << 14) | u32::from(vector));
}

/// Sends INIT to the CPU with APIC id `dest`: it stops whatever it runs and waits for a SIPI.
pub fn send_init(dest: u32) {
    command(dest, 0x4500); // INIT, level assert
}

/// Starts the CPU with APIC id `dest` at physical `entry` (4 KiB aligned, below 1 MiB) by the
/// INIT-SIPI-SIPI sequence: after INIT the MP specification's 10 ms only on CPUs that need it
/// ([`super::cpu::ap_init_delay_ns`]); a second SIPI is sent only if `started` does not turn
/// true within 1 ms of the first (a SIPI that arrived before the INIT took effect).
pub fn send_init_sipi(dest: u32, entry: u64, started: impl Fn() -> bool) {
    send_init(dest);
    // The specification's 10 ms between INIT and STARTUP, which modern CPUs (and QEMU's
    // models of them) do not need: Linux skips it there too.
    time::delay_ns(super::cpu::ap_init_delay_ns());
    let sipi = 0x4600 | ((entry >> 12) as u32 & 0xff);
    command(dest, sipi);
    let deadline = time::Deadline::after_ms(1);
    while !started() && !deadline.passed() {
        core::hint::spin_loop();
    }
    if !started() {
        command(dest, sipi);
    }
}

/// This CPU's APIC id as the APIC reports it.
pub fn id() -> u32 {
    match MODE.get() {
        Some(Mode::X2Apic) => read(REG_ID),
        _ => read(REG_ID) >> 24,
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Timer ticks since the timer started.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// How many tick hooks [`on_tick`] takes.
pub const TICK_HOOKS: usize = 4;
static TICK_HOOK: [spin::Once<fn()>; TICK_HOOKS] = [const { spin::Once::new() }; TICK_HOOKS];
static TICK_HOOKS_USED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Every tick hook slot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyTickHooks;

impl core::fmt::Display for TooManyTickHooks {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "all {TICK_HOOKS} timer-tick hooks are registered")
    }
}

/// Registers `f` to run on the boot CPU's every timer tick, in interrupt context (interrupts
/// off: it must not allocate, block or take a lock a task may hold). The test runner's
/// watchdog is one. Hooks cannot be removed.
pub fn on_tick(f: fn()) -> Result<(), TooManyTickHooks> {
    let slot = TICK_HOOKS_USED.fetch_add(1, Ordering::AcqRel);
    match TICK_HOOK.get(slot) {
        Some(s) => {
            s.call_once(|| f);
            Ok(())
        }
        None => {
            TICK_HOOKS_USED.fetch_sub(1, Ordering::AcqRel);
            Err(TooManyTickHooks)
        }
    }
}

/// Called by the trap dispatcher on every timer interrupt, on every CPU. Returns whether this
/// interrupt is a tick (always, unless the profiler runs the timer faster: [`set_sub_ticks`]);
/// on a tick, counts the boot CPU's ticks and runs the registered tick hooks there.
pub fn timer_interrupt() -> bool {
    let sub = SUB_TICKS.load(Ordering::Relaxed);
    let cpu = super::smp::index();
    if sub > 1 {
        let Some(since) = SINCE_TICK.get(cpu) else { return true };
        let n = since.load(Ordering::Relaxed) + 1;
        if n < sub {
            since.store(n, Ordering::Relaxed);
            return false;
        }
        since.store(0, Ordering::Relaxed);
    }
    if cpu == 0 {
        TICKS.fetch_add(1, Ordering::Relaxed);
        for hook in &TICK_HOOK {
            if let Some(f) = hook.get() {
                f();
            }
        }
    }
    true
}
