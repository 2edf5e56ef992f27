#!/bin/sh
# Start-up and exit on this machine's /dev/kvm with the tiny guest:
# vm-run (without a PIT, as it boots a kernel, and with -P on) against
# QEMU microvm and against the floor (tests/bench/floor.c: a VM, a memory
# slot and a vCPU; with the in-kernel irqchip, closed before exit or not;
# with it and the PIT), alternating, in one vm-bench run; then vm-run -v's
# own account of where its time went. With OLD=path/to/vm-run an older build runs
# alongside, with FIRECRACKER=path/to/firecracker Firecracker and with
# CLOUD_HYPERVISOR=path Cloud Hypervisor (lib.sh). Writes a Markdown section to $1 (stdout). Under a minute.
# usage: startup.sh [out] [runs]
set -eu
. "$(dirname "$0")/lib.sh"
out=${1:-/dev/stdout}
runs=${2:-15}
tiny_guest
floor=$root/target/tiny-guest/floor
cc -O2 -static -o "$floor" "$root/tests/bench/floor.c"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

set -- "vm-run=$bin/vm-run -m 128M -b $tiny -a bench" \
	"vm-run -P on=$bin/vm-run -P on -m 128M -b $tiny -a bench"
if [ -n "${OLD:-}" ]; then
	set -- "$@" "vm-run (old)=$OLD -m 128M -b $tiny -a bench"
fi
if [ -n "${FIRECRACKER:-}" ]; then
	fc_config 128 bench > "$tmp/fc.json"
	set -- "$@" "Firecracker=$FIRECRACKER --no-api --level Error --config-file $tmp/fc.json"
fi
if [ -n "${CLOUD_HYPERVISOR:-}" ]; then
	tiny_guest_ch
	set -- "$@" "Cloud Hypervisor=$CLOUD_HYPERVISOR $(ch_args 128 bench)"
fi
load0=$(uptime)
"$bin/vm-bench" -n "$runs" -k "tiny: bench" "$@" \
	"floor=$floor" \
	"floor + irqchip=$floor -i" \
	"floor + irqchip, closed=$floor -i -c" \
	"floor + irqchip + PIT=$floor -p" \
	"QEMU microvm=qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities \
	-m 128M -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-device isa-debug-exit,iobase=0xf4,iosize=1 -kernel $tiny -append bench" > "$tmp/table"

# vm-run's own account (-v): from exec to the first KVM_RUN, from the
# guest's last exit to vm-run's table (the vCPUs stopped and closed), and
# the VM's close (KVM's teardown, after the disks are flushed and the
# console drained: what is left is exit_group).
i=0
while [ $i -lt "$runs" ]; do
	"$bin/vm-run" -v -m 128M -b "$tiny" -a bench 2>&1 >/dev/null |
		sed -n -e 's/.*first vCPU entry \([0-9.]*\) ms after start, last exit \([0-9.]*\) ms, table \([0-9.]*\) ms/\1 \2 \3/p' \
			-e 's/.*the VM closed in \([0-9.]*\) ms, \([0-9.]*\) ms after start/\1 \2/p' | paste -s -d ' '
	i=$((i + 1))
done > "$tmp/v"
load1=$(uptime)
med() { sort -n | awk '{v[NR] = $1} END {printf "%.1f ms [%.1f–%.1f]", v[int((NR + 1) / 2)], v[1], v[NR]}'; }

{
cat <<HEAD
## Start-up and exit

\`tests/bench/startup.sh\` ($runs rounds, alternating; $(nproc) cores,
load average ${load0##*average: }, after ${load1##*average: }).
The tiny guest as in the table above; "floor" is
\`tests/bench/floor.c\`, the least a KVM VMM does: KVM_CREATE_VM, one
memory slot, one vCPU, four bytes of real-mode code that write to a
port, then exit (\`-i\`: with the in-kernel irqchip; \`-c\`: the vCPU and
the VM closed before the exit, as vm-run does; \`-p\`: and the PIT, as
vm-run has them with a BIOS or \`-P on\`).

HEAD
cat "$tmp/table"
cat <<MID

vm-run's own account of the same runs (\`vm-run -v\`, times from exec):

| $runs runs, median [min–max] | |
|---|---|
| exec to the first KVM_RUN | $(awk '{print $1}' "$tmp/v" | med) |
| the guest's last exit to the vCPUs closed (-v table) | $(awk '{print $3 - $2}' "$tmp/v" | med) |
| closing the VM (KVM's teardown) | $(awk '{print $4}' "$tmp/v" | med) |
| the guest's last exit to the VM closed | $(awk '{print $5 - $2}' "$tmp/v" | med) |
MID
} > "$out"
