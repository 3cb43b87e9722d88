//! The 4.14-5.3 migration call: `migrate_vma(ops, vma, start, end, src, dst, private)` with
//! the driver's `alloc_and_copy` and `finalize_and_map` callbacks (Christoph Hellwig's 5.4
//! series turned it "upside down" into `migrate_vma_setup` / `pages` / `finalize`).
//!
//! Mapping onto the core: setup, `alloc_and_copy`, [`MigrateVma::pages`], `finalize_and_map`,
//! [`MigrateVma::finalize`] — exactly the order the old function ran them in. That generation
//! collected system pages and device-private pages in one pass; here both are selected (the
//! device pages by the caller's `owner`, since the core needs one), no compound pages (it had
//! none).

use crate::mm::migrate::{MigrateArgs, MigratePfn, MigrateVma, Select};
use crate::mm::notify::Owner;
use crate::mm::space::AddressSpace;

use super::LegacyError;

/// The driver callbacks (`struct migrate_vma_ops`).
pub trait MigrateOps {
    /// `alloc_and_copy`: for each `src[i]` marked to migrate, allocate a locked destination,
    /// copy (or clear, for an entry without a page) and set `dst[i]`; leave 0 to decline.
    fn alloc_and_copy(&self, start: u64, src: &[MigratePfn], dst: &mut [MigratePfn]);
    /// `finalize_and_map`: the pages whose `src[i]` is still marked moved; update the device's
    /// page table for them.
    fn finalize_and_map(&self, start: u64, src: &[MigratePfn], dst: &[MigratePfn]);
}

/// `migrate_vma`: migrates `[start, end)` (inside one VMA) with the driver's callbacks;
/// returns the number of pages that moved. The caller holds the address space. From an
/// [`HmmDevmem`](super::devmem::HmmDevmem) `fault` callback, pass the faulting page as
/// `fault_page` (the core holds it locked; 4.14 had no such argument, and no such lock).
pub fn migrate_vma(
    ops: &dyn MigrateOps,
    space: &mut AddressSpace,
    (start, end): (u64, u64),
    owner: Owner,
    fault_page: Option<crate::addr::Pfn>,
) -> Result<usize, LegacyError> {
    let select = Select { system: true, device_private: true, device_coherent: true, compound: false };
    let args = MigrateArgs { start, end, owner, select, fault_page };
    let mut mig: MigrateVma<'_> = space.migrate_vma_setup(args).map_err(|e| match e {
        crate::mm::Error::Invalid(why) => LegacyError::Invalid(why),
        _ => LegacyError::NoMemory,
    })?;
    let src: alloc::vec::Vec<MigratePfn> = mig.src().to_vec();
    ops.alloc_and_copy(start, &src, mig.dst_mut());
    mig.pages();
    let moved = mig.src().iter().zip(mig.dst()).filter(|(s, d)| s.is_migrate() && d.pfn().is_some()).count();
    ops.finalize_and_map(start, mig.src(), mig.dst());
    mig.finalize();
    Ok(moved)
}
