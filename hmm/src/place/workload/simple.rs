//! Simple patterns: stream / triad, strided, uniform random (HPCC RandomAccess).

use super::{Emit, Layout, Lazy, Setup, WorkloadDef, or};
use crate::place::params::{ParamDef, Params};
use crate::place::{PAGE, Rng};
use alloc::boxed::Box;
use alloc::vec;

/// `a[i] = b[i] + s * c[i]` over three arrays, `iterations` passes (default 1).
pub const STREAM: WorkloadDef = WorkloadDef {
    name: "stream",
    help: "STREAM triad a = b + s*c, sequential passes",
    params: &[],
    build: |_p: &Params, s: &Setup| {
        let mut l = Layout::of(s);
        let each = (s.pages / 3).max(1) as u64 * PAGE;
        let (a, b, c) = (l.array(each), l.array(each), l.array(each));
        let (iters, on) = (or(s.iterations, 1), s.device);
        Ok(Box::new(Lazy::laid_out("stream", &l, move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for off in (0..each).step_by(PAGE as usize) {
                e.range(b + off, PAGE, false);
                e.range(c + off, PAGE, false);
                e.range(a + off, PAGE, true);
            }
            Some(vec![e.phase("triad", on)])
        })))
    },
};

/// One line per stride, sweeping every offset (`4K`, `64K`, or `2M+4K`, which defeats the tree
/// prefetcher at block edges).
pub const STRIDED: WorkloadDef = WorkloadDef {
    name: "strided",
    help: "one line every stride, every offset in turn",
    params: &[ParamDef::text("stride", "64K", &["4K", "64K", "2M+4K"], "distance between accesses")],
    build: |p: &Params, s: &Setup| {
        let stride: u32 = match p.text("stride") {
            "4K" => 1,
            "64K" => 16,
            _ => 513,
        };
        let (pages, iters, on) = (s.pages, or(s.iterations, 1), s.device);
        Ok(Box::new(Lazy::laid_out("strided", &Layout::one_array(s), move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for start in 0..stride.min(pages) {
                for page in (start..pages).step_by(stride as usize) {
                    e.line(page as u64 * PAGE, true);
                }
            }
            Some(vec![e.phase("strided", on)])
        })))
    },
};

/// Uniformly random read-modify-writes of one line (`updates` per page per iteration).
pub const RANDOM: WorkloadDef = WorkloadDef {
    name: "random",
    help: "uniform random updates (HPCC RandomAccess)",
    params: &[ParamDef::int("updates", 4, 1, 1024, "updates per page per iteration")],
    build: |p: &Params, s: &Setup| {
        let updates = p.int("updates") as u64;
        let (pages, iters, on) = (s.pages, or(s.iterations, 1), s.device);
        let mut rng = Rng::new(s.seed);
        Ok(Box::new(Lazy::laid_out("random", &Layout::one_array(s), move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for _ in 0..pages as u64 * updates {
                e.line(rng.below(pages as u64 * PAGE), true);
            }
            Some(vec![e.phase("update", on)])
        })))
    },
};
