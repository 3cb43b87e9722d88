//! The compute engines of the real devices: [`hmm::compute`] run against a device's MMU
//! mirror, its memory (the ivshmem BAR) and its copy engine. A lane's access to a local page
//! reads or writes the BAR; an access to system RAM goes to the frame the device's domain maps
//! at that virtual address (a remote access); a miss is a replayable fault, serviced in
//! batches as a placement policy decides (`hmm::place`, the one policy trait, through
//! [`hmm::compute::Placed`]): by migration (DMA through the copy engine) or remote mapping.
//!
//! The engine runs on the calling CPU: a caller that wants a device's engine on its own core
//! runs `launch` in a task on that CPU (`sched::spawn_on`).
//!
//! Per-device counters ([`DeviceCounters`]) add the fault service's numbers to the device
//! memory's (pages each way, CPU faults) and the copy engine's (bytes DMA'd).

use crate::arch::time;
use crate::copyengine::CopyStats;
use crate::devices::{self, DevError, DevOffset};
use crate::devmmu::DevMirror;
use crate::mm;
use crate::vram::{self, Vram, VramStats};
use alloc::string::ToString;
use alloc::sync::Arc;
use alloc::vec::Vec;
use hmm::compute::{Backend, Counters, Kernel, Placed, RunError};
use hmm::devmmu::{DomainOp, MirrorError, Where};
use hmm::mm::SharedSpace;
use hmm::place::policy::Policy;

const PAGE: u64 = 4096;

struct DeviceBackend {
    vram: Arc<Vram>,
    space: Arc<SharedSpace>,
}

impl DeviceBackend {
    /// The byte offset in this device's memory of `va` in local page `p` (a local page is
    /// always this device's: the mirror's owner is the device's).
    fn local(&self, p: hmm::addr::Pfn, va: u64) -> DevOffset {
        self.vram.offset_of(p).unwrap_or_default().add(va % PAGE)
    }
}

impl Backend for DeviceBackend {
    fn load(&mut self, at: Where, va: u64) -> u64 {
        let mut w = [0u8; 8];
        match at {
            // RAM the domain maps: a frame hmm handed out, read through the checked accessors.
            Where::Ram(pa) => mm::ram::read(pa + va % PAGE, &mut w),
            // Local memory: through the device's window (the BAR or the hot-plug region).
            Where::Local(p) => {
                if let Err(e) = self.vram.dev().read_mem(self.local(p, va), &mut w) {
                    log::error!("dev{}: lane load at {va:#x}: {e}", self.vram.device());
                }
            }
        }
        u64::from_le_bytes(w)
    }
    fn store(&mut self, at: Where, va: u64, value: u64) {
        let w = value.to_le_bytes();
        match at {
            Where::Ram(pa) => mm::ram::write(pa + va % PAGE, &w),
            Where::Local(p) => {
                if let Err(e) = self.vram.dev().write_mem(self.local(p, va), &w) {
                    log::error!("dev{}: lane store at {va:#x}: {e}", self.vram.device());
                }
            }
        }
    }
    fn migrate(&mut self, start: u64, end: u64) -> Result<u64, MirrorError> {
        vram::migrate_to_device(&self.vram, &self.space, start, (end - start) / PAGE)
            .map_err(|e| MirrorError::Domain(crate::devmmu::domain_error(DomainOp::Migrate, &e)))
    }
    fn now(&self) -> u64 {
        time::rdtsc()
    }
}

/// Everything counted for one device.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeviceCounters {
    /// The compute engine's fault service and accesses (service time in TSC cycles).
    pub compute: Counters,
    /// Device memory: pages each way, CPU faults.
    pub vram: VramStats,
    /// The copy engine: requests and bytes each way.
    pub dma: CopyStats,
}

