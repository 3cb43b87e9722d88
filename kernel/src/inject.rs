//! Fault injection: in-kernel tests arm a fault, and the driver at that point makes the real
//! device fail (or, for a timeout, gives up on a real request in flight), so the recovery
//! paths above it run against real hardware behaviour.
//!
//! A fault is armed for one device (or any) with a count of matching operations to let
//! through first; it fires on the next matching operation (or the next few, [`arm_times`]),
//! and is then gone. Nothing is
//! armed outside tests, and [`take`] costs one uncontended lock when nothing is.
//!
//! A test can also run code of its own at a named point inside a migration ([`at`],
//! [`Point`]), e.g. remove device memory between the copy and the finalize.
//!
//! Invariant: an armed fault or hook never outlives the test that armed it: [`arm`] and
//! [`at`] return guards that disarm on drop.

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
    /// A virtio-mem UNPLUG is sent for the block past the region's end, which the device
    /// refuses (`VIRTIO_MEM_RESP_ERROR`) with the blocks asked for still plugged.
    UnplugError,
    /// A virtio-mem STATE request is sent for the block past the region's end, which the
    /// device refuses (`VIRTIO_MEM_RESP_ERROR`): the driver cannot learn the blocks' state.
    StateError,
}

#[derive(Debug)]
struct Slot {
    fault: Fault,
    device: Option<usize>,
    skip: u32,
    /// Times it fires before it is gone.
    times: u32,
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
    arm_times(fault, device, skip, 1)
}

/// Arms `fault` like [`arm`], to fire on `times` matching operations in a row after the
/// `skip` it lets through.
pub fn arm_times(fault: Fault, device: Option<usize>, skip: u32, times: u32) -> Armed {
    let mut a = ARMED.lock();
    a.retain(|x| !(x.fault == fault && x.device == device));
    a.push(Slot { fault, device, skip, times: times.max(1) });
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
    a[i].times -= 1;
    if a[i].times == 0 {
        a.swap_remove(i);
    }
    true
}

/// A point inside a migration at which a test can run code of its own ([`at`]), to make
/// something happen there deterministically (device memory removed before a migration
/// allocates, after its copies and before it finalizes, or between two copies of a batch).
/// Reaching a point with no hook installed costs one uncontended lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// A migration to a device has collected its source pages (`migrate_vma_setup`: they are
    /// locked and unmapped) and not yet allocated device pages for them.
    SetUp,
    /// A migration (either way) has allocated its destinations and run its copies, and has
    /// not yet called `pages` and `finalize`: its source and destination pages are locked.
    Copied,
    /// Between two windows of copy requests of one migration's batch (some copied, the rest
    /// not yet submitted).
    BetweenCopies,
}

type HookFn = alloc::boxed::Box<dyn FnOnce() + Send>;

struct Hook {
    point: Point,
    device: Option<usize>,
    skip: u32,
    f: HookFn,
}

static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

/// Removes what [`at`] installed when dropped (whether or not it ran).
#[derive(Debug)]
#[must_use = "the hook is removed when the guard is dropped"]
pub struct Hooked {
    point: Point,
}

impl Hooked {
    /// Whether the hook has run.
    pub fn fired(&self) -> bool {
        HOOK.lock().as_ref().is_none_or(|h| h.point != self.point)
    }
}

impl Drop for Hooked {
    fn drop(&mut self) {
        let mut h = HOOK.lock();
        if h.as_ref().is_some_and(|h| h.point == self.point) {
            *h = None;
        }
    }
}

/// Runs `f` once, the `skip + 1`-th time a migration on `device` (None: any) reaches
/// `point`, on the migrating CPU, with what the migration holds there still held: its
/// pages' locks and the migrating address space's lock (so `f` must not touch that address
/// space), but no device lock. One hook at a time; a new one replaces the old.
pub fn at(point: Point, device: Option<usize>, skip: u32, f: impl FnOnce() + Send + 'static) -> Hooked {
    *HOOK.lock() = Some(Hook { point, device, skip, f: alloc::boxed::Box::new(f) });
    Hooked { point }
}

/// Called where `point` is reached, on `device`: runs the hook installed for it, if it is
/// due (outside this module's lock, so the hook may itself reach points or take faults).
pub fn reach(point: Point, device: Option<usize>) {
    let f = {
        let mut h = HOOK.lock();
        match h.as_mut() {
            Some(x) if x.point == point && (x.device.is_none() || x.device == device) => {
                if x.skip > 0 {
                    x.skip -= 1;
                    None
                } else {
                    h.take().map(|x| x.f)
                }
            }
            _ => None,
        }
    };
    if let Some(f) = f {
        f();
    }
}
