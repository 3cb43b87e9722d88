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
use alloc::vec::Vec;

use hmm::abi::{errno::*, sysno};
use hmm::mm::space::{Advice, MapRequest, Placement, RemapFlags};
use hmm::mm::vma::Prot;

use super::files::{self, File};
use super::signals::{self, ERESTARTSYS};
use super::{PROCESS, Process, Stop, TABLE, current_pid, next_random, run_process};
use crate::mm::uspace::{self, Space, User};
use crate::platform::arch::trap::TrapFrame;
use crate::platform::arch::user::{self, After, Exit};
use crate::platform::arch::{serial, time};
use crate::platform::sched;
use hmm::abi::signal;

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
    // File descriptors are `unsigned int` (the calls below that take one first).
    let fd = a[0] as u32 as u64;
    if let Some(p) = PROCESS[sched::current()].lock().as_mut() {
        p.last_nr = nr;
    }
    if log::log_enabled!(log::Level::Trace) {
        log::trace!("pid {}: {} at {:#x}", current_pid(), sysno::describe(nr), f.rip);
    }
    let ret: Ret = match nr {
        0 => read(fd, a[1], a[2]),
        1 => write(fd, a[1], a[2]),
        3 => close(fd),
        5 => fstat(fd, a[1]),
        9 => mmap(a),
        10 => mprotect(a[0], a[1], a[2]),
        11 => munmap(a[0], a[1]),
        12 => Ok(brk(a[0])),
        13 => signals::rt_sigaction(a[0], a[1], a[2], a[3]),
        14 => signals::rt_sigprocmask(a[0], a[1], a[2], a[3]),
        15 => return signals::rt_sigreturn(f),
        34 => signals::sleep(None).map(|()| 0).map_err(|_| EINTR),
        35 => nanosleep(a[0], a[1]),
        37 => signals::alarm(a[0] as u32 as u64),
        16 => ioctl(fd, a[1] as u32 as u64, a[2]),
        20 => writev(fd, a[1], a[2]),
        24 => {
            sched::yield_now();
            Ok(0)
        }
        25 => mremap(a),
        28 => madvise(a[0], a[1], a[2]),
        // getpid, gettid (one thread per process: its tid is its pid), getppid.
        39 | 186 => Ok(u64::from(current_pid())),
        110 => Ok(TABLE.lock().procs.get(&current_pid()).map_or(0, |e| u64::from(e.parent))),
        109 => setpgid(i64::from(a[0] as i32), i64::from(a[1] as i32)),
        // getpgrp, getpgid(pid), getsid: the session is the first process's.
        111 => getpgid(0),
        121 => getpgid(i64::from(a[0] as i32)),
        124 => Ok(1),
        56 => return clone(f, a[0], a[1], a[2], a[3]),
        57 => return answer(f, fork(f, None, 0, None)),
        // pid_t and int arguments are 32 bits: the upper half of the register is not theirs.
        61 => return wait4(f, i64::from(a[0] as i32), a[1], a[2] as u32 as u64, a[3]),
        62 => return kill(f, i64::from(a[0] as i32), a[1] as u32 as u64),
        // getuid, getgid, geteuid, getegid: root.
        102 | 104 | 107 | 108 => Ok(0),
        60 | 231 => return After::End(Exit::Exited(a[0] as i32)),
        63 => uname(a[0]),
        2 => open(a[0], a[1]),
        // openat: relative paths have no directory to be relative to yet; absolute ones open.
        257 => open(a[1], a[2]),
        8 => lseek(fd, a[1] as i64, a[2]),
        17 => pread(fd, a[1], a[2], a[3]),
        18 => pwrite(fd, a[1], a[2], a[3]),
        77 => ftruncate(fd, a[1]),
        21 | 269 | 89 | 267 => {
            // access, faccessat, readlink, readlinkat: no file system yet.
            log::debug!("{}: no file system yet, ENOENT", sysno::describe(nr));
            Err(ENOENT)
        }
        158 => return arch_prctl(f, a[0], a[1]),
        218 => Ok(1),
        228 => clock_gettime(a[1]),
        230 if a[1] == 0 => nanosleep(a[2], a[3]),
        // tkill, tgkill: one thread per process, so the thread is the process.
        200 => return kill(f, i64::from(a[0] as i32), a[1] as u32 as u64),
        234 => return kill(f, i64::from(a[1] as i32), a[2] as u32 as u64),
        262 => newfstatat(i64::from(a[0] as i32), a[1], a[2], a[3] as u32 as u64),
        273 => Ok(0),
        302 => return prlimit64(f, a[1], a[2], a[3]),
        318 => getrandom(a[0], a[1]),
        334 => {
            log::debug!("rseq: not supported, ENOSYS (the C library runs on without it)");
            Err(ENOSYS)
        }
        _ => return unsupported(nr, sysno::describe(nr)),
    };
    if log::log_enabled!(log::Level::Trace) {
        log::trace!("pid {}: {} {:x?} -> {ret:?}", current_pid(), sysno::describe(nr), &a[..3]);
    }
    answer(f, ret)
}

