//! Address spaces on the real machine: the kernel's [`Platform`] for `hmm::mm`, the page-fault
//! hook, running code inside an address space, and the user-access helpers.
//!
//! Owns: the one [`Mm`] (frame table over usable RAM, zero pages), the address space each task
//! has installed (`SPACES`, indexed by task), and the exception-table entries of the user-copy
//! routine.
//!
//! How a user access works: [`run`] installs an address space (its CR3; the kernel half is
//! shared) and calls the closure. A direct load or store to an unmapped user page raises #PF;
//! [`handle_page_fault`] asks the address space to resolve it (demand paging, COW, zero and
//! huge pages) and the instruction is retried. If the fault cannot be resolved (no mapping,
//! wrong rights, out of memory) and it came from [`User::read`] / [`User::write`], the copy
//! stops and the caller gets a [`UserFault`] value, like `copy_from_user` returning `-EFAULT`.
//! A raw pointer access that cannot be resolved is a bug in the workload code and ends the run
//! with a report (the same as any kernel-mode fault).
//!
//! Invariant: an address space is installed only inside [`run`], which holds a reference, so
//! one is never dropped while a task uses it. Tasks on several CPUs may run in one address
//! space at once: a page-table change flushes this CPU and shoots down the others that have
//! the root loaded ([`crate::arch::smp::shootdown`]). A fault on one CPU while another holds
//! the address space's lock waits for it (with interrupts on, so shootdowns are answered),
//! bounded by [`LOCK_WAIT_NS`]. A fault that meets a page under migration (a device-memory
//! eviction in progress) waits for it with the lock dropped and faults again, bounded by
//! [`MIGRATION_WAIT_NS`], as Linux's `migration_entry_wait` does.

use alloc::sync::Arc;
use boot::pvh::{BootInfo, MemoryKind};
use core::sync::atomic::{AtomicU64, Ordering};
use hmm::addr::Pfn;
use hmm::mm::pagetable::USER_END;
use hmm::mm::platform::{Platform, TlbFlush};
use hmm::mm::space::{Access, AddressSpace, FaultError};
use hmm::mm::{Error, Mm};
use spin::{Mutex, Once};

use super::{PAGE_SIZE, frame, phys_to_virt};
use crate::arch::smp;
use crate::arch::trap::PageFaultError;
use crate::sched::{self, MAX_TASKS};

/// An address space shared between its users (the lock is Linux's `mmap_lock`).
pub type Space = Mutex<AddressSpace>;

/// How long a fault waits for its address space's lock before reporting it locked (the
/// holder is another CPU in a long migration, or the faulting task itself).
pub const LOCK_WAIT_NS: u64 = 5_000_000_000;

/// How long a fault waits for a page under migration (a device-memory eviction copying it
/// out) before it fails with [`FaultError::MigrationTimeout`].
pub const MIGRATION_WAIT_NS: u64 = 5_000_000_000;
/// One wait of a fault for a page under migration ([`Platform::migration_wait`]).
const MIGRATION_WAIT_STEP_NS: u64 = 20_000;

/// The kernel's [`Platform`]: the buddy frame allocator, the direct map, `invlpg`.
#[derive(Debug)]
pub struct KernelPlatform {
    kernel_root: u64,
}

fn direct<T>(pa: u64) -> *mut T {
    phys_to_virt(pa) as *mut T
}

fn entry(table: Pfn, index: usize) -> &'static AtomicU64 {
    debug_assert!(index < 512);
    // SAFETY: `table` is a page-table frame owned by `hmm::mm` (only such frames are passed
    // here), mapped read-write by the direct map for the kernel's lifetime; entries are
    // naturally aligned u64s, and every access goes through this atomic view.
    unsafe { &*direct::<AtomicU64>(table.addr() + 8 * index as u64) }
}

