//! The scheduler: kernel tasks on per-CPU run queues, preempted by the APIC timer.
//!
//! Owns: the task table ([`MAX_TASKS`] slots), one run queue per CPU, and which task each CPU
//! runs.
//!
//! **Tasks.** A task is a closure with its own 64 KiB stack, pinned to the CPU it was spawned
//! on ([`spawn_on`]); [`JoinHandle::join`] waits for it (bounded) and returns its result. The
//! boot flow is task 0 on CPU 0; every CPU also has an idle task (`hlt` in a loop) that runs
//! when its queue is empty. A task's state is saved as a [`TrapFrame`] on its own stack:
//! every switch happens on the way out of an interrupt — the timer (preemption, every tick),
//! the reschedule IPI (a task was queued from another CPU) or `int 0x42` ([`yield_now`], and a
//! finishing task) — so the trap path's register save and `iretq` are the context switch. A
//! new task's stack starts with a frame that "returns" into its entry. Every task has an id
//! unique for the life of the kernel ([`context_id`]; slots are reused, ids are not), which is
//! the execution context of the interval notifiers (registered by [`init`]).
//!
//! **Waiting for an event.** [`park`] and [`unpark`] (with the [`TaskRef`] from [`me`]): a
//! service task — the follower of the host's device-memory requests — sleeps off the run
//! queue until an interrupt handler or another task wakes it, or its timeout passes.
//!
//! **Address spaces.** Each task has the page-table root it runs with; a switch loads the next
//! task's root when it differs, publishing it first for TLB shootdown
//! ([`crate::platform::arch::smp::set_root`]). [`switch_root`] is how `crate::mm::uspace::run`
//! (above this layer) installs one.
//!
//! **Invariants.**
//! - The run queues are locked only with interrupts off, and nothing in the switch path
//!   allocates, frees or takes a lock a preempted task could hold: a task preempted inside
//!   the heap allocator must not stop the switch that resumes it. Stacks and closures are
//!   allocated by the spawner and freed by the joiner.
//! - A task that finishes is marked *exiting*; the switch away from it records it, and only
//!   [`finish_switch`], running on the next task's stack, marks it *done*, so a joiner on
//!   another CPU never frees a stack that is still in use.
//! - Code that waits with interrupts off on a lock a task holds could wait for ever behind a
//!   preempted holder on the same CPU; the kernel's waits with interrupts off are the run
//!   queues (never held across a switch) and the TLB-shootdown slot (served while waiting).
//! - A *parked* task ([`park`]) is in no run queue. The switch parks it under the task's wake
//!   lock (taken only with interrupts off, before any run queue), which [`unpark`] takes too:
//!   a wake either sets the token before the switch looks, and the task runs on, or finds it
//!   parked and queues it. No wake is lost; a timed park is queued again by the first tick
//!   after its deadline.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;
use x86_64::instructions::interrupts;
use x86_64::registers::control::{Cr3, Cr3Flags};

use crate::platform::arch::smp::{self, MAX_CPUS};
use crate::platform::arch::trap::{self, TrapFrame};
use crate::platform::arch::{apic, gdt, time};

/// Most tasks alive at once (boot and idle tasks included).
pub const MAX_TASKS: usize = 256;
/// A spawned task's stack (guarded: [`crate::platform::mm::stack`]).
pub const STACK_SIZE: usize = crate::platform::mm::stack::STACK_PAGES as usize * 4096;
const NONE: usize = usize::MAX;

const FREE: u8 = 0;
const RESERVED: u8 = 1;
const READY: u8 = 2;
const RUNNING: u8 = 3;
const EXITING: u8 = 4;
const DONE: u8 = 5;
/// Off every run queue until [`unpark`] (or its [`park`] deadline) makes it ready again.
const PARKED: u8 = 6;

struct Task {
    state: AtomicU8,
    /// This task's id, unique for the life of the kernel (slots are reused, ids never): what
    /// [`context_id`] returns.
    uid: AtomicU64,
    cpu: AtomicUsize,
    /// The saved frame while not running.
    rsp: AtomicU64,
    /// The page-table root it runs with.
    root: AtomicU64,
    /// Whether it owns the guarded stack of its slot (the boot task and application
    /// processors' idle tasks run on stacks they do not own).
    stack: AtomicBool,
    body: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Nobody will join it: the next spawn frees it once done.
    detached: AtomicBool,
    /// TSC cycles it has run.
    cycles: AtomicU64,
    /// When it last started running.
    since: AtomicU64,
    /// The wake token: set by [`unpark`], consumed by [`park`] (a wake before the park is
    /// not lost).
    token: AtomicBool,
    /// TSC deadline of a timed [`park`] (0: none).
    wake_at: AtomicU64,
    /// Taken (interrupts off) around the token and the parked state, by the parking switch
    /// and by [`unpark`]: a wake is either seen by the switch, which then does not park, or
    /// finds the task parked and queues it.
    wake: Mutex<()>,
}

