#!/bin/sh
# Regenerates the qcow2 seed corpus in this folder with QEMU's own tools
# (Debian's qemu-utils: qemu-img and qemu-io). Every image is small
# (4 KiB clusters unless said, a few MiB of virtual size), so that the
# fuzzer's inputs stay small; see README.md.
#
#   tests/qcow2-corpus/make.sh          rewrites the *.qcow2 files here
set -eu

cd "$(dirname "$0")"
command -v qemu-img >/dev/null && command -v qemu-io >/dev/null || {
	echo "make.sh: needs qemu-img and qemu-io (apt-get install qemu-utils)" >&2
	exit 1
}

# qemu-io's abort (dirty-lazy.qcow2) must not leave a core file behind.
ulimit -c 0

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

img() { qemu-img create -q -f qcow2 "$@"; }
io() { f=$1; shift; qemu-io -f qcow2 "$@" "$f" >/dev/null; }

rm -f ./*.qcow2

# v3, nothing written: header, refcount table and block, L1 table.
img -o cluster_size=4k empty-v3.qcow2 1M

# v3 with data: the first two clusters, a write that is not cluster
# aligned and spans three clusters, and the last cluster.
img -o cluster_size=4k data-v3.qcow2 4M
io data-v3.qcow2 -c 'write -P 0xaa 0 8k' -c 'write -P 0x55 1049088 9k' \
	-c 'write -P 0x11 4190208 4k'

# Compressed clusters (zlib), converted from a raw file of patterns.
qemu-io -f raw -c 'write -P 0xaa 0 8k' -c 'write -P 0x37 64k 12k' \
	-c 'write -P 0xc3 200k 4k' "$(qemu-img create -q -f raw "$tmp/c.raw" 256k && echo "$tmp/c.raw")" >/dev/null
qemu-img convert -c -f raw -O qcow2 -o cluster_size=4k "$tmp/c.raw" compressed.qcow2

# Version 2 (compat=0.10), with data.
img -o compat=0.10,cluster_size=4k v2.qcow2 1M
io v2.qcow2 -c 'write -P 0x42 0 6k' -c 'write -P 0x43 512k 4k'

# A base that the fuzzer does not have: opening fails at the backing file.
img -o cluster_size=4k "$tmp/missing-base.qcow2" 1M
img -o cluster_size=4k -b "$tmp/missing-base.qcow2" -F qcow2 backing-missing.qcow2 1M
io backing-missing.qcow2 -c 'write -P 0x66 4k 4k'
qemu-img rebase -q -u -b missing-base.qcow2 -F qcow2 backing-missing.qcow2

# A raw base named base.raw: the fuzz entry point (vm-img/src/qcow2/fuzz.rs)
# puts a 64 KiB base.raw beside the image, so this chain opens. The
# overlay is larger than its base, and a partial write copies from it.
qemu-io -f raw -c 'write -P 0x5a 0 64k' \
	"$(qemu-img create -q -f raw "$tmp/base.raw" 64k && echo "$tmp/base.raw")" >/dev/null
img -o cluster_size=4k -b "$tmp/base.raw" -F raw backing-raw.qcow2 1M
io backing-raw.qcow2 -c 'write -P 0x77 5k 2k' -c 'write -P 0x78 60k 8k'
qemu-img rebase -q -u -b base.raw -F raw backing-raw.qcow2

# v3 zero clusters: on allocated clusters (kept, flagged zero) and on
# unallocated ones (write -z -u: no host cluster).
img -o cluster_size=4k zero-clusters.qcow2 1M
io zero-clusters.qcow2 -c 'write -P 0xaa 0 32k' -c 'write -z 8k 8k' \
	-c 'write -z -u 20k 4k' -c 'write -z 256k 16k'

# The smallest clusters: 512 bytes (L2 tables of 64 entries).
img -o cluster_size=512 cluster-512.qcow2 1M
io cluster-512.qcow2 -c 'write -P 0xaa 0 2k' -c 'write -P 0xbb 300k 1536'

# 16 KiB clusters: the header's first cluster is more than 4 KiB.
img -o cluster_size=16k cluster-16k.qcow2 4M
io cluster-16k.qcow2 -c 'write -P 0xaa 16k 4k'

# Refcounts 1 and 64 bits wide.
img -o cluster_size=4k,refcount_bits=1 refcount-1.qcow2 1M
io refcount-1.qcow2 -c 'write -P 0xaa 0 12k'
img -o cluster_size=4k,refcount_bits=64 refcount-64.qcow2 1M
io refcount-64.qcow2 -c 'write -P 0xaa 0 12k'

# An internal snapshot, then writes: shared clusters (refcount 2),
# copied flags cleared, a snapshot table and its L1 table.
img -o cluster_size=4k snapshot.qcow2 1M
io snapshot.qcow2 -c 'write -P 0xaa 0 16k'
qemu-img snapshot -c first snapshot.qcow2
io snapshot.qcow2 -c 'write -P 0xbb 4k 4k'

# Lazy refcounts left dirty by a crash (qemu-io's abort): the dirty bit
# is set and the refcounts are stale, so it is refused for writing.
img -o cluster_size=4k,lazy_refcounts=on dirty-lazy.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0xaa 0 8k' -c abort dirty-lazy.qcow2 >/dev/null 2>&1 || true

ls -l ./*.qcow2
