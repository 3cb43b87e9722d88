//! P7, eviction under oversubscription: which pages a full device gives back.
//!
//! Orders (`order`):
//! - `root-chunk`: UVM (`pick_root_chunk_to_evict`): whole 2 MiB chunks, least recently
//!   allocated into first;
//! - `lru4k`: true access LRU over 4 KiB pages (ISCA'19's locality-blind baseline);
//! - `lru2m`: whole 2 MiB blocks, least recently accessed first;
//! - `lfu2m`: whole 2 MiB blocks, least frequently accessed first (IPDPS'20);
//! - `tbne`: ISCA'19's tree-based neighbourhood pre-eviction, as UVMSmart's TBN does it: a
//!   64 KiB big page of the 2 MiB block whose most recent access is oldest (its least recently
//!   accessed big page) goes, then every subregion of that block's tree that holds pages but
//!   fewer than half its size goes whole, mirroring the tree prefetcher;
//! - `sle`: the same big page alone (sequential-local);
//! - `random`: random 4 KiB pages (ISCA'19's Re).
//!
//! `reserve` passes over that percentage of the order's entries (pages, big pages or blocks)
//! from its least recently used end, as UVMSmart's `reserve_accessed_page_percent` starts its
//! eviction that far into its sorted list: the pages touched longest ago are the ones an
//! iterative sweep needs next (ISCA'19 §D, "ReserveLRU"). `free_buffer` asks for that
//! percentage of capacity to be kept free
//! ([`Policy::free_buffer`]): once the device is oversubscribed the engine evicts, in this
//! order, whenever fewer pages are free, as UVMSmart's `should_evict_page` does every GMMU
//! cycle (which ISCA'19 shows hurts a locality-blind LRU).

use crate::place::params::{ParamDef, Params};
use crate::place::policy::{Ctx, Policy};
use crate::place::{BIG, BLOCK, Loc, Rng};
use alloc::collections::{BTreeSet, BinaryHeap};
use alloc::vec::Vec;
use core::cmp::Reverse;

/// The orders.
pub const ORDERS: &[&str] = &["root-chunk", "lru4k", "lru2m", "lfu2m", "tbne", "sle", "random"];

/// Parameters.
pub const PARAMS: &[ParamDef] = &[
    ParamDef::text("order", "root-chunk", ORDERS, "victim order"),
    ParamDef::int("reserve", 0, 0, 90, "% of most recently accessed pages never evicted"),
    ParamDef::int("free_buffer", 0, 0, 50, "% of capacity kept free once oversubscribed"),
    ParamDef::int("seed", 1, 0, i64::MAX, "random stream (order = random)"),
];

/// An eviction policy.
#[derive(Debug, Clone)]
pub struct Evict {
    order: &'static str,
    reserve: u32,
    free_buffer: u32,
    rng: Rng,
    name: alloc::string::String,
}

impl Evict {
    /// From checked parameters.
    pub fn new(p: &Params) -> Self {
        let order = ORDERS.iter().copied().find(|o| *o == p.text("order")).unwrap_or("root-chunk");
        let (reserve, free_buffer) = (p.int("reserve") as u32, p.int("free_buffer") as u32);
        let mut name = alloc::string::String::from(order);
        if reserve > 0 {
            name += &alloc::format!("-r{reserve}");
        }
        if free_buffer > 0 {
            name += &alloc::format!("-b{free_buffer}");
        }
        Evict { order, reserve, free_buffer, rng: Rng::new(p.int("seed") as u64), name }
    }
}

/// Pages device `dev` holds (resident or copies), with the time of their last access.
fn held(cx: &Ctx<'_>, dev: u8) -> Vec<(u64, u32)> {
    let mut v = Vec::new();
    for b in 0..cx.state.blocks() {
        if cx.state.on_dev_in_block(dev as usize, b) == 0 {
            continue;
        }
        for p in cx.state.block_range(b) {
            let pg = cx.state.page(p);
            if pg.loc == Loc::Dev(dev) || pg.copies & (1 << dev) != 0 {
                v.push((pg.last_access, p));
            }
        }
    }
    v
}

/// Held pages, least recently accessed first, found only as far as they are asked for: the
/// first few by a linear scan each (most evictions take one page of thousands), then from a
/// heap of the rest. Keys are unique (the page is in them), so the order is the sorted order.
struct Oldest {
    pages: Vec<(u64, u32)>,
    heap: Option<BinaryHeap<Reverse<(u64, u32)>>>,
    scans: u32,
}

impl Oldest {
    /// Scans before the rest go into a heap.
    const SCANS: u32 = 4;

    fn new(pages: Vec<(u64, u32)>) -> Self {
        Oldest { pages, heap: None, scans: 0 }
    }
}

