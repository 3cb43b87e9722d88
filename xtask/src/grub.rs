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

/// The kernel as GRUB boots it: the ELF's header, program headers and the file data of its
/// segments, without section headers (so without symbols and debug information), byte for
/// byte the same where it is kept.
///
/// GRUB's Multiboot2 loader also loads every section no segment holds (`.symtab`,
/// `.debug_*`: 14 MiB of the release kernel) into memory it allocates for the ELF-sections
/// tag, which the kernel does not read. Under OVMF that load fails (`failure reading sector
/// 0x2860 from 'cd0'`, the first sector after the segments' data, on QEMU 7.2 with Debian
/// 12's GRUB 2.06 and OVMF), before the kernel runs. The profiler and the panic decoder read
/// symbols from the ELF the build wrote, not from this image.
pub fn boot_image(elf: &[u8]) -> Result<Vec<u8>> {
    let u16_at = |o: usize| elf.get(o..o.checked_add(2)?).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| elf.get(o..o.checked_add(8)?).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("the kernel is not a little-endian 64-bit ELF file".into());
    }
    let bad = || "the kernel's ELF header or program headers are cut short".to_string();
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(0x38).ok_or_else(bad)? as usize;
    if phentsize < 0x38 || phnum == 0 {
        return Err(format!("the kernel has {phnum} program headers of {phentsize} bytes; GRUB needs its segments"));
    }
    let mut end = phoff.saturating_add(phentsize * phnum);
    for i in 0..phnum {
        let h = phoff.saturating_add(i * phentsize);
        let (offset, filesz) =
            (u64_at(h.saturating_add(0x08)).ok_or_else(bad)?, u64_at(h.saturating_add(0x20)).ok_or_else(bad)?);
        end = end.max(offset.saturating_add(filesz) as usize);
    }
    let mut out =
        elf.get(..end).ok_or_else(|| format!("the kernel's segments reach byte {end}, past its end"))?.to_vec();
    // e_shoff, e_shnum, e_shstrndx: no section headers.
    out[0x28..0x30].fill(0);
    out[0x3c..0x40].fill(0);
    Ok(out)
}

/// Makes `target/grub/<name>.iso` holding `kernel` (as [`boot_image`] makes it) booted with
/// `cmdline`.
pub fn make_iso(root: &Path, name: &str, kernel: &Path, cmdline: &str) -> Result<PathBuf> {
    let base = root.join("target/grub");
    let tree = base.join(name);
    let _ = std::fs::remove_dir_all(&tree);
    let grub_dir = tree.join("boot/grub");
    std::fs::create_dir_all(&grub_dir).map_err(|e| format!("creating {}: {e}", grub_dir.display()))?;
    let elf = std::fs::read(kernel).map_err(|e| format!("reading {}: {e}", kernel.display()))?;
    let image = boot_image(&elf).map_err(|e| format!("{}: {e}", kernel.display()))?;
    std::fs::write(tree.join("boot/kernel"), image).map_err(|e| format!("writing the boot image: {e}"))?;
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

    /// A little-endian ELF64 file: header, `phnum` program headers (each a segment of 16
    /// bytes at 0x100 + 0x20 × i), the segments' data, then 64 bytes of "sections".
    fn elf(phnum: u16) -> Vec<u8> {
        let mut f = vec![0u8; 0x100 + 0x20 * phnum as usize + 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        let shoff = (f.len() - 64) as u64;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        for i in 0..phnum as usize {
            let h = 0x40 + 0x38 * i;
            f[h..h + 4].copy_from_slice(&1u32.to_le_bytes());
            f[h + 8..h + 16].copy_from_slice(&(0x100 + 0x20 * i as u64).to_le_bytes());
            f[h + 0x20..h + 0x28].copy_from_slice(&16u64.to_le_bytes());
            f[0x100 + 0x20 * i..0x110 + 0x20 * i].fill(0xa0 + i as u8);
        }
        let n = f.len();
        f[n - 64..].fill(0x55);
        f
    }

    /// The boot image keeps the header, program headers and segment data unchanged, ends
    /// where the last segment's data ends and has no section headers; what is not an ELF64
    /// file, or is cut short, is refused with a message that says so.
    #[test]
    fn the_boot_image_keeps_the_segments_and_drops_the_sections() {
        let f = elf(2);
        let img = boot_image(&f).unwrap();
        assert_eq!(img.len(), 0x120 + 16, "ends after the second segment's data");
        assert_eq!(img[..0x28], f[..0x28]);
        assert_eq!(img[0x30..0x3c], f[0x30..0x3c]);
        assert_eq!(img[0x40..], f[0x40..0x130], "program headers and segment data unchanged");
        assert!(img[0x28..0x30].iter().all(|&b| b == 0), "e_shoff");
        assert!(img[0x3c..0x40].iter().all(|&b| b == 0), "e_shnum and e_shstrndx");
        assert!(!img.contains(&0x55), "no section data");
        let e = boot_image(b"MZ\x90\0 not an ELF").unwrap_err();
        assert!(e.contains("not a little-endian 64-bit ELF"), "{e}");
        let e = boot_image(&f[..0x110]).unwrap_err();
        assert!(e.contains("past its end"), "{e}");
        let mut far = elf(1);
        far[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = boot_image(&far).unwrap_err();
        assert!(e.contains("cut short"), "a program-header offset past the file: {e}");
        let e = boot_image(&elf(0)).unwrap_err();
        assert!(e.contains("0 program headers"), "{e}");
    }

    #[test]
    fn a_command_line_grub_cannot_pass_is_refused() {
        let e = config("job='x'").unwrap_err();
        assert!(e.contains("'\\''"), "{e}");
    }
}
