//! Set-up and building: what a fresh machine lacks (the bare-metal target, QEMU), and the
//! kernel build for each profile.
//!
//! Owns the QEMU binary's name and the paths of the kernel ELF under `target/`; everything is
//! run from the workspace root ([`crate::root`]).

use crate::{Result, root};
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Installs what a fresh machine lacks: the `x86_64-unknown-none` target, and QEMU (with its
/// microvm BIOS when `firmware_needed`) by apt when root, else the error gives the command.
pub fn ensure_prerequisites(firmware_needed: bool) -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(o) if String::from_utf8_lossy(&o.stdout).lines().any(|l| l.trim() == "x86_64-unknown-none") => {}
        Ok(_) => {
            eprintln!("xtask: installing the x86_64-unknown-none target");
            let ok = Command::new("rustup")
                .args(["target", "add", "x86_64-unknown-none"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err("could not install the target: run `rustup target add x86_64-unknown-none`".into());
            }
        }
        Err(_) => eprintln!("xtask: rustup not found; assuming the x86_64-unknown-none target is installed"),
    }
    let have_qemu = Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success());
    let have_bios = !firmware_needed || Path::new("/usr/share/qemu/bios-microvm.bin").exists();
    if have_qemu && have_bios {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let apt = Path::new("/usr/bin/apt-get").exists();
    if root && apt {
        eprintln!("xtask: installing QEMU (apt-get install -y qemu-system-x86)");
        let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq", "qemu-system-x86"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        return Err("apt-get could not install qemu-system-x86".into());
    }
    Err(format!(
        "{QEMU} is not installed. Install it with:\n  sudo apt-get update && sudo apt-get install -y qemu-system-x86"
    ))
}

/// The kernel build: `--debug`, `--release` (the default), or the in-kernel test build.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Profile {
    /// `target/x86_64-unknown-none/debug`.
    Debug,
    /// `--release`.
    Release,
    /// The `ktest` profile with the `ktest` feature: the in-kernel test runner.
    Ktest,
}

/// Builds the kernel with `profile` and returns the ELF's path.
pub fn build_kernel(profile: Profile) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root()).args(["build", "--quiet", "-p", "kernel", "--target", "x86_64-unknown-none"]);
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            cmd.arg("--release");
            "release"
        }
        Profile::Ktest => {
            cmd.args(["--profile", "ktest", "--features", "ktest"]);
            "ktest"
        }
    };
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err("building the kernel failed (see above)".into());
    }
    Ok(root().join("target/x86_64-unknown-none").join(dir).join("kernel"))
}
