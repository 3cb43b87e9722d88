//! Graph workloads over a generated power-law graph: BFS, SSSP (Bellman-Ford with a frontier)
//! and PageRank.
//!
//! The graph is R-MAT (Graph500's a = 0.57, b = c = 0.19), stored as CSR: a row-offset array,
//! an edge array (and weights for SSSP), a per-vertex value array (cost, distance or rank), byte
//! flags (Rodinia's mask, updating and visited arrays) and a per-vertex payload (`payload` bytes
//! of vertex data, read when a vertex is processed). Its size is chosen so all arrays fill the
//! footprint. As in Rodinia's kernels, each level sweeps the vertices in index order and expands
//! those in the frontier, so the big arrays are streamed with gaps while the small per-vertex
//! arrays take the random accesses; a second sweep turns the updated flags into the next
//! frontier.

use super::{Emit, Layout, Lazy, Setup, WorkloadDef, or};
use crate::place::Rng;
use crate::place::params::{ParamDef, Params};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

const PARAMS: &[ParamDef] = &[
    ParamDef::int("degree", 6, 1, 64, "average out-degree"),
    ParamDef::int("payload", 256, 0, 4096, "bytes of vertex data read per visit"),
];

/// A CSR graph and where its arrays live.
struct Graph {
    n: u32,
    offsets: Vec<u32>,
    edges: Vec<u32>,
    weights: Vec<u8>,
    a_off: u64,
    a_edge: u64,
    a_weight: u64,
    a_value: u64,
    /// Three byte arrays: mask, updating, visited.
    a_flag: u64,
    a_payload: u64,
    payload: u64,
    pages: u32,
}

