//! Tests of the interval notifiers: the sequence protocol step by step, deferral, misuse,
//! an exhaustive interleaving check of a mirror against invalidations, and a threaded stress.

use super::*;
use crate::mm::notify::{Event, Owner};
use alloc::vec;
use std::sync::atomic::AtomicUsize;

fn range(start: u64, end: u64, event: Event) -> Range {
    Range { space: 1, start, end, event, owner: None, blockable: true }
}

/// A driver that records what it saw and calls `set_seq` like a correct driver.
#[derive(Default)]
struct Mirror {
    seen: Mutex<Vec<(u64, u64, Event, u64)>>,
    /// The owner of each invalidation seen.
    owners: Mutex<Vec<Option<Owner>>>,
    lock: Mutex<()>,
    refuse_nonblocking: AtomicBool,
}

impl IntervalOps for Mirror {
    fn invalidate(&self, sub: &Interval, r: &Range, cur_seq: u64) -> bool {
        if !r.blockable && self.refuse_nonblocking.load(Ordering::Relaxed) {
            return false;
        }
        let _g = self.lock.lock();
        sub.set_seq(cur_seq);
        self.seen.lock().push((r.start, r.end, r.event, cur_seq));
        self.owners.lock().push(r.owner);
        true
    }
}

fn ops(m: &Arc<Mirror>) -> Weak<dyn IntervalOps> {
    let w: Weak<Mirror> = Arc::downgrade(m);
    w
}

#[test]
fn sequence_protocol_step_by_step() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let sub = subs.insert(0x1000, 0x4000, ops(&m)).unwrap();
    assert_eq!(subs.seq(), 2);
    let seq = sub.read_begin().unwrap();
    assert_eq!(seq, 1, "a new interval's seq is odd and differs from the subscriptions'");
    assert!(!sub.read_retry(seq));

    // An invalidation elsewhere does not touch the interval or the sequence.
    let far = range(0x10_0000, 0x20_0000, Event::Unmap);
    assert!(subs.invalidate_start(&far));
    assert_eq!(subs.seq(), 2);
    subs.invalidate_end(&far);
    assert_eq!(subs.seq(), 2, "an invalidation that hit no interval leaves the sequence as it was");
    assert!(!subs.is_invalidating());
    assert!(!sub.read_retry(seq));
    assert!(m.seen.lock().is_empty());

    // One that overlaps makes the sequence odd, calls the driver with it, and the reader's
    // retry check fails.
    let r = range(0x4000, 0x6000, Event::ProtectionVma);
    assert!(subs.invalidate_start(&r));
    assert_eq!(subs.seq(), 3);
    assert!(subs.is_invalidating());
    assert_eq!(*m.seen.lock(), vec![(0x4000, 0x6000, Event::ProtectionVma, 3)]);
    assert!(sub.read_retry(seq));
    assert!(sub.check_retry(seq));
    subs.invalidate_end(&r);
    assert_eq!(subs.seq(), 4);
    // The next read starts from the invalidation's value and is clean.
    let seq2 = sub.read_begin().unwrap();
    assert_eq!(seq2, 3);
    assert!(!sub.read_retry(seq2));
    sub.remove().unwrap();
    assert!(subs.is_empty());
}

#[test]
fn nested_invalidations_end_once() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let sub = subs.insert(0, 0x10_0000, ops(&m)).unwrap();
    let a = range(0, 0x1000, Event::Clear);
    let b = range(0x2000, 0x3000, Event::Clear);
    subs.invalidate_start(&a);
    subs.invalidate_start(&b);
    let seqs: Vec<u64> = m.seen.lock().iter().map(|e| e.3).collect();
    assert_eq!(seqs, vec![3, 3], "every callback of one invalidating period sees the same odd seq");
    subs.invalidate_end(&a);
    assert!(subs.is_invalidating(), "still invalidating until the last end");
    subs.invalidate_end(&b);
    assert_eq!(subs.seq(), 4);
    drop(sub);
    assert!(subs.is_empty(), "dropping the handle removes the interval");
}

