//! Grid workloads: 2D/3D stencil, hotspot and srad (Rodinia), fdtd (Polybench fdtd-2d), wavefront
//! dynamic programming (nw, and Rodinia's pathfinder), and a multi-device partitioned stencil with
//! shared halos.
//!
//! Grids are sized so their arrays fill the footprint. `stencil`, `wavefront` and `halo` have
//! 8-byte elements and sweep row by row, reading the neighbouring rows (planes in 3D) of their
//! inputs and writing the row of their output, as a GPU's thread blocks march down the grid.
//! `hotspot`, `fdtd`, `srad` and `pathfinder` follow the CUDA sources the UVMSmart artifact runs (float elements, their arrays, time
//! steps and thread-block tiles; each one's doc says how): their thread blocks are issued in index
//! order, so each kernel launch walks the grid in bands of a block's rows.

use super::{Emit, Layout, Lazy, Setup, Target, WorkloadDef, or};
use crate::place::PAGE;
use crate::place::params::{ParamDef, Params};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// Side of a square grid of `arrays` arrays of 8-byte elements that fit in `pages` (each array
/// rounds up to a page, so one page per array is held back).
fn side2(pages: u32, arrays: u64) -> u64 {
    let elems = (pages as u64).saturating_sub(arrays) * PAGE / 8 / arrays;
    (isqrt(elems)).max(2)
}

fn isqrt(n: u64) -> u64 {
    n.isqrt()
}

fn icbrt(n: u64) -> u64 {
    let mut x = 0u64;
    while (x + 1).pow(3) <= n {
        x += 1;
    }
    x
}

/// Reads rows `r-1..=r+1` of the grid at `base` (rows of `row` bytes, `n` rows).
fn rows3(e: &mut Emit, base: u64, row: u64, n: u64, r: u64) {
    let lo = r.saturating_sub(1);
    let hi = (r + 1).min(n - 1);
    e.range(base + lo * row, (hi - lo + 1) * row, false);
}

/// A 2D (5-point) or 3D (7-point) Jacobi stencil, ping-ponging between two grids.
pub const STENCIL: WorkloadDef = WorkloadDef {
    name: "stencil",
    help: "2D or 3D Jacobi stencil over two grids, iterated",
    params: &[ParamDef::int("dims", 2, 2, 3, "2 or 3 dimensions")],
    build: |p: &Params, s: &Setup| {
        let dims = p.int("dims");
        let elems = (s.pages as u64).saturating_sub(2) * PAGE / 16;
        // Rows are rows (2D) or planes (3D).
        let (n, row) = if dims == 3 {
            let n = icbrt(elems).max(2);
            (n, n * n * 8)
        } else {
            let n = isqrt(elems).max(2);
            (n, n * 8)
        };
        let mut l = Layout::of(s);
        let grids = [l.array(n * row), l.array(n * row)];
        let (iters, on) = (or(s.iterations, 4), s.device);
        Ok(Box::new(Lazy::laid_out("stencil", &l, move |step| {
            if step >= iters {
                return None;
            }
            let (src, dst) = (grids[step as usize % 2], grids[(step as usize + 1) % 2]);
            let mut e = Emit::default();
            for r in 0..n {
                rows3(&mut e, src, row, n, r);
                e.range(dst + r * row, row, true);
            }
            Some(vec![e.phase("sweep", on)])
        })))
    },
};

/// Rows `rows` (clipped to the grid's `n`) of the grid at `base`, rows of `row` bytes, as one
/// contiguous run of lines (merged per page by [`Emit`]).
fn band(e: &mut Emit, base: u64, row: u64, n: u64, rows: core::ops::Range<i64>, write: bool) {
    let lo = rows.start.max(0) as u64;
    let hi = (rows.end.max(0) as u64).min(n);
    if lo < hi {
        e.range(base + lo * row, (hi - lo) * row, write);
    }
}

