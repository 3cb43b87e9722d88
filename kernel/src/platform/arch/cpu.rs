//! CPU identification and the few model-specific registers the kernel touches.

use core::arch::x86_64::__cpuid;

/// Features the kernel cares about, read once from CPUID.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// EFER.NXE was enabled by the entry code (CPUID.80000001h:EDX.NX).
    pub nx: bool,
    /// x2APIC (CPUID.1:ECX bit 21).
    pub x2apic: bool,
    /// Global pages (CPUID.1:EDX bit 13).
    pub pge: bool,
    /// 1 GiB pages (CPUID.80000001h:EDX bit 26).
    pub huge_1g: bool,
    /// Invariant TSC (CPUID.80000007h:EDX bit 8).
    pub invariant_tsc: bool,
    /// Physical address bits.
    pub phys_bits: u8,
}

/// Reads the CPU's features.
pub fn features() -> Features {
    let leaf1 = __cpuid(1);
    let max_ext = __cpuid(0x8000_0000).eax;
    let ext1 = if max_ext >= 0x8000_0001 { __cpuid(0x8000_0001).edx } else { 0 };
    let ext7 = if max_ext >= 0x8000_0007 { __cpuid(0x8000_0007).edx } else { 0 };
    let phys_bits = if max_ext >= 0x8000_0008 { (__cpuid(0x8000_0008).eax & 0xff) as u8 } else { 36 };
    Features {
        nx: ext1 & (1 << 20) != 0,
        x2apic: leaf1.ecx & (1 << 21) != 0,
        pge: leaf1.edx & (1 << 13) != 0,
        huge_1g: ext1 & (1 << 26) != 0,
        invariant_tsc: ext7 & (1 << 8) != 0,
        phys_bits,
    }
}

/// The wait between INIT and STARTUP when starting an application processor, ns: none on a
/// modern CPU, the MultiProcessor Specification's 10 ms otherwise ([`drivers::cpuid`]).
pub fn ap_init_delay_ns() -> u64 {
    let v = __cpuid(0);
    let mut vendor = [0u8; 12];
    for (i, reg) in [v.ebx, v.edx, v.ecx].iter().enumerate() {
        vendor[i * 4..i * 4 + 4].copy_from_slice(&reg.to_le_bytes());
    }
    drivers::cpuid::init_delay_ns(&vendor, __cpuid(1).eax)
}

/// The initial APIC id of the running CPU (CPUID.1:EBX[31:24]); the log prefix uses it.
pub fn apic_id() -> u32 {
    __cpuid(1).ebx >> 24
}

/// The CPU's brand string, e.g. "QEMU TCG CPU version 2.5+".
pub fn brand(buf: &mut [u8; 48]) -> &str {
    if __cpuid(0x8000_0000).eax < 0x8000_0004 {
        return "unknown";
    }
    for (i, leaf) in (0x8000_0002u32..=0x8000_0004).enumerate() {
        let r = __cpuid(leaf);
        for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
            buf[i * 16 + j * 4..i * 16 + j * 4 + 4].copy_from_slice(&reg.to_le_bytes());
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(48);
    core::str::from_utf8(&buf[..end]).unwrap_or("unknown").trim()
}
