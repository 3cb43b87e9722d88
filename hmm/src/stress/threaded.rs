//! The threaded mode: CPU, device and migration operations at the same time on one address
//! space.
//!
//! Pages are owned, for writing, by one thread each (blocks of [`OWN`] pages, round robin):
//! the CPU thread writes its pages with the CPU, the device thread with device 0, the
//! migration thread with the CPU between its migrations (to devices 1 and 2 and back). Every
//! thread reads every page. A tag names its writer, its page and the writer's sequence
//! number, and a writer publishes the number before it writes; so under any interleaving a
//! page must hold 0 or a tag of its owner for that page no newer than published, and a
//! writer reading its own page must see exactly its last write (nobody else writes there,
//! and migrations never change contents). Each of the page's two checked words is checked on
//! its own: a CPU read racing a device write can see the page half written, which is no bug.
//! A fourth thread forks the address space now and then, checks what the child reads (the
//! same rule: the child sees a snapshot), writes in the child (copy-on-write breaks) and lets
//! it exit. After the threads end, every page must hold its owner's last value, and nothing
//! may leak.
//!
//! Errors that contention makes legitimate (`EBUSY` after the retry budget, `ENOENT` from a
//! migration whose read-back raced an invalidation, `EFAULT` from a device write to its own
//! device page that a fork has just made read-only: Linux's `hmm_range_fault` never faults a
//! device-private page of the caller, so the write cannot be served) are tolerated and
//! counted; any other error, and any data check, fails the run. A CPU access that meets a
//! page under migration waits for it and faults again, as the kernel's fault handler does
//! ([`crate::mm::space::with_migration_wait`]), with a bound of [`MIGRATION_RETRIES`] tries
//! (seconds of another thread's migration, never reached unless it hangs).

use super::{
    ARENA, ARENA_PAGES, Broken, Failure, Feature, Machine, PAGE, RING, Rng, Stats, outcome, page_images, tail, va,
};
use crate::dmirror::{Dmirror, EBUSY, EFAULT, ENOENT};
use crate::mm::platform::Platform;
use crate::mm::space::{Advice, FaultError, MapRequest};
use crate::mm::vma::Prot;
use crate::mm::{SharedSpace, ThpMode};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// Pages per ownership block.
const OWN: usize = 16;
/// The writer threads: CPU, device, migration.
const WRITERS: usize = 3;
/// Pages the threaded mode uses (the first half of the arena: one THP-eligible block too).
const PAGES: usize = ARENA_PAGES / 2;

/// Tries of a CPU access that keeps meeting a page under migration before it fails with
/// `MigrationTimeout` (each try takes the lock and faults: seconds in all).
pub const MIGRATION_RETRIES: u32 = 10_000_000;

/// Runs tasks on threads of the caller's platform (the crate has none of its own).
pub trait Threads {
    /// Runs every task on a thread of its own, concurrently, and returns when all have ended.
    /// Each thread must be a distinct context for [`crate::notifier::set_context_fn`].
    fn run<'a>(&self, tasks: Vec<Box<dyn FnOnce() + Send + 'a>>);
}

/// What a threaded run does.
#[derive(Debug, Clone)]
pub struct ThreadedConfig {
    /// Seeds each thread's generator (the interleaving is the scheduler's).
    pub seed: u64,
    /// Operations per thread.
    pub ops_per_thread: u64,
    /// Operation classes switched off ([`Feature::SameDeviceRace`] and [`Feature::Thp`] apply).
    pub disabled: Vec<Feature>,
}

fn owner(i: usize) -> usize {
    (i / OWN) % WRITERS
}

fn make_tag(w: usize, i: usize, seq: u64) -> u64 {
    ((w as u64 + 1) << 60) | ((i as u64) << 40) | seq
}

/// A writer's last value of a page and the earlier ones it may still hold.
type Final = (u64, Vec<u64>);

/// Shared by the threads.
struct Shared {
    space: Arc<SharedSpace>,
    /// Highest sequence number each writer has started to write.
    published: [AtomicU64; WRITERS],
    stop: AtomicBool,
    failure: Mutex<Option<Failure>>,
    tolerated: AtomicU64,
    checked: AtomicU64,
    /// The fork thread runs (it can make device pages read-only under a device write).
    forks: bool,
}

