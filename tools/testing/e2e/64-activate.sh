#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 64-activate: `qcow2dedup activate/deactivate/list/stats` on image files,
# as a user runs them (issue 12), with losetup and dmsetup underneath.
#
# img.qcow2: 32 MiB, 64 KiB clusters, made by qemu-img and written by
# qemu-io (1 MiB of 0x11, and a compressed cluster last, so that the file
# ends mid-cluster); never padded or grown by hand.  Refusals first, each
# leaving its file byte-identical (sha256 on the host):
#   back.qcow2  has a backing file (refused from its header by the tool);
#   bad.qcow2   an L1 entry with a reserved bit (the tool lets it through,
#               the kernel refuses it: the loop device is detached and the
#               file cut back to its size);
#   img.qcow2   while qemu-io holds it open (QEMU's lock), then a second
#               activation while it is active.
# Then img.qcow2 is activated as vm1 (dm UUID QCOW2DEDUP-..., the file grown
# sparse, a loop device with it); its whole virtual size is written with
# unique data (every cluster allocated), then the first 4 MiB again at 8M
# (64 hits; 448 unique clusters left in the index); `list` shows it; `stats` text and JSON agree with `dmsetup
# message stats` and status taken at the same moment; deactivate by image
# path.  On the host: the loop device and mapping are gone, qcheck is
# clean, the data equal to the expected image, and the file ends where
# qemu-img check says the image ends.  Last, what qcow2dedup.service runs:
# activate-all of a tab (img.qcow2 again with verify and xxhash64, a copy
# of the original read-only), again (both "active already"), deactivate-all
# (both gone, no loop device left), and a tab line with an unknown option.
# And a block device (/dev/ubda, a 16 MiB image on 48 MiB): activated
# without a loop, a second activation refused by its holder, 4 MiB written,
# deactivated by its path with its size untouched; qcheck, data exact.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
TOOL=$REPO/tools/qcow2dedup/qcow2dedup
[ -x "$TOOL" ] || make -s -C "$REPO" tool >/dev/null || fail "cannot build the qcow2dedup tool"
PATCH=$E2E_DIR/qcow2_patch.py
M=$((1 << 20))

qemu-img create -q -f qcow2 -o cluster_size=65536 img.qcow2 32M
qemu-io -c "write -P 0x11 0 1M" -c "write -c -P 0x22 31M 64k" img.qcow2 >/dev/null
size0=$(stat -c %s img.qcow2)
[ $((size0 % 65536)) -ne 0 ] || fail "img.qcow2 ($size0 bytes) should end mid-cluster"
cp img.qcow2 base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 back.qcow2
cp img.qcow2 bad.qcow2
l1=$(python3 "$PATCH" bad.qcow2 40 8 get)
python3 "$PATCH" bad.qcow2 "$l1" 8 or 0x1 >/dev/null
sha256sum back.qcow2 bad.qcow2 >refused.sha
cp base.qcow2 ro.qcow2
qemu-img create -q -f qcow2 -o cluster_size=65536 dev.qcow2 16M
truncate -s 48M dev.qcow2	# a device larger than the image, as an LV is
python3 - <<'PY'
import random
M = 1 << 20
w = random.Random(64).randbytes(32 * M)
open("w.bin", "wb").write(w)
open("w4.bin", "wb").write(w[:4 * M])
with open("exp.raw", "wb") as f:
    f.write(w[:8 * M] + w[:4 * M] + w[12 * M:])
PY

