//! The single-threaded world of the stress run: the machine, the processes and the model
//! ([`World`]); its setup (the first process and its arena), and the end of a run: every page
//! of every process read and checked, every device's memory released, and the leak checks
//! (RAM frames, device pages, frame-table sections, notifier state).

use super::*;

/// The single-threaded world: machine, processes, model.
pub(super) struct World {
    pub(super) cfg: Config,
    pub(super) m: Machine,
    pub(super) procs: Vec<Proc>,
    pub(super) next_name: u32,
    pub(super) next_tag: u64,
    pub(super) private_releases: u32,
    /// The driver's own interval ops ([`Feature::FalseInvalidate`]).
    pub(super) checker: Arc<Checker>,
    pub(super) stats: Stats,
}

impl Drop for World {
    fn drop(&mut self) {
        // The processes go before the machine hands its RAM back.
        for proc in core::mem::take(&mut self.procs) {
            drop(proc);
        }
    }
}

impl World {
    pub(super) fn new(cfg: Config) -> Result<World, Broken> {
        let m = Machine::new()?;
        let mut w = World {
            cfg,
            m,
            procs: Vec::new(),
            next_name: 0,
            next_tag: 1,
            private_releases: 0,
            checker: Arc::new(Checker::default()),
            stats: Stats::default(),
        };
        let mut rng = Rng::new(w.cfg.seed ^ 0xabcd);
        w.m.mm.set_thp_mode(match rng.below(4) {
            0 => ThpMode::Always,
            1 => ThpMode::Never,
            _ => ThpMode::Madvise,
        });
        w.spawn_first()?;
        Ok(w)
    }

    /// The first process: the whole arena mapped read-write, the first block THP-eligible.
    fn spawn_first(&mut self) -> Check {
        let s = AddressSpace::new(&self.m.mm).map_err(|e| Broken::Setup(format!("address space: {e}")))?;
        let space = self.m.mm.share(s);
        {
            let mut s = space.lock();
            s.mmap(MapRequest::anon(ARENA_PAGES as u64 * PAGE, Prot::RW).fixed(ARENA))
                .map_err(|e| Broken::Setup(format!("mmap arena: {e}")))?;
            if self.cfg.on(Feature::Thp) {
                s.madvise(ARENA, BLOCK as u64 * PAGE, Advice::HugePage)
                    .map_err(|e| Broken::Setup(format!("madvise: {e}")))?;
            }
        }
        let page = Page { prot: Prot::RW, val: Val::known(0), loc: Loc::Ram };
        self.add_proc(space, alloc::vec![Some(page); ARENA_PAGES])
    }

    pub(super) fn add_proc(&mut self, space: Arc<SharedSpace>, pages: Vec<Option<Page>>) -> Check {
        let checker = if self.cfg.on(Feature::FalseInvalidate) {
            let subs = Subscriptions::of(&mut space.lock());
            let w: Weak<dyn IntervalOps> = Arc::downgrade(&self.checker) as Weak<dyn IntervalOps>;
            Some(subs.insert(ARENA, ARENA_PAGES as u64 * PAGE, w).map_err(|e| Broken::Setup(format!("insert: {e}")))?)
        } else {
            None
        };
        self.procs.push(Proc { name: self.next_name, space, files: [None, None, None], extra: None, pages, checker });
        self.next_name += 1;
        Ok(())
    }

    pub(super) fn tag(&mut self) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        t
    }

    pub(super) fn file(&mut self, p: usize, d: usize) -> Result<Arc<Dmirror>, Broken> {
        if let Some(f) = &self.procs[p].files[d] {
            return Ok(f.clone());
        }
        let f = Dmirror::open(&self.m.devs[d], &self.procs[p].space)
            .map_err(|e| outcome(format_args!("open dev{d}"), e, "Ok"))?;
        self.procs[p].files[d] = Some(f.clone());
        Ok(f)
    }

    // -- the end ----------------------------------------------------------------------------

    pub(super) fn finish(&mut self) -> Check {
        // Every page of every process.
        for p in 0..self.procs.len() {
            for i in 0..ARENA_PAGES {
                self.cpu_read_page(p, i, false)?;
            }
            let space = self.procs[p].space.clone();
            let subs = Subscriptions::of(&mut space.lock());
            let files = self.procs[p].files.iter().flatten().count()
                + usize::from(self.procs[p].extra.is_some())
                + usize::from(self.procs[p].checker.is_some());
            if subs.is_invalidating() || subs.len() != files {
                return Err(Broken::Leak(format!(
                    "proc[{p}]: notifier {:?} with {} intervals, expected idle with {files}",
                    subs,
                    subs.len()
                )));
            }
        }
        for proc in core::mem::take(&mut self.procs) {
            self.close_all(proc)?;
        }
        for (d, dev) in self.m.devs.iter().enumerate() {
            let (calloc, cfree) = dev.counters();
            if dev.pages_in_use() != 0 || calloc != cfree {
                return Err(Broken::Leak(format!(
                    "dev{d}: {} device pages in use with no process left (allocated {calloc}, freed {cfree})",
                    dev.pages_in_use()
                )));
            }
        }
        self.release_all()?;
        if self.cfg.on(Feature::UnboundedRelease) {
            self.section_probe()?;
        }
        Ok(())
    }

    fn release_all(&mut self) -> Check {
        for (d, dev) in self.m.devs.iter().enumerate() {
            dev.release().map_err(|e| outcome(format_args!("dev{d} release at the end"), e, "Ok"))?;
        }
        let free = self.m.plat.free_frames();
        if free != self.m.baseline {
            return Err(Broken::Leak(format!(
                "{} RAM frames not returned ({} free, {} after setup)",
                self.m.baseline as i64 - free as i64,
                free,
                self.m.baseline
            )));
        }
        Ok(())
    }

    /// Device memory added and removed again and again (hot-plug cycles): every cycle must
    /// work, so frame-table sections must come back.
    fn section_probe(&mut self) -> Check {
        for cycle in 0..40 {
            let s = AddressSpace::new(&self.m.mm).map_err(|e| Broken::Setup(format!("address space: {e}")))?;
            let space = self.m.mm.share(s);
            let a = space.lock().mmap(MapRequest::anon(PAGE, Prot::RW)).map_err(|e| outcome("probe mmap", e, "Ok"))?;
            space.lock().write(a, &7u64.to_le_bytes()).map_err(|e| outcome("probe write", e, "Ok"))?;
            for d in 0..2 {
                let f = Dmirror::open(&self.m.devs[d], &space).map_err(|e| outcome("probe open", e, "Ok"))?;
                let r = f.migrate_to_dev(a, 1);
                if r.is_err() {
                    return Err(Broken::Leak(format!(
                        "device memory add/remove cycle {cycle}: dev{d} MIGRATE_TO_DEV gave {:?} (frame-table sections not returned?)",
                        r.map(|_| ())
                    )));
                }
                let _ = f.close();
                let mut w = [0u8; 8];
                space.lock().read(a, &mut w).map_err(|e| outcome("probe read", e, "Ok"))?;
                if u64::from_le_bytes(w) != 7 {
                    return Err(Broken::Data {
                        reader: String::from("probe CPU"),
                        va: a,
                        got: u64::from_le_bytes(w),
                        torn: false,
                        want: String::from("0x7"),
                    });
                }
                self.m.devs[d].release().map_err(|e| outcome("probe release", e, "Ok"))?;
            }
        }
        self.release_all()
    }
}
