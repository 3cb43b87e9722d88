//! Grid workloads: 2D/3D stencil, hotspot, FDTD, wavefront dynamic programming (nw), and a
//! multi-device partitioned stencil with shared halos.
//!
//! Grids are of 8-byte elements, sized so their arrays fill the footprint; a sweep reads the
//! neighbouring rows (planes in 3D) of its inputs and writes the row of its output, in order, as a
//! GPU's thread blocks march down the grid.

use super::{Emit, Layout, Lazy, Phase, Setup, Target, WorkloadDef, or};
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
        let mut l = Layout::default();
        let grids = [l.array(n * row), l.array(n * row)];
        let (iters, on) = (or(s.iterations, 4), s.device);
        Ok(Box::new(Lazy::new("stencil", l.pages(), move |step| {
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

/// Rodinia hotspot: temperature and power grids, one output grid, swapped each iteration.
pub const HOTSPOT: WorkloadDef = WorkloadDef {
    name: "hotspot",
    help: "Rodinia hotspot: 2D thermal stencil with a power grid",
    params: &[],
    build: |_p: &Params, s: &Setup| {
        let n = side2(s.pages, 3);
        let row = n * 8;
        let mut l = Layout::default();
        let temp = [l.array(n * row), l.array(n * row)];
        let power = l.array(n * row);
        let (iters, on) = (or(s.iterations, 4), s.device);
        Ok(Box::new(Lazy::new("hotspot", l.pages(), move |step| {
            if step >= iters {
                return None;
            }
            let (src, dst) = (temp[step as usize % 2], temp[(step as usize + 1) % 2]);
            let mut e = Emit::default();
            for r in 0..n {
                rows3(&mut e, src, row, n, r);
                e.range(power + r * row, row, false);
                e.range(dst + r * row, row, true);
            }
            Some(vec![e.phase("hotspot", on)])
        })))
    },
};

/// Polybench fdtd-2d: three field grids, three sweeps per time step.
pub const FDTD: WorkloadDef = WorkloadDef {
    name: "fdtd",
    help: "Polybench fdtd-2d: ey, ex, hz updates per time step",
    params: &[],
    build: |_p: &Params, s: &Setup| {
        let n = side2(s.pages, 3);
        let row = n * 8;
        let mut l = Layout::default();
        let (ex, ey, hz) = (l.array(n * row), l.array(n * row), l.array(n * row));
        let (iters, on) = (or(s.iterations, 4), s.device);
        Ok(Box::new(Lazy::new("fdtd", l.pages(), move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for r in 0..n {
                e.range(hz + r.saturating_sub(1) * row, (r.min(1) + 1) * row, false);
                e.range(ey + r * row, row, true);
            }
            let a = e.phase("fdtd-ey", on);
            for r in 0..n {
                e.range(hz + r * row, row, false);
                e.range(ex + r * row, row, true);
            }
            let b = e.phase("fdtd-ex", on);
            for r in 0..n {
                e.range(ex + r * row, row, false);
                e.range(ey + r * row, (2.min(n - r)) * row, false);
                e.range(hz + r * row, row, true);
            }
            let c = e.phase("fdtd-hz", on);
            Some(vec![merge(a, b, c)])
        })))
    },
};

/// The three sweeps of a time step as one phase (they run back to back on one device).
fn merge(mut a: Phase, b: Phase, c: Phase) -> Phase {
    a.accesses.extend(b.accesses);
    a.accesses.extend(c.accesses);
    a.name = "fdtd";
    a
}

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
        let mut l = Layout::default();
        let (score, reference) = (l.array(n * row), l.array(n * row));
        let on = s.device;
        Ok(Box::new(Lazy::new("wavefront", l.pages(), move |step| {
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
        let mut l = Layout::default();
        let grids = [l.array(n * row), l.array(n * row)];
        let parts = s.devices.max(1) as u64;
        let (iters, single) = (or(s.iterations, 4), s.device);
        Ok(Box::new(Lazy::new("halo", l.pages(), move |step| {
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
