//! A seeded randomized interleaving test of the whole HMM stack, with a shadow model.
//!
//! [`run`] drives the memory manager, two device-private dmirror devices (0, 1), one
//! device-coherent one (2) and the CPU over several processes, with operations a small
//! deterministic generator picks: CPU reads and writes; device reads and writes; migration to
//! each device and back; CPU faults on device pages (every CPU access to a migrated page);
//! `mprotect`, `munmap`, `mmap` (fixed, with and without `MADV_HUGEPAGE` and `MAP_POPULATE`),
//! `mremap` (with and without `MREMAP_DONTUNMAP`), `madvise` (`DONTNEED`, `FREE`, `WILLNEED`,
//! `[NO]HUGEPAGE`); fork with copy-on-write and process exit; device-exclusive access and CPU
//! access after it (`CHECK_EXCLUSIVE`); snapshots; direct `hmm_range_fault` calls with random
//! per-page requests; THPs and device THPs (2 MiB-aligned ranges of `MADV_HUGEPAGE` memory);
//! device memory removal (`RELEASE`); file close and reopen; and injected failures (a device
//! copy error, a device allocation failure, a RAM allocation failure).
//!
//! The shadow model knows, for every page of every process, whether it is mapped, with which
//! protection, and its contents: a page holds a tag `t` in its first word and `t * K` in its
//! last (so a torn or stale copy shows), tag 0 being the zero page. Every read (CPU, device,
//! the data a migration or exclusive access reads back, the frames a range fault returns)
//! is checked against it, and so is every outcome the model can predict exactly (a CPU write
//! to a read-only page is a protection fault, a device write there is `EPERM`, a snapshot or
//! a range fault never shows a writable page in a read-only mapping, a migration of RAM pages
//! to a device succeeds...). Where an outcome is legitimately open (a device write that
//! failed half way, `MADV_FREE`), the page holds the set of values it may have, and the next
//! read decides. At the end every page of every process is read, and the run checks that no
//! RAM frame, device page, frame-table section or notifier state leaked.
//!
//! Single-threaded runs are deterministic: the same [`Config`] gives the same operation
//! sequence and the same result. A failure is a [`Failure`]: the seed, the index of the
//! failing operation, the operation, what check broke, and the last [`RING`] operations.
//! [`run_threaded`] runs CPU, device and migration operations concurrently on one address
//! space, on threads the caller provides ([`Threads`]); it checks only what holds under every
//! interleaving (data: every page only ever holds a value its writer wrote, and the writer
//! reads back its last one), never timing.
//!
//! The model also tracks, per page, where it surely is (`Loc`: RAM, a device, or unknown),
//! only to know when an outcome must be exact (a migration of pages known to be in RAM must
//! succeed); it never weakens a data check. Every migration through a device's copy engine
//! can be made to fail ([`Backing`] of our own), so can the device's next allocation
//! (`HMM_DMIRROR_FLAGS`) and the next RAM allocation (the fake platform's counter).
//!
//! Operations that hit known, not yet fixed bugs can be switched off one by one
//! ([`Feature`], [`Config::disabled`]), so the bounded runs can stay green until the fix lands;
//! the bounded test lists what it avoids (`KNOWN_BUGS_AVOIDED` in `stress/tests.rs`), and
//! `cargo xtask stress` runs everything unless told `--avoid`. [`minimize`] shrinks a failing
//! run to a short operation sequence that fails the same way.
//!
//! Not covered (yet): shared and file mappings, hugetlb, the old-API devices and the real
//! devices' backings; the threaded mode runs no `mprotect`/`munmap`/`mremap`, so races of
//! those with migrations are not exercised.
//!
//! Every machine a run builds leaks its frame table (a memory manager and its pagemap
//! registry hold each other), so the fake RAM is pooled between runs.

use crate::addr::Pfn;
use crate::dmirror::{Backing, CmdError, Dmirror, DmirrorDevice, RamBacking, prot};
use crate::mm::notify::Owner;
use crate::mm::platform::Platform;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::space::{AddressSpace, Advice, FaultError, MapRequest, RemapFlags};
use crate::mm::vma::Prot;
use crate::mm::{Error, Mm, SharedSpace, ThpMode};
use crate::notifier::{IntervalOps, SeqOnly, Subscriptions};
use crate::pagemap::{DevPagemap, MemoryKind, PagemapOps, Pagemaps};
use crate::range::{HmmPfn, HmmRange, PfnEncoding, RangeError, Request, hmm_range_fault};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

mod threaded;
pub use threaded::{ThreadedConfig, Threads, run_threaded};

#[cfg(test)]
mod tests;

const PAGE: u64 = 4096;
/// Pages in a 2 MiB block.
const BLOCK: usize = 512;
/// Where every process's arena starts (2 MiB-aligned).
const ARENA: u64 = 0x4000_0000;
/// Pages in a process's arena (8 MiB: four 2 MiB blocks).
const ARENA_PAGES: usize = 4 * BLOCK;
/// The devices: 0 and 1 private, 2 coherent.
const NDEV: usize = 3;
/// Processes alive at most.
const MAX_PROCS: usize = 3;
/// Operations kept for the failure report.
pub const RING: usize = 32;
/// Multiplier of a page's last word.
const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// Frames of fake RAM.
const RAM_FRAMES: usize = 24 * 1024;
/// Device memory added at a time (one frame-table section per private chunk).
const CHUNK_BYTES: u64 = 16 << 20;
/// Device-memory removals of the private devices a run makes while
/// [`Feature::UnboundedRelease`] is off (each one costs a frame-table section later).
const RELEASE_BUDGET: u32 = 12;

fn va(i: usize) -> u64 {
    ARENA + i as u64 * PAGE
}

/// The pages a device write of `tags` stores: each page full of its tag, its last word the
/// tag's [`tail`].
fn page_images(tags: &[u64]) -> Vec<u8> {
    let mut buf = alloc::vec![0u8; tags.len() * PAGE as usize];
    for (b, t) in buf.chunks_mut(PAGE as usize).zip(tags) {
        for w in b.chunks_mut(8) {
            w.copy_from_slice(&t.to_le_bytes());
        }
        b[PAGE as usize - 8..].copy_from_slice(&tail(*t).to_le_bytes());
    }
    buf
}

fn tail(tag: u64) -> u64 {
    tag.wrapping_mul(K)
}

/// The deterministic generator (splitmix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// An operation class that can be switched off (because it hits a known, unfixed bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// A process opens a second dmirror file on a device it already has one open on (one
    /// file's migration then leaves the other's device page table stale).
    TwoFilesPerDevice,
    /// `mprotect(PROT_NONE)` over pages that may be in device memory (migrating them back
    /// rebuilds a PTE that ignores the current protection).
    ProtNoneOverDevicePages,
    /// Device-memory removal of the private devices without a budget, and the end-of-run probe
    /// that adds and removes device memory 40 times (frame-table sections must come back).
    UnboundedRelease,
    /// An interval notifier of the stress driver's own that refuses (returns `false` from) a
    /// blockable invalidation now and then; the notifier must not be wedged by it.
    FalseInvalidate,
    /// Injected failures: device copy errors, device and RAM allocation failures.
    Inject,
    /// `mremap`.
    Remap,
    /// Fork (with copy-on-write) and process exit.
    Fork,
    /// Device-exclusive access.
    Exclusive,
    /// Direct range faults.
    RangeFault,
    /// THP-eligible 2 MiB blocks (`MADV_HUGEPAGE`) and 512-page operations on them.
    Thp,
    /// Fork while pages are in device-private memory (parent and child then share them,
    /// and a migration home in one leaves the other's device page table stale). Off: a fork
    /// first migrates every private-device page of the parent home.
    ForkWithDevicePages,
    /// Close a dmirror file while pages it migrated are still in its device's memory (a
    /// file opened later on that device then maps them, and their migration home by a CPU
    /// fault does not reach it). Off: a close first migrates that device's pages home.
    CloseWithDevicePages,
    /// `madvise(MADV_[NO]HUGEPAGE)` on part of a 2 MiB block (splitting the VMA inside a
    /// huge mapping). Off: those advices are given for whole 2 MiB blocks only.
    PartialHugeAdvice,
    /// Threaded mode: a CPU fault that meets a migration entry (a child's read while the
    /// parent migrates a page they share) must wait for it. Off: the fork thread retries a
    /// fault that returns `Migrating` (bounded).
    CpuFaultWaitsForMigration,
    /// Threaded mode: the migration thread also migrates with device 0, the device the
    /// device thread reads and writes through (a device fault racing a migration by the same
    /// device).
    SameDeviceRace,
}

impl Feature {
    /// Every feature.
    pub const ALL: [Feature; 15] = [
        Feature::TwoFilesPerDevice,
        Feature::ProtNoneOverDevicePages,
        Feature::UnboundedRelease,
        Feature::FalseInvalidate,
        Feature::Inject,
        Feature::Remap,
        Feature::Fork,
        Feature::Exclusive,
        Feature::RangeFault,
        Feature::Thp,
        Feature::SameDeviceRace,
        Feature::ForkWithDevicePages,
        Feature::CloseWithDevicePages,
        Feature::CpuFaultWaitsForMigration,
        Feature::PartialHugeAdvice,
    ];

