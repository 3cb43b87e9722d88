//! Machine descriptions (`qemu/*.toml`) and the QEMU command line built from them.
//!
//! A machine file names the QEMU machine model (`q35`, the default, or `microvm`: the
//! Firecracker machine model, no PCI, ACPI on or off), CPUs, memory (or NUMA nodes with HMAT
//! entries), the firmware, whether a virtio-iommu is present, and the devices (PCI, so none on
//! microvm). Unknown keys and bad values are errors that name
//! the file, the line and the field (TOML and type errors too: [`toml_error`], which the
//! experiment files' loader uses as well); a missing file's error lists the machine files there
//! are ([`available`]).

use serde::Deserialize;
use std::{fmt::Write as _, path::Path};

/// A machine file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// One line for reports (optional: the file's name when absent).
    #[serde(default)]
    pub description: String,
    /// QEMU's machine model: "q35" (default) or "microvm".
    #[serde(default = "default_model")]
    pub machine: String,
    /// microvm only: ACPI tables (hardware-reduced ACPI) on or off. Default on.
    pub acpi: Option<bool>,
    /// microvm only: a virtio-rng on a virtio-mmio transport (without ACPI QEMU names it on
    /// the kernel command line, `virtio_mmio.device=`, as Firecracker does; with ACPI only in
    /// the DSDT).
    #[serde(default)]
    pub virtio_rng: bool,
    /// CPU count.
    pub cpus: u32,
    /// RAM, e.g. "512M" (omit with `numa`: the nodes' sum is used).
    pub memory: Option<String>,
    /// "qboot" (fast, default) or "seabios".
    #[serde(default = "default_firmware")]
    pub firmware: String,
    /// A virtio-iommu in front of the devices.
    #[serde(default)]
    pub iommu: bool,
    /// QEMU's `isa-debug-exit` port (default on). Without it, as on Firecracker or a physical
    /// machine, the kernel resets the machine when it is done and the xtask reads the outcome
    /// from its `@@EXIT` line.
    #[serde(default = "yes")]
    pub debug_exit: bool,
    /// Devices.
    #[serde(default, rename = "device")]
    pub devices: Vec<Device>,
    /// NUMA topology.
    pub numa: Option<Numa>,
}

fn default_model() -> String {
    "q35".into()
}

fn yes() -> bool {
    true
}

fn default_firmware() -> String {
    "qboot".into()
}

/// One device: device memory plus its copy engine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Name (letters, digits, '-', '_'), unique within the machine. Spanned, so that errors
    /// about it name its line.
    pub name: toml::Spanned<String>,
    /// Device memory size, a power of two, e.g. "64M".
    pub memory: String,
    /// Device memory the CPU maps (`MEMORY_DEVICE_COHERENT`) instead of private memory it never
    /// maps (the default).
    #[serde(default)]
    pub coherent: bool,
    /// Device memory that can be added and removed at run time, e.g. "32M" (a multiple of 2M):
    /// a virtio-mem region of this size, with a second copy engine over it. None by default.
    #[serde(default)]
    pub hotplug: Option<String>,
}

impl Device {
    /// Bytes of hot-plug memory (0 without).
    pub fn hotplug_bytes(&self) -> u64 {
        self.hotplug.as_deref().and_then(|h| parse_size(h).ok()).unwrap_or(0)
    }
}

/// NUMA nodes and HMAT entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Numa {
    /// Nodes, numbered in order.
    pub node: Vec<Node>,
    /// Latency/bandwidth entries.
    #[serde(default)]
    pub hmat: Vec<Hmat>,
}

/// A NUMA node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// CPU indices.
    pub cpus: Vec<u32>,
    /// Memory, e.g. "256M".
    pub memory: String,
}

/// One HMAT entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hmat {
    /// Initiator node.
    pub initiator: u32,
    /// Target (memory) node.
    pub target: u32,
    /// Access latency.
    pub latency_ns: u64,
    /// Access bandwidth.
    pub bandwidth_mbps: u64,
}

/// The QEMU id of device `i`'s `virtio-mem-pci` device (what QMP's `qom-set` names).
pub fn hotmem_id(i: usize) -> String {
    format!("hotmem{i}")
}

/// Parses "512M", "1G", "64K" or a byte count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a size (use a number with K, M or G, e.g. \"512M\")"))
}