/// Puts `ret` in `rax` and returns to the program.
fn answer(f: &mut TrapFrame, ret: Ret) -> After {
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

fn read(fd: u64, buf: u64, len: u64) -> Ret {
    match file(fd)? {
        // The console has nothing to read.
        File::Console => Ok(0),
        File::Dmirror(_) => Err(EINVAL),
        File::Urandom => getrandom(buf, len),
        File::Mem { file, pos, .. } => {
            let mut p = pos.lock();
            let n = mem_read(&file, *p, buf, len)?;
            *p += n;
            Ok(n)
        }
    }
}

/// Reads `len` bytes of `file` from `offset` into user memory at `buf`.
fn mem_read(file: &hmm::mm::file::MemFile, offset: u64, buf: u64, len: u64) -> Ret {
    let (_, u) = current();
    let mut chunk = vec![0u8; len.min(1 << 16) as usize];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(chunk.len() as u64) as usize;
        let n = file.read_at(offset + done, &mut chunk[..want]);
        if n == 0 {
            break;
        }
        u.write(buf + done, &chunk[..n]).map_err(fault)?;
        done += n as u64;
    }
    Ok(done)
}

/// Writes `len` bytes from user memory at `buf` into `file` at `offset`.
fn mem_write(file: &hmm::mm::file::MemFile, offset: u64, buf: u64, len: u64) -> Ret {
    let (_, u) = current();
    let mut chunk = vec![0u8; len.min(1 << 16) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        u.read(buf + done, &mut chunk[..n]).map_err(fault)?;
        file.write_at(offset + done, &chunk[..n]).map_err(mm_err)?;
        done += n as u64;
    }
    Ok(done)
}

fn pread(fd: u64, buf: u64, len: u64, offset: u64) -> Ret {
    match file(fd)? {
        File::Mem { file, .. } => mem_read(&file, offset, buf, len),
        _ => Err(ESPIPE),
    }
}

fn pwrite(fd: u64, buf: u64, len: u64, offset: u64) -> Ret {
    match file(fd)? {
        File::Mem { file, writable: true, .. } => mem_write(&file, offset, buf, len),
        File::Mem { .. } => Err(EBADF),
        _ => Err(ESPIPE),
    }
}

fn lseek(fd: u64, offset: i64, whence: u64) -> Ret {
    let File::Mem { file, pos, .. } = file(fd)? else { return Err(ESPIPE) };
    let mut p = pos.lock();
    let base = match whence {
        0 => 0,
        1 => *p as i64,
        2 => file.len() as i64,
        _ => return Err(EINVAL),
    };
    let to = base.checked_add(offset).filter(|&t| t >= 0).ok_or(EINVAL)?;
    *p = to as u64;
    Ok(to as u64)
}

fn ftruncate(fd: u64, len: u64) -> Ret {
    match file(fd)? {
        File::Mem { file, writable: true, .. } => file.set_len(len).map(|()| 0).map_err(mm_err),
        _ => Err(EINVAL),
    }
}

