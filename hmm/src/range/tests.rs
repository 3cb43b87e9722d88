//! Range fault with a driver-defined format against the modern word.

use super::*;
use crate::mm::Mm;
use crate::mm::platform::fake::{BASE_PFN, FakePlatform};
use crate::mm::space::MapRequest;
use crate::mm::vma::Prot;
use crate::notifier::{IntervalOps, SeqOnly, Subscriptions};
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;

/// A device format unlike the modern word: valid at bit 0, write at 1, device memory at 2,
/// the address from bit 12, errors and holes as fixed words.
struct Fmt;

impl DeviceFormat for Fmt {
    const VALID: u64 = 1 << 0;
    const WRITE: u64 = 1 << 1;
    const DEVICE_PRIVATE: u64 = 1 << 2;
    const ERROR: u64 = 0xfff0;
    const NONE: u64 = 0;
    const SPECIAL: u64 = 0xffe0;
    const PFN_SHIFT: u32 = 12;
}

/// One `hmm_range_fault` over `[start, end)` with the sequence `seq` (a stale one for the
/// tests of the retry protocol), the range's `(default_flags, pfn_flags_mask)` and owner.
fn range_fault<E: PfnEncoding>(
    s: &mut AddressSpace,
    sub: &Interval,
    seq: u64,
    (start, end): (u64, u64),
    pfns: &mut [E::Entry],
    (default_flags, pfn_flags_mask): (Request, Request),
    dev_private_owner: Option<Owner>,
) -> Result<(), RangeError> {
    let mut r = HmmRange::<E> {
        notifier: sub,
        notifier_seq: seq,
        start,
        end,
        pfns,
        default_flags,
        pfn_flags_mask,
        dev_private_owner,
    };
    hmm_range_fault(s, &mut r)
}

fn fault<E: PfnEncoding>(
    s: &mut AddressSpace,
    sub: &Interval,
    start: u64,
    pfns: &mut [E::Entry],
    default: Request,
) -> Result<(), RangeError> {
    let seq = sub.read_begin().unwrap();
    let end = start + pfns.len() as u64 * PAGE;
    range_fault::<E>(s, sub, seq, (start, end), pfns, (default, Request::NONE), None)
}

#[test]
fn driver_format_matches_the_converted_modern_word() {
    let frames = 4096;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    let mut s = AddressSpace::new(&mm).unwrap();
    let n = 16u64;
    let a = s.mmap(MapRequest::anon(n * PAGE, Prot::RW)).unwrap();
    // Pages 0..4 written, 4..8 read (zero page), 8..12 untouched, 12..16 inaccessible.
    for i in 0..4 {
        s.fault(a + i * PAGE, Access::Write).unwrap();
    }
    for i in 4..8 {
        s.fault(a + i * PAGE, Access::Read).unwrap();
    }
    s.mprotect(a + 12 * PAGE, 4 * PAGE, Prot::NONE).unwrap();
    let ops = Arc::new(SeqOnly);
    let w: Weak<dyn IntervalOps> = Arc::downgrade(&ops) as Weak<dyn IntervalOps>;
    let sub = Subscriptions::of(&mut s).insert(a, n * PAGE, w).unwrap();

    let mut modern = vec![0u64; n as usize];
    let mut native = vec![0u64; n as usize];
    fault::<HmmPfn>(&mut s, &sub, a, &mut modern, Request::NONE).unwrap();
    fault::<Driver<Fmt>>(&mut s, &sub, a, &mut native, Request::NONE).unwrap();
    let converted: Vec<u64> = modern.iter().map(|&e| convert::<Fmt>(e, |_| false)).collect();
    assert_eq!(native, converted);
    for i in 0..4 {
        let e = native[i];
        assert_eq!(e & (Fmt::VALID | Fmt::WRITE), Fmt::VALID | Fmt::WRITE, "page {i} written: {e:#x}");
        assert_eq!(Driver::<Fmt>::pfn(e), Some(HmmPfn::pfn(modern[i])));
    }
    for (i, &e) in native.iter().enumerate().take(8).skip(4) {
        assert_eq!(e & (Fmt::VALID | Fmt::WRITE), Fmt::VALID, "page {i} is the zero page, read-only");
    }
    assert!(native[8..12].iter().all(|&e| e == Fmt::NONE));
    assert!(native[12..16].iter().all(|&e| e == Fmt::ERROR));

    // Requests in the device format: VALID asks for a fault, WRITE for write access.
    // Replacing the zero page invalidates the interval: the first walk may report Busy, and
    // the driver retries from read_begin with its requests rebuilt (pitfall P2).
    let mut tries = 0;
    let req = loop {
        tries += 1;
        assert!(tries < 4, "range fault kept returning Busy");
        let mut req = vec![Fmt::NONE; 12];
        req[9] = Driver::<Fmt>::request_bits(Request::WRITE);
        req[5] = Driver::<Fmt>::request_bits(Request::WRITE);
        let seq = sub.read_begin().unwrap();
        match range_fault::<Driver<Fmt>>(
            &mut s,
            &sub,
            seq,
            (a, a + 12 * PAGE),
            &mut req,
            (Request::NONE, Request::WRITE),
            None,
        ) {
            Ok(()) => break req,
            Err(RangeError::Busy) => continue,
            Err(e) => panic!("range fault: {e}"),
        }
    };
    assert_eq!(req[9] & (Fmt::VALID | Fmt::WRITE), Fmt::VALID | Fmt::WRITE, "untouched page faulted for write");
    assert_eq!(req[5] & (Fmt::VALID | Fmt::WRITE), Fmt::VALID | Fmt::WRITE, "zero page broken for write");
    assert_eq!(req[8], Fmt::NONE, "pages not asked for stay unfaulted");

    // A fault requested on an inaccessible page is an error, in any format.
    let mut bad = vec![0u64; 1];
    assert_eq!(fault::<Driver<Fmt>>(&mut s, &sub, a + 12 * PAGE, &mut bad, Request::FAULT), Err(RangeError::Fault));
    drop(sub);
}