/// One thread's state.
struct Worker<'a> {
    id: usize,
    sh: &'a Shared,
    rng: Rng,
    seq: u64,
    /// This writer's last value of each page it owns (0: never written).
    mine: Vec<u64>,
    /// The value before, where a write failed half way (`EBUSY`) and the page may hold either.
    alt: Vec<Vec<u64>>,
    ring: VecDeque<String>,
}

impl Worker<'_> {
    fn check_word0(&self, i: usize, w0: u64, who: &str) -> Result<(), Broken> {
        self.sh.checked.fetch_add(1, Ordering::Relaxed);
        let o = owner(i);
        let bad = |want: String| Err(Broken::Data { reader: String::from(who), va: va(i), got: w0, torn: false, want });
        if o == self.id {
            if w0 != self.mine[i] && !self.alt[i].contains(&w0) {
                return bad(format!("{:#x} (this thread's last write)", self.mine[i]));
            }
            return Ok(());
        }
        if w0 == 0 {
            return Ok(());
        }
        let seq = w0 & ((1 << 40) - 1);
        if w0 >> 60 != o as u64 + 1
            || (w0 >> 40) & 0xf_ffff != i as u64
            || seq > self.sh.published[o].load(Ordering::Acquire)
        {
            return bad(format!("0 or a tag of writer {o} for this page"));
        }
        Ok(())
    }

    /// Checks the two words of page `i`, each on its own.
    fn check(&self, i: usize, w0: u64, w1: u64, who: &str) -> Result<(), Broken> {
        self.check_word0(i, w0, who)?;
        // The last word is the tail of a value the page may hold: find one.
        if w1 == tail(w0) {
            return Ok(());
        }
        if owner(i) == self.id {
            if self.alt[i].iter().any(|&a| w1 == tail(a)) {
                return Ok(());
            }
            return Err(Broken::Data {
                reader: String::from(who),
                va: va(i) + PAGE - 8,
                got: w1,
                torn: true,
                want: format!("{:#x}", tail(self.mine[i])),
            });
        }
        // Another writer's page: the tail of 0 or of one of its tags for this page.
        let o = owner(i);
        let max = self.sh.published[o].load(Ordering::Acquire);
        let ok = w1 == 0 || (1..=max).any(|s| tail(make_tag(o, i, s)) == w1);
        if ok {
            Ok(())
        } else {
            Err(Broken::Data {
                reader: String::from(who),
                va: va(i) + PAGE - 8,
                got: w1,
                torn: true,
                want: String::from("the tail of one of the owner's tags"),
            })
        }
    }

    fn new_tag(&mut self, i: usize) -> u64 {
        self.seq += 1;
        self.sh.published[self.id].store(self.seq, Ordering::Release);
        make_tag(self.id, i, self.seq)
    }

    fn range(&mut self, own: bool) -> (usize, usize) {
        if own {
            let blocks: Vec<usize> = (0..PAGES / OWN).filter(|b| owner(b * OWN) == self.id).collect();
            let b = blocks[self.rng.below(blocks.len() as u64) as usize];
            let s = self.rng.below(OWN as u64) as usize;
            let n = 1 + self.rng.below((OWN - s) as u64) as usize;
            return (b * OWN + s, n);
        }
        if self.rng.one_in(8) {
            return (0, 512);
        }
        let at = self.rng.below(PAGES as u64) as usize;
        let n = 1 + self.rng.below(32) as usize;
        (at, n.min(PAGES - at))
    }

    fn tolerate(&self) {
        self.sh.tolerated.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a CPU access, again while it returns `Migrating` if the fault path does not wait
    /// itself ([`Feature::CpuFaultWaitsForMigration`] off), at most 100 000 times.
    /// Runs the CPU access `f` (which takes the address space's lock itself), waiting for a
    /// page under migration and trying again (bounded by [`MIGRATION_RETRIES`]).
    fn cpu<T>(&self, mut f: impl FnMut() -> Result<T, FaultError>) -> Result<T, FaultError> {
        let mut r = f();
        for _ in 0..MIGRATION_RETRIES {
            if r.as_ref().err() != Some(&FaultError::Migrating) {
                return r;
            }
            core::hint::spin_loop();
            r = f();
        }
        match r {
            Err(FaultError::Migrating) => Err(FaultError::MigrationTimeout),
            r => r,
        }
    }

    fn cpu_read(&mut self, at: usize, n: usize) -> Result<(), Broken> {
        for i in at..at + n {
            let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
            let r = self.cpu(|| {
                let mut s = self.sh.space.lock();
                s.read(va(i), &mut a).and_then(|()| s.read(va(i) + PAGE - 8, &mut b))
            });
            r.map_err(|e| outcome(format_args!("CPU read at {:#x}", va(i)), e, "Ok"))?;
            self.check(i, u64::from_le_bytes(a), u64::from_le_bytes(b), "CPU")?;
        }
        Ok(())
    }

    fn cpu_write(&mut self, at: usize, n: usize) -> Result<(), Broken> {
        for i in at..at + n {
            let t = self.new_tag(i);
            let r = self.cpu(|| {
                let mut s = self.sh.space.lock();
                s.write(va(i), &t.to_le_bytes()).and_then(|()| s.write(va(i) + PAGE - 8, &tail(t).to_le_bytes()))
            });
            r.map_err(|e| outcome(format_args!("CPU write at {:#x}", va(i)), e, "Ok"))?;
            self.mine[i] = t;
            self.alt[i].clear();
        }
        Ok(())
    }

    fn dev_read(&mut self, f: &Dmirror, d: usize, at: usize, n: usize) -> Result<(), Broken> {
        match f.read(va(at), n as u64) {
            Ok((buf, _)) => {
                for k in 0..n {
                    let b = &buf[k * PAGE as usize..(k + 1) * PAGE as usize];
                    let w0 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                    let w1 = u64::from_le_bytes(b[PAGE as usize - 8..].try_into().expect("8 bytes"));
                    self.check(at + k, w0, w1, &format!("dev{d} READ"))?;
                }
                Ok(())
            }
            Err(e) if e.errno == EBUSY => {
                self.tolerate();
                Ok(())
            }
            Err(e) => Err(outcome(format_args!("dev{d} READ [{:#x}, {n} pages]", va(at)), e, "Ok or EBUSY")),
        }
    }

    fn dev_write(&mut self, f: &Dmirror, at: usize, n: usize) -> Result<(), Broken> {
        let tags: Vec<u64> = (at..at + n).map(|i| self.new_tag(i)).collect();
        match f.write(va(at), &page_images(&tags)) {
            Ok(_) => {
                for (k, t) in tags.into_iter().enumerate() {
                    self.mine[at + k] = t;
                    self.alt[at + k].clear();
                }
                Ok(())
            }
            // Invalidated more often than the retry budget (a fork storm), or a page made
            // read-only by a fork: the pages before the round that gave up were written, the
            // others not.
            Err(e) if e.errno == EBUSY || (e.errno == EFAULT && self.sh.forks) => {
                self.tolerate();
                for (k, t) in tags.into_iter().enumerate() {
                    let old = core::mem::replace(&mut self.mine[at + k], t);
                    self.alt[at + k].push(old);
                }
                Ok(())
            }
            Err(e) => Err(outcome(format_args!("dev0 WRITE [{:#x}, {n} pages]", va(at)), e, "Ok")),
        }
    }

    fn migrate(&mut self, f: &Dmirror, d: usize, at: usize, n: usize, back: bool) -> Result<(), Broken> {
        if back {
            return match f.migrate_to_sys(va(at), n as u64) {
                Ok(_) => Ok(()),
                Err(e) => Err(outcome(format_args!("dev{d} MIGRATE_TO_SYS [{:#x}, {n} pages]", va(at)), e, "Ok")),
            };
        }
        match f.migrate_to_dev(va(at), n as u64) {
            Ok((buf, _)) => {
                for k in 0..n {
                    let b = &buf[k * PAGE as usize..(k + 1) * PAGE as usize];
                    let w0 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
                    let w1 = u64::from_le_bytes(b[PAGE as usize - 8..].try_into().expect("8 bytes"));
                    self.check(at + k, w0, w1, &format!("dev{d} MIGRATE_TO_DEV read-back"))?;
                }
                Ok(())
            }
            Err(e) if e.errno == ENOENT || e.errno == EBUSY => {
                self.tolerate();
                Ok(())
            }
            Err(e) => {
                Err(outcome(format_args!("dev{d} MIGRATE_TO_DEV [{:#x}, {n} pages]", va(at)), e, "Ok, ENOENT or EBUSY"))
            }
        }
    }

    /// The fork thread: forks the address space, checks what the child reads, writes in the
    /// child (copy-on-write breaks), and lets the child exit.
    fn fork(&mut self) -> Result<String, Broken> {
        let (at, n) = self.range(false);
        let text = format!("fork: child reads and writes [{:#x}, {n}]", va(at));
        let (child, mm) = {
            let mut s = self.sh.space.lock();
            (s.fork().map_err(|e| outcome("fork", e, "Ok"))?, s.mm().clone())
        };
        let child = mm.share(child);
        for i in at..at + n {
            let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
            let r = self.cpu(|| {
                let mut s = child.lock();
                s.read(va(i), &mut a).and_then(|()| s.read(va(i) + PAGE - 8, &mut b))
            });
            r.map_err(|e| outcome(format_args!("child CPU read at {:#x}", va(i)), e, "Ok"))?;
            self.check(i, u64::from_le_bytes(a), u64::from_le_bytes(b), "child CPU")?;
            if self.rng.one_in(4) {
                self.cpu(|| child.lock().write(va(i), &u64::MAX.to_le_bytes()))
                    .map_err(|e| outcome(format_args!("child CPU write at {:#x}", va(i)), e, "Ok"))?;
            }
        }
        drop(child);
        Ok(text)
    }

    fn step(&mut self, files: &[Arc<Dmirror>], same_device: bool) -> Result<String, Broken> {
        if self.id == WRITERS {
            return self.fork();
        }
        let own = self.rng.one_in(2);
        let (at, n) = self.range(own);
        let text;
        match (self.id, own) {
            (0, true) => {
                text = format!("cpu: write [{:#x}, {n}]", va(at));
                self.cpu_write(at, n)?;
            }
            (0, false) => {
                text = format!("cpu: read [{:#x}, {n}]", va(at));
                self.cpu_read(at, n)?;
            }
            (1, true) => {
                text = format!("dev0: write [{:#x}, {n}]", va(at));
                self.dev_write(&files[0], at, n)?;
            }
            (1, false) => {
                text = format!("dev0: read [{:#x}, {n}]", va(at));
                self.dev_read(&files[0], 0, at, n)?;
            }
            (_, true) if self.rng.one_in(2) => {
                text = format!("mig: CPU write [{:#x}, {n}]", va(at));
                self.cpu_write(at, n)?;
            }
            _ => {
                let d = if same_device { self.rng.below(3) as usize } else { 1 + self.rng.below(2) as usize };
                let back = self.rng.one_in(3);
                text = format!("mig: dev{d} migrate {} [{:#x}, {n}]", if back { "to sys" } else { "to dev" }, va(at));
                self.migrate(&files[d], d, at, n, back)?;
            }
        }
        Ok(text)
    }
}

