//! The kernel command line, parsed into typed [`KernelArgs`].
//!
//! The syntax is space-separated `key=value` words (or bare `key` flags). Every key is known in
//! advance; an unknown key or a malformed value is an [`ArgError`] that names the word and says
//! what is accepted, so a typo never silently changes an experiment.
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `log` | `LEVEL[,TARGET=LEVEL...]` | default level (`off`, `error`, `warn`, `info`, `debug`, `trace`), then per-module-prefix levels |
//! | `job` | `default`, `none`, `bench-mm`, `bench-hmm`, `bench-devices`, `experiment`, `run` | what to run once ready: the default job, nothing (exit at ready, for boot benchmarks), a benchmark, the experiment in the boot module, or the static Linux executable in the boot module (in ring 3) |
//! | `run.name` | text | `job=run`: the program's `argv[0]` (default `program`) |
//! | `run.arg` | text | `job=run`: one more argument; may repeat, up to [`MAX_RUN_ARGS`] |
//! | `ktest.filter` | text | in-kernel tests: run only tests whose name contains it |
//! | `ktest.from` | index | in-kernel tests: start at this test (the xtask resumes here after a failure) |
//! | `ktest.timeout_ms` | ms | in-kernel tests: a test running longer is reported as hung |
//! | `ktest.crash` | `pagefault`, `panic`, `triplefault`, `stackoverflow` | run one deliberate crash (tests of the crash reporting) |
//! | `devices.coherent` | `N[,N...]` | the devices (numbered from 0, in PCI order) whose memory is coherent (CPU-mapped) rather than private; the xtask sets it from the machine file |
//! | `profile.hz` | samples per second, a multiple of 100 from 100 to 10000 | run the sampling profiler: the timer interrupts this often and samples the interrupted stack; the report is printed at exit (off when absent) |
//! | `tsc.source` | `auto`, `cpuid`, `kvmclock`, `pm-timer`, `hpet`, `pit` | where the TSC frequency comes from: `auto` (the default) takes the first the machine has, in that order; any other value uses that source only, and boot fails if the machine lacks it |
//! | `virtio_mmio.device` | `SIZE@ADDR:IRQ[:ID]` | a virtio-mmio transport, as Linux reads it (`SIZE` and `ADDR` with an optional K/M/G suffix, decimal or `0x` hex; `IRQ` and `ID` decimal): how Firecracker and QEMU's microvm (`auto-kernel-cmdline`) name their devices; may repeat, up to [`MAX_VIRTIO_MMIO`] |

use crate::fixed::FixedVec;

/// Most per-target log filters.
pub const MAX_LOG_FILTERS: usize = 16;

/// Most `virtio_mmio.device` transports.
pub const MAX_VIRTIO_MMIO: usize = 16;

/// Most `run.arg` words.
pub const MAX_RUN_ARGS: usize = 16;

/// A virtio-mmio transport named on the command line (`virtio_mmio.device=SIZE@ADDR:IRQ[:ID]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VirtioMmio {
    /// Size of the register window, bytes.
    pub size: u64,
    /// Physical base address.
    pub base: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
    /// Platform device id, if given.
    pub id: Option<u32>,
}

/// A number as Linux's `memparse` reads it: decimal or `0x` hex, then an optional K, M, G
/// (or lower case) multiplier. `None` on anything else or overflow.
fn memparse(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    n.checked_mul(1u64 << shift)
}

impl VirtioMmio {
    /// Parses `SIZE@ADDR:IRQ[:ID]`; `None` if malformed, or the size is 0.
    pub fn parse(v: &str) -> Option<Self> {
        let (size, rest) = v.split_once('@')?;
        let mut parts = rest.split(':');
        let base = memparse(parts.next()?)?;
        let irq = parts.next()?.parse::<u32>().ok()?;
        let id = match parts.next() {
            Some(id) => Some(id.parse::<u32>().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        let size = memparse(size).filter(|&s| s > 0)?;
        base.checked_add(size)?;
        Some(VirtioMmio { size, base, irq, id })
    }
}

/// A log level; `Off` silences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Developer detail.
    Debug,
    /// Everything.
    Trace,
}

impl Level {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "off" => Self::Off,
            "error" => Self::Error,
            "warn" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }
}

