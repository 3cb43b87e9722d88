//! MMU interval notifiers and the sequence protocol (Linux's `mmu_interval_notifier`,
//! `mm/mmu_notifier.c`).
//!
//! A driver that mirrors part of an address space registers an [`IntervalNotifier`] over a
//! virtual range. Every page-table change of the address space that overlaps the range calls the
//! driver's [`IntervalOps::invalidate`] *before* the change, so the driver can zap its own
//! mirror; the driver's fault path uses [`Interval::read_begin`] /
//! [`Interval::read_retry`] to know whether what it read from the CPU page tables is
//! still current when it programs its device:
//!
//! ```text
//! again: seq = sub.read_begin()?; lock space; hmm_range_fault(...); unlock space
//!        lock(user_lock); if sub.read_retry(seq) { unlock; goto again }
//!        program device PTEs; unlock(user_lock)
//! invalidate(sub, range, cur_seq): lock(user_lock) [try_lock when !blockable];
//!        sub.set_seq(cur_seq); zap device PTEs; unlock
//! ```
//!
//! [`Subscriptions`] is the per-address-space state (`mmu_notifier_subscriptions`): an
//! [`IntervalTree`] of the registered intervals and one sequence number. The number is even when
//! no invalidation that hits an interval is running; the first such invalidation makes it odd,
//! which "freezes" the tree (inserts and removes are deferred), and the last one to end makes
//! it even again, applies the deferred changes and wakes the waiters. The odd value is the
//! `cur_seq` every callback of that period receives and stores with [`Interval::set_seq`],
//! so a reader whose `seq` was taken before sees a different value afterwards.
//!
//! Invariants:
//! - The tree changes only while no invalidation is active (`active == 0`); otherwise changes go
//!   to the deferred list and are applied by the last `invalidate_end`.
//! - An interval's `seq` equals the subscriptions' `seq` exactly while an invalidation that hit
//!   it is running (`read_begin` waits then).
//! - A start that returns `true` is matched by exactly one `invalidate_end`. A blockable start
//!   always returns `true` (a callback's `false` there is a driver bug, counted in
//!   [`Subscriptions::refused_blockable`]); a non-blockable one that a callback refuses undoes
//!   itself and returns `false`, and gets no `invalidate_end`.
//! - Waiting (`read_begin`, `remove`) is told apart from invalidating by the caller's context
//!   ([`set_context_fn`]); a wait is bounded and counted in [`Subscriptions::waiters`].
//! - Callbacks run without the state lock held (they may call `read_begin`, `set_seq`, insert
//!   and remove other notifiers); the tree is read-locked while they run.
//! - Lock order: the address space, then the state lock, then the tree; a driver's user lock is
//!   taken inside callbacks, so a driver must not hold it while it changes the address space.

use crate::itree::IntervalTree;
use crate::mm::notify::{Event, Notifier, Range};
use crate::mm::space::AddressSpace;
use crate::mm::{Error, pagetable::USER_END};
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::any::Any;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::{Mutex, Once, RwLock};

/// What a driver does when its interval is invalidated (`mmu_interval_notifier_ops`).
pub trait IntervalOps: Send + Sync {
    /// Called before the pages of `range` that overlap `sub` change. The driver takes its user
    /// lock (only `try_lock` when `!range.blockable`, returning `false` if it fails), calls
    /// `sub.set_seq(cur_seq)`, removes its device mappings of the range, and unlocks.
    fn invalidate(&self, sub: &Interval, range: &Range, cur_seq: u64) -> bool;
}

/// Ops that only record the sequence: for a caller that holds an interval just long enough to
/// take a consistent snapshot (dmirror's snapshot, benchmarks) and keeps no device mappings.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeqOnly;

impl IntervalOps for SeqOnly {
    fn invalidate(&self, sub: &Interval, _range: &Range, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        true
    }
}

/// Identifies the execution context (CPU or thread) calling in, so that a callback calling
/// back into a blocking operation on its own subscriptions is reported instead of deadlocking.
static CONTEXT: Once<fn() -> u64> = Once::new();

/// Installs the function naming the current execution context: the kernel's task id, unique
/// per task (a waiter must be told apart from the invalidator it waits for, on any CPU, and a
/// task preempted on one CPU must not look like the next task there). The first call wins.
/// Without one every caller is context 0, which is exact only with a single thread of
/// execution. Host tests of this crate ignore the hook: each thread is its own context there
/// (`tests::thread_context`), so tests running in parallel in one binary cannot change each
/// other's contexts.
pub fn set_context_fn(f: fn() -> u64) {
    CONTEXT.call_once(|| f);
}

