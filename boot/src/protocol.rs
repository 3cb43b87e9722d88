//! The guest/host protocol: what the kernel tells the xtask, defined once for both sides.
//!
//! The host tells the kernel what to do on its command line ([`crate::cmdline`]); the kernel
//! answers on its serial port, between its human-readable log lines, and through its exit
//! status. This module owns the answer's three parts, with an encoder the kernel uses and a
//! decoder the xtask uses, so that the two cannot drift apart:
//!
//! - **Tagged lines** `@@TAG {json}` ([`Tag`], [`Tag::line`], [`parse_line`]): the boot report
//!   (`@@BOOT`), the default job's result (`@@RESULT`), benchmark results (`@@BENCH`), an
//!   experiment point's result or error (`@@POINT`), a trace event (`@@TRACE`), and the end of
//!   an experiment (`@@EXPERIMENT`), the sampling profiler's report (`@@PROFILE`, [`profile`]).
//!   Payloads are one JSON object each, written with
//!   [`json::Json`]; what a point's and a trace event's objects hold is `hmm::place::spec`'s
//!   (the point format the host sends is there too).
//! - **The in-kernel test runner's lines** `ktest: ...` ([`Ktest`]): plan, start, ok, skip,
//!   FAIL, HANG, LEAK and done, which the xtask tallies and resumes after.
//! - **Exit codes** ([`ExitCode`]): the value the kernel writes to `isa-debug-exit` at
//!   [`EXIT_PORT`], and the QEMU status the host sees for it ([`ExitCode::qemu_status`],
//!   [`ExitCode::from_qemu_status`]).
//!
//! Invariants: every tag starts with [`MARK`], and no log line the kernel prints does (the
//! xtask hides `@@` lines from the terminal); an encoded line decodes to what was encoded
//! (the tests below check each kind). Nothing here allocates.

use core::fmt;

pub mod json;
pub mod profile;

/// What every machine-readable line starts with.
pub const MARK: &str = "@@";

/// The tag of a machine-readable line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The boot report, once the kernel is ready.
    Boot,
    /// The default job's result.
    Result,
    /// One benchmark result (with an `op`), or `{"done": true}` at the end.
    Bench,
    /// One experiment point's result (`hmm::place::spec::result_json`) or its error
    /// (`id`, `error`, `kind`).
    Point,
    /// One trace event of a traced point (`hmm::place::spec::trace_json`).
    Trace,
    /// The end of an experiment: `points`, `ok`, `failed`, `wall_ns`.
    Experiment,
    /// The sampling profiler's report: a CPU's summary, one of its stacks, or the end
    /// ([`profile`]).
    Profile,
    /// The kernel's exit code, `{"code":N}` ([`ExitCode::port_value`]), printed as it leaves:
    /// on a machine without `isa-debug-exit` it then resets the machine, and the line is how
    /// the host learns the outcome.
    Exit,
    /// A request to the host ([`HostRequest`]): `cargo xtask` carries it out over QEMU's QMP
    /// while the guest runs on; the guest sees the effect on its devices (a virtio-mem
    /// configuration change), not an answer.
    Host,
    /// How the user program of `job=run` ended: `{"exit_code":N}`, or `{"signal":S,...}` with
    /// the exception that stopped it.
    Run,
}

impl Tag {
    /// Every tag.
    pub const ALL: [Tag; 10] = [
        Tag::Boot,
        Tag::Result,
        Tag::Bench,
        Tag::Point,
        Tag::Trace,
        Tag::Experiment,
        Tag::Profile,
        Tag::Exit,
        Tag::Host,
        Tag::Run,
    ];

    /// The line's start: `@@` and the name, then a space before the payload.
    pub const fn prefix(self) -> &'static str {
        match self {
            Tag::Boot => "@@BOOT ",
            Tag::Result => "@@RESULT ",
            Tag::Bench => "@@BENCH ",
            Tag::Point => "@@POINT ",
            Tag::Trace => "@@TRACE ",
            Tag::Experiment => "@@EXPERIMENT ",
            Tag::Profile => "@@PROFILE ",
            Tag::Exit => "@@EXIT ",
            Tag::Host => "@@HOST ",
            Tag::Run => "@@RUN ",
        }
    }

    /// The line `@@TAG payload` (without the newline), to print.
    pub fn line<P: fmt::Display>(self, payload: P) -> Line<P> {
        Line { tag: self, payload }
    }

    /// The payload of `line` if it carries this tag.
    pub fn payload(self, line: &str) -> Option<&str> {
        line.strip_prefix(self.prefix())
    }
}

