//! The CD-ROM drive (`vm-run -r file.iso`: virtio-scsi, one MMC LUN) as
//! a stock Linux guest drives it (Debian's virtio_scsi, sr_mod, cdrom
//! and isofs modules) in the emulated test host: /dev/sr0 reads back the
//! ISO made on this machine with xorriso, byte for byte, and mounts. On
//! this machine's /dev/kvm: SeaBIOS boots an El Torito image from it
//! (tests/cdrom/boot.S), and bad `-r` arguments are tried with the tiny
//! guest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use std::process::Stdio;
use std::time::Duration;
use vm_tests::testhost::{self, Case, Report, Scenario};

use vm_tests::{bin, root, target_dir, tiny_guest, vm_run, wait_output};

/// What hello.txt on the ISO says.
const HELLO: &str = "CDROM-FILE-OK";
/// The modules the fixture's initramfs lacks, in load order.
const MODULES: [&str; 6] = [
    "scsi_common",
    "scsi_mod",
    "cdrom",
    "sr_mod",
    "virtio_scsi",
    "isofs",
];

fn dir() -> PathBuf {
    let d = target_dir().join("cdrom");
    fs::create_dir_all(&d).expect("create target/cdrom");
    d
}

fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(root())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// About a megabyte of numbered lines: every sector differs, so a sector
/// read from the wrong place shows.
fn lines() -> String {
    (0..40_000)
        .map(|i| format!("line {i:08} of the CD\n"))
        .collect()
}

/// The ISO: hello.txt and lines.txt, Rock Ridge and Joliet, made by
/// xorriso (Debian's; tests/harness/setup.sh installs it).
fn iso() -> &'static Path {
    static ISO: OnceLock<PathBuf> = OnceLock::new();
    ISO.get_or_init(|| {
        let d = dir();
        let src = d.join("src");
        fs::create_dir_all(&src).expect("create iso source dir");
        fs::write(src.join("hello.txt"), format!("{HELLO}\n")).expect("write hello.txt");
        fs::write(src.join("lines.txt"), lines()).expect("write lines.txt");
        let iso = d.join("test.iso");
        sh(&format!(
            "xorriso -as mkisofs -quiet -V VMTEST -R -J -o {} {}",
            iso.display(),
            src.display()
        ));
        iso
    })
}

