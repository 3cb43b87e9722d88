//! The IDT, its naked entry stubs, and trap dispatch.
//!
//! Every vector the kernel installs enters through a `#[unsafe(naked)]` stub that pushes a
//! uniform [`TrapFrame`] (a zero error code where the CPU pushes none, then the vector number)
//! and jumps to one common routine that saves the general registers and calls
//! [`trap_dispatch`]. Stable Rust has no `extern "x86-interrupt"`; this is the stable way.
//!
//! A page fault goes first to the handler the layer above registered
//! ([`set_page_fault_handler`]: the user address spaces' demand paging); if it resolves the
//! fault, the access is retried. Otherwise faults are either *fixed up* or *fatal*:
//! - an instruction listed in the exception table (the probes below and the user-copy
//!   routine behind [`copy_from_user`] / [`copy_to_user`], the equivalent of Linux's
//!   `__ex_table`) that faults resumes at its fixup with the fault recorded, so callers get an
//!   error value instead of a crash;
//! - any other exception is reported with its decoded state (a page fault shows the address,
//!   the decoded error bits and RIP) and the kernel exits with a failure code. A double fault
//!   runs on its own IST stack, so a kernel stack overflow is reported too.

use core::{
    arch::naked_asm,
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};
use x86_64::registers::control::Cr2;

use super::gdt;

/// The local APIC timer's vector.
pub const TIMER_VECTOR: u8 = 0x30;
/// The local APIC spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// The TLB-shootdown IPI ([`super::smp::shootdown`]).
pub const TLB_VECTOR: u8 = 0x40;
/// The reschedule IPI: another CPU queued a task here ([`crate::platform::sched`]).
pub const RESCHED_VECTOR: u8 = 0x41;
/// `int 0x42`: the running task gives up the CPU ([`crate::platform::sched::yield_now`]).
pub const YIELD_VECTOR: u8 = 0x42;
/// A device's DMA completion (an MSI-X message of a copy engine's queue): it only wakes a CPU
/// halted in [`crate::platform::virtio::DmaQueue::wait`], which then reads its used ring.
pub const DMA_VECTOR: u8 = 0x43;

/// A device's configuration changed (an MSI-X message of a virtio function's configuration
/// vector: the host changed what it asks of virtio-mem): it signals
/// [`crate::platform::sched::CONFIG_CHANGED`], which wakes the task following those requests.
pub const CONFIG_VECTOR: u8 = 0x44;

/// DMA completion interrupts taken, on every CPU.
pub static DMA_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// The state saved on every trap, lowest address first.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// The 32 architectural exception names.
const EXCEPTIONS: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack fault",
    "#GP general protection",
    "#PF page fault",
    "reserved (15)",
    "#MF x87 floating point",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating point",
    "#VE virtualization",
    "#CP control protection",
    "reserved (22)",
    "reserved (23)",
    "reserved (24)",
    "reserved (25)",
    "reserved (26)",
    "reserved (27)",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved (31)",
];

/// A page-fault error code, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageFaultError(pub u64);

impl PageFaultError {
    /// The page was present: a protection violation (otherwise: not present).
    pub fn protection(self) -> bool {
        self.0 & 1 != 0
    }
    /// The access was a write.
    pub fn write(self) -> bool {
        self.0 & 2 != 0
    }
    /// The access came from user mode.
    pub fn user(self) -> bool {
        self.0 & 4 != 0
    }
    /// A reserved bit was set in a paging entry.
    pub fn reserved_bit(self) -> bool {
        self.0 & 8 != 0
    }
    /// The access was an instruction fetch.
    pub fn instruction_fetch(self) -> bool {
        self.0 & 16 != 0
    }
}

impl fmt::Display for PageFaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} in {} mode",
            if self.protection() { "protection violation" } else { "not-present page" },
            if self.instruction_fetch() {
                "instruction fetch"
            } else if self.write() {
                "write"
            } else {
                "read"
            },
            if self.user() { "user" } else { "kernel" },
        )?;
        if self.reserved_bit() {
            write!(f, ", reserved bit set")?;
        }
        if self.0 & 32 != 0 {
            write!(f, ", protection key")?;
        }
        if self.0 & 64 != 0 {
            write!(f, ", shadow stack")?;
        }
        Ok(())
    }
}

