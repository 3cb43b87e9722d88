//! A process's open files and the files that exist: the console (fds 0 to 2), the test
//! devices `/dev/hmm_dmirror0` to `3` with `lib/test_hmm.c`'s `ioctl`s, anonymous files in
//! `/tmp` (`O_TMPFILE`: an `hmm::mm` in-memory file, read, written, truncated and mapped as a
//! tmpfs file is), `/dev/urandom`, and `/proc/meminfo` (the memory and the 2 MiB huge page
//! size).
//!
//! **The dmirror devices** are the four `hmm::dmirror` devices Linux's `test_hmm` module
//! creates: 0 and 1 of device-private memory, 2 and 3 of coherent memory, emulated in RAM as
//! that module does (each adds device memory 8 MiB at a time). They are made at the first
//! `open`. Opening one binds the file to the opener's address space (`Dmirror::open`: an
//! interval notifier over all of it), as test_hmm binds it to `current->mm`; a `fork` shares the
//! open file with the child, and the file is closed (its notifier removed) when its last
//! descriptor goes. The `ioctl`s take test_hmm's `struct hmm_dmirror_cmd` (`addr`, `ptr`,
//! `npages`, then `cpages` and `faults` written back) and do what its handlers do, through
//! the same `hmm` calls the in-kernel hmm-tests port uses: `READ`, `WRITE`, `MIGRATE_TO_DEV`,
//! `MIGRATE_TO_SYS`, `SNAPSHOT`, `EXCLUSIVE` and `CHECK_EXCLUSIVE` on the file's process, and
//! `RELEASE`, which evicts the whole device (driver unbind).

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use hmm::abi::errno::{EBADF, EFAULT, EINVAL, EMFILE, ENOENT, ENOTTY};
use hmm::dmirror::{CmdError, Dmirror, DmirrorDevice};
use hmm::mm::file::MemFile;
use hmm::mm::notify::Owner;
use hmm::pagemap::MemoryKind;
use spin::Once;

use crate::mm::uspace;

/// Device memory is added to a dmirror device 8 MiB at a time.
const CHUNK: u64 = 8 << 20;
/// Most open files of a process.
pub const MAX_FILES: usize = 256;

/// An open file.
#[derive(Debug, Clone)]
pub enum File {
    /// The console: standard input, output and error.
    Console,
    /// `/dev/hmm_dmirrorN`, bound to the address space of the process that opened it.
    Dmirror(Arc<Dmirror>),
    /// An in-memory file with its offset (shared by the descriptors a `fork` copied).
    Mem {
        /// The file.
        file: Arc<MemFile>,
        /// The read/write offset.
        pos: Arc<spin::Mutex<u64>>,
        /// Whether it may be written.
        writable: bool,
    },
    /// `/dev/urandom`.
    Urandom,
}

/// A process's descriptors.
#[derive(Debug, Clone)]
pub struct Files {
    fds: Vec<Option<File>>,
}

impl Default for Files {
    fn default() -> Self {
        Files { fds: vec![Some(File::Console), Some(File::Console), Some(File::Console)] }
    }
}

impl Files {
    /// The file behind `fd`.
    pub fn get(&self, fd: u64) -> Option<&File> {
        self.fds.get(usize::try_from(fd).ok()?)?.as_ref()
    }

    /// Puts `f` at the lowest free descriptor.
    fn add(&mut self, f: File) -> Result<u64, i64> {
        let i = match self.fds.iter().position(Option::is_none) {
            Some(i) => i,
            None if self.fds.len() < MAX_FILES => {
                self.fds.push(None);
                self.fds.len() - 1
            }
            None => return Err(EMFILE),
        };
        self.fds[i] = Some(f);
        Ok(i as u64)
    }

    /// Takes `fd` out; the file, to be released outside any lock ([`release`]).
    pub fn remove(&mut self, fd: u64) -> Result<File, i64> {
        let slot = usize::try_from(fd).ok().and_then(|i| self.fds.get_mut(i)).ok_or(EBADF)?;
        slot.take().ok_or(EBADF)
    }

    /// Every file, taken out (at exit).
    pub fn take_all(&mut self) -> Vec<File> {
        self.fds.iter_mut().filter_map(Option::take).collect()
    }
}

/// Releases a file whose descriptor went: a dmirror file no other descriptor holds is closed.
pub fn release(f: File) {
    if let File::Dmirror(d) = f
        && Arc::strong_count(&d) == 1
        && let Err(e) = d.close()
    {
        log::warn!("closing a dmirror file: {e}");
    }
}

static DEVICES: Once<Result<[Arc<DmirrorDevice>; 4], hmm::mm::Error>> = Once::new();

