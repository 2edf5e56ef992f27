#!/bin/sh
# Usage: tests/bench/snapshot.sh [OUT.md]
# Snapshots on this machine's /dev/kvm (make bench; runs alone too): the
# tiny PVH guest given a random initrd, so that a known amount of its
# memory is touched, is sent with vm-send and with QEMU's
# `migrate exec:cat > file` (bandwidth limit lifted), and received with
# vm-receive and with QEMU's -incoming, in the same run, through files in
# /dev/shm. Stream size,
# time to send, throughput, and time from the receiver's start to a
# running guest. Needs python3 for QEMU's QMP.
set -eu
. "$(dirname "$0")/lib.sh"
out=${1:-/dev/stdout}
[ -x "$bin/vm-send" ] || { echo "snapshot.sh: build first (make)" >&2; exit 1; }
tiny_guest
# Streams go to tmpfs: the bench is about the VMMs, not the disk.
tmp=$(mktemp -d -p /dev/shm); trap 'kill $(jobs -p) 2>/dev/null || :; rm -rf "$tmp"' EXIT
export VM_RUNDIR=$tmp/run PATH=$bin:$PATH
# QMP: one command, its answer on stdout.
qmp_print() {
	python3 - "$@" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
f = s.makefile("rw"); f.readline()
for c in ("qmp_capabilities", sys.argv[2]):
    f.write(json.dumps({"execute": c}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            break
print(json.dumps(r))
PY
}
qemu() { # MEM [QEMU ARGS...]; the guest's command line is $CMDLINE (echo)
	m=$1; shift
	# exec, so that $! of `qemu ... &` is QEMU itself.
	exec qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities -m "$m" \
		-nodefaults -no-user-config -nographic -serial null -monitor none \
		-qmp unix:"$tmp/q.sock",server=on,wait=off -kernel "$tiny" -initrd "$tmp/initrd" -append "${CMDLINE:-echo}" "$@"
}

{
echo "| guest | touched | VMM | stream | send | MB/s | MB/s, pipe only | host's pipe, MB/s | receive to running |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
} > "$tmp/table"
for c in 256M:64 1G:256 4G:1024; do
	mem=${c%:*} touched=${c#*:}
	head -c "${touched}M" /dev/urandom > "$tmp/initrd"
	echo "bench: snapshot of a $mem guest with $touched MiB touched" >&2

	vm-run -N b -m "$mem" -b "$tiny" -i "$tmp/initrd" -a echo < /dev/null > /dev/null &
	until vm-ctl status b > /dev/null 2>&1; do sleep 0.01; done
	# The stream alone, through a pipe into wc (a checkpoint, so
	# the guest stays for the send that counts).
	t0=$(now); bytes=$(vm-send -k b | wc -c); t1=$(now)
	null=$(( bytes * 1000 / ($(ms "$t0" "$t1") + 1) / 1000000 ))
	# The reference: as many bytes from tmpfs through this host's own
	# pipe, cat to wc.
	t0=$(now); cat "$tmp/initrd" | wc -c > /dev/null; t1=$(now)
	hostpipe=$(( $(stat -c %s "$tmp/initrd") * 1000 / ($(ms "$t0" "$t1") + 1) / 1000000 ))
	# Through a pipe and cat, as QEMU's exec: goes.
	t0=$(now); vm-send b | cat > "$tmp/snap"; t1=$(now)
	size=$(stat -c %s "$tmp/snap"); wait
	t2=$(now); vm-receive -N b < "$tmp/snap" > /dev/null &
	until vm-ctl status b > /dev/null 2>&1; do sleep 0.001; done; t3=$(now)
	vm-ctl stop -f -w b; wait
	echo "| $mem | $touched MiB | vm-run | $(mib "$size") MiB | $(ms "$t0" "$t1") ms | $(( size * 1000 / ($(ms "$t0" "$t1") + 1) / 1000000 )) | $null | $hostpipe | $(ms "$t2" "$t3") ms |" >> "$tmp/table"
	vsend=$(ms "$t0" "$t1"); vrecv=$(ms "$t2" "$t3")

	rm -f "$tmp/q.sock"; qemu "$mem" & qpid=$!
	qmp "$tmp/q.sock" migrate-set-parameters '{"max-bandwidth": 107374182400}' ""
	t0=$(now)
	qmp "$tmp/q.sock" migrate "{\"uri\": \"exec:cat > $tmp/qsnap\"}" ""
	qmp "$tmp/q.sock" query-migrate '{}' '"completed"'
	t1=$(now); kill $qpid; wait $qpid 2>/dev/null || :
	size=$(stat -c %s "$tmp/qsnap")
	rm -f "$tmp/q.sock"; t2=$(now); qemu "$mem" -incoming "exec:cat $tmp/qsnap" & qpid=$!
	qmp "$tmp/q.sock" query-status '{}' '"status": "running"'
	qmp "$tmp/q.sock" cont '{}' ""
	t3=$(now); kill $qpid; wait $qpid 2>/dev/null || :
	echo "| $mem | $touched MiB | QEMU | $(mib "$size") MiB | $(ms "$t0" "$t1") ms | $(( size * 1000 / ($(ms "$t0" "$t1") + 1) / 1000000 )) | - | - | $(ms "$t2" "$t3") ms |" >> "$tmp/table"
	echo "vm-run/QEMU $mem: send $vsend/$(ms "$t0" "$t1") ms, receive $vrecv/$(ms "$t2" "$t3") ms" >&2
done

# Live migration of a guest that keeps writing: the tiny guest's "dirty"
# mode writes 4 MiB (1024 pages) round after round. vm-send -l against
# QEMU's migrate (live by default; max-bandwidth lifted, its default
# downtime-limit of 300 ms), both to a file; the pause is what vm-run -v
# reports and what QMP's query-migrate calls downtime.
{
echo "| guest | VMM | stream | total time | pause (downtime) |"
echo "| --- | --- | --- | --- | --- |"
} > "$tmp/live"
head -c 4096 /dev/urandom > "$tmp/initrd"
for mem in 256M 1G 4G; do
	echo "bench: live migration of a $mem guest writing 4 MiB over and over" >&2
	vm-run -v -N d -m "$mem" -b "$tiny" -a dirty < /dev/null > /dev/null 2> "$tmp/d.err" &
	until vm-ctl status d > /dev/null 2>&1; do sleep 0.01; done
	sleep 0.5
	# Through a pipe, as QEMU's exec:cat: into a file itself, vm-send -l
	# is a stop-and-copy (docs/SNAPSHOT.md, "Memory in a file").
	t0=$(now); vm-send -l d | cat > "$tmp/snap"; t1=$(now); wait
	size=$(stat -c %s "$tmp/snap")
	pause=$(sed -n 's/^vm-run: migrated: paused \([0-9.]*\) ms.*/\1/p' "$tmp/d.err")
	echo "| $mem | vm-run | $(mib "$size") MiB | $(ms "$t0" "$t1") ms | ${pause:-?} ms |" >> "$tmp/live"

	rm -f "$tmp/q.sock"; CMDLINE=dirty qemu "$mem" & qpid=$!
	qmp "$tmp/q.sock" migrate-set-parameters '{"max-bandwidth": 107374182400}' ""
	sleep 0.5
	t0=$(now)
	qmp "$tmp/q.sock" migrate "{\"uri\": \"exec:cat > $tmp/qsnap\"}" ""
	qmp "$tmp/q.sock" query-migrate '{}' '"completed"'
	t1=$(now)
	down=$(qmp_print "$tmp/q.sock" query-migrate | sed -n 's/.*"downtime": \([0-9]*\).*/\1/p')
	kill $qpid; wait $qpid 2>/dev/null || :
	size=$(stat -c %s "$tmp/qsnap")
	echo "| $mem | QEMU | $(mib "$size") MiB | $(ms "$t0" "$t1") ms | ${down:-?} ms |" >> "$tmp/live"
done

{
cat <<HEAD
## Snapshots on this machine's /dev/kvm

The tiny guest with a random initrd (so much of its memory is touched and
incompressible), sent through a pipe to \`cat > file\`: \`vm-send\` against QEMU
$(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') \`-M microvm\`
\`migrate exec:cat > file\` with max-bandwidth lifted; received with
\`vm-receive\` (until its control socket answers) against \`-incoming
exec:cat file\` (until QMP says running). Stop-and-copy: the guest's pause
is the whole send. "Pipe only": a \`vm-send -k\` checkpoint of the
same guest just before, through a pipe into \`wc -c\`, the stream's own
speed without tmpfs's; "host's pipe": the same number of bytes from
tmpfs through this host's own pipe (\`cat file | wc -c\`), the most a
pipe here carries. One run each.

HEAD
cat "$tmp/table"
cat <<LIVE

Live migration (\`vm-send -l\`) of the tiny guest in its "dirty" mode,
which writes 4 MiB of its memory round after round and checks every page
(tests/snapshot.rs migrates it and finds no page wrong), against QEMU's
live \`migrate\` of the same guest: stream size, time from the request to
the end of the stream, and the guest's pause (vm-run -v; QMP's downtime).

LIVE
cat "$tmp/live"
} > "$out"
