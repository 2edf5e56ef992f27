#!/bin/sh
# Usage: tests/harness/soak.sh [-k KERNEL[,KERNEL]] [-p KVM_AMD_PARAMS] [-g GUESTS] [-T MINUTES] [-o DIR] N
# Run by hand (not in CI, not in make test): how reliable the emulated test
# host is. Boots test hosts until N Linux guests have started in them for
# each KERNEL, GUESTS (default 10, even) per test-host boot, two at a time:
# one vm-run and one QEMU guest (run-host.sh -q), alternately with 1 and 2
# vCPUs. Each guest, on a bridge with a raw disk, pings the host, sends it
# 4 MiB over TCP and writes 8 MiB of random bytes to its disk; the host
# checks both by SHA-256. The series holds the machine's test-host lock
# from its first boot to its last: other test runs wait meanwhile.
#   -k  the test host's own kernels (hostkernel.sh: bookworm, backports;
#       default the harness's); with two, test-host boots alternate, so
#       both see the same load on the machine
#   -p  reload kvm_amd with these parameters before the first guest
#   -T  start no test-host boot after MINUTES (default 25) of the series
#   -o  where the consoles and failures go (default target/soak/DATE)
# Prints a summary per kernel: test-host boots and how each ended (panic,
# lockup, silence, timeout), guest boots and failures; DIR keeps every
# host console (host-NN-KERNEL.log) and an excerpt per failure
# (failures/). Exit status 0 only if every host boot and every guest
# came out clean and N guests were run for each kernel.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n 's/^# \{0,1\}//; 2,21p' "$0" >&2; exit 2; }
kernels=${TESTHOST_KERNEL:-}; params=; per=10; out=; cap=25
while getopts k:p:g:o:T: o; do
    case $o in k) kernels=$OPTARG ;; p) params=$OPTARG ;; g) per=$OPTARG ;; o) out=$OPTARG ;; T) cap=$OPTARG ;; *) usage ;; esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
