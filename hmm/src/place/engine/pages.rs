//! The managed pages as every mechanism lays them out, and their data check: one address
//! space with the run's pages at [`BASE`], each page's first word its write count and its
//! second its identity ([`identity`]); and a CPU fault with the policy's window
//! ([`fault_in_window`]). The host stack (`host.rs`) and the kernel's real devices
//! (`kernel/src/experiment/real.rs`) both use it, so a page means the same thing on both
//! platforms.

use super::{CopyFault, DataFault, MechError, PageOp, SetupStep};
use crate::addr::Pfn;
use crate::mm::SharedSpace;
use crate::mm::space::{AddressSpace, Advice, MapRequest};
use crate::mm::vma::Prot;
use crate::place::{Loc, PAGE};
use alloc::vec::Vec;

/// Where the managed pages start in the address space (2 MiB aligned, so the engine's 2 MiB VA
/// blocks are the page tables' PMDs).
pub const BASE: u64 = 0x10_0000_0000;
/// The identity word: page `p`'s second word holds `p ^ MAGIC`.
pub const MAGIC: u64 = 0x5eed_0000_0000_0000;

/// The virtual address of managed page `p`.
pub fn va(p: u32) -> u64 {
    BASE + p as u64 * PAGE
}

/// The identity word of page `p`.
pub fn identity(p: u64) -> u64 {
    p ^ MAGIC
}

/// Which process each managed page belongs to: `(first, end, process)` runs covering
/// `0..pages` in order, adjacent runs of one process merged. A workload (based at `bases[i]`,
/// in process `processes[i]`) owns its pages up to the next workload's base, the alignment
/// gap included.
pub fn process_runs(bases: &[u32], processes: &[u32], pages: u32) -> Vec<(u32, u32, u32)> {
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for (i, (&first, &process)) in bases.iter().zip(processes).enumerate() {
        let end = bases.get(i + 1).copied().unwrap_or(pages).min(pages);
        if first >= end {
            continue;
        }
        match runs.last_mut() {
            Some(last) if last.2 == process && last.1 == first => last.1 = end,
            _ => runs.push((first, end, process)),
        }
    }
    runs
}

/// Maps pages `[first, end)` at their places ([`va`]) in `space`, as [`map`] does: a
/// process's share of the managed pages.
pub fn map_range(space: &mut AddressSpace, first: u32, end: u32) -> Result<(), MechError> {
    let (at, len) = (va(first), (end - first) as u64 * PAGE);
    space
        .mmap(MapRequest::anon(len, Prot::RW).fixed(at))
        .map_err(|error| MechError::Setup(SetupStep::Mmap { len, error }))?;
    space.madvise(at, len, Advice::NoHugePage).map_err(|e| MechError::Setup(SetupStep::Madvise(e)))
}

/// Maps `pages` anonymous pages at [`BASE`] in `space`, in 4 KiB pages (`madvise(NoHugePage)`,
/// so migrations move what the engine asks and no more).
pub fn map(space: &mut AddressSpace, pages: u32) -> Result<(), MechError> {
    let len = pages as u64 * PAGE;
    space
        .mmap(MapRequest::anon(len, Prot::RW).fixed(BASE))
        .map_err(|error| MechError::Setup(SetupStep::Mmap { len, error }))?;
    space.madvise(BASE, len, Advice::NoHugePage).map_err(|e| MechError::Setup(SetupStep::Madvise(e)))
}

/// A CPU fault on `page`, which the page tables have in `from`: `access` makes the access
/// (which faults in the address space's fault path) with the policy's window `[first, end)`
/// set on `space` for the device driver's `migrate_to_ram`, cleared afterwards whatever the
/// access returned. A page already in system memory is refused: the engine only calls this for
/// a page the CPU page tables do not have there.
pub fn fault_in_window(
    space: &SharedSpace,
    page: u32,
    from: Loc,
    (first, end): (u32, u32),
    access: impl FnOnce() -> Result<(), MechError>,
) -> Result<(), MechError> {
    if from == Loc::Cpu {
        return Err(MechError::Misplaced { page, op: PageOp::Access(Loc::Cpu), expected: Loc::Dev(0), found: from });
    }
    space.lock().set_fault_window(Some((va(first), va(end))));
    let r = access();
    space.lock().set_fault_window(None);
    r
}

