#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 69-alloc-runs: under nodedup, a write of whole guest clusters that hold
# no data (unallocated, or zero) reaches the worker as one bio, and the
# worker writes it to new host clusters in rows, one bio per row (stats
# alloc_runs; issue 11: before, such a write was cut at every cluster).
#
# Part 1, 4 KiB clusters, 64 MiB, an internal snapshot of X at [0, 1M)
# (the L2 table of [0, 2M) is shared: the first write copies it):
#   a  D1, 16 MiB in 1 MiB O_DIRECT writes at 1M: runs into a shared L2
#      table, then into tables made for them (one every 2 MiB);
#   b  write-zeroes over [20M, 21M) (zero clusters), then D2 over it;
#   c  1 MiB at 16.5M: half in place over D1 (write_runs), half new (a run);
#   d  1 MiB at 30M + 512 (not cluster-aligned): a partial cluster at each
#      end, the 255 whole ones between as a run;
#   e  a 2 MiB write at 40M with RWF_DSYNC (FUA: cut at every cluster,
#      each waits for its commit), then 4 MiB buffered through the page
#      cache at 44M (the block layer's own merged writes);
#   f  after a reactivation (no L2 block cached), 1 MiB over D1's first
#      (all COPIED: in place, no cluster allocated) and 1 MiB at 30.5M (129
#      clusters of U in place, 127 new), the bytes already there.
# The first MiB of a and both writes of f are cold: their L2 block is not
# cached.  Such a write goes to the worker whole (writes_cold counts it,
# at most once per bio the block layer made of it), which writes rows in
# place and allocates runs (before, it was cut at every cluster, and on
# SMP the clusters reached the worker in any order: D1's first MiB landed
# in 33 pieces on the host).
# Inside: the device reads back as the expected disk (cmp), alloc_runs
# counts at least the 1 MiB writes of a, b and d, the mode stays write.
# Host: qemu-img compare with the expected disk, the snapshot still reads
# X, qemu-img check is clean, and `qemu-img map` shows D1 in rows.
#
# Part 2, no space: a 64 MiB image on a 4 MiB file, written with 1 MiB
# writes until the device is full.  The writes fail with ENOSPC (none
# past the end), the mode stays write; what the device read before its
# removal is what qemu-img reads from the image after it, which checks
# clean (no leak: a run that found no room took none).
#
# Part 3, at once (for the SMP kernel: make e2e-smp): two loops on one
# 64 MiB image, each writing its region with fio and verifying it (crc32c),
# then freeing it (discard, or write-zeroes: zero clusters), pass after
# pass, for RUNS_SECONDS (8) and two passes at least: 1 MiB writes at
# iodepth 4 over [0, 16M), 256 KiB writes at iodepth 16 in random order
# over [16M, 32M).  Runs are
# allocated while map() looks up other bios on the other CPU and while the
# clusters the other loop freed are reused.  At the end both regions hold
# their last pass (fio verifies once more), the mode is write, the device
# reads what qemu-img reads from the image, which checks clean.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
M=$((1 << 20))

python3 -c '
import random
r = random.Random(69)
for name, n in (("X", 1), ("D1", 16), ("D2", 1), ("C", 1), ("U", 1), ("F", 2), ("G", 4)):
    open(name + ".bin", "wb").write(r.randbytes(n << 20))'
qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 64M
qemu-io -f qcow2 -c "write -s X.bin 0 1M" img.qcow2 >/dev/null
qemu-img snapshot -c s img.qcow2
truncate -s 128M img.qcow2
LEN=$(((64 * M) / 512))

# The expected disk.
python3 - <<'PY'
M = 1 << 20
d = bytearray(64 * M)
def put(name, off):
    b = open(name, "rb").read()
    d[off:off + len(b)] = b
