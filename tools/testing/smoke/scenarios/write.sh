#!/bin/sh
# Smoke scenario in Debian's stock kernel: writes and discards through the
# module (already loaded by /init), then a clean removal; the host checks the
# images with qemu-img afterwards (see check-write).
#   write.sh SECTORS1 SECTORS2 OP...: /dev/vda and /dev/vdc are qcow2 images
#   (larger than their contents, so that clusters can be allocated), /dev/vdb
#   is a raw file of patterns.  Each OP is applied to both images in order:
#     w:SRC:DST:LEN:BS[:direct]  dd LEN bytes from /dev/vdb at SRC to the
#                                image at DST, BS bytes a write, conv=fsync
#     d:OFF:LEN                  blkdiscard -o OFF -l LEN
set -eu
grep -q '^dm_qcow2dedup ' /proc/modules
s1=$1 s2=$2
shift 2

run() { # NAME QCOW2 SECTORS OPS...
	name=$1 dev=$2 len=$3
	shift 3
	dmsetup create "$name" --table "0 $len qcow2dedup $dev"
	dmsetup table "$name"
	dmsetup status "$name"
	for op in "$@"; do
		IFS=: read -r kind a b c d e <<EOF
$op
EOF
		case $kind in
		w)
			flag=
			[ "${e:-}" = direct ] && flag=,direct
			dd if=/dev/vdb of="/dev/mapper/$name" bs="$d" \
				iflag=skip_bytes,count_bytes,fullblock skip="$a" count="$c" \
				oflag=seek_bytes$flag seek="$b" conv=fsync,notrunc 2>/dev/null ||
				{ echo "smoke: $name: dd for $op failed" >&2; exit 1; }
			;;
		d)
			blkdiscard -o "$a" -l "$b" "/dev/mapper/$name" ||
				{ echo "smoke: $name: $op failed" >&2; exit 1; }
			;;
		*)
			echo "smoke: unknown op $op" >&2
			exit 2
			;;
		esac
		echo "smoke: $name: $op done"
	done
	# Flush what the discards staged, as a file system would.
	sync
	dmsetup status "$name"
	mode=$(dmsetup status "$name" | cut -d' ' -f4)
	[ "$mode" = write ] || { echo "smoke: $name is in $mode mode" >&2; exit 1; }
	# The ops write some data twice: this kernel's sha256 must find it.
	dmsetup message "$name" 0 stats
	hits=$(dmsetup status "$name" | cut -d' ' -f13)
	[ "$hits" -gt 0 ] || { echo "smoke: $name: no dedup hit" >&2; exit 1; }
	dmsetup remove "$name"
	echo "smoke: $name written and removed"
}
run plain /dev/vda "$s1" "$@"
run packed /dev/vdc "$s2" "$@"
if dmesg | grep -E 'device-mapper: qcow2dedup: .*(failed|corrupt|refused)'; then
	echo "smoke: the target complained" >&2
	exit 1
fi
echo "smoke: ok"
