#!/bin/sh
# Usage: tests/harness/run-host.sh [-q] [-b BINDIR] [-s SILENT_SECS] [-t TIMEOUT_SECS] [-x EXTRA.cpio.gz] SCENARIO.sh
# Boots the emulated test host (QEMU TCG with AMD SVM, kvm_amd inside) with
# SCENARIO.sh as /scenario.sh and the files of BINDIR (default
# target/x86_64-unknown-linux-musl/release, executables only) in /bin/vm/.
#   -q  also append qemu.cpio.gz (QEMU inside the host, for comparisons)
#   -s  a console silent this long is a hung host: stopped, status 3
#   -t  timeout in seconds (default 600; none when stdin is a terminal)
#   -x  also append this archive (benchmark tools, for instance)
# The console goes to stdout; exit status 0 iff it shows TESTHOST-DONE,
# 3 if the host's kernel locked up, panicked or (-s) fell silent, or its
# heartbeat stopped.
# Interactive (stdin a tty): you type into the host console; Ctrl-A x quits.
# TESTHOST_DIR (default target/testhost) and TESTHOST_KERNEL (host.sh) pick
# another build of the host; TESTHOST_ACCEL (default tcg) the outer QEMU's
# -accel, e.g. tcg,thread=single (soak.sh); TESTHOST_QEMU (default
# qemu-system-x86_64 from PATH) the outer QEMU itself. Console lines that start "gN| " are a guest's
# (soak.sh prefixes them): a lockup or panic there is not the host's.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n 's/^# \{0,1\}//; 2,18p' "$0" >&2; exit 2; }
withq=; bin=$root/target/x86_64-unknown-linux-musl/release; t=; extra=; silent=
while getopts qb:s:t:x: o; do
    case $o in q) withq=1 ;; b) bin=$OPTARG ;; s) silent=$OPTARG ;; t) t=$OPTARG ;; x) extra=$OPTARG ;; *) usage ;; esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] && [ -f "$1" ] || usage
host=${TESTHOST_DIR:-$root/target/testhost}
command -v qemu-system-x86_64 >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
}
WITH_QEMU=$withq "$root/tests/harness/host.sh" "$host"

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP
mkdir -p "$tmp/x/bin/vm"
cp "$1" "$tmp/x/scenario.sh"
[ ! -d "$bin" ] || find "$bin" -maxdepth 1 -type f -perm -u+x -exec cp {} "$tmp/x/bin/vm/" \;
(cd "$tmp/x" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$tmp/x.cpio.gz"
# The kernel unpacks concatenated (compressed) cpio archives in order.
cat "$host/host.cpio.gz" ${withq:+"$host/qemu.cpio.gz"} ${extra:+"$extra"} "$tmp/x.cpio.gz" > "$tmp/initrd"

if [ -t 0 ]; then
    fg=--foreground; t=${t:-0}     # let QEMU read the terminal; no time limit
else
    fg=; t=${t:-600}; exec </dev/null
fi
# One test host at a time on this machine (2 cores): parallel test runs,
# worktrees and benchmarks queue here instead of starving each other.
# soak.sh holds the lock for a whole series of boots and says so.
if [ -z "${TESTHOST_LOCK_HELD:-}" ]; then
    exec 9>/tmp/vm-testhost.lock
    flock 9
fi
# Now and then the test host's kernel locks up inside KVM under heavy
# guest I/O (nested SVM under TCG; see the notes of issue 3). Such a boot
# is stopped at once and reported with status 3, so that the caller can
# try again rather than wait for the timeout. So is one whose console
# says nothing for -s seconds (its guests stuck in KVM; see tests/README.md),
# and one whose kernel reports a task blocked for minutes: a host whose
# khugepaged waits for ever on a guest's memory with both CPUs idle
# (tests/README.md) prints that every 2 minutes, so it is never silent.
# A host whose heartbeat (host.sh's /init, a byte every 5 s on its second
# serial port) stops for a minute is dead: its user space stopped too,
# which no busy guest or scenario brings about (the kernel reports a CPU
# kept from scheduling for 20 s as a soft lockup).
hostlines() { grep -Ev '^g[0-9]+\| ' "$1"; }
hung='BUG: soft lockup|INFO: task .* blocked for more than'
: > "$tmp/log"; : > "$tmp/beat"
( quiet=0 seen=0 still=0 beats=0
while sleep 2; do
	hostlines "$tmp/log" | grep -Eq "$hung" && { pkill -f "$tmp/initrd"; exit 0; }
	b=$(wc -c < "$tmp/beat")
	if [ "$b" != "$beats" ]; then beats=$b still=0; elif [ "$b" != 0 ]; then still=$((still + 2)); fi
	[ $still -lt 60 ] || { : > "$tmp/dead"; pkill -f "$tmp/initrd"; exit 0; }
	[ -n "$silent" ] || continue
	n=$(wc -c < "$tmp/log")
	if [ "$n" != "$seen" ]; then seen=$n quiet=0; else quiet=$((quiet + 2)); fi
	[ $quiet -lt "$silent" ] || { : > "$tmp/silent"; pkill -f "$tmp/initrd"; exit 0; }
done ) &
watcher=$!
# TCG warns about each EPYC-Rome feature it cannot emulate; that noise is dropped.
timeout $fg -k 5 "$t" "${TESTHOST_QEMU:-qemu-system-x86_64}" -M q35 -accel "${TESTHOST_ACCEL:-tcg}" -cpu EPYC-Rome,+svm,+npt \
    -m 6G -smp 2 -nodefaults -no-user-config -nographic -serial mon:stdio -serial file:"$tmp/beat" -no-reboot \
    -kernel "$host/vmlinuz" -initrd "$tmp/initrd" \
    -append 'console=ttyS0 quiet panic=-1' 2>"$tmp/err" | tee "$tmp/log" || :
kill $watcher 2>/dev/null || :
grep -v 'TCG doesn.t support requested feature' "$tmp/err" >&2 || :
if hostlines "$tmp/log" | grep -Eq "$hung"; then
	echo "run-host.sh: the test host's kernel locked up or hung; boot abandoned" >&2
	exit 3
fi
# The host's own kernel panicking (a stack guard page hit in its KVM
# entry code, with QEMU's guests too: see tests/README.md) ends the boot
# before TESTHOST-DONE; a guest's panic on this console would not.
if ! grep -q TESTHOST-DONE "$tmp/log" && hostlines "$tmp/log" | grep -q 'Kernel panic - not syncing'; then
	echo "run-host.sh: the test host's kernel panicked; boot abandoned" >&2
	exit 3
fi
if [ -e "$tmp/dead" ]; then
	echo "run-host.sh: the test host's heartbeat stopped for 60 s; boot abandoned" >&2
	exit 3
fi
if [ -e "$tmp/silent" ]; then
	echo "run-host.sh: the test host said nothing for $silent s; boot abandoned" >&2
	exit 3
fi
grep -q TESTHOST-DONE "$tmp/log"
