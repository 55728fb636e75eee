#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 47-dedup-table-powercut: power cuts while the dedup table is written back
# all the time (flush_interval 100 ms).  The table's rule (dedup-table.c):
# a slot on disk names digest D for host cluster H only while H durably
# holds contents of digest D, at every crash point.  A slot that survives an
# in-place overwrite, or the freeing and reuse of its cluster, would make a
# later activation share the wrong data; this scenario looks for one after
# every cut, on the image as the cut left it, before any repair.
#
# Two images side by side in one UML instance, each carrying its state
# from round to round: A (64 MiB, 64 KiB clusters) and B (64 MiB, 4 KiB
# clusters: 128 slots a leaf, so new leaves and directories are linked all
# the time).  Each round activates both with the line that `qcow2dedup table
# DEV --flush-interval 100` prints inside UML (the table left by the cut is
# loaded, or the index is rebuilt), then runs a workload planned on the
# host from a seed (printed; POWERCUT_SEED=N repeats a run) until a power
# cut at a random moment (uml-run --cut-after: SIGKILL of the instance;
# every completed write is in the file, nothing else):
#   batches of 1-8 O_DIRECT ops, mostly in a small hot region so that they
#   land on clusters written (and indexed, and their slots persisted) by
#   earlier batches and rounds: whole-cluster writes of one of five
#   contents per image (dedup hits; the same five in every round, so the
#   loaded table is used), unique whole clusters (indexed, refcount 1),
#   partial writes (in-place overwrites of indexed clusters, copy-on-write
#   of shared ones), whole-cluster zero writes and discards (which free
#   clusters that may be reused next), some with RWF_DSYNC; an fsync after
#   each batch.  After each completed fsync the workload appends "batch N
#   done" to a log in $WORK, after each completed RWF_DSYNC write "dsync N
#   K" (hostfs writes go through to the host file at once: write_end calls
#   the host's write(), so the log survives the SIGKILL; no fsync needed).
#   A monitor saves the target's stats every 0.2 s.  Every 0.4 s, A is
#   suspended and resumed, or reloaded with the same line: the table is
#   closed (written, OPEN cleared) and reopened by the next write, or
#   loaded by a new instance, while the workload waits on the suspension.
# After the cut, on the host, for each image:
#   1. qcow2dedup check --json, before anything else: wrong_entries 0 and
#      unallocated_entries 0, state open or consistent (stale only when a
#      repair made it so and the next activation had not written yet;
#      never invalid);
#   2. qemu-img check: 0 corruptions other than "OFLAG_COPIED data
#      cluster" errors (the window documented in the admin guide, as in
#      44-dedup-powercut); if there are any, qemu-img check -r all repairs
#      them, which makes the table stale (QEMU clears bit 60): counted;
#   3. every write completed before the last completed fsync (or dsync)
#      reads back as written; sectors the later ops touched hold their old
#      contents or one of the values written; all others are unchanged;
#   4. the last stats snapshot shows verify_mismatches 0 (a table entry
#      loaded after a crash is compared before its first share: with a
#      correct table this never differs).
# At the next activation: a table left open or consistent must be loaded
# (rebuild_runs 0, table_loaded + table_dropped = the entries check found),
# a stale or absent one rebuilt (rebuild_runs 1, table_loaded 0).
# At the end: a clean activation of each image that reads the whole device
# through the target and compares it with qemu-img's view, then removal;
# check: consistent table, no wrong entry, no corruption at all (no COPIED
# allowance); then qemu-img check -r leaks (crash leaks, and the table),
# one more activation (rebuild), a "flush" message (an activation that does
# not write opens no table) and removal, and qcheck must pass.
#
# Every fifth round, after the checks, `qemu-img check -r leaks` frees the
# crash leaks and the table's clusters and leaves the table stale, so the
# next round rebuilds the index while its workload writes, and is cut
# during or after that rebuild.
#
# The cut time adapts to the measured boot time; at least half the cuts
# must come while the workloads run, or the scenario fails (a host too
# loaded to test anything).  POWERCUT_ROUNDS (default 24) sets the number
# of rounds, about 8 s each (3.5 min in all on a 2-CPU machine).
#
# shellcheck disable=SC2086 # $img is A or B, $round a number: no splitting
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

