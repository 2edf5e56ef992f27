#!/bin/sh
# Writes an OCI image (image-layout 1.0.0, as a tar archive) that holds
# the static vm-tools binaries in /usr/local/bin and nothing else: no
# shell, no libc, no /etc. `make oci` runs it; containerd imports it with
# `ctr images import`, and any OCI registry tool (skopeo, crane) can push it.
#
#   contrib/oci/build.sh BINDIR OUT.tar
#
# Written here rather than with docker, or buildah or umoci (Debian has
# both): the image is one layer of six files and three small JSON
# documents, less than another build dependency. The layer is
# reproducible (sorted, owner 0, mtime 0, gzip -n), so the same binaries
# give the same digests.
set -eu

die() { echo "build.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: build.sh BINDIR OUT.tar"
bins=$1 out=$2
tools="vm-run vm-ctl vm-img vm-net vm-send vm-receive"
for t in $tools; do
	[ -x "$bins/$t" ] || die "$bins/$t: missing (make builds it)"
	# A dynamic binary would need a libc the image does not have.
	if readelf -l "$bins/$t" | grep -q INTERP; then
		die "$bins/$t: not static (it names a dynamic loader)"
	fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/usr/local/bin" "$work/oci/blobs/sha256"
for t in $tools; do install -m 0755 "$bins/$t" "$work/root/usr/local/bin/$t"; done

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { wc -c <"$1" | tr -d ' '; }
blob() { # FILE: moves it into blobs/ under its digest, prints the digest
	d=$(sha "$1")
	mv "$1" "$work/oci/blobs/sha256/$d"
	echo "$d"
}

tar -C "$work/root" --sort=name --owner=0 --group=0 --numeric-owner \
	--mtime=@0 --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
	-cf "$work/layer.tar" usr
diff_id=$(sha "$work/layer.tar")
gzip -n -9 "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer=$(blob "$work/layer.tar.gz")

# The image config: what runs by default (vm-run's usage), the PATH the
# tools are on, and the layer's uncompressed digest.
cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/bin"],"Cmd":["/usr/local/bin/vm-run","-h"],"Labels":{"org.opencontainers.image.title":"vm-tools","org.opencontainers.image.description":"vm-run, vm-ctl, vm-img, vm-net, vm-send, vm-receive: static binaries only"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created_by":"contrib/oci/build.sh"}]}
JSON
config_size=$(size "$work/config.json")
config=$(blob "$work/config.json")

cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer","size":$layer_size}]}
JSON
manifest_size=$(size "$work/manifest.json")
manifest=$(blob "$work/manifest.json")

# ref.name is the OCI tag; io.containerd.image.name is the full name
# ctr images import gives the image without --base-name.
cat >"$work/oci/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"latest","io.containerd.image.name":"localhost/vm-tools:latest"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"

mkdir -p "$(dirname "$out")"
tar -C "$work/oci" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
	-cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
