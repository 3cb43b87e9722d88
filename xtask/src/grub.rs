//! Booting the kernel through GRUB, as a physical machine would: a bootable ISO made with
//! `grub-mkrescue` (BIOS and UEFI in one image) whose `grub.cfg` loads the same kernel ELF with
//! GRUB's `multiboot2` command, and the firmware QEMU starts it under (SeaBIOS, or OVMF for
//! UEFI).
//!
//! Owns: the ISO tree under `target/grub/<name>/` (the kernel, `boot/grub/grub.cfg`), the
//! check that GRUB's tools and the firmware exist (installing them with apt-get when the xtask
//! runs as root, as [`crate::setup`] does for QEMU), and the firmware's QEMU arguments (a
//! private copy of OVMF's variable store per boot).

use crate::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// OVMF's code and variable-store images (Debian's `ovmf` package, 4 MiB flash layout).
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// GRUB's module directories for the two platforms the ISO boots on.
const GRUB_BIOS: &str = "/usr/lib/grub/i386-pc";
const GRUB_EFI: &str = "/usr/lib/grub/x86_64-efi";

/// The firmware a GRUB boot runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default SeaBIOS: GRUB's i386-pc image from the ISO's El Torito boot record.
    Bios,
    /// OVMF: GRUB's x86_64-efi image from the ISO's EFI system partition.
    Uefi,
}

impl Firmware {
    /// The name used in test names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bios => "bios",
            Self::Uefi => "uefi",
        }
    }
}

/// What is missing for GRUB boots, if anything, as the packages that provide it.
fn missing() -> Vec<&'static str> {
    let have = |cmd: &str| Command::new(cmd).arg("--version").output().is_ok_and(|o| o.status.success());
    let mut m = Vec::new();
    if !have("grub-mkrescue") {
        m.push("grub-common");
    }
    if !Path::new(GRUB_BIOS).is_dir() {
        m.push("grub-pc-bin");
    }
    if !Path::new(GRUB_EFI).is_dir() {
        m.push("grub-efi-amd64-bin");
    }
    if !have("xorriso") {
        m.push("xorriso");
    }
    if !have("mformat") {
        m.push("mtools");
    }
    if !Path::new(OVMF_CODE).is_file() || !Path::new(OVMF_VARS).is_file() {
        m.push("ovmf");
    }
    m
}

/// Makes sure GRUB's tools and both firmwares are installed: installs them with apt-get when
/// running as root on Debian, else says what to install.
pub fn ensure_tools() -> Result<()> {
    let need = missing();
    if need.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root && Path::new("/usr/bin/apt-get").exists() {
        eprintln!("xtask: installing {} for the GRUB boot checks", need.join(" "));
        let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&need)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success());
        if ok && missing().is_empty() {
            return Ok(());
        }
    }
    Err(format!(
        "booting through GRUB needs {}: sudo apt-get update && sudo apt-get install -y {}",
        need.join(", "),
        need.join(" ")
    ))
}

/// The `grub.cfg` that boots `/boot/kernel` by Multiboot2 with `cmdline`, at once, with GRUB's
/// own output on the serial line. Each word of the command line is single-quoted, so GRUB's
/// script syntax cannot change it.
pub fn config(cmdline: &str) -> Result<String> {
    if let Some(c) = cmdline.chars().find(|&c| c == '\'' || c == '\n') {
        return Err(format!("the kernel command line holds {c:?}, which a GRUB boot cannot pass"));
    }
    let words: Vec<String> = cmdline.split_whitespace().map(|w| format!("'{w}'")).collect();
    Ok(format!(
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
         menuentry 'hmm-unikernel' {{\n  multiboot2 /boot/kernel {}\n  boot\n}}\n",
        words.join(" ")
    ))
}

/// Makes `target/grub/<name>.iso` holding `kernel` booted with `cmdline`.
pub fn make_iso(root: &Path, name: &str, kernel: &Path, cmdline: &str) -> Result<PathBuf> {
    let base = root.join("target/grub");
    let tree = base.join(name);
    let _ = std::fs::remove_dir_all(&tree);
    let grub_dir = tree.join("boot/grub");
    std::fs::create_dir_all(&grub_dir).map_err(|e| format!("creating {}: {e}", grub_dir.display()))?;
    std::fs::copy(kernel, tree.join("boot/kernel")).map_err(|e| format!("copying {}: {e}", kernel.display()))?;
    std::fs::write(grub_dir.join("grub.cfg"), config(cmdline)?).map_err(|e| format!("writing grub.cfg: {e}"))?;
    let iso = base.join(format!("{name}.iso"));
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(&tree)
        .output()
        .map_err(|e| format!("running grub-mkrescue: {e}"))?;
    if !out.status.success() {
        return Err(format!("grub-mkrescue failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(iso)
}

/// QEMU's arguments for booting `iso` under `fw` (the variable store is copied beside the ISO,
/// since OVMF writes to it).
pub fn qemu_args(iso: &Path, fw: Firmware) -> Result<Vec<String>> {
    let mut args = vec!["-cdrom".to_string(), iso.display().to_string(), "-boot".into(), "d".into()];
    if fw == Firmware::Uefi {
        let vars = iso.with_extension("vars.fd");
        std::fs::copy(OVMF_VARS, &vars).map_err(|e| format!("copying {OVMF_VARS}: {e}"))?;
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_boots_by_multiboot2_with_the_words_quoted() {
        let c = config("job=default log=info,kernel::pci=debug").unwrap();
        assert!(c.contains("multiboot2 /boot/kernel 'job=default' 'log=info,kernel::pci=debug'\n"), "{c}");
        assert!(c.contains("set timeout=0") && c.contains("terminal_output serial"), "{c}");
    }

    #[test]
    fn a_command_line_grub_cannot_pass_is_refused() {
        let e = config("job='x'").unwrap_err();
        assert!(e.contains("'\\''"), "{e}");
    }
}
