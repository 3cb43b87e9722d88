//! Linux's signal numbers on x86-64, their default actions, and the status `wait4` reports
//! (`<bits/waitstatus.h>`: `WIFEXITED`, `WEXITSTATUS`, `WIFSIGNALED`, `WTERMSIG`).

/// Hangup.
pub const SIGHUP: u8 = 1;
/// Illegal instruction.
pub const SIGILL: u8 = 4;
/// Trace trap.
pub const SIGTRAP: u8 = 5;
/// Abort.
pub const SIGABRT: u8 = 6;
/// Bus error.
pub const SIGBUS: u8 = 7;
/// Arithmetic exception.
pub const SIGFPE: u8 = 8;
/// Kill (cannot be caught).
pub const SIGKILL: u8 = 9;
/// Segmentation fault.
pub const SIGSEGV: u8 = 11;
/// Alarm clock.
pub const SIGALRM: u8 = 14;
/// Termination.
pub const SIGTERM: u8 = 15;
/// A child stopped or ended.
pub const SIGCHLD: u8 = 17;
/// Bad system call.
pub const SIGSYS: u8 = 31;

/// The names of signals 1 to 31.
const NAMES: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// The name of signal `sig` (1 to 31; the real-time signals 32 to 64 are `SIGRTMIN+n`).
pub fn name(sig: u8) -> Option<&'static str> {
    NAMES.get(usize::from(sig).checked_sub(1)?).copied()
}

/// What a signal does to a process that neither catches nor ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// The process ends (some of these also dump core on Linux: the same here).
    Terminate,
    /// Nothing happens (`SIGCHLD`, `SIGURG`, `SIGWINCH`).
    Ignore,
    /// The process stops or continues (job control).
    StopOrContinue,
}

/// The default action of signal `sig` (1 to 64).
pub fn default_action(sig: u8) -> Default {
    match sig {
        17 | 23 | 28 => Default::Ignore,
        18..=22 => Default::StopOrContinue,
        _ => Default::Terminate,
    }
}

/// The `wait4` status of a process that exited with `code`.
pub fn exited(code: i32) -> i32 {
    (code & 0xff) << 8
}

/// The `wait4` status of a process a signal ended.
pub fn signalled(sig: u8) -> i32 {
    i32::from(sig & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_actions_and_wait_statuses_are_linuxs() {
        assert_eq!(name(SIGKILL), Some("SIGKILL"));
        assert_eq!(name(SIGSEGV), Some("SIGSEGV"));
        assert_eq!(name(SIGCHLD), Some("SIGCHLD"));
        assert_eq!(name(SIGSYS), Some("SIGSYS"));
        assert_eq!((name(0), name(32)), (None, None));
        assert_eq!(default_action(SIGTERM), Default::Terminate);
        assert_eq!(default_action(SIGCHLD), Default::Ignore);
        assert_eq!(default_action(19), Default::StopOrContinue);
        // WIFEXITED(s) = (s & 0x7f) == 0, WEXITSTATUS(s) = (s >> 8) & 0xff; WTERMSIG = s & 0x7f.
        assert_eq!(exited(5), 0x500);
        assert_eq!(exited(256 + 5), 0x500);
        assert_eq!(exited(-1), 0xff00);
        assert_eq!(signalled(SIGKILL), 9);
    }
}

/// Signals 1 to 64 as a mask (`sigset_t` as the kernel keeps it): bit `sig - 1`.
pub fn bit(sig: u8) -> u64 {
    1u64 << (sig - 1)
}

/// `sa_handler` values that are not functions.
pub const SIG_DFL: u64 = 0;
/// Ignore the signal.
pub const SIG_IGN: u64 = 1;
/// `sa_flags`: the handler takes `(sig, siginfo, ucontext)`.
pub const SA_SIGINFO: u64 = 4;
/// `sa_flags`: `sa_restorer` is the code that calls `rt_sigreturn` (glibc always sets it).
pub const SA_RESTORER: u64 = 0x0400_0000;
/// `sa_flags`: restart a system call the signal interrupted.
pub const SA_RESTART: u64 = 0x1000_0000;
/// `sa_flags`: do not block the signal while its handler runs.
pub const SA_NODEFER: u64 = 0x4000_0000;
/// `sa_flags`: back to `SIG_DFL` once delivered.
pub const SA_RESETHAND: u64 = 0x8000_0000;
/// `si_code`: sent by `kill`.
pub const SI_USER: i32 = 0;
/// `si_code`: sent by the kernel (an `alarm`).
pub const SI_KERNEL: i32 = 0x80;

/// The general registers a signal frame saves, in `struct sigcontext` order (x86-64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    /// `r8` to `r15`, `rdi`, `rsi`, `rbp`, `rbx`, `rdx`, `rax`, `rcx`, `rsp`, `rip`, `eflags`.
    pub gpr: [u64; 18],
}