/// The four dmirror devices, made at the first call.
fn devices() -> Result<&'static [Arc<DmirrorDevice>; 4], i64> {
    DEVICES
        .call_once(|| {
            let pm = crate::vram::pagemaps()?;
            let dev = |kind, n: u64| DmirrorDevice::new(pm, kind, Owner(0xd100 + n), CHUNK);
            Ok([
                dev(MemoryKind::Private, 0),
                dev(MemoryKind::Private, 1),
                dev(MemoryKind::Coherent, 2),
                dev(MemoryKind::Coherent, 3),
            ])
        })
        .as_ref()
        .map_err(|e| i64::from(e.errno()))
}

/// `O_TMPFILE` (with `O_DIRECTORY`, as the C library passes it).
const O_TMPFILE: u64 = 0o20_200_000;
/// The access mode bits and `O_WRONLY`, `O_RDWR`.
const O_ACCMODE: u64 = 3;

/// `/proc/meminfo`'s text: the RAM's size and free frames, and the huge page size.
fn meminfo() -> Vec<u8> {
    let free = crate::mm::frame::free_frames() * 4;
    alloc::format!(
        "MemTotal:       {free:>8} kB\nMemFree:        {free:>8} kB\nHugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\n"
    )
    .into_bytes()
}

/// Opens `path` with `flags` into `files`: the device files, `/tmp` with `O_TMPFILE`,
/// `/dev/urandom` and `/proc/meminfo` exist; any other path does not.
pub fn open(files: &mut Files, path: &[u8], flags: u64) -> Result<u64, i64> {
    let mm = uspace::mm();
    match path {
        b"/tmp" | b"/tmp/" if flags & O_TMPFILE == O_TMPFILE => {
            if flags & O_ACCMODE == 0 {
                return Err(EINVAL);
            }
            let file = MemFile::new(mm, 0);
            return files.add(File::Mem { file, pos: Default::default(), writable: true });
        }
        b"/dev/urandom" | b"/dev/random" => return files.add(File::Urandom),
        b"/proc/meminfo" => {
            let text = meminfo();
            let file = MemFile::new(mm, 0);
            file.write_at(0, &text).map_err(|e| i64::from(e.errno()))?;
            return files.add(File::Mem { file, pos: Default::default(), writable: false });
        }
        _ => {}
    }
    let n = match path.strip_prefix(b"/dev/hmm_dmirror") {
        Some([d @ b'0'..=b'3']) => usize::from(d - b'0'),
        _ => {
            log::debug!("open {:?}: no such file", core::str::from_utf8(path).unwrap_or("?"));
            return Err(ENOENT);
        }
    };
    let dev = &devices()?[n];
    let (space, _) = uspace::installed().ok_or(EFAULT)?;
    let d = Dmirror::open(dev, &space).map_err(|e| i64::from(e.errno()))?;
    files.add(File::Dmirror(d))
}

/// `_IOWR('H', n, struct hmm_dmirror_cmd)`: direction read|write, 40 bytes, type 'H'.
const fn dmirror_cmd(n: u64) -> u64 {
    (3 << 30) | (40 << 16) | ((b'H' as u64) << 8) | n
}

fn cmd_err(e: CmdError) -> i64 {
    i64::from(e.errno)
}

/// A dmirror `ioctl` on `d` with the command at user address `arg`.
pub fn dmirror_ioctl(d: &Arc<Dmirror>, cmd: u64, arg: u64) -> Result<u64, i64> {
    let n = cmd & 0xff;
    if cmd & !0xff != dmirror_cmd(0) & !0xff || n > 7 {
        return Err(ENOTTY);
    }
    let (_, u) = uspace::installed().ok_or(EFAULT)?;
    let mut c = [0u8; 40];
    u.read(arg, &mut c).map_err(|_| EFAULT)?;
    let word = |i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (addr, ptr, npages) = (word(0), word(1), word(2));
    let bytes = npages.checked_mul(4096).filter(|&b| b <= 1 << 30).ok_or(EINVAL)?;
    let (data, counts) = match n {
        0 => d.read(addr, npages).map(|(v, c)| (Some(v), c)),
        1 => {
            let mut data = vec![0u8; bytes as usize];
            u.read(ptr, &mut data).map_err(|_| EFAULT)?;
            d.write(addr, &data).map(|c| (None, c))
        }
        2 => d.migrate_to_dev(addr, npages).map(|(v, c)| (Some(v), c)),
        3 => d.migrate_to_sys(addr, npages).map(|c| (None, c)),
        4 => d.snapshot(addr, npages).map(|(v, c)| (Some(v), c)),
        5 => d.exclusive(addr, npages).map(|(v, c)| (Some(v), c)),
        6 => d.check_exclusive(addr, npages).map(|()| (None, Default::default())),
        _ => d.device().release().map(|()| (None, Default::default())),
    }
    .map_err(cmd_err)?;
    if let Some(v) = data {
        u.write(ptr, &v).map_err(|_| EFAULT)?;
    }
    u.write_u64(arg + 24, counts.cpages).map_err(|_| EFAULT)?;
    u.write_u64(arg + 32, counts.faults).map_err(|_| EFAULT)?;
    Ok(0)
}