#[test]
fn insert_and_remove_are_deferred_while_invalidating() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let a = subs.insert(0, 0x1000, ops(&m)).unwrap();
    let r = range(0, 0x1000, Event::Clear);
    subs.invalidate_start(&r);
    let b = subs.insert(0, 0x1000, ops(&m)).unwrap();
    assert_eq!(subs.len(), 1, "the tree is frozen while invalidating");
    let seq = b.read_begin_nowait();
    assert_eq!(seq, subs.seq(), "a deferred insert reads as invalidating until the end");
    subs.invalidate_end(&r);
    assert_eq!(subs.len(), 2);
    let s = b.read_begin().unwrap();
    assert!(!b.read_retry(s));

    // Removal while invalidating (from another context) is queued; the tree shrinks at the end.
    subs.invalidate_start(&r);
    let seen_before = m.seen.lock().len();
    assert_eq!(seen_before, 3, "one callback for the first period, two (a and b) now");
    drop(a); // in the invalidating context: queued without waiting
    assert_eq!(subs.len(), 2);
    subs.invalidate_end(&r);
    assert_eq!(subs.len(), 1);
    b.remove().unwrap();
    assert!(subs.is_empty());
}

impl Interval {
    /// The sequence without waiting (tests only).
    fn read_begin_nowait(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

/// A driver whose callback misuses the API: removes its own notifier, then waits on its own
/// interval. Both come back as errors, not deadlocks.
struct SelfRemover {
    handle: Mutex<Option<IntervalNotifier>>,
    errors: Mutex<Vec<Error>>,
}

impl IntervalOps for SelfRemover {
    fn invalidate(&self, sub: &Interval, _r: &Range, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        if let Err(e) = sub.read_begin() {
            self.errors.lock().push(e);
        }
        let h = self.handle.lock().take();
        if let Some(h) = h {
            match h.remove() {
                Ok(()) => panic!("remove from the callback succeeded"),
                Err((h, e)) => {
                    self.errors.lock().push(e);
                    *self.handle.lock() = Some(h);
                }
            }
        }
        true
    }
}

#[test]
fn removing_from_own_callback_is_an_error() {
    let subs = Subscriptions::new();
    let d = Arc::new(SelfRemover { handle: Mutex::new(None), errors: Mutex::new(Vec::new()) });
    let w: Weak<SelfRemover> = Arc::downgrade(&d);
    let h = subs.insert(0, 0x1000, w).unwrap();
    *d.handle.lock() = Some(h);
    let r = range(0, 0x1000, Event::Unmap);
    subs.invalidate_start(&r);
    subs.invalidate_end(&r);
    let errors = d.errors.lock().clone();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| matches!(e, Error::Busy(_))), "{errors:?}");
    // Still registered, and removable from outside the callback.
    assert_eq!(subs.len(), 1);
    let h = d.handle.lock().take().unwrap();
    h.remove().unwrap();
    assert!(subs.is_empty());
}

#[test]
fn non_blockable_invalidation_can_fail_and_is_undone() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    m.refuse_nonblocking.store(true, Ordering::Relaxed);
    let _sub = subs.insert(0, 0x1000, ops(&m)).unwrap();
    let mut r = range(0, 0x1000, Event::Clear);
    r.blockable = false;
    assert!(!subs.invalidate_start(&r));
    assert!(!subs.is_invalidating(), "a failed start leaves no invalidation behind");
    assert_eq!(subs.seq() % 2, 0);
}

/// A driver that records the sequence and then refuses every invalidation, blockable or not
/// (a bug for a blockable range; the legacy mirror layer does exactly this when a driver's
/// `sync_cpu_device_pagetables` returns `false`).
struct Refuser;

impl IntervalOps for Refuser {
    fn invalidate(&self, sub: &Interval, _r: &Range, cur_seq: u64) -> bool {
        sub.set_seq(cur_seq);
        false
    }
}

