//! Graph workloads: BFS (Rodinia), SSSP (the UVMSmart artifact's `sssp.cu`) and PageRank, over a
//! generated graph stored as CSR.
//!
//! **Graphs** (`graph`): `uniform` is the published benchmarks' graph, `rmat` a power-law one
//! (Graph500's R-MAT, a = 0.57, b = c = 0.19), the shape these workloads had before.
//! - bfs, `uniform`: Rodinia's `graphgen` (the generator of `graph256k`/`graph1M`, the inputs of
//!   the published bfs): every vertex draws `degree/2 - 1 ..= degree/2 + 1` edges to uniformly
//!   random vertices and each is added in both directions, so the average degree is `degree`
//!   (6, as in `graph256k`: 1,568,420 edges on 261,444 vertices).
//! - sssp, `uniform`: `generateRandomGraph` of `sssp.cu`: every vertex has exactly `degree` (2)
//!   distinct out-edges to uniformly random other vertices, with weights `(rand() % 1000)/1000`
//!   (kept here as integers 0..999).
//! - `rmat`: `degree` out-edges per vertex on average, sources and destinations drawn by R-MAT.
//!
//! A graph has as many vertices as fill the footprint, or `vertices` (the artifact's inputs:
//! graph256k's 261,444 for bfs, `sssp.cu`'s 2^20), whatever the footprint.
//!
//! **Arrays**, laid out in the benchmarks' allocation order, each page-aligned (or as the common
//! `allocation` lays them out), sized so they fill the footprint; `payload` adds that many bytes of vertex data read per visit (the former shape
//! had 256, about 80 % of the footprint; the published benchmarks have none, the default 0).
//! - bfs (Rodinia `bfs.cu`): nodes (8 bytes: first edge, edge count), mask, updating mask and
//!   visited (a byte each, three arrays), edges (4 bytes), cost (4 bytes).
//! - sssp (`sssp.cu`): vertex offsets (4 bytes), edges (4), weights (4), distances (4) and
//!   updating distances (4). Its `finalizedVertices` flags are `cudaMalloc`'d device memory, not
//!   managed: they are no part of the footprint and their accesses are not pages of it.
//! - pagerank: row offsets (8), edges (4), ranks (8), and the payload (default 256, as before).
//!
//! **Kernels**, one step per level or iteration, the thread blocks in index order (so the
//! per-vertex arrays are swept and the edge arrays streamed with gaps, while the arrays indexed
//! by destination take the random accesses):
//! - bfs: Rodinia's two kernels per level from vertex 0 (`rmat`: from the highest-degree vertex):
//!   kernel 1 reads every vertex's mask and expands those in the frontier (node, edges, the
//!   destination's visited flag; the destination's cost and updating flag written when it was
//!   not visited at the start of the level); kernel 2 reads every updating flag and sets mask and
//!   visited for the updated vertices. Levels run until no vertex is updated.
//! - sssp: `initializeArrays` writes both distance arrays, then each iteration runs Kernel1 (the
//!   finalized vertices, read from device memory, relax their out-edges by an atomic min into the
//!   updating distances) and Kernel2, a sweep of both distance arrays by every vertex (it reads
//!   both, writes the updating distance, and the distance where it improved, which finalizes the
//!   vertex for the next iteration). The host checks for a finalized vertex every 5 iterations
//!   and stops at 15 (`MAX_ITERATION`; `iterations` overrides). `sweep = false` gives the former,
//!   frontier-only shape: kernel 2 touches only the vertices whose distance improved.
//! - pagerank: every vertex pulls the ranks of its out-neighbours (`iterations`, default 3).

use super::{Emit, Layout, Lazy, Setup, WorkloadDef, or};
use crate::place::params::{ParamDef, Params};
use crate::place::{PAGE, Rng};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Vertices, or sized by the footprint.
const VERTICES: ParamDef =
    ParamDef::int("vertices", 0, 0, 1 << 26, "vertices (0: as many as fill the footprint; graph256k: 261444)");

const BFS_PARAMS: &[ParamDef] = &[
    ParamDef::text("graph", "uniform", &["uniform", "rmat"], "uniform: Rodinia's graphgen; rmat: power-law"),
    ParamDef::int("degree", 6, 1, 64, "average degree"),
    VERTICES,
    ParamDef::int("payload", 0, 0, 4096, "bytes of vertex data read per visit"),
];

