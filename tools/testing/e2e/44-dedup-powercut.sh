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
# Part 2: crash states of a volatile-cache disk rebuilt from dm-log-writes
# logs of a dedup workload whose table is written back every 50 ms and at
# every fsync (slots written and cleared as clusters are shared, unshared,
# overwritten and discarded); each state passes qemu-img check (COPIED
# window allowed) and `qcow2dedup check` (no wrong slot) before any repair.
export POWERCUT_DEDUP=1 POWERCUT_ROUNDS=${POWERCUT_ROUNDS:-12}
exec "$(dirname "$0")/36-powercut.sh"
