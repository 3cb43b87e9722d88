//! Signals: each process's actions, blocked and pending sets and alarm; delivery on the way
//! back to ring 3 ([`on_return`], the platform's return hook); `rt_sigaction`,
//! `rt_sigprocmask`, `rt_sigreturn`, `alarm`, and the sleeps a signal interrupts.
//!
//! Delivery follows Linux's x86-64 `setup_rt_frame`: the lowest pending unblocked signal is
//! taken; ignored ones go, a default action that ends the process ends it, and a handler gets
//! an `rt_sigframe` below the red zone (`hmm::abi::signal::Frame`: the restorer as return
//! address, the ucontext with the interrupted registers and mask, the siginfo, the `fxsave`
//! state), the signal blocked while it runs (unless `SA_NODEFER`), and the FPU reset.
//! `rt_sigreturn` restores all of it. A system call a signal interrupts returns `EINTR`, or
//! starts again when the handler has `SA_RESTART` or no handler ran (Linux's `ERESTARTSYS`).

use hmm::abi::errno::{EFAULT, EINTR, EINVAL};
use hmm::abi::signal::{self, Frame, Regs, SA_NODEFER, SA_RESETHAND, SA_RESTART, SA_RESTORER, SIG_DFL, SIG_IGN, bit};

use super::PROCESS;
use crate::mm::uspace;
use crate::platform::arch::time;
use crate::platform::arch::trap::TrapFrame;
use crate::platform::arch::user::{self, After, Exit, SYSCALL_VECTOR};
use crate::platform::sched;

/// A system call a signal interrupted: restart it unless a handler without `SA_RESTART` ran
/// (then `EINTR`). Internal, never seen by the program.
pub const ERESTARTSYS: i64 = 512;

/// `SIGKILL` and `SIGSTOP` cannot be blocked, caught or ignored.
const UNBLOCKABLE: u64 = (1 << 8) | (1 << 18);

/// What a process does with one signal (`struct kernel_sigaction`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Action {
    /// `SIG_DFL`, `SIG_IGN` or the handler's address.
    pub handler: u64,
    /// `SA_*`.
    pub flags: u64,
    /// The code that calls `rt_sigreturn`.
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

/// A process's signal state.
#[derive(Debug, Clone)]
pub struct Signals {
    /// By signal number minus 1.
    pub actions: [Action; 64],
    /// Blocked signals.
    pub blocked: u64,
    /// Sent and not yet delivered.
    pub pending: u64,
    /// Who sent each pending signal (0: the kernel) and the `si_code`.
    pub sender: [(u32, i32); 64],
    /// When `alarm` raises `SIGALRM` (ns since boot).
    pub alarm_at: Option<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals { actions: [Action::default(); 64], blocked: 0, pending: 0, sender: [(0, 0); 64], alarm_at: None }
    }
}

impl Signals {
    /// What a `fork` child starts with: the same actions and mask, nothing pending, no alarm.
    pub fn forked(&self) -> Signals {
        Signals { actions: self.actions, blocked: self.blocked, ..Signals::default() }
    }

    /// Marks `sig` sent by `pid` with `code`.
    pub fn raise(&mut self, sig: u8, pid: u32, code: i32) {
        self.pending |= bit(sig);
        self.sender[usize::from(sig - 1)] = (pid, code);
    }

    /// Raises `SIGALRM` if the alarm is due.
    fn tick(&mut self) {
        if self.alarm_at.is_some_and(|at| time::now_ns().unwrap_or(0) >= at) {
            self.alarm_at = None;
            self.raise(signal::SIGALRM, 0, signal::SI_KERNEL);
        }
    }

    /// Pending signals a sleep should wake for: unblocked, and not ignored.
    pub fn wakes(&mut self) -> bool {
        self.tick();
        let ready = self.pending & !(self.blocked & !UNBLOCKABLE);
        (0..64).any(|i| {
            ready & (1 << i) != 0 && {
                let a = self.actions[i];
                a.handler != SIG_IGN
                    && !(a.handler == SIG_DFL && signal::default_action(i as u8 + 1) != signal::Default::Terminate)
            }
        })
    }
}

/// Whether the running process has a signal that should end a sleep.
pub fn interrupted() -> bool {
    PROCESS[sched::current()].lock().as_mut().is_some_and(|p| p.sig.wakes())
}

fn restart(f: &mut TrapFrame, nr: u64) {
    f.rax = nr;
    f.rip -= 2; // the `syscall` instruction again
}

