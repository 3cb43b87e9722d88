//! Fault injection: in-kernel tests arm a fault, and the driver at that point makes the real
//! device fail (or, for a timeout, gives up on a real request in flight), so the recovery
//! paths above it run against real hardware behaviour.
//!
//! A fault is armed for one device (or any) with a count of matching operations to let
//! through first; it fires once, on the next matching operation, and is then gone. Nothing is
//! armed outside tests, and [`take`] costs one uncontended lock when nothing is.
//!
//! Invariant: an armed fault never outlives the test that armed it: [`arm`] returns a guard
//! that disarms on drop.

#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

use alloc::vec::Vec;
use spin::Mutex;

/// What fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A copy-engine request fails with a device I/O error: it is sent for a sector past the
    /// end of the engine's disk, which virtio-blk refuses (`VIRTIO_BLK_S_IOERR`) without
    /// moving any data.
    DmaError,
    /// The wait for a copy-engine request gives up at once, as when the device does not
    /// answer within the bound; the request is really in flight and may or may not have run.
    /// The engine is then reset, which ends it either way.
    DmaTimeout,
    /// An IOMMU MAP request is sent with a flag the virtio-iommu does not define, and the
    /// device refuses it (`VIRTIO_IOMMU_S_INVAL`); the other MAPs of its batch go through.
    MapError,
    /// The frame allocator behind user address spaces has no frame (RAM exhausted).
    OutOfRam,
}

#[derive(Debug)]
struct Slot {
    fault: Fault,
    device: Option<usize>,
    skip: u32,
}

static ARMED: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

/// Disarms what [`arm`] armed when dropped.
#[derive(Debug)]
#[must_use = "the fault is disarmed when the guard is dropped"]
pub struct Armed {
    fault: Fault,
    device: Option<usize>,
}

impl Armed {
    /// Whether the fault has fired (it is no longer armed).
    pub fn fired(&self) -> bool {
        !ARMED.lock().iter().any(|a| a.fault == self.fault && a.device == self.device)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.lock().retain(|a| !(a.fault == self.fault && a.device == self.device));
    }
}

/// Arms `fault` for `device` (None: any device): `skip` matching operations go through,
/// the next one fails.
pub fn arm(fault: Fault, device: Option<usize>, skip: u32) -> Armed {
    let mut a = ARMED.lock();
    a.retain(|x| !(x.fault == fault && x.device == device));
    a.push(Slot { fault, device, skip });
    Armed { fault, device }
}

/// Called where `fault` can happen, on `device`: true if it must happen now.
pub fn take(fault: Fault, device: Option<usize>) -> bool {
    let mut a = ARMED.lock();
    if a.is_empty() {
        return false;
    }
    let Some(i) = a.iter().position(|x| x.fault == fault && (x.device.is_none() || x.device == device)) else {
        return false;
    };
    if a[i].skip > 0 {
        a[i].skip -= 1;
        return false;
    }
    a.swap_remove(i);
    true
}
