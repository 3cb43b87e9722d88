//! Rodinia backprop as the UVMSmart artifact runs it (`backprop 131056`): one training step of a
//! network with a wide input layer, 16 hidden units and one output, float weights.
//!
//! The source (`backprop_cuda.cu`, `backprop_cuda_kernel.cu`, `backprop.c`) allocates, in this
//! order and each managed: the input units (n + 1), the small hidden and output vectors (one
//! page here, the hidden deltas the backward kernel reads), the input→hidden weights
//! `input_weights`, a copy of them `input_weights2`, the previous weight changes
//! `input_prev_weights` (each (n + 1) × 17) and the per-block partial sums (n). Then:
//! 1. `bpnn_layerforward_CUDA`, one 16 × 16 thread block per 16 input units, in index order:
//!    each reads its 16 inputs and its 16 rows of `input_weights`, writes the products back into
//!    them and its 16 partial sums;
//! 2. the CPU sums the partial sums (all of them) with the first row of `input_weights`, and
//!    computes the output and hidden errors (the small vectors): a CPU phase with `host = true`.
//!    The artifact's figures come from GPGPU-Sim, which runs the host code natively and never
//!    sees its accesses to managed memory (its metric is kernel plus GPU fault time), so by
//!    default the step is left out and the two kernels run back to back;
//! 3. `bpnn_adjust_weights_cuda`, the same grid: each block reads the hidden deltas and its 16
//!    inputs and updates its rows of `input_weights2` and `input_prev_weights`.
//!
//! So the backward pass re-reads only the inputs (2 % of the footprint): the weights it updates
//! are the copy, not the matrix the forward pass streamed, which is why the artifact's
//! host-to-device traffic is the same at every oversubscription ratio. Blocks are emitted in
//! index order, 64 blocks (1,024 input rows) at a time, array by array.

use super::{Emit, Layout, Setup, Steps, Target, WorkloadDef};
use crate::place::PAGE;
use crate::place::params::{ParamDef, Params};
use alloc::boxed::Box;
use alloc::vec;

/// Floats per weight row: the 16 hidden units and the bias.
const ROW: u64 = 17 * 4;

/// Input rows a group of emitted blocks covers.
const GROUP: u64 = 1024;

/// Backprop.
pub const BACKPROP: WorkloadDef = WorkloadDef {
    name: "backprop",
    help: "Rodinia backprop: forward kernel over the weights, (host = true: the CPU reduction,) backward kernel over their copy",
    params: &[ParamDef::bool("host", false, "the CPU's reduction between the kernels as a CPU phase")],
    build: |p: &Params, s: &Setup| {
        // Per input unit: its value, three weight rows and a partial sum.
        let bytes = (s.pages as u64).saturating_sub(6) * PAGE;
        let n = (bytes / (4 + 3 * ROW + 4)).max(16) / 16 * 16;
        let mut l = Layout::of(s);
        let input = l.array((n + 1) * 4);
        let small = l.array(PAGE);
        let w = l.array((n + 1) * ROW);
        let w2 = l.array((n + 1) * ROW);
        let prev = l.array((n + 1) * ROW);
        let partial = l.array(n * 4);
        let on = s.device;
        let mut e = Emit::default();
        // Row r of a weight matrix is input unit r; blocks cover rows 1..=n (row 0 is the bias).
        for first in (1..=n).step_by(GROUP as usize) {
            let rows = GROUP.min(n + 1 - first);
            e.range(input + first * 4, rows * 4, false);
            e.range(w + first * ROW, rows * ROW, true);
            e.range(partial + (first - 1) * 4, rows * 4, true);
        }
        let forward = e.phase("forward", on);
        e.range(partial, n * 4, false);
        e.range(w, ROW, false);
        e.range(small, PAGE, true);
        let reduce = e.phase("reduce", Target::Cpu);
        e.range(small, PAGE, false);
        // Block 0 also updates the bias row of both matrices.
        e.range(w2, ROW, true);
        e.range(prev, ROW, true);
        for first in (1..=n).step_by(GROUP as usize) {
            let rows = GROUP.min(n + 1 - first);
            e.range(input + first * 4, rows * 4, false);
            e.range(w2 + first * ROW, rows * ROW, true);
            e.range(prev + first * ROW, rows * ROW, true);
        }
        let backward = e.phase("backward", on);
        let steps = if p.bool("host") {
            vec![vec![forward], vec![reduce], vec![backward]]
        } else {
            vec![vec![forward], vec![backward]]
        };
        Ok(Box::new(Steps::laid_out("backprop", &l, steps)))
    },
};