    /// The command-line name (kebab case).
    pub fn name(self) -> &'static str {
        match self {
            Feature::TwoFilesPerDevice => "two-files-per-device",
            Feature::ProtNoneOverDevicePages => "prot-none-over-device-pages",
            Feature::UnboundedRelease => "unbounded-release",
            Feature::FalseInvalidate => "false-invalidate",
            Feature::Inject => "inject",
            Feature::Remap => "remap",
            Feature::Fork => "fork",
            Feature::Exclusive => "exclusive",
            Feature::RangeFault => "range-fault",
            Feature::Thp => "thp",
            Feature::SameDeviceRace => "same-device-race",
            Feature::ForkWithDevicePages => "fork-with-device-pages",
            Feature::CloseWithDevicePages => "close-with-device-pages",
            Feature::CpuFaultWaitsForMigration => "cpu-fault-waits-for-migration",
            Feature::PartialHugeAdvice => "partial-huge-advice",
        }
    }

    /// The feature named `name`.
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What a run does.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed: the same seed gives the same run.
    pub seed: u64,
    /// Operations to run.
    pub ops: u64,
    /// Operation classes switched off.
    pub disabled: Vec<Feature>,
}

impl Config {
    /// `ops` operations from `seed`, everything on.
    pub fn new(seed: u64, ops: u64) -> Self {
        Config { seed, ops, disabled: Vec::new() }
    }

    /// The same, without `features`.
    pub fn without(mut self, features: &[Feature]) -> Self {
        self.disabled.extend_from_slice(features);
        self
    }

    fn on(&self, f: Feature) -> bool {
        !self.disabled.contains(&f)
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Operations run.
    pub ops: u64,
    /// Pages whose contents were checked (reads of every kind).
    pub pages_checked: u64,
    /// Operations that failed as the model expected (protection faults, `EINVAL`...).
    pub expected_errors: u64,
    /// Operations of each kind, by name.
    pub by_kind: Vec<(&'static str, u64)>,
}

impl Stats {
    fn count(&mut self, kind: &'static str) {
        match self.by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => self.by_kind.push((kind, 1)),
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ops, {} pages checked, {} expected errors;", self.ops, self.pages_checked, self.expected_errors)?;
        for (k, n) in &self.by_kind {
            write!(f, " {k} {n}")?;
        }
        Ok(())
    }
}

/// The check that broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broken {
    /// A page read back something else than the model says it holds.
    Data {
        /// Who read (CPU, device n, migration read-back...).
        reader: String,
        /// The address.
        va: u64,
        /// The first word read and whether the last word matched it.
        got: u64,
        /// Whether the page was torn (last word not matching the first).
        torn: bool,
        /// The values the page may hold.
        want: String,
    },
    /// An operation returned something else than the model predicts.
    Outcome {
        /// The call.
        call: String,
        /// What it returned.
        got: String,
        /// What the model expected.
        want: String,
    },
    /// Something was left behind at the end (frames, device pages, sections, notifier state).
    Leak(String),
    /// The machine could not be set up.
    Setup(String),
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Data { reader, va, got, torn, want } => {
                write!(
                    f,
                    "data: {reader} read {got:#x} at {va:#x}{}, expected {want}",
                    if *torn { " (torn)" } else { "" }
                )
            }
            Broken::Outcome { call, got, want } => write!(f, "outcome: {call} returned {got}, expected {want}"),
            Broken::Leak(what) => write!(f, "leak: {what}"),
            Broken::Setup(what) => write!(f, "setup: {what}"),
        }
    }
}

/// A failed run: enough to reproduce and read it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Index of the failing operation (`ops` for the end-of-run checks).
    pub op_index: u64,
    /// The failing operation.
    pub op: String,
    /// What broke.
    pub broken: Box<Broken>,
    /// The operations before it, oldest first (at most [`RING`]).
    pub last_ops: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "stress failure: seed {:#x}, operation #{}: {}", self.seed, self.op_index, self.op)?;
        writeln!(f, "  {}", self.broken)?;
        writeln!(f, "  the last {} operations:", self.last_ops.len())?;
        for o in &self.last_ops {
            writeln!(f, "    {o}")?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// The model

/// The values a page may hold (most often exactly one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    v: [u64; 6],
    n: u8,
}

impl Val {
    fn known(t: u64) -> Self {
        Val { v: [t, 0, 0, 0, 0, 0], n: 1 }
    }
    /// Too many possible values to keep: anything (the next read pins it again).
    const ANY: u8 = u8::MAX;

    fn allows(&self, t: u64) -> bool {
        self.n == Self::ANY || self.v[..self.n as usize].contains(&t)
    }
    fn or(mut self, t: u64) -> Self {
        if !self.allows(t) {
            let n = self.n as usize;
            if n < self.v.len() {
                self.v[n] = t;
                self.n += 1;
            } else {
                self.n = Self::ANY;
            }
        }
        self
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.n == Self::ANY {
            return write!(f, "anything");
        }
        for (i, t) in self.v[..self.n as usize].iter().enumerate() {
            write!(f, "{}{t:#x}", if i > 0 { " or " } else { "" })?;
        }
        Ok(())
    }
}

/// Where a page is, as far as the model knows for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    /// In RAM (or not yet faulted): nothing moved it to a device since the model saw it there.
    Ram,
    /// In device `n`'s memory (its migration succeeded).
    Dev(usize),
    /// Anywhere.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Page {
    prot: Prot,
    val: Val,
    loc: Loc,
}

struct Proc {
    /// A name for the report (`p<n>`).
    name: u32,
    space: Arc<SharedSpace>,
    files: [Option<Arc<Dmirror>>; NDEV],
    /// A second file on device 0 ([`Feature::TwoFilesPerDevice`]).
    extra: Option<Arc<Dmirror>>,
    pages: Vec<Option<Page>>,
    /// The driver's own interval ([`Feature::FalseInvalidate`]).
    checker: Option<crate::notifier::IntervalNotifier>,
}

/// A copy engine over RAM that fails its next copy on request.
#[derive(Debug)]
struct Engine {
    ram: Arc<RamBacking>,
    fail_next: AtomicBool,
    /// Device memory the device could not add (no RAM for it, or no frame-table section).
    add_failures: AtomicU64,
}

impl Backing for Engine {
    fn add_chunk(
        &self,
        pm: &Arc<Pagemaps>,
        kind: MemoryKind,
        owner: Owner,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        let r = self.ram.add_chunk(pm, kind, owner, frames, ops);
        if r.is_err() {
            self.add_failures.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn remove_chunk(&self, pm: &Arc<Pagemaps>, chunk: &Arc<DevPagemap>) -> Result<(), Error> {
        self.ram.remove_chunk(pm, chunk)
    }
    fn alloc_storage(&self, order: u32) -> Result<Pfn, Error> {
        self.ram.alloc_storage(order)
    }
    fn free_storage(&self, frame: Pfn) {
        self.ram.free_storage(frame)
    }
    fn copy(&self, pairs: &[(Pfn, Option<Pfn>)]) -> Result<(), Error> {
        if self.fail_next.swap(false, Ordering::Relaxed) {
            // A real engine may have written part of the destination before failing.
            if let Some(&(d, _)) = pairs.first() {
                self.ram.copy(&[(d, None)])?;
            }
            return Err(Error::Io("copy engine failure injected by the stress test"));
        }
        self.ram.copy(pairs)
    }
    fn describe(&self) -> &str {
        "RAM with injectable copy failures (stress)"
    }
}

/// The stress driver's own interval: checks the sequence protocol's callback side and, when
/// armed, refuses one blockable invalidation.
#[derive(Debug, Default)]
struct Checker {
    refuse_next: AtomicBool,
    calls: AtomicU64,
}

impl IntervalOps for Checker {
    fn invalidate(&self, sub: &crate::notifier::Interval, _range: &crate::mm::notify::Range, cur_seq: u64) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed);
        sub.set_seq(cur_seq);
        !self.refuse_next.swap(false, Ordering::Relaxed)
    }
}

/// The machine: memory manager, devices and their engines.
struct Machine {
    plat: Arc<FakePlatform>,
    mm: Arc<Mm>,
    devs: [Arc<DmirrorDevice>; NDEV],
    engines: [Arc<Engine>; NDEV],
    /// Free frames once the machine is up (before any device memory).
    baseline: u64,
}

/// Fake RAM of machines that are done, for the next ones. A memory manager with device
/// memory is never freed (it and its pagemap registry hold each other), so without reuse every
/// run would leak its whole fake RAM; this way it leaks only its frame table and zero pages.
static POOL: spin::Mutex<Vec<Arc<FakePlatform>>> = spin::Mutex::new(Vec::new());

impl Drop for Machine {
    fn drop(&mut self) {
        for d in &self.devs {
            let _ = d.release();
        }
        if self.plat.free_frames() >= RAM_FRAMES as u64 * 7 / 8 {
            POOL.lock().push(self.plat.clone());
        }
    }
}

