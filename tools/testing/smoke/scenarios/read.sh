#!/bin/sh
# Smoke scenario in Debian's stock kernel: the module (already loaded by
# /init) serves qcow2 images read-only, byte for byte as qemu-img exports
# them, and refuses writes.
#   read.sh SECTORS1 SECTORS2: /dev/vda and /dev/vdc are qcow2 images whose raw
#   exports are /dev/vdb and /dev/vdd.
set -eu
grep -q '^dm_qcow2dedup ' /proc/modules
dmsetup targets | grep qcow2dedup
check() { # NAME QCOW2 RAW SECTORS
	# A read-only table: the module must refuse writes and never write.
	dmsetup create --readonly "$1" --table "0 $4 qcow2dedup $2"
	dmsetup table "$1"
	dmsetup status "$1"
	# The raw export is padded to a whole sector count; compare the disk's length.
	cmp -n $(($4 * 512)) "/dev/mapper/$1" "$3"
	echo "smoke: $1 reads back exactly ($4 sectors)"
	if dd if=/dev/zero of="/dev/mapper/$1" bs=4096 count=1 conv=fsync 2>/dev/null; then
		echo "smoke: a write to $1 succeeded on a read-only target" >&2
		exit 1
	fi
	dmsetup remove "$1"
}
check plain /dev/vda /dev/vdb "$1"
check packed /dev/vdc /dev/vdd "$2"
echo "smoke: ok"
