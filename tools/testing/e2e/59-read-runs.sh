#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 59-read-runs: reads of several clusters go to the device as one bio where
# the clusters' data lies in a row there (admin guide, "Implementation
# notes"; stats read_runs), and never read a cluster the row does not hold.
#
#   1. Layouts made by QEMU (4 KiB clusters): 8 MiB written in one go (host
#      clusters in a row), 4 MiB written cluster by cluster backwards (no
#      two in a row), zero and unallocated clusters, compressed clusters,
#      and through the target: a copy of 2 MiB (shared with the first 2 MiB:
#      a row on the host that two guest ranges name), a discard in the
#      middle of the row.  (QEMU puts an L2 table after every 2 MiB of
#      data: the "row" is four rows of 2 MiB.)  Read through the target with 1 MiB, 12 KiB at
#      odd offsets and 512-byte O_DIRECT reads and buffered: every byte
#      as qemu-img convert reads it; read_runs counts the 1 MiB reads of
#      the rows, and stays 0 while only the backwards range is read.  With
#      the metadata cache emptied first (dm-bufio's retain_bytes 0, then
#      drop_caches), a 1 MiB read goes to the worker whole and still is one
#      row (reads_deferred: one per L2 block, not per cluster); reads of
#      unallocated MiBs are zero runs (zero_runs).
#   2. Rows that change under the readers: 8 MiB of 16-cluster segments,
#      even ones fixed, odd ones rewritten whole (one 64 KiB write, dedup
#      on: 16 new clusters, the old ones freed at the next commit and
#      reused) with unique contents or one shared pattern, with flushes,
#      while 1 MiB O_DIRECT readers check every cluster: a fixed one holds
#      its bytes, a rewritten one one of the contents it ever had.  A read
#      of a row that included a cluster whose mapping changed, or was freed
#      and reused, shows another cluster's bytes.  The commits that freed
#      clusters waited for the readers' generation (reader_waits > 0).  In
#      make e2e-smp (so in make check) on two vCPUs with full preemption,
#      where map() and end_io count readers per CPU; READRUN_SECONDS (8).
# In the SMP kernel (RUNNER=x86-run) only part 2 runs.
# Afterwards qemu-img check is clean (table aside) and qcow2dedup check
# finds no wrong slot.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
need_tool
cd "$WORK"

M=$((1 << 20)) CS=4096
SECS=${READRUN_SECONDS:-8}

inner_prelude >common.sh

# ---- 1. layouts ----
# Single-threaded, and two boots: in the SMP kernel (make e2e-smp, under
# TCG) only part 2 runs, the concurrent one.
if [ "${RUNNER:-uml-run}" != x86-run ]; then
qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 64M
head -c $((8 * M)) /dev/urandom >row.bin
head -c $((4 * M)) /dev/urandom >back.bin
head -c $((2 * M)) /dev/urandom >comp.bin
cmds=(-c "write -s row.bin 0 8M")
for i in $(seq $((4 * M / CS - 1)) -1 0); do
	cmds+=(-c "write -s back.bin.$i $((8 * M + i * CS)) 4k")
	dd if=back.bin of=back.bin.$i bs=4k skip="$i" count=1 status=none
done
cmds+=(-c "write -z 12M 1M")
qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null || fail "qemu-io layout"
rm -f back.bin.*
# Compressed clusters at [14M, 16M): qemu-io write -c, one cluster each.
cmds=()
for i in $(seq 0 $((2 * M / CS - 1))); do
	dd if=comp.bin of=comp.bin.$i bs=4k skip="$i" count=1 status=none
	cmds+=(-c "write -c -s comp.bin.$i $((14 * M + i * CS)) 4k")
done
qemu-io -f qcow2 "${cmds[@]}" img.qcow2 >/dev/null || fail "qemu-io compressed"
rm -f comp.bin.*
qemu-img map --output=json img.qcow2 >map.json
# The first 8 MiB lie in rows on the host, the next 4 MiB backwards.
python3 - map.json <<'PY' || fail "qemu-img map: the layout is not what the test needs"
import json, sys
m = [e for e in json.load(open(sys.argv[1])) if e["data"] and "offset" in e]
# (QEMU puts an L2 table between every 2 MiB of it: rows of 2 MiB.)
first = [e for e in m if e["start"] < 8 << 20]
assert sum(e["length"] for e in first) == 8 << 20, first
assert all(e["length"] >= 2 << 20 and e["start"] % (2 << 20) == 0 for e in first), first
back = sorted((e for e in m if 8 << 20 <= e["start"] < 12 << 20), key=lambda e: e["start"])
assert all(b["offset"] < a["offset"] for a, b in zip(back, back[1:])), "not backwards"
PY
truncate -s 128M img.qcow2
S=$(sectors img.qcow2)