impl Machine {
    fn new() -> Result<Machine, Broken> {
        let pooled = POOL.lock().pop();
        let plat = pooled.unwrap_or_else(|| Arc::new(FakePlatform::new(RAM_FRAMES)));
        let mm = Mm::new(plat.clone(), &[(Pfn(BASE_PFN), RAM_FRAMES as u64)])
            .map_err(|e| Broken::Setup(format!("Mm::new: {e}")))?;
        let pm = Pagemaps::install(&mm).map_err(|e| Broken::Setup(format!("Pagemaps::install: {e}")))?;
        let baseline = plat.free_frames();
        let engines: [Arc<Engine>; NDEV] = core::array::from_fn(|_| {
            Arc::new(Engine {
                ram: RamBacking::new(&mm),
                fail_next: AtomicBool::new(false),
                add_failures: AtomicU64::new(0),
            })
        });
        let devs: [Arc<DmirrorDevice>; NDEV] = core::array::from_fn(|i| {
            let kind = if i < 2 { MemoryKind::Private } else { MemoryKind::Coherent };
            let chunk = if i < 2 { CHUNK_BYTES } else { 8 << 20 };
            let b: Arc<dyn Backing> = engines[i].clone();
            DmirrorDevice::with_backing(&pm, kind, Owner(0x5700 + i as u64), chunk, b)
        });
        Ok(Machine { plat, mm, devs, engines, baseline })
    }

    fn private(&self, d: usize) -> bool {
        self.devs[d].kind() == MemoryKind::Private
    }
}

// ------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inject {
    None,
    /// The device's next copy fails.
    Copy,
    /// The file's next device allocation fails (`HMM_DMIRROR_FLAGS`).
    Alloc,
    /// The next RAM allocation fails.
    Ram,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    CpuRead { p: usize, at: usize, n: usize, inject: Inject },
    CpuWrite { p: usize, at: usize, n: usize },
    DevRead { p: usize, d: usize, at: usize, n: usize },
    DevWrite { p: usize, d: usize, at: usize, n: usize },
    ToDev { p: usize, d: usize, at: usize, n: usize, inject: Inject },
    ToSys { p: usize, d: usize, at: usize, n: usize, inject: Inject },
    Protect { p: usize, at: usize, n: usize, prot: Prot },
    Unmap { p: usize, at: usize, n: usize },
    Map { p: usize, at: usize, n: usize, prot: Prot, huge: Option<bool>, populate: bool },
    Remap { p: usize, from: usize, n: usize, to: usize, keep: bool },
    Advise { p: usize, at: usize, n: usize, advice: Advice },
    Fork { p: usize },
    Exit { p: usize },
    Snapshot { p: usize, d: usize, at: usize, n: usize },
    Exclusive { p: usize, d: usize, at: usize, n: usize, then_cpu: bool },
    RangeFault { p: usize, at: usize, n: usize, reqs: u64, owner: Option<usize> },
    Release { d: usize },
    Close { p: usize, d: usize },
    SecondFile { p: usize, at: usize, n: usize },
    Refuse { p: usize, at: usize, n: usize },
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::CpuRead { .. } => "cpu_read",
            Op::CpuWrite { .. } => "cpu_write",
            Op::DevRead { .. } => "dev_read",
            Op::DevWrite { .. } => "dev_write",
            Op::ToDev { .. } => "to_dev",
            Op::ToSys { .. } => "to_sys",
            Op::Protect { .. } => "mprotect",
            Op::Unmap { .. } => "munmap",
            Op::Map { .. } => "mmap",
            Op::Remap { .. } => "mremap",
            Op::Advise { .. } => "madvise",
            Op::Fork { .. } => "fork",
            Op::Exit { .. } => "exit",
            Op::Snapshot { .. } => "snapshot",
            Op::Exclusive { .. } => "exclusive",
            Op::RangeFault { .. } => "range_fault",
            Op::Release { .. } => "release",
            Op::Close { .. } => "close",
            Op::SecondFile { .. } => "second_file",
            Op::Refuse { .. } => "refuse",
        }
    }
}

struct R(usize, usize);
impl fmt::Display for R {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {} pages]", va(self.0), self.1)
    }
}

fn prot_name(p: Prot) -> &'static str {
    match (p.read(), p.write()) {
        (_, true) => "RW",
        (true, false) => "READ",
        _ => "NONE",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.kind();
        match *self {
            Op::CpuRead { p, at, n, inject } => write!(f, "proc[{p}] {k} {} inject {inject:?}", R(at, n)),
            Op::CpuWrite { p, at, n } | Op::Unmap { p, at, n } => write!(f, "proc[{p}] {k} {}", R(at, n)),
            Op::DevRead { p, d, at, n } | Op::DevWrite { p, d, at, n } | Op::Snapshot { p, d, at, n } => {
                write!(f, "proc[{p}] dev{d} {k} {}", R(at, n))
            }
            Op::ToDev { p, d, at, n, inject } | Op::ToSys { p, d, at, n, inject } => {
                write!(f, "proc[{p}] dev{d} {k} {} inject {inject:?}", R(at, n))
            }
            Op::Protect { p, at, n, prot } => write!(f, "proc[{p}] {k} {} {}", R(at, n), prot_name(prot)),
            Op::Map { p, at, n, prot, huge, populate } => {
                write!(f, "proc[{p}] {k} {} {} huge {huge:?} populate {populate}", R(at, n), prot_name(prot))
            }
            Op::Remap { p, from, n, to, keep } => {
                write!(f, "proc[{p}] {k} {} -> {:#x} dont_unmap {keep}", R(from, n), va(to))
            }
            Op::Advise { p, at, n, advice } => write!(f, "proc[{p}] {k} {} {advice:?}", R(at, n)),
            Op::Fork { p } | Op::Exit { p } => write!(f, "proc[{p}] {k}"),
            Op::Exclusive { p, d, at, n, then_cpu } => {
                write!(f, "proc[{p}] dev{d} {k} {} then_cpu {then_cpu}", R(at, n))
            }
            Op::RangeFault { p, at, n, reqs, owner } => {
                write!(f, "proc[{p}] {k} {} reqs {reqs:#x} owner {owner:?}", R(at, n))
            }
            Op::Release { d } => write!(f, "dev{d} {k}"),
            Op::Close { p, d } => write!(f, "proc[{p}] dev{d} {k}"),
            Op::SecondFile { p, at, n } => write!(f, "proc[{p}] dev0 {k} migrate {}", R(at, n)),
            Op::Refuse { p, at, n } => write!(f, "proc[{p}] {k} then munmap {}", R(at, n)),
        }
    }
}

/// The per-page request of slot `i` of a range fault (2 bits of `reqs` per page, cycling).
fn req_of(reqs: u64, i: usize) -> Request {
    match (reqs >> ((i % 32) * 2)) & 3 {
        0 | 1 => Request::NONE,
        2 => Request::FAULT,
        _ => Request::WRITE,
    }
}

type Check = Result<(), Broken>;

fn outcome(call: impl fmt::Display, got: impl fmt::Debug, want: &str) -> Broken {
    Broken::Outcome { call: format!("{call}"), got: format!("{got:?}"), want: String::from(want) }
}

/// The single-threaded world: machine, processes, model.
struct World {
    cfg: Config,
    m: Machine,
    procs: Vec<Proc>,
    next_name: u32,
    next_tag: u64,
    private_releases: u32,
    /// The driver's own interval ops ([`Feature::FalseInvalidate`]).
    checker: Arc<Checker>,
    stats: Stats,
}

impl Drop for World {
    fn drop(&mut self) {
        // The processes go before the machine hands its RAM back.
        for proc in core::mem::take(&mut self.procs) {
            drop(proc);
        }
    }
}

impl World {
    fn new(cfg: Config) -> Result<World, Broken> {
        let m = Machine::new()?;
        let mut w = World {
            cfg,
            m,
            procs: Vec::new(),
            next_name: 0,
            next_tag: 1,
            private_releases: 0,
            checker: Arc::new(Checker::default()),
            stats: Stats::default(),
        };
        let mut rng = Rng::new(w.cfg.seed ^ 0xabcd);
        w.m.mm.set_thp_mode(match rng.below(4) {
            0 => ThpMode::Always,
            1 => ThpMode::Never,
            _ => ThpMode::Madvise,
        });
        w.spawn_first()?;
        Ok(w)
    }

    /// The first process: the whole arena mapped read-write, the first block THP-eligible.
    fn spawn_first(&mut self) -> Check {
        let s = AddressSpace::new(&self.m.mm).map_err(|e| Broken::Setup(format!("address space: {e}")))?;
        let space = self.m.mm.share(s);
        {
            let mut s = space.lock();
            s.mmap(MapRequest::anon(ARENA_PAGES as u64 * PAGE, Prot::RW).fixed(ARENA))
                .map_err(|e| Broken::Setup(format!("mmap arena: {e}")))?;
            if self.cfg.on(Feature::Thp) {
                s.madvise(ARENA, BLOCK as u64 * PAGE, Advice::HugePage)
                    .map_err(|e| Broken::Setup(format!("madvise: {e}")))?;
            }
        }
        let page = Page { prot: Prot::RW, val: Val::known(0), loc: Loc::Ram };
        self.add_proc(space, alloc::vec![Some(page); ARENA_PAGES])
    }

    fn add_proc(&mut self, space: Arc<SharedSpace>, pages: Vec<Option<Page>>) -> Check {
        let checker = if self.cfg.on(Feature::FalseInvalidate) {
            let subs = Subscriptions::of(&mut space.lock());
            let w: Weak<dyn IntervalOps> = Arc::downgrade(&self.checker) as Weak<dyn IntervalOps>;
            Some(subs.insert(ARENA, ARENA_PAGES as u64 * PAGE, w).map_err(|e| Broken::Setup(format!("insert: {e}")))?)
        } else {
            None
        };
        self.procs.push(Proc { name: self.next_name, space, files: [None, None, None], extra: None, pages, checker });
        self.next_name += 1;
        Ok(())
    }

    fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    fn file(&mut self, p: usize, d: usize) -> Result<Arc<Dmirror>, Broken> {
        if let Some(f) = &self.procs[p].files[d] {
            return Ok(f.clone());
        }
        let f = Dmirror::open(&self.m.devs[d], &self.procs[p].space)
            .map_err(|e| outcome(format_args!("open dev{d}"), e, "Ok"))?;
        self.procs[p].files[d] = Some(f.clone());
        Ok(f)
    }

    // -- generation -------------------------------------------------------------------------

    fn range(&self, rng: &mut Rng) -> (usize, usize) {
        if self.cfg.on(Feature::Thp) && rng.one_in(5) {
            let b = rng.below((ARENA_PAGES / BLOCK) as u64) as usize;
            return (b * BLOCK, BLOCK);
        }
        let at = rng.below(ARENA_PAGES as u64) as usize;
        let max = if rng.one_in(6) { 64 } else { 8 };
        let n = 1 + rng.below(max) as usize;
        (at, n.min(ARENA_PAGES - at))
    }

    fn inject(&self, rng: &mut Rng, allowed: &[Inject]) -> Inject {
        if self.cfg.on(Feature::Inject) && rng.one_in(8) {
            allowed[rng.below(allowed.len() as u64) as usize]
        } else {
            Inject::None
        }
    }

    fn pick(&self, rng: &mut Rng) -> Op {
        let p = rng.below(self.procs.len() as u64) as usize;
        let d = rng.below(NDEV as u64) as usize;
        let (at, n) = self.range(rng);
        let prot = match rng.below(5) {
            0 => Prot::NONE,
            1 | 2 => Prot::READ,
            _ => Prot::RW,
        };
        loop {
            let op = match rng.below(100) {
                0..=13 => Op::CpuRead { p, at, n, inject: self.inject(rng, &[Inject::Ram]) },
                14..=25 => Op::CpuWrite { p, at, n },
                26..=33 => Op::DevRead { p, d, at, n },
                34..=41 => Op::DevWrite { p, d, at, n },
                42..=53 => Op::ToDev { p, d, at, n, inject: self.inject(rng, &[Inject::Copy, Inject::Alloc]) },
                54..=59 => {
                    Op::ToSys { p, d, at, n, inject: self.inject(rng, &[Inject::Copy, Inject::Alloc, Inject::Ram]) }
                }
                60..=64 => Op::Protect { p, at, n, prot },
                65..=67 => Op::Unmap { p, at, n },
                68..=71 => {
                    let huge = if self.cfg.on(Feature::Thp) && n == BLOCK { Some(!rng.one_in(4)) } else { None };
                    Op::Map { p, at, n, prot, huge, populate: rng.one_in(4) }
                }
                72..=74 if self.cfg.on(Feature::Remap) => {
                    let mut to = rng.below((ARENA_PAGES - n + 1) as u64) as usize;
                    if n == BLOCK && rng.one_in(2) {
                        to = rng.below((ARENA_PAGES / BLOCK) as u64) as usize * BLOCK;
                    }
                    if to < at + n && at < to + n {
                        continue;
                    }
                    Op::Remap { p, from: at, n, to, keep: rng.one_in(3) }
                }
                75..=78 => {
                    let advice = match rng.below(6) {
                        0 | 1 => Advice::DontNeed,
                        2 => Advice::Free,
                        3 => Advice::WillNeed,
                        4 => Advice::HugePage,
                        _ => Advice::NoHugePage,
                    };
                    if !self.cfg.on(Feature::Thp) && advice == Advice::HugePage {
                        continue;
                    }
                    Op::Advise { p, at, n, advice }
                }
                79..=80 if self.cfg.on(Feature::Fork) && self.procs.len() < MAX_PROCS => Op::Fork { p },
                81 if self.cfg.on(Feature::Fork) && self.procs.len() > 1 => Op::Exit { p },
                82..=85 => Op::Snapshot { p, d, at, n },
                86..=89 if self.cfg.on(Feature::Exclusive) => Op::Exclusive { p, d, at, n, then_cpu: !rng.one_in(3) },
                90..=94 if self.cfg.on(Feature::RangeFault) => {
                    let owner = if rng.one_in(3) { Some(d) } else { None };
                    Op::RangeFault { p, at, n, reqs: rng.next_u64(), owner }
                }
                95 => {
                    if self.m.private(d)
                        && !self.cfg.on(Feature::UnboundedRelease)
                        && self.private_releases >= RELEASE_BUDGET
                    {
                        continue;
                    }
                    Op::Release { d }
                }
                96 => Op::Close { p, d },
                97 if self.cfg.on(Feature::TwoFilesPerDevice) => Op::SecondFile { p, at, n },
                98 if self.cfg.on(Feature::FalseInvalidate) => Op::Refuse { p, at, n },
                _ => continue,
            };
            return op;
        }
    }

    /// `op` adapted to the processes alive (for scripted runs), or `None` if it cannot run.
    fn fit(&self, op: Op) -> Option<Op> {
        let n = self.procs.len();
        let mut op = op;
        let p = match &mut op {
            Op::CpuRead { p, .. }
            | Op::CpuWrite { p, .. }
            | Op::DevRead { p, .. }
            | Op::DevWrite { p, .. }
            | Op::ToDev { p, .. }
            | Op::ToSys { p, .. }
            | Op::Protect { p, .. }
            | Op::Unmap { p, .. }
            | Op::Map { p, .. }
            | Op::Remap { p, .. }
            | Op::Advise { p, .. }
            | Op::Fork { p }
            | Op::Exit { p }
            | Op::Snapshot { p, .. }
            | Op::Exclusive { p, .. }
            | Op::RangeFault { p, .. }
            | Op::Close { p, .. }
            | Op::SecondFile { p, .. }
            | Op::Refuse { p, .. } => Some(p),
            Op::Release { .. } => None,
        };
        if let Some(p) = p {
            *p %= n;
        }
        match op {
            Op::Fork { .. } if n >= MAX_PROCS => None,
            Op::Exit { .. } if n <= 1 => None,
            op => Some(op),
        }
    }

    // -- checks -----------------------------------------------------------------------------

    /// Checks a page's two words against the model, then pins the model to what was read.
    fn check_words(&mut self, p: usize, i: usize, w0: u64, w1: u64, reader: &dyn fmt::Display) -> Check {
        self.stats.pages_checked += 1;
        let name = self.procs[p].name;
        let pg = self.procs[p].pages[i].as_mut().expect("checked pages are mapped");
        let torn = w1 != tail(w0);
        if torn || !pg.val.allows(w0) {
            return Err(Broken::Data {
                reader: format!("{reader} (proc[{p}] = p{name})"),
                va: va(i),
                got: w0,
                torn,
                want: format!("{}", pg.val),
            });
        }
        pg.val = Val::known(w0);
        Ok(())
    }

    fn check_buf(&mut self, p: usize, at: usize, buf: &[u8], reader: &dyn fmt::Display) -> Check {
        for k in 0..buf.len() / PAGE as usize {
            let b = &buf[k * PAGE as usize..(k + 1) * PAGE as usize];
            let w0 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let w1 = u64::from_le_bytes(b[PAGE as usize - 8..].try_into().expect("8 bytes"));
            self.check_words(p, at + k, w0, w1, reader)?;
        }
        Ok(())
    }

    fn page(&self, p: usize, i: usize) -> Option<Page> {
        self.procs[p].pages[i]
    }

    fn set_loc(&mut self, p: usize, at: usize, n: usize, f: impl Fn(Loc) -> Loc) {
        for pg in self.procs[p].pages[at..at + n].iter_mut().flatten() {
            pg.loc = f(pg.loc);
        }
    }

    fn all(&self, p: usize, at: usize, n: usize, f: impl Fn(&Option<Page>) -> bool) -> bool {
        self.procs[p].pages[at..at + n].iter().all(f)
    }

    /// The CPU reads page `i`; `oom_ok`: an out-of-memory fault is acceptable.
    fn cpu_read_page(&mut self, p: usize, i: usize, oom_ok: bool) -> Check {
        let space = self.procs[p].space.clone();
        let r = {
            let mut s = space.lock();
            let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
            s.read(va(i), &mut a)
                .and_then(|()| s.read(va(i) + PAGE - 8, &mut b))
                .map(|()| (u64::from_le_bytes(a), u64::from_le_bytes(b)))
        };
        let call = format_args!("CPU read at {:#x}", va(i));
        match (self.page(p, i), r) {
            (None, Err(FaultError::NoMapping)) => Ok(()),
            (Some(pg), Err(FaultError::Protection)) if !pg.prot.read() => Ok(()),
            (_, Err(FaultError::OutOfMemory)) if oom_ok => {
                self.set_loc(p, i, 1, |_| Loc::Unknown);
                Ok(())
            }
            (Some(pg), Ok((w0, w1))) if pg.prot.read() => {
                self.check_words(p, i, w0, w1, &"CPU")?;
                let private = |d: usize| d < 2;
                self.set_loc(p, i, 1, |l| match l {
                    Loc::Dev(d) if private(d) => Loc::Ram,
                    l => l,
                });
                Ok(())
            }
            (None, r) => Err(outcome(call, r, "Err(NoMapping)")),
            (Some(pg), r) if !pg.prot.read() => Err(outcome(call, r, "Err(Protection) (PROT_NONE)")),
            (Some(_), r) => Err(outcome(call, r, "Ok")),
        }
    }

