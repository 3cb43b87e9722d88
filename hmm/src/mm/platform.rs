//! What the memory manager needs from the machine: frames, physical memory access, page-table
//! entry access, and TLB invalidation.
//!
//! The kernel implements [`Platform`] over its buddy allocator, the direct map and `invlpg`;
//! [`fake::FakePlatform`] implements it over a vector for host tests. Everything above this
//! trait (page tables, VMAs, faults, copy-on-write, migration) is the same code in both.

use crate::addr::Pfn;
use core::sync::atomic::AtomicU64;

/// A TLB invalidation request collected over one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TlbFlush {
    /// Lowest address covered.
    pub start: u64,
    /// One past the highest address covered.
    pub end: u64,
    /// Number of separate leaf entries changed (4 KiB or 2 MiB each).
    pub entries: u64,
    /// Page-table frames were unhooked: paging-structure caches must go too (full flush).
    pub tables_freed: bool,
}

impl TlbFlush {
    /// Adds `[va, va + size)` to the request.
    pub fn add(&mut self, va: u64, size: u64) {
        if self.entries == 0 {
            self.start = va;
            self.end = va + size;
        } else {
            self.start = self.start.min(va);
            self.end = self.end.max(va + size);
        }
        self.entries += 1;
    }

    /// Nothing to flush.
    pub fn is_empty(&self) -> bool {
        self.entries == 0 && !self.tables_freed
    }
}

/// Physical memory, page-table entry access and TLB control, as the memory manager sees them.
///
/// Entry accessors are atomic because the CPU sets accessed and dirty bits concurrently.
pub trait Platform: Send + Sync {
    /// Allocates `2^order` contiguous, naturally aligned frames (contents undefined).
    fn alloc(&self, order: u32) -> Option<Pfn>;
    /// Returns frames from [`alloc`](Self::alloc) with the same order.
    fn free(&self, pfn: Pfn, order: u32);
    /// Frames currently free.
    fn free_frames(&self) -> u64;
    /// Zeroes `count` frames starting at `pfn`.
    fn zero(&self, pfn: Pfn, count: u64);
    /// Copies `count` frames from `src` to `dst`.
    fn copy(&self, dst: Pfn, src: Pfn, count: u64);
    /// Reads bytes at physical address `pa` (within one frame run the manager owns).
    fn read(&self, pa: u64, buf: &mut [u8]);
    /// Writes bytes at physical address `pa`.
    fn write(&self, pa: u64, buf: &[u8]);
    /// Loads entry `index` of the page table in frame `table`.
    fn load(&self, table: Pfn, index: usize) -> u64;
    /// The 512 entries of the page table in frame `table`, for walks that read a whole table
    /// (one call instead of one per entry).
    fn table(&self, table: Pfn) -> &[AtomicU64];
    /// Stores entry `index` of the page table in frame `table`.
    fn store(&self, table: Pfn, index: usize, value: u64);
    /// Atomically replaces an entry, returning the old value (so no dirty bit is lost).
    fn swap(&self, table: Pfn, index: usize, value: u64) -> u64;
    /// Prepares a new top-level table (zeroed already): the kernel copies its own half here.
    fn init_root(&self, root: Pfn);
    /// Invalidates TLB entries of the address space rooted at `root` for `flush`.
    fn flush_tlb(&self, root: Pfn, flush: &TlbFlush);
    /// Waits a little for a page under migration (`migration_entry_wait`): called with no
    /// address-space lock held, before the fault that met the migration runs again; `round`
    /// counts this fault's waits from 1. Returns `false` once the fault has waited long enough
    /// (a bounded wait: the fault then fails with `FaultError::MigrationTimeout`).
    fn migration_wait(&self, round: u32) -> bool;
}

/// A host implementation of [`Platform`] over a vector, for tests.
pub mod fake {
    use super::{Platform, TlbFlush};
    use crate::addr::Pfn;
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use spin::Mutex;

    /// The first frame number the fake hands out (frame 0 is never valid).
    pub const BASE_PFN: u64 = 0x1000;
    /// The waits a fault makes for a page under migration before it gives up (the fake's
    /// stand-in for a timeout: a count, so tests do not depend on time).
    pub const MIGRATION_WAIT_ROUNDS: u32 = 64;

