//! The managed pages as every mechanism lays them out, and their data check: one address
//! space with the run's pages at [`BASE`], each page's first word its write count and its
//! second its identity ([`identity`]). The host stack (`host.rs`) and the kernel's real
//! devices (`kernel/src/experiment/real.rs`) both use it, so a page means the same thing on
//! both platforms.

use super::{DataFault, MechError, SetupStep};
use crate::mm::space::{AddressSpace, Advice, MapRequest};
use crate::mm::vma::Prot;
use crate::place::PAGE;

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

/// Maps `pages` anonymous pages at [`BASE`] in `space`, in 4 KiB pages (`madvise(NoHugePage)`,
/// so migrations move what the engine asks and no more).
pub fn map(space: &mut AddressSpace, pages: u32) -> Result<(), MechError> {
    let len = pages as u64 * PAGE;
    space
        .mmap(MapRequest::anon(len, Prot::RW).fixed(BASE))
        .map_err(|error| MechError::Setup(SetupStep::Mmap { len, error }))?;
    space.madvise(BASE, len, Advice::NoHugePage).map_err(|e| MechError::Setup(SetupStep::Madvise(e)))
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