impl Machine {
    /// Kernel arguments the machine implies (which devices have coherent memory), added to
    /// every boot.
    pub fn kernel_args(&self) -> String {
        let coherent: Vec<String> =
            self.devices.iter().enumerate().filter(|(_, d)| d.coherent).map(|(n, _)| n.to_string()).collect();
        if coherent.is_empty() { String::new() } else { format!(" devices.coherent={}", coherent.join(",")) }
    }

    /// Reads and validates a machine file. A missing file's error lists the machine files in
    /// its directory (or in the workspace's `qemu/`).
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let dir = path.parent().filter(|d| !available(d).is_empty()).map(Path::to_path_buf);
                let dir = dir.or_else(|| crate::workspace::found().map(|r| r.join("qemu")));
                let list = dir.map(|d| available(&d)).unwrap_or_default();
                format!(
                    "{}: no such machine file; the machine files are {} (or give the path of your own)",
                    path.display(),
                    if list.is_empty() { "none here".to_string() } else { list.join(", ") }
                )
            } else {
                format!("{}: cannot read: {e}", path.display())
            }
        })?;
        let mut m: Machine = toml::from_str(&text).map_err(|e| toml_error(path, &text, &e))?;
        m.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        m.unique_names(&text).map_err(|e| format!("{}:{e}", path.display()))?;
        if m.description.trim().is_empty() {
            m.description = path.file_name().map_or_else(|| path.display().to_string(), |f| f.to_string_lossy().into());
        }
        Ok(m)
    }

    /// Two devices with one name are an error naming the second one's line and the first's: the
    /// name is the device's identity in reports (and once was its backing file's, so two such
    /// devices shared memory).
    fn unique_names(&self, text: &str) -> Result<(), String> {
        let line = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
        for (i, d) in self.devices.iter().enumerate() {
            if let Some((j, first)) =
                self.devices[..i].iter().enumerate().find(|(_, e)| e.name.get_ref() == d.name.get_ref())
            {
                let (at, first_at) = (d.name.span().start, first.name.span().start);
                let col = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
                return Err(format!(
                    "{}:{col}: device[{i}].name = \"{}\": device[{j}] (line {}) has this name already; names must be unique",
                    line(at),
                    d.name.get_ref(),
                    line(first_at)
                ));
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.cpus) {
            return Err(format!("cpus = {}: must be 1 to 64", self.cpus));
        }
        match self.machine.as_str() {
            "q35" => {
                if self.acpi.is_some() || self.virtio_rng {
                    return Err("acpi, virtio_rng: only for machine = \"microvm\"".into());
                }
            }
            "microvm" => {
                if !self.devices.is_empty() || self.iommu {
                    return Err("machine = \"microvm\" has no PCI: no [[device]] and no iommu".into());
                }
                if self.numa.is_some() {
                    return Err("machine = \"microvm\": no [numa] (its ACPI has no SRAT)".into());
                }
                if self.firmware != "qboot" {
                    return Err("machine = \"microvm\": firmware must be \"qboot\"".into());
                }
                if self.acpi == Some(false) && self.cpus != 1 {
                    return Err("machine = \"microvm\" with acpi = false: cpus must be 1 (no MADT)".into());
                }
            }
            other => return Err(format!("machine = \"{other}\": must be \"q35\" or \"microvm\"")),
        }
        if !matches!(self.firmware.as_str(), "qboot" | "seabios") {
            return Err(format!("firmware = \"{}\": must be \"qboot\" or \"seabios\"", self.firmware));
        }
        match (&self.memory, &self.numa) {
            (Some(m), None) => {
                let m = parse_size(m).map_err(|e| format!("memory: {e}"))?;
                if m < 128 << 20 {
                    return Err("memory: at least 128M is needed".into());
                }
            }
            (None, Some(n)) => {
                if n.node.is_empty() {
                    return Err("numa: at least one [[numa.node]]".into());
                }
                for (i, node) in n.node.iter().enumerate() {
                    parse_size(&node.memory).map_err(|e| format!("numa.node[{i}].memory: {e}"))?;
                    if let Some(c) = node.cpus.iter().find(|&&c| c >= self.cpus) {
                        return Err(format!("numa.node[{i}].cpus: CPU {c} does not exist (cpus = {})", self.cpus));
                    }
                }
                for (i, h) in n.hmat.iter().enumerate() {
                    let nodes = n.node.len() as u32;
                    if h.initiator >= nodes || h.target >= nodes {
                        return Err(format!("numa.hmat[{i}]: node out of range (there are {nodes} nodes)"));
                    }
                    if h.latency_ns == 0 || h.bandwidth_mbps == 0 {
                        return Err(format!("numa.hmat[{i}]: latency_ns and bandwidth_mbps must be positive"));
                    }
                    if n.node[h.initiator as usize].cpus.is_empty() {
                        return Err(format!("numa.hmat[{i}]: initiator node {} has no CPUs", h.initiator));
                    }
                }
            }
            (Some(_), Some(_)) => return Err("give either memory or [numa], not both".into()),
            (None, None) => return Err("missing field: memory (or [numa] nodes)".into()),
        }
        for (i, d) in self.devices.iter().enumerate() {
            let name = d.name.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("device[{i}].name = \"{name}\": use letters, digits, '-' and '_'"));
            }
            let size = parse_size(&d.memory).map_err(|e| format!("device[{i}].memory: {e}"))?;
            if !size.is_power_of_two() || size < 1 << 20 {
                return Err(format!(
                    "device[{i}].memory = \"{}\": must be a power of two of at least 1M (a PCI BAR)",
                    d.memory
                ));
            }
            if let Some(h) = &d.hotplug {
                let hot = parse_size(h).map_err(|e| format!("device[{i}].hotplug: {e}"))?;
                if !hot.is_multiple_of(2 << 20) {
                    return Err(format!(
                        "device[{i}].hotplug = \"{h}\": must be a multiple of 2M (virtio-mem plugs 2 MiB blocks)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Total RAM in bytes.
    pub fn ram(&self) -> u64 {
        match (&self.memory, &self.numa) {
            (Some(m), _) => parse_size(m).unwrap_or(0),
            (None, Some(n)) => n.node.iter().map(|x| parse_size(&x.memory).unwrap_or(0)).sum(),
            _ => 0,
        }
    }

    /// QEMU arguments for this machine (without the kernel, serial or exit device). `shm` gives
    /// the path of each device-memory file from its name in [`Machine::shm_files`].
    pub fn qemu_args(&self, shm: &dyn Fn(&str) -> String) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: String| a.push(s);
        let hmat = self.numa.as_ref().is_some_and(|n| !n.hmat.is_empty());
        push("-machine".into());
        push(match self.machine.as_str() {
            // No PCIe, the PIT on (the TSC calibration's source there), legacy serial for the
            // console, the ISA bus isa-debug-exit sits on; QEMU appends `virtio_mmio.device=`
            // for each virtio-mmio device when there is no ACPI (which would describe them).
            "microvm" => format!(
                "microvm,acpi={},pit=on,pic=on,rtc=on,isa-serial=on,pcie=off,auto-kernel-cmdline=on",
                if self.acpi.unwrap_or(true) { "on" } else { "off" }
            ),
            _ if hmat => "q35,hmat=on".into(),
            _ => "q35".into(),
        });
        push("-smp".into());
        push(self.cpus.to_string());
        push("-m".into());
        let hot: u64 = self.devices.iter().map(Device::hotplug_bytes).sum();
        // virtio-mem regions live in the device-memory area above RAM, which maxmem sizes.
        push(if hot == 0 {
            format!("{}M", self.ram() >> 20)
        } else {
            format!("{}M,maxmem={}M", self.ram() >> 20, (self.ram() + hot) >> 20)
        });
        if self.firmware == "qboot" {
            push("-bios".into());
            push("/usr/share/qemu/bios-microvm.bin".into());
        }
        if let Some(n) = &self.numa {
            for (i, node) in n.node.iter().enumerate() {
                push("-object".into());
                push(format!("memory-backend-ram,id=numa{i},size={}M", parse_size(&node.memory).unwrap_or(0) >> 20));
                let mut spec = format!("node,nodeid={i},memdev=numa{i}");
                for c in &node.cpus {
                    let _ = write!(spec, ",cpus={c}");
                }
                if hmat {
                    // Nodes without CPUs take the first node with CPUs as their initiator.
                    let init = if node.cpus.is_empty() {
                        n.node.iter().position(|x| !x.cpus.is_empty()).unwrap_or(0)
                    } else {
                        i
                    };
                    let _ = write!(spec, ",initiator={init}");
                }
                push("-numa".into());
                push(spec);
            }
            for h in &n.hmat {
                push("-numa".into());
                push(format!(
                    "hmat-lb,initiator={},target={},hierarchy=memory,data-type=access-latency,latency={}",
                    h.initiator, h.target, h.latency_ns
                ));
                push("-numa".into());
                push(format!(
                    "hmat-lb,initiator={},target={},hierarchy=memory,data-type=access-bandwidth,bandwidth={}M",
                    h.initiator, h.target, h.bandwidth_mbps
                ));
            }
        }
        if self.iommu {
            push("-device".into());
            push("virtio-iommu-pci".into());
        }
        if self.virtio_rng {
            push("-device".into());
            push("virtio-rng-device".into());
        }
        for (i, d) in self.devices.iter().enumerate() {
            let name = device_file(i, d);
            let path = shm(&name);
            let size = parse_size(&d.memory).unwrap_or(0);
            push("-object".into());
            push(format!("memory-backend-file,id=vram{i},share=on,mem-path={path},size={size}"));
            push("-device".into());
            push(format!("ivshmem-plain,memdev=vram{i}"));
            push("-drive".into());
            push(format!("if=none,id=copy{i},file={path},format=raw,file.locking=off"));
            push("-device".into());
            push(format!(
                "virtio-blk-pci,drive=copy{i},disable-legacy=on{}",
                if self.iommu { ",iommu_platform=on" } else { "" }
            ));
            let hot = d.hotplug_bytes();
            if hot > 0 {
                // Right after the device's own parts, in PCI order: the virtio-mem device, then
                // the region's copy engine (the kernel groups functions by that order).
                let path = shm(&format!("{name}-hot"));
                push("-object".into());
                push(format!("memory-backend-file,id=hot{i},share=on,mem-path={path},size={hot}"));
                push("-device".into());
                push(format!("virtio-mem-pci,id={},memdev=hot{i},requested-size={hot}", hotmem_id(i)));
                push("-drive".into());
                push(format!("if=none,id=hotcopy{i},file={path},format=raw,file.locking=off"));
                push("-device".into());
                push(format!(
                    "virtio-blk-pci,drive=hotcopy{i},disable-legacy=on{}",
                    if self.iommu { ",iommu_platform=on" } else { "" }
                ));
            }
        }
        a
    }

    /// The device memory files to create: (name, size). A name is unique in the machine; the
    /// launch makes each file under a random name ending in it ([`crate::qemu`]).
    pub fn shm_files(&self) -> Vec<(String, u64)> {
        let mut files = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            let name = device_file(i, d);
            files.push((name.clone(), parse_size(&d.memory).unwrap_or(0)));
            if d.hotplug_bytes() > 0 {
                files.push((format!("{name}-hot"), d.hotplug_bytes()));
            }
        }
        files
    }
}

/// The `*.toml` files in `dir`, sorted, each as `dir/name` relative to the workspace root when
/// it is under it (empty when the directory cannot be read).
pub fn available(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .map(|p| {
            let rel = crate::workspace::found().and_then(|r| p.strip_prefix(r).ok()).map(Path::to_path_buf);
            rel.unwrap_or(p).display().to_string()
        })
        .collect();
    v.sort();
    v
}

/// A TOML or type error in `text` (the file `path`) as `file:line:col: `field`: what; what is
/// allowed`, the field found from where the error points ([`field_at`]).
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let span = e.span().unwrap_or(0..0);
    let at = span.start.min(text.len());
    let before = &text[..at];
    let (line, col) = (before.matches('\n').count() + 1, at - before.rfind('\n').map_or(0, |i| i + 1) + 1);
    let msg = explain(e.message().trim_end());
    match field_at(text, at) {
        Some(f) => format!("{}:{line}:{col}: `{f}`: {msg}", path.display()),
        None => format!("{}:{line}:{col}: {msg}", path.display()),
    }
}

/// serde's `what, expected X` as `what; expected X`, with Rust's type names said in words.
fn explain(msg: &str) -> String {
    let Some((what, expected)) = msg.split_once(", expected ") else { return msg.to_string() };
    let words = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a sequence" => "a list, e.g. [1.0, 1.5]".to_string(),
        "a map" | "struct" => "a table".to_string(),
        other if other.starts_with("struct ") => "a table".to_string(),
        other => other.to_string(),
    };
    format!("{what}; expected {words}")
}

