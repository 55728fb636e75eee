#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 48-fuzz-corpus: every image of the fuzz corpus (tools/testing/fuzz/corpus/,
# each NAME.qcow2.xz with NAME.txt saying what it once triggered) goes
# through the per-image procedure of `make fuzz` (tools/testing/fuzz/run
# --replay): a dm-linear slot, activation read-only (read in full, the slot
# byte-identical after), read-write (read in full, as read-only read it;
# unique and duplicate writes, a partial overwrite, discard, write-zeroes,
# flush, stats; what the writes left reads back), removal, and read-only
# again (what no op touched reads as before).  Passes when no image shows a
# kernel report, a hang, I/O outside its slot, a changed slot after a
# read-only or refused activation, a failed removal, or a failure of the
# classes its NAME.txt makes strict.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"

corpus=$REPO/tools/testing/fuzz/corpus
mapfile -t images < <(ls "$corpus"/*.qcow2.xz 2>/dev/null | sort)
[ "${#images[@]}" -gt 0 ] || fail "the corpus $corpus is empty"
log "replaying ${#images[@]} corpus images"
FUZZ_CONFIRM=0 FUZZ_HANG=${FUZZ_HANG:-60} "$REPO/tools/testing/fuzz/run" --replay "${images[@]}" ||
	fail "some corpus images failed (see above; kept in $CACHE/fuzz/failures/)"
log "all ${#images[@]} corpus images passed"