// ------------------------------------------------------------------------------------------
// Helpers, argument checks, huge mappings, VMA permissions.

const M2: u64 = 2 << 20;

fn space(frames: usize) -> AddressSpace {
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    AddressSpace::new(&mm).unwrap()
}

fn seq_only() -> Arc<SeqOnly> {
    Arc::new(SeqOnly)
}

fn whole(s: &mut AddressSpace, ops: &Arc<SeqOnly>) -> crate::notifier::IntervalNotifier {
    let w: Weak<dyn IntervalOps> = Arc::downgrade(ops) as Weak<dyn IntervalOps>;
    Subscriptions::of(s).insert(0, USER_END, w).unwrap()
}

/// A range fault of `[start, end)` with per-slot requests `pfns` (mask: fault and write).
fn fault_masked(
    s: &mut AddressSpace,
    sub: &Interval,
    start: u64,
    end: u64,
    pfns: &mut [u64],
) -> Result<(), RangeError> {
    let seq = sub.read_begin().unwrap();
    range_fault::<HmmPfn>(s, sub, seq, (start, end), pfns, (Request::NONE, Request::WRITE), None)
}

#[test]
fn request_bits_are_the_input_flags_of_each_encoding() {
    let all = [Request::NONE, Request::FAULT, Request::WRITE, Request { fault: false, write: true }];
    assert_eq!(HmmPfn::request_bits(Request::NONE), 0);
    assert_eq!(HmmPfn::request_bits(Request::FAULT), HmmPfn::VALID);
    assert_eq!(HmmPfn::request_bits(Request::WRITE), HmmPfn::VALID | HmmPfn::WRITE);
    assert_eq!(HmmPfn::request_bits(Request { fault: false, write: true }), HmmPfn::WRITE);
    assert_eq!(Driver::<Fmt>::request_bits(Request::FAULT), Fmt::VALID);
    assert_eq!(Driver::<Fmt>::request_bits(Request::WRITE), Fmt::VALID | Fmt::WRITE);
    assert_eq!(Driver::<Fmt>::request_bits(Request { fault: false, write: true }), Fmt::WRITE);
    for r in all {
        assert_eq!(HmmPfn::request(HmmPfn::request_bits(r)), r);
        assert_eq!(StateSlot::request(StateSlot::request_bits(r)), r);
        if r != Request::NONE {
            assert_eq!(Driver::<Fmt>::request(Driver::<Fmt>::request_bits(r)), r);
        }
    }
    assert_eq!(StateSlot::request(StateSlot::encode(PageState::Error)), Request::NONE);
    assert_eq!(StateSlot::default(), StateSlot::Request(Request::NONE));
}