/// The dotted name of the field at byte `at` of a TOML text: the table header above it
/// (`[[policy]]` headers numbered, `policy[1]`), then the key of its line, then, inside an
/// inline table, the key there (`policy[1].params.threshold`). `None` before any key.
pub fn field_at(text: &str, at: usize) -> Option<String> {
    let mut header: Option<String> = None;
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let end = start + raw.len();
        let line = raw.split('#').next().unwrap_or("").trim();
        let on_this = at >= start && (at < end || end == text.len());
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let n = counts.entry(name.trim().to_string()).or_insert(0);
            header = Some(format!("{}[{n}]", name.trim()));
            *n += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            header = Some(name.trim().to_string());
        } else if on_this && let Some((key, _)) = raw.split_once('=') {
            let col = at - start;
            let key = key.trim().trim_matches('"').to_string();
            let mut path = match &header {
                Some(h) => format!("{h}.{key}"),
                None => key,
            };
            // Inside an inline table: the last `key =` before the error, after a `{` or `,`.
            let upto = &raw[..col.min(raw.len())];
            if let Some(brace) = upto.find('{')
                && let Some(eq) = upto.rfind('=').filter(|&e| e > brace)
            {
                let k = upto[..eq].rsplit(['{', ',']).next().unwrap_or("").trim().trim_matches('"');
                if !k.is_empty() {
                    path = format!("{path}.{k}");
                }
            }
            return Some(path);
        }
        if on_this {
            return header;
        }
        start = end;
    }
    header
}