#[test]
fn a_refused_blockable_invalidation_goes_on_and_ends_once() {
    let subs = Subscriptions::new();
    let d = Arc::new(Refuser);
    let w: Weak<Refuser> = Arc::downgrade(&d);
    let sub = subs.insert(0, 0x1000, w).unwrap();
    let r = range(0, 0x1000, Event::Clear);
    // As the address space does: start (its result is not looked at), change, end.
    assert!(subs.invalidate_start(&r), "a blockable invalidation cannot fail");
    assert!(subs.is_invalidating(), "the invalidation stays open until its end");
    assert_eq!(subs.refused_blockable(), 1, "the refusal is reported");
    subs.invalidate_end(&r);
    assert!(!subs.is_invalidating());
    assert_eq!(subs.seq(), 4);
    let seq = sub.read_begin().expect("read_begin after a refused blockable invalidation");
    assert_eq!(seq, 3);
    assert!(!sub.read_retry(seq));
    // And the next invalidation works as usual.
    assert!(subs.invalidate_start(&r));
    assert_eq!(subs.seq(), 5);
    subs.invalidate_end(&r);
    assert_eq!(subs.seq(), 6);
    assert_eq!(subs.refused_blockable(), 2);
    sub.remove().unwrap();
}

#[test]
fn a_refusing_driver_does_not_wedge_its_address_space() {
    use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
    use crate::mm::space::MapRequest;
    use crate::mm::vma::Prot;
    let plat = Arc::new(FakePlatform::new(2048));
    let mm = crate::mm::Mm::new(plat, &[(crate::addr::Pfn(BASE_PFN), 2048)]).unwrap();
    let mut space = AddressSpace::new(&mm).unwrap();
    let subs = Subscriptions::of(&mut space);
    let d = Arc::new(Refuser);
    let w: Weak<Refuser> = Arc::downgrade(&d);
    let sub = subs.insert(0x10_0000, 0x10_0000, w).unwrap();
    let va = space.mmap(MapRequest::anon(0x4000, Prot::RW).fixed(0x10_0000)).unwrap();
    space.write(va, &[1]).unwrap();
    space.munmap(va, 0x4000).unwrap();
    assert!(subs.refused_blockable() >= 1);
    assert!(!subs.is_invalidating());
    let seq = sub.read_begin().expect("read_begin after munmap");
    assert!(!sub.read_retry(seq));
    drop(sub);
}

#[test]
fn bad_ranges_and_dead_spaces_are_refused() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    assert!(matches!(subs.insert(0, 0, ops(&m)), Err(Error::Invalid(_))));
    assert!(matches!(subs.insert(u64::MAX - 10, 100, ops(&m)), Err(Error::Invalid(_))));
    let top = subs.insert(u64::MAX - 4095, 4096, ops(&m)).unwrap();
    assert_eq!(top.last(), u64::MAX);
    let rel = range(0, u64::MAX, Event::Release);
    subs.invalidate_start(&rel);
    subs.invalidate_end(&rel);
    assert!(m.seen.lock().iter().any(|e| e.2 == Event::Release));
    assert!(matches!(subs.insert(0, 4096, ops(&m)), Err(Error::Invalid(_))));
}

#[test]
fn owner_and_event_reach_the_driver() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let _s = subs.insert(0, 0x1000, ops(&m)).unwrap();
    let mut r = range(0, 0x1000, Event::Migrate);
    r.owner = Some(Owner(7));
    subs.invalidate_start(&r);
    subs.invalidate_end(&r);
    let mut r = range(0, 0x1000, Event::Exclusive);
    r.owner = Some(Owner(9));
    subs.invalidate_start(&r);
    subs.invalidate_end(&r);
    let r = range(0, 0x1000, Event::Clear);
    subs.invalidate_start(&r);
    subs.invalidate_end(&r);
    let events: Vec<Event> = m.seen.lock().iter().map(|e| e.2).collect();
    assert_eq!(events, [Event::Migrate, Event::Exclusive, Event::Clear]);
    assert_eq!(*m.owners.lock(), [Some(Owner(7)), Some(Owner(9)), None]);
}