/// A format whose fixed words carry the valid bit: they must still not read as frames or as
/// fault requests.
struct Tricky;

impl DeviceFormat for Tricky {
    const VALID: u64 = 1 << 0;
    const WRITE: u64 = 1 << 1;
    const DEVICE_PRIVATE: u64 = 1 << 2;
    const ERROR: u64 = (0x7 << 60) | 1;
    const NONE: u64 = (0x3 << 60) | 1;
    const SPECIAL: u64 = (0x1 << 60) | 1;
    const PFN_SHIFT: u32 = 8;
}

#[test]
fn driver_pfn_reads_only_valid_entries() {
    let e = Driver::<Fmt>::encode(PageState::Valid { pfn: Pfn(0x1234), write: true, order: 0, device_private: true });
    assert_eq!(e, (0x1234 << 12) | Fmt::VALID | Fmt::WRITE | Fmt::DEVICE_PRIVATE);
    assert_eq!(Driver::<Fmt>::pfn(e), Some(Pfn(0x1234)));
    assert_eq!(Driver::<Fmt>::pfn(0x1234 << 12), None, "no valid bit");
    assert_eq!(Driver::<Fmt>::pfn(Fmt::ERROR), None);
    assert_eq!(Driver::<Fmt>::pfn(Fmt::NONE), None);
    let t =
        Driver::<Tricky>::encode(PageState::Valid { pfn: Pfn(0x55), write: false, order: 9, device_private: false });
    assert_eq!(t, (0x55 << 8) | Tricky::VALID);
    assert_eq!(Driver::<Tricky>::pfn(t), Some(Pfn(0x55)));
    assert_eq!(Driver::<Tricky>::pfn(Tricky::ERROR), None, "the error word is not a frame");
    assert_eq!(Driver::<Tricky>::pfn(Tricky::NONE), None, "the none word is not a frame");
    assert_eq!(Driver::<Tricky>::request(Tricky::ERROR), Request::NONE);
    assert_eq!(Driver::<Tricky>::request(Tricky::NONE), Request::NONE);
    assert_eq!(Driver::<Tricky>::encode(PageState::Error), Tricky::ERROR);
    assert_eq!(Driver::<Tricky>::encode(PageState::None), Tricky::NONE);
    // The modern word's helpers.
    let m = HmmPfn::encode(PageState::Valid { pfn: Pfn(0xabc), write: true, order: 9, device_private: false });
    assert_eq!(m, 0xabc | HmmPfn::VALID | HmmPfn::WRITE | (9 << 56));
    assert_eq!(HmmPfn::pfn(m), Pfn(0xabc));
    assert_eq!(HmmPfn::order(m), 9);
    assert_eq!(HmmPfn::encode(PageState::Error), HmmPfn::ERROR);
    assert_eq!(HmmPfn::encode(PageState::None), 0);
    assert_eq!(convert::<Fmt>(HmmPfn::ERROR, |_| true), Fmt::ERROR);
    assert_eq!(convert::<Fmt>(0, |_| true), Fmt::NONE);
    assert_eq!(
        convert::<Fmt>(0xabc | HmmPfn::VALID, |p| p == Pfn(0xabc)),
        (0xabc << 12) | Fmt::VALID | Fmt::DEVICE_PRIVATE
    );
}