    fn cpu_write_page(&mut self, p: usize, i: usize) -> Check {
        let tag = self.tag();
        let space = self.procs[p].space.clone();
        let r = {
            let mut s = space.lock();
            s.write(va(i), &tag.to_le_bytes()).and_then(|()| s.write(va(i) + PAGE - 8, &tail(tag).to_le_bytes()))
        };
        let call = format_args!("CPU write at {:#x}", va(i));
        match (self.page(p, i), r) {
            (None, Err(FaultError::NoMapping)) => Ok(()),
            (Some(pg), Err(FaultError::Protection)) if !pg.prot.write() => Ok(()),
            (Some(pg), Ok(())) if pg.prot.write() => {
                let pg = self.procs[p].pages[i].as_mut().expect("mapped");
                pg.val = Val::known(tag);
                pg.loc = match pg.loc {
                    Loc::Ram => Loc::Ram,
                    Loc::Dev(d) if d < 2 => Loc::Ram,
                    _ => Loc::Unknown,
                };
                Ok(())
            }
            (None, r) => Err(outcome(call, r, "Err(NoMapping)")),
            (Some(pg), r) if !pg.prot.write() => Err(outcome(call, r, "Err(Protection) (read-only mapping)")),
            (Some(_), r) => Err(outcome(call, r, "Ok")),
        }
    }

    fn expected(&mut self, ok: bool) {
        if !ok {
            self.stats.expected_errors += 1;
        }
    }

    // -- execution --------------------------------------------------------------------------

    fn exec(&mut self, op: Op) -> Check {
        self.stats.count(op.kind());
        match op {
            Op::CpuRead { p, at, n, inject } => {
                if inject == Inject::Ram {
                    self.m.plat.fail_allocs.store(1, Ordering::Relaxed);
                }
                let mut r = Ok(());
                for i in at..at + n {
                    r = self.cpu_read_page(p, i, inject == Inject::Ram);
                    if r.is_err() {
                        break;
                    }
                }
                self.m.plat.fail_allocs.store(0, Ordering::Relaxed);
                r
            }
            Op::CpuWrite { p, at, n } => (at..at + n).try_for_each(|i| self.cpu_write_page(p, i)),
            Op::DevRead { p, d, at, n } => self.dev_read(p, d, at, n),
            Op::DevWrite { p, d, at, n } => self.dev_write(p, d, at, n),
            Op::ToDev { p, d, at, n, inject } => self.op_to_dev(p, d, at, n, inject),
            Op::ToSys { p, d, at, n, inject } => self.op_to_sys(p, d, at, n, inject),
            Op::Protect { p, at, n, prot } => self.protect(p, at, n, prot),
            Op::Unmap { p, at, n } => {
                let r = self.procs[p].space.lock().munmap(va(at), n as u64 * PAGE);
                r.map_err(|e| outcome(op, e, "Ok"))?;
                self.procs[p].pages[at..at + n].iter_mut().for_each(|pg| *pg = None);
                Ok(())
            }
            Op::Map { p, at, n, prot, huge, populate } => {
                let mut req = MapRequest::anon(n as u64 * PAGE, prot).fixed(va(at));
                if populate {
                    req = req.populate();
                }
                let space = self.procs[p].space.clone();
                let mut s = space.lock();
                let r = s.mmap(req);
                if r != Ok(va(at)) {
                    return Err(outcome(op, r, "Ok(the fixed address)"));
                }
                if let Some(h) = huge {
                    let a = if h { Advice::HugePage } else { Advice::NoHugePage };
                    s.madvise(va(at), n as u64 * PAGE, a).map_err(|e| outcome(op, e, "Ok from madvise"))?;
                }
                drop(s);
                let page = Page { prot, val: Val::known(0), loc: Loc::Ram };
                self.procs[p].pages[at..at + n].iter_mut().for_each(|pg| *pg = Some(page));
                Ok(())
            }
            Op::Remap { p, from, n, to, keep } => self.remap(p, from, n, to, keep),
            Op::Advise { p, at, n, advice } => self.advise(p, at, n, advice),
            Op::Fork { p } => {
                if !self.cfg.on(Feature::ForkWithDevicePages) {
                    self.evict(p, &[0, 1])?;
                }
                let child = self.procs[p].space.lock().fork().map_err(|e| outcome(op, e, "Ok"))?;
                let space = self.m.mm.share(child);
                let pages = self.procs[p].pages.clone();
                self.add_proc(space, pages)
            }
            Op::Exit { p } => {
                let proc = self.procs.remove(p);
                self.close_all(proc)
            }
            Op::Snapshot { p, d, at, n } => self.snapshot(p, d, at, n),
            Op::Exclusive { p, d, at, n, then_cpu } => self.exclusive(p, d, at, n, then_cpu),
            Op::RangeFault { p, at, n, reqs, owner } => self.range_fault(p, at, n, reqs, owner),
            Op::Release { d } => {
                if self.m.private(d) {
                    self.private_releases += 1;
                }
                self.m.devs[d].release().map_err(|e| outcome(op, e, "Ok"))?;
                for proc in &mut self.procs {
                    for pg in proc.pages.iter_mut().flatten() {
                        if pg.loc == Loc::Dev(d) {
                            pg.loc = Loc::Ram;
                        }
                    }
                }
                if self.m.devs[d].pages_in_use() != 0 {
                    return Err(outcome(op, self.m.devs[d].pages_in_use(), "0 device pages in use after it"));
                }
                Ok(())
            }
            Op::Close { p, d } => {
                if !self.cfg.on(Feature::CloseWithDevicePages) && self.m.private(d) && self.procs[p].files[d].is_some()
                {
                    self.evict(p, &[d])?;
                }
                if let Some(f) = self.procs[p].files[d].take() {
                    f.close().map_err(|e| outcome(op, e, "Ok"))?;
                }
                Ok(())
            }
            Op::SecondFile { p, at, n } => {
                // A second file on device 0 migrates; then the first file's device reads.
                let f = match self.procs[p].extra.clone() {
                    Some(f) => f,
                    None => {
                        let f = Dmirror::open(&self.m.devs[0], &self.procs[p].space)
                            .map_err(|e| outcome("open dev0 (second file)", e, "Ok"))?;
                        self.procs[p].extra = Some(f.clone());
                        f
                    }
                };
                self.migrate_with((p, 0), (at, n), Inject::None, &f, "second file")?;
                self.dev_read(p, 0, at, n)
            }
            Op::Refuse { p, at, n } => {
                self.checker.refuse_next.store(true, Ordering::Relaxed);
                let r = self.procs[p].space.lock().munmap(va(at), n as u64 * PAGE);
                self.checker.refuse_next.store(false, Ordering::Relaxed);
                r.map_err(|e| outcome(op, e, "Ok"))?;
                self.procs[p].pages[at..at + n].iter_mut().for_each(|pg| *pg = None);
                // The notifier must still work: a device read of the next pages sees fresh data.
                let subs = Subscriptions::of(&mut self.procs[p].space.lock());
                if subs.is_invalidating() {
                    return Err(outcome(op, "the sequence stays odd", "no invalidation running afterwards"));
                }
                Ok(())
            }
        }
    }

