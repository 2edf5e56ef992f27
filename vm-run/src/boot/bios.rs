//! Booting through a BIOS (SeaBIOS): the image mapped as a ROM ending at
//! 4 GiB, its last 256 KiB copied below 1 MiB, and the fw_cfg items that
//! tell it the machine (devices/fw_cfg.rs). vCPU 0 starts where KVM's
//! reset state puts it, at the reset vector 16 bytes below 4 GiB; the
//! others wait for the BIOS's INIT-SIPI, as on a PC.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::config::{BootDevice, Config};
use crate::devices::fw_cfg::FwCfg;
use crate::devices::serial;
use crate::error::{Error, Result};
use crate::memory::{self, GuestMemory, BIOS_END, BIOS_IMAGE_MAX, BIOS_LOW_START};

/// Added to "No such file or directory" when the default BIOS is missing.
pub const MISSING: &str =
    "No such file or directory (install Debian's seabios package, or name a BIOS with -b or VM_RUN_BIOS)";
/// Flash parts, and so BIOS images, come in multiples of 64 KiB.
const IMAGE_UNIT: u64 = 64 << 10;
/// How long SeaBIOS waits before it reboots when nothing boots (ms).
const BOOT_FAIL_WAIT_MS: u32 = 5000;
/// The bootorder entry that makes SeaBIOS boot nothing not listed.
const HALT: &str = "HALT";

/// Reads a BIOS image, after checking it could be one: not empty, a
/// whole number of 64 KiB, at most 16 MiB.
pub fn read(path: &Path, f: &mut File, len: u64) -> Result<Vec<u8>> {
    if len == 0 || !len.is_multiple_of(IMAGE_UNIT) || len > BIOS_IMAGE_MAX {
        return Err(Error::Format(
            path.into(),
            format!(
                "not a bzImage or ELF kernel, nor a BIOS image ({len} bytes; a BIOS is a \
                 multiple of 64 KiB up to {} MiB)",
                BIOS_IMAGE_MAX >> 20
            ),
        ));
    }
    let mut image = Vec::with_capacity(len as usize);
    f.seek(SeekFrom::Start(0))
        .map_err(|e| Error::Open(path.into(), e))?;
    f.take(len)
        .read_to_end(&mut image)
        .map_err(|e| Error::Open(path.into(), e))?;
    if image.len() as u64 != len {
        return Err(Error::Format(path.into(), "shorter than its size".into()));
    }
    Ok(image)
}

/// Where the disks and the CD-ROM are on the PCI bus, for the boot order.
pub struct BootSlots {
    /// The disks' slots in command-line order.
    pub disks: Vec<usize>,
    /// The CD-ROM's slot (virtio-scsi, LUN 0), if there is one.
    pub cdrom: Option<usize>,
}

/// Maps the BIOS as a ROM ending at 4 GiB; with `low_copy`, also puts its
/// last 256 KiB below 1 MiB as RAM, where it runs (a received guest has
/// that copy, as it left it, in its memory).
pub fn map(vm: &VmFd, mem: &'static GuestMemory, image: &[u8], low_copy: bool) -> Result<()> {
    // The KVM slot past the RAM's (memory::register numbers them from 0).
    memory::map_firmware(vm, mem.num_regions() as u32, image)?;
    if !low_copy {
        return Ok(());
    }
    // The window below 1 MiB holds the image's last 256 KiB (or all of
    // a smaller one), ending at 1 MiB (memory::BIOS_LOW_START).
    let low = image.len().min((BIOS_END - BIOS_LOW_START) as usize);
    mem.write_slice(
        &image[image.len() - low..],
        GuestAddress(BIOS_END - low as u64),
    )
    .map_err(|e| Error::Setup(format!("BIOS low copy: {e}")))
}

/// The fw_cfg device that describes this guest to the BIOS (the board
/// adds its ACPI tables).
pub fn fw_cfg(cfg: &Config, mem: &'static GuestMemory, boot: &BootSlots) -> Result<FwCfg> {
    let order = bootorder(cfg.firmware.boot_device, boot)?;
    let mut fw = FwCfg::new(cfg.vcpus, memory::size(mem), Some(mem));
    fw.add_file("etc/e820", e820(cfg.mem_size));
    fw.add_file("bootorder", order.into_bytes());
    // The BIOS's screen and keyboard are COM1, vm-run's console.
    fw.add_file("etc/sercon-port", serial::COM1_BASE.to_le_bytes().to_vec());
    fw.add_file("etc/show-boot-menu", 0u16.to_le_bytes().to_vec());
    fw.add_file(
        "etc/boot-fail-wait",
        BOOT_FAIL_WAIT_MS.to_le_bytes().to_vec(),
    );
    Ok(fw)
}

