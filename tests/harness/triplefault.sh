#!/bin/sh
# Usage: tests/harness/triplefault.sh [-c VCPUS] [-n BOOTS] [-f FAULTS]
# Run by hand (not in CI, not in make test): catches guests' triple faults
# and hangs in the emulated test host with the host's KVM tracepoints on.
# Boots the cloud kernel (nokaslr) with VCPUS (default 4) vCPUs up to BOOTS
# (default 60) times in one test-host boot, until FAULTS (default 3)
# triple faults or hangs (a guest still running after 120 s); for each
# triple fault, prints the vCPU's last exits and interrupt injections
# (kvm_exit's intr_info on the shutdown exit is the event that was being
# delivered: 0x800000VV, vector VV), for a hang the guest's last lines;
# for both, the guest functions of every vCPU's last exits, from the
# guest's own /proc/kallsyms (a first boot writes it to a disk). The
# whole console stays in target/testhost/triplefault.log.
# tests/README.md has what it found.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cpus=4 boots=60 faults=3
while getopts c:n:f: o; do
    case $o in c) cpus=$OPTARG ;; n) boots=$OPTARG ;; f) faults=$OPTARG ;; *) sed -n 's/^# \{0,1\}//; 2,14p' "$0" >&2; exit 2 ;; esac
done
case $cpus$boots$faults in *[!0-9]*) echo "triplefault.sh: numbers only" >&2; exit 2 ;; esac
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/scenario.sh" <<EOF
CPUS=$cpus BOOTS=$boots FAULTS=$faults
EOF
cat >> "$tmp/scenario.sh" <<'EOF'
exec 2>&1
cmdline='console=ttyS0 quiet nokaslr'
dd if=/dev/zero of=/tmp/ks.img bs=1M count=16 2>/dev/null
timeout -s KILL 300 vm-run -c 1 -m 256M -b /guest/bzImage -i /guest/initrd.gz -d /tmp/ks.img \
    -a "$cmdline run=\"cat /proc/kallsyms > /dev/vda; sync\"" > /dev/null 2>&1
tr -d '\000' < /tmp/ks.img | grep -i ' t ' | sort > /tmp/ks
# The function a RIP (16 hex digits, lower case: they compare as strings) is in.
fn() { awk -v r="$1" '$1 <= r { s = $3 } $1 > r { exit } END { print s }' /tmp/ks; }
t=/sys/kernel/tracing
mount -t tracefs none $t 2>/dev/null || true
echo 4096 > $t/buffer_size_kb
for e in kvm_exit kvm_inj_virq kvm_page_fault kvm_userspace_exit; do echo 1 > $t/events/kvm/$e/enable; done
n=0 f=0
while [ $n -lt $BOOTS ] && [ $f -lt $FAULTS ]; do
    n=$((n + 1))
    echo > $t/trace; echo 1 > $t/tracing_on
    timeout -s KILL 120 vm-run -c $CPUS -m 256M -b /guest/bzImage -i /guest/initrd.gz -a "$cmdline" > /tmp/g.out 2>&1
    rc=$?
    echo "boot $n: status $rc"
    echo 0 > $t/tracing_on
    if grep -q 'triple fault' /tmp/g.out; then
        v=$(grep 'reason shutdown' $t/trace | head -n 1 | sed 's/.*kvm_exit: vcpu \([0-9]*\) .*/\1/')
        echo "TRIPLE-FAULT boot $n vcpu $v"
        grep -E "vcpu$v-.*(kvm_inj_virq|kvm_page_fault)|kvm_exit: vcpu $v " $t/trace | tail -n 8 |
            sed 's/^.*\] [^ ]* *\([0-9.]*\): /  \1 /; s/ info1.*intr_info/ intr_info/'
    elif [ $rc = 137 ]; then
        echo "HANG boot $n: killed after 120 s; the guest's last lines:"
        tail -n 3 /tmp/g.out | sed 's/^/  | /'
    else
        continue
    fi
    f=$((f + 1))
    for c in $(seq 0 $((CPUS - 1))); do
        grep "kvm_exit: vcpu $c " $t/trace | tail -n 3 | sed 's/.*reason \([^ ]*\) rip 0x\([0-9a-f]*\).*/\1 \2/' |
            while read why rip; do echo "  vcpu$c $why $rip $(fn $rip)"; done
    done
done
echo "TRIPLEFAULT-SUMMARY boots=$n triple_faults_and_hangs=$f vcpus=$CPUS"
EOF
log=$root/target/testhost/triplefault.log
mkdir -p "${log%/*}"
rc=0
"$root/tests/harness/run-host.sh" -s 400 -t 3000 "$tmp/scenario.sh" > "$log" || rc=$?
awk '/^(TRIPLE-FAULT|HANG) /{on=1} /^TRIPLEFAULT-SUMMARY/{print; exit} on && !/^boot [0-9]*: status/ && !/^\[ *[0-9.]*\] /' "$log"
[ $rc = 0 ] || { echo "triplefault.sh: the test host failed (status $rc): $log" >&2; exit $rc; }