inner_prelude >common.sh
printf 'T=%q\n' "$TOOL" >>common.sh
cat >act.sh <<'EOF'
. ./common.sh
$T activate back.qcow2 && bad "back.qcow2 activated"
$T activate bad.qcow2 && bad "bad.qcow2 activated"
[ -z "$(losetup -j bad.qcow2)" ] || bad "bad.qcow2 still attached: $(losetup -j bad.qcow2)"
qemu-io -r -c "sleep 4000" img.qcow2 &
sleep 2
$T activate img.qcow2 vm1 2>held.err && bad "img.qcow2 activated while qemu-io has it"
grep -q "QEMU's lock" held.err || bad "no lock refusal: $(cat held.err)"
wait
$T activate img.qcow2 vm1 >act.out || bad "activate"
cat act.out
ls -l img.qcow2
stat -c %s img.qcow2 >grown.size
dmsetup info -c --noheadings -o uuid vm1 >uuid.txt || bad "no vm1"
losetup -j img.qcow2 >loop.txt
[ -s loop.txt ] || bad "no loop device"
size=$(stat -c %s img.qcow2)
$T activate img.qcow2 vm2 2>again.err && bad "a second activation"
grep -q "already active as /dev/mapper/vm1" again.err || bad "second activation: $(cat again.err)"
[ "$(stat -c %s img.qcow2)" = "$size" ] || bad "the refused second activation changed the file"
put w.bin /dev/mapper/vm1 0
put w4.bin /dev/mapper/vm1 8
sync /dev/mapper/vm1
$T list >list.txt || bad "list"
cat list.txt
dmsetup message vm1 0 flush || bad "flush message"
dmsetup message vm1 0 stats >msg.stats
dmsetup status vm1 >msg.status
$T stats vm1 >stats.txt || bad "stats"
$T stats vm1 --json >stats.json || bad "stats --json"
dmsetup message vm1 0 stats >msg2.stats
cat stats.txt
same w4.bin /dev/mapper/vm1 0
same w4.bin /dev/mapper/vm1 8
$T deactivate "$PWD/img.qcow2" || bad "deactivate"
[ -z "$(losetup -j img.qcow2)" ] || bad "still attached: $(losetup -j img.qcow2)"
dmsetup info vm1 >/dev/null 2>&1 && bad "vm1 still there"
$T list >list2.txt
grep -q vm1 list2.txt && bad "list shows vm1 after deactivate"
# What qcow2dedup.service runs: activate-all and deactivate-all of a tab.
cat >tab <<TAB
# a comment, then two devices
vm1   $PWD/img.qcow2   verify,hash=xxhash64
ro1   $PWD/ro.qcow2    readonly
TAB
$T activate-all --tab tab || bad "activate-all"
dmsetup table vm1 | grep -q " 3 verify hash xxhash64$" || bad "vm1's table: $(dmsetup table vm1)"
dmsetup info ro1 | grep -q "READ-ONLY" || bad "ro1 not read-only: $(dmsetup info ro1)"
$T activate-all --tab tab >again.out || bad "activate-all again"
grep -c "active already" again.out | grep -qx 2 || bad "second activate-all: $(cat again.out)"
same w4.bin /dev/mapper/vm1 8
$T deactivate-all --tab tab || bad "deactivate-all"
dmsetup info vm1 >/dev/null 2>&1 && bad "vm1 left by deactivate-all"
dmsetup info ro1 >/dev/null 2>&1 && bad "ro1 left by deactivate-all"
[ -z "$(losetup -a)" ] || bad "loop devices left: $(losetup -a)"
# A block device: no loop, no growing; a second activation is refused by
# its holder; deactivate by the device's path leaves it as it is.
$T activate /dev/ubda blk || bad "activate /dev/ubda"
$T activate /dev/ubda blk2 2>blk.err && bad "a second activation of /dev/ubda"
grep -q "in use by /dev/mapper/blk" blk.err || bad "second activation of /dev/ubda: $(cat blk.err)"
put w4.bin /dev/mapper/blk 0
same w4.bin /dev/mapper/blk 0
$T stats blk | grep -Eq "^Image +98:0$" || bad "stats blk: $($T stats blk)"
$T deactivate /dev/ubda || bad "deactivate /dev/ubda"
dmsetup info blk >/dev/null 2>&1 && bad "blk left"
# A bad line does not stop the others.
printf 'x /nonexistent.qcow2 bogus\nbroken\nok1 %s -\n' "$PWD/ro.qcow2" >bad.tab
$T activate-all --tab bad.tab 2>badtab.err && bad "a tab with an unknown option"
grep -q "bad.tab:1: x: unknown option 'bogus'" badtab.err || bad "bad tab: $(cat badtab.err)"
grep -q "bad.tab:2: expected NAME IMAGE|DEV" badtab.err || bad "bad tab line 2: $(cat badtab.err)"
dmsetup info ok1 >/dev/null 2>&1 || bad "the good line after bad ones was not activated"
$T deactivate-all --tab bad.tab 2>/dev/null
dmsetup info ok1 >/dev/null 2>&1 && bad "ok1 left"
# A device and loop set up by hand: deactivate removes the device only.
loop=$(losetup -f --show ro.qcow2)
dmsetup create manual --table "0 $(( 32 << 11 )) qcow2dedup $loop" || bad "manual create"
$T deactivate manual || bad "deactivate manual"
[ "$(losetup -j ro.qcow2 | cut -d: -f1)" = "$loop" ] || bad "deactivate detached a loop it did not attach"
losetup -d "$loop"
echo act-done
exit $rc
EOF
run_inner act -d dev.qcow2