const SSSP_PARAMS: &[ParamDef] = &[
    ParamDef::text("graph", "uniform", &["uniform", "rmat"], "uniform: sssp.cu's random graph; rmat: power-law"),
    ParamDef::int("degree", 2, 1, 64, "out-edges per vertex (uniform: exactly, distinct)"),
    VERTICES,
    ParamDef::int("payload", 0, 0, 4096, "bytes of vertex data read per visit"),
    ParamDef::bool(
        "sweep",
        true,
        "kernel 2 sweeps both distance arrays every iteration (false: only improved vertices)",
    ),
];

const PAGERANK_PARAMS: &[ParamDef] = &[
    ParamDef::text("graph", "rmat", &["uniform", "rmat"], "uniform: Rodinia's graphgen; rmat: power-law"),
    ParamDef::int("degree", 6, 1, 64, "average degree"),
    ParamDef::int("payload", 256, 0, 4096, "bytes of vertex data read per visit"),
    VERTICES,
];

/// Which workload a graph is for (its generator and arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum For {
    /// Rodinia bfs.
    Bfs,
    /// sssp.cu.
    Sssp,
    /// PageRank.
    Pagerank,
}

/// A CSR graph and where its arrays live.
pub(super) struct Graph {
    /// Vertices.
    pub(super) n: u32,
    /// Row offsets, `n + 1`.
    pub(super) offsets: Vec<u32>,
    /// Destinations.
    pub(super) edges: Vec<u32>,
    /// Weights (sssp only).
    pub(super) weights: Vec<u16>,
    /// Bases of the arrays, by name.
    pub(super) arrays: Vec<(&'static str, u64)>,
    /// The bases of `payload`, `edges` and `weights` (0 where the workload has none), which
    /// each visit reads: looked up once, not by name per visit.
    visit_at: (u64, u64, u64),
    /// Bytes of payload per vertex.
    pub(super) payload: u64,
    /// Its arrays' layout.
    pub(super) layout: Layout,
    /// `uniform` (else R-MAT).
    pub(super) uniform: bool,
}

/// Bytes per vertex of each array, in allocation order (`per_edge` arrays are per edge).
fn arrays(kind: For, payload: u64) -> Vec<(&'static str, u64, bool)> {
    let mut a = match kind {
        For::Bfs => vec![
            ("nodes", 8, false),
            ("mask", 1, false),
            ("updating", 1, false),
            ("visited", 1, false),
            ("edges", 4, true),
            ("cost", 4, false),
        ],
        For::Sssp => vec![
            ("vertices", 4, false),
            ("edges", 4, true),
            ("weights", 4, true),
            ("dist", 4, false),
            ("updating", 4, false),
        ],
        For::Pagerank => vec![("offsets", 8, false), ("edges", 4, true), ("ranks", 8, false)],
    };
    if payload > 0 {
        a.push(("payload", payload, false));
    }
    a
}

/// R-MAT edges (`m` of them) over `n` vertices.
fn rmat(n: u32, m: u64, rng: &mut Rng) -> Vec<(u32, u32)> {
    let scale = 32 - (n - 1).leading_zeros();
    (0..m)
        .map(|_| {
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
            (u % n, v % n)
        })
        .collect()
}

/// Rodinia's graphgen: each vertex draws `lo..=hi` uniformly random neighbours, each edge added
/// both ways, in generation order.
fn rodinia(n: u32, degree: u64, rng: &mut Rng) -> Vec<(u32, u32)> {
    let half = (degree / 2).max(1);
    let (lo, hi) = (half.saturating_sub(1).max(1), half + 1);
    let mut pairs = Vec::with_capacity((n as u64 * degree) as usize);
    for i in 0..n {
        for _ in 0..lo + rng.below(hi - lo + 1) {
            let d = rng.below(n as u64) as u32;
            pairs.push((i, d));
            pairs.push((d, i));
        }
    }
    pairs
}

/// sssp.cu's generator: `degree` distinct destinations per vertex, none itself.
fn distinct(n: u32, degree: u64, rng: &mut Rng) -> Vec<(u32, u32)> {
    let k = degree.min(n as u64 - 1);
    let mut pairs = Vec::with_capacity((n as u64 * k) as usize);
    let mut mine = Vec::with_capacity(k as usize);
    for i in 0..n {
        mine.clear();
        while (mine.len() as u64) < k {
            let d = rng.below(n as u64) as u32;
            if d != i && !mine.contains(&d) {
                mine.push(d);
            }
        }
        pairs.extend(mine.iter().map(|&d| (i, d)));
    }
    pairs
}

impl Graph {
    /// The graph for `kind` with parameters `p`, filling `s.pages`.
    pub(super) fn new(p: &Params, s: &Setup, kind: For) -> Graph {
        let degree = p.int("degree") as u64;
        let payload = p.int("payload") as u64;
        let uniform = p.text("graph") == "uniform";
        let arrs = arrays(kind, payload);
        let per_vertex: u64 = arrs.iter().map(|&(_, b, e)| if e { b * degree } else { b }).sum();
        // Each array rounds up to a page.
        let bytes = (s.pages as u64).saturating_sub(arrs.len() as u64) * PAGE;
        let vertices = p.int("vertices") as u32;
        if vertices > 0 {
            // Its own size (sssp.cu's 2^20, graph256k's 261,444), whatever the footprint.
            return Self::generate(vertices.max(16), degree, payload, uniform, kind, &arrs, s);
        }
        let mut n = (bytes / per_vertex).max(16) as u32;
        loop {
            let g = Self::generate(n, degree, payload, uniform, kind, &arrs, s);
            // A random edge count can overshoot the expected one: shrink until it fits.
            if g.layout.data_pages() <= s.pages || n <= 16 {
                return g;
            }
            n = (n - n / 100 - 1).max(16);
        }
    }