#[cfg(not(test))]
fn context() -> u64 {
    CONTEXT.get().map_or(0, |f| f())
}

#[cfg(test)]
fn context() -> u64 {
    tests::thread_context()
}

/// How long a wait on the sequence spins before it gives up (`read_begin`, `remove`). An
/// invalidation holds its callbacks for microseconds; a wait this long is a stuck driver.
const WAIT_SPINS: u64 = 2_000_000_000;

#[derive(Debug, Default)]
struct State {
    /// Even when idle, odd while an invalidation that hits an interval runs.
    seq: u64,
    /// Invalidations between `start` and `end` (nested or parallel).
    active: usize,
    /// The contexts running those invalidations.
    active_ctx: Vec<u64>,
    /// Changes to apply when the last invalidation ends: `true` inserts, `false` removes.
    deferred: Vec<(bool, Arc<Interval>)>,
    /// The address space was torn down: no more inserts.
    released: bool,
    next_id: u64,
}

/// The interval notifiers of one address space (`mmu_notifier_subscriptions`).
pub struct Subscriptions {
    this: Weak<Subscriptions>,
    state: Mutex<State>,
    tree: RwLock<IntervalTree<Arc<Interval>>>,
    /// How long a wait spins before it gives up ([`WAIT_SPINS`]; tests shorten it).
    wait_spins: u64,
    /// Invalidations delivered to callbacks (for tests and benchmarks).
    pub callbacks: AtomicU64,
    /// Callers waiting in `read_begin` or `remove` for an invalidation to end (a test can
    /// hold an invalidation open until it sees a waiter, instead of guessing with time).
    waiters: AtomicU64,
    /// Blockable invalidations a callback refused (Linux's `WARN_ON` in `mn_itree_invalidate`):
    /// a driver bug, counted and otherwise ignored.
    refused_blockable: AtomicU64,
}

impl core::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("Subscriptions").field("seq", &s.seq).field("active", &s.active).finish_non_exhaustive()
    }
}

/// One registered interval, as callbacks see it (the fields of `mmu_interval_notifier`).
pub struct Interval {
    start: u64,
    last: u64,
    id: u64,
    seq: AtomicU64,
    ops: Weak<dyn IntervalOps>,
    subs: Arc<Subscriptions>,
    /// In the tree (or queued to be).
    live: AtomicBool,
}

/// A registered interval (`struct mmu_interval_notifier`). Dropping it removes it (without
/// waiting when that is impossible); [`remove`](Self::remove) removes it and reports errors.
pub struct IntervalNotifier {
    inner: Arc<Interval>,
}

impl core::ops::Deref for IntervalNotifier {
    type Target = Interval;
    fn deref(&self) -> &Interval {
        &self.inner
    }
}

impl core::fmt::Debug for Interval {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Interval")
            .field("start", &self.start)
            .field("last", &self.last)
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .finish()
    }
}

impl core::fmt::Debug for IntervalNotifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.inner.fmt(f)
    }
}

impl Subscriptions {
    /// The subscriptions of `space`, attaching a new set the first time (the notifier slot of
    /// an address space belongs to this layer).
    pub fn of(space: &mut AddressSpace) -> Arc<Subscriptions> {
        if let Some(n) = space.notifier()
            && let Some(s) = n.as_any().downcast_ref::<Subscriptions>()
            && let Some(arc) = s.this.upgrade()
        {
            return arc;
        }
        let subs = Subscriptions::new();
        space.set_notifier(Some(subs.clone()));
        subs
    }

    /// Subscriptions attached to nothing yet (tests drive them directly through [`Notifier`]).
    pub fn new() -> Arc<Subscriptions> {
        Self::with_wait_spins(WAIT_SPINS)
    }

    fn with_wait_spins(wait_spins: u64) -> Arc<Subscriptions> {
        Arc::new_cyclic(|this| Subscriptions {
            this: this.clone(),
            state: Mutex::new(State { seq: 2, ..State::default() }),
            tree: RwLock::new(IntervalTree::new()),
            wait_spins,
            callbacks: AtomicU64::new(0),
            waiters: AtomicU64::new(0),
            refused_blockable: AtomicU64::new(0),
        })
    }

    /// The current sequence number (odd while invalidating).
    pub fn seq(&self) -> u64 {
        self.state.lock().seq
    }

    /// Whether an invalidation that hit an interval is running.
    pub fn is_invalidating(&self) -> bool {
        self.state.lock().seq & 1 == 1
    }