/// The file behind `fd` in the calling process.
fn file(fd: u64) -> Result<File, i64> {
    PROCESS[sched::current()].lock().as_ref().and_then(|p| p.files.get(fd).cloned()).ok_or(EBADF)
}

fn write(fd: u64, buf: u64, len: u64) -> Ret {
    match file(fd)? {
        File::Console => {}
        File::Mem { file, pos, writable: true } => {
            let mut p = pos.lock();
            let n = mem_write(&file, *p, buf, len)?;
            *p += n;
            return Ok(n);
        }
        File::Mem { .. } => return Err(EBADF),
        // Writing to /dev/urandom mixes entropy in; here it is accepted and dropped.
        File::Urandom => return Ok(len),
        File::Dmirror(_) => return Err(EINVAL),
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
    let f = PROCESS[sched::current()].lock().as_mut().ok_or(EBADF)?.files.remove(fd)?;
    files::release(f);
    Ok(0)
}

/// The zero-terminated string at `at` (at most 4096 bytes).
fn cstr(u: &User, at: u64) -> Result<Vec<u8>, i64> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.len() < 4096 {
        u.read(at + out.len() as u64, &mut b).map_err(fault)?;
        if b[0] == 0 {
            return Ok(out);
        }
        out.push(b[0]);
    }
    Err(hmm::abi::errno::ERANGE)
}

fn open(path: u64, flags: u64) -> Ret {
    let (_, u) = current();
    let path = cstr(&u, path)?;
    // Opening may take the address space's lock (a dmirror file's notifier): the process's
    // files are taken out while it runs, then put back.
    let task = sched::current();
    let mut fs = PROCESS[task].lock().as_mut().map(|p| core::mem::take(&mut p.files)).ok_or(EBADF)?;
    let r = files::open(&mut fs, &path, flags);
    if let Some(p) = PROCESS[task].lock().as_mut() {
        p.files = fs;
    }
    r
}

const TCGETS: u64 = 0x5401;
const TIOCGWINSZ: u64 = 0x5413;

