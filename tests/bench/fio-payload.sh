#!/bin/sh
# Usage: tests/bench/fio-payload.sh OUTDIR
# Debian's fio with every library it links, for the disk benchmark:
#   OUTDIR/fio.cpio.gz    fio, its libraries and /bench/fio-jobs.sh, to
#                         append to the guest's initramfs
#   OUTDIR/bench.cpio.gz  the same for the test host, plus fio.cpio.gz
#                         itself under /bench, to hand on to guests
# Cached: rebuilt when this script, the jobs or the fio binary change.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
command -v fio >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
}
fio=$(command -v fio)
sum=$(cat "$0" "$here/fio-jobs.sh" "$fio" | sha256sum | cut -d' ' -f1)
[ -f "$out/bench.cpio.gz" ] && [ "$(cat "$out/fio.stamp" 2>/dev/null)" = "$sum" ] && exit 0
tmp=$(mktemp -d "$out/tmp.XXXXXX"); trap 'rm -rf "$tmp"' EXIT; trap 'exit 1' INT TERM HUP
r=$tmp/fio
# fio links librados, libgfapi and friends directly: all must come along
# (about 80 MB); the dynamic loader is among what ldd lists.
for f in "$fio" $(ldd "$fio" | grep -o '/[^ ]*'); do
    mkdir -p "$r${f%/*}"; cp -L "$f" "$r$f"
done
mkdir -p "$r/bench" "$r/usr/bin"
cp "$here/fio-jobs.sh" "$r/bench/"
(cd "$r" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$out/fio.cpio.gz"
cp "$out/fio.cpio.gz" "$r/bench/"
(cd "$r" && find . -mindepth 1 | cpio -o -H newc -R 0:0 --quiet) | gzip -1 > "$out/bench.cpio.gz"
echo "$sum" > "$out/fio.stamp"
