#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 34-enospc: a device too small for what is written.  Images of 256 MiB
# virtual size whose device is only 4 MiB larger than the file qemu-img
# made (64 KiB clusters and 4 KiB clusters, where L2 tables are allocated
# as well).  Inside UML, in one activation:
#   A  2 MiB, O_DIRECT + fsync: fits, reads back.
#   B  16 MiB, O_DIRECT + fsync: fails with ENOSPC part way; the records dd
#      reports written read back.
#   D  8 MiB buffered + fsync: fails (EIO: the block device page cache
#      turns every writeback error into EIO; the kernel log must show the
#      target's "no free cluster" message); the target stays in
#      "write" mode.
#   C  2 MiB over A: in place, must succeed on a full device.
#   discard 1 MiB of B, then E (512 KiB) must succeed in the freed space.
#   G  2 MiB buffered + fsync, more than what is left: part of it fits.
# After removal the host checks qemu-img check (no errors, no leaks) and the
# raw export against the writes that succeeded; in the ranges of failed
# writes (D, G, and the record at which B failed) each cluster must hold
# either the new data or zeros.  Then the file is grown by
# 32 MiB and a second boot writes F (8 MiB) that must now fit; qemu-img
# check and the raw export again.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

MiB=1048576
# Offsets (MiB) of the writes; sizes above.
OFF_A=8 OFF_B=32 OFF_D=100 OFF_E=200 OFF_F=120 OFF_G=210

python3 - <<'PY'
import random
r = random.Random(34)
for name, mib in (("A", 2), ("B", 16), ("C", 2), ("D", 8), ("E", 0.5), ("F", 8), ("G", 2)):
    with open(name + ".bin", "wb") as f:
        f.write(r.randbytes(int(mib * 1048576)))
PY

images=(c64k c4k)
qemu-img create -q -f qcow2 c64k.qcow2 256M
qemu-img create -q -f qcow2 -o cluster_size=4k c4k.qcow2 256M
for img in "${images[@]}"; do
	qemu-io -c "write -P 0x5a 0 1M" -c "write -P 0xa5 $((250 * MiB)) 64k" $img.qcow2 >/dev/null
	qemu-img convert -O raw $img.qcow2 $img.expected
	pad $img.qcow2
	truncate -s +4M $img.qcow2
	qemu-img check -q $img.qcow2 || fail "$img invalid before the test"
	log "$img: device $(( $(stat -c %s $img.qcow2) / 1024 )) KiB for a 256 MiB disk"
done

cat >inner.sh <<'EOF'
set -u
MiB=1048576
rc=0
st() { dmsetup status "$1" | awk -v f="$2" '{ print $(f + 3) }'; }
bad() { echo "FAIL $n: $*"; rc=1; }
# same FILE OFF_MiB LEN: the device (O_DIRECT) holds FILE's first LEN bytes at OFF.
same() {
	dd if=/dev/mapper/$n iflag=direct,skip_bytes,count_bytes \
		skip=$(($2 * MiB)) count="$3" bs=64k status=none | cmp -n "$3" "$1" -
}
# wr FILE OFF_MiB [dd flags...]: dd FILE to the target; dd's stderr in wr.err.
wr() {
	local f=$1 off=$2; shift 2
	dd if="$f" of=/dev/mapper/$n bs=64k seek=$((off * 16)) conv=fsync,notrunc "$@" 2>wr.err
}

enospc() { # NAME DEV SECTORS
	n=$1
	echo "== $n"
	dmsetup create $n --table "0 $3 qcow2dedup $2" || { bad create; return; }
	echo "start: $(dmsetup status $n)"

	wr A.bin $OFF_A oflag=direct || { cat wr.err; bad "A failed"; }
	same A.bin $OFF_A $((2 * MiB)) || bad "A does not read back"

	if wr B.bin $OFF_B oflag=direct; then
		bad "B (16 MiB) did not fail on a device with 4 MiB free"
	fi
	cat wr.err
	grep -q 'No space left on device' wr.err || bad "B: no ENOSPC"
	local recs
	recs=$(sed -n 's/^\([0-9]*\)+0 records out$/\1/p' wr.err)
	echo "B: $recs records of 64 KiB written before ENOSPC"
	echo $((recs * 65536)) >$n.b_bytes
	[ "${recs:-0}" -gt 0 ] || bad "B: nothing written before ENOSPC"
	same B.bin $OFF_B $((recs * 65536)) || bad "B: the records written do not read back"
	echo "full: $(dmsetup status $n)"
	[ "$(st $n 1)" = write ] || bad "mode $(st $n 1) after ENOSPC"

	if wr D.bin $OFF_D; then
		bad "buffered D did not fail"
	fi
	cat wr.err
	# The bio fails with BLK_STS_NOSPC, but the page cache of a block device
	# records any writeback error as EIO (mark_buffer_write_io_error()), so
	# fsync may say either; the target's message says which it was.
	grep -Eq 'fsync failed.*(No space left on device|Input/output error)' wr.err ||
		bad "buffered D: no error from fsync"
	# (DMERR_LIMIT: the message may be rate-limited by now; once per boot.)
	dmesg | grep -q "qcow2dedup: .*no free cluster on the device" || bad "no ENOSPC message in the kernel log"
	[ "$(st $n 1)" = write ] || bad "mode $(st $n 1) after buffered ENOSPC"

	wr C.bin $OFF_A oflag=direct || { cat wr.err; bad "C (in place) failed on a full device"; }
	same C.bin $OFF_A $((2 * MiB)) || bad "C does not read back"

	blkdiscard -o $((OFF_B * MiB)) -l $MiB /dev/mapper/$n || bad "discard"
	dd if=/dev/mapper/$n iflag=direct bs=64k skip=$((OFF_B * 16)) count=16 status=none | cmp -n $MiB /dev/zero - ||
		bad "the discarded range does not read as zeros"
	wr E.bin $OFF_E oflag=direct || { cat wr.err; bad "E failed after 1 MiB was discarded"; }
	same E.bin $OFF_E $((MiB / 2)) || bad "E does not read back"

	# G: buffered, more than the few clusters left: part of it fits.
	if wr G.bin $OFF_G; then
		bad "buffered G (2 MiB) did not fail"
	fi
	grep -q 'fsync failed' wr.err || { cat wr.err; bad "buffered G: no error from fsync"; }
	echo "G: $(dmsetup status $n)"
	echo "end: $(dmsetup status $n)"
	[ "$(st $n 1)" = write ] || bad "mode $(st $n 1) at the end"
	dmsetup remove $n || bad remove
}

