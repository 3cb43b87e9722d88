//! PCI enumeration and BAR assignment, over virtio-drivers' [`ConfigurationAccess`].
//!
//! qboot (the fast default firmware) assigns no BARs and leaves every command register at 0,
//! so the kernel assigns all BARs itself, under SeaBIOS too, which makes the layout the same
//! under both firmwares:
//! - memory BARs go into a 32-bit window below 4 GiB, except 64-bit BARs of
//!   [`HIGH_BAR_THRESHOLD`] or more (device memory), which go into a 64-bit window; a 64-bit BAR
//!   that does not fit below 4 GiB also goes high;
//! - I/O BARs go into an I/O-port window;
//! - within a window BARs are placed largest first, each naturally aligned, so nothing is
//!   wasted on alignment between BARs of power-of-two sizes;
//! - decoding is off while BARs are written; memory (and I/O, where an I/O BAR exists)
//!   decoding and bus mastering are switched on afterwards.
//!
//! Invariants after [`assign`]: no two BARs overlap, every BAR lies inside its window and is
//! aligned to its size. Only bus 0 is scanned (QEMU's q35 root bus); bridges are reported but
//! not descended into.

extern crate alloc;

use alloc::vec::Vec;
use core::ops::Range;
use virtio_drivers::transport::{
    DeviceType,
    pci::{
        bus::{
            BarInfo, Command, ConfigurationAccess, DeviceFunction, DeviceFunctionInfo, HeaderType, MemoryBarType,
            PciRoot,
        },
        virtio_device_type,
    },
};

/// 64-bit BARs at least this large are placed in the 64-bit window.
pub const HIGH_BAR_THRESHOLD: u64 = 16 << 20;

/// Address windows BARs are assigned from.
#[derive(Debug, Clone)]
pub struct Windows {
    /// Below 4 GiB, for 32-bit and small 64-bit memory BARs.
    pub mem32: Range<u64>,
    /// Above 4 GiB, for large 64-bit BARs.
    pub mem64: Range<u64>,
    /// I/O ports.
    pub io: Range<u64>,
}

/// The kind of a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (takes two BAR slots).
    Mem64,
    /// I/O ports.
    Io,
}

/// One BAR of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR slot (0..6).
    pub index: u8,
    /// Kind.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Assigned address (0 before [`assign`]).
    pub address: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
}

/// A PCI function found on the bus.
#[derive(Debug, Clone)]
pub struct Function {
    /// Bus, device, function.
    pub df: DeviceFunction,
    /// IDs and class.
    pub info: DeviceFunctionInfo,
    /// Its BARs (standard headers only).
    pub bars: Vec<Bar>,
    /// The virtio device type, for virtio functions.
    pub virtio: Option<DeviceType>,
}

impl Function {
    /// The BDF as a 16-bit routing id (what VIOT and virtio-iommu use).
    pub fn bdf(&self) -> u16 {
        (u16::from(self.df.bus) << 8) | (u16::from(self.df.device) << 3) | u16::from(self.df.function)
    }

    /// A human name for the function.
    pub fn name(&self) -> &'static str {
        if let Some(t) = self.virtio {
            return virtio_name(t);
        }
        describe(self.info.vendor_id, self.info.device_id, self.info.class, self.info.subclass)
    }

    /// The BAR in slot `index`.
    pub fn bar(&self, index: u8) -> Option<&Bar> {
        self.bars.iter().find(|b| b.index == index)
    }
}

/// Why PCI set-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciError {
    /// A BAR reported an invalid type.
    InvalidBar {
        /// The function.
        df: DeviceFunction,
        /// The BAR's index.
        index: u8,
    },
    /// No room left in any window that can hold this BAR.
    WindowExhausted {
        /// The function.
        df: DeviceFunction,
        /// The BAR's index.
        index: u8,
        /// The BAR's size in bytes.
        size: u64,
    },
}

impl core::fmt::Display for PciError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::InvalidBar { df, index } => write!(f, "PCI {df}: BAR{index} has an invalid type"),
            Self::WindowExhausted { df, index, size } => write!(
                f,
                "PCI {df}: no room for BAR{index} ({size:#x} bytes) in the BAR windows: give the machine fewer or smaller devices"
            ),
        }
    }
}

