//! The PVH and Multiboot2 entries: from 32-bit protected mode to the kernel's 64-bit
//! `kernel_entry`.
//!
//! QEMU (and any PVH loader) reads the `XEN_ELFNOTE_PHYS32_ENTRY` note below, loads the ELF's
//! segments at their physical addresses and jumps to `pvh_start` with paging off, `%ebx` =
//! physical address of `hvm_start_info`. GRUB (BIOS or UEFI) finds the Multiboot2 header below
//! in the image's first 32 KiB, loads the same segments at the same physical addresses and jumps
//! to `mb2_start` (named by the header's entry-address tag and by the ELF entry point), in the
//! same machine state but with `%eax` = the Multiboot2 magic and `%ebx` = its information
//! structure. `mb2_start` records which loader it was and the magic, then joins the PVH path.
//! The code here, all in the identity-linked `.boot` section:
//! 1. builds the early page tables: the first [`EARLY_MAP_SIZE`](crate::layout::EARLY_MAP_SIZE)
//!    of physical memory identity-mapped (PML4[0]) and mapped again at
//!    [`KERNEL_VMA_OFFSET`](crate::layout::KERNEL_VMA_OFFSET) (PML4[511]), with 2 MiB pages;
//! 2. enables PAE, long mode (EFER.LME), no-execute (EFER.NXE, when CPUID has it), paging and
//!    write protection;
//! 3. loads a minimal GDT and far-returns into 64-bit code;
//! 4. switches to the higher-half boot stack and calls
//!    `kernel_entry(info_paddr, loader, magic)` with every argument explicitly zero-extended
//!    (the upper halves of registers written in 32-bit code are undefined): `loader` is
//!    [`LOADER_PVH`] or [`LOADER_MULTIBOOT2`], `magic` the loader's `%eax` under Multiboot2
//!    (the kernel checks it, so a wrong loader is reported on the console, not a silent halt).
//!
//! The kernel replaces these page tables and this GDT as soon as it can; until then only the
//! first GiB of physical memory is reachable.

use crate::layout::{BOOT_STACK_GUARD, BOOT_STACK_SIZE, KERNEL_VMA_OFFSET};

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    /* The Multiboot2 header (multiboot2.rs checks the checksum rule): magic, architecture
       (i386 protected mode), length, checksum; an entry-address tag (optional, flags 1);
       a module-alignment tag (modules page-aligned); the end tag. Each tag 8-byte aligned. */
    .section .multiboot2, "a"
    .p2align 3
mb2_header:
    .long {mb2_magic}
    .long {mb2_arch}
    .long mb2_header_end - mb2_header
    .long -({mb2_magic} + {mb2_arch} + (mb2_header_end - mb2_header))
    .short 3, 1
    .long 12
    .long mb2_start
    .long 0
    .short 6, 0
    .long 8
    .short 0, 0
    .long 8
mb2_header_end:

    .section .boot.text, "ax"
    .code32
    .global mb2_start
mb2_start:
    cli
    cld
    mov dword ptr [boot_loader], {loader_mb2}
    mov dword ptr [boot_magic], eax
    jmp 4f

    .global pvh_start
pvh_start:
    cli
    cld
    mov dword ptr [boot_loader], {loader_pvh}
    mov dword ptr [boot_magic], 0
4:
    mov esi, ebx                       /* start_info / Multiboot2 info, kept in esi throughout */
    mov esp, offset early_stack_top

    /* Zero the four early page-table pages. */
    mov edi, offset early_pml4
    xor eax, eax
    mov ecx, 4 * 4096 / 4
    rep stosd

    /* PML4[0] -> identity PDPT, PML4[511] -> higher-half PDPT. */
    mov eax, offset early_pdpt_low
    or eax, 3
    mov [early_pml4], eax
    mov eax, offset early_pdpt_high
    or eax, 3
    mov [early_pml4 + 511 * 8], eax
    /* Both PDPTs point at one PD: identity slot 0, higher-half slot 510 (-2 GiB). */
    mov eax, offset early_pd
    or eax, 3
    mov [early_pdpt_low], eax
    mov [early_pdpt_high + 510 * 8], eax
    /* The PD maps 512 x 2 MiB = 1 GiB, present | writable | huge. */
    mov edi, offset early_pd
    mov eax, 0x83
    mov ecx, 512
