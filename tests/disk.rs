//! Disks and the RNG on the PCI bus, as a stock Linux guest drives them
//! (Debian's virtio_pci, virtio_blk and virtio-rng modules), checked from
//! both sides: what the guest sees and what lands in the image files.
//! One boot of the emulated test host runs every scenario.

use std::sync::OnceLock;

use vm_tests::testhost::{self, guest, Case, Report, Scenario};

/// Sector 5 of b.img, written by the host before the guest starts.
const HOST_PATTERN: &str = "HOST-PATTERN-5";
/// Sector 9 of c.img, written by the guest.
const GUEST_PATTERN: &str = "GUEST-PATTERN-9";

fn scenarios() -> Vec<Scenario> {
    let disks = guest(
        "-m 256M -d /tmp/a.img -d /tmp/b.img,ro -d /tmp/c.img,serial=vm-run-c",
        "bzImage",
        &format!(
            "run=\"ls /dev/vda /dev/vdb /dev/vdc; \
             echo SERIAL-A=$(cat /sys/block/vda/serial) SERIAL-C=$(cat /sys/block/vdc/serial); \
             echo RO=$(cat /sys/block/vda/ro)$(cat /sys/block/vdb/ro)$(cat /sys/block/vdc/ro); \
             echo SIZE=$(cat /sys/block/vda/size); \
             for d in /sys/bus/pci/devices/*; do echo PCI ${{d##*/}} $(cat $d/vendor $d/device $d/class); done; \
             mke2fs -q /dev/vda && echo MKFS-OK; \
             echo {GUEST_PATTERN} | dd of=/dev/vdc bs=512 seek=9 conv=sync,fsync 2>/dev/null && echo WROTE-C; \
             echo READ-B=$(dd if=/dev/vdb bs=512 skip=5 count=1 2>/dev/null | head -c 14); \
             dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null || echo RO-REFUSED; \
             echo RNG=$(cat /sys/class/misc/hw_random/rng_current) \
             $(head -c 32 /dev/hwrng | od -An -tx1 | tr -d [:space:]); \
             sync\""
        ),
    );
    vec![
        Scenario {
            name: "disks",
            script: format!(
                "dd if=/dev/zero of=/tmp/a.img bs=1M count=64 2>/dev/null\n\
                 dd if=/dev/zero of=/tmp/b.img bs=1M count=16 2>/dev/null\n\
                 printf {HOST_PATTERN} | dd of=/tmp/b.img bs=512 seek=5 conv=notrunc 2>/dev/null\n\
                 dd if=/dev/zero of=/tmp/c.img bs=1M count=16 2>/dev/null\n\
                 B=$(sha256sum < /tmp/b.img)\n\
                 {disks}\nrc=$?\n\
                 echo HOST-C=$(dd if=/tmp/c.img bs=512 skip=9 count=1 2>/dev/null | head -c 15)\n\
                 echo HOST-A-MAGIC=$(od -An -tx1 -j1080 -N2 /tmp/a.img | tr -d ' ')\n\
                 [ \"$B\" = \"$(sha256sum < /tmp/b.img)\" ] && echo HOST-B-UNCHANGED\n\
                 exit $rc"
            ),
        },
        Scenario {
            // Legacy INTx instead of MSI-X: level-triggered, through the
            // _PRT's IOAPIC pins, acknowledged by reading the ISR.
            name: "intx",
            script: format!(
                "dd if=/dev/zero of=/tmp/i.img bs=1M count=16 2>/dev/null\n{}",
                guest(
                    "-m 256M -d /tmp/i.img",
                    "bzImage",
                    "pci=nomsi run=\"dd if=/dev/vda of=/dev/null bs=64k 2>&1 | tail -n1; \
                     head -c 16 /dev/hwrng | wc -c; grep virtio /proc/interrupts\"",
                )
            ),
        },
        Scenario {
            // Discard punches holes: the host file gives its space back.
            name: "discard",
            script: format!(
                "dd if=/dev/urandom of=/tmp/d.img bs=1M count=16 2>/dev/null\n\
                 echo HOST-BEFORE=$(du -k /tmp/d.img | cut -f1)\n{}\nrc=$?\n\
                 echo HOST-AFTER=$(du -k /tmp/d.img | cut -f1) SIZE=$(stat -c %s /tmp/d.img)\n\
                 exit $rc",
                guest(
                    "-m 256M -d /tmp/d.img",
                    "bzImage",
                    "run=\"blkdiscard /dev/vda && echo DISCARDED; \
                     echo VDA-SUM=$(head -c 16777216 /dev/vda | sha256sum); \
                     echo ZERO-SUM=$(head -c 16777216 /dev/zero | sha256sum)\"",
                )
            ),
        },
        Scenario {
            // A block device instead of a file: the size comes from the
            // device, the lock and the data go to it.
            name: "blockdev",
            script: format!(
                "dd if=/dev/zero of=/tmp/l.img bs=1M count=32 2>/dev/null\n\
                 L=$(losetup -f) && losetup $L /tmp/l.img && echo LOOP=$L\n{}\nrc=$?\n\
                 losetup -d $L\n\
                 echo HOST-L=$(dd if=/tmp/l.img bs=512 skip=7 count=1 2>/dev/null | head -c 15)\n\
                 exit $rc",
                guest(
                    "-m 256M -d $L,serial=loopdisk",
                    "bzImage",
                    &format!(
                        "run=\"echo SIZE=$(cat /sys/block/vda/size) SERIAL=$(cat /sys/block/vda/serial); \
                         echo {GUEST_PATTERN} | dd of=/dev/vda bs=512 seek=7 conv=sync,fsync 2>/dev/null \
                         && echo WROTE\""
                    ),
                )
            ),
        },
    ]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("disk", &scenarios(), false))
        .case(name)
}

