#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""console-check.py CONSOLE [CHECKED]: does a UML console show a kernel report?

Exit 0 when it does not, 1 when it does (the report's first lines are
printed on stderr).  CHECKED, when given, receives the console without the
dropped blocks.

One report is User-Mode Linux's own, not the target's: 6.12's arch/um
flush_tlb_mm() walks the VMAs of an mm it does not lock when a kworker frees
an AIO ring (lvm2 and fio use AIO), and lockdep calls that a "suspicious RCU
usage".  Such a block is dropped, and counted.  It ends exactly where the
report ends: lockdep_rcu_suspicious() prints its header and held locks, then
dump_stack(), which on UML ends with the "Call Trace:" line and one
" [<address>] symbol" line per frame, with no blank line after it.  So the
block ends at the first line after "Call Trace:" that is not a frame, or at
the start of the next report; everything after it is checked.
"""
import re
import sys

REPORT = re.compile(
    r"BUG:|WARNING:|Oops|KASAN|kernel BUG|general protection|Kernel panic|"
    r"possible circular locking|possible recursive locking|inconsistent lock state|"
    r"suspicious RCU|lockdep|INFO: task .* blocked|Call Trace|UBSAN|unreferenced object")
RULE = "============================="
FRAME = re.compile(r"^\s*\[<[0-9a-f]+>\] ")
# Boot lines that match REPORT and report nothing (x86_64 with PROVE_RCU).
BENIGN = re.compile(r"^rcu: \s*RCU lockdep checking is enabled\.$")
# Lines that begin another report while the dropped one has not reached its
# stack trace yet (a report cut short, or interleaved output).
NEXT_REPORT = re.compile(r"^(BUG:|WARNING:|Oops|Kernel panic|INFO: task |" + RULE + ")")


def rcu_block_end(lines, i):
    """Index of the first line after the report that starts at lines[i]."""
    j = i + 1
    while j < len(lines):
        if lines[j].startswith("Call Trace:"):
            j += 1
            while j < len(lines) and FRAME.match(lines[j]):
                j += 1
            return j
        if NEXT_REPORT.match(lines[j]):
            return j
        j += 1
    return j


def filter_console(lines):
    """(kept lines, number of dropped arch/um blocks)."""
    out, i, dropped = [], 0, 0
    while i < len(lines):
        if lines[i].startswith("WARNING: suspicious RCU usage"):
            j = rcu_block_end(lines, i)
            block = "\n".join(lines[i:j])
            if "flush_tlb_mm" in block and "aio_free_ring" in block:
                if out and out[-1].startswith(RULE):
                    out.pop()
                dropped += 1
                i = j
                continue
        out.append(lines[i])
        i += 1
    return out, dropped


def main(argv):
    lines = open(argv[1], errors="replace").read().split("\n")
    out, dropped = filter_console(lines)
    if len(argv) > 2:
        open(argv[2], "w").write("\n".join(out))
    if dropped:
        print("uml-run: ignored %d arch/um report(s): flush_tlb_mm from aio_free_ring" % dropped,
              file=sys.stderr)
    hits = [n for n, line in enumerate(out) if REPORT.search(line) and not BENIGN.match(line)]
    if hits:
        print("uml-run: first report line: %s" % out[hits[0]], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
