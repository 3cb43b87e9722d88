//! The options `cargo xtask qemu`, `test` and `bench` share, and their parser.

use crate::setup::Profile;
use crate::{Result, root, usage};
use std::path::PathBuf;

/// Parses the options `qemu`, `test` and `bench` share; returns them and the other arguments
/// (kernel arguments after `--`, a benchmark name).
pub fn parse_options(args: &[String]) -> Result<(Options, Vec<String>)> {
    let mut o = Options {
        machine: root().join("qemu/default.toml"),
        accel: "tcg".into(),
        gdb: false,
        profile: Profile::Release,
        timeout: 120,
        skip_host: false,
        filter: None,
        runs: 10,
        grub: None,
    };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value\n{}", usage()));
        match a.as_str() {
            "--machine" => o.machine = PathBuf::from(value("--machine")?),
            "--accel" => {
                o.accel = value("--accel")?;
                if o.accel != "tcg" && o.accel != "kvm" {
                    return Err(format!("--accel {}: use tcg or kvm", o.accel));
                }
            }
            "--gdb" => o.gdb = true,
            "--release" => o.profile = Profile::Release,
            "--debug" => o.profile = Profile::Debug,
            "--skip-host" => o.skip_host = true,
            "--filter" => o.filter = Some(value("--filter")?),
            "--timeout" => {
                o.timeout = value("--timeout")?.parse().map_err(|_| "--timeout takes seconds".to_string())?
            }
            "--runs" => {
                o.runs = value("--runs")?.parse().ok().filter(|&r| r > 0).ok_or("--runs takes a positive count")?
            }
            "--grub" => {
                o.grub = Some(match value("--grub")?.as_str() {
                    "bios" => crate::grub::Firmware::Bios,
                    "uefi" => crate::grub::Firmware::Uefi,
                    other => return Err(format!("--grub {other}: use bios or uefi")),
                })
            }
            "--" => rest.extend(it.by_ref().cloned()),
            other if other.starts_with('-') => return Err(format!("unknown option '{other}'\n{}", usage())),
            other => rest.push(other.to_string()),
        }
    }
    Ok((o, rest))
}

/// The shared options.
pub struct Options {
    /// `--machine FILE` (default `qemu/default.toml`).
    pub machine: PathBuf,
    /// `--accel tcg|kvm`.
    pub accel: String,
    /// `--gdb`.
    pub gdb: bool,
    /// `--release` (default) or `--debug`.
    pub profile: Profile,
    /// `--timeout SECS`.
    pub timeout: u64,
    /// `--skip-host`: no `cargo test` before the in-kernel tests.
    pub skip_host: bool,
    /// `cargo xtask test --filter P`: only the in-kernel tests whose names contain P, on
    /// the default machine (no SeaBIOS, coherent, boot or NUMA passes).
    pub filter: Option<String>,
    /// `--runs N` (the boot benchmark).
    pub runs: usize,
    /// `cargo xtask qemu --grub bios|uefi`: boot through GRUB (Multiboot2) from an ISO under
    /// SeaBIOS or OVMF instead of by PVH.
    pub grub: Option<crate::grub::Firmware>,
}
