//! Following the host's requests for device memory. When the host changes a virtio-mem
//! device's `requested_size` (QMP `qom-set`; `cargo xtask` does it for a guest's `@@HOST`
//! request), the device interrupts ([`CONFIG_CHANGED`]) and the follower task, parked until
//! then, plugs blocks or evicts and unplugs them until the plugged memory matches the new
//! request, while workloads run: removal is [`Vram::shrink_where_possible`], whose evictions
//! lose nothing.
//!
//! Only a change is followed. Until the host asks anew, the kernel plugs and unplugs on its own
//! initiative within the request (as the experiments and tests do) and the follower leaves it
//! alone. A request it cannot meet yet (a page pinned or held by a migration in flight in
//! every block it could remove, a refused UNPLUG) stays pending and is tried again after
//! [`RETRY_MS`]; and every [`POLL_MS`] the follower looks anyway, in case an interrupt was
//! lost or the function has no MSI-X.
//!
//! Owns: per device, the request last seen and the one pending ([`Follow`]); the follower
//! task ([`start`]).

use super::{PAGE, Vram};
use crate::devices::{self, DevError};
use crate::platform::sched::{self, CONFIG_CHANGED, SchedError};
use alloc::sync::Arc;

/// How often the follower looks at the requests without an interrupt.
pub const POLL_MS: u64 = 50;
/// How soon it tries again a request it could not meet.
pub const RETRY_MS: u64 = 20;

/// What the follower knows of one device's request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Follow {
    /// The host's `requested_size` when last read.
    pub seen: u64,
    /// A changed request not met yet (bytes of hot-plug memory to have plugged).
    pub pending: Option<u64>,
    /// Requests met since boot.
    pub met: u64,
    /// Tries that failed (each retried).
    pub failed: u64,
    /// Pages evicted to RAM to give memory back.
    pub evicted: u64,
}

/// What one look at a device's request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing asked.
    Idle,
    /// Plugged this many bytes.
    Grew(u64),
    /// Unplugged this many bytes, evicting this many pages to RAM.
    Shrank(u64, u64),
    /// The request was met already.
    Met,
}

impl Vram {
    /// Reads the host's request for this device's hot-plug memory and, if it changed or an
    /// earlier change is still pending, plugs or removes blocks to meet it. An error leaves
    /// the request pending.
    pub fn follow_host(self: &Arc<Self>) -> Result<Step, DevError> {
        let requested = self.with_hot(|m| {
            m.refresh();
            Ok(m.config.requested_size)
        })?;
        let target = {
            let mut f = self.follow.lock();
            if requested != f.seen {
                f.seen = requested;
                f.pending = Some(requested);
            }
            f.pending
        };
        let Some(target) = target else { return Ok(Step::Idle) };
        let plugged = self.plugged_pages() * PAGE;
        let step = if plugged > target {
            self.shrink_where_possible(plugged - target).map(|evicted| Step::Shrank(plugged - target, evicted))
        } else if plugged < target {
            self.grow(target - plugged).map(|_| Step::Grew(target - plugged))
        } else {
            Ok(Step::Met)
        };
        let mut f = self.follow.lock();
        if let Ok(Step::Shrank(_, n)) = step {
            f.evicted += n;
        }
        match step {
            Ok(_) if f.pending == Some(target) && self.plugged_pages() * PAGE == target => {
                f.pending = None;
                f.met += 1;
            }
            Ok(_) => {}
            Err(_) => f.failed += 1,
        }
        step
    }

    /// What the follower knows of this device's request.
    pub fn follow_state(&self) -> Follow {
        *self.follow.lock()
    }
}

/// Asks the host (a `@@HOST` line, which `cargo xtask` carries out over QMP) to request
/// `bytes` of `v`'s hot-plug memory, then waits, at most `timeout_ms`, until the follower has
/// met the request. It parks while it waits: the other tasks, workloads among them, run on.
pub fn ask_host(v: &Vram, bytes: u64, timeout_ms: u64) -> Result<(), DevError> {
    use crate::devices::ResizeFailure;
    let req = boot::protocol::HostRequest::Resize { device: v.device(), bytes };
    crate::sprintln!("{}", boot::protocol::Tag::Host.line(req));
    let deadline = crate::platform::arch::time::Deadline::after_ms(timeout_ms);
    loop {
        let f = v.follow_state();
        let plugged = v.plugged_pages() * PAGE;
        if f.seen == bytes && f.pending.is_none() && plugged == bytes {
            return Ok(());
        }
        if deadline.passed() {
            let failure = if f.seen != bytes {
                ResizeFailure::HostIgnored { asked: bytes, ms: timeout_ms }
            } else {
                ResizeFailure::NotMet { asked: bytes, plugged, ms: timeout_ms }
            };
            return Err(DevError::Resize { device: v.device(), failure });
        }
        sched::park(Some(5));
    }
}

/// Starts the follower on CPU 0 (where the configuration interrupts go), if a device has
/// hot-plug memory.
pub fn start() -> Result<(), SchedError> {
    if devices::all().iter().any(|d| d.hot_bytes() > 0) {
        // Never joined: it runs for the life of the kernel.
        drop(sched::spawn_on(0, run)?);
    }
    Ok(())
}

/// The follower: parked until a configuration change (or [`POLL_MS`], or [`RETRY_MS`] while
/// a request is pending), then one [`Vram::follow_host`] per device with hot-plug memory.
fn run() {
    let mut seen = CONFIG_CHANGED.count();
    let mut wait = POLL_MS;
    loop {
        seen = CONFIG_CHANGED.wait(seen, wait);
        let Ok(all) = super::all() else {
            wait = POLL_MS;
            continue;
        };
        let mut pending = false;
        for v in all.iter().filter(|v| v.hot_pages() > 0) {
            // A request already pending that failed before is being retried: said once.
            let before = v.follow_state();
            let retry = before.pending.is_some() && before.failed > 0;
            match v.follow_host() {
                Ok(Step::Idle) => {}
                Ok(step) => {
                    let f = v.follow_state();
                    log::info!(
                        "dev{}: the host requests {} MiB of hot-plug memory: {step:?}, {} MiB plugged{}",
                        v.device(),
                        f.seen >> 20,
                        (v.plugged_pages() * PAGE) >> 20,
                        if f.pending.is_some() { " (not met yet)" } else { "" }
                    );
                    pending |= f.pending.is_some();
                }
                Err(e) => {
                    pending = true;
                    if !retry {
                        log::warn!("dev{}: following the host's request: {e}; trying again", v.device());
                    }
                }
            }
        }
        wait = if pending { RETRY_MS } else { POLL_MS };
    }
}
