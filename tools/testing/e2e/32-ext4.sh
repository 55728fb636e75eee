#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 32-ext4: a real file system on the target.  A directory tree of about
# 100 MiB (Python's and Perl's libraries, present on any Debian 12 with the
# packages of tools/testing/deps; snapshotted into $WORK so the host cannot
# change it under the test) is copied onto ext4 on the target, checked with
# fsck and diff -r after a fresh activation, partly deleted, trimmed
# (discards free clusters, the used count must fall), copied again into the
# freed space, and checked again.  Afterwards, on the host: qemu-img check
# (no errors, no leaks), the raw export must be byte for byte what the
# target served (sha256 inside UML), and e2fsck -fn on that raw export.
#
# Two images:
#   c64k  64 KiB clusters, empty; mkfs.ext4 runs on the target (discards).
#   c4k   4 KiB clusters, an ext4 file system made on the host with a seed
#         tree, then an internal snapshot: every cluster has refcount 2, so
#         every write to existing data copies on write.  The snapshot must
#         still export exactly the original file system afterwards.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

# The source tree: whatever of these exists, until about 100 MiB.
total=$(host_tree src)
files=$(find src -type f | wc -l)
log "source tree: $((total >> 20)) MiB, $files files"
# The largest top-level directory is deleted, trimmed and copied back.
big=$(du -s src/* | sort -n | tail -n 1 | cut -f2)
big=${big#src/}

# A seed file system for the snapshot image: files of mixed sizes.
mkdir seed
python3 - seed <<'PY'
import os, random, sys
r = random.Random(32)
for i in range(200):
    d = os.path.join(sys.argv[1], "d%02d" % (i % 10))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%03d" % i), "wb") as f:
        f.write(r.randbytes(r.choice([100, 4096, 5000, 65536, 70000, 300000])))
PY

qemu-img create -q -f qcow2 c64k.qcow2 512M
truncate -s 512M c64k.qcow2

truncate -s 512M base.raw
mkfs.ext4 -q -F -d seed base.raw
qemu-img convert -O qcow2 -o cluster_size=4k base.raw c4k.qcow2
qemu-img snapshot -c base c4k.qcow2
truncate -s 512M c4k.qcow2
for img in c64k c4k; do
	qemu-img check -q $img.qcow2 || fail "$img invalid before the test"
done

cat >inner.sh <<'EOF'
set -u
src=$1 big=$2
# st NAME FIELD: a field of the status line (after "<start> <len> qcow2dedup").
st() { dmsetup status "$1" | awk -v f="$2" '{ print $(f + 3) }'; }
used() { st "$1" 4 | cut -d/ -f1; }
die() { echo "FAIL: $*"; dmesg | grep -i qcow2dedup | tail -n 20; umount mnt 2>/dev/null; exit 1; }
mode_ok() { [ "$(st "$1" 1)" = write ] || die "$1: mode is $(st "$1" 1), not write"; }
mkdir -p mnt
t0=$(date +%s)
ts() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

fs() { # NAME DEV MKFS(0/1) SECTORS
	local n=$1 dev=$2 mk=$3 len=$4 u1 u2 u3
	echo "== $n"
	dmsetup create "$n" --table "0 $len qcow2dedup $dev" || die "$n: create"
	if [ "$mk" = 1 ]; then
		mkfs.ext4 -q /dev/mapper/$n || die "$n: mkfs"
	fi
	mount /dev/mapper/$n mnt || die "$n: mount"
	ts copy
	cp -a "$src" mnt/tree || die "$n: cp"
	sync
	mode_ok $n
	umount mnt || die "$n: umount"
	fsck.ext4 -fn /dev/mapper/$n >fsck.out 2>&1 || { cat fsck.out; die "$n: fsck after copy"; }
	echo "after copy: $(dmsetup status $n)"
	st $n 7 >"$n.cow"
	dmsetup remove $n || die "$n: remove"

	# A fresh activation: everything now comes from the metadata on disk.
	dmsetup create "$n" --table "0 $len qcow2dedup $dev" || die "$n: second create"
	mount /dev/mapper/$n mnt || die "$n: second mount"
	ts diff
	diff -r --no-dereference "$src" mnt/tree || die "$n: tree differs after reactivation"
	u1=$(used $n)
	rm -rf "mnt/tree/$big"
	sync
	ts fstrim
	fstrim -v mnt || die "$n: fstrim"
	sync
	u2=$(used $n)
	echo "used clusters: $u1 before rm, $u2 after fstrim"
	[ "$u2" -lt "$u1" ] || die "$n: fstrim freed no cluster ($u1 -> $u2)"
	ts recopy
	cp -a "$src/$big" "mnt/tree/$big" || die "$n: cp into freed space"
	sync
	u3=$(used $n)
	echo "used clusters after the copy into freed space: $u3"
	ts diff2
	diff -r --no-dereference "$src" mnt/tree || die "$n: tree differs after trim and copy"
	mode_ok $n
	umount mnt || die "$n: umount 2"
	fsck.ext4 -fn /dev/mapper/$n >fsck.out 2>&1 || { cat fsck.out; die "$n: fsck at the end"; }
	ts sha256
	sha256sum </dev/mapper/$n | cut -d' ' -f1 >"$n.served.sha256"
	echo "end: $(dmsetup status $n)"
	dmsetup remove $n || die "$n: final remove"
	ts removed
}
EOF
printf 'fs c64k /dev/ubda 1 %s\n' "$(sectors c64k.qcow2)" >>inner.sh
printf 'fs c4k /dev/ubdb 0 %s\n' "$(sectors c4k.qcow2)" >>inner.sh
echo 'echo inner-done' >>inner.sh

start=$(date +%s)
out=$(uml -m 1G -d c64k.qcow2 -d c4k.qcow2 -- bash inner.sh "$WORK/src" "$big" 2>&1) || {
	echo "$out"; fail "UML run failed"; }
echo "$out"
echo "$out" | grep -q '^inner-done$' || fail "the inner script did not finish"
log "UML part: $(( $(date +%s) - start ))s"

for img in c64k c4k; do
	qcheck $img.qcow2
	qemu-img convert -O raw $img.qcow2 $img.raw
	[ "$(sha256sum <$img.raw | cut -d' ' -f1)" = "$(cat $img.served.sha256)" ] ||
		fail "$img: qemu-img's raw export differs from what the target served"
	e2fsck -fn $img.raw >fsck.out 2>&1 || { cat fsck.out; fail "$img: e2fsck on the raw export"; }
	log "$img: qemu-img check clean, raw export identical, e2fsck clean"
	rm -f $img.raw
done
# The snapshot is untouched, and the writes after it were copied on write.
qemu-img convert -l snapshot.name=base -O raw c4k.qcow2 snap.raw
cmp snap.raw base.raw || fail "c4k: the internal snapshot changed"
[ "$(cat c4k.cow)" -gt 0 ] || fail "c4k: no copy-on-write counted under a snapshot"
log "c4k: snapshot intact, $(cat c4k.cow) copy-on-write copies"
