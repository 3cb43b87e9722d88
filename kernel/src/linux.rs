//! The Linux-compatible user mode: a static x86-64 Linux executable from the boot module,
//! loaded into an address space of its own and run in ring 3 (`job=run`,
//! `cargo xtask qemu --run BINARY`).
//!
//! Owns the process ([`Process`]: its address space, program break and the table of system
//! calls it may make) and the job. The machine side (ring 3, the `syscall` entry, the way back
//! when the program ends) is `platform::arch::user`; the ABI facts (ELF, the initial stack,
//! call names, errno) are `hmm::abi`, host-tested; the calls themselves are in [`syscall`].
//!
//! **Loading** ([`load`]): each `PT_LOAD` segment's pages are mapped private and anonymous,
//! the file's bytes copied in (the rest stays zero: `.bss`), then each segment gets its own
//! protection (a page two segments share gets both). The stack is 8 MiB below [`STACK_TOP`],
//! with the arguments, environment and auxiliary vector `execve` would leave; the program break
//! starts at the page after the highest segment.
//!
//! **Processes.** Every program has a pid in the process table ([`TABLE`]), with its parent
//! and, once it has ended, the status `wait4` reports. `fork` (and `clone` as glibc's `fork`
//! calls it) gives the child a copy-on-write copy of the address space (`AddressSpace::fork`),
//! the parent's registers (with `rax` 0), FS base and x87/SSE state, and runs it in a task of its
//! own on the next CPU. A signal whose default action ends a process (`kill`) ends it at its
//! next trap from ring 3, or in the `wait4` it sleeps in. A process whose parent has ended is
//! not waited for: its entry goes when it ends.
//!
//! **Errors.** A system call outside the implemented set stops the program with a report
//! naming the call by number and name ([`Stop::Unsupported`]): never a silent `-ENOSYS` that
//! would let a test pass for the wrong reason. A few calls the C library only probes answer
//! as Linux does when the feature is absent (`rseq` with `ENOSYS`, which glibc tolerates),
//! and say so in the log.

mod files;
mod signals;
mod syscall;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use hmm::abi::signal;

use hmm::abi::{elf, stack};
use hmm::mm::space::MapRequest;
use hmm::mm::vma::Prot;

use crate::mm::uspace::{self, Space, User};
use crate::platform::arch::{time, user};
use crate::platform::sched::MAX_TASKS;

/// The top of the initial stack (exclusive).
pub const STACK_TOP: u64 = 0x7fff_ffff_0000;
/// The stack's size.
pub const STACK_SIZE: u64 = 8 << 20;

/// Why a program could not start, or was stopped.
#[derive(Debug)]
pub enum RunError {
    /// No boot module holds a program.
    NoProgram,
    /// The module is not a static x86-64 executable.
    Elf(elf::ElfError),
    /// Setting up its address space failed.
    Memory(hmm::mm::Error),
    /// Copying its image or stack in faulted.
    Copy(uspace::UserFault),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoProgram => write!(
                f,
                "job=run needs a program: the boot module holds none (cargo xtask qemu --run BINARY passes one)"
            ),
            Self::Elf(e) => write!(f, "the program is not a static x86-64 executable: {e}"),
            Self::Memory(e) => write!(f, "setting up the program's address space: {e}"),
            Self::Copy(e) => write!(f, "copying the program in: {e}"),
        }
    }
}

/// Why the kernel stopped a program that was running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A system call outside the implemented set: its number and name.
    Unsupported {
        /// The call's number.
        nr: u64,
        /// `name (nr)`.
        what: String,
    },
}

/// A running program.
#[derive(Debug)]
pub struct Process {
    /// Its process id.
    pub pid: u32,
    /// Where the child's thread id is cleared at its end (`CLONE_CHILD_CLEARTID`); 0: nowhere.
    pub clear_tid: u64,
    /// Where its heap starts, and the current program break.
    pub brk: (u64, u64),
    /// The PRNG state behind `getrandom` and `AT_RANDOM` (not cryptographic).
    pub random: u64,
    /// Why the kernel stopped it, if it did.
    pub stop: Option<Stop>,
    /// Its signals.
    pub sig: signals::Signals,
    /// The number of its last system call (to start it again after a signal).
    pub last_nr: u64,
    /// Its open files.
    pub files: files::Files,
}

/// Per task, the program it runs (boxed: a process's signal state is a few KiB, and most task
/// slots run none).
static PROCESS: [spin::Mutex<Option<alloc::boxed::Box<Process>>>; MAX_TASKS] =
    [const { spin::Mutex::new(None) }; MAX_TASKS];

/// One process in the table.
#[derive(Debug)]
pub struct Entry {
    /// Its parent's pid (0: none to wait for it).
    pub parent: u32,
    /// Its process group.
    pub pgid: u32,
    /// The task it runs on.
    pub task: usize,
    /// Once it has ended: the status `wait4` reports.
    pub status: Option<i32>,
    /// A parent sleeping in `wait4` for it, to wake when it ends.
    pub waiter: Option<crate::platform::sched::TaskRef>,
    /// Signals sent before its task started (and who sent them), raised when it does.
    pub early: alloc::vec::Vec<(u8, u32)>,
}