/// A fault that an exception-table fixup absorbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The vector (14 for a page fault).
    pub vector: u8,
    /// The faulting address (CR2) for page faults.
    pub address: u64,
    /// The error code.
    pub error: PageFaultError,
    /// The instruction that faulted.
    pub rip: u64,
}

// Each task's last fixed-up fault (vector, address, error code, rip).
static LAST_FAULT: [[AtomicU64; 4]; crate::platform::sched::MAX_TASKS] =
    [const { [const { AtomicU64::new(0) }; 4] }; crate::platform::sched::MAX_TASKS];
/// Count of faults absorbed by fixups.
pub static FIXED_UP_FAULTS: AtomicU64 = AtomicU64::new(0);

fn last_fault() -> Fault {
    let f = &LAST_FAULT[crate::platform::sched::current()];
    Fault {
        vector: f[0].load(Ordering::Relaxed) as u8,
        address: f[1].load(Ordering::Relaxed),
        error: PageFaultError(f[2].load(Ordering::Relaxed)),
        rip: f[3].load(Ordering::Relaxed),
    }
}

// The probes: each faulting instruction has a label and a fixup label; the fixup returns a
// non-zero "faulted" flag in rdx.
core::arch::global_asm!(
    r#"
    .section .text.probes, "ax"
    .global kernel_probe_read_u64
kernel_probe_read_u64:
    xor edx, edx
kernel_probe_read_u64_insn:
    mov rax, [rdi]
    ret
kernel_probe_read_u64_fixup:
    xor eax, eax
    mov edx, 1
    ret

    .global kernel_probe_write_u64
kernel_probe_write_u64:
    xor edx, edx
kernel_probe_write_u64_insn:
    mov [rdi], rsi
    mov rax, rdx
    ret
kernel_probe_write_u64_fixup:
    mov eax, 1
    ret
    "#
);

#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

unsafe extern "C" {
    fn kernel_probe_read_u64(addr: u64) -> ProbeResult;
    fn kernel_probe_write_u64(addr: u64, value: u64) -> u64;
    static kernel_probe_read_u64_insn: u8;
    static kernel_probe_read_u64_fixup: u8;
    static kernel_probe_write_u64_insn: u8;
    static kernel_probe_write_u64_fixup: u8;
}

/// The exception table: (faulting instruction, where to resume).
fn fixup_for(rip: u64) -> Option<u64> {
    let table = [
        ((&raw const kernel_probe_read_u64_insn) as u64, (&raw const kernel_probe_read_u64_fixup) as u64),
        ((&raw const kernel_probe_write_u64_insn) as u64, (&raw const kernel_probe_write_u64_fixup) as u64),
        ((&raw const kernel_user_copy_insn) as u64, (&raw const kernel_user_copy_fixup) as u64),
    ];
    table.iter().find(|(insn, _)| *insn == rip).map(|&(_, fixup)| fixup)
}

/// Reads the 8 bytes at `addr`, or returns the fault that reading caused.
pub fn probe_read_u64(addr: u64) -> Result<u64, Fault> {
    // SAFETY: the probe touches only `addr`; any fault there is absorbed by its fixup, so
    // the access cannot crash the kernel. Reading MMIO through it could have side effects,
    // which is the caller's choice of address.
    let r = unsafe { kernel_probe_read_u64(addr) };
    if r.faulted != 0 { Err(last_fault()) } else { Ok(r.value) }
}

/// Writes `value` to `addr`, or returns the fault that writing caused.
///
/// # Safety
/// `addr` must not be memory that Rust code owns (a write there would break aliasing rules),
/// unless that is what the test means to check and the memory is not used afterwards.
unsafe fn probe_write_u64(addr: u64, value: u64) -> Result<(), Fault> {
    // SAFETY: the caller vouches for the target; faults are absorbed by the fixup.
    let faulted = unsafe { kernel_probe_write_u64(addr, value) };
    if faulted != 0 { Err(last_fault()) } else { Ok(()) }
}

/// Why [`probe_write_must_fault`] did not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeError {
    /// The kernel page table maps the address writable: a write would land in memory Rust code
    /// may own, so the probe refuses it.
    Writable(u64),
    /// The write faulted (the expected outcome of a protection test).
    Fault(Fault),
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Writable(a) => write!(f, "{a:#x} is mapped writable; the probe writes only where a write must fault"),
            Self::Fault(fault) => write!(f, "{} at {:#x}", fault.error, fault.address),
        }
    }
}

