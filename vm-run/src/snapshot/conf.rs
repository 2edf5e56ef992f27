//! The CONF section, first in every stream: what the receiver needs
//! before it can build the VM (memory, vCPUs and their CPUID, disks, NICs).

use super::stream::{Dec, Enc, StreamError, Tag};

/// A disk as the guest had it. The path is the sender's: vm-receive opens
/// it only when told to (-D), never on the stream's word alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    pub path: String,
    pub read_only: bool,
    pub serial: Option<String>,
}

/// A NIC as the guest had it: the receiver attaches a tap of its own and
/// keeps the MAC, which the guest's driver read when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicRecord {
    pub mac: [u8; 6],
}

/// The CONF section: what the receiver needs before it can build the VM.
pub struct GuestConfig {
    pub mem_size: u64,
    pub vcpus: u8,
    /// The CPUID the guest was given (before per-vCPU APIC IDs): the guest
    /// keeps it on the new host, which must support all of it.
    pub cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    pub disks: Vec<DiskRecord>,
    pub nics: Vec<NicRecord>,
    /// The guest booted a BIOS (its image follows in ROM), not a kernel.
    pub firmware: bool,
    /// The CD-ROM's image, as the sender named it (version 5).
    pub cdrom: Option<String>,
}

/// Upper bounds for a CONF section's counts: far above what vm-run makes.
/// What KVM_SET_CPUID2 takes at most.
const MAX_CPUID: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// xAPIC IDs are 8 bits and 0xff is the broadcast ID.
const MAX_VCPUS: u8 = 254;
const MAX_DISK_RECORDS: usize = 64;
const MAX_NIC_RECORDS: usize = 64;

impl GuestConfig {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.mem_size).u8(self.vcpus);
        e.u32(self.cpuid.len() as u32);
        for c in &self.cpuid {
            e.u32(c.function)
                .u32(c.index)
                .u32(c.flags)
                .u32(c.eax)
                .u32(c.ebx)
                .u32(c.ecx)
                .u32(c.edx);
        }
        e.u32(self.disks.len() as u32);
        for d in &self.disks {
            e.bytes(d.path.as_bytes())
                .u8(d.read_only.into())
                .bytes(d.serial.as_deref().unwrap_or("").as_bytes());
        }
        e.u32(self.nics.len() as u32);
        for n in &self.nics {
            e.bytes(&n.mac);
        }
        e.u8(self.firmware.into())
            .bytes(self.cdrom.as_deref().unwrap_or("").as_bytes());
        e.0
    }

    pub fn decode(payload: &[u8]) -> Result<GuestConfig, StreamError> {
        let mut d = Dec::new(Tag::Config, payload);
        let mem_size = d.u64()?;
        let vcpus = d.u8()?;
        if vcpus == 0 || vcpus > MAX_VCPUS || mem_size == 0 || mem_size % 4096 != 0 {
            return Err(d.bad(format!("{vcpus} vCPUs, {mem_size} bytes of memory")));
        }
        let n = d.u32()? as usize;
        if n > MAX_CPUID {
            return Err(d.bad(format!(
                "{n} CPUID entries, more than KVM takes ({MAX_CPUID})"
            )));
        }
        let mut cpuid = Vec::with_capacity(n);
        for _ in 0..n {
            cpuid.push(kvm_bindings::kvm_cpuid_entry2 {
                function: d.u32()?,
                index: d.u32()?,
                flags: d.u32()?,
                eax: d.u32()?,
                ebx: d.u32()?,
                ecx: d.u32()?,
                edx: d.u32()?,
                ..Default::default()
            });
        }
        let n = d.u32()? as usize;
        if n > MAX_DISK_RECORDS {
            return Err(d.bad(format!("{n} disks")));
        }
        let text = |d: &mut Dec| -> Result<String, StreamError> {
            let b = d.bytes()?;
            String::from_utf8(b.to_vec()).map_err(|_| d.bad("a disk name is not UTF-8"))
        };
        let mut disks = Vec::with_capacity(n);
        for _ in 0..n {
            let path = text(&mut d)?;
            let read_only = d.u8()? != 0;
            let serial = Some(text(&mut d)?).filter(|s| !s.is_empty());
            disks.push(DiskRecord {
                path,
                read_only,
                serial,
            });
        }
        // Streams before version 3 end here: their guests had no NICs.
        let n = if d.is_empty() { 0 } else { d.u32()? as usize };
        if n > MAX_NIC_RECORDS {
            return Err(d.bad(format!("{n} NICs")));
        }
        let mut nics = Vec::with_capacity(n);
        for _ in 0..n {
            let mac = d
                .bytes()?
                .try_into()
                .map_err(|_| d.bad("a MAC address is not 6 bytes"))?;
            nics.push(NicRecord { mac });
        }
        // Streams before version 5 end here: their guests booted a kernel
        // and had no CD-ROM.
        let (firmware, cdrom) = if d.is_empty() {
            (false, None)
        } else {
            let firmware = d.u8()? != 0;
            let cdrom = text(&mut d)?;
            (firmware, Some(cdrom).filter(|c| !c.is_empty()))
        };
        d.end()?;
        Ok(GuestConfig {
            mem_size,
            vcpus,
            cpuid,
            disks,
            nics,
            firmware,
            cdrom,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nics: Vec<NicRecord>) -> GuestConfig {
        GuestConfig {
            mem_size: 64 << 20,
            vcpus: 2,
            cpuid: Vec::new(),
            disks: vec![DiskRecord {
                path: "/var/vm/web.qcow2".into(),
                read_only: false,
                serial: Some("web0".into()),
            }],
            nics,
            firmware: false,
            cdrom: None,
        }
    }

    #[test]
    fn conf_keeps_the_nics_and_reads_streams_from_before_them() {
        let macs = [[0xfe, 0xe1, 0xba, 0, 0, 1], [0xfe, 0xe1, 0xba, 0, 0, 2]];
        let c = config(macs.iter().map(|&mac| NicRecord { mac }).collect());
        let back = GuestConfig::decode(&c.encode()).expect("decode");
        assert_eq!(back.nics, c.nics);
        assert_eq!(back.disks, c.disks);
        // Version 4 ended after the NICs (no firmware flag, no CD-ROM),
        // version 2 before them.
        let v4 = |c: &GuestConfig| {
            let mut b = c.encode();
            b.truncate(b.len() - 5);
            b
        };
        let old = GuestConfig::decode(&v4(&c)).expect("v4");
        assert_eq!((old.nics, old.firmware, old.cdrom), (c.nics, false, None));
        let mut v2 = v4(&config(Vec::new()));
        v2.truncate(v2.len() - 4);
        assert!(GuestConfig::decode(&v2).expect("v2").nics.is_empty());
        // A MAC of the wrong length, or a NIC count past the end.
        let mut bad = v2.clone();
        bad.extend(1u32.to_le_bytes());
        bad.extend(5u32.to_le_bytes());
        bad.extend([1, 2, 3, 4, 5]);
        assert!(GuestConfig::decode(&bad).is_err());
        let mut bad = v2;
        bad.extend(1000u32.to_le_bytes());
        assert!(GuestConfig::decode(&bad).is_err());
    }

    #[test]
    fn conf_keeps_the_firmware_and_the_cd_rom() {
        let mut c = config(Vec::new());
        c.firmware = true;
        c.cdrom = Some("/var/vm/install.iso".into());
        let back = GuestConfig::decode(&c.encode()).expect("decode");
        assert!(back.firmware);
        assert_eq!(back.cdrom.as_deref(), Some("/var/vm/install.iso"));
    }
}
