//! Linux's error numbers (`include/uapi/asm-generic/errno-base.h` and `errno.h`): a failed
//! system call returns `-errno` in `rax`.

/// Operation not permitted.
pub const EPERM: i64 = 1;
/// No such file or directory.
pub const ENOENT: i64 = 2;
/// No such process.
pub const ESRCH: i64 = 3;
/// Interrupted system call.
pub const EINTR: i64 = 4;
/// I/O error.
pub const EIO: i64 = 5;
/// Bad file descriptor.
pub const EBADF: i64 = 9;
/// No child processes.
pub const ECHILD: i64 = 10;
/// Try again.
pub const EAGAIN: i64 = 11;
/// Out of memory.
pub const ENOMEM: i64 = 12;
/// Permission denied.
pub const EACCES: i64 = 13;
/// Bad address.
pub const EFAULT: i64 = 14;
/// Device or resource busy.
pub const EBUSY: i64 = 16;
/// File exists.
pub const EEXIST: i64 = 17;
/// No such device.
pub const ENODEV: i64 = 19;
/// Not a directory.
pub const ENOTDIR: i64 = 20;
/// Is a directory.
pub const EISDIR: i64 = 21;
/// Invalid argument.
pub const EINVAL: i64 = 22;
/// Too many open files.
pub const EMFILE: i64 = 24;
/// Not a typewriter (an `ioctl` the file does not have).
pub const ENOTTY: i64 = 25;
/// Illegal seek.
pub const ESPIPE: i64 = 29;
/// Result too large.
pub const ERANGE: i64 = 34;
/// Function not implemented.
pub const ENOSYS: i64 = 38;
/// Operation not supported.
pub const EOPNOTSUPP: i64 = 95;