/// The console (fds 0 to 2) is a terminal, as a serial console is: `TCGETS` gives its
/// settings (so the C library line-buffers output to it) and `TIOCGWINSZ` 24 × 80.
fn ioctl(fd: u64, cmd: u64, arg: u64) -> Ret {
    if let File::Dmirror(d) = file(fd)? {
        return files::dmirror_ioctl(&d, cmd, arg);
    }
    let (_, u) = current();
    match cmd {
        TCGETS => {
            // struct termios: c_iflag ICRNL|IXON, c_oflag OPOST|ONLCR, c_cflag B115200|CS8|CREAD|HUPCL|CLOCAL,
            // c_lflag ISIG|ICANON|ECHO|ECHOE|ECHOK|ECHOCTL|ECHOKE|IEXTEN, c_line 0, c_cc (19).
            let mut t = [0u8; 36];
            for (i, v) in [0o2400u32, 0o5, 0o10000 | 0o7 | 0o60 | 0o200 | 0o2000 | 0o4000, 0o105073].iter().enumerate()
            {
                t[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
            t[17..17 + 7].copy_from_slice(&[3, 28, 127, 21, 4, 0, 1]); // VINTR VQUIT VERASE VKILL VEOF VTIME VMIN
            u.write(arg, &t).map(|()| 0).map_err(fault)
        }
        TIOCGWINSZ => {
            let w: [u16; 4] = [24, 80, 0, 0];
            let b: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            u.write(arg, &b).map(|()| 0).map_err(fault)
        }
        _ => Err(ENOTTY),
    }
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
    if let File::Mem { file, .. } = file(fd)? {
        // A regular file (S_IFREG, rw-------) of its size.
        let (_, u) = current();
        let mut st = [0u8; 144];
        st[8..16].copy_from_slice(&file.id().to_le_bytes()); // st_ino
        st[16..24].copy_from_slice(&1u64.to_le_bytes()); // st_nlink
        st[24..28].copy_from_slice(&(0o100000u32 | 0o600).to_le_bytes());
        st[48..56].copy_from_slice(&file.len().to_le_bytes()); // st_size
        st[56..64].copy_from_slice(&4096u64.to_le_bytes()); // st_blksize
        st[64..72].copy_from_slice(&file.len().div_ceil(512).to_le_bytes()); // st_blocks
        u.write(statbuf, &st).map_err(fault)?;
        return Ok(0);
    }
    // The console and the device files are character devices.
    stat_console(statbuf)
}

/// `AT_EMPTY_PATH`: the call is about `dirfd` itself.
const AT_EMPTY_PATH: u64 = 0x1000;

fn newfstatat(dirfd: i64, path: u64, statbuf: u64, flags: u64) -> Ret {
    let (_, u) = current();
    let mut first = [0u8; 1];
    u.read(path, &mut first).map_err(fault)?;
    if first[0] == 0 && flags & AT_EMPTY_PATH != 0 {
        return if dirfd < 0 { Err(EBADF) } else { fstat(dirfd as u64, statbuf) };
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
    let file = if flags & MAP_ANONYMOUS == 0 {
        match file(fd as u32 as u64)? {
            File::Mem { file, writable, .. } => {
                if shared && prot.write() && !writable {
                    return Err(hmm::abi::errno::EACCES);
                }
                Some((file, a[5]))
            }
            // The console, /dev/urandom, and (for now) the dmirror device files are not mappable.
            _ => return Err(ENODEV),
        }
    } else {
        None
    };
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
        file,
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
    answer(f, ret)
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
        _ => return answer(f, Err(EINVAL)),
    };
    let ret: Ret = if old == 0 {
        Ok(0)
    } else {
        let (_, u) = current();
        u.write_u64(old, cur).and_then(|()| u.write_u64(old + 8, max)).map(|()| 0).map_err(fault)
    };
    answer(f, ret)
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

const CLONE_PARENT_SETTID: u64 = 0x0010_0000;
const CLONE_CHILD_CLEARTID: u64 = 0x0020_0000;
const CLONE_CHILD_SETTID: u64 = 0x0100_0000;
/// The exit signal in `clone`'s low byte.
const CSIGNAL: u64 = 0xff;

/// `clone` as `fork` uses it (glibc's: `CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD`,
/// no new stack); threads (`CLONE_VM`, `CLONE_THREAD`, ...) are not implemented.
fn clone(f: &mut TrapFrame, flags: u64, stack: u64, parent_tid: u64, child_tid: u64) -> After {
    let known = CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID | CLONE_CHILD_SETTID | CSIGNAL;
    if flags & !known != 0 || flags & CSIGNAL != u64::from(signal::SIGCHLD) || stack != 0 {
        return unsupported(
            56,
            alloc::format!("clone (56) with flags {flags:#x}: only fork's (threads are not implemented)"),
        );
    }
    let set = (flags & CLONE_CHILD_SETTID != 0).then_some(child_tid);
    let clear = if flags & CLONE_CHILD_CLEARTID != 0 { child_tid } else { 0 };
    let ptid = (flags & CLONE_PARENT_SETTID != 0).then_some(parent_tid);
    answer(f, fork(f, set, clear, ptid))
}

/// A child process: a copy-on-write copy of the caller's address space, its registers (`rax`
/// 0 in the child), FS base and x87/SSE state, run on the next CPU. Returns the child's pid.
fn fork(f: &TrapFrame, set_tid: Option<u64>, clear_tid: u64, parent_tid: Option<u64>) -> Ret {
    let (space, u) = current();
    let child_space = uspace::fork_space(&space).map_err(mm_err)?;
    let me = current_pid();
    let pid = TABLE.lock().add(me, usize::MAX);
    let (brk, random, sig, files) = match PROCESS[sched::current()].lock().as_mut() {
        Some(p) => (p.brk, next_random(&mut p.random), p.sig.forked(), p.files.clone()),
        None => ((0, 0), 1, signals::Signals::default(), files::Files::default()),
    };
    if let Some(at) = parent_tid {
        u.write(at, &pid.to_le_bytes()).map_err(fault)?;
    }
    let mut regs = *f;
    regs.rax = 0;
    let start = user::Start { regs, fs_base: user::fs_base(), fx: Some(user::save_fx()) };
    let mut child = Process { pid, clear_tid, brk, random, stop: None, sig, last_nr: 0, files };
    let cpu = (crate::platform::arch::smp::index() + 1) % crate::platform::arch::smp::count();
    let spawned = sched::spawn_on(cpu, move || {
        let task = sched::current();
        // Signals sent before this task ran are raised now; from here on they find the task.
        let early = TABLE.lock().procs.get_mut(&pid).map(|e| {
            e.task = task;
            core::mem::take(&mut e.early)
        });
        for (sig, from) in early.unwrap_or_default() {
            child.sig.raise(sig, from, signal::SI_USER);
        }
        run_process(&child_space, start, child, set_tid);
    });
    match spawned {
        Ok(h) => {
            h.detach();
            Ok(u64::from(pid))
        }
        Err(e) => {
            log::warn!("fork: no task for the child: {e:?}");
            TABLE.lock().procs.remove(&pid);
            Err(EAGAIN)
        }
    }
}

const WNOHANG: u64 = 1;
/// `WUNTRACED`, `WCONTINUED`, `__WNOTHREAD`, `__WALL`, `__WCLONE`: no stopped children, no
/// threads, so nothing changes.
const WAIT_IGNORED: u64 = 2 | 8 | 0x2000_0000 | 0x4000_0000 | 0x8000_0000;

/// `wait4`: reaps an ended child (`pid` -1 or 0: any; else that one), writing its status;
/// sleeps until one ends unless `WNOHANG`.
fn wait4(f: &mut TrapFrame, pid: i64, wstatus: u64, options: u64, rusage: u64) -> After {
    if options & !(WNOHANG | WAIT_IGNORED) != 0 {
        return answer(f, Err(EINVAL));
    }
    let me = current_pid();
    // -1: any child; 0: any in the caller's group; -g: any in group g; else that one.
    let group = match pid {
        0 => TABLE.lock().procs.get(&me).map(|e| e.pgid),
        p if p < -1 => Some((-p) as u32),
        _ => None,
    };
    loop {
        let reaped = {
            let mut t = TABLE.lock();
            let mine: Vec<u32> = t
                .procs
                .iter()
                .filter(|(c, e)| {
                    e.parent == me && (pid == -1 || group.is_some_and(|g| e.pgid == g) || i64::from(**c) == pid)
                })
                .map(|(&c, _)| c)
                .collect();
            if mine.is_empty() {
                return answer(f, Err(ECHILD));
            }
            match mine.iter().copied().find(|c| t.procs[c].status.is_some()) {
                Some(c) => t.procs.remove(&c).and_then(|e| e.status).map(|s| (c, s)),
                None => {
                    for c in &mine {
                        if let Some(e) = t.procs.get_mut(c) {
                            e.waiter = Some(sched::me());
                        }
                    }
                    None
                }
            }
        };
        if let Some((child, status)) = reaped {
            let (_, u) = current();
            let r = (|| {
                if wstatus != 0 {
                    u.write(wstatus, &status.to_le_bytes())?;
                }
                if rusage != 0 {
                    u.write(rusage, &[0u8; 144])?;
                }
                Ok(u64::from(child))
            })()
            .map_err(fault);
            return answer(f, r);
        }
        if options & WNOHANG != 0 {
            return answer(f, Ok(0));
        }
        if signals::interrupted() || user::killed().is_some() {
            return answer(f, Err(ERESTARTSYS));
        }
        // Woken when a child ends; the timeout only bounds a lost wake.
        sched::park(Some(100));
    }
}

/// `kill` of one process: the signal is pending there, and acted on at its next return to ring
/// 3 (a handler runs, or the default action: ending it, or nothing for `SIGCHLD`, `SIGURG`,
/// `SIGWINCH`); signal 0 only checks that the process exists.
fn kill(f: &mut TrapFrame, pid: i64, sig: u64) -> After {
    if sig > 64 {
        return answer(f, Err(EINVAL));
    }
    if pid == -1 {
        return unsupported(62, "kill (62) of every process".into());
    }
    let sig = sig as u8;
    if sig != 0 && signal::default_action(sig) == signal::Default::StopOrContinue {
        return unsupported(62, alloc::format!("kill (62) with job-control signal {sig}: processes cannot stop"));
    }
    let me = current_pid();
    // One process, or (pid 0: the caller's; -pgid) a process group.
    let targets: Vec<(u32, usize)> = {
        let mut t = TABLE.lock();
        let group = match pid {
            0 => t.procs.get(&me).map(|e| e.pgid),
            p if p < 0 => Some((-p) as u32),
            _ => None,
        };
        let pids: Vec<u32> = match group {
            Some(g) => t.procs.iter().filter(|(_, e)| e.pgid == g).map(|(&p, _)| p).collect(),
            None => t.procs.contains_key(&(pid as u32)).then_some(pid as u32).into_iter().collect(),
        };
        if pids.is_empty() {
            return answer(f, Err(ESRCH));
        }
        let mut out = Vec::new();
        for p in pids {
            let Some(e) = t.procs.get_mut(&p) else { continue };
            if sig == 0 || e.status.is_some() {
                continue;
            }
            if e.task == usize::MAX {
                e.early.push((sig, me));
            } else {
                out.push((p, e.task));
            }
        }
        out
    };
    for (pid, task) in targets {
        if let Some(p) = PROCESS[task].lock().as_mut().filter(|p| p.pid == pid) {
            p.sig.raise(sig, me, signal::SI_USER);
        }
    }
    answer(f, Ok(0))
}

/// `setpgid(pid, pgid)`: the caller (0) or one of its children into group `pgid` (0: its own
/// pid), a new one or one of the caller's session.
fn setpgid(pid: i64, pgid: i64) -> Ret {
    if pgid < 0 {
        return Err(EINVAL);
    }
    let me = current_pid();
    let mut t = TABLE.lock();
    let target = if pid == 0 { me } else { pid as u32 };
    if target != me && t.procs.get(&target).is_none_or(|e| e.parent != me) {
        return Err(ESRCH);
    }
    let group = if pgid == 0 { target } else { pgid as u32 };
    if group != target && !t.procs.values().any(|e| e.pgid == group) {
        return Err(EPERM);
    }
    if let Some(e) = t.procs.get_mut(&target) {
        e.pgid = group;
    }
    Ok(0)
}

/// `getpgid(pid)` (0: the caller).
fn getpgid(pid: i64) -> Ret {
    let p = if pid == 0 { current_pid() } else { pid as u32 };
    TABLE.lock().procs.get(&p).map(|e| u64::from(e.pgid)).ok_or(ESRCH)
}

/// `nanosleep(req, rem)` (and `clock_nanosleep` relative): `EINTR` with the time left when a
/// signal comes first.
fn nanosleep(req: u64, rem: u64) -> Ret {
    let (_, u) = current();
    let sec = u.read_u64(req).map_err(fault)?;
    let nsec = u.read_u64(req + 8).map_err(fault)?;
    if nsec >= 1_000_000_000 || sec as i64 <= -1 {
        return Err(EINVAL);
    }
    let now = time::now_ns().unwrap_or(0);
    let until = now.saturating_add(sec.saturating_mul(1_000_000_000)).saturating_add(nsec);
    match signals::sleep(Some(until)) {
        Ok(()) => Ok(0),
        Err(_) => {
            if rem != 0 {
                let left = until.saturating_sub(time::now_ns().unwrap_or(0));
                u.write_u64(rem, left / 1_000_000_000).map_err(fault)?;
                u.write_u64(rem + 8, left % 1_000_000_000).map_err(fault)?;
            }
            Err(EINTR)
        }
    }
}