    /// The number of registered intervals (deferred changes not yet applied excluded).
    pub fn len(&self) -> usize {
        self.tree.read().len()
    }

    /// Whether no interval is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many callers are waiting now for an invalidation to end (`read_begin`, `remove`).
    pub fn waiters(&self) -> u64 {
        self.waiters.load(Ordering::Acquire)
    }

    /// How many times a callback returned `false` for a blockable invalidation (a driver bug
    /// that Linux warns about; the invalidation went on).
    pub fn refused_blockable(&self) -> u64 {
        self.refused_blockable.load(Ordering::Relaxed)
    }

    /// Registers `ops` for `[start, start + len)` (`mmu_interval_notifier_insert`).
    ///
    /// Errors: `Invalid` when `len` is 0 or the range overflows (Linux: `-EOVERFLOW`), or the
    /// address space has been torn down (`-EINVAL`).
    pub fn insert(&self, start: u64, len: u64, ops: Weak<dyn IntervalOps>) -> Result<IntervalNotifier, Error> {
        if len == 0 {
            return Err(Error::Invalid("interval notifier of length 0"));
        }
        let last = start.checked_add(len - 1).ok_or(Error::Invalid("interval notifier range overflows"))?;
        let subs = self.this.upgrade().ok_or(Error::Invalid("address space gone"))?;
        let mut st = self.state.lock();
        if st.released {
            return Err(Error::Invalid("the address space has been torn down (no users left)"));
        }
        st.next_id += 1;
        let id = st.next_id;
        let inner =
            Arc::new(Interval { start, last, id, seq: AtomicU64::new(0), ops, subs, live: AtomicBool::new(true) });
        if st.active > 0 {
            if st.seq & 1 == 1 {
                // The tree is frozen: insert when the invalidation ends. The odd seq makes the
                // first read_begin wait for that end.
                st.deferred.push((true, inner.clone()));
            } else {
                // Invalidations are running but none hit an interval: freeze now, so the new
                // interval's first read sees the end of them.
                st.seq |= 1;
                self.tree.write().insert(start, last, id, inner.clone());
            }
            inner.seq.store(st.seq, Ordering::Release);
        } else {
            // Odd and different from the (even) current value: the first read_begin proceeds
            // and its read_retry succeeds unless an invalidation comes.
            inner.seq.store(st.seq - 1, Ordering::Release);
            self.tree.write().insert(start, last, id, inner.clone());
        }
        Ok(IntervalNotifier { inner })
    }