    fn generate(
        n: u32,
        degree: u64,
        payload: u64,
        uniform: bool,
        kind: For,
        arrs: &[(&'static str, u64, bool)],
        s: &Setup,
    ) -> Graph {
        let mut rng = Rng::new(s.seed);
        let pairs = match (uniform, kind) {
            (false, _) => rmat(n, n as u64 * degree, &mut rng),
            (true, For::Sssp) => distinct(n, degree, &mut rng),
            (true, _) => rodinia(n, degree, &mut rng),
        };
        // Counting sort by source into CSR, stable (each list in generation order).
        let mut offsets = vec![0u32; n as usize + 1];
        for &(u, _) in &pairs {
            offsets[u as usize + 1] += 1;
        }
        for i in 0..n as usize {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut edges = vec![0u32; pairs.len()];
        for &(u, v) in &pairs {
            edges[fill[u as usize] as usize] = v;
            fill[u as usize] += 1;
        }
        let m = edges.len() as u64;
        let weights = if kind == For::Sssp { (0..m).map(|_| rng.below(1000) as u16).collect() } else { Vec::new() };
        let mut l = Layout::of(s);
        let arrays = arrs
            .iter()
            .map(|&(name, b, per_edge)| (name, l.array(if per_edge { b * m } else { b * n as u64 })))
            .collect();
        let mut g = Graph { n, offsets, edges, weights, arrays, payload, layout: l, uniform, visit_at: (0, 0, 0) };
        g.visit_at = (g.at("payload"), g.at("edges"), g.at("weights"));
        g
    }

    /// The base of array `name`.
    pub(super) fn at(&self, name: &str) -> u64 {
        self.arrays.iter().find(|a| a.0 == name).map(|a| a.1).unwrap_or(0)
    }

    /// The edges of `v`.
    pub(super) fn out(&self, v: u32) -> core::ops::Range<usize> {
        self.offsets[v as usize] as usize..self.offsets[v as usize + 1] as usize
    }

    /// Emits reading `v`'s payload and its edge list (and weights); returns its edge range.
    fn visit(&self, e: &mut Emit, v: u32) -> core::ops::Range<usize> {
        let (payload, edges, weights) = self.visit_at;
        if self.payload > 0 {
            e.range(payload + v as u64 * self.payload, self.payload, false);
        }
        let r = self.out(v);
        if !r.is_empty() {
            e.range(edges + r.start as u64 * 4, r.len() as u64 * 4, false);
            if !self.weights.is_empty() {
                e.range(weights + r.start as u64 * 4, r.len() as u64 * 4, false);
            }
        }
        r
    }

    /// The search's source: vertex 0 as in the benchmarks; on R-MAT, the vertex with the most
    /// out-edges (a source that reaches most of the graph), as before.
    pub(super) fn source(&self) -> u32 {
        if self.uniform {
            return 0;
        }
        (0..self.n).max_by_key(|&v| self.offsets[v as usize + 1] - self.offsets[v as usize]).unwrap_or(0)
    }
}

/// Level-synchronous breadth-first search, Rodinia's two kernels per level.
pub const BFS: WorkloadDef = WorkloadDef {
    name: "bfs",
    help: "Rodinia bfs over a uniform random graph (graphgen; or R-MAT), two kernels per level",
    params: BFS_PARAMS,
    build: |p: &Params, s: &Setup| {
        let g = Graph::new(p, s, For::Bfs);
        let layout = g.layout.clone();
        let on = s.device;
        let (nodes, mask, updating, visited, cost) =
            (g.at("nodes"), g.at("mask"), g.at("updating"), g.at("visited"), g.at("cost"));
        let src = g.source();
        let mut seen = vec![false; g.n as usize];
        seen[src as usize] = true;
        // The frontier in index order (the threads that expand, in block order).
        let mut frontier: Vec<u32> = vec![src];
        // The vertices updated in this level (distinct), and per line of the byte arrays
        // whether one of its vertices was: kernel 2's reads and writes need no sweep of
        // the whole vertex set, only its lines.
        let mut next = vec![false; g.n as usize];
        let mut updated: Vec<u32> = Vec::new();
        let mut line_set = vec![false; (g.n as usize).div_ceil(LINE_BYTES as usize)];
        let mut last_len = 0;
        Ok(Box::new(Lazy::laid_out("bfs", &layout, move |_step| {
            if frontier.is_empty() {
                return None;
            }
            let mut e = Emit { out: Vec::with_capacity(last_len) };
            // Kernel 1: every thread reads its mask (a line per LINE_BYTES threads); the
            // frontier expands.
            let mut f = frontier.iter().copied().peekable();
            for line in 0..line_set.len() as u32 {
                let first = line * LINE_BYTES;
                e.line(mask + first as u64, false);
                let end = first + LINE_BYTES;
                while let Some(v) = f.next_if(|&v| v < end) {
                    e.line(mask + v as u64, true);
                    e.range(nodes + v as u64 * 8, 8, false);
                    for i in g.visit(&mut e, v) {
                        let u = g.edges[i];
                        e.line(visited + u as u64, false);
                        if !seen[u as usize] {
                            e.line(cost + v as u64 * 4, false);
                            e.line(cost + u as u64 * 4, true);
                            e.line(updating + u as u64, true);
                            if !core::mem::replace(&mut next[u as usize], true) {
                                updated.push(u);
                                line_set[(u / LINE_BYTES) as usize] = true;
                            }
                        }
                    }
                }
            }
            // Kernel 2: every thread reads its updating flag; the updated join the frontier.
            for (line, set) in line_set.iter_mut().enumerate() {
                let v = line as u64 * LINE_BYTES as u64;
                e.line(updating + v, *set);
                if core::mem::take(set) {
                    e.line(mask + v, true);
                    e.line(visited + v, true);
                }
            }
            updated.sort_unstable();
            for &u in &updated {
                seen[u as usize] = true;
                next[u as usize] = false;
            }
            frontier.clear();
            frontier.append(&mut updated);
            last_len = e.out.len();
            Some(vec![e.phase("bfs-level", on)])
        })))
    },
};

/// Bytes in a line, as a vertex count of the byte arrays.
const LINE_BYTES: u32 = super::LINE as u32;

/// sssp.cu's host checks for a finalized vertex after this many iterations.
const ASYNC_ITERATIONS: u32 = 5;

/// Single-source shortest paths, the artifact's `sssp.cu` (Harish and Narayanan's two kernels).
pub const SSSP: WorkloadDef = WorkloadDef {
    name: "sssp",
    help: "sssp.cu: two-kernel Bellman-Ford over a uniform random graph, 2 out-edges per vertex, at most 15 iterations",
    params: SSSP_PARAMS,
    build: |p: &Params, s: &Setup| {
        let g = Graph::new(p, s, For::Sssp);
        let layout = g.layout.clone();
        let (on, sweep) = (s.device, p.bool("sweep"));
        let cap = or(s.iterations, 15);
        let n = g.n as usize;
        let (vertices, dist_at, upd_at) = (g.at("vertices"), g.at("dist"), g.at("updating"));
        let src = g.source();
        let mut dist = vec![u32::MAX; n];
        let mut upd = vec![u32::MAX; n];
        dist[src as usize] = 0;
        upd[src as usize] = 0;
        let mut finalized = vec![src];
        Ok(Box::new(Lazy::laid_out("sssp", &layout, move |step| {
            let mut e = Emit::default();
            if step == 0 {
                // initializeArrays: every thread writes both of its distances.
                e.range(dist_at, n as u64 * 4, true);
                e.range(upd_at, n as u64 * 4, true);
                return Some(vec![e.phase("sssp-init", on)]);
            }
            let iter = step - 1;
            // The host reads the flags back every ASYNC_ITERATIONS iterations.
            if iter >= cap || (iter % ASYNC_ITERATIONS == 0 && finalized.is_empty()) {
                return None;
            }
            // Kernel1: the finalized vertices (in index order) relax their out-edges.
            finalized.sort_unstable();
            for &v in &finalized {
                e.range(vertices + v as u64 * 4, 8.min((n as u64 - v as u64) * 4), false);
                e.line(dist_at + v as u64 * 4, false);
                for i in g.visit(&mut e, v) {
                    let u = g.edges[i] as usize;
                    let d = dist[v as usize].saturating_add(g.weights[i] as u32);
                    e.line(upd_at + u as u64 * 4, true);
                    upd[u] = upd[u].min(d);
                }
            }
            // Kernel2: improved distances finalize their vertices for the next iteration.
            let mut next = Vec::new();
            if sweep {
                let per_page = (PAGE / 4) as usize;
                for first in (0..n).step_by(per_page) {
                    let last = (first + per_page).min(n);
                    let before = next.len();
                    for v in first..last {
                        if dist[v] > upd[v] {
                            dist[v] = upd[v];
                            next.push(v as u32);
                        }
                        upd[v] = dist[v];
                    }
                    let len = (last - first) as u64 * 4;
                    e.range(dist_at + first as u64 * 4, len, next.len() > before);
                    e.range(upd_at + first as u64 * 4, len, true);
                }
            } else {
                for v in 0..n {
                    if dist[v] > upd[v] {
                        dist[v] = upd[v];
                        next.push(v as u32);
                        e.line(dist_at + v as u64 * 4, true);
                        e.line(upd_at + v as u64 * 4, true);
                    }
                    upd[v] = dist[v];
                }
            }
            finalized = next;
            Some(vec![e.phase("sssp-iteration", on)])
        })))
    },
};

/// PageRank by pulls over the edges (`iterations`, default 3).
pub const PAGERANK: WorkloadDef = WorkloadDef {
    name: "pagerank",
    help: "PageRank iterations over an R-MAT graph (every edge, random reads of ranks)",
    params: PAGERANK_PARAMS,
    build: |p: &Params, s: &Setup| {
        let g = Graph::new(p, s, For::Pagerank);
        let layout = g.layout.clone();
        let (on, iters) = (s.device, or(s.iterations, 3));
        let (offsets, ranks) = (g.at("offsets"), g.at("ranks"));
        Ok(Box::new(Lazy::laid_out("pagerank", &layout, move |step| {
            if step >= iters {
                return None;
            }
            // In place (Gauss-Seidel): reads and writes both use the rank array.
            let mut e = Emit::default();
            for v in 0..g.n {
                e.range(offsets + v as u64 * 8, 16, false);
                for i in g.visit(&mut e, v) {
                    e.line(ranks + g.edges[i] as u64 * 8, false);
                }
                e.line(ranks + v as u64 * 8, true);
            }
            Some(vec![e.phase("pagerank", on)])
        })))
    },
};