/// Lists the functions on `bus`, with their BAR sizes (addresses as found).
pub fn enumerate<C: ConfigurationAccess>(root: &mut PciRoot<C>, bus: u8) -> Result<Vec<Function>, PciError> {
    let found: Vec<_> = root.enumerate_bus(bus).collect();
    let mut out = Vec::with_capacity(found.len());
    for (df, info) in found {
        let mut bars = Vec::new();
        if info.header_type == HeaderType::Standard {
            let raw = root.bars(df).map_err(|_| PciError::InvalidBar { df, index: 0 })?;
            for (index, bar) in raw.iter().enumerate() {
                let Some(bar) = bar else { continue };
                let index = index as u8;
                bars.push(match *bar {
                    BarInfo::Memory { address_type, prefetchable, address, size } => Bar {
                        index,
                        kind: match address_type {
                            MemoryBarType::Width64 => BarKind::Mem64,
                            MemoryBarType::Width32 | MemoryBarType::Below1MiB => BarKind::Mem32,
                        },
                        prefetchable,
                        address,
                        size,
                    },
                    BarInfo::IO { address, size } => Bar {
                        index,
                        kind: BarKind::Io,
                        prefetchable: false,
                        address: u64::from(address),
                        size: u64::from(size),
                    },
                });
            }
        }
        let virtio = virtio_device_type(&info);
        out.push(Function { df, info, bars, virtio });
    }
    Ok(out)
}

/// Assigns every BAR of `functions` from `windows` and enables decoding and bus mastering.
pub fn assign<C: ConfigurationAccess>(
    root: &mut PciRoot<C>,
    functions: &mut [Function],
    windows: &Windows,
) -> Result<(), PciError> {
    // (function index, bar position in its Vec), largest first.
    let mut order: Vec<(usize, usize)> =
        functions.iter().enumerate().flat_map(|(f, func)| (0..func.bars.len()).map(move |b| (f, b))).collect();
    order.sort_by_key(|&(f, b)| core::cmp::Reverse(functions[f].bars[b].size));

    let mut next32 = windows.mem32.start;
    let mut next64 = windows.mem64.start;
    let mut next_io = windows.io.start;
    let take = |next: &mut u64, end: u64, size: u64| -> Option<u64> {
        let at = next.checked_next_multiple_of(size)?;
        let stop = at.checked_add(size)?;
        (stop <= end).then(|| {
            *next = stop;
            at
        })
    };
    for &(f, b) in &order {
        let df = functions[f].df;
        let bar = &mut functions[f].bars[b];
        let size = bar.size.max(if bar.kind == BarKind::Io { 4 } else { 16 });
        let exhausted = PciError::WindowExhausted { df, index: bar.index, size };
        bar.address = match bar.kind {
            BarKind::Io => take(&mut next_io, windows.io.end, size),
            BarKind::Mem32 => take(&mut next32, windows.mem32.end, size),
            BarKind::Mem64 if size >= HIGH_BAR_THRESHOLD => take(&mut next64, windows.mem64.end, size),
            BarKind::Mem64 => {
                take(&mut next32, windows.mem32.end, size).or_else(|| take(&mut next64, windows.mem64.end, size))
            }
        }
        .ok_or(exhausted)?;
    }

    for func in functions.iter() {
        if func.info.header_type != HeaderType::Standard {
            continue;
        }
        let (_, command) = root.get_status_command(func.df);
        root.set_command(func.df, command & !(Command::IO_SPACE | Command::MEMORY_SPACE));
        for bar in &func.bars {
            match bar.kind {
                BarKind::Mem64 => root.set_bar_64(func.df, bar.index, bar.address),
                BarKind::Mem32 | BarKind::Io => root.set_bar_32(func.df, bar.index, bar.address as u32),
            }
        }
        let mut enable = command | Command::BUS_MASTER;
        if func.bars.iter().any(|b| b.kind != BarKind::Io) {
            enable |= Command::MEMORY_SPACE;
        }
        if func.bars.iter().any(|b| b.kind == BarKind::Io) {
            enable |= Command::IO_SPACE;
        }
        root.set_command(func.df, enable);
    }
    Ok(())
}

/// A short name for a virtio device type.
pub fn virtio_name(t: DeviceType) -> &'static str {
    match t {
        DeviceType::Network => "virtio-net",
        DeviceType::Block => "virtio-blk",
        DeviceType::Console => "virtio-console",
        DeviceType::EntropySource => "virtio-rng",
        DeviceType::MemoryBalloon | DeviceType::MemoryBallooning => "virtio-balloon",
        DeviceType::GPU => "virtio-gpu",
        DeviceType::Input => "virtio-input",
        DeviceType::Socket => "virtio-vsock",
        DeviceType::IOMMU => "virtio-iommu",
        DeviceType::Memory => "virtio-mem",
        DeviceType::Sound => "virtio-sound",
        DeviceType::_9P => "virtio-9p",
        DeviceType::ScsiHost => "virtio-scsi",
        _ => "virtio",
    }
}

