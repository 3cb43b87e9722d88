//! P5, access-counter migration, remote first (UVM's access counters, §1.5; IPDPS'20's delayed
//! migration, §4.2).
//!
//! A faulting device maps the pages remotely (zero-copy) instead of migrating them. The device
//! counts its remote accesses per region (`region`: 64 KiB sub-regions, or 2 MiB); when a
//! region's count reaches the threshold, the region migrates to the device (with the tree
//! prefetcher's density rule around it when `prefetch` is on). Evicted pages stay mapped
//! remotely (`uvm_perf_map_remote_on_eviction`), so hot pages come back by count rather than by
//! fault.
//!
//! Modes (IPDPS'20): `always` delays migration from the start; `oversub` migrates on touch (with
//! the tree prefetcher) until device memory first fills, then delays; `adaptive` does the same
//! but multiplies the threshold by `penalty` once oversubscribed; `disabled` always migrates on
//! touch (the baseline).
//!
//! `service`: UVM's driver services counter notifications in the background while the GPU
//! goes on accessing remotely (`background`); in IPDPS'20's delayed migration (UVMSmart) the
//! access that brings a block's counter to the threshold is handled as a far fault, so the
//! device waits for the migration (`fault`).

use super::p3_tree::Tree;
use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Counters, Ctx, Fault, Notification, Plan, Policy, Refusals};
use crate::place::{BIG, BLOCK};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::text("mode", "always", &["always", "oversub", "adaptive", "disabled"], "when migration is delayed"),
    ParamDef::int("threshold", 256, 1, 65535, "remote accesses (lines) in a region before it migrates"),
    ParamDef::text("region", "64K", &["64K", "2M"], "counter granularity"),
    ParamDef::int("penalty", 8, 1, 64, "threshold multiplier once oversubscribed (adaptive)"),
    ParamDef::bool("prefetch", true, "tree prefetch around migrations"),
    ParamDef::bool("remote_on_evict", true, "evicted pages stay mapped remotely"),
    ParamDef::text(
        "service",
        "background",
        &["background", "fault"],
        "counter-triggered migration: in the background (UVM), or as a far fault the device waits for (IPDPS'20)",
    ),
];

/// Access-counter migration.
#[derive(Debug, Clone)]
pub struct AccessCounters {
    mode: &'static str,
    threshold: u32,
    region: u32,
    penalty: u32,
    prefetch: bool,
    remote_on_evict: bool,
    sync: bool,
    tree: Tree,
    refused: Refusals,
    notifications: u64,
}

impl AccessCounters {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        let mode = ["always", "oversub", "adaptive", "disabled"].into_iter().find(|m| *m == p.text("mode"));
        AccessCounters {
            mode: mode.unwrap_or("always"),
            threshold: p.int("threshold") as u32,
            region: if p.text("region") == "2M" { BLOCK } else { BIG },
            penalty: p.int("penalty") as u32,
            prefetch: p.bool("prefetch"),
            remote_on_evict: p.bool("remote_on_evict"),
            sync: p.text("service") == "fault",
            tree: Tree::default(),
            refused: Refusals::default(),
            notifications: 0,
        }
    }

    fn delaying(&self, dev: u8) -> bool {
        match self.mode {
            "always" => true,
            "oversub" | "adaptive" => self.refused.of(dev),
            _ => false,
        }
    }
}

impl Policy for AccessCounters {
    fn name(&self) -> &str {
        match self.mode {
            "always" => "counters",
            "oversub" => "counters-oversub",
            "adaptive" => "counters-adaptive",
            _ => "counters-disabled",
        }
    }

    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        if self.delaying(dev) {
            for f in faults {
                plan.remote(f.page, 1, dev);
            }
        } else if self.prefetch {
            self.tree.plan(cx, dev, faults, &BTreeSet::new(), plan);
        } else {
            for f in faults {
                plan.migrate(f.page, 1, crate::place::Loc::Dev(dev));
            }
        }
    }

    fn counters(&self, _cx: &Ctx<'_>, dev: u8) -> Option<Counters> {
        if !self.delaying(dev) {
            return None;
        }
        let t = if self.mode == "adaptive" { self.threshold.saturating_mul(self.penalty) } else { self.threshold };
        Some(Counters { region: self.region, threshold: t, local_too: false, sync: self.sync })
    }

    fn on_access_counter(&mut self, cx: &Ctx<'_>, n: &Notification, plan: &mut Plan) {
        self.notifications += 1;
        let faults: Vec<Fault> = (n.first..n.first + n.pages).map(|page| Fault { page, write: n.writes > 0 }).collect();
        if self.prefetch {
            self.tree.plan(cx, n.dev, &faults, &BTreeSet::new(), plan);
        } else {
            plan.migrate(n.first, n.pages, crate::place::Loc::Dev(n.dev));
        }
    }

    fn on_allocation_refused(&mut self, _cx: &Ctx<'_>, dev: u8) {
        self.refused.note(dev);
    }

    fn remote_after_eviction(&self) -> bool {
        self.remote_on_evict && self.mode != "disabled"
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        alloc::vec![("counter_migrations", self.notifications)]
    }
}