impl Platform for KernelPlatform {
    fn alloc(&self, order: u32) -> Option<Pfn> {
        if crate::inject::take(crate::inject::Fault::OutOfRam, None) {
            return None;
        }
        frame::alloc(1 << order).ok().map(Pfn::containing)
    }

    fn free(&self, pfn: Pfn, order: u32) {
        frame::free(pfn.addr(), 1 << order)
    }

    fn free_frames(&self) -> u64 {
        frame::free_frames() as u64
    }

    fn zero(&self, pfn: Pfn, count: u64) {
        // SAFETY: the frames belong to the memory manager, which asked for them to be zeroed;
        // nothing else references them as Rust objects.
        unsafe { core::ptr::write_bytes(direct::<u8>(pfn.addr()), 0, (count * PAGE_SIZE) as usize) }
    }

    fn copy(&self, dst: Pfn, src: Pfn, count: u64) {
        // SAFETY: both runs are frames owned by the memory manager; distinct allocations never
        // overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(
                direct::<u8>(src.addr()),
                direct::<u8>(dst.addr()),
                (count * PAGE_SIZE) as usize,
            )
        }
    }

    fn read(&self, pa: u64, buf: &mut [u8]) {
        // SAFETY: `pa..pa + len` lies in frames the memory manager owns (it resolved them from
        // its own page tables); `buf` is a distinct kernel buffer.
        unsafe { core::ptr::copy_nonoverlapping(direct::<u8>(pa), buf.as_mut_ptr(), buf.len()) }
    }

    fn write(&self, pa: u64, buf: &[u8]) {
        // SAFETY: as in `read`, in the other direction.
        unsafe { core::ptr::copy_nonoverlapping(buf.as_ptr(), direct::<u8>(pa), buf.len()) }
    }

    fn load(&self, table: Pfn, index: usize) -> u64 {
        entry(table, index).load(Ordering::Acquire)
    }

    fn table(&self, table: Pfn) -> &[AtomicU64] {
        // SAFETY: as for `entry`: a page-table frame owned by `hmm::mm`, mapped read-write by
        // the direct map for the kernel's lifetime, 512 naturally aligned u64s, only ever
        // accessed atomically.
        unsafe { core::slice::from_raw_parts(direct::<AtomicU64>(table.addr()), 512) }
    }

    fn store(&self, table: Pfn, index: usize, value: u64) {
        entry(table, index).store(value, Ordering::Release)
    }

    fn swap(&self, table: Pfn, index: usize, value: u64) -> u64 {
        entry(table, index).swap(value, Ordering::AcqRel)
    }

    fn init_root(&self, root: Pfn) {
        for i in 256..512 {
            let kernel = entry(Pfn::containing(self.kernel_root), i).load(Ordering::Relaxed);
            entry(root, i).store(kernel, Ordering::Relaxed);
        }
    }

    fn flush_tlb(&self, root: Pfn, flush: &TlbFlush) {
        // This CPU if it has the root loaded, then every other CPU that has (a freed table
        // also drops the paging-structure caches: a full flush).
        smp::flush_local(root.addr(), flush.start, flush.end, flush.tables_freed);
        smp::shootdown(root.addr(), flush.start, flush.end, flush.tables_freed);
    }

    fn migration_wait(&self, round: u32) -> bool {
        if u64::from(round) > MIGRATION_WAIT_NS / MIGRATION_WAIT_STEP_NS {
            return false;
        }
        // With interrupts on (the fault path runs so), so shootdowns are answered meanwhile.
        let step = crate::arch::time::Deadline::after_ns(MIGRATION_WAIT_STEP_NS);
        while !step.passed() {
            core::hint::spin_loop();
        }
        true
    }
}

static MM: Once<Arc<Mm>> = Once::new();
/// The address space each task has installed.
static SPACES: [Mutex<Option<Arc<Space>>>; MAX_TASKS] = [const { Mutex::new(None) }; MAX_TASKS];

/// Counters of the fault hook.
pub static USER_FAULTS: AtomicU64 = AtomicU64::new(0);

