#!/bin/sh
# A containerd of the test's own, for tests/containerd.rs.
#
#   containerd.sh DIR     start containerd with its root, state, sockets
#                         and log under DIR; print "ready" when its socket
#                         answers; when stdin closes, kill every task
#                         left, delete the containers and stop containerd
#
# Nothing of the machine's is used: no /etc/containerd, no
# /run/containerd, no /var/lib/containerd; the CRI plugin (Kubernetes'
# side, which wants a CNI network) is off. The containers' shims outlive
# containerd by design, so they are ended through containerd (task kill,
# task delete) before it goes; the test's stdin closing, however the test
# ends, starts that.
set -eu

die() { echo "containerd.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: containerd.sh DIR"
dir=$1
command -v containerd >/dev/null && command -v runc >/dev/null ||
	die "containerd or runc missing (tests/harness/setup.sh installs them)"
mkdir -p "$dir/root" "$dir/state"
sock=$dir/containerd.sock
cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
TOML
containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
daemon=$!

ctr() { command ctr -a "$sock" "$@"; }

# Every task killed, every container deleted: at the end, and at the
# start (what a killed earlier run left, its names would clash).
clear() {
	for ns in $(ctr namespaces ls -q 2>/dev/null); do
		for t in $(ctr -n "$ns" tasks ls -q 2>/dev/null); do
			ctr -n "$ns" tasks kill -s KILL "$t" >/dev/null 2>&1 || true
			ctr -n "$ns" tasks delete -f "$t" >/dev/null 2>&1 || true
		done
		for c in $(ctr -n "$ns" containers ls -q 2>/dev/null); do
			ctr -n "$ns" containers delete "$c" >/dev/null 2>&1 || true
		done
	done
}

stop() {
	clear
	kill "$daemon" 2>/dev/null || true
	wait "$daemon" 2>/dev/null || true
}
trap 'stop; exit 1' INT TERM HUP

for _ in $(seq 100); do
	ctr version >/dev/null 2>&1 && break
	kill -0 "$daemon" 2>/dev/null || die "containerd ended: $(tail -n 5 "$dir/containerd.log")"
	sleep 0.1
done
ctr version >/dev/null 2>&1 || { stop; die "containerd does not answer on $sock"; }
clear
echo ready
cat >/dev/null || true
stop
