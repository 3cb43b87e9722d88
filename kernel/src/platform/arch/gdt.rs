//! The kernel's GDTs and TSSs, replacing the entry code's minimal GDT: one pair per CPU (a TSS
//! descriptor is marked busy when loaded, so CPUs cannot share one).
//!
//! The TSS carries the interrupt stacks: a double fault (typically a kernel stack overflow)
//! and an NMI each run on their own stack, so they can be reported even when the current stack
//! is unusable. The boot CPU's live in statics; each application processor's are allocated
//! when it starts and live for the kernel's lifetime. Every GDT has the same layout, so the
//! selectors are the same on every CPU: kernel code and data, user data and code (ring 3, in
//! the order `syscall`/`sysret` require), the TSS. A TSS's `rsp0` is the stack a trap from ring
//! 3 lands on: the running user task's kernel stack ([`set_rsp0`], from [`super::user`]).

use core::cell::UnsafeCell;
use spin::Once;
use x86_64::{
    VirtAddr,
    instructions::{
        segmentation::{CS, DS, ES, SS, Segment},
        tables::load_tss,
    },
    structures::{
        gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector},
        tss::TaskStateSegment,
    },
};

use super::smp::{self, MAX_CPUS};

/// IST slot (1-based in hardware, 0-based here) of the double-fault stack.
pub const DOUBLE_FAULT_IST: u16 = 0;
/// IST slot of the NMI stack.
pub const NMI_IST: u16 = 1;
const IST_STACK_SIZE: usize = 16 * 1024;

/// The user data selector (ring 3): GDT entry 3. `sysret` requires it right below the user
/// code selector, and the kernel's data right after its code (`STAR`, [`super::user`]).
pub const USER_DATA: u16 = 0x18 | 3;
/// The user code selector (ring 3): GDT entry 4.
pub const USER_CODE: u16 = 0x20 | 3;

#[repr(align(16))]
#[allow(dead_code)] // never read by Rust: only its address goes into the TSS
struct Stack([u8; IST_STACK_SIZE]);
static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut NMI_STACK: Stack = Stack([0; IST_STACK_SIZE]);

/// One CPU's TSS. Its `rsp0` (the stack a trap from ring 3 lands on) changes while the kernel
/// runs, so it is not behind a shared reference.
struct TssCell(UnsafeCell<TaskStateSegment>);
// SAFETY: each cell is written only by the CPU it belongs to (its `init` or `init_ap`, then
// `set_rsp0` with interrupts off); other CPUs never touch it.
unsafe impl Sync for TssCell {}

static TSS: [TssCell; MAX_CPUS] = [const { TssCell(UnsafeCell::new(TaskStateSegment::new())) }; MAX_CPUS];
static GDT: Once<(GlobalDescriptorTable, SegmentSelector, SegmentSelector, SegmentSelector)> = Once::new();

fn stack_top(stack: *const Stack) -> VirtAddr {
    VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64
}

/// Kernel code selector.
pub fn kernel_code() -> SegmentSelector {
    GDT.get().map_or(SegmentSelector(0x08), |g| g.1)
}

/// The GDT every CPU has (kernel code, kernel data, user data, user code, then `tss`): the
/// layout `STAR` names.
fn table(tss: *const TaskStateSegment) -> (GlobalDescriptorTable, SegmentSelector, SegmentSelector, SegmentSelector) {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let udata = gdt.append(Descriptor::user_data_segment());
    let ucode = gdt.append(Descriptor::user_code_segment());
    debug_assert_eq!((udata.0, ucode.0), (USER_DATA, USER_CODE));
    // SAFETY: `tss` is one of the static `TSS` cells, which live for the kernel's lifetime and
    // are not moved.
    let tss_sel = gdt.append(unsafe { Descriptor::tss_segment_unchecked(tss) });
    (gdt, code, data, tss_sel)
}

/// Sets CPU `cpu`'s interrupt stacks and returns its TSS.
fn tss_of(cpu: usize, double_fault: VirtAddr, nmi: VirtAddr) -> *const TaskStateSegment {
    let t = TSS[cpu].0.get();
    // SAFETY: only this CPU, once, before its TSS is loaded: nothing else reads or writes it.
    unsafe {
        (*t).interrupt_stack_table[DOUBLE_FAULT_IST as usize] = double_fault;
        (*t).interrupt_stack_table[NMI_IST as usize] = nmi;
    }
    smp::cpu(cpu).tss.store(t as u64, core::sync::atomic::Ordering::Relaxed);
    t
}

/// Sets this CPU's `rsp0`, the stack a trap from ring 3 lands on. Call with interrupts off.
pub fn set_rsp0(top: u64) {
    let t = TSS[smp::index()].0.get();
    // SAFETY: this CPU's own TSS; interrupts are off, so no trap reads it half-written (the
    // CPU reads `rsp0` only when a trap raises the privilege level, on this CPU).
    unsafe { (*t).privilege_stack_table[0] = VirtAddr::new(top) };
}

/// Loads the GDT and TSS on an application processor (the boot CPU's [`init`] ran first, so
/// the heap is up): allocates its interrupt stacks and GDT, which are never freed.
pub fn init_ap() {
    let stack = || {
        let s: &'static mut Stack = alloc::boxed::Box::leak(alloc::boxed::Box::new(Stack([0; IST_STACK_SIZE])));
        stack_top(s)
    };
    let tss = tss_of(smp::index(), stack(), stack());
    let (gdt, code, data, tss_sel) = table(tss);
    let gdt: &'static GlobalDescriptorTable = alloc::boxed::Box::leak(alloc::boxed::Box::new(gdt));
    gdt.load();
    // SAFETY: as in `init`: the selectors index the GDT just loaded, which is leaked and so
    // lives for the kernel's lifetime, as does its static TSS.
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_sel);
    }
}

/// Kernel data selector.
pub fn kernel_data() -> SegmentSelector {
    GDT.get().map_or(SegmentSelector(0x10), |g| g.2)
}

/// Loads the GDT and TSS on the boot CPU.
pub fn init() {
    let (gdt, code, data, tss_sel) =
        GDT.call_once(|| table(tss_of(0, stack_top(&raw const DOUBLE_FAULT_STACK), stack_top(&raw const NMI_STACK))));
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives in a
    // `static` and so outlives every use; the TSS it points at is static too.
    unsafe {
        CS::set_reg(*code);
        DS::set_reg(*data);
        ES::set_reg(*data);
        SS::set_reg(*data);
        load_tss(*tss_sel);
    }
}
