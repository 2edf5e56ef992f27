//! Disks and the RNG on the PCI bus, as a stock Linux guest drives them
//! (Debian's virtio_pci, virtio_blk and virtio-rng modules), checked from
//! both sides: what the guest sees and what lands in the image files
//! (qcow2 images with the real qemu-img, packed into the test host with
//! QEMU). One boot of the emulated test host runs every scenario.

use std::sync::OnceLock;

use vm_tests::testhost::{self, await_in, await_more, guest, Case, Report, Scenario};

/// Sector 5 of b.img, written by the host before the guest starts.
const HOST_PATTERN: &str = "HOST-PATTERN-5";
/// Sector 9 of c.img, written by the guest.
const GUEST_PATTERN: &str = "GUEST-PATTERN-9";

/// What the multiqueue guest writes from each CPU: 4 MiB of `yes CPUn`,
/// from CPU 0 at the start of each disk, from CPU 1 4 MiB in, both at
/// once; then each half read back from the other CPU. The host makes the
/// same bytes and compares digests.
const MQ_RUN: &str = "run=\"echo QUEUES=$(ls /sys/block/vda/mq | wc -l),\
    $(ls /sys/block/vdb/mq | wc -l),$(ls /sys/block/vdc/mq | wc -l); \
    yes CPU0 | head -c 4194304 > /tmp/p0; yes CPU1 | head -c 4194304 > /tmp/p1; \
    for v in vda vdb; do \
    taskset -c 0 dd if=/tmp/p0 of=/dev/$v bs=64k oflag=direct 2>/dev/null & \
    taskset -c 1 dd if=/tmp/p1 of=/dev/$v bs=64k seek=64 oflag=direct 2>/dev/null & \
    done; wait; \
    for v in vda vdb; do echo READ-$v=\
    $(taskset -c 1 dd if=/dev/$v bs=64k count=64 iflag=direct 2>/dev/null | sha256sum | cut -c1-16),\
    $(taskset -c 0 dd if=/dev/$v bs=64k skip=64 count=64 iflag=direct 2>/dev/null | sha256sum | cut -c1-16); \
    done; grep -- -req /proc/interrupts\"";

/// Writes a sector from one CPU and reads it back past the page cache
/// from the other, alternating, until stopped; a line ends with END.
const MQ_COUNTER: &str = "run=\"i=0; while :; do i=$((i+1)); w=MQ$i; \
    echo $w | taskset -c $((i%2)) dd of=/dev/vda bs=512 seek=$i conv=sync,fsync oflag=direct 2>/dev/null; \
    r=$(taskset -c $(((i+1)%2)) dd if=/dev/vda bs=512 skip=$i count=1 iflag=direct 2>/dev/null \
    | head -c ${#w}); [ $r = $w ] && s=OK || s=BAD; echo MQ $i $s END; sleep 0.3; done\"";

