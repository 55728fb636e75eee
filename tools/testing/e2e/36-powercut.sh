#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 36-powercut: power cuts at random moments while the target writes.
#
# Two images take turns, each carrying its damage from round to round:
#   A: empty v3 image, 64 KiB clusters, 128 MiB;
#   B: 4 KiB clusters, 16 MiB of zstd-compressed and plain data and an
#      internal snapshot "base" (so writes copy shared L2 tables, shared and
#      compressed clusters).
# Both files are truncated to 256 MiB so that the target can allocate.
#
# Each round boots UML with `uml-run --cut-after T` (T random, from the seed
# printed at the start; POWERCUT_SEED=N repeats a run).  Inside, the image is
# activated (after the previous round's crash) and a python workload runs a
# plan made on the host: batches of O_DIRECT writes of 512 B to 128 KiB, some
# with RWF_DSYNC, to fresh places (allocating) and to places written before
# (in place, and copy-on-write on B), plus whole-cluster discards, with an
# fsync after each batch.  After every completed fsync it appends "batch N
# done" to a log in $WORK (hostfs: survives the kill), after every completed
# RWF_DSYNC write "dsync N K".  The workload never ends by itself: the power
# cut (SIGKILL of every UML host process) always ends the round.
#
# After the cut, on the host:
#   - qemu-img check: 0 corruptions (leaks are allowed and reported);
#   - qemu-img convert -O raw, then per 512-byte sector: everything written
#     up to the last sync point in the log reads back exactly; sectors that
#     the ops after it touched hold their content before those ops or any
#     value one of them wrote; every other sector is unchanged;
#   - on B, the snapshot still reads as it was made.
# The verified contents are the baseline of the image's next round.
# At the end: one clean activation that reads the whole device through the
# target and compares it with qemu-img's view, removal, then `qemu-img check
# -r leaks`, and `qemu-img check` must be clean.
#
# Part 2 (see below) covers what a SIGKILL cannot: a disk with a volatile
# cache that loses any subset of the writes since the last flush.  The
# target runs on dm-log-writes, and the host checks crash states rebuilt
# from the log.  With POWERCUT_DEDUP=1 the target writes its dedup table
# back every 50 ms, and every crash state's table is checked with
# `qcow2dedup check` before anything repairs it: no slot may name contents
# its cluster does not hold, or a free cluster.
#
# POWERCUT_ROUNDS (20), POWERCUT_LOG_BATCHES_C (80) and _D (30) size the run.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
export QCHECK=$REPO/tools/testing/qcheck

