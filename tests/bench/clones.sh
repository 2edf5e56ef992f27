#!/bin/sh
# Usage: tests/bench/clones.sh [OUT.md] [ROUNDS]
# Instant clones from a file (docs/SNAPSHOT.md, "Memory in a file"), on
# this machine's /dev/kvm (make bench; runs alone too), every comparison
# in the same run, rounds alternating:
#  1. receive to running of a 1 GiB tiny guest with 256 MiB touched: its
#     checkpoint file mapped (vm-receive < file), the same file read
#     through a pipe (cat file | vm-receive), the stream as a pipe carries
#     it (MEM runs, written by vm-send | cat > file) read through a pipe,
#     and QEMU's -incoming from its migration file (exec:cat, as QEMU 7.2
#     has no file: URI);
#  2. ten clones of that checkpoint, mapped, against ten full copies
#     (received through a pipe): their summed PSS once each has read
#     every page it holds (a checkpoint of each into /dev/null reads them
#     all through the guest's own mapping);
#  3. writing a 4 GiB guest with 1 GiB touched into a file: vm-send into
#     the file itself, vm-send through a pipe to cat, and QEMU's migrate
#     exec:cat > file.
# Files in /dev/shm, as in snapshot.sh: the VMMs, not the disk.
set -eu
. "$(dirname "$0")/lib.sh"
out=${1:-/dev/stdout}
rounds=${2:-5}
[ -x "$bin/vm-send" ] || { echo "clones.sh: build first (make)" >&2; exit 1; }
tiny_guest
tmp=$(mktemp -d -p /dev/shm)
trap 'vm-ctl stop -a -f -w > /dev/null 2>&1 || :; kill $(jobs -p) 2>/dev/null || :; rm -rf "$tmp"' EXIT
export VM_RUNDIR=$tmp/run PATH=$bin:$PATH
qemu() { # MEM [QEMU ARGS...]: the tiny guest, idle (wait)
	m=$1; shift
	exec qemu-system-x86_64 -M microvm -enable-kvm -cpu host,-arch-capabilities -m "$m" \
		-nodefaults -no-user-config -nographic -serial null -monitor none \
		-qmp unix:"$tmp/q.sock",server=on,wait=off -kernel "$tiny" -initrd "$tmp/initrd" -append wait "$@"
}
up() { until vm-ctl status "$1" > /dev/null 2>&1; do sleep 0.001; done; }
pid_of() { vm-ctl status "$1" | awk 'NR == 2 { print $2 }'; }

echo "bench: clones: a 1G guest with 256 MiB touched" >&2
head -c 256M /dev/urandom > "$tmp/initrd"
vm-run -N src -m 1G -b "$tiny" -i "$tmp/initrd" -a wait < /dev/null > /dev/null &
up src
vm-send -k src > "$tmp/file"
vm-send -k src | cat > "$tmp/piped"
vm-ctl stop -f -w src; wait
rm -f "$tmp/q.sock"; qemu 1G 2> /dev/null & qpid=$!
qmp "$tmp/q.sock" migrate-set-parameters '{"max-bandwidth": 107374182400}' ""
qmp "$tmp/q.sock" migrate "{\"uri\": \"exec:cat > $tmp/qsnap\"}" ""
qmp "$tmp/q.sock" query-migrate '{}' '"completed"'
kill $qpid; wait $qpid 2>/dev/null || :
kib() { du -k "$1" | awk '{ print $1 }'; }
echo "file $(stat -c %s "$tmp/file") bytes, $(kib "$tmp/file") KiB on tmpfs; piped $(stat -c %s "$tmp/piped")" >&2