/// Side of a square grid of `arrays` arrays of `elem`-byte elements that fit in `pages` (each
/// array rounds up to a page, and arrays of `n + 1` rows or columns get a page more).
/// Side of the largest square grids, `arrays` of them of `elem`-byte elements, each rounded up to
/// a page, that fit in `pages` (hotspot's 3 float grids of side 1024 fit 3072 pages exactly).
fn side_exact(pages: u32, arrays: u64, elem: u64) -> u64 {
    let fits = |n: u64| arrays * (n * n * elem).div_ceil(PAGE) <= pages as u64;
    let mut n = isqrt(pages as u64 / arrays * PAGE / elem);
    while n > 16 && !fits(n) {
        n -= 1;
    }
    n.max(16)
}

fn side(pages: u32, arrays: u64, elem: u64) -> u64 {
    let elems = (pages as u64).saturating_sub(2 * arrays) * PAGE / elem / arrays;
    isqrt(elems).max(16)
}

/// Rodinia hotspot (the artifact's `hotspot.cu`, run as `hotspot 1024 2 8`): float temperature
/// and power grids, `iterations` time steps (default 8) computed `pyramid` (2) at a time per
/// kernel launch, ping-ponging between two temperature grids.
///
/// A launch's 16 × 16 thread blocks each load a 16 × 16 tile of the source temperature and the
/// power (the 12 × 12 cells it computes plus a border of `pyramid` cells on each side) and write
/// their 12 × 12 cells of the destination. Blocks are issued in index order, x fastest, so a
/// launch walks the grid in bands of 12 rows, each band reading 16 rows of both inputs (bands
/// overlap by 4 rows) and writing its 12 rows; a band is `n / 12` blocks, fewer than the GPU
/// holds at once (a GTX 1080 Ti: 28 SMs × 8 blocks of 256 threads), so its lines are in flight
/// together and are emitted band by band, array by array. The source does sweep the whole
/// footprint in index order at every launch (the temporal blocking only divides the number of
/// sweeps by the pyramid height): that is kept.
pub const HOTSPOT: WorkloadDef = WorkloadDef {
    name: "hotspot",
    help: "Rodinia hotspot: 2D thermal stencil, pyramid blocking, ping-pong temperature grids",
    params: &[ParamDef::int("pyramid", 2, 1, 7, "time steps per kernel launch (the pyramid height)")],
    build: |p: &Params, s: &Setup| {
        const BLOCK: i64 = 16;
        let pyramid = p.int("pyramid");
        let small = BLOCK - 2 * pyramid;
        let n = side_exact(s.pages, 3, 4);
        let row = n * 4;
        let mut l = Layout::of(s);
        let temp = [l.array(n * row), l.array(n * row)];
        let power = l.array(n * row);
        let steps = or(s.iterations, 8) as i64;
        let launches = (steps + pyramid - 1) / pyramid;
        let on = s.device;
        let bands = (n as i64 + small - 1) / small;
        Ok(Box::new(Lazy::laid_out("hotspot", &l, move |step| {
            if step as i64 >= launches {
                return None;
            }
            // Launch k reads temp[k % 2] and writes the other (hotspot.cu swaps before each).
            let (src, dst) = (temp[step as usize % 2], temp[(step as usize + 1) % 2]);
            let mut e = Emit::default();
            for by in 0..bands {
                let top = small * by - pyramid;
                band(&mut e, src, row, n, top..top + BLOCK, false);
                band(&mut e, power, row, n, top..top + BLOCK, false);
                band(&mut e, dst, row, n, small * by..small * (by + 1), true);
            }
            Some(vec![e.phase("hotspot", on)])
        })))
    },
};

