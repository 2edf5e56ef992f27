//! Linux and its boot loaders through vm-run's BIOS path, on media
//! nobody here wrote by hand (tests/media: `make media`): Debian's
//! SeaBIOS, GRUB from an MBR, from a hybrid ISO as a CD and as a disk,
//! isolinux and Debian's installer, in one boot of the emulated test host.
//! The host carries QEMU's package for its firmware: Debian's SeaBIOS at
//! the path vm-run boots by default. (QEMU's own boot of the same disk,
//! for timings, locked up the test host twice: that comparison is not
//! here.)
//!
//! The media and the test-host boot take about 2 GiB and many minutes, so
//! the tests are `#[ignore]`d by `cargo test` and run by `make test-media`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use vm_tests::testhost::{self, Case, Report, Scenario};
use vm_tests::{root, target_dir};

const PROMPT: &str = "root@vmtest:~#";
const MENU_DEB: &str = "Debian 12 (vm-tools test medium)";
const MENU_ISO: &str = "vm-tools grub.iso: busybox marker";
const ISO_OK: &str = "VMTEST-GRUB-ISO-OK";
const DI_QUESTION: &str = "Select a language";

/// The media of `make media`, packed once (and again when one changes)
/// into a cpio archive that run-host.sh appends: they appear in the test
/// host under /media. The kernel's initramfs unpacker fails ("write
/// error") on a file of 2 GiB, debian.raw's size, so the archive holds
/// the image up to its last data (cpio keeps no holes) and the first
/// scenario extends it to its size again with a hole.
fn media() -> PathBuf {
    let src = target_dir().join("media");
    for m in ["debian.raw", "grub.iso", "di.iso"] {
        assert!(
            src.join(m).is_file(),
            "{}: missing; run `make media` first",
            src.join(m).display()
        );
    }
    let raw = src.join("debian.raw");
    let dir = target_dir().join("firmware-linux");
    let out = dir.join("media.cpio.gz");
    let script = format!(
        "set -e; o={o}; s={s}; d={d}
         if [ -f $o ] && [ -z \"$(find $s/debian.raw $s/grub.iso $s/di.iso -newer $o)\" ]; then exit 0; fi
         rm -rf $d/r; mkdir -p $d/r/media
         head -c {used} $s/debian.raw > $d/r/media/debian.raw
         for m in grub.iso di.iso; do ln -s $s/$m $d/r/media/$m; done
         (cd $d/r && find . -mindepth 1 | cpio -o -L -H newc -R 0:0 --quiet) | gzip -1 > $o.tmp
         mv $o.tmp $o; rm -rf $d/r",
        o = out.display(),
        s = src.display(),
        d = dir.display(),
        used = used_bytes(&raw),
    );
    std::fs::create_dir_all(&dir).expect("create target/firmware-linux");
    let st = Command::new("sh")
        .args(["-c", &script])
        .current_dir(root())
        .status()
        .expect("sh");
    assert!(st.success(), "packing the media failed");
    out
}

/// The length of `path` without its trailing zeros, in whole MiB: where
/// its last data ends.
fn used_bytes(path: &Path) -> u64 {
    const MIB: u64 = 1 << 20;
    let mut f = File::open(path).expect("open debian.raw");
    let len = f.metadata().expect("stat debian.raw").len();
    let mut buf = vec![0u8; MIB as usize];
    let mut end = len.div_ceil(MIB);
    while end > 0 {
        f.seek(SeekFrom::Start((end - 1) * MIB)).expect("seek");
        let n = f.read(&mut buf).expect("read debian.raw");
        if buf[..n].iter().any(|&b| b != 0) {
            break;
        }
        end -= 1;
    }
    let used = (end * MIB).min(len);
    assert!(used < 1 << 31, "{}: data beyond 2 GiB", path.display());
    used
}

/// Shell functions every scenario starts with. `start NAME CMD...` runs
/// CMD (vm-run) under a time limit with its stdin a fifo held
/// open on fd 3 (what a scenario types: `line TEXT`) and its output in
/// /tmp/NAME.con, stderr in /tmp/NAME.err. `seen PATTERN SECS [COUNT]`
/// waits for the console to show PATTERN (COUNT times) after `from_now`'s
/// mark and prints `AT seconds-since-start PATTERN`; `ended SECS` waits
/// for CMD to end by itself and prints `EXIT=status`. On a failure they
/// print the console's and stderr's tails, for the test to show.
const PRELUDE: &str = r#"
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$(up)" -v b="$t0" 'BEGIN { printf "%.1f", a - b }'; }
start() {
    n=$1; shift
    con=/tmp/$n.con; rm -f /tmp/$n.in; mkfifo /tmp/$n.in; : > $con; mark=0
    t0=$(up)
    timeout -s KILL 900 "$@" < /tmp/$n.in > $con 2> /tmp/$n.err &
    pid=$!
    exec 3> /tmp/$n.in
}
tails() {
    echo "--- console tail:"; tail -c 3000 $con | tr -d '\033' | tail -n 40
    echo "--- stderr tail:"; tail -n 30 /tmp/$n.err
}
from_now() { mark=$(wc -c < $con); }
seen() {
    i=0
    while [ "$(tail -c +$((mark + 1)) $con | grep -aoF -- "$1" | wc -l)" -lt "${3:-1}" ]; do
        kill -0 $pid 2>/dev/null || { echo "GONE waiting for $1"; tails; return 1; }
        i=$((i + 1))
        [ $i -le $(($2 * 5)) ] || { echo "TIMEOUT waiting for $1"; tails; return 1; }
        [ $((i % 500)) -ne 0 ] || echo "still waiting for $1 at $(since)s"
        sleep 0.2
    done
    echo "AT $(since) $1"
}
line() { printf '%s\n' "$1" >&3; }
ended() {
    i=0
    while kill -0 $pid 2>/dev/null; do
        i=$((i + 1))
        [ $i -le $(($1 * 5)) ] || { echo "TIMEOUT waiting for the end"; tails; kill -9 $pid; break; }
        sleep 0.2
    done
    wait $pid; rc=$?
    exec 3>&-
    echo "EXIT=$rc AT $(since)"
    [ $rc -eq 0 ] || [ $rc -eq 75 ] || tails
}
"#;

fn scenario(name: &'static str, body: &str) -> Scenario {
    Scenario {
        name,
        script: format!("{PRELUDE}\n{body}"),
    }
}

fn scenarios() -> Vec<Scenario> {
    vec![
        scenario(
            "media",
            "truncate -s 2147483648 /media/debian.raw && ls -l /media /usr/share/seabios/bios-256k.bin; free -m",
        ),
        // debian.raw as it is: GRUB from the MBR, Linux on 2 vCPUs,
        // systemd's autologin on ttyS0, then poweroff through ACPI _S5.
        scenario(
            "debian-raw",
            &format!(
                "start debian-raw vm-run -c 2 -m 1G -d /media/debian.raw\n\
                 seen '{MENU_DEB}' 120 && seen '{PROMPT}' 600 && line poweroff && ended 300"
            ),
        ),
        // A qcow2 overlay of vm-img's on it; the guest's reboot goes
        // through the BIOS's reset path and ends vm-run with 75.
        scenario(
            "debian-qcow2",
            &format!(
                "vm-img create -b /media/debian.raw /tmp/ov.qcow2 || exit 1\n\
                 start debian-qcow2 vm-run -c 2 -m 1G -d /tmp/ov.qcow2\n\
                 seen '{MENU_DEB}' 120 && seen '{PROMPT}' 600 && line reboot && ended 300\n\
                 ls -l /tmp/ov.qcow2; rm -f /tmp/ov.qcow2"
            ),
        ),
        scenario(
            "grub-cd",
            &format!(
                "start grub-cd vm-run -m 512M -r /media/grub.iso -B cdrom\n\
                 seen '{MENU_ISO}' 120 && seen '{ISO_OK}' 300 && ended 120"
            ),
        ),
        scenario(
            "grub-disk",
            &format!(
                "start grub-disk vm-run -m 512M -d /media/grub.iso\n\
                 seen '{MENU_ISO}' 120 && seen '{ISO_OK}' 300 && ended 120"
            ),
        ),
        // The installer waits for an answer forever: vm-ctl stops it.
        scenario(
            "di",
            &format!(
                "start di vm-run -N di -m 1G -r /media/di.iso -B cdrom\n\
                 seen 'Loading /install/vmlinuz' 120 && seen '{DI_QUESTION}' 600\n\
                 vm-ctl stop -f di; echo STOP=$?\n\
                 ended 60"
            ),
        ),
    ]
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| {
            let media = media();
            testhost::run_with("firmware-linux", &scenarios(), true, Some(&media), 2400)
        })
        .case(name)
}

