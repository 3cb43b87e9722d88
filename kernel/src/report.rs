//! The boot report: a summary in the log, and the same facts as one `@@BOOT {json}` line that
//! the xtask reads (and prints as a table).

use crate::{json::Json, mm, system::System};

/// Prints the report.
pub fn print(s: &System) {
    let mut j = Json::new();
    j.object(|j| {
        j.num("ready_ns", s.ready_ns);
        j.num("tsc_hz", s.tsc_hz);
        j.str("tsc_source", s.tsc_source.name());
        j.bool("has_acpi", s.boot.rsdp.is_some());
        j.bool("has_pci", s.pci.ecam_base != 0);
        j.str("loader", s.boot.loader.name());
        j.str("cmdline", s.boot.cmdline());
        j.obj("cpu", |j| {
            let mut buf = [0u8; 48];
            j.str("brand", crate::platform::arch::cpu::brand(&mut buf));
            j.bool("nx", s.cpu.nx);
            j.bool("x2apic", s.cpu.x2apic);
            j.bool("huge_1g", s.cpu.huge_1g);
            j.num("phys_bits", s.cpu.phys_bits);
            j.str(
                "apic_mode",
                match s.apic.0 {
                    crate::platform::arch::apic::Mode::X2Apic => "x2apic",
                    crate::platform::arch::apic::Mode::XApic(_) => "xapic",
                },
            );
            j.num("apic_timer_hz", s.apic.1);
        });
        j.arr("memory_map", |j| {
            for r in s.boot.memory_map.iter() {
                j.item(|j| {
                    j.num("start", r.start);
                    j.num("end", r.end);
                    j.str("kind", r.kind.name());
                });
            }
        });
        j.obj("memory", |j| {
            j.num("ram_bytes", s.boot.total_ram());
            j.num("frames_total", mm::frame::total_frames());
            j.num("frames_free", mm::frame::free_frames());
            let (heap_total, heap_used) = mm::heap::stats();
            j.num("heap_bytes", heap_total);
            j.num("heap_used", heap_used);
        });
        j.arr("modules", |j| {
            for m in s.boot.modules.iter() {
                j.item(|j| {
                    j.num("paddr", m.paddr);
                    j.num("size", m.size);
                });
            }
        });
        j.arr("cpus", |j| {
            for c in &s.platform.cpus {
                j.item(|j| {
                    j.num("apic_id", c.apic_id);
                    j.bool("enabled", c.enabled);
                    j.bool("online", s.smp.online.contains(&c.apic_id));
                });
            }
        });
        j.arr("acpi_tables", |j| {
            for t in &s.platform.tables {
                j.item(|j| {
                    j.str("signature", t.name());
                    j.num("paddr", t.paddr);
                    j.num("length", t.length);
                });
            }
        });
        if let Some(srat) = &s.platform.srat {
            j.obj("srat", |j| {
                j.arr("cpus", |j| {
                    for c in &srat.cpus {
                        j.item(|j| {
                            j.num("apic_id", c.apic_id);
                            j.num("node", c.domain);
                        });
                    }
                });
                j.arr("memory", |j| {
                    for m in &srat.memory {
                        j.item(|j| {
                            j.num("node", m.domain);
                            j.num("base", m.base);
                            j.num("length", m.length);
                            j.bool("hotpluggable", m.hotpluggable);
                        });
                    }
                });
            });
        }
        if let Some(hmat) = &s.platform.hmat {
            j.arr("hmat", |j| {
                for l in &hmat.localities {
                    j.item(|j| {
                        j.num("initiator", l.initiator);
                        j.num("target", l.target);
                        j.str(
                            "type",
                            match l.data_type {
                                drivers::acpi::hmat::DataType::AccessLatency => "access_latency_ps",
                                drivers::acpi::hmat::DataType::ReadLatency => "read_latency_ps",
                                drivers::acpi::hmat::DataType::WriteLatency => "write_latency_ps",
                                drivers::acpi::hmat::DataType::AccessBandwidth => "access_bandwidth_mbps",
                                drivers::acpi::hmat::DataType::ReadBandwidth => "read_bandwidth_mbps",
                                drivers::acpi::hmat::DataType::WriteBandwidth => "write_bandwidth_mbps",
                            },
                        );
                        j.num("value", l.value);
                    });
                }
            });
        }
        if let Some(viot) = &s.platform.viot {
            j.obj("viot", |j| {
                j.num("iommus", viot.iommus.len());
                j.num("pci_ranges", viot.pci_ranges.len());
            });
        }
        {
            j.arr("devices", |j| {
                for dev in crate::devices::all() {
                    j.item(|j| {
                        j.str("name", &dev.name);
                        j.num("memory_bytes", dev.vram.bytes);
                        j.num("memory_paddr", dev.vram.at.as_u64());
                        let (seg_max, translated) = dev
                            .with_engine(crate::devices::Region::Bar, |e| (e.seg_max, e.translated))
                            .unwrap_or_default();
                        j.num("copy_seg_max", seg_max);
                        if let Some((pa, bytes)) = dev.hot_region() {
                            j.num("hotplug_bytes", bytes);
                            j.num("hotplug_paddr", pa);
                        }
                        j.bool("dma_translated", translated);
                        if let Some((ep, dom)) = dev.mmu() {
                            j.num("iommu_endpoint", ep);
                            j.num("domain", dom);
                        }
                    });
                }
            });
        }
        j.arr("virtio_mmio", |j| {
            for p in &s.virtio_mmio {
                j.item(|j| {
                    j.num("base", p.at.base);
                    j.num("size", p.at.size);
                    j.num("irq", p.at.irq);
                    j.str("from", p.from.name());
                    match p.found {
                        Ok(ids) => {
                            j.num("device_id", ids.device_id);
                            j.num("version", ids.version);
                            j.num("vendor", ids.vendor);
                        }
                        Err(e) => j.str("error", &alloc::format!("{e}")),
                    }
                });
            }
        });
        j.num("ecam_base", s.pci.ecam_base);
        j.arr("pci", |j| {
            for (i, f) in s.pci.functions.iter().enumerate() {
                j.item(|j| {
                    j.str("bdf", &alloc::format!("{}", f.df));
                    j.str("id", &alloc::format!("{:04x}:{:04x}", f.info.vendor_id, f.info.device_id));
                    j.str("name", f.name());
                    j.str("class", &alloc::format!("{:02x}.{:02x}", f.info.class, f.info.subclass));
                    j.arr("bars", |j| {
                        for b in &f.bars {
                            j.item(|j| {
                                j.num("index", b.index);
                                j.str(
                                    "kind",
                                    match b.kind {
                                        drivers::pci::BarKind::Mem32 => "mem32",
                                        drivers::pci::BarKind::Mem64 => "mem64",
                                        drivers::pci::BarKind::Io => "io",
                                    },
                                );
                                j.num("address", b.address);
                                j.num("size", b.size);
                            });
                        }
                    });
                    if let Some(v) = s.pci.virtio.iter().find(|v| v.function == i) {
                        j.obj("virtio", |j| {
                            j.num("features", v.features);
                            j.bool("bound", v.bound.is_ok());
                            if let Err(e) = &v.bound {
                                j.str("error", &alloc::format!("{e}"));
                            }
                        });
                    }
                    if let Some((ep, _)) = s.platform.viot.as_ref().and_then(|v| v.endpoint_for(0, f.bdf())) {
                        j.num("iommu_endpoint", ep);
                    }
                });
            }
        });
    });
    log::info!(
        "ready in {}.{:03} ms: {} MiB RAM, {} CPUs ({} online), {} ACPI tables, {}{} PCI functions ({} virtio)",
        s.ready_ns / 1_000_000,
        (s.ready_ns / 1000) % 1000,
        s.boot.total_ram() >> 20,
        s.platform.cpus.len(),
        s.smp.online.len(),
        s.platform.tables.len(),
        if s.pci.ecam_base == 0 { "no PCI, " } else { "" },
        s.pci.functions.len(),
        s.pci.virtio.len()
    );
    crate::sprintln!("{}", boot::protocol::Tag::Boot.line(j.finish()));
}
