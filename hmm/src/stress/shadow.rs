//! The shadow model of the stress run: what every page of every process holds ([`Val`]: the
//! set of values it may have, most often exactly one), where it surely is ([`Loc`]), its
//! protection ([`Page`]), and the processes ([`Proc`]); and the checks of what was read
//! against it (`check_words`, `check_buf`), CPU accesses included (`cpu_read_page`,
//! `cpu_write_page`).
//!
//! Invariant: a check never weakens the model: a read that matches pins the page to the value
//! read, a mismatch is a [`Broken::Data`]; `Loc` is only used to know when an outcome must be
//! exact.

use super::*;

/// The values a page may hold (most often exactly one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Val {
    pub(super) v: [u64; 6],
    pub(super) n: u8,
}

impl Val {
    pub(super) fn known(t: u64) -> Self {
        Val { v: [t, 0, 0, 0, 0, 0], n: 1 }
    }
    /// Too many possible values to keep: anything (the next read pins it again).
    const ANY: u8 = u8::MAX;

    pub(super) fn allows(&self, t: u64) -> bool {
        self.n == Self::ANY || self.v[..self.n as usize].contains(&t)
    }
    pub(super) fn or(mut self, t: u64) -> Self {
        if !self.allows(t) {
            let n = self.n as usize;
            if n < self.v.len() {
                self.v[n] = t;
                self.n += 1;
            } else {
                self.n = Self::ANY;
            }
        }
        self
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.n == Self::ANY {
            return write!(f, "anything");
        }
        for (i, t) in self.v[..self.n as usize].iter().enumerate() {
            write!(f, "{}{t:#x}", if i > 0 { " or " } else { "" })?;
        }
        Ok(())
    }
}

/// Where a page is, as far as the model knows for sure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Loc {
    /// In RAM (or not yet faulted): nothing moved it to a device since the model saw it there.
    Ram,
    /// In device `n`'s memory (its migration succeeded).
    Dev(usize),
    /// Anywhere.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Page {
    pub(super) prot: Prot,
    pub(super) val: Val,
    pub(super) loc: Loc,
}

pub(super) struct Proc {
    /// A name for the report (`p<n>`).
    pub(super) name: u32,
    pub(super) space: Arc<SharedSpace>,
    pub(super) files: [Option<Arc<Dmirror>>; NDEV],
    /// A second file on device 0 ([`Feature::TwoFilesPerDevice`]).
    pub(super) extra: Option<Arc<Dmirror>>,
    pub(super) pages: Vec<Option<Page>>,
    /// The driver's own interval ([`Feature::FalseInvalidate`]).
    pub(super) checker: Option<crate::notifier::IntervalNotifier>,
}

impl World {
    /// Checks a page's two words against the model, then pins the model to what was read.
    pub(super) fn check_words(&mut self, p: usize, i: usize, w0: u64, w1: u64, reader: &dyn fmt::Display) -> Check {
        self.stats.pages_checked += 1;
        let name = self.procs[p].name;
        let pg = self.procs[p].pages[i].as_mut().expect("checked pages are mapped");
        let torn = w1 != tail(w0);
        if torn || !pg.val.allows(w0) {
            return Err(Broken::Data {
                reader: format!("{reader} (proc[{p}] = p{name})"),
                va: va(i),
                got: w0,
                torn,
                want: format!("{}", pg.val),
            });
        }
        pg.val = Val::known(w0);
        Ok(())
    }

    pub(super) fn check_buf(&mut self, p: usize, at: usize, buf: &[u8], reader: &dyn fmt::Display) -> Check {
        for k in 0..buf.len() / PAGE as usize {
            let b = &buf[k * PAGE as usize..(k + 1) * PAGE as usize];
            let w0 = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let w1 = u64::from_le_bytes(b[PAGE as usize - 8..].try_into().expect("8 bytes"));
            self.check_words(p, at + k, w0, w1, reader)?;
        }
        Ok(())
    }

    pub(super) fn page(&self, p: usize, i: usize) -> Option<Page> {
        self.procs[p].pages[i]
    }

    pub(super) fn set_loc(&mut self, p: usize, at: usize, n: usize, f: impl Fn(Loc) -> Loc) {
        for pg in self.procs[p].pages[at..at + n].iter_mut().flatten() {
            pg.loc = f(pg.loc);
        }
    }

    pub(super) fn all(&self, p: usize, at: usize, n: usize, f: impl Fn(&Option<Page>) -> bool) -> bool {
        self.procs[p].pages[at..at + n].iter().all(f)
    }

    /// The CPU reads page `i`; `oom_ok`: an out-of-memory fault is acceptable.
    pub(super) fn cpu_read_page(&mut self, p: usize, i: usize, oom_ok: bool) -> Check {
        let space = self.procs[p].space.clone();
        let r = {
            let mut s = space.lock();
            let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
            s.read(va(i), &mut a)
                .and_then(|()| s.read(va(i) + PAGE - 8, &mut b))
                .map(|()| (u64::from_le_bytes(a), u64::from_le_bytes(b)))
        };
        let call = format_args!("CPU read at {:#x}", va(i));
        match (self.page(p, i), r) {
            (None, Err(FaultError::NoMapping)) => Ok(()),
            (Some(pg), Err(FaultError::Protection)) if !pg.prot.read() => Ok(()),
            (_, Err(FaultError::OutOfMemory)) if oom_ok => {
                self.set_loc(p, i, 1, |_| Loc::Unknown);
                Ok(())
            }
            (Some(pg), Ok((w0, w1))) if pg.prot.read() => {
                self.check_words(p, i, w0, w1, &"CPU")?;
                let private = |d: usize| d < 2;
                self.set_loc(p, i, 1, |l| match l {
                    Loc::Dev(d) if private(d) => Loc::Ram,
                    l => l,
                });
                Ok(())
            }
            (None, r) => Err(outcome(call, r, "Err(NoMapping)")),
            (Some(pg), r) if !pg.prot.read() => Err(outcome(call, r, "Err(Protection) (PROT_NONE)")),
            (Some(_), r) => Err(outcome(call, r, "Ok")),
        }
    }

    pub(super) fn cpu_write_page(&mut self, p: usize, i: usize) -> Check {
        let tag = self.tag();
        let space = self.procs[p].space.clone();
        let r = {
            let mut s = space.lock();
            s.write(va(i), &tag.to_le_bytes()).and_then(|()| s.write(va(i) + PAGE - 8, &tail(tag).to_le_bytes()))
        };
        let call = format_args!("CPU write at {:#x}", va(i));
        match (self.page(p, i), r) {
            (None, Err(FaultError::NoMapping)) => Ok(()),
            (Some(pg), Err(FaultError::Protection)) if !pg.prot.write() => Ok(()),
            (Some(pg), Ok(())) if pg.prot.write() => {
                let pg = self.procs[p].pages[i].as_mut().expect("mapped");
                pg.val = Val::known(tag);
                pg.loc = match pg.loc {
                    Loc::Ram => Loc::Ram,
                    Loc::Dev(d) if d < 2 => Loc::Ram,
                    _ => Loc::Unknown,
                };
                Ok(())
            }
            (None, r) => Err(outcome(call, r, "Err(NoMapping)")),
            (Some(pg), r) if !pg.prot.write() => Err(outcome(call, r, "Err(Protection) (read-only mapping)")),
            (Some(_), r) => Err(outcome(call, r, "Ok")),
        }
    }

    pub(super) fn expected(&mut self, ok: bool) {
        if !ok {
            self.stats.expected_errors += 1;
        }
    }
}
