//! Rodinia backprop: one training step of a two-layer network with a wide input layer and 16
//! hidden units. The forward pass streams the input and the input→hidden weights; the backward
//! pass streams the weights and their previous deltas, writing both. Little reuse, so
//! oversubscription costs it little (placement.md 1.7: ×1.02 at 125 %).

use super::{Emit, Layout, Setup, Steps, WorkloadDef};
use crate::place::PAGE;
use crate::place::params::Params;
use alloc::boxed::Box;
use alloc::vec;

/// Backprop.
pub const BACKPROP: WorkloadDef = WorkloadDef {
    name: "backprop",
    help: "Rodinia backprop: forward and backward passes over wide weight matrices",
    params: &[],
    build: |_p: &Params, s: &Setup| {
        // input: n+1 floats; weights and deltas: (n+1) × 17 floats each.
        let bytes = (s.pages as u64).saturating_sub(3) * PAGE;
        let n = (bytes / (4 + 2 * 17 * 4)).max(16);
        let mut l = Layout::default();
        let input = l.array((n + 1) * 4);
        let w = l.array((n + 1) * 17 * 4);
        let dw = l.array((n + 1) * 17 * 4);
        let on = s.device;
        let mut e = Emit::default();
        let rows = (n + 1) * 4;
        // Forward: each block of input with its weight rows.
        for off in (0..rows).step_by(PAGE as usize) {
            e.range(input + off, PAGE.min(rows - off), false);
            e.range(w + off * 17, (PAGE * 17).min(rows * 17 - off * 17), false);
        }
        let fwd = e.phase("forward", on);
        for off in (0..rows * 17).step_by(PAGE as usize) {
            let len = PAGE.min(rows * 17 - off);
            e.range(w + off, len, true);
            e.range(dw + off, len, true);
        }
        let bwd = e.phase("backward", on);
        Ok(Box::new(Steps::new("backprop", l.pages(), vec![vec![fwd], vec![bwd]])))
    },
};
