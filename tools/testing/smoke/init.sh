#!/bin/sh
# /init of the smoke initramfs built by tools/testing/smoke/run (busybox ash).
#
# Reads what run generated under /smoke/:
#   conf          SMOKE_DISKS="/dev/vda ...", SMOKE_KO=/smoke/modules/NAME.ko
#                 (the --ko module, empty without one); sourced, exported
#   modules.list  "req|opt FILE.ko" lines, in load order
#   args/NNN      one scenario argument per file
# Runs /scenario ARG... with stdin from /dev/null, then prints the marker
# line SMOKE-RC=<status> and powers off.  Setup failures print
# SMOKE-SETUP-FAILED: <what> before the marker.

# --bin executables (/usr/local/bin) win over busybox applets of the same name.
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# No udev here: libdevmapper creates and removes /dev/mapper nodes itself.
export DM_DISABLE_UDEV=1

finish() {
	echo "SMOKE: syncing"
	sync
	echo "SMOKE-RC=$1"
	poweroff -f
	sleep 10
	echo o >/proc/sysrq-trigger
	while :; do sleep 60; done
}

setup_failed() {
	echo "SMOKE-SETUP-FAILED: $*"
	finish 125
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm /tmp /run /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd

SMOKE_DISKS=''
SMOKE_KO=''
# shellcheck source=/dev/null
. /smoke/conf || setup_failed "cannot read /smoke/conf"
export SMOKE_DISKS SMOKE_KO

while read -r kind file; do
	[ -n "$file" ] || continue
	if insmod "/smoke/modules/$file"; then
		continue
	fi
	if [ "$kind" = opt ]; then
		echo "SMOKE: optional module $file did not load (ignored)"
	else
		setup_failed "insmod $file"
	fi
done </smoke/modules.list

for disk in $SMOKE_DISKS; do
	n=0
	while [ ! -b "$disk" ]; do
		n=$((n + 1))
		[ "$n" -le 200 ] || setup_failed "disk $disk did not appear"
		usleep 50000
	done
done

set --
for f in /smoke/args/*; do
	[ -f "$f" ] && set -- "$@" "$(cat "$f")"
done

read -r up _ </proc/uptime
echo "SMOKE-BEGIN uptime=${up}s disks=[${SMOKE_DISKS}]"
cd / || setup_failed "cd /"
/scenario "$@"
rc=$?
read -r up _ </proc/uptime
echo "SMOKE-END uptime=${up}s"
finish "$rc"
