//! The sampling profiler's samples: the per-CPU table the timer interrupt records into, and the
//! `@@PROFILE` lines the kernel reports it in.
//!
//! A sample is a [`Stack`]: the interrupted instruction pointer, then up to
//! [`MAX_FRAMES`]` - 1` return addresses from the frame-pointer chain, and whether the CPU was
//! in user mode. A [`Table`] counts samples per unique stack in storage the caller gives
//! (allocated once, before sampling starts): recording never allocates, probes a bounded
//! number of slots and, when the table is [`Table::FULL_PERCENT`] full, counts the sample as a
//! drop instead of inserting a new stack. So the interrupt's cost is bounded and every sample
//! is either counted in a stack or in [`Table::drops`].
//!
//! The report, per CPU (see [`write_summary`], [`write_stack`], [`PROFILE_DONE`]):
//!
//! ```text
//! @@PROFILE {"cpu":0,"hz":1000,"samples":5321,"drops":0,"stacks":211}
//! @@PROFILE {"cpu":0,"n":87,"user":false,"pcs":"ffffffff80012345,ffffffff80011a02"}
//! ...
//! @@PROFILE {"done":true,"cpus":2,"lost":0}
//! ```
//!
//! `pcs` lists the stack innermost first, in hex without `0x`: the first is the interrupted
//! instruction, the others return addresses (the host symbolises `pc - 1` for those, the call
//! instruction). Invariant: `samples` is the sum of the CPU's stacks' `n` plus `drops`.

use super::json::Json;
use core::fmt::{self, Write};

/// Most program counters in one sample: the interrupted one and seven return addresses.
pub const MAX_FRAMES: usize = 8;

/// The last `@@PROFILE` line's payload.
pub const PROFILE_DONE_PREFIX: &str = "{\"done\":true";

/// One sample's stack, innermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stack {
    /// The CPU was in user mode (only the RIP is taken then).
    pub user: bool,
    len: u8,
    pcs: [u64; MAX_FRAMES],
}

impl Stack {
    /// The stack of `pcs` (innermost first; past [`MAX_FRAMES`] dropped).
    pub fn new(user: bool, pcs: &[u64]) -> Self {
        let mut s = Stack { user, len: 0, pcs: [0; MAX_FRAMES] };
        for &pc in pcs.iter().take(MAX_FRAMES) {
            s.pcs[s.len as usize] = pc;
            s.len += 1;
        }
        s
    }

    /// The program counters, innermost first.
    pub fn pcs(&self) -> &[u64] {
        &self.pcs[..self.len as usize]
    }

    /// FNV-1a over the counters and the mode.
    fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &w in self.pcs().iter().chain([u64::from(self.user)].iter()) {
            h ^= w;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^ (h >> 29)
    }
}

/// One slot of a [`Table`]: a stack and its count (0: empty).
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    count: u64,
    stack: Stack,
}

impl Slot {
    /// An empty slot, to fill the storage with.
    pub const EMPTY: Slot = Slot { count: 0, stack: Stack { user: false, len: 0, pcs: [0; MAX_FRAMES] } };
}

/// Sample counts per unique stack, in caller-given storage (open addressing, linear probing).
#[derive(Debug)]
pub struct Table<'a> {
    slots: &'a mut [Slot],
    used: usize,
    samples: u64,
    drops: u64,
}

impl<'a> Table<'a> {
    /// New stacks are refused (counted as drops) once this percentage of the slots is used.
    pub const FULL_PERCENT: usize = 75;

    /// A table over `slots` (every slot [`Slot::EMPTY`]; they are cleared here).
    pub fn new(slots: &'a mut [Slot]) -> Self {
        slots.fill(Slot::EMPTY);
        Table { slots, used: 0, samples: 0, drops: 0 }
    }

    /// Counts one sample of `stack`. Returns `false` when it was dropped: a stack not yet in
    /// the table and the table [`Self::FULL_PERCENT`] full (or no storage, or no frames).
    pub fn record(&mut self, stack: &Stack) -> bool {
        self.samples += 1;
        let n = self.slots.len();
        if n == 0 || stack.len == 0 {
            self.drops += 1;
            return false;
        }
        let mut i = (stack.hash() % n as u64) as usize;
        // The load factor stays below FULL_PERCENT, so an empty slot is always near.
        for _ in 0..n {
            let slot = &mut self.slots[i];
            if slot.count == 0 {
                if self.used * 100 >= n * Self::FULL_PERCENT {
                    break;
                }
                *slot = Slot { count: 1, stack: *stack };
                self.used += 1;
                return true;
            }
            if slot.stack == *stack {
                slot.count += 1;
                return true;
            }
            i = (i + 1) % n;
        }
        self.drops += 1;
        false
    }

    /// Counts a sample that could not be recorded at all (the table was busy).
    pub fn drop_sample(&mut self) {
        self.samples += 1;
        self.drops += 1;
    }

    /// Samples taken, recorded or dropped.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Samples dropped.
    pub fn drops(&self) -> u64 {
        self.drops
    }

    /// Unique stacks recorded.
    pub fn stacks(&self) -> usize {
        self.used
    }

    /// Every recorded stack with its count, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = (&Stack, u64)> + '_ {
        self.slots.iter().filter(|s| s.count > 0).map(|s| (&s.stack, s.count))
    }
}

