//! The hmm-tests acceptance suite in the kernel: every scenario of
//! [`hmm::selftests::SCENARIOS`] (and our own [`hmm::selftests::EXTRA`]) in both variants, on real page tables, with the CPU side done
//! by real loads and stores (each fault a real #PF resolved by the address space, device-private
//! pages migrated back by their pagemap from inside the fault handler).
//!
//! The suite runs twice. First over dmirror devices as Linux's `test_hmm` builds them (device
//! memory emulated with RAM, CPU copies). Then, named `real/...`, over the real devices: each
//! dmirror device's memory is carved out of a device's BAR and every migration copy is DMA by
//! the devices' copy engines ([`BarBacking`]); private memory is BAR frames behind unused frame
//! numbers, coherent memory is BAR frames the CPU maps. `hmm_dmirror0`/`2` use dev0,
//! `hmm_dmirror1`/`3` use dev1 (dev0 again on a one-device machine), so the two-device
//! scenarios run across two real devices. A machine without a device of private memory skips
//! each `real/` pair with the reason (no device at all, or only coherent ones); one whose PCI
//! bus has device functions that did not become devices fails them.
//!
//! The devices live for the whole run and give their memory back in [`teardown`], before the
//! run's frame-leak check; it also checks that the real run did copy by DMA.

use crate::mm::uspace;
use crate::vram::backing::BarBacking;
use alloc::string::String;
use alloc::sync::Arc;
use hmm::dmirror::Backing;
use hmm::mm::SharedSpace;
use hmm::mm::space::FaultError;
use hmm::selftests::{Cpu, EXTRA, Env, Outcome, SCENARIOS, Variant};
use spin::Once;

/// Device memory is added 8 MiB at a time.
const CHUNK: u64 = 8 << 20;
/// On the real devices (of 32 MiB and more), 4 MiB at a time.
const REAL_CHUNK: u64 = 4 << 20;

/// Real CPU accesses: run in the address space and copy with the exception-table routine.
struct KernelCpu;

impl Cpu for KernelCpu {
    fn read(&self, space: &Arc<SharedSpace>, va: u64, buf: &mut [u8]) -> Result<(), FaultError> {
        uspace::run(space, |u| u.read(va, buf)).map_err(|f| f.error)
    }
    fn write(&self, space: &Arc<SharedSpace>, va: u64, data: &[u8]) -> Result<(), FaultError> {
        uspace::run(space, |u| u.write(va, data)).map_err(|f| f.error)
    }
    /// A task on the last CPU (the same CPU on a one-CPU machine, where preemption interleaves
    /// the two), joined within 10 s.
    fn spawn(&self, pause_us: u64, task: alloc::boxed::Box<dyn FnOnce() + Send>) -> Option<hmm::selftests::Join> {
        let cpu = crate::arch::smp::count() - 1;
        let h = crate::sched::spawn_on(cpu, move || {
            crate::arch::time::delay_ns(pause_us * 1000);
            task()
        });
        Some(alloc::boxed::Box::new(move || {
            h.and_then(|h| h.join(10_000)).map_err(|e| alloc::format!("the second thread: {e}"))
        }))
    }
}

static CPU: KernelCpu = KernelCpu;
static ENV: Once<Result<Env<'static>, String>> = Once::new();

