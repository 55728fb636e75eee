#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 40-dedup: identical clusters written through the target end up as one
# host cluster with a raised refcount, unsharing them later leaves exact
# refcounts and COPIED flags, and the dedup options do what they say.
# Each claim is checked on the host by qemu-img, which knows nothing of the
# target: a wrong refcount or COPIED flag is a `qemu-img check` error, a
# wrong mapping shows in `qemu-img map`, wrong data in `qemu-img compare`.
#
# boot 1: 512 MiB disk, 64 KiB clusters, default options (sha256): the same
#   64 MiB of random data at 0, 128M and 320M (O_DIRECT, 1 MiB writes).
#   Stats: 3072 clusters written, 2048 hits, 1024 index entries all shared,
#   none unique, bytes_saved 128 MiB, no zero cluster; status agrees and
#   uses about one copy of host clusters; the table has no option.  Host:
#   check clean, content exact, the three ranges on the same 1024 host
#   clusters and no other host cluster holds data.
# boot 2 (a new activation): other data over the first copy, blkdiscard of
#   the second.  Host: check clean (the third copy's clusters are back at
#   refcount 1 with COPIED set, else check reports them), each of them mapped
#   once, nothing in the discarded range, 2048 host clusters, content exact.
# boot 3: one fresh 64 MiB image per option set: 8 MiB at 0, 16M and 40M
#   and 1 MiB of zeros at 56M.  blake2b-256 and "xxhash64 verify" dedup
#   (one copy on the host, zeros unallocated); nodedup shares nothing and
#   allocates the zeros; xxhash64 without verify, an unknown algorithm and
#   "hash" without a value are refused with a kernel message and leave the
#   image untouched; "index_limit 0" may be refused or accepted, but must
#   not corrupt.  `dmsetup table` gives the options back as given.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20)) CS=65536
COPY=$((64 * M)) N=1024			# one copy: bytes, clusters
VCOPY=$((8 * M)) VN=128			# the same in boot 3
python3 - <<'PY'
import random
r = random.Random(40)
d1, d2, d3 = r.randbytes(64 << 20), r.randbytes(64 << 20), r.randbytes(8 << 20)
open("data.bin", "wb").write(d1); open("data2.bin", "wb").write(d2)
open("data8.bin", "wb").write(d3); open("zero1m.bin", "wb").write(bytes(1 << 20))
def disk(name, size, parts):
    with open(name, "wb") as f:
        f.truncate(size)
        for off, d in parts:
            f.seek(off); f.write(d)
M = 1 << 20
disk("exp1.raw", 512 * M, [(0, d1), (128 * M, d1), (320 * M, d1)])
disk("exp2.raw", 512 * M, [(0, d2), (320 * M, d1)])
disk("vexp.raw", 64 * M, [(0, d3), (16 * M, d3), (40 * M, d3)])
PY
qemu-img create -q -f qcow2 -o cluster_size=64k main.qcow2 512M
truncate -s 256M main.qcow2
LEN=$(sectors main.qcow2)

inner_prelude >common.sh

cat >boot1.sh <<EOF
. ./common.sh
dmsetup create d --table "0 $LEN qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
for o in 0 128 320; do put data.bin /dev/mapper/d \$o; done
save d boot1
for o in 0 128 320; do same data.bin /dev/mapper/d \$o; done
dmsetup remove d || bad remove
echo boot1-done
exit \$rc
EOF
log "boot 1: three copies of 64 MiB"
run_inner boot1 -d main.qcow2
check_clean main.qcow2
qemu-img compare -q -f raw -F qcow2 exp1.raw main.qcow2 || fail "boot 1: content differs from the expected disk"
mapq main.qcow2 $CS same:$COPY:0,$((128 * M)),$((320 * M)) hosts:$N
for kv in clusters_written:3072 dedup_hits:2048 index_entries:$N shared_clusters:$N \
	unique_clusters:0 bytes_saved:$((2 * COPY)) zero_clusters:0; do
	want_stat boot1.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat boot1.stats hash = sha256
agree boot1
want_stat boot1.st mode = write
want_stat boot1.st clusters_allocated -eq $N
want_stat boot1.st used -le $((N + 16))
[ -z "$(cut -d' ' -f5- boot1.table)" ] || fail "boot 1: table shows options: $(cat boot1.table)"

cat >boot2.sh <<EOF
. ./common.sh
dmsetup create d --table "0 $LEN qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
put data2.bin /dev/mapper/d 0
blkdiscard -o $((128 * M)) -l $COPY /dev/mapper/d || bad "blkdiscard of the second copy"
save d boot2
same data2.bin /dev/mapper/d 0
same data.bin /dev/mapper/d 320
dd if=/dev/mapper/d bs=1M skip=128 count=64 iflag=direct status=none | cmp -n $COPY - /dev/zero ||
	bad "the discarded copy does not read as zeros"
