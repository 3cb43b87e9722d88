//! Executing the stress run's operations: the dispatcher (`World::exec`) and the data
//! operations: device reads and writes, migration to a device and back (with injected copy,
//! allocation and RAM failures), and eviction (device memory release). Each checks its
//! outcome and the data against the shadow model.

use super::*;

impl World {
    // -- execution --------------------------------------------------------------------------

    pub(super) fn exec(&mut self, op: Op) -> Check {
        self.stats.count(op.kind());
        match op {
            Op::CpuRead { p, at, n, inject } => {
                if inject == Inject::Ram {
                    self.m.plat.fail_allocs.store(1, Ordering::Relaxed);
                }
                let mut r = Ok(());
                for i in at..at + n {
                    r = self.cpu_read_page(p, i, inject == Inject::Ram);
                    if r.is_err() {
                        break;
                    }
                }
                self.m.plat.fail_allocs.store(0, Ordering::Relaxed);
                r
            }
            Op::CpuWrite { p, at, n } => (at..at + n).try_for_each(|i| self.cpu_write_page(p, i)),
            Op::DevRead { p, d, at, n } => self.dev_read(p, d, at, n),
            Op::DevWrite { p, d, at, n } => self.dev_write(p, d, at, n),
            Op::ToDev { p, d, at, n, inject } => self.op_to_dev(p, d, at, n, inject),
            Op::ToSys { p, d, at, n, inject } => self.op_to_sys(p, d, at, n, inject),
            Op::Protect { p, at, n, prot } => self.protect(p, at, n, prot),
            Op::Unmap { p, at, n } => {
                let r = self.procs[p].space.lock().munmap(va(at), n as u64 * PAGE);
                r.map_err(|e| outcome(op, e, "Ok"))?;
                self.procs[p].pages[at..at + n].iter_mut().for_each(|pg| *pg = None);
                Ok(())
            }
            Op::Map { p, at, n, prot, huge, populate } => {
                let mut req = MapRequest::anon(n as u64 * PAGE, prot).fixed(va(at));
                if populate {
                    req = req.populate();
                }
                let space = self.procs[p].space.clone();
                let mut s = space.lock();
                let r = s.mmap(req);
                if r != Ok(va(at)) {
                    return Err(outcome(op, r, "Ok(the fixed address)"));
                }
                if let Some(h) = huge {
                    let a = if h { Advice::HugePage } else { Advice::NoHugePage };
                    s.madvise(va(at), n as u64 * PAGE, a).map_err(|e| outcome(op, e, "Ok from madvise"))?;
                }
                drop(s);
                let page = Page { prot, val: Val::known(0), loc: Loc::Ram };
                self.procs[p].pages[at..at + n].iter_mut().for_each(|pg| *pg = Some(page));
                Ok(())
            }
            Op::Remap { p, from, n, to, keep } => self.remap(p, from, n, to, keep),
            Op::Advise { p, at, n, advice } => self.advise(p, at, n, advice),
            Op::Fork { p } => {
                if !self.cfg.on(Feature::ForkWithDevicePages) {
                    self.evict(p, &[0, 1])?;
                }
                let child = self.procs[p].space.lock().fork().map_err(|e| outcome(op, e, "Ok"))?;
                let space = self.m.mm.share(child);
                let pages = self.procs[p].pages.clone();
                self.add_proc(space, pages)
            }
            Op::Exit { p } => {
                let proc = self.procs.remove(p);
                self.close_all(proc)
            }
            Op::Snapshot { p, d, at, n } => self.snapshot(p, d, at, n),
            Op::Exclusive { p, d, at, n, then_cpu } => self.exclusive(p, d, at, n, then_cpu),
            Op::RangeFault { p, at, n, reqs, owner } => self.range_fault(p, at, n, reqs, owner),
            Op::Release { d } => {
                if self.m.private(d) {
                    self.private_releases += 1;
                }
                self.m.devs[d].release().map_err(|e| outcome(op, e, "Ok"))?;
                for proc in &mut self.procs {
                    for pg in proc.pages.iter_mut().flatten() {
                        if pg.loc == Loc::Dev(d) {
                            pg.loc = Loc::Ram;
                        }
                    }
                }
                if self.m.devs[d].pages_in_use() != 0 {
                    return Err(outcome(op, self.m.devs[d].pages_in_use(), "0 device pages in use after it"));
                }
                Ok(())
            }
            Op::Close { p, d } => {
                if !self.cfg.on(Feature::CloseWithDevicePages) && self.m.private(d) && self.procs[p].files[d].is_some()
                {
                    self.evict(p, &[d])?;
                }
                if let Some(f) = self.procs[p].files[d].take() {
                    f.close().map_err(|e| outcome(op, e, "Ok"))?;
                }
                Ok(())
            }
            Op::SecondFile { p, at, n } => {
                // A second file on device 0 migrates; then the first file's device reads.
                let f = match self.procs[p].extra.clone() {
                    Some(f) => f,
                    None => {
                        let f = Dmirror::open(&self.m.devs[0], &self.procs[p].space)
                            .map_err(|e| outcome("open dev0 (second file)", e, "Ok"))?;
                        self.procs[p].extra = Some(f.clone());
                        f
                    }
                };
                self.migrate_with((p, 0), (at, n), Inject::None, &f, "second file")?;
                self.dev_read(p, 0, at, n)
            }
            Op::Refuse { p, at, n } => {
                self.checker.refuse_next.store(true, Ordering::Relaxed);
                let r = self.procs[p].space.lock().munmap(va(at), n as u64 * PAGE);
                self.checker.refuse_next.store(false, Ordering::Relaxed);
                r.map_err(|e| outcome(op, e, "Ok"))?;
                self.procs[p].pages[at..at + n].iter_mut().for_each(|pg| *pg = None);
                // The notifier must still work: a device read of the next pages sees fresh data.
                let subs = Subscriptions::of(&mut self.procs[p].space.lock());
                if subs.is_invalidating() {
                    return Err(outcome(op, "the sequence stays odd", "no invalidation running afterwards"));
                }
                Ok(())
            }
        }
    }