/// A human name for well-known non-virtio functions of QEMU's q35 machine.
pub fn describe(vendor: u16, device: u16, class: u8, subclass: u8) -> &'static str {
    match (vendor, device) {
        (0x8086, 0x29c0) => "q35 host bridge",
        (0x8086, 0x2918) => "ICH9 LPC/ISA bridge",
        (0x8086, 0x2922) => "ICH9 AHCI",
        (0x8086, 0x2930) => "ICH9 SMBus",
        (0x1af4, 0x1110) => "ivshmem",
        (0x1234, 0x1111) => "VGA",
        (0x1b36, 0x000c) => "PCIe root port",
        _ => match (class, subclass) {
            (0x01, _) => "storage controller",
            (0x02, _) => "network controller",
            (0x03, _) => "display controller",
            (0x05, _) => "memory controller",
            (0x06, _) => "bridge",
            _ => "device",
        },
    }
}

#[cfg(test)]
// The fake configuration space implements virtio-drivers' trait, whose clone is `unsafe fn`.
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use alloc::{collections::BTreeMap, rc::Rc, vec};
    use core::cell::RefCell;

    /// A fake configuration space: functions with BAR size masks that behave like hardware
    /// (writing all ones reads back the size mask; flags bits are read-only).
    #[derive(Default)]
    struct Space {
        /// (device, function) -> (config words, per-BAR writable masks)
        funcs: BTreeMap<(u8, u8), ([u32; 64], [u32; 6])>,
    }

    #[derive(Clone)]
    struct FakeCam(Rc<RefCell<Space>>);

    impl ConfigurationAccess for FakeCam {
        fn read_word(&self, df: DeviceFunction, off: u8) -> u32 {
            let s = self.0.borrow();
            s.funcs.get(&(df.device, df.function)).map_or(0xffff_ffff, |f| f.0[usize::from(off / 4)])
        }
        fn write_word(&mut self, df: DeviceFunction, off: u8, data: u32) {
            let mut s = self.0.borrow_mut();
            let Some(f) = s.funcs.get_mut(&(df.device, df.function)) else { return };
            let word = usize::from(off / 4);
            if (4..10).contains(&word) {
                let mask = f.1[word - 4];
                f.0[word] = (f.0[word] & !mask) | (data & mask);
            } else {
                f.0[word] = data;
            }
        }
        unsafe fn unsafe_clone(&self) -> Self {
            // Sharing one Rc'd space is exactly what the trait asks for.
            self.clone()
        }
    }

    /// Adds a function; `bars` are (flags, size) per slot, size 0 = absent; a 64-bit BAR takes
    /// its slot and the next (give the next as (0, 0)).
    fn add(space: &Rc<RefCell<Space>>, dev: u8, vendor: u16, device: u16, bars: &[(u32, u64)]) {
        let mut words = [0u32; 64];
        words[0] = u32::from(vendor) | (u32::from(device) << 16);
        words[2] = 0x0100_0000;
        let mut masks = [0u32; 6];
        let mut i = 0;
        while i < bars.len() {
            let (flags, size) = bars[i];
            if size != 0 {
                let mask = !(size - 1);
                words[4 + i] = flags;
                masks[i] = (mask as u32) & if flags & 1 == 1 { !0x3 } else { !0xf };
                if flags & 0b110 == 0b100 {
                    masks[i + 1] = (mask >> 32) as u32;
                    i += 1;
                }
            }
            i += 1;
        }
        space.borrow_mut().funcs.insert((dev, 0), (words, masks));
    }

    fn windows() -> Windows {
        Windows { mem32: 0xc000_0000..0xfec0_0000, mem64: 0x80_0000_0000..0x90_0000_0000, io: 0xc000..0x1_0000 }
    }

    fn q35_like() -> (Rc<RefCell<Space>>, PciRoot<FakeCam>) {
        let space = Rc::new(RefCell::new(Space::default()));
        add(&space, 0, 0x8086, 0x29c0, &[]);
        // virtio-blk modern: BAR1 32-bit 4K MSI-X, BAR4 64-bit prefetchable 16K
        add(&space, 1, 0x1af4, 0x1042, &[(0, 0), (0, 0x1000), (0, 0), (0, 0), (0xc, 0x4000), (0, 0)]);
        // ivshmem: BAR0 256 B regs, BAR2 64-bit prefetchable 64 MiB
        add(&space, 2, 0x1af4, 0x1110, &[(0, 0x100), (0, 0), (0xc, 64 << 20), (0, 0)]);
        // an I/O BAR
        add(&space, 3, 0x1234, 0x5678, &[(1, 0x20)]);
        let root = PciRoot::new(FakeCam(space.clone()));
        (space, root)
    }

    #[test]
    fn enumerates_and_sizes_bars() {
        let (_, mut root) = q35_like();
        let funcs = enumerate(&mut root, 0).unwrap();
        assert_eq!(funcs.len(), 4);
        assert_eq!(funcs[1].virtio, Some(DeviceType::Block));
        assert_eq!(funcs[1].name(), "virtio-blk");
        assert_eq!(funcs[2].name(), "ivshmem");
        assert_eq!(funcs[1].bars.iter().map(|b| (b.index, b.size)).collect::<Vec<_>>(), vec![(1, 0x1000), (4, 0x4000)]);
        assert_eq!(funcs[2].bar(2).unwrap().kind, BarKind::Mem64);
        assert_eq!(funcs[3].bar(0).unwrap().kind, BarKind::Io);
        assert_eq!(funcs[2].bdf(), 2 << 3);
    }

    #[test]
    fn assigns_aligned_non_overlapping_bars_and_enables_decoding() {
        let (space, mut root) = q35_like();
        let mut funcs = enumerate(&mut root, 0).unwrap();
        assign(&mut root, &mut funcs, &windows()).unwrap();
        let w = windows();
        let mut all: Vec<Bar> = funcs.iter().flat_map(|f| f.bars.iter().copied()).collect();
        for b in &all {
            assert_eq!(b.address % b.size, 0, "{b:?} misaligned");
            let win = match b.kind {
                BarKind::Io => &w.io,
                _ if b.address >= 1 << 32 => &w.mem64,
                _ => &w.mem32,
            };
            assert!(win.start <= b.address && b.address + b.size <= win.end, "{b:?} outside its window");
        }
        all.sort_by_key(|b| (b.kind == BarKind::Io, b.address));
        for pair in all.windows(2) {
            if pair[0].kind == pair[1].kind || (pair[0].kind != BarKind::Io && pair[1].kind != BarKind::Io) {
                assert!(pair[0].address + pair[0].size <= pair[1].address, "{pair:?} overlap");
            }
        }
        // The large ivshmem BAR went high, the small 64-bit virtio BAR stayed low.
        assert!(funcs[2].bar(2).unwrap().address >= 1 << 32);
        assert!(funcs[1].bar(4).unwrap().address < 1 << 32);
        // The hardware sees the addresses, and decoding is on.
        let again = enumerate(&mut root, 0).unwrap();
        for (a, b) in again.iter().zip(&funcs) {
            assert_eq!(a.bars, b.bars);
        }
        let cmd = space.borrow().funcs[&(1, 0)].0[1] as u16;
        assert_eq!(cmd & 0x6, 0x6, "memory space and bus master enabled");
        let cmd = space.borrow().funcs[&(3, 0)].0[1] as u16;
        assert_eq!(cmd & 0x5, 0x5, "io space and bus master enabled");
    }

    #[test]
    fn a_full_window_is_a_clear_error() {
        let (_, mut root) = q35_like();
        let mut funcs = enumerate(&mut root, 0).unwrap();
        let tiny =
            Windows { mem32: 0xc000_0000..0xc000_2000, mem64: 0x80_0000_0000..0x80_0100_0000, io: 0xc000..0xc100 };
        let err = assign(&mut root, &mut funcs, &tiny).unwrap_err();
        assert!(matches!(err, PciError::WindowExhausted { size, .. } if size == 64 << 20));
        assert!(err.to_string().contains("no room"));
    }

    #[test]
    fn small_64bit_bars_fall_back_to_the_high_window() {
        let (_, mut root) = q35_like();
        let mut funcs = enumerate(&mut root, 0).unwrap();
        let w = Windows { mem32: 0xc000_0000..0xc000_1100, ..windows() };
        assign(&mut root, &mut funcs, &w).unwrap();
        assert!(funcs[1].bar(4).unwrap().address >= 1 << 32);
    }
}