/// Writes `value` to the kernel-half address `addr` where the kernel page table says a write
/// must fault (unmapped, or mapped read-only), and returns that fault: the check that a
/// protection really holds. An address mapped writable is refused without writing
/// ([`ProbeError::Writable`]); `Ok` means the write went through a mapping the page table
/// calls read-only (a stale TLB entry), which the caller reports.
pub fn probe_write_must_fault(addr: u64, value: u64) -> Result<(), ProbeError> {
    let writable = crate::platform::mm::with_kernel_pt(|pt| {
        pt.translate(addr).is_some_and(|t| t.flags.contains(crate::platform::mm::paging::Flags::WRITABLE))
    });
    if addr < hmm::mm::pagetable::USER_END || writable != Some(false) {
        return Err(ProbeError::Writable(addr));
    }
    // SAFETY: the kernel page table maps `addr` read-only or not at all (checked just above),
    // so by the page table no Rust object can be changed by this store; it faults and the
    // fault is absorbed by the probe's fixup.
    unsafe { probe_write_u64(addr, value) }.map_err(ProbeError::Fault)
}

// The user-copy routine: `rep movsb` with an exception-table fixup that returns the bytes not
// copied. Demand-paging faults inside it are resolved by the page-fault handler and the
// instruction resumes.
core::arch::global_asm!(
    r#"
    .section .text.probes, "ax"
    .global kernel_user_copy
kernel_user_copy:
    mov rcx, rdx
    .global kernel_user_copy_insn
kernel_user_copy_insn:
    rep movsb
    xor eax, eax
    ret
    .global kernel_user_copy_fixup
kernel_user_copy_fixup:
    mov rax, rcx
    ret
    "#
);

unsafe extern "C" {
    fn kernel_user_copy(dst: *mut u8, src: *const u8, len: usize) -> usize;
    static kernel_user_copy_insn: u8;
    static kernel_user_copy_fixup: u8;
}

/// `[va, va + len)` lies in the user half.
fn user_range(va: u64, len: usize) -> Result<(), UserRange> {
    match va.checked_add(len as u64) {
        Some(end) if end <= hmm::mm::pagetable::USER_END => Ok(()),
        _ => Err(UserRange { address: va, len }),
    }
}

/// A user access named memory outside the user half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRange {
    /// Where the access started.
    pub address: u64,
    /// Its length.
    pub len: usize,
}

/// How a user access ended when it did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAccessError {
    /// The range is not in the user half.
    Range(UserRange),
    /// A fault the page-fault handler could not resolve stopped the access.
    Faulted,
}

/// Copies from user address `va` into `buf` (`copy_from_user`) in the installed address
/// space; faults are resolved by the registered page-fault handler.
pub fn copy_from_user(va: u64, buf: &mut [u8]) -> Result<(), UserAccessError> {
    user_range(va, buf.len()).map_err(UserAccessError::Range)?;
    // SAFETY: the source is in the user half (checked above), never Rust-owned memory;
    // faults there are resolved or absorbed by the routine's fixup. `buf` is a valid kernel
    // buffer of `len` bytes.
    let left = unsafe { kernel_user_copy(buf.as_mut_ptr(), va as *const u8, buf.len()) };
    if left == 0 { Ok(()) } else { Err(UserAccessError::Faulted) }
}

/// Copies `data` to user address `va` (`copy_to_user`).
pub fn copy_to_user(va: u64, data: &[u8]) -> Result<(), UserAccessError> {
    user_range(va, data.len()).map_err(UserAccessError::Range)?;
    // SAFETY: the destination is in the user half (checked), which no Rust object lives in;
    // faults are resolved or absorbed by the fixup.
    let left = unsafe { kernel_user_copy(va as *mut u8, data.as_ptr(), data.len()) };
    if left == 0 { Ok(()) } else { Err(UserAccessError::Faulted) }
}

/// Loads the `u64` at user address `va` with one CPU load.
pub fn read_user_u64(va: u64) -> Result<u64, UserAccessError> {
    user_range(va, 8).map_err(UserAccessError::Range)?;
    probe_read_u64(va).map_err(|_| UserAccessError::Faulted)
}

