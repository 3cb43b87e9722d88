//! Carrying out a plan: migrations (in runs that share a source, partial when a device is full,
//! what arrived read back from the mechanism), read copies, remote mappings, eviction in the
//! policy's order to make room, the free-page buffer, and the link time each transfer takes.
//!
//! The free-page buffer (UVMSmart's `free_page_buffer_percentage`): after every migration or
//! read copy into a device the engine evicts, in the policy's order, until
//! [`Policy::free_buffer`](crate::place::policy::Policy::free_buffer) pages are free, as
//! UVMSmart's `should_evict_page` starts evictions every GMMU cycle while the allocated,
//! incoming and buffer pages together exceed capacity and pending write-backs. The first such eviction makes the
//! device oversubscribed, as a refused allocation does: with a buffer of 10 %, a device is
//! oversubscribed once 90 % of it is used (UVMSmart sets `over_sub` then). Those evictions
//! run in the background on the device's outbound link; the pages they free become usable
//! when their write-backs end, and a fetch into the device starts only once it has its pages
//! (UVMSmart starts a fetch only when enough pages are free): `Engine::pending_free`.

use super::{Engine, MechError, PageOp};
use crate::place::cost::Source;
use crate::place::policy::{Ctx, Plan, Units, root_chunk_victims};
use crate::place::{BLOCK, Loc, PAGE};
use alloc::format;
use alloc::vec::Vec;

/// Sorted pages as runs `(first, count)` of consecutive pages that do not cross a 2 MiB block.
fn runs(pages: &[u32]) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = Vec::new();
    for &p in pages {
        match v.last_mut() {
            Some((a, n)) if *a + *n == p && !p.is_multiple_of(BLOCK) => *n += 1,
            _ => v.push((p, 1)),
        }
    }
    v
}