SEED=${POWERCUT_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
ROUNDS=${POWERCUT_ROUNDS:-24}
REPAIR_EVERY=5
log "seed $SEED (POWERCUT_SEED=$SEED $0 repeats this run), $ROUNDS rounds"
cd "$WORK"
need_tool

VSIZE=$((64 << 20))
declare -A CS=([A]=65536 [B]=4096)

cat >pc.py <<'PY'
"""Plan, run (inside UML) and verify the dedup-table power-cut workload."""
import fcntl, json, mmap, os, random, struct, subprocess, sys, time

SECTOR = 512
POOL = 5


def pool(img, cs, i):
    return random.Random("pool/%s/%d/%d" % (img, cs, i)).randbytes(cs)


def tagged(p, b, k, off, length):
    r = random.Random("%s/%s/%d/%d/%d/%d" % (p["seed"], p["img"], p["round"], b, k, off))
    out = bytearray(r.randbytes(length))
    for s in range(0, length, SECTOR):
        tag = b"[seed %s %s round %d batch %d op %d sector %d]" % (
            str(p["seed"]).encode(), p["img"].encode(), p["round"], b, k, (off + s) // SECTOR)
        out[s:s + len(tag)] = tag
    return out


def content(p, b, k, op):
    """The bytes op k of batch b leaves: zeros for a discard."""
    kind, off, length = op[0], op[1], op[2]
    cs = p["cs"]
    if kind in ("d", "z"):
        return bytes(length)
    if kind == "p":                      # whole clusters, pool or unique each
        out = bytearray()
        for i, x in enumerate(op[4]):
            out += pool(p["img"], cs, x) if x >= 0 else tagged(p, b, k, off + i * cs, cs)
        return bytes(out)
    if kind == "s":                      # partial write: a slice of a pool content
        c = pool(p["img"], cs, op[4])
        return bytes((c * 2)[off % cs:off % cs + length])
    return bytes(tagged(p, b, k, off, length))     # "u" unique, "w" partial


def plan(args):
    seed, img, rnd, cs, vsize, out = args
    rnd, cs, vsize = int(rnd), int(cs), int(vsize)
    r = random.Random("%s/%s/plan/%d" % (seed, img, rnd))
    hot = 192 * 65536 if cs == 65536 else 384 * 4096
    batches = []

    def cluster():
        if r.random() < 0.85:
            return r.randrange(hot // cs)
        return r.randrange(vsize // cs)

    for b in range(3000):
        ops = []
        for k in range(r.randint(1, 8)):
            x = r.random()
            dsync = 1 if r.random() < 0.08 else 0
            if x < 0.06:
                n = r.choice([1, 1, 2, 4])
                c = min(cluster(), vsize // cs - n)
                ops.append(["d", c * cs, n * cs, 0])
            elif x < 0.36:
                n = r.choice([1, 1, 1, 2, 3, 4])
                c = min(cluster(), vsize // cs - n)
                ops.append(["p", c * cs, n * cs, dsync,
                            [r.randrange(POOL) if r.random() < 0.9 else -1 for _ in range(n)]])
            elif x < 0.52:
                n = r.choice([1, 1, 2])
                c = min(cluster(), vsize // cs - n)
                ops.append(["u", c * cs, n * cs, dsync])
            elif x < 0.62:
                n = r.choice([1, 1, 2])
                c = min(cluster(), vsize // cs - n)
                ops.append(["z", c * cs, n * cs, dsync])
            else:
                # Partial: inside one cluster mostly, sometimes across two.
                c = cluster()
                maxs = min(cs, 32768) // SECTOR - 1
                length = r.randint(1, maxs) * SECTOR
                start = c * cs + r.randrange(cs // SECTOR) * SECTOR
                if r.random() < 0.8:
                    start = min(start, c * cs + cs - length)
                start = max(0, min(start, vsize - length))
                if r.random() < 0.3:
                    ops.append(["s", start, length, dsync, r.randrange(POOL)])
                else:
                    ops.append(["w", start, length, dsync])
        batches.append(ops)
    json.dump({"seed": seed, "img": img, "round": rnd, "cs": cs, "batches": batches},
              open(out, "w"))


def run(args):
    planfile, dev, logfile, started = args
    p = json.load(open(planfile))
    fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 20)
    logfd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(s):
        os.write(logfd, (s + "\n").encode())

    open(started, "w").close()
    note("start")
    try:
        for b, ops in enumerate(p["batches"], 1):
            for k, op in enumerate(ops):
                kind, off, length, dsync = op[:4]
                if kind == "d":
                    fcntl.ioctl(fd, 0x1277, struct.pack("QQ", off, length))  # BLKDISCARD
                    continue
                buf[0:length] = content(p, b, k, op)
                mv = memoryview(buf)[0:length]
                n = os.pwritev(fd, [mv], off, os.RWF_DSYNC if dsync else 0)
                mv.release()
                if n != length:
                    raise OSError("short write %d of %d at %d" % (n, length, off))
                if dsync:
                    note("dsync %d %d" % (b, k))
            os.fsync(fd)
            note("batch %d done" % b)
    except OSError as e:
        note("error %s" % e)
        print("workload %s: %s" % (dev, e), file=sys.stderr)
        sys.exit(1)
    note("plan done")
    while True:
        time.sleep(60)


def monitor(args):
    """monitor DEV OUT...: every 0.2 s, each DEV's stats into its OUT."""
    pairs = list(zip(args[0::2], args[1::2]))
    while True:
        for dev, out in pairs:
            s = subprocess.run(["dmsetup", "message", dev, "0", "stats"],
                               capture_output=True, text=True).stdout
            if s:
                with open(out + ".tmp", "w") as f:
                    f.write(s)
                os.rename(out + ".tmp", out)
        time.sleep(0.2)


def desc(x):
    x = bytes(x)
    if not any(x):
        return "zeros"
    if x.startswith(b"[seed"):
        return x[:x.index(b"]") + 1].decode()
    return "other data (%s...)" % x[:16].hex()


def verify(args):
    planfile, logfile, basefile, actualfile = args
    p = json.load(open(planfile))
    lines = open(logfile).read().split("\n") if os.path.exists(logfile) else []
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
    exp = bytearray(open(basefile, "rb").read())
    act = open(actualfile, "rb").read()
    batches = p["batches"]
    durable = [(b, k) for b in range(1, sync_b + 1) for k in range(len(batches[b - 1]))]
    uncertain = []
    if sync_b < len(batches):
        durable += [(sync_b + 1, k) for k in range(sync_k)]
        uncertain = [(sync_b + 1, k) for k in range(sync_k, len(batches[sync_b]))]
    for b, k in durable:
        op = batches[b - 1][k]
        exp[op[1]:op[1] + op[2]] = content(p, b, k, op)
    cands = {}
    for b, k in uncertain:
        op = batches[b - 1][k]
        c = content(p, b, k, op)
        for s in range(0, op[2], SECTOR):
            sec = (op[1] + s) // SECTOR
            cands.setdefault(sec, [bytes(exp[sec * SECTOR:(sec + 1) * SECTOR])]).append(c[s:s + SECTOR])
    bad = new = old = 0
    step = 1 << 16
    for chunk in range(0, len(exp), step):
        if act[chunk:chunk + step] == exp[chunk:chunk + step]:
            continue
        for off in range(chunk, chunk + step, SECTOR):
            a, e, sec = act[off:off + SECTOR], exp[off:off + SECTOR], off // SECTOR
            if a == e or (sec in cands and a in cands[sec]):
                continue
            bad += 1
            if bad <= 10:
                print("MISMATCH sector %d (byte %d, %s): found %s, expected %s%s" % (
                    sec, off, "uncertain" if sec in cands else "durable or untouched",
                    desc(a), desc(e), "" if sec not in cands else
                    " or " + " or ".join(desc(c) for c in cands[sec][1:])))
    for sec, c in cands.items():
        a = act[sec * SECTOR:(sec + 1) * SECTOR]
        if a == c[0] and a not in c[1:]:
            old += 1
        elif a != c[0]:
            new += 1
    kinds = {}
    for b, k in durable:
        kinds[batches[b - 1][k][0]] = kinds.get(batches[b - 1][k][0], 0) + 1
    print("synced to batch %d op %d; %d ops durable (%s), %d uncertain (%d sectors new, %d old); %d bad sectors" % (
        sync_b, sync_k, len(durable), " ".join("%s%d" % kv for kv in sorted(kinds.items())),
        len(uncertain), new, old, bad))
    return 1 if bad else 0


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    sys.exit({"plan": plan, "run": run, "monitor": monitor, "verify": verify}[cmd](a) or 0)
PY

keep() {	# keep IMAGE ROUND: save a failed image for a post-mortem
	cp "$1.qcow2" "$CACHE/e2e/47-failed-$SEED-$2-$1.qcow2" 2>/dev/null || true
	echo "image kept as $CACHE/e2e/47-failed-$SEED-$2-$1.qcow2" >&2
}

for img in A B; do
	qemu-img create -q -f qcow2 -o cluster_size=${CS[$img]} $img.qcow2 $VSIZE
	truncate -s 256M $img.qcow2
	truncate -s $VSIZE $img.base.raw
done
declare -A state=([A]=absent [B]=absent) entries=([A]=0 [B]=0) repaired=([A]=0 [B]=0) leakfix=([A]=0 [B]=0)
declare -A cuts_open=([A]=0 [B]=0) loaded_total=([A]=0 [B]=0) incomplete=([A]=0 [B]=0)
during=0		# rounds cut while the workloads ran
total_cycles=0		# suspend/resume and reload cycles completed on A
declare -A total_durable=([A]=0 [B]=0)
start_delay=3.0		# seconds from uml-run to the workloads' start; measured below
for round in $(seq 1 "$ROUNDS"); do
	round_start=$SECONDS
	for img in A B; do
		python3 pc.py plan "$SEED" $img "$round" ${CS[$img]} $VSIZE plan.$round.$img.json
	done
	cut_at=$(python3 -c '
import random, sys
r = random.Random("%s/cut/%s" % (sys.argv[1], sys.argv[2]))
after = r.uniform(0.05, 0.6) if r.random() < 0.25 else r.uniform(0.6, 3.0)
print("%.2f" % (float(sys.argv[3]) + after))' "$SEED" "$round" "$start_delay")
	cat >inner.$round.sh <<EOF
set -e
for d in A:ubda B:ubdb; do
	n=\${d%%:*}
	line=\$($(printf %q "$TOOL") table /dev/\${d#*:} --flush-interval 100)
	dmsetup create pc\$n --table "\$line"
	echo "\$line" >line.$round.\$n
done
# The activation's stats once it has loaded the table or started a
# rebuild (the worker counts the run), 2 s at most.
for n in A B; do
	for i in \$(seq 40); do
		dmsetup message pc\$n 0 stats >act.$round.\$n
		awk '(\$1 == "rebuild_runs" || \$1 == "table_loaded") && \$2 > 0 { f = 1 } END { exit !f }' act.$round.\$n && break
		sleep 0.05
	done
done
python3 pc.py monitor pcA mon.$round.A pcB mon.$round.B &
python3 pc.py run plan.$round.A.json /dev/mapper/pcA log.$round.A started.$round &
python3 pc.py run plan.$round.B.json /dev/mapper/pcB log.$round.B started.$round.B &
# A is suspended and resumed (the table is closed and reopened), or
# reloaded (a new instance loads the table the suspend wrote), under load.
while sleep 0.4; do
	dmsetup suspend pcA && dmsetup resume pcA && echo suspend >>cycles.$round
	sleep 0.4
	dmsetup reload pcA --table "\$(cat line.$round.A)" && dmsetup resume pcA && echo reload >>cycles.$round
done &
wait
EOF
	t0=$(date +%s.%N)
	rc=0
	"$UML_RUN" --cut-after "$cut_at" -d A.qcow2 -d B.qcow2 -- bash inner.$round.sh >out.$round 2>&1 || rc=$?
	if [ "$rc" -ne 137 ]; then
		cat out.$round
		fail "round $round: uml-run exited $rc, not 137 (cut at ${cut_at}s)"
	fi
	when="before the workloads started"
	after=-1	# seconds from the workloads' start to the cut
	if [ -f started.$round ]; then
		delay=$(python3 -c 'import os, sys; print("%.2f" % (os.stat(sys.argv[1]).st_mtime - float(sys.argv[2])))' started.$round "$t0")
		start_delay=$(python3 -c 'import sys; print("%.2f" % (0.5 * float(sys.argv[1]) + 0.5 * float(sys.argv[2])))' "$start_delay" "$delay")
		after=$(python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) - float(sys.argv[2])))' "$cut_at" "$delay")
		when="${after}s after the start"
		during=$((during + 1))
	else
		# A loaded host boots slowly: aim later next time.
		start_delay=$(later_start "$start_delay" "$cut_at")
	fi
	summary=()
	for img in A B; do
		# What this round's activation did with the table the last one left.
		if [ -s act.$round.$img ]; then
			ld=$(awk '$1 == "table_loaded" { print $2 }' act.$round.$img)
			dr=$(awk '$1 == "table_dropped" { print $2 }' act.$round.$img)
			case ${state[$img]} in
			open|consistent)
				want_stat act.$round.$img rebuild_runs -eq "${incomplete[$img]:-0}"
				[ $((ld + dr)) -eq "${entries[$img]}" ] ||
					fail "round $round $img: table of ${entries[$img]} entries (${state[$img]}): loaded $ld + dropped $dr"
				loaded_total[$img]=$((loaded_total[$img] + ld)) ;;
			*)
				want_stat act.$round.$img rebuild_runs -eq 1
				want_stat act.$round.$img table_loaded -eq 0 ;;
			esac
			act="${state[$img]} table: loaded $ld, dropped $dr, rebuild $(awk '$1 == "rebuild_runs" { print $2 }' act.$round.$img)"
		else
			act="not activated"
		fi
		# 1. The table as the cut left it.
		ts=$(tool_check $img.qcow2) || { keep $img "$round"; fail "round $round $img: qcow2dedup check (seed $SEED)"; }
		state[$img]=${ts% *} entries[$img]=${ts#* }
		# A table written while a rebuild ran is INCOMPLETE (flag 4): the
		# next activation loads it and rebuilds as well.
		incomplete[$img]=$("$TOOL" info --json $img.qcow2 | python3 -c '
import json, sys
print(1 if (json.load(sys.stdin)["dedup_table"].get("flags") or 0) & 4 else 0)')
		case ${state[$img]} in
		open) cuts_open[$img]=$((cuts_open[$img] + 1)) ;;
		consistent) ;;
		stale|absent)
			# Only before the first write after a repair (or ever).
			! grep -q '^batch' log.$round.$img 2>/dev/null ||
				{ keep $img "$round"; fail "round $round $img: table ${state[$img]} after completed batches"; } ;;
		esac
		# 2. qemu-img check, COPIED window allowed, then repaired.
		lc=$(copied_only $img.qcow2) || { keep $img "$round"; fail "round $round $img: qemu-img check finds corruption (seed $SEED)"; }
		copied=${lc#* }
		if [ "$copied" -gt 0 ]; then
			qemu-img check -q -r all $img.qcow2 >/dev/null 2>&1 || true
			qemu-img check -q $img.qcow2 >/dev/null 2>&1 ||
				{ keep $img "$round"; fail "round $round $img: qemu-img check -r all did not repair"; }
			repaired[$img]=$((repaired[$img] + 1))
			ts=$(tool_check $img.qcow2) || fail "round $round $img: qcow2dedup check after the repair"
			[ "${ts% *}" = stale ] || fail "round $round $img: table ${ts% *} after QEMU's repair, want stale"
			state[$img]=stale entries[$img]=0
		fi
		# 3. The data.
		qemu-img convert -O raw $img.qcow2 $img.actual.raw
		v=$(python3 pc.py verify plan.$round.$img.json log.$round.$img $img.base.raw $img.actual.raw) ||
			{ echo "$v"; keep $img "$round"; fail "round $round $img: data check failed (seed $SEED)"; }
		mv $img.actual.raw $img.base.raw
		# Progress: a round cut well after its workload started must have
		# completed writes (a deadlock after recovery completes none).
		[[ "$v" =~ \;\ ([0-9]+)\ ops\ durable ]] || fail "round $round $img: no durable count in '$v'"
		durable=${BASH_REMATCH[1]}
		total_durable[$img]=$((total_durable[$img] + durable))
		if python3 -c 'import sys; sys.exit(float(sys.argv[1]) < 1.5)' "$after" && [ "$durable" -eq 0 ]; then
			keep $img "$round"
			fail "round $round $img: no write completed in the ${after}s before the cut (a hang?)"
		fi
		# 4. No entry loaded after a crash differed from its cluster.
		mon="no stats"
		if [ -s mon.$round.$img ]; then
			want_stat mon.$round.$img verify_mismatches -eq 0
			mon="flushes $(awk '$1 == "table_flushes" { print $2 }' mon.$round.$img), hits $(awk '$1 == "dedup_hits" { print $2 }' mon.$round.$img), index $(awk '$1 == "index_entries" { print $2 }' mon.$round.$img)"
		fi
		summary+=("$img: [$act] $v; $mon; table ${ts% *} ${ts#* } entries; leaks ${lc% *}, COPIED errors $copied")
		# 5. Every REPAIR_EVERY rounds, QEMU frees the leaks (and the
		# table): the next round rebuilds while its workload runs.
		if [ $((round % REPAIR_EVERY)) -eq 0 ] && [ "$round" -lt "$ROUNDS" ]; then
			qemu-img check -q -r leaks $img.qcow2 >/dev/null 2>&1 || true
			qemu-img check -q $img.qcow2 >/dev/null 2>&1 || fail "round $round $img: not clean after qemu-img check -r leaks"
			state[$img]=stale entries[$img]=0 leakfix[$img]=$((leakfix[$img] + 1))
			summary[-1]+="; leaks freed by qemu-img check -r leaks, table stale"
		fi
	done
	# The suspend/resume/reload loop on A starts 0.4 s after the workloads;
	# a suspend that hangs with I/O in flight completes no cycle.
	ncycles=0	# (no file when no cycle completed; a failed cat would end the script)
	[ -f cycles.$round ] && ncycles=$(wc -l <cycles.$round)
	total_cycles=$((total_cycles + ncycles))
	if python3 -c 'import sys; sys.exit(float(sys.argv[1]) < 3.0)' "$after" && [ "$ncycles" -eq 0 ]; then
		fail "round $round: no suspend/resume or reload cycle completed in the ${after}s before the cut (a hang?)"
	fi
	log "round $round ($((SECONDS - round_start))s): cut ${cut_at}s after launch, $when; $ncycles suspend/reload cycles"
	for s in "${summary[@]}"; do log "  $s"; done
done
# Most cuts must hit the workloads, or the run proved little.
[ $((2 * during)) -ge "$ROUNDS" ] || fail "only $during of $ROUNDS cuts came while the workloads ran (host too loaded?)"
[ "${total_durable[A]}" -gt 0 ] && [ "${total_durable[B]}" -gt 0 ] && [ "$total_cycles" -gt 0 ] ||
	fail "no progress: durable ops A ${total_durable[A]} B ${total_durable[B]}, cycles $total_cycles"
log "progress: durable ops A ${total_durable[A]} B ${total_durable[B]}; suspend/reload cycles on A: $total_cycles"
log "cuts during the workloads: $during of $ROUNDS; table left open A ${cuts_open[A]} B ${cuts_open[B]} times; entries loaded after cuts A ${loaded_total[A]} B ${loaded_total[B]};" \
    "COPIED repairs by QEMU (tables made stale) A ${repaired[A]} B ${repaired[B]};" \
    "leak repairs (stale, rebuilt under the workload) A ${leakfix[A]} B ${leakfix[B]}"

# The end: a clean activation of each image that reads everything, removal.
for img in A B; do
	qemu-img convert -O raw $img.qcow2 $img.final.raw
	sha256sum <$img.final.raw | cut -d' ' -f1 >$img.final.sum
done
cat >inner.final.sh <<EOF
rc=0
for d in A:ubda B:ubdb; do
	n=\${d%%:*}
	dmsetup create f\$n --table "\$($(printf %q "$TOOL") table /dev/\${d#*:})" || { echo "FAIL: create \$n"; rc=1; continue; }
	for i in \$(seq 600); do
		s=\$(dmsetup message f\$n 0 stats)
		[ "\$(awk '\$1 == "table_state" { print \$2 }' <<<"\$s")" != rebuilding ] &&
			[ "\$(awk '\$1 == "rebuild_progress" { print \$2 }' <<<"\$s")" = 100 ] && break
		sleep 0.1
	done
	sum=\$(dd if=/dev/mapper/f\$n bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1)
	[ "\$sum" = "\$(cat \$n.final.sum)" ] || { echo "FAIL \$n: the target reads other data than qemu-img"; rc=1; }
	dmsetup message f\$n 0 flush || { echo "FAIL \$n: flush message"; rc=1; }
	dmsetup message f\$n 0 stats >final.\$n.stats
	dmsetup status f\$n
	dmsetup remove f\$n || { echo "FAIL \$n: remove"; rc=1; }
done
echo inner.final-done
exit \$rc
EOF
run_inner inner.final -d A.qcow2 -d B.qcow2
for img in A B; do
	want_stat final.$img.stats verify_mismatches -eq 0
	want_stat final.$img.stats table_state = clean
	ts=$(tool_check $img.qcow2) || fail "$img: qcow2dedup check after the clean activation"
	[ "${ts% *}" = consistent ] || fail "$img: table ${ts% *} after a clean removal"
	lc=$(copied_only $img.qcow2) || fail "$img: qemu-img check after the clean activation"
	[ "${lc#* }" -eq 0 ] || fail "$img: COPIED errors after a clean activation"
	log "$img: clean activation: table consistent with ${ts#* } entries; $(grep -E '^(table_loaded|table_dropped|rebuild_runs|rebuild_indexed) ' final.$img.stats | tr '\n' ' ')leaks ${lc% *} (table and crash leaks)"
	qemu-img check -q -r leaks $img.qcow2 >/dev/null 2>&1 || true
done
cat >inner.clean.sh <<EOF
rc=0
for d in A:ubda B:ubdb; do
	n=\${d%%:*}
	dmsetup create f\$n --table "\$($(printf %q "$TOOL") table /dev/\${d#*:})" || { echo "FAIL: create \$n"; rc=1; continue; }
	for i in \$(seq 600); do
		s=\$(dmsetup message f\$n 0 stats)
		[ "\$(awk '\$1 == "rebuild_runs" { print \$2 }' <<<"\$s")" -ge 1 ] &&
			[ "\$(awk '\$1 == "table_state" { print \$2 }' <<<"\$s")" != rebuilding ] &&
			[ "\$(awk '\$1 == "rebuild_progress" { print \$2 }' <<<"\$s")" = 100 ] && break
		sleep 0.1
	done
	# An activation without a write opens no table: the flush message does.
	dmsetup message f\$n 0 flush || { echo "FAIL \$n: flush message"; rc=1; }
	dmsetup message f\$n 0 stats >clean.\$n.stats
	dmsetup remove f\$n || { echo "FAIL \$n: remove"; rc=1; }
done
echo inner.clean-done
exit \$rc
EOF
run_inner inner.clean -d A.qcow2 -d B.qcow2
for img in A B; do
	want_stat clean.$img.stats rebuild_runs -eq 1
	want_stat clean.$img.stats table_state = clean
	qcheck $img.qcow2
	ts=$(tool_check $img.qcow2) || fail "$img: qcow2dedup check after the last activation"
	n=$(awk '$1 == "index_entries" { print $2 }' clean.$img.stats)
	[ "$ts" = "consistent $n" ] || fail "$img: table '$ts' after the last activation, want consistent with $n entries"
	qemu-img compare -q $img.final.raw $img.qcow2 || fail "$img: data changed by the leak repair or the last activation"
	log "$img: after qemu-img check -r leaks: rebuilt table of $n entries; clean"
done
log "all $ROUNDS power cuts left a dedup table that names only what its clusters hold (${SECONDS}s)"
