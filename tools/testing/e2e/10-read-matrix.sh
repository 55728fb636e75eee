#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Read path: every kind of image QEMU 7.2 makes is served byte for byte as
# `qemu-img convert -O raw` exports it.  Cluster sizes 512 B, 4 KiB, 64 KiB
# and 2 MiB; compat 0.10 (v2) and 1.1 (v3); refcount_bits 1 and 64; zero
# clusters with and without a host cluster; zlib and zstd compressed
# clusters; an internal snapshot with writes after it; a virtual size that is
# not a multiple of the cluster size.
source "$(dirname "$0")/lib.sh"

# A deterministic mix of compressible text and incompressible bytes.
mkdata() { # FILE MiB SEED
	python3 - "$1" "$2" "$3" <<'PY'
import random, sys
path, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
with open(path, "wb") as f:
    for i in range(mib * 16):          # 64 KiB pieces
        kind = r.randrange(4)
        if kind == 0:
            f.write(r.randbytes(65536))
        elif kind == 1:
            f.write(bytes(65536))
        else:
            line = ("line %d of a compressible text block %x\n" % (i, r.getrandbits(32))).encode()
            f.write((line * (65536 // len(line) + 1))[:65536])
PY
}

# qio IMAGE CMD...: qemu-io writes, quietly.
qio() { local img=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done; qemu-io "${a[@]}" "$img" >/dev/null; }

# Writes of mixed sizes and alignments, crossing cluster and L2 boundaries.
mixed_writes() { # IMAGE
	qio "$1" "write -P 0x11 0 4k" "write -P 0x22 7680 1536" "write -P 0x33 65024 3m" \
		"write -P 0x44 5m 512" "write -P 0x55 9437184 131072" "write -P 0x66 15m 1m"
}

cd "$WORK"
images=()
add() { pad "$1"; qemu-img check -q "$1" || fail "$1 invalid before the test"; images+=("$1"); }

qemu-img create -q -f qcow2 -o cluster_size=512 c512.qcow2 24M;  mixed_writes c512.qcow2;  add c512.qcow2
qemu-img create -q -f qcow2 -o cluster_size=4k c4k.qcow2 24M;    mixed_writes c4k.qcow2;   add c4k.qcow2
qemu-img create -q -f qcow2 c64k.qcow2 24M;                      mixed_writes c64k.qcow2;  add c64k.qcow2
qemu-img create -q -f qcow2 -o cluster_size=2M c2m.qcow2 24M;    mixed_writes c2m.qcow2;   add c2m.qcow2
qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 24M;         mixed_writes v2.qcow2;    add v2.qcow2
qemu-img create -q -f qcow2 -o refcount_bits=1 rc1.qcow2 24M;    mixed_writes rc1.qcow2;   add rc1.qcow2
qemu-img create -q -f qcow2 -o refcount_bits=64 rc64.qcow2 24M;  mixed_writes rc64.qcow2;  add rc64.qcow2

# Zero clusters: keeping their host cluster (write -z) and without (-z -u).
qemu-img create -q -f qcow2 zero.qcow2 24M
mixed_writes zero.qcow2
qio zero.qcow2 "write -z 0 64k" "write -z -u 3m 128k" "write -z 20m 1m"
add zero.qcow2

# Compressed clusters, zlib and zstd, at several cluster sizes.
mkdata src.raw 24 1
qemu-img convert -c -O qcow2 src.raw zlib.qcow2;                                  add zlib.qcow2
qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw zstd.qcow2;         add zstd.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=2M src.raw zlib2m.qcow2;             add zlib2m.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=4k,compression_type=zstd src.raw zstd4k.qcow2; add zstd4k.qcow2
qemu-img convert -c -O qcow2 -o cluster_size=512 src.raw zlib512.qcow2;           add zlib512.qcow2

# Internal snapshot, then writes that copy-on-write in QEMU.
qemu-img create -q -f qcow2 snap.qcow2 24M
mixed_writes snap.qcow2
qemu-img snapshot -c base snap.qcow2
qio snap.qcow2 "write -P 0x77 8k 64k" "write -P 0x88 5m 4k" "write -z 15m 64k"
add snap.qcow2

# Virtual size not a multiple of the cluster size; data in the last cluster.
qemu-img create -q -f qcow2 odd.qcow2 $((24 * 1048576 + 3 * 512))
qio odd.qcow2 "write -P 0x99 $((24 * 1048576 - 4096)) $((4096 + 3 * 512))" "write -P 0xaa 0 512"
add odd.qcow2

[ "${#images[@]}" -le 16 ] || fail "more images than UML has ubd devices"

inner=$WORK/inner.sh
{
	echo 'set -u; rc=0; i=0'
	for img in "${images[@]}"; do
		qemu-img convert -O raw "$img" "${img%.qcow2}.raw"
		printf 'check %s %s\n' "$img" "$(sectors "$img")"
	done
	echo 'exit $rc'
} >"$inner.body"
cat >"$inner" <<'EOF2'
check() { # IMAGE SECTORS: activate /dev/ubd<i> and compare with the raw export
	local img=$1 len=$2 dev=/dev/ubd$(printf "\\$(printf %o $((97 + i)))") name=r$i
	local raw=${img%.qcow2}.raw ro=
	# Half the tables load read-only, half read-write: both must work.
	[ $((i % 2)) -eq 0 ] && ro=--readonly
	i=$((i + 1))
	if ! dmsetup create $ro "$name" --table "0 $len qcow2dedup $dev"; then
		echo "FAIL $img: dmsetup create"; dmesg | tail -n 3; rc=1; return
	fi
	if ! cmp "/dev/mapper/$name" "$raw"; then
		echo "FAIL $img: buffered read differs"; rc=1
	fi
	# O_DIRECT reads of 7 KiB: misaligned to every cluster size.
	if ! dd if="/dev/mapper/$name" iflag=direct bs=7k status=none | cmp - "$raw"; then
		echo "FAIL $img: direct read differs"; rc=1
	fi
	echo "ok $img $(dmsetup status "$name" | cut -d' ' -f4-)"
	dmsetup remove "$name" || { echo "FAIL $img: remove"; rc=1; }
}
EOF2
cat "$inner.body" >>"$inner"
chmod +x "$inner"

disks=()
for img in "${images[@]}"; do
	sha256sum "$img" >>sums
	disks+=(-d "$img")
done
uml -m 768M "${disks[@]}" -- bash "$inner"
sha256sum -c --quiet sums || fail "an image changed on a read-only path"
for img in "${images[@]}"; do
	qcheck "$img"
done
log "all ${#images[@]} images read back exactly"
