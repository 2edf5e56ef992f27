//! qcow2 disks under a stock Linux guest, checked with the real qemu-img
//! (packed into the emulated test host beside QEMU): images qemu-img
//! makes read the same bytes in the guest as qemu-img extracts, what the
//! guest writes into vm-img's images is what qemu-img extracts, and a
//! vm-run killed in the middle of a write loop leaves an image that
//! qemu-img check calls clean or leaks only. One boot runs every scenario.

use std::sync::OnceLock;

use vm_tests::testhost::{self, await_in, guest, Case, Report, Scenario};

/// Prints `KEY=` and the SHA-256 of what `cmd` writes to its stdout.
fn sum(key: &str, cmd: &str) -> String {
    format!("echo {key}=$({cmd} | sha256sum | cut -c1-64)")
}

fn scenarios() -> Vec<Scenario> {
    let read = guest(
        "-m 256M -d c.qcow2,ro -d big.qcow2,ro -d v2.qcow2,ro -d l3.qcow2,ro",
        "bzImage",
        "run=\"for d in a b c d; do echo GUEST-$d=$(sha256sum < /dev/vd$d | cut -c1-64); done\"",
    );
    // 3 MiB from 1.2 MiB on: partial clusters at both ends (4 KiB,
    // 64 KiB, 2 MiB clusters), the first over data of the raw base.
    let write = guest(
        "-m 256M -d w.qcow2 -d w4k.qcow2 -d w2m.qcow2",
        "bzImage",
        "run=\"head -c 3145728 /dev/urandom > /tmp/x; echo W=$(sha256sum < /tmp/x | cut -c1-64); \
         for d in a b c; do dd if=/tmp/x of=/dev/vd$d bs=4k seek=300 conv=fsync 2>/dev/null; done; \
         dd if=/tmp/x of=/dev/vdb bs=1M seek=8 count=1 conv=fsync 2>/dev/null; \
         blkdiscard -o 8388608 -l 1048576 /dev/vdb && echo DISCARDED; \
         for d in a b c; do echo GUEST-$d=$(sha256sum < /dev/vd$d | cut -c1-64); done; sync\"",
    );
    let mut hosts = String::new();
    for f in ["w", "w4k", "w2m"] {
        hosts.push_str(&format!(
            "qemu-img check -q {f}.qcow2; echo CHECK-{f}=$?\n\
             qemu-img convert -O raw {f}.qcow2 {f}.raw\n\
             {}\n{}\n",
            sum(&format!("HOST-{f}"), &format!("cat {f}.raw")),
            sum(
                &format!("HOST-W-{f}"),
                &format!("dd if={f}.raw bs=4k skip=300 count=768 2>/dev/null")
            ),
        ));
    }
    let kill = guest(
        "-m 256M -d k.qcow2",
        "bzImage",
        "run=\"echo WRITING; i=0; while :; do \
         dd if=/dev/urandom of=/dev/vda bs=64k count=8 seek=$((i*37%2000)) oflag=direct conv=fsync 2>/dev/null; \
         i=$((i+1)); done\"",
    );
    vec![
        Scenario {
            name: "read",
            script: format!(
                "head -c 6291456 /dev/urandom > p.raw\n\
                 dd if=/dev/zero of=p.raw bs=64k seek=10 count=10 conv=notrunc 2>/dev/null\n\
                 qemu-img convert -O qcow2 -c p.raw c.qcow2\n\
                 qemu-img convert -O qcow2 -o cluster_size=2M p.raw big.qcow2\n\
                 qemu-img convert -O qcow2 -o compat=0.10 p.raw v2.qcow2\n\
                 qemu-img create -q -f qcow2 -b p.raw -F raw l1.qcow2\n\
                 qemu-io -c 'write -P 0x11 1M 256k' l1.qcow2 >/dev/null\n\
                 qemu-img create -q -f qcow2 -b l1.qcow2 -F qcow2 l2.qcow2\n\
                 qemu-io -c 'write -P 0x22 1152k 256k' -c 'write -z 4M 64k' l2.qcow2 >/dev/null\n\
                 qemu-img create -q -f qcow2 -b l2.qcow2 -F qcow2 l3.qcow2\n\
                 qemu-io -c 'write -P 0x33 5M 4k' l3.qcow2 >/dev/null\n\
                 for f in c big v2 l3; do qemu-img convert -O raw $f.qcow2 $f.out; \
                 echo HOST-$f=$(sha256sum < $f.out | cut -c1-64); rm $f.out; done\n\
                 {read}"
            ),
        },
        Scenario {
            name: "write",
            script: format!(
                "head -c 6291456 /dev/urandom > base.raw\n\
                 vm-img create -b base.raw -s 64M w.qcow2 && \
                 vm-img create -c 4K -s 16M w4k.qcow2 && \
                 vm-img create -c 2M -s 16M w2m.qcow2 || exit 1\n\
                 {write}\nrc=$?\n\
                 {hosts}\
                 {}\n{}\n\
                 vm-img check w.qcow2 && vm-img check w4k.qcow2 && vm-img check w2m.qcow2 && echo VM-IMG-CLEAN\n\
                 exit $rc",
                sum("HOST-DISCARDED", "dd if=w4k.raw bs=1M skip=8 count=1 2>/dev/null"),
                sum("ZEROES", "head -c 1048576 /dev/zero"),
            ),
        },
        Scenario {
            // kill -9 in the middle of allocating writes, each dd ending
            // with a flush: what is on disk must be consistent whatever
            // vm-run had not written yet, and hold what was flushed.
            name: "kill",
            script: format!(
                "vm-img create -s 128M k.qcow2 || exit 1\n\
                 {kill} > k.log 2>&1 &\n\
                 pid=$!\n\
                 {}\n\
                 sleep 8; kill -9 $pid; wait $pid\n\
                 grep -c WRITING k.log\n\
                 echo ALLOCATED=$(qemu-img map --output=json k.qcow2 | grep -c '\"data\": true')\n\
                 qemu-img check k.qcow2; echo QEMU-CHECK=$?\n\
                 vm-img check k.qcow2 > /dev/null; echo VM-IMG-CHECK=$?",
                await_in("k.log", "WRITING", 120)
            ),
        },
    ]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("qcow2", &scenarios(), true))
        .case(name)
}