impl Iterator for Oldest {
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        if self.heap.is_none() && self.scans < Self::SCANS {
            self.scans += 1;
            let (i, _) = self.pages.iter().enumerate().min_by_key(|&(_, k)| k)?;
            return Some(self.pages.swap_remove(i));
        }
        let pages = core::mem::take(&mut self.pages);
        let heap = self.heap.get_or_insert_with(|| pages.into_iter().map(Reverse).collect());
        heap.pop().map(|Reverse(k)| k)
    }
}

/// The pages in LRU order as a vector that picks are `swap_remove`d from, without sorting
/// it. Keys are unique, so the sorted vector is a list of ranks, and `swap_remove` only
/// permutes ranks: position `i` holds rank `i` unless a removal moved another rank there
/// (recorded, one per pick at most), and a picked rank is found by `select_nth_unstable`
/// (linear). A full device evicts one page per fault, and sorting every held page for each
/// random pick was about a fifth of a TCG profile of the heaviest oversubscribed points. The
/// picks are those of sorting and `swap_remove`, entry for entry.
struct SwapRemoved<'a> {
    entries: &'a mut [(u64, u32)],
    len: usize,
    /// (position, the rank a removal moved there).
    moved: Vec<(usize, usize)>,
}

impl<'a> SwapRemoved<'a> {
    fn new(entries: &'a mut [(u64, u32)]) -> Self {
        let len = entries.len();
        SwapRemoved { entries, len, moved: Vec::new() }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rank at position `pos`.
    fn rank(&self, pos: usize) -> usize {
        self.moved.iter().find(|&&(q, _)| q == pos).map_or(pos, |&(_, r)| r)
    }

    /// Removes and returns the entry at `pos` (below `len`), the last one taking its place.
    fn swap_remove(&mut self, pos: usize) -> (u64, u32) {
        let e = *self.entries.select_nth_unstable(self.rank(pos)).1;
        let last = self.len - 1;
        let tail = self.rank(last);
        self.moved.retain(|&(q, _)| q != pos && q != last);
        if pos != last {
            self.moved.push((pos, tail));
        }
        self.len = last;
        e
    }
}

/// Takes the pages of `pages` that device `dev` holds and are not yet chosen as victims.
/// Returns how many.
fn take(
    cx: &Ctx<'_>,
    dev: u8,
    pages: core::ops::Range<u32>,
    chosen: &mut BTreeSet<u32>,
    victims: &mut Vec<(u32, u32)>,
) -> u32 {
    let mut got = 0;
    for p in pages {
        if holds(cx, dev, p) && chosen.insert(p) {
            victims.push((p, 1));
            got += 1;
        }
    }
    got
}

fn holds(cx: &Ctx<'_>, dev: u8, p: u32) -> bool {
    let pg = cx.state.page(p);
    pg.loc == Loc::Dev(dev) || pg.copies & (1 << dev) != 0
}

impl Policy for Evict {
    fn name(&self) -> &str {
        &self.name
    }

    fn free_buffer(&self, cx: &Ctx<'_>, dev: u8) -> u32 {
        cx.state.dev(dev as usize).capacity * self.free_buffer / 100
    }

