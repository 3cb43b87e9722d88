//! Owned handles to physical memory: [`FrameRange`] (frames from the frame allocator, returned
//! on drop) and [`PhysWindow`] (device memory the platform mapped from a PCI BAR it
//! enumerated). Reading or writing needs the handle; every access is bounds-checked against
//! it and reported as a [`HandleError`] value.
//!
//! Invariants: a `FrameRange` is the only owner of its frames (it came from
//! [`super::frame::alloc`] and is freed exactly once, when dropped); a `PhysWindow` covers
//! exactly one memory BAR of a function on the enumerated bus, mapped into the direct map
//! (uncached) before the window is made, for the kernel's lifetime.

use super::{PAGE_SIZE, PhysAddr, frame, phys_to_virt, ram};

/// A handle access that does not fit the handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleError {
    /// `[offset, offset + len)` is not inside the handle's `size` bytes.
    OutOfBounds {
        /// Where the access started.
        offset: u64,
        /// Its length.
        len: u64,
        /// The handle's size.
        size: u64,
    },
    /// A word access at an offset not a multiple of its size.
    Misaligned(u64),
    /// Two handles of different sizes were asked to copy one into the other.
    SizeMismatch(u64, u64),
    /// The RAM side of a copy between a window and RAM is not memory the kernel manages.
    NotRam(ram::OutsideRam),
    /// The two sides of a copy between a window and RAM overlap.
    Overlap {
        /// The window byte the copy starts at, as a physical address.
        window: u64,
        /// The RAM side's physical address.
        ram: u64,
        /// The copy's length.
        len: u64,
    },
}

impl core::fmt::Display for HandleError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutOfBounds { offset, len, size } => {
                write!(f, "access of {len} bytes at offset {offset:#x} is outside the {size}-byte handle")
            }
            Self::Misaligned(o) => write!(f, "word access at misaligned offset {o:#x}"),
            Self::SizeMismatch(a, b) => write!(f, "copy between handles of {a} and {b} bytes"),
            Self::NotRam(e) => write!(f, "the RAM side of a window copy: {e}"),
            Self::Overlap { window, ram, len } => {
                write!(f, "a window copy of {len} bytes between {window:#x} and {ram:#x}, which overlap")
            }
        }
    }
}

fn bounds(offset: u64, len: u64, size: u64) -> Result<(), HandleError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(HandleError::OutOfBounds { offset, len, size }),
    }
}

/// `count` contiguous frames owned by this value: allocated from the frame allocator,
/// reachable through the direct map, freed when dropped.
#[derive(Debug)]
pub struct FrameRange {
    base: u64,
    count: usize,
}

impl FrameRange {
    /// Allocates `count` contiguous frames (contents undefined: whatever they held).
    pub fn alloc(count: usize) -> Result<FrameRange, frame::OutOfFrames> {
        Ok(FrameRange { base: frame::alloc(count)?, count: count.max(1) })
    }

    /// Allocates `count` contiguous zeroed frames.
    pub fn alloc_zeroed(count: usize) -> Result<FrameRange, frame::OutOfFrames> {
        Ok(FrameRange { base: frame::alloc_zeroed(count)?, count: count.max(1) })
    }

    /// The first frame's physical address.
    pub fn phys(&self) -> PhysAddr {
        PhysAddr::new(self.base)
    }

    /// Frames held.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes held.
    pub fn size(&self) -> u64 {
        self.count as u64 * PAGE_SIZE
    }

