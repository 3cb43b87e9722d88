//! Address spaces on the real machine: the kernel's [`Platform`] for `hmm::mm`, the page-fault
//! handler it registers with the platform layer, running code inside an address space, and
//! the user-access helpers.
//!
//! Owns: the one [`Mm`] (frame table over usable RAM, zero pages) and the address space each
//! task has installed (`SPACES`, indexed by task). The user-copy routine and its exception
//! table live in the platform layer (`platform::arch::trap::copy_from_user` and friends);
//! physical memory is reached only through `platform::mm::ram`, which checks every frame
//! `hmm` hands over.
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
//! the root loaded ([`crate::platform::arch::smp::shootdown`]). A fault on one CPU while another holds
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

use crate::platform::arch::smp;
use crate::platform::arch::trap::{self, PageFaultError, UserAccessError};
use crate::platform::mm::{PAGE_SIZE, frame, ram};
use crate::platform::sched::{self, MAX_TASKS};

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

/// Entry `index` of the page-table frame `table` (checked by [`ram::table`]).
fn entry(table: Pfn, index: usize) -> &'static AtomicU64 {
    &ram::table(table)[index]
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

    // Every frame hmm hands over is checked by `ram`: one outside the RAM the frame allocator
    // manages (or device memory mapped for the CPU) panics with its number.
    fn zero(&self, pfn: Pfn, count: u64) {
        ram::zero(pfn, count)
    }

    fn copy(&self, dst: Pfn, src: Pfn, count: u64) {
        ram::copy(dst, src, count)
    }

    fn read(&self, pa: u64, buf: &mut [u8]) {
        ram::read(pa, buf)
    }

    fn write(&self, pa: u64, buf: &[u8]) {
        ram::write(pa, buf)
    }

    fn load(&self, table: Pfn, index: usize) -> u64 {
        ram::entry(table, index, |e| e.load(Ordering::Acquire))
    }

    fn table(&self, table: Pfn) -> &[AtomicU64] {
        ram::table(table)
    }

    fn store(&self, table: Pfn, index: usize, value: u64) {
        ram::entry(table, index, move |e| e.store(value, Ordering::Release))
    }

    fn swap(&self, table: Pfn, index: usize, value: u64) -> u64 {
        ram::entry(table, index, move |e| e.swap(value, Ordering::AcqRel))
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
        let step = crate::platform::arch::time::Deadline::after_ns(MIGRATION_WAIT_STEP_NS);
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
    trap::set_page_fault_handler(handle_page_fault);
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

/// A copy-on-write child of `space` (`fork`), shared as every address space is.
pub fn fork_space(space: &Space) -> Result<Arc<Space>, Error> {
    let child = space.lock().fork()?;
    Ok(mm().share(child))
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

/// The page-fault handler [`init`] registers with the platform (`trap::set_page_fault_handler`):
/// called for every #PF, it handles those below the kernel half. Returns `true` when the fault
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
    let deadline = crate::platform::arch::time::Deadline::after_ns(LOCK_WAIT_NS);
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

/// A user access that did not complete, as a [`UserFault`].
fn user_fault(va: u64, e: UserAccessError) -> UserFault {
    match e {
        UserAccessError::Range(_) => UserFault { address: va, error: FaultError::NoMapping },
        UserAccessError::Faulted => last_user_fault(),
    }
}

impl User {
    /// Copies from user address `va` into `buf` (`copy_from_user`).
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), UserFault> {
        trap::copy_from_user(va, buf).map_err(|e| user_fault(va, e))
    }

    /// Copies `data` to user address `va` (`copy_to_user`).
    pub fn write(&self, va: u64, data: &[u8]) -> Result<(), UserFault> {
        trap::copy_to_user(va, data).map_err(|e| user_fault(va, e))
    }

    /// Loads the `u64` at `va` with one CPU load (the workload's own access pattern).
    pub fn read_u64(&self, va: u64) -> Result<u64, UserFault> {
        trap::read_user_u64(va).map_err(|e| user_fault(va, e))
    }

    /// Stores `v` at `va` with one CPU store.
    pub fn write_u64(&self, va: u64, v: u64) -> Result<(), UserFault> {
        trap::write_user_u64(va, v).map_err(|e| user_fault(va, e))
    }
}

/// The running task's installed address space with access to its user half, inside [`run`]
/// (a system call of a user program running in it); `None` outside.
pub fn installed() -> Option<(Arc<Space>, User)> {
    let space = SPACES[sched::current()].lock().clone()?;
    Some((space, User { _private: () }))
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