/// The process table: pid to entry, and the next pid.
#[derive(Debug)]
pub struct Table {
    /// The processes that run, or have ended and wait for their parent's `wait4`.
    pub procs: BTreeMap<u32, Entry>,
    next: u32,
}

/// Every process.
pub static TABLE: spin::Mutex<Table> = spin::Mutex::new(Table { procs: BTreeMap::new(), next: 1 });

impl Table {
    /// A new pid for a process of `parent` running on `task`.
    /// A new pid for a process of `parent` running on `task`, in its parent's process group
    /// (its own for a process without a parent).
    pub fn add(&mut self, parent: u32, task: usize) -> u32 {
        let pid = self.next;
        self.next += 1;
        let pgid = self.procs.get(&parent).map_or(pid, |e| e.pgid);
        self.procs.insert(pid, Entry { parent, pgid, task, status: None, waiter: None, early: Vec::new() });
        pid
    }
}

/// The pid of the process the running task runs (0: none).
pub fn current_pid() -> u32 {
    PROCESS[crate::platform::sched::current()].lock().as_ref().map_or(0, |p| p.pid)
}

/// The next word of a xorshift64* stream.
pub fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Maps the image's segments and copies their bytes in; returns where the heap starts.
fn load(space: &Space, u: &User, file: &[u8], img: &elf::Image) -> Result<(), RunError> {
    for s in &img.segments {
        let (start, end) = s.pages();
        space.lock().mmap(MapRequest::anon(end - start, Prot::RW).fixed(start)).map_err(RunError::Memory)?;
    }
    for s in &img.segments {
        let bytes = &file[s.offset as usize..(s.offset + s.filesz) as usize];
        u.write(s.vaddr, bytes).map_err(RunError::Copy)?;
    }
    for (i, s) in img.segments.iter().enumerate() {
        let (start, end) = s.pages();
        space.lock().mprotect(start, end - start, s.prot).map_err(RunError::Memory)?;
        // A page shared with the previous segment gets both protections.
        if let Some(p) = i.checked_sub(1).map(|j| img.segments[j]) {
            let (_, pend) = p.pages();
            if pend > start {
                space.lock().mprotect(start, 4096, s.prot | p.prot).map_err(RunError::Memory)?;
            }
        }
    }
    Ok(())
}

/// How the program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// An exception stopped it (the signal Linux would send).
    Signalled {
        /// `SIGSEGV`, `SIGILL`, ...
        signal: &'static str,
        /// Its number.
        signo: u8,
        /// The exception.
        vector: u8,
        /// Where.
        rip: u64,
        /// A page fault's address.
        address: Option<u64>,
    },
    /// A signal whose default action ends it ended it (`kill`).
    Killed {
        /// Its number.
        signo: u8,
    },
    /// The kernel stopped it.
    Stopped(Stop),
}

impl Ended {
    /// The `@@RUN` payload.
    pub fn json(&self) -> String {
        let mut j = crate::json::Json::new();
        j.object(|j| match self {
            Ended::Exited(c) => j.num("exit_code", c),
            Ended::Signalled { signal, signo, vector, rip, address } => {
                j.str("signal", signal);
                j.num("signo", signo);
                j.num("vector", vector);
                j.str("rip", &alloc::format!("{rip:#x}"));
                if let Some(a) = address {
                    j.str("address", &alloc::format!("{a:#x}"));
                }
            }
            Ended::Killed { signo } => {
                j.str("signal", signal::name(*signo).unwrap_or("?"));
                j.num("signo", signo);
            }
            Ended::Stopped(Stop::Unsupported { nr, what }) => {
                j.str("unsupported_syscall", what);
                j.num("nr", nr);
            }
        });
        j.finish()
    }
}

/// The signal Linux sends for exception `vector` in user mode.
fn signal_of(vector: u8) -> u8 {
    match vector {
        0 | 16 | 19 => signal::SIGFPE,
        1 | 3 => signal::SIGTRAP,
        6 => signal::SIGILL,
        17 => signal::SIGBUS,
        _ => signal::SIGSEGV,
    }
}

/// The `wait4` status of a program that ended so, and how the job reports it.
fn ended(exit: user::Exit, stop: Option<Stop>) -> (i32, Ended) {
    match (exit, stop) {
        (_, Some(stop)) => (signal::signalled(signal::SIGSYS), Ended::Stopped(stop)),
        (user::Exit::Exited(c), None) => (signal::exited(c), Ended::Exited(c)),
        (user::Exit::Killed(sig), None) => (signal::signalled(sig), Ended::Killed { signo: sig }),
        (user::Exit::Fault { vector, rip, address, .. }, None) => {
            let signo = signal_of(vector);
            let signal = signal::name(signo).unwrap_or("SIGSEGV");
            (signal::signalled(signo), Ended::Signalled { signal, signo, vector, rip, address })
        }
    }
}