case $1$per$cap in *[!0-9]*) usage ;; esac
[ "$per" -ge 2 ] && [ $((per % 2)) -eq 0 ] && [ "$1" -ge 1 ] || usage
n=$1
# The harness's default kernel is host.sh's; say it out loud here.
kernels=$(echo "${kernels:-$(sed -n 's/^variant=\${TESTHOST_KERNEL:-\([a-z]*\)}$/\1/p' "$root/tests/harness/host.sh")}" | tr , ' ')
bin=$root/target/x86_64-unknown-linux-musl/release
[ -x "$bin/vm-run" ] && [ -x "$bin/vm-net" ] || { echo "soak.sh: no $bin/vm-run: run make first" >&2; exit 1; }
out=${out:-$root/target/soak/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out/failures"

# What each guest runs (its /init evals run=...; me and port come on the
# kernel command line too). No single quotes: the host's script quotes it.
work='ip addr add 10.9.0.$me/24 dev eth0; ip link set eth0 up;
i=0; until ping -c 1 -W 1 10.9.0.254 >/dev/null; do i=$((i+1)); [ $i -ge 60 ] && break; done;
ping -c 2 10.9.0.254 >/dev/null && echo SOAK-PING-OK;
head -c 4194304 /dev/urandom > /tmp/f; echo SOAK-NET-SUM=$(sha256sum < /tmp/f);
nc 10.9.0.254 $port < /tmp/f && echo SOAK-NET-SENT; rm /tmp/f;
dd if=/dev/urandom of=/dev/vda bs=1M count=8 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches;
echo SOAK-DISK-SUM=$(head -c 8388608 /dev/vda | sha256sum); echo SOAK-GUEST-DONE'
work=$(printf %s "$work" | tr '\n' ' ')

scenario=$out/scenario.sh
cat > "$scenario" <<EOF
exec 2>&1
PER=$per
PARAMS='$params'
W='$work'
EOF
cat >> "$scenario" <<'EOF'
if [ -n "$PARAMS" ]; then
    # kvmhold (the host's /init) keeps a VM open, which pins the module.
    for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" != kvmhold ] || kill ${d#/proc/}; done; sleep 1
    rmmod kvm_amd && insmod /lib/modules/kvm-amd.ko $PARAMS || { echo "@@@ SOAK-PARAMS-FAILED"; exit 1; }
    kvmhold &
fi
echo "@@@ SOAK-HOST $(date +%s) $(uname -r) kvm_amd: $(cd /sys/module/kvm_amd/parameters && for p in *; do printf '%s=%s ' "$p" "$(cat "$p")"; done)"
# A heartbeat: a host whose console stops is a stuck host (run-host.sh -s).
(while sleep 20; do echo "@@@ tick $(cut -d' ' -f1-3 /proc/loadavg)"; done) &
tick=$!
ip link add br0 type bridge && ip addr add 10.9.0.254/24 dev br0 && ip link set br0 up
# busybox nc ends on EOF from either side: listeners read a FIFO that never ends.
mkfifo /tmp/p; exec 8<>/tmp/p
cat > /tmp/q.sh <<'Q'
#!/bin/sh
# QEMU on the tap vm-net opened: CPUS DISK MAC APPEND
exec qemu-system-x86_64 -M pc -enable-kvm -cpu host -smp "$1" -m 256M -nodefaults -no-user-config \
    -nographic -serial stdio -no-reboot -kernel /guest/bzImage -initrd /guest/initrd.gz -append "$4" \
    -drive file="$2",format=raw,if=virtio -netdev tap,id=n0,fd=$VM_NET_FDS,vhost=off \
    -device virtio-net-pci,netdev=n0,mac="$3"
Q
chmod +x /tmp/q.sh
# g J VMM CPUS KERNEL: one guest, its console on ours prefixed "gJ| ",
# then its verdict.
g() {
    j=$1 vmm=$2 c=$3 kern=$4 me=$(($1 + 1)) port=$((6000 + $1))
    mac=$(printf 'fe:e1:ba:d0:01:%02x' "$j")
    dd if=/dev/zero of=/tmp/d$j.img bs=1M count=0 seek=64 2>/dev/null
    nc -l -p $port <&8 > /tmp/n$j & l=$!
    a="console=ttyS0 quiet me=$me port=$port run=\"$W\""
    echo "@@@ SOAK-START $j $vmm c=$c $kern $(date +%s)"
    t0=$(date +%s)
    { if [ "$vmm" = qemu ]; then
        timeout -s KILL 300 vm-net -b br0 /tmp/q.sh "$c" /tmp/d$j.img "$mac" "$a" </dev/null
      else
        timeout -s KILL 300 vm-net -a "$mac" -b br0 vm-run -m 256M -c "$c" -d /tmp/d$j.img \
            -b "/guest/$kern" -i /guest/initrd.gz -a "$a" </dev/null
      fi; echo $? > /tmp/rc$j; } 2>&1 | tee /tmp/g$j.log | sed "s/^/g$j| /"
    rc=$(cat /tmp/rc$j)
    i=0; while kill -0 $l 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    kill $l 2>/dev/null
    why=
    [ "$rc" = 0 ] || why="$why rc=$rc"
    grep -q SOAK-GUEST-DONE /tmp/g$j.log || why="$why no-end"
    grep -q SOAK-PING-OK /tmp/g$j.log || why="$why no-ping"
    ns=$(sed -n 's/.*SOAK-NET-SUM=\([0-9a-f]*\).*/\1/p' /tmp/g$j.log)
    hs=$(sha256sum < /tmp/n$j | cut -d' ' -f1)
    [ -n "$ns" ] && [ "$ns" = "$hs" ] || why="$why net-sum"
    ds=$(sed -n 's/.*SOAK-DISK-SUM=\([0-9a-f]*\).*/\1/p' /tmp/g$j.log)
    hd=$(head -c 8388608 /tmp/d$j.img | sha256sum | cut -d' ' -f1)
    [ -n "$ds" ] && [ "$ds" = "$hd" ] || why="$why disk-sum"
    grep -q 'BUG: soft lockup' /tmp/g$j.log && why="$why guest-lockup"
    grep -q 'Kernel panic' /tmp/g$j.log && why="$why guest-panic"
    grep -q 'rcu_sched self-detected stall\|rcu: INFO' /tmp/g$j.log && why="$why guest-rcu-stall"
    echo "@@@ SOAK-GUEST $j $vmm c=$c $kern secs=$(($(date +%s) - t0)) ${why:-ok}"
    rm -f /tmp/d$j.img /tmp/n$j
}
j=0
while [ $j -lt $PER ]; do
    case $((j % 4)) in
    # Subshells: g's variables and background listener stay its own.
    0) (g $j vm-run 1 bzImage) & a=$!; (g $((j + 1)) qemu 1 bzImage) ;;
    *) (g $j vm-run 2 vmlinux) & a=$!; (g $((j + 1)) qemu 2 bzImage) ;;
    esac
    wait $a
    j=$((j + 2))