cat >layout.sh <<EOF
. ./common.sh
d=/dev/mapper/t
st() { dmsetup message t 0 stats | awk -v k=\$1 '\$1 == k { print \$2 }'; }
dmsetup create t --table "0 $S qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
# Only the backwards range: no row to read.
dd if=\$d of=/dev/null bs=1M skip=8 count=4 iflag=direct status=none || bad "read back"
[ "\$(st read_runs)" = 0 ] || bad "read_runs \$(st read_runs) after reading clusters that are in no row"
# Each read of 1 MiB is one row, whether its L2 block was cached or not
# (a miss goes to the worker whole, which splits it by rows).
r0=\$(st read_runs)
dd if=\$d of=/dev/null bs=1M count=8 iflag=direct status=none || bad "read row"
dd if=\$d of=/dev/null bs=1M count=8 iflag=direct status=none || bad "read row"
r=\$(st read_runs)
[ "\$((r - r0))" -eq 16 ] || bad "read_runs went from \$r0 to \$r in 16 reads of 1 MiB of a row"
echo "read_runs: \$r0, then \$r after the row"
# Sharing and a discard: 2 MiB copied from the row (dedup shares it, once
# the rebuild of the index, there being no table yet, has hashed the row),
# a hole of 64 KiB punched in the middle of the row.
wait_rebuild 1
dd if=row.bin of=\$d bs=1M count=2 seek=20 oflag=direct conv=notrunc status=none || bad "copy"
blkdiscard -o $((3 * M + 64 * 1024)) -l 65536 \$d || bad "discard"
sync \$d
echo "hits: \$(st dedup_hits)"
[ "\$(st dedup_hits)" -ge 512 ] || bad "the copy of 2 MiB shared \$(st dedup_hits) clusters"
dmsetup remove t || bad remove
EOF
cat >reads.sh <<'EOF'
. ./common.sh
d=/dev/mapper/t
st() { dmsetup message t 0 stats | awk -v k=$1 '$1 == k { print $2 }'; }
dmsetup create --readonly t --table "0 $1 qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
# A cold metadata cache: with dm-bufio's retained share at 0, drop_caches
# empties it (its shrinker works asynchronously: a moment later).  Each
# 1 MiB read of the row then finds its L2 block uncached: map() defers it
# whole (with the rest of that block's clusters), the worker reads the
# block once and sends the row as one bio.  8 reads, 9 rows (layout.sh
# discarded 64 KiB in [3M, 4M): two rows and a zero run there), one
# deferral per 2 MiB L2 block; not one per cluster.
echo 0 >/sys/module/dm_bufio/parameters/retain_bytes || bad "dm_bufio retain_bytes"
# Until dm-bufio holds (next to) nothing, 10 s at most: a loaded host may
# run the shrinker's work late.
cold() {
	local i
	sync
	for i in $(seq 50); do
		echo 3 >/proc/sys/vm/drop_caches
		sleep 0.2
		[ "$(cat /sys/module/dm_bufio/parameters/current_allocated_bytes)" -le 65536 ] && break
	done
	echo "cold: dm-bufio holds $(cat /sys/module/dm_bufio/parameters/current_allocated_bytes) bytes"
}
cold
d0=$(st reads_deferred) r0=$(st read_runs)
dd if=$d bs=1M count=8 iflag=direct status=none | cmp -n $((8 << 20)) - expect.raw || bad "cold 1 MiB reads of the row differ"
dn=$(($(st reads_deferred) - d0)) rn=$(($(st read_runs) - r0))
echo "cold row: $dn deferred reads, $rn rows"
[ "$dn" -ge 1 ] || bad "no read was deferred: the metadata cache was not cold, the test did not run"
[ "$dn" -le 8 ] || bad "$dn reads deferred for 8 MiB in 8 reads: split per cluster"
[ "$rn" -eq 9 ] || bad "$rn rows in 8 cold reads of 1 MiB of a row, 64 KiB discarded"
# Every layout read cold (the worker splits: rows, zero runs, compressed,
# backwards, shared, discarded), then warm (map()).
cold
z0=$(st zero_runs)
dd if=$d bs=1M iflag=direct status=none | cmp - expect.raw || bad "cold 1 MiB O_DIRECT reads differ"
dd if=$d bs=1M iflag=direct status=none | cmp - expect.raw || bad "1 MiB O_DIRECT reads differ"
echo "zero_runs: $z0, then $(st zero_runs)"
# [12M, 13M) reads as zeros, [13M, 14M), [16M, 20M) and [22M, 64M) are
# unallocated: each 1 MiB read there, of both passes, is one zero run.
[ "$(st zero_runs)" -ge $((z0 + 2 * 48)) ] || bad "zero_runs $(st zero_runs): reads of unallocated MiBs were cut"
dd if=$d bs=12k skip=1 iflag=direct status=none >r12.raw
tail -c +12289 expect.raw | cmp - r12.raw || bad "12 KiB O_DIRECT reads differ"
dd if=$d bs=512 skip=5 iflag=direct status=none count=$((16 * 2048 - 5)) >r512.raw
tail -c +2561 expect.raw | head -c $(((16 * 2048 - 5) * 512)) | cmp - r512.raw || bad "512-byte O_DIRECT reads differ"
# 28 KiB reads that start and end inside clusters.
python3 - $d expect.raw <<'PY' || bad "28 KiB O_DIRECT reads at odd offsets differ"
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
exp = open(sys.argv[2], "rb").read()
buf = mmap.mmap(-1, 28 << 10)
off = 2560
while off + (28 << 10) <= len(exp):
    n = os.preadv(fd, [buf], off)
    if n != 28 << 10 or buf[:] != exp[off:off + n]:
        sys.exit("differs at %d" % off)
    off += (28 << 10) + 4096 * 3 + 1024
