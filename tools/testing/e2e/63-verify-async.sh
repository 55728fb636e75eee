#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 63-verify-async: with "verify", the compare read of a duplicate does not
# stop the worker (issue 11): the duplicates of one burst are read in
# parallel, and the data, the hits and the image are exactly those of the
# synchronous compare.
#
# 64 MiB image, 4 KiB clusters, xxhash64 + verify, on dm-delay (reads 100
# ms late, writes on time), so that a read is still in flight when the
# worker reaches the next duplicate.  D = 4 MiB random.
#   D at 0 (1024 new clusters); D at 8M and at 16M, 1 MiB writes (O_DIRECT):
#   2048 hits, each compared (verify_reads 2048), none allocated, no
#   mismatch, more than one compare read in flight at a time
#   (verify_inflight_max > 1: a worker waiting for each would show 1).
#   Then V = D with one byte changed in every cluster at 24M: 1024 new
#   clusters, no hit (a different xxhash64, no compare).  Every range reads
#   back; after removal qcheck, qemu-img compare with the expected image,
#   and the host clusters of D's three copies are the same 1024.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20))
python3 - <<'PY'
import random
r = random.Random(63)
d = bytearray(r.randbytes(4 << 20))
open("d4.bin", "wb").write(d)
v = bytearray(d)
for c in range(1024):
    v[c * 4096 + 7] ^= 0x5a
open("v4.bin", "wb").write(v)
M = 1 << 20
with open("exp.raw", "wb") as f:
    f.truncate(64 * M)
    for off, x in ((0, d), (8, d), (16, d), (24, v)):
        f.seek(off * M); f.write(x)
PY
qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 64M
truncate -s 96M img.qcow2
LEN=$(( (64 * M) / 512 ))
DEV=$(( (96 * M) / 512 ))

inner_prelude >common.sh
cat >act.sh <<EOF
. ./common.sh
dmsetup create slow --table "0 $DEV delay /dev/ubda 0 100 /dev/ubda 0 0" || { echo "FAIL: dm-delay"; exit 1; }
dmsetup create t --table "0 $LEN qcow2dedup /dev/mapper/slow 3 hash xxhash64 verify" ||
	{ echo "FAIL: create"; exit 1; }
put d4.bin /dev/mapper/t 0
save t first
put d4.bin /dev/mapper/t 8
put d4.bin /dev/mapper/t 16
save t dups
put v4.bin /dev/mapper/t 24
save t act
same d4.bin /dev/mapper/t 0; same d4.bin /dev/mapper/t 8; same d4.bin /dev/mapper/t 16
same v4.bin /dev/mapper/t 24
dmsetup remove t || bad remove
dmsetup remove slow || bad "remove slow"
echo act-done
exit \$rc
EOF
run_inner act -d img.qcow2
for kv in clusters_allocated:1024 dedup_hits:0 verify_reads:0; do
	want_stat first.stats "${kv%:*}" -eq "${kv#*:}"
done
for kv in clusters_allocated:1024 dedup_hits:2048 verify_reads:2048 verify_mismatches:0; do
	want_stat dups.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat dups.stats verify_inflight_max -gt 1
for kv in clusters_allocated:2048 dedup_hits:2048 verify_reads:2048 verify_mismatches:0; do
	want_stat act.stats "${kv%:*}" -eq "${kv#*:}"
done
agree act
log "verify reads: $(awk '$1 ~ /^verify_/ { printf "%s %s ", $1, $2 }' act.stats)"
qcheck img.qcow2
qemu-img compare -q -f raw -F qcow2 exp.raw img.qcow2 || fail "content differs"
qemu-img map --output=json img.qcow2 | python3 -c '
import json, sys
hosts = {}
for e in json.load(sys.stdin):
    if not e["data"]:
        continue
    for g in range(e["start"], e["start"] + e["length"], 4096):
        hosts[g] = e["offset"] + g - e["start"]
M = 1 << 20
for c in range(1024):
    h = {hosts.get(base * M + c * 4096) for base in (0, 8, 16)}
    if len(h) != 1 or None in h:
        sys.exit("cluster %d of D: host clusters %s, want one" % (c, sorted(map(str, h))))
v = {hosts.get(24 * M + c * 4096) for c in range(1024)}
if None in v or v & {hosts[c * 4096] for c in range(1024)}:
    sys.exit("V shares clusters with D")' || fail "host mapping"
