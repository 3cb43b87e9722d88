//! Leaving the machine. Under QEMU, through `isa-debug-exit` (iobase 0xf4,
//! `boot::protocol::EXIT_PORT`): writing `v` makes QEMU exit with status `(v << 1) | 1`, so no
//! code the guest writes can look like QEMU's own 0 or 1. A virtual machine without that port
//! (Firecracker) ignores the write; the kernel then resets it through the keyboard controller
//! (`0xfe` to port 0x64, the stop Firecracker documents for its guests), and where there is
//! none by a triple fault: a reset stops a virtual machine. A physical machine would boot
//! again, and run again, so there (no hypervisor in CPUID) the kernel halts instead. The code
//! is printed first as an `@@EXIT` line, so the host decodes the outcome from the serial line
//! whichever way the machine stops.

use x86_64::instructions::port::Port;

/// The codes the kernel exits with (the guest/host protocol's); the xtask decodes them.
pub use boot::protocol::ExitCode;

/// Exits with `code`: the `@@EXIT` line, `isa-debug-exit`, then a reset under a hypervisor
/// or a halt on a physical machine. A run that ends without a crash first prints the sampling
/// profiler's report (when it is on).
pub fn exit(code: ExitCode) -> ! {
    let line = boot::protocol::Tag::Exit.line(Payload(code.port_value()));
    if crate::platform::crashing() {
        // The crash path may hold the console's lock.
        super::serial::write_raw(format_args!("{line}\n"));
    } else {
        super::profile::report();
        crate::sprintln!("{line}");
    }
    x86_64::instructions::interrupts::disable();
    let mut port = Port::<u32>::new(boot::protocol::EXIT_PORT);
    // SAFETY: port 0xf4 is isa-debug-exit in every machine the xtask starts with it; on a
    // machine without it, an I/O write to an unclaimed port is ignored.
    unsafe { port.write(code.port_value()) };
    // CPUID.1:ECX bit 31: a hypervisor is present.
    if core::arch::x86_64::__cpuid(1).ecx & (1 << 31) != 0 {
        reset()
    }
    loop {
        x86_64::instructions::hlt();
    }
}

/// `{"code":N}`.
struct Payload(u32);

impl core::fmt::Display for Payload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{{\"code\":{}}}", self.0)
    }
}

/// Resets the machine: the keyboard controller's pulse of the reset line, else a triple
/// fault (an empty IDT, then an exception).
fn reset() -> ! {
    let mut status = Port::<u8>::new(0x64);
    // SAFETY: ports 0x60/0x64 are the 8042 keyboard controller's on PC-compatible machines
    // (Firecracker emulates one for this); 0xfe pulses the CPU reset line. Without a
    // controller the reads return all ones and the write is ignored. The kernel is leaving:
    // nothing else runs.
    unsafe {
        for _ in 0..100_000 {
            if status.read() & 0x02 == 0 {
                break;
            }
        }
        status.write(0xfe);
    }
    for _ in 0..1_000_000 {
        core::hint::spin_loop();
    }
    // SAFETY: an IDT of limit 0 makes the next exception a triple fault, which resets the
    // machine (QEMU under -no-reboot exits); nothing runs after it.
    unsafe {
        let empty = x86_64::structures::DescriptorTablePointer { limit: 0, base: x86_64::VirtAddr::zero() };
        x86_64::instructions::tables::lidt(&empty);
        core::arch::asm!("int3", options(noreturn));
    }
}
