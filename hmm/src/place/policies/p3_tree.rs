//! P3, UVM's tree-based density prefetcher (`uvm_perf_prefetch.c`; ISCA'19's TBNp).
//!
//! Per 2 MiB VA block, a binary tree over the block's pages. Each faulted page first grows to
//! its whole big page (64 KiB). Then, for each faulted big page, the prefetch region is the
//! largest aligned subregion containing it in which (pages already on the destination ∪ faulted
//! pages) × 100 > subregion pages × `threshold` (51 by default; strict, as UVM). The region's
//! other pages are prefetched. Pages listed as thrashing (by P4) are neither grown nor
//! prefetched.
//!
//! `extent` is the tree's span: UVM's 2 MiB VA block by default (its tree never crosses a
//! block, the limit the "Forest" line of work targets); smaller trees (512 KiB, 1 MiB) or the
//! cross-block variant (4 MiB, 8 MiB: one tree over two or four VA blocks, so the density rule
//! can prefetch into the next block) are parameter values.

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Ctx, Fault, Plan, Policy, UNTIL_FULL};
use crate::place::{BIG, BLOCK, Loc};
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::int("threshold", 51, 1, 100, "density (%) a subregion must exceed to be prefetched"),
    ParamDef::text("leaf", "64K", &["4K", "64K"], "fault granularity growth (UVM's big page)"),
    ParamDef::int("min_faults", 1, 1, 20, "faults in a block before it prefetches"),
    ParamDef::text(
        "extent",
        "2M",
        &["512K", "1M", "2M", "4M", "8M"],
        "the tree's span: UVM's 2 MiB VA block, or across blocks (4M, 8M)",
    ),
    UNTIL_FULL,
];

/// The tree prefetcher.
#[derive(Debug, Clone)]
pub struct Tree {
    /// Density threshold, %.
    pub threshold: u32,
    /// Leaf (growth) size, pages.
    pub leaf: u32,
    /// Faults in a batch's block before prefetching starts.
    pub min_faults: u32,
    /// The tree's span, pages (a power of two; [`BLOCK`] as UVM).
    pub extent: u32,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { threshold: 51, leaf: BIG, min_faults: 1, extent: BLOCK }
    }
}

impl Tree {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        Tree {
            threshold: p.int("threshold") as u32,
            leaf: if p.text("leaf") == "4K" { 1 } else { BIG },
            min_faults: p.int("min_faults") as u32,
            extent: match p.text("extent") {
                "512K" => BLOCK / 4,
                "1M" => BLOCK / 2,
                "4M" => BLOCK * 2,
                "8M" => BLOCK * 4,
                _ => BLOCK,
            },
        }
    }

    /// Plans the faults of one batch for device `dev`, never growing or prefetching pages in
    /// `exclude`.
    pub fn plan(&self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], exclude: &BTreeSet<u32>, plan: &mut Plan) {
        let extent = self.extent.max(1);
        let mut i = 0;
        while i < faults.len() {
            let block = faults[i].page / extent;
            let mut j = i;
            while j < faults.len() && faults[j].page / extent == block {
                j += 1;
            }
            self.plan_block(cx, dev, block, &faults[i..j], exclude, plan);
            i = j;
        }
    }

    fn plan_block(
        &self,
        cx: &Ctx<'_>,
        dev: u8,
        block: u32,
        faults: &[Fault],
        exclude: &BTreeSet<u32>,
        plan: &mut Plan,
    ) {
        let extent = self.extent.max(1);
        let base = block * extent;
        let n = (base + extent).min(cx.pages()) - base;
        let to = Loc::Dev(dev);
        // have[i]: page base+i is on the destination or faulted (grown).
        let mut have: Vec<bool> = (0..n).map(|i| cx.state.page(base + i).loc == to).collect();
        let mut want: Vec<bool> = alloc::vec![false; n as usize];
        for f in faults {
            let off = f.page - base;
            have[off as usize] = true;
            want[off as usize] = true;
            if exclude.contains(&f.page) {
                continue;
            }
            let first = off / self.leaf * self.leaf;
            for k in first..(first + self.leaf).min(n) {
                if !exclude.contains(&(base + k)) {
                    have[k as usize] = true;
                    want[k as usize] = true;
                }
            }
        }
        if faults.len() as u32 >= self.min_faults {
            for f in faults {
                if exclude.contains(&f.page) {
                    continue;
                }
                let off = f.page - base;
                let mut size = self.leaf.max(1) * 2;
                let mut best = None;
                while size <= extent {
                    let first = off / size * size;
                    if first >= n {
                        break;
                    }
                    let end = (first + size).min(n);
                    let count = have[first as usize..end as usize].iter().filter(|&&h| h).count() as u32;
                    if count * 100 > size * self.threshold {
                        best = Some((first, end));
                    }
                    size *= 2;
                }
                if let Some((first, end)) = best {
                    for k in first..end {
                        if !exclude.contains(&(base + k)) {
                            want[k as usize] = true;
                            have[k as usize] = true;
                        }
                    }
                }
            }
        }
        // Faulted pages on demand, the rest as prefetch, in runs.
        let demand: BTreeSet<u32> = faults.iter().map(|f| f.page - base).collect();
        let mut k = 0;
        while k < n {
            if !want[k as usize] || cx.state.page(base + k).loc == to {
                k += 1;
                continue;
            }
            let pre = !demand.contains(&k);
            let start = k;
            while k < n && want[k as usize] && cx.state.page(base + k).loc != to && demand.contains(&k) != pre {
                k += 1;
            }
            if pre {
                plan.prefetch(base + start, k - start, to);
            } else {
                plan.migrate(base + start, k - start, to);
            }
        }
    }
}

