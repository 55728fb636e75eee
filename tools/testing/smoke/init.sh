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

# hang_monitor PID: while PID runs, watch the disks.  If no request on any of
# them completes for 60 s while some are in flight, print what the block
# layer holds (blk-mq debugfs: requests at the driver, in dispatch, wbt's
# counts) and the blocked tasks (sysrq w), once: a stuck request and a
# throttle that never wakes look the same in a hung-task report.  The sysrq
# call traces fail the run (run rejects any call trace on the console).
hang_monitor() {
	last='' still=0
	while kill -0 "$1" 2>/dev/null; do
		sleep 5
		done_io=$(cat /sys/block/vd*/stat | awk '{ print $1, $5, $12, $16 }')
		busy=$(cat /sys/block/vd*/inflight | awk '$1 + $2 > 0')
		if [ "$done_io" != "$last" ] || [ -z "$busy" ]; then
			last=$done_io still=0
			continue
		fi
		still=$((still + 5))
		[ "$still" -eq 60 ] || continue
		echo "SMOKE-HANG: no disk request completed for 60 s with requests in flight"
		for dir in /sys/block/vd*; do
			name=${dir##*/}
			echo "SMOKE-HANG: $name inflight (reads writes): $(cat "$dir/inflight")"
			for f in /sys/kernel/debug/block/"$name"/hctx*/busy \
				/sys/kernel/debug/block/"$name"/hctx*/dispatch \
				/sys/kernel/debug/block/"$name"/rqos/wbt/*; do
				[ -r "$f" ] && echo "SMOKE-HANG: $f: $(tr '\n' ' ' <"$f")"
			done
		done
		echo w >/proc/sysrq-trigger
	done
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

# Writeback throttling off on the test disks.  A CI run on 2026-12-06 hung
# with the target's worker asleep in wbt_wait() (rq_qos_wait) for 120 s under
# host load; it did not happen again in 10 runs here, loaded or not.  wbt
# paces page-cache writeback against latency and decides nothing this test
# checks; off, a stall left is one of a request itself, and the monitor
# above shows where it sits.
for disk in $SMOKE_DISKS; do
	wbt=/sys/block/${disk#/dev/}/queue/wbt_lat_usec
	[ -w "$wbt" ] && echo 0 >"$wbt"
done

read -r up _ </proc/uptime
echo "SMOKE-BEGIN uptime=${up}s disks=[${SMOKE_DISKS}]"
cd / || setup_failed "cd /"
/scenario "$@" &
scenario=$!
hang_monitor "$scenario" &
monitor=$!
wait "$scenario"
rc=$?
kill "$monitor" 2>/dev/null
read -r up _ </proc/uptime
echo "SMOKE-END uptime=${up}s"
finish "$rc"
