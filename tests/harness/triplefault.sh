#!/bin/sh
# Usage: tests/harness/triplefault.sh [-c VCPUS] [-n BOOTS] [-f FAULTS] [-p PARAMS]
# Run by hand (not in CI, not in make test): catches guests' triple faults
# and hangs in the emulated test host with the host's KVM tracepoints on.
# Boots the cloud kernel (nokaslr) with VCPUS (default 4) vCPUs up to BOOTS
# (default 60) times in one test-host boot, until FAULTS (default 3)
# triple faults or hangs (a guest still running after 120 s); for each
# triple fault, prints the vCPU's last exits and interrupt injections
# (kvm_exit's intr_info on the shutdown exit is the event that was being
# delivered: 0x800000VV, vector VV), for a hang the guest's last lines
# and each of vm-run's threads' state and kernel stack; for both, the
# guest functions of every vCPU's last exits, from the guest's own
# /proc/kallsyms (a first boot writes it to a disk), and its last nested
# page faults. The whole console stays in target/testhost/triplefault.log.
# -p reloads kvm_amd with PARAMS first (e.g. npt=0: shadow paging instead
# of the emulated CPU's nested paging).
# tests/README.md has what it found.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cpus=4 boots=60 faults=3 params=
while getopts c:n:f:p: o; do
    case $o in c) cpus=$OPTARG ;; n) boots=$OPTARG ;; f) faults=$OPTARG ;; p) params=$OPTARG ;;
    *) sed -n 's/^# \{0,1\}//; 2,17p' "$0" >&2; exit 2 ;; esac
done
case $cpus$boots$faults in *[!0-9]*) echo "triplefault.sh: numbers only" >&2; exit 2 ;; esac
case $params in *[!a-z0-9_=\ ]*) echo "triplefault.sh: -p takes name=value words" >&2; exit 2 ;; esac
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/scenario.sh" <<EOF
CPUS=$cpus BOOTS=$boots FAULTS=$faults PARAMS='$params'
EOF
cat >> "$tmp/scenario.sh" <<'EOF'
exec 2>&1
if [ -n "$PARAMS" ]; then
    # kvmhold (the host's /init) keeps a VM open, which pins the module.
    for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" != kvmhold ] || kill ${d#/proc/}; done; sleep 1
    rmmod kvm_amd && insmod /lib/modules/kvm-amd.ko $PARAMS || { echo "kvm_amd: reloading with $PARAMS failed"; exit 1; }
    kvmhold &
fi
echo "kvm_amd: $(cd /sys/module/kvm_amd/parameters && for p in npt avic nested; do printf '%s=%s ' $p "$(cat $p)"; done)"
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
    vm-run -c $CPUS -m 256M -b /guest/bzImage -i /guest/initrd.gz -a "$cmdline" > /tmp/g.out 2>&1 &
    pid=$! i=0
    while [ -d /proc/$pid ] && [ "$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)" != Z ] && [ $i -lt 600 ]; do
        sleep 0.2; i=$((i + 1))
    done
    if [ $i -ge 600 ]; then
        # Still running after 120 s: where each of vm-run's threads is
        # (in KVM_RUN, in the guest, or waiting in vm-run), before the kill.
        echo 0 > $t/tracing_on
        for d in /proc/$pid/task/*; do
            echo "  thread $(cat $d/comm): state $(cut -d' ' -f3 $d/stat) wchan $(cat $d/wchan 2>/dev/null) syscall $(cut -d' ' -f1 $d/syscall 2>/dev/null)"
            sed 's/^/    /' $d/stack 2>/dev/null | head -n 6
        done > /tmp/threads
        kill -9 $pid
    fi
    wait $pid; rc=$?
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
        cat /tmp/threads
    else
        continue
    fi
    f=$((f + 1))
    for c in $(seq 0 $((CPUS - 1))); do
        grep "kvm_exit: vcpu $c " $t/trace | tail -n 3 | sed 's/.*reason \([^ ]*\) rip 0x\([0-9a-f]*\).*/\1 \2/' |
            while read why rip; do echo "  vcpu$c $why $rip $(fn $rip)"; done
        # The last nested page faults: in a hang, the address one loops on.
        grep "vcpu$c-.*kvm_page_fault" $t/trace | tail -n 2 | sed "s/.*kvm_page_fault: /  vcpu$c page fault: /"
    done
done
echo "TRIPLEFAULT-SUMMARY boots=$n triple_faults_and_hangs=$f vcpus=$CPUS kvm_amd=$PARAMS"
EOF
log=$root/target/testhost/triplefault.log
mkdir -p "${log%/*}"
rc=0
"$root/tests/harness/run-host.sh" -s 400 -t 3000 "$tmp/scenario.sh" > "$log" || rc=$?
awk '/^kvm_amd: /{print} /^(TRIPLE-FAULT|HANG) /{on=1} /^TRIPLEFAULT-SUMMARY/{print; exit} on && !/^boot [0-9]*: status/ && !/^\[ *[0-9.]*\] /' "$log"
[ $rc = 0 ] || { echo "triplefault.sh: the test host failed (status $rc): $log" >&2; exit $rc; }