#[test]
fn attaches_once_per_address_space() {
    use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
    let plat = Arc::new(FakePlatform::new(2048));
    let mm = crate::mm::Mm::new(plat, &[(crate::addr::Pfn(BASE_PFN), 2048)]).unwrap();
    let mut space = AddressSpace::new(&mm).unwrap();
    let a = Subscriptions::of(&mut space);
    let b = Subscriptions::of(&mut space);
    assert!(Arc::ptr_eq(&a, &b));
    let m = Arc::new(Mirror::default());
    let _sub = a.insert(0x10_0000, 0x10_0000, ops(&m)).unwrap();
    let va = space.mmap(crate::mm::space::MapRequest::anon(0x4000, crate::mm::vma::Prot::RW).fixed(0x10_0000)).unwrap();
    space.write(va, &[1]).unwrap();
    space.munmap(va, 0x4000).unwrap();
    assert!(m.seen.lock().iter().any(|e| e.2 == Event::Unmap && e.0 == va));
    drop(space);
    assert!(m.seen.lock().iter().any(|e| e.2 == Event::Release));
}

// ------------------------------------------------------------------------------------------
// Exhaustive interleavings of one mirroring driver against two invalidators.
//
// The CPU "page table" is one value. An invalidator is three atomic steps: invalidate_start
// (the driver's callback zaps the mirror), the page-table change, invalidate_end. The driver
// is: read_begin (blocked while the interval is being invalidated), read the value (the range
// fault), then under its user lock: read_retry, and either commit the value to its mirror or go
// back to read_begin (at most three attempts). Every schedule is replayed from scratch on the
// real `Subscriptions`; after every step, if no invalidation is in flight, the mirror must be
// empty or equal to the CPU value.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DriverPc {
    Begin,
    Read,
    Commit,
    Done,
}

struct World {
    subs: Arc<Subscriptions>,
    sub: IntervalNotifier,
    mirror: Arc<Device>,
    cpu: u64,
    pc: DriverPc,
    seq: u64,
    snapshot: u64,
    attempts: u32,
    inv_pc: [u8; 2],
    use_seq: bool,
}

#[derive(Default)]
struct Device {
    lock: Mutex<Option<u64>>,
}

impl IntervalOps for Device {
    fn invalidate(&self, sub: &Interval, _r: &Range, cur_seq: u64) -> bool {
        let mut m = self.lock.lock();
        sub.set_seq(cur_seq);
        *m = None;
        true
    }
}

impl World {
    fn new(use_seq: bool) -> World {
        let subs = Subscriptions::new();
        let mirror = Arc::new(Device::default());
        let w: Weak<Device> = Arc::downgrade(&mirror);
        let sub = subs.insert(0, 0x1000, w).unwrap();
        World {
            subs,
            sub,
            mirror,
            cpu: 0,
            pc: DriverPc::Begin,
            seq: 0,
            snapshot: 0,
            attempts: 0,
            inv_pc: [0; 2],
            use_seq,
        }
    }

    /// The threads that can step now: 0 = driver, 1 and 2 = invalidators.
    fn enabled(&self) -> Vec<usize> {
        let mut v = Vec::new();
        let blocked = self.pc == DriverPc::Begin && self.sub.read_begin_nowait() == self.subs.seq();
        if self.pc != DriverPc::Done && !blocked {
            v.push(0);
        }
        for k in 0..2 {
            if self.inv_pc[k] < 3 {
                v.push(k + 1);
            }
        }
        v
    }