: > "$tmp/r.file"; : > "$tmp/r.pipe"; : > "$tmp/r.runs"; : > "$tmp/r.qemu"
: > "$tmp/v.file"; : > "$tmp/v.pipe"; : > "$tmp/v.runs"
i=0
while [ $i -lt "$rounds" ]; do
	i=$((i + 1))
	t0=$(now); vm-receive -v -N r < "$tmp/file" > /dev/null 2> "$tmp/err" & up r; t1=$(now)
	vm-ctl stop -f -w r; wait
	ms "$t0" "$t1" >> "$tmp/r.file"
	sed -n 's/.*first vCPU entry \([0-9.]*\) ms.*/\1/p' "$tmp/err" >> "$tmp/v.file"
	t0=$(now); cat "$tmp/file" | vm-receive -v -N r > /dev/null 2> "$tmp/err" & up r; t1=$(now)
	vm-ctl stop -f -w r; wait
	ms "$t0" "$t1" >> "$tmp/r.pipe"
	sed -n 's/.*first vCPU entry \([0-9.]*\) ms.*/\1/p' "$tmp/err" >> "$tmp/v.pipe"
	t0=$(now); cat "$tmp/piped" | vm-receive -v -N r > /dev/null 2> "$tmp/err" & up r; t1=$(now)
	vm-ctl stop -f -w r; wait
	ms "$t0" "$t1" >> "$tmp/r.runs"
	sed -n 's/.*first vCPU entry \([0-9.]*\) ms.*/\1/p' "$tmp/err" >> "$tmp/v.runs"
	rm -f "$tmp/q.sock"; t0=$(now); qemu 1G -incoming "exec:cat $tmp/qsnap" 2> /dev/null & qpid=$!
	qmp "$tmp/q.sock" query-status '{}' '"status": "running"'
	qmp "$tmp/q.sock" cont '{}' ""
	t1=$(now); kill $qpid; wait $qpid 2>/dev/null || :
	ms "$t0" "$t1" >> "$tmp/r.qemu"
done
rf=$(median < "$tmp/r.file"); rp=$(median < "$tmp/r.pipe"); rr=$(median < "$tmp/r.runs")
rq=$(median < "$tmp/r.qemu")
{
echo "| $rounds rounds each, median [min–max] | receive to running (control socket / QMP answers) | exec to the first vCPU entry (vm-receive -v) | / QEMU |"
echo "| --- | --- | --- | --- |"
echo "| vm-receive < file (mapped) | $(stats < "$tmp/r.file") | $(stats < "$tmp/v.file") | $(ratio "$rf" "$rq") |"
echo "| cat file \\| vm-receive (the image read) | $(stats < "$tmp/r.pipe") | $(stats < "$tmp/v.pipe") | $(ratio "$rp" "$rq") |"
echo "| cat runs \\| vm-receive (a pipe's stream, MEM runs) | $(stats < "$tmp/r.runs") | $(stats < "$tmp/v.runs") | $(ratio "$rr" "$rq") |"
echo "| QEMU -incoming exec:cat file | $(stats < "$tmp/r.qemu") | - | 1.00x |"
} > "$tmp/receive"

echo "bench: clones: ten mapped clones against ten full copies" >&2
# Sum of PSS (KiB) and of private memory over the guests named, each
# having read all it holds.
pss() {
	for g in "$@"; do vm-send -k "$g" > /dev/null; done
	for g in "$@"; do cat "/proc/$(pid_of "$g")/smaps_rollup"; done |
		awk '/^Pss:/ { p += $2 } /^Private_(Clean|Dirty):/ { q += $2 } END { print p, q }'
}
names=
for n in 0 1 2 3 4 5 6 7 8 9; do
	vm-receive -N "c$n" < "$tmp/file" > /dev/null &
	names="$names c$n"
done
for g in $names; do up "$g"; done
set -- $(pss $names); cpss=$1 cpriv=$2
vm-ctl stop -a -f -w; wait
for g in $names; do
	vm-receive -N "$g" < "$tmp/piped" > /dev/null &