/// What a PCI function is to the device model (`qemu/*.toml`, brief "The devices").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Device memory (an ivshmem BAR): starts a device.
    Memory,
    /// A virtio-blk copy engine.
    Engine,
    /// A virtio-mem hot-plug region.
    Hotplug,
    /// Anything else (ignored).
    Other,
}

/// One device's functions, as indices into the list given to [`group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    /// The device memory.
    pub memory: usize,
    /// Its copy engine.
    pub engine: usize,
    /// The hot-plug region and its copy engine.
    pub hot: Option<(usize, usize)>,
}

/// A function that does not fit the xtask's layout of devices (see [`group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupError {
    /// Function `function` (a `part`) does not follow a device memory; it would start device `device`.
    Stray {
        /// Index of the function.
        function: usize,
        /// What it is.
        part: Part,
        /// The device it would have started.
        device: usize,
    },
    /// Device `device`'s memory (function `function`) has no copy engine after it.
    MemoryWithoutEngine {
        /// The device.
        device: usize,
        /// Index of its device-memory function.
        function: usize,
    },
    /// Device `device`'s hot-plug region (function `function`) has no copy engine after it.
    HotplugWithoutEngine {
        /// The device.
        device: usize,
        /// Index of its virtio-mem function.
        function: usize,
    },
}