fn assert_has(c: &Case, want: &str) {
    assert!(c.output.contains(want), "no {want:?} in:\n{}", c.output);
}

#[test]
fn guest_sees_disks_in_order_with_serials_and_read_only_flags() {
    let c = case("disks");
    assert_has(c, "/dev/vda");
    assert_has(c, "SERIAL-A=a.img SERIAL-C=vm-run-c");
    assert_has(c, "RO=010");
    assert_has(c, "SIZE=131072");
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn pci_bus_lists_host_bridge_and_virtio_devices() {
    let c = case("disks");
    // sysfs is what lspci reads: vendor, device, class per function.
    assert_has(c, "PCI 0000:00:00.0 0x1b36 0x0008 0x060000");
    for slot in 1..=3 {
        assert_has(c, &format!("PCI 0000:00:0{slot}.0 0x1af4 0x1042 0x010000"));
    }
    assert_has(c, "PCI 0000:00:04.0 0x1af4 0x1044 0xff0000");
}

#[test]
fn guest_writes_land_in_the_image_file() {
    let c = case("disks");
    assert_has(c, "MKFS-OK");
    assert_has(c, "WROTE-C");
    assert_has(c, &format!("HOST-C={GUEST_PATTERN}"));
    // The ext2 superblock's magic, 0xEF53, little-endian at 1080.
    assert_has(c, "HOST-A-MAGIC=53ef");
}

#[test]
fn read_only_disk_reads_but_refuses_writes() {
    let c = case("disks");
    assert_has(c, &format!("READ-B={HOST_PATTERN}"));
    assert_has(c, "RO-REFUSED");
    assert_has(c, "HOST-B-UNCHANGED");
}

#[test]
fn hwrng_gives_random_bytes() {
    let c = case("disks");
    let line = c
        .output
        .lines()
        .find_map(|l| l.strip_prefix("RNG="))
        .unwrap_or_else(|| panic!("no RNG line:\n{}", c.output));
    let (name, hex) = line.split_once(' ').unwrap_or((line, ""));
    assert!(name.starts_with("virtio_rng"), "{line}");
    assert_eq!(hex.len(), 64, "{line}");
    assert_ne!(hex, "0".repeat(64));
}

#[test]
fn intx_works_without_msi() {
    let c = case("intx");
    assert_has(c, "256+0 records out");
    assert_has(c, "\n16\n");
    assert!(
        c.output
            .lines()
            .any(|l| l.contains("IO-APIC") && l.contains("fasteoi") && l.contains("virtio")),
        "virtio not on a level-triggered IOAPIC pin:\n{}",
        c.output
    );
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn discard_punches_holes_in_the_image() {
    let c = case("discard");
    assert_has(c, "DISCARDED");
    let sum = |key: &str| c.output.lines().find_map(|l| l.strip_prefix(key));
    assert!(sum("VDA-SUM=").is_some(), "{}", c.output);
    assert_eq!(
        sum("VDA-SUM="),
        sum("ZERO-SUM="),
        "discarded disk does not read as zeroes"
    );
    let kib = |key: &str| -> u64 {
        c.output
            .lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key}:\n{}", c.output))
    };
    assert!(kib("HOST-BEFORE=") >= 16 * 1024);
    assert!(kib("HOST-AFTER=") < 1024, "{}", c.output);
    assert_has(c, "SIZE=16777216");
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn block_device_as_disk() {
    let c = case("blockdev");
    assert_has(c, "LOOP=/dev/loop");
    assert_has(c, "SIZE=65536 SERIAL=loopdisk");
    assert_has(c, "WROTE");
    assert_has(c, &format!("HOST-L={GUEST_PATTERN}"));
    assert_eq!(c.status, 0, "{}", c.output);
}
