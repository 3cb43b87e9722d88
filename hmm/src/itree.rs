//! An augmented interval tree: the per-address-space index of interval notifiers (Linux's
//! `interval_tree` over `mmu_interval_notifier`s).
//!
//! A treap keyed by `(start, id)` in which every node also keeps the largest `last` of its
//! subtree, so a stabbing or overlap query visits only the subtrees that can hold an overlap:
//! O(log n + k) for k results, not O(n). Nodes live in an arena (`Vec`) with a free list, so
//! the tree allocates only when it grows.
//!
//! Intervals are closed: `[start, last]`, as in Linux (`last = start + len - 1`), which lets an
//! interval reach the very top of the address space.
//!
//! Invariants: in-order traversal is sorted by `(start, id)`; every parent's priority is at
//! least its children's; `max_last` of a node is the maximum `last` in its subtree.

use alloc::vec::Vec;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node<V> {
    start: u64,
    last: u64,
    id: u64,
    max_last: u64,
    prio: u32,
    left: u32,
    right: u32,
    value: Option<V>,
}

/// An interval tree of values `V`, each under a caller-chosen unique `id`.
#[derive(Debug, Clone)]
pub struct IntervalTree<V> {
    nodes: Vec<Node<V>>,
    free: Vec<u32>,
    root: u32,
    len: usize,
    rng: u64,
}

impl<V> Default for IntervalTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> IntervalTree<V> {
    /// An empty tree.
    pub const fn new() -> Self {
        Self { nodes: Vec::new(), free: Vec::new(), root: NIL, len: 0, rng: 0x9e37_79b9_7f4a_7c15 }
    }