    fn wait_for_seq_change(&self, seq: u64) -> Result<(), Error> {
        let ctx = context();
        if self.state.lock().active_ctx.contains(&ctx) {
            return Err(Error::Busy(
                "waiting on an invalidation from inside it (a callback called read_begin or remove on its own \
                 address space): it would never end",
            ));
        }
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let mut spins = 0u64;
        let mut r = Ok(());
        while self.state.lock().seq == seq {
            spins += 1;
            if spins > self.wait_spins {
                r = Err(Error::Busy("an invalidation did not end: a notifier callback is stuck"));
                break;
            }
            core::hint::spin_loop();
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        r
    }
}

impl Notifier for Subscriptions {
    fn invalidate_start(&self, range: &Range) -> bool {
        let last = range.end.saturating_sub(1).max(range.start);
        let cur_seq = {
            let mut st = self.state.lock();
            st.active += 1;
            st.active_ctx.push(context());
            if range.event == Event::Release {
                st.released = true;
            }
            if self.tree.read().any_overlap(range.start, last) {
                st.seq |= 1;
            }
            st.seq
        };
        if cur_seq & 1 == 0 {
            return true;
        }
        let tree = self.tree.read();
        let mut ok = true;
        tree.for_each_overlap(range.start, last, &mut |_, _, inner| {
            if let Some(ops) = inner.ops.upgrade() {
                self.callbacks.fetch_add(1, Ordering::Relaxed);
                ok &= ops.invalidate(inner, range, cur_seq);
            }
        });
        drop(tree);
        if ok {
            return true;
        }
        if range.blockable {
            // `false` is legal only when the range is not blockable. Linux warns and goes on
            // (`mn_itree_invalidate`): the address space will call `invalidate_end` for this
            // start, so it must stay open.
            self.refused_blockable.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        // A non-blockable invalidation failed: undo this start (Linux's -EAGAIN path); the
        // caller does not call `invalidate_end`.
        self.invalidate_end(range);
        false
    }

    fn invalidate_end(&self, _range: &Range) {
        let mut st = self.state.lock();
        st.active -= 1;
        let ctx = context();
        if let Some(i) = st.active_ctx.iter().position(|&c| c == ctx) {
            st.active_ctx.swap_remove(i);
        }
        if st.active > 0 || st.seq & 1 == 0 {
            return;
        }
        st.seq += 1;
        let deferred = core::mem::take(&mut st.deferred);
        if !deferred.is_empty() {
            let mut tree = self.tree.write();
            for (insert, inner) in deferred {
                if insert {
                    tree.insert(inner.start, inner.last, inner.id, inner);
                } else {
                    tree.remove(inner.start, inner.id);
                }
            }
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Interval {
    /// First address covered.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Last address covered (inclusive).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The subscriptions it is registered with.
    pub fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subs
    }

    /// Starts a read side critical section (`mmu_interval_read_begin`): waits while an
    /// invalidation of this interval runs, then returns the sequence to pass to
    /// [`read_retry`](Self::read_retry). Fails only when called from inside an invalidation of
    /// the same address space (it would wait for itself) or when a callback is stuck.
    pub fn read_begin(&self) -> Result<u64, Error> {
        let subs = &self.subs;
        let (seq, invalidating) = {
            let st = subs.state.lock();
            let seq = self.seq.load(Ordering::Acquire);
            (seq, seq == st.seq)
        };
        if invalidating {
            subs.wait_for_seq_change(seq)?;
        }
        Ok(seq)
    }

    /// Whether the mirror read since [`read_begin`](Self::read_begin) returned `seq` is stale
    /// (`mmu_interval_read_retry`). Must run under the same user lock the `invalidate`
    /// callback takes: that lock orders this check against `set_seq`.
    pub fn read_retry(&self, seq: u64) -> bool {
        self.seq.load(Ordering::Acquire) != seq
    }

    /// A lockless hint (`mmu_interval_check_retry`): `true` is reliable, `false` is not.
    pub fn check_retry(&self, seq: u64) -> bool {
        self.seq.load(Ordering::Relaxed) != seq
    }

    /// Records the invalidation sequence; called by `invalidate` under the user lock
    /// (`mmu_interval_set_seq`).
    pub fn set_seq(&self, cur_seq: u64) {
        self.seq.store(cur_seq, Ordering::Release);
    }
}

impl IntervalNotifier {
    /// Unregisters (`mmu_interval_notifier_remove`). If an invalidation is running, the
    /// removal is queued and this waits for it to end; afterwards no callback runs. Calling
    /// it from an invalidation callback of the same address space is an error (it would wait
    /// for itself); the notifier stays registered then and comes back with the error.
    pub fn remove(self) -> Result<(), (IntervalNotifier, Error)> {
        match self.unregister(true) {
            Ok(()) => {
                core::mem::forget(self);
                Ok(())
            }
            Err(e) => Err((self, e)),
        }
    }

    fn unregister(&self, wait: bool) -> Result<(), Error> {
        if !self.inner.live.load(Ordering::Acquire) {
            return Ok(());
        }
        let subs = &self.inner.subs;
        let wait_seq = {
            let mut st = subs.state.lock();
            if st.seq & 1 == 1 {
                if wait && st.active_ctx.contains(&context()) {
                    return Err(Error::Busy(
                        "an interval notifier cannot be removed from an invalidation callback of its own address \
                         space (it would wait for itself); remove it after the callback returns",
                    ));
                }
                if let Some(i) = st.deferred.iter().position(|(ins, x)| *ins && Arc::ptr_eq(x, &self.inner)) {
                    // Its insert had not happened yet: cancel it.
                    st.deferred.swap_remove(i);
                    None
                } else {
                    st.deferred.push((false, self.inner.clone()));
                    Some(st.seq)
                }
            } else {
                subs.tree.write().remove(self.inner.start, self.inner.id);
                None
            }
        };
        self.inner.live.store(false, Ordering::Release);
        if let (Some(seq), true) = (wait_seq, wait) {
            subs.wait_for_seq_change(seq)?;
        }
        Ok(())
    }
}

impl Drop for IntervalNotifier {
    fn drop(&mut self) {
        // Handles given to callbacks are forgotten, never dropped; this is the owner's.
        let _ = self.unregister(!context_is_invalidating(&self.inner.subs));
    }
}

fn context_is_invalidating(subs: &Subscriptions) -> bool {
    subs.state.lock().active_ctx.contains(&context())
}

/// The whole user address space as an interval: `[0, USER_END)`.
pub const WHOLE_SPACE: (u64, u64) = (0, USER_END);

#[cfg(test)]
mod tests;
