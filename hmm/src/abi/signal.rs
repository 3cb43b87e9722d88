//! Linux's signal numbers on x86-64, their default actions, and the status `wait4` reports
//! (`<bits/waitstatus.h>`: `WIFEXITED`, `WEXITSTATUS`, `WIFSIGNALED`, `WTERMSIG`).

/// Hangup.
pub const SIGHUP: u8 = 1;
/// Illegal instruction.
pub const SIGILL: u8 = 4;
/// Trace trap.
pub const SIGTRAP: u8 = 5;
/// Abort.
pub const SIGABRT: u8 = 6;
/// Bus error.
pub const SIGBUS: u8 = 7;
/// Arithmetic exception.
pub const SIGFPE: u8 = 8;
/// Kill (cannot be caught).
pub const SIGKILL: u8 = 9;
/// Segmentation fault.
pub const SIGSEGV: u8 = 11;
/// Alarm clock.
pub const SIGALRM: u8 = 14;
/// Termination.
pub const SIGTERM: u8 = 15;
/// A child stopped or ended.
pub const SIGCHLD: u8 = 17;
/// Bad system call.
pub const SIGSYS: u8 = 31;

/// The names of signals 1 to 31.
const NAMES: [&str; 31] = [
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// The name of signal `sig` (1 to 31; the real-time signals 32 to 64 are `SIGRTMIN+n`).
pub fn name(sig: u8) -> Option<&'static str> {
    NAMES.get(usize::from(sig).checked_sub(1)?).copied()
}

/// What a signal does to a process that neither catches nor ignores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// The process ends (some of these also dump core on Linux: the same here).
    Terminate,
    /// Nothing happens (`SIGCHLD`, `SIGURG`, `SIGWINCH`).
    Ignore,
    /// The process stops or continues (job control).
    StopOrContinue,
}

/// The default action of signal `sig` (1 to 64).
pub fn default_action(sig: u8) -> Default {
    match sig {
        17 | 23 | 28 => Default::Ignore,
        18..=22 => Default::StopOrContinue,
        _ => Default::Terminate,
    }
}

/// The `wait4` status of a process that exited with `code`.
pub fn exited(code: i32) -> i32 {
    (code & 0xff) << 8
}

/// The `wait4` status of a process a signal ended.
pub fn signalled(sig: u8) -> i32 {
    i32::from(sig & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_actions_and_wait_statuses_are_linuxs() {
        assert_eq!(name(SIGKILL), Some("SIGKILL"));
        assert_eq!(name(SIGSEGV), Some("SIGSEGV"));
        assert_eq!(name(SIGCHLD), Some("SIGCHLD"));
        assert_eq!(name(SIGSYS), Some("SIGSYS"));
        assert_eq!((name(0), name(32)), (None, None));
        assert_eq!(default_action(SIGTERM), Default::Terminate);
        assert_eq!(default_action(SIGCHLD), Default::Ignore);
        assert_eq!(default_action(19), Default::StopOrContinue);
        // WIFEXITED(s) = (s & 0x7f) == 0, WEXITSTATUS(s) = (s >> 8) & 0xff; WTERMSIG = s & 0x7f.
        assert_eq!(exited(5), 0x500);
        assert_eq!(exited(256 + 5), 0x500);
        assert_eq!(exited(-1), 0xff00);
        assert_eq!(signalled(SIGKILL), 9);
    }
}