    /// The number of intervals.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn next_prio(&mut self) -> u32 {
        // xorshift64*: priorities only need to be well spread, not secret.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    fn n(&self, i: u32) -> &Node<V> {
        &self.nodes[i as usize]
    }

    fn fix(&mut self, i: u32) {
        let (l, r) = (self.n(i).left, self.n(i).right);
        let mut m = self.n(i).last;
        if l != NIL {
            m = m.max(self.n(l).max_last);
        }
        if r != NIL {
            m = m.max(self.n(r).max_last);
        }
        self.nodes[i as usize].max_last = m;
    }

    fn key(&self, i: u32) -> (u64, u64) {
        (self.n(i).start, self.n(i).id)
    }

    /// Splits `t` into keys `< key` (`<= key` when `inclusive`) and the rest.
    fn split(&mut self, t: u32, key: (u64, u64), inclusive: bool) -> (u32, u32) {
        if t == NIL {
            return (NIL, NIL);
        }
        let goes_left = if inclusive { self.key(t) <= key } else { self.key(t) < key };
        if goes_left {
            let (a, b) = self.split(self.n(t).right, key, inclusive);
            self.nodes[t as usize].right = a;
            self.fix(t);
            (t, b)
        } else {
            let (a, b) = self.split(self.n(t).left, key, inclusive);
            self.nodes[t as usize].left = b;
            self.fix(t);
            (a, t)
        }
    }

    /// Joins `a` and `b`, every key of `a` below every key of `b`.
    fn merge(&mut self, a: u32, b: u32) -> u32 {
        if a == NIL {
            return b;
        }
        if b == NIL {
            return a;
        }
        if self.n(a).prio >= self.n(b).prio {
            let r = self.merge(self.n(a).right, b);
            self.nodes[a as usize].right = r;
            self.fix(a);
            a
        } else {
            let l = self.merge(a, self.n(b).left);
            self.nodes[b as usize].left = l;
            self.fix(b);
            b
        }
    }

    /// Inserts `[start, last]` under `id` (which must not be in the tree already).
    pub fn insert(&mut self, start: u64, last: u64, id: u64, value: V) {
        let prio = self.next_prio();
        let node = Node { start, last, id, max_last: last, prio, left: NIL, right: NIL, value: Some(value) };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let (a, b) = self.split(self.root, (start, id), false);
        let ab = self.merge(a, i);
        self.root = self.merge(ab, b);
        self.len += 1;
    }

    /// Removes the interval inserted as `(start, id)`, returning its value.
    pub fn remove(&mut self, start: u64, id: u64) -> Option<V> {
        let (a, b) = self.split(self.root, (start, id), false);
        let (mid, c) = self.split(b, (start, id), true);
        let value = if mid == NIL {
            None
        } else {
            // Keys are unique, so `mid` is the single node with this key.
            debug_assert!(self.n(mid).left == NIL && self.n(mid).right == NIL);
            self.free.push(mid);
            self.len -= 1;
            self.nodes[mid as usize].value.take()
        };
        self.root = self.merge(a, c);
        value
    }

    /// Calls `f` for every interval that overlaps `[start, last]`, in start order.
    pub fn for_each_overlap(&self, start: u64, last: u64, f: &mut dyn FnMut(u64, u64, &V)) {
        self.visit(self.root, start, last, f);
    }

    fn visit(&self, t: u32, start: u64, last: u64, f: &mut dyn FnMut(u64, u64, &V)) {
        if t == NIL {
            return;
        }
        let n = self.n(t);
        if n.max_last < start {
            return;
        }
        self.visit(n.left, start, last, f);
        if n.start > last {
            return;
        }
        if n.last >= start
            && let Some(v) = &n.value
        {
            f(n.start, n.last, v);
        }
        self.visit(n.right, start, last, f);
    }

    /// Whether any interval overlaps `[start, last]`.
    pub fn any_overlap(&self, start: u64, last: u64) -> bool {
        let mut t = self.root;
        while t != NIL {
            let n = self.n(t);
            if n.max_last < start {
                return false;
            }
            if n.start <= last && n.last >= start {
                return true;
            }
            // An overlap in the left subtree exists iff its max_last reaches `start` (every
            // start there is below this node's, hence <= last when this one's is).
            if n.left != NIL && self.n(n.left).max_last >= start {
                t = n.left;
            } else if n.start > last {
                return false;
            } else {
                t = n.right;
            }
        }
        false
    }

    /// The number of nodes a query for `[start, last]` touches (for the cost tests).
    pub fn visited(&self, start: u64, last: u64) -> usize {
        let mut count = 0;
        self.count(self.root, start, last, &mut count);
        count
    }

    fn count(&self, t: u32, start: u64, last: u64, c: &mut usize) {
        if t == NIL {
            return;
        }
        *c += 1;
        let n = self.n(t);
        if n.max_last < start {
            return;
        }
        self.count(n.left, start, last, c);
        if n.start > last {
            return;
        }
        self.count(n.right, start, last, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    use crate::testing::Rng;

    /// Property: after any sequence of inserts and removes, every query returns exactly the
    /// intervals a brute-force scan returns, in start order.
    #[test]
    fn queries_match_a_brute_force_model() {
        for seed in 1..=8u64 {
            let mut rng = Rng(seed * 0x1234_5677);
            let mut tree = IntervalTree::new();
            let mut model: Vec<(u64, u64, u64)> = Vec::new();
            let mut next_id = 0u64;
            for _ in 0..3000 {
                match rng.next() % 5 {
                    0 | 1 => {
                        let s = rng.next() % 10_000;
                        let l = s + rng.next() % 500;
                        tree.insert(s, l, next_id, next_id);
                        model.push((s, l, next_id));
                        next_id += 1;
                    }
                    2 if !model.is_empty() => {
                        let k = (rng.next() % model.len() as u64) as usize;
                        let (s, _, id) = model.swap_remove(k);
                        assert_eq!(tree.remove(s, id), Some(id));
                        assert_eq!(tree.remove(s, id), None);
                    }
                    _ => {
                        let s = rng.next() % 10_500;
                        let l = s + rng.next() % 300;
                        let mut got = Vec::new();
                        tree.for_each_overlap(s, l, &mut |a, b, v| got.push((a, b, *v)));
                        let mut want: Vec<_> = model.iter().copied().filter(|&(a, b, _)| a <= l && b >= s).collect();
                        want.sort_by_key(|&(a, _, id)| (a, id));
                        assert_eq!(got, want);
                        assert_eq!(tree.any_overlap(s, l), !want.is_empty());
                    }
                }
                assert_eq!(tree.len(), model.len());
            }
        }
    }

    #[test]
    fn extremes_and_duplicates() {
        let mut t = IntervalTree::new();
        t.insert(0, u64::MAX, 7, "all");
        t.insert(5, 5, u64::MAX, "point");
        t.insert(5, 5, 3, "same start");
        let mut got = vec![];
        t.for_each_overlap(u64::MAX, u64::MAX, &mut |_, _, v| got.push(*v));
        assert_eq!(got, vec!["all"]);
        got.clear();
        t.for_each_overlap(5, 5, &mut |_, _, v| got.push(*v));
        assert_eq!(got, vec!["all", "same start", "point"]);
        assert_eq!(t.remove(5, u64::MAX), Some("point"));
        assert_eq!(t.remove(5, 3), Some("same start"));
        assert_eq!(t.remove(0, 7), Some("all"));
        assert!(t.is_empty());
    }

    /// The cost of a query grows with the overlaps, not with the intervals registered.
    #[test]
    fn query_cost_is_logarithmic_plus_overlaps() {
        let mut t = IntervalTree::new();
        for i in 0..100_000u64 {
            t.insert(i * 4096 * 16, i * 4096 * 16 + 4095, i, i);
        }
        let visited = t.visited(5000 * 4096 * 16, 5000 * 4096 * 16 + 100);
        assert!(visited < 200, "a one-interval query touched {visited} of 100000 nodes");
        let mut hits = 0;
        t.for_each_overlap(1000 * 65536, 1010 * 65536 - 1, &mut |_, _, _| hits += 1);
        assert_eq!(hits, 10);
    }
}