    /// What a test runs while a fault waits for a migration (each round, with the round
    /// number): typically it completes the migration, deterministically, at that exact point.
    #[derive(Default)]
    pub struct MigrationHook(Mutex<Option<HookFn>>);

    type HookFn = Box<dyn FnMut(u32) + Send>;

    impl MigrationHook {
        /// Runs `f` at every later migration wait (replacing an earlier hook).
        pub fn set(&self, f: impl FnMut(u32) + Send + 'static) {
            *self.0.lock() = Some(Box::new(f));
        }
        /// Removes the hook.
        pub fn clear(&self) {
            *self.0.lock() = None;
        }
    }

    /// What a test runs after every store [`Platform::write`] makes to fake memory, with the
    /// address of the word stored: it sees memory exactly as a concurrent reader could at
    /// that point of the write.
    #[derive(Default)]
    pub struct StoreHook {
        set: AtomicBool,
        f: Mutex<Option<StoreFn>>,
    }

    type StoreFn = Box<dyn FnMut(u64) + Send>;

    impl StoreHook {
        /// Runs `f` after every later store of a write (replacing an earlier hook). `f` may
        /// read fake memory, not write it.
        pub fn set(&self, f: impl FnMut(u64) + Send + 'static) {
            *self.f.lock() = Some(Box::new(f));
            self.set.store(true, Ordering::Release);
        }
        /// Removes the hook.
        pub fn clear(&self) {
            self.set.store(false, Ordering::Release);
            *self.f.lock() = None;
        }
        fn run(&self, pa: u64) {
            if self.set.load(Ordering::Acquire)
                && let Some(f) = self.f.lock().as_mut()
            {
                f(pa);
            }
        }
    }