fn env() -> Result<&'static Env<'static>, String> {
    ENV.call_once(|| {
        crate::vram::pagemaps()
            .and_then(|pm| Env::with_pagemaps(pm, &CPU, CHUNK))
            .map_err(|e| alloc::format!("creating the test devices: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The suite's devices on the real devices, with their backings (for the DMA counters).
type RealEnv = (Env<'static>, [Arc<BarBacking>; 4]);
static REAL: Once<Result<RealEnv, String>> = Once::new();

/// The suite's environment on the real devices, or why this machine cannot have one (every
/// `real/` pair then skips with that reason). A machine whose PCI bus has device functions
/// that did not all become devices fails instead: it is supposed to have them.
fn real_env() -> Result<Result<&'static Env<'static>, &'static str>, String> {
    let all = crate::vram::all().map_err(|e| alloc::format!("registering device memory: {e}"))?;
    // Dmirror memory is carved out of private device memory (a coherent device's BAR is its
    // own pagemap already).
    let devices: alloc::vec::Vec<_> = all.iter().filter(|v| v.kind() == hmm::pagemap::MemoryKind::Private).collect();
    if devices.is_empty() {
        let functions =
            crate::system::system().map_or(0, |s| s.pci.functions.iter().filter(|f| f.name() == "ivshmem").count());
        if functions > all.len() {
            return Err(alloc::format!(
                "the PCI bus has {functions} device functions (ivshmem) but only {} devices have memory registered",
                all.len()
            ));
        }
        return Ok(Err(if all.is_empty() {
            "this machine has no device (no ivshmem function on its PCI bus)"
        } else {
            "every device of this machine has coherent memory; the real run carves dmirror memory out of private device memory"
        }));
    }
    REAL.call_once(|| {
        let dev = |n: usize| BarBacking::new(devices[n % devices.len()]);
        let backings = [dev(0), dev(1), dev(0), dev(1)];
        let as_dyn: [Arc<dyn Backing>; 4] = core::array::from_fn(|i| backings[i].clone() as Arc<dyn Backing>);
        crate::vram::pagemaps()
            .and_then(|pm| Env::with_backings(pm, &CPU, REAL_CHUNK, as_dyn))
            .map(|env| (env, backings))
            .map_err(|e| alloc::format!("creating the test devices on the real devices: {e}"))
    })
    .as_ref()
    .map(|(env, _)| Ok(env))
    .map_err(Clone::clone)
}

fn pairs() -> usize {
    (SCENARIOS.len() + EXTRA.len()) * 2
}

/// Scenario-variant pairs: the hmm-tests scenarios, then our own ([`EXTRA`]), emulated, then
/// on the real devices.
pub fn count() -> usize {
    pairs() * 2
}

fn pick(i: usize) -> Option<(&'static hmm::selftests::Scenario, Variant, bool)> {
    if i >= count() {
        return None;
    }
    let (real, j) = (i >= pairs(), i % pairs());
    Some((SCENARIOS.iter().chain(EXTRA).nth(j / 2)?, Variant::ALL[j % 2], real))
}

/// The kselftest name of pair `i` (`real/` in front on the real devices).
pub fn name(i: usize) -> Option<String> {
    pick(i).map(|(s, v, real)| if real { alloc::format!("real/{}", s.full_name(v)) } else { s.full_name(v) })
}

/// Runs pair `i`: `Ok(None)` passed, `Ok(Some(reason))` skipped.
pub fn run(i: usize) -> Result<Option<&'static str>, String> {
    let (s, v, real) = pick(i).ok_or_else(|| String::from("no such scenario"))?;
    let env = if real {
        match real_env()? {
            Ok(env) => env,
            Err(why) => return Ok(Some(why)),
        }
    } else {
        env()?
    };
    match (s.run)(env, v)? {
        Outcome::Pass => Ok(None),
        Outcome::Skip(why) => Ok(Some(why)),
    }
}

/// Evicts and removes the test devices' memory; the carved device memory goes back to its
/// device. Fails if the real run copied nothing by DMA.
pub fn teardown() -> Result<(), String> {
    if let Some(Ok(env)) = ENV.get() {
        env.release()?;
    }
    if let Some(Ok((env, backings))) = REAL.get() {
        env.release()?;
        for (n, b) in backings.iter().enumerate() {
            let dma = b.dma_pages.load(core::sync::atomic::Ordering::Relaxed);
            let cpu = b.cpu_pages.load(core::sync::atomic::Ordering::Relaxed);
            log::info!("hmm_dmirror{n} on {}: {dma} pages copied by DMA, {cpu} by the CPU", b.describe());
            if dma == 0 {
                return Err(alloc::format!("hmm_dmirror{n} on the real devices copied nothing by DMA"));
            }
        }
        for v in crate::vram::all().map_err(|e| alloc::format!("{e}"))? {
            if v.in_use() != 0 {
                return Err(alloc::format!(
                    "dev{}: {} device pages still in use after the suite",
                    v.device(),
                    v.in_use()
                ));
            }
        }
    }
    Ok(())
}