done
kill $tick
echo "@@@ SOAK-HOST-END $(date +%s)"
EOF

summary=$out/summary.txt
echo "soak: $n guests per kernel, $per per test-host boot, kernels: $kernels, kvm_amd params '${params:-default}', $(date '+%F %T')" | tee "$summary"
# Every test host is built before the lock is taken.
for k in $kernels; do
    TESTHOST_KERNEL=$k WITH_QEMU=1 "$root/tests/harness/host.sh" "$root/target/testhost-soak-$k" 2>&1 | tail -n 3
done
exec 9>/tmp/vm-testhost.lock
flock 9
export TESTHOST_LOCK_HELD=1
# From here a hiccup in the bookkeeping must not end the series early and
# waste the lock; the verdict at the end is computed explicitly.
set +e
start=$(date +%s)
echo "soak: test-host lock taken at $(date '+%T')" | tee -a "$summary"
# started K: how many guests kernel K's boots have started so far.
started() { cat "$out"/host-*-"$1".log 2>/dev/null | grep -c '^@@@ SOAK-START' || :; }
h=1 last=0
while :; do
    k=
    for c in $kernels; do
        # the kernel with the fewest guests so far goes next
        [ "$(started "$c")" -lt "$n" ] || continue
        [ -n "$k" ] && [ "$(started "$c")" -ge "$(started "$k")" ] || k=$c
    done
    [ -n "$k" ] || break
    [ $(($(date +%s) - start + last)) -le $((cap * 60)) ] ||
        { echo "soak: -T $cap minutes reached" | tee -a "$summary"; break; }
    log=$out/host-$(printf %02d $h)-$k.log
    s=$(date +%s)
    { TESTHOST_KERNEL=$k TESTHOST_DIR=$root/target/testhost-soak-$k \
        "$root/tests/harness/run-host.sh" -q -s 150 -t $((per / 2 * 330 + 180)) "$scenario" 2>&1 ||
        echo "soak.sh: run-host.sh status $?"; } | tr -d '\r' > "$log"
    last=$(($(date +%s) - s))
    rc=$(sed -n 's/^soak.sh: run-host.sh status //p' "$log"); rc=${rc:-0}
    how=ok
    if grep -q "run-host.sh: the test host's kernel panicked" "$log"; then
        how=panic
        grep -q 'stack guard page was hit' "$log" && how=panic-stack-guard
    elif grep -q "run-host.sh: the test host's kernel locked up" "$log"; then how=lockup
    elif grep -q 'run-host.sh: the test host said nothing' "$log"; then how=silent
    elif grep -q '@@@ SOAK-PARAMS-FAILED' "$log"; then how=params-rejected
    elif [ "$rc" -ne 0 ] || ! grep -q '@@@ SOAK-HOST-END' "$log"; then how="failed-rc$rc"
    fi
    started=$(grep -c '^@@@ SOAK-START' "$log" || :)
    done_=$(grep -c '^@@@ SOAK-GUEST' "$log" || :)
    bad=$(grep '^@@@ SOAK-GUEST' "$log" | grep -cv ' ok$' || :)
    t1=$(sed -n 's/^@@@ SOAK-HOST \([0-9]*\) .*/\1/p' "$log"); t2=$(sed -n 's/^@@@ SOAK-HOST-END \([0-9]*\).*/\1/p' "$log")
    echo "host $h $k: $how, $last s (boot $((${t1:-$s} - s)) s, guests $(( ${t2:-$(date +%s)} - ${t1:-$s} )) s), guests started $started, finished $done_, failed $bad" | tee -a "$summary"
    if [ "$how" != ok ]; then
        f=$out/failures/host-$(printf %02d $h)-$k-$how.txt
        # The host's own lines around the trouble, then the console's end.
        { grep -n -B2 -A60 -E 'stack guard page|BUG: soft lockup|Kernel panic|Oops|general protection|watchdog' "$log" | grep -Ev '^[0-9]+[-:]g[0-9]+\| ' | head -200
          echo ...; tail -n 60 "$log"; } > "$f"
    fi
    grep '^@@@ SOAK-GUEST' "$log" | grep -v ' ok$' | while read -r _ _ j rest; do
        f=$out/failures/host-$(printf %02d $h)-$k-g$j.txt
        { echo "@@@ SOAK-GUEST $j $rest"; grep "^g$j| " "$log" || echo "(no console output)"; } > "$f"
        echo "  guest $j: $rest" | tee -a "$summary"
    done
    # Guests a dead host left unfinished are counted apart, not as clean.
    grep '^@@@ SOAK-START' "$log" | while read -r _ _ j rest; do
        grep -q "^@@@ SOAK-GUEST $j " "$log" && continue
        f=$out/failures/host-$(printf %02d $h)-$k-g$j-unfinished.txt
        { echo "@@@ SOAK-START $j $rest (no verdict: the host ended first)"; grep "^g$j| " "$log" || echo "(no console output)"; } > "$f"
    done
    h=$((h + 1))