impl Task {
    const fn new() -> Self {
        Task {
            state: AtomicU8::new(FREE),
            uid: AtomicU64::new(0),
            cpu: AtomicUsize::new(0),
            rsp: AtomicU64::new(0),
            root: AtomicU64::new(0),
            stack: AtomicBool::new(false),
            body: Mutex::new(None),
            detached: AtomicBool::new(false),
            cycles: AtomicU64::new(0),
            since: AtomicU64::new(0),
            token: AtomicBool::new(false),
            wake_at: AtomicU64::new(0),
            wake: Mutex::new(()),
        }
    }
}

/// A fixed ring of task ids (no allocation in the switch path).
struct Ring {
    buf: [u16; MAX_TASKS],
    head: usize,
    len: usize,
}

impl Ring {
    const fn new() -> Self {
        Ring { buf: [0; MAX_TASKS], head: 0, len: 0 }
    }
    fn push(&mut self, id: usize) {
        // Every task is in at most one queue once, so the ring never overflows.
        debug_assert!(self.len < MAX_TASKS);
        self.buf[(self.head + self.len) % MAX_TASKS] = id as u16;
        self.len += 1;
    }
    fn pop(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let id = self.buf[self.head] as usize;
        self.head = (self.head + 1) % MAX_TASKS;
        self.len -= 1;
        Some(id)
    }
}

static TASKS: [Task; MAX_TASKS] = [const { Task::new() }; MAX_TASKS];
static QUEUES: [Mutex<Ring>; MAX_CPUS] = [const { Mutex::new(Ring::new()) }; MAX_CPUS];
static CURRENT: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(NONE) }; MAX_CPUS];
static IDLE: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(NONE) }; MAX_CPUS];
static EXITED: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(NONE) }; MAX_CPUS];
/// Cycles each CPU spent in tasks other than its idle task.
static BUSY: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Context switches per CPU.
static SWITCHES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: the running task that asked, by [`park`], to be parked at the next switch.
static PARKING: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(NONE) }; MAX_CPUS];
/// Per CPU: tasks in a timed [`park`] (the tick looks for expired ones only when some are).
static TIMED: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];
/// The next task id (0 is the boot flow before [`init`]).
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// Why a task could not be spawned or joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedError {
    /// No CPU with that index is online.
    NoSuchCpu {
        /// The index asked for.
        cpu: usize,
        /// CPUs online.
        online: usize,
    },
    /// All [`MAX_TASKS`] slots are in use.
    TooManyTasks,
    /// The stack could not be allocated.
    OutOfMemory,
    /// The task did not finish in time (it keeps running, detached).
    Timeout {
        /// The task's slot.
        task: usize,
        /// The bound, in milliseconds.
        ms: u64,
    },
}

impl core::fmt::Display for SchedError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoSuchCpu { cpu, online } => {
                write!(f, "CPU {cpu} is not online ({online} CPUs are: 0..{online}); give the machine more CPUs")
            }
            Self::TooManyTasks => write!(f, "{MAX_TASKS} tasks are alive; join some before spawning more"),
            Self::OutOfMemory => write!(f, "no memory for a {} KiB task stack", STACK_SIZE / 1024),
            Self::Timeout { task, ms } => {
                write!(f, "task {task} did not finish within {ms} ms (left running, detached)")
            }
        }
    }
}

/// The task running on this CPU (0, the boot task, before [`init`]).
pub fn current() -> usize {
    match CURRENT[smp::index()].load(Ordering::Relaxed) {
        NONE => 0,
        t => t,
    }
}

/// The running task's unique id: the execution context the interval notifiers tell apart
/// (installed with `hmm::notifier::set_context_fn` by [`init`]), so a task waiting for an
/// invalidation that another task runs, on any CPU, waits instead of being taken for the
/// invalidator. 0 before [`init`].
pub fn context_id() -> u64 {
    TASKS[current()].uid.load(Ordering::Relaxed)
}

