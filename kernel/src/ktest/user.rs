//! The Linux-compatible user mode (issue 28): programs in ring 3, their system calls, and what
//! happens when they misbehave. Each program is a few instructions in a minimal static ELF
//! (`hmm::abi::elf::minimal`), so no compiler is needed; the assembly is beside the bytes.
//!
//! - [`a_program_writes_and_exits_with_its_status`]: `write(1, ...)` returns the length, and
//!   `exit(7)` ends the program with status 7.
//! - [`segments_are_loaded_and_bss_is_zero`]: the data segment holds the file's bytes, the rest
//!   of it reads zero and is writable.
//! - [`faults_end_the_program_not_the_kernel`]: a null load, `ud2`, a load from the kernel half
//!   and a store into the read-only text each stop the program with the signal Linux would
//!   send; a system call outside the implemented set (`clone3`) stops it by name; the kernel
//!   runs on after each.
//! - [`a_killed_program_ends_and_the_next_one_can_be_killed_too`]: a program spinning in ring
//!   3 on the other CPU ends when killed (at a timer tick), twice in a row on the same CPU: the
//!   tick that ended the first was acknowledged, so the second still gets ticks.
//! - [`fpu_state_survives_switches_between_programs`]: two programs on one CPU, each keeping
//!   its own value in `xmm0` across 100 `sched_yield`s, both see their own value throughout
//!   (the switch saves and restores each task's x87/SSE state).

use super::TestResult;
use crate::linux::{Ended, Stop, run_program};
use crate::platform::sched;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hmm::abi::elf;

fn run(code: &[u8], bss: u64) -> Result<Ended, String> {
    run_program(&elf::minimal(code, bss), &[b"test"]).map_err(|e| format!("{e}"))
}

/// ```text
/// mov eax, 1; mov edi, 1; lea rsi, [rip + msg]; mov edx, 18; syscall   # write(1, msg, 18)
/// cmp rax, 18; jne 1f
/// mov eax, 60; mov edi, 7; syscall                                     # exit(7)
/// 1: mov eax, 60; mov edi, 1; syscall                                  # exit(1)
/// msg: .ascii "hello from ring 3\n"
/// ```
const HELLO: [u8; 72] = [
    0xb8, 0x01, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x35, 0x25, 0x00, 0x00, 0x00, 0xba, 0x12,
    0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x83, 0xf8, 0x12, 0x75, 0x0c, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0xbf, 0x07, 0x00,
    0x00, 0x00, 0x0f, 0x05, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x68, 0x65, 0x6c,
    0x6c, 0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d, 0x20, 0x72, 0x69, 0x6e, 0x67, 0x20, 0x33, 0x0a,
];

pub fn a_program_writes_and_exits_with_its_status(_: &crate::System) -> TestResult {
    let ended = run(&HELLO, 0)?;
    check!(ended == Ended::Exited(7), "{ended:?} (1: write did not return its length)");
    Ok(())
}

/// ```text
/// mov rax, [0x401000]; movabs rbx, 0x1122334455667788; cmp rax, rbx; jne 1f   # the file's data
/// mov rax, [0x401008]; or rax, [0x403ff8]; jnz 1f                              # .bss reads 0
/// mov qword ptr [0x403ff8], 5                                                  # and is writable
/// mov eax, 60; xor edi, edi; syscall
/// 1: mov eax, 60; mov edi, 1; syscall
/// ```
const DATA: [u8; 74] = [
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x10, 0x40, 0x00, 0x48, 0xbb, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x48,
    0x39, 0xd8, 0x75, 0x27, 0x48, 0x8b, 0x04, 0x25, 0x08, 0x10, 0x40, 0x00, 0x48, 0x0b, 0x04, 0x25, 0xf8, 0x3f, 0x40,
    0x00, 0x75, 0x15, 0x48, 0xc7, 0x04, 0x25, 0xf8, 0x3f, 0x40, 0x00, 0x05, 0x00, 0x00, 0x00, 0xb8, 0x3c, 0x00, 0x00,
    0x00, 0x31, 0xff, 0x0f, 0x05, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05,
];

pub fn segments_are_loaded_and_bss_is_zero(_: &crate::System) -> TestResult {
    let ended = run(&DATA, 0x3000)?;
    check!(ended == Ended::Exited(0), "{ended:?}");
    Ok(())
}