done
flock -u 9

# Totals per kernel, from the per-boot lines and the consoles.
clean=1
for k in $kernels; do
    logs() { cat "$out"/host-*-"$k".log 2>/dev/null || :; }
    tot() { grep "^host [0-9]* $k: " "$summary" | grep -c "$1" || :; }
    boots=$(tot .); hostbad=$((boots - $(tot ': ok,')))
    gs=$(logs | grep -c '^@@@ SOAK-START' || :)
    gd=$(logs | grep -c '^@@@ SOAK-GUEST' || :)
    gok=$(logs | grep '^@@@ SOAK-GUEST' | grep -c ' ok$' || :)
    vr=$(logs | grep '^@@@ SOAK-GUEST' | grep -c ' vm-run ' || :); vrbad=$(logs | grep '^@@@ SOAK-GUEST' | grep ' vm-run ' | grep -cv ' ok$' || :)
    q=$(logs | grep '^@@@ SOAK-GUEST' | grep -c ' qemu ' || :); qbad=$(logs | grep '^@@@ SOAK-GUEST' | grep ' qemu ' | grep -cv ' ok$' || :)
    {
        echo "--- $k: $(logs | grep '^@@@ SOAK-HOST ' | head -n1 | cut -d' ' -f4-)"
        echo "test-host boots: $boots; clean $((boots - hostbad)); panics $(tot ': panic'), of which stack guard page $(tot ': panic-stack-guard'); lockups $(tot ': lockup'); silent $(tot ': silent'); other $(tot ': failed-rc\|: params-rejected')"
        echo "guest boots: started $gs, finished $gd, clean $gok, failed $((gd - gok)), left unfinished by their host $((gs - gd))"
        echo "vm-run: $vr finished, $vrbad failed; qemu: $q finished, $qbad failed"
    } | tee -a "$summary"
    [ "$hostbad" -eq 0 ] && [ "$gd" -eq "$gok" ] && [ "$gs" -eq "$gd" ] && [ "$gs" -ge "$n" ] || clean=
done
echo "wall: $(($(date +%s) - start)) s with the lock; consoles and failures in $out" | tee -a "$summary"
[ -n "$clean" ]