PY
cmp $d expect.raw || bad "buffered reads differ"
echo "read_runs: $(st read_runs)"
[ "$(st read_runs)" -gt 0 ] || bad "no read was sent as a row"
dmsetup remove t || bad remove
echo reads-done
exit $rc
EOF
echo 'echo layout-done; exit $rc' >>layout.sh
run_inner layout -m 512M -d img.qcow2
qcheck img.qcow2
qemu-img convert -O raw img.qcow2 expect.raw
cmp -n $((2 * M)) expect.raw <(tail -c +$((20 * M + 1)) expect.raw) || fail "the copy at 20M differs from the row"
cmp -n $((64 * 1024)) <(tail -c +$((3 * M + 64 * 1024 + 1)) expect.raw) /dev/zero || fail "the discarded range is not zero"
run_inner reads -m 512M -d img.qcow2 -- "$S"
log "layouts: every read as qemu-img reads it"
fi

# ---- 2. rows that change under the readers ----
qemu-img create -q -f qcow2 -o cluster_size=4k race.qcow2 32M
truncate -s 128M race.qcow2
S2=$(sectors race.qcow2)
cat >race.py <<'PY'
"""race.py write DEV SECONDS OUT | read DEV SECONDS OUT READY: 8 MiB at 0
in 16-cluster segments.

Cluster c of a fixed (even) segment holds fixed(c); a rewritten (odd)
segment holds, per cluster, unique(c, gen) or SHARED: written whole by one
64 KiB O_DIRECT write per segment.  The reader checks each cluster of its
1 MiB O_DIRECT reads against what it may hold.
"""
import hashlib, mmap, os, random, struct, sys, time

CS, SEG, SIZE = 4096, 16, 8 << 20
SHARED = bytes([0x5c]) * CS


