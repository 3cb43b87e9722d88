//! Where things are in a device's memory: [`DevOffset`] (a byte offset) and [`DevPage`] (a
//! 4 KiB device page number). Device memory is numbered from the start of the BAR, then on
//! through the hot-plug region; that is where the device's copy engines and the CPU's windows
//! address it. Neither is a physical address (`PhysAddr`), an IOVA (`Iova`) or a virtual
//! address, and none converts into the others implicitly: the device ([`super::Device`])
//! turns an offset into a window access or a physical address, and `crate::vram` turns a
//! device page's frame number into its page number.

/// Bytes per device page.
const PAGE: u64 = 4096;

/// A byte offset in a device's memory (the BAR, then the hot-plug region).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DevOffset(u64);

impl DevOffset {
    /// Byte `v` of the device's memory.
    pub const fn new(v: u64) -> DevOffset {
        DevOffset(v)
    }

    /// Its value in bytes, for the copy engines' requests and the windows' bounds.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// `self + bytes`.
    pub const fn add(self, bytes: u64) -> DevOffset {
        DevOffset(self.0 + bytes)
    }

    /// The device page this byte is in.
    pub const fn page(self) -> DevPage {
        DevPage(self.0 / PAGE)
    }
}

impl core::fmt::Display for DevOffset {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl core::fmt::LowerHex for DevOffset {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

/// A device page number: page k of a device's memory, whose data is at [`DevOffset`]
/// k * 4096.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DevPage(u64);

impl DevPage {
    /// Device page `k`.
    pub const fn new(k: u64) -> DevPage {
        DevPage(k)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Where its first byte is.
    pub const fn offset(self) -> DevOffset {
        DevOffset(self.0 * PAGE)
    }
}

impl core::fmt::Display for DevPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}
