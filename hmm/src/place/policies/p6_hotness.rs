//! P6, hotness tiering: device memory is the fast tier, system memory the slow one (HeMem,
//! SOSP'21; Memtis, SOSP'23; §4.1).
//!
//! Accesses are sampled: a device's access counter (local accesses included) notifies every
//! `sample` lines per page, and each notification is one sample, a write sample if writes
//! dominated. New pages go to the fast tier while it has room, else they are mapped remotely in
//! the slow tier. Every `tick_us` (HeMem's policy thread: 10 ms) hot pages in the slow tier are
//! promoted and cold pages in the fast tier demoted to make room, within `budget_mb` per tick.
//!
//! - `hemem`: a page is hot with ≥ `read_hot` (8) read or ≥ `write_hot` (4) write samples; when
//!   any page reaches `cool` (18) samples, every count halves.
//! - `memtis`: a histogram of per-page sample counts (log2 bins) sets the hot threshold at the
//!   bin where the hottest pages fill the fast tier; counts halve every `cool_samples` samples.

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy};
use crate::place::{Loc, PAGE};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::text("mode", "hemem", &["hemem", "memtis"], "hotness classification"),
    ParamDef::int("sample", 16, 1, 1_000_000, "lines per sample (sampling period)"),
    ParamDef::int("read_hot", 8, 1, 1000, "read samples that make a page hot (hemem)"),
    ParamDef::int("write_hot", 4, 1, 1000, "write samples that make a page hot (hemem)"),
    ParamDef::int("cool", 18, 2, 1000, "samples on one page that halve all counts (hemem)"),
    ParamDef::int("cool_samples", 20_000, 10, 100_000_000, "samples between coolings (memtis)"),
    ParamDef::float("tick_us", 10_000.0, 1.0, 10_000_000.0, "policy period"),
    ParamDef::int("budget_mb", 10_240, 1, 1_000_000, "migration budget per tick"),
];

#[derive(Debug, Clone, Copy, Default)]
struct Heat {
    reads: u32,
    writes: u32,
}

/// Hotness tiering.
#[derive(Debug, Clone)]
pub struct Hotness {
    memtis: bool,
    sample: u32,
    read_hot: u32,
    write_hot: u32,
    cool: u32,
    cool_samples: u64,
    tick: u64,
    budget: u32,
    heat: BTreeMap<(u8, u32), Heat>,
    samples: u64,
    promoted: u64,
    demoted: u64,
}

impl Hotness {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        Hotness {
            memtis: p.text("mode") == "memtis",
            sample: p.int("sample") as u32,
            read_hot: p.int("read_hot") as u32,
            write_hot: p.int("write_hot") as u32,
            cool: p.int("cool") as u32,
            cool_samples: p.int("cool_samples") as u64,
            tick: (p.float("tick_us") * 1000.0) as u64,
            budget: ((p.int("budget_mb") as u64 * (1 << 20) / PAGE).min(u32::MAX as u64)) as u32,
            heat: BTreeMap::new(),
            samples: 0,
            promoted: 0,
            demoted: 0,
        }
    }

    fn halve(&mut self) {
        for h in self.heat.values_mut() {
            h.reads /= 2;
            h.writes /= 2;
        }
        self.heat.retain(|_, h| h.reads + h.writes > 0);
    }

    /// Memtis: the smallest count whose bin and hotter ones fit in `capacity` pages.
    fn memtis_threshold(&self, dev: u8, capacity: u32) -> u32 {
        let mut bins = [0u32; 33];
        for (&(d, _), h) in &self.heat {
            if d == dev {
                bins[32 - (h.reads + h.writes).leading_zeros() as usize] += 1;
            }
        }
        let mut total = 0;
        for b in (1..33).rev() {
            if total + bins[b] > capacity {
                return 1 << b;
            }
            total += bins[b];
        }
        1
    }
}

impl Policy for Hotness {
    fn name(&self) -> &str {
        if self.memtis { "memtis" } else { "hemem" }
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        let mut room = cx.state.free(dev as usize);
        for f in faults {
            if room > 0 {
                room -= 1;
                plan.migrate(f.page, 1, Loc::Dev(dev));
            } else {
                plan.remote(f.page, 1, dev);
            }
        }
    }

    fn counters(&self, _cx: &Ctx<'_>, _dev: u8) -> Option<Counters> {
        Some(Counters { local_too: true, ..Counters::new(1, self.sample) })
    }

    fn on_access_counter(&mut self, _cx: &Ctx<'_>, n: &Notification, _plan: &mut Plan) {
        self.samples += 1;
        let h = self.heat.entry((n.dev, n.first)).or_default();
        if n.writes > n.reads {
            h.writes += 1;
        } else {
            h.reads += 1;
        }
        let hottest = h.reads.max(h.writes);
        if (!self.memtis && hottest >= self.cool) || (self.memtis && self.samples.is_multiple_of(self.cool_samples)) {
            self.halve();
        }
    }

    fn tick_ns(&self) -> Option<u64> {
        Some(self.tick)
    }

    fn on_tick(&mut self, cx: &Ctx<'_>, plan: &mut Plan) {
        for dev in 0..cx.state.devices() as u8 {
            let cap = cx.state.dev(dev as usize).capacity;
            let thr = if self.memtis { self.memtis_threshold(dev, cap) } else { 0 };
            let hot = |h: &Heat| {
                if self.memtis {
                    h.reads + h.writes >= thr
                } else {
                    h.reads >= self.read_hot || h.writes >= self.write_hot
                }
            };
            let mut promote: Vec<(u32, u32)> = self
                .heat
                .iter()
                .filter(|(k, h)| k.0 == dev && hot(h) && cx.state.page(k.1).loc != Loc::Dev(dev))
                .map(|(k, h)| (h.reads + h.writes, k.1))
                .collect();
            promote.sort_unstable_by(|a, b| b.cmp(a));
            promote.truncate(self.budget as usize);
            if promote.is_empty() {
                continue;
            }
            // Demote cold resident pages to make room for the hot ones.
            let need = (promote.len() as u32).saturating_sub(cx.state.free(dev as usize));
            let mut cold: Vec<(u32, u64, u32)> = Vec::new();
            if need > 0 {
                for b in 0..cx.state.blocks() {
                    if cx.state.on_dev_in_block(dev as usize, b) == 0 {
                        continue;
                    }
                    for p in cx.state.block_range(b) {
                        if cx.state.page(p).loc == Loc::Dev(dev) {
                            let h = self.heat.get(&(dev, p)).copied().unwrap_or_default();
                            if !hot(&h) {
                                cold.push((h.reads + h.writes, cx.state.page(p).last_access, p));
                            }
                        }
                    }
                }
                cold.sort_unstable();
            }
            let n = (promote.len() as u32).min(cx.state.free(dev as usize) + cold.len() as u32);
            for &(_, _, p) in cold.iter().take(need.min(n) as usize) {
                plan.migrate(p, 1, Loc::Cpu);
                plan.remote(p, 1, dev);
                self.demoted += 1;
            }
            for &(_, p) in promote.iter().take(n as usize) {
                plan.migrate(p, 1, Loc::Dev(dev));
                self.promoted += 1;
            }
        }
    }

    fn remote_after_eviction(&self) -> bool {
        true
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        alloc::vec![("samples", self.samples), ("promoted", self.promoted), ("demoted", self.demoted)]
    }
}