def fill(tag, c, gen):
    seed = hashlib.sha256(b"%s/%d/%d" % (tag, c, gen)).digest()
    head = struct.pack("<4sQQ", tag, c, gen)
    return (head + seed * (CS // 32 + 1))[:CS]


def fixed(c):
    return fill(b"FIXD", c, 0)


def unique(c, gen):
    return fill(b"UNIQ", c, gen)


def rewritten(c):
    return (c // SEG) % 2 == 1


def write(dev, secs, out):
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, SEG * CS)
    rng = random.Random(59)
    segs = SIZE // (SEG * CS)
    for s in range(segs):
        buf[:] = b"".join(fixed(s * SEG + i) if not rewritten(s * SEG) else unique(s * SEG + i, 0)
                          for i in range(SEG))
        os.pwritev(fd, [buf], s * SEG * CS)
    os.fsync(fd)
    open(out + ".ready", "w").close()
    gen, end, n = 0, time.monotonic() + secs, 0
    while time.monotonic() < end:
        gen += 1
        s = rng.randrange(1, segs, 2)
        shared = rng.random() < 0.3
        buf[:] = b"".join(SHARED if shared else unique(s * SEG + i, gen) for i in range(SEG))
        os.pwritev(fd, [buf], s * SEG * CS)
        n += 1
        if n % 8 == 0:
            os.fsync(fd)
    os.fsync(fd)
    open(out, "w").write("%d %d\n" % (n, gen))


def check(c, data):
    if not rewritten(c):
        return data == fixed(c)
    if data == SHARED:
        return True
    tag, cc, gen = struct.unpack_from("<4sQQ", data)
    return tag == b"UNIQ" and cc == c and data == unique(c, gen)


def read(dev, secs, out, ready):
    while not os.path.exists(ready):
        time.sleep(0.05)
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    rng = random.Random(os.getpid())
    end, n, bad = time.monotonic() + secs, 0, []
    while time.monotonic() < end and not bad:
        # 1 MiB reads at 16 KiB steps: rows are entered mid-segment.
        off = rng.randrange(0, SIZE - (1 << 20) + 1, 16384)
        os.preadv(fd, [buf], off)
        data = bytes(buf)
        for i in range((1 << 20) // CS):
            c = off // CS + i
            if not check(c, data[i * CS:(i + 1) * CS]):
                tag, cc, gen = struct.unpack_from("<4sQQ", data, i * CS)
                bad.append("cluster %d at read offset %d holds %r/%d/%d" % (c, off, tag, cc, gen))
                break
        n += 1
    open(out, "w").write("%d %s\n" % (n, bad[0] if bad else "ok"))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2], float(sys.argv[3]), sys.argv[4])
    else:
        read(sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5])
PY
cat >race.sh <<EOF
. ./common.sh
d=/dev/mapper/t
st() { dmsetup message t 0 stats | awk -v k=\$1 '\$1 == k { print \$2 }'; }
dmsetup create t --table "0 $S2 qcow2dedup /dev/ubda 2 flush_interval 100" || { echo "FAIL: create"; exit 1; }
python3 race.py write \$d $SECS race.write &
python3 race.py read \$d $SECS race.read1 race.write.ready &
python3 race.py read \$d $SECS race.read2 race.write.ready &
wait
for f in race.write race.read1 race.read2; do
	[ -s \$f ] || bad "\$f: no result"
	echo "\$f: \$(cat \$f 2>/dev/null)"
done
for f in race.read1 race.read2; do
	grep -q ' ok\$' \$f || bad "\$f: a read held bytes no write put there"
done
save t race
[ "\$(st read_runs)" -gt 0 ] || bad "no read was sent as a row"
# Rewrites freed clusters: commits waited for the readers first.
[ "\$(st reader_waits)" -gt 0 ] || bad "no commit waited for readers"
echo "read_runs \$(st read_runs), hits \$(st dedup_hits), allocated \$(st clusters_allocated)"
echo "reader_waits \$(st reader_waits), \$(st reader_wait_us) us in all, longest \$(st reader_wait_us_max) us"
dmsetup remove t || bad remove
echo race-done
exit \$rc
EOF
run_inner race -m 768M -d race.qcow2
w=$(cat race.write)
[ "${w% *}" -ge 16 ] || fail "only ${w% *} segment rewrites in ${SECS}s"
for f in race.read1 race.read2; do
	[ "$(cut -d' ' -f1 "$f")" -ge 16 ] || fail "$f: only $(cut -d' ' -f1 "$f") reads in ${SECS}s"
done
want_stat race.stats mode = write
qcheck race.qcow2
log "rows under rewrites: $w rewrites/generations, reads $(cut -d' ' -f1 race.read1) + $(cut -d' ' -f1 race.read2), all as written"
