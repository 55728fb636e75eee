#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 56-index-limit: the index at its memory limit (admin guide, index_limit
# and "The dedup table").  1 KiB clusters, so that a 1 MiB limit is reached
# with a few MiB of data (512-byte clusters would leave no dedup table on a
# 256 MiB device); every cluster of the data files is unique (random bytes).
#   1. index_limit 1: 20000 unique clusters.  New entries stop at three
#      quarters of the limit (entries well below 20000), and the clusters
#      written first are the indexed ones: a copy of the first 100 shares
#      all of them (100 hits: the last quarter holds their referrers; with
#      entries up to the whole limit this gave 1 hit), a copy of the last
#      100 shares none.
#      A discard of the first 10240 frees their entries; 100 new clusters
#      written after it are indexed again (their copy: 100 hits).
#   2. index_limit 64 and a rebuild: 30000 more unique clusters and the
#      rebuild's entries; the table written at removal has more slots than
#      a 1 MiB index holds plus what it can record as dropped.
#   3. index_limit 1 on that table: "dedup table not used: far more slots
#      than index_limit allows; rebuilding", the rebuild stops at the limit.
#      Nothing was written, so the table of step 2 stays on the image (its
#      slots are right; only an opened table is rewritten).
#   4. index_limit 3, then index_limit 2, on that table: loaded up to the
#      limit, the rest of its slots dropped (table_loaded + table_dropped =
#      its slots, fewer dropped than the 16384 per MiB that would make the
#      table unusable); then a write opens the table, which zeroes the
#      dropped slots, and still no slot names wrong contents.
# On the host after each step: qemu-img map shows the sharing, qcow2dedup
# check finds no wrong slot, qemu-img check is clean (table aside).
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
need_tool
cd "$WORK"

CS=1024 M=$((1 << 20))
qemu-img create -q -f qcow2 -o cluster_size=1k img.qcow2 128M
truncate -s 256M img.qcow2
S=$(sectors img.qcow2)
head -c $((20000 * CS)) /dev/urandom >u1.bin	# 19.5 MiB
head -c $((100 * CS)) /dev/urandom >u2.bin
head -c $((30000 * CS)) /dev/urandom >u3.bin	# 29.3 MiB
tail -c $((100 * CS)) u1.bin >u1last.bin
head -c $((100 * CS)) u1.bin >u1first.bin

inner_prelude >common.sh
cat >limit.sh <<EOF
. ./common.sh
d=/dev/mapper/t
mk() { dmsetup create t --table "0 $S qcow2dedup /dev/ubda \$*" || { echo "FAIL: create \$*"; exit 1; }; }
st() { dmsetup message t 0 stats | awk -v k=\$1 '\$1 == k { print \$2 }'; }
wr() { dd if=\$1 of=\$d bs=1M seek=\$2 oflag=direct,seek_bytes conv=notrunc status=none || bad "writing \$1 at \$2"; }

echo "step 1: index_limit 1"
mk 2 index_limit 1
wr u1.bin 0
save t s1
h0=\$(st dedup_hits)
wr u1first.bin $((32 * M))
wr u1last.bin $((33 * M))
save t s1b
blkdiscard -o 0 -l $((10240 * CS)) \$d || bad "discard"
save t s1c
wr u2.bin $((40 * M))
wr u2.bin $((41 * M))
save t s1d
dmsetup remove t || bad remove
echo "step 2: index_limit 64, a rebuild and more data"
mk 2 index_limit 64
dmsetup message t 0 rebuild || bad "rebuild message"
wait_rebuild 1
wr u3.bin $((48 * M))
save t s2
dmsetup remove t || bad remove
echo "step 3: index_limit 1 on a table of far more slots"
mk 2 index_limit 1
wait_rebuild 1
save t s3
dmesg | grep -q 'dedup table not used: far more slots than index_limit allows; rebuilding' ||
	bad "step 3: no 'dedup table not used: far more slots' line"
dmsetup remove t || bad remove
echo "step 4: index_limit 3, then index_limit 2"
mk 2 index_limit 3
save t s4a
dmsetup remove t || bad remove
mk 2 index_limit 2
save t s4
wr u2.bin $((42 * M))
save t s4b
dmsetup remove t || bad remove
echo limit-done
exit \$rc
EOF
log "index_limit: the index at its limit, and tables larger than it"
run_inner limit -m 768M -d img.qcow2

