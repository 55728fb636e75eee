#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Read or patch one big-endian integer field of a file in place.

  qcow2_patch.py FILE OFFSET WIDTH get          print the field (decimal)
  qcow2_patch.py FILE OFFSET WIDTH set VALUE    field = VALUE
  qcow2_patch.py FILE OFFSET WIDTH or VALUE     field |= VALUE
  qcow2_patch.py FILE OFFSET WIDTH add VALUE    field += VALUE (mod 2^bits)

OFFSET and VALUE accept any Python integer literal (0x..., 1 << 20 is not
one: write 0x100000).  WIDTH is in bytes: 1, 2, 4 or 8.  With set/or/add the
new value is printed.
"""
import sys


def main(argv):
    if len(argv) not in (5, 6):
        sys.exit(__doc__)
    path, off, width, op = argv[1], int(argv[2], 0), int(argv[3]), argv[4]
    if width not in (1, 2, 4, 8):
        sys.exit("qcow2_patch: WIDTH must be 1, 2, 4 or 8")
    with open(path, "r+b") as f:
        f.seek(off)
        raw = f.read(width)
        if len(raw) != width:
            sys.exit("qcow2_patch: %s: short read at %d" % (path, off))
        old = int.from_bytes(raw, "big")
        if op == "get" and len(argv) == 5:
            print(old)
            return
        if len(argv) != 6:
            sys.exit(__doc__)
        val = int(argv[5], 0)
        mask = (1 << (8 * width)) - 1
        if op == "set":
            new = val
        elif op == "or":
            new = old | val
        elif op == "add":
            new = (old + val) & mask
        else:
            sys.exit("qcow2_patch: unknown operation %r" % op)
        if new < 0 or new > mask:
            sys.exit("qcow2_patch: value %d does not fit in %d bytes" % (new, width))
        f.seek(off)
        f.write(new.to_bytes(width, "big"))
        print(new)


if __name__ == "__main__":
    main(sys.argv)