    impl core::fmt::Debug for StoreHook {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(if self.set.load(Ordering::Relaxed) { "StoreHook(set)" } else { "StoreHook(none)" })
        }
    }

    impl core::fmt::Debug for MigrationHook {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(if self.0.lock().is_some() { "MigrationHook(set)" } else { "MigrationHook(none)" })
        }
    }

    /// Fake physical memory: `frames` frames starting at [`BASE_PFN`], with a first-fit
    /// allocator over a bitmap and counters for the tests.
    ///
    /// Invariant: every frame below `Used::first_free` is in use, so first fit starts its
    /// scan there (at the aligned block holding it) and finds what a scan from 0 finds.
    #[derive(Debug)]
    pub struct FakePlatform {
        words: Vec<AtomicU64>,
        used: Mutex<Used>,
        free: AtomicU64,
        /// TLB flush requests seen.
        pub flushes: AtomicU64,
        /// Allocations to refuse from now on, counted down (for exhaustion tests).
        pub fail_allocs: AtomicU64,
        /// Migration waits seen ([`Platform::migration_wait`]).
        pub migration_waits: AtomicU64,
        /// Run at each migration wait.
        pub migration_hook: MigrationHook,
        /// Run after each store of a [`Platform::write`].
        pub store_hook: StoreHook,
    }

    /// The allocation bitmap and a lower bound of its first free frame.
    #[derive(Debug)]
    struct Used {
        frames: Vec<bool>,
        first_free: usize,
    }

    impl FakePlatform {
        /// Fake memory of `frames` frames.
        pub fn new(frames: usize) -> Self {
            let mut words = Vec::with_capacity(frames * 512);
            words.resize_with(frames * 512, || AtomicU64::new(0xdead_beef_dead_beef));
            Self {
                words,
                used: Mutex::new(Used { frames: alloc::vec![false; frames], first_free: 0 }),
                free: AtomicU64::new(frames as u64),
                flushes: AtomicU64::new(0),
                fail_allocs: AtomicU64::new(0),
                migration_waits: AtomicU64::new(0),
                migration_hook: MigrationHook::default(),
                store_hook: StoreHook::default(),
            }
        }

        fn word(&self, pa: u64) -> &AtomicU64 {
            let index = (pa - BASE_PFN * 4096) / 8;
            &self.words[index as usize]
        }
    }

    impl Platform for FakePlatform {
        fn alloc(&self, order: u32) -> Option<Pfn> {
            if self.fail_allocs.load(Ordering::Relaxed) > 0 {
                self.fail_allocs.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            let n = 1usize << order;
            let mut guard = self.used.lock();
            let Used { frames: used, first_free } = &mut *guard;
            // Blocks wholly below the first free frame are in use: skip them.
            let mut i = *first_free / n * n;
            while i + n <= used.len() {
                if used[i..i + n].iter().all(|u| !u) {
                    used[i..i + n].iter_mut().for_each(|u| *u = true);
                    if i == *first_free {
                        *first_free = i + n;
                    }
                    self.free.fetch_sub(n as u64, Ordering::Relaxed);
                    return Some(Pfn(BASE_PFN + i as u64));
                }
                if n == 1 {
                    // A single frame's scan saw only used frames so far.
                    *first_free = i + 1;
                }
                i += n;
            }
            None
        }

        fn free(&self, pfn: Pfn, order: u32) {
            let n = 1usize << order;
            let i = (pfn.0 - BASE_PFN) as usize;
            let mut guard = self.used.lock();
            let Used { frames: used, first_free } = &mut *guard;
            assert!(used[i..i + n].iter().all(|u| *u), "double free of frame {:#x}", pfn.0);
            used[i..i + n].iter_mut().for_each(|u| *u = false);
            *first_free = (*first_free).min(i);
            self.free.fetch_add(n as u64, Ordering::Relaxed);
            // Poison freed memory so use-after-free shows up in tests.
            for w in 0..n * 512 {
                self.words[i * 512 + w].store(0xdead_beef_dead_beef, Ordering::Relaxed);
            }
        }

        fn free_frames(&self) -> u64 {
            self.free.load(Ordering::Relaxed)
        }

        fn zero(&self, pfn: Pfn, count: u64) {
            for w in 0..count * 512 {
                self.word(pfn.addr() + w * 8).store(0, Ordering::Relaxed);
            }
        }

        fn copy(&self, dst: Pfn, src: Pfn, count: u64) {
            for w in 0..count * 512 {
                let v = self.word(src.addr() + w * 8).load(Ordering::Relaxed);
                self.word(dst.addr() + w * 8).store(v, Ordering::Relaxed);
            }
        }

        /// One load per word touched: an aligned word is read whole, as on x86.
        fn read(&self, pa: u64, buf: &mut [u8]) {
            let mut i = 0;
            while i < buf.len() {
                let a = pa + i as u64;
                let (off, n) = ((a & 7) as usize, (8 - (a & 7) as usize).min(buf.len() - i));
                let w = self.word(a & !7).load(Ordering::Relaxed).to_le_bytes();
                buf[i..i + n].copy_from_slice(&w[off..off + n]);
                i += n;
            }
        }

        /// One store per word touched: an aligned word is written whole, and a part of a
        /// word is merged in atomically, so the other bytes of the word (another writer's)
        /// are never clobbered; as on x86.
        fn write(&self, pa: u64, buf: &[u8]) {
            let mut i = 0;
            while i < buf.len() {
                let a = pa + i as u64;
                let (off, n) = ((a & 7) as usize, (8 - (a & 7) as usize).min(buf.len() - i));
                let word = self.word(a & !7);
                if n == 8 {
                    let v = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
                    word.store(v, Ordering::Relaxed);
                } else {
                    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                        let mut b = w.to_le_bytes();
                        b[off..off + n].copy_from_slice(&buf[i..i + n]);
                        Some(u64::from_le_bytes(b))
                    });
                }
                self.store_hook.run(a & !7);
                i += n;
            }
        }

        fn load(&self, table: Pfn, index: usize) -> u64 {
            self.word(table.addr() + index as u64 * 8).load(Ordering::Acquire)
        }

        fn table(&self, table: Pfn) -> &[AtomicU64] {
            let i = ((table.0 - BASE_PFN) * 512) as usize;
            &self.words[i..i + 512]
        }

        fn store(&self, table: Pfn, index: usize, value: u64) {
            self.word(table.addr() + index as u64 * 8).store(value, Ordering::Release)
        }

        fn swap(&self, table: Pfn, index: usize, value: u64) -> u64 {
            self.word(table.addr() + index as u64 * 8).swap(value, Ordering::AcqRel)
        }

        fn init_root(&self, _root: Pfn) {}

        fn flush_tlb(&self, _root: Pfn, flush: &TlbFlush) {
            if !flush.is_empty() {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
        }

        fn migration_wait(&self, round: u32) -> bool {
            self.migration_waits.fetch_add(1, Ordering::Relaxed);
            if round > MIGRATION_WAIT_ROUNDS {
                return false;
            }
            // Run the hook outside its lock (it may set another one).
            let hook = self.migration_hook.0.lock().take();
            if let Some(mut h) = hook {
                h(round);
                self.migration_hook.0.lock().get_or_insert(h);
            }
            true
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use alloc::sync::Arc;
        use alloc::vec::Vec;

        /// A reader racing a write sees every aligned 8-byte word either as it was or as it
        /// is written, never a mix (x86's aligned 8-byte accesses are single-copy atomic; the
        /// threaded stress test checks words on that assumption). The hook runs after each
        /// store of the write: where a concurrent reader could look.
        #[test]
        fn a_reader_never_sees_an_aligned_word_half_written() {
            let p = Arc::new(FakePlatform::new(4));
            let f = p.alloc(0).expect("a frame");
            let pa = f.addr() + 64;
            let (old, new) = (0x1111_2222_3333_4444u64, 0xaaaa_bbbb_cccc_ddddu64);
            p.write(pa, &[old.to_le_bytes(), old.to_le_bytes()].concat());
            let seen = Arc::new(Mutex::new(Vec::new()));
            let (reader, log) = (p.clone(), seen.clone());
            p.store_hook.set(move |_| {
                for w in 0..2 {
                    let mut b = [0u8; 8];
                    reader.read(pa + w * 8, &mut b);
                    log.lock().push(u64::from_le_bytes(b));
                }
            });
            p.write(pa, &[new.to_le_bytes(), new.to_le_bytes()].concat());
            p.store_hook.clear();
            let seen = seen.lock().clone();
            assert!(!seen.is_empty(), "the hook ran");
            for v in seen {
                assert!(v == old || v == new, "a reader saw {v:#x}, a mix of {old:#x} and {new:#x}");
            }
            // Bytes of a word written on their own leave the others as they are.
            p.write(pa + 3, &[0x5a]);
            let mut b = [0u8; 8];
            p.read(pa, &mut b);
            assert_eq!(u64::from_le_bytes(b), (new & !(0xff << 24)) | (0x5a << 24));
            p.free(f, 0);
        }

        /// The allocator gives what a first-fit scan from frame 0 gives, for seeded mixes of
        /// orders, frees and exhaustion (its first-free hint only skips used frames).
        #[test]
        fn allocation_is_first_fit_from_frame_zero() {
            let frames = 64;
            let p = FakePlatform::new(frames);
            let mut model = alloc::vec![false; frames];
            let mut held: Vec<(Pfn, u32)> = Vec::new();
            let mut rng = crate::testing::Rng(11);
            for _ in 0..4000 {
                if held.is_empty() || rng.below(3) != 0 {
                    let order = [0, 0, 0, 1, 2, 3][rng.below(6) as usize];
                    let n = 1usize << order;
                    let expect = (0..frames / n).map(|b| b * n).find(|&i| model[i..i + n].iter().all(|u| !u));
                    let got = p.alloc(order);
                    assert_eq!(got.map(|f| (f.0 - BASE_PFN) as usize), expect, "order {order}");
                    if let Some(i) = expect {
                        model[i..i + n].iter_mut().for_each(|u| *u = true);
                        held.push((got.unwrap(), order));
                    }
                } else {
                    let (f, order) = held.swap_remove(rng.below(held.len() as u64) as usize);
                    let i = (f.0 - BASE_PFN) as usize;
                    model[i..i + (1 << order)].iter_mut().for_each(|u| *u = false);
                    p.free(f, order);
                }
                assert_eq!(p.free_frames(), model.iter().filter(|u| !**u).count() as u64);
            }
        }
    }
}