/// The name of the host file backing device `i`'s memory (its hot-plug region's is this plus
/// `-hot`): the device's index, then its name for whoever lists /dev/shm. The index makes it
/// unique per device whatever the names are, so no two devices' memories alias.
fn device_file(i: usize, d: &Device) -> String {
    format!("{i}-{}", d.name.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Machine, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(format!("m{}.toml", text.len()));
        std::fs::write(&p, text).unwrap();
        Machine::load(&p)
    }

    #[test]
    fn every_shipped_machine_file_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Machine::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 4);
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let e = load_str("description = \"x\"\ncpus = 2\nmemory = \"512M\"\ncolour = 1\n").unwrap_err();
        assert!(e.contains(":4:"), "{e}");
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let e = load_str("description = \"x\"\ncpus = 0\nmemory = \"512M\"\n").unwrap_err();
        assert!(e.contains("cpus"), "{e}");
        let e = load_str("description = \"x\"\ncpus = 1\nmemory = \"lots\"\n").unwrap_err();
        assert!(e.contains("not a size"), "{e}");
        let e = load_str("description = \"x\"\ncpus = 1\nmemory = \"512M\"\nfirmware = \"uefi\"\n").unwrap_err();
        assert!(e.contains("qboot"), "{e}");
        let e =
            load_str("description = \"x\"\ncpus = 1\nmemory = \"512M\"\n[[device]]\nname = \"a\"\nmemory = \"3M\"\n")
                .unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        let dev = "[[device]]\nname = \"a\"\nmemory = \"4M\"\n";
        let e = load_str(&format!("description = \"x\"\ncpus = 1\nmemory = \"512M\"\n{dev}hotplug = \"3M\"\n"))
            .unwrap_err();
        assert!(e.contains("multiple of 2M"), "{e}");
        let e = load_str("description = \"x\"\ncpus = 1\n").unwrap_err();
        assert!(e.contains("memory"), "{e}");
    }

    #[test]
    fn builds_device_and_numa_arguments() {
        let m = Machine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/default.toml")).unwrap();
        let a = m.qemu_args(&|n| format!("/dev/shm/x-{n}")).join(" ");
        assert!(a.contains("-bios /usr/share/qemu/bios-microvm.bin"));
        assert!(a.contains("virtio-iommu-pci"));
        assert!(a.contains("mem-path=/dev/shm/x-0-dev0,size=67108864"), "{a}");
        assert!(a.contains("iommu_platform=on"));
        assert!(a.contains("-m 512M,maxmem=544M"), "{a}");
        assert!(a.contains("virtio-mem-pci,id=hotmem0,memdev=hot0,requested-size=33554432"), "{a}");
        assert!(m.shm_files().contains(&("0-dev0-hot".to_string(), 32 << 20)));
        let m = Machine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/numa2.toml")).unwrap();
        let a = m.qemu_args(&|n| format!("/dev/shm/x-{n}")).join(" ");
        assert!(a.contains("q35,hmat=on"));
        assert!(a.contains("-m 512M"));
        assert!(a.contains("node,nodeid=1,memdev=numa1,cpus=1,initiator=1"));
        assert!(a.contains("data-type=access-bandwidth,bandwidth=5000M"));
    }

    #[test]
    fn coherent_devices_reach_the_kernel_command_line() {
        let m = Machine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/coherent.toml")).unwrap();
        assert_eq!(m.kernel_args(), " devices.coherent=1");
        let m = Machine::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/default.toml")).unwrap();
        assert_eq!(m.kernel_args(), "");
    }

    #[test]
    fn duplicate_device_names_are_rejected_with_their_line() {
        let dev = |name: &str| format!("[[device]]\nname = \"{name}\"\nmemory = \"4M\"\n");
        let text = format!("description = \"x\"\ncpus = 1\nmemory = \"512M\"\n{}{}{}", dev("a"), dev("b"), dev("a"));
        let e = load_str(&text).unwrap_err();
        // The third device's name is on line 11; the first's on line 5.
        assert!(e.contains(".toml:11:8: device[2].name = \"a\""), "{e}");
        assert!(e.contains("device[0] (line 5)"), "{e}");
        assert!(e.contains("unique"), "{e}");
        let ok = format!("description = \"x\"\ncpus = 1\nmemory = \"512M\"\n{}{}", dev("a"), dev("b"));
        assert!(load_str(&ok).is_ok());
    }

    #[test]
    fn every_device_has_its_own_backing_files() {
        // Built directly (validation would refuse the duplicate name): the files must differ
        // per device even so (per launch, tempfile's random names differ: crate::qemu's tests).
        let text = "description = \"x\"\ncpus = 1\nmemory = \"512M\"\n\
                    [[device]]\nname = \"a\"\nmemory = \"4M\"\nhotplug = \"2M\"\n\
                    [[device]]\nname = \"a\"\nmemory = \"4M\"\nhotplug = \"2M\"\n";
        let m: Machine = toml::from_str(text).unwrap();
        let files = m.shm_files();
        assert_eq!(files.len(), 4);
        let mut paths: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), 4, "{files:?}");
        let a = m.qemu_args(&|n| format!("/dev/shm/p-{n}")).join(" ");
        for (p, _) in &files {
            assert_eq!(a.matches(&format!("mem-path=/dev/shm/p-{p},")).count(), 1, "{p} in {a}");
        }
    }

    #[test]
    fn microvm_machines_have_no_pci_and_say_whether_they_have_acpi() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu");
        let m = Machine::load(&dir.join("microvm.toml")).unwrap();
        let a = m.qemu_args(&|n| format!("/dev/shm/x-{n}")).join(" ");
        assert!(a.contains("-machine microvm,acpi=on,pit=on,"), "{a}");
        assert!(a.contains("pcie=off"), "{a}");
        assert!(!a.contains("pci,"), "{a}");
        assert_eq!(a.matches("-device ").count(), 1, "the rng only: {a}");
        assert!(a.contains("-device virtio-rng-device"), "{a}");
        let m = Machine::load(&dir.join("microvm-noacpi.toml")).unwrap();
        let a = m.qemu_args(&|n| format!("/x-{n}")).join(" ");
        assert!(a.contains("-machine microvm,acpi=off,"), "{a}");
        assert!(a.contains("auto-kernel-cmdline=on") && a.contains("-device virtio-rng-device"), "{a}");
        let e = load_str("description = \"x\"\ncpus = 1\nvirtio_rng = true\nmemory = \"512M\"\n").unwrap_err();
        assert!(e.contains("only for machine"), "{e}");
        let base = "description = \"x\"\nmachine = \"microvm\"\nmemory = \"512M\"\n";
        let e = load_str(&format!("{base}cpus = 1\n[[device]]\nname = \"a\"\nmemory = \"4M\"\n")).unwrap_err();
        assert!(e.contains("no PCI"), "{e}");
        let e = load_str(&format!("{base}cpus = 2\nacpi = false\n")).unwrap_err();
        assert!(e.contains("cpus must be 1"), "{e}");
        let e = load_str("description = \"x\"\nmachine = \"pc\"\ncpus = 1\nmemory = \"512M\"\n").unwrap_err();
        assert!(e.contains("\"q35\" or \"microvm\""), "{e}");
        let e = load_str("description = \"x\"\ncpus = 1\nacpi = true\nmemory = \"512M\"\n").unwrap_err();
        assert!(e.contains("only for machine = \"microvm\""), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
    }
}
