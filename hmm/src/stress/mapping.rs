//! Executing the stress run's address-space operations and the device's views of them:
//! `mprotect`, `mremap`, `madvise`, snapshots, device-exclusive access (and the CPU access
//! after it), direct range faults with per-page requests (and the frames they return checked
//! against the model), and closing a process's device files.

use super::*;

impl World {
    pub(super) fn protect(&mut self, p: usize, at: usize, n: usize, prot: Prot) -> Check {
        if prot.is_none()
            && !self.cfg.on(Feature::ProtNoneOverDevicePages)
            && !self.all(p, at, n, |pg| pg.is_none_or(|pg| pg.loc == Loc::Ram))
        {
            return Ok(());
        }
        let covered = self.all(p, at, n, Option::is_some);
        let r = self.procs[p].space.lock().mprotect(va(at), n as u64 * PAGE, prot);
        self.expected(covered);
        match (covered, r) {
            (true, Ok(())) => {
                self.procs[p].pages[at..at + n].iter_mut().flatten().for_each(|pg| pg.prot = prot);
                Ok(())
            }
            (false, Err(Error::NoSpace(_))) => Ok(()),
            (c, r) => Err(outcome(
                format_args!("mprotect {} {}", R(at, n), prot_name(prot)),
                r,
                if c { "Ok" } else { "Err(NoSpace)" },
            )),
        }
    }

    pub(super) fn remap(&mut self, p: usize, from: usize, n: usize, to: usize, keep: bool) -> Check {
        let (start, end) = (va(from), va(from + n));
        let vma = self.procs[p].space.lock().vmas().find(start).cloned();
        let inside = vma.as_ref().is_some_and(|v| end <= v.end);
        let flags = RemapFlags { may_move: true, fixed: true, dont_unmap: keep };
        let r = self.procs[p].space.lock().mremap(start, n as u64 * PAGE, n as u64 * PAGE, flags, va(to));
        let call = format_args!("mremap {} -> {:#x} dont_unmap {keep}", R(from, n), va(to));
        self.expected(inside);
        if !inside {
            return match r {
                Err(Error::Fault(_)) => Ok(()),
                r => Err(outcome(call, r, "Err(Fault) (not inside one mapping)")),
            };
        }
        let vma = vma.expect("inside");
        if r != Ok(va(to)) {
            return Err(outcome(call, r, "Ok(the new address)"));
        }
        let moved: Vec<Option<Page>> = self.procs[p].pages[from..from + n].to_vec();
        for (k, pg) in moved.iter().enumerate() {
            match pg {
                Some(pg) if pg.prot == vma.prot => {}
                _ => {
                    return Err(outcome(
                        call,
                        format_args!("a mapping {:#x}..{:#x} {}", vma.start, vma.end, prot_name(vma.prot)),
                        &format!("the model's page {:#x}: {:?}", va(from + k), pg.map(|p| prot_name(p.prot))),
                    ));
                }
            }
        }
        let pages = &mut self.procs[p].pages;
        for pg in &mut pages[from..from + n] {
            *pg = if keep { Some(Page { prot: vma.prot, val: Val::known(0), loc: Loc::Ram }) } else { None };
        }
        pages[to..to + n].copy_from_slice(&moved);
        Ok(())
    }

    pub(super) fn advise(&mut self, p: usize, at: usize, n: usize, advice: Advice) -> Check {
        if matches!(advice, Advice::HugePage | Advice::NoHugePage)
            && !self.cfg.on(Feature::PartialHugeAdvice)
            && !(at.is_multiple_of(BLOCK) && n.is_multiple_of(BLOCK))
        {
            return Ok(());
        }
        let covered = self.all(p, at, n, Option::is_some);
        let r = self.procs[p].space.lock().madvise(va(at), n as u64 * PAGE, advice);
        self.expected(covered);
        let call = format_args!("madvise {} {advice:?}", R(at, n));
        match (covered, r) {
            (true, Ok(())) => {
                for pg in self.procs[p].pages[at..at + n].iter_mut().flatten() {
                    match advice {
                        Advice::DontNeed => *pg = Page { prot: pg.prot, val: Val::known(0), loc: Loc::Ram },
                        // Lazily freed: a clean page may be discarded (zero) until written.
                        Advice::Free => pg.val = pg.val.or(0),
                        Advice::WillNeed if pg.loc != Loc::Ram => pg.loc = Loc::Unknown,
                        _ => {}
                    }
                }
                Ok(())
            }
            (false, Err(Error::NoSpace(_))) => Ok(()),
            (c, r) => Err(outcome(call, r, if c { "Ok" } else { "Err(NoSpace)" })),
        }
    }

