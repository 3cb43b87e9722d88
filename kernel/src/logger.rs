//! The `log` backend: every record goes to the serial console as
//! `[   seconds.micros cpu N LEVEL target] message`, filtered by the levels the command line
//! gives (`log=info,kernel::pci=debug`). Before the TSC is calibrated the time shows as raw
//! kilocycles since entry, marked with `k`.

use boot::cmdline::{KernelArgs, Level};
use log::{LevelFilter, Metadata, Record};
use spin::Once;

use crate::platform::arch::{cpu, time};

struct Logger {
    args: KernelArgs<'static>,
}

static LOGGER: Once<Logger> = Once::new();

fn to_log(l: Level) -> LevelFilter {
    match l {
        Level::Off => LevelFilter::Off,
        Level::Error => LevelFilter::Error,
        Level::Warn => LevelFilter::Warn,
        Level::Info => LevelFilter::Info,
        Level::Debug => LevelFilter::Debug,
        Level::Trace => LevelFilter::Trace,
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= to_log(self.args.level_for(m.target()))
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let cpu = cpu::apic_id();
        match time::now_ns() {
            Some(ns) => crate::sprintln!(
                "[{:>5}.{:06} cpu{} {:<5} {}] {}",
                ns / 1_000_000_000,
                (ns / 1000) % 1_000_000,
                cpu,
                r.level(),
                r.target(),
                r.args()
            ),
            None => crate::sprintln!(
                "[{:>11}k cpu{} {:<5} {}] {}",
                time::cycles_since_boot() / 1000,
                cpu,
                r.level(),
                r.target(),
                r.args()
            ),
        }
    }

    fn flush(&self) {}
}

/// Installs the logger with the command line's levels.
pub fn init(args: KernelArgs<'static>) {
    let max = to_log(args.max_level());
    let logger = LOGGER.call_once(|| Logger { args });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
    }
}
