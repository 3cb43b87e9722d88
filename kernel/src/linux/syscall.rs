//! The system calls a static program may make, dispatched by number (`hmm::abi::sysno`).
//!
//! Every call here does what Linux 6.1 does for a single-threaded process with standard input,
//! output and error on the console and no file system yet: `write` to fds 1 and 2 goes to the
//! serial console; `open` of any path answers `ENOENT`. A call not listed stops the program
//! ([`super::Stop::Unsupported`]) rather than returning `-ENOSYS`, so nothing passes by
//! accident; the exceptions answer as Linux does when a feature is absent, and log it.
//!
//! Invariant: no call holds the address space's lock while it copies from or to user memory
//! (a copy may fault, and the fault handler takes that lock).

use alloc::sync::Arc;
use alloc::vec;

use hmm::abi::{errno::*, sysno};
use hmm::mm::space::{Advice, MapRequest, Placement, RemapFlags};
use hmm::mm::vma::Prot;

use super::{PROCESS, Stop, next_random};
use crate::mm::uspace::{self, Space, User};
use crate::platform::arch::trap::TrapFrame;
use crate::platform::arch::user::{self, After, Exit};
use crate::platform::arch::{serial, time};
use crate::platform::sched;

/// A call's result: the value, or an errno (returned negated).
type Ret = Result<u64, i64>;

const PAGE: u64 = 4096;

fn page_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE - 1).map(|v| v & !(PAGE - 1))
}

fn mm_err(e: hmm::mm::Error) -> i64 {
    i64::from(e.errno())
}

fn fault(_: uspace::UserFault) -> i64 {
    EFAULT
}

/// The calling program's address space, with user access.
fn current() -> (Arc<Space>, User) {
    uspace::installed().expect("a system call comes from a task running a program in its address space")
}

/// Handles the call in `f` (number in `rax`, arguments in `rdi`, `rsi`, `rdx`, `r10`, `r8`,
/// `r9`) and writes the result to `rax`.
pub fn handle(f: &mut TrapFrame) -> After {
    let nr = f.rax;
    let a = [f.rdi, f.rsi, f.rdx, f.r10, f.r8, f.r9];
    let ret: Ret = match nr {
        0 => read(a[0], a[2]),
        1 => write(a[0], a[1], a[2]),
        3 => close(a[0]),
        5 => fstat(a[0], a[1]),
        9 => mmap(a),
        10 => mprotect(a[0], a[1], a[2]),
        11 => munmap(a[0], a[1]),
        12 => Ok(brk(a[0])),
        16 => ioctl(a[0]),
        20 => writev(a[0], a[1], a[2]),
        24 => {
            sched::yield_now();
            Ok(0)
        }
        25 => mremap(a),
        28 => madvise(a[0], a[1], a[2]),
        // getpid, gettid: the one process and its one thread; getppid: no parent.
        39 | 186 => Ok(1),
        110 => Ok(0),
        // getuid, getgid, geteuid, getegid: root.
        102 | 104 | 107 | 108 => Ok(0),
        60 | 231 => return After::End(Exit::Exited(a[0] as i32)),
        63 => uname(a[0]),
        2 | 257 | 21 | 269 | 89 | 267 => {
            // open, openat, access, faccessat, readlink, readlinkat: no file exists yet.
            log::debug!("{}: no file system yet, ENOENT", sysno::describe(nr));
            Err(ENOENT)
        }
        158 => return arch_prctl(f, a[0], a[1]),
        218 => Ok(1),
        228 => clock_gettime(a[1]),
        262 => newfstatat(a[0], a[1], a[2], a[3]),
        273 => Ok(0),
        302 => return prlimit64(f, a[1], a[2], a[3]),
        318 => getrandom(a[0], a[1]),
        334 => {
            log::debug!("rseq: not supported, ENOSYS (the C library runs on without it)");
            Err(ENOSYS)
        }
        _ => return unsupported(nr, sysno::describe(nr)),
    };
    f.rax = match ret {
        Ok(v) => v,
        Err(e) => (-e) as u64,
    };
    After::Return
}