fn value<'a>(c: &'a Case, key: &str) -> &'a str {
    c.output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in:\n{}", c.output))
}

#[test]
fn guest_reads_what_qemu_img_extracts() {
    let c = case("read");
    // Compressed clusters, 2 MiB clusters, a v2 image, and a chain of
    // four with writes and zeroes at every level.
    for (host, guest) in [("c", "a"), ("big", "b"), ("v2", "c"), ("l3", "d")] {
        let (h, g) = (
            value(c, &format!("HOST-{host}")),
            value(c, &format!("GUEST-{guest}")),
        );
        assert_eq!(h.len(), 64, "{}", c.output);
        assert_eq!(
            h, g,
            "{host}.qcow2 reads differently in the guest:\n{}",
            c.output
        );
    }
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn guest_writes_are_what_qemu_img_extracts() {
    let c = case("write");
    let written = value(c, "W");
    assert_eq!(written.len(), 64, "{}", c.output);
    for (f, d) in [("w", "a"), ("w4k", "b"), ("w2m", "c")] {
        assert_eq!(
            value(c, &format!("CHECK-{f}")),
            "0",
            "qemu-img check {f}:\n{}",
            c.output
        );
        assert_eq!(
            value(c, &format!("HOST-{f}")),
            value(c, &format!("GUEST-{d}")),
            "{f}.qcow2: the guest's disk and qemu-img's extraction differ:\n{}",
            c.output
        );
        assert_eq!(
            value(c, &format!("HOST-W-{f}")),
            written,
            "{f}:\n{}",
            c.output
        );
    }
    assert!(c.output.contains("DISCARDED"), "{}", c.output);
    assert_eq!(
        value(c, "HOST-DISCARDED"),
        value(c, "ZEROES"),
        "{}",
        c.output
    );
    assert!(c.output.contains("VM-IMG-CLEAN"), "{}", c.output);
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn kill_9_mid_write_leaves_no_corruption() {
    let c = case("kill");
    let allocated: u32 = value(c, "ALLOCATED").parse().unwrap_or(0);
    assert!(
        allocated > 0,
        "the guest wrote nothing before the kill:\n{}",
        c.output
    );
    // 0: clean; 3: leaked clusters only (no harm to data, vm-img(1)).
    let q = value(c, "QEMU-CHECK");
    assert!(
        q == "0" || q == "3",
        "qemu-img check says {q}:\n{}",
        c.output
    );
    assert_eq!(value(c, "VM-IMG-CHECK"), q, "{}", c.output);
}