fn assert_has(c: &Case, want: &str) {
    assert!(c.output.contains(want), "no {want:?} in:\n{}", c.output);
}

/// The seconds at which the scenario saw `what`.
fn at(c: &Case, what: &str) -> f64 {
    let tag = format!(" {what}");
    c.output
        .lines()
        .find_map(|l| l.strip_prefix("AT ")?.strip_suffix(&tag)?.parse().ok())
        .unwrap_or_else(|| panic!("never saw {what:?}:\n{}", c.output))
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn debian_raw_boots_through_grub_to_a_login_and_powers_off() {
    let c = case("debian-raw");
    let (menu, prompt) = (at(c, MENU_DEB), at(c, PROMPT));
    assert_has(c, "EXIT=0 ");
    eprintln!("vm-run, debian.raw: GRUB menu at {menu}s, prompt at {prompt}s");
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn debian_qcow2_overlay_boots_and_reboot_is_75() {
    let c = case("debian-qcow2");
    at(c, MENU_DEB);
    at(c, PROMPT);
    assert_has(c, "EXIT=75 ");
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn grub_iso_boots_as_a_cd() {
    let c = case("grub-cd");
    at(c, MENU_ISO);
    at(c, ISO_OK);
    assert_has(c, "EXIT=0 ");
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn grub_iso_boots_as_a_disk() {
    let c = case("grub-disk");
    at(c, MENU_ISO);
    at(c, ISO_OK);
    assert_has(c, "EXIT=0 ");
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn debian_installer_asks_its_first_question() {
    let c = case("di");
    at(c, DI_QUESTION);
    assert_has(c, "STOP=0");
    assert_has(c, "EXIT=0 ");
}
