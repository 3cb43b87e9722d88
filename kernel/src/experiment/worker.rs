//! The CPU workers: a task pinned to each CPU other than the boot CPU, per process of the
//! point, running in that process's address space, that makes the CPU accesses the engine
//! schedules on that core (see the experiment module's header), handed over through a
//! [`Mailbox`]. An idle worker parks, so the workers of several processes share a core.

use super::*;
use crate::arch::time;
use crate::mm::uspace;
use crate::sched;
use alloc::string::ToString;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use hmm::mm::SharedSpace;
use hmm::place::engine::{MechError, SetupStep};

/// How long the boot CPU waits for a worker to make one access.
pub(super) const WORKER_TIMEOUT_NS: u64 = 5_000_000_000;

/// One access handed to a worker: the boot CPU writes `page` and `write`, then bumps `seq`;
/// the worker makes the access and sets `ack` to `seq`.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    page: AtomicU32,
    write: AtomicBool,
    seq: AtomicU64,
    ack: AtomicU64,
    quit: AtomicBool,
    /// The worker is (about to be) parked: a new request must wake it.
    sleeping: AtomicBool,
    /// The worker's task, to wake ([`sched::unpark`]); set as it starts.
    task: spin::Mutex<Option<sched::TaskRef>>,
    error: spin::Mutex<Option<MechError>>,
    /// Accesses this worker made.
    pub(super) served: AtomicU64,
}

/// A task on another CPU that runs in the point's address space and makes the CPU accesses
/// the engine schedules on that core: real loads and stores through that CPU's MMU and TLB,
/// so the boot CPU's migrations must shoot its translations down.
#[derive(Debug)]
pub(super) struct Worker {
    cpu: usize,
    pub(super) mail: Arc<Mailbox>,
    task: Option<sched::JoinHandle<()>>,
}

/// Polls of an empty mailbox before a worker parks.
pub(super) const IDLE_SPINS: u32 = 2000;
/// The longest a worker stays parked without a request (it then looks again).
const PARK_MS: u64 = 10;

impl Worker {
    pub(super) fn start(cpu: usize, space: Arc<SharedSpace>) -> Result<Self, MechError> {
        let mail = Arc::new(Mailbox::default());
        let m = mail.clone();
        let task = sched::spawn_on(cpu, move || {
            *m.task.lock() = Some(sched::me());
            uspace::run(&space, |u| {
                let (mut last, mut idle) = (0, 0u32);
                while !m.quit.load(Ordering::Acquire) {
                    let seq = m.seq.load(Ordering::Acquire);
                    if seq == last {
                        // Spin a little, then park until the boot CPU wakes it (or a tick
                        // passes): off the run queue, so the CPU's other workers (other
                        // processes' on this core) run meanwhile.
                        idle += 1;
                        if idle > IDLE_SPINS {
                            m.sleeping.store(true, Ordering::SeqCst);
                            if m.seq.load(Ordering::SeqCst) == last && !m.quit.load(Ordering::SeqCst) {
                                sched::park(Some(PARK_MS));
                            }
                            m.sleeping.store(false, Ordering::SeqCst);
                            idle = 0;
                        }
                        core::hint::spin_loop();
                        continue;
                    }
                    idle = 0;
                    let (page, write) = (m.page.load(Ordering::Relaxed), m.write.load(Ordering::Relaxed));
                    let va = Real::va(page);
                    let r = u.read_u64(va).and_then(|v| if write { u.write_u64(va, v + 1) } else { Ok(()) });
                    if let Err(f) = r {
                        *m.error.lock() = Some(MechError::CpuFault { page, cpu, address: f.address, error: f.error });
                    }
                    m.served.fetch_add(1, Ordering::Relaxed);
                    last = seq;
                    m.ack.store(seq, Ordering::Release);
                }
            })
        })
        .map_err(|e| MechError::Setup(SetupStep::Worker { cpu, cause: e.to_string() }))?;
        Ok(Worker { cpu, mail, task: Some(task) })
    }

    /// Has the worker make one access, and waits for it.
    pub(super) fn access(&self, page: u32, write: bool) -> Result<(), MechError> {
        let m = &self.mail;
        m.page.store(page, Ordering::Relaxed);
        m.write.store(write, Ordering::Relaxed);
        let seq = m.seq.load(Ordering::Relaxed) + 1;
        m.seq.store(seq, Ordering::SeqCst);
        if m.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
        let deadline = time::Deadline::after_ns(WORKER_TIMEOUT_NS);
        while m.ack.load(Ordering::Acquire) != seq {
            if deadline.passed() {
                return Err(MechError::WorkerTimeout { cpu: self.cpu, page, ms: WORKER_TIMEOUT_NS / 1_000_000 });
            }
            core::hint::spin_loop();
        }
        match m.error.lock().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Worker {
    fn wake(&self) {
        match *self.mail.task.lock() {
            Some(t) => sched::unpark(t),
            None => sched::kick(self.cpu),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.mail.quit.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(t) = self.task.take()
            && let Err(e) = t.join(WORKER_TIMEOUT_NS / 1_000_000)
        {
            log::error!("experiment: stopping a CPU worker: {e}");
        }
    }
}