/// A cpio archive (gzip) to append to the fixture's initramfs: the
/// modules from the fixture's own kernel package, and a module list
/// that loads them after the fixture's own.
fn modules() -> PathBuf {
    let out = dir().join("modules.cpio.gz");
    let guest = target_dir().join("guest");
    sh(&format!("tests/guest/build.sh {}", guest.display()));
    let names = MODULES.map(|m| format!("'*/{m}.ko*'")).join(" ");
    let order = MODULES.join("\n");
    sh(&format!(
        "set -e; g={g}; t=$(mktemp -d); trap 'rm -rf $t' EXIT
         deb=$(ls -t $g/debs/linux-image-$(cat $g/kernel-version)_*.deb | head -n1)
         mkdir -p $t/x $t/r/lib/modules
         dpkg-deb --fsys-tarfile $deb | tar -x -C $t/x --wildcards {names}
         for f in $(find $t/x -name '*.ko*'); do cp $f $t/r/lib/modules/; done
         for f in $t/r/lib/modules/*.xz; do if [ -e $f ]; then xz -d $f; fi; done
         gunzip < $g/initrd.gz | (cd $t && cpio -id --quiet lib/modules/order)
         cp $t/lib/modules/order $t/r/lib/modules/order
         printf '%s\\n' '{order}' >> $t/r/lib/modules/order
         (cd $t/r && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -9 > {out}",
        g = guest.display(),
        out = out.display(),
    ));
    out
}

/// A shell line that writes `file` (gzipped, base64) to `dest` in the
/// test host: the scenario script is how files reach it.
fn carry(file: &Path, dest: &str) -> String {
    let b64 = sh(&format!("gzip -9c < {} | base64 -w 76", file.display()));
    format!("base64 -d <<'B64' | gunzip > {dest}\n{b64}B64\n")
}

fn scenarios() -> Vec<Scenario> {
    let wait_sr0 = "i=0; while [ ! -b /dev/sr0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done";
    let run = format!(
        "run=\"{wait_sr0}; \
         echo DEV=$(cat /sys/block/sr0/device/type)/$(cat /sys/block/sr0/device/vendor)/$(cat /sys/block/sr0/ro); \
         echo SIZE=$(cat /sys/block/sr0/size); \
         echo CD-SUM=$(sha256sum < /dev/sr0); \
         mkdir -p /mnt; mount -t iso9660 -o ro /dev/sr0 /mnt && echo MOUNTED; \
         echo FILE=$(cat /mnt/hello.txt); \
         echo LINES-SUM=$(sha256sum < /mnt/lines.txt); \
         dd if=/dev/zero of=/dev/sr0 bs=2048 count=1 2>/dev/null || echo WRITE-REFUSED; \
         umount /mnt\""
    );
    vec![
        // The files first, in a scenario of their own: with them in the
        // same one as vm-run, the test host's shell ended twice right
        // after vm-run, before the scenario's end marker. Not
        // understood: a probe with a large heredoc and vm-run in one
        // scenario ended well, and so does this split.
        Scenario {
            name: "payload",
            script: format!(
                "{}{}ls -l /tmp/cd.iso /tmp/mods.cpio.gz",
                carry(iso(), "/tmp/cd.iso"),
                carry(&modules(), "/tmp/mods.cpio.gz"),
            ),
        },
        Scenario {
            name: "cdrom",
            script: format!(
                "cat /guest/initrd.gz /tmp/mods.cpio.gz > /tmp/initrd-cd.gz\n\
                 echo ISO-SUM=$(sha256sum < /tmp/cd.iso)\n\
                 vm-run -m 256M -r /tmp/cd.iso -b /guest/bzImage -i /tmp/initrd-cd.gz \
                 -a 'console=ttyS0 quiet {run}'"
            ),
        },
    ]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("cdrom", &scenarios(), false))
        .case(name)
}

/// The value of `KEY=` in the output.
fn value<'a>(c: &'a Case, key: &str) -> &'a str {
    c.output
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in:\n{}", c.output))
        .trim()
}

/// The hash sha256sum printed, without the file name.
fn hash(line: &str) -> &str {
    line.split_whitespace().next().unwrap_or_default()
}

#[test]
fn linux_reads_the_whole_iso_through_sr0() {
    let c = case("cdrom");
    // SCSI type 5 (CD/DVD), our vendor, read-only.
    assert_eq!(value(c, "DEV="), "5/VM-TOOLS/1", "{}", c.output);
    let size = fs::metadata(iso()).expect("iso").len();
    assert_eq!(value(c, "SIZE=").parse::<u64>().ok(), Some(size / 512));
    let host = hash(value(c, "ISO-SUM="));
    assert_eq!(host.len(), 64, "{host}");
    assert_eq!(
        hash(value(c, "CD-SUM=")),
        host,
        "/dev/sr0 differs from the ISO"
    );
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn linux_mounts_the_iso_and_reads_its_files() {
    let c = case("cdrom");
    assert!(c.output.contains("MOUNTED"), "{}", c.output);
    assert_eq!(value(c, "FILE="), HELLO);
    let want = sh(&format!(
        "sha256sum < {}",
        iso().parent().expect("dir").join("src/lines.txt").display()
    ));
    assert_eq!(hash(value(c, "LINES-SUM=")), hash(&want));
    assert!(c.output.contains("WRITE-REFUSED"), "{}", c.output);
}

/// vm-run with the tiny guest on this machine, which powers off at once.
fn tiny(args: &[&str]) -> vm_tests::Output {
    let k = tiny_guest().to_str().expect("utf-8 path");
    let mut all = vec!["-m", "16M", "-b", k, "-a", "poweroff"];
    all.extend_from_slice(args);
    vm_run(&all)
}

fn assert_fails(out: &vm_tests::Output, status: i32, message: &str) {
    assert_eq!(out.status, status, "{out:?}");
    let mut lines = out.stderr.lines();
    let first = lines.next().unwrap_or("");
    assert!(
        first.starts_with("vm-run: ") && first.contains(message),
        "stderr {:?} should name {message:?}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn a_guest_with_a_cd_rom_runs_and_bad_ones_are_refused() {
    let iso = iso().to_str().expect("utf-8 path");
    let ok = tiny(&["-r", iso]);
    assert_eq!((ok.status, ok.stderr.as_str()), (0, ""), "{ok:?}");
    assert_fails(
        &tiny(&["-r", "/nonexistent/cd.iso"]),
        66,
        "/nonexistent/cd.iso",
    );
    let empty = dir().join("empty.iso");
    fs::write(&empty, b"").expect("write empty.iso");
    let empty = empty.to_str().expect("utf-8 path");
    assert_fails(&tiny(&["-r", empty]), 65, "empty.iso: not a CD image");
    assert_fails(&tiny(&["-r", iso, "-r", iso]), 64, "-r");
    assert_fails(&tiny(&["-r", iso, "-d", iso]), 64, "-r");
}

/// An ISO whose El Torito boot image (no emulation) is tests/cdrom/boot.S.
fn boot_iso() -> PathBuf {
    let d = dir();
    let src = d.join("boot-src");
    fs::create_dir_all(&src).expect("create boot source dir");
    let (obj, image, iso) = (d.join("boot.o"), src.join("boot.bin"), d.join("boot.iso"));
    sh(&format!(
        "cc -c tests/cdrom/boot.S -o {o} && \
         ld -m elf_x86_64 -Ttext 0x7c00 --oformat binary -e _start {o} -o {b} && \
         truncate -s 2048 {b} && \
         xorriso -as mkisofs -quiet -V BOOT -o {i} -b boot.bin -no-emul-boot \
         -boot-load-size 4 {s} 2>/dev/null",
        o = obj.display(),
        b = image.display(),
        i = iso.display(),
        s = src.display()
    ));
    iso
}

#[test]
fn seabios_boots_from_the_cd_and_reads_it_through_int13() {
    // No -b: Debian's SeaBIOS, which finds the LUN, boots its El Torito
    // image, and serves the image's int 0x13 reads from the drive.
    let iso = boot_iso();
    let child = Command::new(bin("vm-run"))
        .args(["-m", "64M", "-r"])
        .arg(&iso)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vm-run");
    let out = wait_output(child, Duration::from_secs(120));
    // 0xe0: the BIOS's first CD drive number.
    assert!(out.stdout.contains("CDBOOT-OK drive E0"), "{out:?}");
    assert!(out.stdout.contains("CD-PVD-OK"), "{out:?}");
    assert_eq!(out.status, 0, "{out:?}");
}
