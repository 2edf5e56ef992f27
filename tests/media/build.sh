#!/bin/sh
# Usage: tests/media/build.sh OUTDIR [NAME...]
# Builds boot media for the firmware tests and benchmark from Debian 12
# packages only (debootstrap and apt-get download from the mirror apt is
# configured with), into OUTDIR:
#   debian.raw  Debian 12 on a 2 GiB sparse MBR disk, one ext4 partition,
#               GRUB in the MBR gap, serial console, root logged in on ttyS0
#   grub.iso    a hybrid GRUB rescue ISO (CD and disk) whose menu boots the
#               guest fixture's kernel and initramfs to a marker line
#   di.iso      Debian's installer on an isolinux CD (El Torito, no MBR)
# NAME limits the build to those media. Each medium is rebuilt only when
# it is missing or its recipe (NAME.sh and NAME/*, grub.iso also the
# fixture's stamp) changed; debs are kept in OUTDIR/debs. grub.iso takes
# the fixture from FIXTURE (default target/guest; make fixture builds it).
# tests/README.md ("Boot media") says what each medium does on boot.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [debian.raw] [grub.iso] [di.iso]" >&2; exit 64; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
names=${*:-debian.raw grub.iso di.iso}
export FIXTURE="${FIXTURE:-$here/../../target/guest}"

# Tools come from tests/harness/setup.sh (make setup); say which is missing
# rather than fail halfway through a build.
missing=
for t in debootstrap sfdisk mkfs.ext4 grub-mkimage grub-mkrescue xorriso mformat dpkg-deb; do
    command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
done
for f in /usr/lib/grub/i386-pc/boot.img /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32; do
    [ -e "$f" ] || missing="$missing $f"
done
[ -z "$missing" ] || { echo "$0: missing$missing (run tests/harness/setup.sh)" >&2; exit 69; }

for name in $names; do
    recipe=$here/${name%%.*}-${name#*.}
    [ -f "$recipe.sh" ] || { echo "$0: $name: no such medium" >&2; exit 64; }
    extra=
    [ "$name" != grub.iso ] || extra=$FIXTURE/stamp
    sum=$(cat "$recipe.sh" "$recipe"/* $extra | sha256sum | cut -d' ' -f1)
    if [ -f "$out/$name" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$sum" ]; then
        continue
    fi
    rm -f "$out/$name.stamp"
    start=$(date +%s)
    sh "$recipe.sh" "$out" "$recipe"
    echo "$sum" > "$out/$name.stamp"
    echo "build.sh: $name: $(du -k --apparent-size "$out/$name" | cut -f1) KiB, $(du -k "$out/$name" | cut -f1) KiB on disk, $(( $(date +%s) - start )) s" >&2
done