/// Polybench/GPU fdtd-2d (the artifact's `fdtd2d.cu`: `tmax` 5, float fields `ex` of n × (n+1),
/// `ey` of (n+1) × n and `hz` of n × n, allocated after the 5-float `_fict_` array), one kernel
/// launch per sweep, three per time step (`iterations`, default 5):
/// 1. `ey[i][j] -= 0.5 (hz[i][j] - hz[i-1][j])` (row 0: `ey[0][j] = _fict_[t]`);
/// 2. `ex[i][j] -= 0.5 (hz[i][j] - hz[i][j-1])`;
/// 3. `hz[i][j] -= 0.7 (ex[i][j+1] - ex[i][j] + ey[i+1][j] - ey[i][j])`.
///
/// The 32 × 8 thread blocks are issued in index order, x (columns) fastest, so each kernel walks
/// the grid in bands of 8 rows; a band is `n / 32` blocks, fewer than the GPU holds at once, so
/// its lines are in flight together and are emitted band by band, array by array. Each kernel
/// does sweep its arrays in index order, as the source does.
pub const FDTD: WorkloadDef = WorkloadDef {
    name: "fdtd",
    help: "Polybench fdtd-2d: ey, ex, hz sweeps per time step (5 steps)",
    params: &[],
    build: |_p: &Params, s: &Setup| {
        const ROWS: i64 = 8;
        let n = side(s.pages.saturating_sub(1), 3, 4);
        let mut l = Layout::of(s);
        let fict = l.array(5 * 4);
        let (ex, ey, hz) = (l.array(n * (n + 1) * 4), l.array((n + 1) * n * 4), l.array(n * n * 4));
        let (ex_row, row) = ((n + 1) * 4, n * 4);
        let (iters, on) = (or(s.iterations, 5), s.device);
        let bands = (n as i64 + ROWS - 1) / ROWS;
        Ok(Box::new(Lazy::laid_out("fdtd", &l, move |step| {
            if step >= 3 * iters {
                return None;
            }
            let mut e = Emit::default();
            for b in 0..bands {
                let rows = b * ROWS..(b + 1) * ROWS;
                match step % 3 {
                    0 => {
                        if b == 0 {
                            e.line(fict, false);
                        }
                        band(&mut e, hz, row, n, rows.start.max(1) - 1..rows.end, false);
                        band(&mut e, ey, row, n + 1, rows.clone(), true);
                    }
                    1 => {
                        band(&mut e, hz, row, n, rows.clone(), false);
                        band(&mut e, ex, ex_row, n, rows.clone(), true);
                    }
                    _ => {
                        band(&mut e, ex, ex_row, n, rows.clone(), false);
                        band(&mut e, ey, row, n + 1, rows.start..rows.end + 1, false);
                        band(&mut e, hz, row, n, rows.clone(), true);
                    }
                }
            }
            let name = ["fdtd-ey", "fdtd-ex", "fdtd-hz"][step as usize % 3];
            Some(vec![e.phase(name, on)])
        })))
    },
};

/// Rodinia nw: a dynamic-programming matrix filled by anti-diagonals of 64 × 64 tiles, each
/// reading the row above it and the reference matrix.
pub const WAVEFRONT: WorkloadDef = WorkloadDef {
    name: "wavefront",
    help: "Needleman-Wunsch style wavefront over tiles (changing locality)",
    params: &[ParamDef::int("tile", 64, 4, 1024, "tile side, elements")],
    build: |p: &Params, s: &Setup| {
        let b = p.int("tile") as u64;
        let n = (side2(s.pages, 2) / b).max(1) * b;
        let row = n * 8;
        let tiles = n / b;
        let mut l = Layout::of(s);
        let (score, reference) = (l.array(n * row), l.array(n * row));
        let on = s.device;
        Ok(Box::new(Lazy::laid_out("wavefront", &l, move |step| {
            // Step d is anti-diagonal d (then the second half of the matrix).
            let d = step as u64;
            if d >= 2 * tiles - 1 {
                return None;
            }
            let mut e = Emit::default();
            for ti in d.saturating_sub(tiles - 1)..=d.min(tiles - 1) {
                let tj = d - ti;
                for r in ti * b..(ti + 1) * b {
                    if r > 0 {
                        e.range(score + (r - 1) * row + tj * b * 8, b * 8, false);
                    }
                    e.range(reference + r * row + tj * b * 8, b * 8, false);
                    e.range(score + r * row + tj * b * 8, b * 8, true);
                }
            }
            Some(vec![e.phase("diagonal", on)])
        })))
    },
};

