//! The UVM oversubscription microbenchmarks of NVIDIA's blog "Improving GPU Memory
//! Oversubscription Performance" (2021; `uvm_oversubs.cu` in NVIDIA-developer-blog/code-samples),
//! placement.md 4.2 / 5.2: read-only kernels over one float array, a persistent grid of
//! `blocks` blocks of 128 threads (the sample launches SMs × resident blocks per SM; the default
//! 448 is a GTX 1080 Ti's 28 SMs × 16, the device the cost model is calibrated to), ending with
//! each block's thread 0 writing its sum to element 0. `iterations` (default 1) kernels run back
//! to back; the sample moves the data back to the CPU before each of its timed iterations, which
//! is where every run here starts.
//! - `grid-stride` (`read_thread_blocksync`, "streaming"): each thread reads `tid`, then
//!   `tid + grid size`, in lock step, so the grid reads one contiguous window after another:
//!   a sweep in index order.
//! - `block-stride` (`read_thread_blockCont_blocksync`, "block streaming"): each block reads
//!   its own contiguous share of the array, 128 floats (512 bytes) a round in lock step, so every
//!   round touches `blocks` places spread evenly over the array.
//! - `random-warp` (`cta_random_warp_streaming_read`): every warp reads 32 consecutive floats
//!   (128 bytes, unaligned: one or two lines) at a random offset of a random `page` (2M, 64K or
//!   4K, the sample's `-s`), as many times as make the array's size in all. The sample shrinks
//!   device memory to a third with a `cudaMalloc` and sizes the array against that third, which
//!   keeps the oversubscription ratio; here the array is sized against device memory.

use super::{Emit, Layout, Lazy, Phase, Setup, Target, WorkloadDef, or};
use crate::place::params::{ParamDef, Params};
use crate::place::{PAGE, Rng};
use alloc::boxed::Box;
use alloc::vec;

/// Threads in a block.
const THREADS: u64 = 128;

const BLOCKS: ParamDef = ParamDef::int("blocks", 448, 1, 65_536, "thread blocks in the persistent grid");

/// The final write of element 0 by every block's thread 0.
fn finish(mut e: Emit, name: &'static str, on: Target) -> Phase {
    e.line(0, true);
    e.phase(name, on)
}

/// Grid-stride streaming read.
pub const GRID_STRIDE: WorkloadDef = WorkloadDef {
    name: "grid-stride",
    help: "UVM blog: grid-stride read of one array (a sweep in index order)",
    params: &[BLOCKS],
    build: |p: &Params, s: &Setup| {
        let bytes = s.pages as u64 * PAGE;
        let window = p.int("blocks") as u64 * THREADS * 4;
        let (iters, on) = (or(s.iterations, 1), s.device);
        Ok(Box::new(Lazy::laid_out("grid-stride", &Layout::one_array(s), move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for start in (0..bytes).step_by(window as usize) {
                e.range(start, window.min(bytes - start), false);
            }
            Some(vec![finish(e, "grid-stride", on)])
        })))
    },
};

/// Block-stride streaming read.
pub const BLOCK_STRIDE: WorkloadDef = WorkloadDef {
    name: "block-stride",
    help: "UVM blog: each thread block streams its own contiguous share of one array",
    params: &[BLOCKS],
    build: |p: &Params, s: &Setup| {
        let n = s.pages as u64 * PAGE / 4;
        let blocks = p.int("blocks") as u64;
        // elements_per_block = ceil(n / blocks) + 1, as the sample computes it.
        let share = n.div_ceil(blocks) + 1;
        let (iters, on) = (or(s.iterations, 1), s.device);
        Ok(Box::new(Lazy::laid_out("block-stride", &Layout::one_array(s), move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for round in (0..share).step_by(THREADS as usize) {
                for b in 0..blocks {
                    let first = b * share + round;
                    let last = (first + THREADS).min(b * share + share).min(n);
                    if first < last {
                        e.range(first * 4, (last - first) * 4, false);
                    }
                }
            }
            Some(vec![finish(e, "block-stride", on)])
        })))
    },
};

/// Random page per warp, coalesced within the warp.
pub const RANDOM_WARP: WorkloadDef = WorkloadDef {
    name: "random-warp",
    help: "UVM blog: every warp reads 128 bytes at a random place of a random page",
    params: &[BLOCKS, ParamDef::text("page", "2M", &["2M", "64K", "4K"], "the sample's page size (-s)")],
    build: |p: &Params, s: &Setup| {
        let page: u64 = match p.text("page") {
            "4K" => 4 << 10,
            "64K" => 64 << 10,
            _ => 2 << 20,
        };
        let bytes = s.pages as u64 * PAGE;
        let page = page.min(bytes);
        // The sample pads the array to whole pages; the footprint need not be: a read past its
        // end is drawn again.
        let pages = bytes.div_ceil(page);
        let threads = p.int("blocks") as u64 * THREADS;
        // loop_count = n / threads per thread; warps read 32 floats each time.
        let reads = (bytes / 4 / threads).max(1) * (threads / 32);
        let (iters, on) = (or(s.iterations, 1), s.device);
        let mut rng = Rng::new(s.seed);
        Ok(Box::new(Lazy::laid_out("random-warp", &Layout::one_array(s), move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for _ in 0..reads {
                let at = loop {
                    let at = rng.below(pages) * page + rng.below(page / 4 - 32) * 4;
                    if at + 128 <= bytes {
                        break at;
                    }
                };
                e.range(at, 128, false);
            }
            Some(vec![finish(e, "random-warp", on)])
        })))
    },
};
