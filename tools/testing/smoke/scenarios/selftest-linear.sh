#!/bin/sh
# Harness self-test (no dm-qcow2dedup needed): map /dev/vda read-only through
# dm-linear and compare the mapping with the disk.  Optional argument: the
# expected disk size in 512-byte sectors.
set -eu
dev=/dev/vda
sectors=$(blockdev --getsz "$dev")
echo "selftest: $dev has $sectors sectors"
if [ $# -ge 1 ] && [ "$1" != "$sectors" ]; then
	echo "selftest: expected $1 sectors" >&2
	exit 1
fi
grep -q dm_mod /proc/modules
grep -q dm_bufio /proc/modules
dmsetup create --readonly lin --table "0 $sectors linear $dev 0"
dmsetup table lin
[ "$(blockdev --getro /dev/mapper/lin)" = 1 ]
cmp /dev/mapper/lin "$dev"
echo "selftest: /dev/mapper/lin matches $dev"
dmsetup remove lin
[ ! -e /dev/mapper/lin ]
echo "selftest: ok"
