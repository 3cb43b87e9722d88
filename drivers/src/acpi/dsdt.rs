//! The devices a DSDT declares statically: each `Device` with its `_HID` and the fixed memory
//! windows and interrupts of its `_CRS`, read from the AML without running it. This is how
//! virtio-mmio transports are found on a machine whose firmware describes them only in ACPI
//! (QEMU's microvm with ACPI, Firecracker with ACPI: `_HID` `"LNRO0005"`, a `Memory32Fixed`
//! window and one `Interrupt`).
//!
//! The walk understands the AML a firmware uses to declare devices: `Scope`, `Device`, `Name`
//! with integer, string, buffer and package data, and it steps over what it does not read by
//! its encoded length (`Method`, `Field`, `IndexField`, `BankField`, `If`/`Else`, `While`,
//! `Processor`, `PowerResource`, `ThermalZone`) or its fixed shape (`OperationRegion` with
//! constant offset and length, `Mutex`, `Event`, `Alias`, `External`). Any other opcode at the level of a scope's terms ends the walk of that scope
//! with [`AmlError::Unsupported`] naming it and its offset, so a table it cannot read is
//! reported, never misread. Names built at run time (a `_CRS` that is a `Method`) are not
//! seen: only static `Name` objects are.

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;

/// Bytes of the table header before the AML.
const HEADER: usize = 36;

/// One `Device` of the DSDT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its path, e.g. `\_SB_.VR23`.
    pub path: String,
    /// `_HID` as a string (an EISA id integer is decoded to its 7 characters).
    pub hid: Option<String>,
    /// `_UID` when it is an integer.
    pub uid: Option<u64>,
    /// `Memory32Fixed` windows of a static `_CRS`: (base, length).
    pub memory: Vec<(u64, u64)>,
    /// Interrupts of a static `_CRS` (extended `Interrupt` descriptors and `IRQ` masks).
    pub irqs: Vec<u32>,
}

/// Why the AML could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmlError {
    /// The table is shorter than its header, or its length field is impossible.
    BadLength(usize),
    /// An object runs past the end of what encloses it, at this offset.
    Truncated(usize),
    /// An opcode the walk does not read, at this offset of the table.
    Unsupported {
        /// The opcode (`0x5bxx` for extended ones).
        opcode: u16,
        /// Offset in the table.
        offset: usize,
    },
}

impl core::fmt::Display for AmlError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadLength(n) => write!(f, "DSDT: a {n}-byte table is shorter than its header or its length field"),
            Self::Truncated(o) => write!(f, "DSDT: an AML object at offset {o:#x} runs past its end"),
            Self::Unsupported { opcode, offset } => write!(
                f,
                "DSDT: AML opcode {opcode:#x} at offset {offset:#x} is not one a static device declaration uses; the devices before it were read"
            ),
        }
    }
}

/// The devices declared in `table` (the whole DSDT or SSDT, header included), in table order
/// (a device before those it holds), and the error that stopped the walk early, if one did.
pub fn devices(table: &[u8]) -> (Vec<Device>, Option<AmlError>) {
    if table.len() < HEADER {
        return (Vec::new(), Some(AmlError::BadLength(table.len())));
    }
    let length = u32::from_le_bytes([table[4], table[5], table[6], table[7]]) as usize;
    if length < HEADER || length > table.len() {
        return (Vec::new(), Some(AmlError::BadLength(table.len())));
    }
    let mut w = Walk { aml: &table[..length], out: Vec::new() };
    let err = w.terms(HEADER, length, "\\", None).err();
    (w.out, err)
}

/// The virtio-mmio transports among `devices`: `_HID` `"LNRO0005"` with a memory window, as
/// (base, length, interrupt).
pub fn virtio_mmio(devices: &[Device]) -> Vec<(u64, u64, Option<u32>)> {
    devices
        .iter()
        .filter(|d| d.hid.as_deref() == Some("LNRO0005"))
        .filter_map(|d| d.memory.first().map(|&(base, len)| (base, len, d.irqs.first().copied())))
        .collect()
}

struct Walk<'a> {
    aml: &'a [u8],
    out: Vec<Device>,
}

