//! P3, UVM's tree-based density prefetcher (`uvm_perf_prefetch.c`; ISCA'19's TBNp).
//!
//! Per 2 MiB VA block, a binary tree over the block's pages. Each faulted page first grows to
//! its whole big page (64 KiB). Then, for each faulted big page, the prefetch region is the
//! largest aligned subregion containing it in which (pages already on the destination ∪ faulted
//! pages) × 100 > subregion pages × `threshold` (51 by default; strict, as UVM). The region's
//! other pages are prefetched. Pages listed as thrashing (by P4) are neither grown nor
//! prefetched.

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
}

impl Default for Tree {
    fn default() -> Self {
        Tree { threshold: 51, leaf: BIG, min_faults: 1 }
    }
}

impl Tree {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        Tree {
            threshold: p.int("threshold") as u32,
            leaf: if p.text("leaf") == "4K" { 1 } else { BIG },
            min_faults: p.int("min_faults") as u32,
        }
    }

    /// Plans the faults of one batch for device `dev`, never growing or prefetching pages in
    /// `exclude`.
    pub fn plan(&self, cx: &Ctx<'_>, dev: u8, faults: &[Fault], exclude: &BTreeSet<u32>, plan: &mut Plan) {
        let mut i = 0;
        while i < faults.len() {
            let block = faults[i].page / BLOCK;
            let mut j = i;
            while j < faults.len() && faults[j].page / BLOCK == block {
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
        let range = cx.state.block_range(block);
        let (base, n) = (range.start, range.end - range.start);
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
                while size <= BLOCK {
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
        let cx = Ctx { state: &s, cost: &c, now: 0 };
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
        let cx = Ctx { state: &s, cost: &c, now: 0 };
        let mut plan = Plan::default();
        Tree::default().on_device_faults(&cx, 0, &[Fault { page: 20, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 15));
        // With 48 of 64 present, a fault in the 4th big page takes the whole 128-page subregion
        // (64/128 = 50 % is not enough... but 64 present + 16 = 80/128 = 62 %).
        let mut s = State::new(1024, &[1024]);
        for p in 0..64 {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        let cx = Ctx { state: &s, cost: &c, now: 0 };
        let mut plan = Plan::default();
        Tree::default().on_device_faults(&cx, 0, &[Fault { page: 70, write: false }], &mut plan);
        assert_eq!(moved(&plan), (1, 63));
    }

    #[test]
    fn excluded_pages_are_not_grown() {
        let s = State::new(512, &[512]);
        let c = CostModel::default();
        let cx = Ctx { state: &s, cost: &c, now: 0 };
        let mut plan = Plan::default();
        let ex: BTreeSet<u32> = [5].into_iter().collect();
        Tree::default().plan(&cx, 0, &[Fault { page: 5, write: true }], &ex, &mut plan);
        assert_eq!(moved(&plan), (1, 0));
    }
}
