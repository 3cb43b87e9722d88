//! Symmetric multiprocessing: per-CPU data, bringing up the application processors the MADT
//! lists, and TLB shootdown.
//!
//! Owns: the per-CPU records ([`Cpu`], one per possible CPU, indexed densely in MADT order with
//! the boot CPU at 0), the real-mode start-up trampoline, and the one TLB-shootdown request in
//! flight.
//!
//! **Per-CPU data.** Each CPU's `IA32_GS_BASE` points at its [`Cpu`], whose first word is its
//! index, so [`index`] is one `gs`-relative load. The kernel never runs user mode, so `swapgs`
//! never happens and the base stays put. The boot CPU's base is set first thing at entry.
//!
//! **Bring-up** ([`start_aps`]). For each enabled MADT CPU but the boot one: the trampoline is
//! copied to a free page below 1 MiB with its parameters (a CR3 below 4 GiB that maps the
//! trampoline page 1:1 and the kernel half, the EFER bits, a fresh guarded stack, the entry and
//! the CPU's index); INIT-SIPI-SIPI starts the CPU at that page in real mode; the trampoline
//! goes to protected mode, enables PAE, long mode and paging, far-jumps to 64-bit code and
//! calls [`ap_entry`] in the kernel half. There the CPU loads the kernel page table, its GS
//! base, its own GDT and TSS, the shared IDT and its local APIC and timer, reports itself
//! online and becomes the idle task of its run queue ([`crate::platform::sched`]). CPUs start one at a
//! time; one that is not online within [`START_TIMEOUT_NS`] is reported, sent INIT again (so it
//! cannot come up late under the next CPU's index) and left out.
//!
//! **TLB shootdown** ([`shootdown`]). Each CPU publishes the root of the page table it has
//! loaded ([`set_root`], before writing CR3). A change to an address space's page table
//! flushes locally and asks every other CPU that has that root loaded to flush too; a change
//! to the kernel half asks every CPU. One request is in flight at a time: the initiator takes
//! the request slot, writes the range, sets one pending bit per target, sends the IPI and
//! waits for the bits to clear, bounded by [`SHOOTDOWN_TIMEOUT_NS`] (a CPU that never answers
//! ends the run with a report, since going on could use a stale translation). Every wait here
//! also serves this CPU's own pending request, so two CPUs shooting at each other, or one
//! waiting for the slot with interrupts off, cannot deadlock. The ordering that makes
//! publishing the root enough: the initiator stores the new entries, then (sequentially
//! consistent) reads the roots; a CPU that loads the root later walks the new entries.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use x86_64::registers::control::{Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, Msr};

use super::{apic, gdt, time, trap};
use crate::platform::mm;

/// Most CPUs the kernel runs (the xtask's machine files allow as many).
pub const MAX_CPUS: usize = 64;
/// How long a started CPU has to report itself online.
pub const START_TIMEOUT_NS: u64 = 500_000_000;
/// How long a TLB shootdown waits for every target to acknowledge.
pub const SHOOTDOWN_TIMEOUT_NS: u64 = 2_000_000_000;
const IA32_GS_BASE: u32 = 0xc000_0101;

/// One CPU's record.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Cpu {
    /// The CPU's index (offset 0: [`index`] reads it through GS).
    index: AtomicU64,
    /// Its APIC id.
    pub apic_id: AtomicU64,
    /// Whether it has come up.
    pub online: AtomicBool,
    /// Physical address of the page-table root it has loaded.
    pub root: AtomicU64,
    /// Shootdown requests it has served.
    pub shootdowns: AtomicU64,
    /// Timer interrupts it has taken.
    pub ticks: AtomicU64,
    /// The `syscall` entry's scratch word: the user `rsp` while it moves to the kernel stack
    /// (offset [`USER_SCRATCH`]).
    user_scratch: AtomicU64,
    /// The kernel stack the running user task traps to (its TSS `rsp0`; offset
    /// [`KERNEL_STACK`]), read by the `syscall` entry.
    kernel_stack: AtomicU64,
    /// This CPU's TSS (its address).
    pub tss: AtomicU64,
}

/// Offset of [`Cpu::user_scratch`], for the `syscall` entry's `gs:`-relative accesses.
pub const USER_SCRATCH: usize = core::mem::offset_of!(Cpu, user_scratch);
/// Offset of [`Cpu::kernel_stack`].
pub const KERNEL_STACK: usize = core::mem::offset_of!(Cpu, kernel_stack);