/// The return hook: delivers the running process's next signal (see the module docs).
pub fn on_return(f: &mut TrapFrame) -> After {
    let task = sched::current();
    let restarting = f.vector == SYSCALL_VECTOR && f.rax == (-ERESTARTSYS) as u64;
    let (act, sig, old_mask, sender) = {
        let mut g = PROCESS[task].lock();
        let Some(p) = g.as_mut() else { return After::Return };
        p.sig.tick();
        loop {
            let ready = p.sig.pending & !(p.sig.blocked & !UNBLOCKABLE);
            if ready == 0 {
                if restarting {
                    restart(f, p.last_nr);
                }
                return After::Return;
            }
            let sig = ready.trailing_zeros() as u8 + 1;
            p.sig.pending &= !bit(sig);
            let act = p.sig.actions[usize::from(sig - 1)];
            match act.handler {
                SIG_IGN => continue,
                SIG_DFL => match signal::default_action(sig) {
                    signal::Default::Terminate => return After::End(Exit::Killed(sig)),
                    _ => continue,
                },
                _ => {}
            }
            if restarting {
                if act.flags & SA_RESTART != 0 {
                    restart(f, p.last_nr);
                } else {
                    f.rax = (-EINTR) as u64;
                }
            }
            let old = p.sig.blocked;
            p.sig.blocked |= act.mask | if act.flags & SA_NODEFER != 0 { 0 } else { bit(sig) };
            p.sig.blocked &= !UNBLOCKABLE;
            if act.flags & SA_RESETHAND != 0 {
                p.sig.actions[usize::from(sig - 1)] = Action::default();
            }
            break (act, sig, old, p.sig.sender[usize::from(sig - 1)]);
        }
    };
    let segv = Exit::Fault { vector: 14, rip: f.rip, address: None, error_code: 0 };
    if act.flags & SA_RESTORER == 0 {
        // x86-64 Linux needs a restorer to return through; without one the frame cannot be set.
        return After::End(segv);
    }
    let regs = Regs {
        gpr: [
            f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15, f.rdi, f.rsi, f.rbp, f.rbx, f.rdx, f.rax, f.rcx,
            f.rsp, f.rip, f.rflags,
        ],
    };
    let fr = Frame::below(f.rsp);
    let bytes = signal::encode(&fr, act.restorer, &regs, old_mask, sig, sender.1, sender.0);
    let Some((_, u)) = uspace::installed() else { return After::End(segv) };
    let fx = user::save_fx();
    if u.write(fr.fpstate, &fx[..]).and_then(|()| u.write(fr.at, &bytes)).is_err() {
        return After::End(Exit::Fault { vector: 14, rip: f.rip, address: Some(fr.at), error_code: 0 });
    }
    user::reset_fx();
    f.rip = act.handler;
    f.rsp = fr.at;
    f.rdi = u64::from(sig);
    f.rsi = fr.info;
    f.rdx = fr.uc;
    f.rax = 0;
    // The handler runs with DF and TF clear.
    f.rflags &= !((1 << 10) | (1 << 8));
    After::Return
}

/// The flags `rt_sigreturn` takes from the frame (Linux's `FIX_EFLAGS`: AC, OF, DF, TF, SF,
/// ZF, AF, PF, CF, RF); IF and the rest stay the kernel's.
const FIX_EFLAGS: u64 =
    (1 << 18) | (1 << 11) | (1 << 10) | (1 << 8) | (1 << 7) | (1 << 6) | (1 << 4) | (1 << 2) | 1 | (1 << 16);

/// `rt_sigreturn`: the registers, mask and FPU state of the frame the handler returns through.
pub fn rt_sigreturn(f: &mut TrapFrame) -> After {
    let at = Frame::at_return(f.rsp);
    let segv = After::End(Exit::Fault { vector: 14, rip: f.rip, address: Some(at), error_code: 0 });
    let Some((_, u)) = uspace::installed() else { return segv };
    let mut uc = [0u8; signal::UCONTEXT as usize];
    if u.read(at + 8, &mut uc).is_err() {
        return segv;
    }
    let (regs, mask, fpstate) = signal::decode(&uc);
    if fpstate != 0 {
        let mut fx = [0u8; 512];
        if u.read(fpstate, &mut fx).is_err() {
            return segv;
        }
        user::restore_fx(&fx);
    } else {
        user::reset_fx();
    }
    let g = regs.gpr;
    (f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15) = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
    (f.rdi, f.rsi, f.rbp, f.rbx, f.rdx, f.rax, f.rcx) = (g[8], g[9], g[10], g[11], g[12], g[13], g[14]);
    if g[Regs::RIP] >= hmm::mm::pagetable::USER_END || g[Regs::RSP] >= hmm::mm::pagetable::USER_END {
        return segv;
    }
    f.rsp = g[Regs::RSP];
    f.rip = g[Regs::RIP];
    f.rflags = (f.rflags & !FIX_EFLAGS) | (g[Regs::EFLAGS] & FIX_EFLAGS);
    // Not a system call any more: the trap path must not restart it.
    f.vector = 0;
    if let Some(p) = PROCESS[sched::current()].lock().as_mut() {
        p.sig.blocked = mask & !UNBLOCKABLE;
    }
    After::Return
}

