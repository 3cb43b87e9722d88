//! A model mechanism: keeps its own copy of where every page is, of every page's write count
//! and of each read copy's, checks each call against them, and at the end that no copy is stale. The host tests
//! run the engine over it; the kernel can too (`mechanism = "model"`), to separate policy effects
//! from the real devices' costs.

use super::{CopyFault, MechError, Mechanism, PageOp};
use crate::place::{Loc, MAX_DEVICES};
use alloc::vec;
use alloc::vec::Vec;

/// The model.
#[derive(Debug, Clone)]
pub struct Model {
    loc: Vec<Loc>,
    copies: Vec<u8>,
    /// Devices that map each page remotely where it is.
    remote: Vec<u8>,
    data: Vec<u32>,
    copy_data: Vec<[u32; MAX_DEVICES]>,
    clock: u64,
    /// Each device's capacity, pages (`None`: unlimited).
    caps: Vec<u32>,
    /// Calls made (migrations, copies, accesses).
    pub calls: u64,
}

impl Model {
    /// `pages` pages, all in system memory.
    pub fn new(pages: u32) -> Self {
        Model {
            loc: vec![Loc::Cpu; pages as usize],
            copies: vec![0; pages as usize],
            remote: vec![0; pages as usize],
            data: vec![0; pages as usize],
            copy_data: vec![[0; MAX_DEVICES]; pages as usize],
            clock: 0,
            caps: Vec::new(),
            calls: 0,
        }
    }
    /// Where page `p` is.
    pub fn loc(&self, p: u32) -> Loc {
        self.loc[p as usize]
    }
    /// Writes made to page `p`.
    pub fn writes(&self, p: u32) -> u32 {
        self.data[p as usize]
    }
}

impl Model {
    /// Pages device `d` holds (its own and read copies).
    fn used(&self, d: u8) -> usize {
        (0..self.loc.len()).filter(|&p| self.loc[p] == Loc::Dev(d) || self.copies[p] & (1 << d) != 0).count()
    }
}

impl Mechanism for Model {
    fn set_capacities(&mut self, capacities: &[u32]) {
        self.caps = capacities.to_vec();
    }
    fn migrate(&mut self, first: u32, pages: u32, from: Loc, to: Loc) -> Result<u64, MechError> {
        self.calls += 1;
        let mut room = match to {
            Loc::Dev(d) => self.caps.get(d as usize).map_or(usize::MAX, |&c| (c as usize).saturating_sub(self.used(d))),
            Loc::Cpu => usize::MAX,
        };
        for p in first..first + pages {
            if room == 0 {
                // Full: the rest stays (the engine evicts and asks again).
                break;
            }
            room -= 1;
            let here = self.loc.get(p as usize).copied().ok_or(MechError::PageOutOfRange(p))?;
            if here != from {
                return Err(MechError::Misplaced { page: p, op: PageOp::Migrate, expected: from, found: here });
            }
            if self.copies[p as usize] != 0 {
                return Err(MechError::CopiesOutstanding { page: p, writer: None });
            }
            self.loc[p as usize] = to;
            self.remote[p as usize] = 0;
        }
        self.clock += 1000 * pages as u64;
        Ok(1000 * pages as u64)
    }
    fn device_translate(&mut self, dev: u8, page: u32, write: bool) -> Result<Option<Loc>, MechError> {
        let p = page as usize;
        let here = *self.loc.get(p).ok_or(MechError::PageOutOfRange(page))?;
        Ok(if here == Loc::Dev(dev) || (!write && self.copies[p] & (1 << dev) != 0) {
            Some(Loc::Dev(dev))
        } else if self.remote[p] & (1 << dev) != 0 {
            Some(here)
        } else {
            None
        })
    }
    fn map_remote(&mut self, first: u32, pages: u32, dev: u8) -> Result<(), MechError> {
        for p in first..first + pages {
            let here = *self.loc.get(p as usize).ok_or(MechError::PageOutOfRange(p))?;
            if here != Loc::Dev(dev) {
                self.remote[p as usize] |= 1 << dev;
            }
        }
        Ok(())
    }
    fn resident(&mut self, page: u32) -> Result<Loc, MechError> {
        self.loc.get(page as usize).copied().ok_or(MechError::PageOutOfRange(page))
    }
    fn cpu_fault(&mut self, page: u32, write: bool, first: u32, pages: u32) -> Result<u64, MechError> {
        let from = *self.loc.get(page as usize).ok_or(MechError::PageOutOfRange(page))?;
        if from == Loc::Cpu {
            return Err(MechError::Misplaced {
                page,
                op: PageOp::Access(Loc::Cpu),
                expected: Loc::Dev(0),
                found: from,
            });
        }
        let end = first.saturating_add(pages).min(self.loc.len() as u32);
        let mut moved = 0;
        for p in first.min(page)..end.max(page + 1) {
            if self.loc[p as usize] == from && (first..end).contains(&p) || p == page {
                if self.copies[p as usize] != 0 {
                    return Err(MechError::CopiesOutstanding { page: p, writer: None });
                }
                self.loc[p as usize] = Loc::Cpu;
                self.remote[p as usize] = 0;
                moved += 1;
            }
        }
        self.clock += 1000 * moved;
        self.access(Loc::Cpu, Loc::Cpu, page, write)?;
        Ok(1000 * moved)
    }
    fn can_duplicate(&self) -> bool {
        true
    }
    fn duplicate(&mut self, first: u32, pages: u32, from: Loc, dev: u8) -> Result<u64, MechError> {
        self.calls += 1;
        for p in first..first + pages {
            if self.loc[p as usize] != from {
                return Err(MechError::Misplaced {
                    page: p,
                    op: PageOp::Copy,
                    expected: from,
                    found: self.loc[p as usize],
                });
            }
            self.copies[p as usize] |= 1 << dev;
            self.remote[p as usize] &= !(1 << dev);
            self.copy_data[p as usize][dev as usize] = self.data[p as usize];
        }
        Ok(1000 * pages as u64)
    }
    fn drop_copy(&mut self, page: u32, dev: u8) -> Result<(), MechError> {
        if self.copies[page as usize] & (1 << dev) == 0 {
            return Err(MechError::Copy { page, dev, fault: CopyFault::Missing });
        }
        self.copies[page as usize] &= !(1 << dev);
        Ok(())
    }
    fn access(&mut self, by: Loc, at: Loc, page: u32, write: bool) -> Result<(), MechError> {
        self.calls += 1;
        self.clock += 10;
        let p = page as usize;
        let home = self.loc[p];
        let copy = matches!(at, Loc::Dev(d) if self.copies[p] & (1 << d) != 0);
        if at != home && !copy {
            return Err(MechError::Misplaced { page, op: PageOp::Access(by), expected: at, found: home });
        }
        if write {
            if copy || self.copies[p] != 0 {
                return Err(MechError::CopiesOutstanding { page, writer: Some(by) });
            }
            self.data[p] += 1;
        } else if let (true, Loc::Dev(d)) = (copy, at)
            && self.copy_data[p][d as usize] != self.data[p]
        {
            return Err(MechError::Copy { page, dev: d, fault: CopyFault::Stale });
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<(), MechError> {
        for p in 0..self.data.len() {
            for d in 0..MAX_DEVICES {
                if self.copies[p] & (1 << d) != 0 && self.copy_data[p][d] != self.data[p] {
                    return Err(MechError::Copy { page: p as u32, dev: d as u8, fault: CopyFault::Stale });
                }
            }
        }
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.clock
    }
}
