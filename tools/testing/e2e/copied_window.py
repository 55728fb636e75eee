#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""copied_window.py IMAGE CHECK_STDERR: which COPIED errors may a crash leave?

qemu-img check lists "ERROR OFLAG_COPIED data cluster: l2_entry=E
refcount=R" for every entry whose COPIED flag (bit 63) disagrees with
refcount == 1.  The admin guide ("Crash safety") allows a crash to leave
exactly two kinds:
  - COPIED clear on a cluster of refcount 1 (the window between lowering a
    shared cluster's refcount and setting COPIED on its last reference):
    QEMU only copies on write where it could write in place;
  - COPIED set on a cluster of refcount 2 that one entry references (the
    raised refcount reached the disk, the second reference did not): the
    cluster is also reported leaked with reference=1, and only one entry
    points there.
Anything else, above all COPIED set on a cluster that two entries share
(QEMU would write into both guest clusters), is corruption.

Prints the number of allowed COPIED errors; exits 1 after printing the
others on stderr.  classify() is used by the crash scenarios directly.
"""
import re
import struct
import sys

COPIED_RE = re.compile(r"^ERROR OFLAG_COPIED data cluster: l2_entry=([0-9a-fA-F]+) refcount=(\d+)")
LEAK_RE = re.compile(r"^Leaked cluster (\d+) refcount=(\d+) reference=(\d+)")
OFLAG_COPIED = 1 << 63
OFFSET_MASK = 0x00FFFFFFFFFFFE00


def cluster_bits(image):
    with open(image, "rb") as f:
        f.seek(20)
        return struct.unpack(">I", f.read(4))[0]


def classify(check_stderr, bits):
    """(allowed COPIED errors, list of dangerous COPIED error lines)."""
    lines = check_stderr.split("\n")
    single = set()
    for line in lines:
        m = LEAK_RE.match(line)
        if m and int(m.group(3)) == 1:
            single.add(int(m.group(1)))
    allowed, bad = 0, []
    for line in lines:
        if not line.startswith("ERROR OFLAG_COPIED"):
            continue
        m = COPIED_RE.match(line)
        if not m:
            bad.append(line)
            continue
        entry, refcount = int(m.group(1), 16), int(m.group(2))
        copied = bool(entry & OFLAG_COPIED)
        if not copied and refcount == 1:
            allowed += 1
        elif copied and refcount >= 2 and ((entry & OFFSET_MASK) >> bits) in single:
            allowed += 1
        else:
            bad.append(line)
    return allowed, bad


def main(argv):
    allowed, bad = classify(open(argv[2], errors="replace").read(), cluster_bits(argv[1]))
    print(allowed)
    for line in bad:
        print("COPIED error outside the documented window: " + line, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
