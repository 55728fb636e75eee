#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 41-dedup-ext4: a real file system's duplicate files cost (almost) nothing.
# A tree of about 100 MiB (Python's and Perl's libraries, as in 32-ext4,
# snapshotted into $WORK) is copied twice onto ext4 on the target (4 KiB
# clusters, the file system's block size, so every data block is a whole
# cluster): to a/, sync, then to b/, sync.  The used host clusters from the
# status line before and after each copy give each copy's cost; the second
# must cost at most 5% of the first: its data blocks must all be found in
# the index (dedup hits plus zero clusters >= 90% of the tree's data
# blocks), only its inodes, directories and L2 tables are new.  Cost is
# the change of <used>: with dedup a whole-cluster rewrite (bitmaps, inode
# tables) allocates a new cluster and frees the old, so clusters_allocated
# counts rewrites too (printed, not asserted).  The file
# system has no journal: journal blocks carry sequence numbers, are unique
# by design and would add a few MiB that have nothing to do with dedup.
#
# Inside UML after the copies: umount, fsck -fn, a read-only mount (cold
# cache) and diff -r of both copies against the source, the sha256 of the
# whole device.  On the host after removal: qemu-img check clean, the raw
# export equal to what the target served, e2fsck -fn on it, and for the
# largest files, via debugfs and `qemu-img map`, every block of a/FILE and
# of b/FILE on the same host cluster.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

total=$(host_tree src)
# Data blocks of the tree: what the second copy must find in the index.
blocks=$(find src -type f -printf '%s\n' | awk '{ b += int(($1 + 4095) / 4096) } END { print b }')
log "source tree: $((total >> 20)) MiB, $(find src -type f | wc -l) files, $blocks data blocks"
# The largest files (relative to src), checked block by block on the host.
mapfile -t big < <(find src -type f -printf '%s %P\n' | sort -n | tail -n 3 | cut -d' ' -f2-)

qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 1G
truncate -s 512M img.qcow2
inner_prelude >common.sh
cat >ext4.sh <<EOF
. ./common.sh
die() { echo "FAIL: \$*"; dmesg | grep -i qcow2dedup | tail -n 20; umount mnt 2>/dev/null; exit 1; }
dmsetup create e --table "0 $(sectors img.qcow2) qcow2dedup /dev/ubda" || die create
mkfs.ext4 -q -b 4096 -O ^has_journal -E lazy_itable_init=0 /dev/mapper/e || die mkfs
mkdir -p mnt && mount /dev/mapper/e mnt || die mount
sync; save e s0
cp -a src mnt/a || die "copy a"
sync; save e s1
cp -a src mnt/b || die "copy b"
sync; save e s2
umount mnt || die umount
fsck.ext4 -fn /dev/mapper/e >fsck.out 2>&1 || { cat fsck.out; die "fsck"; }
blockdev --flushbufs /dev/mapper/e
mount -o ro /dev/mapper/e mnt || die "read-only mount"
for c in a b; do diff -r --no-dereference src mnt/\$c || bad "copy \$c differs from the source"; done
umount mnt || die "umount 2"
sha256sum </dev/mapper/e | cut -d' ' -f1 >served.sha256
dmsetup remove e || bad remove
echo ext4-done
exit \$rc
EOF
log "two copies of the tree on ext4 in UML"
start=$(date +%s)
run_inner ext4 -m 1G -d img.qcow2
log "UML part: $(($(date +%s) - start))s"

for s in s0 s1 s2; do
	agree $s
	want_stat $s.st mode = write
	want_stat $s.st used -gt 0
done
val() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }
ua=$(($(val s1.st used) - $(val s0.st used))) ub=$(($(val s2.st used) - $(val s1.st used)))
aa=$(($(val s1.st clusters_allocated) - $(val s0.st clusters_allocated)))
ab=$(($(val s2.st clusters_allocated) - $(val s1.st clusters_allocated)))
hb=$(($(val s2.st dedup_hits) - $(val s1.st dedup_hits)))
zb=$(($(val s2.st zero_clusters) - $(val s1.st zero_clusters)))
log "copy a: $ua used clusters ($aa allocations); copy b: $ub used clusters ($ab allocations)"
log "copy b: $hb dedup hits, $zb zero clusters for $blocks data blocks"
[ "$ua" -ge $((blocks / 2)) ] || fail "copy a used only $ua clusters for $blocks data blocks: nothing measured"
[ $((ub * 100)) -le $((ua * 5)) ] ||
	fail "copy b cost $ub clusters, more than 5% of copy a's $ua"
[ $(((hb + zb) * 10)) -ge $((blocks * 9)) ] ||
	fail "copy b: $hb hits + $zb zero clusters, fewer than 90% of $blocks data blocks"

check_clean img.qcow2
qemu-img convert -O raw img.qcow2 img.raw
[ "$(sha256sum <img.raw | cut -d' ' -f1)" = "$(cat served.sha256)" ] ||
	fail "qemu-img's raw export differs from what the target served"
e2fsck -fn img.raw >fsck.host 2>&1 || { cat fsck.host; fail "e2fsck on the raw export"; }
qemu-img map --output=json img.qcow2 >img.map.json
for f in "${big[@]}"; do
	for c in a b; do
		debugfs -R "ex -l \"/$c/$f\"" img.raw 2>/dev/null >"ext.$c" || fail "debugfs: extents of /$c/$f"
	done
	python3 - "$f" <<'PY' || fail "$f: the two copies are not on the same host clusters"
import json, re, sys
g2h = {}
for x in json.load(open("img.map.json")):
    for o in range(0, x["length"], 4096):
        if x["data"] and "offset" in x:
            g2h[x["start"] + o] = x["offset"] + o
        elif x.get("zero"):
            g2h[x["start"] + o] = "zero"   # an all-zero block: a zero entry
def blocks(c):  # leaf lines "lvl/max ent/max L0[ - L1] P0[ - P1] LEN": physical blocks in file order
    ext = []
    for line in open("ext." + c):
        m = re.match(r"\s*\d+/\s*\d+\s+\d+/\s*\d+\s+(.*)", line)
        if m:
            n = [int(t) for t in m.group(1).split() if t.isdigit()]
            if len(n) not in (3, 5):
                sys.exit("cannot parse %r" % line)
            ext.append((n[0], n[2] if len(n) == 5 else n[1], n[-1]))
    if not ext:
        sys.exit("no extents for %s/%s" % (c, sys.argv[1]))
    return [p + i for _, p, n in sorted(ext) for i in range(n)]
a, b = blocks("a"), blocks("b")
if len(a) != len(b):
    sys.exit("%d blocks in a/, %d in b/" % (len(a), len(b)))
for i, (x, y) in enumerate(zip(a, b)):
    hx, hy = g2h.get(x * 4096), g2h.get(y * 4096)
    if hx is None or hx != hy:
        sys.exit("block %d: a/ fs block %d -> host %s, b/ fs block %d -> host %s" % (i, x, hx, y, hy))
print("# %s: %d blocks, both copies on the same host clusters" % (sys.argv[1], len(a)))
PY
done
log "second copy deduplicated; file system and image clean"