/// A tagged line, written by its `Display`.
#[derive(Debug, Clone, Copy)]
pub struct Line<P> {
    tag: Tag,
    payload: P,
}

impl<P: fmt::Display> fmt::Display for Line<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.tag.prefix(), self.payload)
    }
}

/// What a guest asks of the host on a [`Tag::Host`] line; its `Display` is the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRequest {
    /// Set device `device`'s virtio-mem `requested-size` to `bytes` (a multiple of its block
    /// size, at most its region): `{"resize":{"device":0,"bytes":16777216}}`.
    Resize {
        /// The device (`dev{n}`).
        device: usize,
        /// Bytes of hot-plug memory the host requests.
        bytes: u64,
    },
}

impl fmt::Display for HostRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRequest::Resize { device, bytes } => {
                write!(f, "{{\"resize\":{{\"device\":{device},\"bytes\":{bytes}}}}}")
            }
        }
    }
}

/// The last `@@BENCH` line's payload: the benchmark job finished.
pub const BENCH_DONE: &str = "{\"done\":true}";

/// The tag and payload of a machine-readable line; `None` for a log line.
pub fn parse_line(line: &str) -> Option<(Tag, &str)> {
    if !line.starts_with(MARK) {
        return None;
    }
    Tag::ALL.into_iter().find_map(|t| Some((t, t.payload(line)?)))
}

/// The I/O port of QEMU's `isa-debug-exit` device, which the host adds to every machine.
pub const EXIT_PORT: u16 = 0xf4;

/// The codes the kernel exits with. Writing `v` to `isa-debug-exit` makes QEMU exit with
/// status `(v << 1) | 1`, so no code the kernel writes can look like QEMU's own 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything ran and passed (QEMU status 33).
    Success = 0x10,
    /// A failure: bad arguments, a failed job or test run, a crash (QEMU status 35).
    Failure = 0x11,
    /// An in-kernel test panicked; the xtask resumes with the next test (QEMU status 37).
    TestPanicked = 0x12,
    /// An in-kernel test overran its watchdog (QEMU status 39).
    TestHung = 0x13,
}

impl ExitCode {
    /// Every code.
    pub const ALL: [ExitCode; 4] = [ExitCode::Success, ExitCode::Failure, ExitCode::TestPanicked, ExitCode::TestHung];

    /// The value written to [`EXIT_PORT`].
    pub const fn port_value(self) -> u32 {
        self as u32
    }

    /// The exit status QEMU reports for it.
    pub const fn qemu_status(self) -> i32 {
        ((self as i32) << 1) | 1
    }

    /// The code whose [`port_value`](Self::port_value) is `v`.
    pub fn from_port_value(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.port_value() == v)
    }

    /// The code behind a QEMU exit status, if the kernel chose it.
    pub fn from_qemu_status(status: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.qemu_status() == status)
    }
}

/// A message in a [`Ktest`] line: text the decoder found, or anything the kernel can display
/// (formatted as it is written, without allocating: the crash path and the watchdog write
/// these lines).
#[derive(Clone, Copy)]
pub enum Text<'a> {
    /// Plain text.
    Str(&'a str),
    /// A value shown by its `Display`.
    Display(&'a dyn fmt::Display),
}

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Str(s) => f.write_str(s),
            Text::Display(d) => d.fmt(f),
        }
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", format_args!("{self}"))
    }
}

/// What the text of the watchdog's HANG line says after the name.
const HANG_START: &str = "(stopped by the watchdog after ";
const HANG_END: &str = " ms)";

/// A line of the in-kernel test runner (`ktest: ...`). Test names have no spaces.
///
/// ```text
/// ktest: plan N
/// ktest: start I NAME
/// ktest: ok I NAME (T us)
/// ktest: skip I NAME: WHY
/// ktest: FAIL I NAME: WHY
/// ktest: HANG I NAME (stopped by the watchdog after MS ms)
/// ktest: LEAK N frames not returned by the tests
/// ktest: done P passed, F failed, S skipped
/// ```
#[derive(Debug, Clone, Copy)]
pub enum Ktest<'a> {
    /// The number of tests in the registry.
    Plan {
        /// Tests in all.
        total: usize,
    },
    /// Test `index` starts.
    Start {
        /// Its index in the registry (what `ktest.from` takes).
        index: usize,
        /// Its name.
        name: &'a str,
    },
    /// It passed in `us` microseconds.
    Ok {
        /// Its index.
        index: usize,
        /// Its name.
        name: &'a str,
        /// How long it ran.
        us: u64,
    },
    /// It was skipped.
    Skip {
        /// Its index.
        index: usize,
        /// Its name.
        name: &'a str,
        /// Why.
        why: Text<'a>,
    },
    /// It failed (or crashed: the crash path writes this line, then the kernel exits with
    /// [`ExitCode::TestPanicked`]).
    Fail {
        /// Its index.
        index: usize,
        /// Its name.
        name: &'a str,
        /// What went wrong.
        why: Text<'a>,
    },
    /// The watchdog stopped it after `ms` milliseconds (then [`ExitCode::TestHung`]).
    Hang {
        /// Its index.
        index: usize,
        /// Its name.
        name: &'a str,
        /// How long it had run.
        ms: u64,
    },
    /// The tests took frames they did not give back.
    Leak {
        /// How many.
        frames: usize,
    },
    /// The run is over.
    Done {
        /// Tests that passed.
        passed: usize,
        /// Tests that failed.
        failed: usize,
        /// Tests skipped.
        skipped: usize,
    },
}