/// Sets the kernel stack this CPU's `syscall` entry moves to.
pub fn set_kernel_stack(top: u64) {
    CPUS[index()].kernel_stack.store(top, Ordering::Relaxed);
}

impl Cpu {
    const fn new() -> Self {
        Cpu {
            index: AtomicU64::new(0),
            apic_id: AtomicU64::new(0),
            online: AtomicBool::new(false),
            root: AtomicU64::new(0),
            shootdowns: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            user_scratch: AtomicU64::new(0),
            kernel_stack: AtomicU64::new(0),
            tss: AtomicU64::new(0),
        }
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];
static COUNT: AtomicUsize = AtomicUsize::new(1);

fn set_gs_base(i: usize) {
    CPUS[i].index.store(i as u64, Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE only sets the base `gs`-relative loads use; the kernel uses it for
    // nothing but the per-CPU record, which is a static that lives forever.
    unsafe { Msr::new(IA32_GS_BASE).write((&raw const CPUS[i]) as u64) };
}

/// Points the boot CPU's GS base at its record; called first thing at entry.
pub fn init_bsp() {
    set_gs_base(0);
    CPUS[0].online.store(true, Ordering::Relaxed);
}

/// This CPU's index (0 for the boot CPU).
#[inline]
pub fn index() -> usize {
    let i: u64;
    // SAFETY: GS points at this CPU's `Cpu` (set before any caller runs), whose first word is
    // the index; the load has no other effect.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) i, options(nostack, readonly, preserves_flags)) };
    i as usize
}

/// The record of CPU `i`.
pub fn cpu(i: usize) -> &'static Cpu {
    &CPUS[i]
}

/// How many CPUs are online (indices `0..count()`).
pub fn count() -> usize {
    COUNT.load(Ordering::Acquire)
}

/// Records that this CPU is about to load page-table root `root` (call before writing CR3).
pub fn set_root(root: u64) {
    CPUS[index()].root.store(root, Ordering::SeqCst);
}

/// Why bring-up failed before any CPU could be tried.
#[derive(Debug)]
pub enum SmpError {
    /// No page below 1 MiB is free RAM for the trampoline.
    NoTrampolinePage,
    /// Frames or heap for the trampoline page tables or stacks ran out.
    OutOfMemory,
    /// The page tables would lie above 4 GiB (32-bit code loads CR3).
    TablesAbove4G(u64),
}

impl core::fmt::Display for SmpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoTrampolinePage => write!(f, "no free RAM page below 1 MiB for the start-up trampoline"),
            Self::OutOfMemory => write!(f, "out of memory for the start-up page tables or stacks"),
            Self::TablesAbove4G(pa) => write!(f, "start-up page table at {pa:#x} is above 4 GiB"),
        }
    }
}

/// What bring-up did.
#[derive(Debug, Default)]
pub struct Started {
    /// APIC ids of the CPUs that came online, in index order (the boot CPU first).
    pub online: Vec<u32>,
    /// APIC ids of enabled CPUs that did not come online in time.
    pub failed: Vec<u32>,
}