/// Builds the memory manager over the usable RAM of `info` (after the heap is up).
pub fn init(info: &BootInfo, kernel_root: u64) -> Result<(), Error> {
    let mut sections = alloc::vec::Vec::new();
    for r in info.memory_map.iter().filter(|r| r.kind == MemoryKind::Ram) {
        let first = r.start.div_ceil(PAGE_SIZE);
        let last = r.end / PAGE_SIZE;
        if last > first {
            sections.push((Pfn(first), last - first));
        }
    }
    let mm = Mm::new(Arc::new(KernelPlatform { kernel_root }), &sections)?;
    MM.call_once(|| mm);
    Ok(())
}

/// The memory manager.
///
/// # Panics
/// Before [`init`] (boot order guarantees it runs first).
pub fn mm() -> &'static Arc<Mm> {
    MM.get().expect("uspace::init runs during boot")
}

/// A new, empty address space.
pub fn new_space() -> Result<Arc<Space>, Error> {
    Ok(mm().share(AddressSpace::new(mm())?))
}

/// Why a user access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserFault {
    /// The address that faulted.
    pub address: u64,
    /// What the address space said.
    pub error: FaultError,
}

impl core::fmt::Display for UserFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} at {:#x}", self.error, self.address)
    }
}

/// Each task's last unresolved user fault.
static LAST_USER_ADDR: [AtomicU64; MAX_TASKS] = [const { AtomicU64::new(0) }; MAX_TASKS];
static LAST_USER_ERROR: [Mutex<FaultError>; MAX_TASKS] = [const { Mutex::new(FaultError::NoMapping) }; MAX_TASKS];

/// Called by the #PF handler for faults below the kernel half. Returns `true` when the fault
/// was resolved and the instruction can be retried; otherwise records why.
pub fn handle_page_fault(address: u64, error: PageFaultError) -> bool {
    if address >= USER_END {
        return false;
    }
    USER_FAULTS.fetch_add(1, Ordering::Relaxed);
    let task = sched::current();
    let space = SPACES[task].try_lock().and_then(|c| c.clone());
    let result = match space {
        None => Err(FaultError::NoMapping),
        Some(space) => {
            let access = if error.write() {
                Access::Write
            } else if error.instruction_fetch() {
                Access::Exec
            } else {
                Access::Read
            };
            let mut round = 0;
            loop {
                let r = match lock_bounded(&space) {
                    Some(mut s) => s.fault(address, access),
                    // The lock stayed held: by the faulting task itself (it touched user memory
                    // while holding its address space's lock; resolving would deadlock) or by a
                    // stuck CPU. Report it instead of hanging.
                    None => {
                        log::error!(
                            "user fault at {address:#x}: its address space stayed locked for {} ms",
                            LOCK_WAIT_NS / 1_000_000
                        );
                        break Err(FaultError::Locked);
                    }
                };
                // A page under migration (migration_entry_wait): wait with the lock dropped,
                // so the migration can finish, then fault again; bounded.
                if r != Err(FaultError::Migrating) {
                    break r;
                }
                round += 1;
                if !mm().platform().migration_wait(round) {
                    log::error!(
                        "user fault at {address:#x}: the page stayed under migration for {} ms",
                        MIGRATION_WAIT_NS / 1_000_000
                    );
                    break Err(FaultError::MigrationTimeout);
                }
            }
        }
    };
    match result {
        Ok(()) => true,
        Err(e) => {
            LAST_USER_ADDR[task].store(address, Ordering::Relaxed);
            if let Some(mut last) = LAST_USER_ERROR[task].try_lock() {
                *last = e;
            }
            false
        }
    }
}

/// Takes the address space's lock, waiting at most [`LOCK_WAIT_NS`].
fn lock_bounded(space: &Space) -> Option<spin::MutexGuard<'_, AddressSpace>> {
    let deadline = crate::arch::time::Deadline::after_ns(LOCK_WAIT_NS);
    loop {
        if let Some(g) = space.try_lock() {
            return Some(g);
        }
        if deadline.passed() {
            return None;
        }
        core::hint::spin_loop();
    }
}