/// A per-target level: log records whose target starts with `target` use `level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogFilter<'a> {
    /// Module-path prefix, e.g. `kernel::pci`.
    pub target: &'a str,
    /// Level for that prefix.
    pub level: Level,
}

/// What the kernel runs once it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Job {
    /// The default job.
    #[default]
    Default,
    /// Nothing: report ready and exit (boot benchmarks).
    None,
    /// The address-space benchmark (`cargo xtask bench mm`).
    BenchMm,
    /// The HMM benchmark (`cargo xtask bench hmm`).
    BenchHmm,
    /// The real devices' benchmark (`cargo xtask bench devices`).
    BenchDevices,
    /// The experiment in the boot module (`cargo xtask experiment`).
    Experiment,
    /// The static Linux executable in the boot module, in ring 3 (`cargo xtask qemu --run`).
    Run,
}

/// A deliberate crash, to test that crashes are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// Touch an unmapped address outside any fixup: an unhandled page fault.
    PageFault,
    /// `panic!`.
    Panic,
    /// Load an empty IDT and fault: the CPU triple-faults.
    TripleFault,
    /// A task recurses past its stack into the guard page: a double fault.
    StackOverflow,
}

/// Where the TSC frequency comes from (`tsc.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockSource {
    /// The first source the machine has: CPUID, kvmclock, PM timer, HPET, PIT.
    #[default]
    Auto,
    /// CPUID leaves 0x15/0x16.
    Cpuid,
    /// KVM's paravirtual clock.
    Kvmclock,
    /// The ACPI PM timer.
    PmTimer,
    /// The HPET.
    Hpet,
    /// PIT channel 0.
    Pit,
}

impl ClockSource {
    /// The value `tsc.source` names it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Cpuid => "cpuid",
            Self::Kvmclock => "kvmclock",
            Self::PmTimer => "pm-timer",
            Self::Hpet => "hpet",
            Self::Pit => "pit",
        }
    }
}

/// The parsed command line.
#[derive(Debug, Clone, Default)]
pub struct KernelArgs<'a> {
    /// Default log level.
    pub log_level: Level,
    /// Per-target overrides, longest prefix wins.
    pub log_filters: FixedVec<LogFilter<'a>, MAX_LOG_FILTERS>,
    /// What to run.
    pub job: Job,
    /// In-kernel tests: substring filter.
    pub ktest_filter: Option<&'a str>,
    /// In-kernel tests: first test index to run.
    pub ktest_from: usize,
    /// In-kernel tests: per-test watchdog.
    pub ktest_timeout_ms: u64,
    /// A deliberate crash to perform once ready.
    pub crash: Option<Crash>,
    /// Bit n set: device n's memory is coherent.
    pub coherent_devices: u64,
    /// virtio-mmio transports named by `virtio_mmio.device`, in order.
    pub virtio_mmio: FixedVec<VirtioMmio, MAX_VIRTIO_MMIO>,
    /// The sampling profiler's rate (`profile.hz`), samples per second per CPU; `None`: off.
    pub profile_hz: Option<u32>,
    /// Where the TSC frequency comes from (`tsc.source`).
    pub tsc_source: ClockSource,
    /// `job=run`: the program's `argv[0]` (`run.name`).
    pub run_name: Option<&'a str>,
    /// `job=run`: its further arguments (`run.arg`), in order.
    pub run_args: FixedVec<&'a str, MAX_RUN_ARGS>,
}

/// The scheduler tick's rate, which `profile.hz` must be a multiple of (the kernel's
/// `apic::TICK_HZ`): the timer runs at `profile.hz` and every `profile.hz / 100`th interrupt is
/// a scheduler tick.
pub const PROFILE_HZ_STEP: u32 = 100;
/// The fastest `profile.hz`.
pub const PROFILE_HZ_MAX: u32 = 10_000;