/// Stops the program: a call outside the implemented set.
fn unsupported(nr: u64, what: alloc::string::String) -> After {
    log::error!("system call {what} is not implemented: the program is stopped");
    if let Some(p) = PROCESS[sched::current()].lock().as_mut() {
        p.stop = Some(Stop::Unsupported { nr, what });
    }
    After::End(Exit::Exited(-1))
}

fn read(fd: u64, _len: u64) -> Ret {
    match fd {
        // Standard input: the console has nothing to read.
        0 => Ok(0),
        _ => Err(EBADF),
    }
}

fn write(fd: u64, buf: u64, len: u64) -> Ret {
    if fd != 1 && fd != 2 {
        return Err(EBADF);
    }
    let (_, u) = current();
    let mut chunk = vec![0u8; len.min(4096) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        u.read(buf + done, &mut chunk[..n]).map_err(fault)?;
        serial::print_bytes(&chunk[..n]);
        done += n as u64;
    }
    Ok(len)
}

fn writev(fd: u64, iov: u64, count: u64) -> Ret {
    if count > 1024 {
        return Err(EINVAL);
    }
    let (_, u) = current();
    let mut total = 0;
    for i in 0..count {
        let base = u.read_u64(iov + 16 * i).map_err(fault)?;
        let len = u.read_u64(iov + 16 * i + 8).map_err(fault)?;
        total += write(fd, base, len)?;
    }
    Ok(total)
}

fn close(fd: u64) -> Ret {
    if fd <= 2 { Ok(0) } else { Err(EBADF) }
}

fn ioctl(fd: u64) -> Ret {
    // The console is not a terminal here (no TCGETS, no window size).
    if fd <= 2 { Err(ENOTTY) } else { Err(EBADF) }
}

/// `struct stat` of fds 0 to 2: a character device.
fn stat_console(statbuf: u64) -> Ret {
    let (_, u) = current();
    let mut st = [0u8; 144];
    st[16..24].copy_from_slice(&1u64.to_le_bytes()); // st_nlink
    st[24..28].copy_from_slice(&(0o020000u32 | 0o620).to_le_bytes()); // st_mode: S_IFCHR | rw--w----
    st[40..48].copy_from_slice(&(136u64 << 8).to_le_bytes()); // st_rdev: /dev/pts/0 (136, 0)
    st[56..64].copy_from_slice(&1024u64.to_le_bytes()); // st_blksize
    u.write(statbuf, &st).map_err(fault)?;
    Ok(0)
}

fn fstat(fd: u64, statbuf: u64) -> Ret {
    if fd <= 2 { stat_console(statbuf) } else { Err(EBADF) }
}

/// `AT_EMPTY_PATH`: the call is about `dirfd` itself.
const AT_EMPTY_PATH: u64 = 0x1000;

fn newfstatat(dirfd: u64, path: u64, statbuf: u64, flags: u64) -> Ret {
    let (_, u) = current();
    let mut first = [0u8; 1];
    u.read(path, &mut first).map_err(fault)?;
    if first[0] == 0 && flags & AT_EMPTY_PATH != 0 {
        return fstat(dirfd, statbuf);
    }
    Err(ENOENT)
}

const MAP_SHARED: u64 = 0x01;
const MAP_PRIVATE: u64 = 0x02;
const MAP_TYPE: u64 = 0x0f;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_POPULATE: u64 = 0x8000;
const MAP_HUGETLB: u64 = 0x40000;
const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
/// Flags that change nothing here: `MAP_GROWSDOWN`, `MAP_DENYWRITE`, `MAP_EXECUTABLE`,
/// `MAP_LOCKED`, `MAP_NORESERVE`, `MAP_NONBLOCK`, `MAP_STACK`.
const MAP_IGNORED: u64 = 0x100 | 0x800 | 0x1000 | 0x2000 | 0x4000 | 0x10000 | 0x20000;
/// `MAP_HUGETLB`'s page size, log2, in bits 26 to 31 (0: the default, 2 MiB).
const MAP_HUGE_SHIFT: u64 = 26;

