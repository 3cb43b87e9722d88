//! The machine a stress run drives: the memory manager over fake RAM (pooled between runs),
//! the three dmirror devices, their copy engines with injectable failures ([`Engine`]), and
//! the driver's own interval ops ([`Checker`]).

use super::*;

/// A copy engine over RAM that fails its next copy on request.
#[derive(Debug)]
pub(super) struct Engine {
    pub(super) ram: Arc<RamBacking>,
    pub(super) fail_next: AtomicBool,
    /// Device memory the device could not add (no RAM for it, or no frame-table section).
    pub(super) add_failures: AtomicU64,
}

impl Backing for Engine {
    fn add_chunk(
        &self,
        pm: &Arc<Pagemaps>,
        kind: MemoryKind,
        owner: Owner,
        frames: u64,
        ops: Weak<dyn PagemapOps>,
    ) -> Result<Arc<DevPagemap>, Error> {
        let r = self.ram.add_chunk(pm, kind, owner, frames, ops);
        if r.is_err() {
            self.add_failures.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn remove_chunk(&self, pm: &Arc<Pagemaps>, chunk: &Arc<DevPagemap>) -> Result<(), Error> {
        self.ram.remove_chunk(pm, chunk)
    }
    fn alloc_storage(&self, order: u32) -> Result<Pfn, Error> {
        self.ram.alloc_storage(order)
    }
    fn free_storage(&self, frame: Pfn) {
        self.ram.free_storage(frame)
    }
    fn copy(&self, pairs: &[(Pfn, Option<Pfn>)]) -> Result<(), Error> {
        if self.fail_next.swap(false, Ordering::Relaxed) {
            // A real engine may have written part of the destination before failing.
            if let Some(&(d, _)) = pairs.first() {
                self.ram.copy(&[(d, None)])?;
            }
            return Err(Error::Io("copy engine failure injected by the stress test"));
        }
        self.ram.copy(pairs)
    }
    fn describe(&self) -> &str {
        "RAM with injectable copy failures (stress)"
    }
}

/// The stress driver's own interval: checks the sequence protocol's callback side and, when
/// armed, refuses one blockable invalidation.
#[derive(Debug, Default)]
pub(super) struct Checker {
    pub(super) refuse_next: AtomicBool,
    pub(super) calls: AtomicU64,
}

impl IntervalOps for Checker {
    fn invalidate(&self, sub: &crate::notifier::Interval, _range: &crate::mm::notify::Range, cur_seq: u64) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed);
        sub.set_seq(cur_seq);
        !self.refuse_next.swap(false, Ordering::Relaxed)
    }
}

/// The machine: memory manager, devices and their engines.
pub(super) struct Machine {
    pub(super) plat: Arc<FakePlatform>,
    pub(super) mm: Arc<Mm>,
    pub(super) devs: [Arc<DmirrorDevice>; NDEV],
    pub(super) engines: [Arc<Engine>; NDEV],
    /// Free frames once the machine is up (before any device memory).
    pub(super) baseline: u64,
}

/// Fake RAM of machines that are done, for the next ones. A memory manager with device
/// memory is never freed (it and its pagemap registry hold each other), so without reuse every
/// run would leak its whole fake RAM; this way it leaks only its frame table and zero pages.
static POOL: spin::Mutex<Vec<Arc<FakePlatform>>> = spin::Mutex::new(Vec::new());

impl Drop for Machine {
    fn drop(&mut self) {
        for d in &self.devs {
            let _ = d.release();
        }
        if self.plat.free_frames() >= RAM_FRAMES as u64 * 7 / 8 {
            POOL.lock().push(self.plat.clone());
        }
    }
}

impl Machine {
    pub(super) fn new() -> Result<Machine, Broken> {
        let pooled = POOL.lock().pop();
        let plat = pooled.unwrap_or_else(|| Arc::new(FakePlatform::new(RAM_FRAMES)));
        let mm = Mm::new(plat.clone(), &[(Pfn(BASE_PFN), RAM_FRAMES as u64)])
            .map_err(|e| Broken::Setup(format!("Mm::new: {e}")))?;
        let pm = Pagemaps::install(&mm).map_err(|e| Broken::Setup(format!("Pagemaps::install: {e}")))?;
        let baseline = plat.free_frames();
        let engines: [Arc<Engine>; NDEV] = core::array::from_fn(|_| {
            Arc::new(Engine {
                ram: RamBacking::new(&mm),
                fail_next: AtomicBool::new(false),
                add_failures: AtomicU64::new(0),
            })
        });
        let devs: [Arc<DmirrorDevice>; NDEV] = core::array::from_fn(|i| {
            let kind = if i < 2 { MemoryKind::Private } else { MemoryKind::Coherent };
            let chunk = if i < 2 { CHUNK_BYTES } else { 8 << 20 };
            let b: Arc<dyn Backing> = engines[i].clone();
            DmirrorDevice::with_backing(&pm, kind, Owner(0x5700 + i as u64), chunk, b)
        });
        Ok(Machine { plat, mm, devs, engines, baseline })
    }

    pub(super) fn private(&self, d: usize) -> bool {
        self.devs[d].kind() == MemoryKind::Private
    }
}