impl core::fmt::Display for GroupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Self::Stray { function, part, device } => {
                write!(f, "function {function} ({part:?}) does not follow a device memory (device {device})")
            }
            Self::MemoryWithoutEngine { device, function } => {
                write!(f, "device {device}: device memory (function {function}) has no copy engine after it")
            }
            Self::HotplugWithoutEngine { device, function } => {
                write!(f, "device {device}: hot-plug region (function {function}) has no copy engine")
            }
        }
    }
}

/// Groups functions, in PCI order, into devices the way the xtask lays them out: each device
/// memory is followed by its copy engine, then optionally by a virtio-mem region and that
/// region's copy engine. Anything that does not fit (a stray engine, a device memory with no
/// engine, a region with no engine) is named in the error.
pub fn group(parts: &[Part]) -> Result<alloc::vec::Vec<Group>, GroupError> {
    let mut out = alloc::vec::Vec::new();
    let relevant: alloc::vec::Vec<(usize, Part)> =
        parts.iter().copied().enumerate().filter(|&(_, p)| p != Part::Other).collect();
    let mut it = relevant.iter().peekable();
    while let Some(&(i, p)) = it.next() {
        let n = out.len();
        if p != Part::Memory {
            return Err(GroupError::Stray { function: i, part: p, device: n });
        }
        let engine = match it.next() {
            Some(&(j, Part::Engine)) => j,
            _ => return Err(GroupError::MemoryWithoutEngine { device: n, function: i }),
        };
        let hot = match it.peek() {
            Some(&&(k, Part::Hotplug)) => {
                it.next();
                match it.next() {
                    Some(&(l, Part::Engine)) => Some((k, l)),
                    _ => return Err(GroupError::HotplugWithoutEngine { device: n, function: k }),
                }
            }
            _ => None,
        };
        out.push(Group { memory: i, engine, hot });
    }
    Ok(out)
}

#[cfg(test)]
mod group_tests {
    use super::Part::*;
    use super::*;

    #[test]
    fn devices_group_in_pci_order() {
        let g = group(&[Other, Memory, Engine, Hotplug, Engine, Other, Memory, Engine]).unwrap();
        assert_eq!(g, [Group { memory: 1, engine: 2, hot: Some((3, 4)) }, Group { memory: 6, engine: 7, hot: None }]);
        assert_eq!(group(&[Other]).unwrap(), []);
    }

    #[test]
    fn stray_functions_are_named() {
        assert_eq!(group(&[Memory]), Err(GroupError::MemoryWithoutEngine { device: 0, function: 0 }));
        assert_eq!(group(&[Engine]), Err(GroupError::Stray { function: 0, part: Engine, device: 0 }));
        assert_eq!(group(&[Memory, Engine, Hotplug]), Err(GroupError::HotplugWithoutEngine { device: 0, function: 2 }));
        assert_eq!(
            group(&[Memory, Engine, Hotplug, Memory]),
            Err(GroupError::HotplugWithoutEngine { device: 0, function: 2 })
        );
        assert_eq!(group(&[Memory, Engine, Engine]), Err(GroupError::Stray { function: 2, part: Engine, device: 1 }));
        // The text names the function and what is missing.
        assert!(group(&[Memory]).unwrap_err().to_string().contains("no copy engine"));
        assert!(group(&[Engine]).unwrap_err().to_string().contains("does not follow"));
    }
}