/// Writes a CPU's summary payload: `{"cpu":..,"hz":..,"samples":..,"drops":..,"stacks":..}`.
pub fn write_summary<W: Write>(out: W, cpu: usize, hz: u32, t: &Table<'_>) -> W {
    let mut j = Json::into(out);
    j.object(|j| {
        j.num("cpu", cpu);
        j.num("hz", hz);
        j.num("samples", t.samples());
        j.num("drops", t.drops());
        j.num("stacks", t.stacks());
    });
    j.finish()
}

/// The `pcs` value: hex counters joined by commas.
struct Pcs<'a>(&'a [u64]);

impl fmt::Display for Pcs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, pc) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{pc:x}")?;
        }
        Ok(())
    }
}

/// Writes one stack's payload: `{"cpu":..,"n":..,"user":..,"pcs":"hex,hex"}`.
pub fn write_stack<W: Write>(out: W, cpu: usize, stack: &Stack, n: u64) -> W {
    let mut j = Json::into(out);
    j.object(|j| {
        j.num("cpu", cpu);
        j.num("n", n);
        j.bool("user", stack.user);
        // Hex digits and commas need no escaping: written as a number would be, but quoted.
        j.num("pcs", format_args!("\"{}\"", Pcs(stack.pcs())));
    });
    j.finish()
}

/// Writes the last line's payload: `{"done":true,"cpus":N,"lost":L}`, `lost` the samples of
/// CPUs that had no table.
pub fn write_done<W: Write>(out: W, cpus: usize, lost: u64) -> W {
    let mut j = Json::into(out);
    j.object(|j| {
        j.bool("done", true);
        j.num("cpus", cpus);
        j.num("lost", lost);
    });
    j.finish()
}

/// Parses a `pcs` value back into its counters; `None` if any is not hex.
pub fn parse_pcs(s: &str) -> Option<impl Iterator<Item = u64> + '_> {
    if s.split(',').any(|p| p.is_empty() || u64::from_str_radix(p, 16).is_err()) {
        return None;
    }
    Some(s.split(',').map(|p| u64::from_str_radix(p, 16).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<Slot> {
        vec![Slot::EMPTY; n]
    }

    #[test]
    fn counts_samples_per_unique_stack() {
        let mut s = table(16);
        let mut t = Table::new(&mut s);
        let a = Stack::new(false, &[0xffff_ffff_8000_1000, 0xffff_ffff_8000_2000]);
        let b = Stack::new(false, &[0xffff_ffff_8000_1000]);
        let u = Stack::new(true, &[0xffff_ffff_8000_1000]);
        for _ in 0..3 {
            assert!(t.record(&a));
        }
        assert!(t.record(&b));
        assert!(t.record(&u));
        assert_eq!(t.samples(), 5);
        assert_eq!(t.drops(), 0);
        assert_eq!(t.stacks(), 3);
        let mut got: Vec<(Stack, u64)> = t.entries().map(|(s, n)| (*s, n)).collect();
        got.sort_by_key(|(s, n)| (*n, s.user, s.pcs().len()));
        assert_eq!(got, vec![(b, 1), (u, 1), (a, 3)]);
    }

    #[test]
    fn a_full_table_drops_new_stacks_but_counts_known_ones() {
        let mut s = table(8);
        let mut t = Table::new(&mut s);
        // 75 % of 8 slots: six stacks fit.
        for i in 0..6 {
            assert!(t.record(&Stack::new(false, &[0x1000 + i])), "stack {i}");
        }
        assert!(!t.record(&Stack::new(false, &[0x9999])));
        assert!(t.record(&Stack::new(false, &[0x1003])));
        t.drop_sample();
        assert_eq!((t.samples(), t.drops(), t.stacks()), (9, 2, 6));
        let counted: u64 = t.entries().map(|(_, n)| n).sum();
        assert_eq!(counted + t.drops(), t.samples());
    }

    #[test]
    fn empty_storage_or_stack_is_a_drop() {
        let mut t = Table::new(&mut []);
        assert!(!t.record(&Stack::new(false, &[1])));
        let mut s = table(4);
        let mut t = Table::new(&mut s);
        assert!(!t.record(&Stack::new(false, &[])));
        assert_eq!((t.samples(), t.drops()), (1, 1));
    }

    #[test]
    fn stacks_keep_at_most_max_frames() {
        let pcs: Vec<u64> = (1..=20).collect();
        let s = Stack::new(false, &pcs);
        assert_eq!(s.pcs(), &pcs[..MAX_FRAMES]);
    }

    #[test]
    fn lines_read_back() {
        let mut s = table(4);
        let mut t = Table::new(&mut s);
        let a = Stack::new(false, &[0xffff_ffff_8000_1234, 0xffff_ffff_8000_0abc]);
        t.record(&a);
        let line = write_stack(String::new(), 1, &a, 7);
        assert_eq!(line, r#"{"cpu":1,"n":7,"user":false,"pcs":"ffffffff80001234,ffffffff80000abc"}"#);
        let pcs = line.split("\"pcs\":\"").nth(1).unwrap().trim_end_matches("\"}");
        assert_eq!(parse_pcs(pcs).unwrap().collect::<Vec<_>>(), a.pcs());
        assert!(parse_pcs("12,zz").is_none());
        assert!(parse_pcs("12,,3").is_none());
        assert_eq!(
            write_summary(String::new(), 0, 1000, &t),
            r#"{"cpu":0,"hz":1000,"samples":1,"drops":0,"stacks":1}"#
        );
        let done = write_done(String::new(), 2, 5);
        assert_eq!(done, r#"{"done":true,"cpus":2,"lost":5}"#);
        assert!(done.starts_with(PROFILE_DONE_PREFIX));
    }
}
