//! The state device memory must be back to between points ([`Idle`]), and what a point left
//! behind when it is not ([`NotIdle`]).

use crate::vram::Vram;
use alloc::sync::Arc;
use alloc::vec::Vec;

/// The state device memory is in between points: pages in use per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idle {
    pub(super) in_use: Vec<u64>,
}

impl Idle {
    /// The state now.
    pub fn now(vram: &[Arc<Vram>]) -> Idle {
        Idle { in_use: vram.iter().map(|v| v.in_use()).collect() }
    }

    /// Checks that device memory is back to `self` (the state before the first point) and that
    /// every copy engine still works; the error says what an earlier point left behind.
    pub fn check(&self, vram: &[Arc<Vram>]) -> Result<(), NotIdle> {
        let mut wrong = NotIdle::default();
        for (v, &was) in vram.iter().zip(&self.in_use) {
            let now = v.in_use();
            if now != was {
                wrong.in_use.push(InUse { device: v.device(), now, was });
            }
        }
        for dev in crate::devices::all() {
            if dev.engine_dead() {
                wrong.dead_engines.push(dev.index());
            }
        }
        if wrong.in_use.is_empty() && wrong.dead_engines.is_empty() {
            return Ok(());
        }
        Err(wrong)
    }
}

/// What an earlier point left behind (see [`Idle::check`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotIdle {
    /// Devices with a different number of pages in use than before the first point.
    pub in_use: Vec<InUse>,
    /// Devices whose copy engine (or hot-plug region's engine) stopped after a DMA timed out.
    pub dead_engines: Vec<usize>,
}

/// A device's pages in use, now and before the first point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InUse {
    /// Device.
    pub device: usize,
    /// Pages in use now.
    pub now: u64,
    /// Pages in use before the first point.
    pub was: u64,
}

impl core::fmt::Display for NotIdle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "device memory is not back to its empty state: ")?;
        let mut sep = "";
        for u in &self.in_use {
            write!(f, "{sep}dev{} has {} device pages in use, {} before the first point", u.device, u.now, u.was)?;
            sep = "; ";
        }
        for n in &self.dead_engines {
            write!(f, "{sep}dev{n}'s copy engine stopped after a DMA timed out (its queue is dead)")?;
            sep = "; ";
        }
        Ok(())
    }
}