impl Graph {
    fn new(p: &Params, s: &Setup, weighted: bool) -> Graph {
        let degree = p.int("degree") as u64;
        let payload = p.int("payload") as u64;
        let per_vertex = 8 + 8 + 3 + payload + degree * if weighted { 8 } else { 4 };
        // Each of the (up to) seven arrays rounds up to a page.
        let bytes = (s.pages as u64).saturating_sub(7) * crate::place::PAGE;
        let n = (bytes / per_vertex).max(16) as u32;
        let m = n as u64 * degree;
        let mut rng = Rng::new(s.seed);
        let scale = 32 - (n - 1).leading_zeros();
        let mut src = Vec::with_capacity(m as usize);
        let mut dst = Vec::with_capacity(m as usize);
        for _ in 0..m {
            let (mut u, mut v) = (0u32, 0u32);
            for bit in 0..scale {
                let r = rng.unit();
                let (du, dv) = if r < 0.57 {
                    (0, 0)
                } else if r < 0.76 {
                    (0, 1)
                } else if r < 0.95 {
                    (1, 0)
                } else {
                    (1, 1)
                };
                u |= du << bit;
                v |= dv << bit;
            }
            src.push(u % n);
            dst.push(v % n);
        }
        // Counting sort by source into CSR.
        let mut offsets = vec![0u32; n as usize + 1];
        for &u in &src {
            offsets[u as usize + 1] += 1;
        }
        for i in 0..n as usize {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut edges = vec![0u32; m as usize];
        for (u, v) in src.iter().zip(&dst) {
            edges[fill[*u as usize] as usize] = *v;
            fill[*u as usize] += 1;
        }
        let weights = if weighted { (0..m).map(|_| 1 + rng.below(16) as u8).collect() } else { Vec::new() };
        let mut l = Layout::default();
        let a_off = l.array((n as u64 + 1) * 8);
        let a_edge = l.array(m * 4);
        let a_weight = if weighted { l.array(m * 4) } else { 0 };
        let a_value = l.array(n as u64 * 8);
        let a_flag = l.array(n as u64 * 3);
        let a_payload = l.array(n as u64 * payload);
        Graph {
            n,
            offsets,
            edges,
            weights,
            a_off,
            a_edge,
            a_weight,
            a_value,
            a_flag,
            a_payload,
            payload,
            pages: l.pages(),
        }
    }

    /// Emits reading vertex `v`'s row and payload; returns its edge range.
    fn visit(&self, e: &mut Emit, v: u32) -> core::ops::Range<usize> {
        e.range(self.a_off + v as u64 * 8, 16, false);
        if self.payload > 0 {
            e.range(self.a_payload + v as u64 * self.payload, self.payload, false);
        }
        let r = self.offsets[v as usize] as usize..self.offsets[v as usize + 1] as usize;
        if !r.is_empty() {
            e.range(self.a_edge + r.start as u64 * 4, r.len() as u64 * 4, false);
            if !self.weights.is_empty() {
                e.range(self.a_weight + r.start as u64 * 4, r.len() as u64 * 4, false);
            }
        }
        r
    }

    /// The vertex with the most out-edges (a source that reaches most of the graph).
    fn hub(&self) -> u32 {
        (0..self.n).max_by_key(|&v| self.offsets[v as usize + 1] - self.offsets[v as usize]).unwrap_or(0)
    }
}

/// Level-synchronous breadth-first search from the highest-degree vertex (Rodinia's two
/// kernels per level).
pub const BFS: WorkloadDef = WorkloadDef {
    name: "bfs",
    help: "breadth-first search over an R-MAT power-law graph (irregular, moving frontier)",
    params: PARAMS,
    build: |p: &Params, s: &Setup| {
        let g = Graph::new(p, s, false);
        let on = s.device;
        let n = g.n as u64;
        let (mask, updating, visited) = (g.a_flag, g.a_flag + n, g.a_flag + 2 * n);
        let mut level = vec![u32::MAX; g.n as usize];
        let src = g.hub();
        level[src as usize] = 0;
        let mut frontier = vec![false; g.n as usize];
        frontier[src as usize] = true;
        let mut any = true;
        Ok(Box::new(Lazy::new("bfs", g.pages, move |step| {
            if !any {
                return None;
            }
            let mut e = Emit::default();
            let mut next = vec![false; g.n as usize];
            // Kernel 1: expand the frontier.
            for v in 0..g.n {
                if v % 128 == 0 {
                    e.line(mask + v as u64, false);
                }
                if !frontier[v as usize] {
                    continue;
                }
                e.line(mask + v as u64, true);
                for i in g.visit(&mut e, v) {
                    let u = g.edges[i];
                    e.line(visited + u as u64, false);
                    if level[u as usize] == u32::MAX {
                        level[u as usize] = step + 1;
                        e.line(g.a_value + u as u64 * 8, true);
                        e.line(updating + u as u64, true);
                        next[u as usize] = true;
                    }
                }
            }
            // Kernel 2: updated vertices become the frontier.
            for v in (0..n).step_by(128) {
                e.line(updating + v, true);
                if next[v as usize..(v + 128).min(n) as usize].iter().any(|&x| x) {
                    e.line(mask + v, true);
                    e.line(visited + v, true);
                }
            }
            any = next.iter().any(|&x| x);
            frontier = next;
            Some(vec![e.phase("bfs-level", on)])
        })))
    },
};

/// Single-source shortest paths: Bellman-Ford relaxing a frontier of changed vertices.
pub const SSSP: WorkloadDef = WorkloadDef {
    name: "sssp",
    help: "single-source shortest paths (frontier Bellman-Ford) over an R-MAT graph",
    params: PARAMS,
    build: |p: &Params, s: &Setup| {
        let g = Graph::new(p, s, true);
        let on = s.device;
        let cap = or(s.iterations, 64);
        let mut dist = vec![u32::MAX; g.n as usize];
        let src = g.hub();
        dist[src as usize] = 0;
        let mut frontier = vec![src];
        let mut queued = vec![false; g.n as usize];
        Ok(Box::new(Lazy::new("sssp", g.pages, move |step| {
            if frontier.is_empty() || step >= cap {
                return None;
            }
            let mut e = Emit::default();
            let mut next = Vec::new();
            frontier.sort_unstable();
            for &v in &frontier {
                queued[v as usize] = false;
                e.line(g.a_value + v as u64 * 8, false);
                for i in g.visit(&mut e, v) {
                    let u = g.edges[i];
                    let d = dist[v as usize].saturating_add(g.weights[i] as u32);
                    e.line(g.a_value + u as u64 * 8, false);
                    if d < dist[u as usize] {
                        dist[u as usize] = d;
                        e.line(g.a_value + u as u64 * 8, true);
                        if !queued[u as usize] {
                            queued[u as usize] = true;
                            e.line(g.a_flag + u as u64, true);
                            next.push(u);
                        }
                    }
                }
            }
            frontier = next;
            Some(vec![e.phase("sssp-relax", on)])
        })))
    },
};

/// PageRank by pulls over the edges (`iterations`, default 3).
pub const PAGERANK: WorkloadDef = WorkloadDef {
    name: "pagerank",
    help: "PageRank iterations over an R-MAT graph (every edge, random reads of ranks)",
    params: PARAMS,
    build: |p: &Params, s: &Setup| {
        let g = Graph::new(p, s, false);
        let (on, iters) = (s.device, or(s.iterations, 3));
        Ok(Box::new(Lazy::new("pagerank", g.pages, move |step| {
            if step >= iters {
                return None;
            }
            // Ranks live in the value array; new ranks in the flag bytes' place would be too
            // small, so reads and writes both use the value array (in place, Gauss-Seidel).
            let _ = step;
            let mut e = Emit::default();
            for v in 0..g.n {
                for i in g.visit(&mut e, v) {
                    e.line(g.a_value + g.edges[i] as u64 * 8, false);
                }
                e.line(g.a_value + v as u64 * 8, true);
            }
            Some(vec![e.phase("pagerank", on)])
        })))
    },
};