/// Runs process `p` of `space` from `start` on the running task until it ends; records its
/// status for its parent (or drops its entry when none waits) and returns how it ended.
/// `set_tid`: where to write its thread id first (`CLONE_CHILD_SETTID`).
pub fn run_process(space: &Arc<Space>, start: user::Start, p: Process, set_tid: Option<u64>) -> Ended {
    let task = crate::platform::sched::current();
    let pid = p.pid;
    let clear_tid = p.clear_tid;
    *PROCESS[task].lock() = Some(alloc::boxed::Box::new(p));
    let exit = uspace::run(space, |u| {
        if let Some(at) = set_tid {
            // A fault here is the program's own bad pointer: it finds no tid, as on Linux.
            let _ = u.write(at, &pid.to_le_bytes());
        }
        let exit = user::run(start);
        if clear_tid != 0 {
            let _ = u.write(clear_tid, &0u32.to_le_bytes());
        }
        exit
    });
    let proc = PROCESS[task].lock().take();
    let stop = proc.and_then(|mut p| {
        // Its files go (a dmirror file no other process holds is closed).
        for f in p.files.take_all() {
            files::release(f);
        }
        p.stop
    });
    let (status, how) = ended(exit, stop);
    let mut t = TABLE.lock();
    // Its children have no parent to wait for them now; those already ended go.
    let orphans: Vec<u32> = t.procs.iter().filter(|(_, e)| e.parent == pid).map(|(&c, _)| c).collect();
    for c in orphans {
        if t.procs.get(&c).is_some_and(|e| e.status.is_some()) {
            t.procs.remove(&c);
        } else if let Some(e) = t.procs.get_mut(&c) {
            e.parent = 0;
        }
    }
    match t.procs.get_mut(&pid) {
        Some(e) if e.parent != 0 => {
            e.status = Some(status);
            if let Some(w) = e.waiter.take() {
                crate::platform::sched::unpark(w);
            }
        }
        _ => {
            t.procs.remove(&pid);
        }
    }
    how
}

/// Runs `file` with `argv` in a new address space on the running task, until it ends.
pub fn run_program(file: &[u8], argv: &[&[u8]]) -> Result<Ended, RunError> {
    let img = elf::parse(file).map_err(RunError::Elf)?;
    let space = uspace::new_space().map_err(RunError::Memory)?;
    let task = crate::platform::sched::current();
    let mut random = time::rdtsc() | 1;
    let start = uspace::run(&space, |u| -> Result<user::Start, RunError> {
        load(&space, u, file, &img)?;
        space
            .lock()
            .mmap(MapRequest::anon(STACK_SIZE, Prot::RW).fixed(STACK_TOP - STACK_SIZE))
            .map_err(RunError::Memory)?;
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&next_random(&mut random).to_le_bytes());
        seed[8..].copy_from_slice(&next_random(&mut random).to_le_bytes());
        let aux = stack::Aux {
            phdr: img.phdr,
            phnum: u64::from(img.phnum),
            entry: img.entry,
            hwcap: u64::from(core::arch::x86_64::__cpuid(1).edx),
        };
        let st = stack::initial(STACK_TOP, argv, &[b"PATH=/", b"HOME=/"], &aux, seed);
        u.write(st.rsp, &st.bytes).map_err(RunError::Copy)?;
        Ok(user::Start::at(img.entry, st.rsp))
    })?;
    let pid = TABLE.lock().add(0, task);
    let p = Process {
        pid,
        clear_tid: 0,
        brk: (img.end, img.end),
        random,
        stop: None,
        sig: signals::Signals::default(),
        last_nr: 0,
        files: files::Files::default(),
    };
    Ok(run_process(&space, start, p, None))
}

/// `job=run`: the program in the first boot module, with `argv[0]` from `run.name` and the
/// `run.arg` words; prints `@@RUN` with how it ended. The job succeeds when the program ran,
/// whatever its status (the xtask passes the status on).
pub fn job(s: &crate::System) -> Result<(), RunError> {
    let file = crate::mm::read_module(s.boot, 0).ok_or(RunError::NoProgram)?;
    let name = s.args.run_name.unwrap_or("program");
    let argv: Vec<&[u8]> = core::iter::once(name).chain(s.args.run_args.iter().copied()).map(str::as_bytes).collect();
    log::info!("running {name} ({} bytes) in ring 3", file.len());
    let ended = run_program(&file, &argv)?;
    match &ended {
        Ended::Exited(c) => log::info!("{name} exited with status {c}"),
        Ended::Signalled { signal, vector, rip, address, .. } => {
            log::error!("{name} was stopped by {signal}: exception {vector} at rip {rip:#x} (address {address:x?})")
        }
        Ended::Killed { signo } => log::error!("{name} was ended by signal {signo}"),
        Ended::Stopped(Stop::Unsupported { what, .. }) => {
            log::error!("{name} made a system call the kernel does not implement: {what}; it was stopped")
        }
    }
    crate::sprintln!("{}", boot::protocol::Tag::Run.line(ended.json()));
    Ok(())
}

/// Registers the system-call handler with the platform.
pub fn init() {
    user::set_syscall_handler(syscall::handle);
    user::set_return_hook(signals::on_return);
}
