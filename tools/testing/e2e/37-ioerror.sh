#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 37-ioerror: I/O errors from the device below the target.
#
# The image sits on a dm device inside UML (dm-linear over /dev/ubda) that is
# swapped, by a table reload, for dm-flakey with error_writes (every write
# and flush fails, reads work) and later for dm-error (everything fails).
#
# Part 1, step by step (4 KiB clusters; data prepared by qemu-io at 40 MiB and
# 48 MiB that the guest never touches before the errors):
#   - writes + fsync succeed; more writes without fsync; then error_writes;
#   - an allocating write and an in-place write fail with EIO, the next fsync
#     fails with EIO, the status shows read-only mode, dmesg shows the
#     target's "metadata ... failed (-5): switching to read-only mode";
#   - writes and discards are refused with EIO; reads of the data written
#     before work, and so do reads that need an L2 table not cached yet;
#   - under dm-error, reads fail with EIO; the target is removed without a
#     hang; no kernel report (uml-run checks the console) anywhere;
#   - the image activates again directly on /dev/ubda in write mode and
#     takes a write.
#   On the host: qemu-img check finds no corruption (leaks are allowed and
#   reported); everything fsynced before the error is there, writes that
#   failed left their sectors as they were, unflushed writes are all old or
#   new per sector; `qemu-img check -r leaks`, then a clean check.
#
# Part 2, error at a random moment (seed printed; IOERROR_SEED=N repeats):
#   rounds alternate between an image with 64 KiB and one with 4 KiB
#   clusters, each carrying its state on.  A workload of O_DIRECT writes
#   (allocating, in place, discards, some RWF_DSYNC) with an fsync per batch
#   logs its sync points to $WORK; after a random 0.2-3 s error_writes
#   replaces dm-linear.  The workload must stop with EIO, one more fsync must
#   fail, the mode must be read-only (or fail) with the DMERR line; then,
#   still in read-only mode, the whole device is read through the target and
#   checked: everything up to the last sync point exact, sectors of the ops
#   after it old or new, all else unchanged.  After removal the host checks
#   the image the same way and qemu-img check must find no corruption.
#
# Part 3: on a full device with frees staged, an allocating write makes the
#   target commit, and that commit hits error_writes: one error, so the
#   mode must be read-only (not fail) and the data must still read back.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

