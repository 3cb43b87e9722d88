//! Leaving QEMU through `isa-debug-exit` (iobase 0xf4): writing `v` makes QEMU exit with
//! status `(v << 1) | 1`, so no code the guest writes can look like QEMU's own 0 or 1.

use x86_64::instructions::port::Port;

/// The codes the kernel exits with; the xtask decodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything ran and passed (QEMU status 33).
    Success = 0x10,
    /// A failure: bad arguments, a failed job or test run, a crash (QEMU status 35).
    Failure = 0x11,
    /// An in-kernel test panicked; the xtask resumes with the next test (QEMU status 37).
    TestPanicked = 0x12,
    /// An in-kernel test overran its watchdog (QEMU status 39).
    TestHung = 0x13,
}

/// Exits QEMU with `code`. If no exit device is present, halts forever with interrupts off.
pub fn exit(code: ExitCode) -> ! {
    let mut port = Port::<u32>::new(0xf4);
    // SAFETY: port 0xf4 is isa-debug-exit in every machine the xtask starts; on a machine
    // without it, an I/O write to an unclaimed port is ignored.
    unsafe { port.write(code as u32) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
