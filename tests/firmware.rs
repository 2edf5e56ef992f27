//! Firmware boot on this machine's /dev/kvm: Debian's SeaBIOS, run by
//! vm-run with no -b, loads the boot sector of tests/firmware/boot.S from
//! a raw disk. What the boot sector prints through BIOS int 0x10 reaches
//! vm-run's console only through SeaBIOS's serial console (etc/sercon-port);
//! it finds the ACPI RSDP that the table-loader put in the F segment and
//! prints the signatures the XSDT leads to; it reads fw_cfg's signature
//! and the host bridge's with string port I/O; its write to the ROM is
//! dropped; and SeaBIOS's log shows under -v. And the ways a BIOS boot is
//! refused. SeaBIOS takes a few seconds here (PVM): the timeouts are
//! generous.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use vm_tests::named::{Console, Tiny};
use vm_tests::{bin, root, target_dir, tiny_guest, wait_output, Output};

const BIOS: &str = "/usr/share/seabios/bios-256k.bin";
const LIMIT: Duration = Duration::from_secs(120);

fn dir() -> PathBuf {
    let d = target_dir().join("firmware");
    fs::create_dir_all(&d).expect("create target/firmware");
    d
}

/// A 1 MiB raw disk whose sector 0 is boot.S assembled with `action`
/// ('p' powers off, 'r' resets).
fn disk(action: char) -> PathBuf {
    let d = dir();
    let (obj, raw, img) = (
        d.join(format!("boot-{action}.o")),
        d.join(format!("boot-{action}.bin")),
        d.join(format!("boot-{action}.img")),
    );
    let ok = Command::new("cc")
        .arg(format!("-DACTION='{action}'"))
        .arg("-c")
        .arg(root().join("tests/firmware/boot.S"))
        .arg("-o")
        .arg(&obj)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-Ttext",
                "0x7c00",
                "--oformat",
                "binary",
            ])
            .args(["-e", "_start"])
            .arg(&obj)
            .arg("-o")
            .arg(&raw)
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "assembling the boot sector failed (cc, ld)");
    let mut sector = fs::read(&raw).unwrap();
    assert_eq!(sector.len(), 512, "a boot sector is 512 bytes");
    sector.resize(1 << 20, 0);
    fs::write(&img, sector).unwrap();
    img
}

fn have_seabios() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        if !Path::new(BIOS).exists() {
            // tests/harness/setup.sh installs it; say so rather than pass.
            panic!("{BIOS} is missing: apt-get install seabios");
        }
        true
    })
}