1:
    mov [edi], eax
    mov dword ptr [edi + 4], 0
    add eax, 0x200000
    add edi, 8
    loop 1b

    /* CR4.PAE */
    mov eax, cr4
    or eax, 1 << 5
    mov cr4, eax
    mov eax, offset early_pml4
    mov cr3, eax

    /* EFER.LME, and EFER.NXE when CPUID.80000001h:EDX.NX says the CPU has it. */
    mov eax, 0x80000000
    cpuid
    xor edi, edi
    cmp eax, 0x80000001
    jb 2f
    mov eax, 0x80000001
    cpuid
    bt edx, 20
    jnc 2f
    mov edi, 1 << 11
2:
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1 << 8
    or eax, edi
    wrmsr

    /* CR0.PG | CR0.WP | CR0.PE */
    mov eax, cr0
    or eax, 0x80010001
    mov cr0, eax

    lgdt [early_gdt_ptr]
    mov eax, offset start64
    push 0x08
    push eax
    retf

    .code64
start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov edi, esi                       /* zero-extends the info pointer into rdi */
    mov esi, dword ptr [boot_loader]   /* and the loader into rsi */
    mov edx, dword ptr [boot_magic]    /* and its magic into rdx */
    movabs rsp, offset {stack} + {stack_top}
    xor ebp, ebp
    movabs rax, offset kernel_entry
    call rax
3:
    cli
    hlt
    jmp 3b

    .section .boot.data, "aw"
    .p2align 3
early_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF           /* 0x08: 64-bit code, present, ring 0 */
    .quad 0x00CF92000000FFFF           /* 0x10: data, present, writable */
early_gdt_ptr:
    .word 3 * 8 - 1
    .long early_gdt
    .p2align 2
boot_loader: .long 0
boot_magic:  .long 0

    .section .boot.bss, "aw", @nobits
    .p2align 12
early_pml4:      .skip 4096
early_pdpt_low:  .skip 4096
early_pd:        .skip 4096
early_pdpt_high: .skip 4096
early_stack:     .skip 4096
early_stack_top:
    "#,
    stack = sym BOOT_STACK,
    stack_top = const BOOT_STACK_GUARD + BOOT_STACK_SIZE,
    mb2_magic = const crate::multiboot2::HEADER_MAGIC,
    mb2_arch = const crate::multiboot2::ARCH_I386,
    loader_pvh = const LOADER_PVH,
    loader_mb2 = const LOADER_MULTIBOOT2,
);

/// `kernel_entry`'s second argument when PVH entered the kernel.
pub const LOADER_PVH: u32 = 0;
/// `kernel_entry`'s second argument when a Multiboot2 loader (GRUB) entered the kernel.
pub const LOADER_MULTIBOOT2: u32 = 1;

#[repr(C, align(4096))]
struct Stack([u8; BOOT_STACK_GUARD + BOOT_STACK_SIZE]);

/// The 64-bit boot stack (higher half), its lowest page the guard; the boot CPU runs on it
/// until the kernel gives it its own stacks.
#[unsafe(no_mangle)]
static mut BOOT_STACK: Stack = Stack([0; BOOT_STACK_GUARD + BOOT_STACK_SIZE]);

/// The boot stack's guard page, as a virtual address range (the kernel leaves it unmapped).
pub fn boot_stack_guard() -> core::ops::Range<u64> {
    let start = (&raw const BOOT_STACK) as u64;
    start..start + BOOT_STACK_GUARD as u64
}

const _: () =
    assert!(KERNEL_VMA_OFFSET == 0xFFFF_FFFF_8000_0000, "entry.rs maps the kernel at PDPT slot 510 of PML4 slot 511");
