#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 31-snapshot: writes through the target copy clusters shared with an
# internal snapshot instead of changing them in place.
#
# Three images (64 KiB clusters v3 with a 1 GiB disk, 4 KiB clusters v3 with
# 64 MiB, 64 KiB clusters compat=0.10 with 1 GiB) get data with qemu-io
# (patterns, a compressed cluster, zero clusters), then `qemu-img snapshot
# -c base` and a raw export of that state; then qemu-io, in the active layer
# only, unshares a few clusters, writes compressed clusters packed into one
# host cluster and zero clusters that keep their host cluster.  Through the
# target: partial-cluster and whole-cluster writes into shared clusters,
# into the compressed and the zero clusters, into unallocated clusters of a
# shared L2 table and into an unallocated L2 range, across L2-table
# boundaries; an aligned and an unaligned discard and a write-zeroes
# (blkdiscard -z) over shared clusters; partial writes into clusters just
# discarded or zeroed (they must not bring the snapshot's data back).
# Discard is expected to deallocate the whole clusters in its range and
# leave the partial ones at its ends alone (the target's documented
# behaviour); write-zeroes zeroes everything.
#
# Inside UML: "write" mode, COW copies counted, an O_DIRECT read-back equal to
# the expected disk.  On the host after removal: `qemu-img check` clean (no
# leaks), the active layer equal to the expected raw file, and on a copy,
# after `qemu-img snapshot -a base`, the disk equal to the pre-write export
# and `qemu-img check` clean again.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

K=1024 M=$((1 << 20)) G=$((1 << 30))

# name cluster_size compat virtual_size
images=(
	"v3c64k 65536 1.1  $G"
	"v3c4k  4096  1.1  $((64 * M))"
	"v2c64k 65536 0.10 $G"
)

cd "$WORK"
# Operations: "W off len seed mode" (mode direct|buffered|dsync),
# "D off len" (discard), "Z off len" (write-zeroes).  apply runs them on a
# device, expect on a raw file (discard: only the whole clusters inside).
cat >ops.py <<'PY'
import mmap, os, random, subprocess, sys

def ops(path):
    for line in open(path):
        f = line.split()
        if f:
            yield f[0], int(f[1]), int(f[2]), f[3:]

def data(seed, n):
    return random.Random("snap:%s" % seed).randbytes(n)

def apply(dev, path):
    fds = {"buffered": os.open(dev, os.O_WRONLY),
           "direct": os.open(dev, os.O_WRONLY | os.O_DIRECT),
           "dsync": os.open(dev, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)}
    buf = mmap.mmap(-1, 8 << 20)
    for op, off, n, rest in ops(path):
        if op == "W":
            d = data(rest[0], n)
            if rest[1] == "buffered":
                done = os.pwrite(fds["buffered"], d, off)
                os.fsync(fds["buffered"])
            else:
                buf[:n] = d
                done = os.pwrite(fds[rest[1]], memoryview(buf)[:n], off)
            if done != n:
                sys.exit("short write at %d" % off)
        else:
            cmd = ["blkdiscard", "-o", str(off), "-l", str(n)] + (["-z"] if op == "Z" else []) + [dev]
            subprocess.run(cmd, check=True)

