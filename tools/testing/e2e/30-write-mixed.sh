#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 30-write-mixed: concurrent writes of mixed sizes and alignments through the
# target at cluster sizes 4 KiB, 64 KiB and 2 MiB land exactly where they
# should, and leave a consistent image.
#
# The workload is wgen.py's (deterministic, see its header): a sequential
# phase of runs of 512 B .. 1 MiB over about 60% of the data area, then 4
# concurrent writers in 16 KiB blocks owned round-robin (shared clusters,
# never shared bytes), then 4 concurrent writers overwriting inside 1.25 MiB
# chunks with writes up to 1 MiB; O_DIRECT, buffered and O_DIRECT|O_DSYNC
# writes and fsyncs mixed.  The data areas cross L2-table boundaries: 2 MiB
# (4 KiB clusters), 512 MiB (64 KiB) and 512 GiB (2 MiB, on a 513 GiB disk).
# The host replays the same operations into a raw file.
#
# Inside UML, before removal: the device in "write" mode, allocations
# counted, and an O_DIRECT read-back of the data area (the whole disk for the
# 4 KiB image, buffered with cmp as well) equal to the expected raw file.
# After removal, on the host: `qemu-img check` without errors or leaks and
# `qemu-img compare` with the expected raw file.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

WGEN=$E2E_DIR/wgen.py
M=$((1 << 20)) G=$((1 << 30))
# Overridable for exploration; the defaults are the test.
WRITERS=${WGEN_WRITERS:-4} SEED=${WGEN_SEED:-30} MEM=${E2E_MEM:-768M}

# name cluster_size virtual_size windows device_file_size
images=(
	"c4k  4096      $((64 * M))   0:$((8 * M)),$((40 * M)):$((44 * M))                     64M"
	"c64k 65536     $((768 * M))  0:$((6 * M)),$((509 * M)):$((515 * M))                  64M"
	"c2m  2097152   $((513 * G))  0:$((8 * M)),$((512 * G - 4 * M)):$((512 * G + 4 * M))   128M"
)

cd "$WORK"
inner=$WORK/inner.sh
cat >"$inner" <<'EOF'
set -u
rc=0
wgen() { python3 "$WGEN" "$@" --writers "$WRITERS" --seed "$SEED"; }
one() { # NAME DEV SIZE WINDOWS
	local name=$1 dev=$2 size=$3 win=$4 pids=() p st
	local common=(--size "$size" --windows "$win")
	dmsetup create "$name" --table "0 $((size / 512)) qcow2dedup $dev" ||
		{ echo "FAIL $name: dmsetup create"; rc=1; return; }
	wgen run --dev "/dev/mapper/$name" --phase seq --writer 0 "${common[@]}" ||
		{ echo "FAIL $name: seq phase"; rc=1; }
	for phase in rand over; do
		pids=()
		for ((w = 0; w < WRITERS; w++)); do
			wgen run --dev "/dev/mapper/$name" --phase $phase --writer $w "${common[@]}" &
			pids+=($!)
		done
		for p in "${pids[@]}"; do
			wait "$p" || { echo "FAIL $name: $phase writer (pid $p)"; rc=1; }
		done
	done
	st=$(dmsetup status "$name")
	echo "$name status: $st"
	set -- $st
	[ "$4" = write ] || { echo "FAIL $name: mode $4 after the writes"; rc=1; }
	[ "${9:-0}" -gt 0 ] || { echo "FAIL $name: no cluster allocated"; rc=1; }
	wgen verify --dev "/dev/mapper/$name" --expected "$name.expected.raw" "${common[@]}" ||
		{ echo "FAIL $name: O_DIRECT read-back differs"; rc=1; }
	if [ "$size" -le $((64 << 20)) ]; then
		wgen verify --full --dev "/dev/mapper/$name" --expected "$name.expected.raw" "${common[@]}" ||
			{ echo "FAIL $name: O_DIRECT read-back of the whole disk differs"; rc=1; }
		blockdev --flushbufs "/dev/mapper/$name"
		cmp "/dev/mapper/$name" "$name.expected.raw" ||
			{ echo "FAIL $name: buffered read-back differs"; rc=1; }
	fi
	dmsetup remove "$name" || { echo "FAIL $name: dmsetup remove"; rc=1; }
}
EOF

disks=() i=0
for spec in "${images[@]}"; do
	read -r name cs size win devsize <<<"$spec"
	qemu-img create -q -f qcow2 -o cluster_size="$cs" "$name.qcow2" "$size"
	truncate -s "$devsize" "$name.qcow2"
	wgen_args=(--size "$size" --windows "$win" --writers $WRITERS --seed $SEED)
	python3 "$WGEN" expect --out "$name.expected.raw" "${wgen_args[@]}" &
	dev=/dev/ubd$(printf "\\$(printf %o $((97 + i)))")
	printf 'one %s %s %s %s\n' "$name" "$dev" "$size" "$win" >>"$inner"
	disks+=(-d "$name.qcow2")
	i=$((i + 1))
done
echo 'exit $rc' >>"$inner"
wait # the expected raw files

log "writing through the target in UML"
start=$(date +%s)
uml -m "$MEM" "${disks[@]}" -- \
	env WGEN="$WGEN" WRITERS=$WRITERS SEED=$SEED bash "$inner" ||
	fail "inside UML (see above)"
log "UML part took $(($(date +%s) - start))s"

for spec in "${images[@]}"; do
	read -r name cs size win devsize <<<"$spec"
	qcheck "$name.qcow2"
	qemu-img compare -f raw -F qcow2 "$name.expected.raw" "$name.qcow2" ||
		fail "$name: content differs from the replay"
done
log "all images written exactly, consistent, no leak but the dedup table"
