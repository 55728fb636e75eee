#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 33-discard: discards free clusters, leave the rest of the disk intact, and
# freed clusters are allocated again.
#
# A 64 MiB disk with 64 KiB clusters on a device only 16 clusters larger than
# the image needs when the disk is fully written: [0, 32M) is data,
# [32M, 64M) becomes an ext4 file system (through dm-linear on top of the
# target).
#   boot 1: write the whole disk (a 1 MiB hole left out); O_DIRECT
#           read-back; remove.  Host: qemu-img check clean, content as
#           written, allocated clusters A1.
#   boot 2: blkdiscard of cluster-aligned and unaligned ranges of the data
#           area (whole clusters inside are freed, the partial ones at the
#           ends stay as they are); mkfs.ext4 (which discards its area),
#           mount, write a 20 MiB file, delete it, fstrim, write another
#           20 MiB file, e2fsck.  The file system's 320 clusters of data fit
#           only if freed clusters are used again: the device had fewer free
#           clusters before the discards.  `dmsetup status` follows the used
#           clusters: down after the discards and after fstrim, never above
#           the first maximum plus the new data.
#   host:   qemu-img check clean with fewer allocated clusters than A1;
#           `qemu-img map` shows no data in the discarded ranges; the data
#           area is as expected outside them; the file system passes e2fsck
#           and holds the second file.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

K=1024 M=$((1 << 20))
CS=65536 SIZE=$((64 * M)) FS_OFF=$((32 * M)) FS_LEN=$((32 * M))
SLACK=16	# free clusters on the device when the whole disk is allocated
HOLE_OFF=$((24 * M)) HOLE_LEN=$M
# Discards in the data area: OFFSET LENGTH (the first two cluster-aligned).
DISCARDS=(
	"$((4 * M)) $((2 * M))"
	"$((10 * M)) $CS"
	"$((20 * M + 4 * K + 512)) $M"
	"$((28 * M + 8 * K)) $((16 * K))"
	"$((14 * M - 1536)) $((3 * M + 700 * 512))"
)
FILE_MB=20

cd "$WORK"
img=d.qcow2
qemu-img create -q -f qcow2 -o cluster_size=$CS "$img" $SIZE
# Header, refcount table and block, L1 (all from qemu-img), one L2 table, the
# data clusters and the slack.
devsize=$(($(stat -c %s "$img") + (1 + SIZE / CS + SLACK) * CS))
truncate -s $devsize "$img"

python3 - <<PY
import random
r = random.Random(33)
with open("data1.raw", "wb") as f:
    f.write(r.randbytes($SIZE))
    f.seek($HOLE_OFF)
    f.write(bytes($HOLE_LEN))
for name in ("file1.bin", "file2.bin"):
    with open(name, "wb") as f:
        f.write(r.randbytes($FILE_MB << 20))
PY

status_of() { # allocated guest clusters, after asserting that the image is clean
	qcheck "$img" >&2
	python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["allocated-clusters"])' "$img.check.json"
}

# ---- boot 1: fill the disk ----
cat >inner1.sh <<EOF
set -u
dmsetup create d --table "0 $((SIZE / 512)) qcow2dedup /dev/ubda" || exit 1
rc=0
dd if=data1.raw of=/dev/mapper/d bs=1M oflag=direct conv=sparse,notrunc status=none ||
	{ echo "FAIL: writing the data"; rc=1; }
dd if=/dev/mapper/d iflag=direct bs=1M status=none | cmp - data1.raw ||
	{ echo "FAIL: read-back differs"; rc=1; }
dmsetup status d | tee status1
dmsetup remove d || { echo "FAIL: remove"; rc=1; }
exit \$rc
EOF
log "boot 1: writing the disk"
uml -m 512M -d "$img" -- bash inner1.sh || fail "boot 1 (see above)"
a1=$(status_of)
qemu-img compare -f raw -F qcow2 data1.raw "$img" || fail "content after boot 1"
read -r _ _ _ _ _ _ used1 _ <status1
u1=${used1%/*} total=${used1#*/}
log "after boot 1: $a1 data clusters allocated; device: $used1 clusters used"
[ $((total - u1)) -lt $((FILE_MB * M / CS)) ] ||
	fail "the device has $((total - u1)) free clusters: too many to prove reuse"