/// A 2D stencil split into one slab of rows per device, every device sweeping its slab at the
/// same time and reading its neighbours' boundary rows (the halos).
pub const HALO: WorkloadDef = WorkloadDef {
    name: "halo",
    help: "multi-device partitioned stencil with shared halo rows",
    params: &[],
    build: |_p: &Params, s: &Setup| {
        let n = side2(s.pages, 2);
        let row = n * 8;
        let mut l = Layout::of(s);
        let grids = [l.array(n * row), l.array(n * row)];
        let parts = s.devices.max(1) as u64;
        let (iters, single) = (or(s.iterations, 4), s.device);
        Ok(Box::new(Lazy::laid_out("halo", &l, move |step| {
            if step >= iters {
                return None;
            }
            let (src, dst) = (grids[step as usize % 2], grids[(step as usize + 1) % 2]);
            let mut phases = Vec::new();
            for k in 0..parts {
                let (lo, hi) = (n * k / parts, n * (k + 1) / parts);
                let mut e = Emit::default();
                for r in lo..hi {
                    rows3(&mut e, src, row, n, r);
                    e.range(dst + r * row, row, true);
                }
                let on = if parts == 1 { single } else { Target::Dev(k as u8) };
                phases.push(e.phase("slab", on));
            }
            Some(phases)
        })))
    },
};

/// Rodinia srad_v2 as the artifact runs it (`srad 2048 2048 0 127 0 127 0.5 2`): speckle-reducing
/// anisotropic diffusion of a float image `J`, `iterations` (default 2) of: the CPU reads the
/// 128 × 128 region of interest (rows and columns 0..=127) for its statistics, then `srad_cuda_1`
/// (16 × 16 blocks: each reads its tile of `J` and the rows just above and below it, and writes
/// the diffusion coefficient `C` and the four derivatives `E`, `W`, `S`, `N` of its tile) and
/// `srad_cuda_2` (each reads its tile of `J`, `C` with the row below, the four derivatives, and
/// writes its tile of `J`). Blocks run in index order, x fastest: bands of 16 rows.
///
/// In the artifact only `J` is managed (`cudaMallocManaged`); `C` and the derivatives are
/// `cudaMalloc`'d device memory, never migrated: with `coefficients = "device"` (the default) the
/// footprint is `J` alone and those accesses are not pages of it; `"managed"` makes all six
/// arrays managed, sized together.
pub const SRAD: WorkloadDef = WorkloadDef {
    name: "srad",
    help: "Rodinia srad_v2: CPU statistics of a region, then two stencil kernels per iteration",
    params: &[
        ParamDef::text(
            "coefficients",
            "device",
            &["device", "managed"],
            "where C, E, W, S, N live: device memory (as the artifact) or managed",
        ),
        ParamDef::bool("host", false, "the CPU's statistics of the region as a CPU phase"),
    ],
    build: |p: &Params, s: &Setup| {
        const ROWS: i64 = 16;
        let host = p.bool("host");
        let managed = p.text("coefficients") == "managed";
        let arrays = if managed { 6 } else { 1 };
        let n = side(s.pages, arrays, 4) / 16 * 16;
        let row = n * 4;
        let mut l = Layout::of(s);
        let j = l.array(n * row);
        let coef: Vec<u64> = if managed { (0..5).map(|_| l.array(n * row)).collect() } else { Vec::new() };
        let roi = 128.min(n);
        let (iters, on) = (or(s.iterations, 2), s.device);
        let bands = n as i64 / ROWS;
        // Steps per iteration: [the CPU's,] kernel 1, kernel 2.
        let per = if host { 3 } else { 2 };
        Ok(Box::new(Lazy::laid_out("srad", &l, move |step| {
            if step >= per * iters {
                return None;
            }
            let k = step % per + 3 - per;
            let mut e = Emit::default();
            match k {
                0 => {
                    for r in 0..roi {
                        e.range(j + r * row, roi * 4, false);
                    }
                    return Some(vec![e.phase("srad-roi", Target::Cpu)]);
                }
                1 => {
                    for b in 0..bands {
                        band(&mut e, j, row, n, b * ROWS - 1..(b + 1) * ROWS + 1, false);
                        for &c in &coef {
                            band(&mut e, c, row, n, b * ROWS..(b + 1) * ROWS, true);
                        }
                    }
                }
                _ => {
                    for b in 0..bands {
                        band(&mut e, j, row, n, b * ROWS..(b + 1) * ROWS, false);
                        if let Some(&c) = coef.first() {
                            band(&mut e, c, row, n, b * ROWS..(b + 1) * ROWS + 1, false);
                            for &d in &coef[1..] {
                                band(&mut e, d, row, n, b * ROWS..(b + 1) * ROWS, false);
                            }
                        }
                        band(&mut e, j, row, n, b * ROWS..(b + 1) * ROWS, true);
                    }
                }
            }
            Some(vec![e.phase(if k == 1 { "srad-1" } else { "srad-2" }, on)])
        })))
    },
};