put("X.bin", 0)
put("D1.bin", 1 * M)
put("D2.bin", 20 * M)
put("C.bin", 16 * M + M // 2)
put("U.bin", 30 * M + 512)
put("F.bin", 40 * M)
put("G.bin", 44 * M)
open("exp.raw", "wb").write(d)
PY

inner_prelude >common.sh
cat >one.sh <<EOF
. ./common.sh
d=/dev/mapper/t
st() { dmsetup message t 0 stats | awk -v k=\$1 '\$1 == k { print \$2 }'; }
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda 1 nodedup" || { echo "FAIL: create"; exit 1; }
put D1.bin \$d 1
sync \$d
a=\$(st alloc_runs)
echo "a: alloc_runs \$a, clusters_allocated \$(st clusters_allocated), writes_cold \$(st writes_cold)"
# 16 writes of 1 MiB, each one run at least (L2 tables start every 2 MiB).
[ "\$a" -ge 16 ] || bad "a: alloc_runs \$a after 16 MiB of whole new clusters"
# The first MiB's L2 block was not cached: it waits for it as one bio (or
# as the few the block layer makes of 1 MiB), not cut at every cluster.
[ "\$(st writes_cold)" -le 8 ] || bad "a: the cold first MiB went as \$(st writes_cold) writes"
blkdiscard -z -o $((20 * M)) -l $M \$d || bad "b: write-zeroes"
put D2.bin \$d 20
sync \$d
b=\$(st alloc_runs)
[ "\$b" -gt "\$a" ] || bad "b: no run over zero clusters (\$a -> \$b)"
w=\$(st write_runs)
dd if=C.bin of=\$d bs=1M seek=$((16 * M + M / 2)) oflag=direct,seek_bytes conv=notrunc status=none || bad "c: write"
sync \$d
[ "\$(st write_runs)" -gt "\$w" ] || bad "c: the half over D1 did not go in place as a row"
[ "\$(st alloc_runs)" -gt "\$b" ] || bad "c: the new half was not a run"
c=\$(st alloc_runs)
dd if=U.bin of=\$d bs=1M seek=$((30 * M + 512)) oflag=direct,seek_bytes conv=notrunc status=none || bad "d: write"
sync \$d
[ "\$(st alloc_runs)" -gt "\$c" ] || bad "d: the whole clusters of an unaligned write were not a run"
dd if=F.bin of=\$d bs=2M seek=20 oflag=direct,dsync conv=notrunc status=none || bad "e: dsync write"
dd if=G.bin of=\$d bs=1M seek=44 conv=notrunc,fsync status=none || bad "e: buffered write"
save t one
dmsetup remove t || bad "f: remove"
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda 1 nodedup" || bad "f: create"
# f: nothing cached: 1 MiB over D1 (all COPIED), then 1 MiB at 30.5M
# (129 clusters of U, 127 unallocated), with the bytes they read as.
dd if=exp.raw of=\$d bs=1M count=1 skip=$M seek=$M iflag=skip_bytes oflag=direct,seek_bytes \
	conv=notrunc status=none || bad "f: write over D1"
sync \$d
[ "\$(st clusters_allocated)" -eq 0 ] || bad "f: a write over D1 allocated \$(st clusters_allocated) clusters"
dd if=exp.raw of=\$d bs=1M count=1 skip=$((61 * M / 2)) seek=$((61 * M / 2)) iflag=skip_bytes \
	oflag=direct,seek_bytes conv=notrunc status=none || bad "f: write over U"
sync \$d
echo "f: writes_cold \$(st writes_cold), write_runs \$(st write_runs), alloc_runs \$(st alloc_runs), clusters_allocated \$(st clusters_allocated)"
[ "\$(st clusters_allocated)" -eq 127 ] || bad "f: \$(st clusters_allocated) clusters allocated over U, want 127"
[ "\$(st writes_cold)" -ge 2 ] || bad "f: the writes were not cold"
[ "\$(st write_runs)" -ge 2 ] || bad "f: no row written in place (write_runs \$(st write_runs))"
save t f
cmp \$d exp.raw || bad "the device differs from the expected disk"
dmsetup remove t || bad remove
echo one-done
exit \$rc
EOF
log "part 1: runs of new clusters"
run_inner one -m 512M -d img.qcow2
want_stat one.stats mode = write
want_stat one.stats alloc_runs -ge 19
want_stat f.stats mode = write
want_stat f.stats clusters_allocated -eq 127
qemu-img compare -q -f raw -F qcow2 exp.raw img.qcow2 || fail "the image does not read as the expected disk"
qemu-img convert -O raw -l snapshot.name=s img.qcow2 snap.raw
cmp -n $M snap.raw X.bin || fail "the snapshot no longer reads X"
cmp -n $((63 * M)) <(tail -c +$((M + 1)) snap.raw) /dev/zero || fail "the snapshot reads data past X"
qcheck img.qcow2
# D1's 16 MiB lie in rows on the host: few extents, not one per cluster.
qemu-img map --output=json img.qcow2 >img.map
python3 - img.map <<'PY' || fail "D1 is not in rows on the host"
import json, sys
M = 1 << 20
ext = [e for e in json.load(open(sys.argv[1]))
       if e["data"] and "offset" in e and M <= e["start"] < 17 * M]
print("D1 in %d extents" % len(ext))
assert sum(e["length"] for e in ext) == 16 * M
assert len(ext) <= 16, ext
PY
log "part 1: alloc_runs $(awk '$1 == "alloc_runs" { print $2 }' one.stats), write_runs $(awk '$1 == "write_runs" { print $2 }' one.stats)"

log "part 2: runs on a full device"
qemu-img create -q -f qcow2 -o cluster_size=4k full.qcow2 64M
truncate -s 4M full.qcow2
head -c $((8 * M)) /dev/urandom >W.bin
cat >two.sh <<EOF
. ./common.sh
d=/dev/mapper/t
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda 1 nodedup" || { echo "FAIL: create"; exit 1; }
err=\$(dd if=W.bin of=\$d bs=1M oflag=direct conv=notrunc status=none 2>&1) && bad "8 MiB fitted in a 4 MiB file"
echo "dd: \$err"
grep -q "No space left on device" <<<"\$err" || bad "not ENOSPC: \$err"
save t two
dd if=\$d of=dev.raw bs=1M iflag=direct status=none || bad "read back"
dmsetup remove t || bad remove
echo two-done
exit \$rc
EOF
run_inner two -m 512M -d full.qcow2
want_stat two.stats mode = write
want_stat two.stats alloc_runs -ge 1
qemu-img check full.qcow2 || fail "full: qemu-img check (leaks or corruption)"
qemu-img compare -q -f raw -F qcow2 dev.raw full.qcow2 || fail "full: the image does not read what the device did"
# What was written is W's start, the rest zeros.
n=$( (cmp dev.raw W.bin 2>/dev/null || true) | awk '{ print $5 }' | tr -d ,)
log "part 2: the device took $(( (${n:-1} - 1) / 1024 )) KiB of W before ENOSPC"
if [ -z "$n" ] || [ "$n" -le $M ]; then fail "full: less than 1 MiB of W was kept"; fi
cmp -n $(((n - 1) / 4096 * 4096)) dev.raw W.bin || fail "full: the device's data is not W's start"
(cmp <(tail -c +$(((n - 1) / 4096 * 4096 + 4097)) dev.raw) /dev/zero 2>&1 || true) | grep -q EOF ||
	fail "full: data past W's start"

log "part 3: runs while the other region is freed and reused"
qemu-img create -q -f qcow2 -o cluster_size=4k mix.qcow2 64M
truncate -s 128M mix.qcow2
cat >three.sh <<EOF
. ./common.sh
d=/dev/mapper/t
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda 1 nodedup" || { echo "FAIL: create"; exit 1; }
# In the background: a failure goes to loops.failed (bad's rc would be
# lost).  blkdiscard opens the device exclusively: one at a time.
fl() { echo "FAIL: \$*"; echo "\$*" >>loops.failed; }
loop() { # NAME OFFSET FIO-OPTS...
	local name=\$1 off=\$2 pass=0 end=\$((SECONDS + ${RUNS_SECONDS:-8}))
	shift 2
	while :; do
		pass=\$((pass + 1))
		fio --name=\$name --filename=\$d --offset=\$off --size=16M --direct=1 \\
			--ioengine=libaio --verify=crc32c --verify_fatal=1 --randseed=\$pass \\
			"\$@" --output=\$name.fio >/dev/null 2>&1 || { fl "\$name: fio pass \$pass"; break; }
		if [ \$pass -ge 2 ] && [ \$SECONDS -ge \$end ]; then break; fi
		if [ \$((pass % 2)) = 1 ]; then
			flock discard.lock blkdiscard -o \$off -l 16M \$d || { fl "\$name: discard"; break; }
		else
			flock discard.lock blkdiscard -z -o \$off -l 16M \$d || { fl "\$name: write-zeroes"; break; }
		fi
	done
	echo "\$name: \$pass passes"
	echo \$pass >\$name.passes
}
loop seq 0 --rw=write --bs=1M --iodepth=4 &
loop rnd 16M --rw=randwrite --bs=256k --iodepth=16 &
wait
[ -s loops.failed ] && bad "loops: \$(cat loops.failed)"
for j in seq:0:write:1M rnd:16M:randwrite:256k; do
	IFS=: read -r name off rw bs <<<"\$j"
	fio --name=\$name --filename=\$d --offset=\$off --size=16M --direct=1 --ioengine=libaio \\
		--rw=\$rw --bs=\$bs --verify=crc32c --verify_only --randseed=\$(cat \$name.passes) \\
		--output=\$name.verify >/dev/null 2>&1 || bad "\$name: the last pass does not verify"
done
save t three
dd if=\$d of=mix.raw bs=1M count=32 iflag=direct status=none || bad "read back"
dmsetup remove t || bad remove
echo three-done
exit \$rc
EOF
run_inner three -m 512M -d mix.qcow2
want_stat three.stats mode = write
for l in seq rnd; do want_stat <(echo "passes $(cat $l.passes)") passes -ge 2; done
want_stat three.stats alloc_runs -ge $((4 * 16))
qcheck mix.qcow2
qemu-img convert -O raw mix.qcow2 mix.img.raw
cmp -n $((32 * M)) mix.raw mix.img.raw || fail "part 3: the image does not read what the device did"
log "part 3: passes $(cat seq.passes) and $(cat rnd.passes), alloc_runs $(awk '$1 == "alloc_runs" { print $2 }' three.stats)"
log "ok"