    fn dev_read(&mut self, p: usize, d: usize, at: usize, n: usize) -> Check {
        let f = self.file(p, d)?;
        let ok = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.prot.read()));
        let r = f.read(va(at), n as u64);
        let call = format_args!("dev{d} READ {}", R(at, n));
        self.expected(ok);
        match r {
            Ok((buf, _)) if ok => {
                self.check_buf(p, at, &buf, &format_args!("dev{d} READ"))?;
                self.set_loc(p, at, n, |l| match l {
                    Loc::Dev(x) if x < 2 && x != d => Loc::Ram,
                    l => l,
                });
                Ok(())
            }
            Err(CmdError { errno: crate::dmirror::EFAULT, .. }) if !ok => {
                self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
                Ok(())
            }
            r => Err(outcome(call, r.map(|(_, c)| c), if ok { "Ok" } else { "Err(EFAULT)" })),
        }
    }

    fn dev_write(&mut self, p: usize, d: usize, at: usize, n: usize) -> Check {
        let f = self.file(p, d)?;
        // The first page the write cannot go to, and the errno it gives.
        let bad = (at..at + n).find_map(|i| match self.page(p, i) {
            None => Some((i, crate::dmirror::EFAULT)),
            Some(pg) if !pg.prot.read() => Some((i, crate::dmirror::EFAULT)),
            Some(pg) if !pg.prot.write() => Some((i, crate::dmirror::EPERM)),
            _ => None,
        });
        let all_ram = self.all(p, at, n, |pg| pg.is_none_or(|pg| pg.loc == Loc::Ram));
        let tags: Vec<u64> = (0..n).map(|_| self.tag()).collect();
        let r = f.write(va(at), &page_images(&tags));
        let call = format_args!("dev{d} WRITE {}", R(at, n));
        self.expected(bad.is_none());
        match (bad, r) {
            (None, Ok(_)) => {
                for (k, &t) in tags.iter().enumerate() {
                    let pg = self.procs[p].pages[at + k].as_mut().expect("mapped");
                    pg.val = Val::known(t);
                    pg.loc = match pg.loc {
                        Loc::Ram => Loc::Ram,
                        Loc::Dev(x) if x < 2 && x != d => Loc::Ram,
                        _ => Loc::Unknown,
                    };
                }
                Ok(())
            }
            (Some((j, errno)), Err(e)) if e.errno == errno => {
                // Pages before the first bad one may have been written.
                for (k, &t) in tags.iter().enumerate().take(j - at) {
                    let pg = self.procs[p].pages[at + k].as_mut().expect("mapped");
                    pg.val = pg.val.or(t);
                }
                self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
                Ok(())
            }
            // A read-only device-private page of this device is reported as it is by the
            // range fault, never faulted for the write (Linux 6.1 hmm_vma_handle_pte), and
            // dmirror then fails the write with EFAULT: a page of this device that lost write
            // permission (mprotect, fork) does this.
            (_, Err(e)) if e.errno == crate::dmirror::EFAULT && self.m.private(d) && !all_ram => {
                for (k, &t) in tags.iter().enumerate().take(bad.map_or(n, |(j, _)| j - at)) {
                    let pg = self.procs[p].pages[at + k].as_mut().expect("mapped");
                    pg.val = pg.val.or(t);
                }
                self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
                Ok(())
            }
            (None, r) => Err(outcome(call, r, "Ok")),
            (Some((j, errno)), r) => Err(outcome(call, r, &format!("Err(errno {errno}) for page {:#x}", va(j)))),
        }
    }

    fn op_to_dev(&mut self, p: usize, d: usize, at: usize, n: usize, inject: Inject) -> Check {
        let f = self.file(p, d)?;
        self.migrate_with((p, d), (at, n), inject, &f, "file")
    }

    fn migrate_with(
        &mut self,
        (p, d): (usize, usize),
        (at, n): (usize, usize),
        inject: Inject,
        f: &Arc<Dmirror>,
        which: &str,
    ) -> Check {
        let mapped = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.prot.read()));
        let all_ram = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.loc == Loc::Ram));
        match inject {
            Inject::Copy => self.m.engines[d].fail_next.store(true, Ordering::Relaxed),
            Inject::Alloc => f.set_flags(1),
            _ => {}
        }
        let add_failures = self.m.engines[d].add_failures.load(Ordering::Relaxed);
        let r = f.migrate_to_dev(va(at), n as u64);
        // The device ran out of memory it can add (RAM for coherent chunks, frame-table
        // sections for private ones): pages may stay behind.
        let exhausted = self.m.engines[d].add_failures.load(Ordering::Relaxed) != add_failures;
        self.m.engines[d].fail_next.store(false, Ordering::Relaxed);
        f.set_flags(0);
        let call = format_args!("dev{d} MIGRATE_TO_DEV ({which}) {}", R(at, n));
        self.expected(mapped);
        let e = r.as_ref().err().map(|e| e.errno);
        // A page already in device memory is not selected again, and the read-back finds it
        // only if the file's device page table still maps it (a split of a device THP, a
        // fork or an mprotect since erased it): ENOENT then, as dmirror gives.
        let enoent_ok = !all_ram || inject == Inject::Alloc || exhausted;
        let allowed = match (mapped, inject) {
            // The chunks before the hole migrate first (and may fail first).
            (false, Inject::Copy) => e == Some(crate::dmirror::EINVAL) || e == Some(crate::dmirror::EIO),
            (false, _) => e == Some(crate::dmirror::EINVAL),
            (true, _) if e.is_none() => true,
            (true, Inject::Copy) if e == Some(crate::dmirror::EIO) => true,
            (true, _) => enoent_ok && e == Some(crate::dmirror::ENOENT),
        };
        if !allowed {
            let want = if mapped { "Ok (all pages in RAM)" } else { "Err(EINVAL) (hole or PROT_NONE)" };
            return Err(outcome(call, r.map(|(_, c)| c), want));
        }
        match r {
            Ok((buf, _)) => {
                self.check_buf(p, at, &buf, &format_args!("dev{d} MIGRATE_TO_DEV read-back"))?;
                // Pages in another device's memory are not collected; the read-back still
                // succeeds when the file mapped them before.
                self.set_loc(p, at, n, |l| if l == Loc::Ram || l == Loc::Dev(d) { Loc::Dev(d) } else { Loc::Unknown });
            }
            Err(_) => self.set_loc(p, at, n, |l| if l == Loc::Dev(d) || l == Loc::Ram { Loc::Unknown } else { l }),
        }
        Ok(())
    }

    fn op_to_sys(&mut self, p: usize, d: usize, at: usize, n: usize, inject: Inject) -> Check {
        let f = self.file(p, d)?;
        let mapped = self.all(p, at, n, Option::is_some);
        match inject {
            Inject::Copy => self.m.engines[d].fail_next.store(true, Ordering::Relaxed),
            Inject::Alloc => f.set_flags(1),
            Inject::Ram => self.m.plat.fail_allocs.store(1, Ordering::Relaxed),
            Inject::None => {}
        }
        let r = f.migrate_to_sys(va(at), n as u64);
        self.m.engines[d].fail_next.store(false, Ordering::Relaxed);
        self.m.plat.fail_allocs.store(0, Ordering::Relaxed);
        f.set_flags(0);
        let call = format_args!("dev{d} MIGRATE_TO_SYS {}", R(at, n));
        self.expected(mapped);
        let e = r.as_ref().err().map(|e| e.errno);
        let allowed = match (mapped, inject) {
            (false, Inject::Copy) => e == Some(crate::dmirror::EINVAL) || e == Some(crate::dmirror::EIO),
            (false, Inject::Ram) => e == Some(crate::dmirror::EINVAL) || e == Some(crate::dmirror::ENOMEM),
            (false, _) => e == Some(crate::dmirror::EINVAL),
            (true, Inject::None) => e.is_none(),
            (true, Inject::Copy) => e.is_none() || e == Some(crate::dmirror::EIO),
            (true, Inject::Alloc) => e.is_none(),
            (true, Inject::Ram) => e.is_none() || e == Some(crate::dmirror::ENOMEM),
        };
        if !allowed {
            return Err(outcome(call, r, if mapped { "Ok" } else { "Err(EINVAL) (hole)" }));
        }
        if r.is_ok() && inject == Inject::None {
            self.set_loc(p, at, n, |l| if l == Loc::Dev(d) { Loc::Ram } else { l });
        } else {
            self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
        }
        Ok(())
    }

    /// Migrates every page of process `p` in the memory of devices `devs` home (by runs of
    /// mapped pages).
    fn evict(&mut self, p: usize, devs: &[usize]) -> Check {
        let mut i = 0;
        while i < ARENA_PAGES {
            if self.procs[p].pages[i].is_none() {
                i += 1;
                continue;
            }
            let start = i;
            while i < ARENA_PAGES && self.procs[p].pages[i].is_some() {
                i += 1;
            }
            for &d in devs {
                self.op_to_sys(p, d, start, i - start, Inject::None)?;
            }
        }
        Ok(())
    }

    fn protect(&mut self, p: usize, at: usize, n: usize, prot: Prot) -> Check {
        if prot.is_none()
            && !self.cfg.on(Feature::ProtNoneOverDevicePages)
            && !self.all(p, at, n, |pg| pg.is_none_or(|pg| pg.loc == Loc::Ram))
        {
            return Ok(());
        }
        let covered = self.all(p, at, n, Option::is_some);
        let r = self.procs[p].space.lock().mprotect(va(at), n as u64 * PAGE, prot);
        self.expected(covered);
        match (covered, r) {
            (true, Ok(())) => {
                self.procs[p].pages[at..at + n].iter_mut().flatten().for_each(|pg| pg.prot = prot);
                Ok(())
            }
            (false, Err(Error::NoSpace(_))) => Ok(()),
            (c, r) => Err(outcome(
                format_args!("mprotect {} {}", R(at, n), prot_name(prot)),
                r,
                if c { "Ok" } else { "Err(NoSpace)" },
            )),
        }
    }

    fn remap(&mut self, p: usize, from: usize, n: usize, to: usize, keep: bool) -> Check {
        let (start, end) = (va(from), va(from + n));
        let vma = self.procs[p].space.lock().vmas().find(start).cloned();
        let inside = vma.as_ref().is_some_and(|v| end <= v.end);
        let flags = RemapFlags { may_move: true, fixed: true, dont_unmap: keep };
        let r = self.procs[p].space.lock().mremap(start, n as u64 * PAGE, n as u64 * PAGE, flags, va(to));
        let call = format_args!("mremap {} -> {:#x} dont_unmap {keep}", R(from, n), va(to));
        self.expected(inside);
        if !inside {
            return match r {
                Err(Error::Fault(_)) => Ok(()),
                r => Err(outcome(call, r, "Err(Fault) (not inside one mapping)")),
            };
        }
        let vma = vma.expect("inside");
        if r != Ok(va(to)) {
            return Err(outcome(call, r, "Ok(the new address)"));
        }
        let moved: Vec<Option<Page>> = self.procs[p].pages[from..from + n].to_vec();
        for (k, pg) in moved.iter().enumerate() {
            match pg {
                Some(pg) if pg.prot == vma.prot => {}
                _ => {
                    return Err(outcome(
                        call,
                        format_args!("a mapping {:#x}..{:#x} {}", vma.start, vma.end, prot_name(vma.prot)),
                        &format!("the model's page {:#x}: {:?}", va(from + k), pg.map(|p| prot_name(p.prot))),
                    ));
                }
            }
        }
        let pages = &mut self.procs[p].pages;
        for pg in &mut pages[from..from + n] {
            *pg = if keep { Some(Page { prot: vma.prot, val: Val::known(0), loc: Loc::Ram }) } else { None };
        }
        pages[to..to + n].copy_from_slice(&moved);
        Ok(())
    }

    fn advise(&mut self, p: usize, at: usize, n: usize, advice: Advice) -> Check {
        if matches!(advice, Advice::HugePage | Advice::NoHugePage)
            && !self.cfg.on(Feature::PartialHugeAdvice)
            && !(at.is_multiple_of(BLOCK) && n.is_multiple_of(BLOCK))
        {
            return Ok(());
        }
        let covered = self.all(p, at, n, Option::is_some);
        let r = self.procs[p].space.lock().madvise(va(at), n as u64 * PAGE, advice);
        self.expected(covered);
        let call = format_args!("madvise {} {advice:?}", R(at, n));
        match (covered, r) {
            (true, Ok(())) => {
                for pg in self.procs[p].pages[at..at + n].iter_mut().flatten() {
                    match advice {
                        Advice::DontNeed => *pg = Page { prot: pg.prot, val: Val::known(0), loc: Loc::Ram },
                        // Lazily freed: a clean page may be discarded (zero) until written.
                        Advice::Free => pg.val = pg.val.or(0),
                        Advice::WillNeed if pg.loc != Loc::Ram => pg.loc = Loc::Unknown,
                        _ => {}
                    }
                }
                Ok(())
            }
            (false, Err(Error::NoSpace(_))) => Ok(()),
            (c, r) => Err(outcome(call, r, if c { "Ok" } else { "Err(NoSpace)" })),
        }
    }

    fn snapshot(&mut self, p: usize, d: usize, at: usize, n: usize) -> Check {
        let f = self.file(p, d)?;
        let r = f.snapshot(va(at), n as u64);
        let call = format_args!("dev{d} SNAPSHOT {}", R(at, n));
        let (bytes, _) = r.map_err(|e| outcome(call, e, "Ok"))?;
        for (k, &b) in bytes.iter().enumerate() {
            let pg = self.page(p, at + k);
            let bad = match pg {
                None => b != prot::ERROR,
                Some(pg) if !pg.prot.read() => b != prot::ERROR,
                Some(_) if b == prot::NONE => false,
                Some(pg) => {
                    let rw = b & (prot::READ | prot::WRITE);
                    b == prot::ERROR
                        || rw == 0
                        || rw == prot::READ | prot::WRITE
                        || (b & prot::WRITE != 0 && !pg.prot.write())
                        || (b & 0xf0 == prot::ZERO && !pg.val.allows(0))
                }
            };
            if bad {
                return Err(outcome(
                    call,
                    format_args!("byte {b:#04x} for page {:#x}", va(at + k)),
                    &format!("a byte consistent with {:?}", pg.map(|p| prot_name(p.prot))),
                ));
            }
        }
        Ok(())
    }

    fn exclusive(&mut self, p: usize, d: usize, at: usize, n: usize, then_cpu: bool) -> Check {
        let f = self.file(p, d)?;
        let ok = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.prot == Prot::RW));
        let r = f.exclusive(va(at), n as u64);
        let call = format_args!("dev{d} EXCLUSIVE {}", R(at, n));
        self.expected(ok);
        match r {
            Ok((buf, _)) if ok => self.check_buf(p, at, &buf, &format_args!("dev{d} EXCLUSIVE read-back"))?,
            Err(_) if !ok => {}
            r => return Err(outcome(call, r.map(|(_, c)| c), if ok { "Ok" } else { "Err" })),
        }
        // Device-exclusive entries are neither system nor device pages to a migration
        // (not collected: ENOENT), until a CPU access restores them.
        let before: Vec<Option<Page>> = self.procs[p].pages[at..at + n].to_vec();
        self.set_loc(p, at, n, |_| Loc::Unknown);
        if then_cpu && ok {
            for i in at..at + n {
                if i % 2 == 0 { self.cpu_write_page(p, i)? } else { self.cpu_read_page(p, i, false)? }
            }
            f.check_exclusive(va(at), n as u64)
                .map_err(|e| outcome(format_args!("dev{d} CHECK_EXCLUSIVE {} after CPU access", R(at, n)), e, "Ok"))?;
            for (k, b) in before.iter().enumerate() {
                if let (Some(b), Some(pg)) = (b, self.procs[p].pages[at + k].as_mut())
                    && b.loc == Loc::Ram
                {
                    pg.loc = Loc::Ram;
                }
            }
        }
        Ok(())
    }

    fn range_fault(&mut self, p: usize, at: usize, n: usize, reqs: u64, owner: Option<usize>) -> Check {
        let space = self.procs[p].space.clone();
        let (start, end) = (va(at), va(at + n));
        let call = format_args!("hmm_range_fault {} reqs {reqs:#x} owner {owner:?}", R(at, n));
        // The first page whose request cannot be met decides the error. A page that may be
        // a device-private page of `owner` is reported as it is whatever the request (Linux
        // 6.1), so a write request on it in a read-only mapping may or may not fail.
        let mut allowed: Vec<Result<(), RangeError>> = Vec::new();
        for k in 0..n {
            let rq = req_of(reqs, k);
            let e = match self.page(p, at + k) {
                None if rq.fault => Some(RangeError::Fault),
                Some(pg) if rq.fault && !pg.prot.read() => Some(RangeError::Fault),
                Some(pg) if rq.write && !pg.prot.write() => {
                    if owner.is_some_and(|d| d < 2) && pg.loc != Loc::Ram {
                        allowed.push(Err(RangeError::Permission));
                        continue;
                    }
                    Some(RangeError::Permission)
                }
                _ => None,
            };
            if let Some(e) = e {
                allowed.push(Err(e));
                break;
            }
        }
        if !allowed.contains(&Err(RangeError::Fault))
            && allowed.iter().filter(|a| **a == Err(RangeError::Permission)).count() == allowed.len()
            && !self.definite_bad(p, at, n, reqs, owner)
        {
            allowed.push(Ok(()));
        }
        let ops: Arc<SeqOnly> = Arc::new(SeqOnly);
        let subs = Subscriptions::of(&mut space.lock());
        let w: Weak<dyn IntervalOps> = Arc::downgrade(&ops) as Weak<dyn IntervalOps>;
        let sub = subs.insert(start, end - start, w).map_err(|e| outcome(call, e, "Ok from the interval insert"))?;
        let owner_cookie = owner.map(|d| self.m.devs[d].owner());
        let result;
        let mut pfns = alloc::vec![0u64; n];
        // Every fault that changes a page (a COW break, a migration home) invalidates the
        // interval and restarts the walk: a retry per page is normal.
        let (mut tries, max_tries) = (0, 4 * n + 64);
        let mut s;
        loop {
            tries += 1;
            let seq = sub.read_begin().map_err(|e| outcome(call, e, "Ok from read_begin"))?;
            s = space.lock();
            for (k, e) in pfns.iter_mut().enumerate() {
                *e = HmmPfn::request_bits(req_of(reqs, k));
            }
            let mut range = HmmRange::<HmmPfn> {
                notifier: &sub,
                notifier_seq: seq,
                start,
                end,
                pfns: &mut pfns,
                default_flags: Request::NONE,
                pfn_flags_mask: Request::WRITE,
                dev_private_owner: owner_cookie,
            };
            let r = hmm_range_fault(&mut s, &mut range);
            if r == Err(RangeError::Busy) && tries < max_tries {
                drop(s);
                continue;
            }
            if r.is_ok() && sub.read_retry(seq) && tries < max_tries {
                drop(s);
                continue;
            }
            result = r;
            break;
        }
        self.expected(result.is_ok());
        let checked = match result {
            r if !allowed.contains(&r) => Err(outcome(call, r, &format!("one of {allowed:?}"))),
            Ok(()) => self.check_pfns(p, at, &pfns, reqs, &s, &call),
            Err(_) => Ok(()),
        };
        drop(s);
        let _ = sub.remove();
        self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
        checked
    }

    /// Whether a page of a range fault has a request that must fail whatever it maps.
    fn definite_bad(&self, p: usize, at: usize, n: usize, reqs: u64, owner: Option<usize>) -> bool {
        (0..n).any(|k| {
            let rq = req_of(reqs, k);
            match self.page(p, at + k) {
                None => rq.fault,
                Some(pg) if rq.fault && !pg.prot.read() => true,
                Some(pg) => rq.write && !pg.prot.write() && !(owner.is_some_and(|d| d < 2) && pg.loc != Loc::Ram),
            }
        })
    }

    fn check_pfns(
        &mut self,
        p: usize,
        at: usize,
        pfns: &[u64],
        reqs: u64,
        s: &AddressSpace,
        call: &dyn fmt::Display,
    ) -> Check {
        let mm = s.mm().clone();
        for (k, &e) in pfns.iter().enumerate() {
            let rq = req_of(reqs, k);
            let pg = self.page(p, at + k);
            let valid = e & HmmPfn::VALID != 0;
            let write = e & HmmPfn::WRITE != 0;
            let error = e & HmmPfn::ERROR != 0;
            let readable = pg.is_some_and(|pg| pg.prot.read());
            // A device-private page of the caller's device is reported as it is, never
            // faulted, even for a write request (Linux 6.1 hmm_vma_handle_pte).
            let private = valid
                && mm.device_memory().and_then(|d| d.owner_of(HmmPfn::pfn(e))).is_some_and(|(_, private)| private);
            let wrong = (rq.fault && !valid)
                || (rq.write && !write && !private)
                || (!readable && !error)
                || (readable && error)
                || (write && !pg.is_some_and(|pg| pg.prot.write()));
            if wrong {
                return Err(outcome(
                    call,
                    format_args!("entry {e:#x} for page {:#x} (request {rq:?})", va(at + k)),
                    &format!("an entry consistent with {:?}", pg.map(|p| prot_name(p.prot))),
                ));
            }
            if valid {
                let pfn = HmmPfn::pfn(e);
                if !private {
                    let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
                    mm.platform().read(pfn.addr(), &mut a);
                    mm.platform().read(pfn.addr() + PAGE - 8, &mut b);
                    self.check_words(p, at + k, u64::from_le_bytes(a), u64::from_le_bytes(b), &"range fault frame")?;
                }
            }
        }
        Ok(())
    }

    fn close_all(&mut self, proc: Proc) -> Check {
        let Proc { files, extra, space, checker, .. } = proc;
        for (d, f) in files.into_iter().enumerate() {
            if let Some(f) = f {
                f.close().map_err(|e| outcome(format_args!("close dev{d}"), e, "Ok"))?;
            }
        }
        if let Some(f) = extra {
            f.close().map_err(|e| outcome("close dev0 (second file)", e, "Ok"))?;
        }
        if let Some(c) = checker {
            c.remove().map_err(|(_, e)| outcome("remove the checker interval", e, "Ok"))?;
        }
        drop(space);
        Ok(())
    }

    // -- the end ----------------------------------------------------------------------------

    fn finish(&mut self) -> Check {
        // Every page of every process.
        for p in 0..self.procs.len() {
            for i in 0..ARENA_PAGES {
                self.cpu_read_page(p, i, false)?;
            }
            let space = self.procs[p].space.clone();
            let subs = Subscriptions::of(&mut space.lock());
            let files = self.procs[p].files.iter().flatten().count()
                + usize::from(self.procs[p].extra.is_some())
                + usize::from(self.procs[p].checker.is_some());
            if subs.is_invalidating() || subs.len() != files {
                return Err(Broken::Leak(format!(
                    "proc[{p}]: notifier {:?} with {} intervals, expected idle with {files}",
                    subs,
                    subs.len()
                )));
            }
        }
        for proc in core::mem::take(&mut self.procs) {
            self.close_all(proc)?;
        }
        for (d, dev) in self.m.devs.iter().enumerate() {
            let (calloc, cfree) = dev.counters();
            if dev.pages_in_use() != 0 || calloc != cfree {
                return Err(Broken::Leak(format!(
                    "dev{d}: {} device pages in use with no process left (allocated {calloc}, freed {cfree})",
                    dev.pages_in_use()
                )));
            }
        }
        self.release_all()?;
        if self.cfg.on(Feature::UnboundedRelease) {
            self.section_probe()?;
        }
        Ok(())
    }

    fn release_all(&mut self) -> Check {
        for (d, dev) in self.m.devs.iter().enumerate() {
            dev.release().map_err(|e| outcome(format_args!("dev{d} release at the end"), e, "Ok"))?;
        }
        let free = self.m.plat.free_frames();
        if free != self.m.baseline {
            return Err(Broken::Leak(format!(
                "{} RAM frames not returned ({} free, {} after setup)",
                self.m.baseline as i64 - free as i64,
                free,
                self.m.baseline
            )));
        }
        Ok(())
    }

    /// Device memory added and removed again and again (hot-plug cycles): every cycle must
    /// work, so frame-table sections must come back.
    fn section_probe(&mut self) -> Check {
        for cycle in 0..40 {
            let s = AddressSpace::new(&self.m.mm).map_err(|e| Broken::Setup(format!("address space: {e}")))?;
            let space = self.m.mm.share(s);
            let a = space.lock().mmap(MapRequest::anon(PAGE, Prot::RW)).map_err(|e| outcome("probe mmap", e, "Ok"))?;
            space.lock().write(a, &7u64.to_le_bytes()).map_err(|e| outcome("probe write", e, "Ok"))?;
            for d in 0..2 {
                let f = Dmirror::open(&self.m.devs[d], &space).map_err(|e| outcome("probe open", e, "Ok"))?;
                let r = f.migrate_to_dev(a, 1);
                if r.is_err() {
                    return Err(Broken::Leak(format!(
                        "device memory add/remove cycle {cycle}: dev{d} MIGRATE_TO_DEV gave {:?} (frame-table sections not returned?)",
                        r.map(|_| ())
                    )));
                }
                let _ = f.close();
                let mut w = [0u8; 8];
                space.lock().read(a, &mut w).map_err(|e| outcome("probe read", e, "Ok"))?;
                if u64::from_le_bytes(w) != 7 {
                    return Err(Broken::Data {
                        reader: String::from("probe CPU"),
                        va: a,
                        got: u64::from_le_bytes(w),
                        torn: false,
                        want: String::from("0x7"),
                    });
                }
                self.m.devs[d].release().map_err(|e| outcome("probe release", e, "Ok"))?;
            }
        }
        self.release_all()
    }
}