/// The memory map a directly booted kernel gets (memory::e820_map), in
/// QEMU's `etc/e820` entries: address, length (u64), type (u32).
fn e820(mem_size: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for (start, len, kind) in memory::e820_map(mem_size) {
        v.extend_from_slice(&start.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
    }
    v
}

/// SeaBIOS's device path of the function in `slot` of the root bus
/// (boot.c, build_pci_path).
pub fn pci_path(slot: usize) -> String {
    format!("/pci@i0cf8/*@{slot:x}")
}

/// SeaBIOS's device path of LUN 0, target 0 of a virtio-scsi controller
/// in `slot` (boot.c, build_scsi_path): the CD-ROM's.
pub fn cdrom_path(slot: usize) -> String {
    format!("{}/*@0/*@0,0", pci_path(slot))
}

/// The `bootorder` file: with -B, that device only (vmd's way: a boot
/// that fails does not fall through to another); without, every disk in
/// order and then the CD-ROM, as a PC's.
fn bootorder(device: Option<BootDevice>, boot: &BootSlots) -> Result<String> {
    let lines: Vec<String> = match device {
        None => boot
            .disks
            .iter()
            .map(|s| pci_path(*s))
            .chain(boot.cdrom.map(cdrom_path))
            .collect(),
        Some(BootDevice::Disk) => {
            let first = boot
                .disks
                .first()
                .ok_or_else(|| Error::Usage("-B disk: no disk (-d)".into()))?;
            vec![pci_path(*first), HALT.into()]
        }
        Some(BootDevice::Cdrom) => {
            let slot = boot
                .cdrom
                .ok_or_else(|| Error::Usage("-B cdrom: no CD-ROM".into()))?;
            vec![cdrom_path(slot), HALT.into()]
        }
    };
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_order_paths() {
        let b = BootSlots {
            disks: vec![1, 2],
            cdrom: Some(12),
        };
        assert_eq!(
            bootorder(None, &b).unwrap(),
            "/pci@i0cf8/*@1\n/pci@i0cf8/*@2\n/pci@i0cf8/*@c/*@0/*@0,0"
        );
        assert_eq!(
            bootorder(Some(BootDevice::Disk), &b).unwrap(),
            "/pci@i0cf8/*@1\nHALT"
        );
        assert_eq!(
            bootorder(Some(BootDevice::Cdrom), &b).unwrap(),
            "/pci@i0cf8/*@c/*@0/*@0,0\nHALT"
        );
        let none = BootSlots {
            disks: vec![],
            cdrom: None,
        };
        assert_eq!(bootorder(None, &none).unwrap(), "");
        for d in [BootDevice::Disk, BootDevice::Cdrom] {
            let e = bootorder(Some(d), &none).unwrap_err();
            assert_eq!(e.exit_status(), 64, "{e}");
        }
    }

    #[test]
    fn e820_entries_are_20_bytes_and_match_the_kernels_map() {
        let v = e820(64 << 20);
        let map = memory::e820_map(64 << 20);
        assert_eq!(v.len(), 20 * map.len());
        for (e, (start, len, kind)) in v.chunks(20).zip(map) {
            assert_eq!(e[..8], start.to_le_bytes());
            assert_eq!(e[8..16], len.to_le_bytes());
            assert_eq!(e[16..], kind.to_le_bytes());
        }
        // vmgenid's page stays reserved for the OS the BIOS boots.
        assert!(v
            .chunks(20)
            .any(|e| e[..8] == memory::VMGENID_ADDR.to_le_bytes() && e[16] == 2));
    }

    #[test]
    fn implausible_images_are_refused() {
        let dir = std::env::temp_dir().join(format!("vm-run-bios-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, len) in [("empty", 0usize), ("short", 100), ("odd", 96 << 10)] {
            let p = dir.join(name);
            std::fs::write(&p, vec![0u8; len]).unwrap();
            let mut f = File::open(&p).unwrap();
            let e = read(&p, &mut f, len as u64).unwrap_err();
            assert_eq!(e.exit_status(), 65, "{e}");
            assert!(e.to_string().contains(name), "{e}");
        }
        // Over 16 MiB (sparse: nothing is read before the size check).
        let p = dir.join("huge");
        File::create(&p).unwrap().set_len(17 << 20).unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(read(&p, &mut f, 17 << 20).unwrap_err().exit_status(), 65);
        let p = dir.join("ok");
        std::fs::write(&p, vec![0x90u8; 128 << 10]).unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(read(&p, &mut f, 128 << 10).unwrap().len(), 128 << 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