/// Device `n`'s counters so far.
pub fn counters(n: usize) -> Result<DeviceCounters, DevError> {
    let dev = devices::nth(n)?;
    let dma = dev.engine_stats();
    let v = vram::all().map_err(DevError::Memory)?;
    let vram = *v.get(n).ok_or(DevError::NoDevice(n))?.stats.lock();
    let compute = dev.compute_counters();
    Ok(DeviceCounters { compute, vram, dma })
}

/// A kernel that could not run.
#[derive(Debug)]
pub enum LaunchError {
    /// The device or its memory.
    Device(DevError),
    /// A fault the engine could not service.
    Fatal(RunError<MirrorError>),
}

impl core::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Device(e) => write!(f, "{e}"),
            Self::Fatal(e) => write!(f, "{e}"),
        }
    }
}

/// Runs `kernel` on the device `mirror` belongs to, over the address space `space` it mirrors,
/// with batches of at most `batch` faults serviced as `policy` decides for the `pages` pages
/// at `base` (`region`: the kernel's data; faults elsewhere are mapped where they are).
/// Returns this launch's counters (and adds them to the device's).
pub fn launch(
    mirror: &DevMirror,
    space: &Arc<SharedSpace>,
    kernel: &mut dyn Kernel,
    policy: &mut dyn Policy,
    region: (u64, u32),
    batch: usize,
) -> Result<Counters, LaunchError> {
    let dev = mirror.with_domain(|d| d.dev);
    let n = dev.index();
    let v = vram::all().map_err(|e| LaunchError::Device(DevError::Memory(e)))?;
    let vram = v.get(n).ok_or(LaunchError::Device(DevError::NoDevice(n)))?.clone();
    let capacity = vram.pages().min(u32::MAX as u64) as u32;
    let mut backend = DeviceBackend { vram, space: space.clone() };
    let mut c = Counters::default();
    let mut device = Placed::new(mirror, &mut backend, policy, n as u8, region, capacity);
    let r = hmm::compute::run(kernel, &mut device, batch, &mut c);
    dev.add_compute(&c);
    r.map_err(LaunchError::Fatal)?;
    Ok(c)
}

/// A small end-to-end run: a fresh process's array of `pages` pages (each word its index) is
/// incremented by a 32-lane kernel on device `n` (migrate on touch), and the CPU checks every
/// word afterwards. Returns the launch's counters.
pub fn increment_demo(n: usize, pages: u64) -> Result<Counters, alloc::string::String> {
    use crate::mm::uspace;
    use hmm::compute::Increment;
    use hmm::mm::space::{AddressSpace, MapRequest};
    use hmm::mm::vma::Prot;
    let mm = uspace::mm();
    let space = mm.share(AddressSpace::new(mm).map_err(|e| e.to_string())?);
    let words = pages * 512;
    let a = space.lock().mmap(MapRequest::anon(pages * PAGE, Prot::RW)).map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..words).flat_map(|i| i.to_le_bytes()).collect();
    uspace::run(&space, |u| u.write(a, &data)).map_err(|f| alloc::format!("CPU fill: {:?}", f.error))?;
    let m = crate::devmmu::bind(n, &space).map_err(|e| e.to_string())?;
    let mut k = Increment::new(a, words, 1, 32);
    let mut policy = hmm::place::policies::migrate_on_touch();
    let r = launch(&m, &space, &mut k, &mut *policy, (a, pages as u32), hmm::compute::BATCH_MAX);
    m.unbind().map_err(|e| e.to_string())?;
    let c = r.map_err(|e| e.to_string())?;
    let mut back = alloc::vec![0u8; data.len()];
    uspace::run(&space, |u| u.read(a, &mut back)).map_err(|f| alloc::format!("CPU read back: {:?}", f.error))?;
    let ok = back.chunks(8).enumerate().all(|(i, w)| w.try_into().ok().map(u64::from_le_bytes) == Some(i as u64 + 1));
    if !ok || k.sum != words * (words - 1) / 2 {
        return Err("the kernel's results differ from what the CPU reads".into());
    }
    Ok(c)
}