pub fn faults_end_the_program_not_the_kernel(_: &crate::System) -> TestResult {
    let segv = |address: u64| move |e: &Ended| matches!(e, Ended::Signalled { signal: "SIGSEGV", vector: 14, address: Some(a), .. } if *a == address);
    // mov rax, [0]
    let e = run(&[0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0], 0)?;
    check!(segv(0)(&e), "a null load: {e:?}");
    // ud2
    let e = run(&[0x0f, 0x0b], 0)?;
    check!(matches!(e, Ended::Signalled { signal: "SIGILL", vector: 6, rip: elf::MINIMAL_ENTRY, .. }), "ud2: {e:?}");
    // movabs rax, 0xffff800000000000; mov rax, [rax]: the kernel half is not the user's.
    let e = run(&[0x48, 0xb8, 0, 0, 0, 0, 0, 0x80, 0xff, 0xff, 0x48, 0x8b, 0x00], 0)?;
    check!(segv(0xffff_8000_0000_0000)(&e), "a load from the kernel half: {e:?}");
    // mov byte ptr [0x4000b0], 0: the text is read+exec.
    let e = run(&[0xc6, 0x04, 0x25, 0xb0, 0x00, 0x40, 0x00, 0x00], 0)?;
    check!(segv(elf::MINIMAL_ENTRY)(&e), "a store into the text: {e:?}");
    // mov eax, 435; syscall: clone3 is not implemented, and the report names it.
    let e = run(&[0xb8, 0xb3, 0x01, 0x00, 0x00, 0x0f, 0x05], 0)?;
    check!(
        e == Ended::Stopped(Stop::Unsupported { nr: 435, what: "clone3 (435)".into() }),
        "an unimplemented call: {e:?}"
    );
    // And the kernel runs programs on.
    check!(run(&HELLO, 0)? == Ended::Exited(7));
    Ok(())
}

/// `movabs r12, PATTERN`, then:
/// ```text
/// movq xmm0, r12; mov r13d, 100
/// 1: mov eax, 24; syscall               # sched_yield: another program may run
///    movq rbx, xmm0; cmp rbx, r12; jne 2f
///    dec r13d; jnz 1b
/// mov eax, 60; xor edi, edi; syscall    # exit(0)
/// 2: mov eax, 60; mov edi, 1; syscall   # exit(1): xmm0 changed under it
/// ```
fn sse_program(pattern: u64) -> Vec<u8> {
    let mut code = alloc::vec![0x49, 0xbc];
    code.extend_from_slice(&pattern.to_le_bytes());
    code.extend_from_slice(&[
        0x66, 0x49, 0x0f, 0x6e, 0xc4, 0x41, 0xbd, 0x64, 0x00, 0x00, 0x00, 0xb8, 0x18, 0x00, 0x00, 0x00, 0x0f, 0x05,
        0x66, 0x48, 0x0f, 0x7e, 0xc3, 0x4c, 0x39, 0xe3, 0x75, 0x0e, 0x41, 0xff, 0xcd, 0x75, 0xea, 0xb8, 0x3c, 0x00,
        0x00, 0x00, 0x31, 0xff, 0x0f, 0x05, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05,
    ]);
    code
}

pub fn fpu_state_survives_switches_between_programs(_: &crate::System) -> TestResult {
    let cpu = crate::platform::arch::smp::index();
    let spawn = |pattern: u64| {
        let file = elf::minimal(&sse_program(pattern), 0);
        sched::spawn_on(cpu, move || run_program(&file, &[b"sse"]).map_err(|e| format!("{e}")))
            .map_err(|e| format!("spawning a program task: {e:?}"))
    };
    let a = spawn(0x0123_4567_89ab_cdef)?;
    let b = spawn(0xfedc_ba98_7654_3210)?;
    for (name, h) in [("a", a), ("b", b)] {
        let ended = h.join(20_000).map_err(|e| format!("program {name}: {e:?}"))??;
        check!(ended == Ended::Exited(0), "program {name}: {ended:?} (1: its xmm0 changed across a switch)");
    }
    Ok(())
}

pub fn a_killed_program_ends_and_the_next_one_can_be_killed_too(_: &crate::System) -> TestResult {
    use core::sync::atomic::{AtomicUsize, Ordering};
    let cpu = (crate::platform::arch::smp::index() + 1) % crate::platform::arch::smp::count();
    // jmp $: spins in ring 3 until something ends it.
    let file = elf::minimal(&[0xeb, 0xfe], 0);
    for round in 0..2 {
        let task = alloc::sync::Arc::new(AtomicUsize::new(usize::MAX));
        let (t, f) = (task.clone(), file.clone());
        let h = sched::spawn_on(cpu, move || {
            t.store(sched::current(), Ordering::Release);
            run_program(&f, &[b"spin"]).map_err(|e| format!("{e}"))
        })
        .map_err(|e| format!("spawning: {e:?}"))?;
        let deadline = crate::platform::arch::time::Deadline::after_ms(5_000);
        while task.load(Ordering::Acquire) == usize::MAX && !deadline.passed() {
            sched::yield_now();
        }
        // Before or after it reaches ring 3, the signal ends it at its first trap from there.
        crate::platform::arch::user::kill(task.load(Ordering::Acquire), hmm::abi::signal::SIGKILL);
        let ended = h.join(10_000).map_err(|e| format!("round {round}: the killed program did not end: {e:?}"))??;
        check!(ended == Ended::Killed { signo: 9 }, "round {round}: {ended:?}");
    }
    Ok(())
}