/// The running task's last user fault that could not be resolved.
fn last_user_fault() -> UserFault {
    let task = sched::current();
    UserFault { address: LAST_USER_ADDR[task].load(Ordering::Relaxed), error: *LAST_USER_ERROR[task].lock() }
}

/// Access to the user half of the installed address space, handed to [`run`]'s closure.
#[derive(Debug)]
pub struct User {
    _private: (),
}

// The user-copy routine: `rep movsb` with an exception-table fixup that returns the bytes not
// copied. Demand-paging faults inside it are resolved and the instruction resumes.
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

/// The exception-table entry of the user-copy routine: (faulting instruction, fixup).
pub fn user_copy_fixup() -> (u64, u64) {
    ((&raw const kernel_user_copy_insn) as u64, (&raw const kernel_user_copy_fixup) as u64)
}

fn user_range(va: u64, len: usize) -> Result<(), UserFault> {
    match va.checked_add(len as u64) {
        Some(end) if end <= USER_END => Ok(()),
        _ => Err(UserFault { address: va, error: FaultError::NoMapping }),
    }
}

impl User {
    /// Copies from user address `va` into `buf` (`copy_from_user`).
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), UserFault> {
        user_range(va, buf.len())?;
        // SAFETY: the source is in the user half (checked above), never Rust-owned memory;
        // faults there are resolved or absorbed by the routine's fixup. `buf` is a valid
        // kernel buffer of `len` bytes.
        let left = unsafe { kernel_user_copy(buf.as_mut_ptr(), va as *const u8, buf.len()) };
        if left == 0 { Ok(()) } else { Err(last_user_fault()) }
    }

    /// Copies `data` to user address `va` (`copy_to_user`).
    pub fn write(&self, va: u64, data: &[u8]) -> Result<(), UserFault> {
        user_range(va, data.len())?;
        // SAFETY: the destination is in the user half (checked), which no Rust object lives
        // in; faults are resolved or absorbed by the fixup.
        let left = unsafe { kernel_user_copy(va as *mut u8, data.as_ptr(), data.len()) };
        if left == 0 { Ok(()) } else { Err(last_user_fault()) }
    }

    /// Loads the `u64` at `va` with one CPU load (the workload's own access pattern).
    pub fn read_u64(&self, va: u64) -> Result<u64, UserFault> {
        user_range(va, 8)?;
        crate::arch::trap::probe_read_u64(va).map_err(|_| last_user_fault())
    }

    /// Stores `v` at `va` with one CPU store.
    pub fn write_u64(&self, va: u64, v: u64) -> Result<(), UserFault> {
        user_range(va, 8)?;
        // SAFETY: `va` is in the user half (checked), where no Rust object lives; a fault that
        // cannot be resolved is absorbed by the probe's fixup.
        unsafe { crate::arch::trap::probe_write_u64(va, v) }.map_err(|_| last_user_fault())
    }
}

/// Runs `f` with `space` installed for the running task, then reinstalls what it had before.
/// The task may be preempted inside; it resumes with its space installed.
pub fn run<R>(space: &Arc<Space>, f: impl FnOnce(&User) -> R) -> R {
    let root = space.lock().root();
    let task = sched::current();
    let prev_space = SPACES[task].lock().replace(space.clone());
    // `space` is kept alive by SPACES until it is uninstalled below; its root's kernel half
    // is a copy of the kernel's (init_root), so the running code and its stack stay mapped.
    let prev_root = sched::switch_root(root.addr());
    let out = f(&User { _private: () });
    // The previous root is the kernel's own, or an outer `run`'s, kept alive by `prev_space`.
    sched::switch_root(prev_root);
    let ours = core::mem::replace(&mut *SPACES[task].lock(), prev_space);
    drop(ours);
    out
}