/// `rt_sigaction(sig, act, oact, sigsetsize)`.
pub fn rt_sigaction(sig: u64, act: u64, oact: u64, size: u64) -> Result<u64, i64> {
    if size != 8 || !(1..=64).contains(&sig) {
        return Err(EINVAL);
    }
    let i = (sig - 1) as usize;
    let (_, u) = uspace::installed().ok_or(EFAULT)?;
    let new = if act != 0 {
        let mut b = [0u8; 32];
        u.read(act, &mut b).map_err(|_| EFAULT)?;
        let w = |k: usize| u64::from_le_bytes(b[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
        if UNBLOCKABLE & (1 << i) != 0 {
            return Err(EINVAL);
        }
        Some(Action { handler: w(0), flags: w(1), restorer: w(2), mask: w(3) & !UNBLOCKABLE })
    } else {
        None
    };
    let old = {
        let mut g = PROCESS[sched::current()].lock();
        let p = g.as_mut().ok_or(EINVAL)?;
        let old = p.sig.actions[i];
        if let Some(a) = new {
            p.sig.actions[i] = a;
            // A signal now ignored is dropped, pending or not (as Linux does).
            if a.handler == SIG_IGN
                || (a.handler == SIG_DFL && signal::default_action(sig as u8) == signal::Default::Ignore)
            {
                p.sig.pending &= !(1 << i);
            }
        }
        old
    };
    if oact != 0 {
        let mut b = [0u8; 32];
        for (k, v) in [old.handler, old.flags, old.restorer, old.mask].iter().enumerate() {
            b[k * 8..k * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        u.write(oact, &b).map_err(|_| EFAULT)?;
    }
    Ok(0)
}

/// `rt_sigprocmask(how, set, oset, sigsetsize)`.
pub fn rt_sigprocmask(how: u64, set: u64, oset: u64, size: u64) -> Result<u64, i64> {
    if size != 8 {
        return Err(EINVAL);
    }
    let (_, u) = uspace::installed().ok_or(EFAULT)?;
    let new = if set != 0 { Some(u.read_u64(set).map_err(|_| EFAULT)?) } else { None };
    let old = {
        let mut g = PROCESS[sched::current()].lock();
        let p = g.as_mut().ok_or(EINVAL)?;
        let old = p.sig.blocked;
        if let Some(s) = new {
            p.sig.blocked = match how {
                0 => old | s,
                1 => old & !s,
                2 => s,
                _ => return Err(EINVAL),
            } & !UNBLOCKABLE;
        }
        old
    };
    if oset != 0 {
        u.write_u64(oset, old).map_err(|_| EFAULT)?;
    }
    Ok(0)
}

/// `alarm(seconds)`: `SIGALRM` after that long (0: none); answers the seconds the previous
/// alarm had left, rounded up.
pub fn alarm(seconds: u64) -> Result<u64, i64> {
    let now = time::now_ns().unwrap_or(0);
    let mut g = PROCESS[sched::current()].lock();
    let p = g.as_mut().ok_or(EINVAL)?;
    let left = p.sig.alarm_at.map_or(0, |at| at.saturating_sub(now).div_ceil(1_000_000_000));
    p.sig.alarm_at = (seconds != 0).then(|| now + seconds.saturating_mul(1_000_000_000));
    Ok(left)
}

/// Sleeps until `until` (ns since boot; `None`: until a signal). `Err(ERESTARTSYS)` when a
/// signal comes first (the return hook then runs its handler and answers `EINTR`).
pub fn sleep(until: Option<u64>) -> Result<(), i64> {
    loop {
        if interrupted() {
            return Err(ERESTARTSYS);
        }
        let now = time::now_ns().unwrap_or(0);
        let left_ms = match until {
            Some(t) if now >= t => return Ok(()),
            Some(t) => (t - now).div_ceil(1_000_000).min(10),
            None => 10,
        };
        sched::park(Some(left_ms));
    }
}
