#!/bin/sh
# Usage: tests/media/check-qemu.sh [OUTDIR [CHECK...]]
# Boots the media of build.sh (OUTDIR, default target/media) with QEMU
# under TCG, one at a time, and says how long each took to reach what it
# should show; CHECKs (names below) limit it to those. Used by hand, to check the media themselves apart from
# vm-run; not run by make test. The serial consoles are kept in
# OUTDIR/check-qemu/NAME.log. Exit status 0 when every check passed.
#   debian-raw     raw virtio disk, 2 vCPUs: GRUB menu, root's prompt; poweroff
#   debian-qcow2   a qcow2 overlay on it, 2 vCPUs: prompt; reboot; prompt; poweroff
#   grub-iso-cd    grub.iso as a CD: menu title, marker, the guest powers off
#   grub-iso-disk  grub.iso as a virtio disk (the hybrid MBR): the same
#   di-iso         di.iso as a CD: the installer's first question
set -u
here=$(cd "$(dirname "$0")" && pwd)
media=$(cd "${1:-$here/../../target/media}" && pwd) || exit 66
[ $# -eq 0 ] || shift
all="debian-raw debian-qcow2 grub-iso-cd grub-iso-disk di-iso"
checks=" ${*:-$all} "
for c in $checks; do
    case " $all " in *" $c "*) ;; *) echo "check-qemu.sh: $c: no such check ($all)" >&2; exit 64 ;; esac
done
failed=0
# want CHECK MEDIUM: CHECK was asked for; a missing medium fails it.
want() {
    case $checks in *" $1 "*) ;; *) return 1 ;; esac
    [ -f "$media/$2" ] && return 0
    echo "check-qemu: $1: FAILED: $media/$2: missing (tests/media/build.sh $media)" >&2
    failed=1; return 1
}
logs=$media/check-qemu
mkdir -p "$logs"
limit=${LIMIT:-300}     # seconds a check may take
pid= cat=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null; [ -z "$cat" ] || kill "$cat" 2>/dev/null' EXIT
trap 'exit 130' INT TERM HUP

# boot NAME QEMU-ARGS...: start QEMU under timeout with COM1 on a pair of
# fifos, its output copied to NAME.log; t0 is the start time.
boot() {
    name=$1; shift
    log=$logs/$name.log fifo=$logs/$name
    rm -f "$fifo.in" "$fifo.out" "$log"; mkfifo "$fifo.in" "$fifo.out"
    : > "$log"
    t0=$(date +%s) mark=0
    timeout "$limit" qemu-system-x86_64 -M pc -accel tcg -m 1G -display none -monitor none \
        -serial "pipe:$fifo" "$@" > "$logs/$name.qemu" 2>&1 &
    pid=$!
    cat "$fifo.out" > "$log" &
    cat=$!
}
# seen PATTERN [COUNT]: wait until the console shows PATTERN (COUNT times)
# after the first $mark bytes; T is then the seconds since boot. Fails if
# QEMU ended first.
seen() {
    while [ "$(tail -c +$((mark + 1)) "$log" | grep -ao -- "$1" | wc -l)" -lt "${2:-1}" ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 1
    done
    T=$(( $(date +%s) - t0 ))
}
# from_now: later seens look only at what the console shows from now on.
from_now() { mark=$(wc -c < "$log"); }
# line TEXT: TEXT and a newline typed on the console.
line() { printf '%s\n' "$1" > "$fifo.in"; }
# ended: wait for QEMU to end by itself (the timeout's status is 124),
# then T is the seconds since boot. Fails unless QEMU exited 0.
ended() {
    wait "$pid"; rc=$?; pid=
    T=$(( $(date +%s) - t0 ))
    finish
    [ "$rc" -eq 0 ]
}
# finish: end the console's copy (its cat still waits on the fifo if QEMU
# never started).
finish() {
    [ -z "$pid" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=; }
    kill "$cat" 2>/dev/null; wait "$cat" 2>/dev/null; cat=
    rm -f "$fifo.in" "$fifo.out"
}
ok() { finish; echo "check-qemu: $name: ok: $*"; }
fail() { finish; echo "check-qemu: $name: FAILED: $* (console: $log)" >&2; failed=1; }

prompt='root@vmtest:~#'
menu_deb='Debian 12 (vm-tools test medium)'
menu_iso='vm-tools grub.iso: busybox marker'
loading='Loading Linux from debian.raw'     # once a boot, unlike the menu's title

if want debian-raw debian.raw; then
    boot debian-raw -smp 2 -drive "file=$media/debian.raw,format=raw,if=virtio,snapshot=on"
    if seen "$menu_deb" && m=$T && seen "$prompt" && p=$T && line poweroff && ended; then
        ok "GRUB menu at ${m}s, prompt at ${p}s, powered off at ${T}s"
    else fail "no menu, prompt or power-off"; fi
fi

if want debian-qcow2 debian.raw; then
    qemu-img create -q -f qcow2 -b "$media/debian.raw" -F raw "$logs/overlay.qcow2"
    boot debian-qcow2 -smp 2 -drive "file=$logs/overlay.qcow2,format=qcow2,if=virtio"
    # The shell prompts again when systemctl reboot has asked for the reboot
    # (it also says "Failed to connect to bus": there is no D-Bus), so the
    # second boot's prompt is the first after its GRUB.
    if seen "$prompt" && p=$T && line reboot && seen "$loading" 2 && m=$T && from_now && seen "$prompt" && q=$T &&
        line poweroff && ended; then
        ok "prompt at ${p}s, after reboot GRUB at ${m}s and the prompt at ${q}s, powered off at ${T}s"
    else fail "no prompt, reboot or power-off"; fi
    rm -f "$logs/overlay.qcow2"
fi

for how in cd disk; do
    want "grub-iso-$how" grub.iso || continue
    case $how in
    cd) boot grub-iso-cd -no-reboot -cdrom "$media/grub.iso" ;;
    disk) boot grub-iso-disk -no-reboot -drive "file=$media/grub.iso,format=raw,if=virtio,readonly=on" ;;
    esac
    if seen "$menu_iso" && m=$T && seen '^VMTEST-GRUB-ISO-OK' && k=$T && ended; then
        ok "GRUB menu at ${m}s, marker at ${k}s, powered off at ${T}s"
    else fail "no menu, marker or power-off"; fi
done

if want di-iso di.iso; then
    boot di-iso -no-reboot -cdrom "$media/di.iso" -boot d
    if seen 'Loading /install/vmlinuz' && i=$T && seen 'Select a language'; then
        ok "isolinux at ${i}s, the installer's first question at ${T}s"
    else fail "no isolinux message or installer question"; fi
fi
exit "$failed"
