//! The CPU cores' line costs from the ACPI HMAT (`cost.lines = "hmat"`): each engine core
//! runs on a CPU whose proximity domain the SRAT gives.

use super::*;
use crate::arch::smp;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use hmm::place::cost::{self, HmatValue};

/// The SRAT proximity domain of CPU `cpu`.
pub(super) fn cpu_domain(srat: &drivers::acpi::srat::Srat, cpu: usize) -> Result<u32, HmatError> {
    let apic = smp::cpu(cpu).apic_id.load(Ordering::Relaxed) as u32;
    srat.cpus.iter().find(|a| a.apic_id == apic).map(|a| a.domain).ok_or(HmatError::NoAffinity { cpu, apic })
}

/// Gives each engine CPU core its line cost on memory domain `memory`, from the ACPI HMAT:
/// core `c` runs on CPU `c` ([`Real::on_core`]), whose domain the SRAT gives.
pub(super) fn hmat_lines(cost: &mut hmm::place::cost::CostModel, cores: u32, memory: u32) -> Result<(), HmatError> {
    let s = crate::system().ok_or(HmatError::NoSystem)?;
    let srat = s.platform.srat.as_ref().ok_or(HmatError::NoTable("SRAT"))?;
    let hmat = s.platform.hmat.as_ref().ok_or(HmatError::NoTable("HMAT"))?;
    let domains =
        (0..cores as usize).map(|c| cpu_domain(srat, c % smp::count())).collect::<Result<Vec<u32>, HmatError>>()?;
    let values: Vec<HmatValue> = hmat
        .localities
        .iter()
        .map(|l| HmatValue {
            initiator: l.initiator,
            target: l.target,
            latency: l.data_type.is_latency(),
            value: l.value,
        })
        .collect();
    cost.cpu_core_line_ns = cost::cpu_lines_from_hmat(&domains, memory, &values).map_err(HmatError::Cost)?;
    log::info!("experiment: CPU line costs from the HMAT on memory domain {memory}: {:?} ns", cost.cpu_core_line_ns);
    Ok(())
}