/// vm-run with `args`, stdin empty, VM_RUN_BIOS as `bios` says (None:
/// unset, so the default is used).
fn run(args: &[&str], bios: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("vm-run"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match bios {
        Some(b) => cmd.env("VM_RUN_BIOS", b),
        None => cmd.env_remove("VM_RUN_BIOS"),
    };
    wait_output(cmd.spawn().expect("spawn vm-run"), LIMIT)
}

/// One line on stderr names the problem (a bad option adds the usage).
fn assert_fails(out: &Output, status: i32, needle: &str) {
    assert_eq!(out.status, status, "{out:?}");
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(first.starts_with("vm-run: "), "{out:?}");
    assert!(first.contains(needle), "{needle:?} not in {out:?}");
    let rest: Vec<&str> = out.stderr.lines().skip(1).collect();
    assert!(
        rest.is_empty() || (status == 64 && rest.len() == 1 && rest[0].starts_with("usage:")),
        "{out:?}"
    );
}

#[test]
fn seabios_boots_a_disk_and_the_guest_powers_off() {
    have_seabios();
    let img = disk('p');
    let started = std::time::Instant::now();
    let out = run(&["-m", "64M", "-d", img.to_str().unwrap()], None);
    eprintln!("SeaBIOS to power-off: {:?}", started.elapsed());
    assert_eq!(out.status, 0, "{out:?}");
    // int 0x10 output, mirrored to COM1 by sercon.
    assert!(out.stdout.contains("firmware: boot sector\r\n"), "{out:?}");
    // `rep insb` on fw_cfg's data port, and on the PCI config data port
    // one element at a time.
    assert!(out.stdout.contains("fw_cfg QEMU\r\n"), "{out:?}");
    assert!(out.stdout.contains("insb: each\r\n"), "{out:?}");
    // The image below 4 GiB is a ROM: the guest's write is dropped.
    assert!(out.stdout.contains("rom: kept\r\n"), "{out:?}");
    // The table-loader put the RSDP in the F segment and the XSDT leads
    // to vm-run's FADT and MADT.
    assert!(out.stdout.contains("RSDP XSDT FACP APIC \r\n"), "{out:?}");
    // Quiet: SeaBIOS's log (port 0x402) only under -v.
    assert_eq!(out.stderr, "", "{out:?}");
}

#[test]
fn two_vcpus_reset_and_the_log_under_v() {
    have_seabios();
    let img = disk('r');
    let out = run(
        &["-v", "-c", "2", "-m", "64M", "-d", img.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status, 75, "{out:?}");
    assert!(out.stdout.contains("RSDP XSDT FACP APIC"), "{out:?}");
    // SeaBIOS's own log, from port 0x402: it found fw_cfg, the boot
    // order and both CPUs (its INIT-SIPI woke the second).
    for line in [
        "Found QEMU fw_cfg",
        "1: /pci@i0cf8/*@1",
        "Found 2 cpu(s)",
        "Booting from Hard Disk",
    ] {
        assert!(out.stderr.contains(line), "{line:?} not in {out:?}");
    }
    // SeaBIOS read vm-run's DSDT (through the FADT's 32-bit pointer),
    // found no PS/2 keyboard in it, and did not wait for one.
    assert!(
        out.stderr.contains("ACPI: no PS/2 keyboard present"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("i8042_wait_read"), "{out:?}");
    // The EBDA stayed at the top of low memory, clear of the VM
    // generation ID's page at 0x9f000 (devices/vmgenid.rs).
    assert!(!out.stderr.contains("ebda moved"), "{out:?}");
}

#[test]
fn no_bootable_device_reboots() {
    have_seabios();
    let out = run(&["-m", "64M"], None);
    // etc/boot-fail-wait: SeaBIOS retries by resetting the machine.
    assert_eq!(out.status, 75, "{out:?}");
    assert!(out.stdout.contains("No bootable device"), "{out:?}");
}

#[test]
fn a_bios_named_by_b_boots_too() {
    have_seabios();
    let img = disk('p');
    let out = run(
        &[
            "-m",
            "64M",
            "-b",
            BIOS,
            "-B",
            "disk",
            "-d",
            img.to_str().unwrap(),
        ],
        Some("/nonexistent"),
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.contains("firmware: boot sector"), "{out:?}");
}

#[test]
fn a_missing_bios_exits_66_naming_the_package() {
    let out = run(&["-m", "64M"], Some("/nonexistent/bios.bin"));
    assert_fails(&out, 66, "/nonexistent/bios.bin: No such file");
    assert!(out.stderr.contains("seabios"), "{out:?}");
}

#[test]
fn what_is_no_bios_exits_65() {
    let d = dir();
    for (name, len) in [("empty.bin", 0), ("short.bin", 100)] {
        let p = d.join(name);
        fs::write(&p, vec![0x5au8; len]).unwrap();
        let p = p.to_str().unwrap();
        assert_fails(&run(&["-m", "64M", "-b", p], None), 65, name);
        assert_fails(&run(&["-m", "64M"], Some(p)), 65, name);
    }
}

#[test]
fn kernel_options_with_a_bios_and_b_with_a_kernel_exit_64() {
    let k = tiny_guest().to_str().unwrap();
    let img = dir().join("blank.img");
    fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let img = img.to_str().unwrap();
    assert_fails(&run(&["-b", BIOS, "-i", k], None), 64, "-i");
    assert_fails(&run(&["-a", "console=ttyS0"], None), 64, "-a");
    assert_fails(&run(&["-b", k, "-B", "disk"], None), 64, "-B");
    assert_fails(&run(&["-B", "disk"], None), 64, "-B disk: no disk");
    assert_fails(&run(&["-B", "cdrom", "-d", img], None), 64, "-B cdrom");
    assert_fails(&run(&["-B", "net"], None), 64, "-B net");
}

/// `vm-ctl`, `vm-send` and `vm-receive` through sh, with `dir` as the run
/// directory and the built tools first on the PATH.
fn sh(dir: &Path, script: &str) -> Output {
    let bins = bin("vm-run")
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let child = Command::new("sh")
        .args(["-c", script])
        .env("VM_RUNDIR", dir)
        .env(
            "PATH",
            format!("{bins}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh");
    wait_output(child, LIMIT)
}

#[test]
fn a_bios_booted_guest_is_sent_and_received_with_its_cd_rom() {
    have_seabios();
    let dir = dir().join("send");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let img = disk('x');
    // A CD-ROM the guest does not boot from: its drive's state and image
    // must travel all the same (-r on the receiving side).
    let iso = dir.join("cd.iso");
    fs::write(&iso, vec![0u8; 64 << 10]).unwrap();
    let mut cmd = Command::new(bin("vm-run"));
    cmd.args(["-N", "fw", "-m", "64M", "-d"])
        .arg(&img)
        .arg("-r")
        .arg(&iso)
        .env_remove("VM_RUN_BIOS")
        .stdin(Stdio::null());
    let g = Tiny::spawn(cmd, &dir, "fw");
    let mut con = Console::attach(&dir, "fw");
    // The boot sector echoes once SeaBIOS has run it (what SeaBIOS
    // prints has no '%').
    let mut echoed = false;
    for _ in 0..60 {
        con.type_in("%");
        if con.wait_for("%", Duration::from_secs(2)) {
            echoed = true;
            break;
        }
    }
    assert!(echoed, "the boot sector never echoed: {}", con.seen());
    drop(con);
    let snap = dir.join("snap");
    let o = sh(&dir, &format!("vm-send fw > {}", snap.display()));
    assert_eq!(o.status, 0, "{o:?}");
    assert_eq!(g.end().status, 0);
    // Without -r the receiver is told what the stream had.
    let o = sh(
        &dir,
        &format!(
            "vm-receive -N fw2 -d {} < {}",
            img.display(),
            snap.display()
        ),
    );
    assert_eq!(o.status, 64, "{o:?}");
    assert!(o.stderr.contains("the guest had a CD-ROM"), "{o:?}");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!(
            "exec vm-receive -N fw2 -d {} -r {} < {}",
            img.display(),
            iso.display(),
            snap.display()
        ),
    ])
    .env(
        "PATH",
        format!(
            "{}:{}",
            bin("vm-run").parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    )
    .stdin(Stdio::null());
    let g = Tiny::spawn(cmd, &dir, "fw2");
    let mut con = Console::attach(&dir, "fw2");
    con.type_in("%received%");
    assert!(
        con.wait_for("%received%", Duration::from_secs(10)),
        "the received guest does not echo: {}",
        con.seen()
    );
    // It is sent on again, CD-ROM, BIOS and all.
    let o = sh(&dir, "vm-send -k fw2 > /dev/null");
    assert_eq!(o.status, 0, "{o:?}");
    con.type_in("%again%");
    assert!(
        con.wait_for("%again%", Duration::from_secs(10)),
        "{}",
        con.seen()
    );
    assert_eq!(sh(&dir, "vm-ctl stop -f fw2").status, 0);
    let out = g.end();
    assert_eq!(out.status, 0, "{out:?}");
}