#[test]
fn malformed_ranges_are_refused() {
    let mut s = space(1024);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    let a = s.mmap(MapRequest::anon(4 * PAGE, Prot::RW)).unwrap();
    let invalid = |r: Result<(), RangeError>, what: &str| match r {
        Err(RangeError::Invalid(why)) => assert!(why.contains(what), "{why}"),
        other => panic!("expected Invalid({what}), got {other:?}"),
    };
    invalid(fault_masked(&mut s, &sub, a + 1, a + PAGE, &mut [0; 1]), "page-aligned");
    invalid(fault_masked(&mut s, &sub, a, a + PAGE + 8, &mut [0; 1]), "page-aligned");
    invalid(fault_masked(&mut s, &sub, a, a, &mut []), "empty");
    invalid(fault_masked(&mut s, &sub, a + PAGE, a, &mut []), "empty");
    invalid(fault_masked(&mut s, &sub, USER_END - PAGE, USER_END + PAGE, &mut [0; 2]), "past the user");
    invalid(fault_masked(&mut s, &sub, a, a + 2 * PAGE, &mut [0; 1]), "one slot per page");
    invalid(fault_masked(&mut s, &sub, a, a + 2 * PAGE, &mut [0; 3]), "one slot per page");
    // The last page of the user address space is a valid range (a hole there: an error).
    let mut top = [0u64; 1];
    fault_masked(&mut s, &sub, USER_END - PAGE, USER_END, &mut top).unwrap();
    assert_eq!(top[0], HmmPfn::ERROR);
    let e = RangeError::Invalid("x");
    assert_eq!(e.errno(), 22);
    assert_eq!(format!("{e}"), "invalid range: x");
    let errnos: Vec<i32> =
        [RangeError::Busy, RangeError::Fault, RangeError::Permission, RangeError::NoMemory].map(|e| e.errno()).to_vec();
    assert_eq!(errnos, vec![16, 14, 1, 12]);
    for e in [RangeError::Busy, RangeError::Fault, RangeError::Permission, RangeError::NoMemory] {
        assert!(!format!("{e}").is_empty());
    }
}

#[test]
fn huge_mappings_report_each_page_frame_with_order_9() {
    let mut s = space(4096);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    let a = s.mmap(MapRequest::anon(M2, Prot::RW)).unwrap();
    assert!(a.is_multiple_of(M2));
    s.madvise(a, M2, crate::mm::space::Advice::HugePage).unwrap();
    s.fault(a + 3 * PAGE, Access::Read).unwrap();
    let hz = s.mm().huge_zero_pfn();
    let n = (M2 / PAGE) as usize;
    let mut pfns = vec![0u64; n];
    fault_masked(&mut s, &sub, a, a + M2, &mut pfns).unwrap();
    for (i, &e) in pfns.iter().enumerate() {
        assert_eq!(e & (HmmPfn::VALID | HmmPfn::WRITE | HmmPfn::ERROR), HmmPfn::VALID, "slot {i}: {e:#x}");
        assert_eq!(HmmPfn::order(e), 9, "slot {i}");
        assert_eq!(HmmPfn::pfn(e), Pfn(hz.0 + i as u64), "slot {i}: the huge zero page's frame {i}");
    }
    // A part of it, from the middle: the frames still count from the mapping's start.
    let mut part = vec![0u64; 4];
    fault_masked(&mut s, &sub, a + 100 * PAGE, a + 104 * PAGE, &mut part).unwrap();
    assert_eq!(part.iter().map(|&e| HmmPfn::pfn(e).0 - hz.0).collect::<Vec<_>>(), vec![100, 101, 102, 103]);
    // Written: a THP of its own, writable, frame by frame.
    s.fault(a, Access::Write).unwrap();
    fault_masked(&mut s, &sub, a, a + M2, &mut pfns).unwrap();
    let base = HmmPfn::pfn(pfns[0]);
    assert!(!s.mm().is_zero(base));
    for (i, &e) in pfns.iter().enumerate() {
        assert_eq!(e & (HmmPfn::VALID | HmmPfn::WRITE), HmmPfn::VALID | HmmPfn::WRITE, "slot {i}: {e:#x}");
        assert_eq!(HmmPfn::pfn(e), Pfn(base.0 + i as u64), "slot {i}");
        assert_eq!(HmmPfn::order(e), 9);
    }
}

