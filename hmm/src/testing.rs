//! Helpers shared by the host tests.

/// A deterministic xorshift64 generator for randomized tests (seed must be non-zero).
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

use crate::devmmu::{Domain, DomainError, DomainFailure, DomainOp, IoMap};
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use std::sync::Mutex as StdMutex;

/// A device MMU domain that behaves like the virtio-iommu (refuses MAPs over mapped IOVAs,
/// translates by page) and records what it saw in [`Hw`].
/// What the fake hardware saw (shared with the test, outside the mirror's lock).
#[derive(Default)]
pub struct Hw {
    /// IOVA page -> (physical address, writable).
    pub pages: BTreeMap<u64, (u64, bool)>,
    /// Tickets issued and whether each completed.
    pub done: Vec<bool>,
    /// Broken invariants the hardware noticed.
    pub violations: Vec<String>,
    /// The next UNMAP fails.
    pub fail_unmap: bool,
    pub unmaps: u64,
}

pub struct FakeDomain {
    /// The hardware's record.
    pub hw: Arc<StdMutex<Hw>>,
}

impl Domain for FakeDomain {
    type Ticket = usize;
    fn map(&mut self, maps: &[IoMap]) -> Result<(), DomainError> {
        let mut hw = self.hw.lock().unwrap();
        for m in maps {
            for k in 0..m.len / 4096 {
                if hw.pages.insert(m.iova + k * 4096, (m.phys + k * 4096, m.write)).is_some() {
                    hw.violations.push(alloc::format!("MAP over a mapped IOVA {:#x}", m.iova + k * 4096));
                }
            }
        }
        Ok(())
    }
    fn unmap(&mut self, start: u64, end: u64) -> Result<(), DomainError> {
        let mut hw = self.hw.lock().unwrap();
        if core::mem::take(&mut hw.fail_unmap) {
            return Err(DomainError { op: DomainOp::Unmap, failure: DomainFailure::Refused { status: 1 } });
        }
        hw.unmaps += 1;
        let gone: Vec<u64> = hw.pages.range(start..end).map(|(&k, _)| k).collect();
        for k in gone {
            hw.pages.remove(&k);
        }
        Ok(())
    }
    fn settle(&mut self, t: usize) -> Result<(), DomainError> {
        self.hw.lock().unwrap().done[t] = true;
        Ok(())
    }
}