    fn step(&mut self, t: usize) {
        let r = range(0, 0x1000, Event::Clear);
        if t == 0 {
            match self.pc {
                DriverPc::Begin => {
                    self.seq = self.sub.read_begin().unwrap();
                    self.attempts += 1;
                    self.pc = DriverPc::Read;
                }
                DriverPc::Read => {
                    self.snapshot = self.cpu;
                    self.pc = DriverPc::Commit;
                }
                DriverPc::Commit => {
                    let mut m = self.mirror.lock.lock();
                    if self.use_seq && self.sub.read_retry(self.seq) {
                        self.pc = if self.attempts < 3 { DriverPc::Begin } else { DriverPc::Done };
                    } else {
                        *m = Some(self.snapshot);
                        self.pc = DriverPc::Done;
                    }
                }
                DriverPc::Done => unreachable!(),
            }
        } else {
            let k = t - 1;
            match self.inv_pc[k] {
                0 => {
                    self.subs.invalidate_start(&r);
                }
                1 => self.cpu += 1 << (8 * k),
                _ => self.subs.invalidate_end(&r),
            }
            self.inv_pc[k] += 1;
        }
    }

    fn consistent(&self) -> bool {
        let in_flight = self.inv_pc.iter().any(|&p| p == 1 || p == 2);
        in_flight || self.mirror.lock.lock().is_none_or(|v| v == self.cpu)
    }
}

/// Explores every schedule; returns (schedules, violations).
fn explore(use_seq: bool) -> (usize, usize) {
    fn dfs(prefix: &mut Vec<usize>, use_seq: bool, total: &mut usize, bad: &mut usize) {
        let mut w = World::new(use_seq);
        for &t in prefix.iter() {
            w.step(t);
        }
        if !w.consistent() {
            *bad += 1;
            *total += 1;
            return;
        }
        let next = w.enabled();
        drop(w);
        if next.is_empty() {
            *total += 1;
            return;
        }
        for t in next {
            prefix.push(t);
            dfs(prefix, use_seq, total, bad);
            prefix.pop();
        }
    }
    let (mut total, mut bad) = (0, 0);
    dfs(&mut Vec::new(), use_seq, &mut total, &mut bad);
    (total, bad)
}

#[test]
fn every_interleaving_keeps_the_mirror_coherent() {
    let (total, bad) = explore(true);
    assert!(total > 500, "only {total} schedules explored");
    assert_eq!(bad, 0, "{bad} of {total} schedules left a stale mirror");
}

#[test]
fn the_checker_catches_a_driver_without_the_retry_check() {
    // The P1 bug class: committing without read_retry. The same exploration must find it.
    let (total, bad) = explore(false);
    assert!(bad > 0, "no stale mirror found in {total} schedules: the checker is blind");
}

// ------------------------------------------------------------------------------------------
// Threads. Every thread of this test binary is its own notifier context (`thread_context`),
// whatever hook anything installed, so tests running in parallel cannot see each other through
// it. No assertion below depends on how the threads are scheduled: cross-thread steps are
// ordered by handshakes (a thread holds an invalidation open until it sees the other waiting,
// `Subscriptions::waiters`), and every handshake wait is bounded.

/// The current thread's notifier context: a number unique to the thread in this process.
pub(super) fn thread_context() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    std::thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed) as u64);
    ID.with(|i| *i)
}

/// Spins (yielding) until `cond` holds; fails the test after ten seconds, which only a hang
/// reaches (the handshakes below take microseconds).
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[test]
fn threads_are_distinct_contexts() {
    let here = thread_context();
    assert_eq!(here, thread_context(), "a thread keeps its context");
    let there = std::thread::spawn(thread_context).join().unwrap();
    assert_ne!(here, there);
    // Installing a hook changes nothing in this binary: it could not reach other tests.
    set_context_fn(|| 0);
    assert_eq!(context(), here);
}

