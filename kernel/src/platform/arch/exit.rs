//! Leaving QEMU through `isa-debug-exit` (iobase 0xf4, `boot::protocol::EXIT_PORT`): writing `v`
//! makes QEMU exit with status `(v << 1) | 1`, so no code the guest writes can look like QEMU's
//! own 0 or 1.

use x86_64::instructions::port::Port;

/// The codes the kernel exits with (the guest/host protocol's); the xtask decodes them.
pub use boot::protocol::ExitCode;

/// Exits QEMU with `code`. If no exit device is present, halts forever with interrupts off.
/// A run that ends without a crash first prints the sampling profiler's report (when it is on).
pub fn exit(code: ExitCode) -> ! {
    if !crate::platform::crashing() {
        super::profile::report();
    }
    let mut port = Port::<u32>::new(boot::protocol::EXIT_PORT);
    // SAFETY: port 0xf4 is isa-debug-exit in every machine the xtask starts; on a machine
    // without it, an I/O write to an unclaimed port is ignored.
    unsafe { port.write(code.port_value()) };
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
