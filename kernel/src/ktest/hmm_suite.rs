//! The hmm-tests acceptance suite in the kernel: every scenario of
//! [`hmm::selftests::SCENARIOS`] (and our own [`hmm::selftests::EXTRA`]) in both variants, on real page tables, with the CPU side done
//! by real loads and stores (each fault a real #PF resolved by the address space, device-private
//! pages migrated back by their pagemap from inside the fault handler).
//!
//! The four dmirror devices and the two old-API devices live for the whole run and give their memory back in
//! [`teardown`], before the run's frame-leak check.

use crate::mm::uspace;
use alloc::string::String;
use alloc::sync::Arc;
use hmm::mm::SharedSpace;
use hmm::mm::space::FaultError;
use hmm::selftests::{Cpu, EXTRA, Env, Outcome, SCENARIOS, Variant};
use spin::Once;

/// Device memory is added 8 MiB at a time.
const CHUNK: u64 = 8 << 20;

/// Real CPU accesses: run in the address space and copy with the exception-table routine.
struct KernelCpu;

impl Cpu for KernelCpu {
    fn read(&self, space: &Arc<SharedSpace>, va: u64, buf: &mut [u8]) -> Result<(), FaultError> {
        uspace::run(space, |u| u.read(va, buf)).map_err(|f| f.error)
    }
    fn write(&self, space: &Arc<SharedSpace>, va: u64, data: &[u8]) -> Result<(), FaultError> {
        uspace::run(space, |u| u.write(va, data)).map_err(|f| f.error)
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

/// Scenario-variant pairs: the hmm-tests scenarios, then our own ([`EXTRA`]).
pub fn count() -> usize {
    (SCENARIOS.len() + EXTRA.len()) * 2
}

fn pick(i: usize) -> Option<(&'static hmm::selftests::Scenario, Variant)> {
    Some((SCENARIOS.iter().chain(EXTRA).nth(i / 2)?, Variant::ALL[i % 2]))
}

/// The kselftest name of pair `i`.
pub fn name(i: usize) -> Option<String> {
    pick(i).map(|(s, v)| s.full_name(v))
}

/// Runs pair `i`: `Ok(None)` passed, `Ok(Some(reason))` skipped.
pub fn run(i: usize) -> Result<Option<&'static str>, String> {
    let (s, v) = pick(i).ok_or_else(|| String::from("no such scenario"))?;
    match (s.run)(env()?, v)? {
        Outcome::Pass => Ok(None),
        Outcome::Skip(why) => Ok(Some(why)),
    }
}

/// Evicts and removes the test devices' memory.
pub fn teardown() -> Result<(), String> {
    let Some(Ok(env)) = ENV.get() else { return Ok(()) };
    env.release()
}