    pub(super) fn snapshot(&mut self, p: usize, d: usize, at: usize, n: usize) -> Check {
        let f = self.file(p, d)?;
        let r = f.snapshot(va(at), n as u64);
        let call = format_args!("dev{d} SNAPSHOT {}", R(at, n));
        let (bytes, _) = r.map_err(|e| outcome(call, e, "Ok"))?;
        for (k, &b) in bytes.iter().enumerate() {
            let pg = self.page(p, at + k);
            let bad = match pg {
                None => b != prot::ERROR,
                Some(pg) if !pg.prot.read() => b != prot::ERROR,
                Some(_) if b == prot::NONE => false,
                Some(pg) => {
                    let rw = b & (prot::READ | prot::WRITE);
                    b == prot::ERROR
                        || rw == 0
                        || rw == prot::READ | prot::WRITE
                        || (b & prot::WRITE != 0 && !pg.prot.write())
                        || (b & 0xf0 == prot::ZERO && !pg.val.allows(0))
                }
            };
            if bad {
                return Err(outcome(
                    call,
                    format_args!("byte {b:#04x} for page {:#x}", va(at + k)),
                    &format!("a byte consistent with {:?}", pg.map(|p| prot_name(p.prot))),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn exclusive(&mut self, p: usize, d: usize, at: usize, n: usize, then_cpu: bool) -> Check {
        let f = self.file(p, d)?;
        let ok = self.all(p, at, n, |pg| pg.is_some_and(|pg| pg.prot == Prot::RW));
        let r = f.exclusive(va(at), n as u64);
        let call = format_args!("dev{d} EXCLUSIVE {}", R(at, n));
        self.expected(ok);
        match r {
            Ok((buf, _)) if ok => self.check_buf(p, at, &buf, &format_args!("dev{d} EXCLUSIVE read-back"))?,
            Err(_) if !ok => {}
            r => return Err(outcome(call, r.map(|(_, c)| c), if ok { "Ok" } else { "Err" })),
        }
        // Device-exclusive entries are neither system nor device pages to a migration
        // (not collected: ENOENT), until a CPU access restores them.
        let before: Vec<Option<Page>> = self.procs[p].pages[at..at + n].to_vec();
        self.set_loc(p, at, n, |_| Loc::Unknown);
        if then_cpu && ok {
            for i in at..at + n {
                if i % 2 == 0 { self.cpu_write_page(p, i)? } else { self.cpu_read_page(p, i, false)? }
            }
            f.check_exclusive(va(at), n as u64)
                .map_err(|e| outcome(format_args!("dev{d} CHECK_EXCLUSIVE {} after CPU access", R(at, n)), e, "Ok"))?;
            for (k, b) in before.iter().enumerate() {
                if let (Some(b), Some(pg)) = (b, self.procs[p].pages[at + k].as_mut())
                    && b.loc == Loc::Ram
                {
                    pg.loc = Loc::Ram;
                }
            }
        }
        Ok(())
    }

    pub(super) fn range_fault(&mut self, p: usize, at: usize, n: usize, reqs: u64, owner: Option<usize>) -> Check {
        let space = self.procs[p].space.clone();
        let (start, end) = (va(at), va(at + n));
        let call = format_args!("hmm_range_fault {} reqs {reqs:#x} owner {owner:?}", R(at, n));
        // The first page whose request cannot be met decides the error. A page that may be
        // a device-private page of `owner` is reported as it is whatever the request (Linux
        // 6.1), so a write request on it in a read-only mapping may or may not fail.
        let mut allowed: Vec<Result<(), RangeError>> = Vec::new();
        for k in 0..n {
            let rq = req_of(reqs, k);
            let e = match self.page(p, at + k) {
                None if rq.fault => Some(RangeError::Fault),
                Some(pg) if rq.fault && !pg.prot.read() => Some(RangeError::Fault),
                Some(pg) if rq.write && !pg.prot.write() => {
                    if owner.is_some_and(|d| d < 2) && pg.loc != Loc::Ram {
                        allowed.push(Err(RangeError::Permission));
                        continue;
                    }
                    Some(RangeError::Permission)
                }
                _ => None,
            };
            if let Some(e) = e {
                allowed.push(Err(e));
                break;
            }
        }
        if !allowed.contains(&Err(RangeError::Fault))
            && allowed.iter().filter(|a| **a == Err(RangeError::Permission)).count() == allowed.len()
            && !self.definite_bad(p, at, n, reqs, owner)
        {
            allowed.push(Ok(()));
        }
        let ops: Arc<SeqOnly> = Arc::new(SeqOnly);
        let subs = Subscriptions::of(&mut space.lock());
        let w: Weak<dyn IntervalOps> = Arc::downgrade(&ops) as Weak<dyn IntervalOps>;
        let sub = subs.insert(start, end - start, w).map_err(|e| outcome(call, e, "Ok from the interval insert"))?;
        let owner_cookie = owner.map(|d| self.m.devs[d].owner());
        let result;
        let mut pfns = alloc::vec![0u64; n];
        // Every fault that changes a page (a COW break, a migration home) invalidates the
        // interval and restarts the walk: a retry per page is normal.
        let (mut tries, max_tries) = (0, 4 * n + 64);
        let mut s;
        loop {
            tries += 1;
            let seq = sub.read_begin().map_err(|e| outcome(call, e, "Ok from read_begin"))?;
            s = space.lock();
            for (k, e) in pfns.iter_mut().enumerate() {
                *e = HmmPfn::request_bits(req_of(reqs, k));
            }
            let mut range = HmmRange::<HmmPfn> {
                notifier: &sub,
                notifier_seq: seq,
                start,
                end,
                pfns: &mut pfns,
                default_flags: Request::NONE,
                pfn_flags_mask: Request::WRITE,
                dev_private_owner: owner_cookie,
            };
            let r = hmm_range_fault(&mut s, &mut range);
            if r == Err(RangeError::Busy) && tries < max_tries {
                drop(s);
                continue;
            }
            if r.is_ok() && sub.read_retry(seq) && tries < max_tries {
                drop(s);
                continue;
            }
            result = r;
            break;
        }
        self.expected(result.is_ok());
        let checked = match result {
            r if !allowed.contains(&r) => Err(outcome(call, r, &format!("one of {allowed:?}"))),
            Ok(()) => self.check_pfns(p, at, &pfns, reqs, &s, &call),
            Err(_) => Ok(()),
        };
        drop(s);
        let _ = sub.remove();
        self.set_loc(p, at, n, |l| if l == Loc::Ram { l } else { Loc::Unknown });
        checked
    }

    /// Whether a page of a range fault has a request that must fail whatever it maps.
    fn definite_bad(&self, p: usize, at: usize, n: usize, reqs: u64, owner: Option<usize>) -> bool {
        (0..n).any(|k| {
            let rq = req_of(reqs, k);
            match self.page(p, at + k) {
                None => rq.fault,
                Some(pg) if rq.fault && !pg.prot.read() => true,
                Some(pg) => rq.write && !pg.prot.write() && !(owner.is_some_and(|d| d < 2) && pg.loc != Loc::Ram),
            }
        })
    }

    fn check_pfns(
        &mut self,
        p: usize,
        at: usize,
        pfns: &[u64],
        reqs: u64,
        s: &AddressSpace,
        call: &dyn fmt::Display,
    ) -> Check {
        let mm = s.mm().clone();
        for (k, &e) in pfns.iter().enumerate() {
            let rq = req_of(reqs, k);
            let pg = self.page(p, at + k);
            let valid = e & HmmPfn::VALID != 0;
            let write = e & HmmPfn::WRITE != 0;
            let error = e & HmmPfn::ERROR != 0;
            let readable = pg.is_some_and(|pg| pg.prot.read());
            // A device-private page of the caller's device is reported as it is, never
            // faulted, even for a write request (Linux 6.1 hmm_vma_handle_pte).
            let private = valid
                && mm.device_memory().and_then(|d| d.owner_of(HmmPfn::pfn(e))).is_some_and(|(_, private)| private);
            let wrong = (rq.fault && !valid)
                || (rq.write && !write && !private)
                || (!readable && !error)
                || (readable && error)
                || (write && !pg.is_some_and(|pg| pg.prot.write()));
            if wrong {
                return Err(outcome(
                    call,
                    format_args!("entry {e:#x} for page {:#x} (request {rq:?})", va(at + k)),
                    &format!("an entry consistent with {:?}", pg.map(|p| prot_name(p.prot))),
                ));
            }
            if valid {
                let pfn = HmmPfn::pfn(e);
                if !private {
                    let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
                    mm.platform().read(pfn.addr(), &mut a);
                    mm.platform().read(pfn.addr() + PAGE - 8, &mut b);
                    self.check_words(p, at + k, u64::from_le_bytes(a), u64::from_le_bytes(b), &"range fault frame")?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn close_all(&mut self, proc: Proc) -> Check {
        let Proc { files, extra, space, checker, .. } = proc;
        for (d, f) in files.into_iter().enumerate() {
            if let Some(f) = f {
                f.close().map_err(|e| outcome(format_args!("close dev{d}"), e, "Ok"))?;
            }
        }
        if let Some(f) = extra {
            f.close().map_err(|e| outcome("close dev0 (second file)", e, "Ok"))?;
        }
        if let Some(c) = checker {
            c.remove().map_err(|(_, e)| outcome("remove the checker interval", e, "Ok"))?;
        }
        drop(space);
        Ok(())
    }
}
