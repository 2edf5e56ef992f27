#!/bin/sh
# A Debian 12 system with systemd as PID 1, for tests/systemd.rs.
#
#   container.sh rootfs DIR          build DIR once (debootstrap), reuse it
#   container.sh run DIR BINDIR GUESTDIR
#                                    boot it; print the PID of its systemd
#                                    on stdout; stop it when stdin closes
#
# This machine's PID 1 is not systemd, so there is no machined and no
# scope to put the container in: --register=no --keep-unit, and systemctl
# is run inside with nsenter. The tree is never written (--volatile=overlay
# keeps the changes of a boot in memory), so every run starts from the
# same system. The binaries are bind-mounted on /usr/local/bin, the tiny
# guest's directory on /var/lib/vm/guest.
set -eu

die() { echo "container.sh: $*" >&2; exit 1; }

rootfs() {
	dir=$1
	[ -x "$dir/lib/systemd/systemd" ] && return 0
	command -v debootstrap >/dev/null || die "debootstrap missing (tests/harness/setup.sh installs it)"
	rm -rf "$dir.tmp"
	mkdir -p "$(dirname "$dir")"
	# minbase: apt, dpkg, coreutils, passwd; systemd for PID 1, dbus as a
	# Debian system has it.
	debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
		bookworm "$dir.tmp" http://deb.debian.org/debian >"$dir.log" 2>&1 ||
		die "debootstrap failed, see $dir.log"
	# vm-run's user as docs/OPERATIONS.md creates it; the kvm group is
	# udev's on a real system.
	chroot "$dir.tmp" sh -c 'groupadd -r kvm && useradd -r -g kvm -d /var/lib/vm -s /usr/sbin/nologin vm &&
		mkdir -p /etc/vm /var/lib/vm/guest && chown vm:kvm /var/lib/vm &&
		systemctl mask console-getty.service apt-daily.timer apt-daily-upgrade.timer \
			dpkg-db-backup.timer e2scrub_all.timer systemd-tmpfiles-clean.timer' >/dev/null 2>&1 ||
		die "setting up users in $dir.tmp failed"
	mv "$dir.tmp" "$dir"
}

run() {
	dir=$1 bins=$2 guest=$3
	# The container's systemd gets cgroup v2 of its own (this host mounts
	# v1 and v2 side by side), and bpf(2) and CAP_BPF, so that
	# DevicePolicy= and IPAddressDeny= are enforced as on a real host.
	# A private network gives it CAP_NET_ADMIN for vm-net's taps.
	SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -q -D "$dir" --boot \
		--register=no --keep-unit --volatile=overlay --private-network \
		--capability=CAP_BPF,CAP_NET_ADMIN --system-call-filter=bpf \
		--bind-ro="$bins:/usr/local/bin" --bind-ro="$guest:/var/lib/vm/guest" \
		--console=passive </dev/null >/dev/null 2>&1 &
	nspawn=$!
	# The container's PID 1 is the child of nspawn in another PID
	# namespace (nspawn has short-lived helper children in ours).
	init() {
		for c in $(cat "/proc/$nspawn/task/$nspawn/children" 2>/dev/null); do
			[ "$(readlink "/proc/$c/ns/pid")" != "$(readlink /proc/self/ns/pid)" ] &&
				[ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && echo "$c"
		done
		return 0
	}
	# SIGKILL to a PID namespace's init ends the whole namespace; nspawn
	# then cleans up and exits by itself. Its own SIGTERM would ask the
	# container to shut down, which may take long.
	stop() {
		i=$(init)
		if [ -n "$i" ]; then kill -KILL $i; else kill -KILL "$nspawn"; fi 2>/dev/null
		wait "$nspawn" 2>/dev/null
	}
	trap 'stop; exit 1' INT TERM HUP
	leader=
	for _ in $(seq 100); do
		leader=$(init)
		[ -n "$leader" ] && break
		sleep 0.1
	done
	[ -n "$leader" ] || { stop; die "systemd-nspawn did not start a container"; }
	# /dev/kvm of the container's own, as udev makes it on a Debian host
	# (a bind mount of the host's would share its owner and mode with the
	# host). nspawn makes /dev/net/tun.
	nsenter -t "$leader" -a sh -c 'mknod -m 0660 /dev/kvm c 10 232 && chgrp kvm /dev/kvm' ||
		{ stop; die "cannot make /dev/kvm in the container"; }
	# systemctl needs PID 1's private socket.
	for _ in $(seq 100); do
		[ -S "/proc/$leader/root/run/systemd/private" ] && break
		sleep 0.1
	done
	echo "$leader"
	cat >/dev/null || true
	stop
}

case ${1-} in
rootfs) [ $# -eq 2 ] || die "usage: container.sh rootfs DIR"; rootfs "$2" ;;
run) [ $# -eq 4 ] || die "usage: container.sh run DIR BINDIR GUESTDIR"; run "$2" "$3" "$4" ;;
*) die "usage: container.sh rootfs DIR | run DIR BINDIR GUESTDIR" ;;
esac
