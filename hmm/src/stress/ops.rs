//! The operations of the stress run ([`Op`], with the failures they may inject, [`Inject`]),
//! how they print in a failure report, and how the single-threaded world picks them: random
//! ranges (whole 2 MiB blocks now and then, for THPs), injections, and `fit`, which adapts a
//! picked operation to the world as it is (live processes, enabled [`Feature`]s).

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inject {
    None,
    /// The device's next copy fails.
    Copy,
    /// The file's next device allocation fails (`HMM_DMIRROR_FLAGS`).
    Alloc,
    /// The next RAM allocation fails.
    Ram,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
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
    pub(super) fn kind(&self) -> &'static str {
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

pub(super) struct R(pub(super) usize, pub(super) usize);
impl fmt::Display for R {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {} pages]", va(self.0), self.1)
    }
}

pub(super) fn prot_name(p: Prot) -> &'static str {
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
pub(super) fn req_of(reqs: u64, i: usize) -> Request {
    match (reqs >> ((i % 32) * 2)) & 3 {
        0 | 1 => Request::NONE,
        2 => Request::FAULT,
        _ => Request::WRITE,
    }
}

impl World {
    // -- generation -------------------------------------------------------------------------

    pub(super) fn range(&self, rng: &mut Rng) -> (usize, usize) {
        if self.cfg.on(Feature::Thp) && rng.one_in(5) {
            let b = rng.below((ARENA_PAGES / BLOCK) as u64) as usize;
            return (b * BLOCK, BLOCK);
        }
        let at = rng.below(ARENA_PAGES as u64) as usize;
        let max = if rng.one_in(6) { 64 } else { 8 };
        let n = 1 + rng.below(max) as usize;
        (at, n.min(ARENA_PAGES - at))
    }

    pub(super) fn inject(&self, rng: &mut Rng, allowed: &[Inject]) -> Inject {
        if self.cfg.on(Feature::Inject) && rng.one_in(8) {
            allowed[rng.below(allowed.len() as u64) as usize]
        } else {
            Inject::None
        }
    }

    pub(super) fn pick(&self, rng: &mut Rng) -> Op {
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
    pub(super) fn fit(&self, op: Op) -> Option<Op> {
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
}