impl Policy for Tree {
    fn name(&self) -> &str {
        "tree"
    }
    fn on_device_faults(&mut self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], plan: &mut Plan) {
        self.plan(cx, dev, faults, &BTreeSet::new(), plan);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::cost::CostModel;
    use crate::place::policy::Action;
    use crate::place::state::State;

    fn moved(plan: &Plan) -> (u32, u32) {
        let (mut demand, mut pre) = (0, 0);
        for a in &plan.actions {
            if let Action::Migrate { pages, prefetch, .. } = a {
                if *prefetch { pre += pages } else { demand += pages }
            }
        }
        (demand, pre)
    }

    #[test]
    fn one_fault_grows_to_its_big_page() {
        let s = State::new(1024, &[1024]);
        let c = CostModel::default();
        let cx = Ctx::new(&s, &c, 0);
        let mut plan = Plan::default();
        Tree::default().on_device_faults(&cx, 0, &[Fault { page: 5, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 15));
    }

    #[test]
    fn density_above_threshold_takes_the_subregion() {
        let mut s = State::new(1024, &[1024]);
        // 16 pages of the first 32 on the device: a fault in the second big page makes the
        // 32-page subregion full; the 64-page one is 32/64 = 50 %, not > 51 %.
        for p in 0..16 {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        let c = CostModel::default();
        let cx = Ctx::new(&s, &c, 0);
        let mut plan = Plan::default();
        Tree::default().on_device_faults(&cx, 0, &[Fault { page: 20, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 15));
        // With 48 of 64 present, a fault in the 4th big page takes the whole 128-page subregion
        // (64/128 = 50 % is not enough... but 64 present + 16 = 80/128 = 62 %).
        let mut s = State::new(1024, &[1024]);
        for p in 0..64 {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        let cx = Ctx::new(&s, &c, 0);
        let mut plan = Plan::default();
        Tree::default().on_device_faults(&cx, 0, &[Fault { page: 70, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 63));
    }

    #[test]
    fn the_cross_block_tree_prefetches_into_the_next_block_and_a_small_one_stops_early() {
        // Block 0 all on the device, a fault at the start of block 1: with UVM's 2 MiB tree
        // the fault only grows to its big page; a 4 MiB tree over both blocks finds
        // (512 + 16) / 1024 > 51 % and takes the rest of block 1.
        let mut s = State::new(2048, &[2048]);
        for p in 0..512 {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        let c = CostModel::default();
        let cx = Ctx::new(&s, &c, 0);
        let tree = |extent: &str| {
            let mut p = Params::new();
            p.set("extent", crate::place::params::Value::Text(extent.into()));
            Tree::new(&p.checked(PARAMS).unwrap())
        };
        let mut plan = Plan::default();
        tree("2M").on_device_faults(&cx, 0, &[Fault { page: 512, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 15));
        let mut plan = Plan::default();
        tree("4M").on_device_faults(&cx, 0, &[Fault { page: 512, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 511));
        // A 512 KiB tree stops at its 128 pages: with [0, 128) on the device, a fault at 128
        // makes [0, 256) (128 + 16) / 256 > 51 % dense for UVM's tree, which takes it; the
        // small tree [128, 256) holds 16 of 128 and only grows the big page.
        let mut s = State::new(1024, &[1024]);
        for p in 0..128 {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        let cx = Ctx::new(&s, &c, 0);
        let mut plan = Plan::default();
        tree("2M").on_device_faults(&cx, 0, &[Fault { page: 128, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 127));
        let mut plan = Plan::default();
        tree("512K").on_device_faults(&cx, 0, &[Fault { page: 128, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 15));
    }

    #[test]
    fn excluded_pages_are_not_grown() {
        let s = State::new(512, &[512]);
        let c = CostModel::default();
        let cx = Ctx::new(&s, &c, 0);
        let mut plan = Plan::default();
        let ex: BTreeSet<u32> = [5].into_iter().collect();
        Tree::default().plan(&cx, 0, &[Fault { page: 5, write: true }], &ex, &mut plan);
        assert_eq!(moved(&plan), (1, 0));
    }
}