/// Stores `v` at user address `va` with one CPU store.
pub fn write_user_u64(va: u64, v: u64) -> Result<(), UserAccessError> {
    user_range(va, 8).map_err(UserAccessError::Range)?;
    // SAFETY: `va` is in the user half (checked), where no Rust object lives; a fault that
    // cannot be resolved is absorbed by the probe's fixup.
    unsafe { probe_write_u64(va, v) }.map_err(|_| UserAccessError::Faulted)
}

/// The page-fault handler of the layer above: called for every #PF with the faulting address
/// and error code; returns `true` when it resolved the fault and the access can be retried.
pub type PageFaultHandler = fn(u64, PageFaultError) -> bool;

static PAGE_FAULT_HANDLER: spin::Once<PageFaultHandler> = spin::Once::new();

/// Registers the page-fault handler (the user address spaces' demand paging). Only the first
/// registration counts: returns whether this one did.
pub fn set_page_fault_handler(f: PageFaultHandler) -> bool {
    let mut ours = false;
    PAGE_FAULT_HANDLER.call_once(|| {
        ours = true;
        f
    });
    ours
}

/// One IDT gate.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt =
    Idt([Gate { offset_low: 0, selector: 0, ist: 0, attributes: 0, offset_mid: 0, offset_high: 0, reserved: 0 }; 256]);

macro_rules! stub {
    ($name:ident, $vector:expr) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            naked_asm!("push 0", "push {v}", "jmp {common}", v = const $vector, common = sym trap_common)
        }
    };
    ($name:ident, $vector:expr, error_code) => {
        #[unsafe(naked)]
        extern "C" fn $name() {
            naked_asm!("push {v}", "jmp {common}", v = const $vector, common = sym trap_common)
        }
    };
}

stub!(v0, 0);
stub!(v1, 1);
stub!(v2, 2);
stub!(v3, 3);
stub!(v4, 4);
stub!(v5, 5);
stub!(v6, 6);
stub!(v7, 7);
stub!(v8, 8, error_code);
stub!(v9, 9);
stub!(v10, 10, error_code);
stub!(v11, 11, error_code);
stub!(v12, 12, error_code);
stub!(v13, 13, error_code);
stub!(v14, 14, error_code);
stub!(v15, 15);
stub!(v16, 16);
stub!(v17, 17, error_code);
stub!(v18, 18);
stub!(v19, 19);
stub!(v20, 20);
stub!(v21, 21, error_code);
stub!(v22, 22);
stub!(v23, 23);
stub!(v24, 24);
stub!(v25, 25);
stub!(v26, 26);
stub!(v27, 27);
stub!(v28, 28);
stub!(v29, 29, error_code);
stub!(v30, 30, error_code);
stub!(v31, 31);
stub!(v_timer, TIMER_VECTOR);
stub!(v_spurious, SPURIOUS_VECTOR);
stub!(v_tlb, TLB_VECTOR);
stub!(v_resched, RESCHED_VECTOR);
stub!(v_yield, YIELD_VECTOR);
stub!(v_dma, DMA_VECTOR);
stub!(v_config, CONFIG_VECTOR);

/// Saves the general registers around [`trap_dispatch`]. On entry the stack holds the
/// hardware frame, the error code and the vector; 15 pushes complete a [`TrapFrame`] whose
/// size (22 words) keeps the stack 16-byte aligned at the call.
///
/// `trap_dispatch` returns the frame to resume: the same one, or (when the scheduler switched
/// tasks) the saved frame at the top of another task's stack. The routine moves to that
/// stack, lets the scheduler finish the switch there ([`crate::platform::sched::finish_switch`], which
/// must not run on the old task's stack) and restores the registers from it.
#[unsafe(naked)]
pub(super) extern "C" fn trap_common() {
    naked_asm!(
        // From ring 3 (the saved cs's low bits): GS back to this CPU's record.
        "test qword ptr [rsp + 24], 3",
        "jz 2f",
        "swapgs",
        "2:",
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "mov rdi, rsp",
        "cld",
        "call {dispatch}",
        "mov rsp, rax",
        "call {finish}",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        "add rsp, 16",
        // To ring 3: the user's GS base back.
        "test qword ptr [rsp + 8], 3",
        "jz 3f",
        "swapgs",
        "3:",
        "iretq",
        dispatch = sym trap_dispatch,
        finish = sym crate::platform::sched::finish_switch,
    )
}

