//! Ring 3: entering user mode, the `syscall` entry, and the way back to the kernel when a
//! user program ends.
//!
//! **Entering.** [`run`] saves the kernel context of the calling task (callee-saved registers
//! and flags, on its own stack), makes the stack below that context the task's trap stack (TSS
//! `rsp0` and the `syscall` entry's stack, [`super::smp::set_kernel_stack`]), and `iretq`s into
//! ring 3 with the registers the caller gave. Every trap from ring 3 (an interrupt, an
//! exception, a `syscall`) lands on that stack as a [`TrapFrame`] and goes through the common
//! trap path, so preemption and the page-fault hook work on user code as on kernel code.
//!
//! **GS.** The kernel reads its per-CPU record through GS. Ring 3 runs with a GS base of 0
//! (the record's address waits in `KERNEL_GS_BASE`): the trap path `swapgs`es on the way in
//! from ring 3 and on the way out to it, deciding by the saved `cs`, and the `syscall` entry
//! swaps in just long enough to reach its stack.
//!
//! **System calls.** `syscall` (enabled by `EFER.SCE`; `LSTAR` is [`syscall_entry`], `FMASK`
//! clears IF, DF, TF and AC) builds the frame an interrupt from ring 3 would, with vector
//! [`SYSCALL_VECTOR`], and joins the common trap path, which hands it to the handler the layer
//! above registered ([`set_syscall_handler`]); the return to ring 3 is the trap path's `iretq`,
//! with `rcx` and `r11` holding the user's `rip` and `rflags` as `sysret` would leave them.
//!
//! **Leaving.** When the handler says the program ended (an `exit`), or ring 3 takes an
//! exception nothing resolves, the trap path returns to [`run`]'s caller on the saved context
//! with the [`Exit`], abandoning the trap stack (nothing on it is held: the trap path holds no
//! locks there).
//!
//! **Per task.** A task running user code has its trap stack and FS base recorded
//! ([`switched`] reloads them when the scheduler switches to it), so several user tasks can
//! share a CPU.
//!
//! **FPU and SSE.** The kernel is built soft-float and never touches the x87, MMX or SSE
//! registers, so they belong to user code: [`init_cpu`] enables them (CR0.MP, CR4.OSFXSR and
//! OSXMMEXCPT; no AVX: CR4.OSXSAVE stays clear, so CPUID tells programs there is none), a
//! program starts with them reset, and a switch between tasks running user code saves the
//! outgoing task's state (`fxsave`) and restores the incoming one's (`fxrstor`).

use core::arch::naked_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;
use x86_64::registers::model_specific::Msr;

use super::gdt;
use super::smp;
use super::trap::TrapFrame;
use crate::platform::sched::MAX_TASKS;

/// The vector a `syscall` frame carries (not an IDT vector: above 255).
pub const SYSCALL_VECTOR: u64 = 0x100;

const IA32_EFER: u32 = 0xc000_0080;
const IA32_STAR: u32 = 0xc000_0081;
const IA32_LSTAR: u32 = 0xc000_0082;
const IA32_FMASK: u32 = 0xc000_0084;
const IA32_FS_BASE: u32 = 0xc000_0100;
const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// `EFER.SCE`: `syscall` enabled.
const EFER_SCE: u64 = 1;
/// RFLAGS bits `syscall` clears: TF, IF, DF, AC.
const FMASK: u64 = (1 << 8) | (1 << 9) | (1 << 10) | (1 << 18);
/// RFLAGS.IF and the always-one bit 1: a user program's flags at entry.
const USER_RFLAGS: u64 = (1 << 9) | 2;

/// How a user program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It called `exit` with this status.
    Exited(i32),
    /// A signal whose default action ends the program was sent to it ([`kill`]).
    Killed(u8),
    /// Ring 3 took an exception nothing resolved: `vector`, at `rip`, with the page-fault
    /// `address` for a #PF.
    Fault {
        /// The exception vector.
        vector: u8,
        /// Where.
        rip: u64,
        /// The faulting address (a #PF's CR2).
        address: Option<u64>,
        /// The error code the CPU pushed.
        error_code: u64,
    },
}