#[test]
fn read_begin_on_another_thread_waits_for_the_invalidation_to_end() {
    let subs = Subscriptions::new();
    let dev = Arc::new(Device::default());
    let w: Weak<Device> = Arc::downgrade(&dev);
    let sub = Arc::new(subs.insert(0, 0x1000, w).unwrap());
    let r = range(0, 0x1000, Event::Clear);
    assert!(subs.invalidate_start(&r));
    let cur_seq = subs.seq();
    assert_eq!(cur_seq & 1, 1);
    let ended = Arc::new(AtomicBool::new(false));
    let reader = {
        let (sub, ended) = (sub.clone(), ended.clone());
        std::thread::spawn(move || {
            let seq = sub.read_begin();
            (seq, ended.load(Ordering::SeqCst), sub.read_retry(*seq.as_ref().unwrap_or(&0)))
        })
    };
    wait_until("the reader waits in read_begin", || subs.waiters() == 1);
    assert!(!reader.is_finished(), "read_begin returned during the invalidation");
    ended.store(true, Ordering::SeqCst);
    subs.invalidate_end(&r);
    let (seq, after_end, retry) = reader.join().unwrap();
    assert_eq!(seq, Ok(cur_seq), "the reader gets the invalidation's sequence");
    assert!(after_end, "read_begin returned before the invalidation ended");
    assert!(!retry, "nothing invalidated since: the read is clean");
    assert_eq!(subs.waiters(), 0);
}

#[test]
fn remove_on_another_thread_waits_for_the_invalidation_to_end() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let sub = subs.insert(0, 0x1000, ops(&m)).unwrap();
    let r = range(0, 0x1000, Event::Clear);
    assert!(subs.invalidate_start(&r));
    let ended = Arc::new(AtomicBool::new(false));
    let remover = {
        let ended = ended.clone();
        std::thread::spawn(move || {
            let res = sub.remove().map_err(|(_, e)| e);
            (res, ended.load(Ordering::SeqCst))
        })
    };
    wait_until("the remover waits", || subs.waiters() == 1);
    assert_eq!(subs.len(), 1, "the tree is frozen: the removal is deferred");
    ended.store(true, Ordering::SeqCst);
    subs.invalidate_end(&r);
    let (res, after_end) = remover.join().unwrap();
    assert_eq!(res, Ok(()));
    assert!(after_end, "remove returned before the invalidation ended");
    assert!(subs.is_empty());
}

/// A reader loop against an invalidating writer: the mirror is never stale. The loop checks an
/// invariant that holds under every schedule; the final round, after the writer has finished,
/// must commit the last value whatever happened before.
#[test]
fn threaded_readers_never_commit_stale_values() {
    let subs = Subscriptions::new();
    let dev = Arc::new(Device::default());
    let w: Weak<Device> = Arc::downgrade(&dev);
    let sub = Arc::new(subs.insert(0, 0x1000, w).unwrap());
    let cpu = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (subs, cpu, stop) = (subs.clone(), cpu.clone(), stop.clone());
        std::thread::spawn(move || {
            let r = range(0, 0x1000, Event::Clear);
            for _ in 0..2_000 {
                assert!(subs.invalidate_start(&r));
                cpu.fetch_add(1, Ordering::SeqCst);
                subs.invalidate_end(&r);
            }
            stop.store(true, Ordering::SeqCst);
        })
    };
    // One round of the driver's loop: Some(value) when it committed.
    let round = || -> Option<u64> {
        let seq = sub.read_begin().unwrap();
        let snap = cpu.load(Ordering::SeqCst);
        let mut m = dev.lock.lock();
        if sub.read_retry(seq) {
            return None;
        }
        *m = Some(snap);
        // While we hold the user lock no invalidation can complete its callback, so the value
        // we just committed is the CPU's unless an invalidation started (and is blocked on us).
        let now = cpu.load(Ordering::SeqCst);
        assert_eq!(now, snap, "a value changed under the user lock without an invalidation reaching the driver");
        Some(snap)
    };
    while !stop.load(Ordering::SeqCst) {
        round();
    }
    writer.join().unwrap();
    assert!(dev.lock.lock().is_none_or(|v| v == cpu.load(Ordering::SeqCst)));
    // Nothing invalidates any more: this round commits the final value.
    assert_eq!(round(), Some(2_000));
    assert_eq!(*dev.lock.lock(), Some(2_000));
}