/// Builds and loads the IDT.
pub fn init() {
    let exceptions: [extern "C" fn(); 32] = [
        v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15, v16, v17, v18, v19, v20, v21, v22, v23,
        v24, v25, v26, v27, v28, v29, v30, v31,
    ];
    let cs = gdt::kernel_code().0;
    let gate = |handler: extern "C" fn(), ist: u8| {
        let a = handler as usize as u64;
        Gate {
            offset_low: a as u16,
            selector: cs,
            ist,
            attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (a >> 16) as u16,
            offset_high: (a >> 32) as u32,
            reserved: 0,
        }
    };
    let mut idt = Idt([Gate::default(); 256]);
    for (v, &h) in exceptions.iter().enumerate() {
        let ist = match v {
            8 => gdt::DOUBLE_FAULT_IST as u8 + 1,
            2 => gdt::NMI_IST as u8 + 1,
            _ => 0,
        };
        idt.0[v] = gate(h, ist);
    }
    idt.0[TIMER_VECTOR as usize] = gate(v_timer, 0);
    idt.0[SPURIOUS_VECTOR as usize] = gate(v_spurious, 0);
    idt.0[TLB_VECTOR as usize] = gate(v_tlb, 0);
    idt.0[RESCHED_VECTOR as usize] = gate(v_resched, 0);
    idt.0[YIELD_VECTOR as usize] = gate(v_yield, 0);
    idt.0[DMA_VECTOR as usize] = gate(v_dma, 0);
    idt.0[CONFIG_VECTOR as usize] = gate(v_config, 0);
    // SAFETY: the IDT is written only here, on the boot CPU, before interrupts are enabled and
    // before any other CPU runs; no reference to it exists.
    unsafe { (&raw mut IDT).write(idt) };
    load();
}

/// Loads the (shared, never again written) IDT on this CPU.
pub fn load() {
    let ptr = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::from_ptr(&raw const IDT),
    };
    // SAFETY: the IDT is a static with valid gates for every vector that can be raised
    // (exceptions, the APIC's vectors and the DMA completion vector; no other source is unmasked).
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}

/// Loads an empty IDT and raises an exception: the CPU cannot deliver it and triple-faults.
/// Used only to test that the xtask reports a triple fault.
pub fn triple_fault() -> ! {
    let ptr = x86_64::structures::DescriptorTablePointer { limit: 0, base: x86_64::VirtAddr::zero() };
    // SAFETY: deliberately destroys interrupt handling; the next instruction resets the CPU.
    unsafe {
        x86_64::instructions::tables::lidt(&ptr);
        core::arch::asm!("int3");
    }
    crate::platform::arch::exit::exit(crate::platform::arch::exit::ExitCode::Failure)
}

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// Whether the frame was saved in ring 3.
fn from_user(frame: &TrapFrame) -> bool {
    frame.cs & 3 == 3
}

extern "C" fn trap_dispatch(frame: &mut TrapFrame) -> *mut TrapFrame {
    let this: *mut TrapFrame = frame;
    let user = from_user(frame);
    let out = dispatch(frame);
    // Back to the same program in ring 3, the trap handled (an interrupt acknowledged): a
    // signal sent to it is acted on now (`frame` is still this task's). After a switch the
    // frame resumed is another task's, whose own next trap looks.
    if user && core::ptr::eq(out, this) {
        super::user::on_user_trap(frame);
    }
    out
}

