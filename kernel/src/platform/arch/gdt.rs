//! The kernel's GDTs and TSSs, replacing the entry code's minimal GDT: one pair per CPU (a TSS
//! descriptor is marked busy when loaded, so CPUs cannot share one).
//!
//! The TSS carries the interrupt stacks: a double fault (typically a kernel stack overflow)
//! and an NMI each run on their own stack, so they can be reported even when the current stack
//! is unusable. The boot CPU's live in statics; each application processor's are allocated
//! when it starts and live for the kernel's lifetime. Every GDT has the same layout, so the
//! selectors are the same on every CPU.

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

/// IST slot (1-based in hardware, 0-based here) of the double-fault stack.
pub const DOUBLE_FAULT_IST: u16 = 0;
/// IST slot of the NMI stack.
pub const NMI_IST: u16 = 1;
const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(align(16))]
#[allow(dead_code)] // never read by Rust: only its address goes into the TSS
struct Stack([u8; IST_STACK_SIZE]);
static mut DOUBLE_FAULT_STACK: Stack = Stack([0; IST_STACK_SIZE]);
static mut NMI_STACK: Stack = Stack([0; IST_STACK_SIZE]);

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<(GlobalDescriptorTable, SegmentSelector, SegmentSelector, SegmentSelector)> = Once::new();

fn stack_top(stack: *const Stack) -> VirtAddr {
    VirtAddr::from_ptr(stack) + IST_STACK_SIZE as u64
}

/// Kernel code selector.
pub fn kernel_code() -> SegmentSelector {
    GDT.get().map_or(SegmentSelector(0x08), |g| g.1)
}

/// Loads the GDT and TSS on an application processor (the boot CPU's [`init`] ran first, so
/// the heap is up): allocates its TSS, interrupt stacks and GDT, which are never freed.
pub fn init_ap() {
    let stack = || {
        let s: &'static mut Stack = alloc::boxed::Box::leak(alloc::boxed::Box::new(Stack([0; IST_STACK_SIZE])));
        stack_top(s)
    };
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = stack();
    tss.interrupt_stack_table[NMI_IST as usize] = stack();
    let tss: &'static TaskStateSegment = alloc::boxed::Box::leak(alloc::boxed::Box::new(tss));
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    let gdt: &'static GlobalDescriptorTable = alloc::boxed::Box::leak(alloc::boxed::Box::new(gdt));
    gdt.load();
    // SAFETY: as in `init`: the selectors index the GDT just loaded, which (like its TSS) is
    // leaked and so lives for the kernel's lifetime.
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
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = stack_top(&raw const DOUBLE_FAULT_STACK);
        tss.interrupt_stack_table[NMI_IST as usize] = stack_top(&raw const NMI_STACK);
        tss
    });
    let (gdt, code, data, tss_sel) = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(tss));
        (gdt, code, data, tss_sel)
    });
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
