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
    echo "--- guests and CPU time:"; vm-ctl status; ps -o pid,time,args | grep -e vm-run -e vm-receive | grep -v grep
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
        // The rest of vm-tools on a BIOS-booted guest, in one boot (each
        // boot of debian.raw takes minutes): debian.raw through a loop
        // device, a NIC on vm-net's local /31 and grub.iso in the CD-ROM
        // drive. The guest's DHCP lease and ping; vm-ctl status, pause and
        // unpause while a shell loop counts on the console, reading the
        // CD-ROM on each turn; a live move (the stream carries SeaBIOS,
        // fw_cfg and the CD-ROM drive) to a vm-receive of the same name on
        // this host, where the loop goes on; vm-ctl stop, through the ACPI
        // power button and systemd-logind. (Debian's kernel cannot read
        // fw_cfg once booted: its qemu_fw_cfg binds only to an ACPI
        // QEMU0002 device, which vm-run does not describe.) The markers the guest prints are
        // built by its shell (`LOOP=$i`, `NET-$((1+1))`), so the echo of
        // what is typed never matches them.
        scenario(
            "debian-moves",
            &format!(
                "L=$(losetup -f) && losetup $L /media/debian.raw && echo BLOCKDEV=$L || exit 1\n\
                 start fw vm-net -L vm-run -N fw -c 2 -m 1G -d $L -r /media/grub.iso\n\
                 seen '{MENU_DEB}' 120 && seen '{PROMPT}' 600 || {{ losetup -d $L; exit 1; }}\n\
                 line 'for i in $(seq 60); do ip -4 -o addr show scope global | grep -q inet && break; sleep 1; done; \
                 ip -4 -o addr show scope global; ping -c 3 -W 5 $(ip route show default | cut -d\" \" -f3); \
                 echo NET-$((1+1))'\n\
                 seen NET-2 180\n\
                 line 'i=0; while :; do i=$((i+1)); \
                 echo LOOP=$i CD=$(dd if=/dev/sr0 iflag=direct bs=2048 skip=16 count=1 2>/dev/null | head -c 6 | tail -c 5) END; \
                 sleep 1; done'\n\
                 seen LOOP=3 120\n\
                 vm-ctl status fw | sed 's/^/STATUS /'\n\
                 vm-ctl pause fw; echo PAUSE=$?\n\
                 vm-ctl status fw | sed 's/^/PAUSED /'\n\
                 sleep 1; a=$(grep -ac 'LOOP=[0-9]' $con); sleep 5; b=$(grep -ac 'LOOP=[0-9]' $con)\n\
                 echo LINES-WHILE-PAUSED=$((b - a))\n\
                 vm-ctl unpause fw; echo UNPAUSE=$?\n\
                 from_now; seen LOOP= 60 3\n\
                 vm-send -l fw | vm-net -L vm-receive -N fw -d $L -r /media/grub.iso > /tmp/fw2.con 2> /tmp/fw2.err &\n\
                 rpid=$!\n\
                 ended 300; echo SENT\n\
                 n=fw2; con=/tmp/fw2.con; mark=0; pid=$rpid\n\
                 seen LOOP= 120 3\n\
                 vm-ctl status fw | sed 's/^/MOVED /'\n\
                 vm-ctl stop fw; echo STOP=$?\n\
                 seen 'reboot: Power down' 300\n\
                 ended 120; echo RECEIVED\n\
                 losetup -d $L\n\
                 tr -d '\\r' < /tmp/fw.con | grep -a -e 'inet ' -e 'packet loss' | sed 's/^/CON /'\n\
                 echo SRC-LAST $(tr -d '\\r' < /tmp/fw.con | grep -a 'LOOP=[0-9].* END' | tail -n 1)\n\
                 echo DST-FIRST $(tr -d '\\r' < /tmp/fw2.con | grep -a 'LOOP=[0-9].* END' | head -n 1)\n\
                 echo DST-LAST $(tr -d '\\r' < /tmp/fw2.con | grep -a 'LOOP=[0-9].* END' | tail -n 1)\n\
                 sed 's/^/RECV-ERR /' /tmp/fw2.err"
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

/// The rest of the line of the moves scenario that starts with `key`.
fn after<'a>(c: &'a Case, key: &str) -> &'a str {
    c.output
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key:?} in:\n{}", c.output))
}