// The trampoline, copied to the start-up page and entered in real mode with CS = page >> 4.
// Assembled as AT&T so the 16- and 32-bit forms are explicit. The page is chosen at run time,
// so the code reaches its data relative to CS (16-bit) or to the page's address in ebx (32-
// and 64-bit), and every absolute address (the GDT's base, the far-jump targets) is written
// by the boot CPU into the copy.
core::arch::global_asm!(
    r#"
    .section .rodata.ap_trampoline, "a"
    .p2align 12
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    movw %cs, %ax
    movw %ax, %ds
    /* ebx = the page's physical address, kept through the 32-bit code */
    xorl %ebx, %ebx
    movw %ax, %bx
    shll $4, %ebx
    /* the GDT pointer's base was filled in by the boot CPU */
    lgdtl (ap_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    /* far jump to 32-bit code: offset from the parameter block */
    ljmpl *(ap_p_jump32 - ap_trampoline_start)

    .code32
ap_trampoline_32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl (ap_p_cr3 - ap_trampoline_start)(%ebx), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl (ap_p_efer - ap_trampoline_start)(%ebx), %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    ljmpl *(ap_p_jump64 - ap_trampoline_start)(%ebx)

    .code64
ap_trampoline_64:
    movl %ebx, %ebx             /* upper halves are undefined after the mode switch */
    movq (ap_p_stack - ap_trampoline_start)(%rbx), %rsp
    movq (ap_p_arg - ap_trampoline_start)(%rbx), %rdi
    movq (ap_p_entry - ap_trampoline_start)(%rbx), %rax
    xorl %ebp, %ebp
    jmpq *%rax

    .p2align 3
ap_gdt:
    .quad 0
    .quad 0x00CF9A000000FFFF    /* 0x08: 32-bit code */
    .quad 0x00CF92000000FFFF    /* 0x10: data */
    .quad 0x00AF9A000000FFFF    /* 0x18: 64-bit code */
ap_gdt_ptr:
    .word 4 * 8 - 1
    .long 0                     /* base: page + (ap_gdt - start) */
    .p2align 3
    .global ap_trampoline_params
ap_trampoline_params:
ap_p_jump32:
    .long 0                     /* page + (ap_trampoline_32 - start) */
    .word 0x08
    .word 0
ap_p_jump64:
    .long 0                     /* page + (ap_trampoline_64 - start) */
    .word 0x18
    .word 0
ap_p_cr3:   .long 0
ap_p_efer:  .long 0
ap_p_stack: .quad 0
ap_p_arg:   .quad 0
ap_p_entry: .quad 0
    .global ap_trampoline_end
ap_trampoline_end:
    .global ap_trampoline_offsets
ap_trampoline_offsets:
    .quad ap_gdt_ptr - ap_trampoline_start
    .quad ap_gdt - ap_trampoline_start
    .quad ap_trampoline_32 - ap_trampoline_start
    .quad ap_trampoline_64 - ap_trampoline_start
    .text
    "#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_params: u8;
    static ap_trampoline_end: u8;
    static ap_trampoline_offsets: [u64; 4];
}

/// The trampoline's parameter block (layout fixed by the assembly above).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Params {
    jump32: u32,
    sel32: u32,
    jump64: u32,
    sel64: u32,
    cr3: u32,
    efer: u32,
    stack: u64,
    arg: u64,
    entry: u64,
}

/// A free RAM page below 1 MiB (the SIPI vector addresses 4 KiB pages there), not a boot
/// module. The frame allocator never hands out the first MiB, so it is unused by now.
fn trampoline_page(info: &boot::pvh::BootInfo) -> Option<u64> {
    (0x8u64..0x9f).map(|p| p << 12).find(|&pa| {
        let ram =
            info.memory_map.iter().any(|r| r.kind == boot::pvh::MemoryKind::Ram && r.start <= pa && pa + 4096 <= r.end);
        let module = info.modules.iter().any(|m| pa < m.paddr + m.size && pa + 4096 > m.paddr);
        ram && !module
    })
}

/// The start-up page tables: the kernel half of the kernel's root, plus the first 2 MiB
/// identity-mapped so the trampoline keeps running when paging comes on. Returns the root and
/// the frames to free.
fn startup_tables(kernel_root: u64) -> Result<(u64, [u64; 3]), SmpError> {
    let frames = [mm::frame::alloc_zeroed(1), mm::frame::alloc_zeroed(1), mm::frame::alloc_zeroed(1)];
    let mut got = [0u64; 3];
    for (g, f) in got.iter_mut().zip(frames) {
        *g = f.map_err(|_| SmpError::OutOfMemory)?;
        if *g >= 1 << 32 {
            return Err(SmpError::TablesAbove4G(*g));
        }
    }
    let [pml4, pdpt, pd] = got;
    let mut kernel = [0u8; 2048];
    mm::read_phys(kernel_root + 2048, &mut kernel);
    mm::write_phys(pml4 + 2048, &kernel);
    mm::write_phys(pml4, &(pdpt | 3).to_le_bytes());
    mm::write_phys(pdpt, &(pd | 3).to_le_bytes());
    mm::write_phys(pd, &0x83u64.to_le_bytes()); // present | writable | 2 MiB, at 0
    Ok((pml4, got))
}