impl Engine<'_> {
    pub(super) fn apply(&mut self, plan: &Plan, t: f64) -> Result<f64, MechError> {
        Ok(self.apply_timed(plan, t)?.0)
    }

    /// Applies a plan from time `t`: demand actions first, then prefetches, making room as
    /// needed. Returns (when the last transfer ends, the stall asked for, measured wall ns of
    /// the moves).
    pub(super) fn apply_timed(&mut self, plan: &Plan, t: f64) -> Result<(f64, f64, u64), MechError> {
        use crate::place::policy::Action;
        let mut done = t;
        let mut stall = 0.0;
        let mut wall = 0;
        // Pages this plan brings to a device are protected from its own evictions.
        let mut protect: Vec<(u32, u32)> = Vec::new();
        for a in &plan.actions {
            if let Action::Migrate { first, pages, to: Loc::Dev(_), .. } | Action::Duplicate { first, pages, .. } = *a {
                protect.push((first, first.saturating_add(pages)));
            }
        }
        for prefetch_pass in [false, true] {
            for a in &plan.actions {
                match *a {
                    Action::Migrate { first, pages, to, prefetch } if prefetch == prefetch_pass => {
                        let (e, w) = self.migrate(first, pages, to, prefetch, &protect, t)?;
                        done = done.max(e);
                        wall += w;
                    }
                    Action::MapRemote { first, pages, dev, read_only } if !prefetch_pass => {
                        self.stats.remote_maps += self.map_remote(first, pages, dev, read_only)? as u64;
                    }
                    Action::UnmapRemote { first, pages, dev } if !prefetch_pass => {
                        self.unmap_remote(first, pages, dev)?;
                    }
                    Action::Duplicate { first, pages, dev } if !prefetch_pass => {
                        let (e, w) = self.duplicate(first, pages, dev, &protect, t)?;
                        done = done.max(e);
                        wall += w;
                    }
                    Action::ClearCounts { first, pages } if !prefetch_pass => {
                        for u in &mut self.counter_units {
                            u.clear_range(u64::from(first), u64::from(pages));
                        }
                    }
                    Action::Stall { ns } if !prefetch_pass => {
                        self.stats.throttles += 1;
                        stall += ns as f64;
                    }
                    _ => {}
                }
            }
        }
        Ok((done, stall, wall))
    }

    /// Occupies the link directions a transfer between `from` and `to` uses; returns its end.
    /// A link is full duplex (PCIe; UVMSmart queues host-to-device and device-to-host
    /// transfers separately): a move out of device `d` uses `d`'s outbound direction, a move
    /// into it the inbound one, so an eviction does not delay a fetch; a device-to-device move
    /// uses the source's outbound and the destination's inbound direction. Returns when the
    /// transfer starts (its directions free and `t` reached) and ends.
    pub(super) fn transfer(&mut self, from: Loc, to: Loc, pages: u32, measured: u64, t: f64) -> (f64, f64) {
        const IN: usize = 0;
        const OUT: usize = 1;
        let dur = match self.cost.source {
            Source::Model => self.cost.transfer_ns(pages as u64 * PAGE),
            Source::Measured => measured as f64,
        };
        let used: Vec<(usize, usize)> =
            [from.dev().map(|d| (d, OUT)), to.dev().map(|d| (d, IN))].into_iter().flatten().collect();
        let start = used.iter().map(|&(l, dir)| self.links[l][dir]).fold(t, f64::max);
        for &(l, dir) in &used {
            self.links[l][dir] = start + dur;
            self.link_stats[l].busy_ns += dur;
        }
        let bytes = pages as u64 * PAGE;
        if let Some(d) = from.dev() {
            self.link_stats[d].out_bytes += bytes;
        }
        if let Some(d) = to.dev() {
            self.link_stats[d].in_bytes += bytes;
        }
        self.stats.transfer_ns += dur;
        (start, start + dur)
    }

    /// Maps `[first, first + pages)` (clipped to the managed pages) for remote access by
    /// device `d`, in the device's MMU and in the state; returns the pages.
    pub(super) fn map_remote(&mut self, first: u32, pages: u32, d: u8, read_only: bool) -> Result<u32, MechError> {
        let end = first.saturating_add(pages).min(self.st.len());
        if end <= first {
            return Ok(0);
        }
        self.mech.map_remote(first, end - first, d, read_only)?;
        for p in first..end {
            self.st.map_remote(p, d);
        }
        Ok(end - first)
    }

    /// Drops device `d`'s remote mappings of `[first, first + pages)` (clipped to the managed
    /// pages), in the device's MMU and in the state.
    pub(super) fn unmap_remote(&mut self, first: u32, pages: u32, d: u8) -> Result<(), MechError> {
        let end = first.saturating_add(pages).min(self.st.len());
        if end <= first {
            return Ok(());
        }
        self.mech.unmap_remote(first, end - first, d)?;
        for p in first..end {
            self.st.unmap_remote(p, d);
        }
        Ok(())
    }

    pub(super) fn protected(protect: &[(u32, u32)], p: u32) -> bool {
        protect.iter().any(|&(a, b)| p >= a && p < b)
    }

    /// Moves `[first, first + pages)` to `to`, in runs of pages that share a source.
    pub(super) fn migrate(
        &mut self,
        first: u32,
        pages: u32,
        to: Loc,
        prefetch: bool,
        protect: &[(u32, u32)],
        t: f64,
    ) -> Result<(f64, u64), MechError> {
        let end = first.saturating_add(pages).min(self.st.len());
        let mut done = t;
        let mut wall = 0;
        let mut p = first;
        while p < end {
            let from = self.st.page(p).loc;
            // Nothing moves into a device from a hole after an allocation (a plan's window
            // may reach past where the block's allocation ends).
            let hole = |st: &crate::place::state::State, q: u32| to.dev().is_some() && !st.in_extent(q);
            if from == to || hole(&self.st, p) {
                p += 1;
                continue;
            }
            let mut q = p;
            while q < end
                && self.st.page(q).loc == from
                && !hole(&self.st, q)
                && q - p < BLOCK
                && (q == p || !q.is_multiple_of(BLOCK))
            {
                q += 1;
            }
            let n = q - p;
            for x in p..q {
                self.drop_all_copies(x)?;
            }
            let mut w = self.mech.migrate(p, n, from, to)?;
            let mut moved = self.arrived(p, q, to)?;
            if let Loc::Dev(d) = to
                && moved.len() < n as usize
            {
                // The device's allocator refused the rest: it is full. Evict in the policy's
                // order (UVM evicts when its allocator fails), then move what is left.
                self.refused[d as usize] = true;
                done = done.max(self.make_room(d, n - moved.len() as u32, protect, t)?);
                let left: Vec<u32> = (p..q).filter(|x| !moved.contains(x)).collect();
                for (a, k) in runs(&left) {
                    w += self.mech.migrate(a, k, from, to)?;
                }
                moved = self.arrived(p, q, to)?;
            }
            wall += w;
            if moved.is_empty() {
                // Full, and nothing could be evicted: the rest stays where it is.
                break;
            }
            for (k, (a, m)) in runs(&moved).into_iter().enumerate() {
                // A fetch into a device starts once it has its pages.
                let at = match to {
                    Loc::Dev(d) => self.gate(d, m, done),
                    Loc::Cpu => done,
                };
                for x in a..a + m {
                    if self.st.page(x).prefetched {
                        self.stats.prefetch_unused += 1;
                    }
                    if !self.st.set_loc(x, to, t as u64, prefetch) {
                        // The mechanism found room the state does not have.
                        return Err(MechError::Misplaced { page: x, op: PageOp::Migrate, expected: from, found: to });
                    }
                }
                match (from, to) {
                    (Loc::Cpu, _) => {
                        self.stats.to_dev += m as u64;
                        self.charge(a, m, |c| &mut c.to_dev);
                    }
                    (_, Loc::Cpu) => {
                        self.stats.to_cpu += m as u64;
                        self.charge(a, m, |c| &mut c.to_cpu);
                    }
                    _ => self.stats.dev_to_dev += m as u64,
                }
                if prefetch {
                    self.stats.prefetched += m as u64;
                }
                // The measured time goes with the first run.
                let (s, e) = self.transfer(from, to, m, if k == 0 { w } else { 0 }, at);
                let lane = match (from, to) {
                    (Loc::Dev(d), _) | (_, Loc::Dev(d)) => format!("link{d}"),
                    _ => "link".into(),
                };
                self.event(s, e - s, &lane, if prefetch { "prefetch" } else { "migrate" }, m, &format!("{from}->{to}"));
                done = done.max(e);
            }
            if moved.len() < n as usize {
                break;
            }
            p = q;
        }
        if let Loc::Dev(d) = to {
            self.keep_free(d, protect, t)?;
        }
        Ok((done, wall))
    }

    /// The pages device `d` keeps free: its policy's free-page buffer.
    fn buffer(&self, d: u8, t: f64) -> u32 {
        let cx = Ctx::new(&self.st, &self.cost, t as u64).with_units(Units::new(&self.counter_units, 0));
        self.policy.free_buffer(&cx, d).min(self.st.dev(d as usize).capacity)
    }

    /// Evicts (in the background, from `t`) until device `d` has its free-page buffer. The
    /// first time a migration leaves fewer pages free than the buffer, the device is
    /// oversubscribed from then on, as a refusal makes it (UVMSmart's `over_sub` is set, and
    /// the oversubscribed prefetcher takes over, the first time `should_evict_page` holds).
    fn keep_free(&mut self, d: u8, protect: &[(u32, u32)], t: f64) -> Result<(), MechError> {
        let (want, free) = (self.buffer(d, t), self.st.free(d as usize));
        if want > free {
            self.refused[d as usize] = true;
            self.make_room(d, want - free, protect, t)?;
        }
        Ok(())
    }

    /// When a fetch of `pages` pages into device `d`, ready at `t`, has its pages: the free
    /// pages not waiting for a write-back first, then those whose write-backs end soonest,
    /// which it takes.
    pub(super) fn gate(&mut self, d: u8, pages: u32, t: f64) -> f64 {
        let free = self.st.free(d as usize) as usize;
        let q = &mut self.pending_free[d as usize];
        // Pages taken by a path that does not wait (none today) took the first ones.
        while q.len() > free {
            q.pop_front();
        }
        let ready = free - q.len();
        let mut at = t;
        for _ in 0..(pages as usize).saturating_sub(ready) {
            match q.pop_front() {
                Some(x) => at = at.max(x),
                None => break,
            }
        }
        at
    }

    /// The pages of `[p, q)` the page tables have in `to`.
    pub(super) fn arrived(&mut self, p: u32, q: u32, to: Loc) -> Result<Vec<u32>, MechError> {
        let mut v = Vec::new();
        for x in p..q {
            if self.mech.resident(x)? == to {
                v.push(x);
            }
        }
        Ok(v)
    }

    pub(super) fn duplicate(
        &mut self,
        first: u32,
        pages: u32,
        dev: u8,
        protect: &[(u32, u32)],
        t: f64,
    ) -> Result<(f64, u64), MechError> {
        let end = first.saturating_add(pages).min(self.st.len());
        if !self.mech.can_duplicate() {
            self.stats.dup_unsupported += self.map_remote(first, pages, dev, false)? as u64;
            return Ok((t, 0));
        }
        let mut done = t;
        let mut wall = 0;
        for p in first..end {
            let pg = *self.st.page(p);
            if pg.loc == Loc::Dev(dev) || pg.copies & (1 << dev) != 0 {
                continue;
            }
            if self.st.free(dev as usize) == 0 {
                self.refused[dev as usize] = true;
                done = done.max(self.make_room(dev, 1, protect, t)?);
                if self.st.free(dev as usize) == 0 {
                    self.map_remote(p, 1, dev, false)?;
                    continue;
                }
            }
            let w = self.mech.duplicate(p, 1, pg.loc, dev)?;
            wall += w;
            let at = self.gate(dev, 1, done);
            self.st.add_copy(p, dev);
            self.stats.duplicates += 1;
            let (_, e) = self.transfer(pg.loc, Loc::Dev(dev), 1, w, at);
            done = done.max(e);
        }
        self.keep_free(dev, protect, t)?;
        Ok((done, wall))
    }

    /// Frees at least `need` pages of device `d` (if it can without touching `protect`);
    /// returns when the evictions' transfers end.
    pub(super) fn make_room(&mut self, d: u8, need: u32, protect: &[(u32, u32)], t: f64) -> Result<f64, MechError> {
        let mut victims = Vec::new();
        let cx = Ctx::new(&self.st, &self.cost, t as u64).with_units(Units::new(&self.counter_units, 0));
        self.policy.on_eviction_pressure(&cx, d, need, &mut victims);
        let mut done = t;
        let freed = self.evict(d, &victims, protect, &mut done)?;
        if freed < need {
            let mut more = Vec::new();
            let cx = Ctx::new(&self.st, &self.cost, t as u64);
            root_chunk_victims(&cx, d, self.st.dev(d as usize).capacity, &mut more);
            let mut left = need - freed;
            let mut picked = Vec::new();
            for (first, n) in more {
                for p in first..first + n {
                    if left == 0 {
                        break;
                    }
                    let pg = self.st.page(p);
                    if (pg.loc == Loc::Dev(d) || pg.copies & (1 << d) != 0) && !Self::protected(protect, p) {
                        picked.push((p, 1));
                        left -= 1;
                    }
                }
            }
            self.evict(d, &picked, protect, &mut done)?;
        }
        Ok(done)
    }

    /// Evicts the victims' pages held by `d` to system memory (dropping read copies), in
    /// contiguous runs. Returns the pages freed.
    pub(super) fn evict(
        &mut self,
        d: u8,
        victims: &[(u32, u32)],
        protect: &[(u32, u32)],
        done: &mut f64,
    ) -> Result<u32, MechError> {
        let mut pages: Vec<u32> = Vec::new();
        let mut freed = 0;
        for &(first, n) in victims {
            for p in first..first.saturating_add(n).min(self.st.len()) {
                if Self::protected(protect, p) {
                    continue;
                }
                if self.st.page(p).copies & (1 << d) != 0 {
                    self.mech.drop_copy(p, d)?;
                    self.st.drop_copy(p, d);
                    freed += 1;
                } else if self.st.page(p).loc == Loc::Dev(d) {
                    pages.push(p);
                }
            }
        }
        pages.sort_unstable();
        pages.dedup();
        let remote = self.policy.remote_after_eviction();
        let buffered = self.buffer(d, *done) > 0;
        let mut i = 0;
        while i < pages.len() {
            let mut j = i + 1;
            while j < pages.len() && pages[j] == pages[j - 1] + 1 && !pages[j].is_multiple_of(BLOCK) {
                j += 1;
            }
            let (first, n) = (pages[i], (j - i) as u32);
            for x in first..first + n {
                self.drop_all_copies(x)?;
            }
            let w = self.mech.migrate(first, n, Loc::Dev(d), Loc::Cpu)?;
            for p in first..first + n {
                if self.st.page(p).prefetched {
                    self.stats.prefetch_unused += 1;
                }
                self.st.set_loc(p, Loc::Cpu, *done as u64, false);
            }
            if remote {
                self.map_remote(first, n, d, self.policy.remote_read_only())?;
            }
            self.stats.evicted += n as u64;
            self.stats.to_cpu += n as u64;
            self.charge(first, n, |c| &mut c.evicted);
            self.charge(first, n, |c| &mut c.to_cpu);
            let (s, e) = self.transfer(Loc::Dev(d), Loc::Cpu, n, w, *done);
            if buffered {
                // These pages are usable once their write-back ends.
                self.pending_free[d as usize].extend(core::iter::repeat_n(e, n as usize));
            }
            let lane = format!("link{d}");
            self.event(s, e - s, &lane, "evict", n, &format!("dev{d}->cpu"));
            *done = done.max(e);
            freed += n;
            i = j;
        }
        Ok(freed)
    }
}