/// What every test runner line starts with.
pub const KTEST: &str = "ktest: ";

impl fmt::Display for Ktest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(KTEST)?;
        match self {
            Ktest::Plan { total } => write!(f, "plan {total}"),
            Ktest::Start { index, name } => write!(f, "start {index} {name}"),
            Ktest::Ok { index, name, us } => write!(f, "ok {index} {name} ({us} us)"),
            Ktest::Skip { index, name, why } => write!(f, "skip {index} {name}: {why}"),
            Ktest::Fail { index, name, why } => write!(f, "FAIL {index} {name}: {why}"),
            Ktest::Hang { index, name, ms } => write!(f, "HANG {index} {name} {HANG_START}{ms}{HANG_END}"),
            Ktest::Leak { frames } => write!(f, "LEAK {frames} frames not returned by the tests"),
            Ktest::Done { passed, failed, skipped } => {
                write!(f, "done {passed} passed, {failed} failed, {skipped} skipped")
            }
        }
    }
}

impl<'a> Ktest<'a> {
    /// Decodes a test runner line; `None` for any other line (or a malformed one).
    pub fn parse(line: &'a str) -> Option<Self> {
        let rest = line.strip_prefix(KTEST)?;
        let (word, rest) = rest.split_once(' ')?;
        let number = |s: &str| s.parse::<usize>().ok();
        // `I NAME` and what follows the name.
        let indexed = |rest: &'a str| -> Option<(usize, &'a str, &'a str)> {
            let (i, rest) = rest.split_once(' ')?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((number(i)?, name, tail))
        };
        // `I NAME: WHY`: the name ends at the first ": ".
        let with_why = |rest: &'a str| -> Option<(usize, &'a str, Text<'a>)> {
            let (i, rest) = rest.split_once(' ')?;
            let (name, why) = rest.split_once(": ").unwrap_or((rest.trim_end_matches(':'), ""));
            Some((number(i)?, name, Text::Str(why)))
        };
        Some(match word {
            "plan" => Ktest::Plan { total: number(rest)? },
            "start" => {
                let (index, name, _) = indexed(rest)?;
                Ktest::Start { index, name }
            }
            "ok" => {
                let (index, name, tail) = indexed(rest)?;
                let us = tail.strip_prefix('(')?.strip_suffix(" us)")?.parse().ok()?;
                Ktest::Ok { index, name, us }
            }
            "skip" => {
                let (index, name, why) = with_why(rest)?;
                Ktest::Skip { index, name, why }
            }
            "FAIL" => {
                let (index, name, why) = with_why(rest)?;
                Ktest::Fail { index, name, why }
            }
            "HANG" => {
                let (index, name, tail) = indexed(rest)?;
                let ms = tail.strip_prefix(HANG_START)?.strip_suffix(HANG_END)?.parse().ok()?;
                Ktest::Hang { index, name, ms }
            }
            "LEAK" => Ktest::Leak { frames: number(rest.split(' ').next()?)? },
            "done" => {
                let mut n = rest.split(", ").map(|p| p.split(' ').next().and_then(number));
                let (passed, failed, skipped) = (n.next()??, n.next()??, n.next()??);
                Ktest::Done { passed, failed, skipped }
            }
            _ => return None,
        })
    }

    /// The test's index and name, for the lines about one test.
    pub fn test(&self) -> Option<(usize, &'a str)> {
        match *self {
            Ktest::Start { index, name }
            | Ktest::Ok { index, name, .. }
            | Ktest::Skip { index, name, .. }
            | Ktest::Fail { index, name, .. }
            | Ktest::Hang { index, name, .. } => Some((index, name)),
            Ktest::Plan { .. } | Ktest::Leak { .. } | Ktest::Done { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::{String, ToString};

    #[test]
    fn tagged_lines_read_back_with_their_tag_and_payload() {
        for t in Tag::ALL {
            let line = t.line("{\"a\":1}").to_string();
            assert!(line.starts_with(MARK), "{line}");
            assert_eq!(parse_line(&line), Some((t, "{\"a\":1}")), "{line}");
            assert_eq!(t.payload(&line), Some("{\"a\":1}"));
            for other in Tag::ALL.into_iter().filter(|o| *o != t) {
                assert_eq!(other.payload(&line), None, "{line} is not {other:?}");
            }
        }
        // Log lines are not machine-readable, and an unknown tag is not a known one.
        assert_eq!(parse_line("ready in 12.000 ms"), None);
        assert_eq!(parse_line("@@BOOTX {}"), None);
        assert_eq!(parse_line("@@NEW {}"), None);
        // The prefix is the tag's name in capitals after the mark, then one space.
        for t in Tag::ALL {
            let name = format!("{t:?}").to_uppercase();
            assert_eq!(t.prefix(), format!("{MARK}{name} "));
        }
    }

    #[test]
    fn exit_codes_map_to_qemu_statuses_and_back() {
        let statuses: std::vec::Vec<i32> = ExitCode::ALL.iter().map(|c| c.qemu_status()).collect();
        assert_eq!(statuses, [33, 35, 37, 39]);
        for c in ExitCode::ALL {
            assert_eq!(ExitCode::from_qemu_status(c.qemu_status()), Some(c));
            assert_eq!(c.qemu_status(), ((c.port_value() as i32) << 1) | 1);
        }
        // QEMU's own statuses are never the kernel's.
        for s in [0, 1, 2, 34] {
            assert_eq!(ExitCode::from_qemu_status(s), None);
        }
    }

    fn round_trip(k: Ktest<'_>) -> String {
        let line = k.to_string();
        let back = Ktest::parse(&line).unwrap_or_else(|| panic!("{line} did not decode"));
        assert_eq!(back.to_string(), line);
        assert_eq!(format!("{back:?}"), format!("{k:?}"), "{line}");
        line
    }

    #[test]
    fn test_runner_lines_read_back() {
        let err = "expected 3, got 4: a mismatch";
        assert_eq!(round_trip(Ktest::Plan { total: 214 }), "ktest: plan 214");
        assert_eq!(round_trip(Ktest::Start { index: 7, name: "smp::ipi" }), "ktest: start 7 smp::ipi");
        assert_eq!(round_trip(Ktest::Ok { index: 7, name: "smp::ipi", us: 1250 }), "ktest: ok 7 smp::ipi (1250 us)");
        let name = "hmm.hmm_device_private.anon_read";
        let skip = Ktest::Skip { index: 9, name, why: Text::Str("no coherent device") };
        assert_eq!(round_trip(skip), "ktest: skip 9 hmm.hmm_device_private.anon_read: no coherent device");
        // A message the kernel displays (its error value) reads back as its text, colons and all.
        let fail = Ktest::Fail { index: 10, name: "real/mm::fork", why: Text::Display(&err) };
        assert_eq!(round_trip(fail), "ktest: FAIL 10 real/mm::fork: expected 3, got 4: a mismatch");
        match Ktest::parse(&fail.to_string()) {
            Some(Ktest::Fail { index: 10, name: "real/mm::fork", why: Text::Str(w) }) => assert_eq!(w, err),
            other => panic!("{other:?}"),
        }
        let hang = Ktest::Hang { index: 11, name: "faults::loop", ms: 5000 };
        assert_eq!(round_trip(hang), "ktest: HANG 11 faults::loop (stopped by the watchdog after 5000 ms)");
        assert_eq!(round_trip(Ktest::Leak { frames: 3 }), "ktest: LEAK 3 frames not returned by the tests");
        let done = Ktest::Done { passed: 200, failed: 1, skipped: 6 };
        assert_eq!(round_trip(done), "ktest: done 200 passed, 1 failed, 6 skipped");
        assert_eq!(hang.test(), Some((11, "faults::loop")));
        assert_eq!(done.test(), None);
        // Other lines are not test runner lines.
        for l in ["PANIC at kernel/src/main.rs:1", "ktest: ok x y (1 us)", "ktest: bogus 1", "ktest:"] {
            assert!(Ktest::parse(l).is_none(), "{l}");
        }
    }
}
