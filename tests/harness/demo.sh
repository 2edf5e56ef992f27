#!/bin/sh
# make demo: boots the Linux guest fixture (Debian's cloud kernel, busybox)
# with vm-run, its console on this terminal. Where /dev/kvm is hardware
# KVM (VT-x or AMD-V) the guest runs right here; elsewhere (this team's
# PVM-backed machines) vm-run runs inside the emulated test host.
# On a terminal the guest gives a shell: `poweroff -f` ends it. Without
# one it prints a few facts and powers off.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/x86_64-unknown-linux-musl/release
fix=$root/target/guest
if [ -t 0 ]; then
	params='end=shell'
else
	params='run="uname -sr; grep -c ^processor /proc/cpuinfo; cat /sys/block/vda/size"'
fi
opts="-c 2 -m 256M"
# A sparse scratch disk: /dev/vda in the guest (try mke2fs /dev/vda).
disk=64M

if [ -c /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]; then
	echo "demo: hardware KVM here: vm-run boots the guest directly" >&2
	truncate -s $disk "$root/target/demo-scratch.img"
	eval exec "$bin/vm-run" $opts -d "$root/target/demo-scratch.img" \
		-b "$fix/bzImage" -i "$fix/initrd.gz" \
		-a "'console=ttyS0 quiet $params'"
fi

echo "demo: /dev/kvm here cannot boot Linux (PVM or none): booting the" \
	"emulated test host (QEMU TCG with kvm-amd), then vm-run inside it" >&2
scenario=$root/target/demo-scenario.sh
cat > "$scenario" <<SCENARIO
truncate -s $disk /tmp/scratch.img
echo "demo: vm-run $opts -d scratch.img -b bzImage -i initrd.gz (inside the test host)"
vm-run $opts -d /tmp/scratch.img -b /guest/bzImage -i /guest/initrd.gz -a 'console=ttyS0 quiet $params'
echo "demo: vm-run exited with status \$?"
SCENARIO
exec "$root/tests/harness/run-host.sh" -b "$bin" "$scenario"