/// What the system-call handler tells the trap path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Return to ring 3 (the handler has set `rax`).
    Return,
    /// The program ended: back to [`run`]'s caller.
    End(Exit),
}

/// The handler of system calls, registered by the layer above: it reads the call's number
/// and arguments from the frame (`rax`; `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`) and writes the
/// result to its `rax`.
pub type SyscallHandler = fn(&mut TrapFrame) -> After;

static SYSCALL_HANDLER: Once<SyscallHandler> = Once::new();

/// Registers the system-call handler (once; later calls are ignored).
pub fn set_syscall_handler(h: SyscallHandler) {
    SYSCALL_HANDLER.call_once(|| h);
}

/// Per task: the trap stack's top while it runs user code (0: a kernel task), where its saved
/// kernel context is, its FS base, and how its user program ended.
static TRAP_TOP: [AtomicU64; MAX_TASKS] = [const { AtomicU64::new(0) }; MAX_TASKS];
static CONTEXT: [AtomicU64; MAX_TASKS] = [const { AtomicU64::new(0) }; MAX_TASKS];
static FS_BASE: [AtomicU64; MAX_TASKS] = [const { AtomicU64::new(0) }; MAX_TASKS];
static EXIT: [spin::Mutex<Option<Exit>>; MAX_TASKS] = [const { spin::Mutex::new(None) }; MAX_TASKS];
/// Per task: a signal that ends its program at its next trap from ring 3 (0: none).
static KILL: [core::sync::atomic::AtomicU8; MAX_TASKS] = [const { core::sync::atomic::AtomicU8::new(0) }; MAX_TASKS];

/// One task's x87/SSE state, as `fxsave` writes it.
#[repr(C, align(16))]
struct FxArea(core::cell::UnsafeCell<[u8; 512]>);
// SAFETY: a task's area is read and written only by the scheduler's switch path on the CPU the
// task is pinned to, with interrupts off.
unsafe impl Sync for FxArea {}
static FX: [FxArea; MAX_TASKS] = [const { FxArea(core::cell::UnsafeCell::new([0; 512])) }; MAX_TASKS];

/// Enables `syscall` on this CPU and points it at [`syscall_entry`], and the FPU and SSE for
/// user code. `KERNEL_GS_BASE` holds
/// the user's GS base (0) while the kernel runs; a `swapgs` exchanges it with this CPU's
/// record. Every CPU calls it once, after its GDT is loaded.
pub fn init_cpu() {
    let star = (u64::from(gdt::USER_DATA & !3) - 8) << 48 | u64::from(gdt::kernel_code().0) << 32;
    // SAFETY: the MSRs configure `syscall` only: the selectors in STAR are the GDT's (kernel
    // code at 0x08, data 0x10; user data 0x18 and code 0x20, as `sysret` computes them from
    // 0x10), LSTAR is the entry routine below, FMASK clears IF so it runs with interrupts off.
    // KERNEL_GS_BASE takes the value GS gets on a `swapgs`: this CPU's record, as now.
    unsafe {
        let mut efer = Msr::new(IA32_EFER);
        efer.write(efer.read() | EFER_SCE);
        Msr::new(IA32_STAR).write(star);
        Msr::new(IA32_LSTAR).write(syscall_entry as *const () as u64);
        Msr::new(IA32_FMASK).write(FMASK);
        Msr::new(IA32_KERNEL_GS_BASE).write(0);
    }
    use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};
    let cr0 = (Cr0::read() - Cr0Flags::EMULATE_COPROCESSOR - Cr0Flags::TASK_SWITCHED) | Cr0Flags::MONITOR_COPROCESSOR;
    let cr4 = Cr4::read() | Cr4Flags::OSFXSR | Cr4Flags::OSXMMEXCPT_ENABLE;
    // SAFETY: these bits only let the FPU and SSE instructions run (and SIMD exceptions be
    // reported as #XM); the kernel itself never uses them (soft-float).
    unsafe {
        Cr0::write(cr0);
        Cr4::write(cr4);
    }
}

