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

fn fault<E: PfnEncoding>(
    s: &mut AddressSpace,
    sub: &Interval,
    start: u64,
    pfns: &mut [E::Entry],
    default: Request,
) -> Result<(), RangeError> {
    let seq = sub.read_begin().unwrap();
    let end = start + pfns.len() as u64 * PAGE;
    let mut r = HmmRange::<E> {
        notifier: sub,
        notifier_seq: seq,
        start,
        end,
        pfns,
        default_flags: default,
        pfn_flags_mask: Request::NONE,
        dev_private_owner: None,
    };
    hmm_range_fault(s, &mut r)
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
        let mut r = HmmRange::<Driver<Fmt>> {
            notifier: &sub,
            notifier_seq: seq,
            start: a,
            end: a + 12 * PAGE,
            pfns: &mut req,
            default_flags: Request::NONE,
            pfn_flags_mask: Request::WRITE,
            dev_private_owner: None,
        };
        match hmm_range_fault(&mut s, &mut r) {
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
