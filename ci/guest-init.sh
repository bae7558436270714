#!/bin/sh
# PID 1 of the lab VM (ci/vm.mjs boots the kernel with init=<repo>/ci/guest-init.sh).
# The root file system is the host's / over 9p, read-only; this script makes the few writable
# places a command needs, runs the command from the host's working directory with its output on
# /dev/hvc0 (the host terminal), reports the exit status on the virtio-serial port memdedup.ret,
# and reboots (QEMU runs with -no-reboot, so a reboot ends it).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "memdedup-init: $*" > /dev/kmsg 2>/dev/null || echo "memdedup-init: $*"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/memdedup/scratch /run/memdedup/home /run/memdedup/host-tmp
# The host's temp dir for this run: the command script in, results out.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576,cache=none scratch /run/memdedup/scratch
say "started at $(cut -d' ' -f1 /proc/uptime)s uptime"
cut -d' ' -f1 /proc/uptime > /run/memdedup/scratch/init-uptime

# Settings written by the host: MEMDEDUP_CWD, MEMDEDUP_HUGEPAGES, MEMDEDUP_INTERACTIVE, and the
# command's environment (exports).
. /run/memdedup/scratch/env.sh

# A writable /tmp hides the host's /tmp, where a checkout or the lab cache may live (CI clones
# into temp dirs): keep the host's /tmp reachable and bind those two back at their own paths.
mount --bind /tmp /run/memdedup/host-tmp
mount -t tmpfs -o mode=1777 tmpfs /tmp
for dir in "$MEMDEDUP_CWD" "$MEMDEDUP_CACHE"; do
	case "$dir" in
	/tmp/*)
		mountpoint -q "$dir" && continue
		mkdir -p "$dir"
		mount --bind "/run/memdedup/host-tmp/${dir#/tmp/}" "$dir" ||
			say "cannot bind the host's $dir"
		;;
	esac
done

# The loopback interface, as on any system: tests send to localhost (dgram, http, splice to TCP).
ip link set lo up || say "cannot bring up lo"

# Swap on the virtio disk the host formatted with mkswap (lets tests push pages out).
[ -b /dev/vda ] && swapon /dev/vda
mount -t hugetlbfs hugetlbfs /dev/hugepages
# cgroup v2 with the memory and cpuset controllers for child groups (tests make their own).
if [ -d /sys/fs/cgroup ] && mount -t cgroup2 cgroup2 /sys/fs/cgroup; then
	echo "+memory +cpuset" > /sys/fs/cgroup/cgroup.subtree_control ||
		say "cannot enable the memory and cpuset controllers"
fi
if [ "${MEMDEDUP_HUGEPAGES:-0}" -gt 0 ]; then
	echo "$MEMDEDUP_HUGEPAGES" > /proc/sys/vm/nr_hugepages
	say "hugetlb pages: $(cat /proc/sys/vm/nr_hugepages) of $MEMDEDUP_HUGEPAGES requested"
fi

# virtio ports have no udev here, so find ours by name in sysfs.
RET_PORT=
for port in /sys/class/virtio-ports/*; do
	[ "$(cat "$port/name" 2>/dev/null)" = memdedup.ret ] && RET_PORT=/dev/${port##*/}
done

cd "$MEMDEDUP_CWD" || say "cannot cd to $MEMDEDUP_CWD"
if [ "$MEMDEDUP_INTERACTIVE" = 1 ]; then
	# A session with hvc0 as controlling terminal, so job control and Ctrl-C work.
	setsid -c -w sh -c 'if command -v bash >/dev/null; then exec bash -i; else exec sh -i; fi' \
		</dev/hvc0 >/dev/hvc0 2>&1
	status=$?
else
	# No output post-processing: the host sees \n, not \r\n.
	stty -F /dev/hvc0 -opost 2>/dev/null
	sh /run/memdedup/scratch/command.sh </dev/null >/dev/hvc0 2>&1
	status=$?
fi
say "command exited with status $status"

# Give the console a moment to drain before the status ends the run.
sleep 0.3
if [ -n "$RET_PORT" ]; then
	echo "$status" > "$RET_PORT"
else
	say "no memdedup.ret port; the host will report 255"
fi
sync
echo b > /proc/sysrq-trigger