fn mmap(a: [u64; 6]) -> Ret {
    let [addr, len, prot, flags, fd, _off] = a;
    let prot = Prot::from_bits(prot as u32).ok_or(EINVAL)?;
    let shared = match flags & MAP_TYPE {
        MAP_SHARED | 0x03 => true,
        MAP_PRIVATE => false,
        _ => return Err(EINVAL),
    };
    let huge_size = (flags >> MAP_HUGE_SHIFT) & 0x3f;
    let known = MAP_TYPE | MAP_FIXED | MAP_ANONYMOUS | MAP_POPULATE | MAP_HUGETLB | MAP_FIXED_NOREPLACE | MAP_IGNORED;
    if flags & !known & !(0x3f << MAP_HUGE_SHIFT) != 0 || (huge_size != 0 && huge_size != 21) {
        return Err(EINVAL);
    }
    if flags & MAP_ANONYMOUS == 0 {
        // No file can be mapped yet: the console's fds are not mappable, others do not exist.
        return Err(if fd as i64 >= 0 && fd <= 2 { ENODEV } else { EBADF });
    }
    let placement = if flags & MAP_FIXED_NOREPLACE != 0 {
        Placement::FixedNoReplace
    } else if flags & MAP_FIXED != 0 {
        Placement::Fixed
    } else {
        Placement::Hint
    };
    let req = MapRequest {
        addr,
        len,
        prot,
        shared,
        file: None,
        placement,
        hugetlb: flags & MAP_HUGETLB != 0,
        populate: flags & MAP_POPULATE != 0,
    };
    let (space, _) = current();
    let r = space.lock().mmap(req);
    r.map_err(mm_err)
}

fn mprotect(addr: u64, len: u64, prot: u64) -> Ret {
    let prot = Prot::from_bits(prot as u32).ok_or(EINVAL)?;
    let (space, _) = current();
    let r = space.lock().mprotect(addr, len, prot);
    r.map(|()| 0).map_err(mm_err)
}

fn munmap(addr: u64, len: u64) -> Ret {
    let (space, _) = current();
    let r = space.lock().munmap(addr, len);
    r.map(|()| 0).map_err(mm_err)
}

const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const MREMAP_DONTUNMAP: u64 = 4;

fn mremap(a: [u64; 6]) -> Ret {
    let [old, old_len, new_len, flags, new_addr, _] = a;
    if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
        return Err(EINVAL);
    }
    let f = RemapFlags {
        may_move: flags & MREMAP_MAYMOVE != 0,
        fixed: flags & MREMAP_FIXED != 0,
        dont_unmap: flags & MREMAP_DONTUNMAP != 0,
    };
    let (space, _) = current();
    let r = space.lock().mremap(old, old_len, new_len, f, new_addr);
    r.map_err(mm_err)
}

fn madvise(addr: u64, len: u64, advice: u64) -> Ret {
    let advice = match advice {
        0 => Advice::Normal,
        3 => Advice::WillNeed,
        4 => Advice::DontNeed,
        8 => Advice::Free,
        14 => Advice::HugePage,
        15 => Advice::NoHugePage,
        // MADV_RANDOM, MADV_SEQUENTIAL, MADV_DONTFORK, MADV_DOFORK, MADV_DONTDUMP,
        // MADV_DODUMP: hints that change nothing here.
        1 | 2 | 10 | 11 | 16 | 17 => return Ok(0),
        _ => return Err(EINVAL),
    };
    let (space, _) = current();
    let r = space.lock().madvise(addr, len, advice);
    r.map(|()| 0).map_err(mm_err)
}