done
for g in $names; do up "$g"; done
set -- $(pss $names); fpss=$1 fpriv=$2
vm-ctl stop -a -f -w; wait
{
echo "| ten guests of one checkpoint | summed PSS | summed private | / ten full copies (PSS) |"
echo "| --- | --- | --- | --- |"
echo "| mapped from the file (vm-receive < file) | $((cpss / 1024)) MiB | $((cpriv / 1024)) MiB | $(ratio "$cpss" "$fpss") |"
echo "| full copies (received through a pipe) | $((fpss / 1024)) MiB | $((fpriv / 1024)) MiB | 1.00x |"
} > "$tmp/pss"

echo "bench: clones: writing a 4G guest with 1 GiB touched to a file" >&2
rm -f "$tmp/file" "$tmp/piped" "$tmp/qsnap"
head -c 1024M /dev/urandom > "$tmp/initrd"
vm-run -N big -m 4G -b "$tiny" -i "$tmp/initrd" -a wait < /dev/null > /dev/null &
up big
: > "$tmp/w.file"; : > "$tmp/w.pipe"; : > "$tmp/w.qemu"
i=0
while [ $i -lt "$rounds" ]; do
	i=$((i + 1))
	rm -f "$tmp/out"; t0=$(now); vm-send -k big > "$tmp/out"; t1=$(now)
	ms "$t0" "$t1" >> "$tmp/w.file"; wsize=$(kib "$tmp/out")
	rm -f "$tmp/out"; t0=$(now); vm-send -k big | cat > "$tmp/out"; t1=$(now)
	ms "$t0" "$t1" >> "$tmp/w.pipe"
	rm -f "$tmp/out" "$tmp/q.sock"; qemu 4G 2> /dev/null & qpid=$!
	qmp "$tmp/q.sock" migrate-set-parameters '{"max-bandwidth": 107374182400}' ""
	t0=$(now)
	qmp "$tmp/q.sock" migrate "{\"uri\": \"exec:cat > $tmp/out\"}" ""
	qmp "$tmp/q.sock" query-migrate '{}' '"completed"'
	t1=$(now); kill $qpid; wait $qpid 2>/dev/null || :
	ms "$t0" "$t1" >> "$tmp/w.qemu"; qsize=$(kib "$tmp/out")
done
vm-ctl stop -f -w big; wait
wf=$(median < "$tmp/w.file"); wp=$(median < "$tmp/w.pipe"); wq=$(median < "$tmp/w.qemu")
{
echo "| $rounds rounds each, median [min–max] | write to a file | on tmpfs | / QEMU |"
echo "| --- | --- | --- | --- |"
echo "| vm-send > file (an image, holes) | $(stats < "$tmp/w.file") | $((wsize / 1024)) MiB | $(ratio "$wf" "$wq") |"
echo "| vm-send \\| cat > file (MEM runs) | $(stats < "$tmp/w.pipe") | - | $(ratio "$wp" "$wq") |"
echo "| QEMU migrate exec:cat > file | $(stats < "$tmp/w.qemu") | $((qsize / 1024)) MiB | 1.00x |"
} > "$tmp/write"

{
cat <<HEAD
### Instant clones from a file

\`tests/bench/clones.sh\` ($(date -u +%Y-%m-%d), load average
$(cut -d' ' -f1-3 /proc/loadavg) at the end): the tiny guest, idle
(\`-a wait\`), with a random initrd so that a known part of its memory is
touched; files in /dev/shm; QEMU $(qemu-system-x86_64 --version | head -n1 | awk '{print $4}') \`-M microvm\`.
A checkpoint written by \`vm-send > file\` is an image with holes that
\`vm-receive < file\` maps (docs/SNAPSHOT.md, "Memory in a file").

Receive to running, a 1 GiB guest with 256 MiB touched:

HEAD
cat "$tmp/receive"
cat <<MID

Ten guests received from one checkpoint of that guest, each then made
to read every page it holds (\`vm-send -k\` of each into /dev/null), PSS
and private memory summed from /proc/PID/smaps_rollup:

MID
cat "$tmp/pss"
cat <<MID

Writing a 4 GiB guest with 1 GiB touched into a file (vm-run's
checkpoints of one guest; QEMU's migration of a guest started for each
round):

MID
cat "$tmp/write"
} > "$out"