    pub(super) fn dev_read(&mut self, p: usize, d: usize, at: usize, n: usize) -> Check {
        let f = self.file(p, d)?;
        let ok = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.prot.read()));
        let r = f.read(va(at), n as u64);
        let call = format_args!("dev{d} READ {}", R(at, n));
        self.expected(ok);
        match r {
            Ok((buf, _)) if ok => {
                self.check_buf(p, at, &buf, &format_args!("dev{d} READ"))?;
                self.set_loc(p, at, n, |l| match l {
                    Loc::Dev(x) if x < 2 && x != d => Loc::Ram,
                    l => l,
                });
                Ok(())
            }
            Err(CmdError { errno: crate::dmirror::EFAULT, .. }) if !ok => {
                self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
                Ok(())
            }
            r => Err(outcome(call, r.map(|(_, c)| c), if ok { "Ok" } else { "Err(EFAULT)" })),
        }
    }

    pub(super) fn dev_write(&mut self, p: usize, d: usize, at: usize, n: usize) -> Check {
        let f = self.file(p, d)?;
        // The first page the write cannot go to, and the errno it gives.
        let bad = (at..at + n).find_map(|i| match self.page(p, i) {
            None => Some((i, crate::dmirror::EFAULT)),
            Some(pg) if !pg.prot.read() => Some((i, crate::dmirror::EFAULT)),
            Some(pg) if !pg.prot.write() => Some((i, crate::dmirror::EPERM)),
            _ => None,
        });
        let all_ram = self.all(p, at, n, |pg| pg.is_none_or(|pg| pg.loc == Loc::Ram));
        let tags: Vec<u64> = (0..n).map(|_| self.tag()).collect();
        let r = f.write(va(at), &page_images(&tags));
        let call = format_args!("dev{d} WRITE {}", R(at, n));
        self.expected(bad.is_none());
        match (bad, r) {
            (None, Ok(_)) => {
                for (k, &t) in tags.iter().enumerate() {
                    let pg = self.procs[p].pages[at + k].as_mut().expect("mapped");
                    pg.val = Val::known(t);
                    pg.loc = match pg.loc {
                        Loc::Ram => Loc::Ram,
                        Loc::Dev(x) if x < 2 && x != d => Loc::Ram,
                        _ => Loc::Unknown,
                    };
                }
                Ok(())
            }
            (Some((j, errno)), Err(e)) if e.errno == errno => {
                // Pages before the first bad one may have been written.
                for (k, &t) in tags.iter().enumerate().take(j - at) {
                    let pg = self.procs[p].pages[at + k].as_mut().expect("mapped");
                    pg.val = pg.val.or(t);
                }
                self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
                Ok(())
            }
            // A read-only device-private page of this device is reported as it is by the
            // range fault, never faulted for the write (Linux 6.1 hmm_vma_handle_pte), and
            // dmirror then fails the write with EFAULT: a page of this device that lost write
            // permission (mprotect, fork) does this.
            (_, Err(e)) if e.errno == crate::dmirror::EFAULT && self.m.private(d) && !all_ram => {
                for (k, &t) in tags.iter().enumerate().take(bad.map_or(n, |(j, _)| j - at)) {
                    let pg = self.procs[p].pages[at + k].as_mut().expect("mapped");
                    pg.val = pg.val.or(t);
                }
                self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
                Ok(())
            }
            (None, r) => Err(outcome(call, r, "Ok")),
            (Some((j, errno)), r) => Err(outcome(call, r, &format!("Err(errno {errno}) for page {:#x}", va(j)))),
        }
    }

    fn op_to_dev(&mut self, p: usize, d: usize, at: usize, n: usize, inject: Inject) -> Check {
        let f = self.file(p, d)?;
        self.migrate_with((p, d), (at, n), inject, &f, "file")
    }

    fn migrate_with(
        &mut self,
        (p, d): (usize, usize),
        (at, n): (usize, usize),
        inject: Inject,
        f: &Arc<Dmirror>,
        which: &str,
    ) -> Check {
        let mapped = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.prot.read()));
        let all_ram = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.loc == Loc::Ram));
        match inject {
            Inject::Copy => self.m.engines[d].fail_next.store(true, Ordering::Relaxed),
            Inject::Alloc => f.set_flags(1),
            _ => {}
        }
        let add_failures = self.m.engines[d].add_failures.load(Ordering::Relaxed);
        let r = f.migrate_to_dev(va(at), n as u64);
        // The device ran out of memory it can add (RAM for coherent chunks, frame-table
        // sections for private ones): pages may stay behind.
        let exhausted = self.m.engines[d].add_failures.load(Ordering::Relaxed) != add_failures;
        self.m.engines[d].fail_next.store(false, Ordering::Relaxed);
        f.set_flags(0);
        let call = format_args!("dev{d} MIGRATE_TO_DEV ({which}) {}", R(at, n));
        self.expected(mapped);
        let e = r.as_ref().err().map(|e| e.errno);
        // A page already in device memory is not selected again, and the read-back finds it
        // only if the file's device page table still maps it (a split of a device THP, a
        // fork or an mprotect since erased it): ENOENT then, as dmirror gives.
        let enoent_ok = !all_ram || inject == Inject::Alloc || exhausted;
        let allowed = match (mapped, inject) {
            // The chunks before the hole migrate first (and may fail first).
            (false, Inject::Copy) => e == Some(crate::dmirror::EINVAL) || e == Some(crate::dmirror::EIO),
            (false, _) => e == Some(crate::dmirror::EINVAL),
            (true, _) if e.is_none() => true,
            (true, Inject::Copy) if e == Some(crate::dmirror::EIO) => true,
            (true, _) => enoent_ok && e == Some(crate::dmirror::ENOENT),
        };
        if !allowed {
            let want = if mapped { "Ok (all pages in RAM)" } else { "Err(EINVAL) (hole or PROT_NONE)" };
            return Err(outcome(call, r.map(|(_, c)| c), want));
        }
        match r {
            Ok((buf, _)) => {
                self.check_buf(p, at, &buf, &format_args!("dev{d} MIGRATE_TO_DEV read-back"))?;
                // Pages in another device's memory are not collected; the read-back still
                // succeeds when the file mapped them before.
                self.set_loc(p, at, n, |l| if l == Loc::Ram || l == Loc::Dev(d) { Loc::Dev(d) } else { Loc::Unknown });
            }
            Err(_) => self.set_loc(p, at, n, |l| if l == Loc::Dev(d) || l == Loc::Ram { Loc::Unknown } else { l }),
        }
        Ok(())
    }

    fn op_to_sys(&mut self, p: usize, d: usize, at: usize, n: usize, inject: Inject) -> Check {
        let f = self.file(p, d)?;
        let mapped = self.all(p, at, n, Option::is_some);
        match inject {
            Inject::Copy => self.m.engines[d].fail_next.store(true, Ordering::Relaxed),
            Inject::Alloc => f.set_flags(1),
            Inject::Ram => self.m.plat.fail_allocs.store(1, Ordering::Relaxed),
            Inject::None => {}
        }
        let r = f.migrate_to_sys(va(at), n as u64);
        self.m.engines[d].fail_next.store(false, Ordering::Relaxed);
        self.m.plat.fail_allocs.store(0, Ordering::Relaxed);
        f.set_flags(0);
        let call = format_args!("dev{d} MIGRATE_TO_SYS {}", R(at, n));
        self.expected(mapped);
        let e = r.as_ref().err().map(|e| e.errno);
        let allowed = match (mapped, inject) {
            (false, Inject::Copy) => e == Some(crate::dmirror::EINVAL) || e == Some(crate::dmirror::EIO),
            (false, Inject::Ram) => e == Some(crate::dmirror::EINVAL) || e == Some(crate::dmirror::ENOMEM),
            (false, _) => e == Some(crate::dmirror::EINVAL),
            (true, Inject::None) => e.is_none(),
            (true, Inject::Copy) => e.is_none() || e == Some(crate::dmirror::EIO),
            (true, Inject::Alloc) => e.is_none(),
            (true, Inject::Ram) => e.is_none() || e == Some(crate::dmirror::ENOMEM),
        };
        if !allowed {
            return Err(outcome(call, r, if mapped { "Ok" } else { "Err(EINVAL) (hole)" }));
        }
        if r.is_ok() && inject == Inject::None {
            self.set_loc(p, at, n, |l| if l == Loc::Dev(d) { Loc::Ram } else { l });
        } else {
            self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
        }
        Ok(())
    }

    /// Migrates every page of process `p` in the memory of devices `devs` home (by runs of
    /// mapped pages).
    fn evict(&mut self, p: usize, devs: &[usize]) -> Check {
        let mut i = 0;
        while i < ARENA_PAGES {
            if self.procs[p].pages[i].is_none() {
                i += 1;
                continue;
            }
            let start = i;
            while i < ARENA_PAGES && self.procs[p].pages[i].is_some() {
                i += 1;
            }
            for &d in devs {
                self.op_to_sys(p, d, start, i - start, Inject::None)?;
            }
        }
        Ok(())
    }
}
