//! Debian's Linux kernel booted by vm-run on a real hardware-style KVM:
//! kvm-amd inside the emulated test host (see tests/harness/testhost.rs).
//! Every test here shares one boot of the test host; each asserts on its
//! own scenario's console output and vm-run's exit status.

use std::sync::OnceLock;

use vm_tests::testhost::{self, guest, Case, Report, Scenario};

/// Starts vm-run in the background with its console in /tmp/NAME.out, and
/// waits (at most 5 minutes, then kills it) for the fixture's init to
/// come up.
fn background(name: &str, params: &str) -> String {
    format!(
        "{g} > /tmp/{name}.out 2>&1 < /tmp/{name}.in & pid=$!\n\
         i=0; until grep -q VMTEST-INIT-OK /tmp/{name}.out || [ $i -gt 300 ]; do sleep 1; i=$((i+1)); done\n\
         [ $i -le 300 ] || kill -KILL $pid",
        g = guest("-m 256M", "bzImage", params)
    )
}

/// The guest's clock against the host's over a `sleep 5`, and the
/// kernel's word on its timers (for the console log: the PIT is left out
/// by default, `-P on` puts it in).
fn clock_script(opts: &str) -> String {
    format!(
        "echo HOST=$(date +%s)\n{}\nrc=$?\necho HOST=$(date +%s)\nexit $rc",
        guest(
            &format!("{opts}-m 256M"),
            "bzImage",
            "run=\"dmesg | grep -i -e tsc -e clocksource -e timer -e pit -e hpet -e calibrat; \
             cat /sys/devices/system/clocksource/clocksource0/current_clocksource; \
             echo GUEST=$(date +%s); sleep 5; echo GUEST=$(date +%s)\"",
        )
    )
}

fn scenarios() -> Vec<Scenario> {
    let mut s = vec![
        Scenario {
            name: "boot",
            script: guest(
                "-m 256M",
                "bzImage",
                "vmtest-token=c0ffee run=\"cat /proc/cmdline\"",
            ),
        },
        Scenario {
            name: "pvh",
            script: guest("-m 256M", "vmlinux", "run=\"echo PVH-OK\""),
        },
        Scenario {
            name: "reboot",
            script: guest("-m 256M", "bzImage", "end=reboot"),
        },
        Scenario {
            // reboot=t: Linux reboots by a triple fault (no IDT, int3).
            // The scenario succeeds with vm-run's status in its output:
            // the harness runs a failed one whose guest triple-faulted
            // again (testhost.rs).
            name: "triple",
            script: format!(
                "{}\necho VM-RUN-STATUS=$?",
                guest("-m 256M", "bzImage", "reboot=t end=reboot")
            ),
        },
        Scenario {
            name: "acpi",
            script: guest(
                "-m 4G",
                "bzImage",
                "run=\"ls /sys/firmware/acpi/tables; grep MemTotal /proc/meminfo\"",
            ),
        },
        Scenario {
            name: "clock",
            script: clock_script(""),
        },
        Scenario {
            name: "clock-pit",
            script: clock_script("-P on "),
        },
        Scenario {
            name: "console",
            // Types into the guest's shell once it is up, through a fifo on
            // vm-run's stdin. busybox's first prompt asks the terminal for
            // its cursor position and takes the first keys typed for the
            // answer, hence a line to spare.
            script: format!(
                "mkfifo /tmp/console.in; exec 3<>/tmp/console.in\n{}\nsleep 3\n\
                 echo 'true; true; true' >&3; sleep 2\n\
                 echo 'echo typed-$((6*7))' >&3; sleep 3; echo 'poweroff -f' >&3\n\
                 wait $pid; rc=$?; cat /tmp/console.out; exit $rc",
                background("console", "end=shell")
            ),
        },
        Scenario {
            name: "sigterm",
            script: format!(
                "touch /tmp/sigterm.in\n{}\nkill -TERM $pid; wait $pid; rc=$?; \
                 cat /tmp/sigterm.out; exit $rc",
                background("sigterm", "end=hang")
            ),
        },
    ];
    for (name, n) in [("cpus1", 1), ("cpus2", 2), ("cpus4", 4)] {
        s.push(Scenario {
            name,
            script: guest(
                &format!("-c {n} -m 256M"),
                "bzImage",
                "run=\"echo CPUS=$(grep -c ^processor /proc/cpuinfo) \
                 SOCKETS=$(grep ^physical.id /proc/cpuinfo | sort -u | wc -l)\"",
            ),
        });
    }
    s
}

