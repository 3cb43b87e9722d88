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
//! The parts: this file holds the public interface (configuration, features, statistics,
//! failures, [`run`], [`minimize`]) and the run loop; `machine.rs` the machine (memory manager,
//! devices, copy engines with injectable failures); `shadow.rs` the model and the checks of
//! every read against it; `ops.rs` the operations and how they are picked; `world.rs` the
//! single-threaded world, its setup and the end-of-run checks (every page, leaks); `exec.rs`
//! and `mapping.rs` the execution of the data and migration operations and of the
//! address-space operations; `threaded.rs` the threaded mode.
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

mod exec;
mod machine;
mod mapping;
mod ops;
mod shadow;
mod threaded;
mod world;
// The parts see each other's items through these (each part does `use super::*`).
use machine::*;
use ops::*;
use shadow::*;
pub use threaded::{ThreadedConfig, Threads, run_threaded};
use world::*;

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

type Check = Result<(), Broken>;

fn outcome(call: impl fmt::Display, got: impl fmt::Debug, want: &str) -> Broken {
    Broken::Outcome { call: format!("{call}"), got: format!("{got:?}"), want: String::from(want) }
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
