#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 44-dedup-powercut: 36-powercut's random power cuts (part 1) with a
# workload in which most writes repeat one of four contents per size, so
# whole clusters are shared and unshared all the time and COPIED moves both
# ways at every cut.  After each cut: every write before the last completed
# fsync reads back, qemu-img check finds no corruption other than COPIED
# flags in the documented window (see the admin guide, "Durability and
# crash safety"), which qemu-img check -r all repairs; at the end one clean
# activation leaves an image that checks clean.
export POWERCUT_DEDUP=1 POWERCUT_PART2=0 POWERCUT_ROUNDS=${POWERCUT_ROUNDS:-12}
exec "$(dirname "$0")/36-powercut.sh"
