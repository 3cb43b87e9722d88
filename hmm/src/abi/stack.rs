//! A new process's initial stack, as Linux's `execve` leaves it for the C library's startup
//! code (`_start` reads it from `rsp`).
//!
//! From the initial `rsp` up: `argc`; the `argv` pointers and a null; the `envp` pointers and a
//! null; the auxiliary vector (`AT_*` key/value pairs ending with `AT_NULL`); then, above,
//! the 16 random bytes `AT_RANDOM` points at and the strings (arguments, environment,
//! `AT_EXECFN`, `AT_PLATFORM`), and 8 zero bytes at the very top. `rsp` is 16-byte aligned, as
//! the x86-64 ABI requires at process entry.

use alloc::vec;
use alloc::vec::Vec;

/// `AT_NULL`: the end of the auxiliary vector.
pub const AT_NULL: u64 = 0;
/// `AT_PHDR`: the program headers' address.
pub const AT_PHDR: u64 = 3;
/// `AT_PHENT`: the size of one program header.
pub const AT_PHENT: u64 = 4;
/// `AT_PHNUM`: their count.
pub const AT_PHNUM: u64 = 5;
/// `AT_PAGESZ`: the page size.
pub const AT_PAGESZ: u64 = 6;
/// `AT_BASE`: the interpreter's base (0: none).
pub const AT_BASE: u64 = 7;
/// `AT_FLAGS`.
pub const AT_FLAGS: u64 = 8;
/// `AT_ENTRY`: the program's entry point.
pub const AT_ENTRY: u64 = 9;
/// `AT_UID`, `AT_EUID`, `AT_GID`, `AT_EGID`.
pub const AT_UID: u64 = 11;
/// Effective user id.
pub const AT_EUID: u64 = 12;
/// Group id.
pub const AT_GID: u64 = 13;
/// Effective group id.
pub const AT_EGID: u64 = 14;
/// `AT_PLATFORM`: a string naming the machine.
pub const AT_PLATFORM: u64 = 15;
/// `AT_HWCAP`: CPUID.1:EDX on x86.
pub const AT_HWCAP: u64 = 16;
/// `AT_CLKTCK`: `times()` ticks per second.
pub const AT_CLKTCK: u64 = 17;
/// `AT_SECURE`: 0, not set-uid.
pub const AT_SECURE: u64 = 23;
/// `AT_RANDOM`: 16 random bytes (the stack protector's and pointer guard's seed).
pub const AT_RANDOM: u64 = 25;
/// `AT_HWCAP2`.
pub const AT_HWCAP2: u64 = 26;
/// `AT_EXECFN`: the file name executed.
pub const AT_EXECFN: u64 = 31;

/// What the auxiliary vector says of the program.
#[derive(Debug, Clone, Default)]
pub struct Aux {
    /// `AT_PHDR`.
    pub phdr: u64,
    /// `AT_PHNUM`.
    pub phnum: u64,
    /// `AT_ENTRY`.
    pub entry: u64,
    /// `AT_HWCAP`.
    pub hwcap: u64,
}

/// The stack's bytes from the initial `rsp` to the top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackImage {
    /// The initial `rsp`: the address of `bytes[0]` (`argc`).
    pub rsp: u64,
    /// The bytes, to be copied to `rsp`.
    pub bytes: Vec<u8>,
}