/// Linux restarts the walk after a fault at the start of what it faulted (`hmm_vma_walk->last`
/// set by `hmm_vma_fault`; for an empty PMD that is the PMD's start), so the earlier pages of
/// a huge mapping the fault just created are reported too, requested or not.
#[test]
fn pages_before_a_fault_in_a_new_huge_mapping_are_reported() {
    let mut s = space(4096);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    let a = s.mmap(MapRequest::anon(M2, Prot::RW)).unwrap();
    s.madvise(a, M2, crate::mm::space::Advice::HugePage).unwrap();
    let n = (M2 / PAGE) as usize;
    let mut pfns = vec![0u64; n];
    pfns[5] = HmmPfn::request_bits(Request::FAULT);
    fault_masked(&mut s, &sub, a, a + M2, &mut pfns).unwrap();
    let hz = s.mm().huge_zero_pfn();
    for (i, &e) in pfns.iter().enumerate() {
        assert_eq!(e & (HmmPfn::VALID | HmmPfn::WRITE), HmmPfn::VALID, "slot {i}: {e:#x}");
        assert_eq!(HmmPfn::pfn(e), Pfn(hz.0 + i as u64), "slot {i}");
    }
    // Same with a write request: one THP, every slot writable.
    let b = s.mmap(MapRequest::anon(M2, Prot::RW)).unwrap();
    s.madvise(b, M2, crate::mm::space::Advice::HugePage).unwrap();
    let mut pfns = vec![0u64; n];
    pfns[7] = HmmPfn::request_bits(Request::WRITE);
    fault_masked(&mut s, &sub, b, b + M2, &mut pfns).unwrap();
    assert!(pfns.iter().all(|&e| e & (HmmPfn::VALID | HmmPfn::WRITE) == HmmPfn::VALID | HmmPfn::WRITE));
    // 4 KiB pages: what was not asked for and not there stays 0.
    let c = s.mmap(MapRequest::anon(8 * PAGE, Prot::RW)).unwrap();
    s.madvise(c, 8 * PAGE, crate::mm::space::Advice::NoHugePage).unwrap();
    let mut pfns = vec![0u64; 8];
    pfns[3] = HmmPfn::request_bits(Request::FAULT);
    fault_masked(&mut s, &sub, c, c + 8 * PAGE, &mut pfns).unwrap();
    assert_eq!(
        pfns.iter().map(|&e| e & HmmPfn::VALID != 0).collect::<Vec<_>>(),
        [false, false, false, true, false, false, false, false]
    );
}

/// Linux's `hmm_vma_walk_test`: a VMA without `VM_READ` cannot be mirrored; its pages are
/// `ERROR`, and a fault requested there is `-EFAULT`.
#[test]
fn vmas_without_read_permission_are_errors() {
    let mut s = space(1024);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    for prot in [Prot::WRITE, Prot::EXEC, Prot::NONE] {
        let a = s.mmap(MapRequest::anon(2 * PAGE, prot)).unwrap();
        let mut pfns = [0u64; 2];
        fault_masked(&mut s, &sub, a, a + 2 * PAGE, &mut pfns).unwrap();
        assert_eq!(pfns, [HmmPfn::ERROR; 2], "{prot:?}: a snapshot reports errors");
        let mut pfns = [0, HmmPfn::request_bits(Request::FAULT)];
        assert_eq!(fault_masked(&mut s, &sub, a, a + 2 * PAGE, &mut pfns), Err(RangeError::Fault), "{prot:?}");
        let mut pfns = [HmmPfn::request_bits(Request::WRITE), 0];
        assert_eq!(fault_masked(&mut s, &sub, a, a + 2 * PAGE, &mut pfns), Err(RangeError::Fault), "{prot:?}");
    }
    // Readable ones are mirrored: read-only reports, and refuses a write request.
    let r = s.mmap(MapRequest::anon(PAGE, Prot::READ)).unwrap();
    let mut pfns = [HmmPfn::request_bits(Request::FAULT)];
    fault_masked(&mut s, &sub, r, r + PAGE, &mut pfns).unwrap();
    assert_eq!(pfns[0] & (HmmPfn::VALID | HmmPfn::WRITE), HmmPfn::VALID);
    let mut pfns = [HmmPfn::request_bits(Request::WRITE)];
    assert_eq!(fault_masked(&mut s, &sub, r, r + PAGE, &mut pfns), Err(RangeError::Permission));
}