/// The default per-test watchdog.
pub const DEFAULT_KTEST_TIMEOUT_MS: u64 = 20_000;

/// A command-line word the kernel does not accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgError<'a> {
    /// A key the kernel does not know.
    UnknownKey(&'a str),
    /// A known key with a value it does not accept; `expected` says what it accepts.
    BadValue {
        /// The key.
        key: &'a str,
        /// The value given.
        value: &'a str,
        /// What the key accepts.
        expected: &'static str,
    },
    /// A key that needs a value was given bare.
    MissingValue {
        /// The key.
        key: &'a str,
        /// What the key accepts.
        expected: &'static str,
    },
    /// More than [`MAX_LOG_FILTERS`] per-target log filters.
    TooManyLogFilters,
    /// More than [`MAX_VIRTIO_MMIO`] `virtio_mmio.device` words.
    TooManyVirtioMmio,
    /// More than [`MAX_RUN_ARGS`] `run.arg` words.
    TooManyRunArgs,
}

impl core::fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownKey(k) => write!(
                f,
                "unknown kernel argument '{k}' (known: log, job, ktest.filter, ktest.from, ktest.timeout_ms, ktest.crash, devices.coherent, virtio_mmio.device, profile.hz, tsc.source, run.name, run.arg)"
            ),
            Self::BadValue { key, value, expected } => {
                write!(f, "kernel argument '{key}={value}': expected {expected}")
            }
            Self::MissingValue { key, expected } => {
                write!(f, "kernel argument '{key}' needs a value: {key}=<{expected}>")
            }
            Self::TooManyLogFilters => write!(f, "more than {MAX_LOG_FILTERS} log filters in 'log='"),
            Self::TooManyVirtioMmio => write!(f, "more than {MAX_VIRTIO_MMIO} 'virtio_mmio.device=' words"),
            Self::TooManyRunArgs => write!(f, "more than {MAX_RUN_ARGS} 'run.arg=' words"),
        }
    }
}

const LEVELS: &str = "one of off, error, warn, info, debug, trace";