/// Queue depth from both CPUs: 64 writers at once, 32 on each CPU (so
/// up to 32 requests in flight on each queue), each writing its own
/// 128 KiB of `yes Dn` in 4 KiB direct writes; then 64 readers, each on
/// the other CPU, read the regions back the same way. The host makes the
/// same bytes and compares digests.
const DEEP_RUN: &str =
    "run=\"for i in $(seq 10 73); do yes D$i | head -c 131072 > /tmp/w$i; done; \
    for v in vda vdb; do \
    for i in $(seq 10 73); do taskset -c $((i%2)) dd if=/tmp/w$i of=/dev/$v bs=4k \
    seek=$(((i-10)*32)) oflag=direct 2>/dev/null & done; wait; \
    for i in $(seq 10 73); do taskset -c $(((i+1)%2)) dd if=/dev/$v of=/tmp/r$i bs=4k \
    skip=$(((i-10)*32)) count=32 iflag=direct 2>/dev/null & done; wait; \
    echo DEEP-$v=$(cat /tmp/r[1-7][0-9] | sha256sum | cut -c1-16); rm -f /tmp/r*; done\"";

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
            // Two vCPUs: a queue each, served at once, on a raw image
            // and on a qcow2 one; queues=1 gives one.
            name: "multiqueue",
            script: format!(
                "dd if=/dev/zero of=/tmp/m.img bs=1M count=16 2>/dev/null\n\
                 qemu-img create -q -f qcow2 /tmp/m.qcow2 16M\n\
                 dd if=/dev/zero of=/tmp/one.img bs=1M count=1 2>/dev/null\n{}\nrc=$?\n\
                 echo WANT=$(yes CPU0 | head -c 4194304 | sha256sum | cut -c1-16),\
                 $(yes CPU1 | head -c 4194304 | sha256sum | cut -c1-16)\n\
                 echo HOST-RAW=$(dd if=/tmp/m.img bs=64k count=64 2>/dev/null | sha256sum | cut -c1-16),\
                 $(dd if=/tmp/m.img bs=64k skip=64 count=64 2>/dev/null | sha256sum | cut -c1-16)\n\
                 qemu-img convert -O raw /tmp/m.qcow2 /tmp/mq.raw\n\
                 echo HOST-QCOW2=$(dd if=/tmp/mq.raw bs=64k count=64 2>/dev/null | sha256sum | cut -c1-16),\
                 $(dd if=/tmp/mq.raw bs=64k skip=64 count=64 2>/dev/null | sha256sum | cut -c1-16)\n\
                 qemu-img check /tmp/m.qcow2; echo CHECK=$?\n\
                 exit $rc",
                guest(
                    "-c 2 -m 256M -d /tmp/m.img -d /tmp/m.qcow2 -d /tmp/one.img,queues=1",
                    "bzImage",
                    MQ_RUN,
                )
            ),
        },
        Scenario {
            // Many requests in flight on each queue at once, from both
            // CPUs, on raw and qcow2.
            name: "deep",
            script: format!(
                "dd if=/dev/zero of=/tmp/q.img bs=1M count=16 2>/dev/null\n\
                 qemu-img create -q -f qcow2 /tmp/q.qcow2 16M\n{}\nrc=$?\n\
                 echo WANT=$(for i in $(seq 10 73); do yes D$i | head -c 131072; done \
                 | sha256sum | cut -c1-16)\n\
                 echo HOST-RAW=$(dd if=/tmp/q.img bs=128k count=64 2>/dev/null | sha256sum | cut -c1-16)\n\
                 qemu-img convert -O raw /tmp/q.qcow2 /tmp/qq.raw\n\
                 echo HOST-QCOW2=$(dd if=/tmp/qq.raw bs=128k count=64 2>/dev/null | sha256sum | cut -c1-16)\n\
                 qemu-img check /tmp/q.qcow2; echo CHECK=$?\n\
                 exit $rc",
                guest("-c 2 -m 256M -d /tmp/q.img -d /tmp/q.qcow2", "bzImage", DEEP_RUN)
            ),
        },
        Scenario {
            // A guest with two queues sent live to a new vm-run, on a
            // qcow2 disk: both queues go on serving on the receiver.
            name: "multiqueue-live",
            script: format!(
                "qemu-img create -q -f qcow2 /tmp/ml.qcow2 8M\n\
                 {} > /tmp/ml1.log 2>&1 &\n{}\n\
                 vm-send -l ml | vm-receive -D -N ml > /tmp/ml2.log 2>&1 &\n\
                 {}\n{}\nvm-ctl stop -f -w ml\n\
                 echo SRC-LAST $(grep '^MQ.*END' /tmp/ml1.log | tail -n1)\n\
                 echo DST-FIRST $(grep '^MQ.*END' /tmp/ml2.log | head -n1)\n\
                 echo DST-LAST $(grep '^MQ.*END' /tmp/ml2.log | tail -n1)\n\
                 echo DST-OK=$(grep -c '^MQ.* OK END' /tmp/ml2.log) \
                 BAD=$(grep -c '^MQ.* BAD END' /tmp/ml1.log /tmp/ml2.log | grep -vc ':0$')\n\
                 grep 'vm-receive' /tmp/ml2.log\n\
                 qemu-img check /tmp/ml.qcow2; echo CHECK=$?",
                guest("-N ml -c 2 -m 128M -d /tmp/ml.qcow2", "bzImage", MQ_COUNTER),
                await_in("/tmp/ml1.log", "MQ 5 ", 60),
                await_in("/tmp/ml2.log", "^MQ", 60),
                await_more("/tmp/ml2.log", "^MQ.*END", 4, 30),
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
        .get_or_init(|| testhost::run("disk", &scenarios(), true))
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

/// The value of the first word of the case's output that starts with
/// `key` (`KEY=value`), up to the next blank.
fn value<'a>(c: &'a Case, key: &str) -> &'a str {
    c.output
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{}", c.output))
}