/// The initial stack below `top` (exclusive, 16-byte aligned) for `argv` and `envp` (each
/// string without its terminating zero; `argv[0]` is also `AT_EXECFN`), with `random` as
/// `AT_RANDOM`'s bytes.
pub fn initial(top: u64, argv: &[&[u8]], envp: &[&[u8]], aux: &Aux, random: [u8; 16]) -> StackImage {
    // The strings and random bytes, laid out downwards from the 8 zero bytes at the top.
    let platform: &[u8] = b"x86_64";
    let mut at = top - 8;
    let mut put = |s: &[u8]| {
        at -= s.len() as u64 + 1;
        at
    };
    let argv_at: Vec<u64> = argv.iter().map(|s| put(s)).collect();
    let envp_at: Vec<u64> = envp.iter().map(|s| put(s)).collect();
    let platform_at = put(platform);
    // 16 random bytes, 16-aligned, below the strings.
    let random_at = (platform_at - 16) & !0xf;
    let mut strings: Vec<(u64, &[u8])> = Vec::new();
    strings.extend(argv_at.iter().copied().zip(argv.iter().copied()));
    strings.extend(envp_at.iter().copied().zip(envp.iter().copied()));
    strings.push((platform_at, platform));
    let execfn = argv_at.first().copied().unwrap_or(platform_at);
    let auxv: [(u64, u64); 17] = [
        (AT_PHDR, aux.phdr),
        (AT_PHENT, crate::abi::elf::PHENT as u64),
        (AT_PHNUM, aux.phnum),
        (AT_PAGESZ, 4096),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, aux.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_PLATFORM, platform_at),
        (AT_HWCAP, aux.hwcap),
        (AT_CLKTCK, 100),
        (AT_SECURE, 0),
        (AT_RANDOM, random_at),
        (AT_EXECFN, execfn),
    ];
    let words = 1 + (argv.len() + 1) + (envp.len() + 1) + 2 * (auxv.len() + 1);
    let rsp = (random_at - 8 * words as u64) & !0xf;
    let mut bytes = vec![0u8; (top - rsp) as usize];
    let mut word = |i: usize, v: u64| bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    let mut i = 0;
    word(i, argv.len() as u64);
    i += 1;
    for &a in argv_at.iter().chain(core::iter::once(&0)).chain(&envp_at).chain(core::iter::once(&0)) {
        word(i, a);
        i += 1;
    }
    for (k, v) in auxv.iter().copied().chain(core::iter::once((AT_NULL, 0))) {
        word(i, k);
        word(i + 1, v);
        i += 2;
    }
    let off = |va: u64| (va - rsp) as usize;
    for (va, s) in strings {
        bytes[off(va)..off(va) + s.len()].copy_from_slice(s);
    }
    bytes[off(random_at)..off(random_at) + 16].copy_from_slice(&random);
    StackImage { rsp, bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `u64` at `va` of the image.
    fn at(img: &StackImage, va: u64) -> u64 {
        let o = (va - img.rsp) as usize;
        u64::from_le_bytes(img.bytes[o..o + 8].try_into().unwrap())
    }
    /// The zero-terminated string at `va`.
    fn cstr(img: &StackImage, va: u64) -> &[u8] {
        let o = (va - img.rsp) as usize;
        let n = img.bytes[o..].iter().position(|&b| b == 0).unwrap();
        &img.bytes[o..o + n]
    }

    #[test]
    fn the_startup_code_finds_argc_argv_envp_and_the_auxiliary_vector() {
        let top = 0x7fff_0000_0000;
        let aux = Aux { phdr: 0x400040, phnum: 9, entry: 0x401000, hwcap: 0x178bfbff };
        let img = initial(top, &[b"/hmm-tests", b"-v"], &[b"HOME=/"], &aux, [7; 16]);
        assert_eq!(img.rsp % 16, 0, "rsp is 16-byte aligned at entry");
        assert_eq!(img.rsp + img.bytes.len() as u64, top);
        assert_eq!(&img.bytes[img.bytes.len() - 8..], &[0; 8], "8 zero bytes at the top");
        let w = |i: u64| at(&img, img.rsp + 8 * i);
        assert_eq!(w(0), 2, "argc");
        assert_eq!(cstr(&img, w(1)), b"/hmm-tests");
        assert_eq!(cstr(&img, w(2)), b"-v");
        assert_eq!(w(3), 0);
        assert_eq!(cstr(&img, w(4)), b"HOME=/");
        assert_eq!(w(5), 0);
        let mut auxv = alloc::collections::BTreeMap::new();
        let mut i = 6;
        while w(i) != AT_NULL {
            auxv.insert(w(i), w(i + 1));
            i += 2;
        }
        assert_eq!(auxv[&AT_PHDR], 0x400040);
        assert_eq!(auxv[&AT_PHENT], 56);
        assert_eq!(auxv[&AT_PHNUM], 9);
        assert_eq!(auxv[&AT_PAGESZ], 4096);
        assert_eq!(auxv[&AT_ENTRY], 0x401000);
        assert_eq!(auxv[&AT_HWCAP], 0x178bfbff);
        assert_eq!(auxv[&AT_SECURE], 0);
        assert_eq!(cstr(&img, auxv[&AT_PLATFORM]), b"x86_64");
        assert_eq!(cstr(&img, auxv[&AT_EXECFN]), b"/hmm-tests");
        let r = auxv[&AT_RANDOM];
        assert_eq!(r % 16, 0);
        let o = (r - img.rsp) as usize;
        assert_eq!(&img.bytes[o..o + 16], &[7; 16]);
        // The pointer block ends below the random bytes and the strings.
        assert!(img.rsp + 8 * (i + 2) <= r);
    }

    #[test]
    fn no_arguments_still_gives_a_valid_stack() {
        let img = initial(0x10_0000, &[], &[], &Aux::default(), [0; 16]);
        assert_eq!(img.rsp % 16, 0);
        assert_eq!(at(&img, img.rsp), 0);
        assert_eq!(at(&img, img.rsp + 8), 0, "argv ends at once");
        assert_eq!(at(&img, img.rsp + 16), 0, "envp too");
    }
}