/// Rodinia pathfinder as the artifact runs it (`pathfinder 100000 100 20`): dynamic programming
/// down a grid of `rows` (100) rows of int weights, the columns filling the footprint. Each
/// launch advances `pyramid` (20) rows: a block of 256 threads loads 256 entries of the source
/// result row (its 216 columns and a border of `pyramid` on each side), then reads one row of
/// the wall per step over a shrinking range, and writes its 216 columns of the destination
/// result row (two result rows, ping-pong). Blocks run in index order along the columns, so a
/// launch streams `pyramid` rows of the wall side by side; every wall row is read by one launch.
/// (The artifact also prefetches the wall to the device before the first launch,
/// `cudaMemPrefetchAsync`; the generator has no prefetch, the policy's faults bring it.)
pub const PATHFINDER: WorkloadDef = WorkloadDef {
    name: "pathfinder",
    help: "Rodinia pathfinder: row-by-row dynamic programming, pyramid blocking",
    params: &[
        ParamDef::int("rows", 100, 2, 100_000, "grid rows"),
        ParamDef::int("pyramid", 20, 1, 100, "rows per kernel launch"),
    ],
    build: |p: &Params, s: &Setup| {
        const BLOCK: i64 = 256;
        let (rows, pyramid) = (p.int("rows") as u64, p.int("pyramid"));
        // Two result rows and rows - 1 wall rows of 4-byte ints.
        let cols = ((s.pages as u64).saturating_sub(3) * PAGE / 4 / (rows + 1)).max(BLOCK as u64) as i64;
        let mut l = Layout::of(s);
        let result = [l.array(cols as u64 * 4), l.array(cols as u64 * 4)];
        let wall = l.array((rows - 1) * cols as u64 * 4);
        let small = (BLOCK - 2 * pyramid).max(1);
        let blocks = (cols + small - 1) / small;
        let on = s.device;
        let launches = (rows as i64 - 1 + pyramid - 1) / pyramid;
        let clip = move |lo: i64, hi: i64| (lo.max(0), hi.min(cols));
        Ok(Box::new(Lazy::laid_out("pathfinder", &l, move |step| {
            if step as i64 >= launches {
                return None;
            }
            let t = step as i64 * pyramid;
            let iteration = pyramid.min(rows as i64 - 1 - t);
            // calc_path swaps before each launch: launch k reads result[k % 2].
            let (src, dst) = (result[step as usize % 2], result[(step as usize + 1) % 2]);
            let mut e = Emit::default();
            for bx in 0..blocks {
                let x = small * bx - pyramid;
                let (lo, hi) = clip(x, x + BLOCK);
                e.range(src + lo as u64 * 4, (hi - lo) as u64 * 4, false);
                for i in 0..iteration {
                    let (lo, hi) = clip(x + i + 1, x + BLOCK - i - 1);
                    if lo < hi {
                        let at = wall + ((t + i) * cols + lo) as u64 * 4;
                        e.range(at, (hi - lo) as u64 * 4, false);
                    }
                }
                let (lo, hi) = clip(x + iteration, x + BLOCK - iteration);
                if lo < hi {
                    e.range(dst + lo as u64 * 4, (hi - lo) as u64 * 4, true);
                }
            }
            Some(vec![e.phase("pathfinder", on)])
        })))
    },
};
