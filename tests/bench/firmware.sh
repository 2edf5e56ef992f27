#!/bin/sh
# Firmware boot on this machine's /dev/kvm, as tests/bench/run.sh's
# section (or alone: `make`, then tests/bench/firmware.sh [OUT]): Debian's
# SeaBIOS loads the boot sector of tests/firmware/boot.S from a raw disk,
# under vm-run (no -b) and under QEMU -M pc (same BIOS file, same disk as
# virtio-blk), alternating. The boot sector's first line is the mark;
# it then resets, which ends vm-run (75); QEMU reads vm-run's ACPI layout
# wrong and goes on, so its run is ended after 20 s and its exit, CPU
# and RSS figures mean nothing here. A Linux guest through GRUB is not
# measured yet (issue 18: needs the media of tests/media in the test host).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-/dev/stdout}
bin=$root/target/x86_64-unknown-linux-musl/release
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cc "-DACTION='r'" -c "$root/tests/firmware/boot.S" -o "$tmp/boot.o"
ld -m elf_x86_64 -Ttext 0x7c00 --oformat binary -e _start "$tmp/boot.o" -o "$tmp/boot.bin"
truncate -s 1M "$tmp/boot.bin"
runs=${FIRMWARE_ROUNDS:-5}
echo "bench: SeaBIOS to a boot sector, vm-run and QEMU -M pc ($runs rounds)" >&2
"$bin/vm-bench" -n "$runs" -k "firmware: boot sector" \
	"vm-run=timeout -s KILL 20 $bin/vm-run -m 64M -d $tmp/boot.bin" \
	"QEMU pc=timeout -s KILL 20 qemu-system-x86_64 -M pc -enable-kvm -cpu host,-arch-capabilities \
	-m 64M -nodefaults -no-user-config -nographic -serial stdio -monitor none -no-reboot \
	-bios /usr/share/seabios/bios-256k.bin -drive file=$tmp/boot.bin,format=raw,if=virtio" > "$tmp/table"
{
cat <<HEAD
## Firmware boot on this machine's /dev/kvm

Debian's SeaBIOS ($(dpkg-query -W -f '${Version}' seabios 2>/dev/null || echo '?')) to the first line of a boot sector
(\`tests/firmware/boot.S\`) on a raw virtio disk: vm-run with no \`-b\`
against QEMU \`-M pc\` with the same BIOS file. This machine's KVM is
PVM-backed and emulates much of real mode, so both spend seconds in the
BIOS; only the first row compares them (QEMU's run is ended after 20 s).
\`tests/bench/firmware.sh\`, $runs rounds, $(uptime | sed 's/.*load/load/').

HEAD
cat "$tmp/table"
} > "$out"