impl Regs {
    /// Index of `rax` in [`Regs::gpr`].
    pub const RAX: usize = 13;
    /// Index of `rsp`.
    pub const RSP: usize = 15;
    /// Index of `rip`.
    pub const RIP: usize = 16;
    /// Index of `eflags`.
    pub const EFLAGS: usize = 17;
}

/// Bytes of `struct ucontext` (flags, link, `stack_t`, `struct sigcontext`, the 64-bit mask).
pub const UCONTEXT: u64 = 8 + 8 + 24 + 256 + 8;
/// Bytes of `struct siginfo`.
pub const SIGINFO: u64 = 128;
/// Bytes of `struct rt_sigframe`: the return address (`sa_restorer`), the ucontext, the siginfo.
pub const RT_SIGFRAME: u64 = 8 + UCONTEXT + SIGINFO;
/// Bytes of the `fxsave` state the frame carries.
pub const FPSTATE: u64 = 512;
/// Where `struct sigcontext` is in the ucontext.
const MCONTEXT: usize = 40;

/// Where a signal frame goes below the interrupted stack pointer `sp`, as Linux's
/// `get_sigframe` puts it: below the 128-byte red zone, the FPU state 64-byte aligned, then the
/// frame, so that the handler starts with `rsp + 8` 16-byte aligned (as after a call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The frame (`rt_sigframe`): the handler's `rsp`; its first word the return address.
    pub at: u64,
    /// The ucontext in it (the handler's third argument).
    pub uc: u64,
    /// The siginfo in it (the second argument).
    pub info: u64,
    /// The FPU state (`fxsave`), above the frame.
    pub fpstate: u64,
}

impl Frame {
    /// The frame for a signal delivered with the user stack at `sp`.
    pub fn below(sp: u64) -> Frame {
        let fpstate = (sp - 128 - FPSTATE) & !63;
        let at = ((fpstate - RT_SIGFRAME) & !15) - 8;
        Frame { at, uc: at + 8, info: at + 8 + UCONTEXT, fpstate }
    }

    /// The frame `rt_sigreturn` finds: the restorer's `syscall` runs with `rsp` just past the
    /// return address the handler's `ret` popped.
    pub fn at_return(rsp: u64) -> u64 {
        rsp - 8
    }
}

