//! Sharing patterns: producer/consumer ping-pong (which makes pages thrash) and a read-mostly
//! table broadcast to every device (which read duplication serves).

use super::{Emit, Layout, Lazy, Setup, Target, WorkloadDef, or};
use crate::place::params::{ParamDef, Params};
use crate::place::{PAGE, Rng};
use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

/// A buffer updated in turn by two processors: the CPU and the device, or two devices.
pub const PINGPONG: WorkloadDef = WorkloadDef {
    name: "pingpong",
    help: "producer/consumer ping-pong between the CPU and a device, or two devices",
    params: &[
        ParamDef::bool("peer", false, "between device 0 and device 1 instead of CPU and device"),
        ParamDef::int("touch", 8, 1, 32, "lines touched per page per turn"),
    ],
    build: |p: &Params, s: &Setup| {
        if p.bool("peer") && s.devices < 2 {
            return Err(crate::place::params::ParamError::Bad {
                name: "peer".into(),
                value: "true".into(),
                allowed: alloc::format!("false on a machine with {} device(s): peer needs two", s.devices),
            });
        }
        let sides = if p.bool("peer") { [Target::Dev(0), Target::Dev(1)] } else { [s.device, Target::Cpu] };
        let touch = p.int("touch") as u16;
        let mut l = Layout::of(s);
        let buf = l.array(s.pages as u64 * PAGE);
        let (pages, iters) = (s.pages, or(s.iterations, 8));
        Ok(Box::new(Lazy::laid_out("pingpong", &l, move |step| {
            if step >= iters {
                return None;
            }
            let mut e = Emit::default();
            for page in 0..pages as u64 {
                e.lines(buf + page * PAGE, touch, true);
            }
            Some(vec![e.phase(if step % 2 == 0 { "ping" } else { "pong" }, sides[step as usize % 2])])
        })))
    },
};

/// A table every device reads at random at the same time, rarely written.
pub const BROADCAST: WorkloadDef = WorkloadDef {
    name: "broadcast",
    help: "read-mostly table read by every device at once (duplication)",
    params: &[
        ParamDef::int("reads", 4, 1, 1024, "random line reads per page per device per step"),
        ParamDef::float("writes", 0.001, 0.0, 1.0, "fraction of accesses that write"),
    ],
    build: |p: &Params, s: &Setup| {
        let reads = p.int("reads") as u64;
        let writes = p.float("writes");
        let mut l = Layout::of(s);
        let table = l.array(s.pages as u64 * PAGE);
        let (pages, iters, devices) = (s.pages as u64, or(s.iterations, 4), s.devices.max(1));
        let mut rng = Rng::new(s.seed);
        Ok(Box::new(Lazy::laid_out("broadcast", &l, move |step| {
            if step >= iters {
                return None;
            }
            let mut phases = Vec::new();
            for d in 0..devices {
                let mut e = Emit::default();
                for _ in 0..pages * reads {
                    e.line(table + rng.below(pages * PAGE), rng.unit() < writes);
                }
                phases.push(e.phase("lookup", Target::Dev(d)));
            }
            Some(phases)
        })))
    },
};
