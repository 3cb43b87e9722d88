//! The COM1 serial console (16550 at I/O port 0x3f8): every byte the kernel prints.
//!
//! Writes are serialised by a spin lock. The crash paths (panic, fatal exception) use
//! [`write_raw`], which does not take the lock, because the lock may be held by the code that
//! crashed. Waiting for the transmitter is bounded, so a missing UART cannot hang the kernel.

use core::fmt::{self, Write};
use spin::Mutex;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
/// How many times to poll the line-status register before dropping a byte.
const TX_SPIN_LIMIT: u32 = 100_000;

/// The serial port.
#[derive(Debug)]
pub struct Serial {
    _private: (),
}

static SERIAL: Mutex<Serial> = Mutex::new(Serial { _private: () });

fn outb(port: u16, v: u8) {
    // SAFETY: the COM1 registers (0x3f8..0x400) are owned by this module; writing them has
    // no effect on memory.
    unsafe { Port::<u8>::new(port).write(v) }
}

fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; reading the UART has no side effect on memory.
    unsafe { Port::<u8>::new(port).read() }
}

/// Programs COM1 for 115200 8N1 with FIFOs, interrupts off.
pub fn init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x03);
}

fn put(byte: u8) {
    for _ in 0..TX_SPIN_LIMIT {
        if inb(COM1 + 5) & 0x20 != 0 {
            outb(COM1, byte);
            return;
        }
        core::hint::spin_loop();
    }
}

fn put_str(s: &str) {
    for b in s.bytes() {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        put_str(s);
        Ok(())
    }
}

/// Prints under the lock, with interrupts off so a handler that prints cannot deadlock.
pub fn print(args: fmt::Arguments<'_>) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _ = SERIAL.lock().write_fmt(args);
    });
}

/// Prints `bytes` as they are (a user program's output), under the lock with interrupts off.
pub fn print_bytes(bytes: &[u8]) {
    x86_64::instructions::interrupts::without_interrupts(|| {
        let _g = SERIAL.lock();
        for &b in bytes {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
    });
}

/// Prints without the lock: only for crash paths.
pub fn write_raw(args: fmt::Arguments<'_>) {
    struct Raw;
    impl Write for Raw {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            put_str(s);
            Ok(())
        }
    }
    let _ = Raw.write_fmt(args);
}

/// `print!` to the serial console.
#[macro_export]
macro_rules! sprint {
    ($($arg:tt)*) => { $crate::platform::arch::serial::print(format_args!($($arg)*)) };
}

/// `println!` to the serial console.
#[macro_export]
macro_rules! sprintln {
    () => { $crate::sprint!("\n") };
    ($($arg:tt)*) => { $crate::platform::arch::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}
