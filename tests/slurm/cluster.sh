#!/bin/sh
# A Slurm cluster of the test's own, for tests/slurm.rs.
#
#   cluster.sh DIR     start munged, slurmctld and two slurmd nodes with
#                      their config, state, spool, logs and munge key
#                      under DIR; print "ready" when both nodes are idle;
#                      when stdin closes, stop them all and delete the
#                      namespaces
#   cluster.sh -k DIR  only stop what an earlier run left (by pid file)
#
# Debian's slurmd is built without multiple-slurmd support (one slurmd
# per host, found by its hostname), so each node is a host of its own: a
# network namespace (vmslurm-node1, vmslurm-node2) joined to the
# controller's namespace (vmslurm-ctl) by a bridge there, 10.203.0.0/24,
# nothing routed out. Each node also gets its own /run (a tmpfs), so
# that its guests' control sockets in /run/vm are that node's alone, as
# on separate machines; DIR/shared is the storage all nodes share. The
# clients (sbatch, squeue, scontrol) are run in vmslurm-ctl.
set -eu

die() { echo "cluster.sh: $*" >&2; exit 1; }
kill_only=
[ "${1:-}" = -k ] && { kill_only=1; shift; }
[ $# -eq 1 ] || die "usage: cluster.sh [-k] DIR"
dir=$1
ctl=vmslurm-ctl
nodes="node1 node2"

# Every daemon by its pid file, then the namespaces: what this run
# started, or what a killed earlier run left behind.
stop() {
	for p in "$dir"/run/*.pid; do
		[ -e "$p" ] || continue
		pid=$(cat "$p" 2>/dev/null) || continue
		[ -n "$pid" ] && kill "$pid" 2>/dev/null || true
	done
	# Give them a moment to go, then no mercy.
	for _ in $(seq 30); do
		alive=
		for p in "$dir"/run/*.pid; do
			[ -e "$p" ] || continue
			pid=$(cat "$p" 2>/dev/null) || continue
			[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
		done
		[ -z "$alive" ] && break
		sleep 0.1
	done
	for p in "$dir"/run/*.pid; do
		[ -e "$p" ] || continue
		pid=$(cat "$p" 2>/dev/null) || continue
		[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
		rm -f "$p"
	done
	# Whatever is left in the namespaces (a job's vm-run): killed too.
	for ns in $ctl vmslurm-node1 vmslurm-node2; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
		ip netns del "$ns" 2>/dev/null || true
	done
}

mkdir -p "$dir/run"
stop
[ -n "$kill_only" ] && exit 0

command -v slurmctld >/dev/null && command -v slurmd >/dev/null &&
	command -v sbatch >/dev/null && command -v munged >/dev/null ||
	die "slurm or munge missing (tests/harness/setup.sh installs them)"
trap 'stop; exit 1' INT TERM HUP
die() { echo "cluster.sh: $*" >&2; stop; exit 1; }

rm -rf "$dir/cgroup.conf" "$dir/state" "$dir/spool" "$dir/log" "$dir/munge" "$dir/shared"
mkdir -p "$dir/state" "$dir/log" "$dir/munge" "$dir/shared" \
	"$dir/spool/node1" "$dir/spool/node2"
chmod 700 "$dir/munge"

# munge: a key of this cluster's, the socket in DIR (unix sockets do not
# care about network namespaces).
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 2>/dev/null
chmod 600 "$dir/munge/munge.key"
munged -f --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
	--pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" \
	--seed-file="$dir/munge/munged.seed" ||
	die "munged failed: $(tail -n 3 "$dir/log/munged.log" 2>/dev/null)"

# The hosts.
ip netns add $ctl
ip -n $ctl link set lo up
ip -n $ctl link add br0 type bridge
ip -n $ctl addr add 10.203.0.1/24 dev br0
ip -n $ctl link set br0 up
i=10
for n in $nodes; do
	i=$((i + 1))
	ip netns add vmslurm-$n
	ip -n vmslurm-$n link set lo up
	ip -n $ctl link add v$n type veth peer name eth0 netns vmslurm-$n
	ip -n $ctl link set v$n master br0 up
	ip -n vmslurm-$n addr add 10.203.0.$i/24 dev eth0
	ip -n vmslurm-$n link set eth0 up
done

host=$(hostname -s)
conf=$dir/slurm.conf
cat >"$conf" <<CONF
ClusterName=vmtest
SlurmctldHost=$host(10.203.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
JobRequeue=1
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=node1 NodeAddr=10.203.0.11 CPUs=1 RealMemory=1000 State=UNKNOWN
NodeName=node2 NodeAddr=10.203.0.12 CPUs=1 RealMemory=1000 State=UNKNOWN
PartitionName=vms Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=urgent Nodes=node1,node2 MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF
export SLURM_CONF="$conf"

ip netns exec $ctl slurmctld -i -f "$conf" ||
	die "slurmctld failed: $(tail -n 5 "$dir/log/slurmctld.log" 2>/dev/null)"
for n in $nodes; do
	# nsenter, not ip netns exec: that mounts a /sys of the namespace,
	# without the cgroup file systems slurmd insists on.
	nsenter --net=/run/netns/vmslurm-$n unshare -m --propagation private sh -c '
		mount -t tmpfs -o mode=755 vmslurm-run /run && mkdir -p /run/vm &&
		exec slurmd -f "$1" -N "$2"' sh "$conf" "$n" ||
		die "slurmd $n failed: $(tail -n 5 "$dir/log/slurmd-$n.log" 2>/dev/null)"
done

for _ in $(seq 200); do
	idle=$(ip netns exec $ctl sinfo -h -N -p vms -o '%N %t' 2>/dev/null | grep -c ' idle$' || true)
	[ "$idle" = 2 ] && break
	sleep 0.1
done
[ "$idle" = 2 ] || {
	ip netns exec $ctl sinfo -N >&2 || true
	tail -n 5 "$dir"/log/*.log >&2
	stop
	die "the nodes did not come up"
}
echo ready
cat >/dev/null || true
stop