impl<'a> KernelArgs<'a> {
    /// Parses `cmdline`; the first bad word is the error.
    pub fn parse(cmdline: &'a str) -> Result<Self, ArgError<'a>> {
        let mut args = KernelArgs { ktest_timeout_ms: DEFAULT_KTEST_TIMEOUT_MS, ..Default::default() };
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            let need = |expected: &'static str| value.ok_or(ArgError::MissingValue { key, expected });
            let bad = |value: &'a str, expected: &'static str| ArgError::BadValue { key, value, expected };
            match key {
                "log" => args.parse_log(need("level[,target=level...]")?)?,
                "job" => {
                    let v = need("job name")?;
                    args.job = match v {
                        "default" => Job::Default,
                        "none" => Job::None,
                        "bench-mm" => Job::BenchMm,
                        "bench-hmm" => Job::BenchHmm,
                        "bench-devices" => Job::BenchDevices,
                        "experiment" => Job::Experiment,
                        "run" => Job::Run,
                        _ => {
                            return Err(bad(
                                v,
                                "'default', 'none', 'bench-mm', 'bench-hmm', 'bench-devices', 'experiment' or 'run'",
                            ));
                        }
                    };
                }
                "run.name" => args.run_name = Some(need("argv[0]")?),
                "run.arg" => args.run_args.push(need("argument")?).map_err(|_| ArgError::TooManyRunArgs)?,
                "ktest.filter" => args.ktest_filter = Some(need("text")?),
                "ktest.from" => {
                    let v = need("test index")?;
                    args.ktest_from = v.parse().map_err(|_| bad(v, "a test index (0, 1, 2, ...)"))?;
                }
                "ktest.timeout_ms" => {
                    let v = need("milliseconds")?;
                    args.ktest_timeout_ms = v
                        .parse()
                        .ok()
                        .filter(|&ms| ms > 0)
                        .ok_or_else(|| bad(v, "a positive number of milliseconds"))?;
                }
                "ktest.crash" => {
                    let v = need("crash kind")?;
                    args.crash = Some(match v {
                        "pagefault" => Crash::PageFault,
                        "panic" => Crash::Panic,
                        "triplefault" => Crash::TripleFault,
                        "stackoverflow" => Crash::StackOverflow,
                        _ => return Err(bad(v, "'pagefault', 'panic', 'triplefault' or 'stackoverflow'")),
                    });
                }
                "devices.coherent" => {
                    let v = need("device numbers")?;
                    for n in v.split(',') {
                        let n: u32 = n
                            .parse()
                            .ok()
                            .filter(|&n| n < 64)
                            .ok_or_else(|| bad(v, "device numbers 0 to 63, comma-separated"))?;
                        args.coherent_devices |= 1 << n;
                    }
                }
                "virtio_mmio.device" => {
                    let v = need("size@address:irq")?;
                    let t = VirtioMmio::parse(v)
                        .ok_or_else(|| bad(v, "SIZE@ADDR:IRQ[:ID], e.g. 512@0xfeb00e00:12 or 4K@0xd0000000:5"))?;
                    args.virtio_mmio.push(t).map_err(|_| ArgError::TooManyVirtioMmio)?;
                }
                "profile.hz" => {
                    let v = need("samples per second")?;
                    let hz = v
                        .parse::<u32>()
                        .ok()
                        .filter(|&hz| hz > 0 && hz <= PROFILE_HZ_MAX && hz % PROFILE_HZ_STEP == 0)
                        .ok_or_else(|| bad(v, "samples per second, a multiple of 100 from 100 to 10000"))?;
                    args.profile_hz = Some(hz);
                }
                "tsc.source" => {
                    let v = need("clock source")?;
                    args.tsc_source = match v {
                        "auto" => ClockSource::Auto,
                        "cpuid" => ClockSource::Cpuid,
                        "kvmclock" => ClockSource::Kvmclock,
                        "pm-timer" => ClockSource::PmTimer,
                        "hpet" => ClockSource::Hpet,
                        "pit" => ClockSource::Pit,
                        _ => return Err(bad(v, "'auto', 'cpuid', 'kvmclock', 'pm-timer', 'hpet' or 'pit'")),
                    };
                }
                _ => return Err(ArgError::UnknownKey(word)),
            }
        }
        Ok(args)
    }