#[test]
fn two_vcpus_give_each_disk_two_queues_unless_told_otherwise() {
    let c = case("multiqueue");
    assert_eq!(value(c, "QUEUES="), "2,2,1", "{}", c.output);
    // Each of the two disks heard back on both queues' own vectors.
    for dev in ["virtio0", "virtio1"] {
        for q in 0..2 {
            let name = format!("{dev}-req.{q}");
            let line = c
                .output
                .lines()
                .find(|l| l.trim_end().ends_with(&name))
                .unwrap_or_else(|| panic!("no {name} in:\n{}", c.output));
            let count: u64 = line
                .split_whitespace()
                .skip(1)
                .map_while(|w| w.parse::<u64>().ok())
                .sum();
            assert!(count > 0, "no interrupt on {name}: {line}");
        }
    }
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn writes_from_both_cpus_at_once_land_in_raw_and_qcow2_images() {
    same_in_both_images(case("multiqueue"), "READ", 33);
}

/// What the guest read back from both disks (`READ-vda=`, `READ-vdb=`
/// for read = "READ") and the host from both images is the `WANT=`
/// digest of `len` characters, and qemu-img check passes.
fn same_in_both_images(c: &Case, read: &str, len: usize) {
    let want = value(c, "WANT=");
    assert_eq!(want.len(), len, "{}", c.output);
    assert_eq!(value(c, &format!("{read}-vda=")), want, "guest, raw");
    assert_eq!(value(c, &format!("{read}-vdb=")), want, "guest, qcow2");
    assert_eq!(value(c, "HOST-RAW="), want, "host, raw");
    assert_eq!(value(c, "HOST-QCOW2="), want, "host, qcow2");
    assert_eq!(value(c, "CHECK="), "0", "qemu-img check:\n{}", c.output);
}

#[test]
fn deep_queues_from_both_cpus_read_back_what_they_wrote_on_raw_and_qcow2() {
    let c = case("deep");
    same_in_both_images(c, "DEEP", 16);
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn a_guest_with_two_queues_migrates_live_and_both_go_on() {
    let c = case("multiqueue-live");
    let n = |key: &str| -> u64 {
        let line = c
            .output
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{}", c.output));
        line.split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{key}{line}"))
    };
    // The receiver goes on from where the sender stopped, with both CPUs
    // writing and reading through their own queues.
    assert!(n("DST-FIRST ") <= n("SRC-LAST ") + 1, "{}", c.output);
    assert!(n("DST-LAST ") >= n("DST-FIRST ") + 3, "{}", c.output);
    assert!(
        value(c, "DST-OK=").parse::<u64>().unwrap_or(0) >= 4,
        "{}",
        c.output
    );
    assert_eq!(value(c, "BAD="), "0", "{}", c.output);
    assert_eq!(value(c, "CHECK="), "0", "qemu-img check:\n{}", c.output);
}
