//! A QMP client: the part of QEMU's machine protocol that carries out a guest's `@@HOST`
//! requests ([`HostRequest`]) while it runs: the virtio-mem `requested-size` of a device's
//! hot-plug region, set with `qom-set` on the `virtio-mem-pci` device
//! ([`crate::machine::hotmem_id`]).
//!
//! Owns the connection to one QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`, in a
//! private directory of the run): the greeting, capability negotiation, and one command at a
//! time, each answer awaited for at most [`TIMEOUT`] (events in between are skipped).

use crate::Result;
use crate::machine::Machine;
use boot::protocol::HostRequest;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bound on connecting and on each answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to QEMU's QMP monitor, capabilities negotiated.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects to the socket at `path` (retrying while QEMU starts, up to [`TIMEOUT`]),
    /// reads the greeting and leaves capability-negotiation mode.
    pub fn connect(path: &Path) -> Result<Qmp> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= TIMEOUT => {
                    return Err(format!("QMP: connecting to {}: {e}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| format!("QMP: {e}"))?;
        let writer = stream.try_clone().map_err(|e| format!("QMP: {e}"))?;
        let mut q = Qmp { reader: BufReader::new(stream), writer };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP: the socket's first message is not QEMU's greeting: {greeting}"));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP: QEMU closed the connection".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("QMP: not JSON ({e}): {}", line.trim_end())),
            Err(e) => Err(format!("QMP: no answer within {} s: {e}", TIMEOUT.as_secs())),
        }
    }

    /// Runs `command` with `arguments`; its `return` value, or its error as QEMU words it.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP: sending {command}: {e}"))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e["desc"].as_str().unwrap_or("(no description)");
                return Err(format!("QMP {command}: {desc}"));
            }
            // An event ({"event": ...}): not the answer.
        }
    }

    /// Sets a QOM property of the object at `path`.
    pub fn qom_set(&mut self, path: &str, property: &str, value: Value) -> Result<()> {
        self.execute("qom-set", json!({ "path": path, "property": property, "value": value })).map(|_| ())
    }
}

/// Parses a `@@HOST` payload.
pub fn parse_request(payload: &str) -> Result<HostRequest> {
    let v: Value =
        serde_json::from_str(payload).map_err(|e| format!("a @@HOST request that is not JSON ({e}): {payload}"))?;
    if let Some(r) = v.get("resize") {
        let device = r["device"].as_u64().ok_or_else(|| format!("@@HOST resize without a device: {payload}"))?;
        let bytes = r["bytes"].as_u64().ok_or_else(|| format!("@@HOST resize without bytes: {payload}"))?;
        return Ok(HostRequest::Resize { device: device as usize, bytes });
    }
    Err(format!("an unknown @@HOST request: {payload}"))
}

/// Checks `req` against `machine` (the device exists and has a hot-plug region of at least
/// that size, in 2 MiB blocks); the QOM path and property to set, and the value.
pub fn resolve(machine: &Machine, req: HostRequest) -> Result<(String, &'static str, u64)> {
    let HostRequest::Resize { device, bytes } = req;
    let d = machine
        .devices
        .get(device)
        .ok_or_else(|| format!("@@HOST resize of dev{device}: the machine has {} devices", machine.devices.len()))?;
    let hot = d.hotplug_bytes();
    if hot == 0 {
        return Err(format!("@@HOST resize of dev{device}: it has no hot-plug region (device[{device}].hotplug)"));
    }
    if bytes > hot || !bytes.is_multiple_of(2 << 20) {
        return Err(format!(
            "@@HOST resize of dev{device} to {bytes} bytes: must be whole 2 MiB blocks, at most its {} MiB region",
            hot >> 20
        ));
    }
    Ok((format!("/machine/peripheral/{}", crate::machine::hotmem_id(device)), "requested-size", bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_requests_read_back_as_the_guest_wrote_them() {
        let r = HostRequest::Resize { device: 1, bytes: 16 << 20 };
        assert_eq!(parse_request(&r.to_string()).unwrap(), r);
        assert!(parse_request("{\"resize\":{\"device\":0}}").unwrap_err().contains("without bytes"));
        assert!(parse_request("{\"reboot\":{}}").unwrap_err().contains("unknown"));
        assert!(parse_request("not json").unwrap_err().contains("not JSON"));
    }

    /// A stand-in QMP server on a socket in a fresh directory: it greets, answers each command
    /// with `answer(command)` (after an event, which the client must skip), and records what it
    /// was sent.
    fn server(answer: fn(&Value) -> Value) -> (tempfile::TempDir, std::thread::JoinHandle<Vec<Value>>) {
        use std::os::unix::net::UnixListener;
        let dir = tempfile::Builder::new().prefix("qmp-test-").tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("qmp")).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            writeln!(w, "{}", json!({ "QMP": { "version": {}, "capabilities": [] } })).unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(s).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap();
                writeln!(w, "{}", json!({ "event": "SOMETHING", "data": {} })).unwrap();
                writeln!(w, "{}", answer(&v)).unwrap();
                seen.push(v);
            }
            seen
        });
        (dir, t)
    }

    #[test]
    fn qom_set_is_sent_after_the_capabilities_and_events_are_skipped() {
        let (dir, t) = server(|_| json!({ "return": {} }));
        let mut q = Qmp::connect(&dir.path().join("qmp")).unwrap();
        q.qom_set("/machine/peripheral/hotmem0", "requested-size", json!(16u64 << 20)).unwrap();
        drop(q);
        let seen = t.join().unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[1]["execute"], "qom-set");
        assert_eq!(seen[1]["arguments"]["path"], "/machine/peripheral/hotmem0");
        assert_eq!(seen[1]["arguments"]["property"], "requested-size");
        assert_eq!(seen[1]["arguments"]["value"], 16u64 << 20);
    }

    #[test]
    fn a_refused_command_is_an_error_in_qemus_words() {
        let (dir, t) = server(|v| {
            if v["execute"] == "qom-set" {
                json!({ "error": { "class": "GenericError", "desc": "'requested-size' must be a multiple of 2 MiB" } })
            } else {
                json!({ "return": {} })
            }
        });
        let mut q = Qmp::connect(&dir.path().join("qmp")).unwrap();
        let e = q.qom_set("/machine/peripheral/hotmem0", "requested-size", json!(4096)).unwrap_err();
        assert!(e.contains("QMP qom-set: 'requested-size' must be a multiple of 2 MiB"), "{e}");
        drop(q);
        t.join().unwrap();
    }

    #[test]
    fn resize_requests_are_checked_against_the_machine() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let m = Machine::load(&root.join("qemu/default.toml")).unwrap();
        let ok = resolve(&m, HostRequest::Resize { device: 0, bytes: 16 << 20 }).unwrap();
        assert_eq!(ok, ("/machine/peripheral/hotmem0".to_string(), "requested-size", 16 << 20));
        let e = resolve(&m, HostRequest::Resize { device: 0, bytes: (16 << 20) + 4096 }).unwrap_err();
        assert!(e.contains("whole 2 MiB blocks"), "{e}");
        let e = resolve(&m, HostRequest::Resize { device: 0, bytes: 1 << 30 }).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        let e = resolve(&m, HostRequest::Resize { device: 9, bytes: 0 }).unwrap_err();
        assert!(e.contains("the machine has"), "{e}");
    }
}