fn claim_slot() -> Option<usize> {
    let id = (0..MAX_TASKS)
        .find(|&i| TASKS[i].state.compare_exchange(FREE, RESERVED, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
    TASKS[id].uid.store(NEXT_UID.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    Some(id)
}

/// Makes the code running now on this CPU its task `id` (the boot flow, or an application
/// processor's start-up context, which becomes its idle task).
fn adopt(cpu: usize, id: usize, idle: bool) {
    let t = &TASKS[id];
    t.cpu.store(cpu, Ordering::Relaxed);
    t.root.store(crate::platform::mm::kernel_root(), Ordering::Relaxed);
    t.since.store(time::rdtsc(), Ordering::Relaxed);
    t.state.store(RUNNING, Ordering::Release);
    if idle {
        IDLE[cpu].store(id, Ordering::Relaxed);
    }
    CURRENT[cpu].store(id, Ordering::Release);
}

/// Makes the boot flow task 0 and gives CPU 0 its idle task, and makes tasks the execution
/// contexts of the interval notifiers ([`context_id`]). Called once the heap is up.
pub fn init() -> Result<(), SchedError> {
    let boot = claim_slot().ok_or(SchedError::TooManyTasks)?;
    adopt(0, boot, false);
    hmm::notifier::set_context_fn(context_id);
    let idle = new_task(0, Box::new(|| idle()))?;
    TASKS[idle].state.store(READY, Ordering::Release);
    IDLE[0].store(idle, Ordering::Relaxed);
    Ok(())
}

/// Makes application processor `cpu`'s start-up context its idle task.
pub fn init_ap(cpu: usize) {
    match claim_slot() {
        Some(id) => adopt(cpu, id, true),
        None => crate::platform::crash(format_args!("CPU {cpu}: no task slot for its idle task")),
    }
}

/// The idle loop: wait for an interrupt; the switch to a queued task happens in the timer or
/// reschedule interrupt.
pub fn idle() -> ! {
    loop {
        interrupts::enable_and_hlt();
    }
}

/// Allocates a task on `cpu` that will run `body`, with its initial frame; not yet queued.
fn new_task(cpu: usize, body: Box<dyn FnOnce() + Send>) -> Result<usize, SchedError> {
    let id = claim_slot().ok_or(SchedError::TooManyTasks)?;
    let top = match crate::platform::mm::stack::alloc(id) {
        Ok(top) => top,
        Err(e) => {
            log::error!("task {id}: its stack: {e}");
            TASKS[id].state.store(FREE, Ordering::Release);
            return Err(SchedError::OutOfMemory);
        }
    };
    let t = &TASKS[id];
    *t.body.lock() = Some(body);
    t.cpu.store(cpu, Ordering::Relaxed);
    t.root.store(crate::platform::mm::kernel_root(), Ordering::Relaxed);
    t.stack.store(true, Ordering::Relaxed);
    t.detached.store(false, Ordering::Relaxed);
    t.cycles.store(0, Ordering::Relaxed);
    t.token.store(false, Ordering::Relaxed);
    t.wake_at.store(0, Ordering::Relaxed);
    let frame_at = (top - 64 - core::mem::size_of::<TrapFrame>() as u64) & !15;
    let frame = TrapFrame {
        r15: 0,
        r14: 0,
        r13: 0,
        r12: 0,
        r11: 0,
        r10: 0,
        r9: 0,
        r8: 0,
        rbp: 0,
        rdi: id as u64,
        rsi: 0,
        rdx: 0,
        rcx: 0,
        rbx: 0,
        rax: 0,
        vector: 0,
        error_code: 0,
        rip: task_entry as *const () as u64,
        cs: u64::from(gdt::kernel_code().0),
        rflags: 0x202, // IF
        // As if called: the return-address slot above is never used (the entry never returns).
        rsp: top - 8,
        ss: u64::from(gdt::kernel_data().0),
    };
    // SAFETY: `frame_at` is 16-byte aligned and lies inside the stack just allocated, which
    // nothing else uses yet.
    unsafe { (frame_at as *mut TrapFrame).write(frame) };
    t.rsp.store(frame_at, Ordering::Release);
    Ok(id)
}

extern "C" fn task_entry(id: u64) -> ! {
    let body = TASKS[id as usize].body.lock().take();
    if let Some(body) = body {
        body();
    }
    TASKS[id as usize].state.store(EXITING, Ordering::Release);
    yield_now();
    // Not reached: an exiting task is never queued again.
    crate::platform::crash(format_args!("task {id} resumed after exiting"))
}

/// Frees the stacks of detached tasks that have finished.
fn reap_detached() {
    for (id, t) in TASKS.iter().enumerate() {
        if t.detached.load(Ordering::Acquire)
            && t.state.compare_exchange(DONE, RESERVED, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            release(id);
        }
    }
}

fn release(id: usize) {
    let t = &TASKS[id];
    if t.stack.swap(false, Ordering::AcqRel) {
        // The task is done: the switch away from it has completed (see `finish_switch`), so
        // no CPU runs on its stack.
        crate::platform::mm::stack::free(id);
    }
    t.detached.store(false, Ordering::Relaxed);
    t.state.store(FREE, Ordering::Release);
}

/// A running task's result, once it finishes.
#[derive(Debug)]
pub struct JoinHandle<T> {
    id: usize,
    result: Arc<Mutex<Option<T>>>,
}

/// Runs `f` as a new task on CPU `cpu`.
pub fn spawn_on<T: Send + 'static>(
    cpu: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, SchedError> {
    let online = smp::count();
    if cpu >= online || CURRENT[cpu].load(Ordering::Acquire) == NONE {
        return Err(SchedError::NoSuchCpu { cpu, online });
    }
    reap_detached();
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    let id = new_task(
        cpu,
        Box::new(move || {
            let r = f();
            *out.lock() = Some(r);
        }),
    )?;
    TASKS[id].state.store(READY, Ordering::Release);
    interrupts::without_interrupts(|| QUEUES[cpu].lock().push(id));
    kick(cpu);
    Ok(JoinHandle { id, result })
}

/// Interrupts CPU `cpu` (the reschedule IPI): wakes it from `hlt` and lets it look at its run
/// queue.
pub fn kick(cpu: usize) {
    if cpu != smp::index() && cpu < smp::count() {
        apic::send_ipi(smp::cpu(cpu).apic_id.load(Ordering::Relaxed) as u32, trap::RESCHED_VECTOR);
    }
}

impl<T> JoinHandle<T> {
    /// Lets the task run on its own: nobody joins it, and its stack is freed once it has
    /// finished (by a later spawn).
    pub fn detach(self) {
        TASKS[self.id].detached.store(true, Ordering::Release);
    }

    /// Whether the task has finished.
    pub fn is_done(&self) -> bool {
        TASKS[self.id].state.load(Ordering::Acquire) == DONE
    }

    /// Waits up to `timeout_ms` for the task to finish and returns its result. Waiting yields
    /// this CPU to its other tasks. On timeout the task is left running, detached.
    pub fn join(self, timeout_ms: u64) -> Result<T, SchedError> {
        let deadline = time::Deadline::after_ms(timeout_ms);
        while !self.is_done() {
            if deadline.passed() {
                TASKS[self.id].detached.store(true, Ordering::Release);
                return Err(SchedError::Timeout { task: self.id, ms: timeout_ms });
            }
            yield_now();
            core::hint::spin_loop();
        }
        let r = self.result.lock().take();
        release(self.id);
        // A task that finished stored its result before it was marked done.
        r.ok_or(SchedError::Timeout { task: self.id, ms: timeout_ms })
    }
}

/// Gives this CPU to the next task in its queue, if any (returns at once otherwise).
pub fn yield_now() {
    // SAFETY: vector 0x42 is the scheduler's software interrupt; its handler saves and
    // restores every register and returns here when this task runs again.
    unsafe { core::arch::asm!("int 0x42") };
}

/// A task to wake with [`unpark`]: its slot and unique id, so a slot that another task has
/// taken since is not woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    id: usize,
    uid: u64,
}

/// The running task, to hand to whoever will [`unpark`] it.
pub fn me() -> TaskRef {
    let id = current();
    TaskRef { id, uid: TASKS[id].uid.load(Ordering::Relaxed) }
}

/// Whether `task` is parked now (off every run queue).
pub fn is_parked(task: TaskRef) -> bool {
    let t = &TASKS[task.id];
    t.uid.load(Ordering::Relaxed) == task.uid && t.state.load(Ordering::Acquire) == PARKED
}

/// Why [`park`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// [`unpark`] was called (before or during the park).
    Unparked,
    /// The timeout passed first.
    TimedOut,
}

/// Takes the running task off its CPU until [`unpark`] wakes it or, with `timeout_ms`, until
/// that many milliseconds pass (the next timer tick after the deadline queues it again). A
/// wake that came before the park is not lost: the park returns at once, consuming it. The
/// CPU runs its other tasks, or halts, meanwhile.
pub fn park(timeout_ms: Option<u64>) -> Woken {
    interrupts::without_interrupts(|| {
        let (cpu, me) = (smp::index(), current());
        let t = &TASKS[me];
        if t.token.swap(false, Ordering::AcqRel) {
            return Woken::Unparked;
        }
        if let Some(ms) = timeout_ms {
            t.wake_at.store(time::Deadline::after_ms(ms).tsc().max(1), Ordering::Relaxed);
            TIMED[cpu].fetch_add(1, Ordering::Relaxed);
        }
        PARKING[cpu].store(me, Ordering::Relaxed);
        // The switch in `preempt` parks this task unless a wake came in the meantime; it
        // resumes here, interrupts still off, once queued again.
        yield_now();
        PARKING[cpu].store(NONE, Ordering::Relaxed);
        if timeout_ms.is_some() {
            TIMED[cpu].fetch_sub(1, Ordering::Relaxed);
            t.wake_at.store(0, Ordering::Relaxed);
        }
        if t.token.swap(false, Ordering::AcqRel) { Woken::Unparked } else { Woken::TimedOut }
    })
}

/// Wakes `task` from [`park`] (or makes its next park return at once). Safe from interrupt
/// handlers and from any CPU.
pub fn unpark(task: TaskRef) {
    interrupts::without_interrupts(|| {
        let t = &TASKS[task.id];
        if t.uid.load(Ordering::Relaxed) != task.uid {
            return;
        }
        if wake(task.id, true) {
            kick(t.cpu.load(Ordering::Relaxed));
        }
    })
}

/// Something that happens — an interrupt, say — and that one task at a time waits for: a
/// count of signals and the task waiting.
#[derive(Debug)]
pub struct Event {
    count: AtomicU64,
    /// Locked only with interrupts off.
    waiter: Mutex<Option<TaskRef>>,
}

impl Default for Event {
    fn default() -> Self {
        Self::new()
    }
}

/// The configuration of a device changed ([`trap::CONFIG_VECTOR`]).
pub static CONFIG_CHANGED: Event = Event::new();

impl Event {
    /// No signal yet, nobody waiting.
    pub const fn new() -> Event {
        Event { count: AtomicU64::new(0), waiter: Mutex::new(None) }
    }

    /// Signals once and wakes the waiting task (from interrupt handlers too).
    pub fn signal(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        if let Some(t) = interrupts::without_interrupts(|| *self.waiter.lock()) {
            unpark(t);
        }
    }

    /// Signals so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Waits, parked, until the count differs from `seen` or `timeout_ms` passes; returns the
    /// count then. The last task to call this is the one [`Event::signal`] wakes.
    pub fn wait(&self, seen: u64, timeout_ms: u64) -> u64 {
        interrupts::without_interrupts(|| *self.waiter.lock() = Some(me()));
        let deadline = time::Deadline::after_ms(timeout_ms);
        while self.count() == seen && !deadline.passed() {
            if park(Some(timeout_ms)) == Woken::TimedOut {
                break;
            }
        }
        self.count()
    }
}

/// Queues task `id` if it is parked (interrupts off), after setting its token with `token`;
/// whether it was parked.
fn wake(id: usize, token: bool) -> bool {
    let t = &TASKS[id];
    let _g = t.wake.lock();
    if token {
        t.token.store(true, Ordering::Release);
    }
    if t.state.compare_exchange(PARKED, READY, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    QUEUES[t.cpu.load(Ordering::Relaxed)].lock().push(id);
    true
}

/// Queues this CPU's tasks whose timed park has expired (from the tick, interrupts off).
fn wake_expired(cpu: usize) {
    let now = time::rdtsc();
    for (id, t) in TASKS.iter().enumerate() {
        let at = t.wake_at.load(Ordering::Relaxed);
        if at != 0 && now >= at && t.cpu.load(Ordering::Relaxed) == cpu && t.state.load(Ordering::Acquire) == PARKED {
            wake(id, false);
        }
    }
}

/// Installs page-table root `root` for the running task and returns the one it had. The
/// switch path restores each task's own root, so a preempted task resumes in its space.
pub fn switch_root(root: u64) -> u64 {
    interrupts::without_interrupts(|| {
        let t = &TASKS[current()];
        let prev = t.root.swap(root, Ordering::Relaxed);
        load_root(root);
        if prev == 0 { crate::platform::mm::kernel_root() } else { prev }
    })
}

fn load_root(root: u64) {
    if Cr3::read().0.start_address().as_u64() != root {
        smp::set_root(root);
        // SAFETY: every root the scheduler loads is the kernel's or an address space's whose
        // kernel half is a copy of the kernel's (`init_root`), so this code and its stack stay
        // mapped; an address space stays alive while a task runs in it (`uspace::run` holds
        // a reference).
        unsafe {
            Cr3::write(
                x86_64::structures::paging::PhysFrame::containing_address(x86_64::PhysAddr::new(root)),
                Cr3Flags::empty(),
            )
        };
    }
}

/// Called from the trap path (interrupts off) on a timer tick, reschedule IPI or yield:
/// returns the frame to resume, this one or the next queued task's.
pub fn preempt(frame: *mut TrapFrame, tick: bool) -> *mut TrapFrame {
    let cpu = smp::index();
    let cur = CURRENT[cpu].load(Ordering::Relaxed);
    if cur == NONE {
        return frame;
    }
    if tick {
        smp::cpu(cpu).ticks.fetch_add(1, Ordering::Relaxed);
    }
    let idle = IDLE[cpu].load(Ordering::Relaxed);
    if tick && TIMED[cpu].load(Ordering::Relaxed) > 0 {
        wake_expired(cpu);
    }
    let mut state = TASKS[cur].state.load(Ordering::Acquire);
    if PARKING[cpu].swap(NONE, Ordering::Relaxed) == cur && cur != idle && idle != NONE && state == RUNNING {
        // A task asking to park is parked unless a wake already came (it then runs on and
        // its `park` consumes the token). Under its wake lock, so an `unpark` either sets the
        // token first or finds it parked and queues it.
        let t = &TASKS[cur];
        let _g = t.wake.lock();
        if !t.token.load(Ordering::Acquire) {
            t.state.store(PARKED, Ordering::Release);
            state = PARKED;
        }
    }
    let next = {
        let mut q = QUEUES[cpu].lock();
        match q.pop() {
            Some(n) => {
                if state == RUNNING && cur != idle {
                    q.push(cur);
                }
                n
            }
            None if state == RUNNING || idle == NONE => return frame,
            None => idle,
        }
    };
    if next == cur {
        // Parked and woken again before the switch (the wake queued it here): it runs on.
        TASKS[cur].state.store(RUNNING, Ordering::Release);
        return frame;
    }
    match state {
        RUNNING => TASKS[cur].state.store(READY, Ordering::Release),
        EXITING => EXITED[cpu].store(cur, Ordering::Release),
        _ => {}
    }
    let now = time::rdtsc();
    let ran = now.saturating_sub(TASKS[cur].since.load(Ordering::Relaxed));
    TASKS[cur].cycles.fetch_add(ran, Ordering::Relaxed);
    if cur != idle {
        BUSY[cpu].fetch_add(ran, Ordering::Relaxed);
    }
    SWITCHES[cpu].fetch_add(1, Ordering::Relaxed);
    TASKS[cur].rsp.store(frame as u64, Ordering::Relaxed);
    let n = &TASKS[next];
    n.since.store(now, Ordering::Relaxed);
    n.state.store(RUNNING, Ordering::Release);
    CURRENT[cpu].store(next, Ordering::Release);
    load_root(n.root.load(Ordering::Relaxed));
    // A task running user code: its trap stack and FS base.
    crate::platform::arch::user::switched(cur, next);
    n.rsp.load(Ordering::Acquire) as *mut TrapFrame
}

/// Runs on every way out of the trap path, on the stack of the task about to resume: a task
/// that exited on this CPU is now off its stack and can be marked done.
pub extern "C" fn finish_switch() {
    let e = EXITED[smp::index()].swap(NONE, Ordering::AcqRel);
    if e != NONE {
        TASKS[e].state.store(DONE, Ordering::Release);
    }
}

/// Per-CPU scheduling counters: (busy cycles, context switches, timer ticks).
pub fn cpu_stats(cpu: usize) -> (u64, u64, u64) {
    (
        BUSY[cpu].load(Ordering::Relaxed),
        SWITCHES[cpu].load(Ordering::Relaxed),
        smp::cpu(cpu).ticks.load(Ordering::Relaxed),
    )
}
