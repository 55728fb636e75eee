#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 52-dedup-collision: the byte compare before a share, fed different bytes.
# Removing it (sharing on a digest match alone) fails every part.
#
#  crc32c   `hash crc32c verify`: clusters X and Y (64 KiB) differ but have
#           the same crc32c (the last 4 bytes of Y are solved for it; the
#           host checks the collision with its own crc32c).  X at guest 0,
#           Y at 1, X at 2, Y at 3.  Y must not share X's cluster
#           (verify_mismatches >= 1), X at 2 shares guest 0 and Y at 3 shares
#           guest 1 (the index now names Y's cluster for that digest too, or
#           Y is written again; both are allowed, wrong data is not).
#  open     a dedup table left OPEN (a crash) whose slot for guest 0's
#           cluster (bytes 0x11) names the sha256 of bytes 0x22: writing
#           0x22 must not map onto it.
#  unverified the same with the UNVERIFIED flag on a closed table.
#
# Host: qemu-img compare with the expected disks, qemu-img map (who shares
# what), qcheck (qemu-img check and qcow2dedup check; qemu-img check alone
# for crc32c, which the tool does not hash).
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
K=65536
POKE="python3 $REPO/tools/testing/qcow2-poke.py"
MKQDT="python3 $REPO/tools/testing/mk-dedup-table.py"
TOOL=$REPO/tools/qcow2dedup/qcow2dedup
[ -x "$TOOL" ] || make -s -C "$REPO" tool >/dev/null || fail "cannot build the qcow2dedup tool"