/// `brk`: moves the program break (pages mapped or unmapped at its end); answers the break.
fn brk(new: u64) -> u64 {
    let task = sched::current();
    let (start, cur) = match PROCESS[task].lock().as_ref() {
        Some(p) => p.brk,
        None => return 0,
    };
    if new < start {
        return cur;
    }
    let (Some(old_end), Some(new_end)) = (page_up(cur), page_up(new)) else { return cur };
    let (space, _) = current();
    let ok = if new_end > old_end {
        let req = MapRequest::anon(new_end - old_end, Prot::RW).fixed_noreplace(old_end);
        let r = space.lock().mmap(req);
        r.is_ok()
    } else if new_end < old_end {
        let r = space.lock().munmap(new_end, old_end - new_end);
        r.is_ok()
    } else {
        true
    };
    if !ok {
        return cur;
    }
    if let Some(p) = PROCESS[task].lock().as_mut() {
        p.brk.1 = new;
    }
    new
}

fn uname(buf: u64) -> Ret {
    let (_, u) = current();
    let mut un = [0u8; 6 * 65];
    for (i, field) in ["Linux", "hmmk", "6.1.0-hmmk", "#1 SMP", "x86_64", "(none)"].iter().enumerate() {
        un[i * 65..i * 65 + field.len()].copy_from_slice(field.as_bytes());
    }
    u.write(buf, &un).map_err(fault)?;
    Ok(0)
}

const ARCH_SET_GS: u64 = 0x1001;
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
const ARCH_GET_GS: u64 = 0x1004;

fn arch_prctl(f: &mut TrapFrame, code: u64, addr: u64) -> After {
    let ret: Ret = match code {
        ARCH_SET_FS if addr < hmm::mm::pagetable::USER_END => {
            user::set_fs_base(addr);
            Ok(0)
        }
        ARCH_SET_FS => Err(EPERM),
        ARCH_GET_FS => {
            let (_, u) = current();
            u.write_u64(addr, user::fs_base()).map(|()| 0).map_err(fault)
        }
        ARCH_GET_GS => {
            let (_, u) = current();
            u.write_u64(addr, 0).map(|()| 0).map_err(fault)
        }
        ARCH_SET_GS => return unsupported(158, "arch_prctl (158) with ARCH_SET_GS: user GS bases are not kept".into()),
        // ARCH_CET_STATUS and the rest: Linux 6.1 without those features answers EINVAL.
        _ => Err(EINVAL),
    };
    f.rax = match ret {
        Ok(v) => v,
        Err(e) => (-e) as u64,
    };
    After::Return
}

fn clock_gettime(ts: u64) -> Ret {
    let ns = time::now_ns().unwrap_or(0);
    let (_, u) = current();
    u.write_u64(ts, ns / 1_000_000_000).map_err(fault)?;
    u.write_u64(ts + 8, ns % 1_000_000_000).map_err(fault)?;
    Ok(0)
}

const RLIM_INFINITY: u64 = u64::MAX;

fn prlimit64(f: &mut TrapFrame, resource: u64, new: u64, old: u64) -> After {
    if new != 0 {
        return unsupported(302, "prlimit64 (302) setting a limit".into());
    }
    let (cur, max) = match resource {
        3 => (super::STACK_SIZE, RLIM_INFINITY), // RLIMIT_STACK
        7 => (1024, 4096),                       // RLIMIT_NOFILE
        0..=15 => (RLIM_INFINITY, RLIM_INFINITY),
        _ => {
            f.rax = (-EINVAL) as u64;
            return After::Return;
        }
    };
    let ret: Ret = if old == 0 {
        Ok(0)
    } else {
        let (_, u) = current();
        u.write_u64(old, cur).and_then(|()| u.write_u64(old + 8, max)).map(|()| 0).map_err(fault)
    };
    f.rax = match ret {
        Ok(v) => v,
        Err(e) => (-e) as u64,
    };
    After::Return
}

fn getrandom(buf: u64, len: u64) -> Ret {
    let len = len.min(1 << 20);
    let task = sched::current();
    let mut bytes = vec![0u8; len as usize];
    if let Some(p) = PROCESS[task].lock().as_mut() {
        for c in bytes.chunks_mut(8) {
            let w = next_random(&mut p.random).to_le_bytes();
            c.copy_from_slice(&w[..c.len()]);
        }
    }
    let (_, u) = current();
    u.write(buf, &bytes).map_err(fault)?;
    Ok(len)
}