fn case(name: &str) -> &'static Case {
    static REPORT: OnceLock<Report> = OnceLock::new();
    REPORT
        .get_or_init(|| testhost::run("linux", &scenarios(), false))
        .case(name)
}

fn assert_booted(c: &Case) {
    assert!(
        c.output.contains("VMTEST-INIT-OK"),
        "no init marker:\n{}",
        c.output
    );
}

#[test]
fn bzimage_boots_to_init_and_poweroff_exits_0() {
    let c = case("boot");
    assert_booted(c);
    assert!(
        c.output.contains("vmtest-token=c0ffee"),
        "command line lost:\n{}",
        c.output
    );
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn elf_kernel_boots_through_pvh() {
    let c = case("pvh");
    assert_booted(c);
    assert!(c.output.contains("\nPVH-OK"), "{}", c.output);
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn reboot_exits_75() {
    let c = case("reboot");
    assert_booted(c);
    assert_eq!(c.status, 75, "{}", c.output);
    assert!(!c.output.contains("vm-run:"), "quiet: {}", c.output);
}

#[test]
fn a_triple_fault_exits_75_and_names_the_vcpu() {
    let c = case("triple");
    assert_booted(c);
    assert!(c.output.contains("VM-RUN-STATUS=75\n"), "{}", c.output);
    assert!(
        c.output
            .contains("vm-run: vcpu0: triple fault: the guest was reset"),
        "{}",
        c.output
    );
}

#[test]
fn guest_sees_every_vcpu() {
    for (name, n) in [("cpus1", 1), ("cpus2", 2), ("cpus4", 4)] {
        let c = case(name);
        // One socket of n cores, as the CPUID topology and MADT say.
        let want = format!("CPUS={n} SOCKETS=1\n");
        assert!(c.output.contains(&want), "{name}:\n{}", c.output);
        assert_eq!(c.status, 0, "{name}:\n{}", c.output);
    }
}

#[test]
fn acpi_tables_and_memory_above_4g() {
    let c = case("acpi");
    for table in ["APIC", "DSDT", "FACP"] {
        assert!(c.output.contains(table), "no {table}:\n{}", c.output);
    }
    let kib: u64 = c
        .output
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal:\n{}", c.output));
    // 4 GiB less what the kernel keeps for itself: well above the 3 GiB
    // that fit below the hole.
    assert!(kib > 3_700_000, "MemTotal {kib} kB");
    assert_eq!(c.status, 0);
}

fn values(out: &str, key: &str) -> Vec<i64> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.parse().ok())
        .collect()
}

/// Without a PIT (a kernel booted directly, by default) and with one
/// (`-P on`), Linux boots on kvmclock and keeps the host's time.
#[test]
fn kvmclock_keeps_guest_time_with_the_host() {
    for name in ["clock", "clock-pit"] {
        guest_keeps_time(case(name));
    }
}

fn guest_keeps_time(c: &Case) {
    assert!(c.output.contains("\nkvm-clock"), "{}", c.output);
    let host = values(&c.output, "HOST=");
    let guest = values(&c.output, "GUEST=");
    assert_eq!((host.len(), guest.len()), (2, 2), "{}", c.output);
    // The guest's wall clock starts from the host's and runs at its pace.
    for g in &guest {
        assert!(
            host[0] - 1 <= *g && *g <= host[1] + 1,
            "{guest:?} not within {host:?}"
        );
    }
    let slept = guest[1] - guest[0];
    assert!(
        (5..=7).contains(&slept),
        "sleep 5 took {slept} s of guest time"
    );
    assert_eq!(c.status, 0);
}

#[test]
fn typing_into_the_console_reaches_the_guest_shell() {
    let c = case("console");
    assert!(c.output.contains("typed-42"), "{}", c.output);
    assert_eq!(c.status, 0, "{}", c.output);
}

#[test]
fn sigterm_stops_a_running_linux_guest_with_0() {
    let c = case("sigterm");
    assert_booted(c);
    assert_eq!(c.status, 0, "{}", c.output);
}