fn dispatch(frame: &mut TrapFrame) -> *mut TrapFrame {
    let this: *mut TrapFrame = frame;
    if frame.vector == super::user::SYSCALL_VECTOR {
        return match super::user::syscall(frame) {
            super::user::After::Return => this,
            super::user::After::End(exit) => super::user::leave(exit),
        };
    }
    match frame.vector {
        14 => {
            let address = Cr2::read_raw();
            // Faults below the kernel half go to the installed address space first: demand
            // paging, copy-on-write and the rest resolve there and the access is retried.
            // Resolving takes locks another CPU may hold while it waits for this one to
            // acknowledge a TLB shootdown, so interrupts come back on first when the faulting
            // code had them on (as Linux's fault handler does); the frame restores the flag.
            let user = address < hmm::mm::pagetable::USER_END;
            if user && frame.rflags & RFLAGS_IF != 0 {
                x86_64::instructions::interrupts::enable();
            }
            let resolved = PAGE_FAULT_HANDLER.get().is_some_and(|h| h(address, PageFaultError(frame.error_code)));
            x86_64::instructions::interrupts::disable();
            if resolved {
                return this;
            }
            if from_user(frame) {
                super::user::leave(super::user::Exit::Fault {
                    vector: 14,
                    rip: frame.rip,
                    address: Some(address),
                    error_code: frame.error_code,
                });
            }
            if let Some(fixup) = fixup_for(frame.rip) {
                let f = &LAST_FAULT[crate::platform::sched::current()];
                f[0].store(14, Ordering::Relaxed);
                f[1].store(address, Ordering::Relaxed);
                f[2].store(frame.error_code, Ordering::Relaxed);
                f[3].store(frame.rip, Ordering::Relaxed);
                FIXED_UP_FAULTS.fetch_add(1, Ordering::Relaxed);
                frame.rip = fixup;
                return this;
            }
            fatal(frame, Some(address));
        }
        v if v == u64::from(TIMER_VECTOR) => timer(frame, this),
        v if v == u64::from(RESCHED_VECTOR) => {
            super::apic::eoi();
            crate::platform::sched::preempt(this, false)
        }
        v if v == u64::from(YIELD_VECTOR) => crate::platform::sched::preempt(this, false),
        v if v == u64::from(DMA_VECTOR) => {
            DMA_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
            super::apic::eoi();
            this
        }
        v if v == u64::from(CONFIG_VECTOR) => {
            super::apic::eoi();
            crate::platform::sched::CONFIG_CHANGED.signal();
            this
        }
        v if v == u64::from(TLB_VECTOR) => {
            super::smp::tlb_interrupt();
            super::apic::eoi();
            this
        }
        v if v == u64::from(SPURIOUS_VECTOR) => this,
        // Any other exception in ring 3 ends the user program, not the kernel.
        v if v < 32 && v != 2 && v != 8 && from_user(frame) => super::user::leave(super::user::Exit::Fault {
            vector: v as u8,
            rip: frame.rip,
            address: None,
            error_code: frame.error_code,
        }),
        _ => fatal(frame, None),
    }
}

/// The timer interrupt: a sample when the profiler is on, and (every interrupt, or every
/// `profile.hz / TICK_HZ`th when profiling) the scheduler tick.
fn timer(frame: &TrapFrame, this: *mut TrapFrame) -> *mut TrapFrame {
    let tick = super::apic::timer_interrupt();
    super::profile::sample(frame);
    super::apic::eoi();
    if tick { crate::platform::sched::preempt(this, true) } else { this }
}

/// Reports an unrecoverable exception with its decoded state and ends the run.
fn fatal(frame: &TrapFrame, cr2: Option<u64>) -> ! {
    use crate::platform::arch::serial::write_raw;
    let name = EXCEPTIONS.get(frame.vector as usize).copied().unwrap_or("interrupt");
    write_raw(format_args!("\nFATAL EXCEPTION: {} (vector {})\n", name, frame.vector));
    if let Some(addr) = cr2 {
        let e = PageFaultError(frame.error_code);
        write_raw(format_args!("  page fault at address {addr:#018x}: {e} (error code {:#x})\n", frame.error_code));
    } else if frame.error_code != 0 {
        write_raw(format_args!("  error code {:#x}\n", frame.error_code));
    }
    write_raw(format_args!(
        "  rip {:#018x}  cs {:#x}  rflags {:#x}  rsp {:#018x}  ss {:#x}\n",
        frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss
    ));
    write_raw(format_args!(
        "  rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n  rsi {:#018x} rdi {:#018x} rbp {:#018x}\n",
        frame.rax, frame.rbx, frame.rcx, frame.rdx, frame.rsi, frame.rdi, frame.rbp
    ));
    write_raw(format_args!(
        "  r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n  r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n",
        frame.r8, frame.r9, frame.r10, frame.r11, frame.r12, frame.r13, frame.r14, frame.r15
    ));
    crate::platform::crash(format_args!("{name} at rip {:#x}", frame.rip))
}