impl Walk<'_> {
    fn byte(&self, at: usize) -> Result<u8, AmlError> {
        self.aml.get(at).copied().ok_or(AmlError::Truncated(at))
    }

    /// `PkgLength` at `at`: (the length it encodes, counted from `at`; bytes it takes).
    fn pkg_length(&self, at: usize) -> Result<(usize, usize), AmlError> {
        let lead = self.byte(at)?;
        let follow = usize::from(lead >> 6);
        if follow == 0 {
            return Ok((usize::from(lead & 0x3f), 1));
        }
        let mut len = usize::from(lead & 0x0f);
        for i in 0..follow {
            len |= usize::from(self.byte(at + 1 + i)?) << (4 + 8 * i);
        }
        Ok((len, 1 + follow))
    }

    /// The end of the object whose `PkgLength` starts at `at`, checked against `limit`.
    fn pkg_end(&self, at: usize, limit: usize) -> Result<(usize, usize), AmlError> {
        let (len, n) = self.pkg_length(at)?;
        let end = at + len;
        if len < n || end > limit {
            return Err(AmlError::Truncated(at));
        }
        Ok((end, at + n))
    }

    /// A `NameString` at `at`: (its text, the offset after it).
    fn name_string(&self, mut at: usize) -> Result<(String, usize), AmlError> {
        let mut s = String::new();
        while matches!(self.byte(at)?, b'\\' | b'^') {
            s.push(char::from(self.byte(at)?));
            at += 1;
        }
        let segs = match self.byte(at)? {
            0x00 => return Ok((s, at + 1)),
            0x2e => {
                at += 1;
                2
            }
            0x2f => {
                at += 2;
                usize::from(self.byte(at - 1)?)
            }
            _ => 1,
        };
        for i in 0..segs {
            let seg = self.aml.get(at..at + 4).ok_or(AmlError::Truncated(at))?;
            if i > 0 {
                s.push('.');
            }
            s.extend(seg.iter().map(|&b| char::from(b)));
            at += 4;
        }
        Ok((s, at))
    }

    /// An integer constant at `at` (`Zero`, `One`, `Ones`, `BytePrefix` .. `QWordPrefix`):
    /// (its value, the offset after it).
    fn integer(&self, at: usize) -> Result<Option<(u64, usize)>, AmlError> {
        let le = |n: usize| -> Result<u64, AmlError> {
            let b = self.aml.get(at + 1..at + 1 + n).ok_or(AmlError::Truncated(at))?;
            Ok(b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x)))
        };
        Ok(Some(match self.byte(at)? {
            0x00 => (0, at + 1),
            0x01 => (1, at + 1),
            0xff => (u64::MAX, at + 1),
            0x0a => (le(1)?, at + 2),
            0x0b => (le(2)?, at + 3),
            0x0c => (le(4)?, at + 5),
            0x0e => (le(8)?, at + 9),
            _ => return Ok(None),
        }))
    }

    /// The terms of a scope, `[at, end)`, whose path is `path`; `dev` collects the names of
    /// the device the scope is, if it is one.
    fn terms(&mut self, mut at: usize, end: usize, path: &str, mut dev: Option<&mut Device>) -> Result<(), AmlError> {
        while at < end {
            let op = self.byte(at)?;
            at = match op {
                // Scope: PkgLength NameString TermList.
                0x10 => {
                    let (stop, body) = self.pkg_end(at + 1, end)?;
                    let (name, next) = self.name_string(body)?;
                    self.terms(next, stop, &join(path, &name), None)?;
                    stop
                }
                // Name: NameString DataRefObject.
                0x08 => {
                    let (name, next) = self.name_string(at + 1)?;
                    self.name(next, end, &name, dev.as_deref_mut())?
                }
                // Method, If, Else, While: PkgLength ...
                0x14 | 0xa0 | 0xa1 | 0xa2 => self.pkg_end(at + 1, end)?.0,
                // Alias: NameString NameString.
                0x06 => {
                    let (_, next) = self.name_string(at + 1)?;
                    self.name_string(next)?.1
                }
                // External: NameString ObjectType ArgumentCount.
                0x15 => self.name_string(at + 1)?.1 + 2,
                0x5b => {
                    let ext = self.byte(at + 1)?;
                    match ext {
                        // Device: PkgLength NameString TermList.
                        0x82 => {
                            let (stop, body) = self.pkg_end(at + 2, end)?;
                            let (name, next) = self.name_string(body)?;
                            let p = join(path, &name);
                            let mut d =
                                Device { path: p.clone(), hid: None, uid: None, memory: Vec::new(), irqs: Vec::new() };
                            // Listed before the devices it holds.
                            let slot = self.out.len();
                            self.out.push(d.clone());
                            let r = self.terms(next, stop, &p, Some(&mut d));
                            self.out[slot] = d;
                            r?;
                            stop
                        }
                        // Field, IndexField, Processor, PowerResource, ThermalZone, BankField.
                        0x81 | 0x86 | 0x83 | 0x84 | 0x85 | 0x87 => self.pkg_end(at + 2, end)?.0,
                        // Mutex: NameString SyncFlags.
                        0x01 => self.name_string(at + 2)?.1 + 1,
                        // Event: NameString.
                        0x02 => self.name_string(at + 2)?.1,
                        // OperationRegion: NameString RegionSpace Offset Length.
                        0x80 => {
                            let (_, next) = self.name_string(at + 2)?;
                            let unsupported = AmlError::Unsupported { opcode: 0x5b80, offset: at };
                            let (_, next) = self.integer(next + 1)?.ok_or(unsupported.clone())?;
                            self.integer(next)?.ok_or(unsupported)?.1
                        }
                        _ => return Err(AmlError::Unsupported { opcode: 0x5b00 | u16::from(ext), offset: at }),
                    }
                }
                _ => return Err(AmlError::Unsupported { opcode: u16::from(op), offset: at }),
            };
        }
        Ok(())
    }

    /// The data of `Name(name, ...)` at `at`; returns the offset after it.
    fn name(&mut self, at: usize, end: usize, name: &str, dev: Option<&mut Device>) -> Result<usize, AmlError> {
        if let Some((v, next)) = self.integer(at)? {
            if let Some(d) = dev {
                match name {
                    "_HID" => d.hid = Some(eisa_id(v as u32)),
                    "_UID" => d.uid = Some(v),
                    _ => {}
                }
            }
            return Ok(next);
        }
        match self.byte(at)? {
            // String: ASCII bytes, then 0.
            0x0d => {
                let rest = self.aml.get(at + 1..end).ok_or(AmlError::Truncated(at))?;
                let n = rest.iter().position(|&b| b == 0).ok_or(AmlError::Truncated(at))?;
                if let (Some(d), "_HID") = (dev, name) {
                    d.hid = Some(rest[..n].iter().map(|&b| char::from(b)).collect());
                }
                Ok(at + 2 + n)
            }
            // Buffer: PkgLength BufferSize ByteList (a resource template for _CRS).
            0x11 => {
                let (stop, body) = self.pkg_end(at + 1, end)?;
                let (_, bytes) = self.integer(body)?.ok_or(AmlError::Unsupported { opcode: 0x11, offset: at })?;
                if let (Some(d), "_CRS") = (dev, name) {
                    resources(&self.aml[bytes.min(stop)..stop], d);
                }
                Ok(stop)
            }
            // Package, VarPackage: skipped by length.
            0x12 | 0x13 => Ok(self.pkg_end(at + 1, end)?.0),
            op => Err(AmlError::Unsupported { opcode: u16::from(op), offset: at }),
        }
    }
}