/// Runs `cfg` single-threaded and deterministically.
pub fn run(cfg: &Config) -> Result<Stats, Failure> {
    run_observed(cfg, &mut |_, _| {})
}

/// [`run`], calling `observe(index, operation)` before each operation runs (to trace a run,
/// or to know the last operations when the code under test panics).
pub fn run_observed(cfg: &Config, observe: &mut dyn FnMut(u64, &str)) -> Result<Stats, Failure> {
    drive(cfg, None, &mut Vec::new(), observe)
}

/// Runs the operations `script` gives (fitted to the processes alive), or those the seed
/// picks when it is `None`; `log` receives every operation run.
fn drive(
    cfg: &Config,
    script: Option<&[Op]>,
    log: &mut Vec<Op>,
    observe: &mut dyn FnMut(u64, &str),
) -> Result<Stats, Failure> {
    let mut ring: VecDeque<String> = VecDeque::with_capacity(RING);
    let fail = |op_index: u64, op: String, broken: Broken, ring: &VecDeque<String>| Failure {
        seed: cfg.seed,
        op_index,
        op,
        broken: Box::new(broken),
        last_ops: ring.iter().cloned().collect(),
    };
    let mut w = World::new(cfg.clone()).map_err(|b| fail(0, String::from("setup"), b, &ring))?;
    let mut rng = Rng::new(cfg.seed);
    let count = script.map_or(cfg.ops, |s| s.len() as u64);
    for i in 0..count {
        let op = match script {
            None => w.pick(&mut rng),
            Some(s) => match w.fit(s[i as usize]) {
                Some(op) => op,
                None => continue,
            },
        };
        log.push(op);
        let names: Vec<u32> = w.procs.iter().map(|p| p.name).collect();
        let text = format!("#{i} {op} (procs {names:?})");
        observe(i, &text);
        if let Err(b) = w.exec(op) {
            return Err(fail(i, text, b, &ring));
        }
        if ring.len() == RING {
            ring.pop_front();
        }
        ring.push_back(text);
        w.stats.ops += 1;
    }
    w.finish().map_err(|b| fail(count, String::from("end-of-run checks"), b, &ring))?;
    Ok(core::mem::take(&mut w.stats))
}