/// Brings up every enabled CPU in `cpus` (the MADT's) except the boot CPU.
pub fn start_aps(info: &boot::pvh::BootInfo, cpus: &[crate::platform::acpi::Cpu]) -> Result<Started, SmpError> {
    let bsp = apic::id();
    CPUS[0].apic_id.store(u64::from(bsp), Ordering::Relaxed);
    let mut started = Started { online: alloc::vec![bsp], failed: Vec::new() };
    let others: Vec<u32> =
        cpus.iter().filter(|c| c.enabled && c.apic_id != bsp).map(|c| c.apic_id).take(MAX_CPUS - 1).collect();
    if others.is_empty() {
        return Ok(started);
    }
    let page = trampoline_page(info).ok_or(SmpError::NoTrampolinePage)?;
    let kernel_root = Cr3::read().0.start_address().as_u64();
    let (root, tables) = startup_tables(kernel_root)?;

    // SAFETY: the symbols delimit the trampoline in the kernel image's rodata; the offsets
    // table is four u64s written by the assembler.
    let (code, params_at, offs) = unsafe {
        let start = &raw const ap_trampoline_start;
        let len = (&raw const ap_trampoline_end) as usize - start as usize;
        let params_at = (&raw const ap_trampoline_params) as usize - start as usize;
        (core::slice::from_raw_parts(start, len), params_at, ap_trampoline_offsets)
    };
    let [gdt_ptr, gdt, code32, code64] = offs;
    mm::write_phys(page, code);
    mm::write_phys(page + gdt_ptr + 2, &((page + gdt) as u32).to_le_bytes());

    BSP_CR4.store(Cr4::read().bits(), Ordering::Relaxed);
    let efer = Efer::read() & (EferFlags::LONG_MODE_ENABLE | EferFlags::NO_EXECUTE_ENABLE);
    for apic_id in others {
        let i = started.online.len();
        // A guarded stack in the slots past the tasks'; it becomes the CPU's idle task's.
        let top = mm::stack::alloc(crate::platform::sched::MAX_TASKS + i).map_err(|_| SmpError::OutOfMemory)?;
        let p = Params {
            jump32: (page + code32) as u32,
            sel32: 0x08,
            jump64: (page + code64) as u32,
            sel64: 0x18,
            cr3: root as u32,
            efer: efer.bits() as u32,
            stack: top,
            arg: i as u64,
            entry: ap_entry as *const () as u64,
        };
        let mut bytes = [0u8; core::mem::size_of::<Params>()];
        // SAFETY: `Params` is plain old data of exactly this size.
        unsafe { core::ptr::copy_nonoverlapping((&raw const p).cast::<u8>(), bytes.as_mut_ptr(), bytes.len()) };
        mm::write_phys(page + params_at as u64, &bytes);
        CPUS[i].apic_id.store(u64::from(apic_id), Ordering::Relaxed);
        CPUS[i].online.store(false, Ordering::SeqCst);
        apic::send_init_sipi(apic_id, page, || CPUS[i].online.load(Ordering::Acquire));
        let deadline = time::Deadline::after_ns(START_TIMEOUT_NS);
        while !CPUS[i].online.load(Ordering::Acquire) && !deadline.passed() {
            core::hint::spin_loop();
        }
        if CPUS[i].online.load(Ordering::Acquire) {
            started.online.push(apic_id);
            COUNT.store(i + 1, Ordering::Release);
        } else {
            // Park it, so that a CPU that starts late cannot take the next one's index.
            apic::send_init(apic_id);
            log::error!(
                "smp: CPU with APIC id {apic_id} did not come online within {} ms; going on without it",
                START_TIMEOUT_NS / 1_000_000
            );
            started.failed.push(apic_id);
        }
    }
    for t in tables {
        mm::frame::free(t, 1);
    }
    Ok(started)
}

/// The boot CPU's CR4, copied to every application processor (PGE and the rest).
static BSP_CR4: AtomicU64 = AtomicU64::new(0);

/// Where an application processor enters the kernel, on its own stack, with the start-up page
/// tables loaded and interrupts off.
extern "C" fn ap_entry(i: u64) -> ! {
    let i = i as usize;
    set_gs_base(i);
    // The kernel's GDT first: the trampoline's lies in the identity-mapped page, which the
    // kernel's page table does not map.
    gdt::init_ap();
    trap::load();
    super::user::init_cpu();
    let kernel_root = mm::kernel_root();
    set_root(kernel_root);
    // SAFETY: the kernel's own root maps everything the start-up tables' kernel half does
    // (they are a copy of it), this code, its stack and the new GDT included; the CR4 bits are
    // the boot CPU's, which the same CPU model supports.
    unsafe {
        Cr4::write(Cr4Flags::from_bits_truncate(BSP_CR4.load(Ordering::Relaxed)));
        Cr3::write(
            x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(kernel_root)),
            x86_64::registers::control::Cr3Flags::empty(),
        );
    }
    apic::init_ap();
    crate::platform::sched::init_ap(i);
    CPUS[i].online.store(true, Ordering::Release);
    crate::platform::sched::idle()
}

// ---- TLB shootdown -------------------------------------------------------------------------