#[test]
fn a_stale_sequence_is_busy_before_and_after_the_walk() {
    let mut s = space(1024);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    let a = s.mmap(MapRequest::anon(4 * PAGE, Prot::RW)).unwrap();
    s.madvise(a, 4 * PAGE, crate::mm::space::Advice::NoHugePage).unwrap();
    s.fault(a, Access::Read).unwrap(); // the zero page
    // An invalidation between read_begin and the walk: Busy at once, no output written.
    let seq = sub.read_begin().unwrap();
    s.munmap(a + 3 * PAGE, PAGE).unwrap();
    let mut pfns = vec![7u64; 3];
    assert_eq!(
        range_fault::<HmmPfn>(&mut s, &sub, seq, (a, a + 3 * PAGE), &mut pfns, (Request::NONE, Request::NONE), None),
        Err(RangeError::Busy)
    );
    assert_eq!(pfns, [7, 7, 7]);
    // Nor is anything faulted: the stale walk stops before its first fault.
    let mut pfns = vec![0, 0, HmmPfn::request_bits(Request::WRITE)];
    assert_eq!(
        range_fault::<HmmPfn>(&mut s, &sub, seq, (a, a + 3 * PAGE), &mut pfns, (Request::NONE, Request::WRITE), None),
        Err(RangeError::Busy)
    );
    assert!(s.lookup(a + 2 * PAGE).is_none(), "a walk with a stale sequence faulted a page in");
    // A fault that replaces a mapped page (the zero page, broken for a write) invalidates the
    // interval itself: that walk is Busy, the next one from a new read_begin succeeds.
    let mut pfns = vec![HmmPfn::request_bits(Request::WRITE), 0, 0];
    assert_eq!(fault_masked(&mut s, &sub, a, a + 3 * PAGE, &mut pfns), Err(RangeError::Busy));
    let mut pfns = vec![HmmPfn::request_bits(Request::WRITE), 0, 0];
    fault_masked(&mut s, &sub, a, a + 3 * PAGE, &mut pfns).unwrap();
    assert_eq!(pfns[0] & (HmmPfn::VALID | HmmPfn::WRITE), HmmPfn::VALID | HmmPfn::WRITE);
    assert_eq!(&pfns[1..], &[0, 0]);
}

#[test]
fn holes_between_vmas_are_errors_and_the_walk_goes_on_after_them() {
    let mut s = space(1024);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    let a = s.mmap(MapRequest::anon(6 * PAGE, Prot::RW)).unwrap();
    s.munmap(a + 2 * PAGE, 2 * PAGE).unwrap();
    for i in [0, 1, 4, 5] {
        s.fault(a + i * PAGE, Access::Write).unwrap();
    }
    let mut pfns = vec![0u64; 6];
    fault_masked(&mut s, &sub, a, a + 6 * PAGE, &mut pfns).unwrap();
    let kinds: Vec<u64> = pfns.iter().map(|&e| e & HmmPfn::FLAGS).collect();
    let rw = HmmPfn::VALID | HmmPfn::WRITE;
    assert_eq!(kinds, [rw, rw, HmmPfn::ERROR, HmmPfn::ERROR, rw, rw]);
    // A fault asked for in the hole fails the whole range.
    let mut pfns = vec![0u64; 6];
    pfns[3] = HmmPfn::request_bits(Request::FAULT);
    assert_eq!(fault_masked(&mut s, &sub, a, a + 6 * PAGE, &mut pfns), Err(RangeError::Fault));
    // Faults after the hole are made.
    let c = s.mmap(MapRequest::anon(6 * PAGE, Prot::RW)).unwrap();
    s.munmap(c + 2 * PAGE, 2 * PAGE).unwrap();
    let mut pfns = vec![0u64; 6];
    pfns[5] = HmmPfn::request_bits(Request::WRITE);
    fault_masked(&mut s, &sub, c, c + 6 * PAGE, &mut pfns).unwrap();
    let kinds: Vec<u64> = pfns.iter().map(|&e| e & HmmPfn::FLAGS).collect();
    assert_eq!(kinds, [0, 0, HmmPfn::ERROR, HmmPfn::ERROR, 0, rw]);
}