/// `path` joined with `name` (absolute names replace it).
fn join(path: &str, name: &str) -> String {
    if name.starts_with('\\') {
        return String::from(name);
    }
    let mut s = String::from(path);
    if !s.ends_with('\\') {
        s.push('.');
    }
    s.push_str(name);
    s
}

/// An EISA id (`EisaId("PNP0501")` compiles to this dword) as its 7 characters.
fn eisa_id(v: u32) -> String {
    let v = v.swap_bytes();
    let letter = |shift: u32| char::from(b'@' + ((v >> shift) & 0x1f) as u8);
    let hex = |shift: u32| char::from_digit((v >> shift) & 0xf, 16).unwrap_or('?').to_ascii_uppercase();
    [letter(26), letter(21), letter(16), hex(12), hex(8), hex(4), hex(0)].into_iter().collect()
}

/// Reads a resource template's descriptors into `d` (up to the end tag or a malformed one).
fn resources(mut b: &[u8], d: &mut Device) {
    while let Some(&tag) = b.first() {
        if tag & 0x80 == 0 {
            // Small item: type in bits 6..3, length in bits 2..0.
            let len = usize::from(tag & 7);
            let Some(body) = b.get(1..1 + len) else { return };
            match tag >> 3 {
                // End tag.
                0x0f => return,
                // IRQ: a 16-bit mask of lines.
                0x04 if len >= 2 => {
                    let mask = u16::from_le_bytes([body[0], body[1]]);
                    d.irqs.extend((0..16).filter(|i| mask & (1 << i) != 0));
                }
                _ => {}
            }
            b = &b[1 + len..];
        } else {
            let Some(len) = b.get(1..3).map(|l| usize::from(u16::from_le_bytes([l[0], l[1]]))) else { return };
            let Some(body) = b.get(3..3 + len) else { return };
            match tag {
                // Memory32Fixed: information, base, length.
                0x86 if len >= 9 => {
                    let base = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
                    let size = u32::from_le_bytes([body[5], body[6], body[7], body[8]]);
                    d.memory.push((u64::from(base), u64::from(size)));
                }
                // Extended Interrupt: flags, count, then the interrupts.
                0x89 if len >= 2 => {
                    let n = usize::from(body[1]);
                    for i in 0..n {
                        if let Some(x) = body.get(2 + 4 * i..6 + 4 * i) {
                            d.irqs.push(u32::from_le_bytes([x[0], x[1], x[2], x[3]]));
                        }
                    }
                }
                _ => {}
            }
            b = &b[3 + len..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's microvm DSDT with ACPI and one `virtio-rng-device` (read from the guest):
    /// fw_cfg, COM1, RTC, the GED with an `OperationRegion`, a `Field` and an `_EVT` method,
    /// the power button, and the virtio-mmio transport VR23 that holds the rng.
    const MICROVM: &[u8] = include_bytes!("testdata/microvm-virtio-rng.dsdt");

    #[test]
    fn the_microvm_dsdt_declares_its_devices_and_one_virtio_mmio_transport() {
        let (devs, err) = devices(MICROVM);
        assert_eq!(err, None);
        let paths: Vec<&str> = devs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["\\_SB_.FWCF", "\\_SB_.COM1", "\\_SB_.RTC_", "\\_SB_.GED_", "\\_SB_.PWRB", "\\_SB_.VR23"]);
        let com1 = &devs[1];
        assert_eq!((com1.hid.as_deref(), com1.uid, com1.irqs.as_slice()), (Some("PNP0501"), Some(1), &[4][..]));
        assert_eq!(devs[3].hid.as_deref(), Some("ACPI0013"));
        assert_eq!(devs[3].irqs, [9]);
        let vr = &devs[5];
        assert_eq!((vr.hid.as_deref(), vr.uid), (Some("LNRO0005"), Some(0x17)));
        assert_eq!(vr.memory, [(0xfeb0_2e00, 0x200)]);
        assert_eq!(vr.irqs, [0x2f]);
        assert_eq!(virtio_mmio(&devs), [(0xfeb0_2e00, 0x200, Some(0x2f))]);
    }

    /// QEMU 7.2's q35 DSDT (the default machine's, read from the guest): 8 KiB with a
    /// `Mutex`, methods, fields and `If` blocks at scope level, walked to its end.
    #[test]
    fn the_q35_dsdt_is_walked_to_its_end() {
        let (devs, err) = devices(include_bytes!("testdata/q35.dsdt"));
        assert_eq!(err, None);
        let hid = |p: &str| devs.iter().find(|d| d.path == p).and_then(|d| d.hid.clone());
        assert_eq!(hid("\\_SB_.PCI0").as_deref(), Some("PNP0A08"));
        assert_eq!(devs.iter().filter(|d| d.hid.as_deref() == Some("PNP0501")).count(), 1, "{devs:#?}");
        assert!(virtio_mmio(&devs).is_empty());
        assert!(devs.len() >= 30, "{}", devs.len());
    }

    #[test]
    fn pkg_lengths_of_every_width_and_name_prefixes_read() {
        let w = Walk { aml: &[0x3f, 0x4a, 0x12, 0x8b, 0x34, 0x12, 0xc1, 0x01, 0x02, 0x03], out: Vec::new() };
        assert_eq!(w.pkg_length(0), Ok((0x3f, 1)));
        assert_eq!(w.pkg_length(1), Ok((0x12a, 2)));
        assert_eq!(w.pkg_length(3), Ok((0x1234b, 3)));
        assert_eq!(w.pkg_length(6), Ok((0x0302011, 4)));
        let w = Walk { aml: b"\\^\x2eAAAABBBB\x2f\x03CCCCDDDDEEEE\x00", out: Vec::new() };
        assert_eq!(w.name_string(0), Ok(("\\^AAAA.BBBB".into(), 11)));
        assert_eq!(w.name_string(11), Ok(("CCCC.DDDD.EEEE".into(), 25)));
        assert_eq!(w.name_string(25), Ok((String::new(), 26)));
        assert_eq!(eisa_id(0x0105_d041), "PNP0501");
    }

    /// A table it cannot read says where, keeps the devices before, and never reads past the
    /// table's length.
    #[test]
    fn what_it_cannot_read_is_reported_with_its_offset() {
        let mut t = MICROVM.to_vec();
        // The first term of \_SB_ (its Device FWCF) becomes a Store (0x70).
        let at = t.windows(2).position(|w| w == [0x5b, 0x82]).unwrap();
        t[at] = 0x70;
        let (devs, err) = devices(&t);
        assert!(devs.is_empty());
        assert_eq!(err, Some(AmlError::Unsupported { opcode: 0x70, offset: at }));
        // Cut short: the length field past the bytes given.
        let (devs, err) = devices(&MICROVM[..200]);
        assert!(devs.is_empty() && err == Some(AmlError::BadLength(200)), "{err:?}");
        assert_eq!(devices(&MICROVM[..10]).1, Some(AmlError::BadLength(10)));
        // A PkgLength past its scope.
        let mut t = MICROVM.to_vec();
        t[at + 2] = 0x4f;
        t[at + 3] = 0xff;
        assert!(matches!(devices(&t).1, Some(AmlError::Truncated(_))), "{:?}", devices(&t).1);
    }
}