# ---- boot 2: discards, file system, fstrim, reuse ----
{
	echo 'set -u'
	echo 'used() { dmsetup status d | cut -d" " -f7 | cut -d/ -f1; }'
	echo 'check() { echo "FAIL: $*"; rc=1; }'
	echo 'rc=0'
	echo 'dmsetup create d --table "0 '$((SIZE / 512))' qcow2dedup /dev/ubda" || exit 1'
	echo 'u0=$(used)'
	for d in "${DISCARDS[@]}"; do
		read -r off len <<<"$d"
		echo "blkdiscard -o $off -l $len /dev/mapper/d || check 'blkdiscard -o $off -l $len'"
	done
	echo 'sync /dev/mapper/d; u_disc=$(used)'  # fsync: a flush, so a commit
	echo '[ "$u_disc" -lt "$u0" ] || check "used clusters $u0 -> $u_disc after the discards"'
	echo 'dmsetup create fs --table "0 '$((FS_LEN / 512))' linear /dev/mapper/d '$((FS_OFF / 512))'" || exit 1'
	echo 'mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 /dev/mapper/fs || check mkfs'
	echo 'sync /dev/mapper/d; u_mkfs=$(used)'
	echo 'mkdir -p mnt && mount /dev/mapper/fs mnt || exit 1'
	echo "cp file1.bin mnt/f1 && sync || check 'writing file 1'"
	echo 'u_full=$(used)'
	echo 'cmp mnt/f1 file1.bin || check "file 1 differs"'
	echo 'rm mnt/f1 && sync && fstrim -v mnt || check fstrim'
	echo 'sync /dev/mapper/d; u_trim=$(used)'
	echo "[ \$((u_full - u_trim)) -ge $((FILE_MB * M / CS * 9 / 10)) ] || check \"fstrim freed only \$((u_full - u_trim)) clusters\""
	echo "cp file2.bin mnt/f2 && sync || check 'writing file 2'"
	echo 'u_new=$(used)'
	echo "[ \"\$u_new\" -le \$((u0 + $((FILE_MB * M / CS)))) ] || check \"used \$u_new > first maximum \$u0 + new data\""
	echo 'echo 3 >/proc/sys/vm/drop_caches; cmp mnt/f2 file2.bin || check "file 2 differs"'
	echo 'umount mnt || check umount'
	echo 'e2fsck -fn /dev/mapper/fs >fsck.log 2>&1 || { cat fsck.log; check e2fsck; }'
	echo 'dmsetup remove fs || check "remove fs"'
	echo 'echo "used clusters: first $u0, after discards $u_disc, after mkfs $u_mkfs, file $u_full, after fstrim $u_trim, new file $u_new"'
	echo 'dmsetup status d'
	echo 'dmsetup remove d || check remove'
	echo 'exit $rc'
} >inner2.sh
log "boot 2: discards, ext4, fstrim, reuse"
uml -m 512M -d "$img" -- bash inner2.sh || fail "boot 2 (see above)"
a2=$(status_of)
log "after boot 2: $a2 data clusters allocated (was $a1)"
[ "$a2" -lt "$a1" ] || fail "no fewer clusters allocated after the discards"

# Expected data area: the whole clusters inside each discard are zero.
qemu-img map --output=json "$img" >map.json
qemu-img convert -O raw "$img" after.raw
python3 - "${DISCARDS[@]}" <<PY || fail "discarded ranges or data area wrong"
import json, sys
cs, fs_off = $CS, $FS_OFF
m = json.load(open("map.json"))
exp = bytearray(open("data1.raw", "rb").read(fs_off))
ok = True
for d in sys.argv[1:]:
    off, n = map(int, d.split())
    s, e = -(-off // cs) * cs, (off + n) // cs * cs
    if s >= e:
        continue
    exp[s:e] = bytes(e - s)
    for x in m:
        if x["start"] < e and x["start"] + x["length"] > s and x["data"]:
            print("map: [%d, %d) has data inside discarded [%d, %d)"
                  % (x["start"], x["start"] + x["length"], s, e))
            ok = False
got = open("after.raw", "rb").read(fs_off)
if got != exp:
    k = next(i for i in range(fs_off) if got[i] != exp[i])
    print("data area differs first at byte %d" % k)
    ok = False
fs_data = sum(min(x["start"] + x["length"], 2 * fs_off) - max(x["start"], fs_off)
              for x in m if x["data"] and x["start"] + x["length"] > fs_off)
print("# file-system area: %d MiB allocated of %d" % (fs_data >> 20, fs_off >> 20))
sys.exit(0 if ok else 1)
PY
dd if=after.raw of=fs.img bs=1M skip=$((FS_OFF / M)) count=$((FS_LEN / M)) status=none
e2fsck -fn fs.img >fsck.host.log 2>&1 || { cat fsck.host.log; fail "e2fsck on the host"; }
debugfs -R "dump /f2 f2.out" fs.img >/dev/null 2>&1
cmp f2.out file2.bin || fail "file 2 differs on the host"
log "discards freed clusters, data intact, freed space reused"