// ------------------------------------------------------------------------------------------
// Branches the tests above leave open.

#[test]
fn an_insert_during_an_invalidation_that_hit_nothing_freezes_at_once() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let far = range(0x10_0000, 0x20_0000, Event::Unmap);
    assert!(subs.invalidate_start(&far));
    assert_eq!(subs.seq(), 2, "nothing hit yet");
    let sub = subs.insert(0x10_0000, 0x1000, ops(&m)).unwrap();
    assert_eq!(subs.len(), 1, "no invalidation hit an interval: the tree takes it at once");
    assert_eq!(subs.seq(), 3, "but the sequence goes odd, so its first read waits for the running one");
    assert_eq!(sub.read_begin_nowait(), 3);
    assert!(m.seen.lock().is_empty(), "the running invalidation's callbacks are over");
    subs.invalidate_end(&far);
    assert_eq!(subs.seq(), 4);
    let seq = sub.read_begin().unwrap();
    assert_eq!(seq, 3);
    assert!(!sub.read_retry(seq));
}

#[test]
fn only_overlapping_intervals_are_called_and_ends_are_exclusive() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let _sub = subs.insert(0x1000, 0x4000, ops(&m)).unwrap(); // [0x1000, 0x4fff]
    for (s, e) in [(0, 0x1000), (0x5000, 0x6000)] {
        let r = range(s, e, Event::Clear);
        assert!(subs.invalidate_start(&r));
        assert!(!subs.is_invalidating(), "[{s:#x}, {e:#x}) does not touch the interval");
        subs.invalidate_end(&r);
    }
    assert_eq!(subs.callbacks.load(Ordering::Relaxed), 0);
    for (s, e) in [(0, 0x1001), (0x4fff, 0x6000), (0x2000, 0x3000), (0, u64::MAX)] {
        let r = range(s, e, Event::Clear);
        assert!(subs.invalidate_start(&r));
        assert!(subs.is_invalidating(), "[{s:#x}, {e:#x}) touches the interval");
        subs.invalidate_end(&r);
    }
    assert_eq!(subs.callbacks.load(Ordering::Relaxed), 4);
    assert_eq!(m.seen.lock().len(), 4);
}

#[test]
fn a_dropped_driver_is_not_called() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let sub = subs.insert(0, 0x1000, ops(&m)).unwrap();
    drop(m);
    let r = range(0, 0x1000, Event::Clear);
    assert!(subs.invalidate_start(&r));
    assert_eq!(subs.callbacks.load(Ordering::Relaxed), 0);
    subs.invalidate_end(&r);
    assert_eq!(subs.seq(), 4, "the invalidation still ran its period");
    sub.remove().unwrap();
}

#[test]
fn one_refusal_fails_a_non_blockable_start_with_others_accepting() {
    let subs = Subscriptions::new();
    let refuser = Arc::new(Mirror::default());
    refuser.refuse_nonblocking.store(true, Ordering::Relaxed);
    let fine = Arc::new(Mirror::default());
    let a = subs.insert(0, 0x1000, ops(&refuser)).unwrap();
    let b = subs.insert(0x1000, 0x1000, ops(&fine)).unwrap();
    let mut r = range(0, 0x2000, Event::Clear);
    r.blockable = false;
    assert!(!subs.invalidate_start(&r));
    assert!(!subs.is_invalidating());
    assert_eq!(subs.refused_blockable(), 0, "a non-blockable refusal is legal");
    // Undone: nothing waits, and the next blockable invalidation works.
    assert!(a.read_begin().is_ok() && b.read_begin().is_ok());
    r.blockable = true;
    assert!(subs.invalidate_start(&r));
    subs.invalidate_end(&r);
    assert!(!subs.is_invalidating());
}