/// Runs `cfg` on `threads`: a CPU thread, a device thread and a migration thread over one
/// address space. Not deterministic (the interleaving is the scheduler's), but every check
/// holds under any interleaving, so a failure is a bug.
pub fn run_threaded(cfg: &ThreadedConfig, threads: &dyn Threads) -> Result<Stats, Failure> {
    let setup = |b: Broken| Failure {
        seed: cfg.seed,
        op_index: 0,
        op: String::from("setup"),
        broken: Box::new(b),
        last_ops: Vec::new(),
    };
    let m = Machine::new().map_err(setup)?;
    let thp = !cfg.disabled.contains(&Feature::Thp);
    m.mm.set_thp_mode(ThpMode::Madvise);
    let s = crate::mm::space::AddressSpace::new(&m.mm).map_err(|e| setup(Broken::Setup(format!("{e}"))))?;
    let space = m.mm.share(s);
    {
        let mut s = space.lock();
        s.mmap(MapRequest::anon(PAGES as u64 * PAGE, Prot::RW).fixed(ARENA))
            .map_err(|e| setup(Broken::Setup(format!("mmap: {e}"))))?;
        if thp {
            s.madvise(ARENA, 512 * PAGE, Advice::HugePage)
                .map_err(|e| setup(Broken::Setup(format!("madvise: {e}"))))?;
        }
    }
    let files: Vec<Arc<Dmirror>> = (0..3)
        .map(|d| Dmirror::open(&m.devs[d], &space))
        .collect::<Result<_, _>>()
        .map_err(|e| setup(Broken::Setup(format!("open: {e}"))))?;
    let sh = Shared {
        space: space.clone(),
        published: Default::default(),
        stop: AtomicBool::new(false),
        failure: Mutex::new(None),
        tolerated: AtomicU64::new(0),
        checked: AtomicU64::new(0),
        forks: !cfg.disabled.contains(&Feature::Fork),
    };
    let same_device = !cfg.disabled.contains(&Feature::SameDeviceRace);
    let finals: Vec<Mutex<Vec<Final>>> = (0..WRITERS).map(|_| Mutex::new(Vec::new())).collect();
    {
        let mut tasks: Vec<Box<dyn FnOnce() + Send + '_>> = Vec::new();
        let forker = !cfg.disabled.contains(&Feature::Fork);
        for id in 0..WRITERS + usize::from(forker) {
            let (sh, files, finals) = (&sh, &files, &finals);
            let seed = cfg.seed.wrapping_add(id as u64 * 0x1000_0001);
            let ops = cfg.ops_per_thread;
            tasks.push(Box::new(move || {
                let mut w = Worker {
                    id,
                    sh,
                    rng: Rng::new(seed),
                    seq: 0,
                    mine: alloc::vec![0; PAGES],
                    alt: alloc::vec![Vec::new(); PAGES],
                    ring: VecDeque::new(),
                };
                for i in 0..ops {
                    if sh.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match w.step(files, same_device) {
                        Ok(text) => {
                            if w.ring.len() == RING {
                                w.ring.pop_front();
                            }
                            w.ring.push_back(format!("#{i} {text}"));
                        }
                        Err(b) => {
                            let mut f = sh.failure.lock();
                            if f.is_none() {
                                *f = Some(Failure {
                                    seed: 0,
                                    op_index: i,
                                    op: format!("thread {id} operation #{i}"),
                                    broken: Box::new(b),
                                    last_ops: w.ring.iter().cloned().collect(),
                                });
                            }
                            sh.stop.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                if id < WRITERS {
                    *finals[id].lock() =
                        core::mem::take(&mut w.mine).into_iter().zip(core::mem::take(&mut w.alt)).collect();
                }
            }));
        }
        threads.run(tasks);
    }
    if let Some(f) = sh.failure.lock().take() {
        return Err(Failure { seed: cfg.seed, ..f });
    }
    let end = |b: Broken| Failure {
        seed: cfg.seed,
        op_index: cfg.ops_per_thread,
        op: String::from("end-of-run checks"),
        broken: Box::new(b),
        last_ops: Vec::new(),
    };
    // Every page holds its owner's last value.
    for i in 0..PAGES {
        let (want, alt) = finals[owner(i)].lock()[i].clone();
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        {
            let mut s = space.lock();
            s.read(va(i), &mut a)
                .and_then(|()| s.read(va(i) + PAGE - 8, &mut b))
                .map_err(|e| end(outcome("final CPU read", e, "Ok")))?;
        }
        let (w0, w1) = (u64::from_le_bytes(a), u64::from_le_bytes(b));
        if (w0 != want || w1 != tail(want)) && !alt.iter().any(|&a| w0 == a && w1 == tail(a)) {
            return Err(end(Broken::Data {
                reader: String::from("final CPU read"),
                va: va(i),
                got: w0,
                torn: w1 != tail(w0),
                want: format!("{want:#x}"),
            }));
        }
    }
    for (d, f) in files.iter().enumerate() {
        f.close().map_err(|e| end(outcome(format_args!("close dev{d}"), e, "Ok")))?;
    }
    drop(files);
    let (tolerated, checked) = (sh.tolerated.load(Ordering::Relaxed), sh.checked.load(Ordering::Relaxed));
    drop(sh);
    drop(space);
    for (d, dev) in m.devs.iter().enumerate() {
        if dev.pages_in_use() != 0 {
            return Err(end(Broken::Leak(format!(
                "dev{d}: {} device pages in use with no process left",
                dev.pages_in_use()
            ))));
        }
        dev.release().map_err(|e| end(outcome(format_args!("dev{d} release"), e, "Ok")))?;
    }
    if m.plat.free_frames() != m.baseline {
        return Err(end(Broken::Leak(format!(
            "{} RAM frames not returned",
            m.baseline as i64 - m.plat.free_frames() as i64
        ))));
    }
    Ok(Stats {
        ops: cfg.ops_per_thread * WRITERS as u64,
        pages_checked: checked + PAGES as u64,
        expected_errors: tolerated,
        by_kind: Vec::new(),
    })
}