#[test]
fn without_a_mask_slot_bits_are_ignored() {
    // P2: a caller that reuses the array sees its old outputs read as requests unless the
    // mask is 0, which takes only default_flags.
    let mut s = space(1024);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    let a = s.mmap(MapRequest::anon(2 * PAGE, Prot::READ)).unwrap();
    let mut pfns = vec![HmmPfn::VALID | HmmPfn::WRITE | 0x1234; 2];
    let seq = sub.read_begin().unwrap();
    range_fault::<HmmPfn>(&mut s, &sub, seq, (a, a + 2 * PAGE), &mut pfns, (Request::FAULT, Request::NONE), None)
        .unwrap();
    assert!(pfns.iter().all(|&e| e & (HmmPfn::VALID | HmmPfn::WRITE) == HmmPfn::VALID), "{pfns:x?}");
    assert!(pfns.iter().all(|&e| s.mm().is_zero(HmmPfn::pfn(e))), "read faults map the zero page");
    // With a mask, the same bits are requests: a write on a read-only mapping.
    let mut pfns = vec![HmmPfn::VALID | HmmPfn::WRITE; 2];
    assert_eq!(fault_masked(&mut s, &sub, a, a + 2 * PAGE, &mut pfns), Err(RangeError::Permission));
    // And the mask limits them: fault only, the write bit dropped.
    let mut pfns = vec![HmmPfn::VALID | HmmPfn::WRITE; 2];
    let seq = sub.read_begin().unwrap();
    range_fault::<HmmPfn>(&mut s, &sub, seq, (a, a + 2 * PAGE), &mut pfns, (Request::NONE, Request::FAULT), None)
        .unwrap();
    assert!(pfns.iter().all(|&e| e & (HmmPfn::VALID | HmmPfn::WRITE) == HmmPfn::VALID));
}

#[test]
fn out_of_memory_while_faulting_is_no_memory() {
    let mut s = space(1024);
    let ops = seq_only();
    let sub = whole(&mut s, &ops);
    let n = 1024u64;
    let a = s.mmap(MapRequest::anon(n * PAGE, Prot::RW)).unwrap();
    s.madvise(a, n * PAGE, crate::mm::space::Advice::NoHugePage).unwrap();
    let mut pfns = vec![0u64; n as usize];
    let seq = sub.read_begin().unwrap();
    assert_eq!(
        range_fault::<HmmPfn>(&mut s, &sub, seq, (a, a + n * PAGE), &mut pfns, (Request::WRITE, Request::NONE), None),
        Err(RangeError::NoMemory)
    );
}

/// Linux 6.1 never faults a device-private page of the caller's owner, not even for a write
/// request on a read-only one: it is reported as it is.
#[test]
fn own_device_private_pages_are_never_faulted() {
    use crate::dmirror::{Dmirror, DmirrorDevice};
    use crate::pagemap::{MemoryKind, Pagemaps};
    const OWNER: Owner = Owner(0xc0);
    let frames = 8192;
    let mm = Mm::new(Arc::new(FakePlatform::new(frames)), &[(Pfn(BASE_PFN), frames as u64)]).unwrap();
    let pagemaps = Pagemaps::install(&mm).unwrap();
    let space = mm.share(AddressSpace::new(&mm).unwrap());
    let dev = DmirrorDevice::new(&pagemaps, MemoryKind::Private, OWNER, 2 << 20);
    let file = Dmirror::open(&dev, &space).unwrap();
    let a = {
        let mut s = space.lock();
        let a = s.mmap(MapRequest::anon(2 * PAGE, Prot::RW)).unwrap();
        s.write(a, &[5u8; 2 * PAGE as usize]).unwrap();
        s.mprotect(a + PAGE, PAGE, Prot::READ).unwrap();
        a
    };
    file.migrate_to_dev(a, 2).unwrap();
    let ops = seq_only();
    let sub = whole(&mut space.lock(), &ops);
    let mut pfns = vec![HmmPfn::request_bits(Request::WRITE); 2];
    let seq = sub.read_begin().unwrap();
    let mut s = space.lock();
    range_fault::<HmmPfn>(
        &mut s,
        &sub,
        seq,
        (a, a + 2 * PAGE),
        &mut pfns,
        (Request::NONE, Request::WRITE),
        Some(OWNER),
    )
    .unwrap();
    let flags: Vec<u64> = pfns.iter().map(|&e| e & (HmmPfn::VALID | HmmPfn::WRITE | HmmPfn::ERROR)).collect();
    assert_eq!(flags, [HmmPfn::VALID | HmmPfn::WRITE, HmmPfn::VALID], "{pfns:x?}");
    for (i, &e) in pfns.iter().enumerate() {
        let entry = s.lookup(a + i as u64 * PAGE).unwrap();
        assert!(
            matches!(entry.pte, crate::mm::pte::Pte::Soft(p) if p.kind == SoftKind::DevicePrivate && p.pfn == HmmPfn::pfn(e)),
            "page {i} stays on the device: {entry:?}"
        );
    }
    drop(s);
    drop(sub);
    file.close().unwrap();
}