    fn ptr(&self, offset: u64) -> *mut u8 {
        phys_to_virt(self.base + offset) as *mut u8
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HandleError> {
        bounds(offset, buf.len() as u64, self.size())?;
        // SAFETY: in bounds (checked) of frames this handle owns, direct-mapped; `buf` is a
        // distinct kernel buffer. `&self` excludes a concurrent write through the handle.
        unsafe { core::ptr::copy_nonoverlapping(self.ptr(offset), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), HandleError> {
        bounds(offset, data.len() as u64, self.size())?;
        // SAFETY: as in `read`; `&mut self` makes this the only access.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(offset), data.len()) };
        Ok(())
    }

    /// Loads the aligned `u64` at `offset` (one volatile load).
    pub fn read_u64(&self, offset: u64) -> Result<u64, HandleError> {
        bounds(offset, 8, self.size())?;
        if !offset.is_multiple_of(8) {
            return Err(HandleError::Misaligned(offset));
        }
        // SAFETY: in bounds and aligned (checked), in frames this handle owns.
        Ok(unsafe { (self.ptr(offset) as *const u64).read_volatile() })
    }

    /// Stores `v` at the aligned `offset` (one volatile store).
    pub fn write_u64(&mut self, offset: u64, v: u64) -> Result<(), HandleError> {
        bounds(offset, 8, self.size())?;
        if !offset.is_multiple_of(8) {
            return Err(HandleError::Misaligned(offset));
        }
        // SAFETY: in bounds and aligned (checked), in frames this handle owns; `&mut self`.
        unsafe { (self.ptr(offset) as *mut u64).write_volatile(v) };
        Ok(())
    }

    /// Stores the byte `v` at `offset` (one volatile store: a first touch of the page).
    pub fn write_u8(&mut self, offset: u64, v: u8) -> Result<(), HandleError> {
        bounds(offset, 1, self.size())?;
        // SAFETY: in bounds (checked), in frames this handle owns; `&mut self`.
        unsafe { self.ptr(offset).write_volatile(v) };
        Ok(())
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        let mut word = [0u8; 4096];
        (0..self.count as u64).all(|i| self.read(i * PAGE_SIZE, &mut word).is_ok() && word.iter().all(|&b| b == 0))
    }

    /// Copies all of `src` over this range (same size): one `memcpy` through the direct map.
    pub fn copy_from(&mut self, src: &FrameRange) -> Result<(), HandleError> {
        if src.size() != self.size() {
            return Err(HandleError::SizeMismatch(src.size(), self.size()));
        }
        // SAFETY: two distinct owned ranges (both handles exist at once, `self` mutably), so
        // they do not overlap; both direct-mapped, `size` bytes each.
        unsafe { core::ptr::copy_nonoverlapping(src.ptr(0), self.ptr(0), self.size() as usize) };
        Ok(())
    }
}

impl Drop for FrameRange {
    fn drop(&mut self) {
        frame::free(self.base, self.count);
    }
}

/// A window onto device memory, mapped uncached for the CPU: one memory BAR of an enumerated
/// PCI function (made only by [`crate::platform::pci::bar_window`]) or a hot-plug region a
/// memory device reported (made only by [`super::hotplug_window`], which refuses RAM).
#[derive(Debug)]
pub struct PhysWindow {
    base: u64,
    size: u64,
}

impl PhysWindow {
    /// Wraps `[base, base + size)`, which the caller (the platform's PCI or memory code)
    /// validated as device memory and mapped.
    pub(in crate::platform) fn new(base: u64, size: u64) -> PhysWindow {
        PhysWindow { base, size }
    }

    /// The window's physical base.
    pub fn phys(&self) -> PhysAddr {
        PhysAddr::new(self.base)
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Reads `buf.len()` bytes at `offset` (byte loads of device memory).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HandleError> {
        bounds(offset, buf.len() as u64, self.size)?;
        // SAFETY: in bounds (checked) of a BAR the platform mapped for the kernel's lifetime;
        // device memory holds no Rust object.
        unsafe {
            core::ptr::copy_nonoverlapping(phys_to_virt(self.base + offset) as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), HandleError> {
        bounds(offset, data.len() as u64, self.size)?;
        // SAFETY: as in `read`, in the other direction.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), phys_to_virt(self.base + offset) as *mut u8, data.len())
        };
        Ok(())
    }

    /// The address of the aligned `T` at `offset`, checked to be inside the window.
    fn register<T>(&self, offset: u64) -> Result<*mut T, HandleError> {
        let n = core::mem::size_of::<T>() as u64;
        bounds(offset, n, self.size)?;
        if !offset.is_multiple_of(n) {
            return Err(HandleError::Misaligned(offset));
        }
        Ok(phys_to_virt(self.base + offset) as *mut T)
    }

    /// Loads the aligned `u64` at `offset` (one volatile load: a device register or word).
    pub fn read_u64(&self, offset: u64) -> Result<u64, HandleError> {
        let r = self.register::<u64>(offset)?;
        // SAFETY: in bounds and aligned (checked by `register`), inside the mapped BAR.
        Ok(unsafe { r.read_volatile() })
    }

    /// Stores `v` at the aligned `offset` (one volatile store).
    pub fn write_u64(&self, offset: u64, v: u64) -> Result<(), HandleError> {
        let r = self.register::<u64>(offset)?;
        // SAFETY: in bounds and aligned (checked by `register`), inside the mapped BAR.
        unsafe { r.write_volatile(v) };
        Ok(())
    }

    /// Stores `v` at the aligned `offset` (one volatile 32-bit store: a device register).
    pub fn write_u32(&self, offset: u64, v: u32) -> Result<(), HandleError> {
        let r = self.register::<u32>(offset)?;
        // SAFETY: in bounds and aligned (checked by `register`), inside the mapped BAR.
        unsafe { r.write_volatile(v) };
        Ok(())
    }

    /// Loads the aligned `u16` at `offset` (one volatile 16-bit load: a device register).
    pub fn read_u16(&self, offset: u64) -> Result<u16, HandleError> {
        let r = self.register::<u16>(offset)?;
        // SAFETY: in bounds and aligned (checked by `register`), inside the mapped BAR.
        Ok(unsafe { r.read_volatile() })
    }

    /// Stores `v` at the aligned `offset` (one volatile 16-bit store: a device register).
    pub fn write_u16(&self, offset: u64, v: u16) -> Result<(), HandleError> {
        let r = self.register::<u16>(offset)?;
        // SAFETY: in bounds and aligned (checked by `register`), inside the mapped BAR.
        unsafe { r.write_volatile(v) };
        Ok(())
    }

    /// Checks a copy of `len` bytes between window offset `offset` and RAM at `pa`: inside the
    /// window, inside memory the kernel manages (RAM the frame allocator manages, or device
    /// memory mapped for the CPU: a peer device's page), and not overlapping.
    fn check_ram_copy(&self, offset: u64, pa: PhysAddr, len: u64) -> Result<(), HandleError> {
        bounds(offset, len, self.size)?;
        let pa = pa.as_u64();
        ram::check(pa, len).map_err(HandleError::NotRam)?;
        let window = self.base + offset;
        if window < pa + len && pa < window + len {
            return Err(HandleError::Overlap { window, ram: pa, len });
        }
        Ok(())
    }

    /// Copies `len` bytes from RAM at `src` (frames the caller owns or hmm handed it, checked
    /// as [`ram`] checks them) into the window at `offset`: a CPU copy into device memory.
    pub fn copy_from_ram(&self, offset: u64, src: PhysAddr, len: u64) -> Result<(), HandleError> {
        self.check_ram_copy(offset, src, len)?;
        // SAFETY: the window range is in bounds of a BAR or region mapped for the kernel's
        // lifetime; the RAM range is checked memory the kernel manages, direct-mapped; they do
        // not overlap (checked). Neither holds a Rust object.
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys_to_virt(src.as_u64()) as *const u8,
                phys_to_virt(self.base + offset) as *mut u8,
                len as usize,
            )
        };
        Ok(())
    }

    /// Copies `len` bytes from the window at `offset` to RAM at `dst` (checked as in
    /// [`copy_from_ram`](Self::copy_from_ram)): a CPU copy out of device memory.
    pub fn copy_to_ram(&self, offset: u64, dst: PhysAddr, len: u64) -> Result<(), HandleError> {
        self.check_ram_copy(offset, dst, len)?;
        // SAFETY: as in `copy_from_ram`, in the other direction.
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys_to_virt(self.base + offset) as *const u8,
                phys_to_virt(dst.as_u64()) as *mut u8,
                len as usize,
            )
        };
        Ok(())
    }

    /// Copies `len` bytes at `src_off` of the owned frames `src` into the window at `offset`.
    pub fn copy_from_frames(&self, offset: u64, src: &FrameRange, src_off: u64, len: u64) -> Result<(), HandleError> {
        bounds(src_off, len, src.size())?;
        self.copy_from_ram(offset, PhysAddr::new(src.base + src_off), len)
    }

    /// Copies `len` bytes of the window at `offset` to `dst_off` of the owned frames `dst`.
    pub fn copy_to_frames(&self, offset: u64, dst: &mut FrameRange, dst_off: u64, len: u64) -> Result<(), HandleError> {
        bounds(dst_off, len, dst.size())?;
        self.copy_to_ram(offset, PhysAddr::new(dst.base + dst_off), len)
    }
}