# val FILE NAME: the value of NAME in a saved stats file.
val() { awk -v k="$2" '$1 == k { print $2; exit }' "$1"; }
for f in s1 s1b s1c s1d s2 s3 s4a s4 s4b; do
	log "$f: $(grep -E '^(index_entries|index_bytes|index_limit_bytes|dedup_hits|table_loaded|table_dropped|table_state) ' $f.stats | tr '\n' ' ')"
done

# 1. At the limit.
lim=$(val s1.stats index_limit_bytes)
[ "$lim" = $M ] || fail "index_limit 1: index_limit_bytes $lim"
want_stat s1.stats index_bytes -le $((lim * 3 / 4))
want_stat s1.stats index_bytes -ge $((lim / 2))
want_stat s1.stats index_entries -lt 20000
cap=$(val s1.stats index_entries)
hits=$(($(val s1b.stats dedup_hits) - $(val s1.stats dedup_hits)))
[ "$hits" = 100 ] || fail "copies of the first and the last 100 clusters: $hits hits, want 100 (the first only)"
# The discard took the entries of the indexed clusters among the first
# 10240 (all of them while an entry cost 113 bytes; 10773 fit at 73).
want_stat s1c.stats index_entries -le $((cap > 10240 ? cap - 10240 + 200 : 200))
hits=$(($(val s1d.stats dedup_hits) - $(val s1c.stats dedup_hits)))
[ "$hits" = 100 ] || fail "after the discard: $hits hits for a copy of 100 new clusters, want 100"
log "1: the index stopped at $cap entries ($(val s1.stats index_bytes) of $lim bytes); room came back after a discard"

# 2-3. A table with far more slots than the limit allows is not used.
want_stat s2.stats index_entries -gt $((cap + M / 64))
want_stat s3.stats index_bytes -le "$lim"
want_stat s3.stats table_loaded -eq 0
want_stat s3.stats table_dropped -eq $((M / 64))
log "2-3: a table of $(val s2.stats index_entries) slots is not used under a 1 MiB limit; the rebuild stopped at $(val s3.stats index_entries) entries"

# 4. A table somewhat larger than the limit: loaded up to it.
slots=$(val s2.stats index_entries)
for f in s4a s4; do
	want_stat $f.stats table_dropped -gt 0
	[ $(($(val $f.stats table_loaded) + $(val $f.stats table_dropped))) = "$slots" ] ||
		fail "$f: loaded $(val $f.stats table_loaded) + dropped $(val $f.stats table_dropped), want the $slots slots"
done
want_stat s4a.stats index_bytes -le $((3 * M))
want_stat s4.stats index_bytes -le $((2 * M))
hits=$(($(val s4b.stats dedup_hits) - $(val s4.stats dedup_hits)))
[ "$hits" = 100 ] || fail "a copy of 100 loaded clusters under index_limit 2: $hits hits"
log "4: a table of $slots slots under a 2 MiB limit: $(val s4.stats table_loaded) loaded, $(val s4.stats table_dropped) dropped"

qcheck img.qcow2
tool_check img.qcow2 >/dev/null || fail "qcow2dedup check"
qemu-io -f qcow2 -r -c "read -P 0 0 $((10240 * CS))" img.qcow2 | grep -q "Pattern verification failed" &&
	fail "the discarded range does not read zeros"
qemu-img convert -O raw img.qcow2 img.raw
cmp -n $((100 * CS)) -i $((32 * M)):0 img.raw u1first.bin || fail "the copy of the first 100 clusters"
cmp -n $((100 * CS)) -i $((33 * M)):0 img.raw u1last.bin || fail "the copy of the last 100 clusters"
cmp -n $((30000 * CS)) -i $((48 * M)):0 img.raw u3.bin || fail "the 30000 clusters of step 2"
cmp -n $((9760 * CS)) -i $((10240 * CS)):$((10240 * CS)) img.raw u1.bin || fail "the undiscarded part of step 1"
mapq img.qcow2 $CS apart:$((100 * CS)):$((19900 * CS)),$((33 * M)) same:$((100 * CS)):$((40 * M)),$((41 * M)),$((42 * M))
log "index_limit holds: at the limit, after frees, and for tables larger than it"
