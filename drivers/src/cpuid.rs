//! What CPUID's vendor and family say about bringing up application processors: whether the
//! 10 ms wait between INIT and STARTUP that the MultiProcessor Specification asks for is
//! needed. As Linux decides it (`smp_quirk_init_udelay`, arch/x86/kernel/smpboot.c): Intel
//! family 6, AMD from family 0Fh and Hygon from 18h start an AP without it; anything else
//! (and an unknown vendor) keeps the specification's delay.

/// The specification's INIT-to-STARTUP delay, ns.
pub const LEGACY_INIT_DELAY_NS: u64 = 10_000_000;

/// The CPU's family from CPUID.1:EAX: the base family, plus the extended family when the base
/// is 0Fh.
pub fn family(leaf1_eax: u32) -> u32 {
    let base = (leaf1_eax >> 8) & 0xf;
    if base == 0xf { base + ((leaf1_eax >> 20) & 0xff) } else { base }
}

/// The wait between INIT and STARTUP, ns, for a CPU whose vendor string (CPUID.0: EBX, EDX,
/// ECX) is `vendor` and whose CPUID.1:EAX is `leaf1_eax`.
pub fn init_delay_ns(vendor: &[u8; 12], leaf1_eax: u32) -> u64 {
    let f = family(leaf1_eax);
    let modern = match vendor {
        b"GenuineIntel" => f == 6,
        b"AuthenticAMD" => f >= 0xf,
        b"HygonGenuine" => f >= 0x18,
        _ => false,
    };
    if modern { 0 } else { LEGACY_INIT_DELAY_NS }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPUID.1:EAX of a family/model/stepping (the extended fields as the SDM lays them out).
    fn eax(family: u32, model: u32) -> u32 {
        let (base, ext) = if family >= 0xf { (0xf, family - 0xf) } else { (family, 0) };
        (ext << 20) | ((model >> 4) << 16) | (base << 8) | ((model & 0xf) << 4)
    }

    #[test]
    fn modern_cpus_start_without_the_legacy_delay() {
        // QEMU's qemu64 model: AMD family 0Fh; Zen: 17h; an Intel Core: family 6; Hygon Dhyana: 18h.
        assert_eq!(family(eax(0xf, 0x6b)), 0xf);
        assert_eq!(family(eax(0x17, 0x31)), 0x17);
        assert_eq!(init_delay_ns(b"AuthenticAMD", eax(0xf, 0x6b)), 0);
        assert_eq!(init_delay_ns(b"AuthenticAMD", eax(0x17, 0x31)), 0);
        assert_eq!(init_delay_ns(b"GenuineIntel", eax(6, 0x55)), 0);
        assert_eq!(init_delay_ns(b"HygonGenuine", eax(0x18, 0)), 0);
    }

    #[test]
    fn older_or_unknown_cpus_keep_the_legacy_delay() {
        // A Pentium 4 (Intel family 0Fh), an Athlon (AMD family 6), Intel's family 5, a vendor
        // we do not know.
        assert_eq!(init_delay_ns(b"GenuineIntel", eax(0xf, 2)), LEGACY_INIT_DELAY_NS);
        assert_eq!(init_delay_ns(b"AuthenticAMD", eax(6, 4)), LEGACY_INIT_DELAY_NS);
        assert_eq!(init_delay_ns(b"GenuineIntel", eax(5, 2)), LEGACY_INIT_DELAY_NS);
        assert_eq!(init_delay_ns(b"HygonGenuine", eax(0x17, 0)), LEGACY_INIT_DELAY_NS);
        assert_eq!(init_delay_ns(b"CentaurHauls", eax(6, 0xf)), LEGACY_INIT_DELAY_NS);
    }
}