    fn on_eviction_pressure(&mut self, cx: &Ctx<'_>, dev: u8, need: u32, victims: &mut Vec<(u32, u32)>) {
        let reserve = self.reserve as usize;
        // The first `reserve` % of `n` entries of the order are passed over.
        let skip = |n: usize| n * reserve / 100;
        let mut chosen: BTreeSet<u32> = BTreeSet::new();
        let take = |first: u32, pages: u32, chosen: &mut BTreeSet<u32>, victims: &mut Vec<(u32, u32)>| {
            take(cx, dev, first..first + pages, chosen, victims)
        };
        let mut got = 0;
        match self.order {
            "lru4k" | "random" => {
                let mut lru = held(cx, dev);
                let keep = skip(lru.len());
                if keep > 0 {
                    // A partition, not a sort: this runs at every eviction, over every page
                    // the device holds.
                    lru.select_nth_unstable(keep - 1);
                    lru.drain(..keep);
                }
                if self.order == "lru4k" {
                    // Least recently accessed first, taken only as far as needed (most
                    // evictions take a few pages of thousands). Keys are unique (the page is
                    // in them), so the order is the sorted order.
                    for (_, p) in Oldest::new(lru) {
                        if got >= need {
                            break;
                        }
                        got += take(p, 1, &mut chosen, victims);
                    }
                } else {
                    // Random picks index the pages in LRU order, each pick swap-removed from it.
                    let mut order = SwapRemoved::new(&mut lru);
                    while got < need && !order.is_empty() {
                        let i = self.rng.below(order.len() as u64) as usize;
                        let (_, p) = order.swap_remove(i);
                        got += take(p, 1, &mut chosen, victims);
                    }
                }
            }
            "sle" | "tbne" => {
                let order = big_page_order(cx, dev);
                for &(_, _, big) in &order[skip(order.len())..] {
                    if got >= need {
                        break;
                    }
                    let n = take(big, BIG.min(cx.pages() - big), &mut chosen, victims);
                    got += n;
                    if n > 0 && self.order == "tbne" {
                        got += prune(cx, dev, big / BLOCK, &mut chosen, victims);
                    }
                }
            }
            _ => {
                let m = cx.state.dev(dev as usize);
                let mut blocks: Vec<(u64, u32)> = (0..cx.state.blocks())
                    .filter(|&b| m.per_block[b as usize] > 0)
                    .map(|b| {
                        let pages = cx.state.block_range(b).filter(|&p| holds(cx, dev, p));
                        let key = match self.order {
                            "lru2m" => pages.map(|p| cx.state.page(p).last_access).max().unwrap_or(0),
                            "lfu2m" => pages.map(|p| cx.state.page(p).accesses as u64).sum(),
                            _ => m.stamp[b as usize],
                        };
                        (key, b)
                    })
                    .collect();
                blocks.sort_unstable();
                for &(_, b) in &blocks[skip(blocks.len())..] {
                    if got >= need {
                        break;
                    }
                    let r = cx.state.block_range(b);
                    got += take(r.start, r.end - r.start, &mut chosen, victims);
                }
            }
        }
    }
}

/// The 64 KiB big pages device `dev` holds any page of, in UVMSmart's order for its TBN and
/// sequential-local eviction (`sort_valid_pages`): grouped by 2 MiB block, the blocks whose
/// most recent access is oldest first, and within a block its big pages least recently
/// accessed first. Entries are (block's last access, big page's last access, first page).
fn big_page_order(cx: &Ctx<'_>, dev: u8) -> Vec<(u64, u64, u32)> {
    let mut order = Vec::new();
    for b in 0..cx.state.blocks() {
        if cx.state.on_dev_in_block(dev as usize, b) == 0 {
            continue;
        }
        let first = order.len();
        let r = cx.state.block_range(b);
        let mut big = r.start;
        while big < r.end {
            let end = (big + BIG).min(r.end);
            let last = (big..end).filter(|&p| holds(cx, dev, p)).map(|p| cx.state.page(p).last_access).max();
            if let Some(last) = last {
                order.push((0, last, big));
            }
            big = end;
        }
        let newest = order[first..].iter().map(|e| e.1).max().unwrap_or(0);
        for e in &mut order[first..] {
            e.0 = newest;
        }
    }
    order.sort_unstable();
    order
}

/// TBNe's neighbourhood pre-eviction over block `b`'s tree after a big page of it went
/// (UVMSmart's `traverse_and_remove_lp_tree`): bottom-up, every subregion of 128 KiB to 2 MiB
/// that still holds pages but fewer than half of its size goes whole. Returns the pages taken.
fn prune(cx: &Ctx<'_>, dev: u8, b: u32, chosen: &mut BTreeSet<u32>, victims: &mut Vec<(u32, u32)>) -> u32 {
    let r = cx.state.block_range(b);
    let mut got = 0;
    let mut size = BIG * 2;
    // The tree's root: the block, or the smaller root of an allocation that ends in it.
    while size <= cx.state.block_extent(b) {
        let mut first = r.start;
        while first < r.end {
            let end = (first + size).min(r.end);
            let left = (first..end).filter(|&q| holds(cx, dev, q) && !chosen.contains(&q)).count() as u32;
            if left > 0 && left * 2 < size {
                got += take(cx, dev, first..end, chosen, victims);
            }
            first = end;
        }
        size *= 2;
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::place::cost::CostModel;
    use crate::place::params::Value;
    use crate::place::state::State;

    fn evict(order: &str, reserve: i64, s: &State, need: u32) -> Vec<u32> {
        let mut p = Params::new();
        p.set("order", Value::Text(order.into()));
        p.set("reserve", Value::Int(reserve));
        let mut e = Evict::new(&p.checked(PARAMS).unwrap());
        let c = CostModel::default();
        let cx = Ctx::new(s, &c, 100);
        let mut v = Vec::new();
        e.on_eviction_pressure(&cx, 0, need, &mut v);
        v.into_iter().flat_map(|(f, n)| f..f + n).collect()
    }

    /// 64 pages of block 0 then 64 of block 1 on the device; block 1 allocated last but
    /// block 0's pages accessed last, page 3 the least recently.
    fn setup() -> State {
        let mut s = State::new(1024, &[256]);
        for p in (0..64).chain(512..576) {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        for p in 512..576 {
            s.touch(p, 10 + p as u64, 1);
        }
        for p in 0..64 {
            s.touch(p, 1000 + p as u64, 1);
        }
        s.touch(3, 1, 1);
        s
    }

    #[test]
    fn orders_pick_what_they_promise() {
        let s = setup();
        assert_eq!(evict("lru4k", 0, &s, 2), [3, 512]);
        // SLe and TBNe look in the block whose newest access is oldest (block 1, though page
        // 3 of block 0 is the least recently accessed page), at its least recent big page.
        assert_eq!(evict("sle", 0, &s, 1), (512..528).collect::<Vec<_>>());
        // TBNe: then 512..528 of 512..544 is half (kept), 512..576 of 512..640 fewer than half
        // of its size: the block's pages go whole.
        assert_eq!(evict("tbne", 0, &s, 1), (512..576).collect::<Vec<_>>());
        // Block 1 is least recently accessed: LRU 2 MiB takes it whole.
        assert_eq!(evict("lru2m", 0, &s, 1), (512..576).collect::<Vec<_>>());
        // Block 0 was allocated first: UVM's root-chunk order takes it.
        assert_eq!(evict("root-chunk", 0, &s, 1), (0..64).collect::<Vec<_>>());
        assert_eq!(evict("random", 0, &s, 5).len(), 5);
        // Reserving 90 % passes over the 115 least recent pages: the 13 most recent are left.
        let left = evict("lru4k", 90, &s, 100);
        assert_eq!(left, (51..64).collect::<Vec<_>>());
    }

    /// `Oldest` gives every entry in sorted order, across its switch from scans to the heap.
    #[test]
    fn oldest_is_the_sorted_order() {
        let mut rng = Rng::new(9);
        for n in 0..40usize {
            let entries: Vec<(u64, u32)> = (0..n).map(|i| (rng.below(8), i as u32)).collect();
            let mut sorted = entries.clone();
            sorted.sort_unstable();
            assert_eq!(Oldest::new(entries).collect::<Vec<_>>(), sorted, "n {n}");
        }
    }

    /// Picks from `SwapRemoved` are those of sorting and `swap_remove`, for every length
    /// and seeded sequences of positions, down to the last entry.
    #[test]
    fn swap_removed_picks_as_sorting_does() {
        let mut rng = Rng::new(7);
        for n in 0..40usize {
            for _ in 0..8 {
                let entries: Vec<(u64, u32)> =
                    (0..n).map(|i| (rng.below(16), i as u32 * 3 + rng.below(3) as u32)).collect();
                let mut sorted = entries.clone();
                sorted.sort_unstable();
                let mut unsorted = entries;
                let mut order = SwapRemoved::new(&mut unsorted);
                while !sorted.is_empty() {
                    assert_eq!(order.len(), sorted.len());
                    let i = rng.below(sorted.len() as u64) as usize;
                    assert_eq!(order.swap_remove(i), sorted.swap_remove(i), "n {n}");
                }
                assert!(order.is_empty());
            }
        }
    }

    /// UVMSmart's `reserve_accessed_page_percent` skips the start of its sorted list: the
    /// least recently used entries are the reserved ones, for every order.
    #[test]
    fn reserve_passes_over_the_least_recently_used() {
        let s = setup();
        // Of 128 pages, the 64 least recent skipped (page 3, then 512..575 but the last): 575.
        assert_eq!(evict("lru4k", 50, &s, 1), [575]);
        // 8 big pages, the 4 of block 1 skipped: block 0's least recent big page (page 3's).
        assert_eq!(evict("sle", 50, &s, 1), (0..16).collect::<Vec<_>>());
        // 2 blocks, 1 skipped: LRU 2 MiB takes block 0.
        assert_eq!(evict("lru2m", 50, &s, 1), (0..64).collect::<Vec<_>>());
    }

    /// TBNe prunes the whole block's tree, as `traverse_and_remove_lp_tree` does, not only the
    /// evicted big page's ancestors: a sparse subregion elsewhere in the block goes too.
    #[test]
    fn tbne_prunes_the_whole_tree_of_the_block() {
        let mut s = State::new(512, &[512]);
        for p in (0..384).chain(448..456) {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        // 0..16 goes and 16..32 is half of 0..32 (kept), every ancestor of it at least half
        // full; 448..456 is a quarter of 448..480, away from the evicted page: it goes too.
        assert_eq!(evict("tbne", 0, &s, 1), (0..16).chain(448..456).collect::<Vec<_>>());
    }

    #[test]
    fn tbne_takes_sparse_neighbourhoods() {
        let mut s = State::new(512, &[512]);
        // 0..16 and 32..40 held: evicting 0..16 leaves 8 of 32 and 8 of 64: all goes.
        for p in (0..16).chain(32..40) {
            s.set_loc(p, Loc::Dev(0), 0, false);
        }
        assert_eq!(evict("tbne", 0, &s, 1), (0..16).chain(32..40).collect::<Vec<_>>());
    }
}