/// The state a user program starts (or, after a `fork`, goes on) with.
#[derive(Debug, Clone)]
pub struct Start {
    /// Its general registers, `rip` and `rsp` (the selectors and flags are ring 3's whatever
    /// they say).
    pub regs: TrapFrame,
    /// Its FS base (the thread pointer).
    pub fs_base: u64,
    /// Its x87/SSE state as `fxsave` wrote it; `None`: reset.
    pub fx: Option<alloc::boxed::Box<[u8; 512]>>,
}

impl Start {
    /// A new program: entry `rip`, stack `rsp`, every other register 0 (`rdx` too: no
    /// `atexit` function, as the x86-64 ABI has it), reset FPU state.
    pub fn at(rip: u64, rsp: u64) -> Start {
        Start { regs: TrapFrame { rip, rsp, ..TrapFrame::default() }, fs_base: 0, fx: None }
    }
}

/// An `fxsave` area.
#[repr(C, align(16))]
struct Area([u8; 512]);

/// `fxsave` of the registers now (the running task's user state: the kernel does not use them).
fn fxsave() -> Area {
    let mut a = Area([0; 512]);
    // SAFETY: a 16-byte aligned 512-byte area of our own.
    unsafe { core::arch::asm!("fxsave64 [{0}]", in(reg) a.0.as_mut_ptr(), options(nostack)) };
    a
}

/// The running task's x87/SSE state (a `fork` copies it into the child, a signal frame holds it).
pub fn save_fx() -> alloc::boxed::Box<[u8; 512]> {
    alloc::boxed::Box::new(fxsave().0)
}

/// Ends task `task`'s program with `signal` at its next trap from ring 3 (a timer tick
/// comes every 10 ms), or when a system call it waits in sees [`killed`].
pub fn kill(task: usize, signal: u8) {
    KILL[task].store(signal, Ordering::Release);
}

/// The signal that is to end the running task's program, if any.
pub fn killed() -> Option<u8> {
    match KILL[crate::platform::sched::current()].load(Ordering::Acquire) {
        0 => None,
        s => Some(s),
    }
}

/// What the layer above does on every return to ring 3 (signal delivery): it may change the
/// frame, or end the program.
pub type ReturnHook = fn(&mut TrapFrame) -> After;

static RETURN_HOOK: Once<ReturnHook> = Once::new();

/// Registers the return hook (once; later calls are ignored).
pub fn set_return_hook(h: ReturnHook) {
    RETURN_HOOK.call_once(|| h);
}

/// Called by the trap path when a trap from ring 3 is handled and the same program resumes
/// (interrupts off, the interrupt acknowledged): a program [`kill`]ed leaves now; then the
/// return hook runs, with interrupts on (it may write the user stack, which may fault).
pub(super) fn on_user_trap(frame: &mut TrapFrame) {
    if let Some(sig) = killed() {
        leave(Exit::Killed(sig));
    }
    if let Some(h) = RETURN_HOOK.get() {
        x86_64::instructions::interrupts::enable();
        let after = h(frame);
        x86_64::instructions::interrupts::disable();
        if let After::End(exit) = after {
            leave(exit);
        }
    }
}

/// Loads the x87/SSE registers from an `fxsave` image a program gave (a signal frame's): its
/// MXCSR is cut to the bits this CPU has (a reserved bit would fault in `fxrstor`).
pub fn restore_fx(image: &[u8; 512]) {
    let mut a = Area(*image);
    let mxcsr = u32::from_le_bytes(a.0[24..28].try_into().expect("4 bytes")) & mxcsr_mask();
    a.0[24..28].copy_from_slice(&mxcsr.to_le_bytes());
    // SAFETY: a 16-byte aligned image whose MXCSR has only supported bits; the registers are
    // the running task's user state.
    unsafe { core::arch::asm!("fxrstor64 [{0}]", in(reg) a.0.as_ptr(), options(nostack)) };
}