grown() { # NAME DEV SECTORS
	n=$1
	echo "== $n grown"
	dmsetup create $n --table "0 $3 qcow2dedup $2" || { bad create; return; }
	echo "start: $(dmsetup status $n)"
	wr F.bin $OFF_F oflag=direct || { cat wr.err; bad "F failed on the grown device"; }
	same F.bin $OFF_F $((8 * MiB)) || bad "F does not read back"
	echo "end: $(dmsetup status $n)"
	[ "$(st $n 1)" = write ] || bad "mode $(st $n 1)"
	dmsetup remove $n || bad remove
}
EOF
{
	for v in OFF_A OFF_B OFF_D OFF_E OFF_F OFF_G; do echo "$v=${!v}"; done
	echo 'phase=$1'
	i=0
	for img in "${images[@]}"; do
		printf '$phase %s /dev/ubd%s %s\n' $img "$(printf "\\$(printf %o $((97 + i)))")" "$(sectors $img.qcow2)"
		i=$((i + 1))
	done
	echo 'echo inner-done; exit $rc'
} >>inner.sh

# expect IMG: the raw export must equal $img.expected (updated by the caller).
expect() {
	local img=$1
	qcheck $img.qcow2
	qemu-img convert -O raw $img.qcow2 $img.raw
	cmp $img.raw $img.expected || fail "$img: raw export differs from the writes that succeeded"
}
# either IMG CLUSTER_SIZE FILE FILE_OFF DEV_OFF LEN: each cluster of
# IMG.raw in [DEV_OFF, +LEN) holds FILE's bytes from FILE_OFF on, or zeros;
# then copy what it holds into IMG.expected.
either() {
	python3 - "$@" <<'PY' || fail "$1: a failed write left a cluster neither written nor zero"
import sys
img, cs, src, soff, doff, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:])
want = open(src, "rb").read()[soff:soff + n]
with open(img + ".raw", "rb") as f:
    f.seek(doff); got = f.read(n)
written = 0
for o in range(0, n, cs):
    if got[o:o + cs] == want[o:o + cs]:
        written += 1
    elif got[o:o + cs] != bytes(cs):
        sys.exit("%s: cluster at %d holds something else" % (img, doff + o))
with open(img + ".expected", "r+b") as f:
    f.seek(doff); f.write(got)
print("# %s: %d of %d clusters of a failed write at %d were written" % (img, written, n // cs, doff))
PY
}
put() { # IMG FILE OFF_MiB LEN
	dd if="$2" of="$1.expected" bs=64k seek=$(($3 * 16)) count="$4" iflag=count_bytes conv=notrunc status=none
}

disks=()
for img in "${images[@]}"; do disks+=(-d "$img.qcow2"); done
start=$(date +%s)
uml -m 768M "${disks[@]}" -- bash inner.sh enospc || fail "UML run (full device) failed"
for img in "${images[@]}"; do
	put $img C.bin $OFF_A $((2 * MiB))
	put $img B.bin $OFF_B "$(cat $img.b_bytes)"
	put $img /dev/zero $OFF_B $MiB
	put $img E.bin $OFF_E $((MiB / 2))
	# Failed writes leave each cluster of their range either as written or
	# untouched (zeros): the 64 KiB record at which B failed, and all of D.
	cs=65536; [ $img = c4k ] && cs=4096
	qemu-img convert -O raw $img.qcow2 $img.raw
	either $img $cs B.bin "$(cat $img.b_bytes)" $((OFF_B * MiB + $(cat $img.b_bytes))) 65536
	either $img $cs D.bin 0 $((OFF_D * MiB)) $((8 * MiB))
	either $img $cs G.bin 0 $((OFF_G * MiB)) $((2 * MiB))
	expect $img
	log "$img: after ENOSPC: qemu-img check clean, $(cat $img.b_bytes) bytes of B kept, raw export as expected"
	truncate -s +32M $img.qcow2
done
uml -m 768M "${disks[@]}" -- bash inner.sh grown || fail "UML run (grown device) failed"
for img in "${images[@]}"; do
	put $img F.bin $OFF_F $((8 * MiB))
	expect $img
	log "$img: grown device: F written, qemu-img check clean, raw export as expected"
done
log "total $(( $(date +%s) - start ))s"