/// The frames to copy for device `dev`'s read copies of `[first, first + pages)`, all now in
/// `from`: `locate` says where a page is and the physical address of its data, `has_copy`
/// whether `dev` already holds a copy of it. A page elsewhere, or one the device already
/// holds, is an error.
pub fn copy_sources(
    (first, pages): (u32, u32),
    from: Loc,
    dev: u8,
    mut locate: impl FnMut(u32) -> Result<(Loc, u64), MechError>,
    has_copy: impl Fn(u32) -> bool,
) -> Result<Vec<Pfn>, MechError> {
    let mut frames = Vec::with_capacity(pages as usize);
    for p in first..first + pages {
        let (real, pa) = locate(p)?;
        if real != from {
            return Err(MechError::Misplaced { page: p, op: PageOp::Copy, expected: from, found: real });
        }
        if real == Loc::Dev(dev) || has_copy(p) {
            return Err(MechError::Copy { page: p, dev, fault: CopyFault::AlreadyHeld });
        }
        frames.push(Pfn(pa / PAGE));
    }
    Ok(frames)
}

/// Checks the first 16 bytes of a page's data, `words`, as page `p`'s with `made` writes;
/// `copy` is the device whose read copy it is, if it is one.
pub fn check(copy: Option<u8>, p: u32, words: [u8; 16], made: u32) -> Result<(), MechError> {
    let count = u64::from_le_bytes(words[..8].try_into().unwrap_or_default());
    let id = u64::from_le_bytes(words[8..].try_into().unwrap_or_default());
    if id != identity(p as u64) {
        return Err(MechError::Data { page: p, copy, fault: DataFault::OtherPage(id ^ MAGIC) });
    }
    if count != u64::from(made) {
        return Err(MechError::Data { page: p, copy, fault: DataFault::Writes { found: count, made } });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(count: u64, id: u64) -> [u8; 16] {
        let mut w = [0u8; 16];
        w[..8].copy_from_slice(&count.to_le_bytes());
        w[8..].copy_from_slice(&id.to_le_bytes());
        w
    }

    #[test]
    fn each_page_belongs_to_its_workloads_process() {
        // Three workloads at 0, 512 and 1024 of 1536 pages: processes 0, 0, 1.
        assert_eq!(process_runs(&[0, 512, 1024], &[0, 0, 1], 1536), vec![(0, 1024, 0), (1024, 1536, 1)]);
        assert_eq!(process_runs(&[0, 512], &[1, 0], 1024), vec![(0, 512, 1), (512, 1024, 0)]);
        // One process: one run, whatever the workloads.
        assert_eq!(process_runs(&[0, 512, 1024], &[0, 0, 0], 1100), vec![(0, 1100, 0)]);
        assert_eq!(process_runs(&[], &[], 0), vec![]);
    }

    #[test]
    fn a_page_checks_by_identity_and_write_count() {
        assert_eq!(check(None, 7, words(3, identity(7)), 3), Ok(()));
        assert_eq!(
            check(None, 7, words(3, identity(9)), 3),
            Err(MechError::Data { page: 7, copy: None, fault: DataFault::OtherPage(9) })
        );
        assert_eq!(
            check(Some(1), 7, words(2, identity(7)), 3),
            Err(MechError::Data { page: 7, copy: Some(1), fault: DataFault::Writes { found: 2, made: 3 } })
        );
        assert_eq!(va(2), BASE + 2 * PAGE);
    }
}