/// The request in flight: which root (0: the kernel half, every CPU flushes everything), the
/// range, and the CPUs that still have to flush.
static SLOT: AtomicBool = AtomicBool::new(false);
static REQ_ROOT: AtomicU64 = AtomicU64::new(0);
static REQ_START: AtomicU64 = AtomicU64::new(0);
static REQ_END: AtomicU64 = AtomicU64::new(0);
static REQ_FULL: AtomicBool = AtomicBool::new(false);
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Shootdowns sent (requests with at least one target).
pub static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);

/// Above this many pages a shootdown reloads CR3 instead of invalidating page by page.
const INVLPG_MAX: u64 = 32;

/// Flushes `[start, end)` of `root` from this CPU's TLB if it has `root` loaded (all of it,
/// paging-structure caches included, when `full` or the range is long); root 0 means the
/// kernel half: everything, global entries included.
pub fn flush_local(root: u64, start: u64, end: u64, full: bool) {
    if root == 0 {
        mm::paging::flush_all();
        return;
    }
    if CPUS[index()].root.load(Ordering::Relaxed) != root {
        return;
    }
    if full || (end - start) / 4096 > INVLPG_MAX {
        let (frame, flags) = Cr3::read();
        // SAFETY: reloading the current value changes no mapping; it drops the non-global
        // translations and the paging-structure caches.
        unsafe { Cr3::write(frame, flags) };
    } else {
        let mut va = start;
        while va < end {
            x86_64::instructions::tlb::flush(x86_64::VirtAddr::new_truncate(va));
            va += 4096;
        }
    }
}

/// Serves this CPU's part of the request in flight, if it has one.
fn serve() {
    let me = 1u64 << index();
    if PENDING.load(Ordering::Acquire) & me != 0 {
        flush_local(
            REQ_ROOT.load(Ordering::Relaxed),
            REQ_START.load(Ordering::Relaxed),
            REQ_END.load(Ordering::Relaxed),
            REQ_FULL.load(Ordering::Relaxed),
        );
        CPUS[index()].shootdowns.fetch_add(1, Ordering::Relaxed);
        PENDING.fetch_and(!me, Ordering::AcqRel);
    }
}

/// The shootdown IPI's handler.
pub fn tlb_interrupt() {
    serve();
}

/// Makes every other CPU that may cache translations of `root` (0: the kernel half, all CPUs)
/// drop those of `[start, end)` (or all, with `full`, as [`flush_local`]). The caller flushes
/// its own TLB. Returns at once on one CPU.
pub fn shootdown(root: u64, start: u64, end: u64, full: bool) {
    let n = count();
    if n <= 1 {
        return;
    }
    core::sync::atomic::fence(Ordering::SeqCst);
    let me = index();
    let targets = (0..n)
        .filter(|&c| c != me && (root == 0 || CPUS[c].root.load(Ordering::SeqCst) == root))
        .fold(0u64, |m, c| m | (1 << c));
    if targets == 0 {
        return;
    }
    let was = x86_64::instructions::interrupts::are_enabled();
    // Take the slot with interrupts off (so this CPU is not preempted holding it), serving
    // requests aimed at this CPU while it waits.
    loop {
        x86_64::instructions::interrupts::disable();
        if SLOT.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            break;
        }
        serve();
        if was {
            x86_64::instructions::interrupts::enable();
        }
        core::hint::spin_loop();
    }
    REQ_ROOT.store(root, Ordering::Relaxed);
    REQ_START.store(start, Ordering::Relaxed);
    REQ_END.store(end, Ordering::Relaxed);
    REQ_FULL.store(full, Ordering::Relaxed);
    PENDING.store(targets, Ordering::Release);
    SHOOTDOWNS.fetch_add(1, Ordering::Relaxed);
    for (c, cpu) in CPUS.iter().enumerate().take(n) {
        if targets & (1 << c) != 0 {
            apic::send_ipi(cpu.apic_id.load(Ordering::Relaxed) as u32, trap::TLB_VECTOR);
        }
    }
    let deadline = time::Deadline::after_ns(SHOOTDOWN_TIMEOUT_NS);
    while PENDING.load(Ordering::Acquire) != 0 {
        if deadline.passed() {
            let left = PENDING.load(Ordering::Relaxed);
            crate::platform::crash(format_args!(
                "TLB shootdown: CPUs {left:#b} (bit = CPU index) did not acknowledge within {} ms; a stale translation could be used, so the run stops",
                SHOOTDOWN_TIMEOUT_NS / 1_000_000
            ));
        }
        core::hint::spin_loop();
    }
    SLOT.store(false, Ordering::Release);
    if was {
        x86_64::instructions::interrupts::enable();
    }
}