SEED=${POWERCUT_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
ROUNDS=${POWERCUT_ROUNDS:-20}
log "seed $SEED (POWERCUT_SEED=$SEED $0 repeats this run), $ROUNDS rounds"
cd "$WORK"
# POWERCUT_DEDUP=1 (44-dedup-powercut): most writes repeat a few contents,
# so the target shares clusters and moves COPIED both ways at every cut.
# qemu-img check may then report COPIED flags in the documented window (see
# the admin guide: a flag mismatch, never a second writer); they must be the
# only errors, `qemu-img check -r all` repairs them, and the data checks are
# unchanged.  POWERCUT_PART2=0 skips part 2.
DEDUP=${POWERCUT_DEDUP:-0}
# Without POWERCUT_DEDUP, image B (part 1) and both images of part 2 are
# served with nodedup: their writes of whole new clusters go out as runs of
# host clusters, each run one bio (stats alloc_runs), staged when written;
# image A keeps the default table line (dedup, sha256).
nodedup=
[ "$DEDUP" = 1 ] || nodedup=" 1 nodedup"
[ "$DEDUP" = 1 ] && touch dedup.flag

VSIZE=$((128 << 20))
SECTORS=$((VSIZE / 512))

cat >pc.py <<'PY'
"""Plan, run (inside UML) and verify the power-cut workload."""
import json, mmap, os, random, re, shutil, struct, subprocess, sys, tempfile, time

SECTOR = 512

DEDUP = os.path.exists("dedup.flag")

def data(seed, rnd, b, k, off, length):
    """The bytes op k of batch b writes: a readable tag in every sector;
    with dedup.flag, most often one of four contents per length instead."""
    r = random.Random("%s/%d/%d/%d" % (seed, rnd, b, k))
    if DEDUP and r.random() < 0.7:
        return random.Random("pool/%d/%d" % (length, r.randrange(4))).randbytes(length)
    out = bytearray(r.randbytes(length))
    for s in range(0, length, SECTOR):
        tag = b"[seed %s round %d batch %d op %d sector %d]" % (
            str(seed).encode(), rnd, b, k, (off + s) // SECTOR)
        out[s:s + len(tag)] = tag
    return bytes(out)

def plan(args):
    seed, rnd, cs, vsize, hotfile, out = args
    rnd, cs, vsize = int(rnd), int(cs), int(vsize)
    r = random.Random("%s/plan/%d" % (seed, rnd))
    hot = json.load(open(hotfile)) if os.path.exists(hotfile) else []
    fresh = []
    batches = []
    for b in range(2500):
        ops = []
        for k in range(r.randint(1, 10)):
            x = r.random()
            if x < 0.07:
                # Discard of whole clusters (partial ones are no-ops).
                n = r.choice([1, 1, 2, 4]) * max(cs, 65536)
                pool = fresh + hot
                base = r.choice(pool) if pool and r.random() < 0.8 else r.randrange(vsize)
                off = min(base - base % cs, vsize - n)
                ops.append(["d", off, n, 0])
                continue
            length = r.choice([512, 1536, 4096, 4096, 8192, 12288, 16384, 65536, 131072, cs])
            length = min(length, 131072)
            align = 4096 if length % 4096 == 0 and r.random() < 0.7 else SECTOR
            if length == cs and r.random() < 0.8:
                align = cs
            y = r.random()
            if y < 0.3 and fresh:
                base = r.choice(fresh) + r.randrange(-cs, cs)      # this round
            elif y < 0.6 and hot:
                base = r.choice(hot) + r.randrange(-cs, cs)        # earlier rounds
            else:
                base = r.randrange(vsize)                          # anywhere
            base = max(0, min(base, vsize - length))
            off = base - base % align
            dsync = 1 if r.random() < 0.08 else 0
            ops.append(["w", off, length, dsync])
            fresh.append(off)
        batches.append(ops)
    hot = (hot + fresh[:400])[-3000:]
    json.dump(hot, open(hotfile, "w"))
    json.dump({"seed": seed, "round": rnd, "batches": batches}, open(out, "w"))

def run(args):
    """run PLAN DEV LOG STARTED [MAXB MARKDEV]: without MAXB, write until the
    power cut; with it, stop after MAXB batches, and after each fsync put a
    mark "bN" into the dm-log-writes device MARKDEV."""
    planfile, dev, logfile, started = args[:4]
    maxb = int(args[4]) if len(args) > 4 else 0
    markdev = args[5] if len(args) > 5 else None
    p = json.load(open(planfile))
    seed, rnd = p["seed"], p["round"]
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    logfd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    def note(s):
        os.write(logfd, (s + "\n").encode())
    open(started, "w").close()
    note("start")
    try:
        for b, ops in enumerate(p["batches"], 1):
            for k, (kind, off, length, dsync) in enumerate(ops):
                if kind == "d":
                    import fcntl
                    fcntl.ioctl(fd, 0x1277, struct.pack("QQ", off, length))  # BLKDISCARD
                    continue
                buf[0:length] = data(seed, rnd, b, k, off, length)
                mv = memoryview(buf)[0:length]
                if dsync:
                    n = os.pwritev(fd, [mv], off, os.RWF_DSYNC)
                else:
                    n = os.pwrite(fd, mv, off)
                mv.release()
                if n != length:
                    raise OSError("short write %d of %d at %d" % (n, length, off))
                if dsync:
                    note("dsync %d %d" % (b, k))
            os.fsync(fd)
            note("batch %d done" % b)
            if markdev:
                subprocess.run(["dmsetup", "message", markdev, "0", "mark", "b%d" % b],
                               check=True)
            if b == maxb:
                return
    except OSError as e:
        note("error %s" % e)
        print("workload: %s" % e, file=sys.stderr)
        sys.exit(1)
    note("plan done")
    while True:          # wait for the power cut
        time.sleep(60)

def desc(x):
    """What a sector holds, for messages: the tag of the write that made it."""
    x = bytes(x)
    if not any(x):
        return "zeros"
    if x.startswith(b"[seed"):
        return x[:x.index(b"]") + 1].decode()
    return "other data (%s...)" % x[:16].hex()

def verify(args):
    planfile, logfile, basefile, actualfile = args[:4]
    quiet = len(args) > 4
    p = json.load(open(planfile))
    seed, rnd = p["seed"], p["round"]
    lines = open(logfile).read().split("\n") if os.path.exists(logfile) else []
    # Last sync point: (batch, ops of it that are durable).
    sync_b, sync_k = 0, 0
    for ln in lines:
        w = ln.split()
        if len(w) == 3 and w[0] == "batch" and w[2] == "done":
            sync_b, sync_k = int(w[1]), 0
        elif len(w) == 3 and w[0] == "dsync":
            sync_b, sync_k = int(w[1]) - 1, int(w[2]) + 1
        elif w and w[0] == "error":
            print("workload error: %s" % ln)
            return 1
    base = open(basefile, "rb").read()
    act = open(actualfile, "rb").read()
    exp = bytearray(base)
    batches = p["batches"]

    def content(b, k, op):
        kind, off, length, _ = op
        return bytes(length) if kind == "d" else data(seed, rnd, b, k, off, length)

    # Durable: every batch before sync_b, and the first sync_k ops of batch sync_b + 1.
    durable = [(b, k) for b in range(1, sync_b + 1) for k in range(len(batches[b - 1]))]
    if sync_b < len(batches):
        durable += [(sync_b + 1, k) for k in range(sync_k)]
    for b, k in durable:
        op = batches[b - 1][k]
        exp[op[1]:op[1] + op[2]] = content(b, k, op)
    # Uncertain: the ops after the sync point up to the end of the next batch.
    cands = {}
    uncertain = []
    if sync_b < len(batches):
        uncertain = [(sync_b + 1, k) for k in range(sync_k, len(batches[sync_b]))]
    for b, k in uncertain:
        op = batches[b - 1][k]
        c = content(b, k, op)
        for s in range(0, op[2], SECTOR):
            sec = (op[1] + s) // SECTOR
            cands.setdefault(sec, [bytes(exp[sec * SECTOR:(sec + 1) * SECTOR])]).append(c[s:s + SECTOR])
    bad = 0
    new = old = 0
    step = 1 << 16
    for chunk in range(0, len(exp), step):
        if act[chunk:chunk + step] != exp[chunk:chunk + step]:
            for off in range(chunk, chunk + step, SECTOR):
                a = act[off:off + SECTOR]
                e = exp[off:off + SECTOR]
                sec = off // SECTOR
                if a == e:
                    continue
                if sec in cands and a in cands[sec]:
                    continue
                bad += 1
                if bad <= 10:
                    why = "uncertain" if sec in cands else "durable or untouched"
                    print("MISMATCH sector %d (byte %d, %s): found %s, expected %s%s" % (
                        sec, off, why, desc(a), desc(e),
                        "" if sec not in cands else " or " + " or ".join(desc(c) for c in cands[sec][1:])))
    for sec, c in cands.items():
        a = act[sec * SECTOR:(sec + 1) * SECTOR]
        if a == c[0] and a not in c[1:]:
            old += 1
        elif a != c[0]:
            new += 1
    if quiet and not bad:
        return 0
    print("verify: synced to batch %d op %d of %d batches; %d ops durable, %d uncertain "
          "(%d sectors new, %d old); %d bad sectors" % (
              sync_b, sync_k, len(batches), len(durable), len(uncertain), new, old, bad))
    return 1 if bad else 0

def qcheck(image):
    """qemu-img check: (corruptions + check errors, leaks, its error lines)."""
    p = subprocess.run(["qemu-img", "check", "--output=json", image],
                       capture_output=True, text=True)
    try:
        j = json.loads(p.stdout)
    except ValueError:
        return 1, 0, p.stdout + p.stderr
    errs = [l for l in p.stderr.split("\n") if l.startswith("ERROR") or "orrupt" in l]
    bad = j.get("corruptions", 0) + j.get("check-errors", 0)
    if DEDUP:
        # Only the COPIED mismatches the admin guide allows after a crash.
        # (Imported here: pc.py also runs inside UML, without E2E_DIR.)
        sys.path.insert(0, os.environ["E2E_DIR"])
        import copied_window
        allowed, _ = copied_window.classify(p.stderr, copied_window.cluster_bits(image))
        bad -= allowed
    return bad, j.get("leaks", 0), "\n".join(errs)

def tablecheck(image):
    """qcow2dedup check (the dedup table, DEDUP only): None if every slot of
    a table that is not stale names its cluster's contents and an allocated
    cluster, else what is wrong."""
    p = subprocess.run([os.environ["QCOW2DEDUP_TOOL"], "check", "--json", image],
                       capture_output=True, text=True)
    try:
        t = json.loads(p.stdout)
    except ValueError:
        return "qcow2dedup check: no report: " + p.stderr.strip()
    if t["state"] == "invalid":
        return "qcow2dedup check: table invalid: %s" % t.get("reason")
    if t["state"] != "stale" and (t["wrong_entries"] or t["unallocated_entries"]):
        return "qcow2dedup check: %s table, %d wrong slots, %d naming free clusters" % (
            t["state"], t["wrong_entries"], t["unallocated_entries"])
    if t["state"] != "stale" and t["entries"]:
        TABLE_SEEN[0] += 1
    return None

TABLE_SEEN = [0]	# crash states whose table had slots that were checked

def replay(args):
    """replay LOGDEV IMAGE PLAN BASE.raw SEED: crash states from a dm-log-writes
    log.  IMAGE is the image as it was when logging started (it is modified).
    Between two flushes a disk may keep any subset of the writes that
    completed, FUA writes excepted; for every flush interval the writes
    before a random point, and random subsets of them, are checked with
    qemu-img check, some of them also for the data of the batches whose
    fsync (mark) precedes the interval's end.

    dm-log-writes logs a FUA write when it completes but other writes only
    at the next flush, so a write that reached the disk before a FUA write
    to the same sectors can follow it in the log.  A disk never lets such a
    write override the FUA write's data (and no flush-less write follows a
    FUA write to the same sectors here: O_DSYNC flushes after it), so the
    sectors of a write that a FUA write earlier in the same flush interval
    covered are not replayed."""
    logdev, image, planfile, basefile, seed = args
    r = random.Random("%s/replay" % seed)
    f = open(logdev, "rb")
    magic, version, nr, ss = struct.unpack("<QQQI", f.read(28))
    if magic != 0x6a736677736872:
        print("replay: no dm-log-writes super block")
        return 1
    entries, pos = [], ss
    for i in range(nr):
        f.seek(pos)
        sector, nsec, flags, dlen = struct.unpack("<QQQQ", f.read(32))
        mark = f.read(ss - 32)[:dlen].decode() if flags & 8 else None
        entries.append((sector, nsec, flags, pos + ss, mark, ()))
        pos += ss + (0 if flags & 8 else nsec * ss)
    fua, masked = set(), 0
    for i, e in enumerate(entries):
        if e[2] & 1:
            fua = set()
        elif e[2] & 2:
            fua.update(range(e[0], e[0] + e[1]))
        elif e[1] and not e[2] & 8 and fua.intersection(range(e[0], e[0] + e[1])):
            entries[i] = e[:5] + (fua.intersection(range(e[0], e[0] + e[1])),)
            masked += 1
    img = os.open(image, os.O_RDWR)

    def data_of(e):
        f.seek(e[3])
        return bytes(e[1] * ss) if e[2] & 4 else f.read(e[1] * ss)

    def apply(es):
        saved = []
        for e in es:
            if e[1] and not e[2] & 8:
                saved.append((e[0], os.pread(img, e[1] * ss, e[0] * ss)))
                d = data_of(e)
                if not e[5]:
                    os.pwrite(img, d, e[0] * ss)
                    continue
                for k in range(e[1]):
                    if e[0] + k not in e[5]:
                        os.pwrite(img, d[k * ss:(k + 1) * ss], (e[0] + k) * ss)
        return saved

    def short(es):
        return " ".join("%d+%d" % e[:2] for e in es[:40]) + (" ..." if len(es) > 40 else "")

    def undo(saved):
        for sector, old in reversed(saved):
            os.pwrite(img, old, sector * ss)

    flush_at = [i for i, e in enumerate(entries) if e[2] & 1] + [len(entries)]
    nflush = sum(1 for e in entries if e[2] & 1)
    nfua = sum(1 for e in entries if e[2] & 2)
    checks = bad = datachecks = tablechecks = 0
    kinds = {}
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(image)))
    start, marks = 0, 0
    busy = sum(1 for a, b in zip([-1] + flush_at, flush_at)
               if any(e[1] and not e[2] & 8 for e in entries[a + 1:b]))
    # About 1200 crash states per log (qemu-img check takes some 20 ms), 600
    # with DEDUP (qcow2dedup check of each takes some 100 ms more).
    states = max(2, min(8, (600 if DEDUP else 1200) // max(busy, 1)))
    data_every = max(1, len(flush_at) // 12)
    for n, end in enumerate(flush_at):
        interval = [e for e in entries[start:end] if e[1] and not e[2] & 8]
        for e in entries[start:end]:
            if e[2] & 8 and e[4].startswith("b"):
                marks = max(marks, int(e[4][1:]))
        if not interval:
            start = end + 1
            apply(entries[end:end + 1])
            continue
        for t in range(states):
            # A prefix, then subsets before a random point, then subsets of all.
            cut = r.randrange(len(interval) + 1) if t < 2 else len(interval)
            sub = [e for e in interval[:cut] if t == 0 or e[2] & 2 or r.random() < 0.5]
            saved = apply(sub)
            checks += 1
            corrupt, leaks, errs = qcheck(image)
            if DEDUP and not corrupt:
                # The dedup table of the crash state, before any repair.
                tablechecks += 1
                errs = tablecheck(image)
                corrupt = 1 if errs else 0
            what = "%s of the %d writes after flush %d of %d (log entries %d-%d)" % (
                "prefix of %d" % cut if t == 0 else "subset of %d" % len(sub),
                len(interval), n, nflush, start, end - 1)
            if corrupt:
                bad += 1
                for l in errs.split("\n"):
                    k = re.sub(r"cluster \d+", "cluster N", l)
                    kinds[k] = kinds.get(k, 0) + 1
                if bad <= 3:
                    print("CORRUPTION in the crash state with the %s:\n  %s\n  writes kept "
                          "(sector+count, in log order): %s\n  writes lost: %s" % (
                              what, errs.replace("\n", "\n  "),
                              short(sub), short([e for e in interval[:cut] if e not in sub])))
            elif t == 1 and n % data_every == 0:
                datachecks += 1
                raw, lg = os.path.join(tmp, "state.raw"), os.path.join(tmp, "log")
                subprocess.run(["qemu-img", "convert", "-O", "raw", image, raw], check=True)
                with open(lg, "w") as l:
                    l.write("".join("batch %d done\n" % b for b in range(1, marks + 1)))
                if verify([planfile, lg, basefile, raw, "quiet"]):
                    bad += 1
                    print("DATA LOST in the crash state with the %s" % what)
            undo(saved)
        apply(entries[start:end + 1])
        start = end + 1
    shutil.rmtree(tmp)
    # Clean: no corruption, and no leak but the dedup table's clusters.
    p = subprocess.run([os.environ["QCHECK"], image], capture_output=True, text=True)
    if p.returncode:
        bad += 1
        print("the final state is not clean:\n%s%s" % (p.stdout, p.stderr))
    for k, v in sorted(kinds.items()):
        print("%5d crash states with: %s" % (v, k))
    print("replay: %d log entries, %d flushes, %d FUA writes (%d earlier writes behind them), "
          "%d batch marks; %d crash states checked, %d of them for data, %d for the dedup "
          "table (%d with slots); %d bad" % (len(entries), nflush, nfua, masked, marks, checks,
                                             datachecks, tablechecks, TABLE_SEEN[0], bad))
    if DEDUP and not TABLE_SEEN[0]:
        print("replay: no crash state had a dedup table with slots (test bug)")
        return 1
    return 1 if bad else 0

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "plan":
        plan(args)
    elif cmd == "run":
        run(args)
    elif cmd == "verify":
        sys.exit(verify(args))
    elif cmd == "replay":
        sys.exit(replay(args))
PY

# check_image IMAGE: qemu-img check must find no corruption; print the leaks.
# With DEDUP=1, COPIED mismatches of data clusters are the documented crash
# window: counted apart (logged), then repaired with qemu-img check -r all.
check_image() {
	local out
	# Leaked clusters and errors are listed on stderr, the JSON report on stdout.
	out=$(qemu-img check --output=json "$1" 2>check.err) || true
	python3 -c '
import json, sys
try:
    j = json.loads(sys.argv[1])
except ValueError:
    print("qemu-img check output is not JSON: " + sys.argv[1]); sys.exit(2)
bad = j.get("corruptions", 0) + j.get("check-errors", 0)
if sys.argv[2] == "1":
    sys.path.insert(0, sys.argv[4])
    import copied_window
    copied, wrong = copied_window.classify(open("check.err").read(),
                                           copied_window.cluster_bits(sys.argv[3]))
    bad -= copied
    if copied:
        print("# %d COPIED flags in the window" % copied, file=sys.stderr)
print(j.get("leaks", 0))
sys.exit(1 if bad else 0)' "$out" "$DEDUP" "$1" "$E2E_DIR" || { echo "$out" >&2; cat check.err >&2; return 1; }
	if [ "$DEDUP" = 1 ] && grep -q '^ERROR OFLAG_COPIED' check.err; then
		qemu-img check -q -r all "$1" >/dev/null 2>&1 || true
		qemu-img check -q "$1" >/dev/null 2>&1 || { echo "qemu-img check -r all did not repair $1" >&2; return 1; }
	fi
}

# Image A: empty, 64 KiB clusters.
qemu-img create -q -f qcow2 A.qcow2 $VSIZE
truncate -s 256M A.qcow2
truncate -s $VSIZE A.base.raw
# Image B: 4 KiB clusters, compressed and plain data, a snapshot.
python3 -c '
import random, sys
r = random.Random(int(sys.argv[1]))
with open("B.src.raw", "wb") as f:
    for i in range(16 * 16):
        k = r.randrange(3)
        if k == 0:
            f.write(r.randbytes(65536))
        elif k == 1:
            f.write((b"compressible line %d\n" % i) * (65536 // 24) + bytes(65536 % 24))
        else:
            f.write(bytes(65536))
    f.truncate(int(sys.argv[2]))' "$SEED" $VSIZE
qemu-img convert -q -c -O qcow2 -o cluster_size=4k,compression_type=zstd B.src.raw B.qcow2
qemu-io -c "write -P 0x5c 8M 2M" -c "write -P 0x6d 20M 1M" B.qcow2 >/dev/null
qemu-img snapshot -c base B.qcow2
qemu-img convert -O raw B.qcow2 B.snap.raw
cp B.snap.raw B.base.raw
truncate -s 256M B.qcow2
qemu-img check -q A.qcow2
qemu-img check -q B.qcow2

declare -A leaks_of=([A]=0 [B]=0)
total_batches=0
start_delay=2.5		# seconds from uml-run to the workload's start; measured below
for round in $(seq 1 "$ROUNDS"); do
	round_start=$SECONDS
	if [ $((round % 2)) -eq 1 ]; then img=A cs=65536; else img=B cs=4096; fi
	python3 pc.py plan "$SEED" "$round" $cs $VSIZE "$img.hot.json" "plan.$round.json"
	cut=$(python3 -c '
import random, sys
r = random.Random("%s/cut/%s" % (sys.argv[1], sys.argv[2]))
x = r.random()
after = r.uniform(0.05, 1.0) if x < 0.15 else r.uniform(1.0, 4.0)
print("%.2f %.2f" % (float(sys.argv[3]) + after, after))' "$SEED" "$round" "$start_delay")
	cut_at=${cut% *}
	cat >"inner.$round.sh" <<EOF
set -e
dmsetup create pc --table "0 $SECTORS qcow2dedup /dev/ubda$([ $img = B ] && echo "$nodedup")"
dmsetup status pc >status.$round
exec python3 pc.py run plan.$round.json /dev/mapper/pc log.$round started.$round
EOF
	t0=$(date +%s.%N)
	rc=0
	"$UML_RUN" --cut-after "$cut_at" -d "$img.qcow2" -- bash "inner.$round.sh" >"out.$round" 2>&1 || rc=$?
	if [ -f "started.$round" ]; then
		delay=$(python3 -c 'import os, sys; print("%.2f" % (os.stat(sys.argv[1]).st_mtime - float(sys.argv[2])))' "started.$round" "$t0")
		start_delay=$(python3 -c 'import sys; print("%.2f" % (0.5 * float(sys.argv[1]) + 0.5 * float(sys.argv[2])))' "$start_delay" "$delay")
		after=$(python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) - float(sys.argv[2])))' "$cut_at" "$delay")
		when="${after}s after the workload start at ${delay}s"
	else
		after=-1
		when="before the workload started"
		start_delay=$(later_start "$start_delay" "$cut_at")
	fi
	if [ "$rc" -ne 137 ]; then
		cat "out.$round"
		[ -f "log.$round" ] && tail -n 3 "log.$round"
		fail "round $round ($img): uml-run exited $rc, not 137 (cut at ${cut_at}s)"
	fi
	batches=0
	[ -f "log.$round" ] && batches=$(grep -c '^batch .* done$' "log.$round" || true)
	total_batches=$((total_batches + batches))
	# Progress: a cut well after the start must find completed batches (a
	# deadlock on the first write after recovery completes none).
	if python3 -c 'import sys; sys.exit(float(sys.argv[1]) < 1.5)' "$after" && [ "$batches" -eq 0 ]; then
		cp "$img.qcow2" "$CACHE/e2e/powercut-failed-$SEED-$round.qcow2" 2>/dev/null || true
		fail "round $round ($img): no batch completed in the ${after}s before the cut (a hang?)"
	fi
	leaks=$(check_image "$img.qcow2") || {
		cp "$img.qcow2" "$CACHE/e2e/powercut-failed-$SEED-$round.qcow2" 2>/dev/null || true
		fail "round $round ($img): qemu-img check finds corruption (seed $SEED; image kept as $CACHE/e2e/powercut-failed-$SEED-$round.qcow2)"
	}
	new_leaks=$((leaks - leaks_of[$img]))
	leaks_of[$img]=$leaks
	qemu-img convert -O raw "$img.qcow2" "$img.actual.raw"
	if ! v=$(python3 pc.py verify "plan.$round.json" "log.$round" "$img.base.raw" "$img.actual.raw"); then
		echo "$v"
		cp "$img.qcow2" "$CACHE/e2e/powercut-failed-$SEED-$round.qcow2" 2>/dev/null || true
		fail "round $round ($img): data check failed (seed $SEED; image kept as $CACHE/e2e/powercut-failed-$SEED-$round.qcow2)"
	fi
	mv "$img.actual.raw" "$img.base.raw"
	if [ "$img" = B ]; then
		qemu-img convert -O raw -l snapshot.name=base B.qcow2 B.snap.now.raw
		cmp -s B.snap.raw B.snap.now.raw || fail "round $round (B): the snapshot changed"
		rm -f B.snap.now.raw
	fi
	status="not activated"
	[ -s "status.$round" ] && status="status at activation: $(cut -d' ' -f4- "status.$round")"
	log "round $round $img ($((SECONDS - round_start))s): cut ${cut_at}s after launch, $when; $batches batches synced;" \
	    "$status; leaks $leaks ($new_leaks new); ${v#verify: }"
done

# One clean activation per image: read everything through the target, remove.
head -c 1048576 /dev/urandom >pattern.bin
for img in A B; do
	qemu-img convert -O raw "$img.qcow2" "$img.final.raw"
	sha256sum <"$img.final.raw" | cut -d' ' -f1 >"$img.final.sum"
done
cat >inner.final.sh <<EOF
set -e
rc=0
for d in A:/dev/ubda B:/dev/ubdb; do
	n=\${d%%:*} dev=\${d#*:}
	dmsetup create final\$n --table "0 $SECTORS qcow2dedup \$dev"
	dmsetup status final\$n
	sum=\$(dd if=/dev/mapper/final\$n bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
	[ "\$sum" = "\$(cat \$n.final.sum)" ] || { echo "FAIL \$n: the target reads other data than qemu-img"; rc=1; }
	# Writes after the recovery: the first 2 MiB again at the end (shared
	# with the first copy: COPIED cleared), then other bytes over the first
	# MiB (unshared: COPIED set again on the end's copy).  The removal must
	# leave every COPIED flag exact: checked with no allowance below.
	dd if=/dev/mapper/final\$n of=head.\$n.bin bs=1M count=2 iflag=direct status=none
	dd if=head.\$n.bin of=/dev/mapper/final\$n bs=1M seek=$((VSIZE / 1048576 - 2)) oflag=direct status=none || { echo "FAIL \$n: write"; rc=1; }
	dd if=pattern.bin of=/dev/mapper/final\$n bs=1M oflag=direct status=none || { echo "FAIL \$n: write"; rc=1; }
	dmsetup message final\$n 0 stats | grep -E '^(dedup_hits|mode) '
	dmsetup remove final\$n
done
exit \$rc
EOF
t=$SECONDS
uml -d A.qcow2 -d B.qcow2 -- bash inner.final.sh || fail "final clean activation"
log "clean activation, full read and removal: $((SECONDS - t))s"
for img in A B; do
	# After the writes and a clean deactivation every COPIED flag must be
	# exact: no allowance.
	leaks=$(DEDUP=0 check_image "$img.qcow2") || fail "$img: corruption after the clean activation"
	qemu-img check -q -r leaks "$img.qcow2" >/dev/null 2>&1 || true
	qemu-img check -q "$img.qcow2" || fail "$img: qemu-img check not clean after -r leaks"
	# The expected disk: the first 2 MiB copied to the end, then the pattern.
	python3 - "$img.final.raw" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    head = f.read(2 << 20)
    f.seek(0, 2); end = f.tell()
    f.seek(end - (2 << 20)); f.write(head)
    f.seek(0); f.write(open("pattern.bin", "rb").read())
PY
	qemu-img convert -O raw "$img.qcow2" "$img.repaired.raw"
	cmp -s "$img.final.raw" "$img.repaired.raw" || fail "$img: data after the final writes and the leak repair"
	log "$img: $leaks leaked clusters after the last round and the clean activation, repaired; check clean"
done
qemu-img convert -O raw -l snapshot.name=base B.qcow2 B.snap.now.raw
cmp -s B.snap.raw B.snap.now.raw || fail "B: the snapshot changed"
[ "$total_batches" -gt 0 ] || fail "no batch completed in any round"
log "all $ROUNDS power cuts survived, $total_batches batches completed (${SECONDS}s)"

if [ "${POWERCUT_PART2:-1}" = 0 ]; then
	log "part 2 skipped (POWERCUT_PART2=0); total ${SECONDS}s"
	exit 0
fi

# Part 2: the UML power cut keeps every write that completed, as a disk
# without a volatile cache would.  A disk with one may keep any subset of
# the writes that completed since the last flush (FUA writes excepted).  So
# the target writes through dm-log-writes, with a mark after each fsync, onto
# two fresh images with 64-bit refcounts, so that refcount blocks are created
# often: C with 4 KiB clusters (a refcount block per 2 MiB), D with 512-byte
# clusters (a refcount block per 32 KiB, and the refcount table must grow).
# The host rebuilds crash states from each log: after every flush, the
# writes before a random point that follow it, and a random subset of them;
# qemu-img check must find no corruption in any, and in a sample the data
# of every batch marked before the next flush must be there (the others old
# or new).  The final state must be clean and equal to the image.
t=$SECONDS
log "part 2: crash states with reordered writes, from dm-log-writes logs"
qemu-img create -q -f qcow2 -o cluster_size=4k,refcount_bits=64 C.qcow2 64M
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 D.qcow2 16M
declare -A lw_batches
lw_batches=([C]=${POWERCUT_LOG_BATCHES_C:-80} [D]=${POWERCUT_LOG_BATCHES_D:-30})
opts=$nodedup
if [ "$DEDUP" = 1 ]; then
	opts=" 2 flush_interval 50"
	need_tool
	export QCOW2DEDUP_TOOL=$TOOL
fi
{
	echo 'set -e'
	for img in C D; do
		[ $img = C ] && disks="/dev/ubda /dev/ubdb" || disks="/dev/ubdc /dev/ubdd"
		# D's device stays small: for 512-byte clusters with 64-bit refcounts
		# the target cannot grow the refcount table beyond one refcount
		# block's range (64 clusters), which covers a device of 32 MiB.
		truncate -s "$([ $img = C ] && echo 256M || echo 32M)" $img.qcow2
		cp --sparse=always $img.qcow2 $img.replay.qcow2
		truncate -s "$(qemu-img info --output=json $img.qcow2 | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" $img.base.raw
		truncate -s 1G $img.log
		cs=$([ $img = C ] && echo 4096 || echo 512)
		python3 pc.py plan "$SEED" 1000 "$cs" "$(stat -c %s $img.base.raw)" $img.hot.json plan.$img.json
		echo "dmsetup create lw$img --table \"0 \$(blockdev --getsz ${disks% *}) log-writes $disks\""
		# With DEDUP, the table is written back every 50 ms as well as after
		# each fsync: slot write-backs and clears between the flushes.
		echo "dmsetup create pc$img --table \"0 $(($(stat -c %s $img.base.raw) / 512)) qcow2dedup /dev/mapper/lw$img$opts\""
		echo "python3 pc.py run plan.$img.json /dev/mapper/pc$img log.$img started.$img ${lw_batches[$img]} lw$img"
		echo "dmsetup status pc$img"
		echo "dmsetup message pc$img 0 stats >stats.lw.$img"
		echo "dmsetup remove pc$img"
		echo "dmsetup remove lw$img"
	done
} >inner.lw.sh
uml -d C.qcow2 -d C.log -d D.qcow2 -d D.log -- bash inner.lw.sh || fail "part 2: the logged runs inside UML"
log "part 2: logged runs done ($((SECONDS - t))s)"
if [ -n "$nodedup" ]; then
	# The runs this part is for were made (nodedup: nothing else makes them).
	want_stat stats.lw.C alloc_runs -ge 1
	want_stat stats.lw.D alloc_runs -ge 1
	log "part 2: alloc_runs C $(awk '$1 == "alloc_runs" { print $2 }' stats.lw.C), D $(awk '$1 == "alloc_runs" { print $2 }' stats.lw.D)"
fi
rc=0
for img in C D; do
	python3 pc.py replay $img.log $img.replay.qcow2 plan.$img.json $img.base.raw "$SEED" || rc=1
	cmp -s $img.replay.qcow2 $img.qcow2 || fail "part 2: the replayed log does not rebuild $img (test bug)"
done
[ "$rc" -eq 0 ] || fail "part 2: crash states with reordered writes are corrupt or lost data (seed $SEED)"
log "part 2 passed ($((SECONDS - t))s); total ${SECONDS}s"