/// What makes two failures the same bug, for [`minimize`].
fn signature(f: &Failure) -> String {
    let before = |s: &str, c: char| String::from(s.split(c).next().unwrap_or(""));
    match &*f.broken {
        Broken::Data { reader, .. } => format!("data {}", before(reader, '(')),
        Broken::Outcome { call, got, .. } => format!("outcome {} {got}", before(call, '[')),
        Broken::Leak(what) => format!("leak {}", before(what, ':')),
        Broken::Setup(what) => format!("setup {what}"),
    }
}

/// Runs `cfg`; if it fails, shrinks the operation sequence to a short one that fails the
/// same way (same check, same call, same result), within `budget` trial runs. Returns the
/// failure of the shortest sequence found and that sequence, one operation a line.
pub fn minimize(cfg: &Config, budget: usize) -> Option<(Failure, Vec<String>)> {
    let mut cur = Vec::new();
    let first = drive(cfg, None, &mut cur, &mut |_, _| {}).err()?;
    let sig = signature(&first);
    let mut best = first;
    let mut runs = 0;
    let mut chunk = cur.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut removed = false;
        while i < cur.len() && runs < budget {
            let cand: Vec<Op> = cur[..i].iter().chain(cur[(i + chunk).min(cur.len())..].iter()).copied().collect();
            let mut log = Vec::new();
            runs += 1;
            match drive(cfg, Some(&cand), &mut log, &mut |_, _| {}) {
                Err(f) if signature(&f) == sig => {
                    cur = log;
                    best = f;
                    removed = true;
                }
                _ => i += chunk,
            }
        }
        if runs >= budget || (chunk == 1 && !removed) {
            break;
        }
        if !removed {
            chunk = chunk.div_ceil(2);
        }
    }
    let mut lines = Vec::new();
    let mut log = Vec::new();
    let f = drive(cfg, Some(&cur), &mut log, &mut |_, text| lines.push(String::from(text))).err().unwrap_or(best);
    Some((f, lines))
}

/// Boxes a task for [`Threads::run`].
pub fn task<'a>(f: impl FnOnce() + Send + 'a) -> Box<dyn FnOnce() + Send + 'a> {
    Box::new(f)
}