#[test]
fn a_wait_that_never_ends_is_bounded() {
    let subs = Subscriptions::with_wait_spins(1_000);
    let m = Arc::new(Mirror::default());
    let sub = Arc::new(subs.insert(0, 0x1000, ops(&m)).unwrap());
    let r = range(0, 0x1000, Event::Clear);
    assert!(subs.invalidate_start(&r));
    // This thread keeps the invalidation open until the reader has given up.
    let s2 = sub.clone();
    let res = std::thread::spawn(move || s2.read_begin()).join().unwrap();
    assert!(matches!(res, Err(Error::Busy(why)) if why.contains("did not end")), "{res:?}");
    assert_eq!(subs.waiters(), 0, "a waiter that gave up is no longer counted");
    subs.invalidate_end(&r);
    assert!(sub.read_begin().is_ok());
}

#[test]
fn removing_an_insert_still_deferred_does_not_wait() {
    let subs = Subscriptions::with_wait_spins(1_000_000);
    let m = Arc::new(Mirror::default());
    let _a = subs.insert(0, 0x1000, ops(&m)).unwrap();
    let r = range(0, 0x1000, Event::Clear);
    assert!(subs.invalidate_start(&r));
    let b = subs.insert(0, 0x1000, ops(&m)).unwrap();
    // From another context, while the invalidation stays open: the queued insert is cancelled
    // and nothing is left to wait for.
    let res = std::thread::spawn(move || b.remove().map_err(|(_, e)| e)).join().unwrap();
    assert_eq!(res, Ok(()));
    subs.invalidate_end(&r);
    assert_eq!(subs.len(), 1, "the cancelled insert never reaches the tree");
}

#[test]
fn drop_on_another_thread_waits_for_the_invalidation_to_end() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let sub = subs.insert(0, 0x1000, ops(&m)).unwrap();
    let r = range(0, 0x1000, Event::Clear);
    assert!(subs.invalidate_start(&r));
    let ended = Arc::new(AtomicBool::new(false));
    let dropper = {
        let ended = ended.clone();
        std::thread::spawn(move || {
            drop(sub);
            ended.load(Ordering::SeqCst)
        })
    };
    wait_until("the dropper waits", || subs.waiters() == 1);
    ended.store(true, Ordering::SeqCst);
    subs.invalidate_end(&r);
    assert!(dropper.join().unwrap(), "drop returned before the invalidation ended");
    assert!(subs.is_empty());
}

#[test]
fn an_ended_invalidation_leaves_its_context_free_to_wait() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let sub = Arc::new(subs.insert(0, 0x1000, ops(&m)).unwrap());
    let r = range(0, 0x1000, Event::Clear);
    // This thread invalidates once, start to end...
    assert!(subs.invalidate_start(&r));
    subs.invalidate_end(&r);
    // ...then another thread holds one open until this thread waits on it: this thread is no
    // longer an invalidator, so it waits instead of failing with Busy.
    let go = Arc::new(AtomicBool::new(false));
    let other = {
        let (subs, go) = (subs.clone(), go.clone());
        std::thread::spawn(move || {
            assert!(subs.invalidate_start(&r));
            go.store(true, Ordering::SeqCst);
            wait_until("the first thread waits", || subs.waiters() == 1);
            subs.invalidate_end(&r);
        })
    };
    wait_until("the other thread invalidates", || go.load(Ordering::SeqCst));
    assert_eq!(sub.read_begin(), Ok(5));
    other.join().unwrap();
}

/// `Debug` of an interval (and of its notifier handle) shows what it covers and its
/// sequence, which is what a failing test or a driver's log needs to say.
#[test]
fn debug_output_names_the_interval_and_its_sequence() {
    let subs = Subscriptions::new();
    let m = Arc::new(Mirror::default());
    let sub = subs.insert(0x1000, 0x4000, ops(&m)).unwrap();
    let want = "Interval { start: 4096, last: 20479, seq: 1 }";
    assert_eq!(format!("{sub:?}"), want);
    assert_eq!(format!("{:?}", &*sub), want);
    assert_eq!(format!("{subs:?}"), "Subscriptions { seq: 2, active: 0, .. }");
    sub.remove().unwrap();
}