sha256sum -c --quiet refused.sha || fail "a refused activation changed its image"
grep -q '^QCOW2DEDUP-[0-9a-f]\{32\}$' uuid.txt || fail "dm UUID: $(cat uuid.txt)"
[ "$(cat grown.size)" -ge $((2 * 32 * M)) ] || fail "the file was not grown: $(cat grown.size) bytes"
grep -Eq "^vm1 +write .*$WORK/img.qcow2$" list.txt || fail "list: $(cat list.txt)"
want_stat msg.stats dedup_hits -eq 64
want_stat msg.stats index_entries -eq 448
python3 - msg.stats msg.status stats.json stats.txt msg2.stats <<'PY' || fail "stats disagree with the target's counters"
import json, re, sys
def pairs(path):
    return {k: v.strip() for k, v in (l.split(None, 1) for l in open(path).read().splitlines())}
msg, msg2 = pairs(sys.argv[1]), pairs(sys.argv[5])
st = open(sys.argv[2]).read().split()
j = json.load(open(sys.argv[3]))
text = open(sys.argv[4]).read()
# Every pair, but those the target moved on its own meanwhile (timers).
moved = {k for k in msg if msg[k] != msg2.get(k)}
print("moved while read:", sorted(moved))
assert not moved & {"dedup_hits", "bytes_saved", "index_entries", "clusters_written", "mode"}
assert set(j["stats"]) == set(msg), set(j["stats"]) ^ set(msg)
for k, v in msg.items():
    if k not in moved:
        assert str(j["stats"][k]) == v, (k, j["stats"][k], v)
used, total = map(int, st[6].split("/"))
cs = int(st[5])
assert j["mode"] == st[3] == "write", (j["mode"], st[3])
assert j["cluster_size"] == cs and j["virtual_size"] == 32 << 20
assert j["used_bytes"] == used * cs and j["total_bytes"] == total * cs
saved = int(msg["bytes_saved"])
assert saved == 64 * cs, saved
assert j["bytes_saved"] == saved
assert j["saving_percent"] == saved * 100 // (used * cs + saved)
assert j["status"]["dedup_hits"] == 64
def line(label, rest):
    assert re.search(r"^%s +%s$" % (re.escape(label), rest), text, re.M), (label, rest, text)
line("Dedup hits", "64 of %s clusters written" % msg["clusters_written"])
line("Saved by dedup", re.escape("4.0 MiB (%d%%)" % j["saving_percent"]))
line("Mode", "write")
line("Virtual size", re.escape("32.0 MiB"))
line("Index", "%s entries, .* of .*" % msg["index_entries"])
runs = int(msg["rebuild_runs"])
if msg["rebuild_progress"] == "100" and "rebuild_us" not in moved:
    if runs:
        line("Rebuild", re.escape("none running (%d since activation, the last took %.1f s)"
                                  % (runs, int(msg["rebuild_us"]) / 1e6)))
    else:
        line("Rebuild", "none since activation")
PY
qcheck img.qcow2
qemu-img compare -q -f raw -F qcow2 exp.raw img.qcow2 || fail "content differs"
# (exit status 3: the table's clusters are leaks to qemu-img)
qemu-img check --output=json img.qcow2 >end.json 2>/dev/null || true
end=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["image-end-offset"])' end.json)
[ "$(stat -c %s img.qcow2)" = "$end" ] || fail "file is $(stat -c %s img.qcow2) bytes, the image ends at $end"
[ "$(stat -c %s dev.qcow2)" = $((48 * M)) ] || fail "deactivate changed the device's size"
qcheck dev.qcow2
qemu-img convert -O raw dev.qcow2 dev.raw
cmp -n $((4 * M)) dev.raw w4.bin || fail "dev.qcow2 does not hold what was written"
qemu-img compare -q base.qcow2 ro.qcow2 || fail "the read-only activation changed ro.qcow2's contents"
no_corruption ro.qcow2
log "activate/deactivate/list/stats: ok (grown to $(cat grown.size), trimmed to $end)"