/// The fields of vm-ctl status's row for the guest fw, printed by the
/// scenario after `key`; the table's last column is the name.
fn row<'a>(c: &'a Case, key: &str) -> Vec<&'a str> {
    c.output
        .lines()
        .filter_map(|l| l.strip_prefix(key))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.last() == Some(&"fw"))
        .unwrap_or_else(|| panic!("no {key:?} row for fw in:\n{}", c.output))
}

/// The value of `key` (`LOOP=`, `CD=`) in a loop line of the
/// guest's.
fn loop_field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in the loop line {line:?}"))
}

fn loop_number(line: &str) -> u64 {
    loop_field(line, "LOOP=")
        .parse()
        .unwrap_or_else(|_| panic!("not a loop line: {line:?}"))
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn bios_booted_guest_gets_its_address_by_dhcp_and_pings_the_host() {
    let c = case("debian-moves");
    assert!(
        after(c, "BLOCKDEV=").starts_with("/dev/loop"),
        "{}",
        c.output
    );
    // systemd-networkd's lease from vm-run's responder: the guest's half
    // of vm-net -L's /31.
    let inet = c
        .output
        .lines()
        .find(|l| l.starts_with("CON ") && l.contains(" inet 100.64."))
        .unwrap_or_else(|| panic!("no address from DHCP:\n{}", c.output));
    assert!(inet.contains("/31 "), "{inet}");
    assert_has(c, "3 packets transmitted, 3 received, 0% packet loss");
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn bios_booted_guest_shows_in_status_and_pause_holds_it() {
    let c = case("debian-moves");
    let (running, paused) = (row(c, "STATUS "), row(c, "PAUSED "));
    assert!(running.contains(&"running"), "{}", c.output);
    assert!(paused.contains(&"paused"), "{}", c.output);
    assert_has(c, "PAUSE=0");
    // The loop prints a line a second: none in 5 s of pause, and more
    // once unpaused (the scenario waits for three).
    assert_has(c, "LINES-WHILE-PAUSED=0\n");
    assert_has(c, "UNPAUSE=0");
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn bios_booted_guest_with_a_cdrom_moves_live_and_its_loop_goes_on() {
    let c = case("debian-moves");
    // vm-run ends with 0 once the guest is sent.
    let sent = c.output.split("SENT\n").next().unwrap_or_default();
    assert!(sent.contains("EXIT=0 "), "{}", c.output);
    let (last, first, end) = (
        after(c, "SRC-LAST "),
        after(c, "DST-FIRST "),
        after(c, "DST-LAST "),
    );
    // On where it was, with no boot in between: the line cut by the move
    // may be lost.
    let (n, m) = (loop_number(last), loop_number(first));
    assert!(n >= 6 && (m == n + 1 || m == n + 2), "{}", c.output);
    assert!(loop_number(end) >= m + 2, "{}", c.output);
    // The CD-ROM still reads: its volume descriptor, past the page cache.
    for l in [last, first, end] {
        assert_eq!(loop_field(l, "CD="), "CD001", "{}", c.output);
    }
    assert!(row(c, "MOVED ").contains(&"running"), "{}", c.output);
}

#[test]
#[ignore = "needs `make media` and a long test-host boot: make test-media"]
fn bios_booted_guest_powers_off_on_vm_ctl_stop() {
    let c = case("debian-moves");
    let received = c.output.split("SENT\n").nth(1).unwrap_or_default();
    assert!(received.contains("STOP=0"), "{}", c.output);
    // The power button reached systemd-logind, which powered off.
    at(c, "reboot: Power down");
    assert!(received.contains("EXIT=0 "), "{}", c.output);
    assert!(received.contains("RECEIVED"), "{}", c.output);
}