/// The frame's bytes from `Frame::at` (return address, ucontext, siginfo): `regs` interrupted,
/// `mask` the blocked signals to restore, `fpstate` where the FPU state was saved; `signo`,
/// `code`, `pid` the siginfo.
pub fn encode(f: &Frame, restorer: u64, regs: &Regs, mask: u64, signo: u8, code: i32, pid: u32) -> alloc::vec::Vec<u8> {
    let mut b = alloc::vec![0u8; RT_SIGFRAME as usize];
    b[..8].copy_from_slice(&restorer.to_le_bytes());
    let uc = 8;
    // uc_flags (UC_FP_XSTATE not set: the state is fxsave's), uc_link 0, uc_stack: no
    // alternate stack (SS_DISABLE = 2).
    b[uc + 16 + 8..uc + 16 + 12].copy_from_slice(&2u32.to_le_bytes());
    let mc = uc + MCONTEXT;
    for (i, r) in regs.gpr.iter().enumerate() {
        b[mc + 8 * i..mc + 8 * i + 8].copy_from_slice(&r.to_le_bytes());
    }
    // cs 0x33 as Linux's user code selector reads (informational), gs, fs, ss 0x2b.
    b[mc + 144..mc + 146].copy_from_slice(&0x33u16.to_le_bytes());
    b[mc + 150..mc + 152].copy_from_slice(&0x2bu16.to_le_bytes());
    b[mc + 168..mc + 176].copy_from_slice(&mask.to_le_bytes()); // oldmask
    b[mc + 184..mc + 192].copy_from_slice(&f.fpstate.to_le_bytes());
    b[uc + MCONTEXT + 256..uc + MCONTEXT + 264].copy_from_slice(&mask.to_le_bytes()); // uc_sigmask
    let si = 8 + UCONTEXT as usize;
    b[si..si + 4].copy_from_slice(&i32::from(signo).to_le_bytes());
    b[si + 8..si + 12].copy_from_slice(&code.to_le_bytes());
    b[si + 16..si + 20].copy_from_slice(&pid.to_le_bytes());
    b
}

/// From the ucontext's bytes (`UCONTEXT` of them): the registers, the mask to restore and where
/// the FPU state is (0: none).
pub fn decode(uc: &[u8]) -> (Regs, u64, u64) {
    let word = |at: usize| u64::from_le_bytes(uc[at..at + 8].try_into().expect("8 bytes"));
    let mut regs = Regs::default();
    for (i, r) in regs.gpr.iter_mut().enumerate() {
        *r = word(MCONTEXT + 8 * i);
    }
    (regs, word(MCONTEXT + 256), word(MCONTEXT + 184))
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn a_frame_lies_below_the_red_zone_aligned_as_after_a_call() {
        for sp in [0x7fff_ffff_e000u64, 0x7fff_ffff_dff8, 0x7fff_ffff_d001] {
            let f = Frame::below(sp);
            assert!(f.fpstate + FPSTATE <= sp - 128, "below the red zone");
            assert_eq!(f.fpstate % 64, 0);
            assert!(f.at + RT_SIGFRAME <= f.fpstate);
            assert_eq!((f.at + 8) % 16, 0, "rsp + 8 is 16-byte aligned at the handler's entry");
            assert_eq!(f.uc, f.at + 8);
            assert_eq!(f.info, f.at + 8 + UCONTEXT);
            assert_eq!(Frame::at_return(f.at + 8), f.at);
        }
        assert_eq!(UCONTEXT, 304, "struct ucontext on x86-64");
        assert_eq!(RT_SIGFRAME, 440);
    }

    #[test]
    fn the_frame_carries_the_registers_mask_and_siginfo_back() {
        let f = Frame::below(0x7fff_0000_1000);
        let mut regs = Regs::default();
        for (i, r) in regs.gpr.iter_mut().enumerate() {
            *r = 0x1000 + i as u64;
        }
        let b = encode(&f, 0x401234, &regs, bit(SIGALRM) | bit(SIGTERM), SIGALRM, SI_KERNEL, 0);
        assert_eq!(b.len() as u64, RT_SIGFRAME);
        assert_eq!(u64::from_le_bytes(b[..8].try_into().unwrap()), 0x401234, "the return address: the restorer");
        let (back, mask, fp) = decode(&b[8..8 + UCONTEXT as usize]);
        assert_eq!(back, regs);
        assert_eq!(mask, (1 << 13) | (1 << 14));
        assert_eq!(fp, f.fpstate);
        let si = 8 + UCONTEXT as usize;
        assert_eq!(i32::from_le_bytes(b[si..si + 4].try_into().unwrap()), 14, "si_signo");
        assert_eq!(i32::from_le_bytes(b[si + 8..si + 12].try_into().unwrap()), SI_KERNEL, "si_code");
    }
}