/// The MXCSR bits this CPU supports (`fxsave`'s MXCSR_MASK, 0xffbf when it says 0). Allocates
/// nothing: `run` calls it with interrupts off.
fn mxcsr_mask() -> u32 {
    static MASK: Once<u32> = Once::new();
    *MASK.call_once(|| {
        let now = fxsave();
        match u32::from_le_bytes(now.0[28..32].try_into().expect("4 bytes")) {
            0 => 0xffbf,
            m => m,
        }
    })
}

/// Resets the x87/SSE registers (a signal handler starts so, as on Linux).
pub fn reset_fx() {
    let mxcsr: u32 = 0x1f80;
    // SAFETY: resets the user-owned FPU/SSE registers, which the kernel does not use.
    unsafe { core::arch::asm!("fninit", "ldmxcsr [{0}]", in(reg) &mxcsr, options(nostack)) };
}

/// Runs user code from `start` in the address space the task has installed until it ends, and
/// returns how. The task's own stack becomes its trap stack below the saved context.
pub fn run(start: Start) -> Exit {
    let task = crate::platform::sched::current();
    *EXIT[task].lock() = None;
    // A signal sent before the program entered ring 3 (`KILL`) ends it at its first trap.
    let frame = TrapFrame {
        cs: u64::from(gdt::USER_CODE),
        rflags: USER_RFLAGS,
        ss: u64::from(gdt::USER_DATA),
        vector: 0,
        error_code: 0,
        ..start.regs
    };
    x86_64::instructions::interrupts::disable();
    set_fs_base(start.fs_base);
    match &start.fx {
        // A `fork` child: the parent's state (`save_fx`).
        Some(fx) => restore_fx(fx),
        // A new program starts with the x87 and SSE state reset (MXCSR: every exception
        // masked).
        None => reset_fx(),
    }
    // SAFETY: `enter` saves this context on the current stack and returns to it only through
    // `leave` (from the trap path, with the value the program ended with); the frame is a ring
    // 3 frame (user selectors, IF set) for the installed address space. Interrupts are off
    // until the `iretq`, so the trap stack and GS are consistent when the first trap comes.
    unsafe { enter(&frame, &CONTEXT[task], &TRAP_TOP[task]) };
    TRAP_TOP[task].store(0, Ordering::Relaxed);
    // The signal that ended it (if one did) is spent; the task's next program starts clean.
    KILL[task].store(0, Ordering::Release);
    x86_64::instructions::interrupts::enable();
    EXIT[task].lock().take().unwrap_or(Exit::Exited(0))
}

/// Sets the running task's FS base (`arch_prctl(ARCH_SET_FS)`): the user's thread pointer.
pub fn set_fs_base(base: u64) {
    let task = crate::platform::sched::current();
    FS_BASE[task].store(base, Ordering::Relaxed);
    // SAFETY: FS is not used by the kernel; the user's loads through it are its own business.
    unsafe { Msr::new(IA32_FS_BASE).write(base) };
}

/// The running task's FS base.
pub fn fs_base() -> u64 {
    FS_BASE[crate::platform::sched::current()].load(Ordering::Relaxed)
}

/// The scheduler switched this CPU from task `prev` to task `next` (interrupts off): a task
/// leaving user code keeps its FPU/SSE state; one running user code gets its trap stack, FS
/// base and FPU/SSE state back.
pub fn switched(prev: usize, next: usize) {
    if TRAP_TOP[prev].load(Ordering::Relaxed) != 0 {
        // SAFETY: `prev`'s own 16-byte aligned 512-byte area (see `FxArea`).
        unsafe { core::arch::asm!("fxsave64 [{0}]", in(reg) FX[prev].0.get(), options(nostack)) };
    }
    let top = TRAP_TOP[next].load(Ordering::Relaxed);
    if top != 0 {
        // SAFETY: `next`'s area, saved when it last left this CPU (it was running user code
        // then, as now).
        unsafe { core::arch::asm!("fxrstor64 [{0}]", in(reg) FX[next].0.get(), options(nostack)) };
        gdt::set_rsp0(top);
        smp::set_kernel_stack(top);
        // SAFETY: as in `set_fs_base`.
        unsafe { Msr::new(IA32_FS_BASE).write(FS_BASE[next].load(Ordering::Relaxed)) };
    }
}