def expect(raw, path, cs):
    with open(raw, "r+b") as f:
        for op, off, n, rest in ops(path):
            if op == "W":
                f.seek(off); f.write(data(rest[0], n))
            elif op == "Z":
                f.seek(off); f.write(bytes(n))
            else:
                s, e = -(-off // cs) * cs, (off + n) // cs * cs
                if s < e:
                    f.seek(s); f.write(bytes(e - s))

def verify(dev, raw):
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    size = os.path.getsize(raw)
    bad = 0
    with open(raw, "rb") as f:
        for off in range(0, size, 1 << 20):
            n = min(1 << 20, size - off)
            got = os.preadv(fd, [memoryview(buf)[:n]], off)
            want = f.read(n)
            if got != n or buf[:n] != want:
                k = next((i for i in range(n) if buf[i] != want[i]), 0)
                print("verify %s: differs in [%d, %d), first byte %d: %02x, expected %02x"
                      % (dev, off, off + n, off + k, buf[k], want[k]))
                bad += 1
    sys.exit(1 if bad else 0)

cmd = sys.argv[1]
if cmd == "apply":
    apply(sys.argv[2], sys.argv[3])
elif cmd == "expect":
    expect(sys.argv[2], sys.argv[3], int(sys.argv[4]))
else:
    verify(sys.argv[2], sys.argv[3])
PY

qio() { local img=$1; shift; local a=(); for c in "$@"; do a+=(-c "$c"); done; qemu-io "${a[@]}" "$img" >/dev/null; }

inner=$WORK/inner.sh
cat >"$inner" <<'EOF'
set -u
rc=0
one() { # NAME DEV SECTORS
	local name=$1 dev=$2 len=$3 st
	dmsetup create "$name" --table "0 $len qcow2dedup $dev" ||
		{ echo "FAIL $name: dmsetup create"; rc=1; return; }
	python3 ops.py apply "/dev/mapper/$name" "$name.ops" || { echo "FAIL $name: applying the operations"; rc=1; }
	st=$(dmsetup status "$name")
	echo "$name status: $st"
	set -- $st
	[ "$4" = write ] || { echo "FAIL $name: mode $4"; rc=1; }
	[ "${10:-0}" -gt 0 ] || { echo "FAIL $name: no COW copy counted"; rc=1; }
	python3 ops.py verify "/dev/mapper/$name" "$name.expected.raw" ||
		{ echo "FAIL $name: O_DIRECT read-back differs"; rc=1; }
	dmsetup remove "$name" || { echo "FAIL $name: dmsetup remove"; rc=1; }
}
EOF

disks=() i=0
for spec in "${images[@]}"; do
	read -r name cs compat size <<<"$spec"
	l2=$((cs * cs / 8))			# bytes one L2 table maps
	qemu-img create -q -f qcow2 -o cluster_size="$cs",compat="$compat" "$name.qcow2" "$size"
	qio "$name.qcow2" "write -P 0x11 0 4M" "write -P 0x22 8M 1M" \
		"write -P 0x33 $((20 * M + 512)) 100k" "write -c -P 0x44 12M $cs" \
		"write -P 0x66 16M $((4 * cs))" "write -z $((16 * M + cs)) $((2 * cs))"
	qemu-img snapshot -c base "$name.qcow2"
	qemu-img convert -O raw "$name.qcow2" "$name.base.raw"
	# In the active layer only: unshare a few clusters; compressed clusters
	# packed into one host cluster (refcount > 1 without a snapshot); zero
	# clusters that keep their host cluster (v3).
	qio "$name.qcow2" "write -P 0x55 2M 256k" \
		"write -c -P 0x77 13M $cs" "write -c -P 0x78 $((13 * M + cs)) $cs" \
		"write -c -P 0x79 $((13 * M + 2 * cs)) $cs" "write -c -P 0x7a $((13 * M + 3 * cs)) $cs" \
		"write -P 0x7b 18M $((3 * cs))" "write -z $((18 * M + cs)) $((2 * cs))"
	qemu-img check -q "$name.qcow2" || fail "$name invalid before the test"
	qemu-img convert -O raw "$name.qcow2" "$name.expected.raw"
	truncate -s 256M "$name.qcow2"

	# An L2 boundary at 4 MiB or beyond: mapped before it, unmapped after
	# (4 KiB: the 4 MiB boundary; 64 KiB: 512 MiB).
	lb=$l2; while [ "$lb" -lt $((4 * M)) ]; do lb=$((lb + l2)); done
	far=$((size - size / 4))		# an L2 range nothing maps
	{
		echo "W $((4 * K + 512)) 1536 1 direct"			# partial, shared
		echo "W $((1 * M)) $cs 2 direct"				# whole cluster, shared
		echo "W $((1 * M + 3 * cs)) $((2 * cs)) 3 buffered"		# two whole, shared
		echo "W $((2 * M - 1536)) $((256 * K + 3 * 512)) 4 direct"	# shared, unshared, shared
		echo "W $((2 * M - 1024)) 2048 5 dsync"			# across the 2 MiB L2 boundary at 4K
		echo "W $((12 * M + 1024)) 2048 6 direct"			# the compressed cluster
		echo "W $((16 * M + cs + 4 * K)) 512 7 direct"			# a zero cluster
		echo "W $((16 * M + 512)) $((cs + 1024)) 8 direct"		# data into zero cluster
		echo "W $((30 * M)) $((3 * cs + 1024)) 9 direct"		# unallocated, shared L2
		echo "W $((lb - cs / 2 - 512)) $((cs + 1024)) 10 direct"	# across an L2 boundary
		echo "W $far $((100 * K)) 11 buffered"				# unallocated L2 range
		echo "W $((far + 300 * K + 512)) 3584 12 direct"
		echo "W $((13 * M + cs + 1024)) 2048 18 direct"		# packed compressed clusters
		echo "W $((13 * M + 2 * cs)) $cs 19 direct"
		echo "D $((13 * M)) $cs"
		echo "Z $((13 * M + 3 * cs)) $cs"
		echo "W $((18 * M + cs + 512)) 1024 20 direct"		# zero cluster, own host cluster
		echo "D $((18 * M + 2 * cs)) $cs"
		echo "W $((18 * M + 512)) 512 21 buffered"			# in place, unshared
		echo "D $((8 * M)) $((512 * K))"				# aligned discard, shared
		echo "D $((8 * M + 600 * K + 1024)) $((200 * K))"		# unaligned discard, shared
		echo "Z $((3 * M + 512)) $((300 * K))"				# write-zeroes, shared
		echo "W $((8 * M + 64 * K + 4096)) 4096 13 direct"		# into a discarded cluster
		echo "W $((8 * M + 256 * K)) 512 14 buffered"
		echo "W $((3 * M + 128 * K + 512)) 1024 15 direct"		# into a zeroed cluster
		echo "W $((3 * M)) 512 16 direct"				# the zeroed range's head
		echo "W $((4 * K + 1024)) 512 17 direct"			# again the first cluster
	} >"$name.ops"
	python3 ops.py expect "$name.expected.raw" "$name.ops" "$cs"
	dev=/dev/ubd$(printf "\\$(printf %o $((97 + i)))")
	printf 'one %s %s %s\n' "$name" "$dev" "$((size / 512))" >>"$inner"
	disks+=(-d "$name.qcow2")
	i=$((i + 1))
done
echo 'exit $rc' >>"$inner"

log "writing through the target in UML"
start=$(date +%s)
uml -m 768M "${disks[@]}" -- bash "$inner" || fail "inside UML (see above)"
log "UML part took $(($(date +%s) - start))s"

for spec in "${images[@]}"; do
	read -r name cs compat size <<<"$spec"
	check_clean "$name.qcow2"
	qemu-img compare -f raw -F qcow2 "$name.expected.raw" "$name.qcow2" ||
		fail "$name: active layer differs from the expected disk"
	qemu-img snapshot -l "$name.qcow2" | grep -qw base || fail "$name: snapshot base gone"
	cp --sparse=always "$name.qcow2" "$name.reverted.qcow2"
	qemu-img snapshot -a base "$name.reverted.qcow2"
	qemu-img compare -f raw -F qcow2 "$name.base.raw" "$name.reverted.qcow2" ||
		fail "$name: the snapshot's view changed"
	check_clean "$name.reverted.qcow2"
done
log "active layers as expected, snapshots untouched, images clean"
