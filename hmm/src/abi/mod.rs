//! The Linux x86-64 user ABI the kernel's user mode gives static executables: the facts to
//! match, kept here so they are host-tested (the kernel's user mode, `kernel/src/linux`, is
//! the thin part that needs the machine).
//!
//! - [`elf`]: a static ELF64 executable checked and turned into the segments to map;
//! - [`stack`]: the initial stack `execve` leaves (arguments, environment, auxiliary vector);
//! - [`sysno`]: system call numbers and names;
//! - [`errno`]: the error numbers a call returns (negated in `rax`);
//! - [`signal`]: signal numbers, default actions, `wait4` statuses and the `rt_sigframe` layout.

pub mod elf;
pub mod errno;
pub mod signal;
pub mod stack;
pub mod sysno;