/// Called by the trap path for a `syscall` frame (interrupts off): the handler's answer, with
/// interrupts on while it runs (a system call may wait, fault on user memory, take locks).
pub(super) fn syscall(frame: &mut TrapFrame) -> After {
    let Some(h) = SYSCALL_HANDLER.get() else {
        return After::End(Exit::Fault { vector: 6, rip: frame.rip, address: None, error_code: 0 });
    };
    x86_64::instructions::interrupts::enable();
    let after = h(frame);
    x86_64::instructions::interrupts::disable();
    after
}

/// Ends the running task's user program with `exit`: back to [`run`]'s caller. Called from the
/// trap path with interrupts off and nothing held.
pub(super) fn leave(exit: Exit) -> ! {
    let task = crate::platform::sched::current();
    *EXIT[task].lock() = Some(exit);
    let context = CONTEXT[task].load(Ordering::Relaxed);
    // SAFETY: `context` is where `enter` saved the task's kernel context, on this task's stack
    // above everything the trap path has pushed since; `restore` resumes it, returning from
    // `enter`. Nothing below it on the stack is used again.
    unsafe { restore(context) }
}

/// Saves the callee-saved registers and flags, records the stack pointer in `context` and the
/// trap stack (16-byte aligned, just below) in `trap_top`, TSS `rsp0` and this CPU's `syscall`
/// stack, then restores the general registers from `frame` and `iretq`s to ring 3 (with the
/// user's GS base). Returns only through [`restore`].
#[unsafe(naked)]
unsafe extern "C" fn enter(frame: *const TrapFrame, context: *const AtomicU64, trap_top: *const AtomicU64) {
    naked_asm!(
        "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
        "pushfq",
        "mov [rsi], rsp",
        "mov rax, rsp",
        "and rax, -16",
        "mov [rdx], rax",
        // rsp0 and the syscall stack: the TSS's rsp0 is at offset 4.
        "mov rcx, gs:[{tss}]",
        "mov [rcx + 4], rax",
        "mov gs:[{kstack}], rax",
        "mov rsp, rdi",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "add rsp, 16",
        "swapgs",
        "iretq",
        tss = const core::mem::offset_of!(smp::Cpu, tss),
        kstack = const smp::KERNEL_STACK,
    )
}

/// Resumes the context [`enter`] saved at `context`, as a return from it.
#[unsafe(naked)]
unsafe extern "C" fn restore(context: u64) -> ! {
    naked_asm!("mov rsp, rdi", "popfq", "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp", "ret",)
}

/// The `syscall` entry (`LSTAR`): moves to the task's trap stack and builds the frame an
/// interrupt from ring 3 would (`ss`, `rsp`, `rflags` from `r11`, `cs`, `rip` from `rcx`), a
/// zero error code and [`SYSCALL_VECTOR`], then joins the common trap path, which swaps GS in
/// for ring 3 frames. Interrupts are off (FMASK) throughout.
#[unsafe(naked)]
unsafe extern "C" fn syscall_entry() {
    naked_asm!(
        "swapgs",
        "mov gs:[{scratch}], rsp",
        "mov rsp, gs:[{kstack}]",
        "push {uss}",
        "push qword ptr gs:[{scratch}]",
        "swapgs",
        "push r11",
        "push {ucs}",
        "push rcx",
        "push 0",
        "push {vector}",
        "jmp {common}",
        scratch = const smp::USER_SCRATCH,
        kstack = const smp::KERNEL_STACK,
        uss = const gdt::USER_DATA as u64,
        ucs = const gdt::USER_CODE as u64,
        vector = const SYSCALL_VECTOR,
        common = sym super::trap::trap_common,
    )
}