dmsetup remove d || bad remove
echo boot2-done
exit \$rc
EOF
log "boot 2: overwrite the first copy, discard the second"
run_inner boot2 -d main.qcow2
check_clean main.qcow2
qemu-img compare -q -f raw -F qcow2 exp2.raw main.qcow2 || fail "boot 2: content differs from the expected disk"
mapq main.qcow2 $CS nodata:$((128 * M)):$COPY once:$((320 * M)):$COPY once:0:$COPY hosts:$((2 * N))
want_stat boot2.stats dedup_hits -eq 0
agree boot2

# name;options;kind (dedup, plain, refuse, either);hash;message regex
variants=(
	"blake;2 hash blake2b-256;dedup;blake2b-256;"
	"xx;2 hash xxhash64;refuse;;xxhash64|verify|digest|bits"
	"xxv;3 hash xxhash64 verify;dedup;xxhash64;"
	"nodedup;1 nodedup;plain;;"
	"nohash;2 hash nosuchhash;refuse;;nosuchhash|hash"
	"hash1;1 hash;refuse;;hash|argument"
	"il0;2 index_limit 0;either;;index_limit|limit"
)
cat >boot3.sh <<EOF
. ./common.sh
v() { # NAME DEV OPTS KIND MESSAGE_RE
	local n=\$1 opts=\$3 kind=\$4 re=\$5 d=/dev/mapper/\$1
	dmesg -C
	if ! dmsetup create "\$n" --table "0 $((64 * M / 512)) qcow2dedup /dev/\$2 \$opts" 2>"\$n.err"; then
		echo refused >"\$n.outcome"; dmesg | grep -i qcow2dedup >"\$n.dmesg"
		echo "\$n (\$opts): refused: \$(tr '\n' '|' <"\$n.dmesg")"
		[ "\$kind" = refuse ] || [ "\$kind" = either ] || bad "\$n: '\$opts' refused: \$(cat "\$n.err")"
		grep -Eiq "\$re" "\$n.dmesg" || bad "\$n: '\$opts' refused without a kernel message matching '\$re'"
		return
	fi
	echo accepted >"\$n.outcome"
	[ "\$kind" != refuse ] || bad "\$n: '\$opts' accepted"
	for o in 0 16 40; do put data8.bin \$d \$o; done
	put zero1m.bin \$d 56
	save "\$n" "\$n"
	for o in 0 16 40; do same data8.bin \$d \$o; done
	same zero1m.bin \$d 56
	dmsetup remove "\$n" || bad "\$n: remove"
}
EOF
disks=() letters=(a b c d e f g h) i=0
for spec in "${variants[@]}"; do
	IFS=';' read -r n opts kind alg re <<<"$spec"
	qemu-img create -q -f qcow2 -o cluster_size=64k "$n.qcow2" 64M
	truncate -s 64M "$n.qcow2"
	printf 'v %q %q %q %q %q\n' "$n" "ubd${letters[i]}" "$opts" "$kind" "$re" >>boot3.sh
	disks+=(-d "$n.qcow2") i=$((i + 1))
done
# shellcheck disable=SC2016 # expands in the inner script
printf 'echo boot3-done\nexit $rc\n' >>boot3.sh
sha256sum ./*.qcow2 >sums
log "boot 3: option variants"
run_inner boot3 "${disks[@]}"
for spec in "${variants[@]}"; do
	IFS=';' read -r n opts kind alg re <<<"$spec"
	[ -f "$n.outcome" ] || fail "$n: no outcome"
	if [ "$(cat "$n.outcome")" = refused ]; then
		grep " ./$n.qcow2\$" sums | sha256sum --quiet -c - || fail "$n: '$opts' refused but the image changed"
		check_clean "$n.qcow2"
		log "$n: '$opts' refused, image untouched"
		continue
	fi
	check_clean "$n.qcow2"
	qemu-img compare -q -f raw -F qcow2 vexp.raw "$n.qcow2" || fail "$n: '$opts': content differs"
	[ "$(cut -d' ' -f5- "$n.table")" = "$opts" ] || fail "$n: table '$(cat "$n.table")' lost options '$opts'"
	agree "$n"
	case $kind in
	dedup)
		mapq "$n.qcow2" $CS same:$VCOPY:0,$((16 * M)),$((40 * M)) hosts:$VN nodata:$((56 * M)):$M
		for kv in dedup_hits:$((2 * VN)) shared_clusters:$VN bytes_saved:$((2 * VCOPY)) zero_clusters:16; do
			want_stat "$n.stats" "${kv%:*}" -eq "${kv#*:}"
		done
		want_stat "$n.stats" hash = "$alg"
		want_stat "$n.st" clusters_allocated -eq $VN ;;
	plain)
		mapq "$n.qcow2" $CS apart:$VCOPY:0,$((16 * M)),$((40 * M)) data:$((56 * M)):$M hosts:$((3 * VN + 16))
		for k in dedup_hits zero_clusters index_entries; do want_stat "$n.stats" $k -eq 0; done
		want_stat "$n.stats" hash = none
		want_stat "$n.st" clusters_allocated -eq $((3 * VN + 16)) ;;
	esac
	log "$n: '$opts' accepted; $(grep -E '^(dedup_hits|index_entries) ' "$n.stats" | tr '\n' ' ')"
done
log "dedup shares, unshares and honours its options; images clean"