    fn parse_log(&mut self, value: &'a str) -> Result<(), ArgError<'a>> {
        let bad = |expected| ArgError::BadValue { key: "log", value, expected };
        for (i, part) in value.split(',').enumerate() {
            match part.split_once('=') {
                None if i == 0 => self.log_level = Level::parse(part).ok_or(bad(LEVELS))?,
                None => return Err(bad("'target=level' after the first comma")),
                Some((target, level)) => {
                    if target.is_empty() {
                        return Err(bad("a module path before '=' (e.g. kernel::pci=debug)"));
                    }
                    let level = Level::parse(level).ok_or(bad(LEVELS))?;
                    self.log_filters.push(LogFilter { target, level }).map_err(|_| ArgError::TooManyLogFilters)?;
                }
            }
        }
        Ok(())
    }

    /// The level for a record from `target`: the longest matching filter prefix, else the
    /// default. A prefix matches whole path segments (`kernel::pci` matches `kernel::pci` and
    /// `kernel::pci::ecam`, not `kernel::pcie`).
    pub fn level_for(&self, target: &str) -> Level {
        self.log_filters
            .iter()
            .filter(|f| target.strip_prefix(f.target).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
            .max_by_key(|f| f.target.len())
            .map_or(self.log_level, |f| f.level)
    }

    /// The most verbose level any record can have (for `log::set_max_level`).
    pub fn max_level(&self) -> Level {
        self.log_filters.iter().map(|f| f.level).fold(self.log_level, Ord::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_line_gives_defaults() {
        let a = KernelArgs::parse("").unwrap();
        assert_eq!(a.log_level, Level::Info);
        assert_eq!(a.job, Job::Default);
        assert_eq!(a.ktest_from, 0);
        assert_eq!(a.ktest_timeout_ms, DEFAULT_KTEST_TIMEOUT_MS);
        assert_eq!(a.crash, None);
        assert_eq!(a.profile_hz, None);
    }

    #[test]
    fn clock_source_is_auto_unless_named() {
        assert_eq!(KernelArgs::parse("").unwrap().tsc_source, ClockSource::Auto);
        for c in [
            ClockSource::Auto,
            ClockSource::Cpuid,
            ClockSource::Kvmclock,
            ClockSource::PmTimer,
            ClockSource::Hpet,
            ClockSource::Pit,
        ] {
            let word = format!("tsc.source={}", c.name());
            assert_eq!(KernelArgs::parse(&word).unwrap().tsc_source, c);
        }
        let e = KernelArgs::parse("tsc.source=rtc").unwrap_err();
        assert!(matches!(e, ArgError::BadValue { key: "tsc.source", value: "rtc", .. }), "{e:?}");
        assert!(e.to_string().contains("'hpet'"), "{e}");
        assert!(matches!(KernelArgs::parse("tsc.source").unwrap_err(), ArgError::MissingValue { .. }));
    }

    #[test]
    fn profile_rate_is_a_multiple_of_the_tick() {
        assert_eq!(KernelArgs::parse("profile.hz=1000").unwrap().profile_hz, Some(1000));
        assert_eq!(KernelArgs::parse("profile.hz=100").unwrap().profile_hz, Some(100));
        assert_eq!(KernelArgs::parse("profile.hz=10000").unwrap().profile_hz, Some(10_000));
        for bad in ["0", "50", "150", "10100", "x", "-100"] {
            let word = format!("profile.hz={bad}");
            let e = KernelArgs::parse(&word).unwrap_err();
            assert!(matches!(e, ArgError::BadValue { key: "profile.hz", .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("multiple of 100"), "{e}");
        }
        assert!(matches!(KernelArgs::parse("profile.hz").unwrap_err(), ArgError::MissingValue { .. }));
    }

    #[test]
    fn a_run_job_takes_its_name_and_arguments_in_order() {
        let a = KernelArgs::parse("job=run run.name=hmm-tests run.arg=-r run.arg=hmm.hmm_device_private").unwrap();
        assert_eq!(a.job, Job::Run);
        assert_eq!(a.run_name, Some("hmm-tests"));
        assert_eq!(&*a.run_args, &["-r", "hmm.hmm_device_private"]);
        let many = "run.arg=x ".repeat(MAX_RUN_ARGS + 1);
        assert_eq!(KernelArgs::parse(&many).unwrap_err(), ArgError::TooManyRunArgs);
        assert!(matches!(KernelArgs::parse("run.arg").unwrap_err(), ArgError::MissingValue { key: "run.arg", .. }));
    }

    #[test]
    fn parses_every_key() {
        let a = KernelArgs::parse(
            "  log=warn,kernel::pci=trace job=none ktest.filter=frame ktest.from=3 ktest.timeout_ms=500 ktest.crash=panic",
        )
        .unwrap();
        assert_eq!(a.log_level, Level::Warn);
        assert_eq!(&*a.log_filters, &[LogFilter { target: "kernel::pci", level: Level::Trace }]);
        assert_eq!(a.job, Job::None);
        assert_eq!(a.ktest_filter, Some("frame"));
        assert_eq!(a.ktest_from, 3);
        assert_eq!(a.ktest_timeout_ms, 500);
        assert_eq!(a.crash, Some(Crash::Panic));
    }

    #[test]
    fn level_filters_match_whole_segments_longest_first() {
        let a = KernelArgs::parse("log=info,kernel=warn,kernel::pci=trace").unwrap();
        assert_eq!(a.level_for("kernel::pci"), Level::Trace);
        assert_eq!(a.level_for("kernel::pci::ecam"), Level::Trace);
        assert_eq!(a.level_for("kernel::pcie"), Level::Warn);
        assert_eq!(a.level_for("virtio_drivers::queue"), Level::Info);
        assert_eq!(a.max_level(), Level::Trace);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = KernelArgs::parse("log=info verbose").unwrap_err();
        assert_eq!(e, ArgError::UnknownKey("verbose"));
        assert!(e.to_string().contains("'verbose'"));
        assert!(e.to_string().contains("known:"));
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        let e = KernelArgs::parse("log=loud").unwrap_err();
        assert!(matches!(e, ArgError::BadValue { key: "log", value: "loud", .. }));
        assert!(e.to_string().contains("debug"));
        assert!(matches!(KernelArgs::parse("ktest.from=x").unwrap_err(), ArgError::BadValue { .. }));
        assert!(matches!(KernelArgs::parse("ktest.timeout_ms=0").unwrap_err(), ArgError::BadValue { .. }));
        assert_eq!(KernelArgs::parse("devices.coherent=1,3").unwrap().coherent_devices, 0b1010);
        assert_eq!(KernelArgs::parse("").unwrap().coherent_devices, 0);
        for bad in ["devices.coherent=x", "devices.coherent=64", "devices.coherent=1,,2"] {
            assert!(matches!(KernelArgs::parse(bad).unwrap_err(), ArgError::BadValue { .. }), "{bad}");
        }
        assert!(matches!(KernelArgs::parse("job=sleep").unwrap_err(), ArgError::BadValue { .. }));
        assert!(matches!(KernelArgs::parse("log=info,=debug").unwrap_err(), ArgError::BadValue { .. }));
        assert!(matches!(KernelArgs::parse("log=info,debug").unwrap_err(), ArgError::BadValue { .. }));
        assert!(matches!(KernelArgs::parse("ktest.crash=boom").unwrap_err(), ArgError::BadValue { .. }));
    }

    #[test]
    fn missing_values_are_refused() {
        assert_eq!(
            KernelArgs::parse("log").unwrap_err(),
            ArgError::MissingValue { key: "log", expected: "level[,target=level...]" }
        );
    }

    #[test]
    fn too_many_filters_are_refused() {
        let mut line = String::from("log=info");
        for i in 0..=MAX_LOG_FILTERS {
            line.push_str(&format!(",m{i}=debug"));
        }
        assert_eq!(KernelArgs::parse(&line).unwrap_err(), ArgError::TooManyLogFilters);
    }

    #[test]
    fn virtio_mmio_devices_as_firecracker_and_microvm_write_them() {
        // QEMU microvm's auto-kernel-cmdline form, and Firecracker's (size with a suffix).
        let a = KernelArgs::parse("job=none virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0xd0001000:6:3")
            .unwrap();
        assert_eq!(
            &*a.virtio_mmio,
            &[
                VirtioMmio { size: 512, base: 0xfeb0_0e00, irq: 12, id: None },
                VirtioMmio { size: 4096, base: 0xd000_1000, irq: 6, id: Some(3) },
            ]
        );
        assert_eq!(VirtioMmio::parse("1M@268435456:5").map(|t| (t.size, t.base)), Some((1 << 20, 0x1000_0000)));
        for bad in ["512", "512@0xfeb00e00", "@0x1000:5", "0@0x1000:5", "512@0xzz:5", "512@0x1000:x", "1@0x1000:5:6:7"]
        {
            assert_eq!(VirtioMmio::parse(bad), None, "{bad}");
            let word = format!("virtio_mmio.device={bad}");
            let e = KernelArgs::parse(&word).unwrap_err();
            assert!(matches!(e, ArgError::BadValue { key: "virtio_mmio.device", .. }), "{bad}: {e:?}");
            assert!(format!("{e}").contains("SIZE@ADDR:IRQ"), "{e}");
        }
        assert_eq!(VirtioMmio::parse("16E@0x1000:5"), None);
        assert_eq!(VirtioMmio::parse("0x1000@0xffffffffffffff00:5"), None);
        let many: Vec<String> =
            (0..=MAX_VIRTIO_MMIO).map(|i| format!("virtio_mmio.device=512@{:#x}:5", 0x1000 * (i + 1))).collect();
        let many = many.join(" ");
        assert_eq!(KernelArgs::parse(&many).unwrap_err(), ArgError::TooManyVirtioMmio);
    }
}