SEED=${IOERROR_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
ROUNDS=${IOERROR_ROUNDS:-6}
log "seed $SEED (IOERROR_SEED=$SEED $0 repeats part 2), $ROUNDS rounds in part 2"
cd "$WORK"

cat >ie.py <<'PY'
"""I/O helpers for 37-ioerror: op lists, the random workload, verification."""
import errno, fcntl, json, mmap, os, random, struct, sys, time

SECTOR = 512
BLKDISCARD = 0x1277

def pattern(tag, off, length):
    """Contents for TAG at byte OFF: zero, fill:0xNN, or tagged pseudo-random
    sectors, each a function of TAG and its sector number only."""
    if tag == "zero":
        return bytes(length)
    if tag.startswith("fill:"):
        return bytes([int(tag[5:], 0)]) * length
    out = bytearray()
    for sec in range(off // SECTOR, (off + length) // SECTOR):
        t = b"[%s sector %d]" % (tag.encode(), sec)
        out += t + random.Random("%s/%d" % (tag, sec)).randbytes(SECTOR - len(t))
    return bytes(out)

def desc(x):
    x = bytes(x)
    if not any(x):
        return "zeros"
    if x.startswith(b"["):
        return x[:x.index(b"]") + 1].decode(errors="replace")
    if x.count(x[0]) == len(x):
        return "fill:0x%02x" % x[0]
    return "other data (%s...)" % x[:16].hex()

def size(s):
    mult = {"k": 1 << 10, "M": 1 << 20}
    total = 0
    for part in s.split("+"):
        total += int(part[:-1]) * mult[part[-1]] if part[-1] in mult else int(part)
    return total

def ops(args):
    """ops DEV OP...: OP is [!~]w:OFF:LEN:TAG, [!~]r:OFF:LEN:TAG[|TAG...],
    [!~]d:OFF:LEN or [!~]f; '!' = must fail with EIO, '~' = may succeed or
    fail with EIO, '%' = must fail with ENOSPC, else must succeed."""
    dev, rest = args[0], args[1:]
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 8 << 20)
    bad = 0
    for op in rest:
        want = {"!": ["EIO"], "~": ["ok", "EIO"], "%": ["ENOSPC"]}.get(op[0], ["ok"])
        w = op.lstrip("!~%").split(":", 3)
        note = ""
        try:
            if w[0] == "w":
                off, length = size(w[1]), size(w[2])
                buf[0:length] = pattern(w[3], off, length)
                with memoryview(buf)[0:length] as mv:
                    os.pwrite(fd, mv, off)
            elif w[0] == "r":
                off, length = size(w[1]), size(w[2])
                with memoryview(buf)[0:length] as mv:
                    n = os.preadv(fd, [mv], off)
                got = bytes(buf[0:n])
                alts = [pattern(t, off, length) for t in w[3].split("|")]
                which = {}
                for s in range(0, length, SECTOR):
                    sec = got[s:s + SECTOR]
                    for t, a in zip(w[3].split("|"), alts):
                        if sec == a[s:s + SECTOR]:
                            which[t] = which.get(t, 0) + 1
                            break
                    else:
                        bad += 1
                        print("  %s: sector %d holds %s" % (op, (off + s) // SECTOR, desc(sec)))
                        break
                note = " (" + ", ".join("%d sectors %s" % (v, k) for k, v in which.items()) + ")"
            elif w[0] == "d":
                fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", size(w[1]), size(w[2])))
            elif w[0] == "f":
                os.fsync(fd)
            res = "ok"
        except OSError as e:
            res = errno.errorcode.get(e.errno, str(e.errno))
        if res not in want:
            bad += 1
        print("%s %s -> %s%s%s" % ("  " if res in want else "FAIL", op, res, note,
                                   "" if res in want else " (expected %s)" % want[0]))
    sys.exit(1 if bad else 0)

def data(seed, rnd, b, k, off, length):
    """What op K of batch B writes: one random stream, a tag in every sector."""
    out = bytearray(random.Random("%s/%d/%d/%d" % (seed, rnd, b, k)).randbytes(length))
    for s in range(0, length, SECTOR):
        t = b"[seed %s round %d batch %d op %d sector %d]" % (
            str(seed).encode(), rnd, b, k, (off + s) // SECTOR)
        out[s:s + len(t)] = t
    return bytes(out)

def plan(args):
    seed, rnd, cs, vsize, out = args
    rnd, cs, vsize = int(rnd), int(cs), int(vsize)
    r = random.Random("%s/plan/%d" % (seed, rnd))
    written, batches = [], []
    for b in range(1500):
        ops = []
        for k in range(r.randint(1, 8)):
            if r.random() < 0.07:
                n = r.choice([1, 2, 4]) * max(cs, 65536)
                base = r.choice(written) if written and r.random() < 0.8 else r.randrange(vsize)
                off = min(base - base % cs, vsize - n)
                ops.append(["d", off, n, 0])
                continue
            length = r.choice([512, 1536, 4096, 4096, 8192, 12288, 65536, 131072, cs])
            align = 4096 if length % 4096 == 0 and r.random() < 0.7 else SECTOR
            if length == cs and r.random() < 0.8:
                align = cs
            base = r.choice(written) + r.randrange(-cs, cs) if written and r.random() < 0.5 \
                else r.randrange(vsize)
            base = max(0, min(base, vsize - length))
            off = base - base % align
            ops.append(["w", off, length, 1 if r.random() < 0.08 else 0])
            written.append(off)
        batches.append(ops)
    json.dump({"seed": seed, "round": rnd, "batches": batches}, open(out, "w"))

def run(args):
    """Write until an error; log sync points and the failing op."""
    planfile, dev, logfile = args
    p = json.load(open(planfile))
    seed, rnd = p["seed"], p["round"]
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    logfd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    note = lambda s: os.write(logfd, (s + "\n").encode())
    note("start")
    b, k = 0, "fsync"
    try:
        for b, batch in enumerate(p["batches"], 1):
            for k, (kind, off, length, dsync) in enumerate(batch):
                if kind == "d":
                    fcntl.ioctl(fd, BLKDISCARD, struct.pack("QQ", off, length))
                    continue
                buf[0:length] = data(seed, rnd, b, k, off, length)
                with memoryview(buf)[0:length] as mv:
                    if dsync:
                        os.pwritev(fd, [mv], off, os.RWF_DSYNC)
                        note("dsync %d %d" % (b, k))
                    else:
                        os.pwrite(fd, mv, off)
            k = "fsync"
            os.fsync(fd)
            note("batch %d done" % b)
        b += 1
        while True:                 # plan exhausted: flush until the error
            time.sleep(0.05)
            os.fsync(fd)
    except OSError as e:
        note("error %d %s %s" % (b, k, errno.errorcode.get(e.errno, e.errno)))
        print("workload: batch %d op %s: %s" % (b, k, e))
        sys.exit(0 if e.errno == errno.EIO else 1)

def read_all(path, length):
    if not path.startswith("/dev/"):
        return open(path, "rb").read()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    out = bytearray()
    while len(out) < length:
        with memoryview(buf) as mv:
            n = os.preadv(fd, [mv], len(out))
        if n <= 0:
            break
        out += buf[0:n]
    return bytes(out)

def verify(args):
    """verify PLAN LOG BASE ACTUAL: ACTUAL (file or device) against the log."""
    planfile, logfile, basefile, actual = args
    p = json.load(open(planfile))
    seed, rnd, batches = p["seed"], p["round"], p["batches"]
    sync_b, sync_k, err = 0, 0, None
    for ln in open(logfile).read().split("\n"):
        w = ln.split()
        if len(w) == 3 and w[0] == "batch":
            sync_b, sync_k = int(w[1]), 0
        elif len(w) == 3 and w[0] == "dsync":
            sync_b, sync_k = int(w[1]) - 1, int(w[2]) + 1
        elif w and w[0] == "error":
            err = (int(w[1]), w[2])
    exp = bytearray(open(basefile, "rb").read())
    act = read_all(actual, len(exp))
    if len(act) != len(exp):
        print("verify: read %d bytes of %d" % (len(act), len(exp)))
        return 1

    def content(b, k):
        kind, off, length, _ = batches[b - 1][k]
        return bytes(length) if kind == "d" else data(seed, rnd, b, k, off, length)

    ndur = 0
    for b in range(1, sync_b + 2):
        if b > len(batches):
            break
        for k, op in enumerate(batches[b - 1]):
            if b == sync_b + 1 and k >= sync_k:
                break
            exp[op[1]:op[1] + op[2]] = content(b, k)
            ndur += 1
    # Uncertain: after the sync point, up to the op that failed.
    unc = []
    if err is None or err[0] != sync_b + 1:
        print("verify: the log does not end with an error after the last sync point")
        return 1
    if err[0] <= len(batches):
        last = len(batches[err[0] - 1]) - 1 if err[1] == "fsync" else int(err[1])
        unc = [(err[0], k) for k in range(sync_k, last + 1)]
    cands = {}
    for b, k in unc:
        op = batches[b - 1][k]
        c = content(b, k)
        for s in range(0, op[2], SECTOR):
            sec = (op[1] + s) // SECTOR
            cands.setdefault(sec, [bytes(exp[sec * SECTOR:(sec + 1) * SECTOR])]).append(c[s:s + SECTOR])
    bad = new = 0
    step = 1 << 16
    for chunk in range(0, len(exp), step):
        if act[chunk:chunk + step] == exp[chunk:chunk + step]:
            continue
        for off in range(chunk, chunk + step, SECTOR):
            a, sec = act[off:off + SECTOR], off // SECTOR
            if a == exp[off:off + SECTOR]:
                continue
            if sec in cands and a in cands[sec]:
                new += 1
                continue
            bad += 1
            if bad <= 10:
                print("MISMATCH sector %d (%s): found %s, expected %s%s" % (
                    sec, "uncertain" if sec in cands else "durable or untouched", desc(a),
                    desc(exp[off:off + SECTOR]),
                    "".join(" or " + desc(c) for c in cands.get(sec, [])[1:])))
    print("verify %s: synced to batch %d op %d, error at batch %s op %s; %d ops durable, "
          "%d uncertain (%d of %d sectors new); %d bad sectors" % (
              "device" if actual.startswith("/dev/") else "image", sync_b, sync_k,
              err[0] if err else "-", err[1] if err else "-", ndur, len(unc), new,
              len(cands), bad))
    return 1 if bad else 0

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ops":
        ops(args)
    elif cmd == "plan":
        plan(args)
    elif cmd == "run":
        run(args)
    elif cmd == "verify":
        sys.exit(verify(args))
PY

# check_image IMAGE: qemu-img check must find no corruption; print the leaks.
check_image() {
	local out
	# Leaked clusters are listed on stderr, the JSON report on stdout.
	out=$(qemu-img check --output=json "$1" 2>/dev/null) || true
	python3 -c '
import json, sys
try:
    j = json.loads(sys.argv[1])
except ValueError:
    print("qemu-img check output is not JSON: " + sys.argv[1]); sys.exit(2)
print(j.get("leaks", 0))
sys.exit(1 if j.get("corruptions", 0) + j.get("check-errors", 0) else 0)' "$out" ||
		{ echo "$out" >&2; qemu-img check "$1" >&2 || true; return 1; }
}

# The inner scripts' shared helpers (bash in UML).
cat >inner-lib.sh <<'EOF'
set -u
rc=0
bad() { echo "FAIL: $*"; rc=1; }
io() { python3 ie.py ops /dev/mapper/q "$@" || bad "io $*"; }
# lower TABLE-TAIL: replace the table of the device under the target.
lower() {
	dmsetup load lower --table "0 $DEVS $*" && dmsetup resume lower || bad "reload lower: $*"
	echo "lower: $(dmsetup table lower)"
}
mode() { dmsetup status q | cut -d' ' -f4; }
EOF

# ---------------------------------------------------------------- part 1
log "part 1: step by step"
VS1=$((64 << 20))
qemu-img create -q -f qcow2 -o cluster_size=4k s.qcow2 $VS1
qemu-io -c "write -P 0x11 40M 4M" -c "write -P 0x22 48M 2M" s.qcow2 >/dev/null
truncate -s 256M s.qcow2
cat >inner1.sh <<EOF
DEVS=$(($(stat -c %s s.qcow2) / 512))
source inner-lib.sh
dmsetup create lower --table "0 \$DEVS linear /dev/ubda 0"
dmsetup create q --table "0 $((VS1 / 512)) qcow2dedup /dev/mapper/lower" || exit 1
echo "phase 1: writes and an fsync succeed"
io w:0:64k:P1a w:1M+512:1536:P1b w:5M:8k:P1c w:9M:4k:P1d w:60M:128k:P1e f
echo "phase 2: writes without fsync"
io w:12M:64k:P2a w:13M+1k:4k:P2b w:0+8k:4k:P2c
echo "status: \$(dmsetup status q)"
echo "phase 3: error_writes below"
lower flakey /dev/ubda 0 0 3600 1 error_writes
io '!w:20M:4k:P3a' '!w:4k:4k:P3b' '!f'
echo "status: \$(dmsetup status q)"
[ "\$(mode)" = read-only ] || bad "mode \$(mode) after a failed commit, not read-only"
dmesg | grep -E 'qcow2dedup: .*metadata .* failed \(-5\): switching to read-only mode' ||
	bad "no DMERR line about the switch to read-only mode"
io '!w:4k:4k:P3c' '!w:30M:4k:P3d' '!w:0:64k:P3e' '!d:0:64k'
echo "phase 4: reads in read-only mode"
io r:0:8k:P1a r:12k:52k:P1a r:1M+512:1536:P1b r:5M:8k:P1c r:9M:4k:P1d r:60M:128k:P1e \
   r:40M:4M:fill:0x11 r:20M:4k:zero r:30M:4k:zero \
   'r:12M:64k:P2a|zero' 'r:13M+1k:4k:P2b|zero' 'r:0+8k:4k:P2c|P1a'
dmesg | grep -c 'write refused' >/dev/null || bad "no 'write refused' message"
echo "phase 5: dm-error below"
lower error
io '!r:48M:64k:fill:0x22' '!r:0:4k:P1a' '!w:0:4k:P5' '!f'
echo "status: \$(dmsetup status q)"
dmsetup remove q || bad "remove q"
dmsetup remove lower || bad "remove lower"
echo "phase 6: activation after the errors"
dmsetup create q --table "0 $((VS1 / 512)) qcow2dedup /dev/ubda" || exit 1
[ "\$(mode)" = write ] || bad "mode \$(mode) after reactivation"
io r:0:8k:P1a r:12k:52k:P1a 'r:8k:4k:P2c|P1a' r:1M+512:1536:P1b r:5M:8k:P1c r:9M:4k:P1d \
   r:60M:128k:P1e r:40M:4M:fill:0x11 r:48M:2M:fill:0x22 r:20M:4k:zero \
   w:30M:8k:P6a f r:30M:8k:P6a
echo "status: \$(dmsetup status q)"
dmsetup remove q || bad "remove q"
echo "--- dmesg (qcow2dedup, flakey, dm-bufio) ---"
dmesg | grep -E 'qcow2dedup|dm-bufio|flakey' | head -n 30
exit \$rc
EOF
t=$SECONDS
uml -d s.qcow2 -- bash inner1.sh | sed 's/^/  /' || fail "part 1 inside UML"
leaks=$(check_image s.qcow2) || fail "part 1: qemu-img check finds corruption"
qemu-img convert -O raw s.qcow2 s.raw
python3 - s.raw <<'PY' || fail "part 1: data on the image"
import sys
sys.path.insert(0, ".")
from ie import pattern, desc, size, SECTOR
img = open(sys.argv[1], "rb").read()
# (offset, length, acceptable tags per sector); everything else must be zero.
regions = [("0", "64k", ["P1a"]), ("1M+512", "1536", ["P1b"]), ("5M", "8k", ["P1c"]),
           ("9M", "4k", ["P1d"]), ("60M", "128k", ["P1e"]), ("40M", "4M", ["fill:0x11"]),
           ("48M", "2M", ["fill:0x22"]), ("30M", "8k", ["P6a"]),
           ("12M", "64k", ["P2a", "zero"]), ("13M+1k", "4k", ["P2b", "zero"])]
# P2c (0+8k) lies inside P1a's region: old (P1a) or new.
regions[0] = ("0", "8k", ["P1a"])
regions += [("8k", "4k", ["P2c", "P1a"]), ("12k", "52k", ["P1a"])]
exp = bytearray(len(img))
bad = 0
for o, l, tags in regions:
    off, length = size(o), size(l)
    alts = [pattern(t, off, length) for t in tags]
    for s in range(0, length, SECTOR):
        a = img[off + s:off + s + SECTOR]
        if not any(a == x[s:s + SECTOR] for x in alts):
            bad += 1
            print("MISMATCH at %d: %s, expected %s" % (off + s, desc(a), " or ".join(tags)))
    exp[off:off + length] = img[off:off + length]
rest = sum(1 for c in range(0, len(img), 65536) if img[c:c + 65536] != exp[c:c + 65536])
if rest:
    print("MISMATCH: %d chunks outside the written regions are not zero" % rest)
print("part 1 data: %d bad sectors" % bad)
sys.exit(1 if bad or rest else 0)
PY
qemu-img check -q -r leaks s.qcow2 >/dev/null 2>&1 || true
qemu-img check -q s.qcow2 || fail "part 1: not clean after check -r leaks"
log "part 1 passed ($((SECONDS - t))s): leaks after the errors: $leaks, repaired"

# ---------------------------------------------------------------- part 2
log "part 2: errors at random moments"
VS2=$((32 << 20))
for img in A B; do
	if [ $img = A ]; then o=cluster_size=64k; else o=cluster_size=4k; fi
	qemu-img create -q -f qcow2 -o $o $img.qcow2 $VS2
	truncate -s 128M $img.qcow2
	truncate -s $VS2 $img.base.raw
done
for round in $(seq 1 "$ROUNDS"); do
	t=$SECONDS
	if [ $((round % 2)) -eq 1 ]; then img=A cs=65536; else img=B cs=4096; fi
	python3 ie.py plan "$SEED" "$round" $cs $VS2 "plan.$round.json"
	delay=$(python3 -c 'import random, sys; print("%.2f" % random.Random("%s/err/%s" % (sys.argv[1], sys.argv[2])).uniform(0.2, 3.0))' "$SEED" "$round")
	cat >"inner2.$round.sh" <<EOF
DEVS=$(($(stat -c %s $img.qcow2) / 512))
source inner-lib.sh
dmsetup create lower --table "0 \$DEVS linear /dev/ubda 0"
dmsetup create q --table "0 $((VS2 / 512)) qcow2dedup /dev/mapper/lower" || exit 1
python3 ie.py run "plan.$round.json" /dev/mapper/q "log.$round" &
w=\$!
sleep $delay
lower flakey /dev/ubda 0 0 3600 1 error_writes
wait \$w || bad "the workload did not stop with EIO"
# Fails if the mode is still write (the commit hits the error) or anything
# is staged; may succeed in read-only mode with nothing staged.
io '~f'
echo "status: \$(dmsetup status q)"
case "\$(mode)" in read-only|fail) ;; *) bad "mode \$(mode) after the errors";; esac
dmesg | grep -Eq 'qcow2dedup: .*metadata .* failed \(-5\): switching to (read-only|fail) mode' ||
	bad "no DMERR line about the mode switch"
io '!w:0:4k:late'
python3 ie.py verify "plan.$round.json" "log.$round" $img.base.raw /dev/mapper/q || bad "reads in read-only mode"
dmsetup remove q || bad "remove q"
dmsetup remove lower || bad "remove lower"
exit \$rc
EOF
	out=$(uml -d $img.qcow2 -- bash "inner2.$round.sh" 2>&1) || {
		echo "$out"
		fail "part 2 round $round ($img, seed $SEED): inside UML"
	}
	leaks=$(check_image $img.qcow2) || {
		echo "$out"
		keep=$CACHE/e2e/ioerror-failed-$SEED-$round
		mkdir -p "$keep" && cp $img.qcow2 "plan.$round.json" "log.$round" "inner2.$round.sh" "$keep"/
		fail "part 2 round $round ($img, seed $SEED): qemu-img check finds corruption (image kept in $keep)"
	}
	qemu-img convert -O raw $img.qcow2 $img.actual.raw
	v=$(python3 ie.py verify "plan.$round.json" "log.$round" $img.base.raw $img.actual.raw) || {
		echo "$out"
		echo "$v"
		fail "part 2 round $round ($img, seed $SEED): data on the image"
	}
	mv $img.actual.raw $img.base.raw
	log "round $round $img ($((SECONDS - t))s): error after ${delay}s; $(grep -m1 '^workload' <<<"$out");" \
	    "$(grep -m1 '^status' <<<"$out" | cut -d' ' -f5-); through the target in read-only mode:" \
	    "$(grep -m1 '^verify device' <<<"$out" | sed 's/.*sectors new); //'); leaks $leaks; ${v#verify image: }"
done
for img in A B; do
	qemu-img check -q -r leaks $img.qcow2 >/dev/null 2>&1 || true
	qemu-img check -q $img.qcow2 || fail "$img: not clean after check -r leaks"
done
log "part 2 passed"

# ---------------------------------------------------------------- part 3
# One error, on a full device: an allocation finds no free cluster while
# frees are staged, so the target commits to reuse them, and that commit
# hits the error.  One metadata I/O error: read-only mode, not fail mode;
# reads go on.  The writes fail from before the discard on: the commit
# period (1 s) may commit the staged frees first, and that commit must hit
# the error too (the run lost that race once when the error came after).
log "part 3: the error hits the commit an allocation on a full device makes"
qemu-img create -q -f qcow2 full.qcow2 64M
# 64 clusters: 5 of metadata, 1 for the dedup table's root (made at the
# first write; no write-back before removal adds leaves), 58 for data.
truncate -s 4M full.qcow2
cat >inner3.sh <<EOF
DEVS=$(($(stat -c %s full.qcow2) / 512))
source inner-lib.sh
dmsetup create lower --table "0 \$DEVS linear /dev/ubda 0"
dmsetup create q --table "0 $((64 << 11)) qcow2dedup /dev/mapper/lower 2 flush_interval 3600000" || exit 1
io w:0:3712k:F1 f '%w:4M:64k:F0'
echo "status: \$(dmsetup status q)"
lower flakey /dev/ubda 0 0 3600 1 error_writes
io d:0:1M '!w:8M:64k:F2'
echo "status: \$(dmsetup status q)"
dmesg | grep -E 'qcow2dedup: .*(switching|no free)'
[ "\$(mode)" = read-only ] || bad "mode \$(mode) after one metadata I/O error, not read-only"
io 'r:0:1M:F1|zero' r:1M:2688k:F1 r:8M:64k:zero
dmsetup remove q || bad "remove q"
dmsetup remove lower || bad "remove lower"
exit \$rc
EOF
out=$(uml -d full.qcow2 -- bash inner3.sh 2>&1) || { echo "$out" | grep -v 'write refused'; fail "part 3 inside UML"; }
check_image full.qcow2 >/dev/null || fail "part 3: qemu-img check finds corruption"
log "part 3 passed"
log "all I/O error scenarios passed (${SECONDS}s)"