# X, and Y = X with other bytes and a 4-byte tail that gives it X's crc32c
# (CRC-32C is affine over GF(2): the tail is solved from 32 unit vectors).
python3 - <<'PY' || fail "cannot make a crc32c collision"
import random
POLY = 0x82F63B78
T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ (POLY if c & 1 else 0)
    T.append(c)
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c = T[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF
assert crc32c(b"123456789") == 0xE3069283	# the check value of CRC-32C
r = random.Random(52)
n = 65536
x = r.randbytes(n)
y = bytearray(r.randbytes(n - 4)) + bytes(4)
zero = crc32c(bytes(n))
def lin(b):		# the linear part
    return crc32c(b) ^ zero
# Solve lin(tail bits) == lin(x) ^ lin(y with a zero tail) by elimination.
want = lin(x) ^ lin(bytes(y))
cols = []
for bit in range(32):
    t = bytearray(n)
    t[n - 4 + bit // 8] = 1 << (bit % 8)
    cols.append((lin(bytes(t)), 1 << bit))
sol, rows = 0, []
for v, m in cols:		# Gaussian elimination over GF(2)
    for rv, rm in rows:
        if v ^ rv < v:
            v, m = v ^ rv, m ^ rm
    if v:
        rows.append((v, m))
        rows.sort(reverse=True)
for rv, rm in rows:
    if want ^ rv < want:
        want, sol = want ^ rv, sol ^ rm
assert want == 0, "the tail bits do not span the crc"
y[n - 4:] = sol.to_bytes(4, "little")
y = bytes(y)
assert x != y and crc32c(x) == crc32c(y)
open("x.bin", "wb").write(x)
open("y.bin", "wb").write(y)
print("# X and Y differ in %d bytes, crc32c of both 0x%08x" % (sum(a != b for a, b in zip(x, y)), crc32c(x)))
PY
python3 -c 'import sys; open("p11.bin","wb").write(b"\x11"*65536); open("p22.bin","wb").write(b"\x22"*65536)'

qemu-img create -q -f qcow2 -o cluster_size=64k crc.qcow2 16M
pad crc.qcow2
cat x.bin y.bin x.bin y.bin >crc.exp.raw
truncate -s 16M crc.exp.raw

sha_of() { python3 -c 'import hashlib, sys; print(hashlib.sha256(bytes([int(sys.argv[1], 0)]) * 65536).hexdigest())' "$1"; }
for kind in open unverified; do
	qemu-img create -q -f qcow2 -o cluster_size=64k $kind.qcow2 16M
	qemu-io -c "write -P 0x11 0 64k" $kind.qcow2 >/dev/null
	if [ $kind = open ]; then $MKQDT $kind.qcow2 --open >/dev/null; else $MKQDT $kind.qcow2 >/dev/null; fi
	$POKE $kind.qcow2 slot "$($POKE $kind.qcow2 data-cluster 0)" "$(sha_of 0x22)"
	[ $kind = unverified ] && $POKE $kind.qcow2 qdt flags 2
	"$TOOL" info $kind.qcow2 | grep -i -E 'state|flags' | sed "s/^/# $kind: /"
	pad $kind.qcow2
	cat p11.bin p22.bin p22.bin >$kind.exp.raw
	truncate -s 16M $kind.exp.raw
done

LEN=$(sectors crc.qcow2)	# all three are 16 MiB
inner_prelude >common.sh
cat >inner.sh <<EOF
. ./common.sh
is() {	# is GUEST_CLUSTER FILE TAG
	dd if=/dev/mapper/t bs=$K skip=\$1 count=1 iflag=direct status=none | cmp -s - \$2 ||
		bad "\$3: guest cluster \$1 is not \$2"
}
echo "== crc32c"
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda 3 hash crc32c verify" ||
	bad "crc32c: create"
for c in 0:x 1:y 2:x 3:y; do
	dd if=\${c#*:}.bin of=/dev/mapper/t bs=$K seek=\${c%:*} oflag=direct status=none || bad "crc32c: write \$c"
done
for c in 0:x 1:y 2:x 3:y; do is \${c%:*} \${c#*:}.bin crc32c; done
save t crc
dmsetup remove t || bad "crc32c: remove"
for d in open:ubdb unverified:ubdc; do
	n=\${d%:*}
	echo "== \$n"
	dmsetup create t --table "0 $LEN qcow2dedup /dev/\${d#*:}" || bad "\$n: create"
	dd if=p22.bin of=/dev/mapper/t bs=$K seek=1 oflag=direct status=none || bad "\$n: write 0x22"
	dd if=p22.bin of=/dev/mapper/t bs=$K seek=2 oflag=direct status=none || bad "\$n: write 0x22 again"
	is 0 p11.bin \$n; is 1 p22.bin \$n; is 2 p22.bin \$n
	save t \$n
	dmsetup remove t || bad "\$n: remove"
done
echo inner-done
exit \$rc
EOF
run_inner inner -d crc.qcow2 -d open.qcow2 -d unverified.qcow2

log "host checks"
want_stat crc.stats hash = crc32c
want_stat crc.stats verify_mismatches -ge 1
qemu-img compare -q -f raw -F qcow2 crc.exp.raw crc.qcow2 || fail "crc32c: content differs from X Y X Y"
mapq crc.qcow2 $K same:$K:0,$((2 * K)) apart:$K:0,$K
# The tool cannot rehash crc32c tables: qemu-img check alone (the table's
# clusters are its only leaks: 3 leaked clusters with one leaf).
no_corruption crc.qcow2
{ qemu-img check crc.qcow2 2>&1 || true; } | grep -q '^3 leaked clusters' || { qemu-img check crc.qcow2; fail "crc32c: leaks other than the table's"; }
for kind in open unverified; do
	log "$kind: $(grep -E '^(verify_mismatches|dedup_hits|index_entries|table_loaded|table_dropped) ' $kind.stats | tr '\n' ' ')"
	want_stat $kind.stats verify_mismatches -ge 1
	qemu-img compare -q -f raw -F qcow2 $kind.exp.raw $kind.qcow2 ||
		fail "$kind: content differs (0x22 mapped onto the 0x11 cluster?)"
	mapq $kind.qcow2 $K apart:$K:0,$K same:$K:$K,$((2 * K))
	qcheck $kind.qcow2
done
log "a digest match with other bytes never shares: crc32c collision, OPEN and UNVERIFIED tables"
